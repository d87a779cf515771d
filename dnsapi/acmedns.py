"""The acme-dns front door: acme-dns's HTTP API (POST /register, POST /update, GET /health), so
lego's acme-dns provider (and Traefik), cert-manager's acmeDNS solver, acme.sh's dns_acmedns,
Caddy's acmedns module and the certbot plugins work unchanged.

Like the other doors it only authenticates, validates and translates: an update becomes one
TXT add at the account's name `<subdomain>.<acme_dns.zone>` for the record service, answered
once Vault and the zone file have it (and the DNS servers serve it). What a client sees follows
acme-dns's source (pkg/api/auth.go, register.go, update.go, util.go): the same statuses, the same
error bodies byte for byte, its order of checks, and Go's JSON decoding (keys matched without
regard to case, unknown keys ignored; /update reads only the first JSON value of its body and
ignores a decoding error, which then fails the subdomain check). Unlike acme-dns: any number of
values per account (the old ones expire with max_age; dnsapi's own DELETE removes one), and
registration is closed unless acme_dns.register opens it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import uuid
from typing import Any

from aiohttp import web

from .acmedns_accounts import Account, Accounts, network
from .api import GUARD, MAX_BODY, RUNTIME, SERVICE, read_body
from .audit import value_hash
from .auth import Authenticator
from .config import AcmeDnsConfig, Config, TokenConfig
from .connections import ConnectionGuard
from .errors import DnsapiError, TooManyRecords, TooManyRequests, Unauthorized, VaultUnavailable, ZoneError
from .names import patterns_allow
from .records import Outcome

TXT_LENGTH = 43  # acme-dns's validTXT: base64url of a SHA-256, nothing else
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_REGISTER_STRINGS = ("password", "subdomain", "txt", "username")  # ACMETxt's other fields


class AcmeDns:
    """The door's state: its settings, the account store, and who may register."""

    def __init__(self, config: Config, accounts: Accounts) -> None:
        assert config.acme_dns is not None
        self.settings: AcmeDnsConfig = config.acme_dns
        self.challenge_label = config.challenge_label
        self.accounts = accounts
        self.networks = [ipaddress.ip_network(n) for n in self.settings.registration.allow_from]
        self.register_auth = Authenticator(self.settings.registration.tokens, config.challenge_label)
        self.registering = asyncio.Lock()  # one registration at a time: counted, then made


ACME_DNS = web.AppKey("acme_dns", AcmeDns)


def answer(status: int, body: dict[str, Any] | None) -> web.Response:
    """A reply as acme-dns writes it: errors as `{"error": "..."}`, results as Go marshals them."""
    if body is None:
        return web.Response(status=status)
    if set(body) == {"error"}:
        text = f'{{"error": "{body["error"]}"}}'
    elif set(body) == {"txt"}:
        text = f'{{"txt": "{body["txt"]}"}}'
    else:
        text = json.dumps(body, separators=(",", ":"))
    return web.Response(status=status, body=text.encode(), content_type="application/json")


class _Object(list[tuple[str, object]]):
    """A decoded JSON object: its members in order (JSON arrays decode to plain lists)."""


def _fields(value: object) -> dict[str, object]:
    """A decoded JSON object's members by case-folded key, the last one winning (Go's decoder
    matches struct fields case-insensitively); {} for any other value."""
    if not isinstance(value, _Object):
        return {}
    return {key.casefold(): item for key, item in value}


def _decode(text: str, whole: bool) -> object:
    """JSON as Go reads it (no NaN or Infinity); objects as lists of pairs. `whole`: the body
    must be one value (json.Unmarshal), else only its first value is read (json.Decoder)."""
    def refuse(constant: str) -> None:
        raise ValueError(constant)

    decoder = json.JSONDecoder(object_pairs_hook=_Object, parse_constant=refuse)
    stripped = text.lstrip(" \t\r\n")
    value, end = decoder.raw_decode(stripped)
    if whole and stripped[end:].strip(" \t\r\n"):
        raise ValueError("data after the JSON value")
    return value


async def _body(request: web.Request) -> str | None:
    """The body as text; None when it is too large or not UTF-8 (then treated as undecodable)."""
    try:
        raw = await read_body(request)
    except web.HTTPRequestEntityTooLarge:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _allowfrom(text: str) -> tuple[str, ...] | str:
    """The allowfrom list of a /register body, or the acme-dns error it earns."""
    if not text:
        return ()
    try:
        value = _decode(text, whole=True)
    except (ValueError, RecursionError):
        return "malformed_json_payload"
    if value is None:
        return ()
    if not isinstance(value, _Object):
        return "malformed_json_payload"
    fields = _fields(value)
    if any(fields.get(key) is not None and not isinstance(fields[key], str) for key in _REGISTER_STRINGS):
        return "malformed_json_payload"
    allowfrom = fields.get("allowfrom")
    if allowfrom is None:
        return ()
    if not isinstance(allowfrom, list) or isinstance(allowfrom, _Object) \
            or not all(e is None or isinstance(e, str) for e in allowfrom):  # (an object is a list here)
        return "malformed_json_payload"
    entries = tuple((e or "").replace("[", "").replace("]", "") for e in allowfrom)
    if any(network(entry) is None for entry in entries):
        return "invalid_allowfrom_cidr"
    return entries


def _result(exc: DnsapiError) -> str:
    """An audit line's result for a request that ended in `exc`: the client's or dnsapi's."""
    return "refused" if exc.status < 500 else "failed"


def _audit(request: web.Request, action: str, who: str | None, status: int, result: str,
           error: str | None = None, fqdn: str | None = None, value: str | None = None) -> None:
    entry = dict(token=who, action=action, fqdn=fqdn, result=result, status=status, error=error,
                 value_sha256=value_hash(value) if value else None)
    audit = request.app[RUNTIME].audit
    if status >= 400:
        audit.refused(request.remote, **entry)
    else:
        audit.write(remote=request.remote, **entry)


def _registrant(request: web.Request, door: AcmeDns) -> tuple[str, TokenConfig | None] | None:
    """Who may register: a source inside register.allow_from, or a register token whose `allow`
    covers the names accounts get (`*.<zone>`); None for anyone else."""
    with contextlib.suppress(ValueError):
        source = ipaddress.ip_address(request.remote or "")
        if any(source in net for net in door.networks):
            return f"address:{request.remote}", None
    try:
        token = door.register_auth.authenticate(request.headers.get("Authorization", ""))
    except Unauthorized:
        return None
    return f"token:{token.name}", token


async def register(request: web.Request) -> web.Response:
    door = request.app[ACME_DNS]
    registrant = _registrant(request, door)
    if registrant is None:
        _audit(request, "acme_dns_register", None, 401, "refused", "registration is closed to it")
        return answer(401, {"error": "forbidden"})
    who, token = registrant
    # Any name an account may get, to ask whether the token's patterns cover the zone's names.
    sample = f"{uuid.UUID(int=0)}.{door.settings.zone}"
    if token is not None and not patterns_allow(token.allow, sample, door.challenge_label):
        _audit(request, "acme_dns_register", who, 401, "refused",
               f"the token's allow does not cover the names in {door.settings.zone}")
        return answer(401, {"error": "forbidden"})
    wait = request.app[RUNTIME].limiter.allow(who)  # (each account costs a scrypt and a secret)
    if wait:
        _audit(request, "acme_dns_register", who, 429, "refused", "rate_limited")
        raise TooManyRequests(f"{who} is over its rate limit; retry in {max(wait, 0.1):.1f}s", wait)
    text = await _body(request)
    parsed = _allowfrom(text) if text is not None else "malformed_json_payload"
    if isinstance(parsed, str):
        _audit(request, "acme_dns_register", who, 400, "refused", parsed)
        return answer(400, {"error": parsed})
    try:
        async with door.registering:  # (within this process; another node may make one more)
            if await door.accounts.count() >= door.settings.max_accounts:
                raise TooManyRecords(f"acme-dns holds acme_dns.max_accounts ({door.settings.max_accounts}) "
                                     "accounts: remove unused ones (dnsapi acme-dns rm) or raise it",
                                     "too_many_accounts")
            account, password = await door.accounts.create(parsed, who)
    except VaultUnavailable as exc:
        _audit(request, "acme_dns_register", who, 500, "failed", exc.message)
        return answer(500, {"error": "db_error"})
    except DnsapiError as exc:  # (too many password checks at once: 429, said as dnsapi says it)
        _audit(request, "acme_dns_register", who, exc.status, _result(exc), exc.code)
        raise
    fulldomain = account.fulldomain(door.settings.zone)
    _audit(request, "acme_dns_register", who, 201, "created", fqdn=fulldomain)
    return answer(201, {"username": account.username, "password": password,
                        "fulldomain": fulldomain, "subdomain": account.subdomain,
                        "allowfrom": list(account.allowfrom)})


def _post(text: str | None) -> tuple[str, str]:
    """(subdomain, txt) of an /update body as Go's Decoder fills ACMETxtPost: a field that is
    missing, not a string, or in a body that does not decode stays empty."""
    try:
        fields = _fields(_decode(text, whole=False)) if text is not None else {}
    except (ValueError, RecursionError):
        fields = {}
    subdomain, txt = fields.get("subdomain"), fields.get("txt")
    return (subdomain if isinstance(subdomain, str) else "", txt if isinstance(txt, str) else "")


async def _account(request: web.Request, door: AcmeDns) -> Account | None:
    """acme-dns's Auth middleware up to the body: credentials, then the source address."""
    account = await door.accounts.verify(request.headers.get("X-Api-User", ""),
                                         request.headers.get("X-Api-Key", ""))
    if account is None or not account.allows_source(request.remote):
        return None
    return account


async def update(request: web.Request) -> web.Response:
    door = request.app[ACME_DNS]
    try:
        account = await _account(request, door)
    except VaultUnavailable as exc:
        _audit(request, "acme_dns_update", None, 500, "failed", exc.message)
        return answer(500, {"error": "db_error"})
    except DnsapiError as exc:  # (too many password checks at once)
        _audit(request, "acme_dns_update", None, exc.status, _result(exc), exc.code)
        raise
    if account is None:
        _audit(request, "acme_dns_update", None, 401, "refused", "bad credentials or source address")
        return answer(401, {"error": "forbidden"})
    who = f"acme-dns:{account.username}"
    fulldomain = account.fulldomain(door.settings.zone)
    subdomain, txt = _post(await _body(request))
    if subdomain != account.subdomain:
        _audit(request, "acme_dns_update", who, 401, "refused", "not the account's subdomain", fulldomain)
        return answer(401, {"error": "forbidden"})
    if len(txt) != TXT_LENGTH or not set(txt) <= _BASE64URL:
        _audit(request, "acme_dns_update", who, 400, "refused", "bad_txt", fulldomain)
        return answer(400, {"error": "bad_txt"})
    runtime, service = request.app[RUNTIME], request.app[SERVICE]
    wait = runtime.limiter.allow(who)
    if wait:
        raise TooManyRequests(f"{who} is over its rate limit; retry in {max(wait, 0.1):.1f}s", wait)
    record = service.make_record(fulldomain, txt, owner=who)
    try:
        with service.waits.slot(who):
            outcome = await service.add(record)
            if await door.accounts.get(account.username) is None:  # (`acme-dns rm` meanwhile)
                await service.remove(fulldomain, txt)
                _audit(request, "acme_dns_update", who, 401, "refused", "the account was removed",
                       fulldomain, txt)
                return answer(401, {"error": "forbidden"})
            await service.wait_served(record)
    except (VaultUnavailable, ZoneError) as exc:  # storage: acme-dns's own answer
        _audit(request, "acme_dns_update", who, 500, "failed", exc.message, fulldomain, txt)
        return answer(500, {"error": "db_error"})
    except DnsapiError as exc:  # the client's (quota, conflict, limits) or a wait's: said so
        _audit(request, "acme_dns_update", who, exc.status, _result(exc), exc.code, fulldomain, txt)
        raise
    _audit(request, "acme_dns_update", who, 200,
           "created" if outcome is Outcome.CREATED else "existed", None, fulldomain, txt)
    return answer(200, {"txt": txt})


async def health(request: web.Request) -> web.Response:
    return answer(200, None)


def attach(app: web.Application) -> web.Application | None:
    """Serve acme-dns for the app's config: its routes on `app` itself (none clashes with the
    API's own), or, with acme_dns.listen, an app of its own that is returned, for its own
    listener: the same middlewares (request ids, metrics, refusal limits), service, runtime
    and audit trail, its own connection guard."""
    service = app[SERVICE]
    door = AcmeDns(service.config, Accounts(service.store))
    assert door.settings is not None
    target = app
    if door.settings.listen is not None:
        target = web.Application(middlewares=app.middlewares, client_max_size=app[MAX_BODY])
        target[SERVICE], target[RUNTIME], target[MAX_BODY] = service, app[RUNTIME], app[MAX_BODY]
        target[GUARD] = ConnectionGuard(service.config.http, service.metrics)
    target[ACME_DNS] = door
    target.router.add_post("/register", register)
    target.router.add_post("/update", update)
    target.router.add_get("/health", health)
    return target if target is not app else None
