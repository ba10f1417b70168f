"""``ConnectionOwner``: all a connection knows of the server that owns it.

A server connection honours its owner's drain (``async for`` ends once what
had arrived is delivered) and tells it when it closes (so the stats are
folded before the FIN) and when a lingering close begins or ends.  Clients'
connections have no owner.  The server's ``ConnectionTable`` implements it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import trio

    from ._base import Connection

__all__ = ["ConnectionOwner"]


class ConnectionOwner(Protocol):
    """What a connection needs from the server that owns it (clients have none)."""

    #: True once a graceful drain has begun.
    draining: bool
    #: True once connections that never sent anything count as idle too.
    drain_silent: bool
    #: Set when the drain begins (every connection's ``draining``).
    drain_event: trio.Event

    def connection_closed(self, conn: Connection) -> None:
        """Fold a closing connection into the stats (called once, before its FIN)."""

    def linger_changed(self, delta: int) -> None:
        """A linger of one of the owner's connections began (+1) or ended (-1)."""
