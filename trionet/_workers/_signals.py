"""The supervisor's signals: SIGHUP reloads, SIGINT/SIGTERM drain, a second one cuts.

Handlers of our own (not ``trio.open_signal_receiver``, which at exit
re-raises what its iterator has not taken with the previous handlers back:
a SIGHUP arriving as the supervisor stops would then kill it by its default
action).  Every signal that reaches the handler is ours; one that comes
after the stop is dropped.  The same reasoning, and the same machinery
(``delivered_signals``), as ``drain_on_signals``.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Final

import trio

from .._server._drain import delivered_signals

if TYPE_CHECKING:
    from ._report import SupervisorReport
    from ._supervisor import Supervisor

log = logging.getLogger("trionet.workers")

__all__ = ["SUPERVISOR_SIGNALS", "handle_signals"]

#: What a supervisor handles: SIGHUP reloads, SIGINT and SIGTERM drain.
SUPERVISOR_SIGNALS: Final = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)


async def handle_signals(
    supervisor: Supervisor, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> SupervisorReport:
    """See :meth:`Supervisor.handle_signals`."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("Supervisor.handle_signals must run in the main thread")

    async def on_signals(nursery: trio.Nursery, receive: trio.MemoryReceiveChannel[int]) -> None:
        stops = 0
        async for signum in receive:
            if signum == signal.SIGHUP:
                log.info("received SIGHUP: reloading the workers")
                nursery.start_soon(supervisor.reload)
                continue
            stops += 1
            name = signal.Signals(signum).name
            if stops == 1:
                log.info("received %s: draining the workers", name)
                nursery.start_soon(supervisor.shutdown)
            else:
                log.warning("received %s again: cutting the grace", name)
                nursery.start_soon(supervisor.shutdown, 0.0)

    with delivered_signals(SUPERVISOR_SIGNALS, "the supervisor") as receive:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_signals, nursery, receive)
            task_status.started()
            await supervisor.wait_stopped()
            nursery.cancel_scope.cancel()
    return await supervisor.wait_stopped()
