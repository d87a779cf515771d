"""dnsapi/logs.py: what a log line can be made to say."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from dnsapi.logs import JsonFormatter, PlainFormatter

pytestmark = pytest.mark.unit


def record(message: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("dnsapi.api", logging.ERROR, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]


def test_a_newline_from_a_request_cannot_forge_a_plain_line():
    """The last notes' latent finding: the unhandled-error line names request.path, which aiohttp
    has URL-decoded, so /v1/records%0A<a line of one's choosing> wrote that line into the log."""
    path = "/v1/records\n2026-12-01 00:00:00,000 INFO dnsapi: reload: applied\r\x1b[2J\x9b2J\u2028"
    line = PlainFormatter().format(record("unhandled error on %s %s", "POST", path))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x9b" not in line
    assert line.endswith(r"/v1/records\x0a2026-12-01 00:00:00,000 INFO dnsapi: reload: applied"
                         r"\x0d\x1b[2J\x9b2J\u2028")
    assert json.loads(JsonFormatter().format(record("on %s", path)))["message"] == f"on {path}"


def test_a_traceback_keeps_its_lines_and_none_passes_for_a_record():
    try:
        raise ValueError("bad path /v1/x\n2026-12-01 00:00:00,000 INFO dnsapi: forged\x1b[2J")
    except ValueError:
        line = PlainFormatter().format(record("unhandled error on %s", "/x", exc_info=sys.exc_info()))
    lines = line.splitlines()
    assert lines[1] == "  Traceback (most recent call last):" and "\x1b" not in line
    assert all(later.startswith("  ") for later in lines[1:])
    assert "  2026-12-01 00:00:00,000 INFO dnsapi: forged\\x1b[2J" in lines
