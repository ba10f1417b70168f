"""Small helpers for testing code built on trionet (and trionet's own tests).

Everything here runs inside ``trio.run`` unless it says otherwise, and none of
it needs pytest: :func:`no_errors_logged` takes pytest's ``caplog`` (or any
object with a ``records`` list) and the helpers that check something raise a
plain :exc:`AssertionError`, which every test runner reports as a failure.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import trio
import trio.testing

from .._server._drain import ShutdownReport
from .._server._server import Server
from .._stream import Connection

__all__ = [
    "ExitRecordingEcho",
    "Shutdown",
    "client_first_flight",
    "custom_socket_class",
    "fill_stream",
    "no_errors_logged",
    "wait_until",
]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a cheap condition, every 5 ms, until it is true.

    Meant only for state that has no event of its own to wait on (a server's
    ``stats``, ``server.draining``); anything with an event should wait on
    the event instead.

    :param predicate: called with no arguments after each 5 ms sleep (and
        once at the start); polling stops when it returns true.
    :param timeout: seconds (of Trio's clock) before giving up.
    :raises trio.TooSlowError: if ``predicate`` is still false after
        ``timeout`` seconds.

    Example::

        await wait_until(lambda: server.stats.active == 0)
    """
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polling state that has no event
            await trio.sleep(0.005)


@contextmanager
def custom_socket_class(cls: Callable[[socket.socket], trio.socket.SocketType]) -> Iterator[None]:
    """Inside the block, ``trio.socket.socket()`` returns ``cls(stdlib_socket)``.

    Installs a Trio custom socket factory (:func:`trio.socket.set_custom_socket_factory`)
    and restores the previous factory on exit.  It is the way to make trionet
    meet sockets that are not Trio's own (its generic code paths) or to inject
    socket failures.  Must be used inside ``trio.run``.

    :param cls: called with a new, real :class:`socket.socket` for every Trio
        socket created in the block; usually a subclass of Trio's socket class.

    Example::

        from trio._socket import _SocketType  # Trio's own socket class

        class DeniedConnect(_SocketType):
            async def connect(self, address):
                raise PermissionError(errno.EACCES, "denied")

        with custom_socket_class(DeniedConnect):
            ...  # every connect() in here fails
    """

    from .. import _virtual

    net = _virtual.current()
    if net is not None:
        # It makes real sockets: inside a virtual network that would be
        # real traffic from a test that meant to be virtual.
        raise RuntimeError(
            f"custom_socket_class() makes real sockets, but {net.describe()} is "
            "installed in this trio.run"
        )

    class Factory(trio.abc.SocketFactory):
        def socket(
            self,
            family: socket.AddressFamily | int = socket.AF_INET,
            type: socket.SocketKind | int = socket.SOCK_STREAM,
            proto: int = 0,
        ) -> trio.socket.SocketType:
            return cls(socket.socket(family, type, proto))

    previous = trio.socket.set_custom_socket_factory(Factory())
    try:
        yield
    finally:
        trio.socket.set_custom_socket_factory(previous)


async def fill_stream(stream: trio.abc.SendStream) -> None:
    """Send on ``stream`` until a send blocks, then return.

    Sends 10 000-byte chunks until every task is blocked
    (:func:`trio.testing.wait_all_tasks_blocked`), then cancels the pending
    send -- as Trio's own socket tests do -- leaving the kernel's buffers
    full, so the next send waits until the peer reads.  The stream must apply
    backpressure and survive a cancelled send: a socket stream (a
    :class:`trionet.Connection`, a :class:`trio.SocketStream`) does; with
    :func:`trio.testing.memory_stream_pair`, whose buffer has no bound,
    ``fill_stream`` never returns.

    :param stream: the sending side to fill.

    Example::

        await fill_stream(conn)  # the peer has read nothing
        # now a handler's send to this peer waits, e.g. until a send timeout
    """

    async def sender() -> None:
        while True:
            await stream.send_all(b"x" * 10000)

    async def waiter(nursery: trio.Nursery) -> None:
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        nursery.start_soon(waiter, nursery)


class ExitRecordingEcho:
    """An ``async for`` echo handler that records each connection and how its loop ended.

    :attr:`exits` gets one entry per connection: ``"drained"`` (a drain ended
    the iteration), ``"eof"`` (the peer closed) or ``"cancelled"`` -- the bug
    drain tests look for: a keep-alive loop must end by itself on a drain,
    not be cancelled.

    Example::

        handler = ExitRecordingEcho()
        async with trionet.open_server(handler, "tcp://127.0.0.1:0") as server:
            ...  # connect, talk, close
        assert handler.exits == ["eof"]
    """

    def __init__(self) -> None:
        #: Every connection the handler was called with, in order.
        self.conns: list[Connection] = []
        #: How each handler call ended: "drained", "eof" or "cancelled".
        self.exits: list[str] = []

    async def __call__(self, conn: Connection) -> None:
        """Echo everything ``conn`` receives, then record how the loop ended."""
        self.conns.append(conn)
        try:
            async for chunk in conn:
                await conn.send_all(chunk)
        except trio.Cancelled:
            self.exits.append("cancelled")
            raise
        self.exits.append("drained" if conn.draining.is_set() else "eof")


class Shutdown:
    """Runs ``server.shutdown(grace)`` in the background and keeps its report.

    Starts the shutdown in ``nursery`` at once, so a test can act while the
    server drains (check ``server.draining``, finish a connection), then
    collect the :class:`~trionet.ShutdownReport` with :meth:`wait`.

    :param nursery: where the shutdown task runs.
    :param server: the server to shut down.
    :param grace: passed to :meth:`trionet.Server.shutdown`.

    Example::

        async with trio.open_nursery() as nursery:
            shutdown = Shutdown(nursery, server, grace=5)
            await wait_until(lambda: server.draining)
            ...  # the server drains meanwhile
            report = await shutdown.wait()
        assert shutdown.returned_at - shutdown.started_at < 5
    """

    def __init__(self, nursery: trio.Nursery, server: Server, grace: float) -> None:
        #: The report, once ``server.shutdown`` returned (else None).
        self.report: ShutdownReport | None = None
        #: Trio's clock when the shutdown was started.
        self.started_at: float = trio.current_time()
        #: Trio's clock when ``server.shutdown`` returned (0.0 until then).
        self.returned_at: float = 0.0
        #: Set when ``server.shutdown`` returned.
        self.done: trio.Event = trio.Event()
        nursery.start_soon(self._run, server, grace)

    async def _run(self, server: Server, grace: float) -> None:
        self.report = await server.shutdown(grace)
        self.returned_at = trio.current_time()
        self.done.set()

    async def wait(self, timeout: float = 10.0) -> ShutdownReport:
        """Wait for the shutdown to return and give its report.

        :param timeout: seconds (of Trio's clock) to wait at most.
        :raises trio.TooSlowError: if the shutdown has not returned in time.
        """
        with trio.fail_after(timeout):
            await self.done.wait()
        if self.report is None:  # pragma: no cover - done is set only after the report
            raise AssertionError("the shutdown finished without a report")
        return self.report


class _HasRecords(Protocol):
    """Anything with log records: pytest's ``caplog``, a list-keeping handler."""

    @property
    def records(self) -> Sequence[logging.LogRecord]: ...


def no_errors_logged(caplog: _HasRecords) -> None:
    """Assert that nothing was logged at ERROR or above.

    trionet logs what a peer did (a reset, a bad handshake, a slow reader) at
    DEBUG or INFO; ERROR means a bug or a failing handler.  Needs no pytest
    at import: any object with a ``records`` sequence of
    :class:`logging.LogRecord` will do.

    :param caplog: pytest's ``caplog`` fixture, or any object with ``records``.
    :raises AssertionError: listing the messages logged at ERROR or above.

    Example::

        async def test_garbage_is_not_an_error(caplog, trionet_server):
            ...  # send the server garbage
            no_errors_logged(caplog)
    """
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    if bad:
        raise AssertionError(f"logged at ERROR or above: {bad!r}")


def client_first_flight(context: ssl.SSLContext, server_hostname: str | None) -> bytes:
    """The first flight of a real TLS client (its ClientHello), made in memory.

    Runs the client side of a handshake over :class:`ssl.MemoryBIO` objects
    until it waits for the server, and returns what it would have sent: TLS
    records starting with a handshake record (``0x16``).  Needs no Trio run;
    useful to feed a server a genuine ClientHello byte by byte.

    :param context: a client context (sets versions, ALPN, ...).
    :param server_hostname: the SNI name to send, or None for none.
    :raises AssertionError: if the handshake completed without a server.

    Example::

        hello = client_first_flight(ssl.create_default_context(), "localhost")
        assert hello[0] == 0x16
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        return outgoing.read()
    raise AssertionError("the TLS client finished its handshake without a server")
