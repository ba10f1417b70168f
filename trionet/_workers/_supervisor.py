"""The supervisor: open every bind once, run N workers on the shared sockets, replace them.

Why shared sockets, not one ``SO_REUSEPORT`` listener per worker
================================================================
Every worker accepts from the *same* listening sockets, which the
supervisor opened (or inherited from systemd) once and hands down as
``fd:N``.  A worker that exits -- crashed, killed, drained for a reload --
closes its own descriptor only; the socket, its queue of completed
connections and its half-open ones stay with the kernel, and the other
workers (and the replacement) accept them.  So a crash refuses no connect,
and a reload loses none.  With ``SO_REUSEPORT`` each worker would own a
listener, and the kernel drops the queued and half-open connections of one
that closes (unless ``net.ipv4.tcp_migrate_req`` is set).

What it does
============
* **Start**: all N workers at once; :func:`supervise` reports the
  :class:`Supervisor` once every one has said *ready* (it accepts).  One
  that exits first, or is not ready within ``ready_timeout``, fails the
  start (:class:`WorkerStartError`): a broken handler is an error, not a
  restart loop.  The supervisor runs no accept loop.
* **Crash**: a worker that exits unasked is restarted at once; only
  repeated young deaths back off (:class:`RestartPolicy`).
* **Reload** (:meth:`Supervisor.reload`, SIGHUP): for each worker in turn,
  start its replacement, wait for *ready*, then drain the old one (in the
  background, within its grace).  A replacement that fails leaves the old
  worker serving and stops the reload.  New workers import the handler and
  read the TLS files afresh.
* **Shutdown** (:meth:`Supervisor.shutdown`, SIGTERM/SIGINT): every worker
  drains within the grace; a second, shorter one cuts it; a worker still
  running :data:`KILL_AFTER` seconds past its grace is killed.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from .._address import Address
from .._exceptions import WorkerStartError
from .._server._drain import check_grace
from .._server._listeners import Listener, close_listeners
from .._stats_file import process_snapshot
from ._plan import WorkerPlan
from ._process import KILL_AFTER, Worker, describe_exit, spawn
from ._report import SupervisorReport, Tally
from ._restart import RestartPolicy
from ._signals import handle_signals

log = logging.getLogger("trionet.workers")

__all__ = ["Supervisor"]


@attrs.define(eq=False)
class _Reload:
    """A reload waiting for its turn, which later requests join."""

    done: trio.Event = attrs.field(factory=trio.Event)
    result: bool = False


class Supervisor:
    """A running supervisor (what ``nursery.start(supervise, ...)`` returns)."""

    def __init__(
        self,
        plan: WorkerPlan,
        listeners: list[Listener],
        nursery: trio.Nursery,
        roles: Sequence[str] | None = None,
    ) -> None:
        self._plan = plan
        self._listeners = listeners
        self._fds = [listener.sock.fileno() for listener in listeners]
        #: The worker's command line for its descriptors (each under its bind's flag).
        self._command = functools.partial(plan.command, roles=roles)
        self._nursery = nursery
        self._current: list[Worker | None] = [None] * plan.workers
        self._live: set[Worker] = set()
        self._policies = [RestartPolicy() for _ in range(plan.workers)]
        self._restarts: set[trio.CancelScope] = set()
        self._reload_lock = trio.Lock()
        self._spawn_lock = trio.Lock()
        self._queued_reload: _Reload | None = None
        self._stopping = False
        self._stop_started = 0.0
        self._kill_deadline = math.inf
        self._kill_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        self._starting = False
        self._start_failed = trio.Event()
        self._failed_start: Worker | None = None
        self._report: SupervisorReport | None = None
        self._started = self._crashed = self._restarted = 0
        self._reloads = self._reloads_done = self._unreported = 0
        self._tally = Tally()

    # -- what users read -------------------------------------------------

    @property
    def addresses(self) -> list[Address]:
        """The addresses the shared sockets listen on (real ports, not ``:0``)."""
        return [listener.address for listener in self._listeners]

    @property
    def pids(self) -> list[int]:
        """The current workers' process ids, by slot (a restarting slot is left out)."""
        return [worker.pid for worker in self._current if worker is not None]

    @property
    def workers(self) -> int:
        """How many worker processes it runs (``--workers``)."""
        return self._plan.workers

    @property
    def stopping(self) -> bool:
        """True once :meth:`shutdown` has begun."""
        return self._stopping

    def __repr__(self) -> str:
        return f"<trionet.Supervisor {self._plan.workers} workers on {self.addresses}>"

    # -- life ------------------------------------------------------------

    async def _spawn(self, slot: int) -> Worker | None:
        """Start a worker for ``slot``; None once the shutdown has begun.

        The fork and exec run in a thread that a cancellation cannot stop,
        so they are shielded and hold ``_spawn_lock``, which the shutdown
        takes before it closes the listening sockets: a worker is never
        handed closed (or reused) descriptor numbers, and every worker
        started is in ``_live`` before the shutdown tells them to drain.
        """
        async with self._spawn_lock:
            if self._stopping:
                return None
            with trio.CancelScope(shield=True):
                worker = await spawn(slot, self._command, self._fds)
            self._started += 1
            self._live.add(worker)
            self._nursery.start_soon(self._watch, worker)
        return worker

    async def _watch(self, worker: Worker) -> None:
        try:
            await worker.watch()
        finally:
            self._live.discard(worker)
            self._account(worker)
            worker.exited.set()  # only now: a shutdown's report waits for this
        self._after_exit(worker)

    def _account(self, worker: Worker) -> None:
        if not self._tally.add(worker.final):
            self._unreported += 1

    def _after_exit(self, worker: Worker) -> None:
        how = describe_exit(worker.returncode)
        if worker.retiring or self._stopping:
            log.info("%s %s", worker, how)
            return
        if worker.ready_at is None and self._current[worker.slot] is not worker:
            return  # a replacement that failed: the reload says so
        if self._starting:  # the start fails (see _start_all)
            self._failed_start = self._failed_start or worker
            self._start_failed.set()
            return
        self._crashed += 1
        started_at = worker.ready_at if worker.ready_at is not None else worker.started
        lifetime = (worker.exited_at or trio.current_time()) - started_at
        delay = self._policies[worker.slot].died(lifetime)
        if self._current[worker.slot] is worker:
            self._current[worker.slot] = None
            when = "at once" if delay == 0 else f"in {delay:.1f}s (it keeps dying young)"
            log.warning("%s %s unasked: restarting %s", worker, how, when)
            self._nursery.start_soon(self._restart, worker.slot, delay)

    async def _restart(self, slot: int, delay: float) -> None:
        with trio.CancelScope() as scope:
            self._restarts.add(scope)
            try:
                await trio.sleep(delay)
                if self._stopping or self._current[slot] is not None:
                    return
                try:
                    worker = await self._spawn(slot)
                except OSError as exc:  # out of processes or descriptors: try again later
                    delay = self._policies[slot].died(0.0)
                    log.error(
                        "worker %d could not be started (%s): trying again in %.1fs",
                        slot + 1,
                        exc,
                        delay,
                    )
                    self._nursery.start_soon(self._restart, slot, delay)
                    return
                if worker is None:  # the shutdown has begun
                    return
                if self._current[slot] is not None:  # a reload filled it meanwhile
                    log.info("%s is not needed any more: draining it", worker)
                    await worker.drain(None)
                    return
                self._current[slot] = worker
                self._restarted += 1
            finally:
                self._restarts.discard(scope)

    async def _start_all(self) -> None:
        """Start every worker at once; all ready, or a :class:`WorkerStartError`.

        The first worker to exit before it is ready fails the start at once
        (no restart: a broken handler is an error, not a restart loop); so
        does one not ready within ``ready_timeout``.
        """
        self._starting = True
        workers: list[Worker] = []
        try:
            for slot in range(self._plan.workers):
                worker = await self._spawn(slot)
                assert worker is not None  # no shutdown before the start ends
                workers.append(worker)
                self._current[slot] = worker
        except OSError as exc:  # out of processes or descriptors
            with trio.CancelScope(shield=True):
                await self._stop_workers(0.0)
            raise WorkerStartError(
                f"worker {len(workers) + 1} could not be started: {exc}"
            ) from None
        with trio.move_on_after(self._plan.ready_timeout):
            async with trio.open_nursery() as nursery:

                async def on_failure() -> None:
                    await self._start_failed.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(on_failure)
                for worker in workers:
                    await worker.ready.wait()
                nursery.cancel_scope.cancel()
        self._starting = False
        failed = self._failed_start or next(
            (worker for worker in workers if not worker.ready.is_set()), None
        )
        if failed is not None:
            why = self._why_not_ready(failed)
            for worker in workers:
                if not worker.ready.is_set():  # no connections: nothing to drain
                    worker.retiring = True
                    worker.kill(quietly=True)
            with trio.CancelScope(shield=True):
                await self._stop_workers(0.0)
            raise WorkerStartError(f"{failed} {why}")
        log.info("%d workers ready", len(workers))

    async def _settle(self, worker: Worker) -> bool:
        with trio.move_on_after(self._plan.ready_timeout):
            await worker.settled.wait()
        return worker.ready.is_set() and worker.returncode is None

    def _why_not_ready(self, worker: Worker) -> str:
        if worker.returncode is not None:
            return f"{describe_exit(worker.returncode)} before it was ready (its error is above)"
        return f"was not ready within {self._plan.ready_timeout}s"

    async def reload(self) -> bool:
        """Replace every worker, one at a time: the replacement is ready before the old drains.

        A reload asked for while one runs waits its turn, and every request
        made while one waits joins it (a storm of SIGHUPs is one reload after
        the current one, not one each).  Returns True if every worker was
        replaced; False if a replacement failed (the old worker keeps
        serving, and the reason is logged) or the supervisor is stopping.
        """
        queued = self._queued_reload
        if queued is not None:  # join the reload waiting for its turn
            await queued.done.wait()
            return queued.result
        queued = self._queued_reload = _Reload()
        try:
            async with self._reload_lock:
                self._queued_reload = None
                queued.result = await self._reload()
        finally:
            if self._queued_reload is queued:
                self._queued_reload = None
            queued.done.set()
        return queued.result

    async def _reload(self) -> bool:
        if self._stopping:
            return False
        self._reloads += 1
        log.info("reload: replacing %d workers", self._plan.workers)
        for slot in range(self._plan.workers):
            if self._stopping:
                return False
            try:
                spawned = await self._spawn(slot)
            except OSError as exc:
                log.error(
                    "reload: a replacement could not be started (%s); keeping the old workers", exc
                )
                return False
            if spawned is None:  # the shutdown has begun
                return False
            new = spawned
            settled = await self._settle(new)
            if self._stopping:
                await new.drain(None)
                return False
            if not settled:
                log.error(
                    "reload: the replacement %s %s; keeping the old workers",
                    new,
                    self._why_not_ready(new),
                )
                new.retiring = True
                new.kill()
                return False
            old, self._current[slot] = self._current[slot], new
            if old is not None:
                log.info("reload: %s replaced by %s: draining it", old, new)
                await old.drain(None)
                self._nursery.start_soon(self._deadline, old, self._plan.grace)
        self._reloads_done += 1
        log.info("reload: done, %d workers replaced", self._plan.workers)
        return True

    async def _deadline(self, worker: Worker, grace: float) -> None:
        """Kill ``worker`` (drained by a reload) if it outlives its grace by ``KILL_AFTER``."""
        with trio.move_on_after(grace + KILL_AFTER):
            await worker.exited.wait()
            return
        worker.kill()

    async def shutdown(self, grace: float | None = None) -> SupervisorReport:
        """Drain every worker within ``grace`` (None: ``--grace``); a later, shorter call cuts it.

        Safe to call more than once and from several tasks: later calls wait
        for the same shutdown.  A worker still running ``KILL_AFTER`` seconds
        after its grace is killed.
        """
        if grace is not None:
            check_grace(grace, "Supervisor.shutdown()")
        effective = self._plan.grace if grace is None else grace
        deadline = trio.current_time() + effective + KILL_AFTER
        if self._stopping:
            if deadline < self._kill_deadline:
                self._kill_deadline = deadline
                if self._kill_scope is not None:
                    self._kill_scope.deadline = deadline
                for worker in list(self._live):
                    await worker.drain(grace)
            return await self.wait_stopped()
        self._stopping = True
        self._stop_started = trio.current_time()
        for scope in self._restarts:
            scope.cancel()
        with trio.CancelScope(shield=True):
            async with self._spawn_lock:  # a spawn under way ends first (see _spawn)
                pass
            # Our copies of the listening sockets go first: once every worker
            # has swept the queue and closed its own, a connect is refused at
            # once -- as with one process -- instead of being queued where no
            # one will accept it and reset when we exit.  (A socket systemd
            # passed stays open in systemd, which queues for the next start.)
            close_listeners(self._listeners)
            log.info("shutdown: draining %d workers (grace %ss)", len(self._live), effective)
            await self._stop_workers(grace, deadline)
        self._report = self._make_report()
        self._stopped.set()
        return self._report

    async def _stop_workers(self, grace: float | None, deadline: float | None = None) -> None:
        if deadline is None:
            deadline = trio.current_time() + (grace or 0.0) + KILL_AFTER
        self._kill_deadline = min(deadline, self._kill_deadline)
        for worker in list(self._live):
            await worker.drain(grace)
        with trio.CancelScope(deadline=self._kill_deadline) as self._kill_scope:
            await self._all_exited()
        for worker in list(self._live):
            worker.kill()
        await self._all_exited()

    async def _all_exited(self) -> None:
        """Wait until every live worker, including one started meanwhile, has been reaped."""
        while running := [worker for worker in self._live if not worker.exited.is_set()]:
            await running[0].exited.wait()

    async def handle_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> SupervisorReport:
        """SIGHUP reloads; SIGINT or SIGTERM shuts down, a second one cuts the grace.

        Must run in the main thread.  Reports (``None``) through
        ``task_status`` once the handlers are in place; returns the report
        once the supervisor has stopped (however it was stopped).  A signal
        that arrives after that is dropped (logged at debug level), never
        passed to the previous handler.
        """
        return await handle_signals(self, task_status=task_status)

    async def wait_stopped(self) -> SupervisorReport:
        """Wait for the shutdown to finish; return its report."""
        await self._stopped.wait()
        assert self._report is not None
        return self._report

    def snapshot(self) -> dict[str, Any]:
        """What ``--stats-file`` holds: this process, every live worker's latest snapshot, sums.

        ``totals`` adds up the live workers' latest stats and the final stats
        of those that have exited; ``exited`` is the latter alone.
        """
        workers = []
        totals = self._tally.stats()
        for worker in sorted(self._live, key=lambda w: (w.slot, w.started)):
            state = (
                "retiring" if worker.retiring else "ready" if worker.ready.is_set() else "starting"
            )
            latest = worker.snapshot or {}
            workers.append({**latest, "slot": worker.slot + 1, "pid": worker.pid, "state": state})
            for key, value in (latest.get("stats") or {}).items():
                if isinstance(value, int) and not isinstance(value, bool):
                    totals[key] = totals.get(key, 0) + value
        return {
            **process_snapshot(),
            "supervisor": True,
            "stopped": self._stopped.is_set(),
            "stopping": self._stopping,
            "workers": workers,
            "exited": self._tally.stats(),
            "totals": totals,
            "started": self._started,
            "crashed": self._crashed,
            "restarted": self._restarted,
            "reloads": self._reloads,
            "reloads_done": self._reloads_done,
            "unreported": self._unreported,
        }

    def _make_report(self) -> SupervisorReport:
        return self._tally.report(
            workers=self._plan.workers,
            started=self._started,
            crashed=self._crashed,
            restarted=self._restarted,
            reloads=self._reloads,
            reloads_done=self._reloads_done,
            unreported=self._unreported,
            elapsed=trio.current_time() - self._stop_started,
        )
