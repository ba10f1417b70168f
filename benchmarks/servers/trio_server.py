"""``trio.serve_tcp`` echo server: the baseline every ratio is relative to."""

from __future__ import annotations

import functools

import trio
from _common import BACKLOG, CHUNK, announce, raise_nofile_limit, server_args


async def handler(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(CHUNK):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass  # peer reset; serve_tcp would otherwise crash the whole server


async def main(host: str, port: int) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, handler, port, host=host, backlog=BACKLOG)
        )
        announce(listeners[0].socket.getsockname()[1])


if __name__ == "__main__":
    args = server_args(__doc__ or "").parse_args()
    raise_nofile_limit()
    trio.run(main, args.host, args.port)
