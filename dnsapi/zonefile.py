"""Render dnsapi's records into the operator's zone file, bump the SOA serial, write atomically.

The operator owns the file. dnsapi owns exactly two things in it: the lines between its BEGIN
and END markers, and the digits of the SOA serial. Everything else is kept byte for byte.

Why so careful: CoreDNS's `file` plugin polls the file and reloads it whenever the SOA serial
differs from the loaded one (plugin/file/reload.go). A half-written file that already carries a
new serial may be loaded and never re-read, and a file that fails to parse silently keeps the
old zone serving. So every new text is parsed before it is written, our own records are checked
to come back exactly as intended, and the file is replaced by rename, never written in place.

An operator editing the file while dnsapi rewrites it is the other hazard: a save landing between
dnsapi's read and its rename would be overwritten. dnsapi's writer and `dnsapi zone edit` (see
ZoneFile.apply_edit) therefore take an advisory lock to change the file, and the writer checks,
holding it, that the file is still the one its new text was made from (the text may be made
before, while Vault writes: ZoneFile.prepare); a plain editor save takes no lock, and is caught
by the check just before the rename.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import glob
import logging
import os
import re
import stat
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.node
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.zone

from .block import BEGIN_PREFIX, END_MARKER, ManagedBlock, block_records
from .errors import ZoneError
from .records import Key, Record

log = logging.getLogger(__name__)

_MARKER_END = re.compile(r"\b[^\r\n]*")  # the rest of a marker line, as `\b.*?$` would take it


def _marker_lines(text: str, prefix: str) -> list[tuple[int, int]]:
    """(start, end) of each line that starts with `prefix` followed by a word boundary (end
    before the line break). str.find instead of a MULTILINE regex: ten times faster on a big zone."""
    found = []
    at = text.find(prefix)
    while at != -1:
        if at == 0 or text[at - 1] == "\n":
            match = _MARKER_END.match(text, at + len(prefix))
            if match:
                found.append((at, match.end()))
        at = text.find(prefix, at + 1)
    return found

SERIAL_MODULUS = 2**32
_HALF = 2**31


# ---------------------------------------------------------------------------------------------
# Serial numbers (RFC 1982 arithmetic)

def serial_gt(a: int, b: int) -> bool:
    """RFC 1982: is serial `a` greater than serial `b`?"""
    return a != b and ((a > b and a - b < _HALF) or (a < b and b - a > _HALF))


def next_serial(old: int, today: dt.date) -> int:
    """`max(old + 1, YYYYMMDD00)` in serial arithmetic: strictly greater than `old`, never equal.

    The date form keeps serials readable; falling back to old + 1 keeps them increasing past 99
    changes a day, and the modulus handles wrap-around (secondaries refuse serials that go back).
    """
    dated = today.year * 1_000_000 + today.month * 10_000 + today.day * 100
    if serial_gt(dated, old):
        return dated
    return (old + 1) % SERIAL_MODULUS


# ---------------------------------------------------------------------------------------------
# Finding the managed block

@dataclass(frozen=True)
class ZoneText:
    """A zone file's text split around the managed block (block is '' when there is none yet)."""

    before: str
    block: str
    after: str

    @classmethod
    def split(cls, text: str) -> ZoneText:
        begins = _marker_lines(text, BEGIN_PREFIX)
        ends = _marker_lines(text, END_MARKER)
        if not begins and not ends:
            return cls(text, "", "")
        if len(begins) != 1 or len(ends) != 1 or ends[0][0] < begins[0][1]:
            raise ZoneError("the zone file's dnsapi markers are damaged (expected one BEGIN line "
                            "followed by one END line); fix or remove them by hand")
        end = ends[0][1]
        if text.startswith("\r\n", end):
            end += 2
        elif text.startswith("\n", end):
            end += 1
        return cls(text[:begins[0][0]], text[begins[0][0]:end], text[end:])

    def join(self, block: str) -> str:
        before = self.before
        if before and not before.endswith("\n"):
            before += "\r\n" if "\r\n" in before else "\n"
        return before + block + self.after


# ---------------------------------------------------------------------------------------------
# Locating the SOA serial in the operator's text

def _zone_tokens(text: str) -> Iterator[tuple[int, int]]:
    """Spans of the zone-file tokens in `text`: comments skipped, quoted strings and `\\x`
    escapes kept whole, parentheses dropped (they only join lines)."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n()":
            i += 1
        elif ch == ";":
            while i < n and text[i] != "\n":
                i += 1
        else:
            start = i
            quoted = ch == '"'
            i += 1 if quoted else 0
            while i < n:
                ch = text[i]
                if ch == "\\":
                    i += 2
                    continue
                if quoted:
                    i += 1
                    if ch == '"':
                        break
                elif ch in " \t\r\n();":
                    break
                else:
                    i += 1
            yield start, min(i, n)


def _serial_spans(text: str) -> Iterator[tuple[int, int]]:
    """Spans of the third token after each `SOA` token: where an SOA's serial stands. The SOA
    may span lines and carry comments."""
    spans = list(_zone_tokens(text))
    for i, (start, end) in enumerate(spans):
        if text[start:end].upper() == "SOA" and i + 3 < len(spans):
            yield spans[i + 3]


def _number(digits: str) -> int | None:
    """`digits` as a serial when they are ASCII digits only ("²".isdigit(), yet int() refuses it)."""
    return int(digits) if digits.isascii() and digits.isdigit() else None


def soa_serial(text: str) -> int | None:
    """The serial of the first SOA in `text`, read as CoreDNS's reload check reads it (only up to
    the SOA), or None; for a file that does not parse as a whole."""
    for start, end in _serial_spans(text):
        return _number(text[start:end])
    return None


def serial_span(text: str, serial: int) -> tuple[int, int]:
    """Where in `text` the digits of the SOA serial are: the serial span of the first `SOA`
    whose serial is `serial`."""
    for start, end in _serial_spans(text):
        if _number(text[start:end]) == serial:
            return start, end
    raise ZoneError("cannot find the SOA serial in the zone file's own text (is the SOA in an "
                    "$INCLUDE file?); dnsapi must be able to bump it")


# ---------------------------------------------------------------------------------------------
# Parsing

# CoreDNS's file plugin refuses to load a zone holding these (plugin/file/zone.go, Insert).
_REFUSED_BY_COREDNS = (dns.rdatatype.NSEC3, dns.rdatatype.NSEC3PARAM)


def parse_zone(text: str, origin: str, what: str = "zone file") -> dns.zone.Zone:
    """Parse with dnspython to the rules CoreDNS applies when it loads a zone (it parses, needs
    an SOA at the origin, and refuses NSEC3 records); raise ZoneError naming the problem."""
    try:
        zone = dns.zone.from_text(text, origin=origin + ".", relativize=False, check_origin=True)
    except dns.exception.DNSException as exc:
        raise ZoneError(f"{what} for {origin} does not parse: {exc}") from None
    for name, node in zone.nodes.items():
        for rdataset in node.rdatasets:
            if rdataset.rdtype in _REFUSED_BY_COREDNS:
                raise ZoneError(f"{what} for {origin} has an {dns.rdatatype.to_text(rdataset.rdtype)} "
                                f"record at {name}, which CoreDNS refuses to load")
    return zone


# ---------------------------------------------------------------------------------------------
# The file

@dataclass(frozen=True)
class NameRules:
    """What the operator's zone says about names dnsapi may not put a TXT record at: a name that
    holds a CNAME (RFC 1034 3.6.2: "CNAME and other data" makes BIND refuse the zone), a name at
    or below a DNAME or a delegation (the record would be occluded: never served, so an ACME CA
    could never see it). A CNAME above the name is fine: `www CNAME lb` with
    `_acme-challenge.www TXT` is the common case, and both BIND and CoreDNS serve it."""

    origin: str
    cnames: frozenset[str] = frozenset()
    dnames: frozenset[str] = frozenset()
    cuts: frozenset[str] = frozenset()  # owners of NS records other than the apex
    types: Mapping[str, frozenset[int]] = field(default_factory=dict)  # owner -> its rdtypes

    @classmethod
    def of(cls, zone: dns.zone.Zone, origin: str) -> NameRules:
        types = {name.to_text(omit_final_dot=True).lower():
                 frozenset(rdataset.rdtype for rdataset in node.rdatasets)
                 for name, node in zone.nodes.items()}
        owners = {rdtype: frozenset(name for name, held in types.items() if rdtype in held)
                  for rdtype in (dns.rdatatype.CNAME, dns.rdatatype.DNAME, dns.rdatatype.NS)}
        return cls(origin, owners[dns.rdatatype.CNAME], owners[dns.rdatatype.DNAME],
                   owners[dns.rdatatype.NS] - {origin}, types)

    def conflict(self, fqdn: str, kind: str = "TXT") -> str | None:
        """Why a record of `kind` (TXT, or dnsapi's CNAME) at `fqdn` cannot be in this zone, or None."""
        if fqdn in self.cnames:
            return f"the zone file has a CNAME at {fqdn}, which allows no other record there"
        if kind == "CNAME" and fqdn in self.types:
            return f"the zone file has records at {fqdn}, so no CNAME can be there"
        name = fqdn
        while True:
            if name in self.dnames:
                return f"the zone file has a DNAME at {name}, so {fqdn} would never be served"
            if name in self.cuts:
                return f"{name} is delegated (NS) in the zone file, so {fqdn} would never be served"
            if name == self.origin or "." not in name:
                return None
            name = name.split(".", 1)[1]


@dataclass(frozen=True)
class _Validated:
    """The operator's text as last validated, split around the SOA serial digits."""

    head: str  # up to the serial digits
    tail: str  # after them, up to dnsapi's block
    after: str  # after dnsapi's block
    rdatas: int  # how many records the operator's text holds (SOA included)
    rules: NameRules  # names dnsapi may not use, by the operator's records
    soa: dns.rdataset.Rdataset  # the apex SOA and NS, for answering SOA/NS queries
    ns: dns.rdataset.Rdataset | None
    underscored: Mapping[str, dns.node.Node]  # the operator's records at names with a `_label`,
    # by name: the challenge answers serve (and transfer) the operator's own records there too

    def soa_at(self, serial: int) -> dns.rdataset.Rdataset:
        """The apex SOA carrying `serial` (the file's digits change; the parsed record does not)."""
        soa = self.soa.copy()
        soa.clear()
        soa.add(self.soa[0].replace(serial=serial))
        return soa

    def serial_of(self, parts: ZoneText) -> int | None:
        """The serial in `parts` if everything else of the operator's text is unchanged."""
        before = parts.before
        if parts.after != self.after or len(before) <= len(self.head) + len(self.tail) \
                or not before.startswith(self.head) or not before.endswith(self.tail):
            return None
        return _number(before[len(self.head):len(before) - len(self.tail)])


# A record line with no owner name (leading blank) takes the previous record's owner: right after
# dnsapi's block that would be one of dnsapi's names.
_OWNERLESS_FIRST_LINE = re.compile(r"(?:[ \t]*(?:;[^\n]*)?\r?\n)*[ \t]+[^\s;]")
# What can hold a parenthesis that does not count: a quoted string, a comment, an escape.
_QUOTED_COMMENT_OR_ESCAPE = re.compile(r'"(?:[^"\\]|\\.)*"|;[^\n]*|\\.', re.DOTALL)


def _ends_inside_a_record(text: str) -> bool:
    """Does `text` end inside a record's parentheses (or a quoted string)? Lines put after it
    would then be read as part of that record. (Zone files do not nest parentheses.)"""
    bare = _QUOTED_COMMENT_OR_ESCAPE.sub("", text)
    return bare.count("(") > bare.count(")") or '"' in bare


def _validate(parts: ZoneText, origin: str) -> tuple[int, _Validated]:
    """The operator's SOA serial and the validation of the operator's text in `parts`.

    The text is parsed without dnsapi's block (so a damaged block never stops its own repair), and
    the serial digits are located so that a rewrite can change just them.
    """
    operator = parse_zone(parts.join(""), origin)
    if parts.block and _ends_inside_a_record(parts.before):
        raise ZoneError("dnsapi's block sits inside another record, within its parentheses (its "
                        "markers were moved?); put the BEGIN/END lines between records")
    serial = operator.get_soa().serial
    start, end = serial_span(parts.before, serial)
    if parts.after and _OWNERLESS_FIRST_LINE.match(parts.after):
        raise ZoneError("the first record after dnsapi's END marker has no owner name and "
                        "would inherit one of dnsapi's names; give it an owner name")
    apex = operator.find_node(origin + ".")
    underscored = {name.to_text(omit_final_dot=True).lower(): node for name, node in operator.nodes.items()
                   if any(label.startswith(b"_") for label in name.labels)}
    return serial, _Validated(parts.before[:start], parts.before[end:], parts.after,
                              _rdata_count(operator), NameRules.of(operator, origin),
                              apex.find_rdataset(dns.rdataclass.IN, dns.rdatatype.SOA),
                              apex.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS), underscored)


def _block_of(text: str) -> str | None:
    """dnsapi's block in `text` ('' when there is none), or None when its markers are damaged."""
    try:
        return ZoneText.split(text).block
    except ZoneError:
        return None


def _operator_text(text: str) -> str:
    """`text` without dnsapi's block (all of it when the markers are damaged): the operator's part."""
    try:
        return ZoneText.split(text).join("")
    except ZoneError:
        return text


def _later(a: int, b: int | None) -> int:
    """The greater serial in RFC 1982 arithmetic; `b` may be missing."""
    return b if b is not None and serial_gt(b, a) else a


EDIT_RETRIES = 3  # rewrites started again because the operator saved the file meanwhile


@dataclass(frozen=True)
class Served:
    """The zone file's content as dnsapi last wrote or checked it: its records (exactly those in
    the block), the serial, and the operator's text they sit in."""

    records: Mapping[Key, Record]
    serial: int
    operator: _Validated

    def soa(self) -> dns.rdataset.Rdataset:
        return self.operator.soa_at(self.serial)

    def same_as(self, other: Served | None) -> bool:
        """Whether `other` serves exactly this: then it is kept, with the replies and the
        transfer worked out from it (dnsapi/answers.py)."""
        return other is not None and other.serial == self.serial \
            and other.operator is self.operator and other.records == self.records


@dataclass(frozen=True)
class Rewrite:
    """A zone file's next text, prepared but not in place yet (see ZoneFile.prepare): the
    records asked for, the file as it was read, what it will hold, and the flushed temp file
    that holds it (None when the file already holds the records)."""

    records: Mapping[Key, Record]
    expected: bytes
    served: Served
    tmp: Path | None


class CommitLater(Exception):
    """`ZoneFile.commit(wait=False)` would have had to wait: for the lock (call `commit` again
    from a thread) or, `again`, to make the text again from a changed file (call `sync`)."""

    def __init__(self, again: bool) -> None:
        super().__init__()
        self.again = again


class _FileChanged(Exception):
    """The zone file changed between dnsapi's read and its rename."""


class EditConflict(ZoneError):
    """The operator's part of the zone file changed while an edit of it was being made."""


class ZoneFile:
    """One operator zone file and the operations dnsapi performs on it.

    The whole file is parsed when dnsapi first meets the operator's text and again whenever the
    operator changes it; as long as only the block and the serial digits change, that validation
    stands and a rewrite parses just the block, so its cost does not grow with the zone.
    """

    def __init__(self, path: Path, origin: str) -> None:
        self.path = path
        self.origin = origin
        self._validated: _Validated | None = None  # the operator's text, parsed on its own
        self._in_context: _Validated | None = None  # ...and the whole file made from it, too
        self._written: int | None = None  # the last serial this process wrote
        self._seen: tuple[int, int, int] | None = None  # the file's identity when last read or written
        self.block = ManagedBlock(origin)
        # why each (name, kind) of dnsapi's may not be written, for one NameRules (see _servable)
        self._refusals: tuple[NameRules | None, dict[tuple[str, str], str | None]] = (None, {})
        self.served: Served | None = None  # what the file holds since dnsapi last wrote or checked it

    def read_text(self) -> str:
        # surrogateescape: any non-UTF-8 byte in the operator's comments is written back as is.
        return self._read_bytes().decode("utf-8", "surrogateescape")

    def _read_bytes(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            raise ZoneError(f"zone file {self.path} for {self.origin} does not exist") from None
        except OSError as exc:
            raise ZoneError(f"cannot read zone file {self.path}: {exc.strerror}") from None

    def check(self) -> int:
        """Validate the file as it is now; returns its serial. Used at start and by /readyz."""
        return self._operator_serial(ZoneText.split(self.read_text()))[0]

    def remove_leftovers(self) -> list[Path]:
        """Delete the temp files a crash left beside the zone file (a rewrite prepared while
        Vault wrote, never renamed); returns them. Called at start, before this process writes:
        under the lock no `dnsapi zone edit` is writing one either."""
        with self._locked():
            leftovers = list(self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"))
            for path in leftovers:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return leftovers

    def conflicts(self, names: Iterable[str], rules: NameRules | None = None,
                  cnames: Iterable[str] = ()) -> dict[str, str]:
        """{name: why} for the names that cannot hold a TXT record (or, for `cnames`, dnsapi's
        CNAME) in the zone as it is now (by `rules` when the caller already has them)."""
        rules = rules if rules is not None else self.rules()
        wanted = [(name, "TXT") for name in names] + [(name, "CNAME") for name in cnames]
        return {name: why for name, kind in wanted if (why := rules.conflict(name, kind)) is not None}

    def rules(self) -> NameRules:
        """What the operator's records say of names, for the file as it is now: read and parsed
        again only when it changed (see known_rules)."""
        return self.known_rules() or self.operator()[1].rules

    def known_rules(self) -> NameRules | None:
        """The rules dnsapi already holds, if the file is still the one it last read or wrote
        (inode, size, mtime); None when it must be read again. Costs one stat, so the event loop
        may call it for every batch and every UPDATE; reading a large changed file may not."""
        remembered = self._validated
        if remembered is not None and self._seen == self._identity():
            return remembered.rules
        return None

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def operator(self) -> tuple[int, _Validated]:
        """The file's serial now and the validation of the operator's text it holds."""
        seen = self._identity()  # before the read: a change after it shows as a new identity
        result = self._operator_serial(ZoneText.split(self.read_text()))
        self._seen = seen
        return result

    def apex(self) -> tuple[dns.rdataset.Rdataset, dns.rdataset.Rdataset | None]:
        """The zone's SOA (with the serial the file holds now) and NS RRsets, as CoreDNS serves
        them: for the RFC 2136 front door's SOA and NS answers."""
        serial, valid = self.operator()
        return valid.soa_at(serial), valid.ns

    def sync(self, records: Mapping[Key, Record] | Iterable[Record],
             today: dt.date | None = None) -> int | None:
        """Make the managed block hold exactly `records` (a mapping by key, or any iterable).

        Returns the new serial when the file was rewritten, None when it already matched (a
        file without a block matches an empty record set, so the operator's file is not touched
        until there is something to add). Raises ZoneError, leaving the file untouched, when the
        operator's file or the result does not parse. An edit made through `apply_edit` waits for
        the rewrite and is applied on top of it; a plain save landing while the new text was being
        made is caught before the rename and the rewrite starts again from the saved file.
        """
        if not isinstance(records, Mapping):
            records = {record.key: record for record in records}
        for _ in range(EDIT_RETRIES):
            with contextlib.suppress(_FileChanged), self._locked():
                return self._commit(self.prepare(records, today))
        raise ZoneError(f"zone file {self.path} kept changing while dnsapi rewrote it "
                        f"({EDIT_RETRIES} tries); not written")

    def commit(self, rewrite: Rewrite, wait: bool = True) -> int | None:
        """The second half of `sync`: rename the prepared text into place. Returns the new
        serial, or None when the file already held the records. A file changed since
        `prepare` read it (an edit) is rewritten from what it holds now.

        With `wait=False` (from the event loop), raises CommitLater instead of waiting for the
        lock (a `zone edit`, another zone's rewrite in the same directory) or making the text
        again: the caller finishes in a thread, as CommitLater says."""
        try:
            with self._locked(wait):
                if rewrite.tmp is None and self._read_bytes() != rewrite.expected:
                    raise _FileChanged()  # (read without the lock: what it serves may have moved)
                return self._commit(rewrite)
        except _FileChanged:
            if not wait:
                raise CommitLater(again=True) from None
            return self.sync(rewrite.records)

    @staticmethod
    def discard(rewrite: Rewrite) -> None:
        if rewrite.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(rewrite.tmp)

    def apply_edit(self, edited: str, base: str, today: dt.date | None = None) -> int | None:
        """Make `edited`, an operator's edit of `base` (the file as it was when the edit began),
        the operator's part of the file: the safe path for hand edits (`dnsapi zone edit`).

        The edit is validated as any operator text is. Then, under the writer's lock, dnsapi's
        block is taken from the file as it is now (dnsapi may have rewritten it meanwhile) and the
        serial is set above both the file's and the edit's, so CoreDNS reloads. Returns the new
        serial, or None when the edit changes nothing outside the block. Raises ZoneError for an
        invalid edit and EditConflict when someone else changed the operator's part meanwhile;
        the file is left untouched then.
        """
        parts = ZoneText.split(edited)
        if _operator_text(edited) == _operator_text(base):
            return None
        if not parts.block and _block_of(base):
            raise ZoneError("the edit removed dnsapi's BEGIN and END marker lines; put them back "
                            "(dnsapi's records go between them)")
        edited_serial, valid = _validate(parts, self.origin)
        base_valid = self._validation_of(base)
        with self._locked():
            raw = self._read_bytes()
            current = raw.decode("utf-8", "surrogateescape")
            current_serial = self._serial_if_unchanged(current, base, base_valid)
            block = _block_of(current) or parts.block
            serial = next_serial(_later(edited_serial, current_serial),
                                 today or dt.datetime.now(dt.UTC).date())
            new_text = ZoneText(valid.head + str(serial) + valid.tail, "", valid.after).join(block)
            self._verify_in_context(new_text, valid.rdatas + len(block_records(block, self.origin)),
                                    serial)
            try:
                self._replace(self._write_temp(new_text.encode("utf-8", "surrogateescape")),
                              expected=raw, durable=True)
            except _FileChanged:
                raise EditConflict(f"{self.path} was saved by another editor just now") from None
        self._validated = valid  # the operator's text is now the edit's: the next edit starts from it
        return serial

    def _validation_of(self, base: str) -> _Validated | None:
        """The validation of the operator's text an edit started from (usually remembered), or
        None when that text is not valid: the edit may be its repair."""
        try:
            return self._operator_serial(ZoneText.split(base))[1]
        except ZoneError:
            return None

    def _serial_if_unchanged(self, current: str, base: str, base_valid: _Validated | None) -> int | None:
        """The serial of `current` if its operator's part is that of `base` but for what dnsapi
        changes: its block, and the serial digits while the operator's text is valid (dnsapi
        writes nothing while it is not). EditConflict if anything else changed."""
        conflict = EditConflict(f"{self.path} was changed by someone else while you edited it")
        if base_valid is None:
            if _operator_text(current) != _operator_text(base):
                raise conflict
            return soa_serial(current)
        try:
            serial = base_valid.serial_of(ZoneText.split(current))
        except ZoneError:
            raise conflict from None
        if serial is None:
            raise conflict
        return serial

    @contextlib.contextmanager
    def _locked(self, wait: bool = True) -> Iterator[None]:
        """Hold the advisory lock that dnsapi's writer and `apply_edit` take to change the file
        (`sync` from reading it to renaming its replacement; `commit` around the check that it
        is still what `prepare` read, and the rename). It is taken on the file's directory,
        which stays put, since the file itself is replaced by every write; closing the
        descriptor releases it. Without `wait`, CommitLater when someone else holds it."""
        try:
            fd = os.open(self.path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise ZoneError(f"cannot lock the directory of zone file {self.path}: "
                            f"{exc.strerror}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise CommitLater(again=False) from None
            except OSError as exc:  # (no locks on this file system, say)
                raise ZoneError(f"cannot lock the directory of zone file {self.path}: "
                                f"{exc.strerror}") from None
            yield
        finally:
            os.close(fd)

    def prepare(self, records: Mapping[Key, Record], today: dt.date | None = None) -> Rewrite:
        """The first half of `sync`, for the writer to do while Vault is still writing: the new
        text, checked, in a temp file beside the zone file and flushed to disk. Nothing anyone
        sees changes until `commit`; `discard` it if Vault refuses the change. Raises ZoneError
        as `sync` does."""
        raw = self._read_bytes()
        text = raw.decode("utf-8", "surrogateescape")
        parts = ZoneText.split(text)
        old_serial, valid = self._operator_serial(parts)
        servable = self._servable(records, valid.rules)
        newline = "\r\n" if "\r\n" in text else "\n"
        block = self.block.render(servable, newline) if servable or parts.block else ""
        if block == parts.block:
            return Rewrite(records, raw, Served(servable, old_serial, valid), None)
        if self._written is not None and serial_gt(self._written, old_serial):
            # An editor buffer older than our last rewrite was saved: count on from what
            # CoreDNS may already have loaded, so it reloads.
            old_serial = self._written
        serial = next_serial(old_serial, today or dt.datetime.now(dt.UTC).date())
        new_text = ZoneText(valid.head + str(serial) + valid.tail, "", valid.after).join(block)
        if valid is not self._in_context:
            # Once per operator text: a check that fails is made again next time, never cached.
            self._verify_in_context(new_text, valid.rdatas + len(servable), serial)
            self._in_context = valid
        tmp = self._write_temp(new_text.encode("utf-8", "surrogateescape"))
        return Rewrite(records, raw, Served(servable, serial, valid), tmp)

    def _commit(self, rewrite: Rewrite) -> int | None:
        """Under the lock: put `rewrite` in place; _FileChanged if the file changed since it
        was renamed over (a file left as it was is checked by `commit`, which knows whether it
        was read under this lock)."""
        if rewrite.tmp is None:
            if not rewrite.served.same_as(self.served):  # (a reconcile that found nothing new)
                self.served = rewrite.served
            return None
        self._replace(rewrite.tmp, rewrite.expected)
        self._written = rewrite.served.serial
        self.served = rewrite.served
        return rewrite.served.serial

    def _servable(self, records: Mapping[Key, Record], rules: NameRules) -> Mapping[Key, Record]:
        """`records` without those the operator's zone no longer allows (a CNAME added by hand at
        a challenge name, say), nor a name where dnsapi's CNAME shares the name with another of
        its records (only a hand-edited Vault secret can hold that): they stay in Vault, but the
        zone must keep loading."""
        # Per name and kind, not per record: a busy zone holds many values at few names, and
        # this runs for every batch; remembered while the operator's text stays the same.
        kinds = {(record.fqdn, record.kind) for record in records.values()}
        remembered_for, known = self._refusals
        if remembered_for is not rules or len(known) > 2 * len(kinds):  # (names gone from Vault drop out)
            known = {}
            self._refusals = (rules, known)
        for pair in kinds - known.keys():
            known[pair] = rules.conflict(*pair)
        refused = {pair: why for pair in kinds if (why := known[pair]) is not None}
        cnames = {fqdn for fqdn, kind in kinds if kind == "CNAME"}
        if cnames:
            held = Counter(key[0] for key in records)
            refused.update({(fqdn, kind): f"a CNAME and other records at {fqdn} in Vault"
                            for fqdn, kind in kinds if fqdn in cnames and held[fqdn] > 1})
        if not refused:
            return records
        blocked = {key: refused[(record.fqdn, record.kind)] for key, record in records.items()
                   if (record.fqdn, record.kind) in refused}
        for fqdn, reason in sorted({(key[0], reason) for key, reason in blocked.items()}):
            log.warning("zone %s: not writing the records at %s: %s", self.origin, fqdn, reason)
        return {key: record for key, record in records.items() if key not in blocked}

    def _operator_serial(self, parts: ZoneText) -> tuple[int, _Validated]:
        """The operator's SOA serial and the validation it rests on, remembered only once it has
        passed and redone whenever the operator's text differs from the remembered one (an edit
        by hand or by `dnsapi zone edit` in another process). The caller gets the validation
        itself: /readyz may revalidate from another thread meanwhile.
        """
        remembered = self._validated
        known = remembered.serial_of(parts) if remembered else None
        if remembered is not None and known is not None:
            return known, remembered
        serial, valid = _validate(parts, self.origin)
        self._validated = valid
        return serial, valid

    def _verify_in_context(self, text: str, rdatas: int, serial: int) -> None:
        """Once per validated operator text: the whole new file parses, carries the new serial,
        and holds exactly `rdatas` records, the operator's plus ours (so the block sits where the
        parser is between records, not inside someone's parentheses)."""
        zone = parse_zone(text, self.origin, "the rewritten zone")
        if zone.get_soa().serial != serial:
            raise ZoneError(f"internal check failed: the rewritten zone for {self.origin} does not "
                            "carry the new serial; not written")
        if _rdata_count(zone) != rdatas:
            raise ZoneError(f"dnsapi's block in {self.path} sits inside another record (its markers "
                            "were moved?); put the BEGIN/END lines between records")

    def _write_temp(self, data: bytes) -> Path:
        """`data` in a new temp file beside the zone file, flushed to disk, with the zone file's
        mode (and owner, when dnsapi may set it).

        The temp file's fsync always happens: without it a crash could leave the renamed file
        empty or torn, and the operator's records are in no other place."""
        try:
            current = self.path.stat()
            fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                        suffix=".tmp")
        except OSError as exc:
            raise ZoneError(f"cannot write zone file {self.path}: {exc.strerror}") from None
        tmp = Path(name)
        with self._dropped_on_failure(tmp):
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, stat.S_IMODE(current.st_mode))
            if hasattr(os, "chown") and (current.st_uid, current.st_gid) != (os.getuid(), os.getgid()):
                # not root: the file keeps our ownership and its original mode
                with contextlib.suppress(PermissionError):
                    os.chown(tmp, current.st_uid, current.st_gid)
        return tmp

    @contextlib.contextmanager
    def _dropped_on_failure(self, tmp: Path) -> Iterator[None]:
        """Delete `tmp` if the block fails; an OSError becomes a ZoneError."""
        try:
            yield
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise ZoneError(f"cannot write zone file {self.path}: {exc.strerror}") from None
            raise

    def _replace(self, tmp: Path, expected: bytes, durable: bool = False) -> None:
        """Rename `tmp` over the zone file, unless the file no longer holds `expected`
        (_FileChanged, and `tmp` is dropped); with `durable`, fsync the directory too.

        That fsync only makes the rename itself survive a crash; a rewrite of dnsapi's records
        does not need it (the previous file comes back whole, and dnsapi rewrites the block from
        Vault when it starts), an operator's edit does."""
        with self._dropped_on_failure(tmp):
            if self.path.read_bytes() != expected:
                raise _FileChanged()
            os.replace(tmp, self.path)
            self._seen = self._identity()
        if not durable:
            return
        dir_fd = os.open(self.path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _rdata_count(zone: dns.zone.Zone) -> int:
    return sum(len(rdataset) for node in zone.nodes.values() for rdataset in node.rdatasets)
