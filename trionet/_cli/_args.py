"""The ``trionet`` argument parser: the ``serve`` and ``connect`` sub-commands, their flags.

Every value is checked by its argument type as it is parsed, and every
parse error is one ``trionet: error: ...`` line and exit 2, like every
other usage error (see ``_errors``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Final, NoReturn

from .._validate import check_count, check_mode, check_rate, check_seconds
from .._version import __version__
from ._errors import EXIT_USAGE

__all__ = ["DEFAULT_BIND", "MAX_WORKERS", "UsageError", "build_parser"]

#: The most worker processes ``--workers`` starts (a typo guard, not a tuning knob).
MAX_WORKERS: Final = 1024

#: Where ``trionet serve`` listens when given no ``--bind`` (also ``make run``).
DEFAULT_BIND: Final = "tcp://127.0.0.1:7007"

_LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        # argparse prints the usage block and then the error; we keep to one
        # line and point at --help instead, so scripts and people see the
        # same "trionet: error: ..." shape for every failure.
        self.exit(EXIT_USAGE, f"trionet: error: {message} (see '{self.prog} --help')\n")


class UsageError(Exception):
    """What a :func:`build_parser` ``(raising=True)`` parser raises instead of exiting."""


class _RaisingParser(_Parser):
    """A parser for the Python entry points: errors are exceptions, nothing is printed."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


################################################################
# Argument types: each raises ArgumentTypeError with a readable message.
################################################################


def _seconds(*, zero: bool = True, infinite: bool = False) -> Callable[[str], float]:
    """An argument type for seconds, by the library's rule (``check_seconds``).

    ``inf`` is accepted where the option is a limit you may lift (``--grace``,
    ``--idle-timeout``, ``--timeout``): "no limit", as in the library.
    """
    bound = ">= 0" if zero else "> 0"
    finite = "" if infinite else "finite "

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        try:
            check_seconds("value", value, zero=zero, infinite=infinite)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a {finite}number of seconds {bound}"
            ) from None
        return value

    return seconds


def _rate(text: str) -> float:
    """An argument type for a rate in bytes per second (``check_rate``): finite, > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes per second") from None
    try:
        check_rate("value", value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a finite number of bytes per second > 0"
        ) from None
    return value


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    try:
        check_count("value", value, minimum=0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is negative") from None
    return value


def _octal(text: str) -> int:
    digits = text[2:] if text.lower().startswith("0o") else text
    try:
        value = int(digits, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 660") from None
    try:
        check_mode("value", value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a permission mode (0-7777)") from None
    return value


def _workers(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a supervisor runs 1 to {MAX_WORKERS} worker processes"
        )
    return value


def _descriptor(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a descriptor number") from None
    if not 0 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a descriptor number")
    return value


def build_parser(*, raising: bool = False) -> argparse.ArgumentParser:
    """The ``trionet`` argument parser (``serve`` and ``connect`` sub-commands).

    Args:
        raising: errors raise :class:`UsageError` instead of printing and
            exiting (for :func:`trionet.supervise`).

    Returns:
        A parser whose errors print one ``trionet: error: ...`` line and exit 2.

    Example::

        >>> build_parser().parse_args(["serve", "echo"]).backlog is None
        True
    """
    parser_class = _RaisingParser if raising else _Parser
    parser = parser_class(
        prog="trionet",
        description="Structured-concurrency networking for Trio: serve and connect.",
    )
    parser.add_argument("--version", action="version", version=f"trionet {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=parser_class
    )

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
        help=(
            "tcp://HOST:PORT, unix:PATH, unix:@NAME, or an inherited socket: fd:N, "
            f"systemd, systemd:NAME; repeatable (default {DEFAULT_BIND})"
        ),
    )
    srv.add_argument(
        "--plain-bind",
        action="append",
        metavar="SPEC",
        help="like --bind, but this one serves plain TCP: no TLS and no PROXY header, "
        "whatever --tls-cert and --proxy-protocol say (repeatable)",
    )
    srv.add_argument(
        "--proxy-bind",
        action="append",
        metavar="SPEC",
        help="like --bind, but this one reads a PROXY header first (from --trusted-proxy "
        "sources), then plain TCP: a load balancer's port (repeatable)",
    )
    srv.add_argument("--backlog", type=_count, metavar="N", help="listen() queue length")
    srv.add_argument(
        "--reuse-port",
        action="store_true",
        help="set SO_REUSEPORT on the tcp:// listeners (independent processes sharing a port)",
    )
    srv.add_argument(
        "--grace",
        type=_seconds(infinite=True),
        default=10.0,
        metavar="S",
        help="seconds handlers get to finish on shutdown (default 10; inf: no limit)",
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
        type=_seconds(zero=False, infinite=True),
        metavar="S",
        help="close connections idle (no bytes either way) for S seconds",
    )
    srv.add_argument(
        "--min-receive-rate",
        type=_rate,
        metavar="BYTES_PER_S",
        help="slowloris defence: close a peer that sends a message the server has not "
        "answered slower than this on average (judged after --min-receive-grace); with "
        "--max-connections, also keep accepting into a waiting room judged the same way",
    )
    srv.add_argument(
        "--min-receive-grace",
        type=_seconds(zero=False),
        metavar="S",
        help="seconds a peer may send below --min-receive-rate before it is judged (default 1)",
    )
    srv.add_argument(
        "--close-linger",
        type=_seconds(),
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
    tls = srv.add_argument_group(
        "TLS", "serve TLS on every --bind (the handshake completes before the handler runs)"
    )
    tls.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate chain (the server's certificate first); turns TLS on",
    )
    tls.add_argument(
        "--tls-key",
        metavar="FILE",
        help="PEM private key (default: read from the --tls-cert file)",
    )
    tls.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates signed by these PEM CA certificates",
    )
    tls.add_argument(
        "--handshake-timeout",
        type=_seconds(zero=False),
        metavar="S",
        help="seconds a client gets to complete the TLS handshake and the PROXY header "
        "(default 10)",
    )
    proxy = srv.add_argument_group(
        "PROXY protocol",
        "behind a load balancer (HAProxy send-proxy / send-proxy-v2): every connection "
        "starts with a PROXY header naming the real client, read before TLS",
    )
    proxy.add_argument(
        "--proxy-protocol",
        action="store_true",
        help="require a PROXY protocol header (v1 or v2) on every --bind",
    )
    proxy.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="CIDR",
        help="a network allowed to send PROXY headers (repeatable; required with "
        "--proxy-protocol on TCP binds); other sources are refused",
    )
    workers = srv.add_argument_group(
        "worker processes",
        "a supervisor opens every --bind once and runs N worker processes that share the "
        "sockets; SIGHUP replaces them one by one (no connect refused), SIGTERM drains them",
    )
    workers.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help=f"run N worker processes under a supervisor (1-{MAX_WORKERS})",
    )
    workers.add_argument(
        "--ready-timeout",
        type=_seconds(zero=False),
        metavar="S",
        help="seconds a starting worker gets to be accepting (default 30; needs --workers)",
    )
    stats = srv.add_argument_group(
        "stats file",
        "a JSON snapshot for other processes (monitoring): the counters, live connections, "
        "open descriptors, Trio tasks and resident memory, rewritten atomically; with "
        "--workers, the supervisor writes every worker's",
    )
    stats.add_argument("--stats-file", metavar="PATH", help="write the snapshot to PATH")
    stats.add_argument(
        "--stats-interval",
        type=_seconds(zero=False),
        metavar="S",
        help="seconds between snapshots (default 1; needs --stats-file)",
    )
    # Internal: how a supervisor tells its worker where its channel is.
    srv.add_argument("--worker-channel", type=_descriptor, help=argparse.SUPPRESS)
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
        type=_seconds(zero=False, infinite=True),
        metavar="S",
        help="give up connecting after S seconds (> 0; inf: never)",
    )
    con.add_argument(
        "--close-linger",
        type=_seconds(),
        metavar="S",
        help="seconds the final close may linger for the peer's EOF (default 5; 0: at once)",
    )
    con_tls = con.add_argument_group(
        "TLS",
        "TLS has no half-close: with --tls, the end of stdin does not end the "
        "connection; the command prints what the peer sends until the peer closes "
        "(or Ctrl-C), like 'openssl s_client -ign_eof'",
    )
    con_tls.add_argument(
        "--tls", action="store_true", help="speak TLS (certificates checked against --ca)"
    )
    con_tls.add_argument(
        "--ca",
        metavar="FILE",
        help="trust these PEM CA certificates (default: the system's); needs --tls",
    )
    con_tls.add_argument(
        "--server-name",
        metavar="NAME",
        help="the name to send (SNI) and check the certificate against "
        "(default: TARGET's host); needs --tls",
    )
    con.add_argument("--log-level", choices=_LOG_LEVELS, default="warning", help="default: warning")
    return parser
