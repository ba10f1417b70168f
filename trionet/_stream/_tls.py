"""The TLS transport: ``ssl.SSLObject`` driven over trionet's own socket transport.

The stdlib's ``ssl`` module does all of TLS -- the record layer, the
handshake, the crypto (OpenSSL); trionet only moves bytes between an
``SSLObject`` and the socket, through two ``ssl.MemoryBIO``s.  Why not
``trio.SSLStream(transport)``?  It is correct and general, but a Python
state machine with its own locks, conflict detectors and copies around every
record, on top of the transport's own; here the socket transport's receive
and send primitives (the poller, the spin before parking, the schedule-point
budget) carry the ciphertext directly, so a TLS message costs the socket
path plus the crypto -- see the TLS rows of the benchmarks page.  (A handler
that wants ``trio.SSLStream`` anyway -- STARTTLS, say -- wraps it in a
:class:`~trionet._stream._wrapped.StreamConnection`.)

Two modules, one class: :class:`TLSConnection` here is making a TLS
connection, the handshake, what it negotiated (``conn.tls``,
:class:`~trionet.TLSInfo`) and the goodbye; the record I/O it inherits --
application bytes in and out, ciphertext over the socket, and how two tasks
share them -- is :class:`~trionet._stream._tls_io.TLSTransport`.  Byte
counters count *application* bytes.

Ending
------
A server treats the peer's end without ``close_notify`` as a normal end of
stream (``b""``): HTTPS clients do that all the time.  OpenSSL is not told
of such an end (it would hold the session failed), so the handler can still
send its reply, and the close its ``close_notify``.  A client is strict by
default: a truncated stream raises ``trio.BrokenResourceError``.  trionet
always sends ``close_notify`` when it closes (unless it aborts).  A
``send_all`` cancelled half-way through a record leaves the record stream
whole -- the rest of the record goes out first, with the next send or the
close -- so, as on a plain connection, an unknown prefix of its data was
sent and the connection goes on (where ``trio.SSLStream`` breaks).  An
orderly close that owes the peer bytes the kernel does not hold yet (that
rest, ciphertext still queued, a ``close_notify`` that does not fit in the
send buffer, or any ``close_notify`` on a socket without a descriptor)
lingers to send them, bounded by ``close_linger``.  The
lingering decision (``Connection.aclose``) is made on the socket before
``close_notify`` is written; if the close lingers, ``close_notify`` goes out
first, then the FIN.  ``send_eof`` raises ``LocalProtocolError``: TLS has no
half-close here.
"""

from __future__ import annotations

import socket as _stdlib_socket
import ssl
from typing import Any, Protocol

import trio
from trio.lowlevel import checkpoint

from .._address import Address
from .._exceptions import LocalProtocolError
from ._base import ConnectionOwner, ConnOptions
from ._clienthello import LIMIT as _HELLO_LIMIT
from ._clienthello import MORE, server_name
from ._info import TLSInfo
from ._sockopts import try_send
from ._tls_io import _RAW_READ as _RAW_READ
from ._tls_io import _WRITE_CHUNK as _WRITE_CHUNK
from ._tls_io import TLSTransport, _tls_error

__all__ = ["TLSConnection", "tls_connection_info"]


class _Negotiated(Protocol):
    """What a finished handshake answers: an ``ssl.SSLObject``, or a ``trio.SSLStream``."""

    def cipher(self) -> tuple[str, str, int] | None: ...

    def getpeercert(self) -> Any: ...

    def version(self) -> str | None: ...

    def selected_alpn_protocol(self) -> str | None: ...


def tls_connection_info(ssl_object: _Negotiated, server_name: str | None) -> TLSInfo:
    """The :class:`~trionet.TLSInfo` of a completed handshake."""
    cipher = ssl_object.cipher()
    cert = ssl_object.getpeercert()
    return TLSInfo(
        version=ssl_object.version() or "",
        cipher=cipher[0] if cipher else "",
        alpn_protocol=ssl_object.selected_alpn_protocol(),
        server_name=server_name,
        peer_certificate=cert or None,
    )


class TLSConnection(TLSTransport):
    """A :class:`~trionet.Connection` speaking TLS over a socket (see the module notes)."""

    __slots__ = (
        "_hello",
        "_info",
        "_notify_sent",
    )

    # ------------------------------------------------------------------
    # Making one

    @classmethod
    def _server_side(
        cls,
        sock: Any,
        peer: Address,
        local: Address | None,
        options: ConnOptions,
        owner: ConnectionOwner | None,
        context: ssl.SSLContext,
    ) -> TLSConnection:
        """An accepted socket that will shake hands as a TLS server (the TLS stage)."""
        if isinstance(sock, _stdlib_socket.socket):
            self = cls._adopt(sock, peer, local, options, owner)
        else:
            self = cls(sock, peer=peer, local=local, _owner=owner, _options=options)
        assert isinstance(self, TLSConnection)
        self._start(context.wrap_bio(self._in, self._out, server_side=True), b"")
        return self

    @classmethod
    def _client_side(
        cls,
        sock: trio.socket.SocketType,
        peer: Address,
        local: Address | None,
        options: ConnOptions,
        context: ssl.SSLContext,
        server_hostname: str | None,
    ) -> TLSConnection:
        """A connected socket that will shake hands as a TLS client."""
        self = cls(sock, peer=peer, local=local, _options=options)
        ssl_object = context.wrap_bio(
            self._in, self._out, server_side=False, server_hostname=server_hostname
        )
        self._start(ssl_object, None)
        return self

    def _init_common(self, *args: Any, **kwargs: Any) -> None:
        super()._init_common(*args, **kwargs)
        self._info: TLSInfo | None = None
        self._notify_sent = False

    def _start(self, ssl_object: ssl.SSLObject, hello: bytes | None) -> None:
        self._ssl = ssl_object
        # A server collects the first flight to read the name it asks for.
        self._hello: bytes | None = hello

    # ------------------------------------------------------------------
    # Introspection

    @property
    def tls(self) -> TLSInfo | None:
        """What TLS negotiated (:class:`~trionet.TLSInfo`); None before the handshake."""
        return self._info

    def _pending_bytes(self) -> int | None:
        # Ciphertext (in the kernel, and not yet decrypted in the incoming
        # BIO) counts as the application bytes it carries, plus a little
        # overhead: the drain mark may lie a little beyond what arrived, and
        # ``async for`` then ends when nothing more is waiting.
        kernel = super()._pending_bytes()
        if kernel is None:
            return None
        return kernel + self._in.pending + self._ssl.pending()

    def _transport_health(self) -> str | None:
        if self._ssl.pending() or self._in.pending:
            return "holding unread data"
        return super()._transport_health()

    # ------------------------------------------------------------------
    # The handshake (the server's TLS stage; inside connect for a client)

    async def _handshake(self) -> None:
        """Shake hands; raise ``trio.BrokenResourceError`` (a peer fault) on failure.

        A certificate failure keeps its ``ssl.SSLCertVerificationError`` as
        the cause, a reset its ``OSError``.
        """
        try:
            await self._shake_hands()
        except OSError as exc:  # the socket's (a reset): ssl.SSLError is handled inside
            raise self._mark_broken(exc) from exc

    async def _shake_hands(self) -> None:
        ssl_object = self._ssl
        while True:
            failure: ssl.SSLError | None = None
            try:
                ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                failure = exc
            if failure is not None:
                self.peer_reset = True
                await self._flush_quietly()  # the alert tells the peer why
                raise self._peer_fault(_tls_error(f"TLS handshake failed: {failure}", failure))
            await self._flush()
            data = await self._raw_recv(_RAW_READ, False)
            if not data:
                raise self._peer_fault(
                    _tls_error("the peer closed the connection during the TLS handshake")
                )
            if self._hello is not None:
                self._note_hello(data)
            self._in.write(data)
        if not ssl_object.server_side:
            await self._flush()  # the last flight: the handshake is not done without it
        else:
            try:
                await self._flush()  # TLS 1.3 session tickets, after the handshake completed
            except OSError:
                # The handshake did complete; the peer left before reading the
                # tickets (a balancer's TLS health check does this).  Not a
                # failed handshake: the handler meets the reset like any other.
                self.peer_reset = True
        name = ssl_object.server_hostname if not ssl_object.server_side else None
        if self._hello is not None:
            parsed = server_name(self._hello)
            name = parsed if isinstance(parsed, str) else None
            self._hello = None
        self._info = tls_connection_info(ssl_object, name)

    def _unread_ciphertext(self, data: bytes) -> None:
        """Received before the handshake by someone else (a PROXY stage): TLS reads it first."""
        if self._hello is not None:
            self._note_hello(data)
        self._in.write(data)

    def _note_hello(self, data: bytes) -> None:
        assert self._hello is not None
        hello = self._hello + data
        if server_name(hello) is MORE and len(hello) < _HELLO_LIMIT:
            self._hello = hello
        else:
            self._hello = hello[:_HELLO_LIMIT]  # decided: parsed at the end

    async def _flush_quietly(self) -> None:
        try:
            with trio.move_on_after(1):
                await self._flush()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def send_eof(self) -> None:
        """Not available: TLS has no half-close here.

        Raises:
            LocalProtocolError: always (finish with :meth:`aclose`, which sends
                ``close_notify``).
        """
        await checkpoint()
        raise LocalProtocolError(
            "send_eof() is not available on a TLS connection: TLS has no half-close here "
            "(close with aclose(), which sends close_notify)"
        )

    # ------------------------------------------------------------------
    # Closing (see Connection.aclose)

    def _queue_close_notify(self) -> None:
        if self._notify_sent or self._info is None:
            return  # sent already, or no session to close
        self._notify_sent = True
        try:
            self._ssl.unwrap()
        except ssl.SSLError:
            pass  # SSLWantReadError: ours is queued; the peer's is not needed

    def _try_flush_now(self) -> bool:
        """Send pending ciphertext without waiting; True if none is left."""
        raw = self._raw
        out = self._out
        if raw is None:
            return not out.pending and self._unsent is None
        while True:
            data = self._unsent  # the rest of a record a cancelled send began
            if data is not None:
                self._unsent = None
            elif out.pending:
                data = out.read()
            else:
                return True
            sent = try_send(raw, data)
            if sent < len(data):
                self._unsent = data[sent:]  # sent first by whoever flushes next
                return False

    def _begin_linger(self) -> bool:
        # The decision to linger was made before close_notify; now send it,
        # and the FIN after it -- once it is out (else the linger sends it).
        try:
            self._queue_close_notify()
            if self._flushing or not self._try_flush_now():
                if self._raw is not None:
                    trio.lowlevel.notify_closing(self._raw)
                return True
        except OSError:
            return False  # reset or gone meanwhile: nothing to protect
        return super()._begin_linger()

    def _wants_linger(self) -> bool:
        # TLS may owe the peer bytes the kernel does not hold yet: the rest
        # of a record a cancelled send began, ciphertext still in the BIO,
        # or close_notify that does not fit in the send buffer now -- and
        # without a descriptor nothing goes out without an await.  Only a
        # linger (bounded by close_linger) can send them; closing at once
        # would truncate the stream the peer reads.
        if self._opts.close_linger <= 0 or self._info is None:
            return super()._wants_linger()
        if self._unsent is not None or self._out.pending or self._raw is None:
            return True
        if super()._wants_linger():  # decided on the socket before close_notify is written
            return True
        try:
            self._queue_close_notify()
            return not self._try_flush_now()
        except OSError:
            return False  # reset or gone meanwhile: nothing to protect

    async def _discard_until_eof(self) -> None:
        if self._out.pending or self._flushing or self._unsent is not None:
            # What could not go out without waiting (close_notify, the rest
            # of a record): send it now, then the FIN (shutting down twice
            # is harmless).
            self._final_flush = True
            try:
                await self._flush()
            finally:
                self._final_flush = False
            super()._begin_linger()
            if self._raw is None and not super()._wants_linger():
                # Without a descriptor the linger was needed to send what TLS
                # owed (close_notify, a record's rest); the plain rule --
                # nothing sent, the peer's EOF seen, or the socket's own
                # linger_needed() -- decides whether to wait for the peer's
                # EOF too.
                return
        await super()._discard_until_eof()

    def _close_transport(self, *, after_linger: bool) -> None:
        if not after_linger and self._raw is not None and not self._flushing:
            # An immediate close still says goodbye, as far as it can
            # without waiting (nothing, if abort() armed a reset).
            try:
                self._queue_close_notify()
                self._try_flush_now()
            except OSError:
                pass
        super()._close_transport(after_linger=after_linger)

    def _arm_reset(self) -> None:
        self._notify_sent = True  # a reset says no goodbye
        super()._arm_reset()
