"""From a blank OpenBao to nginx serving a certificate a client trusts with only the exported root:
`dnsapi vault-init` (twice) → `dnsapi serve` on AppRole → ACME DNS-01 through CoreDNS with lego →
nginx on a loopback port → verification → forced renewal and nginx reload. Also the policy."""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
import requests
import yaml

from dnsapi.pki.vault_init import render_pki_watch_policy, render_policy

from .helpers import Stack, Vault, free_port, openbao_server, start_stack

ROOT = Path(__file__).resolve().parent.parent
NAME = "web.dev.local"


def vault_init(config: Path, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dnsapi", "vault-init", "-c", str(config), *extra],
                          env={**os.environ, "VAULT_TOKEN": token}, capture_output=True, text=True,
                          timeout=120, check=False)


@dataclass
class Setup:
    vault: Vault
    stack: Stack
    first_run: str
    second_run: str


def approle_and_pki(config: dict) -> None:
    """dnsapi on the AppRole credentials vault-init writes, and vault-init's PKI settings."""
    del config["vault"]["token_file"]
    config["vault"]["approle"] = {"role_id_file": "creds/role-id", "secret_id_file": "creds/secret-id"}
    config["vault_init"] = {"pki": {"common_name": "dev.local test root", "root_ca_file": "root-ca.pem"}}
    config["pki_watch"] = {"approle": {"role_id_file": "creds/pki-watch-role-id",
                                       "secret_id_file": "creds/pki-watch-secret-id"},
                           "sinks": [{"type": "command", "command": ["/bin/true"]}]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("vault-init")
    with openbao_server(base) as vault:
        stack = start_stack(base / "stack", vault, edit=approle_and_pki, prefix="dnsapi", start=False)
        try:
            (stack.dir / "vault-token").unlink()  # AppRole only
            first = vault_init(stack.config_path, vault.root_token)
            assert first.returncode == 0, first.stderr
            second = vault_init(stack.config_path, vault.root_token)
            assert second.returncode == 0, second.stderr
            stack.start_dnsapi()  # helpers keep the test runner's Vault credentials away from it
            yield Setup(vault, stack, first.stdout, second.stdout)
        finally:
            stack.stop()


def test_first_run_creates_everything(setup):
    out = setup.first_run
    for line in ("created   policy dnsapi", "created   policy dnsapi-pki-watch",
                 "created   AppRole role dnsapi\n", "created   AppRole role dnsapi-pki-watch\n",
                 "created   root CA in pki_root/ (ec384 'dev.local test root')",
                 "created   intermediate CA in pki/ (signed by pki_root/)",
                 "created   PKI role pki/roles/acme", "ACME on pki/ (DNS-01 checked at 127.0.0.1:"):
        assert line in out, out
    creds = setup.stack.dir / "creds"
    for name in ("role-id", "secret-id", "pki-watch-role-id", "pki-watch-secret-id"):
        assert (creds / name).stat().st_mode & 0o777 == 0o600
        assert (creds / name).read_text().strip() not in out  # never printed
    assert creds.stat().st_mode & 0o777 == 0o700
    root = (setup.stack.dir / "root-ca.pem").read_text()
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-text"], input=root,
                             capture_output=True, text=True, check=True).stdout
    assert "CN = dev.local test root" in subject and "NIST CURVE: P-384" in subject


def test_second_run_changes_nothing(setup):
    assert setup.second_run.rstrip().splitlines()[-2] == "no changes: everything was already in place"
    assert "created" not in setup.second_run and "updated" not in setup.second_run
    # every step of the first run is unchanged, but for warnings (the audit stanza to add on a
    # dev OpenBao), whose indented lines are not steps
    steps = [line for line in setup.first_run.splitlines() if re.match(r"  \S", line)]
    warnings = setup.second_run.count("\n  warning ")
    assert warnings == 1 and setup.second_run.count("  unchanged ") == len(steps) - warnings


def test_a_stale_secret_id_is_replaced(setup, tmp_path):
    """A secret_id file left from another Vault (or revoked) gets a fresh secret_id; nothing else
    changes."""
    config = yaml.safe_load((setup.stack.dir / "dnsapi.yaml").read_text())
    config["vault"]["approle"] = {"role_id_file": str(tmp_path / "role-id"),
                                  "secret_id_file": str(tmp_path / "secret-id")}
    config["pki_watch"]["approle"] = {key: str(setup.stack.dir / path)
                                      for key, path in config["pki_watch"]["approle"].items()}
    config["zones"][0]["file"] = str(setup.stack.zone_path)
    config["vault_init"]["pki"]["root_ca_file"] = str(setup.stack.dir / "root-ca.pem")
    (tmp_path / "dnsapi.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "role-id").write_text((setup.stack.dir / "creds" / "role-id").read_text())
    (tmp_path / "secret-id").write_text("00000000-0000-0000-0000-000000000000\n")
    result = vault_init(tmp_path / "dnsapi.yaml", setup.vault.root_token)
    assert result.returncode == 0, result.stderr
    changed = [line for line in result.stdout.splitlines() if line.startswith(("  created", "  updated"))]
    assert changed == [f"  created   secret_id file {tmp_path / 'secret-id'} (new secret_id, mode 0600)"]
    fresh = (tmp_path / "secret-id").read_text().strip()
    assert fresh != "00000000-0000-0000-0000-000000000000"
    assert hvac.Client(url=setup.vault.addr).auth.approle.login(
        role_id=(tmp_path / "role-id").read_text().strip(), secret_id=fresh)["auth"]["client_token"]


def test_shipped_policy_is_what_vault_init_writes(setup):
    assert (ROOT / "deploy" / "vault" / "dnsapi-policy.hcl").read_text() == render_policy("secret", "dnsapi")
    rules = setup.vault.client.sys.read_policy("dnsapi")["data"]["rules"]
    assert rules == render_policy("secret", "dnsapi")
    watch_policy = render_pki_watch_policy("secret", "dnsapi", ("pki_root", "pki"))
    assert (ROOT / "deploy" / "vault" / "dnsapi-pki-watch-policy.hcl").read_text() == watch_policy
    assert setup.vault.client.sys.read_policy("dnsapi-pki-watch")["data"]["rules"] == watch_policy


def test_service_runs_on_approle_and_its_token_is_confined(setup):
    stack = setup.stack
    assert stack.call("GET", "/readyz").status_code == 200
    log = (stack.dir / "dnsapi.log").read_text()
    assert "logged in to Vault with AppRole" in log
    creds = stack.dir / "creds"
    login = hvac.Client(url=setup.vault.addr).auth.approle.login(
        role_id=(creds / "role-id").read_text().strip(), secret_id=(creds / "secret-id").read_text().strip())
    assert login["auth"]["policies"] == ["default", "dnsapi"]
    service = hvac.Client(url=setup.vault.addr, token=login["auth"]["client_token"])
    kv = service.secrets.kv.v2
    kv.create_or_update_secret("dnsapi/zones/probe", secret={"a": 1}, mount_point="secret")
    forbidden = [
        lambda: kv.read_secret_version("other/x", mount_point="secret", raise_on_deleted_version=False),
        lambda: kv.create_or_update_secret("other/x", secret={"a": 1}, mount_point="secret"),
        lambda: kv.create_or_update_secret("dnsapi2/x", secret={"a": 1}, mount_point="secret"),
        lambda: service.write_data("pki/issue/acme", data={"common_name": "x.dev.local"}),
        lambda: service.sys.list_policies(),
        lambda: service.sys.enable_secrets_engine("kv", path="mine"),
        lambda: service.write_data("pki/revoke", data={"serial_number": "01"}),
        lambda: service.read("pki/config/crl"),
        # the zone secrets' history: written, never destroyed (nor soft-deleted)
        lambda: kv.delete_metadata_and_all_versions("dnsapi/zones/probe", mount_point="secret"),
        lambda: kv.delete_latest_version_of_secret("dnsapi/zones/probe", mount_point="secret"),
        # pki-watch's work: its state (a revocation it was told it had reported goes unsaid)
        lambda: kv.read_secret_version("dnsapi/pki-watch/state", mount_point="secret",
                                       raise_on_deleted_version=False),
        lambda: kv.create_or_update_secret("dnsapi/pki-watch/state", secret={"a": 1}, mount_point="secret"),
        lambda: service.list("pki_root/certs"),
    ]
    for attempt in forbidden:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()


def test_pki_watch_runs_on_its_own_approle_which_cannot_write_records(setup):
    """The review's finding: pki-watch logged in with the service's role, which holds both
    policies, so a stolen pki-watch credential could write challenge records."""
    creds = setup.stack.dir / "creds"
    login = hvac.Client(url=setup.vault.addr).auth.approle.login(
        role_id=(creds / "pki-watch-role-id").read_text().strip(),
        secret_id=(creds / "pki-watch-secret-id").read_text().strip())
    assert login["auth"]["policies"] == ["default", "dnsapi-pki-watch"]
    watch = hvac.Client(url=setup.vault.addr, token=login["auth"]["client_token"])
    kv = watch.secrets.kv.v2
    forbidden = [
        lambda: kv.create_or_update_secret("dnsapi/zones/dev.local", secret={"a": 1}, mount_point="secret"),
        lambda: kv.read_secret_version("dnsapi/zones/dev.local", mount_point="secret",
                                       raise_on_deleted_version=False),
        lambda: kv.create_or_update_secret("dnsapi/acme-dns/x", secret={"a": 1}, mount_point="secret"),
        lambda: kv.delete_metadata_and_all_versions("dnsapi/pki-watch/state", mount_point="secret"),
        lambda: watch.write_data("pki/issue/acme", data={"common_name": "x.dev.local"}),
        lambda: watch.write_data("pki/revoke", data={"serial_number": "01"}),
    ]
    for attempt in forbidden:
        with pytest.raises(hvac.exceptions.Forbidden):
            attempt()
    # What it needs: listing the certificates (here the intermediate signed by the root), and
    # its state, which `dnsapi pki-watch --once` saves logged in with that role.
    assert watch.list("pki_root/certs/revoked") is None  # nothing revoked: an empty listing
    assert len(watch.list("pki_root/certs")["data"]["keys"]) == 2
    result = subprocess.run([sys.executable, "-m", "dnsapi", "pki-watch", "-c", str(setup.stack.config_path),
                             "--once"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "logged in to Vault with AppRole" in result.stderr
    state = kv.read_secret_version("dnsapi/pki-watch/state", mount_point="secret",
                                   raise_on_deleted_version=False)
    assert state["data"]["metadata"]["version"] >= 1


def test_acme_issues_only_for_names_in_the_zones(setup, tmp_path):
    """The review's finding: `lego --http -d localhost` got a certificate from the directory
    vault-init sets up. The role refuses localhost and IP SANs, and ACME issues only under it."""
    client = setup.vault.client
    role = client.read("pki/roles/acme")["data"]
    assert (role["allow_localhost"], role["allow_ip_sans"], role["allow_any_name"]) == (False, False, False)
    acme = client.read("pki/config/acme")["data"]
    assert (acme["allowed_roles"], acme["default_directory_policy"], acme["allowed_issuers"]) == (
        ["acme"], "role:acme", ["default"])
    for request in ({"common_name": "localhost"}, {"common_name": NAME, "ip_sans": "127.0.0.1"}):
        with pytest.raises(hvac.exceptions.InvalidRequest, match="not allowed"):
            client.write_data("pki/issue/acme", data={**request, "key_type": "ec", "key_bits": 256})

    lego = subprocess.run(["lego", "--server", f"{setup.vault.addr}/v1/pki/acme/directory",
                           "--accept-tos", "--email", "admin@dev.local", "--path", str(tmp_path / "lego"),
                           "--http", "--http.port", f"127.0.0.1:{free_port()}", "-d", "localhost", "run"],
                          capture_output=True, text=True, timeout=120, check=False)
    output = lego.stdout + lego.stderr
    assert lego.returncode != 0
    assert "rejectedIdentifier" in output, output  # refused at the order, before any challenge
    assert "will not issue certificate for name localhost" in output, output

    # Another role on the mount (here one that allows any name) is not reachable through ACME.
    client.write_data("pki/roles/anything", data={"allow_any_name": True})
    try:
        directory = requests.get(f"{setup.vault.addr}/v1/pki/roles/anything/acme/directory", timeout=10)
        assert directory.status_code != 200 and "not allowed by ACME policy" in directory.text
    finally:
        client.delete("pki/roles/anything")


def nginx_conf(directory: Path, port: int) -> Path:
    for sub in ("logs", "tmp"):
        (directory / sub).mkdir(exist_ok=True)
    conf = directory / "nginx.conf"
    conf.write_text(f"""user root;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/logs/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {directory}/tmp;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name {NAME};
        ssl_certificate {directory}/fullchain.pem;
        ssl_certificate_key {directory}/key.pem;
        location / {{ return 200 "hello from {NAME}\\n"; }}
    }}
}}
""")
    return conf


def served_certificate(port: int, root: Path) -> dict:
    """Connect trusting only the exported root and checking the name; the peer certificate."""
    context = ssl.create_default_context(cafile=str(root))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=NAME) as tls:
        tls.sendall(f"GET / HTTP/1.0\r\nHost: {NAME}\r\n\r\n".encode())
        assert b"hello from web.dev.local" in tls.recv(4096)
        return tls.getpeercert()


def test_acme_certificate_served_by_nginx_and_renewed(setup, tmp_path):
    stack, root = setup.stack, setup.stack.dir / "root-ca.pem"
    directory_url = f"{setup.vault.addr}/v1/pki/acme/directory"
    env = {**os.environ, "HTTPREQ_ENDPOINT": stack.url, "HTTPREQ_USERNAME": "lego",
           "HTTPREQ_PASSWORD": stack.token}
    lego = ["lego", "--server", directory_url, "--accept-tos", "--email", "admin@dev.local",
            "--path", str(tmp_path / "lego"), "--key-type", "ec256", "--dns", "httpreq",
            "--dns.disable-cp", "--dns.resolvers", f"127.0.0.1:{stack.dns_port}", "-d", NAME,
            "-d", f"*.{NAME}"]
    issued = subprocess.run([*lego, "run"], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert issued.returncode == 0, issued.stderr[-3000:]
    cert_dir = tmp_path / "lego" / "certificates"
    chain = (cert_dir / f"{NAME}.crt").read_text()
    assert chain.count("BEGIN CERTIFICATE") == 2  # leaf + intermediate
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted",
                             str(cert_dir / f"{NAME}.crt"), str(cert_dir / f"{NAME}.crt")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr

    site = tmp_path / "nginx"
    site.mkdir()
    port = free_port()
    conf = nginx_conf(site, port)

    def install() -> None:
        (site / "fullchain.pem").write_text((cert_dir / f"{NAME}.crt").read_text())
        (site / "key.pem").write_text((cert_dir / f"{NAME}.key").read_text())

    install()
    nginx = ["nginx", "-c", str(conf), "-p", str(site), "-e", str(site / "logs" / "error.log")]
    subprocess.run(nginx, check=True, capture_output=True, timeout=30)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                first = served_certificate(port, root)
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not come up"
                time.sleep(0.1)
        assert ("DNS", f"*.{NAME}") in first["subjectAltName"]

        renewed = subprocess.run([*lego, "renew", "--days", "1000", "--no-random-sleep"], env=env,
                                 capture_output=True, text=True, timeout=300, check=False)
        assert renewed.returncode == 0, renewed.stderr[-3000:]
        install()
        subprocess.run([*nginx, "-s", "reload"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while (second := served_certificate(port, root))["serialNumber"] == first["serialNumber"]:
            assert time.monotonic() < deadline, "nginx still serves the old certificate"
            time.sleep(0.1)
        assert ("DNS", NAME) in second["subjectAltName"]
    finally:
        subprocess.run([*nginx, "-s", "quit"], capture_output=True, timeout=30, check=False)
    assert not any(f == f"_acme-challenge.{NAME}" for f, _ in stack.vault_records())


def test_a_vault_not_ready_or_a_missing_token_file_is_said_in_one_line(tmp_path):
    """An uninitialised OpenBao (a real `bao server`, in-memory storage, never initialised)
    answers sys/health with 501, which hvac hands back as a bare response: vault-init and
    `dnsapi check` say what it is and what to do (check called it "sealed"), as vault-init does
    for a token file it cannot read, and none is a traceback."""
    from dnsapi.devstack import Process, http_status, openbao_binary, wait_for

    port = free_port()
    (tmp_path / "openbao.hcl").write_text(
        f'storage "inmem" {{}}\nlistener "tcp" {{\n  address = "127.0.0.1:{port}"\n'
        '  tls_disable = true\n}\ndisable_mlock = true\n')
    server = Process.start("openbao", [openbao_binary(), "server", f"-config={tmp_path / 'openbao.hcl'}"],
                           tmp_path / "openbao.log")
    try:
        wait_for(lambda: http_status(f"http://127.0.0.1:{port}/v1/sys/health") == 501, 30, "OpenBao",
                 server)
        config = tmp_path / "dnsapi.yaml"
        config.write_text(yaml.safe_dump({
            "vault": {"addr": f"http://127.0.0.1:{port}", "token": "unused"},
            "zones": [{"name": "dev.local", "file": "dev.local.zone"}], "open_on_loopback": True}))
        result = vault_init(config, "some-admin-token")
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"dnsapi vault-init: Vault at http://127.0.0.1:{port} is not initialised (bao operator init)")
        check = subprocess.run([sys.executable, "-m", "dnsapi", "check", "-c", str(config)],
                               capture_output=True, text=True, timeout=60, check=False)
        assert check.returncode != 0
        assert f"Vault at http://127.0.0.1:{port} is unsealed and active: it is not initialised" \
            in check.stdout, check.stdout
        gone = vault_init(config, "some-admin-token", "--root-only")
        assert gone.returncode != 0 and "set vault_init.pki.intermediate: false" in gone.stderr
        missing = subprocess.run([sys.executable, "-m", "dnsapi", "vault-init", "-c", str(config),
                                  "--token-file", str(tmp_path / "nope")], capture_output=True,
                                 text=True, timeout=60, check=False)
        assert missing.returncode != 0 and "Traceback" not in missing.stderr
        assert f"cannot read {tmp_path / 'nope'}: No such file or directory" in missing.stderr
    finally:
        server.stop()
