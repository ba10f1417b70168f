"""SNI, ALPN and client certificates on a trionet TLS bind.

One server context requires client certificates from our test CA, offers
two ALPN protocols, and picks its certificate by the name the client asks
for (SNI).  The handler reads what was negotiated from ``conn.tls``.

Run it: python tls_mutual.py
"""

from __future__ import annotations

import ssl

import trio
import trustme

import trionet


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    www = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("www.example.test").configure_cert(www)
    api = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("api.example.test").configure_cert(api)
    for context in (www, api):
        context.verify_mode = ssl.CERT_REQUIRED  # ask for a client certificate
        ca.configure_trust(context)  # ... signed by our CA
        context.set_alpn_protocols(["h2", "http/1.1"])

    def pick_certificate(ssl_object: ssl.SSLObject, name: str | None, _: object) -> None:
        if name == "api.example.test":
            ssl_object.context = api  # otherwise: www, the context we were given

    www.sni_callback = pick_certificate
    return www


async def whoami(conn: trionet.Connection) -> None:
    tls = conn.tls
    assert tls is not None and tls.peer_certificate is not None
    client = tls.peer_certificate["subjectAltName"][0][1]  # ("email", "alice@...")
    reply = f"{client} asked for {tls.server_name} speaking {tls.alpn_protocol}\n"
    await conn.send_all(reply.encode())


async def main() -> None:
    ca = trustme.CA()
    bind = trionet.Bind("tcp://127.0.0.1:0", tls=server_context(ca))
    async with trionet.open_server(whoami, bind) as server:
        address = server.addresses[0]

        client = ssl.create_default_context()
        ca.configure_trust(client)
        ca.issue_cert("alice@example.test").configure_cert(client)  # our certificate
        client.set_alpn_protocols(["http/1.1"])
        for name in ("api.example.test", "www.example.test"):
            # server_hostname: the name sent as SNI and checked in the
            # server's certificate (default: the target's host, 127.0.0.1).
            async with await trionet.connect(
                address, tls=client, server_hostname=name, timeout=5.0
            ) as conn:
                print((await conn.receive_line()).decode())
                assert conn.tls is not None and conn.tls.peer_certificate is not None
                print("  server certificate:", conn.tls.peer_certificate["subjectAltName"])

        # Without a client certificate the server refuses the handshake.  With
        # TLS 1.3 the client finishes its half first, so connect() succeeds
        # and the refusal arrives as the first read's BrokenResourceError;
        # with TLS 1.2 connect() itself fails.
        anonymous = ssl.create_default_context()
        ca.configure_trust(anonymous)
        try:
            async with await trionet.connect(
                address, tls=anonymous, server_hostname="www.example.test", timeout=5.0
            ) as conn:
                await conn.receive_some()
        except (trionet.ConnectError, trio.BrokenResourceError):
            print("no client certificate: refused")
        with trio.fail_after(5):
            while server.stats.tls_failures < 1:
                await trio.sleep(0.01)
        print("tls_failures:", server.stats.tls_failures)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
