"""DNS names read from the wire by hand, strictly: only names dnspython would read the same way
and write as they are, for the RFC 2136 door's quick paths (tsig.py, update_message.py).
Anything else raises NotPlain, and the caller leaves the message to dnspython."""

from __future__ import annotations

import re

_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_-]{1,63}")  # dnspython writes these as they are
_MAX_HOPS = 4  # compression pointers in one name (real messages use one or two)
_HEADER = 12  # bytes before the first name, which no pointer may point into


class NotPlain(ValueError):
    """Not what the quick path takes; dnspython reads it."""


def name_at(wire: bytes, offset: int) -> tuple[str, int]:
    """The name at `offset` in lower case, without the final dot, and the offset after it.
    NotPlain for a name left to dnspython: the root, a label other than letters, digits, `-` and `_`, or a
    compression pointer that does not point before the part of the name that led to it (what
    it points to must also end there, as dnspython requires)."""
    labels: list[bytes] = []
    after: int | None = None  # where the name ends in the message: after its first pointer
    part, bound, hops, size = offset, len(wire), 0, 1
    while True:
        if offset >= bound:
            raise NotPlain("name runs past its end")
        length = wire[offset]
        if length >= 0xC0:
            if offset + 2 > bound:
                raise NotPlain("name runs past its end")
            target = ((length & 0x3F) << 8) | wire[offset + 1]
            if not _HEADER <= target < part or hops == _MAX_HOPS:
                raise NotPlain("compression pointer")
            after = offset + 2 if after is None else after
            bound, part, offset, hops = part, target, target, hops + 1
            continue
        if length > 63 or offset + 1 + length > bound:
            raise NotPlain("label")
        if length == 0:
            break
        label = wire[offset + 1:offset + 1 + length]
        size += length + 1
        if size > 255 or not _PLAIN_LABEL.fullmatch(label):
            raise NotPlain("label")
        labels.append(label)
        offset += 1 + length
    if not labels:
        raise NotPlain("the root")
    return b".".join(labels).decode("ascii").lower(), offset + 1 if after is None else after
