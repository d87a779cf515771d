"""Print the dnsapi vs BIND table of bench/README.md from bench/results.json.

    python3 bench/table.py [RESULTS_JSON]

bench/compare.py writes results.json at the end of each run; this prints the same table it
printed, where one add's time goes, then the targets checked against those figures
(compare.targets). Nothing is measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compare import breakdown, table, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path,
                        default=Path(__file__).resolve().parent / "results.json",
                        help="the results file (default: bench/results.json)")
    results = json.loads(parser.parse_args().results.read_text())
    print(f"Machine: {results['machine']}, {results['date']}\n")
    print(table(results))
    if "add_breakdown_ms" in results:
        print("\n" + breakdown(results))
    print("\nTargets:\n" + "\n".join(targets(results)))


if __name__ == "__main__":
    main()
