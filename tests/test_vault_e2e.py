"""Vault authentication methods and Vault outages, against real OpenBao servers."""

import time
import uuid

import pytest

from dnsapi.auth import new_token
from dnsapi.devstack import start_openbao

from .helpers import LossyRelay, free_port

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
    stack.edit_config(lambda config: config["vault"].pop("token_file"))
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


def test_policy_without_snapshot_access_is_not_ready(make_stack, openbao):
    """Snapshots are only written past INLINE_MAX records: a policy covering just the zone
    secrets must be caught at start, not when a zone first grows."""
    stack = make_stack(start=False)
    name = f"zones-only-{stack.prefix}"
    openbao.client.sys.create_or_update_acl_policy(name=name, policy=f"""
path "secret/data/{stack.prefix}/zones/*" {{ capabilities = ["create", "read", "update"] }}
path "secret/metadata/{stack.prefix}/zones/*" {{ capabilities = ["read"] }}
""")
    token = openbao.client.auth.token.create(policies=[name], ttl="1h")["auth"]["client_token"]
    (stack.dir / "vault-token").write_text(token)
    stack.start_dnsapi()
    ready = stack.call("GET", "/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["vault:dev.local"] == (
        f"token lacks create, read on secret/data/{stack.prefix}/snapshots/dev.local/*")


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

    def on_approle(config: dict) -> None:
        del config["vault"]["token_file"]
        config["vault"]["approle"] = {"role_id_file": "role-id", "secret_id_file": "secret-id",
                                      "mount": mount}
    stack.edit_config(on_approle)
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


def test_a_permission_the_policy_lacks_is_503_without_logging_in_again(make_stack, openbao,
                                                                      approle_mount):
    """A 403 to a token Vault still knows is a missing permission, which a new token of the
    same role would lack too: no login per refused request (each leaves a token behind and
    may use up one of the secret_id's uses)."""
    stack = make_stack(start=False)
    start_on_approle(stack, openbao, approle_mount, token_ttl="1h", secret_id_num_uses="3")
    assert stack.add(WWW, "before").status_code == 201
    openbao.client.sys.create_or_update_acl_policy(  # an operator narrows the policy by mistake
        name=f"dnsapi-{stack.prefix}",
        policy=f'path "secret/data/{stack.prefix}/*" {{ capabilities = ["read"] }}')
    for attempt in range(4):
        response = stack.add(WWW, f"refused-{attempt}")
        assert response.status_code == 503 and "refused dnsapi's token" in response.json()["message"]
    assert (stack.dir / "dnsapi.log").read_text().count("logged in to Vault with AppRole") == 1
    least_privilege_policy(openbao, stack.prefix)  # fixed: the same token works again
    assert stack.add(WWW, "after").status_code == 201


def test_vault_down_is_503_then_recovers_without_restart(make_stack, tmp_path):
    port = free_port()
    root = new_token()
    vault = start_openbao(port, root, tmp_path / "own-openbao.log")
    try:
        def own_vault(config):
            config["vault"]["addr"] = f"http://127.0.0.1:{port}"
            config["vault"]["failover_timeout"] = "1s"  # how long a change waits for Vault to return
        stack = make_stack(edit=own_vault, start=False)
        (stack.dir / "vault-token").write_text(root)
        stack.start_dnsapi()
        assert stack.add(WWW, "up").status_code == 201
        zone_before = stack.zone_path.read_bytes()

        vault.stop()
        started = time.monotonic()
        response = stack.add(WWW, "while-down")
        assert response.status_code == 503
        assert time.monotonic() - started > 0.5  # it waited (vault.failover_timeout) for a node
        assert response.json() == {"error": "vault_unavailable",
                                   "message": f"Vault at http://127.0.0.1:{port} is unreachable or "
                                              "not active (ConnectionError)"}
        assert stack.zone_path.read_bytes() == zone_before
        assert not list(stack.zone_path.parent.glob(".*.tmp"))  # the text prepared meanwhile: dropped
        assert stack.call("GET", "/readyz").status_code == 503
        assert stack.call("GET", "/healthz").status_code == 200

        vault = start_openbao(port, root, tmp_path / "own-openbao.log")  # in-memory: empty again
        assert stack.add(WWW, "back").status_code == 201
        stack.wait_served(WWW, {"back"})
        assert stack.call("GET", "/readyz").status_code == 200
        # Each add's write went straight from the event loop; only the one Vault did not answer
        # took the failover way (the first one back met a check-and-set conflict: not a detour).
        log = (stack.dir / "dnsapi.log").read_text()
        assert log.count("direct write answered") == 1
        assert "direct write answered ConnectionError" in log
    finally:
        vault.stop()


def test_vault_client_sees_only_hashes_never_tokens(stack):
    """The records in Vault carry no API token; the config holds only its hash."""
    stack.add(WWW, "x")
    secret = stack.vault.client.secrets.kv.v2.read_secret_version(
        path=f"{stack.prefix}/zones/dev.local", mount_point="secret", raise_on_deleted_version=False)
    assert stack.token not in str(secret)
    assert stack.token not in stack.config_path.read_text()


@pytest.fixture
async def kv_store(openbao):
    """Makes VaultStores on the test's OpenBao (or at `addr`) under a prefix; closes them after
    the test."""
    from dnsapi.config import VaultConfig
    from dnsapi.metrics import Metrics
    from dnsapi.store import VaultStore
    made = []

    def make(prefix: str, addr: str | None = None) -> VaultStore:
        made.append(VaultStore(VaultConfig(addr=addr or openbao.addr, token=openbao.root_token,
                                           token_file=None, approle=None, ca_cert=None,
                                           kv_mount="secret", prefix=prefix, timeout=10), Metrics()))
        return made[-1]

    yield make
    for store in made:
        await store.close()


def challenges(start: int, stop: int) -> dict:
    from dnsapi.records import Record
    records = (Record(f"_acme-challenge.h{i % 50}.dev.local", f"value-{i:06d}", 60, 1.0 + i)
               for i in range(start, stop))
    return {r.key: r for r in records}


def snapshot_names(openbao, prefix: str) -> list[str]:
    import hvac.exceptions
    try:
        return openbao.client.secrets.kv.v2.list_secrets(
            path=f"{prefix}/snapshots/dev.local", mount_point="secret")["data"]["keys"]
    except hvac.exceptions.InvalidPath:
        return []


async def test_a_full_zone_fits_in_one_vault_write(openbao, kv_store):
    """Vault/OpenBao cap the strings in a request's JSON and the length of one string (1 MiB):
    a zone at the default max_records_per_zone (2,000 records of 255-byte names) must still be
    one snapshot write, one check-and-set write, and read back whole by another instance."""
    from dnsapi.records import Record
    from dnsapi.store import ZoneState

    store = kv_store("full-zone")
    label = "a" * 63
    records = {}
    for i in range(2000):
        fqdn = f"_acme-challenge.{label}.{label}.{i:0>48}.dev.local"
        record = Record(fqdn, "V" * 43, 60, 1.0)
        records[record.key] = record
    state = await store.write_zone("dev.local", records, ZoneState({}, 0), records)
    read = await kv_store("full-zone").read_zone("dev.local")
    assert read.version == state.version == 1 and read.records == records


async def test_a_large_zone_is_written_as_deltas_over_a_snapshot(openbao, kv_store):
    """Past INLINE_MAX records a batch writes only the changes since the snapshot; the snapshot
    is replaced once they outgrow DELTA_MAX, the old one deleted, and the whole zone goes back
    into the zone secret when it shrinks. Another instance reads every state exactly."""
    from dnsapi.store import DELTA_FORMAT, DELTA_MAX, INLINE_MAX, ZoneState

    prefix = f"delta-{uuid.uuid4().hex[:8]}"
    store = kv_store(prefix)
    state, seen_snapshots = ZoneState({}, 0), set()
    for start in range(0, 1200, 40):  # grow in batches of 40
        records = {**state.records, **challenges(start, start + 40)}
        state = await store.write_zone("dev.local", records, state, challenges(start, start + 40))
        read = await kv_store(prefix).read_zone("dev.local")
        assert read.records == records and read.version == state.version
        secret = openbao.client.secrets.kv.v2.read_secret_version(
            path=f"{prefix}/zones/dev.local", mount_point="secret",
            raise_on_deleted_version=False)["data"]["data"]
        if len(records) <= INLINE_MAX:
            assert secret["format"] == 2 and secret["records"].count("\n") == len(records) - 1
        else:
            assert secret["format"] == DELTA_FORMAT
            assert len(secret["records"].splitlines()) <= DELTA_MAX
            seen_snapshots.add(secret["base"])
            assert snapshot_names(openbao, prefix) == [secret["base"]]  # the old one is gone
    assert len(seen_snapshots) >= 3
    for start in range(0, 1200, 40):  # and shrink again, removes as deltas
        gone = challenges(start, start + 40)
        records = {k: r for k, r in state.records.items() if k not in gone}
        state = await store.write_zone("dev.local", records, state, gone)
        read = await kv_store(prefix).read_zone("dev.local")
        assert read.records == records
    assert state.records == {} and state.base is None and snapshot_names(openbao, prefix) == []


async def test_writers_sharing_a_zone_survive_a_snapshot_change(openbao, kv_store):
    """Instance B holds a state over a snapshot that instance A replaces (and deletes): B's write
    is refused by check-and-set, and after re-reading B writes on top of A's records."""
    from dnsapi.store import ZoneState
    from dnsapi.vault import CasConflict

    prefix = f"shared-{uuid.uuid4().hex[:8]}"
    a, b = kv_store(prefix), kv_store(prefix)
    state_a = await a.write_zone("dev.local", challenges(0, 400), ZoneState({}, 0), challenges(0, 400))
    state_b = await b.read_zone("dev.local")
    more = challenges(400, 400 + 300)  # more than DELTA_MAX: A takes a new snapshot
    state_a = await a.write_zone("dev.local", {**state_a.records, **more}, state_a, more)
    assert state_a.base.name != state_b.base.name
    mine = challenges(900, 910)
    with pytest.raises(CasConflict):
        await b.write_zone("dev.local", {**state_b.records, **mine}, state_b, mine)
    state_b = await b.read_zone("dev.local")
    state_b = await b.write_zone("dev.local", {**state_b.records, **mine}, state_b, mine)
    read = await kv_store(prefix).read_zone("dev.local")
    assert read.records == {**challenges(0, 700), **mine}
    assert snapshot_names(openbao, prefix) == [state_b.base.name]


async def test_a_missing_or_hostile_snapshot_reference_is_a_clear_error(openbao, kv_store):
    from dnsapi.errors import VaultUnavailable
    from dnsapi.store import ZoneState

    prefix = f"broken-{uuid.uuid4().hex[:8]}"
    state = await kv_store(prefix).write_zone("dev.local", challenges(0, 300),
                                                       ZoneState({}, 0), challenges(0, 300))
    openbao.client.secrets.kv.v2.delete_metadata_and_all_versions(
        path=f"{prefix}/snapshots/dev.local/{state.base.name}", mount_point="secret")
    with pytest.raises(VaultUnavailable, match="missing from Vault"):
        await kv_store(prefix).read_zone("dev.local")
    openbao.client.secrets.kv.v2.create_or_update_secret(
        path=f"{prefix}/zones/dev.local", mount_point="secret",
        secret={"format": 3, "base": "../../zones/other", "records": "", "removed": ""})
    with pytest.raises(VaultUnavailable, match="names no valid snapshot"):
        await kv_store(prefix).read_zone("dev.local")


async def test_unnamed_snapshots_are_swept_once_old(openbao, kv_store, monkeypatch):
    """A crash between writing a snapshot and naming it leaves it unnamed: the sweep deletes
    such snapshots once older than SNAPSHOT_GRACE, never the one the zone secret names, and
    leaves anything that is not a snapshot alone."""
    import time

    import dnsapi.store
    from dnsapi.store import ZoneState

    prefix = f"sweep-{uuid.uuid4().hex[:8]}"
    store = kv_store(prefix)
    state = await store.write_zone("dev.local", challenges(0, 300), ZoneState({}, 0), challenges(0, 300))
    old, young = f"{int(time.time()) - 2 * 86400:08x}deadbeef", f"{int(time.time()):08x}cafef00d"
    for name in (old, young, "notes"):
        openbao.client.secrets.kv.v2.create_or_update_secret(
            path=f"{prefix}/snapshots/dev.local/{name}", secret={"a": "b"}, mount_point="secret")
    assert await store.sweep_snapshots("dev.local") == 1
    assert sorted(snapshot_names(openbao, prefix)) == sorted([state.base.name, young, "notes"])
    monkeypatch.setattr(dnsapi.store, "SNAPSHOT_GRACE", -60.0)  # now every snapshot counts as old
    assert await store.sweep_snapshots("dev.local") == 1
    assert sorted(snapshot_names(openbao, prefix)) == sorted([state.base.name, "notes"])
    assert (await kv_store(prefix).read_zone("dev.local")).records == challenges(0, 300)


async def test_a_batch_that_misreports_its_changes_still_loses_nothing(openbao, kv_store):
    """The writer names the keys a batch touched; should it ever miss one, the delta would drop
    it, so the store notices from the counts and writes a full snapshot instead."""
    from dnsapi.store import ZoneState

    prefix = f"miscount-{uuid.uuid4().hex[:8]}"
    store = kv_store(prefix)
    state = await store.write_zone("dev.local", challenges(0, 300), ZoneState({}, 0), challenges(0, 300))
    more = challenges(300, 310)
    after = await store.write_zone("dev.local", {**state.records, **more}, state, list(more)[:5])
    assert after.base.name != state.base.name  # a new snapshot, not a delta
    read = await kv_store(prefix).read_zone("dev.local")
    assert read.records == challenges(0, 310)


async def test_a_zone_write_whose_answer_is_lost_is_found_again(openbao, kv_store):
    """Vault commits a batch's write but its answer never comes back: the retry meets a
    check-and-set conflict with that very write, which the store recognises (the write's id in
    the version it made) instead of reporting a conflict, so the writer does not re-apply the
    batch over itself. A conflict with another writer is still one."""
    from dnsapi.store import ZoneState
    from dnsapi.vault import CasConflict

    prefix = f"lost-{uuid.uuid4().hex[:8]}"
    with LossyRelay(int(openbao.addr.rsplit(":", 1)[1])) as relay:
        store = kv_store(prefix, addr=relay.addr)
        state = await store.write_zone("dev.local", challenges(0, 1), ZoneState({}, 0), challenges(0, 1))
        relay.lose(f"POST /v1/secret/data/{prefix}/zones/dev.local ".encode())
        more = challenges(1, 2)
        after = await store.write_zone("dev.local", {**state.records, **more}, state, more)
        assert relay.lost == 1
        assert after.version == state.version + 1 == 2
        read = await kv_store(prefix).read_zone("dev.local")
        assert read.version == 2 and read.records == challenges(0, 2)
        with pytest.raises(CasConflict):  # `state` is stale: a real conflict
            await store.write_zone("dev.local", {**state.records, **more}, state, more)


async def test_an_account_whose_create_answer_is_lost_is_created_once(openbao, kv_store):
    """acme-dns registration writes a new account secret under a fresh UUID, create-only: the
    retry of a write whose answer was lost meets that write, which is this one."""
    prefix = f"lost-account-{uuid.uuid4().hex[:8]}"
    with LossyRelay(int(openbao.addr.rsplit(":", 1)[1])) as relay:
        store = kv_store(prefix, addr=relay.addr)
        relay.lose(f"POST /v1/secret/data/{prefix}/acme-dns/accounts/".encode())
        await store.create_account("0b6c0e1e-3d5d-4e2a-9a47-8d2f1c3b7a10", {"subdomain": "x"})
        assert relay.lost == 1
        assert await store.read_account("0b6c0e1e-3d5d-4e2a-9a47-8d2f1c3b7a10") == {"subdomain": "x"}


async def test_a_snapshot_write_whose_answer_is_lost_is_found_again(openbao, kv_store):
    """The same on the snapshot path, which `run` retries whole: the retry writes a second
    snapshot and meets its own first attempt, which named the first; the second is dropped and
    the zone reads back whole, over the snapshot Vault names."""
    from dnsapi.store import ZoneState

    prefix = f"lost-snap-{uuid.uuid4().hex[:8]}"
    with LossyRelay(int(openbao.addr.rsplit(":", 1)[1])) as relay:
        store = kv_store(prefix, addr=relay.addr)
        state = await store.write_zone("dev.local", challenges(0, 300), ZoneState({}, 0),
                                       challenges(0, 300))
        relay.lose(f"POST /v1/secret/data/{prefix}/zones/dev.local ".encode())
        more = challenges(300, 600)  # more than DELTA_MAX changes: a new snapshot
        after = await store.write_zone("dev.local", {**state.records, **more}, state, more)
        assert relay.lost == 1 and after.version == state.version + 1
        secret = openbao.client.secrets.kv.v2.read_secret_version(
            path=f"{prefix}/zones/dev.local", mount_point="secret",
            raise_on_deleted_version=False)["data"]["data"]
        assert after.base.name == secret["base"] != state.base.name
        assert snapshot_names(openbao, prefix) == [secret["base"]]
        assert (await kv_store(prefix).read_zone("dev.local")).records == challenges(0, 600)


def test_a_vault_certificate_the_configured_ca_did_not_sign_is_said_at_once(tmp_path, tls_files):
    """vault.ca_cert names a CA that did not sign Vault's certificate: an add fails at once with
    what to fix, not after vault.failover_timeout as if no node led (it did: the leader probes
    took the TLS failure for a node that does not answer)."""
    from .helpers import openbao_server, start_stack

    def wrong_ca(config):
        config["vault"]["ca_cert"] = str(tls_files.ca)
        config["vault"]["failover_timeout"] = "30s"

    with openbao_server(tmp_path / "vault", tls=True) as vault:
        stack = start_stack(tmp_path / "stack", vault, edit=wrong_ca)
        try:
            before = stack.zone_path.read_bytes()
            started = time.monotonic()
            response = stack.add(WWW, "untrusted")
            assert time.monotonic() - started < 10
            assert response.status_code == 503
            assert response.json()["message"] == (f"TLS to Vault at {vault.addr} failed "
                                                   "(check vault.ca_cert)")
            assert stack.zone_path.read_bytes() == before
            assert stack.call("GET", "/readyz").json()["checks"]["vault:dev.local"] == \
                f"TLS to Vault at {vault.addr} failed (check vault.ca_cert)"
        finally:
            stack.stop()
