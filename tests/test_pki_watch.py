"""pki-watch logic without servers: configuration, event detection against a fake PKI mount, the
state's round trip, delivery backoff and the chat robots' signatures. The same behaviours run
against a real OpenBao in test_pki_watch_e2e.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml

from dnsapi import config as cfg
from dnsapi.config import SinkConfig
from dnsapi.errors import ConfigError
from dnsapi.pki import watch as watch_module
from dnsapi.pki.client import CertInfo, Crl, Issuer, PkiUnavailable, StoredCert
from dnsapi.pki.notify import DeliveryError, _payload, send
from dnsapi.pki.watch import MountCheck, MountState, Pending, PkiWatch, WatchState, days

from .test_config import BASE, changed

DAY = 86400.0
NOW = 1_800_000_000.0
WATCH_LOGIN = {"token_file": "/etc/dnsapi/pki-watch-token"}  # pki-watch's own login


def load(data):
    return cfg.from_dict(data, base=Path("/etc/dnsapi"), env={})


def watch_settings(**pki_watch):
    return load({**BASE, "pki_watch": pki_watch}).pki_watch


def test_pki_watch_logs_in_as_itself_never_as_the_service(tmp_path):
    """The service's credentials may write challenge records: pki-watch refuses to run on them,
    and its own login keeps the rest of `vault:` (address, CA, prefix)."""
    sinks = [{"type": "webhook", "url": "https://hooks.example/x"}]
    with pytest.raises(ConfigError, match=r"^pki_watch: set pki_watch.token_file or pki_watch.approle"):
        watch_module.own_login(load({**BASE, "pki_watch": {"sinks": sinks}}))
    config = tmp_path / "dnsapi.yaml"
    config.write_text(yaml.safe_dump({**BASE, "pki_watch": {"sinks": sinks}}))
    with pytest.raises(ConfigError, match=r"pki-watch logs in to Vault as itself"):
        watch_module.run_program(config, once=True)

    own = watch_module.own_login(load({**BASE, "pki_watch": {"approle": {
        "role_id_file": "watch/role-id", "secret_id_file": "watch/secret-id"}}}))
    assert own.token is None and own.token_file is None
    assert own.approle is not None and own.approle.secret_id_file == Path("/etc/dnsapi/watch/secret-id")
    assert (own.addrs, own.prefix, own.kv_mount) == (load(BASE).vault.addrs, "dnsapi", "secret")
    assert watch_module.own_login(load({**BASE, "pki_watch": WATCH_LOGIN})).token_file == Path(
        "/etc/dnsapi/pki-watch-token")


def test_pki_watch_neither_needs_nor_reads_the_services_secrets(tmp_path, monkeypatch):
    """Its unit does not read the service's environment file: a config whose service token comes
    from DNSAPI_VAULT_TOKEN, and whose TSIG keys come from the environment or from a file it may
    not read, still loads for pki-watch (none of them read), and still does not for the service."""
    secret_file = tmp_path / "tsig.key"
    secret_file.write_text("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0\n")
    secret_file.chmod(0)
    keys = [{"name": "env", "secret_env": "DNSAPI_TSIG_ENV", "allow": ["*.dev.local"]},
            {"name": "file", "secret_file": str(secret_file), "allow": ["*.dev.local"]}]
    data = {**BASE, "vault": {"addr": "http://127.0.0.1:8200"}, "pki_watch": WATCH_LOGIN,
            "dns_update": {"listen": "127.0.0.1:5353", "keys": keys}}
    read = Path.read_text

    def guarded(path: Path, *args: object, **kwargs: object) -> str:
        assert path != secret_file, "pki-watch read a TSIG secret"  # (root reads a mode 0 file)
        return read(path, *args, **kwargs)
    path = tmp_path / "dnsapi.yaml"
    path.write_text(yaml.safe_dump(data))
    with monkeypatch.context() as patched:
        patched.setattr(Path, "read_text", guarded)
        loaded = cfg.load(path, env={}, service_secrets=False)
    assert watch_module.own_login(loaded).token_file == Path("/etc/dnsapi/pki-watch-token")
    assert loaded.dns_update is not None and {k.secret for k in loaded.dns_update.keys} == {None}
    with pytest.raises(ConfigError, match=r"^vault.token: set exactly one of vault.token"):
        cfg.load(path, env={})
    with pytest.raises(ConfigError, match=r"DNSAPI_TSIG_ENV is not set"):
        cfg.load(path, env={"DNSAPI_VAULT_TOKEN": "t"})
    both = {**data, "vault": {"addr": "http://127.0.0.1:8200", "token": "t", "token_file": "f"}}
    path.write_text(yaml.safe_dump(both))
    with pytest.raises(ConfigError, match=r"got token, token_file"):
        cfg.load(path, env={}, service_secrets=False)


def test_pki_watch_login_settings_are_checked():
    both = {**WATCH_LOGIN, "approle": {"role_id_file": "r", "secret_id_file": "s"}}
    with pytest.raises(ConfigError, match=r"^pki_watch.token_file: set one of"):
        load({**BASE, "pki_watch": both})
    # the service's secret_id in the environment is not pki-watch's
    data = {**BASE, "pki_watch": {"approle": {"role_id_file": "r"}}}
    with pytest.raises(ConfigError, match=r"^pki_watch.approle.secret_id: set exactly one of secret_id or "
                                          r"secret_id_file$"):
        cfg.from_dict(data, base=Path("/etc/dnsapi"), env={cfg.ENV_APPROLE_SECRET_ID: "the-service's"})


def test_defaults_watch_the_mounts_vault_init_creates():
    assert watch_settings().mounts == ("pki_root", "pki")
    root_only = load({**BASE, "vault_init": {"pki": {"intermediate": False, "mount": "ca"}}})
    assert root_only.pki_watch.mounts == ("ca",)
    settings = watch_settings(expiry_warn=["3d", "14d"], interval="30s")
    assert settings.expiry_warn == (14 * DAY, 3 * DAY) and settings.interval == 30


@pytest.mark.parametrize(("sinks", "key"), [
    ([{"type": "pager"}], "pki_watch.sinks[0].type"),
    ([{"type": "webhook"}], "pki_watch.sinks[0].url"),
    ([{"type": "webhook", "url": "ftp://x"}], "pki_watch.sinks[0].url"),
    ([{"type": "command", "command": "notify-send"}], "pki_watch.sinks[0].command"),
    ([{"type": "command", "command": ["x"], "url": "http://x"}], "pki_watch.sinks[0].url"),
    ([{"type": "wecom", "url": "http://x", "secret": "s"}], "pki_watch.sinks[0].secret"),
    ([{"type": "slack", "url": "http://x", "headers": {"A": "b"}}], "pki_watch.sinks[0].headers"),
    ([{"type": "webhook", "url": "http://x", "headers": {"A": "b\nInjected: 1"}}],
     "pki_watch.sinks[0].headers"),
    ([{"type": "slack", "url": "http://x"}, {"type": "slack", "url": "http://y", "name": "slack-0"}],
     "pki_watch.sinks[1].name"),
    ([{"type": "slack", "url": "http://x", "colour": "red"}], "pki_watch.sinks[0].colour"),
])
def test_bad_sinks_are_refused_naming_the_key(sinks, key):
    with pytest.raises(ConfigError) as info:
        load({**BASE, "pki_watch": {"sinks": sinks}})
    assert str(info.value).startswith(key + ":")


def test_a_first_retry_longer_than_the_longest_is_refused():
    with pytest.raises(ConfigError, match=r"^pki_watch\.retry\.initial: must not be longer than retry.max"):
        load({**BASE, "pki_watch": {"retry": {"initial": "10m", "max": "1m"}}})


@pytest.mark.parametrize("warn", ["14d", ["14d", "soon"], [0]])
def test_bad_expiry_thresholds_are_refused(warn):
    with pytest.raises(ConfigError, match=r"^pki_watch\.expiry_warn:"):
        load(changed("vault", BASE["vault"]) | {"pki_watch": {"expiry_warn": warn}})


def test_days():
    assert [days(s) for s in (3 * DAY, 2.5 * DAY, 5 * 3600)] == ["3d", "2.5d", "5h"]


@dataclass
class FakePki:
    """A PKI mount as PkiClient shows it; tests change the fields between cycles."""

    mount: str = "pki"
    certs: dict[str, CertInfo] = field(default_factory=dict)
    listed_revoked: set[str] = field(default_factory=set)
    crl_serials: set[str] = field(default_factory=set)
    revoked_at: dict[str, float] = field(default_factory=dict)
    next_update: float = NOW + 3 * DAY
    crl_down: bool = False
    ocsp: dict[str, str] = field(default_factory=dict)  # serial → answer; missing: "good"
    ocsp_down: bool = False

    def add(self, serial: str, name: str, not_after: float) -> None:
        self.certs[serial] = CertInfo(serial, name, (name,), not_after)

    def certificates(self):
        return dict(self.certs)

    def revoked(self):
        return set(self.listed_revoked)

    def issuers(self):
        return {"i1": Issuer("i1", "CN=root", "00:01", "PEM")}

    def crls(self, issuer):
        if self.crl_down:
            raise PkiUnavailable("pki/issuer/i1/crl/der: HTTP 500")
        return [Crl("i1", False, 7, NOW - 60, self.next_update, frozenset(self.crl_serials), True)]

    def stored(self, serial, refresh=False):
        return StoredCert(self.certs[serial], "PEM", "i1", self.revoked_at.get(serial))

    def issuer_of(self, stored, issuers):
        return issuers["i1"]

    def ocsp_status(self, stored, issuer):
        if self.ocsp_down:
            raise PkiUnavailable("pki/ocsp: HTTP 401")
        return self.ocsp.get(stored.info.serial, "good")


def cycle(pki: FakePki, state: MountState, now: float = NOW, baseline: bool = False, **settings):
    check = MountCheck(pki, state, watch_settings(**settings), now)  # type: ignore[arg-type]
    check.run(baseline)
    return [(e["type"], e.get("reason") or e.get("serial") or "") for e in check.events]


def test_revocation_once_and_baseline_is_silent():
    pki, state = FakePki(), MountState()
    pki.add("01", "old.dev.local", NOW + 30 * DAY)
    pki.add("02", "new.dev.local", NOW + 30 * DAY)
    pki.listed_revoked = pki.crl_serials = {"01"}
    pki.revoked_at = {"01": NOW - 100}
    pki.ocsp = {"01": "revoked"}
    assert cycle(pki, state, baseline=True) == []
    pki.listed_revoked = pki.crl_serials = {"01", "02"}
    pki.revoked_at["02"], pki.ocsp["02"] = NOW, "revoked"
    assert cycle(pki, state) == [("certificate_revoked", "02")]
    assert cycle(pki, state) == []


def test_conditions_are_reported_once_and_rearmed_when_they_stay_clear():
    """From the last notes' list: a condition was re-armed the first cycle it was clear, so a
    responder that failed every other minute paged every other minute. It is re-armed once it
    has been clear for CLEAR_CYCLES cycles in a row."""
    pki, state = FakePki(), MountState()
    pki.add("01", "a.dev.local", NOW + 30 * DAY)
    cycle(pki, state, baseline=True)
    pki.ocsp_down = True
    assert cycle(pki, state) == [("ocsp_unreachable", "")]
    assert cycle(pki, state) == []
    for _ in range(3):  # flickering: down, up, down, ...
        pki.ocsp_down = False
        assert cycle(pki, state) == []
        pki.ocsp_down = True
        assert cycle(pki, state) == []
    pki.ocsp_down = False
    for _ in range(watch_module.CLEAR_CYCLES):
        assert cycle(pki, state) == []
    assert state.alerts == {}
    pki.ocsp_down = True
    assert cycle(pki, state) == [("ocsp_unreachable", "")]


def test_stale_crl_reasons():
    pki, state = FakePki(), MountState()
    pki.add("01", "a.dev.local", NOW + 30 * DAY)
    cycle(pki, state, baseline=True)
    pki.next_update = NOW - 1
    assert cycle(pki, state) == [("crl_stale", "next_update_passed")]
    pki.next_update = NOW + DAY
    pki.listed_revoked, pki.revoked_at = {"01"}, {"01": NOW - 60}
    pki.ocsp = {"01": "revoked"}
    assert cycle(pki, state, crl_grace="5m") == [("certificate_revoked", "01")]  # within grace
    assert cycle(pki, state, now=NOW + 600, crl_grace="5m") == [("crl_stale", "revocation_not_published")]
    pki.crl_down = True
    assert cycle(pki, state, now=NOW + 700) == [("crl_stale", "unavailable")]  # missing one stays known
    pki.crl_down, pki.crl_serials = False, {"01"}
    assert cycle(pki, state, now=NOW + 800) == []


def test_ocsp_disagreeing_with_the_crl():
    pki, state = FakePki(), MountState()
    pki.add("01", "a.dev.local", NOW + 30 * DAY)
    pki.add("02", "b.dev.local", NOW + 40 * DAY)
    cycle(pki, state, baseline=True)
    pki.listed_revoked = pki.crl_serials = {"01"}
    pki.revoked_at = {"01": NOW}
    assert cycle(pki, state) == [("certificate_revoked", "01"), ("ocsp_mismatch", "01")]
    pki.ocsp = {"01": "revoked", "02": "revoked"}  # now right for 01, wrong for the valid 02
    assert cycle(pki, state) == [("ocsp_mismatch", "02")]
    assert "01" in state.ocsp_agrees


def test_expiry_once_per_threshold_tightest_first_and_not_for_renewed():
    pki, state = FakePki(next_update=NOW + 100 * DAY), MountState()
    pki.add("01", "a.dev.local", NOW + 20 * DAY)
    pki.add("02", "b.dev.local", NOW + 1 * DAY)
    pki.add("03", "c.dev.local", NOW + 2 * DAY)
    pki.add("04", "c.dev.local", NOW + 60 * DAY)  # renewed: 03 needs no warning
    assert cycle(pki, state, baseline=True) == [("certificate_expiring", "02")]
    assert state.expiry == {"02": [14 * DAY, 3 * DAY]}
    assert cycle(pki, state, now=NOW + 7 * DAY) == [("certificate_expiring", "01")]  # 13 days left
    assert cycle(pki, state, now=NOW + 8 * DAY) == []
    assert cycle(pki, state, now=NOW + 17.5 * DAY) == [("certificate_expiring", "01")]  # 2.5 days
    del pki.certs["02"]  # tidied away: forgotten
    cycle(pki, state, now=NOW + 18 * DAY)
    assert "02" not in state.expiry


def test_state_round_trip():
    state = WatchState(mounts={"pki": MountState({"01", "03"}, {"02": [DAY]}, {"ocsp_unreachable": 1},
                                                 {"01", "04"})},
                       outbox=[Pending({"id": "x"}, "hook", 2, NOW, NOW - 5)], version=3)
    again = WatchState.from_data(state.to_data(), 3)
    assert again == state
    assert set(state.to_data()) == {"format", "state"}  # one string: Vault caps JSON strings


def test_a_state_written_before_format_2_is_read():
    old = {"format": 1, "state": json.dumps({"mounts": {"pki": {
        "revoked": ["01"], "expiry": {"02": [DAY]}, "alerts": ["crl_stale"], "ocsp_agrees": ["01"]}},
        "outbox": []})}
    assert WatchState.from_data(old, 7).mounts["pki"] == MountState({"01"}, {"02": [DAY]}, {"crl_stale": 0},
                                                                    {"01"})


def test_the_state_of_many_revocations_fits_well_within_a_raft_entry(monkeypatch, caplog):
    """From the last notes' list: the state took ~130 bytes per revoked certificate (its serial
    twice, JSON in JSON), so ~8,000 revocations passed the 1 MiB a raft entry may hold, and every
    save, hence every delivery, failed from then on."""
    serials = {":".join(f"{b:02x}" for b in os.urandom(20)) for _ in range(10_000)}
    state = WatchState(mounts={"pki": MountState(revoked=set(serials), ocsp_agrees=set(serials))})
    data = state.to_data()
    assert len(data["state"]) < 40 * len(serials)
    assert WatchState.from_data(data, 1).mounts == state.mounts

    saved: list[dict] = []
    session = SimpleNamespace(config=SimpleNamespace(prefix="dnsapi"), run=lambda call: call(),
                              write_kv=lambda path, value, version: saved.append(value) or version + 1)
    monkeypatch.setattr(watch_module, "STATE_WARN_BYTES", 100_000)
    watch_module.StateStore(session).save(state)  # type: ignore[arg-type]
    assert saved == [data] and "refuses an entry over 1 MiB" in caplog.text


def test_delivery_backoff_then_give_up(monkeypatch):
    config = load({**BASE, "pki_watch": {
        **WATCH_LOGIN,
        "sinks": [{"type": "webhook", "url": "https://hooks.example/x", "name": "broken"}],
        "retry": {"initial": "10s", "max": "40s", "give_up": "1h"}}})

    def refused(*args: object) -> None:
        raise DeliveryError("broken: HTTP 500")

    monkeypatch.setattr(watch_module, "send", refused)  # every delivery fails
    watch = PkiWatch(config)
    state = WatchState(outbox=[Pending({"id": "e1"}, "broken", 0, NOW, NOW)])
    delays = []
    now = NOW
    for _ in range(5):
        assert watch.deliver(state, now)
        delays.append(state.outbox[0].next_at - now)
        now = state.outbox[0].next_at
    for delay, expected in zip(delays, [10, 20, 40, 40, 40], strict=True):  # doubling, capped, jittered
        assert 0.8 * expected <= delay <= expected
    assert not watch.deliver(state, now - 1)  # not due yet
    assert watch.deliver(state, NOW + 3601)  # past give_up: dropped
    assert state.outbox == []


def sink(kind: str, **extra) -> SinkConfig:
    return SinkConfig(name=kind, type=kind, url=extra.pop("url", "https://hooks.example/x?k=1"),
                      secret=extra.pop("secret", None), headers=(), command=(), env=(), timeout=5)


EVENT = {"id": "abc", "type": "certificate_revoked", "severity": "warning", "mount": "pki",
         "summary": "pki: certificate a.dev.local was revoked", "serial": "01", "dns_names": ["a", "b"]}


def test_dingtalk_signature_verifies_as_documented():
    url, body = _payload(sink("dingtalk", secret="SECabc"), EVENT)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    stamp, sign = query["timestamp"][0], query["sign"][0]
    expected = hmac.new(b"SECabc", f"{stamp}\nSECabc".encode(), hashlib.sha256).digest()
    assert base64.b64decode(sign) == expected and query["k"] == ["1"]
    assert body["msgtype"] == "markdown" and "a, b" in body["markdown"]["text"]


def test_feishu_signature_verifies_as_documented():
    _, body = _payload(sink("feishu", secret="fs"), EVENT)
    expected = hmac.new(f"{body['timestamp']}\nfs".encode(), b"", hashlib.sha256).digest()
    assert base64.b64decode(body["sign"]) == expected
    assert body["msg_type"] == "text" and body["content"]["text"].startswith("[WARNING] pki: certificate")


def test_unsigned_formats():
    assert _payload(sink("webhook"), EVENT) == ("https://hooks.example/x?k=1", EVENT)
    assert _payload(sink("slack"), EVENT)[1]["text"].startswith("[WARNING]")
    assert _payload(sink("wecom"), EVENT)[1]["markdown"]["content"].startswith("**dnsapi pki-watch")
    assert "sign" not in _payload(sink("feishu"), EVENT)[1]
    assert "timestamp" not in _payload(sink("dingtalk"), EVENT)[0]


@pytest.mark.e2e  # the command runs as a process
def test_command_sink_does_not_inherit_vault_credentials(tmp_path, monkeypatch):
    """The review's attack: a command sink saw DNSAPI_VAULT_SECRET_ID, enough to write challenge
    records. Only PATH, LANG and the sink's own `env:` list reach the program now."""
    monkeypatch.setenv("DNSAPI_VAULT_SECRET_ID", "s3cret-id")
    monkeypatch.setenv("DNSAPI_VAULT_TOKEN", "s.token")
    monkeypatch.setenv("PASSED_THROUGH", "yes")
    out = tmp_path / "env.txt"
    config = load({**BASE, "pki_watch": {"sinks": [{
        "type": "command", "name": "dump", "command": ["sh", "-c", f"env > {out}"],
        "env": ["PASSED_THROUGH", "FIXED=1", "NOT_SET_ANYWHERE"]}]}})
    send(config.pki_watch.sinks[0], EVENT, session=None)
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert "DNSAPI_VAULT_SECRET_ID" not in seen and "DNSAPI_VAULT_TOKEN" not in seen
    assert seen["PASSED_THROUGH"] == "yes" and seen["FIXED"] == "1"
    assert "NOT_SET_ANYWHERE" not in seen and "PATH" in seen


@pytest.mark.parametrize("env", [["1BAD"], "NAME", [{"a": 1}]])
def test_command_sink_env_must_be_names(env):
    with pytest.raises(ConfigError, match=r"pki_watch.sinks\[0\].env"):
        load({**BASE, "pki_watch": {"sinks": [{"type": "command", "command": ["x"], "env": env}]}})


class Answering:
    """A requests.Session stand-in whose every POST answers `body` with status 200."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def post(self, url: str, **kwargs: object) -> requests.Response:
        response = requests.Response()
        response.status_code, response._content = 200, self.body
        return response


@pytest.mark.parametrize("body", [b"[1]", b'"ok"', b"null", b"7"])
def test_a_robot_answering_json_that_is_no_object_is_a_failed_delivery(body):
    with pytest.raises(DeliveryError, match="not a JSON object"):
        send(sink("wecom"), EVENT, Answering(body))  # type: ignore[arg-type]


@pytest.mark.e2e  # the command runs as a process
def test_a_command_sink_that_cannot_run_is_a_failed_delivery(tmp_path):
    config = load({**BASE, "pki_watch": {"sinks": [{"type": "command", "name": "dir",
                                                     "command": [str(tmp_path)]}]}})
    with pytest.raises(DeliveryError, match="cannot run"):
        send(config.pki_watch.sinks[0], EVENT, session=None)


def test_a_sink_failing_in_a_way_nobody_foresaw_is_retried_not_fatal(monkeypatch):
    config = load({**BASE, "pki_watch": {**WATCH_LOGIN, "sinks": [
        {"type": "webhook", "url": "https://h.example/x?key=K", "name": "odd"}]}})

    def odd(*args: object) -> None:
        raise RuntimeError("https://h.example/x?key=K broke")  # (its message is not logged)

    monkeypatch.setattr(watch_module, "send", odd)
    watch = PkiWatch(config)
    state = WatchState(outbox=[Pending({"id": "e1"}, "odd", 0, NOW, NOW)])
    assert watch.deliver(state, NOW)
    assert [p.attempts for p in state.outbox] == [1]  # still pending, retried later


def test_a_long_outage_does_not_overflow_the_backoff(monkeypatch):
    config = load({**BASE, "pki_watch": {
        **WATCH_LOGIN,
        "sinks": [{"type": "webhook", "url": "https://hooks.example/x", "name": "down"}],
        "retry": {"initial": "1s", "max": "1s", "give_up": "30d"}}})
    monkeypatch.setattr(watch_module, "send", lambda *args: (_ for _ in ()).throw(DeliveryError("down")))
    watch = PkiWatch(config)
    state = WatchState(outbox=[Pending({"id": "e1"}, "down", 5000, NOW, NOW)])  # 5,000 tries so far
    assert watch.deliver(state, NOW + 1)
    assert state.outbox[0].next_at - (NOW + 1) <= 1


def test_secrets_of_sinks_and_approle_stay_out_of_repr():
    config = load({**BASE, "pki_watch": {"sinks": [
        {"type": "dingtalk", "name": "robot", "url": "https://oapi.example/send?access_token=TOKEN1",
         "secret": "SECRET2"},
        {"type": "webhook", "name": "hook", "url": "https://h.example/",
         "headers": {"Authorization": "Bearer H3"}}]}})
    shown = repr(config.pki_watch)
    assert "robot" in shown and not any(s in shown for s in ("TOKEN1", "SECRET2", "H3"))
    approle = cfg.AppRoleConfig(role_id="r", secret_id="SECRET4")
    assert "SECRET4" not in repr(approle)


def test_debug_logging_keeps_urllib3_quiet():
    """urllib3 logs each URL at debug level; a chat sink's URL holds its key."""
    import logging

    from dnsapi import logs
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup("debug")
        assert logging.getLogger("urllib3").getEffectiveLevel() >= logging.WARNING
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


class BrokenAnswers:
    """A VaultSession stand-in for PkiClient whose mount answers what Vault never writes."""

    class config:
        ca_cert = None
        timeout = 5.0

    url = "http://127.0.0.1:1"


@pytest.mark.parametrize("data", [
    {"certificate": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"},
    {},  # no certificate at all
    {"certificate": 5},
])
def test_a_certificate_answer_that_does_not_hold_together_is_pki_unavailable(monkeypatch, data):
    from dnsapi.pki.client import PkiClient
    client = PkiClient(BrokenAnswers(), "pki")  # type: ignore[arg-type]
    monkeypatch.setattr(client, "_get_json", lambda path, method="GET": data)
    with pytest.raises(PkiUnavailable, match="does not hold together"):
        client.stored("01:02")


def test_the_watch_loop_outlives_an_error_nobody_foresaw(monkeypatch):
    config = load({**BASE, "pki_watch": {**WATCH_LOGIN, "sinks": [
        {"type": "webhook", "url": "https://h.example/", "name": "hook"}]}})
    watch = PkiWatch(config)

    class Stop:  # a stop flag whose waits return at once
        done = False

        def is_set(self) -> bool:
            return self.done

        def wait(self, seconds: float) -> bool:
            return self.done

    stop, checks = Stop(), []

    def check(state: WatchState, now: float) -> list:
        checks.append(now)
        if len(checks) == 1:
            raise RuntimeError("a bug")
        stop.done = True
        return []

    monkeypatch.setattr(watch, "check", check)
    monkeypatch.setattr(watch.store, "load", WatchState)
    monkeypatch.setattr(watch.store, "save", lambda state: None)
    watch.run(stop)  # type: ignore[arg-type]
    assert len(checks) == 2  # it checked again after the failure


def test_a_serial_whose_certificate_cannot_be_read_is_skipped_not_an_unreachable_responder():
    class Tidied(FakePki):
        def stored(self, serial, refresh=False):
            if serial == "0d":
                raise PkiUnavailable("pki/cert/0d: HTTP 404")
            return super().stored(serial, refresh)

    pki, state = Tidied(), MountState()
    pki.add("0c", "c.dev.local", NOW + 90 * DAY)
    pki.add("0d", "d.dev.local", NOW + 90 * DAY)
    cycle(pki, state, baseline=True)
    pki.listed_revoked, pki.crl_serials = {"0d"}, {"0d"}
    events = cycle(pki, state)
    assert ("ocsp_unreachable", "") not in events and not any(t == "ocsp_unreachable" for t, _ in events)
