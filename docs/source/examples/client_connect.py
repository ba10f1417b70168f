"""trionet.connect: timeouts, retries, local addresses, attempts, Unix sockets.

Run it: python client_connect.py
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

import trio

import trionet


async def greet(conn: trionet.Connection) -> None:
    name = await conn.receive_line()
    await conn.send_all(b"hello " + name + b", you are " + str(conn.peer).encode() + b"\n")


async def main() -> None:
    path = os.path.join(tempfile.mkdtemp(), "greet.sock")
    async with trionet.open_server(greet, "tcp://127.0.0.1:0", "unix:" + path) as server:
        tcp, unix = server.addresses

        # A Connection, like the server's: buffered reads, addresses, counters.
        async with await trionet.connect(tcp, timeout=5.0) as conn:
            await conn.send_all(b"trio\n")
            print((await conn.receive_line()).decode())
            print("local:", type(conn.local).__name__, "peer:", conn.peer == tcp)

        # Choose the source address (any of 127.0.0.0/8 is local on Linux).
        source = "127.0.0.2" if sys.platform == "linux" else "127.0.0.1"
        async with await trionet.connect(tcp, local_address=source) as conn:
            await conn.send_all(b"bound\n")
            print((await conn.receive_line()).decode().split(", ")[0], "from", conn.local.host)

        # Unix sockets: the same call, the same Connection.
        async with await trionet.connect(unix) as conn:
            await conn.send_all(b"unix\n")
            print((await conn.receive_line()).decode())

    # A port that is bound but not listening refuses connections.  We keep
    # it bound for as long as we use it, so no other program can take it.
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        refusing = ("127.0.0.1", reserved.getsockname()[1])

        # Every attempt of every round is refused.
        try:
            await trionet.connect(refusing, retries=2, backoff=0.01)
        except trionet.ConnectError as exc:
            print("ConnectError:", exc)
            for attempt in exc.attempts:
                print(f"  round {attempt.round}: {attempt.outcome}")

        # The timeout covers every attempt, back-off and retry.
        try:
            await trionet.connect(refusing, retries=1000, backoff=0.05, timeout=0.3)
        except trionet.ConnectTimeout as exc:
            print("timed out:", type(exc).__name__)

        # on_attempt reports each attempt as it finishes (e.g. for a -v flag).
        seen: list[str] = []
        try:
            await trionet.connect(refusing, on_attempt=lambda a: seen.append(a.outcome))
        except trionet.ConnectError:
            print("observed:", seen)

    os.rmdir(os.path.dirname(path))
    print("ok")


if __name__ == "__main__":
    trio.run(main)
