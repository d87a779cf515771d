"""RecordService and its ZoneWriter in-process: a real zone file in a temp directory, and an
in-memory store (helpers.MemoryStore) in place of Vault that the tests script: another writer
that writes first, failures, a write held at a gate while more requests queue."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from dnsapi import service as service_module
from dnsapi.audit import AuditLog, value_hash
from dnsapi.block import block_records
from dnsapi.config import Config
from dnsapi.errors import DnsapiError, NameConflict, TooManyRecords, VaultUnavailable, ZoneError
from dnsapi.records import Change, Key, Outcome, Prerequisite, Record, Update
from dnsapi.service import RecordService
from dnsapi.zonefile import ZoneFile, ZoneText

from .helpers import ZONE, MemoryStore, running, service_config, until, until_done

WWW = "_acme-challenge.www.dev.local"
API = "_acme-challenge.api.dev.local"


def zone_path(config: Config) -> Path:
    return config.zones[0].file


def block(config: Config) -> set[Key]:
    """The records in the zone file's managed block."""
    return set(block_records(ZoneText.split(zone_path(config).read_text()).block, ZONE))


def temp_files(config: Config) -> list[Path]:
    """Temp files beside the zone file: a rewrite prepared but never put in place or dropped."""
    return list(zone_path(config).parent.glob(".*.tmp"))


def record(service: RecordService, value: str, fqdn: str = WWW, owner: str = "acme") -> Record:
    return service.make_record(fqdn, value, owner=owner)


def metric(service: RecordService, name: str, **labels: str) -> float:
    return service.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_an_add_is_answered_once_the_store_and_the_zone_file_have_it(tmp_path):
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        mine = record(service, "A" * 43)
        assert await service.add(mine) is Outcome.CREATED
        assert store.records() == {mine.key}
        assert block(config) == {mine.key}
        assert await service.add(record(service, "A" * 43)) is Outcome.EXISTED
        assert await service.remove(WWW, "A" * 43) is Outcome.REMOVED
        assert await service.remove(WWW, "A" * 43) is Outcome.ABSENT
        assert store.records() == set() and block(config) == set()


async def test_the_zone_file_is_prepared_while_the_store_writes_and_changed_only_after(tmp_path):
    """The file's next text is ready (a flushed temp file) while Vault is still writing, so the
    add waits for the slower of the two; the file itself changes only once Vault has the record."""
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        before = zone_path(config).read_bytes()
        gate = store.hold("write_zone")
        add = asyncio.create_task(service.add(record(service, "P" * 43)))
        await gate.entered.wait()
        # (mkstemp makes the file empty, then the worker thread writes it: wait for the text)
        await until_done(lambda: any('TXT "' + "P" * 43 in tmp.read_text() for tmp in temp_files(config)),
                         "the next text prepared beside the file")
        assert len(temp_files(config)) == 1
        assert zone_path(config).read_bytes() == before and not add.done()
        gate.release()
        assert await add is Outcome.CREATED
        assert block(config) == {(WWW, "P" * 43)} and temp_files(config) == []


async def test_a_refused_add_leaves_a_kept_record_whatever_else_its_batch_writes(tmp_path):
    """A record this node keeps but does not serve (another node's: here a TTL it refuses), and
    in one batch an add of its name and value that is refused (a failed RFC 2136 prerequisite)
    beside an add that is made: the kept record stays, as it does when the refused add is alone."""
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        kept = Record(WWW, "K" * 43, -1, time.time())  # a TTL no dnsapi writes
        store.put(ZONE, kept)
        await service.reconcile()
        gate = store.hold("write_zone")
        first = asyncio.create_task(service.add(record(service, "first")))
        await gate.entered.wait()
        refused = Update(changes=(Change("add", record(service, "K" * 43)),),
                         prerequisites=(Prerequisite("absent", WWW, Outcome.YXRRSET),))
        batch = [asyncio.create_task(service.update(ZONE, refused)),
                 asyncio.create_task(service.add(record(service, "made", fqdn=API)))]
        await until(lambda: service.writers[ZONE].queue.qsize() == 2, "both queued behind the write")
        gate.release()
        assert [await first, *await asyncio.gather(*batch)] == [Outcome.CREATED, Outcome.YXRRSET,
                                                                 Outcome.CREATED]
        assert kept.key in store.records() and (API, "made") in store.records()


async def test_an_error_nobody_foresaw_fails_its_batch_and_the_zone_writer_lives_on(tmp_path, monkeypatch):
    """The writer task serves every change of its zone: if it died, each later add would hang."""
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        real = ZoneFile.prepare

        def broken(self, records, today=None):
            monkeypatch.setattr(ZoneFile, "prepare", real)  # once
            raise RuntimeError("a bug")

        monkeypatch.setattr(ZoneFile, "prepare", broken)
        with pytest.raises(DnsapiError, match="internal error"):
            await asyncio.wait_for(service.add(record(service, "first")), 10)
        assert await asyncio.wait_for(service.add(record(service, "second")), 10) is Outcome.CREATED
        assert (WWW, "second") in block(config)


async def test_adds_queued_behind_a_write_cost_one_store_write_and_one_zone_rewrite(tmp_path):
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        gate = store.hold("write_zone")
        first = asyncio.create_task(service.add(record(service, "first")))
        await gate.entered.wait()  # the writer is inside the store with the first add
        queued = [asyncio.create_task(service.add(record(service, f"queued-{i}"))) for i in range(20)]
        writer = service.writers[ZONE]
        await until(lambda: writer.queue.qsize() == 20, "20 adds queued behind the held write")
        gate.release()
        assert await first is Outcome.CREATED
        assert await asyncio.gather(*queued) == [Outcome.CREATED] * 20
        assert store.attempts == 2 and len(store.writes) == 2  # the first add, then the 20
        assert len(store.writes[1][1]) == 21
        assert metric(service, "dnsapi_zone_rewrites_total", zone=ZONE) == 2
        assert len(block(config)) == 21


async def test_a_write_that_loses_the_race_rereads_reapplies_and_loses_nothing(tmp_path):
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        theirs = Record(API, "T" * 43, 60, time.time(), "other-instance")
        store.before_write = lambda zone: store.put(zone, theirs)  # another instance writes first
        mine = record(service, "M" * 43)
        assert await service.add(mine) is Outcome.CREATED
        assert store.attempts == 2  # refused by check-and-set, then written on top of theirs
        assert store.records() == {theirs.key, mine.key}
        assert block(config) == {theirs.key, mine.key}
        assert metric(service, "dnsapi_vault_cas_conflicts_total", zone=ZONE) == 1


async def test_a_zone_other_writers_never_stop_changing_gives_up_with_vault_unavailable(
        tmp_path, monkeypatch):
    monkeypatch.setattr(service_module, "CAS_RETRY_SECONDS", 0.1)
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        before = zone_path(config).read_bytes()

        def another_write(zone: str) -> None:
            store.put(zone)
            store.before_write = another_write

        store.before_write = another_write
        with pytest.raises(VaultUnavailable, match="check-and-set conflicts"):
            await service.add(record(service, "never"))
        store.before_write = None
        assert store.writes == [] and zone_path(config).read_bytes() == before
        assert temp_files(config) == []


async def test_a_retried_add_is_confirmed_against_the_store_not_the_writers_cache(tmp_path):
    """Another instance removed the record since this writer last wrote: the retry must put it
    back, not answer "existed" from a stale cache."""
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        mine = record(service, "R" * 43)
        assert await service.add(mine) is Outcome.CREATED
        store.put(ZONE, replace=True)  # removed elsewhere
        assert await service.add(record(service, "R" * 43)) is Outcome.CREATED
        assert store.records() == {mine.key}


async def test_vault_unavailable_fails_every_change_of_the_batch_and_leaves_the_zone_file(tmp_path):
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        before = zone_path(config).read_bytes()
        store.fail("write_zone", VaultUnavailable("Vault at http://127.0.0.1:1 is unreachable"))
        results = await asyncio.gather(*(service.add(record(service, f"v{i}")) for i in range(3)),
                                       return_exceptions=True)
        assert store.attempts == 1  # one batch, one failed write
        assert [type(r) for r in results] == [VaultUnavailable] * 3
        assert store.records() == set() and zone_path(config).read_bytes() == before
        assert metric(service, "dnsapi_zone_rewrites_total", zone=ZONE) == 0
        assert temp_files(config) == []  # the text prepared during the write is dropped


async def test_a_zone_file_error_keeps_the_change_in_the_store_and_a_later_reconcile_writes_it(
        tmp_path):
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        good = zone_path(config).read_text()
        broken = good + "oops IN A not-an-address\n"
        zone_path(config).write_text(broken)
        mine = record(service, "Z" * 43)
        with pytest.raises(ZoneError) as info:
            await service.add(mine)
        assert info.value.status == 500 and info.value.code == "zone_error"
        assert "stored in Vault" in info.value.message
        assert store.records() == {mine.key}  # nothing acknowledged is lost...
        assert zone_path(config).read_text() == broken  # ...and the operator's file is untouched
        assert metric(service, "dnsapi_zone_write_errors_total", zone=ZONE) == 1
        zone_path(config).write_text(good)
        await service.reconcile()
        assert block(config) == {mine.key}


async def test_the_per_token_quota_is_checked_before_the_zone_limit(tmp_path):
    config, _ = service_config(tmp_path, {"acme": ["*.dev.local"], "other": ["*.dev.local"]},
                               max_records_per_token=2, max_records_per_zone=3)
    async with running(config) as (service, store):
        assert await service.add(record(service, "a1")) is Outcome.CREATED
        assert await service.add(record(service, "a2")) is Outcome.CREATED
        with pytest.raises(TooManyRecords) as quota:
            await service.add(record(service, "a3"))
        assert quota.value.code == "token_quota_exceeded"
        assert await service.add(record(service, "a1")) is Outcome.EXISTED  # a retry is fine
        assert await service.add(record(service, "o1", owner="other")) is Outcome.CREATED
        with pytest.raises(TooManyRecords) as full:
            await service.add(record(service, "o2", owner="other"))
        assert full.value.code == "too_many_records"
        assert {value for _, value in store.records()} == {"a1", "a2", "o1"}
        assert await service.remove(WWW, "a1") is Outcome.REMOVED
        assert await service.add(record(service, "o2", owner="other")) is Outcome.CREATED


async def test_names_the_operators_zone_cannot_hold_are_refused_before_the_store_sees_them(tmp_path):
    config, _ = service_config(tmp_path)
    path = zone_path(config)
    path.write_text(path.read_text() + "_acme-challenge.cn IN CNAME ns1\nsub IN NS ns.other.example.\n")
    async with running(config) as (service, store):
        cname, below = "_acme-challenge.cn.dev.local", "_acme-challenge.x.sub.dev.local"
        results = await asyncio.gather(service.add(record(service, "c", cname)),
                                       service.add(record(service, "d", below)),
                                       service.add(record(service, "ok")), return_exceptions=True)
        assert [type(r) for r in results[:2]] == [NameConflict, NameConflict]
        assert results[2] is Outcome.CREATED  # the same batch's other add goes through
        assert [set(records) for _, records in store.writes] == [{(WWW, "ok")}]
        assert block(config) == {(WWW, "ok")}


async def test_bad_records_in_the_store_are_not_served_but_kept_and_counted_once(tmp_path):
    """A zone secret edited by hand: records at the apex, a wildcard, outside the zone, or with a
    value dnsapi would never accept must not stop the zone (nor reach the file). They stay in
    Vault: a record this node refuses may be another node's, whose config differs."""
    config, _ = service_config(tmp_path)
    store = MemoryStore()
    good = Record(WWW, "G" * 43, 60, time.time())
    bad = [Record("dev.local", "V", 60, 1.0), Record("*.dev.local", "V", 60, 1.0),
           Record("_acme-challenge.evil.example.com", "V", 60, 1.0),
           Record("_acme-challenge.x.dev.local", 'bad"value', 60, 1.0)]
    store.put(ZONE, good, *bad)
    async with running(config, store) as (service, _):
        assert block(config) == {good.key}
        assert [r.key for r in await service.list()] == [good.key]
        assert await service.add(record(service, "new", API)) is Outcome.CREATED
        assert block(config) == {good.key, (API, "new")}
        assert store.records(ZONE) == {good.key, (API, "new")} | {r.key for r in bad}
        await service.reconcile()  # read again: each is counted and logged once
        assert metric(service, "dnsapi_vault_bad_records_total", zone=ZONE) == 4


async def test_a_refused_record_with_a_nan_time_is_counted_once(tmp_path):
    """NaN equals nothing, itself included: what is remembered must not be the record."""
    config, _ = service_config(tmp_path)
    store = MemoryStore()
    store.put(ZONE, Record(WWW, "N" * 43, 60, float("nan")))
    async with running(config, store) as (service, _):
        await service.reconcile()
        await service.reconcile()
        assert metric(service, "dnsapi_vault_bad_records_total", zone=ZONE) == 1


async def test_reconcile_expires_old_records_and_audits_each(tmp_path):
    config, _ = service_config(tmp_path, max_age="1h")
    store = MemoryStore()
    old = Record(WWW, "O" * 43, 60, time.time() - 7200)
    fresh = Record(API, "F" * 43, 60, time.time())
    store.put(ZONE, old, fresh)
    audit = AuditLog(tmp_path / "audit.jsonl")
    async with running(config, store, audit):
        assert store.records() == {fresh.key} and block(config) == {fresh.key}
    audit.close()
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(e["action"], e["fqdn"], e["value_sha256"], e["result"]) for e in lines] == [
        ("expire", WWW, value_hash(old.value), "removed")]


async def test_reconcile_brings_in_records_another_instance_wrote(tmp_path):
    config, _ = service_config(tmp_path)
    async with running(config) as (service, store):
        theirs = Record(API, "T" * 43, 60, time.time())
        store.put(ZONE, theirs)
        await service.reconcile()
        assert block(config) == {theirs.key}


async def test_start_refuses_a_zone_file_that_does_not_parse(tmp_path):
    config, _ = service_config(tmp_path)
    zone_path(config).write_text(zone_path(config).read_text().replace("60 )", "60"))
    store = MemoryStore()
    service = RecordService(config, store.metrics, store=store)  # type: ignore[arg-type]
    with pytest.raises(ZoneError, match="does not parse"):
        await service.start()
