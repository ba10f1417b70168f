"""The ``trionet serve`` peers of run.py: command line, start-up lines, processes, drain.

``python -m trionet serve echo --bind tcp://127.0.0.1:0`` prints
``listening on tcp://127.0.0.1:PORT`` once it accepts.  With ``--workers N``
a supervisor opens the socket, starts N worker processes that accept on it
directly (no hop through the supervisor), prints ``listening on ...`` once
every worker is accepting, then ``workers: N ready (pids A B ...)``.
SIGTERM drains: the supervisor then prints the ``shutdown:`` and ``stats:``
lines (every worker's stats, summed) and a ``workers: started=...`` line,
and exits 0.

The server's processes are the supervisor and its workers: the load
generator's CPU figure (``--server-pid A,B,C``), the RSS figure and the
connection counts are taken over all of them.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import IO, Any

#: ``listening on tcp://HOST:PORT`` (HOST may be ``[v6]``).
LISTENING = re.compile(rb"^listening on tcp://(?:\[[^\]]*\]|[^\s:]+):(\d+)\s*$", re.M)
#: ``workers: N ready (pids A B ...)``.
READY = re.compile(rb"^workers: (\d+) ready \(pids ([\d ]+)\)\s*$", re.M)
#: The trusted proxies of the PROXY workloads (the load generator connects from loopback).
TRUSTED_PROXY = "127.0.0.0/8"
#: Seconds a SIGTERM'd supervisor gets to drain its workers and exit.
DRAIN_TIMEOUT = 15.0


class NotReady(Exception):
    """The command line did not say it was ready (message: what it said)."""


def command(
    argv: Sequence[str],
    host: str,
    backlog: int,
    tls: tuple[str, str] | None = None,
    proxy: bool = False,
) -> list[str]:
    """``argv`` plus a port-0 bind on ``host`` and the run's server options."""
    target = f"tcp://[{host}]:0" if ":" in host else f"tcp://{host}:0"
    cmd = [*argv, "--bind", target, "--backlog", str(backlog)]
    if tls is not None:
        cmd += ["--tls-cert", tls[0], "--tls-key", tls[1]]
    if proxy:
        cmd += ["--proxy-protocol", "--trusted-proxy", TRUSTED_PROXY]
    return cmd


def read_until(stream: IO[bytes], pattern: re.Pattern[bytes], timeout: float) -> bytes:
    """Everything the child printed, up to a line matching ``pattern`` (bounded in time)."""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    data = b""
    while not pattern.search(data):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(0.0, left))
        if not ready:
            raise NotReady(f"not ready after {timeout:.0f} s (printed {data[-200:]!r})")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise NotReady(f"stdout closed (printed {data[-200:]!r})")
        data += chunk
    return data


def wait_ready(stream: IO[bytes], workers: int, timeout: float) -> tuple[int, list[int]]:
    """The port, and the worker pids (none for one process), from the start-up lines."""
    text = read_until(stream, READY if workers else LISTENING, timeout)
    port = LISTENING.search(text)
    if port is None:
        raise NotReady(f"no 'listening on tcp://...' line (printed {text[-200:]!r})")
    pids: list[int] = []
    if workers:
        ready = READY.search(text)
        assert ready is not None
        pids = [int(p) for p in ready.group(2).split()]
        if len(pids) != workers:
            raise NotReady(f"{len(pids)} worker pids for --workers {workers}: {text!r}")
    return int(port.group(1)), pids


def read_rest(stream: IO[bytes], timeout: float = 2.0) -> str:
    """What is left on the child's stdout, up to EOF or ``timeout``."""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def _fields(line: str) -> dict[str, int]:
    """``k=v`` integer fields of one report line."""
    out: dict[str, int] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep and value.isdigit():
            out[key] = int(value)
    return out


def drain(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """SIGTERM the supervisor (or the single process), wait for its drain and report.

    Returns the exit code (None: still running after DRAIN_TIMEOUT) and the
    summed ``stats:`` and the ``workers:`` counters it printed at exit.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=DRAIN_TIMEOUT)
    rest = read_rest(proc.stdout) if proc.stdout is not None else ""
    summary: dict[str, Any] = {"returncode": proc.returncode}
    for line in rest.splitlines():
        if line.startswith("stats: "):
            summary["stats"] = _fields(line)
        elif line.startswith("workers: started="):
            summary["workers"] = _fields(line)
    return summary


def alive(pid: int) -> bool:
    """The process exists and is no zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def socket_count(pid: int) -> int:
    """Open sockets of a process (listening, channel and connections); -1 if unreadable."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return -1
    count = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
    return count
