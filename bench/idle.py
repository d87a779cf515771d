"""What CoreDNS's `file` plugin costs while nothing changes: CPU % of one core at idle, per
reload interval, with a 1k-line and a 100k-line operator zone.

Each tick of `reload` reads the zone file up to its SOA and compares the serial (a changed
serial means a full parse); with nothing changing that read is all an interval costs, so a
shorter interval shows a new record sooner and costs more idle CPU. Starts CoreDNS (the pinned
build) on a free loopback port with the shipped Corefile's plugins and the given interval,
waits until it serves the zone and WARM_UP seconds more, then reads its CPU time (user +
system) over the window.

    python3 bench/idle.py [--seconds 10] [--reload 250ms 100ms 50ms 25ms 10ms] [--push]

With --push, CoreDNS runs coredns/Corefile.push, whose secondary block has transferred the
challenge names once from a stand-in for dnsapi's answers (the zone's SOA and NS: no records,
as at idle) before the window starts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socketserver
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rdatatype
import dns.rrset
from rewrite import operator_zone

from dnsapi.devstack import start_coredns

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.helpers
from tests.helpers import free_port, push_corefile, shipped_reload

SIZES = {"1k": 1_000, "100k": 100_000}
SHIPPED = shipped_reload("Corefile")  # the zone file polled
SHIPPED_PUSH = shipped_reload("Corefile.push")  # challenge names pushed: only operator edits wait
# Seconds after CoreDNS first answers that are left out: the Go runtime and the collection of
# the zone parse's garbage still cost CPU then.
WARM_UP = 3.0


def cpu_seconds(pid: int) -> float:
    """CPU time of all of the process's threads, from the scheduler's own nanosecond count
    (schedstat): /proc/PID/stat counts whole clock ticks, too coarse for a process that wakes
    for a fraction of a millisecond a few times a second."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def idle_cpu_pct(directory: Path, lines: int, reload: str, seconds: float, push: bool = False
                 ) -> float:
    """CoreDNS's CPU % of one core over `seconds` with nothing changing; with `push`, in the push
    layout (coredns/Corefile.push: its secondary block in front of the file block)."""
    directory.mkdir(parents=True)
    (directory / "db.dev.local").write_text(operator_zone(lines))
    with primary() as (port, transferred):
        (directory / "Corefile").write_text(
            push_corefile(port, reload) if push else
            f"dev.local {{\n    bind 127.0.0.1\n    file db.dev.local {{\n        reload {reload}\n"
            "    }\n    errors\n}\n")
        proc = start_coredns(directory, free_port(), ["dev.local"], directory / "coredns.log")
        try:
            if push and not transferred.wait(30):
                raise RuntimeError("CoreDNS did not transfer the challenge names")
            time.sleep(WARM_UP)  # not counted: start-up work goes on after the first answer
            before, start = cpu_seconds(proc.popen.pid), time.monotonic()
            time.sleep(seconds)
            return 100 * (cpu_seconds(proc.popen.pid) - before) / (time.monotonic() - start)
        finally:
            proc.stop()


@contextlib.contextmanager
def primary() -> Iterator[tuple[int, threading.Event]]:
    """A stand-in for dnsapi's answers on a free port, answering the SOA and AXFR of dev.local
    with no challenge records; the event is set once a transfer was served."""
    soa = dns.rrset.from_text("dev.local.", 60, "IN", "SOA",
                              "ns1.dev.local. h.dev.local. 1 3600 600 86400 60")
    ns = dns.rrset.from_text("dev.local.", 60, "IN", "NS", "ns1.dev.local.")
    transferred = threading.Event()

    def reply(wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        axfr = query.question[0].rdtype == dns.rdatatype.AXFR
        response.answer.extend([soa, ns, soa] if axfr else [soa])
        return response.to_wire()

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            with contextlib.suppress(OSError, struct.error):
                (length,) = struct.unpack("!H", self.request.recv(2))
                out = reply(self.request.recv(length))
                self.request.sendall(struct.pack("!H", len(out)) + out)
                transferred.set()

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(reply(data), self.client_address)

    port = free_port()
    servers = [socketserver.ThreadingTCPServer(("127.0.0.1", port), Tcp),
               socketserver.ThreadingUDPServer(("127.0.0.1", port), Udp)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield port, transferred
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def measure(reloads: list[str], seconds: float, push: bool = False) -> dict[str, dict[str, float]]:
    """{reload: {size: CPU %}}."""
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for reload in reloads:
            for size, lines in SIZES.items():
                figures.setdefault(reload, {})[size] = round(
                    idle_cpu_pct(Path(tmp) / f"{reload}-{size}", lines, reload, seconds, push), 2)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="idle window per run")
    parser.add_argument("--reload", nargs="+", metavar="INTERVAL",
                        help=f"reload intervals to measure (default: as shipped, {SHIPPED}; "
                             f"with --push {SHIPPED_PUSH})")
    parser.add_argument("--push", action="store_true",
                        help="the push layout (coredns/Corefile.push) instead of the file block alone")
    args = parser.parse_args()
    args.reload = args.reload or [SHIPPED_PUSH if args.push else SHIPPED]
    figures = measure(args.reload, args.seconds, args.push)
    print("| reload | idle CPU, 1k-line zone | idle CPU, 100k-line zone |")
    print("|---|---|---|")
    for reload, cpu in figures.items():
        print(f"| {reload} | {cpu['1k']:.2f} % | {cpu['100k']:.2f} % |")
    print(json.dumps({"coredns_idle_cpu_pct": figures}))


if __name__ == "__main__":
    main()
