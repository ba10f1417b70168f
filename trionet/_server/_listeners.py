"""Opening listening sockets: TCP (dual stack), Unix paths, abstract names, inherited.

The guide's recipe is ``socket()``, ``bind()``, ``listen(backlog)``.  The
details that make it production-grade:

* **Dual stack with one port.**  ``tcp://*:0`` binds every address family
  ``getaddrinfo(None, 0, AI_PASSIVE)`` offers, each with ``IPV6_V6ONLY`` so
  the IPv6 socket does not swallow IPv4 (a family the kernel does not
  support, ``EAFNOSUPPORT``, is skipped as long as another one works).  With
  port 0 the first socket's ephemeral port is reused for the others; if
  another process holds it on the second family, everything is closed and
  retried (bounded).
* **Unix sockets.**  A leftover socket file from a crashed process would make
  ``bind`` fail with ``EADDRINUSE``.  We only unlink it after a connect probe
  shows nothing listens there (``ECONNREFUSED``), *and* the file is still
  the one we probed (same device, inode and ctime before and after the
  probe -- two servers starting at once on the same stale path must not
  unlink each other's fresh socket); a live one, or one replaced while we
  probed, raises :class:`~trionet.AddressInUse`.  A probe that fails for
  another reason (``EACCES``: no write permission on the file) raises
  :class:`~trionet.ListenError` with that reason, and the file is left
  alone.  ``unix_mode`` is applied with ``chmod`` *before* ``listen()``, so
  there is no window in which a client can connect through a too-permissive
  file; it makes no sense for an abstract name (no file), so asking for both
  raises ``ValueError`` before anything is opened.  At close the file is
  removed only if it is still the inode we created (another server may have
  replaced it since).  A relative path is resolved against the working
  directory *at bind time* for that check, so a later ``chdir`` cannot make
  us remove -- or miss -- the wrong file; ``Server.addresses`` still shows
  the path as the user wrote it.
* **Backlog.**  ``None`` asks for 65535 and lets the kernel clamp it to
  ``somaxconn``, as Trio does.
* **Options before bind.**  ``reuse_port=True`` sets ``SO_REUSEPORT`` and
  ``socket_options`` are ``setsockopt`` calls, in order, on each socket
  trionet opens, after its own options and before ``bind()``; one the
  kernel (or the virtual network) refuses is a :class:`~trionet.ListenError`
  naming the option and the bind.
* Sockets come only from ``trio.socket.socket()`` and names only from
  ``trio.socket.getaddrinfo``, so Trio's socket-factory and resolver hooks
  see every call.
* **Inherited sockets** (``fd:N``, ``systemd``, ``systemd:NAME``; see
  ``trionet._inherited``): each descriptor is checked, then a duplicate of
  it is adopted.  Such a listener is ``inherited``: closing it closes our
  duplicate only -- never ``shutdown()``, never an unlink of its path.
  ``server.addresses`` shows what ``getsockname()`` says.  A backlog set
  on the bind (or server-wide) is applied with a second ``listen()``;
  None leaves the queue as it came.
* **A virtual network** (``trionet.testing``) simulates TCP only: while one
  is installed, a Unix bind, an adopted OS socket (a stdlib socket, or a
  Trio socket with a descriptor) and an inherited one raise
  :class:`~trionet.InvalidAddress` before anything touches the real system.

Every ``OSError`` here is translated by
:func:`trionet._exceptions.translate_listen_error`.
"""

from __future__ import annotations

import errno
import logging
import os
import socket as _stdlib_socket
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .. import _inherited, _virtual
from .._address import Address, TCPAddress, UnixAddress, address_from_sockaddr, parse_address
from .._binds import Bind
from .._exceptions import (
    AddressInUse,
    ListenError,
    LocalProtocolError,
    translate_listen_error,
)
from .._stream._sockopts import raw_socket_of

if TYPE_CHECKING:
    from ._stages import StagePlan

log = logging.getLogger("trionet.listeners")

__all__ = ["Listener", "close_listeners", "open_listeners"]

_AF_UNIX = getattr(_stdlib_socket, "AF_UNIX", None)
_DUAL_STACK_RETRIES = 20

#: Host strings that mean "every local address".
_ANY = frozenset({"0.0.0.0", "::", "", "*"})


@attrs.define(eq=False)
class Listener:
    """One listening socket and what we need to clean up after it (internal)."""

    sock: trio.socket.SocketType
    address: Address
    #: (st_dev, st_ino) of a Unix socket file we created and must remove.
    unix_inode: tuple[int, int] | None = None
    #: The absolute path of that file (resolved at bind time).
    unix_path: str | None = None
    #: The backlog given to ``listen()``; None for an adopted socket.
    backlog: int | None = None
    closed: bool = False
    #: True for a socket adopted from an inherited descriptor (``fd:N``,
    #: ``systemd``): other processes may share it, so closing only closes
    #: our duplicate (no ``shutdown()``, no unlink).
    inherited: bool = False
    #: The resolved bind this socket listens for (its options).
    bind: Bind | None = None
    #: The stages of its connections (None: none), set by the server.
    plan: StagePlan | None = None
    #: The socket family, read once: ``socket.family`` builds an enum on
    #: every read, and every accepted socket has its listener's family.
    family: int = attrs.field(init=False)
    #: True for a TCP wildcard listener (0.0.0.0 / ::), whose address is not
    #: its connections' local address.
    wildcard: bool = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.family = int(self.sock.family)
        address = self.address
        self.wildcard = isinstance(address, TCPAddress) and address.host in _ANY

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # close() only, never shutdown(): on a socket shared with other
        # processes that would reset the queue for all of them.
        self.sock.close()
        if self.inherited:
            return  # its path (if any) belongs to whoever bound it
        if self.unix_path is not None and self.unix_inode is not None:
            _unlink_if_same(self.unix_path, self.unix_inode)


def _backlog(backlog: int | None) -> int:
    return 0xFFFF if backlog is None else min(backlog, 0xFFFF)


def close_listeners(listeners: Sequence[Listener]) -> None:
    for listener in listeners:
        listener.close()


async def open_listeners(binds: Sequence[Bind]) -> list[Listener]:
    """Open every (resolved) bind, in order; on any failure close what was opened and raise.

    Each bind brings its own ``backlog`` and ``unix_mode``; the checks that
    need no I/O (an abstract name with ``unix_mode``) were made when the
    :class:`~trionet.Bind` was.

    Raises:
        InvalidAddress: a malformed spec.
        AddressInUse: the address is taken (or a live Unix socket is there).
        ListenError: any other failure to bind or listen.
    """
    opened: list[Listener] = []
    try:
        for bind in binds:
            inherited = _inherited.parse_inherited(bind.address)
            if inherited is not None:
                listeners = _open_inherited(inherited, bind)
            else:
                listeners = await _open_one(bind)
            for listener in listeners:
                listener.bind = bind
                opened.append(listener)
    except BaseException:
        close_listeners(opened)
        raise
    return opened


async def _open_one(resolved: Bind) -> list[Listener]:
    bind = resolved.address
    if isinstance(bind, _stdlib_socket.socket):
        # A real OS socket: a virtual network cannot simulate it.
        _virtual.refuse("trionet.serve", bind, "an existing OS socket")
        bind = trio.socket.from_stdlib_socket(bind)
    if isinstance(bind, trio.socket.SocketType):
        if raw_socket_of(bind) is not None:  # Trio's own socket: a real descriptor
            _virtual.refuse("trionet.serve", bind, "an existing OS socket")
        return [_adopt(bind)]
    address = parse_address(bind)
    backlog = _backlog(resolved.backlog)
    if isinstance(address, UnixAddress):
        return [await _open_unix(address, backlog, resolved)]
    return await _open_tcp(address, backlog, resolved)


def _set_options(sock: trio.socket.SocketType, bind: Bind) -> None:
    """``bind``'s ``SO_REUSEPORT`` and ``socket_options``, before ``bind()``.

    Raises:
        OSError: one was refused, its text naming it (the caller translates
            it to a ListenError naming the bind).
    """
    options: list[tuple[str, int, int, int | bytes]] = []
    if bind.reuse_port:
        reuse = getattr(_stdlib_socket, "SO_REUSEPORT", None)
        if reuse is None:  # pragma: no cover - platforms without it
            raise OSError(errno.ENOPROTOOPT, "no SO_REUSEPORT on this platform (reuse_port=True)")
        options.append(("reuse_port=True", _stdlib_socket.SOL_SOCKET, reuse, 1))
    for level, name, value in bind.socket_options or ():
        options.append((f"socket_options {(level, name, value)!r}", level, name, value))
    for said, level, name, value in options:
        try:
            sock.setsockopt(level, name, value)
        except OSError as exc:
            what = exc.strerror or str(exc)
            raise OSError(exc.errno, f"{what} (setting {said})") from exc


def _adopt(sock: trio.socket.SocketType) -> Listener:
    if sock.type != _stdlib_socket.SOCK_STREAM:
        raise LocalProtocolError(f"a listening socket must be SOCK_STREAM, got {sock.type!r}")
    try:
        accepting = sock.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_ACCEPTCONN)
    except OSError:
        accepting = 1  # not knowable here (e.g. a custom socket factory); trust the caller
    if not accepting:
        raise LocalProtocolError("the socket passed as a bind is not listening (call listen())")
    return Listener(sock, address_from_sockaddr(sock.family, sock.getsockname()))


def _open_inherited(spec: _inherited.InheritedSpec, bind: Bind) -> list[Listener]:
    """Adopt every descriptor ``spec`` names (closing what was adopted if one is refused)."""
    # Before the environment or any descriptor: a virtual network refuses it.
    _virtual.refuse("trionet.serve", str(spec), "an inherited descriptor")
    adopted: list[Listener] = []
    try:
        for fd in _inherited.descriptors(spec, take=True):
            raw = _inherited.adopt(spec, fd)
            try:
                if bind.backlog is not None:
                    raw.listen(_backlog(bind.backlog))
                address = address_from_sockaddr(raw.family, raw.getsockname())
            except OSError as exc:
                raw.close()
                raise translate_listen_error(exc, str(spec)) from exc
            except BaseException:
                raw.close()
                raise
            if (
                isinstance(address, TCPAddress)
                and bind.uses_proxy_protocol
                and not bind.trusted_proxies
            ):
                raw.close()
                raise ValueError(
                    f"Bind({str(spec)!r}): fd {fd} is a TCP socket ({address}), and "
                    "proxy_protocol='required' on TCP needs trusted_proxies, the CIDRs of "
                    "your load balancers: trusting every source would let any client claim "
                    "any address"
                )
            sock = trio.socket.from_stdlib_socket(raw)
            backlog = None if bind.backlog is None else _backlog(bind.backlog)
            adopted.append(Listener(sock, address, backlog=backlog, inherited=True))
            log.info("adopted inherited listening socket fd %d (%s) as %s", fd, spec, address)
    except BaseException:
        close_listeners(adopted)
        raise
    return adopted


async def _resolve_passive(address: TCPAddress) -> list[tuple[Any, ...]]:
    host = None if address.is_wildcard else address.host
    try:
        infos = await trio.socket.getaddrinfo(
            host,
            address.port,
            type=_stdlib_socket.SOCK_STREAM,
            # No AI_ADDRCONFIG: glibc ignores loopback addresses for it, so a
            # host (or container) whose only IPv6 address is ::1 would get
            # no IPv6 listener on "tcp://*:PORT" -- and ::1 clients would be
            # refused.  Families the kernel lacks are skipped in _open_tcp.
            flags=_stdlib_socket.AI_PASSIVE,
        )
    except OSError as exc:
        raise translate_listen_error(exc, address) from exc
    # One socket per (family, sockaddr); IPv6 first for wildcard is not needed,
    # keep the resolver's order but drop duplicates.
    seen = set()
    unique = []
    for family, type_, proto, _canon, sockaddr in infos:
        key = (family, sockaddr[:2])
        if key not in seen:
            seen.add(key)
            unique.append((family, type_, proto, sockaddr))
    if not unique:
        raise ListenError(errno.EADDRNOTAVAIL, f"cannot listen on {address}: no usable address")
    return unique


async def _open_tcp(address: TCPAddress, backlog: int, bind: Bind) -> list[Listener]:
    infos = await _resolve_passive(address)
    for _attempt in range(_DUAL_STACK_RETRIES):
        port = address.port
        opened: list[Listener] = []
        unsupported: list[OSError] = []
        try:
            for family, type_, proto, sockaddr in infos:
                try:
                    sock = trio.socket.socket(family, type_, proto)
                except OSError as exc:
                    if exc.errno != errno.EAFNOSUPPORT or len(infos) == 1:
                        raise
                    # As in trio.open_tcp_listeners: getaddrinfo offers both
                    # families even where the kernel has only one; listen on
                    # the ones that exist.
                    unsupported.append(exc)
                    continue
                try:
                    if os.name != "nt":
                        sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
                    if family == _stdlib_socket.AF_INET6:
                        sock.setsockopt(_stdlib_socket.IPPROTO_IPV6, _stdlib_socket.IPV6_V6ONLY, 1)
                    _set_options(sock, bind)
                    target = (sockaddr[0], port, *sockaddr[2:])
                    await sock.bind(target)
                    sock.listen(backlog)
                except OSError as exc:
                    sock.close()
                    if not (
                        address.is_wildcard and len(infos) > 1 and exc.errno == errno.EADDRNOTAVAIL
                    ):
                        raise
                    # A wildcard bind where one family exists but has no
                    # address (IPv6 disabled by sysctl: "::" is not
                    # available): listen on the families that work.
                    unsupported.append(exc)
                    continue
                except BaseException:
                    sock.close()
                    raise
                bound = address_from_sockaddr(family, sock.getsockname())
                assert isinstance(bound, TCPAddress)
                opened.append(Listener(sock, bound, backlog=backlog))
                port = bound.port
            if not opened:
                raise unsupported[0]
        except OSError as exc:
            close_listeners(opened)
            if exc.errno == errno.EADDRINUSE and address.port == 0 and opened:
                continue  # the ephemeral port was free on one family only: retry
            raise translate_listen_error(exc, address) from exc
        except BaseException:
            close_listeners(opened)
            raise
        return opened
    raise AddressInUse(
        errno.EADDRINUSE,
        f"cannot listen on {address}: no ephemeral port free on every address family",
    )


async def _probe_unix(path: str, address: UnixAddress) -> bool:
    """True if something accepts connections on the Unix socket at ``path``.

    Raises:
        ListenError: the probe failed for a reason that says nothing about
            whether a server is there (``EACCES``: no write permission on the
            file, ...).  The file is then left alone, and the caller learns
            the real reason rather than a misleading "address in use".
    """
    probe = trio.socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    try:
        with trio.move_on_after(2.0):
            await probe.connect(path)
            return True
        return True  # a connect that hangs means a live (if overloaded) listener
    except BlockingIOError:
        return True  # EAGAIN: the listener's queue is full -- very much alive
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise translate_listen_error(exc, address) from exc
    finally:
        probe.close()


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    # The inode number alone can be reused at once by some filesystems after
    # an unlink; a fresh bind() also sets a fresh ctime.
    return (st.st_dev, st.st_ino, st.st_ctime_ns)


async def _remove_stale(path: str, address: UnixAddress) -> None:
    """Unlink the socket file at ``path`` if nothing listens on it; else raise."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise translate_listen_error(exc, address) from exc
    if not stat.S_ISSOCK(before.st_mode):
        raise ListenError(
            errno.EEXIST, f"cannot listen on {address}: the path exists and is not a socket"
        )
    if await _probe_unix(path, address):
        raise AddressInUse(
            errno.EADDRINUSE, f"cannot listen on {address}: another process listens there"
        )
    # The probe yielded to the scheduler (and other processes ran): make sure
    # the file we are about to remove is still the one we found dead.  Two
    # servers starting at once on the same stale path would otherwise each
    # unlink the other's fresh socket.  (What remains is the few microseconds
    # between this lstat and the unlink.)
    try:
        after = os.lstat(path)
    except FileNotFoundError:
        return  # someone else removed it; bind() settles who gets the path
    except OSError as exc:
        raise translate_listen_error(exc, address) from exc
    if _identity(after) != _identity(before):
        raise AddressInUse(
            errno.EADDRINUSE,
            f"cannot listen on {address}: the socket file was replaced while we probed "
            "it (another server starting?)",
        )
    log.info("replacing stale Unix socket file %s", path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise translate_listen_error(exc, address) from exc


async def _open_unix(address: UnixAddress, backlog: int, bind: Bind) -> Listener:
    if _AF_UNIX is None:  # pragma: no cover - Windows without AF_UNIX
        raise ListenError(errno.EAFNOSUPPORT, f"cannot listen on {address}: no Unix sockets here")
    # Before any file system access (the stale-file probe, unlink, chmod):
    # a virtual network simulates TCP only and never touches the real system.
    _virtual.refuse("trionet.serve", str(address), "a Unix socket")
    path = address.path
    if not address.is_abstract:
        await _remove_stale(path, address)
    sock = trio.socket.socket(_stdlib_socket.AF_UNIX, _stdlib_socket.SOCK_STREAM)
    inode = None
    # Resolved now, next to bind(): the working directory may change later.
    absolute = None if address.is_abstract else _absolute(path)
    unix_mode = bind.unix_mode
    try:
        _set_options(sock, bind)
        await sock.bind(address.sockaddr)
        if absolute is not None:
            st = os.lstat(absolute)
            inode = (st.st_dev, st.st_ino)
            if unix_mode is not None:
                os.chmod(absolute, unix_mode)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if inode is not None and absolute is not None:
            _unlink_if_same(absolute, inode)
        raise translate_listen_error(exc, address) from exc
    except BaseException:
        sock.close()
        if inode is not None and absolute is not None:
            _unlink_if_same(absolute, inode)
        raise
    return Listener(sock, address, unix_inode=inode, unix_path=absolute, backlog=backlog)


def _absolute(path: str) -> str:
    # os.getcwd() and string work only: no file system access to block on.
    return os.path.abspath(path)


def _unlink_if_same(path: str, inode: tuple[int, int]) -> None:
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == inode:
            os.unlink(path)
    except OSError:
        pass
