"""NOTIFY to the CoreDNS servers that transfer the challenge names (`answers.notify`), and a
check that each came to hold what it was told about.

Each zone's serial moves whenever its file changes (dnsapi/zonefile.py). For every zone and
target, one follower sends a NOTIFY for the zone's current serial, then asks the target which
serial its `secondary` block holds until it holds that one. Only then does it look at the serial
again, so a burst of changes costs a few transfers, not one per change. A NOTIFY is only a hint
(RFC 1996): CoreDNS answers it before it transfers, drops one from an address it does not
transfer from, and installs whichever transfer finishes last. Asking is what tells that the
target caught up; until it does, the follower tries again with a growing pause, and at once
when the serial moves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from secrets import randbits

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from .config import hostport_text
from .metrics import Metrics
from .ratelimit import doubling
from .service import RecordService, ZoneWriter
from .transfer import Transfers
from .zonefile import serial_gt

log = logging.getLogger(__name__)

NOTIFY_TIMEOUT = 1.0  # seconds to wait for a NOTIFY's reply, or a query's
CATCH_UP = 2.0  # seconds a target may take from a NOTIFY to holding the serial
RETRY_FIRST = 1.0  # seconds before the first retry of a target that did not catch up...
RETRY_MOST = 60.0  # ...doubling up to this
# Rounds to one target start at least this far apart: a change after a quiet spell goes at
# once, while under a burst each transfer carries the changes of this long (a transfer costs
# dnsapi and CoreDNS work in proportion to the zone's challenge records).
ROUND_GAP = 0.02
TRANSFER_WAIT = 0.05  # seconds to wait for the target to transfer before asking it anyway
ASK_FIRST = 0.001  # seconds between asking a target for its serial, doubling...
ASK_MOST = 0.05  # ...up to this
# The name asked for the serial: one the target's view passes to its secondary block (it starts
# with the challenge label) that cannot exist there, so the answer is NXDOMAIN with the zone's
# SOA. dnsapi never writes a label starting with "-", so no CNAME can sit there (a CNAME at
# `<label>.<zone>`, an acme-dns account's, would be answered instead of the SOA).
PROBE_LABEL = "-dnsapi-serial"


class Notifier:
    """One follower per zone and `answers.notify` target."""

    def __init__(self, service: RecordService, transfers: Transfers, label: str,
                 targets: tuple[tuple[str, int], ...], source: str | None) -> None:
        self._followers = [_Follower(writer, transfers, label, target, source, service.metrics)
                           for writer in service.writers.values() for target in targets]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(f.run(), name=f"notify:{f.zone}:{f.address}")
                       for f in self._followers]

    async def close(self) -> None:
        """Give the targets up to CATCH_UP to take the last changes, then stop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP
        while not all(f.caught_up() for f in self._followers) and loop.time() < deadline:
            await asyncio.sleep(ASK_MOST)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for follower in self._followers:
            await follower.close()


class _Follower:
    """Keeps one target holding one zone's current serial."""

    def __init__(self, writer: ZoneWriter, transfers: Transfers, label: str, target: tuple[str, int],
                 source: str | None, metrics: Metrics) -> None:
        self.writer = writer
        self.zone = writer.zone.name
        self.transferred = transfers.served.setdefault(self.zone, asyncio.Event())
        self.host, self.port = target
        self.address = hostport_text(self.host, self.port)
        self.source = source
        self.metrics = metrics
        # Named for the zone's bare challenge name, not its apex: CoreDNS takes a NOTIFY for
        # any name in the zone, and only challenge names reach the block that transfers.
        notify = dns.message.make_query(f"{label}.{self.zone}.", dns.rdatatype.SOA)
        notify.set_opcode(dns.opcode.NOTIFY)
        notify.flags = (notify.flags | dns.flags.AA) & ~dns.flags.RD
        self.notify = notify.to_wire()
        self.probe = dns.message.make_query(f"{label}.{PROBE_LABEL}.{self.zone}.",
                                            dns.rdatatype.SOA).to_wire()
        self._started = -ROUND_GAP  # when the last round started (event loop time)
        self.held: int | None = None  # the serial the target was last seen holding
        self._channel: _Channel | None = None  # kept: a change asks a few times
        self.moved = asyncio.Event()
        self.moved.set()  # a target may hold an old serial from before this start
        writer.watchers.append(self.moved)

    async def close(self) -> None:
        if self._channel is not None and self._channel.transport is not None:
            self._channel.transport.close()
        self._channel = None

    async def _ask(self, query: bytes) -> bytes | None:
        """The reply to `query` (wire form, its id replaced by a random one) from the target,
        None if none came within NOTIFY_TIMEOUT. Kept in wire form: a change asks a few times,
        and parsing each message in full cost more than the transfer it waits for."""
        wire = struct.pack("!H", randbits(16)) + query[2:]
        try:
            if self._channel is None:
                family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                _, self._channel = await asyncio.get_running_loop().create_datagram_endpoint(
                    _Channel, remote_addr=(self.host, self.port), family=family,
                    local_addr=(self.source, 0) if self.source else None)
            return await self._channel.ask(wire, NOTIFY_TIMEOUT)
        except OSError:  # (nothing listens at the target: the next question opens a new socket)
            await self.close()
            return None

    def caught_up(self) -> bool:
        served = self.writer.file.served
        return served is None or self.held == served.serial

    async def run(self) -> None:
        failures = 0
        while True:
            pause = retry_pause(failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.moved.wait(), pause)
            self.moved.clear()
            if self.caught_up():
                failures = 0
                continue
            loop = asyncio.get_running_loop()
            if (gap := self._started + ROUND_GAP - loop.time()) > 0:
                await asyncio.sleep(gap)
            # else not even a yield: the NOTIFY leaves before the change's acknowledgement
            self._started = loop.time()
            try:
                failures = await self._round(failures)
            except Exception:  # a follower that stops would leave the target stale unseen
                log.exception("zone %s: NOTIFY to %s failed", self.zone, self.address)
                failures += 1

    async def _round(self, failures: int) -> int:
        """One NOTIFY and the wait for the target to hold the serial; the failures since the
        target last held the zone's serial."""
        served = self.writer.file.served
        assert served is not None
        self.held = await self._bring(served.serial)
        if self.held is not None:
            self.metrics.notify_serial.labels(self.zone, self.address).set(self.held)
        if self.held == served.serial:
            if failures:
                log.info("zone %s: %s holds serial %d again", self.zone, self.address, self.held)
            return 0
        self.metrics.notify_failures.labels(self.zone, self.address).inc()
        if failures % 10 == 0:
            if self.held is not None and serial_gt(self.held, served.serial):
                log.warning("zone %s: %s holds serial %d, newer than the file's %d, and will not "
                            "transfer an older one: restart that CoreDNS, or raise the file's "
                            "serial past %d", self.zone, self.address, self.held, served.serial,
                            self.held)
            else:
                log.warning("zone %s: %s did not come to hold serial %d (it holds %s); its "
                            "challenge names are stale until it does: is CoreDNS running, with "
                            "`transfer from` naming answers.listen? (try %d)", self.zone,
                            self.address, served.serial, self.held, failures + 1)
        return failures + 1

    async def _bring(self, serial: int) -> int | None:
        """NOTIFY the target of `serial`, then the serial it holds once it holds that one (or
        a newer one), or what it held when CATCH_UP ran out (None: it did not answer)."""
        self.transferred.clear()
        await self._ask(self.notify)  # CoreDNS answers none from an address it does not transfer from
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP
        # Asking before the target transferred would only cost: wait for a transfer to be
        # served (any target's, if several share the zone), unless the target sees no newer
        # serial and does not transfer at all.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.transferred.wait(), TRANSFER_WAIT)
        pause = ASK_FIRST
        while True:
            reply = await self._ask(self.probe)
            held = None if reply is None else nxdomain_serial(reply)
            if held is not None and not serial_gt(serial, held) or loop.time() + pause > deadline:
                return held
            await asyncio.sleep(pause)
            pause = min(ASK_MOST, pause * 2)


class _Channel(asyncio.DatagramProtocol):
    """A UDP socket connected to one target, so the kernel drops datagrams from any other
    address. A datagram is taken only while a question waits and only if it answers that
    question; anything else (a late answer to an earlier question, say) is dropped, so nothing
    piles up between rounds."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self._question = b""
        self._reply: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._reply is not None and not self._reply.done() and is_reply_to(self._question, data):
            self._reply.set_result(data)

    def error_received(self, exc: Exception) -> None:  # (an ICMP error: nothing listens there)
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(exc)

    async def ask(self, wire: bytes, timeout: float) -> bytes | None:
        """Send `wire` and wait up to `timeout` for its reply (None if none came)."""
        assert self.transport is not None
        self._question, self._reply = wire, asyncio.get_running_loop().create_future()
        self.transport.sendto(wire)
        try:
            async with asyncio.timeout(timeout):
                return await self._reply
        except TimeoutError:
            return None
        finally:
            self._reply = None


def is_reply_to(query: bytes, reply: bytes) -> bool:
    """Does `reply` answer `query` (a message holding only its one question): the same id, QR
    set, the same opcode and the same question (its name's ASCII case aside)?"""
    end = len(query)
    return (len(reply) >= end and reply[:2] == query[:2] and reply[2] & 0x80 == 0x80
            and reply[2] & 0x78 == query[2] & 0x78 and reply[4:6] == b"\x00\x01"
            and reply[12:end].lower() == query[12:end].lower())


def retry_pause(failures: int) -> float | None:
    """Seconds before asking a target again after `failures` rounds it did not catch up in
    (None: after none, wait for the next change)."""
    if not failures:
        return None
    return doubling(RETRY_FIRST, RETRY_MOST, failures)


def nxdomain_serial(reply: bytes) -> int | None:
    """The SOA serial in the authority section of an NXDOMAIN reply (what a secondary block
    gives for a name it does not hold: its zone's SOA), else None."""
    try:
        flags, questions, answers, authority = struct.unpack_from("!HHHH", reply, 2)
        if flags & 0xF != dns.rcode.NXDOMAIN:
            return None
        at = 12
        for _ in range(questions):
            at = _skip_name(reply, at) + 4
        for i in range(answers + authority):
            at = _skip_name(reply, at)
            rdtype, _, _, length = struct.unpack_from("!HHIH", reply, at)
            at += 10
            if i >= answers and rdtype == dns.rdatatype.SOA:
                serial_at = _skip_name(reply, _skip_name(reply, at))
                return int(struct.unpack_from("!I", reply, serial_at)[0])
            at += length
    except (struct.error, IndexError):
        pass
    return None


def _skip_name(wire: bytes, at: int) -> int:
    """Where the name at `at` ends (a compression pointer ends it)."""
    while True:
        length = wire[at]
        if length == 0:
            return at + 1
        if length & 0xC0 == 0xC0:
            return at + 2
        at += 1 + length
