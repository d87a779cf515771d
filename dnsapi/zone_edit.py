"""`dnsapi zone edit`: the safe way for an operator to change a zone file dnsapi writes to.

The editor runs on a private copy without any lock, so dnsapi's writes never wait for a person;
the save goes through ZoneFile.apply_edit, which takes the writer's lock only to merge dnsapi's
current block in and replace the file (see docs/runbook.md, "Editing a zone file dnsapi writes
to").
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from .config import ZoneConfig, load_zones
from .errors import ZoneError
from .zonefile import EditConflict, ZoneFile, ZoneText


def run_program(config_path: Path, zone_name: str, apply: Path | None) -> int:
    """`dnsapi zone edit ZONE [--apply FILE]`."""
    zone = _zone_config(config_path, zone_name)
    zone_file = ZoneFile(zone.file, zone.name)
    base = zone_file.read_text()
    if apply is not None:
        try:
            _apply_edit(zone_file, _read_text(apply), base)
        except ZoneError as exc:
            raise SystemExit(f"dnsapi zone edit: {exc.message}; nothing written "
                             f"(your text is still in {apply})") from None
        return 0
    copy = _private_copy(zone.name, base)
    while True:
        _run_editor(copy)
        try:
            _apply_edit(zone_file, _read_text(copy), base)
        except ZoneError as exc:
            print(f"dnsapi zone edit: {exc.message}", file=sys.stderr)
            if isinstance(exc, EditConflict) or not _ask("re-open the editor? [y/n] "):
                raise SystemExit(f"dnsapi zone edit: nothing written; your edited copy is kept "
                                 f"in {copy}") from None
        else:
            copy.unlink()
            return 0


def _zone_config(path: Path, name: str) -> ZoneConfig:
    """The zone `name` from the config file (only its `zones` are read: see config.load_zones)."""
    zones = load_zones(path)
    wanted = name.lower().removesuffix(".")
    for zone in zones:
        if zone.name == wanted:
            return zone
    raise SystemExit(f"dnsapi zone edit: {path} has no zone {name!r} (its zones: "
                     f"{', '.join(z.name for z in zones)})")


def _apply_edit(zone_file: ZoneFile, edited: str, base: str) -> None:
    """Apply one edit and say what happened; ZoneError (the file untouched) when refused."""
    serial = zone_file.apply_edit(edited, base)
    with contextlib.suppress(ZoneError):  # damaged markers in `base`: no block of dnsapi's shown
        base_block = ZoneText.split(base).block
        if base_block and ZoneText.split(edited).block != base_block:
            print("note: your changes between dnsapi's BEGIN and END lines were dropped: dnsapi "
                  "writes those lines from Vault")
    if serial is None:
        print(f"no changes: {zone_file.path} not written")
    else:
        print(f"{zone_file.path} written, serial {serial}; CoreDNS loads it at its next reload check")


def _read_text(path: Path) -> str:
    # surrogateescape, as dnsapi reads zone files: non-UTF-8 bytes in comments survive the edit
    try:
        return path.read_bytes().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise SystemExit(f"dnsapi zone edit: cannot read {path}: {exc.strerror}") from None


def _private_copy(zone: str, text: str) -> Path:
    """A copy of the zone text only this user can read (mkstemp creates it mode 0600)."""

    fd, name = tempfile.mkstemp(prefix="dnsapi-edit-", suffix=f".{zone}.zone")
    with os.fdopen(fd, "wb") as handle:
        handle.write(text.encode("utf-8", "surrogateescape"))
    return Path(name)


def _run_editor(path: Path) -> None:
    """Open $VISUAL, $EDITOR or vi on `path` (the variable may carry arguments: `code --wait`);
    an editor that fails or exits non-zero (vim's :cq) abandons the edit."""

    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        status = subprocess.run([*shlex.split(editor), str(path)], check=False).returncode
    except OSError as exc:
        path.unlink()
        raise SystemExit(f"dnsapi zone edit: cannot run the editor {editor!r}: {exc.strerror}") from None
    if status != 0:
        path.unlink()
        raise SystemExit(f"dnsapi zone edit: the editor exited with status {status}; nothing written")


def _ask(question: str) -> bool:
    """A yes from the person at the terminal; False when stdin is not a terminal."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(question).strip().lower().startswith("y")
    except EOFError:
        return False
