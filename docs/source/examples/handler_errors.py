"""Handler errors cost one connection, not the server -- unless you ask otherwise.

Run it: python handler_errors.py   (the logged traceback goes to stderr)
"""

from __future__ import annotations

import logging
import socket
import struct

import trio

import trionet


async def handler(conn: trionet.Connection) -> None:
    request = await conn.receive_line()  # b"divide N"
    answer = 100 // int(request.split()[1])  # a bug waiting for N = 0
    await conn.send_all(b"%d\n" % answer)
    await conn.receive_some()  # wait for the client to hang up (or reset)


async def ask(address: trionet.TCPAddress, line: bytes, *, reset: bool = False) -> bytes:
    sock = trio.socket.socket()
    await sock.connect((address.host, address.port))
    stream = trio.SocketStream(sock)
    await stream.send_all(line + b"\n")
    reply = await stream.receive_some()
    if reset:  # close with a TCP RST instead of a FIN: the handler sees a reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()
    return reply


async def main() -> None:
    # handler_errors="log" (the default): the error is logged with its
    # traceback under "trionet.server", counted, and only that connection closes.
    async with trionet.open_server(handler, "tcp://127.0.0.1:0") as server:
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)
        print("divide 0 ->", await ask(address, b"divide 0"))  # b"": closed on us
        print("divide 4 ->", await ask(address, b"divide 4"))  # the server goes on
        await ask(address, b"divide 5", reset=True)  # a peer reset is not a bug
    stats = server.stats
    print(f"handler_errors={stats.handler_errors} resets={stats.resets} closed={stats.closed}")

    # handler_errors="raise": the handler's exception ends the server and comes
    # out of serve/open_server bare -- not inside an ExceptionGroup.  Tests want this.
    try:
        async with trionet.open_server(handler, "tcp://127.0.0.1:0", handler_errors="raise") as s:
            address = s.addresses[0]
            assert isinstance(address, trionet.TCPAddress)
            await ask(address, b"divide 0")
            await trio.sleep_forever()  # cancelled when the error arrives
    except ZeroDivisionError as exc:
        print("raised:", repr(exc))
    print("ok")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main)
