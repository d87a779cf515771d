"""An RFC 2136 UPDATE as the RFC 2136 door reads it, from either of two parsers.

Every acknowledged UPDATE is parsed, and dnspython's general parser (names, rdata objects,
RRset merging) costs more than checking and applying a one-record message. `read` takes the
shape ACME clients send by hand — one zone, no prerequisites, no additional records (the TSIG
record is already checked and cut off), TXT records added or deleted at names of letters, digits,
`-` and `_` — and returns None for anything else; the door then parses with dnspython and
converts with `from_dnspython`. tests/test_update_message_unit.py checks that both agree on every
message `read` takes and on every change to their bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.update

from .wire import NotPlain, name_at

_UPDATE = 5  # the UPDATE opcode
_IN, _NONE, _ANY = dns.rdataclass.IN, dns.rdataclass.NONE, dns.rdataclass.ANY
_TXT, _SOA, _ANY_TYPE = dns.rdatatype.TXT, dns.rdatatype.SOA, dns.rdatatype.ANY
_MAX_TTL = 0x7FFFFFFF  # a larger TTL reads as 0 (RFC 2181 §8; dnspython does the same)


@dataclass(frozen=True, slots=True)
class Rr:
    """One record of the prerequisite or update section. Its class says what it asks (RFC 2136
    §2.4, §2.5): IN adds (or, as a prerequisite, names an exact RRset), NONE deletes one record
    (or: not in use), ANY deletes an RRset or a name (or: in use)."""

    name: str  # lower case, without the final dot
    rdtype: int
    rdclass: int
    ttl: int
    strings: tuple[bytes, ...] | None  # a TXT record's strings; None for any other record


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    id: int
    flags: int  # the header's second 16 bits, opcode included
    zones: tuple[tuple[str, int, int], ...]  # (name, type, class) of the zone section
    zone_wire: bytes  # the zone section uncompressed, as the reply echoes it
    prerequisites: tuple[Rr, ...]
    updates: tuple[Rr, ...]

    def reply(self, rcode: int) -> bytes:
        """The unsigned reply: this id, opcode and RD bit, `rcode`, the zone section echoed
        (what dnspython's make_response would send without EDNS)."""
        flags = 0x8000 | (self.flags & 0x7900) | (rcode & 0xF)
        return struct.pack("!HHHHHH", self.id, flags, len(self.zones), 0, 0, 0) + self.zone_wire


def read(wire: bytes) -> UpdateRequest | None:
    """The common UPDATE parsed by hand, or None (see the module's doc)."""
    try:
        ident, flags, zocount, prcount, upcount, adcount = struct.unpack_from("!HHHHHH", wire)
        if flags & 0x8000 or (flags >> 11) & 0xF != _UPDATE or zocount != 1 or prcount or adcount:
            return None
        zone, offset = name_at(wire, 12)
        ztype, zclass = struct.unpack_from("!HH", wire, offset)
        if ztype != _SOA or zclass != _IN:
            return None
        zone_end = offset + 4
        updates, offset = [], zone_end
        for _ in range(upcount):
            name, offset = name_at(wire, offset)
            rdtype, rdclass, ttl, length = struct.unpack_from("!HHIH", wire, offset)
            offset += 10
            rdata = wire[offset:offset + length]
            offset += length
            if len(rdata) != length:
                return None
            if rdclass == _ANY and rdtype in (_TXT, _ANY_TYPE) and not length:
                updates.append(Rr(name, rdtype, rdclass, 0, None))
            elif (rdclass == _IN or rdclass == _NONE and not ttl) and rdtype == _TXT \
                    and (strings := _strings(rdata)):
                updates.append(Rr(name, rdtype, rdclass, ttl if ttl <= _MAX_TTL else 0, strings))
            else:
                return None
        if offset != len(wire):
            return None
    except (NotPlain, struct.error, IndexError):
        return None
    return UpdateRequest(ident, flags, ((zone, ztype, zclass),), wire[12:zone_end], (),
                         tuple(updates))


def from_dnspython(message: dns.update.UpdateMessage) -> UpdateRequest:
    """What dnspython parsed (with one_rr_per_rrset, so one Rr per record, in wire order)."""
    zone_wire = b"".join((q.name.to_wire() or b"") + struct.pack("!HH", q.rdtype, q.rdclass)
                         for q in message.zone)
    return UpdateRequest(
        message.id, int(message.flags),
        tuple((_text(q.name), int(q.rdtype), int(q.rdclass)) for q in message.zone), zone_wire,
        tuple(rr for rrset in message.prerequisite for rr in _rrs(rrset)),
        tuple(rr for rrset in message.update for rr in _rrs(rrset)))


def _rrs(rrset: dns.rrset.RRset) -> list[Rr]:
    rdclass = int(rrset.deleting if rrset.deleting is not None else rrset.rdclass)
    name, rdtype = _text(rrset.name), int(rrset.rdtype)
    if not len(rrset):  # RFC 2136's empty records: delete an RRset or name, (not) in use
        return [Rr(name, rdtype, rdclass, 0, None)]
    return [Rr(name, rdtype, rdclass, rrset.ttl,
               tuple(getattr(rdata, "strings", ())) if rdtype == _TXT else None) for rdata in rrset]


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _strings(rdata: bytes) -> tuple[bytes, ...]:
    """A TXT record's character strings, or () when they do not fill the rdata exactly."""
    strings, offset = [], 0
    while offset < len(rdata):
        length = rdata[offset]
        if offset + 1 + length > len(rdata):
            return ()
        strings.append(rdata[offset + 1:offset + 1 + length])
        offset += 1 + length
    return tuple(strings)
