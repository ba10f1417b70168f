"""``ServerConfig``: every option of ``serve``/``open_server``, validated at call time.

Every option defaults to "off" (``None``) or to a conservative value, and is
checked when ``serve``/``open_server`` is *called* -- before any socket is
opened -- so a typo in a config file fails at start-up with a message naming
the option, never at the first connection.  Wrong types raise ``TypeError``,
wrong values ``ValueError``, unknown names ``TypeError`` listing the valid ones.
"""

from __future__ import annotations

import inspect
import ssl
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ._binds import DEFAULT_HANDSHAKE_TIMEOUT, check_server_tls
from ._server._admission import AccessPolicy
from ._stream import DEFAULT_CLOSE_LINGER, DEFAULT_SCHEDULE_BUDGET
from ._validate import (
    check_bool,
    check_count,
    check_keepalive,
    check_names,
    check_seconds,
    public_call,
)

__all__ = ["ServerConfig"]


def _opt_int(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_count(attribute.name, value, minimum=minimum, none=True)

    return check


def _int(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_count(attribute.name, value, minimum=minimum)

    return check


def _opt_seconds(allow_zero: bool, allow_none: bool = True) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        check_seconds(attribute.name, value, none=allow_none, zero=allow_zero)

    return check


def _finite_seconds(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_seconds(attribute.name, value, infinite=False)


def _positive_finite_seconds(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_seconds(attribute.name, value, zero=False, infinite=False)


def _tls(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_server_tls(attribute.name, value)


def _bool(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_bool(attribute.name, value)


def _check_access(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or isinstance(value, AccessPolicy):
        return
    if not callable(value):
        raise TypeError(f"access must be an AccessPolicy or a callable, not {value!r}")
    # An async function would return a coroutine -- which is truthy, so it
    # would silently admit everybody.  Refuse it here, loudly.
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(
        getattr(value, "__call__", None)  # noqa: B004 - we want the bound __call__
    ):
        raise TypeError(
            f"access must be a synchronous callable returning bool, not the async {value!r}"
        )


def _check_handler_errors(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in ("log", "raise"):
        raise ValueError(f"handler_errors must be 'log' or 'raise', not {value!r}")


def _check_keepalive(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_keepalive(attribute.name, value)


def _check_mode(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"unix_mode must be a permission int like 0o660, not {value!r}")
    if not 0 <= value <= 0o7777:
        raise ValueError(f"unix_mode must be a permission int in 0..0o7777, not {value!r}")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Options for :func:`trionet.serve` and :func:`trionet.open_server`.

    Every option is keyword-only and validated when the server is started;
    a bad value raises ``TypeError``/``ValueError`` naming the option.
    """

    #: ``listen()`` queue length; None = 65535 clamped by the kernel's somaxconn.
    backlog: int | None = attrs.field(default=None, validator=_opt_int(0))
    #: ``"log"``: a handler's exception is logged and counted, the server goes
    #: on; ``"raise"``: it propagates out of ``serve`` (for tests).
    handler_errors: Literal["log", "raise"] = attrs.field(
        default="log", validator=_check_handler_errors
    )
    #: Grace period used by ``open_server``'s exit and ``shutdown(None)``.
    shutdown_grace: float = attrs.field(default=10.0, validator=_opt_seconds(True, False))
    #: Set ``TCP_NODELAY`` on accepted TCP connections.
    tcp_nodelay: bool = attrs.field(default=True, validator=_bool)
    #: ``SO_KEEPALIVE``: False, True (system timers) or idle seconds before probes
    #: (whole seconds, 1 to 32767: the kernel's ``TCP_KEEPIDLE`` range).
    keepalive: bool | float = attrs.field(default=False, validator=_check_keepalive)
    #: Who may connect: an :class:`AccessPolicy` or a callable(ConnectionInfo) -> bool.
    access: Any = attrs.field(default=None, validator=_check_access)
    #: Most connections handled at once; beyond it accepting pauses (backpressure).
    max_connections: int | None = attrs.field(default=None, validator=_opt_int(1))
    #: Most live connections from one IP; excess ones are reset at once.
    max_connections_per_host: int | None = attrs.field(default=None, validator=_opt_int(1))
    #: Close a connection with no bytes in either direction for this long.
    idle_timeout: float | None = attrs.field(default=None, validator=_opt_seconds(False))
    #: Permission bits for Unix socket files (applied before ``listen()``).
    unix_mode: int | None = attrs.field(default=None, validator=_check_mode)
    #: 1 = strict Trio (every call a schedule point); with N > 1, N - 1 immediately-completed
    #: receives in a row may skip theirs, the N-th yields, and a send always yields.
    schedule_budget: int = attrs.field(default=DEFAULT_SCHEDULE_BUDGET, validator=_int(1))
    #: Serve TLS with this ``ssl.SSLContext`` (made for servers) on every bind
    #: that does not say otherwise (``Bind(..., tls=False)`` stays plain).
    tls: ssl.SSLContext | None = attrs.field(default=None, validator=_tls)
    #: Seconds all of a connection's stages (the TLS handshake) may take; a
    #: bind's own ``handshake_timeout`` overrides it.
    handshake_timeout: float = attrs.field(
        default=DEFAULT_HANDSHAKE_TIMEOUT, validator=_positive_finite_seconds
    )
    #: Seconds the server's close of a connection may linger for the peer's EOF
    #: when closing at once could discard a reply (see ``Connection.aclose``);
    #: 0 closes at once.
    close_linger: float = attrs.field(default=DEFAULT_CLOSE_LINGER, validator=_finite_seconds)

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
