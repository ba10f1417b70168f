"""anyio echo server, on the Trio or the asyncio backend.

With ``--tls-cert``/``--tls-key``: the listener is wrapped in anyio's
``TLSListener`` (the handshake completes before the handler runs).
"""

from __future__ import annotations

import ssl

import anyio
from _common import (
    BACKLOG,
    CHUNK,
    add_tls_args,
    announce,
    raise_nofile_limit,
    server_args,
    tls_context,
)
from anyio.abc import ByteStream, Listener, SocketAttribute
from anyio.streams.tls import TLSListener


async def handler(stream: ByteStream) -> None:
    try:
        async with stream:  # TLS: close_notify on the way out, which may fail too
            while True:
                data = await stream.receive(CHUNK)
                await stream.send(data)
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        pass


async def main(host: str, port: int, ctx: ssl.SSLContext | None) -> None:
    tcp = await anyio.create_tcp_listener(local_host=host, local_port=port, backlog=BACKLOG)
    listener: Listener[ByteStream] = tcp if ctx is None else TLSListener(tcp, ctx)
    announce(tcp.extra(SocketAttribute.local_port))
    await listener.serve(handler)


if __name__ == "__main__":
    parser = server_args((__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    add_tls_args(parser)
    args = parser.parse_args()
    raise_nofile_limit()
    anyio.run(main, args.host, args.port, tls_context(args), backend=args.backend)
