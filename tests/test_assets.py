"""What an installed dnsapi hands out (`dnsapi hooks`, `dnsapi example`) is exactly the
repository's hooks/, deploy/ and coredns/ files. The wheel's copies are checked by
scripts/wheel-smoke.sh, which .ci/run runs."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from dnsapi import assets, cli

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {
    "hooks/dns_internal.sh": "hooks/dns_internal.sh", "hooks/lego-exec.sh": "hooks/lego-exec.sh",
    "examples/dnsapi.yaml": "deploy/dnsapi.yaml", "examples/Corefile": "coredns/Corefile",
    "examples/Corefile.push": "coredns/Corefile.push",
    "examples/Corefile.forward": "coredns/Corefile.forward",
    "examples/db.dev.local": "coredns/db.dev.local",
    **{f"systemd/{u}.service": f"deploy/systemd/{u}.service" for u in assets.UNITS},
    **{f"vault/{p}.hcl": f"deploy/vault/{p}.hcl" for p in assets.POLICIES},
    "vault/openbao-raft.hcl": "deploy/vault/openbao-raft.hcl",
}


def test_the_package_data_is_the_repositorys_files():
    data = {str(p.relative_to(assets.DATA)) for p in assets.DATA.rglob("*") if not p.is_dir()}
    assert data == set(SHIPPED)
    for packaged, top in SHIPPED.items():
        assert assets.path(packaged).read_bytes() == (ROOT / top).read_bytes(), packaged


@pytest.mark.parametrize(("args", "top"), [
    (["config"], "deploy/dnsapi.yaml"), (["corefile"], "coredns/Corefile"),
    (["corefile-push"], "coredns/Corefile.push"),
    (["corefile-forward"], "coredns/Corefile.forward"),
    (["zone"], "coredns/db.dev.local"), (["systemd"], "deploy/systemd/dnsapi.service"),
    (["openbao-raft"], "deploy/vault/openbao-raft.hcl"),
    (["systemd", "coredns"], "deploy/systemd/coredns.service"),
    (["policy", "dnsapi-pki-watch-policy"], "deploy/vault/dnsapi-pki-watch-policy.hcl"),
])
def test_example_prints_the_shipped_file(capsys, args, top):
    assert cli.main(["example", *args]) == 0
    assert capsys.readouterr().out == (ROOT / top).read_text()


def test_example_names_what_exists():
    with pytest.raises(SystemExit, match="units: dnsapi, dnsapi-pki-watch, coredns"):
        cli.main(["example", "systemd", "nginx"])


def test_hooks_install_where_each_client_looks(tmp_path, capsys):
    assert cli.main(["hooks", "install", "acme.sh", "--home", str(tmp_path / "acme")]) == 0
    hook = tmp_path / "acme" / "dnsapi" / "dns_internal.sh"
    assert str(hook) in capsys.readouterr().out
    assert stat.S_IMODE(hook.stat().st_mode) == 0o644
    assert hook.read_bytes() == (ROOT / "hooks/dns_internal.sh").read_bytes()
    assert cli.main(["hooks", "install", "lego-exec", "--home", str(tmp_path / "bin")]) == 0
    assert stat.S_IMODE((tmp_path / "bin" / "lego-exec.sh").stat().st_mode) == 0o755


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"dnsapi {version('dnsapi')}"
