"""The one Vault connection: authentication that keeps a token valid, and KV v2 calls whose every
failure becomes a VaultUnavailable that names no secret.

hvac is synchronous, so callers run these in worker threads; the one exception is the zone write
on an add's path (`write_kv_direct`), sent from the event loop over aiohttp, because one client
waits for it: no hand-off to a thread and back, and less client work per request than hvac's.
Whatever that write does not get a plain answer to goes the threaded way, through `run` and its
failover handling. Authentication is a token, a token
file (re-read when it changes, as Vault Agent rewrites it), or AppRole (logged in, renewed at half
its TTL, logged in again when renewal fails or max TTL nears). The record service (store.py), the
PKI tools (dnsapi/pki/) and `dnsapi check` all use this module.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import hvac
import hvac.exceptions
import requests
import requests.utils

from .config import VaultConfig
from .errors import VaultUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class CasConflict(Exception):
    """Another writer changed the zone secret since we read it: re-read, re-apply, retry.
    `uncertain`: an earlier attempt of the same write got no answer and may have landed, so
    the other writer may be that attempt (VaultStore.write_zone looks)."""

    def __init__(self, uncertain: bool = False) -> None:
        super().__init__()
        self.uncertain = uncertain


class Detour(Exception):
    """A direct write got no plain answer (a standby's redirect, a refused token, a node gone,
    a token that needs renewing first): send it through `VaultSession.run` instead, which
    knows what to do about each. `confirm`: the node may no longer lead, so ask every node
    first. The write may have landed; the retry is a check-and-set conflict then."""

    def __init__(self, confirm: bool, why: str | None = None) -> None:
        super().__init__()
        self.confirm, self.why = confirm, why


# sys/health's status codes for a node that cannot take requests itself (hvac hands back the
# bare response for them): what it is, and what to do.
_NOT_READY = {429: ("a standby node", "point vault.addr at the active node, or list every node"),
              472: ("a disaster-recovery secondary", "point vault.addr at the primary cluster"),
              473: ("a performance standby", "point vault.addr at the active node"),
              501: ("not initialised", "bao operator init"),
              503: ("sealed", "bao operator unseal")}


def not_ready(health: object) -> tuple[str, str] | None:
    """What a sys/health answer says keeps the node from serving dnsapi (what it is, what to
    do), or None when it is an unsealed active node."""
    if isinstance(health, dict):
        return ("sealed", _NOT_READY[503][1]) if health.get("sealed") else None
    status = int(getattr(health, "status_code", 0))
    return _NOT_READY.get(status, (f"not ready (HTTP {status})", "see the Vault server's log"))


def is_kv2(mount: dict[str, Any]) -> bool:
    """Is this mount description (from sys/mounts or sys/internal/ui/mounts) a KV version 2 mount?"""
    return mount.get("type") in ("kv", "generic") and (mount.get("options") or {}).get("version") == "2"


RELOGIN_PAUSE = 60.0  # seconds: a 403 to a still-valid AppRole token logs in again at most this often


class VaultAuth:
    """Keeps the hvac client holding a valid token. All methods but `ready_token` run in worker
    threads."""

    def __init__(self, config: VaultConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._token_file_mtime: float | None = None
        self._renew_at: float | None = None  # monotonic time to renew (None: never)
        self._login_ttl = 0  # TTL granted at login: renewals granting much less mean max TTL is near
        self._renewable = False
        self._logged_in = False
        self._relogin_at = 0.0  # monotonic time before which a refused valid token is kept

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

    def ready_token(self, client: hvac.Client) -> str | None:
        """The token, when it may be used as it is: None when `prepare` has work to do first
        (a login, a renewal, a changed token file) or is doing it now. Never waits, so the
        event loop may ask."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self.config.token_file is not None:
                try:
                    if self.config.token_file.stat().st_mtime != self._token_file_mtime:
                        return None
                except OSError:
                    return None
            elif not self._logged_in:
                return None
            if self._renew_at is not None and time.monotonic() >= self._renew_at:
                return None
            return client.token or None
        finally:
            self._lock.release()

    def recover(self, client: hvac.Client, refused: str | None = None) -> bool:
        """After a 403 to token `refused`: get a fresh token if the method allows it. True when
        worth retrying. Several threads refused at once log in once: the others find the token
        already replaced and retry with it. A token Vault still knows was refused for want of a
        permission, which only a policy added to the AppRole role since the login would bring:
        that login is tried at most once every RELOGIN_PAUSE, not once per refused request
        (each leaves a token behind and may use up one of the secret_id's uses)."""
        with self._lock:
            if refused is not None and client.token != refused:
                return True
            if self.config.approle is not None:
                if time.monotonic() < self._relogin_at and _still_valid(client):
                    return False
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
        self._logged_in, self._relogin_at = True, time.monotonic() + RELOGIN_PAUSE
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
            except (hvac.exceptions.VaultError, requests.RequestException, VaultRefused) as exc:
                log.warning("Vault token renewal failed (%s)", type(exc).__name__)
        if self.config.approle is not None:
            self._approle_login(client)
        else:
            self._renew_at = None  # nothing more we can do; a 403 will surface in /readyz


def _still_valid(client: hvac.Client) -> bool:
    """Does Vault still accept the client's token? (lookup-self is in every token's default
    policy.) False when it cannot tell."""
    try:
        client.auth.token.lookup_self()
    except (hvac.exceptions.VaultError, requests.RequestException):
        return False
    return True


def _read_secret_file(path: Path | None, what: str) -> str:
    assert path is not None
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise VaultUnavailable(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise VaultUnavailable(f"the {what} file {path} is empty")
    return value


# Answers that mean "not the active node, or none yet": a standby's redirect (307), an election
# in progress or a node that just lost its quorum (500, 502), a sealed or stepping-down node
# (503), and any other 5xx (hvac's UnexpectedError: a proxy's 504, say). A 4xx hvac has no class
# for (409, 412, 413, ...) is the request's fault and would not change: see _check_answer.
_NOT_ACTIVE = (hvac.exceptions.InternalServerError, hvac.exceptions.BadGateway,
               hvac.exceptions.VaultDown, hvac.exceptions.UnexpectedError)
_HVAC_CLIENT_ERRORS = frozenset({400, 401, 403, 404, 429})  # those hvac has a class for
PROBE_TIMEOUT = 1.0  # seconds a node may take to say whether it leads
PROBE_PAUSE = 0.1  # between rounds of probes while no node is active (an election)


class _Standby(Exception):
    """The node answered, but it is not (or no longer) the active one."""


def _check_answer(response: requests.Response, *args: object, **kwargs: object) -> None:
    """requests hook: a redirect (a standby naming the active node) is _Standby, never followed;
    a 4xx hvac would call UnexpectedError, which `run` would retry as if no node led until
    vault.failover_timeout, is VaultUnavailable at once."""
    if response.is_redirect:
        response.close()
        raise _Standby(f"redirected (HTTP {response.status_code}): not the active node")
    if 400 <= response.status_code < 500 and response.status_code not in _HVAC_CLIENT_ERRORS \
            and not response.url.split("?")[0].endswith("/v1/sys/health"):  # (its 472, 473: not_ready)
        errors = _errors_of(response.text)
        response.close()
        raise VaultRefused(response.status_code, f"Vault refused the request (HTTP "
                           f"{response.status_code} {response.reason}{': ' + errors if errors else ''})")


class VaultRefused(VaultUnavailable):
    """A 4xx hvac has no class for (405, 409, 412, 413, ...): the request's fault, said at once."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


class VaultSession:
    """An hvac client pointed at the cluster's active node, with a token VaultAuth keeps valid.
    `run` retries through leader changes, node losses and elections for vault.failover_timeout
    and makes every other failure a VaultUnavailable whose message names no secret.
    Synchronous: call it from a worker thread in async code (`write_kv_direct` excepted).

    Why always the active node: a raft standby forwards writes but, since OpenBao 2.5, answers
    reads from its own state, which may lag. Writes carry `X-Vault-No-Request-Forwarding`, so a
    standby answers them with a redirect instead of forwarding, and dnsapi looks for the active
    node again; a read (`run(..., read=True)`) first asks its node whether it is still active.
    Retrying a write whose answer was lost is safe because every zone write is a check-and-set:
    if the first attempt landed, the retry is a conflict marked `uncertain`, and the store
    finds its own write in the version it made (VaultStore.write_zone).
    """

    def __init__(self, config: VaultConfig) -> None:
        self.config = config
        self.verify: bool | str = str(config.ca_cert) if config.ca_cert else True
        # token="": none from VAULT_TOKEN or ~/.vault-token (VaultAuth sets the configured one)
        self.client = hvac.Client(url=config.addrs[0], token="", verify=self.verify,
                                  timeout=config.timeout, allow_redirects=False)
        self.client.session.headers["X-Vault-No-Request-Forwarding"] = "true"
        # A standby's redirect is not an error to hvac, which hands back the bare response: the
        # caller would take it for an answer. It means "not the active node", whatever the call.
        # (And a 4xx hvac has no class for is said at once: _check_answer.)
        self.client.session.hooks["response"].append(_check_answer)
        # Configured, not inherited: no proxy, netrc or CA bundle from the environment
        # (vault.ca_cert names the CA), and no lookup of each on every call.
        self.client.session.trust_env = False
        self.auth = VaultAuth(config)
        self._probes = requests.Session()
        self._probes.trust_env = False
        self._warned: set[str] = set()  # leaders named over another scheme, told once each
        self._direct: aiohttp.ClientSession | None = None  # for write_kv_direct, made in the loop

    @property
    def url(self) -> str:
        """The node dnsapi talks to now (the active one, as far as it knows)."""
        return str(self.client.url)

    def run(self, fn: Callable[[], T], read: bool = False, patience: float | None = None,
            confirm: bool = False, failed: str | None = None) -> T:
        """Run `fn` on the active node with a prepared token; retry once after a 403 if a fresh
        token can be had, and through failovers for `patience` seconds (default
        vault.failover_timeout; /readyz wants an answer now, not after an election). `read`:
        first ask the node whether it still leads; `confirm`: first ask every node which one
        leads (for a read that looked stale, or after a direct write that `failed`)."""
        deadline = time.monotonic() + (self.config.failover_timeout if patience is None else patience)
        if confirm and not self._find_active(deadline):
            raise VaultUnavailable(self._unavailable(failed or "no node leads"))
        retried = confirm and failed is not None  # after a direct write that got no answer
        overtime = False  # one try at a newly found leader past the deadline, no more
        while True:
            try:
                if read and not self._is_active(self.url):
                    raise _Standby()
                return self._call(fn)
            except CasConflict as conflict:
                conflict.uncertain = retried
                raise
            except requests.exceptions.SSLError:
                raise VaultUnavailable(f"TLS to Vault at {self.url} failed "
                                       "(check vault.ca_cert)") from None
            except (_Standby, requests.ConnectionError, requests.Timeout, *_NOT_ACTIVE) as exc:
                failed, retried = self.url, True
                why = _vault_message(exc) if isinstance(exc, hvac.exceptions.VaultError) \
                    else "not the active node" if isinstance(exc, _Standby) else type(exc).__name__
                log.info("Vault at %s did not answer as the active node (%s)", failed, why)
                late = time.monotonic() >= deadline
                if not self._find_active(deadline) or (late and (self.url == failed or overtime)):
                    raise VaultUnavailable(self._unavailable(why)) from None
                overtime = late
                if self.url == failed and not isinstance(exc, _Standby):
                    time.sleep(PROBE_PAUSE)  # still the active node: it may be settling in

    def _unavailable(self, why: str) -> str:
        if len(self.config.addrs) == 1:
            return f"Vault at {self.config.addrs[0]} is unreachable or not active ({why})"
        return f"no active Vault node among {', '.join(self.config.addrs)} ({why})"

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            self.auth.prepare(self.client)
            token = self.client.token
            try:
                return fn()
            except hvac.exceptions.Forbidden:
                if not self.auth.recover(self.client, token):
                    raise
                return fn()
        except (CasConflict, VaultUnavailable, requests.ConnectionError, requests.Timeout,
                *_NOT_ACTIVE):
            raise
        except hvac.exceptions.Forbidden:
            raise VaultUnavailable("Vault refused dnsapi's token (permission denied or token "
                                   "expired/revoked)") from None
        except hvac.exceptions.VaultError as exc:
            raise VaultUnavailable(f"Vault error: {_vault_message(exc)}") from None
        except requests.RequestException:
            raise VaultUnavailable(f"Vault at {self.url} is unreachable") from None

    def _find_active(self, deadline: float) -> bool:
        """Point the client at the active node: the one most nodes name as leader (a node
        naming itself counts), among the configured nodes and the leaders they name (so a list
        holding only a standby still finds it). Asking every node, not the first that claims
        it: a leader that was frozen (SIGSTOP, a paused VM) and resumed goes on claiming the
        lead after losing it, and answers writes with a redirect. False when no node is active
        before `deadline`; VaultUnavailable at once when no node's certificate is trusted
        (waiting would not change that)."""
        while True:
            answers, untrusted = self._ask_nodes()
            if untrusted and not answers:
                raise VaultUnavailable(f"TLS to Vault at {', '.join(untrusted)} failed "
                                       "(check vault.ca_cert)")
            if untrusted:
                log.warning("Vault: TLS to %s failed (check vault.ca_cert); asked the other "
                            "nodes", ", ".join(untrusted))
            votes = Counter(leader for leader in answers.values() if leader)
            for leader, _ in votes.most_common():
                if answers.get(leader) == leader:
                    if leader != self.url:
                        log.warning("Vault: now talking to the active node %s", leader)
                    self.client.url = leader
                    return True
            if time.monotonic() + PROBE_PAUSE >= deadline:
                return False
            time.sleep(PROBE_PAUSE)

    def _ask_nodes(self) -> tuple[dict[str, str], list[str]]:
        """One round of asking: {node: the leader it names} for every node that answered, among
        the configured ones and the leaders they name; and the nodes whose certificate is not
        trusted."""
        answers: dict[str, str] = {}
        untrusted: list[str] = []
        pending = list(self.config.addrs)
        while pending:
            addr = pending.pop(0)
            if addr in answers or addr in untrusted:
                continue
            try:
                named = self._named_leader(addr)
            except requests.exceptions.SSLError:
                untrusted.append(addr)
                continue
            if named is not None:
                answers[addr] = named
                if named not in answers and named not in pending:
                    pending.append(named)
        return answers, untrusted

    def _is_active(self, addr: str) -> bool:
        """Does the node at `addr` say it leads? (A frozen and resumed former leader may say so
        wrongly for a while: reads guard against that with the versions they have seen, and
        writes by the redirect it answers them with.)"""
        return self._named_leader(addr) == addr

    def _named_leader(self, addr: str) -> str | None:
        """The node `addr` names as the active one in sys/leader: itself when it leads or runs
        without HA (one node, nobody else to ask), "" when it knows of none (an election);
        None when it does not answer. Raises requests' SSLError when its certificate is not
        trusted."""
        try:
            response = self._probes.get(f"{addr}/v1/sys/leader", verify=self.verify, allow_redirects=False,
                                        timeout=min(PROBE_TIMEOUT, self.config.timeout))
            answer = response.json() if response.status_code == 200 else None
        except requests.exceptions.SSLError:
            raise
        except (requests.RequestException, ValueError):
            return None
        if not isinstance(answer, dict):
            return None
        if answer.get("is_self") is True or answer.get("ha_enabled") is False:
            return addr
        leader = str(answer.get("leader_address") or "").rstrip("/")
        if not re.fullmatch(r"https?://[^\s/]+", leader):
            return ""
        if leader.partition(":")[0] != addr.partition(":")[0]:
            # The token would go there: never from https down to http (nor the other way).
            if leader not in self._warned:
                self._warned.add(leader)
                log.warning("Vault at %s names %s as the active node, over another scheme than "
                            "vault.addr's; not followed (check the nodes' api_addr)", addr, leader)
            return ""
        return leader

    # The calls below are raw hvac calls: run them inside `run`.

    def read_kv(self, path: str, version: int | None = None) -> tuple[dict[str, Any], int]:
        """A KV v2 secret's data and version, the latest or the given `version`: ({}, 0) when it
        does not exist, and data {} when that version was deleted."""
        try:
            body = self.client.secrets.kv.v2.read_secret_version(
                path=path, version=version, mount_point=self.config.kv_mount,
                raise_on_deleted_version=False)["data"]
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

    async def write_kv_direct(self, path: str, data: dict[str, Any], cas: int) -> int:
        """write_kv from the event loop, once, to the node dnsapi takes for the active one.
        Raises CasConflict as write_kv does, and Detour for anything but a plain answer."""
        token = self.auth.ready_token(self.client)
        if token is None:
            raise Detour(confirm=False)
        url = f"{self.url}/v1/{self.config.kv_mount}/data/{path}"
        try:
            async with self._direct_session().post(
                    url, json={"options": {"cas": cas}, "data": data}, allow_redirects=False,
                    headers={"X-Vault-Token": token, "X-Vault-Request": "true",
                             "X-Vault-No-Request-Forwarding": "true"}
            ) as response:
                if response.status == 200:
                    return int((await response.json())["data"]["version"])
                why = _errors_of(await response.text()) or f"HTTP {response.status}"
                if response.status == 400 and "check-and-set" in why:
                    raise CasConflict()
                confirm = response.status != 403  # a refused token: a fresh one, not another node
        except aiohttp.ClientSSLError:
            # hvac meets the same certificate and says so at once (vault.ca_cert)
            why, confirm = "TLS", False
        except aiohttp.ClientConnectionError:
            why, confirm = "ConnectionError", True
        except TimeoutError:
            why, confirm = "Timeout", True
        except (aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            why, confirm = type(exc).__name__, True
        log.info("Vault at %s: direct write answered %s; retrying it the threaded way", self.url, why)
        raise Detour(confirm, why)

    def _direct_session(self) -> aiohttp.ClientSession:
        if self._direct is None or self._direct.closed:
            # The CA bundle requests would use, so both ways trust the same Vault.
            context = ssl.create_default_context(
                cafile=self.verify if isinstance(self.verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH)
            self._direct = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        return self._direct

    async def close(self) -> None:
        """Close the direct writes' connections (the threaded calls need no closing)."""
        if self._direct is not None:
            await self._direct.close()

    def list_kv(self, path: str) -> list[str]:
        """The keys in a KV folder ([] when it holds none)."""
        try:
            return self.client.secrets.kv.v2.list_secrets(
                path=path, mount_point=self.config.kv_mount)["data"]["keys"]
        except hvac.exceptions.InvalidPath:
            return []

    def delete_kv(self, path: str) -> None:
        """Delete a secret with all its versions and metadata."""
        self.client.secrets.kv.v2.delete_metadata_and_all_versions(
            path=path, mount_point=self.config.kv_mount)

    def capabilities(self, paths: list[str]) -> dict[str, set[str]]:
        """What our token may do on each of `paths`: e.g. {"secret/data/x": {"create", ...}}."""
        response = self.client.adapter.post("/v1/sys/capabilities-self", json={"paths": paths})
        data = response.get("data", response) if isinstance(response, dict) else {}
        return {path: set(data.get(path) or []) for path in paths}


def _joined(errors: Any) -> str:
    """A Vault answer's `errors` list as one short line ('' when there is none)."""
    return "; ".join(str(e) for e in errors)[:300] if isinstance(errors, list) else ""


def _errors_of(body: str) -> str:
    """The `errors` of a Vault error answer's JSON body, joined ('' when there are none)."""
    try:
        return _joined(json.loads(body).get("errors"))
    except (ValueError, AttributeError):
        return ""


def _vault_message(exc: hvac.exceptions.VaultError) -> str:
    return _joined(getattr(exc, "errors", None)) or type(exc).__name__
