"""VirtualSocket behaviour that the server and client tests met on both networks.

Each test here pins down a way the virtual network once differed from Linux
TCP on loopback (found by running the same server-core tests on both).
"""

from __future__ import annotations

import errno
import socket

import trio
import trio.testing

import trionet
from trionet.testing import VirtualNetwork


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def test_connect_to_the_wildcard_address_reaches_this_host(
    autojump_clock: trio.testing.MockClock,
    virtual_network: VirtualNetwork,
    nursery: trio.Nursery,
) -> None:
    # Linux: a connect to 0.0.0.0 goes to the client's own address (127.0.0.1
    # when unbound), a connect to :: goes to ::1.
    virtual_network.add_host("localhost", "127.0.0.3")
    for spec, local, expected_peer in [
        ("tcp://0.0.0.0:0", None, "127.0.0.1"),
        ("tcp://0.0.0.0:0", "127.0.0.3", "127.0.0.3"),
        ("tcp://[::]:0", None, "::1"),
    ]:
        server: trionet.Server = await nursery.start(trionet.serve, echo, spec)
        port = server.addresses[0].port  # type: ignore[union-attr]
        host = "[::]" if ":" in expected_peer else "0.0.0.0"
        async with await trionet.connect(f"tcp://{host}:{port}", local_address=local) as conn:
            assert conn.peer == trionet.TCPAddress(expected_peer, port)
            await conn.send_all(b"x")
            assert await conn.receive_some() == b"x"
        await server.shutdown(1)


async def _connected_pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    listener = trio.socket.socket()
    with listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return client, server


async def test_closed_while_blocked_is_closed_resource_error_woken_first_is_ebadf(
    virtual_network: VirtualNetwork,
) -> None:
    # Trio: a task blocked in a socket call when another task closes the
    # socket gets ClosedResourceError; a task already woken (its socket
    # became readable) that finds the socket closed when it runs retries its
    # system call and gets EBADF.  trionet's accept loop counts on the
    # difference (it returns quietly on an OSError once a drain has closed
    # the listener).
    client, server = await _connected_pair()
    outcomes: list[BaseException] = []

    async def receive() -> None:
        try:
            await server.recv(10)
        except (OSError, trio.ClosedResourceError) as exc:
            outcomes.append(exc)

    with client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            client.shutdown(socket.SHUT_WR)  # the FIN wakes the receiver...
            server.close()  # ...which finds its socket closed when it runs
        (woken,) = outcomes
        assert type(woken) is OSError and woken.errno == errno.EBADF

    client, server = await _connected_pair()
    outcomes.clear()
    with client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            server.close()  # the receiver is still blocked
        (blocked,) = outcomes
        assert isinstance(blocked, trio.ClosedResourceError)
