"""``ServerConfig``: every option of ``serve``/``open_server``, validated at call time.

Every option defaults to "off" (``None``) or to a conservative value, and is
checked when ``serve``/``open_server`` is *called* -- before any socket is
opened -- so a typo in a config file fails at start-up with a message naming
the option, never at the first connection.  Wrong types raise ``TypeError``,
wrong values ``ValueError``, unknown names ``TypeError`` listing the valid ones.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ._admission import AccessPolicy
from ._connection import DEFAULT_SCHEDULE_BUDGET

__all__ = ["ServerConfig"]


def _opt_int(minimum: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be an int or None, not {value!r}")
        if value < minimum:
            raise ValueError(f"{attribute.name} must be >= {minimum}, not {value!r}")

    return check


def _opt_seconds(allow_zero: bool, allow_none: bool = True) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is None and allow_none:
            return
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be a number of seconds, not {value!r}")
        if math.isnan(value) or value < 0 or (value == 0 and not allow_zero):
            op = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"{attribute.name} must be {op} seconds, not {value!r}")

    return check


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
    if isinstance(value, bool):
        return
    if not isinstance(value, (int, float)):
        raise TypeError(f"keepalive must be a bool or a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"keepalive must be a bool or a positive number of seconds, not {value!r}")


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
    tcp_nodelay: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    #: ``SO_KEEPALIVE``: False, True (system timers) or idle seconds before probes.
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
    schedule_budget: int = attrs.field(default=DEFAULT_SCHEDULE_BUDGET, validator=_opt_int(1))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ServerConfig:
        """Build a config from ``serve``'s keyword options, naming any unknown one.

        Raises:
            TypeError: an unknown option name, or an option of the wrong type.
            ValueError: an option with a bad value.

        Example::

            config = ServerConfig.from_options({"max_connections": 100})
        """
        known = _FIELD_NAMES
        unknown = sorted(name for name in options if name not in known)
        if unknown:
            names = ", ".join(repr(n) for n in unknown)
            valid = ", ".join(sorted(known))
            raise TypeError(f"unknown server option(s) {names}; valid options are: {valid}")
        return cls(**options)


_FIELD_NAMES = frozenset(field.name for field in attrs.fields(ServerConfig))
