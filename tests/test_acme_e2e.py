"""Real certificates from a real ACME CA: OpenBao PKI with ACME enabled, validating DNS-01 against
CoreDNS, with dnsapi writing the challenge records. One apex + wildcard certificate per client:
lego (httpreq), lego (exec), certbot (manual hooks), the acme.sh hook under the harness, and
through the RFC 2136 front door lego's rfc2136 provider and certbot-dns-rfc2136 (hmac-md5 and
hmac-sha512 keys); and an ACME revocation, which pki-watch must report."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from dnsapi.pki.client import serial_text

from .helpers import (
    FIGURES,
    ZONE,
    Receiver,
    Stack,
    Vault,
    free_port,
    openbao_server,
    start_stack,
    start_watch,
    wait_for_watch_cycles,
    write_watch_config,
)

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "tests" / "acmesh" / "harness.sh"
HOOK = ROOT / "hooks" / "dns_internal.sh"

# The RFC 2136 front door's keys in the `acme` stack: name -> (algorithm, the one name whose
# challenge records the key may change, how dnsapi's config gives its secret).
TSIG_KEYS = {
    "lego": ("hmac-sha256", "lego-rfc2136.dev.local", "secret"),
    "certbot-md5": ("hmac-md5", "certbot-rfc2136-md5.dev.local", "secret_file"),
    "certbot-sha512": ("hmac-sha512", "certbot-rfc2136-sha512.dev.local", "secret_env"),
}


def setup_acme_pki(vault: Vault, dns_port: int) -> str:
    """PKI mount with a root CA, a role for dev.local and ACME on, validating via CoreDNS.
    Returns the root certificate PEM."""
    client = vault.client
    client.sys.enable_secrets_engine("pki", path="pki", config={"max_lease_ttl": "87600h"})
    root = client.write_data("pki/root/generate/internal", data={
        "common_name": "dnsapi test root", "ttl": "87600h", "key_type": "ec", "key_bits": 256})
    client.write_data("pki/config/cluster", data={"path": f"{vault.addr}/v1/pki",
                                                  "aia_path": f"{vault.addr}/v1/pki"})
    client.write_data("pki/roles/acme", data={
        "allowed_domains": ZONE, "allow_subdomains": True, "allow_wildcard_certificates": True,
        "max_ttl": "72h", "key_type": "any"})
    client.sys.tune_mount_configuration(
        "pki", passthrough_request_headers=["If-Modified-Since"],
        allowed_response_headers=["Last-Modified", "Location", "Replay-Nonce", "Link"])
    client.write_data("pki/config/acme", data={"enabled": True,
                                               "dns_resolver": f"127.0.0.1:{dns_port}"})
    return root["data"]["certificate"]


@dataclass
class AcmeEnv:
    stack: Stack
    vault: Vault
    directory: str
    root_pem: Path
    bin_dir: Path  # holds a `dnsapi` that runs this checkout's code
    update_port: int  # the RFC 2136 front door (dns_update.listen), UDP and TCP on 127.0.0.1
    tsig: dict[str, tuple[str, str]]  # its keys: name -> (algorithm, base64 secret)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
                "PYTHONPATH": str(ROOT), "DNSAPI_URL": self.stack.url,
                "DNSAPI_TOKEN": self.stack.token, **extra}

    def front_door_env(self, **extra: str) -> dict[str, str]:
        """The environment without dnsapi's HTTP API: no DNSAPI_* variable, no `dnsapi` on PATH."""
        return {**{k: v for k, v in os.environ.items() if not k.startswith("DNSAPI_")}, **extra}

    def front_door_audit(self, key: str) -> list[dict[str, object]]:
        """The audit lines of the RFC 2136 front door for `key`."""
        lines = (self.stack.dir / "audit.jsonl").read_text().splitlines()
        return [entry for entry in map(json.loads, lines)
                if entry.get("action") == "dns_update" and entry.get("token") == f"key:{key}"]

    def check_certificate(self, cert: Path, name: str) -> None:
        """The certificate verifies against the OpenBao root, covers NAME and *.NAME, and no
        challenge record is left in Vault, the zone file or DNS."""
        leaf = cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        (cert.parent / "leaf.pem").write_text(leaf)
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(self.root_pem),
                                 str(cert.parent / "leaf.pem")], capture_output=True, text=True,
                                check=False)
        assert verify.returncode == 0 and verify.stdout.strip().endswith(": OK"), verify.stderr
        sans = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"],
                              input=leaf, capture_output=True, text=True, check=True).stdout
        assert f"DNS:{name}" in sans and f"DNS:*.{name}" in sans
        fqdn = f"_acme-challenge.{name}"
        assert not any(f == fqdn for f, _ in self.stack.vault_records())
        assert f"{fqdn}." not in self.stack.zone_path.read_text()
        self.stack.wait_served(fqdn, set())


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeEnv]:
    base = tmp_path_factory.mktemp("acme")
    update_port = free_port()
    tsig = {name: (algorithm, base64.b64encode(secrets.token_bytes(32)).decode())
            for name, (algorithm, _, _) in TSIG_KEYS.items()}
    env: dict[str, str] = {}  # for dnsapi: the secret_env secrets
    keys: list[dict[str, object]] = []
    for i, (name, (algorithm, allowed, how)) in enumerate(TSIG_KEYS.items()):
        secret = tsig[name][1]
        (base / f"tsig-{i}.key").write_text(secret + "\n")
        env[f"ACME_TEST_TSIG_{i}"] = secret
        given = {"secret": secret, "secret_file": str(base / f"tsig-{i}.key"),
                 "secret_env": f"ACME_TEST_TSIG_{i}"}
        keys.append({"name": name, "algorithm": algorithm, how: given[how], "allow": [allowed]})

    def front_door(config: dict[str, object]) -> None:
        config["audit"] = {"file": "audit.jsonl"}  # the tests read the front door's lines
        config["dns_update"] = {"listen": f"127.0.0.1:{update_port}", "keys": keys}

    with openbao_server(base, tls=True) as vault:
        stack = start_stack(base / "stack", vault, prefix="acme", edit=front_door, env=env)
        try:
            root_pem = base / "root.pem"
            root_pem.write_text(setup_acme_pki(vault, stack.dns_port))
            bin_dir = base / "bin"
            bin_dir.mkdir()
            (bin_dir / "dnsapi").write_text(f'#!/bin/sh\nexec {sys.executable} -m dnsapi "$@"\n')
            (bin_dir / "dnsapi").chmod(0o755)
            yield AcmeEnv(stack, vault, f"{vault.addr}/v1/pki/roles/acme/acme/directory", root_pem,
                          bin_dir, update_port, tsig)
        finally:
            stack.stop()


def timed(name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
    start = time.monotonic()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
                            check=False)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    FIGURES[f"issuance wall time, apex + wildcard, {name}"] = f"{elapsed:.1f} s"


def lego_argv(acme: AcmeEnv, path: Path, provider: str, name: str) -> list[str]:
    return ["lego", "--server", acme.directory, "--accept-tos", "--email", "admin@dev.local",
            "--path", str(path), "--key-type", "ec256", "--dns", provider, "--dns.disable-cp",
            "--dns.resolvers", f"127.0.0.1:{acme.stack.dns_port}", "-d", name, "-d", f"*.{name}", "run"]


def issue_with_httpreq(acme: AcmeEnv, tmp_path: Path, name: str, label: str) -> None:
    """lego's httpreq provider against dnsapi's API: apex + wildcard for `name`, checked."""
    env = acme.env(HTTPREQ_ENDPOINT=acme.stack.url, HTTPREQ_USERNAME="lego",
                   HTTPREQ_PASSWORD=acme.stack.token, LEGO_CA_CERTIFICATES=str(acme.vault.ca))
    timed(label, lego_argv(acme, tmp_path, "httpreq", name), env, tmp_path)
    acme.check_certificate(tmp_path / "certificates" / f"{name}.crt", name)


def test_lego_httpreq(acme, tmp_path):
    issue_with_httpreq(acme, tmp_path, "lego-httpreq.dev.local", "lego httpreq")


def test_lego_exec(acme, tmp_path):
    name = "lego-exec.dev.local"
    # EXEC_SEQUENCE_INTERVAL: lego's exec provider solves challenges one at a time, 60 s apart by
    # default; dnsapi holds several values per name, so nothing needs the gap.
    env = acme.env(EXEC_PATH=str(ROOT / "hooks" / "lego-exec.sh"), EXEC_SEQUENCE_INTERVAL="1",
                   LEGO_CA_CERTIFICATES=str(acme.vault.ca))
    timed("lego exec", lego_argv(acme, tmp_path, "exec", name), env, tmp_path)
    acme.check_certificate(tmp_path / "certificates" / f"{name}.crt", name)


def test_certbot_manual_hooks(acme, tmp_path):
    name = "certbot.dev.local"
    argv = ["certbot", "certonly", "--non-interactive", "--agree-tos", "--email", "admin@dev.local",
            "--no-eff-email", "--server", acme.directory, "--manual", "--preferred-challenges", "dns",
            "--manual-auth-hook", "dnsapi certbot-auth", "--manual-cleanup-hook", "dnsapi certbot-cleanup",
            "--config-dir", str(tmp_path / "config"), "--work-dir", str(tmp_path / "work"),
            "--logs-dir", str(tmp_path / "logs"), "--key-type", "ecdsa", "-d", name, "-d", f"*.{name}"]
    timed("certbot manual hooks", argv, acme.env(REQUESTS_CA_BUNDLE=str(acme.vault.ca)), tmp_path)
    acme.check_certificate(tmp_path / "config" / "live" / name / "fullchain.pem", name)


def assert_front_door_did_it(acme: AcmeEnv, key: str, name: str) -> None:
    """Both challenges were presented and cleaned up through the RFC 2136 front door with `key`:
    four UPDATEs (two adds, two deletes), each applied, none refused, all at the one name."""
    entries = acme.front_door_audit(key)
    assert [entry["result"] for entry in entries] == ["applied"] * 4, entries
    assert {fqdn for entry in entries for fqdn in str(entry["fqdn"]).split(",")} == \
        {f"_acme-challenge.{name}"}


def test_lego_rfc2136(acme, tmp_path):
    """lego's rfc2136 provider: finds the zone by SOA queries to the front door (UDP, RD=1,
    walking up the labels until the SOA is in the answer), then per challenge one UPDATE that
    deletes the TXT RRset and inserts the value, and one that removes the value."""
    key = "lego"
    algorithm, secret = acme.tsig[key]
    name = TSIG_KEYS[key][1]
    # RFC2136_SEQUENCE_INTERVAL: lego solves rfc2136 challenges one at a time (each Present
    # replaces the whole TXT RRset), 60 s apart by default; dnsapi needs no gap.
    env = acme.front_door_env(RFC2136_NAMESERVER=f"127.0.0.1:{acme.update_port}",
                              RFC2136_TSIG_KEY=key, RFC2136_TSIG_SECRET=secret,
                              RFC2136_TSIG_ALGORITHM=f"{algorithm}.", RFC2136_SEQUENCE_INTERVAL="1",
                              LEGO_CA_CERTIFICATES=str(acme.vault.ca))
    timed("lego rfc2136 (hmac-sha256)", lego_argv(acme, tmp_path, "rfc2136", name), env, tmp_path)
    acme.check_certificate(tmp_path / "certificates" / f"{name}.crt", name)
    assert_front_door_did_it(acme, key, name)


@pytest.mark.parametrize("key", ["certbot-md5", "certbot-sha512"])
def test_certbot_dns_rfc2136(acme, tmp_path, key):
    """certbot-dns-rfc2136: finds the zone by signed SOA queries over TCP with RD=0 (it wants AA
    and the SOA in the answer), adds both challenge values, sleeps the propagation seconds once,
    then deletes each value."""
    algorithm, secret = acme.tsig[key]
    name = TSIG_KEYS[key][1]
    credentials = tmp_path / "rfc2136.ini"
    # The algorithm in capitals: certbot 2.1 checks it case-insensitively but looks it up as
    # written, so `hmac-sha512` would sign with HMAC-MD5 (dnsapi: BADKEY).
    credentials.write_text(f"dns_rfc2136_server = 127.0.0.1\ndns_rfc2136_port = {acme.update_port}\n"
                           f"dns_rfc2136_name = {key}\ndns_rfc2136_secret = {secret}\n"
                           f"dns_rfc2136_algorithm = {algorithm.upper()}\n")
    credentials.chmod(0o600)
    # --dns-rfc2136-propagation-seconds 1: dnsapi answers the UPDATE only once the zone file holds
    # the record, and CoreDNS re-reads the file within its `reload 250ms`, so one second always
    # covers it. 0 issues too, but slowly: the CA validates within milliseconds of certbot's
    # answer, mostly before CoreDNS has reloaded, and OpenBao retries a failed validation only
    # 5 s later (about 9 s per certificate instead of 4).
    argv = ["certbot", "certonly", "--non-interactive", "--agree-tos", "--email", "admin@dev.local",
            "--no-eff-email", "--server", acme.directory, "--authenticator", "dns-rfc2136",
            "--dns-rfc2136-credentials", str(credentials), "--dns-rfc2136-propagation-seconds", "1",
            "--config-dir", str(tmp_path / "config"), "--work-dir", str(tmp_path / "work"),
            "--logs-dir", str(tmp_path / "logs"), "--key-type", "ecdsa", "-d", name, "-d", f"*.{name}"]
    timed(f"certbot dns-rfc2136 ({algorithm})", argv,
          acme.front_door_env(REQUESTS_CA_BUNDLE=str(acme.vault.ca)), tmp_path)
    acme.check_certificate(tmp_path / "config" / "live" / name / "fullchain.pem", name)
    assert_front_door_did_it(acme, key, name)


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_acmesh_hook_under_the_harness(acme, tmp_path, shell):
    """lego drives the ACME protocol; each DNS step runs hooks/dns_internal.sh exactly as acme.sh
    would (tests/acmesh/harness.sh), under dash and under bash."""
    name = f"acmesh-{shell}.dev.local"
    bridge = tmp_path / "acmesh-bridge.sh"
    bridge.write_text(f"""#!/bin/sh
case "$1" in present) action=add ;; cleanup) action=rm ;; *) exit 1 ;; esac
exec {shell} {HARNESS} {HOOK} "$action" "${{2%.}}" "$3"
""")
    bridge.chmod(0o755)
    env = acme.env(EXEC_PATH=str(bridge), EXEC_SEQUENCE_INTERVAL="1",
                   LEGO_CA_CERTIFICATES=str(acme.vault.ca), ACCOUNT_CONF_PATH=str(tmp_path / "account.conf"))
    timed(f"acme.sh hook under the harness ({shell})", lego_argv(acme, tmp_path, "exec", name), env,
          tmp_path)
    acme.check_certificate(tmp_path / "certificates" / f"{name}.crt", name)
    assert "SAVED_DNSAPI_TOKEN=" in (tmp_path / "account.conf").read_text()


def test_acme_revocation_reaches_pki_watch_once(acme, tmp_path):
    """A certificate issued and then revoked over ACME (lego revoke) is reported exactly once."""
    receiver = Receiver()
    receiver.start()
    config = write_watch_config(tmp_path / "watch", acme.vault.addr, acme.vault.root_token, ["pki"],
                                [{"type": "webhook", "url": receiver.url}], ca=acme.vault.ca,
                                prefix="watch")
    watch = start_watch(config, tmp_path / "watch" / "pki-watch.log")
    try:
        name = "acme-revoked.dev.local"
        env = acme.env(HTTPREQ_ENDPOINT=acme.stack.url, HTTPREQ_USERNAME="lego",
                       HTTPREQ_PASSWORD=acme.stack.token, LEGO_CA_CERTIFICATES=str(acme.vault.ca))
        argv = lego_argv(acme, tmp_path, "httpreq", name)
        subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, timeout=300, check=True)
        pem = (tmp_path / "certificates" / f"{name}.crt").read_bytes()
        serial = serial_text(x509.load_pem_x509_certificate(pem).serial_number)
        # lego revokes per -d, and the wildcard has no certificate file of its own
        assert argv[-5:] == ["-d", name, "-d", f"*.{name}", "run"]
        revoked = subprocess.run([*argv[:-5], "-d", name, "revoke"], env=env, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120, check=False)
        assert revoked.returncode == 0, revoked.stderr[-2000:]
        got = receiver.wait_for("certificate_revoked", serial=serial)
        wait_for_watch_cycles(acme.vault, "watch")  # later cycles did not report it again
    finally:
        watch.stop()
        receiver.stop()
    assert got["common_name"] == name and sorted(got["dns_names"]) == sorted([name, f"*.{name}"])
    assert len(receiver.events("certificate_revoked", serial=serial)) == 1
