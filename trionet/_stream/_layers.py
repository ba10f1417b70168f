"""What lies beneath a wrapped stream: a trionet connection, or a socket.

Trio's stream wrappers name the stream they wrap ``transport_stream``
(``trio.SSLStream`` does, and so does
:class:`~trionet._stream._wrapped.StreamConnection`); ``trio.StapledStream``
names two, ``send_stream`` and ``receive_stream``.  Following those links
down from a stream finds the transport at the bottom: the trionet
connection a handler was given -- whose server, addresses and settings a
``StreamConnection`` around it takes over -- or, for a ``trio.SocketStream``,
the socket it can ask for addresses.  Nothing here does I/O.
"""

from __future__ import annotations

from typing import Final

import trio

from .._address import Address, UnixAddress, address_from_sockaddr
from ._base import Connection

__all__ = ["UNNAMED", "address_of", "inner_connection", "socket_beneath"]

#: The address of a peer (or local end) nobody can name: an in-memory stream.
UNNAMED: Final = UnixAddress("")
#: Links followed at most (a cycle must not hang us).
_MAX_LINKS: Final = 64


def inner_connection(stream: object) -> Connection | None:
    """The trionet transport connection at the bottom of ``stream``, if there is one.

    Follows ``transport_stream`` down from ``stream`` (which may itself be
    that connection) to the first trionet connection without one; a stapled
    stream leads to a connection if both its halves lead to the same one.
    """
    return _inner(stream, [_MAX_LINKS])


def _inner(stream: object, budget: list[int]) -> Connection | None:
    # ``budget``: links left to follow, shared down both halves of a stapled
    # stream, so that a cycle ends.
    current: object = stream
    while budget[0] > 0:
        budget[0] -= 1
        below = getattr(current, "transport_stream", None)
        if below is not None:
            current = below
            continue
        if isinstance(current, Connection):
            return current
        send = getattr(current, "send_stream", None)
        receive = getattr(current, "receive_stream", None)
        if send is None or receive is None:
            return None
        inner = _inner(receive, budget)
        return inner if inner is not None and _inner(send, budget) is inner else None
    return None


def socket_beneath(stream: object) -> trio.socket.SocketType | None:
    """The Trio socket at the bottom of a chain with no trionet connection in it.

    (A ``trio.SocketStream`` has one, as its ``socket``.)
    """
    current: object = stream
    for _ in range(_MAX_LINKS):
        if isinstance(current, Connection):
            return None  # (asking would move a server connection off the poller)
        sock = getattr(current, "socket", None)
        if isinstance(sock, trio.socket.SocketType):
            return sock
        current = getattr(current, "transport_stream", None)
        if current is None:
            return None
    return None


def address_of(sock: trio.socket.SocketType | None, *, peer: bool) -> Address:
    """The peer's (or our) address on ``sock``; :data:`UNNAMED` when there is none."""
    if sock is None:
        return UNNAMED
    try:
        sockaddr = sock.getpeername() if peer else sock.getsockname()
        return address_from_sockaddr(sock.family, sockaddr)
    except (OSError, ValueError, TypeError):
        return UNNAMED
