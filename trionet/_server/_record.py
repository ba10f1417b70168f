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

__all__ = ["HANDLER", "QUEUED", "STAGES", "ConnectionRecord"]

#: Waiting for a slot (swept during a drain beyond ``max_connections``).
QUEUED: Final = 0
#: Running its stages (TLS handshake, ...).
STAGES: Final = 1
#: Its handler runs (or ran).
HANDLER: Final = 2


class ConnectionRecord:
    """The server's bookkeeping for one connection (internal)."""

    __slots__ = ("conn", "hostkey", "plan", "scope", "seen_at", "seen_bytes", "state")

    def __init__(
        self, conn: Connection, hostkey: Hashable | None, plan: StagePlan | None, state: int
    ) -> None:
        self.conn = conn
        self.hostkey = hostkey
        self.plan = plan
        self.state = state
        #: The scope of the stages, then of the handler (only with an idle
        #: timeout); the reaper watches a record once this is a handler's.
        self.scope: trio.CancelScope | None = None
        self.seen_bytes = 0
        self.seen_at = -1.0  # not watched by the idle reaper (yet)
