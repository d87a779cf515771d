"""Acknowledged adds per second through dnsapi's HTTP API at concurrency 1, 16 and 64.

Starts a private OpenBao dev server, CoreDNS and dnsapi on free loopback ports (rate limit off),
then sends N adds per concurrency level; every add must be answered 201, i.e. stored in Vault
and written to the zone file. Like an ACME client that cleans up after itself, each level's
records are then removed (not timed), so every level starts from the operator's zone alone.
bench/compare.py runs the same load side by side with RFC 2136 updates to BIND.

    python3 bench/throughput.py
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.helpers
from tests.helpers import local_stack

LEVELS = ((1, 300), (16, 1000), (64, 2000))
NAMES = 50  # the adds go to this many challenge names, round robin


def bodies(tag: str, count: int) -> list[dict[str, str]]:
    return [{"fqdn": f"_acme-challenge.h{i % NAMES}.dev.local", "value": f"{tag}-{i:06d}"}
            for i in range(count)]


async def send_all(url: str, token: str, method: str, concurrency: int,
                   requests: list[dict[str, str]], expect: int) -> float:
    """Send every request with at most `concurrency` in flight; the rate of answered ones."""
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async def one(body: dict[str, str]) -> None:
            async with gate, session.request(method, f"{url}/v1/records", json=body) as response:
                if response.status != expect:
                    raise SystemExit(f"{method} failed: HTTP {response.status} {await response.text()}")
        start = time.perf_counter()
        await asyncio.gather(*(one(body) for body in requests))
        return len(requests) / (time.perf_counter() - start)


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
