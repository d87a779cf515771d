"""Normalise and validate the names, values and TTLs that callers send, and match names to zones
and token patterns.

Everything here is pure and strict on purpose: whatever passes these checks is later written into a
live zone file, so a value is only ever base64url (what ACME clients send) and a name is never
anything but a plain DNS name below one of our zones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class InvalidInput(ValueError):
    """A name, value or TTL that may not be stored; `code` says which kind (invalid_name,
    unknown_zone, invalid_value, invalid_ttl). Each front door maps it to its protocol's refusal
    (the HTTP API: 400 with the code); the config loader to a ConfigError naming the key."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

MAX_NAME_LENGTH = 253  # presentation form without the trailing dot (RFC 1035: 255 octets on the wire)
MAX_LABEL_LENGTH = 63
MAX_VALUE_LENGTH = 255  # one TXT character-string; longer strings would be split by parsers

# Letters, digits, hyphen, and underscore (for _acme-challenge and other service labels).
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_VALUE_RE = re.compile(r"[A-Za-z0-9_=-]")
_UUID_LABEL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def normalize_name(name: object, what: str = "fqdn") -> str:
    """Return `name` lower-cased without its trailing dot, or raise InvalidInput naming the problem.

    Only ASCII host-name characters and `_` are accepted; internationalised names must arrive in
    their IDNA (`xn--`) form, which is what ACME clients send anyway.
    """
    if not isinstance(name, str):
        raise InvalidInput(f"{what} must be a string", "invalid_name")
    if not name:
        raise InvalidInput(f"{what} is empty", "invalid_name")
    if not name.isascii():
        raise InvalidInput(f"{what} contains non-ASCII characters; send internationalised names in "
                         "their IDNA form (xn--...)", "invalid_name")
    text = name.lower()
    text = text.removesuffix(".")
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidInput(f"{what} is longer than {MAX_NAME_LENGTH} characters", "invalid_name")
    for label in text.split("."):
        if not label:
            raise InvalidInput(f"{what} has an empty label", "invalid_name")
        if len(label) > MAX_LABEL_LENGTH:
            raise InvalidInput(f"{what} has a label longer than {MAX_LABEL_LENGTH} characters",
                             "invalid_name")
        if not _LABEL_RE.fullmatch(label):
            raise InvalidInput(f"{what} label {label[:MAX_LABEL_LENGTH]!r} may only contain letters, "
                             "digits, '-' and '_', and may not start or end with '-'",
                             "invalid_name")
    return text


def is_below(name: str, parent: str) -> bool:
    """True when normalised `name` is `parent` itself or lies beneath it (label-wise, not string-wise)."""
    return name == parent or name.endswith("." + parent)


def zone_for(name: str, zones: Iterable[str]) -> str | None:
    """The zone with the longest suffix match for `name` (zones may be nested), or None. A name
    from the wire whose text holds an escape (`a\\.dev.local`: a label holding a dot) is in no
    zone, though its text may end like one."""
    if "\\" in name:
        return None
    best: str | None = None
    for zone in zones:
        if is_below(name, zone) and (best is None or len(zone) > len(best)):
            best = zone
    return best


def is_account_name(name: str, account_zone: str | None) -> bool:
    """Is normalised `name` an acme-dns account's own name, `<uuid>.<account_zone>`? (The CNAME
    target its clients' challenge names point to, where its TXT values live.)"""
    label, _, parent = name.partition(".")
    return account_zone is not None and parent == account_zone and bool(_UUID_LABEL.fullmatch(label))


def validate_challenge_name(fqdn: object, zones: Iterable[str], challenge_label: str,
                            account_zone: str | None = None) -> tuple[str, str]:
    """Normalise `fqdn` and check it is `<challenge_label>.<something>` below a configured zone,
    or an acme-dns account's name in `account_zone` (when acme-dns is on).

    Returns (fqdn, zone).
    """
    name = normalize_name(fqdn)
    if name.split(".", 1)[0] != challenge_label and not is_account_name(name, account_zone):
        raise InvalidInput(f"fqdn must start with the label {challenge_label!r}", "invalid_name")
    zone = zone_for(name, zones)
    if zone is None:
        raise InvalidInput(f"fqdn {name!r} is not below any zone this service manages", "unknown_zone")
    if name == zone:
        raise InvalidInput(f"fqdn {name!r} is a zone apex, not a challenge name", "invalid_name")
    return name, zone


def validate_value(value: object) -> str:
    """Accept 1..255 characters of the base64url alphabet (A-Z a-z 0-9 - _), '=' padding allowed.

    Every ACME client sends base64url(SHA-256(key authorization)), 43 characters; nothing else has
    a reason to be here. Quotes, backslashes, ';', parentheses, '$', spaces and control characters
    are refused outright, even though the zone writer would quote and escape them as well.
    """
    if not isinstance(value, str):
        raise InvalidInput("value must be a string", "invalid_value")
    if not value:
        raise InvalidInput("value is empty", "invalid_value")
    if len(value) > MAX_VALUE_LENGTH:  # (every allowed character is one byte)
        raise InvalidInput(f"value is longer than {MAX_VALUE_LENGTH} bytes", "invalid_value")
    bad = next((ch for ch in value if not _VALUE_RE.fullmatch(ch)), None)
    if bad is not None:
        raise InvalidInput(f"value may only contain base64url characters (A-Z a-z 0-9 - _ =), not "
                         f"U+{ord(bad):04X}", "invalid_value")
    return value


def validate_ttl(ttl: object, minimum: int, maximum: int) -> int:
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise InvalidInput("ttl must be an integer number of seconds", "invalid_ttl")
    if not minimum <= ttl <= maximum:
        raise InvalidInput(f"ttl must be between {minimum} and {maximum} seconds", "invalid_ttl")
    return ttl


def normalize_pattern(pattern: str) -> str:
    """Normalise a token `allow` pattern: `*.zone` (anything strictly below zone) or a plain name."""
    if pattern.startswith("*."):
        return "*." + normalize_name(pattern[2:], "pattern")
    return normalize_name(pattern, "pattern")


def patterns_allow(patterns: Iterable[str], fqdn: str, challenge_label: str) -> bool:
    """Does any of a token's or a key's `allow` patterns cover `fqdn`?"""
    return any(pattern_allows(p, fqdn, challenge_label) for p in patterns)


def pattern_allows(pattern: str, fqdn: str, challenge_label: str) -> bool:
    """Does a normalised `allow` pattern cover the normalised challenge name `fqdn`?

    `*.dev.local` covers every name strictly below dev.local, including the apex's own challenge
    name `_acme-challenge.dev.local`. A plain `www.dev.local` covers the name itself and its
    challenge name `_acme-challenge.www.dev.local`, so a pattern can be written as the domain
    being certified.
    """
    if pattern.startswith("*."):
        return fqdn.endswith(pattern[1:])
    return fqdn == pattern or fqdn == f"{challenge_label}.{pattern}"
