"""``pool.connection()``: the lease that lends a connection on enter and takes it back on exit.

A :class:`Lease` keeps only the connection it lent.  It talks to its pool
through a :class:`Lender` -- three calls the pool hands out once, so the
lease reads none of the pool's members: entering asks for a connection
(``lend``), and leaving hands it back with how the block ended -- normally,
by raising, or by a cancellation (``take_back``) -- which decides whether
the pool keeps it, discards it in an orderly way (the lease then lingers for
the server's EOF in the block's exit, as ``async with conn:`` would:
``linger``), or closes it at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol

import attrs
import trio

from .._stream import Connection

__all__ = ["Lease", "Lender"]


class _TakeBack(Protocol):
    def __call__(self, conn: Connection, *, failed: bool, cancelled: bool) -> bool: ...


@attrs.frozen
class Lender:
    """What a :class:`Lease` needs from its pool (``ConnectionPool`` makes one).

    Attributes:
        lend: wait for a slot, then an idle connection or a new one.
        take_back: a lent connection comes back (``failed``: its block
            raised; ``cancelled``: it was cancelled); True means "discarded,
            and closing at once could reset it: await ``linger``".  Its slot
            is free either way.
        linger: the orderly close of a discarded connection, counted in the
            pool's ``closing``.
    """

    lend: Callable[[], Awaitable[Connection]]
    take_back: _TakeBack
    linger: Callable[[Connection], Awaitable[None]]


def _is_cancellation(exc: BaseException) -> bool:
    """A ``trio.Cancelled``, or a group holding nothing but cancellations."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


class Lease:
    """``async with pool.connection() as conn``: lend on enter, take back on exit."""

    __slots__ = ("_conn", "_lender")

    def __init__(self, lender: Lender) -> None:
        self._lender = lender
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        if self._conn is not None:
            raise RuntimeError("this pool.connection() context is already in use")
        self._conn = await self._lender.lend()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        assert conn is not None
        cancelled = exc is not None and _is_cancellation(exc)
        lender = self._lender
        if lender.take_back(conn, failed=exc_type is not None, cancelled=cancelled):
            # Discarded, and closing at once could reset it: linger here, as
            # ``async with conn:`` would.
            try:
                await lender.linger(conn)
            except trio.Cancelled:
                # Closed at once.  The block's own exception must not be
                # replaced: it goes on, and the cancellation meets the caller
                # again at its next checkpoint.
                if exc_type is None:
                    raise
