"""The entry points: :func:`supervise` (the Python API) and :func:`run_plan` (the CLI's).

Both open the listening sockets once, start a :class:`Supervisor` in a
nursery of their own, report it once every worker is accepting, and
return its :class:`SupervisorReport` once it has stopped.  With a stats
file (``--stats-file``) they also write the supervisor's snapshot every
interval, and a last one after the stop.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from .._server._listeners import close_listeners, open_listeners
from .._server._serve import check_serve_config
from .._stats_file import periodic_json, write_json
from .._unwrap import unwrap_single
from ._plan import WorkerPlan, plan_from_options
from ._report import SupervisorReport
from ._supervisor import Supervisor

log = logging.getLogger("trionet.stats")

__all__ = ["run_plan", "supervise"]


async def supervise(
    handler: str,
    *binds: str,
    workers: int,
    ready_timeout: float = 30.0,
    task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> SupervisorReport:
    """Open ``binds`` once and serve ``handler`` from ``workers`` processes sharing them.

    Each worker is ``python -m trionet serve HANDLER ...``: a fresh
    interpreter that imports the handler and reads the TLS files itself.
    ``options`` are the ``trionet serve`` flags as keywords --
    ``max_connections=500``, ``grace=10``, ``tls_cert="cert.pem"``,
    ``allow=["10.0.0.0/8"]`` -- checked here, by the same code the command
    line uses, before anything is opened.  The binds may be inherited
    (``fd:N``, ``systemd``).

    Reports the :class:`Supervisor` through ``task_status`` once every
    worker is accepting; runs until :meth:`Supervisor.shutdown` (or
    :meth:`Supervisor.handle_signals`) has drained the workers, and returns
    the :class:`SupervisorReport`.  If cancelled, the workers are told to
    stop at once, killed after a few seconds, and reaped: none is left
    behind.

    Args:
        handler: ``echo``/``discard``/``daytime``/``chargen`` or ``MODULE:FUNCTION``.
        binds: bind specs (default ``tcp://127.0.0.1:7007``).
        workers: how many worker processes (1 to 1024).
        ready_timeout: seconds a starting worker gets to be accepting.
        task_status: reports the :class:`Supervisor`.
        options: ``trionet serve`` flags, by their Python names.

    Raises:
        TypeError: an argument of the wrong type, or an unknown option
            (naming ``supervise()`` and the option), before anything is opened.
        ValueError: a bad value, likewise.
        WorkerStartError: a worker exited, or was not ready in time, at the start.
        ListenError: a bind could not be opened.
        InvalidAddress: an inherited descriptor could not be adopted.

    Example::

        async with trio.open_nursery() as nursery:
            supervisor = await nursery.start(
                functools.partial(trionet.supervise, "myapp:handle",
                                  "tcp://0.0.0.0:8000", workers=4, grace=10))
            report = await supervisor.handle_signals()
    """
    plan = plan_from_options(handler, binds, workers, ready_timeout, options)
    return await run_plan(plan, task_status=task_status)


async def run_plan(
    plan: WorkerPlan, *, task_status: trio.TaskStatus[Supervisor] = trio.TASK_STATUS_IGNORED
) -> SupervisorReport:
    """:func:`supervise` for a checked plan (what the command line calls)."""
    _, resolved = check_serve_config(list(plan.binds), dict(plan.options), "supervise()")
    listeners = await open_listeners(resolved)
    # Each descriptor goes to the workers under the flag of the spec it was
    # opened for (a spec may open several: systemd, a name with two addresses).
    role_of = dict(zip(map(id, resolved), plan.roles or ("bind",) * len(resolved), strict=True))
    roles = [role_of[id(listener.bind)] for listener in listeners]
    try:
        with unwrap_single():  # WorkerStartError itself, not in a group
            async with trio.open_nursery() as nursery:
                supervisor = Supervisor(plan, listeners, nursery, roles)
                await supervisor._start_all()
                if plan.stats_file is not None:
                    stats_file = plan.stats_file
                    await nursery.start(  # written once before we report ready
                        periodic_json, stats_file, supervisor.snapshot, plan.stats_interval
                    )
                task_status.started(supervisor)
                report = await supervisor.wait_stopped()
                nursery.cancel_scope.cancel()  # restarts still waiting, the stats file
            if plan.stats_file is not None:  # the last snapshot: stopped, final sums
                try:
                    await trio.to_thread.run_sync(
                        write_json, plan.stats_file, supervisor.snapshot()
                    )
                except (OSError, ValueError, TypeError) as exc:  # never stops the exit
                    log.warning("cannot write the stats file %s: %s", plan.stats_file, exc)
            return report
    finally:
        close_listeners(listeners)
