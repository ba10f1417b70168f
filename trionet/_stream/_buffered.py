"""Buffered reads: ``receive_exactly``, ``receive_until``, ``receive_line``.

A mixin of :class:`~trionet.Connection`: every transport gets them, on top
of its own receive primitive (``_recv_into_nothing``), and they share one
buffer (``_buf``) with ``receive_some`` and ``async for``, so they can be
mixed freely.  Schedule points follow the connection's rule: a call that did
not wait ends with one (``_coop``), unless the budget says otherwise.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

from trio.lowlevel import checkpoint, checkpoint_if_cancelled

from .._exceptions import IncompleteRead, MessageTooLong
from .._validate import check_count, public_call

__all__ = ["DEFAULT_RECEIVE_SIZE", "BufferedReads"]

#: How many bytes ``receive_some()`` asks for when given no ``max_bytes``.
DEFAULT_RECEIVE_SIZE = 65536
# Largest single recv() of the buffered helpers (receive_exactly(10**9) must
# not allocate a gigabyte per call).
_MAX_FILL = 1 << 20


def _max_size(call: str, value: object) -> int:
    """``max_size`` by the shared rule: an int >= 0 (TypeError for a bool, str or float)."""
    with public_call(call):
        size = check_count("max_size", value, minimum=0)
    assert size is not None
    return size


class BufferedReads:
    """The buffered helpers; the host class provides the receive primitive.

    Needs, from the class it is mixed into: ``_buf``, ``_waits``,
    ``_check_receive()``, ``_coop()``, ``_peer_fault()`` and
    ``_recv_into_nothing()``.
    """

    if not TYPE_CHECKING:  # (mypy would then want _buf among the slots)
        __slots__ = ()
    else:
        _buf: bytearray | None
        _waits: int

        def _check_receive(self) -> None: ...

        async def _coop(self) -> None: ...

        def _peer_fault(self, exc: BaseException) -> BaseException:
            raise NotImplementedError

        async def _recv_into_nothing(
            self, max_bytes: int, interruptible: bool, coop: bool = True, iterating: bool = False
        ) -> bytes | None:
            raise NotImplementedError

    async def _fill(self, minimum_chunk: int) -> bool:
        """Read more into the buffer; False at EOF."""
        # No schedule point here: the buffered helper that called us adds one
        # at the end if nothing on the way was one.
        data = await self._recv_into_nothing(
            min(max(minimum_chunk, DEFAULT_RECEIVE_SIZE), _MAX_FILL), False, coop=False
        )
        if not data:
            return False
        if self._buf is None:
            self._buf = bytearray(data)
        else:
            self._buf += data
        return True

    def _take(self, n: int) -> bytes:
        buf = self._buf
        assert buf is not None
        if n >= len(buf):
            self._buf = None
            return bytes(buf)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    async def receive_exactly(self, n: int) -> bytes:
        """Receive exactly ``n`` bytes (e.g. a fixed-size header).

        Args:
            n: how many bytes; 0 returns ``b""`` at once.

        Returns:
            Exactly ``n`` bytes.

        Raises:
            IncompleteRead: end-of-file came first; ``.partial`` has what arrived.
            trio.BrokenResourceError: the peer reset the connection.

        Example::

            header = await conn.receive_exactly(4)
            body = await conn.receive_exactly(int.from_bytes(header, "big"))
        """
        if type(n) is not int:
            n = operator.index(n)
        if n < 0:
            raise ValueError("n must be >= 0")
        self._check_receive()
        if n == 0:
            await checkpoint()
            return b""
        waits = self._waits
        while self._buf is None or len(self._buf) < n:
            if not await self._fill(n - (len(self._buf) if self._buf else 0)):
                partial = self._take(len(self._buf)) if self._buf else b""
                raise self._peer_fault(
                    IncompleteRead(
                        f"connection closed after {len(partial)} of {n} bytes",
                        partial=partial,
                        expected=n,
                    )
                )
        await checkpoint_if_cancelled()
        out = self._take(n)
        if self._waits == waits:
            await self._coop()
        return out

    async def receive_until(self, delimiter: bytes, *, max_size: int) -> bytes:
        """Receive up to ``delimiter`` and return the data before it.

        The delimiter is consumed but not returned.

        Args:
            delimiter: the non-empty byte string that ends a message.
            max_size: the longest message (delimiter not counted) accepted.

        Returns:
            The bytes before the first occurrence of ``delimiter``.

        Raises:
            MessageTooLong: no delimiter within ``max_size`` bytes (the data
                stays buffered).
            IncompleteRead: end-of-file before the delimiter; ``.partial`` has
                the bytes that did arrive (``b""`` at a clean end-of-file).
            TypeError: ``delimiter`` not bytes, or ``max_size`` not an int.
            ValueError: an empty ``delimiter``, or ``max_size`` below 0.

        Example::

            header = await conn.receive_until(b"\\r\\n\\r\\n", max_size=16384)
        """
        if not isinstance(delimiter, (bytes, bytearray)):
            raise TypeError(f"receive_until(): delimiter must be bytes, not {delimiter!r}")
        if not delimiter:
            raise ValueError("receive_until(): delimiter must be non-empty bytes")
        if type(max_size) is not int or max_size < 0:
            max_size = _max_size("receive_until()", max_size)
        return await self._receive_delimited(bytes(delimiter), max_size, False)

    async def receive_line(self, *, max_size: int = 65536) -> bytes:
        """Receive one ``\\n``-terminated line, without the ``\\n`` (or ``\\r\\n``).

        Args:
            max_size: the longest line accepted, terminator not counted.

        Returns:
            The line, without its ``\\n`` and without a ``\\r`` before it.

        Raises:
            MessageTooLong: the line is longer than ``max_size`` bytes (the
                data stays buffered).
            IncompleteRead: end-of-file before a full line.

        Example::

            command = await conn.receive_line(max_size=1024)
        """
        if type(max_size) is not int or max_size < 0:
            max_size = _max_size("receive_line()", max_size)
        return await self._receive_delimited(b"\n", max_size, True)

    async def _receive_delimited(self, delimiter: bytes, max_size: int, strip_cr: bool) -> bytes:
        # One search loop for receive_until and receive_line.  The limit is
        # checked *before* anything is consumed, so MessageTooLong always
        # leaves the buffer untouched.  With L buffered bytes and no
        # delimiter, the message is at least L - len(delim) + 1 bytes long
        # (the delimiter may have begun in the last bytes), so it is hopeless
        # once L >= max_size + len(delim).  A line may also carry one "\r"
        # beyond max_size (it is stripped): one byte of slack.  Each search
        # resumes len(delim) - 1 bytes before the previous end, so a
        # delimiter split across reads is found, and found leftmost.
        self._check_receive()
        waits = self._waits
        dlen = len(delimiter)
        slack = 1 if strip_cr else 0
        start = 0
        while True:
            buf = self._buf
            if buf:
                idx = buf.find(delimiter, start)
                if idx >= 0:
                    end = idx
                    if strip_cr and end > 0 and buf[end - 1] == 0x0D:
                        end -= 1
                    if end > max_size:
                        break
                    await checkpoint_if_cancelled()
                    out = bytes(buf[:end])
                    if idx + dlen >= len(buf):
                        self._buf = None
                    else:
                        del buf[: idx + dlen]
                    if self._waits == waits:
                        await self._coop()
                    return out
                if len(buf) >= max_size + slack + dlen:
                    break
                start = max(0, len(buf) - dlen + 1)
            if not await self._fill(DEFAULT_RECEIVE_SIZE):
                partial = self._take(len(self._buf)) if self._buf else b""
                raise self._peer_fault(
                    IncompleteRead(
                        f"connection closed before {delimiter!r} (after {len(partial)} bytes)",
                        partial=partial,
                    )
                )
        what = "line" if strip_cr else "message"
        raise self._peer_fault(
            MessageTooLong(
                f"no {delimiter!r} within {max_size} bytes ({what} too long)", max_size=max_size
            )
        )
