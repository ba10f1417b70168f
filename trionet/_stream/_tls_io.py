"""TLS I/O: application bytes through an ``ssl.SSLObject``, ciphertext over the socket.

The stdlib's ``ssl`` module does all of TLS -- the record layer, the crypto
(OpenSSL); this module only moves bytes between an ``SSLObject`` and the
socket, through two ``ssl.MemoryBIO``s: :class:`TLSTransport` is the socket
transport with its receive and send replaced by "decrypt what the socket
brought" and "encrypt, then flush to the socket".  The socket transport's
primitives (the poller, the parking, the schedule-point budget) carry the
ciphertext directly.  Making a TLS connection, the handshake and the
goodbye are :class:`~trionet._stream._tls.TLSConnection`'s, a subclass.

Byte counters count *application* bytes; the ciphertext I/O below counts
nothing.

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
"""

from __future__ import annotations

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

from ._base import _EOF_SEEN
from ._checkpoints import schedule_point as _schedule_point
from ._closing import _closed_while_waiting
from ._poller import READ as _READ
from ._poller import WRITE as _WRITE
from ._socket import SocketConnection
from ._socket_receive import _stop
from ._sockopts import try_recv, try_send

__all__ = ["TLSTransport"]

# Ciphertext read per recv(); a TLS record is at most 16 KiB + overhead.
_RAW_READ = 65536
# Application bytes encrypted per SSLObject.write() (bounds the outgoing
# BIO's growth for a large send_all).
_WRITE_CHUNK = 256 * 1024


def _tls_error(message: str, exc: BaseException | None = None) -> trio.BrokenResourceError:
    err = trio.BrokenResourceError(message)
    if exc is not None:
        err.__cause__ = exc
    return err


class TLSTransport(SocketConnection):
    """The socket transport speaking TLS records (the I/O half of ``TLSConnection``)."""

    __slots__ = (
        "_feeding",
        "_final_flush",
        "_flushing",
        "_in",
        "_lot",
        "_out",
        "_ssl",
        "_transport_eof",
        "_unsent",
    )

    #: The TLS session; set by ``TLSConnection`` before any I/O.
    _ssl: ssl.SSLObject

    def _init_common(self, *args: Any, **kwargs: Any) -> None:
        super()._init_common(*args, **kwargs)
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._flushing = False
        #: The close's own flush is running (a linger's): the connection is
        #: closed to its users, but this flush must still wait to send.
        self._final_flush = False
        self._feeding = False
        self._lot: ParkingLot | None = None
        #: Ciphertext a flush took from the outgoing BIO and could not send
        #: (cancelled, or the socket failed): it goes out before anything
        #: else, so a cancelled ``send_all`` leaves the record stream whole
        #: -- an unknown prefix of the data sent, as on a plain connection
        #: (where ``trio.SSLStream`` breaks for good).
        self._unsent: bytes | None = None
        #: A lenient end (a server): the transport ended without
        #: close_notify.  OpenSSL is not told -- it would hold the session
        #: failed, and the handler could not send its reply, nor we our
        #: close_notify -- and reads return ``b""`` from now on.
        self._transport_eof = False

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
                await _closed_while_waiting()

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
        """Send all of ``data`` to the socket; True if it had to wait.

        Interrupted (cancelled, or the socket failed), it keeps what it did
        not send in ``_unsent``, for the next flush to send first: a TLS
        record half-sent must be finished before any other byte follows it.
        """
        raw = self._raw
        sent = 0
        try:
            if raw is None:
                self._waits += 1  # trio.socket's send is a checkpoint
                with memoryview(data) as view:
                    while sent < len(data):
                        with view[sent:] as rest:
                            sent += await self.socket.send(rest)
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
                        if self._closed and not self._final_flush:
                            raise
                        continue  # woken by a drain's notify_closing(): wait again
                    finally:
                        self._wtask = None
                    if self._closed and not self._final_flush:
                        await _closed_while_waiting()
                    with view[sent:] as rest:
                        sent += try_send(raw, rest)
            return True
        except BaseException:
            self._unsent = data[sent:]
            raise

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
        out = self._out
        if not out.pending and self._unsent is None:
            return waited
        self._flushing = True
        try:
            while True:
                data = self._unsent
                if data is not None:
                    self._unsent = None  # (put back by _raw_send_all if interrupted)
                elif out.pending:
                    data = out.read()
                else:
                    break
                if await self._raw_send_all(data):
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
            if self._opts.lenient_tls_eof:
                self._transport_eof = True
            else:
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
            # After a lenient end (a server: clients skip close_notify all
            # the time) there is nothing more to wait for.
            return b"" if self._transport_eof else None
        except ssl.SSLZeroReturnError:
            return b""  # the peer's close_notify: a clean end
        except ssl.SSLEOFError as exc:  # a client, strict: a truncated stream
            self.peer_reset = True
            raise self._peer_fault(
                _tls_error("the peer ended the TLS stream without close_notify", exc)
            ) from exc
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
                if (
                    incoming.pending
                    or ssl_object.pending()
                    or incoming.eof
                    or self._eof
                    or self._transport_eof
                ):
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
                    pos += n
                    self.bytes_sent += n  # encrypted: it goes out, cancelled or not
                    await self._flush()
            self._coop_left = self._opts.budget
            if self._waits == waits:
                await _schedule_point()
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._send_busy = False
