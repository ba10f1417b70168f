"""The TLS transport: ``ssl.SSLObject`` driven over trionet's own socket transport.

The stdlib's ``ssl`` module does all of TLS -- the record layer, the
handshake, the crypto (OpenSSL); this module only moves bytes between an
``SSLObject`` and the socket, through two ``ssl.MemoryBIO``s.  Why not
``trio.SSLStream(transport)``?  It is correct and general, but a Python
state machine with its own locks, conflict detectors and copies around every
record, on top of the transport's own; here the socket transport's receive
and send primitives (the poller, the spin before parking, the schedule-point
budget) carry the ciphertext directly, so a TLS message costs the socket
path plus the crypto -- see the TLS rows of the benchmarks page.

Byte counters count *application* bytes.  ``conn.tls`` describes what was
negotiated (:class:`~trionet.TLSInfo`).

Concurrency
-----------
One ``send_all`` and one ``receive_some`` may run at once, as on a plain
connection.  The ``SSLObject`` is only ever called synchronously (no await
inside a call), so the two tasks cannot interleave inside OpenSSL; what they
share is the socket:

* *Writing ciphertext*: a read may produce bytes to send (a TLS 1.3
  ``KeyUpdate`` answer, renegotiation in TLS 1.2), and a write always does.
  Whoever flushes the outgoing BIO holds ``_flushing``; the other leaves its
  bytes in the BIO -- the flusher sends everything pending before it lets go
  -- or, if it must know its bytes went out (``send_all``), waits for it.
* *Reading ciphertext*: a write may need the peer's bytes first
  (``SSLWantReadError`` during a TLS 1.2 renegotiation).  Whoever reads the
  socket holds ``_feeding``; the other waits for it to feed the incoming BIO
  and tries again.  Application data that arrives meanwhile stays inside
  the ``SSLObject`` for the next ``receive_some``.

Ending
------
A server treats the peer's end without ``close_notify`` as a normal end of
stream (``b""``): HTTPS clients do that all the time.  A client is strict by
default: a truncated stream raises ``trio.BrokenResourceError``.  trionet
always sends ``close_notify`` when it closes (unless it aborts).  The
lingering decision (``Connection.aclose``) is made on the socket before
``close_notify`` is written; if the close lingers, ``close_notify`` goes out
first, then the FIN.  ``send_eof`` raises ``LocalProtocolError``: TLS has no
half-close here.
"""

from __future__ import annotations

import socket as _stdlib_socket
import ssl
from typing import Any

import trio
from trio.lowlevel import (
    ParkingLot,
    checkpoint,
    checkpoint_if_cancelled,
    wait_readable,
    wait_task_rescheduled,
    wait_writable,
)

from .._address import Address
from .._exceptions import LocalProtocolError
from ._base import _EOF_SEEN, ConnectionOwner, ConnOptions, _closed_error
from ._checkpoints import schedule_point as _schedule_point
from ._clienthello import LIMIT as _HELLO_LIMIT
from ._clienthello import MORE, server_name
from ._info import TLSInfo
from ._poller import READ as _READ
from ._poller import WRITE as _WRITE
from ._socket import SocketConnection, _stop
from ._sockopts import try_recv, try_send

__all__ = ["TLSConnection", "tls_connection_info"]

# Ciphertext read per recv(); a TLS record is at most 16 KiB + overhead.
_RAW_READ = 65536
# Application bytes encrypted per SSLObject.write() (bounds the outgoing
# BIO's growth for a large send_all).
_WRITE_CHUNK = 256 * 1024


def tls_connection_info(ssl_object: ssl.SSLObject, server_name: str | None) -> TLSInfo:
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


def _tls_error(message: str, exc: BaseException | None = None) -> trio.BrokenResourceError:
    err = trio.BrokenResourceError(message)
    if exc is not None:
        err.__cause__ = exc
    return err


class TLSConnection(SocketConnection):
    """A :class:`~trionet.Connection` speaking TLS over a socket (see the module notes)."""

    __slots__ = (
        "_feeding",
        "_flushing",
        "_hello",
        "_in",
        "_info",
        "_lot",
        "_notify_sent",
        "_out",
        "_ssl",
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
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._info: TLSInfo | None = None
        self._flushing = False
        self._feeding = False
        self._lot: ParkingLot | None = None
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
        kernel = super()._pending_bytes()
        return None if kernel is None else kernel + self._ssl.pending()

    def _transport_health(self) -> str | None:
        if self._ssl.pending() or self._in.pending:
            return "holding unread data"
        return super()._transport_health()

    # ------------------------------------------------------------------
    # The handshake (the server's TLS stage; inside connect for a client)

    async def _handshake(self) -> None:
        """Shake hands; raise ``trio.BrokenResourceError`` (a peer fault) on failure.

        A certificate failure keeps its ``ssl.SSLCertVerificationError`` as
        the cause.
        """
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
        await self._flush()  # the last flight, session tickets
        name = ssl_object.server_hostname if not ssl_object.server_side else None
        if self._hello is not None:
            parsed = server_name(self._hello)
            name = parsed if isinstance(parsed, str) else None
            self._hello = None
        self._info = tls_connection_info(ssl_object, name)

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

    # ------------------------------------------------------------------
    # Raw ciphertext I/O on the socket (no counting: counters are for
    # application bytes)

    async def _raw_recv(self, max_bytes: int, interruptible: bool) -> bytes | None:
        """Ciphertext from the socket; None: a drain interrupted ``async for``."""
        raw = self._raw
        if raw is None:
            return await self._raw_recv_generic(max_bytes, interruptible)
        while True:
            data = try_recv(raw, max_bytes)
            if data is not None:
                return data
            if interruptible and self._drain_stops_iteration():
                return None
            self._rx_iter_waiting = interruptible
            self._waits += 1
            try:
                if self._park(_READ):
                    await wait_task_rescheduled(self._abort_read)
                else:
                    await wait_readable(raw)
            except trio.ClosedResourceError:
                owner = self._owner
                if not interruptible or self._closed or owner is None or not owner.draining:
                    raise
            finally:
                self._rx_iter_waiting = False
                self._rtask = None
            if self._closed:
                raise _closed_error()

    async def _raw_recv_generic(self, max_bytes: int, interruptible: bool) -> bytes | None:
        self._waits += 1  # every path below is a checkpoint
        if interruptible and self._drain_stops_iteration():
            await checkpoint()
            return None
        if not interruptible:
            return await self.socket.recv(max_bytes)
        with trio.CancelScope() as scope:
            self._iter_scope = scope
            try:
                data = await self.socket.recv(max_bytes)
            finally:
                self._iter_scope = None
        return None if scope.cancelled_caught else data

    async def _raw_send_all(self, data: bytes) -> bool:
        """Send all of ``data`` to the socket; True if it had to wait."""
        raw = self._raw
        if raw is None:
            self._waits += 1  # trio.socket's send is a checkpoint
            view = memoryview(data)
            while view:
                view = view[await self.socket.send(view) :]
            return True
        sent = try_send(raw, data)
        if sent == len(data):
            return False
        with memoryview(data) as view:
            while sent < len(data):
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
                    self._wtask = None
                if self._closed:
                    raise _closed_error()
                with view[sent:] as rest:
                    sent += try_send(raw, rest)
        return True

    def _wake_all(self) -> None:
        lot = self._lot
        if lot is not None:
            lot.unpark_all()

    async def _wait_turn(self) -> None:
        lot = self._lot
        if lot is None:
            lot = self._lot = ParkingLot()
        self._waits += 1
        await lot.park()

    async def _flush(self) -> bool:
        """Send every pending ciphertext byte; True if it had to wait.

        If another task is flushing, wait for it: it sends everything pending
        (ours included) before it lets go.
        """
        waited = False
        while self._flushing:
            await self._wait_turn()
            waited = True
        if not self._out.pending:
            return waited
        self._flushing = True
        try:
            while self._out.pending:
                if await self._raw_send_all(self._out.read()):
                    waited = True
        finally:
            self._flushing = False
            self._wake_all()
        return waited

    async def _feed(self, interruptible: bool) -> bool | None:
        """Read ciphertext into the incoming BIO: True fed, False EOF, None interrupted.

        If another task is reading the socket, wait for it to feed instead.
        """
        if self._feeding:
            await self._wait_turn()
            return True
        self._feeding = True
        try:
            data = await self._raw_recv(_RAW_READ, interruptible)
        finally:
            self._feeding = False
            self._wake_all()
        if data is None:
            return None
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    # ------------------------------------------------------------------
    # Receiving application bytes

    def _decrypt(self, ssl_object: ssl.SSLObject, max_bytes: int) -> bytes | None:
        """Application bytes from the ``SSLObject``; None: it needs more ciphertext."""
        try:
            return ssl_object.read(max_bytes)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""  # the peer's close_notify: a clean end
        except ssl.SSLEOFError as exc:
            if not self._opts.lenient_tls_eof:
                self.peer_reset = True
                raise self._peer_fault(
                    _tls_error("the peer ended the TLS stream without close_notify", exc)
                ) from exc
            return b""  # a server: clients skip close_notify all the time
        except ssl.SSLError as exc:
            self.peer_reset = True
            raise self._peer_fault(_tls_error(f"TLS error: {exc}", exc)) from exc

    async def _recv_into_nothing(
        self, max_bytes: int, interruptible: bool, coop: bool = True, iterating: bool = False
    ) -> bytes | None:
        if iterating and (self._receive_busy or self._closed or self._buf):
            return await self._anext_slow()
        self._receive_busy = True
        try:
            await checkpoint_if_cancelled()
            ssl_object = self._ssl
            incoming = self._in
            waits = self._waits  # counts the schedule points taken below
            while True:
                # With no new ciphertext, nothing decrypted pending and no end
                # seen, read() could only raise SSLWantReadError: skip it (an
                # exception per message, and one kept alive while we wait).
                if incoming.pending or ssl_object.pending() or incoming.eof or self._eof:
                    data = self._decrypt(ssl_object, max_bytes)
                    if data is not None:
                        if self._out.pending and not self._flushing:
                            await self._flush()  # e.g. a KeyUpdate answer
                        break
                if self._out.pending and not self._flushing:
                    await self._flush()  # a post-handshake answer of ours
                if await self._feed(interruptible) is None:
                    return _stop(iterating)
            n = len(data)
            self.bytes_received += n
            if self._waits != waits:
                self._coop_left = self._opts.budget
            elif coop:
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
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._receive_busy = False

    # ------------------------------------------------------------------
    # Sending application bytes

    def _encrypt(self, ssl_object: ssl.SSLObject, chunk: memoryview) -> int | None:
        """Encrypt ``chunk`` into the outgoing BIO; None: the peer must speak first."""
        try:
            return ssl_object.write(chunk)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLError as exc:
            self.peer_reset = True
            raise self._peer_fault(_tls_error(f"TLS error: {exc}", exc)) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send all of ``data`` (see ``Connection.send_all``)."""
        self._check_send()
        self._send_busy = True
        try:
            await checkpoint_if_cancelled()
            ssl_object = self._ssl
            waits = self._waits  # counts the schedule points taken below
            with memoryview(data) as view:
                flat = view.cast("B") if view.ndim != 1 or view.itemsize != 1 else view
                total = len(flat)
                pos = 0
                while pos < total:
                    with flat[pos : pos + _WRITE_CHUNK] as chunk:
                        n = self._encrypt(ssl_object, chunk)
                    if n is None:
                        # The peer must speak first (a renegotiation).
                        if await self._feed(False) is False:
                            raise _tls_error("the peer closed the connection")
                        continue
                    await self._flush()
                    pos += n
                    self.bytes_sent += n
            self._coop_left = self._opts.budget
            if self._waits == waits:
                await _schedule_point()
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._send_busy = False

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
            return not out.pending
        while out.pending:
            data = out.read()
            sent = try_send(raw, data)
            if sent < len(data):
                # Put the rest back in front: nothing else is queued behind it
                # (closing), so writing it back keeps the order.
                rest = data[sent:]
                left = out.read()
                out.write(rest + left)
                return False
        return True

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

    async def _discard_until_eof(self) -> None:
        if self._out.pending or self._flushing:
            # close_notify could not go out without waiting: send it now,
            # then the FIN (shutting down twice is harmless).
            await self._flush()
            super()._begin_linger()
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
