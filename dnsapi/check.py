"""`dnsapi check -c FILE`: everything dnsapi needs, checked the way it will be used, as a list of
✓/✗ lines with a fix for each ✗. Exit status 0 only when every item passes.

It checks, in order: the config file; Vault (reachable, unsealed, our credentials work, the KV
mount is version 2, the token may read and write each zone's secret, an audit device records
requests); each zone file (parses,
its directory is writable by this user); the Corefile (serves each zone from the same file with
a `file` reload interval, no cache in front of it; with `answers` on, the push layout); with
`answers` on, dnsapi's answers listener (answers the zones' challenge names: dnsapi must be
running); and each DNS server in `dns_servers` (answers the zone's SOA authoritatively, with the
serial the file has, and with `answers` on, answers the challenge names it gets from dnsapi).
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import hvac.exceptions

from . import config as config_module
from .config import Config, ZoneConfig, hostport_text, parse_duration
from .errors import ConfigError, VaultUnavailable, ZoneError
from .store import zone_access, zone_secret
from .vault import VaultSession, is_kv2, not_ready
from .zonefile import ZoneFile


@dataclass
class Item:
    ok: bool | None  # None: could not be checked with dnsapi's rights (not a failure)
    text: str
    fix: str = ""


@dataclass
class Checklist:
    items: list[Item] = field(default_factory=list)

    def add(self, ok: bool | None, text: str, fix: str = "") -> bool | None:
        """One item; with `ok` None it says what could not be checked, and `fix` how to."""
        self.items.append(Item(ok, text, "" if ok else fix))
        return ok

    def render(self) -> str:
        lines = []
        for item in self.items:
            lines.append(f"  {'✓' if item.ok else '?' if item.ok is None else '✗'} {item.text}")
            if item.fix:
                lines.append(f"      {'fix' if item.ok is False else 'check'}: {item.fix}")
        failed = sum(item.ok is False for item in self.items)
        unknown = sum(item.ok is None for item in self.items)
        summary = (f"{len(self.items)} checks, {failed} failed" if failed else
                   f"{len(self.items)} checks, all passed")
        lines.append(summary + (f" ({unknown} could not be checked)" if unknown else ""))
        return "\n".join(lines)

    @property
    def passed(self) -> bool:
        return all(item.ok is not False for item in self.items)


def run(path: Path, corefile: Path) -> Checklist:
    checks = Checklist()
    try:
        config = config_module.load(path)
    except ConfigError as exc:
        checks.add(False, f"configuration {path}: {exc}", "correct the key the message names")
        return checks
    checks.add(True, f"configuration {path} is valid ({len(config.zones)} zone(s), "
                     f"{len(config.tokens)} token(s))")
    if config.pki_watch.vault is not None:  # (pki-watch runs beside the service, and reads it too)
        literal = config_module.literal_secrets(path)
        checks.add(not literal, "the configuration holds no secret of its own" if not literal else
                   f"the configuration holds secrets pki-watch can read too: {', '.join(literal)}",
                   "name a file (token_file, secret_id_file, secret_file) or an environment "
                   "variable (DNSAPI_VAULT_TOKEN, DNSAPI_VAULT_SECRET_ID, secret_env) instead")
    serials: dict[str, int] = {}
    _vault(config, checks)
    for zone in config.zones:
        serial = _zone_file(zone, checks)
        if serial is not None:
            serials[zone.name] = serial
    _corefile(config, corefile, checks)
    _dns(config, serials, checks)
    return checks


# -- Vault ----------------------------------------------------------------------------------------

def _vault(config: Config, checks: Checklist) -> None:
    session = VaultSession(config.vault)
    addr = config.vault.addr
    try:
        health = session.client.sys.read_health_status(method="GET")
    except Exception as exc:
        checks.add(False, f"Vault at {addr} is reachable: {type(exc).__name__}",
                   "start Vault, or correct vault.addr (and vault.ca_cert for a private CA)")
        return
    unready = not_ready(health)
    standby = getattr(health, "status_code", None) == 429 and len(config.vault.addrs) > 1
    if unready is not None and not standby:
        checks.add(False, f"Vault at {addr} is unsealed and active: it is {unready[0]}", unready[1])
        return
    version = "" if standby else health.get("version", "?")
    checks.add(True, f"Vault at {addr} is reachable, a standby (dnsapi asks the nodes which leads)"
               if standby else f"Vault at {addr} is reachable and unsealed (version {version})")
    method = "AppRole" if config.vault.approle else "token file" if config.vault.token_file else "token"
    try:
        session.run(lambda: session.client.auth.token.lookup_self())
    except VaultUnavailable as exc:
        checks.add(False, f"Vault accepts dnsapi's {method}: {exc.message}",
                   "`dnsapi vault-init` writes the AppRole files; a static token must be valid "
                   "and not expired")
        return
    checks.add(True, f"Vault accepts dnsapi's {method}")
    kv = config.vault.kv_mount
    try:
        mount = session.run(lambda: session.client.read(f"sys/internal/ui/mounts/{kv}"))
        data = (mount or {}).get("data") or {}
        is_v2 = is_kv2(data)
    except VaultUnavailable:
        is_v2 = False
    checks.add(is_v2, f"{kv}/ is a KV version 2 mount",
               f"`dnsapi vault-init` creates it, or: vault secrets enable -path={kv} kv-v2")
    for zone in config.zones:
        path = f"{kv}/data/{zone_secret(config.vault.prefix, zone.name)}"
        try:
            problem = session.run(functools.partial(zone_access, session, zone.name))
        except VaultUnavailable as exc:
            problem = exc.message
        checks.add(problem is None, f"the token may read and write {path} and its snapshots"
                   + ("" if problem is None else f" ({problem})"),
                   f"give it the {config.vault_init.policy} policy (deploy/vault/dnsapi-policy.hcl; "
                   "`dnsapi vault-init` writes it)")
    _audit(session, checks)


def _audit(session: VaultSession, checks: Checklist) -> None:
    """An audit device records every issuance request and every change dnsapi makes. Listing
    them needs sudo, which dnsapi's own policy rightly lacks: then say so, not ✓ or ✗."""
    def devices() -> dict[str, Any] | None:
        try:
            return dict(session.client.sys.list_enabled_audit_devices()["data"])
        except hvac.exceptions.Forbidden:
            return None

    try:
        found = session.run(devices)
    except VaultUnavailable as exc:
        checks.add(False, f"Vault lists its audit devices: {exc.message}", "see the items above")
        return
    if found is None:
        checks.add(None, "Vault has an audit device: not checked, dnsapi's token may not read "
                   "sys/audit (that needs sudo)",
                   "with an admin token: bao audit list (or vault audit list)")
        return
    checks.add(bool(found), "Vault has an audit device" + (
        ": " + ", ".join(f"{path} ({device['type']})" for path, device in sorted(found.items()))
        if found else " (nothing records issuance requests or dnsapi's writes)"),
        "OpenBao: declare one in every node's server config (`dnsapi vault-init` prints the "
        "stanza; deploy/vault/openbao-raft.hcl has it), then restart or SIGHUP each node; "
        "HashiCorp Vault: `dnsapi vault-init`, or vault audit enable file file_path=/var/log/vault/audit.log")


# -- zone files -----------------------------------------------------------------------------------

def _zone_file(zone: ZoneConfig, checks: Checklist) -> int | None:
    try:
        serial = ZoneFile(zone.file, zone.name).check()
    except ZoneError as exc:
        checks.add(False, f"zone file {zone.file} for {zone.name}: {exc.message}",
                   "fix the file (dnsapi refuses to start on a zone file that does not parse)")
        return None
    checks.add(True, f"zone file {zone.file} parses as {zone.name} (serial {serial})")
    writable = os.access(zone.file.parent, os.W_OK | os.X_OK) and os.access(zone.file, os.R_OK)
    checks.add(writable, f"{zone.file.parent} is writable by this user (uid {os.getuid()})",
               "dnsapi replaces the file by rename: make the directory writable by its user "
               "(e.g. chown dnsapi:coredns, chmod 2770) and the file readable by CoreDNS")
    return serial


# -- Corefile -------------------------------------------------------------------------------------

@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] = field(default_factory=list)


@dataclass
class ServerBlock:
    zones: list[str]  # normalised: no scheme, port or trailing dot; "." for the root
    directives: list[Directive]


def _corefile_tokens(text: str) -> list[str | None]:
    """Corefile tokens; None marks a line end. Quotes group words; # starts a comment."""
    tokens: list[str | None] = []
    for line in text.splitlines():
        for match in re.finditer(r'"([^"]*)"|(#.*)|([{}])|([^\s{}"#]+)', line):
            if match.group(2):
                break
            tokens.append(match.group(1) if match.group(1) is not None else match.group(3) or match.group(4))
        tokens.append(None)
    return tokens


def parse_corefile(text: str) -> list[ServerBlock]:
    """Server blocks with their directives (one level of sub-blocks, as `file ... { reload }`)."""
    tokens = _corefile_tokens(text)
    blocks: list[ServerBlock] = []
    i = 0

    def directives_until_close() -> list[Directive]:
        nonlocal i
        found: list[Directive] = []
        line: list[str] = []
        while i < len(tokens):
            token = tokens[i]
            i += 1
            if token == "}":
                if line:
                    found.append(Directive(line[0], line[1:]))
                return found
            if token == "{":
                found.append(Directive(line[0] if line else "", line[1:], directives_until_close()))
                line = []
            elif token is None:
                if line:
                    found.append(Directive(line[0], line[1:]))
                line = []
            else:
                line.append(token)
        raise ValueError("unbalanced braces")

    keys: list[str] = []
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "{":
            blocks.append(ServerBlock([_zone_key(k) for k in keys], directives_until_close()))
            keys = []
        elif token == "}":
            raise ValueError("unbalanced braces")
        elif token is not None:
            keys.append(token)
    return blocks


def _zone_key(key: str) -> str:
    key = re.sub(r"^[a-z]+://", "", key.lower())
    key = re.sub(r":\d+$", "", key)
    return key.rstrip(".") or "."


def _corefile(config: Config, path: Path, checks: Checklist) -> None:
    try:
        blocks = parse_corefile(path.read_text())
    except OSError as exc:
        checks.add(False, f"Corefile {path} is readable: {exc.strerror}",
                   "pass the Corefile CoreDNS runs with: dnsapi check --corefile PATH")
        return
    except ValueError as exc:
        checks.add(False, f"Corefile {path} parses: {exc}", "fix the Corefile")
        return
    for zone in config.zones:
        _corefile_zone(zone, blocks, path, checks)
        if config.answers is not None:
            _corefile_push(config, zone, blocks, path, checks)


def _corefile_zone(zone: ZoneConfig, blocks: list[ServerBlock], path: Path, checks: Checklist) -> None:
    for block in blocks:
        root = next((Path(d.args[0]) for d in block.directives if d.name == "root" and d.args), path.parent)
        for directive in block.directives:
            if directive.name != "file" or not directive.args:
                continue
            served = [_zone_key(z) for z in directive.args[1:]] or block.zones
            if zone.name not in served:
                continue
            db = Path(directive.args[0])
            db = db if db.is_absolute() else (root / db)
            what = f"Corefile {path} serves {zone.name} with the file plugin"
            if db.resolve() != zone.file.resolve():
                checks.add(False, f"{what} from {zone.file} (it serves {db})",
                           f"point `file` at {zone.file} (relative paths are relative to "
                           "CoreDNS's working directory or `root`)")
                return
            reload = next((d.args[0] for d in directive.block if d.name == "reload" and d.args), "1m")
            seconds = parse_duration(reload)
            ok = bool(seconds)
            checks.add(ok, f"{what} from {db}, reload {reload}",
                       "set `reload 1s` (or similar) in the file block: CoreDNS only picks up "
                       "dnsapi's changes when it re-reads the file")
            if any(d.name == "cache" for d in block.directives):
                checks.add(False, f"no cache in front of {zone.name}",
                           "remove `cache` from this server block: a cached NXDOMAIN hides a new "
                           "_acme-challenge record from the CA")
            return
    checks.add(False, f"Corefile {path} serves {zone.name} with the file plugin",
               f"add a server block: {zone.name} {{ file {zone.file} {{ reload 1s }} }}")


def _corefile_push(config: Config, zone: ZoneConfig, blocks: list[ServerBlock], path: Path,
                   checks: Checklist) -> None:
    """With `answers` on (docs/latency.md): a block for the zone whose view takes the challenge
    names and either transfers them from answers.listen (`secondary`, with answers.notify set)
    or forwards them there, ahead of the zone's file block, without cache."""
    assert config.answers is not None
    label, listen = config.challenge_label, config.answers.listen
    target = hostport_text(*listen)
    reachable = hostport_text(_LOOPBACK.get(listen[0], listen[0]), listen[1])
    what = f"Corefile {path} takes {zone.name}'s {label} names from dnsapi's answers ({target})"
    fix = ("use coredns/Corefile.push (`dnsapi example corefile-push`) with `transfer from "
           f"{reachable}`, its block before the file block")
    file_seen = False
    for block in blocks:
        if zone.name not in block.zones:
            continue
        if any(d.name == "file" for d in block.directives):
            file_seen = True
            continue
        views = " ".join(arg for d in block.directives if d.name == "view"
                         for expr in d.block if expr.name == "expr" for arg in expr.args)
        sources = _sources(block)
        if not views or sources is None:
            continue
        how, addresses = sources
        if label not in views or not any(_reaches(arg, *listen) for arg in addresses):
            checks.add(False, f"{what}: its view or {how} names another label or address", fix)
        elif file_seen:
            checks.add(False, f"{what}: the file block comes first and takes every query", fix)
        elif any(d.name == "cache" for d in block.directives):
            checks.add(False, f"{what} without cache", f"remove `cache` from the {how} block")
        elif how == "secondary" and not config.answers.notify:
            checks.add(False, f"{what}: by transfer, but answers.notify is empty",
                       "list this CoreDNS's address in answers.notify: it transfers only when "
                       "dnsapi sends it a NOTIFY (or at its SOA refresh)")
        elif how == "secondary" and (unnamed := _unnamed_sources(config, addresses)):
            checks.add(False, f"{what}: dnsapi's NOTIFY comes from {', '.join(unnamed)}, which "
                              "`transfer from` does not name (CoreDNS drops it)",
                       f"name {hostport_text(unnamed[0], listen[1])} in `transfer from`, or set "
                       "answers.listen to the address it names")
        else:
            checks.add(True, f"{what} ({how})")
        return
    checks.add(False, what, fix)


def _unnamed_sources(config: Config, addresses: list[str]) -> list[str]:
    """With answers on every address (0.0.0.0, ::), NOTIFY leaves from the address the kernel
    routes each target from: those of them no `transfer from` address names. (On a specific
    address, the NOTIFY comes from it, which `_reaches` already matched.)"""
    assert config.answers is not None
    host, port = config.answers.listen
    if host not in _LOOPBACK:
        return []
    named = set()
    for arg in addresses:
        with contextlib.suppress(ValueError):
            address, target_port = config_module.parse_hostport(arg.removeprefix("dns://"))
            if target_port == port:
                named.add(ipaddress.ip_address(address))
    unnamed = []
    for target, _ in config.answers.notify:
        source = _route_source(target)
        if source is not None and ipaddress.ip_address(source) not in named and source not in unnamed:
            unnamed.append(source)
    return unnamed


def _route_source(host: str) -> str | None:
    """The address this host sends from to reach `host` (None: no route)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))  # UDP: picks the route and source, sends nothing
            return str(probe.getsockname()[0])
    except OSError:
        return None


def _sources(block: ServerBlock) -> tuple[str, list[str]] | None:
    """How a block gets its names from elsewhere and the addresses it names: `forward`'s
    targets, or the `transfer from` addresses of a `secondary`."""
    for directive in block.directives:
        if directive.name == "forward":
            return "forward", directive.args[1:]
        if directive.name == "secondary":
            return "secondary", [arg for sub in directive.block
                                 if sub.name == "transfer" and sub.args[:1] == ["from"]
                                 for arg in sub.args[1:]]
    return None


# -- DNS servers ----------------------------------------------------------------------------------

def _dns(config: Config, serials: dict[str, int], checks: Checklist) -> None:
    answering = _answers(config, checks) if config.answers is not None else set()
    if not config.dns_servers:
        checks.add(False, "dns_servers lists the servers that serve the zones",
                   "list them (IP:PORT): adds with wait, acme.sh --dnssleep 0 and lego "
                   "--dns.disable-cp rely on dnsapi checking them")
        return
    for host, port in config.dns_servers:
        for zone in config.zones:
            _soa(host, port, zone.name, serials.get(zone.name), checks)
            if zone.name in answering:
                _forwarded(host, port, f"{config.challenge_label}.{zone.name}", checks)


COREDNS_DOWN = (False, "is CoreDNS running and listening there?")
DNSAPI_DOWN = (None, "is dnsapi running with this config? run the check again once it is")


def _query(host: str, port: int, name: str, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name + ".", rdtype), host, port=port, timeout=2)


def _ask(host: str, port: int, name: str, rdtype: dns.rdatatype.RdataType, what: str,
         checks: Checklist, unanswered: tuple[bool | None, str] = COREDNS_DOWN
         ) -> dns.message.Message | None:
    """The reply to one query; None when there is none, once the item for `what` says so
    (`unanswered`: its verdict and fix)."""
    try:
        return _query(host, port, name, rdtype)
    except (dns.exception.DNSException, OSError) as exc:
        checks.add(unanswered[0], f"{what}: {type(exc).__name__}", unanswered[1])
        return None


# A listener on every address is asked, and forwarded to, on loopback.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def _reaches(target: str, host: str, port: int) -> bool:
    """Whether a `forward` target (`127.0.0.1:5354`, `dns://[::1]:5354`) is the listener on
    host:port: the same address, or, for a listener on every address of a family (0.0.0.0:
    IPv4; ::, IPv6 only, as asyncio binds its TCP side), an address of this host in it."""
    target = target.removeprefix("dns://")
    try:
        address, target_port = config_module.parse_hostport(target)
    except ValueError:
        address, target_port = target, 53  # CoreDNS's default port
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if target_port != port:
        return False
    if host in _LOOPBACK:
        return ip.version == ipaddress.ip_address(host).version and _local(ip)
    return ip == ipaddress.ip_address(host)


def _local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `ip` is an address of this host (one a socket can bind)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(ip), 0))
    except OSError:
        return False
    return True


def _answers(config: Config, checks: Checklist) -> set[str]:
    """With `answers` on: dnsapi's answers listener answers each zone's challenge names itself
    (a running dnsapi; a stopped one cannot be checked). Returns the zones it answered for."""
    assert config.answers is not None
    host, port = config.answers.listen
    # (Asked at 0.0.0.0, the reply would come from 127.0.0.1, which dnspython refuses as an
    # unexpected source.)
    ask_at = _LOOPBACK.get(host, host)
    answering = set()
    for zone in config.zones:
        name = f"{config.challenge_label}.{zone.name}"
        what = f"dnsapi's answers on {hostport_text(host, port)} answer {name}"
        response = _ask(ask_at, port, name, dns.rdatatype.TXT, what, checks, DNSAPI_DOWN)
        if response is None:
            break  # (each further zone would wait out the same timeout)
        if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and response.flags & dns.flags.AA:
            checks.add(True, what)
            answering.add(zone.name)
        else:
            checks.add(False, f"{what} (got rcode {dns.rcode.to_text(response.rcode())})",
                       "another program listens there, dnsapi runs with another config, or it "
                       "has not loaded the zone file yet (see its log)")
    return answering


def _forwarded(host: str, port: int, name: str, checks: Checklist) -> None:
    """Through a DNS server, a challenge name is answered: SERVFAIL, or no answer, is what
    CoreDNS gives when its forward does not reach dnsapi's answers listener, or its secondary
    block never transferred from it. (An answer cannot show where it came from: that the
    Corefile takes the names from dnsapi is the --corefile check.)"""
    what = f"{hostport_text(host, port)} answers {name} (from dnsapi's answers)"
    fix = ("CoreDNS has no challenge names from answers.listen: check the address in its `forward` "
           "or `transfer from`, and (transfer) that answers.notify lists it; see its log")
    try:
        response = _query(host, port, name, dns.rdatatype.TXT)
    except (dns.exception.DNSException, OSError) as exc:
        checks.add(False, f"{what}: {type(exc).__name__}, though it answered the SOA", fix)
        return
    if response.rcode() == dns.rcode.SERVFAIL:
        checks.add(False, f"{what}: got SERVFAIL", fix)
    else:
        checks.add(True, what)


def _soa(host: str, port: int, zone: str, expected: int | None, checks: Checklist) -> None:
    what = f"{host}:{port} answers the SOA of {zone}"
    response = _ask(host, port, zone, dns.rdatatype.SOA, what, checks)
    if response is None:
        return
    soa = [rd for rrset in response.answer if rrset.rdtype == dns.rdatatype.SOA for rd in rrset]
    if not soa or not response.flags & dns.flags.AA:
        checks.add(False, f"{what} authoritatively (got rcode {response.rcode()}, "
                          f"{'no SOA' if not soa else 'not authoritative'})",
                   "this server does not serve the zone: check its Corefile")
        return
    serial = soa[0].serial
    if expected is not None and serial != expected:
        checks.add(False, f"{what} with the file's serial (serves {serial}, file has {expected})",
                   "CoreDNS has not loaded the current file: check its `reload` and its log")
        return
    checks.add(True, f"{what} authoritatively (serial {serial})")

