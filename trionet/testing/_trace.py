"""The virtual network's trace: plain, comparable records of what happened.

Every record carries its time in seconds since :meth:`VirtualNetwork.install
<trionet.testing.VirtualNetwork.install>` (virtual time under
``autojump_clock``), a *key* -- the endpoint that acted, written
``"local>peer"`` (``"127.0.0.1:49152>127.0.0.10:80"``), a listener's own
address, or ``""`` for a fault -- and a sequence number counted per key.
Nothing in a record is process-wide (no ids, no object addresses): ports
come from the network's own deterministic allocator.  The trace is ordered
by ``(time, key, seq)``, so the interleaving Trio happens to choose between
two tasks at one instant does not change it: each endpoint is normally
driven by one task, and its own records keep their order.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Trace", "TraceEvent"]


@attrs.frozen(order=True)
class TraceEvent:
    """One record of :attr:`VirtualNetwork.trace <trionet.testing.VirtualNetwork.trace>`.

    Attributes:
        time: Seconds since ``install()``.
        key: Who acted: ``"local>peer"`` for a connection endpoint, the
            address for a listener, ``""`` for a fault.
        seq: The record's number among those with the same key.
        kind: What happened: ``listen``, ``connect``, ``refused``,
            ``connected``, ``accept``, ``send``, ``recv``, ``eof``,
            ``shutdown``, ``close``, ``reset``, or a fault (``partition``,
            ``heal``, ``hold``, ``release``, ``latency``,
            ``reset_connections``, ``crash``, ``restart``).
        detail: Plain values: for ``send`` ``(nbytes, arrives_at)``, for
            ``recv`` ``(nbytes,)``, for ``close`` ``("fin",)`` or
            ``("rst",)``, for a fault its arguments.
    """

    time: float
    key: str
    seq: int
    kind: str
    detail: tuple[Any, ...] = ()

    def __str__(self) -> str:
        detail = " ".join(str(d) for d in self.detail)
        return f"{self.time:10.6f} {self.key or '-'}#{self.seq} {self.kind} {detail}".rstrip()


class Trace:
    """Collects :class:`TraceEvent` records, numbering them per key."""

    def __init__(self) -> None:
        self._events: list[TraceEvent] = []
        self._seq: dict[str, int] = {}
        self.origin = 0.0

    def record(self, now: float, key: str, kind: str, *detail: Any) -> None:
        seq = self._seq.get(key, 0)
        self._seq[key] = seq + 1
        self._events.append(TraceEvent(self.since(now), key, seq, kind, detail))

    def since(self, now: float) -> float:
        """Seconds since the origin, rounded to the nanosecond.

        Rounded so that one scenario run twice in one process compares
        equal: the second run starts at another absolute virtual time, and
        float subtraction would differ in the last bits.
        """
        return round(now - self.origin, 9)

    def events(self) -> list[TraceEvent]:
        """Every record so far, ordered by ``(time, key, seq)``."""
        return sorted(self._events, key=lambda e: (e.time, e.key, e.seq))

    def clear(self) -> None:
        self._events.clear()
        self._seq.clear()
