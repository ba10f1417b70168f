"""The stage seam: async stages between admission and the handler, with a stage written here.

``HeaderStage`` reads a one-line header ``"FROM <ip> <port>\\n"`` and makes
it the connection's peer -- what the PROXY stage will do -- on a plan that
asks for the admission gate *after* its stages.  The tests install it with
a ``plan_for`` of their own (the seam is internal: built-in stages come from
the bind's options).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import connect_tcp, port_of

import trionet
from trionet._binds import Bind
from trionet._server import _serve
from trionet._server._stages import StagePlan
from trionet.testing import Shutdown, wait_until

pytestmark = pytest.mark.usefixtures("network")

ServerFactory = Callable[..., Awaitable[trionet.Server]]


@attrs.frozen
class HeaderStage:
    """Reads ``FROM <ip> <port>``; the connection's peer becomes that address."""

    kind = "header"

    async def run(self, conn: trionet.Connection) -> None:
        line = await conn.receive_line(max_size=100)
        words = line.split()
        if len(words) != 3 or words[0] != b"FROM":
            raise trionet.RemoteProtocolError(f"not a FROM header: {line!r}")
        conn.peer = trionet.TCPAddress(words[1].decode(), int(words[2]))


@attrs.frozen
class BuggyStage:
    kind = "buggy"

    async def run(self, conn: trionet.Connection) -> None:
        raise ZeroDivisionError("a bug in the stage")


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every plain bind runs the stages in the returned list (header by default)."""
    stages: list[Any] = [HeaderStage()]

    def plan_for(bind: Bind) -> StagePlan | None:
        assert bind.handshake_timeout is not None
        return StagePlan(stages=tuple(stages), timeout=bind.handshake_timeout, admit_after=True)

    monkeypatch.setattr(_serve, "plan_for", plan_for)
    yield stages


async def peer_reporter(conn: trionet.Connection) -> None:
    await conn.send_all(f"{conn.peer}\n".encode())
    await conn.draining.wait()


async def open_client(server: trionet.Server, header: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port_of(server))
    await stream.send_all(header)
    return stream


async def read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some()
        if not chunk:
            return data
        data += chunk
    return data


async def test_a_stage_replaces_the_peer_and_the_handler_sees_it(
    trionet_server: ServerFactory, staged: list[Any]
) -> None:
    server = await trionet_server(peer_reporter)
    with trio.fail_after(10):
        stream = await open_client(server, b"FROM 192.0.2.7 4242\n")
        assert await read_line(stream) == b"tcp://192.0.2.7:4242\n"
        (info,) = server.connections
        assert info.peer == trionet.TCPAddress("192.0.2.7", 4242)
        await stream.aclose()


async def test_the_gate_runs_after_the_stages_on_what_they_learned(
    trionet_server: ServerFactory, staged: list[Any]
) -> None:
    # The kernel's peer is 127.0.0.1 (allowed); the header's decides.
    policy = trionet.AccessPolicy(allow=["127.0.0.0/8", "192.0.2.0/24"], deny=["192.0.2.66/32"])
    server = await trionet_server(peer_reporter, access=policy, max_connections_per_host=1)
    with trio.fail_after(10):
        refused = await open_client(server, b"FROM 192.0.2.66 1\n")
        with pytest.raises(trio.BrokenResourceError):  # reset, as at accept
            await read_line(refused)
        await wait_until(lambda: server.stats.rejected_access == 1)
        first = await open_client(server, b"FROM 192.0.2.8 1\n")
        assert await read_line(first) == b"tcp://192.0.2.8:1\n"
        second = await open_client(server, b"FROM 192.0.2.8 2\n")  # same host: over the limit
        with pytest.raises(trio.BrokenResourceError):
            await read_line(second)
        await wait_until(lambda: server.stats.rejected_limit == 1)
        other = await open_client(server, b"FROM 192.0.2.9 1\n")  # another host: fine
        assert await read_line(other) == b"tcp://192.0.2.9:1\n"
    stats = server.stats
    assert (stats.stage_failures, stats.handler_errors) == (0, 0)
    assert stats.accepted == 4 and stats.active == 2
    for stream in (refused, first, second, other):
        await stream.aclose()


async def test_a_failing_stage_costs_its_connection_only_and_is_logged_at_debug(
    trionet_server: ServerFactory, staged: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    server = await trionet_server(peer_reporter)
    with trio.fail_after(10):
        bad = await open_client(server, b"HELLO\n")
        assert await read_line(bad) == b""
        await wait_until(lambda: server.stats.stage_failures == 1)
        good = await open_client(server, b"FROM 192.0.2.1 1\n")
        assert await read_line(good) == b"tcp://192.0.2.1:1\n"
    stats = server.stats
    assert (stats.stage_failures, stats.tls_failures, stats.handler_errors) == (1, 0, 0)
    assert stats.closed == 1 and stats.active == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("header stage failed" in r.getMessage() for r in caplog.records)
    await bad.aclose()
    await good.aclose()


async def test_a_bug_in_a_stage_is_logged_and_costs_that_connection_only(
    trionet_server: ServerFactory, staged: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    staged[:] = [BuggyStage()]
    server = await trionet_server(peer_reporter)
    with trio.fail_after(10):
        stream = await open_client(server, b"")
        assert await read_line(stream) == b""
        await wait_until(lambda: server.stats.stage_failures == 1)
    assert server.stats.handler_errors == 0
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert "buggy stage raised" in record.getMessage()
    await stream.aclose()


async def test_stages_share_one_deadline(
    trionet_server: ServerFactory, staged: list[Any], autojump_clock: trio.testing.MockClock
) -> None:
    # Two header stages: a peer that answers the first at once and stalls
    # on the second is dropped at handshake_timeout from accept, not later.
    staged[:] = [HeaderStage(), HeaderStage()]
    server = await trionet_server(peer_reporter, handshake_timeout=3.0)
    stream = await open_client(server, b"FROM 192.0.2.1 1\n")
    start = trio.current_time()
    assert await read_line(stream) == b""
    assert 3.0 <= trio.current_time() - start < 3.5
    assert server.stats.stage_failures == 1
    await stream.aclose()


async def test_a_drain_closes_connections_in_their_stages_and_reports_them(
    trionet_server: ServerFactory, staged: list[Any], nursery: trio.Nursery
) -> None:
    server = await trionet_server(peer_reporter)
    with trio.fail_after(10):
        silent = await open_client(server, b"")  # stuck in the header stage
        served = await open_client(server, b"FROM 192.0.2.1 1\n")
        assert await read_line(served) == b"tcp://192.0.2.1:1\n"
        await wait_until(lambda: len(server.connections) == 2)
        report = await Shutdown(nursery, server, grace=5.0).wait()
    assert (report.finished, report.cancelled, report.in_stages) == (1, 0, 1)
    assert report.elapsed < 1.0
    assert server.stats.stage_failures == 0
    await silent.aclose()
    await served.aclose()


class Parked:
    """A handler that parks; meanwhile the test looks at its task from outside."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.parked = trio.Event()
        self.release = trio.Event()

    async def __call__(self, conn: trionet.Connection) -> None:
        self.task = trio.lowlevel.current_task()
        self.parked.set()
        await self.release.wait()

    def awaited_and_record(self) -> tuple[Any, Any]:
        """What the connection task's own coroutine awaits, and its record."""
        assert self.task is not None
        coro = self.task.coro
        return coro.cr_await, coro.cr_frame.f_locals["rec"]


async def test_a_plain_bind_runs_the_handler_right_in_the_connection_task(
    trionet_server: ServerFactory,
) -> None:
    # No stages, no plan: the task's coroutine awaits the handler directly --
    # no extra frame, task or cancel scope on the plain path.
    handler = Parked()
    server = await trionet_server(handler)
    with trio.fail_after(10):
        with await connect_tcp(port_of(server)):
            await handler.parked.wait()
            awaited, record = handler.awaited_and_record()
            assert awaited.cr_code is Parked.__call__.__code__
            assert record.plan is None and record.scope is None
            handler.release.set()
            await wait_until(lambda: server.stats.closed == 1)


async def test_after_its_stages_the_handler_is_as_close(
    trionet_server: ServerFactory, staged: list[Any]
) -> None:
    handler = Parked()
    server = await trionet_server(handler)
    with trio.fail_after(10):
        stream = await open_client(server, b"FROM 192.0.2.1 1\n")
        await handler.parked.wait()
        awaited, record = handler.awaited_and_record()
        assert awaited.cr_code is Parked.__call__.__code__
        assert record.plan is not None and record.scope is None  # the deadline is gone
        handler.release.set()
        await wait_until(lambda: server.stats.closed == 1)
        await stream.aclose()
