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

The waiting room
----------------
With ``min_receive_rate`` and ``max_connections``, connections are accepted
beyond the limit into the queue, up to ``waiting_limit`` of them, where the
reaper judges them (``_idle``).  ``accepting()`` tells an accept loop whether
to accept now -- a free slot or a place in the waiting room -- and
``wait_accepting()`` waits for either, on one event set whenever a slot is
given back or a waiter leaves the queue.  Accept loops never queue among the
connections: one woken for a slot and then finding nothing to accept would
strand the slot while connections wait behind it.
"""

from __future__ import annotations

from collections import OrderedDict

import trio

__all__ = ["Capacity"]


class Capacity:
    """Slots for ``max_connections`` (``limit`` None: unlimited), and who waits for one.

    Args:
        limit: ``max_connections`` (None: unlimited).
        waiting_limit: the waiting room's size (None: no waiting room).
    """

    __slots__ = ("_promised", "_room", "_waiters", "active", "limit", "waiting", "waiting_limit")

    def __init__(self, limit: int | None, waiting_limit: int | None = None) -> None:
        self.limit = limit
        self.waiting_limit = waiting_limit
        #: Slots taken now.
        self.active = 0
        #: Connections queued for a slot now (woken ones until they take it).
        self.waiting = 0
        #: Slots promised to woken waiters that have not taken them yet.
        self._promised = 0
        self._waiters: OrderedDict[trio.Event, None] = OrderedDict()
        #: Set (and replaced) when a slot is given back or a waiter leaves.
        self._room: trio.Event | None = None

    def has_room(self) -> bool:
        """True if a slot is free now."""
        return self.limit is None or self.active + self._promised < self.limit

    def accepting(self) -> bool:
        """Should an accept loop accept now: a free slot, or room in the waiting room?"""
        if self.has_room():
            return True
        limit = self.waiting_limit
        return limit is not None and self.waiting < limit

    async def wait_accepting(self) -> None:
        """Wait until :meth:`accepting` (no checkpoint if it already is)."""
        while not self.accepting():
            ev = self._room
            if ev is None:
                ev = self._room = trio.Event()
            await ev.wait()

    def take(self) -> None:
        """Take a slot (the caller checked :meth:`has_room`, or was woken for one)."""
        self.active += 1

    def give_back(self) -> None:
        """Free a slot: to the first waiter, if any; and wake the accept loops."""
        self.active -= 1
        if self._waiters:
            self._wake_one()
        self._room_changed()

    def queue(self) -> trio.Event:
        """Join the queue now (before any task runs): FIFO by arrival.

        The caller then :meth:`wait` s with it, or :meth:`leave` s.
        """
        ev = trio.Event()
        self._waiters[ev] = None
        self.waiting += 1
        return ev

    def leave(self, ev: trio.Event) -> None:
        """Leave the queue without having waited (the task never started)."""
        if ev.is_set():
            self._pass_on()
        else:
            self._waiters.pop(ev, None)
        self._left()

    def to_back(self, ev: trio.Event) -> None:
        """Send a queued waiter to the back of the queue (a peer still sending: see ``_idle``)."""
        if ev in self._waiters:
            self._waiters.move_to_end(ev)

    async def wait(self, ev: trio.Event) -> None:
        """Wait with ``ev`` (from :meth:`queue`), first come first served, for a slot.

        Returns with a slot promised; the caller takes it before its next
        checkpoint.  Cancelled, it leaves the queue (or, woken already,
        passes its promise on).
        """
        try:
            await ev.wait()
            # Woken, but a cancel may have arrived since (a drain, the
            # reaper): find out here, where it can be handled, not at the
            # caller's next checkpoint.
            await trio.lowlevel.checkpoint_if_cancelled()
        except BaseException:
            if ev.is_set():
                # Woken for a slot, but cancelled before taking it: hand
                # the promise on, or that slot would sit unused.
                self._pass_on()
            else:
                del self._waiters[ev]
            raise
        finally:
            self._left()
        self._promised -= 1  # ours now: the caller takes it at once

    def _left(self) -> None:
        self.waiting -= 1
        self._room_changed()

    def _room_changed(self) -> None:
        ev = self._room
        if ev is not None:
            self._room = None
            ev.set()

    def _pass_on(self) -> None:
        self._promised -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        if self._waiters and self.has_room():
            ev, _ = self._waiters.popitem(last=False)
            self._promised += 1
            ev.set()
