"""Stats for another process to read: a JSON snapshot, rewritten atomically every interval.

An operator's monitoring, or a soak test, wants a running server's counters
and its resource use -- open descriptors, live Trio tasks, resident memory
-- without being inside its ``trio.run``.  :func:`stats_snapshot` is one
such reading (a plain, JSON-ready dict); :func:`write_stats` writes one to
a file every ``interval`` seconds until cancelled, and a last one when the
server has stopped.

Each write goes to a temporary file in the same directory, then
``os.replace`` -- atomic on POSIX -- so a reader never sees half a file.
A write that fails (a full disk, a removed directory) is logged at
WARNING, rate-limited, and retried at the next interval: the server's
statistics never stop the server.  The file stays when :func:`write_stats`
ends: its last snapshot says ``"stopped": true`` and holds the final counts.

With worker processes (``trionet serve --workers N --stats-file PATH``)
each worker sends its snapshot to the supervisor, which writes one file
with every worker's (see :mod:`trionet._workers`).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._ratelimit import RateLimiter
from ._validate import check_seconds, public_call

if TYPE_CHECKING:
    from ._server._server import Server

log = logging.getLogger("trionet.stats")

__all__ = [
    "MIN_INTERVAL",
    "check_interval",
    "check_stats_path",
    "process_snapshot",
    "stats_snapshot",
    "write_json",
    "write_stats",
]

_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4


def _descriptors() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less listdir's own
    except OSError:  # not Linux
        return None


def _rss_kib() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_KIB
    except (OSError, ValueError, IndexError):
        return None


def _tasks() -> int:
    """Live Trio tasks in this run (the root task included)."""
    count = 0
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


def process_snapshot() -> dict[str, Any]:
    """This process's resource use: pid, time, descriptors, tasks, resident memory.

    ``descriptors`` and ``rss_kib`` are None where ``/proc`` is missing.
    Must be called inside ``trio.run`` (it counts the run's tasks).
    """
    return {
        "pid": os.getpid(),
        "time": round(time.time(), 3),
        "descriptors": _descriptors(),
        "tasks": _tasks(),
        "rss_kib": _rss_kib(),
    }


def stats_snapshot(server: Server) -> dict[str, Any]:
    """One reading of ``server`` and its process, JSON-ready.

    Returns:
        ``pid``, ``time`` (Unix seconds), ``descriptors`` (open in this
        process), ``tasks`` (live Trio tasks), ``rss_kib``, ``connections``
        (live), ``draining``, ``stopped``, and ``stats`` (the
        :class:`~trionet.ServerStats` fields).

    Example::

        print(json.dumps(trionet.stats_snapshot(server)))
    """
    _check_server("stats_snapshot()", server)
    return {
        **process_snapshot(),
        "connections": len(server.connections),
        "draining": server.draining,
        "stopped": server.stopped,
        "stats": attrs.asdict(server.stats),
    }


def _check_server(call: str, server: object) -> None:
    from ._server._server import Server  # (the server imports nothing from here)

    if not isinstance(server, Server):
        raise TypeError(f"{call}: server must be a trionet.Server, not {type(server).__name__}")


#: The shortest interval between two snapshots: a smaller one would make
#: the writer a busy loop (a snapshot walks every connection and task).
MIN_INTERVAL = 0.01


def check_interval(call: str, interval: object) -> float:
    """Seconds between snapshots: a finite number >= :data:`MIN_INTERVAL`."""
    with public_call(call):
        seconds = check_seconds("interval", interval, zero=False, infinite=False)
    assert seconds is not None
    if seconds < MIN_INTERVAL:
        raise ValueError(f"{call}: interval must be >= {MIN_INTERVAL} seconds, not {interval!r}")
    return seconds


def check_stats_path(call: str, path: object) -> str:
    """A stats file path: a file name in a directory that exists; a regular file if it exists.

    Anything else already at the path -- a device, a FIFO, a symlink, a
    directory -- is refused: the atomic rename would replace it (as root,
    ``/dev/null`` itself).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{call}: path must be a str or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise TypeError(f"{call}: path must be a str or os.PathLike, not {type(path).__name__}")
    if not text or "\0" in text or not os.path.basename(text):
        raise ValueError(f"{call}: path must name a file, not {text!r}")
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise ValueError(f"{call}: path {text!r}: no directory {directory!r} to write it in")
    try:
        mode = os.lstat(text).st_mode
    except FileNotFoundError:
        return text
    except OSError as exc:
        raise ValueError(f"{call}: path {text!r}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        what = (
            "a directory"
            if stat.S_ISDIR(mode)
            else "a symlink"
            if stat.S_ISLNK(mode)
            else ("not a regular file")
        )
        raise ValueError(f"{call}: path {text!r} is {what}: it would be replaced")
    return text


def write_json(path: str, value: dict[str, Any]) -> None:
    """Write ``value`` to ``path`` atomically (a temporary file, then ``os.replace``).

    The temporary file is made by :func:`tempfile.mkstemp` in the same
    directory: a name no one can guess, created exclusively (``O_EXCL``, so
    never through a symlink someone planted), and not shared by two writers.

    Raises:
        OSError: the write failed (nothing is left behind).
        ValueError: ``value`` is not JSON (a NaN, say).
    """
    data = json.dumps(value, separators=(",", ":"), allow_nan=False) + "\n"
    directory, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            os.fchmod(file.fileno(), 0o644)
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


async def write_stats(
    server: Server,
    path: str | os.PathLike[str],
    *,
    interval: float = 1.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write :func:`stats_snapshot` of ``server`` to ``path`` every ``interval`` seconds.

    Runs until cancelled, or until the server has stopped (then writes a
    last snapshot and returns).  The first snapshot is written before it
    reports through ``task_status``.

    Args:
        server: the server to report.
        path: the file; its directory must exist.
        interval: seconds between writes (finite, at least 0.01).

    Raises:
        TypeError, ValueError: a bad ``server``, ``path`` or ``interval``,
            naming the call, before anything is written.

    Example::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(trionet.serve, handler, "tcp://127.0.0.1:7007")
            nursery.start_soon(trionet.write_stats, server, "/run/myapp/stats.json")
    """
    call = "write_stats()"
    _check_server(call, server)
    check_interval(call, interval)
    text = check_stats_path(call, path)
    await periodic_json(text, lambda: stats_snapshot(server), interval, server, task_status)


async def periodic_json(
    path: str,
    make: Callable[[], dict[str, Any]],
    interval: float,
    server: Server | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Write ``make()`` to ``path`` every ``interval`` s (and a last time once ``server`` stops)."""
    warnings = RateLimiter(burst=3, period=60.0)

    async def write() -> None:
        value = make()
        try:
            with trio.CancelScope(shield=True):  # never leave a temporary file behind
                await trio.to_thread.run_sync(write_json, path, value)
        except (OSError, ValueError, TypeError) as exc:  # a full disk; a value not JSON
            if warnings.allow():
                log.warning("cannot write the stats file %s: %s", path, exc)

    await write()
    task_status.started()
    deadline = trio.current_time()
    while server is None or not server.stopped:
        deadline += interval
        with trio.move_on_at(deadline):
            if server is not None:
                await server.wait_stopped()
            else:
                await trio.sleep_forever()
        await write()
