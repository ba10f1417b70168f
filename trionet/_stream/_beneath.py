"""What a ``StreamConnection`` asks of the trionet connection beneath it.

:class:`~trionet._stream._wrapped.StreamConnection` composes: it wraps a
stream -- usually ``trio.SSLStream`` around the handler's own connection --
and cooperates with the trionet connection at the bottom of it (found by
:mod:`._layers`).  The functions here are that cooperation, named, so the
wrapper never touches the inner connection's members itself:

* :func:`settings_of` -- the settings and owning server it takes over;
* :func:`install_relay` / :func:`remove_relay` -- while the wrapper's
  ``async for`` waits, a :class:`Relay` stands where the server's drain
  interrupts the inner connection, and passes the interruption up;
* :func:`has_unread` -- bytes waiting beneath the stream (a drain still
  lets ``async for`` take them);
* :func:`blame_peer` -- register on the inner connection an error its peer
  caused, so that the server classifies what escapes the handler rightly.

And the wrapper's own helpers that need no connection: following an
exception's chain (:func:`chain`, :func:`tls_caused`), what a
``trio.SSLStream`` negotiated (:func:`negotiated`), and checking an address
argument (:func:`check_address`).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import TYPE_CHECKING, final

import trio

from .._address import TCPAddress, UnixAddress
from ._base import Connection, ConnectionOwner
from ._info import TLSInfo
from ._options import ConnOptions
from ._tls import tls_connection_info

if TYPE_CHECKING:
    from ._wrapped import StreamConnection

__all__ = [
    "Relay",
    "blame_peer",
    "chain",
    "check_address",
    "has_unread",
    "install_relay",
    "negotiated",
    "remove_relay",
    "settings_of",
    "tls_caused",
]


# ----------------------------------------------------------------------
# The inner connection


def settings_of(inner: Connection) -> tuple[ConnOptions, ConnectionOwner | None]:
    """The settings (``schedule_budget``, ``close_linger``) and server a wrapper takes over."""
    return inner._opts, inner._owner


@final
class Relay:
    """Stands in the inner connection's interruptible wait while a wrapper's ``async for`` waits.

    The server's drain interrupts the connection it knows -- the inner one;
    the relay passes that on to the wrapper, which decides by its own
    counters whether its loop ends.
    """

    __slots__ = ("_wrapper",)

    def __init__(self, wrapper: StreamConnection) -> None:
        self._wrapper = wrapper

    def cancel(self) -> None:
        self._wrapper._interrupt_iteration()


def install_relay(inner: Connection, wrapper: StreamConnection) -> Relay | None:
    """Let a drain's interruption of ``inner`` reach ``wrapper``; None if something waits already.

    (Something else -- the inner connection's own ``async for`` -- may
    hold the place; the wrapper then waits without a relay.)
    """
    if inner._iter_scope is not None:
        return None
    relay = inner._iter_scope = Relay(wrapper)
    return relay


def remove_relay(inner: Connection, relay: Relay) -> None:
    """Take back what :func:`install_relay` left, if it is still there."""
    if inner._iter_scope is relay:
        inner._iter_scope = None


def has_unread(inner: Connection) -> bool:
    """Whether bytes wait beneath the stream: the inner connection's buffer or socket queue."""
    if inner.closed:
        return False
    return bool(inner._buf) or bool(inner._pending_bytes())


def blame_peer(inner: Connection, exc: BaseException) -> None:
    """Record on ``inner`` that its peer caused ``exc`` (the server classifies by it)."""
    inner._peer_fault(exc)


# ----------------------------------------------------------------------
# The wrapper's own helpers


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it was raised from or during, without loops."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def tls_caused(exc: BaseException) -> bool:
    """Whether an ``ssl.SSLError`` is in ``exc``'s chain."""
    return any(isinstance(link, ssl.SSLError) for link in chain(exc))


def check_address(call: str, name: str, value: object) -> None:
    """Refuse an address argument that is neither an address record nor None."""
    if value is not None and not isinstance(value, (TCPAddress, UnixAddress)):
        raise TypeError(
            f"{call}: {name} must be a trionet.TCPAddress, a trionet.UnixAddress "
            f"or None, not {value!r}"
        )


def negotiated(stream: trio.abc.Stream) -> TLSInfo | None:
    """What TLS ``stream`` negotiated, once its handshake is done."""
    if isinstance(stream, trio.SSLStream):
        try:
            if not stream.version():
                return None
        except trio.NeedHandshakeError:
            return None
        # A server side cannot learn from SSLStream which name the client
        # asked for (trionet's own TLS transport reads it off the ClientHello).
        name = None if stream.server_side else stream.server_hostname
        return tls_connection_info(stream, name)
    if isinstance(stream, Connection):
        return stream.tls
    return None
