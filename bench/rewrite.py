"""Time of one zone rewrite (ZoneFile.sync) for operator zones of 1k, 10k and 100k lines.

Each rewrite changes one challenge record among 100, so it is the cost every batch pays: read
the file, render the block, bump the serial, validate, fsync and rename. Prints a markdown table
and JSON (milliseconds, median of the runs).

    python3 bench/rewrite.py [--runs 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import time
from pathlib import Path

from dnsapi.records import Record
from dnsapi.zonefile import ZoneFile

HEADER = """$TTL 300
@ IN SOA ns1.dev.local. hostmaster.dev.local. ( 2026010100 3600 600 86400 60 )
  IN NS ns1.dev.local.
ns1 IN A 127.0.0.1
"""


def operator_zone(lines: int) -> str:
    hosts = [f"host{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(lines - 4)]
    return HEADER + "\n".join(hosts) + "\n"


def measure(runs: int) -> dict[str, float]:
    """Median milliseconds of one rewrite, per zone size."""
    today = dt.date(2026, 11, 28)
    challenges = [Record(f"_acme-challenge.h{i}.dev.local", f"value{i:03d}", 60, 0.0) for i in range(100)]
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, lines in (("1k", 1_000), ("10k", 10_000), ("100k", 100_000)):
            path = Path(tmp) / f"db.{label}"
            path.write_text(operator_zone(lines))
            zone = ZoneFile(path, "dev.local")
            zone.sync(challenges, today)  # first write adds the block
            times = []
            for run in range(runs):
                changed = challenges[:-1] + [Record(challenges[-1].fqdn, f"changed{run}", 60, 0.0)]
                start = time.perf_counter()
                assert zone.sync(changed, today) is not None
                times.append((time.perf_counter() - start) * 1000)
            figures[label] = statistics.median(times)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    figures = measure(parser.parse_args().runs)
    print("| zone lines | one rewrite (median) |")
    print("|---|---|")
    for label, ms in figures.items():
        print(f"| {label} | {ms:.1f} ms |")
    print(json.dumps({"rewrite_ms": figures}))


if __name__ == "__main__":
    main()
