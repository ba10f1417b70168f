"""``async for chunk in conn``: chunks until EOF -- or until a server drains.

A mixin of :class:`~trionet.Connection`, like :mod:`._buffered` and
:mod:`._closing`.  A keep-alive handler is an ``async for`` loop; when its
server drains, the loop must end by itself -- after delivering what had
arrived when the drain began, so a request sent just before it is still
served -- rather than wait for the next request until the grace period runs
out and the handler is cancelled.

The server tells each of its connections through two calls:
:meth:`DrainAwareIteration._mark_drain` (the loop ends once the bytes the
transport says were waiting are delivered) and
:meth:`DrainAwareIteration._interrupt_iteration` (a loop blocked waiting for
data is woken to end).  How a wait is woken is the transport's business: the
socket transport wakes its parked reader directly; a wait that cannot be
woken that way runs in a cancel scope kept in ``_iter_scope``, which the
interruption cancels.  A :class:`~trionet._stream._wrapped.StreamConnection`
over a server connection leaves a relay there instead, so the wake-up
reaches an ``async for`` on the wrapper too, though the server never heard
of it.

A connection that has received nothing yet is not ended by the drain's first
call -- typically swept from the kernel queue, its client's first request
still on the way -- but by the second (``drain_silent``), after the server's
first-request allowance; the grace period bounds everything.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from trio.lowlevel import checkpoint, checkpoint_if_cancelled

from ._buffered import DEFAULT_RECEIVE_SIZE

if TYPE_CHECKING:
    from typing import Self

    from ._base import ConnectionOwner

__all__ = ["DrainAwareIteration", "Interruptible"]


class Interruptible(Protocol):
    """What ``Connection._iter_scope`` holds: a cancel scope, or a wrapper's relay."""

    def cancel(self) -> None:
        """End the ``async for`` wait it stands for."""


class DrainAwareIteration:
    """``__aiter__``/``__anext__`` and the drain's two calls; the host class receives.

    Needs, from the class it is mixed into: ``_buf``, ``_closed``,
    ``_drain_mark``, ``_iter_scope``, ``_owner``, ``_rx_size``,
    ``bytes_received``, ``_check_receive()``, ``_take()``, ``_coop()`` and
    ``_recv_into_nothing()``.
    """

    if not TYPE_CHECKING:  # (mypy would then want the state among the slots)
        __slots__ = ()
    else:
        _buf: bytearray | None
        _closed: int
        _drain_mark: int
        _iter_scope: Interruptible | None
        _owner: ConnectionOwner | None
        _rx_size: int
        bytes_received: int

        def _check_receive(self) -> None: ...

        def _take(self, n: int) -> bytes:
            raise NotImplementedError

        async def _coop(self) -> None: ...

        async def _recv_into_nothing(
            self, max_bytes: int, interruptible: bool, coop: bool = True, iterating: bool = False
        ) -> bytes | None:
            raise NotImplementedError

    def __aiter__(self) -> Self:
        return self

    def __anext__(self) -> Coroutine[Any, Any, bytes]:
        return self._anext_slow()

    async def _anext_slow(self) -> bytes:
        self._check_receive()
        if self._buf:
            await checkpoint_if_cancelled()
            out = self._take(DEFAULT_RECEIVE_SIZE)
            await self._coop()
            return out
        if self.bytes_received >= self._drain_mark and self._drain_stops_iteration():
            # Everything that had arrived when the drain began was delivered.
            await checkpoint()
            raise StopAsyncIteration
        # During a drain this still takes what has already arrived (a request
        # sent just before the drain is served), and stops instead of
        # waiting for more.
        more = await self._recv_into_nothing(self._rx_size, self._owner is not None)
        if not more:
            raise StopAsyncIteration
        return more

    def _drain_stops_iteration(self) -> bool:
        # ``async for`` ends on drain for a connection that has already been
        # talking.  One that has received nothing yet -- typically swept from
        # the kernel queue, its client's first request still on the way -- is
        # given a moment (the server's first-request allowance) before it
        # counts as idle too; the grace period bounds everything.
        owner = self._owner
        return (
            owner is not None and owner.draining and (self.bytes_received > 0 or owner.drain_silent)
        )

    def _mark_drain(self) -> None:
        """A drain begins: ``async for`` delivers what has arrived by now, then ends.

        Without this mark a peer that never stops sending -- a client
        streaming to an echo service -- would keep the loop going until the
        grace period ran out and the handler was cancelled.  The bytes the
        transport says are waiting (:meth:`_pending_bytes`) are added to what
        was already received; a transport that cannot tell keeps the rule of
        ending once nothing is waiting.
        """
        if self._closed:
            return
        waiting = self._pending_bytes()
        if waiting is not None:
            self._drain_mark = self.bytes_received + waiting

    def _pending_bytes(self) -> int | None:
        """Application bytes known to be waiting, or None if the transport cannot tell."""
        return None

    def _interrupt_iteration(self) -> None:
        """Wake an ``async for`` blocked waiting for data (a drain has begun)."""
        scope = self._iter_scope
        if scope is not None and self._drain_stops_iteration():
            scope.cancel()
