"""A small line protocol using Connection's buffered reads.

Commands, one per line:

* ``PUT <n>`` followed by exactly ``n`` bytes of payload -> ``OK <n>``
* ``NAME`` followed by a NUL-terminated name (at most 32 bytes) -> ``HELLO <name>``
* a line longer than 64 bytes -> ``ERR line too long`` and the server hangs up

Run it: python buffered_reads.py
"""

from __future__ import annotations

import trio

import trionet

MAX_LINE = 64


async def handler(conn: trionet.Connection) -> None:
    while True:
        try:
            line = await conn.receive_line(max_size=MAX_LINE)  # strips \n or \r\n
        except trionet.IncompleteRead as exc:
            if exc.partial:  # EOF in the middle of a line
                print(f"server: peer hung up mid-line after {exc.partial!r}")
            return  # partial == b"": a clean EOF between commands
        except trionet.MessageTooLong:
            await conn.send_all(b"ERR line too long\n")
            return
        command, _, argument = line.partition(b" ")
        if command == b"PUT":
            payload = await conn.receive_exactly(int(argument))
            await conn.send_all(b"OK %d\n" % len(payload))
        elif command == b"NAME":
            # The delimiter is consumed but not returned.
            name = await conn.receive_until(b"\0", max_size=32)
            await conn.send_all(b"HELLO " + name + b"\n")
        else:
            await conn.send_all(b"ERR unknown command\n")


async def exchange(address: trionet.TCPAddress, request: bytes) -> bytes:
    """Send ``request``, half-close, and read every reply until the server hangs up."""
    stream = await trio.open_tcp_stream(address.host, address.port)
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()  # "no more commands" -> the server sees a clean EOF
        replies = b""
        while chunk := await stream.receive_some():
            replies += chunk
        return replies


async def main() -> None:
    async with trionet.open_server(handler, "tcp://127.0.0.1:0") as server:
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)

        # Both reads share one buffer, so a command and its payload may arrive
        # in the same packet (or split anywhere) -- here they are one send.
        replies = await exchange(address, b"PUT 5\r\nhelloNAME\nTrio\0")
        print(replies.decode(), end="")

        replies = await exchange(address, b"X" * 100 + b"\n")
        print(replies.decode(), end="")

        await exchange(address, b"PUT 5\nhel")  # hangs up inside the payload
        await exchange(address, b"NAM")  # hangs up mid-line

    print("protocol errors:", server.stats.protocol_errors)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
