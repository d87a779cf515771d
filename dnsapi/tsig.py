"""TSIG (RFC 8945) for the common case of the RFC 2136 door, by hand: checking a signed UPDATE
and signing the reply.

dnspython does both, but for a one-record UPDATE its parse of the TSIG record and its check
cost as much as the rest of the message, and every acknowledged UPDATE pays it. `verified`
takes only the plain case — one TSIG record, last in the message, from a known key with its own
algorithm, a full-length MAC, no error, signed within the fudge — and returns the message
without it; for anything else it returns None, and the caller parses the whole message with
dnspython, which then answers the error (BADKEY, BADSIG, BADTIME, FORMERR) the same way
whichever path saw the message first. `sign` makes the bytes dnspython's make_response and
to_wire would (tests/test_tsig_unit.py compares them).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

import dns.rdataclass
import dns.rdatatype
import dns.tsig

from .wire import name_at

FUDGE = 300  # seconds of clock skew a signed reply allows (dnspython's and BIND's default),
# and the most a request's own fudge may allow: a longer one would let a captured UPDATE be
# replayed for up to 18 hours (dnsupdate.py remembers what it answered for this long)
_UPDATE = 5  # the UPDATE opcode
_HASHES = {dns.tsig.HMAC_MD5: hashlib.md5, dns.tsig.HMAC_SHA1: hashlib.sha1,
           dns.tsig.HMAC_SHA224: hashlib.sha224, dns.tsig.HMAC_SHA256: hashlib.sha256,
           dns.tsig.HMAC_SHA384: hashlib.sha384, dns.tsig.HMAC_SHA512: hashlib.sha512}


@dataclass(frozen=True)
class Signer:
    """Who signed a request: the key's name (lower case, no final dot) and the request's MAC,
    which the reply's signature covers."""

    key: str
    mac: bytes


class _Key:
    """One key with what every message signed with it needs, worked out once."""

    def __init__(self, key: dns.tsig.Key) -> None:
        self.algorithm = key.algorithm.to_text(omit_final_dot=True).lower()
        self.hmac = hmac.new(key.secret, digestmod=_HASHES[key.algorithm])  # copied per message
        self.name_wire = key.name.to_wire() or b""  # (with no file given, always the bytes)
        self.algorithm_wire = key.algorithm.to_wire() or b""
        # RFC 8945 §4.3.3: the TSIG variables the MAC covers start with the key name, class ANY,
        # TTL 0 and the algorithm (then time signed, fudge, error, other data)
        self.variables = (key.name.to_digestable() + struct.pack("!HI", dns.rdataclass.ANY, 0)
                          + key.algorithm.to_digestable())


class Keyring:
    """The keys the quick paths know, by name as read from the wire."""

    def __init__(self, keys: Iterable[dns.tsig.Key]) -> None:
        self._keys = {key.name.to_text(omit_final_dot=True).lower(): _Key(key) for key in keys}

    def get(self, name: str) -> _Key | None:
        return self._keys.get(name)


def verified(wire: bytes, keyring: Keyring, for_badtime: bool = False) -> tuple[bytes, Signer] | None:
    """A signed UPDATE checked the quick way: the message without its TSIG record, and who
    signed it; or None (see the module's doc). `for_badtime`: any message (any opcode) signed
    at any time, for the BADTIME answer, which is signed (RFC 8945 §5.2.3) and so only once the MAC checks:
    signing an answer to an unchecked MAC was CVE-2017-3142's hole."""
    try:
        if len(wire) < 12 or (not for_badtime and (wire[2] >> 3) & 0xF != _UPDATE):
            return None
        start = _last_record(wire)
        owner, offset = name_at(wire, start)
        rdtype, rdclass, _, length = struct.unpack_from("!HHIH", wire, offset)
        offset += 10
        key = keyring.get(owner)
        if rdtype != dns.rdatatype.TSIG or rdclass != dns.rdataclass.ANY or key is None \
                or offset + length != len(wire):
            return None
        algorithm, offset = name_at(wire, offset)
        high, low, fudge, size = struct.unpack_from("!HIHH", wire, offset)
        mac = wire[offset + 10:offset + 10 + size]
        original_id, error, other_size = struct.unpack_from("!HHH", wire, offset + 10 + size)
        other = wire[offset + 16 + size:]
        if algorithm != key.algorithm or error or len(other) != other_size \
                or len(mac) != size or size != key.hmac.digest_size:
            return None
        if not for_badtime and abs(((high << 32) | low) - time.time()) > min(fudge, FUDGE):
            return None
        (additional,) = struct.unpack_from("!H", wire, 10)
        unsigned = wire[:10] + struct.pack("!H", additional - 1) + wire[12:start]
        context = key.hmac.copy()
        context.update(struct.pack("!H", original_id) + unsigned[2:])
        context.update(key.variables + wire[offset:offset + 8] + struct.pack("!HH", error, other_size)
                       + other)
        if not hmac.compare_digest(context.digest(), mac):
            return None
    except (struct.error, ValueError, IndexError):
        return None
    return unsigned, Signer(owner, mac)


def sign(reply: bytes, signer: Signer | None, keyring: Keyring, error: int = 0,
         signed_at: int | None = None, other: bytes = b"") -> bytes:
    """`reply` (a whole message without a TSIG record) signed with the request's key, when the
    request was signed (RFC 8945 §5.3: the MAC covers the request's MAC, then the reply);
    `error`, `signed_at` (default now) and `other` go into its TSIG record as they are."""
    key = keyring.get(signer.key) if signer is not None else None
    if signer is None or key is None:
        return reply
    when = int(time.time()) if signed_at is None else signed_at
    timers = struct.pack("!HIH", (when >> 32) & 0xFFFF, when & 0xFFFFFFFF, FUDGE)
    trailer = struct.pack("!HH", error, len(other)) + other
    context = key.hmac.copy()
    context.update(struct.pack("!H", len(signer.mac)) + signer.mac + reply)
    context.update(key.variables + timers + trailer)
    mac = context.digest()
    rdata = key.algorithm_wire + timers + struct.pack("!H", len(mac)) + mac + reply[:2] + trailer
    (additional,) = struct.unpack_from("!H", reply, 10)
    return reply[:10] + struct.pack("!H", additional + 1) + reply[12:] + key.name_wire \
        + struct.pack("!HHIH", dns.rdatatype.TSIG, dns.rdataclass.ANY, 0, len(rdata)) + rdata


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
