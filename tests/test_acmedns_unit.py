"""The acme-dns front door in-process (aiohttp's test client, the in-memory store): acme-dns's
statuses and bodies byte for byte, Go's JSON decoding, the CNAME record kind's rules."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dnsapi import acmedns, acmedns_accounts, acmedns_admin
from dnsapi.acmedns_accounts import Account, Accounts
from dnsapi.api import create_app
from dnsapi.block import ManagedBlock, block_entries
from dnsapi.errors import ConfigError, VaultUnavailable, ZoneError
from dnsapi.records import Change, Outcome, Record, apply_changes
from dnsapi.service import RecordService
from dnsapi.store import decode_records, encode_records

from .helpers import MemoryStore, running, service_config, until_done

ZONE_ACME = "acme.dev.local"
TXT = "x" * 43


@contextlib.asynccontextmanager
async def serving(directory: Path, settings: dict[str, Any] | None = None, **acme: Any
                  ) -> AsyncIterator[tuple[TestClient, MemoryStore]]:
    config, _ = service_config(directory, acme_dns={"zone": ZONE_ACME, **acme}, **(settings or {}))
    store = MemoryStore()
    service = RecordService(config, store.metrics, store=store)  # type: ignore[arg-type]
    app = create_app(config, service=service)
    assert acmedns.attach(app) is None
    async with TestClient(TestServer(app)) as client:
        yield client, store


def error(name: str) -> str:
    return f'{{"error": "{name}"}}'


async def test_register_is_closed_by_default(tmp_path):
    async with serving(tmp_path) as (client, store):
        response = await client.post("/register")
        assert (response.status, await response.text()) == (401, error("forbidden"))
        assert store.accounts == {}


@pytest.mark.parametrize(("body", "status", "answer"), [
    (b"", 201, None), (b"null", 201, None), (b'{"AllowFrom": ["127.0.0.0/8"]}', 201, None),
    (b'{"allowfrom": null, "unknown": {"x": 1}}', 201, None),
    (b"{", 400, "malformed_json_payload"), (b"[]", 400, "malformed_json_payload"),
    (b'{"allowfrom": [1]}', 400, "malformed_json_payload"),
    (b'{"allowfrom": {}}', 400, "malformed_json_payload"),  # (an object is not a list: Go refuses it)
    (b'{"username": 5}', 400, "malformed_json_payload"),
    (b'{"allowfrom": ["10.0.0.0/8"]} {}', 400, "malformed_json_payload"),
    (b'{"allowfrom": NaN}', 400, "malformed_json_payload"),
    (b'\xff', 400, "malformed_json_payload"),
    (b'{"allowfrom": ["10.0.0.1"]}', 400, "invalid_allowfrom_cidr"),
    (b'{"allowfrom": [""]}', 400, "invalid_allowfrom_cidr"),
    (b'{"allowfrom": ["[::1]/128", "10.0.0.1/8"]}', 201, None),
    # what Go's net.ParseCIDR refuses and Python's ip_network would take
    (b'{"allowfrom": ["10.0.0.0/255.255.255.0"]}', 400, "invalid_allowfrom_cidr"),
    (b'{"allowfrom": ["0.0.0.0/0.0.0.0"]}', 400, "invalid_allowfrom_cidr"),
    (b'{"allowfrom": ["fe80::%eth0/64"]}', 400, "invalid_allowfrom_cidr"),
    (b'{"allowfrom": ["10.0.0.0/\\u00b2"]}', 400, "invalid_allowfrom_cidr"),  # a superscript two
])
async def test_register_bodies_as_go_reads_them(tmp_path, body, status, answer):
    async with serving(tmp_path, register={"allow_from": ["127.0.0.1/32"]}) as (client, store):
        response = await client.post("/register", data=body)
        text = await response.text()
        assert response.status == status, text
        if answer is not None:
            assert text == error(answer) and store.accounts == {}
            return
        created = json.loads(text)
        assert list(created) == ["username", "password", "fulldomain", "subdomain", "allowfrom"]
        assert created["fulldomain"] == f"{created['subdomain']}.{ZONE_ACME}"
        secret = store.accounts[created["username"]]
        assert created["password"] not in json.dumps(secret)  # only its scrypt hash is kept
        assert Account.from_secret(created["username"], secret) is not None


async def test_update_checks_in_acme_dns_order_and_answers_like_it(tmp_path):
    async with serving(tmp_path, register={"allow_from": ["127.0.0.1/32"]}) as (client, store):
        account = await (await client.post("/register")).json()
        other = await (await client.post("/register")).json()
        headers = {"X-Api-User": account["username"], "X-Api-Key": account["password"]}

        async def update(body: bytes, **extra: str) -> tuple[int, str]:
            response = await client.post("/update", data=body, headers={**headers, **extra})
            return response.status, await response.text()

        own = account["subdomain"]
        assert await update(json.dumps({"SubDomain": own, "Txt": TXT}).encode()) == \
            (200, f'{{"txt": "{TXT}"}}')
        # Go's Decoder reads the first value only: trailing data is ignored
        assert (await update(json.dumps({"subdomain": own, "txt": TXT}).encode() + b" junk"))[0] == 200
        assert await update(b"{") == (401, error("forbidden"))
        assert await update(json.dumps({"subdomain": other["subdomain"], "txt": TXT}).encode()) == \
            (401, error("forbidden"))
        assert await update(json.dumps({"subdomain": own, "txt": TXT[:-1] + "+"}).encode()) == \
            (400, error("bad_txt"))
        assert await update(json.dumps({"subdomain": own, "txt": TXT}).encode(),
                            **{"X-Api-Key": account["password"][:-1] + "!"}) == (401, error("forbidden"))
        assert await update(json.dumps({"subdomain": own, "txt": TXT}).encode(),
                            **{"X-Api-User": other["username"]}) == (401, error("forbidden"))
        assert store.records() == {(account["fulldomain"], TXT)}
        health = await client.get("/health")
        assert (health.status, await health.text()) == (200, "")


async def test_health_answers_an_address_that_is_over_its_refusal_limit(tmp_path):
    """/health is a probe, as /healthz is: a monitor shares its address with others."""
    config, _ = service_config(tmp_path, acme_dns={"zone": ZONE_ACME},
                               refusals={"per_second": 1, "burst": 2})
    store = MemoryStore()
    app = create_app(config, service=RecordService(config, store.metrics, store=store))  # type: ignore[arg-type]
    assert acmedns.attach(app) is None
    async with TestClient(TestServer(app)) as client:
        assert [(await client.post("/update", json={})).status for _ in range(3)] == [401, 401, 429]
        health = await client.get("/health")
        assert (health.status, await health.text()) == (200, "")


async def test_an_account_outside_its_allowfrom_is_refused(tmp_path):
    async with serving(tmp_path, register={"allow_from": ["127.0.0.1/32"]}) as (client, store):
        account = await (await client.post("/register", json={"allowfrom": ["192.0.2.0/24"]})).json()
        response = await client.post("/update", json={"subdomain": account["subdomain"], "txt": TXT},
                                     headers={"X-Api-User": account["username"],
                                              "X-Api-Key": account["password"]})
        assert (response.status, await response.text()) == (401, error("forbidden"))
        assert store.records() == set()


def test_a_cname_and_other_data_never_share_a_name():
    cname = Record("_acme-challenge.www.dev.local", f"0a8f4c2e-2b4e-4c1a-9f00-0123456789ab.{ZONE_ACME}",
                   60, 1.0, kind="CNAME")
    txt = Record("_acme-challenge.www.dev.local", TXT, 60, 1.0)
    records: dict = {}
    assert apply_changes(records, [Change("add", cname), Change("add", txt)], 100) == \
        [Outcome.CREATED, Outcome.CONFLICT]
    other: dict = {}
    assert apply_changes(other, [Change("add", txt), Change("add", cname)], 100) == \
        [Outcome.CREATED, Outcome.CONFLICT]
    # a remove of the whole name (RFC 2136) takes TXT values only
    assert apply_changes(records, [Change("remove_name", Record(cname.fqdn, "", 0, 0.0))], 100) == \
        [Outcome.ABSENT]
    assert decode_records(encode_records(records)) == records


def test_a_cname_line_is_proven_and_anything_injected_refused(monkeypatch):
    target = f"0a8f4c2e-2b4e-4c1a-9f00-0123456789ab.{ZONE_ACME}"
    cname = Record("_acme-challenge.www.dev.local", target, 60, 1.0, kind="CNAME")
    block = ManagedBlock("dev.local").render({cname.key: cname})
    assert f"_acme-challenge.www.dev.local. 60 IN CNAME {target}.\n" in block
    assert block_entries(block, "dev.local") == {cname.key: (60, "CNAME")}
    evil = Record("_acme-challenge.www.dev.local", target + ". 60 IN A 10.0.0.1\nx", 60, 1.0,
                  kind="CNAME")
    with pytest.raises(ZoneError):
        ManagedBlock("dev.local").render({evil.key: evil})


def test_config_refuses_an_acme_zone_outside_the_zones(tmp_path):
    with pytest.raises(ConfigError, match="acme_dns.zone: .* is not one of the zones"):
        service_config(tmp_path, acme_dns={"zone": "acme.example"})
    with pytest.raises(ConfigError, match="acme_dns.register.allow_from: must be a list of networks"):
        service_config(tmp_path, acme_dns={"zone": ZONE_ACME, "register": {"allow_from": ["x"]}})
    with pytest.raises(ConfigError, match="acme_dns.surprise: unknown setting"):
        service_config(tmp_path, acme_dns={"zone": ZONE_ACME, "surprise": 1})


async def test_password_checks_take_turns_and_a_flood_is_refused_429(tmp_path, monkeypatch):
    """Anyone can make a check with a made-up username: at most HASHING_MOST scrypt runs at once,
    in the door's own threads; a check that finds none free in time is refused, not queued."""
    monkeypatch.setattr(acmedns_accounts, "HASHING_WAIT", 0.05)
    async with serving(tmp_path, register={"allow_from": ["127.0.0.1/32"]}) as (client, store):
        account = await (await client.post("/register")).json()
        release, running = threading.Event(), []
        real = acmedns_accounts.hash_password

        def held(password: str, salt: bytes) -> str:
            running.append(threading.current_thread().name)
            release.wait(10)
            return real(password, salt)

        monkeypatch.setattr(acmedns_accounts, "hash_password", held)
        body = {"subdomain": account["subdomain"], "txt": TXT}

        async def update(user: str) -> tuple[int, str]:
            response = await client.post("/update", json=body,
                                         headers={"X-Api-User": user, "X-Api-Key": "k" * 40})
            return response.status, await response.text()

        made_up = [str(uuid) for uuid in (f"00000000-0000-4000-8000-00000000000{i}" for i in range(3))]
        first = [asyncio.create_task(update(user)) for user in made_up[:acmedns_accounts.HASHING_MOST]]
        await until_done(lambda: len(running) == acmedns_accounts.HASHING_MOST, "both checks hashing")
        status, text = await update(made_up[-1])
        assert status == 429 and json.loads(text)["error"] == "too_many_password_checks"
        release.set()
        assert [status for status, _ in await asyncio.gather(*first)] == [401, 401]
        assert all(name.startswith("scrypt") for name in running)  # not the zone writers' threads
        assert store.records() == set()


async def test_registration_stops_at_max_accounts(tmp_path):
    """From the last notes' list: a registrant could make accounts (each a Vault secret) without
    end. Past acme_dns.max_accounts /register is refused and makes none."""
    opened = {"allow_from": ["127.0.0.1/32"]}
    async with serving(tmp_path, max_accounts=2, register=opened) as (client, store):
        together = await asyncio.gather(*(client.post("/register") for _ in range(5)))
        assert sorted(response.status for response in together) == [201, 201, 409, 409, 409]
        response = await client.post("/register")
        body = await response.json()
        assert (response.status, body["error"]) == (409, "too_many_accounts")
        assert "acme_dns.max_accounts (2)" in body["message"] and len(store.accounts) == 2


async def test_made_up_usernames_cannot_fill_the_vault_threads(tmp_path, monkeypatch):
    """The review's finding: each check with a made-up username read Vault before it waited for
    a hashing turn, so a flood queued Vault reads in the threads zone writes use. At most
    LOOKUPS_MOST reads for checks run at once; past them a check is refused before reading."""
    monkeypatch.setattr(acmedns_accounts, "HASHING_WAIT", 1.0)  # (time for the held ones' hashing)
    async with serving(tmp_path) as (client, store):
        release, reading = asyncio.Event(), []

        async def held(username: str) -> dict[str, Any]:
            reading.append(username)
            await release.wait()
            return {}

        monkeypatch.setattr(store, "read_account", held)

        async def update(user: str) -> tuple[int, str]:
            response = await client.post("/update", json={"subdomain": "x", "txt": TXT},
                                         headers={"X-Api-User": user, "X-Api-Key": "k" * 40})
            return response.status, await response.text()

        made_up = [f"00000000-0000-4000-8000-{i:012d}" for i in range(acmedns_accounts.LOOKUPS_MOST + 1)]
        first = [asyncio.create_task(update(user)) for user in made_up[:-1]]
        await until_done(lambda: len(reading) == acmedns_accounts.LOOKUPS_MOST, "the reads held")
        status, text = await update(made_up[-1])
        assert status == 429 and json.loads(text)["error"] == "too_many_password_checks"
        assert len(reading) == acmedns_accounts.LOOKUPS_MOST  # refused before reading
        release.set()
        assert [status for status, _ in await asyncio.gather(*first)] == [401] * len(first)


async def test_an_update_over_the_quota_is_refused_as_such_not_as_a_storage_error(tmp_path):
    async with serving(tmp_path, {"max_records_per_token": 1},
                       register={"allow_from": ["127.0.0.1/32"]}) as (client, store):
        account = await (await client.post("/register")).json()
        headers = {"X-Api-User": account["username"], "X-Api-Key": account["password"]}
        first = await client.post("/update", json={"subdomain": account["subdomain"], "txt": TXT},
                                  headers=headers)
        assert first.status == 200
        second = await client.post("/update", json={"subdomain": account["subdomain"], "txt": "y" * 43},
                                   headers=headers)
        assert second.status == 409 and (await second.json())["error"] == "token_quota_exceeded"
        assert store.records() == {(account["fulldomain"], TXT)}


async def test_an_update_racing_the_accounts_removal_leaves_no_value_behind(tmp_path, monkeypatch):
    """From the last notes' list: an update checked just before `dnsapi acme-dns rm` deleted the
    account could add its value after rm had removed the name, leaving it until max_age. The
    account is looked up again once the value is in; gone, the value is taken out again."""
    async with serving(tmp_path, register={"allow_from": ["127.0.0.1/32"]}) as (client, store):
        account = await (await client.post("/register")).json()
        real = store.write_zone

        async def removed_meanwhile(*args: Any, **kwargs: Any) -> Any:
            store.accounts.pop(account["username"], None)  # rm runs between the check and the add
            return await real(*args, **kwargs)

        monkeypatch.setattr(store, "write_zone", removed_meanwhile)
        response = await client.post("/update", json={"subdomain": account["subdomain"], "txt": TXT},
                                     headers={"X-Api-User": account["username"],
                                              "X-Api-Key": account["password"]})
        assert (response.status, await response.text()) == (401, error("forbidden"))
        assert store.records() == set()


async def test_rm_stopped_halfway_can_be_run_again(tmp_path):
    """From the last notes' list: rm deleted the account first, so a run stopped by a Vault
    error left the CNAMEs behind with no account to name them again (`no acme-dns account`)."""
    config, _ = service_config(tmp_path, acme_dns={"zone": ZONE_ACME})
    async with running(config) as (service, store):
        accounts = Accounts(store)  # type: ignore[arg-type]
        made = await acmedns_admin.register(service, accounts, ["www.dev.local"], ())
        username = made["www.dev.local"]["username"]
        store.fail("write_zone", VaultUnavailable("Vault is down"))
        with pytest.raises(VaultUnavailable):
            await acmedns_admin.remove(service, accounts, username)
        assert username in store.accounts and store.records()  # nothing lost that names them
        await acmedns_admin.remove(service, accounts, username)
        assert store.accounts == {} and store.records() == set()


def test_a_hand_edited_account_with_a_subdomain_that_is_not_text_is_locked():
    secret = {"subdomain": 5, "password_scrypt": "00" * 32, "salt": "00" * 16,
              "scrypt": "n=16384,r=8,p=1"}
    assert Account.from_secret("00000000-0000-4000-8000-000000000001", secret) is None


async def test_registration_is_rate_limited_per_registrant(tmp_path):
    """Each account costs a scrypt run and a Vault secret: a registrant gets the tokens' rate."""
    async with serving(tmp_path, {"rate_limit": {"per_second": 0.001, "burst": 2}},
                       register={"allow_from": ["127.0.0.1/32"]}) as (client, store):
        statuses = [(await client.post("/register")).status for _ in range(3)]
        assert statuses == [201, 201, 429] and len(store.accounts) == 2
