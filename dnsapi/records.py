"""The challenge record and the set operations that batches apply to a zone's records."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from enum import Enum

Key = tuple[str, str]  # a record's identity: (fqdn, value)


@dataclass(frozen=True)
class Record:
    """One TXT value at one name. (fqdn, value) is the identity; ttl, created_at and the owner
    (the name of the token that added it, for the per-token quota; "" when unknown) ride along."""

    fqdn: str
    value: str
    ttl: int
    created_at: float
    owner: str = ""

    @property
    def key(self) -> Key:
        return (self.fqdn, self.value)


@dataclass(frozen=True)
class Change:
    """A requested add or remove. For a remove only fqdn and value matter."""

    action: str  # "add" | "remove"
    record: Record


class Outcome(Enum):
    CREATED = "created"
    EXISTED = "existed"  # add of a pair that was already there: nothing changed
    REMOVED = "removed"
    ABSENT = "absent"  # remove of a pair that was not there: nothing changed
    FULL = "full"  # add refused: the zone holds its maximum number of records
    QUOTA = "quota"  # add refused: the adding token holds its maximum number of records


def apply_changes(records: dict[tuple[str, str], Record], changes: list[Change],
                  limit: int, quota: int | None = None) -> list[Outcome]:
    """Apply `changes` in order to `records` (mutated in place), one Outcome per change.

    An existing pair is left as it was, so repeating an add (a client retry) is harmless. An add
    that would give its owner more than `quota` records in the zone is refused, and so, after
    that, is one that would take the zone past `limit`: so one narrow token cannot fill the zone
    for every other.
    """
    owned = Counter(r.owner for r in records.values()) if quota is not None else Counter()
    outcomes = []
    for change in changes:
        key, owner = change.record.key, change.record.owner
        if change.action == "add":
            if key in records:
                outcomes.append(Outcome.EXISTED)
            elif quota is not None and owner and owned[owner] >= quota:
                outcomes.append(Outcome.QUOTA)
            elif len(records) >= limit:
                outcomes.append(Outcome.FULL)
            else:
                records[key] = change.record
                owned[owner] += 1
                outcomes.append(Outcome.CREATED)
        else:
            removed = records.pop(key, None)
            if removed is not None:
                owned[removed.owner] -= 1
            outcomes.append(Outcome.REMOVED if removed else Outcome.ABSENT)
    return outcomes
