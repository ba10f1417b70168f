"""The soak server's handler: a line protocol whose replies the canary can check byte for byte.

Each request is one line (at most :data:`MAX_LINE` bytes before the ``\\n``):

* ``BIG n`` -- the reply is :func:`big_reply` ``(n)``: ``n`` bytes (capped
  at :data:`MAX_BIG`), for slow readers that fill the server's buffers;
* anything else -- the reply is :func:`reply_for` ``(line)``: ``b"R "`` and
  the line reversed.

End-of-file between two lines ends the handler quietly.  A longer line makes
``receive_until`` raise :class:`trionet.MessageTooLong`, which escapes the
handler so the server counts it in ``protocol_errors``.  When the server
drains, the handler finishes the request it is reading (a request that had
arrived when the drain began is answered) and returns between requests.
"""

from __future__ import annotations

import trio

import trionet

__all__ = ["MAX_BIG", "MAX_LINE", "big_reply", "handle", "reply_for"]

#: The longest request line, ``\n`` not counted.
MAX_LINE = 1024
#: The largest ``BIG n`` reply.
MAX_BIG = 4 * 1024 * 1024
#: Seconds a handler blocked waiting for a request keeps waiting once a drain begins:
#: a request that had arrived when the drain began is still read and answered.
DRAIN_ALLOWANCE = 1.0

_PATTERN = bytes(range(33, 127)) * 64


def reply_for(line: bytes) -> bytes:
    """The reply to an ordinary request line (without its ``\\n``), ``\\n`` included."""
    return b"R " + line[::-1] + b"\n"


def big_reply(n: int) -> bytes:
    """The reply to ``BIG n``: ``n`` bytes of a printable pattern (at most MAX_BIG), no newline."""
    n = max(0, min(n, MAX_BIG))
    whole, rest = divmod(n, len(_PATTERN))
    return _PATTERN * whole + _PATTERN[:rest]


#: ``BIG n`` is sent from this one block, a whole number of patterns long, a
#: chunk at a time -- as a streaming handler would: a 4 MB ``bytes`` per slow
#: reader made the RSS check measure the allocator's retained heap after the
#: peaks (+25 % in the first 30-minute reference run), not trionet.
_BLOCK = _PATTERN * max(1, 65536 // len(_PATTERN))


async def send_big(conn: trionet.Connection, n: int) -> None:
    """Send :func:`big_reply` ``(n)``'s bytes, a block at a time (no 4 MB buffer)."""
    left = max(0, min(n, MAX_BIG))
    view = memoryview(_BLOCK)
    while left > 0:
        chunk = min(left, len(_BLOCK))
        await conn.send_all(view[:chunk])
        left -= chunk


class _DrainWatch:
    """Cancels the handler's wait for a request once a drain has begun (after an allowance)."""

    def __init__(self, conn: trionet.Connection) -> None:
        self.conn = conn
        self.reading: trio.CancelScope | None = None

    async def run(self) -> None:
        await self.conn.draining.wait()
        await trio.sleep(DRAIN_ALLOWANCE)
        if self.reading is not None:
            self.reading.cancel()


async def _serve(conn: trionet.Connection, watch: _DrainWatch) -> None:
    # Read first, check the drain after each reply: a connection whose
    # handler starts after the drain began (it waited for a slot) still
    # gets its request answered -- the read is bounded by the allowance.
    while True:
        with trio.CancelScope() as scope:
            watch.reading = scope
            try:
                line = await conn.receive_until(b"\n", max_size=MAX_LINE)
            except trionet.IncompleteRead:
                return  # the peer hung up (a partial line: a slowloris giving up)
            finally:
                watch.reading = None
        if scope.cancelled_caught:
            return  # drained while waiting for a request
        if line.startswith(b"BIG "):
            try:
                size = int(line[4:])
            except ValueError:
                size = 0
            await send_big(conn, size)
        else:
            await conn.send_all(reply_for(line))
        if conn.draining.is_set():
            return


async def handle(conn: trionet.Connection) -> None:
    """Serve request lines until end-of-file or a drain (see the module docstring).

    ``MessageTooLong`` escapes: the server counts a protocol error.
    """
    watch = _DrainWatch(conn)
    too_long: trionet.MessageTooLong | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        try:
            await _serve(conn, watch)
        except trionet.MessageTooLong as exc:
            too_long = exc  # raised below, outside the nursery: bare, not in a group
        finally:
            nursery.cancel_scope.cancel()
    if too_long is not None:
        raise too_long
