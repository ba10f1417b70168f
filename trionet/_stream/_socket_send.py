"""The socket transport's send path: ``send_all``, ``send_eof``, ``wait_send_all_might_not_block``.

A mixin of :class:`~trionet._stream._socket.SocketConnection`, the
counterpart of :mod:`._socket_receive`.

A send that the kernel takes at once ends with a schedule point (the strict
Trio rule) *and* starts a new ``schedule_budget``: in request/response
traffic that yield is what gives the peer time to answer, so the next
``recv()`` finds the answer instead of ``EAGAIN`` (spending the budget on
sends made every receive park, and was slower than strict).  A send the
kernel cannot take whole parks until the socket is writable -- on the
run's poller for a server connection, in Trio's ``wait_writable``
otherwise -- and is then a schedule point already.

A drain wakes a parked ``async for`` reader with
``trio.lowlevel.notify_closing()`` when it waits in Trio's
``wait_readable``, which wakes *every* waiter on the descriptor: a sender
woken that way sees that the connection is not closed and simply waits
again.
"""

from __future__ import annotations

import socket as _stdlib_socket
from typing import TYPE_CHECKING, Any

import trio
from trio.lowlevel import (
    Abort,
    checkpoint,
    checkpoint_if_cancelled,
    wait_task_rescheduled,
    wait_writable,
)

from ._base import _EOF_SENT, Connection
from ._checkpoints import schedule_point as _schedule_point
from ._closing import _closed_while_waiting
from ._poller import WRITE as _WRITE
from ._sockopts import try_send

__all__ = ["SocketSending"]


class SocketSending(Connection):
    """The send path of :class:`~trionet._stream._socket.SocketConnection` (a mixin).

    Needs, from ``SocketConnection``: the socket (``_raw``, :attr:`socket`,
    ``_sock()``), ``_wtask``, and :meth:`_park` / :meth:`_abort_write`.
    """

    if not TYPE_CHECKING:  # (mypy would then want the state among the slots)
        __slots__ = ()
    else:
        _raw: _stdlib_socket.socket | None
        _wtask: trio.lowlevel.Task | None

        @property
        def socket(self) -> trio.socket.SocketType:
            raise NotImplementedError

        def _sock(self) -> Any:
            raise NotImplementedError

        def _park(self, how: int) -> bool:
            raise NotImplementedError

        def _abort_write(self, raise_cancel: Any) -> Abort:
            raise NotImplementedError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting while the kernel's send buffer is full.

        Args:
            data: bytes-like; ``b""`` is allowed (a checkpoint, nothing sent).

        Raises:
            trio.BusyResourceError: another task is sending on this connection.
            trio.ClosedResourceError: after :meth:`send_eof` or a close.
            trio.BrokenResourceError: the peer reset the connection or went away.

        If cancelled part-way, an unknown prefix of ``data`` may have been sent.

        Example::

            await conn.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        """
        self._check_send()
        raw = self._raw
        self._send_busy = True
        try:
            await checkpoint_if_cancelled()
            if raw is None:
                with memoryview(data) as view:
                    await self._send_generic(view.cast("B"), view.nbytes)
                return
            if type(data) is not bytes and type(data) is not bytearray:
                data = memoryview(data).cast("B")
            total = len(data)
            sent = try_send(raw, data) if total else 0
            self.bytes_sent += sent
            # A send refills the budget whatever happens next, and always
            # yields: after a wait (a schedule point) or right here.
            self._coop_left = self._opts.budget
            if sent == total:
                # The common case: the kernel took it all at once.
                await _schedule_point()
                return
            with memoryview(data) as view:
                while sent < total:
                    self._waits += 1
                    try:
                        if self._park(_WRITE):
                            await wait_task_rescheduled(self._abort_write)
                        else:
                            await wait_writable(raw)
                    except trio.ClosedResourceError:
                        if self._closed:
                            raise
                        continue  # woken by a drain's notify_closing(): wait again
                    finally:
                        self._wtask = None  # (see the receive side)
                    if self._closed:  # woken to write, but closed before we ran
                        await _closed_while_waiting()
                    with view[sent:] as rest:
                        n = try_send(raw, rest)
                    sent += n
                    self.bytes_sent += n
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._send_busy = False

    async def _send_generic(self, view: memoryview, total: int) -> None:
        if total == 0:
            await checkpoint()
            return
        sent = 0
        while sent < total:
            with view[sent:] as rest:
                n = await self.socket.send(rest)
            sent += n
            self.bytes_sent += n

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more data (``trio.abc.SendStream`` API).

        Raises:
            trio.BusyResourceError: another task is sending on this connection.
            trio.ClosedResourceError: the connection was closed.
        """
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        if self._closed:
            raise trio.ClosedResourceError("this connection was already closed")
        self._send_busy = True
        try:
            while True:
                try:
                    raw = self._raw
                    if raw is not None:
                        await wait_writable(raw)
                    else:
                        await self.socket.wait_writable()
                    if self._closed:
                        await _closed_while_waiting()
                    return
                except trio.ClosedResourceError:
                    if self._closed:
                        raise
                    # woken by a drain's notify_closing(): wait again
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._send_busy = False

    async def send_eof(self) -> None:
        """Half-close: tell the peer we will send no more (``shutdown(SHUT_WR)``).

        Receiving still works.  Calling it again does nothing.

        Raises:
            trio.ClosedResourceError: the connection was closed.

        Example::

            await conn.send_all(request)
            await conn.send_eof()          # the server reads until EOF
            reply = await conn.receive_some()
        """
        if self._send_busy:
            raise trio.BusyResourceError("another task is already sending on this connection")
        self._send_busy = True
        try:
            await checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("this connection was already closed")
            if self._eof & _EOF_SENT:
                return
            self._eof |= _EOF_SENT
            self._sock().shutdown(_stdlib_socket.SHUT_WR)
        except OSError as exc:
            raise self._mark_broken(exc) from exc
        finally:
            self._send_busy = False
