"""ConnectionPool: reuse client connections to one server.

Run it: python connection_pool.py
"""

from __future__ import annotations

import trio

import trionet


async def upper(conn: trionet.Connection) -> None:
    # A keep-alive line protocol: one reply per request line, until EOF.
    while True:
        try:
            line = await conn.receive_line()
        except trionet.IncompleteRead:  # the client went away
            return
        await conn.send_all(line.upper() + b"\n")


async def main() -> None:
    async with trionet.open_server(upper, "tcp://127.0.0.1:0") as server:
        # At most 2 connections; idle ones are closed after 0.1 s; new
        # connections use trionet.connect(..., timeout=5.0).
        target = server.addresses[0]
        pool = trionet.ConnectionPool(target, max_size=2, idle_timeout=0.1, timeout=5.0)
        async with pool:

            async def request(word: bytes) -> None:
                # Lent on entry; given back on a normal exit.
                async with pool.connection() as conn:
                    await conn.send_all(word + b"\n")
                    assert await conn.receive_line() == word.upper()

            # Ten requests, at most two connections: the others wait their turn.
            async with trio.open_nursery() as nursery:
                for i in range(10):
                    nursery.start_soon(request, b"word%d" % i)
            stats = pool.stats
            print(f"created={stats.created} reused={stats.reused} idle={stats.idle}")

            # Idle for longer than idle_timeout: both connections are closed.
            await trio.sleep(0.3)
            await request(b"again")
            stats = pool.stats
            print(f"created={stats.created} expired={stats.expired}")

            # A block that raises may have left the exchange half-way: the
            # connection is discarded, never lent again.
            try:
                async with pool.connection() as conn:
                    await conn.send_all(b"half a requ")
                    raise RuntimeError("changed my mind")
            except RuntimeError:
                pass
            print(f"discarded={pool.stats.discarded}")
        print("pool closed:", pool.closed)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
