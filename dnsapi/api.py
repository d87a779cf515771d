"""HTTP ⇄ record service. JSON in, JSON out; every error is `{"error": code, "message": ...}`.

A request reads top-down: the audit middleware (outermost) writes a line for every change and
refusal; the error middleware turns exceptions into JSON errors; a handler authenticates the caller
(within its rate limit), parses and validates the body, checks the name against the token's
`allow` patterns, then calls the service, which only answers once Vault has the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import logs
from .audit import AuditLog, value_hash
from .auth import Authenticator
from .config import Config, TokenConfig
from .connections import ConnectionGuard
from .errors import (
    BadRequest,
    Busy,
    DnsapiError,
    Forbidden,
    PayloadTooLarge,
    RequestTimeout,
    ShuttingDown,
    TooManyRequests,
)
from .metrics import CONTENT_TYPE, Metrics
from .names import InvalidInput, validate_value
from .openapi import document
from .ratelimit import RateLimiter
from .records import Outcome, Record
from .service import RecordService

log = logging.getLogger(__name__)

@dataclass
class Runtime:
    """What a SIGHUP reload replaces while the app runs (aiohttp freezes the app's own keys)."""

    auth: Authenticator
    limiter: RateLimiter
    refusals: RateLimiter  # per source address, charged for each refused request
    allowed_origins: frozenset[str]
    audit: AuditLog
    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # set when shutdown begins

    @classmethod
    def from_config(cls, config: Config, audit: AuditLog | None = None) -> Runtime:
        return cls(_authenticator(config), RateLimiter(config.rate_limit, config.rate_burst),
                   RateLimiter(config.refusals.per_second, config.refusals.burst),
                   frozenset(config.allowed_origins), audit or _audit_log(config))

    def update(self, config: Config) -> AuditLog:
        """Take a reloaded config's tokens, limits, origins and audit file (reopened, for log
        rotation); returns the old audit log, for the caller to close once nothing uses it."""
        fresh = Runtime.from_config(config)
        old = self.audit
        self.auth, self.limiter, self.refusals = fresh.auth, fresh.limiter, fresh.refusals
        self.allowed_origins, self.audit = fresh.allowed_origins, fresh.audit
        return old


SERVICE = web.AppKey("service", RecordService)
RUNTIME = web.AppKey("runtime", Runtime)
MAX_BODY = web.AppKey("max_body_bytes", int)
GUARD = web.AppKey("connection_guard", ConnectionGuard)
NOTES = web.RequestKey("audit_notes", dict)  # what handlers learned, for the audit line

# The routes the audit trail covers: every change, and every refused request, on these.
AUDITED = {("POST", "/v1/records"): "add", ("DELETE", "/v1/records"): "remove",
           ("GET", "/v1/records"): "list", ("POST", "/present"): "add",
           ("POST", "/cleanup"): "remove"}

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}

# Probes stay answered whatever else an address sent: a monitor shares its address with others.
# (/health is the acme-dns door's.)
PROBES = frozenset({"/healthz", "/readyz", "/metrics", "/health"})

# Refusals charged to the source address's bucket (refusals.per_second): what a client that is
# guessing or probing gets. Not 409 (a full zone or quota) nor 429 / 5xx (dnsapi's own state).
CHARGED = frozenset({400, 401, 403, 404, 405, 408, 413})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   **extra: Any) -> web.Response:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="dnsapi"'
    return web.json_response({"error": code, "message": message, **extra}, status=status,
                             headers=headers)


def note(request: web.Request, **facts: Any) -> None:
    """Remember facts about this request for its audit line."""
    request[NOTES].update(facts)


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request its id (for every log line and the audit trail, and back to the caller
    in X-Request-Id), count and time it, and lift its connection's deadline meanwhile."""
    rid = logs.request_id(request.headers.get("X-Request-Id"))
    logs.REQUEST_ID.set(rid)
    start = time.perf_counter()
    metrics = request.app[SERVICE].metrics
    metrics.requests_in_progress.inc()
    try:
        with request.app[GUARD].busy(request):
            response = await handler(request)
    finally:
        metrics.requests_in_progress.dec()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics.requests.labels(route, request.method, str(response.status)).inc()
    metrics.request_seconds.labels(route, request.method).observe(time.perf_counter() - start)
    response.headers["X-Request-Id"] = rid
    return response


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After the error middleware has made a response, write the audit line for a change or a
    refusal, and charge a refusal to its source address."""
    request[NOTES] = {}
    response = await handler(request)
    action = AUDITED.get(("GET" if request.method == "HEAD" else request.method, request.path))
    notes = request[NOTES]
    runtime = request.app[RUNTIME]
    refused = response.status >= 400
    if refused and response.status in CHARGED:
        runtime.refusals.charge(request.remote or "unknown")
    if action is None or (action == "list" and not refused):
        return response
    entry = dict(request_id=logs.REQUEST_ID.get(), token=notes.get("token"), action=action,
                 fqdn=notes.get("fqdn"), value_sha256=notes.get("value_sha256"),
                 result=notes.get("result", "refused" if refused else None),
                 status=response.status, error=notes.get("error"))
    if refused:
        runtime.audit.refused(request.remote, **entry)
    else:
        runtime.audit.write(remote=request.remote, **entry)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        runtime = request.app[RUNTIME]
        if runtime.stopping.is_set():
            raise ShuttingDown()
        wait = 0.0 if request.path in PROBES else runtime.refusals.wait(request.remote or "unknown")
        if wait:
            request.app[SERVICE].metrics.refusals_limited.inc()
            raise TooManyRequests(f"too many refused requests from {request.remote}; retry in "
                                  f"{max(wait, 0.1):.1f}s", wait, "too_many_refusals")
        origin = request.headers.get("Origin")
        if origin is not None and origin.lower() not in runtime.allowed_origins:
            raise Forbidden("requests from web pages are refused (Origin header); list the origin "
                            "in allowed_origins to allow it", "origin_not_allowed")
        return await handler(request)
    except InvalidInput as exc:  # a name, value or TTL the service refuses
        note(request, error=exc.code)
        return error_response(400, exc.code, exc.message)
    except DnsapiError as exc:
        note(request, error=exc.code)
        headers = None
        if isinstance(exc, (TooManyRequests, Busy)):
            headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return error_response(exc.status, exc.code, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        note(request, error=code)
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, allow)
    except ConnectionResetError:  # the client went away mid-request; nothing was changed
        note(request, error="client_disconnected")
        return error_response(400, "client_disconnected", "the client closed the connection")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        note(request, error="internal")
        return error_response(500, "internal", "internal error; see the dnsapi log")


# -- request parsing ------------------------------------------------------------------------------

async def read_body(request: web.Request) -> bytes:
    """The whole body, within http.request_timeout (a client trickling it must not hold the
    connection). Once shutdown begins aiohttp stops reading from connections, so a body still
    arriving then never completes: such a request is given up at once (it changed nothing)
    instead of holding the shutdown until its timeout."""
    if request.content.is_eof():  # the usual case: the body came with the headers
        return await request.read()
    reading = asyncio.ensure_future(request.read())
    stopping = asyncio.ensure_future(request.app[RUNTIME].stopping.wait())
    timeout = request.app[GUARD].limits.request_timeout
    try:
        await asyncio.wait((reading, stopping), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the client went away: neither task may outlive the request
        reading.cancel()
        raise
    finally:
        stopping.cancel()
    if not reading.done():
        reading.cancel()
        if request.app[RUNTIME].stopping.is_set():
            raise ShuttingDown()
        request.protocol.force_close()  # the rest of the body is unread
        raise RequestTimeout(f"the request body did not arrive within {timeout:g}s")
    return reading.result()


async def read_json(request: web.Request) -> dict[str, Any] | None:
    """The body as a JSON object whatever the Content-Type (so `curl -d` works); None if empty."""
    try:
        raw = await read_body(request)
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"request body is larger than {request.app[MAX_BODY]} bytes") \
            from None
    if not raw.strip():
        return None
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object", "invalid_json")
    return body


def fields(body: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    """Check a body has every required field and nothing unknown (a typo must not pass)."""
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise BadRequest(f"unknown field {unknown[0]!r}", "unknown_field")
    for name in required:
        if name not in body:
            raise BadRequest(f"missing field {name!r}", "missing_field")
    return body


def caller(request: web.Request) -> TokenConfig:
    """The authenticated token, within its rate limit."""
    token = request.app[RUNTIME].auth.authenticate(request.headers.get("Authorization", ""))
    note(request, token=token.name)
    # (buckets by door: "api:", "key:" for RFC 2136, "token:", "address:", "acme-dns:" for acme-dns)
    wait = request.app[RUNTIME].limiter.allow(f"api:{token.name}")
    if wait:
        raise TooManyRequests(f"token {token.name!r} is over its rate limit; retry in "
                              f"{max(wait, 0.1):.1f}s", wait)
    return token


def note_target(request: web.Request, fqdn: object, value: object = None) -> None:
    """What a change is about, before validation, so a refusal is audited with it too."""
    if isinstance(fqdn, str):
        note(request, fqdn=fqdn[:300])
    if isinstance(value, str):
        note(request, value_sha256=value_hash(value))


def record_json(record: Record) -> dict[str, Any]:
    return {"fqdn": record.fqdn, "type": record.kind, "value": record.value, "ttl": record.ttl,
            "created_at": record.created_at}


# -- handlers ------------------------------------------------------------------------------------

async def _add(request: web.Request, token: TokenConfig, fqdn: object, value: object,
               ttl: object, wait: bool) -> dict[str, Any]:
    service = request.app[SERVICE]
    note_target(request, fqdn, value)
    record = service.make_record(fqdn, value, ttl, owner=token.name)
    note(request, fqdn=record.fqdn)
    request.app[RUNTIME].auth.authorize(token, record.fqdn)
    with service.waits.slot(token.name) if wait else contextlib.nullcontext():
        outcome = await service.add(record)
        note(request, result=outcome.value)
        result: dict[str, Any] = {"fqdn": record.fqdn, "value": record.value, "ttl": record.ttl,
                                  "created": outcome is Outcome.CREATED}
        if wait:
            waited = await service.wait_served(record)
            result["served_after_ms"] = round(waited * 1000)
    return result


async def _remove(request: web.Request, token: TokenConfig, fqdn: object, value: object
                  ) -> dict[str, Any]:
    service = request.app[SERVICE]
    note_target(request, fqdn, value)
    name = service.challenge_name(fqdn)
    checked = validate_value(value)
    note(request, fqdn=name)
    request.app[RUNTIME].auth.authorize(token, name)
    outcome = await service.remove(name, checked)
    note(request, result=outcome.value)
    return {"fqdn": name, "value": checked, "existed": outcome is Outcome.REMOVED}


async def add_record(request: web.Request) -> web.Response:
    token = caller(request)
    body = fields(await read_json(request) or {}, ("fqdn", "value"), ("ttl", "wait"))
    wait = body.get("wait", False)
    if not isinstance(wait, bool):
        raise BadRequest("wait must be true or false", "invalid_wait")
    if "ttl" in body and body["ttl"] is None:  # leave it out for the default
        raise BadRequest("ttl must be an integer number of seconds", "invalid_ttl")
    result = await _add(request, token, body["fqdn"], body["value"], body.get("ttl"), wait)
    return web.json_response(result, status=201 if result["created"] else 200)


async def delete_record(request: web.Request) -> web.Response:
    token = caller(request)
    body = await read_json(request)
    if body is not None and request.query:
        raise BadRequest("send fqdn and value either in the JSON body or in the query, not both")
    params = fields(body if body is not None else dict(request.query), ("fqdn", "value"))
    return web.json_response(await _remove(request, token, params["fqdn"], params["value"]))


async def lego_present(request: web.Request) -> web.Response:
    """lego's httpreq provider: `{"fqdn": "_acme-challenge.x.", "value": ...}`; answers once the
    DNS servers serve the value, since lego is then told not to check propagation itself."""
    token = caller(request)
    body = fields(await read_json(request) or {}, ("fqdn", "value"))
    return web.json_response(await _add(request, token, body["fqdn"], body["value"], None, True))


async def lego_cleanup(request: web.Request) -> web.Response:
    token = caller(request)
    body = fields(await read_json(request) or {}, ("fqdn", "value"))
    return web.json_response(await _remove(request, token, body["fqdn"], body["value"]))


async def list_records(request: web.Request) -> web.Response:
    token = caller(request)
    fields(dict(request.query), (), ("fqdn",))
    service, auth = request.app[SERVICE], request.app[RUNTIME].auth
    fqdn = None
    if "fqdn" in request.query:
        note_target(request, request.query["fqdn"])
        fqdn = service.challenge_name(request.query["fqdn"])
        auth.authorize(token, fqdn)
    records = [r for r in await service.list(fqdn) if auth.allows(token, r.fqdn)]
    return web.json_response({"records": [record_json(r) for r in records]})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready or not, for anyone; what is wrong (which may quote a broken zone file) only for a
    valid token: details otherwise come from `dnsapi check`."""
    checks = await request.app[SERVICE].readiness()
    try:
        request.app[RUNTIME].auth.authenticate(request.headers.get("Authorization", ""))
    except DnsapiError:
        checks = {name: "ok" if result == "ok" else
                  "failing (details: `dnsapi check`, or /readyz with a token)"
                  for name, result in checks.items()}
    failing = {name: result for name, result in checks.items() if result != "ok"}
    if failing:
        message = "; ".join(f"{name}: {result}" for name, result in failing.items())
        return error_response(503, "not_ready", message, checks=checks)
    return web.json_response({"status": "ready", "checks": checks})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(request.app[SERVICE].config))


# -- the app -------------------------------------------------------------------------------------

def _audit_log(config: Config) -> AuditLog:
    return AuditLog(config.audit_file, config.refusals.audit_lines, config.refusals.audit_interval)


def _authenticator(config: Config) -> Authenticator:
    return Authenticator(config.tokens, config.challenge_label,
                         tuple(z.name for z in config.zones) if config.open_on_loopback else None)


async def _summarise_refusals(runtime: Runtime) -> None:
    """Write the audit trail's refusal summary when an interval ends, even if nothing follows."""
    while True:
        await asyncio.sleep(runtime.audit.interval / 4)
        runtime.audit.flush()


def create_app(config: Config, service: RecordService | None = None, audit: AuditLog | None = None,
               outer: tuple[Middleware, ...] = ()) -> web.Application:
    """The aiohttp application; `outer` middlewares run first (the server's in-flight count).
    The service starts with the app and stops with it, finishing every queued change first."""
    app = web.Application(middlewares=[*outer, request_middleware, audit_middleware, error_middleware],
                          client_max_size=config.max_body_bytes)
    app[RUNTIME] = Runtime.from_config(config, audit)
    app[SERVICE] = service or RecordService(config, Metrics(), audit=app[RUNTIME].audit)
    app[MAX_BODY] = config.max_body_bytes
    app[GUARD] = ConnectionGuard(config.http, app[SERVICE].metrics)
    app.router.add_post("/v1/records", add_record)
    app.router.add_delete("/v1/records", delete_record)
    app.router.add_get("/v1/records", list_records)
    app.router.add_post("/present", lego_present)
    app.router.add_post("/cleanup", lego_cleanup)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)

    async def lifecycle(app: web.Application) -> Any:
        await app[SERVICE].start()
        summaries = asyncio.create_task(_summarise_refusals(app[RUNTIME]))
        yield
        summaries.cancel()
        await app[SERVICE].close()
        app[RUNTIME].audit.close()

    app.cleanup_ctx.append(lifecycle)
    return app
