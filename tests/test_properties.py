"""Property-based tests (hypothesis) of validation + rendering: any accepted value is served back
byte for byte, and nothing accepted can put anything into the zone but its own TXT record."""

import datetime as dt

import dns.rdatatype
from hypothesis import given, settings
from hypothesis import strategies as st

from dnsapi.block import ManagedBlock, block_records
from dnsapi.names import InvalidInput, validate_challenge_name, validate_value
from dnsapi.records import Record
from dnsapi.zonefile import ZoneFile, parse_zone

ZONES = ["dev.local"]
OPERATOR = """$TTL 300
@ IN SOA ns1.dev.local. admin.dev.local. 2024010100 3600 600 86400 60
  IN NS ns1.dev.local.
ns1 IN A 127.0.0.1
"""
HOSTILE = st.sampled_from(['"', "\\", ";", "(", ")", "\n", "\r", "\x00", " ", "$", "@", ".", "*",
                           "\u00e9", "IN", "A", "NS", "TXT", "$INCLUDE", "$ORIGIN"])
values = st.one_of(st.text(max_size=300), st.from_regex(r"[A-Za-z0-9_=-]{1,255}", fullmatch=True),
                   st.lists(st.one_of(HOSTILE, st.text(max_size=5)), max_size=12).map("".join))
names = st.one_of(
    st.text(max_size=80),
    st.lists(st.one_of(HOSTILE, st.from_regex(r"[a-z0-9_-]{1,10}", fullmatch=True)), max_size=8)
    .map(lambda parts: "_acme-challenge." + "".join(parts) + ".dev.local"),
    st.from_regex(r"_acme-challenge\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?\.dev\.local\.?", fullmatch=True),
)


def accepted(validate, *args):
    try:
        return validate(*args)
    except InvalidInput:
        return None


@settings(max_examples=400, deadline=None)
@given(values)
def test_any_accepted_value_is_served_back_byte_for_byte(value):
    checked = accepted(validate_value, value)
    if checked is None:
        return
    assert checked == value
    record = Record("_acme-challenge.www.dev.local", checked, 60, 0.0)
    assert block_records(ManagedBlock("dev.local").render({record.key: record}), "dev.local") == {
        record.key: 60}


@settings(max_examples=300, deadline=None)
@given(names, values)
def test_nothing_accepted_adds_anything_but_its_own_txt(tmp_path_factory, name, value):
    checked_name = accepted(validate_challenge_name, name, ZONES, "_acme-challenge")
    checked_value = accepted(validate_value, value)
    if checked_name is None or checked_value is None:
        return
    fqdn = checked_name[0]
    path = tmp_path_factory.mktemp("zone") / "db"
    path.write_text(OPERATOR)
    ZoneFile(path, "dev.local").sync([Record(fqdn, checked_value, 60, 0.0)], today=dt.date(2026, 1, 1))
    before = parse_zone(OPERATOR, "dev.local")
    after = parse_zone(path.read_text(), "dev.local")
    added = []
    for node_name, node in after.nodes.items():
        for rdataset in node.rdatasets:
            old = before.get_rdataset(node_name, rdataset.rdtype)
            if rdataset.rdtype == dns.rdatatype.SOA:
                continue
            if old is None or set(old) != set(rdataset):
                added.append((node_name.to_text(omit_final_dot=True), rdataset.rdtype, rdataset))
    assert len(added) == 1
    added_name, rdtype, rdataset = added[0]
    assert (added_name, rdtype) == (fqdn, dns.rdatatype.TXT)
    assert [b"".join(rd.strings).decode() for rd in rdataset] == [checked_value]
    assert len(before.nodes) + 1 == len(after.nodes)
