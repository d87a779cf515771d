"""dnsapi's managed block: its records rendered as zone-file lines, each proven to parse back to
exactly the record it came from, and kept up to date by difference.

A batch changes a few records in a block of thousands, and the block is rewritten for every
batch. So the block is remembered line by line: a new set of records is compared with the last
one by key (set operations, in C), and only lines that changed are rendered and proven again,
all of a name's lines when its TTL changes. The rest is one join.

Why prove lines at all: the line is what CoreDNS will serve. Values and names are validated long
before they get here, but a renderer bug or a hand-edited Vault secret must never turn into an
injected record, so a line is written only once it reads back as its own record, byte for byte.
"""

from __future__ import annotations

import bisect
import operator
import re
from collections.abc import Mapping

import dns.exception
import dns.rdatatype
import dns.zone

from .errors import ZoneError
from .records import Key, Record

BEGIN_PREFIX = "; BEGIN dnsapi managed records"  # how the start is found: the rest may be reworded
BEGIN_MARKER = BEGIN_PREFIX + " - rewritten from Vault, edits here are lost"
END_MARKER = "; END dnsapi managed records"

MAX_TTL = 2**31 - 1  # RFC 2181 8

# A line in the only shape dnsapi renders for a validated record: absolute name of plain labels,
# explicit TTL, class IN, one quoted string of base64url characters. Such a line has exactly one
# reading (no escapes, no parentheses, no comment, no $directive, no relative name), so matching
# it proves what a zone parser makes of it; any other line is proven by parsing it.
_PLAIN_LINE = re.compile(r'((?:[A-Za-z0-9_-]{1,63}\.)+) ([0-9]{1,10}) IN TXT "([A-Za-z0-9_=-]{1,255})"')
# The same for the one other kind dnsapi writes, a CNAME to an acme-dns account's name.
_PLAIN_CNAME = re.compile(r'((?:[A-Za-z0-9_-]{1,63}\.)+) ([0-9]{1,10}) IN CNAME ((?:[A-Za-z0-9_-]{1,63}\.)+)')


def quote_txt(value: str) -> str:
    """A value as a zone-file string: always quoted, `"` and `\\` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _txt_line(fqdn: str, ttl: int, value: str) -> str:
    return f"{fqdn}. {ttl} IN TXT {quote_txt(value)}"


def _line(fqdn: str, ttl: int, value: str, kind: str) -> str:
    return f"{fqdn}. {ttl} IN CNAME {value}." if kind == "CNAME" else _txt_line(fqdn, ttl, value)


def block_records(block: str, origin: str) -> dict[Key, int]:
    """The records in a managed block as {(fqdn, value): ttl} (a CNAME's value: its target);
    ZoneError if it is not only TXT and CNAME records below `origin`."""
    return {key: ttl for key, (ttl, _) in block_entries(block, origin).items()}


def block_entries(block: str, origin: str) -> dict[Key, tuple[int, str]]:
    """The records in a managed block as {(fqdn, value): (ttl, kind)}."""
    if not block:
        return {}
    try:
        zone = dns.zone.from_text(block, origin=origin + ".", relativize=False, check_origin=False)
    except dns.exception.DNSException as exc:
        raise ZoneError(f"the managed block for {origin} does not parse: {exc}") from None
    found: dict[Key, tuple[int, str]] = {}
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            fqdn = name.to_text(omit_final_dot=True)
            if rdataset.rdtype == dns.rdatatype.CNAME:
                for rdata in rdataset:
                    found[(fqdn, rdata.target.to_text(omit_final_dot=True))] = (rdataset.ttl, "CNAME")
                continue
            if rdataset.rdtype != dns.rdatatype.TXT:
                raise ZoneError(f"the managed block for {origin} holds a record other than TXT "
                                f"and CNAME at {name}")
            for rdata in rdataset:
                found[(fqdn, b"".join(rdata.strings).decode("ascii"))] = (rdataset.ttl, "TXT")
    return found


class ManagedBlock:
    """The block for the records last given to `render`, remembered line by line."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._suffix = "." + origin + "."
        self._forget("\n")

    def _forget(self, newline: str) -> None:
        self._newline = newline
        self._records: dict[Key, Record] = {}
        self._keys: list[Key] = []  # sorted: the block's order
        self._lines: dict[Key, str] = {}  # proven line, newline included
        self._ttls: dict[str, dict[int, int]] = {}  # name -> {requested TTL: how many records}
        self._ttl: dict[str, int] = {}  # name -> the TTL its lines carry

    def render(self, records: Mapping[Key, Record], newline: str = "\n") -> str:
        """The block (markers included) holding exactly `records`, sorted by name and value.

        Raises ZoneError if a line does not parse back to its record; the next call then
        starts from scratch.
        """
        if newline != self._newline:
            self._forget(newline)
        try:
            self._update(records)
        except BaseException:
            self._forget(newline)
            raise
        return "".join([BEGIN_MARKER, newline, *map(self._lines.__getitem__, self._keys),
                        END_MARKER, newline])

    def _update(self, records: Mapping[Key, Record]) -> None:
        old = self._records
        added, removed = records.keys() - old.keys(), old.keys() - records.keys()
        kept = old.keys() - removed
        retimed: list[Key] = []
        if not all(map(operator.is_, map(records.__getitem__, kept), map(old.__getitem__, kept))):
            # Records read afresh from Vault are new objects: compare what a line shows.
            retimed = [key for key in kept if records[key].ttl != old[key].ttl]
        for key in removed:
            self._count(key[0], old[key].ttl, -1)
            del self._lines[key], self._keys[bisect.bisect_left(self._keys, key)]
        for key in retimed:
            self._count(key[0], old[key].ttl, -1)
            self._count(key[0], records[key].ttl, +1)
        for key in added:
            self._count(key[0], records[key].ttl, +1)
            bisect.insort(self._keys, key)
        stale = set(added)
        for fqdn in {key[0] for key in (*removed, *retimed, *added)}:
            # An RRset has one TTL (RFC 2181 5.2): every value at a name gets the smallest.
            ttl = min(self._ttls[fqdn]) if fqdn in self._ttls else None
            if ttl is None:
                self._ttl.pop(fqdn, None)
            elif self._ttl.get(fqdn) != ttl:
                self._ttl[fqdn] = ttl
                start = bisect.bisect_left(self._keys, (fqdn,))
                stale.update(self._keys[start:bisect.bisect_left(self._keys, (fqdn + "\0",))])
        for fqdn, value in stale:
            self._lines[(fqdn, value)] = self._proven(fqdn, value, self._ttl[fqdn],
                                                      records[(fqdn, value)].kind) + self._newline
        self._records = dict(records)

    def _count(self, fqdn: str, ttl: int, delta: int) -> None:
        counts = self._ttls.setdefault(fqdn, {})
        counts[ttl] = counts.get(ttl, 0) + delta
        if not counts[ttl]:
            del counts[ttl]
            if not counts:
                del self._ttls[fqdn]

    def _proven(self, fqdn: str, value: str, ttl: int, kind: str) -> str:
        line = _line(fqdn, ttl, value, kind)
        found = self.read_plain(line)
        if found is None:
            parsed = block_entries(line, self.origin)
            if len(parsed) != 1:
                raise ZoneError(f"internal check failed: a managed line for {self.origin} does "
                                "not parse back to one record; not written")
            ((name, text), (found_ttl, found_kind)), = parsed.items()
            found = (name, text, found_ttl, found_kind)
        if found != (fqdn, value, ttl, kind):
            raise ZoneError(f"internal check failed: a managed line for {self.origin} does not "
                            "parse back to the requested record; not written")
        return line

    def read_plain(self, line: str) -> tuple[str, str, int, str] | None:
        """(fqdn, value, ttl, kind) of a line in a plain shape naming a record in this zone; None
        for any other line."""
        kind, match = "TXT", _PLAIN_LINE.fullmatch(line)
        if match is None:
            kind, match = "CNAME", _PLAIN_CNAME.fullmatch(line)
            if match is not None and len(match[3]) > 254:
                return None
        if match is None or len(match[1]) > 254 or int(match[2]) > MAX_TTL:  # 255 octets on the wire
            return None
        if match[1] != self._suffix[1:] and not match[1].endswith(self._suffix):
            return None
        return match[1][:-1], match[3].removesuffix(".") if kind == "CNAME" else match[3], \
            int(match[2]), kind
