"""How long from an add to the secondaries answering it (primary NOTIFY → secondary AXFR).

Starts a private OpenBao dev server, dnsapi with the shipped primary Corefile
(coredns/Corefile.primary, `reload 250ms`) and S secondary CoreDNS servers
(coredns/Corefile.secondary) on free loopback ports, dnsapi's `dns_servers` listing all of them.
Then N adds without `wait`, each timed from the POST until (a) the POST is acknowledged, (b) the
primary answers the value, (c) every secondary answers it (polling every 5 ms); and N adds with
`"wait": true`, timed until the POST returns (dnsapi's own wait, covering the secondaries).
Prints a markdown table and JSON. Figures, not a test.

    python3 bench/secondaries.py [-n 30] [-s 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root
from bench.visibility import percentile, served
from tests.helpers import openbao_server, stack_with_secondaries


def figures(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values) * 1000, "p99": percentile(values, 99) * 1000,
            "max": max(values) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=30, help="adds per kind (default 30, at least 20)")
    parser.add_argument("-s", type=int, default=2, help="secondaries (default 2)")
    args = parser.parse_args()
    if args.n < 20:
        parser.error("-n: at least 20 adds, for a p99 worth printing")
    with tempfile.TemporaryDirectory() as tmp, openbao_server(Path(tmp) / "openbao") as vault, \
            stack_with_secondaries(Path(tmp), vault, args.s) as (stack, secondaries):
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {stack.token}"
        acked, primary, all_secondaries, waited = [], [], [], []
        for i in range(args.n):
            fqdn, value = f"_acme-challenge.host{i}.dev.local", f"bench-value-{i:04d}"
            start = time.perf_counter()
            session.post(f"{stack.url}/v1/records", json={"fqdn": fqdn, "value": value},
                         timeout=30).raise_for_status()
            acked.append(time.perf_counter() - start)
            pending = [stack.dns_port, *secondaries]
            while pending:
                if time.perf_counter() - start > 30:
                    raise SystemExit(f"{fqdn} not served by 127.0.0.1:{pending} after 30 s")
                for port in [p for p in pending if served(p, fqdn, value)]:
                    pending.remove(port)
                    if port == stack.dns_port:
                        primary.append(time.perf_counter() - start)
                if pending:
                    time.sleep(0.005)
            all_secondaries.append(time.perf_counter() - start)
            # a random gap, so adds land at every phase of the primary's reload ticker
            time.sleep(random.uniform(0, 0.3))
        for i in range(args.n):
            fqdn, value = f"_acme-challenge.waited{i}.dev.local", f"bench-waited-{i:04d}"
            start = time.perf_counter()
            session.post(f"{stack.url}/v1/records", json={"fqdn": fqdn, "value": value, "wait": True},
                         timeout=60).raise_for_status()
            waited.append(time.perf_counter() - start)
            time.sleep(random.uniform(0, 0.3))
    result = {"adds": args.n, "secondaries": args.s, "ack_ms": figures(acked),
              "primary_ms": figures(primary), "secondaries_ms": figures(all_secondaries),
              "wait_true_ms": figures(waited)}
    print(f"| {args.n} adds each, {args.s} secondaries, primary `reload 250ms` | p50 | p99 | max |")
    print("|---|---|---|---|")
    for label, key in (("POST acknowledged (Vault + zone file)", "ack_ms"),
                       ("add → answered by the primary", "primary_ms"),
                       ("add → answered by every secondary", "secondaries_ms"),
                       ('add with `"wait": true` → answer (covers the secondaries)', "wait_true_ms")):
        row = result[key]
        assert isinstance(row, dict)
        print(f"| {label} | {row['p50']:.0f} ms | {row['p99']:.0f} ms | {row['max']:.0f} ms |")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
