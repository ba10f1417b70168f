"""One round's addresses to try: a Unix path as is, or a name resolved and ordered.

``connect`` asks this at the start of each round (see ``_connect``): the
lookup goes through ``trio.socket.getaddrinfo`` (so Trio's resolver hook,
and a virtual network, see it), keeps the families that match
``local_address``, and orders the addresses per RFC 8305 section 4
(``interleave_families``).  A lookup is recorded as an attempt only when it
fails; a failure that no retry can change (the name has no address) is
marked not retryable.
"""

from __future__ import annotations

import errno
import socket as _stdlib_socket
from typing import Any, Final

import trio

from .._address import Address, UnixAddress, address_from_sockaddr
from ._attempts import Run
from ._plan import WILDCARD_HOSTS, interleave_families

__all__ = ["Target", "resolve"]

# ``getaddrinfo`` codes that mean "this name has no address", not "try again".
_PERMANENT_LOOKUP_CODES: Final = frozenset(
    code
    for code in (
        getattr(_stdlib_socket, "EAI_NONAME", None),
        getattr(_stdlib_socket, "EAI_FAIL", None),
    )
    if code is not None
)

_AF_UNIX = getattr(_stdlib_socket, "AF_UNIX", None)
_INET_FAMILIES = (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6)

#: One resolved address to try: (family, type, proto, sockaddr, display address).
Target = tuple[int, int, int, Any, Address]


async def resolve(run: Run, round_: int) -> list[Target] | None:
    """The addresses to try this round, or None (failure recorded)."""
    address = run.plan.target
    if isinstance(address, UnixAddress):
        assert _AF_UNIX is not None
        return [(_AF_UNIX, _stdlib_socket.SOCK_STREAM, 0, address.sockaddr, address)]
    host: str | None = None if address.host in WILDCARD_HOSTS else address.host
    attempt = run.begin(address, round_)
    try:
        entries = await trio.socket.getaddrinfo(host, address.port, type=_stdlib_socket.SOCK_STREAM)
    except OSError as exc:
        permanent = (
            isinstance(exc, _stdlib_socket.gaierror) and exc.errno in _PERMANENT_LOOKUP_CODES
        )
        run.end(attempt, "failed", exc, retryable=not permanent)
        return None
    except BaseException:
        run.end_interrupted(attempt, winner_found=False)
        raise
    entries = [e for e in entries if e[0] in _INET_FAMILIES]
    local = run.plan.local
    if local is not None:
        entries = [e for e in entries if e[0] == local[2]]
    if not entries:
        why = f"{address.host or 'the wildcard host'} has no address"
        if local is not None:
            version = "IPv4" if local[2] == _stdlib_socket.AF_INET else "IPv6"
            why = f"{address.host or 'the wildcard host'} has no {version} address "
            why += f"(to match local_address {local[0]})"
        run.end(attempt, "failed", OSError(errno.EADDRNOTAVAIL, why), retryable=False)
        return None
    # The lookup succeeded: it is not an attempt of its own.
    run.attempts.remove(attempt)
    targets: list[Target] = []
    for family, type_, proto, _canon, sockaddr in interleave_families(entries):
        targets.append((family, type_, proto, sockaddr, address_from_sockaddr(family, sockaddr)))
    return targets
