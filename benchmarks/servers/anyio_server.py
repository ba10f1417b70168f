"""anyio echo server, on the Trio or the asyncio backend."""

from __future__ import annotations

import anyio
from _common import BACKLOG, CHUNK, announce, raise_nofile_limit, server_args
from anyio.abc import SocketAttribute, SocketStream


async def handler(stream: SocketStream) -> None:
    async with stream:
        try:
            while True:
                data = await stream.receive(CHUNK)
                await stream.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


async def main(host: str, port: int) -> None:
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, backlog=BACKLOG)
    announce(listener.extra(SocketAttribute.local_port))
    await listener.serve(handler)


if __name__ == "__main__":
    parser = server_args(__doc__ or "")
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    args = parser.parse_args()
    raise_nofile_limit()
    anyio.run(main, args.host, args.port, backend=args.backend)
