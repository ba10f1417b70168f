"""trionet._poller: Connections parked on the run's shared epoll set.

A Connection on a real kernel socket parks with
``trio.lowlevel.wait_task_rescheduled`` and a one-shot (``EPOLLONESHOT``)
registration in one epoll set per run, served by one Trio system task.  These
tests check, on real loopback / socketpair sockets, that:

* a Connection still passes Trio's stream conformance check, with the
  poller and with ``trionet._poller.ENABLED = False`` (Trio's own waits);
* data, EOF, resets and ``close()`` wake parked receives and sends, and
  ``close()`` takes the descriptor out of the epoll set;
* a cancelled wait leaves nothing behind: the one-shot event that fires
  later finds no waiter and is dropped, and the next wait works;
* a reader and a writer parked together on one descriptor are woken only
  by their own events (the poller re-arms the registration for the one
  still parked);
* a batch of hundreds of ready descriptors -- more than one ``epoll.poll``
  call returns -- wakes every waiter with its own data;
* a drain ends ``async for`` handlers parked on the poller (and only their
  reader, not a parked writer of the same connection);
* a parked idle connection carries no materialised frame objects and costs
  far less memory than one parked in Trio's ``wait_readable``;
* a poller that fails hands its parked connections over to Trio's waits.

Synchronisation is by ``trio.Event`` and ``wait_all_tasks_blocked``; every
wait on the network is bounded with ``trio.fail_after``.
"""

from __future__ import annotations

import errno
import gc
import logging
import resource
import select
import socket as stdlib_socket
import struct
import tracemalloc
import types
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import outcome
import pytest
import trio
import trio.testing
from conftest import connect_tcp, port_of

import trionet
from trionet import Connection
from trionet._stream import SocketConnection, _poller
from trionet._stream._poller import READ, WRITE, Poller
from trionet._stream._sockopts import raw_socket_of
from trionet.testing import ExitRecordingEcho, fill_stream

ServerFactory = Callable[..., Awaitable[trionet.Server]]
Pair = tuple[Connection, Connection]

needs_epoll = pytest.mark.skipif(not hasattr(select, "epoll"), reason="the poller needs epoll")

if hasattr(select, "epoll"):
    ARM_READ = select.EPOLLIN | select.EPOLLRDHUP
    ARM_WRITE = select.EPOLLOUT
else:  # pragma: no cover - not Linux
    ARM_READ = ARM_WRITE = 0

BIG = b"w" * (4 << 20)


# ----------------------------------------------------------------------
# Helpers


@pytest.fixture
def poller_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The poller enabled for this test's run (a sync fixture: set before the run)."""
    if not hasattr(select, "epoll"):  # pragma: no cover - not Linux
        pytest.skip("the poller needs epoll")
    monkeypatch.setattr(_poller, "ENABLED", True)


@pytest.fixture
def poller_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trio's own waits for this test's run: set before the run (and its first poller)."""
    monkeypatch.setattr(_poller, "ENABLED", False)


@pytest.fixture
def parks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Connection, int]]:
    """Every ``Poller.park(conn, how)`` call, in order."""
    log: list[tuple[Connection, int]] = []
    original = Poller.park

    def spy(self: Poller, p: Any, how: int) -> bool:
        log.append((p, how))
        return original(self, p, how)

    monkeypatch.setattr(Poller, "park", spy)
    return log


@contextmanager
def closing_all(*things: Connection | stdlib_socket.socket) -> Iterator[None]:
    """Close every one of ``things`` on the way out."""
    try:
        yield
    finally:
        for thing in things:
            thing.close()


def count(log: list[tuple[Connection, int]], conn: Connection, how: int) -> int:
    return sum(1 for c, h in log if c is conn and h == how)


def poller_of(conn: Connection) -> Poller:
    poller = conn._poller
    assert poller is not None, "this connection does not use the poller"
    assert not poller.broken
    return poller


def registered(conn: Connection) -> bool:
    """Is ``conn`` the one the poller knows for its descriptor?"""
    return poller_of(conn)._by_fd.get(conn._pfd) is conn


def socketpair_conns(sndbuf: int | None = None) -> Pair:
    """Two Connections over an AF_UNIX socketpair (``sndbuf`` on both, if given)."""
    a, b = stdlib_socket.socketpair()
    if sndbuf is not None:
        for s in (a, b):
            s.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, sndbuf)
    return adopt(a), adopt(b)


def adopt(sock: stdlib_socket.socket | trio.socket.SocketType) -> Connection:
    """A Connection that owns its kernel socket outright, as a server makes.

    Only those park on the poller (a caller-held Trio socket could be closed
    behind the Connection's back).
    """
    raw = sock if isinstance(sock, stdlib_socket.socket) else raw_socket_of(sock)
    assert raw is not None
    return SocketConnection._adopt(raw)


def conn_and_raw_peer() -> tuple[Connection, stdlib_socket.socket]:
    """A Connection and its peer as a plain (blocking) stdlib socket."""
    a, b = stdlib_socket.socketpair()
    return adopt(a), b


async def tcp_conns() -> Pair:
    """A loopback TCP pair: (client-side, server-side) Connections."""
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = await connect_tcp(listener.getsockname()[1])
        with trio.fail_after(5):
            server, _ = await listener.accept()
    return adopt(client), adopt(server)


async def receive_total(conn: Connection, n: int) -> bytes:
    """Receive exactly ``n`` bytes (without the buffered helpers)."""
    chunks = []
    got = 0
    while got < n:
        data = await conn.receive_some(1 << 20)
        assert data, "unexpected EOF"
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


class Outcome:
    """Runs ``fn()`` in the nursery, in its own cancel scope; keeps its result or exception."""

    def __init__(self, nursery: trio.Nursery, fn: Callable[[], Awaitable[Any]]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        nursery.start_soon(self._run, fn)

    async def _run(self, fn: Callable[[], Awaitable[Any]]) -> None:
        try:
            with self.scope:
                self.value = await fn()
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    async def wait(self, timeout: float = 5.0) -> Any:
        with trio.fail_after(timeout):
            await self.done.wait()
        return self.value


# ----------------------------------------------------------------------
# 1. Conformance, with and without the poller


async def _conformance(kind: str) -> list[Connection]:
    made: list[Connection] = []

    async def maker() -> Pair:
        pair = socketpair_conns() if kind == "unix" else await tcp_conns()
        made.extend(pair)
        return pair

    async def clogged_maker() -> Pair:
        left, right = await maker()
        await fill_stream(left)
        await fill_stream(right)
        return left, right

    # A clogged TCP pair is not stable on Linux (see test_client.py): the
    # clogged variant runs on the socketpair, as Trio's own tests do.
    with trio.fail_after(60):
        await trio.testing.check_half_closeable_stream(
            maker, clogged_maker if kind == "unix" else None
        )
    assert made
    assert all(conn.closed for conn in made)
    return made


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_conformance_with_the_poller(
    poller_on: None, parks: list[tuple[Connection, int]], kind: str
) -> None:
    made = await _conformance(kind)
    poller = poller_of(made[0])
    assert all(conn._poller is poller for conn in made)
    # The waits really went through the poller ...
    assert any(how == READ for _, how in parks)
    if kind == "unix":
        assert any(how == WRITE for _, how in parks)  # the clogged pairs
    # ... and every closed connection left its epoll set.
    assert not any(p is conn for p in poller._by_fd.values() for conn in made)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
async def test_conformance_without_the_poller(
    poller_off: None, parks: list[tuple[Connection, int]], kind: str
) -> None:
    made = await _conformance(kind)
    assert all(conn._poller is None for conn in made)
    assert all(conn._raw is not None for conn in made)  # still the fast path
    assert parks == []
    assert _poller.current_poller() is None


# ----------------------------------------------------------------------
# 2. Waking a parked receive (and send)


@needs_epoll
@pytest.mark.parametrize("event", ["data", "eof"])
async def test_parked_receive_is_woken_by_its_event(
    poller_on: None, nursery: trio.Nursery, event: str
) -> None:
    conn, peer = conn_and_raw_peer()
    with closing_all(conn, peer):
        poller = poller_of(conn)
        receive = Outcome(nursery, conn.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert not receive.done.is_set()
        assert conn._rtask is not None  # parked on the poller, not in Trio's wait
        assert registered(conn)
        assert conn._armed == ARM_READ
        if event == "data":
            peer.send(b"hello")
        else:
            peer.shutdown(stdlib_socket.SHUT_WR)
        await receive.wait()
        assert receive.error is None
        assert receive.value == (b"hello" if event == "data" else b"")
        assert conn._rtask is None
        assert conn._pfd in poller._by_fd  # registered once, for the connection's life
    assert conn._pfd not in poller._by_fd


@needs_epoll
async def test_peer_reset_wakes_a_parked_reader_and_writer(
    poller_on: None, nursery: trio.Nursery
) -> None:
    conn, peer = await tcp_conns()
    with closing_all(conn, peer):
        conn.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 4096)
        peer.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
        reader = Outcome(nursery, conn.receive_some)
        writer = Outcome(nursery, lambda: conn.send_all(BIG))
        await trio.testing.wait_all_tasks_blocked()
        assert conn._rtask is not None
        assert conn._wtask is not None
        peer.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # RST
        await reader.wait()
        await writer.wait()
        # Whichever runs first gets ECONNRESET; after it the socket is shut:
        # a send then fails with EPIPE, a recv returns EOF (as with Trio's waits).
        assert isinstance(writer.error, trio.BrokenResourceError)
        assert isinstance(reader.error, trio.BrokenResourceError) or (
            reader.error is None and reader.value == b""
        )
        assert conn.peer_reset


@needs_epoll
@pytest.mark.parametrize("how", ["close", "aclose", "abort"])
@pytest.mark.parametrize(
    "parked",
    [
        "reader",
        "writer",
        "both",
    ],
)
async def test_close_wakes_parked_tasks_and_leaves_the_epoll_set(
    poller_on: None, nursery: trio.Nursery, how: str, parked: str
) -> None:
    conn, peer = socketpair_conns(sndbuf=4096)
    with closing_all(peer):
        poller = poller_of(conn)
        fd = conn._pfd
        waiters = []
        if parked in ("reader", "both"):
            waiters.append(Outcome(nursery, conn.receive_some))
        if parked in ("writer", "both"):
            waiters.append(Outcome(nursery, lambda: conn.send_all(BIG)))
        await trio.testing.wait_all_tasks_blocked()
        assert (conn._rtask is not None) == (parked in ("reader", "both"))
        assert (conn._wtask is not None) == (parked in ("writer", "both"))
        assert poller._by_fd.get(fd) is conn

        async def closer() -> None:
            if how == "close":
                conn.close()
            elif how == "aclose":
                await conn.aclose()
            else:
                conn.abort()

        await Outcome(nursery, closer).wait()
        for waiter in waiters:
            await waiter.wait()
        errors = [waiter.error for waiter in waiters]
        assert not any(isinstance(e, outcome.AlreadyUsedError) for e in errors), errors
        assert all(isinstance(e, trio.ClosedResourceError) for e in errors), errors
        assert fd not in poller._by_fd
        assert (conn._rtask, conn._wtask, conn._armed) == (None, None, 0)
        # The peer sees the connection end.
        with trio.fail_after(5):
            while data := await peer.receive_some():
                assert set(data) == {ord("w")}
        await trio.testing.wait_all_tasks_blocked()
        assert not poller.broken


@needs_epoll
async def test_a_reused_descriptor_number_parks_and_wakes_normally(
    poller_on: None, nursery: trio.Nursery
) -> None:
    old, old_peer = conn_and_raw_peer()
    with closing_all(old_peer):
        parked = Outcome(nursery, old.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert registered(old)
        fd = old._pfd
        old.close()
        await parked.wait()
        assert isinstance(parked.error, trio.ClosedResourceError)
        assert fd not in poller_of(old)._by_fd
    # The kernel hands out the lowest free number: the new socket gets it.
    new, new_peer = conn_and_raw_peer()
    with closing_all(new, new_peer):
        assert new._pfd == fd
        receive = Outcome(nursery, new.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert registered(new)
        # Closing a connection that never parked touches nobody's registration.
        idle, idle_peer = conn_and_raw_peer()
        idle.close()
        idle_peer.close()
        old.close()  # again: a no-op
        assert registered(new)
        new_peer.send(b"for the new one")
        assert await receive.wait() == b"for the new one"


# ----------------------------------------------------------------------
# 3. Cancellation


@needs_epoll
@pytest.mark.parametrize("order", ["cancel_then_data", "data_then_cancel"])
async def test_cancelled_receive_then_a_late_event_then_receive_again(
    poller_on: None, nursery: trio.Nursery, order: str
) -> None:
    conn, peer = conn_and_raw_peer()
    with closing_all(conn, peer):
        first = Outcome(nursery, conn.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert conn._rtask is not None
        assert conn._armed == ARM_READ
        if order == "cancel_then_data":
            first.scope.cancel()
            peer.send(b"late")
        else:
            # The event is pending in the kernel, but the poller has not run
            # yet when the cancel arrives: the cancel wins.
            peer.send(b"late")
            first.scope.cancel()
        assert conn._rtask is None  # the abort callback cleared the slot at once
        await first.wait()
        assert first.scope.cancelled_caught
        assert (first.value, first.error) == (None, None)
        # The poller has since seen the one-shot event, found no waiter and
        # dropped it (the kernel disarmed the registration).
        await trio.testing.wait_all_tasks_blocked()
        assert conn._armed == 0
        assert registered(conn)
        # No double reschedule, and the data is still there.
        with trio.fail_after(5):
            assert await conn.receive_some() == b"late"
        # The next wait parks, re-arms and is woken as usual.
        second = Outcome(nursery, conn.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert conn._rtask is not None
        assert conn._armed == ARM_READ
        peer.send(b"again")
        assert await second.wait() == b"again"
        assert second.error is None


@needs_epoll
async def test_receive_parked_again_after_a_cancel_is_woken_by_the_still_armed_registration(
    poller_on: None, nursery: trio.Nursery, parks: list[tuple[Connection, int]]
) -> None:
    conn, peer = conn_and_raw_peer()
    with closing_all(conn, peer):
        first = Outcome(nursery, conn.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        first.scope.cancel()
        await first.wait()
        assert first.scope.cancelled_caught
        # Still armed from the cancelled wait: the new waiter just takes the slot.
        assert conn._armed == ARM_READ
        second = Outcome(nursery, conn.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert conn._rtask is not None
        assert count(parks, conn, READ) == 2
        peer.send(b"for the second")
        assert await second.wait() == b"for the second"
        assert count(parks, conn, READ) == 2  # woken once, no spurious wake-ups


@needs_epoll
async def test_cancelled_send_then_a_late_event_then_send_again(
    poller_on: None, nursery: trio.Nursery
) -> None:
    conn, peer = socketpair_conns(sndbuf=4096)
    with closing_all(conn, peer):
        writer = Outcome(nursery, lambda: conn.send_all(BIG))
        await trio.testing.wait_all_tasks_blocked()
        assert conn._wtask is not None
        writer.scope.cancel()
        await writer.wait()
        assert writer.scope.cancelled_caught
        assert conn._wtask is None
        sent = conn.bytes_sent
        assert 0 < sent < len(BIG)
        # Reading it all frees the send buffer: the write event fires with
        # nobody waiting and is dropped.
        with trio.fail_after(5):
            assert await receive_total(peer, sent) == BIG[:sent]
        await trio.testing.wait_all_tasks_blocked()
        assert conn._armed == 0
        with trio.fail_after(5):
            await conn.send_all(b"tail")
            assert await receive_total(peer, 4) == b"tail"
        assert conn.bytes_sent == sent + 4


# ----------------------------------------------------------------------
# 4. A reader and a writer parked together on one descriptor


@needs_epoll
@pytest.mark.parametrize("first", ["reader", "writer"])
async def test_reader_and_writer_parked_together_wake_only_on_their_own_events(
    poller_on: None, nursery: trio.Nursery, parks: list[tuple[Connection, int]], first: str
) -> None:
    conn, peer = socketpair_conns(sndbuf=4096)
    with closing_all(conn, peer):
        reader = Outcome(nursery, conn.receive_some)
        writer = Outcome(nursery, lambda: conn.send_all(BIG))
        await trio.testing.wait_all_tasks_blocked()
        assert conn._rtask is not None
        assert conn._wtask is not None
        assert conn._armed == ARM_READ | ARM_WRITE
        assert count(parks, conn, READ) == 1
        if first == "reader":
            writes = count(parks, conn, WRITE)
            await peer.send_all(b"ping")
            assert await reader.wait() == b"ping"
            await trio.testing.wait_all_tasks_blocked()
            # The writer was not woken (a spurious wake-up would have parked
            # it again) and the poller re-armed the registration for it alone.
            assert not writer.done.is_set()
            assert conn._wtask is not None
            assert count(parks, conn, WRITE) == writes
            assert conn._armed == ARM_WRITE
            # Its own event comes: it finishes.
            with trio.fail_after(10):
                assert await receive_total(peer, len(BIG)) == BIG
            await writer.wait()
            assert writer.error is None
        else:
            # Room in the send buffer, again and again, until it is all sent:
            # the reader must sleep through every one of those events.
            with trio.fail_after(10):
                assert await receive_total(peer, len(BIG)) == BIG
            await writer.wait()
            assert writer.error is None
            await trio.testing.wait_all_tasks_blocked()
            assert count(parks, conn, WRITE) > 1  # the writer did park repeatedly
            assert not reader.done.is_set()
            assert conn._rtask is not None
            assert count(parks, conn, READ) == 1
            assert conn._armed == ARM_READ
            await peer.send_all(b"pong")
            assert await reader.wait() == b"pong"
        assert reader.error is None
        assert conn._rtask is None
        assert conn._wtask is None


# ----------------------------------------------------------------------
# 5. Many connections parked at once


@needs_epoll
@pytest.mark.parametrize("n", [200, 1100])
async def test_many_parked_connections_each_get_their_own_data(
    poller_on: None, parks: list[tuple[Connection, int]], n: int
) -> None:
    # 1100 ready descriptors is more than one ``epoll.poll()`` returns by
    # default (FD_SETSIZE - 1): the rest must arrive in the next batch.
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * n + 200:  # pragma: no cover - depends on the machine
        pytest.skip(f"needs {2 * n + 200} descriptors, RLIMIT_NOFILE is {soft}")
    pairs = [conn_and_raw_peer() for _ in range(n)]
    try:
        got: dict[int, bytes] = {}
        all_in = trio.Event()

        async def reader(i: int, conn: Connection) -> None:
            got[i] = await conn.receive_some()
            if len(got) == n:
                all_in.set()

        async with trio.open_nursery() as nursery:
            for i, (conn, _) in enumerate(pairs):
                nursery.start_soon(reader, i, conn)
            await trio.testing.wait_all_tasks_blocked()
            assert all(conn._rtask is not None for conn, _ in pairs)
            assert all(registered(conn) for conn, _ in pairs)
            poller = poller_of(pairs[0][0])
            assert len(poller._by_fd) >= n
            # Every peer writes before anything else runs: one batch.
            for i, (_, peer) in enumerate(pairs):
                peer.send(b"message for %d" % i)
            with trio.fail_after(10):
                await all_in.wait()
        assert got == {i: b"message for %d" % i for i in range(n)}
        for conn, _ in pairs:
            assert count(parks, conn, READ) == 1
    finally:
        for conn, peer in pairs:
            conn.close()
            peer.close()


# ----------------------------------------------------------------------
# 6. A server drain ends ``async for`` handlers parked on the poller


@needs_epoll
async def test_shutdown_ends_async_for_handlers_parked_on_the_poller(
    poller_on: None, trionet_server: ServerFactory
) -> None:
    n = 20
    echo = ExitRecordingEcho()
    conns = echo.conns
    server = await trionet_server(echo)
    clients = [adopt(await connect_tcp(port_of(server))) for _ in range(n)]
    try:
        with trio.fail_after(10):
            for i, client in enumerate(clients):
                await client.send_all(b"hi %d" % i)  # has spoken: ends at once on drain
                assert await client.receive_some() == b"hi %d" % i
        await trio.testing.wait_all_tasks_blocked()
        assert len(conns) == n
        poller = poller_of(conns[0])
        assert all(conn._poller is poller for conn in conns)
        assert all(conn._rtask is not None for conn in conns)  # parked on the poller
        assert all(registered(conn) for conn in conns)
        with trio.fail_after(10):
            report = await server.shutdown(30)
        assert (report.finished, report.cancelled) == (n, 0)
        assert report.elapsed < 5  # nowhere near the grace period
        assert echo.exits == ["drained"] * n
        assert all(conn.closed for conn in conns)
        assert not any(p is conn for p in poller._by_fd.values() for conn in conns)
        with trio.fail_after(5):
            for client in clients:
                assert await client.receive_some() == b""
    finally:
        for client in clients:
            client.close()


async def test_drain_wakes_only_the_reader_of_a_connection_with_a_parked_writer(
    either_path: str, trionet_server: ServerFactory, parks: list[tuple[Connection, int]]
) -> None:
    # A handler reading with ``async for`` while another task of it is
    # blocked sending (the client is not reading): a drain ends the loop;
    # the sender -- not woken at all on the poller (Poller.interrupt wakes
    # only the reader), or woken by the same notify_closing() and waiting
    # again on Trio's waits -- finishes once the client reads.
    on_poller = either_path == "poller"
    conns: list[Connection] = []
    reader_done = trio.Event()
    writer_done = trio.Event()
    big = b"w" * (8 << 20)

    async def handler(conn: Connection) -> None:
        conns.append(conn)

        async def writer() -> None:
            await conn.send_all(big)
            writer_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            async for _chunk in conn:
                pass
            reader_done.set()

    server = await trionet_server(handler)
    sock = trio.socket.socket()
    with sock:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
        with trio.fail_after(5):
            await sock.connect(("127.0.0.1", port_of(server)))
            await sock.send(b"hello")
        await trio.testing.wait_all_tasks_blocked()
        (conn,) = conns
        assert (conn._rtask is not None) == on_poller
        assert (conn._wtask is not None) == on_poller
        writes = count(parks, conn, WRITE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown, 10)
            with trio.fail_after(5):
                await reader_done.wait()
            await trio.testing.wait_all_tasks_blocked()
            # The writer is still blocked; on the poller it was not even
            # woken: still parked, same count.
            assert not writer_done.is_set()
            assert (conn._wtask is not None) == on_poller
            assert count(parks, conn, WRITE) == writes
            got = 0
            with trio.fail_after(10):
                while got < len(big):
                    data = await sock.recv(1 << 20)
                    assert data
                    got += len(data)
                await writer_done.wait()
                # The handler returned with the tail of the reply still
                # queued, so its close lingers until our EOF ...
                assert await sock.recv(1) == b""
                assert server.stats.lingering == 1
                sock.close()  # ... which ends it: shutdown() returns at once
    assert server.stats.handler_errors == 0
    assert server.stats.lingering == 0


# ----------------------------------------------------------------------
# 7. Memory of a parked idle connection


def awaited_below(task: trio.lowlevel.Task) -> list[types.CoroutineType[Any, Any, Any]]:
    """The coroutines a task is suspended in, below its top one."""
    chain = []
    coro: Any = task.coro.cr_await
    while isinstance(coro, types.CoroutineType):
        chain.append(coro)
        coro = coro.cr_await
    return chain


def has_frame_object(coro: types.CoroutineType[Any, Any, Any]) -> bool:
    # Not ``coro.cr_frame``: asking for it would create the frame object.
    # The GC sees the one CPython made, if it made one.
    return any(isinstance(r, types.FrameType) for r in gc.get_referents(coro))


@needs_epoll
async def test_parked_idle_connections_hold_no_exception_frames(poller_on: None) -> None:
    n = 50
    pairs = [conn_and_raw_peer() for _ in range(n)]
    tasks: list[trio.lowlevel.Task] = []
    control_tasks: list[trio.lowlevel.Task] = []
    release = trio.Event()

    async def idle(conn: Connection) -> None:
        tasks.append(trio.lowlevel.current_task())
        async for _chunk in conn:  # pragma: no cover - nobody sends
            pass

    async def raises_then_waits() -> None:
        try:
            raise BlockingIOError(errno.EAGAIN, "control")
        except BlockingIOError:
            pass
        await release.wait()

    async def control() -> None:
        control_tasks.append(trio.lowlevel.current_task())
        await raises_then_waits()

    try:
        async with trio.open_nursery() as nursery:
            for conn, _ in pairs:
                nursery.start_soon(idle, conn)
            nursery.start_soon(control)
            await trio.testing.wait_all_tasks_blocked()
            # Every one went through a recv() that found nothing, and parked.
            assert all(conn._rtask is not None for conn, _ in pairs)
            assert all(conn.bytes_received == 0 for conn, _ in pairs)
            # The detector works: a coroutine that caught an exception has one.
            (control_task,) = control_tasks
            control_chain = awaited_below(control_task)
            assert control_chain[0].cr_code.co_qualname.endswith("raises_then_waits")
            assert has_frame_object(control_chain[0])
            assert not any(has_frame_object(c) for c in control_chain[1:])
            assert len(tasks) == n
            for task in tasks:
                chain = awaited_below(task)
                # Parked inside Connection's own coroutine(s) -- a method of
                # SocketConnection or of one of its mixins -- then Trio's trap.
                names = [c.cr_code.co_qualname for c in chain]
                owners = {cls.__qualname__ for cls in SocketConnection.__mro__}
                assert names[0].split(".")[0] in owners, names
                assert names[-1] == "wait_task_rescheduled", names
                assert [c.cr_code.co_qualname for c in chain if has_frame_object(c)] == []
            gc.collect()
            assert [o for o in gc.get_objects() if isinstance(o, BlockingIOError)] == []
            release.set()
            nursery.cancel_scope.cancel()
    finally:
        for conn, peer in pairs:
            conn.close()
            peer.close()


def _parked_bytes_per_connection(n: int, wait: str) -> tuple[float, bool]:
    """Bytes allocated per task for parking in ``async for`` (or on an Event)."""
    result: list[float] = []
    used_poller: list[bool] = []

    async def main() -> None:
        pairs = [conn_and_raw_peer() for _ in range(n + 1)]
        used_poller.append(pairs[0][0]._poller is not None)
        event = trio.Event()

        async def park(conn: Connection) -> None:
            if wait == "event":
                await event.wait()
            else:
                async for _chunk in conn:  # pragma: no cover - nobody sends
                    pass

        try:
            # Warm up (first-use allocations, the poller's system task).
            async with trio.open_nursery() as nursery:
                nursery.start_soon(park, pairs[0][0])
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
            async with trio.open_nursery() as nursery:
                gc.collect()
                before = tracemalloc.take_snapshot()
                for conn, _ in pairs[1:]:
                    nursery.start_soon(park, conn)
                await trio.testing.wait_all_tasks_blocked()
                gc.collect()
                after = tracemalloc.take_snapshot()
                diff = after.compare_to(before, "filename")
                result.append(sum(d.size_diff for d in diff) / n)
                nursery.cancel_scope.cancel()
        finally:
            for conn, peer in pairs:
                conn.close()
                peer.close()

    trio.run(main)
    return result[0], used_poller[0]


@pytest.fixture
def tracing() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


@needs_epoll
def test_a_parked_connection_costs_far_less_than_one_in_trio_wait_readable(
    monkeypatch: pytest.MonkeyPatch, tracing: None
) -> None:
    n = 200
    # The task itself (its coroutine, context, ...) is the baseline.
    baseline, _ = _parked_bytes_per_connection(n, "event")
    monkeypatch.setattr(_poller, "ENABLED", True)
    on_poller, used = _parked_bytes_per_connection(n, "io")
    assert used
    monkeypatch.setattr(_poller, "ENABLED", False)
    on_trio, used = _parked_bytes_per_connection(n, "io")
    assert not used
    poller_cost = on_poller - baseline
    trio_cost = on_trio - baseline
    # Measured: about 0.2 KiB against 1.2 KiB.
    assert poller_cost < trio_cost / 2, (poller_cost, trio_cost)


# ----------------------------------------------------------------------
# A poller that fails hands its connections over to Trio's waits


class FailingEpoll:
    """A real epoll set whose ``poll`` raises once told to."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self.fail = False

    def fileno(self) -> int:
        return self._ep.fileno()

    def register(self, fd: int, mask: int) -> None:
        self._ep.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self._ep.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self._ep.unregister(fd)

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        if self.fail:
            raise OSError(errno.EIO, "simulated epoll failure")
        return self._ep.poll(timeout, maxevents)

    def close(self) -> None:
        self._ep.close()


def install_failing_poller(
    epoll_class: type[FailingEpoll] = FailingEpoll,
) -> tuple[Poller, FailingEpoll]:
    """Make a Poller on a FailingEpoll (or subclass) this run's poller (before any Connection)."""
    poller = Poller()
    poller._ep.close()
    ep = epoll_class()
    poller._ep = ep  # type: ignore[assignment]
    _poller._poller_var.set(poller)
    trio.lowlevel.spawn_system_task(poller._run, name="test poller")
    return poller, ep


async def fail_poller_and_wake(
    ep: FailingEpoll, trigger_peer: stdlib_socket.socket, woken: Outcome
) -> None:
    """Make the poller's next epoll call fail, and wake it with data for ``woken``.

    Returns once ``woken`` (a receive on ``trigger_peer``'s connection) has
    the data and every task has settled after the failure.
    """
    ep.fail = True
    trigger_peer.send(b"trigger")
    assert await woken.wait() == b"trigger"
    await trio.testing.wait_all_tasks_blocked()


async def assert_both_directions_served(peer: Connection, reader: Outcome, writer: Outcome) -> None:
    """The parked ``reader`` gets data from ``peer``; the parked ``writer`` (of BIG) finishes."""
    await peer.send_all(b"ping")
    assert await reader.wait() == b"ping"
    with trio.fail_after(10):
        assert await receive_total(peer, len(BIG)) == BIG
    await writer.wait()
    assert writer.error is None


@needs_epoll
async def test_a_failed_poller_wakes_its_connections_onto_trio_waits(
    poller_on: None, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    poller, ep = install_failing_poller()
    trigger, trigger_peer = conn_and_raw_peer()
    idle, idle_peer = conn_and_raw_peer()
    with closing_all(trigger, trigger_peer, idle, idle_peer):
        assert trigger._poller is poller
        assert idle._poller is poller
        woken = Outcome(nursery, trigger.receive_some)
        waiting = Outcome(nursery, idle.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert trigger._rtask is not None
        assert idle._rtask is not None
        with caplog.at_level(logging.ERROR, logger="trionet.poller"):
            await fail_poller_and_wake(ep, trigger_peer, woken)
        assert poller.broken
        assert poller._by_fd == {}
        assert "poller failed" in caplog.text
        # The idle one was woken, found nothing, and now waits in Trio's
        # wait_readable instead: still parked, no longer on the poller.
        assert not waiting.done.is_set()
        assert idle._rtask is None
        idle_peer.send(b"still delivered")
        assert await waiting.wait() == b"still delivered"
        assert waiting.error is None
        # New waits use Trio's too.
        again = Outcome(nursery, idle.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert idle._rtask is None
        idle_peer.send(b"and again")
        assert await again.wait() == b"and again"


# ----------------------------------------------------------------------
# Closing the Trio socket directly (``conn.socket.close()``)


@pytest.fixture(
    params=[
        pytest.param("poller", marks=[needs_epoll]),
        "trio",
    ]
)
def either_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both parking paths, chosen before the run (and its first poller)."""
    monkeypatch.setattr(_poller, "ENABLED", request.param == "poller")
    assert isinstance(request.param, str)
    return request.param


async def test_closing_the_trio_socket_directly_wakes_a_parked_receive(
    either_path: str, nursery: trio.Nursery
) -> None:
    # Trio's socket close() calls notify_closing(), which wakes a task parked
    # in Trio's wait_readable with ClosedResourceError.  The poller is not
    # told -- so asking for conn.socket moves the connection (and its parked
    # receive) onto Trio's waits first.
    conn, peer = conn_and_raw_peer()
    assert (conn._poller is not None) == (either_path == "poller")
    with closing_all(peer):
        receive = Outcome(nursery, conn.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert not receive.done.is_set()
        conn.socket.close()
        with trio.move_on_after(5):
            await receive.done.wait()
        receive.scope.cancel()  # (if still parked)
        assert receive.done.is_set() and not receive.scope.cancelled_caught, (
            "the receive is still parked after the socket closed"
        )
        assert isinstance(receive.error, trio.ClosedResourceError)


@needs_epoll
async def test_a_failed_poller_wakes_a_reader_and_a_writer_of_one_connection(
    poller_on: None, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    poller, ep = install_failing_poller()
    conn, peer = socketpair_conns(sndbuf=4096)
    trigger, trigger_peer = conn_and_raw_peer()
    with closing_all(conn, peer, trigger, trigger_peer):
        reader = Outcome(nursery, conn.receive_some)
        writer = Outcome(nursery, lambda: conn.send_all(BIG))
        woken = Outcome(nursery, trigger.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert conn._rtask is not None
        assert conn._wtask is not None
        with caplog.at_level(logging.CRITICAL, logger="trionet.poller"):
            await fail_poller_and_wake(ep, trigger_peer, woken)
        assert poller.broken
        # Both retried and went back to sleep, now in Trio's waits.
        assert reader.error is None, repr(reader.error)
        assert writer.error is None, repr(writer.error)
        assert not reader.done.is_set()
        assert not writer.done.is_set()
        await assert_both_directions_served(peer, reader, writer)


# ----------------------------------------------------------------------
# fork


@needs_epoll
def test_a_forked_child_does_not_park_on_the_parents_poller() -> None:
    # The child inherits the poller object -- with a connection parked on it
    # -- but not the system task serving it.  A connection carried into a
    # new run in the child must use Trio's waits and still get its data.
    import os

    a, a_peer = stdlib_socket.socketpair()
    b, b_peer = stdlib_socket.socketpair()

    async def parent() -> None:
        conn = adopt(a)
        poller = conn._poller
        assert poller is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            assert registered(conn) and conn._rtask is not None  # parked on it
            carried = adopt(b)  # made in this run: it points at this poller
            assert carried._poller is poller

            def fork() -> int:
                # Forked from a worker thread, which has no Trio run of its
                # own, so the child can start a fresh one.
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child reports through its exit code
                    ok = poller.broken and not poller._by_fd

                    async def child() -> bytes:
                        with trio.fail_after(5):
                            return await carried.receive_some()

                    try:
                        ok = ok and trio.run(child) == b"to the child"
                    except BaseException:
                        ok = False
                    os._exit(0 if ok else 1)
                return pid

            pid = await trio.to_thread.run_sync(fork)
            b_peer.send(b"to the child")
            _, status = await trio.to_thread.run_sync(os.waitpid, pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            assert not poller.broken and registered(conn)  # the parent's is untouched
            a_peer.send(b"to the parent")
        conn.close()

    try:
        trio.run(parent)
    finally:
        for s in (a_peer, b, b_peer):
            s.close()


# ----------------------------------------------------------------------
# A full epoll set (fs.epoll.max_user_watches, ENOMEM)


class FullEpoll(FailingEpoll):
    """An epoll set that refuses new descriptors with ENOSPC."""

    def register(self, fd: int, mask: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


@needs_epoll
async def test_a_full_epoll_set_moves_the_connection_to_trio_waits(
    poller_on: None,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not the peer's fault: the receive must not fail (nor count as a reset);
    # the connection parks on Trio's waits instead and still gets its data.
    poller, _ = install_failing_poller(FullEpoll)
    monkeypatch.setattr(_poller, "_warned_full", False)
    conn, peer = conn_and_raw_peer()
    assert conn._poller is poller
    with closing_all(conn, peer), caplog.at_level(logging.WARNING, logger="trionet.poller"):
        receive = Outcome(nursery, conn.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert conn._poller is None  # moved to Trio's waits
        assert conn._rtask is None and not poller._by_fd
        peer.send(b"still served")
        assert await receive.wait() == b"still served"
        assert not conn.peer_reset
    assert [r.getMessage() for r in caplog.records if r.name == "trionet.poller"] == [
        "trionet's epoll set refused a descriptor ([Errno 28] No space left on device); "
        "such connections use Trio's own waits"
    ]


class NoRoomToModify(FailingEpoll):
    """An epoll set that registers, but refuses to re-arm with ENOMEM once told to."""

    def modify(self, fd: int, mask: int) -> None:
        if self.fail:
            raise OSError(errno.ENOMEM, "Cannot allocate memory")
        super().modify(fd, mask)


@needs_epoll
async def test_running_out_of_room_wakes_the_other_direction_onto_trio_waits(
    poller_on: None,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A reader is parked on the poller; the writer's re-arm then fails for
    # lack of room.  The reader must not be stranded there: it is woken,
    # retries on Trio's waits, still gets its data, and close() reaches it.
    poller, ep = install_failing_poller(NoRoomToModify)
    monkeypatch.setattr(_poller, "_warned_full", False)
    conn, peer = socketpair_conns(sndbuf=4096)
    with closing_all(conn, peer), caplog.at_level(logging.CRITICAL, logger="trionet.poller"):
        reader = Outcome(nursery, conn.receive_some)
        await trio.testing.wait_all_tasks_blocked()
        assert conn._rtask is not None and registered(conn)
        ep.fail = True
        writer = Outcome(nursery, lambda: conn.send_all(BIG))
        await trio.testing.wait_all_tasks_blocked()
        assert conn._poller is None  # both directions on Trio's waits now
        assert conn._rtask is None and conn._wtask is None
        assert not poller._by_fd
        assert not reader.done.is_set()
        await assert_both_directions_served(peer, reader, writer)
