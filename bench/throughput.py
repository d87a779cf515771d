"""Acknowledged adds per second through dnsapi's HTTP API at concurrency 1, 16 and 64.

Starts a private OpenBao dev server, CoreDNS and dnsapi on free loopback ports (rate limit off),
then sends N adds per concurrency level; every add must be answered 201, i.e. stored in Vault
and written to the zone file. Records accumulate across levels in one zone, as they would under
a burst of ACME orders. Prints a markdown table and JSON. (The side-by-side comparison with
RFC 2136 updates to BIND is still to be built: issue 7.)

    python3 bench/throughput.py
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp

from dnsapi.devstack import local_stack

LEVELS = ((1, 300), (16, 1000), (64, 2000))


async def adds_per_second(url: str, token: str, concurrency: int, count: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async def add(i: int) -> None:
            body = {"fqdn": f"_acme-challenge.h{i % 50}.dev.local", "value": f"c{concurrency}-{i:06d}"}
            async with gate, session.post(f"{url}/v1/records", json=body) as response:
                if response.status != 201:
                    raise SystemExit(f"add failed: HTTP {response.status} {await response.text()}")
        start = time.perf_counter()
        await asyncio.gather(*(add(i) for i in range(count)))
        return count / (time.perf_counter() - start)


def main() -> None:
    def unlimited(config: dict) -> None:
        config["rate_limit"] = {"per_second": 0}
        config["max_records_per_zone"] = 10_000

    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp), unlimited) as stack:
        results = {f"c{c}": asyncio.run(adds_per_second(stack.api_url, stack.api_token, c, n))
                   for c, n in LEVELS}
    print("| concurrency | acknowledged adds/s |")
    print("|---|---|")
    for level, rate in results.items():
        print(f"| {level[1:]} | {rate:.0f} |")
    print(json.dumps({"adds_per_s": {"dnsapi": {k: round(v) for k, v in results.items()}}}))


if __name__ == "__main__":
    main()
