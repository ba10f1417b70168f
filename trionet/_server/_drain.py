"""The drain protocol's report, and wiring a drain to POSIX signals.

A graceful drain (``Server.shutdown``) proceeds in four steps:

1. **Stop accepting.**  For each listener, accept everything the kernel has
   already completed (those clients finished the handshake and believe they
   are connected -- they are served, and counted in ``swept``), then close the
   listener; new connects are refused from then on (``ECONNREFUSED`` for
   TCP; a Unix socket's file is removed, so ``ENOENT``).  Both happen in one
   synchronous step, with no checkpoint in between.

   *Residual race*: a handshake that completes after the final non-blocking
   ``accept()`` returned ``EAGAIN`` but before ``close()`` is reset by the
   kernel, and so are handshakes still half-done (in the SYN queue) at that
   moment.  The window is the few microseconds between those two system
   calls; the sockets API offers no way to close a listening socket
   atomically with draining its queue, and a client connecting at the very
   moment a server stops cannot be told apart from one connecting just
   after.  Clients should retry a reset connect, as they must anyway.
   (Listeners from a custom Trio socket factory, which have no descriptor,
   are not swept: their queued connections are reset at close.)

   The sweep is bounded: at most the listen queue's capacity (the smaller
   of the listener's backlog and the kernel's ``somaxconn``, plus one)
   ``accept()`` calls per listener, so a connect flood cannot keep
   ``shutdown()`` in a synchronous loop.  A per-connection ``accept()``
   error (``ECONNABORTED``: that client gave up while queued) is counted
   in ``stats.accept_errors`` and the sweep goes on.  *Descriptor
   exhaustion* (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``) ends the
   sweep: it is logged as a WARNING (rate-limited) and counted, and the
   connections still queued are reset when the listener closes -- the same
   fate as the residual race above, for a reason the server cannot fix
   within a drain (waiting for descriptors would mean keeping the listener
   open, and so accepting new clients indefinitely).

   Swept connections are admitted like any other (access policy, per-host
   limit).  Beyond ``max_connections`` they are accepted but wait for a
   free slot before their handler starts, so the limit still holds.
2. **Tell handlers.**  ``conn.draining`` (a :class:`trio.Event`) is set on
   every connection, and ``async for chunk in conn`` ends once nothing more
   is waiting -- data already in the kernel is still delivered first -- so
   keep-alive loops finish by themselves.  A connection that has not
   received a single byte yet (typically just swept, its client's first
   request still in flight) is given ``_FIRST_REQUEST_ALLOWANCE`` (2 s,
   bounded by the grace period) before its ``async for`` treats it as idle.
3. **Wait** up to ``grace`` seconds for handlers to finish.  The deadline is
   kept by the server's own task, not the caller's: cancelling the task that
   called ``shutdown`` does not stop the drain, and a second ``shutdown``
   with a shorter grace moves the deadline forward.
4. **Cancel** the rest and close their connections.  ``shutdown`` returns
   within ``grace`` plus the time the cancelled handlers take to unwind
   (milliseconds, for handlers that do not shield themselves).
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._validate import check_count, check_integer, check_seconds, public_call, validator

if TYPE_CHECKING:
    from ._server import Server

log = logging.getLogger("trionet.drain")

__all__ = ["ShutdownReport", "drain_on_signals"]


_count = validator(check_count, minimum=0)
_seconds = validator(check_seconds)


def check_grace(grace: object, call: str = "Server.shutdown()") -> float:
    """The ``grace`` argument of ``shutdown``/``drain_on_signals``: seconds >= 0.

    ``math.inf`` waits for the handlers without limit (a limit you may lift:
    see ``trionet._validate``); None, "the server's ``shutdown_grace``", is
    the caller's to resolve first.

    Raises:
        TypeError: not a number (bools, strings and None refused).
        ValueError: negative or NaN.
    """
    with public_call(call):
        seconds = check_seconds("grace", grace)
    assert seconds is not None
    return seconds


def check_signals(signals: object, call: str = "drain_on_signals()") -> tuple[int, ...]:
    """The ``signals`` argument of ``drain_on_signals``: catchable signal numbers.

    Raises:
        TypeError: not an iterable of ints (bools and finite floats refused).
        ValueError: empty, NaN or infinity, or a number that is not a signal
            this process can catch.
    """
    with public_call(call):
        if not isinstance(signals, Iterable):
            raise TypeError(f"signals must be an iterable of signal numbers, not {signals!r}")
        try:
            nums: tuple[object, ...] = tuple(signals)
        except TypeError:
            raise TypeError(
                f"signals must be an iterable of signal numbers, not {signals!r}"
            ) from None
        if not nums:
            raise ValueError("signals must name at least one signal")
        valid = signal.valid_signals()
        checked: list[int] = []
        for item in nums:
            num = check_integer("signals", item, expected="signal numbers (ints)")
            assert num is not None
            if num not in valid or num in _UNCATCHABLE:
                raise ValueError(f"signals: {int(num)} is not a signal this process can catch")
            checked.append(num)
    return tuple(checked)


@attrs.frozen
class ShutdownReport:
    """What a graceful drain did.

    Every connection still open when the drain began, or swept during it,
    ends up in exactly one place: ``finished``, ``cancelled``, ``in_stages``
    (closed before its handler ever ran), or -- closed by the idle timeout
    or as a slow sender while the drain was running -- ``stats.idle_closed``
    or ``stats.slow_closed`` (in none of the fields).  So ``finished +
    cancelled + in_stages`` can be smaller than the number of connections the
    drain started with, never larger.
    """

    #: Handlers that returned (or raised) by themselves during the drain,
    #: before the grace period ran out -- swept connections included.
    finished: int = attrs.field(validator=_count)
    #: Handlers cancelled when the grace period ran out (or the server was
    #: cancelled), plus swept connections whose handler never started
    #: because no ``max_connections`` slot freed up in time.
    cancelled: int = attrs.field(validator=_count)
    #: Connections found queued in the kernel when the drain began, and accepted.
    swept: int = attrs.field(validator=_count)
    #: Connections still in their stages (a TLS handshake, ...) when the drain
    #: began, or swept into them during it: closed at once -- they never
    #: reached a handler, so no request of theirs was taken.
    in_stages: int = attrs.field(default=0, validator=_count, kw_only=True)
    #: Seconds from the start of the drain to the server having stopped.
    elapsed: float = attrs.field(default=0.0, validator=_seconds)


_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_UNCATCHABLE = frozenset(
    getattr(signal, name) for name in ("SIGKILL", "SIGSTOP") if hasattr(signal, name)
)


async def drain_on_signals(
    server: Server,
    signals: Sequence[int] = _DEFAULT_SIGNALS,
    grace: float | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> ShutdownReport:
    """Drain ``server`` gracefully when one of ``signals`` arrives; return the report.

    The first signal starts ``server.shutdown(grace)``; a second one during
    the drain cuts the grace period short (the remaining handlers are
    cancelled at once).  If the server stops some other way first (someone
    else called ``shutdown``, or it was cancelled), this returns that stop's
    report instead of waiting forever -- so it can sit in the same nursery as
    the server.  While it runs, the signals do not raise
    ``KeyboardInterrupt`` or kill the process -- nor later: a signal that
    arrives while it runs is its own, so one that comes as the drain ends
    (the second of two quick Ctrl-C) is dropped, with a debug log line, and
    never passed on to the previous handler once this returns.

    Must run in the main thread (a Python rule for signal handlers).  Reports
    readiness through ``task_status`` once the handlers are installed.

    Args:
        server: the server to drain.
        signals: which signals trigger the drain (default SIGINT and SIGTERM).
        grace: seconds handlers get to finish; None = the server's
            ``shutdown_grace``; ``math.inf`` waits without limit.
        task_status: reports (``None``) once the signal handlers are installed.

    Returns:
        The :class:`ShutdownReport` of the drain.

    Raises:
        TypeError: ``signals`` or ``grace`` of the wrong type.
        ValueError: no signals, one this process cannot catch, or a bad
            ``grace`` (negative, NaN).
        RuntimeError: not called from the main thread.

    The arguments are checked when the call is awaited, before its first
    checkpoint: nothing is installed, and the server is not touched.

    Example::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(trionet.serve, handler, "tcp://127.0.0.1:7007")
            report = await trionet.drain_on_signals(server, grace=5.0)
            print(report)
    """
    signals = check_signals(signals)
    if grace is not None:
        check_grace(grace, "drain_on_signals()")
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("drain_on_signals must run in the main thread (signal handlers do)")

    # Not trio.open_signal_receiver: at exit it re-raises the signals its
    # iterator has not yielded yet -- and any still on their way to it --
    # with the previous handlers back in place.  A second Ctrl-C that lands
    # as the drain ends would then raise KeyboardInterrupt (SIGINT inside
    # trio.run) or kill the process (SIGTERM's default action) after the
    # drain it was meant to hurry has finished.  Every signal that reaches
    # our handler is ours; once the drain is over it has nothing left to do.
    async def on_signals(nursery: trio.Nursery, receive: trio.MemoryReceiveChannel[int]) -> None:
        first = True
        async for signum in receive:
            name = _signal_name(signum)
            if first:
                first = False
                log.info("received %s: draining", name)
                nursery.start_soon(server.shutdown, grace)
            else:
                log.warning("received %s again: cancelling the remaining handlers", name)
                nursery.start_soon(server.shutdown, 0)

    with delivered_signals(signals, "the drain") as receive:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(on_signals, nursery, receive)
            task_status.started()
            await server.wait_stopped()
            nursery.cancel_scope.cancel()
    return await server.wait_stopped()


@contextlib.contextmanager
def delivered_signals(
    signals: Sequence[int], what: str
) -> Iterator[trio.MemoryReceiveChannel[int]]:
    """Handlers of our own for ``signals``; each signal that arrives, in a channel.

    The previous handlers are put back on exit, and a signal that arrives
    after it -- ``what`` has finished -- is dropped with a debug line (see
    ``drain_on_signals`` for why not ``trio.open_signal_receiver``).  Used
    by :func:`drain_on_signals` and the worker supervisor.
    """
    token = trio.lowlevel.current_trio_token()
    send, receive = trio.open_memory_channel[int](math.inf)

    def deliver(signum: int) -> None:  # in Trio's thread, soon after the handler ran
        try:
            send.send_nowait(signum)
        except trio.ClosedResourceError:
            log.debug("received %s as %s finished: nothing left to do", _signal_name(signum), what)

    def handler(signum: int, frame: FrameType | None) -> None:
        token.run_sync_soon(deliver, signum)

    with _signal_handlers(signals, handler), send, receive:
        yield receive


@contextlib.contextmanager
def _signal_handlers(
    signals: Sequence[int], handler: Callable[[int, FrameType | None], None]
) -> Iterator[None]:
    """Install ``handler`` for ``signals``; restore the previous handlers on exit."""
    previous: dict[int, Any] = {}
    try:
        for signum in signals:
            if signum not in previous:
                previous[signum] = signal.signal(signum, handler)
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
