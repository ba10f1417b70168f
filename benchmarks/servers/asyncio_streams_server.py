"""asyncio streams echo server (``asyncio.start_server``), optionally on uvloop.

With ``--tls-cert``/``--tls-key``: ``asyncio.start_server(..., ssl=ctx)`` (the
loop completes the handshake before the handler runs).
"""

from __future__ import annotations

import asyncio
import ssl

from _common import (
    BACKLOG,
    CHUNK,
    add_tls_args,
    announce,
    raise_nofile_limit,
    server_args,
    tls_context,
)


async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def main(host: str, port: int, ctx: ssl.SSLContext | None) -> None:
    server = await asyncio.start_server(handler, host, port, backlog=BACKLOG, ssl=ctx)
    announce(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = server_args((__doc__ or "").splitlines()[0])
    parser.add_argument("--uvloop", action="store_true")
    add_tls_args(parser)
    args = parser.parse_args()
    raise_nofile_limit()
    ctx = tls_context(args)
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.host, args.port, ctx))
    else:
        asyncio.run(main(args.host, args.port, ctx))
