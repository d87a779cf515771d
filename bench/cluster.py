"""dnsapi on a three-node OpenBao raft cluster beside the same on a dev server, in one run.

The dev server keeps everything in memory; a raft cluster writes each change to disk on every
node (fsync) and replicates it before it answers. This measures what that costs dnsapi: the
same acknowledged adds/s at concurrency 1, 16 and 64 as bench/compare.py, one add at
concurrency 1 beside the bare Vault write it needs (direct, and through bench/relay.py) and
beside bench/floor_server.py, and add → answered by CoreDNS. The
cluster is tests/cluster.py's (deploy/vault/openbao-raft.hcl on loopback, no TLS); dnsapi
gets all three addresses. Prints a markdown table and writes bench/cluster.json.

    python3 bench/cluster.py [--reps N] [--out FILE]
    python3 bench/cluster.py --smoke --out FILE   # every path once, tiny samples (the tests run it)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import requests
from compare import FULL, SMOKE, Scale, c1_latency_ms, visible_ms
from throughput import adds_per_second, unlimited

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.*
from tests.cluster import raft_cluster
from tests.helpers import Stack, local_stack, start_stack

RESULTS = Path(__file__).resolve().parent / "cluster.json"


def measure(stack: Stack, reps: int, tmp: Path, scale: Scale) -> dict:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {stack.token}"

    def add(fqdn: str, value: str) -> None:
        session.post(f"{stack.url}/v1/records", json={"fqdn": fqdn, "value": value},
                     timeout=30).raise_for_status()

    rates = {f"c{c}": round(statistics.median(adds_per_second(stack.url, stack.token, c, n, f"c{c}r{r}")
                                              for r in range(reps)))
             for c, n in scale.levels}
    one = c1_latency_ms(stack, session, tmp, scale.latency)
    return {"adds_per_s": rates, "vault_write_ms": one.write, "relayed_vault_write_ms": one.relayed,
            "add_ms": one.add, "floor_ms": one.floor,
            "visible_ms": visible_ms(add, stack.dns_port, "cluster", scale.visible)}


def on_cluster(tmp: Path, reps: int, scale: Scale) -> dict:
    with raft_cluster(tmp / "cluster") as cluster:
        def edit(config: dict) -> None:
            unlimited(config)
            config["vault"]["addr"] = cluster.addrs
        stack = start_stack(tmp / "raft", cluster.vault(), edit=edit, prefix="dnsapi")
        try:
            return measure(stack, reps, tmp, scale)
        finally:
            stack.stop()


def on_dev_server(tmp: Path, reps: int, scale: Scale) -> dict:
    with local_stack(tmp / "dev", unlimited) as stack:
        return measure(stack, reps, tmp, scale)


def table(results: dict[str, dict]) -> str:
    def row(label: str, cell: Callable[[dict], str]) -> str:
        return f"| {label} | {cell(results['dev'])} | {cell(results['raft'])} |"

    lines = ["| measure | dev server (memory) | 3-node raft (fsync on every node) |", "|---|---|---|"]
    for c in ("c1", "c16", "c64"):
        lines.append(row(f"acknowledged adds/s, concurrency {c[1:]}", lambda r, c=c: f"{r['adds_per_s'][c]}"))
    lines.append(row("the Vault write an add needs, p50 / p99",
                     lambda r: f"{r['vault_write_ms']['p50']:.1f} / {r['vault_write_ms']['p99']:.1f} ms"))
    lines.append(row("one add at concurrency 1, p50 / p99",
                     lambda r: f"{r['add_ms']['p50']:.1f} / {r['add_ms']['p99']:.1f} ms"))
    lines.append(row("the same through an aiohttp service doing only the write, p50 / p99",
                     lambda r: f"{r['floor_ms']['p50']:.1f} / {r['floor_ms']['p99']:.1f} ms"))
    lines.append(row("the write through a byte relay, no HTTP (bench/relay.py), p50 / p99",
                     lambda r: f"{r['relayed_vault_write_ms']['p50']:.1f} / "
                               f"{r['relayed_vault_write_ms']['p99']:.1f} ms"))
    lines.append(row("one add's p50 ÷ the write's (the floor's; the relayed write's)",
                     lambda r: f"{r['add_ms']['p50'] / r['vault_write_ms']['p50']:.2f}× "
                               f"({r['floor_ms']['p50'] / r['vault_write_ms']['p50']:.2f}×; "
                               f"{r['relayed_vault_write_ms']['p50'] / r['vault_write_ms']['p50']:.2f}×)"))
    lines.append(row("add → answered by CoreDNS, p50 / p99",
                     lambda r: f"{r['visible_ms']['p50']:.0f} / {r['visible_ms']['p99']:.0f} ms"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="adds/s runs per level; the median")
    parser.add_argument("--smoke", action="store_true",
                        help="every measure once with tiny samples, to check the script runs; "
                             "needs --out, so its figures never replace the real ones")
    parser.add_argument("--out", type=Path, default=RESULTS, metavar="FILE",
                        help="where to write the results (default bench/cluster.json)")
    args = parser.parse_args()
    if args.smoke and args.out == RESULTS:
        parser.error("--smoke needs --out FILE: its figures must not replace bench/cluster.json")
    scale, reps = (SMOKE, 1) if args.smoke else (FULL, args.reps)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        results = {"dev": on_dev_server(tmp, reps, scale), "raft": on_cluster(tmp, reps, scale)}
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
