"""asyncio streams echo server (``asyncio.start_server``), optionally on uvloop."""

from __future__ import annotations

import asyncio

from _common import BACKLOG, CHUNK, announce, raise_nofile_limit, server_args


async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(host: str, port: int) -> None:
    server = await asyncio.start_server(handler, host, port, backlog=BACKLOG)
    announce(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = server_args(__doc__ or "")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    raise_nofile_limit()
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.host, args.port))
    else:
        asyncio.run(main(args.host, args.port))
