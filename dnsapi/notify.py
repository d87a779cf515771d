"""NOTIFY to the CoreDNS servers that transfer the challenge names (`answers.notify`), and a
check that each came to hold what it was told about.

Each zone's serial moves whenever its file changes (dnsapi/zonefile.py). For every zone and
target, one follower sends a NOTIFY for the zone's current serial, then asks the target which
serial its `secondary` block holds (the SOA that comes with a negative answer for the zone's
bare challenge name) until it holds that one. Only then does it look at the serial again, so a
burst of changes costs a few transfers, not one per change. A NOTIFY is only a hint (RFC 1996):
CoreDNS answers it before it transfers, may drop it, and installs whichever transfer finishes
last. Asking is what tells that the target caught up; until it does, the follower tries again
with a growing pause, and at once when the serial moves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from .metrics import Metrics
from .service import RecordService, ZoneWriter
from .zonefile import serial_gt

log = logging.getLogger(__name__)

NOTIFY_TIMEOUT = 1.0  # seconds to wait for a NOTIFY's reply, or a query's
CATCH_UP = 2.0  # seconds a target may take from a NOTIFY to holding the serial
RETRY_FIRST = 1.0  # seconds before the first retry of a target that did not catch up...
RETRY_MOST = 60.0  # ...doubling up to this
ASK_FIRST = 0.001  # seconds between asking a target for its serial, doubling...
ASK_MOST = 0.05  # ...up to this


class Notifier:
    """One follower per zone and `answers.notify` target."""

    def __init__(self, service: RecordService, label: str, targets: tuple[tuple[str, int], ...],
                 source: str | None) -> None:
        self._followers = [_Follower(writer, label, target, source, service.metrics)
                           for writer in service.writers.values() for target in targets]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(f.run(), name=f"notify:{f.zone}:{f.address}")
                       for f in self._followers]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _Follower:
    """Keeps one target holding one zone's current serial."""

    def __init__(self, writer: ZoneWriter, label: str, target: tuple[str, int], source: str | None,
                 metrics: Metrics) -> None:
        self.writer = writer
        self.zone = writer.zone.name
        self.host, self.port = target
        self.address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self.source = source
        self.metrics = metrics
        self.probe = f"{label}.{self.zone}."
        self.moved = asyncio.Event()
        self.moved.set()  # a target may hold an old serial from before this start
        writer.watchers.append(self.moved)

    async def run(self) -> None:
        held: int | None = None
        failures = 0
        while True:
            pause = None if not failures else min(RETRY_MOST, RETRY_FIRST * 2 ** (failures - 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.moved.wait(), pause)
            self.moved.clear()
            served = self.writer.file.served
            if served is None or (held is not None and not serial_gt(served.serial, held)):
                continue
            held = await self._bring(served.serial)
            if held is not None and not serial_gt(served.serial, held):
                self.metrics.notify_serial.labels(self.zone, self.address).set(held)
                if failures:
                    log.info("zone %s: %s holds serial %d again", self.zone, self.address, held)
                failures = 0
                continue
            failures += 1
            self.metrics.notify_failures.labels(self.zone, self.address).inc()
            if failures == 1 or failures % 10 == 0:
                log.warning("zone %s: %s did not come to hold serial %d (it holds %s); its "
                            "challenge names are stale until it does: is CoreDNS running, with "
                            "`transfer from` naming answers.listen? (try %d)", self.zone,
                            self.address, served.serial, held, failures)

    async def _bring(self, serial: int) -> int | None:
        """NOTIFY the target of `serial`, then the serial it holds once it holds that one, or
        what it held when CATCH_UP ran out (None: it did not answer)."""
        # Named for the zone's bare challenge name, not its apex: CoreDNS takes a NOTIFY for
        # any name in the zone, and only challenge names reach the block that transfers.
        notify = dns.message.make_query(self.probe, dns.rdatatype.SOA)
        notify.set_opcode(dns.opcode.NOTIFY)
        notify.flags |= dns.flags.AA
        # CoreDNS answers no NOTIFY from an address it does not transfer from: ask anyway.
        with contextlib.suppress(dns.exception.DNSException, OSError):
            await dns.asyncquery.udp(notify, self.host, port=self.port, timeout=NOTIFY_TIMEOUT,
                                     source=self.source)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP
        pause = ASK_FIRST
        while True:
            held = await self._held()
            if held is not None and not serial_gt(serial, held) or loop.time() + pause > deadline:
                return held
            await asyncio.sleep(pause)
            pause = min(ASK_MOST, pause * 2)

    async def _held(self) -> int | None:
        """The serial of the zone the target's secondary block holds, None if it has none."""
        query = dns.message.make_query(self.probe, dns.rdatatype.SOA)
        try:
            reply = await dns.asyncquery.udp(query, self.host, port=self.port,
                                             timeout=NOTIFY_TIMEOUT, source=self.source)
        except (dns.exception.DNSException, OSError):
            return None
        if reply.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None
        soa = [rd for rrset in (*reply.answer, *reply.authority)
               if rrset.rdtype == dns.rdatatype.SOA for rd in rrset]
        return soa[0].serial if soa else None
