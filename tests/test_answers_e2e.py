"""The push layout (coredns/Corefile.push + `answers.listen`) through real CoreDNS, OpenBao and
lego. CoreDNS here polls the zone file only once an hour, so whatever it answers at a challenge
name within seconds came through dnsapi's answers, not through a reload."""

from __future__ import annotations

from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import pytest

from .helpers import free_port, openbao_server, push_corefile, start_stack
from .test_acme_e2e import AcmeEnv, issue_with_httpreq, setup_acme_pki

NAME = "_acme-challenge.www.dev.local"
VALUE = "P" * 43


@pytest.fixture(scope="module")
def push(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeEnv]:
    base = tmp_path_factory.mktemp("push")
    answers_port = free_port()

    def answers(config: dict[str, object]) -> None:
        config["answers"] = {"listen": f"127.0.0.1:{answers_port}"}

    with openbao_server(base, tls=True) as vault:
        stack = start_stack(base / "stack", vault, prefix="push", edit=answers,
                            corefile=push_corefile(answers_port, reload="1h"))
        try:
            root_pem = base / "root.pem"
            root_pem.write_text(setup_acme_pki(vault, stack.dns_port))
            yield AcmeEnv(stack, vault, f"{vault.addr}/v1/pki/roles/acme/acme/directory", root_pem,
                          base, 0, {})
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
    issue_with_httpreq(push, tmp_path, "push.dev.local", "lego httpreq, push layout")


def test_with_dnsapi_down_challenge_names_fail_and_nothing_else_does(push):
    stack = push.stack
    stack.stop_dnsapi()
    try:
        assert ask(push, NAME, "TXT").rcode() == dns.rcode.SERVFAIL
        assert ask(push, "www.dev.local", "A").rcode() == dns.rcode.NOERROR
    finally:
        stack.start_dnsapi()
    stack.wait_served(NAME, set())
