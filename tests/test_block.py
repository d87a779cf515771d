"""The managed block: rendered by difference, yet always equal to a rendering from scratch, and
every line proven (by the fast plain-line check or by dnspython) to be exactly its record."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsapi import block
from dnsapi.block import BEGIN_MARKER, END_MARKER, ManagedBlock, block_records
from dnsapi.errors import ZoneError
from dnsapi.records import Record

ORIGIN = "dev.local"


def from_scratch(records: dict[tuple[str, str], Record], newline: str = "\n") -> str:
    """The block spelled out independently: sorted by name and value, one TTL per name."""
    ttl = {}
    for r in records.values():
        ttl[r.fqdn] = min(ttl.get(r.fqdn, r.ttl), r.ttl)
    lines = [f'{fqdn}. {ttl[fqdn]} IN TXT "{value}"' for fqdn, value in sorted(records)]
    return newline.join([BEGIN_MARKER, *lines, END_MARKER]) + newline


names = st.sampled_from([f"_acme-challenge.h{i}.{ORIGIN}" for i in range(6)])
values = st.text("AB_-=9z", min_size=1, max_size=4)
states = st.lists(st.dictionaries(st.tuples(names, values), st.sampled_from([60, 300, 30]), max_size=12),
                  min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(states, st.data())
def test_rendering_by_difference_equals_rendering_from_scratch(sequence, data):
    """Adds, removes, TTL changes, records read afresh (new objects) or shared with the previous
    state, and a switch to CRLF: every rendering is the from-scratch one."""
    managed = ManagedBlock(ORIGIN)
    previous: dict[tuple[str, str], Record] = {}
    for state in sequence:
        records = {}
        for (fqdn, value), ttl in state.items():
            old = previous.get((fqdn, value))
            shared = old is not None and old.ttl == ttl and data.draw(st.booleans())
            records[(fqdn, value)] = old if shared else Record(fqdn, value, ttl, 0.0)
        newline = data.draw(st.sampled_from(["\n", "\n", "\r\n"]))
        assert managed.render(records, newline) == from_scratch(records, newline)
        previous = records


def test_the_callers_mapping_may_change_afterwards():
    records = {("_acme-challenge.a.dev.local", "v1"): Record("_acme-challenge.a.dev.local", "v1", 60, 0.0)}
    managed = ManagedBlock(ORIGIN)
    managed.render(records)
    records[("_acme-challenge.a.dev.local", "v2")] = Record("_acme-challenge.a.dev.local", "v2", 60, 0.0)
    assert managed.render(records) == from_scratch(records)


def test_a_refused_rendering_is_not_remembered(monkeypatch):
    good = Record("_acme-challenge.a.dev.local", "good", 60, 0.0)
    bad = Record("_acme-challenge.b.dev.local", "bad", 60, 0.0)
    managed = ManagedBlock(ORIGIN)
    managed.render({good.key: good})
    real = block._txt_line
    injected = "\nevil.dev.local. 60 IN A 10.0.0.1"
    monkeypatch.setattr(block, "_txt_line", lambda fqdn, ttl, value:
                        real(fqdn, ttl, value) + (injected if value == "bad" else ""))
    with pytest.raises(ZoneError, match="other than TXT and CNAME at evil"):
        managed.render({good.key: good, bad.key: bad})
    monkeypatch.setattr(block, "_txt_line", real)
    assert managed.render({good.key: good, bad.key: bad}) == from_scratch({good.key: good, bad.key: bad})


@pytest.mark.parametrize("line", [
    '_acme-challenge.www.dev.local. 60 IN TXT "abc" ; comment',
    '_acme-challenge.www.dev.local 60 IN TXT "abc"',              # relative: $ORIGIN would move it
    '_acme-challenge.www.other.local. 60 IN TXT "abc"',          # outside the zone
    ' _acme-challenge.www.dev.local. 60 IN TXT "abc"',           # leading blank: previous owner
    '_acme-challenge.www.dev.local. 60 IN TXT "a\\"bc"',         # escapes
    '_acme-challenge.www.dev.local. 60 IN TXT ( "abc" )',
    '_acme-challenge.www.dev.local. 2147483648 IN TXT "abc"',    # TTL beyond 2^31 - 1
    "_acme-challenge." + "a" * 64 + '.dev.local. 60 IN TXT "abc"',  # label over 63
    "_acme-challenge." + "abcdefghi." * 24 + 'dev.local. 60 IN TXT "abc"',  # name over 255 octets
])
def test_lines_outside_the_plain_shape_are_not_taken_on_sight(line):
    """The fast check accepts only lines with one possible reading; everything else goes to the
    parser (which then decides)."""
    assert ManagedBlock(ORIGIN).read_plain(line) is None


labels = st.from_regex(r"[A-Za-z0-9_-]{1,63}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(labels, min_size=1, max_size=4), st.from_regex(r"[A-Za-z0-9_=-]{1,255}", fullmatch=True),
       st.integers(0, 2**31 - 1))
def test_the_plain_line_check_agrees_with_the_parser(labels_, value, ttl):
    fqdn = ".".join([*labels_, ORIGIN])
    line = f'{fqdn}. {ttl} IN TXT "{value}"'
    plain = ManagedBlock(ORIGIN).read_plain(line)
    if len(fqdn) > 253:
        assert plain is None  # too long for DNS: left to the parser, which refuses it
        with pytest.raises(ZoneError):
            block_records(line, ORIGIN)
    else:
        assert plain == (fqdn, value, ttl, "TXT")
        assert block_records(line, ORIGIN) == {(fqdn, value): ttl}
