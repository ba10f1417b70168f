"""Per-connection settings: :class:`ConnOptions`, their defaults and their check.

A server or a client plan makes one ``ConnOptions`` and every connection it
creates points at it; a connection wrapping another
(:class:`~trionet._stream._wrapped.StreamConnection`) points at its inner
connection's.  One shared record rather than one slot per setting: every
slot costs each idle connection 8 bytes.
"""

from __future__ import annotations

from typing import Final

import attrs

from .._validate import check_seconds, public_call

__all__ = [
    "DEFAULT_CLOSE_LINGER",
    "DEFAULT_OPTIONS",
    "DEFAULT_SCHEDULE_BUDGET",
    "ConnOptions",
    "check_close_linger",
]

#: Immediately-completed operations between two schedule points (1 = strict Trio).
DEFAULT_SCHEDULE_BUDGET: Final = 1
#: Seconds an orderly close may linger for the peer's EOF (see ``Connection.aclose``).
DEFAULT_CLOSE_LINGER: Final = 5.0


@attrs.frozen
class ConnOptions:
    """Per-connection settings, one shared instance per server or client plan (internal).

    Kept in one slot, not one per setting: every slot costs each idle
    connection 8 bytes.
    """

    #: ``schedule_budget`` (1 = strict Trio).
    budget: int = DEFAULT_SCHEDULE_BUDGET
    #: ``close_linger`` seconds (0 = close at once).
    close_linger: float = DEFAULT_CLOSE_LINGER
    #: A TLS connection tolerates a peer that ends without ``close_notify``
    #: (servers do: HTTPS clients often skip it).
    lenient_tls_eof: bool = False

    @classmethod
    def of(cls, budget: int, close_linger: float, lenient_tls_eof: bool = False) -> ConnOptions:
        """The shared default instance when the values are the defaults, else a new one."""
        options = cls(budget, close_linger, lenient_tls_eof)
        return DEFAULT_OPTIONS if options == DEFAULT_OPTIONS else options


DEFAULT_OPTIONS: Final = ConnOptions()


def check_close_linger(call: str, value: object) -> float:
    """``close_linger``: finite seconds >= 0 (0 closes at once).

    Infinite is refused: a silent peer that never closes would hold the
    descriptor (and, past ``max_connections`` lingers, a slot) for good.

    Raises:
        TypeError, ValueError: as :func:`trionet._validate.check_seconds`,
            the message naming ``call``.
    """
    with public_call(call):
        seconds = check_seconds("close_linger", value, infinite=False)
    assert seconds is not None
    return seconds
