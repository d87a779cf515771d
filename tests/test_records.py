"""Applying a batch of changes to a zone's record set (pure logic)."""

from dnsapi.records import Change, Outcome, Record, Update, apply_changes
from dnsapi.store import apply_delta, decode_records, encode_delta, encode_records


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


def test_delta_form_round_trip():
    """A delta names the changed keys over its snapshot: upserts (new or changed records) and
    removals; applied to the snapshot's records it gives the zone's records exactly."""
    base = {r.key: r for r in (rec("kept"), rec("gone"), rec("aged"))}
    records = {rec("kept").key: rec("kept"), rec("aged").key: Record(rec("aged").fqdn, "aged", 300, 9.0),
               rec("new").key: rec("new")}
    changed = {rec("gone").key, rec("aged").key, rec("new").key}
    data = encode_delta("0123456789abcdef", records, changed)
    assert data["format"] == 3 and data["base"] == "0123456789abcdef"
    assert data["removed"] == "_acme-challenge.www.dev.local gone"
    applied, keys = apply_delta(base, data)
    assert applied == records and keys == changed
    assert base == {r.key: r for r in (rec("kept"), rec("gone"), rec("aged"))}  # not mutated


def test_malformed_delta_lines_are_skipped():
    base = {rec("a").key: rec("a")}
    applied, keys = apply_delta(base, {"format": 3, "base": "x", "records": "junk",
                                       "removed": "one-field\n_acme-challenge.www.dev.local a"})
    assert applied == {} and keys == {rec("a").key}


def test_a_token_quota_is_checked_before_the_zone_limit():
    """Issue 13, finding 3: one narrow token filled the zone and every other token got 409."""
    records: dict = {}
    mine = [Change("add", Record(f"_acme-challenge.n{i}.dev.local", "v", 60, 1.0, owner="narrow"))
            for i in range(5)]
    assert apply_changes(records, mine, limit=10, quota=3) == [Outcome.CREATED] * 3 + [Outcome.QUOTA] * 2
    other = [Change("add", Record(f"_acme-challenge.o{i}.dev.local", "v", 60, 1.0, owner="other"))
             for i in range(8)]
    assert apply_changes(records, other, limit=10, quota=3) == [Outcome.CREATED] * 3 + [Outcome.QUOTA] * 5
    gone = Change("remove", Record("_acme-challenge.n0.dev.local", "v", 0, 0.0))
    again = Change("add", Record("_acme-challenge.n9.dev.local", "v", 60, 1.0, owner="narrow"))
    assert apply_changes(records, [gone, again], limit=10, quota=3) == [Outcome.REMOVED, Outcome.CREATED]


def test_an_update_refused_midway_leaves_records_and_quota_counts_as_they_were():
    owned = Record("_acme-challenge.www.dev.local", "kept", 60, 1.0, owner="key:k")
    other = Record("_acme-challenge.api.dev.local", "other", 60, 1.0, owner="key:k")
    records = {owned.key: owned, other.key: other}
    refused = Update((Change("remove_name", rec("", "_acme-challenge.www.dev.local")),
                      Change("add", Record(owned.fqdn, "new", 60, 1.0, owner="key:k")),
                      Change("add", Record(owned.fqdn, "newer", 60, 1.0, owner="key:k"))))
    # quota 2: the remove frees one, the first add takes it, the second is over the quota
    after = Update((Change("add", Record(other.fqdn, "third", 60, 1.0, owner="key:k")),))
    assert apply_changes(records, [refused, after], limit=10, quota=2) == [Outcome.QUOTA,
                                                                           Outcome.QUOTA]
    assert records == {owned.key: owned, other.key: other}
    removed = Update((Change("remove", other),))
    assert apply_changes(records, [removed, after], limit=10, quota=2) == [Outcome.APPLIED,
                                                                           Outcome.APPLIED]
    assert set(records) == {owned.key, (other.fqdn, "third")}


NEWER = "_acme-challenge.new.dev.local 192.0.2.7 60 1.5 A"  # a kind from a later dnsapi
NEWER_KEY = ("_acme-challenge.new.dev.local", "192.0.2.7")


def test_a_record_line_of_a_newer_kind_is_kept_as_read_and_written_back():
    """A rolling upgrade: a newer dnsapi on the same zone writes a record kind this one does not
    know. This one neither serves it nor drops it from Vault when it writes the zone."""
    owner = "_acme-challenge.new.dev.local 192.0.2.7 newer-token"
    data = {"format": 2, "owners": f"{owner}\n_acme-challenge.www.dev.local v ci",
            "records": f"_acme-challenge.www.dev.local v 60 1.5\n{NEWER}\n"
                       "_acme-challenge.c.dev.local x.auth.dev.local 60 1.5 CNAME\njunk line"}
    foreign: dict = {}
    records = decode_records(data, foreign)
    assert set(records) == {("_acme-challenge.www.dev.local", "v"),
                            ("_acme-challenge.c.dev.local", "x.auth.dev.local")}
    assert foreign == {NEWER_KEY: (NEWER, owner)}
    written = encode_records(records, foreign=foreign)
    assert NEWER in written["records"].splitlines() and owner in written["owners"].splitlines()
    assert "junk line" not in written["records"]  # a line that is no record at all still goes
    again: dict = {}
    assert decode_records(written, again) == records and again == foreign
    assert decode_records(data) == records  # without `foreign`: skipped, as before


def test_a_delta_adds_and_removes_newer_kinds_over_its_snapshot():
    base_foreign = {NEWER_KEY: (NEWER, "")}
    other = "_acme-challenge.other.dev.local 192.0.2.8 60 1.5 A"
    foreign = dict(base_foreign)
    apply_delta({}, {"format": 3, "base": "x", "records": other, "removed": ""}, foreign)
    assert set(foreign) == {NEWER_KEY, ("_acme-challenge.other.dev.local", "192.0.2.8")}
    foreign = dict(base_foreign)
    apply_delta({}, {"format": 3, "base": "x", "records": "", "removed": " ".join(NEWER_KEY)}, foreign)
    assert foreign == {} and base_foreign == {NEWER_KEY: (NEWER, "")}


def test_records_this_node_refuses_are_kept_as_read():
    """A known kind that `accept` refuses (another node's config: here another challenge label)
    is kept and written back like a newer kind, and neither served nor counted."""
    mine, theirs = "_acme-challenge.www.dev.local v 60 1.5", "_other.www.dev.local w 60 1.5"
    owner = "_other.www.dev.local w their-token"
    data = {"format": 2, "records": f"{mine}\n{theirs}", "owners": owner}
    foreign: dict = {}
    records = decode_records(data, foreign, accept=lambda r: r.fqdn.startswith("_acme-challenge."))
    assert set(records) == {("_acme-challenge.www.dev.local", "v")}
    assert foreign == {("_other.www.dev.local", "w"): (theirs, owner)}
    written = encode_records(records, foreign=foreign)
    assert theirs in written["records"].splitlines() and owner in written["owners"].splitlines()


def test_a_delta_moves_a_key_between_the_records_and_the_kept_lines():
    """The latest line of a key decides: refused, it leaves the records for the kept lines;
    accepted again, it comes back."""
    www = "_acme-challenge.www.dev.local"
    key = (www, "v")
    foreign: dict = {}
    refused = f"{www} v 999999 1.5"  # a TTL this node does not allow

    def delta(lines: str) -> dict:
        return {"format": 3, "base": "x", "records": lines, "removed": ""}

    def short(record: Record) -> bool:
        return record.ttl <= 3600

    records, changed = apply_delta({key: Record(www, "v", 60, 1.5)}, delta(refused), foreign, short)
    assert records == {} and foreign == {key: (refused, "")} and changed == {key}
    records, changed = apply_delta({}, delta(f"{www} v 60 2.5"), foreign, short)
    assert records == {key: Record(www, "v", 60, 2.5)} and foreign == {} and changed == {key}


def test_a_record_added_over_a_kept_line_of_the_same_key_replaces_it():
    """Say the kept line had a TTL this node refuses and a client adds the same name and value
    again: one line for the key is written, the record's."""
    www = "_acme-challenge.www.dev.local"
    record = Record(www, "v", 60, 2.5)
    written = encode_records({record.key: record}, foreign={record.key: (f"{www} v -1 1.5", "")})
    assert written["records"].splitlines() == [f"{www} v 60 2.500"]
