"""Vault KV v2 as the source of truth: one secret per zone, written with check-and-set.

Layout: `<kv_mount>/data/<prefix>/zones/<zone>` holds `{"format": 2, "records": TEXT}`, TEXT having
one line `fqdn value ttl created_at` per record. One secret per zone means one read renders a zone
and one check-and-set write applies a whole batch atomically; a concurrent writer (another request
batch, another dnsapi instance) makes the write fail with a CAS mismatch instead of silently
losing an update. The records are one string, not a JSON list, because Vault and OpenBao cap the
number of strings in a request's JSON (a list of objects hit it at a few hundred records); names
and values are validated to hold no whitespace, so the line format is unambiguous.

hvac is synchronous, so every call runs in a worker thread and the event loop never blocks.
Authentication is a token, a token file (re-read when it changes, as Vault Agent rewrites it), or
AppRole (logged in, renewed at half its TTL, logged in again when renewal fails or max TTL nears).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from .config import VaultConfig
from .errors import VaultUnavailable
from .metrics import Metrics
from .records import Record

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT_VERSION = 2


_LINES: dict[tuple[str, str], tuple[Record, str]] = {}  # key -> (record, its line), see below


def encode_records(records: dict[tuple[str, str], Record]) -> dict[str, Any]:
    """The zone secret's data for `records`, in their order (which decode_records keeps, so a
    state read back encodes identically; new records come last).

    Each batch re-encodes thousands of unchanged records, so lines are remembered per key and
    reused while the record is the very same object (records are immutable and shared between
    states). The memory is dropped when it holds far more than the records in use."""
    if len(_LINES) > 2 * len(records) + 4096:
        _LINES.clear()
    lines = []
    for key, record in records.items():
        known = _LINES.get(key)
        if known is None or known[0] is not record:
            known = _LINES[key] = (record, f"{record.fqdn} {record.value} {record.ttl} "
                                           f"{record.created_at:.3f}")
        lines.append(known[1])
    return {"format": FORMAT_VERSION, "records": "\n".join(lines)}


def decode_records(data: dict[str, Any]) -> dict[tuple[str, str], Record]:
    """Records from a zone secret's data; a line that is not a record is skipped with a warning
    (only dnsapi writes here, but a hand edit must not stop the service)."""
    records: dict[tuple[str, str], Record] = {}
    for line in str(data.get("records") or "").splitlines():
        try:
            fqdn, value, ttl, created_at = line.split()
            record = Record(fqdn=fqdn, value=value, ttl=int(ttl), created_at=float(created_at))
        except ValueError:
            log.warning("ignoring a malformed record line in Vault: %r", line[:200])
            continue
        records[record.key] = record
    return records


def is_kv2(mount: dict[str, Any]) -> bool:
    """Is this mount description (from sys/mounts or sys/internal/ui/mounts) a KV version 2 mount?"""
    return mount.get("type") in ("kv", "generic") and (mount.get("options") or {}).get("version") == "2"


class CasConflict(Exception):
    """Another writer changed the zone secret since we read it: re-read, re-apply, retry."""


@dataclass
class ZoneState:
    """A zone's records as Vault holds them, and the KV version they were read at (0 = none)."""

    records: dict[tuple[str, str], Record]
    version: int


class VaultAuth:
    """Keeps the hvac client holding a valid token. All methods run in worker threads."""

    def __init__(self, config: VaultConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._token_file_mtime: float | None = None
        self._renew_at: float | None = None  # monotonic time to renew (None: never)
        self._login_ttl = 0  # TTL granted at login: renewals granting much less mean max TTL is near
        self._renewable = False
        self._logged_in = False

    def prepare(self, client: hvac.Client) -> None:
        """Before each call: load or refresh the token if needed."""
        with self._lock:
            if self.config.token_file is not None:
                self._load_token_file(client)
            elif self.config.approle is not None and not self._logged_in:
                self._approle_login(client)
            elif self.config.token is not None and not self._logged_in:
                client.token = self.config.token
                self._schedule_from_lookup(client)
                self._logged_in = True
            if self._renew_at is not None and time.monotonic() >= self._renew_at:
                self._renew(client)

    def recover(self, client: hvac.Client) -> bool:
        """After a 403: get a fresh token if the method allows it. True when worth retrying."""
        with self._lock:
            if self.config.approle is not None:
                self._approle_login(client)
                return True
            if self.config.token_file is not None:
                self._token_file_mtime = None
                return self._load_token_file(client)
            return False

    def _load_token_file(self, client: hvac.Client) -> bool:
        path = self.config.token_file
        assert path is not None
        try:
            mtime = path.stat().st_mtime
            if mtime == self._token_file_mtime:
                return False
            token = path.read_text().strip()
        except OSError as exc:
            raise VaultUnavailable(f"cannot read the Vault token file {path}: {exc.strerror}") from None
        if not token:
            raise VaultUnavailable(f"the Vault token file {path} is empty")
        client.token = token
        self._token_file_mtime = mtime
        log.info("loaded Vault token from %s", path)
        return True

    def _approle_login(self, client: hvac.Client) -> None:
        approle = self.config.approle
        assert approle is not None
        role_id = approle.role_id or _read_secret_file(approle.role_id_file, "AppRole role_id")
        secret_id = approle.secret_id or _read_secret_file(approle.secret_id_file, "AppRole secret_id")
        response = client.auth.approle.login(role_id=role_id, secret_id=secret_id,
                                             mount_point=approle.mount)
        auth = response["auth"]
        self._logged_in = True
        self._login_ttl = auth.get("lease_duration", 0)
        self._schedule(self._login_ttl, auth.get("renewable", False))
        log.info("logged in to Vault with AppRole (token TTL %ss)", auth.get("lease_duration"))

    def _schedule_from_lookup(self, client: hvac.Client) -> None:
        data = client.auth.token.lookup_self()["data"]
        self._login_ttl = data.get("ttl") or 0
        self._schedule(self._login_ttl, data.get("renewable", False))

    def _schedule(self, ttl: int, renewable: bool) -> None:
        """Renew at half the TTL; a token without TTL (root, periodic-less) needs nothing."""
        self._renew_at = time.monotonic() + ttl / 2 if ttl > 0 else None
        self._renewable = renewable

    def _renew(self, client: hvac.Client) -> None:
        """Renew our token; when that fails or the granted TTL shrinks (max TTL near), log in again."""
        if self._renewable:
            try:
                auth = client.auth.token.renew_self()["auth"]
                granted = auth.get("lease_duration", 0)
                if granted > self._login_ttl / 2 or self.config.approle is None:
                    self._schedule(granted, auth.get("renewable", False))
                    return
            except (hvac.exceptions.VaultError, requests.RequestException) as exc:
                log.warning("Vault token renewal failed (%s)", type(exc).__name__)
        if self.config.approle is not None:
            self._approle_login(client)
        else:
            self._renew_at = None  # nothing more we can do; a 403 will surface in /readyz


def _read_secret_file(path: Path | None, what: str) -> str:
    assert path is not None
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise VaultUnavailable(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise VaultUnavailable(f"the {what} file {path} is empty")
    return value


class VaultSession:
    """An hvac client whose token VaultAuth keeps valid; `run` makes every failure a
    VaultUnavailable whose message names no secret. Synchronous: call it from a worker thread
    in async code."""

    def __init__(self, config: VaultConfig) -> None:
        self.config = config
        verify: bool | str = str(config.ca_cert) if config.ca_cert else True
        self.client = hvac.Client(url=config.addr, verify=verify, timeout=config.timeout)
        self.auth = VaultAuth(config)

    def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` with a prepared token; retry once after a 403 if a fresh token can be had."""
        try:
            self.auth.prepare(self.client)
            try:
                return fn()
            except hvac.exceptions.Forbidden:
                if not self.auth.recover(self.client):
                    raise
                return fn()
        except (CasConflict, VaultUnavailable):
            raise
        except hvac.exceptions.Forbidden:
            raise VaultUnavailable("Vault refused dnsapi's token (permission denied or token "
                                   "expired/revoked)") from None
        except hvac.exceptions.VaultError as exc:
            raise VaultUnavailable(f"Vault error: {_vault_message(exc)}") from None
        except requests.exceptions.SSLError:
            raise VaultUnavailable(f"TLS to Vault at {self.config.addr} failed "
                                   "(check vault.ca_cert)") from None
        except requests.RequestException:
            raise VaultUnavailable(f"Vault at {self.config.addr} is unreachable") from None

    # The calls below are raw hvac calls: run them inside `run`.

    def read_kv(self, path: str) -> tuple[dict[str, Any], int]:
        """A KV v2 secret's latest data and version: ({}, 0) when it does not exist, and data {}
        when its latest version was deleted by hand."""
        try:
            body = self.client.secrets.kv.v2.read_secret_version(
                path=path, mount_point=self.config.kv_mount, raise_on_deleted_version=False)["data"]
        except hvac.exceptions.InvalidPath:
            return {}, 0
        return body.get("data") or {}, int(body["metadata"]["version"])

    def write_kv(self, path: str, data: dict[str, Any], cas: int) -> int:
        """Write `data` if the secret is still at version `cas` (0: does not exist yet); returns
        the new version. Raises CasConflict when someone else wrote first."""
        try:
            response = self.client.secrets.kv.v2.create_or_update_secret(
                path=path, secret=data, cas=cas, mount_point=self.config.kv_mount)
        except hvac.exceptions.InvalidRequest as exc:
            if "check-and-set" in str(exc):
                raise CasConflict() from None
            raise
        return int(response["data"]["version"])

    def capabilities(self, path: str) -> list[str]:
        """What our token may do on `path`: e.g. ["create", "read", ...]."""
        response = self.client.adapter.post("/v1/sys/capabilities-self", json={"paths": [path]})
        data = response.get("data", response) if isinstance(response, dict) else {}
        return list(data.get(path) or data.get("capabilities") or [])


class VaultStore:
    """Async facade over hvac for the zone secrets."""

    def __init__(self, config: VaultConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.session = VaultSession(config)
        self.client = self.session.client
        self.metrics = metrics or Metrics()

    def secret_path(self, zone: str) -> str:
        return f"{self.config.prefix}/zones/{zone}"

    async def read_zone(self, zone: str) -> ZoneState:
        return await self._call("read_zone", lambda: self._read_zone(zone))

    async def write_zone(self, zone: str, records: dict[tuple[str, str], Record], cas: int) -> int:
        """Write all of a zone's records if the secret is still at version `cas`; returns the new
        version. Raises CasConflict when someone else wrote first."""
        # Encoding too runs in the worker thread: it grows with the zone.
        return await self._call("write_zone", lambda: self.session.write_kv(
            self.secret_path(zone), encode_records(records), cas))

    async def current_version(self, zone: str) -> int:
        """The zone secret's current KV version (0 when it does not exist): one small metadata
        read, so other instances' writes can be noticed cheaply."""
        def read() -> int:
            try:
                response = self.client.secrets.kv.v2.read_secret_metadata(
                    path=self.secret_path(zone), mount_point=self.config.kv_mount)
            except hvac.exceptions.InvalidPath:
                return 0
            return int(response["data"]["current_version"])

        return await self._call("current_version", read)

    async def capabilities(self, zone: str) -> list[str]:
        """What our token may do on the zone secret (for /readyz): e.g. ["create", "read", ...]."""
        path = f"{self.config.kv_mount}/data/{self.secret_path(zone)}"
        return await self._call("capabilities", lambda: self.session.capabilities(path))

    def _read_zone(self, zone: str) -> ZoneState:
        data, version = self.session.read_kv(self.secret_path(zone))
        return ZoneState(records=decode_records(data), version=version)

    async def _call(self, operation: str, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return await asyncio.to_thread(self.session.run, fn)
        except CasConflict:
            raise  # counted per zone by the writer
        except Exception:
            self.metrics.vault_errors.labels(operation).inc()
            raise
        finally:
            self.metrics.vault_seconds.labels(operation).observe(time.perf_counter() - start)


def _vault_message(exc: hvac.exceptions.VaultError) -> str:
    errors: Any = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)[:300]
    return type(exc).__name__
