"""What a supervisor will run, checked before anything is opened: a :class:`WorkerPlan`.

A worker is ``python -m trionet serve`` -- the command line is the one
interface a fresh interpreter can be given -- so a plan is built from the
``serve`` flags, whichever way the supervisor was started:

* ``trionet serve ... --workers N`` hands its parsed arguments to
  :func:`plan_from_args`;
* :func:`trionet.supervise` takes the same flags as keywords
  (``--max-per-host 5`` is ``max_per_host=5``), turns them into arguments,
  and goes through the same parser and the same checks
  (:func:`plan_from_options`).

Either way every flag is checked by the code ``trionet serve`` uses, TLS
files are loaded once, and the handler spec is resolved, before a socket is
opened or a process started.  The flags that shape the *listening* sockets
(``--bind``, ``--backlog``, ``--reuse-port``, ``--unix-mode``) are the
supervisor's: it opens every bind once.  Each worker gets the others, and
its sockets as ``--bind fd:N``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .._address import parse_address
from .._cli._args import MAX_WORKERS, UsageError, build_parser
from .._cli._binds import bind_roles, bind_specs, serve_binds
from .._cli._errors import CLIError
from .._cli._serve import check_serve, check_stats_file, resolve_handler, server_options
from .._inherited import check_inherited, parse_inherited
from .._validate import check_count, check_seconds, public_call

__all__ = ["SUPERVISOR_FLAGS", "WorkerPlan", "plan_from_args", "plan_from_options"]

#: ``serve`` flags that stay with the supervisor: they shape the listening
#: sockets (which it opens once), or are its own.
SUPERVISOR_FLAGS: Final = frozenset(
    {
        "bind",
        "plain_bind",
        "proxy_bind",
        "backlog",
        "reuse_port",
        "unix_mode",
        "workers",
        "ready_timeout",
        "worker_channel",
        "stats_file",
    }
)
#: Seconds a starting worker gets to be accepting (``--ready-timeout``).
DEFAULT_READY_TIMEOUT: Final = 30.0
_NOT_OPTIONS: Final = frozenset({"help", "handler", "command", "worker_channel", "workers"})


@attrs.frozen
class WorkerPlan:
    """Everything a supervisor needs, checked (internal)."""

    #: The ``serve`` HANDLER argument (``echo`` or ``MODULE:FUNCTION``).
    handler: str
    #: The bind specs, as given (the supervisor opens them).
    binds: tuple[str, ...]
    #: ``serve`` keyword options (what the supervisor's listeners need).
    options: Mapping[str, Any]
    #: The worker's ``serve`` flags, after HANDLER and before its ``--bind fd:N``.
    worker_flags: tuple[str, ...]
    workers: int
    grace: float
    ready_timeout: float
    #: ``--stats-file``: the supervisor writes every worker's snapshot there.
    stats_file: str | None = None
    stats_interval: float = 1.0
    #: Which flag each bind spec came from (``bind``, ``plain-bind``,
    #: ``proxy-bind``): a worker is given each descriptor opened for it under
    #: the same flag.  Empty: all ``bind``.
    roles: tuple[str, ...] = ()

    def command(
        self, fds: Sequence[int], channel: int, roles: Sequence[str] | None = None
    ) -> list[str]:
        """The worker's command line, given its listening descriptors and its channel.

        ``roles``: the flag for each descriptor (default ``bind`` for all).
        """
        roles = roles or ("bind",) * len(fds)
        binds = [
            arg for fd, role in zip(fds, roles, strict=True) for arg in (f"--{role}", f"fd:{fd}")
        ]
        return [
            sys.executable,
            "-m",
            "trionet",
            "serve",
            self.handler,
            *self.worker_flags,
            *binds,
            "--worker-channel",
            str(channel),
        ]


def plan_from_args(args: argparse.Namespace, *, import_handler: bool = True) -> WorkerPlan:
    """The plan for parsed ``serve`` arguments with ``--workers``.

    Raises:
        CLIError: what ``trionet serve`` would refuse (with its exit code).
    """
    binds = bind_specs(args)
    options = server_options(args)
    check_serve(serve_binds(args), options, args.grace)
    if args.worker_channel is not None:
        raise CLIError("--workers and --worker-channel cannot be used together", 2)
    stats_file = check_stats_file(args)
    if import_handler:
        resolve_handler(args.handler)  # a typo or an import error, said now
    flags = _worker_flags(args)
    stats_interval = 1.0 if args.stats_interval is None else args.stats_interval
    if stats_file is not None and args.stats_interval is None:
        flags.append(f"--stats-interval={stats_interval}")  # workers report to us
    return WorkerPlan(
        handler=args.handler,
        binds=tuple(binds),
        options=options,
        worker_flags=tuple(flags),
        workers=args.workers,
        grace=args.grace,
        ready_timeout=DEFAULT_READY_TIMEOUT if args.ready_timeout is None else args.ready_timeout,
        stats_file=stats_file,
        stats_interval=stats_interval,
        roles=tuple(bind_roles(args)),
    )


@functools.cache
def _serve_flags() -> dict[str, argparse.Action]:
    """The ``serve`` sub-command's flags that are options, by name (built once)."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            serve: argparse.ArgumentParser = action.choices["serve"]
            return {
                flag.dest: flag
                for flag in serve._actions
                if flag.option_strings and flag.dest not in _NOT_OPTIONS
            }
    raise AssertionError("the trionet parser has no serve sub-command")


def _as_args(action: argparse.Action, value: Any) -> list[str]:
    """``value`` (a checked one) as the flag's arguments, each ``--flag=VALUE``.

    One argument per value: a value that starts with ``-`` stays a value.
    """
    flag = action.option_strings[0]
    if isinstance(action, argparse._StoreTrueAction):
        return [flag] if value else []
    if isinstance(action, argparse._AppendAction):
        return [f"{flag}={item}" for item in value]
    return [f"{flag}={_text(value)}"]


def _worker_flags(args: argparse.Namespace) -> list[str]:
    """The flags a worker needs: every ``serve`` flag given, but the supervisor's."""
    flags: list[str] = []
    for name, action in _serve_flags().items():
        value = getattr(args, name, None)
        if name in SUPERVISOR_FLAGS or value is None or value == action.default:
            continue
        flags += _as_args(action, value)
    return flags


def _text(value: object) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return str(value)


def option_names() -> list[str]:
    """The keyword names :func:`trionet.supervise` accepts (the ``serve`` flags')."""
    return sorted(name for name in _serve_flags() if name not in {"bind", "ready_timeout"})


def plan_from_options(
    handler: object,
    binds: Sequence[object],
    workers: object,
    ready_timeout: object,
    options: Mapping[str, object],
    call: str = "supervise()",
) -> WorkerPlan:
    """The plan for :func:`trionet.supervise`'s arguments (the ``serve`` flags as keywords).

    Raises:
        TypeError: a value of the wrong type, or an unknown keyword.
        ValueError: a value ``trionet serve`` would refuse; the message names
            ``call`` and the option.
    """
    if not isinstance(handler, str):
        raise TypeError(
            f"{call}: handler must be a str ('echo' or 'MODULE:FUNCTION', which each worker "
            f"imports), not {type(handler).__name__}"
        )
    with public_call(call):
        count = check_count("workers", workers, minimum=1)
        check_seconds("ready_timeout", ready_timeout, zero=False, infinite=False)
    if count is not None and count > MAX_WORKERS:
        raise ValueError(f"{call}: workers must be <= {MAX_WORKERS}, not {count!r}")
    if handler.startswith("-"):
        raise ValueError(
            f"{call}: handler {handler!r} is not 'echo', 'discard', 'daytime', 'chargen' "
            "or 'MODULE:FUNCTION'"
        )
    argv = ["serve", handler, "--workers", str(workers)]
    for spec in binds:
        if not isinstance(spec, str):
            raise TypeError(
                f"{call}: binds must be str specs (a worker is given its sockets on its "
                f"command line), not {type(spec).__name__}"
            )
        # A bad spec, or LISTEN_* that do not name us, is InvalidAddress (as
        # from serve), not the command line's usage error.
        inherited = parse_inherited(spec)
        if inherited is None:
            parse_address(spec)
        else:
            check_inherited(inherited)
        argv.append(f"--bind={spec}")
    argv += _keyword_flags(call, {"ready_timeout": ready_timeout, **options})
    try:
        args = build_parser(raising=True).parse_args(argv)
    except UsageError as exc:
        raise ValueError(f"{call}: {_keywords(str(exc))}") from None
    try:
        return plan_from_args(args)
    except CLIError as exc:
        raise ValueError(f"{call}: {_keywords(str(exc))}") from None


def _keyword_flags(call: str, options: Mapping[str, object]) -> list[str]:
    flags: list[str] = []
    for name, value in options.items():
        action = _serve_flags().get(name) if name != "bind" else None
        if action is None:
            hint = ""
            if name == "tls":
                hint = (
                    " (an SSLContext cannot cross to a worker process: pass tls_cert= and "
                    "tls_key= files, which every new worker reads again -- how certificates "
                    "are rotated)"
                )
            raise TypeError(
                f"{call} got an unknown option {name!r}{hint}; the options are the "
                f"'trionet serve' flags as keywords: {', '.join(option_names())}"
            )
        if value is None:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise TypeError(f"{call}: {name} must be a bool, not {type(value).__name__}")
        elif isinstance(action, argparse._AppendAction):
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, (list, tuple)):
                raise TypeError(
                    f"{call}: {name} must be a str or a list of str, not {type(value).__name__}"
                )
        elif action.type is None or action.choices is not None:  # text: a path, a level
            if not isinstance(value, str):
                raise TypeError(f"{call}: {name} must be a str, not {type(value).__name__}")
        else:  # a number, checked by the flag's own type
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{call}: {name} must be a number, not {type(value).__name__}")
            if name == "unix_mode":
                with public_call(call):
                    check_count("unix_mode", value, minimum=0)
                value = f"{int(value):o}"
        flags += _as_args(action, value)
    return flags


def _keywords(message: str) -> str:
    """Say ``--max-per-host`` as ``max_per_host`` (the name the caller used)."""
    message = message.removeprefix("argument ")
    words = message.split(" ")
    for i, word in enumerate(words):
        head, sep, tail = word.partition("=")
        core = head.rstrip(":,")
        if core.startswith("--") and len(core) > 2:
            name = core[2:].replace("-", "_")
            words[i] = name + head[len(core) :] + sep + tail
            if "/" in words[i]:
                words[i] = words[i].split("/")[0]
    return " ".join(words)
