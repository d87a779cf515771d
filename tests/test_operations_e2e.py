"""Running dnsapi as an operator would: systemd units, the notify protocol over a real socket,
SIGHUP reload, SIGTERM with requests in flight, Prometheus metrics, JSON logs with request ids,
and the OpenAPI document checked against the live service by schemathesis."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from dnsapi.api import create_app
from dnsapi.config import load
from dnsapi.devstack import coredns_binary
from dnsapi.openapi import document
from dnsapi.pki.vault_init import audit_stanza
from dnsapi.zonefile import ZoneFile

from .helpers import (
    FIGURES,
    Receiver,
    add_token,
    free_port,
    metric_total,
    openbao_server,
    start_stack,
    wait_until,
    write_watch_config,
)

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy" / "systemd"
VALUE = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"


def installed_units(tmp_path: Path) -> list[Path]:
    """The shipped units with the binaries pointed at this machine's (systemd-analyze verify
    checks that ExecStart exists)."""
    paths = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text().replace("/usr/local/bin/dnsapi", shutil.which("dnsapi") or "dnsapi")
        text = text.replace("/usr/local/bin/coredns", str(coredns_binary()))
        (tmp_path / unit.name).write_text(text)
        paths.append(tmp_path / unit.name)
    return paths


def test_systemd_units_verify_and_are_hardened(tmp_path):
    units = installed_units(tmp_path)
    assert [u.name for u in units] == ["coredns.service", "dnsapi-pki-watch.service", "dnsapi.service"]
    result = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    for unit in units:
        lines = set(unit.read_text().splitlines())
        assert {"ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes"} <= lines
        assert {key for key in ("LimitNOFILE", "TasksMax", "MemoryMax")
                if any(line.startswith(key + "=") for line in lines)} == {"LimitNOFILE", "TasksMax",
                                                                          "MemoryMax"}
        if unit.name.startswith("dnsapi"):
            assert {"Type=notify", "CapabilityBoundingSet=", "ExecReload=/bin/kill -HUP $MAINPID"} <= lines
            # pki-watch runs as a user of its own, without the service's environment file
            user, environment = {"dnsapi.service": ("dnsapi", "/etc/dnsapi/environment"),
                                 "dnsapi-pki-watch.service": ("dnsapi-pki-watch",
                                                              "/etc/dnsapi/pki-watch.environment")}[unit.name]
            assert {f"User={user}", f"Group={user}", f"EnvironmentFile=-{environment}"} <= lines
            assert [line for line in lines if line.startswith("EnvironmentFile=")] == [
                f"EnvironmentFile=-{environment}"]
            writable = [line for line in lines if line.startswith("ReadWritePaths=")]
            expected = ["ReadWritePaths=/var/lib/dnsapi/zones"] if unit.name == "dnsapi.service" else []
            assert writable == expected
        score = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                               capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        FIGURES[f"systemd-analyze security exposure, {unit.name}"] = score.split(":")[-1].strip()


class NotifySocket:
    """What systemd gives a Type=notify service: a datagram socket in $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)

    def expect(self, field: str) -> list[str]:
        """Read messages until one carries `field`; returns that message's fields."""
        while True:
            message = self.sock.recv(4096).decode().split("\n")
            if field in message:
                return message


def test_notify_reload_and_sigterm_finishing_in_flight_writes(make_stack, tmp_path):
    stack = make_stack(start=False)
    notify = NotifySocket(tmp_path / "notify.sock")
    stack.start_dnsapi(env={"NOTIFY_SOCKET": str(notify.path)})
    ready = notify.expect("READY=1")
    assert any(f.startswith("STATUS=serving http://127.0.0.1:") for f in ready)

    # SIGHUP: a new token works at once, the removed one no longer does; nothing restarts.
    config = yaml.safe_load(stack.config_path.read_text())
    old_token = stack.token
    stack.token = add_token(config, "rotated", ["*.dev.local"])
    del config["tokens"][0]
    stack.config_path.write_text(yaml.safe_dump(config))
    assert stack.call("GET", "/v1/records", token=stack.token).status_code == 401
    pid = stack.dnsapi.popen.pid
    os.kill(pid, signal.SIGHUP)
    reloading = notify.expect("RELOADING=1")
    assert any(f.startswith("MONOTONIC_USEC=") for f in reloading)
    notify.expect("READY=1")
    assert stack.call("GET", "/v1/records").status_code == 200
    assert stack.call("GET", "/v1/records", token=old_token).status_code == 401
    valid = stack.config_path.read_text()
    stack.config_path.write_text("zones: [")  # a broken file changes nothing
    os.kill(pid, signal.SIGHUP)
    notify.expect("READY=1")
    assert stack.call("GET", "/v1/records").status_code == 200
    assert "keeping the running configuration" in (stack.dir / "dnsapi.log").read_text()
    relabelled = yaml.safe_load(valid)  # challenge_label needs a restart: the running one stays
    relabelled["challenge_label"] = "_other"
    stack.config_path.write_text(yaml.safe_dump(relabelled))
    os.kill(pid, signal.SIGHUP)
    notify.expect("READY=1")
    assert "challenge_label changed; restart dnsapi to apply" in (stack.dir / "dnsapi.log").read_text()
    assert stack.add("_acme-challenge.label.dev.local", "L" * 43).status_code == 201
    assert stack.remove("_acme-challenge.label.dev.local", "L" * 43).status_code == 200
    unopenable = yaml.safe_load(valid)  # an audit file that cannot be opened: READY, nothing changes
    unopenable["audit"] = {"file": str(tmp_path / "no-such-dir" / "audit.jsonl")}
    unopenable["tokens"] = []
    unopenable["open_on_loopback"] = True
    stack.config_path.write_text(yaml.safe_dump(unopenable))
    os.kill(pid, signal.SIGHUP)
    notify.expect("READY=1")
    assert stack.call("GET", "/v1/records", token="").status_code == 401  # the tokens stayed
    assert "audit.file: cannot open" in (stack.dir / "dnsapi.log").read_text()
    stack.config_path.write_text(valid)

    # SIGTERM while 16 adds are in their handlers (stored, waiting until CoreDNS serves them):
    # every one is answered before the process exits.
    burst = Burst(stack, "term", 16, wait=True)
    wait_until(lambda: len(stack.vault_records()) >= 16, 5, "the 16 adds stored", interval=0.005)
    os.kill(pid, signal.SIGTERM)
    notify.expect("STOPPING=1")
    assert stack.dnsapi.popen.wait(30) == 0
    assert burst.statuses() == {i: 201 for i in range(16)}
    assert all(f"_acme-challenge.term{i}.dev.local." in stack.zone_path.read_text() for i in range(16))

    # SIGTERM in the middle of a burst: whatever was acknowledged is in Vault and in the zone
    # file; the rest was refused at the door (connection closed), never answered with an error.
    stack.start_dnsapi(env={"NOTIFY_SOCKET": str(notify.path)})
    notify.expect("READY=1")
    burst = Burst(stack, "cut", 48, wait=False)
    # the first acknowledgement, not a fixed pause: the burst is then under way
    wait_until(lambda: 201 in burst.results.values(), 10, "an add of the burst acknowledged", interval=0.001)
    os.kill(stack.dnsapi.popen.pid, signal.SIGTERM)
    assert stack.dnsapi.popen.wait(30) == 0
    answered = burst.statuses()
    acknowledged = {f"_acme-challenge.cut{i}.dev.local" for i, status in answered.items() if status == 201}
    turned_away = {f"_acme-challenge.cut{i}.dev.local" for i, status in answered.items() if status == 503}
    assert set(answered.values()) <= {201, 503, None} and acknowledged  # 503: shutting_down
    stored = {fqdn for fqdn, _ in stack.vault_records() if ".cut" in fqdn}
    assert acknowledged <= stored and not turned_away & stored
    zone = stack.zone_path.read_text()
    assert all(f"{fqdn}." in zone for fqdn in stored)
    refused = len(answered) - len(acknowledged)
    FIGURES["SIGTERM mid-burst, 48 adds"] = f"{len(acknowledged)} acknowledged+stored, {refused} refused"


class Burst:
    """`count` concurrent adds, released together; `statuses()` waits for them (None: no answer)."""

    def __init__(self, stack, label: str, count: int, wait: bool) -> None:
        self.results: dict[int, int | None] = {}
        gate = threading.Barrier(count + 1)

        def add(i: int) -> None:
            gate.wait()
            try:
                response = stack.add(f"_acme-challenge.{label}{i}.dev.local", VALUE, wait=wait)
                self.results[i] = response.status_code
            except requests.ConnectionError:
                self.results[i] = None

        self.threads = [threading.Thread(target=add, args=(i,)) for i in range(count)]
        for thread in self.threads:
            thread.start()
        gate.wait()

    def statuses(self) -> dict[int, int | None]:
        for thread in self.threads:
            thread.join(30)
        return self.results


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_requests_vault_zone_and_propagation(stack):
    for i in range(3):
        assert stack.add(f"_acme-challenge.m{i}.dev.local", VALUE, wait=(i == 0)).status_code == 201
    assert stack.remove("_acme-challenge.m1.dev.local", VALUE).status_code == 200
    assert stack.add("bad name", VALUE).status_code == 400
    response = requests.get(stack.url + "/metrics", timeout=5)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    values = metric_values(response.text)

    def value(name: str, **labels: str) -> float:
        return values[(name, tuple(sorted(labels.items())))]

    assert value("dnsapi_http_requests_total", route="/v1/records", method="POST", status="201") == 3
    assert value("dnsapi_http_requests_total", route="/v1/records", method="DELETE", status="200") == 1
    assert value("dnsapi_http_requests_total", route="/v1/records", method="POST", status="400") == 1
    assert value("dnsapi_http_request_duration_seconds_count", route="/v1/records", method="POST") == 4
    assert value("dnsapi_vault_operation_duration_seconds_count", operation="write_zone") >= 3
    assert ("dnsapi_vault_errors_total", (("operation", "write_zone"),)) not in values
    assert value("dnsapi_zone_rewrites_total", zone="dev.local") >= 3
    assert value("dnsapi_zone_records", zone="dev.local") == 2 == len(stack.vault_records())
    assert value("dnsapi_zone_serial", zone="dev.local") == ZoneFile(stack.zone_path, "dev.local").check()
    assert value("dnsapi_propagation_wait_seconds_count") == 1
    assert 0 < value("dnsapi_propagation_wait_seconds_sum") < 5
    assert value("dnsapi_batch_changes_count") >= 3


def test_request_ids_in_responses_json_logs_and_audit(make_stack):
    stack = make_stack(start=False)
    stack.start_dnsapi("--log-format", "json")
    response = stack.call("POST", "/v1/records", headers={"X-Request-Id": "ticket-42.a"},
                          json={"fqdn": "_acme-challenge.rid.dev.local", "value": VALUE})
    assert response.status_code == 201 and response.headers["X-Request-Id"] == "ticket-42.a"
    made = stack.call("GET", "/healthz", headers={"X-Request-Id": "has spaces; and more"})
    generated = made.headers["X-Request-Id"]
    assert len(generated) == 16 and all(c in "0123456789abcdef" for c in generated)

    def tagged() -> list[dict]:
        lines = [line for line in (stack.dir / "dnsapi.log").read_text().splitlines()
                 if line.startswith("{")]
        entries = [json.loads(line) for line in lines]  # every JSON line parses
        return [e for e in entries if e.get("request_id") == "ticket-42.a"]

    def access_line() -> bool:  # aiohttp logs the access line once the response is sent
        return any(e.get("logger") == "aiohttp.access" and "POST /v1/records" in e["message"]
                   for e in tagged())

    wait_until(access_line, 5, "the access log line of the request")
    assert any(e.get("action") == "add" and e.get("result") == "created" for e in tagged())  # audit line
    assert stack.token not in (stack.dir / "dnsapi.log").read_text()


def test_openapi_describes_every_route(stack):
    config = load(stack.config_path)
    spec = document(config)
    app = create_app(config)
    routes = {(r.resource.canonical, r.method.lower()) for r in app.router.routes()
              if r.method != "HEAD"}
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert routes == described
    served = requests.get(stack.url + "/openapi.json", timeout=5).json()
    assert served == json.loads(json.dumps(spec))


def test_schemathesis_finds_nothing_against_the_live_service(make_stack, tmp_path):
    def no_rate_limit(config):  # a fuzzer is a flood of refused requests from one address
        config["rate_limit"] = {"per_second": 0}
        config["refusals"] = {"per_second": 0}

    stack = make_stack(no_rate_limit)
    result = subprocess.run(
        ["schemathesis", "run", f"{stack.url}/openapi.json", "--checks", "all", "--max-examples", "40",
         "-H", f"Authorization: Bearer {stack.token}", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "No issues found" in result.stdout
    assert stack.token not in result.stdout


def test_pki_watch_notifies_ready_reloading_and_stopping(openbao, tmp_path):
    """pki-watch under Type=notify: READY once the first check is done, STOPPING on SIGTERM."""
    receiver = Receiver()
    receiver.start()
    config = write_watch_config(tmp_path, openbao.addr, openbao.root_token, ["pki-none"],
                                [{"type": "webhook", "url": receiver.url}])
    notify = NotifySocket(tmp_path / "notify.sock")
    proc = subprocess.Popen(["dnsapi", "pki-watch", "-c", str(config)], env={
        **os.environ, "NOTIFY_SOCKET": str(notify.path)}, stderr=subprocess.PIPE, text=True)
    try:
        notify.expect("READY=1")
        proc.send_signal(signal.SIGHUP)
        notify.expect("RELOADING=1")
        notify.expect("READY=1")
        proc.send_signal(signal.SIGTERM)
        notify.expect("STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        receiver.stop()


def run_check(stack, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["dnsapi", "check", "-c", str(stack.config_path), "--corefile",
                           str(stack.dir / "Corefile"), *extra], capture_output=True, text=True,
                          timeout=60, check=False)


def test_check_passes_on_a_working_stack(tmp_path):
    audit_log = tmp_path / "openbao-audit.log"
    with openbao_server(tmp_path / "openbao", config=audit_stanza(str(audit_log))) as vault:
        stack = start_stack(tmp_path / "stack", vault)
        try:
            result = run_check(stack)
        finally:
            stack.stop()
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert lines[-1] == "10 checks, all passed" and not any("✗" in line for line in lines)
    assert any(f"127.0.0.1:{stack.dns_port} answers the SOA of dev.local authoritatively" in line
               for line in lines)
    assert "✓ Vault has an audit device: file/ (file)" in result.stdout
    assert "sys/audit" in audit_log.read_text()  # check's own listing is on record


def test_check_reports_a_missing_audit_device(stack):
    """The session's dev server has none: ✗ with how to add one, and nothing else fails."""
    result = run_check(stack)
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if "✗" in line]
    assert failed == ["  ✗ Vault has an audit device (nothing records issuance requests or "
                      "dnsapi's writes)"], result.stdout
    assert "`dnsapi vault-init` prints the stanza" in result.stdout


def test_check_says_when_the_config_holds_secrets_pki_watch_can_read(make_stack):
    """pki-watch reads dnsapi.yaml too (its unit joins the group dnsapi): a secret written into
    the file is readable by both, and `dnsapi check` says which, once pki-watch is configured."""
    def literal(config):
        config["pki_watch"] = {"token_file": "vault-token"}
        config["dns_update"] = {"listen": f"127.0.0.1:{free_port()}", "keys": [
            {"name": "acme", "secret": base64.b64encode(b"s" * 32).decode(), "allow": ["*.dev.local"]}]}
    stack = make_stack(edit=literal)
    result = run_check(stack)
    assert ("✗ the configuration holds secrets pki-watch can read too: dns_update.keys[0].secret"
            in result.stdout), result.stdout
    stack.edit_config(lambda config: config.pop("dns_update"))
    assert "✓ the configuration holds no secret of its own" in run_check(stack).stdout


def test_check_names_each_problem_with_a_fix(make_stack, openbao):
    def broken(config):
        config["dns_servers"].append("127.0.0.1:9")  # nothing answers there

    stack = make_stack(broken, start=False)
    weak = openbao.client.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
    (stack.dir / "vault-token").write_text(weak + "\n")
    corefile = stack.dir / "Corefile"
    corefile.write_text(corefile.read_text().replace("reload 250ms", "reload 0"))
    result = run_check(stack)
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if "✗" in line]
    assert len(failed) == 4, result.stdout
    assert "secret/ is a KV version 2 mount" in failed[0]  # a token without access cannot see it
    assert "may read and write secret/data/" in failed[1]
    assert "reload 0" in failed[2]
    assert "127.0.0.1:9 answers the SOA of dev.local" in failed[3]
    assert result.stdout.count("fix:") == 4 and weak not in result.stdout
    # Listing audit devices needs sudo: said so, neither ✓ nor ✗.
    assert "  ? Vault has an audit device: not checked, dnsapi's token may not read sys/audit" \
        in result.stdout
    assert result.stdout.splitlines()[-1].endswith("4 failed (1 could not be checked)")

    stack.zone_path.write_text("not a zone\n")
    (stack.dir / "vault-token").write_text("wrong-token\n")
    result = run_check(stack)
    assert result.returncode == 1
    assert "✗ Vault accepts dnsapi's token file" in result.stdout
    assert "✗ zone file" in result.stdout

    stack.edit_config(lambda config: config.update(vaults=config.pop("vault")))  # a misspelt key
    result = run_check(stack)
    assert result.returncode == 1 and "✗ configuration" in result.stdout and "vault" in result.stdout


def test_sigterm_does_not_wait_for_a_body_that_never_comes(stack):
    """aiohttp stops reading connections once shutdown begins: a request whose body is still on
    its way is answered 503 at once instead of holding the shutdown for a minute."""
    slow = socket.create_connection(("127.0.0.1", stack.api_port))
    slow.sendall(f"POST /v1/records HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {stack.token}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"fqdn\": ".encode())
    wait_until(lambda: metric_total(requests.get(stack.url + "/metrics", timeout=5).text,
                                    "dnsapi_http_requests_in_progress") == 2,
               what="the handler waiting for the rest of the body (and the scrape asking)")
    start = time.monotonic()
    stack.dnsapi.popen.send_signal(signal.SIGTERM)
    assert stack.dnsapi.popen.wait(10) == 0
    assert time.monotonic() - start < 5
    slow.settimeout(5)
    answer = slow.recv(65536).decode()
    assert answer.startswith("HTTP/1.1 503") and '"shutting_down"' in answer
    assert stack.vault_records() == set()
