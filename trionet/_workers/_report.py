"""What a supervisor reports: every worker's stats and drain reports, added up.

Each worker sends its :class:`~trionet.ServerStats` and its drain's
:class:`~trionet.ShutdownReport` in its ``exit`` message (see ``_channel``);
:class:`Tally` adds them up as workers exit -- replaced ones included --
and :class:`SupervisorReport` is the supervisor's life in one record.  A
worker killed before it could report (``kill -9``, a crash) is counted in
``unreported``: its connections are in no sum.
"""

from __future__ import annotations

from typing import Any

import attrs

from .._stats import ServerStats

__all__ = ["SupervisorReport", "Tally"]

_DRAIN_FIELDS = ("finished", "cancelled", "in_stages", "swept")


@attrs.frozen
class SupervisorReport:
    """What a supervisor did over its life; the stats add up every worker that reported them."""

    #: Worker processes (``--workers``).
    workers: int
    #: Worker processes started, replacements and restarts included.
    started: int
    #: Workers that exited unasked (crashed, killed).
    crashed: int
    #: Restarts after those exits.
    restarted: int
    #: Reloads asked for, and those that replaced every worker.
    reloads: int
    #: Reloads that replaced every worker (the others kept the old ones).
    reloads_done: int
    #: Every reporting worker's stats, summed (a killed worker's are lost:
    #: see ``unreported``).
    stats: ServerStats
    #: Workers that exited without reporting their stats.
    unreported: int
    #: Handlers that finished by themselves in the workers' drains, summed
    #: (reloads' drains included; see :class:`~trionet.ShutdownReport`).
    finished: int
    #: Handlers cancelled when a drain's grace ran out, summed.
    cancelled: int
    #: Connections closed in their stages by a drain, summed.
    in_stages: int
    #: Connections found queued when a drain began, and served, summed.
    swept: int
    #: Seconds from the start of the final shutdown to the last worker's exit.
    elapsed: float


class Tally:
    """The sums of the ``exit`` messages received so far (internal)."""

    def __init__(self) -> None:
        self._stats: dict[str, int] = {}
        self._drains: dict[str, int] = dict.fromkeys(_DRAIN_FIELDS, 0)

    def add(self, final: dict[str, Any] | None) -> bool:
        """Add one worker's ``exit`` message; False if it had none (it did not report)."""
        stats = final.get("stats") if final else None
        if not isinstance(stats, dict):
            return False
        for key, value in stats.items():
            if isinstance(value, int) and not isinstance(value, bool):
                self._stats[key] = self._stats.get(key, 0) + value
        shutdown = final.get("shutdown") if final else None
        if isinstance(shutdown, dict):
            for key in _DRAIN_FIELDS:
                value = shutdown.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    self._drains[key] += value
        return True

    def stats(self) -> dict[str, int]:
        """The summed stats of the workers that have exited and reported."""
        return dict(self._stats)

    def report(self, **life: Any) -> SupervisorReport:
        """The :class:`SupervisorReport`: these sums and the supervisor's own counts."""
        fields = attrs.fields_dict(ServerStats)
        stats = ServerStats(**{k: v for k, v in self._stats.items() if k in fields})
        return SupervisorReport(stats=stats, **self._drains, **life)
