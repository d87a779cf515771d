"""The record service: validated changes go to Vault first, then into the zone file.

Each zone has one writer task. Requests put their change on the zone's queue and await a future;
the writer takes everything queued, applies it to the zone's last known state, writes the result
to Vault with check-and-set (on conflict: re-read, re-apply, retry), then rewrites the zone file
once and resolves the futures. Concurrent requests thus cost one Vault write and one zone rewrite,
and nothing is acknowledged before Vault has it. The file's next text is made while Vault writes
(in a temp file, flushed to disk) and renamed into place only once Vault has the records: one
client waiting for one record waits for the slower of the two, not for both.

Reconciliation is the same path with a forced Vault read: at start and on a timer the writer
re-reads the zone secret, drops records older than max_age, and re-renders the file if it
differs. That one mechanism repairs a crash between Vault and the file, a hand-damaged or
replaced file, and changes made by another dnsapi instance sharing the Vault.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from .audit import AuditLog, value_hash
from .block import MAX_TTL
from .config import Config, ZoneConfig
from .errors import DnsapiError, NameConflict, PropagationTimeout, TooManyRecords, VaultUnavailable, ZoneError
from .metrics import Metrics
from .names import (
    InvalidInput,
    is_account_name,
    normalize_name,
    validate_challenge_name,
    validate_ttl,
    validate_value,
    zone_for,
)
from .propagation import Waits, served_serial
from .records import PREREQUISITE_FAILURES, Change, Key, Outcome, Record, Update, apply_changes
from .store import CasConflict, VaultStore, ZoneState
from .zonefile import CommitLater, Rewrite, ZoneFile, serial_gt, soa_serial

log = logging.getLogger(__name__)

LOAD_GRACE = 5.0  # a DNS server still serving an older serial this long after a write failed to load it
CAS_RETRY_SECONDS = 10.0  # keep retrying check-and-set conflicts this long before giving up
SWEEP_INTERVAL = 3600.0  # how often unnamed snapshots are looked for (they are rare)
# A zone file up to this size is put in place from the event loop: its rename and the read that
# checks nobody saved it meanwhile cost less than handing them to a thread and back. (Never
# waiting: a held lock or a changed file sends the rest to a thread.)
COMMIT_ON_LOOP_MAX = 64 * 1024


@dataclass
class _Job:
    """A queued change or atomic update (or, with change=None, a request to reconcile) and its
    caller's future."""

    change: Change | Update | None
    future: asyncio.Future[Outcome | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class _Prepared:
    """A zone file rewrite made ready while Vault wrote, and the seconds that took."""

    rewrite: Rewrite
    seconds: float


class ZoneWriter:
    """Serialises and batches all writes for one zone."""

    def __init__(self, zone: ZoneConfig, store: VaultStore, config: Config,
                 audit: AuditLog | None = None) -> None:
        self.zone = zone
        self.store = store
        self.metrics = store.metrics
        self.file = ZoneFile(zone.file, zone.name)
        self.config = config
        self.audit = audit
        self._valid: set[str] = set()  # records from Vault that passed validation (by repr:
        self._refused: set[str] = set()  # ...a NaN is no key) and that failed it, told once each
        self.state: ZoneState | None = None  # last state read from or written to Vault
        self.queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self.watchers: list[asyncio.Event] = []  # set whenever the file's serial moves (notify.py)
        self._serial: int | None = None

    async def submit(self, change: Change | Update | None) -> Outcome | None:
        job = _Job(change)
        await self.queue.put(job)
        return await job.future

    async def run(self) -> None:
        """Take whatever is queued, apply it as one batch; stop at the None sentinel."""
        while True:
            first = await self.queue.get()
            batch = [first]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            stop = None in batch
            jobs = [job for job in batch if job is not None]
            if jobs:
                try:
                    await self._process(jobs)
                except Exception:  # a bug or an error nobody foresaw: the zone's writer lives on
                    log.exception("zone %s: a batch of %d change(s) failed", self.zone.name, len(jobs))
                    self.state = None  # read Vault afresh for the next batch
                    for job in jobs:
                        _settle(job.future, DnsapiError("internal error writing the zone; see the "
                                                        "dnsapi log"))
            if stop:
                return

    async def _process(self, jobs: list[_Job]) -> None:
        jobs = await self._refuse_conflicts(jobs)
        if not jobs:
            return
        changes = [job.change for job in jobs if job.change is not None]
        reconcile = len(changes) < len(jobs)
        try:
            outcome_list, rewrite = await self._apply_to_vault(changes, reconcile)
        except DnsapiError as exc:
            for job in jobs:
                _settle(job.future, exc)
            return
        outcomes = iter(outcome_list)
        results = [None if job.change is None else next(outcomes) for job in jobs]
        try:
            assert self.state is not None
            self.metrics.zone_records.labels(self.zone.name).set(len(self.state.records))
            serial = await self._write_file(rewrite)
            if serial is not None:
                log.info("zone %s rewritten: %d records, serial %d",
                         self.zone.name, len(self.state.records), serial)
                self.metrics.zone_rewrites.labels(self.zone.name).inc()
                self.metrics.zone_serial.labels(self.zone.name).set(serial)
        except ZoneError as exc:
            self.metrics.zone_errors.labels(self.zone.name).inc()
            # Vault already has the change; reconciliation (or the client's retry) brings the file
            # up to date once the problem is fixed.
            error = ZoneError(f"{exc.message} (the change is stored in Vault and will be written "
                              "to the zone file once this is fixed)")
            for job, result in zip(jobs, results, strict=True):
                unchanged = (Outcome.FULL, Outcome.QUOTA, Outcome.CONFLICT, *PREREQUISITE_FAILURES)
                _settle(job.future, result if result in unchanged else error)
            return
        self._tell_watchers()
        for job, result in zip(jobs, results, strict=True):
            _settle(job.future, result)

    def _tell_watchers(self) -> None:
        served = self.file.served
        if served is not None and served.serial != self._serial:
            self._serial = served.serial
            for event in self.watchers:
                event.set()

    async def _refuse_conflicts(self, jobs: list[_Job]) -> list[_Job]:
        """Refuse, before Vault sees them, adds the operator's zone cannot hold (a CNAME at the
        name, a DNAME or delegation above it): written, they would stop the zone from loading
        or never be served. If the zone file cannot be read or parsed now, the adds go ahead:
        Vault keeps them and the zone write reports the problem."""
        names = {name for job in jobs for name in _added_names(job.change)}
        cnames = {name for job in jobs for name in _added_names(job.change, "CNAME")}
        if not names and not cnames:
            return jobs
        try:
            rules = self.file.known_rules()
            conflicts = (self.file.conflicts(names, rules, cnames) if rules is not None
                         else await asyncio.to_thread(self.file.conflicts, names, None, cnames))
        except ZoneError:
            return jobs
        kept = []
        for job in jobs:
            added = _added_names(job.change) + _added_names(job.change, "CNAME")
            clash = next((name for name in added if name in conflicts), None)
            if clash is None:
                kept.append(job)
            else:
                _settle(job.future, NameConflict(f"cannot add a record at {clash}: "
                                                 f"{conflicts[clash]}"))
        return kept

    async def _write_file(self, rewrite: asyncio.Future[_Prepared] | None) -> int | None:
        """Make the zone file hold the records Vault now has: put in place the rewrite prepared
        while Vault wrote them, or (when nothing was written: a reconcile) rewrite the file if
        it differs. Returns the new serial, if any."""
        assert self.state is not None
        started, prepared = time.perf_counter(), None
        try:
            if rewrite is not None:
                prepared = await rewrite
                started = time.perf_counter() - prepared.seconds
                serial = await self._commit(prepared.rewrite)
            else:
                serial = await asyncio.to_thread(self.file.sync, self.state.records)
        except BaseException as exc:
            if prepared is not None:
                ZoneFile.discard(prepared.rewrite)  # unless it was put in place or dropped already
                raise
            if rewrite is None or not isinstance(exc, ZoneError):
                raise
            # Preparing failed (the file read while someone saved it in place?): once more,
            # from the file as it is now.
            serial = await asyncio.to_thread(self.file.sync, self.state.records)
        self.metrics.zone_write_seconds.labels(self.zone.name).observe(time.perf_counter() - started)
        return serial

    async def _commit(self, rewrite: Rewrite) -> int | None:
        """Put a prepared rewrite in place: from the event loop when the file is small and
        nobody holds its lock, else from a thread."""
        if len(rewrite.expected) <= COMMIT_ON_LOOP_MAX:
            try:
                return self.file.commit(rewrite, wait=False)
            except CommitLater as later:
                if later.again:
                    return await asyncio.to_thread(self.file.sync, rewrite.records)
        return await asyncio.to_thread(self.file.commit, rewrite)

    def _prepare_file(self, records: dict[Key, Record]) -> asyncio.Future[_Prepared]:
        """Start making the zone file's next text (flushed to disk, not yet in place) in a
        worker thread, so that it is ready when Vault's answer comes."""
        def prepare() -> _Prepared:
            started = time.perf_counter()
            return _Prepared(self.file.prepare(records), time.perf_counter() - started)

        return asyncio.get_running_loop().run_in_executor(None, prepare)

    @staticmethod
    async def _discard(rewrite: asyncio.Future[_Prepared]) -> None:
        """Drop a prepared rewrite Vault did not accept the records of."""
        try:
            prepared = await rewrite
        except ZoneError:
            return
        ZoneFile.discard(prepared.rewrite)

    async def _apply_to_vault(self, changes: list[Change | Update], reconcile: bool
                              ) -> tuple[list[Outcome], asyncio.Future[_Prepared] | None]:
        """Apply `changes` on top of Vault's current state and store the result with CAS.
        Returns the outcomes, and the zone file's rewrite for the stored records when Vault
        was written (prepared while it wrote; the caller puts it in place)."""
        fresh = False
        if self.state is None or reconcile:
            self.state, fresh = await self.read(), True
        deadline = time.monotonic() + CAS_RETRY_SECONDS
        conflicts = 0
        while time.monotonic() < deadline:
            records = dict(self.state.records)
            expired = self._expire(records) if reconcile else []
            outcomes = apply_changes(records, changes, self.config.max_records_per_zone,
                                     self.config.max_records_per_token)
            if records == self.state.records and not fresh:
                # A no-op against a cached state might be stale (another instance may have
                # changed the zone): confirm against Vault before answering.
                self.state, fresh = await self.read(), True
                continue
            if records == self.state.records:
                return outcomes, None
            touched = _touched(changes, self.state.records) + [r.key for r in expired]
            rewrite = self._prepare_file(records)
            try:
                state = await self.store.write_zone(self.zone.name, records, self.state, touched,
                                                    _added(changes, outcomes))
            except BaseException as exc:
                await self._discard(rewrite)
                if not isinstance(exc, CasConflict):
                    raise
                # Another instance wrote first. Back off with jitter so two busy writers stop
                # colliding in lockstep, then re-read and re-apply.
                conflicts += 1
                self.metrics.cas_conflicts.labels(self.zone.name).inc()
                await asyncio.sleep(random.uniform(0, min(0.2, 0.002 * 2**conflicts)))
                self.state, fresh = await self.read(), True
                continue
            self.state = state
            self.metrics.batch_changes.observe(len(changes))
            self._report_expired(expired)
            return outcomes, rewrite
        log.warning("zone %s: gave up after %d check-and-set conflicts in %gs", self.zone.name,
                    conflicts, CAS_RETRY_SECONDS)
        raise VaultUnavailable(f"gave up writing zone {self.zone.name} after {conflicts} "
                               f"check-and-set conflicts with other writers in {CAS_RETRY_SECONDS:g}s")

    async def read(self) -> ZoneState:
        """The zone as Vault holds it, without records that fail validation: the secret may
        have been written by hand, and one bad line must not freeze the zone. They stay in
        Vault, unserved: another node whose config differs (another challenge_label, acme-dns
        zone or zone list, say during a rollout) may have written them."""
        return await self.store.read_zone(self.zone.name, self._accept)

    def _accept(self, record: Record) -> bool:
        """`_check`, remembered; a refused record is counted and logged once."""
        seen = repr(record)
        if seen in self._valid:
            return True
        if self._check(record):
            self._remember(self._valid, seen)
            return True
        if seen not in self._refused:
            self._remember(self._refused, seen)
            self.metrics.bad_records.labels(self.zone.name).inc()
            log.warning("zone %s: not serving a record in Vault that is not a valid challenge record "
                        "of this zone for this dnsapi (kept in Vault): %r %r", self.zone.name,
                        record.fqdn[:100], record.value[:100])
        return False

    def _remember(self, seen: set[str], record: str) -> None:
        if len(seen) > 4 * self.config.max_records_per_zone:
            seen.clear()
        seen.add(record)

    def _check(self, record: Record) -> bool:
        """Is `record` one the API (or, for a CNAME, `dnsapi acme-dns register`) would have
        accepted for this zone?"""
        try:
            if record.kind == "CNAME":
                fqdn, zone = validate_challenge_name(record.fqdn, self.config.zone_names,
                                                     self.config.challenge_label)
                value_ok = is_account_name(normalize_name(record.value), self.config.account_zone)
            else:
                fqdn, zone = validate_challenge_name(record.fqdn, self.config.zone_names,
                                                     self.config.challenge_label,
                                                     self.config.account_zone)
                value_ok = record.kind == "TXT" and validate_value(record.value) == record.value
            return (fqdn == record.fqdn and zone == self.zone.name and value_ok
                    and 0 <= record.ttl <= MAX_TTL and math.isfinite(record.created_at))
        except InvalidInput:
            return False

    def _expire(self, records: dict[tuple[str, str], Record]) -> list[Record]:
        """Take records older than max_age out of `records` (ACME clients that crash, or acme.sh
        after a failed add, never remove theirs); returns them. A CNAME stays: it is the
        delegation of a name to an acme-dns account, removed with the account."""
        cutoff = time.time() - self.config.max_age
        expired = [r for r in records.values() if r.created_at < cutoff and r.kind == "TXT"]
        for record in expired:
            del records[record.key]
        return expired

    def _report_expired(self, expired: list[Record]) -> None:
        if expired:
            log.info("zone %s: removed %d record(s) older than max_age", self.zone.name, len(expired))
        for record in expired:
            if self.audit is not None:
                self.audit.write(action="expire", fqdn=record.fqdn,
                                 value_sha256=value_hash(record.value), result="removed")


def _added_names(change: Change | Update | None, kind: str = "TXT") -> list[str]:
    changes = change.changes if isinstance(change, Update) else (change,) if change else ()
    return [c.record.fqdn for c in changes if c.action == "add" and c.record.kind == kind]


def _touched(changes: list[Change | Update], old: dict[Key, Record]) -> list[Key]:
    """Every key that may differ after applying `changes` to `old`: the keys the changes name,
    and for a remove of a whole name every key `old` holds at it."""
    plain = [change for item in changes
             for change in (item.changes if isinstance(item, Update) else (item,))]
    names = {change.record.fqdn for change in plain if change.action == "remove_name"}
    keys = [change.record.key for change in plain if change.action != "remove_name"]
    return keys + [key for key in old if key[0] in names] if names else keys


def _added(changes: list[Change | Update], outcomes: list[Outcome]) -> set[Key]:
    """The keys the batch's applied changes add (whether or not a later change of the batch
    removes them); a refused add (quota, a failed prerequisite, ...) adds nothing."""
    return {change.record.key for item, outcome in zip(changes, outcomes, strict=True)
            if outcome in (Outcome.CREATED, Outcome.APPLIED)
            for change in (item.changes if isinstance(item, Update) else (item,))
            if change.action == "add"}


def _settle(future: asyncio.Future[Outcome | None], result: Outcome | None | Exception) -> None:
    if future.done():
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)


class RecordService:
    """What the API (and anything else) calls: validate, then add, remove, list, reconcile."""

    def __init__(self, config: Config, metrics: Metrics, store: VaultStore | None = None,
                 audit: AuditLog | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.store = store or VaultStore(config.vault, metrics)
        self.writers = {zone.name: ZoneWriter(zone, self.store, config, audit)
                        for zone in config.zones}
        self.waits = Waits(config.dns_servers, config.waits, self.metrics)
        self._tasks: list[asyncio.Task[None]] = []
        self._readiness: asyncio.Future[dict[str, str]] | None = None  # the check running now

    # -- lifecycle -------------------------------------------------------------------------

    def reconfigure(self, config: Config, audit: AuditLog) -> None:
        """Take a reloaded config (same zones and Vault; see server.reconfigure)."""
        self.config = config
        self.waits.servers, self.waits.limits = config.dns_servers, config.waits
        for writer in self.writers.values():
            writer.config, writer.audit = config, audit

    async def start(self) -> None:
        """Check every zone file (refusing to start on one that does not parse), start the
        writers, and reconcile each zone from Vault in the background."""
        for zone, writer in self.writers.items():
            serial = await asyncio.to_thread(writer.file.check)
            self.metrics.zone_serial.labels(zone).set(serial)
            for leftover in await asyncio.to_thread(writer.file.remove_leftovers):
                log.warning("zone %s: removed %s, a rewrite a crash left unfinished", zone, leftover)
        self._tasks = [asyncio.create_task(w.run(), name=f"writer:{n}")
                       for n, w in self.writers.items()]
        self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconcile"))
        self._tasks.append(asyncio.create_task(self._watch_loop(), name="watch"))

    async def close(self) -> None:
        """Finish every queued change, then stop."""
        for task in self._tasks[len(self.writers):]:
            task.cancel()
        if self._readiness is not None:
            self._readiness.cancel()
        for writer in self.writers.values():
            await writer.queue.put(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    async def _reconcile_loop(self) -> None:
        swept_at = -SWEEP_INTERVAL
        while True:
            await self.reconcile()
            if time.monotonic() - swept_at >= SWEEP_INTERVAL:
                swept_at = time.monotonic()
                await self._sweep_snapshots()
            await asyncio.sleep(self.config.reconcile_interval)

    async def _sweep_snapshots(self) -> None:
        for zone in self.writers:
            try:
                swept = await self.store.sweep_snapshots(zone)
            except VaultUnavailable as exc:
                log.warning("looking for unused snapshots of zone %s failed: %s", zone, exc.message)
                continue
            except Exception:  # a chore: it must never stop the reconcile loop it runs in
                log.exception("looking for unused snapshots of zone %s failed", zone)
                continue
            if swept:
                log.info("zone %s: deleted %d unused snapshot(s) from Vault", zone, swept)

    async def _watch_loop(self) -> None:
        """Notice writes by other instances sharing the Vault within watch_interval: a zone whose
        secret version moved past the one this writer knows is reconciled at once."""
        while True:
            await asyncio.sleep(self.config.watch_interval)
            for zone, writer in self.writers.items():
                try:
                    version = await self.store.current_version(zone)
                except VaultUnavailable:
                    continue  # reported by requests and /readyz; the reconcile timer retries
                except Exception:  # a chore: nothing may end the loop that runs it
                    log.exception("asking Vault for zone %s's version failed", zone)
                    continue
                if writer.state is None or version != writer.state.version:
                    try:
                        await writer.submit(None)
                    except DnsapiError as exc:
                        log.warning("reconciling zone %s after a change in Vault failed: %s",
                                    zone, exc.message)

    async def reconcile(self) -> None:
        """Re-read every zone from Vault and re-render its file where it differs."""
        results = await asyncio.gather(*(w.submit(None) for w in self.writers.values()),
                                       return_exceptions=True)
        for zone, result in zip(self.writers, results, strict=True):
            if isinstance(result, Exception):
                log.warning("reconciling zone %s failed: %s", zone, result)

    # -- validation ------------------------------------------------------------------------

    def challenge_name(self, fqdn: object) -> str:
        """A caller's name, normalised and checked to be a challenge name in one of our zones
        (or an acme-dns account's name)."""
        return validate_challenge_name(fqdn, self.writers, self.config.challenge_label,
                                       self.config.account_zone)[0]

    def make_cname(self, name: str, target: str, owner: str) -> Record:
        """The CNAME delegating `name`'s challenge name to the acme-dns account name `target`."""
        fqdn = validate_challenge_name(f"{self.config.challenge_label}.{normalize_name(name, 'name')}",
                                       self.writers, self.config.challenge_label)[0]
        if not is_account_name(normalize_name(target, "target"), self.config.account_zone):
            raise InvalidInput(f"{target!r} is not an acme-dns account name", "invalid_name")
        return Record(fqdn, normalize_name(target, "target"), self.config.default_ttl, time.time(),
                      owner, "CNAME")

    def make_record(self, fqdn: object, value: object, ttl: object = None, owner: str = "") -> Record:
        """A validated record; `owner` is the token adding it (for max_records_per_token)."""
        return Record(
            fqdn=self.challenge_name(fqdn),
            value=validate_value(value),
            ttl=validate_ttl(self.config.default_ttl if ttl is None else ttl,
                             self.config.min_ttl, self.config.max_ttl),
            created_at=time.time(),
            owner=owner,
        )

    # -- operations ------------------------------------------------------------------------

    async def add(self, record: Record) -> Outcome:
        """Store a validated record; CREATED or EXISTED once Vault has it."""
        outcome = await self._writer(record.fqdn).submit(Change("add", record))
        if outcome is Outcome.QUOTA:
            raise TooManyRecords(f"token {record.owner!r} already holds "
                                 f"{self.config.max_records_per_token} challenge records in zone "
                                 f"{zone_for(record.fqdn, self.writers)}; remove some first",
                                 "token_quota_exceeded")
        if outcome is Outcome.FULL:
            raise TooManyRecords(f"zone {zone_for(record.fqdn, self.writers)} already holds "
                                 f"{self.config.max_records_per_zone} challenge records")
        if outcome is Outcome.CONFLICT:
            raise NameConflict(f"{record.fqdn} holds a CNAME, which allows no other record there"
                               if record.kind == "TXT" else
                               f"{record.fqdn} already holds records, so no CNAME can be there")
        assert outcome is not None
        return outcome

    async def update(self, zone: str, update: Update) -> Outcome:
        """Apply an atomic Update to `zone` (validated names below it): APPLIED once Vault has
        every change; a failed prerequisite's outcome (nothing changed); or FULL / QUOTA."""
        outcome = await self.writers[zone].submit(update)
        assert outcome is not None
        return outcome

    async def remove(self, fqdn: str, value: str, kind: str = "TXT") -> Outcome:
        """Remove exactly this value (a CNAME: this target) at this name; REMOVED or ABSENT."""
        outcome = await self._writer(fqdn).submit(Change("remove", Record(fqdn, value, 0, 0.0,
                                                                          kind=kind)))
        assert outcome is not None
        return outcome

    async def wait_served(self, record: Record) -> float:
        """Wait until every configured DNS server answers the record; the seconds it took."""
        try:
            waited = await self.waits.served(record.fqdn, record.value, self.config.propagation_timeout)
        except PropagationTimeout:
            self.metrics.propagation_timeouts.inc()
            raise
        self.metrics.propagation_seconds.observe(waited)
        return waited

    async def list(self, fqdn: str | None = None) -> list[Record]:
        """Records as Vault holds them now, for one name or for every zone."""
        zones = [zone_for(fqdn, self.writers)] if fqdn else list(self.writers)
        states = await asyncio.gather(*(self.writers[z].read() for z in zones if z))
        records = [r for state in states for r in state.records.values()
                   if fqdn is None or r.fqdn == fqdn]
        return sorted(records, key=lambda r: r.key)

    async def readiness(self) -> dict[str, str]:
        """Each check → "ok" or what is wrong: Vault reachable with write access to each zone
        secret, and each zone file parseable with a writable directory. Anyone may ask
        (/readyz), so callers arriving while a check runs share it: one at a time, however
        many ask."""
        if self._readiness is None or self._readiness.done():
            self._readiness = asyncio.ensure_future(self._check_readiness())
            # (an error is every waiting caller's; with none left, it is not logged as unread)
            self._readiness.add_done_callback(lambda task: task.cancelled() or task.exception())
        return dict(await asyncio.shield(self._readiness))  # (a caller that goes away stops nothing)

    async def _check_readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        for zone, writer in self.writers.items():
            try:
                checks[f"vault:{zone}"] = await self.store.zone_access(zone) or "ok"
            except VaultUnavailable as exc:
                checks[f"vault:{zone}"] = exc.message
            serial: int | None
            try:
                serial = await asyncio.to_thread(writer.file.check)
                writable = os.access(writer.file.path.parent, os.W_OK)
                checks[f"zone:{zone}"] = "ok" if writable else \
                    f"directory {writer.file.path.parent} is not writable"
            except ZoneError as exc:
                checks[f"zone:{zone}"] = exc.message
                try:
                    serial = soa_serial(await asyncio.to_thread(writer.file.read_text))
                except ZoneError:
                    serial = None
            if serial is None:
                continue
            for server in self.config.dns_servers:
                checks[f"dns:{zone}@{server[0]}:{server[1]}"] = await self._serves_file(
                    server, zone, serial, writer.file.path)
        return checks

    async def _serves_file(self, server: tuple[str, int], zone: str, serial: int, path: Path) -> str:
        """"ok" when `server` answers the zone file's serial (or a newer one), else what is
        wrong: an older serial a while after the file changed means the server failed to load
        the file and keeps serving the old zone (CoreDNS only logs that)."""
        served = await served_serial(server, zone)
        if served is None:
            return f"no SOA answer for {zone}"
        if not serial_gt(serial, served):
            return "ok"
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            return "ok"  # the zone check reports it
        if age < LOAD_GRACE:
            return "ok"  # not reloaded yet
        return (f"serves serial {served}, but the zone file holds {serial} since {age:.0f}s: the "
                "server did not load the file (see its log)")

    def _writer(self, fqdn: str) -> ZoneWriter:
        zone = zone_for(fqdn, self.writers)
        assert zone is not None, "names are validated before they reach the writers"
        return self.writers[zone]
