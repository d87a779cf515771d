"""`dnsapi pki-watch`: notice revocations, stale CRLs, OCSP trouble and coming expiries in
Vault/OpenBao PKI mounts, and push each as an event to the configured sinks.

Neither Vault nor OpenBao tells anyone about these, so each cycle polls every mount and compares
what it sees with what was already reported. That memory and the outbox of undelivered events
live in one KV v2 secret (`<prefix>/pki-watch/state`), written with check-and-set before any
delivery is attempted: a restart neither repeats an event nor drops one, and an event raised
while a receiver is down waits in the outbox, retried with backoff, until it is delivered.

Conditions (a stale CRL, an unreachable OCSP responder, ...) are reported once when they start;
once they have been clear for CLEAR_CYCLES cycles in a row they are re-armed, so a later
recurrence is reported again, and a condition that flickers is not reported at every flicker.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import random
import signal
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from .. import config as config_module
from .. import systemd
from ..config import Config, PkiWatchConfig, VaultConfig
from ..errors import ConfigError, VaultUnavailable
from ..ratelimit import doubling
from ..vault import CasConflict, VaultSession
from .client import Issuer, PkiClient, PkiUnavailable
from .notify import DeliveryError, event, send

log = logging.getLogger(__name__)

# 2: the JSON zlib-compressed and base64-encoded, and each mount's OCSP-confirmed serials kept as
# what differs from its revoked ones; 1 (read still): the JSON as it is.
STATE_FORMAT = 2
CLEAR_CYCLES = 3  # cycles in a row a condition must be absent before it is reported again
# Vault's raft storage refuses an entry over 1 MiB (max_entry_size): past this the log says so,
# while there is room.
STATE_WARN_BYTES = 512 * 1024


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def days(seconds: float) -> str:
    """`14d`, `2.5d`, or hours below a day: `5h`."""
    if seconds < 86400:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.1f}".removesuffix(".0") + "d"


@dataclass
class MountState:
    revoked: set[str] = field(default_factory=set)  # serials already reported (or seen at start)
    expiry: dict[str, list[float]] = field(default_factory=dict)  # serial → thresholds warned
    # conditions reported and not yet cleared: how many cycles in a row each has been absent
    alerts: dict[str, int] = field(default_factory=dict)
    ocsp_agrees: set[str] = field(default_factory=set)  # revoked serials OCSP confirmed


@dataclass
class Pending:
    event: dict[str, Any]
    sink: str
    attempts: int
    next_at: float
    since: float


@dataclass
class WatchState:
    mounts: dict[str, MountState] = field(default_factory=dict)
    outbox: list[Pending] = field(default_factory=list)
    version: int = 0  # KV version it was read at (0: not yet written)

    def to_data(self) -> dict[str, Any]:
        mounts = {name: {"revoked": sorted(m.revoked), "expiry": m.expiry, "alerts": m.alerts,
                         # (nearly every revoked serial is confirmed: kept once, not twice)
                         "ocsp_pending": sorted(m.revoked - m.ocsp_agrees),
                         "ocsp_other": sorted(m.ocsp_agrees - m.revoked)}
                  for name, m in self.mounts.items()}
        text = json.dumps({"mounts": mounts, "outbox": [vars(p) for p in self.outbox]})
        # One string field: Vault caps the number of JSON strings in a request.
        packed = base64.b64encode(zlib.compress(text.encode(), 9)).decode()
        return {"format": STATE_FORMAT, "state": packed}

    @classmethod
    def from_data(cls, data: dict[str, Any], version: int) -> WatchState:
        text = data.get("state") or "{}"
        if data.get("format") == STATE_FORMAT:
            text = zlib.decompress(base64.b64decode(text)).decode()
        raw = json.loads(text)
        mounts = {}
        for name, m in raw.get("mounts", {}).items():
            revoked = set(m.get("revoked", ()))
            agrees = set(m["ocsp_agrees"]) if "ocsp_agrees" in m else \
                revoked - set(m.get("ocsp_pending", ())) | set(m.get("ocsp_other", ()))
            mounts[name] = MountState(revoked=revoked, expiry=dict(m.get("expiry", {})),
                                      alerts=_alerts(m.get("alerts", {})), ocsp_agrees=agrees)
        outbox = [Pending(**p) for p in raw.get("outbox", ())]
        return cls(mounts=mounts, outbox=outbox, version=version)


def _alerts(saved: Any) -> dict[str, int]:
    """A mount's alerts as saved: by key, the cycles absent (format 1: a list, all present)."""
    return {key: 0 for key in saved} if isinstance(saved, list) else {k: int(v) for k, v in saved.items()}


class StateStore:
    """The watch state in KV v2, read and written with check-and-set."""

    def __init__(self, session: VaultSession) -> None:
        self.session = session
        self.path = f"{session.config.prefix}/pki-watch/state"

    def load(self) -> WatchState:
        data, version = self.session.run(lambda: self.session.read_kv(self.path), read=True)
        return WatchState.from_data(data, version)

    def save(self, state: WatchState) -> None:
        data = state.to_data()
        if len(data["state"]) > STATE_WARN_BYTES:
            log.warning("pki-watch: its state in Vault (%s) is %d KiB; Vault's raft storage refuses "
                        "an entry over 1 MiB (max_entry_size): tidy revoked certificates "
                        "(tidy_revoked_certs), or watch fewer mounts", self.path, len(data["state"]) // 1024)
        state.version = self.session.run(lambda: self.session.write_kv(self.path, data, state.version))


class MountCheck:
    """One cycle's look at one mount: fills `events` and updates the mount's state."""

    def __init__(self, pki: PkiClient, state: MountState, settings: PkiWatchConfig, now: float) -> None:
        self.pki = pki
        self.mount = pki.mount
        self.state = state
        self.settings = settings
        self.now = now
        self.events: list[dict[str, Any]] = []
        self.active: set[str] = set()  # conditions present now (see _raise)

    def run(self, baseline: bool) -> None:
        certificates = self.pki.certificates()
        listed_revoked = self.pki.revoked()
        issuers = self.pki.issuers()
        crls, crl_errors = {}, {}
        for issuer in issuers.values():
            try:
                crls[issuer.id] = self.pki.crls(issuer)
            except PkiUnavailable as exc:
                crl_errors[issuer.id] = str(exc)
        in_crls = {serial for lists in crls.values() for crl in lists for serial in crl.serials}
        revoked = listed_revoked | in_crls
        if baseline:
            self.state.revoked = set(revoked)
            log.info("pki-watch: %s: first look, %d revoked certificate(s) already known, not reported",
                     self.mount, len(revoked))
        self._revocations(revoked, listed_revoked, in_crls)
        self._crl_health(issuers, crls, crl_errors, listed_revoked - in_crls)
        if self.settings.ocsp:
            self._ocsp(issuers, certificates, revoked, in_crls)
        self._expiry(certificates, revoked, {i.serial for i in issuers.values()})
        self.state.alerts = {key: 0 for key in self.active} | {
            key: absent + 1 for key, absent in self.state.alerts.items()
            if key not in self.active and absent + 1 < CLEAR_CYCLES}

    def _raise(self, key: str, kind: str, summary: str, severity: str = "critical", **details: Any) -> None:
        """A condition is present: report it unless it is known (present, or clear for fewer
        than CLEAR_CYCLES cycles)."""
        self.active.add(key)
        if key not in self.state.alerts:
            self.events.append(event(kind, f"{self.mount}:{key}@{self.now}", severity, self.mount,
                                     summary, self.now, **details))

    def _keep(self, prefix: str) -> None:
        """Conditions that could not be evaluated this cycle stay as they were."""
        self.active |= {key for key in self.state.alerts if key.startswith(prefix)}

    def _revoked_at(self, serial: str) -> float | None:
        """When `serial` was revoked: read again only while the remembered copy predates it."""
        stored = self.pki.stored(serial)
        if stored.revocation_time is None:
            stored = self.pki.stored(serial, refresh=True)
        return stored.revocation_time

    def _describe(self, serial: str) -> dict[str, Any]:
        try:
            self._revoked_at(serial)
            stored = self.pki.stored(serial)
        except PkiUnavailable:  # tidied away: the serial is all there is
            return {"serial": serial}
        info = stored.info
        details: dict[str, Any] = {"serial": serial, "common_name": info.common_name,
                                   "dns_names": list(info.dns_names), "not_after": iso(info.not_after)}
        if stored.revocation_time is not None:
            details["revoked_at"] = iso(stored.revocation_time)
            details["detected_after_s"] = round(self.now - stored.revocation_time, 1)
        return details

    def _revocations(self, revoked: set[str], listed: set[str], in_crls: set[str]) -> None:
        for serial in sorted(revoked - self.state.revoked):
            details = self._describe(serial)
            name = details.get("common_name") or serial
            seen_in = [where for where, serials in (("revoked list", listed), ("CRL", in_crls))
                       if serial in serials]
            self.events.append(event("certificate_revoked", f"revoked:{self.mount}:{serial}", "warning",
                                     self.mount, f"{self.mount}: certificate {name} ({serial}) was revoked",
                                     self.now, seen_in=seen_in, **details))
            self.state.revoked.add(serial)
        self.state.revoked &= revoked  # tidied serials are forgotten

    def _crl_health(self, issuers: dict[str, Issuer], crls: dict[str, list[Any]],
                    errors: dict[str, str], missing: set[str]) -> None:
        for issuer_id, error in errors.items():
            self._raise(f"crl_unavailable:{issuer_id}", "crl_stale",
                        f"{self.mount}: the CRL of issuer {issuers[issuer_id].name} cannot be fetched",
                        reason="unavailable", issuer=issuers[issuer_id].name, error=error)
        for issuer_id, lists in crls.items():
            name = issuers[issuer_id].name
            for crl in lists:
                if not crl.signature_valid:
                    self._raise(f"crl_invalid:{issuer_id}:{crl.delta}", "crl_stale",
                                f"{self.mount}: the {'delta ' if crl.delta else ''}CRL of {name} is not "
                                "signed by its issuer", reason="bad_signature", issuer=name)
            full = lists[0]
            if full.next_update is not None and full.next_update < self.now:
                self._raise(f"crl_expired:{issuer_id}", "crl_stale",
                            f"{self.mount}: the CRL of {name} expired at {iso(full.next_update)} and "
                            "was not rebuilt", reason="next_update_passed", issuer=name,
                            crl_number=full.number, this_update=iso(full.this_update),
                            next_update=iso(full.next_update))
        if errors:
            self._keep("crl_missing:")
            return
        for serial in sorted(missing):
            try:
                revoked_at = self._revoked_at(serial)
            except PkiUnavailable:
                continue
            if revoked_at is not None and self.now - revoked_at > self.settings.crl_grace:
                self._raise(f"crl_missing:{serial}", "crl_stale",
                            f"{self.mount}: certificate {serial}, revoked at {iso(revoked_at)}, is "
                            f"still on no CRL after {days(self.now - revoked_at)}",
                            reason="revocation_not_published", serial=serial, revoked_at=iso(revoked_at),
                            grace_s=self.settings.crl_grace)

    def _ocsp(self, issuers: dict[str, Issuer], certificates: dict[str, Any], revoked: set[str],
              in_crls: set[str]) -> None:
        """Ask the responder about each CRL-revoked serial until it agrees once, and about the
        newest valid leaf each cycle (which is also the reachability probe)."""
        issuer_serials = {i.serial for i in issuers.values()}
        valid = [c for c in certificates.values() if c.serial not in revoked
                 and c.serial not in issuer_serials and c.not_after > self.now]
        targets = [(serial, "revoked") for serial in sorted(in_crls - self.state.ocsp_agrees)]
        if valid:
            targets.append((max(valid, key=lambda c: c.not_after).serial, "good"))
        try:
            for serial, expected in targets:
                try:
                    stored = self.pki.stored(serial)
                    issuer = self.pki.issuer_of(stored, issuers)
                except PkiUnavailable as exc:  # (tidied away, or broken: not the responder's fault)
                    log.warning("pki-watch: %s: cannot read certificate %s for its OCSP check: %s",
                                self.mount, serial, exc)
                    continue
                if issuer is None:  # signed by an issuer since removed from the mount
                    continue
                status = self.pki.ocsp_status(stored, issuer)
                if status == expected:
                    if expected == "revoked":
                        self.state.ocsp_agrees.add(serial)
                    continue
                self._raise(f"ocsp_mismatch:{serial}", "ocsp_mismatch",
                            f"{self.mount}: OCSP says {status} for {serial}, the CRL says {expected}",
                            serial=serial, ocsp=status, crl=expected)
        except PkiUnavailable as exc:
            self._raise("ocsp_unreachable", "ocsp_unreachable",
                        f"{self.mount}: the OCSP responder does not answer properly", error=str(exc))
            self._keep("ocsp_mismatch:")
        self.state.ocsp_agrees &= revoked

    def _expiry(self, certificates: dict[str, Any], revoked: set[str], issuer_serials: set[str]) -> None:
        """Warn once per threshold; a certificate already replaced by a later one for the same
        names (a renewal) is not warned about."""
        newest: dict[tuple[str, tuple[str, ...]], float] = {}
        for cert in certificates.values():
            if cert.serial not in revoked:
                group = (cert.common_name, tuple(sorted(cert.dns_names)))
                newest[group] = max(newest.get(group, 0), cert.not_after)
        for serial, cert in certificates.items():
            left = cert.not_after - self.now
            if (serial in revoked or left <= 0
                    or cert.not_after < newest[(cert.common_name, tuple(sorted(cert.dns_names)))]):
                continue
            crossed = [t for t in self.settings.expiry_warn if left <= t]
            if crossed and not set(crossed) <= set(self.state.expiry.get(serial, ())):
                threshold = min(crossed)
                kind = "CA certificate" if serial in issuer_serials else "certificate"
                self.events.append(event(
                    "certificate_expiring", f"expiring:{self.mount}:{serial}:{threshold}",
                    "critical" if threshold == self.settings.expiry_warn[-1] else "warning", self.mount,
                    f"{self.mount}: {kind} {cert.common_name or serial} expires at {iso(cert.not_after)}, "
                    f"in {days(left)}", self.now, serial=serial, common_name=cert.common_name,
                    dns_names=list(cert.dns_names), not_after=iso(cert.not_after),
                    threshold=days(threshold), ca=serial in issuer_serials))
                self.state.expiry[serial] = crossed
        self.state.expiry = {s: t for s, t in self.state.expiry.items() if s in certificates}


def own_login(config: Config) -> VaultConfig:
    """`vault:` with pki-watch's own login. Never the service's: that one may write challenge
    records, and the service's policy keeps it out of pki-watch's state."""
    if config.pki_watch.vault is None:
        raise ConfigError("pki_watch: set pki_watch.token_file or pki_watch.approle (role_id_file, "
                          "secret_id_file): pki-watch logs in to Vault as itself, not with the "
                          "service's credentials; `dnsapi vault-init` creates its AppRole and policy")
    return config.pki_watch.vault


class PkiWatch:
    """Runs check cycles and deliveries; `run_once` for cron, `run` until `stop` is set."""

    def __init__(self, config: Config, session: VaultSession | None = None) -> None:
        self.settings = config.pki_watch
        self.session = session or VaultSession(own_login(config))
        self.store = StateStore(self.session)
        self.clients = {mount: PkiClient(self.session, mount) for mount in self.settings.mounts}
        self.sinks = {sink.name: sink for sink in self.settings.sinks}
        self.http = requests.Session()

    def check(self, state: WatchState, now: float) -> list[dict[str, Any]]:
        """One look at every mount; returns the new events (already queued in `state.outbox`).
        A mount that cannot be read is logged and left as it was."""
        events = []
        for mount, pki in self.clients.items():
            baseline = mount not in state.mounts
            mount_state = MountState() if baseline else copy.deepcopy(state.mounts[mount])
            check = MountCheck(pki, mount_state, self.settings, now)
            try:
                check.run(baseline)
            except (PkiUnavailable, VaultUnavailable) as exc:
                log.error("pki-watch: %s: cannot check: %s", mount, exc)
                continue
            state.mounts[mount] = mount_state
            events += check.events
        for item in events:
            log.info("pki-watch: event %s %s: %s", item["id"], item["type"], item["summary"])
            state.outbox += [Pending(item, name, 0, now, now) for name in self.sinks]
        return events

    def deliver(self, state: WatchState, now: float, everything: bool = False) -> bool:
        """Try each pending delivery that is due (all of them with `everything`); True when the
        outbox changed."""
        changed = False
        for pending in list(state.outbox):
            sink = self.sinks.get(pending.sink)
            if sink is None:
                log.warning("pki-watch: dropping event %s for sink %s, which is no longer configured",
                            pending.event["id"], pending.sink)
            elif not everything and pending.next_at > now:
                continue
            else:
                try:
                    send(sink, pending.event, self.http)
                    log.info("pki-watch: delivered event %s to %s", pending.event["id"], sink.name)
                except Exception as exc:  # DeliveryError, or one nobody foresaw: a failed delivery
                    # (of an unforeseen one only its type is told: its message may hold the URL)
                    why = exc if isinstance(exc, DeliveryError) else f"sink {sink.name}: {type(exc).__name__}"
                    pending.attempts += 1
                    if now - pending.since < self.settings.give_up:
                        delay = doubling(self.settings.retry_initial, self.settings.retry_max,
                                         pending.attempts)
                        pending.next_at = now + delay * random.uniform(0.8, 1.0)
                        log.warning("pki-watch: %s (attempt %d; next in %.0fs)", why, pending.attempts,
                                    pending.next_at - now)
                        changed = True
                        continue
                    log.error("pki-watch: giving up on event %s for %s after %d attempts: %s",
                              pending.event["id"], sink.name, pending.attempts, why)
            state.outbox.remove(pending)
            changed = True
        return changed

    def run_once(self) -> int:
        """One check and one delivery pass over everything pending. Exit status: 0 when all is
        checked and delivered, 1 when something could not be (the reason is logged)."""
        state = self.store.load()
        now = time.time()
        self.check(state, now)
        self.store.save(state)
        if self.deliver(state, time.time(), everything=True):
            self.store.save(state)
        if state.outbox:
            log.warning("pki-watch: %d delivery(ies) still pending; the next run retries them",
                        len(state.outbox))
        unchecked = [m for m in self.clients if m not in state.mounts]
        return 1 if state.outbox or unchecked else 0

    def run(self, stop: threading.Event, ready: Callable[[], object] = lambda: None) -> None:
        """Check every interval and deliver when due until `stop` is set; `ready` is called once
        the first check is done."""
        state: WatchState | None = None
        next_check = 0.0
        while not stop.is_set():
            try:
                if state is None:
                    state = self.store.load()
                now = time.time()
                if now >= next_check:
                    events = self.check(state, now)
                    self.store.save(state)
                    if not next_check:
                        log.info("pki-watch: first check done: %d event(s)", len(events))
                        ready()
                    next_check = now + self.settings.interval
                if self.deliver(state, time.time()):
                    self.store.save(state)
            except CasConflict:
                log.warning("pki-watch: the state changed under us (is a second pki-watch running?); "
                            "re-reading it")
                state = None
                continue
            except VaultUnavailable as exc:
                log.error("pki-watch: %s", exc)
                state = None
                stop.wait(min(self.settings.interval, 10))
                continue
            except Exception:  # a bug, or an answer nobody foresaw: pki-watch goes on watching
                log.exception("pki-watch: the check or its delivery failed; trying again")
                state = None
                stop.wait(min(self.settings.interval, 10))
                continue
            due = min([p.next_at for p in state.outbox] + [next_check])
            stop.wait(max(0.05, due - time.time()))


def _stop(*flags: threading.Event) -> None:
    for flag in flags:
        flag.set()


def run_program(config_path: Path, once: bool = False) -> int:
    """`dnsapi pki-watch`: run until SIGTERM/SIGINT; SIGHUP re-reads the config (a broken file
    keeps the running one). `once`: one check, then exit."""
    def load() -> PkiWatch:
        config = config_module.load(config_path, service_secrets=False)
        if not config.pki_watch.sinks:
            raise ConfigError("pki_watch.sinks: no sinks configured: events would go nowhere")
        return PkiWatch(config)  # (ConfigError without a login of its own: own_login)

    watch = load()
    if once:
        try:
            return watch.run_once()
        except VaultUnavailable as exc:
            raise SystemExit(f"dnsapi pki-watch: {exc.message}") from None
    wake, stopping = threading.Event(), threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: _stop(stopping, wake))
    signal.signal(signal.SIGHUP, lambda *_: wake.set())
    while True:
        settings = watch.settings
        log.info("pki-watch: watching %s every %gs, sinks: %s", ", ".join(settings.mounts),
                 settings.interval, ", ".join(s.name for s in settings.sinks))
        watch.run(wake, ready=lambda: systemd.notify("READY=1", "STATUS=watching"))
        if stopping.is_set():
            systemd.notify("STOPPING=1")
            return 0
        systemd.reloading()
        wake.clear()
        try:
            watch = load()
        except ConfigError as exc:
            log.error("reload: configuration error, keeping the running configuration: %s", exc)
