"""``StreamConnection``: the ``Connection`` API over any ``trio.abc.Stream``.

A handler that needs a stream trionet did not make -- ``trio.SSLStream`` for
STARTTLS or a TLS library of its own choice, a compressing or framing
layer -- still wants what a :class:`~trionet.Connection` gives: buffered
reads, byte counters, ``conn.info()``, and above all an ``async for`` that a
server drain ends.  ``StreamConnection(stream)`` is that API around the
stream, by composition: every operation is the stream's, plus the
bookkeeping.  (The built-in transports are subclasses instead, to keep their
hot paths one frame deep -- see :mod:`._base`; here the stream's own frames
are the price of using it.)

What it inherits
----------------
The stream usually wraps a trionet connection: ``trio.SSLStream(conn, ...)``
in a handler.  ``StreamConnection`` follows the ``transport_stream``
attributes down to that *inner* connection (:mod:`._layers`;
``trio.SSLStream`` and similar wrappers expose one, and so does
``StreamConnection`` itself, so wrappers nest) and takes from it the peer
and local addresses, ``opened_at``, the ``id``, the settings
(``schedule_budget``; ``close_linger`` is the inner connection's business,
below) and the owning server -- the drain.  The ``id`` is the inner
connection's on purpose: it names the network connection, as the server's
logs and ``server.connections`` do, not the Python object; a stream with no
trionet connection under it gets a fresh id.  Counters are the wrapper's
own: *application* bytes, what passed through ``send_all``/``receive_some``
here (the inner connection counts what it carried: ciphertext, under
``trio.SSLStream``).

The drain
---------
A server drains the connections it knows -- the inner one -- and it only
ends an ``async for`` on that connection; the ``trio.SSLStream`` above it
calls plain ``receive_some``, which a drain must not end.  So while an
``async for`` on the wrapper waits, the wait runs in a cancel scope and the
wrapper leaves a relay where the drain interrupts the inner connection
(:func:`._beneath.install_relay`): the drain's interruption reaches the
wrapper, which
decides by its own counters (a connection that has received nothing yet
waits for the second call, as everywhere) and cancels its wait.  Cancelling
``trio.SSLStream.receive_some`` while it waits for ciphertext is safe (the
stream stays usable; only a cancel inside a handshake or renegotiation
breaks it).  During a drain a wrapper's ``async for`` receives once more
only if the inner connection holds unread bytes (its buffer, or its
socket's queue); bytes the stream itself has buffered are invisible from
here, so a drain may end the loop with such a pipelined message unread.

Peer faults
-----------
The server classifies what escapes a handler against the inner connection
(``trionet._server._classify``).  An exception from the stream is the
peer's when its chain holds an error the inner connection raised because of
its peer, or when it is a ``trio.BrokenResourceError`` caused by an
``OSError`` (``ssl.SSLError`` included; a certificate verification failure
excepted: that is about whom *we* trust).  Such exceptions are registered
here (:meth:`~trionet.Connection.raised_by_peer`), and -- with this
wrapper's own (``IncompleteRead`` from ``receive_exactly``, say) -- passed
on to the inner connection, so the server counts a reset or a protocol
error, not a handler bug.  One exception: an error with an ``ssl.SSLError``
in its chain is left to the server's own chain rule, which tells a missing
``close_notify`` (a reset) from garbage (a protocol error).

Closing
-------
``aclose()`` is the stream's: ``trio.SSLStream`` sends ``close_notify``,
then closes its transport -- the inner connection, whose ``aclose`` makes
the lingering close that never discards what ``send_all`` accepted.
``close()`` and ``abort()`` are synchronous and a stream can only be closed
by awaiting: they close (or reset) the inner connection, which wakes every
task blocked beneath, and mark the wrapper closed.  Over a stream with no
trionet connection under it they only mark the wrapper closed: later calls
raise ``trio.ClosedResourceError``, a task already blocked in the stream
stays there until the stream answers, and the stream is closed by
``aclose()``.

The wrapper asks the inner connection for nothing but through the named
functions of :mod:`._beneath` (and :func:`._hooks.health`).
"""

from __future__ import annotations

import ssl
from typing import Final, final

import trio
from trio.lowlevel import checkpoint

from .._address import Address
from .._exceptions import LocalProtocolError
from ._base import (
    _CLOSED,
    _EOF_SEEN,
    _EOF_SENT,
    _LINGERING,
    DEFAULT_OPTIONS,
    Connection,
    _closed_error,
)
from ._beneath import (
    blame_peer,
    chain,
    check_address,
    has_unread,
    install_relay,
    negotiated,
    remove_relay,
    settings_of,
    tls_caused,
)
from ._hooks import health
from ._info import TLSInfo
from ._layers import address_of, inner_connection, socket_beneath

__all__ = ["StreamConnection"]

_CALL: Final = "StreamConnection()"


@final
class StreamConnection(Connection):
    """The :class:`~trionet.Connection` API over any ``trio.abc.Stream`` (see the module notes).

    Wrap a stream trionet did not make -- typically ``trio.SSLStream``
    around the handler's own connection -- and keep buffered reads, byte
    counters, :meth:`info` and a drain-aware ``async for``.  If the stream
    wraps a trionet connection (followed down ``transport_stream``), the
    wrapper takes its peer, local address, ``opened_at``, ``id``, settings
    and server from it: a server drain ends ``async for`` on the wrapper as
    it does on the connection itself.

    Args:
        stream: any ``trio.abc.Stream``; the wrapper owns it (``aclose()``
            closes it).
        peer: the remote address, to override what the inner connection
            says (a PROXY protocol peer, say); without either, the peer of a
            ``trio.SocketStream`` under the stream, else the unnamed address
            ``UnixAddress("")``.
        local: the local address, likewise.

    Raises:
        TypeError: ``stream`` is not a ``trio.abc.Stream``, or ``peer`` /
            ``local`` is not an address.

    Attributes:
        transport_stream: the wrapped stream (Trio's name for it, so chains
            of wrappers can be followed).
        id: the inner connection's id (one network connection, one id, as
            the server logs it); a fresh one without an inner connection.
        bytes_received: application bytes received through the wrapper.
        bytes_sent: application bytes sent through the wrapper.

    ``conn.tls`` is the handshake's :class:`~trionet.TLSInfo` when the stream
    is a ``trio.SSLStream`` that has shaken hands (``server_name`` is only
    known on a client), else None.  :meth:`send_eof` works when the stream is
    a ``trio.abc.HalfCloseableStream``.  Every operation is a checkpoint, the
    stream's own operations assumed to be (Trio's rule); one task may send
    and one receive at a time.

    Example::

        async def handler(conn: trionet.Connection) -> None:
            tls = trio.SSLStream(conn, context, server_side=True)
            async with trionet.StreamConnection(tls) as secure:
                async for request in secure:     # a drain ends it at once
                    await secure.send_all(answer(request))
    """

    __slots__ = ("_inner", "_stream", "_tls_info")

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        peer: Address | None = None,
        local: Address | None = None,
    ) -> None:
        if not isinstance(stream, trio.abc.Stream):
            raise TypeError(f"{_CALL}: stream must be a trio.abc.Stream, not {stream!r}")
        check_address(_CALL, "peer", peer)
        check_address(_CALL, "local", local)
        self._stream = stream
        self._tls_info: TLSInfo | None = None
        inner = self._inner = inner_connection(stream)
        if inner is None:
            if peer is None:
                peer = address_of(socket_beneath(stream), peer=True)
            self._init_common(peer, local, DEFAULT_OPTIONS, None)
            return
        self._init_common(peer if peer is not None else inner.peer, local, *settings_of(inner))
        self.id = inner.id
        self.opened_at = inner.opened_at
        self.proxy = inner.proxy

    # ------------------------------------------------------------------
    # Introspection

    @property
    def transport_stream(self) -> trio.abc.Stream:
        """The wrapped stream."""
        return self._stream

    def _local_address(self) -> Address:
        inner = self._inner
        if inner is not None:
            return inner.local
        return address_of(socket_beneath(self._stream), peer=False)

    @property
    def tls(self) -> TLSInfo | None:
        """What the stream's TLS negotiated (:class:`~trionet.TLSInfo`), else None.

        Known for a ``trio.SSLStream`` whose handshake completed (a client
        reports the ``server_name`` it sent; a server cannot tell which it
        was asked for), or for a trionet TLS connection wrapped directly.
        """
        info = self._tls_info
        if info is None:
            info = self._tls_info = negotiated(self._stream)
        return info

    @property
    def peer_credentials(self) -> tuple[int, int, int] | None:
        """The inner connection's ``peer_credentials`` (a Unix-socket peer), else None."""
        inner = self._inner
        return None if inner is None else inner.peer_credentials

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        tls = " tls" if self.tls is not None else ""
        over = type(self._stream).__name__
        return f"<trionet.StreamConnection #{self.id} peer={self.peer} over {over}{tls}{state}>"

    def _transport_health(self) -> str | None:
        inner = self._inner
        if inner is None:
            return "no way to check its health"
        return health(inner)

    # ------------------------------------------------------------------
    # Peer faults

    def _note_failure(self, exc: BaseException) -> None:
        """Register ``exc``, raised by the stream, if its peer caused it."""
        if self._caused_by_peer(exc):
            if isinstance(exc, trio.BrokenResourceError):
                self.peer_reset = True
            self._peer_fault(exc)

    def _caused_by_peer(self, exc: BaseException) -> bool:
        inner = self._inner
        broken = isinstance(exc, trio.BrokenResourceError)
        for link in chain(exc):
            if inner is not None and inner.raised_by_peer(link):
                return True
            if broken and isinstance(link, ssl.SSLCertVerificationError):
                return False  # about whom *we* chose to trust
            if broken and isinstance(link, OSError):  # ssl.SSLError is one
                return True
        # A stream that broke because of its peer says so again, causeless.
        return broken and self.peer_reset and exc.__cause__ is None and exc.__context__ is None

    def _peer_fault(self, exc: BaseException) -> BaseException:
        super()._peer_fault(exc)
        inner = self._inner
        if inner is not None and not inner.raised_by_peer(exc) and not tls_caused(exc):
            blame_peer(inner, exc)  # the server asks the inner connection
        return exc

    # ------------------------------------------------------------------
    # Receiving

    async def _recv_into_nothing(
        self, max_bytes: int, interruptible: bool, coop: bool = True, iterating: bool = False
    ) -> bytes | None:
        """Receive from the stream (not the buffer); None means "drain interrupted".

        The stream's ``receive_some`` is a checkpoint (Trio's rule), so no
        schedule point is added (``coop`` has nothing to do).
        """
        self._receive_busy = True
        try:
            if interruptible and self._drain_stops_iteration() and not self._inner_has_unread():
                # The drain ends the loop, and nothing is known to be waiting.
                await checkpoint()
                data = None
            else:
                self._waits += 1  # the stream's operation is a checkpoint
                data = await (
                    self._receive_interruptibly(max_bytes)
                    if interruptible
                    else self._stream.receive_some(max_bytes)
                )
        except BaseException as exc:
            self._note_failure(exc)
            raise
        finally:
            self._receive_busy = False
        if data is None:
            if iterating:
                raise StopAsyncIteration
            return None
        if type(data) is not bytes:
            data = bytes(data)
        self.bytes_received += len(data)
        if not data:
            self._eof |= _EOF_SEEN
            if iterating:
                raise StopAsyncIteration
        return data

    async def _receive_interruptibly(self, max_bytes: int) -> bytes | bytearray | None:
        # An ``async for`` wait that a drain ends (see the module notes):
        # None if it did.
        inner = self._inner
        with trio.CancelScope() as scope:
            self._iter_scope = scope
            relay = None if inner is None else install_relay(inner, self)
            try:
                data = await self._stream.receive_some(max_bytes)
            finally:
                self._iter_scope = None
                if relay is not None:
                    assert inner is not None
                    remove_relay(inner, relay)
        if scope.cancelled_caught:
            return None
        return data

    def _inner_has_unread(self) -> bool:
        # Bytes waiting beneath the stream: a drain still lets ``async for``
        # take them.
        inner = self._inner
        return inner is not None and has_unread(inner)

    # ------------------------------------------------------------------
    # Sending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data`` through the stream.

        Raises:
            trio.BusyResourceError: another task is sending on this connection.
            trio.ClosedResourceError: after :meth:`send_eof` or a close.
            trio.BrokenResourceError: the stream broke (the peer's fault is
                recorded, as on every connection).
        """
        self._check_send()
        self._send_busy = True
        try:
            await self._stream.send_all(data)
        except BaseException as exc:
            self._note_failure(exc)
            raise
        finally:
            self._send_busy = False
        # (A send is a schedule point: the budget starts again.)
        self._coop_left = self._opts.budget
        self.bytes_sent += len(data) if type(data) is bytes else memoryview(data).nbytes

    async def wait_send_all_might_not_block(self) -> None:
        """The stream's ``wait_send_all_might_not_block`` (``trio.abc.SendStream`` API).

        Raises:
            trio.BusyResourceError: another task is sending on this connection.
            trio.ClosedResourceError: the connection was closed.
        """
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        if self._closed:
            raise _closed_error()
        self._send_busy = True
        try:
            await self._stream.wait_send_all_might_not_block()
        except BaseException as exc:
            self._note_failure(exc)
            raise
        finally:
            self._send_busy = False

    async def send_eof(self) -> None:
        """Half-close through the stream, if it is a ``trio.abc.HalfCloseableStream``.

        Calling it again does nothing.

        Raises:
            LocalProtocolError: the stream cannot half-close (``trio.SSLStream``
                cannot: finish with :meth:`aclose`).
            trio.BusyResourceError: another task is sending on this connection.
            trio.ClosedResourceError: the connection was closed.
        """
        stream = self._stream
        if not isinstance(stream, trio.abc.HalfCloseableStream):
            await checkpoint()
            raise LocalProtocolError(
                f"send_eof() is not available: the wrapped {type(stream).__name__} is not "
                "a trio.abc.HalfCloseableStream (close with aclose())"
            )
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._send_busy = True
        try:
            if self._closed or self._eof & _EOF_SENT:
                await checkpoint()
                if self._closed:
                    raise _closed_error()
                return
            await stream.send_eof()
            self._eof |= _EOF_SENT
        except BaseException as exc:
            self._note_failure(exc)
            raise
        finally:
            self._send_busy = False

    # ------------------------------------------------------------------
    # Closing (see the module notes)

    def close(self) -> None:
        """Close the inner trionet connection now, and this wrapper with it (synchronous).

        Tasks blocked beneath get ``ClosedResourceError``.  Like
        ``Connection.close()`` it never lingers (and ends a lingering close
        of the inner connection).  Without an inner connection it only marks
        the wrapper closed; the stream itself is closed by :meth:`aclose`.
        """
        if not self._closed:
            self._closed = _LINGERING  # closed to its users; the stream not yet
            self._buf = None
        inner = self._inner
        if inner is not None:
            inner.close()

    def abort(self) -> None:
        """Reset the inner trionet connection (RST), and close this wrapper.

        Without an inner connection it is :meth:`close`.
        """
        inner = self._inner
        if inner is not None:
            inner.abort()
        self.close()

    async def aclose(self) -> None:
        """Close the stream with its own goodbye (``trio.SSLStream``: ``close_notify``).

        Over a trionet connection the stream's close ends in that
        connection's ``aclose``, the lingering close that never discards
        what ``send_all`` accepted.  Always a checkpoint; closed even if
        cancelled; idempotent.
        """
        if self._closed == _CLOSED:
            await checkpoint()
            return
        self._closed = _CLOSED
        self._buf = None
        try:
            await self._stream.aclose()
        except trio.ClosedResourceError:
            inner = self._inner
            if inner is None or not inner.closed:
                raise
            # The connection beneath was closed already (by close(), by the
            # server, by whoever holds it): the stream's goodbye had nowhere
            # to go, and the close is done.
            await trio.lowlevel.cancel_shielded_checkpoint()
