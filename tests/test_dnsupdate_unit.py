"""The RFC 2136 door's hand-built UPDATE reply: the bytes dnspython would make, signed so that
dnspython (as a client) verifies it, for every algorithm dnsapi accepts."""

from __future__ import annotations

import base64
import secrets
import time

import dns.message
import dns.name
import dns.rcode
import dns.tsig
import dns.update
import pytest

from dnsapi.config import TSIG_ALGORITHMS
from dnsapi.dnsupdate import _reply, algorithm, status_reply


def signed_update(key_name: str, algorithm_name: str) -> tuple[dns.message.Message, dict]:
    """A signed UPDATE as the server parses it (key verified), and the client's keyring."""
    name = dns.name.from_text(key_name)
    ring = {name: dns.tsig.Key(name, base64.b64encode(secrets.token_bytes(32)).decode(),
                               algorithm(algorithm_name))}
    update = dns.update.Update("Dev.Local.", keyring=ring, keyalgorithm=algorithm(algorithm_name))
    update.add("_acme-challenge.www.dev.local.", 60, "TXT", '"abc"')
    return dns.message.from_wire(update.to_wire(), keyring=ring), ring


def same_second(make: object) -> tuple[bytes, bytes]:
    """Both renderings within one second (the signature covers the time signed)."""
    while True:
        second = int(time.time())
        pair = make()  # type: ignore[operator]
        if int(time.time()) == second:
            return pair


@pytest.mark.parametrize("algorithm_name", TSIG_ALGORITHMS)
@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.REFUSED, dns.rcode.NXRRSET])
def test_the_signed_reply_is_the_one_dnspython_makes(algorithm_name: str, rcode: dns.rcode.Rcode
                                                     ) -> None:
    request, ring = signed_update("bench.", algorithm_name)
    mine, theirs = same_second(lambda: (status_reply(request, rcode, 512),
                                        _reply(request, rcode).to_wire(max_size=512)))
    assert mine == theirs
    answer = dns.message.from_wire(mine, keyring=ring, request_mac=request.mac)
    assert answer.rcode() == rcode and answer.had_tsig and answer.id == request.id


def test_a_key_named_inside_the_zone_still_verifies() -> None:
    """dnspython compresses such a key name against the zone; dnsapi writes it whole (both are
    valid wire), so only the signature check can tell them apart."""
    request, ring = signed_update("k.dev.local.", "hmac-sha256")
    answer = dns.message.from_wire(status_reply(request, dns.rcode.NOERROR, 512), keyring=ring,
                                   request_mac=request.mac)
    assert answer.rcode() == dns.rcode.NOERROR and answer.had_tsig


def test_an_unsigned_request_gets_an_unsigned_reply() -> None:
    update = dns.update.Update("dev.local.")
    update.add("_acme-challenge.www.dev.local.", 60, "TXT", '"abc"')
    request = dns.message.from_wire(update.to_wire())
    reply = status_reply(request, dns.rcode.NOTAUTH, 512)
    assert reply == _reply(request, dns.rcode.NOTAUTH).to_wire(max_size=512)
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NOTAUTH
