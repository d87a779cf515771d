"""Print the dnsapi vs BIND table of bench/README.md from bench/results.json.

    python3 bench/table.py [RESULTS_JSON]

bench/compare.py writes results.json at the end of each run; this prints the same table it
printed, then the targets checked against those figures (compare.targets). Nothing is measured.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from compare import per_level, targets


def table(results: dict) -> str:
    a, v, i = results["adds_per_s"], results["visible_ms"], results["issuance_s"]
    runs = len(results["issuance_runs_s"]["dnsapi"])
    lines = ["| measure | dnsapi | BIND (RFC 2136) |", "|---|---|---|"]
    for c in ("c1", "c16", "c64"):
        lines.append(f"| acknowledged adds/s, concurrency {c[1:]} | {a['dnsapi'][c]:.0f} "
                     f"| {a['bind'][c]:.0f} |")
    if "bind_udp" in a:
        lines.append(f"| acknowledged RFC 2136 UPDATEs/s (UDP), concurrency 1 / 16 / 64 | "
                     f"{per_level(a['dnsapi_rfc2136'])} | {per_level(a['bind_udp'])} |")
    for p in ("p50", "p99"):
        lines.append(f"| add → answered, {p} | {v['dnsapi'][p]:.0f} ms | {v['bind'][p]:.1f} ms |")
    lines.append(f"| lego apex + wildcard issuance (mean of {runs}) | {i['dnsapi']:.1f} s "
                 f"| {i['bind']:.1f} s |")
    lines.append(f"| RSS, 10k operator + 1k challenge records | {results['rss_mb']['dnsapi']:.0f} MB | |")
    for size, ms in results["rewrite_ms"].items():
        lines.append(f"| one zone rewrite, {size} lines | {ms:.1f} ms | |")
    return "\n".join(lines)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results.json"
    results = json.loads(path.read_text())
    print(f"Machine: {results['machine']}, {results['date']}\n")
    print(table(results))
    print("\nTargets:\n" + "\n".join(targets(results)))


if __name__ == "__main__":
    main()
