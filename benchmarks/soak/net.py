"""Loopback client plumbing for the soak: sockets from chosen source addresses, tallies, resets.

Every client socket is bound to a source address in 127.0.0.0/8 before it
connects, so the server sees many hosts (its per-host limit and access policy
apply to each); ``IP_BIND_ADDRESS_NO_PORT`` leaves the port to ``connect``,
so churn does not run a source address out of ephemeral ports.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

__all__ = [
    "CONNECT_ERRORS",
    "Tally",
    "Tallies",
    "closed_by_peer",
    "connect_from",
    "drain_until_eof",
    "proxy_v1",
    "proxy_v2",
    "reset_close",
]

_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

#: What a failed connect looks like (the server is down, or restarting).
CONNECT_ERRORS = (ConnectionRefusedError, ConnectionResetError, ConnectionAbortedError)


@dataclass
class Tally:
    """One client category's attempts and outcomes (client-side)."""

    attempts: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    #: (monotonic time, outcome, detail) of the first few notable outcomes.
    events: list[tuple[float, str, str]] = field(default_factory=list)

    def count(self, outcome: str, detail: str = "") -> None:
        """Record one outcome (and when, if it is a loss, a corruption or a reset)."""
        self.outcomes[outcome] += 1
        notable = any(word in outcome for word in ("lost", "corrupt", "reset", "replied"))
        if notable and len(self.events) < 30:
            self.events.append((time.monotonic(), outcome, detail))

    def as_dict(self, t0: float = 0.0) -> dict[str, Any]:
        """JSON-ready (event times in seconds since ``t0``)."""
        return {
            "attempts": self.attempts,
            "outcomes": dict(sorted(self.outcomes.items())),
            "events": [[round(t - t0, 3), outcome, detail] for t, outcome, detail in self.events],
        }


class Tallies(dict[str, Tally]):
    """Tallies by category, made on first use."""

    def __missing__(self, key: str) -> Tally:
        self[key] = Tally()
        return self[key]

    def as_dict(self, t0: float = 0.0) -> dict[str, dict[str, Any]]:
        """JSON-ready (event times in seconds since ``t0``)."""
        return {name: tally.as_dict(t0) for name, tally in sorted(self.items())}


async def connect_from(
    source: str, address: tuple[str, int], timeout: float = 10.0
) -> trio.SocketStream:
    """A TCP stream from ``source`` (an IP on loopback) to ``address``.

    Raises:
        OSError: the connect failed (``ConnectionRefusedError`` while the
            server is down).
        trio.TooSlowError: no connection within ``timeout`` seconds.
    """
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        except OSError:
            pass
        await sock.bind((source, 0))
        with trio.fail_after(timeout):
            await sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


#: The PROXY protocol v2 signature.
PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    """A PROXY protocol v1 header naming ``client`` as the peer of ``server``."""
    return b"PROXY TCP4 %s %s %d %d\r\n" % (
        client[0].encode(),
        server[0].encode(),
        client[1],
        server[1],
    )


def proxy_v2(client: tuple[str, int], server: tuple[str, int]) -> bytes:
    """A PROXY protocol v2 header (PROXY command, TCP over IPv4) naming ``client``."""
    body = (
        socket.inet_aton(client[0])
        + socket.inet_aton(server[0])
        + struct.pack("!HH", client[1], server[1])
    )
    return PROXY_V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def reset_close(stream: trio.SocketStream) -> None:
    """Close with a reset (``SO_LINGER`` on, zero seconds): the peer sees ``ECONNRESET``."""
    try:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    stream.socket.close()


def closed_by_peer(stream: trio.SocketStream, most: int = 128) -> bool | None:
    """Without waiting: has the peer closed or reset the connection?

    Reads (and drops) what is pending, non-blocking, up to ``most`` reads:
    True at end-of-file or a reset, False when nothing more is there yet
    (the connection is open), None when ``most`` reads did not get through
    the pending bytes.
    """
    try:
        fd = stream.socket.fileno()
    except (OSError, AttributeError):
        return True
    if fd < 0:
        return True
    for _ in range(most):
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT):
                return True
            raise
        if not chunk:
            return True
    return None


def peer_gone(exc: BaseException) -> bool:
    """``exc`` says the peer reset or closed the connection."""
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        return True
    return isinstance(exc, OSError) and exc.errno in (
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ECONNABORTED,
    )


async def drain_until_eof(
    stream: trio.abc.ReceiveStream, timeout: float, limit: int = 1 << 24
) -> tuple[bytes, str]:
    """Read until end-of-file: (the bytes, ``"eof"`` | ``"reset"`` | ``"timeout"`` | ``"limit"``).

    Keeps at most ``limit`` bytes; stops with ``"limit"`` beyond that.
    """
    data = bytearray()
    deadline = time.monotonic() + timeout
    with trio.move_on_at(trio.current_time() + timeout):
        try:
            while time.monotonic() < deadline:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return bytes(data), "eof"
                data += chunk
                if len(data) > limit:
                    return bytes(data), "limit"
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if peer_gone(exc) or isinstance(exc, trio.BrokenResourceError):
                return bytes(data), "reset"
            raise
    return bytes(data), "timeout"
