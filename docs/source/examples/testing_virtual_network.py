"""Tests on trionet's virtual network: the virtual_network fixture and trionet.testing helpers.

The ``virtual_network`` fixture installs a ``trionet.testing.VirtualNetwork``
for the test's ``trio.run``: every socket the test (and the code under test)
makes is virtual.  With ``autojump_clock`` among the test function's own
arguments, timeouts of minutes take no wall time.

Run it: python testing_virtual_network.py   (or: pytest testing_virtual_network.py)
"""

from __future__ import annotations

import sys

import pytest
import trio
import trio.testing

import trionet
from trionet.pytest_plugin import ServerFactory
from trionet.testing import (
    ExitRecordingEcho,
    Shutdown,
    TraceEvent,
    VirtualNetwork,
    fill_stream,
    no_errors_logged,
    wait_until,
)

pytestmark = pytest.mark.trio


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def test_partition_then_heal(
    autojump_clock: trio.testing.MockClock,  # a direct argument: pytest-trio uses it
    virtual_network: VirtualNetwork,
    trionet_server: ServerFactory,
) -> None:
    virtual_network.add_host("db.test", "127.0.0.2")
    server = await trionet_server(echo, "tcp://db.test:5432")
    conn = await trionet.connect("tcp://db.test:5432")
    virtual_network.partition("localhost", "db.test")
    with pytest.raises(trionet.ConnectTimeout):
        await trionet.connect("tcp://db.test:5432", timeout=30)  # 30 virtual seconds
    await conn.send_all(b"query")
    virtual_network.heal("localhost", "db.test")
    assert await conn.receive_exactly(5) == b"query"  # the stalled bytes, delivered
    await conn.aclose()
    assert server.stats.accepted == 1


@pytest.mark.virtual_network(seed=3, buffer_size=4096)
async def test_marker_options_and_backpressure(
    autojump_clock: trio.testing.MockClock,
    virtual_network: VirtualNetwork,
    trionet_server: ServerFactory,
) -> None:
    assert (virtual_network.seed, virtual_network.buffer_size) == (3, 4096)

    async def silent(conn: trionet.Connection) -> None:
        await trio.sleep_forever()  # never reads: the client's sends fill up

    server = await trionet_server(silent)
    conn = await trionet.connect(server.addresses[0])
    await fill_stream(conn)  # returns once a send blocks
    with trio.move_on_after(60) as blocked:
        await conn.send_all(b"more")
    assert blocked.cancelled_caught
    await conn.aclose()


async def test_idle_timeout_of_a_minute(
    autojump_clock: trio.testing.MockClock,
    virtual_network: VirtualNetwork,
    trionet_server: ServerFactory,
) -> None:
    server = await trionet_server(echo, idle_timeout=60)
    conn = await trionet.connect(server.addresses[0])
    start = trio.current_time()
    assert await conn.receive_some() == b""  # the server closed the idle connection
    assert trio.current_time() - start >= 60
    await wait_until(lambda: server.stats.idle_closed == 1)
    await conn.aclose()


async def test_drain_ends_the_loop_by_itself(
    autojump_clock: trio.testing.MockClock,
    virtual_network: VirtualNetwork,
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = ExitRecordingEcho()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trionet.serve, handler, "tcp://127.0.0.1:7000")
        conn = await trionet.connect("tcp://127.0.0.1:7000")
        await conn.send_all(b"hi")
        assert await conn.receive_exactly(2) == b"hi"
        shutdown = Shutdown(nursery, server, grace=5)
        report = await shutdown.wait()
        assert (report.finished, report.cancelled) == (1, 0)
        assert await conn.receive_some() == b""
        await conn.aclose()
    assert handler.exits == ["drained"]
    no_errors_logged(caplog)


async def scenario(seed: int) -> list[TraceEvent]:
    """Two clients, each from its own address, over a link with seeded jitter."""
    net = VirtualNetwork(seed=seed)
    with net.install():
        net.add_host("server.test", "127.0.0.10")
        net.add_host("client.test", "127.0.0.20")
        net.set_latency("localhost", "server.test", 0.05, jitter=0.2)
        net.set_latency("client.test", "server.test", 0.01, jitter=0.5)
        async with trionet.open_server(echo, "tcp://127.0.0.10:80"):

            async def client(local: str) -> None:
                conn = await trionet.connect("tcp://server.test:80", local_address=local)
                for i in range(10):
                    await conn.send_all(b"%d;" % i)
                    await conn.receive_exactly(len(b"%d;" % i))
                await conn.aclose()

            async with trio.open_nursery() as clients:
                clients.start_soon(client, "127.0.0.1")
                clients.start_soon(client, "127.0.0.20")
    return net.trace


async def test_same_seed_same_trace(autojump_clock: trio.testing.MockClock) -> None:
    first = await scenario(7)
    assert await scenario(7) == first  # whatever order Trio ran the tasks in
    arrivals = [event.detail for event in first if event.kind == "send"]
    assert arrivals != [event.detail for event in await scenario(8) if event.kind == "send"]


if __name__ == "__main__":
    # (trionet is imported above, before pytest loads it as a plugin; the -W
    # silences pytest's note that it therefore cannot rewrite its asserts.)
    quiet = "ignore::pytest.PytestAssertRewriteWarning"
    code = pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-W", quiet])
    if code == 0:
        print("ok")
    sys.exit(code)
