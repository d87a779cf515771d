"""Vault KV v2 as the source of truth: one secret per zone, written with check-and-set.

Layout: `<kv_mount>/data/<prefix>/zones/<zone>` is the zone secret. A small zone's secret holds
every record, `{"format": 2, "records": TEXT}`, TEXT having one line `fqdn value ttl created_at`
per record. A larger zone's secret holds only what changed since a snapshot,
`{"format": 3, "base": NAME, "records": TEXT, "removed": "fqdn value\n..."}`, over an immutable
snapshot secret `<prefix>/snapshots/<zone>/<NAME>` (format 2). Either way one check-and-set write
on the zone secret applies a whole batch atomically, and a concurrent writer (another request
batch, another dnsapi instance) makes the write fail with a CAS mismatch instead of silently
losing an update. The delta form keeps a batch's write proportional to what changed since the
snapshot rather than to the zone: OpenBao spends ~40 µs of CPU per KB written, so rewriting a
few thousand live records whole on every batch was most of a busy batch's time. A new snapshot is
taken (written, then named by the next zone secret write) once the changes outgrow DELTA_MAX, and
the one it replaces is deleted.

A record line of a kind this dnsapi does not know (a newer dnsapi's, during a rolling upgrade)
is kept and written back as it was read, never served (`Foreign`, decode_records).

The records are one string, not a JSON list, because Vault and OpenBao cap the number of strings
in a request's JSON (a list of objects hit it at a few hundred records); names and values are
validated to hold no whitespace, so the line format is unambiguous.

Every call goes through the one Vault connection (vault.py): in a worker thread, so the event loop
never blocks, except a batch's one write of the zone secret, which the loop sends itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests

from .config import VaultConfig
from .errors import VaultUnavailable
from .metrics import Metrics
from .records import Key, Record
from .vault import CasConflict, Detour, VaultSession

log = logging.getLogger(__name__)
T = TypeVar("T")

FULL_FORMAT = 2  # the secret holds every record
DELTA_FORMAT = 3  # the secret holds the changes since a snapshot secret
INLINE_MAX = 256  # zones of up to this many records are written whole, without a snapshot
DELTA_MAX = 256  # changed keys since the snapshot before a new snapshot is taken
SNAPSHOT_GRACE = 86400.0  # an unnamed snapshot this old is garbage: no write can still name it
VAULT_THREADS = 8  # Vault calls in flight at once (each may wait out an election)
_SNAPSHOT_NAME = re.compile(r"[0-9a-f]{16}")  # creation time (8 hex digits of seconds) + random

Lines = dict[Key, tuple[Record, str, str]]  # key -> (record, its line, its owner line): _lines_of
# key -> (record line, owner line or "") of a record this dnsapi keeps in Vault as it is but never
# serves: of a kind it does not know (a newer dnsapi's, in a rolling upgrade), or one its config
# refuses (another node's config, or a hand edit). See decode_records.
Foreign = dict[Key, tuple[str, str]]
Accept = Callable[[Record], bool]  # would this node have accepted the record?


def zone_secret(prefix: str, zone: str) -> str:
    """The zone secret's path under the KV mount."""
    return f"{prefix}/zones/{zone}"


def snapshot_folder(prefix: str, zone: str) -> str:
    """The folder under the KV mount that holds the zone's snapshot secrets."""
    return f"{prefix}/snapshots/{zone}"


def _lines_of(record: Record, lines: Lines) -> tuple[str, str]:
    """A record's line and its owner line ('' when it has no owner). Each full write re-encodes
    thousands of unchanged records, so a store remembers them per key in `lines` and reuses
    them while the record is the very same object (records are immutable and shared between
    states)."""
    known = lines.get(record.key)
    if known is None or known[0] is not record:
        kind = "" if record.kind == "TXT" else f" {record.kind}"
        # The owners are kept apart from the record lines (`<fqdn> <value> <token name,
        # URL-quoted>`, the per-token quota's bookkeeping) so that an older dnsapi, which reads
        # only the record lines, neither misreads nor drops a record (it drops only the owners).
        owner = f"{record.fqdn} {record.value} {urllib.parse.quote(record.owner, safe='')}" \
            if record.owner else ""
        known = lines[record.key] = (record, f"{record.fqdn} {record.value} {record.ttl} "
                                             f"{record.created_at:.3f}{kind}", owner)
    return known[1], known[2]


def _encode(records: Iterable[Record], lines: Lines) -> tuple[str, str]:
    """The record lines and the owner lines of `records`."""
    encoded = [_lines_of(record, lines) for record in records]
    return "\n".join(line for line, _ in encoded), "\n".join(owner for _, owner in encoded if owner)


def encode_records(records: dict[Key, Record], lines: Lines | None = None,
                   foreign: Foreign | None = None) -> dict[str, Any]:
    """A full secret's data for `records`, and the `foreign` lines as they were read (but for
    a key `records` now holds: a record added since wins). The remembered `lines` are dropped
    when they are far more than the records in use."""
    if lines is None:
        lines = {}
    elif len(lines) > 2 * len(records) + 4096:
        lines.clear()
    record_lines, owner_lines = _encode(records.values(), lines)
    kept = [both for key, both in (foreign or {}).items() if key not in records]
    if kept:
        record_lines = "\n".join(filter(None, [record_lines, *(line for line, _ in kept)]))
        owner_lines = "\n".join(filter(None, [owner_lines, *(owner for _, owner in kept)]))
    return {"format": FULL_FORMAT, "records": record_lines, "owners": owner_lines}


def _owners(data: dict[str, Any]) -> dict[Key, tuple[str, str]]:
    """key -> (the token name, the owner line)."""
    owners = {}
    for line in str(data.get("owners") or "").splitlines():
        fields = line.split()
        if len(fields) == 3:
            owners[(fields[0], fields[1])] = (urllib.parse.unquote(fields[2]), line)
    return owners


def encode_delta(base: str, records: dict[Key, Record], changed: Iterable[Key],
                 lines: Lines | None = None) -> dict[str, Any]:
    """A delta secret's data: `records` as the changed keys over snapshot `base`."""
    upserts, removed = [], []
    for key in changed:
        record = records.get(key)
        if record is None:
            removed.append(f"{key[0]} {key[1]}")
        else:
            upserts.append(record)
    record_lines, owner_lines = _encode(upserts, {} if lines is None else lines)
    return {"format": DELTA_FORMAT, "base": base, "records": record_lines, "owners": owner_lines,
            "removed": "\n".join(removed)}


def decode_records(data: dict[str, Any], foreign: Foreign | None = None,
                   accept: Accept | None = None) -> dict[Key, Record]:
    """Records from a secret's record lines; a line that is not a record is skipped with a
    warning (only dnsapi writes here, but a hand edit must not stop the service).

    A fifth field is the kind of a record other than TXT: "CNAME" here. A line that is a record
    but for further fields this dnsapi does not know (a newer dnsapi's), or one that `accept`
    refuses, goes into `foreign` when given, so that the store writes it back unchanged:
    dropping it would delete another node's record from Vault, during a rolling upgrade (as
    dnsapi before CNAMEs did to them) or while the nodes' configs differ.
    Keys stay unique across kinds (a CNAME's value holds dots, a TXT value never does); a
    later kind must keep that, since records, owners and removals go by key."""
    records: dict[Key, Record] = {}
    owners = _owners(data)
    for line in str(data.get("records") or "").splitlines():
        try:
            fqdn, value, ttl, created_at, *kind = line.split()
            record = Record(fqdn=fqdn, value=value, ttl=int(ttl), created_at=float(created_at),
                            owner=owners.get((fqdn, value), ("", ""))[0],
                            kind=kind[0] if kind == ["CNAME"] else "TXT")
        except ValueError:
            log.warning("ignoring a malformed record line in Vault: %r", line[:200])
            continue
        known = kind in ([], ["CNAME"])
        if known and (accept is None or accept(record)):
            records[record.key] = record
        elif foreign is not None:
            foreign[record.key] = (line, owners.get(record.key, ("", ""))[1])
            if not known:
                _tell_foreign(kind[0], line)
    return records


_told: set[str] = set()  # the foreign kinds logged so far


def _tell_foreign(kind: str, line: str) -> None:
    """Log the first line of each foreign kind once per process, not at every read of the zone
    (nor for every new challenge of that kind)."""
    if kind not in _told and len(_told) < 100:
        _told.add(kind)
        log.warning("keeping record lines in Vault of a kind this dnsapi does not know, %r "
                    "(written by a newer dnsapi?); they are not served. The first: %r",
                    kind[:40], line[:200])


def apply_delta(base: dict[Key, Record], data: dict[str, Any], foreign: Foreign | None = None,
                accept: Accept | None = None) -> tuple[dict[Key, Record], frozenset[Key]]:
    """A delta secret's records over its snapshot's, and the keys it changes. `foreign`, when
    given, holds the snapshot's foreign lines and is brought up to date with the delta's (a
    key is in one of the two, whichever its latest line puts it in)."""
    records = dict(base)
    changed: set[Key] = set()
    for line in str(data.get("removed") or "").splitlines():
        fields = line.split()
        if len(fields) != 2:
            log.warning("ignoring a malformed removed-record line in Vault: %r", line[:200])
            continue
        key = (fields[0], fields[1])
        records.pop(key, None)
        if foreign is not None:
            foreign.pop(key, None)
        changed.add(key)
    kept: Foreign = {}
    for key, record in decode_records(data, kept, accept).items():
        records[key] = record
        if foreign is not None:
            foreign.pop(key, None)
        changed.add(key)
    for key, lines in kept.items():
        records.pop(key, None)
        if foreign is not None:
            foreign[key] = lines
        changed.add(key)
    return records, frozenset(changed)


@dataclass(frozen=True)
class Snapshot:
    """An immutable snapshot secret: its name and its records (never mutated)."""

    name: str
    records: dict[Key, Record]
    foreign: Foreign = field(default_factory=dict)


def _snapshot_left(snapshot: Snapshot, zone: str, why: str) -> None:
    """A replaced snapshot could not be deleted: only unused space, swept once a day old."""
    log.warning("could not delete the replaced snapshot %s of zone %s (%s)", snapshot.name, zone, why)


@dataclass(frozen=True)
class _OneWrite:
    """What one write of the zone secret holds, and the snapshot it is a delta over (if any)."""

    data: dict[str, Any]
    base: Snapshot | None
    changed: frozenset[Key]


@dataclass
class ZoneState:
    """A zone's records as Vault holds them, and the KV version they were read at (0 = none).
    With a snapshot `base`, the secret holds the keys in `changed` over the base's records."""

    records: dict[Key, Record]
    version: int
    base: Snapshot | None = None
    changed: frozenset[Key] = field(default_factory=frozenset)
    foreign: Foreign = field(default_factory=dict)  # never changed by this dnsapi; written back


def zone_access(session: VaultSession, zone: str) -> str | None:
    """None when our token may do everything dnsapi does with the zone's secrets (read and
    write the zone secret; create, read, list and delete its snapshots), else what it lacks.
    Snapshots are only used past INLINE_MAX records, so a narrower policy would fail late."""
    kv = session.config.kv_mount
    snapshots = snapshot_folder(session.config.prefix, zone)
    needs = {f"{kv}/data/{zone_secret(session.config.prefix, zone)}": ({"read", "create", "update"},
                                                                     "the zone secret"),
             f"{kv}/data/{snapshots}/x": ({"read", "create"}, f"{kv}/data/{snapshots}/*"),
             f"{kv}/metadata/{snapshots}/x": ({"delete"}, f"{kv}/metadata/{snapshots}/*"),
             f"{kv}/metadata/{snapshots}": ({"list"}, f"{kv}/metadata/{snapshots}")}
    granted = session.capabilities(list(needs))
    for path, (need, what) in needs.items():
        missing = need - granted[path]
        if missing and "root" not in granted[path]:
            return f"token lacks {', '.join(sorted(missing))} on {what}"
    return None


class VaultStore:
    """Async facade over hvac for the zone secrets and their snapshots."""

    def __init__(self, config: VaultConfig, metrics: Metrics) -> None:
        self.config = config
        self.session = VaultSession(config)
        self.client = self.session.client
        self.metrics = metrics
        self._lines: Lines = {}
        self._snapshots: dict[str, Snapshot] = {}  # zone -> the last snapshot read or written
        self._versions: dict[str, int] = {}  # zone -> the newest version read or written
        # Threads of their own: calls waiting out an election must not hold the default
        # pool's, which the zone files' reads and writes and the DNS doors use.
        self._threads = ThreadPoolExecutor(VAULT_THREADS, thread_name_prefix="vault")

    def secret_path(self, zone: str) -> str:
        return zone_secret(self.config.prefix, zone)

    async def close(self) -> None:
        await self.session.close()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def snapshot_path(self, zone: str, name: str) -> str:
        return f"{snapshot_folder(self.config.prefix, zone)}/{name}"

    async def read_zone(self, zone: str, accept: Accept | None = None) -> ZoneState:
        """The zone as the active node holds it; records `accept` refuses are left out of the
        records and kept as they are in ZoneState.foreign, to be written back.

        A version older than one this store already read or wrote means a node answered that no
        longer leads (a frozen former leader can claim the lead for a while): read again once
        every node has been asked which one leads, and take that answer (it is older for real
        when the secret was deleted by hand)."""
        state = await self._call("read_zone", lambda: self._read_zone(zone, accept), read=True)
        if state.version < self._versions.get(zone, 0):
            log.warning("zone %s: Vault answered version %d after %d; asking every node which "
                        "one leads", zone, state.version, self._versions[zone])
            state = await self._call("read_zone", lambda: self._read_zone(zone, accept), read=True,
                                     confirm=True)
        self._versions[zone] = state.version
        return state

    async def write_zone(self, zone: str, records: dict[Key, Record], state: ZoneState,
                         touched: Iterable[Key], added: Iterable[Key] = ()) -> ZoneState:
        """Write `records` if the zone secret is still at `state`'s version; `touched` holds
        every key that may differ from `state.records`, `added` the keys the batch added.
        Returns the new state. Raises CasConflict when someone else wrote first."""
        touched = frozenset(touched)
        write_id = secrets.token_hex(8)  # finds this write again if its answer is lost
        added = frozenset(added)
        if any(key in records or key in added for key in state.foreign):
            # A record added over a kept line replaces it, for good: the line must not come
            # back once that record goes, in this batch or a later one. A remove alone leaves
            # it: the line is not this node's to delete.
            state = replace(state, foreign={key: kept for key, kept in state.foreign.items()
                                            if key not in records and key not in added})
        one = self._one_write(zone, records, state, touched)
        if one is None:
            # Several calls (the snapshot, then the secret naming it), in a worker thread.
            written = await self._call(
                "write_zone", lambda: self._write_with_snapshot(zone, records, state, write_id))
        else:
            path, cas, data = self.secret_path(zone), state.version, {**one.data, "write": write_id}
            try:
                version = await self._call("write_zone", lambda: self.session.write_kv(path, data, cas),
                                           direct=lambda: self.session.write_kv_direct(path, data, cas))
            except CasConflict as conflict:
                if not conflict.uncertain or not await self._call(
                        "find_write", lambda: self._landed(zone, cas + 1, write_id), read=True):
                    raise
                version = cas + 1
            written = ZoneState(records=records, version=version, base=one.base,
                                changed=one.changed, foreign=state.foreign)
            if state.base is not None and one.base is None:  # the zone shrank: inline again
                try:
                    await self._call("drop_snapshot", lambda: self._drop_snapshot(zone, state.base))
                except VaultUnavailable as exc:  # best effort: the write above has landed
                    _snapshot_left(state.base, zone, exc.message)
        self._versions[zone] = written.version
        return written

    async def sweep_snapshots(self, zone: str) -> int:
        """Delete the zone's snapshots that its secret does not name and that are older than
        SNAPSHOT_GRACE: left by a crash between writing a snapshot and naming it, or by a failed
        delete. Returns how many."""
        return await self._call("sweep_snapshots", lambda: self._sweep_snapshots(zone), read=True)

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

        return await self._call("current_version", read, read=True)

    async def zone_access(self, zone: str) -> str | None:
        """For /readyz: None when the token may do all dnsapi does with the zone, else what it lacks."""
        return await self._call("capabilities", lambda: zone_access(self.session, zone), patience=0)

    def _read_zone(self, zone: str, accept: Accept | None) -> ZoneState:
        path, missing_at = self.secret_path(zone), None
        while True:
            data, version = self.session.read_kv(path)
            foreign: Foreign = {}
            if data.get("format") != DELTA_FORMAT:
                return ZoneState(records=decode_records(data, foreign, accept), version=version,
                                 foreign=foreign)
            name = data.get("base")
            if not isinstance(name, str) or not _SNAPSHOT_NAME.fullmatch(name):
                raise VaultUnavailable(f"the zone secret {path} names no valid snapshot")
            base = self._snapshots.get(zone)
            if base is None or base.name != name:
                snapshot, exists = self.session.read_kv(self.snapshot_path(zone, name))
                if not exists or not snapshot:
                    # Another instance may have replaced and deleted it since: look again, and
                    # give up only if the zone secret still names it.
                    if missing_at == version:
                        raise VaultUnavailable(
                            f"the zone secret {path} is a delta over snapshot {name}, which is "
                            "missing from Vault; its records cannot be rebuilt (delete the zone "
                            "secret to start the zone afresh)")
                    missing_at = version
                    continue
                base_foreign: Foreign = {}
                base = self._snapshots[zone] = Snapshot(
                    name, decode_records(snapshot, base_foreign, accept), base_foreign)
            foreign.update(base.foreign)
            records, changed = apply_delta(base.records, data, foreign, accept)
            return ZoneState(records=records, version=version, base=base, changed=changed,
                             foreign=foreign)

    def _one_write(self, zone: str, records: dict[Key, Record], state: ZoneState,
                   touched: frozenset[Key]) -> _OneWrite | None:
        """The zone secret that holds `records` in one write: all of them (a small zone), or
        the changes over the current snapshot while they are few. None when a new snapshot
        must be taken first."""
        if len(records) <= INLINE_MAX:
            return _OneWrite(encode_records(records, self._lines, state.foreign), None, frozenset())
        if state.base is None or state.foreign != state.base.foreign:
            return None  # (a delta never writes foreign lines: a snapshot takes them all)
        base = state.base.records
        changed = frozenset(key for key in state.changed | touched
                            if records.get(key) != base.get(key))
        # A key missing from `touched` would be silently lost from the delta; the counts
        # catch a missed add or remove (the only changes batches make), and a full snapshot
        # is then written instead.
        counted = len(base) + sum((key in records) - (key in base) for key in changed)
        if counted != len(records):
            log.error("zone %s: the batch's changed keys do not account for its records "
                      "(%d vs %d); writing a full snapshot", zone, counted, len(records))
            return None
        if len(changed) > DELTA_MAX:
            return None
        return _OneWrite(encode_delta(state.base.name, records, changed, self._lines),
                         state.base, changed)

    def _landed(self, zone: str, version: int, write_id: str) -> dict[str, Any]:
        """The data of the zone secret's `version` if it is the write `write_id` (one whose
        answer was lost: a dropped connection, a leader gone after committing), else {}.
        Re-applying the batch over its own write instead would answer an add "existed", a
        remove "absent", and put back a record another instance removed meanwhile."""
        data, _ = self.session.read_kv(self.secret_path(zone), version)
        return data if data.get("write") == write_id else {}

    def _write_with_snapshot(self, zone: str, records: dict[Key, Record],
                             state: ZoneState, write_id: str) -> ZoneState:
        path = self.secret_path(zone)
        # A new snapshot first (create-only under a fresh name), then the zone secret naming it.
        snapshot = Snapshot(f"{int(time.time()):08x}{secrets.token_hex(4)}", records, state.foreign)
        self.session.write_kv(self.snapshot_path(zone, snapshot.name),
                              encode_records(records, self._lines, state.foreign), 0)
        try:
            version = self.session.write_kv(
                path, {**encode_delta(snapshot.name, records, (), self._lines), "write": write_id},
                state.version)
        except CasConflict:
            # An earlier attempt of this call (`run` retries it whole) may have landed, naming
            # the snapshot it wrote: the same records under another name.
            try:
                landed = self._landed(zone, state.version + 1, write_id)
            finally:
                self._drop_snapshot(zone, snapshot)  # nothing names this one, whatever landed
            if not landed:
                raise
            snapshot = Snapshot(str(landed.get("base")), records, state.foreign)
            version = state.version + 1
        self._snapshots[zone] = snapshot
        self._drop_snapshot(zone, state.base)
        return ZoneState(records=records, version=version, base=snapshot, foreign=state.foreign)

    def _sweep_snapshots(self, zone: str) -> int:
        names = self.session.list_kv(snapshot_folder(self.config.prefix, zone))
        if not names:
            return 0
        data, _ = self.session.read_kv(self.secret_path(zone))
        named = data.get("base") if data.get("format") == DELTA_FORMAT else None
        cutoff = time.time() - SNAPSHOT_GRACE
        swept = 0
        for name in names:
            if name != named and _SNAPSHOT_NAME.fullmatch(name) and int(name[:8], 16) < cutoff:
                self.session.delete_kv(self.snapshot_path(zone, name))
                swept += 1
        return swept

    def _drop_snapshot(self, zone: str, snapshot: Snapshot | None) -> None:
        """Delete a snapshot the zone secret no longer names. Best effort: one left behind is
        only unused space."""
        if snapshot is None:
            return
        if self._snapshots.get(zone) is snapshot:
            self._snapshots.pop(zone, None)
        try:
            self.session.delete_kv(self.snapshot_path(zone, snapshot.name))
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            _snapshot_left(snapshot, zone, type(exc).__name__)

    # -- acme-dns accounts: one secret each, <prefix>/acme-dns/accounts/<username> ------------

    def account_path(self, username: str = "") -> str:
        return f"{self.config.prefix}/acme-dns/accounts/{username}".rstrip("/")

    async def read_account(self, username: str) -> dict[str, Any]:
        """An account secret's data ({} when there is none)."""
        return (await self._call("read_account",
                                 lambda: self.session.read_kv(self.account_path(username)), read=True))[0]

    async def create_account(self, username: str, data: dict[str, Any]) -> None:
        """Write a new account secret (create only: an existing one raises CasConflict, but
        for an attempt whose answer was lost: the name is a fresh UUID, so that is this one)."""
        try:
            await self._call("create_account",
                             lambda: self.session.write_kv(self.account_path(username), data, 0))
        except CasConflict as conflict:
            if not conflict.uncertain:
                raise

    async def list_accounts(self) -> list[str]:
        return await self._call("list_accounts", lambda: self.session.list_kv(self.account_path()),
                                read=True)

    async def delete_account(self, username: str) -> None:
        await self._call("delete_account",
                         lambda: self.session.delete_kv(self.account_path(username)))

    async def _call(self, operation: str, fn: Callable[[], T], read: bool = False,
                    patience: float | None = None, confirm: bool = False,
                    direct: Callable[[], Awaitable[T]] | None = None) -> T:
        """`fn` in a Vault thread on the active node (see VaultSession.run): `read` when what
        it reads must be current, `patience` to wait less than vault.failover_timeout,
        `confirm` to ask every node which one leads first. With `direct`, that is tried first
        from the event loop, and `fn` only runs when it takes a Detour."""
        start = time.perf_counter()
        try:
            failed = None
            if direct is not None:
                try:
                    return await direct()
                except Detour as detour:
                    self.metrics.vault_detours.labels(operation).inc()
                    confirm, failed = detour.confirm, detour.why
            call = functools.partial(self.session.run, fn, read, patience, confirm, failed)
            return await asyncio.get_running_loop().run_in_executor(
                self._threads, contextvars.copy_context().run, call)  # (the log's request id)
        except CasConflict:
            raise  # counted per zone by the writer
        except Exception:
            self.metrics.vault_errors.labels(operation).inc()
            raise
        finally:
            self.metrics.vault_seconds.labels(operation).observe(time.perf_counter() - start)


