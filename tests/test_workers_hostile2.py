"""Worker processes under attack, second round: a crash restart racing a shutdown.

``Supervisor._restart`` spawns its worker in a thread (``open_process``:
fork and exec in ``subprocess.Popen``), which a cancellation cannot stop.
A shutdown that begins meanwhile cancels the restart's scope and closes the
supervisor's listening sockets; what the restart does with the worker it
gets back, and with the descriptor numbers it hands it, is what these
tests attack.  The spawn is wrapped so that the window is sure: the wrapper
shields the wait and the real spawn, as the thread itself is shielded.

Both tests reproduced a defect (as strict xfails) until spawns were
shielded and serialised with the shutdown (``Supervisor._spawn_lock``): a
restart's worker missed the drain order, or got closed descriptor numbers.
"""

from __future__ import annotations

import functools
import os
import signal

import pytest
import trio
import trio.testing

import trionet
from trionet._workers import _supervisor
from trionet._workers._process import Worker
from trionet._workers._process import spawn as real_spawn

LOCAL = "tcp://127.0.0.1:0"
#: Bound of every test's run.
TIMEOUT = 20.0


async def _restart_racing_shutdown(
    monkeypatch: pytest.MonkeyPatch, *, workers: int, fork_first: bool
) -> tuple[trionet.SupervisorReport, list[Worker], float]:
    """Kill worker 1; start the shutdown while its restart's spawn is in flight.

    ``fork_first``: the restart's process is started before the shutdown
    begins and its spawn returns after (fork and exec done, the thread's
    result not yet delivered); else the fork comes after the shutdown began.
    Returns (the shutdown's report, the restart's workers, seconds the
    shutdown took).
    """
    gate = trio.Event()
    in_flight = trio.Event()
    restarted: list[Worker] = []

    async def spawn(slot: int, command: object, fds: list[int]) -> Worker:
        with trio.CancelScope(shield=True):  # as the thread running Popen is
            if fork_first:
                worker = await real_spawn(slot, command, fds)
                restarted.append(worker)
                in_flight.set()
                await gate.wait()
            else:
                in_flight.set()
                await gate.wait()
                worker = await real_spawn(slot, command, fds)
                restarted.append(worker)
        return worker

    reports: list[trionet.SupervisorReport] = []
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor: trionet.Supervisor = await nursery.start(
                functools.partial(trionet.supervise, "echo", LOCAL, workers=workers, grace=1)
            )
            monkeypatch.setattr(_supervisor, "spawn", spawn)
            monkeypatch.setattr(_supervisor, "KILL_AFTER", 2.0)  # a short test either way
            os.kill(supervisor.pids[0], signal.SIGKILL)
            await in_flight.wait()

            done = trio.Event()

            async def shutdown() -> None:
                reports.append(await supervisor.shutdown())
                done.set()

            started = trio.current_time()
            nursery.start_soon(shutdown)
            await trio.testing.wait_all_tasks_blocked()
            assert supervisor.stopping
            gate.set()
            await done.wait()
            took = trio.current_time() - started
    return reports[0], restarted, took


async def test_a_restart_racing_a_shutdown_drains_its_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report, restarted, took = await _restart_racing_shutdown(
        monkeypatch, workers=2, fork_first=True
    )
    (late,) = restarted
    assert late.returncode == 0, f"the restart's worker {late.returncode=}"
    assert report.unreported == 1  # the SIGKILLed victim only
    assert took < 1.5, f"the shutdown took {took:.1f}s (grace 1, kill after 2)"


async def test_a_restart_racing_a_shutdown_hands_on_no_closed_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _report, restarted, _took = await _restart_racing_shutdown(
        monkeypatch, workers=1, fork_first=False
    )
    assert all(worker.returncode == 0 for worker in restarted), [
        worker.returncode for worker in restarted
    ]
