"""vault-init's parts that need no Vault: state comparison, the policy text, its config section,
the files it writes (against the symlink attacks of the review) and what it asks of the PKI role
and ACME (against a stand-in client)."""

import copy
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hvac.exceptions
import pytest

from dnsapi import config as cfg
from dnsapi.errors import ConfigError
from dnsapi.pki.vault_init import (
    ACME_REQUEST_HEADERS,
    ACME_RESPONSE_HEADERS,
    OPENBAO_AUDIT_FILE,
    InitError,
    VaultInit,
    audit_stanza,
    differences,
    render_pki_watch_policy,
    render_policy,
)

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
    assert 'path "kv/data/team/dnsapi/zones/*"' in text and 'path "kv/metadata/team/dnsapi/zones/*"' in text
    assert 'path "kv/data/team/dnsapi/pki-watch/*" {\n  capabilities = ["deny"]' in text
    assert 'path "kv/metadata/team/dnsapi/pki-watch/*" {\n  capabilities = ["deny"]' in text
    assert text.count("path ") == 6


def test_pki_watch_policy_lists_certificates_and_keeps_its_state_nothing_else():
    text = render_pki_watch_policy("kv", "team/dnsapi", ("pki",))
    paths = re.findall(r'path "([^"]+)" \{\n  capabilities = (\[[^]]*\])', text)
    assert paths == [("pki/certs", '["list"]'), ("pki/certs/detailed", '["list"]'),
                     ("pki/certs/revoked", '["list"]'),
                     ("kv/data/team/dnsapi/pki-watch/state", '["create", "read", "update"]')]


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
    # what Vault would refuse only after the KV, policy and AppRole steps, or read as "default"
    ({"pki": {"key_type": "ec", "key_bits": 7}}, "vault_init.pki.key_bits: must be one of 224, 256"),
    ({"pki": {"key_type": "rsa", "key_bits": 384}}, "vault_init.pki.key_bits: must be one of 2048"),
    ({"pki": {"root_ttl": "1h"}}, "vault_init.pki.intermediate_ttl: must be shorter than root_ttl"),
    ({"pki": {"max_ttl": "500ms"}}, "vault_init.pki.max_ttl: must be at least 1s"),
    ({"approle": {"token_ttl": "2d"}}, "vault_init.approle.token_ttl: must be from 1s to token_max_ttl"),
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
    assert VaultInit(config, client=None).pki.intermediate  # (files: accepted)


def test_without_approle_the_step_is_skipped():
    changes = []
    init = VaultInit(load(approle=False), client=None, report=changes.append)
    init.approle()
    assert [(c.status, c.what) for c in changes] == [("skipped", "AppRole"), ("skipped", "pki-watch AppRole")]
    assert "the dnsapi policy" in changes[0].detail and "dnsapi-pki-watch" not in changes[0].detail
    assert "pki_watch.approle is not set" in changes[1].detail


def test_the_service_and_pki_watch_get_a_role_each_with_one_policy(tmp_path):
    """The review's finding: one role held both policies, so a stolen pki-watch secret_id could
    write challenge records. Each role now has its own policy and its own credential files."""
    data = copy.deepcopy(BASE)
    del data["vault"]["token"]
    data["vault"]["approle"] = {"role_id_file": "creds/role-id", "secret_id_file": "creds/secret-id"}
    data["pki_watch"] = {"approle": {"role_id_file": "watch/role-id", "secret_id_file": "watch/secret-id"}}
    vault = FakeVault({"auth/approle/role/dnsapi-pki-watch/role-id": {"role_id": "watch-role-id"}})
    changes: list = []
    VaultInit(cfg.from_dict(data, base=tmp_path, env={}), vault, report=changes.append).approle()
    roles = {path: body["token_policies"] for path, body in vault.writes if "token_policies" in body}
    assert roles == {"auth/approle/role/dnsapi": ["dnsapi"],
                     "auth/approle/role/dnsapi-pki-watch": ["dnsapi-pki-watch"]}
    assert (tmp_path / "watch" / "role-id").read_text() == "watch-role-id\n"
    assert (tmp_path / "watch" / "secret-id").read_text() == SECRET_ID + "\n"
    assert (tmp_path / "creds" / "role-id").read_text() == ROLE_ID + "\n"
    assert "created AppRole role dnsapi-pki-watch" in [f"{c.status} {c.what}" for c in changes]

    literal = copy.deepcopy(data)
    literal["pki_watch"]["approle"] = {"role_id": "r", "secret_id": "s"}
    with pytest.raises(InitError, match=r"^pki_watch.approle: vault-init writes"):
        VaultInit(cfg.from_dict(literal, base=tmp_path, env={}), client=None)


ROLE_ID, SECRET_ID = "the-role-id", "the-secret-id"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBroot\n-----END CERTIFICATE-----"
PRECIOUS = "an unrelated file\n"
# Names a temp file next to NAME could predictably have; the old code used the first.
PREDICTABLE = (".{}.tmp", "{}.tmp", ".{}.new", "{}.new", ".{}", "{}~")


class FakeVault:
    """Just enough of hvac.Client for single steps: paths hold data, every write is recorded and
    stored; the AppRole exists with a role_id, no secret_id is valid and each request mints one."""

    def __init__(self, data: dict[str, dict[str, Any]] | None = None) -> None:
        self.data = {"auth/approle/role/dnsapi/role-id": {"role_id": ROLE_ID}, **(data or {})}
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.sys = SimpleNamespace(list_auth_methods=lambda: {"data": {"approle/": {}}},
                                   tune_mount_configuration=lambda mount, **options: None)

    def read(self, path: str) -> dict[str, Any]:
        if path not in self.data:
            raise hvac.exceptions.InvalidPath()
        return {"data": self.data[path]}

    def write_data(self, path: str, data: dict[str, Any]) -> Any:
        self.writes.append((path, data))
        if path.endswith("/secret-id/lookup"):
            return None  # what hvac hands back for the 204 of an unknown secret_id
        if path.endswith("/secret-id"):
            return {"data": {"secret_id": SECRET_ID}}
        self.data[path] = data
        return {"data": data}

    def minted_secret_id(self) -> bool:
        return any(path.endswith("/secret-id") for path, _ in self.writes)


def config_in(directory: Path) -> cfg.Config:
    """The test config with the credential files in `directory`/creds and the root CA file in
    `directory`."""
    data = copy.deepcopy(BASE)
    del data["vault"]["token"]
    data["vault"]["approle"] = {"role_id_file": "creds/role-id", "secret_id_file": "creds/secret-id"}
    data["vault_init"] = {"pki": {"root_ca_file": "root-ca.pem"}}
    return cfg.from_dict(data, base=directory, env={})


def init_in(directory: Path, vault: FakeVault | None = None, changes: list | None = None) -> VaultInit:
    """A VaultInit on `config_in(directory)`; the config (which resolves its paths) is loaded now."""
    return VaultInit(config_in(directory), vault or FakeVault(),
                     report=(changes if changes is not None else []).append)


def write_all(init: VaultInit) -> None:
    """vault-init's file-writing steps: the AppRole credentials, then the root CA."""
    init.approle()
    init.export_root(PEM)


def precious(tmp_path: Path) -> Path:
    """A file outside the config directory that vault-init must never touch."""
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    victim.write_text(PRECIOUS)
    victim.chmod(0o640)
    return victim


def assert_untouched(victim: Path) -> None:
    assert victim.read_text() == PRECIOUS
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640


def test_symlinks_planted_at_temp_names_receive_nothing(tmp_path):
    """The review's attack: in a directory another user can write, links wait at every name a
    temp file could predictably have. The secret lands only in the real files; the links and
    what they point to stay as they were."""
    conf, victim = tmp_path / "conf", precious(tmp_path)
    links = [directory / pattern.format(name)
             for directory, name in ((conf / "creds", "role-id"), (conf / "creds", "secret-id"),
                                     (conf, "root-ca.pem"))
             for pattern in PREDICTABLE]
    for directory in (conf, conf / "creds"):
        directory.mkdir()
        directory.chmod(0o777)
    for link in links:
        link.symlink_to(victim)
    changes: list = []
    write_all(init_in(conf, changes=changes))
    assert_untouched(victim)
    assert f"{conf / 'creds'} is writable by other users (mode 0777, no sticky bit)" in " ".join(
        change.what for change in changes if change.status == "warning")
    for link in links:
        assert link.is_symlink() and link.readlink() == victim
    for name, text in (("creds/role-id", ROLE_ID), ("creds/secret-id", SECRET_ID)):
        assert not (conf / name).is_symlink() and (conf / name).read_text() == text + "\n"
    assert sorted(os.listdir(conf / "creds")) == sorted(["role-id", "secret-id", *(
        link.name for link in links if link.parent == conf / "creds")])


@pytest.mark.parametrize("name", ["creds/role-id", "creds/secret-id", "root-ca.pem"])
def test_a_symlink_at_the_destination_is_refused(tmp_path, name):
    """Before anything is read through it or a secret_id is minted in Vault for it."""
    conf, victim = tmp_path / "conf", precious(tmp_path)
    (conf / "creds").mkdir(parents=True)
    vault = FakeVault()
    init = init_in(conf, vault)
    (conf / name).symlink_to(victim)
    with pytest.raises(InitError) as info:
        write_all(init)
    assert str(info.value).startswith(f"{conf / name} is a symbolic link (to {victim})")
    assert_untouched(victim)
    assert (conf / name).readlink() == victim
    assert not (name.startswith("creds/") and vault.minted_secret_id())


def test_a_secret_id_file_this_user_may_not_read_is_an_error_not_a_new_secret_id(tmp_path, monkeypatch):
    """Run as another admin, vault-init took an unreadable file for a missing one: it minted a
    secret_id and replaced the file the service runs on."""
    conf = tmp_path / "conf"
    (conf / "creds").mkdir(parents=True)
    (conf / "creds" / "secret-id").write_text("the service's own\n")
    vault = FakeVault()
    init = init_in(conf, vault)
    real = Path.read_text

    def guarded(path: Path, *args: Any, **kwargs: Any) -> str:
        if path.name == "secret-id":
            raise PermissionError(13, "Permission denied")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", guarded)
    with pytest.raises(InitError, match="cannot read .*secret-id: Permission denied"):
        write_all(init)
    monkeypatch.undo()
    assert not vault.minted_secret_id()
    assert (conf / "creds" / "secret-id").read_text() == "the service's own\n"


@pytest.mark.parametrize("name", ["creds/role-id", "creds/secret-id", "root-ca.pem"])
def test_a_symlink_planted_before_the_config_is_loaded_is_refused(tmp_path, name):
    conf, victim = tmp_path / "conf", precious(tmp_path)
    (conf / "creds").mkdir(parents=True)
    (conf / name).symlink_to(victim)
    with pytest.raises(InitError):
        write_all(init_in(conf))
    assert_untouched(victim)


def test_files_have_their_mode_and_content_and_are_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(source: str, destination: str) -> None:
        events.append(("replace", str(source), str(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    conf = tmp_path / "conf"
    conf.mkdir()
    write_all(init_in(conf))

    expected = {"creds/role-id": (ROLE_ID + "\n", 0o600), "creds/secret-id": (SECRET_ID + "\n", 0o600),
                "root-ca.pem": (PEM + "\n", 0o644)}
    for name, (text, mode) in expected.items():
        path = conf / name
        assert path.read_text() == text and stat.S_IMODE(path.stat().st_mode) == mode
        [(_, temp, _)] = [event for event in events if event[0] == "replace" and event[2] == str(path)]
        assert temp != str(path.with_name(f".{path.name}.tmp"))
        assert events.index(("fsync", temp)) < events.index(("replace", temp, str(path)))
    assert stat.S_IMODE((conf / "creds").stat().st_mode) == 0o700
    assert sorted(os.listdir(conf)) == ["creds", "root-ca.pem"]  # no temp file left behind


def test_a_replaced_secret_id_stays_the_service_users(tmp_path):
    """The review's finding: the runbook's rotation (vault-init, then restart) left a root-owned
    0600 secret_id where the operator had given the service user a 0640 root:dnsapi one, and the
    service could no longer log in. A replaced file keeps its owner, group and mode; a mode that
    lets others read is not kept."""
    assert os.geteuid() == 0, "run the tests as root (the file changes hands)"
    conf = tmp_path / "conf"
    (conf / "creds").mkdir(parents=True)
    given = {"secret-id": (0o640, 0, 65534), "role-id": (0o644, 65534, 65534)}
    for name, (mode, uid, gid) in given.items():
        path = conf / "creds" / name
        path.write_text("00000000-0000-0000-0000-000000000000\n")  # Vault no longer knows it
        os.chown(path, uid, gid)
        path.chmod(mode)
    changes: list = []
    init_in(conf, changes=changes).approle()
    assert ("created", "new secret_id, mode 0640") in [(c.status, c.detail) for c in changes]  # as written
    # ...and said to be readable by more than its owner: pki-watch's unit joins the group dnsapi
    assert any(c.status == "warning" and "secret-id is readable by others than its owner" in c.what
               for c in changes)
    after = {name: (conf / "creds" / name).stat() for name in given}
    kept = {name: (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) for name, info in after.items()}
    assert kept == {"secret-id": (0o640, 0, 65534), "role-id": (0o600, 65534, 65534)}
    assert (conf / "creds" / "secret-id").read_text() == SECRET_ID + "\n"
    assert (conf / "creds" / "role-id").read_text() == ROLE_ID + "\n"


def test_a_file_whose_owner_this_user_cannot_give_is_an_error_and_left_alone(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    (conf / "creds").mkdir(parents=True)
    (conf / "creds" / "secret-id").write_text("00000000-0000-0000-0000-000000000000\n")

    def refused(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)  # (an admin who is not root, a file not theirs)
    with pytest.raises(InitError, match=r"secret-id: cannot give its new content the file's owner"):
        init_in(conf).approle()
    assert (conf / "creds" / "secret-id").read_text() == "00000000-0000-0000-0000-000000000000\n"
    assert sorted(os.listdir(conf / "creds")) == ["role-id", "secret-id"]  # no temp file left


def test_directories_other_users_can_change_are_reported(tmp_path, monkeypatch):
    """World- or group-writable without the sticky bit, or owned by another user: warned (once
    per directory); private or sticky: not."""
    modes = {"world": 0o777, "group": 0o770, "sticky": 0o1777, "private": 0o755, "foreign": 0o755}
    changes: list = []
    foreign_uid = 65534 if os.geteuid() == 0 else os.geteuid()
    for name, mode in modes.items():
        directory = tmp_path / name
        directory.mkdir()
        directory.chmod(mode)
        with monkeypatch.context() as patch:
            if name == "foreign":
                if os.geteuid() == 0:
                    os.chown(directory, foreign_uid, -1)
                else:  # no chown without root: be, for this write, a user who does not own it
                    patch.setattr(os, "geteuid", lambda: foreign_uid + 1)
            write_all(init_in(directory, changes=changes))
        assert (directory / "root-ca.pem").read_text() == PEM + "\n"
    warned = [change.what for change in changes if change.status == "warning"
              and change.what.startswith(str(tmp_path))]
    assert warned == [
        f"{tmp_path / 'world'} is writable by other users (mode 0777, no sticky bit): another user "
        "could replace files written there",
        f"{tmp_path / 'group'} is writable by other users (mode 0770, no sticky bit): another user "
        "could replace files written there",
        f"{tmp_path / 'foreign'} is owned by another user (uid {foreign_uid}): another user could "
        "replace files written there",
    ]


def test_the_role_and_acme_allow_only_names_in_the_zones():
    """What the review found issued (localhost by http-01) and the other ways around DNS-01
    through dnsapi that the role and the ACME config can close; a second pass changes nothing."""
    vault = FakeVault({
        "sys/mounts/pki/tune": {"allowed_response_headers": ACME_RESPONSE_HEADERS,
                                "passthrough_request_headers": ACME_REQUEST_HEADERS},
        "pki/config/acme": {"enabled": False, "allowed_roles": ["*"],
                            "default_directory_policy": "sign-verbatim"}})
    changes: list = []
    init = VaultInit(load(), vault, report=changes.append)
    init.issuing_role()
    init.acme()
    sent = dict(vault.writes)
    role = sent["pki/roles/acme"]
    assert role["allowed_domains"] == ["dev.local"]
    assert (role["allow_localhost"], role["allow_ip_sans"], role["allow_any_name"]) == (False, False, False)
    acme = sent["pki/config/acme"]
    assert acme["allowed_roles"] == ["acme"] and acme["default_directory_policy"] == "role:acme"
    assert acme["allowed_issuers"] == ["default"] and acme["allow_role_ext_key_usage"] is False
    assert acme["dns_resolver"] == "127.0.0.1:1053"

    vault.writes.clear()
    changes.clear()
    init.issuing_role()
    init.acme()
    assert vault.writes == [] and {change.status for change in changes} == {"unchanged"}


class AuditSys:
    """hvac's sys audit calls as a server answers them: `devices` listed (or Forbidden), and
    enabling one accepted or refused with `refusal`."""

    def __init__(self, devices: dict[str, Any] | None = None, refusal: Exception | None = None) -> None:
        self.devices = devices
        self.refusal = refusal
        self.enabled: list[tuple[str, str, dict[str, str]]] = []

    def list_enabled_audit_devices(self) -> dict[str, Any]:
        if self.devices is None:
            raise hvac.exceptions.Forbidden("permission denied")
        return {"data": self.devices}

    def enable_audit_device(self, device_type: str, path: str, options: dict[str, str]) -> None:
        if self.refusal is not None:
            raise self.refusal
        self.enabled.append((device_type, path, options))


def audit_step(sys: AuditSys, audit_file: str | None = None) -> list:
    changes: list = []
    VaultInit(load(), SimpleNamespace(sys=sys), report=changes.append, audit_file=audit_file).audit()
    return [(c.status, c.what, c.detail) for c in changes]


def test_an_existing_audit_device_is_kept():
    sys = AuditSys({"file/": {"type": "file"}, "sock/": {"type": "socket"}})
    assert audit_step(sys) == [("unchanged", "audit device file/ (file), sock/ (socket)", "")]
    assert sys.enabled == []


def test_where_the_api_allows_it_a_file_audit_device_is_enabled():
    """HashiCorp Vault (and OpenBao with unsafe_allow_api_audit_creation)."""
    sys = AuditSys({})
    assert audit_step(sys, "/srv/audit.log") == [
        ("created", "audit device file/ (file)", "writing to /srv/audit.log")]
    assert sys.enabled == [("file", "file", {"file_path": "/srv/audit.log"})]
    assert audit_step(AuditSys({}))[0][2] == "writing to /var/log/vault/audit.log"


def test_openbao_refusing_api_audit_devices_gets_the_stanza_for_its_config():
    refusal = hvac.exceptions.InvalidRequest("cannot enable audit device via API; use "
                                             "declarative, config-based audit device management instead")
    [(status, what, _)] = audit_step(AuditSys({}, refusal))
    assert status == "warning" and "add this to every node's server config" in what
    stanza = "\n".join(line.strip() for line in audit_stanza(OPENBAO_AUDIT_FILE).splitlines())
    assert stanza in "\n".join(line.strip() for line in what.splitlines())


def test_other_audit_failures_and_a_token_without_sudo_are_warnings_saying_so():
    failed = hvac.exceptions.InvalidRequest("sanity check failed; unable to open /var/log/vault/audit.log")
    [(status, what, _)] = audit_step(AuditSys({}, failed))
    assert status == "warning" and "sanity check failed" in what and "vault audit enable file" in what
    [(status, what, _)] = audit_step(AuditSys(None))
    assert status == "warning" and "may not read sys/audit" in what


def test_the_printed_stanza_is_the_one_in_the_shipped_raft_config():
    template = (Path(__file__).resolve().parent.parent / "deploy" / "vault" / "openbao-raft.hcl").read_text()
    assert audit_stanza("{{audit_log}}") in template
