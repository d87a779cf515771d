"""The Chinese tutorial (docs/zh/tutorial.md) is executed as written: every `bash` block, in order,
as one script, against real OpenBao, CoreDNS, dnsapi, nginx and an ACME client. The acme.sh
commands run real acme.sh 3.x when it is installed (DNSAPI_ACMESH_HOME, default ~/.acme.sh);
otherwise tests/acmesh/acme.sh stands in (lego for ACME, the same hook through the harness)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dnsapi.devstack import coredns_binary, openbao_binary

from .helpers import FIGURES, free_port

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "zh" / "tutorial.md"
TRUSTED = Path("/usr/local/share/ca-certificates/dnsapi-tutorial-root.crt")


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def acme_sh_home(home: Path) -> str:
    """Put acme.sh into `home`/.acme.sh: a copy of a real installation (without its accounts and
    certificates) if there is one, else the stand-in. Returns which."""
    target = home / ".acme.sh"
    real = Path(os.environ.get("DNSAPI_ACMESH_HOME", Path.home() / ".acme.sh"))
    if (real / "acme.sh").is_file() and "acme.sh" in (real / "acme.sh").read_text()[:4000]:
        target.mkdir()
        shutil.copy2(real / "acme.sh", target / "acme.sh")
        for sub in ("dnsapi", "deploy", "notify"):
            if (real / sub).is_dir():
                shutil.copytree(real / sub, target / sub)
        version = subprocess.run([str(target / "acme.sh"), "--version"], capture_output=True, text=True,
                                 env={**os.environ, "HOME": str(home)}, check=True).stdout.split()[-1]
        return f"real acme.sh {version}"
    (target / "dnsapi").mkdir(parents=True)
    (target / "acme.sh").symlink_to(ROOT / "tests" / "acmesh" / "acme.sh")
    return "the acme.sh stand-in (lego + the hook under the harness)"


@pytest.mark.e2e
def test_every_bash_block_of_the_chinese_tutorial_runs(tmp_path):
    assert os.geteuid() == 0, "the tutorial trusts its root CA system-wide: run the tests as root"
    blocks = bash_blocks(TUTORIAL.read_text())
    assert len(blocks) >= 12
    home, work, bin_dir = tmp_path / "home", tmp_path / "work", tmp_path / "bin"
    for d in (home, bin_dir):
        d.mkdir()
    client = acme_sh_home(home)
    (bin_dir / "dnsapi").write_text(f'#!/bin/sh\nexec {sys.executable} -m dnsapi "$@"\n')
    (bin_dir / "dnsapi").chmod(0o755)
    (bin_dir / "bao").symlink_to(openbao_binary())
    env = {**os.environ, "HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "WORK": str(work), "COREDNS": coredns_binary(),
           "VAULT_PORT": str(free_port()), "DNS_PORT": str(free_port()), "API_PORT": str(free_port()),
           "WEB_PORT": str(free_port())}
    env.pop("VAULT_TOKEN", None)
    script = "set -euo pipefail\n" + "\n".join(blocks)
    try:
        result = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=600, check=False)
    finally:
        cleanup(work)
    out = result.stdout
    assert result.returncode == 0, f"{out[-4000:]}\n{result.stderr[-4000:]}"
    assert "no changes: everything was already in place" in out
    assert "11 checks, all passed (1 could not be checked)" in out  # AppRole may not list audit devices
    assert "✓ the configuration holds no secret of its own" in out  # (pki-watch reads it too)
    assert "hello from shop.dev.local" in out  # served over TLS, trusted system-wide
    before, after = (work / "serial-before").read_text(), (work / "serial-after").read_text()
    assert before.startswith("serial=") and before != after  # renewed and reloaded
    events = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines() if line]
    revoked = [e for e in events if e["type"] == "certificate_revoked"]
    assert len(revoked) == 1 and "shop.dev.local" in revoked[0]["dns_names"]
    assert re.search(r": revoked\b", out), out[-2000:]
    FIGURES["docs/zh/tutorial.md, every bash block"] = f"ran with {client}"


def cleanup(work: Path) -> None:
    """Whatever the script left running or trusted, even when it failed half way."""
    for name in ("dnsapi", "coredns", "openbao", "nginx/nginx"):
        pid_file = work / f"{name}.pid"
        if pid_file.exists():
            subprocess.run(["kill", pid_file.read_text().strip()], capture_output=True, check=False)
    if TRUSTED.exists():
        TRUSTED.unlink()
        subprocess.run(["update-ca-certificates", "--fresh"], capture_output=True, check=False)


@pytest.mark.parametrize("doc", ["docs/architecture.md", "docs/runbook.md", "docs/zh/tutorial.md"])
def test_docs_exist_and_link_only_to_files_that_exist(doc):
    text = (ROOT / doc).read_text()
    for target in re.findall(r"\]\(((?!https?://|#)[^)#]+)", text):
        assert (ROOT / doc).parent.joinpath(target).resolve().exists(), f"{doc}: broken link {target}"


def test_every_restart_only_key_is_named_in_serve_help_and_operations():
    """A reload leaves these as they were: an operator reads which in `serve --help` and
    docs/operations.md, which must not fall behind server._RESTART_ONLY."""
    from dnsapi.cli import build_parser
    from dnsapi.server import _RESTART_ONLY

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    words = set(re.findall(r"[a-z_]+", serve.description or ""))
    operations = (ROOT / "docs" / "operations.md").read_text()
    for key in set(_RESTART_ONLY.values()):
        assert key in words, f"serve --help does not name {key}"
        assert f"`{key}`" in operations, f"docs/operations.md does not name {key}"
