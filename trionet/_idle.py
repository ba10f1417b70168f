"""The idle reaper: one task and one coarse clock for every connection's idle timeout.

A timer (or a task) per connection would cost memory and a heap operation per
byte-moving call.  Instead the reaper reads the byte counters the connections
keep anyway: every ``tick`` it compares each connection's
``bytes_received + bytes_sent`` with what it saw last time.  Progress moves
the connection's "last seen active" stamp to *now*; no progress for
``idle_timeout`` seconds closes it and cancels its handler.  The hot path pays
nothing at all.

Bounds: the stamp is never earlier than the real last activity, so no
connection is closed early; it is at most one tick late, and detection is at
most one more tick late, so the close happens within ``idle_timeout + 2 *
tick``.  With ``tick = min(idle_timeout / 4, 0.25)`` that is at most half a
second late.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._connection import Connection

log = logging.getLogger("trionet.idle")

__all__ = ["IdleReaper"]


class IdleReaper:
    __slots__ = ("_conns", "_counters", "tick", "timeout")

    def __init__(self, timeout: float, conns: dict[int, Connection], counters: object) -> None:
        self.timeout = timeout
        self.tick = min(timeout / 4, 0.25)
        self._conns = conns
        self._counters = counters

    def watch(self, conn: Connection) -> None:
        conn._seen_bytes = 0
        conn._seen_at = trio.current_time()

    async def run(self) -> None:
        timeout = self.timeout
        while True:
            await trio.sleep(self.tick)
            now = trio.current_time()
            for conn in list(self._conns.values()):
                total = conn.bytes_received + conn.bytes_sent
                if total != conn._seen_bytes:
                    conn._seen_bytes = total
                    conn._seen_at = now
                elif now - conn._seen_at >= timeout and not conn.closed:
                    log.debug("closing idle connection #%d from %s", conn.id, conn.peer)
                    self._counters.idle_closed += 1  # type: ignore[attr-defined]
                    if conn._scope is not None:
                        conn._scope.cancel()
                    conn.close()
