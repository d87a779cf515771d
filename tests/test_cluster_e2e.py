"""The raft cluster the HA tests run on (tests/cluster.py): it comes up with three voters and
one active node, a killed leader is replaced, a restarted node rejoins and catches up, and a
standby can be paused (partitioned) and sealed, and comes back."""

from __future__ import annotations

import time
from pathlib import Path

from .cluster import raft_cluster, render_config
from .helpers import FIGURES


def test_render_config_repeats_retry_join_and_drops_lines_without_a_value() -> None:
    template = ('a = "{{a}}"\nb = "{{b}}"\nstorage "raft" {\n  retry_join {\n'
                '    leader_api_addr = "{{peer_api_addr}}"\n  }\n}\n')
    text = render_config(template, {"a": "1", "b": None}, ["http://x:1", "http://y:2"])
    assert text == ('a = "1"\nstorage "raft" {\n'
                    '  retry_join {\n    leader_api_addr = "http://x:1"\n  }\n'
                    '  retry_join {\n    leader_api_addr = "http://y:2"\n  }\n}\n')


def test_cluster_fails_over_and_a_restarted_node_rejoins(tmp_path: Path) -> None:
    started = time.monotonic()
    with raft_cluster(tmp_path / "cluster") as cluster:
        FIGURES["raft cluster start (3 nodes, voters)"] = f"{time.monotonic() - started:.1f} s"
        assert cluster.voters() == ["openbao-1", "openbao-2", "openbao-3"]
        leader = cluster.active()
        assert [cluster.health(node) for node in cluster.nodes].count(200) == 1
        client = cluster.vault().client
        client.secrets.kv.v2.create_or_update_secret(path="smoke", secret={"n": "1"},
                                                      mount_point="secret")

        cluster.kill(leader)
        killed = time.monotonic()
        successor = cluster.active(exclude=leader)
        FIGURES["raft kill -9 leader -> new active node"] = f"{time.monotonic() - killed:.1f} s"
        assert successor is not leader
        client = cluster.vault().client
        client.secrets.kv.v2.create_or_update_secret(path="smoke", secret={"n": "2"},
                                                      mount_point="secret")

        cluster.start(leader)
        assert cluster.health(leader) in (200, 429, 473)
        assert cluster.voters() == ["openbao-1", "openbao-2", "openbao-3"]
        secret = cluster.vault().client.secrets.kv.v2.read_secret_version(
            path="smoke", mount_point="secret", raise_on_deleted_version=False)
        assert secret["data"]["data"] == {"n": "2"}

        standby = next(node for node in cluster.nodes if node is not cluster.active())
        cluster.pause(standby)  # partitioned: the other two still make a quorum
        cluster.vault().client.secrets.kv.v2.create_or_update_secret(
            path="smoke", secret={"n": "3"}, mount_point="secret")
        cluster.resume(standby)
        cluster.seal(standby)
        assert cluster.health(standby) == 503
        cluster.unseal(standby)
        assert cluster.health(standby) in (429, 473)
