"""The idle reaper: one task and one coarse clock for every connection's idle timeout.

A timer (or a task) per connection would cost memory and a heap operation per
byte-moving call.  Instead the reaper reads the byte counters the connections
keep anyway: every ``tick`` it compares each connection's
``bytes_received + bytes_sent`` with what it saw last time.  Progress moves
the connection's "last seen active" stamp to *now*; no progress for
``idle_timeout`` seconds closes it and cancels its handler.  The hot path pays
nothing at all: no timer is armed, moved or cancelled when bytes flow.

Bounds
------
The stamp is taken at the scan that *noticed* the progress, so it is never
earlier than the real last activity: no connection is ever closed early.  It
is at most one tick later than the activity, and the scan that notices the
timeout is at most one more tick late, so the close happens within
``idle_timeout + 2 * tick``.  With ``tick = max(0.05, min(idle_timeout / 4,
0.25))`` that is at most half a second late (plus scheduling delay), inside
the promised ``idle_timeout + 1 s``.  The 50 ms floor keeps a tiny timeout
from turning the reaper into a busy loop.  Ticks are scheduled on an absolute
grid (``sleep_until``), so the time a scan takes does not add up into drift.

When the clock starts
---------------------
A connection is watched from the moment its *handler starts*, not from
``accept()``: a connection swept from the kernel queue during a drain may
wait for a ``max_connections`` slot first, and that wait is the server's
doing, not the peer's silence.  The server calls :meth:`IdleReaper.watch`
when the handler starts, and sets the connection's ``scope`` (the handler's
cancel scope) at the same moment; :meth:`IdleReaper.scan` skips connections
whose ``scope`` is still None, so a connection is never closed before its
handler ran.

Cost
----
One scan touches every live connection: a dict walk and two attribute reads
each, about 10 ms per 100,000 connections, four times a second at most.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import trio

if TYPE_CHECKING:
    from .._stats import Counters

log = logging.getLogger("trionet.idle")

__all__ = ["IdleReaper"]

#: Longest interval between two scans (seconds).
MAX_TICK = 0.25
#: Shortest interval between two scans (seconds), whatever the timeout.
MIN_TICK = 0.05


class _Conn(Protocol):
    id: int
    bytes_received: int
    bytes_sent: int

    @property
    def closed(self) -> bool: ...

    def close(self) -> None: ...


class Watched(Protocol):
    """What the reaper needs per connection (the server's ``ConnectionRecord``)."""

    @property
    def conn(self) -> _Conn: ...

    seen_bytes: int
    seen_at: float
    scope: trio.CancelScope | None


class IdleReaper:
    """Closes connections that moved no bytes for ``timeout`` seconds (internal).

    Args:
        timeout: the idle timeout in seconds (> 0).
        conns: the server's live connections, by id (read, never modified).
        counters: where ``idle_closed`` is counted.
    """

    __slots__ = ("_conns", "_counters", "tick", "timeout")

    def __init__(self, timeout: float, conns: Mapping[int, Watched], counters: Counters) -> None:
        self.timeout = timeout
        self.tick = max(MIN_TICK, min(timeout / 4, MAX_TICK))
        self._conns = conns
        self._counters = counters

    def watch(self, rec: Watched, scope: trio.CancelScope | None) -> None:
        """Start the clock for a connection (called when its handler starts in ``scope``)."""
        rec.scope = scope
        conn = rec.conn
        rec.seen_bytes = conn.bytes_received + conn.bytes_sent
        rec.seen_at = trio.current_time()

    async def run(self) -> None:
        """Scan every ``tick`` seconds until cancelled."""
        deadline = trio.current_time()
        while True:
            deadline += self.tick
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if now > deadline + self.tick:
                deadline = now  # we fell behind (a busy loop): do not scan in a burst
            self.scan(now)

    def scan(self, now: float) -> int:
        """One pass: stamp connections that made progress, close those idle too long.

        Connections whose handler has not started yet (not watched, no
        ``scope``, or still in their stages) are skipped.  Returns how many
        connections were closed.
        """
        timeout = self.timeout
        closed = 0
        for rec in list(self._conns.values()):
            scope = rec.scope
            if scope is None or rec.seen_at < 0:  # not watched (yet)
                continue
            conn = rec.conn
            total = conn.bytes_received + conn.bytes_sent
            if total != rec.seen_bytes:
                rec.seen_bytes = total
                rec.seen_at = now
            elif now - rec.seen_at >= timeout and not conn.closed:
                log.debug("closing connection #%d: idle for %.1f s", conn.id, now - rec.seen_at)
                self._counters.idle_closed += 1
                closed += 1
                scope.cancel()
                conn.close()
        return closed
