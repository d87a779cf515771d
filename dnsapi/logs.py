"""Log setup: plain text for a terminal, or one JSON object per line for a log pipeline, each
line carrying the id of the HTTP request it belongs to.

The request id comes from the caller's `X-Request-Id` header when it is a sane token (so a
client's id follows the change through dnsapi's logs and audit trail), otherwise it is made
here; either way it is returned in the response's `X-Request-Id`.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import itertools
import json
import logging
import re
import uuid
from typing import Any

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
FORMATS = ("plain", "json")


_PROCESS = uuid.uuid4().hex[:8]  # unique per process; a counter makes ids unique within it
_COUNTER = itertools.count(1)


def request_id(header: str | None) -> str:
    """The id for a request: the client's, when well-formed, else a fresh one (16 hex digits:
    this process's random prefix and a counter, cheaper than a random id per request)."""
    if header is not None and _CLIENT_ID.fullmatch(header):
        return header
    return f"{_PROCESS}{next(_COUNTER) % 16**8:08x}"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0, DEL, C1, line/paragraph separators


def _escaped(text: str, keep: str = "") -> str:
    return _CONTROL.sub(lambda m: m.group() if m.group() in keep else f"\\x{ord(m.group()):02x}"
                        if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


class PlainFormatter(logging.Formatter):
    """One line per message: control characters in it (a newline in a URL-decoded path, say)
    are written escaped, so no one can forge a line. A traceback keeps its lines, each indented
    (an exception's message may hold a request's text: its lines cannot pass for records)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _escaped(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return "\n".join(f"  {line}" for line in _escaped(super().formatException(ei), "\n").split("\n"))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = getattr(record, "request_id", None)
        return f"{text} [request {rid}]" if rid else text


def setup(level: str = "info", fmt: str = "plain") -> None:
    """Configure the root logger once, for `dnsapi serve` and `dnsapi pki-watch`."""
    # The logging HOWTO's "Optimization" settings: no caller frame lookup, thread or process
    # names per record, none of which these lines print. It is a measurable share of a request.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # urllib3 (under hvac and requests) logs each request's URL at debug level, and a chat
    # sink's URL holds its key (WeCom's key=, DingTalk's access_token= and sign=).
    logging.getLogger("urllib3").setLevel(max(root.level, logging.WARNING))
