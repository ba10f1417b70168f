"""What can go wrong, as the ``trionet`` command reports it: ``CLIError`` and the exit codes.

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
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CLIError",
    "option_message",
]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130


class CLIError(Exception):
    """An expected failure, reported as one line on stderr.

    Attributes:
        exit_code: the process exit status (``EXIT_USAGE`` or ``EXIT_ERROR``).
    """

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ServerConfig names options by their Python names; say them as flags.
_FLAG_NAMES: Final = {
    "max_connections_per_host": "--max-per-host",
    "max_connections": "--max-connections",
    "idle_timeout": "--idle-timeout",
    "shutdown_grace": "--grace",
    "unix_mode": "--unix-mode",
    "backlog": "--backlog",
    "reuse_port": "--reuse-port",
    "close_linger": "--close-linger",
    "min_receive_rate": "--min-receive-rate",
    "min_receive_grace": "--min-receive-grace",
    "handshake_timeout": "--handshake-timeout",
    "tls": "--tls-cert",
    "trusted_proxies": "--trusted-proxy",
    "proxy_protocol": "--proxy-protocol",
}


def option_message(message: str) -> str:
    """A library message (``serve(): max_connections must be ...``) said with its flag."""
    message = message.removeprefix("serve(): ")  # the library names its call; we name flags
    if message.startswith("Bind(") and "): " in message:
        message = message.split("): ", 1)[1]  # the message names the bind again
    for name, flag in _FLAG_NAMES.items():
        if message.startswith((name + " ", name + "=", name + ":")):
            return flag + message[len(name) :]
    return message
