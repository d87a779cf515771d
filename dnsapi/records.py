"""The challenge record and the set operations that batches apply to a zone's records."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum

Key = tuple[str, str]  # a record's identity: (fqdn, value)


@dataclass(frozen=True)
class Record:
    """One TXT value at one name, or (kind "CNAME") the alias that points a challenge name to an
    acme-dns account's name. (fqdn, value) is the identity: a CNAME's value is its target without
    the trailing dot, and as TXT values never hold a dot the two kinds never share a key. ttl,
    created_at and the owner (the name of the token that added it, for the per-token quota; ""
    when unknown) ride along."""

    fqdn: str
    value: str
    ttl: int
    created_at: float
    owner: str = ""
    kind: str = "TXT"  # "TXT" | "CNAME"

    @property
    def key(self) -> Key:
        return (self.fqdn, self.value)


@dataclass(frozen=True)
class Change:
    """A requested add or remove. For a remove only fqdn and value matter; "remove_name" removes
    every value at record.fqdn (RFC 2136's delete of an RRset or of a name)."""

    action: str  # "add" | "remove" | "remove_name"
    record: Record


class Outcome(Enum):
    CREATED = "created"
    EXISTED = "existed"  # add of a pair that was already there: nothing changed
    REMOVED = "removed"
    ABSENT = "absent"  # remove of a pair that was not there: nothing changed
    FULL = "full"  # add refused: the zone holds its maximum number of records
    QUOTA = "quota"  # add refused: the adding token holds its maximum number of records
    APPLIED = "applied"  # an Update: every change applied (or already so)
    # An Update whose prerequisite does not hold, by the rcode RFC 2136 gives it; nothing applied.
    NXDOMAIN = "nxdomain"  # a name that should be in use is not
    YXDOMAIN = "yxdomain"  # a name that should not be in use is
    NXRRSET = "nxrrset"  # an RRset that should exist (with these values) does not
    YXRRSET = "yxrrset"  # an RRset that should not exist does
    CONFLICT = "conflict"  # add refused: a CNAME and other data at one name (RFC 1034 3.6.2)


PREREQUISITE_FAILURES = (Outcome.NXDOMAIN, Outcome.YXDOMAIN, Outcome.NXRRSET, Outcome.YXRRSET)


@dataclass(frozen=True)
class Prerequisite:
    """An RFC 2136 §2.4 prerequisite on dnsapi's records at `fqdn` (of `rdtype`): `exists`,
    `exists_exactly` (the TXT RRset is exactly `values`) or `absent`. Checked against dnsapi's
    records inside the zone's writer, so atomically with the changes; what the operator's own
    records say is decided by the front door before. `failure` is the outcome when it does not
    hold (RFC 2136 §3.2.5 names an rcode for each kind)."""

    kind: str  # "exists" | "exists_exactly" | "absent"
    fqdn: str
    failure: Outcome
    values: frozenset[str] = frozenset()
    rdtype: str = "TXT"  # the records it is about: "TXT", "CNAME" (acme-dns's), or "ANY" (the name)

    def holds(self, records: dict[Key, Record]) -> bool:
        present = {value for (fqdn, value), record in records.items()
                   if fqdn == self.fqdn and self.rdtype in (record.kind, "ANY")}
        if self.kind == "exists":
            return bool(present)
        if self.kind == "absent":
            return not present
        return present == self.values


@dataclass(frozen=True)
class Update:
    """Changes applied all together or not at all, if every prerequisite holds (one RFC 2136
    UPDATE message)."""

    changes: tuple[Change, ...]
    prerequisites: tuple[Prerequisite, ...] = ()



def apply_changes(records: dict[Key, Record], changes: list[Change | Update],
                  limit: int, quota: int | None = None) -> list[Outcome]:
    """Apply `changes` in order to `records` (mutated in place), one Outcome per change.

    An existing pair is left as it was, so repeating an add (a client retry) is harmless. An add
    that would give its owner more than `quota` records in the zone is refused, and so, after
    that, is one that would take the zone past `limit`: so one narrow token cannot fill the zone
    for every other. A CNAME is added only at a name holding nothing, and a TXT value never at a
    name holding a CNAME (CONFLICT); a remove of a whole name takes only its TXT values. An
    Update applies all its changes or none.
    """
    owned = Counter(r.owner for r in records.values()) if quota is not None else Counter()
    cnames = {r.fqdn for r in records.values() if r.kind == "CNAME"}
    outcomes = []
    for change in changes:
        if isinstance(change, Update):
            outcomes.append(_apply_update(records, change, owned, cnames, limit, quota))
        else:
            outcomes.append(_apply_one(records, change, owned, cnames, limit, quota))
    return outcomes


Journal = list[tuple[Key, Record | None]]  # (key, the record it held before: None = none)


def _apply_one(records: dict[Key, Record], change: Change, owned: Counter[str], cnames: set[str],
               limit: int, quota: int | None, journal: Journal | None = None) -> Outcome:
    record = change.record
    key, owner = record.key, record.owner
    if change.action == "add":
        if key in records:
            return Outcome.EXISTED
        if record.fqdn in cnames or (record.kind == "CNAME"
                                     and any(k[0] == record.fqdn for k in records)):
            return Outcome.CONFLICT
        if quota is not None and owner and owned[owner] >= quota:
            return Outcome.QUOTA
        if len(records) >= limit:
            return Outcome.FULL
        _put(records, owned, cnames, key, record)
        if journal is not None:
            journal.append((key, None))
        return Outcome.CREATED
    if change.action == "remove_name":
        gone = [k for k, r in records.items() if k[0] == key[0] and r.kind == "TXT"]
    else:
        gone = [key] if key in records and records[key].kind == record.kind else []
    for k in gone:
        dropped = _pop(records, owned, cnames, k)
        if journal is not None:
            journal.append((k, dropped))
    return Outcome.REMOVED if gone else Outcome.ABSENT


def _apply_update(records: dict[Key, Record], update: Update, owned: Counter[str], cnames: set[str],
                  limit: int, quota: int | None) -> Outcome:
    """All of the update's changes, or none: applied in place, undone from a journal when one
    is refused (copying a large zone's records for every message would cost more)."""
    for prerequisite in update.prerequisites:
        if not prerequisite.holds(records):
            return prerequisite.failure
    journal: Journal = []
    for change in update.changes:
        outcome = _apply_one(records, change, owned, cnames, limit, quota, journal)
        if outcome in (Outcome.FULL, Outcome.QUOTA, Outcome.CONFLICT):
            for key, before in reversed(journal):
                if before is None:
                    _pop(records, owned, cnames, key)
                else:
                    _put(records, owned, cnames, key, before)
            return outcome
    return Outcome.APPLIED


def _put(records: dict[Key, Record], owned: Counter[str], cnames: set[str], key: Key,
         record: Record) -> None:
    records[key] = record
    owned[record.owner] += 1
    if record.kind == "CNAME":
        cnames.add(record.fqdn)


def _pop(records: dict[Key, Record], owned: Counter[str], cnames: set[str], key: Key) -> Record:
    record = records.pop(key)
    owned[record.owner] -= 1
    if record.kind == "CNAME":
        cnames.discard(record.fqdn)
    return record
