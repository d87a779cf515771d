"""TSIG (RFC 8945) for the common case of the RFC 2136 door, by hand: checking a signed UPDATE
and signing the reply.

dnspython does both, but for a one-record UPDATE its parse of the TSIG record and its check
cost as much as the rest of the message, and every acknowledged UPDATE pays it. `verified`
takes only the plain case — one TSIG record, last in the message, from a known key with its own
algorithm, a full-length MAC, no error, signed within the fudge — and hands the rest of the
message to dnspython unsigned; for anything else it returns None, and the caller parses the
whole message with dnspython, which then answers the error (BADKEY, BADSIG, BADTIME, FORMERR)
the same way whichever path saw the message first. `sign_reply` makes the bytes dnspython's
make_response and to_wire would (tests/test_dnsupdate_unit.py compares them).
"""

from __future__ import annotations

import hmac
import struct
import time
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.tsig

FUDGE = 300  # seconds of clock skew a signed reply allows (dnspython's and BIND's default)
_UPDATE = 5  # the UPDATE opcode


@dataclass(frozen=True)
class Signer:
    """Who signed a request: the key (from the keyring) and the request's MAC, which the
    reply's signature covers."""

    key: dns.tsig.Key
    mac: bytes


def verified(wire: bytes, keyring: dict[dns.name.Name, dns.tsig.Key]
             ) -> tuple[dns.message.Message, Signer] | None:
    """A signed UPDATE checked and parsed the quick way, or None (see the module's doc)."""
    try:
        if len(wire) < 12 or (wire[2] >> 3) & 0xF != _UPDATE:
            return None
        start = _last_record(wire)
        owner, used = dns.name.from_wire(wire, start)
        offset = start + used
        rdtype, rdclass, _, length = struct.unpack_from("!HHIH", wire, offset)
        offset += 10
        key = keyring.get(owner)
        if rdtype != dns.rdatatype.TSIG or rdclass != dns.rdataclass.ANY or key is None \
                or offset + length != len(wire):
            return None
        algorithm, used = dns.name.from_wire(wire, offset)
        offset += used
        high, low, fudge, size = struct.unpack_from("!HIHH", wire, offset)
        mac = wire[offset + 10:offset + 10 + size]
        original_id, error, other_size = struct.unpack_from("!HHH", wire, offset + 10 + size)
        other = wire[offset + 16 + size:]
        if algorithm != key.algorithm or error or len(other) != other_size \
                or len(mac) != size or size != dns.tsig.mac_sizes[key.algorithm]:
            return None
        if abs(((high << 32) | low) - time.time()) > fudge:
            return None
        (additional,) = struct.unpack_from("!H", wire, 10)
        unsigned = wire[:10] + struct.pack("!H", additional - 1) + wire[12:start]
        context = dns.tsig.get_context(key)
        context.update(struct.pack("!H", original_id) + unsigned[2:])
        context.update(_variables(key, wire[offset:offset + 8], error, other))
        if not hmac.compare_digest(context.sign(), mac):
            return None
        message = dns.message.from_wire(unsigned)
    except (dns.exception.DNSException, struct.error, ValueError, IndexError, KeyError):
        return None
    if message.edns >= 0:  # a reply to it carries OPT: dnspython's way (see dnsupdate)
        return None
    return message, Signer(key, mac)


def sign_reply(request: dns.message.Message, signer: Signer | None, rcode: int) -> bytes:
    """The reply to an UPDATE without EDNS: the request's zone section and `rcode`, signed with
    the request's key when it was signed (RFC 8945 §5.3)."""
    flags = 0x8000 | (request.flags & 0x0100) | ((request.opcode() & 0xF) << 11) | (rcode & 0xF)
    question = b"".join(_wire(q.name) + struct.pack("!HH", q.rdtype, q.rdclass)
                        for q in request.question)
    header = struct.pack("!HHHHHH", request.id, flags, len(request.question), 0, 0,
                         int(signer is not None))
    if signer is None:
        return header + question
    key, now = signer.key, int(time.time())
    timers = struct.pack("!HIH", (now >> 32) & 0xFFFF, now & 0xFFFFFFFF, FUDGE)
    context = dns.tsig.get_context(key)
    context.update(struct.pack("!H", len(signer.mac)) + signer.mac)
    context.update(header[:10] + b"\0\0" + question)  # the reply as it is before the TSIG RR
    context.update(_variables(key, timers, 0, b""))
    mac = context.sign()
    rdata = (_wire(key.algorithm) + timers + struct.pack("!H", len(mac)) + mac
             + struct.pack("!HHH", request.id, 0, 0))
    return header + question + _wire(key.name) + struct.pack(
        "!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata)) + rdata


def _variables(key: dns.tsig.Key, timers: bytes, error: int, other: bytes) -> bytes:
    """RFC 8945 §4.3.3's TSIG variables after the message: key name, class, TTL, algorithm,
    time signed and fudge (`timers`), error, other data."""
    return (key.name.to_digestable() + struct.pack("!HI", dns.rdataclass.ANY, 0)
            + key.algorithm.to_digestable() + timers + struct.pack("!HH", error, len(other)) + other)


def _last_record(wire: bytes) -> int:
    """Where the message's last resource record starts (struct.error or IndexError when the
    counts promise more than the bytes hold)."""
    counts = struct.unpack_from("!HHHH", wire, 4)
    if counts[3] == 0:
        raise ValueError("no additional record")
    offset = 12
    for _ in range(counts[0]):
        offset = _skip_name(wire, offset) + 4
    last = offset
    for _ in range(sum(counts[1:])):
        last = offset
        offset = _skip_name(wire, offset) + 8
        (length,) = struct.unpack_from("!H", wire, offset)
        offset += 2 + length
    if offset != len(wire):
        raise ValueError("trailing bytes")
    return last


def _skip_name(wire: bytes, offset: int) -> int:
    """The offset after a name at `offset` (a compression pointer ends it)."""
    while True:
        length = wire[offset]
        if length >= 0xC0:
            return offset + 2
        if length > 63:
            raise ValueError("bad label")
        offset += 1 + length
        if length == 0:
            return offset


def _wire(name: dns.name.Name) -> bytes:
    """A name uncompressed, as sent (dnspython types to_wire as maybe None: with no file
    given it always returns the bytes)."""
    return name.to_wire() or b""
