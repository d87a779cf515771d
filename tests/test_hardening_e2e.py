"""Audit trail, stale-record expiry, rate limit and open mode, through real processes."""

import json
import time

import pytest

from dnsapi.audit import value_hash
from dnsapi.devstack import StackError

from .helpers import add_token, wait_until

NAME = "_acme-challenge.hard.dev.local"
VALUE = "H" * 43


def audit_lines(stack):
    return [json.loads(line) for line in (stack.dir / "audit.jsonl").read_text().splitlines()]


def with_audit_file(config):
    config["audit"] = {"file": "audit.jsonl"}


def test_audit_trail_records_changes_and_refusals_without_secrets(make_stack):
    tokens = {}

    def edit(config):
        with_audit_file(config)
        tokens.update(www=add_token(config, "www-only", ["www.dev.local"]))
    stack = make_stack(edit=edit)
    stack.add(NAME, VALUE)
    stack.add(NAME, VALUE)
    stack.remove(NAME, VALUE)
    stack.call("GET", "/v1/records")  # a successful read is not a change: not audited
    stack.call("POST", "/v1/records", token="wrong-token", json={"fqdn": NAME, "value": VALUE})
    stack.call("POST", "/v1/records", token=tokens["www"], json={"fqdn": NAME, "value": VALUE})
    stack.call("POST", "/v1/records", data=b'{"fqdn": "www.dev.local\\n", "value": "x"}')
    lines = audit_lines(stack)
    summary = [(e["action"], e.get("token"), e.get("result"), e["status"], e.get("error")) for e in lines]
    assert summary == [
        ("add", "acme", "created", 201, None),
        ("add", "acme", "existed", 200, None),
        ("remove", "acme", "removed", 200, None),
        ("add", None, "refused", 401, "unauthorized"),
        ("add", "www-only", "refused", 403, "forbidden"),
        ("add", "acme", "refused", 400, "invalid_name"),
    ]
    assert all(e["remote"] == "127.0.0.1" and e["time"].endswith("+00:00") for e in lines)
    assert lines[0]["fqdn"] == NAME and lines[0]["value_sha256"] == value_hash(VALUE)
    assert lines[5]["fqdn"] == "www.dev.local\n"  # the refused input, JSON-escaped
    everything = (stack.dir / "audit.jsonl").read_text() + (stack.dir / "dnsapi.log").read_text()
    for secret in (stack.token, tokens["www"], "wrong-token", stack.vault.root_token):
        assert secret not in everything


def test_stale_records_expire(make_stack):
    def edit(config):
        with_audit_file(config)
        config.update(max_age="2s", reconcile_interval="500ms")
    stack = make_stack(edit=edit)
    stack.add(NAME, VALUE)
    stack.wait_served(NAME, {VALUE})
    time.sleep(1)
    stack.add(NAME, "fresh")
    stack.wait_served(NAME, {"fresh"}, timeout=6)  # the older one went first
    assert stack.vault_records() == {(NAME, "fresh")}
    stack.wait_served(NAME, set(), timeout=6)
    assert stack.vault_records() == set()
    expired = [e for e in audit_lines(stack) if e["action"] == "expire"]
    assert [(e["fqdn"], e["value_sha256"]) for e in expired] == [
        (NAME, value_hash(VALUE)), (NAME, value_hash("fresh"))]


def test_rate_limit_per_token(make_stack):
    tokens = {}

    def edit(config):
        config["rate_limit"] = {"per_second": 1, "burst": 3}
        tokens.update(other=add_token(config, "other", ["*.dev.local"]))
    stack = make_stack(edit=edit)
    statuses = [stack.call("GET", "/v1/records").status_code for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[3:] == [429, 429]
    limited = stack.call("GET", "/v1/records")
    retry_after = int(limited.headers["Retry-After"])
    assert limited.json()["error"] == "rate_limited" and retry_after >= 1
    assert stack.call("GET", "/v1/records", token=tokens["other"]).status_code == 200  # per token
    # a refused request takes nothing from the bucket, so asking again shows when it refills
    wait_until(lambda: stack.call("GET", "/v1/records").status_code == 200, retry_after + 2,
               "the bucket to refill")


def test_open_mode_only_on_loopback_and_only_when_asked(make_stack):
    def open_mode(config):
        config["tokens"] = []
        config["open_on_loopback"] = True
    stack = make_stack(edit=open_mode)
    response = stack.call("POST", "/v1/records", token=None, json={"fqdn": NAME, "value": VALUE})
    assert response.status_code == 201
    assert stack.call("POST", "/v1/records", token="bogus",
                      json={"fqdn": NAME, "value": VALUE}).status_code == 401

    def no_tokens(config):
        config["tokens"] = []
    refused = make_stack(edit=no_tokens, start=False)
    with pytest.raises(StackError):
        refused.start_dnsapi()
    assert "tokens: must be a non-empty list" in (refused.dir / "dnsapi.log").read_text()

    def open_on_all_interfaces(config):
        open_mode(config)
        config["listen"] = "0.0.0.0:1"
    wide = make_stack(edit=open_on_all_interfaces, start=False)
    with pytest.raises(StackError):
        wide.start_dnsapi()
    assert "open_on_loopback: only allowed when listen is a loopback address, not 0.0.0.0" in \
        (wide.dir / "dnsapi.log").read_text()


@pytest.mark.parametrize("fqdn", [
    "_ACME-CHALLENGE.API.DEV.LOCAL.", "_acme-challenge.api.dev.local.", "_Acme-Challenge.Api.Dev.Local",
    "_acme-challenge.www.dev.local.api.dev.local", "_acme-challenge.wwwx.dev.local",
    "_acme-challenge.x.www.dev.local", "_acme-challenge.dev.local",
])
def test_scope_cannot_be_tricked(make_stack, fqdn):
    tokens = {}
    stack = make_stack(edit=lambda c: tokens.update(www=add_token(c, "www-only", ["www.dev.local"])))
    response = stack.call("POST", "/v1/records", token=tokens["www"], json={"fqdn": fqdn, "value": VALUE})
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    for variant in ("_ACME-CHALLENGE.WWW.DEV.LOCAL.", "_acme-challenge.www.dev.local"):
        allowed = stack.call("POST", "/v1/records", token=tokens["www"],
                             json={"fqdn": variant, "value": VALUE})
        assert allowed.status_code in (200, 201)
    assert stack.vault_records() == {("_acme-challenge.www.dev.local", VALUE)}
