"""How long from a POST to CoreDNS answering the TXT record, with the shipped Corefile.

Starts a private OpenBao dev server, CoreDNS and dnsapi on free loopback ports (the same way as
`dnsapi dev`), then for each of N adds measures (a) the time until the POST is acknowledged
(Vault has the record and the zone file is rewritten) and (b) the time until CoreDNS answers
the new value. Polling every 5 ms. Prints a markdown table and JSON.

    python3 bench/visibility.py [-n 30]
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

import dns.message
import dns.query
import dns.rdatatype
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.helpers
from tests.helpers import local_stack


def served(port: int, fqdn: str, value: str) -> bool:
    response = dns.query.udp(dns.message.make_query(fqdn + ".", dns.rdatatype.TXT),
                             "127.0.0.1", port=port, timeout=1)
    return any(b"".join(rd.strings).decode() == value
               for rrset in response.answer if rrset.rdtype == dns.rdatatype.TXT for rd in rrset)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=30, help="number of adds (default 30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, local_stack(Path(tmp)) as stack:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {stack.token}"
        acked, visible = [], []
        for i in range(args.n):
            fqdn, value = f"_acme-challenge.host{i}.dev.local", f"bench-value-{i:04d}"
            start = time.perf_counter()
            response = session.post(f"{stack.url}/v1/records", json={"fqdn": fqdn, "value": value},
                                    timeout=30)
            response.raise_for_status()
            acked.append(time.perf_counter() - start)
            while not served(stack.dns_port, fqdn, value):
                if time.perf_counter() - start > 10:
                    raise SystemExit(f"{fqdn} not served after 10 s")
                time.sleep(0.005)
            visible.append(time.perf_counter() - start)
            # a random gap, so adds land at every phase of CoreDNS's reload ticker instead of
            # locking onto one
            time.sleep(random.uniform(0, 0.3))
    corefile = Path(__file__).resolve().parent.parent / "coredns" / "Corefile"
    reload_line = next(line.strip() for line in corefile.read_text().splitlines()
                       if line.strip().startswith("reload"))
    figures = {
        "adds": args.n,
        "corefile": reload_line,
        "ack_ms": {"p50": statistics.median(acked) * 1000, "p99": percentile(acked, 99) * 1000},
        "visible_ms": {"p50": statistics.median(visible) * 1000, "p90": percentile(visible, 90) * 1000,
                       "max": max(visible) * 1000},
    }
    print(f"| {args.n} adds, `{reload_line}` | p50 | p90/p99 | max |")
    print("|---|---|---|---|")
    print(f"| POST acknowledged (Vault + zone file) | {figures['ack_ms']['p50']:.1f} ms | "
          f"{figures['ack_ms']['p99']:.1f} ms (p99) | |")
    print(f"| POST → answered by CoreDNS | {figures['visible_ms']['p50']:.0f} ms | "
          f"{figures['visible_ms']['p90']:.0f} ms (p90) | {figures['visible_ms']['max']:.0f} ms |")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
