"""``main()``: parse, run the sub-command, and turn how it ended into the exit status.

A ``CLIError`` is its one ``trionet: error: ...`` line and its exit code
(see ``_errors``); a Ctrl-C, wherever it lands, is exit 130 without a word
(see ``_signals``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Final

from ._args import build_parser
from ._connect import run_connect
from ._errors import EXIT_INTERRUPTED, CLIError
from ._serve import run_serve
from ._signals import DroppedInterrupts, only_interrupts

__all__ = ["main"]

_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: With worker processes, every line says which process wrote it.
_PROCESS_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trionet`` command line.

    A ``serve`` that drained returns with SIGINT and SIGTERM ignored: the
    process is meant to exit right after, and a late Ctrl-C must not turn
    its clean exit into an interrupted one (see ``_signals.SignalLatch``).

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
        with DroppedInterrupts() as interrupts:
            status = _main(argv, interrupts)
            interrupts.check()
            return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        if only_interrupts(group):
            return EXIT_INTERRUPTED
        raise


def _main(argv: Sequence[str] | None, interrupts: DroppedInterrupts) -> int:
    args = build_parser().parse_args(argv)
    processes = args.command == "serve" and (
        args.workers is not None or args.worker_channel is not None
    )
    log_format = _PROCESS_LOG_FORMAT if processes else _LOG_FORMAT
    logging.basicConfig(level=args.log_level.upper(), format=log_format, stream=sys.stderr)
    try:
        if args.command == "serve":
            return run_serve(args, interrupts)
        return run_connect(args, interrupts)
    except CLIError as exc:
        print(f"trionet: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
