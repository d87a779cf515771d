"""The audit trail of issuance (issue #17): a raft cluster whose nodes declare the file audit
device of deploy/vault/openbao-raft.hcl records an ACME issuance and dnsapi's KV write (paths in
clear, values HMAC'd); `dnsapi vault-init` keeps that device, prints the stanza on an OpenBao
without one, and enables one over the API where the server allows it (as HashiCorp Vault does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from dnsapi import config as config_module
from dnsapi.pki.vault_init import Step, VaultInit

from .cluster import raft_cluster
from .helpers import Stack, Vault, openbao_server, start_stack

NAME = "audited.dev.local"
VALUE = "audit-check-value-0123456789abcdefghijklmnop"


def vault_init(config: Path, token: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dnsapi", "vault-init", "-c", str(config)],
                          env={**os.environ, "VAULT_TOKEN": token}, capture_output=True, text=True,
                          timeout=120, check=False)


def pki_settings(config: dict[str, Any]) -> None:
    config["vault_init"] = {"pki": {"common_name": "audit test root", "root_ca_file": "root-ca.pem"}}


def audit_requests(log: Path) -> list[dict[str, Any]]:
    """The request entries of a file audit log (one JSON object per line)."""
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [entry["request"] for entry in entries if entry.get("type") == "request"]


def test_the_cluster_audit_log_records_acme_issuance_and_dnsapi_writes(tmp_path):
    with raft_cluster(tmp_path / "cluster") as cluster:
        vault = cluster.vault()
        stack = start_stack(tmp_path / "stack", vault, edit=pki_settings, prefix="dnsapi", start=False)
        try:
            init = vault_init(stack.config_path, vault.root_token)
            assert init.returncode == 0, init.stdout + init.stderr
            assert "unchanged audit device file/ (file)" in init.stdout, init.stdout
            stack.start_dnsapi()

            env = {**os.environ, "HTTPREQ_ENDPOINT": stack.url, "HTTPREQ_USERNAME": "lego",
                   "HTTPREQ_PASSWORD": stack.token}
            lego = subprocess.run(
                ["lego", "--server", f"{vault.addr}/v1/pki/acme/directory", "--accept-tos",
                 "--email", "admin@dev.local", "--path", str(tmp_path / "lego"), "--key-type", "ec256",
                 "--dns", "httpreq", "--dns.disable-cp", "--dns.resolvers",
                 f"127.0.0.1:{stack.dns_port}", "-d", NAME, "run"],
                env=env, capture_output=True, text=True, timeout=300, check=False)
            assert lego.returncode == 0, lego.stderr[-3000:]
            assert stack.add(f"_acme-challenge.{NAME}", VALUE).status_code == 201
        finally:
            stack.stop()

        requests = audit_requests(cluster.audit_log)
        paths = {(r["operation"], r["path"]) for r in requests}
        assert ("update", "pki/acme/new-order") in paths
        assert any(op == "update" and path.startswith("pki/acme/order/") and path.endswith("/finalize")
                   for op, path in paths)
        assert ("update", "secret/data/dnsapi/zones/dev.local") in paths  # dnsapi's check-and-set
        assert VALUE not in cluster.audit_log.read_text()  # values are HMAC'd


def audit_step(vault: Vault, stack: Stack, audit_file: Path | None = None) -> Step:
    """vault-init's audit step alone, with an admin token, on the stack's config."""
    changes: list[Step] = []
    VaultInit(config_module.load(stack.config_path), vault.client, report=changes.append,
              audit_file=str(audit_file) if audit_file else None).audit()
    [step] = changes
    return step


def test_vault_init_prints_the_stanza_where_openbao_refuses_api_audit_devices(openbao, make_stack):
    step = audit_step(openbao, make_stack(start=False))
    assert step.status == "warning" and "add this to every node's server config" in step.what
    assert 'file_path = "/var/log/openbao/audit.log"' in step.what
    assert openbao.client.sys.list_enabled_audit_devices()["data"] == {}


def test_vault_init_enables_a_file_audit_device_where_the_api_allows_it(tmp_path):
    """OpenBao with unsafe_allow_api_audit_creation answers as HashiCorp Vault does."""
    log = tmp_path / "api-audit.log"
    with openbao_server(tmp_path / "openbao", config="unsafe_allow_api_audit_creation = true\n") as vault:
        stack = start_stack(tmp_path / "stack", vault, start=False)
        try:
            step = audit_step(vault, stack, log)
            assert (step.status, step.what, step.detail) == (
                "created", "audit device file/ (file)", f"writing to {log}")
            assert audit_step(vault, stack, log).status == "unchanged"
            assert "sys/audit" in log.read_text()  # the second run's listing is on record
        finally:
            stack.stop()
