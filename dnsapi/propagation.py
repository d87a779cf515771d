"""Wait until the authoritative DNS servers answer a new TXT value.

ACME clients normally guess at propagation: acme.sh sleeps and then asks public DoH resolvers,
which can never see an internal zone. dnsapi knows which servers serve its zones (`dns_servers`),
so an add can return only once each of them answers the value; the caller then skips its own
check (acme.sh `--dnssleep 0`, lego `--dns.disable-cp`).
"""

from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype

from .errors import PropagationTimeout

POLL_INTERVAL = 0.05
QUERY_TIMEOUT = 1.0


async def serves(server: tuple[str, int], fqdn: str, value: str) -> bool:
    """Does `server` answer `value` among the TXT records at `fqdn` right now?"""
    query = dns.message.make_query(fqdn + ".", dns.rdatatype.TXT)
    try:
        response, _ = await dns.asyncquery.udp_with_fallback(query, server[0], port=server[1],
                                                             timeout=QUERY_TIMEOUT)
    except (dns.exception.DNSException, OSError):
        return False
    wanted = value.encode("ascii")
    return any(b"".join(rdata.strings) == wanted
               for rrset in response.answer if rrset.rdtype == dns.rdatatype.TXT
               for rdata in rrset)


async def served_serial(server: tuple[str, int], zone: str) -> int | None:
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


async def wait_until_served(servers: tuple[tuple[str, int], ...], fqdn: str, value: str,
                            timeout: float) -> float:
    """Poll every server until each answers the value; returns the seconds waited.

    Raises PropagationTimeout naming the servers that still do not answer it.
    """
    start = time.monotonic()
    pending = sorted(set(servers))
    while pending:
        results = await asyncio.gather(*(serves(s, fqdn, value) for s in pending))
        pending = [s for s, ok in zip(pending, results, strict=True) if not ok]
        if not pending:
            break
        if time.monotonic() - start >= timeout:
            names = ", ".join(f"{host}:{port}" for host, port in pending)
            raise PropagationTimeout(f"{fqdn} TXT {value!r} was stored, but {names} did not "
                                     f"answer it within {timeout:g}s")
        await asyncio.sleep(POLL_INTERVAL)
    return time.monotonic() - start
