"""Option validation shared by every public entry point: one rule per kind of option.

Every option of ``serve``/``open_server``, ``Bind``, ``connect``,
``ConnectionPool``, ``Connection``, ``Server.shutdown``/``drain_on_signals``
and the CLI is checked by the functions here, when the public call is *made*
-- before any socket is opened, any task started or any name resolved -- so
a typo in a config file fails at start-up, never at the first connection.

The two exceptions
==================
* ``TypeError``: the value is of the wrong *type* -- a ``bool`` where a
  number is expected (``True`` is an ``int`` to Python, never to us), a
  ``str``, ``None`` where the option has no "off" value, any other object.
* ``ValueError``: the type is right but the value is not -- negative, NaN,
  infinite where the option must be finite, zero where it must be positive,
  beyond what the kernel can apply.  NaN and infinity are bad *values* for
  every numeric option, integer options included: they are floats only
  because Python has no other way to spell them.

Every message names the public call and then the option
(``"serve(): keepalive must be ..."``, ``"Bind('tcp://0.0.0.0:443'): backlog
..."``), never an internal helper: the checks here name the option and
:func:`public_call` prefixes the call.  Values a check accepts come back
normalised (``float`` seconds, ``None`` for "no limit"), so callers keep what
the check returns.

The rule per kind of option
===========================
*Counts* (``backlog``, ``max_connections``, ``max_connections_per_host``,
``schedule_budget``, ``retries``, ``max_size``; signal numbers) --
:func:`check_count`: an ``int`` at least a minimum, or None where the option
documents None.  A float is the wrong type (``TypeError``: ``1.5`` and
``2.0`` alike), except NaN and infinity, which are ``ValueError``.

*Permission bits* (``unix_mode``) -- :func:`check_mode`: a count in
``0..0o7777``, or None.

*Seconds* -- :func:`check_seconds`: an ``int`` or ``float``; NaN and
negative values are ``ValueError``, and so is zero for an option that must be
positive.  Infinity depends on what the option bounds, and only on that:

* a *limit you may lift* -- ``timeout``, ``idle_timeout``,
  ``happy_eyeballs_delay``, ``grace``, ``shutdown_grace`` -- takes infinity
  as "no limit".  Where None also means "no limit" (``timeout``,
  ``idle_timeout``, ``happy_eyeballs_delay``) infinity is normalised to
  None (:func:`check_limit`, :func:`none_if_infinite`), so the two spellings
  make equal configurations; where None means "the default" (``grace``) it
  stays ``math.inf``, a wait without end (``shutdown_grace`` has no None).
* a *bound that protects the process* -- ``handshake_timeout`` and
  ``close_linger`` (without one, a silent peer holds a connection, a slot
  and a descriptor for good), ``backoff``/``max_backoff`` (an infinite
  pause is a retry that never happens) -- must be finite: infinity is a
  ``ValueError``.

An ``int`` too large for a float counts as infinite.

*TCP keepalive* (``keepalive``) -- :func:`check_keepalive`: a ``bool`` (the
one numeric option where a bool is meant: off, or on with the system's
timers), or the idle seconds, more than 0 and at most :data:`MAX_KEEPALIVE`
(the kernel's limit; infinity is a ``ValueError``).

*Switches* (``tcp_nodelay``) -- :func:`check_bool`: ``True`` or ``False``;
``1`` or ``"yes"`` is a ``TypeError``.

*Socket options* (``socket_options``) -- :func:`check_socket_options`: a
list or tuple of ``(level, name, value)`` tuples, as for ``setsockopt``:
``level`` and ``name`` ints in ``0..2**31-1``, ``value`` an int in a C
``int``'s range or ``bytes``; bools are refused as everywhere.  A wrong
type (the list, an item, a field) is a ``TypeError``, a wrong length or an
out-of-range int a ``ValueError``.  They come back as a tuple of tuples.

*Choices* (``handler_errors``; the CLI's ``--log-level``) --
:func:`check_choice`: a ``str`` among the choices; another ``str`` is a
``ValueError``, anything else a ``TypeError``.

*Networks* (``trusted_proxies``) -- :func:`check_cidrs`: an iterable of
CIDR strings (``"10.0.0.0/8"``; a single string is one network); a
non-string item or a non-iterable is a ``TypeError``, a malformed CIDR a
``ValueError``.  They come back as a tuple of normalised strings, with
IPv4-mapped IPv6 networks (``::ffff:10.0.0.0/104``) as the IPv4 ones.

*TLS* (``tls``) -- ``check_server_tls`` (``trionet._binds``) and
``check_client_tls`` (``trionet._client._plan``): an ``ssl.SSLContext`` or
the documented switches (None, False; ``True`` on clients); anything else is
a ``TypeError``, a context made for the other side a ``ValueError``.

*Addresses* (bind specs, targets, ``local_address``) are not numbers: a
malformed one -- a port of the wrong type included -- is
:class:`~trionet.InvalidAddress` (a ``ValueError``) naming the spec, the one
rule of ``trionet._address``.

When the checks run
===================
Synchronous entry points check in the constructor: ``Bind``,
``ServerConfig``, ``ConnectionPool``, ``Connection``.  Asynchronous ones
check in the first step of their coroutine -- when awaited, or started with
``nursery.start`` -- before its first checkpoint: ``serve``, ``connect``,
``Server.shutdown``, ``drain_on_signals``; ``open_server`` checks when its
``async with`` is entered, likewise before any checkpoint.  The command line
makes the same checks before ``trio.run``, and refuses what they refuse as a
usage error (exit 2) naming the flag; its own argument types refuse what
argparse can tell (a flag's value that is not a number at all) the same way.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import math
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

__all__ = [
    "MAX_KEEPALIVE",
    "MAX_MODE",
    "check_async_callable",
    "check_bool",
    "check_choice",
    "check_cidrs",
    "check_count",
    "check_integer",
    "check_keepalive",
    "check_limit",
    "check_mode",
    "check_names",
    "check_seconds",
    "check_socket_options",
    "is_async_callable",
    "none_if_infinite",
    "normalise_network",
    "public_call",
    "validator",
]

#: The largest idle time (seconds) ``TCP_KEEPIDLE`` accepts on Linux
#: (``MAX_TCP_KEEPIDLE`` in ``include/net/tcp.h``); larger values fail there.
MAX_KEEPALIVE: Final = 32767
#: The largest permission bits ``unix_mode`` takes (``chmod``'s 12 bits).
MAX_MODE: Final = 0o7777


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


def check_rate(name: str, value: object, *, none: bool = False) -> float | None:
    """A rate in bytes per second: a finite number > 0, or None if ``none`` allows it.

    Raises:
        TypeError: not an int/float (bools refused), or None when not allowed.
        ValueError: NaN, zero, negative or infinite (a rate no peer can meet
            would close every connection; None switches the check off).
    """
    if value is None and none:
        return None
    if not _is_number(value):
        kind = "None or a number of bytes per second" if none else "a number of bytes per second"
        raise TypeError(f"{name} must be {kind}, not {value!r}")
    rate = _as_float(value)  # type: ignore[arg-type]
    if math.isnan(rate) or rate <= 0 or math.isinf(rate):
        raise ValueError(f"{name} must be a finite number of bytes per second > 0, not {value!r}")
    return rate


def check_limit(name: str, value: object, *, zero: bool = False) -> float | None:
    """A limit in seconds you may lift: None or infinity for "no limit" (returned as None).

    Raises:
        TypeError: not None, an int or a float (bools refused).
        ValueError: NaN, negative, or zero unless ``zero`` allows it.
    """
    seconds = check_seconds(name, value, none=True, zero=zero)
    return None if seconds is None or math.isinf(seconds) else seconds


def none_if_infinite(value: float | None) -> float | None:
    """An attrs converter: positive infinity becomes None ("no limit"); anything else is kept.

    It runs before the field's validator, which still sees (and refuses) a
    value of the wrong type.
    """
    if _is_number(value) and _as_float(value) == math.inf:  # type: ignore[arg-type]
        return None
    return value


def check_integer(name: str, value: object, *, expected: str, none: bool = False) -> int | None:
    """An ``int`` (bools refused), or None if ``none`` allows it; the caller checks the range.

    ``expected`` says what the option takes (``"an int"``, ``"a permission
    int like 0o660"``) in the messages.

    Raises:
        TypeError: not an int -- a bool, a str, a finite float, None when not allowed.
        ValueError: NaN or infinity (a bad value whatever the option's type).
    """
    if value is None and none:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be {expected}, not {value!r}")
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be {expected}, not {value!r}")
    return value


def check_count(name: str, value: object, *, minimum: int, none: bool = False) -> int | None:
    """A whole number ``>= minimum``, or None if ``none`` allows it.

    Raises:
        TypeError: not an int (bools and finite floats refused), or None when
            not allowed.
        ValueError: below ``minimum``, NaN or infinite.
    """
    count = check_integer(name, value, expected="an int or None" if none else "an int", none=none)
    if count is not None and count < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value!r}")
    return count


def check_mode(name: str, value: object) -> int | None:
    """Permission bits for a Unix socket file (``0o660``), or None.

    Raises:
        TypeError: not an int (bools and finite floats refused).
        ValueError: outside ``0..0o7777``, NaN or infinite.
    """
    mode = check_integer(name, value, expected="a permission int like 0o660", none=True)
    if mode is not None and not 0 <= mode <= MAX_MODE:
        raise ValueError(f"{name} must be a permission int in 0..0o7777, not {value!r}")
    return mode


def check_bool(name: str, value: object) -> bool:
    """``True`` or ``False`` (not 1, not "yes").

    Raises:
        TypeError: anything else.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value


_C_INT_MIN: Final = -(2**31)
_C_INT_MAX: Final = 2**31 - 1


def check_socket_options(
    name: str, value: object, *, none: bool = False
) -> tuple[tuple[int, int, int | bytes], ...] | None:
    """``setsockopt`` arguments: a list/tuple of ``(level, name, value)`` tuples, or None.

    Raises:
        TypeError: not a list or tuple (or None where not allowed), an item
            that is not a tuple, a level or name that is not an int, a value
            that is neither an int nor bytes (bools refused).
        ValueError: an item of another length than 3; a level or name outside
            ``0..2**31-1``; an int value outside a C ``int``.
    """
    if value is None and none:
        return None
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"{name} must be a list of (level, name, value) tuples "
            f"([(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)]), not {value!r}"
        )
    out: list[tuple[int, int, int | bytes]] = []
    for item in value:
        if not isinstance(item, tuple):
            raise TypeError(f"{name} must hold (level, name, value) tuples, not {item!r}")
        if len(item) != 3:
            raise ValueError(f"{name} must hold (level, name, value) tuples of 3, not {item!r}")
        level, option, setting = item
        for field, number in (("level", level), ("name", option)):
            check_integer(f"{name}: {item!r}: {field}", number, expected="an int")
            if not 0 <= number <= _C_INT_MAX:
                raise ValueError(f"{name}: {item!r}: {field} must be in 0..2**31-1")
        if isinstance(setting, int) and not isinstance(setting, bool):
            if not _C_INT_MIN <= setting <= _C_INT_MAX:
                raise ValueError(f"{name}: {item!r}: an int value must fit a C int")
        elif not isinstance(setting, bytes):
            raise TypeError(f"{name}: {item!r}: the value must be an int or bytes")
        out.append((level, option, setting))
    return tuple(out)


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """One of the strings ``choices``.

    Raises:
        TypeError: not a str.
        ValueError: a str that is not one of ``choices``.
    """
    names = " or ".join(repr(choice) for choice in choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {names}, not {value!r}")
    if value not in choices:
        raise ValueError(f"{name} must be {names}, not {value!r}")
    return value


def check_cidrs(name: str, value: object, *, none: bool = False) -> tuple[str, ...] | None:
    """Networks: an iterable of CIDR strings (a single str is one), as normalised strings.

    Raises:
        TypeError: not an iterable of str (or None where not allowed).
        ValueError: a malformed CIDR.
    """
    if value is None and none:
        return None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of CIDR strings (['10.0.0.0/8']), not {value!r}")
    out = []
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold CIDR strings, not {item!r}")
        try:
            net = ipaddress.ip_network(item.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"{name}: {item!r} is not a CIDR network: {exc}") from None
        out.append(str(normalise_network(net)))
    return tuple(out)


def normalise_network(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv4-mapped IPv6 network as the IPv4 one (``::ffff:10.0.0.0/104`` is ``10.0.0.0/8``)."""
    if (
        isinstance(net, ipaddress.IPv6Network)
        and net.network_address.ipv4_mapped is not None
        and net.prefixlen >= 96
    ):
        return ipaddress.IPv4Network(
            f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}", strict=False
        )
    return net


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


def validator(check: Callable[..., object], /, **kwargs: Any) -> Callable[[object, Any, Any], None]:
    """An attrs validator running ``check(attribute.name, value, **kwargs)``.

    Example::

        backlog: int | None = attrs.field(
            default=None, validator=validator(check_count, minimum=0, none=True)
        )
    """

    def validate(instance: object, attribute: Any, value: Any) -> None:
        check(attribute.name, value, **kwargs)

    return validate
