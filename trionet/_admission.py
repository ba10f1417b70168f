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
"""

from __future__ import annotations

import ipaddress
import socket as _socket
from collections.abc import Callable, Hashable, Iterable
from typing import TypeAlias

import attrs

from ._address import Address, TCPAddress, UnixAddress
from ._connection import ConnectionInfo

__all__ = ["AccessCheck", "AccessPolicy"]

_Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


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
        nets.append(_normalise_net(net))
    return tuple(nets)


def _normalise_net(net: _Network) -> _Network:
    # ::ffff:10.0.0.0/104 is 10.0.0.0/8 in disguise.
    if (
        isinstance(net, ipaddress.IPv6Network)
        and net.network_address.ipv4_mapped is not None
        and net.prefixlen >= 96
    ):
        return ipaddress.IPv4Network(
            f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}", strict=False
        )
    return net


def _to_deny(value: Iterable[str] | str | None) -> tuple[_Network, ...]:
    return _to_networks(value) or ()


def _to_uids(value: Iterable[int] | None) -> frozenset[int] | None:
    if value is None:
        return None
    if isinstance(value, (int, str, bytes)):
        raise TypeError(f"unix_uids must be an iterable of ints (e.g. [1000]), not {value!r}")
    uids = frozenset(value)
    for uid in uids:
        if not isinstance(uid, int) or isinstance(uid, bool):
            raise TypeError(f"unix_uids must hold ints, not {uid!r}")
        if uid < 0:
            raise ValueError(f"unix_uids must hold non-negative ints, not {uid!r}")
    return uids


_AF_INET6 = _socket.AF_INET6
_AF_INET = _socket.AF_INET
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


def _masks(nets: tuple[_Network, ...] | None) -> tuple[tuple[int, int, int], ...]:
    return tuple(
        (net.version, int(net.network_address), int(net.netmask)) for net in (nets or ())
    )


def parse_ip(host: str) -> _IP | None:
    """The peer IP as an ``ipaddress`` object, IPv4-mapped IPv6 normalised; None if not an IP."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


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
    _allow_masks: tuple[tuple[int, int, int], ...] = attrs.field(
        init=False, eq=False, repr=False
    )
    _deny_masks: tuple[tuple[int, int, int], ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_allow_masks", _masks(self.allow))
        object.__setattr__(self, "_deny_masks", _masks(self.deny))

    def allows(self, peer: Address, credentials: tuple[int, int, int] | None = None) -> bool:
        """Whether ``peer`` (with its Unix ``credentials``, if any) is admitted."""
        if isinstance(peer, UnixAddress):
            if self.unix_uids is None:
                return True
            return credentials is not None and credentials[1] in self.unix_uids
        key = ip_key(peer.host)
        if key is None:
            return False
        version, n = key
        for net_version, net, mask in self._deny_masks:
            if version == net_version and n & mask == net:
                return False
        if self.allow is None:
            return True
        for net_version, net, mask in self._allow_masks:
            if version == net_version and n & mask == net:
                return True
        return False

    def __call__(self, info: ConnectionInfo) -> bool:
        return self.allows(info.peer, info.peer_credentials)

    @property
    def needs_credentials(self) -> bool:
        """True if Unix peers' credentials must be read to decide."""
        return self.unix_uids is not None


#: What ``access=`` takes: a policy or any sync callable ``(ConnectionInfo) -> bool``.
AccessCheck: TypeAlias = AccessPolicy | Callable[[ConnectionInfo], bool]


class HostCounter:
    """Live connections per peer IP, for ``max_connections_per_host`` (internal)."""

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[Hashable, int] = {}

    @staticmethod
    def key(peer: Address) -> Hashable | None:
        if isinstance(peer, TCPAddress):
            return ip_key(peer.host) or peer.host
        return None  # Unix peers are not limited per host

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
