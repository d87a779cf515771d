"""Vault authentication methods and Vault outages, against real OpenBao servers."""

import time
import uuid

import pytest

from dnsapi.auth import new_token
from dnsapi.devstack import free_port, start_openbao

WWW = "_acme-challenge.www.dev.local"


def least_privilege_policy(vault, prefix: str) -> str:
    """A policy limited to the stack's prefix, like the one operators give dnsapi."""
    name = f"dnsapi-{prefix}"
    vault.client.sys.create_or_update_acl_policy(name=name, policy=f"""
path "secret/data/{prefix}/*" {{ capabilities = ["create", "read", "update", "delete"] }}
path "secret/metadata/{prefix}/*" {{ capabilities = ["list", "read", "delete"] }}
""")
    return name


def use_token_file(config):
    config["vault"]["token_file"] = "vault-token"


def test_token_from_environment(make_stack, openbao):
    def env_only(config):
        del config["vault"]["token_file"]
    stack = make_stack(edit=env_only, env={"DNSAPI_VAULT_TOKEN": openbao.root_token})
    assert "token" not in stack.config_path.read_text().split("vault:")[1].split("zones:")[0]
    assert stack.add(WWW, "from-env").status_code == 201


def test_token_file_is_reread_when_rotated(make_stack, openbao):
    stack = make_stack(start=False)
    policy = least_privilege_policy(openbao, stack.prefix)
    first = openbao.client.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"]
    (stack.dir / "vault-token").write_text(first + "\n")
    stack.start_dnsapi()
    assert stack.add(WWW, "one").status_code == 201
    assert stack.call("GET", "/readyz").status_code == 200  # the prefix policy is enough

    second = openbao.client.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"]
    (stack.dir / "vault-token").write_text(second + "\n")
    openbao.client.auth.token.revoke(first)
    assert stack.add(WWW, "two").status_code == 201
    assert stack.vault_records() == {(WWW, "one"), (WWW, "two")}


def test_revoked_token_is_503_and_touches_nothing(make_stack, openbao):
    stack = make_stack(start=False)
    policy = least_privilege_policy(openbao, stack.prefix)
    token = openbao.client.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"]
    stack.env["DNSAPI_VAULT_TOKEN"] = token
    config = stack.config_path.read_text().replace("  token_file: vault-token\n", "")
    stack.config_path.write_text(config)
    stack.start_dnsapi()
    assert stack.add(WWW, "before").status_code == 201
    zone_before = stack.zone_path.read_bytes()
    openbao.client.auth.token.revoke(token)
    response = stack.add(WWW, "after")
    assert response.status_code == 503
    assert response.json()["error"] == "vault_unavailable"
    assert "refused dnsapi's token" in response.json()["message"]
    assert token not in response.text and token not in (stack.dir / "dnsapi.log").read_text()
    assert stack.zone_path.read_bytes() == zone_before
    ready = stack.call("GET", "/readyz")
    assert ready.status_code == 503 and "vault:dev.local" in ready.json()["message"]


def test_policy_without_write_access_is_not_ready(make_stack, openbao):
    stack = make_stack(start=False)
    name = f"read-only-{stack.prefix}"
    openbao.client.sys.create_or_update_acl_policy(
        name=name, policy=f'path "secret/data/{stack.prefix}/*" {{ capabilities = ["read"] }}')
    token = openbao.client.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"]
    (stack.dir / "vault-token").write_text(token)
    stack.start_dnsapi()
    ready = stack.call("GET", "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["vault:dev.local"] == "token lacks create, update on the zone secret"
    assert stack.add(WWW, "x").status_code == 503


@pytest.fixture(scope="module")
def approle_mount(openbao):
    mount = f"approle-{uuid.uuid4().hex[:8]}"
    openbao.client.sys.enable_auth_method("approle", path=mount)
    return mount


def start_on_approle(stack, openbao, mount: str, **token_settings: str) -> tuple[str, str]:
    """An AppRole role (with the prefix policy) for this stack, its credentials in files, and
    dnsapi started on them; returns (role_id, secret_id)."""
    policy = least_privilege_policy(openbao, stack.prefix)
    role = f"role-{stack.prefix}"
    approle = openbao.client.auth.approle
    approle.create_or_update_approle(role_name=role, token_policies=[policy], mount_point=mount,
                                     **token_settings)
    role_id = approle.read_role_id(role, mount_point=mount)["data"]["role_id"]
    secret_id = approle.generate_secret_id(role, mount_point=mount)["data"]["secret_id"]
    (stack.dir / "role-id").write_text(role_id)
    (stack.dir / "secret-id").write_text(secret_id)
    config = stack.config_path.read_text().replace(
        "  token_file: vault-token\n",
        f"  approle: {{role_id_file: role-id, secret_id_file: secret-id, mount: {mount}}}\n")
    stack.config_path.write_text(config)
    stack.start_dnsapi()
    return role_id, secret_id


def test_approle_login_renewal_and_relogin_past_max_ttl(make_stack, openbao, approle_mount):
    stack = make_stack(start=False)
    role_id, secret_id = start_on_approle(stack, openbao, approle_mount, token_ttl="2s",
                                          token_max_ttl="5s")
    deadline = time.monotonic() + 9  # well past the 5 s max TTL of any one token
    count = 0
    while time.monotonic() < deadline:
        assert stack.add(WWW, f"v{count}").status_code == 201
        count += 1
        time.sleep(0.7)
    assert len(stack.vault_records()) == count
    log = (stack.dir / "dnsapi.log").read_text()
    assert log.count("logged in to Vault with AppRole") >= 2  # re-login after max TTL
    assert secret_id not in log and role_id not in log
    assert stack.call("GET", "/readyz").status_code == 200


def test_revoked_approle_token_is_replaced_by_logging_in_again(make_stack, openbao, approle_mount):
    stack = make_stack(start=False)
    start_on_approle(stack, openbao, approle_mount, token_ttl="1h")
    assert stack.add(WWW, "before").status_code == 201
    # revoke every token this AppRole mount has handed out, dnsapi's included
    openbao.client.sys.revoke_prefix(f"auth/{approle_mount}/login")
    assert stack.add(WWW, "after").status_code == 201
    assert stack.call("GET", "/readyz").status_code == 200
    assert (stack.dir / "dnsapi.log").read_text().count("logged in to Vault with AppRole") == 2


def test_vault_down_is_503_then_recovers_without_restart(make_stack, tmp_path):
    port = free_port()
    root = new_token()
    vault = start_openbao(port, root, tmp_path / "own-openbao.log")
    try:
        def own_vault(config):
            config["vault"]["addr"] = f"http://127.0.0.1:{port}"
        stack = make_stack(edit=own_vault, start=False)
        (stack.dir / "vault-token").write_text(root)
        stack.start_dnsapi()
        assert stack.add(WWW, "up").status_code == 201
        zone_before = stack.zone_path.read_bytes()

        vault.stop()
        response = stack.add(WWW, "while-down")
        assert response.status_code == 503
        assert response.json() == {"error": "vault_unavailable",
                                   "message": f"Vault at http://127.0.0.1:{port} is unreachable"}
        assert stack.zone_path.read_bytes() == zone_before
        assert stack.call("GET", "/readyz").status_code == 503
        assert stack.call("GET", "/healthz").status_code == 200

        vault = start_openbao(port, root, tmp_path / "own-openbao.log")  # in-memory: empty again
        assert stack.add(WWW, "back").status_code == 201
        stack.wait_served(WWW, {"back"})
        assert stack.call("GET", "/readyz").status_code == 200
    finally:
        vault.stop()


def test_vault_client_sees_only_hashes_never_tokens(stack):
    """The records in Vault carry no API token; the config holds only its hash."""
    stack.add(WWW, "x")
    secret = stack.vault.client.secrets.kv.v2.read_secret_version(
        path=f"{stack.prefix}/zones/dev.local", mount_point="secret", raise_on_deleted_version=False)
    assert stack.token not in str(secret)
    assert stack.token not in stack.config_path.read_text()


async def test_a_full_zone_fits_in_one_vault_write(openbao):
    """Vault/OpenBao cap the strings in a request's JSON and the length of one string (1 MiB):
    a zone at the default max_records_per_zone (2,000 records of 255-byte names) must still be
    one check-and-set write and one read."""
    from dnsapi.config import VaultConfig
    from dnsapi.records import Record
    from dnsapi.store import VaultStore

    store = VaultStore(VaultConfig(addr=openbao.addr, token=openbao.root_token, token_file=None,
                                   approle=None, ca_cert=None, kv_mount="secret",
                                   prefix="full-zone", timeout=10))
    label = "a" * 63
    records = {}
    for i in range(2000):
        fqdn = f"_acme-challenge.{label}.{label}.{i:0>48}.dev.local"
        record = Record(fqdn, "V" * 43, 60, 1.0)
        records[record.key] = record
    version = await store.write_zone("dev.local", records, cas=0)
    state = await store.read_zone("dev.local")
    assert state.version == version == 1 and state.records == records
