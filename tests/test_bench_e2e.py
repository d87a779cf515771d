"""The benchmark scripts still run: `bench/compare.py` and `bench/cluster.py` with --smoke (every
measure once, tiny samples) end to end, to a results file of the test's own. Their figures are
not checked here (bench/README.md has the real ones); that they are all produced is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def smoke(script: str, out: Path) -> str:
    result = subprocess.run([sys.executable, f"bench/{script}", "--smoke", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_compare_runs_every_measure_and_checks_every_target(tmp_path):
    stdout = smoke("compare.py", tmp_path / "results.json")
    results = json.loads((tmp_path / "results.json").read_text())
    committed = json.loads((ROOT / "bench" / "results.json").read_text())
    assert set(results) == set(committed)  # every key the committed run has
    assert set(results["add_ms"]) == {"dnsapi", "floor"}
    targets = stdout.split("Targets:\n", 1)[1].splitlines()
    assert sum(line.startswith(("- met:", "- MISSED:")) for line in targets) == 9, stdout[-1500:]


def test_cluster_runs_on_a_dev_server_and_a_raft_cluster(tmp_path):
    stdout = smoke("cluster.py", tmp_path / "cluster.json")
    results = json.loads((tmp_path / "cluster.json").read_text())
    assert set(results) == {"dev", "raft"}
    assert set(results["raft"]) == {"adds_per_s", "vault_write_ms", "relayed_vault_write_ms", "add_ms",
                                    "floor_ms", "visible_ms"}
    assert "one add's p50 ÷ the write's" in stdout


def test_a_smoke_run_never_replaces_the_committed_figures():
    result = subprocess.run([sys.executable, "bench/compare.py", "--smoke"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "--smoke needs --out" in result.stderr


def test_the_push_timeline_finds_every_step_of_each_add():
    """bench/push_timeline.py reads packets on `lo` (CAP_NET_RAW: the CI runs as root)."""
    result = subprocess.run([sys.executable, "bench/push_timeline.py", "-n", "3"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    rows = [line.split(" | ") for line in result.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| step |")]
    assert {row[0].lstrip("| ") for row in rows} == {
        "request reaches dnsapi", "dnsapi writes to Vault", "Vault answers", "acknowledged",
        "NOTIFY sent", "CoreDNS asks the SOA", "dnsapi answers the SOA", "CoreDNS asks the AXFR",
        "dnsapi sends the AXFR", "answered by CoreDNS"}, result.stdout
    assert all(row[2] == "3 of 3 |" for row in rows), result.stdout
    # in the order the layout implies
    order = [row[0].lstrip("| ") for row in rows]
    assert order.index("dnsapi writes to Vault") < order.index("Vault answers") < order.index("acknowledged")
    assert order.index("Vault answers") < order.index("dnsapi sends the AXFR")  # served once stored


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")
                                          if "__main__" in p.read_text()))
def test_every_bench_script_explains_itself_and_measures_nothing_on_help(script):
    """`--help` prints what the script measures and how to run it, and starts nothing (each
    takes seconds to half an hour once it runs)."""
    result = subprocess.run([sys.executable, f"bench/{script}", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and len(result.stdout.splitlines()) > 3
