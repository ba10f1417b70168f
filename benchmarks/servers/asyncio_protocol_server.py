"""Protocol-level echo server (no streams), on uvloop by default.

Uses :class:`asyncio.BufferedProtocol` with a 64 KiB receive buffer so the
handler shape matches the other peers (read up to 64 KiB, write it back).
The buffer is shared by all connections, like the C server's: the loop
fills it and calls ``buffer_updated`` synchronously, which copies it out.
"""

from __future__ import annotations

import asyncio
from typing import cast

from _common import BACKLOG, CHUNK, announce, raise_nofile_limit, server_args

_BUFFER = memoryview(bytearray(CHUNK))


class EchoProtocol(asyncio.BufferedProtocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def get_buffer(self, sizehint: int) -> memoryview:
        return _BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        assert self._transport is not None
        self._transport.write(bytes(_BUFFER[:nbytes]))

    def pause_writing(self) -> None:  # back-pressure: stop reading while the
        assert self._transport is not None  # write buffer is above its high mark
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        assert self._transport is not None
        self._transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, host, port, backlog=BACKLOG)
    announce(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = server_args(__doc__ or "")
    parser.add_argument("--asyncio", action="store_true", help="use the stock asyncio loop")
    args = parser.parse_args()
    raise_nofile_limit()
    if args.asyncio:
        asyncio.run(main(args.host, args.port))
    else:
        import uvloop

        uvloop.run(main(args.host, args.port))
