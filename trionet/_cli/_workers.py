"""``trionet serve --workers N``: a supervisor, its signals, and its combined report.

Everything is checked first, as for one process (the flags, the TLS files,
the handler -- imported once here, so that a typo is exit 2 and not N
workers dying young).  Then ``trio.run`` opens the binds, starts the
workers, and prints ``listening on ...`` once every worker is accepting,
then ``workers: N ready (pids ...)``.  SIGHUP reloads; SIGINT or SIGTERM
drains, a second one cuts the grace; at exit it prints the summed
``shutdown:`` and ``stats:`` lines of every worker, and a ``workers:``
line (started, crashed, restarted, reloads).  The workers log to the same
stderr.

Before the supervisor is ready, SIGINT unwinds the start-up (the workers
started so far are stopped and reaped) and the exit is 130; SIGTERM keeps
its default action, as for one process -- the supervisor ends (-15), and
its workers, reading end-of-file on their channels, drain and exit.  A
SIGHUP then is held until the workers are ready, and reloads them.

The inherited descriptors the supervisor adopted (``--bind fd:N``,
``systemd``) are closed once it has its duplicates, as ``trionet serve``
does: else they would keep the socket listening after the drain, and a
late connect would be reset at exit instead of refused.
"""

from __future__ import annotations

import argparse
import signal

import attrs
import trio

from .._exceptions import InvalidAddress, ListenError
from .._unwrap import unwrap_single
from ._binds import close_inherited
from ._errors import EXIT_ERROR, EXIT_OK, CLIError
from ._serve import say
from ._signals import DroppedInterrupts, SignalLatch

__all__ = ["run_workers"]


async def _supervise(plan: object, interrupts: DroppedInterrupts, hangups: SignalLatch) -> None:
    from .._workers._plan import WorkerPlan
    from .._workers._supervise import run_plan
    from .._workers._supervisor import Supervisor

    assert isinstance(plan, WorkerPlan)
    interrupts.check()
    with unwrap_single():  # a start-up error is one line, not a group
        async with trio.open_nursery() as nursery:
            supervisor: Supervisor = await nursery.start(run_plan, plan)
            close_inherited(list(plan.binds))
            latch = SignalLatch()

            async def signals(*, task_status: trio.TaskStatus[None]) -> None:
                # As for one process (see _signals.SignalLatch): the latch
                # goes beneath handle_signals' handlers with no checkpoint in
                # between, and once they are removed SIGINT and SIGTERM are
                # ignored -- a signal in that instant cannot spoil the exit.
                latch.install()
                try:
                    await supervisor.handle_signals(task_status=task_status)
                finally:
                    latch.ignore()

            await nursery.start(signals)
            hangups.replay()  # a SIGHUP during the start: a reload now
            await trio.lowlevel.checkpoint()  # a Ctrl-C just before: no "listening on"
            for address in supervisor.addresses:
                say(f"listening on {address}")
            pids = " ".join(str(pid) for pid in supervisor.pids)
            say(f"workers: {supervisor.workers} ready (pids {pids})")
            latch.replay()
            report = await supervisor.wait_stopped()
    say(
        f"shutdown: workers={report.workers} finished={report.finished} "
        f"cancelled={report.cancelled} in_stages={report.in_stages} swept={report.swept} "
        f"elapsed={report.elapsed:.3f}s"
    )
    say("stats: " + " ".join(f"{k}={v}" for k, v in attrs.asdict(report.stats).items()))
    say(
        f"workers: started={report.started} crashed={report.crashed} "
        f"restarted={report.restarted} reloads={report.reloads_done}/{report.reloads} "
        f"unreported={report.unreported}"
    )


def run_workers(args: argparse.Namespace, interrupts: DroppedInterrupts) -> int:
    """Run ``trionet serve ... --workers N`` (see the module notes)."""
    from .._exceptions import WorkerStartError
    from .._workers._plan import plan_from_args

    plan = plan_from_args(args)
    # SIGHUP's default action would end the supervisor: held from here (the
    # command ignored it while it loaded) and replayed as a reload once the
    # workers are ready -- a "systemctl reload" as the service starts.
    hangups = SignalLatch((signal.SIGHUP,))
    hangups.install()
    try:
        trio.run(
            _supervise,
            plan,
            interrupts,
            hangups,
            restrict_keyboard_interrupt_to_checkpoints=True,
        )
    except ListenError as exc:
        raise CLIError(exc.strerror or str(exc)) from None
    except InvalidAddress as exc:
        raise CLIError(str(exc)) from None
    except WorkerStartError as exc:
        raise CLIError(str(exc), EXIT_ERROR) from None
    return EXIT_OK
