"""The socket transport: ``Connection`` straight on a socket, fast and generic paths.

Why not wrap :class:`trio.SocketStream`?  Speed.  Every echoed message in a
``SocketStream`` echo server crosses three wrapper layers and two scheduler
passes.  ``Connection`` talks to the kernel socket directly when it has one
(the *fast path*: ``recv``/``send`` on the stdlib socket; a server
connection, which owns its accepted socket outright, parks on the run's
shared epoll set -- see :mod:`trionet._poller` -- and any other parks in
``trio.lowlevel.wait_readable``/``wait_writable``), and falls back to the
``trio.socket.SocketType`` methods for sockets made by a custom Trio socket
factory, which have no descriptor (the *generic path*).  Both paths are
tested.

Checkpoints
-----------
Every operation is a *cancel point*: it starts with
``trio.lowlevel.checkpoint_if_cancelled()``, so a cancelled task never does
I/O.  An operation that has to wait for the kernel is also a *schedule point*
(the wait is one).  By default (``schedule_budget=1``) an operation that
completes immediately ends with a schedule point too: Trio's strict "every
operation is a checkpoint" rule, which ``trio.testing.check_half_closeable_stream``
verifies.  That schedule point is :func:`trionet._checkpoints.schedule_point`:
what ``trio.lowlevel.cancel_shielded_checkpoint`` does, a frame and a call
cheaper (it uses a private Trio name, checked at import with a fallback to
the public function).

A ``schedule_budget`` of N > 1 (opt-in, like Tokio's cooperative budget)
relaxes the schedule point of *receives* only: a receive that completes at
once yields only if the N - 1 operations before it on this connection did
not, so a task reading a flood still lets others run at least every N
receives (the budget is per connection: a task reading K connections in
turn may skip K * (N - 1) times in a row).  A send
that completes at once always ends with a schedule point and starts a new
budget: in request/response traffic that yield is what gives the peer time
to answer, so the next ``recv()`` finds the answer instead of ``EAGAIN``
(spending the budget on sends made every receive park, and was slower than
strict).  So an echo loop pays one scheduler pass per message instead of
two (measured: +15 % messages/s on 100 connections).  Every operation is
still a cancel point, but such a connection does *not* pass Trio's
conformance check, which asserts a schedule point in every call -- hence
strict is the default.

Hot-path choices (each measured, see ``docs/source/benchmarks.rst``):

* ``async for`` reads are one frame deep and grow from 64 KiB to 256 KiB while
  every read fills the buffer (bulk streams), shrinking back for small reads.
* Before parking in epoll, a receive spins for up to 50 µs, yielding at every
  try (each a full checkpoint): in request/response traffic the peer's answer
  usually lands within that, and a ``recv()`` that succeeds is far cheaper --
  in CPU and latency -- than an epoll registration plus the kernel's sleep
  and wake-up.  A spin that finds nothing turns spinning off for that
  connection's next 16 waits, so idle connections cost (almost) nothing.
* The socket calls that may find nothing (``recv``/``send`` returning
  ``EAGAIN``) run in tiny helper functions: an exception raised inside a
  coroutine makes CPython materialise its frame object, ~250 bytes that an
  idle connection would carry for life.
* A drain wakes an ``async for`` that is parked with
  :meth:`Poller.interrupt <trionet._poller.Poller.interrupt>` (or, parked in
  Trio's ``wait_readable``, with ``trio.lowlevel.notify_closing()`` -- which
  wakes without closing) instead of wrapping every wait in a cancel scope (a
  cancel scope costs more than a whole scheduler pass).  The latter leans on
  ``notify_closing`` waking waiters
  without touching the descriptor, so it can be waited on again -- true of
  Trio's epoll and kqueue backends, and guarded by the ``trio`` case of
  ``tests/test_poller.py::test_drain_wakes_only_the_reader_of_a_connection_with_a_parked_writer``.

Errors
------
``OSError`` from the socket is translated in one place
(:func:`trionet._exceptions.translate_stream_error`): our own close means
``trio.ClosedResourceError``; a reset or broken pipe means
``trio.BrokenResourceError``.
"""

from __future__ import annotations

import socket as _stdlib_socket
import time
from collections.abc import Coroutine
from typing import Any

import trio
from trio.lowlevel import (
    Abort,
    checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_task_rescheduled,
    wait_writable,
)

from .._address import Address, address_from_sockaddr
from .._exceptions import translate_stream_error
from .._validate import check_count, public_call
from ._base import (
    _CLOSED,
    _EOF_SEEN,
    _EOF_SENT,
    DEFAULT_CLOSE_LINGER,
    DEFAULT_OPTIONS,
    DEFAULT_SCHEDULE_BUDGET,
    Connection,
    ConnectionOwner,
    ConnOptions,
    _closed_error,
    check_close_linger,
)
from ._buffered import DEFAULT_RECEIVE_SIZE
from ._checkpoints import schedule_point as _schedule_point
from ._poller import READ as _READ
from ._poller import WRITE as _WRITE
from ._poller import Poller
from ._poller import current_poller as _current_poller
from ._sockopts import (
    AF_UNIX,
    arm_reset,
    linger_needed,
    pending_bytes,
    raw_socket_of,
    read_peer_credentials,
    readable_or_dead,
    try_recv,
    try_send,
)

__all__ = ["SocketConnection"]

# Before blocking in epoll, a receive spins (yielding) for up to this long;
# after a fruitless spin the connection skips spinning for _SPIN_BACKOFF waits
# (see _recv_into_nothing).
_SPIN_SECONDS = 50e-6
_SPIN_BACKOFF = 16
_perf_counter = time.perf_counter
# ``async for`` reads grow from 64 KiB up to this while every read fills the
# buffer (a bulk stream), and shrink back when reads come back small.
_ITER_MAX = 256 * 1024
# How much one read of a lingering close discards.
_LINGER_READ = 65536


def _stop(iterating: bool) -> bytes | None:
    # A drain ends the receive: None for the internal callers, the end of the
    # loop for ``async for`` (which calls _recv_into_nothing directly).
    if iterating:
        raise StopAsyncIteration
    return None


class SocketConnection(Connection):
    """A :class:`~trionet.Connection` on a socket (see the module notes).

    ``trionet.Connection(socket, ...)`` makes one; so does the server for
    every accepted socket (``_adopt``), and ``trionet.connect``.
    """

    __slots__ = (
        "_armed",
        "_iter_scope",
        "_pfd",
        "_poller",
        "_raw",
        "_rtask",
        "_rx_iter_waiting",
        "_spin_skip",
        "_tsock",
        "_wtask",
    )

    def __init__(
        self,
        socket: trio.socket.SocketType,
        *,
        peer: Address | None = None,
        local: Address | None = None,
        schedule_budget: int = DEFAULT_SCHEDULE_BUDGET,
        close_linger: float = DEFAULT_CLOSE_LINGER,
        _owner: ConnectionOwner | None = None,
        _options: ConnOptions | None = None,
    ) -> None:
        if not isinstance(socket, trio.socket.SocketType):
            raise TypeError(f"Connection needs a trio socket, not {type(socket).__name__}")
        if socket.type != _stdlib_socket.SOCK_STREAM:
            raise ValueError("Connection needs a SOCK_STREAM socket")
        if _options is None:
            with public_call("Connection()"):
                check_count("schedule_budget", schedule_budget, minimum=1)
            close_linger = check_close_linger("Connection()", close_linger)
            _options = ConnOptions.of(schedule_budget, close_linger)
        self._tsock: trio.socket.SocketType | None = socket
        # The caller holds the Trio socket and may close it behind our back;
        # only Trio's own waits hear about that (notify_closing), so a
        # Connection made this way never parks on the poller.
        self._setup(raw_socket_of(socket), peer, local, _options, _owner, None)

    @classmethod
    def _adopt(
        cls,
        raw: _stdlib_socket.socket,
        peer: Address | None = None,
        local: Address | None = None,
        options: ConnOptions | None = None,
        owner: ConnectionOwner | None = None,
    ) -> SocketConnection:
        """A connection straight on a stdlib socket nobody else holds (internal).

        Used for accepted sockets.  (``connect`` keeps ``Connection(sock)``: a
        custom socket factory may hold on to the Trio socket it made.)  The
        Trio socket wrapper (~180 bytes) is made only if someone asks for
        :attr:`socket`; until then only this connection can close the
        socket, so its waits may park on the poller (see :mod:`._poller`).
        """
        self = object.__new__(cls)
        raw.setblocking(False)
        self._tsock = None
        self._setup(raw, peer, local, options or DEFAULT_OPTIONS, owner, _current_poller())
        return self

    def _setup(
        self,
        raw: _stdlib_socket.socket | None,
        peer: Address | None,
        local: Address | None,
        options: ConnOptions,
        owner: ConnectionOwner | None,
        poller: Poller | None,
    ) -> None:
        self._raw = raw
        if peer is None:
            sock = self._sock()
            try:
                peer = address_from_sockaddr(sock.family, sock.getpeername())
            except OSError as exc:
                raise translate_stream_error(exc) from exc
        # Parking (see _poller): the run's shared epoll set, if we may use it.
        self._poller: Poller | None = poller if raw is not None else None
        self._pfd = raw.fileno() if raw is not None else -1
        self._rtask: trio.lowlevel.Task | None = None
        self._wtask: trio.lowlevel.Task | None = None
        self._armed = 0
        self._rx_iter_waiting = False
        self._spin_skip = 0
        self._iter_scope: trio.CancelScope | None = None
        self._init_common(peer, local, options, owner)

    # ------------------------------------------------------------------
    # Introspection

    def _sock(self) -> Any:
        # The Trio socket if made, else the stdlib one (for plain socket calls).
        return self._tsock if self._tsock is not None else self._raw

    @property
    def socket(self) -> trio.socket.SocketType:
        """The underlying ``trio.socket.SocketType`` (made on first use for server connections).

        Raises:
            trio.ClosedResourceError: first asked for after the connection closed.
        """
        sock = self._tsock
        if sock is None:
            if self._closed:
                raise trio.ClosedResourceError("this connection was already closed")
            assert self._raw is not None
            sock = self._tsock = trio.socket.from_stdlib_socket(self._raw)
            poller = self._poller
            if poller is not None:
                # Whoever holds the Trio socket may close it directly, which
                # only Trio's waits hear about: move to those from now on.
                self._poller = None
                poller.release(self)
        return sock

    def _local_address(self) -> Address:
        try:
            sockname = self._sock().getsockname()
        except OSError as exc:
            raise translate_stream_error(exc) from exc
        return address_from_sockaddr(self._sock().family, sockname)

    @property
    def peer_credentials(self) -> tuple[int, int, int] | None:
        """``(pid, uid, gid)`` of a Unix-socket peer via ``SO_PEERCRED``; None otherwise.

        Linux only (other systems lay ``SO_PEERCRED`` out differently, or lack it).
        """
        if self._closed or self._sock().family != AF_UNIX:
            return None
        try:
            return read_peer_credentials(self._sock())
        except OSError as exc:
            raise translate_stream_error(exc) from exc

    def _transport_health(self) -> str | None:
        raw = self._raw
        if raw is None:
            # A socket from a custom factory: no descriptor to poll, so it
            # cannot be checked -- never reused.
            return "no descriptor to check its health"
        try:
            if readable_or_dead(raw.fileno()):
                return "closed or reset by the peer, or holding unexpected data"
        except (OSError, ValueError):
            return "its descriptor cannot be polled"
        return None

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Set a socket option on the underlying socket."""
        self._sock().setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        """Read an integer socket option from the underlying socket."""
        value: int = self._sock().getsockopt(level, option)
        return value

    # ------------------------------------------------------------------
    # Waiting

    def _park(self, how: int) -> bool:
        """Register to park on the poller; True means: await the trap right now.

        False means Trio's own waits -- for good: there is no poller, it is
        broken, or it had no room (then it has dropped us).  A plain method,
        not a coroutine: no frame is added under a parked task.
        """
        poller = self._poller
        if poller is not None and not poller.broken and poller.park(self, how):
            return True
        self._poller = None
        return False

    def _abort_read(self, raise_cancel: Any) -> Abort:
        # A parked receive was cancelled: forget the task (the poller drops
        # the event if it still comes).
        self._rtask = None
        return Abort.SUCCEEDED

    def _abort_write(self, raise_cancel: Any) -> Abort:
        self._wtask = None
        return Abort.SUCCEEDED

    # ------------------------------------------------------------------
    # Receiving

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
                        raise _closed_error()
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
                    raise _closed_error()
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

    def _interrupt_iteration(self) -> None:
        """Wake an ``async for`` blocked waiting for data (drain has begun)."""
        if not self._drain_stops_iteration():
            return
        if self._rx_iter_waiting and self._raw is not None and not self._closed:
            if self._rtask is not None:
                # Parked on the poller: wake the reader alone.
                assert self._poller is not None
                self._poller.interrupt(self)
            else:
                # Parked on Trio's wait: wakes every waiter on this descriptor
                # with ClosedResourceError without closing it; the waiters
                # see the drain flag and carry on (a concurrent sender simply
                # waits again).
                trio.lowlevel.notify_closing(self._raw)
        scope = self._iter_scope
        if scope is not None:
            scope.cancel()

    # ------------------------------------------------------------------
    # Sending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting while the kernel's send buffer is full.

        Args:
            data: bytes-like; ``b""`` is allowed (a checkpoint, nothing sent).

        Raises:
            trio.BusyResourceError: another task is sending on this connection.
            trio.ClosedResourceError: after :meth:`send_eof` or a close.
            trio.BrokenResourceError: the peer reset the connection or went away.

        If cancelled part-way, an unknown prefix of ``data`` may have been sent.

        Example::

            await conn.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        """
        self._check_send()
        raw = self._raw
        self._send_busy = True
        try:
            await checkpoint_if_cancelled()
            if raw is None:
                with memoryview(data) as view:
                    await self._send_generic(view.cast("B"), view.nbytes)
                return
            if type(data) is not bytes and type(data) is not bytearray:
                data = memoryview(data).cast("B")
            total = len(data)
            sent = try_send(raw, data) if total else 0
            self.bytes_sent += sent
            # A send refills the budget whatever happens next, and always
            # yields: after a wait (a schedule point) or right here.
            self._coop_left = self._opts.budget
            if sent == total:
                # The common case: the kernel took it all at once.
                await _schedule_point()
                return
            with memoryview(data) as view:
                while sent < total:
                    self._waits += 1
                    try:
                        if self._park(_WRITE):
                            await wait_task_rescheduled(self._abort_write)
                        else:
                            await wait_writable(raw)
                    except trio.ClosedResourceError:
                        if self._closed:
                            raise
                        continue  # woken by a drain's notify_closing(): wait again
                    finally:
                        self._wtask = None  # (see the receive side)
                    if self._closed:  # woken to write, but closed before we ran
                        raise _closed_error()
                    with view[sent:] as rest:
                        n = try_send(raw, rest)
                    sent += n
                    self.bytes_sent += n
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._send_busy = False

    async def _send_generic(self, view: memoryview, total: int) -> None:
        if total == 0:
            await checkpoint()
            return
        sent = 0
        while sent < total:
            with view[sent:] as rest:
                n = await self.socket.send(rest)
            sent += n
            self.bytes_sent += n

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more data (``trio.abc.SendStream`` API).

        Raises:
            trio.BusyResourceError: another task is sending on this connection.
            trio.ClosedResourceError: the connection was closed.
        """
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        if self._closed:
            raise trio.ClosedResourceError("this connection was already closed")
        self._send_busy = True
        try:
            while True:
                try:
                    raw = self._raw
                    if raw is not None:
                        await wait_writable(raw)
                    else:
                        await self.socket.wait_writable()
                    if self._closed:
                        raise _closed_error()
                    return
                except trio.ClosedResourceError:
                    if self._closed:
                        raise
                    # woken by a drain's notify_closing(): wait again
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._send_busy = False

    async def send_eof(self) -> None:
        """Half-close: tell the peer we will send no more (``shutdown(SHUT_WR)``).

        Receiving still works.  Calling it again does nothing.

        Raises:
            trio.ClosedResourceError: the connection was closed.

        Example::

            await conn.send_all(request)
            await conn.send_eof()          # the server reads until EOF
            reply = await conn.receive_some()
        """
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._send_busy = True
        try:
            await checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("this connection was already closed")
            if self._eof & _EOF_SENT:
                return
            self._eof |= _EOF_SENT
            self._sock().shutdown(_stdlib_socket.SHUT_WR)
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._send_busy = False

    # ------------------------------------------------------------------
    # Closing primitives (see Connection.aclose)

    def _wake_waiters(self) -> None:
        if self._poller is not None:
            # Wake our parked tasks and leave the epoll set.
            self._poller.forget(self)

    def _close_transport(self, *, after_linger: bool) -> None:
        self._closed = _CLOSED
        if after_linger and self._poller is not None:
            # Drop what the poller may hold since the close began (a task
            # that parked meanwhile is woken with ClosedResourceError).
            self._poller.forget(self)
        tsock = self._tsock
        if tsock is not None:
            tsock.close()
        else:
            raw = self._raw
            assert raw is not None
            # What trio's socket.close() does: wake Trio-level waiters.
            trio.lowlevel.notify_closing(raw)
            raw.close()

    def _arm_reset(self) -> None:
        arm_reset(self._sock())

    def _linger_needed(self) -> bool:
        raw = self._raw
        if raw is None:
            # No descriptor to inspect without waiting: linger whenever we
            # sent something and saw no EOF -- unless another task is blocked
            # in the custom socket's recv, which nothing could wake short of
            # closing it.
            return not self._receive_busy
        return linger_needed(raw)

    def _begin_linger(self) -> bool:
        if self._raw is not None:
            # Wake tasks in Trio's waits; the descriptor stays open.
            trio.lowlevel.notify_closing(self._raw)
        if self._eof & _EOF_SENT:
            return True
        try:
            self._sock().shutdown(_stdlib_socket.SHUT_WR)
        except OSError:
            return False  # reset or gone meanwhile: nothing to protect
        return True

    async def _discard_until_eof(self) -> None:
        raw = self._raw
        if raw is None:
            sock = self.socket
            while await sock.recv(_LINGER_READ):
                pass
            return
        while True:
            data = try_recv(raw, _LINGER_READ)
            if data is None:
                await wait_readable(raw)
            elif not data:
                return  # the peer's EOF: it has read everything we sent
