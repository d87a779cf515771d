"""`dnsapi pki-watch` as a real process against the session's real OpenBao: each test gets its own
PKI mount (a root CA and a role) and its own state prefix, and a webhook receiver on loopback.
ACME revocation is tested in test_acme_e2e.py, next to the ACME CA it needs."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests
from cryptography.x509 import ocsp

from dnsapi import config as config_module
from dnsapi.pki.client import PkiClient, PkiUnavailable, revocation_time
from dnsapi.pki.vault_init import render_pki_watch_policy
from dnsapi.pki.watch import StateStore, WatchState, own_login
from dnsapi.vault import VaultSession

from .helpers import (
    FIGURES,
    Receiver,
    Vault,
    run_once,
    start_watch,
    wait_for_watch_cycles,
    wait_until,
    write_watch_config,
)


@dataclass
class Pki:
    vault: Vault
    mount: str
    dir: Path
    receiver: Receiver
    prefix: str

    @property
    def client(self) -> hvac.Client:
        return self.vault.client

    def issue(self, name: str, ttl: str = "1h") -> str:
        data = self.client.write_data(f"{self.mount}/issue/leaf", data={"common_name": name, "ttl": ttl})
        return data["data"]["serial_number"]

    def revoke(self, serial: str) -> float:
        """Revoke through `<mount>/revoke`; returns the revocation time Vault recorded."""
        answer = self.client.write_data(f"{self.mount}/revoke", data={"serial_number": serial})
        return revocation_time(answer["data"])

    def config(self, **settings: Any) -> Path:
        sinks = settings.pop("sinks", [{"type": "webhook", "url": self.receiver.url + "/hook"}])
        return write_watch_config(self.dir, self.vault.addr, self.vault.root_token, [self.mount],
                                  sinks, prefix=self.prefix, **settings)

    def watch(self, **settings: Any):
        return start_watch(self.config(**settings), self.dir / "pki-watch.log")

    def state(self) -> WatchState:
        """The watch state as pki-watch last saved it in Vault."""
        cfg = config_module.load(self.dir / "dnsapi.yaml")
        return StateStore(VaultSession(own_login(cfg))).load()

    def pending(self) -> int:
        """Undelivered events in the watch state in Vault."""
        return len(self.state().outbox)

    def wait_cycles(self, cycles: int = 2) -> None:
        """Wait until the watcher has run `cycles` more check cycles and delivered their events:
        what they did not report by then, they did not report."""
        wait_for_watch_cycles(self.vault, self.prefix, cycles)

    def log(self) -> str:
        return (self.dir / "pki-watch.log").read_text()


@pytest.fixture
def pki(openbao: Vault, tmp_path: Path) -> Iterator[Pki]:
    mount = f"pki-{uuid.uuid4().hex[:8]}"
    client = openbao.client
    client.sys.enable_secrets_engine("pki", path=mount, config={"max_lease_ttl": "87600h"})
    client.write_data(f"{mount}/root/generate/internal", data={
        "common_name": f"{mount} root", "ttl": "87600h", "key_type": "ec", "key_bits": 256})
    client.write_data(f"{mount}/roles/leaf", data={
        "allowed_domains": "dev.local", "allow_subdomains": True, "max_ttl": "2400h", "key_type": "ec",
        "key_bits": 256})
    receiver = Receiver()
    receiver.start()
    yield Pki(openbao, mount, tmp_path, receiver, f"watch-{uuid.uuid4().hex[:8]}")
    receiver.stop()


def test_revocation_reported_exactly_once_with_its_delay(pki):
    proc = pki.watch()
    try:
        serial = pki.issue("revoked.dev.local")
        revoked_at = pki.revoke(serial)
        got = pki.receiver.wait_for("certificate_revoked", serial=serial)
        delay = pki.receiver.arrival(got["id"]) - revoked_at
        pki.wait_cycles()
    finally:
        assert proc.stop() == 0
    assert len(pki.receiver.events("certificate_revoked")) == 1
    assert got["mount"] == pki.mount and got["common_name"] == "revoked.dev.local"
    assert got["dns_names"] == ["revoked.dev.local"] and "revoked_at" in got
    assert pki.receiver.received[0]["headers"]["X-Dnsapi-Event-Id"] == got["id"]
    FIGURES["pki-watch: revocation → webhook (interval 500 ms)"] = f"{delay * 1000:.0f} ms"
    log = (pki.dir / "pki-watch.log").read_text()
    assert pki.receiver.url not in log and pki.vault.root_token not in log


def test_restart_neither_repeats_nor_drops(pki):
    serial = pki.issue("before.dev.local")
    proc = pki.watch()
    pki.revoke(serial)
    pki.receiver.wait_for("certificate_revoked", serial=serial)
    assert proc.stop() == 0
    second = pki.issue("while-down.dev.local")
    pki.revoke(second)  # revoked while no watcher runs
    proc = pki.watch()
    try:
        pki.receiver.wait_for("certificate_revoked", serial=second)
        pki.wait_cycles()
    finally:
        proc.stop()
    assert sorted(e["serial"] for e in pki.receiver.events("certificate_revoked")) == sorted([serial, second])


def test_receiver_down_then_up_delivers_once_after_retry(pki):
    pki.receiver.stop()
    proc = pki.watch()
    try:
        serial = pki.issue("outage.dev.local")
        pki.revoke(serial)
        wait_until(lambda: "attempt 3" in pki.log(), 15, "a third delivery attempt")
        assert pki.pending() == 1  # waiting in Vault, not only in memory
        pki.receiver.start()
        pki.receiver.wait_for("certificate_revoked", serial=serial, timeout=10)
        wait_until(lambda: pki.pending() == 0, 10, "the outbox to empty")
        pki.wait_cycles()
    finally:
        proc.stop()
    assert len(pki.receiver.events("certificate_revoked")) == 1
    assert pki.pending() == 0
    assert "ConnectionError" in pki.log()


def test_robot_refusal_is_retried(pki):
    """Chat robots answer 200 with an error code when they refuse a message: that is a failure."""
    pki.receiver.answer = (200, {"errcode": 310000, "errmsg": "keywords not in content"})
    proc = pki.watch(sinks=[{"type": "dingtalk", "url": pki.receiver.url + "/robot/send?access_token=x",
                             "secret": "SECtest"}])
    try:
        serial = pki.issue("refused.dev.local")
        pki.revoke(serial)
        wait_until(lambda: len(pki.receiver.received) >= 2, 15, "a refused delivery and its retry")
        pki.receiver.answer = (200, {"errcode": 0, "errmsg": "ok"})
        wait_until(lambda: not pki.pending(), 10, "the outbox to empty")
    finally:
        proc.stop()
    log = (pki.dir / "pki-watch.log").read_text()
    assert "refused with code 310000" in log and "SECtest" not in log and "access_token" not in log
    last = pki.receiver.received[-1]
    assert last["body"]["msgtype"] == "markdown" and serial in last["body"]["markdown"]["text"]
    assert "&timestamp=" in last["path"] and "&sign=" in last["path"]


def test_expired_crl_raises_one_stale_alert(pki):
    """auto_rebuild off and a 2 s CRL lifetime: after a revocation rebuilds the CRL, nothing
    rebuilds it again, so its nextUpdate passes."""
    pki.client.write_data(f"{pki.mount}/config/crl", data={"expiry": "2s", "auto_rebuild": False})
    pki.client.read(f"{pki.mount}/crl/rotate")
    proc = pki.watch()
    try:
        pki.revoke(pki.issue("stale.dev.local"))
        alert = pki.receiver.wait_for("crl_stale", reason="next_update_passed", timeout=15)
        pki.wait_cycles()
    finally:
        proc.stop()
    assert len(pki.receiver.events("crl_stale")) == 1
    assert alert["issuer"] == f"CN={pki.mount} root" and alert["severity"] == "critical"


def test_revocation_missing_from_the_crl_raises_a_stale_alert(pki):
    """auto_rebuild on without delta CRLs: the full CRL is not rebuilt on revocation, so past
    crl_grace the revocation is still unpublished."""
    pki.client.write_data(f"{pki.mount}/config/crl", data={"auto_rebuild": True, "enable_delta": False})
    proc = pki.watch(crl_grace="1s")
    try:
        serial = pki.issue("unpublished.dev.local")
        pki.revoke(serial)
        alert = pki.receiver.wait_for("crl_stale", reason="revocation_not_published", timeout=15)
        revoked = pki.receiver.wait_for("certificate_revoked", serial=serial)
    finally:
        proc.stop()
    assert alert["serial"] == serial
    assert revoked["seen_in"] == ["revoked list"]


def test_ocsp_says_revoked_and_an_unreachable_responder_is_reported(pki):
    serial = pki.issue("ocsp.dev.local")
    pki.revoke(serial)
    cfg = config_module.load(pki.config())
    client = PkiClient(VaultSession(own_login(cfg)), pki.mount)
    stored = client.stored(serial)
    assert client.ocsp_status(stored, client.issuers()[stored.issuer_id]) == "revoked"
    # and the same answer from openssl, independently of dnsapi's OCSP code
    (pki.dir / "leaf.pem").write_text(stored.pem)
    (pki.dir / "issuer.pem").write_text(client.issuers()[stored.issuer_id].pem)
    out = subprocess.run(["openssl", "ocsp", "-issuer", str(pki.dir / "issuer.pem"), "-cert",
                          str(pki.dir / "leaf.pem"), "-url", f"{pki.vault.addr}/v1/{pki.mount}/ocsp",
                          "-noverify"], capture_output=True, text=True, check=True).stdout
    assert ": revoked" in out, out

    pki.issue("good.dev.local")  # the probe: newest valid certificate
    proc = pki.watch()
    try:
        pki.wait_cycles()
        assert not pki.receiver.events("ocsp_unreachable") and not pki.receiver.events("ocsp_mismatch")
        pki.client.write_data(f"{pki.mount}/config/crl", data={"ocsp_disable": True})
        alert = pki.receiver.wait_for("ocsp_unreachable", timeout=10)
        pki.wait_cycles()
        assert len(pki.receiver.events("ocsp_unreachable")) == 1  # once per outage
        pki.client.write_data(f"{pki.mount}/config/crl", data={"ocsp_disable": False})
        wait_until(lambda: "ocsp_unreachable" not in pki.state().mounts[pki.mount].alerts, 10,
                   "the watcher to see the responder answer again")
        pki.wait_cycles()
    finally:
        proc.stop()
    assert alert["error"].endswith("HTTP 401")  # what OpenBao answers with OCSP disabled
    assert not pki.receiver.events("ocsp_mismatch")


class DamagedSignatures(requests.adapters.HTTPAdapter):
    """Flips one bit in the signature of every OCSP answer on its way in: what a client gets
    from a responder signing with the wrong key, or through someone in between."""

    def build_response(self, req, resp):
        response = super().build_response(req, resp)
        if req.url.endswith("/ocsp"):
            body = bytearray(response.content)
            at = bytes(body).find(ocsp.load_der_ocsp_response(bytes(body)).signature)
            body[at + 4] ^= 1
            response._content = bytes(body)
        return response


def test_an_ocsp_answer_the_issuer_did_not_sign_is_not_believed(pki):
    """OpenBao's answers verify against the issuer (openssl agrees); the same answer with its
    signature damaged is a responder that does not answer properly, not a status."""
    serial = pki.issue("signed.dev.local")
    pki.revoke(serial)
    client = PkiClient(VaultSession(own_login(config_module.load(pki.config()))), pki.mount)
    stored = client.stored(serial)
    issuer = client.issuers()[stored.issuer_id]
    assert client.ocsp_status(stored, issuer) == "revoked"
    (pki.dir / "leaf.pem").write_text(stored.pem)
    (pki.dir / "issuer.pem").write_text(issuer.pem)
    out = subprocess.run(["openssl", "ocsp", "-issuer", str(pki.dir / "issuer.pem"), "-cert",
                          str(pki.dir / "leaf.pem"), "-url", f"{pki.vault.addr}/v1/{pki.mount}/ocsp",
                          "-VAfile", str(pki.dir / "issuer.pem")], capture_output=True, text=True,
                         check=False)
    assert "Response verify OK" in out.stderr + out.stdout and ": revoked" in out.stdout, out
    client.http.mount(pki.vault.addr, DamagedSignatures())
    with pytest.raises(PkiUnavailable, match="not signed by the issuer"):
        client.ocsp_status(stored, issuer)


def test_expiry_warned_once_per_threshold_and_not_for_renewed(pki):
    soon = pki.issue("soon.dev.local", ttl="2h")  # inside both thresholds: one warning, 3d
    later = pki.issue("later.dev.local", ttl="240h")  # inside 14d only
    old = pki.issue("renewed.dev.local", ttl="48h")
    pki.issue("renewed.dev.local", ttl="2000h")  # a renewal: the old one needs no warning
    proc = pki.watch(expiry_warn=["14d", "3d"])
    try:
        pki.receiver.wait_for("certificate_expiring", serial=soon)
        pki.receiver.wait_for("certificate_expiring", serial=later)
        pki.wait_cycles()
    finally:
        proc.stop()
    warned = {e["serial"]: e for e in pki.receiver.events("certificate_expiring")}
    assert set(warned) == {soon, later}, warned
    assert warned[soon]["threshold"] == "3d" and warned[soon]["severity"] == "critical"
    assert warned[later]["threshold"] == "14d" and warned[later]["severity"] == "warning"
    assert old not in warned
    assert len(pki.receiver.events("certificate_expiring")) == 2


def test_runs_on_the_least_privilege_policies_and_lists_without_certs_detailed(pki):
    """With only the pki-watch policy vault-init writes; and the one-by-one listing used where
    `certs/detailed` is missing (HashiCorp Vault) agrees with the detailed one."""
    client = pki.client
    client.sys.create_or_update_acl_policy(name=f"{pki.prefix}-watch",
                                           policy=render_pki_watch_policy("secret", pki.prefix, (pki.mount,)))
    token = client.auth.token.create(policies=[f"{pki.prefix}-watch"], ttl="10m")["auth"]["client_token"]
    serial = pki.issue("confined.dev.local")
    config = write_watch_config(pki.dir, pki.vault.addr, token, [pki.mount],
                                [{"type": "webhook", "url": pki.receiver.url}], prefix=pki.prefix)
    assert run_once(config).returncode == 0
    pki.revoke(serial)
    result = run_once(config)
    assert result.returncode == 0, result.stderr
    assert [e["serial"] for e in pki.receiver.events("certificate_revoked")] == [serial]
    watcher = PkiClient(VaultSession(own_login(config_module.load(config))), pki.mount)
    assert watcher.certificates_one_by_one() == watcher.certificates()
    assert serial in watcher.certificates()


def test_once_for_cron_exits_1_while_a_delivery_is_pending(pki):
    config = pki.config()
    assert run_once(config).returncode == 0  # first look
    serial = pki.issue("cron.dev.local")
    pki.revoke(serial)
    pki.receiver.stop()
    failed = run_once(config)
    assert failed.returncode == 1 and "still pending" in failed.stderr
    pki.receiver.start()
    assert run_once(config).returncode == 0
    assert run_once(config).returncode == 0
    assert [e["serial"] for e in pki.receiver.events("certificate_revoked")] == [serial]


def test_every_sink_format_is_accepted_by_its_receiver(pki, tmp_path):
    """One revocation, five HTTP formats and a command, all delivered through the real loop."""
    out = tmp_path / "command-events.jsonl"
    sinks = [
        {"type": "webhook", "url": pki.receiver.url + "/generic", "headers": {"Authorization": "Bearer s3"}},
        {"type": "slack", "url": pki.receiver.url + "/slack"},
        {"type": "wecom", "url": pki.receiver.url + "/wecom?key=k"},
        {"type": "dingtalk", "url": pki.receiver.url + "/dingtalk?access_token=t"},
        {"type": "feishu", "url": pki.receiver.url + "/feishu", "secret": "fs"},
        {"type": "command", "command": ["sh", "-c", f"cat >> {out}"]},
    ]
    proc = pki.watch(sinks=sinks)
    try:
        serial = pki.issue("formats.dev.local")
        pki.revoke(serial)
        wait_until(lambda: len(pki.receiver.received) >= 5 and out.exists()
                   and serial in out.read_text(), 15, "every sink's delivery")
    finally:
        proc.stop()
    by_path = {r["path"].split("?")[0]: r for r in pki.receiver.received}
    assert by_path["/generic"]["body"]["serial"] == serial
    assert by_path["/generic"]["headers"]["Authorization"] == "Bearer s3"
    assert serial in by_path["/slack"]["body"]["text"]
    assert serial in by_path["/wecom"]["body"]["markdown"]["content"]
    assert serial in by_path["/dingtalk"]["body"]["markdown"]["text"]
    feishu = by_path["/feishu"]["body"]
    assert feishu["msg_type"] == "text" and serial in feishu["content"]["text"] and feishu["sign"]
    assert f'"serial": "{serial}"' in out.read_text()
