"""``ServerConfig``: every option of ``serve``/``open_server``, validated at call time.

Every option defaults to "off" (``None``) or to a conservative value, and is
checked when ``serve``/``open_server`` is *called* -- before any socket is
opened -- so a typo in a config file fails at start-up with a message naming
the call and the option, never at the first connection.  The checks are the
shared ones of ``trionet._validate``, whose module notes give the rule per
kind of option: wrong types raise ``TypeError``, wrong values (negative,
NaN, infinite where the option must be finite) ``ValueError``, unknown names
``TypeError`` listing the valid ones.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any, Final, Literal

import attrs

from ._binds import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    PROXY_PROTOCOL_CHOICES,
    SocketOptions,
    check_server_tls,
    cidrs_if_valid,
    socket_options_if_valid,
)
from ._server._admission import AccessPolicy
from ._stream import DEFAULT_CLOSE_LINGER, DEFAULT_SCHEDULE_BUDGET
from ._validate import (
    check_bool,
    check_choice,
    check_cidrs,
    check_count,
    check_keepalive,
    check_mode,
    check_names,
    check_rate,
    check_seconds,
    check_socket_options,
    is_async_callable,
    none_if_infinite,
    public_call,
    validator,
)

__all__ = ["DEFAULT_MIN_RECEIVE_GRACE", "HANDLER_ERRORS", "ServerConfig"]

#: ``min_receive_grace`` when not given (seconds).
DEFAULT_MIN_RECEIVE_GRACE: Final = 1.0

#: What ``handler_errors`` may be.
HANDLER_ERRORS: Final = ("log", "raise")


def _check_access(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or isinstance(value, AccessPolicy):
        return
    if not callable(value):
        raise TypeError(f"access must be an AccessPolicy or a callable, not {value!r}")
    # An async function would return a coroutine -- which is truthy, so it
    # would silently admit everybody.  Refuse it here, loudly (partials and
    # functools.wraps wrappers of one included: the handler's own rule).
    if is_async_callable(value):
        raise TypeError(
            f"access must be a synchronous callable returning bool, not the async {value!r}"
        )


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Options for :func:`trionet.serve` and :func:`trionet.open_server`.

    Every option is keyword-only and validated when the server is started;
    a bad value raises ``TypeError`` (the wrong type) or ``ValueError`` (a bad
    value) naming the option, by the rules of ``trionet._validate``.
    """

    #: ``listen()`` queue length; None = 65535 clamped by the kernel's somaxconn.
    backlog: int | None = attrs.field(
        default=None, validator=validator(check_count, minimum=0, none=True)
    )
    #: ``"log"``: a handler's exception is logged and counted, the server goes
    #: on; ``"raise"``: it propagates out of ``serve`` (for tests).
    handler_errors: Literal["log", "raise"] = attrs.field(
        default="log", validator=validator(check_choice, choices=HANDLER_ERRORS)
    )
    #: Grace period (seconds) used by ``open_server``'s exit and
    #: ``shutdown(None)``; ``math.inf`` waits for the handlers without limit.
    shutdown_grace: float = attrs.field(default=10.0, validator=validator(check_seconds))
    #: Set ``TCP_NODELAY`` on accepted TCP connections.
    tcp_nodelay: bool = attrs.field(default=True, validator=validator(check_bool))
    #: ``SO_KEEPALIVE``: False, True (system timers) or idle seconds before probes
    #: (whole seconds, 1 to 32767: the kernel's ``TCP_KEEPIDLE`` range).
    keepalive: bool | float = attrs.field(default=False, validator=validator(check_keepalive))
    #: Who may connect: an :class:`AccessPolicy` or a callable(ConnectionInfo) -> bool.
    access: Any = attrs.field(default=None, validator=_check_access)
    #: Most connections handled at once; beyond it accepting pauses (backpressure).
    max_connections: int | None = attrs.field(
        default=None, validator=validator(check_count, minimum=1, none=True)
    )
    #: Most live connections from one IP; excess ones are reset at once.
    max_connections_per_host: int | None = attrs.field(
        default=None, validator=validator(check_count, minimum=1, none=True)
    )
    #: Close a connection with no bytes in either direction for this many
    #: seconds (> 0); None or ``math.inf`` (stored as None): never.
    idle_timeout: float | None = attrs.field(
        default=None,
        converter=none_if_infinite,
        validator=validator(check_seconds, none=True, zero=False),
    )
    #: The slowloris defence (None: off): while a peer sends a message the
    #: server has not answered yet, it must average at least this many bytes
    #: per second, judged once it has been sending for ``min_receive_grace``
    #: seconds; a slower peer is closed (``stats.slow_closed``).  With
    #: ``max_connections``, the server also keeps accepting beyond the limit
    #: into a waiting room where the same rule is applied to what the kernel
    #: holds for each waiting peer (see the slow-clients how-to).
    min_receive_rate: float | None = attrs.field(
        default=None, validator=validator(check_rate, none=True)
    )
    #: Seconds a peer may send below ``min_receive_rate`` before it is judged
    #: (> 0, finite; None: :data:`DEFAULT_MIN_RECEIVE_GRACE`).  Only with
    #: ``min_receive_rate``.
    min_receive_grace: float | None = attrs.field(
        default=None, validator=validator(check_seconds, none=True, zero=False, infinite=False)
    )
    #: Permission bits for Unix socket files (applied before ``listen()``).
    unix_mode: int | None = attrs.field(default=None, validator=validator(check_mode))
    #: 1 = strict Trio (every call a schedule point); with N > 1, N - 1 immediately-completed
    #: receives in a row may skip theirs, the N-th yields, and a send always yields.
    schedule_budget: int = attrs.field(
        default=DEFAULT_SCHEDULE_BUDGET, validator=validator(check_count, minimum=1)
    )
    #: Serve TLS with this ``ssl.SSLContext`` (made for servers) on every bind
    #: that does not say otherwise (``Bind(..., tls=False)`` stays plain).
    tls: ssl.SSLContext | None = attrs.field(default=None, validator=validator(check_server_tls))
    #: Seconds all of a connection's stages (the TLS handshake) may take: > 0
    #: and finite (a peer that never finishes would hold its slot for good);
    #: a bind's own ``handshake_timeout`` overrides it.
    handshake_timeout: float = attrs.field(
        default=DEFAULT_HANDSHAKE_TIMEOUT,
        validator=validator(check_seconds, zero=False, infinite=False),
    )
    #: ``"required"``: every bind that does not say otherwise reads a PROXY
    #: protocol header (v1/v2) first, from ``trusted_proxies`` only; ``"off"``.
    proxy_protocol: Literal["required", "off"] = attrs.field(
        default="off", validator=validator(check_choice, choices=PROXY_PROTOCOL_CHOICES)
    )
    #: CIDRs of the proxies allowed to send PROXY headers, for every bind that
    #: does not give its own (normalised to a tuple of strings).
    trusted_proxies: tuple[str, ...] = attrs.field(
        default=(), converter=cidrs_if_valid, validator=validator(check_cidrs)
    )
    #: Seconds the server's close of a connection may linger for the peer's EOF
    #: when closing at once could discard a reply (see ``Connection.aclose``);
    #: 0 closes at once; finite (a silent peer would hold the descriptor).
    close_linger: float = attrs.field(
        default=DEFAULT_CLOSE_LINGER, validator=validator(check_seconds, infinite=False)
    )
    #: Set ``SO_REUSEPORT`` before ``bind()`` on every ``tcp://`` bind that
    #: does not say otherwise (independent processes sharing a port).
    reuse_port: bool = attrs.field(default=False, validator=validator(check_bool))
    #: ``setsockopt`` calls, ``(level, name, value)``, made before ``bind()``
    #: on every bind trionet opens that does not give its own list.
    socket_options: SocketOptions = attrs.field(
        default=(), converter=socket_options_if_valid, validator=validator(check_socket_options)
    )

    def __attrs_post_init__(self) -> None:
        if self.min_receive_grace is not None and self.min_receive_rate is None:
            raise ValueError(
                "min_receive_grace needs min_receive_rate (the grace of a rule that is off)"
            )

    @property
    def receive_grace(self) -> float:
        """``min_receive_grace``, or its default."""
        grace = self.min_receive_grace
        return DEFAULT_MIN_RECEIVE_GRACE if grace is None else grace

    @classmethod
    def from_options(cls, options: Mapping[str, Any], call: str = "serve()") -> ServerConfig:
        """Build a config from ``serve``'s keyword options, naming any unknown one.

        Args:
            options: the keyword options.
            call: the public call they were given to, named in error messages.

        Raises:
            TypeError: an unknown option name, or an option of the wrong type.
            ValueError: an option with a bad value.

        Example::

            config = ServerConfig.from_options({"max_connections": 100})
        """
        with public_call(call):
            check_names(options, _FIELD_NAMES)
            return cls(**options)


_FIELD_NAMES = frozenset(field.name for field in attrs.fields(ServerConfig))
