"""The Connection hot path keeps Trio's semantics: cancellation, fairness, budgets.

These tests pin down what the performance work (issue 5) must not break:

* every operation is a cancel point, even one that could complete at once;
* ``schedule_budget`` bounds how many immediately-completed receives may
  run between two schedule points (1 = every one, Trio's strict rule), and a
  send always yields;
* one connection streaming at full speed cannot starve another;
* the bulk-read growth and the drain wake-up (``Poller.interrupt``) behave.
"""

from __future__ import annotations

import functools
import itertools
import socket as stdlib_socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import trio
import trio.testing
from conftest import ProxySocket, port_of

import trionet
from trionet._stream import DEFAULT_RECEIVE_SIZE, ConnOptions, SocketConnection
from trionet._stream._socket_receive import _ITER_MAX, _SPIN_BACKOFF
from trionet._stream._sockopts import raw_socket_of

ServerFactory = Callable[..., Awaitable[trionet.Server]]
T = TypeVar("T")


async def socket_pair(
    schedule_budget: int = 1, *, generic: bool = False
) -> tuple[trionet.Connection, trio.socket.SocketType]:
    """A Connection over one end of a real loopback TCP pair, the raw other end.

    ``generic=True`` wraps the Connection's socket in the test suite's
    ProxySocket (a custom-factory socket): the descriptor-free generic path.
    """
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server_sock, _ = await listener.accept()
    listener.close()
    if generic:
        conn = trionet.Connection(ProxySocket(server_sock), schedule_budget=schedule_budget)
    else:
        # As a server builds it: owning the kernel socket, parked on the poller.
        raw = raw_socket_of(server_sock)
        assert raw is not None
        conn = SocketConnection._adopt(raw, options=ConnOptions(budget=schedule_budget))
        assert conn._poller is not None
    assert (conn._raw is None) == generic
    return conn, client


@pytest.fixture(params=[(1, False), (64, False), (1, True)], ids=["strict", "budget64", "generic"])
async def pair(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[trionet.Connection, trio.socket.SocketType]]:
    budget, generic = request.param
    conn, peer = await socket_pair(budget, generic=generic)
    try:
        yield conn, peer
    finally:
        conn.close()
        peer.close()


async def assert_cancel_points(*ops: Callable[[], Awaitable[object]]) -> None:
    """Each call, made in an already-cancelled scope, raises Cancelled."""
    for op in ops:
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await op()


async def test_cancelled_receive_does_no_io_even_with_data_waiting(
    pair: tuple[trionet.Connection, trio.socket.SocketType],
) -> None:
    conn, peer = pair
    await peer.send(b"hello")
    await trio.testing.wait_all_tasks_blocked()
    await assert_cancel_points(
        conn.receive_some,
        functools.partial(conn.receive_exactly, 5),
        functools.partial(conn.receive_until, b"o", max_size=10),
        conn.__anext__,
    )
    # Nothing was consumed by the cancelled calls.
    with trio.fail_after(5):
        assert await conn.receive_exactly(2) == b"he"
    # Now with bytes sitting in trionet's own buffer: still a cancel point.
    await peer.send(b"\nmore")
    await trio.testing.wait_all_tasks_blocked()
    await assert_cancel_points(
        conn.receive_some,
        conn.receive_line,
        functools.partial(conn.receive_exactly, 1),
        conn.__anext__,
        conn.send_eof,
        conn.wait_send_all_might_not_block,
    )
    with trio.fail_after(5):
        assert await conn.receive_line() == b"llo"
    assert not conn._eof_sent


async def test_cancelled_send_sends_nothing(
    pair: tuple[trionet.Connection, trio.socket.SocketType],
) -> None:
    conn, peer = pair
    await assert_cancel_points(functools.partial(conn.send_all, b"must not arrive"))
    assert conn.bytes_sent == 0
    await conn.send_all(b"ok")
    with trio.fail_after(5):
        assert await peer.recv(100) == b"ok"


@pytest.mark.parametrize("op", ["send_all", "receive_some", "anext"])
@pytest.mark.parametrize("generic", [False, True], ids=["fast", "generic"])
async def test_strict_budget_makes_every_operation_a_schedule_point(op: str, generic: bool) -> None:
    conn, peer = await socket_pair(1, generic=generic)
    try:
        await _every_operation_schedules(conn, peer, op)
    finally:
        conn.close()
        peer.close()


async def _every_operation_schedules(
    conn: trionet.Connection, peer: trio.socket.SocketType, op: str
) -> None:
    for _ in range(20):
        if op == "send_all":
            with trio.testing.assert_checkpoints():
                await conn.send_all(b"x")
        else:
            await peer.send(b"y")
            await trio.testing.wait_all_tasks_blocked()
            with trio.testing.assert_checkpoints():
                data = await (conn.receive_some(1) if op == "receive_some" else conn.__anext__())
            assert data == b"y"


async def yielded(operation: Awaitable[T]) -> tuple[T, bool]:
    """Await ``operation``; also say whether it went through a schedule point."""
    task = trio.lowlevel.current_task()
    before = task._schedule_points
    result = await operation
    return result, task._schedule_points != before


def longest_run_without_yield(yields: list[bool]) -> int:
    """The most operations in a row that skipped their schedule point."""
    return max((len(list(run)) for y, run in itertools.groupby(yields) if not y), default=0)


@pytest.mark.parametrize("budget", [2, 4])
async def test_budget_bounds_receives_between_schedule_points(budget: int) -> None:
    conn, peer = await socket_pair(schedule_budget=budget)
    try:
        await peer.send(b"z" * 64)
        await trio.testing.wait_all_tasks_blocked()
        yields = []
        for _ in range(64):
            data, did_yield = await yielded(conn.receive_some(1))
            assert data == b"z"  # always at once: 64 bytes wait
            yields.append(did_yield)
        # Never more than budget - 1 receives in a row without yielding ...
        assert longest_run_without_yield(yields) == budget - 1
        # ... and the budget really did save schedule points.
        assert yields.count(False) == 64 * (budget - 1) // budget
    finally:
        conn.close()
        peer.close()


@pytest.mark.parametrize("budget", [1, 4, 64])
async def test_send_always_yields_and_refills_the_budget(budget: int) -> None:
    # Request/response: receive (may skip its schedule point), send (always
    # yields), receive again -- the yield after the send gives the peer time
    # to answer, so every receive right after a send skips its own.
    conn, peer = await socket_pair(schedule_budget=budget)
    try:
        await peer.send(b"q" * 32)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(32):
            with trio.testing.assert_checkpoints():
                await conn.send_all(b"a")
            data, did_yield = await yielded(conn.receive_some(1))
            assert data == b"q"
            assert did_yield == (budget == 1)
        got = b""
        with trio.fail_after(5):
            while len(got) < 32:
                got += await peer.recv(100)
        assert got == b"a" * 32
    finally:
        conn.close()
        peer.close()


async def test_schedule_budget_is_validated() -> None:
    sock_a, sock_b = trio.socket.socketpair()
    with sock_a, sock_b:
        for bad in (0, -1):
            with pytest.raises(ValueError, match="schedule_budget"):
                trionet.Connection(sock_a, schedule_budget=bad)
        for wrong in (1.5, "2"):
            with pytest.raises(TypeError, match="schedule_budget"):
                trionet.Connection(sock_a, schedule_budget=wrong)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule_budget"):
        trionet.ServerConfig(schedule_budget=0)


@pytest.mark.parametrize("reader", ["anext", "receive_exactly", "receive_until"])
async def test_budget_applies_to_every_receive_path(reader: str) -> None:
    # ``async for`` (the path the benchmarks measure) and the buffered
    # readers follow the same rule as receive_some: with a budget of 3, at
    # most 2 receives in a row skip their schedule point, and some do.
    budget = 3
    conn, peer = await socket_pair(schedule_budget=budget)
    try:

        async def until_newline() -> bytes:
            return await conn.receive_until(b"\n", max_size=10) + b"\n"

        readers: dict[str, Callable[[], Awaitable[bytes]]] = {
            "anext": conn.__anext__,
            "receive_exactly": functools.partial(conn.receive_exactly, 3),
            "receive_until": until_newline,
        }
        read = readers[reader]
        yields = []
        for i in range(30):
            await peer.send(b"%02d\n" % i)
            await trio.testing.wait_all_tasks_blocked()
            got, did_yield = await yielded(read())
            assert got == b"%02d\n" % i
            yields.append(did_yield)
        assert longest_run_without_yield(yields) == budget - 1
        assert yields.count(False) >= 30 * (budget - 1) // budget - 1
    finally:
        conn.close()
        peer.close()


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


@pytest.mark.parametrize("budget", [1, 64])
async def test_a_flooding_connection_cannot_starve_another(
    trionet_server: ServerFactory, budget: int
) -> None:
    # The flood comes from two OS threads with blocking sockets (one sends
    # 64 KiB chunks as fast as the kernel takes them, one drains the echo),
    # so it does not depend on this Trio process giving it turns: the
    # server's flooded connection always has data waiting.
    server = await trionet_server(echo, schedule_budget=budget)
    port = port_of(server)
    stop = threading.Event()
    echoed = 0
    flood = stdlib_socket.create_connection(("127.0.0.1", port), timeout=10)

    def send_flood() -> None:
        chunk = b"f" * 65536
        try:
            while not stop.is_set():
                flood.sendall(chunk)
        except OSError:
            if not stop.is_set():
                raise  # only our own shutdown() may end the flood

    flood_going = trio.Event()

    def drain_flood() -> None:
        nonlocal echoed
        while not stop.is_set():
            try:
                data = flood.recv(1 << 20)
            except OSError:
                if stop.is_set():
                    return
                raise
            if not data:
                return
            echoed += len(data)
            if echoed >= 8 * 65536 and not flood_going.is_set():
                trio.from_thread.run_sync(flood_going.set)

    rtts: list[float] = []
    echoed_during_probe = 0
    with trio.fail_after(30):
        prober = await trionet.connect(("127.0.0.1", port))
        async with prober, trio.open_nursery() as nursery:
            nursery.start_soon(functools.partial(trio.to_thread.run_sync, send_flood))
            nursery.start_soon(functools.partial(trio.to_thread.run_sync, drain_flood))
            await flood_going.wait()  # a flood under way before probing
            before = echoed
            # At least 50 probes, and keep probing until the flood has also
            # moved a good amount *during* the probing (bounded: 5,000 probes
            # or the fail_after above).
            i = 0
            while i < 50 or (echoed - before <= 4 * 65536 and i < 5000):
                start = trio.current_time()
                await prober.send_all(b"ping %d\n" % i)
                assert await prober.receive_line() == b"ping %d" % i
                rtts.append(trio.current_time() - start)
                i += 1
            echoed_during_probe = echoed - before
            stop.set()
            flood.shutdown(stdlib_socket.SHUT_RDWR)  # unblocks both threads
    flood.close()
    # The flood kept flowing while we probed, and every probe came back fast.
    assert echoed_during_probe > 4 * 65536
    assert max(rtts) < 0.25, rtts


@pytest.mark.parametrize("budget", [1, 4, 16])
async def test_reads_yield_to_siblings_at_least_every_budget_operations(budget: int) -> None:
    # Deterministic fairness: with plenty of data waiting, a reader whose
    # every receive completes at once still lets a sibling task run at least
    # every ``budget`` receives.
    conn, peer = await socket_pair(schedule_budget=budget)
    try:
        peer.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 1 << 20)
        conn.socket.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 1 << 20)
        payload = b"r" * (200 * 1024)
        with trio.fail_after(5):
            view = memoryview(payload)
            while view:
                view = view[await peer.send(view) :]
            await trio.testing.wait_all_tasks_blocked()
        ticks = 0
        ticks_seen: list[int] = []

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await trio.lowlevel.checkpoint()
            got = 0
            while got < len(payload):
                data = await conn.receive_some(1024)
                got += len(data)
                ticks_seen.append(ticks)
            nursery.cancel_scope.cancel()
        longest = run = 0
        for a, b in itertools.pairwise(ticks_seen):
            run = run + 1 if a == b else 0
            longest = max(longest, run)
        # ``longest`` = consecutive read pairs with no tick between them.  The
        # reader runs at most ``budget`` reads per scheduler batch and the
        # ticker runs once per batch; Trio may reverse a batch's order, so a
        # ticker turn can fall just before one run of reads and just after the
        # next: at most 2 * budget reads in a row, i.e. 2 * budget - 1 pairs.
        assert longest <= 2 * budget - 1, (longest, budget)
        # And the reads did not all run in one go (the check can fail).
        assert len(set(ticks_seen)) >= len(ticks_seen) // (2 * budget)
    finally:
        conn.close()
        peer.close()


async def test_async_for_reads_grow_for_bulk_and_shrink_back() -> None:
    conn, peer = await socket_pair()
    try:
        await _reads_grow_and_shrink(conn, peer)
    finally:
        conn.close()
        peer.close()


async def _reads_grow_and_shrink(conn: trionet.Connection, peer: trio.socket.SocketType) -> None:
    peer.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 4 << 20)
    payload = b"b" * (3 << 20)
    sizes: list[int] = []
    received = 0

    async def send_payload() -> None:
        view = memoryview(payload)
        while view:
            n = await peer.send(view)
            view = view[n:]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_payload)
            async for chunk in conn:
                sizes.append(len(chunk))
                received += len(chunk)
                if received == len(payload):
                    break
    assert received == len(payload)
    assert max(sizes) <= _ITER_MAX
    assert max(sizes) > DEFAULT_RECEIVE_SIZE  # bulk reads grew past 64 KiB
    # Small messages bring the read size back down, step by step.
    for _ in range(8):
        await peer.send(b"s")
        with trio.fail_after(5):
            assert await conn.__anext__() == b"s"
    assert conn._rx_size == DEFAULT_RECEIVE_SIZE


async def test_idle_connections_stop_spinning_and_waits_stay_cancellable() -> None:
    conn, peer = await socket_pair()
    try:
        assert conn._spin_skip == 0
        # A receive on a silent peer spins (briefly, yielding) and then parks;
        # a fruitless spin turns spinning off for the next waits.
        with trio.move_on_after(0.05) as scope:
            await conn.receive_some()
        assert scope.cancelled_caught  # still promptly cancellable
        assert conn._spin_skip == _SPIN_BACKOFF
        with trio.move_on_after(0.01):
            await conn.receive_some()
        assert conn._spin_skip == _SPIN_BACKOFF - 1  # parked at once, no spin
        # Data still arrives normally while spinning is off.
        await peer.send(b"late")
        with trio.fail_after(5):
            assert await conn.receive_some() == b"late"
    finally:
        conn.close()
        peer.close()
