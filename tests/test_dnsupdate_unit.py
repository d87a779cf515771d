"""The RFC 2136 door in-process (dnsapi/dnsupdate.py, helpers.MemoryStore for Vault): what it
does not answer, and what it answers without parsing. The door over the network, with nsupdate,
knsupdate, lego and certbot, is tests/test_dnsupdate_e2e.py."""

from __future__ import annotations

import asyncio
import base64
import secrets
import struct
import time

import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.renderer
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from dnsapi import dnsupdate
from dnsapi.audit import AuditLog
from dnsapi.config import Config
from dnsapi.dnsupdate import MAX_RECORDS, DnsUpdateServer
from dnsapi.errors import ConfigError
from dnsapi.ratelimit import RateLimiter
from dnsapi.records import Record
from dnsapi.service import RecordService

from .helpers import MemoryStore, running, service_config, until

pytestmark = pytest.mark.unit

SECRET = base64.b64encode(secrets.token_bytes(32)).decode()
NAME = "_acme-challenge.www.dev.local."


def config(tmp_path) -> Config:
    config_, _ = service_config(tmp_path, dns_update={"listen": "127.0.0.1:1", "keys": [
        {"name": "acme", "algorithm": "hmac-sha256", "secret": SECRET, "allow": ["*.dev.local"]}]})
    return config_


def update_door(service: RecordService, tmp_path) -> DnsUpdateServer:
    """The door for `service`, auditing to tmp_path/audit.jsonl."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    limiter = RateLimiter(service.config.rate_limit, service.config.rate_burst)
    return DnsUpdateServer(service.config, service, lambda: audit, lambda: limiter)


def rcode_of(reply: bytes) -> int:
    return struct.unpack_from("!H", reply, 2)[0] & 0xF


async def test_a_response_is_never_answered_even_with_a_tsig_that_does_not_check(tmp_path):
    """An answer to an answer: two dnsapi nodes (or dnsapi and any server) spoofed at each other
    would answer BADKEY to BADKEY for ever."""
    async with running(config(tmp_path)) as (service, _):
        door = update_door(service, tmp_path)
        update = dns.update.UpdateMessage("dev.local.")
        update.add(NAME, 60, "TXT", '"v"')
        update.use_tsig(dns.tsigkeyring.from_text({"stranger.": SECRET}), keyname="stranger.",
                        algorithm=dns.tsig.HMAC_SHA256)
        update.flags |= dns.flags.QR
        assert await door.handle(update.to_wire(), "127.0.0.1", False) is None


async def test_a_message_of_too_many_records_is_formerr_before_it_is_parsed(tmp_path, monkeypatch):
    async with running(config(tmp_path)) as (service, store):
        door = update_door(service, tmp_path)
        update = dns.update.UpdateMessage("dev.local.")
        for i in range(MAX_RECORDS + 1):
            update.add(NAME, 60, "TXT", f'"v{i}"')
        parsed = []
        monkeypatch.setattr(dns.message, "from_wire", lambda *a, **k: parsed.append(1))
        reply = await door.handle(update.to_wire(), "127.0.0.1", True)
        assert reply is not None and rcode_of(reply) == dns.rcode.FORMERR and parsed == []
        assert store.attempts == 0


async def test_a_reply_too_long_to_echo_its_questions_is_the_header_alone(tmp_path):
    async with running(config(tmp_path)) as (service, _):
        door = update_door(service, tmp_path)
        query = dns.message.make_query("dev.local.", "SOA")
        for letter in "qrs":  # three long names that share nothing to compress
            long = ".".join([letter * 62] * 3) + ".example."
            query.question.append(dns.rrset.RRset(dns.name.from_text(long), dns.rdataclass.IN,
                                                  dns.rdatatype.A))
        reply = await door.handle(query.to_wire(), "127.0.0.1", False)
        assert reply is not None and len(reply) == 12 and rcode_of(reply) == dns.rcode.FORMERR
        assert reply[:2] == query.to_wire()[:2] and reply[2] & 0x02  # TC: ask again over TCP


@pytest.mark.parametrize("content", ["\n", base64.b64encode(b"short").decode()])
def test_a_tsig_secret_that_is_empty_or_short_is_refused(tmp_path, content):
    """An empty secret (a blank secret_file) would let anyone sign."""
    (tmp_path / "acme.key").write_text(content)
    with pytest.raises(ConfigError, match="secret"):
        service_config(tmp_path, dns_update={"listen": "127.0.0.1:1", "keys": [
            {"name": "acme", "secret_file": "acme.key", "allow": ["*.dev.local"]}]})


KEYRING = {"acme.": SECRET}


def signed(*changes: tuple[str, str], fudge: int = 300, key: str = "acme", secret: str = SECRET,
           name: str = NAME) -> bytes:
    """An UPDATE of dev.local at `name` signed with `key`: ("add" | "delete", value) each."""
    update = dns.update.UpdateMessage("dev.local.")
    for action, value in changes:
        getattr(update, action)(name, 60, "TXT", f'"{value}"') if action == "add" \
            else update.delete(name, "TXT", f'"{value}"')
    update.use_tsig(dns.tsigkeyring.from_text({f"{key}.": secret}), keyname=f"{key}.", fudge=fudge,
                    algorithm=dns.tsig.HMAC_SHA256)
    return update.to_wire()


@pytest.mark.parametrize("edns", [False, True])  # the quick path, and dnspython's
async def test_the_same_signed_update_again_is_answered_as_before_and_changes_nothing(tmp_path, edns):
    """A client's retransmission, or a replay by someone who saw the message: a captured delete
    must not remove a value added again since."""
    async with running(config(tmp_path)) as (service, store):
        door = update_door(service, tmp_path)

        def with_edns(wire: bytes) -> bytes:
            if not edns:
                return wire
            message = dns.message.from_wire(wire, keyring=dns.tsigkeyring.from_text(KEYRING))
            message.use_edns(0)
            message.use_tsig(dns.tsigkeyring.from_text(KEYRING), keyname="acme.",
                             algorithm=dns.tsig.HMAC_SHA256)
            return message.to_wire()

        delete, add = with_edns(signed(("delete", "V" * 43))), with_edns(signed(("add", "V" * 43)))
        first = await door.handle(delete, "127.0.0.1", False)  # (nothing there yet to delete)
        assert await door.handle(add, "127.0.0.1", False) is not None
        assert store.records() == {(NAME[:-1], "V" * 43)}
        writes = len(store.writes)
        assert await door.handle(delete, "127.0.0.2", False) == first  # replayed: the same bytes
        reidentified = b"\x12\x34" + delete[2:]  # a forwarder's retry: a new id, the MAC the same
        again = await door.handle(reidentified, "127.0.0.1", False)
        assert again == b"\x12\x34" + first[2:]
        assert store.records() == {(NAME[:-1], "V" * 43)} and len(store.writes) == writes
        assert "repeated" in (tmp_path / "audit.jsonl").read_text()


async def test_another_keys_updates_cannot_push_out_what_makes_a_replay_harmless(tmp_path, monkeypatch):
    """The review's finding: every key's UPDATEs shared one memory, its oldest forgotten first,
    so a narrow key could flood it and then a captured add of another key applied again. Each
    key now has its own, forgotten only when its signatures expire; a key that fills its own is
    refused until then, and changes nothing."""
    monkeypatch.setattr(dnsupdate, "ANSWERED_PER_KEY", 4)
    other = base64.b64encode(secrets.token_bytes(32)).decode()
    config_, _ = service_config(tmp_path, dns_update={"listen": "127.0.0.1:1", "keys": [
        {"name": "acme", "algorithm": "hmac-sha256", "secret": SECRET, "allow": ["*.dev.local"]},
        {"name": "narrow", "algorithm": "hmac-sha256", "secret": other, "allow": ["other.dev.local"]}]},
        rate_limit={"per_second": 0})
    async with running(config_) as (service, store):
        door = update_door(service, tmp_path)
        add = signed(("add", "V" * 43))
        for wire in (add, signed(("delete", "V" * 43))):
            assert rcode_of(await door.handle(wire, "127.0.0.1", False)) == dns.rcode.NOERROR
        other_name = "_acme-challenge.other.dev.local."
        flood = [signed(("add", f"{i:043d}"), key="narrow", secret=other, name=other_name)
                 for i in range(8)]
        answers = [rcode_of(await door.handle(wire, "127.0.0.9", False)) for wire in flood]
        assert answers == [dns.rcode.NOERROR] * 4 + [dns.rcode.REFUSED] * 4
        assert len(store.records()) == 4  # the refused ones changed nothing

        writes = len(store.writes)
        assert rcode_of(await door.handle(add, "127.0.0.9", False)) == dns.rcode.NOERROR  # as before
        assert ("_acme-challenge.www.dev.local", "V" * 43) not in store.records()
        assert len(store.writes) == writes

        later = time.monotonic() + 2 * 300 + 1  # every signature above has expired
        monkeypatch.setattr(dnsupdate.time, "monotonic", lambda: later)
        fresh = signed(("add", "F" * 43), key="narrow", secret=other, name=other_name)
        assert rcode_of(await door.handle(fresh, "127.0.0.9", False)) == dns.rcode.NOERROR


@pytest.mark.parametrize(("in_use", "rcode"), [(True, dns.rcode.NOERROR), (False, dns.rcode.YXDOMAIN)])
async def test_a_name_holding_an_acme_dns_cname_is_in_use(tmp_path, in_use, rcode):
    """The review's finding: name prerequisites counted only TXT records, so a name holding only
    acme-dns's CNAME was "not in use" (and "in use" failed with NXDOMAIN)."""
    store = MemoryStore()
    target = "0a8f4c2e-2b4e-4c1a-9f00-0123456789ab.acme.dev.local"  # (an acme-dns account's name)
    store.put("dev.local", Record(NAME[:-1], target, 60, 1.0, kind="CNAME"))
    config_, _ = service_config(tmp_path, acme_dns={"zone": "acme.dev.local"}, dns_update={
        "listen": "127.0.0.1:1", "keys": [{"name": "acme", "algorithm": "hmac-sha256", "secret": SECRET,
                                          "allow": ["*.dev.local"]}]})
    async with running(config_, store) as (service, _):
        door = update_door(service, tmp_path)
        update = dns.update.UpdateMessage("dev.local.")
        update.present(NAME) if in_use else update.absent(NAME)
        other = "_acme-challenge.api.dev.local."
        update.add(other, 60, "TXT", '"' + "W" * 43 + '"')
        update.use_tsig(dns.tsigkeyring.from_text(KEYRING), keyname="acme.", algorithm=dns.tsig.HMAC_SHA256)
        assert rcode_of(await door.handle(update.to_wire(), "127.0.0.1", False)) == rcode
        assert ((other[:-1], "W" * 43) in store.records()) == (rcode == dns.rcode.NOERROR)


def badtime_signed_by_acme(reply_wire: bytes, request_wire: bytes) -> bool:
    """Is `reply_wire` a BADTIME answer to `request_wire` as RFC 8945 §5.2.3 has it: signed
    with the request's key over the request's MAC (checked with dnspython's digest), with the
    request's time signed, and the server's time in the other data?"""
    request = dns.message.from_wire(request_wire, keyring=False)
    reply = dns.message.from_wire(reply_wire, keyring=False)
    record = reply.tsig[0]
    start = len(reply_wire) - len(reply.keyname.to_wire() or b"") - 10 - len(record.to_digestable())
    unsigned = reply_wire[:10] + struct.pack("!H", len(reply.additional)) + reply_wire[12:start]
    key = dns.tsig.Key("acme.", SECRET, dns.tsig.HMAC_SHA256)
    mac = dns.tsig._digest(unsigned, key, record, None, request.tsig[0].mac).sign()
    server_time = int.from_bytes(record.other, "big")
    return (reply.rcode() == dns.rcode.NOTAUTH and record.error == dns.rcode.BADTIME
            and record.mac == mac and record.time_signed == request.tsig[0].time_signed
            and abs(server_time - time.time()) < 60)


@pytest.mark.parametrize("fudge", [300, 3600])  # outside its fudge; inside its own long one only
async def test_a_signature_from_a_skewed_clock_is_badtime_signed_so_the_client_can_tell(
        tmp_path, monkeypatch, fudge):
    """Signed 1000 s ago. A request's fudge says how long its signature holds; one of hours
    would let a captured UPDATE be replayed for hours, so dnsapi holds any to tsig.FUDGE (300
    s). The BADTIME answer is signed (RFC 8945 §5.2.3) once the MAC checks, so that a client can
    trust it and say its clock is off; with a bad MAC it is unsigned, as every other error."""
    async with running(config(tmp_path)) as (service, store):
        door = update_door(service, tmp_path)
        real = time.time
        monkeypatch.setattr(dns.renderer.time, "time", lambda: real() - 1000)  # signed 1000 s ago
        wire = signed(("add", "W" * 43), fudge=fudge)
        monkeypatch.undo()
        assert badtime_signed_by_acme(await door.handle(wire, "127.0.0.1", False) or b"", wire)
        forged = wire[:-20] + bytes([wire[-20] ^ 1]) + wire[-19:]  # a byte of the MAC
        reply = dns.message.from_wire(await door.handle(forged, "127.0.0.1", False) or b"",
                                      keyring=False)
        assert reply.rcode() == dns.rcode.NOTAUTH and reply.tsig[0].mac == b""
        assert store.records() == set()


async def test_the_same_signed_update_while_the_first_is_applied_waits_for_its_answer(tmp_path):
    async with running(config(tmp_path)) as (service, store):
        door = update_door(service, tmp_path)
        add = signed(("add", "X" * 43))
        gate = store.hold("write_zone")
        first = asyncio.create_task(door.handle(add, "127.0.0.1", False))
        await gate.entered.wait()
        audit = tmp_path / "audit.jsonl"

        def repeats() -> int:  # (each is audited once it waits for the first's answer)
            return audit.read_text().count('"repeated"') if audit.exists() else 0

        retry = asyncio.create_task(door.handle(add, "127.0.0.1", False))
        await until(lambda: repeats() == 1, "the retry waiting")
        retry_of_a_client_that_left = asyncio.create_task(door.handle(add, "127.0.0.1", False))
        await until(lambda: repeats() == 2, "the second retry waiting")
        retry_of_a_client_that_left.cancel()  # must not cancel the answer the others wait for
        gate.release()
        assert await retry == await first and store.attempts == 1


async def test_an_soa_query_for_a_name_whose_label_holds_a_dot_is_refused(tmp_path):
    """Its text ends in dev.local; the name is in no zone (as the challenge answers say too)."""
    async with running(config(tmp_path)) as (service, _):
        door = update_door(service, tmp_path)
        query = dns.message.make_query(dns.name.Name([b"a.dev", b"local", b""]), "SOA")
        reply = await door.handle(query.to_wire(), "127.0.0.1", False)
        assert reply is not None and rcode_of(reply) == dns.rcode.REFUSED
