"""One server, many listeners: every kind of bind trionet.open_server accepts.

Run it: python binds.py
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile

import trio

import trionet


async def hello(conn: trionet.Connection) -> None:
    await conn.send_all(f"hello from {conn.local}\n".encode())


async def fetch(address: trionet.Address) -> bytes:
    """Connect to a TCP or Unix address and read one line."""
    async with await trionet.connect(address, timeout=5.0) as conn:
        return await conn.receive_line()


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def main() -> None:
    tmpdir = tempfile.mkdtemp()
    binds: list[object] = [
        "tcp://127.0.0.1:0",                    # a spec string; port 0 = ephemeral
        ("127.0.0.1", 0),                       # a (host, port) tuple
        trionet.TCPAddress("127.0.0.1", 0),     # an address record
        "unix:" + os.path.join(tmpdir, "app.sock"),  # a Unix socket file
    ]
    if has_ipv6_loopback():
        binds.append("tcp://[::1]:0")           # IPv6 literals go in brackets
    if sys.platform == "linux":
        binds.append(f"unix:@trionet-example-{os.getpid()}")  # abstract: no file

    # An already-bound, listening socket (e.g. inherited from a supervisor).
    ready = socket.socket()
    ready.bind(("127.0.0.1", 0))
    ready.listen()
    binds.append(ready)

    try:
        async with trionet.open_server(hello, *binds) as server:
            for address in server.addresses:
                reply = await fetch(address)
                print(f"{address!s:45} -> {reply.decode()}")
            print("accepted:", server.stats.accepted)
        # Leaving the block drained the server and removed the socket file.
        file_left = await trio.Path(tmpdir, "app.sock").exists()
        print("stopped:", server.stopped, "| file left:", file_left)
    finally:
        os.rmdir(tmpdir)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
