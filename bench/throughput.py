"""Acknowledged adds per second through dnsapi's HTTP API at concurrency 1, 16 and 64.

Starts a private OpenBao dev server, CoreDNS and dnsapi on free loopback ports (rate limit off),
then sends N adds per concurrency level; every add must be answered 201, i.e. stored in Vault
and written to the zone file. Like an ACME client that cleans up after itself, each level's
records are then removed (not timed), so every level starts from the operator's zone alone.
bench/compare.py runs the same load side by side with RFC 2136 updates to BIND.

The load generator has to cost far less than what it measures, on a machine it shares with the
servers: the requests are made into bytes before the clock starts and sent on kept-alive
connections, one per worker, with the answers read by hand. (aiohttp's client spent about as
much CPU per request as dnsapi did answering it.)

    python3 bench/throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.helpers
from tests.helpers import local_stack

LEVELS = ((1, 300), (16, 1000), (64, 2000))
NAMES = 50  # the adds go to this many challenge names, round robin


def bodies(tag: str, count: int) -> list[dict[str, str]]:
    return [{"fqdn": f"_acme-challenge.h{i % NAMES}.dev.local", "value": f"{tag}-{i:06d}"}
            for i in range(count)]


async def send_all(url: str, token: str, method: str, concurrency: int,
                   requests: list[dict[str, str]], expect: int) -> float:
    """Send every request with at most `concurrency` in flight, each worker on a kept-alive
    connection of its own; the rate of answered ones. Any other status than `expect` stops the
    run."""
    address = urlsplit(url)
    host, port = address.hostname or "127.0.0.1", address.port or 80
    wires = iter([_request(method, f"{host}:{port}", token, body) for body in requests])

    async def worker() -> None:
        connection = None
        try:
            for wire in wires:
                connection = connection or await asyncio.open_connection(host, port)
                connection[1].write(wire)
                status, body, kept = await _response(connection[0])
                if status != expect:
                    raise SystemExit(f"{method} failed: HTTP {status} {body[:500]!r}")
                if not kept:
                    connection[1].close()
                    connection = None
        finally:
            if connection is not None:
                connection[1].close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(requests)))))
    return len(requests) / (time.perf_counter() - start)


def _request(method: str, host: str, token: str, body: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    return (f"{method} /v1/records HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body and whether the connection stays open, of one HTTP/1.1 response that
    carries a Content-Length (as every dnsapi answer does)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split(" ", 2)[1]), body, headers.get("connection") != "close"


def adds_per_second(url: str, token: str, concurrency: int, count: int, tag: str) -> float:
    """Rate of `count` adds at `concurrency`; the records are removed again afterwards."""
    added = bodies(tag, count)
    rate = asyncio.run(send_all(url, token, "POST", concurrency, added, 201))
    asyncio.run(send_all(url, token, "DELETE", 64, added, 200))
    return rate


def unlimited(config: dict) -> None:
    """The stack's config edit for load: no rate limit, room for every record of a run."""
    config["rate_limit"] = {"per_second": 0}
    config["max_records_per_zone"] = config["max_records_per_token"] = 10_000


def main() -> None:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp), unlimited) as stack:
        results = {f"c{c}": adds_per_second(stack.url, stack.token, c, n, f"c{c}")
                   for c, n in LEVELS}
    print("| concurrency | acknowledged adds/s |")
    print("|---|---|")
    for level, rate in results.items():
        print(f"| {level[1:]} | {rate:.0f} |")
    print(json.dumps({"adds_per_s": {"dnsapi": {k: round(v) for k, v in results.items()}}}))


if __name__ == "__main__":
    main()
