"""Connection limits: max_connections, max_connections_per_host, idle_timeout.

Run it: python limits.py
"""

from __future__ import annotations

import trio

import trionet


async def greeter(conn: trionet.Connection) -> None:
    await conn.send_all(b"hello\n")
    await conn.receive_some()  # stay until the client hangs up


async def connect(address: trionet.TCPAddress) -> trio.SocketStream:
    return await trio.open_tcp_stream(address.host, address.port)


async def greeting(stream: trio.SocketStream, timeout: float) -> str:
    """What the server says within ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        try:
            data = await stream.receive_some()
        except trio.BrokenResourceError:
            return "(reset)"
        return data.decode().strip() or "(EOF)"
    return "(nothing yet)"


async def main() -> None:
    # max_connections: at the limit the server stops accepting; the kernel
    # backlog holds new clients until a slot frees up (backpressure).
    async with trionet.open_server(greeter, "tcp://127.0.0.1:0", max_connections=2) as server:
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)
        first, second, third = [await connect(address) for _ in range(3)]
        print("first:", await greeting(first, 5), "second:", await greeting(second, 5))
        print("third, while two are served:", await greeting(third, 0.3))
        await first.aclose()  # frees a slot
        print("third, after one left:", await greeting(third, 5))
        await second.aclose()
        await third.aclose()

    # max_connections_per_host: the excess connection is reset at once.
    async with trionet.open_server(
        greeter, "tcp://127.0.0.1:0", max_connections_per_host=1
    ) as server:
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)
        one = await connect(address)
        print("one:", await greeting(one, 5))
        try:
            two = await connect(address)
            print("two:", await greeting(two, 5))
            await two.aclose()
        except OSError:  # on loopback the reset can beat connect() itself
            print("two: (reset)")
        await one.aclose()
    print("rejected_limit =", server.stats.rejected_limit)

    # idle_timeout: no bytes either way for this long closes the connection
    # (and cancels its handler).
    async with trionet.open_server(greeter, "tcp://127.0.0.1:0", idle_timeout=0.2) as server:
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)
        quiet = await connect(address)
        print("quiet:", await greeting(quiet, 5))
        start = trio.current_time()
        print("then:", await greeting(quiet, 5))  # we say nothing...
        print(f"closed after about {trio.current_time() - start:.1f} s")
        await quiet.aclose()
    print("idle_closed =", server.stats.idle_closed)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
