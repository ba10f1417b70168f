"""The slowloris defence: min_receive_rate, and the waiting room it opens.

Fifty clients each trickle one byte every 100 ms and never finish a line,
against a server with ten slots.  With ``min_receive_rate`` on, the server
closes them (``stats.slow_closed``) -- in their handler, or in the waiting
room before they ever get a slot -- and a fresh client is served at once.

Run it: python slow_clients.py
"""

from __future__ import annotations

import trio

import trionet


async def lines(conn: trionet.Connection) -> None:
    """A request/response protocol: each line is answered with ``R <line>``."""
    while True:
        try:
            line = await conn.receive_until(b"\n", max_size=1024)
        except trionet.IncompleteRead:
            return  # the client hung up
        await conn.send_all(b"R " + line + b"\n")


async def trickler(address: trionet.TCPAddress) -> None:
    """One byte every 100 ms, never a newline; back at once when closed."""
    while True:
        try:
            stream = await trio.open_tcp_stream(address.host, address.port)
        except OSError:
            await trio.sleep(0.1)
            continue
        async with stream:
            try:
                while True:
                    await stream.send_all(b"x")
                    await trio.sleep(0.1)
            except trio.BrokenResourceError:
                pass  # closed by the defence: come back


async def fresh_client(address: trionet.TCPAddress) -> tuple[bytes, float]:
    start = trio.current_time()
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        await stream.send_all(b"hello\n")
        reply = b""
        while not reply.endswith(b"\n"):
            reply += await stream.receive_some()
    return reply.strip(), trio.current_time() - start


async def main() -> None:
    async with trionet.open_server(
        lines,
        "tcp://127.0.0.1:0",
        max_connections=10,
        min_receive_rate=100,  # bytes per second, while a message is unanswered
        min_receive_grace=0.5,  # judged after half a second of sending
    ) as server:
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(trickler, address)
            await trio.sleep(1.5)  # the flood holds every slot, and more wait
            reply, took = await fresh_client(address)
            print("fresh client served:", reply.decode())
            print("within 2 s:", took < 2.0)
            print("slow senders closed:", server.stats.slow_closed > 0)
            nursery.cancel_scope.cancel()
    print("ok")


if __name__ == "__main__":
    trio.run(main)
