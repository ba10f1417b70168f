"""``Connection``: the one stream API handlers and clients hold, over any transport.

What every transport shares lives here: peer and local addresses, byte
counters, the buffered reads (a mixin, :mod:`._buffered`) sharing one buffer
with ``receive_some`` and ``async for``, the schedule-point budget, the
drain-aware end of ``async for`` (a mixin, :mod:`._iteration`), peer-fault
bookkeeping, and the public close methods (the close protocol behind them --
close at once, or linger first -- is the mixin :mod:`._closing`; the
settings are :mod:`._options`).  Each transport is a subclass that supplies
the primitives:

* :class:`~trionet._stream._socket.SocketConnection` -- a socket: the kernel
  fast path, or the generic path of a socket from a custom Trio socket
  factory;
* :class:`~trionet._stream._tls.TLSConnection` -- TLS (``ssl.SSLObject``)
  driven over that socket transport;
* :class:`~trionet._stream._wrapped.StreamConnection` -- any
  ``trio.abc.Stream`` (the Connection API around a stream of your own,
  ``trio.SSLStream`` say).

Why subclasses and not a transport object held by the connection
(composition)?  The hot path: a message through a held transport would cross
one more coroutine frame per operation, and a parked idle connection would
keep that frame alive for its whole life (~230 bytes each, measured).  The
primitives are methods of the transport class itself, so ``async for chunk
in conn`` on a socket runs one coroutine deep, as before.  ``Connection`` is
the type everyone names; calling it with a socket (``trionet.Connection(sock)``)
makes a socket connection.  (``StreamConnection`` is the composition case:
there the stream is someone else's, and its frames are the price of using it.)

What a server keeps per connection (its slot, host lease, idle clock) lives
in the server's own record (``trionet._server._record``), not here; a
connection only knows its owner through the narrow :class:`ConnectionOwner`
interface: the drain state it must honour, and whom to tell that it closed.
"""

from __future__ import annotations

import itertools
import operator
import time
from typing import TYPE_CHECKING, Any, Final

import trio
from trio.lowlevel import checkpoint_if_cancelled

from .._address import Address
from .._exceptions import translate_stream_error
from ._buffered import DEFAULT_RECEIVE_SIZE, BufferedReads
from ._checkpoints import schedule_point as _schedule_point
from ._closing import _CLOSED as _CLOSED
from ._closing import _EOF_SEEN as _EOF_SEEN
from ._closing import _EOF_SENT as _EOF_SENT
from ._closing import _LINGERING as _LINGERING
from ._closing import _OPEN as _OPEN
from ._closing import OrderlyClose
from ._closing import _closed_error as _closed_error
from ._info import ConnectionInfo, TLSInfo
from ._iteration import DrainAwareIteration, Interruptible
from ._options import DEFAULT_CLOSE_LINGER as DEFAULT_CLOSE_LINGER
from ._options import DEFAULT_OPTIONS as DEFAULT_OPTIONS
from ._options import DEFAULT_SCHEDULE_BUDGET as DEFAULT_SCHEDULE_BUDGET
from ._options import ConnOptions as ConnOptions
from ._options import check_close_linger as check_close_linger
from ._owner import ConnectionOwner as ConnectionOwner

if TYPE_CHECKING:
    from typing import Self

    from .._proxy._info import ProxyInfo

__all__ = [
    "DEFAULT_CLOSE_LINGER",
    "DEFAULT_OPTIONS",
    "DEFAULT_RECEIVE_SIZE",
    "DEFAULT_SCHEDULE_BUDGET",
    "ConnOptions",
    "Connection",
    "ConnectionOwner",
    "check_close_linger",
]

_ids = itertools.count(1)

#: ``Connection._drain_mark`` while no drain has begun.
NO_MARK: Final = 1 << 62


class Connection(BufferedReads, DrainAwareIteration, OrderlyClose, trio.abc.HalfCloseableStream):
    """A connected byte stream: a :class:`trio.abc.HalfCloseableStream` plus extras.

    Servers create one per accepted connection and hand it to the handler;
    :func:`trionet.connect` returns one to the caller, who owns it (use
    ``async with conn:`` or ``await conn.aclose()``).  Over TLS it is the
    same class, with :attr:`tls` set.

    ``trionet.Connection(socket, ...)`` wraps a connected Trio socket:

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
            is still a cancel point.  The budget is per connection.
        close_linger: the most seconds :meth:`aclose` lingers (see there);
            0 closes at once.

    Attributes:
        peer: the remote :class:`~trionet.TCPAddress` / :class:`~trionet.UnixAddress`.
        id: a process-unique integer, used in logs and ``ConnectionInfo``.
        opened_at: wall-clock time the connection was accepted or made.
        bytes_received: application bytes received so far.
        bytes_sent: application bytes sent so far.
        peer_reset: True once an operation failed because the peer reset
            the connection (or broke TLS).
        proxy: on a server bind with ``proxy_protocol="required"``, what the
            PROXY header said (:class:`~trionet.ProxyInfo`, with ``source``
            the proxy's own address; ``peer`` is then the original client);
            None elsewhere.

    Buffered reads (:meth:`receive_exactly`, :meth:`receive_until`,
    :meth:`receive_line`) and :meth:`receive_some` share one buffer, so they
    can be mixed freely.  ``async for chunk in conn`` yields chunks until EOF
    -- and, on a server connection, until a graceful drain begins and what
    had arrived by then was delivered, so keep-alive loops end by themselves.

    Example::

        async def handler(conn: trionet.Connection) -> None:
            request = await conn.receive_line()
            await conn.send_all(b"you said: " + request + b"\\n")
    """

    __slots__ = (
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
        "_receive_busy",
        "_rx_size",
        "_send_busy",
        "_waits",
        "bytes_received",
        "bytes_sent",
        "id",
        "opened_at",
        "peer",
        "peer_reset",
        "proxy",
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        if cls is Connection:
            # trionet.Connection(socket, ...): the socket transport.
            from ._socket import SocketConnection

            cls = SocketConnection  # type: ignore[assignment]
        return super().__new__(cls)

    def _init_common(
        self,
        peer: Address,
        local: Address | None,
        options: ConnOptions,
        owner: ConnectionOwner | None,
    ) -> None:
        self.peer = peer
        self._local = local
        self.id = next(_ids)
        self.opened_at = time.time()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.peer_reset = False
        self.proxy: ProxyInfo | None = None
        self._peer_errors: list[BaseException] | None = None
        self._buf: bytearray | None = None
        self._receive_busy = False
        self._send_busy = False
        self._rx_size = DEFAULT_RECEIVE_SIZE
        self._waits = 0
        #: _OPEN; _LINGERING (closed to its users, the transport still open:
        #: see aclose); _CLOSED.  Tested for truth on the hot paths.
        self._closed = _OPEN
        #: _EOF_SENT | _EOF_SEEN (the peer will send nothing more).
        self._eof = 0
        self._opts = options
        self._coop_left = options.budget
        self._owner = owner
        #: During a drain: ``async for`` ends once this many bytes were received.
        self._drain_mark = NO_MARK
        #: What to cancel to end an ``async for`` wait on a drain (see the
        #: module notes); None when no such wait is in progress.
        self._iter_scope: Interruptible | None = None

    # ------------------------------------------------------------------
    # Introspection

    @property
    def local(self) -> Address:
        """The local address (computed once, on first use).

        Raises:
            trio.ClosedResourceError: first asked for after the connection closed.
        """
        if self._local is None:
            self._local = self._local_address()
        return self._local

    def _local_address(self) -> Address:
        raise NotImplementedError  # pragma: no cover - every transport knows it

    @property
    def closed(self) -> bool:
        """True once :meth:`close`, :meth:`aclose` or :meth:`abort` was called."""
        return self._closed != _OPEN

    @property
    def _fd_open(self) -> bool:
        # The transport is open: not closed, or closed but lingering.
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
    def tls(self) -> TLSInfo | None:
        """What TLS negotiated (:class:`~trionet.TLSInfo`), or None on a plain connection."""
        return None

    @property
    def peer_credentials(self) -> tuple[int, int, int] | None:
        """``(pid, uid, gid)`` of a Unix-socket peer via ``SO_PEERCRED``; None otherwise.

        Linux only (other systems lay ``SO_PEERCRED`` out differently, or lack it).
        """
        return None

    def info(self) -> ConnectionInfo:
        """A frozen :class:`ConnectionInfo` snapshot of this connection."""
        try:
            local = self.local
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            local = self.peer
        try:
            creds = self.peer_credentials
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
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
        tls = " tls" if self.tls is not None else ""
        return f"<trionet.Connection #{self.id} peer={self.peer}{tls}{state}>"

    def _health(self) -> str | None:
        """Why this connection, idle, must not be lent again; None if it looks fine.

        The pool's one question to a connection (``ConnectionPool``).  A
        connection may die while idle: the peer closed it, reset it, or sent
        bytes nobody asked for -- the transport tells.
        """
        if self._closed:
            return "closed by its borrower"
        if self._receive_busy or self._send_busy:
            return "still in use by another task"
        if self._eof & _EOF_SENT:
            return "half-closed by its borrower"
        if self._buf:
            return "holding unread data"
        return self._transport_health()

    def _transport_health(self) -> str | None:
        return "no way to check its health"

    # ------------------------------------------------------------------
    # Shared internals

    async def _coop(self) -> None:
        # Called after a *receive* that completed without waiting: a schedule
        # point when the budget is spent (every time with the default of 1).
        # Sends do not come here: they always yield and refill the budget.
        # The socket fast path carries an inline copy of these lines.
        left = self._coop_left - 1
        if left <= 0:
            self._coop_left = self._opts.budget
            await _schedule_point()
        else:
            self._coop_left = left

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

    def _check_receive(self) -> None:
        if self._receive_busy:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        if self._closed:
            raise _closed_error()

    def _check_send(self) -> None:
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        if self._closed:
            raise _closed_error()
        if self._eof & _EOF_SENT:
            raise trio.ClosedResourceError("can't send data after sending EOF")

    # ------------------------------------------------------------------
    # Receiving (the transport supplies _recv_into_nothing)

    async def _recv_into_nothing(
        self, max_bytes: int, interruptible: bool, coop: bool = True, iterating: bool = False
    ) -> bytes | None:
        """Receive from the transport (not the buffer); None means "drain interrupted".

        Counts ``bytes_received`` and notes the peer's EOF.  ``interruptible``
        (``async for`` on a server connection): during a drain, take what is
        already there but do not wait for more.  ``iterating``: raise
        ``StopAsyncIteration`` instead of returning ``b""`` or None.
        """
        raise NotImplementedError  # pragma: no cover - every transport has one

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

    # ------------------------------------------------------------------
    # Closing (the protocol is ._closing's; the transport supplies the primitives)

    def close(self) -> None:
        """Close now (synchronous; tasks blocked on it get ``ClosedResourceError``).

        Unlike :meth:`aclose` this never lingers: if the peer has sent bytes
        nobody read, the kernel answers the close with a reset (RST), and
        whatever is still unsent in our send buffer is thrown away.  Use
        ``await conn.aclose()`` for a goodbye that keeps that promise.
        Called while the connection lingers, it ends the linger.
        """
        if not self._closed:
            self._mark_closed()
            self._close_transport(after_linger=False)
        elif self._closed == _LINGERING:
            self._close_transport(after_linger=True)

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
        self._arm_reset()
        self.close()

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
        synchronous :meth:`close` and :meth:`abort` do end it.  On a TLS
        connection the decision is made before ``close_notify`` is written,
        and ``close_notify`` is always sent.

        Always a checkpoint (Trio's ``AsyncResource`` contract), and the
        connection is closed even if the call is cancelled; idempotent.  A
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
