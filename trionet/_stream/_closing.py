"""The close protocol of a ``Connection``: close at once, or linger first.

A mixin of :class:`~trionet.Connection`, like :mod:`._buffered`: the public
``close()``, ``abort()`` and ``aclose()`` live on ``Connection`` itself (they
are what its users read about), and run the steps kept here, which the
server calls too when a handler returns (``ConnectionTable._release``).
Each transport supplies the primitives at the bottom
(:meth:`OrderlyClose._close_transport` and friends).

Why linger
----------
``send_all`` returning means the transport has the bytes, and a close must
not throw them away.  On a socket it would, if it closed with the peer's
bytes unread: the kernel answers with RST and discards whatever of ours is
still queued unsent.  So an orderly close (:meth:`Connection.aclose
<trionet.Connection.aclose>`, or the server when a handler returns) first
decides -- before anything more is written, a TLS ``close_notify``
included -- whether closing at once could do that damage (``_linger_needed``),
and if so *lingers*: the connection is closed to its users (stats folded,
waiters woken), its sending side shut down (the FIN follows the queued
bytes), and the peer's late bytes are read and discarded until its EOF,
``close_linger`` seconds or cancellation; then the transport closes.
``_closed`` goes ``_OPEN`` -> ``_LINGERING`` -> ``_CLOSED``.  ``close()``,
``abort()`` and a cancelled ``aclose()`` never linger.  A connection that saw
the peer's EOF, or never sent a byte, has nothing to protect and skips the
check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, cast

import trio

if TYPE_CHECKING:
    from ._base import Connection, ConnectionOwner
    from ._options import ConnOptions

__all__ = ["OrderlyClose"]

# Connection._closed: open; closed to its users with the transport still
# open (a lingering close); closed.  Tested for truth on the hot paths.
_OPEN, _LINGERING, _CLOSED = 0, 1, 2
# Connection._eof: bits.  We sent EOF; the peer's EOF was seen (it will send
# nothing more).
_EOF_SENT, _EOF_SEEN = 1, 2


def _closed_error() -> trio.ClosedResourceError:
    return trio.ClosedResourceError("this connection was already closed")


async def _closed_while_waiting() -> NoReturn:
    """A wait ended, but the connection was closed before this task ran again.

    Whoever closes a connection under its handler -- the reaper (idle
    timeout, slow sender), the grace period's end -- cancels the handler's
    scope first, and then what the handler must see is ``Cancelled``, not a
    ``ClosedResourceError`` that would count (and log) as its own error.  A
    task woken for data just before the close has not reached a checkpoint
    since the cancel, so look here; anyone else gets the ClosedResourceError.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    raise _closed_error()


class OrderlyClose:
    """The steps of a close; the host class provides the state and the primitives.

    Needs, from the class it is mixed into: ``_closed``, ``_eof``, ``_buf``,
    ``_opts``, ``_owner`` and ``bytes_sent``.
    """

    if not TYPE_CHECKING:  # (mypy would then want the state among the slots)
        __slots__ = ()
    else:
        _closed: int
        _eof: int
        _buf: bytearray | None
        _opts: ConnOptions
        _owner: ConnectionOwner | None
        bytes_sent: int

    def _mark_closed(self) -> None:
        # The connection is closed to its users: stats folded, waiters woken
        # (the transport still open, for a linger or the close that follows).
        self._closed = _LINGERING
        self._buf = None
        owner = self._owner
        if owner is not None:
            # The server folds this connection into its stats *before* the
            # FIN goes out, so a peer that saw EOF sees final figures.
            owner.connection_closed(cast("Connection", self))
        self._wake_waiters()

    def _wants_linger(self) -> bool:
        """Decide, before anything more is written, whether an orderly close must linger."""
        if self._opts.close_linger <= 0 or self._eof & _EOF_SEEN or not self.bytes_sent:
            # Off; or the peer sends nothing more; or we never sent a byte,
            # so a reset cannot discard anything of ours.
            return False
        return self._linger_needed()

    def _begin_orderly_close(self) -> bool:
        """Start an orderly close; True means "linger now" (await :meth:`_linger`).

        Decides whether to linger (:meth:`_wants_linger`); if not, closes at
        once as ``close()`` does.  If so, the connection is closed to its
        users (stats folded, waiters woken) and our sending side is shut
        down -- the FIN follows the queued data -- but the transport stays
        open so the peer's late bytes can be read and thrown away.
        """
        if self._closed:
            # Closed already -- and if another aclose() is lingering, that
            # close is its to finish: cutting it short would discard what it
            # protects.
            return False
        linger = self._wants_linger()
        self._mark_closed()
        if linger:
            linger = self._begin_linger()
        if not linger:
            self._close_transport(after_linger=False)
        return linger

    async def _linger(self, seconds: float) -> None:
        """Read and discard until the peer's EOF, ``seconds``, or cancellation; then close.

        The transport is closed on every way out, a cancellation included.
        A ``close()`` or ``abort()`` from elsewhere ends it too.
        """
        owner = self._owner
        if owner is not None:
            owner.linger_changed(1)  # stats.lingering counts every linger
        try:
            with trio.move_on_after(seconds):
                await self._discard_until_eof()
        except (OSError, trio.ClosedResourceError, trio.BusyResourceError):
            # A reset (nothing left to protect); closed by close()/abort();
            # or someone holding ``conn.socket`` is reading it: stop here.
            pass
        except trio.BrokenResourceError:
            pass  # the same, translated (a TLS transport)
        finally:
            if self._closed == _LINGERING:
                self._close_transport(after_linger=True)
            if owner is not None:
                owner.linger_changed(-1)

    # -- transport primitives of the close (each transport overrides them) --

    def _wake_waiters(self) -> None:
        """Wake tasks blocked on the transport with ``ClosedResourceError``."""

    def _close_transport(self, *, after_linger: bool) -> None:
        """Close the underlying transport for good (sets ``_CLOSED``)."""
        self._closed = _CLOSED

    def _arm_reset(self) -> None:
        """Make the close that follows a reset, where the transport has one."""

    def _linger_needed(self) -> bool:
        """Whether closing the transport now could discard bytes we sent."""
        return False

    def _begin_linger(self) -> bool:
        """Shut our sending side down for a linger; False if there is nothing to linger on."""
        return False

    async def _discard_until_eof(self) -> None:
        """Read and drop the peer's bytes until its EOF (the body of a linger)."""
