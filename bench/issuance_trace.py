"""Where an issuance's validations wait, from every side's clock.

Runs apex + wildcard issuances with lego against OpenBao ACME on three paths, taking turns:
dnsapi with the zone file polled (coredns/Corefile), dnsapi with challenge names pushed
(coredns/Corefile.push) and BIND (lego's rfc2136 provider), as bench/compare.py does. Every side
is timestamped on this machine's clock:
  - lego's requests to OpenBao and OpenBao's answers: OpenBao's file audit log (raw), which holds
    each POST to a challenge ("validate now") and each poll of an authorization with the status
    OpenBao answered;
  - OpenBao's DNS lookups: each path's resolver address is a small UDP relay in this process that
    notes when each query came and what the server answered.
For each validation it prints the milliseconds from lego's POST to the challenge to OpenBao's
lookup, to lego's first look at the authorization (and what it saw), and to the look that saw
it valid; a validation "waited" when that took over WAITED seconds.

    python3 bench/issuance_trace.py [-n 10]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
from compare import Bind, httpreq_env, issuance_s, lego, push_coredns, vault_init

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root: tests.helpers
from tests.helpers import free_port, openbao_server, start_stack

WAITED = 2.0  # seconds from the POST to the challenge to "valid" beyond which a validation waited
AUDIT = 'audit "file" "file" {{\n  options {{\n    file_path = "{path}"\n    log_raw = "true"\n  }}\n}}\n'


@dataclass
class Lookup:
    at: float
    name: str
    rcode: str
    values: list[str]


@dataclass
class Relay:
    """A UDP relay in front of a DNS server that notes each query's time and answer."""

    upstream: int
    port: int = field(default_factory=free_port)
    lookups: list[Lookup] = field(default_factory=list)

    def start(self) -> Relay:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        while True:
            data, client = self.sock.recvfrom(65535)
            threading.Thread(target=self._relay, args=(data, client), daemon=True).start()

    def _relay(self, data: bytes, client: tuple[str, int]) -> None:
        at = time.time()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(5)
            up.sendto(data, ("127.0.0.1", self.upstream))
            try:
                answer, _ = up.recvfrom(65535)
            except TimeoutError:
                return
        self.sock.sendto(answer, client)
        try:
            message = dns.message.from_wire(answer)
        except dns.exception.DNSException:  # a relay notes what it can
            return
        if message.question and message.question[0].rdtype == dns.rdatatype.TXT:
            values = [b"".join(rd.strings).decode() for rrset in message.answer
                      if rrset.rdtype == dns.rdatatype.TXT for rd in rrset]
            self.lookups.append(Lookup(at, message.question[0].name.to_text().rstrip(".").lower(),
                                       dns.rcode.to_text(message.rcode()), values))


@dataclass
class Validation:
    path: str
    posted: float  # lego's POST to the challenge: "validate now"
    polls: list[tuple[float, str]]  # lego's looks at the authorization: (time, status answered)
    lookups: list[Lookup]  # OpenBao's DNS lookups of the name after the POST

    @property
    def valid_after(self) -> float | None:
        return next((at - self.posted for at, status in self.polls if status == "valid"), None)

    @property
    def waited(self) -> bool:
        return (self.valid_after or 0) > WAITED


def audit_entries(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def body_status(entry: dict) -> str | None:
    """The `status` of an ACME answer in a raw audit response entry."""
    raw = ((entry.get("response") or {}).get("data") or {}).get("http_raw_body")
    if not raw:
        return None
    try:
        return json.loads(base64.b64decode(raw)).get("status")
    except (ValueError, TypeError):
        try:
            return json.loads(raw).get("status")
        except (ValueError, TypeError, AttributeError):
            return None


def stamp(entry: dict) -> float:
    return dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


def validations(log: Path, mounts: dict[str, str], relays: dict[str, Relay], names: dict[str, str]
                ) -> list[Validation]:
    """Every validation in the audit log, by path (each path has its own PKI mount)."""
    responses = [e for e in audit_entries(log) if e.get("type") == "response"]
    found: list[Validation] = []
    for entry in responses:
        path = entry["request"]["path"]
        for label, mount in mounts.items():
            if not path.startswith(f"{mount}/") or "/challenge/" not in path:
                continue
            authz = path.split("/challenge/")[1].split("/")[0]
            posted = stamp(entry)
            polls = [(stamp(e), body_status(e) or "?") for e in responses
                     if e["request"]["path"].startswith(f"{mount}/")
                     and e["request"]["path"].endswith(f"/authorization/{authz}") and stamp(e) > posted]
            name = f"_acme-challenge.{names[label]}"
            # The same name is validated again in later runs: only lookups until this one is valid.
            until = next((at for at, status in polls if status == "valid"), posted + 30)
            lookups = [lk for lk in relays[label].lookups
                       if lk.name == name and posted - 0.001 <= lk.at <= until]
            found.append(Validation(label, posted, polls, lookups))
    return found


def report(found: list[Validation]) -> None:
    for label in dict.fromkeys(v.path for v in found):
        mine = [v for v in found if v.path == label]
        waited = [v for v in mine if v.waited]
        print(f"\n{label}: {len(waited)} of {len(mine)} validations waited")
        print("  ms after lego's POST to the challenge: OpenBao's lookups (answer) | lego's looks (status)")
        for v in mine:
            lookups = ", ".join(f"{(lk.at - v.posted) * 1000:.0f} ({lk.rcode} {len(lk.values)})"
                                for lk in v.lookups[:3]) or "none"
            polls = ", ".join(f"{(at - v.posted) * 1000:.0f} {status}" for at, status in v.polls[:4])
            print(f"  {'WAITED' if v.waited else 'ok    '} lookups {lookups} | looks {polls}")
        first = [v.polls[0][0] - v.posted for v in mine if v.polls]
        lookup = [v.lookups[0].at - v.posted for v in mine if v.lookups]
        if first and lookup:
            print(f"  median: OpenBao's first lookup {statistics.median(lookup) * 1000:.0f} ms, "
                  f"lego's first look {statistics.median(first) * 1000:.0f} ms after the POST")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=10, help="issuances per path (default 10)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        audit_log = tmp / "audit.log"
        answers_port, push_port = free_port(), free_port()

        def configure(config: dict) -> None:
            config["rate_limit"] = {"per_second": 0}
            config["answers"] = {"listen": f"127.0.0.1:{answers_port}", "notify": [f"127.0.0.1:{push_port}"]}

        with openbao_server(tmp / "bao", config=AUDIT.format(path=audit_log)) as vault:
            stack = start_stack(tmp / "dnsapi", vault, edit=configure, prefix="dnsapi")
            bind = Bind(tmp / "bind")
            push = push_coredns(stack.zone_path, answers_port, push_port, tmp / "push")
            try:
                relays = {"dnsapi, zone file polled": Relay(stack.dns_port).start(),
                          "dnsapi, challenge names pushed": Relay(push.port).start(),
                          "BIND": Relay(bind.port).start()}
                mounts = dict(zip(relays, ("pki", "pki_push", "pki_bind"), strict=True))
                names = {label: f"trace{i}.dev.local" for i, label in enumerate(relays)}
                directories = {label: vault_init(tmp / "dnsapi", mount, f"127.0.0.1:{relays[label].port}",
                                                 vault.root_token) for label, mount in mounts.items()}
                paths = {label: (lego(directories[label], "httpreq" if "dnsapi" in label else "rfc2136",
                                      f"127.0.0.1:{relays[label].port}", names[label]),
                                 httpreq_env(stack) if "dnsapi" in label else bind.lego_env())
                         for label in relays}
                issuance_s(paths, tmp, args.n)
                report(validations(audit_log, mounts, relays, names))
            finally:
                push.proc.stop()
                bind.proc.stop()
                stack.stop()


if __name__ == "__main__":
    main()
