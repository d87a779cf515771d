"""Configuration loading: defaults, environment secrets, and errors that name the key."""

import copy
from pathlib import Path

import pytest
import yaml

from dnsapi import config as cfg
from dnsapi.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "dnsapi.yaml"
BASE = {
    "listen": "127.0.0.1:8053",
    "vault": {"addr": "http://127.0.0.1:8200", "token": "t", "kv_mount": "secret", "prefix": "dnsapi"},
    "zones": [{"name": "dev.local", "file": "db.dev.local"}],
    "dns_servers": ["127.0.0.1:1053"],
    "tokens": [{"name": "acme", "sha256": "a" * 64, "allow": ["*.dev.local"]}],
}


def load(data, env=None):
    return cfg.from_dict(data, base=Path("/etc/dnsapi"), env=env or {})


def changed(path: str, value):
    """BASE with the dotted `path` set to `value` (or removed when value is ...)."""
    data = copy.deepcopy(BASE)
    keys = path.replace("]", "").replace("[", ".").split(".")
    target = data
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return data


def test_the_shipped_example_loads():
    config = cfg.load(EXAMPLE, env={"DNSAPI_VAULT_TOKEN": "x"})
    assert config.zones[0].file == EXAMPLE.parent / "db.dev.local"
    assert config.dns_servers == (("127.0.0.1", 1053),)


def test_defaults_and_relative_paths():
    config = load(BASE)
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8053)
    assert config.zones[0].file == Path("/etc/dnsapi/db.dev.local")
    assert config.challenge_label == "_acme-challenge"
    assert (config.default_ttl, config.min_ttl, config.max_ttl) == (60, 1, 3600)
    assert config.reconcile_interval == 10
    assert config.tokens[0].allow == ("*.dev.local",)


def test_vault_token_from_environment():
    config = load(changed("vault.token", ...), env={"DNSAPI_VAULT_TOKEN": "from-env"})
    assert config.vault.token == "from-env"


def test_approle_with_files():
    data = changed("vault.token", ...)
    data["vault"]["approle"] = {"role_id_file": "role-id", "secret_id_file": "/run/secret-id"}
    approle = load(data).vault.approle
    assert approle.role_id_file == Path("/etc/dnsapi/role-id")
    assert approle.secret_id_file == Path("/run/secret-id")
    assert approle.mount == "approle"


@pytest.mark.parametrize("path, value, message", [
    ("listen", "localhost:8053", "listen: 'localhost' is not an IP address"),
    ("listen", "127.0.0.1", "listen: '127.0.0.1' is not IP:PORT"),
    ("listen", "127.0.0.1:70000", "listen: port 70000 is out of range"),
    ("vault", ..., "vault.addr: is required"),
    ("vault.addr", "127.0.0.1:8200", "vault.addr: must be an http:// or https:// URL"),
    ("vault.addr", ..., "vault.addr: is required"),
    ("vault.token", ..., "vault.token: set exactly one of"),
    ("vault.token_file", "tok", "vault.token: set exactly one of vault.token"),
    ("vault.kv_mount", "bad mount", "vault.kv_mount: 'bad mount' is not a valid Vault path"),
    ("vault.prefix", 5, "vault.prefix: must be a string"),
    ("vault.timeout", "soon", "vault.timeout: must be a positive duration"),
    ("vault.tokn", "x", "vault.tokn: unknown setting"),
    ("zones", [], "zones: must be a non-empty list"),
    ("zones", ..., "zones: must be a non-empty list"),
    ("zones.0.name", "bad..zone", "zones[0].name: zone name has an empty label"),
    ("zones.0.file", ..., "zones[0].file: is required"),
    ("zones.0.extra", 1, "zones[0].extra: unknown setting"),
    ("dns_servers", "127.0.0.1:53", "dns_servers: must be a list"),
    ("dns_servers", ["ns1:53"], "dns_servers[0]: 'ns1' is not an IP address"),
    ("dns_servers", ["127.0.0.1"], "dns_servers[0]: '127.0.0.1' is not IP:PORT"),
    ("tokens", ..., "tokens: must be a non-empty list"),
    ("tokens.0.sha256", "abc", "tokens[0].sha256: must be 64 hex digits"),
    ("tokens.0.sha256", ..., "tokens[0].sha256: is required"),
    ("tokens.0.allow", [], "tokens[0].allow: must be a non-empty list"),
    ("tokens.0.allow", ["*.dev..local"], "tokens[0].allow: pattern has an empty label"),
    ("tokens.0.name", ..., "tokens[0].name: is required"),
    ("challenge_label", "a.b", "challenge_label: must be a single label"),
    ("ttl", {"default": 0}, "ttl.default: must be an integer from 1 to 3600"),
    ("ttl", {"max": "1h"}, "ttl.max: must be an integer"),
    ("reconcile_interval", "-1s", "reconcile_interval: must be a positive duration"),
    ("max_records_per_zone", 0, "max_records_per_zone: must be an integer from 1"),
    ("lisen", "127.0.0.1:1", "lisen: unknown setting"),
    ("vault.prefix", "a/../../sys", "vault.prefix: 'a/../../sys' is not a valid Vault path"),
    ("tokens.0.allow", ["*.dev.lcoal"], "tokens[0].allow[0]: *.dev.lcoal covers no name in the zones "
                                        "(dev.local)"),
    ("tokens.0.allow", ["*.dev.local", "local"], "tokens[0].allow[1]: local covers no name"),
    ("vault.kv_mount", "..", "vault.kv_mount: '..' is not a valid Vault path"),
    ("answers", {"listen": "127.0.0.1:5354", "notify": "127.0.0.1:1053"},
     "answers.notify: must be a list of IP:PORT addresses"),
    ("answers", {"listen": "127.0.0.1:5354", "notify": ["[::1]:1053"]},
     "answers.notify[0]: must be IPv4 addresses, as answers.listen is"),
    ("answers", {"listen": "127.0.0.1:5354", "notify": ["127.0.0.1:1053", "127.0.0.1:1053"]},
     "answers.notify[1]: lists an address twice, or answers.listen itself"),
    ("answers", {"listen": "127.0.0.1:5354", "notify": ["127.0.0.1:5354"]},
     "answers.notify[0]: lists an address twice, or answers.listen itself"),
    ("answers", {"listen": "[::1]:5354", "notify": ["[0:0::1]:5354"]},  # one address, two spellings
     "answers.notify[0]: lists an address twice, or answers.listen itself"),
])
def test_errors_name_the_key(path, value, message):
    with pytest.raises(ConfigError) as info:
        load(changed(path, value))
    assert str(info.value).startswith(message)


def test_duplicates_are_refused():
    data = copy.deepcopy(BASE)
    data["zones"].append({"name": "DEV.local.", "file": "other"})
    with pytest.raises(ConfigError, match=r"zones\[1\].name: zone 'dev.local' is listed twice"):
        load(data)
    data = copy.deepcopy(BASE)
    data["tokens"].append({"name": "acme", "sha256": "b" * 64, "allow": ["x.dev.local"]})
    with pytest.raises(ConfigError, match=r"tokens\[1\].name: token name 'acme' is used twice"):
        load(data)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        cfg.load(bad)
    bad.write_text(yaml.safe_dump(["a", "list"]))
    with pytest.raises(ConfigError, match="config: must be a mapping"):
        cfg.load(bad)


@pytest.mark.parametrize("line", ["  token: hvs.SUPERSECRETVALUE: x",
                                  '    url: "https://qyapi.weixin.qq.com/send?key=SUPERSECRETVALUE'])
def test_a_yaml_error_says_where_without_quoting_the_line(tmp_path, line):
    """The message goes to the journal and `dnsapi check`; the broken line may hold a secret."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"vault:\n  addr: http://127.0.0.1:8200\n{line}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML: .* \(line 3, column \d+\)") as raised:
        cfg.load(bad)
    assert "SUPERSECRETVALUE" not in str(raised.value)


@pytest.mark.parametrize("text, seconds", [("30", 30), (30, 30), ("500ms", 0.5), ("5m", 300),
                                           ("1h", 3600), ("2d", 172800), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert cfg.parse_duration(text) == seconds


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "99999999999999999999d", -float("inf")])
def test_no_duration_or_rate_is_endless_or_overflows(value):
    """`reconcile_interval: .nan` would sleep for ever (reconciling never again) and a timeout of
    1e20 s overflows the socket's: refused with the key's name, like any other bad value."""
    assert cfg.parse_duration(value) is None
    with pytest.raises(ConfigError, match="reconcile_interval: must be a positive duration"):
        load(changed("reconcile_interval", value))
    if not isinstance(value, str):
        with pytest.raises(ConfigError, match="rate_limit.per_second: must be a number"):
            load(changed("rate_limit", {"per_second": value}))


@pytest.mark.parametrize("section, listen, clash", [
    ("dns_update", "127.0.0.1:8053", "dns_update.listen: 127.0.0.1:8053 takes the port listen listens on"),
    ("answers", "0.0.0.0:8053", "answers.listen: 0.0.0.0:8053 takes the port listen listens on"),
    ("acme_dns", "[::]:8053", "acme_dns.listen: [::]:8053 takes the port listen listens on"),
    ("dns_update", "127.0.0.2:8053", "dns_update.listen: 127.0.0.2:8053 takes the port listen listens on"),
    ("dns_update", "127.0.0.1:5353", None)])
def test_two_listeners_on_one_port_are_refused_before_start(section, listen, clash):
    """Else the second fails to bind only at start (one address, or a wildcard beside any)."""
    data = copy.deepcopy(BASE)
    data["listen"] = "0.0.0.0:8053" if listen == "127.0.0.2:8053" else "127.0.0.1:8053"
    data[section] = {"listen": listen, **({"zone": "acme.dev.local"} if section == "acme_dns" else {}),
                     **({"keys": [{"name": "k", "algorithm": "hmac-sha256", "secret": "a" * 24,
                                   "allow": ["*.dev.local"]}]} if section == "dns_update" else {})}
    if clash is None:
        load(data)
        return
    with pytest.raises(ConfigError) as info:
        load(data)
    assert str(info.value).startswith(clash)


def test_every_problem_is_named_in_one_line():
    """One edit can fix them all: here the mistyped key beside the one it stood for."""
    data = copy.deepcopy(BASE)
    data["vault"]["addrs"] = data["vault"].pop("addr")
    data["ttl"] = {"default": 0}
    with pytest.raises(ConfigError) as info:
        load(data)
    problems = str(info.value).split("; ")
    assert {"vault.addr: is required", "vault.addrs: unknown setting"} <= set(problems)
    assert any(p.startswith("ttl.default:") for p in problems) and "\n" not in str(info.value)


def test_an_rfc2136_key_or_acme_dns_token_allowing_no_zone_is_refused():
    key = {"name": "k", "secret": "a" * 24, "allow": ["*.example.com"]}
    with pytest.raises(ConfigError, match=r"^dns_update.keys\[0\].allow\[0\]: \*.example.com covers no"):
        load(changed("dns_update", {"listen": "127.0.0.1:5353", "keys": [key]}))
    token = {"name": "r", "sha256": "c" * 64, "allow": ["acme.example.com"]}
    with pytest.raises(ConfigError, match=r"^acme_dns.register.tokens\[0\].allow\[0\]: acme.example.com"):
        load(changed("acme_dns", {"zone": "acme.dev.local", "register": {"tokens": [token]}}))


def test_an_allow_pattern_above_a_zone_covers_its_names():
    data = copy.deepcopy(BASE)
    data["tokens"][0]["allow"] = ["*.local", "www.dev.local"]
    assert load(data).tokens[0].allow == ("*.local", "www.dev.local")


def test_ipv6_listen():
    assert load(changed("listen", "[::1]:8053")).listen_host == "::1"


def test_literal_secrets_names_the_keys_that_hold_one_in_the_file(tmp_path):
    """What `dnsapi check` lists when pki-watch, which reads the file too, is configured."""
    path = tmp_path / "dnsapi.yaml"
    path.write_text(yaml.safe_dump({
        "vault": {"addr": "http://127.0.0.1:8200", "token": "t",
                  "approle": {"role_id": "r", "secret_id": "s"}},
        "pki_watch": {"approle": {"role_id_file": "r", "secret_id": "s"}},
        "dns_update": {"keys": [{"name": "a", "secret_file": "f"}, {"name": "b", "secret": "x"}]}}))
    assert cfg.literal_secrets(path) == ["vault.token", "vault.approle.secret_id",
                                         "pki_watch.approle.secret_id", "dns_update.keys[1].secret"]
    path.write_text(yaml.safe_dump({"vault": {"addr": "http://127.0.0.1:8200", "token_file": "t"},
                                    "dns_update": {"keys": [{"name": "a", "secret_env": "E"}]}}))
    assert cfg.literal_secrets(path) == []
