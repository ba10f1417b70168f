"""What escaped a handler: counted, logged, re-raised -- by its cause (see ``_classify``).

The connection task hands every exception its handler let out to
:meth:`HandlerErrors.report`.  Cancellation (and ``KeyboardInterrupt``,
``SystemExit``, ``GeneratorExit``) always propagates; the rest is
classified: the peer's doing is counted as a reset (DEBUG) or a protocol
error (INFO; DEBUG for a clean hang-up between two messages); anything else
is a handler bug -- counted in ``stats.handler_errors`` and logged once at
ERROR with its traceback (rate-limited under a storm), or, with
``handler_errors="raise"``, raised out of ``serve``.
"""

from __future__ import annotations

import logging

import trio

from .._ratelimit import RateLimiter
from .._stats import Counters
from .._stream import Connection
from ._classify import classify, clean_hang_up

log = logging.getLogger("trionet.server")

__all__ = ["NOT_ERRORS", "HandlerErrors"]

#: Never a handler's error: always propagates.
NOT_ERRORS = (trio.Cancelled, KeyboardInterrupt, SystemExit, GeneratorExit)


class HandlerErrors:
    """Counts and logs what escapes handlers (internal; one per server)."""

    __slots__ = ("counters", "error_log", "raise_errors")

    def __init__(self, counters: Counters, error_log: RateLimiter, *, raise_errors: bool) -> None:
        self.counters = counters
        self.error_log = error_log
        self.raise_errors = raise_errors

    def report(self, conn: Connection, exc: BaseException) -> None:
        """Classify what escaped ``conn``'s handler; re-raise cancellation.

        With ``handler_errors="raise"``, a handler bug is re-raised too.
        """
        rest: BaseException | None = exc
        cancelled: BaseException | None = None
        if isinstance(exc, BaseExceptionGroup):
            cancelled, rest = exc.split(NOT_ERRORS)
        if rest is not None:
            self._failed(conn, rest)
        if cancelled is not None:
            raise cancelled from None

    def _failed(self, conn: Connection, exc: BaseException) -> None:
        blame = classify(conn, exc)
        if blame == "reset":
            self.counters.resets += 1
            log.debug("connection #%d from %s: reset by peer (%s)", conn.id, conn.peer, exc)
            return
        if blame == "protocol":
            self.counters.protocol_errors += 1
            log.log(
                logging.DEBUG if clean_hang_up(exc) else logging.INFO,
                "connection #%d from %s: peer broke the protocol: %s",
                conn.id,
                conn.peer,
                exc,
            )
            return
        self.counters.handler_errors += 1
        if self.raise_errors:
            raise exc
        self.error_log.log(
            log,
            logging.ERROR,
            "handler failed on connection #%d from %s",
            conn.id,
            conn.peer,
            exc_info=exc,
        )
