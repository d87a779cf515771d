"""Several nodes: dnsapi + CoreDNS pairs sharing one Vault. A record added through any node is
served by every node's CoreDNS, found through the watch on the zone secret's version (the
reconcile timer is set to a minute here so it cannot be what does it)."""

import statistics
import time

from .helpers import FIGURES

NAME = "_acme-challenge.nodes.dev.local"


def slow_reconcile(config):
    config["reconcile_interval"] = "60s"


def test_a_record_added_on_one_node_is_served_by_the_other(make_stack):
    prefix = f"nodes-{time.monotonic_ns()}"
    nodes = [make_stack(edit=slow_reconcile, prefix=prefix), make_stack(edit=slow_reconcile, prefix=prefix)]
    delays = []
    for i in range(10):
        source, other = nodes[i % 2], nodes[(i + 1) % 2]
        value = f"node-value-{i:02d}"
        start = time.monotonic()
        assert source.add(NAME, value).status_code == 201
        other.wait_served(NAME, {f"node-value-{j:02d}" for j in range(i + 1)}, timeout=5)
        delays.append(time.monotonic() - start)
    FIGURES["add on one node -> served by the other node's CoreDNS"] = (
        f"median {statistics.median(delays) * 1000:.0f} ms, max {max(delays) * 1000:.0f} ms over 10 "
        "(watch_interval 500ms, CoreDNS reload 250ms)")


def test_wait_can_require_every_node(make_stack):
    prefix = f"nodes-{time.monotonic_ns()}"
    far = make_stack(edit=slow_reconcile, prefix=prefix)

    def both_servers(config):
        slow_reconcile(config)
        config["dns_servers"].append(f"127.0.0.1:{far.dns_port}")
    near = make_stack(edit=both_servers, prefix=prefix)
    response = near.add(NAME, "everywhere", wait=True)
    assert response.status_code == 201
    # the answer came only once both CoreDNS servers served it: no waiting needed here
    assert near.query(NAME) == ("NOERROR", {"everywhere"})
    assert far.query(NAME) == ("NOERROR", {"everywhere"})
