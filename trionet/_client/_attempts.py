"""The record of one :func:`~trionet.connect` call: its clock, its attempts, its outcome so far.

The connect loop (``_connect``) makes a :class:`Run` per call.  Each try --
a lookup that fails, each socket that tries to connect -- is an
:class:`Attempt` from :meth:`Run.begin` until :meth:`Run.end` freezes it
into the public :class:`~trionet.ConnectAttempt`: logged at debug level,
handed to the ``on_attempt`` observer (whose exceptions are logged and
ignored) and listed, in order, in the ``.attempts`` of the
:class:`~trionet.ConnectError` or :class:`~trionet.ConnectTimeout` a failed
call raises.  The run also keeps what the loop decides with: the last
``OSError`` (the error a failed call raises), whether the current round met
a failure that a retry could change, and the deadline scope, whose
``cancel_called`` tells an interrupted attempt that it "timed out" rather
than was "cancelled".
"""

from __future__ import annotations

import logging

import trio

from .._address import Address
from .._exceptions import ConnectAttempt
from ._plan import ConnectPlan

log = logging.getLogger("trionet.client")

__all__ = ["Attempt", "Run"]


class Attempt:
    """A mutable attempt record, frozen into a ConnectAttempt when it ends."""

    __slots__ = ("address", "record", "round", "started")

    def __init__(self, address: Address, round_: int, started: float) -> None:
        self.address = address
        self.round = round_
        self.started = started
        self.record: ConnectAttempt | None = None


class Run:
    """State of one ``connect`` call: the plan, the clock, the attempts so far."""

    def __init__(self, plan: ConnectPlan) -> None:
        self.plan = plan
        self.t0 = trio.current_time()
        self.attempts: list[Attempt] = []
        self.last_error: OSError | None = None
        #: The error of the last failed TLS handshake (of a connected socket).
        self.handshake_error: OSError | None = None
        # Did the current round meet a failure that a retry could change?
        self.retryable = False
        # The deadline scope, set once it exists; its cancel_called tells an
        # attempt that it was cut short by *our* timeout.
        self.deadline_scope: trio.CancelScope | None = None

    def begin(self, address: Address, round_: int) -> Attempt:
        attempt = Attempt(address, round_, trio.current_time() - self.t0)
        self.attempts.append(attempt)
        return attempt

    def end(
        self,
        attempt: Attempt,
        outcome: str,
        error: BaseException | None,
        *,
        retryable: bool = True,
    ) -> None:
        elapsed = trio.current_time() - self.t0 - attempt.started
        attempt.record = ConnectAttempt(
            attempt.address,
            error,
            attempt.round,
            outcome,
            started=attempt.started,
            elapsed=max(0.0, elapsed),
        )
        if isinstance(error, OSError):
            self.last_error = error
            if retryable:
                self.retryable = True
        log.debug("connect attempt %s (round %d): %s", attempt.address, attempt.round, outcome)
        observer = self.plan.on_attempt
        if observer is not None:
            try:
                observer(attempt.record)
            except Exception:
                log.exception("on_attempt callback raised; ignoring it")

    def end_interrupted(self, attempt: Attempt, winner_found: bool) -> None:
        """Record an attempt stopped by a cancellation (ours, the race's, or the caller's)."""
        scope = self.deadline_scope
        if winner_found:
            self.end(attempt, "abandoned", None)
        elif scope is not None and scope.cancel_called:
            self.end(attempt, "timed out", TimeoutError("still pending when the timeout expired"))
        else:
            self.end(attempt, "cancelled", None)

    def records(self) -> list[ConnectAttempt]:
        return [a.record for a in self.attempts if a.record is not None]
