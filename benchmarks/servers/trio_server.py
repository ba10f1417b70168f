"""``trio.serve_tcp`` echo server: the baseline every ratio is relative to.

With ``--tls-cert``/``--tls-key``: the same, each connection wrapped in
``trio.SSLStream(stream, ctx, server_side=True)`` with the handshake done
eagerly before the echo loop (as trionet does): the TLS baseline.
"""

from __future__ import annotations

import functools
import ssl

import trio
from _common import (
    BACKLOG,
    CHUNK,
    add_tls_args,
    announce,
    raise_nofile_limit,
    server_args,
    tls_context,
)


async def handler(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(CHUNK):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # peer reset; serve_tcp would otherwise crash the whole server


async def tls_handler(ctx: ssl.SSLContext, stream: trio.SocketStream) -> None:
    tls = trio.SSLStream(stream, ctx, server_side=True)
    try:
        await tls.do_handshake()
        while data := await tls.receive_some(CHUNK):
            await tls.send_all(data)
        await tls.aclose()  # close_notify back (serve_tcp closes the socket)
    except trio.BrokenResourceError:
        pass  # failed handshake, reset, or EOF without close_notify


async def main(host: str, port: int, ctx: ssl.SSLContext | None) -> None:
    serve = handler if ctx is None else functools.partial(tls_handler, ctx)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, serve, port, host=host, backlog=BACKLOG)
        )
        announce(listeners[0].socket.getsockname()[1])


if __name__ == "__main__":
    parser = server_args((__doc__ or "").splitlines()[0])
    add_tls_args(parser)
    args = parser.parse_args()
    raise_nofile_limit()
    trio.run(main, args.host, args.port, tls_context(args))
