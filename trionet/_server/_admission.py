"""Admission control: who may connect, and how many at once.

A server cannot tell the kernel whom to accept: ``accept()`` completes the
handshake for anyone, and only then does the server learn the peer's
address.  So the check happens right after ``accept()`` and *before any
handler code runs*: an unacceptable peer is closed at once with a TCP reset
(``SO_LINGER`` 0), which costs it one round trip and costs us no task.

:class:`AccessPolicy` covers the usual cases -- CIDR allow/deny lists and,
for Unix sockets, the peer's uid from ``SO_PEERCRED`` -- and any synchronous
callable taking a :class:`~trionet.ConnectionInfo` and returning ``bool``
works too.

Per-host limits (:class:`HostCounter`) count live connections per peer IP;
the global ``max_connections`` limit lives in the accept loop (it stops
accepting, so the kernel backlog holds the queue -- backpressure, not
rejection).

The gate (:class:`Admission`)
=============================

A server owns one :class:`Admission` if it has anything to decide (an
``access`` check, a per-host limit) and calls :meth:`Admission.admit` once
per accepted socket; a server with neither has no gate, so its accept path
makes no call and pays one attribute test.  The gate *decides*: it runs the
check (reading ``SO_PEERCRED`` only when the check needs it), fails closed
if the check raises or returns an awaitable, counts per-host connections,
and counts and logs each refusal.  The server *acts*: it resets a refused
socket, starts the connection, and gives the host count back
(:attr:`Admission.release`) when the connection ends.  ``admit`` is one
flat method -- no helper frames -- because it runs for every connection;
its refusals are counted in the server's ``Counters``, and errors from the
check are logged through the server's error limiter, the one its handler
errors use, under the ``trionet.server`` logger.
"""

from __future__ import annotations

import inspect
import ipaddress
import logging
import socket as _socket
import time
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs
import trio

from .._address import Address, TCPAddress, UnixAddress, address_from_sockaddr
from .._stream import Connection, ConnectionInfo
from .._stream._sockopts import AF_UNIX, arm_reset, read_peer_credentials
from .._validate import check_count, normalise_network

if TYPE_CHECKING:
    from .._ratelimit import RateLimiter
    from .._stats import Counters
    from ._listeners import Listener

__all__ = ["AccessCheck", "AccessPolicy", "family_of", "local_address", "reset_close"]

#: Refusals are the server's decisions: logged where the docs say to look.
log = logging.getLogger("trionet.server")

_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def _to_networks(value: Iterable[str] | str | None) -> tuple[_Network, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    elif isinstance(value, (bytes, bytearray)) or not isinstance(value, Iterable):
        raise TypeError(f"CIDR lists must be iterables of str, not {value!r}")
    nets = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"a CIDR must be a str, not {type(item).__name__}")
        try:
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"invalid CIDR {item!r}: {exc}") from None
        nets.append(normalise_network(net))  # ::ffff:10.0.0.0/104 is 10.0.0.0/8
    return tuple(nets)


def _to_deny(value: Iterable[str] | str | None) -> tuple[_Network, ...]:
    return _to_networks(value) or ()


def _to_uids(value: Iterable[int] | None) -> frozenset[int] | None:
    if value is None:
        return None
    if isinstance(value, (int, str, bytes)):
        raise TypeError(f"unix_uids must be an iterable of ints (e.g. [1000]), not {value!r}")
    uids = frozenset(value)
    for uid in uids:
        try:
            check_count("unix_uids", uid, minimum=0)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"unix_uids must hold non-negative ints, not {uid!r}") from None
    return uids


_AF_INET6 = _socket.AF_INET6
_AF_INET = _socket.AF_INET
_AF_UNIX = getattr(_socket, "AF_UNIX", None)
_inet_pton = _socket.inet_pton


def ip_key(host: str) -> tuple[int, int] | None:
    """``(version, address as int)`` of an IP literal, or None if not an IP.

    IPv4-mapped IPv6 (``::ffff:10.1.2.3``) comes back as IPv4.  This runs for
    every accepted connection when a policy or per-host limit is set, so it
    uses ``inet_pton`` (C) rather than :mod:`ipaddress` (ten times slower).
    """
    if "%" in host:
        host = host.split("%", 1)[0]
    try:
        return (4, int.from_bytes(_inet_pton(_AF_INET, host), "big"))
    except (OSError, ValueError):
        pass
    try:
        n = int.from_bytes(_inet_pton(_AF_INET6, host), "big")
    except (OSError, ValueError):
        return None
    if n >> 32 == 0xFFFF:
        return (4, n & 0xFFFFFFFF)
    return (6, n)


#: Up to this many networks, a list is scanned in turn; beyond, it is looked
#: up by prefix length (one set lookup per distinct prefix length), so a
#: list of 10,000 CIDRs costs about what a list of a few does.
_SCAN_MAX = 16


class _Networks:
    """A list of networks, asked "does it hold this address?" once per connection."""

    __slots__ = ("_by_prefix", "_scan")

    def __init__(self, nets: tuple[_Network, ...] | None) -> None:
        masks = [(net.version, int(net.network_address), int(net.netmask)) for net in nets or ()]
        self._scan: tuple[tuple[int, int, int], ...] | None = None
        self._by_prefix: tuple[tuple[int, int, frozenset[int]], ...] = ()
        if len(masks) <= _SCAN_MAX:
            self._scan = tuple(masks)
            return
        groups: dict[tuple[int, int], set[int]] = {}
        for version, network, mask in masks:
            groups.setdefault((version, mask), set()).add(network)
        self._by_prefix = tuple(
            (version, mask, frozenset(networks)) for (version, mask), networks in groups.items()
        )

    def __contains__(self, key: tuple[int, int]) -> bool:
        version, n = key
        scan = self._scan
        if scan is not None:
            for net_version, net, mask in scan:
                if version == net_version and n & mask == net:
                    return True
            return False
        for net_version, mask, networks in self._by_prefix:
            if version == net_version and n & mask in networks:
                return True
        return False


@attrs.frozen
class AccessPolicy:
    """Which peers a server admits.

    Args:
        allow: CIDR strings; ``None`` (the default) admits every TCP peer not
            denied.  An empty list admits no TCP peer.
        deny: CIDR strings; deny wins over allow.
        unix_uids: for Unix-socket peers, the uids admitted (from
            ``SO_PEERCRED``); ``None`` admits every Unix peer.

    IPv4-mapped IPv6 peers (``::ffff:10.1.2.3``) are matched as IPv4.

    Example::

        policy = trionet.AccessPolicy(allow=["10.0.0.0/8", "127.0.0.1/32"], deny=["10.9.0.0/16"])
        async with trionet.open_server(handler, "tcp://0.0.0.0:8080", access=policy):
            ...
    """

    #: Admitted networks, or None for "everyone not denied".
    allow: tuple[_Network, ...] | None = attrs.field(default=None, converter=_to_networks)
    #: Refused networks (checked first).
    deny: tuple[_Network, ...] = attrs.field(default=(), converter=_to_deny)
    #: Admitted uids for Unix-socket peers, or None for all.
    unix_uids: frozenset[int] | None = attrs.field(default=None, converter=_to_uids)
    # Precomputed (version, network, mask) integers for the per-connection check.
    _allow_set: _Networks = attrs.field(init=False, eq=False, repr=False)
    _deny_set: _Networks = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_allow_set", _Networks(self.allow))
        object.__setattr__(self, "_deny_set", _Networks(self.deny))

    def allows(self, peer: Address, credentials: tuple[int, int, int] | None = None) -> bool:
        """Whether ``peer`` (with its Unix ``credentials``, if any) is admitted."""
        if isinstance(peer, UnixAddress):
            if self.unix_uids is None:
                return True
            return credentials is not None and credentials[1] in self.unix_uids
        return self._allows_ip(ip_key(peer.host))

    def _allows_ip(self, key: tuple[int, int] | None) -> bool:
        """:meth:`allows` for a TCP peer whose :func:`ip_key` is ``key``."""
        if key is None:
            return False
        if key in self._deny_set:
            return False
        return self.allow is None or key in self._allow_set

    def __call__(self, info: ConnectionInfo) -> bool:
        return self.allows(info.peer, info.peer_credentials)

    @property
    def needs_credentials(self) -> bool:
        """True if Unix peers' credentials must be read to decide."""
        return self.unix_uids is not None


#: What ``access=`` takes: a policy or any sync callable ``(ConnectionInfo) -> bool``.
AccessCheck: TypeAlias = AccessPolicy | Callable[[ConnectionInfo], bool]


class HostCounter:
    """Live connections per peer IP, for ``max_connections_per_host`` (internal).

    Keyed by the peer's IP (see :meth:`Admission.admit`); a None key -- a
    Unix peer -- is not counted.
    """

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[Hashable, int] = {}

    def try_add(self, key: Hashable | None) -> bool:
        if key is None:
            return True
        n = self._counts.get(key, 0)
        if n >= self.limit:
            return False
        self._counts[key] = n + 1
        return True

    def remove(self, key: Hashable | None) -> None:
        if key is None:
            return
        n = self._counts.get(key, 0) - 1
        if n <= 0:
            self._counts.pop(key, None)
        else:
            self._counts[key] = n


def peer_credentials(sock: Any) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of a Unix socket's peer, or None if it is already gone.

    ``sock`` is an accepted socket, or a :class:`~trionet.Connection` (the
    gate running after a bind's stages).
    """
    try:
        if isinstance(sock, Connection):
            return sock.peer_credentials
        return read_peer_credentials(sock)
    except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
        return None  # the peer is already gone: no credentials to admit it by


#: What :meth:`Admission.admit` returns for a refused peer.
REFUSED: Final[Hashable] = object()


def _release_nothing(key: Hashable | None) -> None:  # pragma: no cover - never handed a key
    pass


class Admission:
    """Whether to admit each accepted socket, for one server (internal).

    See "The gate" in the module docstring.  Build it with :meth:`create`,
    which returns None when there is nothing to decide.
    """

    __slots__ = (
        "_access",
        "_counters",
        "_errors",
        "_hosts",
        "_needs_credentials",
        "_policy",
        "release",
        "wants_local",
    )

    #: Give back the per-host count of a connection ``admit`` admitted with a
    #: key (not None), once it ends.  It is the counter's own bound method:
    #: no extra frame on the release path.
    release: Callable[[Hashable | None], None]
    #: True if ``admit`` needs the connection's real local address (a
    #: callable check sees it; an AccessPolicy does not).
    wants_local: bool

    def __init__(
        self,
        access: AccessCheck | None,
        max_per_host: int | None,
        counters: Counters,
        errors: RateLimiter,
    ) -> None:
        self._access = access
        self._policy = access if isinstance(access, AccessPolicy) else None
        # An AccessPolicy is frozen: whether it needs credentials never changes.
        self._needs_credentials = self._policy is None or self._policy.needs_credentials
        self.wants_local = access is not None and self._policy is None
        self._hosts = HostCounter(max_per_host) if max_per_host is not None else None
        self.release = self._hosts.remove if self._hosts is not None else _release_nothing
        self._counters = counters
        self._errors = errors

    @classmethod
    def create(
        cls,
        access: AccessCheck | None,
        max_per_host: int | None,
        counters: Counters,
        errors: RateLimiter,
    ) -> Admission | None:
        """A gate for these settings, or None if they admit everyone."""
        if access is None and max_per_host is None:
            return None
        return cls(access, max_per_host, counters, errors)

    def admit(self, sock: Any, peer: Address, local: Address, family: int) -> Hashable | None:
        """Decide on one accepted socket: :data:`REFUSED`, or its per-host key.

        The key (None when the peer is not counted per host) goes to
        :attr:`release` when the connection ends.  ``local`` is the real
        local address if :attr:`wants_local` (else None: the listener's
        address stands in: the caller passes it).  ``sock`` is the accepted
        socket, or the connection when the gate runs after a bind's stages.
        A refused peer is counted and logged here; the caller closes it.
        """
        # A TCP peer's IP is parsed once, for the policy and the per-host count.
        host = peer.host if isinstance(peer, TCPAddress) else None
        ip = None
        if host is not None and (self._policy is not None or self._hosts is not None):
            ip = ip_key(host)
        access = self._access
        if access is not None:
            creds = None
            if family == _AF_UNIX and self._needs_credentials:
                creds = peer_credentials(sock)
            policy = self._policy
            try:
                if policy is not None:
                    ok = policy._allows_ip(ip) if host is not None else policy.allows(peer, creds)
                else:
                    info = ConnectionInfo(0, peer, local, time.time(), 0, 0, creds)
                    result = access(info)
                    if inspect.isawaitable(result):
                        # A coroutine is truthy: never let it admit anybody.
                        if inspect.iscoroutine(result):
                            result.close()
                        raise TypeError("the access callable returned an awaitable, not a bool")
                    ok = bool(result)
            except Exception as exc:
                self._errors.log(
                    log,
                    logging.ERROR,
                    "access policy raised for %s; refusing the peer",
                    peer,
                    exc_info=exc,
                )
                ok = False
            if not ok:
                self._counters.rejected_access += 1
                log.debug("refused %s: access policy", peer)
                return REFUSED
        hosts = self._hosts
        if hosts is None:
            return None
        # Per peer IP (the host string if it is somehow not an IP literal);
        # Unix peers are not limited per host.
        key = (ip or host) if host is not None else None
        if not hosts.try_add(key):
            self._counters.rejected_limit += 1
            log.debug("refused %s: over max_connections_per_host", peer)
            return REFUSED
        return key


# -- at accept: the refusal, and what the gate is told --


def reset_close(sock: _socket.socket | trio.socket.SocketType) -> None:
    """Close with RST (SO_LINGER 0): the peer learns at once, we keep no TIME_WAIT.

    Unix sockets have no reset; they are simply closed (the peer sees EOF or
    ``ECONNRESET`` if it had sent data we never read).
    """
    arm_reset(sock)
    sock.close()


def local_address(sock: Any, listener: Listener, family: int) -> Address | None:
    """The accepted socket's real local address if the listener is a wildcard, else None."""
    if not listener.wildcard:
        return None
    try:
        return address_from_sockaddr(family, sock.getsockname())
    except (OSError, ValueError, TypeError):
        return None


def family_of(address: Address) -> int:
    """The socket family of a peer's address (for the gate)."""
    if isinstance(address, UnixAddress):
        return int(AF_UNIX or 0)
    return int(_socket.AF_INET6 if ":" in address.host else _socket.AF_INET)
