"""Processes seen from the outside, through ``/proc``: for the worker-process tests.

Used by ``test_workers.py``, ``test_workers_hostile.py`` and
``test_stats_file.py``.  Every process a test starts carries a token in its
environment (:func:`marked_processes`); afterwards none may be left alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: The directory of the tests: workers import their handler modules from it.
TESTS_DIR = Path(__file__).resolve().parent
LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """Running (a zombie is not: it has exited, and waits only to be reaped)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def pids() -> Iterator[int]:
    """Every process id in ``/proc``."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def children_of(parent: int) -> set[int]:
    """The live child processes of ``parent``."""
    return {pid for pid in pids() if (stat := _stat(pid)) and stat[1] == parent and stat[0] != "Z"}


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def environ(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def with_token(variable: str, token: str) -> list[int]:
    """Live processes (this one excepted) whose environment has ``variable=token``."""
    needle = f"{variable}={token}".encode()
    found = []
    for pid in pids():
        if pid == os.getpid():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue  # gone, or not ours
        if needle in env.split(b"\0") and alive(pid):
            found.append(pid)
    return found


def _describe(pid: int) -> str:
    try:
        return f"{pid} {' '.join(cmdline(pid))}"
    except OSError:
        return str(pid)


@contextlib.contextmanager
def marked_processes(
    monkeypatch: pytest.MonkeyPatch, variable: str, timeout: float
) -> Iterator[str]:
    """Mark every process started inside with a fresh token; none may outlive it.

    Also puts this directory on ``PYTHONPATH`` (workers import their handler
    modules by name) and removes ``LISTEN_*``.  On exit it waits up to
    ``timeout`` seconds for the marked processes to end, then kills those
    left and fails the test, naming them.
    """
    token = uuid.uuid4().hex
    monkeypatch.setenv(variable, token)
    path = [str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    for name in LISTEN_VARS:
        monkeypatch.delenv(name, raising=False)
    yield token
    deadline = time.monotonic() + timeout
    while (left := with_token(variable, token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    described = [_describe(pid) for pid in left]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes of this test left behind: {described}"
