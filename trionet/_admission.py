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
from collections.abc import Callable, Iterable
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

    def allows(self, peer: Address, credentials: tuple[int, int, int] | None = None) -> bool:
        """Whether ``peer`` (with its Unix ``credentials``, if any) is admitted."""
        if isinstance(peer, UnixAddress):
            if self.unix_uids is None:
                return True
            return credentials is not None and credentials[1] in self.unix_uids
        ip = parse_ip(peer.host)
        if ip is None:
            return False
        for net in self.deny:
            if ip.version == net.version and ip in net:
                return False
        if self.allow is None:
            return True
        return any(ip.version == net.version and ip in net for net in self.allow)

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
        self._counts: dict[str, int] = {}

    @staticmethod
    def key(peer: Address) -> str | None:
        if isinstance(peer, TCPAddress):
            ip = parse_ip(peer.host)
            return str(ip) if ip is not None else peer.host
        return None  # Unix peers are not limited per host

    def try_add(self, key: str | None) -> bool:
        if key is None:
            return True
        n = self._counts.get(key, 0)
        if n >= self.limit:
            return False
        self._counts[key] = n + 1
        return True

    def remove(self, key: str | None) -> None:
        if key is None:
            return
        n = self._counts.get(key, 0) - 1
        if n <= 0:
            self._counts.pop(key, None)
        else:
            self._counts[key] = n
