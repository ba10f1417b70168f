"""``ConnectionRecord``: what the server keeps per connection, beside the connection.

The stream (:class:`~trionet.Connection`) is what the handler holds; this
record is the server's own bookkeeping for it, kept out of the stream class:

* ``hostkey`` -- the per-host lease to give back (``max_connections_per_host``);
* ``plan`` -- the bind's stages to run before the handler (None: none);
* ``state`` -- queued for a slot, in its stages, or in its handler;
* ``scope``, ``seen_bytes``, ``seen_at`` -- the cancel scope of its stages or
  its handler, and the idle clock the reaper reads (``trionet._server._idle``).

The ``max_connections`` slot itself is held by the connection's task (see
``ConnectionTable``), not recorded.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Final

import trio

from .._stream import Connection

if TYPE_CHECKING:
    from ._stages import StagePlan

__all__ = ["HANDLER", "QUEUED", "STAGES", "ConnectionRecord", "RatedRecord", "WatchedRecord"]

#: Waiting for a slot (swept during a drain beyond ``max_connections``, or in
#: the waiting room of ``min_receive_rate``).
QUEUED: Final = 0
#: Running its stages (TLS handshake, ...).
STAGES: Final = 1
#: Its handler runs (or ran).
HANDLER: Final = 2


class ConnectionRecord:
    """The server's bookkeeping for one connection (internal).

    A plain connection on a server without an idle timeout needs only
    ``conn``, ``hostkey`` and ``state``; the other fields read as their
    class-level defaults (no stages, no scope, not watched).  A connection
    with stages, or on a server with an idle timeout, gets a
    :class:`WatchedRecord`, whose slots hold them.  (Measured: the lean
    record keeps a plain server's memory per idle connection where it was
    before the record existed; ``ConnectionTable`` picks the class.)
    """

    __slots__ = ("conn", "hostkey", "state")

    #: The bind's stages (None: none); set on a ``WatchedRecord`` only.
    plan: StagePlan | None = None
    #: The scope of the stages, then of the handler (only with an idle
    #: timeout); the reaper watches a record once this is a handler's.
    scope: trio.CancelScope | None = None
    #: The idle clock (``trionet._server._idle``); -1: not watched (yet).
    seen_bytes: int = 0
    seen_at: float = -1.0

    def __init__(self, conn: Connection, hostkey: Hashable | None, state: int) -> None:
        self.conn = conn
        self.hostkey = hostkey
        self.state = state


class WatchedRecord(ConnectionRecord):
    """A :class:`ConnectionRecord` with stages or an idle clock (internal)."""

    __slots__ = ("plan", "scope", "seen_at", "seen_bytes")

    def __init__(
        self, conn: Connection, hostkey: Hashable | None, state: int, plan: StagePlan | None
    ) -> None:
        self.conn = conn
        self.hostkey = hostkey
        self.state = state
        self.plan = plan
        self.scope = None
        self.seen_bytes = 0
        self.seen_at = -1.0


class RatedRecord(WatchedRecord):
    """A :class:`WatchedRecord` on a server with ``min_receive_rate`` (internal).

    The receive-rate clock the reaper keeps (``trionet._server._idle``):
    ``rate_rx``/``rate_tx`` are the byte counts seen at the last scan (in the
    waiting room, ``rate_rx`` is the kernel's count of unread bytes);
    ``rate_since`` is when the peer began the message the server has not
    answered yet (-1: none), and ``rate_bytes`` what it sent of it since.
    ``raw`` is the accepted socket, read (``FIONREAD``) while the connection
    waits for a slot; None where there is no descriptor.  ``ticket`` is its
    place in the slot queue while it waits (None otherwise).
    """

    __slots__ = ("rate_bytes", "rate_rx", "rate_since", "rate_tx", "raw", "ticket")

    def __init__(
        self,
        conn: Connection,
        hostkey: Hashable | None,
        state: int,
        plan: StagePlan | None,
        raw: object,
    ) -> None:
        super().__init__(conn, hostkey, state, plan)
        self.raw = raw
        self.ticket: trio.Event | None = None
        self.rate_rx = 0
        self.rate_tx = 0
        self.rate_since = -1.0
        self.rate_bytes = 0
