"""Tests for trionet._stream._wrapped: ``StreamConnection``, the Connection API over any stream.

Trio's conformance checks run on it over ``trio.SSLStream`` (both sides),
over a ``trio.SocketStream`` pair and over in-memory streams; then a real
server whose handler wraps its connection in ``trio.SSLStream``: the drain,
the blame for what escapes the handler, the counters and buffered reads.
Certificates come from trustme (conftest: ``server_tls``, ``client_tls``);
everything talks over loopback or socket pairs.
"""

from __future__ import annotations

import logging
import socket as stdlib_socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from conftest import connect_tcp, port_of

import trionet
from trionet import StreamConnection
from trionet._server import _server
from trionet._stream._layers import inner_connection
from trionet._stream._socket import SocketConnection
from trionet.testing import Shutdown, fill_stream, wait_until

ServerFactory = Callable[..., Awaitable[trionet.Server]]
Pair = tuple[StreamConnection, StreamConnection]


def connection_pair(**options: Any) -> tuple[SocketConnection, SocketConnection]:
    """Two trionet connections over a Unix socket pair."""
    a, b = stdlib_socket.socketpair()
    left = SocketConnection(trio.socket.from_stdlib_socket(a), **options)
    right = SocketConnection(trio.socket.from_stdlib_socket(b), **options)
    return left, right


def blamed(server: trionet.Server) -> int:
    """Handlers whose failure the server has classified so far."""
    stats = server.stats
    return stats.handler_errors + stats.resets + stats.protocol_errors


def tls_pair(
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    server_transport: trio.abc.Stream,
    client_transport: trio.abc.Stream,
) -> Pair:
    server = StreamConnection(trio.SSLStream(server_transport, server_tls, server_side=True))
    client = StreamConnection(
        trio.SSLStream(client_transport, client_tls, server_hostname="localhost")
    )
    return server, client


async def echo_line(conn: trionet.Connection, data: bytes) -> bytes:
    await conn.send_all(data + b"\n")
    return await conn.receive_line()


# ----------------------------------------------------------------------
# 1. Conformance


@pytest.mark.parametrize("side", ["server-first", "client-first"])
async def test_over_ssl_streams_it_passes_check_two_way_stream(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext, side: str
) -> None:
    made: list[StreamConnection] = []

    def ordered(server: StreamConnection, client: StreamConnection) -> Pair:
        made.extend((server, client))
        return (server, client) if side == "server-first" else (client, server)

    async def maker() -> Pair:
        # Over trionet connections: the wrappers find them underneath.
        # (close_linger=0: a lingering close would wait out the checks'
        # flooding peers.)
        inner_server, inner_client = connection_pair(close_linger=0)
        server, client = tls_pair(server_tls, client_tls, inner_server, inner_client)
        assert server._inner is inner_server and client._inner is inner_client
        return ordered(server, client)

    async def clogged_maker() -> Pair:
        # A lockstep pair holds no bytes in flight: clogged from the start.
        # Shake hands first (as Trio's own SSLStream tests do), so that a
        # receive meant to unclog the peer does not start the handshake.
        left, right = trio.testing.lockstep_stream_pair()
        server, client = tls_pair(server_tls, client_tls, left, right)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.transport_stream.do_handshake)  # type: ignore[attr-defined]
            nursery.start_soon(client.transport_stream.do_handshake)  # type: ignore[attr-defined]
        return ordered(server, client)

    with trio.fail_after(120):
        await trio.testing.check_two_way_stream(maker, clogged_maker)
    assert made and all(conn.closed for conn in made)
    assert all(conn.tls is not None for conn in made if conn.bytes_received)


async def test_over_socket_streams_it_passes_check_half_closeable_stream() -> None:
    made: list[StreamConnection] = []

    async def maker() -> Pair:
        a, b = trio.socket.socketpair()
        pair = StreamConnection(trio.SocketStream(a)), StreamConnection(trio.SocketStream(b))
        made.extend(pair)
        return pair

    async def clogged_maker() -> Pair:
        left, right = await maker()
        await fill_stream(left)
        await fill_stream(right)
        return left, right

    with trio.fail_after(60):
        await trio.testing.check_half_closeable_stream(maker, clogged_maker)
    assert made and all(conn.closed for conn in made)
    assert all(conn._inner is None and conn.tls is None for conn in made)


async def test_over_memory_streams_it_passes_check_half_closeable_stream() -> None:
    made: list[StreamConnection] = []

    async def pair_of(left: trio.abc.Stream, right: trio.abc.Stream) -> Pair:
        pair = StreamConnection(left), StreamConnection(right)
        made.extend(pair)
        return pair

    async def maker() -> Pair:
        return await pair_of(*trio.testing.memory_stream_pair())

    async def clogged_maker() -> Pair:
        return await pair_of(*trio.testing.lockstep_stream_pair())

    with trio.fail_after(60):
        await trio.testing.check_half_closeable_stream(maker, clogged_maker)
    assert made and all(conn.closed for conn in made)
    # No address to be had: the unnamed one.
    assert made[0].peer == trionet.UnixAddress("") == made[0].local


# ----------------------------------------------------------------------
# 2. Making one: arguments, what it inherits, ids


async def test_arguments_are_checked_when_it_is_made() -> None:
    left, right = trio.testing.memory_stream_pair()
    with pytest.raises(TypeError, match=r"^StreamConnection\(\): stream must be a trio.abc.Stream"):
        StreamConnection(b"not a stream")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^StreamConnection\(\): peer must be a trionet.TCPAddress"
    ):
        StreamConnection(left, peer="tcp://127.0.0.1:80")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^StreamConnection\(\): local must be"):
        StreamConnection(left, local=("127.0.0.1", 80))  # type: ignore[arg-type]
    given = trionet.TCPAddress("192.0.2.7", 4711)
    conn = StreamConnection(left, peer=given, local=trionet.TCPAddress("127.0.0.1", 80))
    assert conn.peer == given and conn.local == trionet.TCPAddress("127.0.0.1", 80)
    other = StreamConnection(right)
    assert other.id != conn.id  # no connection underneath: a fresh id each
    await conn.aclose()
    await other.aclose()


async def test_it_inherits_from_the_connection_underneath(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    inner_server, inner_client = connection_pair(schedule_budget=4, close_linger=0.5)
    server, client = tls_pair(server_tls, client_tls, inner_server, inner_client)
    for wrapper, inner in ((server, inner_server), (client, inner_client)):
        assert inner_connection(wrapper.transport_stream) is inner
        assert wrapper.id == inner.id  # one network connection, one id
        assert (wrapper.peer, wrapper.local) == (inner.peer, inner.local)
        assert wrapper.opened_at == inner.opened_at
        assert wrapper._opts is inner._opts  # schedule_budget and close_linger
        assert wrapper.tls is None  # no handshake yet
        assert "over SSLStream" in repr(wrapper) and f"#{inner.id}" in repr(wrapper)
    # A wrapper of a wrapper finds the same connection.
    outer = StreamConnection(trio.StapledStream(server, server))
    assert inner_connection(trio.SSLStream(outer, server_tls, server_side=True)) is inner_server
    assert outer.id == inner_server.id
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.send_all, b"hello\n")
            assert await client.receive_line() == b"hello"
    assert server.tls is not None and client.tls is not None
    assert server.tls.version.startswith("TLSv1.") and server.tls.cipher
    assert client.tls.server_name == "localhost" and server.tls.server_name is None
    assert client.tls.peer_certificate is not None  # the server's, verified
    await server.aclose()
    await client.aclose()
    assert inner_server.closed and inner_client.closed


async def test_over_a_socket_stream_it_reads_the_socket_addresses() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = trionet.TCPAddress(*listener.getsockname()[:2])
    with listener:
        client_sock = await connect_tcp(address.port)
        server_sock, _ = await listener.accept()
    client = StreamConnection(trio.SocketStream(client_sock))
    server = StreamConnection(trio.SocketStream(server_sock))
    assert client.peer == address == server.local
    assert server.peer == client.local
    await client.aclose()
    await server.aclose()


# ----------------------------------------------------------------------
# 3. Counters, buffered reads, info, half-close


async def test_counters_buffered_reads_and_info_work_over_tls(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    inner_server, inner_client = connection_pair()
    server, client = tls_pair(server_tls, client_tls, inner_server, inner_client)
    message = b"HEAD" + (12).to_bytes(4, "big") + b"twelve bytes" + b"a line\r\nk: v\r\n\r\nrest"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, memoryview(message))
            assert await server.receive_exactly(4) == b"HEAD"
            size = int.from_bytes(await server.receive_exactly(4), "big")
            assert await server.receive_exactly(size) == b"twelve bytes"
            assert await server.receive_line() == b"a line"
            assert await server.receive_until(b"\r\n\r\n", max_size=100) == b"k: v"
            assert await server.receive_some() == b"rest"
        await client.send_all(b"x" * 50)  # (the socket pair's buffer takes it)
        with pytest.raises(trionet.MessageTooLong):
            await server.receive_line(max_size=10)
        assert await server.receive_exactly(50) == b"x" * 50  # still buffered
    assert server.bytes_received == client.bytes_sent == len(message) + 50
    # The inner connections carried the ciphertext: more than that.
    assert inner_server.bytes_received > server.bytes_received
    info = server.info()
    assert (info.id, info.peer, info.local) == (inner_server.id, server.peer, server.local)
    assert (info.bytes_received, info.bytes_sent) == (server.bytes_received, 0)
    assert info.opened_at == inner_server.opened_at
    with pytest.raises(
        trionet.LocalProtocolError, match=r"SSLStream is not a trio\.abc\.HalfCloseableStream"
    ):
        await server.send_eof()
    await server.aclose()
    await client.aclose()


async def test_send_eof_is_delegated_to_a_half_closeable_stream() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = StreamConnection(left), StreamConnection(right)
    with trio.fail_after(5):
        await a.send_all(b"last words")
        await a.send_eof()
        await a.send_eof()  # again: nothing happens
        with pytest.raises(trio.ClosedResourceError, match="after sending EOF"):
            await a.send_all(b"more")
        assert await b.receive_exactly(10) == b"last words"
        assert await b.receive_some() == b""
        with pytest.raises(trionet.IncompleteRead):
            await b.receive_line()
        await b.send_all(b"still open the other way")
        assert await a.receive_some() == b"still open the other way"
    assert a._eof_sent
    await a.aclose()
    await b.aclose()


# ----------------------------------------------------------------------
# 4. Closing


async def test_close_and_abort_close_the_connection_underneath() -> None:
    inner, peer = connection_pair()
    wrapper = StreamConnection(trio.StapledStream(inner, inner))
    await wrapper.send_all(b"x")
    wrapper.close()
    assert wrapper.closed and inner.closed
    with pytest.raises(trio.ClosedResourceError):
        await wrapper.receive_some()
    await wrapper.aclose()  # the stream's own close finds it closed: still fine
    await wrapper.aclose()
    assert await peer.receive_some() == b"x"
    assert await peer.receive_some() == b""
    await peer.aclose()

    inner, peer = connection_pair()
    wrapper = StreamConnection(inner)
    await peer.send_all(b"unread")  # so that a close would reset anyway
    wrapper.abort()
    assert wrapper.closed and inner.closed
    with pytest.raises(trio.BrokenResourceError):
        while True:
            await peer.send_all(b"y" * 65536)
    await peer.aclose()


async def test_close_without_a_connection_underneath_marks_it_closed() -> None:
    left, right = trio.testing.memory_stream_pair()
    wrapper = StreamConnection(left)
    wrapper.close()
    assert wrapper.closed
    with pytest.raises(trio.ClosedResourceError):
        await wrapper.send_all(b"x")
    # The stream itself stays open until aclose().
    await right.send_all(b"to the stream")
    assert await left.receive_some() == b"to the stream"
    await wrapper.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await left.receive_some()
    await right.aclose()


async def test_a_blocked_receive_is_woken_by_close_over_a_connection() -> None:
    inner, peer = connection_pair()
    wrapper = StreamConnection(trio.StapledStream(inner, inner))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def close_when_blocked() -> None:
                await trio.testing.wait_all_tasks_blocked()
                wrapper.close()

            nursery.start_soon(close_when_blocked)
            with pytest.raises(trio.ClosedResourceError):
                await wrapper.receive_some()
    await peer.aclose()


# ----------------------------------------------------------------------
# 5. Behind a real server: a handler that wraps its connection in SSLStream


class SSLHandler:
    """Wraps the server's connection in ``trio.SSLStream`` + ``StreamConnection`` and echoes."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.conns: list[trionet.Connection] = []
        self.wrappers: list[StreamConnection] = []
        self.exits: list[str] = []
        self.infos: list[trionet.ConnectionInfo] = []

    async def __call__(self, conn: trionet.Connection) -> None:
        self.conns.append(conn)
        tls = trio.SSLStream(conn, self.context, server_side=True)
        async with StreamConnection(tls) as secure:
            self.wrappers.append(secure)
            try:
                async for chunk in secure:
                    await secure.send_all(chunk)
                    self.infos.append(secure.info())
            except trio.Cancelled:  # pragma: no cover - would be the bug
                self.exits.append("cancelled")
                raise
            self.exits.append("drained" if secure.draining.is_set() else "eof")


async def tls_client(server: trionet.Server, client_tls: ssl.SSLContext) -> trionet.Connection:
    with trio.fail_after(10):
        return await trionet.connect(
            server.addresses[0], tls=client_tls, server_hostname="localhost"
        )


async def test_a_drain_ends_async_for_over_ssl_stream_at_once(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    nursery: trio.Nursery,
) -> None:
    # The headline bug: the drain used to reach only the connection, not the
    # SSLStream's receive above it, so the keep-alive loop waited out the
    # whole grace period and was cancelled.
    handler = SSLHandler(server_tls)
    server = await trionet_server(handler)
    async with await tls_client(server, client_tls) as client:
        with trio.fail_after(10):
            assert await echo_line(client, b"one") == b"one"
            shutdown = Shutdown(nursery, server, grace=5.0)
            report = await shutdown.wait()
            assert await client.receive_some() == b""  # close_notify, then EOF
    assert handler.exits == ["drained"]
    assert (report.finished, report.cancelled, report.in_stages) == (1, 0, 0)
    assert report.elapsed < 1.0
    (conn,), (secure,), (info,) = handler.conns, handler.wrappers, handler.infos
    assert secure.closed and conn.closed
    assert (info.id, info.peer, info.bytes_received, info.bytes_sent) == (conn.id, conn.peer, 4, 4)
    assert conn._iter_scope is None  # the relay was taken back
    assert server.stats.handler_errors == 0


async def test_a_drain_gives_a_silent_wrapper_its_first_request_allowance(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Shaken hands but no request yet: the wrapper has received nothing, so
    # the drain's first call does not end its loop (the connection beneath
    # has received the handshake: the wrapper decides by its own counters);
    # the second, after the allowance, does.
    allowance = 0.5
    monkeypatch.setattr(_server, "_FIRST_REQUEST_ALLOWANCE", allowance)
    handler = SSLHandler(server_tls)
    server = await trionet_server(handler)
    async with await tls_client(server, client_tls) as client:
        await wait_until(lambda: len(handler.wrappers) == 1)
        shutdown = Shutdown(nursery, server, grace=5.0)
        with trio.fail_after(10):
            assert await client.receive_some() == b""
        ended = trio.current_time() - shutdown.started_at
        report = await shutdown.wait()
    assert handler.exits == ["drained"]
    assert allowance <= ended < allowance + 1.5
    assert (report.finished, report.cancelled) == (1, 0)


async def test_plain_text_to_an_ssl_stream_handler_is_the_peers_fault(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    # trio.SSLStream raises BrokenResourceError from an ssl.SSLError: a
    # protocol error of the peer's, not a handler bug logged at ERROR.  (The
    # fixture's handler_errors="raise" would also fail the test.)
    caplog.set_level(logging.DEBUG)
    handler = SSLHandler(server_tls)
    server = await trionet_server(handler)
    sock = await connect_tcp(port_of(server))
    with sock, trio.fail_after(10):
        await sock.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        try:
            while await sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        await wait_until(lambda: blamed(server) == 1)
    stats = server.stats
    assert stats.handler_errors == 0
    assert stats.protocol_errors == 1 and stats.resets == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    (secure,) = handler.wrappers
    assert secure.peer_reset


async def test_an_incomplete_read_on_the_wrapper_is_the_peers_fault(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The wrapper's own IncompleteRead is passed on to the connection the
    # server classifies by.
    caplog.set_level(logging.DEBUG)
    seen: list[StreamConnection] = []

    async def handler(conn: trionet.Connection) -> None:
        async with StreamConnection(trio.SSLStream(conn, server_tls, server_side=True)) as secure:
            seen.append(secure)
            await secure.receive_line()

    server = await trionet_server(handler)
    async with await tls_client(server, client_tls) as client:
        await client.send_all(b"half a li")
    await wait_until(lambda: blamed(server) == 1)
    stats = server.stats
    assert stats.handler_errors == 0 and stats.protocol_errors == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("peer broke the protocol" in r.getMessage() for r in caplog.records)
    (secure,) = seen
    assert not secure.peer_reset  # a protocol error, not a reset


async def test_a_reset_under_the_wrapper_is_counted_as_a_reset(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    done = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        try:
            secure = StreamConnection(trio.SSLStream(conn, server_tls, server_side=True))
            assert await secure.receive_exactly(5) == b"hello"
            await secure.receive_some()  # the client resets the connection
        finally:
            done.set()

    server = await trionet_server(handler)
    client = await tls_client(server, client_tls)
    await client.send_all(b"hello")
    with trio.fail_after(10):
        await trio.testing.wait_all_tasks_blocked()
        client.abort()
        await done.wait()
    await wait_until(lambda: blamed(server) == 1)
    assert server.stats.resets == 1 and server.stats.handler_errors == 0


async def test_the_idle_timeout_reaps_a_handler_that_wraps_its_connection(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # The reaper watches the connection the server gave the handler (the
    # ciphertext moving on it); a wrapper's silent keep-alive loop is
    # cancelled at the idle timeout like any other, and that is no error.
    idle = 0.5
    outcomes: list[str] = []
    wrappers: list[StreamConnection] = []

    async def handler(conn: trionet.Connection) -> None:
        async with StreamConnection(trio.SSLStream(conn, server_tls, server_side=True)) as secure:
            wrappers.append(secure)
            try:
                async for chunk in secure:
                    await secure.send_all(chunk)
            except trio.Cancelled:
                outcomes.append("cancelled")  # by the idle reaper
                raise
            outcomes.append("ended")  # pragma: no cover - would be the bug

    server = await trionet_server(handler, idle_timeout=idle)
    async with await tls_client(server, client_tls) as client:
        with trio.fail_after(10):
            assert await echo_line(client, b"one") == b"one"
            since = trio.current_time()
            try:
                assert await client.receive_some() == b""
            except trio.BrokenResourceError:
                pass  # (closed beneath the SSLStream: no close_notify)
        took = trio.current_time() - since
    # Never early (50 ms for the client's own clock reading), and within the
    # reaper's bound plus slack.
    assert idle - 0.05 <= took <= idle + 1.0
    await wait_until(lambda: server.stats.closed == 1)
    assert outcomes == ["cancelled"]
    (secure,) = wrappers
    assert secure.closed
    stats = server.stats
    assert stats.idle_closed == 1
    assert stats.handler_errors == stats.resets == stats.protocol_errors == 0
