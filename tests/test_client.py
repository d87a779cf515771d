"""dnsapi.client (sync and async), the client commands of the CLI, and lego's httpreq endpoints,
against a real dnsapi + CoreDNS + OpenBao."""

import os
import subprocess
import sys

import pytest
import requests

from dnsapi.client import AsyncClient, Client, ClientError, Settings

from .helpers import free_port

NAME = "_acme-challenge.client.dev.local"


def cli(stack, *args, env=None):
    environment = {**os.environ, "DNSAPI_URL": stack.url, "DNSAPI_TOKEN": stack.token, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dnsapi", *args], env=environment,
                          capture_output=True, text=True, timeout=120, check=False)


def test_sync_client_round_trip(stack):
    with Client(Settings(stack.url, stack.token)) as client:
        added = client.add(NAME, "one", ttl=30, wait=True)
        assert added["created"] is True and added["ttl"] == 30
        assert isinstance(added["served_after_ms"], int)  # it waited: the answer says how long
        assert stack.query(NAME) == ("NOERROR", {"one"})  # wait=True: already served
        assert client.add(NAME, "one")["created"] is False
        assert [(r["fqdn"], r["value"]) for r in client.list()] == [(NAME, "one")]
        assert client.list("_acme-challenge.other.dev.local") == []
        assert client.remove(NAME, "one")["existed"] is True
        assert client.remove(NAME, "one")["existed"] is False


async def test_async_client_round_trip(stack):
    async with AsyncClient(Settings(stack.url, stack.token)) as client:
        assert (await client.add(NAME, "async", wait=True))["created"] is True
        assert stack.query(NAME) == ("NOERROR", {"async"})
        assert [r["value"] for r in await client.list(NAME)] == ["async"]
        assert (await client.remove(NAME, "async"))["existed"] is True
        with pytest.raises(ClientError) as info:
            await client.add("www.dev.local", "x")
        assert info.value.status == 400 and info.value.code == "invalid_name"


async def test_clients_report_failures_in_one_line(stack):
    with pytest.raises(ClientError) as info:
        Client(Settings(stack.url, "wrong")).add(NAME, "x")
    assert (info.value.status, info.value.code) == (401, "unauthorized")
    assert str(info.value) == "unauthorized (HTTP 401): invalid token"
    down = Settings(f"http://127.0.0.1:{free_port()}", "t")
    with pytest.raises(ClientError, match="cannot reach dnsapi at .*: connection refused"):
        Client(down).list()
    with pytest.raises(ClientError, match="cannot reach dnsapi at"):
        async with AsyncClient(down) as client:
            await client.list()


def test_settings_from_env():
    with pytest.raises(ClientError, match="DNSAPI_URL is not set"):
        Settings.from_env({})
    with pytest.raises(ClientError, match="DNSAPI_TOKEN is not set"):
        Settings.from_env({"DNSAPI_URL": "http://x"})
    with pytest.raises(ClientError, match="must start with http"):
        Settings.from_env({"DNSAPI_URL": "x:1", "DNSAPI_TOKEN": "t"})
    settings = Settings.from_env({"DNSAPI_URL": "https://x/", "DNSAPI_TOKEN": "t",
                                  "DNSAPI_CA_BUNDLE": "/ca.pem"})
    assert (settings.url, settings.ca_bundle) == ("https://x", "/ca.pem")


async def test_clients_over_https_with_ca_bundle(make_stack, tls_files):
    stack = make_stack(tls=tls_files)
    with pytest.raises(ClientError, match="TLS to https://127.0.0.1:.* failed"):
        Client(Settings(stack.url, stack.token)).list()
    settings = Settings(stack.url, stack.token, ca_bundle=str(tls_files.ca))
    assert Client(settings).add(NAME, "tls")["created"] is True
    async with AsyncClient(settings) as client:
        assert [r["value"] for r in await client.list()] == ["tls"]


def test_cli_add_ls_rm(stack):
    added = cli(stack, "add", NAME, "cli-value", "--wait", "--ttl", "45")
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith(f"added: {NAME} TXT cli-value, answered by the DNS servers after ")
    assert stack.query(NAME) == ("NOERROR", {"cli-value"})
    listed = cli(stack, "ls")
    assert listed.stdout == f"{NAME} 45 cli-value\n"
    assert cli(stack, "ls", NAME).stdout == listed.stdout
    removed = cli(stack, "rm", NAME, "cli-value")
    assert removed.returncode == 0 and removed.stdout == f"removed: {NAME} TXT cli-value\n"
    assert cli(stack, "rm", NAME, "cli-value").stdout == f"not present: {NAME} TXT cli-value\n"
    dashed = cli(stack, "add", "--", NAME, "-starts-with-a-dash")  # "--" as with any command
    assert dashed.returncode == 0 and stack.vault_records() == {(NAME, "-starts-with-a-dash")}


@pytest.mark.parametrize("args, env, message", [
    (["add", "www.dev.local", "x"], {}, "dnsapi: invalid_name (HTTP 400): fqdn must start with the label"),
    (["ls"], {"DNSAPI_TOKEN": "wrong"}, "dnsapi: unauthorized (HTTP 401): invalid token"),
    (["ls"], {"DNSAPI_URL": ""}, "dnsapi: DNSAPI_URL is not set"),
    (["certbot-auth"], {}, "dnsapi: CERTBOT_DOMAIN and CERTBOT_VALIDATION must be set"),
])
def test_cli_failures_exit_non_zero_with_one_line(stack, args, env, message):
    result = cli(stack, *args, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


def test_certbot_hooks(stack):
    env = {"CERTBOT_DOMAIN": "client.dev.local", "CERTBOT_VALIDATION": "certbot-value"}
    auth = cli(stack, "certbot-auth", env=env)
    assert auth.returncode == 0, auth.stderr
    assert stack.query(NAME) == ("NOERROR", {"certbot-value"})  # waited for propagation
    assert cli(stack, "certbot-cleanup", env=env).returncode == 0
    assert stack.vault_records() == set()


def test_lego_exec_commands_through_the_wrapper(stack, tmp_path):
    wrapper = os.path.join(os.path.dirname(__file__), "..", "hooks", "lego-exec.sh")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "dnsapi").write_text(f"#!/bin/sh\nexec {sys.executable} -m dnsapi \"$@\"\n")
    (shim / "dnsapi").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "DNSAPI_URL": stack.url,
           "DNSAPI_TOKEN": stack.token, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    value = "-lego-value"  # base64url may start with "-": it must not be taken for an option
    present = subprocess.run([wrapper, "present", NAME + ".", value], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert present.returncode == 0, present.stderr
    assert stack.query(NAME) == ("NOERROR", {value})
    cleanup = subprocess.run([wrapper, "cleanup", NAME + ".", value], env=env,
                             capture_output=True, text=True, timeout=60, check=False)
    assert cleanup.returncode == 0, cleanup.stderr
    assert stack.vault_records() == set()


def test_lego_httpreq_endpoints_with_basic_auth(stack):
    body = {"fqdn": NAME + ".", "value": "httpreq-value"}
    present = requests.post(stack.url + "/present", json=body, auth=("lego", stack.token), timeout=60)
    assert present.status_code == 200, present.text
    assert isinstance(present.json()["served_after_ms"], int)  # lego's endpoint always waits
    assert stack.query(NAME) == ("NOERROR", {"httpreq-value"})
    wrong = requests.post(stack.url + "/present", json=body, auth=("lego", "nope"), timeout=60)
    assert wrong.status_code == 401
    raw_mode = requests.post(stack.url + "/present", json={"domain": "x", "token": "t", "keyAuth": "k"},
                             auth=("lego", stack.token), timeout=60)
    assert raw_mode.status_code == 400 and raw_mode.json()["error"] == "unknown_field"
    cleanup = requests.post(stack.url + "/cleanup", json=body, auth=("lego", stack.token), timeout=60)
    assert cleanup.status_code == 200 and cleanup.json()["existed"] is True
    assert stack.vault_records() == set()
