"""The files dnsapi ships beside its code: the ACME client hooks, the example config, Corefile
and zone, the systemd units, the Vault policies and one raft node's OpenBao config.

In the repository they live where users look for them (hooks/, deploy/, coredns/);
dnsapi/data/ holds links to them, which the build turns into copies inside the wheel, so an
installed dnsapi hands out exactly the repository's files (`dnsapi hooks`, `dnsapi example`).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

from .files import write_file

DATA = Path(str(files("dnsapi") / "data"))

HOOKS = {"acme.sh": "hooks/dns_internal.sh", "lego-exec": "hooks/lego-exec.sh"}
EXAMPLES = {"config": "examples/dnsapi.yaml", "corefile": "examples/Corefile",
            "corefile-push": "examples/Corefile.push", "corefile-forward": "examples/Corefile.forward",
            "zone": "examples/db.dev.local", "openbao-raft": "vault/openbao-raft.hcl"}
UNITS = ("dnsapi", "dnsapi-pki-watch", "coredns")
POLICIES = ("dnsapi-policy", "dnsapi-pki-watch-policy")


def path(relative: str) -> Path:
    return DATA / relative


def example(kind: str, name: str | None = None) -> str:
    """The text of a shipped example: config, corefile, corefile-push, corefile-forward, zone,
    openbao-raft, systemd [UNIT], policy [NAME]."""
    if kind == "systemd":
        unit = name or "dnsapi"
        if unit not in UNITS:
            raise ValueError(f"no unit {unit!r}; units: {', '.join(UNITS)}")
        return path(f"systemd/{unit}.service").read_text()
    if kind == "policy":
        policy = name or "dnsapi-policy"
        if policy not in POLICIES:
            raise ValueError(f"no policy {policy!r}; policies: {', '.join(POLICIES)}")
        return path(f"vault/{policy}.hcl").read_text()
    if name is not None:
        raise ValueError(f"`{kind}` takes no name")
    return path(EXAMPLES[kind]).read_text()


def acme_home() -> Path:
    """Where acme.sh keeps its files: $LE_WORKING_DIR, else ~/.acme.sh (acme.sh's own default)."""
    return Path(os.environ.get("LE_WORKING_DIR") or Path.home() / ".acme.sh")


def install_hook(hook: str, home: Path) -> Path:
    """Copy a hook where its client finds it; returns the path written. acme.sh sources
    `<home>/dnsapi/dns_internal.sh` (mode 0644); lego runs EXEC_PATH, so lego-exec.sh goes to
    `<home>/lego-exec.sh` with mode 0755."""
    source = path(HOOKS[hook])
    target = home / "dnsapi" / source.name if hook == "acme.sh" else home / source.name
    mode = 0o644 if hook == "acme.sh" else 0o755
    target.parent.mkdir(parents=True, exist_ok=True)
    write_file(target, source.read_bytes(), mode)
    return target
