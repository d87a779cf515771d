"""dnsapi/update_message.py: the hand parser against dnspython. Whatever `read` takes, it reads as
dnspython does (converted by `from_dnspython`); what it leaves is left whole to dnspython; the
common ACME shapes do take the quick way; and the reply is the bytes dnspython would send."""

from __future__ import annotations

import random
import struct

import dns.message
import dns.rcode
import dns.update
import pytest

from dnsapi.dnsupdate import _reply
from dnsapi.update_message import UpdateRequest, from_dnspython, read

pytestmark = pytest.mark.unit

CHALLENGE = "_acme-challenge.www.dev.local."


def dnspython(wire: bytes) -> UpdateRequest | None:
    try:
        message = dns.message.from_wire(wire, one_rr_per_rrset=True)
    except Exception:
        return None
    return from_dnspython(message) if isinstance(message, dns.update.UpdateMessage) else None


def update(zone: str = "dev.local.", **options: object) -> dns.update.UpdateMessage:
    return dns.update.Update(zone, **options)  # type: ignore[arg-type]


def common() -> dict[str, bytes]:
    """The shapes ACME clients send (one message each), and a few more read by hand."""
    shapes = {}
    one = update()
    one.add(CHALLENGE, 60, "TXT", '"abc-DEF_123"')
    shapes["add one"] = one.to_wire()
    three = update("Dev.Local.")
    for i in range(3):
        three.add("_ACME-challenge.WWW.dev.local.", 120, "TXT", f'"value{i}"')
    shapes["add three, mixed case"] = three.to_wire()
    names = update()
    names.add(CHALLENGE, 60, "TXT", '"a"')
    names.add("_acme-challenge.api.dev.local.", 60, "TXT", '"b"')
    names.add(CHALLENGE, 60, "TXT", '"c"')
    shapes["two names interleaved"] = names.to_wire()
    remove = update()
    remove.delete(CHALLENGE, "TXT", '"abc"')
    shapes["delete one"] = remove.to_wire()
    rrset = update()
    rrset.delete(CHALLENGE, "TXT")
    shapes["delete the TXT set"] = rrset.to_wire()
    name = update()
    name.delete(CHALLENGE)
    shapes["delete the name"] = name.to_wire()
    sequence = update()
    sequence.add(CHALLENGE, 60, "TXT", '"v1"')
    sequence.delete(CHALLENGE, "TXT")
    sequence.add(CHALLENGE, 60, "TXT", '"v2"')
    shapes["add, delete the set, add"] = sequence.to_wire()
    huge_ttl = update()
    huge_ttl.add(CHALLENGE, 0x80000000, "TXT", '"v"')
    shapes["TTL over 2^31"] = huge_ttl.to_wire()
    several = update()
    several.add(CHALLENGE, 60, "TXT", '"part1" "part2"')
    shapes["two strings"] = several.to_wire()
    deep = update()
    deep.add("_acme-challenge." + ".".join(["a" * 60] * 3) + ".dev.local.", 60, "TXT", '"v"')
    shapes["long name"] = deep.to_wire()
    empty = update()
    empty.add(CHALLENGE, 60, "TXT", '""')
    shapes["an empty string (refused later, as a value)"] = empty.to_wire()
    return shapes


def others() -> dict[str, bytes]:
    """Shapes `read` leaves to dnspython (dnspython may also refuse them)."""
    shapes = {}
    edns = update()
    edns.use_edns(0, 0, 1232)
    edns.add(CHALLENGE, 60, "TXT", '"v"')
    shapes["EDNS"] = edns.to_wire()
    prerequisite = update()
    prerequisite.absent(CHALLENGE, "TXT")
    prerequisite.add(CHALLENGE, 60, "TXT", '"v"')
    shapes["prerequisite"] = prerequisite.to_wire()
    cname = update()
    cname.add(CHALLENGE, 60, "CNAME", "evil.example.")
    shapes["CNAME"] = cname.to_wire()
    wildcard = update()
    wildcard.add("_acme-challenge.*.dev.local.", 60, "TXT", '"v"')
    shapes["wildcard label"] = wildcard.to_wire()
    escaped = update()
    escaped.add(dns.name.Name([b"_acme-challenge", b"w.w", b"dev", b"local", b""]), 60, "TXT", '"v"')
    shapes["dot inside a label"] = escaped.to_wire()
    spf = update()
    spf.add(CHALLENGE, 60, "SPF", '"v"')
    shapes["SPF"] = spf.to_wire()
    # RFC 2136 §2.5: a deletion's TTL is 0; the door answers any other FORMERR (from dnspython's
    # reading, which keeps the TTL of a record, not of an RRset's deletion, which has none)
    one_with_ttl = update()
    one_with_ttl.delete(CHALLENGE, "TXT", '"v"')
    one_with_ttl.update[0].ttl = 60
    shapes["a deletion of one record with a TTL"] = one_with_ttl.to_wire()
    shapes["no zone"] = struct.pack("!HHHHHH", 7, 0x2800, 0, 0, 0, 0)
    root = update(".")
    root.add(CHALLENGE, 60, "TXT", '"v"')
    shapes["root zone"] = root.to_wire()
    query = dns.message.make_query("dev.local.", "SOA")
    shapes["query"] = query.to_wire()
    reply = dns.message.make_response(dns.message.from_wire(common()["add one"]))
    shapes["a response"] = reply.to_wire()
    return shapes


@pytest.mark.parametrize("shape", sorted(common()))
def test_the_common_shapes_are_read_by_hand_as_dnspython_reads_them(shape: str) -> None:
    wire = common()[shape]
    mine = read(wire)
    assert mine is not None
    assert mine == dnspython(wire)


@pytest.mark.parametrize("shape", sorted(others()))
def test_other_shapes_are_left_to_dnspython(shape: str) -> None:
    assert read(others()[shape]) is None


def test_a_deletions_ttl_reaches_the_door_from_dnspython() -> None:
    request = dnspython(others()["a deletion of one record with a TTL"])
    assert request is not None and [rr.ttl for rr in request.updates] == [60]


def test_records_are_kept_in_wire_order_one_each() -> None:
    """RFC 2136 §3.4.2 applies the update section record by record: add, delete the set, add
    leaves the last value only, so nothing may be merged or reordered."""
    request = read(common()["add, delete the set, add"])
    assert request is not None
    assert [(rr.rdclass, rr.strings) for rr in request.updates] == \
        [(1, (b"v1",)), (255, None), (1, (b"v2",))]


@pytest.mark.parametrize("shape", ["add one", "two names interleaved", "delete one"])
def test_any_changed_bit_is_read_as_dnspython_reads_it_or_left_to_it(shape: str) -> None:
    wire = common()[shape]
    for position in range(len(wire)):
        for bit in range(8):
            changed = bytearray(wire)
            changed[position] ^= 1 << bit
            mine = read(bytes(changed))
            if mine is not None:
                assert mine == dnspython(bytes(changed)), f"byte {position} bit {bit}"


def test_cut_or_extended_messages_are_read_as_dnspython_reads_them_or_left() -> None:
    rng = random.Random(11)
    wires = list(common().values())
    for _ in range(3000):
        wire = rng.choice(wires)
        changed = wire[:rng.randrange(len(wire) + 1)] + rng.randbytes(rng.randrange(6))
        mine = read(changed)
        if mine is not None:
            assert mine == dnspython(changed)


def header(count_updates: int) -> bytes:
    return struct.pack("!HHHHHH", 1, 0x2800, 1, 0, count_updates, 0)


ZONE = b"\x03dev\x05local\x00\x00\x06\x00\x01"  # at offset 12
TXT_RDATA = b"\x00\x10\x00\x01\x00\x00\x00\x3c\x00\x02\x01v"


@pytest.mark.parametrize("case, owner", [
    ("points at the zone", b"\x01a\xc0\x0c"),
    ("points forward", b"\x01a\xc0\x40"),
    ("points at itself", b"\x01a\xc0\x1b"),
    ("points into the header", b"\x01a\xc0\x04"),
    ("points at the middle of the zone", b"\x01a\xc0\x10"),
    ("a label too long", b"\x40" + b"a" * 64 + b"\x00"),
    ("a reserved label type", b"\x80a\x00"),
])
def test_compression_pointers_are_followed_only_where_dnspython_would(case: str, owner: bytes
                                                                      ) -> None:
    wire = header(1) + ZONE + owner + TXT_RDATA  # the owner starts at offset 27
    mine = read(wire)
    followed = {"points at the zone": "a.dev.local", "points at the middle of the zone": "a.local"}
    if case in followed:
        assert mine is not None and mine == dnspython(wire)
        assert mine.updates[0].name == followed[case]
    else:
        assert mine is None


def test_a_chain_of_pointers_reads_as_dnspython_reads_it() -> None:
    first = b"\x01b\xc0\x0c"  # b.dev.local, at offset 27
    second = b"\x01a\xc0\x1b"  # a.b.dev.local
    wire = header(2) + ZONE + first + TXT_RDATA + second + TXT_RDATA
    mine = read(wire)
    assert mine is not None and mine == dnspython(wire)
    assert [rr.name for rr in mine.updates] == ["b.dev.local", "a.b.dev.local"]


@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.REFUSED, dns.rcode.NXRRSET,
                                   dns.rcode.NOTAUTH])
@pytest.mark.parametrize("shape", ["add one", "add three, mixed case", "delete the name"])
def test_the_reply_is_the_one_dnspython_makes(shape: str, rcode: dns.rcode.Rcode) -> None:
    wire = common()[shape]
    request = read(wire)
    assert request is not None
    theirs = _reply(dns.message.from_wire(wire), rcode).to_wire(max_size=512)
    assert request.reply(rcode) == theirs
    assert from_dnspython(dns.message.from_wire(wire)).reply(rcode) == theirs  # type: ignore[arg-type]
