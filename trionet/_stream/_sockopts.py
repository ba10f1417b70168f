"""Socket-level helpers: options, kernel queue sizes, the close decision, raw I/O.

Small functions on stdlib (or descriptor-backed Trio) sockets that the
socket transport, the accept loop, the client and the TLS layer share.  None
of them awaits; the ones that may find nothing (``recv``/``send`` returning
``EAGAIN``) catch it *here*, in a short-lived frame: an exception raised
inside a coroutine makes CPython materialise that coroutine's frame object
(~250 bytes), which then lives as long as the coroutine -- for a parked idle
connection, its whole life.

The close decision
==================
:func:`linger_needed` decides, at close time and before anything more is
written, whether closing at once could make the kernel discard data we sent
(see ``Connection.aclose``).  ``SIOCOUTQNSD`` (Linux >= 2.6.39,
``<linux/sockios.h>``) counts bytes in the send queue not yet *sent*;
``SIOCOUTQ`` is the wrong test: it also counts bytes sent but not yet
acknowledged, which a close does not discard.
"""

from __future__ import annotations

import select
import socket as _stdlib_socket
import struct
import sys
from typing import Any, Final

import trio

__all__ = [
    "arm_reset",
    "configure_tcp_socket",
    "linger_needed",
    "pending_bytes",
    "raw_socket_of",
    "read_peer_credentials",
    "readable_or_dead",
    "try_recv",
    "try_send",
    "unsent_bytes",
]

AF_UNIX: Final = getattr(_stdlib_socket, "AF_UNIX", None)
_LINUX = sys.platform.startswith("linux")
_SO_PEERCRED = getattr(_stdlib_socket, "SO_PEERCRED", None)
#: struct ucred on Linux: pid_t pid; uid_t uid; gid_t gid (uid/gid unsigned).
_UCRED = struct.Struct("iII")
_LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {l_onoff=1, l_linger=0}

if _LINUX:
    import fcntl
    import termios

    _SIOCOUTQNSD: int | None = 0x894B
    _FIONREAD: int | None = termios.FIONREAD  # SIOCINQ: bytes waiting to be read
else:  # pragma: no cover - not Linux
    _SIOCOUTQNSD = _FIONREAD = None
_INT_ZERO = struct.pack("i", 0)
_PEEK = _stdlib_socket.MSG_PEEK | getattr(_stdlib_socket, "MSG_DONTWAIT", 0)

try:  # the class of real (descriptor-backed) Trio sockets; private, so guarded
    from trio._socket import _SocketType as _RealTrioSocket
except ImportError:  # pragma: no cover - a future Trio moved it: generic path only
    _RealTrioSocket = None  # type: ignore[assignment,misc]


def raw_socket_of(sock: trio.socket.SocketType) -> _stdlib_socket.socket | None:
    """The stdlib socket inside a real Trio socket, or None (custom factory sockets)."""
    if _RealTrioSocket is not None and type(sock) is _RealTrioSocket:
        raw = sock._sock
        if isinstance(raw, _stdlib_socket.socket):
            return raw
    return None


def try_recv(raw: _stdlib_socket.socket, size: int) -> bytes | None:
    """``raw.recv(size)``, or None if nothing is waiting (``EAGAIN``)."""
    try:
        return raw.recv(size)
    except BlockingIOError:
        return None


def try_send(raw: _stdlib_socket.socket, data: Any) -> int:
    """``raw.send(data)``, or 0 if the send buffer is full."""
    try:
        return raw.send(data)
    except BlockingIOError:
        return 0


def _ioctl_int(sock: Any, request: int | None) -> int:
    if request is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), request, _INT_ZERO)
    except OSError:
        return 0
    value: int = struct.unpack("i", raw)[0]
    return value


_DEAD_EVENTS: Final = (
    getattr(select, "POLLIN", 0)
    | getattr(select, "POLLPRI", 0)
    | getattr(select, "POLLERR", 0)
    | getattr(select, "POLLHUP", 0)
    | getattr(select, "POLLNVAL", 0)
)


def readable_or_dead(fd: int) -> bool:
    """Zero-timeout poll: True if the socket has data, EOF, an error, or is gone.

    An idle connection should have none of these: any readiness other than
    "writable" means the peer closed it, reset it, or sent bytes nobody
    asked for (a protocol desync).
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, _DEAD_EVENTS)
        return any(events & _DEAD_EVENTS for _fd, events in poller.poll(0))
    readable, _, errored = select.select([fd], [], [fd], 0)  # pragma: no cover - no poll()
    return bool(readable or errored)  # pragma: no cover


def unsent_bytes(sock: Any) -> int:
    """Bytes queued on ``sock`` that the kernel has not sent yet; 0 where unknown.

    Linux's ``SIOCOUTQNSD``.  Unix sockets (which hand data straight to the
    peer's queue) and other systems report 0.
    """
    return _ioctl_int(sock, _SIOCOUTQNSD)


def pending_bytes(sock: Any) -> int | None:
    """Bytes waiting to be read on ``sock`` (``FIONREAD``), or None where unknown."""
    if _FIONREAD is None:  # pragma: no cover - not Linux
        return None
    try:
        raw = fcntl.ioctl(sock.fileno(), _FIONREAD, _INT_ZERO)
    except OSError:
        return None
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


def arm_reset(sock: Any) -> None:
    """Make the next ``close()`` of ``sock`` send RST (``SO_LINGER`` 0), not FIN.

    A no-op for Unix sockets, which have no reset.  Failures are ignored: the
    close that follows still happens.  Works on stdlib and Trio sockets.
    """
    if sock.family == AF_UNIX:
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


def configure_tcp_socket(
    sock: Any, *, nodelay: bool = True, keepalive: bool | float = False
) -> None:
    """Apply trionet's TCP defaults: ``TCP_NODELAY``, optional keepalive.

    ``keepalive=True`` turns on ``SO_KEEPALIVE`` with the system timers; a
    number also sets the idle time before probes (``TCP_KEEPIDLE``) in
    whole seconds (at least 1; the callers validated it is at most 32767).
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
