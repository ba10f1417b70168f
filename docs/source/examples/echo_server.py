"""An echo server with trionet.serve, started in a nursery with nursery.start.

Run it: python echo_server.py
"""

from __future__ import annotations

import functools

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    # One task per connection.  ``async for`` yields chunks until the client
    # sends EOF -- or until the server starts draining with nothing buffered.
    async for chunk in conn:
        await conn.send_all(chunk)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        # nursery.start() returns once every listening socket is listening,
        # so connecting right after it can never be refused.
        server: trionet.Server = await nursery.start(
            functools.partial(trionet.serve, echo, "tcp://127.0.0.1:0")
        )
        address = server.addresses[0]  # port 0 was resolved to a real port
        print("listening on", address)

        # trionet.connect returns a Connection too (any Trio client would do).
        async with await trionet.connect(address) as client:
            await client.send_all(b"hello, trionet")
            reply = await client.receive_some()
            print("reply:", reply.decode())
            print("live connections:", len(server.connections))

            # A graceful drain: stop accepting, let handlers finish, stop.
            # The echo loop ends by itself, so nothing needs cancelling.
            report = await server.shutdown(grace=5.0)
            print("drain:", report.finished, "finished,", report.cancelled, "cancelled")
            print("client sees EOF:", await client.receive_some() == b"")

        stats = server.stats
        print("stats:", stats.accepted, "accepted,", stats.bytes_received, "bytes in")
    print("ok")


if __name__ == "__main__":
    trio.run(main)
