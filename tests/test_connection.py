"""Tests for trionet._connection: the Connection stream, both I/O paths, buffered reads.

Two I/O paths are exercised everywhere it matters:

* the *fast path* -- a real Trio socket, whose descriptor Connection drives
  itself with ``wait_readable``/``wait_writable``;
* the *generic path* -- a socket made by a custom Trio socket factory (here
  :class:`ProxySocket`, which only delegates), on which Connection falls back
  to the plain ``trio.socket.SocketType`` methods.
"""

from __future__ import annotations

import itertools
import math
import os
import socket as stdlib_socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from conftest import ProxyFactory, ProxySocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trionet
from trionet import Connection, IncompleteRead, MessageTooLong, TCPAddress, UnixAddress
from trionet._address import address_from_sockaddr
from trionet.testing import fill_stream

LONG = os.environ.get("TRIONET_LONG") == "1"

ServerFactory = Callable[..., Awaitable[trionet.Server]]


# ----------------------------------------------------------------------
# Server-side Connections on demand


def sockaddr_of(addr: trionet.Address) -> Any:
    if isinstance(addr, UnixAddress):
        return addr.sockaddr
    return (addr.host, addr.port)


def family_of(addr: trionet.Address) -> int:
    if isinstance(addr, UnixAddress):
        return stdlib_socket.AF_UNIX
    return stdlib_socket.AF_INET6 if ":" in addr.host else stdlib_socket.AF_INET


class ConnSource:
    """A running trionet server whose handler hands its Connection out.

    The handler keeps its connection open until the server drains, so the
    test owns the server-side Connection completely.
    """

    def __init__(self, server: trionet.Server, receive: trio.MemoryReceiveChannel[Connection]):
        self.server = server
        self._receive = receive

    async def connect_raw(self) -> tuple[Connection, trio.socket.SocketType]:
        addr = self.server.addresses[0]
        sock = trio.socket.socket(family_of(addr))
        await sock.connect(sockaddr_of(addr))
        with trio.fail_after(5):
            conn = await self._receive.receive()
        return conn, sock

    async def pair(
        self, client: str = "connection"
    ) -> tuple[Connection, trio.abc.HalfCloseableStream]:
        conn, sock = await self.connect_raw()
        stream: trio.abc.HalfCloseableStream
        if client == "socketstream":
            if isinstance(sock, ProxySocket):
                # trio.SocketStream insists on a descriptor; give it the real
                # socket (the server side stays on the generic path).
                sock = sock._inner
            stream = trio.SocketStream(sock)
        else:
            stream = Connection(sock)
        return conn, stream


async def start_source(factory: ServerFactory, *binds: Any, **options: Any) -> ConnSource:
    send, receive = trio.open_memory_channel[Connection](math.inf)

    async def hand_out(conn: Connection) -> None:
        await send.send(conn)
        await conn.draining.wait()

    server = await factory(hand_out, *binds, **options)
    return ConnSource(server, receive)


def _stdlib_socket_of(stream: trio.abc.Stream) -> stdlib_socket.socket:
    if isinstance(stream, Connection) and stream._raw is not None:
        return stream._raw  # (asking for .socket would move it off the poller)
    sock = stream.socket  # type: ignore[attr-defined]
    if isinstance(sock, ProxySocket):
        sock = sock._inner
    raw = sock._sock
    assert isinstance(raw, stdlib_socket.socket)
    return raw


def _is_clogged(stream: trio.abc.Stream) -> bool:
    try:
        _stdlib_socket_of(stream).send(b"x")
    except BlockingIOError:
        return True
    return False


async def clog(left: trio.abc.Stream, right: trio.abc.Stream) -> None:
    """Fill both directions until a send on either side would block.

    Over TCP one fill is not always enough: while the second side fills, the
    ACKs it carries free send-buffer memory on the first (trio's own test
    uses AF_UNIX socketpairs, which have no such effect).  So fill again
    until a non-blocking probe send fails on both sides.
    """
    for _ in range(20):
        await fill_stream(left)
        await fill_stream(right)
        if _is_clogged(left) and _is_clogged(right):
            return
    raise AssertionError("could not clog the streams")


# ----------------------------------------------------------------------
# Conformance: trio.testing.check_half_closeable_stream


async def _check_conformance(source: ConnSource, client: str, generic: bool) -> None:
    made: list[Connection] = []

    async def maker() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        conn, other = await source.pair(client)
        made.append(conn)
        if isinstance(other, Connection):
            made.append(other)
        return conn, other

    async def clogged_maker() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
        left, right = await maker()
        await clog(left, right)
        return left, right

    await trio.testing.check_half_closeable_stream(maker, clogged_maker)
    assert made
    for conn in made:
        if generic:
            assert conn._raw is None
            assert isinstance(conn._tsock, ProxySocket)
        else:
            assert conn._raw is not None


@pytest.mark.parametrize("client", ["connection", "socketstream"])
@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_half_closeable_stream_conformance_fast_path(
    trionet_server: ServerFactory, unused_unix_path: str, client: str, kind: str
) -> None:
    bind = "tcp://127.0.0.1:0" if kind == "tcp" else f"unix:{unused_unix_path}"
    source = await start_source(trionet_server, bind)
    await _check_conformance(source, client, generic=False)


@pytest.mark.parametrize("client", ["connection", "socketstream"])
async def test_half_closeable_stream_conformance_generic_path(
    trionet_server: ServerFactory, client: str
) -> None:
    factory = ProxyFactory()
    old = trio.socket.set_custom_socket_factory(factory)
    try:
        source = await start_source(trionet_server, "tcp://127.0.0.1:0")
        # The listener itself came from the factory (generic accept path too).
        assert factory.made
        await _check_conformance(source, client, generic=True)
    finally:
        trio.socket.set_custom_socket_factory(old)


# ----------------------------------------------------------------------
# Attributes, socket options, abort


async def test_server_side_attributes(trionet_server: ServerFactory) -> None:
    before = time.time()
    source = await start_source(trionet_server, "tcp://127.0.0.1:0")
    conn, sock = await source.connect_raw()
    after = time.time()
    client_addr = TCPAddress(*sock.getsockname()[:2])
    assert conn.peer == client_addr
    assert conn.local == source.server.addresses[0]
    assert isinstance(conn.socket, trio.socket.SocketType)
    assert before <= conn.opened_at <= after
    assert (conn.bytes_received, conn.bytes_sent) == (0, 0)
    assert not conn.closed
    assert f"#{conn.id}" in repr(conn)

    await sock.send(b"hello")
    assert await conn.receive_exactly(5) == b"hello"
    await conn.send_all(b"1234567")
    got = b""
    while len(got) < 7:
        got += await sock.recv(100)
    assert (conn.bytes_received, conn.bytes_sent) == (5, 7)

    info = conn.info()
    assert isinstance(info, trionet.ConnectionInfo)
    assert (info.id, info.peer, info.local) == (conn.id, client_addr, conn.local)
    assert (info.opened_at, info.bytes_received, info.bytes_sent) == (conn.opened_at, 5, 7)
    assert info.peer_credentials is None

    conn2, sock2 = await source.connect_raw()
    assert conn2.id > conn.id
    assert conn2.peer != conn.peer
    sock.close()
    sock2.close()


async def test_client_side_attributes(trionet_server: ServerFactory) -> None:
    source = await start_source(trionet_server, "tcp://[::1]:0")
    server_conn, sock = await source.connect_raw()
    client = Connection(sock)
    assert client.peer == source.server.addresses[0]
    assert client.local == address_from_sockaddr(sock.family, sock.getsockname())
    assert client.local == server_conn.peer
    assert client.id != server_conn.id
    # A client connection never drains.
    assert not client.draining.is_set()
    await client.aclose()
    assert client.closed


async def test_unix_attributes_and_peer_credentials(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    source = await start_source(trionet_server, f"unix:{unused_unix_path}")
    conn, sock = await source.connect_raw()
    assert conn.local == UnixAddress(unused_unix_path)
    assert conn.peer == UnixAddress("")  # an unbound client has no name
    creds = (os.getpid(), os.getuid(), os.getgid())
    assert conn.peer_credentials == creds
    assert conn.info().peer_credentials == creds
    sock.close()


async def test_tcp_nodelay_is_on_by_default(trionet_server: ServerFactory) -> None:
    source = await start_source(trionet_server, "tcp://127.0.0.1:0")
    conn, sock = await source.connect_raw()
    assert conn.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY) != 0
    assert conn.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_KEEPALIVE) == 0
    sock.close()


async def test_tcp_nodelay_can_be_turned_off(trionet_server: ServerFactory) -> None:
    source = await start_source(trionet_server, "tcp://127.0.0.1:0", tcp_nodelay=False)
    conn, sock = await source.connect_raw()
    assert conn.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY) == 0
    sock.close()


async def test_keepalive_true(trionet_server: ServerFactory) -> None:
    source = await start_source(trionet_server, "tcp://127.0.0.1:0", keepalive=True)
    conn, sock = await source.connect_raw()
    assert conn.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_KEEPALIVE) != 0
    assert conn.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY) != 0
    sock.close()


@pytest.mark.skipif(not hasattr(stdlib_socket, "TCP_KEEPIDLE"), reason="no TCP_KEEPIDLE here")
async def test_keepalive_seconds_sets_the_idle_time(trionet_server: ServerFactory) -> None:
    source = await start_source(trionet_server, "tcp://127.0.0.1:0", keepalive=30)
    conn, sock = await source.connect_raw()
    assert conn.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_KEEPALIVE) != 0
    assert conn.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_KEEPIDLE) == 30
    assert conn.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_KEEPINTVL) == 10
    sock.close()


async def test_abort_resets_the_connection(trionet_server: ServerFactory) -> None:
    source = await start_source(trionet_server, "tcp://127.0.0.1:0")
    conn, sock = await source.connect_raw()
    conn.abort()
    assert conn.closed
    with trio.fail_after(5), pytest.raises(ConnectionResetError):
        await sock.recv(10)
    conn.abort()  # idempotent
    sock.close()


async def test_peer_reset_is_broken_resource(trionet_server: ServerFactory) -> None:
    source = await start_source(trionet_server, "tcp://127.0.0.1:0")
    conn, sock = await source.connect_raw()
    assert not conn.peer_reset
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as excinfo:
        await conn.receive_some()
    assert isinstance(excinfo.value.__cause__, ConnectionResetError)
    assert conn.peer_reset


async def test_send_to_reset_peer_is_broken_resource(trionet_server: ServerFactory) -> None:
    source = await start_source(trionet_server, "tcp://127.0.0.1:0")
    conn, sock = await source.connect_raw()
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        for _ in range(1000):  # the first send may land before the RST is seen
            await conn.send_all(b"x" * 65536)
    assert conn.peer_reset


async def test_constructor_validation() -> None:
    a, b = stdlib_socket.socketpair()
    with a, b, pytest.raises(TypeError):
        Connection(a)  # type: ignore[arg-type]
    with trio.socket.socket(type=stdlib_socket.SOCK_DGRAM) as dgram, pytest.raises(ValueError):
        Connection(dgram)
    ta, tb = trio.socket.socketpair()
    with ta, tb:
        for bad in (0, -1):
            with pytest.raises(ValueError, match=r"^Connection\(\): schedule_budget"):
                Connection(ta, schedule_budget=bad)
        for wrong in (1.5, True, None):
            with pytest.raises(TypeError, match=r"^Connection\(\): schedule_budget"):
                Connection(ta, schedule_budget=wrong)  # type: ignore[arg-type]


# ----------------------------------------------------------------------
# Buffered reads on a socketpair


def socketpair_conn(generic: bool = False) -> tuple[Connection, trio.socket.SocketType]:
    a, b = trio.socket.socketpair()
    return Connection(ProxySocket(a) if generic else a), b


async def send_chunks(sock: trio.socket.SocketType, *chunks: bytes) -> None:
    """Send each chunk and let the reader consume it before the next one.

    Waiting for every task to block between chunks makes the reader see
    exactly these chunk boundaries.
    """
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[await sock.send(view) :]
        await trio.testing.wait_all_tasks_blocked()


@pytest.fixture(params=["fast", "generic"])
def generic(request: pytest.FixtureRequest) -> bool:
    return request.param == "generic"


async def test_receive_exactly(generic: bool) -> None:
    conn, peer = socketpair_conn(generic)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_chunks, peer, b"ab", b"cdef", b"g")
        assert await conn.receive_exactly(3) == b"abc"
        assert await conn.receive_exactly(0) == b""
        assert await conn.receive_exactly(4) == b"defg"
    await peer.send(b"xy")
    peer.shutdown(stdlib_socket.SHUT_WR)
    with pytest.raises(IncompleteRead) as excinfo:
        await conn.receive_exactly(5)
    assert excinfo.value.partial == b"xy"
    assert excinfo.value.expected == 5
    assert await conn.receive_exactly(0) == b""  # no wait at EOF either
    with pytest.raises(IncompleteRead) as excinfo:
        await conn.receive_exactly(1)
    assert excinfo.value.partial == b""
    with pytest.raises(ValueError):
        await conn.receive_exactly(-1)
    assert conn.bytes_received == 9


async def test_receive_exactly_zero_does_not_wait() -> None:
    conn, _peer = socketpair_conn()
    with trio.fail_after(1):
        assert await conn.receive_exactly(0) == b""


async def test_receive_until_delimiter_split_across_chunks(generic: bool) -> None:
    conn, peer = socketpair_conn(generic)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_chunks, peer, b"ab\r", b"\ncd\r\n", b"\r", b"\n")
        assert await conn.receive_until(b"\r\n", max_size=100) == b"ab"
        assert await conn.receive_until(b"\r\n", max_size=100) == b"cd"
        assert await conn.receive_until(b"\r\n", max_size=100) == b""


async def test_receive_until_multibyte_delimiter_split_three_ways() -> None:
    conn, peer = socketpair_conn()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_chunks, peer, b"x--", b"-", b"=", b"=>y-==>")
        assert await conn.receive_until(b"-==>", max_size=10) == b"x--"
        assert await conn.receive_until(b"-==>", max_size=10) == b"y"


async def test_receive_until_finds_the_leftmost_delimiter() -> None:
    conn, peer = socketpair_conn()
    await peer.send(b"aaab")
    peer.shutdown(stdlib_socket.SHUT_WR)
    assert await conn.receive_until(b"aa", max_size=10) == b""
    assert await conn.receive_until(b"ab", max_size=10) == b""
    with pytest.raises(IncompleteRead) as excinfo:
        await conn.receive_until(b"ab", max_size=10)
    assert excinfo.value.partial == b""


async def test_receive_until_max_size_boundaries() -> None:
    conn, peer = socketpair_conn()
    await peer.send(b"12345\n123456\n")
    # Exactly max_size bytes before the delimiter: fine.
    assert await conn.receive_until(b"\n", max_size=5) == b"12345"
    # max_size + 1: too long, and the bytes stay buffered.
    with pytest.raises(MessageTooLong) as excinfo:
        await conn.receive_until(b"\n", max_size=5)
    assert excinfo.value.max_size == 5
    assert await conn.receive_until(b"\n", max_size=6) == b"123456"


async def test_receive_until_gives_up_without_the_delimiter() -> None:
    # max_size + len(delimiter) bytes and no delimiter: no message can fit,
    # so MessageTooLong comes at once, without waiting for more data.
    conn, peer = socketpair_conn()
    await peer.send(b"1234567")
    with trio.fail_after(1), pytest.raises(MessageTooLong):
        await conn.receive_until(b"\r\n", max_size=5)
    # One byte fewer could still be "12345" + "\r\n": it waits.
    conn2, peer2 = socketpair_conn()
    await peer2.send(b"123456")
    with trio.move_on_after(0.05) as scope:
        await conn2.receive_until(b"\r\n", max_size=5)
    assert scope.cancelled_caught
    await peer2.send(b"\r\n")
    with pytest.raises(MessageTooLong):  # it was "123456\r\n" after all
        await conn2.receive_until(b"\r\n", max_size=5)
    assert await conn2.receive_some() == b"123456\r\n"


async def test_receive_until_at_eof() -> None:
    conn, peer = socketpair_conn()
    await peer.send(b"done\npart")
    peer.shutdown(stdlib_socket.SHUT_WR)
    assert await conn.receive_until(b"\n", max_size=10) == b"done"
    with pytest.raises(IncompleteRead) as excinfo:
        await conn.receive_until(b"\n", max_size=10)
    assert excinfo.value.partial == b"part"
    assert excinfo.value.expected is None
    with pytest.raises(IncompleteRead) as excinfo:  # a clean EOF between messages
        await conn.receive_until(b"\n", max_size=10)
    assert excinfo.value.partial == b""


async def test_receive_until_argument_checks() -> None:
    # The shared rule: TypeError for the wrong type, ValueError for a bad value.
    conn, _peer = socketpair_conn()
    with pytest.raises(ValueError, match=r"^receive_until\(\): delimiter must be non-empty"):
        await conn.receive_until(b"", max_size=1)
    with pytest.raises(TypeError, match=r"^receive_until\(\): delimiter must be bytes"):
        await conn.receive_until("\n", max_size=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^receive_until\(\): max_size must be >= 0"):
        await conn.receive_until(b"\n", max_size=-1)
    for bad in (True, "10", 1.5, None):
        with pytest.raises(TypeError, match=r"^receive_line\(\): max_size must be an int"):
            await conn.receive_line(max_size=bad)  # type: ignore[arg-type]
    for bad in (-1, math.nan, math.inf):
        with pytest.raises(ValueError, match=r"^receive_line\(\): max_size"):
            await conn.receive_line(max_size=bad)  # type: ignore[arg-type]


async def test_receive_line(generic: bool) -> None:
    conn, peer = socketpair_conn(generic)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_chunks, peer, b"one\r\ntw", b"o\n\n\r\n", b"a\rb\n", b"\r\r\n")
        assert await conn.receive_line() == b"one"
        assert await conn.receive_line() == b"two"
        assert await conn.receive_line() == b""
        assert await conn.receive_line() == b""
        assert await conn.receive_line() == b"a\rb"  # only a trailing \r is dropped
        assert await conn.receive_line() == b"\r"  # and only one of them


async def test_receive_line_max_size_boundaries() -> None:
    conn, peer = socketpair_conn()
    await peer.send(b"12345\n12345\r\n123456\n")
    assert await conn.receive_line(max_size=5) == b"12345"
    # \r\n does not count towards the limit.
    assert await conn.receive_line(max_size=5) == b"12345"
    with pytest.raises(MessageTooLong) as excinfo:
        await conn.receive_line(max_size=5)
    assert excinfo.value.max_size == 5
    # The too-long line was not consumed.
    assert await conn.receive_line(max_size=6) == b"123456"


async def test_receive_line_too_long_without_newline() -> None:
    conn, peer = socketpair_conn()
    await peer.send(b"x" * 7)  # max_size + "\r" + one more: hopeless
    with trio.fail_after(1), pytest.raises(MessageTooLong):
        await conn.receive_line(max_size=5)
    assert await conn.receive_some() == b"x" * 7


async def test_receive_line_default_max_size() -> None:
    conn, peer = socketpair_conn()
    line = b"y" * 65536

    async def send_all() -> None:
        await send_chunks(peer, line + b"\n" + line + b"y\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_all)
        assert await conn.receive_line() == line
        with pytest.raises(MessageTooLong):
            await conn.receive_line()
        assert await conn.receive_exactly(65538) == line + b"y\n"


async def test_buffered_helpers_interleave_with_receive_some() -> None:
    conn, peer = socketpair_conn()
    await peer.send(b"HEAD\r\nbody-bytes|tail")
    peer.shutdown(stdlib_socket.SHUT_WR)
    assert await conn.receive_line() == b"HEAD"
    assert await conn.receive_some(4) == b"body"
    assert await conn.receive_exactly(1) == b"-"
    assert await conn.receive_until(b"|", max_size=10) == b"bytes"
    assert await conn.receive_some() == b"tail"
    assert await conn.receive_some() == b""
    assert conn.bytes_received == len(b"HEAD\r\nbody-bytes|tail")


async def test_async_iteration_yields_chunks_until_eof(generic: bool) -> None:
    conn, peer = socketpair_conn(generic)
    await peer.send(b"first line\nrest")
    assert await conn.receive_line() == b"first line"

    async def writer() -> None:
        await trio.testing.wait_all_tasks_blocked()
        await send_chunks(peer, b"more", b"data")
        peer.shutdown(stdlib_socket.SHUT_WR)

    chunks = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async for chunk in conn:
            chunks.append(chunk)
    # The buffered remainder comes first, then the socket's chunks.
    assert chunks == [b"rest", b"more", b"data"]


async def test_cancelled_receive_keeps_partial_data() -> None:
    conn, peer = socketpair_conn()
    await peer.send(b"half a li")
    with trio.move_on_after(0.05) as scope:
        await conn.receive_line()
    assert scope.cancelled_caught
    await peer.send(b"ne\n")
    assert await conn.receive_line() == b"half a line"


async def test_concurrent_receives_are_busy(generic: bool) -> None:
    conn, peer = socketpair_conn(generic)
    receivers: list[Callable[[], Awaitable[object]]] = [
        conn.receive_some,
        lambda: conn.receive_exactly(3),
        lambda: conn.receive_until(b"\n", max_size=10),
        conn.receive_line,
        conn.__anext__,
    ]
    for blocked in receivers:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked)
            await trio.testing.wait_all_tasks_blocked()
            for other in receivers:
                with pytest.raises(trio.BusyResourceError):
                    await other()
            nursery.cancel_scope.cancel()
    await peer.send(b"ok\n")
    assert await conn.receive_line() == b"ok"


async def test_concurrent_sends_are_busy() -> None:
    conn, peer = socketpair_conn()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fill_stream, conn)
        await trio.testing.wait_all_tasks_blocked()
    # The buffers are full; a send blocks and a second one is busy.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn.send_all, b"more")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await conn.send_all(b"x")
        with pytest.raises(trio.BusyResourceError):
            await conn.wait_send_all_might_not_block()
        with pytest.raises(trio.BusyResourceError):
            await conn.send_eof()
        nursery.cancel_scope.cancel()
    peer.close()


async def test_closed_connection_operations() -> None:
    conn, peer = socketpair_conn()
    await peer.send(b"buffered\nx")
    assert await conn.receive_line() == b"buffered"
    conn.close()
    conn.close()  # idempotent
    for op in (
        conn.receive_some,
        conn.receive_line,
        lambda: conn.receive_exactly(1),
        lambda: conn.send_all(b"x"),
        conn.send_eof,
        conn.wait_send_all_might_not_block,
    ):
        with pytest.raises(trio.ClosedResourceError):
            await op()
    await conn.aclose()


async def test_receive_some_argument_checks() -> None:
    conn, peer = socketpair_conn()
    with pytest.raises(ValueError):
        await conn.receive_some(0)
    with pytest.raises(TypeError):
        await conn.receive_some(1.5)  # type: ignore[arg-type]
    await peer.send(b"abcdef")
    assert await conn.receive_exactly(1) == b"a"
    assert await conn.receive_some(2) == b"bc"  # buffered data honours max_bytes
    assert await conn.receive_some(100) == b"def"


async def test_send_eof_is_idempotent_and_blocks_sending() -> None:
    conn, peer = socketpair_conn()
    await conn.send_all(b"bye")
    await conn.send_eof()
    await conn.send_eof()
    with pytest.raises(trio.ClosedResourceError):
        await conn.send_all(b"more")
    assert await peer.recv(10) == b"bye"
    assert await peer.recv(10) == b""
    await peer.send(b"still open")
    assert await conn.receive_some() == b"still open"


# ----------------------------------------------------------------------
# Property: any chunking of any stream gives the reference results


_small_bytes = st.binary(max_size=12).map(lambda b: bytes(c % 4 + 97 for c in b))  # abcd
_stream = st.lists(
    st.one_of(_small_bytes, st.sampled_from([b"\n", b"\r\n", b"\r", b"ab", b"cd"])), max_size=30
).map(b"".join)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("line"), st.integers(0, 12)),
        st.tuples(
            st.just("until"),
            st.sampled_from([b"\n", b"a", b"ab", b"aab", b"\r\n", b"dcd"]),
            st.integers(0, 12),
        ),
        st.tuples(st.just("exactly"), st.integers(0, 8)),
        st.tuples(st.just("some"), st.integers(1, 8)),
    ),
    min_size=1,
    max_size=25,
)


def _split_points(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Any chunking of ``data``: cut it at up to 12 arbitrary points."""

    def cut(points: list[int]) -> list[bytes]:
        bounds = [0, *sorted(points), len(data)]
        return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    return st.lists(st.integers(0, len(data)), max_size=12).map(cut)


@settings(
    max_examples=3000 if LONG else 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(data=st.data(), stream=_stream, ops=_ops, generic=st.booleans())
def test_buffered_reads_match_a_reference_model(
    data: st.DataObject, stream: bytes, ops: list[tuple[Any, ...]], generic: bool
) -> None:
    chunks = data.draw(_split_points(stream), label="chunks")

    async def main() -> None:
        conn, peer = socketpair_conn(generic)

        async def writer() -> None:
            await send_chunks(peer, *chunks)
            peer.shutdown(stdlib_socket.SHUT_WR)

        rest = stream  # what the model says has not been consumed yet
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                for op in ops:
                    rest = await _check_op(conn, op, rest)
                # Whatever is left comes out of receive_some, then EOF.
                tail = b""
                while chunk := await conn.receive_some():
                    tail += chunk
                assert tail == rest
        peer.close()
        conn.close()

    trio.run(main)


async def _check_op(conn: Connection, op: tuple[Any, ...], rest: bytes) -> bytes:
    kind = op[0]
    if kind == "some":
        got = await conn.receive_some(op[1])
        assert 1 <= len(got) <= op[1] or (got == b"" and rest == b"")
        assert rest.startswith(got)
        return rest[len(got) :]
    if kind == "exactly":
        n = op[1]
        if len(rest) >= n:
            assert await conn.receive_exactly(n) == rest[:n]
            return rest[n:]
        with pytest.raises(IncompleteRead) as excinfo:
            await conn.receive_exactly(n)
        assert excinfo.value.partial == rest
        return b""
    if kind == "line":
        delimiter, max_size, strip_cr = b"\n", op[1], True
    else:
        delimiter, max_size, strip_cr = op[1], op[2], False
    idx = rest.find(delimiter)
    if idx >= 0:
        message = rest[:idx]
        if strip_cr and message.endswith(b"\r"):
            message = message[:-1]
        outcome = "too long" if len(message) > max_size else "ok"
    else:
        # No delimiter before EOF: too long if no message could have fit.
        hopeless = len(rest) >= max_size + len(delimiter) + (1 if strip_cr else 0)
        outcome = "too long" if hopeless else "eof"

    async def call() -> bytes:
        if strip_cr:
            return await conn.receive_line(max_size=max_size)
        return await conn.receive_until(delimiter, max_size=max_size)

    if outcome == "ok":
        assert await call() == message
        return rest[idx + len(delimiter) :]
    if outcome == "too long":
        with pytest.raises(MessageTooLong):
            await call()
        return rest  # nothing consumed
    with pytest.raises(IncompleteRead) as excinfo:
        await call()
    assert excinfo.value.partial == rest
    return b""
