"""Tests for trionet._server: serve/open_server, stats, connections, handler errors, real peers.

(Admission, drain, idle timeouts and accept-error storms have their own test
modules: test_admission.py, test_drain.py, test_idle.py, test_accept.py.)
"""

from __future__ import annotations

import functools
import logging
import socket as stdlib_socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import h11
import pytest
import trio
import trio.testing
from conftest import FakeTime, port_of, require_program

import trionet
import trionet._ratelimit
import trionet._server._accept
from trionet import Connection, ConnectionInfo, IncompleteRead, TCPAddress, UnixAddress
from trionet._address import address_from_sockaddr

pytestmark = pytest.mark.usefixtures("network")

ServerFactory = Callable[..., Awaitable[trionet.Server]]
LINGER_0 = struct.pack("ii", 1, 0)


# ----------------------------------------------------------------------
# Helpers


async def echo(conn: Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


def target(addr: trionet.Address) -> tuple[int, Any]:
    if isinstance(addr, UnixAddress):
        return stdlib_socket.AF_UNIX, addr.sockaddr
    family = stdlib_socket.AF_INET6 if ":" in addr.host else stdlib_socket.AF_INET
    return family, (addr.host, addr.port)


async def connect(addr: trionet.Address) -> trio.socket.SocketType:
    family, sockaddr = target(addr)
    sock = trio.socket.socket(family)
    try:
        with trio.fail_after(5):
            await sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def recv_until_eof(sock: trio.socket.SocketType) -> bytes:
    data = b""
    with trio.fail_after(5):
        while chunk := await sock.recv(65536):
            data += chunk
    return data


async def echo_once(addr: trionet.Address, payload: bytes = b"ping") -> None:
    with await connect(addr) as sock:
        await sock.send(payload)
        got = b""
        with trio.fail_after(5):
            while len(got) < len(payload):
                chunk = await sock.recv(1024)
                assert chunk
                got += chunk
        assert got == payload


def all_tasks() -> list[trio.lowlevel.Task]:
    out = []
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        assert task is not None
        out.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return out


async def in_batches(n: int, batch: int, fn: Callable[[int], Awaitable[None]]) -> None:
    """Run fn(0..n-1), at most ``batch`` at a time."""
    for start in range(0, n, batch):
        async with trio.open_nursery() as nursery:
            for i in range(start, min(n, start + batch)):
                nursery.start_soon(fn, i)


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trionet.server" and r.levelno >= logging.ERROR]


# ----------------------------------------------------------------------
# Serving basics


async def test_handler_return_closes_the_connection(trionet_server: ServerFactory) -> None:
    returned = trio.Event()

    async def greet(conn: Connection) -> None:
        await conn.send_all(b"hi")
        returned.set()
        # returns without closing: the server must close it

    server = await trionet_server(greet)
    with await connect(server.addresses[0]) as sock:
        assert await recv_until_eof(sock) == b"hi"
    assert returned.is_set()


async def test_stats_are_final_when_the_client_sees_eof(trionet_server: ServerFactory) -> None:
    async def reply(conn: Connection) -> None:
        request = await conn.receive_exactly(10)
        await conn.send_all(request * 3)

    server = await trionet_server(reply)
    before = server.stats
    assert (before.accepted, before.active, before.closed) == (0, 0, 0)
    for i in range(1, 4):
        with await connect(server.addresses[0]) as sock:
            await sock.send(b"0123456789")
            assert await recv_until_eof(sock) == b"0123456789" * 3
            # No checkpoint between seeing EOF and reading the stats.
            stats = server.stats
        assert stats.accepted == i
        assert stats.closed == i
        assert stats.active == 0
        assert stats.bytes_received == 10 * i
        assert stats.bytes_sent == 30 * i
        assert (stats.handler_errors, stats.resets) == (0, 0)
    # A snapshot is frozen and does not move.
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.accepted = 0  # type: ignore[misc]
    assert before.accepted == 0


async def test_stats_count_live_connections(trionet_server: ServerFactory) -> None:
    server = await trionet_server(echo)
    with await connect(server.addresses[0]) as a, await connect(server.addresses[0]) as b:
        for sock in (a, b):
            await sock.send(b"abc")
            assert await sock.recv(10) == b"abc"
        stats = server.stats
        assert (stats.accepted, stats.active, stats.closed) == (2, 2, 0)
        # Bytes of live connections are included.
        assert (stats.bytes_received, stats.bytes_sent) == (6, 6)


async def test_connections_yields_connection_info(trionet_server: ServerFactory) -> None:
    seen: dict[int, Connection] = {}
    both = trio.Event()

    sent: list[int] = []

    async def hold(conn: Connection) -> None:
        seen[conn.id] = conn
        await conn.send_all(b"12345")
        sent.append(conn.id)  # both sends done (not just both handlers started)
        if len(sent) == 2:
            both.set()
        await conn.receive_some()  # until the client hangs up

    server = await trionet_server(hold, "tcp://[::1]:0")
    t0 = time.time()
    with await connect(server.addresses[0]) as a, await connect(server.addresses[0]) as b:
        with trio.fail_after(5):
            await both.wait()
        t1 = time.time()
        infos = list(server.connections)
        assert all(isinstance(i, ConnectionInfo) for i in infos)
        assert {i.id for i in infos} == set(seen)
        peers = {address_from_sockaddr(s.family, s.getsockname()) for s in (a, b)}
        assert {i.peer for i in infos} == peers
        for info in infos:
            assert info.local == server.addresses[0]
            assert t0 <= info.opened_at <= t1  # wall-clock time
            assert (info.bytes_received, info.bytes_sent) == (0, 5)
            assert info.peer == seen[info.id].peer
    with trio.fail_after(5):
        while server.stats.active:
            await trio.testing.wait_all_tasks_blocked()
    assert list(server.connections) == []


async def test_wildcard_connections_report_the_real_local_address(
    trionet_server: ServerFactory,
) -> None:
    got: list[trionet.Address] = []

    async def note_local(conn: Connection) -> None:
        got.append(conn.local)

    server = await trionet_server(note_local, "tcp://*:0")
    port = port_of(server)
    with await connect(TCPAddress("127.0.0.1", port)) as sock:
        await recv_until_eof(sock)
    assert got == [TCPAddress("127.0.0.1", port)]


async def test_shutdown_grace_positional_and_keyword(nursery: trio.Nursery) -> None:
    reports = []
    for call in ("positional", "keyword"):
        server: trionet.Server = await nursery.start(
            functools.partial(trionet.serve, echo, "tcp://127.0.0.1:0")
        )
        assert not server.stopped
        sock = await connect(server.addresses[0])
        await sock.send(b"x")
        assert await sock.recv(1) == b"x"
        if call == "positional":
            report = await server.shutdown(2.0)
        else:
            report = await server.shutdown(grace=2.0)
        assert server.stopped
        assert isinstance(report, trionet.ShutdownReport)
        # The echo handler's `async for` ends when the drain begins.
        assert (report.finished, report.cancelled) == (1, 0)
        reports.append(report)
        assert await recv_until_eof(sock) == b""
        sock.close()
    assert len(reports) == 2


async def test_repr_names_addresses(trionet_server: ServerFactory) -> None:
    server = await trionet_server(echo)
    assert str(server.addresses[0]) in repr(server)


# ----------------------------------------------------------------------
# Task structure


async def test_one_accept_task_per_listener_and_handlers_in_their_own_nursery(
    trionet_server: ServerFactory, unused_unix_path: str, network: object
) -> None:
    handler_tasks: list[trio.lowlevel.Task] = []
    release = trio.Event()

    async def note_task(conn: Connection) -> None:
        handler_tasks.append(trio.lowlevel.current_task())
        await release.wait()

    binds = ["tcp://127.0.0.1:0", "tcp://[::1]:0"]
    if network is None:  # the virtual network has no Unix sockets
        binds.append(f"unix:{unused_unix_path}")
    server = await trionet_server(note_task, *binds)
    await trio.testing.wait_all_tasks_blocked()
    accept_tasks = [
        t for t in all_tasks() if t.coro.cr_code is trionet._server._accept.accept_loop.__code__
    ]
    assert len(accept_tasks) == len(binds)
    # Each is named after its listener.
    names = sorted(t.name for t in accept_tasks)
    for name, addr in zip(names, sorted(map(str, server.addresses)), strict=True):
        assert addr in name
    accept_nurseries = {id(t.parent_nursery) for t in accept_tasks}
    assert len(accept_nurseries) == 1

    socks = [await connect(a) for a in server.addresses]
    with trio.fail_after(5):
        while len(handler_tasks) < len(binds):
            await trio.testing.wait_all_tasks_blocked()
    handler_nurseries = {id(t.parent_nursery) for t in handler_tasks}
    assert len(handler_nurseries) == 1
    # Handlers are not children of the accept nursery, so accepting can stop
    # while connections go on.
    assert handler_nurseries.isdisjoint(accept_nurseries)
    release.set()
    for sock in socks:
        assert await recv_until_eof(sock) == b""
        sock.close()


# ----------------------------------------------------------------------
# Handler errors: log (the default)


async def test_handler_error_is_logged_once_with_id_peer_and_traceback(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    conns: list[Connection] = []

    async def broken_handler(conn: Connection) -> None:
        conns.append(conn)
        raise ValueError("handler bug 1234")

    server = await trionet_server(broken_handler, handler_errors="log")
    with await connect(server.addresses[0]) as sock:
        assert await recv_until_eof(sock) == b""  # that connection is closed
    [record] = error_records(caplog)
    conn = conns[0]
    message = record.getMessage()
    assert f"#{conn.id}" in message
    assert str(conn.peer) in message
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert "handler bug 1234" in caplog.text
    assert "broken_handler" in caplog.text  # the traceback is there
    assert server.stats.handler_errors == 1
    # The server keeps serving.
    conns.clear()
    with await connect(server.addresses[0]) as sock:
        await recv_until_eof(sock)
    assert server.stats.handler_errors == 2
    assert server.stats.accepted == 2


async def test_handler_exception_group_is_logged_whole(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def fail_twice(conn: Connection) -> None:
        async def fail(exc: Exception) -> None:
            raise exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, KeyError("key-in-group"))
            nursery.start_soon(fail, ValueError("value-in-group"))

    server = await trionet_server(fail_twice, handler_errors="log")
    with await connect(server.addresses[0]) as sock:
        await recv_until_eof(sock)
    [record] = error_records(caplog)
    assert record.exc_info is not None
    group = record.exc_info[1]
    assert isinstance(group, ExceptionGroup)
    assert {type(e) for e in group.exceptions} == {KeyError, ValueError}
    # Both sub-exceptions and their tracebacks are in the formatted log.
    assert "key-in-group" in caplog.text
    assert "value-in-group" in caplog.text
    assert server.stats.handler_errors == 1


async def test_thousand_failing_handlers_leave_the_server_serving(
    trionet_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    limiter_clock: FakeTime,
) -> None:
    # A fake clock for the log rate limiter: the storm happens "at once", and
    # we can move time on to see the "not logged" note deterministically.

    async def handler(conn: Connection) -> None:
        data = await conn.receive_some()
        if data == b"boom":
            raise RuntimeError(f"boom on #{conn.id}")
        await conn.send_all(data)

    server = await trionet_server(handler, handler_errors="log")
    addr = server.addresses[0]

    async def client(i: int) -> None:
        with await connect(addr) as sock:
            await sock.send(b"boom")
            assert await recv_until_eof(sock) == b""

    start = time.monotonic()
    await in_batches(1000, 50, client)
    assert time.monotonic() - start < 30
    stats = server.stats
    assert stats.handler_errors == 1000
    assert (stats.accepted, stats.closed, stats.active) == (1000, 1000, 0)
    logged = len(error_records(caplog))
    assert 1 <= logged <= 20  # rate-limited: far fewer than 1000 lines
    # Still serving.
    await echo_once(addr, b"still alive")
    # Once the limiter refills, the next error says how many were dropped.
    limiter_clock.now += 3600
    await client(0)
    last = error_records(caplog)[-1]
    assert f"({1000 - logged} similar errors not logged)" in last.getMessage()
    assert server.stats.handler_errors == 1001


async def test_handler_breaking_something_else_is_a_handler_error(
    trionet_server: ServerFactory,
) -> None:
    # BrokenResourceError that did not come from the handler's own connection
    # (here: raised by hand) is a bug, not a peer reset.
    async def handler(conn: Connection) -> None:
        raise trio.BrokenResourceError("some other stream broke")

    server = await trionet_server(handler, handler_errors="log")
    with await connect(server.addresses[0]) as sock:
        await recv_until_eof(sock)
    assert (server.stats.handler_errors, server.stats.resets) == (1, 0)


async def test_protocol_error_from_the_peer_is_not_a_handler_error(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(conn: Connection) -> None:
        await conn.receive_line()

    server = await trionet_server(handler)  # handler_errors="raise"
    with await connect(server.addresses[0]) as sock:
        await sock.send(b"no newline")
        sock.shutdown(stdlib_socket.SHUT_WR)
        await recv_until_eof(sock)
    stats = server.stats
    assert (stats.protocol_errors, stats.handler_errors) == (1, 0)
    assert not error_records(caplog)


# ----------------------------------------------------------------------
# Handler errors: raise


async def test_handler_errors_raise_propagates_the_bare_exception() -> None:
    class HandlerBug(Exception):
        pass

    async def handler(conn: Connection) -> None:
        raise HandlerBug("bare please")

    listening = trio.socket.socket()
    await listening.bind(("127.0.0.1", 0))
    listening.listen()
    addr = TCPAddress(*listening.getsockname())

    async def client() -> None:
        with await connect(addr) as sock:
            await recv_until_eof(sock)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client)
            with pytest.raises(HandlerBug) as excinfo:
                await trionet.serve(handler, listening, handler_errors="raise")
    assert type(excinfo.value) is HandlerBug
    assert str(excinfo.value) == "bare please"


async def test_handler_errors_raise_through_open_server() -> None:
    async def handler(conn: Connection) -> None:
        raise KeyError("from handler")

    with trio.fail_after(10), pytest.raises(KeyError) as excinfo:
        async with trionet.open_server(handler, "tcp://127.0.0.1:0", handler_errors="raise") as s:
            with await connect(s.addresses[0]) as sock:
                await recv_until_eof(sock)
            await trio.sleep_forever()
    assert type(excinfo.value) is KeyError


# ----------------------------------------------------------------------
# Peer resets are not handler errors


BIG = b"r" * (4 * 1024 * 1024)


async def big_replies(conn: Connection) -> None:
    async for _chunk in conn:
        await conn.send_all(BIG)


async def reset_mid_reply(addr: trionet.Address) -> None:
    """Ask for a big reply, read a little of it, then close with RST."""
    with await connect(addr) as sock:
        await sock.send(b"go")
        with trio.fail_after(5):
            assert await sock.recv(100)
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, LINGER_0)


async def wait_closed(server: trionet.Server, n: int) -> None:
    with trio.fail_after(10):
        while server.stats.closed < n:
            await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("handler_errors", ["log", "raise"])
async def test_peer_reset_is_counted_not_raised(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture, handler_errors: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    server = await trionet_server(big_replies, handler_errors=handler_errors)
    for _ in range(5):
        await reset_mid_reply(server.addresses[0])
    await wait_closed(server, 5)
    stats = server.stats
    assert (stats.resets, stats.handler_errors) == (5, 0)
    assert not error_records(caplog)
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "reset" in r.getMessage()]
    assert len(debug) == 5
    # Still serving.
    with await connect(server.addresses[0]) as sock:
        await sock.send(b"again")
        with trio.fail_after(5):
            assert await sock.recv(10) == b"r" * 10


async def test_thousand_resets_mid_echo_leave_the_server_serving(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await trionet_server(big_replies, handler_errors="log")
    addr = server.addresses[0]
    start = time.monotonic()
    await in_batches(1000, 50, lambda i: reset_mid_reply(addr))
    await wait_closed(server, 1000)
    assert time.monotonic() - start < 30
    stats = server.stats
    assert stats.accepted == 1000
    assert stats.handler_errors == 0
    assert stats.resets == 1000
    assert not error_records(caplog)
    # Still serving.
    with await connect(addr) as sock:
        await sock.send(b"x")
        got = 0
        with trio.fail_after(10):
            while got < len(BIG):
                got += len(await sock.recv(1 << 20))
        assert got == len(BIG)


# ----------------------------------------------------------------------
# open_server


async def test_open_server_serves_and_drains_on_exit(
    unused_unix_path: str, network: object
) -> None:
    # A Unix socket on loopback; the virtual network has TCP only.
    bind = f"unix:{unused_unix_path}" if network is None else "tcp://127.0.0.1:0"
    async with trionet.open_server(echo, bind, shutdown_grace=2) as server:
        await echo_once(server.addresses[0])
        assert server.stats.accepted == 1
    assert server.stopped


async def test_open_server_does_not_wrap_body_exceptions() -> None:
    class BodyError(Exception):
        pass

    with pytest.raises(BodyError) as excinfo:
        async with trionet.open_server(echo, "tcp://127.0.0.1:0") as server:
            raise BodyError("mine")
    assert type(excinfo.value) is BodyError
    assert server.stopped


async def test_open_server_does_not_wrap_base_exceptions() -> None:
    class Stop(BaseException):
        pass

    with pytest.raises(Stop):
        async with trionet.open_server(echo, "tcp://127.0.0.1:0") as server:
            sock = await connect(server.addresses[0])
            raise Stop
    assert server.stopped
    assert await recv_until_eof(sock) == b""
    sock.close()


async def test_open_server_inside_a_cancelled_scope() -> None:
    with trio.CancelScope() as scope:
        async with trionet.open_server(echo, "tcp://127.0.0.1:0") as server:
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert server.stopped


async def test_invalid_options_raise_before_anything_opens(nursery: trio.Nursery) -> None:
    with pytest.raises(ValueError, match="handler_errors"):
        await nursery.start(
            functools.partial(trionet.serve, echo, "tcp://127.0.0.1:0", handler_errors="ignore")
        )
    with pytest.raises(TypeError, match="handler"):
        await nursery.start(functools.partial(trionet.serve, "not callable", "tcp://127.0.0.1:0"))


# ----------------------------------------------------------------------
# Real peers: curl (HTTP/1.1 through h11) and socat


async def http_handler(conn: Connection) -> None:
    """A tiny HTTP/1.1 server on h11: 200 "hello PATH", or 404 for /missing."""
    http = h11.Connection(h11.SERVER)

    async def next_event() -> Any:
        while True:
            event = http.next_event()
            if event is not h11.NEED_DATA:
                return event
            http.receive_data(await conn.receive_some())

    while True:
        request = await next_event()
        if isinstance(request, h11.ConnectionClosed):
            return
        assert isinstance(request, h11.Request)
        while not isinstance(await next_event(), h11.EndOfMessage):
            pass
        path = request.target.decode()
        if path == "/missing":
            status, body = 404, b"not found\n"
        else:
            status, body = 200, f"hello {path}\n".encode()
        headers = [("content-type", "text/plain"), ("content-length", str(len(body)))]
        await conn.send_all(http.send(h11.Response(status_code=status, headers=headers)))
        await conn.send_all(http.send(h11.Data(data=body)))
        await conn.send_all(http.send(h11.EndOfMessage()))
        if http.our_state is h11.MUST_CLOSE:
            return
        http.start_next_cycle()


async def run_peer(args: list[str], stdin: bytes = b"") -> bytes:
    with trio.fail_after(20):
        result = await trio.run_process(args, stdin=stdin, capture_stdout=True, capture_stderr=True)
    return result.stdout  # type: ignore[no-any-return]


@pytest.mark.peer("curl")
@pytest.mark.loopback_only("a subprocess peer (curl/socat) cannot reach the virtual network")
async def test_h11_handler_serves_curl(trionet_server: ServerFactory) -> None:
    curl = require_program("curl")
    server = await trionet_server(http_handler)
    port = port_of(server)
    out = await run_peer(
        [curl, "-s", "--max-time", "10", "-w", "|%{http_code}", f"http://127.0.0.1:{port}/hello"]
    )
    assert out == b"hello /hello\n|200"
    out = await run_peer(
        [curl, "-s", "--max-time", "10", "-w", "|%{http_code}", f"http://127.0.0.1:{port}/missing"]
    )
    assert out == b"not found\n|404"
    assert server.stats.accepted == 2


@pytest.mark.peer("curl")
@pytest.mark.loopback_only("a subprocess peer (curl/socat) cannot reach the virtual network")
async def test_h11_handler_keep_alive_with_curl(trionet_server: ServerFactory) -> None:
    curl = require_program("curl")
    server = await trionet_server(http_handler)
    port = port_of(server)
    out = await run_peer(
        [
            curl,
            "-s",
            "--max-time",
            "10",
            "-w",
            "|%{http_code} %{num_connects}\n",
            f"http://127.0.0.1:{port}/one",
            f"http://127.0.0.1:{port}/two",
        ]
    )
    # The second transfer reused the first connection (0 new connects).
    assert out == b"hello /one\n|200 1\nhello /two\n|200 0\n"
    assert server.stats.accepted == 1
    assert server.stats.handler_errors == 0


@pytest.mark.peer("curl")
@pytest.mark.loopback_only(
    "a subprocess peer (curl/socat) over a Unix socket: real filesystem and kernel"
)
async def test_h11_handler_serves_curl_over_a_unix_socket(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    curl = require_program("curl")
    await trionet_server(http_handler, f"unix:{unused_unix_path}")
    out = await run_peer(
        [curl, "-s", "--max-time", "10", "--unix-socket", unused_unix_path, "http://x/unix"]
    )
    assert out == b"hello /unix\n"


async def shout(conn: Connection) -> None:
    """Line protocol: reply to each line with it in upper case."""
    while True:
        try:
            line = await conn.receive_line()
        except IncompleteRead:
            return
        await conn.send_all(line.upper() + b"\n")


@pytest.mark.peer("socat")
@pytest.mark.loopback_only("a subprocess peer (curl/socat) cannot reach the virtual network")
async def test_socat_tcp_peer(trionet_server: ServerFactory) -> None:
    socat = require_program("socat")
    server = await trionet_server(shout)
    port = port_of(server)
    stdin = b"hello\nsocat\r\n"
    out = await run_peer([socat, "-", f"TCP:127.0.0.1:{port}"], stdin=stdin)
    assert out == b"HELLO\nSOCAT\n"
    stats = server.stats
    assert (stats.accepted, stats.closed, stats.handler_errors) == (1, 1, 0)
    assert stats.bytes_received == len(stdin)
    assert stats.bytes_sent == len(out)


@pytest.mark.peer("socat")
@pytest.mark.loopback_only("a subprocess peer (curl/socat) cannot reach the virtual network")
async def test_socat_ipv6_peer(trionet_server: ServerFactory) -> None:
    socat = require_program("socat")
    server = await trionet_server(echo, "tcp://[::1]:0")
    port = port_of(server)
    payload = uuid.uuid4().hex.encode() * 1000
    out = await run_peer([socat, "-", f"TCP6:[::1]:{port}"], stdin=payload)
    assert out == payload


@pytest.mark.peer("socat")
@pytest.mark.loopback_only(
    "a subprocess peer (curl/socat) over a Unix socket: real filesystem and kernel"
)
async def test_socat_unix_peer(trionet_server: ServerFactory, unused_unix_path: str) -> None:
    socat = require_program("socat")
    server = await trionet_server(shout, f"unix:{unused_unix_path}")
    out = await run_peer([socat, "-", f"UNIX-CONNECT:{unused_unix_path}"], stdin=b"over unix\n")
    assert out == b"OVER UNIX\n"
    assert server.stats.accepted == 1
