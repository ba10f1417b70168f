"""A tiny token bucket for log lines, so an error storm writes a handful of lines."""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """Allow ``burst`` events per ``period`` seconds; count the rest.

    ``allow()`` returns True when the caller may log; ``take_suppressed()``
    returns (and resets) how many were refused since the last allowed one, so
    the next line can say "... and N more".  ``log()`` does all of that for
    one log line.
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

    def log(
        self,
        logger: logging.Logger,
        level: int,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
        note: str = " ({} similar errors not logged)",
    ) -> bool:
        """Log ``msg % args`` at ``level`` unless over the limit; True if it was logged.

        A refused line is only counted.  The next line logged says how many
        were dropped since the last one: ``note.format(count)`` goes where
        ``msg`` says ``{note}``, or at its end (nothing when none were
        dropped).  The record names the caller, not this helper, as its
        origin.
        """
        if not self.allow():
            return False
        suppressed = self.take_suppressed()
        extra = note.format(suppressed) if suppressed else ""
        if "{note}" in msg:
            msg = msg.replace("{note}", extra)
        else:
            msg += extra
        logger.log(level, msg, *args, exc_info=exc_info, stacklevel=2)
        return True
