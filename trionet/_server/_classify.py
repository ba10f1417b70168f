"""Whose fault was it?  What escaped a handler, classified by cause.

A handler's exception is a *handler bug* -- logged at ERROR with its
traceback, counted in ``stats.handler_errors`` -- unless it was caused by the
peer on the handler's own connection:

* a **reset**: the peer reset the connection or broke the pipe, or ended TLS
  without ``close_notify`` -- ``stats.resets``, logged at DEBUG;
* a **protocol error**: the peer broke the protocol -- an uncaught
  :class:`~trionet.RemoteProtocolError` (``MessageTooLong``,
  ``IncompleteRead``), or garbage (or a fatal alert) where TLS records
  belong --
  ``stats.protocol_errors``, logged at INFO (DEBUG for a clean hang-up
  between two messages).

"Caused by" is read from the exception's chain (``__cause__`` and
``__context__``), not only from its identity: a stream wrapping the
connection -- ``trio.SSLStream(conn)`` in a handler, a protocol library --
raises its *own* exception ``from`` the one the connection raised, and that
is still the peer's doing.  So an exception counts as the peer's when
anything in its chain is an error the connection raised because of its peer
(the connection keeps those, :meth:`Connection.raised_by_peer`), or when it
is a ``trio.BrokenResourceError`` caused by an ``ssl.SSLError`` (what
``trio.SSLStream`` raises when the bytes it read were not TLS) -- a
certificate verification failure excepted: that one is about whom *we*
chose to trust.  The same exception types raised by anything else (a
backend connection the handler opened, raised by hand) remain handler bugs.

Pure functions, no I/O: easy to test on hand-made exception chains.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Literal, Protocol

import trio

from .._exceptions import IncompleteRead, RemoteProtocolError
from .._unwrap import leaves

__all__ = ["Blame", "classify", "clean_hang_up"]

Blame = Literal["reset", "protocol", "handler"]


class _Raiser(Protocol):
    def raised_by_peer(self, exc: BaseException) -> bool: ...


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it was raised from or during, without loops."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _tls_blame(exc: BaseException) -> Blame | None:
    """What the ``ssl`` error in ``exc``'s chain says, if there is one."""
    for link in _chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return "handler"  # whom we chose to trust
        if isinstance(link, ssl.SSLEOFError):
            return "reset"  # TLS ended without close_notify
        if isinstance(link, ssl.SSLError):
            return "protocol"  # garbage, an alert, a refused renegotiation
    return None


def _blame_one(conn: _Raiser, exc: BaseException) -> Blame:
    for link in _chain(exc):
        if conn.raised_by_peer(link):
            if isinstance(link, trio.BrokenResourceError):
                # The connection's own TLS errors carry the ssl error.
                return "protocol" if _tls_blame(link) == "protocol" else "reset"
            return "protocol"
    if isinstance(exc, trio.BrokenResourceError):
        return _tls_blame(exc) or "handler"
    return "handler"


def classify(conn: _Raiser, exc: BaseException) -> Blame:
    """Blame for what escaped a handler (an exception group: every leaf must agree).

    Returns "reset" or "protocol" only if *every* leaf is the peer's doing;
    any other leaf makes the whole thing a handler bug.
    """
    blames = {_blame_one(conn, leaf) for leaf in leaves(exc)}
    if "handler" in blames or not blames:
        return "handler"
    if blames == {"reset"}:
        return "reset"
    return "protocol"


def clean_hang_up(exc: BaseException) -> bool:
    """A peer hanging up between two messages (``IncompleteRead`` with nothing partial).

    Routine for line protocols: logged at DEBUG rather than INFO.
    """
    return all(
        isinstance(e, IncompleteRead) and not e.partial
        for e in leaves(exc)
        if isinstance(e, RemoteProtocolError)
    ) and any(isinstance(e, IncompleteRead) for e in leaves(exc))
