"""The lingering close: a handler returns, and its reply still arrives whole.

The client pipelines a second request before it has read the first reply,
and reads slowly.  When the handler returns, that request sits unread in the
kernel and most of the 4 MiB reply is still queued: a plain close() would
make the kernel reset the connection and drop the queued tail.  trionet
lingers instead -- FIN after the queued bytes, the late request read and
discarded -- until the client's EOF.

Run it: python lingering_close.py
"""

from __future__ import annotations

import trio

import trionet

REPLY = b"x" * (4 << 20)


async def handler(conn: trionet.Connection) -> None:
    await conn.receive_some(6)  # b"first\n"; the second request stays unread
    await conn.send_all(REPLY)  # returns once the kernel has the bytes


async def main() -> None:
    async with trionet.open_server(handler, "tcp://127.0.0.1:0") as server:
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            await stream.send_all(b"first\n")
            received = len(await stream.receive_some())
            await stream.send_all(b"second\n")  # pipelined: never read
            while chunk := await stream.receive_some(65536):
                received += len(chunk)
                await trio.sleep(0.0005)  # a slow reader
            print(f"client got {received} of {len(REPLY)} bytes, then EOF")
            print(f"server lingering: {server.stats.lingering}")
        # Our close is the EOF the linger waits for.
        with trio.fail_after(5):
            while server.stats.lingering:
                await trio.sleep(0.01)
        stats = server.stats
        print(f"closed={stats.closed} resets={stats.resets} bytes_sent={stats.bytes_sent}")
    print("ok")


if __name__ == "__main__":
    trio.run(main)
