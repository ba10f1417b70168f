"""Parking for connections: one epoll set per Trio run, shared by server connections.

Why not ``trio.lowlevel.wait_readable``?
----------------------------------------
It is correct and general, but a task parked in it holds, for as long as it
waits, a chain of five coroutine frames (the generated wrapper, the I/O
manager's method, ``_epoll_wait``, ``wait_task_rescheduled`` and its trap), an
abort closure with its cells and a per-descriptor waiters record: about
1.3 KiB per idle connection, measured with ``tracemalloc``.  It also arms
*and* disarms its ``EPOLLONESHOT`` registration on every wait: two
``epoll_ctl`` calls per message in request/response traffic.

A connection here parks with ``trio.lowlevel.wait_task_rescheduled`` directly
-- the primitive Trio documents for building exactly this kind of thing -- so
a parked connection holds the two trap frames and a bound method (~0.35 KiB), and
re-arms its one-shot registration with a single ``epoll_ctl`` (the kernel
disarms it when it fires; nobody needs to disarm it by hand).

How it works
------------
* One :class:`Poller` per ``trio.run`` (a ``RunVar``), created on first use,
  with its own ``select.epoll`` set and one *system task* that waits for that
  set's descriptor to become readable (through Trio's own
  ``wait_readable``), collects the ready descriptors with ``poll(0)`` and
  reschedules their waiting tasks.  The ready descriptors of a busy server
  arrive in one batch, so the extra hop costs one scheduler pass per batch.
* Each descriptor is registered once, on its first wait, with
  ``EPOLLONESHOT``: it fires at most once per arming.  :meth:`Poller.park`
  arms it for what the waiting tasks want (read and/or write) unless the
  armed set already covers that; after an event the kernel has disarmed
  it, and the poller re-arms it only for a waiter that is still parked.
  No stale events can wake a task that did not ask: an event delivered
  after its waiter was cancelled finds nobody and is dropped.
* Whoever wakes a parked task clears its slot first; a cancelled wait's
  abort callback clears it too.  So a task is rescheduled exactly once.
* :meth:`Poller.forget` (called by ``Connection.close`` before the socket
  closes) wakes the connection's waiters with ``ClosedResourceError`` and
  removes the descriptor from the set; :meth:`Poller.interrupt` wakes only
  the reader (a graceful drain ending an ``async for``).

Who parks here: connections that own their kernel socket outright -- the
ones a server builds with ``Connection._adopt``.  A connection whose Trio
socket somebody else holds (``Connection(sock)``, ``trionet.connect``, or a
server connection after its handler asked for ``conn.socket``) may be closed
behind its back, which only Trio's waits hear about (``notify_closing``), so
it uses those; asking for ``conn.socket`` hands the connection back
(:meth:`Poller.release`).  At the end of the run the system task is
cancelled and marks the poller ``broken``, so nothing parks on it again.
A forked child marks every poller it inherited ``broken`` (``os.register_at_fork``).
The methods that touch a parked task's slot are protected from
``KeyboardInterrupt`` (a Ctrl-C between clearing a slot and rescheduling
would lose a wake-up).

Only Linux has epoll; elsewhere (and for sockets from a custom socket
factory, which have no descriptor) connections use Trio's own waits.  Tests
switch the poller off with :data:`ENABLED` to cover that path too.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import select
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import outcome
import trio
from trio.lowlevel import Abort, RunVar, enable_ki_protection

log = logging.getLogger("trionet.poller")

__all__ = ["ENABLED", "Poller", "current_poller"]

#: Set to False (tests do) to make new connections use Trio's own waits.
ENABLED: bool = hasattr(select, "epoll")

if hasattr(select, "epoll"):
    _OUT = select.EPOLLOUT
    _ONESHOT = select.EPOLLONESHOT
    # Wake a reader on data, EOF, reset or error; a writer on space or error.
    _READ_EVENTS = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
    _WRITE_EVENTS = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
    _ARM_READ = select.EPOLLIN | select.EPOLLRDHUP
else:  # pragma: no cover - not Linux
    _OUT = _ONESHOT = _READ_EVENTS = _WRITE_EVENTS = _ARM_READ = 0

#: ``epoll_ctl`` errors that mean "no room", not "bad descriptor".
_FULL = frozenset({errno.ENOSPC, errno.ENOMEM})

#: Flag values for :meth:`Poller.park`.
READ = 1
WRITE = 2


class Parker(Protocol):
    """What the poller keeps per descriptor (``Connection`` provides it)."""

    _pfd: int
    _rtask: trio.lowlevel.Task | None
    _wtask: trio.lowlevel.Task | None
    _armed: int

    def _abort_read(self, raise_cancel: Any) -> Abort: ...

    def _abort_write(self, raise_cancel: Any) -> Abort: ...


_poller_var: RunVar[Poller | None] = RunVar("trionet_poller")


def current_poller() -> Poller | None:
    """This run's poller (started on first call), or None where there is none."""
    try:
        return _poller_var.get()
    except LookupError:
        pass
    except RuntimeError:
        return None  # outside trio.run: nothing to park on yet
    poller: Poller | None = None
    if ENABLED:
        try:
            poller = Poller()
        except OSError as exc:  # pragma: no cover - out of descriptors, say
            log.warning("no epoll set for trionet's poller (%s); using Trio's waits", exc)
        else:
            trio.lowlevel.spawn_system_task(poller._run, name="trionet poller")
    _poller_var.set(poller)
    return poller


class Poller:
    """One epoll set and one system task that wakes parked connections (internal)."""

    __slots__ = ("__weakref__", "_by_fd", "_ep", "broken")

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._by_fd: dict[int, Parker] = {}
        #: True once the poller cannot wake anybody any more (it failed, its
        #: run ended, or this is a forked child): connections use Trio's waits.
        self.broken = False
        _live.add(self)

    # -- called by connections (synchronously, just before they park) --

    @enable_ki_protection
    def park(self, p: Parker, how: int) -> bool:
        """Record the current task as ``p``'s reader or writer and arm its descriptor.

        If this returns True the caller must park at once, with no checkpoint
        in between: ``await wait_task_rescheduled(p._abort_read)`` (or
        ``_abort_write``).  False means the epoll set is out of room
        (``ENOSPC``: ``fs.epoll.max_user_watches``; ``ENOMEM``): ``p`` is
        dropped, and the caller uses Trio's own waits from now on.  Any other
        failure (a bad descriptor) raises ``OSError``, the caller's socket
        error.
        """
        want = _ARM_READ if how == READ else _OUT
        armed = p._armed
        if want & ~armed:
            try:
                self._arm(p, want | armed)
            except OSError as exc:
                if exc.errno not in _FULL:
                    raise
                # Out of room: drop p, and wake a task parked here for the
                # other direction so it retries -- on Trio's waits, since the
                # caller stops using the poller for p.
                self._drop(p)
                self._wake(p, _plain_wake)
                global _warned_full
                if not _warned_full:
                    _warned_full = True
                    log.warning(
                        "trionet's epoll set refused a descriptor (%s); "
                        "such connections use Trio's own waits",
                        exc,
                    )
                return False
        if how == READ:
            p._rtask = trio.lowlevel.current_task()
        else:
            p._wtask = trio.lowlevel.current_task()
        return True

    def _drop(self, p: Parker) -> None:
        fd = p._pfd
        if self._by_fd.get(fd) is p:
            del self._by_fd[fd]
            try:
                self._ep.unregister(fd)
            except OSError:  # pragma: no cover - already gone
                pass
        p._armed = 0

    def _arm(self, p: Parker, flags: int) -> None:
        fd = p._pfd
        if self._by_fd.get(fd) is p:
            self._ep.modify(fd, flags | _ONESHOT)
        else:
            self._ep.register(fd, flags | _ONESHOT)
            self._by_fd[fd] = p
        p._armed = flags

    @enable_ki_protection
    def forget(self, p: Parker) -> None:
        """The descriptor is about to close: wake its waiters, drop the registration."""
        self._drop(p)
        self._wake(p, lambda: outcome.Error(trio.ClosedResourceError("the connection was closed")))

    @enable_ki_protection
    def release(self, p: Parker) -> None:
        """Hand ``p`` back to Trio's waits: drop the registration, wake its waiters.

        The woken tasks retry their socket call and park again -- on Trio's
        waits, since the connection no longer uses the poller.
        """
        self._drop(p)
        self._wake(p, _plain_wake)

    @enable_ki_protection
    def interrupt(self, p: Parker) -> None:
        """Wake ``p``'s reader (if parked) with ``ClosedResourceError`` (drain)."""
        task = p._rtask
        if task is not None:
            p._rtask = None
            trio.lowlevel.reschedule(task, outcome.Error(trio.ClosedResourceError("interrupted")))

    @staticmethod
    @enable_ki_protection
    def _wake(p: Parker, result: Callable[[], outcome.Outcome[Any]]) -> None:
        # A fresh outcome (and exception) per task: an outcome unwraps once.
        task = p._rtask
        if task is not None:
            p._rtask = None
            trio.lowlevel.reschedule(task, result())
        task = p._wtask
        if task is not None:
            p._wtask = None
            trio.lowlevel.reschedule(task, result())

    # -- the system task --

    async def _run(self) -> None:
        ep = self._ep
        by_fd = self._by_fd
        reschedule = trio.lowlevel.reschedule
        try:
            while True:
                await trio.lowlevel.wait_readable(ep.fileno())
                for fd, events in ep.poll(0):
                    p = by_fd.get(fd)
                    if p is None:
                        continue  # pragma: no cover - unregistered meanwhile
                    # One-shot: the kernel has disarmed the descriptor.
                    p._armed = 0
                    if events & _READ_EVENTS:
                        task = p._rtask
                        if task is not None:
                            p._rtask = None
                            reschedule(task)
                    if events & _WRITE_EVENTS:
                        task = p._wtask
                        if task is not None:
                            p._wtask = None
                            reschedule(task)
                    # A waiter the event was not for is still parked: re-arm.
                    if p._rtask is not None or p._wtask is not None:
                        flags = (_ARM_READ if p._rtask is not None else 0) | (
                            _OUT if p._wtask is not None else 0
                        )
                        try:
                            self._arm(p, flags)
                        except OSError as exc:
                            # A bad descriptor: wake the waiters with the
                            # error, as Trio's I/O manager does.
                            self._wake(p, functools.partial(_fresh_error, exc))
        except (OSError, ValueError) as exc:  # pragma: no cover - a broken epoll set
            # Never take the run down: the ``finally`` wakes everybody, and
            # connections notice ``broken`` and use Trio's own waits from now on.
            log.error("trionet poller failed; falling back to Trio's waits", exc_info=exc)
        finally:
            self._fail()
            ep.close()

    def _fail(self) -> None:
        self.broken = True
        parked = list(self._by_fd.values())
        self._by_fd.clear()
        for p in parked:
            p._armed = 0
            # A plain wake: the waiter retries its socket call, then parks
            # on Trio's waits because the poller is broken.
            self._wake(p, _plain_wake)


def _plain_wake() -> outcome.Outcome[Any]:
    return outcome.Value(None)


def _fresh_error(exc: OSError) -> outcome.Outcome[Any]:
    # One exception object per woken task: two tasks raising one instance
    # would overwrite each other's traceback and context.
    return outcome.Error(OSError(exc.errno, exc.strerror))


#: The "epoll set is full" warning is logged once per process.
_warned_full = False


# Every poller not yet garbage-collected, so a forked child can disown them:
# the child inherits the objects but not the system task that serves them
# (nor a run), and a connection carried into a new run there must not park
# on an epoll set that nobody reads.
_live: weakref.WeakSet[Poller] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for poller in list(_live):
        poller.broken = True
        poller._by_fd.clear()
        poller._ep.close()  # the child's copy; the parent keeps its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
