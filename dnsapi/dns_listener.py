"""UDP and TCP on one address for a DNS front door: the door turns a request's bytes into its
reply's (or None: nothing to send), this module moves them. Shared by the RFC 2136 door and the
challenge answers."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable

import dns.rcode

from .metrics import Metrics

log = logging.getLogger(__name__)

TCP_IDLE = 10.0  # seconds a TCP client may take to send its next message, or to take its reply
MAX_TCP = 64  # open TCP connections at once (they share the descriptors the HTTP side keeps in
# reserve, see connections.DESCRIPTOR_RESERVE); one more displaces the connection idle longest,
# or is closed at once when none is idle
MAX_TCP_PER_ADDRESS = 16  # ...and from one source (an IPv4 address or an IPv6 /64: one host
# holds a whole /64), so one source cannot take them all
MAX_UDP_PENDING = 256  # UDP messages being answered at once; more are dropped (a client retries)
MAX_MESSAGE = 65535  # a DNS message over TCP
UDP_MOST = 1232  # the most a UDP reply carries whatever EDNS size is offered (DNS Flag Day 2020:
# no fragments on any path, and a small query cannot draw a large reply at someone else)

# (wire, remote address, tcp) → the reply; several messages for a zone transfer (TCP only)
Handler = Callable[[bytes, str, bool], Awaitable[bytes | list[bytes] | None]]


def reply_limit(tcp: bool, edns: int, payload: int) -> int:
    """How large a reply may be: a TCP message's most, else 512 bytes without EDNS (RFC 1035)
    and the size the client offers with it, between 512 and UDP_MOST."""
    return MAX_MESSAGE if tcp else 512 if edns < 0 else min(max(512, payload), UDP_MOST)


def formerr(wire: bytes) -> bytes | None:
    """The FORMERR reply to a message that does not parse: its id and opcode echoed, nothing
    else; None when there is no header to echo, or when it is a response (QR set): answering
    one could start a loop, or reflect packets at whoever was spoofed as its sender."""
    return header_reply(wire, dns.rcode.FORMERR)


def header_reply(wire: bytes, rcode: int, truncated: bool = False) -> bytes | None:
    """A reply of a header only (id and opcode echoed, `rcode`, TC if `truncated`), as formerr."""
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    ident, flags = struct.unpack("!HH", wire[:4])
    return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7800) | (0x0200 if truncated else 0)
                       | rcode, 0, 0, 0, 0)


def source(address: str) -> str:
    """Whom a TCP connection counts against: its IPv4 address, or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # (an IPv4 client of a dual-stack socket)
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class DnsListener:
    def __init__(self, handle: Handler, metrics: Metrics) -> None:
        self.handle = handle
        self.metrics = metrics
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_open: Counter[str] = Counter()  # open TCP connections by source
        # connections waiting for their client's next message, the longest waiting first
        self._tcp_idle: OrderedDict[asyncio.StreamWriter, None] = OrderedDict()

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(host, port))
        self._tcp = await asyncio.start_server(self._serve_tcp, host, port)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()

    def spawn(self, wire: bytes, remote: tuple[str, int]) -> None:
        if len(self._tasks) >= MAX_UDP_PENDING:  # a flood: its tasks must not pile up
            self.metrics.dns_dropped.inc()
            return
        task = asyncio.create_task(self._answer_udp(wire, remote))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_udp(self, wire: bytes, remote: tuple[str, int]) -> None:
        reply = await self.handle(wire, remote[0], False)
        if isinstance(reply, bytes) and self._udp is not None:
            self._udp.sendto(reply, remote)

    def _room(self, origin: str) -> bool:
        """Whether a new connection from `origin` may stay: within its source's share, and within
        MAX_TCP once the connection idle longest (if any) is closed. Clients that hold
        connections open between rare messages take no slot from one that has a message."""
        if self._tcp_open[origin] >= MAX_TCP_PER_ADDRESS:
            return False
        if self._tcp_open.total() < MAX_TCP:
            return True
        if not self._tcp_idle:
            return False
        oldest, _ = self._tcp_idle.popitem(last=False)
        oldest.transport.abort()  # (its task ends and gives its slot back)
        return True

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        remote = str((writer.get_extra_info("peername") or ("unknown",))[0])
        origin = source(remote)
        if not self._room(origin):
            self.metrics.connections_refused.labels("dns_tcp").inc()
            writer.transport.abort()
            return
        self._tcp_open[origin] += 1
        try:
            while True:
                self._tcp_idle[writer] = None  # (until a whole message is in: a length alone,
                # then nothing, is as idle as nothing)
                async with asyncio.timeout(TCP_IDLE):  # (wait_for would start a task per read)
                    (length,) = struct.unpack("!H", await reader.readexactly(2))
                    wire = await reader.readexactly(length)
                self._tcp_idle.pop(writer, None)
                reply = await self.handle(wire, remote, True)
                if reply is None:
                    return
                for message in [reply] if isinstance(reply, bytes) else reply:
                    writer.write(struct.pack("!H", len(message)) + message)
                async with asyncio.timeout(TCP_IDLE):  # a client that does not read its replies
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return
        finally:
            self._tcp_idle.pop(writer, None)
            self._tcp_open[origin] -= 1
            if not self._tcp_open[origin]:
                del self._tcp_open[origin]
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # (close() would wait for a reader that never reads)
            else:
                writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, listener: DnsListener) -> None:
        self.listener = listener

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.listener.spawn(data, addr)
