"""The record service through real processes: dnsapi's HTTP API, OpenBao KV v2, CoreDNS answers."""

import asyncio
import time

import aiohttp
import hvac.exceptions
import pytest

from dnsapi.block import BEGIN_MARKER, block_records
from dnsapi.devstack import start_coredns
from dnsapi.records import Record
from dnsapi.store import INLINE_MAX, encode_records
from dnsapi.zonefile import ZoneText, serial_gt, soa_serial

from .helpers import add_token, replace_zone_file, wait_until

WWW = "_acme-challenge.www.dev.local"
V1 = "A" * 43
V2 = "B" * 43


def operator_part(text: str) -> str:
    """The zone text outside the managed block, with the SOA serial digits blanked."""
    head = text.split(BEGIN_MARKER)[0]
    return head.replace(head.split("(")[1].split(";")[0].strip(), "SERIAL", 1)


def test_add_is_stored_in_vault_and_served_by_coredns(stack):
    response = stack.add(WWW, V1)
    assert response.status_code == 201
    assert response.json() == {"fqdn": WWW, "value": V1, "ttl": 60, "created": True}
    assert stack.vault_records() == {(WWW, V1)}  # acknowledged only once Vault has it
    stack.wait_served(WWW, {V1})


def test_same_pair_again_is_200_and_changes_nothing(stack):
    assert stack.add(WWW, V1).status_code == 201
    before = stack.zone_path.read_bytes()
    again = stack.add(WWW + ".", V1)  # trailing dot and case are normalised
    assert again.status_code == 200 and again.json()["created"] is False
    assert stack.zone_path.read_bytes() == before


def test_two_values_one_name_remove_one_then_all(stack):
    assert stack.add(WWW, V1).status_code == 201
    assert stack.add(WWW.upper(), V2).status_code == 201
    stack.wait_served(WWW, {V1, V2})

    response = stack.remove(WWW, V1)
    assert response.status_code == 200 and response.json() == {"fqdn": WWW, "value": V1, "existed": True}
    stack.wait_served(WWW, {V2})  # the other value stays
    assert stack.vault_records() == {(WWW, V2)}

    assert stack.remove(WWW, V1).json()["existed"] is False
    assert stack.call("DELETE", "/v1/records", params={"fqdn": WWW, "value": V2}).json()["existed"]
    stack.wait_served(WWW, set())  # name gone: NXDOMAIN
    assert stack.vault_records() == set()


def test_ttl_is_used(stack):
    assert stack.add(WWW, V1, ttl=120).json()["ttl"] == 120
    stack.wait_served(WWW, {V1})
    assert f"{WWW}. 120 IN TXT" in stack.zone_path.read_text()


def test_plain_curl_body_without_json_content_type(stack):
    body = f'{{"fqdn":"{WWW}","value":"{V1}"}}'
    response = stack.call("POST", "/v1/records", data=body,
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 201


def test_list_records_is_filtered_by_token(make_stack):
    tokens = {}
    stack = make_stack(edit=lambda c: tokens.update(www=add_token(c, "www-only", ["www.dev.local"])))
    stack.add(WWW, V1)
    stack.add("_acme-challenge.api.dev.local", V2)
    everything = stack.call("GET", "/v1/records").json()["records"]
    assert {(r["fqdn"], r["value"]) for r in everything} == {
        (WWW, V1), ("_acme-challenge.api.dev.local", V2)}
    assert all(r["ttl"] == 60 and r["created_at"] > 0 for r in everything)
    one = stack.call("GET", "/v1/records", params={"fqdn": WWW}).json()["records"]
    assert [(r["fqdn"], r["value"]) for r in one] == [(WWW, V1)]
    scoped = stack.call("GET", "/v1/records", token=tokens["www"]).json()["records"]
    assert [(r["fqdn"], r["value"]) for r in scoped] == [(WWW, V1)]
    denied = stack.call("GET", "/v1/records", token=tokens["www"],
                        params={"fqdn": "_acme-challenge.api.dev.local"})
    assert denied.status_code == 403


def test_authentication_and_scope(make_stack):
    tokens = {}
    stack = make_stack(edit=lambda c: tokens.update(www=add_token(c, "www-only", ["www.dev.local"])))
    zone_before = stack.zone_path.read_bytes()
    for token in (None, "wrong-token", ""):
        response = stack.call("POST", "/v1/records", token=token, json={"fqdn": WWW, "value": V1})
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    basic = stack.call("GET", "/v1/records", token=False, headers={"Authorization": "Basic !!!"})
    assert basic.status_code == 401
    for name in ("_acme-challenge.api.dev.local", "_acme-challenge.x.www.dev.local"):
        response = stack.call("POST", "/v1/records", token=tokens["www"], json={"fqdn": name, "value": V1})
        assert response.status_code == 403
        assert response.json() == {"error": "forbidden",
                                   "message": f"token 'www-only' may not change {name}"}
    assert stack.call("DELETE", "/v1/records", token=tokens["www"],
                      json={"fqdn": "_acme-challenge.api.dev.local", "value": V1}).status_code == 403
    assert stack.zone_path.read_bytes() == zone_before
    assert stack.vault_records() == set()
    allowed = stack.call("POST", "/v1/records", token=tokens["www"], json={"fqdn": WWW, "value": V1})
    assert allowed.status_code == 201


@pytest.mark.parametrize("body, code", [
    ('{"fqdn": "_acme-challenge.www.dev.local"}', "missing_field"),
    ('{"value": "x"}', "missing_field"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "extra": 1}', "unknown_field"),
    ('not json', "invalid_json"),
    ('["a list"]', "invalid_json"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x\\ny IN A 1.2.3.4"}', "invalid_value"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": ""}', "invalid_value"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": 0}', "invalid_ttl"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": "60"}', "invalid_ttl"),
    ('{"fqdn": "www.dev.local", "value": "x"}', "invalid_name"),
    ('{"fqdn": "_acme-challenge.www.example.com", "value": "x"}', "unknown_zone"),
    ('{"fqdn": "_acme-challenge.w\\"w.dev.local", "value": "x"}', "invalid_name"),
    ('[' * 5000 + ']' * 5000, "invalid_json"),
])
def test_bad_requests_are_400_and_change_nothing(stack, body, code):
    stack.add(WWW, V1)
    zone_before = stack.zone_path.read_bytes()
    response = stack.call("POST", "/v1/records", data=body)
    assert response.status_code == 400
    assert response.json()["error"] == code and response.json()["message"]
    assert stack.zone_path.read_bytes() == zone_before
    assert stack.vault_records() == {(WWW, V1)}
    assert stack.call("GET", "/healthz").status_code == 200


def test_other_http_errors_are_json(stack):
    too_big = stack.call("POST", "/v1/records", data="x" * 20000)
    assert too_big.status_code == 413 and too_big.json()["error"] == "body_too_large"
    assert stack.call("GET", "/nope").json()["error"] == "not_found"
    wrong_method = stack.call("PUT", "/v1/records")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"
    both = stack.call("DELETE", "/v1/records", params={"fqdn": WWW}, json={"fqdn": WWW, "value": V1})
    assert both.status_code == 400


def test_operator_lines_preserved_exactly(stack):
    original = stack.zone_path.read_text()
    for value in (V1, V2):
        stack.add(WWW, value)
    stack.remove(WWW, V1)
    stack.add("_acme-challenge.dev.local", V1)
    text = stack.zone_path.read_text()
    assert operator_part(text) == operator_part(original + BEGIN_MARKER)
    assert text.startswith(original.split(str(soa_serial(original)))[0])


def block_of(stack) -> set[tuple[str, str]]:
    """The records in the zone file's managed block."""
    return set(block_records(ZoneText.split(stack.zone_path.read_text()).block, "dev.local"))


def test_restart_keeps_records_and_repairs_a_replaced_zone_file(stack):
    original = stack.zone_path.read_text()
    stack.add(WWW, V1)
    stack.add(WWW, V2)
    stack.stop_dnsapi()
    stack.wait_served(WWW, {V1, V2})  # CoreDNS keeps serving without dnsapi
    replaced = replace_zone_file(stack.zone_path, original)  # records lost
    stack.wait_served(WWW, set())
    stack.start_dnsapi()  # reconciles from Vault at start
    stack.wait_served(WWW, {V1, V2})
    assert stack.vault_records() == {(WWW, V1), (WWW, V2)}
    assert serial_gt(soa_serial(stack.zone_path.read_text()), replaced)  # moved on, not back


async def test_a_large_zone_is_rebuilt_from_snapshot_and_delta_after_a_restart(make_stack):
    """Past INLINE_MAX records the zone secret is a delta over a snapshot secret; a restarted
    dnsapi rebuilds a lost zone file from both, and removing everything leaves one plain secret
    and no snapshot behind."""
    def roomy(config):  # one token writes the whole zone: the limits have their own tests
        config.update(rate_limit={"per_second": 0}, max_records_per_token=2000)
    stack = make_stack(edit=roomy)
    original = stack.zone_path.read_text()
    names = [f"_acme-challenge.bulk{i}.dev.local" for i in range(20)]
    pairs = {(names[i % 20], f"bulk-{i:04d}") for i in range(INLINE_MAX + 60)}
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async def send(method: str, fqdn: str, value: str, status: int) -> None:
            async with session.request(method, stack.url + "/v1/records",
                                       json={"fqdn": fqdn, "value": value}) as response:
                assert response.status == status, await response.text()
        await asyncio.gather(*(send("POST", f, v, 201) for f, v in pairs))
        secret = stack.vault_secret("zones/dev.local")
        assert secret["format"] == 3 and stack.vault_secret(f"snapshots/dev.local/{secret['base']}")
        stack.stop_dnsapi()
        replace_zone_file(stack.zone_path, original)  # records lost
        stack.start_dnsapi()
        for name in names:
            stack.wait_served(name, {v for f, v in pairs if f == name})
        await asyncio.gather(*(send("DELETE", f, v, 200) for f, v in pairs))
    assert stack.vault_records() == set() and stack.vault_secret("zones/dev.local")["format"] == 2
    listing = stack.vault.client.secrets.kv.v2.list_secrets  # the snapshots folder is gone
    with pytest.raises(hvac.exceptions.InvalidPath):
        listing(path=f"{stack.prefix}/snapshots/dev.local", mount_point="secret")
    stack.wait_served(names[0], set())


# Lines another node may write that this one must keep but not serve, and a part of each that
# must not reach the zone file: a kind from a newer dnsapi (a rolling upgrade), and a CNAME to
# an acme-dns zone only another node's config names (configs differing during a rollout).
OTHERS_LINES = [("_acme-challenge.newer.dev.local 192.0.2.7 60 {now} A", "192.0.2.7"),
                ("_acme-challenge.c.dev.local x.accounts.example.net 60 {now} CNAME",
                 "accounts.example.net")]


@pytest.mark.parametrize(("template", "marker"), OTHERS_LINES, ids=["newer kind", "other config"])
def test_another_nodes_record_survives_this_ones_writes(stack, template, marker):
    """Another node writes a record this dnsapi does not know or would not accept into the
    zone secret. This one's next writes keep it in Vault, and neither serves nor lists it."""
    newer = template.format(now=f"{time.time():.3f}")
    assert stack.add(WWW, V1).status_code in (200, 201)
    stack.put_record_line(newer)
    assert stack.add(WWW, V2).status_code == 201
    assert stack.remove(WWW, V1).status_code == 200
    assert newer in stack.vault_secret("zones/dev.local")["records"].splitlines()
    assert stack.vault_records() - {tuple(newer.split()[:2])} == {(WWW, V2)}
    assert marker not in stack.zone_path.read_text()
    listed = stack.call("GET", "/v1/records").json()
    assert marker not in str(listed)
    assert stack.remove(WWW, V2).status_code == 200


def test_a_record_added_over_a_kept_line_replaces_it_for_good(stack):
    """A kept line (here a TTL this node refuses) and a client adding the same name and value:
    Vault holds the client's record alone, and once it is removed, nothing at that key."""
    assert stack.add(WWW, V1).status_code in (200, 201)
    refused = f"{WWW} {V2} -1 {time.time():.3f}"  # a TTL no dnsapi writes
    stack.put_record_line(refused)
    assert stack.add(WWW, V2).status_code == 201
    lines = stack.vault_secret("zones/dev.local")["records"].splitlines()
    assert refused not in lines and [line.split()[1] for line in lines].count(V2) == 1
    assert stack.remove(WWW, V2).status_code == 200
    assert stack.remove(WWW, V1).status_code == 200
    assert V2 not in stack.vault_secret("zones/dev.local")["records"]


@pytest.mark.parametrize(("template", "marker"), OTHERS_LINES, ids=["newer kind", "other config"])
async def test_another_nodes_record_in_a_delta_is_carried_into_the_next_snapshot(make_stack, template,
                                                                                  marker):
    """Past INLINE_MAX records another node's line may arrive in a delta; a delta written by this
    dnsapi holds only what it changed, so its next write takes a snapshot holding the line."""
    stack = make_stack(edit=lambda c: c.update(rate_limit={"per_second": 0}, max_records_per_token=2000))
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async def add(value: str) -> None:
            body = {"fqdn": WWW, "value": value}
            async with session.post(stack.url + "/v1/records", json=body) as response:
                assert response.status == 201, await response.text()
        await asyncio.gather(*(add(f"bulk-{i:04d}") for i in range(INLINE_MAX + 10)))
        before = stack.vault_secret("zones/dev.local")
        assert before["format"] == 3
        newer = template.format(now=f"{time.time():.3f}")
        stack.put_record_line(newer)
        await add("after-the-newer-line")
        after = stack.vault_secret("zones/dev.local")
        assert after["format"] == 3 and after["base"] != before["base"]
        assert newer in stack.vault_secret(f"snapshots/dev.local/{after['base']}")["records"].splitlines()
        await add("and-one-more")  # a delta again over that snapshot, which keeps the line
    last = stack.vault_secret("zones/dev.local")
    assert last["base"] == after["base"] and newer not in last["records"]
    assert {(WWW, "after-the-newer-line"), (WWW, "and-one-more")} <= stack.vault_records()
    assert marker not in stack.zone_path.read_text()


def test_reconcile_timer_repairs_file_and_picks_up_vault_changes(make_stack):
    stack = make_stack(edit=lambda c: c.update(reconcile_interval="500ms"))
    stack.add(WWW, V1)
    # someone damages the block by hand, with a new serial so that CoreDNS loads it
    tampered = stack.zone_path.read_text().replace(V1, "tampered")
    assert "tampered" in tampered
    serial = replace_zone_file(stack.zone_path, tampered)
    wait_until(lambda: block_of(stack) == {(WWW, V1)}, 5, "the block to be rewritten from Vault")
    assert serial_gt(soa_serial(stack.zone_path.read_text()), serial)
    stack.wait_served(WWW, {V1}, timeout=5)
    # a change written to Vault by another node shows up without any request here
    stack.vault.client.secrets.kv.v2.create_or_update_secret(
        path=f"{stack.prefix}/zones/dev.local", mount_point="secret",
        secret=encode_records({(WWW, V2): Record(WWW, V2, 60, time.time())}))
    stack.wait_served(WWW, {V2}, timeout=5)


def test_unparsable_zone_file_refuses_start_and_is_left_untouched(make_stack):
    stack = make_stack(start=False)
    broken = stack.zone_path.read_text().replace("60 )", "60")
    stack.zone_path.write_text(broken)
    with pytest.raises(Exception, match="does not parse"):
        stack.start_dnsapi()
    assert "does not parse" in (stack.dir / "dnsapi.log").read_text()
    assert stack.zone_path.read_text() == broken


def test_zone_broken_at_runtime_gives_500_then_converges(make_stack):
    stack = make_stack(edit=lambda c: c.update(reconcile_interval="500ms"))
    good = stack.zone_path.read_text()
    broken = good + "oops IN A not-an-address\n"
    stack.zone_path.write_text(broken)
    response = stack.add(WWW, V1)
    assert response.status_code == 500
    assert response.json()["error"] == "zone_error"
    assert "does not parse" in response.json()["message"]
    assert stack.zone_path.read_text() == broken  # untouched
    ready = stack.call("GET", "/readyz")
    assert ready.status_code == 503 and "zone:dev.local" in ready.json()["checks"]
    assert stack.vault_records() == {(WWW, V1)}  # Vault has it: nothing acknowledged is lost
    stack.zone_path.write_text(good)
    stack.wait_served(WWW, {V1}, timeout=5)
    assert stack.call("GET", "/readyz").status_code == 200


def test_readyz(stack):
    response = stack.call("GET", "/readyz", token=None)
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {
        "vault:dev.local": "ok", "zone:dev.local": "ok", f"dns:dev.local@127.0.0.1:{stack.dns_port}": "ok"}}


async def test_concurrent_adds_and_removes_are_all_applied(make_stack):
    stack = make_stack(edit=lambda config: config.update(max_records_per_token=200))
    names = [f"_acme-challenge.h{i % 10}.dev.local" for i in range(120)]
    values = [f"value-{i:04d}" for i in range(120)]
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async def send(method, fqdn, value):
            async with session.request(method, stack.url + "/v1/records",
                                       json={"fqdn": fqdn, "value": value}) as response:
                return response.status
        statuses = await asyncio.gather(*(send("POST", n, v) for n, v in zip(names, values, strict=True)))
        assert statuses == [201] * 120
        statuses = await asyncio.gather(*(send("DELETE", n, v)
                                          for n, v in list(zip(names, values, strict=True))[::2]))
        assert statuses == [200] * 60
    expected = set(list(zip(names, values, strict=True))[1::2])
    assert stack.vault_records() == expected
    for i in range(10):
        name = f"_acme-challenge.h{i}.dev.local"
        stack.wait_served(name, {v for n, v in expected if n == name})


async def test_two_instances_on_one_vault_never_lose_an_update(make_stack):
    prefix = "shared-" + str(id(make_stack))
    def fast(config):
        config.update(reconcile_interval="500ms")

    first, second = make_stack(edit=fast, prefix=prefix), make_stack(edit=fast, prefix=prefix)
    pairs = [(f"_acme-challenge.n{i % 5}.dev.local", f"v{i:03d}") for i in range(80)]

    async def send(session, stack, fqdn, value):
        async with session.post(stack.url + "/v1/records", json={"fqdn": fqdn, "value": value},
                                headers={"Authorization": f"Bearer {stack.token}"}) as response:
            return response.status

    async with aiohttp.ClientSession() as session:
        statuses = await asyncio.gather(*(send(session, (first, second)[i % 2], f, v)
                                          for i, (f, v) in enumerate(pairs)))
    assert statuses == [201] * 80
    assert first.vault_records() == set(pairs)
    for stack in (first, second):  # both zone files converge to Vault's state
        for i in range(5):
            name = f"_acme-challenge.n{i}.dev.local"
            stack.wait_served(name, {v for f, v in pairs if f == name}, timeout=5)



def test_zone_record_limit_is_409(make_stack):
    stack = make_stack(edit=lambda c: c.update(max_records_per_zone=2))
    assert stack.add(WWW, V1).status_code == 201
    assert stack.add(WWW, V2).status_code == 201
    full = stack.add(WWW, "third")
    assert full.status_code == 409 and full.json()["error"] == "too_many_records"
    assert stack.add(WWW, V1).status_code == 200  # an existing pair is still fine
    assert stack.vault_records() == {(WWW, V1), (WWW, V2)}


def test_several_zones_longest_suffix_wins(make_stack):
    """dev.local and the nested corp.dev.local, one file each, one dnsapi, one CoreDNS."""
    def two_zones(config):
        config["zones"].append({"name": "corp.dev.local", "file": "db.corp.dev.local"})
    stack = make_stack(edit=two_zones, start=False)
    corp = stack.dir / "db.corp.dev.local"
    corp.write_text(stack.zone_path.read_text().replace("dev.local.", "corp.dev.local."))
    corefile = stack.dir / "Corefile"
    corefile.write_text(corefile.read_text() + "corp.dev.local {\n    bind 127.0.0.1\n"
                        "    file db.corp.dev.local {\n        reload 250ms\n    }\n}\n")
    stack.coredns.stop()
    stack.coredns = start_coredns(stack.dir, stack.dns_port, ["dev.local", "corp.dev.local"],
                                  stack.dir / "coredns2.log")
    stack.start_dnsapi()
    assert stack.add("_acme-challenge.www.corp.dev.local", V1).status_code == 201
    assert stack.add("_acme-challenge.www.dev.local", V2).status_code == 201
    stack.wait_served("_acme-challenge.www.corp.dev.local", {V1})
    stack.wait_served("_acme-challenge.www.dev.local", {V2})
    assert "_acme-challenge.www.corp.dev.local" in corp.read_text()
    assert "_acme-challenge.www.corp.dev.local" not in stack.zone_path.read_text()
    assert stack.vault_records("corp.dev.local") == {("_acme-challenge.www.corp.dev.local", V1)}
    assert stack.vault_records("dev.local") == {("_acme-challenge.www.dev.local", V2)}
