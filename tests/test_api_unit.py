"""The HTTP layer in-process: dnsapi.api's app through aiohttp's test client, on a RecordService
over the in-memory store (helpers.MemoryStore), with the clocks of the rate limits and the audit
trail, and the DNS waits, in the test's hands."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from dnsapi import audit
from dnsapi.api import RUNTIME, create_app
from dnsapi.audit import AuditLog, value_hash
from dnsapi.config import Config
from dnsapi.errors import PropagationTimeout, VaultUnavailable
from dnsapi.propagation import Waits
from dnsapi.ratelimit import RateLimiter
from dnsapi.service import RecordService

from .helpers import ZONE, FakeClock, MemoryStore, Tokens, metric_total, service_config, until, until_done

WWW = "_acme-challenge.www.dev.local"
API = "_acme-challenge.api.dev.local"
VALUE = "A" * 43
TWO_TOKENS = {"acme": ["*.dev.local"], "www-only": ["www.dev.local"]}


@dataclass
class Api:
    """A client of the app, and what stands behind it."""

    client: TestClient
    service: RecordService
    store: MemoryStore
    tokens: Tokens
    config: Config
    clock: FakeClock

    async def call(self, method: str, path: str, token: str | None = "acme", **kwargs: Any
                   ) -> tuple[int, Any, dict[str, str]]:
        """(status, JSON body, headers) of one request, with the named token (None: none)."""
        headers = {**(self.tokens.header(token) if token else {}), **kwargs.pop("headers", {})}
        async with self.client.request(method, path, headers=headers, **kwargs) as response:
            return response.status, await response.json(), dict(response.headers)

    async def add(self, fqdn: str = WWW, value: str = VALUE, token: str = "acme", **extra: Any
                  ) -> tuple[int, Any, dict[str, str]]:
        return await self.call("POST", "/v1/records", token, json={"fqdn": fqdn, "value": value, **extra})

    def audit(self) -> list[dict[str, Any]]:
        path = self.config.audit_file
        assert path is not None
        return [json.loads(line) for line in path.read_text().splitlines()]


@contextlib.asynccontextmanager
async def serving(directory: Path, tokens: dict[str, list[str]] | None = None, **settings: Any
                  ) -> AsyncIterator[Api]:
    """The app on an in-memory store, its rate limits and audit trail on one FakeClock."""
    config, secrets = service_config(directory, tokens, **settings)
    store, clock = MemoryStore(), FakeClock()
    service = RecordService(config, store.metrics, store=store)  # type: ignore[arg-type]
    audit = AuditLog(config.audit_file, config.refusals.audit_lines, config.refusals.audit_interval,
                     clock=clock)
    app = create_app(config, service=service, audit=audit)
    runtime = app[RUNTIME]
    runtime.limiter = RateLimiter(config.rate_limit, config.rate_burst, clock)
    runtime.refusals = RateLimiter(config.refusals.per_second, config.refusals.burst, clock)
    async with TestClient(TestServer(app)) as client:
        await service.reconcile()  # the one it runs at start is done too
        yield Api(client, service, store, secrets, config, clock)


class HeldWaits(Waits):
    """Waits with the real limits whose DNS servers answer when the test says so."""

    def __init__(self, waits: Waits) -> None:
        super().__init__((("127.0.0.1", 53),), waits.limits, waits.metrics)
        self.waiting: list[tuple[str, str]] = []
        self.arrived = asyncio.Event()  # set whenever a wait starts
        self.answer = asyncio.Event()  # set: every server answers
        self.error: Exception | None = None  # raised instead of answering

    async def served(self, fqdn: str, value: str, timeout: float) -> float:
        self.waiting.append((fqdn, value))
        self.arrived.set()
        await self.answer.wait()
        if self.error is not None:
            raise self.error
        return 0.25

    async def until_waiting(self, count: int) -> None:
        """Return once `count` waits have started."""
        async def waited() -> None:
            while len(self.waiting) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(waited(), 10)


# -- changes ------------------------------------------------------------------------------------

async def test_an_add_is_201_then_200_and_a_remove_says_whether_it_existed(tmp_path):
    async with serving(tmp_path) as api:
        status, body, _ = await api.add()
        assert (status, body) == (201, {"fqdn": WWW, "value": VALUE, "ttl": 60, "created": True})
        status, body, _ = await api.add(WWW.upper() + ".", VALUE)  # case and dot are normalised
        assert (status, body["created"]) == (200, False)
        assert api.store.records() == {(WWW, VALUE)}
        status, body, _ = await api.call("DELETE", "/v1/records", params={"fqdn": WWW, "value": VALUE})
        assert (status, body) == (200, {"fqdn": WWW, "value": VALUE, "existed": True})
        status, body, _ = await api.call("DELETE", "/v1/records", json={"fqdn": WWW, "value": VALUE})
        assert (status, body["existed"]) == (200, False)
        assert api.store.records() == set()


async def test_a_plain_curl_body_is_read_whatever_its_content_type(tmp_path):
    async with serving(tmp_path) as api:
        status, _, _ = await api.call("POST", "/v1/records", data=json.dumps({"fqdn": WWW, "value": VALUE}),
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 201


async def test_the_list_shows_only_what_the_token_may_change(tmp_path):
    async with serving(tmp_path, TWO_TOKENS) as api:
        await api.add(WWW, "w")
        await api.add(API, "a")
        _, everything, _ = await api.call("GET", "/v1/records")
        assert [(r["fqdn"], r["value"]) for r in everything["records"]] == [(API, "a"), (WWW, "w")]
        _, scoped, _ = await api.call("GET", "/v1/records", "www-only")
        assert [(r["fqdn"], r["value"]) for r in scoped["records"]] == [(WWW, "w")]
        status, _, _ = await api.call("GET", "/v1/records", "www-only", params={"fqdn": API})
        assert status == 403


async def test_lego_present_answers_once_served_and_cleanup_removes(tmp_path):
    async with serving(tmp_path) as api:
        body = {"fqdn": WWW + ".", "value": VALUE}
        status, present, _ = await api.call("POST", "/present", json=body)
        assert (status, present["served_after_ms"]) == (200, 0)  # no dns_servers: nothing to wait for
        status, cleanup, _ = await api.call("POST", "/cleanup", json=body)
        assert (status, cleanup["existed"]) == (200, True)
        assert api.store.records() == set()


# -- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"},
                                     {"Authorization": "Bearer "}, {"Authorization": "Basic !!!"}])
async def test_a_missing_or_wrong_token_is_401_and_changes_nothing(tmp_path, headers):
    async with serving(tmp_path) as api:
        status, body, answered = await api.call("POST", "/v1/records", None, headers=headers,
                                                json={"fqdn": WWW, "value": VALUE})
        assert (status, body["error"]) == (401, "unauthorized")
        assert answered["WWW-Authenticate"].startswith("Bearer")
        assert api.store.attempts == 0


async def test_a_token_that_is_not_utf8_is_401_not_a_crash(tmp_path):
    """aiohttp hands header bytes that are not UTF-8 over as surrogates, which hashing refused."""
    async with serving(tmp_path) as api:
        server = api.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        body = json.dumps({"fqdn": WWW, "value": VALUE}).encode()
        writer.write(b"POST /v1/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        writer.close()
        assert head.startswith("HTTP/1.1 401")
        assert api.store.attempts == 0


async def test_a_refused_head_request_is_audited_as_the_get_it_stands_for(tmp_path):
    async with serving(tmp_path) as api:
        async with api.client.request("HEAD", "/v1/records",
                                      headers={"Authorization": "Bearer no"}) as answer:
            assert answer.status == 401
        assert [(e["action"], e["status"]) for e in api.audit()] == [("list", 401)]


async def test_a_client_gone_in_the_middle_of_its_body_leaves_no_task_behind(tmp_path):
    async with serving(tmp_path) as api:
        stopping = api.client.server.app[RUNTIME].stopping

        def waiting_for_shutdown() -> list[asyncio.Task]:
            return [t for t in asyncio.all_tasks() if (frame := t.get_coro().cr_frame) is not None  # type: ignore[union-attr]
                    and frame.f_locals.get("self") is stopping]

        server = api.client.server
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(b"POST /v1/records HTTP/1.1\r\nHost: x\r\n" + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in api.tokens.header("acme").items())
            + b"Content-Length: 100\r\n\r\n{\"fqdn\": ")
        await writer.drain()
        await until_done(lambda: waiting_for_shutdown(), "the handler reading the body")
        writer.close()
        await until_done(lambda: not waiting_for_shutdown(), "the body's tasks ended with the request")
        assert api.store.attempts == 0


async def test_an_audit_trail_that_cannot_be_written_does_not_hide_a_made_change(tmp_path, caplog):
    """The change is in Vault and the zone file by then: the client is told so, and the entry
    goes to the log instead."""
    async with serving(tmp_path) as api:
        runtime = api.client.server.app[RUNTIME]
        runtime.audit = AuditLog(Path("/dev/full"))  # every write: no space left on device
        status, _, _ = await api.add()
        assert status == 201 and api.store.records() == {(WWW, VALUE)}
        assert "cannot write the audit trail" in caplog.text and f'"fqdn": "{WWW}"' in caplog.text


@pytest.mark.parametrize("method, fqdn", [("POST", API), ("POST", "_acme-challenge.x.www.dev.local"),
                                          ("DELETE", API)])
async def test_a_name_outside_the_tokens_allow_list_is_403(tmp_path, method, fqdn):
    async with serving(tmp_path, TWO_TOKENS) as api:
        status, body, _ = await api.call(method, "/v1/records", "www-only",
                                         json={"fqdn": fqdn, "value": VALUE})
        assert (status, body) == (403, {"error": "forbidden",
                                        "message": f"token 'www-only' may not change {fqdn}"})
        assert api.store.attempts == 0


@pytest.mark.parametrize("body, code", [
    ('{"fqdn": "_acme-challenge.www.dev.local"}', "missing_field"),
    ('{"value": "x"}', "missing_field"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "extra": 1}', "unknown_field"),
    ("not json", "invalid_json"),
    ('["a list"]', "invalid_json"),
    ("[" * 5000 + "]" * 5000, "invalid_json"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x\\ny IN A 1.2.3.4"}', "invalid_value"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": ""}', "invalid_value"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": 0}', "invalid_ttl"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": "60"}', "invalid_ttl"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "ttl": null}', "invalid_ttl"),
    ('{"fqdn": "_acme-challenge.www.dev.local", "value": "x", "wait": "yes"}', "invalid_wait"),
    ('{"fqdn": "www.dev.local", "value": "x"}', "invalid_name"),
    ('{"fqdn": "_acme-challenge.www.example.com", "value": "x"}', "unknown_zone"),
    ('{"fqdn": "_acme-challenge.w\\"w.dev.local", "value": "x"}', "invalid_name"),
])
async def test_a_bad_request_is_400_with_its_code_and_changes_nothing(tmp_path, body, code):
    async with serving(tmp_path) as api:
        zone_before = api.config.zones[0].file.read_bytes()
        status, answer, _ = await api.call("POST", "/v1/records", data=body)
        assert (status, answer["error"]) == (400, code) and answer["message"]
        assert api.store.attempts == 0 and api.config.zones[0].file.read_bytes() == zone_before


async def test_http_errors_are_json_too(tmp_path):
    async with serving(tmp_path) as api:
        status, body, _ = await api.call("POST", "/v1/records", data="x" * 20000)
        assert (status, body["error"]) == (413, "body_too_large")
        status, body, _ = await api.call("GET", "/nope")
        assert (status, body["error"]) == (404, "not_found")
        status, body, headers = await api.call("PUT", "/v1/records")
        assert (status, body["error"]) == (405, "method_not_allowed") and "POST" in headers["Allow"]
        status, body, _ = await api.call("DELETE", "/v1/records", params={"fqdn": WWW},
                                         json={"fqdn": WWW, "value": VALUE})
        assert (status, body["error"]) == (400, "bad_request")


async def test_requests_from_web_pages_are_refused_unless_their_origin_is_listed(tmp_path):
    async with serving(tmp_path, allowed_origins=["https://ops.example"]) as api:
        for origin in ("http://evil.example", "null", "https://ops.example.evil"):
            status, body, _ = await api.call("POST", "/v1/records", headers={"Origin": origin},
                                             json={"fqdn": WWW, "value": VALUE})
            assert (status, body["error"]) == (403, "origin_not_allowed")
        assert api.store.attempts == 0
        status, _, _ = await api.call("POST", "/v1/records", headers={"Origin": "https://OPS.example"},
                                      json={"fqdn": WWW, "value": VALUE})
        assert status == 201
        assert (await api.add(WWW, "B" * 43))[0] == 201  # no Origin: not a browser


async def test_store_and_zone_failures_are_503_and_500_with_their_codes(tmp_path):
    async with serving(tmp_path) as api:
        api.store.fail("write_zone", VaultUnavailable("Vault at http://127.0.0.1:1 is unreachable"))
        status, body, _ = await api.add()
        assert (status, body) == (503, {"error": "vault_unavailable",
                                        "message": "Vault at http://127.0.0.1:1 is unreachable"})
        zone = api.config.zones[0].file
        zone.write_text(zone.read_text() + "oops IN A not-an-address\n")
        status, body, _ = await api.add()
        assert (status, body["error"]) == (500, "zone_error") and "stored in Vault" in body["message"]
        assert api.store.records() == {(WWW, VALUE)}


async def test_the_token_quota_and_a_name_conflict_are_409(tmp_path):
    async with serving(tmp_path, max_records_per_token=1) as api:
        zone = api.config.zones[0].file
        zone.write_text(zone.read_text() + "_acme-challenge.cn IN CNAME ns1\n")
        status, body, _ = await api.add("_acme-challenge.cn.dev.local")
        assert (status, body["error"]) == (409, "name_conflict")
        assert (await api.add())[0] == 201
        status, body, _ = await api.add(WWW, "B" * 43)
        assert (status, body["error"]) == (409, "token_quota_exceeded")


# -- rate limits --------------------------------------------------------------------------------

async def test_the_rate_limit_is_per_token_and_refills_with_time(tmp_path):
    async with serving(tmp_path, TWO_TOKENS, rate_limit={"per_second": 1, "burst": 2}) as api:
        assert [(await api.call("GET", "/v1/records"))[0] for _ in range(2)] == [200, 200]
        status, body, headers = await api.call("GET", "/v1/records")
        assert (status, body["error"], headers["Retry-After"]) == (429, "rate_limited", "1")
        assert (await api.call("GET", "/v1/records", "www-only"))[0] == 200  # its own bucket
        api.clock.advance(0.5)
        assert (await api.call("GET", "/v1/records"))[0] == 429  # half a request refilled
        api.clock.advance(0.5)
        assert (await api.call("GET", "/v1/records"))[0] == 200


def test_refusals_let_in_together_are_all_paid_for():
    """The review's finding: the middleware checks an address's bucket on arrival and charges it
    once the answer is a refusal, and a charge took nothing from an empty bucket. Requests that
    await (acme-dns's /update reads Vault and hashes) all got in together, and only the first
    `burst` were paid for: 4,992 of them in 10 s from one address, at a limit of 5/s."""
    clock = FakeClock()
    refusals = RateLimiter(5, 20, clock)
    assert [refusals.wait("192.0.2.1") for _ in range(60)] == [0.0] * 60  # (all in at once)
    for _ in range(60):
        refusals.charge("192.0.2.1")
    assert refusals.wait("192.0.2.1") == pytest.approx(41 / 5)  # every one of the 60 owed
    clock.advance(41 / 5)
    assert refusals.wait("192.0.2.1") == 0.0
    for _ in range(10_000):  # what may be owed is bounded (10 bursts)
        refusals.charge("192.0.2.2")
    assert refusals.wait("192.0.2.2") == pytest.approx(201 / 5)


async def test_refused_requests_are_limited_per_address_but_probes_still_answer(tmp_path):
    async with serving(tmp_path, refusals={"per_second": 1, "burst": 3}) as api:
        statuses = [(await api.call("GET", "/v1/records", None))[0] for _ in range(3)]
        assert statuses == [401, 401, 401]
        status, body, headers = await api.call("GET", "/v1/records")  # even with a valid token
        assert (status, body["error"], headers["Retry-After"]) == (429, "too_many_refusals", "1")
        assert (await api.call("GET", "/healthz", None))[0] == 200
        assert (await api.call("GET", "/readyz", None))[0] == 200
        api.clock.advance(1)
        assert (await api.call("GET", "/v1/records"))[0] == 200


# -- the audit trail ----------------------------------------------------------------------------

async def test_changes_and_refusals_are_audited_without_secrets(tmp_path):
    async with serving(tmp_path, TWO_TOKENS) as api:
        await api.add()
        await api.add()
        await api.call("DELETE", "/v1/records", json={"fqdn": WWW, "value": VALUE})
        await api.call("GET", "/v1/records")  # a successful read changes nothing: not audited
        await api.call("POST", "/v1/records", None, headers={"Authorization": "Bearer wrong-token"},
                       json={"fqdn": WWW, "value": VALUE})
        await api.add(API, VALUE, "www-only")
        await api.call("POST", "/v1/records", data=b'{"fqdn": "www.dev.local\\n", "value": "x"}')
        lines = api.audit()
        text = api.config.audit_file.read_text()
    assert [(e["action"], e.get("token"), e.get("result"), e["status"], e.get("error"))
            for e in lines] == [
        ("add", "acme", "created", 201, None),
        ("add", "acme", "existed", 200, None),
        ("remove", "acme", "removed", 200, None),
        ("add", None, "refused", 401, "unauthorized"),
        ("add", "www-only", "refused", 403, "forbidden"),
        ("add", "acme", "refused", 400, "invalid_name"),
    ]
    assert all(e["remote"] == "127.0.0.1" for e in lines)
    assert lines[0]["fqdn"] == WWW and lines[0]["value_sha256"] == value_hash(VALUE)
    assert lines[5]["fqdn"] == "www.dev.local\n"
    for secret in (*api.tokens.secrets.values(), "wrong-token"):
        assert secret not in text


async def test_refusals_past_the_budget_are_counted_and_summarised_once_the_interval_ends(tmp_path):
    refusals = {"per_second": 0, "audit_lines": 2, "audit_interval": "60s"}
    async with serving(tmp_path, refusals=refusals) as api:
        for _ in range(5):
            await api.call("POST", "/v1/records", None, json={"fqdn": WWW, "value": VALUE})
        assert [e.get("error") for e in api.audit()] == ["unauthorized"] * 2
        api.clock.advance(60)
        await api.call("POST", "/v1/records", None, json={"fqdn": WWW, "value": VALUE})
        summary, last = api.audit()[2:]
    assert (summary["action"], summary["count"], summary["sources"]) == (
        "refusals_summarised", 3, {"127.0.0.1": 3})
    assert last.get("error") == "unauthorized"  # a new interval, a new budget


def test_refusals_from_ever_new_sources_are_counted_in_bounded_memory(tmp_path):
    """The review's finding: past the budget every new source address (free to spoof over UDP)
    added an entry to the interval's counter: 200,000 sources held ~20 MB."""
    clock = FakeClock()
    trail = AuditLog(tmp_path / "audit.jsonl", refusal_lines=1, interval=60, clock=clock)
    for n in range(audit.SOURCES_COUNTED + 500):
        trail.refused(f"2001:db8::{n:x}", action="dns_update", result="refused")
    assert len(trail._suppressed) == audit.SOURCES_COUNTED + 1  # and "other"
    clock.advance(60)
    trail.close()
    summary = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert summary["count"] == audit.SOURCES_COUNTED + 499 and summary["sources"]["other"] == 499


# -- readiness ----------------------------------------------------------------------------------

async def test_readyz_is_ready_when_the_store_and_the_zone_file_are(tmp_path):
    async with serving(tmp_path) as api:
        status, body, _ = await api.call("GET", "/readyz", None)
        assert (status, body) == (200, {"status": "ready",
                                        "checks": {f"vault:{ZONE}": "ok", f"zone:{ZONE}": "ok"}})


async def test_readyz_gives_details_only_to_token_holders(tmp_path):
    async with serving(tmp_path) as api:
        zone = api.config.zones[0].file
        zone.write_text(zone.read_text() + "internal-host-10-1-2-3 IN A not-an-ip\n")
        api.store.access = "token lacks create, update on the zone secret"
        status, anonymous, _ = await api.call("GET", "/readyz", None)
        assert status == 503 and "internal-host" not in json.dumps(anonymous)
        assert anonymous["checks"] == {name: "failing (details: `dnsapi check`, or /readyz with a token)"
                                       for name in (f"vault:{ZONE}", f"zone:{ZONE}")}
        status, detailed, _ = await api.call("GET", "/readyz")
        assert status == 503 and detailed["error"] == "not_ready"
        assert detailed["checks"][f"vault:{ZONE}"] == "token lacks create, update on the zone secret"
        assert "does not parse" in detailed["checks"][f"zone:{ZONE}"]


async def test_readyz_reports_an_unreachable_vault(tmp_path):
    async with serving(tmp_path) as api:
        api.store.fail("zone_access", VaultUnavailable("Vault at http://127.0.0.1:1 is unreachable"))
        status, body, _ = await api.call("GET", "/readyz")
        assert status == 503
        assert body["checks"][f"vault:{ZONE}"] == "Vault at http://127.0.0.1:1 is unreachable"


async def test_readyz_asked_many_times_at_once_checks_once(tmp_path):
    """Anyone may ask /readyz, and each check asks Vault and the DNS servers: callers arriving
    while a check runs share it."""
    async with serving(tmp_path) as api:
        checks, real = [], api.store.zone_access

        async def counted(zone: str) -> str | None:
            checks.append(zone)
            return await real(zone)

        api.store.zone_access = counted  # type: ignore[method-assign]
        gate = api.store.hold("zone_access")
        asked = [asyncio.create_task(api.call("GET", "/readyz", None)) for _ in range(10)]
        await gate.entered.wait()
        await until(lambda: metric_total(api.service.metrics.render().decode(),
                                         "dnsapi_http_requests_in_progress") == 10, "all ten asking")
        gate.release()
        assert [status for status, _, _ in await asyncio.gather(*asked)] == [200] * 10
        assert checks == [ZONE]  # one check for the ten
        api.store.fail("zone_access", VaultUnavailable("down"))  # a later ask checks afresh
        status, _, _ = await api.call("GET", "/readyz", None)
        assert status == 503 and checks == [ZONE, ZONE]


# -- waits for DNS ------------------------------------------------------------------------------

async def test_waits_are_limited_per_token_and_in_all(tmp_path):
    tokens = {"acme": ["*.dev.local"], "other": ["*.dev.local"]}
    async with serving(tmp_path, tokens, waits={"per_token": 2, "total": 3}) as api:
        waits = api.service.waits = HeldWaits(api.service.waits)
        held = [asyncio.create_task(api.add(WWW, f"held-{i}", wait=True)) for i in range(2)]
        await waits.until_waiting(2)
        status, body, _ = await api.add(WWW, "third", wait=True)
        assert (status, body["error"]) == (429, "too_many_waits")
        held.append(asyncio.create_task(api.add(WWW, "other-0", "other", wait=True)))
        await waits.until_waiting(3)
        status, body, headers = await api.add(WWW, "other-1", "other", wait=True)
        assert (status, body["error"], headers["Retry-After"]) == (503, "too_many_waits", "1")
        assert {v for _, v in api.store.records()} == {"held-0", "held-1", "other-0"}  # refused first
        waits.answer.set()
        answers = await asyncio.gather(*held)
        assert [(status, body["served_after_ms"]) for status, body, _ in answers] == [(201, 250)] * 3
        assert (await api.add(WWW, "after", wait=True))[0] == 201  # every slot was given back


async def test_a_wait_that_times_out_is_504_and_the_record_stays_stored(tmp_path):
    async with serving(tmp_path) as api:
        waits = api.service.waits = HeldWaits(api.service.waits)
        waits.error = PropagationTimeout(f"{WWW} TXT was stored, but 127.0.0.1:53 did not answer it")
        waits.answer.set()
        status, body, _ = await api.add(wait=True)
        assert (status, body["error"]) == (504, "propagation_timeout")
        assert api.store.records() == {(WWW, VALUE)}
        assert api.service.metrics.registry.get_sample_value("dnsapi_propagation_timeouts_total") == 1
