"""The ``trionet`` command line: ``serve`` a handler, ``connect`` like netcat.

::

    trionet serve echo                                  # tcp://127.0.0.1:7007
    trionet serve chargen --bind tcp://[::1]:1919 --bind unix:/tmp/cg.sock
    trionet serve myapp.handlers:handle --deny 10.0.0.0/8 --max-connections 500
    trionet connect tcp://127.0.0.1:7007 < request.txt

This is the only module of trionet that prints: what a user asked for goes
to stdout (the bound addresses, the final report; for ``connect``, the data
received), diagnostics go to stderr through :mod:`logging`, configured by
``--log-level``.

Errors and exit codes
=====================
A command line tool's errors are read by a person, so every *expected*
failure is reported as exactly one line on stderr, ``trionet: error: ...``,
with no traceback:

* **2 -- usage**: a bad flag or value, a malformed address spec
  (:class:`~trionet.InvalidAddress`), an option ``ServerConfig`` or
  ``AccessPolicy`` refuses, a combination the library refuses (``--unix-mode``
  with an abstract ``unix:@NAME``, which has no file to apply it to), an
  unknown service or an unimportable ``MODULE:FUNCTION``.  Everything that
  can be checked before any socket is opened is checked first -- by the
  library's own checks, ``check_serve_config`` (what ``serve`` checks) and
  ``check_grace`` (what ``drain_on_signals`` checks), called before
  ``trio.run`` and before the handler module is imported -- so a typo never
  half-starts a server, and no configuration error comes out of ``trio.run``
  as a traceback.
* **1 -- runtime**: the address is taken (:class:`~trionet.AddressInUse`) or
  cannot be listened on, a connection cannot be made or breaks, the user's
  handler module raises while being imported.
* **130 -- interrupted** by Ctrl-C before ``serve`` was ready to drain (or
  during ``connect``), like any shell command killed by SIGINT.  Nothing is
  printed.

Once ``serve`` is ready, SIGINT and SIGTERM start a graceful drain
(:func:`trionet.drain_on_signals`); a second signal cancels the remaining
handlers.  A drained server exits 0 after printing its
:class:`~trionet.ShutdownReport` and :class:`~trionet.ServerStats`.
Unexpected exceptions -- bugs -- keep their traceback.

Ctrl-C, from start to exit
==========================
*Ready* means: listening, with the drain's signal handlers installed; the
first ``listening on`` line is printed only then.

* **From the first line of** :func:`main` **until ready**, Ctrl-C is exit
  130 and not a word on stdout or stderr, wherever it lands:

  - parsing and checking the arguments, importing the handler module --
    plain ``KeyboardInterrupt``, caught by :func:`main`; one that lands in
    a finalizer or weakref callback (importlib runs one as every import
    ends), where Python would print it as "Exception ignored" and drop it,
    is kept and raised as soon as it can propagate
    (``_DroppedInterrupts``);
  - ``trio.run`` starting, listeners opening, the drain's handlers going
    in -- ``trio.run`` runs with ``restrict_keyboard_interrupt_to_checkpoints``,
    so the ``KeyboardInterrupt`` is raised in the main task at a checkpoint,
    never inside Trio or half-way through starting a task; the start-up
    unwinds (listeners closed) and :func:`main` returns 130.  One that
    came just before the drain's handlers is taken at a checkpoint before
    the ``listening on`` lines, so they are never followed by 130.

* **Ready**: the first SIGINT or SIGTERM drains, the second cancels the
  handlers, and any later one is ignored -- also one that arrives after
  the drain, while the report prints, ``trio.run`` returns or the
  interpreter shuts down: from the drain's end to the process's, SIGINT
  and SIGTERM are ignored (``_SignalLatch``), so a drained server exits 0.
* SIGTERM before ready keeps its default action (the process ends, -15).
* **Loading**: both entry points (the console script and ``python -m
  trionet``) call :func:`trionet._launch.main`, which imports this module --
  and with it Trio, most of the ~0.2 s start-up -- inside a ``try``: a
  Ctrl-C there is exit 130 too.  That works because ``import trionet``
  itself is cheap (the package loads its parts lazily).
* **Out of reach: before** :func:`trionet._launch.main` **runs** --
  interpreter start-up and importing ``trionet._launch`` (~20 ms).  No code
  of ours runs yet, so a Ctrl-C there is Python's own: a
  ``KeyboardInterrupt`` traceback and death by SIGINT (status -2, 130 in a
  shell), or "Fatal Python error" and status 1 during interpreter
  initialisation.
"""

from __future__ import annotations

import argparse
import errno
import functools
import importlib
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any, Final, NoReturn

import attrs
import trio

from .._address import parse_address
from .._client import ConnectPlan, connect_with_plan, make_plan
from .._config import ServerConfig
from .._stream import Connection
from .._exceptions import ConnectError, InvalidAddress, ListenError, LocalProtocolError
from .._server._admission import AccessPolicy
from .._server._drain import ShutdownReport, check_grace, drain_on_signals
from .._server._serve import Handler, check_serve_config, serve
from .._server._server import Server
from .._services import SERVICES
from .._unwrap import leaves, unwrap_single
from .._validate import is_async_callable
from .._version import __version__

log = logging.getLogger("trionet.cli")

__all__ = ["DEFAULT_BIND", "build_parser", "main"]

#: Where ``trionet serve`` listens when given no ``--bind`` (also ``make run``).
DEFAULT_BIND: Final = "tcp://127.0.0.1:7007"

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

#: What ``serve`` drains on (``drain_on_signals``' default, named here
#: because the CLI also handles them before and after it).
_DRAIN_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_READ_SIZE: Final = 65536


class CLIError(Exception):
    """An expected failure, reported as one line on stderr.

    Attributes:
        exit_code: the process exit status (``EXIT_USAGE`` or ``EXIT_ERROR``).
    """

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        # argparse prints the usage block and then the error; we keep to one
        # line and point at --help instead, so scripts and people see the
        # same "trionet: error: ..." shape for every failure.
        self.exit(EXIT_USAGE, f"trionet: error: {message} (see '{self.prog} --help')\n")


################################################################
# Argument types: each raises ArgumentTypeError with a readable message.
################################################################


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds > 0")
    return value


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _octal(text: str) -> int:
    digits = text[2:] if text.lower().startswith("0o") else text
    try:
        value = int(digits, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 660") from None
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (0-7777)")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``trionet`` argument parser (``serve`` and ``connect`` sub-commands).

    Returns:
        A parser whose errors print one ``trionet: error: ...`` line and exit 2.

    Example::

        >>> build_parser().parse_args(["serve", "echo"]).backlog is None
        True
    """
    parser = _Parser(
        prog="trionet",
        description="Structured-concurrency networking for Trio: serve and connect.",
    )
    parser.add_argument("--version", action="version", version=f"trionet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    srv = commands.add_parser(
        "serve",
        help="serve a handler until Ctrl-C or SIGTERM, then drain gracefully",
        description=(
            "Serve a built-in service (echo, discard, daytime, chargen) or your own "
            "handler (MODULE:FUNCTION, an async function taking a trionet.Connection). "
            "Ctrl-C or SIGTERM drains gracefully; a second signal cancels the handlers."
        ),
    )
    srv.add_argument(
        "handler",
        metavar="HANDLER",
        help="echo, discard, daytime, chargen, or MODULE:FUNCTION",
    )
    srv.add_argument(
        "--bind",
        action="append",
        metavar="SPEC",
        help=f"tcp://HOST:PORT, unix:PATH or unix:@NAME; repeatable (default {DEFAULT_BIND})",
    )
    srv.add_argument("--backlog", type=_count, metavar="N", help="listen() queue length")
    srv.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        metavar="S",
        help="seconds handlers get to finish on shutdown (default 10)",
    )
    srv.add_argument(
        "--allow", action="append", metavar="CIDR", help="admit only these networks (repeatable)"
    )
    srv.add_argument(
        "--deny", action="append", metavar="CIDR", help="refuse these networks (repeatable)"
    )
    srv.add_argument(
        "--max-connections", type=_count, metavar="N", help="handle at most N connections at once"
    )
    srv.add_argument(
        "--max-per-host", type=_count, metavar="N", help="at most N live connections per peer IP"
    )
    srv.add_argument(
        "--idle-timeout",
        type=_seconds,
        metavar="S",
        help="close connections idle (no bytes either way) for S seconds",
    )
    srv.add_argument(
        "--close-linger",
        type=_seconds,
        metavar="S",
        help="seconds a close may linger for the peer's EOF so that no reply is lost "
        "(default 5; 0 closes at once)",
    )
    srv.add_argument(
        "--unix-mode",
        type=_octal,
        metavar="OCTAL",
        help="permissions of Unix socket files, e.g. 660",
    )
    srv.add_argument("--log-level", choices=_LOG_LEVELS, default="info", help="default: info")

    con = commands.add_parser(
        "connect",
        help="connect and copy stdin to the peer and the peer to stdout (like netcat)",
        description=(
            "Connect to TARGET; copy stdin to the connection and the connection to stdout. "
            "When stdin ends the sending side is half-closed; the command exits when the "
            "peer closes the connection."
        ),
    )
    con.add_argument("target", metavar="TARGET", help="tcp://HOST:PORT or unix:PATH")
    con.add_argument("--local-address", metavar="IP", help="local IP address to connect from")
    con.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="S",
        help="give up connecting after S seconds (> 0)",
    )
    con.add_argument(
        "--close-linger",
        type=_seconds,
        metavar="S",
        help="seconds the final close may linger for the peer's EOF (default 5; 0: at once)",
    )
    con.add_argument("--log-level", choices=_LOG_LEVELS, default="warning", help="default: warning")
    return parser


################################################################
# serve
################################################################


def resolve_handler(spec: str) -> Handler:
    """Turn ``echo``/``discard``/``daytime``/``chargen`` or ``MODULE:FUNCTION`` into a handler.

    ``MODULE`` is imported with the current directory on ``sys.path`` (as
    ``python -m`` would), and ``FUNCTION`` may be a dotted path inside it.

    Args:
        spec: a built-in service name or ``MODULE:FUNCTION``.

    Returns:
        The handler.

    Raises:
        CLIError: unknown name, missing module or attribute, not callable
            (exit 2); the module raised while being imported (exit 1).

    Example::

        >>> resolve_handler("echo") is trionet.services.echo
        True
    """
    service = SERVICES.get(spec)
    if service is not None:
        return service
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        names = ", ".join(SERVICES)
        raise CLIError(
            f"unknown service {spec!r} (expected one of {names}, or MODULE:FUNCTION)",
            EXIT_USAGE,
        )
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if missing == module_name or module_name.startswith(missing + "."):
            raise CLIError(
                f"cannot import {module_name!r}: no module named {missing!r}", EXIT_USAGE
            ) from None
        log.debug("importing %r failed", module_name, exc_info=True)
        raise CLIError(_import_failed(module_name, exc)) from None
    except Exception as exc:
        log.debug("importing %r failed", module_name, exc_info=True)
        raise CLIError(_import_failed(module_name, exc)) from None
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(
                f"module {module_name!r} has no attribute {attr_path!r}", EXIT_USAGE
            ) from None
    if not callable(obj):
        raise CLIError(
            f"{spec!r} is a {type(obj).__name__}, not a handler (an async function)", EXIT_USAGE
        )
    if not is_async_callable(obj):
        raise CLIError(
            f"{spec!r} is not an async function (a handler must be 'async def handler(conn)')",
            EXIT_USAGE,
        )
    handler: Handler = obj
    return handler


def _import_failed(module_name: str, exc: BaseException) -> str:
    return (
        f"importing {module_name!r} failed: {type(exc).__name__}: {exc} "
        "(use --log-level debug for the traceback)"
    )


def server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``serve`` keyword options for parsed ``serve`` arguments, validated.

    Args:
        args: the namespace ``build_parser().parse_args(["serve", ...])`` returned.

    Returns:
        Keyword arguments for :func:`trionet.serve` (``ServerConfig`` fields).

    Raises:
        CLIError: a value ``ServerConfig`` or ``AccessPolicy`` refuses (exit 2).

    Example::

        >>> args = build_parser().parse_args(["serve", "echo", "--max-connections", "8"])
        >>> server_options(args)["max_connections"]
        8
    """
    try:
        access = None
        if args.allow is not None or args.deny is not None:
            access = AccessPolicy(allow=args.allow or None, deny=args.deny or ())
        options: dict[str, Any] = {
            "backlog": args.backlog,
            "shutdown_grace": args.grace,
            "access": access,
            "max_connections": args.max_connections,
            "max_connections_per_host": args.max_per_host,
            "idle_timeout": args.idle_timeout,
            "unix_mode": args.unix_mode,
        }
        if args.close_linger is not None:
            options["close_linger"] = args.close_linger
        ServerConfig(**options)  # validate now, before anything is opened
    except (TypeError, ValueError) as exc:
        raise CLIError(_option_message(str(exc)), EXIT_USAGE) from None
    return options


# ServerConfig names options by their Python names; say them as flags.
_FLAG_NAMES: Final = {
    "max_connections_per_host": "--max-per-host",
    "max_connections": "--max-connections",
    "idle_timeout": "--idle-timeout",
    "shutdown_grace": "--grace",
    "unix_mode": "--unix-mode",
    "backlog": "--backlog",
    "close_linger": "--close-linger",
}


def _option_message(message: str) -> str:
    message = message.removeprefix("serve(): ")  # the library names its call; we name flags
    if message.startswith("Bind(") and "): " in message:
        message = message.split("): ", 1)[1]  # the message names the bind again
    for name, flag in _FLAG_NAMES.items():
        if message.startswith((name + " ", name + "=")):
            return flag + message[len(name) :]
    return message


def bind_specs(args: argparse.Namespace) -> list[str]:
    """The ``--bind`` specs given, or ``[DEFAULT_BIND]``; each checked by ``parse_address``.

    Raises:
        CLIError: a malformed spec (exit 2).
    """
    binds: list[str] = args.bind or [DEFAULT_BIND]
    for spec in binds:
        try:
            parse_address(spec)
        except InvalidAddress as exc:
            raise CLIError(str(exc), EXIT_USAGE) from None
    return binds


def check_serve(binds: list[str], options: dict[str, Any], grace: float) -> None:
    """Whatever else the library checks before opening a socket, checked now.

    ``bind_specs`` and ``server_options`` check each spec and option on its
    own; some checks need several (``--unix-mode`` means nothing for an
    abstract ``unix:@NAME``).  Those are the library's own functions --
    ``check_serve_config``, which ``serve`` calls, and ``check_grace``,
    which ``drain_on_signals`` calls -- run before ``trio.run``, where
    their errors would otherwise come out as tracebacks.

    Raises:
        CLIError: anything they refuse (exit 2).

    Example::

        >>> args = build_parser().parse_args(
        ...     ["serve", "echo", "--bind", "unix:@x", "--unix-mode", "600"])
        >>> check_serve(bind_specs(args), server_options(args), args.grace)
        Traceback (most recent call last):
        trionet._cli.CLIError: --unix-mode=0o600 cannot apply to the abstract name unix:@x: ...
    """
    try:
        check_serve_config(binds, options)
        check_grace(grace)
    except (TypeError, ValueError, LocalProtocolError) as exc:  # InvalidAddress included
        raise CLIError(_option_message(str(exc)), EXIT_USAGE) from None


def _print(*parts: object) -> None:
    print(*parts, flush=True)


class _SignalLatch:
    """SIGINT and SIGTERM handling beneath ``drain_on_signals``' own handlers.

    ``drain_on_signals`` puts back whatever handlers it found when it
    returns.  Had it found the usual ones (Trio's KeyboardInterrupt for
    SIGINT, the default action for SIGTERM), a second Ctrl-C arriving just
    after the drain -- while the report prints, ``trio.run`` returns or the
    interpreter shuts down -- would turn a drained server's exit 0 into 130,
    a traceback, or death by signal.  So it finds this latch, a Python-level
    handler that only notes what came, and once it has returned
    :meth:`ignore` makes the signals ignored for the rest of the process
    (``SIG_IGN``, which the interpreter keeps through its own shutdown,
    unlike a Python-level handler).  No signal is ever left to a default
    disposition in between, and none is lost: one that lands in the instant
    between the latch and ``drain_on_signals``' handlers is
    :meth:`replay`-ed to them.
    """

    def __init__(self) -> None:
        self._caught: list[int] = []

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self._caught.append(signum)

    def install(self) -> None:
        for signum in _DRAIN_SIGNALS:
            signal.signal(signum, self._note)

    def replay(self) -> None:
        """Raise again what was caught so far (``drain_on_signals`` handles it now)."""
        caught, self._caught = self._caught, []
        for signum in caught:
            signal.raise_signal(signum)

    @staticmethod
    def ignore() -> None:
        for signum in _DRAIN_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


async def _serve(
    handler: Handler,
    binds: list[str],
    options: dict[str, Any],
    grace: float,
    interrupts: _DroppedInterrupts,
) -> None:
    # Trio's SIGINT handler is in place now, and never raises where it lands.
    interrupts.check()
    reports: list[ShutdownReport] = []
    latch = _SignalLatch()

    async def drain(server: Server, *, task_status: trio.TaskStatus[None]) -> None:
        # No checkpoint between the latch and drain_on_signals' handlers, nor
        # between those going and SIG_IGN (see _SignalLatch).
        latch.install()
        try:
            reports.append(
                await drain_on_signals(server, _DRAIN_SIGNALS, grace, task_status=task_status)
            )
        finally:
            latch.ignore()

    with unwrap_single():
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                functools.partial(serve, handler, *binds, **options)
            )
            # Install the signal handlers *before* saying we listen: whoever
            # waits for "listening on" may signal us the moment they see it.
            await nursery.start(drain, server)
            # A Ctrl-C that came before them is a KeyboardInterrupt Trio holds
            # for this task's next checkpoint: take it here, so that an
            # interrupted start-up never says "listening on".
            await trio.lowlevel.checkpoint()
            for address in server.addresses:
                _print(f"listening on {address}")
            latch.replay()
    report = reports[0]
    _print(
        f"shutdown: finished={report.finished} cancelled={report.cancelled} "
        f"swept={report.swept} elapsed={report.elapsed:.3f}s"
    )
    _print("stats: " + " ".join(f"{k}={v}" for k, v in attrs.asdict(server.stats).items()))


def _run_serve(args: argparse.Namespace, interrupts: _DroppedInterrupts) -> int:
    binds = bind_specs(args)
    options = server_options(args)
    check_serve(binds, options, args.grace)
    handler = resolve_handler(args.handler)
    try:
        trio.run(
            _serve,
            handler,
            binds,
            options,
            args.grace,
            interrupts,
            restrict_keyboard_interrupt_to_checkpoints=True,
        )
    except ListenError as exc:  # AddressInUse and unresolvable hosts included
        # str() of an OSError with an errno reads "[Errno 98] cannot listen
        # on ...: Address already in use"; the message alone is clearer.
        raise CLIError(exc.strerror or str(exc)) from None
    return EXIT_OK


################################################################
# connect
################################################################

# Why threads for stdin/stdout instead of trio.lowlevel.FdStream?  FdStream
# puts the descriptor in non-blocking mode, and that flag lives on the *open
# file description*, which a terminal shares with the shell and with our own
# stderr: a tty left non-blocking makes other writers fail with EAGAIN.
# Plain blocking reads in a worker thread work the same for a tty, a pipe, a
# regular file and /dev/null.  A read blocked on a terminal cannot be
# interrupted, so it is abandoned on cancellation (abandon_on_cancel=True);
# that is harmless, because the command exits right after.


def _read_stdin(fd: int) -> bytes:
    try:
        return os.read(fd, _READ_SIZE)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return b""  # no stdin at all (closed descriptor): nothing to send
        raise CLIError(f"cannot read stdin: {exc.strerror or exc}") from None


def _write_stdout(fd: int, data: bytes) -> bool:
    """Write all of ``data``; False if the reader of stdout has gone away (EPIPE)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        # ``trionet connect ... | head``: the reader has all it wanted.  Like
        # netcat (and like any filter killed by SIGPIPE, which Python ignores
        # in favour of EPIPE), that is a quiet end, not an error.
        return False
    except OSError as exc:
        raise CLIError(f"cannot write stdout: {exc.strerror or exc}") from None
    return True


async def _stdin_to_peer(conn: Connection, fd: int) -> None:
    while True:
        data = await trio.to_thread.run_sync(_read_stdin, fd, abandon_on_cancel=True)
        if not data:
            break
        try:
            await conn.send_all(data)
        except trio.BrokenResourceError:
            # The peer is gone; the receiving side reports how it ended.
            return
    try:
        await conn.send_eof()
    except trio.BrokenResourceError:
        return


async def _peer_to_stdout(conn: Connection, fd: int) -> None:
    while True:
        try:
            data = await conn.receive_some()
        except trio.BrokenResourceError:
            raise CLIError(f"connection to {conn.peer} was reset by the peer") from None
        if not data:
            return
        if not await trio.to_thread.run_sync(_write_stdout, fd, data):
            # Whoever read our output has gone (``| head``): like netcat,
            # stop at once -- no lingering close for a conversation nobody
            # is listening to any more.
            log.info("stdout was closed by its reader; closing the connection")
            conn.close()
            return


async def _connect(
    plan: ConnectPlan, stdin: int, stdout: int, interrupts: _DroppedInterrupts
) -> None:
    interrupts.check()  # as in _serve
    conn = await connect_with_plan(plan)
    log.info("connected to %s from %s", conn.peer, conn.local)
    async with conn:
        with unwrap_single():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stdin_to_peer, conn, stdin)
                await _peer_to_stdout(conn, stdout)
                # The peer closed, or stdout did: stop reading stdin, even a
                # terminal.
                nursery.cancel_scope.cancel()


def _run_connect(args: argparse.Namespace, interrupts: _DroppedInterrupts) -> int:
    options: dict[str, Any] = {}
    if args.timeout is not None:
        options["timeout"] = args.timeout
    if args.local_address is not None:
        options["local_address"] = args.local_address
    if args.close_linger is not None:
        options["close_linger"] = args.close_linger
    # Every argument is checked before any I/O, and whatever the checks
    # refuse is a usage error -- one line, exit 2 -- never a traceback.
    try:
        plan = make_plan(args.target, **options)
    except (ValueError, TypeError) as exc:  # InvalidAddress is a ValueError
        raise CLIError(str(exc), EXIT_USAGE) from None
    try:
        trio.run(_connect, plan, 0, 1, interrupts, restrict_keyboard_interrupt_to_checkpoints=True)
    except ConnectError as exc:  # ConnectTimeout included
        raise CLIError(str(exc)) from None
    return EXIT_OK


################################################################
# main
################################################################


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trionet`` command line.

    A ``serve`` that drained returns with SIGINT and SIGTERM ignored: the
    process is meant to exit right after, and a late Ctrl-C must not turn
    its clean exit into an interrupted one (see ``_SignalLatch``).

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 runtime error, 2 usage error,
        130 interrupted.

    Example::

        $ trionet serve echo --bind tcp://127.0.0.1:0
        listening on tcp://127.0.0.1:43117
    """
    try:  # first: a Ctrl-C from here on is exit 130, wherever it lands
        with _DroppedInterrupts() as interrupts:
            status = _main(argv, interrupts)
            interrupts.check()
            return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        if _only_interrupts(group):
            return EXIT_INTERRUPTED
        raise


def _main(argv: Sequence[str] | None, interrupts: _DroppedInterrupts) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format=_LOG_FORMAT, stream=sys.stderr)
    try:
        if args.command == "serve":
            return _run_serve(args, interrupts)
        return _run_connect(args, interrupts)
    except CLIError as exc:
        print(f"trionet: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


def _only_interrupts(group: BaseExceptionGroup[BaseException]) -> bool:
    """True for a group of KeyboardInterrupt (and the Cancelled it caused) only."""
    found = leaves(group)
    return any(isinstance(e, KeyboardInterrupt) for e in found) and all(
        isinstance(e, (KeyboardInterrupt, trio.Cancelled)) for e in found
    )


class _DroppedInterrupts:
    """Keep hold of a KeyboardInterrupt that Python prints as "Exception ignored" and drops.

    Outside ``trio.run`` a Ctrl-C raises KeyboardInterrupt wherever the main
    thread is -- which may be a weakref callback or a ``__del__`` (importlib
    runs one as every import ends, the user's handler module's included).
    An exception cannot propagate from there: Python prints its traceback
    and drops it, and the command would go on as if no Ctrl-C had come.
    While this is entered, such a KeyboardInterrupt is noted instead of
    printed, and :meth:`check` raises it where it propagates: in the first
    step of ``trio.run``'s main task (from then on Trio's SIGINT handler is
    in place, and it never raises where the signal lands) and when the
    command ends.  (Raising the signal again at once would not do: its
    handler would run inside the same callback.)
    """

    def __init__(self) -> None:
        self._dropped = False
        self._previous = sys.unraisablehook

    def _hook(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            self._dropped = True
        else:
            self._previous(unraisable)

    def __enter__(self) -> _DroppedInterrupts:
        self._previous = sys.unraisablehook
        sys.unraisablehook = self._hook
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.unraisablehook = self._previous

    def check(self) -> None:
        """Raise KeyboardInterrupt if one was dropped."""
        if self._dropped:
            raise KeyboardInterrupt
