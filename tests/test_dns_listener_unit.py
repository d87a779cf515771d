"""dnsapi/dns_listener.py in-process, on a loopback port: what a hostile TCP client can hold."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from dnsapi import dns_listener
from dnsapi.dns_listener import MAX_TCP_PER_ADDRESS, DnsListener
from dnsapi.metrics import Metrics

from .helpers import free_port, until_done

pytestmark = pytest.mark.unit

REPLY = b"r" * 4000  # large enough that unread replies fill the socket buffers quickly


async def echo(wire: bytes, remote: str, tcp: bool) -> bytes:
    return REPLY


def framed(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


async def answered(port: int, source: str = "127.0.0.1") -> bool:
    """One query over a new TCP connection from `source`: answered, or closed on us?"""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(framed(b"q" * 12))
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        return await reader.readexactly(length) == REPLY
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    finally:
        writer.close()


async def test_a_client_that_never_reads_its_replies_is_dropped_and_frees_its_slot(monkeypatch):
    monkeypatch.setattr(dns_listener, "TCP_IDLE", 0.5)
    listener, port = DnsListener(echo, Metrics()), free_port()
    await listener.start("127.0.0.1", port)
    try:
        hog = socket.create_connection(("127.0.0.1", port))
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Far more replies than the socket buffers hold: the server's writes back up.
        await asyncio.get_running_loop().sock_sendall(hog, framed(b"q" * 12) * 5000)
        await until_done(lambda: listener._tcp_open["127.0.0.1"] == 1, "the connection served")
        await until_done(lambda: not listener._tcp_open, "the unread connection dropped", timeout=5)
        hog.close()
        assert await answered(port)
    finally:
        await listener.close()


async def test_one_address_cannot_take_every_tcp_slot():
    listener, port = DnsListener(echo, Metrics()), free_port()
    await listener.start("127.0.0.1", port)
    held = []
    try:
        for _ in range(MAX_TCP_PER_ADDRESS):
            held.append(socket.create_connection(("127.0.0.1", port)))
        await until_done(lambda: listener._tcp_open["127.0.0.1"] == MAX_TCP_PER_ADDRESS,
                         "the held connections counted")
        assert not await answered(port)  # one more from the same address: closed at once
        assert await answered(port, source="127.0.0.2")  # another address still gets in
        assert 'dnsapi_http_connections_refused_total{reason="dns_tcp"} 1.0' in \
            listener.metrics.render().decode()
    finally:
        for sock in held:
            sock.close()
        await listener.close()


async def test_idle_connections_from_a_few_sources_cannot_keep_a_client_out():
    """The review's finding: four addresses holding sixteen idle connections each (a query now
    and then keeps them open) took every slot, and certbot's TCP UPDATE was refused. A new
    connection now displaces the one idle longest."""
    listener, port = DnsListener(echo, Metrics()), free_port()
    await listener.start("127.0.0.1", port)
    held = []
    try:
        for n in range(dns_listener.MAX_TCP // MAX_TCP_PER_ADDRESS):
            for i in range(MAX_TCP_PER_ADDRESS):
                sock = socket.socket()
                sock.bind((f"127.0.0.{n + 1}", 0))
                sock.connect(("127.0.0.1", port))
                if i % 2:  # half of them announce a message, then send none of it
                    sock.sendall(b"\xff\xff")
                held.append(sock)
        await until_done(lambda: len(listener._tcp_idle) == dns_listener.MAX_TCP, "every slot held")
        assert await answered(port, source="127.0.0.9")
        refused = 'dnsapi_http_connections_refused_total{reason="dns_tcp"}'
        assert refused not in listener.metrics.render().decode()
        assert held[0].recv(1) == b""  # the first held, idle longest, was closed
    finally:
        for sock in held:
            sock.close()
        await listener.close()


def test_an_ipv6_client_counts_by_its_64():
    assert dns_listener.source("2001:db8::1") == dns_listener.source("2001:db8::ffff:1") == "2001:db8::/64"
    assert dns_listener.source("2001:db8:0:1::1") != dns_listener.source("2001:db8::1")
    assert dns_listener.source("::ffff:192.0.2.1") == "192.0.2.1"
    assert dns_listener.source("192.0.2.1") == "192.0.2.1"


async def test_a_udp_flood_is_dropped_past_the_messages_being_answered(monkeypatch):
    monkeypatch.setattr(dns_listener, "MAX_UDP_PENDING", 8)
    release = asyncio.Event()

    async def slow(wire: bytes, remote: str, tcp: bool) -> bytes:
        await release.wait()
        return REPLY[:100]

    listener, port = DnsListener(slow, Metrics()), free_port()
    await listener.start("127.0.0.1", port)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flood:
            for _ in range(20):
                flood.sendto(b"q" * 12, ("127.0.0.1", port))
            await until_done(lambda: listener.metrics.registry.get_sample_value(
                "dnsapi_dns_dropped_total") == 12, "12 of 20 dropped")
            assert len(listener._tasks) == 8
            release.set()
            await until_done(lambda: not listener._tasks, "the 8 answered")
    finally:
        await listener.close()
