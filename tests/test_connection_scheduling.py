"""The Connection hot path keeps Trio's semantics: cancellation, fairness, budgets.

These tests pin down what the performance work (issue 5) must not break:

* every operation is a cancel point, even one that could complete at once;
* ``schedule_budget`` bounds how many immediately-completed operations may
  run between two schedule points (1 = every one, Trio's strict rule);
* one connection streaming at full speed cannot starve another;
* the bulk-read growth and the drain wake-up (``notify_closing``) behave.
"""

from __future__ import annotations

import functools
import socket as stdlib_socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing

import trionet
from trionet._connection import _ITER_MAX, DEFAULT_RECEIVE_SIZE

ServerFactory = Callable[..., Awaitable[trionet.Server]]


async def socket_pair(
    schedule_budget: int = 1,
) -> tuple[trionet.Connection, trio.socket.SocketType]:
    """A Connection over one end of a real loopback TCP pair, the raw other end."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server_sock, _ = await listener.accept()
    listener.close()
    return trionet.Connection(server_sock, schedule_budget=schedule_budget), client


@pytest.fixture
async def pair() -> AsyncIterator[tuple[trionet.Connection, trio.socket.SocketType]]:
    conn, peer = await socket_pair()
    try:
        yield conn, peer
    finally:
        conn.close()
        peer.close()


async def test_cancelled_receive_does_no_io_even_with_data_waiting(
    pair: tuple[trionet.Connection, trio.socket.SocketType],
) -> None:
    conn, peer = pair
    await peer.send(b"hello")
    await trio.testing.wait_all_tasks_blocked()
    for op in (
        conn.receive_some,
        functools.partial(conn.receive_exactly, 5),
        functools.partial(conn.receive_until, b"o", max_size=10),
        conn.__anext__,
    ):
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await op()
    # Nothing was consumed by the cancelled calls.
    with trio.fail_after(5):
        assert await conn.receive_exactly(5) == b"hello"
    assert conn.bytes_received == 5


async def test_cancelled_send_sends_nothing(
    pair: tuple[trionet.Connection, trio.socket.SocketType],
) -> None:
    conn, peer = pair
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await conn.send_all(b"must not arrive")
    assert conn.bytes_sent == 0
    await conn.send_all(b"ok")
    with trio.fail_after(5):
        assert await peer.recv(100) == b"ok"


@pytest.mark.parametrize("op", ["send_all", "receive_some", "anext"])
async def test_strict_budget_makes_every_operation_a_schedule_point(
    pair: tuple[trionet.Connection, trio.socket.SocketType], op: str
) -> None:
    conn, peer = pair
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


async def test_budget_bounds_operations_between_schedule_points() -> None:
    budget = 4
    conn, peer = await socket_pair(schedule_budget=budget)
    try:
        task = trio.lowlevel.current_task()
        since_last = 0
        longest = 0
        skipped = 0
        for _ in range(64):
            before = task._schedule_points
            await conn.send_all(b"z")  # always completes at once: tiny, buffer empty
            if task._schedule_points == before:
                since_last += 1
                skipped += 1
            else:
                since_last = 0
            longest = max(longest, since_last)
        # Never more than budget - 1 operations in a row without yielding ...
        assert longest == budget - 1
        # ... and the budget really did save schedule points.
        assert skipped == 64 * (budget - 1) // budget
    finally:
        conn.close()
        peer.close()


async def test_schedule_budget_is_validated() -> None:
    sock_a, sock_b = trio.socket.socketpair()
    with sock_a, sock_b:
        for bad in (0, -1, 1.5, "2"):
            with pytest.raises(ValueError, match="schedule_budget"):
                trionet.Connection(sock_a, schedule_budget=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule_budget"):
        trionet.ServerConfig(schedule_budget=0)


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


@pytest.mark.parametrize("budget", [1, 64])
async def test_a_flooding_connection_cannot_starve_another(
    trionet_server: ServerFactory, budget: int
) -> None:
    server = await trionet_server(echo, schedule_budget=budget)
    port = server.addresses[0].port  # type: ignore[union-attr]
    flood_done = trio.Event()
    flood_going = trio.Event()
    flooded = 0

    async def flood(conn: trionet.Connection) -> None:
        # Stream as fast as the server echoes, reading the echo concurrently.
        nonlocal flooded
        chunk = b"f" * 65536

        async def reader() -> None:
            nonlocal flooded
            while not flood_done.is_set():
                data = await conn.receive_some()
                if not data:
                    return
                flooded += len(data)
                if flooded >= 4 * 65536:
                    flood_going.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            while not flood_done.is_set():
                await conn.send_all(chunk)
            nursery.cancel_scope.cancel()

    rtts: list[float] = []
    with trio.fail_after(20):
        flooder = await trionet.connect(("127.0.0.1", port))
        prober = await trionet.connect(("127.0.0.1", port))
        async with flooder, prober, trio.open_nursery() as nursery:
            nursery.start_soon(flood, flooder)
            await flood_going.wait()  # probe only once the flood is running
            for i in range(30):
                start = trio.current_time()
                await prober.send_all(b"ping %d\n" % i)
                assert await prober.receive_line() == b"ping %d" % i
                rtts.append(trio.current_time() - start)
            flood_done.set()
            nursery.cancel_scope.cancel()
    # The flood kept moving while the probe ran, and every probe came back
    # quickly: one stream at full speed does not monopolise the server.
    assert flooded > 30 * 65536
    assert max(rtts) < 0.5, rtts


async def test_async_for_reads_grow_for_bulk_and_shrink_back(
    pair: tuple[trionet.Connection, trio.socket.SocketType],
) -> None:
    conn, peer = pair
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


async def test_drain_wakes_the_reader_but_not_a_blocked_writer(
    trionet_server: ServerFactory,
) -> None:
    # A handler reading with ``async for`` while another task of it is
    # blocked sending (the client is not reading): a drain ends the loop;
    # the sender, woken by the same notify_closing(), just waits again and
    # finishes once the client reads.
    writer_blocked = trio.Event()
    writer_done = trio.Event()
    reader_done = trio.Event()
    big = b"w" * (8 << 20)

    async def handler(conn: trionet.Connection) -> None:
        async def writer() -> None:
            writer_blocked.set()
            await conn.send_all(big)
            writer_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            async for _chunk in conn:
                pass
            reader_done.set()

    server = await trionet_server(handler)
    port = server.addresses[0].port  # type: ignore[union-attr]
    sock = trio.socket.socket()
    with sock:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
        with trio.fail_after(10):
            await sock.connect(("127.0.0.1", port))
            await sock.send(b"hello")  # has spoken: ends at once on drain
            await writer_blocked.wait()
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:

                async def shutdown() -> None:
                    await server.shutdown(10)

                nursery.start_soon(shutdown)
                await reader_done.wait()
                assert not writer_done.is_set()
                got = 0
                while got < len(big):
                    data = await sock.recv(1 << 20)
                    assert data
                    got += len(data)
                await writer_done.wait()
    assert server.stats.handler_errors == 0
