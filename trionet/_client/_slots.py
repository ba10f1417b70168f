"""A pool's slots: at most ``max_size`` in use, handed to waiters first-come first-served.

Each slot in use is a connection being opened or a connection lent out
(idle connections hold none).  :meth:`Slots.take` waits, cancellably, for a
slot; :meth:`Slots.give_back` hands it straight to the first waiter, or frees
it; :meth:`Slots.close` wakes every waiter with ``ClosedResourceError``.

Design notes
============

Fairness
--------
Waiters queue in a deque of events.  A returned slot is *handed over* to the
first waiter rather than freed, so a task that arrives later cannot barge
past the queue.  A waiter cancelled before its turn leaves the queue.

A waiter can be handed a slot and cancelled in the same tick, in either
order, and neither order may lose the slot.  Both reschedule the parked
task, which runs only later; whichever comes first decides what
``Event.wait`` does.  Handed over first: ``wait`` returns normally, and the
cancellation hits the waiter's next checkpoint -- in the pool's ``_lend``
while opening a connection, whose error path gives the slot back, or else in
the borrower's block, whose exit does.  Cancelled first: Trio has already
rescheduled the task with ``Cancelled``, so setting its event wakes
nothing, but the waiter is still queued: ``give_back`` pops it and marks it
``granted``, and its ``wait`` raises although it owns a slot.  So ``take``'s
error path checks: a ``granted`` waiter passes the slot on as if returning
it (to the next waiter, keeping FIFO order, or freed); one that ``aclose()``
dequeued and woke (``closed``) has nothing to undo; only any other is still
queued and leaves the queue.  A waiter that finds the pool closed when it
runs gives its slot back and raises ``ClosedResourceError``: a closed pool
opens no connection.
"""

from __future__ import annotations

import collections

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

__all__ = ["Slots"]


class _Waiter:
    __slots__ = ("closed", "event", "granted")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.granted = False
        self.closed = False


class Slots:
    """``size`` slots, taken first-come first-served (see the notes above)."""

    __slots__ = ("_closed", "_size", "_waiters", "used")

    def __init__(self, size: int) -> None:
        self._size = size
        #: Slots in use now: connections lent out or being opened.
        self.used = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._closed = False

    @property
    def waiting(self) -> int:
        """Tasks waiting for a slot now."""
        return len(self._waiters)

    async def take(self) -> None:
        """Take a slot, waiting behind earlier callers if none is free.

        Raises:
            trio.ClosedResourceError: :meth:`close` ran before or while waiting.
        """
        await checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("this connection pool was closed")
        if self.used < self._size and not self._waiters:
            self.used += 1
            await cancel_shielded_checkpoint()
            return
        waiter = _Waiter()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            # Cancelled (or interrupted) while waiting -- and, if that was
            # delivered before the pool acted but the task had not run yet,
            # maybe dequeued since by a hand-over or by aclose().
            if waiter.granted:
                self.give_back()  # to the next waiter, or freed
            elif not waiter.closed:
                self._waiters.remove(waiter)
            raise
        if waiter.closed or self._closed:
            # Closed before this waiter ran: a slot handed to it is given
            # back (to nobody: aclose() emptied the queue), and no
            # connection is opened for a closed pool.
            if waiter.granted:
                self.give_back()
            raise trio.ClosedResourceError("this connection pool was closed")

    def give_back(self) -> None:
        """Hand a slot in use to the first waiter, or free it."""
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = True
            waiter.event.set()
        else:
            self.used -= 1

    def close(self) -> None:
        """Wake every waiter with ``ClosedResourceError``; every later :meth:`take` raises it."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            waiter.closed = True
            waiter.event.set()
