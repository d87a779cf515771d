"""The audit trail: one JSON line per change and per refused request.

Each line says when, which token (by name), from which address, what was asked, about which
name, the SHA-256 of the value (values are not secret, but the trail need not repeat them) and the
result. Secrets never reach it: no token, no Authorization header, no Vault credential.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import threading
from pathlib import Path
from typing import IO, Any


def value_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class AuditLog:
    """Appends JSON lines to a file (opened once, line-buffered) or to stderr."""

    def __init__(self, path: Path | None) -> None:
        self._stream: IO[str] = open(path, "a", buffering=1) if path else sys.stderr  # noqa: SIM115
        self._owned = path is not None
        self._lock = threading.Lock()

    def write(self, **entry: Any) -> None:
        line = json.dumps({"time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                           **{k: v for k, v in entry.items() if v is not None}},
                          ensure_ascii=True, sort_keys=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._owned:
            self._stream.close()
