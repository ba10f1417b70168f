"""``Server``: a running server's lifecycle -- accept tasks, the drain, the report.

Structure
=========

::

    serve()                                  -- runs until cancelled or shut down
      open_listeners()                       -- errors raised bare, before started()
      connection nursery                     -- one task per connection (ConnectionTable)
        [idle reaper]                        -- only with idle_timeout
        accept nursery                       -- one accept task per listener
          accept_loop(listener) ...
        (accept nursery done: drain has begun)
        wait until no connections remain (handlers, stages and lingering closes)
      close listeners; set "stopped"

Handlers run in a nursery *outside* the accept nursery, so accepting can stop
(drain step 1) while connections finish (steps 2-4).  What happens to each
connection -- admission, stages, handler, release, linger -- is the
:class:`~trionet._server._table.ConnectionTable`'s business; this module
runs the whole and keeps its public face (addresses, binds, stats,
connections, shutdown).

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
ours) but their tasks wait for a free slot before they start, so the limit
on concurrently running handlers holds even then.  If the grace period ends
first, they are closed and counted as ``cancelled``.  The idle timeout does
not run while they wait: its clock starts when the handler starts.
"""

from __future__ import annotations

import logging
import math
from typing import Any, final

import trio

from .._address import Address
from .._binds import Bind, bound
from .._config import ServerConfig
from .._stats import Counters, ServerStats
from .._stream import ConnectionInfo
from .._unwrap import unwrap_single
from . import _accept
from ._drain import ShutdownReport, check_grace
from ._listeners import Listener, close_listeners
from ._table import ConnectionTable

log = logging.getLogger("trionet.server")

__all__ = ["Server"]

#: Seconds a drain waits for a silent new connection's first bytes before
#: ending its ``async for`` loop (bounded by the grace period anyway).
_FIRST_REQUEST_ALLOWANCE = 2.0


@final
class Server:
    """A running server: its addresses, binds, live stats, connections, and ``shutdown``.

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

    def __init__(self, handler: Any, listeners: list[Listener], config: ServerConfig) -> None:
        self._listeners = listeners
        self.config = config
        self._counters = Counters()
        self._table = ConnectionTable(handler, config, self._counters)
        self._accept_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._grace_scope: trio.CancelScope | None = None
        self._grace_deadline = math.inf
        self._shutdown_started = False
        self._drain_started_at = 0.0
        self._report: ShutdownReport | None = None

    # ------------------------------------------------------------------
    # Public surface

    @property
    def addresses(self) -> list[Address]:
        """The actual bound addresses, in bind order (ephemeral ports resolved)."""
        return [listener.address for listener in self._listeners]

    @property
    def binds(self) -> tuple[Bind, ...]:
        """What each listening socket runs, in bind order: one resolved :class:`Bind` each.

        ``address`` is the address really bound (a ``tcp://*:0`` bind shows
        one entry per address family, with its port), and every option is
        resolved -- the bind's own or the server-wide one.
        """
        return tuple(
            bound(listener.bind, listener.address)
            for listener in self._listeners
            if listener.bind is not None
        )

    @property
    def draining(self) -> bool:
        """True once a graceful drain has begun."""
        return self._table.draining

    @property
    def stats(self) -> ServerStats:
        """A fresh frozen :class:`ServerStats` snapshot."""
        c = self._counters
        rx, tx = self._table.live_bytes()
        return ServerStats(
            accepted=c.accepted,
            active=c.accepted - c.closed,
            closed=c.closed,
            handler_errors=c.handler_errors,
            resets=c.resets,
            protocol_errors=c.protocol_errors,
            bytes_received=c.bytes_received + rx,
            bytes_sent=c.bytes_sent + tx,
            rejected_access=c.rejected_access,
            rejected_limit=c.rejected_limit,
            accept_errors=c.accept_errors,
            idle_closed=c.idle_closed,
            slow_closed=c.slow_closed,
            swept=c.swept,
            lingering=self._table.lingering_now(),
            tls_failures=c.tls_failures,
            stage_failures=c.stage_failures,
            proxy_failures=c.proxy_failures,
        )

    @property
    def connections(self) -> tuple[ConnectionInfo, ...]:
        """Read-only :class:`ConnectionInfo` records of the live connections."""
        return self._table.infos()

    @property
    def stopped(self) -> bool:
        """True once the server has stopped (after ``shutdown`` or cancellation)."""
        return self._stopped.is_set()

    def __repr__(self) -> str:
        addrs = ", ".join(str(a) for a in self.addresses)
        return f"<trionet.Server [{addrs}] active={len(self._table.records)}>"

    async def wait_stopped(self) -> ShutdownReport:
        """Wait until the server has stopped; return its :class:`ShutdownReport`.

        It stops after a drain (``shutdown``) or when the nursery ``serve``
        runs in is cancelled; in the latter case the report has zeros.

        Example::

            report = await server.wait_stopped()
        """
        await self._stopped.wait()
        assert self._report is not None
        return self._report

    async def shutdown(self, grace: float | None = None) -> ShutdownReport:
        """Drain gracefully: stop accepting, tell handlers, wait ``grace``, cancel the rest.

        1. Every connection already completed in the kernel's accept queue is
           accepted and served (counted in ``swept``), then the listeners
           close; new connects are refused.
        2. ``conn.draining`` is set on every connection, and ``async for
           chunk in conn`` ends once what had arrived was delivered.
           Connections still in their stages (a TLS handshake) are closed
           at once: they never reached a handler.
        3. Handlers get up to ``grace`` seconds to finish by themselves (and
           their connections' lingering closes to end).
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
            A :class:`ShutdownReport` (``finished``, ``cancelled``,
            ``in_stages``, ``swept``, ``elapsed``).

        Raises:
            TypeError: ``grace`` is not a number.
            ValueError: ``grace`` is negative or NaN.

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
        return await self.wait_stopped()

    # ------------------------------------------------------------------
    # Running

    async def _run(self, task_status: trio.TaskStatus[Server]) -> None:
        table = self._table
        try:
            with unwrap_single():
                async with trio.open_nursery() as conn_nursery:
                    table.nursery = conn_nursery
                    reaper_scope = trio.CancelScope()
                    if table.reaper is not None:
                        conn_nursery.start_soon(self._run_reaper, reaper_scope)
                    async with trio.open_nursery() as accept_nursery:
                        self._accept_scope = accept_nursery.cancel_scope
                        for listener in self._listeners:
                            accept_nursery.start_soon(
                                _accept.accept_loop,
                                table,
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
                            await table.empty.wait()
                        table.interrupt_all()
                        await table.empty.wait()
                    self._grace_scope = None
                    if table.busy():
                        # From here on, whatever still runs counts as cancelled
                        # (see "What the shutdown report counts" in _table),
                        # and a lingering close ends at once.
                        table.grace_over = True
                        log.info(
                            "grace period over: cancelling %d connection(s), ending %d linger(s)",
                            len(table.records),
                            table.lingering,
                        )
                        conn_nursery.cancel_scope.cancel()
                    reaper_scope.cancel()
        finally:
            table.grace_over = True
            close_listeners(self._listeners)
            if self._report is None:
                self._report = ShutdownReport(
                    finished=table.finished,
                    cancelled=table.cancelled,
                    swept=self._counters.swept,
                    in_stages=table.in_stages,
                    elapsed=(trio.current_time() - self._drain_started_at)
                    if self._shutdown_started
                    else 0.0,
                )
            self._stopped.set()

    async def _run_reaper(self, scope: trio.CancelScope) -> None:
        assert self._table.reaper is not None
        with scope:
            await self._table.reaper.run()

    def _begin_drain(self) -> None:
        table = self._table
        table.draining = True  # the sweep's connections are born draining
        self._drain_started_at = trio.current_time()
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        swept = 0
        for listener in self._listeners:
            try:
                swept += _accept.sweep(table, listener)
            except Exception:
                # Never leave a drain half-begun (listeners open, handlers
                # untold) because one connection could not be set up.
                log.exception("drain: sweeping %s failed", listener.address)
            finally:
                listener.close()
        if swept:
            log.info("drain: served %d connection(s) queued in the kernel", swept)
        table.begin_drain()
