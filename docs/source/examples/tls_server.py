"""A TLS server (with a plain bind beside it) and a TLS client.

Test certificates come from trustme: a throwaway certificate authority, and
a certificate it issued for "localhost" and 127.0.0.1.

Run it: python tls_server.py
"""

from __future__ import annotations

import ssl

import trio
import trustme

import trionet


async def echo(conn: trionet.Connection) -> None:
    # The handshake is over before the handler runs.
    if conn.tls is not None:
        tls = conn.tls  # a frozen trionet.TLSInfo
        await conn.send_all(f"hello {tls.server_name} over {tls.version}\n".encode())
    else:
        await conn.send_all(b"hello in plain text\n")
    async for chunk in conn:
        await conn.send_all(chunk)


async def main() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()  # verifies, checks the name
    ca.configure_trust(client_context)  # ... and trusts our test CA

    # tls= and handshake_timeout= apply to every bind that does not set its
    # own; tls=False keeps this one bind plain.
    async with trionet.open_server(
        echo,
        "tcp://127.0.0.1:0",
        trionet.Bind("tcp://127.0.0.1:0", tls=False),
        tls=server_context,
        handshake_timeout=5.0,
    ) as server:
        for bind in server.binds:
            kind = "TLS" if bind.uses_tls else "plain"
            print(f"{kind:5} on {bind.address}, handshake_timeout={bind.handshake_timeout}")
        tls_address, plain_address = server.addresses

        # connect(tls=...) returns once the handshake is done, inside `timeout`.
        async with await trionet.connect(
            tls_address, tls=client_context, server_hostname="localhost", timeout=5.0
        ) as conn:
            print("server says:", (await conn.receive_line()).decode())
            await conn.send_all(b"ping\n")
            print("echo:", (await conn.receive_line()).decode())
            info = conn.tls
            assert info is not None
            print("client sent SNI:", info.server_name, "| ALPN:", info.alpn_protocol)
            print("server certificate:", info.peer_certificate["subjectAltName"])
            print("application bytes sent:", conn.bytes_sent)
            try:
                await conn.send_eof()
            except trionet.LocalProtocolError:
                print("send_eof on TLS: LocalProtocolError")
        # Leaving the block sent close_notify: the server's `async for` ended.

        async with await trionet.connect(plain_address) as conn:
            print("plain bind says:", (await conn.receive_line()).decode())
            print("conn.tls on a plain connection:", conn.tls)

        # A client that speaks plain text to the TLS bind: the handshake fails,
        # that connection is closed, and the handler never runs.
        stream = await trio.open_tcp_stream(tls_address.host, tls_address.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
            try:
                while await stream.receive_some():  # a TLS alert, then EOF
                    pass
            except trio.BrokenResourceError:
                pass

        # A client that does not trust the server's certificate.
        try:
            await trionet.connect(tls_address, tls=True, server_hostname="localhost", retries=3)
        except trionet.ConnectError as exc:
            cause = type(exc.__cause__).__name__
            print(f"untrusted: {type(exc).__name__} from {cause}")
            print("attempts:", [attempt.outcome for attempt in exc.attempts])  # not retried

        with trio.fail_after(5):
            while server.stats.tls_failures < 2:
                await trio.sleep(0.01)
        stats = server.stats
        print(
            f"tls_failures={stats.tls_failures} stage_failures={stats.stage_failures}"
            f" handler_errors={stats.handler_errors}"
        )
    print("ok")


if __name__ == "__main__":
    trio.run(main)
