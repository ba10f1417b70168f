"""The socket transport's receive path: ``receive_some`` and ``async for`` on a socket.

A mixin of :class:`~trionet._stream._socket.SocketConnection` (the class
itself holds the state, the parking and the close primitives; the send path
is :mod:`._socket_send`).  This is the hottest code in trionet: every
message of an ``async for chunk in conn`` handler goes through
:meth:`SocketReceiving._recv_into_nothing`, one coroutine frame deep.

Checkpoints
-----------
Every operation is a *cancel point*: it starts with
``trio.lowlevel.checkpoint_if_cancelled()``, so a cancelled task never does
I/O.  An operation that has to wait for the kernel is also a *schedule point*
(the wait is one).  By default (``schedule_budget=1``) an operation that
completes immediately ends with a schedule point too: Trio's strict "every
operation is a checkpoint" rule, which ``trio.testing.check_half_closeable_stream``
verifies.  That schedule point is :func:`trionet._stream._checkpoints.schedule_point`:
what ``trio.lowlevel.cancel_shielded_checkpoint`` does, a frame and a call
cheaper (it uses a private Trio name, checked at import with a fallback to
the public function).

A ``schedule_budget`` of N > 1 (opt-in, like Tokio's cooperative budget)
relaxes the schedule point of *receives* only: a receive that completes at
once yields only if the N - 1 operations before it on this connection did
not, so a task reading a flood still lets others run at least every N
receives (the budget is per connection: a task reading K connections in
turn may skip K * (N - 1) times in a row).  A send that completes at once
always ends with a schedule point and starts a new budget (see
:mod:`._socket_send`), so an echo loop pays one scheduler pass per message
instead of two (measured: +15 % messages/s on 100 connections).  Every
operation is still a cancel point, but such a connection does *not* pass
Trio's conformance check, which asserts a schedule point in every call --
hence strict is the default.

Hot-path choices (each measured, see ``docs/source/benchmarks.rst``):

* ``async for`` reads are one frame deep and grow from 64 KiB to 256 KiB while
  every read fills the buffer (bulk streams), shrinking back for small reads.
* Before parking in epoll, a receive spins for up to 50 µs, yielding at every
  try (each a full checkpoint): in request/response traffic the peer's answer
  usually lands within that, and a ``recv()`` that succeeds is far cheaper --
  in CPU and latency -- than an epoll registration plus the kernel's sleep
  and wake-up.  A spin that finds nothing turns spinning off for that
  connection's next 16 waits, so idle connections cost (almost) nothing.
* The socket calls that may find nothing (``recv`` returning ``EAGAIN``) run
  in tiny helper functions (:mod:`._sockopts`): an exception raised inside a
  coroutine makes CPython materialise its frame object, ~250 bytes that an
  idle connection would carry for life.
* A drain wakes an ``async for`` that is parked with
  :meth:`Poller.interrupt <trionet._stream._poller.Poller.interrupt>` (or,
  parked in Trio's ``wait_readable``, with ``trio.lowlevel.notify_closing()``
  -- which wakes without closing) instead of wrapping every wait in a cancel
  scope (a cancel scope costs more than a whole scheduler pass).  The latter
  leans on ``notify_closing`` waking waiters without touching the descriptor,
  so it can be waited on again -- true of Trio's epoll and kqueue backends,
  and guarded by the ``trio`` case of
  ``tests/test_poller.py::test_drain_wakes_only_the_reader_of_a_connection_with_a_parked_writer``.
  Only the generic path (no descriptor) waits in a cancel scope, kept in
  ``_iter_scope`` for the drain to cancel.
"""

from __future__ import annotations

import socket as _stdlib_socket
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import (
    Abort,
    checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_task_rescheduled,
)

from ._base import _EOF_SEEN, Connection
from ._buffered import DEFAULT_RECEIVE_SIZE
from ._checkpoints import schedule_point as _schedule_point
from ._closing import _closed_while_waiting
from ._poller import READ as _READ
from ._sockopts import pending_bytes, try_recv

__all__ = ["SocketReceiving"]

# Before blocking in epoll, a receive spins (yielding) for up to this long;
# after a fruitless spin the connection skips spinning for _SPIN_BACKOFF waits
# (see _recv_into_nothing).
_SPIN_SECONDS = 50e-6
_SPIN_BACKOFF = 16
_perf_counter = time.perf_counter
# ``async for`` reads grow from 64 KiB up to this while every read fills the
# buffer (a bulk stream), and shrink back when reads come back small.
_ITER_MAX = 256 * 1024


def _stop(iterating: bool) -> bytes | None:
    # A drain ends the receive: None for the internal callers, the end of the
    # loop for ``async for`` (which calls _recv_into_nothing directly).
    if iterating:
        raise StopAsyncIteration
    return None


class SocketReceiving(Connection):
    """The receive path of :class:`~trionet._stream._socket.SocketConnection` (a mixin).

    Needs, from ``SocketConnection``: the socket (``_raw``, :attr:`socket`),
    the parking state (``_rtask``, ``_rx_iter_waiting``, ``_spin_skip``) and
    :meth:`_park` / :meth:`_abort_read`.
    """

    if not TYPE_CHECKING:  # (mypy would then want the state among the slots)
        __slots__ = ()
    else:
        _raw: _stdlib_socket.socket | None
        _rtask: trio.lowlevel.Task | None
        _rx_iter_waiting: bool
        _spin_skip: int

        @property
        def socket(self) -> trio.socket.SocketType:
            raise NotImplementedError

        def _park(self, how: int) -> bool:
            raise NotImplementedError

        def _abort_read(self, raise_cancel: Any) -> Abort:
            raise NotImplementedError

    async def _recv_into_nothing(
        self,
        max_bytes: int,
        interruptible: bool,
        coop: bool = True,
        iterating: bool = False,
    ) -> bytes | None:
        """Receive from the socket (not the buffer).  None means "drain interrupted".

        ``interruptible`` is set by ``async for``: during a graceful drain it
        takes what the kernel already holds but does not wait for more.
        ``iterating``: called straight from ``__anext__`` (fast path only):
        adapt the read size and raise ``StopAsyncIteration`` instead of
        returning ``b""`` or None.
        """
        if iterating and (self._receive_busy or self._closed or self._buf):
            # __anext__ checked these when called, but its coroutine may be
            # awaited later (start_soon(conn.__anext__)): check again.
            return await self._anext_slow()
        raw = self._raw
        self._receive_busy = True
        try:
            if raw is None:
                return await self._recv_generic(max_bytes, interruptible)
            owner = self._owner
            await checkpoint_if_cancelled()
            data = try_recv(raw, max_bytes)
            if data is None:
                # Nothing waiting.  During a drain, ``async for`` stops here.
                if interruptible and self._drain_stops_iteration():
                    return _stop(iterating)
            else:
                n = len(data)
                self.bytes_received += n
                if iterating:
                    if n == max_bytes:
                        if max_bytes < _ITER_MAX:
                            self._rx_size = max_bytes * 2
                    elif max_bytes > DEFAULT_RECEIVE_SIZE and n < max_bytes >> 2:
                        self._rx_size = max_bytes >> 1
                if coop:
                    left = self._coop_left - 1
                    if left <= 0:
                        self._coop_left = self._opts.budget
                        await _schedule_point()
                    else:
                        self._coop_left = left
                if not n:
                    self._eof |= _EOF_SEEN
                    if iterating:
                        raise StopAsyncIteration
                return data
            self._coop_left = self._opts.budget
            if self._spin_skip:
                self._spin_skip -= 1
            else:
                # Before parking in epoll, spin briefly: yield (a full
                # checkpoint, so other tasks run) and retry, for up to
                # _SPIN_SECONDS.  In request/response traffic the peer's
                # answer usually lands within tens of microseconds, and a
                # recv() that succeeds costs far less CPU *and* latency than
                # an epoll registration plus the kernel's sleep and wake-up.
                # A connection whose spin found nothing (an idle or slow
                # peer) skips spinning for its next _SPIN_BACKOFF waits, so
                # idle connections do not burn CPU.
                self._waits += 1
                deadline = _perf_counter() + _SPIN_SECONDS
                while True:
                    await checkpoint()
                    if self._closed:  # closed by another task while we yielded
                        await _closed_while_waiting()
                    data = try_recv(raw, max_bytes)
                    if data is not None:
                        self.bytes_received += len(data)
                        if not data:
                            self._eof |= _EOF_SEEN
                            if iterating:
                                raise StopAsyncIteration
                        return data
                    if interruptible and self._drain_stops_iteration():
                        return _stop(iterating)
                    if _perf_counter() > deadline:
                        self._spin_skip = _SPIN_BACKOFF
                        break
            while True:
                # A drain wakes an ``async for`` wait (interruptible) with
                # ClosedResourceError (see _interrupt_iteration): no cancel
                # scope per wait.
                self._rx_iter_waiting = interruptible
                self._waits += 1
                try:
                    if self._park(_READ):
                        await wait_task_rescheduled(self._abort_read)
                    else:
                        await wait_readable(raw)
                except trio.ClosedResourceError:
                    if not interruptible or self._closed or owner is None or not owner.draining:
                        raise
                finally:
                    self._rx_iter_waiting = False
                    # Normally already cleared by whoever woke us; not if a
                    # KeyboardInterrupt struck between park() and the trap.
                    self._rtask = None
                if self._closed:  # woken for data, but closed before we ran
                    await _closed_while_waiting()
                data = try_recv(raw, max_bytes)
                if data is None:
                    if interruptible and self._drain_stops_iteration():
                        return _stop(iterating)
                    continue
                self.bytes_received += len(data)
                if not data:
                    self._eof |= _EOF_SEEN
                    if iterating:
                        raise StopAsyncIteration
                return data
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._receive_busy = False

    async def _recv_generic(self, max_bytes: int, interruptible: bool) -> bytes | None:
        # Sockets without a descriptor (custom socket factories): the plain
        # trio.socket interface, and a cancel scope to let a drain interrupt
        # an ``async for`` wait.
        if interruptible and self._drain_stops_iteration():
            await checkpoint()
            return None
        self._waits += 1  # trio.socket methods always include a schedule point
        if interruptible:
            with trio.CancelScope() as scope:
                self._iter_scope = scope
                try:
                    data = await self.socket.recv(max_bytes)
                finally:
                    self._iter_scope = None
            if scope.cancelled_caught:
                return None
        else:
            data = await self.socket.recv(max_bytes)
        self.bytes_received += len(data)
        if not data:
            self._eof |= _EOF_SEEN
        return data

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        # The hot path of every ``async for chunk in conn`` handler goes
        # straight into the one receive coroutine (optimistic recv(), spin,
        # park), so a parked connection holds one frame here, not two
        # (~290 bytes per idle connection, measured).
        if (
            self._raw is not None
            and not self._buf
            and not self._receive_busy
            and not self._closed
            and self.bytes_received < self._drain_mark
        ):
            # Positional arguments: cheaper than keywords on every message.
            return self._recv_into_nothing(  # type: ignore[return-value]
                self._rx_size, self._owner is not None, True, True
            )
        return self._anext_slow()

    def _pending_bytes(self) -> int | None:
        raw = self._raw
        return None if raw is None else pending_bytes(raw)
