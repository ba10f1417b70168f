"""The lingering close: our own close never discards a reply that ``send_all`` accepted.

Every test here uses real loopback sockets.  Clients that "read slowly" do
so at a bounded rate (a short sleep between reads is their *speed*, never a
way to wait for something); every wait is bounded.
"""

from __future__ import annotations

import functools
import socket as stdlib_socket
import time
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from conftest import port_of, proxy_sockets

import trionet
from trionet import _stream, services
from trionet._stream import _poller
from trionet._stream._sockopts import linger_needed, unsent_bytes
from trionet.testing import Shutdown, wait_until

ServerFactory = Callable[..., Awaitable[trionet.Server]]

MIB = 1 << 20


async def raw_client(port: int, *, rcvbuf: int | None = None) -> trio.socket.SocketType:
    sock = trio.socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, rcvbuf)
    with trio.fail_after(5):
        await sock.connect(("127.0.0.1", port))
    return sock


class Reading:
    """What a client read: its bytes, and how the stream ended ("eof" or "reset")."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.end = ""

    async def read_all(
        self, sock: trio.socket.SocketType, *, chunk: int = 65536, pause: float = 0.0
    ) -> None:
        """Read until EOF or reset, ``chunk`` bytes at a time, ``pause`` s apart (the speed)."""
        try:
            while True:
                data = await sock.recv(chunk)
                if not data:
                    self.end = "eof"
                    return
                self.data += data
                if pause:
                    await trio.sleep(pause)
        except ConnectionResetError:
            self.end = "reset"


def pattern(tag: int, size: int) -> bytes:
    """``size`` bytes that say which reply they belong to (a truncation shows)."""
    unit = b"%08d" % tag
    return (unit * (size // len(unit) + 1))[:size]


# ----------------------------------------------------------------------
# 1. The handler returns with a reply still queued and input unread


@pytest.fixture(params=["poller", "trio-waits"])
def parking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with server connections parked on the poller, and on Trio's waits."""
    monkeypatch.setattr(_poller, "ENABLED", request.param == "poller")
    return str(request.param)


async def test_pipelined_client_gets_the_whole_reply_after_the_handler_returns(
    trionet_server: ServerFactory, parking: str
) -> None:
    # The handler answers one request with 8 MiB and returns; the client has
    # pipelined a second request and reads slowly.  A plain close() with that
    # request unread makes the kernel reset the connection and throw away the
    # unsent tail of the reply (the client used to get ~5-7 MiB, then RST).
    size = 8 * MIB
    reply = pattern(1, size)

    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_line()
        await conn.send_all(reply)

    server = await trionet_server(handler)
    sock = await raw_client(port_of(server))
    with sock:
        await sock.send(b"first\n")
        # The second request arrives while the reply is being written: it
        # sits unread in the kernel when the handler returns.
        reading = Reading()
        with trio.fail_after(20):
            first = await sock.recv(65536)
            await sock.send(b"second, pipelined\n")
            reading.data += first
            await reading.read_all(sock, pause=0.001)
    assert reading.end == "eof"
    assert len(reading.data) == size
    assert reading.data == reply
    stats = server.stats
    assert stats.bytes_sent == size
    assert stats.handler_errors == stats.resets == 0
    await wait_until(lambda: server.stats.lingering == 0)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_a_lingering_close_ends_with_the_peers_eof(
    trionet_server: ServerFactory, unused_unix_path: str, kind: str
) -> None:
    # While lingering the connection is closed (stats, connections) and holds
    # no max_connections slot: a second client is served meanwhile.
    async def handler(conn: trionet.Connection) -> None:
        # receive_some(4) takes 4 bytes from the kernel and leaves the rest
        # there: the handler returns with input unread.
        request = await conn.receive_some(4)
        await conn.send_all(b"reply" if request == b"ask!" else b"wrong")

    bind = "tcp://127.0.0.1:0" if kind == "tcp" else f"unix:{unused_unix_path}"
    server = await trionet_server(handler, bind, max_connections=1)
    first = await trionet.connect(server.addresses[0], close_linger=0)
    with trio.fail_after(5):
        await first.send_all(b"ask!more, unread")
        assert await first.receive_exactly(5) == b"reply"
        assert await first.receive_some() == b""  # the FIN after the reply
        await wait_until(lambda: server.stats.lingering == 1)
    stats = server.stats
    assert (stats.accepted, stats.active, stats.closed) == (1, 0, 1)
    assert server.connections == ()
    # The slot is free: a second client is served while the first lingers.
    async with await trionet.connect(server.addresses[0]) as second:
        with trio.fail_after(5):
            await second.send_all(b"ask!")
            assert await second.receive_exactly(5) == b"reply"
    assert server.stats.lingering == 1
    await first.aclose()  # our EOF ends the linger
    await wait_until(lambda: server.stats.lingering == 0)
    stats = server.stats
    assert stats.accepted == stats.active + stats.closed == 2
    assert stats.handler_errors == stats.resets == 0


async def test_no_linger_when_nothing_could_be_lost(trionet_server: ServerFactory) -> None:
    # EOF already seen, or nothing waiting and nothing unsent: close at once,
    # exactly as before (no lingering, the peer sees EOF at once).
    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(await conn.receive_line() + b"\n")

    server = await trionet_server(handler)
    for how in ("eof", "idle"):
        async with await trionet.connect(server.addresses[0]) as conn:
            await conn.send_all(b"hello\n")
            if how == "eof":
                await conn.send_eof()
            with trio.fail_after(5):
                assert await conn.receive_line() == b"hello"
                assert await conn.receive_some() == b""
            assert server.stats.lingering == 0
    await wait_until(lambda: server.stats.closed == 2)
    assert server.stats.lingering == 0


async def test_close_linger_zero_closes_at_once_and_may_reset(
    trionet_server: ServerFactory,
) -> None:
    # close_linger=0 keeps the old immediate close: with input unread the
    # kernel resets the connection and the tail of the reply is lost.
    size = 8 * MIB

    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_line()
        await conn.send_all(b"x" * size)

    server = await trionet_server(handler, close_linger=0)
    sock = await raw_client(port_of(server))
    with sock:
        await sock.send(b"first\n")
        reading = Reading()
        with trio.fail_after(20):
            reading.data += await sock.recv(65536)
            await sock.send(b"second\n")
            await reading.read_all(sock, pause=0.001)
    assert reading.end == "reset"
    assert len(reading.data) < size
    assert server.stats.lingering == 0


async def test_linger_is_bounded_by_close_linger(trionet_server: ServerFactory) -> None:
    # A peer that keeps sending and never closes: the linger reads and
    # discards, and gives up after close_linger; then the peer is reset.
    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_some(1)  # one byte of two: the other stays unread
        await conn.send_all(b"bye")

    server = await trionet_server(handler, close_linger=0.2)
    sock = await raw_client(port_of(server))
    with sock:
        await sock.send(b"!!")
        with trio.fail_after(5):
            assert await sock.recv(3) == b"bye"
            await wait_until(lambda: server.stats.lingering == 1)
            assert await sock.recv(3) == b""  # the FIN: the server is lingering
            reset = False
            while not reset:  # bounded by fail_after: the linger must give up
                try:
                    await sock.send(b"x" * 1000)
                    await trio.sleep(0.01)  # the sending rate
                except (BrokenPipeError, ConnectionResetError):
                    reset = True
    assert server.stats.lingering == 0
    assert server.stats.closed == 1


async def test_a_drain_caps_the_linger_at_the_grace_period(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    # close_linger is long, the peer never closes: shutdown() still returns
    # within its grace period, and the connection counts as finished.
    done = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_some(1)
        await conn.send_all(b"bye")
        done.set()

    server = await trionet_server(handler, close_linger=60)
    sock = await raw_client(port_of(server))
    with sock:
        await sock.send(b"!!")  # one byte stays unread: the close lingers
        with trio.fail_after(5):
            await done.wait()
            await wait_until(lambda: server.stats.lingering == 1)
        shutdown = Shutdown(nursery, server, grace=0.5)
        report = await shutdown.wait(timeout=5)
        assert shutdown.returned_at - shutdown.started_at < 3
        assert server.stats.lingering == 0
        # The linger ended by the drain: the peer saw the reply and the FIN.
        assert await sock.recv(10) == b"bye"
    assert (report.finished, report.cancelled) == (0, 0)  # it ended before the drain


async def test_handler_ending_in_a_drain_counts_as_finished_although_it_lingers(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    started = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        started.set()
        await conn.draining.wait()
        await conn.send_all(b"goodbye")

    server = await trionet_server(handler)
    sock = await raw_client(port_of(server))
    with sock:
        await sock.send(b"unread")
        with trio.fail_after(5):
            await started.wait()
        shutdown = Shutdown(nursery, server, grace=5)
        with trio.fail_after(5):
            assert await sock.recv(100) == b"goodbye"
            assert await sock.recv(100) == b""
            await wait_until(lambda: server.stats.lingering == 1)
        assert not shutdown.done.is_set()  # the drain waits for the linger ...
    report = await shutdown.wait()  # ... which our close ends
    assert (report.finished, report.cancelled) == (1, 0)
    assert report.elapsed < 4


# ----------------------------------------------------------------------
# 2. Graceful drains lose nothing


class PipelinedRequests:
    """The drain how-to's handler: answer one request at a time; after a
    reply, return if a drain has begun ("finish the current message, return")."""

    def __init__(self, reply_size: int) -> None:
        self.reply_size = reply_size
        self.first_reply = trio.Event()
        self.started = 0

    async def __call__(self, conn: trionet.Connection) -> None:
        self.started += 1
        while True:
            try:
                request = await conn.receive_line()
            except trionet.IncompleteRead:
                return
            await conn.send_all(pattern(int(request), self.reply_size))
            self.first_reply.set()
            if conn.draining.is_set():
                return


async def test_drain_of_pipelining_slow_readers_truncates_no_reply(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    # 20 clients pipeline requests and read slowly; the drain begins while
    # replies are in flight.  Each handler finishes its current reply and
    # returns, as the how-to says.  Every client must get only whole replies
    # and end with a clean EOF -- no reset, nothing the server counted as sent lost.
    n_clients, reply_size = 20, 512 * 1024
    handler = PipelinedRequests(reply_size)
    server = await trionet_server(handler)
    port = port_of(server)
    readings: list[Reading] = []

    async def client(i: int) -> None:
        reading = Reading()
        readings.append(reading)
        sock = await raw_client(port, rcvbuf=65536)
        with sock:

            async def pipeline() -> None:
                # Keep sending requests while replies arrive: some are still
                # unread by the server when its handler returns.
                for k in range(50):
                    try:
                        await sock.send(b"%d\n" % (i * 100 + k))
                    except OSError:
                        return
                    await trio.sleep(0.02)  # the request rate

            async with trio.open_nursery() as inner:
                inner.start_soon(pipeline)
                await reading.read_all(sock, pause=0.002)  # ~30 MB/s: slower than the server
                inner.cancel_scope.cancel()

    with trio.fail_after(30):
        async with trio.open_nursery() as clients:
            for i in range(n_clients):
                clients.start_soon(client, i)
            await handler.first_reply.wait()
            await wait_until(lambda: handler.started == n_clients)
            shutdown = Shutdown(nursery, server, grace=3.0)
        report = await shutdown.wait()

    assert len(readings) == n_clients
    for i, reading in enumerate(readings):
        assert reading.end == "eof", f"client {i} was reset"
        assert reading.data, f"client {i} got nothing"
        assert len(reading.data) % reply_size == 0, f"client {i} got a truncated reply"
    assert sum(len(r.data) for r in readings) == server.stats.bytes_sent
    assert (report.finished, report.cancelled) == (n_clients, 0)
    assert server.stats.handler_errors == server.stats.resets == 0
    assert server.stats.lingering == 0


async def test_drain_of_slow_readers_streaming_to_echo_loses_nothing(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    # 10 clients stream to the built-in echo service and read the echo
    # slowly.  A drain ends each echo loop after the data already received,
    # and every byte the server counted as sent reaches its client.
    n_clients = 10
    server = await trionet_server(services.echo)
    port = port_of(server)
    readings: list[Reading] = []
    streaming = 0
    all_streaming = trio.Event()

    async def client() -> None:
        nonlocal streaming
        reading = Reading()
        readings.append(reading)
        sock = await raw_client(port)
        with sock:

            async def writer() -> None:
                nonlocal streaming
                streaming += 1
                if streaming == n_clients:
                    all_streaming.set()
                for _ in range(1000):  # at most 64 MiB
                    try:
                        await sock.send(b"e" * 65536)
                    except OSError:
                        return

            async with trio.open_nursery() as inner:
                inner.start_soon(writer)
                await reading.read_all(sock, pause=0.002)
                inner.cancel_scope.cancel()

    with trio.fail_after(30):
        async with trio.open_nursery() as clients:
            for _ in range(n_clients):
                clients.start_soon(client)
            await all_streaming.wait()
            await wait_until(lambda: server.stats.bytes_sent > n_clients * MIB)
            shutdown = Shutdown(nursery, server, grace=3.0)
        report = await shutdown.wait()
    for i, reading in enumerate(readings):
        assert reading.end == "eof", f"client {i} was reset"
    assert sum(len(r.data) for r in readings) == server.stats.bytes_sent
    assert (report.finished, report.cancelled) == (n_clients, 0)


# ----------------------------------------------------------------------
# 3. The decision, on socket pairs


def tcp_pair(*, rcvbuf: int | None = None) -> tuple[stdlib_socket.socket, stdlib_socket.socket]:
    listener = stdlib_socket.create_server(("127.0.0.1", 0))
    with listener:
        client = stdlib_socket.socket()
        if rcvbuf is not None:
            client.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, rcvbuf)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    return server, client


def test_linger_needed_reads_the_kernel_not_the_clock() -> None:
    # Nothing waiting, nothing unsent: close now.
    ours, peer = tcp_pair()
    with ours, peer:
        assert not linger_needed(ours)
        assert unsent_bytes(ours) == 0
        # Data waiting (a pipelined request): linger.  Peeking consumed nothing.
        peer.send(b"GET /next")
        assert wait_for(lambda: linger_needed(ours))
        assert ours.recv(100) == b"GET /next"
        assert not linger_needed(ours)
        # The peer's EOF: close now.
        peer.shutdown(stdlib_socket.SHUT_WR)
        assert wait_for(lambda: ours.recv(1, stdlib_socket.MSG_PEEK) == b"")
        assert not linger_needed(ours)
    # Nothing waiting, but bytes not yet sent (the peer's window is full): linger.
    ours, peer = tcp_pair(rcvbuf=4096)
    with ours, peer:
        sent = 0
        try:
            while sent < 64 * MIB:
                sent += ours.send(b"x" * 65536)
        except BlockingIOError:
            pass
        assert unsent_bytes(ours) > 0
        assert linger_needed(ours)
    # A reset connection: nothing left to protect, close now.
    ours, peer = tcp_pair()
    with ours:
        peer.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        peer.close()
        assert wait_for(lambda: not linger_needed(ours))


def wait_for(predicate: Callable[[], bool]) -> bool:
    """Loopback delivers within microseconds; poll a kernel fact briefly (bounded)."""
    for _ in range(1000):
        if predicate():
            return True
        time.sleep(0.001)
    return False


def test_unsent_bytes_of_a_unix_socket_is_zero() -> None:
    a, b = stdlib_socket.socketpair()
    with a, b:
        a.send(b"x" * 1000)
        assert unsent_bytes(a) == 0  # a Unix socket hands data straight to its peer


# ----------------------------------------------------------------------
# 4. Closes that stay immediate


async def server_conn_with_unread_input(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> tuple[trionet.Connection, trio.socket.SocketType, trio.Event]:
    """A server Connection that sent a reply while the peer's next bytes sit unread.

    The handler waits on the returned event before returning.
    """
    conns: list[trionet.Connection] = []
    got = trio.Event()
    release = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        conns.append(conn)
        await conn.receive_some(1)
        await conn.send_all(b"reply")
        got.set()
        await release.wait()

    server = await trionet_server(handler)
    sock = await raw_client(port_of(server))
    await sock.send(b"!unread")
    with trio.fail_after(5):
        await got.wait()
        assert await sock.recv(5) == b"reply"
    return conns[0], sock, release


@pytest.mark.parametrize("how", ["abort", "close", "aclose_forcefully", "cancelled_aclose"])
async def test_immediate_closes_reset_when_input_is_unread(
    trionet_server: ServerFactory, nursery: trio.Nursery, how: str
) -> None:
    # abort() is the handler's choice; the synchronous close() and a
    # cancelled aclose() cannot wait: all three close at once, and with
    # input unread the kernel resets the connection (documented).
    conn, sock, release = await server_conn_with_unread_input(trionet_server, nursery)
    with sock:
        if how == "abort":
            conn.abort()
        elif how == "close":
            conn.close()
        elif how == "aclose_forcefully":
            await trio.aclose_forcefully(conn)
        else:
            with trio.CancelScope() as scope:
                scope.cancel()
                await conn.aclose()
        assert conn.closed and not conn._fd_open
        with trio.fail_after(5), pytest.raises(ConnectionResetError):
            await sock.recv(10)
        release.set()


async def test_abort_ends_a_linger_with_a_reset(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    conn, sock, release = await server_conn_with_unread_input(trionet_server, nursery)
    with sock:
        lingering = trio.Event()

        async def close_it() -> None:
            lingering.set()
            await conn.aclose()

        async with trio.open_nursery() as inner:
            inner.start_soon(close_it)
            await lingering.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert conn.closed and conn._fd_open  # lingering: FIN sent, descriptor open
            with trio.fail_after(5):
                assert await sock.recv(10) == b""
            conn.abort()  # from another task: the linger ends at once, with RST
        assert not conn._fd_open
        with trio.fail_after(5), pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(100):  # the RST answers our next segment
                await sock.send(b"x")
                await trio.sleep(0.01)
        release.set()


async def test_aclose_wakes_blocked_tasks_and_still_delivers_what_was_sent(
    trionet_server: ServerFactory,
) -> None:
    # The Trio contract: closing wakes tasks blocked on the stream with
    # ClosedResourceError -- also when the close then lingers.  A receiver
    # and a sender are blocked (the peer reads nothing, its window is full);
    # aclose() wakes both, lingers (bytes are unsent), and the peer then
    # reads everything the kernel had accepted, followed by a clean EOF.
    conns: list[trionet.Connection] = []
    ready = trio.Event()
    woken: list[str] = []
    closed = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        conns.append(conn)

        async def receiver() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await conn.receive_some(10)
            woken.append("receiver")

        async def sender() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await conn.send_all(b"s" * (16 * MIB))
            woken.append("sender")

        async with trio.open_nursery() as inner:
            inner.start_soon(receiver)
            inner.start_soon(sender)
            ready.set()
            await trio.testing.wait_all_tasks_blocked()
            await conn.aclose()
            closed.set()

    server = await trionet_server(handler)
    sock = await raw_client(port_of(server), rcvbuf=4096)
    with sock:
        with trio.fail_after(5):
            await ready.wait()
            await wait_until(lambda: len(woken) == 2)
        assert sorted(woken) == ["receiver", "sender"]
        conn = conns[0]
        assert conn.closed and conn._fd_open  # lingering: the peer has not read yet
        # The handler's own linger is counted too (it holds the handler's slot).
        assert server.stats.lingering == 1
        assert server.connections == ()
        reading = Reading()
        with trio.fail_after(10):
            await reading.read_all(sock)
            sock.shutdown(stdlib_socket.SHUT_WR)  # our EOF ends the linger
            await closed.wait()
        assert reading.end == "eof"
        assert len(reading.data) == conn.bytes_sent > 0
        assert not conn._fd_open
        await wait_until(lambda: server.stats.lingering == 0)


# ----------------------------------------------------------------------
# 5. Client connections and the pool follow the same rule


async def test_client_aclose_lingers_so_the_server_gets_the_whole_request(
    trionet_server: ServerFactory,
) -> None:
    # The server greets (the client never reads it) and reads the client's
    # 8 MiB upload slowly.  The client sends it and closes: a plain close with
    # the greeting unread would reset the connection and drop the upload's
    # unsent tail.
    size = 8 * MIB
    received = bytearray()
    finished = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(b"hello, client\n")
        while data := await conn.receive_some(65536):
            received.extend(data)
            await trio.sleep(0.0005)  # the server's reading speed
        finished.set()

    server = await trionet_server(handler)
    upload = pattern(7, size)
    with trio.fail_after(30):
        conn = await trionet.connect(server.addresses[0])
        await conn.receive_some(1)  # the greeting has arrived (most of it stays unread)
        await conn.send_all(upload)
        await conn.aclose()
        await finished.wait()
    assert bytes(received) == upload
    assert server.stats.resets == 0


async def test_pool_connections_carry_close_linger(trionet_server: ServerFactory) -> None:
    server = await trionet_server(services.echo)
    pool = trionet.ConnectionPool(server.addresses[0], close_linger=0.25)
    async with pool, pool.connection() as conn:
        assert conn._close_linger == 0.25
    conn = await trionet.connect(server.addresses[0])
    async with conn:
        assert conn._close_linger == _stream.DEFAULT_CLOSE_LINGER


# ----------------------------------------------------------------------
# 6. Descriptor-less sockets (a custom socket factory) linger when asked


async def test_descriptor_less_connections_linger_too(trionet_server: ServerFactory) -> None:
    size = 4 * MIB
    reply = pattern(3, size)

    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_some(6)
        await conn.send_all(reply)

    with proxy_sockets() as factory:
        server = await trionet_server(handler)
        assert factory.made
    sock = await raw_client(port_of(server))
    with sock:
        await sock.send(b"first\n")
        reading = Reading()
        with trio.fail_after(20):
            reading.data += await sock.recv(65536)
            await sock.send(b"second\n")
            await reading.read_all(sock, pause=0.001)
    assert reading.end == "eof"
    assert reading.data == reply
    await wait_until(lambda: server.stats.lingering == 0)


async def test_descriptor_less_linger_is_bounded_by_close_linger(
    trionet_server: ServerFactory,
) -> None:
    # It cannot peek, so it lingers whenever it sent something; a silent
    # peer that never closes costs close_linger, not more.
    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(b"hi")

    with proxy_sockets():
        server = await trionet_server(handler, close_linger=0.3)
    sock = await raw_client(port_of(server))
    with sock, trio.fail_after(5):
        assert await sock.recv(2) == b"hi"
        assert await sock.recv(2) == b""  # the FIN: lingering
        await wait_until(lambda: server.stats.lingering == 0)
        assert server.stats.closed == 1


# ----------------------------------------------------------------------
# 7. Cancellation storms around the close


async def test_cancelling_the_server_mid_linger_closes_everything(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    # Clients that keep their connections lingering; the whole server is
    # cancelled: every descriptor is closed, nothing hangs.
    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_some(1)
        await conn.send_all(b"r")

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            server = await inner.start(
                functools.partial(trionet.serve, handler, "tcp://127.0.0.1:0", close_linger=60)
            )
            socks = []
            for _ in range(20):
                sock = await raw_client(port_of(server))
                await sock.send(b"!!")
                socks.append(sock)
            await wait_until(lambda: server.stats.lingering == 20)
            scope.cancel()
    assert server.stopped
    assert server.stats.lingering == 0
    for sock in socks:
        with sock, trio.fail_after(5):
            # The reply, then the FIN sent when the linger began (the linger
            # had read our second byte, so the close was not a reset).
            assert await sock.recv(10) == b"r"
            assert await sock.recv(10) == b""


async def slow_upload_server(
    trionet_server: ServerFactory, size: int
) -> tuple[trionet.Server, bytearray, trio.Event]:
    """A server that reads ``size`` bytes slowly, reporting progress ("p", never read)."""
    received = bytearray()
    done = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        while len(received) < size:
            data = await conn.receive_some(65536)
            if not data:
                break
            received.extend(data)
            if len(received) % (256 * 1024) < len(data):
                await conn.send_all(b"p")  # progress the client never reads
            await trio.sleep(0.0005)  # the server's reading speed
        done.set()

    return await trionet_server(handler), received, done


async def test_pool_discard_after_a_normal_exit_lingers_in_the_lease(
    trionet_server: ServerFactory,
) -> None:
    # The borrower uploads 8 MiB, half-closes (so the connection cannot be
    # reused) and leaves without reading the server's progress reports.  The
    # discard is an orderly close, lingering in the block's exit as
    # ``async with conn:`` would; closing at once would meet the next
    # progress report with a reset and lose the upload's unsent tail.
    size = 8 * MIB
    server, received, done = await slow_upload_server(trionet_server, size)
    upload = pattern(6, size)
    with trio.fail_after(30):
        async with trionet.ConnectionPool(server.addresses[0]) as pool:
            async with pool.connection() as conn:
                await conn.send_all(upload)
                await conn.send_eof()
            assert pool.stats.discarded == 1
            assert pool.stats.closing == 0
        await done.wait()
    assert bytes(received) == upload


class NoticeServer:
    """Echoes one line; on ``go`` sends an unsolicited notice, then reads to the end.

    ``ends`` gets "eof" (the client closed in an orderly way) or "reset".
    """

    def __init__(self) -> None:
        self.go = trio.Event()
        self.ends: list[str] = []
        self.ended = trio.Event()

    async def __call__(self, conn: trionet.Connection) -> None:
        await conn.send_all(await conn.receive_line() + b"\n")
        await self.go.wait()
        await conn.send_all(b"an unsolicited notice\n")
        try:
            while await conn.receive_some():
                pass
            self.ends.append("eof")
        except trio.BrokenResourceError:
            self.ends.append("reset")
        self.ended.set()


async def leave_idle_with_unread_input(pool: trionet.ConnectionPool, notice: NoticeServer) -> None:
    """One exchange, then the connection goes back idle and the notice arrives, unread."""
    async with pool.connection() as conn:
        await conn.send_all(b"hello\n")
        assert await conn.receive_line() == b"hello"
        raw = conn._raw
    assert raw is not None
    assert pool.stats.idle == 1
    notice.go.set()
    await wait_until(lambda: linger_needed(raw))


@pytest.mark.parametrize(("close_linger", "end"), [(5.0, "eof"), (0.0, "reset")])
async def test_pool_aclose_lingers_for_an_idle_connection_with_unread_input(
    trionet_server: ServerFactory, close_linger: float, end: str
) -> None:
    # Closing the pool closes its idle connections in an orderly way: one
    # holding unread input lingers until the server's EOF, so the server
    # sees our EOF, not a reset.  close_linger=0 keeps the immediate close.
    notice = NoticeServer()
    server = await trionet_server(notice)
    with trio.fail_after(10):
        async with trionet.ConnectionPool(server.addresses[0], close_linger=close_linger) as pool:
            await leave_idle_with_unread_input(pool, notice)
        await notice.ended.wait()
    assert notice.ends == [end]
    assert pool.stats.closing == 0


async def test_pool_expiry_lingers_in_the_background(trionet_server: ServerFactory) -> None:
    notice = NoticeServer()
    server = await trionet_server(notice)
    with trio.fail_after(10):
        async with trionet.ConnectionPool(server.addresses[0], idle_timeout=0.3) as pool:
            await leave_idle_with_unread_input(pool, notice)
            await wait_until(lambda: pool.stats.expired == 1)
            await notice.ended.wait()  # our EOF came first ...
            await wait_until(lambda: pool.stats.closing == 0)  # ... then the server's
    assert notice.ends == ["eof"]


async def test_lingering_beyond_max_connections_keeps_the_slot(
    trionet_server: ServerFactory,
) -> None:
    # Lingering connections hold no slot -- up to max_connections of them.
    # One lingering beyond that keeps its slot until its linger ends, so
    # accepting pauses (backpressure) and descriptors stay bounded, and no
    # close is cut short: every client gets its reply and a clean EOF.
    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_some(1)  # one byte of two: the close lingers
        await conn.send_all(b"r")

    server = await trionet_server(handler, max_connections=2)
    socks = []

    async def client() -> trio.socket.SocketType:
        sock = await raw_client(port_of(server))
        socks.append(sock)
        await sock.send(b"!!")
        return sock

    with trio.fail_after(10):
        for i in range(4):
            sock = await client()
            assert await sock.recv(1) == b"r"
            assert await sock.recv(1) == b""  # FIN: lingering, not reset
            await wait_until(lambda i=i: server.stats.lingering == i + 1)
        # Two linger slot-free, two in their slots: both slots are taken.
        fifth = await client()
        await trio.testing.wait_all_tasks_blocked()
        assert server.stats.accepted == 4  # backpressure: the fifth waits in the backlog
        socks[2].close()  # our EOF ends a slot-holding linger ...
        assert await fifth.recv(1) == b"r"  # ... and the fifth is served
        assert await fifth.recv(1) == b""
        for sock in socks:
            sock.close()
        await wait_until(lambda: server.stats.lingering == 0)
    stats = server.stats
    assert stats.accepted == stats.closed == 5
    assert stats.resets == stats.handler_errors == 0


# ----------------------------------------------------------------------
# 8. Regressions found by abuse testing: tasks racing a lingering close


@pytest.mark.parametrize("yields", [0, 1, 2, 3, 5])
async def test_a_reader_racing_a_lingering_aclose_is_woken_not_lost(
    trionet_server: ServerFactory, yields: int
) -> None:
    # One task of the handler reads while another calls aclose(), which
    # lingers (most of a reply is unsent).  Depending on when the close
    # lands, the reader is parked, spinning before it parks, or just woken:
    # every way it must end with ClosedResourceError -- it used to park after
    # the close, never to be woken, keeping the handler and its slot forever.
    reader_ended: list[str] = []

    async def handler(conn: trionet.Connection) -> None:
        if reader_ended:  # the second client: is the server still serving?
            await conn.send_all(b"hi")
            return
        await conn.send_all(b"D" * MIB)  # the peer reads nothing: most stays unsent

        async def reader() -> None:
            try:
                await conn.receive_some()
                reader_ended.append("data")  # pragma: no cover - the bug
            except trio.ClosedResourceError:
                reader_ended.append("closed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for _ in range(yields):
                await trio.lowlevel.checkpoint()
            await conn.aclose()

    server = await trionet_server(handler, close_linger=0.3, max_connections=1)
    sock = await raw_client(port_of(server), rcvbuf=4096)
    with sock, trio.fail_after(10):
        await wait_until(lambda: bool(reader_ended))
        assert reader_ended == ["closed"]
        await wait_until(lambda: server.stats.lingering == 0 and not server.connections)
        second = await raw_client(port_of(server))
        with second:
            assert await second.recv(2) == b"hi"  # the slot came back


async def test_a_writer_woken_just_before_a_lingering_close_gets_closed_not_reset(
    trionet_server: ServerFactory,
) -> None:
    # The poller has woken a blocked writer (the peer read a little) but the
    # writer has not run yet when another task's aclose() shuts our sending
    # side down.  The writer must see ClosedResourceError -- not EPIPE turned
    # into BrokenResourceError, which blamed a peer reset that never happened.
    outcome: list[BaseException] = []
    rescheduled = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        async def writer() -> None:
            try:
                await conn.send_all(b"W" * (32 * MIB))
            except BaseException as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            parked = False
            while True:  # bounded by the test's fail_after
                await trio.lowlevel.checkpoint()
                if conn._wtask is not None:
                    parked = True
                elif parked and conn._send_busy:
                    break  # woken by the poller, not yet run
            rescheduled.set()
            await conn.aclose()

    server = await trionet_server(handler, close_linger=0.2)
    sock = await raw_client(port_of(server), rcvbuf=8192)
    with sock, trio.fail_after(10):
        while not rescheduled.is_set():
            await sock.recv(8192)  # read a little: makes the writer writable
            await trio.sleep(0.001)
        await wait_until(lambda: bool(outcome))
    assert isinstance(outcome[0], trio.ClosedResourceError), outcome
    assert server.stats.resets == 0


async def test_a_second_aclose_does_not_cut_the_first_ones_linger(
    trionet_server: ServerFactory,
) -> None:
    # Two tasks close the same connection; the first lingers to protect a
    # reply the peer reads slowly.  The second returns at once but must not
    # close the descriptor under the first: the peer gets every byte.
    size = MIB

    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_some(1)
        await conn.send_all(pattern(9, size))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.aclose)
            await trio.testing.wait_all_tasks_blocked()
            assert conn.closed and conn._fd_open  # the first is lingering
            await conn.aclose()  # returns at once, leaves the linger alone
            assert conn._fd_open

    server = await trionet_server(handler)
    sock = await raw_client(port_of(server), rcvbuf=4096)
    with sock:
        await sock.send(b"!!")  # one byte stays unread: the close lingers
        reading = Reading()
        with trio.fail_after(20):
            await reading.read_all(sock, pause=0.0005)
    assert reading.end == "eof"
    assert reading.data == pattern(9, size)


async def test_cancelling_async_with_pool_closes_lingering_idle_connections_at_once(
    trionet_server: ServerFactory,
) -> None:
    # A lingering close is an orderly close that can wait; a cancelled one
    # cannot.  Leaving ``async with pool`` under a cancellation closes the
    # idle connection that would linger at once instead of waiting for it.
    notice = NoticeServer()
    server = await trionet_server(notice)
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            async with trionet.ConnectionPool(server.addresses[0], close_linger=60) as pool:
                await leave_idle_with_unread_input(pool, notice)
                scope.cancel()
        assert scope.cancelled_caught
        await notice.ended.wait()
    assert notice.ends == ["reset"]  # closed at once, with the notice unread
    assert pool.stats.closing == 0


async def test_pool_expiry_lingers_at_most_max_size_at_once(
    trionet_server: ServerFactory,
) -> None:
    # A server that keeps talking to idle connections and never closes them:
    # each expired connection would linger.  At most max_size linger at once;
    # the rest close at once, so descriptors stay bounded.
    class Chatty:
        def __init__(self) -> None:
            self.served = 0

        async def __call__(self, conn: trionet.Connection) -> None:
            self.served += 1
            await conn.send_all(await conn.receive_line() + b"\n")
            with trio.move_on_after(5):
                while True:
                    await conn.send_all(b"chatter\n")
                    await trio.sleep(0.01)

    chatty = Chatty()
    server = await trionet_server(chatty)
    peak = 0
    with trio.fail_after(15):
        # A discard at a block's exit lingers there (the chatter may arrive
        # before the exit): close_linger bounds that wait.
        pool = trionet.ConnectionPool(
            server.addresses[0], max_size=2, idle_timeout=0.05, close_linger=0.3
        )
        async with pool:
            for _ in range(10):
                async with pool.connection() as conn:
                    await conn.send_all(b"hi\n")
                    assert await conn.receive_line() == b"hi"
                await wait_until(lambda: pool.stats.idle == 0)
                peak = max(peak, pool.stats.closing)
                assert pool.stats.closing <= 2
    assert chatty.served == 10
    assert 1 <= peak <= 2


async def test_pool_block_that_raises_still_delivers_what_it_sent(
    trionet_server: ServerFactory,
) -> None:
    # A block that raises (not cancelled) abandons the exchange: the
    # connection is never reused, but it is closed in an orderly way, so the
    # upload send_all accepted still reaches the server in full.
    size = 8 * MIB
    server, received, done = await slow_upload_server(trionet_server, size)
    upload = pattern(4, size)
    with trio.fail_after(30):
        async with trionet.ConnectionPool(server.addresses[0]) as pool:
            with pytest.raises(ValueError, match="the caller's own error"):
                async with pool.connection() as conn:
                    await conn.send_all(upload)
                    raise ValueError("the caller's own error")
            assert pool.stats.discarded == 1
        await done.wait()
    assert bytes(received) == upload
