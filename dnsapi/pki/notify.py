"""Push pki-watch events to the configured sinks, each in the shape its receiver expects.

An event is a JSON object (see `event`); `send` delivers it to one sink or raises DeliveryError.
Chat robots (WeCom, DingTalk, Feishu) answer HTTP 200 even when they refuse a message, so their
`errcode`/`code` is checked too. Sink URLs and secrets carry credentials (WeCom and DingTalk put
the key in the URL), so errors and logs name the sink, never its URL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import time
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import requests

from .. import __version__
from ..config import SinkConfig


class DeliveryError(Exception):
    """One delivery attempt failed; the message is safe to log (no URL, no secret)."""


def event(kind: str, key: str, severity: str, mount: str, summary: str, now: float,
          **details: Any) -> dict[str, Any]:
    """A new event. `key` names what it is about (e.g. `revoked:pki:1a:2b`); the id is derived
    from it, so a receiver that sees the same id twice (a retry after a lost answer) can drop it."""
    return {
        "id": hashlib.sha256(key.encode()).hexdigest()[:24],
        "type": kind,
        "severity": severity,
        "mount": mount,
        "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "summary": summary,
        **details,
    }


def text(event: dict[str, Any]) -> str:
    """The event as a few lines of plain text, for chat robots."""
    lines = [f"[{event['severity'].upper()}] {event['summary']}"]
    for key, value in event.items():
        if key in ("id", "severity", "summary"):
            continue
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _payload(sink: SinkConfig, event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(url, JSON body) for an HTTP sink."""
    url = sink.url or ""
    body = text(event)
    title = f"dnsapi pki-watch: {event['type']}"
    if sink.type == "webhook":
        return url, event
    if sink.type == "slack":  # also Mattermost and Rocket.Chat incoming webhooks
        return url, {"text": body}
    if sink.type == "wecom":
        return url, {"msgtype": "markdown", "markdown": {"content": f"**{title}**\n{body}"}}
    if sink.type == "dingtalk":
        if sink.secret:  # "加签": HMAC-SHA256 of "<ms>\n<secret>" keyed by the secret
            stamp = str(int(time.time() * 1000))
            signed = hmac.new(sink.secret.encode(), f"{stamp}\n{sink.secret}".encode(), hashlib.sha256)
            sign = urllib.parse.quote_plus(base64.b64encode(signed.digest()))
            url += f"{'&' if '?' in url else '?'}timestamp={stamp}&sign={sign}"
        return url, {"msgtype": "markdown", "markdown": {"title": title, "text": body.replace("\n", "\n\n")}}
    if sink.type == "feishu":
        payload: dict[str, Any] = {"msg_type": "text", "content": {"text": body}}
        if sink.secret:  # "签名校验": HMAC-SHA256 keyed by "<s>\n<secret>" over nothing
            stamp = str(int(time.time()))
            digest = hmac.new(f"{stamp}\n{sink.secret}".encode(), b"", hashlib.sha256).digest()
            payload.update(timestamp=stamp, sign=base64.b64encode(digest).decode())
        return url, payload
    raise ValueError(f"not an HTTP sink: {sink.type}")


def send(sink: SinkConfig, event: dict[str, Any], session: requests.Session) -> None:
    if sink.type == "command":
        _run_command(sink, event)
        return
    url, payload = _payload(sink, event)
    headers = {"User-Agent": f"dnsapi-pki-watch/{__version__}", "X-Dnsapi-Event-Id": event["id"],
               **dict(sink.headers)}
    try:
        response = session.post(url, json=payload, headers=headers, timeout=sink.timeout)
    except requests.RequestException as exc:
        raise DeliveryError(f"sink {sink.name}: {type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise DeliveryError(f"sink {sink.name}: HTTP {response.status_code}")
    if sink.type in ("wecom", "dingtalk", "feishu"):
        try:
            answer = response.json()
        except ValueError:
            raise DeliveryError(f"sink {sink.name}: the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise DeliveryError(f"sink {sink.name}: the answer is not a JSON object")
        code = answer.get("errcode", answer.get("code", answer.get("StatusCode", 0)))
        if code != 0:
            message = str(answer.get("errmsg") or answer.get("msg") or "")[:200]
            raise DeliveryError(f"sink {sink.name}: refused with code {code}: {message}")


def command_env(sink: SinkConfig, parent: Mapping[str, str]) -> dict[str, str]:
    """A command sink's environment: PATH and LANG, plus what its `env:` list names. Nothing else
    is inherited: pki-watch's environment may hold Vault credentials (DNSAPI_VAULT_TOKEN,
    DNSAPI_VAULT_SECRET_ID) that could write challenge records, i.e. obtain certificates."""
    env = {name: parent[name] for name in ("PATH", "LANG") if name in parent}
    env.setdefault("PATH", os.defpath)
    for name, value in sink.env:
        if value is not None:
            env[name] = value
        elif name in parent:
            env[name] = parent[name]
    return env


def _run_command(sink: SinkConfig, event: dict[str, Any]) -> None:
    try:
        result = subprocess.run(sink.command, input=json.dumps(event).encode(), capture_output=True,
                                timeout=sink.timeout, check=False, env=command_env(sink, os.environ))
    except FileNotFoundError:
        raise DeliveryError(f"sink {sink.name}: {sink.command[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise DeliveryError(f"sink {sink.name}: timed out after {sink.timeout:g}s") from None
    except OSError as exc:  # not executable, a directory, out of processes, ...
        raise DeliveryError(f"sink {sink.name}: cannot run {sink.command[0]}: {exc.strerror}") from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise DeliveryError(f"sink {sink.name}: exit status {result.returncode} {detail[0][:200]}")
