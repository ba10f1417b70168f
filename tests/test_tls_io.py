"""Tests for trionet._stream._tls_io: the TLS record I/O on both socket paths.

``tests/test_tls.py`` runs Trio's ``check_two_way_stream`` on TLS
connections over kernel sockets (the fast path, server and client side);
here the same check runs where every socket comes from a custom Trio socket
factory (conftest's ``ProxySocket``): no descriptor, so the ciphertext moves
through the ``trio.socket`` methods and a drain would interrupt through a
cancel scope (``_raw_recv_generic``).
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from conftest import proxy_sockets

import trionet
from trionet._stream._tls import TLSConnection
from trionet.testing import fill_stream

ServerFactory = Callable[..., Awaitable[trionet.Server]]
Pair = tuple[trionet.Connection, trionet.Connection]


@pytest.mark.parametrize("side", ["server-first", "client-first"])
async def test_tls_connections_on_the_descriptor_less_path_pass_check_two_way_stream(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    unused_unix_path: str,
    side: str,
) -> None:
    made: list[trionet.Connection] = []
    send, receive = trio.open_memory_channel[trionet.Connection](math.inf)

    async def hand_out(conn: trionet.Connection) -> None:
        await send.send(conn)
        await conn.draining.wait()

    async def pair(server: trionet.Server) -> Pair:
        with trio.fail_after(10):
            client = await trionet.connect(
                server.addresses[0], tls=client_tls, server_hostname="localhost"
            )
            server_side = await receive.receive()
        made.extend((server_side, client))
        return (server_side, client) if side == "server-first" else (client, server_side)

    with proxy_sockets() as factory:
        tcp = await trionet_server(hand_out, tls=server_tls)
        # A clogged TCP pair is not stable on Linux (see test_client.py): the
        # clogged variant runs over a Unix socket, same code path.
        unix = await trionet_server(hand_out, f"unix:{unused_unix_path}", tls=server_tls)

        async def maker() -> Pair:
            return await pair(tcp)

        async def clogged_maker() -> Pair:
            left, right = await pair(unix)
            await fill_stream(left)
            await fill_stream(right)
            return left, right

        with trio.fail_after(120):
            await trio.testing.check_two_way_stream(maker, clogged_maker)
        assert factory.made
    assert len(made) >= 20 and all(isinstance(conn, TLSConnection) for conn in made)
    assert all(conn._raw is None for conn in made)  # type: ignore[attr-defined]
    assert all(conn.closed for conn in made)
