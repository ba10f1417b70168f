"""``pool.connection()``: the lease that lends a connection on enter and takes it back on exit.

A :class:`Lease` keeps only the connection it lent: entering asks the pool
to lend one (``ConnectionPool._lend``), and leaving hands it back with how
the block ended -- normally, by raising, or by a cancellation -- which
decides whether the pool keeps it, discards it in an orderly way (the lease
then lingers for the server's EOF, in the block's exit, as ``async with
conn:`` would), or closes it at once.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

import trio

from .._stream import Connection

if TYPE_CHECKING:
    from ._pool import ConnectionPool

__all__ = ["Lease"]


def _is_cancellation(exc: BaseException) -> bool:
    """A ``trio.Cancelled``, or a group holding nothing but cancellations."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cancellation(e) for e in exc.exceptions)
    return isinstance(exc, trio.Cancelled)


class Lease:
    """``async with pool.connection() as conn``: lend on enter, take back on exit."""

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        if self._conn is not None:
            raise RuntimeError("this pool.connection() context is already in use")
        self._conn = await self._pool._lend()
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
        if self._pool._take_back(conn, failed=exc_type is not None, cancelled=cancelled):
            # Discarded, and closing at once could reset it: linger here, as
            # ``async with conn:`` would.
            try:
                await self._pool._linger(conn)
            except trio.Cancelled:
                # Closed at once.  The block's own exception must not be
                # replaced: it goes on, and the cancellation meets the caller
                # again at its next checkpoint.
                if exc_type is None:
                    raise
