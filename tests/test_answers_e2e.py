"""The layouts that push challenge names (coredns/Corefile.push: transferred on dnsapi's
NOTIFY; coredns/Corefile.forward: forwarded) through real CoreDNS, OpenBao and lego. CoreDNS
here polls the zone file only once an hour, so whatever it answers at a challenge name within
seconds came from dnsapi's answers, not through a reload."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.xfr
import dns.zone
import pytest
import yaml

from dnsapi.devstack import start_coredns

from .helpers import free_port, openbao_server, push_answers, push_corefile, start_stack
from .test_acme_e2e import AcmeEnv, issue_with_httpreq, setup_acme_pki

NAME = "_acme-challenge.www.dev.local"
VALUE = "P" * 43


@pytest.fixture(scope="module", params=["push", "forward"])
def push(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeEnv]:
    layout = request.param
    base = tmp_path_factory.mktemp(layout)
    answers_port = free_port()
    with openbao_server(base, tls=True) as vault:
        stack = start_stack(base / "stack", vault, prefix=layout, edit=push_answers(answers_port, layout),
                            corefile=push_corefile(answers_port, reload="1h", layout=layout))
        try:
            root_pem = base / "root.pem"
            root_pem.write_text(setup_acme_pki(vault, stack.dns_port))
            env = AcmeEnv(stack, vault, f"{vault.addr}/v1/pki/roles/acme/acme/directory", root_pem,
                          base, 0, {})
            env.answers_port = answers_port  # type: ignore[attr-defined]
            env.layout = layout  # type: ignore[attr-defined]
            yield env
        finally:
            stack.stop()


def ask(push: AcmeEnv, name: str, rdtype: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name + ".", rdtype), "127.0.0.1",
                         port=push.stack.dns_port, timeout=5)


def test_a_new_record_is_answered_without_a_reload_and_the_rest_comes_from_the_file(push):
    stack = push.stack
    assert stack.add(NAME, VALUE).status_code == 201
    stack.wait_served(NAME, {VALUE})
    assert stack.add(NAME, "Q" * 43, wait=True).status_code == 201  # "answered": by CoreDNS
    stack.wait_served(NAME, {VALUE, "Q" * 43}, timeout=0)
    assert stack.remove(NAME, VALUE).status_code == 200
    stack.remove(NAME, "Q" * 43)
    stack.wait_served(NAME, set())
    www = ask(push, "www.dev.local", "A")
    assert www.rcode() == dns.rcode.NOERROR and www.answer[0][0].to_text() == "127.0.0.1"
    assert ask(push, "dev.local", "SOA").answer  # from the file, as before


def test_issuance_validates_through_the_push_layout(push, tmp_path):
    issue_with_httpreq(push, tmp_path, "push.dev.local", f"lego httpreq, {push.layout} layout")


def test_with_dnsapi_down_challenge_names_fail_or_stay_and_nothing_else_changes(push):
    """Forwarded, a challenge name gets SERVFAIL while dnsapi is down; transferred, CoreDNS
    answers what it transferred last. Every other name is served as before either way."""
    stack = push.stack
    assert stack.add(NAME, VALUE, wait=True).status_code == 201
    stack.stop_dnsapi()
    try:
        if push.layout == "forward":
            assert ask(push, NAME, "TXT").rcode() == dns.rcode.SERVFAIL
        else:
            assert [rd.to_text() for rrset in ask(push, NAME, "TXT").answer for rd in rrset] == [f'"{VALUE}"']
        assert ask(push, "www.dev.local", "A").rcode() == dns.rcode.NOERROR
        # `dnsapi check` before dnsapi runs: the answers cannot be checked yet, which is no failure
        result = dnsapi_check(stack.config_path, stack.dir / "Corefile")
        assert (f"? dnsapi's answers on 127.0.0.1:{push.answers_port} answer _acme-challenge.dev.local"
                in result.stdout), result.stdout
        assert "answers _acme-challenge.dev.local (from dnsapi's answers)" not in result.stdout
    finally:
        stack.start_dnsapi()
    assert stack.remove(NAME, VALUE).status_code == 200
    stack.wait_served(NAME, set())


@pytest.mark.parametrize("push", ["push"], indirect=True)  # the layout that holds them in CoreDNS
def test_a_restarted_coredns_transfers_the_challenge_names_again(push):
    """CoreDNS keeps a transferred zone in memory only: started again, it transfers at once."""
    stack = push.stack
    assert stack.add(NAME, VALUE, wait=True).status_code == 201
    stack.coredns.stop()
    stack.coredns = start_coredns(stack.dir, stack.dns_port, ["dev.local"], stack.dir / "coredns.log")
    stack.wait_served(NAME, {VALUE})
    assert stack.remove(NAME, VALUE).status_code == 200
    stack.wait_served(NAME, set())


@pytest.mark.parametrize("push", ["push"], indirect=True)  # the layout with answers.notify
def test_only_the_notified_address_may_transfer(push):
    """The transfer holds the challenge names and the zone's SOA and NS, nothing else; from an
    address not in answers.notify (127.0.0.2 here) it is refused."""
    stack = push.stack
    assert stack.add(NAME, VALUE, wait=True).status_code == 201
    try:
        zone = dns.zone.Zone("dev.local.")
        dns.query.inbound_xfr("127.0.0.1", zone, port=push.answers_port, timeout=5)
        names = {name.to_text() for name in zone.nodes}
        assert "_acme-challenge.www" in names and "www" not in names and "@" in names, names
        with pytest.raises(dns.xfr.TransferError):
            dns.query.inbound_xfr("127.0.0.1", dns.zone.Zone("dev.local."), port=push.answers_port,
                                  timeout=5, source="127.0.0.2")
    finally:
        stack.remove(NAME, VALUE)
    stack.wait_served(NAME, set())


def test_hostile_queries_to_the_answers_port_change_nothing(push):
    """The answers listen only for CoreDNS, but anyone who reaches the port gets no more than a
    refusal: other names are REFUSED, garbage FORMERR or nothing, a huge TCP length closes."""
    stack, port = push.stack, push.answers_port
    zone_file = stack.zone_path.read_bytes()
    for name in ("www.dev.local", "dev.local", "_acme-challenge.www.example.com"):
        reply = dns.query.udp(dns.message.make_query(name + ".", "TXT"), "127.0.0.1", port=port,
                              timeout=5)
        assert reply.rcode() == dns.rcode.REFUSED and not reply.answer, name
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"\x12\x34" + bytes(range(40)), ("127.0.0.1", port))
        data, _ = sock.recvfrom(512)
        assert data[:2] == b"\x12\x34" and data[3] & 0xF == dns.rcode.FORMERR
    with socket.create_connection(("127.0.0.1", port), timeout=5) as tcp:
        tcp.sendall(b"\xff\xff" + b"\x00" * 100)
        tcp.shutdown(socket.SHUT_WR)
        assert tcp.recv(2) == b""  # the message never came whole: closed, nothing answered
    assert stack.zone_path.read_bytes() == zone_file
    assert ask(push, NAME, "TXT").rcode() == dns.rcode.NXDOMAIN  # and it still answers


def dnsapi_check(config: Path, corefile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dnsapi", "check", "-c", str(config),
                           "--corefile", str(corefile)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_dnsapi_check_sees_the_push_layout(push):
    stack = push.stack
    result = dnsapi_check(stack.config_path, stack.dir / "Corefile")
    how = "secondary" if push.layout == "push" else "forward"
    assert (f"✓ Corefile {stack.dir / 'Corefile'} takes dev.local's _acme-challenge names from "
            f"dnsapi's answers (127.0.0.1:{push.answers_port}) ({how})") in result.stdout, result.stdout
    assert (f"✓ dnsapi's answers on 127.0.0.1:{push.answers_port} answer _acme-challenge.dev.local"
            in result.stdout), result.stdout
    assert (f"✓ 127.0.0.1:{stack.dns_port} answers _acme-challenge.dev.local (from dnsapi's answers)"
            in result.stdout), result.stdout


def test_dnsapi_check_sees_a_coredns_taking_names_from_elsewhere(push, tmp_path):
    """A CoreDNS whose `forward` or `transfer from` names a port nobody answers on: it serves the
    zone, and every challenge name gets SERVFAIL (forwarded: none reach it; transferred: it
    never held any)."""
    stack = push.stack
    (tmp_path / "Corefile").write_text(push_corefile(free_port(), layout=push.layout).replace(
        "file db.dev.local", f"file {stack.zone_path}"))
    port = free_port()
    coredns = start_coredns(tmp_path, port, ["dev.local"], tmp_path / "coredns.log")
    try:
        config = yaml.safe_load(stack.config_path.read_text())
        config["dns_servers"] = [f"127.0.0.1:{port}"]
        (tmp_path / "dnsapi.yaml").write_text(yaml.safe_dump(config))
        result = dnsapi_check(tmp_path / "dnsapi.yaml", stack.dir / "Corefile")
    finally:
        coredns.stop()
    assert f"✓ dnsapi's answers on 127.0.0.1:{push.answers_port} answer" in result.stdout, result.stdout
    # SERVFAIL, or no answer within the check's 2 s (CoreDNS's forward has timeouts of its own)
    assert (f"✗ 127.0.0.1:{port} answers _acme-challenge.dev.local (from dnsapi's answers): "
            in result.stdout), result.stdout
    assert "check the address in its `forward` or `transfer from`" in result.stdout
    assert result.returncode != 0
