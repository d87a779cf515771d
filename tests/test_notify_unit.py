"""dnsapi/notify.py in-process, against a stand-in for CoreDNS's secondary block on a loopback
UDP port: it takes a NOTIFY only from the address it transfers from, and tells the serial it
holds through the SOA that comes with NXDOMAIN, as CoreDNS does. The real CoreDNS is in
tests/test_answers_e2e.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest

from dnsapi import notify
from dnsapi.notify import Notifier, is_reply_to, nxdomain_serial, retry_pause
from dnsapi.service import RecordService
from dnsapi.transfer import Transfers

from .helpers import running, service_config, until_done

pytestmark = pytest.mark.unit

WWW = "_acme-challenge.www.dev.local"


class Secondary(asyncio.DatagramProtocol):
    """Holds a serial; a NOTIFY from 127.0.0.1 makes it take the zone's current one
    ("transfers"), after `transfer_takes`, when `transfers` is on. Asked about the challenge
    name at the apex it answers a CNAME (an acme-dns account's: no SOA), about any other name
    NXDOMAIN with its SOA. `answers` off: it answers nothing at all."""

    def __init__(self, service: RecordService) -> None:
        self.service = service
        self.held = 0
        self.transfers = True
        self.answers = True
        self.notifies: list[str] = []
        self.transfer_takes = 0.0  # seconds from a NOTIFY to holding the serial
        self.transfers_served: dict[str, asyncio.Event] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.caught_up = asyncio.Event()
        self.asked_from: tuple[str, int] | None = None  # where dnsapi's questions come from

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.asked_from = addr
        if not self.answers:
            return
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        if query.opcode() == dns.opcode.NOTIFY:
            if addr[0] != "127.0.0.1":
                return  # as CoreDNS drops a NOTIFY from an address it does not transfer from
            self.notifies.append(query.question[0].name.to_text())
            if self.transfers:
                served = self.service.writers["dev.local"].file.served
                assert served is not None
                asyncio.get_running_loop().call_later(self.transfer_takes, self.transfer, served.serial)
        elif query.question[0].name.to_text() == "_acme-challenge.dev.local.":
            reply.answer.append(dns.rrset.from_text("_acme-challenge.dev.local.", 60, "IN", "CNAME",
                                                    "0b5b9ba4-29a8-4b41-a72a-0b1d4e3d2a11.acme.dev.local."))
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
            reply.authority.append(dns.rrset.from_text(
                "dev.local.", 60, "IN", "SOA", f"ns1.dev.local. h.dev.local. {self.held} 1 1 1 1"))
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)

    def transfer(self, serial: int) -> None:
        if self.transfers:  # (turned off meanwhile: the transfer fails)
            self.held = serial
            self.transfers_served["dev.local"].set()  # as dnsapi's answers do on serving one

    def address(self) -> str:
        assert self.transport is not None
        return f"127.0.0.1:{self.transport.get_extra_info('sockname')[1]}"

    def holds_current(self) -> bool:
        served = self.service.writers["dev.local"].file.served
        return served is not None and self.held == served.serial


@contextlib.asynccontextmanager
async def notifying(tmp_path, monkeypatch) -> AsyncIterator[tuple[RecordService, Secondary]]:
    monkeypatch.setattr(notify, "NOTIFY_TIMEOUT", 0.05)
    monkeypatch.setattr(notify, "CATCH_UP", 0.5)
    monkeypatch.setattr(notify, "RETRY_FIRST", 0.01)
    monkeypatch.setattr(notify, "RETRY_MOST", 0.05)
    loop = asyncio.get_running_loop()
    config, _ = service_config(tmp_path, answers={"listen": "127.0.0.1:1"})
    async with running(config) as (service, _):
        transport, secondary = await loop.create_datagram_endpoint(
            lambda: Secondary(service), local_addr=("127.0.0.1", 0))
        transfers = Transfers("_acme-challenge", ["dev.local"])
        secondary.transfers_served = transfers.served
        notifier = Notifier(service, transfers, "_acme-challenge",
                            (("127.0.0.1", transport.get_extra_info("sockname")[1]),), "127.0.0.1")
        notifier.start()
        try:
            yield service, secondary
        finally:
            await notifier.close()
            transport.close()


async def test_each_change_brings_the_target_to_the_new_serial(tmp_path, monkeypatch):
    async with notifying(tmp_path, monkeypatch) as (service, secondary):
        await until_done(secondary.holds_current)  # told at start, though nothing changed yet
        for value in ("v1", "v2"):
            before = secondary.held
            await service.add(service.make_record(WWW, value))
            await until_done(secondary.holds_current)
            assert secondary.held != before
        assert set(secondary.notifies) == {"_acme-challenge.dev.local."}  # the block's name, not the apex
        await until_done(lambda: service.metrics.registry.get_sample_value(
            "dnsapi_notify_serial", {"zone": "dev.local", "target": secondary.address()}) == secondary.held)


async def test_a_burst_costs_fewer_notifies_than_changes(tmp_path, monkeypatch):
    async with notifying(tmp_path, monkeypatch) as (service, secondary):
        await until_done(secondary.holds_current)
        secondary.transfer_takes = 0.3  # changes arrive faster than it transfers
        sent = len(secondary.notifies)
        serials = set()
        for i in range(20):
            await service.add(service.make_record(WWW, f"v{i}"))
            serials.add(service.writers["dev.local"].file.served.serial)  # type: ignore[union-attr]
        await until_done(secondary.holds_current)
        assert len(serials) == 20  # each add its own serial...
        assert len(secondary.notifies) - sent < len(serials) / 2  # ...but not its own NOTIFY


async def test_a_target_that_does_not_catch_up_is_told_again_until_it_does(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, "dnsapi.notify")
    async with notifying(tmp_path, monkeypatch) as (service, secondary):
        await until_done(secondary.holds_current)
        secondary.transfers = False  # it takes the NOTIFY, but keeps its old zone
        await service.add(service.make_record(WWW, "v1"))
        await until_done(lambda: len([r for r in caplog.records if r.levelno == logging.WARNING]) >= 1)
        assert "did not come to hold serial" in caplog.text
        assert not secondary.holds_current()
        secondary.transfers = True  # no further change: the retry alone brings it
        await until_done(secondary.holds_current)
        await until_done(lambda: "holds serial" in caplog.records[-1].getMessage())
        failures = service.metrics.registry.get_sample_value(
            "dnsapi_notify_failures_total", {"zone": "dev.local", "target": secondary.address()})
        assert failures is not None and failures >= 1


async def test_a_silent_target_is_retried_and_stops_nothing(tmp_path, monkeypatch):
    async with notifying(tmp_path, monkeypatch) as (service, secondary):
        await until_done(secondary.holds_current)
        secondary.answers = False
        await service.add(service.make_record(WWW, "v1"))  # acknowledged all the same
        await until_done(lambda: (service.metrics.registry.get_sample_value(
            "dnsapi_notify_failures_total", {"zone": "dev.local", "target": secondary.address()})
            or 0) >= 2)
        secondary.answers = True
        await until_done(secondary.holds_current)


async def test_a_target_holding_a_newer_serial_than_the_file_is_reported(tmp_path, monkeypatch, caplog):
    """A restored zone file with a lower serial: CoreDNS transfers only a newer one, so its
    challenge names would stay as they were. That is a failure, not a target caught up."""
    async with notifying(tmp_path, monkeypatch) as (service, secondary):
        await until_done(secondary.holds_current)
        secondary.transfers = False
        secondary.held = (secondary.held + 2**30) % 2**32  # newer by serial arithmetic (RFC 1982)
        await service.add(service.make_record(WWW, "v1"))
        await until_done(lambda: "newer than the file's" in caplog.text)
        assert not secondary.holds_current()


async def test_closing_gives_the_last_change_to_the_target(tmp_path, monkeypatch):
    async with notifying(tmp_path, monkeypatch) as (service, secondary):
        await until_done(secondary.holds_current)
        secondary.transfer_takes = 0.2
        await service.add(service.make_record(WWW, "v1"))
    assert secondary.holds_current()  # close() waited for it


def test_the_serial_is_read_from_a_negative_answer_as_coredns_words_it():
    query = dns.message.make_query("_acme-challenge.-dnsapi-serial.dev.local.", "SOA")
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.NXDOMAIN)
    reply.authority.append(dns.rrset.from_text("dev.local.", 60, "IN", "SOA",
                                               "ns1.dev.local. hostmaster.dev.local. 2026113007 1 1 1 1"))
    assert nxdomain_serial(reply.to_wire()) == 2026113007  # names compressed, as CoreDNS sends them
    assert nxdomain_serial(reply.to_wire()[:-18]) is None  # cut short, inside the serial
    reply.set_rcode(dns.rcode.NOERROR)
    assert nxdomain_serial(reply.to_wire()) is None  # the name exists: a CNAME or NS was there
    reply.set_rcode(dns.rcode.NXDOMAIN)
    reply.authority.clear()
    assert nxdomain_serial(reply.to_wire()) is None


async def test_a_forged_caught_up_from_another_address_is_not_taken(tmp_path, monkeypatch):
    """Anyone may learn the zone's serial (the answers listener tells its SOA to all). A reply
    saying the target holds it counts only from the target's own address."""
    monkeypatch.setattr(notify, "randbits", lambda bits: 0x1234)  # the forger even knows the id
    async with notifying(tmp_path, monkeypatch) as (service, secondary):
        await until_done(secondary.holds_current)
        secondary.transfers = False
        await service.add(service.make_record(WWW, "v1"))
        served = service.writers["dev.local"].file.served
        assert served is not None and secondary.asked_from is not None
        probe = dns.message.make_query(f"_acme-challenge.{notify.PROBE_LABEL}.dev.local.", "SOA")
        probe.id = 0x1234
        forged = dns.message.make_response(probe)
        forged.set_rcode(dns.rcode.NXDOMAIN)
        forged.authority.append(dns.rrset.from_text(
            "dev.local.", 60, "IN", "SOA", f"ns1.dev.local. h.dev.local. {served.serial} 1 1 1 1"))
        forger, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))

        async def spray() -> None:
            while True:
                forger.sendto(forged.to_wire(), secondary.asked_from)
                await asyncio.sleep(0.001)

        sprayer = asyncio.create_task(spray())
        try:
            await until_done(lambda: (service.metrics.registry.get_sample_value(
                "dnsapi_notify_failures_total", {"zone": "dev.local", "target": secondary.address()})
                or 0) >= 1, "a round that ended with the target behind")
        finally:
            sprayer.cancel()
            forger.close()
        assert service.metrics.registry.get_sample_value(
            "dnsapi_notify_serial", {"zone": "dev.local", "target": secondary.address()}) != served.serial


def test_a_reply_is_matched_to_its_question():
    query = dns.message.make_query("_acme-challenge.-dnsapi-serial.dev.local.", "SOA")
    wire = query.to_wire()
    reply = dns.message.make_response(query)
    assert is_reply_to(wire, reply.to_wire())
    shouted = dns.message.make_response(dns.message.make_query("_ACME-challenge.-dnsapi-serial.DEV.local.",
                                                               "SOA", id=query.id))
    assert is_reply_to(wire, shouted.to_wire())  # names compare without their case
    assert not is_reply_to(wire, wire)  # QR unset: a question, not its answer
    other = dns.message.make_response(dns.message.make_query("x.dev.local.", "SOA", id=query.id))
    assert not is_reply_to(wire, other.to_wire())
    a_type = dns.message.make_response(dns.message.make_query(
        "_acme-challenge.-dnsapi-serial.dev.local.", "TXT", id=query.id))
    assert not is_reply_to(wire, a_type.to_wire())
    reply.id = query.id ^ 1
    assert not is_reply_to(wire, reply.to_wire())
    reply.id = query.id
    reply.set_opcode(dns.opcode.NOTIFY)
    assert not is_reply_to(wire, reply.to_wire())
    reply.set_opcode(dns.opcode.QUERY)
    reply.question.clear()
    assert not is_reply_to(wire, reply.to_wire())  # no question echoed
    assert not is_reply_to(wire, reply.to_wire()[:11])


def test_the_retry_pause_grows_to_its_ceiling_and_stays_there():
    assert retry_pause(0) is None  # caught up: wait for the next change
    assert retry_pause(1) == notify.RETRY_FIRST
    assert retry_pause(2) == 2 * notify.RETRY_FIRST
    assert retry_pause(5000) == notify.RETRY_MOST  # days of failures: no overflow, the follower lives
