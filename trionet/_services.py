"""The classic "simple services": echo, discard, daytime and chargen.

Each is an ordinary trionet handler -- ``async def name(conn) -> None`` --
usable with :func:`trionet.serve`, ``trionet serve NAME`` on the command
line, or as a known-good peer in tests.  They follow the RFCs:

* **echo** (RFC 862): "Once a connection is established any data received is
  sent back.  This continues until the calling user terminates the
  connection."
* **discard** (RFC 863): "Once a connection is established any data received
  is thrown away.  No response is sent."
* **daytime** (RFC 867): "Once a connection is established the current date
  and time is sent out the connection as a ascii character string (and any
  data received is thrown away).  The service closes the connection after
  sending the quote."  The RFC leaves the format open; we send
  ``Weekday, Month DD, YYYY HH:MM:SS-ZONE`` -- its own example -- and CRLF.
* **chargen** (RFC 864): "Once a connection is established a stream of data
  is sent out the connection (and any data received is thrown away).  This
  continues until the calling user terminates the connection."  The data is
  the RFC's "popular pattern": 72-character lines of the 95 printable ASCII
  characters, each line starting one character later than the one before,
  ending in CRLF.

Graceful drain
==============
A server drain (``Server.shutdown``) ends each service by itself, so none of
them waits out the grace period:  ``echo`` and ``discard`` read with
``async for chunk in conn``, which ends once a drain has begun and nothing
more is waiting (data already received is still echoed first); ``chargen``
watches ``conn.draining`` and stops sending; ``daytime`` finishes in a
moment anyway.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Final

import trio

from ._stream import Connection

__all__ = [
    "CHARGEN_LINE_WIDTH",
    "SERVICES",
    "chargen",
    "daytime",
    "daytime_line",
    "discard",
    "echo",
]

#: The 95 printable ASCII characters, space (0x20) to tilde (0x7E).
_PRINTABLE: Final = bytes(range(0x20, 0x7F))
#: Characters per chargen line, before the CRLF.
CHARGEN_LINE_WIDTH: Final = 72


def _chargen_block() -> bytes:
    # One full cycle of the pattern: line i starts at printable character i
    # (mod 95), so after 95 lines the pattern repeats exactly.  Sending the
    # whole 7,030-byte cycle per send_all keeps the loop cheap; a client sees
    # the same byte stream either way.
    doubled = _PRINTABLE * 2
    lines = [doubled[i : i + CHARGEN_LINE_WIDTH] + b"\r\n" for i in range(len(_PRINTABLE))]
    return b"".join(lines)


_CHARGEN_BLOCK: Final = _chargen_block()


async def echo(conn: Connection) -> None:
    """RFC 862 echo: send back every byte received, until the client closes.

    A half-close from the client (end-of-file) ends the service after
    everything received has been echoed; the server then closes the
    connection.

    Args:
        conn: the connection to serve.

    Example::

        async with trionet.open_server(trionet.services.echo, "tcp://127.0.0.1:0") as server:
            ...
    """
    async for chunk in conn:
        await conn.send_all(chunk)


async def discard(conn: Connection) -> None:
    """RFC 863 discard: read and throw away everything, never answer.

    Args:
        conn: the connection to serve.

    Example::

        await trionet.serve(trionet.services.discard, "tcp://127.0.0.1:9009")
    """
    async for _chunk in conn:
        pass


def daytime_line(now: float | None = None) -> bytes:
    """The RFC 867 reply for ``now`` (default: the current time), CRLF-terminated.

    Args:
        now: seconds since the epoch, or None for the current time.

    Returns:
        e.g. ``b"Tuesday, February 22, 1982 17:37:43-PST\\r\\n"`` (local time).

    Example::

        >>> daytime_line(0.0).endswith(b"\\r\\n")
        True
    """
    text = time.strftime("%A, %B %d, %Y %H:%M:%S-%Z", time.localtime(now))
    # The RFC asks for ASCII; a localised zone or month name might not be.
    return text.encode("ascii", "replace") + b"\r\n"


async def daytime(conn: Connection) -> None:
    """RFC 867 daytime: send the date and time as one line, then close.

    Args:
        conn: the connection to serve.

    Example::

        await trionet.serve(trionet.services.daytime, "tcp://127.0.0.1:1313")
    """
    await conn.send_all(daytime_line())
    # Half-close now: the client sees the reply and a clean end-of-file at
    # once, even if it sent something (RFC 867 says it is thrown away) that
    # is still unread when the server closes.  (The server's lingering close
    # would deliver the reply anyway; this also holds with close_linger=0.)
    # TLS has no half-close: there the close that follows sends
    # close_notify, after the reply.
    if conn.tls is None:
        await conn.send_eof()


async def chargen(conn: Connection) -> None:
    """RFC 864 character generator: send the rotating pattern until the client closes.

    Every line is 72 printable ASCII characters plus CRLF; line ``i`` starts
    with character ``0x20 + i % 95``.  Input is read and discarded.  The
    client closing (or resetting) the connection is the normal way this
    ends, and is not an error; a server drain ends it too.

    Args:
        conn: the connection to serve.

    Example::

        await trionet.serve(trionet.services.chargen, "tcp://127.0.0.1:1919")
    """
    # Three tasks' worth of work, but the two helpers never raise: only the
    # sender can meet an error, and it meets it in this task, so nothing
    # comes out of the nursery wrapped in an ExceptionGroup.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_discard_input, conn)
        nursery.start_soon(_cancel_on_drain, conn, nursery.cancel_scope)
        try:
            while True:
                await conn.send_all(_CHARGEN_BLOCK)
        except trio.BrokenResourceError:
            pass  # the client went away: the normal end of chargen
        nursery.cancel_scope.cancel()


async def _discard_input(conn: Connection) -> None:
    # RFC 864: "any data received is thrown away".  Reading it also keeps the
    # client's sends from blocking, and means our close is not a reset
    # caused by unread data.  A half-close from the client ends only this
    # reader: the RFC says to send until the client *terminates* the
    # connection.
    try:
        async for _chunk in conn:
            pass
    except trio.BrokenResourceError:
        pass  # the sender meets the same reset and ends the service


async def _cancel_on_drain(conn: Connection, scope: trio.CancelScope) -> None:
    await conn.draining.wait()
    scope.cancel()


#: The built-in services by name, as ``trionet serve NAME`` knows them.
SERVICES: Final[Mapping[str, Callable[[Connection], Awaitable[None]]]] = MappingProxyType(
    {"echo": echo, "discard": discard, "daytime": daytime, "chargen": chargen}
)
