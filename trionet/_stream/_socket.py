"""The socket transport: ``Connection`` straight on a socket, fast and generic paths.

Why not wrap :class:`trio.SocketStream`?  Speed.  Every echoed message in a
``SocketStream`` echo server crosses three wrapper layers and two scheduler
passes.  ``Connection`` talks to the kernel socket directly when it has one
(the *fast path*: ``recv``/``send`` on the stdlib socket; a server
connection, which owns its accepted socket outright, parks on the run's
shared epoll set -- see :mod:`._poller` -- and any other parks in
``trio.lowlevel.wait_readable``/``wait_writable``), and falls back to the
``trio.socket.SocketType`` methods for sockets made by a custom Trio socket
factory, which have no descriptor (the *generic path*).  Both paths are
tested, against Trio's own conformance checks too.

The transport is three modules, one class: :class:`SocketConnection` here
holds the state, the making of a connection, what it can tell about itself,
the parking on the poller and the close primitives; its receive path (the
hot one, with the notes on checkpoints and the schedule budget) is the mixin
:class:`~trionet._stream._socket_receive.SocketReceiving`, its send path
:class:`~trionet._stream._socket_send.SocketSending`.  Mixins, not a chain
of calls: a method of a mixin is a method of the class, so the split adds
no call (and no coroutine frame) to any operation.

Errors
------
``OSError`` from the socket is translated in one place
(:func:`trionet._exceptions.translate_stream_error`): our own close means
``trio.ClosedResourceError``; a reset or broken pipe means
``trio.BrokenResourceError``.
"""

from __future__ import annotations

import socket as _stdlib_socket
from typing import Any

import trio
from trio.lowlevel import Abort, wait_readable

from .._address import Address, address_from_sockaddr
from .._exceptions import translate_stream_error
from .._validate import check_count, public_call
from ._base import (
    _CLOSED,
    _EOF_SENT,
    DEFAULT_CLOSE_LINGER,
    DEFAULT_OPTIONS,
    DEFAULT_SCHEDULE_BUDGET,
    ConnectionOwner,
    ConnOptions,
    check_close_linger,
)
from ._poller import Poller
from ._poller import current_poller as _current_poller
from ._socket_receive import _ITER_MAX as _ITER_MAX
from ._socket_receive import _SPIN_BACKOFF as _SPIN_BACKOFF
from ._socket_receive import _SPIN_SECONDS as _SPIN_SECONDS
from ._socket_receive import SocketReceiving
from ._socket_receive import _stop as _stop
from ._socket_send import SocketSending
from ._sockopts import (
    AF_UNIX,
    arm_reset,
    linger_needed,
    raw_socket_of,
    read_peer_credentials,
    readable_or_dead,
    try_recv,
)

__all__ = ["SocketConnection"]

# How much one read of a lingering close discards.
_LINGER_READ = 65536


class SocketConnection(SocketReceiving, SocketSending):
    """A :class:`~trionet.Connection` on a socket (see the module notes).

    ``trionet.Connection(socket, ...)`` makes one; so does the server for
    every accepted socket (``_adopt``), and ``trionet.connect``.
    """

    __slots__ = (
        "_armed",
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
            # A socket from a custom factory: no descriptor to poll, so ask
            # the socket itself (``SocketType.is_readable``, which an
            # in-memory network answers: EOF, a reset and unread data all
            # make it readable).  One that cannot answer is never reused.
            try:
                readable = self._sock().is_readable()
            except (NotImplementedError, AttributeError):
                return "no descriptor to check its health"
            except (OSError, ValueError):
                return "it cannot be polled"
            if readable:
                return "closed or reset by the peer, or holding unexpected data"
            return None
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
            # No descriptor to inspect: a socket that can tell (an in-memory
            # network's ``linger_needed()``, the same question the kernel
            # path asks with a peek and SIOCOUTQ) answers; otherwise linger
            # whenever we sent something and saw no EOF -- unless another
            # task is blocked in the custom socket's recv, which nothing
            # could wake short of closing it.
            probe = getattr(self._sock(), "linger_needed", None)
            if probe is not None:
                try:
                    return bool(probe())
                except (OSError, ValueError):
                    return False  # reset or gone: nothing left to protect
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
