"""Fixtures that run the real things on loopback: an OpenBao dev server per session, and per test
a CoreDNS and a `dnsapi serve` process built from the shipped example files (coredns/)."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import hvac
import pytest
import requests
import yaml

from dnsapi.auth import hash_token, new_token
from dnsapi.devstack import Process, free_port, prepare, start_coredns, start_dnsapi, start_openbao
from dnsapi.store import DELTA_FORMAT, apply_delta, decode_records

ZONE = "dev.local"
FIGURES: dict[str, str] = {}  # measurements tests report; printed in the summary, never asserted


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("measured")
        for name, figure in FIGURES.items():
            terminalreporter.write_line(f"{name}: {figure}")


@dataclass
class Vault:
    addr: str
    root_token: str
    process: Process
    ca: Path | None = None  # set when OpenBao serves HTTPS
    client: hvac.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = hvac.Client(url=self.addr, token=self.root_token,
                                  verify=str(self.ca) if self.ca else True)


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    port = free_port()
    token = new_token()
    logs = tmp_path_factory.mktemp("openbao")
    proc = start_openbao(port, token, logs / "openbao.log")
    yield Vault(f"http://127.0.0.1:{port}", token, proc)
    proc.stop()


@dataclass
class Stack:
    """One CoreDNS + one dnsapi, sharing the session's OpenBao under a prefix of their own."""

    dir: Path
    vault: Vault
    prefix: str
    dns_port: int
    api_port: int
    token: str
    env: dict[str, str]
    coredns: Process | None = None
    dnsapi: Process | None = None
    cafile: Path | None = None  # set when dnsapi serves HTTPS

    @property
    def url(self) -> str:
        return f"{'https' if self.cafile else 'http'}://127.0.0.1:{self.api_port}"

    @property
    def zone_path(self) -> Path:
        return self.dir / "db.dev.local"

    @property
    def config_path(self) -> Path:
        return self.dir / "dnsapi.yaml"

    def start_dnsapi(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.dnsapi = start_dnsapi(self.config_path, self.api_port, self.dir / "dnsapi.log",
                                   {**self.env, **(env or {})}, self.cafile, args)

    def stop_dnsapi(self) -> None:
        assert self.dnsapi is not None
        self.dnsapi.stop()

    def call(self, method: str, path: str, token: str | None | bool = True, **kwargs: Any
             ) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token is True:
            token = self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=30,
                                verify=str(self.cafile) if self.cafile else True, **kwargs)

    def add(self, fqdn: str, value: str, **extra: Any) -> requests.Response:
        return self.call("POST", "/v1/records", json={"fqdn": fqdn, "value": value, **extra})

    def remove(self, fqdn: str, value: str) -> requests.Response:
        return self.call("DELETE", "/v1/records", json={"fqdn": fqdn, "value": value})

    def query(self, fqdn: str) -> tuple[str, set[str]]:
        """Ask CoreDNS (TCP, so large answers are whole): (rcode name, TXT values)."""
        response = dns.query.tcp(dns.message.make_query(fqdn + ".", dns.rdatatype.TXT),
                                 "127.0.0.1", port=self.dns_port, timeout=2)
        values = {b"".join(rd.strings).decode() for rrset in response.answer
                  if rrset.rdtype == dns.rdatatype.TXT for rd in rrset}
        return dns.rcode.to_text(response.rcode()), values

    def wait_served(self, fqdn: str, values: set[str], timeout: float = 5) -> float:
        """Poll CoreDNS until `fqdn` answers exactly `values` (empty set: NXDOMAIN); returns the
        seconds it took. Fails the test with what was served instead."""
        start = time.monotonic()
        while True:
            rcode, served = self.query(fqdn)
            if served == values and (values or rcode == "NXDOMAIN"):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                pytest.fail(f"CoreDNS served {rcode} {served} for {fqdn}, expected {values or 'NXDOMAIN'}")
            time.sleep(0.02)

    def vault_secret(self, path: str) -> dict:
        """A secret's latest data under the stack's prefix ({} when there is none)."""
        try:
            secret = self.vault.client.secrets.kv.v2.read_secret_version(
                path=f"{self.prefix}/{path}", mount_point="secret", raise_on_deleted_version=False)
        except hvac.exceptions.InvalidPath:
            return {}
        return secret["data"]["data"] or {}

    def vault_records(self, zone: str = ZONE) -> set[tuple[str, str]]:
        """The zone's records as Vault holds them, read straight from the secrets' layout."""
        data = self.vault_secret(f"zones/{zone}")
        if data.get("format") != DELTA_FORMAT:
            return set(decode_records(data))
        snapshot = self.vault_secret(f"snapshots/{zone}/{data['base']}")
        assert snapshot, f"zone {zone}: snapshot {data['base']} is missing"
        return set(apply_delta(decode_records(snapshot), data)[0])


@pytest.fixture
def make_stack(openbao: Vault, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build and start a stack. `edit(config_dict)` may change the generated dnsapi.yaml;
    `prefix` lets two stacks share one set of records; `start=False` leaves dnsapi stopped."""
    stacks: list[Stack] = []

    def make(edit: Callable[[dict[str, Any]], None] | None = None, prefix: str | None = None,
             env: dict[str, str] | None = None, start: bool = True, tls: TlsFiles | None = None
             ) -> Stack:
        directory = tmp_path / f"stack{len(stacks)}"
        prefix = prefix or f"test-{uuid.uuid4().hex[:12]}"
        dns_port, api_port = free_port(), free_port()
        token = prepare(directory, vault_addr=openbao.addr, vault_token=openbao.root_token,
                        dns_port=dns_port, api_port=api_port, prefix=prefix)
        config = yaml.safe_load((directory / "dnsapi.yaml").read_text())
        if tls is not None:
            config["tls"] = {"cert": str(tls.cert), "key": str(tls.key)}
        if edit is not None:
            edit(config)
        (directory / "dnsapi.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        stack = Stack(directory, openbao, prefix, dns_port, api_port, token, env or {},
                      cafile=tls.ca if tls else None)
        stacks.append(stack)
        stack.coredns = start_coredns(directory, dns_port, [ZONE], directory / "coredns.log")
        if start:
            stack.start_dnsapi()
        return stack

    yield make
    for stack in stacks:
        for proc in (stack.dnsapi, stack.coredns):
            if proc is not None:
                proc.stop()


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl)."""
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=dnsapi test CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return TlsFiles(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


def add_token(config: dict[str, Any], name: str, allow: list[str]) -> str:
    """Add a second API token to a config dict; returns the token."""
    token = new_token()
    config["tokens"].append({"name": name, "sha256": hash_token(token), "allow": allow})
    return token
