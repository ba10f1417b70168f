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
with ``SO_LINGER`` set to ``(1, 0)``, sends RST instead of FIN -- what it
had not sent yet (not yet arrived) is dropped -- and the peer reads what had
arrived before the RST, then gets ``ECONNRESET``.  Bytes sent to a socket
that has closed are answered with RST.  A socket on a crashed host is dead:
its calls block until cancelled (its process is gone); ``close()`` still
works.
"""

from __future__ import annotations

import errno
import operator
import socket as _stdlib
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from ._base import BOUND, CONNECTED, CONNECTING, LISTENING, NEW, format_address, oserror
from ._options import READ_ONLY, SocketOptions
from ._pipe import FIN, Direction, Wakeup
from ._socket_io import SocketIO

if TYPE_CHECKING:
    from ._hosts import Host
    from ._network import VirtualNetwork

__all__ = ["VirtualSocket"]

_SOMAXCONN = 4096
_error = oserror


class VirtualSocket(SocketIO, trio.socket.SocketType):
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
        #: Connects waiting for room in the accept queue, first come first served.
        self._room_waiters: deque[trio.Event] = deque()
        #: What this socket's own connect waits on for room (a close wakes it).
        self._room_event: trio.Event | None = None
        # Connected.
        self._in: Direction | None = None
        self._out: Direction | None = None
        self._other: VirtualSocket | None = None
        self._shut_wr = False
        self._shut_rd = False
        self._reset = False
        self._eof_recorded = False
        self._rst_answered = False
        self._rst_recorded = False
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
        if (level, optname) in READ_ONLY:
            raise _error(errno.ENOPROTOOPT, "the option can be read, not set")
        self._opts.set(level, optname, value)

    def getsockopt(self, level: int, optname: int, buflen: int | None = None) -> Any:
        self._check_open()
        fixed = {
            _stdlib.SO_ACCEPTCONN: int(self._state == LISTENING),
            _stdlib.SO_TYPE: int(self._type),
            getattr(_stdlib, "SO_DOMAIN", -1): int(self._family),
            getattr(_stdlib, "SO_PROTOCOL", -2): self._proto or _stdlib.IPPROTO_TCP,
            _stdlib.SO_ERROR: 0,
        }
        if level == _stdlib.SOL_SOCKET and optname in fixed:
            return self._opts.get(level, optname, buflen, fixed=fixed[optname])
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
        backlog = operator.index(backlog)  # TypeError for "3" or 1.5, as a real socket
        self._backlog = min(max(backlog, 0), _SOMAXCONN) + 1  # the kernel clamps
        if self._state != LISTENING:
            self._state = LISTENING
            assert self._local is not None
            self._key = format_address(self._local)
            self._net._record(self._key, "listen", self._backlog - 1)
        self._net._changed.fire()
        for waiting in self._room_waiters:  # a larger backlog may have room now
            waiting.set()

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

    def is_readable(self) -> bool:
        """Whether a receive (or an accept) would not wait: data, EOF, a reset, a connection."""
        self._check_open()
        if self._state == LISTENING:
            return bool(self._queue)
        return self._readable_now()

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
        conn = self._queue.popleft()
        conn._state = CONNECTED
        self._net._record(conn._key, "accept")
        if self._room_waiters:
            self._room_waiters.popleft().set()  # one slot: the first connect in line
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
    # Ending

    def shutdown(self, flag: int) -> None:
        self._check_open()
        if flag not in (_stdlib.SHUT_RD, _stdlib.SHUT_WR, _stdlib.SHUT_RDWR):
            raise _error(
                errno.EINVAL, f"shutdown() takes SHUT_RD, SHUT_WR or SHUT_RDWR, not {flag!r}"
            )
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
        if self._state in (LISTENING, CONNECTING):
            # Pending connects look again: at a listener that is gone, or
            # (their own socket closed) to end with ClosedResourceError.
            self._net._changed.fire()
            for waiting in self._room_waiters:
                waiting.set()
            if self._room_event is not None:
                self._room_event.set()
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
        if self._out is not None:
            self._out.sender_gone = True
        if self._in is not None:
            self._in.receiver_gone = True
        self._net._forget(self)
        self._wake_all(closing=True)

    def _wake_all(self, *, closing: bool = False) -> None:
        """Wake every task blocked on this socket, to look at its state again.

        ``closing``: this socket was closed; its blocked tasks get
        ``ClosedResourceError``.
        """
        self._acceptable.fire(closing=closing)
        if not closing:
            for waiting in self._room_waiters:
                waiting.set()
        if self._in is not None:
            self._in.readable.fire(closing=closing)
        if self._out is not None:
            self._out.writable.fire(closing=closing)

    def _send_reset(self) -> None:
        """Abort, as Linux does: what we had not sent yet is dropped, then RST goes out.

        Bytes that already reached the peer stay readable there, before the
        RST ("not sent yet": not arrived -- the model has no separate wire).
        """
        assert self._in is not None and self._out is not None
        self._in.discard()
        self._out.reset(trio.current_time())

    def _inject_reset(self) -> None:
        """A reset from the network (``reset_connections``, a crashed peer): RST arrives now."""
        if self._in is not None and not self._closed and not self._reset:
            self._in.reset(trio.current_time(), at_once=True)
            self._rst_recorded = True
            self._net._record(self._key, "reset")
            if self._out is not None:
                self._out.writable.fire()

    def _become_reset(self) -> None:
        """An RST was read: unread bytes are gone, every later call fails."""
        if self._reset:
            return
        self._reset = True
        if not self._rst_recorded:
            self._rst_recorded = True
            self._net._record(self._key, "reset")
        # Only what was ours to read goes; the peer's own incoming direction
        # (an RST injected for it, bytes it has not read) is left alone
        # while the peer is open.
        if self._in is not None:
            self._in.discard()
        out, other = self._out, self._other
        if out is not None:
            out.sender_gone = True
            if other is None or other._closed:
                out.discard()
