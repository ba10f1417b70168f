"""The worker's side of the channel: say *ready*, obey *drain*, report at *exit*.

``trionet serve ... --worker-channel FD`` is a worker: the CLI serves as
usual (its own SIGINT/SIGTERM drain included) and, through
:func:`follow_supervisor`, also

* sends ``ready`` once its server is accepting on every bind and its
  drain's signal handlers are in place (never earlier: the supervisor
  drains the old worker of a reload on that word);
* drains on ``drain`` (the grace it names; a later, shorter one moves the
  deadline forward, as :meth:`Server.shutdown` does);
* drains on end-of-file too -- the supervisor is gone, even by
  ``kill -9``: a worker is never left behind (orphaned) serving forever;
* ignores SIGHUP, which a terminal's hang-up sends to the whole process
  group: a reload is the supervisor's to run (:func:`ignore_hangup`);

and once drained sends ``exit`` with its stats and shutdown report, which
the supervisor adds to its combined stats line.  A signal and a ``drain``
for the same stop (``systemctl stop`` signals the whole control group;
workers are in a process group of their own, which ``kill -PGID`` may
name) start one drain, not two: only
a *second signal* cuts the grace short.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket as _stdlib_socket
from typing import Any

import attrs
import trio

from .._server._drain import ShutdownReport
from .._server._server import Server
from ._channel import Channel, ChannelError

log = logging.getLogger("trionet.workers")

__all__ = [
    "channel_socket",
    "exit_message",
    "follow_supervisor",
    "ignore_hangup",
    "open_channel",
    "report_stats",
    "say_exit",
]


def channel_socket(fd: int) -> _stdlib_socket.socket:
    """Take ownership of the inherited channel descriptor ``fd`` (before ``trio.run``).

    Raises:
        ValueError: ``fd`` is not an open ``AF_UNIX`` stream socket (left open).
    """
    try:
        sock = _stdlib_socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(
            f"--worker-channel {fd}: not an open socket ({exc.strerror}); this flag is "
            "internal to --workers"
        ) from None
    if sock.family != _stdlib_socket.AF_UNIX or sock.type != _stdlib_socket.SOCK_STREAM:
        sock.detach()  # not ours to close
        raise ValueError(
            f"--worker-channel {fd}: not a Unix stream socket; this flag is internal to --workers"
        )
    return sock


def open_channel(sock: _stdlib_socket.socket) -> Channel:
    """The channel over :func:`channel_socket`'s socket (inside ``trio.run``)."""
    return Channel(sock)


def ignore_hangup() -> None:
    """SIGHUP is the supervisor's (a reload); a worker lets it pass."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


async def follow_supervisor(
    channel: Channel,
    server: Server,
    grace: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Say ``ready``, then obey the supervisor until ``server`` has stopped."""
    try:
        await channel.send({"event": "ready", "pid": os.getpid()})
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the supervisor is gone already: obey() reads EOF and drains
    task_status.started()
    async with trio.open_nursery() as nursery:

        async def obey() -> None:
            while True:
                try:
                    message = await channel.receive()
                except ChannelError as exc:
                    log.error("worker %d: bad message from the supervisor: %s", os.getpid(), exc)
                    message = None
                if message is None:
                    log.warning(
                        "worker %d: the supervisor is gone: draining (grace %ss)",
                        os.getpid(),
                        grace,
                    )
                    nursery.start_soon(server.shutdown, grace)
                    return
                if message.get("command") == "drain":
                    nursery.start_soon(server.shutdown, _grace(message.get("grace"), grace))

        nursery.start_soon(obey)
        await server.wait_stopped()
        nursery.cancel_scope.cancel()


def _grace(value: Any, default: float) -> float:
    if value is None:
        return default
    if value == "inf":
        return math.inf
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        try:
            return float(value)
        except OverflowError:  # an int too big for a float: no limit
            return math.inf
    return default


def exit_message(server: Server, report: ShutdownReport) -> dict[str, Any]:
    """The ``exit`` message: the server's stats and its shutdown report."""
    return {
        "event": "exit",
        "pid": os.getpid(),
        "stats": attrs.asdict(server.stats),
        "shutdown": attrs.asdict(report),
    }


async def say_exit(channel: Channel, message: dict[str, Any]) -> None:
    """Send the ``exit`` message and close (the supervisor may be gone: nothing to do)."""
    try:
        with trio.move_on_after(5):
            await channel.send(message)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.debug("worker %d: could not send its stats: the supervisor is gone", os.getpid())
    await channel.aclose()


async def report_stats(channel: Channel, server: Server, interval: float) -> None:
    """Send the supervisor a ``stats`` snapshot every ``interval`` seconds until ``server`` stops.

    The supervisor writes them, every worker's, to its ``--stats-file``.
    """
    from .._stats_file import stats_snapshot

    while not server.stopped:
        try:
            await channel.send({"event": "stats", "snapshot": stats_snapshot(server)})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the supervisor is gone: follow_supervisor drains
        with trio.move_on_after(interval):
            await server.wait_stopped()
