"""A schedule point one coroutine frame and one call cheaper than Trio's public one.

Why
---
Trio's strict rule -- every stream operation is a checkpoint -- means an
echo server makes two schedule points per message even when the kernel had
everything ready: one after ``recv`` and one after ``send``.  A schedule point
is a round trip through the run loop, and the suspension and the resumption
each travel through every coroutine frame between the task and the trap.
``trio.lowlevel.cancel_shielded_checkpoint`` is an ``async def`` around a
generator that yields Trio's ``CancelShieldedCheckpoint`` message, then
unwraps the outcome sent back: two frames and a call on top of ours.
Yielding that message from a generator of our own leaves one frame, on every
message: 7 % more echoed messages per second with 100 connections
(81.6k -> 87.5k msg/s, three alternating runs each, measured).

The private name
----------------
The message object lives in ``trio._core._traps``.  trionet touches private
Trio names in two places only: here, and ``_sockopts.raw_socket_of``, which
recognises Trio's own socket class to reach the kernel socket inside it (and
treats anything else as a custom-factory socket).  Here it is done
defensively.
At import it drives Trio's own ``cancel_shielded_checkpoint()`` by hand (no
run is needed for that) and uses the fast path only if that coroutine yields
exactly the object it imported, so a Trio release that changes the protocol
makes trionet fall back to the public function instead of breaking.  The
conformance
tests (``trio.testing.check_half_closeable_stream`` and ``assert_checkpoints``)
run against whichever was chosen.
"""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from trio.lowlevel import cancel_shielded_checkpoint

__all__ = ["FAST", "schedule_point"]


def _probe(public: Callable[[], Awaitable[None]]) -> object:
    """The message ``public()`` yields to the run loop (None if it yields nothing)."""
    coro = public()
    send = getattr(coro, "send", None)
    close = getattr(coro, "close", None)
    try:
        return send(None) if send is not None else None
    except Exception:
        return None
    finally:
        if close is not None:
            close()


def select(message: object, public: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """Our own trap if ``public`` yields exactly ``message``, else ``public`` itself."""
    if message is None or _probe(public) is not message:
        return public

    @types.coroutine
    def schedule_point() -> Generator[Any, Any, None]:
        # A schedule point, not a cancel point (like cancel_shielded_checkpoint).
        # For this message the run loop always sends back Value(None) -- the
        # task is rescheduled at once and, shielded, nothing can be delivered
        # in between -- so the outcome is not unwrapped (that would cost two
        # more Python calls per schedule point).
        yield message

    return schedule_point


_MESSAGE: object = None
try:
    from trio._core import _traps

    _MESSAGE = _traps.CancelShieldedCheckpoint
except (ImportError, AttributeError):  # pragma: no cover - a Trio without it: the public path
    pass

#: ``await schedule_point()``: what ``trio.lowlevel.cancel_shielded_checkpoint`` does.
schedule_point: Callable[[], Awaitable[None]] = select(_MESSAGE, cancel_shielded_checkpoint)
#: True when the fast trap is in use (False: Trio's public function).
FAST: bool = schedule_point is not cancel_shielded_checkpoint
