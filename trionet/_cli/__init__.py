"""The ``trionet`` command line: ``serve`` a handler, ``connect`` like netcat.

::

    trionet serve echo                                  # tcp://127.0.0.1:7007
    trionet serve chargen --bind tcp://[::1]:1919 --bind unix:/tmp/cg.sock
    trionet serve myapp.handlers:handle --deny 10.0.0.0/8 --max-connections 500
    trionet connect tcp://127.0.0.1:7007 < request.txt

This is the only package of trionet that prints: what a user asked for goes
to stdout (the bound addresses, the final report; for ``connect``, the data
received), diagnostics go to stderr through :mod:`logging`, configured by
``--log-level``.

One concept per module, each with its design notes at its top (the project
keeps modules under ~500 lines)::

    _errors    CLIError and the exit codes: every expected failure is one line
    _args      the argument parser and its argument types
    _serve     trionet serve: the checks before trio.run, then serve and drain
    _connect   trionet connect: stdin to the peer, the peer to stdout
    _signals   Ctrl-C from the first line to the last: the latch, the kept interrupt
    _main      main(): parse, run the sub-command, return the exit status

The two sub-commands share only the parser, the error contract and the
signal machinery; the last two are what the long design notes are about, so
each has a module of its own, and so does each sub-command.  Imports run
one way: ``_errors``, ``_args`` and ``_signals``, then ``_serve`` and
``_connect``, then ``_main``.

This package re-exports what ``trionet._launch`` (``main``) and the tests
use.  Importing it imports Trio: ``trionet._launch`` does that inside
``main``, where a Ctrl-C is exit 130 (``import trionet`` stays cheap).
"""

from ._args import DEFAULT_BIND, build_parser
from ._binds import bind_roles, bind_specs, serve_binds
from ._errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CLIError
from ._main import main
from ._serve import check_serve, resolve_handler, server_options

__all__ = [
    "DEFAULT_BIND",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CLIError",
    "bind_roles",
    "bind_specs",
    "build_parser",
    "check_serve",
    "main",
    "resolve_handler",
    "serve_binds",
    "server_options",
]
