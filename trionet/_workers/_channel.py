"""The supervisor <-> worker channel: one JSON object per line over a socketpair.

Sans-I/O at its core (:class:`LineDecoder`, :func:`encode`), h11's shape:
bytes in, messages out.  :class:`Channel` puts it on a Trio stream.

The supervisor creates one ``AF_UNIX`` socketpair per worker and hands the
worker its end as ``--worker-channel FD``.  Worker to supervisor::

    {"event": "ready", "pid": 1234}                 # accepting on every bind
    {"event": "exit", "stats": {...}, "shutdown": {...}}   # drained, about to exit

Supervisor to worker::

    {"command": "drain", "grace": 10.0}      # drain within grace (null: its --grace;
                                             # "inf": no limit); a later, shorter
                                             # grace cuts it (0: cancel the handlers)

The channel is also the worker's lifeline: end-of-file means the supervisor
is gone (even by ``kill -9``), and the worker drains and exits -- no orphans.
"""

from __future__ import annotations

import json
import math
import socket as _stdlib_socket
from typing import Any, Final

import trio

from .._exceptions import TrionetError

__all__ = ["MAX_LINE", "Channel", "ChannelError", "LineDecoder", "encode"]

#: The longest message line either side accepts (a stats line is ~600 bytes).
MAX_LINE: Final = 64 * 1024


class ChannelError(TrionetError):
    """The other end sent something that is not a message (a line too long, bad JSON)."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as a line of JSON (``inf`` grace is sent as ``"inf"``).

    Example::

        >>> encode({"command": "drain", "grace": float("inf")})
        b'{"command":"drain","grace":"inf"}\\n'
    """
    clean = {
        key: ("inf" if isinstance(value, float) and math.isinf(value) else value)
        for key, value in message.items()
    }
    return json.dumps(clean, separators=(",", ":"), allow_nan=False).encode() + b"\n"


class LineDecoder:
    """Bytes in, messages (dicts) out; a line longer than ``MAX_LINE`` is an error.

    Example::

        >>> decoder = LineDecoder()
        >>> decoder.feed(b'{"event":"ready","pid":7}\\n{"ev')
        [{'event': 'ready', 'pid': 7}]
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._buffer = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes | bytearray) -> list[dict[str, Any]]:
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while (end := self._buffer.find(b"\n")) >= 0:
            if end > self._max_line:
                raise ChannelError(f"a channel line longer than {self._max_line} bytes")
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            messages.append(_decode(line))
        if len(self._buffer) > self._max_line:
            raise ChannelError(f"a channel line longer than {self._max_line} bytes")
        return messages

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line (non-zero at EOF: the peer died mid-message)."""
        return len(self._buffer)


def _decode(line: bytes) -> dict[str, Any]:
    try:
        value = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
        raise ChannelError(f"a channel line that is not JSON: {line[:80]!r}") from None
    if not isinstance(value, dict):
        raise ChannelError(f"a channel line that is not a JSON object: {line[:80]!r}")
    return value


def _no_constant(name: str) -> Any:
    """``NaN``, ``Infinity``: not JSON (and not writable to a stats file)."""
    raise ValueError(f"{name} is not JSON")


class Channel:
    """Messages over a socket: :meth:`send`, :meth:`receive` (None at EOF), and more."""

    def __init__(self, sock: _stdlib_socket.socket) -> None:
        self._sock = sock  # kept for receive_nowait (Trio's socket wraps this same object)
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self._decoder = LineDecoder()
        self._ready: list[dict[str, Any]] = []
        self._send_lock = trio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._stream.send_all(encode(message))

    async def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the other end has closed (or reset)."""
        while not self._ready:
            try:
                data = await self._stream.receive_some(MAX_LINE)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                return None
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0)

    def receive_nowait(self) -> list[dict[str, Any]]:
        """Every message already received by the kernel, without waiting.

        Once the other process has exited, what it wrote is all in our
        receive buffer -- even if a process it forked still holds its end
        open, so that no end-of-file will come.
        """
        messages, self._ready = self._ready, []
        while True:
            try:
                data = self._sock.recv(MAX_LINE, _stdlib_socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # reset, closed
                break
            if not data:
                break
            messages.extend(self._decoder.feed(data))
        return messages

    async def aclose(self) -> None:
        await self._stream.aclose()
