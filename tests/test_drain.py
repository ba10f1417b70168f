"""Graceful drain on real loopback sockets: lose nothing, and finish on time."""

from __future__ import annotations

import functools
import math
import os
import signal
from typing import Any

import pytest
import trio
import trio.testing
from conftest import connect_tcp, port_of, wait_readable

import trionet
from trionet import ShutdownReport
from trionet._server import _server
from trionet.testing import ExitRecordingEcho, Shutdown, wait_until

pytestmark = pytest.mark.usefixtures("network")

ServerFactory = Any


async def open_client(port: int) -> trionet.Connection:
    return trionet.Connection(await connect_tcp(port))


async def assert_refused(port: int) -> None:
    sock = trio.socket.socket()
    with sock, trio.fail_after(5), pytest.raises(ConnectionRefusedError):
        await sock.connect(("127.0.0.1", port))


# ----------------------------------------------------------------------


async def test_fifty_in_flight_requests_all_get_replies(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    n = 50
    waiting = 0
    all_waiting = trio.Event()
    release = trio.Event()

    async def slow(conn: trionet.Connection) -> None:
        nonlocal waiting
        request = await conn.receive_line()
        waiting += 1
        if waiting == n:
            all_waiting.set()
        await release.wait()  # a slow request, still in flight when the drain begins
        await conn.send_all(request + b" done\n")

    server = await trionet_server(slow)
    port = port_of(server)
    replies: list[bytes] = []

    async def client(i: int) -> None:
        conn = await open_client(port)
        async with conn:
            await conn.send_all(b"req %d\n" % i)
            with trio.fail_after(10):
                replies.append(await conn.receive_line())
                assert await conn.receive_some() == b""  # closed after the reply

    async with trio.open_nursery() as clients:
        for i in range(n):
            clients.start_soon(client, i)
        with trio.fail_after(5):
            await all_waiting.wait()
        shutdown = Shutdown(nursery, server, grace=10)
        await wait_until(lambda: server.draining)
        await assert_refused(port)  # new connects are refused once the drain began
        assert not shutdown.done.is_set()
        release.set()

    report = await shutdown.wait()
    assert sorted(replies) == sorted(b"req %d done" % i for i in range(n))
    assert (report.finished, report.cancelled, report.swept) == (n, 0, 0)
    assert report.elapsed < 5
    assert server.stopped
    assert server.stats.accepted == n


async def test_connections_queued_in_the_kernel_are_served_not_reset(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    # max_connections=1 and a blocked handler pause accepting, so the next
    # clients complete their handshakes and wait in the kernel's accept queue.
    queued = 5
    release = trio.Event()
    first_running = trio.Event()
    running = peak = 0
    order: list[bytes] = []

    async def handler(conn: trionet.Connection) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            request = await conn.receive_line()
            order.append(request)
            if request == b"first":
                first_running.set()
                await release.wait()
            await conn.send_all(request + b" served\n")
        finally:
            running -= 1

    server = await trionet_server(handler, max_connections=1)
    port = port_of(server)
    first = await open_client(port)
    await first.send_all(b"first\n")
    with trio.fail_after(5):
        await first_running.wait()
    waiting = [await open_client(port) for _ in range(queued)]
    for i, conn in enumerate(waiting):
        await conn.send_all(b"queued %d\n" % i)
    await trio.sleep(0.05)
    assert server.stats.accepted == 1  # the others really are in the kernel queue

    shutdown = Shutdown(nursery, server, grace=10)
    await wait_until(lambda: server.draining)
    assert server.stats.swept == queued  # accepted synchronously when the drain began
    await assert_refused(port)
    release.set()

    with trio.fail_after(5):
        assert await first.receive_line() == b"first served"
        for i, conn in enumerate(waiting):
            assert await conn.receive_line() == b"queued %d served" % i
    for conn in [first, *waiting]:
        await conn.aclose()
    report = await shutdown.wait()
    assert (report.finished, report.cancelled, report.swept) == (queued + 1, 0, queued)
    assert peak == 1  # max_connections still held during the drain
    # Freed slots go to the waiting connections first come, first served
    # (one wake-up per slot, not a stampede won by whoever runs first).
    assert order == [b"first"] + [b"queued %d" % i for i in range(queued)]
    assert server.stats.accepted == queued + 1


async def test_short_grace_cancels_stragglers_on_time(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    grace = 0.3
    cancelled = 0
    started = 0
    all_started = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        nonlocal cancelled, started
        request = await conn.receive_line()
        started += 1
        if started == 4:
            all_started.set()
        if request == b"quick":
            await conn.draining.wait()
            await conn.send_all(b"bye\n")
            return
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled += 1
            raise

    server = await trionet_server(handler)
    port = port_of(server)
    clients = [await open_client(port) for _ in range(4)]
    await clients[0].send_all(b"quick\n")
    for conn in clients[1:]:
        await conn.send_all(b"stuck\n")
    with trio.fail_after(5):
        await all_started.wait()

    shutdown = Shutdown(nursery, server, grace=grace)
    report = await shutdown.wait()
    took = shutdown.returned_at - shutdown.started_at
    assert grace <= took < grace + 0.5
    assert (report.finished, report.cancelled, report.swept) == (1, 3, 0)
    assert cancelled == 3
    with trio.fail_after(5):
        assert await clients[0].receive_line() == b"bye"
        for conn in clients[1:]:
            assert await conn.receive_some() == b""  # closed by the server
    for conn in clients:
        await conn.aclose()


async def test_keep_alive_loop_exits_by_itself_on_drain(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    keep_alive = ExitRecordingEcho()
    server = await trionet_server(keep_alive)
    conn = await open_client(port_of(server))
    async with conn:
        for word in (b"one", b"two"):
            await conn.send_all(word)
            with trio.fail_after(5):
                assert await conn.receive_some() == word
        shutdown = Shutdown(nursery, server, grace=30)
        report = await shutdown.wait(timeout=5)
        with trio.fail_after(5):
            assert await conn.receive_some() == b""
    assert keep_alive.exits == ["drained"]
    assert (report.finished, report.cancelled) == (1, 0)
    assert report.elapsed < 1


async def test_data_already_in_the_kernel_is_delivered_before_iteration_ends(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    go = trio.Event()
    ready = trio.Event()
    arrived = trio.Event()
    got: list[bytes] = []

    async def handler(conn: trionet.Connection) -> None:
        ready.set()
        # Not reading while the request arrives and the drain begins: only
        # wait until the kernel holds it.
        await wait_readable(conn.socket)
        arrived.set()
        await go.wait()
        async for chunk in conn:
            got.append(chunk)
            await conn.send_all(b"ack:" + chunk)

    server = await trionet_server(handler)
    conn = await open_client(port_of(server))
    async with conn:
        with trio.fail_after(5):
            await ready.wait()
        await conn.send_all(b"last request")
        with trio.fail_after(5):
            await arrived.wait()  # in the server's kernel buffer, unread
        shutdown = Shutdown(nursery, server, grace=30)
        await wait_until(lambda: server.draining)
        go.set()
        with trio.fail_after(5):
            assert await conn.receive_some() == b"ack:last request"
            assert await conn.receive_some() == b""
        report = await shutdown.wait(timeout=5)
    assert got == [b"last request"]
    assert report.finished == 1


async def test_draining_event_is_set_for_every_connection(
    trionet_server: ServerFactory,
) -> None:
    observed: list[bool] = []
    started = 0
    all_started = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        nonlocal started
        assert not conn.draining.is_set()
        started += 1
        if started == 3:
            all_started.set()
        await conn.draining.wait()
        observed.append(True)

    server = await trionet_server(handler)
    clients = [await open_client(port_of(server)) for _ in range(3)]
    with trio.fail_after(5):
        await all_started.wait()
    with trio.fail_after(5):
        report = await server.shutdown(30)
    assert observed == [True, True, True]
    assert (report.finished, report.cancelled) == (3, 0)
    for conn in clients:
        await conn.aclose()


async def test_swept_async_for_connection_waits_for_its_first_request(
    trionet_server: ServerFactory, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection swept from the kernel queue has usually not sent its
    # request yet.  ``async for`` must not treat it as idle at once: it gets
    # the first-request allowance (shortened here to keep the test quick).
    allowance = 1.0  # slack for a loaded machine: `late` must speak within it
    monkeypatch.setattr(_server, "_FIRST_REQUEST_ALLOWANCE", allowance)
    started = 0
    second_started = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        nonlocal started
        started += 1
        if started == 2:
            second_started.set()
        async for chunk in conn:
            await conn.send_all(b"ack:" + chunk)

    server = await trionet_server(handler, max_connections=1)
    port = port_of(server)
    talker = await open_client(port)
    await talker.send_all(b"hello")
    with trio.fail_after(5):
        assert await talker.receive_some() == b"ack:hello"
    # The only slot is taken, so these two wait in the kernel's queue.
    late = await open_client(port)
    silent = await open_client(port)
    assert server.stats.accepted == 1

    shutdown = Shutdown(nursery, server, grace=10)
    await wait_until(lambda: server.draining)
    assert server.stats.swept == 2
    with trio.fail_after(5):
        # The talker has spoken and nothing is pending: its loop ends at once,
        assert await talker.receive_some() == b""
        # which frees the slot for `late`, whose handler now waits in async for.
        await second_started.wait()
    await trio.sleep_until(shutdown.started_at + 0.05)  # the request comes late
    await late.send_all(b"request")
    with trio.fail_after(5):
        assert await late.receive_some() == b"ack:request"
        assert await late.receive_some() == b""  # then its loop ends too
        # The silent one is treated as idle once the allowance is over.
        assert await silent.receive_some() == b""
    silent_ended = trio.current_time() - shutdown.started_at
    report = await shutdown.wait()
    assert allowance <= silent_ended < allowance + 1
    assert (report.finished, report.cancelled, report.swept) == (3, 0, 2)
    assert report.elapsed < allowance + 1
    for conn in (talker, late, silent):
        await conn.aclose()


async def test_idle_clock_of_a_swept_connection_starts_with_its_handler(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    # drain + idle_timeout + max_connections: a swept connection that waits
    # for a slot longer than idle_timeout is not the peer's silence -- it must
    # be served, not closed by the idle reaper before its handler ran.
    timeout = 0.3
    release = trio.Event()
    first_running = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        line = await conn.receive_line()
        if line == b"first":
            first_running.set()
            while not release.is_set():  # busy but active: never idle itself
                await conn.send_all(b".")
                with trio.move_on_after(timeout / 3):
                    await release.wait()
        await conn.send_all(line + b" served\n")

    server = await trionet_server(handler, max_connections=1, idle_timeout=timeout)
    port = port_of(server)
    first = await open_client(port)
    await first.send_all(b"first\n")
    with trio.fail_after(5):
        await first_running.wait()
    queued = await open_client(port)
    await queued.send_all(b"queued\n")
    assert server.stats.accepted == 1

    shutdown = Shutdown(nursery, server, grace=10)
    await wait_until(lambda: server.draining)
    assert server.stats.swept == 1
    await trio.sleep(timeout * 3)  # the swept one waits for a slot, far past idle_timeout
    release.set()
    with trio.fail_after(5):
        assert await queued.receive_line() == b"queued served"
        assert (await first.receive_until(b"\n", max_size=1000)).strip(b".") == b"first served"
    report = await shutdown.wait()
    assert (report.finished, report.cancelled, report.swept) == (2, 0, 1)
    assert server.stats.idle_closed == 0
    assert server.stats.handler_errors == 0
    for conn in (first, queued):
        await conn.aclose()


async def test_report_counts_never_started_as_cancelled_and_idle_closed_in_neither(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    started = 0
    all_started = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        nonlocal started
        line = await conn.receive_line()
        started += 1
        if started == 2:
            all_started.set()
        if line == b"polite":
            await conn.draining.wait()
            await conn.send_all(b"bye\n")
        else:  # silent from now on: the idle timeout closes it during the drain
            await trio.sleep_forever()

    server = await trionet_server(handler, idle_timeout=0.3)
    port = port_of(server)
    polite = await open_client(port)
    await polite.send_all(b"polite\n")
    silent = await open_client(port)
    await silent.send_all(b"silent\n")
    with trio.fail_after(5):
        await all_started.wait()
    report = await Shutdown(nursery, server, grace=10).wait()
    # The polite handler finished by itself; the silent one was closed by the
    # idle reaper, which is neither "finished" nor "cancelled".
    assert (report.finished, report.cancelled) == (1, 0)
    assert server.stats.idle_closed == 1
    for conn in (polite, silent):
        await conn.aclose()

    # A swept connection whose handler never got a slot counts as cancelled.
    stuck_calls = 0

    async def stuck(conn: trionet.Connection) -> None:
        nonlocal stuck_calls
        stuck_calls += 1
        await conn.receive_line()
        await trio.sleep_forever()

    server = await trionet_server(stuck, max_connections=1)
    port = port_of(server)
    first = await open_client(port)
    await first.send_all(b"x\n")
    await wait_until(lambda: server.stats.active == 1)
    queued = await open_client(port)
    report = await Shutdown(nursery, server, grace=0.3).wait()
    assert (report.finished, report.cancelled, report.swept) == (0, 2, 1)
    with trio.fail_after(5):
        try:
            assert await queued.receive_some() == b""  # closed, never served
        except trio.BrokenResourceError:
            pass
    assert stuck_calls == 1  # the queued connection's handler never ran
    for conn in (first, queued):
        await conn.aclose()


def test_shutdown_report_validates_its_fields() -> None:
    report = ShutdownReport(finished=1, cancelled=2, swept=3, elapsed=0.5)
    assert (report.finished, report.cancelled, report.swept, report.elapsed) == (1, 2, 3, 0.5)
    assert ShutdownReport(0, 0, 0).elapsed == 0.0
    with pytest.raises(ValueError, match="finished must be >= 0"):
        ShutdownReport(-1, 0, 0)
    with pytest.raises(TypeError, match="cancelled must be an int"):
        ShutdownReport(0, 1.5, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="swept must be an int"):
        ShutdownReport(0, 0, True)
    with pytest.raises(ValueError, match="elapsed must be >= 0"):
        ShutdownReport(0, 0, 0, -0.1)
    with pytest.raises(ValueError, match="elapsed must be >= 0"):
        ShutdownReport(0, 0, 0, math.nan)
    with pytest.raises(TypeError, match="elapsed must be a number"):
        ShutdownReport(0, 0, 0, "1")  # type: ignore[arg-type]


async def test_second_shutdown_with_shorter_grace_cuts_the_wait(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    async def stuck(conn: trionet.Connection) -> None:
        await trio.sleep_forever()

    server = await trionet_server(stuck)
    conn = await open_client(port_of(server))
    await wait_until(lambda: server.stats.active == 1)
    long = Shutdown(nursery, server, grace=60)
    await wait_until(lambda: server.draining)
    start = trio.current_time()
    with trio.fail_after(2):
        report = await server.shutdown(0.1)
    assert trio.current_time() - start < 0.6
    assert report.cancelled == 1
    assert await long.wait(timeout=1) is report  # both callers get the same report
    with trio.fail_after(1):
        assert await server.shutdown(60) is report  # and later calls return at once
    await conn.aclose()


async def test_drain_finishes_on_time_even_if_the_caller_is_cancelled(
    trionet_server: ServerFactory,
) -> None:
    async def stuck(conn: trionet.Connection) -> None:
        await trio.sleep_forever()

    server = await trionet_server(stuck)
    conn = await open_client(port_of(server))
    await wait_until(lambda: server.stats.active == 1)
    start = trio.current_time()
    with trio.move_on_after(0.05):
        await server.shutdown(0.3)
    assert server.draining and not server.stopped
    await wait_until(lambda: server.stopped, timeout=2)
    assert 0.3 <= trio.current_time() - start < 0.8
    with trio.fail_after(1):
        report = await server.shutdown()
    assert report.cancelled == 1
    await conn.aclose()


async def test_open_server_exit_drains_and_body_errors_propagate_bare() -> None:
    served = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await conn.draining.wait()
        await conn.send_all(b"drained\n")
        served.set()

    with trio.fail_after(10):
        async with trionet.open_server(handler, "tcp://127.0.0.1:0", shutdown_grace=5) as server:
            conn = await open_client(port_of(server))
            await wait_until(lambda: server.stats.active == 1)
    assert served.is_set()  # the exit waited for the handler
    assert server.stopped
    async with conn:
        assert await conn.receive_line() == b"drained"

    class Boom(Exception):
        pass

    async def stuck(conn: trionet.Connection) -> None:
        await trio.sleep_forever()

    start = trio.current_time()
    with trio.fail_after(10), pytest.raises(Boom):  # bare, not an ExceptionGroup
        async with trionet.open_server(stuck, "tcp://127.0.0.1:0", shutdown_grace=60) as server:
            conn = await open_client(port_of(server))
            await wait_until(lambda: server.stats.active == 1)
            raise Boom
    assert trio.current_time() - start < 1  # no grace period on an error
    assert server.stopped
    await conn.aclose()


# ----------------------------------------------------------------------
# drain_on_signals


class SignalDrain:
    def __init__(self, sig: int = signal.SIGTERM) -> None:
        self.sig = sig
        self.report: ShutdownReport | None = None
        self.done = trio.Event()

    async def run(
        self,
        server: trionet.Server,
        grace: float,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.report = await trionet.drain_on_signals(
            server, (self.sig,), grace, task_status=task_status
        )
        self.done.set()


async def test_sigterm_drains_and_a_second_signal_cuts_the_grace(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    async def stuck(conn: trionet.Connection) -> None:
        await trio.sleep_forever()

    server = await trionet_server(stuck)
    conn = await open_client(port_of(server))
    await wait_until(lambda: server.stats.active == 1)
    drain = SignalDrain()
    await nursery.start(functools.partial(drain.run, server, 60))

    os.kill(os.getpid(), signal.SIGTERM)
    await wait_until(lambda: server.draining)
    await assert_refused(port_of(server))
    await trio.sleep(0.1)
    assert not server.stopped  # the 60 s grace is running

    start = trio.current_time()
    os.kill(os.getpid(), signal.SIGTERM)
    with trio.fail_after(2):
        await drain.done.wait()
    assert trio.current_time() - start < 1
    assert drain.report is not None
    assert (drain.report.finished, drain.report.cancelled) == (0, 1)
    assert server.stopped
    await conn.aclose()


async def test_sigterm_lets_handlers_finish(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    async def polite(conn: trionet.Connection) -> None:
        async for chunk in conn:
            await conn.send_all(chunk)

    server = await trionet_server(polite)
    conn = await open_client(port_of(server))
    # One round trip first: a connection that has spoken ends its ``async
    # for`` at once on drain (a silent one gets a first-request allowance).
    await conn.send_all(b"x")
    assert await conn.receive_exactly(1) == b"x"
    drain = SignalDrain()
    await nursery.start(functools.partial(drain.run, server, 60))
    os.kill(os.getpid(), signal.SIGTERM)
    with trio.fail_after(5):
        await drain.done.wait()
    assert drain.report is not None
    assert (drain.report.finished, drain.report.cancelled) == (1, 0)
    await conn.aclose()


async def test_drain_on_signals_returns_when_the_server_stops_otherwise(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    async def handler(conn: trionet.Connection) -> None:  # pragma: no cover
        pass

    server = await trionet_server(handler)
    drain = SignalDrain()
    await nursery.start(functools.partial(drain.run, server, 60))
    with trio.fail_after(3):
        report = await server.shutdown(1)
        await drain.done.wait()
    assert drain.report is report


async def test_drain_on_signals_validates_its_arguments(trionet_server: ServerFactory) -> None:
    async def handler(conn: trionet.Connection) -> None:  # pragma: no cover
        pass

    server = await trionet_server(handler)
    call = r"^drain_on_signals\(\): "
    with pytest.raises(ValueError, match=call + "signals must name at least one signal"):
        await trionet.drain_on_signals(server, ())
    with pytest.raises(ValueError, match=call + "signals: 99999 is not a signal"):
        await trionet.drain_on_signals(server, [99999])
    with pytest.raises(ValueError, match=call + "signals: 9 is not a signal"):
        await trionet.drain_on_signals(server, [signal.SIGKILL])
    with pytest.raises(TypeError, match=call + "signals must be signal numbers"):
        await trionet.drain_on_signals(server, ["SIGINT"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=call + "signals must be an iterable"):
        await trionet.drain_on_signals(server, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=call + "grace must be >= 0 seconds"):
        await trionet.drain_on_signals(server, grace=-1)
    for bad in (True, "5", []):
        with pytest.raises(TypeError, match=call + "grace must be a number of seconds"):
            await trionet.drain_on_signals(server, grace=bad)  # type: ignore[arg-type]
    assert not server.draining


@pytest.mark.parametrize("started_by", ["signal", "shutdown"])
async def test_drain_on_signals_never_passes_a_signal_on_after_returning(
    trionet_server: ServerFactory, nursery: trio.Nursery, started_by: str
) -> None:
    # A signal that arrives while drain_on_signals still has its handlers
    # installed is its own, even when the server has just stopped: it must
    # not reach the previous handler once drain_on_signals returns.  (Trio's
    # open_signal_receiver re-raises such a signal at exit; inside trio.run
    # the previous handler of SIGINT raises KeyboardInterrupt, that of
    # SIGTERM kills the process.)  The signal is raised in the very step in
    # which the server's stop wakes both this task and drain_on_signals, so
    # that its own task never gets to read it.
    async def handler(conn: trionet.Connection) -> None:  # pragma: no cover
        pass

    passed_on: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: passed_on.append(signum))
    try:
        server = await trionet_server(handler)
        drain = SignalDrain(signal.SIGUSR1)
        await nursery.start(functools.partial(drain.run, server, 60))
        if started_by == "signal":
            signal.raise_signal(signal.SIGUSR1)  # starts the drain
        with trio.fail_after(5):
            await server.shutdown(60)  # returns in the step in which the server stopped
        signal.raise_signal(signal.SIGUSR1)
        with trio.fail_after(5):
            await drain.done.wait()
        await trio.testing.wait_all_tasks_blocked()  # let any late delivery run
        assert drain.report is not None
        assert passed_on == []
    finally:
        signal.signal(signal.SIGUSR1, previous)
