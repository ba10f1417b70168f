"""Worker processes: a supervisor shares its listening sockets with N ``trionet serve`` workers.

One concept per module::

    _channel     the supervisor <-> worker messages (JSON lines; sans-I/O decoder)
    _plan        WorkerPlan: the serve flags, checked, split supervisor / worker
    _restart     RestartPolicy: restart at once, back off on repeated young deaths
    _process     one worker process: spawn with its fds, watch, reap, kill
    _report      SupervisorReport, and the tally of the workers' exit stats
    _supervisor  Supervisor: start, crash restarts, reload, shutdown, its stats snapshot
    _supervise   supervise() and run_plan(): open the binds, run a Supervisor, report
    _signals     SIGHUP reloads, SIGINT/SIGTERM drain, a second one cuts
    _worker      the worker's side: ready, drain on command or EOF, exit stats
"""

from __future__ import annotations

from .._exceptions import WorkerStartError
from ._report import SupervisorReport
from ._supervise import supervise
from ._supervisor import Supervisor

__all__ = ["Supervisor", "SupervisorReport", "WorkerStartError", "supervise"]
