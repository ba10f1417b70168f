"""What :func:`~trionet.connect` will do, decided before any I/O: :class:`ConnectPlan`.

``make_plan`` validates every argument of ``connect`` -- and the connect
options of ``ConnectionPool``, which shares the plan -- into a frozen
:class:`ConnectPlan`: a malformed target or ``local_address``, an option of
the wrong type or out of range, a local address whose family the target
cannot have, all fail here, before any socket exists.  The connect loop
(``_connect``) then runs a plan and never checks an argument again.

The loop's pure policies live here too, because they need no I/O either:
the order in which to try a name's addresses (``interleave_families``) and
the delay between rounds (``backoff_delay``).

Design notes
============

Happy eyeballs: the order of attempts (RFC 8305)
------------------------------------------------
*Ordering* (section 4): ``getaddrinfo``'s order is kept within each address
family, and the families are interleaved starting with the family of the
first result -- ``v6a, v4a, v6b, v4b, ...`` -- so a broken family costs one
attempt, not all of them.  (Trio only moves the first other-family address to
second place, RFC 6555 style.)  Duplicate addresses are dropped.

Back-off
--------
Retries back off exponentially with *full jitter* -- the delay before retry
``n`` is uniform in ``[0, min(max_backoff, backoff * 2**n))`` -- which spreads
a thundering herd of clients restarting together (see the AWS architecture
blog post "Exponential Backoff And Jitter").  The jitter comes from the
installed virtual network's seeded RNG when there is one (``_virtual``), so
a seeded scenario replays exactly.
"""

from __future__ import annotations

import ipaddress
import re
import socket as _stdlib_socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any, Final

import attrs

from .. import _virtual
from .._address import Address, TCPAddress, UnixAddress, parse_address
from .._exceptions import ConnectAttempt, InvalidAddress, ProxyProtocolError
from .._proxy._info import ProxyInfo
from .._proxy._parse import parse_proxy_header
from .._stream import DEFAULT_CLOSE_LINGER
from .._validate import (
    check_count,
    check_keepalive,
    check_limit,
    check_seconds,
    is_async_callable,
    public_call,
)

__all__ = [
    "CONNECT_OPTIONS",
    "DEFAULT_BACKOFF",
    "DEFAULT_HAPPY_EYEBALLS_DELAY",
    "DEFAULT_MAX_BACKOFF",
    "WILDCARD_HOSTS",
    "AttemptObserver",
    "ConnectPlan",
    "backoff_delay",
    "interleave_families",
    "make_plan",
]

#: Default ``happy_eyeballs_delay`` (RFC 8305 recommends 250 ms).
DEFAULT_HAPPY_EYEBALLS_DELAY: Final = 0.25
#: Default base delay of the retry back-off, in seconds.
DEFAULT_BACKOFF: Final = 0.1
#: Default cap on one back-off delay, in seconds.
DEFAULT_MAX_BACKOFF: Final = 5.0

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
#: Wildcard hosts that are not IP literals (looked up as ``None``).
WILDCARD_HOSTS: Final = ("", "*")

#: Called with each :class:`ConnectAttempt` as it finishes.
AttemptObserver = Callable[[ConnectAttempt], object]


################################################################
# Argument validation -- everything is checked before any I/O.
################################################################


def _check_host(spec: object, host: str) -> None:
    """Reject a host that is neither an IP literal nor a well-formed DNS name."""
    if host in WILDCARD_HOSTS:
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
    #: The client TLS context, or None for plain.
    tls: ssl.SSLContext | None = attrs.field(default=None, eq=False)
    #: The name to send (SNI) and check the certificate against.
    server_hostname: str | None = None
    #: Called with each finished attempt.
    on_attempt: AttemptObserver | None = attrs.field(default=None, eq=False)
    #: A PROXY protocol header to send first (encoded), or None.
    proxy_header: bytes | None = None


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
    tls: ssl.SSLContext | bool | None = None,
    server_hostname: str | None = None,
    on_attempt: AttemptObserver | None = None,
    proxy_header: ProxyInfo | bytes | None = None,
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
            tls=tls,
            server_hostname=server_hostname,
            on_attempt=on_attempt,
            proxy_header=proxy_header,
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
        "tls",
        "server_hostname",
        "on_attempt",
        "proxy_header",
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
    tls: object,
    server_hostname: object,
    on_attempt: object,
    proxy_header: object,
) -> ConnectPlan:
    address = _parse_target(target)
    timeout_s = check_limit("timeout", timeout)
    retries_n = check_count("retries", retries, minimum=0)
    assert retries_n is not None
    backoff_s = check_seconds("backoff", backoff, infinite=False)
    max_backoff_s = check_seconds("max_backoff", max_backoff, infinite=False)
    assert backoff_s is not None and max_backoff_s is not None
    if max_backoff_s < backoff_s:
        raise ValueError(f"max_backoff ({max_backoff_s:g}) must be >= backoff ({backoff_s:g})")
    delay = check_limit("happy_eyeballs_delay", happy_eyeballs_delay, zero=True)
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
        raise TypeError(
            f"on_attempt must be a callable taking a ConnectAttempt, not {on_attempt!r}"
        )
    if on_attempt is not None and is_async_callable(on_attempt):
        # It is called, not awaited: its coroutine would never run.
        raise TypeError(
            f"on_attempt must be a synchronous callable taking a ConnectAttempt, not the "
            f"async {on_attempt!r}"
        )
    context = check_client_tls("tls", tls)
    hostname = _check_server_hostname(context, server_hostname, address)
    header = _check_proxy_header(proxy_header)
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
        tls=context,
        server_hostname=hostname,
        on_attempt=on_attempt,
        proxy_header=header,
    )


def _check_proxy_header(value: object) -> bytes | None:
    """A PROXY header to send: a ``ProxyInfo`` (encoded here) or one whole encoded header."""
    if value is None:
        return None
    if isinstance(value, ProxyInfo):
        return value.encode()
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"proxy_header must be a trionet.ProxyInfo or bytes, not {value!r}")
    data = bytes(value)
    try:
        parsed = parse_proxy_header(data)
    except ProxyProtocolError as exc:
        raise ValueError(f"proxy_header is not a PROXY protocol header: {exc}") from None
    if parsed is None or parsed[1] != len(data):
        raise ValueError("proxy_header must be exactly one whole PROXY protocol header")
    return data


def check_client_tls(name: str, value: object) -> ssl.SSLContext | None:
    """A client's TLS setting: None/False (plain), True (the default context), or a context.

    Raises:
        TypeError: anything else.
        ValueError: a context made for servers (it cannot start handshakes).
    """
    if value is None or value is False:
        return None
    if value is True:
        return ssl.create_default_context()
    if not isinstance(value, ssl.SSLContext):
        raise TypeError(f"{name} must be True, False or an ssl.SSLContext, not {value!r}")
    if value.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise ValueError(
            f"{name} is a server-side context; make a client one with ssl.create_default_context()"
        )
    return value


def _check_server_hostname(
    context: ssl.SSLContext | None, value: object, address: Address
) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"server_hostname must be a str or None, not {value!r}")
    if context is None:
        if value is not None:
            raise ValueError("server_hostname applies only with tls")
        return None
    if value:
        return value
    if isinstance(address, TCPAddress) and address.host not in WILDCARD_HOSTS:
        return address.host  # a name or an IP literal: what the certificate must show
    if context.check_hostname:
        raise ValueError(
            f"server_hostname is needed for TLS to {address}: the context checks the "
            "certificate's name, and the target names no host"
        )
    return None


################################################################
# Pure helpers
################################################################


def backoff_delay(
    retry: int, base: float, cap: float, rand: Callable[[], float] | None = None
) -> float:
    """The full-jitter delay before retry number ``retry`` (0-based).

    Uniform in ``[0, min(cap, base * 2**retry))``; ``rand`` returns a float in
    ``[0, 1)`` (injectable for tests).  By default it is
    :func:`trionet._virtual.random_fraction`, looked up at each call: the
    installed virtual network's seeded RNG if there is one, else ``random``.

    Example::

        >>> backoff_delay(3, 0.1, 5.0, rand=lambda: 0.5)
        0.4
    """
    ceiling = min(cap, base * 2.0 ** min(retry, 64))
    return ceiling * (rand() if rand is not None else _virtual.random_fraction())


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
