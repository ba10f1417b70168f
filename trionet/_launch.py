"""The ``trionet`` command's entry point: a Ctrl-C is exit 130 from its first line.

The command line lives in :mod:`trionet._cli`, whose imports (Trio and the
rest of trionet) take most of the command's start-up.  This module is all the
console script and ``python -m trionet`` import before calling :func:`main`
-- the ``trionet`` package imports its parts lazily -- so the heavy imports
happen *inside* ``main``, where a KeyboardInterrupt is the quiet exit 130
the command documents, not a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Import and run the ``trionet`` command line (see :func:`trionet._cli.main`).

    Returns:
        The exit status; 130 if interrupted while the command was loading.
    """
    try:
        from ._cli import main as cli_main
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return cli_main(argv)
