"""A connection's preamble: bytes before its own protocol (a PROXY header).

A PROXY protocol header precedes everything else on the wire -- the TLS
ClientHello included -- so the server stage that reads it must read the
*transport*, not the connection's application stream: on a TLS connection
the header is not inside TLS.  These three functions are the stream
package's whole interface for that (stages and clients call nothing else):

* :func:`receive_preamble` -- transport bytes, before anything read them
  (:func:`receive_preamble_nowait`: only what has already arrived, without
  waiting -- a header sent right behind the connect usually has, so the
  stage can finish with no wait and no cancel scope);
* :func:`unread_preamble` -- give back what followed the header: the
  handler's first request stays buffered for it, a ClientHello for the TLS
  handshake;
* :func:`send_preamble` -- a client writes a header before its TLS
  handshake or first byte.

Preamble bytes are not application bytes: the byte counters leave them
out.
"""

from __future__ import annotations

from ._base import Connection
from ._socket import SocketConnection
from ._sockopts import try_recv
from ._tls import TLSConnection

__all__ = ["receive_preamble", "receive_preamble_nowait", "send_preamble", "unread_preamble"]


async def receive_preamble(conn: Connection, max_bytes: int) -> bytes:
    """Up to ``max_bytes`` from ``conn``'s transport; ``b""`` at EOF.

    Raises:
        TypeError: ``conn`` is not a socket connection (a preamble is read
            before any wrapper exists).
    """
    if isinstance(conn, TLSConnection):
        return await conn._raw_recv(max_bytes, False) or b""
    if isinstance(conn, SocketConnection):
        data = await conn._recv_into_nothing(max_bytes, False, False) or b""
        conn.bytes_received -= len(data)
        return data
    raise TypeError(f"a preamble is read from a socket connection, not {type(conn).__name__}")


def receive_preamble_nowait(conn: Connection, max_bytes: int) -> bytes | None:
    """What has already arrived on ``conn``'s transport (up to ``max_bytes``), without waiting.

    None if nothing is waiting -- or the transport cannot tell without
    waiting (a descriptor-less socket) -- and ``b""`` at EOF.

    Raises:
        OSError: the socket's (a reset).
        TypeError: ``conn`` is not a socket connection.
    """
    if not isinstance(conn, SocketConnection):
        raise TypeError(f"a preamble is read from a socket connection, not {type(conn).__name__}")
    raw = conn._raw
    if raw is None or conn._closed:
        return None
    return try_recv(raw, max_bytes)


def unread_preamble(conn: Connection, data: bytes | memoryview) -> None:
    """Put ``data`` (received by :func:`receive_preamble`) back in front of the stream."""
    if not data:
        return
    if isinstance(conn, TLSConnection):
        conn._unread_ciphertext(bytes(data))
    elif isinstance(conn, SocketConnection):
        buf = conn._buf
        conn._buf = bytearray(data) if buf is None else bytearray(data) + buf
        conn.bytes_received += len(data)
    else:
        raise TypeError(f"a preamble is given back to a socket connection, not {type(conn)}")


async def send_preamble(conn: Connection, data: bytes) -> None:
    """Write ``data`` on ``conn``'s transport, before its TLS handshake or first byte."""
    if isinstance(conn, TLSConnection):
        await conn._raw_send_all(data)
    elif isinstance(conn, SocketConnection):
        await conn.send_all(data)
        conn.bytes_sent -= len(data)
    else:
        raise TypeError(f"a preamble is written to a socket connection, not {type(conn)}")
