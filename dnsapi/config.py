"""Load the YAML configuration (plus secrets from the environment) into frozen dataclasses.

Every problem is reported as a ConfigError whose message starts with the dotted key, so a
wrong or missing setting fails at start with `vault.addr: must be an http:// or https:// URL`
rather than somewhere deep in a request. Unknown keys are errors too: a typo must not silently
fall back to a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .names import InvalidInput, normalize_name, normalize_pattern

ENV_VAULT_TOKEN = "DNSAPI_VAULT_TOKEN"
ENV_APPROLE_SECRET_ID = "DNSAPI_VAULT_SECRET_ID"

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


@dataclass(frozen=True)
class AppRoleConfig:
    role_id: str | None
    role_id_file: Path | None
    secret_id: str | None
    secret_id_file: Path | None
    mount: str


@dataclass(frozen=True)
class VaultConfig:
    addr: str
    token: str | None
    token_file: Path | None
    approle: AppRoleConfig | None
    ca_cert: Path | None
    kv_mount: str
    prefix: str
    timeout: float


@dataclass(frozen=True)
class ZoneConfig:
    name: str
    file: Path


@dataclass(frozen=True)
class TokenConfig:
    name: str
    sha256: str
    allow: tuple[str, ...]


@dataclass(frozen=True)
class PkiConfig:
    """The private CA that `dnsapi vault-init` sets up (see README, "Vault as the ACME CA")."""

    root_mount: str
    mount: str  # the issuing mount; it serves ACME
    intermediate: bool  # False: the root issues directly (root_mount == mount)
    common_name: str
    key_type: str
    key_bits: int
    root_ttl: float
    intermediate_ttl: float
    role: str
    max_ttl: float
    cluster_url: str  # how clients reach Vault (AIA, CRL and ACME URLs are built from it)
    acme_dns_resolver: str | None  # IP:PORT of a DNS server for the zones; None: dns_servers[0]
    eab_policy: str
    crl_expiry: float
    tidy_interval: float
    root_ca_file: Path


@dataclass(frozen=True)
class VaultInitConfig:
    policy: str
    approle_role: str  # on the mount and with the credential files of vault.approle
    token_ttl: float
    token_max_ttl: float
    pki: PkiConfig


SINK_TYPES = ("webhook", "slack", "wecom", "dingtalk", "feishu", "command")


@dataclass(frozen=True)
class SinkConfig:
    """Where pki-watch pushes events. `url` and `secret` are secrets (webhook keys live in the
    URL for WeCom and DingTalk), so only `name` ever appears in logs."""

    name: str
    type: str  # one of SINK_TYPES
    url: str | None  # every type but command
    secret: str | None  # dingtalk / feishu: the robot's signing secret
    headers: tuple[tuple[str, str], ...]  # webhook: extra headers, e.g. Authorization
    command: tuple[str, ...]  # command: argv; the event arrives as JSON on stdin
    env: tuple[tuple[str, str | None], ...]  # command: its environment besides PATH and LANG
    # (a value of None: passed through from pki-watch's own environment)
    timeout: float


@dataclass(frozen=True)
class PkiWatchConfig:
    mounts: tuple[str, ...]
    interval: float
    expiry_warn: tuple[float, ...]  # thresholds in seconds, largest first
    crl_grace: float  # a revocation missing from every CRL for longer than this: stale CRL
    ocsp: bool
    retry_initial: float  # delivery backoff: first retry after this, doubling...
    retry_max: float  # ...up to this
    give_up: float  # an event still undelivered after this long is dropped (logged)
    sinks: tuple[SinkConfig, ...]


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path


@dataclass(frozen=True)
class HttpLimits:
    """How much a connection may hold before dnsapi closes it (see dnsapi/connections.py): slow or
    idle clients must not take descriptors from real ones."""

    request_timeout: float  # a request's headers and body must arrive within this
    keepalive_timeout: float  # an idle keep-alive connection is closed after this
    max_connections: int  # open connections in all (also kept below the descriptor limit)
    max_connections_per_address: int  # open connections from one source address


@dataclass(frozen=True)
class WaitLimits:
    """`wait: true` requests poll DNS until the record is served: bounded per token and in all."""

    per_token: int
    total: int


@dataclass(frozen=True)
class RefusalLimits:
    """Refused requests (bad token, bad input) per source address, and how often the audit trail
    sums up the refusals it does not write line by line."""

    per_second: float
    burst: int
    audit_interval: float
    audit_lines: int  # refusals written in full per interval; the rest are counted


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    tls: TlsConfig | None
    vault: VaultConfig
    zones: tuple[ZoneConfig, ...]
    dns_servers: tuple[tuple[str, int], ...]
    tokens: tuple[TokenConfig, ...]
    challenge_label: str
    default_ttl: int
    min_ttl: int
    max_ttl: int
    reconcile_interval: float
    watch_interval: float
    propagation_timeout: float
    max_records_per_zone: int
    max_records_per_token: int  # records one token may hold at once in one zone
    max_body_bytes: int
    max_age: float  # challenge records older than this are removed
    rate_limit: float  # requests per second per token (0: no limit)
    rate_burst: int
    refusals: RefusalLimits
    http: HttpLimits
    waits: WaitLimits
    allowed_origins: tuple[str, ...]  # browser Origins allowed to call the API (none by default)
    audit_file: Path | None  # None: audit lines go to stderr
    open_on_loopback: bool  # no tokens at all: anyone who can reach the loopback listener
    vault_init: VaultInitConfig
    pki_watch: PkiWatchConfig

    @property
    def zone_names(self) -> tuple[str, ...]:
        return tuple(zone.name for zone in self.zones)


class _Section:
    """A mapping being read: remembers its dotted path and which keys were consumed."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path or 'config'}: must be a mapping")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def optional_text(self, name: str) -> str | None:
        value = self.get(name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{self.key(name)}: must be a string")
        return value or None

    def text(self, name: str, default: str) -> str:
        return self.optional_text(name) or default

    def required_text(self, name: str) -> str:
        value = self.optional_text(name)
        if value is None:
            raise ConfigError(f"{self.key(name)}: is required")
        return value

    def integer(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ConfigError(f"{self.key(name)}: must be an integer from {minimum} to {maximum}")
        return value

    def duration(self, name: str, default: str) -> float:
        value = self.get(name, default)
        seconds = parse_duration(value)
        if seconds is None or seconds <= 0:
            raise ConfigError(f"{self.key(name)}: must be a positive duration such as 30s, 5m or 1h")
        return seconds

    def optional_path(self, name: str, base: Path, follow_links: bool = True) -> Path | None:
        """`follow_links=False` for files dnsapi writes secrets into: a symlink planted there must
        be seen (and refused) by the writer, not silently followed here."""
        value = self.optional_text(name)
        if value is None:
            return None
        return (base / value).resolve() if follow_links else Path(os.path.abspath(base / value))

    def required_path(self, name: str, base: Path) -> Path:
        return (base / self.required_text(name)).resolve()

    def section(self, name: str) -> _Section:
        self.used.add(name)
        return _Section(self.data.get(name), self.key(name))

    def finish(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            raise ConfigError(f"{self.key(unknown[0])}: unknown setting")


def parse_duration(value: object) -> float | None:
    """`30`, `30s`, `500ms`, `5m`, `1h`, `1d` → seconds; None when it is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    match = _DURATION_RE.fullmatch(value.strip())
    if not match:
        return None
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_hostport(text: object, key: str) -> tuple[str, int]:
    """`127.0.0.1:8053` or `[::1]:8053` → (host, port), requiring a literal IP address."""
    if not isinstance(text, str):
        raise ConfigError(f"{key}: must be a string like 127.0.0.1:8053")
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not match:
        raise ConfigError(f"{key}: {text!r} is not IP:PORT (IPv6 as [addr]:port)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{key}: {host!r} is not an IP address") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{key}: port {port} is out of range")
    return host, port


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    """Read and validate the YAML file at `path`; relative file paths in it are relative to it."""
    env = dict(os.environ) if env is None else env
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config: {path} is not valid YAML: {exc}") from None
    return from_dict(raw, base=path.parent.resolve(), env=env)


def from_dict(raw: Any, base: Path, env: dict[str, str]) -> Config:
    root = _Section(raw, "")
    listen_host, listen_port = parse_hostport(root.get("listen", "127.0.0.1:8053"), "listen")
    tls = None
    if root.get("tls") is not None:
        section = root.section("tls")
        tls = TlsConfig(cert=section.required_path("cert", base), key=section.required_path("key", base))
        section.finish()
    vault = _vault(root.section("vault"), base, env)
    zones = _zones(root.get("zones"), base)
    dns_servers = _dns_servers(root.get("dns_servers", []))
    challenge_label = root.text("challenge_label", "_acme-challenge")
    try:
        challenge_label = normalize_name(challenge_label, "challenge_label")
    except InvalidInput as exc:
        raise ConfigError(f"challenge_label: {exc.message}") from None
    if "." in challenge_label:
        raise ConfigError("challenge_label: must be a single label")
    open_on_loopback = root.get("open_on_loopback", False)
    if not isinstance(open_on_loopback, bool):
        raise ConfigError("open_on_loopback: must be true or false")
    if open_on_loopback:
        if not ipaddress.ip_address(listen_host).is_loopback:
            raise ConfigError(f"open_on_loopback: only allowed when listen is a loopback address, "
                              f"not {listen_host}")
        tokens = _tokens(root.get("tokens") or [], required=False)
    else:
        tokens = _tokens(root.get("tokens"), required=True)
    rate = root.section("rate_limit")
    rate_limit = rate.get("per_second", 50)
    if isinstance(rate_limit, bool) or not isinstance(rate_limit, (int, float)) or rate_limit < 0:
        raise ConfigError(f"{rate.key('per_second')}: must be a number >= 0 (0 turns the limit off)")
    rate_burst = rate.integer("burst", 200, 1, 1_000_000)
    rate.finish()
    refusals = _refusals(root.section("refusals"))
    audit = root.section("audit")
    audit_file = audit.optional_path("file", base)
    audit.finish()
    http = _http_limits(root.section("http"))
    waits = root.section("waits")
    wait_limits = WaitLimits(per_token=waits.integer("per_token", 20, 1, 100_000),
                             total=waits.integer("total", 200, 1, 100_000))
    waits.finish()
    if wait_limits.per_token > wait_limits.total:
        raise ConfigError(f"{waits.key('per_token')}: must not exceed waits.total")
    origins = root.get("allowed_origins", [])
    if not isinstance(origins, list) or not all(
            isinstance(o, str) and re.fullmatch(r"https?://[^\s/]+", o) for o in origins):
        raise ConfigError("allowed_origins: must be a list of origins such as https://ops.example "
                          "(scheme://host[:port], no path)")

    ttl = root.section("ttl")
    max_ttl = ttl.integer("max", 3600, 1, 2**31 - 1)
    min_ttl = ttl.integer("min", 1, 0, max_ttl)
    default_ttl = ttl.integer("default", 60, min_ttl, max_ttl)
    ttl.finish()

    vault_init = _vault_init(root.section("vault_init"), base, vault)
    config = Config(
        listen_host=listen_host,
        listen_port=listen_port,
        tls=tls,
        vault=vault,
        zones=zones,
        dns_servers=dns_servers,
        tokens=tokens,
        challenge_label=challenge_label,
        default_ttl=default_ttl,
        min_ttl=min_ttl,
        max_ttl=max_ttl,
        reconcile_interval=root.duration("reconcile_interval", "10s"),
        watch_interval=root.duration("watch_interval", "500ms"),
        propagation_timeout=root.duration("propagation_timeout", "60s"),
        max_records_per_zone=root.integer("max_records_per_zone", 2000, 1, 100_000),
        max_records_per_token=root.integer("max_records_per_token", 100, 1, 100_000),
        max_body_bytes=root.integer("max_body_bytes", 16384, 256, 1 << 20),
        max_age=root.duration("max_age", "1h"),
        rate_limit=float(rate_limit),
        rate_burst=rate_burst,
        refusals=refusals,
        http=http,
        waits=wait_limits,
        allowed_origins=tuple(o.lower() for o in origins),
        audit_file=audit_file,
        open_on_loopback=open_on_loopback,
        vault_init=vault_init,
        pki_watch=_pki_watch(root.section("pki_watch"), vault_init.pki),
    )
    root.finish()
    return config


def _http_limits(section: _Section) -> HttpLimits:
    limits = HttpLimits(
        request_timeout=section.duration("request_timeout", "10s"),
        keepalive_timeout=section.duration("keepalive_timeout", "15s"),
        max_connections=section.integer("max_connections", 900, 1, 1_000_000),
        max_connections_per_address=section.integer("max_connections_per_address", 128, 1, 1_000_000),
    )
    section.finish()
    if limits.max_connections_per_address > limits.max_connections:
        raise ConfigError(f"{section.key('max_connections_per_address')}: must not exceed "
                          "http.max_connections")
    return limits


def _refusals(section: _Section) -> RefusalLimits:
    rate = section.get("per_second", 5)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
        raise ConfigError(f"{section.key('per_second')}: must be a number >= 0 (0 turns the limit off)")
    limits = RefusalLimits(
        per_second=float(rate),
        burst=section.integer("burst", 20, 1, 1_000_000),
        audit_interval=section.duration("audit_interval", "60s"),
        audit_lines=section.integer("audit_lines", 100, 0, 1_000_000),
    )
    section.finish()
    return limits


def _vault(section: _Section, base: Path, env: dict[str, str]) -> VaultConfig:
    addr = section.required_text("addr")
    if not re.fullmatch(r"https?://[^\s/]+/?", addr):
        raise ConfigError(f"{section.key('addr')}: must be an http:// or https:// URL without a path")
    token = section.optional_text("token") or env.get(ENV_VAULT_TOKEN) or None
    token_file = section.optional_path("token_file", base)
    approle = None
    if section.get("approle") is not None:
        approle = _approle(section.section("approle"), base, env)
    given = [k for k, v in (("token", token), ("token_file", token_file), ("approle", approle)) if v]
    if len(given) != 1:
        raise ConfigError(f"{section.key('token')}: set exactly one of vault.token (or the "
                          f"{ENV_VAULT_TOKEN} environment variable), vault.token_file or "
                          f"vault.approle" + (f"; got {', '.join(given)}" if given else ""))
    kv_mount = section.text("kv_mount", "secret").strip("/")
    prefix = section.text("prefix", "dnsapi").strip("/")
    for key, value in (("kv_mount", kv_mount), ("prefix", prefix)):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*", value):
            raise ConfigError(f"{section.key(key)}: {value!r} is not a valid Vault path")
    config = VaultConfig(
        addr=addr.rstrip("/"),
        token=token,
        token_file=token_file,
        approle=approle,
        ca_cert=section.optional_path("ca_cert", base),
        kv_mount=kv_mount,
        prefix=prefix,
        timeout=section.duration("timeout", "10s"),
    )
    section.finish()
    return config


EAB_POLICIES = ("not-required", "new-account-required", "always-required")


def _vault_init(section: _Section, base: Path, vault: VaultConfig) -> VaultInitConfig:
    approle = section.section("approle")
    pki = section.section("pki")
    intermediate = pki.get("intermediate", True)
    if not isinstance(intermediate, bool):
        raise ConfigError(f"{pki.key('intermediate')}: must be true or false")
    mount = pki.text("mount", "pki").strip("/")
    key_type = pki.text("key_type", "ec")
    if key_type not in ("ec", "rsa", "ed25519"):
        raise ConfigError(f"{pki.key('key_type')}: must be ec, rsa or ed25519")
    default_bits = {"ec": 384, "rsa": 4096, "ed25519": 0}[key_type]
    resolver = pki.optional_text("acme_dns_resolver")
    if resolver is not None:
        parse_hostport(resolver, pki.key("acme_dns_resolver"))
    eab_policy = pki.text("eab_policy", "not-required")
    if eab_policy not in EAB_POLICIES:
        raise ConfigError(f"{pki.key('eab_policy')}: must be one of {', '.join(EAB_POLICIES)}")
    cluster_url = pki.text("cluster_url", vault.addr).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+", cluster_url):
        raise ConfigError(f"{pki.key('cluster_url')}: must be an http:// or https:// URL without a path")
    pki_config = PkiConfig(
        root_mount=pki.text("root_mount", "pki_root" if intermediate else mount).strip("/"),
        mount=mount,
        intermediate=intermediate,
        common_name=pki.text("common_name", "dnsapi internal root CA"),
        key_type=key_type,
        key_bits=pki.integer("key_bits", default_bits, 0, 8192),
        root_ttl=pki.duration("root_ttl", "87600h"),
        intermediate_ttl=pki.duration("intermediate_ttl", "43800h"),
        role=pki.text("role", "acme"),
        max_ttl=pki.duration("max_ttl", "720h"),
        cluster_url=cluster_url,
        acme_dns_resolver=resolver,
        eab_policy=eab_policy,
        crl_expiry=pki.duration("crl_expiry", "72h"),
        tidy_interval=pki.duration("tidy_interval", "12h"),
        root_ca_file=pki.optional_path("root_ca_file", base, follow_links=False) or base / "root-ca.pem",
    )
    pki.finish()
    if pki_config.intermediate and pki_config.root_mount == pki_config.mount:
        raise ConfigError(f"{pki.key('root_mount')}: must differ from pki.mount when "
                          "intermediate is true")
    config = VaultInitConfig(
        policy=section.text("policy", "dnsapi"),
        approle_role=approle.text("role", "dnsapi"),
        token_ttl=approle.duration("token_ttl", "1h"),
        token_max_ttl=approle.duration("token_max_ttl", "24h"),
        pki=pki_config,
    )
    approle.finish()
    section.finish()
    return config


def _pki_watch(section: _Section, pki: PkiConfig) -> PkiWatchConfig:
    mounts = section.get("mounts")
    if mounts is None:  # the mounts vault-init creates
        mounts = [pki.root_mount, pki.mount] if pki.intermediate else [pki.mount]
    if (not isinstance(mounts, list) or not mounts
            or not all(isinstance(m, str) and re.fullmatch(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*",
                                                           m.strip("/")) for m in mounts)):
        raise ConfigError(f"{section.key('mounts')}: must be a non-empty list of PKI mount paths")
    warn = section.get("expiry_warn", ["14d", "3d"])
    thresholds = [parse_duration(w) for w in warn] if isinstance(warn, list) else [None]
    if not all(t is not None and t > 0 for t in thresholds):
        raise ConfigError(f"{section.key('expiry_warn')}: must be a list of durations such as "
                          "[14d, 3d] (empty: no expiry warnings)")
    ocsp = section.get("ocsp", True)
    if not isinstance(ocsp, bool):
        raise ConfigError(f"{section.key('ocsp')}: must be true or false")
    retry = section.section("retry")
    config = PkiWatchConfig(
        mounts=tuple(dict.fromkeys(m.strip("/") for m in mounts)),
        interval=section.duration("interval", "60s"),
        expiry_warn=tuple(sorted({t for t in thresholds if t}, reverse=True)),
        crl_grace=section.duration("crl_grace", "20m"),
        ocsp=ocsp,
        retry_initial=retry.duration("initial", "5s"),
        retry_max=retry.duration("max", "5m"),
        give_up=retry.duration("give_up", "7d"),
        sinks=_sinks(section.get("sinks", [])),
    )
    retry.finish()
    section.finish()
    return config


def _sinks(raw: Any) -> tuple[SinkConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("pki_watch.sinks: must be a list of {type, url} or {type: command, command}")
    sinks: list[SinkConfig] = []
    for i, item in enumerate(raw):
        section = _Section(item, f"pki_watch.sinks[{i}]")
        kind = section.required_text("type")
        if kind not in SINK_TYPES:
            raise ConfigError(f"{section.key('type')}: must be one of {', '.join(SINK_TYPES)}")
        name = section.text("name", f"{kind}-{i}")
        url = section.optional_text("url")
        command = section.get("command")
        if kind == "command":
            if (not isinstance(command, list) or not command
                    or not all(isinstance(a, str) and a for a in command)):
                raise ConfigError(f"{section.key('command')}: must be a non-empty list: the "
                                  "program and its arguments (no shell)")
            if url is not None:
                raise ConfigError(f"{section.key('url')}: a command sink has no url")
        else:
            if url is None or not re.fullmatch(r"https?://[^\s]+", url):
                raise ConfigError(f"{section.key('url')}: must be an http:// or https:// URL")
            if command is not None:
                raise ConfigError(f"{section.key('command')}: only for type: command")
        secret = section.optional_text("secret")
        if secret is not None and kind not in ("dingtalk", "feishu"):
            raise ConfigError(f"{section.key('secret')}: only dingtalk and feishu sign requests")
        headers = section.get("headers") or {}
        if (not isinstance(headers, dict) or kind != "webhook" and headers
                or not all(isinstance(k, str) and isinstance(v, str) and "\n" not in k + v
                           for k, v in headers.items())):
            raise ConfigError(f"{section.key('headers')}: a mapping of header: value strings, "
                              "for type: webhook only")
        env = _sink_env(section, kind)
        sinks.append(SinkConfig(name=name, type=kind, url=url, secret=secret,
                                headers=tuple(headers.items()), command=tuple(command or ()),
                                env=env, timeout=section.duration("timeout", "10s")))
        section.finish()
        if [s.name for s in sinks].count(name) > 1:
            raise ConfigError(f"{section.key('name')}: sink name {name!r} is used twice")
    return tuple(sinks)


def _sink_env(section: _Section, kind: str) -> tuple[tuple[str, str | None], ...]:
    """A command sink's `env:` list: `NAME` passes that variable through from pki-watch's own
    environment, `NAME=value` sets it. Nothing else is inherited (see notify._run_command)."""
    raw = section.get("env") or []
    if raw and kind != "command":
        raise ConfigError(f"{section.key('env')}: only for type: command")
    if not isinstance(raw, list) or not all(
            isinstance(item, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(=.*)?", item, re.S)
            for item in raw):
        raise ConfigError(f"{section.key('env')}: must be a list of NAME (passed through) or "
                          "NAME=value strings")
    pairs = []
    for item in raw:
        name, sep, value = item.partition("=")
        pairs.append((name, value if sep else None))
    return tuple(pairs)


def _approle(section: _Section, base: Path, env: dict[str, str]) -> AppRoleConfig:
    config = AppRoleConfig(
        role_id=section.optional_text("role_id"),
        role_id_file=section.optional_path("role_id_file", base, follow_links=False),
        secret_id=section.optional_text("secret_id") or env.get(ENV_APPROLE_SECRET_ID) or None,
        secret_id_file=section.optional_path("secret_id_file", base, follow_links=False),
        mount=section.text("mount", "approle").strip("/"),
    )
    section.finish()
    if (config.role_id is None) == (config.role_id_file is None):
        raise ConfigError(f"{section.key('role_id')}: set exactly one of role_id or role_id_file")
    if (config.secret_id is None) == (config.secret_id_file is None):
        raise ConfigError(f"{section.key('secret_id')}: set exactly one of secret_id (or the "
                          f"{ENV_APPROLE_SECRET_ID} environment variable) or secret_id_file")
    return config


def _zones(raw: Any, base: Path) -> tuple[ZoneConfig, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("zones: must be a non-empty list of {name, file}")
    zones: list[ZoneConfig] = []
    for i, item in enumerate(raw):
        section = _Section(item, f"zones[{i}]")
        name = section.required_text("name")
        try:
            name = normalize_name(name, "zone name")
        except InvalidInput as exc:
            raise ConfigError(f"{section.key('name')}: {exc.message}") from None
        zone = ZoneConfig(name=name, file=section.required_path("file", base))
        section.finish()
        if any(z.name == zone.name for z in zones):
            raise ConfigError(f"{section.key('name')}: zone {name!r} is listed twice")
        if any(z.file == zone.file for z in zones):
            raise ConfigError(f"{section.key('file')}: {zone.file} is used by two zones")
        zones.append(zone)
    return tuple(zones)


def _dns_servers(raw: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, list):
        raise ConfigError("dns_servers: must be a list of IP:PORT strings")
    return tuple(parse_hostport(item, f"dns_servers[{i}]") for i, item in enumerate(raw))


def _tokens(raw: Any, required: bool) -> tuple[TokenConfig, ...]:
    if not isinstance(raw, list) or (required and not raw):
        raise ConfigError("tokens: must be a non-empty list of {name, sha256, allow} (to run "
                          "without tokens on a loopback listener, set open_on_loopback: true)")
    tokens: list[TokenConfig] = []
    for i, item in enumerate(raw):
        section = _Section(item, f"tokens[{i}]")
        name = section.required_text("name")
        digest = section.required_text("sha256").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ConfigError(f"{section.key('sha256')}: must be 64 hex digits "
                              "(the SHA-256 of the token; `dnsapi hash-token` prints it)")
        allow = section.get("allow")
        if not isinstance(allow, list) or not allow or not all(isinstance(p, str) for p in allow):
            raise ConfigError(f"{section.key('allow')}: must be a non-empty list of name patterns")
        try:
            patterns = tuple(normalize_pattern(p) for p in allow)
        except InvalidInput as exc:
            raise ConfigError(f"{section.key('allow')}: {exc.message}") from None
        section.finish()
        if any(t.name == name for t in tokens):
            raise ConfigError(f"{section.key('name')}: token name {name!r} is used twice")
        if any(t.sha256 == digest for t in tokens):
            raise ConfigError(f"{section.key('sha256')}: the same token hash is listed twice")
        tokens.append(TokenConfig(name=name, sha256=digest, allow=patterns))
    return tuple(tokens)
