"""Addresses: parsing bind/connect specs, and turning socket addresses into records.

A spec is a string a human writes in a config file or on a command line:

* ``tcp://HOST:PORT`` -- IPv6 literals in brackets (``tcp://[::1]:80``); the
  port is required (``0`` asks for an ephemeral port); an empty host or ``*``
  means every interface, on both address families.
* ``unix:PATH`` -- a Unix-domain socket file; ``unix:@NAME`` is a Linux
  abstract-namespace socket (no file on disk).

:func:`parse_address` turns a spec into a frozen :class:`TCPAddress` or
:class:`UnixAddress`, and ``str()`` of either gives the spec back, so
``parse_address(str(addr)) == addr`` holds for every address that can be
bound or connected to (the one exception is the unnamed Unix peer
``UnixAddress("")``, which ``getpeername`` reports for an unbound client).
Every malformed spec raises :class:`~trionet.InvalidAddress`, which names the
spec and the problem.
"""

from __future__ import annotations

import ipaddress
import socket as _stdlib_socket
from typing import Any, TypeAlias

import attrs

from ._exceptions import InvalidAddress

__all__ = ["Address", "TCPAddress", "UnixAddress", "parse_address"]

# sun_path is 108 bytes on Linux, including the terminating NUL for file paths.
_UNIX_PATH_MAX = 107


def _valid_port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"port must be an int, not {type(value).__name__}")
    if not 0 <= value <= 65535:
        raise InvalidAddress(value, "port must be in 0-65535")


# Characters no host may contain: they would make ``str()`` of the address
# parse differently (``/?#`` end the authority, brackets delimit IPv6) or are
# never part of a host name or IP literal (whitespace, control characters).
_HOST_FORBIDDEN = frozenset("/?#[]") | frozenset(chr(c) for c in range(32)) | {"\x7f"}


def _valid_host(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    # Validated here, not only in parse_address, so that *every* TCPAddress --
    # from a spec, a (host, port) tuple or the constructor -- round-trips
    # through str() and parse_address().
    if not isinstance(value, str):
        raise TypeError(f"host must be a str, not {type(value).__name__}")
    for c in value:
        if c in _HOST_FORBIDDEN or c.isspace():
            raise InvalidAddress(value, f"the host contains the character {c!r}")
    if ":" in value:
        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            raise InvalidAddress(
                value, f"{value!r} is not an IPv6 address (only IPv6 literals contain ':')"
            ) from None
    elif _looks_numeric(value):
        # A DNS name's last label is never all digits (RFC 3696 section 2),
        # so such a host can only be meant as an IPv4 literal -- and must be
        # a valid one: left alone, "256.1.1.1" or "1.2.3.4.5" would go to the
        # resolver and fail late as "Name or service not known", and
        # "127.1" would be quietly widened to 127.0.0.1 by inet_aton().
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise InvalidAddress(
                value, f"{value!r} is not a valid IPv4 address (four numbers 0-255)"
            ) from None


def _looks_numeric(host: str) -> bool:
    """True if the last dot-separated label of ``host`` is all ASCII digits."""
    last = host.rstrip(".").rpartition(".")[2]
    return last.isascii() and last.isdigit()


@attrs.frozen(repr=False)
class TCPAddress:
    """A TCP endpoint: a host (IP literal or name) and a port.

    ``str(TCPAddress("::1", 80))`` is ``"tcp://[::1]:80"``.
    """

    #: An IPv4/IPv6 literal, a host name, or ``""``/``"*"`` for every interface.
    host: str = attrs.field(validator=_valid_host)
    #: The port, 0-65535 (0 = ephemeral when binding).
    port: int = attrs.field(validator=_valid_port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def __repr__(self) -> str:
        return f"TCPAddress(host={self.host!r}, port={self.port})"

    @property
    def is_wildcard(self) -> bool:
        """True for the all-interfaces host (``""`` or ``"*"``)."""
        return self.host in ("", "*")


def _valid_unix_path(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"path must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidAddress(
            value, "a Unix socket path cannot contain NUL (use '@name' for abstract)"
        )
    try:
        size = len(value.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        # A lone surrogate that surrogateescape cannot map back to a byte.
        raise InvalidAddress(value, "the path is not encodable as bytes") from None
    if size > _UNIX_PATH_MAX:
        raise InvalidAddress(value, f"a Unix socket path is limited to {_UNIX_PATH_MAX} bytes")


@attrs.frozen(repr=False)
class UnixAddress:
    """A Unix-domain socket: a file path, ``@name`` (Linux abstract), or ``""`` (unnamed)."""

    #: File path, ``@name`` for the abstract namespace, or ``""`` for an unnamed peer.
    path: str = attrs.field(validator=_valid_unix_path)

    def __str__(self) -> str:
        # parse_address reads "unix:///p" as the URL form of "/p", so a path
        # that itself starts with "//" is written in that form to survive.
        if self.path.startswith("//"):
            return f"unix://{self.path}"
        return f"unix:{self.path}"

    def __repr__(self) -> str:
        return f"UnixAddress(path={self.path!r})"

    @property
    def is_abstract(self) -> bool:
        """True for a Linux abstract-namespace name (``@name``)."""
        return self.path.startswith("@")

    @property
    def sockaddr(self) -> str | bytes:
        """The address in the form ``socket.bind``/``connect`` take."""
        if self.is_abstract:
            return b"\0" + self.path[1:].encode("utf-8", "surrogateescape")
        return self.path


Address: TypeAlias = TCPAddress | UnixAddress


def parse_address(spec: object) -> Address:
    """Parse a spec into a :class:`TCPAddress` or :class:`UnixAddress`.

    Args:
        spec: ``"tcp://HOST:PORT"``, ``"unix:PATH"``, ``"unix:@NAME"``, a
            ``(host, port)`` tuple, or an address record (returned unchanged).

    Returns:
        The frozen address record.

    Raises:
        InvalidAddress: the spec is malformed; the message names it and says why.

    Example::

        >>> parse_address("tcp://[::1]:8080")
        TCPAddress(host='::1', port=8080)
        >>> str(parse_address("unix:/run/app.sock"))
        'unix:/run/app.sock'
    """
    if isinstance(spec, (TCPAddress, UnixAddress)):
        return spec
    if isinstance(spec, tuple):
        return _parse_tuple(spec)
    if not isinstance(spec, str):
        raise InvalidAddress(
            spec, f"expected a spec string or (host, port), not {type(spec).__name__}"
        )
    scheme, sep, rest = spec.partition(":")
    if not sep:
        raise InvalidAddress(spec, "missing scheme (expected 'tcp://HOST:PORT' or 'unix:PATH')")
    scheme = scheme.lower()
    if scheme == "tcp":
        if not rest.startswith("//"):
            raise InvalidAddress(spec, "expected 'tcp://HOST:PORT'")
        return _parse_tcp(spec, rest[2:])
    if scheme == "unix":
        path = rest[2:] if rest.startswith("///") else rest
        if not path:
            raise InvalidAddress(spec, "a Unix socket path is required")
        if path == "@":
            raise InvalidAddress(spec, "an abstract socket name is required after '@'")
        try:
            return UnixAddress(path)
        except InvalidAddress as exc:
            raise InvalidAddress(spec, exc.problem) from None
    raise InvalidAddress(spec, f"unknown scheme {scheme!r} (expected 'tcp' or 'unix')")


def _parse_port(spec: object, text: str) -> int:
    if not text:
        raise InvalidAddress(spec, "a port is required (use 0 for an ephemeral port)")
    if not text.isascii() or not text.isdigit():
        raise InvalidAddress(spec, f"port {text!r} is not a number")
    # Strip leading zeros and check the length first: int() refuses strings
    # of more than 4300 digits with a plain ValueError.
    digits = text.lstrip("0") or "0"
    if len(digits) > 5:
        raise InvalidAddress(spec, f"port {text!r} is out of range 0-65535")
    port = int(digits)
    if port > 65535:
        raise InvalidAddress(spec, f"port {port} is out of range 0-65535")
    return port


def _parse_tcp(spec: str, hostport: str) -> TCPAddress:
    if "/" in hostport or "?" in hostport or "#" in hostport:
        raise InvalidAddress(spec, "unexpected path or query after HOST:PORT")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise InvalidAddress(spec, "unclosed '[' in IPv6 address")
        host = hostport[1:end]
        after = hostport[end + 1 :]
        if not after.startswith(":"):
            raise InvalidAddress(spec, "a port is required after ']' (use 0 for an ephemeral port)")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidAddress(spec, f"{host!r} is not an IPv6 address") from None
        return _tcp_address(spec, host, _parse_port(spec, after[1:]))
    host, sep, port = hostport.rpartition(":")
    if not sep:
        raise InvalidAddress(spec, "a port is required (use 0 for an ephemeral port)")
    if ":" in host:
        raise InvalidAddress(spec, "IPv6 addresses must be in brackets, e.g. tcp://[::1]:80")
    return _tcp_address(spec, host, _parse_port(spec, port))


def _tcp_address(spec: object, host: str, port: int) -> TCPAddress:
    """Build a TCPAddress, re-raising a validator's InvalidAddress under ``spec``."""
    try:
        return TCPAddress(host, port)
    except InvalidAddress as exc:
        raise InvalidAddress(spec, exc.problem) from None


def _parse_tuple(spec: tuple[Any, ...]) -> TCPAddress:
    if len(spec) != 2:
        raise InvalidAddress(spec, "a tuple address must be (host, port)")
    host, port = spec
    if host is None:
        host = ""
    if not isinstance(host, str):
        raise InvalidAddress(spec, "the host must be a str")
    if not isinstance(port, int) or isinstance(port, bool):
        raise InvalidAddress(spec, "the port must be an int")
    if not 0 <= port <= 65535:
        raise InvalidAddress(spec, f"port {port} is out of range 0-65535")
    return _tcp_address(spec, host, port)


def address_from_sockaddr(family: int, sockaddr: Any) -> Address:
    """Turn what ``getsockname``/``getpeername``/``accept`` return into a record."""
    if family == getattr(_stdlib_socket, "AF_UNIX", None):
        if isinstance(sockaddr, bytes):
            if sockaddr.startswith(b"\0"):
                return UnixAddress("@" + sockaddr[1:].decode("utf-8", "surrogateescape"))
            sockaddr = sockaddr.decode("utf-8", "surrogateescape")
        return UnixAddress(sockaddr or "")
    host, port = sockaddr[0], sockaddr[1]
    if type(host) is str and type(port) is int:
        # What the kernel reports is a canonical IP literal and a valid port:
        # skip the validators (parsing an IP costs microseconds per accepted
        # connection; measured as 10 % of the connection rate).
        addr = object.__new__(TCPAddress)
        object.__setattr__(addr, "host", host)
        object.__setattr__(addr, "port", port)
        return addr
    return TCPAddress(host, port)
