"""Fixtures, and the two kinds of test.

`unit`: in-process only, no servers or child processes besides what the test runs inside
pytest's own process (an aiohttp test server on loopback counts as in-process). All of them run
in seconds: `python3 -m pytest -m unit`.
`e2e`: the real things as processes on loopback: an OpenBao dev server per session, and per
test a CoreDNS and a `dnsapi serve` built from the shipped example files (tests/helpers.py), or
shells, pki-watch, ACME clients, named-checkzone and other tools.

A test is e2e when it lives in a `*_e2e.py` file, uses a fixture that starts a process (below),
or is marked `@pytest.mark.e2e`; every other test is marked unit here, and fails if it starts a
process all the same.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import FIGURES, Stack, TlsFiles, Vault, make_tls_files, openbao_server, start_stack

PROCESS_FIXTURES = frozenset({"openbao", "make_stack", "stack", "tls_files"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.name.endswith("_e2e.py") or fixtures & PROCESS_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep `-m unit` honest: a unit test that starts a process fails, saying so."""
    if request.node.get_closest_marker("unit") is None:
        return

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{request.node.nodeid} starts a process: mark it e2e")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr(os, "fork", refuse)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("measured")
        for name, figure in FIGURES.items():
            terminalreporter.write_line(f"{name}: {figure}")


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vault]:
    with openbao_server(tmp_path_factory.mktemp("openbao")) as vault:
        yield vault


@pytest.fixture
def make_stack(openbao: Vault, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Build and start stacks on the session's OpenBao (see helpers.start_stack for the
    arguments: edit, prefix, env, start, tls); all are stopped after the test."""
    stacks: list[Stack] = []

    def make(edit: Callable[[dict[str, Any]], None] | None = None, **options: Any) -> Stack:
        stack = start_stack(tmp_path / f"stack{len(stacks)}", openbao, edit=edit, **options)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))
