"""`dnsapi check`'s Corefile reading and checklist, without servers (the live checks are in
test_operations_e2e.py and test_answers_e2e.py; here their verdicts on crafted replies)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from dnsapi.check import Checklist, _answers, _corefile_push, _corefile_zone, _dns, parse_corefile
from dnsapi.config import ZoneConfig

ZONE = ZoneConfig(name="dev.local", file=Path("/var/lib/dnsapi/zones/db.dev.local"))
COREFILE = Path("/etc/coredns/Corefile")


def check(text: str) -> list[tuple[bool, str]]:
    checks = Checklist()
    _corefile_zone(ZONE, parse_corefile(text), COREFILE, checks)
    return [(item.ok, item.text) for item in checks.items]


def test_parses_blocks_comments_quotes_and_sub_blocks():
    blocks = parse_corefile('''
# comment { not a block
dns://dev.local:53 other.local. {   # trailing comment
    bind 127.0.0.1 ::1
    file "/var/lib/dnsapi/zones/db.dev.local" dev.local {
        reload 2s
    }
    log
}
.:53 { forward . 127.0.0.1:5300 }
''')
    assert [b.zones for b in blocks] == [["dev.local", "other.local"], ["."]]
    file = blocks[0].directives[1]
    assert (file.name, file.args, file.block[0].args) == ("file", ["/var/lib/dnsapi/zones/db.dev.local",
                                                                   "dev.local"], ["2s"])
    assert blocks[1].directives[0].args == [".", "127.0.0.1:5300"]


@pytest.mark.parametrize("text", ["dev.local {", "dev.local { file x } }"])
def test_unbalanced_braces_are_an_error(text):
    with pytest.raises(ValueError, match="unbalanced"):
        parse_corefile(text)


def test_a_good_block_passes():
    assert check("dev.local { file /var/lib/dnsapi/zones/db.dev.local { reload 1s } }") == [
        (True, "Corefile /etc/coredns/Corefile serves dev.local with the file plugin from "
               "/var/lib/dnsapi/zones/db.dev.local, reload 1s")]
    # relative to `root`; reload defaults to CoreDNS's 1m
    assert check("dev.local {\n root /var/lib/dnsapi/zones\n file db.dev.local\n}")[0][0]


@pytest.mark.parametrize(("text", "problem"), [
    ("other.local { file /var/lib/dnsapi/zones/db.dev.local }", "serves dev.local with the file plugin"),
    ("dev.local { file /etc/coredns/db.dev.local }", "it serves /etc/coredns/db.dev.local"),
    ("dev.local { file /var/lib/dnsapi/zones/db.dev.local { reload 0 } }", "reload 0"),
    ("dev.local {\n file /var/lib/dnsapi/zones/db.dev.local\n cache 30\n}", "no cache in front"),
])
def test_problems_are_failed_items_with_a_fix(text, problem):
    checks = Checklist()
    _corefile_zone(ZONE, parse_corefile(text), COREFILE, checks)
    failed = [item for item in checks.items if not item.ok]
    assert len(failed) == 1 and problem in failed[0].text and failed[0].fix
    assert not checks.passed and "1 failed" in checks.render()


FORWARD = """
dev.local {
    view challenges {
        expr name() matches '^_acme-challenge[.]'
    }
    forward . 127.0.0.1:5354 {
        max_fails 0
    }
}
dev.local {
    file /var/lib/dnsapi/zones/db.dev.local {
        reload 250ms
    }
}
"""
PUSH = FORWARD.replace("forward . 127.0.0.1:5354 {\n        max_fails 0",
                       "secondary {\n        transfer from 127.0.0.1:5354")
NOTIFY = (("127.0.0.1", 1053),)


def push_items(text: str, listen: tuple[str, int] = ("127.0.0.1", 5354),
               notify: tuple[tuple[str, int], ...] | None = None) -> list[Any]:
    """The push block's checklist items; `notify` defaults to a CoreDNS on loopback of
    listen's family."""
    if notify is None:
        notify = (("::1", 1053),) if ":" in listen[0] else NOTIFY
    checks = Checklist()
    config = SimpleNamespace(challenge_label="_acme-challenge",
                             answers=SimpleNamespace(listen=listen, notify=notify))
    _corefile_push(config, ZONE, parse_corefile(text), COREFILE, checks)  # type: ignore[arg-type]
    return checks.items


def push_check(text: str, listen: tuple[str, int] = ("127.0.0.1", 5354),
               notify: tuple[tuple[str, int], ...] | None = None) -> list[tuple[bool, str]]:
    return [(item.ok, item.text) for item in push_items(text, listen, notify)]


@pytest.mark.parametrize(("name", "how"), [("Corefile.push", "secondary"), ("Corefile.forward", "forward")])
def test_the_shipped_push_layouts_pass(name, how):
    shipped = (Path(__file__).resolve().parent.parent / "coredns" / name).read_text()
    assert push_check(shipped) == [(True, "Corefile /etc/coredns/Corefile takes dev.local's "
                                          "_acme-challenge names from dnsapi's answers "
                                          f"(127.0.0.1:5354) ({how})")]


def test_a_transfer_without_notify_fails_with_a_fix():
    [(ok, text)] = push_check(PUSH, notify=())
    assert not ok and "answers.notify is empty" in text
    assert push_check(FORWARD, notify=())[0][0]  # a forward needs no NOTIFY


@pytest.mark.parametrize("layout", [PUSH, FORWARD])
def test_an_ipv6_answers_address_is_matched_as_coredns_writes_it(layout):
    assert push_check(layout.replace("127.0.0.1:5354", "[::1]:5354"), ("::1", 5354))[0][0]


@pytest.mark.parametrize(("address", "listen", "ok"), [
    ("127.0.0.1:5354", ("0.0.0.0", 5354), True),  # a listener on every address takes loopback
    ("192.0.2.1:5354", ("0.0.0.0", 5354), False),  # ... not another host's (TEST-NET-1)
    ("[::1]:5354", ("0.0.0.0", 5354), False),  # 0.0.0.0 takes no IPv6
    ("[::1]:5354", ("::", 5354), True),
    ("127.0.0.1:5354", ("::", 5354), False),  # asyncio binds the TCP side of :: IPv6-only
    ("127.0.0.1:5355", ("0.0.0.0", 5354), False),
    ("127.0.0.2:5354", ("127.0.0.1", 5354), False),
])
@pytest.mark.parametrize("layout", [PUSH, FORWARD])
def test_the_source_is_matched_against_where_the_answers_listen(address, listen, ok, layout):
    [(passed, text)] = push_check(layout.replace("127.0.0.1:5354", address), listen)
    assert passed == ok, text


def test_a_forward_reaches_answers_on_every_address_at_any_address_of_this_host():
    assert push_check(FORWARD.replace("127.0.0.1:5354", "dns://127.0.0.2:5354"), ("0.0.0.0", 5354))[0][0]


def test_a_transfer_from_answers_on_every_address_names_where_the_notify_comes_from():
    """Listening on 0.0.0.0, dnsapi's NOTIFY to 127.0.0.1 leaves from 127.0.0.1: a CoreDNS
    that names 127.0.0.2 in `transfer from` would drop it."""
    assert push_check(PUSH, ("0.0.0.0", 5354))[0][0]
    [item] = push_items(PUSH.replace("127.0.0.1:5354", "127.0.0.2:5354"), ("0.0.0.0", 5354))
    assert not item.ok and "NOTIFY comes from 127.0.0.1" in item.text
    assert "name 127.0.0.1:5354 in `transfer from`" in item.fix


def test_the_fix_for_answers_on_every_address_names_loopback():
    [item] = push_items(PUSH.replace("127.0.0.1:5354", "127.0.0.1:9"), ("0.0.0.0", 5354))
    assert not item.ok and "`transfer from 127.0.0.1:5354`" in item.fix


@pytest.mark.parametrize(("text", "listen", "problem"), [
    (PUSH, ("127.0.0.1", 5399), "another label or address"),
    (FORWARD, ("127.0.0.1", 5399), "another label or address"),
    (PUSH.replace("_acme-challenge", "_other"), ("127.0.0.1", 5354), "another label or address"),
    ("\n".join(PUSH.split("\n")[9:] + PUSH.split("\n")[:9]), ("127.0.0.1", 5354), "comes first"),
    (PUSH.replace("5354\n    }", "5354\n    }\n    cache 30"), ("127.0.0.1", 5354), "without cache"),
    (FORWARD.replace("max_fails 0\n    }", "max_fails 0\n    }\n    cache 30"), ("127.0.0.1", 5354),
     "without cache"),
    ("dev.local { file /var/lib/dnsapi/zones/db.dev.local }", ("127.0.0.1", 5354), "takes"),
])
def test_push_layout_problems_are_failed_items_with_a_fix(text, listen, problem):
    [(ok, text_)] = push_check(text, listen)
    assert not ok and problem in text_


def answered(rcode: int, authoritative: bool = True) -> dns.message.Message:
    response = dns.message.make_response(dns.message.make_query("_acme-challenge.dev.local.", "TXT"))
    response.set_rcode(rcode)
    if not authoritative:
        response.flags &= ~dns.flags.AA
    else:
        response.flags |= dns.flags.AA
    return response


def live_check(monkeypatch: pytest.MonkeyPatch, answers: object, server: object
               ) -> list[tuple[bool | None, str]]:
    """`_dns` with answers on 127.0.0.1:5354 and one DNS server on 127.0.0.1:1053, whose
    replies to the challenge name are `answers` and `server` (a message, or an exception to raise);
    the server answers the SOA."""
    def ask(host: str, port: int, name: str, rdtype: object) -> dns.message.Message:
        if rdtype == dns.rdatatype.SOA:
            response = dns.message.make_response(dns.message.make_query(name + ".", "SOA"))
            response.flags |= dns.flags.AA
            response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "SOA",
                                                       "ns1 admin 7 3600 600 86400 60"))
            return response
        reply = answers if port == 5354 else server
        if isinstance(reply, Exception):
            raise reply
        assert isinstance(reply, dns.message.Message)
        return reply

    monkeypatch.setattr("dnsapi.check._query", ask)
    config = SimpleNamespace(zones=[ZONE], dns_servers=[("127.0.0.1", 1053)],
                             challenge_label="_acme-challenge",
                             answers=SimpleNamespace(listen=("127.0.0.1", 5354)))
    checks = Checklist()
    _dns(config, {"dev.local": 7}, checks)  # type: ignore[arg-type]
    return [(item.ok, item.text) for item in checks.items]


def test_answers_and_the_forward_to_them_are_asked_live(monkeypatch):
    items = live_check(monkeypatch, answered(dns.rcode.NXDOMAIN), answered(dns.rcode.NXDOMAIN))
    assert items == [
        (True, "dnsapi's answers on 127.0.0.1:5354 answer _acme-challenge.dev.local"),
        (True, "127.0.0.1:1053 answers the SOA of dev.local authoritatively (serial 7)"),
        (True, "127.0.0.1:1053 answers _acme-challenge.dev.local (from dnsapi's answers)"),
    ]


@pytest.mark.parametrize(("answers", "server", "expected"), [
    # dnsapi not running: not checked (no failure), and the forward is not asked
    (dns.exception.Timeout(), answered(dns.rcode.SERVFAIL), [None, True]),
    (ConnectionRefusedError(), answered(dns.rcode.SERVFAIL), [None, True]),
    # something else on the port, or a config without this zone
    (answered(dns.rcode.REFUSED), answered(dns.rcode.SERVFAIL), [False, True]),
    (answered(dns.rcode.NOERROR, authoritative=False), answered(dns.rcode.NOERROR), [False, True]),
    # CoreDNS's forward reaches nothing, or CoreDNS is gone
    (answered(dns.rcode.NOERROR), answered(dns.rcode.SERVFAIL), [True, True, False]),
    (answered(dns.rcode.NOERROR), dns.exception.Timeout(), [True, True, False]),
])
def test_live_answers_problems(monkeypatch, answers, server, expected):
    assert [ok for ok, _ in live_check(monkeypatch, answers, server)] == expected


def test_answers_listening_on_every_address_are_asked_on_loopback():
    """answers.listen 0.0.0.0: a query sent to 0.0.0.0 is answered from 127.0.0.1, which
    dnspython refuses as an unexpected source; the check asks 127.0.0.1 instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]

        def answer_once() -> None:
            wire, client = server.recvfrom(512)
            reply = dns.message.make_response(dns.message.from_wire(wire))
            reply.flags |= dns.flags.AA
            reply.set_rcode(dns.rcode.NXDOMAIN)
            server.sendto(reply.to_wire(), client)

        responder = threading.Thread(target=answer_once, daemon=True)
        responder.start()
        config = SimpleNamespace(zones=[ZONE], challenge_label="_acme-challenge",
                                 answers=SimpleNamespace(listen=("0.0.0.0", port)))
        checks = Checklist()
        assert _answers(config, checks) == {"dev.local"}  # type: ignore[arg-type]
        responder.join(5)
    assert [(item.ok, item.text) for item in checks.items] == [
        (True, f"dnsapi's answers on 0.0.0.0:{port} answer _acme-challenge.dev.local")]
