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
import random
import socket
import struct

import dns.asyncbackend
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from .config import hostport_text
from .metrics import Metrics
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
        self._ident = random.getrandbits(16)
        self._started = -ROUND_GAP  # when the last round started (event loop time)
        self.held: int | None = None  # the serial the target was last seen holding
        self._socket: dns.asyncbackend.DatagramSocket | None = None  # kept: a change asks a few times
        self.moved = asyncio.Event()
        self.moved.set()  # a target may hold an old serial from before this start
        writer.watchers.append(self.moved)

    async def close(self) -> None:
        if self._socket is not None:
            await self._socket.close()
            self._socket = None

    async def _ask(self, query: bytes) -> bytes | None:
        """The reply to `query` (wire form, its id replaced by a fresh one) from the target,
        None if none came within NOTIFY_TIMEOUT. Kept in wire form: a change asks a few times,
        and parsing each message in full cost more than the transfer it waits for."""
        self._ident = (self._ident + 1) & 0xFFFF
        wire = struct.pack("!H", self._ident) + query[2:]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NOTIFY_TIMEOUT
        try:
            if self._socket is None:
                family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
                self._socket = await dns.asyncbackend.get_backend("asyncio").make_socket(
                    family, socket.SOCK_DGRAM, 0, (self.source, 0) if self.source else None)
            await self._socket.sendto(wire, (self.host, self.port), None)
            while (left := deadline - loop.time()) > 0:
                reply, _ = await self._socket.recvfrom(65535, left)
                if reply[:2] == wire[:2] and len(reply) >= 12 and reply[2] & 0x80:
                    return bytes(reply)  # (a late reply to an earlier question is passed over)
        except (dns.exception.Timeout, TimeoutError):
            return None
        except OSError:
            await self.close()
        return None

    def caught_up(self) -> bool:
        served = self.writer.file.served
        return served is None or self.held == served.serial

    async def run(self) -> None:
        failures = 0
        while True:
            pause = None if not failures else min(RETRY_MOST, RETRY_FIRST * 2 ** (failures - 1))
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
