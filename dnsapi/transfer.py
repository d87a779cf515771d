"""The zone transfer (AXFR) of a zone's challenge names, as CoreDNS's secondary block takes it
(dnsapi/answers.py, docs/latency.md).

CoreDNS transfers after every change, so the reply is built once per zone file content and
kept, and built by hand in wire form: dnsapi's records are plain TXT values and CNAME targets,
and making a dnspython rdata of each from text cost more than all the rest of a change. The
operator's few records at challenge names go through dnspython as parsed. The SOA query a
secondary makes before each transfer is answered here in wire form too: it comes right after
every change, when no reply to it is kept.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable, Mapping

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from .records import Record
from .zonefile import Served

MESSAGE_RECORDS = 16384  # bytes of records per message, at most (one record may exceed it)
_QR_AA = 0x8400
_RD = 0x0100
_QR_OPCODE = 0xF800
_IN = dns.rdataclass.IN
_SOA_IN = struct.pack("!HH", dns.rdatatype.SOA, dns.rdataclass.IN)
_ONE_QUESTION = struct.pack("!HHHH", 1, 0, 0, 0)


class Transfers:
    """Each zone's AXFR reply, kept while the zone file holds what it was built from."""

    def __init__(self, label: str, zones: Iterable[str]) -> None:
        self.label = label
        self._apexes = {_name(zone): zone for zone in zones}  # by wire form, for soa_question
        self._kept: dict[str, tuple[Served, list[bytes]]] = {}
        self._soa: dict[str, tuple[object, int, bytes]] = {}  # each zone's SOA by operator text
        # per zone, each name's records in wire form while the name holds the same Record
        # objects: a change touches one name, and a transfer follows every change
        self._names: dict[str, dict[str, tuple[list[Record], list[bytes]]]] = {}
        self.served: dict[str, asyncio.Event] = {}  # set whenever a zone's transfer is served

    def reply(self, zone: str, served: Served, by_name: Mapping[str, list[Record]], ident: int
              ) -> list[bytes]:
        """The messages that answer an AXFR of `zone` with id `ident`."""
        kept = self._kept.get(zone)
        if kept is None or kept[0] is not served:
            kept = self._kept[zone] = (served, _messages(zone, self._records(zone, served, by_name)))
            names = self._names.get(zone, {})
            self._names[zone] = {name: known for name, known in names.items() if name in by_name}
        self.served.setdefault(zone, asyncio.Event()).set()
        head = struct.pack("!H", ident)
        return [head + message for message in kept[1]]

    def soa_question(self, wire: bytes) -> str | None:
        """The zone whose apex SOA `wire` asks for, when it is a plain query (one question, no
        other records, no EDNS), else None: anything else takes the general path."""
        if len(wire) < 17 or wire[-4:] != _SOA_IN or wire[4:12] != _ONE_QUESTION \
                or struct.unpack_from("!H", wire, 2)[0] & _QR_OPCODE:
            return None
        return self._apexes.get(wire[12:-4].lower())  # (the counts leave no room for more)

    def soa_reply(self, zone: str, served: Served, wire: bytes) -> bytes:
        """The reply to `wire`, a query `soa_question` took for `zone`: its question as asked
        (case and all), and the zone's SOA with the serial the file holds."""
        ttl, rdata = self._apex_soa(zone, served)
        flags = _QR_AA | struct.unpack_from("!H", wire, 2)[0] & _RD
        answer = struct.pack("!HHHIH", 0xC00C, dns.rdatatype.SOA, _IN, ttl, len(rdata)) + rdata
        return wire[:2] + struct.pack("!HHHHH", flags, 1, 1, 0, 0) + wire[12:] + answer

    def _apex_soa(self, zone: str, served: Served) -> tuple[int, bytes]:
        """The zone's SOA TTL and rdata, with the serial the file holds: the operator's SOA is
        rendered once per operator text, and the serial put in its place (the last 20 bytes
        are serial, refresh, retry, expire, minimum)."""
        kept = self._soa.get(zone)
        if kept is None or kept[0] is not served.operator:
            soa = served.operator.soa
            kept = self._soa[zone] = (served.operator, soa.ttl, soa[0].to_wire())
        _, ttl, rdata = kept
        return ttl, rdata[:-20] + struct.pack("!I", served.serial) + rdata[-16:]

    def _at(self, zone: str, name: str, records: list[Record]) -> list[bytes]:
        names = self._names.setdefault(zone, {})
        known = names.get(name)
        if known is not None and len(known[0]) == len(records) \
                and all(a is b for a, b in zip(known[0], records, strict=True)):
            return known[1]
        wires = _dnsapi_records(name, records)
        names[name] = (records, wires)
        return wires

    def _records(self, zone: str, served: Served, by_name: Mapping[str, list[Record]]) -> list[bytes]:
        """The zone's SOA and NS, everything the file holds at and below challenge names
        (dnsapi's records and the operator's), the TXT records at the targets of dnsapi's
        CNAMEs in the zone (an acme-dns account's: CoreDNS then answers a CNAME with its target
        in one reply, as the `file` plugin does), and the SOA again."""
        apex = _name(zone)
        soa = _rr(apex, dns.rdatatype.SOA, *self._apex_soa(zone, served))
        ns = served.operator.ns
        records = [soa]
        if ns:
            records.extend(_rr(apex, dns.rdatatype.NS, ns.ttl, rd.to_wire()) for rd in ns)
        targets: set[str] = set()
        for name, at_name in by_name.items():
            if name.split(".", 1)[0] != self.label:
                continue
            records.extend(self._at(zone, name, at_name))
            targets.update(r.value.lower() for r in at_name if r.kind == "CNAME")
        for target in sorted(targets):
            if target.endswith("." + zone) and target.split(".", 1)[0] != self.label:
                records.extend(_dnsapi_records(target, [r for r in by_name.get(target, [])
                                                        if r.kind == "TXT"]))
        for name, node in served.operator.underscored.items():
            if self.label in name.split("."):
                owner = _name(name)
                records.extend(_rr(owner, rdataset.rdtype, rdataset.ttl, rdata.to_wire())
                               for rdataset in node.rdatasets for rdata in rdataset)
        records.append(soa)
        return records


def _dnsapi_records(name: str, records: Iterable[Record]) -> list[bytes]:
    """dnsapi's records at `name` in wire form, each kind with one TTL (the lowest), as an
    RRset has."""
    owner = _name(name)
    out: list[bytes] = []
    for kind, rdtype in (("CNAME", dns.rdatatype.CNAME), ("TXT", dns.rdatatype.TXT)):
        of_kind = [r for r in records if r.kind == kind]
        if not of_kind:
            continue
        ttl = min(r.ttl for r in of_kind)
        if kind == "CNAME":
            out.extend(_rr(owner, rdtype, ttl, _name(r.value)) for r in of_kind)
        else:
            out.extend(_rr(owner, rdtype, ttl, _txt(r.value)) for r in of_kind)
    return out


def _name(text: str) -> bytes:
    """A name's wire form. dnsapi's names are checked lowercase ASCII (dnsapi/names.py), so
    they are encoded label by label; anything else goes through dnspython."""
    if text.isascii() and "\\" not in text:
        labels = text.rstrip(".").encode("ascii").split(b".")
        if all(0 < len(label) < 64 for label in labels):
            return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    return dns.name.from_text(text).to_wire() or b""


def _txt(value: str) -> bytes:
    """A TXT rdata holding `value` (character-strings of at most 255 bytes each)."""
    data = value.encode("utf-8")
    return b"".join(bytes([len(data[i:i + 255])]) + data[i:i + 255]
                    for i in range(0, max(len(data), 1), 255))


def _rr(owner: bytes, rdtype: int, ttl: int, rdata: bytes) -> bytes:
    """One resource record in wire form (names uncompressed)."""
    return owner + struct.pack("!HHIH", rdtype, _IN, ttl, len(rdata)) + rdata


def _messages(zone: str, records: list[bytes]) -> list[bytes]:
    """`records` (wire form) as AXFR reply messages, each without its first two bytes (the id)."""
    question = _name(zone) + struct.pack("!HH", dns.rdatatype.AXFR, _IN)
    messages: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for wire in records:
        if chunk and size + len(wire) > MESSAGE_RECORDS:
            messages.append(_message(question, chunk))
            chunk, size = [], 0
        chunk.append(wire)
        size += len(wire)
    messages.append(_message(question, chunk))
    return messages


def _message(question: bytes, records: list[bytes]) -> bytes:
    return struct.pack("!HHHHH", _QR_AA, 1, len(records), 0, 0) + question + b"".join(records)
