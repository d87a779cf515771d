"""Hostile input against the real service: every case gets a 4xx JSON error and changes nothing -
the zone file stays byte-identical, Vault keeps the same records, and the service keeps answering."""

import json

import pytest

from .helpers import FIGURES

GOOD_NAME = "_acme-challenge.www.dev.local"
GOOD_VALUE = "A" * 43

HOSTILE_NAMES = [
    "_acme-challenge.www\n.dev.local", "_acme-challenge.www.dev.local\n@ IN NS evil.",
    "_acme\r-challenge.x.dev.local",
    "_acme-challenge.w\x00w.dev.local", '_acme-challenge."x".dev.local', "_acme-challenge.x\\.dev.local",
    "_acme-challenge.x;y.dev.local", "_acme-challenge.x(y).dev.local", "$INCLUDE /etc/passwd",
    "$ORIGIN evil.", "_acme-challenge.$ORIGIN.dev.local", "_acme-challenge.a b.dev.local",
    "_acme-challenge.b\u00fccher.dev.local", "_acme-challenge.\u4f8b\u3048.dev.local",
    "_acme-challenge." + "a" * 64 + ".dev.local",
    "_acme-challenge." + ("a" * 60 + ".") * 4 + "dev.local", "_acme-challenge.www.example.com",
    "_acme-challenge.evil.dev.local.attacker", "_acme-challenge.dev.localx", "dev.local",
    "*.dev.local", "_acme-challenge.*.dev.local", "www.dev.local", "x._acme-challenge.www.dev.local",
    "", ".", "..", "_acme-challenge..dev.local", "_acme-challenge.-x.dev.local",
    "_acme-challenge.www.dev.local..",
]
HOSTILE_VALUES = [
    "a\nb", "a\rb", "a\x00b", 'a"b', 'x" ; evil IN A 10.0.0.1 ; "', "a\\b", "a\\\"b", "a;b",
    "a(b)", "(", ")", "$INCLUDE /etc/passwd", "$ORIGIN evil.", "a b", " ", "caf\u00e9",
    "\u4f8b", "x" * 256, "", '"\n@ IN NS evil.\n"', "\t", "a.b",
]
HOSTILE_BODIES = [
    b"not json", b"{", b'["a list"]', b'"a string"', b"42", b"null", b"true",
    b"[" * 5000 + b"]" * 5000, b"\xff\xfe\x00garbage", b'{"fqdn": 1, "value": "x"}',
    b'{"fqdn": ["x"], "value": "x"}', b'{"fqdn": {"a": 1}, "value": "x"}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": 5}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": null}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": true}',
    b'{"fqdn": "_acme-challenge.www.dev.local"}', b'{"value": "x"}', b"{}",
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "extra": 1}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": "60"}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": 60.5}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": -1}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": 99999999999}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": true}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": NaN}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "wait": "yes"}',
    b'{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "fqdn": "evil.example"}',
    b"x" * 20000,
]


def cases():
    """(method, path, kwargs) for every hostile request."""
    for name in HOSTILE_NAMES:
        yield "POST", "/v1/records", {"data": json.dumps({"fqdn": name, "value": GOOD_VALUE})}
        yield "DELETE", "/v1/records", {"params": {"fqdn": name, "value": GOOD_VALUE}}
        yield "GET", "/v1/records", {"params": {"fqdn": name}}
        yield "POST", "/present", {"data": json.dumps({"fqdn": name, "value": GOOD_VALUE})}
    for value in HOSTILE_VALUES:
        yield "POST", "/v1/records", {"data": json.dumps({"fqdn": GOOD_NAME, "value": value})}
        yield "DELETE", "/v1/records", {"data": json.dumps({"fqdn": GOOD_NAME, "value": value})}
        yield "POST", "/cleanup", {"data": json.dumps({"fqdn": GOOD_NAME, "value": value})}
    for body in HOSTILE_BODIES:
        for path in ("/v1/records", "/present"):
            yield "POST", path, {"data": body, "headers": {"Content-Type": "text/plain"}}
        yield "DELETE", "/v1/records", {"data": body}
    yield "GET", "/v1/records", {"params": {"fqdn": GOOD_NAME, "evil": "1"}}
    yield "DELETE", "/v1/records", {"params": {"fqdn": GOOD_NAME}}


def test_hostile_input_is_refused_and_changes_nothing(make_stack):
    # Every case must reach the validation under test, not the per-address refusal limit
    # (test_hardening_e2e.py covers that limit).
    stack = make_stack(edit=lambda config: config.update(refusals={"per_second": 0}))
    assert stack.add(GOOD_NAME, GOOD_VALUE).status_code == 201
    stack.wait_served(GOOD_NAME, {GOOD_VALUE})
    zone_before = stack.zone_path.read_bytes()
    vault_before = stack.vault_records()
    count = 0
    for method, path, kwargs in cases():
        response = stack.call(method, path, **kwargs)
        where = f"{method} {path} {kwargs}"[:200]
        assert 400 <= response.status_code < 500, where
        body = response.json()
        assert set(body) >= {"error", "message"} and body["message"], where
        assert stack.zone_path.read_bytes() == zone_before, where
        count += 1
    assert stack.vault_records() == vault_before
    assert stack.call("GET", "/healthz").status_code == 200
    assert stack.query(GOOD_NAME) == ("NOERROR", {GOOD_VALUE})
    FIGURES["hostile requests refused, zone and Vault unchanged"] = str(count)


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Basic", "Basic !!!", "Basic Og==",
                                    "Token abc", "Bearer " + "x" * 8000])
def test_hostile_authorization_headers(stack, header):
    response = stack.call("POST", "/v1/records", token=False, headers={"Authorization": header},
                          json={"fqdn": GOOD_NAME, "value": GOOD_VALUE})
    assert response.status_code == 401, header
    assert response.json()["error"] == "unauthorized"
    assert stack.vault_records() == set()


def test_malformed_http_is_refused_before_the_application(stack):
    """A NUL in a header is not HTTP: aiohttp's parser answers 400 (in plain text, before any of
    dnsapi's code runs) and nothing is stored."""
    response = stack.call("POST", "/v1/records", token=False,
                          headers={"Authorization": f"Bearer {stack.token}\x00"},
                          json={"fqdn": GOOD_NAME, "value": GOOD_VALUE})
    assert response.status_code == 400
    assert stack.vault_records() == set()
    assert stack.call("GET", "/healthz").status_code == 200
