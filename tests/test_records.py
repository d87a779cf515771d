"""Applying a batch of changes to a zone's record set (pure logic)."""

from dnsapi.records import Change, Outcome, Record, apply_changes
from dnsapi.store import decode_records, encode_records


def rec(value: str, name: str = "_acme-challenge.www.dev.local") -> Record:
    return Record(name, value, 60, 1.0)


def test_batch_outcomes_in_order():
    records = {rec("a").key: rec("a")}
    changes = [Change("add", rec("b")), Change("add", rec("a")), Change("remove", rec("a")),
               Change("remove", rec("a")), Change("add", rec("a")), Change("remove", rec("zz"))]
    assert apply_changes(records, changes, limit=10) == [
        Outcome.CREATED, Outcome.EXISTED, Outcome.REMOVED, Outcome.ABSENT, Outcome.CREATED,
        Outcome.ABSENT]
    assert set(records) == {rec("a").key, rec("b").key}


def test_existing_pair_keeps_its_first_ttl_and_time():
    first = Record("_acme-challenge.x.dev.local", "v", 60, 1.0)
    records = {first.key: first}
    apply_changes(records, [Change("add", Record(first.fqdn, "v", 300, 2.0))], limit=10)
    assert records[first.key] is first


def test_limit_refuses_adds_but_not_removes():
    records: dict = {}
    outcomes = apply_changes(records, [Change("add", rec(str(i))) for i in range(3)] +
                             [Change("remove", rec("0")), Change("add", rec("x"))], limit=2)
    assert outcomes == [Outcome.CREATED, Outcome.CREATED, Outcome.FULL, Outcome.REMOVED,
                        Outcome.CREATED]
    assert len(records) == 2


def test_vault_form_round_trip():
    records = {r.key: r for r in (rec("v"), rec("w"), rec("v", "_acme-challenge.x.dev.local"))}
    data = encode_records(records)
    assert data["format"] == 2 and data["records"].count("\n") == 2
    assert decode_records(data) == records


def test_malformed_vault_lines_are_skipped():
    data = {"format": 2, "records": "only-two fields\n_acme-challenge.x.dev.local v 60 1.5\n\nx y z w"}
    assert list(decode_records(data)) == [("_acme-challenge.x.dev.local", "v")]
