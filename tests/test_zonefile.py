"""Zone rendering, serial arithmetic, operator-text preservation and atomic writing."""

import datetime as dt
import stat
import subprocess

import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsapi.block import END_MARKER, ManagedBlock, block_records
from dnsapi.errors import ZoneError
from dnsapi.records import Record
from dnsapi.zonefile import (
    ZoneFile,
    ZoneText,
    next_serial,
    parse_zone,
    serial_gt,
    serial_span,
    soa_serial,
)

DAY = dt.date(2026, 11, 28)

OPERATOR_ZONE = """\
; operator's comment, kept verbatim \u00e9
$TTL 300
$ORIGIN dev.local.
@   IN SOA ns1.dev.local. hostmaster.dev.local. ( ; a multi-line SOA
        2024010100 ; serial
        3600 600 86400
        60 )
    IN NS ns1
ns1 IN A 127.0.0.1
www IN A 127.0.0.2   ; web
txt IN TXT "SOA ns1 admin 2024010100" ; a decoy in a string
$ORIGIN sub.dev.local.
host IN A 127.0.0.3
"""


def rec(name: str, value: str, ttl: int = 60) -> Record:
    return Record(f"_acme-challenge.{name}dev.local", value, ttl, 0.0)


@pytest.fixture
def zone(tmp_path):
    path = tmp_path / "db.dev.local"
    path.write_text(OPERATOR_ZONE)
    path.chmod(0o644)
    return ZoneFile(path, "dev.local")


# -- serials -------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, today, expected", [
    (2024010100, DAY, 2026112800),          # older date: jump to today's first serial
    (2026112800, DAY, 2026112801),          # same day: +1
    (2026112899, DAY, 2026112900),          # more than 99 changes in a day: keep counting
    (2026112950, DAY, 2026112951),          # already ahead of today's date: +1, never backwards
    (2026113099, dt.date(2026, 12, 1), 2026120100),  # date rollover
    (1, DAY, 2026112800),                   # small counter serial: date form is greater
    (2**32 - 1, DAY, 2026112800),           # wrap-around: RFC 1982 says the date form is greater
    (3_500_000_000, DAY, 3_500_000_001),    # far ahead (e.g. unix time): +1
    (2**32 - 1, dt.date(2150, 1, 1), 0),    # date form not greater: wrap to 0 (= greater)
])
def test_next_serial(old, today, expected):
    new = next_serial(old, today)
    assert new == expected
    assert serial_gt(new, old) and new != old


@given(st.integers(0, 2**32 - 1), st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)))
def test_next_serial_always_increases(old, today):
    new = next_serial(old, today)
    assert 0 <= new < 2**32
    assert serial_gt(new, old)


def test_serial_arithmetic():
    assert serial_gt(1, 0) and not serial_gt(0, 1)
    assert serial_gt(0, 2**32 - 1)
    assert not serial_gt(5, 5)


def test_serial_span_skips_comments_and_strings():
    text = OPERATOR_ZONE
    start, end = serial_span(text, 2024010100)
    assert text[start:end] == "2024010100"
    assert text[:start].count('"') == 0  # the real SOA, not the decoy TXT string
    with pytest.raises(ZoneError):
        serial_span(text, 1234)


# -- writing -------------------------------------------------------------------------------------

def test_first_change_appends_block_and_keeps_operator_text(zone):
    serial = zone.sync([rec("www.", "v1")], today=DAY)
    assert serial == 2026112800
    text = zone.path.read_text()
    assert text.startswith(OPERATOR_ZONE.replace("2024010100 ; serial", "2026112800 ; serial"))
    assert '_acme-challenge.www.dev.local. 60 IN TXT "v1"' in text
    parsed = parse_zone(text, "dev.local")
    assert parsed.get_soa().serial == 2026112800
    # the operator's records are all still there, $ORIGIN included
    assert parsed.get_rdataset("host.sub.dev.local.", "A") is not None


def test_operator_lines_preserved_byte_for_byte_across_changes(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    zone.sync([rec("www.", "v1"), rec("www.", "v2"), rec("api.", "v3")], today=DAY)
    zone.sync([rec("api.", "v3")], today=DAY)
    text = zone.path.read_text()
    before_block = text[:text.index("; BEGIN dnsapi")]
    assert before_block == OPERATOR_ZONE.replace("2024010100", "2026112802", 1)
    assert text.endswith(END_MARKER + "\n")


def test_block_in_the_middle_stays_in_place(zone):
    text = (OPERATOR_ZONE + "; BEGIN dnsapi managed records\n; END dnsapi managed records\n"
            "last IN A 127.0.0.9\n")
    zone.path.write_text(text)
    zone.sync([rec("www.", "v1")], today=DAY)
    new = zone.path.read_text()
    assert new.endswith('TXT "v1"\n' + END_MARKER + "\nlast IN A 127.0.0.9\n")


def test_unchanged_records_do_not_rewrite(zone):
    assert zone.sync([], today=DAY) is None  # nothing to add: the operator's file is untouched
    assert zone.path.read_text() == OPERATOR_ZONE
    zone.sync([rec("www.", "v1")], today=DAY)
    before = zone.path.read_bytes()
    assert zone.sync([rec("www.", "v1")], today=DAY) is None
    assert zone.path.read_bytes() == before


def test_removing_everything_leaves_an_empty_block(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    assert zone.sync([], today=DAY) == 2026112801
    assert block_records(zone.path.read_text().split("$ORIGIN sub.dev.local.\nhost IN A 127.0.0.3\n")[1],
                         "dev.local") == {}


def test_one_ttl_per_rrset(zone):
    zone.sync([rec("www.", "a", 300), rec("www.", "b", 30)], today=DAY)
    parsed = parse_zone(zone.path.read_text(), "dev.local")
    rdataset = parsed.get_rdataset("_acme-challenge.www.dev.local.", dns.rdatatype.TXT)
    assert rdataset.ttl == 30 and len(rdataset) == 2


def test_write_is_atomic_and_keeps_mode(zone):
    zone.path.chmod(0o640)
    inode = zone.path.stat().st_ino
    zone.sync([rec("www.", "v1")], today=DAY)
    assert stat.S_IMODE(zone.path.stat().st_mode) == 0o640
    assert zone.path.stat().st_ino != inode  # replaced by rename, not rewritten in place
    assert [p.name for p in zone.path.parent.iterdir()] == ["db.dev.local"]  # no temp file left


def test_crlf_files_keep_crlf(zone):
    zone.path.write_bytes(OPERATOR_ZONE.replace("\n", "\r\n").encode())
    zone.sync([rec("www.", "v1")], today=DAY)
    data = zone.path.read_bytes()
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_non_utf8_bytes_in_comments_survive(zone):
    raw = OPERATOR_ZONE.encode().replace(b"kept verbatim", b"kept \xff\xfe verbatim")
    zone.path.write_bytes(raw)
    zone.sync([rec("www.", "v1")], today=DAY)
    assert zone.path.read_bytes().startswith(raw.split(b"2024010100")[0])


# -- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize("broken", [
    OPERATOR_ZONE.replace("60 )", "60"),                   # unbalanced parenthesis
    OPERATOR_ZONE.replace("127.0.0.2", "not-an-address"),  # bad rdata
    OPERATOR_ZONE.replace("@   IN SOA", "@   IN SOAX"),    # no SOA
    "",                                                    # empty file
])
def test_operator_file_that_does_not_parse_is_refused_and_untouched(zone, broken):
    zone.path.write_text(broken)
    with pytest.raises(ZoneError) as info:
        zone.sync([rec("www.", "v1")], today=DAY)
    assert "does not parse" in info.value.message
    assert zone.path.read_text() == broken
    with pytest.raises(ZoneError):
        zone.check()


@pytest.mark.parametrize("markers", [
    "; BEGIN dnsapi managed records\n",
    "; END dnsapi managed records\n",
    "; END dnsapi managed records\n; BEGIN dnsapi managed records\n",
    "; BEGIN dnsapi managed records\n; END dnsapi managed records\n" * 2,
])
def test_damaged_markers_are_refused(zone, markers):
    zone.path.write_text(OPERATOR_ZONE + markers)
    with pytest.raises(ZoneError) as info:
        zone.sync([rec("www.", "v1")], today=DAY)
    assert "markers are damaged" in info.value.message
    assert zone.path.read_text() == OPERATOR_ZONE + markers


def test_a_missing_file_is_a_zone_error(tmp_path):
    missing = ZoneFile(tmp_path / "nope", "dev.local")
    with pytest.raises(ZoneError, match="does not exist"):
        missing.sync([rec("www.", "v1")], today=DAY)


@pytest.mark.e2e  # chattr, as root
def test_an_unwritable_directory_is_a_zone_error_and_leaves_nothing_behind(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "db").write_text(OPERATOR_ZONE)
    subprocess.run(["chattr", "+i", str(locked)], check=True)  # unwritable even for root
    try:
        with pytest.raises(ZoneError, match="cannot write"):
            ZoneFile(locked / "db", "dev.local").sync([rec("www.", "v1")], today=DAY)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert (locked / "db").read_text() == OPERATOR_ZONE
    assert [p.name for p in locked.iterdir()] == ["db"]  # no temp file left behind


def test_hand_added_records_in_the_block_are_replaced(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    text = zone.path.read_text().replace(END_MARKER, "evil IN A 10.0.0.1\n" + END_MARKER)
    zone.path.write_text(text)
    zone.sync([rec("www.", "v1")], today=DAY)
    assert "evil" not in zone.path.read_text()


# -- round trip ----------------------------------------------------------------------------------

values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=255)
labels = st.from_regex(r"[a-z0-9_]([a-z0-9_-]{0,20}[a-z0-9_])?", fullmatch=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(labels, values, st.integers(1, 86400)), max_size=8))
def test_render_parse_round_trip(tmp_path_factory, items):
    records = {(f"_acme-challenge.{label}.dev.local", value): Record(
        f"_acme-challenge.{label}.dev.local", value, ttl, 0.0) for label, value, ttl in items}
    block = ManagedBlock("dev.local").render(records)
    found = block_records(block, "dev.local")
    assert set(found) == set(records)  # every value back byte for byte, nothing else
    path = tmp_path_factory.mktemp("z") / "db"
    path.write_text(OPERATOR_ZONE)
    zone = ZoneFile(path, "dev.local")
    zone.sync(records.values(), today=DAY)
    parsed = parse_zone(path.read_text(), "dev.local")
    served = {(name.to_text(omit_final_dot=True), b"".join(rd.strings).decode())
              for name, node in parsed.nodes.items()
              for rds in node.rdatasets if rds.rdtype == dns.rdatatype.TXT
              for rd in rds if name.to_text().startswith("_acme")}
    assert served == set(records)


# -- validation is remembered, and redone whenever the operator's text changes -----------------

def test_operator_edits_are_revalidated(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    text = zone.path.read_text()
    zone.path.write_text(text.replace("ns1 IN A 127.0.0.1", "ns1 IN A 127.0.0.1\nnew IN A 127.0.0.5"))
    zone.sync([rec("www.", "v2")], today=DAY)
    parsed = parse_zone(zone.path.read_text(), "dev.local")
    assert parsed.get_rdataset("new.dev.local.", "A") is not None  # the edit is kept
    broken = zone.path.read_text().replace("127.0.0.5", "not-an-address")
    zone.path.write_text(broken)
    with pytest.raises(ZoneError, match="does not parse"):
        zone.sync([rec("www.", "v3")], today=DAY)
    assert zone.path.read_text() == broken
    with pytest.raises(ZoneError, match="does not parse"):
        zone.check()


def test_a_damaged_block_is_repaired(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    text = zone.path.read_text().replace('TXT "v1"', 'TXT "v1')  # unbalanced quote in our block
    zone.path.write_text(text)
    zone.sync([rec("www.", "v2")], today=DAY)
    assert block_records(ZoneText.split(zone.path.read_text()).block, "dev.local") == {
        ("_acme-challenge.www.dev.local", "v2"): 60}


def test_ownerless_line_after_the_block_is_refused(zone):
    text = OPERATOR_ZONE + ("; BEGIN dnsapi managed records\n; END dnsapi managed records\n"
                            "\n; a comment\n    IN A 127.0.0.9\n")
    zone.path.write_text(text)
    with pytest.raises(ZoneError, match="no owner name"):
        zone.sync([rec("www.", "v1")], today=DAY)
    assert zone.path.read_text() == text


def test_markers_inside_a_record_are_refused(zone):
    text = OPERATOR_ZONE + ('multi IN TXT ( "a"\n; BEGIN dnsapi managed records\n'
                            '; END dnsapi managed records\n"b" )\n')
    zone.path.write_text(text)
    with pytest.raises(ZoneError):
        zone.sync([rec("www.", "v1")], today=DAY)
    assert zone.path.read_text() == text


def test_markers_inside_a_record_are_refused_even_when_the_block_would_be_empty(zone):
    """Emptied, the block is only its two comment lines: the whole file parses and counts right,
    and the next add would have gone into the operator's record unchecked."""
    text = OPERATOR_ZONE + ('multi IN TXT ( "a"\n; BEGIN dnsapi managed records\n'
                            '_acme-challenge.www.dev.local. 60 IN TXT "v1"\n'
                            '; END dnsapi managed records\n"b" )\n')
    zone.path.write_text(text)
    for records in ([], [rec("www.", "v2")]):
        with pytest.raises(ZoneError, match="inside another record"):
            zone.sync(records, today=DAY)
    assert zone.path.read_text() == text


def test_parentheses_in_strings_comments_and_escapes_do_not_count(zone):
    text = OPERATOR_ZONE + ('odd IN TXT "a(b" ; (a comment\nesc\\( IN TXT "c"\n'
                            "; BEGIN dnsapi managed records\n; END dnsapi managed records\n")
    zone.path.write_text(text)
    assert zone.sync([rec("www.", "v1")], today=DAY) is not None


def test_a_serial_of_other_digits_is_no_serial():
    assert soa_serial("@ IN SOA a. b. \u00b2 1 1 1 1") is None  # "²".isdigit(), yet int() refuses it


def test_escaped_values_from_vault_survive_repeated_rewrites(zone):
    """Records read back from Vault are not re-validated; whatever they hold is quoted, escaped
    and checked on every rewrite, including lines remembered from the previous one."""
    odd = Record("_acme-challenge.www.dev.local", 'a"b\\c', 60, 0.0)
    zone.sync([odd], today=DAY)
    zone.sync([odd, rec("api.", "v2")], today=DAY)
    zone.sync([odd, rec("api.", "v3")], today=DAY)
    found = block_records(ZoneText.split(zone.path.read_text()).block, "dev.local")
    assert found == {odd.key: 60, ("_acme-challenge.api.dev.local", "v3"): 60}


@pytest.mark.parametrize("bad", [
    '_acme-challenge.www.dev.local. 60 IN TXT "other"',                # another value
    '_acme-challenge.www.dev.local. 60 IN TXT "abc"\nevil.dev.local. 60 IN A 10.0.0.1',  # injected
    'evil.dev.local. 60 IN TXT "abc"',                                 # another name
    '_acme-challenge.www.dev.local. 3600 IN TXT "abc"',               # another TTL
])
def test_a_line_that_does_not_parse_back_to_its_record_is_never_written(zone, monkeypatch, bad):
    """The check that guards the renderer: were it ever to emit a wrong line, nothing is written."""
    from dnsapi import block

    zone.sync([rec("www.", "first")])
    before = zone.path.read_text()
    monkeypatch.setattr(block, "_txt_line", lambda fqdn, ttl, value: bad)
    with pytest.raises(ZoneError, match="managed"):
        zone.sync([rec("www.", "abc")])
    assert zone.path.read_text() == before


def test_two_records_rendering_to_one_line_are_refused(zone, monkeypatch):
    from dnsapi import block

    line = '_acme-challenge.www.dev.local. 60 IN TXT "a"'
    monkeypatch.setattr(block, "_txt_line", lambda fqdn, ttl, value: line)
    with pytest.raises(ZoneError, match="internal check failed"):
        zone.sync([rec("www.", "a"), rec("www.", "b")])
    assert zone.path.read_text() == OPERATOR_ZONE


# -- an operator saving the file while dnsapi rewrites it ------------------------------------

def edit_during_render(zone, monkeypatch, times):
    """Make the operator save the file (a new host at the end) while the next `times` rewrites
    are being prepared."""
    render = zone.block.render
    edits = []

    def edit_then_render(records, newline="\n"):
        if len(edits) < times:
            edits.append(1)
            zone.path.write_text(zone.path.read_text() + f"late{len(edits)} IN A 127.0.0.8\n")
        return render(records, newline)

    monkeypatch.setattr(zone.block, "render", edit_then_render)
    return edits


def test_an_operator_edit_saved_during_a_rewrite_is_kept(zone, monkeypatch):
    zone.sync([rec("www.", "v1")], today=DAY)
    edit_during_render(zone, monkeypatch, 1)
    zone.sync([rec("www.", "v1"), rec("www.", "v2")], today=DAY)
    text = zone.path.read_text()
    assert "late1 IN A 127.0.0.8" in text
    assert block_records(ZoneText.split(text).block, "dev.local") == {
        ("_acme-challenge.www.dev.local", "v1"): 60, ("_acme-challenge.www.dev.local", "v2"): 60}
    parse_zone(text, "dev.local")


def test_a_file_that_keeps_changing_is_not_overwritten(zone, monkeypatch):
    zone.sync([rec("www.", "v1")], today=DAY)
    edit_during_render(zone, monkeypatch, 100)
    with pytest.raises(ZoneError, match="kept changing"):
        zone.sync([rec("www.", "v1"), rec("www.", "v2")], today=DAY)
    text = zone.path.read_text()
    assert "late3 IN A" in text and 'TXT "v2"' not in text
    assert not list(zone.path.parent.glob(".*.tmp"))  # no temp file left behind


# -- a rewrite prepared while Vault writes -----------------------------------------------------

def temp_files(zone: ZoneFile) -> list:
    return list(zone.path.parent.glob(".*.tmp"))


def test_a_prepared_rewrite_changes_nothing_until_it_is_committed(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    before = zone.path.read_bytes()
    rewrite = zone.prepare({r.key: r for r in [rec("www.", "v1"), rec("www.", "v2")]}, today=DAY)
    assert zone.path.read_bytes() == before and len(temp_files(zone)) == 1
    assert rewrite.tmp is not None and rewrite.tmp.stat().st_mode & 0o777 == 0o644
    assert zone.commit(rewrite) == 2026112801
    assert 'TXT "v2"' in zone.path.read_text() and temp_files(zone) == []
    assert zone.served is not None and set(zone.served.records) == {
        rec("www.", "v1").key, rec("www.", "v2").key}


def test_a_discarded_rewrite_leaves_the_file_as_it_was(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    before = zone.path.read_bytes()
    ZoneFile.discard(zone.prepare({rec("www.", "v2").key: rec("www.", "v2")}, today=DAY))
    assert zone.path.read_bytes() == before and temp_files(zone) == []
    assert zone.sync([rec("www.", "v1")], today=DAY) is None  # nothing to write: v1 is there


def test_an_edit_saved_between_prepare_and_commit_is_kept(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    rewrite = zone.prepare({rec("www.", "v2").key: rec("www.", "v2")}, today=DAY)
    zone.path.write_text(zone.path.read_text() + "late IN A 127.0.0.9\n")
    zone.commit(rewrite)  # the file changed since prepare read it: made again from the save
    text = zone.path.read_text()
    assert "late IN A 127.0.0.9" in text
    assert block_records(ZoneText.split(text).block, "dev.local") == {
        ("_acme-challenge.www.dev.local", "v2"): 60}
    assert temp_files(zone) == []
    parse_zone(text, "dev.local")


def test_an_unchanged_record_set_prepares_no_temp_file(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    rewrite = zone.prepare({rec("www.", "v1").key: rec("www.", "v1")}, today=DAY)
    assert rewrite.tmp is None and temp_files(zone) == []
    assert zone.commit(rewrite) is None


def test_temp_files_a_crash_left_are_removed_and_nothing_else(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    left = zone.prepare({rec("www.", "v2").key: rec("www.", "v2")}, today=DAY)  # then a crash
    other = zone.path.parent / ".db.other.abc.tmp"
    other.write_text("another zone's")
    assert zone.remove_leftovers() == [left.tmp]
    assert temp_files(zone) == [other] and 'TXT "v1"' in zone.path.read_text()


def test_a_commit_that_would_wait_for_the_lock_says_so_and_changes_nothing(zone):
    import fcntl
    import os

    from dnsapi.zonefile import CommitLater
    zone.sync([rec("www.", "v1")], today=DAY)
    before = zone.path.read_bytes()
    rewrite = zone.prepare({rec("www.", "v2").key: rec("www.", "v2")}, today=DAY)
    holder = os.open(zone.path.parent, os.O_RDONLY)  # `dnsapi zone edit` holds the lock
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with pytest.raises(CommitLater) as info:
            zone.commit(rewrite, wait=False)
        assert not info.value.again
        assert zone.path.read_bytes() == before and temp_files(zone) == [rewrite.tmp]
    finally:
        os.close(holder)
    assert zone.commit(rewrite) == 2026112801 and 'TXT "v2"' in zone.path.read_text()


def test_a_commit_from_the_loop_leaves_a_changed_file_to_be_made_again(zone):
    from dnsapi.zonefile import CommitLater
    zone.sync([rec("www.", "v1")], today=DAY)
    records = {rec("www.", "v2").key: rec("www.", "v2")}
    rewrite = zone.prepare(records, today=DAY)
    zone.path.write_text(zone.path.read_text() + "late IN A 127.0.0.9\n")
    with pytest.raises(CommitLater) as info:
        zone.commit(rewrite, wait=False)
    assert info.value.again and temp_files(zone) == []
    assert "late IN A" in zone.path.read_text() and 'TXT "v2"' not in zone.path.read_text()
    zone.sync(records, today=DAY)
    assert "late IN A" in zone.path.read_text() and 'TXT "v2"' in zone.path.read_text()


def test_what_the_file_serves_follows_an_edit_made_after_an_unchanged_prepare(zone):
    zone.sync([rec("www.", "v1")], today=DAY)
    rewrite = zone.prepare({rec("www.", "v1").key: rec("www.", "v1")}, today=DAY)
    assert rewrite.tmp is None
    zone.path.write_text(zone.path.read_text().replace("2026112800 ; serial", "2026112850 ; serial"))
    assert zone.commit(rewrite) is None  # the records were there; the operator's serial moved
    assert zone.served is not None and zone.served.serial == 2026112850
