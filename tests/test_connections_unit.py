"""The HTTP listener's own accept loop (dnsapi/connections.py), in-process."""

from __future__ import annotations

import asyncio
import socket

from dnsapi.connections import _Listener


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received.put_nowait(data)


async def test_a_socket_opened_while_the_listener_stops_still_receives():
    """Stopping closes the listening socket only once its accept has been cancelled and
    unregistered. Closed at once, its descriptor number was free while the event loop still had
    it registered; a DNS socket opened right then (a `wait` polling CoreDNS) took that number,
    the loop took it for the old registration and never watched it, and the wait hung."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    accepting = loop.create_task(loop.sock_accept(listener))
    await asyncio.sleep(0)  # the accept is waiting, its descriptor registered
    _Listener(listener, accepting).close()

    transport, protocol = await loop.create_datagram_endpoint(_Datagrams, local_addr=("127.0.0.1", 0))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"answer", transport.get_extra_info("sockname"))
        assert await asyncio.wait_for(protocol.received.get(), 5) == b"answer"
    finally:
        transport.close()
    await asyncio.sleep(0)
    assert listener.fileno() == -1  # closed once the accept loop ended
    assert errors == []
