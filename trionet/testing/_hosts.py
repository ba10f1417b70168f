"""Hosts, their addresses and names, and the bind table of a virtual network.

A host has a name (what the resolver answers for) and loopback-range
addresses: IPv4 in ``127.0.0.0/8`` and IPv6 ``::1``.  Keeping to loopback
means a test that forgot to install its network still cannot reach
anything beyond this machine.  The network starts with one host,
``localhost`` (``127.0.0.1`` and ``::1``).
"""

from __future__ import annotations

import errno
import ipaddress
import socket as _stdlib
from typing import TYPE_CHECKING, Any

from ._base import oserror

if TYPE_CHECKING:
    from ._socket import VirtualSocket

__all__ = ["AddressBook", "BindTable", "Host", "normalise_ip"]

_EPHEMERAL = (32768, 60999)  # Linux's net.ipv4.ip_local_port_range
_LOOPBACK4 = ipaddress.ip_network("127.0.0.0/8")
_LOOPBACK6 = ipaddress.ip_address("::1")


def normalise_ip(text: str) -> str | None:
    """The canonical text of an IP address, or None if ``text`` is not one."""
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


class Host:
    """One machine of the network: a name, addresses, and whether it is up."""

    __slots__ = ("addresses", "crashed", "epoch", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.addresses: list[str] = []
        self.crashed = False
        #: Bumped by each crash: sockets made before it are dead.
        self.epoch = 0

    def __repr__(self) -> str:
        return f"<Host {self.name} {' '.join(self.addresses)}{' crashed' if self.crashed else ''}>"


class AddressBook:
    """Hosts by name and by address."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.owners: dict[str, Host] = {}

    def add(self, call: str, name: str, addresses: tuple[str, ...]) -> Host:
        if isinstance(name, str):
            name = name.rstrip(".")  # "x.test." and "x.test" are one name
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"{call}: name must be a non-empty host name, not {name!r}")
        if normalise_ip(name) is not None:
            raise ValueError(
                f"{call}: the name {name!r} is an IP address; give a host name, then its addresses"
            )
        if not addresses:
            raise ValueError(f"{call}: give at least one address for {name!r}")
        checked = []
        for text in addresses:
            ip = normalise_ip(text) if isinstance(text, str) else None
            if ip is None:
                raise ValueError(f"{call}: {text!r} is not an IP address")
            parsed = ipaddress.ip_address(ip)
            if not (parsed in _LOOPBACK4 if parsed.version == 4 else parsed == _LOOPBACK6):
                raise ValueError(
                    f"{call}: {text!r} is not a loopback-range address (127.0.0.0/8 or ::1); "
                    "virtual hosts use those so that nothing can ever leave this machine"
                )
            owner = self.owners.get(ip)
            if owner is not None and owner.name != name.lower():
                raise ValueError(f"{call}: {ip} already belongs to host {owner.name!r}")
            checked.append(ip)
        host = self.hosts.get(name.lower())
        if host is None:
            host = self.hosts[name.lower()] = Host(name.lower())
        for ip in checked:
            if ip not in host.addresses:
                host.addresses.append(ip)
                self.owners[ip] = host
        return host

    def host(self, call: str, ref: str) -> Host:
        """The host named ``ref`` or owning the address ``ref``."""
        if isinstance(ref, str):
            host = self.hosts.get(ref.lower())
            if host is not None:
                return host
            ip = normalise_ip(ref)
            if ip is not None and ip in self.owners:
                return self.owners[ip]
        raise ValueError(
            f"{call}: no host is named or has the address {ref!r} "
            f"(known: {', '.join(sorted(self.hosts))})"
        )

    def lookup(self, name: str, family: int) -> list[str]:
        """The addresses of ``name`` in ``family`` (0: any); [] if unknown."""
        host = self.hosts.get(name.lower().rstrip("."))
        if host is None:
            return []
        return [a for a in host.addresses if family in (0, _family_of(a))]


def _family_of(ip: str) -> int:
    return _stdlib.AF_INET6 if ":" in ip else _stdlib.AF_INET


class BindTable:
    """Which (family, address, port) each bound socket holds; the ephemeral port allocator."""

    def __init__(self) -> None:
        self._by_port: dict[tuple[int, int], list[VirtualSocket]] = {}
        self._next: dict[tuple[int, str], int] = {}

    def _users(self, family: int, port: int) -> list[VirtualSocket]:
        return self._by_port.get((family, port), [])

    def _conflicts(self, family: int, ip: str, port: int) -> bool:
        for sock in self._users(family, port):
            assert sock._local is not None
            other = sock._local[0]
            if other == ip or _is_wildcard(other) or _is_wildcard(ip):
                return True
        return False

    def bind(self, sock: VirtualSocket, ip: str, port: int, describe: str) -> int:
        family = int(sock.family)
        if port == 0:
            port = self._ephemeral(family, ip, describe)
        elif self._conflicts(family, ip, port):
            raise oserror(errno.EADDRINUSE, f"{ip} port {port} is taken on {describe}")
        self._by_port.setdefault((family, port), []).append(sock)
        return port

    def _ephemeral(self, family: int, ip: str, describe: str) -> int:
        low, high = _EPHEMERAL
        start = self._next.get((family, ip), low)
        port = start
        for _ in range(high - low + 1):
            nxt = port + 1 if port < high else low
            if not self._conflicts(family, ip, port):
                self._next[(family, ip)] = nxt
                return port
            port = nxt
        raise oserror(errno.EADDRNOTAVAIL, f"no ephemeral port is free for {ip} on {describe}")

    def release(self, sock: VirtualSocket) -> None:
        if sock._local is None:
            return
        users = self._by_port.get((int(sock.family), sock._local[1]))
        if users is not None and sock in users:
            users.remove(sock)
            if not users:
                del self._by_port[(int(sock.family), sock._local[1])]

    def listener(self, family: int, ip: str, port: int) -> VirtualSocket | None:
        """The listening socket a connect to (ip, port) reaches: exact address first."""
        wildcard = None
        for sock in self._users(family, port):
            if not sock._listening():
                continue
            assert sock._local is not None
            if sock._local[0] == ip:
                return sock
            if _is_wildcard(sock._local[0]):
                wildcard = sock
        return wildcard


def _is_wildcard(ip: str) -> bool:
    return ip in ("0.0.0.0", "::")


def parse_sockaddr(family: int, address: Any, call: str) -> tuple[str, int]:
    """(host text, port) from a Python sockaddr tuple, checked for ``family``."""
    if family == _stdlib.AF_INET6:
        ok = isinstance(address, tuple) and 2 <= len(address) <= 4
    else:
        ok = isinstance(address, tuple) and len(address) == 2
    if not ok:
        name = "AF_INET6" if family == _stdlib.AF_INET6 else "AF_INET"
        raise TypeError(f"{call}(): {name} address must be a tuple, not {address!r}")
    host, port = address[0], address[1]
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if not isinstance(host, str) or not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"{call}(): bad address {address!r}")
    if not 0 <= port <= 65535:
        raise OverflowError(f"{call}(): port must be 0-65535.")
    return host, port
