"""Helpers shared by the benchmark echo servers and clients.

Every server script accepts ``--host`` (loopback only) and ``--port``
(0 = pick a free port), prints ``LISTENING <port>`` on stdout once it
accepts connections, and then runs until it is killed.  Those that can
serve TLS also take ``--tls-cert FILE --tls-key FILE`` (:func:`add_tls_args`).
"""

from __future__ import annotations

import argparse
import ipaddress
import resource
import ssl
import sys

#: Handler shape shared by every peer: read up to 64 KiB, write it back.
CHUNK = 64 * 1024
#: Listen backlog used by every peer.
BACKLOG = 1024


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new value."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def loopback_host(value: str) -> str:
    """argparse type: accept loopback addresses only."""
    if not ipaddress.ip_address(value).is_loopback:
        raise argparse.ArgumentTypeError(f"{value} is not a loopback address")
    return value


def server_args(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", type=loopback_host, default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    return parser


def announce(port: int) -> None:
    """Tell the runner that the server is ready (must be the first stdout line)."""
    sys.stdout.write(f"LISTENING {port}\n")
    sys.stdout.flush()


def add_tls_args(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert FILE --tls-key FILE``: serve TLS instead of plain TCP."""
    parser.add_argument("--tls-cert", metavar="FILE", help="certificate chain (PEM): serve TLS")
    parser.add_argument("--tls-key", metavar="FILE", help="private key (PEM) of --tls-cert")


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server-side context of ``--tls-cert``/``--tls-key``, or None (plain TCP)."""
    if (args.tls_cert is None) != (args.tls_key is None):
        sys.exit("--tls-cert and --tls-key go together")
    if args.tls_cert is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    return ctx
