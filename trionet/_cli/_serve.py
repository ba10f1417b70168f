"""``trionet serve``: check everything, import the handler, then serve until drained.

Everything that can be checked before a socket is opened is checked first,
in this order: the ``--bind`` specs (``bind_specs``), the options
(``server_options``), what needs several of them (``check_serve``), and
only then the handler (``resolve_handler``, which may import the user's
module) -- so a typo never half-starts a server, nor runs the user's code.
Then ``trio.run`` serves, prints ``listening on ...`` once the drain's
signal handlers are in place, and prints the shutdown report and the stats
when the drain is over (see ``_signals`` for the Ctrl-C story).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import socket
import sys
from typing import Any

import attrs
import trio

from .._binds import Bind, resolve_binds
from .._config import ServerConfig
from .._exceptions import InvalidAddress, ListenError, LocalProtocolError
from .._inherited import parse_inherited
from .._server._admission import AccessPolicy
from .._server._drain import ShutdownReport, check_grace, drain_on_signals
from .._server._serve import Handler, check_serve_config, serve
from .._server._server import Server
from .._services import SERVICES
from .._stats_file import MIN_INTERVAL, check_stats_path, write_stats
from .._unwrap import unwrap_single
from .._validate import is_async_callable
from ._args import DEFAULT_BIND
from ._binds import close_inherited, serve_binds
from ._errors import EXIT_OK, EXIT_USAGE, CLIError, option_message
from ._signals import DRAIN_SIGNALS, DroppedInterrupts, SignalLatch
from ._tls import server_context

log = logging.getLogger("trionet.cli")

__all__ = [
    "check_serve",
    "check_stats_file",
    "resolve_handler",
    "run_serve",
    "say",
    "server_options",
]


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
        CLIError: a value ``ServerConfig`` or ``AccessPolicy`` refuses, or TLS
            files that cannot be loaded (exit 2).

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
        if args.min_receive_rate is not None:
            options["min_receive_rate"] = args.min_receive_rate
        if args.min_receive_grace is not None:
            if args.min_receive_rate is None:
                raise CLIError("--min-receive-grace needs --min-receive-rate", EXIT_USAGE)
            options["min_receive_grace"] = args.min_receive_grace
        if args.close_linger is not None:
            options["close_linger"] = args.close_linger
        if args.reuse_port:
            options["reuse_port"] = True
        context = server_context(args)
        if context is not None:
            options["tls"] = context
        if args.trusted_proxy is not None and not args.proxy_protocol and not args.proxy_bind:
            raise CLIError("--trusted-proxy needs --proxy-protocol or --proxy-bind", EXIT_USAGE)
        if (
            args.proxy_bind
            and not args.trusted_proxy
            and any(
                not spec.startswith("unix:") and parse_inherited(spec) is None
                for spec in args.proxy_bind
            )
        ):
            raise CLIError(
                "--proxy-bind needs --trusted-proxy CIDR (the networks of your load "
                "balancers): trusting every source would let any client claim any address",
                EXIT_USAGE,
            )
        if args.proxy_protocol:
            if not args.trusted_proxy and any(
                not spec.startswith("unix:") and parse_inherited(spec) is None
                for spec in args.bind or [DEFAULT_BIND]
            ):  # an inherited socket's family is checked when it is adopted
                raise CLIError(
                    "--proxy-protocol needs --trusted-proxy CIDR (the networks of your load "
                    "balancers): trusting every source would let any client claim any address",
                    EXIT_USAGE,
                )
            options["proxy_protocol"] = "required"
            options["trusted_proxies"] = args.trusted_proxy or ()
        if args.handshake_timeout is not None:
            if context is None and not args.proxy_protocol and not args.proxy_bind:
                raise CLIError(
                    "--handshake-timeout needs --tls-cert, --proxy-protocol or --proxy-bind",
                    EXIT_USAGE,
                )
            options["handshake_timeout"] = args.handshake_timeout
        config = ServerConfig(**options)  # validate now, before anything is opened
        resolve_binds(serve_binds(args), config)  # and each bind with them
    except (TypeError, ValueError) as exc:
        raise CLIError(option_message(str(exc)), EXIT_USAGE) from None
    return options


def check_serve(binds: list[str | Bind], options: dict[str, Any], grace: float) -> None:
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
        >>> check_serve(serve_binds(args), server_options(args), args.grace)
        Traceback (most recent call last):
        trionet._cli._errors.CLIError: --unix-mode=0o600 cannot apply to the abstract name ...
    """
    try:
        check_serve_config(binds, options)
        check_grace(grace)
    except (TypeError, ValueError, LocalProtocolError) as exc:  # InvalidAddress included
        raise CLIError(option_message(str(exc)), EXIT_USAGE) from None


def say(*parts: object) -> None:
    """Print a line of the command's output; a reader that went away is no error.

    With stdout closed (``trionet serve ... | head -1``) the server goes on
    serving, and its later lines go nowhere -- as the shell's own tools do,
    without a ``BrokenPipeError`` traceback, now or at exit.
    """
    try:
        print(*parts, flush=True)
    except BrokenPipeError:
        # Python would try to flush stdout again at exit, and fail there.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


async def _serve(
    handler: Handler,
    binds: list[str | Bind],
    options: dict[str, Any],
    grace: float,
    interrupts: DroppedInterrupts,
    channel_sock: socket.socket | None = None,
    stats_file: str | None = None,
    stats_interval: float | None = None,
) -> None:
    # Trio's SIGINT handler is in place now, and never raises where it lands.
    interrupts.check()
    channel = None
    if channel_sock is not None:  # a worker of a supervisor (``--workers``)
        from .._workers import _worker

        channel = _worker.open_channel(channel_sock)
    reports: list[ShutdownReport] = []
    latch = SignalLatch()

    async def drain(server: Server, *, task_status: trio.TaskStatus[None]) -> None:
        # No checkpoint between the latch and drain_on_signals' handlers, nor
        # between those going and SIG_IGN (see SignalLatch).
        latch.install()
        try:
            reports.append(
                await drain_on_signals(server, DRAIN_SIGNALS, grace, task_status=task_status)
            )
        finally:
            latch.ignore()

    with unwrap_single():
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(
                functools.partial(serve, handler, *binds, **options)
            )
            close_inherited(binds)
            # Install the signal handlers *before* saying we listen: whoever
            # waits for "listening on" may signal us the moment they see it.
            await nursery.start(drain, server)
            # A Ctrl-C that came before them is a KeyboardInterrupt Trio holds
            # for this task's next checkpoint: take it here, so that an
            # interrupted start-up never says "listening on".
            await trio.lowlevel.checkpoint()
            if stats_file is not None:  # written once before "listening on"
                await nursery.start(
                    functools.partial(
                        write_stats, server, stats_file, interval=stats_interval or 1.0
                    )
                )
            if channel is not None:  # the supervisor says "listening on"
                await nursery.start(_worker.follow_supervisor, channel, server, grace)
                if stats_interval is not None:  # the supervisor writes the stats file
                    nursery.start_soon(_worker.report_stats, channel, server, stats_interval)
            else:
                for address in server.addresses:
                    say(f"listening on {address}")
            latch.replay()
    report = reports[0]
    if channel is not None:
        await _worker.say_exit(channel, _worker.exit_message(server, report))
        return
    say(
        f"shutdown: finished={report.finished} cancelled={report.cancelled} "
        f"in_stages={report.in_stages} swept={report.swept} elapsed={report.elapsed:.3f}s"
    )
    say("stats: " + " ".join(f"{k}={v}" for k, v in attrs.asdict(server.stats).items()))


def check_stats_file(args: argparse.Namespace) -> str | None:
    """``--stats-file`` checked (its directory exists), or None; ``--stats-interval`` needs it.

    Raises:
        CLIError: a bad path, or ``--stats-interval`` alone (exit 2).
    """
    if args.stats_interval is not None and args.stats_interval < MIN_INTERVAL:
        raise CLIError(f"--stats-interval must be >= {MIN_INTERVAL} seconds", EXIT_USAGE)
    if args.stats_file is None:
        if args.stats_interval is not None and args.worker_channel is None:
            raise CLIError("--stats-interval needs --stats-file", EXIT_USAGE)
        return None
    try:
        return check_stats_path("--stats-file", args.stats_file)
    except (TypeError, ValueError) as exc:
        message = str(exc).replace("--stats-file: path ", "--stats-file ")
        raise CLIError(message, EXIT_USAGE) from None


def run_serve(args: argparse.Namespace, interrupts: DroppedInterrupts) -> int:
    if args.workers is not None:
        from ._workers import run_workers

        return run_workers(args, interrupts)
    if args.ready_timeout is not None:
        raise CLIError("--ready-timeout needs --workers", EXIT_USAGE)
    stats_file = check_stats_file(args)
    options = server_options(args)
    binds = serve_binds(args)
    check_serve(binds, options, args.grace)
    handler = resolve_handler(args.handler)
    channel = None
    if args.worker_channel is not None:
        from .._workers._worker import channel_socket, ignore_hangup

        try:
            channel = channel_socket(args.worker_channel)
        except ValueError as exc:
            raise CLIError(str(exc), EXIT_USAGE) from None
        ignore_hangup()
    try:
        trio.run(
            _serve,
            handler,
            binds,
            options,
            args.grace,
            interrupts,
            channel,
            stats_file,
            args.stats_interval,
            restrict_keyboard_interrupt_to_checkpoints=True,
        )
    except ListenError as exc:  # AddressInUse and unresolvable hosts included
        # str() of an OSError with an errno reads "[Errno 98] cannot listen
        # on ...: Address already in use"; the message alone is clearer.
        raise CLIError(exc.strerror or str(exc)) from None
    except InvalidAddress as exc:  # an inherited descriptor refused when adopted
        raise CLIError(str(exc)) from None
    return EXIT_OK
