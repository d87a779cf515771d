"""Keep slow, idle and excess connections from taking the HTTP API down.

An unauthenticated client can open a connection, send half a request line and wait; a thousand
such connections used to exhaust the process's descriptors, so real clients timed out and asyncio
logged a traceback for every failed accept. dnsapi therefore runs its own accept loop
(`GuardedSite`) and bounds what a connection may hold:

- each accepted socket is admitted or closed at once, before it gets a transport: at most
  `max_connections_per_address` per source address, and at most `max_connections` in all (kept
  below the descriptor limit). When all are taken, a new connection displaces the oldest one that
  has no request in progress, so a flood of idle connections cannot lock out a client that sends
  its request promptly;
- a request's headers must arrive within `request_timeout` of the connection opening (or of the
  previous response), however they trickle in; its body has the same bound (api.read_body);
- an idle keep-alive connection is closed after `keepalive_timeout`;
- a failed accept (out of descriptors) is counted in a metric and logged at most once a minute.

Requests mark their connection busy through the request middleware (`busy`), which lifts the
deadline while dnsapi works on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .config import HttpLimits
from .metrics import Metrics

log = logging.getLogger(__name__)

BACKLOG = 1024  # a deep listen queue: under a flood a real client's SYN must not be dropped
DESCRIPTOR_RESERVE = 100  # descriptors kept for zone files, Vault and DNS sockets, logs
ACCEPT_LOG_INTERVAL = 60.0  # at most one log line per this long about failed accepts
ACCEPT_RETRY = 0.1  # after a failed accept, wait this long (descriptors may free up)


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    address: str
    transport: asyncio.Transport | None = None  # None until the transport exists
    busy: int = 0  # requests of this connection inside dnsapi's handlers
    timer: asyncio.TimerHandle | None = None
    ended: bool = False  # closed by the guard before its transport existed (in its TLS handshake)


def connection_limit(configured: int) -> int:
    """`configured`, lowered to stay DESCRIPTOR_RESERVE below the soft descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - DESCRIPTOR_RESERVE))


class ConnectionGuard:
    def __init__(self, limits: HttpLimits, metrics: Metrics) -> None:
        self.limits = limits
        self.metrics = metrics
        self.max_connections = connection_limit(limits.max_connections)
        self._open: dict[socket.socket, _Connection] = {}  # in admission order
        self._by_handler: dict[RequestHandler, _Connection] = {}
        self._closing = 0  # aborted connections whose descriptors the loop has yet to close
        self._per_address: Tally[str] = Tally()
        self._accept_errors = 0
        self._logged_at = -ACCEPT_LOG_INTERVAL

    # -- admission ---------------------------------------------------------------------------

    async def serve(self, listener: socket.socket, server: web.Server,
                    context: ssl.SSLContext | None) -> None:
        """Accept connections on `listener` for `server` until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM: try again shortly
                self._accept_failed(exc)
                await asyncio.sleep(ACCEPT_RETRY)
                continue
            connection = self._admit(sock, str(peer[0]) if peer else "unknown")
            if connection is not None:
                loop.create_task(self._connect(sock, connection, server, context))
            # sock_accept returns without yielding while the backlog holds connections: one
            # accept per turn of the loop lets a displaced connection's descriptor close first.
            await asyncio.sleep(0)

    def _admit(self, sock: socket.socket, address: str) -> _Connection | None:
        if self._per_address[address] >= self.limits.max_connections_per_address:
            self._refuse(sock, "per_address")
            return None
        # Full: an idle connection makes room, but not while aborted ones still hold their
        # descriptors (they close at the loop's next turn), so the cap bounds descriptors.
        if len(self._open) + self._closing >= self.max_connections \
                and (self._closing or not self._displace_idle()):
            self._refuse(sock, "total")
            return None
        connection = _Connection(sock, address)
        self._open[sock] = connection
        self._per_address[address] += 1
        self.metrics.connections.set(len(self._open))
        self._arm(sock, connection, self.limits.request_timeout)
        return connection

    def _refuse(self, sock: socket.socket, reason: str) -> None:
        self.metrics.connections_refused.labels(reason).inc()
        with contextlib.suppress(OSError):  # a reset: the client learns at once
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()

    async def _connect(self, sock: socket.socket, connection: _Connection, server: web.Server,
                       context: ssl.SSLContext | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            if context is None:  # asyncio refuses a handshake timeout without TLS
                transport, handler = await loop.connect_accepted_socket(server, sock)
            else:
                transport, handler = await loop.connect_accepted_socket(
                    server, sock, ssl=context, ssl_handshake_timeout=self.limits.request_timeout)
        except (TimeoutError, OSError, ssl.SSLError):
            self._forget(sock)
            if connection.ended:  # (asyncio closes the socket of a failed handshake)
                loop.call_soon(self._closed)
            return
        if self._open.get(sock) is not connection:  # displaced or timed out meanwhile
            transport.abort()
            if connection.ended:
                loop.call_soon(self._closed)
            return
        connection.transport = transport
        self._by_handler[handler] = connection

    def _displace_idle(self) -> bool:
        """Close the oldest connection with no request in progress; False if every one is busy."""
        for sock, connection in self._open.items():
            if not connection.busy:
                self.metrics.connections_closed.labels("displaced").inc()
                self._close(sock)
                return True
        return False

    def _accept_failed(self, exc: OSError) -> None:
        self.metrics.accept_errors.inc()
        self._accept_errors += 1
        now = time.monotonic()
        if now - self._logged_at >= ACCEPT_LOG_INTERVAL:
            log.warning("could not accept %d connection(s): %s (raise LimitNOFILE or lower "
                        "http.max_connections)", self._accept_errors, exc.strerror)
            self._logged_at, self._accept_errors = now, 0

    # -- deadlines ---------------------------------------------------------------------------

    def _arm(self, sock: socket.socket, connection: _Connection, seconds: float) -> None:
        """Close the connection in `seconds` unless a request has reached dnsapi by then."""
        if connection.timer is not None:
            connection.timer.cancel()
        connection.timer = asyncio.get_running_loop().call_later(seconds, self._expire, sock,
                                                                 connection)

    def _expire(self, sock: socket.socket, connection: _Connection) -> None:
        if self._open.get(sock) is connection and not connection.busy:
            self.metrics.connections_closed.labels("timeout").inc()
            self._close(sock)

    @contextlib.contextmanager
    def busy(self, request: web.BaseRequest) -> Iterator[None]:
        """While a request is in dnsapi's handlers its connection has no deadline; afterwards
        the connection may idle for keepalive_timeout, within which the next request's headers
        must have arrived too."""
        connection = self._by_handler.get(request.protocol)
        if connection is None:  # not accepted by serve(): aiohttp's test client, say
            yield
            return
        connection.busy += 1
        if connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None
        try:
            yield
        finally:
            connection.busy -= 1
            sock = self._socket_of(connection)
            if not connection.busy and sock is not None:
                self._arm(sock, connection, min(self.limits.keepalive_timeout,
                                                self.limits.request_timeout))

    # -- bookkeeping -------------------------------------------------------------------------

    def _socket_of(self, connection: _Connection) -> socket.socket | None:
        """The connection's socket while the guard still counts it, else None."""
        return connection.sock if self._open.get(connection.sock) is connection else None

    def _close(self, sock: socket.socket) -> None:
        connection = self._forget(sock)
        if connection is None:
            return
        self._closing += 1  # its descriptor is still open: counted until the loop closes it
        if connection.transport is not None:
            connection.transport.abort()  # its socket is closed by a callback at the next turn...
            asyncio.get_running_loop().call_soon(self._closed)  # ...which runs before this one
            return
        # Still in its TLS handshake, which would hold the descriptor until request_timeout:
        # end the handshake now; _connect counts the connection closed when it fails.
        connection.ended = True
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _closed(self) -> None:
        self._closing -= 1

    def _forget(self, sock: socket.socket) -> _Connection | None:
        connection = self._open.pop(sock, None)
        if connection is None:
            return None
        if connection.timer is not None:
            connection.timer.cancel()
        self._per_address[connection.address] -= 1
        if not self._per_address[connection.address]:
            del self._per_address[connection.address]
        self.metrics.connections.set(len(self._open))
        return connection

    def attach(self, server: web.Server) -> None:
        """Forget a connection when aiohttp sees it closed (by the client or by dnsapi)."""
        lost = server.connection_lost

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            connection = self._by_handler.pop(handler, None)
            if connection is not None:
                sock = self._socket_of(connection)
                if sock is not None:
                    self._forget(sock)
            lost(handler, exc)

        server.connection_lost = connection_lost  # type: ignore[method-assign]


class _Listener:
    """What aiohttp's runner expects of a site's server: `sockets` and `close()`."""

    def __init__(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self.sockets = [sock]
        self._task = task

    def close(self) -> None:
        """Stop accepting; the socket closes once the accept loop has ended. Closed at once, its
        descriptor could be reused (by a `wait`'s DNS socket, say) before the cancelled accept
        unregisters it from the event loop, which then fails on the new socket's descriptor."""
        self._task.cancel()
        self._task.add_done_callback(lambda _: self.sockets[0].close())


class GuardedSite(web.BaseSite):
    """An aiohttp TCP site whose accept loop is ConnectionGuard.serve."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=BACKLOG)
        self.host, self.port, self.guard = host, port, guard

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._ssl_context else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        await super().start()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.create_server((self.host, self.port), family=family, backlog=BACKLOG)
        listener.setblocking(False)
        server = self._runner.server
        assert server is not None
        self.guard.attach(server)
        task = asyncio.get_running_loop().create_task(
            self.guard.serve(listener, server, self._ssl_context))
        self._server = _Listener(listener, task)  # type: ignore[assignment]
