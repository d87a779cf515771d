"""The `dnsapi` command as a user runs it: dev stack with curl and dig, serve errors, hash-token."""

import contextlib
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from .helpers import free_port, wait_until

pytestmark = pytest.mark.e2e  # the command as a user runs it: a process each time


def run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "dnsapi", *args], capture_output=True, text=True,
                          timeout=60, **kwargs)


def kill_leftovers(directory: Path, ports: Iterable[int]) -> None:
    """SIGKILL whatever a dev stack that would not stop left: the servers run in sessions of their
    own, named by its directory (dnsapi), working in it (CoreDNS) or on its ports (OpenBao)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(directory) in argv or cwd.startswith(str(directory)) \
                or any(re.search(rf"127\.0\.0\.1:{port}(?!\d)", argv) for port in ports):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def test_dev_stack_answers_curl_and_dig_then_stops_cleanly(tmp_path):
    ports = {"vault": free_port(), "dns": free_port(), "api": free_port()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnsapi", "dev", "--dir", str(tmp_path / "dev"),
         "--vault-port", str(ports["vault"]), "--dns-port", str(ports["dns"]),
         "--api-port", str(ports["api"])],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("  dig "):
                break
        output = "".join(lines)
        assert "dnsapi dev stack is up" in output, output
        token = (tmp_path / "dev" / "token").read_text().strip()
        assert token not in output  # the token is only in its 0600 file
        assert (tmp_path / "dev" / "token").stat().st_mode & 0o077 == 0
        # run the two commands exactly as printed, from where the user started `dnsapi dev`
        commands = output.split("Try:\n")[1]
        curl, dig = commands.split("\n  dig ")
        result = subprocess.run(["bash", "-c", curl], cwd=tmp_path, capture_output=True,
                                text=True, timeout=30)
        assert '"created": true' in result.stdout, result.stdout + result.stderr

        def dig_answers() -> bool:
            return subprocess.run(["bash", "-c", "dig " + dig], cwd=tmp_path, capture_output=True,
                                  text=True, timeout=30).stdout.strip() == '"hello-dnsapi"'

        wait_until(dig_answers, 5, "dig to answer the new record", interval=0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            kill_leftovers(tmp_path / "dev", ports.values())
            logs = "\n".join(f"--- {log.name}:\n{log.read_text()[-2000:]}"
                             for log in sorted((tmp_path / "dev" / "logs").glob("*.log")))
            raise AssertionError(f"the dev stack did not stop within 30 s of Ctrl-C\n{logs}") from None
    assert code == 0
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "dev")], capture_output=True, text=True)
    assert leftovers.stdout == ""
    for port in ports.values():
        free = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                              capture_output=True, timeout=10)
        assert free.returncode != 0, f"port {port} still served after the dev stack stopped"


def test_dev_refuses_a_busy_port(tmp_path):
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("dev", "--dir", str(tmp_path), "--api-port", str(port),
                     "--vault-port", str(free_port()), "--dns-port", str(free_port()))
    assert result.returncode != 0
    assert f"port {port} for dnsapi is already in use" in result.stderr


def test_dev_leaves_a_directory_it_did_not_make_alone_and_takes_only_ports(tmp_path):
    """`dnsapi dev --dir /etc/coredns` would have replaced the real Corefile."""
    (tmp_path / "Corefile").write_text("operator's\n")
    ports = ["--vault-port", str(free_port()), "--dns-port", str(free_port()), "--api-port", str(free_port())]
    result = run("dev", "--dir", str(tmp_path), *ports)
    assert result.returncode != 0 and "is not a dev stack's directory" in result.stderr
    assert (tmp_path / "Corefile").read_text() == "operator's\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Corefile"]
    wrong = run("dev", "--dir", str(tmp_path / "new"), "--api-port", "70000")
    assert wrong.returncode == 2 and "'70000' is not a port (1-65535)" in wrong.stderr
    assert "Traceback" not in result.stderr + wrong.stderr


def test_serve_with_a_bad_config_names_the_key(tmp_path):
    config = tmp_path / "dnsapi.yaml"
    config.write_text("vault: {addr: 'http://127.0.0.1:1', token: t}\nzones: []\ntokens: []\n")
    result = run("serve", "-c", str(config))
    assert result.returncode != 0
    assert result.stderr.strip() == ("dnsapi: configuration error: zones: must be a non-empty "
                                     "list of {name, file}")


def test_serve_with_a_missing_zone_file(tmp_path):
    config = tmp_path / "dnsapi.yaml"
    config.write_text("vault: {addr: 'http://127.0.0.1:1', token: t}\n"
                      "zones: [{name: dev.local, file: nope}]\n"
                      f"tokens: [{{name: a, sha256: '{'0' * 64}', allow: ['*.dev.local']}}]\n")
    result = run("serve", "-c", str(config))
    assert result.returncode != 0
    assert f"zone file {tmp_path / 'nope'} for dev.local does not exist" in result.stderr


def test_serve_on_a_port_another_program_holds_says_so_in_one_line(make_stack):
    stack = make_stack(start=False)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        stack.edit_config(lambda config: config.update(listen=f"127.0.0.1:{port}"))
        env = {**os.environ, **stack.env}
        result = run("serve", "-c", str(stack.config_path), env=env)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"dnsapi: configuration error: cannot listen for the HTTP API on 127.0.0.1:{port}: "
        "Address already in use")
    assert "Traceback" not in result.stderr


def test_serve_with_an_audit_file_it_cannot_open_says_so_in_one_line(make_stack, tmp_path):
    stack = make_stack(start=False)
    audit = tmp_path / "no-such-dir" / "audit.jsonl"
    stack.edit_config(lambda config: config.update(audit={"file": str(audit)}))
    result = run("serve", "-c", str(stack.config_path), env={**os.environ, **stack.env})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"dnsapi: configuration error: audit.file: cannot open {audit} for appending: "
        "No such file or directory")


def test_hash_token():
    created = run("hash-token")
    token = created.stdout.split("token:")[1].split()[0]
    digest = created.stdout.split("sha256:")[1].split()[0]
    assert hashlib.sha256(token.encode()).hexdigest() == digest and len(token) >= 40
    hashed = run("hash-token", "--stdin", input="secret\n")
    assert hashed.stdout.strip() == hashlib.sha256(b"secret").hexdigest()
    assert run("hash-token", "--stdin", input="").returncode != 0


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"], ["dev", "--help"],
                                  ["hash-token", "--help"]])
def test_help_explains(args):
    result = run(*args)
    assert result.returncode == 0
    assert "usage: dnsapi" in result.stdout and len(result.stdout) > 200
