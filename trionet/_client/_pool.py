"""``ConnectionPool``: lend client connections to one target, at most ``max_size`` at once.

Design notes
============

State
-----
A pool holds *slots* (at most ``max_size``), and each slot in use is either a
connection being opened or a connection lent out.  Idle connections sit in a
deque ordered by the time they came back: lending takes the *newest* (LIFO,
so a few hot connections serve a light load and the rest age out), the idle
sweep closes the *oldest*.  ::

    lend:   take a slot (wait FIFO if none) -> newest healthy idle conn, or connect()
    return: healthy and the block ended normally -> idle deque; else close
            -> hand the slot straight to the first waiter (or free it)

The slots and their fair queue are in ``_slots``, the health check in
``_health``, the idle connections and their expiry in ``_expiry``, and
``pool.connection()``'s context manager in ``_lease`` (it calls the pool
through the ``Lender`` the pool makes once).  Connections are closed through
the stream package's ``begin_orderly_close`` and ``linger`` (``_hooks``).

The sweep
---------
With ``idle_timeout``, connections idle longer than that are closed lazily
(whenever the pool lends) and by a background task, so they do not linger
when nobody lends.  The task runs in a nursery the pool opens in
``__aenter__`` and closes in ``__aexit__``: the caller never has to provide
one.  A pool used without ``async with`` only expires lazily.

Closing
-------
``aclose()`` closes *everything*: idle connections, connections lent out or
being opened; their borrowers, waiters and any later lend get
``trio.ClosedResourceError`` (its docstring says when).  ``async with
pool:`` closes the pool when its block ends.

The pool's own closes follow :meth:`Connection.aclose`'s rule: bytes that
``send_all`` accepted are never thrown away by a close that could wait.  An
*orderly* close lingers -- FIN sent, the server's late bytes read and
discarded -- until the server's EOF or ``close_linger`` seconds, when closing
at once could make the kernel reset the connection (input waiting unread,
or bytes still unsent).  Orderly: a connection discarded after its block
ended, normally or by raising (the exchange may have stopped half-way, but
what was sent is not thrown away; it lingers in that block's exit, as
``async with conn:`` would), idle connections closed by ``aclose()`` (they
linger together inside it), and connections the idle sweep expires (they
linger in the sweep's nursery; a pool used without ``async with`` closes
those at once).  Immediate, like a cancelled ``aclose``: a connection whose
block was cancelled, and connections lent out when the pool closes.  A
lingering connection counts against no limit (``PoolStats.closing``).
"""

from __future__ import annotations

import logging
import math
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, final

import attrs
import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint, checkpoint_if_cancelled

from .._address import Address
from .._stream import Connection
from .._stream._hooks import begin_orderly_close, linger
from .._unwrap import unwrap_single
from .._validate import check_count, check_limit, check_names, public_call, validator
from ._connect import connect_with_plan
from ._expiry import IdleConnections
from ._health import unusable_reason
from ._lease import Lease, Lender
from ._plan import CONNECT_OPTIONS, ConnectPlan, make_plan
from ._slots import Slots

if TYPE_CHECKING:
    from typing import Self

log = logging.getLogger("trionet.pool")

__all__ = ["ConnectionPool", "PoolStats"]

#: The public call named in error messages.
_CALL: Final = "ConnectionPool()"
#: Every keyword option ConnectionPool takes (named when one is unknown).
_POOL_OPTIONS: Final = CONNECT_OPTIONS | {"max_size", "idle_timeout"}

_count = attrs.field(default=0, validator=validator(check_count, minimum=0))


@attrs.frozen
class PoolStats:
    """A snapshot of a :class:`ConnectionPool` (``pool.stats`` makes a fresh one).

    ``created``, ``reused``, ``discarded`` and ``expired`` are cumulative;
    the others are current values.
    """

    #: Connections the pool opened.
    created: int = _count
    #: Lends served by an idle connection instead of a new one.
    reused: int = _count
    #: Connections thrown away: the block raised, or the connection was
    #: closed, half-closed, reset, at EOF or holding unexpected data.
    discarded: int = _count
    #: Idle connections closed because they outlived ``idle_timeout``.
    expired: int = _count
    #: Tasks waiting for a connection now.
    waiting: int = _count
    #: Idle connections now.
    idle: int = _count
    #: Connections lent out now.
    lent: int = _count
    #: Connections being opened now.
    opening: int = _count
    #: Connections the pool is closing now, lingering for the server's EOF
    #: because closing at once could discard bytes they sent (see
    #: ``Connection.aclose``); they count against no limit.
    closing: int = _count


@final
class ConnectionPool:
    """A pool of client connections to one target.

    ``async with pool.connection() as conn`` lends a connection -- an idle
    one that still looks healthy, or a new one from :func:`trionet.connect`
    -- and takes it back when the block ends normally.  A connection whose
    block raised (or was cancelled), that the borrower closed, or that the
    peer closed, reset or wrote to while idle, is discarded and never lent
    again.  At most ``max_size`` connections exist at once; further callers
    wait, cancellably and first-come first-served.

    Args:
        target: what :func:`trionet.connect` takes: ``"tcp://HOST:PORT"``,
            ``"unix:PATH"``, ``(host, port)``, or an address record.
        max_size: the most connections open at once (lent, idle or opening).
        idle_timeout: close connections idle for longer than this many
            seconds, > 0 (None or ``math.inf``: keep them until the pool closes).
        **connect_options: passed to :func:`trionet.connect` for each new
            connection (``timeout``, ``retries``, ``backoff``,
            ``local_address``, ``happy_eyeballs_delay``, ``keepalive``,
            ``close_linger``, ...).  ``close_linger`` also bounds how long
            the pool's own orderly closes linger (see "Closing" above).

    Raises:
        InvalidAddress: a malformed target (at construction).
        TypeError, ValueError: a bad option or an unknown keyword (at
            construction, by the rules of :func:`trionet.connect`'s options).

    Use it as an async context manager (``async with pool:``): that starts
    the background idle sweep and closes everything at the end.

    Example::

        pool = trionet.ConnectionPool("tcp://127.0.0.1:7007", max_size=10, idle_timeout=30.0)
        async with pool:
            async with pool.connection() as conn:
                await conn.send_all(b"GET key\\n")
                value = await conn.receive_line()
            print(pool.stats)
    """

    def __init__(
        self,
        target: str | tuple[str, int] | Address,
        *,
        max_size: int = 10,
        idle_timeout: float | None = None,
        **connect_options: Any,
    ) -> None:
        with public_call(_CALL):
            check_names(connect_options, _POOL_OPTIONS)
        self._plan: ConnectPlan = make_plan(target, call=_CALL, **connect_options)
        with public_call(_CALL):
            size = check_count("max_size", max_size, minimum=1)
            idle = check_limit("idle_timeout", idle_timeout)
        assert size is not None
        self._max_size = size
        self._idle = IdleConnections(idle, self._plan.target, self._linger_later)
        self._lent: set[Connection] = set()
        self._opening = 0
        # One scope per connect in progress, so aclose() can cancel them.
        self._open_scopes: set[trio.CancelScope] = set()
        self._slots = Slots(size)
        self._closed = False
        self._created = 0
        self._reused = 0
        self._discarded = 0
        self._entered = False
        self._nursery_manager: Any = None
        self._sweep_scope: trio.CancelScope | None = None
        #: Where the idle expiry's orderly closes linger (None: close at once).
        self._closers: trio.Nursery | None = None
        #: Connections lingering in an orderly close now.
        self._closing = 0
        #: What each ``pool.connection()`` lease calls.
        self._lender = Lender(self._lend, self._take_back, self._linger)

    # ------------------------------------------------------------------
    # Public surface

    @property
    def target(self) -> Address:
        """The parsed target every connection goes to."""
        return self._plan.target

    @property
    def max_size(self) -> int:
        """The most connections the pool keeps open at once."""
        return self._max_size

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._closed

    @property
    def stats(self) -> PoolStats:
        """A fresh frozen :class:`PoolStats` snapshot."""
        return PoolStats(
            created=self._created,
            reused=self._reused,
            discarded=self._discarded,
            expired=self._idle.expired,
            waiting=self._slots.waiting,
            idle=len(self._idle),
            lent=len(self._lent),
            opening=self._opening,
            closing=self._closing,
        )

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return (
            f"<trionet.ConnectionPool {self.target} idle={len(self._idle)} "
            f"lent={len(self._lent)}/{self._max_size}{state}>"
        )

    def connection(self) -> AbstractAsyncContextManager[Connection]:
        """Borrow a connection for the duration of an ``async with`` block.

        Entering waits (cancellably, first-come first-served) while all
        ``max_size`` connections are in use, then lends an idle connection or
        opens a new one.  Leaving the block normally returns it to the pool;
        leaving with an exception (including cancellation) discards it.

        Raises:
            trio.ClosedResourceError: the pool is closed (on entering, also
                while waiting or while the new connection was being opened).
            ConnectError: a new connection could not be made (see
                :func:`trionet.connect`); the slot is freed for the next caller.

        Example::

            async with pool.connection() as conn:
                await conn.send_all(b"PING\\n")
                assert await conn.receive_line() == b"PONG"
        """
        return Lease(self._lender)

    async def aclose(self) -> None:
        """Close the pool and every connection it made.

        Idle connections are closed in an orderly way: one whose immediate
        close could discard bytes it sent lingers for the server's EOF, up to
        ``close_linger`` (see :meth:`Connection.aclose`); a cancelled
        ``aclose`` closes them at once.  The rest is forceful, as Trio's
        ``aclose`` is: connections lent out or being opened are closed (a
        borrower gets ``trio.ClosedResourceError`` from its next operation,
        a task blocked on one is woken with it), and so do waiting callers
        and any later :meth:`connection`.  Idempotent.

        Example::

            pool = trionet.ConnectionPool("tcp://127.0.0.1:7007")
            try:
                async with pool.connection() as conn:
                    await conn.send_all(b"ping\\n")
            finally:
                await pool.aclose()
        """
        try:
            await checkpoint_if_cancelled()
        except BaseException:
            self._shut(orderly=False)  # a cancelled close cannot wait
            raise
        lingering = self._shut(orderly=True)
        if lingering:
            # Idle connections whose close could reset them linger under one
            # deadline, close_linger from now: served in turn (one waiting for
            # its server's EOF leaves the others' peers blocked, not reset).
            # Cancelling aclose() closes them all at once.
            self._closing += len(lingering)
            try:
                with trio.move_on_after(self._plan.close_linger):
                    for conn in lingering:
                        await linger(conn, math.inf)
            finally:
                self._closing -= len(lingering)
                for conn in lingering:
                    conn.close()
        await cancel_shielded_checkpoint()

    def _shut(self, *, orderly: bool) -> list[Connection]:
        """Close the pool; with ``orderly``, return the idle connections to linger on."""
        lingering: list[Connection] = []
        if not self._closed:
            self._closed = True
            while (conn := self._idle.pop_oldest()) is not None:
                if not orderly:
                    conn.close()
                elif begin_orderly_close(conn):
                    lingering.append(conn)
            for conn in self._lent:
                conn.close()  # the borrower's block still returns it (a no-op then)
            for scope in self._open_scopes:
                scope.cancel()
            self._slots.close()
            if self._sweep_scope is not None:
                self._sweep_scope.cancel()
            log.debug("pool for %s closed", self.target)
        return lingering

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("a ConnectionPool can be entered only once")
        if self._closed:
            raise trio.ClosedResourceError("this connection pool was already closed")
        self._entered = True
        if self._idle.timeout is not None:
            manager = trio.open_nursery()
            nursery = await manager.__aenter__()
            self._nursery_manager = manager
            # The sweep gets a scope of its own: the nursery's scope also
            # encloses the caller's ``async with pool:`` body.  It is
            # shielded, so only our own cancel (in aclose()/__aexit__, which
            # always run) stops the sweep, and that Cancelled is caught by
            # this very scope.  Were an enclosing cancel to reach the sweep,
            # its Cancelled would come out of the nursery at exit and replace
            # the exception the caller's block raised.
            self._sweep_scope = trio.CancelScope(shield=True)
            nursery.start_soon(self._sweep, name=f"pool idle sweep {self.target}")
        else:
            await checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        manager, self._nursery_manager = self._nursery_manager, None
        try:
            try:
                await self.aclose()
            except trio.Cancelled:
                # A cancelled aclose() has closed everything at once.  If the
                # block raised, its exception must not be replaced by ours:
                # it propagates, and the cancellation meets the caller again
                # at its next checkpoint.
                if exc_type is None:
                    raise
        finally:
            if manager is not None:
                assert self._sweep_scope is not None
                self._sweep_scope.cancel()
                # The body's exception is not handed to the nursery: it would
                # wrap it in an ExceptionGroup.  It propagates by itself.
                with unwrap_single():
                    await manager.__aexit__(None, None, None)
        if exc_type is None:
            await checkpoint_if_cancelled()  # still a cancellation point

    # ------------------------------------------------------------------
    # Lending

    async def _lend(self) -> Connection:
        await self._slots.take()
        try:
            if self._closed:  # closed during take()'s checkpoint
                raise trio.ClosedResourceError("this connection pool was closed")
            conn = self._take_idle()
            if conn is None:
                conn = await self._open()
        except BaseException:
            self._slots.give_back()
            raise
        self._lent.add(conn)
        return conn

    def _take_idle(self) -> Connection | None:
        self._idle.expire(trio.current_time())
        while (conn := self._idle.pop_newest()) is not None:
            why = unusable_reason(conn)
            if why is None:
                self._reused += 1
                return conn
            if self._discard(conn, why, orderly=True):
                self._linger_later(conn)
        return None

    async def _open(self) -> Connection:
        self._opening += 1
        # aclose() cancels this scope.  A Cancelled from an enclosing scope
        # is not caught by it and propagates as usual.
        scope = trio.CancelScope()
        self._open_scopes.add(scope)
        conn: Connection | None = None
        try:
            with scope:
                conn = await connect_with_plan(self._plan)
        finally:
            self._open_scopes.discard(scope)
            self._opening -= 1
        if conn is None:  # our scope caught the Cancelled: aclose() ran
            await checkpoint_if_cancelled()  # an enclosing cancel wins
            raise trio.ClosedResourceError("the connection pool was closed while connecting")
        self._created += 1
        if self._closed:
            conn.close()
            raise trio.ClosedResourceError("this connection pool was closed")
        log.debug("pool for %s opened connection #%d", self.target, conn.id)
        return conn

    def _take_back(self, conn: Connection, *, failed: bool, cancelled: bool = False) -> bool:
        """Take a lent connection back; True means "linger now" (await :meth:`_linger`).

        Its slot is given back either way: a lingering connection is
        closing, not in use, and does not count against ``max_size``.
        """
        self._lent.discard(conn)
        try:
            if self._closed:
                conn.close()
            elif cancelled:
                # A cancelled block: a close that cannot wait.
                self._discard(conn, "its borrower's block was cancelled", orderly=False)
            elif failed:
                # The exchange may have stopped half-way: never reused, but
                # closed in an orderly way -- what was sent is not thrown away.
                return self._discard(conn, "its borrower's block raised", orderly=True)
            else:
                why = unusable_reason(conn)
                if why is not None:
                    return self._discard(conn, why, orderly=True)
                self._idle.put(conn, trio.current_time())
            return False
        finally:
            self._slots.give_back()

    async def _linger(self, conn: Connection) -> None:
        self._closing += 1
        await self._linger_counted(conn)

    def _linger_later(self, conn: Connection) -> None:
        # An orderly close begun where nothing can wait (the idle expiry):
        # linger in the background -- at most max_size at once, so a server
        # that keeps sending cannot make expired connections pile up -- or
        # close at once when there is no background (no ``async with``).
        closers = self._closers
        if closers is None or self._closing >= self._max_size:
            conn.close()
        else:
            self._closing += 1  # counted now: the task starts a little later
            closers.start_soon(self._linger_counted, conn)

    async def _linger_counted(self, conn: Connection) -> None:  # counted in closing already
        try:
            await linger(conn)
        finally:
            self._closing -= 1

    def _discard(self, conn: Connection, why: str, *, orderly: bool) -> bool:
        """Close an unusable connection; with ``orderly``, True means "linger now"."""
        self._discarded += 1
        log.debug("pool for %s discards connection #%d: %s", self.target, conn.id, why)
        if orderly:
            return begin_orderly_close(conn)
        conn.close()
        return False

    # ------------------------------------------------------------------
    # The idle sweep

    async def _sweep(self) -> None:
        assert self._sweep_scope is not None
        with self._sweep_scope:
            # Orderly closes begun by the expiry linger in this nursery, under
            # the sweep's scope: aclose() ends them (at once) with the sweep.
            async with trio.open_nursery() as closers:
                self._closers = closers
                try:
                    await self._idle.sweep_forever()
                finally:
                    self._closers = None
