"""The acme-dns front door against the real things: OpenBao ACME validating through CoreDNS, a
current lego (pylego: lego v4.34 with nrdcg/goacmedns) issuing apex + wildcard, in both CNAME
layouts (the accounts' zone inside the delegating zone's file, and a zone of its own served by
the same CoreDNS); `dnsapi acme-dns register|ls|rm`; the old cpu/goacmedns, cert-manager and
acme.sh requests replayed byte for byte; and hostile requests, each refused as acme-dns refuses
it with nothing written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac.exceptions
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dnsapi.devstack import start_coredns

from .helpers import FIGURES, ZONE, Stack, free_port, openbao_server, start_stack, wait_until
from .test_acme_e2e import setup_acme_pki

ROOT = Path(__file__).resolve().parent.parent
SEPARATE_ZONE = "acmedns.test"
LAYOUTS = {"same-file": "acme.dev.local", "separate-zone": SEPARATE_ZONE}

# lego v4.34 as a library: LEGO_CA_CERTIFICATES must be in the environment before the import,
# so it runs in a child process.
PYLEGO = """
import json, sys
import pylego
args = json.load(sys.stdin)
result = pylego.run_lego_command(email="admin@dev.local", server=args["server"],
                                 csr=args["csr"].encode(), env=args["env"], plugin="acme-dns",
                                 dns_nameservers=args["nameservers"], dns_propagation_wait=1)
print(json.dumps({"certificate": result.certificate}))
"""


@dataclass
class AcmeDnsEnv:
    stack: Stack
    layout: str
    zone: str  # the accounts' zone
    directory: str
    root_pem: Path
    ca: Path  # OpenBao's TLS CA (the ACME directory is HTTPS)

    @property
    def url(self) -> str:
        return self.stack.url

    def dnsapi(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dnsapi", *args, "-c", str(self.stack.config_path)],
                              capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    def register_for(self, name: str) -> dict[str, Any]:
        result = self.dnsapi("acme-dns", "register", "--for", name)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)[name]

    def zone_text(self) -> str:
        return self.stack.zone_path.read_text()

    def secrets_state(self) -> tuple[list[str], dict[str, Any]]:
        """What Vault holds under the stack's prefix for accounts and zones."""
        client = self.stack.vault.client
        try:
            accounts = client.secrets.kv.v2.list_secrets(
                path=f"{self.stack.prefix}/acme-dns/accounts", mount_point="secret")["data"]["keys"]
        except hvac.exceptions.InvalidPath:  # no account yet
            accounts = []
        zones = {zone: self.stack.vault_secret(f"zones/{zone}") for zone in (ZONE, SEPARATE_ZONE)}
        return sorted(accounts), zones


def _layout(zone: str, directory: Path):
    def edit(config: dict[str, Any]) -> None:
        config["audit"] = {"file": "audit.jsonl"}
        config["refusals"] = {"burst": 60}  # the hostile test sends a few dozen refusals at once
        config["acme_dns"] = {"zone": zone, "register": {"allow_from": ["127.0.0.1/32"]}}
        if zone == SEPARATE_ZONE:
            config["zones"].append({"name": SEPARATE_ZONE, "file": f"db.{SEPARATE_ZONE}"})
    if zone == SEPARATE_ZONE:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"db.{SEPARATE_ZONE}").write_text(
            f"$TTL 300\n@ IN SOA ns1.{SEPARATE_ZONE}. hostmaster.{SEPARATE_ZONE}. 1 3600 600 86400 60\n"
            f"  IN NS ns1.{SEPARATE_ZONE}.\nns1 IN A 127.0.0.1\n")
    return edit


@pytest.fixture(scope="module", params=list(LAYOUTS))
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeDnsEnv]:
    layout = request.param
    zone = LAYOUTS[layout]
    base = tmp_path_factory.mktemp(f"acmedns-{layout}")
    with openbao_server(base, tls=True) as vault:
        stack = start_stack(base / "stack", vault, prefix=f"acmedns-{layout}",
                            edit=_layout(zone, base / "stack"), start=False)
        try:
            if zone == SEPARATE_ZONE:  # CoreDNS serves the second zone too, from its own file
                assert stack.coredns is not None
                stack.coredns.stop()
                corefile = stack.dir / "Corefile"
                corefile.write_text(corefile.read_text() + f"\n{SEPARATE_ZONE} {{\n    bind 127.0.0.1\n"
                                    f"    file db.{SEPARATE_ZONE} {{\n        reload 250ms\n    }}\n}}\n")
                stack.coredns = start_coredns(stack.dir, stack.dns_port, [ZONE, SEPARATE_ZONE],
                                              stack.dir / "coredns.log")
            stack.start_dnsapi()
            root_pem = base / "root.pem"
            root_pem.write_text(setup_acme_pki(vault, stack.dns_port))
            assert vault.ca is not None
            yield AcmeDnsEnv(stack, layout, zone, f"{vault.addr}/v1/pki/roles/acme/acme/directory",
                             root_pem, vault.ca)
        finally:
            stack.stop()


def csr_for(name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.DNSName(f"*.{name}")]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def pylego(env: AcmeDnsEnv, name: str, storage: Path) -> subprocess.CompletedProcess[str]:
    args = {"server": env.directory, "csr": csr_for(name),
            "nameservers": [f"127.0.0.1:{env.stack.dns_port}"],
            "env": {"ACME_DNS_API_BASE": env.url, "ACME_DNS_STORAGE_PATH": str(storage)}}
    return subprocess.run([sys.executable, "-c", PYLEGO], input=json.dumps(args), capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "LEGO_CA_CERTIFICATES": str(env.ca)})


def check_certificate(env: AcmeDnsEnv, pem: str, name: str, tmp_path: Path) -> None:
    leaf = pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    (tmp_path / "leaf.pem").write_text(leaf)
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(env.root_pem), str(tmp_path / "leaf.pem")],
                            capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    sans = x509.load_pem_x509_certificate(leaf.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert set(sans) == {name, f"*.{name}"}


def test_lego_issues_apex_and_wildcard_through_the_cname(env, tmp_path):
    """`dnsapi acme-dns register --for NAME` writes the CNAME and prints lego's storage file;
    lego v4.34's acme-dns provider then issues NAME + *.NAME: OpenBao's DNS-01 check follows the
    CNAME through CoreDNS to the account's name (in this layout)."""
    name = f"lego-{env.layout}.{ZONE}"
    account = env.register_for(name)
    assert account["fulldomain"] == f"{account['subdomain']}.{env.zone}"
    assert f"_acme-challenge.{name}. 60 IN CNAME {account['fulldomain']}." in env.zone_text()
    storage = tmp_path / "acme-dns.json"
    storage.write_text(json.dumps({name: {**account, "server_url": env.url}}))
    result = pylego(env, name, storage)
    assert result.returncode == 0, result.stderr[-3000:]
    check_certificate(env, json.loads(result.stdout)["certificate"], name, tmp_path)
    FIGURES[f"acme-dns ({env.layout}): OpenBao followed the CNAME"] = "yes"
    # both challenge values are kept (acme-dns keeps two, per account, at most)
    held = {value for fqdn, value in env.stack.vault_records(env.zone if env.zone == SEPARATE_ZONE
                                                            else ZONE) if fqdn == account["fulldomain"]}
    assert len(held) == 2


def test_register_ls_rm(env):
    """rm takes the account, its CNAME and its TXT values away; ls lists without passwords."""
    name = f"rm-{env.layout}.{ZONE}"
    account = env.register_for(name)
    listed = env.dnsapi("acme-dns", "ls")
    assert account["username"] in listed.stdout and account["password"] not in listed.stdout
    headers = {"X-Api-User": account["username"], "X-Api-Key": account["password"]}
    txt = "A" * 43
    answer = requests.post(f"{env.url}/update", headers=headers,
                           json={"subdomain": account["subdomain"], "txt": txt}, timeout=30)
    assert (answer.status_code, answer.text) == (200, f'{{"txt": "{txt}"}}')
    env.stack.wait_served(account["fulldomain"], {txt})
    removed = env.dnsapi("acme-dns", "rm", account["username"])
    assert removed.returncode == 0, removed.stderr
    assert account["fulldomain"] not in env.zone_text()
    assert account["username"] not in env.dnsapi("acme-dns", "ls").stdout
    again = requests.post(f"{env.url}/update", headers=headers,
                          json={"subdomain": account["subdomain"], "txt": txt}, timeout=30)
    assert (again.status_code, again.text) == (401, '{"error": "forbidden"}')


def test_a_name_holding_txt_values_gets_no_cname(env):
    """A CNAME allows no other record at its name: register --for a name that holds a TXT value
    is refused, and no account is left behind."""
    name = f"busy-{env.layout}.{ZONE}"
    assert env.stack.add(f"_acme-challenge.{name}", "busy").status_code == 201
    before = env.secrets_state()[0]
    result = env.dnsapi("acme-dns", "register", "--for", name)
    assert result.returncode != 0 and "CNAME" in result.stderr
    assert env.secrets_state()[0] == before


def _register(env: AcmeDnsEnv, body: Any = None, **kwargs: Any) -> requests.Response:
    return requests.post(f"{env.url}/register", timeout=30, **({"json": body} if body is not None
                                                                else {}), **kwargs)


def test_old_goacmedns_and_cert_manager_wire_shapes(env):
    """cpu/goacmedns (older lego and cert-manager): `{"AllowFrom": [...]}` to /register, exactly
    201; `{"SubDomain", "Txt"}` to /update with X-Api-User / X-Api-Key, exactly 200."""
    reg = requests.post(f"{env.url}/register", data=json.dumps({"AllowFrom": ["127.0.0.0/8"]}),
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert reg.status_code == 201
    account = reg.json()
    assert set(account) == {"username", "password", "fulldomain", "subdomain", "allowfrom"}
    assert account["allowfrom"] == ["127.0.0.0/8"] and len(account["password"]) == 40
    txt = "b" * 43
    upd = requests.post(f"{env.url}/update", data=json.dumps({"SubDomain": account["subdomain"], "Txt": txt}),
                        headers={"X-Api-User": account["username"], "X-Api-Key": account["password"],
                                 "Content-Type": "application/json"}, timeout=30)
    assert (upd.status_code, upd.json()) == (200, {"txt": txt})
    env.stack.wait_served(account["fulldomain"], {txt})


HOSTILE_TXT = ["A" * 42, "A" * 44, "A" * 42 + "=", "A" * 42 + "+", "A" * 42 + "/", "A" * 42 + ".",
               "A" * 42 + "\u00e9", 'A' * 42 + '"']


def test_hostile_requests_are_refused_and_change_nothing(env):
    good = _register(env).json()
    other = _register(env).json()
    fenced = _register(env, {"allowfrom": ["192.0.2.0/24"]}).json()
    text, state = env.zone_text(), env.secrets_state()

    def update(account: dict[str, str], body: Any, **headers: str) -> requests.Response:
        sent = {"X-Api-User": account["username"], "X-Api-Key": account["password"], **headers}
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(f"{env.url}/update", data=data, headers=sent, timeout=30)

    valid_txt = "c" * 43
    cases = [
        (update(good, {"subdomain": good["subdomain"], "txt": valid_txt}, **{"X-Api-Key": "x" * 40}),
         401, "forbidden"),
        (update({**good, "username": "not-a-uuid"}, {"subdomain": good["subdomain"], "txt": valid_txt}),
         401, "forbidden"),
        (update(good, {"subdomain": other["subdomain"], "txt": valid_txt}), 401, "forbidden"),
        (update(fenced, {"subdomain": fenced["subdomain"], "txt": valid_txt}), 401, "forbidden"),
        (update(good, b'{"subdomain": '), 401, "forbidden"),
        (update(good, b"[1, 2]"), 401, "forbidden"),
        (update(good, b'{"subdomain": "' + b"x" * 20000 + b'"}'), 401, "forbidden"),
        *[(update(good, {"subdomain": good["subdomain"], "txt": txt}), 400, "bad_txt")
          for txt in HOSTILE_TXT],
        (update(good, {"subdomain": good["subdomain"], "txt": 43}), 400, "bad_txt"),
        (_register(env, data=b'{"allowfrom": '), 400, "malformed_json_payload"),
        (_register(env, data=b'{"allowfrom": "10.0.0.0/8"}'), 400, "malformed_json_payload"),
        (_register(env, data=b'{"allowfrom": []} trailing'), 400, "malformed_json_payload"),
        (_register(env, data=b"x" * 20000), 400, "malformed_json_payload"),
        (_register(env, {"allowfrom": ["10.0.0.1"]}), 400, "invalid_allowfrom_cidr"),
        (_register(env, {"allowfrom": ["10.0.0.0/33"]}), 400, "invalid_allowfrom_cidr"),
    ]
    for response, status, error in cases:
        assert (response.status_code, response.text) == (status, f'{{"error": "{error}"}}'), \
            response.request.body[:200] if response.request.body else response.request.url
        assert response.headers["Content-Type"] == "application/json"
    assert env.zone_text() == text
    after = env.secrets_state()
    assert after == state
    # the refusals are audited like every other front door's
    audit = [json.loads(line) for line in (env.stack.dir / "audit.jsonl").read_text().splitlines()]
    assert sum(1 for e in audit if e.get("action") == "acme_dns_update" and e.get("status") == 401) >= 7
    # and limited like the HTTP API's: a source that keeps failing gets 429 for a while
    statuses = [update(good, {"subdomain": other["subdomain"]}).status_code for _ in range(80)]
    assert 429 in statuses
    wait_until(lambda: requests.get(f"{env.url}/health", timeout=5).status_code == 200, 30,
               "the refusal limit to let this address in again")


def test_registration_is_closed_by_default(env, tmp_path):
    """Without register.allow_from or register.tokens nobody may register (401 forbidden);
    a register token whose allow covers the zone may."""
    stack = env.stack
    token = "closed-test-token-" + "x" * 20
    from dnsapi.auth import hash_token

    stack.edit_config(lambda c: c["acme_dns"].update(register={"tokens": [
        {"name": "reg", "sha256": hash_token(token), "allow": [f"*.{env.zone}"]}]}))
    stack.stop_dnsapi()
    stack.start_dnsapi()
    try:
        before = env.secrets_state()
        closed = _register(env)
        assert (closed.status_code, closed.text) == (401, '{"error": "forbidden"}')
        assert env.secrets_state() == before
        opened = _register(env, headers={"Authorization": f"Bearer {token}"})
        assert opened.status_code == 201
    finally:
        stack.edit_config(lambda c: c["acme_dns"].update(register={"allow_from": ["127.0.0.1/32"]}))
        stack.stop_dnsapi()
        stack.start_dnsapi()
    wait_until(lambda: requests.get(f"{env.url}/health", timeout=5).status_code == 200, 10, "health")


def test_own_listener(make_stack):
    """With acme_dns.listen the routes are on their own port (and not on the API's)."""
    port = free_port()
    stack = make_stack(edit=lambda c: c.update(acme_dns={"zone": "acme.dev.local",
                                                         "listen": f"127.0.0.1:{port}"}))
    assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    assert requests.get(f"{stack.url}/health", timeout=5).status_code == 404
    closed = requests.post(f"http://127.0.0.1:{port}/register", timeout=5)
    assert (closed.status_code, closed.text) == (401, '{"error": "forbidden"}')


def test_acmesh_and_cert_manager_requests_replayed(env):
    """acme.sh's dns_acmedns (dnsapi/dns_acmedns.sh): an empty POST /register (registration
    open to its address), the answer read with sed, then `_post` of
    `{"subdomain":"S", "txt": "V"}` as curl's default form type with X-Api-User / X-Api-Key
    (_H1, _H2), success when the answer holds `"V"`. cert-manager's acmeDNS solver (goacmedns):
    its Secret's acmedns.json `{"<domain>": {username, password, fulldomain, subdomain,
    allowfrom}}` as `register --for` prints it, then a JSON /update, exactly 200."""
    register = requests.post(f"{env.url}/register", data=b"", timeout=30,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert register.status_code == 201
    fields = dict(re.findall(r'"(username|password|subdomain|fulldomain)":[ ]*"([^"]*)"', register.text))
    txt = "d" * 43
    body = f'{{"subdomain":"{fields["subdomain"]}", "txt": "{txt}"}}'
    acmesh = requests.post(f"{env.url}/update", data=body.encode(), timeout=30,
                           headers={"X-Api-User": fields["username"], "X-Api-Key": fields["password"],
                                    "Content-Type": "application/x-www-form-urlencoded"})
    assert f'"{txt}"' in acmesh.text and acmesh.status_code == 200
    name = f"cert-manager-{env.layout}.{ZONE}"
    secret = {name: env.register_for(name)}  # acmedns.json in the Secret
    account = secret[name]
    assert set(account) == {"username", "password", "fulldomain", "subdomain", "allowfrom"}
    value = "e" * 43
    solver = requests.post(f"{env.url}/update", json={"subdomain": account["subdomain"], "txt": value},
                           headers={"X-Api-User": account["username"], "X-Api-Key": account["password"]},
                           timeout=30)
    assert solver.status_code == 200
    env.stack.wait_served(account["fulldomain"], {value})
    env.stack.wait_served(f"_acme-challenge.{name}", {value})  # through the CNAME
