"""The idle timeout: on real sockets, and the reaper's logic on a fake clock."""

from __future__ import annotations

import time
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import connect_tcp, port_of

import trionet
from trionet._server._idle import MAX_TICK, MIN_TICK, IdleReaper
from trionet._stats import Counters

pytestmark = pytest.mark.usefixtures("network")

ServerFactory = Any


async def open_client(server: trionet.Server) -> trio.socket.SocketType:
    return await connect_tcp(port_of(server))


async def time_until_closed(sock: trio.socket.SocketType, since: float, limit: float) -> float:
    """Read (and drop) data until the server closes; seconds from ``since`` to the EOF."""
    with trio.fail_after(limit):
        while True:
            try:
                data = await sock.recv(4096)
            except ConnectionResetError:
                data = b""
            if not data:
                return time.monotonic() - since


# ----------------------------------------------------------------------
# Real sockets

TIMEOUT = 0.3


async def test_silent_client_is_closed_within_its_bound(trionet_server: ServerFactory) -> None:
    outcome: list[str] = []
    done = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        try:
            await conn.receive_some()
        except trio.Cancelled:
            outcome.append("cancelled")
            raise
        finally:
            done.set()
        outcome.append("returned")  # pragma: no cover - would be the bug

    server = await trionet_server(handler, idle_timeout=TIMEOUT)
    sock = await open_client(server)
    connected = time.monotonic()
    with sock:
        took = await time_until_closed(sock, connected, limit=TIMEOUT + 3)
    assert TIMEOUT <= took <= TIMEOUT + 1.0
    with trio.fail_after(5):
        await done.wait()
    assert outcome == ["cancelled"]  # the handler was cancelled, not just its socket closed
    assert server.stats.active == 0
    assert server.stats.idle_closed == 1
    assert server.stats.handler_errors == 0


async def test_stats_are_final_when_an_idle_client_sees_eof(trionet_server: ServerFactory) -> None:
    # The reaper closes the socket while the handler is still unwinding (here
    # it takes its time in a shielded cleanup): a client that sees EOF must
    # already read final figures.
    may_finish = trio.Event()
    finished = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(await conn.receive_exactly(4))
        try:
            await conn.receive_some()
        finally:
            with trio.CancelScope(shield=True):
                await may_finish.wait()
            finished.set()

    server = await trionet_server(handler, idle_timeout=TIMEOUT)
    sock = await open_client(server)
    with sock:
        await sock.send(b"ping")
        with trio.fail_after(5):
            assert await sock.recv(4) == b"ping"
        await time_until_closed(sock, time.monotonic(), limit=TIMEOUT + 3)
        stats = server.stats  # no checkpoint since the EOF
    assert not finished.is_set()  # the handler is still running ...
    assert (stats.accepted, stats.active, stats.closed, stats.idle_closed) == (1, 0, 1, 1)
    assert (stats.bytes_received, stats.bytes_sent) == (4, 4)  # ... yet the figures are final
    assert server.connections == ()
    may_finish.set()
    with trio.fail_after(5):
        await finished.wait()
    assert server.stats == stats


async def test_active_client_is_never_closed(trionet_server: ServerFactory) -> None:
    async def echo(conn: trionet.Connection) -> None:
        async for chunk in conn:
            await conn.send_all(chunk)

    server = await trionet_server(echo, idle_timeout=TIMEOUT)
    sock = await open_client(server)
    with sock:
        # Talk every TIMEOUT/3 for more than four timeouts: never idle.
        for i in range(14):
            await trio.sleep(TIMEOUT / 3)
            # Every byte the server moves for this exchange (its receive, its
            # echo) happens after this instant: the last activity is later.
            last_byte_sent = time.monotonic()
            with trio.fail_after(2):
                await sock.send(b"%d" % i)
                assert await sock.recv(100) == b"%d" % i
        assert server.stats.idle_closed == 0
        # Then fall silent: closed within the bound, counted from the last
        # byte -- never early.
        took = await time_until_closed(sock, last_byte_sent, limit=TIMEOUT + 3)
    assert TIMEOUT <= took <= TIMEOUT + 1.0
    assert server.stats.idle_closed == 1


async def test_bytes_in_either_direction_count_as_activity(trionet_server: ServerFactory) -> None:
    async def ticker(conn: trionet.Connection) -> None:
        for _ in range(12):  # 12 * TIMEOUT/3 = 4 timeouts of server-to-client traffic
            await conn.send_all(b".")
            await trio.sleep(TIMEOUT / 3)
        await conn.send_all(b"done")

    server = await trionet_server(ticker, idle_timeout=TIMEOUT)
    sock = await open_client(server)
    received = b""
    with sock, trio.fail_after(10):
        while not received.endswith(b"done"):
            chunk = await sock.recv(100)
            assert chunk, "closed while the server was still sending"
            received += chunk
    assert received == b"." * 12 + b"done"
    assert server.stats.idle_closed == 0


async def test_one_shared_reaper_not_a_task_per_connection(
    trionet_server: ServerFactory,
) -> None:
    started = 0
    all_started = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        nonlocal started
        started += 1
        if started == 20:
            all_started.set()
        await conn.receive_some()

    server = await trionet_server(handler, idle_timeout=30)
    clients = [await open_client(server) for _ in range(20)]
    with trio.fail_after(5):
        await all_started.wait()
    nursery = server._table.nursery
    assert nursery is not None
    # One task per handler plus the reaper: nothing per connection besides.
    assert len(nursery.child_tasks) == 20 + 1
    for sock in clients:
        sock.close()


# ----------------------------------------------------------------------
# The reaper's logic, with fake connections and a fake clock (no I/O)


@attrs.define(eq=False)
class FakeConn:
    """A connection and its server record in one (what the reaper reads)."""

    id: int
    bytes_received: int = 0
    bytes_sent: int = 0
    seen_bytes: int = 0
    seen_at: float = -1.0
    scope: trio.CancelScope | None = attrs.field(factory=trio.CancelScope)
    closed_at: float | None = None

    @property
    def conn(self) -> FakeConn:
        return self

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = trio.current_time()


def test_tick_is_a_quarter_of_the_timeout_capped_and_floored() -> None:
    assert IdleReaper(0.4, {}, Counters()).tick == pytest.approx(0.1)
    assert IdleReaper(60, {}, Counters()).tick == MAX_TICK
    # A tiny timeout must not turn the reaper into a busy loop ...
    assert IdleReaper(0.001, {}, Counters()).tick == MIN_TICK == 0.05
    # ... and the floor keeps the close within the promised bound.
    assert 0.001 + 2 * MIN_TICK <= 0.001 + 1.0


async def test_tiny_timeout_scans_at_the_floor_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    scans = 0

    class Counting(IdleReaper):
        __slots__ = ()

        def scan(self, now: float) -> int:
            nonlocal scans
            scans += 1
            return super().scan(now)

    conn = FakeConn(1)
    reaper = Counting(0.001, {1: conn}, Counters())
    reaper.watch(conn, conn.scope)
    start = trio.current_time()
    with trio.move_on_after(1.0):
        await reaper.run()
    assert scans == pytest.approx(1.0 / MIN_TICK, abs=1)  # 20 a second, not 4,000
    assert conn.closed_at is not None
    assert conn.closed_at - start <= 0.001 + 2 * MIN_TICK + 1e-9


async def test_scan_skips_connections_whose_handler_has_not_started() -> None:
    # A swept connection waiting for a max_connections slot has no cancel
    # scope yet: the reaper must not close it, however long it waits.
    counters = Counters()
    waiting = FakeConn(1, scope=None)
    reaper = IdleReaper(1.0, {1: waiting}, counters)
    assert reaper.scan(trio.current_time() + 100) == 0
    assert waiting.closed_at is None
    # Once its handler starts, the clock starts then, not at accept.
    waiting.scope = trio.CancelScope()
    reaper.watch(waiting, waiting.scope)
    t0 = waiting.seen_at
    assert reaper.scan(t0 + 0.9) == 0
    assert reaper.scan(t0 + 1.0) == 1
    assert counters.idle_closed == 1


@pytest.mark.parametrize("timeout", [0.3, 2.0, 30.0])
async def test_reaper_bounds_on_a_fake_clock(
    autojump_clock: trio.testing.MockClock, timeout: float
) -> None:
    counters = Counters()
    conns: dict[int, FakeConn] = {}
    reaper = IdleReaper(timeout, conns, counters)
    last_activity: dict[int, float] = {}

    def add(conn_id: int) -> FakeConn:
        conn = FakeConn(conn_id)
        conns[conn_id] = conn
        reaper.watch(conn, conn.scope)
        last_activity[conn_id] = trio.current_time()
        return conn

    async def chatter(conn: FakeConn, gap: float, times: int, sending: bool = False) -> None:
        for _ in range(times):
            await trio.sleep(gap)
            assert not conn.closed, f"conn {conn.id} closed while active"
            if sending:
                conn.bytes_sent += 1
            else:
                conn.bytes_received += 1
            last_activity[conn.id] = trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reaper.run)
        silent = add(1)
        # Active at just under the timeout between bytes: must never be closed
        # while it talks, only after it stops.
        busy = add(2)
        nursery.start_soon(chatter, busy, timeout * 0.9, 10)
        # Sends (bytes_sent counts too) at odd moments between ticks.
        odd = add(3)
        nursery.start_soon(chatter, odd, reaper.tick * 1.37, 7, True)
        late = add(4)  # one late byte, just before it would have timed out
        nursery.start_soon(chatter, late, timeout * 0.99, 1)
        await trio.sleep(timeout * 20)
        nursery.cancel_scope.cancel()

    for conn in (silent, busy, odd, late):
        assert conn.closed_at is not None, f"conn {conn.id} never closed"
        idle_for = conn.closed_at - last_activity[conn.id]
        assert timeout <= idle_for <= timeout + 2 * reaper.tick + 1e-9, (conn.id, idle_for)
        assert timeout + 2 * reaper.tick <= timeout + 1.0
        assert conn.scope is not None and conn.scope.cancel_called
    assert counters.idle_closed == 4


async def test_scan_stamps_progress_and_closes_once() -> None:
    counters = Counters()
    conn = FakeConn(7)
    reaper = IdleReaper(1.0, {7: conn}, counters)
    reaper.watch(conn, conn.scope)
    t0 = conn.seen_at
    assert reaper.scan(t0 + 0.5) == 0
    conn.bytes_sent = 10
    assert reaper.scan(t0 + 0.9) == 0
    assert conn.seen_at == t0 + 0.9  # progress moved the stamp
    assert reaper.scan(t0 + 1.8) == 0  # idle 0.9 s: not yet
    assert reaper.scan(t0 + 1.9) == 1  # idle 1.0 s: closed
    assert reaper.scan(t0 + 5.0) == 0  # already closed: not counted twice
    assert counters.idle_closed == 1
