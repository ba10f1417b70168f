"""Whether a connection that came back to a pool may be lent again: ``unusable_reason``.

The pool asks before lending an idle connection and when a borrower's block
ends normally; any reason at all means the connection is discarded.

Design notes
============

A connection may die while idle: the server closed it (EOF), reset it, or
sent bytes nobody asked for (a protocol desync).  All three make the socket
*readable*, so before lending an idle connection -- and when one comes back
-- we poll its descriptor with a zero timeout: any readiness other than
"writable" means discard.  We also discard one with unread bytes in its
buffer, one the borrower closed or half-closed, one whose block raised
(the exchange may have stopped half-way), and one that a task is still
receiving or sending on -- a borrower that handed the connection to a
background task and left its block: lending it again would let two users
interleave on one byte stream (closing it wakes that task with
``ClosedResourceError``).  A socket without a descriptor (made by a
custom Trio socket factory, e.g. ``trionet.testing.VirtualNetwork``) is
asked instead through ``trio.socket.SocketType.is_readable()`` -- "has the
peer closed, reset, or sent data?" -- the same question, answered by the
socket; one whose ``is_readable`` is not implemented cannot be checked, so
it is conservatively never reused.
"""

from __future__ import annotations

from .._stream import Connection
from .._stream._hooks import health

__all__ = ["unusable_reason"]


def unusable_reason(conn: Connection) -> str | None:
    """Why an idle connection must not be lent again, or None if it looks fine.

    The connection answers (the stream package's ``health``): its own state,
    then its transport's (a zero-timeout poll of a socket's descriptor, or a
    descriptor-less socket's own ``is_readable()``).
    """
    return health(conn)
