"""dnsapi/tsig.py against dnspython: a signed UPDATE the quick check accepts is one dnspython
accepts, with the same content; every change to its bytes is refused by both (or accepted by
both, for the id and the TSIG record's TTL, which the signature leaves out); and the reply it signs is the
one dnspython would send, for every algorithm dnsapi accepts."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Callable

import dns.message
import dns.name
import dns.rcode
import dns.tsig
import dns.update
import pytest

from dnsapi.config import TSIG_ALGORITHMS
from dnsapi.dnsupdate import _reply, algorithm
from dnsapi.tsig import Keyring, Signer, sign, verified
from dnsapi.update_message import from_dnspython

Ring = dict[dns.name.Name, dns.tsig.Key]


def keyring(name: str = "bench.", algorithm_name: str = "hmac-sha256", seed: int = 1) -> Ring:
    key_name = dns.name.from_text(name)
    secret = base64.b64encode(random.Random(seed).randbytes(32)).decode()
    return {key_name: dns.tsig.Key(key_name, secret, algorithm(algorithm_name))}


def update_wire(ring: Ring | None, values: int = 1, **sign: object) -> bytes:
    update = dns.update.Update("Dev.Local.", keyring=ring,
                               keyalgorithm=next(iter(ring.values())).algorithm if ring else None)
    for i in range(values):
        update.add("_acme-challenge.www.dev.local.", 60, "TXT", f'"value{i}"')
    return update.to_wire(**sign)


def dnspython(wire: bytes, ring: Ring) -> dns.message.Message | None:
    try:
        return dns.message.from_wire(wire, keyring=ring)
    except Exception:
        return None


def same_second(make: Callable[[], tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """Both renderings within one second (the signature covers the time signed)."""
    while True:
        second = int(time.time())
        pair = make()
        if int(time.time()) == second:
            return pair


@pytest.mark.parametrize("algorithm_name", TSIG_ALGORITHMS)
def test_a_signed_update_is_read_as_dnspython_reads_it(algorithm_name: str) -> None:
    ring = keyring(algorithm_name=algorithm_name)
    wire = update_wire(ring, values=3)
    quick, theirs = verified(wire, Keyring(ring.values())), dns.message.from_wire(wire, keyring=ring)
    assert quick is not None
    unsigned, signer = quick
    message = dns.message.from_wire(unsigned)
    assert (message.id, message.flags, message.question, message.update) == \
        (theirs.id, theirs.flags, theirs.question, theirs.update)  # type: ignore[attr-defined]
    assert signer == Signer("bench", theirs.mac)


def test_any_changed_byte_is_refused_unless_dnspython_takes_it_too() -> None:
    ring = keyring()
    wire = update_wire(ring, values=2)
    tsig_type = wire.rindex(b"\x00\xfa\x00\xff")  # TYPE TSIG, CLASS ANY of the last record
    # RFC 8945 §4.3: the signature covers neither the message id nor the TSIG record's TTL
    unsigned = {0, 1, *range(tsig_type + 4, tsig_type + 8)}
    for position in range(len(wire)):
        for bit in (0x01, 0x80):
            changed = bytearray(wire)
            changed[position] ^= bit
            quick, theirs = verified(bytes(changed), Keyring(ring.values())), dnspython(bytes(changed), ring)
            if quick is not None:
                assert theirs is not None, f"byte {position} bit {bit:#x}: accepted, dnspython refuses"
                assert dns.message.from_wire(quick[0]).update == theirs.update  # type: ignore[attr-defined]
                assert position in unsigned


@pytest.mark.parametrize("case", ["unknown key", "other secret", "unsigned", "too old",
                                  "truncated", "trailing byte", "query"])
def test_what_the_quick_check_leaves_to_dnspython(case: str, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    ring = keyring()
    if case == "unknown key":
        wire = update_wire(keyring("other."))
    elif case == "other secret":
        wire = update_wire(keyring(seed=2))
    elif case == "unsigned":
        wire = update_wire(None)
    elif case == "too old":
        signed_at = time.time() - 3600
        monkeypatch.setattr(time, "time", lambda: signed_at)  # dnspython signs with the clock
        wire = update_wire(ring)
        monkeypatch.undo()
    elif case == "truncated":
        wire = update_wire(ring)[:-5]
    elif case == "trailing byte":
        wire = update_wire(ring) + b"\0"
    elif case == "query":
        query = dns.message.make_query("dev.local.", "SOA")
        query.use_tsig(ring)
        wire = query.to_wire()
    assert verified(wire, Keyring(ring.values())) is None


def test_random_bytes_never_raise() -> None:
    ring, rng = keyring(), random.Random(7)
    valid = update_wire(ring)
    for _ in range(2000):
        cut = valid[:rng.randrange(len(valid))] + rng.randbytes(rng.randrange(8))
        assert verified(cut, Keyring(ring.values())) is None or dnspython(cut, ring) is not None


@pytest.mark.parametrize("algorithm_name", TSIG_ALGORITHMS)
@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.REFUSED, dns.rcode.NXRRSET])
def test_the_signed_reply_is_the_one_dnspython_makes(algorithm_name: str, rcode: dns.rcode.Rcode
                                                     ) -> None:
    ring = keyring(algorithm_name=algorithm_name)
    request = dns.message.from_wire(update_wire(ring), keyring=ring)
    signer = Signer("bench", request.mac)  # type: ignore[arg-type]
    mine, theirs = same_second(lambda: (sign(from_dnspython(request).reply(rcode), signer,
                                             Keyring(ring.values())),
                                        _reply(request, rcode).to_wire(max_size=512)))
    assert mine == theirs
    answer = dns.message.from_wire(mine, keyring=ring, request_mac=request.mac)
    assert answer.rcode() == rcode and answer.had_tsig and answer.id == request.id


def test_a_key_named_inside_the_zone_still_verifies() -> None:
    """dnspython compresses such a key name against the zone; dnsapi writes it whole (both are
    valid wire), so only the signature check can tell them apart."""
    ring = keyring("k.dev.local.")
    assert verified(update_wire(ring), Keyring(ring.values())) is not None
    request = dns.message.from_wire(update_wire(ring), keyring=ring)
    reply = sign(from_dnspython(request).reply(dns.rcode.NOERROR),
                 Signer("k.dev.local", request.mac), Keyring(ring.values()))  # type: ignore[arg-type]
    answer = dns.message.from_wire(reply, keyring=ring, request_mac=request.mac)
    assert answer.rcode() == dns.rcode.NOERROR and answer.had_tsig


def test_an_unsigned_request_gets_an_unsigned_reply() -> None:
    request = dns.message.from_wire(update_wire(None))
    reply = sign(from_dnspython(request).reply(dns.rcode.NOTAUTH), None, Keyring(()))
    assert reply == _reply(request, dns.rcode.NOTAUTH).to_wire(max_size=512)
