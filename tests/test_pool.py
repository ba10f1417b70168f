"""Tests for ``trionet.ConnectionPool`` (trionet/_client/_pool.py), on real loopback servers."""

from __future__ import annotations

import contextlib
import random
import socket as stdlib_socket
import threading
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import wait_readable
from test_client import full_backlog_address, refused_address

import trionet
from trionet import ConnectError, ConnectionPool, PoolStats, TCPAddress
from trionet._client import unusable_reason

pytestmark = pytest.mark.usefixtures("network")


async def echo_lines(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def roundtrip(conn: trionet.Connection, text: bytes) -> None:
    await conn.send_all(text + b"\n")
    assert await conn.receive_line() == text


class CountingEcho:
    """An echo handler that counts live and total connections, server side."""

    def __init__(self) -> None:
        self.live = 0
        self.max_live = 0
        self.total = 0
        self.closed = trio.Event()

    async def __call__(self, conn: trionet.Connection) -> None:
        self.live += 1
        self.total += 1
        self.max_live = max(self.max_live, self.live)
        try:
            await echo_lines(conn)
        finally:
            self.live -= 1
            self.closed.set()
            self.closed = trio.Event()


class HangingResolver(trio.abc.HostnameResolver):
    """A name lookup that never answers: a connect stuck before any socket exists."""

    async def getaddrinfo(self, *args: Any, **kwargs: Any) -> Any:
        await trio.sleep_forever()

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        raise NotImplementedError


@contextlib.contextmanager
def real_time_limit(seconds: float) -> Iterator[trio.CancelScope]:
    """Cancel the block after ``seconds`` of *real* time.

    For mock-clock tests: a task that never blocks keeps a ``MockClock`` from
    advancing, so ``trio.fail_after`` could never fire; a thread can.
    """
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:
        timer = threading.Timer(seconds, token.run_sync_soon, (scope.cancel,))
        timer.start()
        try:
            yield scope
        finally:
            timer.cancel()


################################################################
# Lending and reuse
################################################################


async def test_sequential_lends_reuse_one_connection(trionet_server: Any) -> None:
    server = await trionet_server(echo_lines)
    async with ConnectionPool(server.addresses[0], max_size=4) as pool:
        ids = set()
        with trio.fail_after(5):
            for i in range(5):
                async with pool.connection() as conn:
                    await roundtrip(conn, b"n%d" % i)
                    ids.add(conn.id)
        assert len(ids) == 1
        assert pool.stats == PoolStats(created=1, reused=4, idle=1)
    assert server.stats.accepted == 1
    assert pool.closed
    assert pool.stats.idle == 0


async def test_30_tasks_through_max_size_3_never_open_more_than_3(trionet_server: Any) -> None:
    handler = CountingEcho()
    server = await trionet_server(handler)
    pool = ConnectionPool(server.addresses[0], max_size=3)
    max_waiting = 0
    max_lent = 0
    done: list[int] = []

    async def worker(i: int) -> None:
        nonlocal max_waiting, max_lent
        async with pool.connection() as conn:
            stats = pool.stats
            max_waiting = max(max_waiting, stats.waiting)
            max_lent = max(max_lent, stats.lent + stats.opening)
            await roundtrip(conn, b"task %d" % i)
            await trio.sleep(0.005)  # hold it a moment: "work"
            await roundtrip(conn, b"again %d" % i)
        done.append(i)

    async with pool:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for i in range(30):
                    nursery.start_soon(worker, i)
        stats = pool.stats
    assert sorted(done) == list(range(30))
    assert handler.max_live <= 3
    assert server.stats.accepted == handler.total == stats.created <= 3
    assert stats.created + stats.reused == 30
    assert max_lent <= 3
    assert max_waiting > 0  # contention really happened
    assert stats.waiting == 0 and stats.lent == 0


@pytest.mark.parametrize("how", ["close", "reset", "data"])
async def test_connection_closed_by_server_while_idle_is_never_lent_again(
    trionet_server: Any, how: str
) -> None:
    go = trio.Event()
    served = 0

    async def serve_one_then_misbehave(conn: trionet.Connection) -> None:
        nonlocal served
        served += 1
        if served > 1:  # only the first connection misbehaves
            await echo_lines(conn)
            return
        await conn.send_all(await conn.receive_line() + b"\n")
        await go.wait()
        if how == "reset":
            conn.abort()
        elif how == "data":
            await conn.send_all(b"unsolicited\n")
            await conn.receive_some()  # wait for the client to hang up
        # "close": returning closes the connection (FIN)

    server = await trionet_server(serve_one_then_misbehave)
    async with ConnectionPool(server.addresses[0], max_size=2) as pool:
        with trio.fail_after(5):
            async with pool.connection() as first:
                await roundtrip(first, b"one")
            assert pool.stats.idle == 1
            go.set()
            # Event, not sleep: the client socket turns readable once the
            # server's FIN / RST / data has arrived.
            await wait_readable(first.socket)
            assert unusable_reason(first) is not None
            async with pool.connection() as second:
                assert second is not first
                await roundtrip(second, b"two")
        assert first.closed
        stats = pool.stats
        assert stats.created == 2
        assert stats.reused == 0
        assert stats.discarded == 1
    assert server.stats.accepted == 2


async def test_peer_close_noticed_when_returned(trionet_server: Any) -> None:
    async def hang_up(conn: trionet.Connection) -> None:
        await conn.send_all(await conn.receive_line() + b"\n")
        # returns: the server closes the connection

    server = await trionet_server(hang_up)
    async with ConnectionPool(server.addresses[0]) as pool:
        with trio.fail_after(5):
            async with pool.connection() as conn:
                await roundtrip(conn, b"bye")
                assert await conn.receive_some() == b""  # the server is gone
        assert pool.stats.discarded == 1
        assert pool.stats.idle == 0
        assert conn.closed


async def test_block_that_raises_discards_its_connection(trionet_server: Any) -> None:
    server = await trionet_server(echo_lines)
    async with ConnectionPool(server.addresses[0]) as pool:
        with pytest.raises(ValueError, match="handler bug"):
            async with pool.connection() as conn:
                await roundtrip(conn, b"x")
                raise ValueError("handler bug")
        assert conn.closed
        assert pool.stats.discarded == 1 and pool.stats.idle == 0
        with trio.CancelScope() as scope:
            async with pool.connection() as conn2:
                scope.cancel()  # the block is cancelled while it holds conn2
                await trio.sleep_forever()
        assert scope.cancelled_caught
        assert conn2.closed
        assert pool.stats.discarded == 2
        async with pool.connection() as conn3:
            await roundtrip(conn3, b"fresh")
        assert pool.stats.created == 3


async def test_borrower_closed_half_closed_or_unread_is_discarded(
    trionet_server: Any,
) -> None:
    async def two_replies(conn: trionet.Connection) -> None:
        async for _chunk in conn:
            await conn.send_all(b"a\nb\n")  # one segment: both lines arrive together

    server = await trionet_server(two_replies)
    async with ConnectionPool(server.addresses[0]) as pool:
        with trio.fail_after(5):
            async with pool.connection() as closed:
                await closed.aclose()
            async with pool.connection() as half_closed:
                await half_closed.send_eof()
            async with pool.connection() as unread:
                await unread.send_all(b"?\n")
                assert await unread.receive_line() == b"a"  # "b" is left unread
                assert unusable_reason(unread) is not None
            async with pool.connection() as fine:
                await fine.send_all(b"?\n")
                assert await fine.receive_line() == b"a"
                assert await fine.receive_line() == b"b"
                assert unusable_reason(fine) is None
        assert closed.closed and half_closed.closed and unread.closed
        assert pool.stats.discarded == 3
        assert pool.stats.reused == 0
        assert pool.stats.idle == 1


################################################################
# Waiting: FIFO, cancellable
################################################################


async def test_waiters_are_served_first_come_first_served(trionet_server: Any) -> None:
    server = await trionet_server(echo_lines)
    order: list[int] = []
    async with ConnectionPool(server.addresses[0], max_size=1) as pool:
        release = trio.Event()

        async def holder(task_status: trio.TaskStatus[None]) -> None:
            async with pool.connection():
                task_status.started()
                await release.wait()

        async def waiter(i: int) -> None:
            async with pool.connection() as conn:
                order.append(i)
                await roundtrip(conn, b"w%d" % i)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(holder)
                for i in range(5):
                    nursery.start_soon(waiter, i)
                    await trio.testing.wait_all_tasks_blocked()
                assert pool.stats.waiting == 5
                # A late arrival while a slot is being handed over must not barge.
                release.set()
                nursery.start_soon(waiter, 99)
        assert order == [0, 1, 2, 3, 4, 99]
        assert pool.stats.created == 1 and pool.stats.reused == 6


async def test_waiting_is_cancellable_and_frees_the_queue(trionet_server: Any) -> None:
    server = await trionet_server(echo_lines)
    async with ConnectionPool(server.addresses[0], max_size=1) as pool:
        release = trio.Event()
        got: list[str] = []

        async def holder(task_status: trio.TaskStatus[None]) -> None:
            async with pool.connection():
                task_status.started()
                await release.wait()

        async def impatient(scope: trio.CancelScope) -> None:
            with scope:
                async with pool.connection():
                    got.append("impatient")

        async def patient() -> None:
            async with pool.connection() as conn:
                await roundtrip(conn, b"patient")
                got.append("patient")

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(holder)
                scope = trio.CancelScope()
                nursery.start_soon(impatient, scope)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(patient)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats.waiting == 2
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats.waiting == 1
                release.set()
        assert scope.cancelled_caught
        assert got == ["patient"]
        assert pool.stats.lent == 0 and pool.stats.waiting == 0


@pytest.mark.parametrize("then", ["handed over", "closed", "handed over, then closed"])
async def test_waiter_cancelled_in_the_tick_it_is_woken_passes_its_slot_on(
    trionet_server: Any, then: str
) -> None:
    # Trio delivers a cancellation to a parked task at once -- it reschedules
    # the task with Cancelled -- but the task only runs later.  Until then it
    # is still in the pool's queue, so the pool can hand it a slot, or dequeue
    # it to close, and its Event.wait() raises Cancelled all the same.
    server = await trionet_server(echo_lines)
    pool = ConnectionPool(server.addresses[0], max_size=1)
    scopes = {"first": trio.CancelScope(), "second": trio.CancelScope()}
    outcome: dict[str, str] = {}

    async def waiter(name: str) -> None:
        with scopes[name]:
            try:
                async with pool.connection() as conn:
                    await roundtrip(conn, name.encode())
                    outcome[name] = "lent"
            except trio.ClosedResourceError:
                outcome[name] = "closed"
        if scopes[name].cancelled_caught:
            outcome[name] = "cancelled"

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async with pool.connection() as held:
                await roundtrip(held, b"held")
                for name in scopes:
                    nursery.start_soon(waiter, name)
                    await trio.testing.wait_all_tasks_blocked()
                assert pool.stats.waiting == 2
                # No checkpoint from here on until the pool has acted, so
                # "first" does not run in between.
                scopes["first"].cancel()
                assert pool.stats.waiting == 2  # cancelled, but still queued
                if then == "closed":
                    await pool.aclose()
            # The block ended without a checkpoint: unless the pool was
            # closed, the slot went to "first", which has not run yet.
            if then != "closed":
                assert pool.stats.waiting == 1
            if then == "handed over, then closed":
                await pool.aclose()
        if then == "handed over":
            # "first" passed the slot on to the next waiter, in FIFO order.
            assert outcome == {"first": "cancelled", "second": "lent"}
            assert pool.stats == PoolStats(created=1, reused=1, idle=1)
            assert pool._slots.used == 0  # a slot is a connection lent or opening
            async with pool.connection() as conn:  # the slot is still usable
                assert conn is held
                await roundtrip(conn, b"again")
            await pool.aclose()
        else:
            # Closed: nobody is left to pass the slot to, so it is freed.
            assert outcome == {"first": "cancelled", "second": "closed"}
            assert pool.stats == PoolStats(created=1)
            assert pool._slots.used == 0


async def test_storm_of_cancelled_borrowers_leaks_no_slot(trionet_server: Any) -> None:
    # 50 borrowers on 5 slots, each inside a random deadline: some are
    # cancelled before they queue, many while queued (some in the very tick
    # a slot is handed to them), some mid-exchange, some finish.  Afterwards
    # the pool must be whole: nothing lent, waiting or opening, every slot
    # free, and all max_size of them borrowable at once.
    server = await trionet_server(echo_lines)
    rng = random.Random(20240611)
    errors: list[Exception] = []
    finished = cancelled = 0

    def deadline() -> float:
        kind = rng.random()
        if kind < 0.15:
            return 0.0  # cancelled at its first checkpoint
        if kind < 0.7:
            return rng.uniform(0.0, 0.002)  # mostly while queued
        return rng.uniform(0.002, 0.05)  # long enough for some to finish

    async def borrower(pool: ConnectionPool, i: int, seconds: float) -> None:
        nonlocal finished, cancelled
        with trio.move_on_after(seconds) as scope:
            try:
                async with pool.connection() as conn:
                    await roundtrip(conn, b"borrower %d" % i)
            except Exception as exc:
                errors.append(exc)
                return
            finished += 1
        if scope.cancelled_caught:
            cancelled += 1

    async with ConnectionPool(server.addresses[0], max_size=5) as pool:
        with trio.fail_after(8):
            for _round in range(30):
                async with trio.open_nursery() as nursery:
                    for i in range(50):
                        nursery.start_soon(borrower, pool, i, deadline())
                assert errors == []
            assert finished > 0 and cancelled > 0  # the storm really mixed both
            assert finished + cancelled == 30 * 50
            stats = pool.stats
            assert stats.lent == 0 and stats.waiting == 0 and stats.opening == 0
            # A slot is held by a connection lent or being opened (idle ones
            # hold none), so at rest every slot is free again.
            assert pool._slots.used == stats.lent + stats.opening == 0
            assert stats.idle <= pool.max_size

            # Every slot can be borrowed at once.
            holding = 0
            all_lent = trio.Event()
            release = trio.Event()

            async def hold(i: int) -> None:
                nonlocal holding
                async with pool.connection() as conn:
                    await roundtrip(conn, b"hold %d" % i)
                    holding += 1
                    if holding == pool.max_size:
                        all_lent.set()
                    await release.wait()

            with trio.fail_after(2):
                async with trio.open_nursery() as nursery:
                    for i in range(pool.max_size):
                        nursery.start_soon(hold, i)
                    await all_lent.wait()
                    assert pool.stats.lent == pool.max_size
                    assert pool.stats.waiting == 0
                    release.set()
            assert pool.stats.lent == 0 and pool._slots.used == 0
            assert pool.stats.idle == pool.max_size


async def test_connect_failure_is_bare_and_frees_the_slot() -> None:
    async with (
        refused_address() as target,  # bound, not listening: refused
        ConnectionPool(target, max_size=1, timeout=2.0) as pool,
    ):
        with trio.fail_after(5):
            for _ in range(3):  # would deadlock if a failed open kept its slot
                with pytest.raises(ConnectError) as info:
                    async with pool.connection():
                        pytest.fail("lent a connection to a refusing target")
                assert type(info.value) is ConnectError
                assert str(target) in str(info.value)
        assert pool.stats == PoolStats()


################################################################
# Idle timeout
################################################################


async def test_idle_connections_are_swept_in_the_background(trionet_server: Any) -> None:
    handler = CountingEcho()
    server = await trionet_server(handler)
    async with ConnectionPool(server.addresses[0], idle_timeout=0.2) as pool:
        with trio.fail_after(5):
            async with pool.connection() as conn:
                await roundtrip(conn, b"x")
                closed_on_server = handler.closed
            assert pool.stats.idle == 1
            start = trio.current_time()
            # Nobody lends again: only the sweep can close it.  The server's
            # handler sees EOF when it does.
            await closed_on_server.wait()
        assert trio.current_time() - start >= 0.2 - 0.05
        assert conn.closed
        assert pool.stats.expired == 1 and pool.stats.idle == 0
    assert server.stats.accepted == 1


async def test_idle_expiry_is_lazy_without_async_with(trionet_server: Any) -> None:
    server = await trionet_server(echo_lines)
    pool = ConnectionPool(server.addresses[0], idle_timeout=0.3)
    with trio.fail_after(5):
        async with pool.connection() as first:
            await roundtrip(first, b"1")
        async with pool.connection() as again:
            assert again is first  # fresh enough to reuse
        await trio.sleep(0.35)  # let it age past idle_timeout
        assert pool.stats.idle == 1  # no background sweep without `async with`
        async with pool.connection() as second:
            await roundtrip(second, b"2")
    assert second is not first and first.closed
    assert pool.stats.expired == 1 and pool.stats.created == 2 and pool.stats.reused == 1
    await pool.aclose()
    assert second.closed


################################################################
# Closing
################################################################


async def test_aclose_semantics(trionet_server: Any) -> None:
    server = await trionet_server(echo_lines)
    pool = ConnectionPool(server.addresses[0], max_size=2)
    with trio.fail_after(5):
        async with pool.connection() as idle_one:
            await roundtrip(idle_one, b"idle")
        outcome: list[str] = []

        async def blocked_waiter() -> None:
            try:
                async with pool.connection():
                    outcome.append("lent")
            except trio.ClosedResourceError:
                outcome.append("closed")

        async def blocked_receiver(conn: trionet.Connection) -> None:
            try:
                await conn.receive_some()
            except trio.ClosedResourceError:
                outcome.append("receiver closed")

        async with (
            trio.open_nursery() as nursery,
            pool.connection() as lent_a,
            pool.connection() as lent_b,
        ):
            assert lent_a is idle_one
            await roundtrip(lent_b, b"works")
            nursery.start_soon(blocked_waiter)
            nursery.start_soon(blocked_receiver, lent_a)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats.waiting == 1
            await pool.aclose()
            # Forceful, like Trio's aclose: lent connections are closed now;
            # a borrower's next operation fails...
            assert lent_a.closed and lent_b.closed
            with pytest.raises(trio.ClosedResourceError):
                await roundtrip(lent_b, b"no longer")
        # ...and a task blocked on one was woken with the same error.
        assert sorted(outcome) == ["closed", "receiver closed"]
        assert pool.stats.lent == 0 and pool.stats.idle == 0
        with pytest.raises(trio.ClosedResourceError):
            async with pool.connection():
                pass
        await pool.aclose()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            async with pool:
                pass


async def test_exiting_async_with_closes_idle_and_keeps_body_errors_bare(
    trionet_server: Any,
) -> None:
    server = await trionet_server(echo_lines)
    pool = ConnectionPool(server.addresses[0], idle_timeout=30.0)
    with pytest.raises(KeyError):
        async with pool:
            async with pool.connection() as conn:
                await roundtrip(conn, b"x")
            raise KeyError("body error")
    assert pool.closed and conn.closed


################################################################
# Arguments, stats, health checks
################################################################


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"max_size": 0}, ValueError),
        ({"max_size": -1}, ValueError),
        ({"max_size": 1.5}, TypeError),
        ({"max_size": True}, TypeError),
        ({"idle_timeout": 0}, ValueError),
        ({"idle_timeout": -1.0}, ValueError),
        ({"idle_timeout": "10"}, TypeError),
        ({"timeout": -1}, ValueError),
        ({"retries": -1}, ValueError),
        ({"local_address": "nope"}, trionet.InvalidAddress),
        ({"not_an_option": 1}, TypeError),
    ],
)
def test_invalid_arguments_raise_at_construction(options: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        ConnectionPool("tcp://127.0.0.1:7007", **options)


def test_invalid_target_raises_at_construction() -> None:
    with pytest.raises(trionet.InvalidAddress):
        ConnectionPool("tcp://127.0.0.1")
    pool = ConnectionPool(("127.0.0.1", 7007), max_size=3)
    assert pool.target == TCPAddress("127.0.0.1", 7007)
    assert pool.max_size == 3
    assert "tcp://127.0.0.1:7007" in repr(pool)


def test_pool_stats_is_a_frozen_validated_record() -> None:
    assert attrs.has(PoolStats)
    stats = PoolStats(created=1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.created = 2  # type: ignore[misc]
    with pytest.raises(ValueError):
        PoolStats(created=-1)
    with pytest.raises(TypeError):
        PoolStats(created=1.5)  # type: ignore[arg-type]


class _NoDescriptorSocket(trio.socket.SocketType):
    """A socket from a custom factory: no file descriptor to poll, no ``is_readable``."""

    family = stdlib_socket.AF_INET
    type = stdlib_socket.SOCK_STREAM

    def close(self) -> None:
        pass


def test_sockets_that_cannot_report_their_health_are_never_reused() -> None:
    # A descriptor-less socket is asked through is_readable() instead (see
    # test_virtual_hooks: reused while healthy, dropped once the peer closed);
    # one that does not implement it cannot be checked.
    conn = trionet.Connection(
        _NoDescriptorSocket(),
        peer=TCPAddress("127.0.0.1", 1),
        local=TCPAddress("127.0.0.1", 2),
    )
    reason = unusable_reason(conn)
    assert reason is not None and "descriptor" in reason


@pytest.mark.loopback_only("Unix-domain sockets: the virtual network simulates TCP only")
async def test_pool_works_with_unix_targets(trionet_server: Any, unused_unix_path: str) -> None:
    server = await trionet_server(echo_lines, f"unix:{unused_unix_path}")
    async with ConnectionPool(f"unix:{unused_unix_path}", max_size=2) as pool:
        for i in range(3):
            async with pool.connection() as conn:
                await roundtrip(conn, b"u%d" % i)
        assert pool.stats.created == 1 and pool.stats.reused == 2
    assert server.stats.accepted == 1


async def test_enclosing_cancel_of_a_pool_with_a_sweep_is_clean(trionet_server: Any) -> None:
    handler = CountingEcho()
    server = await trionet_server(handler)
    pool = ConnectionPool(server.addresses[0], idle_timeout=30.0)
    server_saw_close = handler.closed
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            async with pool:
                async with pool.connection() as first:
                    await roundtrip(first, b"x")
                async with pool.connection() as busy:
                    assert busy is first
                    scope.cancel()  # from outside the pool, while a connection is lent
                    await trio.sleep_forever()
        assert scope.cancelled_caught
        assert pool.closed and busy.closed
        await server_saw_close.wait()
    assert pool.stats.discarded == 1 and pool.stats.idle == 0
    assert handler.total == 1


async def test_aclose_cancels_connections_being_opened(autojump_clock: trio.abc.Clock) -> None:
    # Only a fake resolver waits here -- no real I/O -- so the clock can jump.
    trio.socket.set_custom_hostname_resolver(HangingResolver())
    pool = ConnectionPool("tcp://hang.test:80", max_size=2)
    outcome: list[str] = []

    async def borrower() -> None:
        try:
            async with pool.connection():
                outcome.append("lent")
        except trio.ClosedResourceError:
            outcome.append("closed")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(borrower)
            nursery.start_soon(borrower)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.stats.opening == 2
            await pool.aclose()
    assert outcome == ["closed", "closed"]
    assert pool.stats == PoolStats()


async def test_waiter_handed_a_slot_opens_nothing_once_the_pool_is_closed(
    trionet_server: Any,
) -> None:
    server = await trionet_server(echo_lines)
    pool = ConnectionPool(server.addresses[0], max_size=1)
    outcome: list[str] = []

    async def waiter() -> None:
        try:
            async with pool.connection():
                outcome.append("lent")
        except trio.ClosedResourceError:
            outcome.append("closed")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async with pool.connection() as conn:
                await roundtrip(conn, b"x")
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats.waiting == 1
            # The block ended (no checkpoint): the slot was handed to the
            # waiter, which has not run yet when the pool closes.
            await pool.aclose()
    assert outcome == ["closed"]
    assert pool.stats.created == 1
    assert pool.stats == PoolStats(created=1)
    assert server.stats.accepted == 1


async def test_connection_still_in_use_by_a_task_is_never_lent_again(
    trionet_server: Any,
) -> None:
    server = await trionet_server(echo_lines)
    woken: list[str] = []

    async def leftover_reader(
        conn: trionet.Connection, *, task_status: trio.TaskStatus[None]
    ) -> None:
        task_status.started()
        try:
            await conn.receive_some()
        except trio.ClosedResourceError:
            woken.append("closed")

    async with ConnectionPool(server.addresses[0], max_size=2) as pool:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                # A borrower hands the connection to a task and leaves its
                # block while that task is still receiving on it.
                async with pool.connection() as leaked:
                    await roundtrip(leaked, b"x")
                    await nursery.start(leftover_reader, leaked)
                    await trio.testing.wait_all_tasks_blocked()
                    assert unusable_reason(leaked) == "still in use by another task"
                assert leaked.closed  # discarded when it came back
                # A connection that turned busy while idle is caught when lending.
                async with pool.connection() as second:
                    assert second is not leaked
                    await roundtrip(second, b"y")
                await nursery.start(leftover_reader, second)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.stats.idle == 1
                async with pool.connection() as third:
                    assert third is not second
                    await roundtrip(third, b"z")
                assert second.closed
        assert woken == ["closed", "closed"]
        assert pool.stats.discarded == 2
        assert pool.stats.created == 3 and pool.stats.reused == 0
    assert server.stats.accepted == 3


@pytest.mark.loopback_only(
    "its idle connection is one end of a real socketpair (no network I/O to simulate)"
)
async def test_idle_sweep_expires_exactly_at_its_deadline(autojump_clock: trio.abc.Clock) -> None:
    # No real I/O: the idle connection is one end of a socketpair, nothing is
    # ever sent, and the pool never connects.  With since=0.1 and
    # idle_timeout=0.25, (0.1 + 0.25) - 0.1 < 0.25 in floats: a sweep that
    # sleeps until since + timeout but tests now - since >= timeout would
    # wake at its deadline, find nothing expired, and spin -- which a mock
    # clock turns into a hang, hence the real-time limit.
    left, right = stdlib_socket.socketpair()
    conn = trionet.Connection(trio.socket.from_stdlib_socket(left))
    try:
        pool = ConnectionPool("tcp://127.0.0.1:9", idle_timeout=0.25)
        async with pool:
            assert trio.current_time() == 0.0
            await trio.sleep_until(0.1)
            pool._idle.put(conn, trio.current_time())
            with real_time_limit(5) as limit:
                await trio.sleep_until(0.1 + 0.25)
                await trio.testing.wait_all_tasks_blocked()
            assert not limit.cancelled_caught, "the idle sweep is spinning"
            assert trio.current_time() == 0.1 + 0.25
            assert conn.closed
            assert pool.stats.expired == 1 and pool.stats.idle == 0
    finally:
        conn.close()
        right.close()


async def test_enclosing_cancel_while_opening_comes_out_as_a_bare_cancelled() -> None:
    async with full_backlog_address() as hanging:
        pool = ConnectionPool(hanging, max_size=1)
        caught: list[BaseException] = []
        with trio.fail_after(5), trio.move_on_after(0.2) as scope:
            try:
                async with pool.connection():
                    pytest.fail("lent a connection to a target that never answers")
            except trio.Cancelled as exc:
                caught.append(exc)
                raise
        assert scope.cancelled_caught
        assert len(caught) == 1 and type(caught[0]) is trio.Cancelled
        assert pool.stats == PoolStats()  # the slot is free, nothing is opening
        await pool.aclose()


@pytest.mark.parametrize("idle_timeout", [None, 30.0])
async def test_body_error_is_not_replaced_by_an_enclosing_cancel_at_exit(
    idle_timeout: float | None,
) -> None:
    pool = ConnectionPool("tcp://127.0.0.1:9", idle_timeout=idle_timeout)
    seen: list[str] = []
    with trio.CancelScope() as outer:
        try:
            async with pool:
                outer.cancel()
                raise KeyError("body error")
        except KeyError:
            seen.append("KeyError")
    assert seen == ["KeyError"]
    assert pool.closed
    # Without an error in the block, leaving it is still a cancellation point.
    pool = ConnectionPool("tcp://127.0.0.1:9", idle_timeout=idle_timeout)
    with trio.CancelScope() as outer:
        async with pool:
            outer.cancel()
        seen.append("not reached")
    assert outer.cancelled_caught
    assert seen == ["KeyError"]
    assert pool.closed
