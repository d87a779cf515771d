"""`dnsapi zone edit`: operator edits made while dnsapi rewrites the zone file are never lost,
invalid ones are refused with the file untouched, and the serial always moves forward."""

import contextlib
import datetime as dt
import io
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dnsapi import cli
from dnsapi.block import BEGIN_MARKER, END_MARKER, block_records
from dnsapi.errors import ZoneError
from dnsapi.records import Record
from dnsapi.zonefile import EditConflict, ZoneFile, ZoneText, parse_zone, soa_serial

from .helpers import lock_waiters, wait_until

ZONE = "dev.local"
DAY = dt.date(2026, 11, 28)
OPERATOR_ZONE = """\
; the operator's zone
$TTL 300
@   IN SOA ns1.dev.local. hostmaster.dev.local. (
        2026112800 ; serial
        3600 600 86400 60 )
    IN NS ns1
ns1 IN A 127.0.0.1
www IN A 127.0.0.2
"""


def rec(value: str, name: str = "www") -> Record:
    return Record(f"_acme-challenge.{name}.{ZONE}", value, 60, 0.0)


def block_of(text: str) -> dict:
    return block_records(ZoneText.split(text).block, ZONE)


def added(text: str, line: str) -> str:
    """`text` with `line` added at the end, after dnsapi's block."""
    return text + line + "\n"


@pytest.fixture
def zone(tmp_path) -> ZoneFile:
    """dnsapi's view of a zone file that already holds a block."""
    (tmp_path / "zones").mkdir()
    path = tmp_path / "zones" / "db.dev.local"
    path.write_text(OPERATOR_ZONE)
    path.chmod(0o640)
    writer = ZoneFile(path, ZONE)
    writer.sync([rec("v1")], today=DAY)
    return writer


@pytest.fixture
def config(tmp_path, zone):
    path = tmp_path / "dnsapi.yaml"
    path.write_text("vault: {addr: 'http://127.0.0.1:1', token: t}\n"
                    f"zones: [{{name: {ZONE}, file: zones/db.dev.local}}]\n"
                    f"tokens: [{{name: a, sha256: '{'0' * 64}', allow: ['*.{ZONE}']}}]\n")
    return path


def apply(config, text: str, tmp_path) -> None:
    edited = tmp_path / "edited.zone"
    edited.write_text(text)
    assert cli.main(["zone", "edit", "-c", str(config), "--apply", str(edited), ZONE]) == 0


def editor_script(tmp_path, body: str):
    """An $EDITOR: a Python script run with the copy's path as sys.argv[1]."""
    script = tmp_path / "editor.py"
    script.write_text(f"#!{sys.executable}\nimport sys, subprocess\nfrom pathlib import Path\n"
                      f"copy = Path(sys.argv[1])\n{body}\n")
    script.chmod(0o755)
    return script


# -- the race of the review finding ----------------------------------------------------------

def rewrite_until(path: Path, stop, result) -> None:
    """dnsapi's writer, in a process of its own as in production: rewrite the block with a new
    record set until `stop` is set, then report the last set written, the number of rewrites and
    of failed ones."""
    zone = ZoneFile(path, ZONE)
    last, rewrites, failures = {}, 0, 0
    while not stop.is_set():
        records = [rec(f"v{rewrites}"), rec(f"k{rewrites % 5}", "api")]
        try:
            zone.sync(records)
        except ZoneError:
            failures += 1
            continue
        last, rewrites = {r.key: 60 for r in records}, rewrites + 1
    result.put({"last": last, "rewrites": rewrites, "failures": failures})


@contextlib.contextmanager
def dnsapi_rewriting(path: Path):
    """Run rewrite_until in another process while the body runs; yields a dict that holds its
    report afterwards."""
    context = multiprocessing.get_context("fork")
    stop, result = context.Event(), context.Queue()
    process = context.Process(target=rewrite_until, args=(path, stop, result))
    process.start()
    report: dict = {}
    try:
        yield report
    finally:
        stop.set()
        report.update(result.get(timeout=60))
        process.join(10)


@pytest.mark.e2e  # dnsapi's writer runs in a process of its own, for seconds
def test_edits_through_the_safe_path_are_never_lost_while_dnsapi_rewrites(zone):
    """Issue 13, item 11: one operator save in 300 was overwritten by a rewrite. Here dnsapi
    rewrites non-stop (a different record set each time) while 300 edits go through the path
    `dnsapi zone edit` uses; every edit and dnsapi's last records must end up in the file."""
    editor = ZoneFile(zone.path, ZONE)
    with dnsapi_rewriting(zone.path) as dnsapi:
        for i in range(300):
            base = editor.read_text()
            serial = editor.apply_edit(added(base, f"edit-{i} IN A 127.0.0.1"), base)
            assert serial is not None and serial > soa_serial(base)
    text = zone.path.read_text()
    assert [i for i in range(300) if f"\nedit-{i} IN A 127.0.0.1\n" not in text] == []
    assert dnsapi["failures"] == 0
    assert dnsapi["rewrites"] > 10  # dnsapi really rewrote the file while the edits went on
    assert block_of(text) == dnsapi["last"]
    parse_zone(text, ZONE)


def pause_at_rename(monkeypatch, during):
    """Run `during()` once, in the instant between dnsapi's last check and its rename."""
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        if not calls:
            calls.append(dst)
            during()
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_a_safe_edit_in_the_window_before_the_rename_waits_and_is_kept(zone, monkeypatch):
    base = zone.path.read_text()
    editor = ZoneFile(zone.path, ZONE)
    edit = threading.Thread(target=lambda: editor.apply_edit(added(base, "late IN A 127.0.0.9"), base))

    def start_edit() -> None:
        edit.start()
        wait_until(lambda: lock_waiters(zone.path.parent) or not edit.is_alive(), 10,
                   "the edit to wait for dnsapi's lock")
        assert edit.is_alive()  # waiting for dnsapi's lock, not writing

    pause_at_rename(monkeypatch, start_edit)
    zone.sync([rec("v1"), rec("v2")], today=DAY)
    edit.join()
    text = zone.path.read_text()
    assert "\nlate IN A 127.0.0.9\n" in text
    assert set(block_of(text)) == {rec("v1").key, rec("v2").key}


def test_a_plain_save_in_the_window_before_the_rename_is_lost(zone, monkeypatch):
    """The finding itself, made deterministic: the risk left for editors that bypass
    `dnsapi zone edit` (see docs/runbook.md), and what the race test above would catch."""
    base = zone.path.read_text()
    pause_at_rename(monkeypatch, lambda: zone.path.write_text(added(base, "late IN A 127.0.0.9")))
    zone.sync([rec("v1"), rec("v2")], today=DAY)
    assert "late IN A" not in zone.path.read_text()
    zone.sync([rec("v3")], today=DAY)  # the next rewrite does not bring it back either
    assert "late IN A" not in zone.path.read_text()


# -- what an edit writes ---------------------------------------------------------------------

def test_apply_keeps_the_edit_and_the_block_and_bumps_the_serial(zone, config, tmp_path, capsys):
    before = zone.path.read_text()
    inode = zone.path.stat().st_ino
    apply(config, added(before, "new IN A 127.0.0.5"), tmp_path)
    text = zone.path.read_text()
    assert text.replace(f"{soa_serial(text)} ; serial", f"{soa_serial(before)} ; serial") \
        == added(before, "new IN A 127.0.0.5")
    assert soa_serial(text) > soa_serial(before)
    assert zone.path.stat().st_ino != inode and zone.path.stat().st_mode & 0o777 == 0o640
    assert f"written, serial {soa_serial(text)}" in capsys.readouterr().out
    assert not list(zone.path.parent.glob(".*.tmp"))


def test_the_serial_ends_above_the_one_typed_in_the_edit(zone):
    base = zone.path.read_text()
    typed = soa_serial(base) + 1000
    serial = zone.apply_edit(base.replace(str(soa_serial(base)), str(typed)), base, today=DAY)
    assert serial == typed + 1 == soa_serial(zone.path.read_text())


def test_the_block_is_taken_from_the_file_as_it_is_now(zone):
    """dnsapi rewrote the block while the operator was editing: its records win, the edit stays."""
    base = zone.path.read_text()
    zone.sync([rec("v2")], today=DAY)
    rewritten = soa_serial(zone.path.read_text())
    serial = zone.apply_edit(added(base, "new IN A 127.0.0.5"), base, today=DAY)
    text = zone.path.read_text()
    assert set(block_of(text)) == {rec("v2").key} and "\nnew IN A 127.0.0.5\n" in text
    assert serial > rewritten


def test_dnsapi_revalidates_the_edited_text_on_its_next_rewrite(zone):
    """The running service (its own ZoneFile) sees the operator's new text: a CNAME added at a
    challenge name keeps that name's records out of the file from then on."""
    base = zone.path.read_text()
    edited = added(base, f"_acme-challenge.api.{ZONE}. IN CNAME www")
    ZoneFile(zone.path, ZONE).apply_edit(edited, base, today=DAY)
    assert zone.conflicts([f"_acme-challenge.api.{ZONE}"])
    zone.sync([rec("v1"), rec("x", "api")], today=DAY)
    text = zone.path.read_text()
    assert set(block_of(text)) == {rec("v1").key} and "IN CNAME www" in text


def test_an_edit_that_changes_nothing_writes_nothing(zone, config, tmp_path, capsys):
    before = zone.path.stat()
    apply(config, zone.path.read_text(), tmp_path)
    assert "no changes" in capsys.readouterr().out
    inside = zone.path.read_text().replace(END_MARKER, f"evil.{ZONE}. IN A 10.0.0.1\n{END_MARKER}")
    apply(config, inside, tmp_path)  # lines between the markers are dnsapi's: dropped
    out = capsys.readouterr().out
    assert "no changes" in out and "dropped" in out
    after = zone.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize("damage, why", [
    (lambda t: t.replace("www IN A 127.0.0.2", "www IN A not-an-address"), "does not parse"),
    (lambda t: t.replace("60 )", "60"), "does not parse"),
    (lambda t: t + BEGIN_MARKER + "\n", "markers are damaged"),
    (lambda t: t.replace(END_MARKER + "\n", ""), "markers are damaged"),
    (lambda t: ZoneText.split(t).join("") + "new IN A 127.0.0.5\n", "removed dnsapi's BEGIN and END"),
    (lambda t: t + "    IN A 127.0.0.5\n", "no owner name"),
    (lambda t: t.replace("; BEGIN", "www IN TXT ( \"x\"\n; BEGIN").replace(END_MARKER, END_MARKER + "\n)"),
     "sits inside another record"),
])
def test_an_invalid_edit_is_refused_and_the_file_untouched(zone, config, tmp_path, damage, why):
    before = zone.path.read_bytes()
    edited = tmp_path / "edited.zone"
    edited.write_text(damage(zone.path.read_text()))
    with pytest.raises(SystemExit) as info:
        cli.main(["zone", "edit", "-c", str(config), "--apply", str(edited), ZONE])
    assert why in str(info.value) and f"nothing written (your text is still in {edited})" in str(info.value)
    assert zone.path.read_bytes() == before


def test_an_edit_of_a_text_someone_else_changed_meanwhile_is_refused(zone):
    base = zone.path.read_text()
    zone.path.write_text(added(base, "theirs IN A 127.0.0.6"))
    with pytest.raises(EditConflict, match="changed by someone else"):
        zone.apply_edit(added(base, "mine IN A 127.0.0.7"), base, today=DAY)
    assert zone.path.read_text() == added(base, "theirs IN A 127.0.0.6")


def test_a_broken_file_can_be_repaired_through_zone_edit(zone):
    good = zone.path.read_text()
    broken = good.replace("60 )", "60")
    zone.path.write_text(broken)
    serial = zone.apply_edit(good, broken, today=DAY)
    assert serial > soa_serial(good) and parse_zone(zone.path.read_text(), ZONE)


# -- the editor --------------------------------------------------------------------------------

@pytest.mark.e2e  # runs an editor process
def test_the_editor_runs_without_the_lock_and_its_save_is_applied(zone, config, tmp_path):
    script = editor_script(tmp_path, f"""\
free = subprocess.run(["flock", "-n", "{zone.path.parent}", "true"]).returncode == 0
assert free, "the zone directory is locked while the editor is open"
copy.write_text(copy.read_text() + "edited IN A 127.0.0.8\\n")""")
    result = subprocess.run([sys.executable, "-m", "dnsapi", "zone", "edit", "-c", str(config), ZONE],
                            env={**os.environ, "EDITOR": str(script), "VISUAL": ""},
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "\nedited IN A 127.0.0.8\n" in zone.path.read_text()


@pytest.mark.e2e  # runs an editor process
def test_a_refused_edit_keeps_the_copy_when_nobody_can_answer(zone, config, tmp_path):
    before = zone.path.read_bytes()
    script = editor_script(tmp_path, 'copy.write_text(copy.read_text() + "bad IN A 1.2.3\\n")')
    result = subprocess.run([sys.executable, "-m", "dnsapi", "zone", "edit", "-c", str(config), ZONE],
                            env={**os.environ, "EDITOR": str(script)}, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "does not parse" in result.stderr
    kept = result.stderr.split("your edited copy is kept in ")[1].strip()
    assert "bad IN A 1.2.3" in Path(kept).read_text() and os.stat(kept).st_mode & 0o077 == 0
    os.unlink(kept)
    assert zone.path.read_bytes() == before


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.e2e  # runs an editor process
def test_at_a_terminal_a_refused_edit_reopens_the_editor(zone, config, tmp_path, monkeypatch):
    """First save: a broken record; the person answers y; second save: fixed."""
    script = editor_script(tmp_path, f"""\
first = not Path("{tmp_path}/opened").exists()
Path("{tmp_path}/opened").touch()
text = copy.read_text()
copy.write_text(text + "fix IN A 1.2.3\\n" if first else text.replace("1.2.3\\n", "1.2.3.4\\n"))""")
    monkeypatch.setenv("EDITOR", str(script))
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    assert cli.main(["zone", "edit", "-c", str(config), ZONE]) == 0
    assert "\nfix IN A 1.2.3.4\n" in zone.path.read_text()


@pytest.mark.e2e  # runs an editor process
def test_an_editor_that_fails_abandons_the_edit(zone, config, tmp_path, monkeypatch):
    before = zone.path.read_bytes()
    monkeypatch.setenv("EDITOR", str(editor_script(tmp_path, "sys.exit(1)")))
    monkeypatch.delenv("VISUAL", raising=False)
    with pytest.raises(SystemExit, match="the editor exited with status 1; nothing written"):
        cli.main(["zone", "edit", "-c", str(config), ZONE])
    assert zone.path.read_bytes() == before


def test_unknown_zone_and_help(config, capsys):
    with pytest.raises(SystemExit, match="has no zone 'nope.local'"):
        cli.main(["zone", "edit", "-c", str(config), "nope.local"])
    with pytest.raises(SystemExit) as info:
        cli.main(["zone", "edit", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: dnsapi zone edit" in out and "--apply FILE" in out and "lock" in out


def test_sync_waits_for_the_lock_rather_than_failing(zone):
    """The lock is held only from read to rename: a writer meeting it waits, then writes."""
    import fcntl
    fd = os.open(zone.path.parent, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    done = []
    writer = threading.Thread(target=lambda: done.append(zone.sync([rec("v9")], today=DAY)))
    writer.start()
    wait_until(lambda: lock_waiters(zone.path.parent) or done, 10, "the writer to meet the lock")
    assert not done
    os.close(fd)
    writer.join()
    assert done[0] is not None and set(block_of(zone.path.read_text())) == {rec("v9").key}
