"""Start, watch and stop the real ``trionet serve`` process (or supervisor) the soak drives.

One process serves three binds: TLS (``--bind`` with ``--tls-cert``), plain
TCP (``--plain-bind``) and a load balancer's port (``--proxy-bind``: a PROXY
header from ``--trusted-proxy`` sources, then plain).  The server runs
``sys.executable -m trionet serve benchmarks.soak.handler:handle`` in its
own session (so Ctrl-C in the terminal reaches the harness, not the server,
and :meth:`ServerProcess.kill` can take down a supervisor's workers with
it).  Its stdout goes to a file the harness polls for the ``listening on``
lines; its stderr (the log) to another, scanned at the end.  Each start
writes its own stats file (``stats-NAME-GEN.json``), so the final snapshot
of a server that was restarted stays readable.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BINDS", "HANDLER", "ProcessReading", "Reading", "ServerProcess", "make_certs"]

#: The handler the soak serves, as ``trionet serve`` takes it.
HANDLER = "benchmarks.soak.handler:handle"
#: The repository root: the server runs there, so ``benchmarks.soak`` imports.
ROOT = Path(__file__).resolve().parents[2]

_LISTENING = re.compile(r"^listening on tcp://127\.0\.0\.1:(\d+)\s*$", re.MULTILINE)
#: The binds, in the order ``trionet serve`` prints their ``listening on`` lines
#: (``--bind``, ``--plain-bind``, ``--proxy-bind``), with their flags.
BINDS = (("tls", "--bind"), ("plain", "--plain-bind"), ("proxy", "--proxy-bind"))


def make_certs(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (cert chain, key, CA) paths."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key, ca_pem = directory / "server.pem", directory / "server.key", directory / "ca.pem"
    cert.private_key_pem.write_to_path(str(key))
    with open(chain, "wb") as out:
        for blob in cert.cert_chain_pems:
            out.write(blob.bytes())
    ca.cert_pem.write_to_path(str(ca_pem))
    return chain, key, ca_pem


@dataclass
class ProcessReading:
    """One server process's resource use and (for a server, not a supervisor) its counters."""

    pid: int
    fds: int
    tasks: int
    rss: int
    connections: int
    stats: dict[str, int] | None


@dataclass
class Reading:
    """One stats-file snapshot, the same shape with or without workers."""

    time: float
    stopped: bool
    processes: list[ProcessReading]
    totals: dict[str, int]
    supervisor: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def fds(self) -> int:
        """Descriptors open over every process (the supervisor's included)."""
        return sum(p.fds for p in self.processes)

    @property
    def tasks(self) -> int:
        """Trio tasks over every process."""
        return sum(p.tasks for p in self.processes)

    @property
    def rss(self) -> int:
        """Resident bytes over every process."""
        return sum(p.rss for p in self.processes)

    @property
    def connections(self) -> int:
        """Live connections over every server process."""
        return sum(p.connections for p in self.processes)

    @property
    def pids(self) -> list[int]:
        """The server processes (workers, not the supervisor) this snapshot names."""
        return [p.pid for p in self.processes if p.stats is not None]


def _process(snapshot: dict[str, Any]) -> ProcessReading:
    return ProcessReading(
        pid=int(snapshot["pid"]),
        fds=int(snapshot.get("descriptors") or 0),
        tasks=int(snapshot.get("tasks") or 0),
        rss=int(snapshot.get("rss_kib") or 0) * 1024,
        connections=int(snapshot.get("connections") or 0),
        stats=snapshot.get("stats"),
    )


def parse_reading(snapshot: dict[str, Any]) -> Reading:
    """A :class:`Reading` of a single server's or a supervisor's stats file."""
    if not snapshot.get("supervisor"):
        proc = _process(snapshot)
        return Reading(
            time=float(snapshot["time"]),
            stopped=bool(snapshot.get("stopped")),
            processes=[proc],
            totals=dict(proc.stats or {}),
            raw=snapshot,
        )
    own = _process({**snapshot, "connections": 0, "stats": None})
    workers = [_process(w) for w in snapshot.get("workers", []) if "stats" in w]
    extras = {
        k: snapshot.get(k)
        for k in ("started", "crashed", "restarted", "reloads", "reloads_done", "unreported")
    }
    return Reading(
        time=float(snapshot["time"]),
        stopped=bool(snapshot.get("stopped")),
        processes=[own, *workers],
        totals=dict(snapshot.get("totals") or {}),
        supervisor={**extras, "workers": snapshot.get("workers", [])},
        raw=snapshot,
    )


class ServerProcess:
    """One ``trionet serve`` (single process, or a supervisor with workers) and its files."""

    def __init__(self, name: str, workdir: Path, args: list[str], workers: int = 0) -> None:
        """``args`` are every flag but the binds and the stats file (added per start)."""
        self.name = name
        self.workdir = workdir
        self.args = args
        self.workers = workers
        self.generation = 0
        #: Port of each bind (0 until the first start; a restart reuses them).
        self.ports = {bind: 0 for bind, _ in BINDS}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"server-{name}.log"
        self.out_path = workdir / f"server-{name}.out"
        self.stats_path = workdir / f"stats-{name}-0.json"
        self.started_at = 0.0

    def address(self, bind: str) -> tuple[str, int]:
        """Where clients of ``bind`` (``tls``, ``plain``, ``proxy``) connect."""
        return ("127.0.0.1", self.ports[bind])

    @property
    def pid(self) -> int:
        """The server's (or supervisor's) pid."""
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        """The command line of the next start."""
        workers = ["--workers", str(self.workers)] if self.workers else []
        return [
            sys.executable,
            "-m",
            "trionet",
            "serve",
            HANDLER,
            *(a for bind, flag in BINDS for a in (flag, f"tcp://127.0.0.1:{self.ports[bind]}")),
            "--stats-file",
            str(self.stats_path),
            *workers,
            *self.args,
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Start it (on the ports of the previous start, if any); wait for ``listening on``."""
        self.generation += 1
        self.stats_path = self.workdir / f"stats-{self.name}-{self.generation}.json"
        with open(self.out_path, "ab") as out, open(self.log_path, "ab") as log:
            offset = out.tell()
            self.proc = subprocess.Popen(
                self.command(),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_bytes()[offset:].decode(errors="replace")
            ports = _LISTENING.findall(text)
            if len(ports) >= len(BINDS):
                self.ports = {b: int(port) for (b, _), port in zip(BINDS, ports, strict=False)}
                self.started_at = time.monotonic()
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"server {self.name} did not start (exit {self.proc.returncode}):\n{tail}"
        )

    def read(self) -> Reading | None:
        """The latest snapshot of the current start, or None (not written yet, unreadable)."""
        try:
            return parse_reading(json.loads(self.stats_path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def alive(self) -> bool:
        """The process is running."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the server (or supervisor)."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait for the exit; its status, or None if it had to be killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        """Kill the server and everything in its session (a supervisor's workers), at once."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
