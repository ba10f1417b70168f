"""STARTTLS: a plain connection upgraded to TLS mid-protocol, with trionet.StreamConnection.

The server listens plain.  A client says STARTTLS; both sides then wrap their
connection in trio.SSLStream, and trionet.StreamConnection around that keeps
the Connection API -- buffered reads, byte counters, conn.tls, and an
``async for`` that a graceful drain ends.

Run it: python starttls.py
"""

from __future__ import annotations

import ssl

import trio
import trustme

import trionet

CA = trustme.CA()
SERVER_CONTEXT = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
CA.issue_cert("localhost").configure_cert(SERVER_CONTEXT)


async def handler(conn: trionet.Connection) -> None:
    if await conn.receive_line() != b"STARTTLS":
        await conn.send_all(b"ERR say STARTTLS first\n")
        return
    await conn.send_all(b"GO\n")
    tls = trio.SSLStream(conn, SERVER_CONTEXT, server_side=True)
    async with trionet.StreamConnection(tls) as secure:
        # The same network connection: the same id, peer and server.
        print(f"server: same id {secure.id == conn.id}, same peer {secure.peer == conn.peer}")
        async for chunk in secure:  # ends at the client's EOF -- or a drain
            await secure.send_all(chunk.upper())
        print(f"server: loop ended, draining={secure.draining.is_set()}")


async def main() -> None:
    client_context = ssl.create_default_context()
    CA.configure_trust(client_context)
    async with trionet.open_server(handler, "tcp://127.0.0.1:0") as server:
        conn = await trionet.connect(server.addresses[0], timeout=5.0)
        await conn.send_all(b"STARTTLS\n")
        print("client got:", (await conn.receive_line()).decode())
        tls = trio.SSLStream(conn, client_context, server_hostname="localhost")
        async with trionet.StreamConnection(tls) as secure:
            await secure.send_all(b"hello\n")
            print("client got:", (await secure.receive_line()).decode())
            assert secure.tls is not None
            print("client tls:", secure.tls.version.startswith("TLSv1"), secure.tls.server_name)
            print("application bytes:", secure.bytes_sent, "| on the wire:", conn.bytes_sent)
            # A drain ends the server's `async for` at once, though it waits
            # inside trio.SSLStream: the drain reaches it through the wrapper.
            report = await server.shutdown(grace=5.0)
            print(f"drain: finished={report.finished} cancelled={report.cancelled}")
            print("quick:", report.elapsed < 1.0)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
