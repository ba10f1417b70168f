"""Socket semantics of trionet.testing.VirtualNetwork; Trio's stream conformance checks on it."""

from __future__ import annotations

import errno
import functools
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

import trionet
from trionet.testing import VirtualNetwork, fill_stream


async def listening(
    address: tuple[str, int] = ("127.0.0.1", 0), backlog: int = 5
) -> trio.socket.SocketType:
    """A virtual socket listening on ``address`` (IPv6 if the address is)."""
    listener = trio.socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
    await listener.bind(address)
    listener.listen(backlog)
    return listener


async def socket_pair(
    address: str = "127.0.0.1",
) -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    listener = await listening((address, 0), backlog=1)
    client = trio.socket.socket(listener.family)
    await client.connect(listener.getsockname())
    server, _ = await listener.accept()
    listener.close()
    return client, server


def pair_makers(
    wrap: Callable[[trio.socket.SocketType], trio.abc.HalfCloseableStream],
) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]]]:
    """A stream maker and a clogged-stream maker for Trio's conformance checks."""

    async def make() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        client, server = await socket_pair()
        return wrap(client), wrap(server)

    async def clogged() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        left, right = await make()
        await fill_stream(left)
        await fill_stream(right)
        return left, right

    return make, clogged


@pytest.mark.parametrize(
    "wrap", [trio.SocketStream, trionet.Connection], ids=["SocketStream", "trionet.Connection"]
)
async def test_check_half_closeable_stream_on_virtual_sockets(
    virtual_network: VirtualNetwork,
    wrap: Callable[[trio.socket.SocketType], trio.abc.HalfCloseableStream],
) -> None:
    await trio.testing.check_half_closeable_stream(*pair_makers(wrap))


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
    # As on Linux: what had arrived before the RST is still read, then the reset.
    assert await server.recv(100) == b"request"
    with pytest.raises(ConnectionResetError):
        await server.recv(100)
    with pytest.raises(ConnectionResetError):
        await server.send(b"more")
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
    # Sending to a closed socket is answered with RST: the next send fails;
    # a receive still reports the FIN that came first, as on Linux.
    await server.send(b"late")
    with pytest.raises(ConnectionResetError):
        await server.send(b"later")
    assert await server.recv(10) == b""
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


async def test_a_direction_buffers_at_most_buffer_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
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
    listener = await listening(backlog=5)

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
    listener = await listening(backlog=5)
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


# ---------------------------------------------------------------------------
# Found by hostile testing (each was a bug)


async def test_bytes_and_fin_of_a_socket_closed_during_a_partition_arrive_after_heal(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    virtual_network.add_host("far.test", "127.0.0.50")
    listener = await listening(("127.0.0.50", 80), 1)
    client = trio.socket.socket()
    await client.connect(("127.0.0.50", 80))
    server, _ = await listener.accept()
    for how in ("partition", "hold"):
        if how == "hold":
            client, server = await socket_pair("127.0.0.50")
        getattr(virtual_network, how)("localhost", "far.test")
        await client.send(b"last words")
        client.close()  # FIN queued behind the bytes, on a cut link
        with trio.move_on_after(30) as stalled:
            await server.recv(100)
        assert stalled.cancelled_caught
        getattr(virtual_network, "heal" if how == "partition" else "release")(
            "localhost", "far.test"
        )
        with trio.fail_after(1):
            assert await server.recv(100) == b"last words"
            assert await server.recv(100) == b""
        server.close()
    listener.close()


async def test_closing_a_socket_ends_its_pending_connect(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    virtual_network.add_host("far.test", "127.0.0.50")
    listener = await listening(("127.0.0.50", 80), 1)
    virtual_network.partition("localhost", "far.test")
    client = trio.socket.socket()

    async def close_later() -> None:
        await trio.sleep(5)
        client.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_later)
        with pytest.raises(trio.ClosedResourceError):
            await client.connect(("127.0.0.50", 80))
    virtual_network.heal("localhost", "far.test")
    await trio.sleep(5)
    assert not listener.is_readable()  # no zombie connection reached the server
    listener.close()


async def test_a_connect_waiting_for_backlog_room_is_refused_when_the_listener_closes(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    listener = await listening(backlog=0)  # room for one
    first = trio.socket.socket()
    await first.connect(listener.getsockname())
    second = trio.socket.socket()
    async with trio.open_nursery() as nursery:

        async def close_later() -> None:
            await trio.sleep(5)
            listener.close()

        nursery.start_soon(close_later)
        with trio.fail_after(10), pytest.raises(ConnectionRefusedError):
            await second.connect(listener.getsockname())
    first.close()
    second.close()


async def test_many_pending_connects_are_served_in_order(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    listener = await listening(backlog=0)
    connected: list[int] = []

    async def client(i: int) -> None:
        s = trio.socket.socket()
        await s.connect(listener.getsockname())
        connected.append(i)
        s.close()

    async with trio.open_nursery() as nursery:
        for i in range(200):
            nursery.start_soon(client, i)
            await trio.sleep(0.001)  # a distinct virtual instant each: a defined order
        for _ in range(200):
            conn, _ = await listener.accept()
            conn.close()
    assert connected == list(range(200))
    listener.close()


async def test_recv_into_misuse_loses_no_bytes(virtual_network: VirtualNetwork) -> None:
    client, server = await socket_pair()
    await client.send(b"12345678")
    with pytest.raises(ValueError, match="too small"):
        await server.recv_into(bytearray(4), 8)
    with pytest.raises(TypeError):
        await server.recv_into(b"read-only buffer")
    buffer = bytearray(8)
    assert await server.recv_into(memoryview(buffer)) == 8
    assert buffer == b"12345678"
    client.close()
    server.close()


async def test_more_of_the_socket_api_as_linux(virtual_network: VirtualNetwork) -> None:
    s = trio.socket.socket()
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN) == socket.AF_INET
    with pytest.raises(OSError) as read_only:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_TYPE, 1)
    assert read_only.value.errno == errno.ENOPROTOOPT
    with pytest.raises(OverflowError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2**40)
    with pytest.raises(TypeError):
        s.listen("3")  # type: ignore[arg-type]
    with pytest.raises(OSError) as unsupported:
        await s.recvfrom(10)
    assert unsupported.value.errno == errno.EOPNOTSUPP
    s.close()
    client, server = await socket_pair()
    with pytest.raises(OSError) as bad_how:
        client.shutdown(7)
    assert bad_how.value.errno == errno.EINVAL
    client.close()
    server.close()


async def test_host_names_and_repeated_faults(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    with pytest.raises(ValueError, match="is an IP address"):
        virtual_network.add_host("127.0.0.99", "127.0.0.98")
    virtual_network.add_host("dotted.test.", "127.0.0.60")
    assert [i[4][0] for i in await trio.socket.getaddrinfo("dotted.test", 1)] == ["127.0.0.60"]
    virtual_network.crash("dotted.test")
    virtual_network.crash("dotted.test")
    virtual_network.restart("dotted.test")
    virtual_network.restart("dotted.test")
    kinds = [e.kind for e in virtual_network.trace if e.key == ""]
    assert kinds == ["crash", "crash", "restart", "restart"]


async def test_no_connection_is_queued_before_the_handshake_completes(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    virtual_network.add_host("far.test", "127.0.0.50")
    listener = await listening(("127.0.0.50", 80), 5)
    virtual_network.partition("far.test", "localhost", direction="a->b")  # SYN-ACKs lost
    client = trio.socket.socket()
    with trio.move_on_after(30):
        await client.connect(("127.0.0.50", 80))
    assert not listener.is_readable()  # the server never saw a finished handshake
    listener.close()


async def test_an_injected_reset_reaches_both_ends_whoever_reads_first(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    client, server = await socket_pair()
    await server.send(b"answer")
    await trio.testing.wait_all_tasks_blocked()
    virtual_network.reset_connections("localhost")
    with pytest.raises(ConnectionResetError):
        await server.recv(10)  # the server reads its RST first ...
    assert await client.recv(10) == b"answer"  # ... the client still has what arrived
    with pytest.raises(ConnectionResetError):
        await client.recv(10)  # and then its own RST
    client.close()
    server.close()


async def test_finished_connections_are_forgotten(virtual_network: VirtualNetwork) -> None:
    for _ in range(50):
        client, server = await socket_pair()
        client.close()
        server.close()
    assert len(virtual_network._links) == 0


async def test_a_woken_connect_that_is_cancelled_passes_its_turn_on(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    virtual_network.set_latency("localhost", "localhost", 1.0)
    listener = await listening(backlog=0)
    first = trio.socket.socket()
    await first.connect(listener.getsockname())
    done: list[str] = []
    third_in = trio.Event()

    async def connect(name: str, scope: trio.CancelScope) -> None:
        with scope:
            s = trio.socket.socket()
            await s.connect(listener.getsockname())
            done.append(name)
            if name == "third":
                third_in.set()

    second_scope, third_scope = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(connect, "second", second_scope)
        await trio.sleep(5)
        nursery.start_soon(connect, "third", third_scope)
        await trio.sleep(5)
        accepted, _ = await listener.accept()  # wakes "second" ...
        await trio.sleep(0.5)
        second_scope.cancel()  # ... which gives up during its SYN's flight
        with trio.fail_after(30):
            await third_in.wait()  # it would wait forever if the turn were lost
    assert done == ["third"]
    accepted.close()
    first.close()
    listener.close()


async def test_a_larger_backlog_lets_waiting_connects_in(
    virtual_network: VirtualNetwork, autojump_clock: trio.testing.MockClock
) -> None:
    listener = await listening(backlog=0)
    first = trio.socket.socket()
    await first.connect(listener.getsockname())
    second = trio.socket.socket()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(second.connect, listener.getsockname())
        await trio.sleep(5)
        listener.listen(10)
    assert second.getpeername() == listener.getsockname()
    for s in (first, second, listener):
        s.close()
