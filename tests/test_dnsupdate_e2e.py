"""The RFC 2136 front door through real clients (nsupdate, knsupdate), cert-manager's exact wire
behaviour replayed with dnspython, and hostile messages; real OpenBao and CoreDNS behind it."""

from __future__ import annotations

import base64
import concurrent.futures
import secrets
import signal
import socket
import subprocess
import time
from unittest import mock

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from dnsapi.dnsupdate import algorithm

from .helpers import free_port, wait_until

ZONE = "dev.local"
NAME = "_acme-challenge.www.dev.local"
VALUE = "U" * 43


def secret() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def door(make_stack):
    """A stack with the RFC 2136 front door on: keys `acme` (hmac-sha256, *.dev.local), `cm`
    (hmac-md5, cert-manager's default), `narrow` (hmac-sha512, www.dev.local only)."""
    port = free_port()
    keys = {"acme": ("hmac-sha256", secret()), "cm": ("hmac-md5", secret()),
            "narrow": ("hmac-sha512", secret())}
    allow = {"acme": ["*.dev.local"], "cm": ["*.dev.local"], "narrow": ["www.dev.local"]}

    def edit(config):
        config["audit"] = {"file": "audit.jsonl"}
        config["dns_update"] = {"listen": f"127.0.0.1:{port}", "keys": [
            {"name": name, "algorithm": algorithm, "secret": value, "allow": allow[name]}
            for name, (algorithm, value) in keys.items()]}
    stack = make_stack(edit=edit)
    stack.update_port, stack.keys = port, keys
    return stack


def nsupdate(stack, script: str, *args: str, key: str = "acme") -> subprocess.CompletedProcess:
    algorithm, value = stack.keys[key]
    return subprocess.run(["nsupdate", "-y", f"{algorithm}:{key}:{value}", *args],
                          input=f"server 127.0.0.1 {stack.update_port}\nzone {ZONE}\n{script}send\n",
                          capture_output=True, text=True, timeout=30, check=False)


def signed_update(stack, key: str = "acme", zone: str = ZONE) -> dns.update.UpdateMessage:
    name, value = stack.keys[key]
    ring = dns.tsigkeyring.from_text({key: (algorithm(name), value)})
    return dns.update.UpdateMessage(zone, keyring=ring, keyname=key, keyalgorithm=algorithm(name))


def send(stack, message, tcp: bool = False) -> dns.message.Message:
    query = dns.query.tcp if tcp else dns.query.udp
    return query(message, "127.0.0.1", port=stack.update_port, timeout=5)


def test_nsupdate_adds_over_udp_and_removes_over_tcp_with_a_key_file(door, tmp_path):
    result = nsupdate(door, f"update add {NAME} 60 TXT {VALUE}\n")
    assert result.returncode == 0, result.stderr
    door.wait_served(NAME, {VALUE})
    assert door.vault_records() == {(NAME, VALUE)}
    algorithm, value = door.keys["acme"]
    key_file = tmp_path / "acme.key"
    key_file.write_text(f'key "acme" {{ algorithm {algorithm}; secret "{value}"; }};\n')
    result = subprocess.run(["nsupdate", "-v", "-k", str(key_file)], capture_output=True, text=True,
                            input=f"server 127.0.0.1 {door.update_port}\nzone {ZONE}\n"
                                  f"update delete {NAME} TXT {VALUE}\nsend\n", timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    door.wait_served(NAME, set())
    assert door.vault_records() == set()


def test_a_prerequisite_that_fails_changes_nothing(door):
    assert nsupdate(door, f"update add {NAME} 60 TXT {VALUE}\n").returncode == 0
    zone_file = door.zone_path.read_bytes()
    result = nsupdate(door, f"prereq nxrrset {NAME} TXT\nupdate add {NAME} 60 TXT {'V' * 43}\n")
    assert result.returncode != 0 and "YXRRSET" in result.stdout + result.stderr
    assert door.vault_records() == {(NAME, VALUE)} and door.zone_path.read_bytes() == zone_file
    result = nsupdate(door, f"prereq yxrrset {NAME} TXT\nupdate add {NAME} 60 TXT {'V' * 43}\n")
    assert result.returncode == 0, result.stderr
    assert door.vault_records() == {(NAME, VALUE), (NAME, "V" * 43)}


def test_nsupdate_without_a_zone_finds_it_by_a_signed_soa_query(door):
    algorithm, value = door.keys["acme"]
    result = subprocess.run(["nsupdate", "-y", f"{algorithm}:acme:{value}"], capture_output=True,
                            text=True, input=f"server 127.0.0.1 {door.update_port}\n"
                                             f"update add {NAME} 60 TXT {VALUE}\nsend\n",
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    door.wait_served(NAME, {VALUE})


def test_knsupdate_adds_and_deletes(door):
    """As docs/rfc2136.md runs it: the key in a file, not on the command line."""
    algorithm, value = door.keys["acme"]
    key_file = door.dir / "acme.knot.key"
    key_file.write_text(f"{algorithm}:acme:{value}\n")
    script = (f"server 127.0.0.1 {door.update_port}\nzone {ZONE}.\n"
              f"update add {NAME}. 60 TXT {VALUE}\nsend\n")
    result = subprocess.run(["knsupdate", "-k", str(key_file)], input=script,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    door.wait_served(NAME, {VALUE})
    script = f"server 127.0.0.1 {door.update_port}\nzone {ZONE}.\nupdate delete {NAME}. TXT\nsend\n"
    result = subprocess.run(["knsupdate", "-y", f"{algorithm}:acme:{value}"], input=script,
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    door.wait_served(NAME, set())


def test_a_client_whose_clock_is_off_is_told_so_by_a_signed_badtime(door):
    """knsupdate on a clock 1000 s behind (libfaketime; BIND's nsupdate hangs under it): the
    BADTIME answer is signed (RFC 8945 §5.2.3), so knsupdate verifies it and says its time is
    out of the window, where an unsigned one made it report a TSIG that failed to verify."""
    algorithm, value = door.keys["acme"]
    script = (f"server 127.0.0.1 {door.update_port}\nzone {ZONE}.\n"
              f"update add {NAME}. 60 TXT {VALUE}\nsend\n")
    result = subprocess.run(["faketime", "-f", "-1000s", "knsupdate", "-y", f"{algorithm}:acme:{value}"],
                            input=script, capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "BADTIME" in output, output
    assert "TSIG out of time window" in output, output
    assert door.vault_records() == set()


def test_cert_manager_wire_behaviour(door):
    """cert-manager's rfc2136 solver (pkg/issuer/acme/dns/rfc2136): hmac-md5 by default, UDP,
    one Insert of one RR per challenge, Remove of that one RR on cleanup; several challenges for
    one name (apex + wildcard) may be in flight at once. (cert-manager itself needs a cluster.)"""
    values = [f"{i:02d}" + "C" * 41 for i in range(4)]

    def present(value: str) -> int:
        update = signed_update(door, "cm")
        update.add(dns.name.from_text(NAME), 120, "TXT", value)  # Insert
        return send(door, update).rcode()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(present, values)) == [dns.rcode.NOERROR] * 4
    door.wait_served(NAME, set(values))
    cleanup = signed_update(door, "cm")
    cleanup.delete(dns.name.from_text(NAME), "TXT", values[0])  # Remove one RR
    assert send(door, cleanup).rcode() == dns.rcode.NOERROR
    door.wait_served(NAME, set(values[1:]))


def test_records_of_one_update_apply_in_order(door):
    """RFC 2136 §3.4.2: add, delete the TXT set, add again leaves the last value only (one
    message; a parser that merged records of one type would apply both adds first)."""
    other = "O" * 43
    update = signed_update(door)
    update.add(dns.name.from_text(NAME), 60, "TXT", other)
    update.delete(dns.name.from_text(NAME), "TXT")
    update.add(dns.name.from_text(NAME), 60, "TXT", VALUE)
    assert send(door, update).rcode() == dns.rcode.NOERROR
    door.wait_served(NAME, {VALUE})
    assert door.vault_records() == {(NAME, VALUE)}


def test_zone_discovery_as_lego_and_certbot_ask(door):
    # lego: RD=1 over UDP, walks up the labels until the SOA is in the answer
    below = dns.message.make_query(NAME + ".", dns.rdatatype.SOA)
    answer = send(door, below)
    assert answer.rcode() == dns.rcode.NOERROR and not answer.answer and answer.authority
    apex = send(door, dns.message.make_query(ZONE + ".", dns.rdatatype.SOA))
    assert apex.answer[0].rdtype == dns.rdatatype.SOA and apex.flags & dns.flags.AA
    # certbot: TCP, RD=0, needs AA and the SOA
    query = dns.message.make_query(ZONE + ".", dns.rdatatype.SOA)
    query.flags &= ~dns.flags.RD
    answer = send(door, query, tcp=True)
    assert answer.flags & dns.flags.AA and answer.answer[0].rdtype == dns.rdatatype.SOA
    ns = send(door, dns.message.make_query(ZONE + ".", dns.rdatatype.NS))
    assert ns.answer and ns.answer[0].rdtype == dns.rdatatype.NS
    for other in (dns.message.make_query("example.com.", dns.rdatatype.SOA),
                  dns.message.make_query(ZONE + ".", dns.rdatatype.A)):
        assert send(door, other).rcode() == dns.rcode.REFUSED


def hostile(door) -> list[tuple[str, object, int]]:
    """(what, wire bytes or a message, the rcode it must get)."""
    name = dns.name.from_text(NAME)
    cases: list[tuple[str, object, int]] = []

    def update(key="acme", zone=ZONE):
        return signed_update(door, key, zone)

    outside = update("narrow")
    outside.add(dns.name.from_text("_acme-challenge.api.dev.local"), 60, "TXT", VALUE)
    cases.append(("name outside the key's allow", outside, dns.rcode.REFUSED))
    for rdtype, rdata in (("A", "10.0.0.1"), ("CNAME", "evil.example."), ("NS", "ns.evil.example.")):
        injected = update()
        injected.add(name, 60, rdtype, rdata)
        cases.append((f"{rdtype} record", injected, dns.rcode.REFUSED))
    for target in ("www.dev.local", "dev.local", "x._acme-challenge.www.dev.local"):
        wrong = update()
        wrong.add(dns.name.from_text(target), 60, "TXT", VALUE)
        cases.append((f"TXT at {target}", wrong, dns.rcode.REFUSED))
    bad_value = update()
    bad_value.add(name, 60, "TXT", '"x\\" ; evil IN A 10.0.0.1"')
    cases.append(("a value that is not base64url", bad_value, dns.rcode.REFUSED))
    other_zone = update(zone="example.com")
    other_zone.add(dns.name.from_text("_acme-challenge.example.com"), 60, "TXT", VALUE)
    cases.append(("a zone not served", other_zone, dns.rcode.NOTAUTH))
    chaos = dns.update.UpdateMessage(ZONE, rdclass="CH", keyring=signed_update(door).keyring,
                                     keyname="acme", keyalgorithm=algorithm(door.keys["acme"][0]))
    chaos.add(name, 60, "TXT", VALUE)
    cases.append(("the zone in class CH", chaos, dns.rcode.NOTAUTH))
    odd_prerequisite = update()
    odd_prerequisite.prerequisite.append(dns.rrset.from_rdata(name, 0, dns.rdata.from_text(
        "CH", "TXT", VALUE)))  # dnspython's own present() keeps to the zone's class
    odd_prerequisite.add(name, 60, "TXT", VALUE)
    cases.append(("a prerequisite in class CH", odd_prerequisite, dns.rcode.FORMERR))
    # RFC 2136 §2.4, §2.5: a prerequisite's or a deletion's TTL is 0; no deletion of one record
    # of type ANY (the review's finding: these were applied)
    # (not an RRset's deletion with a TTL: dnspython neither writes nor reads one)
    for what, odd in (("a deletion of one record with a TTL", ("delete", "TXT", VALUE)),
                      ("a prerequisite with a TTL", ("present", "TXT", VALUE))):
        message = update()
        getattr(message, odd[0])(name, *odd[1:])
        (message.prerequisite if odd[0] == "present" else message.update)[0].ttl = 60
        if odd[0] == "present":
            message.add(name, 60, "TXT", VALUE)
        cases.append((what, message, dns.rcode.FORMERR))
    none_any = update()
    none_any.update.append(dns.rrset.RRset(name, dns.rdataclass.NONE, dns.rdatatype.ANY))
    cases.append(("a deletion of one record of type ANY", none_any, dns.rcode.FORMERR))
    unsigned = dns.update.UpdateMessage(ZONE)
    unsigned.add(name, 60, "TXT", VALUE)
    cases.append(("unsigned", unsigned, dns.rcode.NOTAUTH))
    wrong_key = dns.update.UpdateMessage(ZONE, keyring=dns.tsigkeyring.from_text(
        {"intruder": ("hmac-sha256", secret())}), keyname="intruder", keyalgorithm="hmac-sha256")
    wrong_key.add(name, 60, "TXT", VALUE)
    cases.append(("unknown key", wrong_key, dns.rcode.NOTAUTH))
    forged = dns.update.UpdateMessage(ZONE, keyring=dns.tsigkeyring.from_text(
        {"acme": ("hmac-sha256", secret())}), keyname="acme", keyalgorithm="hmac-sha256")
    forged.add(name, 60, "TXT", VALUE)
    cases.append(("wrong secret", forged, dns.rcode.NOTAUTH))
    md5_for_sha = dns.update.UpdateMessage(ZONE, keyring=dns.tsigkeyring.from_text(
        {"acme": (dns.tsig.HMAC_MD5, door.keys["acme"][1])}), keyname="acme",
        keyalgorithm=dns.tsig.HMAC_MD5)
    md5_for_sha.add(name, 60, "TXT", VALUE)
    cases.append(("the key's secret with another algorithm", md5_for_sha, dns.rcode.NOTAUTH))
    good = update()
    good.add(name, 60, "TXT", VALUE)
    with mock.patch("time.time", return_value=time.time() - 3600):
        replayed = good.to_wire()
    cases.append(("signed an hour ago (replay)", replayed, dns.rcode.NOTAUTH))
    whole = update()
    whole.add(name, 60, "TXT", VALUE)
    wire = whole.to_wire()
    cases.append(("truncated", wire[: len(wire) // 2], dns.rcode.FORMERR))
    cases.append(("trailing garbage", wire + b"\x00" * 40, dns.rcode.FORMERR))
    return cases


def test_hostile_messages_are_refused_with_the_right_rcode_and_change_nothing(door):
    zone_file = door.zone_path.read_bytes()
    for what, message, rcode in hostile(door):
        wire = message if isinstance(message, bytes) else message.to_wire()
        reply = dns.query.udp(dns.message.make_query(ZONE + ".", "SOA"), "127.0.0.1",
                              port=door.update_port, timeout=5)  # the server still answers
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(wire, ("127.0.0.1", door.update_port))
            data, _ = sock.recvfrom(65535)
        got = dns.rcode.from_flags(int.from_bytes(data[2:4], "big"), 0)
        assert got == rcode, f"{what}: {dns.rcode.to_text(got)}, wanted {dns.rcode.to_text(rcode)}"
        assert door.zone_path.read_bytes() == zone_file, what
        assert door.vault_records() == set(), what
        assert reply.rcode() == dns.rcode.NOERROR
    oversized = b"\x00" * 70000
    with socket.create_connection(("127.0.0.1", door.update_port), timeout=5) as tcp:
        tcp.sendall(b"\xff\xff" + oversized[:65535])
        assert tcp.recv(2) in (b"", b"\x00\x0c")  # closed, or a FORMERR header's length
    assert door.zone_path.read_bytes() == zone_file


def test_updates_are_audited_and_counted(door):
    assert nsupdate(door, f"update add {NAME} 60 TXT {VALUE}\n").returncode == 0
    nsupdate(door, "update add www.dev.local 60 A 10.0.0.1\n")
    audit = (door.dir / "audit.jsonl").read_text()
    assert '"token": "key:acme"' in audit and '"result": "applied"' in audit
    assert '"result": "refused"' in audit and door.keys["acme"][1] not in audit
    metrics = door.call("GET", "/metrics").text
    assert 'dnsapi_dns_requests_total{opcode="UPDATE",rcode="NOERROR"}' in metrics
    assert 'dnsapi_dns_requests_total{opcode="UPDATE",rcode="REFUSED"}' in metrics


def test_a_reload_reaches_the_doors_ttl_bounds_and_rate_limit(door):
    """The review's finding: the door kept the TTL bounds and rate limit it started with, while a
    SIGHUP changed them for the HTTP API and logged them applied."""
    def add(value: str, ttl: int) -> int:
        update = signed_update(door)
        update.add(f"{NAME}.", ttl, "TXT", value)
        return send(door, update).rcode()

    assert add("A" * 43, 60) == dns.rcode.NOERROR
    door.edit_config(lambda c: c.update(ttl={"min": 120, "default": 300},
                                        rate_limit={"per_second": 0.01, "burst": 2}))
    log = door.dir / "dnsapi.log"
    reloads = log.read_text().count("reload: applied")
    door.dnsapi.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: log.read_text().count("reload: applied") > reloads, what="the reload")
    assert add("B" * 43, 60) == dns.rcode.REFUSED  # below the new minimum
    assert add("C" * 43, 300) == dns.rcode.NOERROR
    assert add("D" * 43, 300) == dns.rcode.REFUSED  # the new burst of 2 is spent
    assert door.vault_records() == {(NAME, "A" * 43), (NAME, "C" * 43)}
    audit = (door.dir / "audit.jsonl").read_text()
    assert "key acme is over its rate limit" in audit


def test_idle_tcp_connections_are_capped_and_the_door_keeps_answering(door):
    """A slow-client flood on the DNS port must not take descriptors from everything else."""
    from dnsapi.dns_listener import MAX_TCP
    held = [socket.create_connection(("127.0.0.1", door.update_port), timeout=5) for _ in range(MAX_TCP + 20)]
    try:
        assert nsupdate(door, f"update add {NAME} 60 TXT {VALUE}\n").returncode == 0  # UDP still works
        metrics = door.call("GET", "/metrics").text
        assert 'dnsapi_http_connections_refused_total{reason="dns_tcp"}' in metrics
    finally:
        for sock in held:
            sock.close()

    def tcp_answers() -> bool:  # again, once the held connections are gone
        try:
            return send(door, dns.message.make_query(ZONE + ".", dns.rdatatype.SOA), tcp=True).rcode() \
                == dns.rcode.NOERROR
        except (OSError, EOFError, dns.exception.DNSException):
            return False
    wait_until(tcp_answers, what="a TCP answer after the flood")


def test_a_remove_leaves_a_kept_line_alone_whatever_else_its_update_holds(door):
    """A line this node keeps in Vault but does not serve (here a TTL it refuses; another node
    or a hand edit wrote it) is not its to delete: a remove of its name and value leaves it,
    alone or in one UPDATE with an add (before, the add's write dropped it)."""
    assert nsupdate(door, f"update add {NAME} 60 TXT {'V' * 43}\n").returncode == 0
    kept = f"{NAME} {VALUE} -1 1700000000.000"
    door.put_record_line(kept)
    for script in (f"update delete {NAME} TXT {VALUE}\n",
                   f"update delete {NAME} TXT {VALUE}\nupdate add {NAME} 60 TXT {'W' * 43}\n"):
        result = nsupdate(door, script)
        assert result.returncode == 0, result.stderr
        assert kept in door.vault_secret("zones/dev.local")["records"].splitlines()
    assert {(NAME, "V" * 43), (NAME, "W" * 43)} <= door.vault_records()
