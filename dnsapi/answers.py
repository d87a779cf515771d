"""Challenge names served by dnsapi itself, to CoreDNS, without waiting for a reload poll.

CoreDNS's `file` plugin sees a rewritten zone file only at its next `reload` tick, so a new
record is answered about half an interval after it was acknowledged, and a shorter interval
costs CPU even when nothing changes (bench/README.md). With `answers.listen` set, dnsapi serves
each zone's challenge names on that address in one of two ways (docs/latency.md):

- transferred: a CoreDNS `secondary` block takes the challenge names (coredns/Corefile.push)
  and transfers them from here (SOA, AXFR) whenever dnsapi's NOTIFY says they changed
  (dnsapi/notify.py). CoreDNS then answers them from memory, as it answers the zone file.
- forwarded: a CoreDNS `forward` block sends each challenge-name query here
  (coredns/Corefile.forward).

Either way CoreDNS keeps serving every other name from the operator's zone file, and what is
served here is what the zone file holds — dnsapi's block as last written, and the operator's own
records at `_label` names — so a record is served once it is acknowledged (in Vault and in the
file), and never one the file does not hold.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections import defaultdict
from collections.abc import Mapping

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from .config import Config
from .dns_listener import DnsListener, formerr, reply_limit
from .names import zone_for
from .records import Key, Record
from .service import RecordService
from .transfer import Transfers
from .zonefile import Served

log = logging.getLogger(__name__)


class ChallengeAnswers:
    """Answers queries for `<challenge label>.*` names in the configured zones; REFUSED for any
    other name."""

    def __init__(self, config: Config, service: RecordService) -> None:
        assert config.answers is not None
        self.config = config
        self.service = service
        self.listener = DnsListener(self.handle, service.metrics)
        self._index: dict[str, tuple[Mapping[Key, Record], dict[str, list[Record]]]] = {}
        self._parents: dict[str, tuple[object, frozenset[str]]] = {}
        self._replies = _Replies()
        self.transfers = Transfers(config.challenge_label, config.zone_names)
        # who may transfer: the answers.notify addresses (asked at every transfer)
        self._transferees = frozenset(ipaddress.ip_address(host) for host, _ in config.answers.notify)

    async def start(self) -> None:
        assert self.config.answers is not None
        host, port = self.config.answers.listen
        await self.listener.start(host, port)
        log.info("challenge answers on %s:%d (UDP and TCP)", host, port)

    async def close(self) -> None:
        await self.listener.close()

    async def handle(self, wire: bytes, remote: str, tcp: bool) -> bytes | list[bytes] | None:
        """The reply to `wire`: the one worked out before for the same bytes (the id aside)
        while the zone files hold what they held then, else worked out now. A zone transfer
        is the one reply of several messages, and is never kept: it depends on who asks."""
        key = (b"T" if tcp else b"U") + wire[2:]
        files = tuple(writer.file.served for writer in self.service.writers.values())
        known = self._replies.get(key, files)
        if known is None:
            soa = self._plain_soa_reply(wire, tcp)
            if soa is not None:
                self.service.metrics.answers.labels("NOERROR").inc()
                return soa
            try:
                query = dns.message.from_wire(wire)
            except (dns.exception.DNSException, ValueError, IndexError, struct.error):
                return formerr(wire)
            if query.flags & dns.flags.QR:
                return None  # a response: answering it could start a loop
            if len(query.question) == 1 and query.question[0].rdtype == dns.rdatatype.AXFR \
                    and query.opcode() == dns.opcode.QUERY:
                return self._transfer(query, remote, tcp)
            known = self._work_out(query, tcp)
            self._replies.put(key, known)
        reply, rcode = known
        self.service.metrics.answers.labels(rcode).inc()
        return wire[:2] + reply[2:]

    def _plain_soa_reply(self, wire: bytes, tcp: bool) -> bytes | None:
        """The reply to a plain SOA query for a zone's apex, made without parsing it: what a
        secondary asks after every NOTIFY (dnsapi/transfer.py). None for any other message,
        and for a reply too long for UDP without EDNS (long apex and SOA names): the general
        path sets TC then."""
        zone = self.transfers.soa_question(wire)
        served = self.service.writers[zone].file.served if zone is not None else None
        if zone is None or served is None:
            return None
        reply = self.transfers.soa_reply(zone, served, wire)
        return reply if tcp or len(reply) <= 512 else None

    def _transfer(self, query: dns.message.Message, remote: str, tcp: bool) -> bytes | list[bytes]:
        """AXFR of a zone's challenge names (dnsapi/transfer.py), over TCP, to an
        `answers.notify` address only. Anyone else is REFUSED (the names are what the CA will
        look up, but nobody needs them listed)."""
        name = query.question[0].name.to_text(omit_final_dot=True).lower()
        served = self.service.writers[name].file.served if name in self.service.writers else None
        if served is None or not tcp or not self._may_transfer(remote) \
                or query.question[0].rdclass != dns.rdataclass.IN:
            reply = dns.message.make_response(query)
            reply.set_rcode(dns.rcode.REFUSED)
            self.service.metrics.answers.labels("REFUSED").inc()
            return reply.to_wire()
        self.service.metrics.answers.labels("NOERROR").inc()
        return self.transfers.reply(name, served, self._by_name(name, served.records), query.id)

    def _may_transfer(self, remote: str) -> bool:
        try:
            return ipaddress.ip_address(remote) in self._transferees
        except ValueError:
            return False

    def _work_out(self, query: dns.message.Message, tcp: bool) -> tuple[bytes, str]:
        """The reply to `query` and its rcode's name."""
        reply = dns.message.make_response(query)
        if query.edns > 0:
            reply.set_rcode(dns.rcode.BADVERS)  # (RFC 6891 6.1.3: only EDNS version 0 is known)
        elif query.opcode() != dns.opcode.QUERY:
            reply.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            reply.set_rcode(dns.rcode.FORMERR)
        else:
            self._answer(reply, query.question[0])
        max_size = reply_limit(tcp, query.edns, query.payload)
        rcode = dns.rcode.to_text(reply.rcode())
        try:
            return reply.to_wire(max_size=max_size), rcode
        except dns.exception.TooBig:  # over UDP: TC set, and the client asks again over TCP
            reply.answer.clear()
            reply.authority.clear()
            reply.flags |= dns.flags.TC
            return reply.to_wire(max_size=max_size), rcode

    def _answer(self, reply: dns.message.Message, question: dns.rrset.RRset) -> None:
        name = question.name.to_text(omit_final_dot=True).lower()
        zone = zone_for(name, self.config.zone_names)
        served = self.service.writers[zone].file.served if zone is not None else None
        if served is not None and name == zone and question.rdtype == dns.rdatatype.SOA \
                and question.rdclass == dns.rdataclass.IN:
            # What a secondary asks before it transfers (and after a NOTIFY).
            reply.flags |= dns.flags.AA
            soa = served.soa()
            reply.answer.append(dns.rrset.from_rdata_list(question.name, soa.ttl, list(soa)))
            return
        if served is None or question.rdclass != dns.rdataclass.IN \
                or name.split(".", 1)[0] != self.config.challenge_label:
            reply.set_rcode(dns.rcode.REFUSED)
            return
        assert zone is not None
        reply.flags |= dns.flags.AA
        found = self._records(zone, served, name, question.rdtype)
        if found is None:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        else:
            reply.answer.extend(found)
            target = next((rrset[0].target for rrset in found
                           if rrset.rdtype == dns.rdatatype.CNAME), None)
            if target is not None and question.rdtype != dns.rdatatype.CNAME:
                reply.answer.extend(self._chase(target, question.rdtype))
        if not reply.answer:
            soa = served.soa()
            reply.authority.append(dns.rrset.from_rdata_list(dns.name.from_text(zone), soa.ttl,
                                                             list(soa)))

    def _records(self, zone: str, served: Served, name: str, rdtype: int
                 ) -> list[dns.rrset.RRset] | None:
        """The RRsets at `name` for `rdtype` (a CNAME answers every type); None when nothing is
        at the name nor below it (NXDOMAIN), [] when something is but not of that type."""
        mine = self._by_name(zone, served.records).get(name, [])
        theirs = served.operator.underscored.get(name)
        owner = dns.name.from_text(name)
        found = []
        for kind in ("CNAME", "TXT"):
            records = [r for r in mine if r.kind == kind]
            if records and (kind == "CNAME" or rdtype in (dns.rdatatype.TXT, dns.rdatatype.ANY)):
                found.append(_rrset(owner, kind, records))
        if theirs is not None:
            for rdataset in theirs.rdatasets:
                if rdataset.rdtype in (rdtype, dns.rdatatype.CNAME) or rdtype == dns.rdatatype.ANY:
                    found.append(dns.rrset.from_rdata_list(owner, rdataset.ttl, list(rdataset)))
        if found or mine or theirs is not None or self._below(zone, served, name):
            return found
        return None

    def _chase(self, target: dns.name.Name, rdtype: int) -> list[dns.rrset.RRset]:
        """A CNAME's target when it is in one of dnsapi's zones (acme-dns accounts are): the
        answer a resolver needs in one reply, as CoreDNS's file plugin gives it."""
        name = target.to_text(omit_final_dot=True).lower()
        zone = zone_for(name, self.config.zone_names)
        served = self.service.writers[zone].file.served if zone is not None else None
        if served is None or zone is None:
            return []
        records = [r for r in self._by_name(zone, served.records).get(name, []) if r.kind == "TXT"]
        if not records or rdtype not in (dns.rdatatype.TXT, dns.rdatatype.ANY):
            return []
        return [_rrset(target, "TXT", records)]

    def _by_name(self, zone: str, records: Mapping[Key, Record]) -> dict[str, list[Record]]:
        """The zone's records by name, worked out once per rewrite (and only when asked)."""
        cached = self._index.get(zone)
        if cached is not None and cached[0] is records:
            return cached[1]
        index: dict[str, list[Record]] = defaultdict(list)
        for record in records.values():
            index[record.fqdn].append(record)
        self._index[zone] = (records, index)
        return index

    def _below(self, zone: str, served: Served, name: str) -> bool:
        """Whether the operator has records below `name` (then it exists: NODATA, not
        NXDOMAIN). The challenge names above the operator's records are worked out once per
        operator text: a negative answer must not cost a walk over a large zone."""
        cached = self._parents.get(zone)
        if cached is None or cached[0] is not served.operator:
            label = self.config.challenge_label
            parents = set()
            for owner in served.operator.rules.types:
                while "." in owner:
                    owner = owner.split(".", 1)[1]
                    if owner.split(".", 1)[0] == label:
                        parents.add(owner)
            cached = self._parents[zone] = (served.operator, frozenset(parents))
        return name in cached[1]


class _Replies:
    """Replies worked out before, by their query's bytes after the id, valid for as long as every
    zone's `Served` is the one they were worked out from. A CA's resolver asks the same few
    questions again and again while it validates, and parsing and building a reply costs more than
    the rest of the round trip. Bounded in bytes: anyone who reaches the port can ask new
    questions, and then the replies are only worked out again."""

    MAX_BYTES = 4 << 20
    ENTRY_BYTES = 200  # what a kept reply costs beyond its bytes (two objects and a dict slot)

    def __init__(self) -> None:
        self._files: tuple[Served | None, ...] = ()
        self._replies: dict[bytes, tuple[bytes, str]] = {}
        self._bytes = 0

    def get(self, key: bytes, files: tuple[Served | None, ...]) -> tuple[bytes, str] | None:
        if len(files) != len(self._files) or any(a is not b for a, b in zip(files, self._files, strict=True)):
            self._files, self._replies, self._bytes = files, {}, 0
            return None
        return self._replies.get(key)

    def put(self, key: bytes, reply: tuple[bytes, str]) -> None:
        """Keep `reply` for the files `get` last saw."""
        size = len(key) + len(reply[0]) + self.ENTRY_BYTES
        if self._bytes + size > self.MAX_BYTES:
            self._replies, self._bytes = {}, 0
        self._replies[key] = reply
        self._bytes += size


def _rrset(owner: dns.name.Name, kind: str, records: list[Record]) -> dns.rrset.RRset:
    """dnsapi's records of one kind at `owner` as an RRset (one TTL: the lowest)."""
    rdatas = [dns.rdata.from_text("IN", kind, f"{r.value}." if kind == "CNAME" else f'"{r.value}"')
              for r in records]
    return dns.rrset.from_rdata_list(owner, min(r.ttl for r in records), rdatas)
