"""Faults the soak injects into the server: descriptor exhaustion, restart, reload.

Each is recorded as a window ``{kind, start, end, detail}`` (seconds since
the run's start) by :class:`Faults`.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from .canary import Drains
from .checks import Ledger
from .server import ServerProcess

__all__ = ["Faults", "open_fds"]


def open_fds(pid: int) -> int:
    """Descriptors open in process ``pid`` (from ``/proc``)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Faults:
    """The fault windows of a run, and the code that opens and closes them."""

    t0: float
    windows: list[dict[str, Any]] = field(default_factory=list)
    #: (pid, previous limits) of the descriptor squeezes in force.
    squeezed: list[tuple[int, tuple[int, int]]] = field(default_factory=list)

    def add(self, kind: str, start: float, end: float, detail: str) -> dict[str, Any]:
        """Record a window (monotonic times) and return it."""
        window = {
            "kind": kind,
            "start": round(start - self.t0, 3),
            "end": round(end - self.t0, 3),
            "detail": detail,
        }
        self.windows.append(window)
        return window

    def squeeze(self, limits: dict[int, int]) -> tuple[str, int]:
        """Lower each pid's soft RLIMIT_NOFILE to ``limits[pid]``; (detail, how many took)."""
        parts = []
        for pid, low in limits.items():
            try:
                old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
                now_open = open_fds(pid)
                resource.prlimit(pid, resource.RLIMIT_NOFILE, (low, old[1]))
            except (ProcessLookupError, FileNotFoundError, PermissionError) as exc:
                parts.append(f"{pid}: {exc!r}")
                continue
            self.squeezed.append((pid, old))
            parts.append(f"pid {pid}: {now_open} open, soft limit {old[0]} -> {low}")
        return "; ".join(parts), len(self.squeezed)

    def restore(self) -> None:
        """Put back every squeezed limit (processes gone since are skipped)."""
        while self.squeezed:
            pid, old = self.squeezed.pop()
            try:
                resource.prlimit(pid, resource.RLIMIT_NOFILE, old)
            except (ProcessLookupError, PermissionError):
                pass

    async def fd_exhaustion(
        self, server: ServerProcess, limits: dict[int, int], seconds: float
    ) -> tuple[float, int]:
        """Squeeze for ``seconds`` (see :meth:`squeeze`), restore; (end, processes squeezed)."""
        start = time.monotonic()
        squeezed = 0
        try:
            detail, squeezed = self.squeeze(limits)
            await trio.sleep(seconds)
        finally:
            self.restore()
        end = time.monotonic()
        self.add("fd_exhaustion", start, end, f"{server.name}: {detail}")
        return end, squeezed

    async def restart(self, server: ServerProcess, ledger: Ledger, drains: Drains) -> int | None:
        """Drain-and-restart a single-process server on the same port; its exit status."""
        start = time.monotonic()
        drains.begin()
        try:
            status = await trio.to_thread.run_sync(server.stop)
            final = server.read()
            if final is not None:
                ledger.retire(final)
            stopped = time.monotonic()
            await trio.to_thread.run_sync(server.start)
        finally:
            drains.end()
        end = time.monotonic()
        self.add(
            "restart",
            start,
            end,
            f"{server.name}: SIGTERM, exit {status} after {stopped - start:.2f} s, "
            f"new server listening after {end - stopped:.2f} s more",
        )
        return status

    async def reload(self, server: ServerProcess, drains: Drains, timeout: float = 90.0) -> bool:
        """SIGHUP a supervisor; wait (bounded) until its ``reloads_done`` goes up."""

        def done() -> int:
            reading = server.read()
            return int((reading.supervisor or {}).get("reloads_done") or 0) if reading else 0

        before = done()
        start = time.monotonic()
        drains.begin()
        ok = False
        try:
            server.signal(signal.SIGHUP)
            with trio.move_on_after(timeout):
                while done() <= before:  # noqa: ASYNC110 -- polling another process's file
                    await trio.sleep(0.1)
                ok = True
            await trio.sleep(1.0)  # the retiring workers' drains end (grace is bounded)
        finally:
            drains.end()
        end = time.monotonic()
        self.add(
            "reload",
            start,
            end,
            f"{server.name}: SIGHUP, reloads_done {before} -> {done()}"
            + ("" if ok else f" (not done within {timeout:.0f} s)"),
        )
        return ok
