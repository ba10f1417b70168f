"""Shared test helpers.  Fixtures from trionet's own plugin load via its entry point."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.testing

import trionet
from trionet import _ratelimit


def require_program(name: str) -> str:
    """Path of an external peer program, or skip the test saying which is missing.

    CI installs every such program (see .ci/run), so these skips only happen
    on a developer machine without it.
    """
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs the external program {name!r}, which is not installed here")
    return path


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a cheap condition (every 5 ms) until true; fail after ``timeout``.

    Only for state that has no event of its own (``server.stats``,
    ``server.draining``); everything else waits on events.
    """
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polling server state that has no event
            await trio.sleep(0.005)


@contextmanager
def custom_socket_class(cls: type[trio.socket.SocketType]) -> Iterator[None]:
    """Inside the block, ``trio.socket.socket()`` returns ``cls(stdlib_socket)``.

    Installs a Trio custom socket factory and restores the previous one on
    exit -- the hook a virtual network uses, and the way tests reach the
    generic (descriptor-free) code paths or inject socket failures.
    """

    class Factory(trio.abc.SocketFactory):
        def socket(
            self,
            family: socket.AddressFamily | int = socket.AF_INET,
            type: socket.SocketKind | int = socket.SOCK_STREAM,
            proto: int = 0,
        ) -> trio.socket.SocketType:
            return cls(socket.socket(family, type, proto))  # type: ignore[call-arg]

    previous = trio.socket.set_custom_socket_factory(Factory())
    try:
        yield
    finally:
        trio.socket.set_custom_socket_factory(previous)


def port_of(server: trionet.Server) -> int:
    """The TCP port of a server's first listener."""
    address = server.addresses[0]
    assert isinstance(address, trionet.TCPAddress)
    return address.port


async def connect_tcp(port: int) -> trio.socket.SocketType:
    """A plain Trio socket connected to 127.0.0.1:``port`` (5 s bound), closed on failure."""
    sock = trio.socket.socket()
    try:
        with trio.fail_after(5):
            await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def fill_stream(s: trio.abc.SendStream) -> None:
    """Send until the stream blocks (as trio's own test_highlevel_socket does)."""

    async def sender() -> None:
        while True:
            await s.send_all(b"x" * 10000)

    async def waiter(nursery: trio.Nursery) -> None:
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        nursery.start_soon(waiter, nursery)


class ExitRecordingEcho:
    """An ``async for`` echo handler that records every connection and how its loop ended.

    ``exits`` gets "drained" (a drain ended the iteration), "eof" (the peer
    closed) or "cancelled" -- the bug the drain tests look for: a keep-alive
    loop must end by itself on a drain, not be cancelled.
    """

    def __init__(self) -> None:
        self.conns: list[trionet.Connection] = []
        self.exits: list[str] = []

    async def __call__(self, conn: trionet.Connection) -> None:
        self.conns.append(conn)
        try:
            async for chunk in conn:
                await conn.send_all(chunk)
        except trio.Cancelled:  # pragma: no cover - would be the bug
            self.exits.append("cancelled")
            raise
        self.exits.append("drained" if conn.draining.is_set() else "eof")


class Shutdown:
    """Runs ``server.shutdown(grace)`` in the background and keeps the report."""

    def __init__(self, nursery: trio.Nursery, server: trionet.Server, grace: float) -> None:
        self.report: trionet.ShutdownReport | None = None
        self.started_at = trio.current_time()
        self.returned_at = 0.0
        self.done = trio.Event()
        nursery.start_soon(self._run, server, grace)

    async def _run(self, server: trionet.Server, grace: float) -> None:
        self.report = await server.shutdown(grace)
        self.returned_at = trio.current_time()
        self.done.set()

    async def wait(self, timeout: float = 10.0) -> trionet.ShutdownReport:
        with trio.fail_after(timeout):
            await self.done.wait()
        assert self.report is not None
        return self.report


class FakeTime:
    """Stands in for the ``time`` module of ``trionet._ratelimit``: its clock
    moves only when a test moves ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def limiter_clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """Stop the clock of trionet's log rate limiters (``trionet._ratelimit``)."""
    fake = FakeTime()
    monkeypatch.setattr(_ratelimit, "time", fake)
    return fake
