"""What a test on ``trionet.testing.VirtualNetwork`` costs in wall time.

Under ``MockClock(autojump_threshold=0)`` (what pytest-trio's
``autojump_clock`` is), one process, nothing on the real network:

* echo round trips per second over one trionet connection;
* connections per second: ``trionet.connect``, one echo, ``aclose`` --
  through ``trionet.serve`` on the virtual network;
* the same round trip on real loopback sockets, for scale;
* the wall time of a test that waits out a 60 s idle timeout.

    .venv/bin/python benchmarks/micro/virtual_network.py

Prints the best of three runs of each.  Results: ``results/micro.txt``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

import trio
import trio.testing

import trionet
from trionet.testing import VirtualNetwork

ROUND_TRIPS = 20_000
CONNECTIONS = 2_000


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def round_trips(virtual: bool) -> float:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(trionet.serve, echo, "tcp://127.0.0.1:0"))
        conn = await trionet.connect(server.addresses[0])
        t0 = time.perf_counter()
        for _ in range(ROUND_TRIPS):
            await conn.send_all(b"x" * 64)
            await conn.receive_exactly(64)
        elapsed = time.perf_counter() - t0
        await conn.aclose()
        nursery.cancel_scope.cancel()
    return ROUND_TRIPS / elapsed


async def connections(virtual: bool) -> float:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(functools.partial(trionet.serve, echo, "tcp://127.0.0.1:0"))
        t0 = time.perf_counter()
        for _ in range(CONNECTIONS):
            conn = await trionet.connect(server.addresses[0])
            await conn.send_all(b"ping")
            await conn.receive_exactly(4)
            await conn.aclose()
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    return CONNECTIONS / elapsed


async def idle_timeout(virtual: bool) -> float:
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(trionet.serve, echo, "tcp://127.0.0.1:0", idle_timeout=60)
        )
        conn = await trionet.connect(server.addresses[0])
        assert await conn.receive_some() == b""
        await conn.aclose()
        nursery.cancel_scope.cancel()
    return time.perf_counter() - t0


def run(body: Callable[[bool], Awaitable[float]], virtual: bool) -> float:
    async def main() -> float:
        if not virtual:
            return await body(False)
        with VirtualNetwork().install():
            return await body(True)

    clock = trio.testing.MockClock(autojump_threshold=0) if virtual else None
    return trio.run(main, clock=clock)


def main() -> None:
    rows = [
        ("virtual: echo round trips/s", round_trips, True, max, "{:,.0f}"),
        ("loopback: echo round trips/s", round_trips, False, max, "{:,.0f}"),
        ("virtual: connections/s (connect, echo, close)", connections, True, max, "{:,.0f}"),
        ("loopback: connections/s (connect, echo, close)", connections, False, max, "{:,.0f}"),
        ("virtual: 60 s idle-timeout test, wall ms", idle_timeout, True, min, "{:.1f}"),
    ]
    for label, body, virtual, best, fmt in rows:
        value = best(run(body, virtual) for _ in range(3))
        if label.endswith("wall ms"):
            value *= 1000
        print(f"{label:50s} {fmt.format(value)}")


if __name__ == "__main__":
    main()
