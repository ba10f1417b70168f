"""A graceful drain: what Server.shutdown does to three kinds of handler.

Run it: python graceful_drain.py
"""

from __future__ import annotations

import functools

import trio

import trionet


async def handler(conn: trionet.Connection) -> None:
    kind = await conn.receive_line()
    await conn.send_all(b"ready\n")
    if kind == b"echo":
        # A keep-alive loop: ``async for`` ends by itself once the drain
        # begins and nothing is waiting to be read.
        async for chunk in conn:
            await conn.send_all(chunk)
    elif kind == b"polite":
        # Watch the drain event to say goodbye properly.
        await conn.draining.wait()
        await conn.send_all(b"goodbye\n")
    else:
        # Ignores the drain: cancelled when the grace period runs out.
        await trio.sleep_forever()


async def open_client(address: trionet.TCPAddress, kind: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(address.host, address.port)
    await stream.send_all(kind + b"\n")
    assert await stream.receive_some() == b"ready\n"  # the handler is running
    return stream


async def read_to_eof(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server: trionet.Server = await nursery.start(
            functools.partial(trionet.serve, handler, "tcp://127.0.0.1:0")
        )
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)
        kinds = (b"echo", b"polite", b"stubborn")
        clients = {kind: await open_client(address, kind) for kind in kinds}

        report = await server.shutdown(grace=0.5)
        print(f"finished={report.finished} cancelled={report.cancelled} swept={report.swept}")
        print(f"took at least the grace period: {report.elapsed >= 0.5}")

        for kind, stream in clients.items():
            print(kind.decode(), "client got", await read_to_eof(stream))
            await stream.aclose()

        # The listener is closed: new connections are refused.
        try:
            await trio.open_tcp_stream(address.host, address.port)
        except OSError:
            print("new connections refused")
    print("ok")


if __name__ == "__main__":
    trio.run(main)
