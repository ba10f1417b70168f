"""Fault scenarios on trionet.testing.VirtualNetwork, in virtual time.

An echo server and its clients run unmodified on a deterministic in-memory
TCP network: latency, a partition (a connect that times out, a stalled
reply that resumes after the heal), a one-way partition, hold and release,
a reset, a crash and a restart -- about two minutes of virtual time that
take a fraction of a second, because Trio's MockClock jumps ahead whenever
every task is waiting.

Run it: python virtual_network.py
"""

from __future__ import annotations

import trio
import trio.testing

import trionet
from trionet.testing import VirtualNetwork

SERVER = "tcp://server.test:80"


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def run_echo_server(task_status: trio.TaskStatus[trionet.Server]) -> None:
    await trionet.serve(echo, "tcp://127.0.0.10:80", task_status=task_status)


async def round_trip(conn: trionet.Connection, data: bytes) -> float:
    """Send ``data``, read the echo back; the virtual seconds it took."""
    start = trio.current_time()
    await conn.send_all(data)
    assert await conn.receive_exactly(len(data)) == data
    return trio.current_time() - start


async def main() -> None:
    began = trio.current_time()
    net = VirtualNetwork(seed=1)
    with net.install():  # for this trio.run: every socket below is virtual
        net.add_host("server.test", "127.0.0.10")  # name -> address, for the resolver
        async with trio.open_nursery() as nursery:
            server_scope = trio.CancelScope()

            async def server_host(task_status: trio.TaskStatus[trionet.Server]) -> None:
                with server_scope:  # the "process" of server.test
                    await run_echo_server(task_status=task_status)

            server = await nursery.start(server_host)
            conn = await trionet.connect(SERVER)
            print(f"{conn.local} -> {conn.peer} (serving {server.addresses[0]})")

            # Latency is one-way: 2 s each way makes a 4 s round trip.
            net.set_latency("127.0.0.1", "server.test", 2.0)
            print(f"latency 2 s: round trip {await round_trip(conn, b'ping'):.1f} s")

            # A partition: new connects time out, in-flight data stalls.
            net.partition("localhost", "server.test")
            start = trio.current_time()
            try:
                await trionet.connect(SERVER, timeout=30)
            except trionet.ConnectTimeout:
                print(f"partitioned: ConnectTimeout after {trio.current_time() - start:.1f} s")
            await conn.send_all(b"stalled")
            with trio.move_on_after(60):
                await conn.receive_some()
                print("partitioned: unexpected reply")
            net.heal("localhost", "server.test")
            start = trio.current_time()
            reply = await conn.receive_exactly(7)
            print(f"healed: {reply!r} {trio.current_time() - start:.1f} s after the heal")
            net.set_latency("127.0.0.1", "server.test", 0.0)

            # A one-way partition: the request arrives, the reply does not.
            net.partition("server.test", "localhost", direction="a->b")
            before = server.stats.bytes_received
            await conn.send_all(b"one way")
            with trio.move_on_after(10):
                await conn.receive_some()
            got = server.stats.bytes_received - before
            print(f"server -> client cut: the server got {got} bytes, the client nothing")
            net.heal("server.test", "localhost", direction="a->b")
            print("after the heal:", await conn.receive_exactly(7))

            # Hold and release: everything queues, then arrives in order.
            net.hold("localhost", "server.test")
            for word in (b"one ", b"two ", b"three "):
                await conn.send_all(word)
            with trio.move_on_after(10) as held:
                await conn.receive_some()
            print("held for 10 s, nothing arrived:", held.cancelled_caught)
            net.release("localhost", "server.test")
            print("released in order:", await conn.receive_exactly(14))

            # A reset: both ends see ECONNRESET; trionet says BrokenResourceError.
            net.reset_connections("server.test")
            try:
                await conn.receive_some()
            except trio.BrokenResourceError:
                print("reset_connections: BrokenResourceError")
            await conn.aclose()

            # A crash: the host's sockets are dead, its peers see resets,
            # connects to it get no answer until it restarts.
            conn = await trionet.connect(SERVER)
            net.crash("server.test")
            try:
                await conn.receive_some()
            except trio.BrokenResourceError:
                print("crash: the client sees a reset")
            try:
                await trionet.connect(SERVER, timeout=10)
            except trionet.ConnectTimeout:
                print("crashed host: connect timed out")
            server_scope.cancel()  # the crashed "process" is gone: end its tasks
            net.restart("server.test")
            try:
                await trionet.connect(SERVER, timeout=10)
            except trionet.ConnectError as exc:
                print("restarted, nothing listening:", type(exc.__cause__).__name__)
            server = await nursery.start(run_echo_server)  # the port is free again
            async with await trionet.connect(SERVER) as again:
                await again.send_all(b"back")
                print("a new server after the restart:", await again.receive_exactly(4))
            await conn.aclose()
            await server.shutdown(1)

        # The trace: plain records, ordered by (time, key, seq); faults have key "".
        print("the faults in the trace:")
        for event in net.trace:
            if event.key == "":
                print(" ", event)
    print(f"virtual time: {trio.current_time() - began:.0f} s")


if __name__ == "__main__":
    # MockClock with autojump_threshold=0 (pytest-trio's autojump_clock):
    # whenever every task is waiting, virtual time jumps to the next deadline.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    print("ok")
