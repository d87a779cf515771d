"""Validation of names, values and TTLs, zone selection and token patterns (pure logic)."""

import pytest

from dnsapi.names import (
    InvalidInput,
    normalize_name,
    normalize_pattern,
    pattern_allows,
    validate_challenge_name,
    validate_ttl,
    validate_value,
    zone_for,
)

ZONES = ["dev.local", "corp.dev.local", "other.test"]
LABEL = "_acme-challenge"


@pytest.mark.parametrize("raw, expected", [
    ("_acme-challenge.www.dev.local", "_acme-challenge.www.dev.local"),
    ("_ACME-Challenge.WWW.Dev.Local.", "_acme-challenge.www.dev.local"),
    ("_acme-challenge.xn--bcher-kva.dev.local", "_acme-challenge.xn--bcher-kva.dev.local"),
    ("_acme-challenge.a-b.dev.local", "_acme-challenge.a-b.dev.local"),
])
def test_names_are_normalised(raw, expected):
    assert validate_challenge_name(raw, ZONES, LABEL)[0] == expected


@pytest.mark.parametrize("raw, code, fragment", [
    (None, "invalid_name", "must be a string"),
    (42, "invalid_name", "must be a string"),
    ("", "invalid_name", "empty"),
    (".", "invalid_name", "empty label"),
    ("_acme-challenge..dev.local", "invalid_name", "empty label"),
    ("_acme-challenge.www.dev.local..", "invalid_name", "empty label"),
    ("_acme-challenge.b\u00fccher.dev.local", "invalid_name", "IDNA"),
    ("_acme-challenge.www\n.dev.local", "invalid_name", "may only contain"),
    ("_acme-challenge.w w.dev.local", "invalid_name", "may only contain"),
    ("_acme-challenge.w;w.dev.local", "invalid_name", "may only contain"),
    ('_acme-challenge.w"w.dev.local', "invalid_name", "may only contain"),
    ("_acme-challenge.*.dev.local", "invalid_name", "may only contain"),
    ("_acme-challenge.-www.dev.local", "invalid_name", "may not start or end"),
    ("_acme-challenge.www-.dev.local", "invalid_name", "may not start or end"),
    ("_acme-challenge." + "a" * 64 + ".dev.local", "invalid_name", "longer than 63"),
    ("_acme-challenge." + ("a" * 60 + ".") * 4 + "dev.local", "invalid_name", "longer than 253"),
    ("www.dev.local", "invalid_name", "must start with the label"),
    ("x._acme-challenge.www.dev.local", "invalid_name", "must start with the label"),
    ("_acme-challenge.www.example.com", "unknown_zone", "not below any zone"),
    ("_acme-challenge.www.dev.localx", "unknown_zone", "not below any zone"),
    ("_acme-challenge.evil.dev.local.attacker", "unknown_zone", "not below any zone"),
])
def test_bad_names_are_refused_with_a_reason(raw, code, fragment):
    with pytest.raises(InvalidInput) as info:
        validate_challenge_name(raw, ZONES, LABEL)
    assert info.value.code == code
    assert fragment in info.value.message


def test_longest_zone_wins():
    assert zone_for("_acme-challenge.x.corp.dev.local", ZONES) == "corp.dev.local"
    assert zone_for("_acme-challenge.x.dev.local", ZONES) == "dev.local"
    assert zone_for("_acme-challenge.x.notcorp.dev.local", ZONES) == "dev.local"
    assert zone_for("_acme-challenge.x.example", ZONES) is None


def test_a_name_whose_label_holds_a_dot_is_in_no_zone():
    """Labels `x`, `corp.dev`, `local` in DNS text: it ends like a zone, and is in none."""
    assert zone_for("_acme-challenge.x.corp\\.dev.local", ZONES) is None
    assert zone_for("_acme-challenge.a\\032b.dev.local", ZONES) is None  # any escape: a special byte


def test_name_of_exactly_253_characters_is_accepted():
    name = "_acme-challenge." + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 35 + ".dev.local"
    assert len(name) == 253
    assert normalize_name(name) == name
    with pytest.raises(InvalidInput):
        normalize_name("x" + name)


@pytest.mark.parametrize("value", [
    "x" * 43, "a", "Z" * 255, "XKrxpRBosdIKFzxW_CT3KLZNf6q0HG9i01zxXp5CPBs", "abc-_=", "0123456789",
])
def test_base64url_values_are_accepted_unchanged(value):
    assert validate_value(value) == value


@pytest.mark.parametrize("value, fragment", [
    ("", "empty"), (None, "must be a string"), (7, "must be a string"), (["x"], "must be a string"),
    ("a\nb", "U+000A"), ("a\rb", "U+000D"), ("a\x00b", "U+0000"), ("a\tb", "U+0009"),
    ("a\x7fb", "U+007F"), ("caf\u00e9", "U+00E9"), ("x" * 256, "longer than 255"),
    ('a"b', "U+0022"), ("a\\b", "U+005C"), ("a;b", "U+003B"), ("a(b", "U+0028"), ("a b", "U+0020"),
    ("$INCLUDE", "U+0024"), ("a.b", "U+002E"), ("a+b/c", "U+002B"),
    ("a\ud800b", "U+D800"),  # a lone surrogate (JSON "\\ud800"): refused, not a 500
])
def test_bad_values_are_refused(value, fragment):
    with pytest.raises(InvalidInput) as info:
        validate_value(value)
    assert fragment in info.value.message


@pytest.mark.parametrize("ttl, ok", [(1, True), (3600, True), (0, False), (3601, False),
                                     (True, False), ("60", False), (60.0, False), (None, False)])
def test_ttl_bounds(ttl, ok):
    if ok:
        assert validate_ttl(ttl, 1, 3600) == ttl
    else:
        with pytest.raises(InvalidInput):
            validate_ttl(ttl, 1, 3600)


@pytest.mark.parametrize("pattern, fqdn, allowed", [
    ("*.dev.local", "_acme-challenge.www.dev.local", True),
    ("*.dev.local", "_acme-challenge.dev.local", True),  # the apex certificate's challenge
    ("*.dev.local", "_acme-challenge.a.b.dev.local", True),
    ("*.dev.local", "_acme-challenge.www.notdev.local", False),
    ("*.www.dev.local", "_acme-challenge.www.dev.local", True),  # strictly below www.dev.local
    ("*.www.dev.local", "_acme-challenge.x.www.dev.local", True),
    ("www.dev.local", "_acme-challenge.www.dev.local", True),
    ("www.dev.local", "_acme-challenge.x.www.dev.local", False),
    ("www.dev.local", "_acme-challenge.wwwx.dev.local", False),
    ("_acme-challenge.www.dev.local", "_acme-challenge.www.dev.local", True),
])
def test_allow_patterns(pattern, fqdn, allowed):
    assert pattern_allows(normalize_pattern(pattern), fqdn, LABEL) is allowed


def test_patterns_are_normalised():
    assert normalize_pattern("*.DEV.local.") == "*.dev.local"
    with pytest.raises(InvalidInput):
        normalize_pattern("*.dev..local")
