"""``VirtualSocket``: a ``trio.socket.SocketType`` on a :class:`VirtualNetwork`.

It implements the part of Trio's socket API that TCP code uses -- ``bind``,
``listen``, ``accept``, ``connect``, ``recv``/``recv_into``, ``send``,
``shutdown``, ``close``, ``wait_writable``, ``is_readable``, socket options --
so unmodified code runs on it: trionet, ``trio.SocketStream`` /
``SocketListener`` / ``serve_tcp`` / ``open_tcp_stream``, and libraries on
top of them.  It also offers ``accept_nowait()``, the synchronous accept a
drain's sweep uses on a socket without a descriptor.

Like Trio's own sockets, every ``async`` method is a checkpoint, a call on a
closed socket raises ``OSError(EBADF)``, and a task blocked in a call when
another task closes the socket gets :class:`trio.ClosedResourceError` (one
already woken, by data say, that finds the socket closed when it runs gets
``EBADF``, as Trio's retried system call does).

Closing follows Linux: a close with unread (or still arriving) bytes, or
with ``SO_LINGER`` set to ``(1, 0)``, sends RST instead of FIN, and an RST
makes the peer discard what it had not read yet and fail its next call with
``ECONNRESET``.  Bytes sent to a socket that has closed are answered with
RST.  A socket on a crashed host is dead: its calls block until cancelled
(its process is gone); ``close()`` still works.
"""

from __future__ import annotations

import errno
import math
import operator
import os
import socket as _stdlib
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from ._options import SocketOptions
from ._pipe import DATA, FIN, RST, Direction, Wakeup

if TYPE_CHECKING:
    from ._hosts import Host
    from ._network import VirtualNetwork

__all__ = [
    "BOUND",
    "CONNECTED",
    "CONNECTING",
    "LISTENING",
    "NEW",
    "VirtualSocket",
    "format_address",
]

NEW, BOUND, LISTENING, CONNECTING, CONNECTED = range(5)
_SOMAXCONN = 4096


def _error(code: int, detail: str = "") -> OSError:
    message = os.strerror(code)
    return OSError(code, f"{message} ({detail})" if detail else message)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class VirtualSocket(trio.socket.SocketType):
    """A TCP socket of a :class:`~trionet.testing.VirtualNetwork`.

    Made by ``trio.socket.socket()`` while the network is installed.
    """

    def __init__(self, net: VirtualNetwork, family: int, type: int, proto: int) -> None:
        super().__init__()
        self._net = net
        self._family = _stdlib.AddressFamily(family)
        self._type = _stdlib.SocketKind(type)
        self._proto = proto
        self._state = NEW
        self._closed = False
        self._opts = SocketOptions()
        self._local: tuple[str, int] | None = None
        self._peer: tuple[str, int] | None = None
        self._host: Host | None = None
        self._epoch = 0
        self._key = ""
        # Listening.
        self._queue: deque[VirtualSocket] = deque()
        self._backlog = 0
        self._acceptable = Wakeup()
        # Connected.
        self._in: Direction | None = None
        self._out: Direction | None = None
        self._other: VirtualSocket | None = None
        self._shut_wr = False
        self._shut_rd = False
        self._reset = False
        self._eof_recorded = False
        self._rst_answered = False
        # A task is blocked receiving (or accepting) / sending.
        self._reading = False
        self._writing = False

    # ------------------------------------------------------------------
    # Attributes and plain methods

    @property
    def family(self) -> _stdlib.AddressFamily:
        return self._family

    @property
    def type(self) -> _stdlib.SocketKind:
        return self._type

    @property
    def proto(self) -> int:
        return self._proto

    @property
    def did_shutdown_SHUT_WR(self) -> bool:
        return self._shut_wr

    def fileno(self) -> int:
        """-2 while open, -1 once closed: a virtual socket has no descriptor.

        Trio's ``SocketStream`` takes -1 to mean "closed", so an open
        virtual socket answers -2 -- also never a valid descriptor: any
        system call given it fails with ``EBADF`` instead of touching a
        real file.
        """
        return -1 if self._closed else -2

    def detach(self) -> int:
        raise _error(errno.EOPNOTSUPP, "a virtual socket has no descriptor to detach")

    def dup(self) -> trio.socket.SocketType:
        raise _error(errno.EOPNOTSUPP, "a virtual socket cannot be duplicated")

    def get_inheritable(self) -> bool:
        return False

    def set_inheritable(self, inheritable: bool) -> None:
        if inheritable:
            raise _error(errno.EOPNOTSUPP, "a virtual socket cannot be inherited")

    def __enter__(self) -> VirtualSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("listening" if self._state == LISTENING else "")
        where = self._key or (format_address(self._local) if self._local else "unbound")
        return f"<trionet.testing.VirtualSocket {where}{' ' + state if state else ''}>"

    def _check_open(self) -> None:
        if self._closed:
            raise _error(errno.EBADF)

    def _dead(self) -> bool:
        host = self._host
        return host is not None and host.epoch != self._epoch

    def getsockname(self) -> tuple[Any, ...]:
        self._check_open()
        if self._local is None:
            wildcard = "::" if self._family == _stdlib.AF_INET6 else "0.0.0.0"
            return self._sockaddr((wildcard, 0))
        return self._sockaddr(self._local)

    def getpeername(self) -> tuple[Any, ...]:
        self._check_open()
        if self._peer is None or self._state != CONNECTED:
            raise _error(errno.ENOTCONN)
        return self._sockaddr(self._peer)

    def _sockaddr(self, address: tuple[str, int]) -> tuple[Any, ...]:
        if self._family == _stdlib.AF_INET6:
            return (address[0], address[1], 0, 0)
        return address

    def setsockopt(self, level: int, optname: int, value: Any, optlen: int | None = None) -> None:
        self._check_open()
        self._opts.set(level, optname, value)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        self._check_open()
        if (level, optname) == (_stdlib.SOL_SOCKET, _stdlib.SO_ACCEPTCONN):
            value: int = int(self._state == LISTENING)
            return value if buflen is None else value.to_bytes(4, "little").ljust(buflen, b"\0")
        return self._opts.get(level, optname, buflen)

    # ------------------------------------------------------------------
    # Binding and listening

    async def bind(self, address: Any) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if self._local is not None:
            raise _error(errno.EINVAL, "the socket is already bound")
        host, port = self._net._sockaddr_of(self._family, address, "bind")
        self._net._bind(self, host, port)
        self._state = BOUND
        await trio.lowlevel.cancel_shielded_checkpoint()

    def listen(self, backlog: int = 128) -> None:
        self._check_open()
        if self._state not in (NEW, BOUND, LISTENING):
            raise _error(errno.EINVAL, "a connected socket cannot listen")
        if self._local is None:
            self._net._bind(self, "::" if self._family == _stdlib.AF_INET6 else "0.0.0.0", 0)
        self._backlog = min(max(int(backlog), 0), _SOMAXCONN) + 1
        if self._state != LISTENING:
            self._state = LISTENING
            assert self._local is not None
            self._key = format_address(self._local)
            self._net._record(self._key, "listen", self._backlog - 1)
        self._net._changed.fire()

    def _listening(self) -> bool:
        return self._state == LISTENING and not self._closed and not self._dead()

    def _queue_full(self) -> bool:
        return len(self._queue) >= self._backlog

    def _enqueue(self, server: VirtualSocket) -> None:
        self._queue.append(server)
        self._acceptable.fire()

    async def accept(self) -> tuple[trio.socket.SocketType, Any]:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if self._state != LISTENING:
            raise _error(errno.EINVAL, "accept() on a socket that is not listening")
        while True:
            self._check_open()
            if self._queue and not self._dead():
                conn = self._pop()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return conn
            if self._dead():
                await trio.sleep_forever()
            self._claim("_reading")
            try:
                closing = await self._acceptable.wait()
            finally:
                self._reading = False
            if closing:
                raise trio.ClosedResourceError("another task closed this socket")

    def accept_nowait(self) -> tuple[trio.socket.SocketType, Any]:
        """The next queued connection, or ``BlockingIOError`` -- without waiting.

        The synchronous accept a drain's sweep uses on sockets without a
        descriptor.
        """
        self._check_open()
        if self._state != LISTENING:
            raise _error(errno.EINVAL, "accept() on a socket that is not listening")
        if not self._queue or self._dead():
            raise BlockingIOError(errno.EAGAIN, "no connection is queued")
        return self._pop()

    def _pop(self) -> tuple[VirtualSocket, Any]:
        was_full = self._queue_full()
        conn = self._queue.popleft()
        conn._state = CONNECTED
        self._net._record(conn._key, "accept")
        if was_full:
            self._net._changed.fire()
        assert conn._peer is not None
        return conn, conn._sockaddr(conn._peer)

    # ------------------------------------------------------------------
    # Connecting

    async def connect(self, address: Any) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if self._state == LISTENING:
            raise _error(errno.EINVAL, "connect() on a listening socket")
        if self._state == CONNECTED:
            raise _error(errno.EISCONN)
        if self._state == CONNECTING:
            raise _error(errno.EALREADY)
        host, port = self._net._sockaddr_of(self._family, address, "connect")
        try:
            await self._net._connect(self, host, port)
        except trio.Cancelled:
            # As Trio does: a cancelled connect leaves the socket in an
            # unknown state, so it is closed.
            self.close()
            raise

    def _attach(
        self, key: str, peer: tuple[str, int], incoming: Direction, outgoing: Direction
    ) -> None:
        self._key = key
        self._peer = peer
        self._in = incoming
        self._out = outgoing

    # ------------------------------------------------------------------
    # Receiving

    def _receive_now(self, size: int) -> bytes | None:
        """Bytes (``b""``: EOF), or None if the call must wait; raises on errors."""
        incoming = self._in
        if self._state != CONNECTED or incoming is None:
            raise _error(errno.ENOTCONN)
        if self._dead():
            return None
        now = trio.current_time()
        if not self._reset and incoming.reset_arrived(now):
            self._become_reset()
        if self._reset:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        if self._shut_rd or size == 0:
            return b""
        kind = incoming.head(now)
        if kind is None:
            return None
        if kind == DATA:
            data = incoming.take(size, now)
            self._net._record(self._key, "recv", len(data))
            return data
        if not self._eof_recorded:
            self._eof_recorded = True
            self._net._record(self._key, "eof")
        return b""

    async def recv(self, buflen: int, flags: int = 0, /) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if flags:
            raise _error(errno.EOPNOTSUPP, "recv flags are not simulated")
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
        view = memoryview(buffer).cast("B")
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

    def is_readable(self) -> bool:
        """Whether a receive would not wait: data, EOF, a reset, or a queued connection."""
        self._check_open()
        if self._state == LISTENING:
            return bool(self._queue)
        incoming = self._in
        if self._state != CONNECTED or incoming is None or self._dead():
            return False
        now = trio.current_time()
        return (
            self._reset
            or self._shut_rd
            or incoming.reset_arrived(now)
            or incoming.head(now) is not None
        )

    # ------------------------------------------------------------------
    # Sending

    def _send_now(self, data: Any) -> int | None:
        outgoing = self._out
        if self._state != CONNECTED or outgoing is None:
            raise _error(errno.ENOTCONN)
        if self._dead():
            return None
        if not self._reset and self._in is not None and self._in.reset_arrived(trio.current_time()):
            self._become_reset()
        if self._reset:
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
                now = trio.current_time()
                self._in.push(RST, b"", now + outgoing.delay())
            self._net._record(self._key, "send", len(view), None)
            return len(view)
        room = outgoing.room()
        if room <= 0:
            return None
        chunk = bytes(view[:room])
        now = trio.current_time()
        arrives = outgoing.push(DATA, chunk, now)
        self._net._record(self._key, "send", len(chunk), self._net._trace.since(arrives))
        return len(chunk)

    async def send(self, data: Any, flags: int = 0, /) -> int:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if flags:
            raise _error(errno.EOPNOTSUPP, "send flags are not simulated")
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
            ready = outgoing is None or self._reset or self._shut_wr or outgoing.room() > 0
            if ready and not self._dead():
                break
            await self._wait_writable_once()
        await trio.lowlevel.cancel_shielded_checkpoint()

    # ------------------------------------------------------------------
    # Ending

    def shutdown(self, flag: int) -> None:
        self._check_open()
        if self._state != CONNECTED:
            raise _error(errno.ENOTCONN)
        if flag in (_stdlib.SHUT_RD, _stdlib.SHUT_RDWR):
            self._shut_rd = True
            if self._in is not None:
                self._in.readable.fire()
        if flag in (_stdlib.SHUT_WR, _stdlib.SHUT_RDWR) and not self._shut_wr:
            self._shut_wr = True
            if not self._reset and not self._dead() and self._out is not None:
                self._out.push(FIN, b"", trio.current_time())
                self._net._record(self._key, "shutdown")

    def close(self) -> None:
        if self._closed:
            return
        dead = self._dead()
        if self._state == LISTENING:
            for queued in self._queue:
                # A queued connection nobody accepted: its client sees RST.
                queued._closed = True
                if not dead:
                    queued._send_reset()
                self._net._forget(queued)
            self._queue.clear()
        elif self._in is not None and self._out is not None and not dead and not self._reset:
            if self._opts.linger_reset() or self._in.has_data():
                self._send_reset()
                self._net._record(self._key, "close", "rst")
            else:
                if not self._shut_wr:
                    self._out.push(FIN, b"", trio.current_time())
                self._net._record(self._key, "close", "fin")
        self._closed = True
        self._shut_wr = True
        self._net._forget(self)
        self._wake_all(closing=True)

    def _wake_all(self, *, closing: bool = False) -> None:
        """Wake every task blocked on this socket, to look at its state again.

        ``closing``: this socket was closed; its blocked tasks get
        ``ClosedResourceError``.
        """
        self._acceptable.fire(closing=closing)
        if self._in is not None:
            self._in.readable.fire(closing=closing)
        if self._out is not None:
            self._out.writable.fire(closing=closing)

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

    def _send_reset(self) -> None:
        """Abort: drop what we hold and send RST after the bytes in flight."""
        assert self._in is not None and self._out is not None
        self._in.discard()
        self._out.push(RST, b"", trio.current_time())

    def _become_reset(self) -> None:
        """A reset reached us (or was injected): unread bytes are gone, calls fail."""
        if self._reset:
            return
        self._reset = True
        self._net._record(self._key, "reset")
        for direction in (self._in, self._out):
            if direction is not None:
                direction.discard()
