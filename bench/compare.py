"""dnsapi against the standard way to do dynamic DNS, RFC 2136 updates to BIND, in one run.

Starts a private OpenBao dev server, CoreDNS + dnsapi, and BIND (named, TSIG-signed dynamic zone)
on free loopback ports, then measures side by side:
  - acknowledged adds per second at concurrency 1, 16, 64 (dnsapi's HTTP API vs dnspython
    RFC 2136 updates to BIND, one TCP connection per update, and the same updates to dnsapi's
    dns_update listener), the median of --reps runs per level taking turns; like an ACME client,
    each run's records are removed afterwards (not timed);
  - time from an add to the DNS server answering it, p50 and p99 (dnsapi: through the shipped
    Corefile, which polls the zone file, and through a second CoreDNS on the same zone file in
    the push layout, coredns/Corefile.push);
  - one add at concurrency 1 beside the bare Vault write it needs and beside the floor under it
    (bench/floor_server.py: an aiohttp service doing only that write), and where its time goes
    (dnsapi's own /metrics around those adds);
  - wall time of one apex + wildcard issuance with lego against OpenBao ACME (httpreq to dnsapi,
    OpenBao looking the challenge up at each of the two CoreDNS layouts, vs lego's rfc2136
    provider to BIND; all --dns.disable-cp, same polling), the mean of --issuance-runs runs
    each, taking turns, and how many of their validations waited;
  - CoreDNS's idle CPU at the shipped reload interval, in both layouts (bench/idle.py);
  - dnsapi's RSS with 10,000 operator records and 1,000 challenge records;
  - one zone rewrite at 1k, 10k and 100k zone lines.
Prints a markdown table and writes bench/results.json.

    python3 bench/compare.py [--issuance-runs N] [--reps N] [--out FILE]
    python3 bench/compare.py --smoke --out FILE   # every path once, tiny samples (the tests run it)

Ends with the issue's targets checked against this run. Takes about 32 minutes with the defaults,
nearly all of it issuance: one issuance varies by ~4 s for reasons outside both paths (see
README), so a verdict on a 10 % difference needs many.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import hvac
import requests
import yaml
from dns_load import check_answers, exchange_all
from idle import SHIPPED as SHIPPED_RELOAD
from idle import SHIPPED_PUSH
from idle import measure as idle_cpu
from prometheus_client.parser import text_string_to_metric_families
from rewrite import measure as rewrite_ms
from throughput import LEVELS, NAMES, adds_per_second, bodies, send_all, unlimited
from urllib3.util.retry import Retry

from dnsapi.devstack import Process, soa_answered, start_coredns, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.helpers
from tests.helpers import free_port, local_stack, push_corefile

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results.json"
REPS = 5  # per level and server, taking turns; the median is reported


@dataclass(frozen=True)
class Scale:
    """How much each measure samples: a full run, or SMOKE (--smoke: every path once, to show the
    script still runs; its figures mean nothing)."""

    levels: tuple[tuple[int, int], ...] = LEVELS  # (concurrency, adds) per adds/s level
    visible: int = 60  # adds per layout for add → answered
    latency: int = 200  # turns of one add, the bare write, the relayed write and the floor service
    idle_seconds: float = 20  # CoreDNS's idle CPU window per zone size
    rewrite_runs: int = 3


FULL = Scale()
SMOKE = Scale(levels=((1, 10), (16, 32), (64, 64)), visible=2, latency=3, idle_seconds=1,
              rewrite_runs=1)
# OpenBao validates a challenge in the background; when lego looks before it finished, lego waits
# ~5 s more, on either path, at random (bench/README.md, "Issuance"). So: many runs, and
# their mean. With one issuance's standard deviation of ~4 s, 80 runs per path put the ratio's
# standard error near 0.07.
ISSUANCE_RUNS = 80
# A run whose validations did not wait takes its path's fastest time; each wait adds 5.5 or 7.2 s
# (lego's backoff), so runs fall in three bands far apart: none, one or both validations waited.
ONE_WAIT_S, TWO_WAITS_S = 3.0, 9.0  # beyond the path's fastest run


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- RFC 2136 ------------------------------------------------------------------------------------

class Updater:
    """The RFC 2136 client load, the same for BIND and for dnsapi's dns_update listener: one
    UPDATE adding one TXT record, signed with an hmac-sha256 TSIG key, over UDP or one TCP
    connection each; acknowledged means answered NOERROR."""

    def __init__(self, label: str, port: int, secret: str, udp: bool = False) -> None:
        self.label, self.port, self.secret, self.udp = label, port, secret, udp
        self.keyring = dns.tsigkeyring.from_text({"bench.": ("hmac-sha256", secret)})

    def over_udp(self) -> Updater:
        """The same client load to the same server, over UDP (as cert-manager and lego send)."""
        return Updater(f"{self.label}, UDP", self.port, self.secret, udp=True)

    def send(self, update: dns.update.UpdateMessage, timeout: float) -> None:
        query = dns.query.udp if self.udp else dns.query.tcp
        response = query(update, "127.0.0.1", port=self.port, timeout=timeout)
        if response.rcode() != dns.rcode.NOERROR:
            raise SystemExit(f"{self.label} refused an update: rcode {dns.rcode.to_text(response.rcode())}")

    def adding(self, fqdn: str, value: str) -> dns.update.UpdateMessage:
        """The signed UPDATE that adds one TXT record."""
        update = dns.update.Update("dev.local.", keyring=self.keyring, keyalgorithm="hmac-sha256")
        update.add(fqdn + ".", 60, "TXT", f'"{value}"')
        return update

    def add(self, fqdn: str, value: str) -> None:
        self.send(self.adding(fqdn, value), 10)

    def adds_per_second(self, concurrency: int, count: int, tag: str) -> float:
        """Rate of `count` updates at `concurrency` (bench/dns_load.py); the records are
        removed again afterwards."""
        updates = [self.adding(body["fqdn"], body["value"]) for body in bodies(tag, count)]
        wires = [update.to_wire() for update in updates]  # signed now, before the clock starts
        seconds, answers = asyncio.run(exchange_all(self.port, wires, concurrency, self.udp))
        check_answers(updates, answers, self.keyring, self.label)
        rate = count / seconds
        update = dns.update.Update("dev.local.", keyring=self.keyring, keyalgorithm="hmac-sha256")
        for i in range(NAMES):
            update.delete(f"_acme-challenge.h{i}.dev.local.", "TXT")
        self.send(update, 30)
        return rate


def new_secret() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


class Bind(Updater):
    def __init__(self, directory: Path) -> None:
        super().__init__("BIND", free_port(), new_secret())
        self.dir = directory
        directory.mkdir()
        (directory / "db.dev.local").write_text((ROOT / "coredns" / "db.dev.local").read_text())
        (directory / "named.conf").write_text(f"""options {{
    directory "{directory}"; pid-file "{directory}/named.pid";
    listen-on port {self.port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
    recursion no; allow-query {{ 127.0.0.1; }}; dnssec-validation no;
}};
key "bench." {{ algorithm hmac-sha256; secret "{self.secret}"; }};
controls {{ }};
zone "dev.local" {{ type primary; file "{directory}/db.dev.local"; allow-update {{ key "bench."; }}; }};
""")
        self.proc = Process.start("named", ["named", "-g", "-u", "root", "-c", str(directory / "named.conf")],
                                  directory / "named.log")
        wait_for(lambda: soa_answered(self.port, "dev.local"), 30, "BIND", self.proc)

    def lego_env(self) -> dict[str, str]:
        """lego's rfc2136 provider against this BIND. It is a "sequential" provider, 60 s between
        challenges by default; 1 s, so both paths wait the same (httpreq has no such gap)."""
        return {"RFC2136_NAMESERVER": f"127.0.0.1:{self.port}", "RFC2136_TSIG_KEY": "bench.",
                "RFC2136_TSIG_SECRET": self.secret, "RFC2136_TSIG_ALGORITHM": "hmac-sha256.",
                "RFC2136_POLLING_INTERVAL": "2", "RFC2136_SEQUENCE_INTERVAL": "1"}


# -- shared measurements ----------------------------------------------------------------------------

def served(port: int, fqdn: str, value: str) -> bool:
    response = dns.query.udp(dns.message.make_query(fqdn + ".", dns.rdatatype.TXT), "127.0.0.1",
                             port=port, timeout=1)
    return any(b"".join(rd.strings).decode() == value
               for rrset in response.answer if rrset.rdtype == dns.rdatatype.TXT for rd in rrset)


def visible_ms(add, port: int, label: str, samples: int = FULL.visible) -> dict[str, float]:
    """p50/p99 ms from starting an add to the server answering it; random gaps between adds so
    they land at every phase of CoreDNS's reload ticker."""
    delays = []
    rng = secrets.SystemRandom()
    for i in range(samples):
        fqdn, value = f"_acme-challenge.vis{i}.dev.local", f"{label}-visible-{i:03d}"
        start = time.perf_counter()
        add(fqdn, value)
        while not served(port, fqdn, value):
            time.sleep(0.002)
        delays.append((time.perf_counter() - start) * 1000)
        time.sleep(rng.uniform(0, 0.3))
    return {"p50": statistics.median(delays), "p99": percentile(delays, 99)}


@dataclass
class PushDns:
    proc: Process
    port: int


def push_coredns(zone_path: Path, answers_port: int, port: int, directory: Path) -> PushDns:
    """A second CoreDNS on `port` in the push layout (coredns/Corefile.push) on the stack's
    zone file, transferring challenge names from dnsapi's answers (which NOTIFY it)."""
    directory.mkdir()
    (directory / "Corefile").write_text(
        push_corefile(answers_port).replace("file db.dev.local", f"file {zone_path}"))
    return PushDns(start_coredns(directory, port, ["dev.local"], directory / "coredns.log"), port)


@dataclass
class OneAdd:
    """p50/p99 ms of one add at concurrency 1 and of what it is measured against, and where
    its time goes (means in ms)."""

    write: dict[str, float]  # the bare Vault write the add cannot avoid
    relayed: dict[str, float]  # the same write through bench/relay.py (one more process, no HTTP)
    floor: dict[str, float]  # one add through bench/floor_server.py (an aiohttp service doing that write)
    add: dict[str, float]  # one add through dnsapi
    stages: dict[str, float]


@contextlib.contextmanager
def helper(script: str, *args: str, env: dict[str, str] | None = None) -> Iterator[None]:
    """One of the bench's helper servers (relay.py, floor_server.py), up until the block ends."""
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / script), *args],
                               stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        if process.stdout is None or process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"bench/{script} did not start")
        yield
    finally:
        process.kill()
        process.wait()


def c1_latency_ms(stack, session: requests.Session, tmp: Path, samples: int = FULL.latency) -> OneAdd:
    """One add through dnsapi at concurrency 1, timed taking turns with what it is measured
    against, so that all see the same machine: the one write an add cannot avoid (an hvac
    check-and-set of a secret as large as the zone's, same server), the same write through
    bench/relay.py (a process passing bytes, no HTTP), and the same add sent to
    bench/floor_server.py (an aiohttp service doing only that write); and where an add's time
    goes, as means in ms from dnsapi's own /metrics over the same adds (see STAGES)."""
    client = stack.vault.client
    data = client.secrets.kv.v2.read_secret_version(
        path=f"{stack.prefix}/zones/dev.local", mount_point="secret",
        raise_on_deleted_version=False)["data"]["data"]
    versions = {path: client.secrets.kv.v2.create_or_update_secret(
        path=path, secret=data, mount_point="secret")["data"]["version"]
        for path in ("bench/same-size", "bench/relayed", "bench/floor")}
    (tmp / "floor-data.json").write_text(json.dumps(data))
    vault, relay_port, floor_port = urlsplit(stack.vault.addr), free_port(), free_port()
    relayed = hvac.Client(url=vault._replace(netloc=f"{vault.hostname}:{relay_port}").geturl(),
                          token=stack.vault.root_token, verify=client.session.verify)
    times: dict[str, list[float]] = {"write": [], "relayed": [], "floor": [], "add": []}

    def timed(kind: str, call: Callable[..., None], *args: Any) -> None:
        start = time.perf_counter()
        call(*args)
        times[kind].append((time.perf_counter() - start) * 1000)

    def write(via: hvac.Client, path: str) -> None:
        versions[path] = via.secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, cas=versions[path], mount_point="secret")["data"]["version"]

    def post(url: str, body: dict[str, str]) -> None:
        session.post(url, json=body, timeout=30).raise_for_status()

    with helper("relay.py", str(vault.port), str(relay_port)), \
            helper("floor_server.py", stack.vault.addr, "bench/floor", str(tmp / "floor-data.json"),
                   str(floor_port), env={"VAULT_TOKEN": stack.vault.root_token}):
        write(relayed, "bench/relayed")  # its connection made, as the others' already are
        before = stage_totals(session, stack.url)
        for i in range(samples):
            body = {"fqdn": f"_acme-challenge.lat{i % NAMES}.dev.local", "value": f"latency-{i:05d}"}
            turn = [("write", write, client, "bench/same-size"),
                    ("relayed", write, relayed, "bench/relayed"),
                    ("floor", post, f"http://127.0.0.1:{floor_port}/v1/records", body),
                    ("add", post, f"{stack.url}/v1/records", body)]
            for kind, call, *args in turn[i % 4:] + turn[:i % 4]:  # each in each place alike
                timed(kind, call, *args)
            # Removed again before the next add, as an ACME client does: the zone secret stays
            # the size of the bare write's secret.
            session.delete(f"{stack.url}/v1/records", timeout=30, json=body).raise_for_status()
        after = stage_totals(session, stack.url)
    stages = {stage: 1000 * (after[stage][0] - before[stage][0]) / max(1, after[stage][1] - before[stage][1])
              for stage in STAGES}
    means = {"add, at the client": statistics.mean(times["add"]),
             "the bare Vault write, at the client": statistics.mean(times["write"]),
             "the same write through a byte relay (bench/relay.py), at the client":
                 statistics.mean(times["relayed"]),
             "the floor (an aiohttp service doing only that write), at the client":
                 statistics.mean(times["floor"]), **stages}

    def p50_p99(values: list[float]) -> dict[str, float]:
        return {"p50": statistics.median(values), "p99": percentile(values, 99)}

    return OneAdd(write=p50_p99(times["write"]), relayed=p50_p99(times["relayed"]),
                  floor=p50_p99(times["floor"]), add=p50_p99(times["add"]),
                  stages={stage: round(ms, 3) for stage, ms in means.items()})


# An add's stages as dnsapi's /metrics time them: (metric, labels) per stage. The handler's time
# includes the other two, which overlap: the zone file's next text is made and flushed while the
# Vault write is out, and renamed into place after it. What the handler spends besides them is
# checking the token, the name and the value, queueing for the zone's writer, the audit line
# and the answer. (Those two stages also average the removes between the adds: writes of the
# same size.)
STAGES = {
    "in dnsapi's HTTP handler": ("dnsapi_http_request_duration_seconds",
                                 {"route": "/v1/records", "method": "POST"}),
    "the Vault write (from the event loop, aiohttp)": ("dnsapi_vault_operation_duration_seconds",
                                                       {"operation": "write_zone"}),
    "the zone file write (made while Vault writes, with fsync; then the rename)": (
        "dnsapi_zone_write_duration_seconds", {"zone": "dev.local"}),
}


def stage_totals(session: requests.Session, url: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) so far of each of STAGES."""
    text = session.get(f"{url}/metrics", timeout=10).text
    totals = {}
    for stage, (metric, labels) in STAGES.items():
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in (f"{metric}_sum", f"{metric}_count") and \
                        all(sample.labels.get(k) == v for k, v in labels.items()):
                    found[sample.name.rsplit("_", 1)[1]] = sample.value
        totals[stage] = (found.get("sum", 0.0), found.get("count", 0.0))
    return totals


def vault_init(stack_dir: Path, mount: str, resolver: str, token: str) -> str:
    """A PKI mount with ACME validating DNS-01 at `resolver`; returns its directory URL."""
    config = yaml.safe_load((stack_dir / "dnsapi.yaml").read_text())
    config["vault_init"] = {"pki": {"mount": mount, "root_mount": f"{mount}_root",
                                    "acme_dns_resolver": resolver,
                                    "root_ca_file": str(stack_dir / f"{mount}-root.pem")}}
    path = stack_dir / f"vault-init-{mount}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([sys.executable, "-m", "dnsapi", "vault-init", "-c", str(path)],
                         env={**os.environ, "VAULT_TOKEN": token}, capture_output=True, text=True,
                         check=True).stdout
    return out.strip().splitlines()[-1].split("ACME directory: ")[1]


def issuance_s(paths: dict[str, tuple[list[str], dict[str, str]]], workdir: Path,
               runs: int) -> dict[str, list[float]]:
    """Wall time of each of `runs` issuances per path, the paths taking turns so that whatever
    else the machine does at the time falls on both alike."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for run in range(runs):
        for name, (argv, env) in paths.items():
            start = time.perf_counter()
            result = subprocess.run([*argv, "--path", str(workdir / f"lego-{name}-{run}"), "run"],
                                    env={**os.environ, **env}, capture_output=True, text=True,
                                    timeout=300, check=False)
            if result.returncode != 0:
                raise SystemExit(f"lego ({name}) failed:\n{result.stderr[-2000:]}")
            times[name].append(round(time.perf_counter() - start, 2))
    return times


def waited(times: list[float]) -> int:
    """How many of these issuances' validations waited for lego's backoff, estimated from their
    times: each run's band over the path's fastest, which is taken to have waited for nothing
    (with 80 runs, dozens sit in that band)."""
    fastest = min(times)
    return sum(0 if t < fastest + ONE_WAIT_S else 1 if t < fastest + TWO_WAITS_S else 2 for t in times)


def httpreq_env(stack) -> dict[str, str]:
    """lego's httpreq provider against dnsapi's API."""
    return {"HTTPREQ_ENDPOINT": stack.url, "HTTPREQ_USERNAME": "lego",
            "HTTPREQ_PASSWORD": stack.token, "HTTPREQ_POLLING_INTERVAL": "2"}


def lego(directory: str, provider: str, resolver: str, name: str) -> list[str]:
    return ["lego", "--server", directory, "--accept-tos", "--email", "bench@dev.local",
            "--key-type", "ec256", "--dns", provider, "--dns.disable-cp", "--dns.resolvers", resolver,
            "-d", name, "-d", f"*.{name}"]


def rss_mb(tmp: Path) -> float:
    """dnsapi's resident memory with 10,000 operator records and 1,000 challenge records."""
    def roomy(config: dict) -> None:
        config["rate_limit"] = {"per_second": 0}
        config["max_records_per_token"] = 2000

    with local_stack(tmp, roomy) as stack:
        zone = tmp / "db.dev.local"
        zone.write_text(zone.read_text() + "".join(
            f"host{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(10_000)))
        asyncio.run(send_all(stack.url, stack.token, "POST", 16, bodies("rss", 1000), 201))
        status = Path(f"/proc/{stack.dnsapi.popen.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024


def ratio_se(a: list[float], b: list[float]) -> float:
    """Standard error of mean(a) / mean(b) (delta method, independent samples)."""
    ma, mb = statistics.mean(a), statistics.mean(b)
    return ma / mb * math.sqrt(statistics.variance(a) / len(a) / ma**2 +
                               statistics.variance(b) / len(b) / mb**2)


def per_level(rates: dict[str, float]) -> str:
    """One server's adds/s at concurrency 1, 16 and 64, as one table cell."""
    return " / ".join(f"{rates[c]:.0f}" for c in ("c1", "c16", "c64"))


def issuance_rows(results: dict) -> list[str]:
    """The table's issuance rows: per layout where this run measured both."""
    i, runs = results["issuance_s"], len(results["issuance_runs_s"]["dnsapi"])
    if "dnsapi_push" not in i:
        return [f"| lego apex + wildcard issuance (mean of {runs}) | {i['dnsapi']:.1f} s "
                f"| {i['bind']:.1f} s |"]
    waits = results["issuance_waited"]
    return [f"| lego apex + wildcard issuance (mean of {runs}), zone file polled | {i['dnsapi']:.1f} s "
            f"| {i['bind']:.1f} s |",
            f"| the same, challenge names pushed (Corefile.push) | {i['dnsapi_push']:.1f} s | |",
            f"| validations that waited for lego's backoff (from run times), of {2 * runs}: polled / "
            f"pushed | {waits['dnsapi']} / {waits['dnsapi_push']} | {waits['bind']} |"]


def table(results: dict) -> str:
    """The dnsapi vs BIND table of bench/README.md; rows for figures an older results.json
    lacks are left out."""
    a, v = results["adds_per_s"], results["visible_ms"]
    lines = ["| measure | dnsapi | BIND (RFC 2136) |", "|---|---|---|"]
    for c in ("c1", "c16", "c64"):
        lines.append(f"| acknowledged adds/s, concurrency {c[1:]} | {a['dnsapi'][c]:.0f} "
                     f"| {a['bind'][c]:.0f} |")
    if "bind_udp" in a:
        lines.append(f"| acknowledged RFC 2136 UPDATEs/s (UDP), concurrency 1 / 16 / 64 | "
                     f"{per_level(a['dnsapi_rfc2136'])} | {per_level(a['bind_udp'])} |")
    for p in ("p50", "p99"):
        lines.append(f"| add → answered, {p}{', zone file polled' if 'dnsapi_push' in v else ''} | "
                     f"{v['dnsapi'][p]:.0f} ms | {v['bind'][p]:.1f} ms |")
    if "dnsapi_push" in v:
        lines.append(f"| add → answered, p50 / p99, challenge names pushed (Corefile.push) | "
                     f"{v['dnsapi_push']['p50']:.1f} / {v['dnsapi_push']['p99']:.1f} ms | |")
    if "add_ms" in results:
        w, c1 = results["vault_write_ms"], results["add_ms"]["dnsapi"]["c1"]
        lines.append(f"| one add at concurrency 1, p50 / p99 (the Vault write it needs: "
                     f"{w['p50']:.1f} / {w['p99']:.1f} ms) | {c1['p50']:.1f} / {c1['p99']:.1f} ms | |")
        if "floor" in results["add_ms"]:
            f = results["add_ms"]["floor"]["c1"]
            lines.append(f"| the same through an aiohttp service doing only that write "
                         f"(bench/floor_server.py) | {f['p50']:.1f} / {f['p99']:.1f} ms | |")
        if "relayed_vault_write_ms" in results:
            r = results["relayed_vault_write_ms"]
            lines.append(f"| the bare Vault write through a byte relay, no HTTP (bench/relay.py) "
                         f"| {r['p50']:.1f} / {r['p99']:.1f} ms | |")
    if "coredns_idle_cpu_pct" in results:
        idle = results["coredns_idle_cpu_pct"]
        lines.append(f"| CoreDNS idle CPU at reload {SHIPPED_RELOAD}, 1k / 100k-line zone | "
                     f"{idle['1k']:.2f} / {idle['100k']:.2f} % | |")
    if "coredns_idle_cpu_pct_push" in results:
        idle = results["coredns_idle_cpu_pct_push"]
        lines.append(f"| the same, push layout (its reload {SHIPPED_PUSH}) | {idle['1k']:.2f} / "
                     f"{idle['100k']:.2f} % | |")
    lines += issuance_rows(results)
    lines.append(f"| RSS, 10k operator + 1k challenge records | {results['rss_mb']['dnsapi']:.0f} MB | |")
    for size, ms in results["rewrite_ms"].items():
        lines.append(f"| one zone rewrite, {size} lines | {ms:.1f} ms | |")
    return "\n".join(lines)


def breakdown(results: dict) -> str:
    """Where one add's time goes (c1_latency_ms), as printed lines; '' for an older results.json."""
    if "add_breakdown_ms" not in results:
        return ""
    return "\n".join(["One add at concurrency 1, means in ms (dnsapi's /metrics for the stages inside it):"]
                     + [f"  {ms:7.3f}  {stage}" for stage, ms in results["add_breakdown_ms"].items()])


def targets(results: dict) -> list[str]:
    """The issue's targets against this run's figures, one line each."""
    a, v, i, rw = (results["adds_per_s"], results["visible_ms"], results["issuance_s"],
                   results["rewrite_ms"])
    runs = results["issuance_runs_s"]
    c64 = a["dnsapi"]["c64"] / a["bind"]["c64"]
    rfc2136 = a["dnsapi_rfc2136"]["c64"] / a["bind_udp"]["c64"] if "bind_udp" in a else None
    issuance = i["dnsapi"] / i["bind"]
    pushed = i["dnsapi_push"] / i["bind"] if "dnsapi_push" in i else None
    pushed_se = ratio_se(runs["dnsapi_push"], runs["bind"]) if "dnsapi_push" in i else None
    latency = (results["add_ms"]["dnsapi"]["c1"]["p50"] / results["vault_write_ms"]["p50"]
               if "add_ms" in results else None)  # None: results.json from before these keys
    floor = (results["add_ms"]["floor"]["c1"]["p50"] / results["vault_write_ms"]["p50"]
             if "floor" in results.get("add_ms", {}) else None)
    relayed = (results["relayed_vault_write_ms"]["p50"] / results["vault_write_ms"]["p50"]
               if "relayed_vault_write_ms" in results else None)
    # The push layout where this run measured it (coredns/Corefile.push), else the polled file.
    layout = "push layout" if "dnsapi_push" in v else "zone file polled"
    seen = v.get("dnsapi_push", v["dnsapi"])
    idle = results.get("coredns_idle_cpu_pct_push", results.get("coredns_idle_cpu_pct", {})).get("1k")
    growth = rw["100k"] / rw["10k"]
    checks = [
        (c64 >= 2, f"c64 adds/s ≥ 2× BIND's: {c64:.2f}×"),
        (None if rfc2136 is None else rfc2136 >= 1,  # None: results.json from before this path
         f"c64 UPDATEs/s ≥ BIND's: {'—' if rfc2136 is None else f'{rfc2136:.2f}×'}"),
        (seen["p50"] <= 15 and seen["p99"] <= 40,
         f"add → answered p50 ≤ 15 ms, p99 ≤ 40 ms ({layout}): {seen['p50']:.1f} / "
         f"{seen['p99']:.1f} ms"),
        (None if latency is None else latency <= 1.3,
         f"one add (c1) p50 ≤ 1.3× the Vault write: {'—' if latency is None else f'{latency:.2f}×'}"
         + ("" if floor is None else f" (an aiohttp service doing only that write: {floor:.2f}×")
         + ("" if relayed is None else f"; the write through a byte relay: {relayed:.2f}×")
         + ("" if floor is None else ")")),
        (None if idle is None else idle <= 1,
         f"CoreDNS idle CPU ≤ 1 % (1k-line zone, {layout}): {'—' if idle is None else f'{idle:.2f} %'}"),
        (issuance <= 1.1, f"issuance ≤ 1.1× BIND's, zone file polled: {issuance:.2f}× "
                          f"(± {ratio_se(runs['dnsapi'], runs['bind']):.2f} standard error)"),
        (None if pushed is None else pushed <= 1.1,  # None: results.json from before this path
         "issuance ≤ 1.1× BIND's, challenge names pushed: " + ("—" if pushed is None else
                                                               f"{pushed:.2f}× (± {pushed_se:.2f})")),
        (results["rss_mb"]["dnsapi"] <= 80, f"RSS ≤ 80 MB: {results['rss_mb']['dnsapi']:.0f} MB"),
        (growth <= 10, f"rewrite growing no worse than linearly: 10k → 100k lines ×{growth:.1f}"),
    ]
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    return [f"- {verdict[ok]}: {text}" for ok, text in checks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--issuance-runs", type=int, default=ISSUANCE_RUNS, metavar="N",
                        help=f"issuances per path (default {ISSUANCE_RUNS})")
    parser.add_argument("--reps", type=int, default=REPS, metavar="N",
                        help=f"adds/s runs per level and path; the median is reported (default {REPS})")
    parser.add_argument("--smoke", action="store_true",
                        help="every measure once with tiny samples (2 issuances, 1 rep), to check "
                             "the script runs; needs --out, so its figures never replace the real ones")
    parser.add_argument("--out", type=Path, default=RESULTS, metavar="FILE",
                        help="where to write the results (default bench/results.json)")
    args = parser.parse_args()
    if args.smoke:
        if args.out == RESULTS:
            parser.error("--smoke needs --out FILE: its figures must not replace bench/results.json")
        args.issuance_runs, args.reps = 2, 1
    if args.issuance_runs < 2 or args.reps < 1:
        parser.error("--issuance-runs must be at least 2 and --reps at least 1")
    scale = SMOKE if args.smoke else FULL
    results: dict = {"machine": f"{platform.node()} ({os.cpu_count()} cores)",
                     "date": dt.date.today().isoformat()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)

        updates = Updater("dnsapi (RFC 2136)", free_port(), new_secret(), udp=True)
        answers_port, push_port = free_port(), free_port()

        def unlimited_with_updates(config: dict) -> None:
            unlimited(config)  # for the RFC 2136 key as for the token
            config["waits"] = {"per_token": 1000, "total": 1000}
            config["answers"] = {"listen": f"127.0.0.1:{answers_port}", "notify": [f"127.0.0.1:{push_port}"]}
            config["dns_update"] = {"listen": f"127.0.0.1:{updates.port}", "keys": [
                {"name": "bench", "algorithm": "hmac-sha256", "secret": updates.secret,
                 "allow": ["*.dev.local"]}]}

        with local_stack(tmp / "dnsapi", unlimited_with_updates) as stack:
            bind = Bind(tmp / "bind")
            push_dns = push_coredns(stack.zone_path, answers_port, push_port, tmp / "push")
            try:
                session = requests.Session()
                session.headers["Authorization"] = f"Bearer {stack.token}"
                # A kept-alive connection idle past dnsapi's keepalive_timeout (while BIND is
                # measured) may be closed just as it is reused: send once more on a new one. An
                # add sent twice is answered 200, "created": false.
                session.mount("http://", requests.adapters.HTTPAdapter(
                    max_retries=Retry(total=1, connect=1, read=1, status=0, allowed_methods=None)))

                def dnsapi_add(fqdn: str, value: str) -> None:
                    session.post(f"{stack.url}/v1/records", json={"fqdn": fqdn, "value": value},
                                 timeout=30).raise_for_status()

                results["visible_ms"] = {
                    "dnsapi": visible_ms(dnsapi_add, stack.dns_port, "dnsapi", scale.visible),
                    "dnsapi_push": visible_ms(dnsapi_add, push_dns.port, "push", scale.visible),
                    "bind": visible_ms(bind.add, bind.port, "bind", scale.visible)}
                one = c1_latency_ms(stack, session, tmp, scale.latency)
                results["vault_write_ms"] = one.write
                results["relayed_vault_write_ms"] = one.relayed
                results["add_ms"] = {"dnsapi": {"c1": one.add}, "floor": {"c1": one.floor}}
                results["add_breakdown_ms"] = one.stages
                bind_udp = bind.over_udp()
                rates: dict[str, dict[str, list[float]]] = {"dnsapi": {}, "bind": {}, "dnsapi_rfc2136": {},
                                                            "bind_udp": {}}
                for c, n in scale.levels:
                    for rep in range(args.reps):
                        tag = f"c{c}r{rep}"
                        rates["dnsapi"].setdefault(f"c{c}", []).append(
                            adds_per_second(stack.url, stack.token, c, n, tag))
                        rates["bind"].setdefault(f"c{c}", []).append(bind.adds_per_second(c, n, tag))
                        rates["dnsapi_rfc2136"].setdefault(f"c{c}", []).append(
                            updates.adds_per_second(c, n, tag))
                        rates["bind_udp"].setdefault(f"c{c}", []).append(
                            bind_udp.adds_per_second(c, n, tag))
                results["adds_per_s"] = {server: {level: round(statistics.median(runs))
                                                  for level, runs in levels.items()}
                                         for server, levels in rates.items()}
                results["adds_per_s_runs"] = {server: {level: [round(r) for r in runs]
                                                       for level, runs in levels.items()}
                                              for server, levels in rates.items()}
                dnsapi_dir = vault_init(tmp / "dnsapi", "pki", f"127.0.0.1:{stack.dns_port}",
                                        stack.vault.root_token)
                push_dir = vault_init(tmp / "dnsapi", "pki_push", f"127.0.0.1:{push_dns.port}",
                                      stack.vault.root_token)
                bind_dir = vault_init(tmp / "dnsapi", "pki_bind", f"127.0.0.1:{bind.port}",
                                      stack.vault.root_token)
                # The push path's `present` still waits for the polled CoreDNS (the stack's
                # dns_servers), as the polled path's does: the two differ only in who answers
                # OpenBao's lookup.
                runs = issuance_s({
                    "dnsapi": (
                        lego(dnsapi_dir, "httpreq", f"127.0.0.1:{stack.dns_port}", "issue.dev.local"),
                        httpreq_env(stack)),
                    "dnsapi_push": (
                        lego(push_dir, "httpreq", f"127.0.0.1:{push_dns.port}", "issue.dev.local"),
                        httpreq_env(stack)),
                    "bind": (
                        lego(bind_dir, "rfc2136", f"127.0.0.1:{bind.port}", "issue.dev.local"),
                        bind.lego_env())},
                    tmp / "lego", args.issuance_runs)
                results["issuance_s"] = {name: round(statistics.mean(t), 2) for name, t in runs.items()}
                results["issuance_runs_s"] = runs
                results["issuance_waited"] = {name: waited(t) for name, t in runs.items()}
            finally:
                bind.proc.stop()
                push_dns.proc.stop()
        (tmp / "rss").mkdir()
        results["rss_mb"] = {"dnsapi": rss_mb(tmp / "rss")}
    results["rewrite_ms"] = rewrite_ms(scale.rewrite_runs)
    results["coredns_idle_cpu_pct"] = idle_cpu([SHIPPED_RELOAD], scale.idle_seconds)[SHIPPED_RELOAD]
    results["coredns_idle_cpu_pct_push"] = idle_cpu([SHIPPED_PUSH], scale.idle_seconds,
                                                    push=True)[SHIPPED_PUSH]

    out = args.out
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Machine: {results['machine']}, {results['date']}\n")
    print(table(results))
    for name, label in (("dnsapi", "dnsapi, zone file polled"), ("dnsapi_push", "dnsapi, pushed"),
                        ("bind", "BIND")):
        print(f"\nissuance runs, {label}: " + ", ".join(f"{t:.1f}" for t in results["issuance_runs_s"][name]))
    print("\n" + breakdown(results))
    print("\nTargets:\n" + "\n".join(targets(results)))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
