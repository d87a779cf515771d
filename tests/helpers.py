"""Test helpers: the one stack factory for the end-to-end tests (OpenBao, CoreDNS and `dnsapi
serve` as real processes on loopback), pki-watch helpers, condition waits, zone text helpers, and
the in-memory store double the in-process tests run RecordService against.

conftest.py turns some of these into fixtures; the benchmarks (bench/) use `local_stack`. Nothing
here imports pytest, so the benchmarks run without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import hvac
import hvac.exceptions
import requests
import yaml

from dnsapi import config as config_module
from dnsapi.audit import AuditLog
from dnsapi.auth import hash_token, new_token
from dnsapi.check import parse_corefile
from dnsapi.config import ENV_APPROLE_SECRET_ID, ENV_VAULT_TOKEN, Config
from dnsapi.devstack import (
    Process,
    StackError,
    http_status,
    prepare,
    start_coredns,
    start_openbao,
    wait_for,
)
from dnsapi.metrics import Metrics
from dnsapi.records import Key, Record
from dnsapi.service import RecordService
from dnsapi.store import DELTA_FORMAT, ZoneState, apply_delta, decode_records
from dnsapi.vault import CasConflict
from dnsapi.zonefile import serial_span, soa_serial

ROOT = Path(__file__).resolve().parent.parent  # the repository
ZONE = "dev.local"
FIGURES: dict[str, str] = {}  # measurements tests report; printed in the summary, never asserted

ConfigEdit = Callable[[dict[str, Any]], None]


# -- waiting ------------------------------------------------------------------------------------

def wait_until(check: Callable[[], object], timeout: float = 10, what: str = "the condition",
               interval: float = 0.05) -> None:
    """Poll `check` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def until(check: Callable[[], object], what: str = "the condition", turns: int = 1000) -> None:
    """Let the event loop run until `check` is true (no clock involved: at most `turns` turns).
    Only for what the event loop alone brings about; see `until_done` for a worker thread's."""
    for _ in range(turns):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what} did not happen within {turns} turns of the event loop")


async def until_done(check: Callable[[], object], what: str = "the condition", timeout: float = 10
                     ) -> None:
    """Wait for `check` to hold when a worker thread brings it about (its progress is not
    counted in event loop turns); fail after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"{what} did not happen within {timeout:g} s") from None


def metric_total(text: str, name: str) -> float:
    """The sum of every series of metric `name` in a /metrics page."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.split(" ", 1)[0].split("{", 1)[0] == name)


# -- ports --------------------------------------------------------------------------------------

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP (DNS needs both), whose next port is free
    too: an OpenBao dev server also listens on port + 1 (its cluster port). Ports handed out
    before, and their next ports, are never handed out again by this process."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            if {port, port + 1} & _HANDED_OUT or port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                    socket.socket(socket.AF_INET, socket.SOCK_STREAM) as neighbour:
                try:
                    udp.bind(("127.0.0.1", port))
                    neighbour.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                _HANDED_OUT.update((port, port + 1))
                return port
    raise StackError("no free port on 127.0.0.1")


# -- config and zone text -----------------------------------------------------------------------

def add_token(config: dict[str, Any], name: str, allow: list[str]) -> str:
    """Add an API token to a config dict; returns the token."""
    token = new_token()
    config["tokens"].append({"name": name, "sha256": hash_token(token), "allow": allow})
    return token


def edit_yaml(path: Path, edit: ConfigEdit) -> None:
    """Apply `edit` to the parsed YAML file at `path` and write it back."""
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def with_serial(text: str, serial: int) -> str:
    """Zone text with the digits of its SOA serial replaced by `serial`."""
    old = soa_serial(text)
    assert old is not None, "the zone text has no SOA serial"
    start, end = serial_span(text, old)
    return text[:start] + str(serial) + text[end:]


def replace_zone_file(path: Path, text: str) -> int:
    """Write `text` over the zone file at `path` with a serial one above the file's current one,
    so CoreDNS loads it whatever today's date; returns that serial."""
    current = soa_serial(path.read_text())
    assert current is not None, f"{path} has no SOA serial"
    serial = current + 1
    path.write_text(with_serial(text, serial))
    return serial


def lock_waiters(path: Path) -> int:
    """How many flock() calls are blocked on `path` now (from /proc/locks)."""
    inode = os.stat(path).st_ino
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if "-> FLOCK" in line and line.split()[6].endswith(f":{inode}"))


# -- in-process service -------------------------------------------------------------------------

@dataclass
class Tokens:
    """The API tokens of a test config, by name."""

    secrets: dict[str, str]

    def header(self, name: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[name]}"}


def service_config(directory: Path, tokens: dict[str, list[str]] | None = None,
                   **settings: Any) -> tuple[Config, Tokens]:
    """A Config for an in-process service: the shipped example zone copied into `directory`, no
    DNS servers, timers that never fire during a test, the audit trail in directory/audit.jsonl,
    and one token per entry of `tokens` (name -> allow; default: acme for *.dev.local).
    `settings` override top-level keys."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "coredns" / "db.dev.local", directory / "db.dev.local")
    allowed = tokens or {"acme": ["*.dev.local"]}
    secrets = {name: new_token() for name in allowed}
    raw = {
        "vault": {"addr": "http://127.0.0.1:1", "token": "unused"},
        "zones": [{"name": ZONE, "file": "db.dev.local"}],
        "dns_servers": [],
        "tokens": [{"name": name, "sha256": hash_token(secrets[name]), "allow": allow}
                   for name, allow in allowed.items()],
        "reconcile_interval": "1h", "watch_interval": "1h",
        "audit": {"file": "audit.jsonl"},
        **settings,
    }
    return config_module.from_dict(raw, base=directory, env={}), Tokens(secrets)


@contextlib.asynccontextmanager
async def running(config: Config, store: MemoryStore | None = None, audit: AuditLog | None = None
                  ) -> AsyncIterator[tuple[RecordService, MemoryStore]]:
    """The service started on `store`, once the reconcile it runs at start is done."""
    store = store or MemoryStore()
    service = RecordService(config, store.metrics, store=store, audit=audit)  # type: ignore[arg-type]
    await service.start()
    await service.reconcile()
    try:
        yield service, store
    finally:
        store.release_all()  # a test that failed while a call was held must fail, not hang
        await service.close()


class Gate:
    """Holds one store call until the test releases it; `entered` is set once the call waits."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._released = asyncio.Event()

    def release(self) -> None:
        self._released.set()

    async def enter(self) -> None:
        """What the held call does: say it is here, then wait for the release."""
        self.entered.set()
        await self._released.wait()


class MemoryStore:
    """An in-memory stand-in for dnsapi.store.VaultStore, with the calls RecordService makes.
    Each zone is a record set and a version written with check-and-set. Tests script it:
    `fail(op, exc)` makes the next `op` call raise, `hold(op)` stops the next one at a Gate,
    `before_write` runs inside the next write before its version check (another writer),
    `put` writes as another instance would, and `writes` lists every accepted write."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.zones: dict[str, ZoneState] = {}
        self.writes: list[tuple[str, dict[Key, Record]]] = []  # (zone, records) per accepted write
        self.attempts = 0  # write_zone calls, refused ones included
        self.access: str | None = None  # what zone_access answers (None: all is allowed)
        self.before_write: Callable[[str], None] | None = None
        self.accounts: dict[str, dict[str, Any]] = {}  # acme-dns accounts by username
        self._failures: dict[str, list[Exception]] = {}
        self._gates: dict[str, Gate] = {}
        self._held: list[Gate] = []  # every gate handed out, for release_all

    # what the test scripts

    def fail(self, operation: str, error: Exception) -> None:
        """The next call of `operation` raises `error`."""
        self._failures.setdefault(operation, []).append(error)

    def hold(self, operation: str) -> Gate:
        """The next call of `operation` waits at the returned gate."""
        gate = self._gates[operation] = Gate()
        self._held.append(gate)
        return gate

    def release_all(self) -> None:
        for gate in self._held:
            gate.release()

    def put(self, zone: str, *records: Record, replace: bool = False) -> None:
        """Another instance writes `records` into the zone (with `replace`: only these remain)."""
        current = self.zones.get(zone, ZoneState({}, 0))
        merged = {} if replace else dict(current.records)
        merged.update((r.key, r) for r in records)
        self.zones[zone] = ZoneState(merged, current.version + 1)

    def records(self, zone: str = ZONE) -> set[Key]:
        """The keys of the records the zone holds now."""
        return set(self.zones.get(zone, ZoneState({}, 0)).records)

    # what RecordService calls

    async def read_zone(self, zone: str, accept: Callable[[Record], bool] | None = None) -> ZoneState:
        """As VaultStore's: what `accept` refuses is left out, kept (by key) to be written back."""
        await self._enter("read_zone")
        state = self.zones.get(zone, ZoneState({}, 0))
        refused = {key for key, record in state.records.items() if accept is not None and not accept(record)}
        return ZoneState({k: r for k, r in state.records.items() if k not in refused}, state.version,
                         foreign={key: ("", "") for key in refused})

    async def write_zone(self, zone: str, records: dict[Key, Record], state: ZoneState,
                         touched: object, added: Iterable[Key] = ()) -> ZoneState:
        self.attempts += 1
        await self._enter("write_zone")
        if self.before_write is not None:
            other, self.before_write = self.before_write, None
            other(zone)
        if state.version != self.zones.get(zone, ZoneState({}, 0)).version:
            raise CasConflict()
        added = frozenset(added)  # as VaultStore's: an applied add replaces a kept record
        foreign = {key: kept for key, kept in state.foreign.items()
                   if key not in records and key not in added}
        kept = {key: self.zones[zone].records[key] for key in foreign}
        written = ZoneState({**kept, **records}, state.version + 1)
        self.zones[zone] = written
        self.writes.append((zone, dict(records)))
        return ZoneState(dict(records), written.version, foreign=foreign)

    async def current_version(self, zone: str) -> int:
        await self._enter("current_version")
        return self.zones.get(zone, ZoneState({}, 0)).version

    async def zone_access(self, zone: str) -> str | None:
        await self._enter("zone_access")
        return self.access

    async def sweep_snapshots(self, zone: str) -> int:
        await self._enter("sweep_snapshots")
        return 0

    async def close(self) -> None:
        pass

    # what the acme-dns account store calls

    async def read_account(self, username: str) -> dict[str, Any]:
        await self._enter("read_account")
        return dict(self.accounts.get(username, {}))

    async def create_account(self, username: str, data: dict[str, Any]) -> None:
        await self._enter("create_account")
        if username in self.accounts:
            raise CasConflict()
        self.accounts[username] = dict(data)

    async def list_accounts(self) -> list[str]:
        return sorted(self.accounts)

    async def delete_account(self, username: str) -> None:
        self.accounts.pop(username, None)

    async def _enter(self, operation: str) -> None:
        failures = self._failures.get(operation)
        if failures:
            raise failures.pop(0)
        gate = self._gates.pop(operation, None)
        if gate is not None:
            await gate.enter()


class FakeClock:
    """A clock (for RateLimiter and AuditLog) that moves only when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- real processes -----------------------------------------------------------------------------

@dataclass
class Vault:
    """An OpenBao dev server and a root client for it."""

    addr: str
    root_token: str
    process: Process
    ca: Path | None = None  # set when OpenBao serves HTTPS
    client: hvac.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = hvac.Client(url=self.addr, token=self.root_token,
                                  verify=str(self.ca) if self.ca else True)


@contextlib.contextmanager
def openbao_server(directory: Path, tls: bool = False, config: str | None = None) -> Iterator[Vault]:
    """An OpenBao dev server on a free port (HTTPS with `tls`), logging to directory/logs, stopped
    on exit. `config`: server config text added to the dev settings (e.g. an audit stanza)."""
    port, token = free_port(), new_token()
    tls_dir = directory / "vault-tls" if tls else None
    config_file = None
    if config is not None:
        directory.mkdir(parents=True, exist_ok=True)
        config_file = directory / "openbao-extra.hcl"
        config_file.write_text(config)
    process = start_openbao(port, token, directory / "logs" / "openbao.log", tls_dir=tls_dir,
                            config=config_file)
    try:
        yield Vault(f"{'https' if tls else 'http'}://127.0.0.1:{port}", token, process,
                    ca=tls_dir / "vault-ca.pem" if tls_dir else None)
    finally:
        process.stop()


@dataclass
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a certificate for 127.0.0.1 signed by it (openssl)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=dnsapi test CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")


# Vault credentials of the environment the tests run in never reach a stack's dnsapi.
_VAULT_ENV = (ENV_VAULT_TOKEN, ENV_APPROLE_SECRET_ID)


@dataclass
class Stack:
    """One CoreDNS + one `dnsapi serve` in a directory of their own, on one Vault under a prefix."""

    dir: Path
    vault: Vault
    prefix: str
    dns_port: int
    api_port: int
    token: str
    env: dict[str, str]  # extra environment for dnsapi
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

    def edit_config(self, edit: ConfigEdit) -> None:
        """Change dnsapi.yaml through its parsed form (takes effect at the next start or SIGHUP)."""
        edit_yaml(self.config_path, edit)

    def start_dnsapi(self, *args: str, env: dict[str, str] | None = None) -> None:
        """`dnsapi serve [args]`; returns once /healthz answers (raises StackError otherwise)."""
        environment = {k: v for k, v in os.environ.items() if k not in _VAULT_ENV}
        environment.update(self.env, **(env or {}))
        self.dnsapi = Process.start("dnsapi", [sys.executable, "-m", "dnsapi", "serve", "-c",
                                               str(self.config_path), *args],
                                    self.dir / "dnsapi.log", env=environment)
        wait_for(lambda: http_status(f"{self.url}/healthz", cafile=self.cafile) == 200, 30,
                 "dnsapi", self.dnsapi)

    def stop_dnsapi(self) -> None:
        assert self.dnsapi is not None
        self.dnsapi.stop()

    def stop(self) -> None:
        for process in (self.dnsapi, self.coredns):
            if process is not None:
                process.stop()

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

    def query(self, fqdn: str, port: int | None = None) -> tuple[str, set[str]]:
        """Ask CoreDNS (TCP, so large answers are whole; another server with `port`): (rcode
        name, TXT values)."""
        response = dns.query.tcp(dns.message.make_query(fqdn + ".", dns.rdatatype.TXT),
                                 "127.0.0.1", port=port or self.dns_port, timeout=2)
        values = {b"".join(rd.strings).decode() for rrset in response.answer
                  if rrset.rdtype == dns.rdatatype.TXT for rd in rrset}
        return dns.rcode.to_text(response.rcode()), values

    def wait_served(self, fqdn: str, values: set[str], timeout: float = 5) -> float:
        """Poll CoreDNS until `fqdn` answers exactly `values` (empty set: NXDOMAIN); returns the
        seconds it took. Fails with what was served instead."""
        start = time.monotonic()
        while True:
            rcode, served = self.query(fqdn)
            if served == values and (values or rcode == "NXDOMAIN"):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"CoreDNS served {rcode} {served} for {fqdn}, expected "
                                     f"{values or 'NXDOMAIN'}")
            time.sleep(0.02)

    def put_record_line(self, line: str, path: str = f"zones/{ZONE}") -> None:
        """Append `line` to a secret's record lines with check-and-set, as another node (a
        newer dnsapi, or one whose config differs) would write it."""
        kv = self.vault.client.secrets.kv.v2
        current = kv.read_secret_version(path=f"{self.prefix}/{path}", mount_point="secret",
                                         raise_on_deleted_version=False)["data"]
        data = current["data"]
        kv.create_or_update_secret(path=f"{self.prefix}/{path}", mount_point="secret",
                                   cas=current["metadata"]["version"],
                                   secret={**data, "records": f"{data['records']}\n{line}"})

    def vault_secret(self, path: str) -> dict[str, Any]:
        """A secret's latest data under the stack's prefix ({} when there is none)."""
        try:
            secret = self.vault.client.secrets.kv.v2.read_secret_version(
                path=f"{self.prefix}/{path}", mount_point="secret", raise_on_deleted_version=False)
        except hvac.exceptions.InvalidPath:
            return {}
        return secret["data"]["data"] or {}

    def vault_records(self, zone: str = ZONE) -> set[Key]:
        """The zone's records as Vault holds them, read straight from the secrets' layout."""
        data = self.vault_secret(f"zones/{zone}")
        if data.get("format") != DELTA_FORMAT:
            return set(decode_records(data))
        snapshot = self.vault_secret(f"snapshots/{zone}/{data['base']}")
        assert snapshot, f"zone {zone}: snapshot {data['base']} is missing"
        return set(apply_delta(decode_records(snapshot), data)[0])


def start_stack(directory: Path, vault: Vault, *, edit: ConfigEdit | None = None,
                prefix: str | None = None, env: dict[str, str] | None = None, start: bool = True,
                tls: TlsFiles | None = None, corefile: str | None = None) -> Stack:
    """The one stack factory: the shipped Corefile, zone and config (deploy/dnsapi.yaml) in
    `directory` on free ports, `edit` applied to the parsed config, CoreDNS started and, unless
    `start` is false, dnsapi. `prefix` (default: a fresh one) lets stacks share records; `tls`
    makes dnsapi serve HTTPS; a Vault serving HTTPS is trusted through its CA; `corefile` is
    Corefile text to run instead of the shipped one (e.g. `primary_corefile`). The caller stops
    the stack (Stack.stop)."""
    prefix = prefix or f"test-{uuid.uuid4().hex[:12]}"
    dns_port, api_port = free_port(), free_port()
    token = prepare(directory, vault_addr=vault.addr, vault_token=vault.root_token,
                    dns_port=dns_port, api_port=api_port, prefix=prefix)
    if corefile is not None:
        (directory / "Corefile").write_text(corefile)

    def configure(config: dict[str, Any]) -> None:
        if vault.ca is not None:
            config["vault"]["ca_cert"] = str(vault.ca)
        if tls is not None:
            config["tls"] = {"cert": str(tls.cert), "key": str(tls.key)}
        if edit is not None:
            edit(config)

    edit_yaml(directory / "dnsapi.yaml", configure)
    stack = Stack(directory, vault, prefix, dns_port, api_port, token, dict(env or {}),
                  cafile=tls.ca if tls else None)
    try:
        stack.coredns = start_coredns(directory, dns_port, [ZONE], directory / "coredns.log")
        if start:
            stack.start_dnsapi()
    except BaseException:
        stack.stop()
        raise
    return stack


# The shipped primary/secondary Corefiles name these example addresses; tests put their ports in.
_EXAMPLE_PRIMARY, _EXAMPLE_SECONDARIES = "127.0.0.1:1053", "127.0.0.1:1054 127.0.0.1:1055"


@contextlib.contextmanager
def stack_with_secondaries(directory: Path, vault: Vault, secondaries: int = 2,
                           edit: ConfigEdit | None = None) -> Iterator[tuple[Stack, list[int]]]:
    """A stack whose CoreDNS is the shipped primary, `secondaries` secondary CoreDNS servers
    transferring from it, and dnsapi listing all of them in `dns_servers` (so `wait` covers
    them); yields the stack and the secondaries' ports, and stops everything on exit."""
    ports = [free_port() for _ in range(secondaries)]

    def configure(config: dict[str, Any]) -> None:
        config["dns_servers"] += [f"127.0.0.1:{port}" for port in ports]
        if edit is not None:
            edit(config)

    stack = start_stack(directory / "primary", vault, edit=configure, start=False,
                        corefile=primary_corefile(ports))
    running: list[Process] = []
    try:
        for number, port in enumerate(ports, 1):
            running.append(start_secondary(directory / f"secondary{number}", port, stack.dns_port))
        stack.start_dnsapi()
        yield stack, ports
    finally:
        for process in running:
            process.stop()
        stack.stop()


# What the shipped Corefiles name dnsapi's answers listener by, per way of pushing.
_EXAMPLE_ANSWERS = {"push": "transfer from 127.0.0.1:5354", "forward": "forward . 127.0.0.1:5354"}


def shipped_reload(corefile: str) -> str:
    """The `reload` interval of coredns/`corefile`'s file block, read as `dnsapi check` reads it."""
    blocks = parse_corefile((ROOT / "coredns" / corefile).read_text())
    return next(sub.args[0] for block in blocks for directive in block.directives
                if directive.name == "file" for sub in directive.block if sub.name == "reload")


def push_corefile(answers_port: int, reload: str | None = None, layout: str = "push") -> str:
    """coredns/Corefile.push (challenge names transferred from dnsapi's answers on
    `answers_port`), or with `layout` "forward" coredns/Corefile.forward (forwarded to them), the
    zone file polled every `reload` (default: as shipped)."""
    name = f"Corefile.{layout}"
    text = (ROOT / "coredns" / name).read_text()
    example = _EXAMPLE_ANSWERS[layout]
    assert example in text, f"coredns/{name} changed"
    shipped = f"reload {shipped_reload(name)}"
    return text.replace(example, example.replace(":5354", f":{answers_port}")) \
        .replace(shipped, f"reload {reload}" if reload else shipped)


def push_answers(answers_port: int, layout: str = "push") -> ConfigEdit:
    """The config edit that goes with `push_corefile`: answers on `answers_port`, and in the push
    layout NOTIFY to the stack's CoreDNS (its first dns_servers entry)."""
    def edit(config: dict[str, Any]) -> None:
        config["answers"] = {"listen": f"127.0.0.1:{answers_port}"}
        if layout == "push":
            config["answers"]["notify"] = config["dns_servers"][:1]
    return edit


def primary_corefile(secondary_ports: list[int]) -> str:
    """coredns/Corefile.primary, sending NOTIFY to (and allowing AXFR by) these secondaries."""
    text = (ROOT / "coredns" / "Corefile.primary").read_text()
    assert f"to {_EXAMPLE_SECONDARIES}" in text, "coredns/Corefile.primary changed its example"
    return text.replace(_EXAMPLE_SECONDARIES, " ".join(f"127.0.0.1:{p}" for p in secondary_ports))


def start_secondary(directory: Path, port: int, primary_port: int) -> Process:
    """A secondary CoreDNS (coredns/Corefile.secondary) on `port` in `directory`, transferring
    dev.local from the primary on `primary_port`; returns once it serves the zone."""
    text = (ROOT / "coredns" / "Corefile.secondary").read_text()
    assert f"transfer from {_EXAMPLE_PRIMARY}" in text, "coredns/Corefile.secondary changed its example"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Corefile").write_text(text.replace(_EXAMPLE_PRIMARY, f"127.0.0.1:{primary_port}"))
    return start_coredns(directory, port, [ZONE], directory / "coredns.log")


@contextlib.contextmanager
def local_stack(directory: Path, edit: ConfigEdit | None = None) -> Iterator[Stack]:
    """A private OpenBao + CoreDNS + dnsapi in `directory` (for benchmarks), stopped on exit."""
    with openbao_server(directory) as vault:
        stack = start_stack(directory, vault, edit=edit, prefix="dnsapi")
        try:
            yield stack
        finally:
            stack.stop()


# -- a network that loses answers -----------------------------------------------------------------

class LossyRelay:
    """A TCP relay on loopback to a server (Vault) that can lose an answer: after
    `lose(marker, then)`, the next request holding `marker` (e.g. b"POST /v1/secret/data/...")
    reaches the server, which acts on it and answers; the relay drops that answer, calls `then`
    (another writer, say) and closes the client's connection, as a network failing after the
    commit would. Everything else passes unchanged. A context manager: closed on exit."""

    def __init__(self, port: int) -> None:
        self.target = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.lost = 0  # answers dropped so far
        self._armed: list[tuple[bytes, Callable[[], None] | None]] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def lose(self, marker: bytes, then: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._armed.append((marker, then))

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, upstream]
            dropping: list[Callable[[], None] | None] = []  # set when this answer is to be lost
            threading.Thread(target=self._requests, args=(client, upstream, dropping), daemon=True).start()
            threading.Thread(target=self._answers, args=(upstream, client, dropping), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket,
                  dropping: list[Callable[[], None] | None]) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    armed = next((item for item in self._armed if item[0] in data), None)
                    if armed is not None:
                        self._armed.remove(armed)
                        dropping.append(armed[1])
                upstream.sendall(data)
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _answers(self, upstream: socket.socket, client: socket.socket,
                 dropping: list[Callable[[], None] | None]) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if dropping:
                    then = dropping.pop()
                    if then is not None:
                        then()
                    with self._lock:
                        self.lost += 1
                    break
                client.sendall(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> LossyRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


# -- pki-watch ----------------------------------------------------------------------------------

class Receiver:
    """A webhook receiver on loopback: records every POST, answers what the test asks for, and
    can be stopped and started again on the same port (a receiver outage)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict[str, Any]] = []  # {"path", "body", "headers", "at"}
        self.answer: tuple[int, dict[str, Any]] = (200, {"errcode": 0, "errmsg": "ok"})
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.received.append({"path": self.path, "body": body,
                                              "headers": dict(self.headers), "at": time.time()})
                    status, answer = receiver.answer
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, kind: str | None = None, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            bodies = [r["body"] for r in self.received]
        return [b for b in bodies if (kind is None or b.get("type") == kind)
                and all(b.get(k) == v for k, v in match.items())]

    def wait_for(self, kind: str, timeout: float = 20, **match: Any) -> dict[str, Any]:
        """The first `kind` event matching `match`, once it has arrived."""
        wait_until(lambda: self.events(kind, **match), timeout,
                   f"a {kind} event {match} (got {self.events()})")
        return self.events(kind, **match)[0]

    def arrival(self, event_id: str) -> float:
        with self._lock:
            return next(r["at"] for r in self.received if r["body"].get("id") == event_id)


def write_watch_config(directory: Path, vault_addr: str, token: str, mounts: list[str],
                       sinks: list[dict[str, Any]], ca: Path | None = None, prefix: str = "watch",
                       **settings: Any) -> Path:
    """A dnsapi.yaml holding just what pki-watch needs, its Vault token in `pki_watch.token_file`
    (the zone section and the service's login are required but unused)."""
    directory.mkdir(parents=True, exist_ok=True)
    token_file = directory / "pki-watch-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    config = {
        "vault": {"addr": vault_addr, "token": "the-service-token-unused-by-pki-watch", "prefix": prefix,
                  "ca_cert": str(ca) if ca else None},
        "zones": [{"name": ZONE, "file": "db.dev.local"}],
        "open_on_loopback": True,
        "pki_watch": {"token_file": str(token_file), "mounts": mounts, "interval": "500ms", "sinks": sinks,
                      "retry": {"initial": "300ms", "max": "1s"}, **settings},
    }
    path = directory / "dnsapi.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_watch(config: Path, log: Path) -> Process:
    """`dnsapi pki-watch` in the background; returns once it has finished its first cycle."""
    proc = Process.start("pki-watch", [sys.executable, "-m", "dnsapi", "pki-watch", "-c", str(config)],
                         log, env=dict(os.environ))
    try:
        wait_until(lambda: proc.popen.poll() is not None or "first check done" in log.read_text(), 20,
                   "pki-watch's first check")
    except AssertionError:
        proc.stop()
        raise
    if proc.popen.poll() is not None:
        raise AssertionError(f"pki-watch did not start:\n{log.read_text()[-3000:]}")
    return proc


def run_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dnsapi", "pki-watch", "-c", str(config), "--once"],
                          capture_output=True, text=True, timeout=60, check=False)


def watch_saves(vault: Vault, prefix: str) -> int:
    """How often pki-watch has saved its state in Vault: once per check cycle, and once more
    after each delivery pass that changed its outbox."""
    try:
        metadata = vault.client.secrets.kv.v2.read_secret_metadata(
            path=f"{prefix}/pki-watch/state", mount_point="secret")
    except hvac.exceptions.InvalidPath:
        return 0
    return int(metadata["data"]["current_version"])


def wait_for_watch_cycles(vault: Vault, prefix: str, cycles: int = 2, timeout: float = 20) -> None:
    """Wait until pki-watch has run `cycles` more check cycles and delivered what they raised:
    the positive marker after which an event that was not repeated will not be."""
    start = watch_saves(vault, prefix)
    # each cycle saves once after checking and once more after delivering any event it raised
    wait_until(lambda: watch_saves(vault, prefix) >= start + 2 * cycles, timeout,
               f"{cycles} more pki-watch cycles")

