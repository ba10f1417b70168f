"""One direction of a virtual TCP connection: ordered segments in virtual time.

A :class:`Direction` carries bytes from one endpoint to the other.  Each
``send`` becomes a segment stamped with the virtual time it *arrives*:
``now + latency + jitter`` (jitter drawn from the direction's own RNG),
never earlier than the segment before it, so TCP's order holds.  Nothing
runs in the background: a receiver looks at the clock and takes the
segments that have arrived, and sleeps until the next arrival otherwise.

Bytes are never dropped.  A partition or a hold *blocks* the direction:
segments that had not arrived when it began stay queued.  When it ends they
are rescheduled -- after a partition as a retransmission (``now`` plus a
fresh delay), after a hold at their original time or now, whichever is
later -- and arrive in order.  The only way bytes vanish is a reset, as in
TCP.

Backpressure: at most ``capacity`` bytes may be queued in a direction (in
flight plus unread), the model of a send buffer and a receive window.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable

import trio

__all__ = ["DATA", "FIN", "RST", "Direction", "Segment", "Wakeup"]

DATA, FIN, RST = 0, 1, 2


class _Round:
    """The tasks one :meth:`Wakeup.fire` wakes: their event, and whether a close fired it."""

    __slots__ = ("closing", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.closing = False


class Wakeup:
    """A reusable wake-everyone signal (a :class:`trio.Event` renewed after each fire)."""

    __slots__ = ("_round",)

    def __init__(self) -> None:
        self._round: _Round | None = None

    def fire(self, *, closing: bool = False) -> None:
        """Wake every task waiting now; ``closing``: the socket they wait on was closed."""
        current = self._round
        if current is not None:
            self._round = None
            current.closing = closing
            current.event.set()

    async def wait(self, deadline: float = math.inf) -> bool:
        """Until the next :meth:`fire` or ``deadline`` (virtual time), whichever is first.

        Returns True if a ``fire(closing=True)`` woke us: as with Trio's own
        sockets, a task blocked when its socket is closed gets
        ``ClosedResourceError`` -- but one already woken (by data, say) that
        finds it closed when it runs gets ``EBADF``, as its retried system
        call would.
        """
        current = self._round
        if current is None:
            current = self._round = _Round()
        if deadline == math.inf:
            await current.event.wait()  # no cancel scope to open and close
        else:
            with trio.move_on_at(deadline):
                await current.event.wait()
        return current.closing


class Segment:
    """What one ``send`` (or a FIN, or an RST) put on the wire."""

    __slots__ = ("arrives", "data", "held", "kind")

    def __init__(self, kind: int, data: bytes, arrives: float, held: bool) -> None:
        self.kind = kind
        self.data = data
        self.arrives = arrives
        #: Sent, or still in flight, while the direction was blocked.
        self.held = held


class Direction:
    """The bytes one endpoint sends to the other, with their arrival times.

    ``delay`` returns the one-way delay of the next segment (latency plus a
    jitter draw); it is the network's, asked at each send so a latency
    change applies to segments sent after it.
    """

    __slots__ = (
        "_delay",
        "blocked_since",
        "capacity",
        "dst",
        "last",
        "offset",
        "queued",
        "readable",
        "receiver_gone",
        "rng",
        "segments",
        "sender_gone",
        "src",
        "writable",
    )

    def __init__(
        self,
        src: str,
        dst: str,
        rng: random.Random,
        delay: Callable[[Direction], float],
        capacity: int,
    ) -> None:
        #: Host names at each end (the link this direction crosses).
        self.src = src
        self.dst = dst
        self.rng = rng
        self._delay = delay
        self.capacity = capacity
        self.segments: deque[Segment] = deque()
        #: Bytes of the first segment already taken by the receiver.
        self.offset = 0
        #: Data bytes queued (in flight plus unread): bounded by ``capacity``.
        self.queued = 0
        #: Arrival time of the last segment (the next may not arrive earlier).
        self.last = -math.inf
        #: When a partition or hold began (None: not blocked).
        self.blocked_since: float | None = None
        self.readable = Wakeup()
        self.writable = Wakeup()
        #: The sending socket closed (nothing more will be pushed but an RST
        #: answer) / the receiving socket closed (nobody reads): both, and
        #: the network forgets the direction.
        self.sender_gone = False
        self.receiver_gone = False

    def delay(self) -> float:
        return self._delay(self)

    # -- the sender's side --------------------------------------------------

    def room(self) -> int:
        return self.capacity - self.queued

    def push(self, kind: int, data: bytes, now: float) -> float:
        """Put a segment on the wire; returns its arrival time."""
        arrives = max(now + self.delay(), self.last)
        self.last = arrives
        self.segments.append(Segment(kind, data, arrives, self.blocked_since is not None))
        if kind == DATA:
            self.queued += len(data)
        self.readable.fire()
        return arrives

    # -- the receiver's side ------------------------------------------------

    @staticmethod
    def _arrived(segment: Segment, now: float) -> bool:
        return not segment.held and segment.arrives <= now

    def next_arrival(self) -> float:
        """When the first segment not yet arrived will arrive (inf: none, or blocked)."""
        for segment in self.segments:
            return math.inf if segment.held else segment.arrives
        return math.inf

    def reset_arrived(self, now: float) -> bool:
        """Whether an RST has arrived (it is always the last segment)."""
        segments = self.segments
        return bool(segments) and segments[-1].kind == RST and self._arrived(segments[-1], now)

    def head(self, now: float) -> int | None:
        """The kind of the first arrived segment (None: nothing has arrived)."""
        segments = self.segments
        if segments and self._arrived(segments[0], now):
            return segments[0].kind
        return None

    def take(self, limit: int, now: float) -> bytes:
        """Up to ``limit`` bytes of the data that has arrived, stopping at a FIN or RST."""
        out: list[bytes] = []
        want = limit
        segments = self.segments
        while want > 0 and segments:
            segment = segments[0]
            if segment.kind != DATA or not self._arrived(segment, now):
                break
            start = self.offset
            chunk = segment.data[start : start + want]
            out.append(chunk)
            want -= len(chunk)
            if start + len(chunk) >= len(segment.data):
                segments.popleft()
                self.offset = 0
            else:
                self.offset = start + len(chunk)
        data = b"".join(out)
        if data:
            self.queued -= len(data)
            self.writable.fire()
        return data

    def in_flight(self, now: float) -> bool:
        """Whether any data has not arrived yet (the kernel's unacknowledged bytes)."""
        return any(s.kind == DATA and not self._arrived(s, now) for s in self.segments)

    def reset(self, now: float, *, at_once: bool = False) -> None:
        """Send RST: what has not arrived is dropped (never sent), then the RST follows.

        ``at_once``: a reset from the network itself -- it arrives now, even
        across a partition.
        """
        segments = self.segments
        kept = [s for s in segments if self._arrived(s, now)]
        if len(kept) != len(segments):
            segments.clear()
            segments.extend(kept)
            self.queued = sum(len(s.data) for s in kept if s.kind == DATA)
            if kept and self.offset and kept[0].kind == DATA:
                self.queued -= self.offset
            elif not kept:
                self.offset = 0
            self.last = kept[-1].arrives if kept else -math.inf
        if at_once:
            self.segments.append(Segment(RST, b"", now, False))
            self.readable.fire()
        else:
            self.push(RST, b"", now)
        self.writable.fire()

    def has_data(self) -> bool:
        """Whether any data is queued, arrived or not (a close now would reset)."""
        return self.queued > 0

    def discard(self) -> None:
        """Drop everything queued (a reset)."""
        self.segments.clear()
        self.offset = 0
        self.queued = 0
        self.readable.fire()
        self.writable.fire()

    # -- faults -------------------------------------------------------------

    def block(self, now: float) -> None:
        """Stall what has not arrived yet, and everything sent from now on."""
        if self.blocked_since is None:
            self.blocked_since = now
            for segment in self.segments:
                if segment.arrives > now:
                    segment.held = True

    def unblock(self, now: float, *, retransmit: bool) -> None:
        """End a block: segments that had not arrived are rescheduled, in order."""
        if self.blocked_since is None:
            return
        self.blocked_since = None
        last = -math.inf
        for segment in self.segments:
            if segment.held:
                segment.held = False
                arrives = now + self.delay() if retransmit else max(segment.arrives, now)
                segment.arrives = max(arrives, last)
            last = segment.arrives
        self.last = max(self.last, last) if self.segments else self.last
        self.readable.fire()
