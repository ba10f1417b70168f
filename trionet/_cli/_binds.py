"""``trionet serve``'s binds -- ``--bind``, ``--plain-bind``, ``--proxy-bind`` -- for ``serve``.

A ``--bind`` spec takes the server-wide TLS and PROXY flags; a
``--plain-bind`` one serves neither; a ``--proxy-bind`` one reads a PROXY
header from ``--trusted-proxy`` sources, without TLS.  With ``--workers`` the
supervisor opens them all, and each worker is given each descriptor under
the flag of the spec it was opened for (``bind_roles``).
"""

from __future__ import annotations

import argparse
import logging
import os

from .._address import parse_address
from .._binds import Bind
from .._exceptions import InvalidAddress
from .._inherited import descriptors, parse_inherited
from ._args import DEFAULT_BIND
from ._errors import EXIT_USAGE, CLIError, option_message

log = logging.getLogger("trionet.cli")

__all__ = ["BIND", "PLAIN", "PROXY", "bind_roles", "bind_specs", "close_inherited", "serve_binds"]


def bind_specs(args: argparse.Namespace) -> list[str]:
    """The ``--bind`` specs given, or ``[DEFAULT_BIND]``; each checked by ``parse_address``.

    ``fd:N``, ``systemd`` and ``systemd:NAME`` (inherited sockets) are checked
    by ``parse_inherited``; their ``LISTEN_*`` variables by ``check_serve``.

    Raises:
        CLIError: a malformed spec (exit 2).
    """
    binds: list[str] = [*(args.bind or ()), *(args.plain_bind or ()), *(args.proxy_bind or ())]
    if not binds:
        binds = [DEFAULT_BIND]
    for spec in binds:
        try:
            if parse_inherited(spec) is None:  # fd:N, systemd[:NAME]: syntax checked
                parse_address(spec)
        except InvalidAddress as exc:
            raise CLIError(str(exc), EXIT_USAGE) from None
    return binds


#: What a bind spec came from: ``--bind``, ``--plain-bind``, ``--proxy-bind``.
BIND, PLAIN, PROXY = "bind", "plain-bind", "proxy-bind"


def bind_roles(args: argparse.Namespace) -> list[str]:
    """Which flag each of :func:`bind_specs` came from: ``bind``, ``plain-bind``, ``proxy-bind``."""
    roles = [
        *(BIND for _ in args.bind or ()),
        *(PLAIN for _ in args.plain_bind or ()),
        *(PROXY for _ in args.proxy_bind or ()),
    ]
    return roles or [BIND]


def as_bind(spec: str, role: str, trusted: list[str] | None) -> str | Bind:
    """One spec as ``serve`` takes it: as given (``--bind``), or a ``Bind`` with overrides."""
    if role == PLAIN:
        return Bind(spec, tls=False, proxy_protocol="off")
    if role == PROXY:
        unix = spec.startswith("unix:")
        return Bind(
            spec,
            tls=False,
            proxy_protocol="required",
            trusted_proxies=None if unix else tuple(trusted or ()),
        )
    return spec


def serve_binds(args: argparse.Namespace) -> list[str | Bind]:
    """Every bind, for ``serve``: ``--bind`` specs take the server-wide TLS and PROXY
    options; ``--plain-bind`` ones serve neither; ``--proxy-bind`` ones read a PROXY
    header from ``--trusted-proxy`` sources, without TLS.

    Raises:
        CLIError: a malformed spec (exit 2).
    """
    specs = bind_specs(args)
    try:
        return [
            as_bind(spec, role, args.trusted_proxy)
            for spec, role in zip(specs, bind_roles(args), strict=True)
        ]
    except (TypeError, ValueError) as exc:  # e.g. a TCP --proxy-bind without --trusted-proxy
        raise CLIError(option_message(str(exc)), EXIT_USAGE) from None


def close_inherited(binds: list[str | Bind] | list[str]) -> None:
    """Close the inherited descriptors the server has adopted (duplicates of).

    The command is the process they were passed to, and the server holds a
    duplicate of each: kept open, the original would keep the socket
    listening after the drain closed the server's copy -- connects would
    queue where no one accepts them, and be reset at exit instead of
    refused at once.  (Where a supervisor or systemd holds the socket too,
    it stays open in them: that is their choice.)
    """
    for bind in binds:
        inherited = parse_inherited(bind if isinstance(bind, str) else bind.address)
        if inherited is None:
            continue
        for fd in descriptors(inherited):
            try:
                os.close(fd)
            except OSError:  # pragma: no cover - it was adopted a moment ago
                log.debug("inherited fd %d was already closed", fd)
