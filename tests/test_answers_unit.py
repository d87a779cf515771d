"""dnsapi/answers.py in-process: what the challenge answers say for each kind of question, from
what the zone file holds (a real zone file, helpers.MemoryStore in place of Vault)."""

from __future__ import annotations

import time

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.update
import pytest

from dnsapi import transfer as transfer_module
from dnsapi.answers import ChallengeAnswers, _Replies
from dnsapi.config import Config
from dnsapi.records import Record

from .helpers import running, service_config

pytestmark = pytest.mark.unit

WWW = "_acme-challenge.www.dev.local"
OPERATOR_RECORDS = """
_acme-challenge.legacy IN TXT "set-by-hand"
x._acme-challenge.deep IN TXT "below a challenge name"
"""


def config(tmp_path) -> Config:
    config, _ = service_config(tmp_path, answers={"listen": "127.0.0.1:1"},
                               acme_dns={"zone": "acme.dev.local"})
    with config.zones[0].file.open("a") as zone:
        zone.write(OPERATOR_RECORDS)
    return config


async def ask(answers: ChallengeAnswers, name: str, rdtype: str = "TXT", **options
              ) -> dns.message.Message:
    query = dns.message.make_query(name + ".", rdtype, **options)
    reply = await answers.handle(query.to_wire(), "127.0.0.1", False)
    assert reply is not None
    return dns.message.from_wire(reply)


def texts(reply: dns.message.Message) -> dict[tuple[str, str], set[str]]:
    return {(rrset.name.to_text(omit_final_dot=True), dns.rdatatype.to_text(rrset.rdtype)):
            {rd.to_text().strip('"') for rd in rrset} for rrset in reply.answer}


async def test_challenge_records_are_answered_as_the_zone_file_holds_them(tmp_path):
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        assert (await ask(answers, WWW)).rcode() == dns.rcode.NXDOMAIN
        await service.add(service.make_record(WWW, "v1"))
        await service.add(service.make_record(WWW, "v2"))
        reply = await ask(answers, WWW)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        assert texts(reply) == {(WWW, "TXT"): {"v1", "v2"}}
        await service.remove(WWW, "v1")
        assert texts(await ask(answers, WWW.upper())) == {(WWW.upper(), "TXT"): {"v2"}}


async def test_negative_answers_carry_the_soa_the_file_holds_now(tmp_path):
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        await service.add(service.make_record(WWW, "v1"))
        serial = service.writers["dev.local"].file.served.serial  # type: ignore[union-attr]
        for name, rdtype, rcode in [("_acme-challenge.nothing.dev.local", "TXT", dns.rcode.NXDOMAIN),
                                    (WWW, "A", dns.rcode.NOERROR),  # NODATA
                                    ("_acme-challenge.deep.dev.local", "TXT", dns.rcode.NOERROR)]:
            reply = await ask(answers, name, rdtype)
            assert reply.rcode() == rcode and not reply.answer, name
            assert [rrset[0].serial for rrset in reply.authority] == [serial], name


async def test_the_operators_own_records_at_challenge_names_are_answered(tmp_path):
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        reply = await ask(answers, "_acme-challenge.legacy.dev.local")
        assert texts(reply) == {("_acme-challenge.legacy.dev.local", "TXT"): {"set-by-hand"}}


async def test_an_acme_dns_cname_is_answered_with_its_target(tmp_path):
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        account = "0b5b9ba4-29a8-4b41-a72a-0b1d4e3d2a11.acme.dev.local"
        await service.add(service.make_cname("api.dev.local", account, "admin"))
        await service.add(Record(account, "t" * 43, 60, time.time(), "acme-dns"))
        name = "_acme-challenge.api.dev.local"
        assert texts(await ask(answers, name)) == {(name, "CNAME"): {account + "."},
                                                   (account, "TXT"): {"t" * 43}}
        assert texts(await ask(answers, name, "CNAME")) == {(name, "CNAME"): {account + "."}}


async def test_an_answer_too_long_for_udp_is_truncated_and_whole_over_tcp(tmp_path):
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        values = {f"{i:02d}" + "v" * 41 for i in range(30)}
        for value in values:
            await service.add(service.make_record(WWW, value))
        wire = dns.message.make_query(WWW + ".", "TXT").to_wire()
        udp = dns.message.from_wire(await answers.handle(wire, "127.0.0.1", False) or b"")
        assert udp.flags & dns.flags.TC and not udp.answer
        tcp = dns.message.from_wire(await answers.handle(wire, "127.0.0.1", True) or b"")
        assert texts(tcp) == {(WWW, "TXT"): values}
        # A client offering a 64 KiB UDP size gets no more than 1232 bytes: a small query must
        # not draw a large reply at whoever its source address names.
        offered = dns.message.make_query(WWW + ".", "TXT", use_edns=0, payload=65535).to_wire()
        big = await answers.handle(offered, "127.0.0.1", False)
        assert isinstance(big, bytes) and len(big) <= 1232
        assert dns.message.from_wire(big).flags & dns.flags.TC


@pytest.mark.parametrize("name, rdclass", [("www.dev.local", "IN"), ("dev.local", "IN"),
                                           ("_acme-challenge.www.example.com", "IN"),
                                           (WWW, "CH")])
async def test_anything_but_a_challenge_name_is_refused(tmp_path, name, rdclass):
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        query = dns.message.make_query(name + ".", "TXT", rdclass)
        reply = await answers.handle(query.to_wire(), "127.0.0.1", False)
        assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED


async def test_malformed_and_odd_messages(tmp_path):
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        wire = dns.message.make_query(WWW + ".", "TXT").to_wire()
        assert await answers.handle(wire[:5], "127.0.0.1", False) is None  # no header
        formerr = await answers.handle(wire[:-3], "127.0.0.1", False)
        assert formerr is not None and formerr[:2] == wire[:2] and formerr[3] & 0xF == dns.rcode.FORMERR
        response = dns.message.make_response(dns.message.from_wire(wire)).to_wire()
        assert await answers.handle(response, "127.0.0.1", False) is None  # never answer a reply
        assert await answers.handle(response[:-3], "127.0.0.1", False) is None  # ...nor a broken one
        newer = dns.message.make_query(WWW + ".", "TXT", use_edns=1)
        reply = await answers.handle(newer.to_wire(), "127.0.0.1", False)
        assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.BADVERS
        # Labels `_acme-challenge`, `www.dev`, `local`: its text ends in "dev.local", the name does not.
        dotted = dns.message.make_query(dns.name.Name([b"_acme-challenge", b"www.dev", b"local", b""]), "TXT")
        reply = await answers.handle(dotted.to_wire(), "127.0.0.1", False)
        assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.REFUSED
        notify = dns.message.make_query("dev.local.", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        reply = await answers.handle(notify.to_wire(), "127.0.0.1", False)
        assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.NOTIMP


async def test_a_record_the_zone_file_cannot_hold_is_not_answered(tmp_path):
    """Vault may hold what the file leaves out (here: a CNAME the operator added by hand at the
    name): the answers say what the file says."""
    async with running(config(tmp_path)) as (service, store):
        answers = ChallengeAnswers(service.config, service)
        with service.config.zones[0].file.open("a") as zone:
            zone.write(f"{WWW}. IN CNAME elsewhere.example.\n")
        store.put("dev.local", Record(WWW, "v", 60, time.time(), "acme"))
        await service.reconcile()
        assert store.zones["dev.local"].records  # Vault has the TXT record...
        assert texts(await ask(answers, WWW)) == {(WWW, "CNAME"): {"elsewhere.example."}}  # ...the file not


async def test_a_question_asked_again_gets_its_own_id_and_what_the_file_holds_now(tmp_path):
    """Replies are kept by the question's bytes: each copy carries the id it answers, and a
    rewrite of any zone file retires them all."""
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        query = dns.message.make_query(WWW + ".", "TXT")
        replies = []
        for ident in (1, 2, 0xFFFF):
            query.id = ident
            replies.append(await answers.handle(query.to_wire(), "127.0.0.1", False) or b"")
        assert [dns.message.from_wire(r).id for r in replies] == [1, 2, 0xFFFF]
        assert len({r[2:] for r in replies}) == 1
        await service.add(service.make_record(WWW, "v1"))
        query.id = 3
        reply = dns.message.from_wire(await answers.handle(query.to_wire(), "127.0.0.1", False) or b"")
        assert reply.id == 3 and texts(reply) == {(WWW, "TXT"): {"v1"}}
        await service.remove(WWW, "v1")
        reply = dns.message.from_wire(await answers.handle(query.to_wire(), "127.0.0.1", False) or b"")
        assert reply.rcode() == dns.rcode.NXDOMAIN
        counted = service.metrics.registry.get_sample_value("dnsapi_answers_total", {"rcode": "NXDOMAIN"})
        assert counted == 4  # each reply is counted, worked out or kept


async def test_kept_replies_stay_within_their_bound(tmp_path, monkeypatch):
    """Anyone who reaches the port can ask new questions: what is kept stays bounded."""
    monkeypatch.setattr(_Replies, "MAX_BYTES", 2000)
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        for i in range(100):
            name = f"_acme-challenge.n{i}.dev.local"
            reply = await ask(answers, name)
            assert reply.rcode() == dns.rcode.NXDOMAIN and reply.question[0].name.to_text() == name + "."
            assert 0 < answers._replies._bytes <= 2000


async def test_a_question_asked_again_is_not_worked_out_again(tmp_path, monkeypatch):
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        worked = []
        work_out = answers._work_out
        monkeypatch.setattr(answers, "_work_out", lambda query, tcp: worked.append(1) or work_out(query, tcp))
        for _ in range(3):
            assert (await ask(answers, WWW)).rcode() == dns.rcode.NXDOMAIN
        assert len(worked) == 1
        await ask(answers, WWW, use_edns=0)  # other bytes: another question
        assert len(worked) == 2


async def test_a_reconcile_that_finds_nothing_new_keeps_the_replies(tmp_path, monkeypatch):
    """Every 10 s dnsapi reconciles each zone from Vault; when the file already holds what Vault
    has, what is served stays the same object, so kept replies and the transfer stay kept."""
    async with running(config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        await service.add(service.make_record(WWW, "v1"))
        worked = []
        work_out = answers._work_out
        monkeypatch.setattr(answers, "_work_out", lambda query, tcp: worked.append(1) or work_out(query, tcp))
        served = service.writers["dev.local"].file.served
        await ask(answers, WWW)
        await service.reconcile()
        assert service.writers["dev.local"].file.served is served
        await ask(answers, WWW)
        assert len(worked) == 1
        await service.add(service.make_record(WWW, "v2"))  # a change is worked out afresh
        assert texts(await ask(answers, WWW)) == {(WWW, "TXT"): {"v1", "v2"}} and len(worked) == 2

def transfer_config(tmp_path) -> Config:
    """config() with a CoreDNS at 127.0.0.2 in answers.notify: the one address that may transfer."""
    config_, _ = service_config(tmp_path, answers={"listen": "127.0.0.1:1", "notify": ["127.0.0.2:53"]},
                                acme_dns={"zone": "acme.dev.local"})
    with config_.zones[0].file.open("a") as zone:
        zone.write(OPERATOR_RECORDS)
    return config_


async def transfer(answers: ChallengeAnswers, remote: str = "127.0.0.2", tcp: bool = True,
                   zone: str = "dev.local") -> list[dns.message.Message]:
    reply = await answers.handle(dns.message.make_query(zone + ".", "AXFR").to_wire(), remote, tcp)
    assert reply is not None
    # one RR per RRset: as a transfer is read (the SOA comes first and last)
    return [dns.message.from_wire(m, one_rr_per_rrset=True)
            for m in ([reply] if isinstance(reply, bytes) else reply)]


async def test_the_zone_soa_is_answered_with_the_serial_the_file_holds(tmp_path):
    """What a secondary asks before it transfers: only the apex SOA, nothing else at the apex."""
    async with running(transfer_config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        await service.add(service.make_record(WWW, "v1"))
        reply = await ask(answers, "dev.local", "SOA")
        serial = service.writers["dev.local"].file.served.serial  # type: ignore[union-attr]
        assert reply.flags & dns.flags.AA and [rrset[0].serial for rrset in reply.answer] == [serial]
        assert (await ask(answers, "dev.local", "NS")).rcode() == dns.rcode.REFUSED


async def test_a_plain_soa_query_is_answered_in_wire_form_as_dnspython_would(tmp_path):
    """The SOA a secondary asks after every NOTIFY skips parsing (dnsapi/transfer.py): the reply
    is the one the general path builds, with the question as asked and the current serial."""
    async with running(transfer_config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        for value in ("v1", "v2"):
            await service.add(service.make_record(WWW, value))
            served = service.writers["dev.local"].file.served
            assert served is not None
            for name, tcp in (("dev.local.", True), ("DeV.LoCaL.", False)):
                query = dns.message.make_query(name, "SOA")
                assert answers.transfers.soa_question(query.to_wire()) == "dev.local"
                expected = dns.message.make_response(query)
                expected.flags |= dns.flags.AA
                expected.answer.append(dns.rrset.from_rdata_list(query.question[0].name,
                                                                 served.soa().ttl, list(served.soa())))
                wire = query.to_wire()
                reply = await answers.handle(wire, "127.0.0.1", tcp)
                assert isinstance(reply, bytes) and dns.message.from_wire(reply) == expected
                # (Message equality passes over TTLs and the case of names: those by hand)
                assert reply[12:len(wire)] == wire[12:]  # the question as asked, case and all
                assert dns.message.from_wire(reply).answer[0].ttl == served.soa().ttl
                assert dns.message.from_wire(reply).answer[0][0].serial == served.serial


async def test_a_plain_soa_reply_too_long_for_udp_takes_the_general_path(tmp_path):
    """An operator's SOA with long names makes a reply over 512 bytes: over UDP without EDNS
    it is truncated (TC), as dnspython's path does, and whole over TCP."""
    config_ = transfer_config(tmp_path)
    path = config_.zones[0].file
    # Names of 253 bytes that share no suffix: no compression makes the reply short.
    mname, rname = ".".join(["a" * 62] * 4) + ".", ".".join(["b" * 62] * 4) + "."
    path.write_text(path.read_text().replace("ns1.dev.local. hostmaster.dev.local.", f"{mname} {rname}", 1))
    async with running(config_) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        wire = dns.message.make_query("dev.local.", "SOA").to_wire()
        udp = await answers.handle(wire, "127.0.0.1", False)
        assert isinstance(udp, bytes) and len(udp) <= 512
        assert dns.message.from_wire(udp).flags & dns.flags.TC
        tcp = await answers.handle(wire, "127.0.0.1", True)
        assert isinstance(tcp, bytes) and len(tcp) > 512
        assert dns.message.from_wire(tcp).answer[0][0].mname.to_text() == mname


@pytest.mark.parametrize("query", [
    dns.message.make_query("dev.local.", "SOA", use_edns=0),  # EDNS: the general path
    dns.message.make_query("www.dev.local.", "SOA"),
    dns.message.make_query("dev.local.", "NS"),
    dns.message.make_query("dev.local.", "SOA", rdclass="CH"),
    dns.update.UpdateMessage("dev.local."),
    dns.message.make_response(dns.message.make_query("dev.local.", "SOA")),  # QR set: a reply
])
async def test_only_a_plain_apex_soa_query_takes_the_wire_form_path(tmp_path, query):
    async with running(transfer_config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        wire = query.to_wire()
        assert answers.transfers.soa_question(wire) is None
        reply = await answers.handle(wire, "127.0.0.1", False)
        if query.flags & dns.flags.QR:
            assert reply is None  # a reply is not answered
        else:
            assert reply is not None and dns.message.from_wire(reply).id == query.id


async def test_a_transfer_holds_the_challenge_names_and_nothing_else(tmp_path):
    async with running(transfer_config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        account = "0b5b9ba4-29a8-4b41-a72a-0b1d4e3d2a11.acme.dev.local"
        await service.add(service.make_record(WWW, "v1"))
        await service.add(service.make_cname("api.dev.local", account, "admin"))
        await service.add(Record(account, "t" * 43, 60, time.time(), "acme-dns"))
        await service.add(Record("4c1c1d0e-0000-4000-8000-000000000000.acme.dev.local", "u" * 43, 60,
                                 time.time(), "acme-dns"))  # no CNAME points here: not transferred
        [message] = await transfer(answers)
        serial = service.writers["dev.local"].file.served.serial  # type: ignore[union-attr]
        rrsets = message.answer
        assert message.flags & dns.flags.AA and message.rcode() == dns.rcode.NOERROR
        assert rrsets[0].rdtype == rrsets[-1].rdtype == dns.rdatatype.SOA
        assert rrsets[0][0].serial == rrsets[-1][0].serial == serial
        held: dict[tuple[str, str], set[str]] = {}
        for rrset in rrsets[1:-1]:
            held.setdefault((rrset.name.to_text(omit_final_dot=True),
                             dns.rdatatype.to_text(rrset.rdtype)), set()).add(rrset[0].to_text().strip('"'))
        assert held == {
            ("dev.local", "NS"): {"ns1.dev.local."},
            (WWW, "TXT"): {"v1"},
            ("_acme-challenge.api.dev.local", "CNAME"): {account + "."},
            (account, "TXT"): {"t" * 43},
            ("_acme-challenge.legacy.dev.local", "TXT"): {"set-by-hand"},
            ("x._acme-challenge.deep.dev.local", "TXT"): {"below a challenge name"},
        }


@pytest.mark.parametrize(("remote", "tcp", "zone"), [
    ("127.0.0.1", True, "dev.local"),  # not in answers.notify
    ("not an address", True, "dev.local"),
    ("127.0.0.2", False, "dev.local"),  # a transfer over UDP
    ("127.0.0.2", True, "example.com"),  # a zone dnsapi does not hold
])
async def test_a_transfer_to_anyone_else_is_refused(tmp_path, remote, tcp, zone):
    async with running(transfer_config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        await service.add(service.make_record(WWW, "v1"))
        [message] = await transfer(answers, remote, tcp, zone)
        assert message.rcode() == dns.rcode.REFUSED and not message.answer


async def test_a_transfer_allowed_once_is_refused_to_another_asking_the_same(tmp_path):
    """Replies to repeated questions are kept by their bytes; a transfer depends on who asks."""
    async with running(transfer_config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        await service.add(service.make_record(WWW, "v1"))
        assert (await transfer(answers, "127.0.0.2"))[0].answer
        [refused] = await transfer(answers, "127.0.0.1")
        assert refused.rcode() == dns.rcode.REFUSED and not refused.answer


async def test_a_large_transfer_is_split_into_messages(tmp_path):
    async with running(transfer_config(tmp_path)) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        values = {f"{i:03d}" + "v" * 40 for i in range(200)}
        for i, value in enumerate(sorted(values)):
            await service.add(service.make_record(f"_acme-challenge.h{i % 150}.dev.local", value))
        await service.add(service.make_record(WWW, "w"))
        messages = await transfer(answers)
        assert len(messages) > 1 and all(m.flags & dns.flags.AA for m in messages)
        # framed as a transfer: the SOA first of all and last of all, nowhere else
        soas = [(i, j) for i, m in enumerate(messages) for j, rrset in enumerate(m.answer)
                if rrset.rdtype == dns.rdatatype.SOA]
        assert soas == [(0, 0), (len(messages) - 1, len(messages[-1].answer) - 1)]
        records = [(rrset.name.to_text(), rd.to_text().strip('"')) for m in messages
                   for rrset in m.answer if rrset.rdtype == dns.rdatatype.TXT for rd in rrset]
        assert {value for _, value in records} >= values | {"w"}
        assert len(records) == len(set(records))


async def test_a_transfer_re_encodes_only_the_names_that_changed_in_every_zone(tmp_path, monkeypatch):
    """Each name's records are kept encoded between transfers, per zone: transferring one zone
    does not throw away what another zone kept."""
    config_ = transfer_config(tmp_path)
    (tmp_path / "db.other.test").write_text((tmp_path / "db.dev.local").read_text())
    config_ = config_.model_copy(update={"zones": [*config_.zones, config_.zones[0].model_copy(
        update={"name": "other.test", "file": tmp_path / "db.other.test"})]})
    encoded: list[str] = []
    real = transfer_module._dnsapi_records
    monkeypatch.setattr(transfer_module, "_dnsapi_records",
                        lambda name, records: encoded.append(name) or real(name, records))
    async with running(config_) as (service, _):
        answers = ChallengeAnswers(service.config, service)
        for zone in ("dev.local", "other.test"):
            for host in ("a", "b", "c"):
                await service.add(service.make_record(f"_acme-challenge.{host}.{zone}", "v1"))
        await transfer(answers, zone="dev.local")
        await transfer(answers, zone="other.test")
        await service.add(service.make_record("_acme-challenge.a.dev.local", "v2"))
        encoded.clear()
        messages = await transfer(answers, zone="dev.local")
        assert encoded == ["_acme-challenge.a.dev.local"]
        assert {rrset.name.to_text() for m in messages for rrset in m.answer
                if rrset.rdtype == dns.rdatatype.TXT} >= {f"_acme-challenge.{h}.dev.local." for h in "abc"}
