"""``connect``: open a client :class:`~trionet.Connection`, inside the caller's cancel scopes.

Design notes
============

``connect`` is a loop of *rounds* (the first try plus ``retries``), each of
which resolves the target and then *races* connection attempts to the
resolved addresses, all under one deadline::

    connect(target, timeout=..., retries=...)
      validate every argument                      -- raises before any I/O
      move_on_at(start + timeout)                  -- the whole operation
        round 0: resolve -> race(attempt, attempt, ...)
        sleep(full-jitter back-off)
        round 1: resolve -> race(...)
        ...
      winner -> Connection(sock, peer=..., local=...)
      timeout expired -> ConnectTimeout; every round failed -> ConnectError

Why not :func:`trio.open_tcp_stream`?
-------------------------------------
Its happy-eyeballs loop is the model for ours, but it cannot do three things
we need: bind a local *port* (it binds ``(local_address, 0)`` only), report
each attempt (it keeps bare ``OSError``s and raises a plain ``OSError`` from an
``ExceptionGroup``), and run strictly one attempt at a time (it silently turns
``happy_eyeballs_delay=None`` into 0.25 s).  So we own the loop.  Each round's
addresses come from ``_resolve``.

Happy eyeballs (RFC 8305)
-------------------------
*Ordering* (section 4) needs no I/O: ``interleave_families`` (in ``_plan``)
interleaves the address families, so that a broken family costs one attempt.

*Staggering* (section 5): attempt ``i+1`` starts when attempt ``i`` fails or
when ``happy_eyeballs_delay`` has passed since it started, whichever comes
first.  Earlier attempts keep running: a blackholed address (SYNs dropped, so
``connect`` would hang for a minute or more) costs ``happy_eyeballs_delay``,
not the kernel's SYN timeout.  ``happy_eyeballs_delay=None`` waits for each
attempt to *fail* before starting the next (``socket.create_connection``
style); ``0`` starts them all at once, in order.

The first attempt to connect wins: it cancels the race's nursery, and every
other attempt -- cancelled mid-``connect`` or finishing in the same tick --
closes its own socket.  Every socket is closed on every path except the
winner's, including when an enclosing scope cancels us.

Local binding
-------------
With ``local_address`` each attempt's socket is bound before ``connect``, and
only remote addresses of the local address's family are tried.  With port 0
we set ``IP_BIND_ADDRESS_NO_PORT`` (Linux) so the kernel picks the port at
``connect`` time, knowing the full 4-tuple, instead of reserving a port no
other connection may share (see the long comment in Trio's
``_highlevel_open_tcp_stream.py``).  With an explicit port we set
``SO_REUSEADDR`` so a previous connection from that port lingering in
``TIME_WAIT`` does not block the bind.

Timeouts, retries and cancellation
----------------------------------
``timeout`` is one deadline over resolution, every attempt, every back-off
sleep and every retry: a ``trio.move_on_at`` scope around the whole loop.
When *that* scope fires we raise :class:`~trionet.ConnectTimeout`; attempts
still pending are recorded as ``"timed out"``.  A cancellation from an
*enclosing* scope is not ours to interpret: ``trio.Cancelled`` passes through
untouched (never converted, never retried), after every socket is closed.

Retries back off exponentially with *full jitter* (``backoff_delay``, in
``_plan``).

Only failures that waiting can change are retried.  A round is retried when
at least one of its failures is of that kind:

* a failed ``connect`` -- refused, unreachable, reset, a Unix socket path
  that does not exist yet: the server may come up;
* a temporary lookup failure (``EAI_AGAIN``) and other lookup errors except
  the two below;
* ``EADDRINUSE`` from ``bind`` (an explicit local port still taken by a
  connection that is closing).

A round whose every failure is one of these is *not* retried, because the
next round would fail the same way, only later:

* ``bind`` failing with ``EADDRNOTAVAIL`` (the local IP is not this
  machine's), ``EAFNOSUPPORT``, ``EACCES`` or ``EINVAL``, and ``socket()``
  failing the same way (e.g. no IPv6 in this kernel);
* a lookup that says the name does not exist (``EAI_NONAME``) or failed for
  good (``EAI_FAIL``);
* a name with no address of ``local_address``'s family.

Bad arguments and malformed specs fail at once, before any I/O, and so never
reach the retry loop.  A bind failure is recorded as
``"bind to 192.0.2.1 failed: Cannot assign requested address"`` (same errno,
the original ``OSError`` as ``__cause__``), so it is not mistaken for a
failure of the remote end.

Errors
------
Attempt failures are ``OSError``s caught inside the attempt tasks and
recorded as :class:`~trionet.ConnectAttempt` records; our nursery never
sees them, so the :class:`~trionet.ConnectError` we raise afterwards is bare.
Anything else escaping an attempt (a bug, a custom socket factory raising
``TypeError``) is unwrapped from the nursery's group by ``unwrap_single``.
"""

from __future__ import annotations

import errno
import logging
import math
import socket as _stdlib_socket
import ssl
from contextlib import suppress
from typing import Final

import trio

from .. import _virtual
from .._address import Address, TCPAddress, UnixAddress, address_from_sockaddr
from .._exceptions import connect_timeout_error, handshake_error, translate_connect_error
from .._proxy._info import ProxyInfo
from .._stream import (
    DEFAULT_CLOSE_LINGER,
    DEFAULT_SCHEDULE_BUDGET,
    Connection,
    ConnOptions,
)
from .._stream._hooks import socket_connection, tls_client_connection
from .._stream._sockopts import configure_tcp_socket
from .._unwrap import unwrap_single
from ._attempts import Run
from ._finish import finish
from ._plan import (
    DEFAULT_BACKOFF,
    DEFAULT_HAPPY_EYEBALLS_DELAY,
    DEFAULT_MAX_BACKOFF,
    AttemptObserver,
    ConnectPlan,
    backoff_delay,
    make_plan,
)
from ._resolve import Target, resolve

log = logging.getLogger("trionet.client")

# errnos of ``socket()``/``bind()`` that no retry can change (see the notes
# above); EADDRINUSE, EMFILE, ENOBUFS and the like may clear up.
_PERMANENT_SETUP_ERRNOS: Final = frozenset(
    {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EACCES, errno.EINVAL, errno.EPROTONOSUPPORT}
)
__all__ = ["connect", "connect_with_plan"]

_AF_UNIX = getattr(_stdlib_socket, "AF_UNIX", None)


def _prepare(
    sock: trio.socket.SocketType, plan: ConnectPlan, family: int
) -> tuple[str, int] | None:
    """Set socket options before connecting; the local sockaddr to bind, if any."""
    if family != _AF_UNIX:
        configure_tcp_socket(sock, nodelay=True, keepalive=plan.keepalive)
    if plan.local is None:
        return None
    ip, port, _family = plan.local
    if port == 0:
        with suppress(OSError, AttributeError):
            sock.setsockopt(trio.socket.IPPROTO_IP, trio.socket.IP_BIND_ADDRESS_NO_PORT, 1)
    else:
        with suppress(OSError):
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
    return (ip, port)


def _setup_failure(exc: OSError, local: tuple[str, int] | None) -> tuple[OSError, bool]:
    """The error to record for a failed ``socket()``/``bind()``, and whether to retry."""
    retryable = exc.errno not in _PERMANENT_SETUP_ERRNOS
    if local is None:  # socket() itself failed
        return exc, retryable
    ip, port = local
    where = ip if port == 0 else str(TCPAddress(ip, port)).removeprefix("tcp://")
    err = OSError(exc.errno, f"bind to {where} failed: {exc.strerror or exc}")
    err.__cause__ = exc
    return err, retryable


async def _race(
    run: Run, targets: list[Target], round_: int
) -> tuple[trio.socket.SocketType, Target] | None:
    """Happy eyeballs over ``targets``; the winning socket, or None if all failed."""
    plan = run.plan
    delay = plan.happy_eyeballs_delay
    winner: tuple[trio.socket.SocketType, Target] | None = None

    async def attempt(target: Target, failed: trio.Event, nursery: trio.Nursery) -> None:
        nonlocal winner
        family, type_, proto, sockaddr, display = target
        record = run.begin(display, round_)
        sock: trio.socket.SocketType | None = None
        local: tuple[str, int] | None = None
        connecting = False
        try:
            sock = trio.socket.socket(family, type_, proto)
            local = _prepare(sock, plan, family)
            if local is not None:
                await sock.bind(local)
            connecting = True
            await sock.connect(sockaddr)
        except OSError as exc:
            if sock is not None:
                sock.close()
            if connecting:
                run.end(record, "failed", exc)
            else:
                error, retryable = _setup_failure(exc, local)
                run.end(record, "failed", error, retryable=retryable)
            failed.set()
            return
        except BaseException:
            if sock is not None:
                sock.close()
            run.end_interrupted(record, winner_found=winner is not None)
            raise
        if winner is None:
            winner = (sock, target)
            run.end(record, "connected", None)
            nursery.cancel_scope.cancel()
        else:  # two attempts finished in the same tick; the first one won
            sock.close()
            run.end(record, "abandoned", None)

    try:
        with unwrap_single():
            async with trio.open_nursery() as nursery:
                for i, target in enumerate(targets):
                    failed = trio.Event()
                    nursery.start_soon(attempt, target, failed, nursery)
                    if i + 1 == len(targets):
                        break
                    if delay is None:
                        await failed.wait()
                    else:
                        with trio.move_on_after(delay):
                            await failed.wait()
    except BaseException:
        if winner is not None:
            winner[0].close()
        raise
    return winner


def _wrap(sock: trio.socket.SocketType, target: Target, plan: ConnectPlan) -> Connection:
    family, _type, _proto, _sockaddr, display = target
    try:
        peer = address_from_sockaddr(family, sock.getpeername())
    except OSError:
        peer = display
    try:
        local: Address | None = address_from_sockaddr(family, sock.getsockname())
    except OSError:
        local = None
    options = ConnOptions.of(DEFAULT_SCHEDULE_BUDGET, plan.close_linger)
    if plan.tls is not None:
        return tls_client_connection(sock, peer, local, options, plan.tls, plan.server_hostname)
    return socket_connection(sock, peer, local, options)


async def connect_with_plan(plan: ConnectPlan) -> Connection:
    """Run :func:`connect` with already-validated arguments (used by the pool)."""
    if isinstance(plan.target, UnixAddress):  # a virtual network simulates TCP only
        _virtual.refuse("trionet.connect", str(plan.target), "a Unix socket")
    run = Run(plan)
    deadline = math.inf if plan.timeout is None else run.t0 + plan.timeout
    won: tuple[trio.socket.SocketType, Target] | None = None
    conn: Connection | None = None
    with trio.move_on_at(deadline) as scope:
        run.deadline_scope = scope
        for round_ in range(plan.retries + 1):
            if round_:
                pause = backoff_delay(round_ - 1, plan.backoff, plan.max_backoff)
                log.info(
                    "cannot connect to %s (%s); retry %d of %d in %.3f s",
                    plan.target,
                    run.last_error,
                    round_,
                    plan.retries,
                    pause,
                )
                await trio.sleep(pause)
            run.retryable = False
            targets = await resolve(run, round_)
            if targets is not None:
                won = await _race(run, targets, round_)
                if won is not None:
                    try:
                        candidate = _wrap(*won, plan)
                    except BaseException:
                        won[0].close()
                        raise
                    if await finish(run, plan, candidate, won[1][4], round_):
                        conn = candidate
                        break
            if not run.retryable:
                if round_ < plan.retries:
                    log.info(
                        "cannot connect to %s (%s); not retrying: that cannot change",
                        plan.target,
                        run.last_error,
                    )
                break
    if conn is not None:
        log.debug("connected to %s from %s", conn.peer, conn.local)
        return conn
    attempts = run.records()
    if scope.cancelled_caught:
        assert plan.timeout is not None
        raise connect_timeout_error(plan.target, plan.timeout, attempts) from None
    exc = run.last_error
    assert exc is not None
    if exc is run.handshake_error:
        # TCP connected; TLS did not: say so, not "all 2 attempts failed".
        raise handshake_error(exc, plan.target, attempts) from exc
    raise translate_connect_error(exc, plan.target, attempts) from exc


async def connect(
    target: str | tuple[str, int] | Address,
    *,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = DEFAULT_BACKOFF,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    local_address: str | tuple[str, int] | TCPAddress | None = None,
    happy_eyeballs_delay: float | None = DEFAULT_HAPPY_EYEBALLS_DELAY,
    keepalive: bool | float = False,
    close_linger: float = DEFAULT_CLOSE_LINGER,
    tls: ssl.SSLContext | bool | None = None,
    server_hostname: str | None = None,
    on_attempt: AttemptObserver | None = None,
    proxy_header: ProxyInfo | bytes | None = None,
) -> Connection:
    """Connect to ``target`` and return a :class:`~trionet.Connection`.

    The connection is the same type servers hand to handlers: peer and local
    addresses, byte counters, ``receive_line``/``receive_exactly``/
    ``receive_until``, half-close.  TCP connections have ``TCP_NODELAY`` set.
    The caller owns it: use ``async with conn:`` or ``await conn.aclose()``.

    For a host name with several addresses, attempts are staggered "happy
    eyeballs" style (RFC 8305): address families are interleaved, and the
    next attempt starts when the previous one fails or after
    ``happy_eyeballs_delay``, whichever is first.  The first to connect wins;
    the others are cancelled and closed.

    Args:
        target: ``"tcp://HOST:PORT"``, ``"unix:PATH"``, ``"unix:@NAME"``, a
            ``(host, port)`` tuple, or a :class:`~trionet.TCPAddress` /
            :class:`~trionet.UnixAddress` (e.g. ``server.addresses[0]``).  A
            wildcard host (``0.0.0.0``, ``::``, ``*``) reaches this machine.
        timeout: seconds for the whole operation -- resolution, every attempt,
            every back-off and retry -- > 0, or None (or ``math.inf``) for no
            limit.
        retries: how many more rounds to try after a failed one.  Only
            failures that waiting can change are retried: a failed connect
            (refused, unreachable, a missing Unix socket), a temporary lookup
            failure, ``EADDRINUSE`` from ``bind``.  A name that does not
            exist (``EAI_NONAME``/``EAI_FAIL``), a ``local_address`` this
            machine cannot bind (``EADDRNOTAVAIL``, ``EACCES``, ...) or whose
            family the name has no address of fail at once.
        backoff: base delay in seconds between rounds (finite, >= 0); the
            delay before retry ``n`` (from 0) is uniform in
            ``[0, min(max_backoff, backoff * 2**n))``.
        max_backoff: cap on one back-off delay, in seconds (finite, >= ``backoff``).
        local_address: an IP string (``"127.0.0.3"``) or an ``(ip, port)``
            tuple to bind before connecting; only remote addresses of the
            same family are tried.  ``conn.local`` always reports the real
            local address, whether bound or chosen by the kernel.
        happy_eyeballs_delay: seconds before starting the next attempt while
            one is still pending (0 starts them all at once); None (or
            ``math.inf``) means strictly one attempt at a time.
        keepalive: turn on TCP keepalive; a number also sets the idle time
            (seconds, 1 to 32767) before the first probe.
        close_linger: the most seconds :meth:`Connection.aclose` lingers for
            the peer's EOF when closing at once could discard bytes we sent
            (see :meth:`Connection.aclose`); 0 closes at once; finite.
        tls: speak TLS: ``True`` for ``ssl.create_default_context()`` (the
            system's trusted CAs, host name checked), or an
            ``ssl.SSLContext`` of your own (made for clients).  The
            handshake completes before ``connect`` returns, inside
            ``timeout``; ``conn.tls`` then says what was negotiated.
        server_hostname: the name to send (SNI) and check the server's
            certificate against; default: the target's host.
        on_attempt: a synchronous callable, called with each
            :class:`~trionet.ConnectAttempt` as it finishes (for logging or a
            ``-v`` flag); exceptions it raises are logged and ignored.
        proxy_header: a PROXY protocol header to send first -- before the
            TLS handshake, if any -- for an upstream behind which trionet
            acts as a proxy: a :class:`~trionet.ProxyInfo` (its ``version``
            says v1 or v2) or one whole encoded header (``bytes``).  Not
            counted in ``bytes_sent``.

    Returns:
        The connected :class:`~trionet.Connection`.

    A TLS certificate the context refuses raises :class:`~trionet.ConnectError`
    (chained from the ``ssl.SSLCertVerificationError``) at once: no retry can
    change it.  A TLS connection is strict about its end: a server that
    closes without ``close_notify`` makes the next receive raise
    ``trio.BrokenResourceError`` (a truncated stream), where a plain one
    would read ``b""``.

    Raises:
        ConnectTimeout: ``timeout`` expired (also a ``TimeoutError``).
        ConnectError: every attempt of every round failed; the message names
            the target and ``.attempts`` lists each attempt's address, error,
            round and outcome (also an ``OSError``).
        InvalidAddress: a malformed target or ``local_address``, or a Unix
            target on a virtual network (before any I/O).
        TypeError, ValueError: a bad option: the wrong type, or a bad value
            (negative, NaN, infinite where it must be finite), raised when
            the call is awaited, before its first checkpoint -- no socket,
            no name lookup (the rules are ``trionet._validate``'s).

    Cancellation by an enclosing scope is never turned into an error nor
    retried: a bare ``trio.Cancelled`` propagates (never inside an exception
    group), and no socket is left open.
    Errors are raised bare, never inside an ``ExceptionGroup``.

    Example::

        conn = await trionet.connect("tcp://127.0.0.1:7007", timeout=5.0, retries=3)
        async with conn:
            await conn.send_all(b"ping\\n")
            reply = await conn.receive_line()
            print(reply, conn.local, conn.peer)
    """
    plan = make_plan(
        target,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        local_address=local_address,
        happy_eyeballs_delay=happy_eyeballs_delay,
        keepalive=keepalive,
        close_linger=close_linger,
        tls=tls,
        server_hostname=server_hostname,
        on_attempt=on_attempt,
        proxy_header=proxy_header,
    )
    return await connect_with_plan(plan)
