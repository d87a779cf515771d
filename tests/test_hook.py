"""hooks/dns_internal.sh under an acme.sh 3.x-like harness (tests/acmesh/harness.sh), run by dash
(`sh` on Debian) and by bash, against a real dnsapi + CoreDNS + OpenBao."""

import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .helpers import add_token, free_port

pytestmark = pytest.mark.e2e  # every test runs the hook (or a shell tool) as a process

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "hooks" / "dns_internal.sh"
HARNESS = ROOT / "tests" / "acmesh" / "harness.sh"
NAME = "_acme-challenge.hooked.dev.local"
APEX_VALUE = "X" * 43
WILDCARD_VALUE = "Y" * 43
SHELLS = ["sh", "bash"]


def hook(shell: str, action: str, fqdn: str, value: str, conf: Path, env: dict[str, str]
         ) -> subprocess.CompletedProcess[str]:
    """Run dns_internal_<action> the way acme.sh does, with only `env` (plus PATH) set."""
    return subprocess.run(
        [shell, str(HARNESS), str(HOOK), action, fqdn, value],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "ACCOUNT_CONF_PATH": str(conf), **env},
        capture_output=True, text=True, timeout=120, check=False)


def settings(stack, token: str | None = None) -> dict[str, str]:
    return {"DNSAPI_URL": stack.url, "DNSAPI_TOKEN": token or stack.token}


def test_dash_is_what_sh_means_here():
    assert Path(shutil.which("sh")).resolve().name == "dash"


@pytest.mark.parametrize("shell", SHELLS)
def test_apex_and_wildcard_add_then_remove_only_own_value(stack, tmp_path, shell):
    conf = tmp_path / "account.conf"
    for value in (APEX_VALUE, WILDCARD_VALUE):
        result = hook(shell, "add", NAME, value, conf, settings(stack))
        assert result.returncode == 0, result.stderr
        assert "the DNS servers answer it" in result.stderr
    # the add returned only after CoreDNS served it: no waiting needed here
    assert stack.query(NAME) == ("NOERROR", {APEX_VALUE, WILDCARD_VALUE})

    result = hook(shell, "rm", NAME, APEX_VALUE, conf, settings(stack))
    assert result.returncode == 0, result.stderr
    assert stack.vault_records() == {(NAME, WILDCARD_VALUE)}
    stack.wait_served(NAME, {WILDCARD_VALUE})
    assert hook(shell, "rm", NAME, WILDCARD_VALUE, conf, settings(stack)).returncode == 0
    stack.wait_served(NAME, set())


@pytest.mark.parametrize("shell", SHELLS)
def test_settings_are_saved_for_renewals(stack, tmp_path, shell):
    conf = tmp_path / "account.conf"
    assert hook(shell, "add", NAME, APEX_VALUE, conf, settings(stack)).returncode == 0
    saved = conf.read_text()
    assert f"SAVED_DNSAPI_URL='{stack.url}'" in saved
    assert f"SAVED_DNSAPI_TOKEN='{stack.token}'" in saved
    assert conf.stat().st_mode & 0o077 == 0
    # a cron renewal: no variables in the environment, only account.conf
    result = hook(shell, "add", NAME, WILDCARD_VALUE, conf, {})
    assert result.returncode == 0, result.stderr
    assert hook(shell, "rm", NAME, APEX_VALUE, conf, {}).returncode == 0
    assert stack.vault_records() == {(NAME, WILDCARD_VALUE)}


@pytest.mark.parametrize("shell", SHELLS)
def test_wrong_token_fails_clearly_and_is_not_saved(stack, tmp_path, shell):
    conf = tmp_path / "account.conf"
    result = hook(shell, "add", NAME, APEX_VALUE, conf, settings(stack, token="wrong"))
    assert result.returncode != 0
    assert "dnsapi: DNSAPI_TOKEN was refused (401): invalid token" in result.stderr
    assert not conf.exists() or "wrong" not in conf.read_text()
    assert stack.vault_records() == set()


@pytest.mark.parametrize("shell", SHELLS)
def test_server_down(tmp_path, shell):
    env = {"DNSAPI_URL": f"http://127.0.0.1:{free_port()}", "DNSAPI_TOKEN": "t"}
    result = hook(shell, "add", NAME, APEX_VALUE, tmp_path / "account.conf", env)
    assert result.returncode != 0
    assert "dnsapi: cannot reach http://127.0.0.1:" in result.stderr
    assert "(curl/wget exit code 7)" in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("fqdn, value, message", [
    ("_acme-challenge.www.example.com", APEX_VALUE, "request refused (400): fqdn "
     "'_acme-challenge.www.example.com' is not below any zone this service manages"),
    (NAME, "", "request refused (400): value is empty"),
    ("www.dev.local", APEX_VALUE, "request refused (400): fqdn must start with the label"),
])
def test_rejected_values(stack, tmp_path, shell, fqdn, value, message):
    result = hook(shell, "add", fqdn, value, tmp_path / "account.conf", settings(stack))
    assert result.returncode != 0
    assert message in result.stderr
    assert stack.vault_records() == set()


@pytest.mark.parametrize("shell", SHELLS)
def test_name_outside_the_tokens_scope_is_403(make_stack, tmp_path, shell):
    tokens = {}
    stack = make_stack(edit=lambda c: tokens.update(www=add_token(c, "www-only", ["www.dev.local"])))
    result = hook(shell, "add", NAME, APEX_VALUE, tmp_path / "account.conf",
                  settings(stack, tokens["www"]))
    assert result.returncode != 0
    assert f"dnsapi: this token may not change {NAME} (403)" in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_missing_settings(tmp_path, shell):
    result = hook(shell, "add", NAME, APEX_VALUE, tmp_path / "account.conf", {})
    assert result.returncode != 0
    assert "dnsapi: set DNSAPI_URL and DNSAPI_TOKEN" in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_propagation_timeout_is_reported(make_stack, tmp_path, shell):
    silent = free_port()

    def unreachable_dns(config):
        config["dns_servers"] = [f"127.0.0.1:{silent}"]
        config["propagation_timeout"] = "1s"
    stack = make_stack(edit=unreachable_dns)
    result = hook(shell, "add", NAME, APEX_VALUE, tmp_path / "account.conf", settings(stack))
    assert result.returncode != 0
    assert "did not answer it in time (504)" in result.stderr
    assert f"127.0.0.1:{silent} did not answer it within 1s" in result.stderr
    assert stack.vault_records() == set()  # acme.sh will not call rm: the hook took it out


def test_wget_instead_of_curl(stack, tmp_path):
    conf = tmp_path / "account.conf"
    env = {**settings(stack), "ACME_USE_WGET": "1"}
    result = hook("sh", "add", NAME, APEX_VALUE, conf, env)
    assert result.returncode == 0, result.stderr
    assert stack.vault_records() == {(NAME, APEX_VALUE)}
    bad = hook("sh", "add", NAME, APEX_VALUE, conf, {**env, "DNSAPI_TOKEN": "wrong"})
    assert bad.returncode != 0 and "(401)" in bad.stderr
    assert hook("sh", "rm", NAME, APEX_VALUE, conf, env).returncode == 0
    assert stack.vault_records() == set()


@pytest.mark.parametrize("shell", SHELLS)
def test_https_with_ca_bundle(make_stack, tls_files, tmp_path, shell):
    stack = make_stack(tls=tls_files)
    conf = tmp_path / "account.conf"
    without = hook(shell, "add", NAME, APEX_VALUE, conf, settings(stack))
    assert without.returncode != 0 and "cannot reach https://127.0.0.1" in without.stderr
    env = {**settings(stack), "DNSAPI_CA_BUNDLE": str(tls_files.ca)}
    result = hook(shell, "add", NAME, APEX_VALUE, conf, env)
    assert result.returncode == 0, result.stderr
    assert f"SAVED_DNSAPI_CA_BUNDLE='{tls_files.ca}'" in conf.read_text()
    assert hook(shell, "rm", NAME, APEX_VALUE, conf, {}).returncode == 0  # renewal: all saved
    assert stack.vault_records() == set()


@pytest.mark.parametrize("wget", [False, True])
def test_debug_2_writes_the_token_nowhere(stack, tmp_path, wget):
    """acme.sh --debug 2 makes curl trace every request header into a temp file it never removes
    (and into its log after a failed transfer) and wget -d print them: the hook's requests go
    out as at --debug 1, so the token is in no output and no file, a failed transfer included."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**settings(stack), "DEBUG": "2", "TMPDIR": str(temp), **({"ACME_USE_WGET": "1"} if wget else {})}
    outputs = [hook("sh", "add", NAME, APEX_VALUE, tmp_path / "account.conf", env),
               hook("sh", "rm", NAME, APEX_VALUE, tmp_path / "account.conf", env),
               hook("sh", "add", NAME, APEX_VALUE, tmp_path / "account.conf",
                    {**env, "DNSAPI_URL": f"http://127.0.0.1:{free_port()}"})]
    assert [result.returncode for result in outputs] == [0, 0, 1], outputs[-1].stderr
    assert "debug" in outputs[0].stderr  # (it did run at a debug level)
    secret = stack.token[:16]  # (curl's trace wraps long lines: the whole token is never on one)
    for result in outputs:
        assert secret not in result.stdout + result.stderr
    for path in [*temp.rglob("*"), *tmp_path.glob("*.header")]:
        assert secret not in path.read_text(errors="replace"), path


def test_a_500_after_storing_takes_the_value_out_and_prints_no_control_characters(tmp_path):
    """A 500 (dnsapi: stored in Vault, the zone file not writable) is a failed add acme.sh will
    not clean up: the hook deletes its value itself, as after a 504. Whatever answered, the text
    it prints carries no control characters (an escape sequence would reach the terminal)."""
    seen: list[tuple[str, dict]] = []

    class Server(BaseHTTPRequestHandler):
        def answer(self, status: int, data: bytes) -> None:
            seen.append((self.command, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # (raw control characters: no JSON encoder writes them)
            self.answer(500, b'{"error": "zone_error", "message": "stored \x1b[2Jin Vault\x07"}')

        def do_DELETE(self) -> None:
            self.answer(200, json.dumps({"fqdn": NAME, "value": APEX_VALUE, "existed": True}).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"DNSAPI_URL": f"http://127.0.0.1:{server.server_address[1]}", "DNSAPI_TOKEN": "t"}
        result = hook("sh", "add", NAME, APEX_VALUE, tmp_path / "account.conf", env)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode != 0 and "server error (500): stored [2Jin Vault" in result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert [method for method, _ in seen] == ["POST", "DELETE"]
    assert seen[1][1] == {"fqdn": NAME, "value": APEX_VALUE}


@pytest.mark.parametrize("shell", SHELLS)
def test_a_busy_server_is_asked_again_after_its_retry_after(tmp_path, shell):
    """From the last notes' list: a 429 (rate limit) or a 503 (Vault unavailable, too many
    waits, a restart) changed nothing, and failed the order at once. The hook sends the request
    again after Retry-After, up to twice, when that is at most 30 s."""
    answers = [(429, "1"), (503, "1"), (201, None)]
    seen: list[float] = []

    class Server(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(time.monotonic())
            status, retry_after = answers[min(len(seen), len(answers)) - 1]
            data = json.dumps({"error": "busy", "message": "try later"} if status != 201 else
                              {"fqdn": NAME, "value": APEX_VALUE, "ttl": 60, "created": True}).encode()
            self.send_response(status)
            if retry_after:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    def run(answer_list: list[tuple[int, str | None]]) -> subprocess.CompletedProcess[str]:
        answers[:] = answer_list
        seen.clear()
        server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            env = {"DNSAPI_URL": f"http://127.0.0.1:{server.server_address[1]}", "DNSAPI_TOKEN": "t"}
            return hook(shell, "add", NAME, APEX_VALUE, tmp_path / "account.conf", env)
        finally:
            server.shutdown()
            server.server_close()

    result = run([(429, "1"), (503, "1"), (201, None)])
    assert result.returncode == 0, result.stderr
    gaps = [later - earlier for earlier, later in zip(seen, seen[1:], strict=False)]
    assert len(seen) == 3 and min(gaps) >= 0.9  # (Retry-After waited out)
    assert "busy (429: try later); trying again in 1s" in result.stderr
    result = run([(503, "1")] * 4)  # still busy after two more tries: said, given up
    assert result.returncode != 0 and len(seen) == 3 and "server error (503): try later" in result.stderr
    for too_long in ("120", "99999999999999999999"):  # longer than an ACME client should sit
        result = run([(429, too_long)])  # (the second no shell compares: it slept for ever)
        assert result.returncode != 0 and len(seen) == 1
        assert "too many requests (429): try later" in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_what_counts_as_loopback(shell):
    hosts = {"http://127.0.0.1:8053": 0, "http://127.1.2.3/x": 0, "http://localhost:8053/": 0,
             "http://[::1]:8053": 0, "http://127.0.0.1.nip.io:8053": 1, "http://127.evil.example": 1,
             "http://10.0.0.1:8053": 1, "http://localhost.example:8053": 1, "http://[::2]:8053": 1}
    script = f". {HOOK}; for u in {' '.join(hosts)}; do _dnsapi_loopback \"$u\"; echo $?; done"
    result = subprocess.run([shell, "-c", script], capture_output=True, text=True, check=True)
    assert dict(zip(hosts, map(int, result.stdout.split()), strict=True)) == hosts


@pytest.mark.parametrize("shell", SHELLS)
def test_plain_http_beyond_loopback_is_warned_of(stack, tmp_path, shell):
    """From the last notes' list: the token crosses the network in clear over http:// to another
    host, and nothing said so. (0.0.0.0 reaches this host's loopback listener, but is not a
    loopback name.)"""
    port = stack.url.rsplit(":", 1)[1]
    for url, warned in ((stack.url, False), (f"http://localhost:{port}", False),
                        (f"http://0.0.0.0:{port}", True)):
        result = hook(shell, "add", NAME, APEX_VALUE, tmp_path / "account.conf",
                      {"DNSAPI_URL": url, "DNSAPI_TOKEN": stack.token})
        assert result.returncode == 0, result.stderr
        assert ("DNSAPI_URL is plain http://, so the token crosses the network unencrypted"
                in result.stderr) == warned
        assert hook(shell, "rm", NAME, APEX_VALUE, tmp_path / "account.conf",
                    {"DNSAPI_URL": url, "DNSAPI_TOKEN": stack.token}).returncode == 0


@pytest.mark.parametrize("wget", [False, True])
def test_a_server_that_never_answers_is_given_up_on(tmp_path, wget):
    """Accepted, never answered (a hung proxy, say): DNSAPI_TIMEOUT bounds the request, once
    (wget would try 20 times)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        env = {"DNSAPI_URL": f"http://127.0.0.1:{silent.getsockname()[1]}", "DNSAPI_TOKEN": "t",
               "DNSAPI_TIMEOUT": "2", **({"ACME_USE_WGET": "1"} if wget else {})}
        started = time.monotonic()
        result = hook("sh", "add", NAME, APEX_VALUE, tmp_path / "account.conf", env)
        took = time.monotonic() - started
    assert result.returncode != 0 and "dnsapi: cannot reach http://127.0.0.1" in result.stderr
    assert took < 30, took


@pytest.mark.parametrize("setting, value, message", [
    ("DNSAPI_TOKEN", "abc'; touch pwned; '", "holds characters no Bearer token has"),
    ("DNSAPI_TOKEN", "abc\r\nX-Injected: 1", "holds characters no Bearer token has"),
    ("DNSAPI_URL", "https://x'$(touch pwned)'", "may not hold spaces, quotes"),
    ("DNSAPI_URL", "dnsapi.dev.local:8053", "must start with https:// (or http://)"),
    ("DNSAPI_CA_BUNDLE", "/etc/ssl/my ca.pem", "may not hold spaces, quotes"),
    ("DNSAPI_TIMEOUT", "soon", "must be a whole number of seconds")])
def test_a_setting_that_would_break_account_conf_or_a_header_is_refused(stack, tmp_path, setting,
                                                                        value, message):
    """account.conf keeps the settings in single quotes and acme.sh evaluates it at renewal; the
    token goes into a header line. A setting that could break either is refused before any
    request, and saved nowhere."""
    conf = tmp_path / "account.conf"
    result = hook("sh", "add", NAME, APEX_VALUE, conf, {**settings(stack), setting: value})
    assert result.returncode != 0 and f"dnsapi: {setting} {message}" in result.stderr
    assert not conf.exists() and stack.vault_records() == set() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("script", ["hooks/dns_internal.sh", "hooks/lego-exec.sh",
                                    "tests/acmesh/harness.sh", "tests/acmesh/acme.sh"])
def test_posix_sh_without_bashisms(script):
    result = subprocess.run(["shellcheck", "--shell=sh", "--severity=style", str(ROOT / script)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
