"""The challenge record and the set operations that batches apply to a zone's records."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Record:
    """One TXT value at one name. (fqdn, value) is the identity; ttl and created_at ride along."""

    fqdn: str
    value: str
    ttl: int
    created_at: float

    @property
    def key(self) -> tuple[str, str]:
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


def apply_changes(records: dict[tuple[str, str], Record], changes: list[Change],
                  limit: int) -> list[Outcome]:
    """Apply `changes` in order to `records` (mutated in place), one Outcome per change.

    An existing pair is left as it was, so repeating an add (a client retry) is harmless, and an
    add that would take the zone past `limit` records is refused rather than applied.
    """
    outcomes = []
    for change in changes:
        key = change.record.key
        if change.action == "add":
            if key in records:
                outcomes.append(Outcome.EXISTED)
            elif len(records) >= limit:
                outcomes.append(Outcome.FULL)
            else:
                records[key] = change.record
                outcomes.append(Outcome.CREATED)
        else:
            outcomes.append(Outcome.REMOVED if records.pop(key, None) else Outcome.ABSENT)
    return outcomes
