"""systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram to $NOTIFY_SOCKET.

`Type=notify` units learn from READY=1 that dnsapi is serving (zone files checked, listener
bound), from RELOADING=1 … READY=1 that a SIGHUP reload ran, and from STOPPING=1 that it is
finishing in-flight writes. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send `KEY=VALUE` fields; True when a socket was there to receive them."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall("\n".join(fields).encode())
    return True


def reloading() -> bool:
    """RELOADING=1 with the timestamp systemd ≥ 253 wants for Type=notify-reload."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
