"""One table: every numeric and enum option of every public entry point, fed bad values.

The rules are ``trionet._validate``'s (its module notes give them per kind of
option); this table is where they are held to, everywhere at once:

* the wrong *type* -- ``bool`` for a number, ``str``, ``None`` where the
  option has no "off" value -- is a ``TypeError``;
* a bad *value* -- negative, NaN, infinity where the option must be finite,
  zero where it must be positive -- is a ``ValueError``, integer options
  included (NaN and infinity are never the wrong type);
* the message starts with the public call and then the option
  (``"serve(): backlog must be ..."``);
* the error comes before any I/O.  Synchronous entry points (``Bind``,
  ``ConnectionPool``, ``Connection``) raise when called; asynchronous ones
  (``serve``, ``connect``, ``Server.shutdown``, ``drain_on_signals``) when
  awaited, and ``open_server`` when its ``async with`` is entered -- in both
  cases before their first checkpoint, so the calls here run inside an
  already-cancelled scope (a checkpoint would raise ``Cancelled`` instead),
  with a socket factory and a resolver that refuse to be used;
* the command line refuses the same values (those a command line can spell)
  with exit status 2 and one ``trionet: error: ...`` line naming the flag,
  without ever reaching ``trio.run``.  (``inf`` is tried only for the flags
  whose option must be finite: ``--grace``, ``--idle-timeout`` and
  ``--timeout`` take it as "no limit", as the library does -- see
  ``test_cli.py``.)

The option lists are read from the signatures (``inspect.signature``, the
attrs fields of ``ServerConfig`` and ``Bind``, the argument parser): a new
numeric or enum option with no row here fails ``test_every_option_has_a_row``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
import signal
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
import trio

import trionet
from trionet._cli import build_parser, main
from trionet._client._plan import make_plan
from trionet._server._drain import check_grace
from trionet._stream._socket import SocketConnection
from trionet._validate import MAX_KEEPALIVE

NAN, INF = math.nan, math.inf
#: Where the servers here would listen, and the clients connect: loopback only.
LISTEN = "tcp://127.0.0.1:0"
#: Nothing listens on the discard port here; nothing connects to it either.
TARGET = "tcp://127.0.0.1:9"

_CLIENT_CONTEXT = ssl.create_default_context()
_SERVER_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


@attrs.frozen
class Bad:
    """A value an option must refuse, the exception, and how a command line spells it."""

    value: object
    error: type[Exception]
    #: The value as command-line text, or None if a command line cannot say it.
    cli: str | None = None


################################################################
# The bad values per kind of option (the kinds of trionet._validate)
################################################################


def count(minimum: int, *, none: bool) -> list[Bad]:
    bad = [
        Bad(minimum - 1, ValueError, str(minimum - 1)),
        Bad(-1, ValueError, "-1"),
        Bad(NAN, ValueError, "nan"),
        Bad(INF, ValueError, "inf"),
        Bad(-INF, ValueError, "-inf"),
        Bad(True, TypeError),
        Bad(False, TypeError),
        Bad("2", TypeError, "two"),
        Bad(1.5, TypeError, "1.5"),
        Bad(2.0, TypeError, "2.0"),
    ]
    if not none:
        bad.append(Bad(None, TypeError))
    return list({repr(b.value): b for b in bad}.values())  # -1 once when minimum is 0


def seconds(*, zero: bool, none: bool, infinite: bool) -> list[Bad]:
    bad = [
        Bad(-1, ValueError, "-1"),
        Bad(-0.5, ValueError, "-0.5"),
        Bad(NAN, ValueError, "nan"),
        Bad(-INF, ValueError, "-inf"),
        Bad(True, TypeError),
        Bad(False, TypeError),
        Bad("1", TypeError, "soon"),
        Bad(b"1", TypeError),
    ]
    if not zero:
        bad.append(Bad(0, ValueError, "0"))
    if not infinite:
        bad += [Bad(INF, ValueError, "inf"), Bad(10**400, ValueError, "1e400")]
    if not none:
        bad.append(Bad(None, TypeError))
    return bad


#: A rate in bytes per second (``min_receive_rate``): finite, > 0, or None (off).
RATE = [
    Bad(0, ValueError, "0"),
    Bad(-1, ValueError, "-1"),
    Bad(NAN, ValueError, "nan"),
    Bad(INF, ValueError, "inf"),
    Bad(-INF, ValueError, "-inf"),
    Bad(10**400, ValueError, "1e400"),
    Bad(True, TypeError),
    Bad("100", TypeError, "fast"),
]
KEEPALIVE = [
    Bad(0, ValueError),
    Bad(-1, ValueError),
    Bad(NAN, ValueError),
    Bad(INF, ValueError),
    Bad(MAX_KEEPALIVE + 1, ValueError),
    Bad("30", TypeError),
    Bad(None, TypeError),
]
SWITCH = [Bad(1, TypeError), Bad(0, TypeError), Bad("yes", TypeError), Bad(None, TypeError)]
MODE = [
    Bad(-1, ValueError, "-1"),
    Bad(0o10000, ValueError, "10000"),
    Bad(NAN, ValueError, "nan"),
    Bad(INF, ValueError, "inf"),
    Bad(True, TypeError),
    Bad("660", TypeError, "rw"),
    Bad(6.0, TypeError, "6.0"),
]
SERVER_TLS = [
    Bad(True, TypeError),
    Bad(1, TypeError),
    Bad("cert.pem", TypeError),
    Bad(_CLIENT_CONTEXT, ValueError),
]
CLIENT_TLS = [Bad("yes", TypeError), Bad(1, TypeError), Bad(_SERVER_CONTEXT, ValueError)]
SIGNALS = [
    Bad((), ValueError),
    Bad([NAN], ValueError),
    Bad([INF], ValueError),
    Bad([-1], ValueError),
    Bad([99999], ValueError),
    Bad([signal.SIGKILL], ValueError),
    Bad([True], TypeError),
    Bad([2.0], TypeError),
    Bad(["SIGINT"], TypeError),
    Bad(None, TypeError),
    Bad(2, TypeError),
]


def choice(*valid: str) -> list[Bad]:
    assert "bogus" not in valid
    return [
        Bad("bogus", ValueError, "bogus"),
        Bad(valid[0].upper(), ValueError, valid[0].upper()),
        Bad("", ValueError, ""),
        Bad(None, TypeError),
        Bad(True, TypeError),
        Bad(1, TypeError),
    ]


def cidrs(*, none: bool) -> list[Bad]:
    """Networks (``trusted_proxies``): an iterable of CIDR strings."""
    bad = [
        Bad(["10.0.0.0/33"], ValueError),
        Bad(["not a network"], ValueError),
        Bad([8], TypeError),
        Bad(b"10.0.0.0/8", TypeError),
        Bad(10, TypeError),
        Bad(True, TypeError),
    ]
    if not none:
        bad.append(Bad(None, TypeError))
    return bad


PROXY_PROTOCOL = choice("required", "off")


def socket_options(*, none: bool) -> list[Bad]:
    """``setsockopt`` arguments: a list of (level, name, int-or-bytes value)."""
    bad = [
        Bad((1, 8, 1), TypeError),  # one tuple, not a list of them
        Bad("SO_RCVBUF", TypeError),
        Bad([[1, 8, 1]], TypeError),
        Bad([(1, 8)], ValueError),
        Bad([(True, 8, 1)], TypeError),
        Bad([(1, 8.0, 1)], TypeError),
        Bad([(1, NAN, 1)], ValueError),
        Bad([(-1, 8, 1)], ValueError),
        Bad([(1, 8, 2**31)], ValueError),
        Bad([(1, 8, 1.5)], TypeError),
        Bad([(1, 8, False)], TypeError),
        Bad(5, TypeError),
    ]
    if not none:
        bad.append(Bad(None, TypeError))
    return bad


################################################################
# The table: entry point -> option -> bad values
################################################################

#: A limit you may lift (infinity and None: no limit) and a bound that must hold.
LIMIT = seconds(zero=False, none=True, infinite=True)
GRACE = seconds(zero=True, none=True, infinite=True)
LINGER = seconds(zero=True, none=False, infinite=False)

SERVER = {
    "backlog": count(0, none=True),
    "handler_errors": choice("log", "raise"),
    "shutdown_grace": seconds(zero=True, none=False, infinite=True),
    "tcp_nodelay": SWITCH,
    "keepalive": KEEPALIVE,
    "max_connections": count(1, none=True),
    "max_connections_per_host": count(1, none=True),
    "idle_timeout": LIMIT,
    "min_receive_rate": RATE,
    "min_receive_grace": seconds(zero=False, none=True, infinite=False),
    "unix_mode": MODE,
    "schedule_budget": count(1, none=False),
    "tls": SERVER_TLS,
    "handshake_timeout": seconds(zero=False, none=False, infinite=False),
    "close_linger": LINGER,
    "proxy_protocol": PROXY_PROTOCOL,
    "trusted_proxies": cidrs(none=False),
    "reuse_port": SWITCH,
    "socket_options": socket_options(none=False),
}
CONNECT = {
    "timeout": LIMIT,
    "retries": count(0, none=False),
    "backoff": seconds(zero=True, none=False, infinite=False),
    "max_backoff": seconds(zero=True, none=False, infinite=False),
    "happy_eyeballs_delay": seconds(zero=True, none=True, infinite=True),
    "keepalive": KEEPALIVE,
    "close_linger": LINGER,
    "tls": CLIENT_TLS,
    "proxy_header": [
        Bad("PROXY UNKNOWN\r\n", TypeError),
        Bad(5, TypeError),
        Bad(b"GET / HTTP/1.1\r\n", ValueError),
        Bad(b"PROXY UNKNOWN\r\nmore", ValueError),
        Bad(b"PROXY TCP4 1.2.3.4", ValueError),
    ],
}
TABLE: dict[str, dict[str, list[Bad]]] = {
    "serve": SERVER,
    "open_server": SERVER,
    "Bind": {
        "tls": SERVER_TLS,
        "backlog": count(0, none=True),
        "unix_mode": MODE,
        "handshake_timeout": seconds(zero=False, none=True, infinite=False),
        "proxy_protocol": [b for b in PROXY_PROTOCOL if b.value is not None],
        "trusted_proxies": cidrs(none=True),
        "reuse_port": [b for b in SWITCH if b.value is not None],
        "socket_options": socket_options(none=True),
    },
    "connect": CONNECT,
    "ConnectionPool": {"max_size": count(1, none=False), "idle_timeout": LIMIT, **CONNECT},
    "Connection": {"schedule_budget": count(1, none=False), "close_linger": LINGER},
    "Server.shutdown": {"grace": GRACE},
    "drain_on_signals": {"signals": SIGNALS, "grace": GRACE},
    "supervise": {
        "workers": [*count(1, none=False), Bad(1025, ValueError, "1025")],
        "ready_timeout": seconds(zero=False, none=False, infinite=False),
    },
    "write_stats": {"interval": seconds(zero=False, none=False, infinite=False)},
}

#: Options whose annotation mentions a number but that are not numbers: an
#: address follows the address rule (anything malformed is InvalidAddress).
NOT_NUMERIC = {("connect", "local_address"), ("ConnectionPool", "local_address")}

#: The public call each entry point's messages start with.
CALLS = {
    "serve": "serve()",
    "open_server": "open_server()",
    "Bind": f"Bind({LISTEN!r})",
    "connect": "connect()",
    "ConnectionPool": "ConnectionPool()",
    "Connection": "Connection()",
    "Server.shutdown": "Server.shutdown()",
    "drain_on_signals": "drain_on_signals()",
    "supervise": "supervise()",
    "write_stats": "write_stats()",
}


def _show(value: object) -> str:
    """A short, stable test id for a value."""
    if value is _CLIENT_CONTEXT or value is _SERVER_CONTEXT:
        return "client-context" if value is _CLIENT_CONTEXT else "server-context"
    text = repr(value)
    return text if len(text) <= 20 else f"{text[:8]}...({len(text)} chars)"


ROWS = [
    pytest.param(entry, option, bad, id=f"{entry}-{option}={_show(bad.value)}")
    for entry, options in TABLE.items()
    for option, bads in options.items()
    for bad in bads
]


################################################################
# The options the entry points declare
################################################################

_NUMERIC_OR_ENUM = re.compile(r"\b(int|float|bool|Literal)\b")


def _parameters(function: Callable[..., Any], *skip: str) -> dict[str, tuple[str, object]]:
    return {
        name: (str(p.annotation), p.default)
        for name, p in inspect.signature(function).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in skip
        and not name.startswith("_")
    }


def _fields(cls: type, *skip: str) -> dict[str, tuple[str, object]]:
    return {f.name: (str(f.type), f.default) for f in attrs.fields(cls) if f.name not in skip}


def declared_options() -> dict[str, dict[str, tuple[str, object]]]:
    """Every entry point's options: name -> (annotation, default)."""
    server = _fields(trionet.ServerConfig)
    connect = _parameters(trionet.connect, "target")
    return {
        "serve": server,
        "open_server": server,
        "Bind": _fields(trionet.Bind, "address"),
        "connect": connect,
        "ConnectionPool": {**_parameters(trionet.ConnectionPool, "target"), **connect},
        "Connection": _parameters(SocketConnection.__init__, "self", "socket", "peer", "local"),
        "Server.shutdown": _parameters(trionet.Server.shutdown, "self"),
        "drain_on_signals": _parameters(trionet.drain_on_signals, "server", "task_status"),
        "supervise": _parameters(trionet.supervise, "handler", "task_status"),
        "write_stats": _parameters(trionet.write_stats, "server", "path", "task_status"),
    }


def _is_numeric_or_enum(annotation: str, default: object) -> bool:
    return bool(_NUMERIC_OR_ENUM.search(annotation)) or isinstance(default, (int, float))


def test_every_option_has_a_row() -> None:
    declared = declared_options()
    assert declared.keys() == TABLE.keys()
    for entry, options in declared.items():
        wanted = {
            name
            for name, (annotation, default) in options.items()
            if _is_numeric_or_enum(annotation, default) and (entry, name) not in NOT_NUMERIC
        }
        assert wanted - TABLE[entry].keys() == set(), f"{entry}: options without a row"
        assert TABLE[entry].keys() - options.keys() == set(), f"{entry}: rows for no option"


def test_the_pool_takes_every_connect_option() -> None:
    # ConnectionPool's **connect_options are connect's: the table's rows for
    # them stand only if every connect option is one the pool takes.
    for name in _parameters(trionet.connect, "target"):
        with pytest.raises((TypeError, ValueError)) as info:
            trionet.ConnectionPool(TARGET, **{name: object()})
        assert "unknown option" not in str(info.value)


################################################################
# Calling each entry point, before any I/O
################################################################


class NoIO(trio.abc.SocketFactory, trio.abc.HostnameResolver):
    """Installed while a bad value is tried: any socket or name lookup is a failure."""

    def __init__(self) -> None:
        self.used: list[str] = []

    def socket(
        self, family: int | None = None, type: int | None = None, proto: int | None = None
    ) -> Any:
        self.used.append(f"socket({family}, {type})")
        raise AssertionError("a socket was made before the options were checked")

    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        self.used.append(f"getaddrinfo({host!r}, {port!r})")
        raise AssertionError("a name was resolved before the options were checked")

    async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        self.used.append(f"getnameinfo({sockaddr!r})")
        raise AssertionError("a name was resolved before the options were checked")


async def _handler(conn: trionet.Connection) -> None:  # pragma: no cover - never served
    await conn.send_all(b"never")


async def call(entry: str, options: dict[str, Any], server: trionet.Server, sock: Any) -> None:
    """Call ``entry`` with ``options``; if it returns, the value was accepted."""
    if entry == "serve":
        await trionet.serve(_handler, LISTEN, **options)
    elif entry == "open_server":
        async with trionet.open_server(_handler, LISTEN, **options):
            raise AssertionError("the body of open_server ran")  # pragma: no cover
    elif entry == "Bind":
        trionet.Bind(LISTEN, **options)
    elif entry == "connect":
        conn = await trionet.connect(TARGET, **options)  # pragma: no cover - refused
        conn.close()  # pragma: no cover
    elif entry == "ConnectionPool":
        trionet.ConnectionPool(TARGET, **options)
    elif entry == "Connection":
        trionet.Connection(sock, **options)
    elif entry == "Server.shutdown":
        await server.shutdown(**options)
    elif entry == "write_stats":
        await trionet.write_stats(server, "stats.json", **options)
    elif entry == "supervise":
        await trionet.supervise("echo", LISTEN, **{"workers": 1, **options})
    else:
        assert entry == "drain_on_signals"
        await trionet.drain_on_signals(server, **options)


@pytest.fixture
async def server() -> Any:
    async with trionet.open_server(_handler, LISTEN) as running:
        yield running


@pytest.fixture
def sock() -> Iterator[trio.socket.SocketType]:
    a, b = trio.socket.socketpair()
    with a, b:
        yield a


@pytest.mark.parametrize(("entry", "option", "bad"), ROWS)
async def test_bad_value_is_refused_at_call_time(
    entry: str, option: str, bad: Bad, server: trionet.Server, sock: trio.socket.SocketType
) -> None:
    no_io = NoIO()
    previous_factory = trio.socket.set_custom_socket_factory(no_io)
    previous_resolver = trio.socket.set_custom_hostname_resolver(no_io)
    try:
        with trio.CancelScope() as scope:
            scope.cancel()  # any checkpoint before the check raises Cancelled instead
            with pytest.raises(bad.error) as info:
                await call(entry, {option: bad.value}, server, sock)
    finally:
        trio.socket.set_custom_socket_factory(previous_factory)
        trio.socket.set_custom_hostname_resolver(previous_resolver)
    assert not scope.cancelled_caught, "a checkpoint came before the check"
    assert no_io.used == []
    assert type(info.value) is bad.error  # not a subclass (InvalidAddress, ...)
    message = str(info.value)
    assert message.startswith(f"{CALLS[entry]}: {option}"), message
    assert "Attribute(" not in message and "make_plan" not in message
    assert not server.draining and not server.stopped


################################################################
# What the rules accept: infinity as "no limit", and its normal form
################################################################


def test_infinity_is_no_limit_where_a_limit_may_be_lifted() -> None:
    # Where None means "no limit", infinity is the same configuration.
    assert trionet.ServerConfig(idle_timeout=INF) == trionet.ServerConfig(idle_timeout=None)
    assert trionet.ServerConfig(idle_timeout=10**400).idle_timeout is None
    pool = trionet.ConnectionPool(TARGET, idle_timeout=INF, timeout=INF)
    assert pool._idle.timeout is None  # no idle sweep at all
    assert pool._plan == make_plan(TARGET)
    assert make_plan(TARGET, timeout=INF, happy_eyeballs_delay=INF) == make_plan(
        TARGET, timeout=None, happy_eyeballs_delay=None
    )
    # Where None means "the default", infinity waits without limit.
    assert trionet.ServerConfig(shutdown_grace=INF).shutdown_grace == INF
    assert check_grace(INF, "drain_on_signals()") == INF


def test_the_edges_the_rules_accept() -> None:
    # Zero where an option allows it, keepalive's bools, the enums' values.
    config = trionet.ServerConfig(
        shutdown_grace=0, close_linger=0, keepalive=True, handler_errors="raise", unix_mode=0
    )
    assert (config.shutdown_grace, config.close_linger, config.unix_mode) == (0, 0, 0)
    assert (config.keepalive, config.handler_errors) == (True, "raise")
    assert trionet.ServerConfig(keepalive=MAX_KEEPALIVE, backlog=0).keepalive == MAX_KEEPALIVE
    bind = trionet.Bind(LISTEN, tls=False, backlog=0, handshake_timeout=1e-3)
    assert (bind.tls, bind.backlog, bind.handshake_timeout) == (False, 0, 1e-3)
    assert trionet.Bind("unix:/tmp/never-bound.sock", unix_mode=0o7777).unix_mode == 0o7777
    plan = make_plan(TARGET, backoff=0, max_backoff=0, happy_eyeballs_delay=0, retries=0)
    assert (plan.backoff, plan.max_backoff, plan.happy_eyeballs_delay, plan.retries) == (0, 0, 0, 0)


################################################################
# The command line
################################################################


def _flags() -> dict[tuple[str, str], argparse.Action]:
    """Every flag of every sub-command that takes a number or a choice."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        (command, action.option_strings[-1]): action
        for command, sub in commands.choices.items()
        for action in sub._actions
        if action.option_strings and (action.type is not None or action.choices is not None)
    }


#: Each flag -> the library option it sets (whose rule it follows).
CLI = {
    ("serve", "--backlog"): ("serve", "backlog"),
    ("serve", "--grace"): ("drain_on_signals", "grace"),
    ("serve", "--max-connections"): ("serve", "max_connections"),
    ("serve", "--max-per-host"): ("serve", "max_connections_per_host"),
    ("serve", "--idle-timeout"): ("serve", "idle_timeout"),
    ("serve", "--close-linger"): ("serve", "close_linger"),
    ("serve", "--min-receive-rate"): ("serve", "min_receive_rate"),
    ("serve", "--min-receive-grace"): ("serve", "min_receive_grace"),
    ("serve", "--unix-mode"): ("serve", "unix_mode"),
    ("serve", "--handshake-timeout"): ("serve", "handshake_timeout"),
    ("serve", "--log-level"): ("cli", "log_level"),
    ("serve", "--workers"): ("supervise", "workers"),
    ("serve", "--ready-timeout"): ("supervise", "ready_timeout"),
    ("serve", "--worker-channel"): ("cli", "worker_channel"),
    ("serve", "--stats-interval"): ("write_stats", "interval"),
    ("connect", "--timeout"): ("connect", "timeout"),
    ("connect", "--close-linger"): ("connect", "close_linger"),
    ("connect", "--log-level"): ("cli", "log_level"),
}
#: The flags that set no library option: their own bad values.
CLI_ONLY = {
    "log_level": choice("debug", "info", "warning", "error", "critical"),
    # Internal (a supervisor's worker): a descriptor number.
    "worker_channel": [
        Bad(-1, ValueError, "-1"),
        Bad("x", TypeError, "x"),
        Bad(2**31, ValueError, str(2**31)),
    ],
}


def _cli_rows() -> Iterator[Any]:
    for (command, flag), (entry, option) in CLI.items():
        bads = CLI_ONLY[option] if entry == "cli" else TABLE[entry][option]
        for bad in bads:
            if bad.cli is not None:
                yield pytest.param(command, flag, bad.cli, id=f"{command} {flag}={bad.cli}")


def test_every_flag_has_a_row() -> None:
    flags = _flags()
    assert flags.keys() - CLI.keys() == set(), "flags without a row"
    assert CLI.keys() - flags.keys() == set(), "rows for no flag"
    for flag, (entry, option) in CLI.items():
        assert entry == "cli" or option in TABLE[entry], (flag, entry, option)


@pytest.mark.parametrize(("command", "flag", "text"), list(_cli_rows()))
def test_bad_flag_is_a_usage_error_before_trio_runs(
    command: str,
    flag: str,
    text: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def no_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("trio.run was reached with a bad flag")

    monkeypatch.setattr(trio, "run", no_run)
    argv = ["serve", "echo", "--bind", LISTEN] if command == "serve" else ["connect", TARGET]
    try:
        status = main([*argv, f"{flag}={text}"])
    except SystemExit as exc:  # argparse's own usage errors
        assert isinstance(exc.code, int)
        status = exc.code
    assert status == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("trionet: error: ") and "Traceback" not in err
    assert flag in lines[0], lines[0]
