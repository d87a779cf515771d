"""Wait until the authoritative DNS servers answer a new TXT value.

ACME clients normally guess at propagation: acme.sh sleeps and then asks public DoH resolvers,
which can never see an internal zone. dnsapi knows which servers serve its zones (`dns_servers`),
so an add can return only once each of them answers the value; the caller then skips its own
check (acme.sh `--dnssleep 0`, lego `--dns.disable-cp`).

Waiting costs dnsapi queries and sockets, and any token holder can ask for it, so it is bounded:
every wait for one name shares one poll (one UDP socket per server, reused), polls back off, the
number of waits is capped per token and in all, and a wait ends when its client goes away (the
request handler is cancelled on disconnect; see server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import Iterator

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype

from .config import WaitLimits
from .errors import Busy, PropagationTimeout, TooManyRequests
from .metrics import Metrics

FIRST_INTERVAL = 0.01  # poll again this soon at first (CoreDNS reloads within its `reload` tick)...
MAX_INTERVAL = 0.5  # ...backing off to this
BACKOFF = 1.5
QUERY_TIMEOUT = 1.0

Server = tuple[str, int]


async def served_serial(server: Server, zone: str) -> int | None:
    """The SOA serial `server` answers for `zone`, or None if it does not answer one."""
    query = dns.message.make_query(zone + ".", dns.rdatatype.SOA)
    try:
        response = await dns.asyncquery.udp(query, server[0], port=server[1], timeout=QUERY_TIMEOUT)
    except (dns.exception.DNSException, OSError):
        return None
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.SOA:
            return int(rrset[0].serial)
    return None


class _Poll:
    """One name polled on every server until no wait wants it any more."""

    def __init__(self, fqdn: str, servers: tuple[Server, ...]) -> None:
        self.fqdn = fqdn
        self.servers = servers
        self.wanted: dict[asyncio.Future[None], str] = {}  # waiter -> value
        self.answered: dict[Server, set[str]] = {}  # the last answer of each server
        self.interval = FIRST_INTERVAL
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def want(self, value: str) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.wanted[waiter] = value
        self.interval = FIRST_INTERVAL  # a new value is likely served soon
        self.wakeup.set()
        return waiter

    def pending(self, value: str) -> list[Server]:
        return [s for s in self.servers if value not in self.answered.get(s, set())]

    async def run(self) -> None:
        backend = dns.asyncbackend.get_default_backend()
        sockets: dict[Server, dns.asyncbackend.DatagramSocket] = {}
        try:
            for server in self.servers:
                family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
                sockets[server] = await backend.make_socket(family, socket.SOCK_DGRAM)
            while self.wanted:
                answers = await asyncio.gather(*(self._ask(s, sockets[s]) for s in self.servers))
                self.answered = dict(zip(self.servers, answers, strict=True))
                for waiter, value in list(self.wanted.items()):
                    if not waiter.done() and not self.pending(value):
                        waiter.set_result(None)
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), self.interval)
                self.interval = min(self.interval * BACKOFF, MAX_INTERVAL)
        finally:
            for sock in sockets.values():
                await sock.close()

    async def _ask(self, server: Server, sock: dns.asyncbackend.DatagramSocket) -> set[str]:
        """The TXT values `server` answers at the name now (none if it does not answer)."""
        query = dns.message.make_query(self.fqdn + ".", dns.rdatatype.TXT)
        try:
            response, _ = await dns.asyncquery.udp_with_fallback(
                query, server[0], port=server[1], timeout=QUERY_TIMEOUT, udp_sock=sock,
                ignore_unexpected=True)
        except (dns.exception.DNSException, OSError):
            return set()
        return {b"".join(rdata.strings).decode("ascii", "replace")
                for rrset in response.answer if rrset.rdtype == dns.rdatatype.TXT for rdata in rrset}


class Waits:
    """The `wait` requests in progress: their limits and their shared polls."""

    def __init__(self, servers: tuple[Server, ...], limits: WaitLimits, metrics: Metrics) -> None:
        self.servers = servers
        self.limits = limits
        self.metrics = metrics
        self._polls: dict[str, _Poll] = {}
        self._per_token: Counter[str] = Counter()

    @contextlib.contextmanager
    def slot(self, token: str) -> Iterator[None]:
        """Hold one of `token`'s waits, or refuse before anything is changed."""
        if sum(self._per_token.values()) >= self.limits.total:
            self.metrics.waits_refused.inc()
            raise Busy(f"{self.limits.total} requests are waiting for DNS already; retry shortly "
                       "or add without wait", retry_after=1.0)
        if self._per_token[token] >= self.limits.per_token:
            self.metrics.waits_refused.inc()
            raise TooManyRequests(f"token {token!r} has {self.limits.per_token} requests waiting "
                                  "for DNS already", 1.0, "too_many_waits")
        self._per_token[token] += 1
        try:
            yield
        finally:
            self._per_token[token] -= 1
            if not self._per_token[token]:
                del self._per_token[token]

    async def served(self, fqdn: str, value: str, timeout: float) -> float:
        """Wait until every server answers `value` at `fqdn`; the seconds it took. Raises
        PropagationTimeout naming the servers that still do not answer it."""
        start = time.monotonic()
        if not self.servers:
            return 0.0
        poll = self._polls.get(fqdn)
        if poll is None:
            poll = self._polls[fqdn] = _Poll(fqdn, self.servers)
            poll.task = asyncio.create_task(poll.run(), name=f"poll:{fqdn}")
            self.metrics.waits.set(len(self._polls))
        waiter = poll.want(value)
        try:
            await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            names = ", ".join(f"{host}:{port}" for host, port in poll.pending(value))
            raise PropagationTimeout(f"{fqdn} TXT {value!r} was stored, but {names} did not "
                                     f"answer it within {timeout:g}s") from None
        finally:
            del poll.wanted[waiter]
            if not poll.wanted:
                self._end(poll)
        return time.monotonic() - start

    def _end(self, poll: _Poll) -> None:
        if self._polls.get(poll.fqdn) is poll:
            del self._polls[poll.fqdn]
        if poll.task is not None:
            poll.task.cancel()
        self.metrics.waits.set(len(self._polls))
