"""A real OpenBao raft cluster for the end-to-end tests: `bao server -config` processes on
loopback (not -dev), each rendered from the shipped deploy/vault/openbao-raft.hcl, initialised
with one unseal key (shamir 1-of-1), all unsealed, three voters. Nodes can be killed (SIGKILL),
restarted, paused (SIGSTOP, a partitioned node), sealed and unsealed; every wait is for a
condition the nodes report (sys/health, sys/leader, the raft configuration), never a fixed time.

The nodes share one audit log file (`RaftCluster.audit_log`): OpenBao wants the declarative
`audit` stanza identical on every node, and each node appends what it serves to that path; on
one machine that is one file holding the whole cluster's audit trail.

Like helpers.py, nothing here imports pytest (the benchmarks may use it).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from dnsapi.devstack import Process, openbao_binary, wait_for

from .helpers import ROOT, TlsFiles, Vault, free_port, wait_until

TEMPLATE = ROOT / "deploy" / "vault" / "openbao-raft.hcl"
HEALTHY = (200, 429, 473)  # sys/health: active, standby, performance standby
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_RETRY_JOIN = re.compile(r"^( *)retry_join \{\n.*?^\1\}\n", re.MULTILINE | re.DOTALL)


def render_config(template: str, values: dict[str, str | None], peers: list[str]) -> str:
    """The node config from the template: the retry_join block once per address in `peers`
    (its {{peer_api_addr}} filled in), every other {{placeholder}} from `values`, and each line
    whose placeholder's value is None left out (see the template's header). A placeholder
    without a value is an error."""
    match = _RETRY_JOIN.search(template)
    if match is None:
        raise ValueError("the template has no retry_join block")
    joins = "".join(match.group(0).replace("{{peer_api_addr}}", peer) for peer in peers)
    template = template[:match.start()] + joins + template[match.end():]
    lines = []
    for line in template.splitlines(keepends=True):
        names = _PLACEHOLDER.findall(line)
        if any(values[name] is None for name in names):
            continue
        lines.append(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), line))
    return "".join(lines)


@dataclass
class RaftNode:
    index: int  # 1-based, as in node_id openbao-1
    addr: str  # the API address, http(s)://127.0.0.1:PORT
    cluster_port: int
    config: Path
    data_dir: Path
    log: Path
    process: Process | None = None
    paused: bool = False

    @property
    def name(self) -> str:
        return f"openbao-{self.index}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None

    def __str__(self) -> str:
        return f"{self.name} ({self.addr})"


@dataclass
class RaftCluster:
    nodes: list[RaftNode]
    audit_log: Path
    ca: Path | None = None
    root_token: str = ""
    unseal_key: str = ""

    @property
    def addrs(self) -> list[str]:
        return [node.addr for node in self.nodes]

    # -- talking to one node -------------------------------------------------------------------

    def request(self, node: RaftNode, method: str, path: str, timeout: float = 2,
                **kwargs: Any) -> requests.Response:
        """One API call to `node` itself (no redirect is followed), with the root token."""
        headers = kwargs.pop("headers", {})
        if self.root_token:
            headers.setdefault("X-Vault-Token", self.root_token)
        return requests.request(method, f"{node.addr}/v1/{path}", headers=headers,
                                     timeout=timeout, allow_redirects=False,
                                     verify=str(self.ca) if self.ca else True, **kwargs)

    def health(self, node: RaftNode) -> int | None:
        """sys/health's status code from `node` (None: not running, paused or not answering):
        200 active, 429 standby, 473 performance standby, 501 not initialised, 503 sealed."""
        if not node.running or node.paused:
            return None
        try:
            return self.request(node, "GET", "sys/health", timeout=1).status_code
        except requests.RequestException:
            return None

    def leader(self, node: RaftNode) -> dict[str, Any]:
        """`node`'s sys/leader answer ({} when it gives none)."""
        try:
            response = self.request(node, "GET", "sys/leader", timeout=1)
        except requests.RequestException:
            return {}
        return response.json() if response.status_code == 200 else {}

    # -- the cluster ---------------------------------------------------------------------------

    def active(self, timeout: float = 30, exclude: RaftNode | None = None) -> RaftNode:
        """The active node, once there is one: the node that reports itself active (sys/health
        200) and, when more than one does, the one most nodes name in sys/leader. (Seen here:
        an active node paused with SIGSTOP and resumed can go on reporting itself active after
        losing raft leadership, while it redirects writes to the real one.)"""
        found: list[RaftNode] = []

        def check() -> bool:
            claims = [n for n in self.nodes if n is not exclude and self.health(n) == 200]
            if len(claims) > 1:
                named = self._named_leader()
                claims = [n for n in claims if n.addr == named]
            found[:] = claims
            return len(claims) == 1

        wait_until(check, timeout, "an active OpenBao node" + (f" other than {exclude}" if exclude else ""))
        return found[0]

    def _named_leader(self) -> str | None:
        """The leader_address more than half of the running nodes give in sys/leader."""
        named = Counter(self.leader(n).get("leader_address") for n in self.nodes if n.running)
        addr, votes = named.most_common(1)[0] if named else (None, 0)
        return addr if votes * 2 > len(self.nodes) else None

    def standbys(self) -> list[RaftNode]:
        """The nodes that report themselves healthy standbys now."""
        return [n for n in self.nodes if self.health(n) in (429, 473)]

    def vault(self) -> Vault:
        """A view of the cluster for helpers.start_stack: the active node's address, the root
        token, and the CA when the nodes serve HTTPS."""
        node = self.active()
        assert node.process is not None
        return Vault(node.addr, self.root_token, node.process, ca=self.ca)

    def voters(self) -> list[str]:
        """The node ids the raft configuration (read on the active node) lists as voters."""
        response = self.request(self.active(), "GET", "sys/storage/raft/configuration")
        response.raise_for_status()
        servers = response.json()["data"]["config"]["servers"]
        return sorted(s["node_id"] for s in servers if s["voter"])

    # -- faults --------------------------------------------------------------------------------

    def kill(self, node: RaftNode) -> None:
        """SIGKILL, and wait until the process has exited."""
        assert node.process is not None
        node.process.kill()
        node.paused = False

    def start(self, node: RaftNode) -> None:
        """Start the node's process again (same config and data), unseal it, and wait until it
        has rejoined: a healthy member that has applied everything the leader had committed."""
        assert not node.running, f"{node} is still running"
        self._spawn(node)
        self.unseal(node)

    def pause(self, node: RaftNode) -> None:
        """SIGSTOP: the process holds its sockets but answers nothing (a partitioned node)."""
        assert node.process is not None
        os.kill(node.process.popen.pid, signal.SIGSTOP)
        node.paused = True

    def resume(self, node: RaftNode, timeout: float = 30) -> None:
        """SIGCONT, and wait until the node has rejoined (see `start`)."""
        assert node.process is not None
        os.kill(node.process.popen.pid, signal.SIGCONT)
        node.paused = False
        self._wait_caught_up(node, timeout)

    def seal(self, node: RaftNode) -> None:
        """Seal the node (sys/seal on it) and wait until it reports sealed."""
        response = self.request(node, "PUT", "sys/seal", timeout=10)
        if response.status_code >= 400:
            raise AssertionError(f"sealing {node}: {response.status_code} {response.text}")
        wait_until(lambda: self.health(node) == 503, 10, f"{node} to report sealed")

    def unseal(self, node: RaftNode, timeout: float = 30) -> None:
        """Give the node the unseal key (again until it takes it: a node still joining answers
        an error first) and wait until it has rejoined (see `start`)."""
        def unsealed() -> bool:
            if self.health(node) in HEALTHY:
                return True
            with contextlib.suppress(requests.RequestException):
                self.request(node, "PUT", "sys/unseal", json={"key": self.unseal_key}, timeout=5)
            return False

        assert node.process is not None
        wait_for(unsealed, timeout, f"{node} to unseal", node.process)
        self._wait_caught_up(node, timeout)

    def _wait_caught_up(self, node: RaftNode, timeout: float) -> None:
        """Until `node` is healthy, names the active node as its leader, and has applied all
        that the active node had committed."""
        def caught_up() -> bool:
            if self.health(node) not in HEALTHY:
                return False
            try:
                active = self.active(timeout=1)
            except AssertionError:
                return False
            # The leader's commit index first: under load it grows while we look.
            theirs = self.leader(active)
            mine = theirs if active is node else self.leader(node)
            if mine.get("leader_address") != active.addr:
                return False
            return int(mine.get("raft_applied_index", 0)) >= int(theirs.get("raft_committed_index", 1))

        assert node.process is not None
        wait_for(caught_up, timeout, f"{node} to rejoin the cluster and catch up", node.process)

    # -- processes -----------------------------------------------------------------------------

    def _spawn(self, node: RaftNode) -> None:
        node.process = Process.start(node.name, [openbao_binary(), "server", "-config", str(node.config)],
                                     node.log)
        node.paused = False

    def stop(self) -> None:
        """Stop every node (a paused one is resumed first so SIGTERM can land), all at once."""
        running = [n for n in self.nodes if n.process is not None and n.running]
        for node in running:
            assert node.process is not None
            if node.paused:
                os.kill(node.process.popen.pid, signal.SIGCONT)
            node.process.popen.send_signal(signal.SIGTERM)
        for node in running:
            assert node.process is not None
            node.process.stop()


def _node(directory: Path, index: int, scheme: str) -> RaftNode:
    home = directory / f"openbao-{index}"
    (home / "data").mkdir(mode=0o700, parents=True, exist_ok=True)
    return RaftNode(index, f"{scheme}://127.0.0.1:{free_port()}", free_port(), home / "openbao.hcl",
                    home / "data", home / "openbao.log")


def _write_configs(cluster: RaftCluster, standby_reads: bool, tls: TlsFiles | None) -> None:
    template = TEMPLATE.read_text()
    for node in cluster.nodes:
        listen = node.addr.split("://", 1)[1]
        values: dict[str, str | None] = {
            "api_addr": node.addr,
            "cluster_addr": f"https://127.0.0.1:{node.cluster_port}",
            "disable_standby_reads": "false" if standby_reads else "true",
            "address": listen,
            "cluster_address": f"127.0.0.1:{node.cluster_port}",
            "tls_disable": None if tls else "true",
            "tls_cert_file": str(tls.cert) if tls else None,
            "tls_key_file": str(tls.key) if tls else None,
            "leader_ca_cert_file": str(tls.ca) if tls else None,
            "data_dir": str(node.data_dir),
            "node_id": node.name,
            "autopilot_update_interval": "500ms",
            "autopilot_reconcile_interval": "1s",
            "audit_log": str(cluster.audit_log),
        }
        node.config.write_text(render_config(template, values, cluster.addrs))


def _initialise(cluster: RaftCluster, first: RaftNode) -> None:
    """Shamir 1-of-1 init on the first node, unseal it, mount KV v2 at secret/ (as a dev server
    has it, so start_stack works unchanged), and let autopilot promote joining nodes to voters
    after 1 s of health instead of the default 10 s (a test-only setting)."""
    assert first.process is not None
    wait_for(lambda: cluster.health(first) == 501, 30, f"{first} to listen, uninitialised", first.process)
    response = cluster.request(first, "PUT", "sys/init", timeout=30,
                               json={"secret_shares": 1, "secret_threshold": 1})
    response.raise_for_status()
    answer = response.json()
    cluster.root_token, cluster.unseal_key = answer["root_token"], answer["keys_base64"][0]
    cluster.unseal(first)
    response = cluster.request(first, "POST", "sys/storage/raft/autopilot/configuration",
                               json={"server_stabilization_time": "1s"})
    response.raise_for_status()
    response = cluster.request(first, "POST", "sys/mounts/secret",
                               json={"type": "kv", "options": {"version": "2"}})
    response.raise_for_status()


@contextlib.contextmanager
def raft_cluster(directory: Path, nodes: int = 3, standby_reads: bool = True,
                 tls: TlsFiles | None = None) -> Iterator[RaftCluster]:
    """A running, unsealed cluster of `nodes` OpenBao servers in `directory` (one subdirectory
    per node: its config, raft data and log), every node a voter. `standby_reads=False` sets
    disable_standby_reads; `tls` makes the API listeners serve HTTPS with that certificate.
    Every node is stopped on exit, also when starting failed."""
    directory.mkdir(parents=True, exist_ok=True)
    scheme = "https" if tls else "http"
    cluster = RaftCluster([_node(directory, i, scheme) for i in range(1, nodes + 1)],
                          audit_log=directory / "audit.log", ca=tls.ca if tls else None)
    try:
        _write_configs(cluster, standby_reads, tls)
        first, *others = cluster.nodes
        cluster._spawn(first)
        _initialise(cluster, first)
        # The others start once the leader answers: a joining node retries every 2 s, and its
        # first try then fetches the challenge that the unseal key answers on the second.
        for node in others:
            cluster._spawn(node)
        with ThreadPoolExecutor() as pool:
            list(pool.map(cluster.unseal, others))
        names = sorted(node.name for node in cluster.nodes)
        wait_until(lambda: cluster.voters() == names, 30, f"{nodes} raft voters")
        yield cluster
    finally:
        cluster.stop()

