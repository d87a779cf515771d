"""vault-init's pure parts: state comparison, the policy text, and its config section."""

import copy
from pathlib import Path

import pytest

from dnsapi import config as cfg
from dnsapi.errors import ConfigError
from dnsapi.vault_init import InitError, VaultInit, differences, render_policy

from .test_config import BASE


def test_differences_normalises_durations_and_lists():
    current = {"max_ttl": 2592000, "allowed_domains": ["b", "a"], "enabled": True, "extra": 1}
    assert differences({"max_ttl": "720h", "allowed_domains": ["a", "b"], "enabled": True},
                       current, durations=("max_ttl",)) == []
    assert differences({"max_ttl": "721h", "enabled": False}, current,
                       durations=("max_ttl",)) == ["max_ttl", "enabled"]
    assert differences({"expiry": "72h"}, {"expiry": "259200s"}, durations=("expiry",)) == []
    assert differences({"a": 1}, None) == ["a"]
    assert differences({"headers": ["X"]}, {}) == ["headers"]


def test_policy_covers_only_the_prefix():
    text = render_policy("kv", "team/dnsapi")
    assert 'path "kv/data/team/dnsapi/*"' in text and 'path "kv/metadata/team/dnsapi/*"' in text
    assert text.count("path ") == 2


def load(vault_init=None, approle=True):
    data = copy.deepcopy(BASE)
    if approle:
        del data["vault"]["token"]
        data["vault"]["approle"] = {"role_id_file": "r", "secret_id_file": "s"}
    if vault_init is not None:
        data["vault_init"] = vault_init
    return cfg.from_dict(data, base=Path("/etc/dnsapi"), env={})


def test_vault_init_defaults():
    pki = load().vault_init.pki
    assert (pki.root_mount, pki.mount, pki.intermediate) == ("pki_root", "pki", True)
    assert (pki.key_type, pki.key_bits) == ("ec", 384)
    assert pki.cluster_url == "http://127.0.0.1:8200"
    assert pki.root_ca_file == Path("/etc/dnsapi/root-ca.pem")
    root_only = load({"pki": {"intermediate": False}}).vault_init.pki
    assert root_only.root_mount == root_only.mount == "pki"


@pytest.mark.parametrize("section, message", [
    ({"pki": {"key_type": "dsa"}}, "vault_init.pki.key_type: must be ec, rsa or ed25519"),
    ({"pki": {"eab_policy": "sometimes"}}, "vault_init.pki.eab_policy: must be one of"),
    ({"pki": {"acme_dns_resolver": "dns.local:53"}}, "vault_init.pki.acme_dns_resolver: 'dns.local'"),
    ({"pki": {"root_mount": "pki"}}, "vault_init.pki.root_mount: must differ from pki.mount"),
    ({"pki": {"intermediate": "yes"}}, "vault_init.pki.intermediate: must be true or false"),
    ({"approle": {"token_ttl": "soon"}}, "vault_init.approle.token_ttl: must be a positive duration"),
    ({"polcy": "x"}, "vault_init.polcy: unknown setting"),
])
def test_vault_init_errors_name_the_key(section, message):
    with pytest.raises(ConfigError) as info:
        load(section)
    assert str(info.value).startswith(message)


def test_vault_init_needs_approle_files_not_literals():
    config = load()
    literal = cfg.from_dict({**copy.deepcopy(BASE), "vault": {
        "addr": "http://127.0.0.1:8200", "approle": {"role_id": "r", "secret_id": "s"}}},
        base=Path("/etc/dnsapi"), env={})
    with pytest.raises(InitError, match="vault.approle"):
        VaultInit(literal, client=None)
    assert VaultInit(config, client=None).intermediate


def test_without_approle_the_step_is_skipped():
    changes = []
    init = VaultInit(load(approle=False), client=None, report=changes.append)
    init.approle()
    assert [(c.status, c.what) for c in changes] == [("skipped", "AppRole")]
