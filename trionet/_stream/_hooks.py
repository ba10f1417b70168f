"""The stream package's interface for its owners: named functions, not private members.

A handler needs only the public :class:`~trionet.Connection` API.  The
packages that *own* connections need a little more: the server
(``trionet._server``) makes them on accepted sockets, runs their TLS stage,
tells them of a drain and closes them in an orderly way; the client
(``trionet._client``) makes them on connected sockets, shakes hands, and its
pool asks whether an idle one may be lent again and lingers on the ones it
discards.  Those calls are the functions below -- the whole of what another
package may ask of a connection beyond its public API, next to the
preamble functions of :mod:`._preamble` (a PROXY header read or written on
the transport).  Inside this package the mixins and transports share their
underscore members freely; outside it, nothing else is read.

Each function is one call around the method it names, so it costs one extra
call -- paid per connection (making it, closing it, lending it), never per
message.  The hot paths (``receive_some``, ``send_all``, ``async for``) are
the public methods themselves.
"""

from __future__ import annotations

import socket as _stdlib_socket
import ssl
from typing import Any

from .._address import Address
from ._base import Connection, ConnectionOwner
from ._options import ConnOptions
from ._socket import SocketConnection
from ._tls import TLSConnection

__all__ = [
    "begin_orderly_close",
    "close_linger",
    "handshake",
    "health",
    "interrupt_iteration",
    "linger",
    "mark_drain",
    "server_connection",
    "socket_connection",
    "tls_client_connection",
    "tls_server_connection",
]


# ----------------------------------------------------------------------
# Making a connection


def server_connection(
    sock: Any, peer: Address, local: Address | None, options: ConnOptions, owner: ConnectionOwner
) -> Connection:
    """A plain server connection on an accepted socket, owned by ``owner``.

    ``sock`` is a stdlib socket (the kernel fast path: no Trio wrapper until
    the handler asks for ``conn.socket``) or a Trio socket from a custom
    socket factory (no descriptor: the generic path).
    """
    if isinstance(sock, _stdlib_socket.socket):
        return SocketConnection._adopt(sock, peer, local, options, owner)
    return SocketConnection(sock, peer=peer, local=local, _owner=owner, _options=options)


def socket_connection(
    sock: Any,
    peer: Address,
    local: Address | None,
    options: ConnOptions,
    owner: ConnectionOwner | None = None,
) -> Connection:
    """A plain connection on a connected Trio socket (a client's: no ``owner``)."""
    return SocketConnection(sock, peer=peer, local=local, _owner=owner, _options=options)


def tls_server_connection(
    sock: Any,
    peer: Address,
    local: Address | None,
    options: ConnOptions,
    owner: ConnectionOwner | None,
    context: ssl.SSLContext,
) -> Connection:
    """A TLS server connection on an accepted socket, its handshake not yet done.

    Its TLS stage is :func:`handshake`.
    """
    return TLSConnection._server_side(sock, peer, local, options, owner, context)


def tls_client_connection(
    sock: Any,
    peer: Address,
    local: Address | None,
    options: ConnOptions,
    context: ssl.SSLContext,
    server_hostname: str | None,
) -> Connection:
    """A TLS client connection on a connected Trio socket, its handshake not yet done."""
    return TLSConnection._client_side(sock, peer, local, options, context, server_hostname)


async def handshake(conn: Connection) -> None:
    """Shake hands on a connection from :func:`tls_server_connection` or its client twin.

    Raises:
        trio.BrokenResourceError: the handshake failed (recorded as the
            peer's fault), chained from the ``ssl`` error; a certificate
            failure keeps its ``ssl.SSLCertVerificationError`` as the cause.
        TypeError: ``conn`` is not a TLS connection.
    """
    if not isinstance(conn, TLSConnection):
        raise TypeError(f"a TLS handshake needs a TLS connection, not {type(conn).__name__}")
    await conn._handshake()


# ----------------------------------------------------------------------
# The drain (the server)


def mark_drain(conn: Connection) -> None:
    """The drain began: ``async for`` delivers what had arrived, then ends."""
    conn._mark_drain()


def interrupt_iteration(conn: Connection) -> None:
    """Wake an ``async for`` that waits, so that it can decide whether to end."""
    conn._interrupt_iteration()


# ----------------------------------------------------------------------
# Closing (the server's release, the pool)


def begin_orderly_close(conn: Connection) -> bool:
    """Start an orderly close; True means "linger now" (await :func:`linger`).

    Decides, before anything more is written, whether closing at once could
    discard bytes ``send_all`` accepted; if not, closes at once.  Either way
    the connection is closed to its users (its owner told) when this returns.
    """
    return conn._begin_orderly_close()


async def linger(conn: Connection, seconds: float | None = None) -> None:
    """After :func:`begin_orderly_close` said so: discard the peer's bytes until its EOF.

    For ``seconds`` (None: the connection's own ``close_linger``) or until
    cancelled; then the transport closes, on every way out.
    """
    await conn._linger(conn._close_linger if seconds is None else seconds)


def close_linger(conn: Connection) -> float:
    """The connection's ``close_linger`` setting (seconds)."""
    return conn._close_linger


# ----------------------------------------------------------------------
# The pool's question


def health(conn: Connection) -> str | None:
    """Why an idle connection must not be lent again, or None if it looks fine.

    Its own state first (closed, busy, half-closed, unread bytes), then its
    transport's (a socket: a zero-timeout poll of its descriptor; TLS: also
    undelivered records; a descriptor-less socket answers through its
    ``is_readable()``, and one that cannot is never reused).
    """
    return conn._health()
