"""The socket factory and the hostname resolver a virtual network installs in Trio.

The resolver answers from the network's own table (:meth:`VirtualNetwork.add_host
<trionet.testing.VirtualNetwork.add_host>`); an unknown name raises
``socket.gaierror(EAI_NONAME)``, as a real lookup would.  Trio resolves
numeric addresses itself without asking any resolver (and without any
network traffic).
"""

from __future__ import annotations

import errno
import os
import socket as _stdlib
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from ._network import VirtualNetwork
    from ._socket import VirtualSocket

__all__ = ["VirtualResolver", "VirtualSocketFactory"]

_TYPE_FLAGS = getattr(_stdlib, "SOCK_NONBLOCK", 0) | getattr(_stdlib, "SOCK_CLOEXEC", 0)


class VirtualSocketFactory(trio.abc.SocketFactory):
    """Makes every ``trio.socket.socket()`` of the run a virtual TCP socket."""

    def __init__(self, net: VirtualNetwork) -> None:
        self._net = net

    def socket(
        self,
        family: _stdlib.AddressFamily | int = _stdlib.AF_INET,
        type: _stdlib.SocketKind | int = _stdlib.SOCK_STREAM,
        proto: int = 0,
    ) -> VirtualSocket:
        what = self._net.describe()
        if family not in (_stdlib.AF_INET, _stdlib.AF_INET6):
            name = "AF_UNIX" if family == getattr(_stdlib, "AF_UNIX", None) else str(family)
            raise OSError(
                errno.EAFNOSUPPORT,
                f"{os.strerror(errno.EAFNOSUPPORT)} ({name}: {what} simulates TCP over "
                "IPv4 and IPv6 only)",
            )
        if int(type) & ~_TYPE_FLAGS != _stdlib.SOCK_STREAM:
            raise OSError(
                errno.ESOCKTNOSUPPORT,
                f"{os.strerror(errno.ESOCKTNOSUPPORT)} ({what} simulates TCP (SOCK_STREAM) only)",
            )
        if proto not in (0, _stdlib.IPPROTO_TCP):
            raise OSError(errno.EPROTONOSUPPORT, f"{os.strerror(errno.EPROTONOSUPPORT)} ({what})")
        return self._net._new_socket(int(family), _stdlib.SOCK_STREAM, proto)


class VirtualResolver(trio.abc.HostnameResolver):
    """Resolves host names from the network's table."""

    def __init__(self, net: VirtualNetwork) -> None:
        self._net = net

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        await trio.lowlevel.checkpoint()
        if host is None:
            # Trio resolves passive/None hosts numerically itself; here only for completeness.
            names = ["127.0.0.1", "::1"]
        else:
            text = host.decode("idna") if isinstance(host, bytes) else str(host)
            names = self._net._book.lookup(text, family)
            if not names:
                raise _stdlib.gaierror(_stdlib.EAI_NONAME, "Name or service not known")
        if isinstance(port, bytes):
            port = port.decode("ascii")
        if port is None:
            number = 0
        elif isinstance(port, int):
            number = port
        elif port.isdigit():
            number = int(port)
        else:
            raise _stdlib.gaierror(_stdlib.EAI_SERVICE, "Servname not supported for ai_socktype")
        socktype = type or _stdlib.SOCK_STREAM
        protocol = proto or (_stdlib.IPPROTO_TCP if socktype == _stdlib.SOCK_STREAM else 0)
        out: list[tuple[Any, ...]] = []
        for ip in names:
            if ":" in ip:
                out.append((_stdlib.AF_INET6, socktype, protocol, "", (ip, number, 0, 0)))
            else:
                out.append((_stdlib.AF_INET, socktype, protocol, "", (ip, number)))
        return out

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        await trio.lowlevel.checkpoint()
        ip, port = str(sockaddr[0]), str(sockaddr[1])
        if not flags & _stdlib.NI_NUMERICHOST:
            owner = self._net._book.owners.get(ip)
            if owner is not None:
                return owner.name, port
            if flags & _stdlib.NI_NAMEREQD:
                raise _stdlib.gaierror(_stdlib.EAI_NONAME, "Name or service not known")
        return ip, port
