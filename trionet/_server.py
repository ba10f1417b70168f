"""``serve``, ``open_server`` and ``Server``: accept tasks, a connection nursery, stats.

Structure
=========

::

    serve()                                  -- runs until cancelled or shut down
      open_listeners()                       -- errors raised bare, before started()
      connection nursery                     -- one task per connection
        [idle reaper]                        -- only with idle_timeout
        accept nursery                       -- one accept task per listener
          accept_loop(listener) ...
        (accept nursery done: drain has begun)
        wait until no connections remain (handlers and lingering closes)
      close listeners; set "stopped"

Handlers run in a nursery *outside* the accept nursery, so accepting can stop
(drain step 1) while connections finish (steps 2-4).  Data flows one way:
listener -> accept task -> admission (access policy, per-host limit) ->
Connection -> handler -> release (slot, stats, orderly close) -> linger.  Admission is synchronous
and happens before any task is spawned, so a refused peer costs no task and
no handler code runs for it.

The admission *decision* is not made here: it belongs to the server's
:class:`~trionet._admission.Admission` gate, which exists only if an
``access`` check or ``max_connections_per_host`` is set (without them the
accept path makes no call for it) and which counts and logs its refusals.
The server acts on the answer: it resets a refused socket, starts the
connection, and gives the per-host count back when the connection ends.

Who enforces the grace period
=============================

``shutdown()`` only *starts* the drain and records the deadline; the
server's own task (``_run``) waits for the connections and cancels the
stragglers when the deadline passes.  So the drain completes on time even if
the task that called ``shutdown()`` is itself cancelled half-way, and a
second ``shutdown(shorter)`` simply moves the deadline forward.

``max_connections`` during a drain
==================================

The drain sweep accepts *everything* already queued in the kernel, whatever
the limit -- those clients are connected and must not be reset.  Swept
connections beyond ``max_connections`` are accepted (their descriptors are
ours) but their handlers wait for a free slot before they start, so the
limit on concurrently running handlers holds even then.  If the grace period
ends first, they are closed and counted as ``cancelled``.  The idle timeout
does not run while they wait: its clock starts when the handler starts (the
wait is the server's doing, not the peer's silence).

Slots are handed out first come, first served: whoever waits for one (an
accept task at the limit, a swept connection) queues in ``_slot_waiters``,
and a freed slot wakes exactly one of them -- no thundering herd of every
waiter racing for one slot.  A waiter cancelled after being woken passes the
wake-up on, so no slot is ever lost.

The close after the handler
===========================

When a handler ends by itself, ``_release`` closes its connection the way
``Connection.aclose`` does: it first decides whether closing at once could
make the kernel reset the connection and drop the unsent tail of a reply
(``linger_needed``: the peer's bytes waiting unread, or ours unsent).  If
not, it closes at once.  If so, the connection *lingers* in the same task,
after everything else is released: FIN sent, counted as closed, out of
``connections``, its slot and host lease given back; only the descriptor
remains, read and discarded until the peer's EOF, ``close_linger``, the
grace deadline (the drain cancels the connection nursery) or cancellation.
``stats.lingering`` gauges them.  At most ``max_connections`` linger without
a slot; one lingering beyond that keeps its slot until its linger ends
(accepting pauses: backpressure, never a close that could drop a reply), so a
flood of peers that keep sending cannot pile up descriptors.  A handler that was cancelled (grace
over, idle timeout, the server cancelled) is closed at once.

What the shutdown report counts
===============================

During a drain each connection ends in exactly one way (``_release``):

* its handler returned or raised by itself before the grace period ran out:
  ``finished`` (whether or not its close then lingered -- ``shutdown`` waits
  for the linger too, within the grace period);
* the idle reaper closed it (``stats.idle_closed``): neither field;
* otherwise -- cancelled when the grace period ran out (or when the whole
  server was cancelled), or its handler never started: ``cancelled``.

Handler isolation
=================

With ``handler_errors="log"`` (the default) an exception escaping a handler
is logged once -- connection id, peer, full traceback (exception groups
included), rate-limited under a storm -- counted, and only that connection is
closed.  A peer reset on the handler's *own* connection
(``trio.BrokenResourceError`` raised by it) is not a handler bug: it is
counted in ``stats.resets`` and logged at debug level, under either setting.
``handler_errors="raise"`` lets real errors propagate out of ``serve``
(unwrapped), which is what tests want.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket as _stdlib_socket
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, final

import trio

from . import _accept
from ._address import Address, UnixAddress, address_from_sockaddr
from ._admission import REFUSED, Admission
from ._config import ServerConfig
from ._connection import Connection, ConnectionInfo, ConnOptions, configure_tcp_socket
from ._drain import ShutdownReport, check_grace
from ._exceptions import IncompleteRead, LocalProtocolError
from ._idle import IdleReaper
from ._listeners import Bind, Listener, check_unix_mode, close_listeners, open_listeners
from ._ratelimit import RateLimiter
from ._stats import Counters, ServerStats
from ._unwrap import leaves, unwrap_single
from ._validate import check_async_callable, public_call

log = logging.getLogger("trionet.server")

__all__ = ["Handler", "Server", "open_server", "serve"]

#: A connection handler: an async function taking the :class:`Connection`.
Handler = Callable[[Connection], Awaitable[Any]]

_AF_UNIX = getattr(_stdlib_socket, "AF_UNIX", None)
#: Seconds a drain waits for a silent new connection's first bytes before
#: ending its ``async for`` loop (bounded by the grace period anyway).
_FIRST_REQUEST_ALLOWANCE = 2.0
_NOT_ERRORS = (trio.Cancelled, KeyboardInterrupt, SystemExit, GeneratorExit)
#: Stands in for the handler's cancel scope when there is no idle timeout.
_NO_SCOPE: contextlib.nullcontext[None] = contextlib.nullcontext()
#: One name for every connection task: a name built per task costs memory.
_TASK_NAME = "trionet connection"
#: What ``Server._release`` asks of the connection task afterwards.
_NO_LINGER, _LINGER, _LINGER_IN_SLOT = 0, 1, 2


@final
class Server:
    """A running server: its addresses, live stats, connections, and ``shutdown``.

    You get one from ``await nursery.start(functools.partial(trionet.serve, ...))``
    or ``async with trionet.open_server(...) as server``; you do not create it.

    Example::

        async with trionet.open_server(handler, "tcp://127.0.0.1:0") as server:
            print(server.addresses)            # [TCPAddress(host='127.0.0.1', port=40123)]
            ...
            print(server.stats.accepted, server.stats.active)
            for info in server.connections:
                print(info.id, info.peer, info.bytes_received)
            report = await server.shutdown(5.0)
    """

    def __init__(self, handler: Handler, listeners: list[Listener], config: ServerConfig) -> None:
        self._handler = handler
        self._listeners = listeners
        self.config = config
        #: True once a graceful drain has begun (read by connections).
        self.draining = False
        #: Set when it begins: every connection's ``draining`` event.
        self.drain_event = trio.Event()
        #: The settings every connection of this server shares.
        self._conn_options = ConnOptions.of(config.schedule_budget, config.close_linger)
        #: True once connections that never sent anything count as idle too.
        self.drain_silent = False
        self._counters = Counters()
        self._conns: dict[int, Connection] = {}
        #: Connections whose handler has ended, lingering in an orderly close
        #: (all of them, and those that gave their slot back).
        self._lingering = 0
        self._lingering_slotless = 0
        #: Lingers _release decided on whose task has not begun them yet.
        self._lingering_pending = 0
        #: Handlers holding a max_connections slot.
        self._active = 0
        self._max = config.max_connections
        self._error_log = RateLimiter()
        self._sweep_log = RateLimiter(burst=3, period=60.0)
        #: The admission gate; None admits everyone (nothing to decide).
        self._admission = Admission.create(
            config.access, config.max_connections_per_host, self._counters, self._error_log
        )
        self._reaper = (
            IdleReaper(config.idle_timeout, self._conns, self._counters)
            if config.idle_timeout is not None
            else None
        )
        self._conn_nursery: trio.Nursery | None = None
        self._accept_scope: trio.CancelScope | None = None
        # Tasks waiting for a max_connections slot, first come first served
        # (an OrderedDict: O(1) removal of a cancelled waiter, O(1) pop-front).
        self._slot_waiters: OrderedDict[trio.Event, None] = OrderedDict()
        # Set (and replaced) whenever a connection closes: wakes accept tasks
        # backing off from descriptor exhaustion.
        self._closed_event: trio.Event | None = None
        self._empty = trio.Event()
        self._stopped = trio.Event()
        self._grace_scope: trio.CancelScope | None = None
        self._grace_deadline = math.inf
        self._grace_over = False
        self._shutdown_started = False
        self._drain_started_at = 0.0
        self._finished = 0
        self._cancelled = 0
        self._report: ShutdownReport | None = None

    # ------------------------------------------------------------------
    # Public surface

    @property
    def addresses(self) -> list[Address]:
        """The actual bound addresses, in bind order (ephemeral ports resolved)."""
        return [listener.address for listener in self._listeners]

    @property
    def stats(self) -> ServerStats:
        """A fresh frozen :class:`ServerStats` snapshot."""
        c = self._counters
        rx = c.bytes_received
        tx = c.bytes_sent
        for conn in self._conns.values():
            if not conn.closed:  # a closed one is already in the counters
                rx += conn.bytes_received
                tx += conn.bytes_sent
        return ServerStats(
            accepted=c.accepted,
            active=c.accepted - c.closed,
            closed=c.closed,
            handler_errors=c.handler_errors,
            resets=c.resets,
            protocol_errors=c.protocol_errors,
            bytes_received=rx,
            bytes_sent=tx,
            rejected_access=c.rejected_access,
            rejected_limit=c.rejected_limit,
            accept_errors=c.accept_errors,
            idle_closed=c.idle_closed,
            swept=c.swept,
            lingering=self._lingering + self._lingering_pending,
        )

    @property
    def connections(self) -> tuple[ConnectionInfo, ...]:
        """Read-only :class:`ConnectionInfo` records of the live connections."""
        return tuple(conn.info() for conn in list(self._conns.values()) if not conn.closed)

    @property
    def stopped(self) -> bool:
        """True once the server has stopped (after ``shutdown`` or cancellation)."""
        return self._stopped.is_set()

    def __repr__(self) -> str:
        addrs = ", ".join(str(a) for a in self.addresses)
        return f"<trionet.Server [{addrs}] active={len(self._conns)}>"

    async def shutdown(self, grace: float | None = None) -> ShutdownReport:
        """Drain gracefully: stop accepting, tell handlers, wait ``grace``, cancel the rest.

        1. Every connection already completed in the kernel's accept queue is
           accepted and served (counted in ``swept``), then the listeners
           close; new connects are refused.
        2. ``conn.draining`` is set on every connection, and ``async for
           chunk in conn`` ends once nothing more is buffered.
        3. Handlers get up to ``grace`` seconds to finish by themselves.
        4. The rest are cancelled and their connections closed.

        Safe to call more than once and from several tasks: later calls wait
        for the same drain, and a shorter ``grace`` moves the deadline
        forward.  The drain goes on even if the calling task is cancelled.
        Do not await it from inside a handler of the same server: the drain
        waits for that handler too (start it in another task instead).

        Args:
            grace: seconds handlers get to finish (positional or keyword);
                None uses the server's ``shutdown_grace`` option (default 10).

        Returns:
            A :class:`ShutdownReport` (``finished``, ``cancelled``, ``swept``).

        Raises:
            ValueError: ``grace`` is negative or not a number.

        Example::

            report = await server.shutdown(5.0)
            print(f"{report.finished} finished, {report.cancelled} cancelled")
        """
        if grace is None:
            grace = self.config.shutdown_grace
        grace = check_grace(grace, "Server.shutdown()")
        deadline = trio.current_time() + grace
        if not self._shutdown_started:
            self._shutdown_started = True
            self._grace_deadline = deadline
            self._begin_drain()
        elif deadline < self._grace_deadline:
            self._grace_deadline = deadline
            if self._grace_scope is not None:
                self._grace_scope.deadline = deadline
        await self._stopped.wait()
        assert self._report is not None
        return self._report

    # ------------------------------------------------------------------
    # Running

    async def _run(self, task_status: trio.TaskStatus[Server]) -> None:
        try:
            with unwrap_single():
                async with trio.open_nursery() as conn_nursery:
                    self._conn_nursery = conn_nursery
                    reaper_scope = trio.CancelScope()
                    if self._reaper is not None:
                        conn_nursery.start_soon(self._run_reaper, reaper_scope)
                    async with trio.open_nursery() as accept_nursery:
                        self._accept_scope = accept_nursery.cancel_scope
                        for listener in self._listeners:
                            accept_nursery.start_soon(
                                _accept.accept_loop,
                                self,
                                listener,
                                name=f"trionet accept {listener.address}",
                            )
                        task_status.started(self)
                    # Only a drain ends the accept nursery without an error.
                    with trio.CancelScope(deadline=self._grace_deadline) as grace_scope:
                        self._grace_scope = grace_scope
                        # A connection that has not sent a byte yet is given a
                        # moment for its first request (it may have just been
                        # swept from the kernel queue) before ``async for``
                        # treats it as idle too -- like Go's Shutdown does.
                        with trio.move_on_at(self._drain_started_at + _FIRST_REQUEST_ALLOWANCE):
                            await self._empty.wait()
                        self.drain_silent = True
                        for conn in list(self._conns.values()):
                            conn._interrupt_iteration()
                        await self._empty.wait()
                    self._grace_scope = None
                    if self._conns or self._lingering or self._lingering_pending:
                        # From here on, whatever still runs counts as cancelled
                        # (see "What the shutdown report counts"), and a
                        # lingering close ends at once.
                        self._grace_over = True
                        log.info(
                            "grace period over: cancelling %d handler(s), ending %d linger(s)",
                            len(self._conns),
                            self._lingering,
                        )
                        conn_nursery.cancel_scope.cancel()
                    reaper_scope.cancel()
        finally:
            self._grace_over = True
            close_listeners(self._listeners)
            if self._report is None:
                self._report = ShutdownReport(
                    finished=self._finished,
                    cancelled=self._cancelled,
                    swept=self._counters.swept,
                    elapsed=(trio.current_time() - self._drain_started_at)
                    if self._shutdown_started
                    else 0.0,
                )
            self._stopped.set()

    async def _run_reaper(self, scope: trio.CancelScope) -> None:
        assert self._reaper is not None
        with scope:
            await self._reaper.run()

    def _begin_drain(self) -> None:
        self.draining = True
        self._drain_started_at = trio.current_time()
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        swept = 0
        for listener in self._listeners:
            try:
                swept += _accept.sweep(self, listener)
            except Exception:
                # Never leave a drain half-begun (listeners open, handlers
                # untold) because one connection could not be set up.
                log.exception("drain: sweeping %s failed", listener.address)
            finally:
                listener.close()
        if swept:
            log.info("drain: served %d connection(s) queued in the kernel", swept)
        self.drain_event.set()
        for conn in list(self._conns.values()):
            conn._mark_drain()
            conn._interrupt_iteration()
        self._check_empty()

    # ------------------------------------------------------------------
    # Capacity (used by the accept loops)

    def _has_capacity(self) -> bool:
        return self._max is None or self._active < self._max

    def _queue_for_slot(self) -> trio.Event:
        """Join the queue for a slot now (before any task runs): FIFO by arrival."""
        ev = trio.Event()
        self._slot_waiters[ev] = None
        return ev

    async def _wait_for_capacity(self, ev: trio.Event | None = None) -> None:
        """Wait, first come first served, until fewer than ``max_connections`` run.

        ``ev`` is a place already taken in the queue (``_queue_for_slot``).
        Returns with a slot free; the caller takes it before its next
        checkpoint.
        """
        while True:
            if ev is None:
                if self._has_capacity():
                    return
                ev = self._queue_for_slot()
            try:
                await ev.wait()
                # Woken, but a cancel may have arrived since (a drain cancels
                # the accept tasks): find out here, where it can be handled,
                # not at the caller's next checkpoint.
                await trio.lowlevel.checkpoint_if_cancelled()
            except BaseException:
                if ev.is_set():
                    # Woken for a slot, but cancelled before taking it: hand
                    # the wake-up on, or that slot would sit unused.
                    self._wake_slot_waiter()
                else:
                    del self._slot_waiters[ev]
                raise
            ev = None

    def _wake_slot_waiter(self) -> None:
        if self._slot_waiters and self._has_capacity():
            ev, _ = self._slot_waiters.popitem(last=False)
            ev.set()

    async def _wait_conn_closed(self, timeout: float) -> None:
        """Sleep up to ``timeout``, waking early when any connection closes."""
        ev = self._closed_event
        if ev is None:
            ev = self._closed_event = trio.Event()
        with trio.move_on_after(timeout):
            await ev.wait()

    # ------------------------------------------------------------------
    # Admission

    def _admit(
        self,
        sock: _stdlib_socket.socket | trio.socket.SocketType,
        addr: Any,
        listener: Listener,
        *,
        swept: bool,
    ) -> bool:
        """Admit a freshly accepted socket (stdlib on the fast path); False if refused.

        Refused peers are reset at once (``SO_LINGER`` 0), before any task
        exists for them.
        """
        family = listener.family
        try:
            peer = address_from_sockaddr(family, addr)
        except Exception:
            # An address we cannot represent (e.g. an abstract Unix name with
            # a NUL inside).  Never fail open: with an access check configured
            # -- or on TCP, where a placeholder would be a lie -- refuse it.
            # A Unix peer on a server without a check is admitted as the
            # unnamed peer: nothing was promised about who may connect.
            if self.config.access is not None or family != _AF_UNIX:
                self._counters.rejected_access += 1
                self._error_log.log(
                    log,
                    logging.WARNING,
                    "refused a peer on %s: unparseable peer address %r",
                    listener.address,
                    addr,
                )
                _accept.reset_close(sock)
                return False
            peer = UnixAddress("")
        local: Address | None = None
        hostkey: Hashable | None = None
        gate = self._admission
        if gate is not None:
            if gate.wants_local:
                # A callable may decide on the local address too: give it the
                # real one, not a wildcard listener's 0.0.0.0.
                local = _local_address(sock, listener, family)
            hostkey = gate.admit(sock, peer, local, listener, family)
            if hostkey is REFUSED:
                _accept.reset_close(sock)
                return False
        try:
            self._start(sock, peer, local, listener, family, hostkey, swept)
        except BaseException:
            # Nothing was registered (see _start); undo the per-host count.
            if hostkey is not None and gate is not None:
                gate.release(hostkey)
            sock.close()
            raise
        return True

    def _start(
        self,
        sock: Any,
        peer: Address,
        local: Address | None,
        listener: Listener,
        family: int,
        hostkey: Hashable | None,
        swept: bool,
    ) -> None:
        # Exception-safe: nothing is registered until the task is scheduled,
        # so if anything here raises, the caller only has to close the socket.
        config = self.config
        if family != _AF_UNIX and (config.tcp_nodelay or config.keepalive):
            configure_tcp_socket(sock, nodelay=config.tcp_nodelay, keepalive=config.keepalive)
        if local is None:
            # The listener's address is the connection's local address, except
            # on a wildcard listener (0.0.0.0 / ::), where Connection asks lazily.
            local = None if listener.wildcard else listener.address
        if isinstance(sock, _stdlib_socket.socket):
            # A kernel socket: no Trio wrapper unless the handler asks for one.
            conn = Connection._adopt(sock, peer, local, self._conn_options, self)
        else:  # a socket from a custom Trio socket factory
            conn = Connection(
                sock,
                peer=peer,
                local=local,
                schedule_budget=config.schedule_budget,
                close_linger=config.close_linger,
                _owner=self,
            )
        nursery = self._conn_nursery
        assert nursery is not None
        if swept and not self._has_capacity():
            # Queue for a slot here, in accept order: the tasks themselves
            # first run in whatever order the scheduler picks.
            ev = self._queue_for_slot()
            try:
                nursery.start_soon(self._connection_task, conn, hostkey, ev, name=_TASK_NAME)
            except BaseException:
                del self._slot_waiters[ev]
                raise
        else:
            nursery.start_soon(self._connection_task, conn, hostkey, name=_TASK_NAME)
            self._active += 1
        self._conns[conn.id] = conn
        self._counters.accepted += 1
        if swept:
            self._counters.swept += 1

    # ------------------------------------------------------------------
    # Connections

    async def _connection_task(
        self, conn: Connection, hostkey: Hashable | None, slot: trio.Event | None = None
    ) -> None:
        # The per-connection hot path: one task, no timer, at most one cancel
        # scope (only with idle_timeout, for the reaper to cancel).  ``slot``:
        # a connection swept at drain time while at max_connections holds no
        # slot -- and the idle clock does not run -- until its handler can
        # start (see the module docstring).  ``ended``: the handler returned
        # or raised by itself (for the shutdown report).
        #
        # The handler is awaited right here, not through a helper coroutine:
        # every coroutine frame between the task and the handler stays alive
        # for the connection's whole life (~230 bytes each, measured).
        running = slot is None
        ended = False
        reaper = self._reaper
        try:
            if slot is not None:
                await self._wait_for_capacity(slot)
                self._active += 1
                running = True
                if conn.closed:  # pragma: no cover - nothing closes a waiting connection
                    return
            with trio.CancelScope() if reaper is not None else _NO_SCOPE as scope:
                if reaper is not None:
                    conn._scope = scope  # from now on the reaper watches it
                    reaper.watch(conn)
                try:
                    await self._handler(conn)
                except _NOT_ERRORS:
                    raise
                except BaseException as exc:
                    self._handler_raised(conn, exc)
                ended = True
        finally:
            how = self._release(conn, hostkey, running=running, ended=ended)
        if how != _NO_LINGER:
            await self._linger(conn, how)

    def _handler_raised(self, conn: Connection, exc: BaseException) -> None:
        # Classify what escaped a handler; re-raise cancellation (and, with
        # handler_errors="raise", real errors).
        rest: BaseException | None = exc
        cancelled: BaseException | None = None
        if isinstance(exc, BaseExceptionGroup):
            cancelled, rest = exc.split(_NOT_ERRORS)
        if rest is not None:
            self._handler_failed(conn, rest)
        if cancelled is not None:
            raise cancelled from None

    def _handler_failed(self, conn: Connection, exc: BaseException) -> None:
        # Only what this connection raised *because of its peer* is the peer's
        # fault; the same exception types raised by any other stream (a
        # backend connection, raised by hand) are handler bugs.
        exc_leaves = leaves(exc)
        if all(conn.raised_by_peer(e) for e in exc_leaves):
            if all(isinstance(e, trio.BrokenResourceError) for e in exc_leaves):
                self._counters.resets += 1
                log.debug("connection #%d from %s: reset by peer (%s)", conn.id, conn.peer, exc)
                return
            self._counters.protocol_errors += 1
            # A peer hanging up between two messages (IncompleteRead with
            # nothing partial) is routine for line protocols: debug only.
            clean_eof = all(isinstance(e, IncompleteRead) and not e.partial for e in exc_leaves)
            log.log(
                logging.DEBUG if clean_eof else logging.INFO,
                "connection #%d from %s: peer broke the protocol: %s",
                conn.id,
                conn.peer,
                exc,
            )
            return
        self._counters.handler_errors += 1
        if self.config.handler_errors == "raise":
            raise exc
        self._error_log.log(
            log,
            logging.ERROR,
            "handler failed on connection #%d from %s",
            conn.id,
            conn.peer,
            exc_info=exc,
        )

    def _connection_closed(self, conn: Connection) -> None:
        """Fold a connection into the counters (``Connection.close`` calls this once).

        It runs *before* the socket closes -- whoever closes it: the handler,
        the idle reaper or ``_release`` -- so a peer that has seen EOF reads
        final figures in ``stats``.
        """
        c = self._counters
        c.closed += 1
        c.bytes_received += conn.bytes_received
        c.bytes_sent += conn.bytes_sent

    def _release(
        self, conn: Connection, hostkey: Hashable | None, *, running: bool = True, ended: bool
    ) -> int:
        """The handler is done: give back its slot and host lease, close its connection.

        A handler that ended by itself gets an orderly close, which may
        *linger* (see ``Connection.aclose``); then the task must await
        :meth:`_linger`.  Returns ``_NO_LINGER``, ``_LINGER`` (the slot was
        given back) or ``_LINGER_IN_SLOT`` (the slot is kept until the
        linger ends: see :meth:`_linger_keeps_slot`).  Either way the
        connection leaves ``connections`` and is counted as closed here (its
        FIN is on the way).
        """
        del self._conns[conn.id]
        if hostkey is not None and (gate := self._admission) is not None:
            gate.release(hostkey)
        how = _NO_LINGER
        if not ended or self._grace_over:
            conn.close()  # -> _connection_closed, unless closed already
        elif not conn.closed and conn._begin_orderly_close():  # -> _connection_closed
            how = _LINGER_IN_SLOT if running and self._linger_keeps_slot() else _LINGER
            self._lingering_pending += 1  # until conn._linger starts counting it
        # (A handler that closed its connection itself owns that close, and
        # perhaps its linger: nothing to do here.)
        if running and how != _LINGER_IN_SLOT:
            self._release_slot()
        if how == _NO_LINGER:
            self._descriptor_freed()
        elif how == _LINGER:
            self._lingering_slotless += 1
        if self.draining:
            if ended and not self._grace_over:
                self._finished += 1
            elif not ended and conn._scope is not None and conn._scope.cancel_called:
                pass  # closed by the idle reaper: counted in stats.idle_closed only
            else:
                self._cancelled += 1
            self._check_empty()
        return how

    def _linger_keeps_slot(self) -> bool:
        # A lingering connection normally holds no slot.  So that a flood of
        # peers that keep sending after their handler returned cannot pile
        # up descriptors for close_linger seconds each, at most
        # max_connections linger slot-free at once; a connection lingering
        # beyond that keeps its slot until the linger ends -- accepting pauses
        # (backpressure) instead of a close that could drop a reply.
        return self._max is not None and self._lingering_slotless >= self._max

    def _release_slot(self) -> None:
        self._active -= 1
        if self._slot_waiters:
            self._wake_slot_waiter()

    async def _linger(self, conn: Connection, how: int) -> None:
        # Holds the descriptor, no handler (and, normally, no slot).  Bounded
        # by close_linger, and by the grace period: when it runs out the
        # connection nursery is cancelled, and a cancelled linger closes at once.
        self._lingering_pending -= 1
        try:
            await conn._linger(self.config.close_linger)
        except Exception:  # pragma: no cover - a bug must cost one connection only
            log.exception("lingering close of connection #%d failed", conn.id)
            conn.close()
        finally:
            if how == _LINGER_IN_SLOT:
                self._release_slot()
            else:
                self._lingering_slotless -= 1
            self._descriptor_freed()
            if self.draining:
                self._check_empty()

    def _descriptor_freed(self) -> None:
        # Wakes accept tasks backing off from descriptor exhaustion.
        ev = self._closed_event
        if ev is not None:
            self._closed_event = None
            ev.set()

    def _linger_changed(self, delta: int) -> None:
        """A linger of one of our connections began (+1) or ended (-1).

        Called by the connection itself, so ``stats.lingering`` also counts a
        handler's own ``await conn.aclose()`` (which lingers inside the
        handler's task, holding its slot until the handler returns).
        """
        self._lingering += delta

    def _check_empty(self) -> None:
        if not self._conns and not self._lingering and not self._lingering_pending:
            self._empty.set()


def _local_address(sock: Any, listener: Listener, family: int) -> Address | None:
    """The accepted socket's real local address if the listener is a wildcard, else None."""
    if not listener.wildcard:
        return None
    try:
        return address_from_sockaddr(family, sock.getsockname())
    except (OSError, ValueError, TypeError):
        return None


def check_serve_config(
    binds: Sequence[Bind], options: Mapping[str, Any], call: str = "serve()"
) -> ServerConfig:
    """Every check ``serve``/``open_server`` make of their binds and options, before any I/O.

    The options (:meth:`ServerConfig.from_options`), and what only binds and
    options together can tell: at least one bind, and no ``unix_mode`` with
    an abstract ``unix:@NAME`` (:func:`~trionet._listeners.check_unix_mode`).
    The command line calls it before ``trio.run``, so that whatever the
    library would refuse is a usage error there, never a traceback.

    Returns:
        The validated :class:`ServerConfig`.

    Raises:
        TypeError, ValueError: a bad option, or a bad combination.
        InvalidAddress: a malformed bind spec (found while looking).
        LocalProtocolError: no binds.
    """
    config = ServerConfig.from_options(options, call)
    if not binds:
        raise LocalProtocolError(f"{call} needs at least one bind (e.g. 'tcp://127.0.0.1:0')")
    with public_call(call):
        check_unix_mode(binds, config.unix_mode)
    return config


def check_handler(call: str, handler: object) -> None:
    """A handler must be an async callable taking a Connection.

    Raises:
        TypeError: it is not (the message names ``call``).
    """
    with public_call(call):
        check_async_callable("handler", handler, takes="a Connection")


async def serve(
    handler: Handler,
    *binds: Bind,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``handler`` on every bind until cancelled or shut down.

    Each listening socket gets its own accept task; each connection its own
    handler task, in a separate nursery so accepting can stop while
    connections finish.  When a handler returns, its connection is closed.

    Args:
        handler: ``async def handler(conn: trionet.Connection) -> None``.
        *binds: ``"tcp://HOST:PORT"``, ``"unix:PATH"``, ``"unix:@NAME"``,
            ``(host, port)``, an address record, or a bound listening socket.
        **options: see :class:`~trionet.ServerConfig` (``backlog``,
            ``handler_errors``, ``access``, ``max_connections``, ...).
        task_status: reports the :class:`Server` once every socket listens.

    Raises:
        InvalidAddress: a malformed bind spec.
        AddressInUse: an address is taken.
        ListenError: another failure to listen.
        TypeError, ValueError: a bad option (raised before anything opens).

    Example::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(trionet.serve, handler, "tcp://127.0.0.1:0", backlog=128)
            )
            print(server.addresses)
            ...
            await server.shutdown(5.0)
    """
    config = check_serve_config(binds, options, "serve()")
    check_handler("serve()", handler)
    await _serve(handler, binds, config, task_status)


async def _serve(
    handler: Handler,
    binds: tuple[Bind, ...],
    config: ServerConfig,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    # serve() once its arguments are validated (check_serve_config: open_server
    # validates first, outside its nursery, so errors come out unwrapped --
    # and only once).
    listeners = await open_listeners(binds, backlog=config.backlog, unix_mode=config.unix_mode)
    try:
        server = Server(handler, listeners, config)
    except BaseException:
        close_listeners(listeners)
        raise
    await server._run(task_status)


@asynccontextmanager
async def open_server(handler: Handler, *binds: Bind, **options: Any) -> AsyncIterator[Server]:
    """``async with`` form of :func:`serve`; leaving the block drains the server.

    A normal exit drains with the ``shutdown_grace`` option (default 10 s); an
    exception leaving the block stops the server without a grace period and
    propagates unchanged (never wrapped in an ``ExceptionGroup``).

    Args:
        handler: ``async def handler(conn: trionet.Connection) -> None``.
        *binds: as for :func:`serve`.
        **options: as for :func:`serve` (see :class:`~trionet.ServerConfig`).

    Yields:
        The running :class:`Server`, every socket already listening.

    Raises:
        InvalidAddress: a malformed bind spec.
        AddressInUse: an address is taken.
        ListenError: another failure to listen.
        TypeError, ValueError: a bad option (raised before anything opens).

    Example::

        async with trionet.open_server(handler, "tcp://127.0.0.1:0") as server:
            conn = await trionet.connect(server.addresses[0])
            ...
    """
    config = check_serve_config(binds, options, "open_server()")  # before anything starts
    check_handler("open_server()", handler)
    body_error: BaseException | None = None
    with unwrap_single():
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(_serve, handler, binds, config)
            try:
                yield server
            except BaseException as exc:
                body_error = exc
            await server.shutdown(config.shutdown_grace if body_error is None else 0.0)
    if body_error is not None:
        raise body_error
