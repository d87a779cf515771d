"""The audit trail: one JSON line per change and per refused request.

Each line says when, which token (by name), from which address, what was asked, about which
name, the SHA-256 of the value (values are not secret, but the trail need not repeat them) and the
result. Secrets never reach it: no token, no Authorization header, no Vault credential.

Refusals cost an attacker nothing, so they are written in full only up to a budget per interval
(`refusals.audit_lines` per `refusals.audit_interval`); past it they are counted, and one summary
line per interval gives the count and the busiest source addresses (the first SOURCES_COUNTED
apart, the rest as "other"). How much an attacker can make dnsapi write, and hold, is thus
bounded whatever they send.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError

SUMMARY_SOURCES = 10  # busiest source addresses named in a summary line
# Source addresses counted apart per interval; refusals from any further ones are counted under
# "other". A UDP source costs a spoofer nothing, so what the counter holds must be bounded.
SOURCES_COUNTED = 1000

log = logging.getLogger(__name__)


def value_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class AuditLog:
    """Appends JSON lines to a file (opened once, line-buffered) or to stderr."""

    def __init__(self, path: Path | None, refusal_lines: int = 100, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        try:
            self._stream: IO[str] = open(path, "a", buffering=1) if path else sys.stderr  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(f"audit.file: cannot open {path} for appending: {exc.strerror}") from None
        self._owned = path is not None
        self._lock = threading.Lock()
        self.refusal_lines = refusal_lines
        self.interval = interval
        self.clock = clock
        self._window_start = clock()
        self._written = 0  # refusals written in full in this interval
        self._suppressed: Counter[str] = Counter()  # refusals counted instead, by source

    def refused(self, remote: str | None, **entry: Any) -> None:
        """A refused request: written in full within the interval's budget, else counted."""
        self.flush()
        if self._written < self.refusal_lines:
            self._written += 1
            self.write(remote=remote, **entry)
        else:
            source = remote or "unknown"
            if source not in self._suppressed and len(self._suppressed) >= SOURCES_COUNTED:
                source = "other"
            self._suppressed[source] += 1

    def flush(self) -> None:
        """Once the interval is over: the summary line of what was counted, and a new budget."""
        now = self.clock()
        if now - self._window_start < self.interval:
            return
        if self._suppressed:
            self.write(action="refusals_summarised", result="refused",
                       count=sum(self._suppressed.values()), seconds=round(now - self._window_start),
                       sources=dict(self._suppressed.most_common(SUMMARY_SOURCES)),
                       source_count=len(self._suppressed))
        self._window_start, self._written, self._suppressed = now, 0, Counter()

    def write(self, **entry: Any) -> None:
        line = json.dumps({"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                           **{k: v for k, v in entry.items() if v is not None}},
                          ensure_ascii=True, sort_keys=False)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except OSError as exc:  # (a full disk) the change is made: say so where it can be read
                log.error("cannot write the audit trail (%s); its entry: %s", exc.strerror, line)

    def close(self) -> None:
        self._window_start -= self.interval  # whatever was counted is written before closing
        self.flush()
        if self._owned:
            try:
                self._stream.close()
            except OSError as exc:  # what is still buffered went to the log with its write
                log.error("cannot close the audit trail cleanly (%s)", exc.strerror)
