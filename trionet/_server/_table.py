"""``ConnectionTable``: a server's connections, from accept to the end of their close.

Data flows one way::

    accept task --admit()--> admission gate --> record + connection task
        --> [stages, under one deadline] --> [admission, if after stages]
        --> handler --> release (slot, host lease, stats, orderly close)
        --> [linger] --> gone

The accept loops talk to the table through ``_accept.AcceptTarget`` (capacity,
admit, the descriptor-freed wake-up); connections talk to it through
``ConnectionOwner`` (the drain state, "I closed", "I linger"); the server
drives it (``begin_drain``, ``interrupt_all``, ``cancel_all``) and reads it
(``records``, ``infos``, the report counters).  Nothing here reads another
object's private members.

The connection task is the per-connection hot path: one task, no timer, at
most one cancel scope (only with ``idle_timeout``, for the reaper to
cancel, or for a bind with stages), and the handler awaited right in it, not
through a helper coroutine -- every frame between the task and the handler
stays alive for the connection's whole life (~230 bytes each, measured).

What the shutdown report counts
===============================
During a drain each connection ends in exactly one way (``_release``):

* its handler returned or raised by itself before the grace period ran out:
  ``finished`` (whether or not its close then lingered -- the drain waits
  for the linger too, within the grace period);
* it was still in its stages when the drain began (or was swept into them):
  closed at once, ``in_stages``;
* the idle reaper closed it (``stats.idle_closed``): neither field;
* otherwise -- cancelled when the grace period ran out (or when the whole
  server was cancelled), or its handler never started: ``cancelled``.

Elsewhere
=========
The stages run in :func:`._stages.run_stages` (the table is their
``StageHost``); what escapes a handler goes to
:class:`._handler_errors.HandlerErrors`, which classifies it by cause
(:mod:`._classify`); the idle clock is :mod:`._idle`'s.
"""

from __future__ import annotations

import contextlib
import logging
import socket as _stdlib_socket
from collections.abc import Hashable
from typing import Any

import trio

from .._address import Address, UnixAddress, address_from_sockaddr
from .._config import ServerConfig
from .._ratelimit import RateLimiter
from .._stats import Counters
from .._stream import Connection, ConnectionInfo, ConnOptions
from .._stream._hooks import (
    begin_orderly_close,
    interrupt_iteration,
    linger,
    mark_drain,
    server_connection,
)
from .._stream._sockopts import AF_UNIX, configure_tcp_socket
from ._admission import REFUSED, Admission, family_of, local_address, reset_close
from ._capacity import Capacity
from ._handler_errors import NOT_ERRORS, HandlerErrors
from ._idle import WAITING_ROOM, IdleReaper
from ._listeners import Listener
from ._record import HANDLER, QUEUED, STAGES, ConnectionRecord, RatedRecord, WatchedRecord
from ._stages import StagePlan, run_stages, start_stages

log = logging.getLogger("trionet.server")

__all__ = ["ConnectionTable"]

#: Stands in for the handler's cancel scope when there is no idle timeout.
_NO_SCOPE: contextlib.nullcontext[None] = contextlib.nullcontext()
#: One name for every connection task: a name built per task costs memory.
_TASK_NAME = "trionet connection"
#: What ``_release`` asks of the connection task afterwards.
_NO_LINGER, _LINGER, _LINGER_IN_SLOT = 0, 1, 2


class ConnectionTable:
    """A server's live connections and everything done to them (internal)."""

    def __init__(self, handler: Any, config: ServerConfig, counters: Counters) -> None:
        self._handler = handler
        self._config = config
        self.counters = counters
        self.error_log = RateLimiter()
        self.handler_errors = HandlerErrors(
            counters, self.error_log, raise_errors=config.handler_errors == "raise"
        )
        self.sweep_log = RateLimiter(burst=3, period=60.0)
        self.records: dict[int, ConnectionRecord] = {}
        rate = config.min_receive_rate
        #: ``max_connections``, and with ``min_receive_rate`` the waiting room
        #: (where the reaper judges the peers waiting for a slot; see ``_idle``).
        self.capacity = Capacity(
            config.max_connections,
            WAITING_ROOM if rate is not None and config.max_connections is not None else None,
        )
        #: The admission gate; None admits everyone (nothing to decide).
        self._admission = Admission.create(
            config.access, config.max_connections_per_host, counters, self.error_log
        )
        #: For the stages (``StageHost``): is there a gate to run after them?
        self.gated = self._admission is not None
        self.reaper = (
            IdleReaper(
                config.idle_timeout,
                self.records,
                counters,
                rate=rate,
                grace=config.receive_grace,
                to_back=self.capacity.to_back,
            )
            if config.idle_timeout is not None or rate is not None
            else None
        )
        self._options = ConnOptions.of(config.schedule_budget, config.close_linger, True)
        self.nursery: trio.Nursery | None = None
        # -- the drain, as connections see it (ConnectionOwner) --
        self.draining = False
        self.drain_silent = False
        self.drain_event = trio.Event()
        #: Set by the server once the grace period ran out.
        self.grace_over = False
        # -- lingering closes (see _release) --
        self.lingering = 0
        self._lingering_slotless = 0
        self._lingering_pending = 0
        # -- the shutdown report --
        self.finished = 0
        self.cancelled = 0
        self.in_stages = 0
        #: Set whenever no connection (and no linger) is left during a drain.
        self.empty = trio.Event()
        # Set (and replaced) whenever a descriptor closes: wakes accept tasks
        # backing off from descriptor exhaustion.
        self._freed: trio.Event | None = None

    # ------------------------------------------------------------------
    # For the server

    def infos(self) -> tuple[ConnectionInfo, ...]:
        """Snapshots of the live connections (in their stages or handler)."""
        return tuple(rec.conn.info() for rec in list(self.records.values()) if not rec.conn.closed)

    def live_bytes(self) -> tuple[int, int]:
        """Bytes received and sent by the connections not yet folded into the counters."""
        rx = tx = 0
        for rec in self.records.values():
            conn = rec.conn
            if not conn.closed:  # a closed one is already in the counters
                rx += conn.bytes_received
                tx += conn.bytes_sent
        return rx, tx

    def begin_drain(self) -> None:
        """The drain began: tell every connection, close those still in their stages."""
        self.draining = True
        self.drain_event.set()
        for rec in list(self.records.values()):
            if rec.state == STAGES and rec.scope is not None:
                rec.scope.cancel()  # never reached a handler: close at once
            else:
                mark_drain(rec.conn)
                interrupt_iteration(rec.conn)
        self.check_empty()

    def interrupt_all(self) -> None:
        """Silent connections count as idle now: end their ``async for`` too."""
        self.drain_silent = True
        for rec in list(self.records.values()):
            interrupt_iteration(rec.conn)

    def lingering_now(self) -> int:
        """Connections lingering now (``stats.lingering``)."""
        return self.lingering + self._lingering_pending

    def busy(self) -> bool:
        """Any connection or linger left?"""
        return bool(self.records) or bool(self.lingering) or bool(self._lingering_pending)

    def check_empty(self) -> None:
        if self.draining and not self.busy():
            self.empty.set()

    # ------------------------------------------------------------------
    # For the accept loops (AcceptTarget)

    def has_capacity(self) -> bool:
        return self.capacity.accepting()

    async def wait_for_capacity(self) -> None:
        await self.capacity.wait_accepting()

    async def wait_descriptor_freed(self, timeout: float) -> None:
        """Sleep up to ``timeout``, waking early when a connection's descriptor closes."""
        ev = self._freed
        if ev is None:
            ev = self._freed = trio.Event()
        with trio.move_on_after(timeout):
            await ev.wait()

    def admit(self, sock: Any, addr: Any, listener: Listener, *, swept: bool) -> bool:
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
            if self._config.access is not None or family != AF_UNIX:
                self.counters.rejected_access += 1
                self.error_log.log(
                    log,
                    logging.WARNING,
                    "refused a peer on %s: unparseable peer address %r",
                    listener.address,
                    addr,
                )
                reset_close(sock)
                return False
            peer = UnixAddress("")
        local: Address | None = None
        hostkey: Hashable | None = None
        gate = self._admission
        plan: StagePlan | None = listener.plan
        if plan is not None and plan.trusted is not None and not plan.trusted(peer):
            self.counters.proxy_failures += 1
            log.debug("refused %s on %s: not among its trusted_proxies", peer, listener.address)
            reset_close(sock)
            return False
        if gate is not None and (plan is None or not plan.admit_after):
            if gate.wants_local:
                # A callable may decide on the local address too: give it the
                # real one, not a wildcard listener's 0.0.0.0.
                local = local_address(sock, listener, family)
            hostkey = gate.admit(sock, peer, local or listener.address, family)
            if hostkey is REFUSED:
                reset_close(sock)
                return False
        try:
            self._start(sock, peer, local, listener, hostkey, swept)
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
        hostkey: Hashable | None,
        swept: bool,
    ) -> None:
        # Exception-safe: nothing is registered until the task is scheduled,
        # so if anything here raises, the caller only has to close the socket.
        config = self._config
        if listener.family != AF_UNIX and (config.tcp_nodelay or config.keepalive):
            configure_tcp_socket(sock, nodelay=config.tcp_nodelay, keepalive=config.keepalive)
        if local is None:
            # The listener's address is the connection's local address, except
            # on a wildcard listener (0.0.0.0 / ::), where Connection asks lazily.
            local = None if listener.wildcard else listener.address
        plan = listener.plan
        if plan is None or plan.factory is None:
            conn = server_connection(sock, peer, local, self._options, self)
        else:
            conn = plan.factory(sock, peer, local, self._options, self)
        nursery = self.nursery
        assert nursery is not None
        capacity = self.capacity
        if not capacity.has_room():
            # Queue for a slot here, in accept order: the tasks themselves
            # first run in whatever order the scheduler picks.  Who gets
            # here: a connection swept during a drain, one let into the
            # waiting room (min_receive_rate), or one accepted on the
            # generic path (no descriptor), which cannot check for a slot
            # between its wait and accept() -- two accept loops may both
            # have seen the last free slot (or the last place in the waiting
            # room, which may then hold up to listeners - 1 more: queued
            # anyway, never refused -- it was accepted).
            rec = self._record(conn, hostkey, plan, QUEUED, sock)
            ev = capacity.queue()
            try:
                nursery.start_soon(self._task, rec, ev, name=_TASK_NAME)
            except BaseException:
                capacity.leave(ev)
                raise
        else:
            rec = self._record(conn, hostkey, plan, HANDLER if plan is None else STAGES, sock)
            nursery.start_soon(self._task, rec, name=_TASK_NAME)
            capacity.take()
        self.records[conn.id] = rec
        self.counters.accepted += 1
        if swept:
            self.counters.swept += 1

    def _record(
        self,
        conn: Connection,
        hostkey: Hashable | None,
        plan: StagePlan | None,
        state: int,
        sock: Any,
    ) -> ConnectionRecord:
        # The lean record unless the connection has stages or an idle clock;
        # a rated one with min_receive_rate (``sock``: what the kernel holds
        # unread on it is read, with FIONREAD, by the reaper).
        reaper = self.reaper
        if reaper is not None and reaper.rate is not None:
            raw = sock if isinstance(sock, _stdlib_socket.socket) else None
            return RatedRecord(conn, hostkey, state, plan, raw)
        if plan is None and reaper is None:
            return ConnectionRecord(conn, hostkey, state)
        return WatchedRecord(conn, hostkey, state, plan)

    # ------------------------------------------------------------------
    # The connection task

    async def _task(self, rec: ConnectionRecord, slot: trio.Event | None = None) -> None:
        # ``slot``: a connection swept at drain time while at max_connections
        # holds no slot -- and the idle clock does not run -- until its
        # handler can start.  ``ended``: the handler returned or raised by
        # itself (for the shutdown report).
        running = slot is None
        ended = False
        reaper = self.reaper
        try:
            if slot is not None:
                if not await self._wait_for_slot(rec, slot):
                    return  # closed by the reaper while it waited (a slow sender)
                self.capacity.take()
                running = True
                rec.state = HANDLER if rec.plan is None else STAGES
            if rec.plan is not None:
                started = start_stages(rec, self)
                if started is False:
                    return
                if started is not True and not await run_stages(rec, self, *started):
                    return
            conn = rec.conn
            with trio.CancelScope() if reaper is not None else _NO_SCOPE as scope:
                if reaper is not None:
                    reaper.watch(rec, scope)  # from now on the reaper watches it
                try:
                    await self._handler(conn)
                except NOT_ERRORS:
                    raise
                except BaseException as exc:
                    self.handler_errors.report(conn, exc)
                ended = True
        finally:
            how = self._release(rec, running=running, ended=ended)
        if how != _NO_LINGER:
            await self._linger(rec.conn, how)

    async def _wait_for_slot(self, rec: ConnectionRecord, slot: trio.Event) -> bool:
        """Wait in the queue for a slot; False if the reaper closed the connection meanwhile."""
        if not isinstance(rec, RatedRecord):
            await self.capacity.wait(slot)
            return True
        # In the waiting room the reaper judges the peer by what the kernel
        # holds for it, and cancels this wait if it is too slow.
        rec.ticket = slot
        with trio.CancelScope() as rec.scope:
            await self.capacity.wait(slot)
            rec.scope = rec.ticket = None
            return True
        rec.ticket = None
        return False

    def admit_after_stages(self, rec: ConnectionRecord) -> bool:
        """The admission gate, after the stages (``StageHost``); False: refused and aborted."""
        gate = self._admission
        if gate is None:
            return True
        conn = rec.conn
        hostkey = gate.admit(conn, conn.peer, conn.local, family_of(conn.peer))
        if hostkey is REFUSED:
            conn.abort()  # counted in rejected_access / rejected_limit by the gate
            return False
        rec.hostkey = hostkey
        return True

    # ------------------------------------------------------------------
    # The end of a connection (ConnectionOwner, release, linger)

    def connection_closed(self, conn: Connection) -> None:
        """Fold a connection into the counters (its close calls this once).

        It runs *before* the FIN goes out -- whoever closes it: the handler,
        the idle reaper or ``_release`` -- so a peer that has seen EOF reads
        final figures in ``stats``.
        """
        c = self.counters
        c.closed += 1
        c.bytes_received += conn.bytes_received
        c.bytes_sent += conn.bytes_sent

    def linger_changed(self, delta: int) -> None:
        """A linger of one of our connections began (+1) or ended (-1).

        Called by the connection itself, so ``stats.lingering`` also counts a
        handler's own ``await conn.aclose()`` (which lingers inside the
        handler's task, holding its slot until the handler returns).
        """
        self.lingering += delta

    def _release(self, rec: ConnectionRecord, *, running: bool, ended: bool) -> int:
        """The task is done: give back its slot and host lease, close its connection.

        A handler that ended by itself gets an orderly close, which may
        *linger* (see ``Connection.aclose``); then the task must await
        :meth:`_linger`.  Returns ``_NO_LINGER``, ``_LINGER`` (the slot was
        given back) or ``_LINGER_IN_SLOT`` (the slot is kept until the
        linger ends: see :meth:`_linger_keeps_slot`).  Either way the
        connection leaves ``records`` and is counted as closed here (its FIN
        is on the way).
        """
        conn = rec.conn
        del self.records[conn.id]
        if rec.hostkey is not None and (gate := self._admission) is not None:
            gate.release(rec.hostkey)
        how = _NO_LINGER
        if not ended or self.grace_over:
            conn.close()  # -> connection_closed, unless closed already
        elif not conn.closed and begin_orderly_close(conn):  # -> connection_closed
            how = _LINGER_IN_SLOT if running and self._linger_keeps_slot() else _LINGER
            self._lingering_pending += 1  # until its linger starts counting it
        # (A handler that closed its connection itself owns that close, and
        # perhaps its linger: nothing to do here.)
        if running and how != _LINGER_IN_SLOT:
            self.capacity.give_back()
        if how == _NO_LINGER:
            self._descriptor_freed()
        elif how == _LINGER:
            self._lingering_slotless += 1
        if self.draining:
            if rec.state == STAGES:
                self.in_stages += 1
            elif ended and not self.grace_over:
                self.finished += 1
            elif not ended and rec.scope is not None and rec.scope.cancel_called:
                pass  # closed by the idle reaper: counted in stats.idle_closed only
            else:
                self.cancelled += 1
            self.check_empty()
        return how

    def _linger_keeps_slot(self) -> bool:
        # A lingering connection normally holds no slot.  So that a flood of
        # peers that keep sending after their handler returned cannot pile
        # up descriptors for close_linger seconds each, at most
        # max_connections linger slot-free at once; a connection lingering
        # beyond that keeps its slot until the linger ends -- accepting pauses
        # (backpressure) instead of a close that could drop a reply.
        limit = self.capacity.limit
        return limit is not None and self._lingering_slotless >= limit

    async def _linger(self, conn: Connection, how: int) -> None:
        # Holds the descriptor, no handler (and, normally, no slot).  Bounded
        # by close_linger, and by the grace period: when it runs out the
        # connection nursery is cancelled, and a cancelled linger closes at once.
        self._lingering_pending -= 1
        try:
            await linger(conn, self._config.close_linger)
        except Exception:  # pragma: no cover - a bug must cost one connection only
            log.exception("lingering close of connection #%d failed", conn.id)
            conn.close()
        finally:
            if how == _LINGER_IN_SLOT:
                self.capacity.give_back()
            else:
                self._lingering_slotless -= 1
            self._descriptor_freed()
            self.check_empty()

    def _descriptor_freed(self) -> None:
        # Wakes accept tasks backing off from descriptor exhaustion.
        ev = self._freed
        if ev is not None:
            self._freed = None
            ev.set()
