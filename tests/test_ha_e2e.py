"""dnsapi on a real three-node OpenBao raft cluster under faults (issue #17).

Two dnsapi + CoreDNS nodes share one prefix; their `vault.addr` lists hold the three nodes in
different orders, so one of them starts out talking to a standby that serves reads from its own
state (standby reads on, the OpenBao default). 32 clients add and remove records through both
while the active node is killed (three times, restarted in between), a standby is paused
(a partitioned node) and the active node is sealed. Afterwards every acknowledged add is in Vault
and in both zone files, every acknowledged remove is gone, and no zone file ever lost a record
and got it back (what acting on a stale read looks like). The time from each fault to the next
acknowledged change is reported.
"""

from __future__ import annotations

import re
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from .cluster import RaftCluster, raft_cluster
from .helpers import FIGURES, ZONE, Stack, start_stack, wait_until

CLIENTS = 32
KEEP_EVERY = 3  # every third value a client adds stays (the others are removed again)
VALUE = re.compile(rb'"(ha[0-9a-f]{6}c\d+n\d+)"')


@dataclass
class Load:
    """CLIENTS threads, half through each dnsapi node, each adding a fresh value and removing
    most of them again. `done` holds the last acknowledged operation per value; a value whose
    last request was not acknowledged may be either way, so it is left out of the verdict."""

    stacks: list[Stack]
    tag: str = field(default_factory=lambda: f"ha{uuid.uuid4().hex[:6]}")
    done: dict[str, str] = field(default_factory=dict)  # value -> "add" | "remove"
    unsure: set[str] = field(default_factory=set)
    # (sent, acknowledged): monotonic times of each acknowledged request
    acks: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(90)

    def acked_after(self, moment: float) -> float | None:
        """When the first change requested after `moment` was acknowledged (None: none yet)."""
        with self.lock:
            later = [acked for sent, acked in self.acks if sent > moment]
        return min(later) if later else None

    def _client(self, index: int) -> None:
        stack = self.stacks[index % len(self.stacks)]
        fqdn = f"_acme-challenge.h{index}.{ZONE}"
        n = 0
        while not self.stop.is_set():
            value = f"{self.tag}c{index}n{n}"
            if self._send(stack, "add", fqdn, value) and n % KEEP_EVERY:
                self._send(stack, "remove", fqdn, value)
            n += 1

    def _send(self, stack: Stack, op: str, fqdn: str, value: str) -> bool:
        sent = time.monotonic()
        try:
            response = stack.add(fqdn, value) if op == "add" else stack.remove(fqdn, value)
            ok = response.status_code in ((200, 201) if op == "add" else (200,))
            if not ok and response.status_code != 503:
                self.failures.append(f"{op} {value}: {response.status_code} {response.text[:200]}")
        except requests.RequestException:
            ok = False
        with self.lock:
            if ok:
                self.done[value] = op
                self.unsure.discard(value)
                self.acks.append((sent, time.monotonic()))
            else:
                self.unsure.add(value)
        return ok


class Watcher:
    """Reads each zone file every few milliseconds and fails a value that was in a file, left
    it and came back: values are never re-added, so that is a zone file going backwards."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.seen: list[set[bytes]] = [set() for _ in paths]  # ever present, per file
        self.present: list[set[bytes]] = [set() for _ in paths]
        self.backwards: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for i, path in enumerate(self.paths):
                now = set(VALUE.findall(path.read_bytes()))
                for value in now & (self.seen[i] - self.present[i]):
                    self.backwards.append(f"{path.parent.name}: {value.decode()} came back")
                self.seen[i] |= now
                self.present[i] = now
            self.stop.wait(0.005)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RaftCluster]:
    with raft_cluster(tmp_path / "cluster") as running:
        yield running


def ha_stacks(tmp_path: Path, cluster: RaftCluster) -> list[Stack]:
    """Two dnsapi + CoreDNS nodes on one prefix, the cluster's addresses in opposite orders."""
    prefix = f"ha-{uuid.uuid4().hex[:8]}"
    stacks = []
    for name, addrs in (("dnsapi-a", cluster.addrs), ("dnsapi-b", cluster.addrs[::-1])):
        def edit(config: dict, addrs: list[str] = addrs) -> None:
            config["vault"]["addr"] = addrs
            config["rate_limit"] = {"per_second": 0}
            config["max_records_per_token"] = 10_000
            # Reconcile and watch often: a stale read would show in the zone files quickly.
            config["reconcile_interval"] = "1s"
            config["watch_interval"] = "200ms"
        stacks.append(start_stack(tmp_path / name, cluster.vault(), edit=edit, prefix=prefix))
    return stacks


def vault_values(cluster: RaftCluster, stack: Stack) -> set[str]:
    stack.vault = cluster.vault()  # the active node now
    return {value for _, value in stack.vault_records()}


def file_values(stack: Stack) -> set[str]:
    return {v.decode() for v in VALUE.findall(stack.zone_path.read_bytes())}


def test_acknowledged_changes_survive_leader_kills_a_paused_standby_and_a_seal(
        tmp_path: Path, cluster: RaftCluster) -> None:
    stacks = ha_stacks(tmp_path, cluster)
    load = Load(stacks)
    watcher = Watcher([stack.zone_path for stack in stacks])
    recovery: list[tuple[str, float]] = []

    def fault(what: str, act: object) -> None:
        """Do the fault, then wait for the first change requested after it to be acknowledged
        (any client, any node)."""
        before = len(load.acks)
        wait_until(lambda: len(load.acks) > before + 50, 60, "the load to be running")
        moment = time.monotonic()
        act()  # type: ignore[operator]
        wait_until(lambda: load.acked_after(moment) is not None, 30,
                   f"an acknowledged change after: {what}")
        recovery.append((what, load.acked_after(moment) - moment))  # type: ignore[operator]

    try:
        load.start()
        for kill in range(1, 4):
            leader = cluster.active()
            fault(f"kill -9 #{kill} of the active node ({leader.name})",
                  lambda node=leader: cluster.kill(node))
            cluster.start(leader)
        standby = cluster.standbys()[0]
        fault(f"SIGSTOP of the standby {standby.name}", lambda: cluster.pause(standby))
        cluster.resume(standby)
        leader = cluster.active()
        fault(f"seal of the active node {leader.name}", lambda: cluster.seal(leader))
        cluster.unseal(leader)
        before = len(load.acks)
        wait_until(lambda: len(load.acks) > before + 50, 60, "the load to go on after the faults")
        load.finish()
        watcher.finish()

        assert not load.failures, load.failures[:5]
        kept = {v for v, op in load.done.items() if op == "add" and v not in load.unsure}
        gone = {v for v, op in load.done.items() if op == "remove" and v not in load.unsure}
        assert len(kept) > 100 and len(gone) > 100, (len(kept), len(gone))
        stored = vault_values(cluster, stacks[0])
        assert not kept - stored, f"acknowledged adds missing from Vault: {sorted(kept - stored)[:5]}"
        assert not gone & stored, f"acknowledged removes still in Vault: {sorted(gone & stored)[:5]}"
        for stack in stacks:
            wait_until(lambda stack=stack: file_values(stack) == stored, 30,
                       f"{stack.dir.name}'s zone file to hold what Vault holds")
        assert not watcher.backwards, watcher.backwards[:5]
    finally:
        load.finish()
        watcher.finish()
        for stack in stacks:
            stack.stop()

    for what, seconds in recovery:
        FIGURES[f"HA: {what} -> next acknowledged change"] = f"{seconds:.1f} s"
    kills = [seconds for what, seconds in recovery if what.startswith("kill")]
    FIGURES["HA: acknowledged adds / removes checked"] = f"{len(kept)} / {len(gone)}"
    FIGURES["HA: kill -9 -> next ack, median of 3"] = f"{statistics.median(kills):.1f} s"


def test_a_node_given_only_a_standby_finds_the_active_node(tmp_path: Path, cluster: RaftCluster
                                                           ) -> None:
    """With only a standby's address, dnsapi asks it who leads and talks to that node: reads
    are the leader's, never the standby's own (possibly stale) state."""
    standby = cluster.standbys()[0]

    def edit(config: dict) -> None:
        config["vault"]["addr"] = standby.addr
    stack = start_stack(tmp_path / "dnsapi", cluster.vault(), edit=edit)
    try:
        for n in range(20):
            assert stack.add(f"_acme-challenge.www.{ZONE}", f"v{n}").status_code == 201
        assert len(vault_values(cluster, stack)) == 20
        log = (stack.dir / "dnsapi.log").read_text()
        assert f"now talking to the active node {cluster.active().addr}" in log
    finally:
        stack.stop()
