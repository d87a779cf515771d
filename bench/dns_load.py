"""The RFC 2136 load for bench/compare.py: UPDATE messages sent to a server from one asyncio
client, over UDP (one socket per worker) or TCP (a new connection per message), each worker
waiting for its answer before it sends the next.

The messages are signed before the clock starts and the answers' TSIG and rcode checked after
it stops: the load generator has to cost far less than the server it measures, on a machine it
shares with it (a thread per UPDATE through dnspython cost the client a whole core at about
1,100 UPDATEs/s, below what BIND answers).
"""

from __future__ import annotations

import asyncio
import struct
import time

import dns.message
import dns.rcode
import dns.update

TIMEOUT = 10.0  # seconds to wait for one answer


async def exchange_all(port: int, wires: list[bytes], concurrency: int, udp: bool
                       ) -> tuple[float, list[bytes]]:
    """Seconds taken to send every message in `wires` to 127.0.0.1:`port` with at most
    `concurrency` waiting for an answer, and the answers, in the same order."""
    answers: list[bytes] = [b""] * len(wires)
    pending = iter(range(len(wires)))
    exchange = _exchange_udp if udp else _exchange_tcp
    start = time.perf_counter()
    await asyncio.gather(*(exchange(port, wires, answers, pending)
                           for _ in range(min(concurrency, len(wires)))))
    return time.perf_counter() - start, answers


class _Answers(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: asyncio.Future[bytes] | None = None
        self.ident = b""

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.waiting is not None and not self.waiting.done() and data[:2] == self.ident:
            self.waiting.set_result(data)


async def _exchange_udp(port: int, wires: list[bytes], answers: list[bytes], pending) -> None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Answers, remote_addr=("127.0.0.1", port))
    try:
        for i in pending:
            protocol.waiting, protocol.ident = loop.create_future(), wires[i][:2]
            transport.sendto(wires[i])
            async with asyncio.timeout(TIMEOUT):
                answers[i] = await protocol.waiting
    finally:
        transport.close()


async def _exchange_tcp(port: int, wires: list[bytes], answers: list[bytes], pending) -> None:
    for i in pending:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(struct.pack("!H", len(wires[i])) + wires[i])
            async with asyncio.timeout(TIMEOUT):
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                answers[i] = await reader.readexactly(length)
        finally:
            writer.close()


def check_answers(updates: list[dns.update.UpdateMessage], answers: list[bytes], keyring,
                  label: str) -> None:
    """Every answer signed with the key and NOERROR, as a real client would insist."""
    for update, answer in zip(updates, answers, strict=True):
        response = dns.message.from_wire(answer, keyring=keyring, request_mac=update.mac)
        if response.rcode() != dns.rcode.NOERROR:
            raise SystemExit(f"{label} refused an update: rcode {dns.rcode.to_text(response.rcode())}")
