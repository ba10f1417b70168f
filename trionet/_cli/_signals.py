"""SIGINT and SIGTERM from the command's first line to its last: exit 130, or a drain and exit 0.

``DroppedInterrupts`` keeps a Ctrl-C that Python would print and drop;
``SignalLatch`` holds SIGINT and SIGTERM beneath ``drain_on_signals``' own
handlers and ignores them once the drain is over; ``only_interrupts``
recognises a Ctrl-C that comes out of a nursery as an exception group.

Ctrl-C, from start to exit
==========================
*Ready* means: listening, with the drain's signal handlers installed; the
first ``listening on`` line is printed only then.

* **From the first line of** :func:`main` **until ready**, Ctrl-C is exit
  130 and not a word on stdout or stderr, wherever it lands:

  - parsing and checking the arguments, importing the handler module --
    plain ``KeyboardInterrupt``, caught by :func:`main`; one that lands in
    a finalizer or weakref callback (importlib runs one as every import
    ends), where Python would print it as "Exception ignored" and drop it,
    is kept and raised as soon as it can propagate
    (``DroppedInterrupts``);
  - ``trio.run`` starting, listeners opening, the drain's handlers going
    in -- ``trio.run`` runs with ``restrict_keyboard_interrupt_to_checkpoints``,
    so the ``KeyboardInterrupt`` is raised in the main task at a checkpoint,
    never inside Trio or half-way through starting a task; the start-up
    unwinds (listeners closed) and :func:`main` returns 130.  One that
    came just before the drain's handlers is taken at a checkpoint before
    the ``listening on`` lines, so they are never followed by 130.

* **Ready**: the first SIGINT or SIGTERM drains, the second cancels the
  handlers, and any later one is ignored -- also one that arrives after
  the drain, while the report prints, ``trio.run`` returns or the
  interpreter shuts down: from the drain's end to the process's, SIGINT
  and SIGTERM are ignored (``SignalLatch``), so a drained server exits 0.
* SIGTERM before ready keeps its default action (the process ends, -15).
* **Loading**: both entry points (the console script and ``python -m
  trionet``) call :func:`trionet._launch.main`, which imports the command
  line (``trionet._cli``) -- and with it Trio, most of the ~0.2 s start-up -- inside a ``try``: a
  Ctrl-C there is exit 130 too.  That works because ``import trionet``
  itself is cheap (the package loads its parts lazily).
* **Out of reach: before** :func:`trionet._launch.main` **runs** --
  interpreter start-up and importing ``trionet._launch`` (~20 ms).  No code
  of ours runs yet, so a Ctrl-C there is Python's own: a
  ``KeyboardInterrupt`` traceback and death by SIGINT (status -2, 130 in a
  shell), or "Fatal Python error" and status 1 during interpreter
  initialisation.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any, Final

import trio

from .._unwrap import leaves

__all__ = ["DRAIN_SIGNALS", "DroppedInterrupts", "SignalLatch", "only_interrupts"]

#: What ``serve`` drains on (``drain_on_signals``' default, named here
#: because the CLI also handles them before and after it).
DRAIN_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)


class SignalLatch:
    """SIGINT and SIGTERM handling beneath ``drain_on_signals``' own handlers.

    ``drain_on_signals`` puts back whatever handlers it found when it
    returns.  Had it found the usual ones (Trio's KeyboardInterrupt for
    SIGINT, the default action for SIGTERM), a second Ctrl-C arriving just
    after the drain -- while the report prints, ``trio.run`` returns or the
    interpreter shuts down -- would turn a drained server's exit 0 into 130,
    a traceback, or death by signal.  So it finds this latch, a Python-level
    handler that only notes what came, and once it has returned
    :meth:`ignore` makes the signals ignored for the rest of the process
    (``SIG_IGN``, which the interpreter keeps through its own shutdown,
    unlike a Python-level handler).  No signal is ever left to a default
    disposition in between, and none is lost: one that lands in the instant
    between the latch and ``drain_on_signals``' handlers is
    :meth:`replay`-ed to them.
    """

    def __init__(self, signals: tuple[int, ...] = DRAIN_SIGNALS) -> None:
        #: What it holds: SIGINT and SIGTERM; for a supervisor, also SIGHUP
        #: from its start until its handlers are in place.
        self._signals = signals
        self._caught: list[int] = []

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._caught.append(signum)

    def install(self) -> None:
        for signum in self._signals:
            signal.signal(signum, self._note)

    def replay(self) -> None:
        """Raise again what was caught so far (``drain_on_signals`` handles it now)."""
        caught, self._caught = self._caught, []
        for signum in caught:
            signal.raise_signal(signum)

    def ignore(self) -> None:
        for signum in self._signals:
            signal.signal(signum, signal.SIG_IGN)


def only_interrupts(group: BaseExceptionGroup[BaseException]) -> bool:
    """True for a group of KeyboardInterrupt (and the Cancelled it caused) only."""
    found = leaves(group)
    return any(isinstance(e, KeyboardInterrupt) for e in found) and all(
        isinstance(e, (KeyboardInterrupt, trio.Cancelled)) for e in found
    )


class DroppedInterrupts:
    """Keep hold of a KeyboardInterrupt that Python prints as "Exception ignored" and drops.

    Outside ``trio.run`` a Ctrl-C raises KeyboardInterrupt wherever the main
    thread is -- which may be a weakref callback or a ``__del__`` (importlib
    runs one as every import ends, the user's handler module's included).
    An exception cannot propagate from there: Python prints its traceback
    and drops it, and the command would go on as if no Ctrl-C had come.
    While this is entered, such a KeyboardInterrupt is noted instead of
    printed, and :meth:`check` raises it where it propagates: in the first
    step of ``trio.run``'s main task (from then on Trio's SIGINT handler is
    in place, and it never raises where the signal lands) and when the
    command ends.  (Raising the signal again at once would not do: its
    handler would run inside the same callback.)
    """

    def __init__(self) -> None:
        self._dropped = False
        self._previous = sys.unraisablehook

    def _hook(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            self._dropped = True
        else:
            self._previous(unraisable)

    def __enter__(self) -> DroppedInterrupts:
        self._previous = sys.unraisablehook
        sys.unraisablehook = self._hook
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.unraisablehook = self._previous

    def check(self) -> None:
        """Raise KeyboardInterrupt if one was dropped."""
        if self._dropped:
            raise KeyboardInterrupt
