"""``max_connections``: the slots connections hold, handed out first come, first served.

A connection holds a slot from the moment its task is started (its stages,
its handler) until its handler ends -- or, when it lingers beyond the
slot-free allowance, until its linger ends.  A *connection* that waits for
a slot (swept during a drain, in the waiting room of ``min_receive_rate``,
or accepted on the generic path after another accept loop took the last
slot) queues in ``_waiters``, and a freed slot wakes exactly one of them:
no thundering herd.  (Accept loops wait on the table's own event instead:
one woken here and then finding nothing to accept would strand its slot.)

The woken waiter's slot is *promised* to it until it takes it
(``has_room`` counts promised slots as taken), so nobody arriving in
between -- an accept loop -- can take it first.  A waiter cancelled after
being woken passes the promise on, so no slot is ever lost.  An
``OrderedDict`` gives O(1) removal of a cancelled waiter, O(1) pop-front,
and O(1) ``to_back`` (a waiting peer still sending queues behind the
others: see ``_idle``).
"""

from __future__ import annotations

from collections import OrderedDict

import trio

__all__ = ["Capacity"]


class Capacity:
    """Slots for ``max_connections`` (``limit`` None: unlimited)."""

    __slots__ = ("_promised", "_waiters", "active", "limit")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        #: Slots taken now.
        self.active = 0
        #: Slots promised to woken waiters that have not taken them yet.
        self._promised = 0
        self._waiters: OrderedDict[trio.Event, None] = OrderedDict()

    def has_room(self) -> bool:
        """True if a slot is free now."""
        return self.limit is None or self.active + self._promised < self.limit

    def take(self) -> None:
        """Take a slot (the caller checked :meth:`has_room`, or was woken for one)."""
        self.active += 1

    def give_back(self) -> None:
        """Free a slot and wake the first waiter, if any."""
        self.active -= 1
        if self._waiters:
            self._wake_one()

    def queue(self) -> trio.Event:
        """Join the queue now (before any task runs): FIFO by arrival."""
        ev = trio.Event()
        self._waiters[ev] = None
        return ev

    def leave(self, ev: trio.Event) -> None:
        """Leave the queue without having waited (the task never started)."""
        if ev.is_set():
            self._pass_on()
        else:
            self._waiters.pop(ev, None)

    def to_back(self, ev: trio.Event) -> None:
        """Send a queued waiter to the back of the queue (a peer still sending: see ``_idle``)."""
        if ev in self._waiters:
            self._waiters.move_to_end(ev)

    @property
    def waiting(self) -> int:
        """Waiters queued now (not counting those woken and on their way)."""
        return len(self._waiters)

    async def wait(self, ev: trio.Event | None = None) -> None:
        """Wait, first come first served, until a slot is free.

        ``ev`` is a place already taken in the queue (:meth:`queue`).
        Returns with a slot free; the caller takes it before its next
        checkpoint.
        """
        if ev is None:
            if self.has_room():
                return
            ev = self.queue()
        try:
            await ev.wait()
            # Woken, but a cancel may have arrived since (a drain cancels
            # the accept tasks): find out here, where it can be handled,
            # not at the caller's next checkpoint.
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            if ev.is_set():
                # Woken for a slot, but cancelled before taking it: hand
                # the promise on, or that slot would sit unused.
                self._pass_on()
            else:
                del self._waiters[ev]
            raise
        self._promised -= 1  # ours now: the caller takes it at once

    def _pass_on(self) -> None:
        self._promised -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        if self._waiters and self.has_room():
            ev, _ = self._waiters.popitem(last=False)
            self._promised += 1
            ev.set()
