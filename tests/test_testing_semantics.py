"""Socket semantics of trionet.testing.VirtualNetwork; Trio's stream conformance checks on it."""

from __future__ import annotations

import errno
import functools
import socket
import struct

import pytest
import trio
import trio.testing

import trionet
from trionet.testing import VirtualNetwork, fill_stream


async def socket_pair(
    address: str = "127.0.0.1",
) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = trio.socket.socket(family)
    await listener.bind((address, 0))
    listener.listen(1)
    client = trio.socket.socket(family)
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    listener.close()
    return client, server


async def stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    client, server = await socket_pair()
    return trio.SocketStream(client), trio.SocketStream(server)


async def clogged_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    left, right = await stream_pair()
    await fill_stream(left)
    await fill_stream(right)
    return left, right


async def test_check_half_closeable_stream_on_virtual_socket_streams(
    virtual_network: VirtualNetwork,
) -> None:
    await trio.testing.check_half_closeable_stream(stream_pair, clogged_stream_pair)


async def _connection_pair() -> tuple[trionet.Connection, trionet.Connection]:
    client, server = await socket_pair()
    return trionet.Connection(client), trionet.Connection(server)


async def _clogged_connection_pair() -> tuple[trionet.Connection, trionet.Connection]:
    left, right = await _connection_pair()
    await fill_stream(left)
    await fill_stream(right)
    return left, right


async def test_check_half_closeable_stream_on_trionet_connections_over_virtual_sockets(
    virtual_network: VirtualNetwork,
) -> None:
    await trio.testing.check_half_closeable_stream(_connection_pair, _clogged_connection_pair)


async def test_bind_errors_ports_and_names(virtual_network: VirtualNetwork) -> None:
    a = trio.socket.socket()
    await a.bind(("127.0.0.1", 0))
    assert a.getsockname() == ("127.0.0.1", 32768)  # the network's own allocator
    b = trio.socket.socket()
    with pytest.raises(OSError) as taken:
        await b.bind(("127.0.0.1", 32768))
    assert taken.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as nobody:
        await b.bind(("127.0.0.99", 80))
    assert nobody.value.errno == errno.EADDRNOTAVAIL
    assert "add_host" in str(nobody.value)
    wildcard = trio.socket.socket()
    with pytest.raises(OSError) as clash:
        await wildcard.bind(("0.0.0.0", 32768))  # the port is taken on one address
    assert clash.value.errno == errno.EADDRINUSE
    six = trio.socket.socket(socket.AF_INET6)
    await six.bind(("::1", 0))
    assert six.getsockname() == ("::1", 32768, 0, 0)  # per-address allocator
    with pytest.raises(OSError) as unconnected:
        a.getpeername()
    assert unconnected.value.errno == errno.ENOTCONN
    for s in (a, b, wildcard, six):
        s.close()
    with pytest.raises(OSError) as closed:
        a.getsockname()
    assert closed.value.errno == errno.EBADF


async def test_add_host_accepts_loopback_only(virtual_network: VirtualNetwork) -> None:
    with pytest.raises(ValueError, match="loopback"):
        virtual_network.add_host("real.test", "10.0.0.1")
    with pytest.raises(ValueError, match="already belongs"):
        virtual_network.add_host("other.test", "127.0.0.1")
    with pytest.raises(ValueError, match="not an IP address"):
        virtual_network.add_host("bad.test", "example.com")
    virtual_network.add_host("a.test", "127.0.0.5")
    assert virtual_network.addresses("a.test") == ["127.0.0.5"]
    infos = await trio.socket.getaddrinfo("a.test", 80)
    assert [i[4] for i in infos] == [("127.0.0.5", 80)]


async def test_socket_options_are_kept_or_refused_consistently(
    virtual_network: VirtualNetwork,
) -> None:
    s = trio.socket.socket()
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    for action in (
        lambda: s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1),
        lambda: s.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST),
    ):
        with pytest.raises(OSError) as refused:
            action()
        assert refused.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 1)  # needs struct linger
    s.close()


async def test_close_with_unread_data_resets_the_peer(virtual_network: VirtualNetwork) -> None:
    client, server = await socket_pair()
    await server.send(b"reply the client never reads")
    await client.send(b"request")
    await trio.testing.wait_all_tasks_blocked()
    client.close()  # unread input: RST, as on Linux
    with pytest.raises(ConnectionResetError):
        await server.recv(100)  # the unread "request" is discarded too
    server.close()


async def test_so_linger_zero_resets_and_plain_close_sends_eof(
    virtual_network: VirtualNetwork,
) -> None:
    client, server = await socket_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    with pytest.raises(ConnectionResetError):
        await server.recv(1)
    server.close()
    client, server = await socket_pair()
    await client.send(b"bye")
    client.close()
    assert await server.recv(10) == b"bye"
    assert await server.recv(10) == b""
    # Sending to a closed socket is answered with RST.
    await server.send(b"late")
    with pytest.raises(ConnectionResetError):
        await server.recv(10)
    server.close()


async def test_half_close(virtual_network: VirtualNetwork) -> None:
    client, server = await socket_pair()
    client.shutdown(socket.SHUT_WR)
    assert client.did_shutdown_SHUT_WR
    assert await server.recv(10) == b""
    with pytest.raises(BrokenPipeError):
        await client.send(b"x")
    await server.send(b"still open")
    assert await client.recv(100) == b"still open"
    client.close()
    server.close()


async def test_a_direction_buffers_at_most_buffer_size() -> None:
    net = VirtualNetwork(buffer_size=1000)
    with net.install():
        client, server = await socket_pair()
        assert await client.send(b"x" * 1500) == 1000
        with trio.move_on_after(0.5) as blocked:
            await client.send(b"y")
        assert blocked.cancelled_caught
        assert len(await server.recv(400)) == 400
        assert await client.send(b"y" * 1000) == 400
        client.close()
        server.close()


async def test_refused_unreachable_and_closed_listener(virtual_network: VirtualNetwork) -> None:
    s = trio.socket.socket()
    with pytest.raises(ConnectionRefusedError):
        await s.connect(("127.0.0.1", 9))
    s.close()
    s = trio.socket.socket()
    with pytest.raises(OSError) as unreachable:
        await s.connect(("127.0.0.77", 9))
    assert unreachable.value.errno == errno.EHOSTUNREACH
    s.close()
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(5)

    async def close_soon() -> None:
        await trio.testing.wait_all_tasks_blocked()
        listener.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_soon)
        with pytest.raises(trio.ClosedResourceError):
            await listener.accept()


async def test_queued_connection_of_a_closed_listener_is_reset(
    virtual_network: VirtualNetwork,
) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    assert listener.is_readable()
    listener.close()
    with pytest.raises(ConnectionResetError):
        await client.recv(1)
    client.close()


async def echo_then_close(conn: trionet.Connection) -> None:
    await conn.send_all(b"reply:" + await conn.receive_exactly(3))


async def test_a_reply_survives_a_pipelining_client(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    # The handler returns with the client's next request unread: a bare
    # close would reset and discard the reply; trionet's close lingers
    # because the virtual socket answers linger_needed() as the kernel does.
    virtual_network.set_latency("localhost", "localhost", 0.1)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(trionet.serve, echo_then_close, "tcp://127.0.0.1:0")
        )
        conn = await trionet.connect(server.addresses[0])
        await conn.send_all(b"abc" + b"more" * 1000)
        assert await conn.receive_exactly(9) == b"reply:abc"
        assert await conn.receive_some() == b""
        await conn.aclose()
        assert server.stats.lingering == 1  # the close lingered to protect the reply
        nursery.cancel_scope.cancel()


async def test_linger_needed_answers_like_the_kernel(virtual_network: VirtualNetwork) -> None:
    client, server = await socket_pair()
    vclient = client
    assert not vclient.linger_needed()  # type: ignore[attr-defined]
    virtual_network.hold("localhost", "localhost")
    await client.send(b"in flight")
    assert vclient.linger_needed()  # type: ignore[attr-defined]  # our bytes not delivered
    virtual_network.release("localhost", "localhost")
    await trio.testing.wait_all_tasks_blocked()
    assert not vclient.linger_needed()  # type: ignore[attr-defined]
    await server.send(b"unread")
    assert vclient.linger_needed()  # type: ignore[attr-defined]  # a close now would reset
    await client.recv(100)
    server.close()
    assert not vclient.linger_needed()  # type: ignore[attr-defined]  # the peer's EOF
    client.close()


async def test_custom_socket_class_is_refused_inside_a_virtual_network(
    virtual_network: VirtualNetwork,
) -> None:
    from trionet.testing import custom_socket_class

    with pytest.raises(RuntimeError, match="makes real sockets"), custom_socket_class(object):  # type: ignore[arg-type]
        pass  # pragma: no cover
