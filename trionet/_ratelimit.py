"""A tiny token bucket for log lines, so an error storm writes a handful of lines."""

from __future__ import annotations

import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allow ``burst`` events per ``period`` seconds; count the rest.

    ``allow()`` returns True when the caller may log; ``take_suppressed()``
    returns (and resets) how many were refused since the last allowed one, so
    the next line can say "... and N more".
    """

    __slots__ = ("_allowance", "_burst", "_last", "_period", "_suppressed")

    def __init__(self, burst: int = 10, period: float = 10.0) -> None:
        self._burst = burst
        self._period = period
        self._allowance = float(burst)
        self._last = time.monotonic()
        self._suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self._allowance = min(
            self._burst, self._allowance + (now - self._last) * self._burst / self._period
        )
        self._last = now
        if self._allowance >= 1.0:
            self._allowance -= 1.0
            return True
        self._suppressed += 1
        return False

    def take_suppressed(self) -> int:
        n, self._suppressed = self._suppressed, 0
        return n
