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
``happy_eyeballs_delay=None`` into 0.25 s).  So we own the loop.

Happy eyeballs (RFC 8305)
-------------------------
*Ordering* (section 4): ``getaddrinfo``'s order is kept within each address
family, and the families are interleaved starting with the family of the
first result -- ``v6a, v4a, v6b, v4b, ...`` -- so a broken family costs one
attempt, not all of them.  (Trio only moves the first other-family address to
second place, RFC 6555 style.)  Duplicate addresses are dropped.

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

Retries back off exponentially with *full jitter* -- the delay before retry
``n`` is uniform in ``[0, min(max_backoff, backoff * 2**n))`` -- which spreads
a thundering herd of clients restarting together (see the AWS architecture
blog post "Exponential Backoff And Jitter").

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
import ipaddress
import logging
import math
import random
import re
import socket as _stdlib_socket
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any, Final

import attrs
import trio

from .._address import Address, TCPAddress, UnixAddress, address_from_sockaddr, parse_address
from .._exceptions import (
    ConnectAttempt,
    InvalidAddress,
    connect_timeout_error,
    translate_connect_error,
)
from .._stream import DEFAULT_CLOSE_LINGER, Connection, SocketConnection
from .._stream._sockopts import configure_tcp_socket
from .._unwrap import unwrap_single
from .._validate import check_count, check_keepalive, check_seconds, public_call

log = logging.getLogger("trionet.client")

# errnos of ``socket()``/``bind()`` that no retry can change (see the notes
# above); EADDRINUSE, EMFILE, ENOBUFS and the like may clear up.
_PERMANENT_SETUP_ERRNOS: Final = frozenset(
    {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT, errno.EACCES, errno.EINVAL, errno.EPROTONOSUPPORT}
)
# ``getaddrinfo`` codes that mean "this name has no address", not "try again".
_PERMANENT_LOOKUP_CODES: Final = frozenset(
    code
    for code in (
        getattr(_stdlib_socket, "EAI_NONAME", None),
        getattr(_stdlib_socket, "EAI_FAIL", None),
    )
    if code is not None
)

__all__ = [
    "DEFAULT_BACKOFF",
    "DEFAULT_HAPPY_EYEBALLS_DELAY",
    "DEFAULT_MAX_BACKOFF",
    "ConnectPlan",
    "backoff_delay",
    "connect",
    "connect_with_plan",
    "interleave_families",
    "make_plan",
]

#: Default ``happy_eyeballs_delay`` (RFC 8305 recommends 250 ms).
DEFAULT_HAPPY_EYEBALLS_DELAY: Final = 0.25
#: Default base delay of the retry back-off, in seconds.
DEFAULT_BACKOFF: Final = 0.1
#: Default cap on one back-off delay, in seconds.
DEFAULT_MAX_BACKOFF: Final = 5.0

_AF_UNIX = getattr(_stdlib_socket, "AF_UNIX", None)
_INET_FAMILIES = (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6)
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_WILDCARD_HOSTS = ("", "*")

#: Called with each :class:`ConnectAttempt` as it finishes.
AttemptObserver = Callable[[ConnectAttempt], object]

# One resolved address to try: (family, type, proto, sockaddr, display address).
_Target = tuple[int, int, int, Any, Address]


################################################################
# Argument validation -- everything is checked before any I/O.
################################################################


def _check_host(spec: object, host: str) -> None:
    """Reject a host that is neither an IP literal nor a well-formed DNS name."""
    if host in _WILDCARD_HOSTS:
        return
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        name = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidAddress(spec, f"{host!r} is not a valid host name") from None
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise InvalidAddress(spec, f"{host!r} is not a valid host name")


def _parse_target(target: object) -> Address:
    if isinstance(target, list):  # a JSON-ish ["host", port] is a common slip
        raise InvalidAddress(target, "use a (host, port) tuple, not a list")
    address = parse_address(target)
    if isinstance(address, TCPAddress):
        if address.port == 0:
            raise InvalidAddress(target, "cannot connect to port 0")
        _check_host(target, address.host)
    return address


def _parse_local(local: object) -> tuple[str, int, int] | None:
    """``local_address`` -> (ip, port, family), or None."""
    if local is None:
        return None
    if isinstance(local, TCPAddress):
        host, port = local.host, local.port
    elif isinstance(local, str):
        host, port = local, 0
    elif isinstance(local, tuple) and len(local) == 2:
        host, port = local
        if not isinstance(host, str):
            raise InvalidAddress(local, "the local IP must be a str")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise InvalidAddress(local, "the local port must be an int in 0-65535")
    else:
        raise InvalidAddress(local, "local_address must be an IP string or an (ip, port) tuple")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidAddress(local, f"{host!r} is not an IP address") from None
    family = _stdlib_socket.AF_INET if ip.version == 4 else _stdlib_socket.AF_INET6
    return (host, port, family)


def _family_of_literal(host: str) -> int | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return _stdlib_socket.AF_INET if ip.version == 4 else _stdlib_socket.AF_INET6


@attrs.frozen
class ConnectPlan:
    """Validated :func:`connect` arguments (internal; shared with the pool)."""

    #: The parsed target.
    target: Address
    #: Seconds for the whole operation, or None.
    timeout: float | None
    #: Extra rounds after the first.
    retries: int
    #: Base back-off delay in seconds.
    backoff: float
    #: Cap on one back-off delay in seconds.
    max_backoff: float
    #: ``(ip, port, family)`` to bind, or None.
    local: tuple[str, int, int] | None
    #: Stagger delay, or None for one attempt at a time.
    happy_eyeballs_delay: float | None
    #: ``SO_KEEPALIVE`` (a number also sets the idle time).
    keepalive: bool | float
    #: Seconds ``aclose()`` may linger for the peer's EOF (see ``Connection.aclose``).
    close_linger: float = DEFAULT_CLOSE_LINGER
    #: Called with each finished attempt.
    on_attempt: AttemptObserver | None = attrs.field(default=None, eq=False)


def make_plan(
    target: object,
    *,
    timeout: float | None = None,
    retries: int = 0,
    backoff: float = DEFAULT_BACKOFF,
    max_backoff: float = DEFAULT_MAX_BACKOFF,
    local_address: str | tuple[str, int] | TCPAddress | None = None,
    happy_eyeballs_delay: float | None = DEFAULT_HAPPY_EYEBALLS_DELAY,
    keepalive: bool | float = False,
    close_linger: float = DEFAULT_CLOSE_LINGER,
    on_attempt: AttemptObserver | None = None,
    call: str = "connect()",
) -> ConnectPlan:
    """Validate :func:`connect`'s arguments into a :class:`ConnectPlan`.

    ``call`` is the public call named in error messages (``connect()``, or
    ``ConnectionPool()`` for the pool's connect options).

    Raises:
        InvalidAddress: a malformed target or ``local_address``, or one whose
            address family cannot match the target.
        TypeError: an argument of the wrong type (or an unknown keyword).
        ValueError: a number out of range.
    """
    with public_call(call):
        return _make_plan(
            target,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            local_address=local_address,
            happy_eyeballs_delay=happy_eyeballs_delay,
            keepalive=keepalive,
            close_linger=close_linger,
            on_attempt=on_attempt,
        )


#: The names :func:`make_plan` takes besides the target (the pool checks them).
CONNECT_OPTIONS: Final = frozenset(
    {
        "timeout",
        "retries",
        "backoff",
        "max_backoff",
        "local_address",
        "happy_eyeballs_delay",
        "keepalive",
        "close_linger",
        "on_attempt",
    }
)


def _make_plan(
    target: object,
    *,
    timeout: object,
    retries: object,
    backoff: object,
    max_backoff: object,
    local_address: object,
    happy_eyeballs_delay: object,
    keepalive: object,
    close_linger: object,
    on_attempt: object,
) -> ConnectPlan:
    address = _parse_target(target)
    timeout_s = check_seconds("timeout", timeout, none=True, zero=False)
    if timeout_s is not None and math.isinf(timeout_s):
        timeout_s = None
    retries_n = check_count("retries", retries, minimum=0)
    assert retries_n is not None
    backoff_s = check_seconds("backoff", backoff, infinite=False)
    max_backoff_s = check_seconds("max_backoff", max_backoff, infinite=False)
    assert backoff_s is not None and max_backoff_s is not None
    if max_backoff_s < backoff_s:
        raise ValueError(f"max_backoff ({max_backoff_s:g}) must be >= backoff ({backoff_s:g})")
    delay = check_seconds("happy_eyeballs_delay", happy_eyeballs_delay, none=True)
    if delay is not None and math.isinf(delay):
        delay = None
    linger = check_seconds("close_linger", close_linger, infinite=False)
    assert linger is not None
    local = _parse_local(local_address)
    if local is not None:
        if isinstance(address, UnixAddress):
            raise InvalidAddress(local_address, "local_address applies only to TCP targets")
        target_family = _family_of_literal(address.host)
        if target_family is not None and target_family != local[2]:
            raise InvalidAddress(
                local_address,
                f"local address {local[0]} and target {address.host} are of different "
                "address families",
            )
    if on_attempt is not None and not callable(on_attempt):
        raise TypeError("on_attempt must be a callable taking a ConnectAttempt")
    return ConnectPlan(
        target=address,
        timeout=timeout_s,
        retries=retries_n,
        backoff=backoff_s,
        max_backoff=max_backoff_s,
        local=local,
        happy_eyeballs_delay=delay,
        keepalive=check_keepalive("keepalive", keepalive),
        close_linger=linger,
        on_attempt=on_attempt,
    )


################################################################
# Pure helpers
################################################################


def backoff_delay(
    retry: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """The full-jitter delay before retry number ``retry`` (0-based).

    Uniform in ``[0, min(cap, base * 2**retry))``; ``rand`` returns a float in
    ``[0, 1)`` (injectable for tests).

    Example::

        >>> backoff_delay(3, 0.1, 5.0, rand=lambda: 0.5)
        0.4
    """
    ceiling = min(cap, base * 2.0 ** min(retry, 64))
    return ceiling * rand()


def interleave_families(entries: Sequence[Any]) -> list[Any]:
    """Order ``getaddrinfo`` results per RFC 8305 section 4.

    Each family keeps its own order; families alternate, starting with the
    family of the first entry.  Exact duplicates (same family and sockaddr)
    are dropped.

    Example::

        >>> v6, v4 = 10, 2
        >>> [e[4][0] for e in interleave_families([
        ...     (v6, 1, 6, "", ("::1", 80, 0, 0)), (v6, 1, 6, "", ("::2", 80, 0, 0)),
        ...     (v4, 1, 6, "", ("127.0.0.1", 80)), (v4, 1, 6, "", ("127.0.0.2", 80))])]
        ['::1', '127.0.0.1', '::2', '127.0.0.2']
    """
    queues: dict[int, list[Any]] = {}
    seen: set[tuple[int, Any]] = set()
    for entry in entries:
        key = (entry[0], entry[4])
        if key in seen:
            continue
        seen.add(key)
        queues.setdefault(entry[0], []).append(entry)
    out: list[Any] = []
    lists = list(queues.values())
    for i in range(max((len(q) for q in lists), default=0)):
        for q in lists:
            if i < len(q):
                out.append(q[i])
    return out


################################################################
# The connect loop
################################################################


class _Attempt:
    """A mutable attempt record, frozen into a ConnectAttempt when it ends."""

    __slots__ = ("address", "record", "round", "started")

    def __init__(self, address: Address, round_: int, started: float) -> None:
        self.address = address
        self.round = round_
        self.started = started
        self.record: ConnectAttempt | None = None


class _Run:
    """State of one ``connect`` call: the plan, the clock, the attempts so far."""

    def __init__(self, plan: ConnectPlan) -> None:
        self.plan = plan
        self.t0 = trio.current_time()
        self.attempts: list[_Attempt] = []
        self.last_error: OSError | None = None
        # Did the current round meet a failure that a retry could change?
        self.retryable = False
        # The deadline scope, set once it exists; its cancel_called tells an
        # attempt that it was cut short by *our* timeout.
        self.deadline_scope: trio.CancelScope | None = None

    def begin(self, address: Address, round_: int) -> _Attempt:
        attempt = _Attempt(address, round_, trio.current_time() - self.t0)
        self.attempts.append(attempt)
        return attempt

    def end(
        self,
        attempt: _Attempt,
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

    def end_interrupted(self, attempt: _Attempt, winner_found: bool) -> None:
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


async def _resolve(run: _Run, round_: int) -> list[_Target] | None:
    """The addresses to try this round, or None (failure recorded)."""
    address = run.plan.target
    if isinstance(address, UnixAddress):
        assert _AF_UNIX is not None
        return [(_AF_UNIX, _stdlib_socket.SOCK_STREAM, 0, address.sockaddr, address)]
    host: str | None = None if address.host in _WILDCARD_HOSTS else address.host
    attempt = run.begin(address, round_)
    try:
        entries = await trio.socket.getaddrinfo(host, address.port, type=_stdlib_socket.SOCK_STREAM)
    except OSError as exc:
        permanent = (
            isinstance(exc, _stdlib_socket.gaierror) and exc.errno in _PERMANENT_LOOKUP_CODES
        )
        run.end(attempt, "failed", exc, retryable=not permanent)
        return None
    except BaseException:
        run.end_interrupted(attempt, winner_found=False)
        raise
    entries = [e for e in entries if e[0] in _INET_FAMILIES]
    local = run.plan.local
    if local is not None:
        entries = [e for e in entries if e[0] == local[2]]
    if not entries:
        why = f"{address.host or 'the wildcard host'} has no address"
        if local is not None:
            version = "IPv4" if local[2] == _stdlib_socket.AF_INET else "IPv6"
            why = f"{address.host or 'the wildcard host'} has no {version} address "
            why += f"(to match local_address {local[0]})"
        run.end(attempt, "failed", OSError(errno.EADDRNOTAVAIL, why), retryable=False)
        return None
    # The lookup succeeded: it is not an attempt of its own.
    run.attempts.remove(attempt)
    targets: list[_Target] = []
    for family, type_, proto, _canon, sockaddr in interleave_families(entries):
        targets.append((family, type_, proto, sockaddr, address_from_sockaddr(family, sockaddr)))
    return targets


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
    run: _Run, targets: list[_Target], round_: int
) -> tuple[trio.socket.SocketType, _Target] | None:
    """Happy eyeballs over ``targets``; the winning socket, or None if all failed."""
    plan = run.plan
    delay = plan.happy_eyeballs_delay
    winner: tuple[trio.socket.SocketType, _Target] | None = None

    async def attempt(target: _Target, failed: trio.Event, nursery: trio.Nursery) -> None:
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


def _wrap(sock: trio.socket.SocketType, target: _Target, plan: ConnectPlan) -> Connection:
    family, _type, _proto, _sockaddr, display = target
    try:
        peer = address_from_sockaddr(family, sock.getpeername())
    except OSError:
        peer = display
    try:
        local: Address | None = address_from_sockaddr(family, sock.getsockname())
    except OSError:
        local = None
    return SocketConnection(sock, peer=peer, local=local, close_linger=plan.close_linger)


async def connect_with_plan(plan: ConnectPlan) -> Connection:
    """Run :func:`connect` with already-validated arguments (used by the pool)."""
    run = _Run(plan)
    deadline = math.inf if plan.timeout is None else run.t0 + plan.timeout
    won: tuple[trio.socket.SocketType, _Target] | None = None
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
            targets = await _resolve(run, round_)
            if targets is not None:
                won = await _race(run, targets, round_)
                if won is not None:
                    break
            if not run.retryable:
                if round_ < plan.retries:
                    log.info(
                        "cannot connect to %s (%s); not retrying: that cannot change",
                        plan.target,
                        run.last_error,
                    )
                break
    if won is not None:
        try:
            conn = _wrap(*won, plan)
        except BaseException:
            won[0].close()
            raise
        log.debug("connected to %s from %s", conn.peer, conn.local)
        return conn
    attempts = run.records()
    if scope.cancelled_caught:
        assert plan.timeout is not None
        raise connect_timeout_error(plan.target, plan.timeout, attempts) from None
    exc = run.last_error
    assert exc is not None
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
    on_attempt: AttemptObserver | None = None,
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
            every back-off and retry -- or None for no limit.
        retries: how many more rounds to try after a failed one.  Only
            failures that waiting can change are retried: a failed connect
            (refused, unreachable, a missing Unix socket), a temporary lookup
            failure, ``EADDRINUSE`` from ``bind``.  A name that does not
            exist (``EAI_NONAME``/``EAI_FAIL``), a ``local_address`` this
            machine cannot bind (``EADDRNOTAVAIL``, ``EACCES``, ...) or whose
            family the name has no address of fail at once.
        backoff: base delay in seconds between rounds; the delay before retry
            ``n`` (from 0) is uniform in ``[0, min(max_backoff, backoff * 2**n))``.
        max_backoff: cap on one back-off delay, in seconds.
        local_address: an IP string (``"127.0.0.3"``) or an ``(ip, port)``
            tuple to bind before connecting; only remote addresses of the
            same family are tried.  ``conn.local`` always reports the real
            local address, whether bound or chosen by the kernel.
        happy_eyeballs_delay: seconds before starting the next attempt while
            one is still pending; None means strictly one attempt at a time.
        keepalive: turn on TCP keepalive; a number also sets the idle time
            (seconds, 1 to 32767) before the first probe.
        close_linger: the most seconds :meth:`Connection.aclose` lingers for
            the peer's EOF when closing at once could discard bytes we sent
            (see :meth:`Connection.aclose`); 0 closes at once.
        on_attempt: called with each :class:`~trionet.ConnectAttempt` as it
            finishes (for logging or a ``-v`` flag); exceptions it raises are
            logged and ignored.

    Returns:
        The connected :class:`~trionet.Connection`.

    Raises:
        ConnectTimeout: ``timeout`` expired (also a ``TimeoutError``).
        ConnectError: every attempt of every round failed; the message names
            the target and ``.attempts`` lists each attempt's address, error,
            round and outcome (also an ``OSError``).
        InvalidAddress: a malformed target or ``local_address`` (before any I/O).
        TypeError, ValueError: a bad option (before any I/O).

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
        on_attempt=on_attempt,
    )
    return await connect_with_plan(plan)
