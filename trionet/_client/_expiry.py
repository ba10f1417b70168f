"""A pool's idle connections, newest lent first, and their expiry after ``idle_timeout``.

:class:`IdleConnections` keeps each idle connection with the time it came
back, oldest first: the pool lends the newest, the expiry closes the oldest
(see "State" in ``_pool``).  With an ``idle_timeout``,
:meth:`IdleConnections.expire` closes those idle longer than that -- the
pool calls it whenever it lends -- and :meth:`IdleConnections.sweep_forever`
is the pool's background idle sweep, which sleeps until the oldest
connection expires (see "The sweep" in ``_pool``).

Design notes
============

Deadlines
---------
A connection expires when ``now >= since + idle_timeout``, and the sweep
sleeps until exactly ``since + idle_timeout``: one expression for both
(``expires_at``).  Written as ``now - since >= idle_timeout`` instead, float
rounding can make the sweep wake *at* its deadline and still find nothing
expired (``(0.1 + 0.25) - 0.1 < 0.25``), then sleep until a deadline already
past -- a busy loop, and a hang under a mock clock that only jumps when every
task is blocked.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

import trio

from .._address import Address
from .._stream import Connection
from .._stream._hooks import begin_orderly_close

log = logging.getLogger("trionet.pool")

__all__ = ["IdleConnections"]


class IdleConnections:
    """The idle connections of the pool for ``target``, closed after ``timeout`` seconds.

    An expired connection's close is orderly: when closing at once could
    reset it, ``on_expired`` is called with it to linger for the server's EOF.
    """

    __slots__ = ("_conns", "_on_expired", "_target", "_wakeup", "expired", "timeout")

    def __init__(
        self,
        timeout: float | None,
        target: Address,
        on_expired: Callable[[Connection], None],
    ) -> None:
        #: Seconds a connection may stay idle, or None (until the pool closes).
        self.timeout = timeout
        self._target = target
        self._on_expired = on_expired
        # (connection, time it came back), oldest on the left.
        self._conns: collections.deque[tuple[Connection, float]] = collections.deque()
        #: Connections closed because they outlived ``timeout`` (cumulative).
        self.expired = 0
        # Set by the sweep while it waits for a first idle connection.
        self._wakeup: trio.Event | None = None

    def __len__(self) -> int:
        return len(self._conns)

    def put(self, conn: Connection, since: float) -> None:
        """Keep ``conn``, idle since ``since``."""
        self._conns.append((conn, since))
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def pop_newest(self) -> Connection | None:
        """The connection that came back last (to lend it), or None."""
        return self._conns.pop()[0] if self._conns else None

    def pop_oldest(self) -> Connection | None:
        """The connection idle the longest (to close it), or None."""
        return self._conns.popleft()[0] if self._conns else None

    def expires_at(self, since: float) -> float:
        """When a connection idle since ``since`` expires (the sweep sleeps until then)."""
        assert self.timeout is not None
        return since + self.timeout

    def expire(self, now: float) -> None:
        """Close every connection that has expired by ``now``."""
        if self.timeout is None:
            return
        while self._conns and now >= self.expires_at(self._conns[0][1]):
            conn, _since = self._conns.popleft()
            self.expired += 1
            log.debug("pool for %s closes idle connection #%d", self._target, conn.id)
            if begin_orderly_close(conn):
                self._on_expired(conn)

    async def sweep_forever(self) -> None:
        """Expire each connection when its time comes (only with a ``timeout``)."""
        while True:
            if self._conns:
                await trio.sleep_until(self.expires_at(self._conns[0][1]))
                self.expire(trio.current_time())
            else:
                wakeup = self._wakeup = trio.Event()
                await wakeup.wait()
