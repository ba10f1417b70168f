"""TLS contexts from the command line's certificate files.

The files are read when the arguments are checked, before any socket is
opened: a missing file, an unreadable one, a key that does not match its
certificate are usage errors (one line, exit 2) naming the flag, never a
traceback from inside the server.  The contexts are the stdlib's defaults
(``ssl.create_default_context``): TLS 1.2 or later, the platform's cipher
choice, certificates checked on the client.
"""

from __future__ import annotations

import argparse
import ssl

from ._errors import EXIT_USAGE, CLIError

__all__ = ["client_context", "server_context"]


def _why(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        if exc.reason in (None, "PEM_LIB"):
            # OpenSSL's "[SSL] PEM lib": not PEM, or not what was expected.
            return f"not a PEM certificate chain and matching private key ({exc})"
        if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            return f"the private key does not match the certificate ({exc.reason})"
        return str(exc.reason)  # e.g. NO_CERTIFICATE_OR_CRL_FOUND
    return exc.strerror or str(exc)


def server_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server context ``--tls-cert``/``--tls-key``/``--tls-client-ca`` ask for; None: plain.

    Raises:
        CLIError: a TLS flag without ``--tls-cert``, or a file that cannot be
            loaded (exit 2).
    """
    if args.tls_cert is None:
        for flag, value in (("--tls-key", args.tls_key), ("--tls-client-ca", args.tls_client_ca)):
            if value is not None:
                raise CLIError(f"{flag} needs --tls-cert", EXIT_USAGE)
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except OSError as exc:  # ssl.SSLError included
        flags = "--tls-cert" if args.tls_key is None else "--tls-cert/--tls-key"
        raise CLIError(
            f"{flags}: cannot load {args.tls_cert!r}"
            + ("" if args.tls_key is None else f" with key {args.tls_key!r}")
            + f": {_why(exc)}",
            EXIT_USAGE,
        ) from None
    if args.tls_client_ca is not None:
        try:
            context.load_verify_locations(cafile=args.tls_client_ca)
        except OSError as exc:
            raise CLIError(
                f"--tls-client-ca: cannot load {args.tls_client_ca!r}: {_why(exc)}", EXIT_USAGE
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The client context ``--tls``/``--ca`` ask for; None: plain.

    Raises:
        CLIError: ``--ca`` or ``--server-name`` without ``--tls``, or a CA file
            that cannot be loaded (exit 2).
    """
    if not args.tls:
        for flag, value in (("--ca", args.ca), ("--server-name", args.server_name)):
            if value is not None:
                raise CLIError(f"{flag} needs --tls", EXIT_USAGE)
        return None
    if args.ca is None:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=args.ca)
    except OSError as exc:
        raise CLIError(f"--ca: cannot load {args.ca!r}: {_why(exc)}", EXIT_USAGE) from None
