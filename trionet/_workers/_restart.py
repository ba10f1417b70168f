"""When to restart a worker that died: at once, unless it keeps dying young.

Sans-I/O: :class:`RestartPolicy` is told when a worker started and when it
died, and says how long to wait before the next one.  A worker that dies
after running at least ``quick`` seconds is restarted at once and clears
the slot's record; ``burst`` quick deaths in a row start an exponential
back-off (``first_delay`` doubling up to ``max_delay``), so a handler that
crashes on import does not spin a core, while a one-off crash -- a
``kill -9``, an out-of-memory kill -- costs no delay at all.
"""

from __future__ import annotations

from typing import Final

import attrs

__all__ = ["RestartPolicy"]

QUICK: Final = 5.0


@attrs.define
class RestartPolicy:
    """One slot's restart record (one per worker slot).

    Example::

        >>> policy = RestartPolicy()
        >>> [policy.died(lifetime=0.1) for _ in range(5)]
        [0.0, 0.0, 0.5, 1.0, 2.0]
        >>> policy.died(lifetime=60.0)
        0.0
    """

    #: A worker that lived less than this many seconds died *young*.
    quick: float = QUICK
    #: Young deaths in a row restarted at once before the back-off starts.
    burst: int = 2
    first_delay: float = 0.5
    max_delay: float = 30.0
    #: Young deaths in a row so far.
    young_deaths: int = 0

    def died(self, lifetime: float) -> float:
        """Record a death after ``lifetime`` seconds; return the delay before the restart."""
        if lifetime >= self.quick:
            self.young_deaths = 0
            return 0.0
        self.young_deaths += 1
        excess = self.young_deaths - self.burst
        if excess <= 0:
            return 0.0
        return float(min(self.max_delay, self.first_delay * 2 ** (excess - 1)))
