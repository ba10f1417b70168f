"""One worker process: started with its sockets and channel, watched until it is reaped.

:func:`spawn` starts ``python -m trionet serve ... --bind fd:N ...
--worker-channel FD`` with ``subprocess`` (through
``trio.lowlevel.open_process``): a fresh interpreter, never a fork inside
``trio.run``, given exactly its listening descriptors and its end of a
socketpair (``pass_fds``; every other descriptor of ours is close-on-exec), in a
process group of its own (so signals sent to the terminal's group reach
the supervisor only, which passes them on as commands).
The ``LISTEN_*`` variables of socket activation are not passed on: a
worker gets its sockets as ``fd:`` binds.

:meth:`Worker.watch` reads the worker's messages until end-of-file, reaps
the process, and records how it ended.  If the watching task is cancelled
(the supervisor itself is being cancelled), it does not leave the process
behind: it asks for a drain with no grace, waits :data:`KILL_AFTER`
seconds, then ``SIGKILL``-s and reaps it, shielded.
"""

from __future__ import annotations

import logging
import os
import signal
import socket as _stdlib_socket
import subprocess
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

from ._channel import Channel, ChannelError

log = logging.getLogger("trionet.workers")

__all__ = ["KILL_AFTER", "Worker", "describe_exit", "spawn"]

#: Seconds a worker gets past its drain's grace (or, when the supervisor is
#: cancelled, at all) before it is killed.
KILL_AFTER: Final = 5.0

_LISTEN_ENV: Final = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


@attrs.define(eq=False)
class Worker:
    """A worker process and what the supervisor knows of it."""

    #: Which of the N workers this is (0-based; a restart or replacement keeps it).
    slot: int
    process: trio.Process
    channel: Channel
    #: ``trio.current_time()`` at the start.
    started: float
    #: Set once the worker said it is accepting.
    ready: trio.Event = attrs.field(factory=trio.Event)
    #: Set once it is ready *or* has exited (what a start waits for).
    settled: trio.Event = attrs.field(factory=trio.Event)
    #: Set once the process has been reaped *and* the supervisor has taken
    #: its report (set by the supervisor's watcher, not by :meth:`watch`).
    exited: trio.Event = attrs.field(factory=trio.Event)
    ready_at: float | None = None
    #: True once told to drain (a reload or a shutdown): its exit is expected.
    retiring: bool = False
    #: The worker's ``exit`` message (its stats), if it sent one.
    final: dict[str, Any] | None = None
    returncode: int | None = None
    exited_at: float | None = None
    #: Its latest ``stats`` snapshot (with ``--stats-file``).
    snapshot: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def __str__(self) -> str:
        return f"worker {self.slot + 1} (pid {self.pid})"

    async def drain(self, grace: float | None) -> None:
        """Ask the worker to drain (``grace`` None: its own ``--grace``)."""
        self.retiring = True
        if self.returncode is not None:
            return
        try:
            await self.channel.send({"command": "drain", "grace": grace})
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("%s: not told to drain: its channel is closed", self)

    def kill(self, *, quietly: bool = False) -> None:
        """SIGKILL it, if still running (logged as late unless ``quietly``)."""
        if self.process.returncode is None:
            if not quietly:
                log.warning("%s did not exit in time: killing it", self)
            self.process.kill()

    async def watch(self) -> None:
        """Read messages until EOF, then reap; kill and reap if cancelled first.

        Sets ``returncode`` and ``settled``; ``exited`` is the caller's to set.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read)
                # The process's exit, not the channel's end-of-file, says it
                # is gone: a process the worker forked may hold its end of
                # the channel open long after (multiprocessing does).
                await self.process.wait()
                nursery.cancel_scope.cancel()
            try:
                for message in self.channel.receive_nowait():  # what it wrote last
                    self._take(message)
            except ChannelError as exc:
                log.error("%s sent a bad message (%s)", self, exc)
        finally:
            if self.process.returncode is None:
                with trio.CancelScope(shield=True):
                    await self._stop_now()
            self.returncode = self.process.returncode
            self.exited_at = trio.current_time()
            self.settled.set()
            with trio.CancelScope(shield=True):
                await self.channel.aclose()

    async def _read(self) -> None:
        while True:
            try:
                message = await self.channel.receive()
            except ChannelError as exc:
                log.error("%s sent a bad message (%s): killing it", self, exc)
                self.process.kill()
                return
            if message is None:
                return
            self._take(message)

    def _take(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "ready" and self.ready_at is None and self.process.returncode is None:
            self.ready_at = trio.current_time()
            log.info("%s ready after %.3fs", self, self.ready_at - self.started)
            self.ready.set()
            self.settled.set()
        elif event == "exit":
            self.final = message
        elif event == "stats" and isinstance(message.get("snapshot"), dict):
            self.snapshot = message["snapshot"]

    async def _stop_now(self) -> None:
        await self.drain(0.0)
        with trio.move_on_after(KILL_AFTER):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def describe_exit(returncode: int | None) -> str:
    """``exited with status 1``, ``killed by SIGKILL``."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


async def spawn(slot: int, command: Any, fds: Sequence[int]) -> Worker:
    """Start the worker for ``slot``; ``command(fds, channel_fd)`` gives its argv."""
    ours, theirs = _stdlib_socket.socketpair(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        env = {key: value for key, value in os.environ.items() if key not in _LISTEN_ENV}
        argv = command(fds, theirs.fileno())
        process = await trio.lowlevel.open_process(
            argv,
            pass_fds=(*fds, theirs.fileno()),
            stdin=subprocess.DEVNULL,
            env=env,
            # A process group of its own: a terminal's Ctrl-C or hang-up
            # (sent to the foreground group) reaches the supervisor alone,
            # which tells its workers -- a worker still importing its
            # handler would die of SIGHUP's default action.
            process_group=0,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    channel = Channel(ours)
    worker = Worker(slot, process, channel, started=trio.current_time())
    log.info("%s started", worker)
    return worker
