"""The ``trionet`` command's entry point: a Ctrl-C is exit 130 from its first line.

The command line lives in :mod:`trionet._cli`, whose imports (Trio and the
rest of trionet) take most of the command's start-up.  This module is all the
console script and ``python -m trionet`` import before calling :func:`main`
-- the ``trionet`` package imports its parts lazily -- so the heavy imports
happen *inside* ``main``, where a KeyboardInterrupt is the quiet exit 130
the command documents, not a traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Import and run the ``trionet`` command line (see :func:`trionet._cli.main`).

    Returns:
        The exit status; 130 if interrupted while the command was loading.
    """
    if _supervising(sys.argv[1:] if argv is None else argv):
        # A SIGHUP before the supervisor handles it would end it (its default
        # action).  Until then it has nothing to reload: the workers it will
        # start import everything afresh.  (See trionet._cli._workers.)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        from ._cli import main as cli_main
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return cli_main(argv)


def _supervising(argv: Sequence[str]) -> bool:
    """``serve ... --workers N``: a supervisor (a cheap look; the parser decides)."""
    return any(arg == "--workers" or arg.startswith("--workers=") for arg in argv)
