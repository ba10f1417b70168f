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

* log once per *burst* (the first error, and a "recovered" line at the end),
  counting the rest;
* back off with a jittered, doubling delay capped at 0.5 s; and
* retry at once when one of the server's own connections closes (the usual
  way a descriptor frees up), so recovery comes within moments of relief.

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
"""

from __future__ import annotations

import errno
import logging
import random
import socket as _stdlib_socket
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import wait_readable

from ._connection import raw_socket_of
from ._exceptions import translate_listen_error

if TYPE_CHECKING:
    from ._listeners import Listener
    from ._server import Server

log = logging.getLogger("trionet.accept")

_BATCH = 64
_SWEEP_MAX = 1_000_000
_BACKOFF_FIRST = 0.01
_BACKOFF_CAP = 0.5

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
    """Logs an accept-error burst once, and its end once."""

    __slots__ = ("count", "delay", "listener", "started")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.count = 0
        self.started = 0.0
        self.delay = _BACKOFF_FIRST

    def error(self, exc: OSError) -> float:
        if self.count == 0:
            self.started = trio.current_time()
            log.warning(
                "accept() on %s failed: %s; backing off (errors in this burst are "
                "counted in stats.accept_errors, not logged)",
                self.listener.address,
                exc,
            )
        self.count += 1
        delay = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, _BACKOFF_CAP)
        return delay

    def recovered(self) -> None:
        if self.count:
            log.warning(
                "accept() on %s recovered after %d failures in %.2f s",
                self.listener.address,
                self.count,
                trio.current_time() - self.started,
            )
            self.count = 0
            self.delay = _BACKOFF_FIRST


async def accept_loop(server: Server, listener: Listener) -> None:
    """Accept connections on ``listener`` until cancelled, handing each to ``server``."""
    raw = raw_socket_of(listener.sock)
    storm = _Storm(listener)
    counters = server._counters
    while True:
        await server._wait_for_capacity()
        # A drain cancels this task and closes the listener; never touch a
        # closed descriptor (it may be about to be reused).
        await trio.lowlevel.checkpoint_if_cancelled()
        if listener.closed:
            return
        if raw is None:
            try:
                sock, addr = await listener.sock.accept()
            except OSError as exc:
                delay = _classify(exc, listener, storm, counters)
                if delay:
                    await server._wait_slot_freed(delay)
                continue
            storm.recovered()
            server._admit_trio_socket(sock, addr, listener)
            continue
        await wait_readable(raw)
        for _ in range(_BATCH):
            if not server._has_capacity():
                break
            try:
                s, addr = raw.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                delay = _classify(exc, listener, storm, counters)
                if delay:
                    await server._wait_slot_freed(delay)
                    break
                continue
            if storm.count:
                storm.recovered()
            server._admit_raw(s, addr, listener, swept=False)


def _classify(exc: OSError, listener: Listener, storm: _Storm, counters: Any) -> float:
    """Returns a back-off delay (resource errors), 0 (ignore), or raises."""
    if exc.errno in _RESOURCE_ERRNOS:
        counters.accept_errors += 1
        return storm.error(exc)
    if exc.errno in _TRANSIENT_ERRNOS:
        counters.accept_errors += 1
        log.debug("accept() on %s: ignoring %s", listener.address, exc)
        return 0.0
    raise translate_listen_error(exc, listener.address) from exc


def sweep(server: Server, listener: Listener) -> int:
    """Accept, without waiting, everything already queued on ``listener``.

    Called synchronously when a drain begins, just before the listener is
    closed.  Returns how many connections were handed to the server.
    """
    raw = raw_socket_of(listener.sock)
    if raw is None or listener.closed:
        return 0
    n = 0
    for _ in range(_SWEEP_MAX):
        try:
            s, addr = raw.accept()
        except OSError as exc:
            if not isinstance(exc, BlockingIOError):
                log.debug("sweep of %s stopped: %s", listener.address, exc)
            break
        if server._admit_raw(s, addr, listener, swept=True):
            n += 1
    return n


def reset_close(sock: _stdlib_socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer learns at once, we keep no TIME_WAIT."""
    try:
        if sock.family != getattr(_stdlib_socket, "AF_UNIX", None):
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
    except OSError:
        pass
    sock.close()
