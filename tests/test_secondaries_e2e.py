"""DNS secondaries (issue #17): the shipped primary Corefile sends NOTIFY to secondary CoreDNS
servers (coredns/Corefile.primary, coredns/Corefile.secondary), which transfer the zone; with
the secondaries in `dns_servers`, an add with `wait` returns only once they answer it too."""

from __future__ import annotations

from pathlib import Path

from .helpers import Vault, stack_with_secondaries, wait_until

NAME = "_acme-challenge.www.dev.local"


def test_a_challenge_added_with_wait_is_answered_by_the_secondaries(openbao: Vault, tmp_path: Path) -> None:
    with stack_with_secondaries(tmp_path, openbao) as (stack, secondaries):
        servers = [stack.dns_port, *secondaries]
        values = [f"secondary-check-{n:02d}-abcdefghijklmnopqrstuvwxyz" for n in range(3)]
        for value in values:
            response = stack.add(NAME, value, wait=True)
            assert response.status_code == 201, response.text
            for port in servers:  # at once: the answer waited for every server in dns_servers
                assert value in stack.query(NAME, port)[1], f"127.0.0.1:{port} does not answer {value}"

        # The secondaries got it by NOTIFY, not by their SOA refresh timer (an hour in the zone).
        for number in range(1, len(secondaries) + 1):
            log = (tmp_path / f"secondary{number}" / "coredns.log").read_text()
            assert "Notify from 127.0.0.1 for dev.local." in log, log[-2000:]

        for value in values:
            assert stack.remove(NAME, value).status_code == 200
        wait_until(lambda: all(stack.query(NAME, port)[0] == "NXDOMAIN" for port in servers), 10,
                   "the removal to reach every secondary")
