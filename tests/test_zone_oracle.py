"""The zone writer against BIND's named-checkzone as an oracle, over many generated operator
zones: whatever dnsapi writes must load, whatever it cannot write leaves the file as it was, and a
check that failed once is made again (issue 13, finding 2)."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from dnsapi.block import BEGIN_MARKER, END_MARKER
from dnsapi.errors import ZoneError
from dnsapi.records import Record
from dnsapi.zonefile import ZoneFile

ZONE = "dev.local"
ZONES = 300

pytestmark = pytest.mark.e2e  # named-checkzone, as a process, 600 times

def named_checkzone(path: Path) -> tuple[bool, str]:
    result = subprocess.run(["named-checkzone", ZONE, str(path)], capture_output=True, text=True,
                            check=False)
    return result.returncode == 0, result.stdout + result.stderr


HEAD = f"""$ORIGIN {ZONE}.
$TTL 60
@ IN SOA ns1 admin (
        2024010100 ; serial
        3600 600 86400 60 )
@ IN NS ns1
ns1 IN A 127.0.0.1
"""


def operator_zone(rng: random.Random) -> tuple[str, list[str]]:
    """A zone an operator might write (some of it hostile to dnsapi's block) and the challenge
    names to try in it."""
    lines, names = [HEAD], []
    for i in range(rng.randint(1, 6)):
        kind = rng.choice(["cname_at", "cname_above", "dname", "delegation", "txt", "multiline",
                           "origin", "plain"])
        if kind == "cname_at":
            lines.append(f"_acme-challenge.c{i} IN CNAME ns1\n")
            names.append(f"_acme-challenge.c{i}.{ZONE}")
        elif kind == "cname_above":
            lines.append(f"w{i} IN CNAME ns1\n")
            names.append(f"_acme-challenge.w{i}.{ZONE}")
        elif kind == "dname":
            lines.append(f"d{i} IN DNAME other.example.\n")
            names.append(f"_acme-challenge.x.d{i}.{ZONE}")
        elif kind == "delegation":
            lines.append(f"s{i} IN NS ns.other.example.\n")
            names += [f"_acme-challenge.s{i}.{ZONE}", f"_acme-challenge.x.s{i}.{ZONE}"]
        elif kind == "txt":
            lines.append(f't{i} IN TXT "a;b" "q\\"uote" ( "c" )\n')
            names.append(f"_acme-challenge.t{i}.{ZONE}")
        elif kind == "multiline":
            lines.append(f'm{i} 120 IN TXT ( "first"\n        "second" ) ; trailing comment\n')
        elif kind == "origin":
            lines.append(f"$ORIGIN sub{i}.{ZONE}.\nh IN A 127.0.0.2\n$ORIGIN {ZONE}.\n")
            names.append(f"_acme-challenge.h.sub{i}.{ZONE}")
        else:
            names.append(f"_acme-challenge.p{i}.{ZONE}")
    markers = rng.choice(["none", "end", "inside_parens", "before_records"])
    if markers == "end":
        lines.append(f"{BEGIN_MARKER}\n{END_MARKER}\n")
    elif markers == "inside_parens":  # the review's attack (a)
        lines.append(f'span IN TXT ( "x"\n{BEGIN_MARKER}\n{END_MARKER}\n"y" )\n')
    elif markers == "before_records":
        lines.insert(1, f"{BEGIN_MARKER}\n{END_MARKER}\nlast IN A 127.0.0.3\n")
    return "".join(lines), names


@pytest.mark.parametrize("seed", range(ZONES))
def test_what_dnsapi_writes_loads_and_what_it_refuses_changes_nothing(tmp_path, seed):
    rng = random.Random(seed)
    text, names = operator_zone(rng)
    path = tmp_path / f"db.{ZONE}"
    path.write_text(text)
    operator_ok, why = named_checkzone(path)
    zone = ZoneFile(path, ZONE)
    try:
        conflicts = zone.conflicts(names)
    except ZoneError:
        conflicts = None  # the operator's own text is refused: nothing may be written
    records = [Record(name, f"v{seed}x{i}" + "A" * 40, 60, 0.0)
               for i, name in enumerate(names) if conflicts is not None and name not in conflicts]
    for attempt in range(2):  # a refusal must hold the second time too
        before = path.read_bytes()
        try:
            zone.sync(records + [Record(f"_acme-challenge.ok{attempt}.{ZONE}", "B" * 43, 60, 0.0)])
        except ZoneError:
            assert path.read_bytes() == before
            continue
        loads, detail = named_checkzone(path)
        assert loads or not operator_ok, f"dnsapi wrote a zone BIND refuses:\n{detail}\n{path.read_text()}"
        written = path.read_text()
        for name in conflicts or ():
            assert f"\n{name}. " not in written


def test_a_refused_rewrite_is_refused_again(tmp_path):
    """Finding 2a: markers inside an operator's parentheses. The first write was refused (500),
    the next ones went through and CoreDNS stopped loading the zone."""
    path = tmp_path / f"db.{ZONE}"
    path.write_text(HEAD + f'span IN TXT ( "x"\n{BEGIN_MARKER}\n{END_MARKER}\n"y" )\n')
    original = path.read_bytes()
    zone = ZoneFile(path, ZONE)
    for i in range(3):
        with pytest.raises(ZoneError, match="sits inside another record"):
            zone.sync([Record(f"_acme-challenge.n{i}.{ZONE}", "C" * 43, 60, 0.0)])
        assert path.read_bytes() == original


def test_conflicting_records_already_in_vault_are_left_out_of_the_file(tmp_path):
    """The operator adds a CNAME where a challenge record already is: the zone must keep loading."""
    path = tmp_path / f"db.{ZONE}"
    path.write_text(HEAD)
    zone = ZoneFile(path, ZONE)
    records = [Record(f"_acme-challenge.a.{ZONE}", "D" * 43, 60, 0.0),
               Record(f"_acme-challenge.b.{ZONE}", "E" * 43, 60, 0.0)]
    zone.sync(records)
    text = path.read_text()
    path.write_text(text.replace("ns1 IN A 127.0.0.1\n",
                                 "ns1 IN A 127.0.0.1\n_acme-challenge.a IN CNAME ns1\n"))
    zone.sync(records + [Record(f"_acme-challenge.c.{ZONE}", "F" * 43, 60, 0.0)])
    assert named_checkzone(path)[0], path.read_text()
    written = path.read_text()
    assert f"_acme-challenge.a.{ZONE}. 60 IN TXT" not in written
    assert f"_acme-challenge.b.{ZONE}. 60 IN TXT" in written


def test_nsec3_is_refused_like_coredns_does(tmp_path):
    path = tmp_path / f"db.{ZONE}"
    path.write_text(HEAD + "@ IN NSEC3PARAM 1 0 10 aabbccdd\n")
    with pytest.raises(ZoneError, match="CoreDNS refuses to load"):
        ZoneFile(path, ZONE).check()


def test_the_serial_never_goes_back_after_an_old_buffer_is_saved(tmp_path):
    """An editor buffer opened before dnsapi's last rewrite puts the older serial back; the next
    rewrite must still go past the serial dnsapi wrote (CoreDNS may have loaded it)."""
    path = tmp_path / f"db.{ZONE}"
    path.write_text(HEAD)
    zone = ZoneFile(path, ZONE)
    old_buffer = path.read_text()
    first = zone.sync([Record(f"_acme-challenge.a.{ZONE}", "G" * 43, 60, 0.0)])
    path.write_text(old_buffer + "saved IN A 127.0.0.9\n")  # the stale buffer, saved
    second = zone.sync([Record(f"_acme-challenge.b.{ZONE}", "H" * 43, 60, 0.0)])
    assert first is not None and second is not None and second > first
