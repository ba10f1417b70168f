"""The ``trionet`` command line (being split into small modules)."""

from ._serve import (
    DEFAULT_BIND,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CLIError,
    bind_specs,
    build_parser,
    check_serve,
    main,
    resolve_handler,
    server_options,
)

__all__ = [
    "DEFAULT_BIND",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CLIError",
    "bind_specs",
    "build_parser",
    "check_serve",
    "main",
    "resolve_handler",
    "server_options",
]
