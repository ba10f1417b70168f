"""Drain on SIGINT/SIGTERM: the shape of a production main().

The "operator" task plays the part of Ctrl-C / ``kill``: it connects a client,
then sends this process SIGTERM.  POSIX only.

Run it: python drain_on_signals.py
"""

from __future__ import annotations

import functools
import os
import signal

import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:  # ends by itself when the drain begins
        await conn.send_all(chunk)


async def operator(address: trionet.TCPAddress) -> None:
    stream = await trio.open_tcp_stream(address.host, address.port)
    await stream.send_all(b"ping")
    print("client got", await stream.receive_some())
    os.kill(os.getpid(), signal.SIGTERM)
    print("client then got", await stream.receive_some(), "(EOF: the server drained)")
    await stream.aclose()


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server: trionet.Server = await nursery.start(
            functools.partial(trionet.serve, echo, "tcp://127.0.0.1:0")
        )
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)
        print("serving on", address, "-- Ctrl-C or SIGTERM drains")
        nursery.start_soon(operator, address)
        # Installs the signal handlers before its first checkpoint, so before
        # the operator task runs.  A second signal cancels handlers at once.
        report = await trionet.drain_on_signals(server, grace=5.0)
        print(f"drained: finished={report.finished} cancelled={report.cancelled}")
    print("ok")


if __name__ == "__main__":
    trio.run(main)
