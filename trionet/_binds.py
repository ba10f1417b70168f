"""``Bind``: where a server listens, and how -- an address plus per-bind options.

``serve(handler, "tcp://0.0.0.0:80", Bind("tcp://0.0.0.0:443", tls=ctx))``
listens plain on one bind and TLS on the other.  A bind may be a plain spec
(a string, a ``(host, port)`` tuple, an address record, or a bound listening
socket) or a :class:`Bind`; either way every option it does not set comes
from the server-wide keyword option of the same name (``serve(...,
tls=ctx)`` makes every bind TLS unless one says ``tls=False``).

Everything is checked when the ``Bind`` is made, or when ``serve`` is
called for plain specs -- before any socket opens -- by the shared rules of
``trionet._validate``, with messages that name the bind and the option
(``Bind('tcp://0.0.0.0:443'): backlog must be >= 0, not -1``).
:func:`resolve_binds` turns the server's binds into fully resolved ``Bind``
records (no option left to inherit), which is what ``Server.binds`` shows,
one per listening socket, with the address it really bound.
"""

from __future__ import annotations

import socket as _stdlib_socket
import ssl
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
import trio

from . import _virtual
from ._address import Address, UnixAddress, parse_address
from ._inherited import check_inherited, parse_inherited
from ._validate import (
    check_bool,
    check_choice,
    check_cidrs,
    check_count,
    check_mode,
    check_seconds,
    check_socket_options,
    public_call,
)

if TYPE_CHECKING:
    from ._config import ServerConfig

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "PROXY_PROTOCOL_CHOICES",
    "Bind",
    "BindSpec",
    "check_server_tls",
    "SocketOptions",
    "cidrs_if_valid",
    "resolve_binds",
    "socket_options_if_valid",
]

#: What ``proxy_protocol`` may be.  There is no "optional": telling a header
#: from a client's first bytes stalls server-speaks-first protocols and is
#: ambiguous on a partial read.
PROXY_PROTOCOL_CHOICES = ("required", "off")

#: Seconds a connection's stages (TLS handshake, PROXY header) may take in all.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

#: What a bind may be: a spec string, a (host, port) tuple, an address record,
#: a bound listening socket, or a :class:`Bind`.
BindSpec = Any

#: ``setsockopt`` arguments applied before ``bind()``: ``(level, name, value)``.
SocketOptions = tuple[tuple[int, int, int | bytes], ...]

#: Why the socket options cannot apply to an inherited or adopted socket.
_ALREADY_BOUND = "inherited socket: already bound"


def _is_socket(value: object) -> bool:
    return isinstance(value, (_stdlib_socket.socket, trio.socket.SocketType))


def check_server_tls(name: str, value: object) -> ssl.SSLContext | Literal[False] | None:
    """A server-side TLS setting: an ``ssl.SSLContext`` for servers, False or None.

    Raises:
        TypeError: anything else.
        ValueError: a context made for clients (it cannot accept handshakes).
    """
    if value is None or value is False:
        return value
    if not isinstance(value, ssl.SSLContext):
        raise TypeError(f"{name} must be an ssl.SSLContext (or False for plain), not {value!r}")
    if value.protocol == ssl.PROTOCOL_TLS_CLIENT or value.check_hostname:
        raise ValueError(
            f"{name} is a client-side context; make a server one with "
            "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) and load_cert_chain()"
        )
    return value


def _check_address(instance: Bind, attribute: attrs.Attribute[Any], value: Any) -> None:
    if _is_socket(value) or parse_inherited(value) is not None:
        return  # parse_inherited raised if a fd:/systemd: spec is malformed
    parse_address(value)  # InvalidAddress names the spec


def _opt(check: Any) -> Any:
    def validate(instance: Bind, attribute: attrs.Attribute[Any], value: Any) -> None:
        with public_call(f"Bind({_describe(instance.address)})"):
            check(attribute.name, value)

    return validate


def _check_backlog(name: str, value: object) -> None:
    check_count(name, value, minimum=0, none=True)


def _check_proxy_protocol(name: str, value: object) -> None:
    if value is not None:
        check_choice(name, value, PROXY_PROTOCOL_CHOICES)


def _check_trusted(name: str, value: object) -> None:
    check_cidrs(name, value, none=True)


def cidrs_if_valid(value: Any) -> Any:
    """``trusted_proxies`` normalised (a tuple of CIDR strings) -- or as given,
    for the validator to refuse with a message naming the call and the bind.

    A one-shot iterable (a generator) is read once, into a list, first: the
    validator must see the same items.
    """
    if isinstance(value, Iterator):
        value = list(value)
    try:
        return check_cidrs("trusted_proxies", value, none=True)
    except (TypeError, ValueError):
        return value


def socket_options_if_valid(value: Any) -> Any:
    """``socket_options`` as a tuple of tuples -- or as given, for the
    validator to refuse with a message naming the call and the bind."""
    try:
        return check_socket_options("socket_options", value, none=True)
    except (TypeError, ValueError):
        return value


def _check_reuse_port(name: str, value: object) -> None:
    if value is not None:
        check_bool(name, value)


def _check_socket_options(name: str, value: object) -> None:
    check_socket_options(name, value, none=True)


def _check_handshake(name: str, value: object) -> None:
    check_seconds(name, value, none=True, zero=False, infinite=False)


def _describe(address: object) -> str:
    if _is_socket(address):
        return "<socket>"
    return repr(str(address)) if not isinstance(address, str) else repr(address)


@attrs.frozen
class Bind:
    """Where to listen, and how: an address and the options of this bind only.

    Every option left ``None`` comes from the server-wide keyword option of
    the same name (or its default).  In :attr:`Server.binds` every option is
    resolved and ``address`` is the address really bound.

    Example::

        plain = "tcp://0.0.0.0:8080"
        secure = trionet.Bind("tcp://0.0.0.0:8443", tls=context, handshake_timeout=5.0)
        server = await nursery.start(functools.partial(trionet.serve, handler, plain, secure))
    """

    #: ``"tcp://HOST:PORT"``, ``"unix:PATH"``, ``"unix:@NAME"``, ``(host, port)``,
    #: an address record, an already-bound listening socket, or an inherited
    #: one: ``"fd:N"``, ``"systemd"`` (every socket systemd passed) or
    #: ``"systemd:NAME"`` (those named ``NAME`` in ``LISTEN_FDNAMES``).
    address: Any = attrs.field(validator=_check_address)
    #: An ``ssl.SSLContext`` for a server (``ssl.create_default_context(
    #: ssl.Purpose.CLIENT_AUTH)``) to serve TLS; ``False`` to stay plain even if
    #: the server-wide ``tls`` option is set; None to follow it.
    tls: ssl.SSLContext | Literal[False] | None = attrs.field(
        default=None, validator=_opt(check_server_tls)
    )
    #: ``listen()`` queue length; None = the server's (65535, clamped by somaxconn).
    #: An inherited socket keeps the queue length it came with unless this
    #: (or the server's ``backlog``) is set: then ``listen()`` is called again
    #: with it, which resizes the queue without dropping what is queued.
    backlog: int | None = attrs.field(default=None, validator=_opt(_check_backlog))
    #: Permission bits for a Unix socket file; None = the server's.
    unix_mode: int | None = attrs.field(default=None, validator=_opt(check_mode))
    #: Seconds all of a connection's stages (the TLS handshake) may take, > 0
    #: and finite; None = the server's ``handshake_timeout`` (default 10).
    handshake_timeout: float | None = attrs.field(default=None, validator=_opt(_check_handshake))
    #: ``"required"``: every connection starts with a PROXY protocol header
    #: (v1 or v2) from one of ``trusted_proxies``, read as the first stage
    #: (before TLS); ``"off"``: none; None = the server's (default ``"off"``).
    proxy_protocol: Literal["required", "off"] | None = attrs.field(
        default=None, validator=_opt(_check_proxy_protocol)
    )
    #: CIDRs of the proxies allowed to send the header (``["10.0.0.0/8"]``);
    #: other sources are refused at accept.  Required with
    #: ``proxy_protocol="required"`` on TCP binds; None = the server's.
    trusted_proxies: tuple[str, ...] | None = attrs.field(
        default=None, converter=cidrs_if_valid, validator=_opt(_check_trusted)
    )
    #: ``True`` sets ``SO_REUSEPORT`` before ``bind()`` (TCP binds only), so
    #: independent processes may each listen on the same port and the kernel
    #: spreads connections among them; None = the server's (default False).
    #: Not for an inherited or adopted socket: it is already bound.
    reuse_port: bool | None = attrs.field(default=None, validator=_opt(_check_reuse_port))
    #: ``setsockopt`` calls made before ``bind()``, in order: a list of
    #: ``(level, name, value)`` (``[(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT,
    #: 5)]``), ``value`` an int or bytes; stored as a tuple.  None = the
    #: server's (default none); a bind's own list replaces the server's.  Not
    #: for an inherited or adopted socket: it is already bound.
    socket_options: SocketOptions | None = attrs.field(
        default=None, converter=socket_options_if_valid, validator=_opt(_check_socket_options)
    )

    def __attrs_post_init__(self) -> None:
        if self.proxy_protocol == "required" and self.trusted_proxies == ():
            _require_trusted(self)
        if self.reuse_port or self.socket_options:
            _check_opened(self)
        if self.unix_mode is not None and not _is_socket(self.address):
            if parse_inherited(self.address) is not None:
                raise ValueError(
                    f"Bind({_describe(self.address)}): unix_mode={self.unix_mode:#o} cannot "
                    "apply to an inherited socket: its file was made by whoever created it"
                )
            address = parse_address(self.address)
            if not isinstance(address, UnixAddress):
                raise ValueError(
                    f"Bind({_describe(self.address)}): unix_mode={self.unix_mode:#o} applies "
                    "to unix: socket files only"
                )
            if address.is_abstract:
                raise ValueError(
                    f"Bind({_describe(self.address)}): unix_mode={self.unix_mode:#o} cannot "
                    f"apply to the abstract name {address}: it has no file, hence no "
                    "permission bits (use AccessPolicy(unix_uids=...))"
                )

    @property
    def uses_tls(self) -> bool:
        """True if this (resolved) bind serves TLS."""
        return isinstance(self.tls, ssl.SSLContext)

    @property
    def uses_proxy_protocol(self) -> bool:
        """True if this (resolved) bind reads a PROXY protocol header first."""
        return self.proxy_protocol == "required"


def _check_opened(bind: Bind) -> None:
    """``reuse_port``/``socket_options`` need a socket we open: not an inherited one,
    and (``reuse_port``) not a Unix one."""
    said = "reuse_port=True" if bind.reuse_port else "socket_options"
    if _is_socket(bind.address) or parse_inherited(bind.address) is not None:
        raise ValueError(
            f"Bind({_describe(bind.address)}): {said} cannot apply: {_ALREADY_BOUND} "
            "(options set before bind() apply to the sockets trionet opens only)"
        )
    if bind.reuse_port and _unix_family(bind.address):
        raise ValueError(
            f"Bind({_describe(bind.address)}): reuse_port=True applies to tcp:// binds only"
        )


def _require_trusted(bind: Bind) -> None:
    """A TCP bind reading PROXY headers must say whom it trusts to send them."""
    if parse_inherited(bind.address) is not None:
        return  # its family is known once adopted: checked then (open_listeners)
    if _unix_family(bind.address):
        return  # the socket file's permissions say who may connect
    raise ValueError(
        f"Bind({_describe(bind.address)}): proxy_protocol='required' needs "
        "trusted_proxies, the CIDRs of your load balancers (['10.0.0.0/8']): "
        "trusting every source would let any client claim any address"
    )


def resolve_binds(binds: Sequence[BindSpec], config: ServerConfig) -> tuple[Bind, ...]:
    """Every bind as a :class:`Bind`, with the server-wide options filled in.

    Raises:
        InvalidAddress: a malformed spec.
        TypeError, ValueError: a bad option, or one that cannot apply to this
            bind (``unix_mode`` on an abstract name), naming the bind.
    """
    resolved = []
    for spec in binds:
        bind = spec if isinstance(spec, Bind) else Bind(spec)
        inherited = parse_inherited(bind.address)
        if inherited is not None:
            # Before the environment: a virtual network refuses these outright.
            _virtual.refuse("trionet.serve", str(inherited), "an inherited descriptor")
        reuse_port, socket_options = _sockopts(bind, config)
        if inherited is not None:
            check_inherited(inherited)  # LISTEN_* read, not removed; no descriptor touched
        tls = bind.tls if bind.tls is not None else (config.tls or False)
        unix_mode = bind.unix_mode
        if unix_mode is None and _is_unix(bind.address):
            unix_mode = config.unix_mode  # server-wide: for the unix: binds among them
        proxy_protocol = bind.proxy_protocol or config.proxy_protocol
        trusted = bind.trusted_proxies
        if trusted is None:
            trusted = config.trusted_proxies
        elif trusted and proxy_protocol != "required":
            raise ValueError(
                f"Bind({_describe(bind.address)}): trusted_proxies applies to "
                "proxy_protocol='required' only (this bind reads no PROXY header)"
            )
        resolved.append(
            Bind(
                bind.address,
                tls=tls,
                proxy_protocol=proxy_protocol,
                trusted_proxies=trusted if proxy_protocol == "required" else (),
                backlog=bind.backlog if bind.backlog is not None else config.backlog,
                unix_mode=unix_mode,
                handshake_timeout=(
                    bind.handshake_timeout
                    if bind.handshake_timeout is not None
                    else config.handshake_timeout
                ),
                reuse_port=reuse_port,
                socket_options=socket_options,
            )
        )
    if config.trusted_proxies and not any(bind.uses_proxy_protocol for bind in resolved):
        raise ValueError(
            "trusted_proxies applies to proxy_protocol='required' only, and no bind "
            "reads a PROXY header (say proxy_protocol='required', server-wide or per bind)"
        )
    return tuple(resolved)


def _sockopts(bind: Bind, config: ServerConfig) -> tuple[bool, SocketOptions]:
    """A bind's ``reuse_port`` and ``socket_options``, the server's filling in.

    The server-wide ``reuse_port`` is for the ``tcp://`` binds among them;
    server-wide ``socket_options`` for every bind trionet opens.  Either one,
    set server-wide, refuses an inherited or adopted bind unless that bind
    says ``reuse_port=False`` / ``socket_options=()`` itself: silently not
    applying them would be worse.
    """
    reuse_port = bind.reuse_port
    socket_options = bind.socket_options
    opened = not _is_socket(bind.address) and parse_inherited(bind.address) is None
    if reuse_port is None:
        reuse_port = config.reuse_port and not (opened and _unix_family(bind.address))
    if socket_options is None:
        socket_options = config.socket_options
    if not opened and (reuse_port or socket_options):
        said, off = (
            ("reuse_port=True", "reuse_port=False")
            if reuse_port
            else ("socket_options", "socket_options=()")
        )
        raise ValueError(
            f"Bind({_describe(bind.address)}): the server-wide {said} cannot apply: "
            f"{_ALREADY_BOUND} (say {off} on its Bind to leave it out)"
        )
    return reuse_port, socket_options


def _is_unix(address: object) -> bool:
    """True for a unix: spec (not an already-bound or inherited socket)."""
    if _is_socket(address) or parse_inherited(address) is not None:
        return False
    return _unix_family(address)


def _unix_family(address: object) -> bool:
    """True for a unix: spec or an already-bound Unix socket."""
    if _is_socket(address):
        return bool(address.family == _stdlib_socket.AF_UNIX)  # type: ignore[attr-defined]
    return isinstance(parse_address(address), UnixAddress)


def bound(bind: Bind, address: Address) -> Bind:
    """``bind`` as one of its listeners really bound it (``Server.binds``)."""
    return attrs.evolve(bind, address=address)
