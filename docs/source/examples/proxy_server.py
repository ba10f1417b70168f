"""Behind a load balancer: a PROXY protocol bind, and clients that play the balancer.

The server reads a PROXY protocol header (v1 or v2) first on one bind, from
trusted sources only; the handler then sees the real client in conn.peer and
the whole header in conn.proxy.  The clients are trionet.connect(...,
proxy_header=...) -- what a proxy built with trionet would send -- plus a
raw socket or two.

Run it: python proxy_server.py
"""

from __future__ import annotations

import trio

import trionet

CLIENT = trionet.TCPAddress("203.0.113.7", 51000)  # who the balancer says is calling
FRONT = trionet.TCPAddress("198.51.100.1", 443)  # the balancer's public address


async def whoami(conn: trionet.Connection) -> None:
    """Say what the server knows about this connection, then echo one line."""
    proxy = conn.proxy
    if proxy is None:  # a bind without PROXY
        await conn.send_all(
            f"no PROXY on this bind: conn.proxy is None, peer {conn.peer}\n".encode()
        )
        return
    if proxy.client is None:
        # A balancer's health check (v2 LOCAL; v1 UNKNOWN from some balancers): no client is
        # named, and conn.peer stays the balancer itself.
        kind = f"v{proxy.version} {proxy.command}"
        is_proxy = conn.peer == proxy.source
        await conn.send_all(f"health check ({kind}), peer is the proxy: {is_proxy}\n".encode())
        return
    await conn.send_all(
        f"v{proxy.version} {proxy.command}: you are {conn.peer} (via {proxy.source}),"
        f" you called {proxy.destination}\n".encode()
    )
    if proxy.ssl is not None:
        tls = proxy.ssl
        await conn.send_all(
            f"  the balancer says: TLS={tls.tls} {tls.version} SNI={proxy.authority}"
            f" client certificate={tls.client_certificate}\n".encode()
        )
    line = await conn.receive_line()  # bytes after the header stayed buffered
    await conn.send_all(b"echo: " + line + b"\n")


async def read_all(stream: trio.abc.Stream) -> str:
    """What the server sent before it ended the connection (by a close or a reset)."""
    data = b""
    try:
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                data += chunk
    except trio.BrokenResourceError:
        pass  # refusals are resets
    return data.decode() if data else "closed, nothing sent"


async def main() -> None:
    balancers = ["127.0.0.0/8"]  # where your load balancers connect from
    async with trionet.open_server(
        whoami,
        # PROXY on this bind only: a header from 127.0.0.0/8, else refused.
        trionet.Bind("tcp://127.0.0.1:0", proxy_protocol="required", trusted_proxies=balancers),
        # This one trusts a network we are not on: every connection is refused.
        trionet.Bind(
            "tcp://127.0.0.1:0", proxy_protocol="required", trusted_proxies=["10.0.0.0/8"]
        ),
        "tcp://127.0.0.1:0",  # no PROXY: clients connect directly
        handshake_timeout=2.0,  # the header must arrive within 2 s (default 10)
        # Admission runs after the header, on the client the header names.
        access=trionet.AccessPolicy(deny=["192.0.2.66/32"]),
    ) as server:
        proxied, untrusting, direct = server.addresses
        assert isinstance(proxied, trionet.TCPAddress)
        for bind in server.binds:
            print(f"{bind.address}: proxy_protocol={bind.proxy_protocol!r}", end="")
            print(f" trusted_proxies={bind.trusted_proxies}")

        # A v2 header with TLVs, as HAProxy sends it after terminating the
        # client's TLS (send-proxy-v2-ssl, proxy-v2-options authority).
        header = trionet.ProxyInfo(
            version=2,
            client=CLIENT,
            destination=FRONT,
            authority="api.example.test",
            ssl=trionet.ProxySSL(flags=0x01, version="TLSv1.3"),
        )
        async with await trionet.connect(proxied, proxy_header=header, timeout=5) as conn:
            print((await conn.receive_line()).decode())
            print((await conn.receive_line()).decode())
            await conn.send_all(b"ping\n")
            print((await conn.receive_line()).decode())
            print("bytes_sent leaves the header out:", conn.bytes_sent)

        # v1, the text header (HAProxy's send-proxy), over IPv6 addresses.
        header = trionet.ProxyInfo(
            version=1,
            client=trionet.TCPAddress("2001:db8::7", 40000),
            destination=trionet.TCPAddress("2001:db8::1", 443),
        )
        print("v1 on the wire:", header.encode())
        async with await trionet.connect(proxied, proxy_header=header, timeout=5) as conn:
            print((await conn.receive_line()).decode())

        # The balancer's own connections -- its health checks: v2 LOCAL (what
        # HAProxy's send-proxy-v2 checks send), and v1 UNKNOWN (no addresses).
        for check in (trionet.ProxyInfo(version=2, command="LOCAL"), b"PROXY UNKNOWN\r\n"):
            async with await trionet.connect(proxied, proxy_header=check, timeout=5) as conn:
                print((await conn.receive_line()).decode())

        # The header and the first request in one segment: the request stays
        # buffered for the handler.
        stream = await trio.open_tcp_stream(proxied.host, proxied.port)
        async with stream:
            await stream.send_all(b"PROXY TCP4 192.0.2.10 192.0.2.1 33000 443\r\nhello\n")
            print("one segment:", " | ".join((await read_all(stream)).splitlines()))

        # A client the access policy denies, named by the header: reset after
        # the header -- counted in rejected_access, not proxy_failures.
        denied = trionet.ProxyInfo(
            version=2, client=trionet.TCPAddress("192.0.2.66", 1234), destination=FRONT
        )
        stream = await trio.open_tcp_stream(proxied.host, proxied.port)
        async with stream:
            await stream.send_all(denied.encode())
            print("192.0.2.66, denied by the access policy:", await read_all(stream))

        # Garbage where the header should be: closed at once, no timeout needed.
        stream = await trio.open_tcp_stream(proxied.host, proxied.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
            print("no header:", await read_all(stream))

        # A source outside trusted_proxies: refused at accept, header or not.
        try:
            async with await trionet.connect(untrusting, proxy_header=header, timeout=5) as conn:
                print("untrusted source:", await read_all(conn))
        except trionet.ConnectError:  # on loopback the reset can beat connect() itself
            print("untrusted source:", "closed, nothing sent")

        # A bind without PROXY: conn.proxy is None, conn.peer the kernel's peer.
        async with await trionet.connect(direct, timeout=5) as conn:
            print((await conn.receive_line()).decode())

        # Every refusal above was counted before the client saw it.
        stats = server.stats
        print(
            f"proxy_failures={stats.proxy_failures} stage_failures={stats.stage_failures}"
            f" rejected_access={stats.rejected_access} handler_errors={stats.handler_errors}"
        )

    # The parser is sans-I/O: bytes in, a header (or "need more") out.
    data = b"PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\nGET / HTTP/1.1\r\n"
    print("partial:", trionet.parse_proxy_header(data[:20]))
    parsed = trionet.parse_proxy_header(data)
    assert parsed is not None
    info, used = parsed
    print(f"parsed: {info.client} -> {info.destination}, then {data[used:]!r}")
    try:
        trionet.parse_proxy_header(b"GET / HTTP/1.1\r\n")
    except trionet.ProxyProtocolError as exc:
        print("ProxyProtocolError:", exc)

    # Trusting every source is refused when the call is made.
    try:
        trionet.Bind("tcp://0.0.0.0:8080", proxy_protocol="required", trusted_proxies=[])
    except ValueError as exc:
        print("ValueError:", exc)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
