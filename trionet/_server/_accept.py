"""The accept loop: one task per listening socket.

What ``accept()`` can do to a server, and what we do about it
=============================================================

*Per-connection failures* (``ECONNABORTED``, ``EPROTO``, and on Linux the
network errors that ``accept()`` passes through from the pending socket:
``ENETDOWN``, ``EHOSTUNREACH``, ``EPERM`` from a firewall, ...) concern one
client that already went away.  They are counted in ``stats.accept_errors``
and ignored -- exactly like Trio's ``serve_listeners`` literature review.

*Resource exhaustion* (``EMFILE``, ``ENFILE``, ``ENOBUFS``, ``ENOMEM``) is
the dangerous one.  The pending connection stays in the kernel queue, so the
listener stays readable and a naive loop spins at 100 % CPU writing a log
line per spin.  We:

* log once per *burst*: a warning at the first error and one "recovered"
  line when the burst ends, counting the rest in ``stats.accept_errors``.
  A burst ends when ``accept()`` reports the kernel queue *empty*
  (``EAGAIN``), not at the first success: at the descriptor limit every
  closing connection frees one slot, so success and failure alternate for
  as long as the flood lasts, and "first success ends the burst" would log
  two lines per closed connection.  Bursts themselves are rate-limited too
  (a few per minute per listener), so a server flapping at its limit for
  hours writes a handful of lines, not thousands;
* back off with a jittered, doubling delay (10 ms up to a cap of 0.25 s);
  a successful accept resets the delay; and
* retry at once when one of the server's own connections closes (the usual
  way a descriptor frees up), so recovery comes within moments of relief --
  and at most 0.25 s after descriptors free up any other way (a failed
  accept() four times a second costs nothing; a client waiting for it does).

*Anything else* (``EBADF``, ``EINVAL``: the listener itself is broken) is a
real error and propagates, translated.

Batching
--------
With a real kernel socket we wait for readability once, then call the raw
non-blocking ``accept()`` up to ``_BATCH`` times until ``EAGAIN``: one
scheduler pass admits a whole burst of connections.  Before each accept we
check ``max_connections``; at the limit we stop accepting and wait for a
slot, so the kernel backlog holds the queue (backpressure, not rejection).
Sockets from a custom Trio socket factory have no descriptor; they go
through ``await sock.accept()`` one at a time (the generic path).

The drain sweep
---------------
When a drain begins, :func:`sweep` accepts what is already queued, in one
synchronous loop, before the listener closes.  Per-connection errors are
skipped there too; resource exhaustion ends the sweep (see its docstring),
and the loop is bounded by the queue's capacity.  A listener without a
descriptor is swept through its own ``accept_nowait()`` -- the hook a custom
socket factory implements (see :func:`sweep`); one without it is not swept.

Randomness
----------
The back-off jitter draws from :func:`trionet._virtual.uniform`: the
installed virtual network's seeded RNG, if any, so a scenario replays.
"""

from __future__ import annotations

import errno
import logging
from typing import TYPE_CHECKING, Any, Protocol

import trio
from trio.lowlevel import wait_readable

from .. import _virtual
from .._exceptions import translate_listen_error
from .._ratelimit import RateLimiter
from .._stream._sockopts import raw_socket_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from .._stats import Counters
    from ._listeners import Listener

log = logging.getLogger("trionet.accept")


class AcceptTarget(Protocol):
    """What an accept loop needs from the server it feeds (``ConnectionTable``)."""

    counters: Counters
    sweep_log: RateLimiter

    def has_capacity(self) -> bool: ...

    async def wait_for_capacity(self) -> None: ...

    def admit(self, sock: Any, addr: Any, listener: Listener, *, swept: bool) -> bool: ...

    async def wait_descriptor_freed(self, timeout: float) -> None: ...


_BATCH = 64
#: The largest backlog ``listen()`` is given (see _listeners._backlog).
_MAX_BACKLOG = 0xFFFF
_SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"
_BACKOFF_FIRST = 0.01
_BACKOFF_CAP = 0.25
# At most this many bursts logged per listener per _BURST_LOG_PERIOD seconds.
_BURST_LOG_LIMIT = 3
_BURST_LOG_PERIOD = 60.0

_RESOURCE_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("EMFILE", "ENFILE", "ENOBUFS", "ENOMEM")
    if hasattr(errno, name)
)
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "ECONNRESET",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ETIMEDOUT",
        "EINTR",
    )
    if hasattr(errno, name)
)


class _Storm:
    """Resource-exhaustion bursts on one listener: back-off state and their log lines."""

    __slots__ = ("_limiter", "count", "delay", "listener", "logged", "started")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        #: Errors in the current burst (0: no burst in progress).
        self.count = 0
        self.started = 0.0
        self.delay = _BACKOFF_FIRST
        #: Whether the current burst's start was logged (then so is its end).
        self.logged = False
        self._limiter = RateLimiter(burst=_BURST_LOG_LIMIT, period=_BURST_LOG_PERIOD)

    def error(self, exc: OSError) -> float:
        """Count a resource error; returns how long to back off."""
        if self.count == 0:
            self.started = trio.current_time()
            self.logged = self._limiter.log(
                log,
                logging.WARNING,
                "accept() on %s failed: %s; backing off (further errors in this "
                "burst are counted in stats.accept_errors, not logged{note})",
                self.listener.address,
                exc,
                note="; {} earlier burst(s) not logged",
            )
        self.count += 1
        delay = self.delay * _virtual.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, _BACKOFF_CAP)
        return delay

    def accepted(self) -> None:
        """An accept succeeded: descriptors were available, so back off briefly next time."""
        self.delay = _BACKOFF_FIRST

    def recovered(self) -> None:
        """The kernel queue is empty again: the burst is over."""
        if self.logged:
            log.warning(
                "accept() on %s recovered after %d failure(s) in %.2f s",
                self.listener.address,
                self.count,
                trio.current_time() - self.started,
            )
        self.count = 0
        self.logged = False
        self.delay = _BACKOFF_FIRST


async def accept_loop(target: AcceptTarget, listener: Listener) -> None:
    """Accept connections on ``listener`` until cancelled, handing each to ``target``."""
    raw = raw_socket_of(listener.sock)
    storm = _Storm(listener)
    counters = target.counters
    while True:
        await target.wait_for_capacity()
        # A drain cancels this task and closes the listener; never touch a
        # closed descriptor (it may be about to be reused).
        await trio.lowlevel.checkpoint_if_cancelled()
        if listener.closed:
            return
        if raw is None:
            # Generic path: no descriptor, so no way to see EAGAIN; a success
            # is the best sign of recovery we get.
            try:
                sock, addr = await listener.sock.accept()
            except OSError as exc:
                if listener.closed:  # closed by a drain while we were being woken
                    return
                delay = _classify(exc, listener, storm, counters)
                if delay:
                    await target.wait_descriptor_freed(delay)
                continue
            if storm.count:
                storm.recovered()
            target.admit(sock, addr, listener, swept=False)
            continue
        await wait_readable(raw)
        if listener.closed:  # a drain closed it after we were woken, before we ran
            return
        for _ in range(_BATCH):
            if not target.has_capacity():
                break
            try:
                s, addr = raw.accept()
            except BlockingIOError:
                if storm.count:
                    storm.recovered()
                break
            except OSError as exc:
                delay = _classify(exc, listener, storm, counters)
                if delay:
                    await target.wait_descriptor_freed(delay)
                    break
                continue
            if storm.count:
                storm.accepted()
            target.admit(s, addr, listener, swept=False)


def _classify(exc: OSError, listener: Listener, storm: _Storm, counters: Counters) -> float:
    """Returns a back-off delay (resource errors), 0 (ignore), or raises."""
    if exc.errno in _RESOURCE_ERRNOS:
        counters.accept_errors += 1
        return storm.error(exc)
    if exc.errno in _TRANSIENT_ERRNOS:
        counters.accept_errors += 1
        log.debug("accept() on %s: ignoring %s", listener.address, exc)
        return 0.0
    raise translate_listen_error(exc, listener.address) from exc


def sweep(target: AcceptTarget, listener: Listener) -> int:
    """Accept, without waiting, everything already queued on ``listener``.

    Called synchronously when a drain begins, just before the listener is
    closed.  Returns how many connections were handed to the server.

    * ``EAGAIN``: the queue is empty -- done.
    * A per-connection error (``ECONNABORTED``, ...): that client gave up
      while queued; counted in ``stats.accept_errors``, and the sweep goes on
      (stopping would reset everyone queued behind it).
    * Descriptor exhaustion (``EMFILE``, ...) or anything else: counted, and
      logged as a WARNING (rate-limited per server); the sweep stops, and the
      connections still queued are reset when the listener closes.  Waiting
      for descriptors is not an option here: the listener would have to stay
      open, accepting new clients, for as long as the exhaustion lasts.

    The number of ``accept()`` calls is bounded by the queue's capacity
    (:func:`sweep_limit`), so clients that keep connecting while we sweep
    cannot keep ``shutdown()`` in this synchronous loop.

    **The hook for custom socket factories.**  A listening socket without a
    descriptor (``raw_socket_of`` is None: made by a custom Trio socket
    factory, e.g. an in-memory network) cannot be accepted from without
    waiting through Trio's ``SocketType`` API, and the sweep must not wait.
    Such a socket may offer ``accept_nowait()``: a synchronous,
    non-blocking ``accept()`` returning ``(socket, address)`` as
    ``await sock.accept()`` does, or raising ``BlockingIOError`` when its
    queue is empty; any other ``OSError`` is treated as the kernel's (by
    ``errno``, as above).  A socket without ``accept_nowait`` is not swept:
    whatever it holds queued is dropped when the listener closes.
    """
    if listener.closed:
        return 0
    raw = raw_socket_of(listener.sock)
    accept: Callable[[], tuple[Any, Any]] | None
    if raw is not None:
        accept = raw.accept
    else:
        accept = getattr(listener.sock, "accept_nowait", None)
        if accept is None:
            return 0
    counters = target.counters
    n = 0
    for _ in range(sweep_limit(listener)):
        try:
            s, addr = accept()
        except BlockingIOError:
            break
        except OSError as exc:
            counters.accept_errors += 1
            if exc.errno in _TRANSIENT_ERRNOS:
                log.debug("sweep of %s: ignoring %s", listener.address, exc)
                continue
            target.sweep_log.log(
                log,
                logging.WARNING,
                "drain: sweeping the queue of %s stopped after %d connection(s): %s; "
                "clients still queued are reset when the listener closes",
                listener.address,
                n,
                exc,
                note=" ({} similar line(s) not logged)",
            )
            break
        if target.admit(s, addr, listener, swept=True):
            n += 1
    return n


def sweep_limit(listener: Listener) -> int:
    """Most ``accept()`` calls one sweep of ``listener`` makes.

    A Linux listen queue holds at most ``backlog + 1`` connections, where
    the kernel clamps ``backlog`` to ``net.core.somaxconn``.  Anything beyond
    that arrived *during* the sweep -- the residual race, not the queue we
    promised to serve.
    """
    backlog = listener.backlog if listener.backlog is not None else _MAX_BACKLOG
    return min(backlog, _somaxconn()) + 1


def _somaxconn() -> int:
    # Read at each drain (it can change at run time, and differs between
    # network namespaces); procfs is memory, not disk.
    try:
        with open(_SOMAXCONN_PATH, "rb") as f:
            return max(0, int(f.read().strip()))
    except (OSError, ValueError):
        return _MAX_BACKLOG
