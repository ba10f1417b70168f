"""Option validation shared by every public entry point.

Every option of ``serve``/``open_server``, ``connect``, ``ConnectionPool``,
``Connection``, ``shutdown``/``drain_on_signals`` and the CLI is checked when
the public call is *made* -- before any socket is opened, any task started or
any name resolved -- so a typo in a config file fails at start-up, never at
the first connection.  The rules are the same everywhere:

* a value of the wrong *type* raises ``TypeError``: a ``bool`` where a number
  is expected (``True`` is an ``int`` to Python, never to us), a ``str``, or
  ``None`` where the option has no "off" value;
* a value of the right type but out of range raises ``ValueError``: a
  negative number, NaN, infinity where the option must be finite, a number
  beyond what the kernel can apply;
* the message names the public call and the option
  (``"serve(): keepalive must be ..."``), never an internal helper.

The checks here take the option's *name* and raise messages that start with
it; :func:`public_call` prefixes the call.  Values a check accepts come back
normalised (``float`` seconds), so callers keep what the check returns.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Final

__all__ = [
    "MAX_KEEPALIVE",
    "check_async_callable",
    "check_bool",
    "check_count",
    "check_keepalive",
    "check_names",
    "check_seconds",
    "is_async_callable",
    "public_call",
]

#: The largest idle time (seconds) ``TCP_KEEPIDLE`` accepts on Linux
#: (``MAX_TCP_KEEPIDLE`` in ``include/net/tcp.h``); larger values fail there.
MAX_KEEPALIVE: Final = 32767


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(value: int | float) -> float:
    # float(10**400) raises OverflowError: an int that large is infinite to us.
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


@contextmanager
def public_call(call: str) -> Iterator[None]:
    """Prefix the message of a plain ``TypeError``/``ValueError`` raised inside with ``call``.

    Subclasses (``InvalidAddress`` and friends) pass through unchanged: they
    carry their own, complete message.

    Example::

        with public_call("serve()"):
            check_seconds("idle_timeout", value)   # "serve(): idle_timeout must be ..."
    """
    try:
        yield
    except (TypeError, ValueError) as exc:
        if type(exc) not in (TypeError, ValueError) or str(exc).startswith(call):
            raise
        raise type(exc)(f"{call}: {exc}") from None


def check_seconds(
    name: str,
    value: object,
    *,
    none: bool = False,
    zero: bool = True,
    infinite: bool = True,
) -> float | None:
    """A number of seconds: ``float``, or None if ``none`` allows it.

    Raises:
        TypeError: not an int/float (bools refused), or None when not allowed.
        ValueError: NaN, negative, zero when ``zero`` is False, infinite when
            ``infinite`` is False.
    """
    if value is None and none:
        return None
    if not _is_number(value):
        kind = "None or a number of seconds" if none else "a number of seconds"
        raise TypeError(f"{name} must be {kind}, not {value!r}")
    seconds = _as_float(value)  # type: ignore[arg-type]
    bound = ">= 0" if zero else "> 0"
    if math.isnan(seconds) or seconds < 0 or (seconds == 0 and not zero):
        raise ValueError(f"{name} must be {bound} seconds, not {value!r}")
    if math.isinf(seconds) and not infinite:
        raise ValueError(f"{name} must be a finite number of seconds {bound}, not {value!r}")
    return seconds


def check_count(name: str, value: object, *, minimum: int, none: bool = False) -> int | None:
    """A whole number ``>= minimum``, or None if ``none`` allows it.

    Raises:
        TypeError: not an int (bools and floats refused), or None when not allowed.
        ValueError: below ``minimum``.
    """
    if value is None and none:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        kind = "an int or None" if none else "an int"
        raise TypeError(f"{name} must be {kind}, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``True`` or ``False`` (not 1, not "yes").

    Raises:
        TypeError: anything else.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


def check_keepalive(name: str, value: object) -> bool | float:
    """TCP keepalive: a bool, or the idle seconds before the first probe.

    Seconds are applied as whole seconds (at least 1) through
    ``TCP_KEEPIDLE``, whose kernel limit is :data:`MAX_KEEPALIVE`; a larger
    value would be refused (or silently ignored) by the kernel at the first
    connection, so it is refused here instead.

    Raises:
        TypeError: not a bool or a number.
        ValueError: NaN, not positive, infinite or above :data:`MAX_KEEPALIVE`.
    """
    if isinstance(value, bool):
        return value
    if not _is_number(value):
        raise TypeError(f"{name} must be a bool or a number of seconds, not {value!r}")
    seconds = _as_float(value)  # type: ignore[arg-type]
    if math.isnan(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a bool or a positive number of seconds, not {value!r}")
    if seconds > MAX_KEEPALIVE:
        raise ValueError(
            f"{name} must be at most {MAX_KEEPALIVE} seconds (the kernel's TCP_KEEPIDLE "
            f"limit), not {value!r}"
        )
    return seconds


def is_async_callable(value: object) -> bool:
    """True for an ``async def`` function, a ``functools.partial`` of one, an
    object whose ``__call__`` is ``async def``, or a decorator's wrapper of
    one of those that says so with ``functools.wraps`` (``__wrapped__``)."""
    while isinstance(value, functools.partial):
        value = value.func
    if inspect.iscoroutinefunction(value):
        return True
    if callable(value) and hasattr(value, "__wrapped__"):
        try:
            inner = inspect.unwrap(value)
        except ValueError:  # a __wrapped__ cycle
            return False
        if inner is not value:
            return is_async_callable(inner)
    if inspect.isfunction(value) or inspect.ismethod(value) or inspect.isbuiltin(value):
        return False
    call = getattr(type(value), "__call__", None)  # noqa: B004 - the class's __call__
    return call is not None and inspect.iscoroutinefunction(call)


def check_async_callable(name: str, value: object, *, takes: str) -> None:
    """An async callable (see :func:`is_async_callable`).

    Raises:
        TypeError: not callable, or callable but not ``async def``.
    """
    if not callable(value):
        raise TypeError(f"{name} must be an async function taking {takes}, not {value!r}")
    if not is_async_callable(value):
        raise TypeError(
            f"{name} must be an async function (async def) taking {takes}, not the "
            f"synchronous {value!r}"
        )


def check_names(given: Collection[str], known: Collection[str]) -> None:
    """Refuse unknown keyword options, listing the valid ones.

    Raises:
        TypeError: some name in ``given`` is not in ``known``.
    """
    unknown = sorted(name for name in given if name not in known)
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        valid = ", ".join(sorted(known))
        raise TypeError(f"unknown option(s) {names}; valid options are: {valid}")
