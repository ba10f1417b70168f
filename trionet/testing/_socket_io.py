"""Receiving and sending on a virtual socket: the I/O half of ``VirtualSocket``.

A mixin of :class:`~trionet.testing._socket.VirtualSocket` (the state,
addresses, listening, connecting and closing live there).  The rules:

* ``recv`` returns what has *arrived*, in order: data, then a FIN as EOF
  (for good), then an RST as ``ECONNRESET`` -- as Linux returns the bytes it
  already received before it reports the reset.
* ``send`` accepts up to the direction's free room and blocks when it is
  full; after the peer's RST has arrived it fails with ``ECONNRESET``; bytes
  sent to a peer that closed are answered with RST.
* Like Trio's own sockets, a second task blocking to read (or to write) on
  one socket gets :class:`trio.BusyResourceError`, and a task blocked when
  another closes the socket gets :class:`trio.ClosedResourceError`.
"""

from __future__ import annotations

import errno
import math
import operator
from typing import TYPE_CHECKING, Any

import trio

from ._base import CONNECTED, oserror
from ._pipe import DATA, RST

if TYPE_CHECKING:
    from ._network import VirtualNetwork
    from ._pipe import Direction

__all__ = ["SocketIO"]


class SocketIO:
    """recv/send and their waits; the host class provides the state."""

    if TYPE_CHECKING:
        _net: VirtualNetwork
        _state: int
        _closed: bool
        _key: str
        _in: Direction | None
        _out: Direction | None
        _other: Any
        _shut_wr: bool
        _shut_rd: bool
        _reset: bool
        _eof_recorded: bool
        _rst_answered: bool
        _reading: bool
        _writing: bool

        def _check_open(self) -> None: ...
        def _dead(self) -> bool: ...
        def _become_reset(self) -> None: ...

    # -- receiving ----------------------------------------------------------

    def _receive_now(self, size: int) -> bytes | None:
        """Bytes (``b""``: EOF), or None if the call must wait; raises on errors."""
        incoming = self._in
        if self._state != CONNECTED or incoming is None:
            raise oserror(errno.ENOTCONN)
        if self._dead():
            return None
        if self._reset:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        if self._shut_rd or size == 0:
            return b""
        now = trio.current_time()
        kind = incoming.head(now)
        if kind is None:
            return None
        if kind == DATA:
            data = incoming.take(size, now)
            self._net._record(self._key, "recv", len(data))
            return data
        if kind == RST:
            self._become_reset()
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        if not self._eof_recorded:
            self._eof_recorded = True
            self._net._record(self._key, "eof")
        return b""

    async def recv(self, buflen: int, flags: int = 0, /) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if flags:
            raise oserror(errno.EOPNOTSUPP, "recv flags are not simulated")
        buflen = operator.index(buflen)  # TypeError at once, as a real socket does
        if buflen < 0:
            raise ValueError("negative buffersize in recv")
        while True:
            data = self._receive_now(buflen)
            if data is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            await self._wait_readable()

    async def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        # Every check before anything is consumed, as a real socket makes them.
        view = memoryview(buffer)
        if view.readonly:
            raise TypeError("recv_into() argument 'buffer' must be read-write bytes-like object")
        view = view.cast("B")
        nbytes = operator.index(nbytes)
        if nbytes < 0:
            raise ValueError("negative buffersize in recv_into")
        if nbytes > len(view):
            raise ValueError("buffer too small for requested bytes")
        data = await self.recv(nbytes or len(view), flags)
        view[: len(data)] = data
        return len(data)

    async def _wait_readable(self) -> None:
        if self._dead():
            await trio.sleep_forever()
        incoming = self._in
        assert incoming is not None
        self._claim("_reading")
        try:
            closing = await incoming.readable.wait(incoming.next_arrival())
        finally:
            self._reading = False
        if closing:
            raise trio.ClosedResourceError("another task closed this socket")
        self._check_open()  # closed after something else woke us: EBADF, as Trio's retry gets

    def _claim(self, side: str) -> None:
        # As Trio's own sockets do (one task per wait_readable/wait_writable
        # of a descriptor): a second task blocking the same way is a bug.
        if getattr(self, side):
            raise trio.BusyResourceError(
                "another task is already "
                f"{'reading from' if side == '_reading' else 'writing to'} this socket"
            )
        setattr(self, side, True)

    def _readable_now(self) -> bool:
        incoming = self._in
        if self._state != CONNECTED or incoming is None or self._dead():
            return False
        return self._reset or self._shut_rd or incoming.head(trio.current_time()) is not None

    # -- sending ------------------------------------------------------------

    def _peer_reset(self) -> bool:
        incoming = self._in
        return incoming is not None and incoming.reset_arrived(trio.current_time())

    def _send_now(self, data: Any) -> int | None:
        outgoing = self._out
        if self._state != CONNECTED or outgoing is None:
            raise oserror(errno.ENOTCONN)
        if self._dead():
            return None
        if self._reset or self._peer_reset():
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        if self._shut_wr:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        view = memoryview(data).cast("B")
        if not len(view):
            return 0
        other = self._other
        if other is not None and other._closed:
            # The peer's socket is gone: its TCP answers our bytes with RST.
            if not self._rst_answered and self._in is not None:
                self._rst_answered = True
                self._in.push(RST, b"", trio.current_time() + outgoing.delay())
            self._net._record(self._key, "send", len(view), None)
            return len(view)
        room = outgoing.room()
        if room <= 0:
            return None
        chunk = bytes(view[:room])
        arrives = outgoing.push(DATA, chunk, trio.current_time())
        self._net._record(self._key, "send", len(chunk), self._net._trace.since(arrives))
        return len(chunk)

    async def send(self, data: Any, flags: int = 0, /) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if flags:
            raise oserror(errno.EOPNOTSUPP, "send flags are not simulated")
        while True:
            sent = self._send_now(data)
            if sent is not None:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return sent
            await self._wait_writable_once()

    async def _wait_writable_once(self) -> None:
        if self._dead():
            await trio.sleep_forever()
        outgoing = self._out
        assert outgoing is not None
        self._claim("_writing")
        try:
            closing = await outgoing.writable.wait(self._reset_deadline())
        finally:
            self._writing = False
        if closing:
            raise trio.ClosedResourceError("another task closed this socket")
        self._check_open()

    def _reset_deadline(self) -> float:
        # A blocked sender must also wake when a peer's RST arrives.
        incoming = self._in
        if incoming is None or not incoming.segments or incoming.segments[-1].kind != RST:
            return math.inf
        return incoming.segments[-1].arrives

    async def wait_writable(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        while True:
            outgoing = self._out
            ready = (
                outgoing is None
                or self._reset
                or self._shut_wr
                or self._peer_reset()
                or outgoing.room() > 0
            )
            if ready and not self._dead():
                break
            await self._wait_writable_once()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def linger_needed(self) -> bool:
        """Whether closing now could make the network discard bytes we sent.

        The question trionet's close asks the kernel (a peek and
        ``SIOCOUTQ``): data that has arrived unread means a close would
        send RST -- linger; the peer's EOF or a reset means it sends nothing
        more -- close now; otherwise linger while our bytes are still in
        flight.
        """
        self._check_open()
        incoming, outgoing = self._in, self._out
        if self._state != CONNECTED or incoming is None or outgoing is None or self._reset:
            return False
        now = trio.current_time()
        if incoming.reset_arrived(now):
            return False
        kind = incoming.head(now)
        if kind is not None:
            return kind == DATA
        return outgoing.in_flight(now)

    # -- what a TCP socket does not do -------------------------------------

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise oserror(errno.EOPNOTSUPP, "a virtual TCP socket has no datagram or ancillary calls")

    recvfrom = recvfrom_into = recvmsg = recvmsg_into = _unsupported
    sendto = sendmsg = _unsupported
