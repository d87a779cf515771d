"""The HA side of the Vault client, without real servers: which node it picks when nodes
disagree about the leader, what the store does with a read older than one it has seen, when the
event loop may use the token for a direct write, and which way a direct write's answer sends it
(against a scripted in-process fake)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import hvac.exceptions
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestServer

import dnsapi.vault
from dnsapi.config import VaultConfig
from dnsapi.errors import VaultUnavailable
from dnsapi.metrics import Metrics
from dnsapi.pki.client import PkiClient, Unsupported
from dnsapi.store import VaultStore, ZoneState
from dnsapi.vault import CasConflict, Detour, VaultAuth, VaultSession

A, B, C = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"


def session(addrs: list[str], leaders: dict[str, str | None]) -> VaultSession:
    """A session whose nodes answer sys/leader from `leaders` (None: no answer)."""
    vault = VaultSession(VaultConfig.model_validate({"addr": addrs, "token": "t"}))
    vault._named_leader = leaders.get  # type: ignore[method-assign]
    return vault


def test_the_node_most_nodes_name_wins_over_a_former_leader_that_still_claims_the_lead() -> None:
    # A was frozen and resumed: it still names itself; B and C name B.
    vault = session([A, B, C], {A: A, B: B, C: B})
    assert vault._find_active(deadline=0)
    assert vault.url == B


def test_a_standby_alone_leads_to_the_leader_it_names() -> None:
    vault = session([C], {C: A, A: A})
    assert vault._find_active(deadline=0)
    assert vault.url == A


def test_no_leader_during_an_election_is_no_active_node() -> None:
    vault = session([A, B, C], {A: None, B: "", C: ""})
    assert not vault._find_active(deadline=0)


def test_a_node_whose_certificate_is_not_trusted_is_passed_over_and_said(caplog) -> None:
    def named(addr: str) -> str:
        if addr == A:
            raise requests.exceptions.SSLError("certificate verify failed")
        return B

    vault = session([A, B, C], {})
    vault._named_leader = named  # type: ignore[method-assign]
    assert vault._find_active(deadline=0) and vault.url == B
    assert f"TLS to {A} failed (check vault.ca_cert)" in caplog.text


def test_no_trusted_node_is_a_tls_error_at_once_not_an_election() -> None:
    def untrusted(addr: str) -> str:
        raise requests.exceptions.SSLError("certificate verify failed")

    vault = session([A, B], {})
    vault._named_leader = untrusted  # type: ignore[method-assign]
    with pytest.raises(VaultUnavailable, match=f"TLS to Vault at {A}, {B} failed"):
        vault._find_active(deadline=time.monotonic() + 30)


def test_a_leader_that_keeps_changing_does_not_hold_a_call_past_its_deadline() -> None:
    """Each round finds another node leading and each refuses the connection: the call ends
    soon after vault.failover_timeout, after at most one try past it."""
    vault = VaultSession(VaultConfig.model_validate({"addr": [A, B], "token": "t",
                                                     "failover_timeout": "300ms"}))
    tries: list[float] = []

    def flap(deadline: float) -> bool:
        vault.client.url = B if vault.url == A else A
        return True

    def refused() -> None:
        tries.append(time.monotonic())
        raise requests.ConnectionError("refused")

    vault._find_active = flap  # type: ignore[method-assign]
    vault.auth.prepare = lambda client: None  # type: ignore[method-assign]
    outcome: list[BaseException] = []
    caller = threading.Thread(target=lambda: outcome.append(pytest.raises(
        VaultUnavailable, vault.run, refused).value), daemon=True)
    caller.start()
    caller.join(5)
    assert outcome, "still retrying long past vault.failover_timeout"
    assert sum(at >= tries[0] + 0.3 for at in tries) <= 1


class Replies:
    """Stands in for VaultSession.run: answers reads with the next state, noting each call's
    `confirm`."""

    def __init__(self, *versions: int) -> None:
        self.versions = list(versions)
        self.confirms: list[bool] = []

    def run(self, fn: Callable[[], Any], read: bool = False, patience: float | None = None,
            confirm: bool = False, failed: str | None = None) -> ZoneState:
        self.confirms.append(confirm)
        return ZoneState(records={}, version=self.versions.pop(0))


def test_a_read_older_than_one_seen_is_read_again_after_asking_every_node() -> None:
    store = VaultStore(VaultConfig.model_validate({"addr": A, "token": "t"}), Metrics())
    replies = Replies(7, 5, 7, 3, 3)
    store.session = replies  # type: ignore[assignment]

    async def reads() -> list[int]:
        return [(await store.read_zone("dev.local")).version for _ in range(3)]

    # 7; then 5 (stale: asked again, 7); then 3 and, asked again, 3 (deleted by hand: taken)
    assert asyncio.run(reads()) == [7, 7, 3]
    assert replies.confirms == [False, False, True, False, True]


async def test_vault_calls_waiting_out_an_election_leave_the_default_threads_free() -> None:
    """Every Vault call may wait up to vault.failover_timeout during an election: a dozen of
    them must not hold the threads the zone files and the DNS doors' reads use."""
    store = VaultStore(VaultConfig.model_validate({"addr": A, "token": "t"}), Metrics())
    # a default pool smaller than the dozen calls, whatever this machine's cores make it
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(4))
    election = threading.Event()
    blocked = SimpleNamespace(run=lambda *args: election.wait(), close=store.session.close)
    store.session = blocked  # type: ignore[assignment]
    waiting = [asyncio.create_task(store.current_version("dev.local")) for _ in range(12)]
    try:
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "a zone file read"), 5) == "a zone file read"
    finally:
        election.set()
        await asyncio.gather(*waiting)
        await store.close()


class TokenClient:
    """The part of an hvac client VaultAuth uses for a plain token: its token and lookup_self."""

    def __init__(self, ttl: int) -> None:
        self.token: str | None = None
        lookup = {"data": {"ttl": ttl, "renewable": True}}
        self.auth = SimpleNamespace(token=SimpleNamespace(lookup_self=lambda: lookup))


def test_the_loop_gets_the_token_only_when_it_needs_no_work_first() -> None:
    auth = VaultAuth(VaultConfig.model_validate({"addr": A, "token": "t"}))
    client = TokenClient(ttl=3600)
    assert auth.ready_token(client) is None  # not looked up yet: `prepare` must run first
    auth.prepare(client)  # type: ignore[arg-type]
    assert auth.ready_token(client) == "t"  # type: ignore[arg-type]
    with auth._lock:  # a worker thread is logging in or renewing right now
        assert auth.ready_token(client) is None  # type: ignore[arg-type]
    auth._renew_at = 0.0  # renewal is due
    assert auth.ready_token(client) is None  # type: ignore[arg-type]


class AppRoleClient:
    """The part of an hvac client VaultAuth uses with AppRole: each login hands out token-N;
    lookup-self answers as `token_known` says (False: Vault no longer knows the token)."""

    def __init__(self, token: str = "", token_known: bool = False) -> None:
        self.token = token
        self.logins = 0

        def login(**kwargs: str) -> dict:
            self.logins += 1
            self.token = f"token-{self.logins}"
            return {"auth": {"lease_duration": 3600, "renewable": True}}

        def lookup_self() -> dict:
            if not token_known:
                raise hvac.exceptions.Forbidden("permission denied")
            return {"data": {}}

        self.auth = SimpleNamespace(approle=SimpleNamespace(login=login),
                                    token=SimpleNamespace(lookup_self=lookup_self))


def approle_auth(tmp_path) -> VaultAuth:
    (tmp_path / "role-id").write_text("r\n")
    (tmp_path / "secret-id").write_text("s\n")
    return VaultAuth(VaultConfig.model_validate({"addr": A, "approle": {
        "role_id_file": str(tmp_path / "role-id"), "secret_id_file": str(tmp_path / "secret-id")}}))


def test_threads_refused_the_same_token_log_in_once(tmp_path) -> None:
    """Each login leaves a token behind until its TTL and may use up one of the secret_id's
    allowed uses: a thread refused a token another thread has replaced since just retries."""
    auth, client = approle_auth(tmp_path), AppRoleClient("token-0")
    assert auth.recover(client, "token-0")  # type: ignore[arg-type]  # the first refused: logs in
    assert auth.recover(client, "token-0")  # type: ignore[arg-type]  # another, refused the same
    assert client.logins == 1 and client.token == "token-1"
    assert auth.recover(client, "token-1")  # type: ignore[arg-type]  # the new one refused: again
    assert client.logins == 2


def test_a_refused_valid_approle_token_logs_in_again_only_after_a_pause(tmp_path, monkeypatch) -> None:
    """A 403 to a token Vault still knows is a permission the policies lack. A policy added to
    the AppRole role since the login comes only with a new login: tried once per RELOGIN_PAUSE,
    not once per refused request."""
    auth, client = approle_auth(tmp_path), AppRoleClient(token_known=True)
    auth.prepare(client)  # type: ignore[arg-type]
    for _ in range(5):
        assert not auth.recover(client, "token-1")  # type: ignore[arg-type]
    assert client.logins == 1
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + dnsapi.vault.RELOGIN_PAUSE)
    assert auth.recover(client, "token-1")  # type: ignore[arg-type]
    assert client.logins == 2 and client.token == "token-2"
    assert not auth.recover(client, "token-2")  # type: ignore[arg-type]


def test_a_rewritten_token_file_sends_the_next_write_through_prepare(tmp_path) -> None:
    path = tmp_path / "token"
    path.write_text("first\n")
    auth = VaultAuth(VaultConfig.model_validate({"addr": A, "token_file": str(path)}))
    client = TokenClient(ttl=0)
    auth.prepare(client)  # type: ignore[arg-type]
    assert auth.ready_token(client) == "first"  # type: ignore[arg-type]
    path.write_text("second\n")
    os.utime(path, (1, 1))  # a new mtime, whatever the clock's granularity
    assert auth.ready_token(client) is None  # type: ignore[arg-type]
    auth.prepare(client)  # type: ignore[arg-type]
    assert auth.ready_token(client) == "second"  # type: ignore[arg-type]
    path.unlink()
    assert auth.ready_token(client) is None  # type: ignore[arg-type]


class FakeVault:
    """An aiohttp server answering every KV write with the next scripted (status, body), noting
    each request's headers."""

    def __init__(self, *answers: tuple[int, dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.headers: list[dict[str, str]] = []

    async def write(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        status, body = self.answers.pop(0)
        return web.json_response(body, status=status,
                                 headers={"Location": f"{B}/v1/x"} if status == 307 else None)


async def direct(*answers: tuple[int, dict[str, Any]]) -> tuple[FakeVault, list[Any]]:
    """Each scripted answer's outcome for one direct write: the version, or the exception."""
    fake = FakeVault(*answers)
    app = web.Application()
    app.router.add_post("/v1/secret/data/{path:.*}", fake.write)
    outcomes: list[Any] = []
    async with TestServer(app) as server:
        vault = VaultSession(VaultConfig.model_validate(
            {"addr": str(server.make_url("")).rstrip("/"), "token": "the-token"}))
        vault.auth.ready_token = lambda client: "the-token"  # type: ignore[method-assign]
        for _ in answers:
            try:
                outcomes.append(await vault.write_kv_direct("zones/dev.local", {"records": ""}, 4))
            except (CasConflict, Detour) as exc:
                outcomes.append(exc)
        await vault.close()
    return fake, outcomes


async def test_a_direct_write_returns_the_version_or_says_which_way_to_retry() -> None:
    fake, outcomes = await direct(
        (200, {"data": {"version": 5}}),
        (400, {"errors": ["check-and-set parameter did not match the current version"]}),
        (307, {}),  # a standby
        (503, {"errors": ["Vault is sealed"]}),
        (403, {"errors": ["permission denied"]}),
        (400, {"errors": ["invalid request"]}))
    assert outcomes[0] == 5
    assert isinstance(outcomes[1], CasConflict)
    assert [(o.confirm, o.why) for o in outcomes[2:]] == [
        (True, "HTTP 307"), (True, "Vault is sealed"),
        (False, "permission denied"),  # a fresh token, not another node
        (True, "invalid request")]
    assert {(h["X-Vault-Token"], h["X-Vault-Request"], h["X-Vault-No-Request-Forwarding"])
            for h in fake.headers} == {("the-token", "true", "true")}


async def test_a_direct_write_without_a_ready_token_or_a_node_goes_the_threaded_way() -> None:
    vault = VaultSession(VaultConfig.model_validate({"addr": A, "token": "t"}))
    with pytest.raises(Detour) as info:  # the token was never looked up: `prepare` must run
        await vault.write_kv_direct("zones/dev.local", {}, 1)
    assert (info.value.confirm, info.value.why) == (False, None)
    vault.auth.ready_token = lambda client: "t"  # type: ignore[method-assign]
    with pytest.raises(Detour) as info:  # nothing listens at A
        await vault.write_kv_direct("zones/dev.local", {}, 1)
    assert (info.value.confirm, info.value.why) == (True, "ConnectionError")
    await vault.close()


async def test_a_direct_write_that_fails_tls_is_retried_where_the_tls_error_is_reported() -> None:
    """Not a failover: hvac meets the same certificate and `run` says so at once."""
    async with TestServer(web.Application()) as server:  # plain HTTP behind an https:// address
        vault = VaultSession(VaultConfig.model_validate(
            {"addr": str(server.make_url("")).rstrip("/").replace("http://", "https://"),
             "token": "t"}))
        vault.auth.ready_token = lambda client: "t"  # type: ignore[method-assign]
        with pytest.raises(Detour) as info:
            await vault.write_kv_direct("zones/dev.local", {}, 1)
        await vault.close()
    assert (info.value.confirm, info.value.why) == (False, "TLS")


# -- against nodes on loopback HTTP servers (threads) ----------------------------------------

Answer = Callable[[str, str], tuple[int, dict[str, str], dict | None]]


@contextlib.contextmanager
def node(answer: Answer) -> Iterator[str]:
    """An HTTP server answering (status, headers, JSON body) = answer(method, path)."""
    class Handler(BaseHTTPRequestHandler):
        def handle_one(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, headers, body = answer(self.command, self.path)
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(data))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_LIST = handle_one

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def active(rest: Answer) -> Answer:
    """An active node's answers to sys/leader and the token lookup; `rest` answers the others."""
    def answer(method: str, path: str) -> tuple[int, dict[str, str], dict | None]:
        if path == "/v1/sys/leader":
            return 200, {}, {"is_self": True, "leader_address": ""}
        if "lookup-self" in path:
            return 200, {}, {"data": {"ttl": 0, "renewable": False}}
        return rest(method, path)
    return answer


def real_session(addrs: list[str]) -> VaultSession:
    """A session on real HTTP nodes (`node`), with a configured token."""
    return VaultSession(VaultConfig.model_validate({"addr": addrs, "token": "s.configured",
                                                    "failover_timeout": "3s"}))


def test_a_standbys_redirect_is_a_failover_not_an_answer():
    """hvac hands a 307 back as a bare response: read_kv raised TypeError, a delete reported
    success, and the watch loop died. The redirect's Location is not followed either."""
    seen: list[tuple[str, str, str]] = []
    with node(active(lambda method, path: (
            200, {}, {"data": {"data": {"a": 1}, "metadata": {"version": 3}}}))) as leader:
        def standby(method: str, path: str) -> tuple[int, dict[str, str], dict | None]:
            seen.append(("standby", method, path))
            if path == "/v1/sys/leader":
                return 200, {}, {"is_self": False, "leader_address": leader}
            return 307, {"Location": "http://127.0.0.1:9/elsewhere"}, None

        with node(standby) as standby_addr:
            vault = real_session([standby_addr])
            assert vault.run(lambda: vault.read_kv("dnsapi/zones/dev.local")) == ({"a": 1}, 3)
            assert vault.url == leader


@pytest.mark.parametrize(("status", "retried"), [(409, False), (413, False), (504, True)])
def test_a_refusal_hvac_has_no_class_for_is_said_at_once_and_a_5xx_waited_out(status, retried):
    """A 4xx hvac calls UnexpectedError (409, 413, ...) was retried as an election for
    vault.failover_timeout and only then reported; it will not change, so it is reported at once.
    Any 5xx (a proxy's 504) still means no active node yet."""
    calls: list[str] = []

    def answer(method: str, path: str) -> tuple[int, dict[str, str], dict | None]:
        calls.append(path)
        return status, {}, {"errors": ["refused"]}

    with node(active(answer)) as addr:
        vault = real_session([addr])
        with pytest.raises(VaultUnavailable) as info:
            vault.run(lambda: vault.read_kv("dnsapi/zones/dev.local"))
    assert (len(calls) > 1) == retried  # (asked again while failover_timeout lasts)
    if not retried:
        assert f"Vault refused the request (HTTP {status}" in info.value.message
        assert info.value.message.endswith(": refused)")  # (Vault's own words)


def test_a_list_this_server_does_not_serve_is_unsupported_not_unavailable():
    """pki-watch lists certs/detailed, which a server without it (HashiCorp Vault) answers 405
    on some paths: that is Unsupported (pki-watch then reads the certificates one by one)."""
    def answer(method: str, path: str) -> tuple[int, dict[str, str], dict | None]:
        return 405, {}, {"errors": ["1 error occurred:\n\t* unsupported operation\n\n"]}

    with node(active(answer)) as addr, pytest.raises(Unsupported, match="pki/certs/detailed: not served"):
        PkiClient(real_session([addr]), "pki")._list("certs/detailed")


def test_no_token_is_inherited_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VAULT_TOKEN", "s.inherited")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert real_session(["http://127.0.0.1:1"]).client.token in ("", None)


def test_a_leader_named_over_another_scheme_is_not_followed(caplog):
    """A node whose api_addr names another scheme would have had the token sent there (from
    https down to http, in the clear)."""
    def naming(leader: str) -> Answer:
        return lambda method, path: (200, {}, {"is_self": False, "leader_address": leader})

    with node(naming("https://10.0.0.9:8200")) as other, node(naming("http://10.0.0.9:8200")) as same:
        vault = real_session([other, same])
        assert vault._named_leader(other) == ""  # as if it knew of no leader
        assert "over another scheme" in caplog.text
        assert vault._named_leader(same) == "http://10.0.0.9:8200"
