"""The reaper: one task and one coarse clock for every connection's idle and slow-sender rules.

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

Slow senders (``min_receive_rate``)
-----------------------------------
``idle_timeout`` never fires for a slowloris peer: it sends a byte now and
then, so bytes keep moving.  With a rate ``R`` and a grace ``G``, the same
scan also keeps, per connection, a *message clock*: it starts at the scan
that first sees the peer's bytes arrive while the server has sent nothing
since, counts what the peer sends from then on, and stops when the server
sends anything (the message was answered).  At a scan that sees more of the
peer's bytes, a message older than ``G`` that averages below ``R`` bytes per
second closes the connection (``stats.slow_closed``).  What *arrived* is
counted, not what the handler read: the bytes read plus those the kernel
still holds unread (``FIONREAD``, asked only at a scan that sees the
connection's byte counts move), so a handler that reads slowly, or computes between two
reads, never makes its fast peer look slow.  Judged only when the
peer *sends*: a peer that went quiet (waiting for a reply the handler is
still computing, or between requests) is never judged by rate -- silence is
``idle_timeout``'s business.  Like the idle clock, the message clock starts
at the scan that noticed the bytes, so it is never longer than the truth.

A server at ``max_connections`` stops accepting, and the kernel's queue is
first in, first out: under a flood of slow senders a fresh client queues
behind all of them, and evicting slot holders one grace period at a time
would take minutes to reach it.  So with ``min_receive_rate`` the server
keeps accepting into a *waiting room* (``QUEUED`` records without a slot,
up to :data:`WAITING_ROOM`), and the reaper applies the same rule there to
what the kernel holds unread for each waiting peer (``FIONREAD``): a peer
whose unread bytes keep growing, slower than ``R`` after ``G`` seconds, is
closed before it ever gets a slot, while a peer that sent its request and
waits is left alone.  Each scan also sends to the back of the slot queue,
in accept order, every waiting peer still sending and every one that has
sent nothing yet: slots go first to the peers that have sent their request,
first come, first served among them (and among the silent ones, so a
protocol where the server speaks first keeps its order).  So a fresh client that sent its request
gets the next slot that frees, and the senders that were ahead of it are
closed within about ``G`` plus a tick.  (A waiting
connection of a custom socket factory has no descriptor, and is not judged
until it has a slot.)  The message clock restarts when the handler starts:
time spent in the waiting room is the server's doing.

Cost
----
One scan touches every live connection: a dict walk and two attribute reads
each, about 10 ms per 100,000 connections, four times a second at most; with
``min_receive_rate``, a few more reads per connection, and one ``ioctl`` per
connection in the waiting room.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

import trio

from .._stream._sockopts import pending_bytes
from ._record import QUEUED

if TYPE_CHECKING:
    from .._stats import Counters

log = logging.getLogger("trionet.idle")

__all__ = ["WAITING_ROOM", "IdleReaper"]

#: Longest interval between two scans (seconds).
MAX_TICK = 0.25
#: Shortest interval between two scans (seconds), whatever the timeout.
MIN_TICK = 0.05
#: How many connections may wait in the waiting room (``min_receive_rate``
#: with ``max_connections``).  Fixed: it is needed most where slots are few,
#: and each waiting connection costs the scan an ``ioctl`` (~2 us).
WAITING_ROOM = 1024


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
    state: int


class Rated(Watched, Protocol):
    """What the slow-sender rule needs besides (the server's ``RatedRecord``)."""

    raw: object
    rate_rx: int
    rate_tx: int
    rate_since: float
    rate_bytes: int
    ticket: trio.Event | None


def _unread(raw: object) -> int | None:
    """Bytes the kernel holds unread on ``raw`` (None: no descriptor, or closed)."""
    return None if raw is None else pending_bytes(raw)


class IdleReaper:
    """Closes idle connections and slow senders (internal).

    Args:
        timeout: the idle timeout in seconds (> 0), or None (no idle rule).
        conns: the server's live connections, by id (read, never modified).
        counters: where ``idle_closed`` and ``slow_closed`` are counted.
        rate: ``min_receive_rate`` in bytes per second, or None (no slow-sender
            rule); the records are then :class:`Rated`.
        grace: ``min_receive_grace`` in seconds.
        to_back: sends a waiting connection's ticket to the back of the slot
            queue (when its peer is seen still sending).
    """

    __slots__ = ("_conns", "_counters", "_to_back", "grace", "rate", "tick", "timeout")

    def __init__(
        self,
        timeout: float | None,
        conns: Mapping[int, Watched],
        counters: Counters,
        *,
        rate: float | None = None,
        grace: float = 1.0,
        to_back: Callable[[trio.Event], object] | None = None,
    ) -> None:
        self.timeout = timeout
        self.rate = rate
        self.grace = grace
        spans = [t for t in (timeout, grace if rate is not None else None) if t is not None]
        self.tick = max(MIN_TICK, min(min(spans, default=MAX_TICK * 4) / 4, MAX_TICK))
        self._conns = conns
        self._counters = counters
        self._to_back = to_back

    def watch(self, rec: Watched, scope: trio.CancelScope | None) -> None:
        """Start the clocks for a connection (called when its handler starts in ``scope``)."""
        rec.scope = scope
        conn = rec.conn
        rx, tx = conn.bytes_received, conn.bytes_sent
        rec.seen_bytes = rx + tx
        rec.seen_at = trio.current_time()
        if self.rate is not None:
            rated: Rated = rec  # type: ignore[assignment]
            rated.rate_rx, rated.rate_tx = rx + (_unread(rated.raw) or 0), tx
            rated.rate_since = -1.0  # the waiting room's clock is not the peer's

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
        """One pass: stamp connections that made progress, close idle ones and slow senders.

        Connections whose handler has not started yet (not watched, no
        ``scope``, or still in their stages) are skipped -- except, with
        ``min_receive_rate``, those in the waiting room.  Returns how many
        connections were closed.
        """
        timeout = self.timeout
        rate = self.rate
        closed = 0
        for rec in list(self._conns.values()):
            scope = rec.scope
            if scope is None:
                continue
            conn = rec.conn
            if rec.seen_at < 0:  # not watched (yet)
                if (
                    rate is not None
                    and rec.state == QUEUED
                    and not conn.closed
                    and self._waiting_too_slow(rec, rate, now)  # type: ignore[arg-type]
                ):
                    closed += self._close_slow(rec, scope)
                continue
            rx, tx = conn.bytes_received, conn.bytes_sent
            total = rx + tx
            if total != rec.seen_bytes:
                rec.seen_bytes = total
                rec.seen_at = now
                if rate is not None and self._too_slow(rec, rx, tx, rate, now):  # type: ignore[arg-type]
                    closed += self._close_slow(rec, scope)
            elif timeout is not None and now - rec.seen_at >= timeout and not conn.closed:
                log.debug("closing connection #%d: idle for %.1f s", conn.id, now - rec.seen_at)
                self._counters.idle_closed += 1
                closed += 1
                scope.cancel()
                conn.close()
        return closed

    def _too_slow(self, rec: Rated, rx: int, tx: int, rate: float, now: float) -> bool:
        # The message clock of a connection in its handler (module notes):
        # on what arrived -- read, or waiting in the kernel to be read.
        arrived = rx + (_unread(rec.raw) or 0)
        received = arrived - rec.rate_rx
        answered = tx != rec.rate_tx
        rec.rate_rx, rec.rate_tx = arrived, tx
        if answered:
            rec.rate_since = -1.0  # the server answered: that message is over
            return False
        if received <= 0:
            return False
        if rec.rate_since < 0:
            rec.rate_since = now
            rec.rate_bytes = received
            return False
        rec.rate_bytes += received
        elapsed = now - rec.rate_since
        return elapsed >= self.grace and rec.rate_bytes < rate * elapsed

    def _waiting_too_slow(self, rec: Rated, rate: float, now: float) -> bool:
        # The same clock in the waiting room, on the kernel's count of unread bytes.
        unread = _unread(rec.raw)
        if unread is None:
            return False  # no descriptor: not judged
        if unread <= rec.rate_rx:
            if unread == 0 and self._to_back is not None and rec.ticket is not None:
                self._to_back(rec.ticket)  # nothing sent yet: behind those who did
            return False  # nothing new: not judged
        rec.rate_rx = unread
        # Still sending: wait behind the peers that have sent their request.
        if self._to_back is not None and rec.ticket is not None:
            self._to_back(rec.ticket)
        if rec.rate_since < 0:
            rec.rate_since = now
            return False
        elapsed = now - rec.rate_since
        return elapsed >= self.grace and unread < rate * elapsed

    def _close_slow(self, rec: Watched, scope: trio.CancelScope) -> int:
        conn = rec.conn
        log.debug("closing connection #%d: sending below min_receive_rate", conn.id)
        self._counters.slow_closed += 1
        scope.cancel()
        conn.close()
        return 1
