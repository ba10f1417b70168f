"""The TLS handshake as a stage: its timeout, its slot, and a drain.

A client that connects and never starts its handshake holds a connection
-- and, while it does, that connection's max_connections slot -- for at most
handshake_timeout seconds; then it is closed and counted, and the next
client is served.  A drain closes a connection still in its handshake at once.

Run it: python tls_handshake_timeout.py
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import trio
import trustme

import trionet


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not condition():
            await trio.sleep(0.01)


async def main() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async with trionet.open_server(
        echo,
        "tcp://127.0.0.1:0",
        tls=server_context,
        handshake_timeout=1.0,  # the default is 10 s
        max_connections=1,
    ) as server:
        address = server.addresses[0]
        assert isinstance(address, trionet.TCPAddress)

        # A client that opens a TCP connection and sends nothing.
        silent = await trio.open_tcp_stream(address.host, address.port)
        await wait_for(lambda: server.stats.accepted == 1)
        stats = server.stats
        print(f"silent client: accepted={stats.accepted} active={stats.active}", end=" ")
        print(f"listed={len(server.connections)}")

        # The one slot is taken: the next client waits in the kernel's backlog.
        start = trio.current_time()
        async with await trionet.connect(
            address, tls=client_context, server_hostname="localhost", timeout=5.0
        ) as conn:
            waited = trio.current_time() - start
            print("next client connected after the handshake timeout:", waited >= 0.9)
            await conn.send_all(b"hello\n")
            print("echo:", (await conn.receive_line()).decode())
        async with silent:
            print("silent client then got:", await silent.receive_some())
        stats = server.stats
        print(f"tls_failures={stats.tls_failures} stage_failures={stats.stage_failures}")
        await wait_for(lambda: server.stats.closed == 2)

        # A drain does not wait for a handshake: no request was taken yet.
        async with await trio.open_tcp_stream(address.host, address.port):
            await wait_for(lambda: server.stats.accepted == 3)
            report = await server.shutdown(grace=5.0)
            print(
                f"drain: finished={report.finished} cancelled={report.cancelled}"
                f" in_stages={report.in_stages} fast={report.elapsed < 0.9}"
            )
    print("ok")


if __name__ == "__main__":
    trio.run(main)
