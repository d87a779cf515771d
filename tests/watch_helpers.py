"""Helpers for the pki-watch tests: a webhook receiver on loopback, and `dnsapi pki-watch` run
as a real process against a real OpenBao."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from dnsapi.devstack import Process, free_port


class Receiver:
    """Records every POST, answers what the test asks for, and can be stopped and started again
    on the same port (a receiver outage)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[dict[str, Any]] = []  # {"path", "body", "headers", "at"}
        self.answer: tuple[int, dict[str, Any]] = (200, {"errcode": 0, "errmsg": "ok"})
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.received.append({"path": self.path, "body": body,
                                              "headers": dict(self.headers), "at": time.time()})
                    status, answer = receiver.answer
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self, kind: str | None = None, **match: Any) -> list[dict[str, Any]]:
        with self._lock:
            bodies = [r["body"] for r in self.received]
        return [b for b in bodies if (kind is None or b.get("type") == kind)
                and all(b.get(k) == v for k, v in match.items())]

    def wait_for(self, kind: str, timeout: float = 20, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(kind, **match)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event {match} within {timeout}s; got {self.events()}")

    def arrival(self, event_id: str) -> float:
        with self._lock:
            return next(r["at"] for r in self.received if r["body"].get("id") == event_id)


def write_config(directory: Path, vault_addr: str, token: str, mounts: list[str],
                 sinks: list[dict[str, Any]], ca: Path | None = None, prefix: str = "watch",
                 **settings: Any) -> Path:
    """A dnsapi.yaml holding just what pki-watch needs (the zone section is required but unused)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "vault": {"addr": vault_addr, "token": token, "prefix": prefix, "ca_cert": str(ca) if ca else None},
        "zones": [{"name": "dev.local", "file": "db.dev.local"}],
        "open_on_loopback": True,
        "pki_watch": {"mounts": mounts, "interval": "500ms", "sinks": sinks,
                      "retry": {"initial": "300ms", "max": "1s"}, **settings},
    }
    path = directory / "dnsapi.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_watch(config: Path, log: Path) -> Process:
    """`dnsapi pki-watch` in the background; returns once it has finished its first cycle."""
    proc = Process.start("pki-watch", [sys.executable, "-m", "dnsapi", "pki-watch", "-c", str(config)],
                         log, env=dict(os.environ))
    deadline = time.monotonic() + 20
    while "first check done" not in log.read_text():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"pki-watch did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return proc


def run_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dnsapi", "pki-watch", "-c", str(config), "--once"],
                          capture_output=True, text=True, timeout=60, check=False)
