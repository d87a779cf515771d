"""Where an add's time goes in the push layout, from outside: every packet on the loopback
interface, stamped by the kernel, for adds spaced as compare.py spaces them.

For each add this finds, after the client starts the HTTP add: the request reaching dnsapi,
dnsapi's write to Vault and Vault's answer, the acknowledgement, the NOTIFY to CoreDNS, CoreDNS's
SOA query and its transfer (AXFR), and the client's first lookup that CoreDNS answers with the
value. It prints the median time of each from the start of the add. Nothing in dnsapi is
instrumented: what it shows is what crosses a socket.

Needs CAP_NET_RAW (a packet socket on `lo`): run it as root. IPv4 only, as the stack is.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from compare import push_coredns, served
from throughput import unlimited

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.helpers
from tests.helpers import free_port, local_stack

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # on `lo` each packet is seen twice: as sent, and as received
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
NOTIFY_OPCODE = 4


@dataclass(frozen=True)
class Packet:
    at: float  # kernel receive time, seconds since the epoch
    tcp: bool
    source: int  # ports
    destination: int
    payload: bytes


@dataclass
class Sniffer:
    """Every IPv4 TCP segment with a payload and every UDP datagram seen on `lo`."""

    packets: list[Packet] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _marker: bytes = b""  # the payload caught_up waits for
    _marked: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Sniffer:
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._socket.bind(("lo", 0))
        self._socket.settimeout(0.2)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                frame, ancillary, _, (_, _, direction, *_) = self._socket.recvmsg(65535, 64)
            except TimeoutError:
                continue
            if direction == PACKET_OUTGOING:
                continue
            at = next((struct.unpack("=qq", data[:16]) for level, kind, data in ancillary
                       if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), None)
            packet = _parse(frame, at[0] + at[1] / 1e9 if at else time.time())
            if packet is not None and self._marker and packet.payload == self._marker:
                self._marked.set()
            elif packet is not None:
                self.packets.append(packet)

    def caught_up(self, timeout: float = 5.0) -> None:
        """Return once every packet sent before the call has been read: a marker datagram is
        sent and waited for (the packet socket reads `lo` in order)."""
        self._marker = secrets.token_bytes(16)
        self._marked.clear()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(self._marker, ("127.0.0.1", 9))  # (the discard port: nothing answers)
        if not self._marked.wait(timeout):
            raise TimeoutError(f"the packet sniffer did not see its marker within {timeout:g} s")


def _parse(frame: bytes, at: float) -> Packet | None:
    if frame[12:14] != b"\x08\x00":
        return None
    ip = frame[14:]
    header, protocol = (ip[0] & 0x0F) * 4, ip[9]
    segment = ip[header:struct.unpack("!H", ip[2:4])[0]]
    source, destination = struct.unpack("!HH", segment[:4])
    if protocol == socket.IPPROTO_TCP:
        payload = segment[(segment[12] >> 4) * 4:]
        return Packet(at, True, source, destination, payload) if payload else None
    if protocol == socket.IPPROTO_UDP:
        return Packet(at, False, source, destination, segment[8:])
    return None


def _dns_question_type(payload: bytes) -> int | None:
    """The QTYPE of a DNS message's first question (TCP: after the length prefix)."""
    at = 12
    try:
        while payload[at]:
            at += payload[at] + 1
        return int(struct.unpack("!H", payload[at + 1:at + 3])[0])
    except (IndexError, struct.error):
        return None


def steps(packets: list[Packet], ports: dict[str, int]) -> dict[str, float]:
    """The first time of each step among one add's packets."""
    http, vault, answers, coredns = ports["http"], ports["vault"], ports["answers"], ports["coredns"]
    # dnsapi also reads from Vault now and then (its watch, its reconcile): the write is the
    # first POST or PUT, and Vault's answer the first packet back after it
    write = next((p.at for p in packets if p.tcp and p.destination == vault
                  and p.payload.startswith((b"POST ", b"PUT "))), None)
    firsts = {
        "request reaches dnsapi": lambda p: p.tcp and p.destination == http,
        "dnsapi writes to Vault": lambda p: p.at == write and p.tcp and p.destination == vault,
        "Vault answers": lambda p: write is not None and p.at > write and p.tcp and p.source == vault,
        "acknowledged": lambda p: p.tcp and p.source == http,
        "NOTIFY sent": lambda p: not p.tcp and p.destination == coredns and len(p.payload) > 2
        and (p.payload[2] >> 3) & 0x0F == NOTIFY_OPCODE,
        "CoreDNS asks the SOA": lambda p: p.tcp and p.destination == answers
        and _dns_question_type(p.payload[2:]) == 6,
        "dnsapi answers the SOA": lambda p: p.tcp and p.source == answers
        and _dns_question_type(p.payload[2:]) == 6,
        "CoreDNS asks the AXFR": lambda p: p.tcp and p.destination == answers
        and _dns_question_type(p.payload[2:]) == 252,
        "dnsapi sends the AXFR": lambda p: p.tcp and p.source == answers
        and _dns_question_type(p.payload[2:]) == 252,
    }
    found = {}
    for step, matches in firsts.items():
        at = next((p.at for p in packets if matches(p)), None)
        if at is not None:
            found[step] = at
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--adds", type=int, default=40, help="adds to time (default 40)")
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        answers_port, coredns_port = free_port(), free_port()

        def push(config: dict) -> None:
            unlimited(config)
            config["answers"] = {"listen": f"127.0.0.1:{answers_port}",
                                 "notify": [f"127.0.0.1:{coredns_port}"]}

        with local_stack(tmp / "dnsapi", push) as stack:
            coredns = push_coredns(stack.zone_path, answers_port, coredns_port, tmp / "push")
            ports = {"http": stack.api_port, "vault": int(stack.vault.addr.rsplit(":", 1)[1]),
                     "answers": answers_port, "coredns": coredns_port}
            try:
                session = requests.Session()
                session.headers["Authorization"] = f"Bearer {stack.token}"
                rng = secrets.SystemRandom()
                with Sniffer() as sniffer:
                    for i in range(args.adds):
                        time.sleep(rng.uniform(0, 0.3))
                        fqdn, value = f"_acme-challenge.t{i}.dev.local", f"timeline-{i:03d}"
                        sniffer.packets.clear()
                        start = time.time()
                        session.post(f"{stack.url}/v1/records", json={"fqdn": fqdn, "value": value},
                                     timeout=30).raise_for_status()
                        while not served(coredns_port, fqdn, value):
                            time.sleep(0.002)
                        answered = time.time()
                        sniffer.caught_up()  # every packet up to `answered` read
                        found = steps([p for p in sniffer.packets if start <= p.at <= answered], ports)
                        for step, at in {**found, "answered by CoreDNS": answered}.items():
                            rows.setdefault(step, []).append((at - start) * 1000)
            finally:
                coredns.proc.stop()
    print(f"median ms from the start of the add ({args.adds} adds, 0-0.3 s apart):")
    print("| step | p50 ms | seen in |")
    print("|---|---|---|")
    for step, times in sorted(rows.items(), key=lambda item: statistics.median(item[1])):
        print(f"| {step} | {statistics.median(times):.2f} | {len(times)} of {args.adds} |")


if __name__ == "__main__":
    main()
