"""Load the YAML configuration (plus secrets from the environment) into frozen pydantic models.

Every problem is reported as a ConfigError whose message starts with the dotted key, so a
wrong or missing setting fails at start with `vault.addr: must be an http:// or https:// URL`
rather than somewhere deep in a request. Unknown keys are errors too: a typo must not silently
fall back to a default.

The models below describe the file: its keys, their defaults and their checks. Three of them
(`_File`, `_VaultInitFile`, `_PkiWatchFile`) keep the file's nesting and are turned into the flat
Config, VaultInitConfig and PkiWatchConfig the code reads (`ttl: {min}` becomes `min_ttl`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .names import is_below, normalize_name, normalize_pattern

ENV_VAULT_TOKEN = "DNSAPI_VAULT_TOKEN"
ENV_APPROLE_SECRET_ID = "DNSAPI_VAULT_SECRET_ID"
SINK_TYPES = ("webhook", "slack", "wecom", "dingtalk", "feishu", "command")
EAB_POLICIES = ("not-required", "new-account-required", "always-required")

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
MAX_DURATION = 100 * 366 * 86400.0  # a century: more than any TTL a CA sets
_MINUTE, _HOUR, _DAY = 60.0, 3600.0, 86400.0
_VAULT_PATH_RE = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_KEY_BITS = {"ec": 384, "rsa": 4096, "ed25519": 0}  # the default size of each key type
_KEY_SIZES = {"ec": (224, 256, 384, 521), "rsa": (2048, 3072, 4096, 8192), "ed25519": (0,)}
_MAX_TTL = 2**31 - 1
_TOKENS_NEEDED = ("must be a non-empty list of {name, sha256, allow} (to run without tokens on a "
                  "loopback listener, set open_on_loopback: true)")
_ARGV = "must be a non-empty list: the program and its arguments (no shell)"
_HEADERS = "a mapping of header: value strings, for type: webhook only"


def parse_duration(value: object) -> float | None:
    """`30`, `30s`, `500ms`, `5m`, `1h`, `1d` → seconds; None when it is not a duration (NaN,
    infinity and anything past MAX_DURATION included: a sleep of NaN never ends, and timeouts
    that large overflow)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        return None
    return seconds if math.isfinite(seconds) and abs(seconds) <= MAX_DURATION else None


def _wildcard(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


def parse_hostport(text: object) -> tuple[str, int]:
    """`127.0.0.1:8053` or `[::1]:8053` → (host, port), requiring a literal IP address: a host
    name would be resolved at a moment nobody chose. The address comes back in its usual
    spelling (`::1` for `0:0::1`), so two spellings of one address compare equal."""
    if not isinstance(text, str):
        raise ValueError("must be a string like 127.0.0.1:8053")
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not IP:PORT (IPv6 as [addr]:port)")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, port


def hostport_text(host: str, port: int) -> str:
    """HOST:PORT as parse_hostport reads it, and as CoreDNS writes it ([::1]:5354 for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Invalid(ValueError):
    """A check across keys failed; `loc` names the key to blame, below the value checked (pydantic
    would blame the whole section)."""

    def __init__(self, message: str, *loc: str | int) -> None:
        super().__init__(message)
        self.loc = loc


# Checks for single values. Each raises ValueError with the text that follows the key.

def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _flag(value: object) -> bool:
    """Only true or false: pydantic would also take `yes`, `1` or `"off"`."""
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _between(low: int, high: int) -> BeforeValidator:
    """An integer from `low` to `high`. A bool is not one (Python thinks it is)."""
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer from {low} to {high}")
        return value
    return BeforeValidator(check)


def _one_of(options: tuple[str, ...], message: str = "") -> BeforeValidator:
    def check(value: object) -> object:
        if value not in options:
            raise ValueError(message or f"must be one of {', '.join(options)}")
        return value
    return BeforeValidator(check)


def _positive_duration(value: object) -> float:
    seconds = parse_duration(value)
    if seconds is None or seconds <= 0:
        raise ValueError("must be a positive duration such as 30s, 5m or 1h")
    return seconds


def _rate(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError("must be a number >= 0 (0 turns the limit off)")
    return float(value)


def _vault_path(value: object) -> str:
    path = _text(value).strip("/")
    if not _VAULT_PATH_RE.fullmatch(path) or {".", ".."} & set(path.split("/")):
        raise ValueError(f"{path!r} is not a valid Vault path (no empty, . or .. segments)")
    return path


def _base_url(value: object) -> str:
    url = _text(value).rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+", url):
        raise ValueError("must be an http:// or https:// URL without a path")
    return url


def _url(value: object) -> str:
    if not re.fullmatch(r"https?://\S+", _text(value)):
        raise ValueError("must be an http:// or https:// URL")
    return str(value)


def _resolver(value: object) -> str:
    parse_hostport(_text(value))
    return str(value)


def _path(value: object) -> str:
    return _text(os.fspath(value) if isinstance(value, os.PathLike) else value)


def _base(info: ValidationInfo) -> Path:
    """The config file's directory (validated without one: the current directory)."""
    return (info.context or {}).get("base", Path())


def _resolved(path: Path, info: ValidationInfo) -> Path:
    return (_base(info) / path).resolve()


def _unfollowed(path: Path, info: ValidationInfo) -> Path:
    """For files dnsapi writes secrets into: a symlink planted there must be seen (and refused) by
    the writer, not silently followed here."""
    return Path(os.path.abspath(_base(info) / path))


def _or_env(name: str) -> AfterValidator:
    """A secret left out of the file comes from the environment variable `name`, which keeps it
    out of a file that is easily copied around."""
    def fill(value: str | None, info: ValidationInfo) -> str | None:
        return value or (info.context or {}).get("env", {}).get(name) or None
    return AfterValidator(fill)


def _zone_name(value: object) -> str:
    return normalize_name(_text(value), "zone name")


def _label(value: object) -> str:
    label = normalize_name(_text(value), "challenge_label")
    if "." in label:
        raise ValueError("must be a single label")
    return label


def _sha256(value: object) -> str:
    digest = _text(value).lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("must be 64 hex digits (the SHA-256 of the token; `dnsapi hash-token` prints it)")
    return digest


def _patterns(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(p, str) for p in value):
        raise ValueError("must be a non-empty list of name patterns")
    return tuple(normalize_pattern(p) for p in value)


def _origins(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(o, str) and re.fullmatch(r"https?://[^\s/]+", o) for o in value):
        raise ValueError("must be a list of origins such as https://ops.example (scheme://host[:port], "
                         "no path)")
    return tuple(o.lower() for o in value)


def _mounts(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(m, str) and _VAULT_PATH_RE.fullmatch(m.strip("/")) for m in value):
        raise ValueError("must be a non-empty list of PKI mount paths")
    return tuple(dict.fromkeys(m.strip("/") for m in value))


def _thresholds(value: object) -> tuple[float, ...]:
    """Largest first; each is warned about once."""
    seconds = [parse_duration(v) for v in value] if isinstance(value, (list, tuple)) else [None]
    if not all(s is not None and s > 0 for s in seconds):
        raise ValueError("must be a list of durations such as [14d, 3d] (empty: no expiry warnings)")
    return tuple(sorted({s for s in seconds if s}, reverse=True))


def _argv(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) and a for a in value):
        raise ValueError(_ARGV)
    return tuple(value)


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    """The YAML mapping as pairs. A newline would let a value inject a header of its own."""
    pairs = tuple(value.items()) if isinstance(value, dict) else value  # a tuple: built in code
    if not isinstance(pairs, tuple) or not all(
            isinstance(pair, tuple) and len(pair) == 2
            and all(isinstance(s, str) and "\n" not in s for s in pair) for pair in pairs):
        raise ValueError(_HEADERS)
    return pairs


def _sink_env(value: object) -> tuple[tuple[str, str | None], ...]:
    """A command sink's `env:` list: `NAME` passes that variable through from pki-watch's own
    environment, `NAME=value` sets it. Nothing else is inherited (see notify._run_command)."""
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(=.*)?", item, re.S)
            for item in value):
        raise ValueError("must be a list of NAME (passed through) or NAME=value strings")
    return tuple((name, text if sep else None) for name, sep, text in (i.partition("=") for i in value))


def _list_of(message: str, empty: bool = True) -> BeforeValidator:
    """A YAML list (or a tuple, when built in code) whose items are checked one by one."""
    def check(value: object) -> object:
        if not isinstance(value, (list, tuple)) or not (value or empty):
            raise ValueError(message)
        return value
    return BeforeValidator(check)


def _named_sinks(value: object) -> object:
    """A sink without a name is called `<type>-<index>`."""
    if not isinstance(value, list):
        raise ValueError("must be a list of {type, url} or {type: command, command}")
    return [{"name": f"{item.get('type')}-{i}", **item} if isinstance(item, dict) else item
            for i, item in enumerate(value)]


def _distinct(**complaints: str) -> AfterValidator:
    """Refuse the first item that repeats an earlier item's attribute; `complaints` maps each
    attribute to its message (`{}` is the value)."""
    def check(items: tuple[Any, ...]) -> tuple[Any, ...]:
        for attribute, complaint in complaints.items():
            seen: set[object] = set()
            for i, item in enumerate(items):
                value = getattr(item, attribute)
                if value in seen:
                    raise _Invalid(complaint.format(value), i, attribute)
                seen.add(value)
        return items
    return AfterValidator(check)


# The value types the models share.
Text = Annotated[str, BeforeValidator(_text)]
Flag = Annotated[bool, BeforeValidator(_flag)]
Duration = Annotated[float, BeforeValidator(_positive_duration)]  # `30s`, `500ms`, `5m`... in seconds
Rate = Annotated[float, BeforeValidator(_rate)]  # per second; 0: no limit
HostPort = Annotated[tuple[str, int], BeforeValidator(parse_hostport)]
BaseUrl = Annotated[str, BeforeValidator(_base_url)]  # scheme://host[:port], no trailing slash
VaultPath = Annotated[str, BeforeValidator(_vault_path)]
File = Annotated[Path, BeforeValidator(_path), AfterValidator(_resolved)]  # relative: to the file
WrittenFile = Annotated[Path, BeforeValidator(_path), AfterValidator(_unfollowed)]  # same, links kept


def _section() -> Any:
    """A section left out is read as an empty one: its defaults, or its first required key named."""
    return Field(default_factory=dict, validate_default=True)


class _Model(BaseModel):
    """Unknown keys are refused (a typo must not fall back to a default); loaded means final."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AppRoleConfig(_Model):
    role_id: Text | None = None
    role_id_file: WrittenFile | None = None
    secret_id: Annotated[Text | None, _or_env(ENV_APPROLE_SECRET_ID)] = Field(None, validate_default=True,
                                                                              repr=False)
    secret_id_file: WrittenFile | None = None
    mount: VaultPath = "approle"

    _secret_id_sources: ClassVar[str] = (f"secret_id (or the {ENV_APPROLE_SECRET_ID} environment "
                                         "variable) or secret_id_file")

    @model_validator(mode="after")
    def _exactly_one_source_each(self) -> Self:
        if (self.role_id is None) == (self.role_id_file is None):
            raise _Invalid("set exactly one of role_id or role_id_file", "role_id")
        if (self.secret_id is None) == (self.secret_id_file is None):
            raise _Invalid(f"set exactly one of {self._secret_id_sources}", "secret_id")
        return self


def _vault_addrs(value: object) -> tuple[str, ...]:
    values = value if isinstance(value, list | tuple) else [value]
    if not values:
        raise ValueError("must be a URL or a non-empty list of URLs (every node of one cluster)")
    addrs = tuple(_base_url(item) for item in values)
    if len(set(addrs)) != len(addrs):
        raise ValueError("lists a URL twice")
    return addrs


class VaultConfig(_Model):
    """How dnsapi reaches Vault: `addr` is one URL, or every node of one cluster (dnsapi talks to
    whichever is active and keeps retrying through an election for `failover_timeout`)."""

    addrs: Annotated[tuple[str, ...], BeforeValidator(_vault_addrs)] = Field(alias="addr")
    token: Annotated[Text | None, _or_env(ENV_VAULT_TOKEN)] = Field(None, validate_default=True,
                                                                     repr=False)
    token_file: File | None = None
    approle: AppRoleConfig | None = None
    ca_cert: File | None = None
    kv_mount: VaultPath = "secret"
    prefix: VaultPath = "dnsapi"
    timeout: Duration = 10.0
    failover_timeout: Duration = 30.0

    @property
    def addr(self) -> str:
        """The first address: what dnsapi names when it speaks of "Vault" (a cluster's nodes
        all serve the same data)."""
        return self.addrs[0]

    @model_validator(mode="after")
    def _one_login(self, info: ValidationInfo) -> Self:
        given = [key for key in ("token", "token_file", "approle") if getattr(self, key)]
        # None given is fine where the service's secrets are not read (for pki-watch, which logs
        # in as itself); and unknown when a VaultConfig is checked again without a context (as
        # pydantic does when Config is made from the checked parts), so left to the file's check.
        if not given and (info.context is None or not info.context.get("service_secrets", True)):
            return self
        if len(given) != 1:
            raise _Invalid(f"set exactly one of vault.token (or the {ENV_VAULT_TOKEN} environment "
                           "variable), vault.token_file or vault.approle"
                           + (f"; got {', '.join(given)}" if given else ""), "token")
        return self


class ZoneConfig(_Model):
    name: Annotated[str, BeforeValidator(_zone_name)]
    file: File


class TokenConfig(_Model):
    name: Text
    sha256: Annotated[str, BeforeValidator(_sha256)]
    allow: Annotated[tuple[str, ...], BeforeValidator(_patterns)]


TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha1", "hmac-sha224", "hmac-sha384", "hmac-sha512",
                   "hmac-md5")


def _key_name(value: object) -> str:
    return normalize_name(_text(value), "key name")


TSIG_SECRET_LEAST = 16  # bytes (128 bits); tsig-keygen makes one as long as the digest


def _base64(value: str | None) -> str | None:
    if value is not None:
        try:
            secret = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64 (as `tsig-keygen` or `dnssec-keygen` print it)") from None
        if len(secret) < TSIG_SECRET_LEAST:  # (an empty one would let anyone sign)
            raise ValueError(f"is {len(secret)} bytes; a TSIG secret needs at least "
                             f"{TSIG_SECRET_LEAST} (make one with `tsig-keygen -a hmac-sha256`)")
    return value


class TsigKeyConfig(_Model):
    """A TSIG key for the RFC 2136 front door: its secret comes from exactly one of `secret`,
    `secret_file` (read at start) or `secret_env` (an environment variable's name), and never
    appears in a log or in repr()."""

    name: Annotated[str, BeforeValidator(_key_name)]
    algorithm: Annotated[str, _one_of(TSIG_ALGORITHMS)] = "hmac-sha256"
    secret: Annotated[Text | None, AfterValidator(_base64)] = Field(None, repr=False)
    secret_file: File | None = None
    secret_env: Text | None = None
    allow: Annotated[tuple[str, ...], BeforeValidator(_patterns)]

    @model_validator(mode="before")
    @classmethod
    def _read_secret(cls, data: Any, info: ValidationInfo) -> Any:
        """Fill `secret` from the file or the environment, so the rest of dnsapi sees one field."""
        if not isinstance(data, dict):
            return data
        given = [key for key in ("secret", "secret_file", "secret_env") if data.get(key)]
        if len(given) != 1:
            raise _Invalid("set exactly one of secret, secret_file or secret_env", "secret")
        if given != ["secret"] and not (info.context or {}).get("service_secrets", True):
            return data  # (read for pki-watch: the service's secrets are not its to read)
        if given == ["secret_env"]:
            value = (info.context or {}).get("env", {}).get(data["secret_env"])
            if not value:
                raise _Invalid(f"the environment variable {data['secret_env']} is not set", "secret_env")
            return {**data, "secret": value.strip()}
        if given == ["secret_file"]:
            path = _base(info) / _path(data["secret_file"])
            try:
                return {**data, "secret": path.read_text().strip()}
            except OSError as exc:
                raise _Invalid(f"cannot read {path}: {exc.strerror}", "secret_file") from None
        return data


class DnsUpdateConfig(_Model):
    """The RFC 2136 front door: DNS UPDATE signed with TSIG, on UDP and TCP."""

    listen: HostPort
    keys: Annotated[tuple[TsigKeyConfig, ...], _list_of("must be a non-empty list of {name, "
                                                        "algorithm, secret|secret_file|secret_env, "
                                                        "allow}", empty=False),
                    _distinct(name="key name {!r} is used twice")] = Field((), validate_default=True)


class AnswersConfig(_Model):
    """Challenge names served by dnsapi on UDP and TCP, without waiting for a reload poll
    (dnsapi/answers.py, docs/latency.md): transferred to the CoreDNS servers in `notify`
    (coredns/Corefile.push, a `secondary` block), or answered to a CoreDNS that forwards them
    (coredns/Corefile.forward)."""

    listen: HostPort
    # CoreDNS servers whose `secondary` block transfers the challenge names from `listen`: each
    # is sent a NOTIFY when a zone changes, and only their addresses may transfer (AXFR).
    notify: Annotated[tuple[HostPort, ...], _list_of("must be a list of IP:PORT addresses")] = ()

    @model_validator(mode="after")
    def _notify_reachable(self) -> Self:
        """Each target once, not `listen` itself, and of `listen`'s address family: NOTIFY is
        sent from `listen`'s address (the one CoreDNS's `transfer from` names)."""
        family = ipaddress.ip_address(self.listen[0]).version
        for i, target in enumerate(self.notify):
            if target in self.notify[:i] or target == self.listen:
                raise _Invalid("lists an address twice, or answers.listen itself", "notify", i)
            if ipaddress.ip_address(target[0]).version != family:
                raise _Invalid(f"must be IPv{family} addresses, as answers.listen is", "notify", i)
        return self


def _networks(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of networks such as 10.0.0.0/8 or 127.0.0.1/32")
    try:
        return tuple(str(ipaddress.ip_network(v.strip(), strict=False)) for v in value)
    except ValueError:
        raise ValueError("must be a list of networks such as 10.0.0.0/8 or 127.0.0.1/32") from None


class AcmeDnsRegisterConfig(_Model):
    """Who may create acme-dns accounts with POST /register: nobody unless listed here."""

    allow_from: Annotated[tuple[str, ...], BeforeValidator(_networks)] = ()  # source networks
    # bearer tokens; a token may register when its `allow` covers the new account's name
    tokens: Annotated[tuple[TokenConfig, ...], _list_of("must be a list of {name, sha256, allow}"),
                      _distinct(name="token name {!r} is used twice",
                                sha256="the same token hash is listed twice")] = ()


class AcmeDnsConfig(_Model):
    """The acme-dns compatible front door (docs/acme-dns.md): accounts get names `<uuid>.<zone>`."""

    zone: Annotated[str, BeforeValidator(_zone_name)]
    listen: HostPort | None = None  # None: the routes are served on the main listener
    registration: AcmeDnsRegisterConfig = Field(default_factory=dict, validate_default=True,
                                                alias="register")
    # accounts POST /register may make in all (each is a Vault secret and a password hash);
    # `dnsapi acme-dns register`, the operator's, is not held to it
    max_accounts: Annotated[int, _between(1, 100_000)] = 1000


class PkiConfig(_Model):
    """The private CA that `dnsapi vault-init` sets up (see docs/pki.md)."""

    intermediate: Flag = True  # False: the root issues directly (root_mount == mount)
    mount: VaultPath = "pki"  # the issuing mount; it serves ACME
    root_mount: VaultPath = Field(None, validate_default=True)  # left out: see below
    common_name: Text = "dnsapi internal root CA"
    key_type: Annotated[str, _one_of(tuple(_KEY_BITS), "must be ec, rsa or ed25519")] = "ec"
    key_bits: Annotated[int, _between(0, 8192)] = Field(None, validate_default=True)  # left out: by key_type
    root_ttl: Duration = 87600 * _HOUR
    intermediate_ttl: Duration = 43800 * _HOUR
    role: Text = "acme"
    max_ttl: Duration = 720 * _HOUR
    # How clients reach Vault (AIA, CRL and ACME URLs are built from it); loading fills in vault.addr.
    cluster_url: BaseUrl | None = None
    # IP:PORT of a DNS server for the zones; None: dns_servers[0].
    acme_dns_resolver: Annotated[str, BeforeValidator(_resolver)] | None = None
    eab_policy: Annotated[str, _one_of(EAB_POLICIES)] = "not-required"
    crl_expiry: Duration = 72 * _HOUR
    tidy_interval: Duration = 12 * _HOUR
    root_ca_file: WrittenFile = Field(Path("root-ca.pem"), validate_default=True)

    @field_validator("root_mount", mode="before")
    @classmethod
    def _root_mount_default(cls, value: object, info: ValidationInfo) -> object:
        """The root gets a mount of its own, unless it issues directly from `mount`."""
        if value is None:
            return "pki_root" if info.data.get("intermediate") else info.data.get("mount")
        return value

    @field_validator("key_bits", mode="before")
    @classmethod
    def _key_bits_default(cls, value: object, info: ValidationInfo) -> object:
        return _KEY_BITS.get(info.data.get("key_type", ""), 0) if value is None else value

    @model_validator(mode="after")
    def _two_mounts(self) -> Self:
        if self.intermediate and self.root_mount == self.mount:
            raise _Invalid("must differ from pki.mount when intermediate is true", "root_mount")
        return self

    @model_validator(mode="after")
    def _fits_together(self) -> Self:
        """What Vault would refuse only halfway through vault-init (after the KV, policy and
        AppRole steps), or take as "use the default": refused before anything is done."""
        if self.key_bits not in _KEY_SIZES[self.key_type]:
            raise _Invalid(f"must be one of {', '.join(map(str, _KEY_SIZES[self.key_type]))} for "
                           f"key_type {self.key_type}", "key_bits")
        for key in ("root_ttl", "intermediate_ttl", "max_ttl", "crl_expiry"):
            if getattr(self, key) < 1:
                raise _Invalid("must be at least 1s (Vault reads 0 as its default)", key)
        if self.intermediate and self.intermediate_ttl >= self.root_ttl:
            raise _Invalid("must be shorter than root_ttl (Vault will not sign an intermediate "
                           "that outlives its root)", "intermediate_ttl")
        return self


class VaultInitConfig(_Model):
    policy: str
    approle_role: str  # on the mount and with the credential files of vault.approle
    token_ttl: float
    token_max_ttl: float
    pki: PkiConfig


class SinkConfig(_Model):
    """Where pki-watch pushes events. `url` and `secret` are secrets (webhook keys live in the
    URL for WeCom and DingTalk), so only `name` ever appears in logs."""

    type: Annotated[str, _one_of(SINK_TYPES)]  # first: the other keys depend on it
    name: Text
    url: Annotated[str, BeforeValidator(_url)] | None = Field(None, repr=False)  # all but command
    secret: Text | None = Field(None, repr=False)  # dingtalk / feishu: the robot's signing secret
    # webhook: extra headers, e.g. Authorization
    headers: Annotated[tuple[tuple[str, str], ...], BeforeValidator(_headers)] = Field((), repr=False)
    # command: argv; the event arrives as JSON on stdin
    command: Annotated[tuple[str, ...], BeforeValidator(_argv)] = ()
    # command: its environment besides PATH and LANG (a value of None: passed through from
    # pki-watch's own environment)
    env: Annotated[tuple[tuple[str, str | None], ...], BeforeValidator(_sink_env)] = Field((), repr=False)
    timeout: Duration = 10.0

    @model_validator(mode="after")
    def _keys_of_its_type(self) -> Self:
        """A key another type would use is an error, not silently ignored."""
        if self.type == "command":
            if not self.command:
                raise _Invalid(_ARGV, "command")
            if self.url is not None:
                raise _Invalid("a command sink has no url", "url")
        else:
            if self.url is None:
                raise _Invalid("must be an http:// or https:// URL", "url")
            if self.command:
                raise _Invalid("only for type: command", "command")
        if self.secret is not None and self.type not in ("dingtalk", "feishu"):
            raise _Invalid("only dingtalk and feishu sign requests", "secret")
        if self.headers and self.type != "webhook":
            raise _Invalid(_HEADERS, "headers")
        if self.env and self.type != "command":
            raise _Invalid("only for type: command", "env")
        return self


class PkiWatchConfig(_Model):
    # `vault:` with pki-watch's own login (pki_watch.token_file or .approle); None: none set,
    # and pki-watch refuses to run on the service's credentials
    vault: VaultConfig | None
    mounts: tuple[str, ...]
    interval: float
    expiry_warn: tuple[float, ...]  # thresholds in seconds, largest first
    crl_grace: float  # a revocation missing from every CRL for longer than this: stale CRL
    ocsp: bool
    retry_initial: float  # delivery backoff: first retry after this, doubling...
    retry_max: float  # ...up to this
    give_up: float  # an event still undelivered after this long is dropped (logged)
    sinks: tuple[SinkConfig, ...]


class TlsConfig(_Model):
    cert: File
    key: File


class HttpLimits(_Model):
    """How much a connection may hold before dnsapi closes it (see dnsapi/connections.py): slow or
    idle clients must not take descriptors from real ones."""

    request_timeout: Duration = 10.0  # a request's headers and body must arrive within this
    keepalive_timeout: Duration = 15.0  # an idle keep-alive connection is closed after this
    # open connections in all (also kept below the descriptor limit), and from one source address
    max_connections: Annotated[int, _between(1, 1_000_000)] = 900
    max_connections_per_address: Annotated[int, _between(1, 1_000_000)] = 128

    @model_validator(mode="after")
    def _share_within_total(self) -> Self:
        if self.max_connections_per_address > self.max_connections:
            raise _Invalid("must not exceed http.max_connections", "max_connections_per_address")
        return self


class WaitLimits(_Model):
    """`wait: true` requests poll DNS until the record is served: bounded per token and in all."""

    per_token: Annotated[int, _between(1, 100_000)] = 20
    total: Annotated[int, _between(1, 100_000)] = 200

    @model_validator(mode="after")
    def _share_within_total(self) -> Self:
        if self.per_token > self.total:
            raise _Invalid("must not exceed waits.total", "per_token")
        return self


class RefusalLimits(_Model):
    """Refused requests (bad token, bad input) per source address, and how often the audit trail
    sums up the refusals it does not write line by line."""

    per_second: Rate = 5.0
    burst: Annotated[int, _between(1, 1_000_000)] = 20
    audit_interval: Duration = 60.0
    # refusals written in full per interval; the rest are counted
    audit_lines: Annotated[int, _between(0, 1_000_000)] = 100


class Config(_Model):
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
    dns_update: DnsUpdateConfig | None  # None: no RFC 2136 front door
    acme_dns: AcmeDnsConfig | None  # None: no acme-dns front door
    answers: AnswersConfig | None = None  # None: CoreDNS reads challenge records from the file

    @property
    def zone_names(self) -> tuple[str, ...]:
        return tuple(zone.name for zone in self.zones)

    @property
    def account_zone(self) -> str | None:
        """The zone acme-dns accounts' names are in, when acme-dns is on."""
        return self.acme_dns.zone if self.acme_dns is not None else None


# The file's own shape where it nests what the code reads flat.

Zones = Annotated[tuple[ZoneConfig, ...], _list_of("must be a non-empty list of {name, file}", empty=False),
                  _distinct(name="zone {!r} is listed twice", file="{} is used by two zones")]


class _Ttl(_Model):
    max: Annotated[int, _between(1, _MAX_TTL)] = 3600
    min: Annotated[int, _between(0, _MAX_TTL)] = 1
    default: Annotated[int, _between(0, _MAX_TTL)] = 60

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min > self.max:
            raise _Invalid(f"must be an integer from 0 to {self.max}", "min")
        if not self.min <= self.default <= self.max:
            raise _Invalid(f"must be an integer from {self.min} to {self.max}", "default")
        return self


class _RateLimit(_Model):
    per_second: Rate = 50.0
    burst: Annotated[int, _between(1, 1_000_000)] = 200


class _Audit(_Model):
    file: File | None = None


class _AppRoleRole(_Model):
    """vault_init.approle: the role vault-init creates for dnsapi."""

    role: Text = "dnsapi"
    token_ttl: Duration = _HOUR
    token_max_ttl: Duration = _DAY

    @model_validator(mode="after")
    def _ttls(self) -> Self:
        if not 1 <= self.token_ttl <= self.token_max_ttl:
            raise _Invalid("must be from 1s to token_max_ttl", "token_ttl")
        return self


class _VaultInitFile(_Model):
    """The `vault_init` section, read by `dnsapi vault-init`."""

    policy: Text = "dnsapi"
    approle: _AppRoleRole = _section()
    pki: PkiConfig = _section()

    def config(self, vault_addr: str) -> VaultInitConfig:
        pki = self.pki if self.pki.cluster_url else self.pki.model_copy(update={"cluster_url": vault_addr})
        return VaultInitConfig(policy=self.policy, approle_role=self.approle.role,
                               token_ttl=self.approle.token_ttl, token_max_ttl=self.approle.token_max_ttl,
                               pki=pki)


class _Retry(_Model):
    initial: Duration = 5.0
    max: Duration = 5 * _MINUTE
    give_up: Duration = 7 * _DAY

    @model_validator(mode="after")
    def _order(self) -> Self:
        if self.initial > self.max:
            raise _Invalid("must not be longer than retry.max", "initial")
        return self


class _PkiWatchAppRole(AppRoleConfig):
    """pki_watch.approle: pki-watch's own AppRole. Its secret_id never comes from the environment,
    which holds the service's (DNSAPI_VAULT_SECRET_ID)."""

    secret_id: Text | None = Field(None, repr=False)
    _secret_id_sources: ClassVar[str] = "secret_id or secret_id_file"


class _PkiWatchFile(_Model):
    """The `pki_watch` section, read by `dnsapi pki-watch`. It logs in to Vault as itself
    (`token_file` or `approle`): the service's credentials may write challenge records, which a
    watcher must not be able to do."""

    token_file: File | None = None
    approle: _PkiWatchAppRole | None = None
    mounts: Annotated[tuple[str, ...], BeforeValidator(_mounts)] | None = None  # None: vault-init's
    interval: Duration = 60.0
    expiry_warn: Annotated[tuple[float, ...], BeforeValidator(_thresholds)] = (14 * _DAY, 3 * _DAY)
    crl_grace: Duration = 20 * _MINUTE
    ocsp: Flag = True
    retry: _Retry = _section()
    sinks: Annotated[tuple[SinkConfig, ...], BeforeValidator(_named_sinks),
                     _distinct(name="sink name {!r} is used twice")] = ()

    @model_validator(mode="after")
    def _one_login(self) -> Self:
        if self.token_file is not None and self.approle is not None:
            raise _Invalid("set one of pki_watch.token_file or pki_watch.approle, not both", "token_file")
        return self

    def config(self, vault: VaultConfig, pki: PkiConfig) -> PkiWatchConfig:
        created = (pki.root_mount, pki.mount) if pki.intermediate else (pki.mount,)
        own = None
        if self.token_file is not None or self.approle is not None:
            own = vault.model_copy(update={"token": None, "token_file": self.token_file,
                                           "approle": self.approle})
        return PkiWatchConfig(vault=own, mounts=self.mounts or created, interval=self.interval,
                              expiry_warn=self.expiry_warn, crl_grace=self.crl_grace, ocsp=self.ocsp,
                              retry_initial=self.retry.initial, retry_max=self.retry.max,
                              give_up=self.retry.give_up, sinks=self.sinks)


class _File(_Model):
    """The whole file, read by `dnsapi serve`; keys in the order they are checked."""

    listen: HostPort = ("127.0.0.1", 8053)
    tls: TlsConfig | None = None
    vault: VaultConfig = _section()
    zones: Zones = Field((), validate_default=True)  # left out: refused as an empty list
    dns_servers: Annotated[tuple[HostPort, ...], _list_of("must be a list of IP:PORT strings")] = ()
    challenge_label: Annotated[str, BeforeValidator(_label)] = "_acme-challenge"
    open_on_loopback: Flag = False
    tokens: Annotated[tuple[TokenConfig, ...], _list_of(_TOKENS_NEEDED),
                      _distinct(name="token name {!r} is used twice",
                                sha256="the same token hash is listed twice")] = ()
    rate_limit: _RateLimit = _section()
    refusals: RefusalLimits = _section()
    audit: _Audit = _section()
    http: HttpLimits = _section()
    waits: WaitLimits = _section()
    allowed_origins: Annotated[tuple[str, ...], BeforeValidator(_origins)] = ()
    ttl: _Ttl = _section()
    vault_init: _VaultInitFile = _section()
    reconcile_interval: Duration = 10.0
    watch_interval: Duration = 0.5
    propagation_timeout: Duration = 60.0
    max_records_per_zone: Annotated[int, _between(1, 100_000)] = 2000
    max_records_per_token: Annotated[int, _between(1, 100_000)] = 100
    max_body_bytes: Annotated[int, _between(256, 1 << 20)] = 16384
    max_age: Duration = _HOUR
    pki_watch: _PkiWatchFile = _section()
    dns_update: DnsUpdateConfig | None = None
    acme_dns: AcmeDnsConfig | None = None
    answers: AnswersConfig | None = None

    @model_validator(mode="after")
    def _listeners_apart(self) -> Self:
        """No two listeners on one port at overlapping addresses (the same one, or a wildcard:
        Linux refuses a listener beside 0.0.0.0 or :: on the port): the second would fail to
        bind only at start."""
        listeners: list[tuple[tuple[str, ...], tuple[str, int]]] = [(("listen",), self.listen)]
        for section in ("dns_update", "acme_dns", "answers"):
            listen = getattr(getattr(self, section), "listen", None)
            if listen is not None:
                listeners.append(((section, "listen"), listen))
        for i, (key, (host, port)) in enumerate(listeners):
            for earlier, (other_host, other_port) in listeners[:i]:
                if port == other_port and (host == other_host or _wildcard(host) or _wildcard(other_host)):
                    raise _Invalid(f"{hostport_text(host, port)} takes the port {'.'.join(earlier)} "
                                   f"listens on ({hostport_text(other_host, other_port)})", *key)
        return self

    @model_validator(mode="after")
    def _acme_dns_fits(self) -> Self:
        """The accounts' zone must be one dnsapi writes (a zone of its own or below one)."""
        if self.acme_dns is None:
            return self
        if not any(is_below(self.acme_dns.zone, zone.name) for zone in self.zones):
            raise _Invalid(f"{self.acme_dns.zone} is not one of the zones, nor below one: list its "
                           "zone file under zones, or use a name below a listed zone",
                           "acme_dns", "zone")
        return self

    @model_validator(mode="after")
    def _patterns_name_the_zones(self) -> Self:
        """An `allow` pattern that covers no name in any zone can never allow anything: a typo
        (another zone, dev.lcoal) that would show only as 403s."""
        holders: list[tuple[tuple[str | int, ...], tuple[str, ...]]] = [
            (("tokens", i), token.allow) for i, token in enumerate(self.tokens)]
        if self.dns_update is not None:
            holders += [(("dns_update", "keys", i), key.allow) for i, key in enumerate(self.dns_update.keys)]
        if self.acme_dns is not None:
            holders += [(("acme_dns", "register", "tokens", i), token.allow)
                        for i, token in enumerate(self.acme_dns.registration.tokens)]
        zones = [zone.name for zone in self.zones]
        for loc, patterns in holders:
            for j, pattern in enumerate(patterns):
                name, wildcard = pattern.removeprefix("*."), pattern.startswith("*.")
                if not any(is_below(name, zone) or (wildcard and is_below(zone, name)) for zone in zones):
                    raise _Invalid(f"{pattern} covers no name in the zones ({', '.join(zones)})",
                                   *loc, "allow", j)
        return self

    @model_validator(mode="after")
    def _tokens_or_open_loopback(self) -> Self:
        """Without tokens anyone who reaches the listener may write records: only when asked
        for, and only on loopback."""
        if self.open_on_loopback and not ipaddress.ip_address(self.listen[0]).is_loopback:
            raise _Invalid(f"only allowed when listen is a loopback address, not {self.listen[0]}",
                           "open_on_loopback")
        if not self.tokens and not self.open_on_loopback:
            raise _Invalid(_TOKENS_NEEDED, "tokens")
        return self

    def config(self) -> Config:
        vault_init = self.vault_init.config(self.vault.addr)
        return Config(
            listen_host=self.listen[0], listen_port=self.listen[1], tls=self.tls, vault=self.vault,
            zones=self.zones, dns_servers=self.dns_servers, tokens=self.tokens,
            challenge_label=self.challenge_label,
            default_ttl=self.ttl.default, min_ttl=self.ttl.min, max_ttl=self.ttl.max,
            reconcile_interval=self.reconcile_interval, watch_interval=self.watch_interval,
            propagation_timeout=self.propagation_timeout, max_records_per_zone=self.max_records_per_zone,
            max_records_per_token=self.max_records_per_token, max_body_bytes=self.max_body_bytes,
            max_age=self.max_age, rate_limit=self.rate_limit.per_second, rate_burst=self.rate_limit.burst,
            refusals=self.refusals, http=self.http, waits=self.waits, allowed_origins=self.allowed_origins,
            audit_file=self.audit.file, open_on_loopback=self.open_on_loopback, vault_init=vault_init,
            pki_watch=self.pki_watch.config(self.vault, vault_init.pki), dns_update=self.dns_update,
            acme_dns=self.acme_dns, answers=self.answers,
        )


class _ZonesOnly(BaseModel):
    zones: Zones = Field((), validate_default=True)


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None,
         service_secrets: bool = True) -> Config:
    """Read and validate the YAML file at `path`; relative file paths in it are relative to it.
    `service_secrets=False` (pki-watch): the service's secrets are neither needed nor read, its
    Vault login and TSIG keys' files and environment variables, which pki-watch is not given."""
    env = dict(os.environ) if env is None else env
    path = Path(path)
    return from_dict(_read_yaml(path), base=path.parent.resolve(), env=env, service_secrets=service_secrets)


def load_zones(path: str | os.PathLike[str]) -> tuple[ZoneConfig, ...]:
    """Only the `zones` of the file at `path`, for `dnsapi zone edit`: the Vault credentials may
    live in the service's environment file, which an operator's shell lacks."""
    path = Path(path)
    raw = _read_yaml(path)
    return _zones(raw.get("zones") if isinstance(raw, dict) else None, path.parent.resolve())


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        # Where and what, never the snippet of the line: it may hold a secret (a token, a
        # webhook key), and this message goes to the journal and to `dnsapi check`.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        raise ConfigError(f"config: {path} is not valid YAML: {problem}{where}") from None


def literal_secrets(path: str | os.PathLike[str]) -> list[str]:
    """The keys of the file at `path` that hold a secret in the file itself (not in a file it
    names, nor in the environment): the service's and pki-watch's Vault logins and the TSIG keys.
    pki-watch reads the file too, so a secret in it is readable by both."""
    raw = _read_yaml(Path(path))
    if not isinstance(raw, dict):
        return []

    def section(*keys: str) -> dict:
        value: Any = raw
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value if isinstance(value, dict) else {}

    logins = {"vault.token": section("vault").get("token"),
              "vault.approle.secret_id": section("vault", "approle").get("secret_id"),
              "pki_watch.approle.secret_id": section("pki_watch", "approle").get("secret_id")}
    found = [name for name, value in logins.items() if value]
    keys = section("dns_update").get("keys")
    for index, key in enumerate(keys if isinstance(keys, list) else []):
        if isinstance(key, dict) and key.get("secret"):
            found.append(f"dns_update.keys[{index}].secret")
    return found


def from_dict(raw: Any, base: Path, env: dict[str, str], service_secrets: bool = True) -> Config:
    """Validate a parsed file: relative paths are relative to `base`, secrets it leaves out come
    from `env`. An empty file is an empty mapping (so the first required key gets named)."""
    return _validate(_File, {} if raw is None else raw, base, env, service_secrets).config()


def _zones(raw: Any, base: Path) -> tuple[ZoneConfig, ...]:
    """Only the `zones` list of a file (see load_zones)."""
    return _validate(_ZonesOnly, {"zones": raw}, base, {}).zones


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], raw: Any, base: Path, env: dict[str, str],
              service_secrets: bool = True) -> _M:
    try:
        return model.model_validate(_without_blanks(raw), context={"base": base, "env": env,
                                                                   "service_secrets": service_secrets})
    except ValidationError as exc:
        raise _config_error(exc) from None


def _without_blanks(value: Any) -> Any:
    """A key set to null (YAML's `key:` with nothing after it) or to "" is a key left out: its
    default applies, or the environment's secret."""
    if isinstance(value, dict):
        return {str(key): _without_blanks(item) for key, item in value.items()
                if item is not None and item != ""}
    if isinstance(value, list):
        return [_without_blanks(item) for item in value]
    return value


_MESSAGES = {"missing": "is required", "extra_forbidden": "unknown setting",
             "model_type": "must be a mapping"}


MAX_PROBLEMS = 5  # config problems named in one error, on one line (it goes to the journal)


def _config_error(exc: ValidationError) -> ConfigError:
    """Each problem as `dotted.key[0].name: message`, the key as the operator wrote it, so one
    edit can fix them all (a mistyped key is then named beside the required one it stood for)."""
    problems = [_problem(error) for error in exc.errors()]
    more = f"; and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
    return ConfigError("; ".join(problems[:MAX_PROBLEMS]) + more)


def _problem(error: Any) -> str:
    cause = error.get("ctx", {}).get("error")
    loc = (*error["loc"], *cause.loc) if isinstance(cause, _Invalid) else error["loc"]
    key = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    message = _MESSAGES.get(error["type"]) or (str(cause) if cause else error["msg"])
    return f"{key or 'config'}: {message}"
