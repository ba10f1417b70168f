"""``Connection``: a half-closeable Trio stream built straight on a socket.

Design notes
============

``Connection`` is what a server hands to each handler and what
:func:`trionet.connect` returns.  It implements
:class:`trio.abc.HalfCloseableStream`, adds peer/local addresses, byte
counters, and buffered reads (``receive_exactly``, ``receive_until``,
``receive_line``) that share one buffer with ``receive_some``.

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

Closing
-------
``send_all`` returning means the kernel has the bytes, and a close must not
throw them away.  It would, if it closed a socket with the peer's bytes
unread: the kernel then answers with RST and discards whatever of ours is
still queued unsent.  So :meth:`Connection.aclose` (and the server, when a
handler returns) first decides -- before anything more is written -- with
:func:`linger_needed` (a non-blocking ``recv(1, MSG_PEEK)``, then
``SIOCOUTQNSD`` when nothing is waiting), and if the close could do that
damage it *lingers*: the connection is closed to its users (stats folded,
waiters woken), the sending side shut down so the FIN follows the queued
bytes, and the peer's late bytes read and discarded until its EOF,
``close_linger`` seconds or cancellation; then the descriptor closes.  The
states are ``open`` -> ``closed`` with the descriptor still open (lingering,
``_fd_open``) -> closed.  ``close()``, ``abort()`` and a cancelled
``aclose()`` never linger.  A connection that saw the peer's EOF, or never
sent a byte, has nothing to protect and skips the check (an ``async for``
server loop always ends at EOF, so the common close costs no system call).

During a drain, ``async for`` stops once it delivered what had arrived when
the drain began (``_mark_drain`` adds the kernel's ``FIONREAD`` count to the
bytes received), so a peer that never stops sending cannot keep a loop busy.

Errors
------
``OSError`` from the socket is translated in one place
(:func:`trionet._exceptions.translate_stream_error`): our own close means
``trio.ClosedResourceError``; a reset or broken pipe means
``trio.BrokenResourceError``.  Buffered reads raise
:class:`~trionet.MessageTooLong` and :class:`~trionet.IncompleteRead`.
"""

from __future__ import annotations

import itertools
import operator
import socket as _stdlib_socket
import struct
import sys
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio
from trio.lowlevel import (
    Abort,
    checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_task_rescheduled,
    wait_writable,
)

from ._address import Address, address_from_sockaddr
from ._checkpoints import schedule_point as _schedule_point
from ._exceptions import IncompleteRead, MessageTooLong, translate_stream_error
from ._poller import READ as _READ
from ._poller import WRITE as _WRITE
from ._poller import Poller
from ._poller import current_poller as _current_poller
from ._validate import check_count, check_seconds, public_call

if TYPE_CHECKING:
    from typing import Self

__all__ = [
    "DEFAULT_CLOSE_LINGER",
    "DEFAULT_RECEIVE_SIZE",
    "DEFAULT_SCHEDULE_BUDGET",
    "Connection",
    "ConnectionInfo",
    "check_close_linger",
    "linger_needed",
]

#: How many bytes ``receive_some()`` asks for when given no ``max_bytes``.
DEFAULT_RECEIVE_SIZE: Final = 65536
#: Immediately-completed operations between two schedule points (1 = strict Trio).
DEFAULT_SCHEDULE_BUDGET: Final = 1
#: Seconds an orderly close may linger for the peer's EOF (see ``Connection.aclose``).
DEFAULT_CLOSE_LINGER: Final = 5.0

_ids = itertools.count(1)
# Largest single recv() of the buffered helpers (receive_exactly(10**9) must
# not allocate a gigabyte per call).
_MAX_FILL = 1 << 20

# Before blocking in epoll, a receive spins (yielding) for up to this long;
# after a fruitless spin the connection skips spinning for _SPIN_BACKOFF waits
# (see _recv_into_nothing).
_SPIN_SECONDS = 50e-6
_SPIN_BACKOFF = 16
_perf_counter = time.perf_counter
# ``async for`` reads grow from 64 KiB up to this while every read fills the
# buffer (a bulk stream), and shrink back when reads come back small.
_ITER_MAX = 256 * 1024

try:  # the class of real (descriptor-backed) Trio sockets; private, so guarded
    from trio._socket import _SocketType as _RealTrioSocket
except ImportError:  # pragma: no cover - a future Trio moved it: generic path only
    _RealTrioSocket = None  # type: ignore[assignment,misc]

_SO_PEERCRED = getattr(_stdlib_socket, "SO_PEERCRED", None)
_LINUX = sys.platform.startswith("linux")
#: struct ucred on Linux: pid_t pid; uid_t uid; gid_t gid (uid/gid unsigned).
_UCRED = struct.Struct("iII")


_LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff=1, l_linger=0}

# The lingering close (see Connection.aclose).  SIOCOUTQNSD (Linux >= 2.6.39,
# <linux/sockios.h>): bytes in the send queue not yet *sent*.  SIOCOUTQ is the
# wrong test: it also counts bytes sent but not yet acknowledged, which a
# close does not discard.
if sys.platform.startswith("linux"):
    import fcntl
    import termios

    _SIOCOUTQNSD: int | None = 0x894B
    _FIONREAD: int | None = termios.FIONREAD  # SIOCINQ: bytes waiting to be read
else:  # pragma: no cover - not Linux
    _SIOCOUTQNSD = _FIONREAD = None
#: ``Connection._drain_mark`` while no drain has begun.
_NO_MARK = sys.maxsize
_INT_ZERO = struct.pack("i", 0)
_PEEK = _stdlib_socket.MSG_PEEK | getattr(_stdlib_socket, "MSG_DONTWAIT", 0)
# How much one read of a lingering close discards.
_LINGER_READ = 65536


def unsent_bytes(sock: Any) -> int:
    """Bytes queued on ``sock`` that the kernel has not sent yet; 0 where unknown.

    Linux's ``SIOCOUTQNSD``.  Unix sockets (which hand data straight to the
    peer's queue) and other systems report 0.
    """
    if _SIOCOUTQNSD is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), _SIOCOUTQNSD, _INT_ZERO)
    except OSError:
        return 0
    value: int = struct.unpack("i", raw)[0]
    return value


def linger_needed(sock: Any) -> bool:
    """Whether closing ``sock`` now could make the kernel discard data we sent.

    Decided at close time, before anything more is written, with one
    non-blocking ``recv(1, MSG_PEEK)``:

    * it finds the peer's EOF, or an error (a reset): close now -- the peer
      sends nothing more, or the connection is gone anyway;
    * it finds data waiting: linger -- closing with unread input makes the
      kernel answer with RST, which throws away our unsent bytes (and, on
      some systems, the peer's unread ones);
    * nothing waiting, but bytes still unsent (:func:`unsent_bytes` > 0):
      linger -- a request the peer pipelines meanwhile would reset us;
    * otherwise close now.

    Measured on the reference machine: 0.4-0.8 µs with data or EOF waiting
    (one system call), 2-3.5 µs when nothing is waiting (the ``EAGAIN``
    exception and the ``ioctl``); see ``benchmarks/micro/linger_check.py``
    and ``benchmarks/results/micro.txt``.
    """
    try:
        data = sock.recv(1, _PEEK)
    except BlockingIOError:
        return unsent_bytes(sock) > 0
    except OSError:
        return False
    return bool(data)


def check_close_linger(call: str, value: object) -> float:
    """``close_linger``: finite seconds >= 0 (0 closes at once).

    Infinite is refused: a silent peer that never closes would hold the
    descriptor (and, past ``max_connections`` lingers, a slot) for good.

    Raises:
        TypeError, ValueError: as :func:`trionet._validate.check_seconds`,
            the message naming ``call``.
    """
    with public_call(call):
        seconds = check_seconds("close_linger", value, infinite=False)
    assert seconds is not None
    return seconds


def arm_reset(sock: Any) -> None:
    """Make the next ``close()`` of ``sock`` send RST (``SO_LINGER`` 0), not FIN.

    A no-op for Unix sockets, which have no reset.  Failures are ignored: the
    close that follows still happens.  Works on stdlib and Trio sockets.
    """
    if sock.family == _AF_UNIX:
        return
    try:
        sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass


def read_peer_credentials(sock: Any) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of a Unix socket's peer, or None where not available.

    Linux only: other systems lay ``SO_PEERCRED`` out differently, or lack it.
    Works on stdlib and Trio sockets alike.

    Raises:
        OSError: ``getsockopt`` failed (e.g. the socket is closed).
    """
    if _SO_PEERCRED is None or not _LINUX:
        return None
    raw = sock.getsockopt(_stdlib_socket.SOL_SOCKET, _SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return (pid, uid, gid)


_AF_UNIX = getattr(_stdlib_socket, "AF_UNIX", None)


@attrs.frozen
class ConnOptions:
    """Per-connection settings, one shared instance per server or client plan (internal).

    Kept in one slot, not one per setting: every slot costs each idle
    connection 8 bytes.
    """

    #: ``schedule_budget`` (1 = strict Trio).
    budget: int = DEFAULT_SCHEDULE_BUDGET
    #: ``close_linger`` seconds (0 = close at once).
    close_linger: float = DEFAULT_CLOSE_LINGER

    @classmethod
    def of(cls, budget: int, close_linger: float) -> ConnOptions:
        """The shared default instance when the values are the defaults, else a new one."""
        if budget == DEFAULT_OPTIONS.budget and close_linger == DEFAULT_OPTIONS.close_linger:
            return DEFAULT_OPTIONS
        return cls(budget, close_linger)


DEFAULT_OPTIONS: Final = ConnOptions()

# Connection._closed: open; closed to its users with the descriptor still
# open (a lingering close); closed.  Connection._eof: bits.
_OPEN, _LINGERING, _CLOSED = 0, 1, 2
_EOF_SENT, _EOF_SEEN = 1, 2


class _Owner(Protocol):
    """What a Connection needs from the server that owns it (none for clients)."""

    draining: bool
    drain_silent: bool
    #: Set when the server begins a graceful drain (``Connection.draining``).
    drain_event: trio.Event

    def _connection_closed(self, conn: Connection) -> None: ...

    def _linger_changed(self, delta: int) -> None: ...


@attrs.frozen
class ConnectionInfo:
    """A read-only snapshot of one connection, for stats, logs and access policies."""

    #: Process-unique connection id (also ``Connection.id``).
    id: int
    #: The remote address.
    peer: Address
    #: The local address.
    local: Address
    #: Wall-clock time (``time.time()``) when the connection was accepted or made.
    opened_at: float
    #: Bytes received so far.
    bytes_received: int = 0
    #: Bytes sent so far.
    bytes_sent: int = 0
    #: ``(pid, uid, gid)`` of a Unix-socket peer (``SO_PEERCRED``), else None.
    peer_credentials: tuple[int, int, int] | None = None


def raw_socket_of(sock: trio.socket.SocketType) -> _stdlib_socket.socket | None:
    """The stdlib socket inside a real Trio socket, or None (custom factory sockets)."""
    if _RealTrioSocket is not None and type(sock) is _RealTrioSocket:
        raw = sock._sock
        if isinstance(raw, _stdlib_socket.socket):
            return raw
    return None


def _try_recv(raw: _stdlib_socket.socket, size: int) -> bytes | None:
    """``raw.recv(size)``, or None if nothing is waiting (``EAGAIN``).

    A plain function, not inline in the coroutines that call it: an exception
    raised *in* a coroutine makes CPython materialise that coroutine's frame
    object (~250 bytes), which then lives as long as the coroutine -- for a
    parked idle connection, for its whole life.  Caught here, the
    ``BlockingIOError`` only touches this short-lived frame.
    """
    try:
        return raw.recv(size)
    except BlockingIOError:
        return None


def _stop(iterating: bool) -> bytes | None:
    # A drain ends the receive: None for the internal callers, the end of the
    # loop for ``async for`` (which calls _recv_into_nothing directly).
    if iterating:
        raise StopAsyncIteration
    return None


def _closed_error() -> trio.ClosedResourceError:
    return trio.ClosedResourceError("this connection was already closed")


def _try_send(raw: _stdlib_socket.socket, data: Any) -> int:
    """``raw.send(data)``, or 0 if the send buffer is full (see :func:`_try_recv`)."""
    try:
        return raw.send(data)
    except BlockingIOError:
        return 0


class Connection(trio.abc.HalfCloseableStream):
    """A connected byte stream: a :class:`trio.abc.HalfCloseableStream` plus extras.

    Servers create one per accepted socket and hand it to the handler;
    :func:`trionet.connect` returns one to the caller, who owns it (use
    ``async with conn:`` or ``await conn.aclose()``).

    Args:
        socket: a connected ``SOCK_STREAM`` Trio socket; the Connection owns it
            (closes it), but the caller may still hold it, so such a
            Connection parks in Trio's own waits.
        peer: the remote address, if already known (else ``getpeername()``).
        local: the local address, if already known (else asked lazily).
        schedule_budget: 1 (the default) is Trio's strict rule: every call
            is a schedule point.  With N > 1, of N receives in a row on this
            connection that complete at once only the N-th yields (N - 1
            skip their schedule point); a send always yields, and every call
            is still a cancel point.  The budget is per connection; see the
            module notes.

    Attributes:
        socket: the underlying ``trio.socket.SocketType``.  On a server
            connection it is made on first use (the fast path never needs it)
            and from then on the connection parks in Trio's own waits, since
            whoever holds it may close it directly; asked for after the
            connection closed, it raises ``trio.ClosedResourceError``.
        peer: the remote :class:`~trionet.TCPAddress` / :class:`~trionet.UnixAddress`.
        local: the local address (for a client: the one the kernel chose).
        id: a process-unique integer, used in logs and ``ConnectionInfo``.
        opened_at: wall-clock time the connection was accepted or made.
        bytes_received: bytes read from the socket so far.
        bytes_sent: bytes written to the socket so far.

    Buffered reads (:meth:`receive_exactly`, :meth:`receive_until`,
    :meth:`receive_line`) and :meth:`receive_some` share one buffer, so they
    can be mixed freely.  ``async for chunk in conn`` yields chunks until EOF
    -- and, on a server connection, until a graceful drain begins while
    nothing is buffered, so keep-alive loops end by themselves.

    Example::

        async def handler(conn: trionet.Connection) -> None:
            request = await conn.receive_line()
            await conn.send_all(b"you said: " + request + b"\\n")
    """

    __slots__ = (
        "_armed",
        "_buf",
        "_closed",
        "_coop_left",
        "_drain_mark",
        "_eof",
        "_iter_scope",
        "_local",
        "_opts",
        "_owner",
        "_peer_errors",
        "_pfd",
        "_poller",
        "_raw",
        "_receive_busy",
        "_rtask",
        "_rx_iter_waiting",
        "_rx_size",
        "_scope",
        "_seen_at",
        "_seen_bytes",
        "_send_busy",
        "_spin_skip",
        "_tsock",
        "_waits",
        "_wtask",
        "bytes_received",
        "bytes_sent",
        "id",
        "opened_at",
        "peer",
        "peer_reset",
    )

    def __init__(
        self,
        socket: trio.socket.SocketType,
        *,
        peer: Address | None = None,
        local: Address | None = None,
        schedule_budget: int = DEFAULT_SCHEDULE_BUDGET,
        close_linger: float = DEFAULT_CLOSE_LINGER,
        _owner: _Owner | None = None,
    ) -> None:
        if not isinstance(socket, trio.socket.SocketType):
            raise TypeError(f"Connection needs a trio socket, not {type(socket).__name__}")
        if socket.type != _stdlib_socket.SOCK_STREAM:
            raise ValueError("Connection needs a SOCK_STREAM socket")
        with public_call("Connection()"):
            check_count("schedule_budget", schedule_budget, minimum=1)
        close_linger = check_close_linger("Connection()", close_linger)
        self._tsock: trio.socket.SocketType | None = socket
        # The caller holds the Trio socket and may close it behind our back;
        # only Trio's own waits hear about that (notify_closing), so a
        # Connection made this way never parks on the poller.
        options = ConnOptions.of(schedule_budget, close_linger)
        self._setup(raw_socket_of(socket), peer, local, options, _owner, None)

    @classmethod
    def _adopt(
        cls,
        raw: _stdlib_socket.socket,
        peer: Address | None = None,
        local: Address | None = None,
        options: ConnOptions | None = None,
        owner: _Owner | None = None,
    ) -> Connection:
        """A Connection straight on a stdlib socket nobody else holds (internal).

        Used for accepted sockets.  (``connect`` keeps ``Connection(sock)``: a
        custom socket factory may hold on to the Trio socket it made.)  The
        Trio socket wrapper
        (~180 bytes) is made only if someone asks for :attr:`socket`; until
        then only this Connection can close the socket, so its waits may
        park on the poller (see :mod:`trionet._poller`).
        """
        self = cls.__new__(cls)
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
        owner: _Owner | None,
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
        self.peer: Address = peer
        self._local = local
        self.id = next(_ids)
        self.opened_at = time.time()
        self.bytes_received = 0
        self.bytes_sent = 0
        #: True once an operation on this connection failed because the peer
        #: reset it or the pipe broke (used to tell resets from handler bugs).
        self.peer_reset = False
        self._peer_errors: list[BaseException] | None = None
        self._buf: bytearray | None = None
        self._receive_busy = False
        self._rx_iter_waiting = False
        self._rx_size = DEFAULT_RECEIVE_SIZE
        self._waits = 0
        self._spin_skip = 0
        self._send_busy = False
        #: _OPEN; _LINGERING (closed to its users, the descriptor still open:
        #: see aclose); _CLOSED.  Tested for truth on the hot paths.
        self._closed = _OPEN
        #: _EOF_SENT | _EOF_SEEN (the peer will send nothing more).
        self._eof = 0
        self._opts = options
        self._coop_left = options.budget
        self._owner = owner
        #: During a drain: ``async for`` ends once this many bytes were received.
        self._drain_mark = _NO_MARK
        self._iter_scope: trio.CancelScope | None = None
        # Server bookkeeping (idle reaper): the handler's cancel scope and the
        # byte total / time at which the reaper last saw progress.
        self._scope: trio.CancelScope | None = None
        self._seen_bytes = 0
        self._seen_at = 0.0

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

    @property
    def local(self) -> Address:
        """The local address (computed once, on first use).

        Raises:
            trio.ClosedResourceError: first asked for after the connection closed.
        """
        if self._local is None:
            try:
                sockname = self._sock().getsockname()
            except OSError as exc:
                raise translate_stream_error(exc) from exc
            self._local = address_from_sockaddr(self._sock().family, sockname)
        return self._local

    @property
    def closed(self) -> bool:
        """True once :meth:`close`, :meth:`aclose` or :meth:`abort` was called."""
        return self._closed != _OPEN

    @property
    def _fd_open(self) -> bool:
        # The descriptor is open: not closed, or closed but lingering.
        return self._closed != _CLOSED

    @property
    def _eof_sent(self) -> bool:
        return bool(self._eof & _EOF_SENT)

    @property
    def _close_linger(self) -> float:
        return self._opts.close_linger

    @property
    def draining(self) -> trio.Event:
        """A :class:`trio.Event` set when the owning server begins a graceful drain.

        Never set for client connections.
        """
        owner = self._owner
        if owner is None:
            return trio.Event()  # never set: a client connection is never drained
        return owner.drain_event

    @property
    def peer_credentials(self) -> tuple[int, int, int] | None:
        """``(pid, uid, gid)`` of a Unix-socket peer via ``SO_PEERCRED``; None otherwise.

        Linux only (other systems lay ``SO_PEERCRED`` out differently, or lack it).
        """
        if self._sock().family != _AF_UNIX or self._closed:
            return None
        try:
            return read_peer_credentials(self._sock())
        except OSError as exc:
            raise translate_stream_error(exc) from exc

    def info(self) -> ConnectionInfo:
        """A frozen :class:`ConnectionInfo` snapshot of this connection."""
        try:
            local = self.local
        except OSError:
            local = self.peer
        creds = None
        if self._sock().family == _AF_UNIX:
            try:
                creds = self.peer_credentials
            except OSError:
                creds = None
        return ConnectionInfo(
            self.id,
            self.peer,
            local,
            self.opened_at,
            self.bytes_received,
            self.bytes_sent,
            creds,
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<trionet.Connection #{self.id} peer={self.peer}{state}>"

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Set a socket option on the underlying socket."""
        self._sock().setsockopt(level, option, value)

    def getsockopt(self, level: int, option: int) -> int:
        """Read an integer socket option from the underlying socket."""
        value: int = self._sock().getsockopt(level, option)
        return value

    # ------------------------------------------------------------------
    # Internal helpers

    async def _coop(self) -> None:
        # Called after a *receive* that completed without waiting: a schedule
        # point when the budget is spent (every time with the default of 1).
        # Sends do not come here: they always yield and refill the budget.
        # The per-message receive path (_recv_into_nothing) carries an inline
        # copy of these lines, saving a coroutine call per message; a change
        # here must be made there too.
        left = self._coop_left - 1
        if left <= 0:
            self._coop_left = self._opts.budget
            await _schedule_point()
        else:
            self._coop_left = left

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

    def _peer_fault(self, exc: BaseException) -> BaseException:
        # Remember exceptions this connection raised because of its peer, so
        # the server can tell "the peer reset/broke the protocol" (not a
        # handler bug) from the same exception types raised by other streams.
        if self._peer_errors is None:
            self._peer_errors = []
        self._peer_errors.append(exc)
        return exc

    def raised_by_peer(self, exc: BaseException) -> bool:
        """True if ``exc`` is an error this connection raised because of its peer."""
        errors = self._peer_errors
        return errors is not None and any(exc is e for e in errors)

    def _mark_broken(self, exc: OSError) -> BaseException:
        err = translate_stream_error(exc)
        if isinstance(err, trio.BrokenResourceError):
            self.peer_reset = True
            self._peer_fault(err)
        return err

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
            data = _try_recv(raw, max_bytes)
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
                    data = _try_recv(raw, max_bytes)
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
                data = _try_recv(raw, max_bytes)
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

    def _check_receive(self) -> None:
        if self._receive_busy:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        if self._closed:
            raise trio.ClosedResourceError("this connection was already closed")

    async def _fill(self, minimum_chunk: int) -> bool:
        """Read more into the buffer; False at EOF."""
        # No schedule point here: the buffered helper that called us adds one
        # at the end if nothing on the way was one.
        data = await self._recv_into_nothing(
            min(max(minimum_chunk, DEFAULT_RECEIVE_SIZE), _MAX_FILL), False, coop=False
        )
        if not data:
            return False
        if self._buf is None:
            self._buf = bytearray(data)
        else:
            self._buf += data
        return True

    def _take(self, n: int) -> bytes:
        buf = self._buf
        assert buf is not None
        if n >= len(buf):
            self._buf = None
            return bytes(buf)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    # ------------------------------------------------------------------
    # trio.abc.ReceiveStream

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive up to ``max_bytes`` bytes; ``b""`` means the peer sent EOF.

        Bytes left over in the buffer by the buffered helpers are returned
        first.  A cancel point always; a schedule point unless a
        ``schedule_budget`` > 1 lets an immediately-completed call skip it.

        Args:
            max_bytes: the most bytes to return (default 64 KiB); must be >= 1.

        Returns:
            Between 1 and ``max_bytes`` bytes, or ``b""`` at end-of-file.

        Raises:
            trio.BusyResourceError: another task is receiving on this connection.
            trio.ClosedResourceError: the connection was closed (by us).
            trio.BrokenResourceError: the peer reset it (``ECONNRESET`` and friends).
            ValueError: ``max_bytes`` < 1.

        Example::

            while data := await conn.receive_some():
                process(data)
        """
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        elif type(max_bytes) is not int:
            max_bytes = operator.index(max_bytes)
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self._check_receive()
        if self._buf:
            await checkpoint_if_cancelled()
            out = self._take(max_bytes)
            await self._coop()
            return out
        data = await self._recv_into_nothing(max_bytes, False)
        assert data is not None
        return data

    def __aiter__(self) -> Self:
        return self

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

    async def _anext_slow(self) -> bytes:
        self._check_receive()
        if self._buf:
            await checkpoint_if_cancelled()
            out = self._take(DEFAULT_RECEIVE_SIZE)
            await self._coop()
            return out
        if self.bytes_received >= self._drain_mark and self._drain_stops_iteration():
            # Everything that had arrived when the drain began was delivered.
            await checkpoint()
            raise StopAsyncIteration
        # During a drain this still takes what the kernel already holds (a
        # request that arrived just before the drain is served), and stops
        # instead of waiting for more.
        more = await self._recv_into_nothing(self._rx_size, self._owner is not None)
        if not more:
            raise StopAsyncIteration
        return more

    def _drain_stops_iteration(self) -> bool:
        # ``async for`` ends on drain for a connection that has already been
        # talking.  One that has received nothing yet -- typically swept from
        # the kernel queue, its client's first request still on the way -- is
        # given a moment (Server: _FIRST_REQUEST_ALLOWANCE) before it counts
        # as idle too; the grace period bounds everything.
        owner = self._owner
        return (
            owner is not None and owner.draining and (self.bytes_received > 0 or owner.drain_silent)
        )

    def _mark_drain(self) -> None:
        """A drain begins: ``async for`` delivers what has arrived by now, then ends.

        Without this mark a peer that never stops sending -- a client
        streaming to an echo service -- would keep the loop going until the
        grace period ran out and the handler was cancelled.  The kernel's
        count of bytes waiting (``FIONREAD``) is added to what was already
        received; descriptor-less sockets, which cannot be asked, keep the
        rule of ending once nothing is waiting.
        """
        raw = self._raw
        if raw is None or self._closed or _FIONREAD is None:
            return
        try:
            waiting = struct.unpack("i", fcntl.ioctl(raw.fileno(), _FIONREAD, _INT_ZERO))[0]
        except OSError:
            return
        self._drain_mark = self.bytes_received + waiting

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
    # Buffered reads

    async def receive_exactly(self, n: int) -> bytes:
        """Receive exactly ``n`` bytes (e.g. a fixed-size header).

        Args:
            n: how many bytes; 0 returns ``b""`` at once.

        Returns:
            Exactly ``n`` bytes.

        Raises:
            IncompleteRead: end-of-file came first; ``.partial`` has what arrived.
            trio.BrokenResourceError: the peer reset the connection.

        Example::

            header = await conn.receive_exactly(4)
            body = await conn.receive_exactly(int.from_bytes(header, "big"))
        """
        if type(n) is not int:
            n = operator.index(n)
        if n < 0:
            raise ValueError("n must be >= 0")
        self._check_receive()
        if n == 0:
            await checkpoint()
            return b""
        waits = self._waits
        while self._buf is None or len(self._buf) < n:
            if not await self._fill(n - (len(self._buf) if self._buf else 0)):
                partial = self._take(len(self._buf)) if self._buf else b""
                raise self._peer_fault(
                    IncompleteRead(
                        f"connection closed after {len(partial)} of {n} bytes",
                        partial=partial,
                        expected=n,
                    )
                )
        await checkpoint_if_cancelled()
        out = self._take(n)
        if self._waits == waits:
            await self._coop()
        return out

    async def receive_until(self, delimiter: bytes, *, max_size: int) -> bytes:
        """Receive up to ``delimiter`` and return the data before it.

        The delimiter is consumed but not returned.

        Args:
            delimiter: the non-empty byte string that ends a message.
            max_size: the longest message (delimiter not counted) accepted.

        Returns:
            The bytes before the first occurrence of ``delimiter``.

        Raises:
            MessageTooLong: no delimiter within ``max_size`` bytes (the data
                stays buffered).
            IncompleteRead: end-of-file before the delimiter; ``.partial`` has
                the bytes that did arrive (``b""`` at a clean end-of-file).

        Example::

            header = await conn.receive_until(b"\\r\\n\\r\\n", max_size=16384)
        """
        if not isinstance(delimiter, (bytes, bytearray)) or not delimiter:
            raise ValueError("delimiter must be non-empty bytes")
        if type(max_size) is not int or max_size < 0:
            raise ValueError(f"max_size must be an int >= 0, not {max_size!r}")
        return await self._receive_delimited(bytes(delimiter), max_size, False)

    async def receive_line(self, *, max_size: int = 65536) -> bytes:
        """Receive one ``\\n``-terminated line, without the ``\\n`` (or ``\\r\\n``).

        Args:
            max_size: the longest line accepted, terminator not counted.

        Returns:
            The line, without its ``\\n`` and without a ``\\r`` before it.

        Raises:
            MessageTooLong: the line is longer than ``max_size`` bytes (the
                data stays buffered).
            IncompleteRead: end-of-file before a full line.

        Example::

            command = await conn.receive_line(max_size=1024)
        """
        if type(max_size) is not int or max_size < 0:
            raise ValueError(f"max_size must be an int >= 0, not {max_size!r}")
        return await self._receive_delimited(b"\n", max_size, True)

    async def _receive_delimited(self, delimiter: bytes, max_size: int, strip_cr: bool) -> bytes:
        # One search loop for receive_until and receive_line.  The limit is
        # checked *before* anything is consumed, so MessageTooLong always
        # leaves the buffer untouched.  With L buffered bytes and no
        # delimiter, the message is at least L - len(delim) + 1 bytes long
        # (the delimiter may have begun in the last bytes), so it is hopeless
        # once L >= max_size + len(delim).  A line may also carry one "\r"
        # beyond max_size (it is stripped): one byte of slack.  Each search
        # resumes len(delim) - 1 bytes before the previous end, so a
        # delimiter split across reads is found, and found leftmost.
        self._check_receive()
        waits = self._waits
        dlen = len(delimiter)
        slack = 1 if strip_cr else 0
        start = 0
        while True:
            buf = self._buf
            if buf:
                idx = buf.find(delimiter, start)
                if idx >= 0:
                    end = idx
                    if strip_cr and end > 0 and buf[end - 1] == 0x0D:
                        end -= 1
                    if end > max_size:
                        break
                    await checkpoint_if_cancelled()
                    out = bytes(buf[:end])
                    if idx + dlen >= len(buf):
                        self._buf = None
                    else:
                        del buf[: idx + dlen]
                    if self._waits == waits:
                        await self._coop()
                    return out
                if len(buf) >= max_size + slack + dlen:
                    break
                start = max(0, len(buf) - dlen + 1)
            if not await self._fill(DEFAULT_RECEIVE_SIZE):
                partial = self._take(len(self._buf)) if self._buf else b""
                raise self._peer_fault(
                    IncompleteRead(
                        f"connection closed before {delimiter!r} (after {len(partial)} bytes)",
                        partial=partial,
                    )
                )
        what = "line" if strip_cr else "message"
        raise self._peer_fault(
            MessageTooLong(
                f"no {delimiter!r} within {max_size} bytes ({what} too long)", max_size=max_size
            )
        )

    # ------------------------------------------------------------------
    # trio.abc.SendStream

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
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        if self._closed:
            raise trio.ClosedResourceError("this connection was already closed")
        if self._eof & _EOF_SENT:
            raise trio.ClosedResourceError("can't send data after sending EOF")
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
            sent = _try_send(raw, data) if total else 0
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
                        n = _try_send(raw, rest)
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
    # Closing

    def close(self) -> None:
        """Close the socket now (synchronous; tasks blocked on it get ``ClosedResourceError``).

        Unlike :meth:`aclose` this never lingers: if the peer has sent bytes
        nobody read, the kernel answers the close with a reset (RST), and
        whatever is still unsent in our send buffer is thrown away.  Use
        ``await conn.aclose()`` for a goodbye that keeps that promise.
        """
        if not self._closed:
            self._mark_closed()
            self._close_fd()
        elif self._closed == _LINGERING:
            self._close_fd(after_linger=True)

    def _mark_closed(self) -> None:
        # The connection is closed to its users: stats folded, tasks parked on
        # the poller woken.  (Tasks in Trio's own waits are woken by
        # notify_closing: in _close_fd, or by a linger that keeps the descriptor.)
        self._closed = _LINGERING
        self._buf = None
        owner = self._owner
        if owner is not None:
            # The server folds this connection into its stats *before* the
            # FIN goes out, so a peer that saw EOF sees final figures.
            owner._connection_closed(self)
        if self._poller is not None:
            # Wake our parked tasks and leave the epoll set.
            self._poller.forget(self)

    def _close_fd(self, after_linger: bool = False) -> None:
        self._closed = _CLOSED
        if after_linger and self._poller is not None:
            # Drop what the poller may hold since _mark_closed (a task that
            # parked meanwhile is woken with ClosedResourceError).
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

    def abort(self) -> None:
        """Close at once with a TCP reset (RST) instead of an orderly FIN.

        Unsent data is discarded and the peer's next operation fails with
        ``ECONNRESET``.  Use it to refuse or punish a peer; use :meth:`aclose`
        for a normal goodbye.  Unix sockets have no RST: they just close.
        Calling it while the connection lingers (see :meth:`aclose`) ends the
        linger with a reset.

        Example::

            if not authorised:
                conn.abort()
                return
        """
        if self._closed == _CLOSED:
            return
        arm_reset(self._sock())
        self.close()

    def _wants_linger(self) -> bool:
        """Decide, before anything more is written, whether an orderly close must linger.

        See :func:`linger_needed`; a descriptor-less socket cannot be
        inspected without waiting, so it lingers unless EOF was seen.  A
        connection that never sent a byte has nothing a reset could discard.
        """
        if self._opts.close_linger <= 0 or self._eof & _EOF_SEEN or not self.bytes_sent:
            # Off; or the peer sends nothing more; or we never sent a byte,
            # so a reset cannot discard anything of ours.
            return False
        raw = self._raw
        if raw is None:
            # Another task blocked in the custom socket's recv could not be
            # woken without closing it: close at once then.
            return not self._receive_busy
        return linger_needed(raw)

    def _begin_orderly_close(self) -> bool:
        """Start an orderly close; True means "linger now" (await :meth:`_linger`).

        Decides whether to linger (:meth:`_wants_linger`); if not, closes at
        once as :meth:`close` does.  If so, the connection is closed to its
        users (stats folded, waiters woken) and our sending side is shut
        down -- the FIN follows the queued data -- but the descriptor stays
        open so the peer's late bytes can be read and thrown away.
        """
        if self._closed:
            # Closed already -- and if another aclose() is lingering on the
            # descriptor, that close is its to finish: cutting it short would
            # discard what it protects.
            return False
        linger = self._wants_linger()
        self._mark_closed()
        if linger:
            if self._raw is not None:
                # Wake tasks in Trio's waits; the descriptor stays open.
                trio.lowlevel.notify_closing(self._raw)
            if not self._eof & _EOF_SENT:
                try:
                    self._sock().shutdown(_stdlib_socket.SHUT_WR)
                except OSError:
                    linger = False  # reset or gone meanwhile: nothing to protect
        if not linger:
            self._close_fd()
        return linger

    async def _linger(self, seconds: float) -> None:
        """Read and discard until the peer's EOF, ``seconds``, or cancellation; then close.

        The descriptor is closed on every way out, a cancellation included.
        A :meth:`close` or :meth:`abort` from elsewhere ends it too.
        """
        owner = self._owner
        if owner is not None:
            owner._linger_changed(1)  # stats.lingering counts every linger
        try:
            with trio.move_on_after(seconds):
                raw = self._raw
                if raw is None:
                    sock = self.socket
                    while await sock.recv(_LINGER_READ):
                        pass
                    return
                while True:
                    data = _try_recv(raw, _LINGER_READ)
                    if data is None:
                        await wait_readable(raw)
                    elif not data:
                        return  # the peer's EOF: it has read everything we sent
        except (OSError, trio.ClosedResourceError, trio.BusyResourceError):
            # A reset (nothing left to protect); closed by close()/abort();
            # or someone holding ``conn.socket`` is reading it: stop here.
            pass
        finally:
            if self._closed == _LINGERING:
                self._close_fd(after_linger=True)
            if owner is not None:
                owner._linger_changed(-1)

    async def aclose(self) -> None:
        """Close the connection with an orderly FIN, never discarding what was sent.

        ``send_all`` returning means the kernel has the bytes, and this close
        does not throw them away.  If the peer has sent bytes nobody read (a
        pipelined request, say) -- or nothing is waiting but some of our bytes
        are not even sent yet -- a plain ``close()`` would make the kernel
        answer with a reset (RST) and drop the unsent tail.  So ``aclose``
        *lingers* then: it shuts down our sending side (the FIN follows the
        queued data), reads and discards whatever the peer still sends, and
        closes at the first of the peer's EOF, ``close_linger`` seconds, or
        cancellation.  Otherwise it closes at once.  A cancelled ``aclose``
        (``trio.aclose_forcefully`` included) closes at once.  Called while
        another ``aclose`` lingers, it returns without cutting that linger
        short (the connection is closed to its users either way); the
        synchronous :meth:`close` and :meth:`abort` do end it.

        Always a checkpoint (Trio's ``AsyncResource`` contract), and the
        socket is closed even if the call is cancelled; idempotent.  A
        server closes its connection itself (the same way) when the handler
        returns, so handlers rarely need it.

        Example::

            conn = await trionet.connect("tcp://127.0.0.1:7007")
            try:
                ...
            finally:
                await conn.aclose()
        """
        try:
            await checkpoint_if_cancelled()
        except BaseException:
            self.close()
            raise
        if self._begin_orderly_close():
            await self._linger(self._opts.close_linger)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def __aenter__(self) -> Self:
        return self


def configure_tcp_socket(
    sock: Any, *, nodelay: bool = True, keepalive: bool | float = False
) -> None:
    """Apply trionet's TCP defaults: ``TCP_NODELAY``, optional keepalive.

    ``keepalive=True`` turns on ``SO_KEEPALIVE`` with the system timers; a
    number also sets the idle time before probes (``TCP_KEEPIDLE``) in seconds.
    Failures are ignored (options are best effort, e.g. on Unix sockets).
    """
    try:
        if nodelay:
            sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
        if keepalive:
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_KEEPALIVE, 1)
            if not isinstance(keepalive, bool):
                idle = max(1, int(keepalive))
                if hasattr(_stdlib_socket, "TCP_KEEPIDLE"):
                    sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_KEEPIDLE, idle)
                if hasattr(_stdlib_socket, "TCP_KEEPINTVL"):
                    sock.setsockopt(
                        _stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_KEEPINTVL, max(1, idle // 3)
                    )
    except OSError:
        pass
