"""Keep slow, idle and excess connections from taking the HTTP API down.

An unauthenticated client can open a connection, send half a request line and wait; a thousand
such connections used to exhaust the process's descriptors, so real clients timed out and asyncio
logged a traceback for every failed accept. The guard bounds what a connection may hold:

- a request's headers must arrive within `request_timeout` of the connection opening (or of the
  previous response): the clock is not reset by a trickle of bytes; its body has the same bound
  (see api.read_body);
- an idle keep-alive connection is closed after `keepalive_timeout`;
- at most `max_connections_per_address` connections per source address: the excess is refused
  at once;
- at most `max_connections` in all, kept below the descriptor limit: a new connection then
  displaces the oldest connection that has no request in progress, so a flood of idle
  connections cannot lock out a client that sends its request promptly.

aiohttp has no hook for admitting connections, so the guard wraps the server's
connection_made/connection_lost (`attach`); requests mark their connection busy through the
request middleware (`busy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .config import HttpLimits
from .metrics import Metrics

log = logging.getLogger(__name__)

DESCRIPTOR_RESERVE = 100  # descriptors kept for zone files, Vault and DNS sockets, logs
ACCEPT_LOG_INTERVAL = 60.0  # at most one log line per this long about failed accepts


@dataclass(eq=False)
class _Connection:
    handler: RequestHandler
    transport: asyncio.Transport
    address: str
    opened: float = field(default_factory=time.monotonic)
    busy: int = 0  # requests of this connection inside dnsapi's handlers
    timer: asyncio.TimerHandle | None = None


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
        self._open: dict[RequestHandler, _Connection] = {}  # in admission order
        self._per_address: Tally[str] = Tally()

    def attach(self, server: web.Server) -> None:
        """Admit every connection `server` makes through the guard."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._admit(handler, transport)

        def connection_lost(handler: RequestHandler, exc: BaseException | None = None) -> None:
            self._forget(handler)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def _admit(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else "unknown"
        if self._per_address[address] >= self.limits.max_connections_per_address:
            self._refuse(transport, "per_address")
            return
        if len(self._open) >= self.max_connections and not self._displace_idle():
            self._refuse(transport, "total")
            return
        connection = _Connection(handler, transport, address)
        self._open[handler] = connection
        self._per_address[address] += 1
        self.metrics.connections.set(len(self._open))
        self._arm(connection, self.limits.request_timeout)

    def _refuse(self, transport: asyncio.Transport, reason: str) -> None:
        self.metrics.connections_refused.labels(reason).inc()
        transport.abort()  # a reset: no response to write, nothing buffered

    def _displace_idle(self) -> bool:
        """Close the oldest connection with no request in progress; False if every one is busy."""
        for connection in self._open.values():
            if not connection.busy:
                self.metrics.connections_closed.labels("displaced").inc()
                self._close(connection)
                return True
        return False

    def _is_open(self, connection: _Connection) -> bool:
        return self._open.get(connection.handler) is connection

    def _forget(self, handler: RequestHandler) -> None:
        connection = self._open.pop(handler, None)
        if connection is None:
            return
        if connection.timer is not None:
            connection.timer.cancel()
        self._per_address[connection.address] -= 1
        if not self._per_address[connection.address]:
            del self._per_address[connection.address]
        self.metrics.connections.set(len(self._open))

    def _close(self, connection: _Connection) -> None:
        self._forget(connection.handler)
        connection.transport.abort()

    def _arm(self, connection: _Connection, seconds: float) -> None:
        """Close the connection in `seconds` unless a request has reached dnsapi by then."""
        if connection.timer is not None:
            connection.timer.cancel()
        loop = asyncio.get_running_loop()
        connection.timer = loop.call_later(seconds, self._expire, connection)

    def _expire(self, connection: _Connection) -> None:
        if self._is_open(connection) and not connection.busy:
            self.metrics.connections_closed.labels("timeout").inc()
            self._close(connection)

    @contextlib.contextmanager
    def busy(self, request: web.BaseRequest) -> Iterator[None]:
        """While a request is in dnsapi's handlers its connection has no deadline; afterwards
        the connection may idle for keepalive_timeout, within which the next request's headers
        must have arrived too."""
        connection = self._open.get(request.protocol)  # type: ignore[arg-type]
        if connection is None:
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
            if not connection.busy and self._is_open(connection):
                self._arm(connection, min(self.limits.keepalive_timeout,
                                          self.limits.request_timeout))


class AcceptErrors:
    """A loop exception handler that counts failed accepts (out of descriptors, mostly) in a
    metric and logs them at most once a minute; asyncio would log a traceback for each."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._logged_at = -ACCEPT_LOG_INTERVAL
        self._unlogged = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if not message.startswith("socket.accept() out of system resource"):
            loop.default_exception_handler(context)
            return
        self.metrics.accept_errors.inc()
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= ACCEPT_LOG_INTERVAL:
            error = context.get("exception")
            log.warning("could not accept %d connection(s): %s (raise LimitNOFILE or lower "
                        "http.max_connections)", self._unlogged, error or message)
            self._logged_at, self._unlogged = now, 0
