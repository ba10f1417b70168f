"""Socket options on a virtual socket: the common ones are kept, the rest refused.

An option in :data:`KNOWN` is accepted and remembered, and ``getsockopt``
returns what was set (0 if nothing was); ``SO_LINGER`` with ``(1, 0)``
makes ``close()`` send RST, as on Linux.  Any other option raises
``OSError(ENOPROTOOPT)`` -- consistently, on set and on get -- so code that
depends on an option the network does not simulate learns it at once.
"""

from __future__ import annotations

import errno
import socket as _stdlib
import struct
from typing import Any

__all__ = ["KNOWN", "SocketOptions"]


def _names(level: int, *names: str) -> set[tuple[int, int]]:
    return {(level, getattr(_stdlib, n)) for n in names if hasattr(_stdlib, n)}


#: (level, option) pairs a virtual socket accepts.
KNOWN: frozenset[tuple[int, int]] = frozenset(
    _names(
        _stdlib.SOL_SOCKET,
        "SO_REUSEADDR",
        "SO_REUSEPORT",
        "SO_KEEPALIVE",
        "SO_LINGER",
        "SO_SNDBUF",
        "SO_RCVBUF",
        "SO_RCVLOWAT",
        "SO_SNDLOWAT",
        "SO_OOBINLINE",
        "SO_PRIORITY",
    )
    | _names(
        _stdlib.IPPROTO_TCP,
        "TCP_NODELAY",
        "TCP_NOTSENT_LOWAT",
        "TCP_KEEPIDLE",
        "TCP_KEEPINTVL",
        "TCP_KEEPCNT",
        "TCP_USER_TIMEOUT",
        "TCP_QUICKACK",
        "TCP_DEFER_ACCEPT",
        "TCP_CORK",
        "TCP_MAXSEG",
        "TCP_FASTOPEN",
        "TCP_CONGESTION",
    )
    | _names(_stdlib.IPPROTO_IP, "IP_BIND_ADDRESS_NO_PORT", "IP_TOS", "IP_TTL", "IP_FREEBIND")
    | _names(_stdlib.IPPROTO_IPV6, "IPV6_V6ONLY", "IPV6_TCLASS")
)

#: Options that can be read but not set (``setsockopt`` refuses them, as Linux does).
READ_ONLY: frozenset[tuple[int, int]] = frozenset(
    _names(_stdlib.SOL_SOCKET, "SO_ERROR", "SO_TYPE", "SO_DOMAIN", "SO_PROTOCOL", "SO_ACCEPTCONN")
)

_LINGER = struct.Struct("ii")
_SO_LINGER = (_stdlib.SOL_SOCKET, _stdlib.SO_LINGER)


class SocketOptions:
    """The options set on one virtual socket."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[tuple[int, int], int | bytes] = {}

    @staticmethod
    def _check(level: int, optname: int) -> None:
        if (level, optname) not in KNOWN:
            raise OSError(
                errno.ENOPROTOOPT,
                f"Protocol not available (option {level}/{optname} is not simulated "
                "by trionet.testing.VirtualNetwork)",
            )

    def set(self, level: int, optname: int, value: Any) -> None:
        self._check(level, optname)
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int):
            if not -(2**31) <= value < 2**31:
                raise OverflowError("socket option value must fit in a C int")
            stored: int | bytes = value
        elif isinstance(value, (bytes, bytearray, memoryview)):
            stored = bytes(value)
        else:
            raise TypeError(f"a socket option value must be an int or bytes, not {value!r}")
        if (level, optname) == _SO_LINGER and not (
            isinstance(stored, bytes) and len(stored) >= _LINGER.size
        ):
            raise OSError(errno.EINVAL, "Invalid argument (SO_LINGER takes struct linger)")
        self._values[(level, optname)] = stored

    def get(
        self, level: int, optname: int, buflen: int | None = None, fixed: int | None = None
    ) -> int | bytes:
        """The option's value; ``fixed`` is the value of a read-only option."""
        if fixed is None:
            self._check(level, optname)
        value: int | bytes = self._values.get((level, optname), 0) if fixed is None else fixed
        if buflen is None:
            if isinstance(value, bytes):
                return int.from_bytes(value[:4], "little", signed=True)
            return value
        if isinstance(value, int):
            value = struct.pack("i", value)
        return value[:buflen].ljust(min(buflen, max(len(value), 4)), b"\0")

    def linger_reset(self) -> bool:
        """Whether ``SO_LINGER`` is ``(1, 0)``: close with RST."""
        value = self._values.get(_SO_LINGER)
        if not isinstance(value, bytes):
            return False
        onoff, seconds = _LINGER.unpack(value[: _LINGER.size])
        return bool(onoff) and seconds == 0
