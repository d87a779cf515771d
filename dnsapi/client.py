"""Clients for the dnsapi HTTP API: `Client` (blocking) and `AsyncClient` (asyncio).

Both read their settings from DNSAPI_URL, DNSAPI_TOKEN and DNSAPI_CA_BUNDLE unless given, and
raise ClientError with a one-line reason for anything that is not a success - an unreachable
server, a TLS failure, or the server's own `{"error", "message"}` answer.

    from dnsapi.client import Client
    Client().add("_acme-challenge.www.dev.local", value, wait=True)
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import requests

DEFAULT_TIMEOUT = 120.0  # an add with wait=true may take up to the server's propagation_timeout


class ClientError(Exception):
    """Why a call failed, in one line; `status` and `code` are set when the server answered."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Settings:
    url: str
    token: str
    ca_bundle: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        url, token = env.get("DNSAPI_URL", "").strip(), env.get("DNSAPI_TOKEN", "").strip()
        if not url:
            raise ClientError("DNSAPI_URL is not set (e.g. http://127.0.0.1:8053)")
        if not url.startswith(("http://", "https://")):
            raise ClientError(f"DNSAPI_URL must start with http:// or https://, not {url!r}")
        if not token:
            raise ClientError("DNSAPI_TOKEN is not set")
        return cls(url=url.rstrip("/"), token=token, ca_bundle=env.get("DNSAPI_CA_BUNDLE") or None)


def _result(status: int, text: str) -> dict[str, Any]:
    """The JSON answer of a 2xx, or ClientError carrying the server's error code and message."""
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ClientError(f"dnsapi answered HTTP {status} with a body that is not a JSON object",
                          status)
    if status >= 400:
        code = str(body.get("error", "http_error"))
        raise ClientError(f"{code} (HTTP {status}): {body.get('message', 'no message')}", status, code)
    return body


def _record_body(fqdn: str, value: str, ttl: int | None = None, wait: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"fqdn": fqdn, "value": value}
    if ttl is not None:
        body["ttl"] = ttl
    if wait:
        body["wait"] = True
    return body


class Client:
    """Blocking client (requests)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {self.settings.token}"
        # Passed per request: a session-level verify would lose to REQUESTS_CA_BUNDLE in the env.
        self._verify: str | bool = self.settings.ca_bundle or True

    def add(self, fqdn: str, value: str, ttl: int | None = None, wait: bool = False) -> dict[str, Any]:
        """Add a TXT value; with wait=True return only once every DNS server answers it."""
        return self._request("POST", "/v1/records", json=_record_body(fqdn, value, ttl, wait))

    def remove(self, fqdn: str, value: str) -> dict[str, Any]:
        return self._request("DELETE", "/v1/records", json=_record_body(fqdn, value))

    def list(self, fqdn: str | None = None) -> list[dict[str, Any]]:
        params = {"fqdn": fqdn} if fqdn else None
        return list(self._request("GET", "/v1/records", params=params)["records"])

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self.settings.url + path
        try:
            response = self._session.request(method, url, timeout=self.settings.timeout,
                                             verify=self._verify, **kwargs)
        except requests.exceptions.SSLError as exc:
            raise ClientError(f"TLS to {self.settings.url} failed (set DNSAPI_CA_BUNDLE?): "
                              f"{_first_line(exc)}") from None
        except requests.exceptions.Timeout:
            raise ClientError(f"dnsapi at {self.settings.url} did not answer within "
                              f"{self.settings.timeout:g}s") from None
        except requests.RequestException as exc:
            reason = "connection refused" if "refused" in str(exc).lower() else _first_line(exc)
            raise ClientError(f"cannot reach dnsapi at {self.settings.url}: {reason}") from None
        return _result(response.status_code, response.text)


class AsyncClient:
    """asyncio client (aiohttp). Use as `async with AsyncClient() as client:`."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def add(self, fqdn: str, value: str, ttl: int | None = None, wait: bool = False
                  ) -> dict[str, Any]:
        return await self._request("POST", "/v1/records", json=_record_body(fqdn, value, ttl, wait))

    async def remove(self, fqdn: str, value: str) -> dict[str, Any]:
        return await self._request("DELETE", "/v1/records", json=_record_body(fqdn, value))

    async def list(self, fqdn: str | None = None) -> list[dict[str, Any]]:
        params = {"fqdn": fqdn} if fqdn else None
        return list((await self._request("GET", "/v1/records", params=params))["records"])

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_context = (ssl.create_default_context(cafile=self.settings.ca_bundle)
                           if self.settings.ca_bundle else None)
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.settings.token}"},
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                connector=aiohttp.TCPConnector(ssl=ssl_context) if ssl_context else None)
        return self._session

    async def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        url = self.settings.url + path
        try:
            async with self._get_session().request(method, url, **kwargs) as response:
                return _result(response.status, await response.text())
        except aiohttp.ClientSSLError as exc:
            raise ClientError(f"TLS to {self.settings.url} failed (set DNSAPI_CA_BUNDLE?): "
                              f"{_first_line(exc)}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClientError(f"cannot reach dnsapi at {self.settings.url}: "
                              f"{_first_line(exc) or type(exc).__name__}") from None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
