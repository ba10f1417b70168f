"""The PROXY stage end to end: real sockets on loopback, trionet servers with PROXY binds.

Every client here plays the load balancer itself: it connects from
127.0.0.x and writes a PROXY header (hand-made bytes, ``ProxyInfo.encode()``
or ``connect(proxy_header=...)``), then talks.  The handler records what it
saw (``conn.peer``, ``conn.proxy``, ``conn.tls``), says its peer and echoes
lines.  Timeouts are real (``handshake_timeout`` of a fraction of a second):
``autojump_clock`` cannot drive real sockets.
"""

from __future__ import annotations

import logging
import resource
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import connect_tcp, port_of

import trionet
from trionet._proxy import _stage
from trionet._server import _table
from trionet._stream._preamble import receive_preamble
from trionet.testing import Shutdown, client_first_flight, wait_until

ServerFactory = Callable[..., Awaitable[trionet.Server]]

TRUSTED = ["127.0.0.0/8"]
CLIENT = trionet.TCPAddress("192.0.2.7", 51000)
DESTINATION = trionet.TCPAddress("198.51.100.1", 443)
V1_HEADER = b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\n"
V2_INFO = trionet.ProxyInfo(
    version=2,
    command="PROXY",
    client=trionet.TCPAddress("2001:db8::7", 1234),
    destination=trionet.TCPAddress("2001:db8::1", 443),
    alpn=b"h2",
    authority="example.com",
    unique_id=b"req-0001",
    ssl=trionet.ProxySSL(flags=0x05, verify=0, version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256"),
    tlvs=((0xE0, b"custom"),),
)
LOCAL_HEADER = trionet.ProxyInfo(version=2, command="LOCAL").encode()
UNKNOWN_HEADER = b"PROXY UNKNOWN\r\n"


def proxied(**options: Any) -> dict[str, Any]:
    """Server options for a PROXY bind trusting loopback."""
    return {"proxy_protocol": "required", "trusted_proxies": TRUSTED, **options}


class Reporter:
    """Records each connection, sends ``<peer>\\n``, then echoes every line."""

    def __init__(self) -> None:
        self.conns: list[trionet.Connection] = []
        self.lines: list[bytes] = []

    async def __call__(self, conn: trionet.Connection) -> None:
        self.conns.append(conn)
        await conn.send_all(f"{conn.peer}\n".encode())
        for _ in range(10_000):
            try:
                line = await conn.receive_line()
            except trionet.IncompleteRead:
                return  # the client hung up
            self.lines.append(line)
            await conn.send_all(line + b"\n")


async def client(
    server: trionet.Server, data: bytes = b"", *, index: int = 0, **options: Any
) -> trionet.Connection:
    """A trionet client of ``server`` that writes ``data`` (a header, and more) in one write."""
    conn = await trionet.connect(server.addresses[index], timeout=5, **options)
    if data:
        try:
            await conn.send_all(data)
        except trio.BrokenResourceError:
            pass  # refused already (a reset at accept): the caller checks
    return conn


async def expect_closed(conn: trionet.Connection | trio.abc.ReceiveStream) -> None:
    """The server closed (or reset) ``conn`` without a byte."""
    with trio.fail_after(5):
        try:
            data = await conn.receive_some()
        except trio.BrokenResourceError:
            data = b""
    assert data == b""


async def expect_refused_at_accept(
    server: trionet.Server, data: bytes = b"", *, index: int = 0, local_address: str = ""
) -> None:
    """A raw client from ``local_address`` is reset (or closed) at once, ``data`` sent or not.

    The reset may beat the client's own connect(): that is a refusal too.
    """
    address = server.addresses[index]
    assert isinstance(address, trionet.TCPAddress)
    sock = trio.socket.socket()
    with sock, trio.fail_after(5):
        if local_address:
            await sock.bind((local_address, 0))
        try:
            await sock.connect(("127.0.0.1", address.port))
            if data:
                await sock.send(data)
            received = await sock.recv(1024)
        except OSError:  # reset: at connect, at send or at recv
            received = b""
    assert received == b""


class Lines:
    """Line reading over any Trio receive stream (raw sockets, ``trio.SSLStream``)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = b""

    async def line(self) -> bytes:
        with trio.fail_after(5):
            while b"\n" not in self.buf:
                chunk = await self.stream.receive_some(4096)
                if not chunk:
                    raise EOFError(f"EOF after {self.buf!r}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line


# ----------------------------------------------------------------------
# Headers from a trusted proxy


async def test_a_v1_header_makes_the_client_the_peer_and_the_rest_reaches_the_handler(
    trionet_server: ServerFactory,
) -> None:
    handler = Reporter()
    server = await trionet_server(handler, **proxied())
    with trio.fail_after(10):
        conn = await client(server, V1_HEADER + b"hello\nworld\n")  # one write
        assert await conn.receive_line() == b"tcp://192.0.2.7:51000"
        assert await conn.receive_line() == b"hello"
        assert await conn.receive_line() == b"world"
        (seen,) = handler.conns
        assert seen.peer == CLIENT
        info = seen.proxy
        assert info is not None
        assert (info.version, info.command) == (1, "PROXY")
        assert info.client == CLIENT and info.destination == DESTINATION
        assert info.source == conn.local  # the kernel's peer: the "proxy"
        assert not info.has_tlvs
        assert seen.bytes_received == len(b"hello\nworld\n")  # the header is not counted
        await conn.aclose()
        await wait_until(lambda: server.stats.closed == 1)
    assert server.stats.bytes_received == len(b"hello\nworld\n")
    assert server.stats.proxy_failures == 0


async def test_a_v2_header_with_tlvs_reaches_conn_proxy_whole(
    trionet_server: ServerFactory,
) -> None:
    handler = Reporter()
    server = await trionet_server(handler, **proxied())
    with trio.fail_after(10):
        conn = await client(server, V2_INFO.encode() + b"after the header\n")
        assert await conn.receive_line() == b"tcp://[2001:db8::7]:1234"
        assert await conn.receive_line() == b"after the header"
        (seen,) = handler.conns
        assert seen.peer == V2_INFO.client
        assert seen.proxy == attrs.evolve(V2_INFO, source=conn.local)
        assert seen.proxy is not None and seen.proxy.ssl is not None
        assert seen.proxy.ssl.tls and seen.proxy.ssl.certificate_verified
        info = server.connections[0]
        assert info.peer == V2_INFO.client  # what server.connections shows, too
        await conn.aclose()


async def test_a_v2_header_with_a_checksum_is_accepted(trionet_server: ServerFactory) -> None:
    handler = Reporter()
    server = await trionet_server(handler, **proxied())
    header = trionet.ProxyInfo(version=2, client=CLIENT, destination=DESTINATION)
    from trionet._proxy._encode import encode_proxy_header

    with trio.fail_after(10):
        conn = await client(server, encode_proxy_header(header, checksum=True) + b"x\n")
        assert await conn.receive_line() == b"tcp://192.0.2.7:51000"
        assert await conn.receive_line() == b"x"
        await conn.aclose()


@pytest.mark.parametrize("header", [V1_HEADER, V2_INFO.encode()], ids=["v1", "v2"])
async def test_a_header_split_byte_by_byte_is_accepted(
    trionet_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, header: bytes
) -> None:
    reads: list[bytes] = []
    receive = receive_preamble

    async def counting(conn: trionet.Connection, max_bytes: int) -> bytes:
        data = await receive(conn, max_bytes)
        reads.append(data)
        return data

    receive_nowait = _stage.receive_preamble_nowait

    def counting_nowait(conn: trionet.Connection, max_bytes: int) -> bytes | None:
        data = receive_nowait(conn, max_bytes)
        if data is not None:
            reads.append(data)
        return data

    monkeypatch.setattr(_stage, "receive_preamble", counting)
    monkeypatch.setattr(_stage, "receive_preamble_nowait", counting_nowait)
    handler = Reporter()
    server = await trionet_server(handler, **proxied())
    with trio.fail_after(10):
        sock = await connect_tcp(port_of(server))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = trio.SocketStream(sock)
        for byte in header:  # one segment each, paced so the server reads them apart
            await stream.send_all(bytes([byte]))
            await trio.sleep(0.002)
        await stream.send_all(b"ping\n")
        lines = Lines(stream)
        peer = await lines.line()
        assert await lines.line() == b"ping"
        await stream.aclose()
    (seen,) = handler.conns
    assert seen.proxy is not None and seen.proxy.client == seen.peer
    assert peer == str(seen.peer).encode()
    assert len(reads) >= 3, reads  # the stage really read the header in pieces
    assert b"".join(reads).startswith(header)


async def test_a_header_already_there_at_accept_needs_no_wait_and_no_cancel_scope(
    trionet_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A balancer sends its header right behind the connect: at accept it has
    # arrived, and the stage finishes at once (start_stages), without the
    # deadline's cancel scope (run_stages).  A header that comes later takes
    # the waiting path.
    waited: list[int] = []
    real = _table.run_stages

    async def run_stages(rec: Any, host: Any, *args: Any) -> bool:
        waited.append(rec.conn.id)
        return await real(rec, host, *args)

    monkeypatch.setattr(_table, "run_stages", run_stages)
    handler = Reporter()
    server = await trionet_server(handler, **proxied())
    with trio.fail_after(10):
        # Connect and send in one go (no checkpoint between: the server
        # cannot accept before the header is in).
        eager = socket.create_connection(("127.0.0.1", port_of(server)))
        eager.sendall(V1_HEADER + b"now\n")
        eager_stream = trio.SocketStream(trio.socket.from_stdlib_socket(eager))
        lines = Lines(eager_stream)
        assert await lines.line() == str(CLIENT).encode()
        assert await lines.line() == b"now"
        assert waited == []
        late = trio.SocketStream(await connect_tcp(port_of(server)))
        await wait_until(lambda: server.stats.accepted == 2)
        await trio.testing.wait_all_tasks_blocked()  # its stage waits for the header
        await late.send_all(V1_HEADER + b"later\n")
        late_lines = Lines(late)
        assert await late_lines.line() == str(CLIENT).encode()
        assert await late_lines.line() == b"later"
        assert len(waited) == 1
        await eager_stream.aclose()
        await late.aclose()


# ----------------------------------------------------------------------
# PROXY, then TLS


async def test_proxy_then_tls_with_connect_proxy_header(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    handler = Reporter()
    server = await trionet_server(
        handler, trionet.Bind("tcp://127.0.0.1:0", tls=server_tls, **proxied())
    )
    (bind,) = server.binds
    assert bind.uses_tls and bind.uses_proxy_protocol
    header = trionet.ProxyInfo(version=2, client=CLIENT, destination=DESTINATION)
    with trio.fail_after(10):
        conn = await trionet.connect(
            server.addresses[0],
            tls=client_tls,
            server_hostname="localhost",
            proxy_header=header,
            timeout=5,
        )
        assert await conn.receive_line() == b"tcp://192.0.2.7:51000"
        await conn.send_all(b"over tls\n")
        assert await conn.receive_line() == b"over tls"
        assert conn.bytes_sent == len(b"over tls\n")  # the header is not counted
        (seen,) = handler.conns
        assert seen.tls is not None and seen.tls.server_name == "localhost"
        assert seen.peer == CLIENT
        assert seen.proxy == attrs.evolve(header, source=conn.local)
        await conn.aclose()
    assert (server.stats.tls_failures, server.stats.proxy_failures) == (0, 0)


class PrefixedStream(trio.abc.Stream):
    """Writes ``prefix`` in front of the first write, and records every write."""

    def __init__(self, inner: trio.SocketStream, prefix: bytes) -> None:
        self.inner = inner
        self.prefix = prefix
        self.writes: list[bytes] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        chunk = self.prefix + bytes(data)
        self.prefix = b""
        self.writes.append(chunk)
        await self.inner.send_all(chunk)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_proxy_header_and_client_hello_in_one_segment(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # What the PROXY stage read past the header is the ClientHello: it must
    # go back in front of the stream for the TLS stage.
    handler = Reporter()
    server = await trionet_server(
        handler, trionet.Bind("tcp://127.0.0.1:0", tls=server_tls, **proxied())
    )
    with trio.fail_after(10):
        raw = trio.SocketStream(await connect_tcp(port_of(server)))
        transport = PrefixedStream(raw, V1_HEADER)
        tls = trio.SSLStream(transport, client_tls, server_hostname="localhost")
        await tls.do_handshake()
        first = transport.writes[0]
        assert first.startswith(V1_HEADER) and first[len(V1_HEADER)] == 0x16  # + ClientHello
        lines = Lines(tls)
        assert await lines.line() == b"tcp://192.0.2.7:51000"
        await tls.send_all(b"secret\n")
        assert await lines.line() == b"secret"
        await tls.aclose()
    (seen,) = handler.conns
    assert seen.tls is not None and seen.peer == CLIENT
    assert seen.proxy is not None and seen.proxy.version == 1


async def test_plain_text_after_the_header_on_a_tls_bind_is_a_tls_failure(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext
) -> None:
    handler = Reporter()
    server = await trionet_server(
        handler, trionet.Bind("tcp://127.0.0.1:0", tls=server_tls, **proxied())
    )
    with trio.fail_after(10):
        conn = await client(server, V1_HEADER + b"GET / HTTP/1.0\r\n\r\n")
        try:
            for _ in range(100):  # a TLS alert, then EOF
                if not await conn.receive_some():
                    break
        except trio.BrokenResourceError:
            pass
        await wait_until(lambda: server.stats.stage_failures == 1)
    stats = server.stats
    assert (stats.tls_failures, stats.proxy_failures, stats.handler_errors) == (1, 0, 0)
    assert handler.conns == []
    conn.close()


# ----------------------------------------------------------------------
# LOCAL and UNKNOWN: the proxy's own connections


@pytest.mark.parametrize(
    ("header", "version", "command"),
    [(LOCAL_HEADER, 2, "LOCAL"), (UNKNOWN_HEADER, 1, "PROXY")],
    ids=["v2-LOCAL", "v1-UNKNOWN"],
)
async def test_local_and_unknown_keep_the_proxy_as_the_peer(
    trionet_server: ServerFactory, header: bytes, version: int, command: str
) -> None:
    handler = Reporter()
    server = await trionet_server(handler, **proxied())
    with trio.fail_after(10):
        conn = await client(server, header + b"health?\n")
        assert await conn.receive_line() == str(conn.local).encode()
        assert await conn.receive_line() == b"health?"
        (seen,) = handler.conns
        assert seen.peer == conn.local  # the proxy itself
        info = seen.proxy
        assert info is not None
        assert (info.version, info.command) == (version, command)
        assert info.client is None and info.destination is None and info.is_local
        assert info.source == conn.local
        await conn.aclose()


async def test_conn_proxy_is_none_on_a_plain_bind(trionet_server: ServerFactory) -> None:
    handler = Reporter()
    server = await trionet_server(handler)
    with trio.fail_after(10):
        conn = await client(server, V1_HEADER)  # just bytes here
        assert await conn.receive_line() == str(conn.local).encode()
        assert await conn.receive_line() == V1_HEADER.rstrip(b"\r\n")
        (seen,) = handler.conns
        assert seen.proxy is None and seen.peer == conn.local
        await conn.aclose()


# ----------------------------------------------------------------------
# Untrusted sources


@pytest.mark.parametrize("data", [b"", V1_HEADER + b"hi\n"], ids=["silent", "with-header"])
async def test_an_untrusted_source_is_refused_header_or_not(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    handler = Reporter()
    server = await trionet_server(
        handler, proxy_protocol="required", trusted_proxies=["127.0.0.2/32"]
    )
    with trio.fail_after(10):
        await expect_refused_at_accept(server, data)  # from 127.0.0.1
        await wait_until(lambda: server.stats.proxy_failures == 1)
    stats = server.stats
    assert stats.accepted == 0 and stats.stage_failures == 0  # refused at accept
    assert (stats.rejected_access, stats.rejected_limit) == (0, 0)
    assert handler.conns == []
    assert any("not among its trusted_proxies" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_bind_trusting_a_network_accepts_a_proxy_inside_it_only(
    trionet_server: ServerFactory,
) -> None:
    handler = Reporter()
    server = await trionet_server(
        handler,
        trionet.Bind("tcp://127.0.0.1:0", **proxied()),
        trionet.Bind(
            "tcp://127.0.0.1:0", proxy_protocol="required", trusted_proxies=["127.0.0.5/32"]
        ),
    )
    with trio.fail_after(10):
        near = await client(server, V1_HEADER, index=0, local_address="127.0.0.5")
        assert await near.receive_line() == b"tcp://192.0.2.7:51000"
        assert handler.conns[0].proxy is not None
        assert handler.conns[0].proxy.source == near.local
        assert near.local == trionet.TCPAddress("127.0.0.5", near.local.port)  # type: ignore[union-attr]
        exact = await client(server, V1_HEADER, index=1, local_address="127.0.0.5")
        assert await exact.receive_line() == b"tcp://192.0.2.7:51000"
        await expect_refused_at_accept(server, V1_HEADER, index=1, local_address="127.0.0.6")
        await wait_until(lambda: server.stats.proxy_failures == 1)
    assert server.stats.accepted == 2 and len(handler.conns) == 2
    for conn in (near, exact):
        await conn.aclose()


# ----------------------------------------------------------------------
# Garbage and silence


GARBAGE = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="client-hello"),
    pytest.param(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-bad-protocol"),
    pytest.param(b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n", id="v1-bad-address"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n", id="v1-bad-port"),
    pytest.param(b"PROXY " + b"1" * 120, id="v1-no-crlf"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + b"\0" * 12, id="v2-bad-signature"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + b"\0" * 12, id="v2-bad-version"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIT\n\x21\x21\x00\x0c" + b"\0" * 12, id="v2-short-block"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_garbage_costs_its_connection_only_at_once_and_logs_at_debug(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    handler = Reporter()
    server = await trionet_server(handler, **proxied(handshake_timeout=30.0))
    with trio.fail_after(10):
        good = await client(server, V1_HEADER)  # an established client
        assert await good.receive_line() == b"tcp://192.0.2.7:51000"
        started = trio.current_time()
        bad = await client(server, garbage)
        await expect_closed(bad)
        assert trio.current_time() - started < 5.0  # not at the 30 s timeout
        await wait_until(lambda: server.stats.proxy_failures == 1)
        await good.send_all(b"still here\n")
        assert await good.receive_line() == b"still here"
    stats = server.stats
    assert (stats.proxy_failures, stats.stage_failures, stats.tls_failures) == (1, 1, 0)
    assert (stats.handler_errors, stats.rejected_access) == (0, 0)
    assert len(handler.conns) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    (failure,) = [r for r in caplog.records if "proxy stage failed" in r.getMessage()]
    assert failure.levelno == logging.DEBUG
    for conn in (good, bad):
        await conn.aclose()


async def test_a_silent_trusted_client_is_dropped_at_the_handshake_timeout(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet")
    handler = Reporter()
    server = await trionet_server(handler, **proxied(handshake_timeout=0.5))
    with trio.fail_after(10):
        started = trio.current_time()  # before connecting: the server's clock starts later
        silent = await client(server)
        await expect_closed(silent)
        elapsed = trio.current_time() - started
    assert 0.5 <= elapsed < 2.5
    stats = server.stats
    assert (stats.proxy_failures, stats.stage_failures, stats.closed) == (1, 1, 1)
    assert handler.conns == []
    assert any("proxy stage timed out after 0.5 s" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    silent.close()


async def test_a_trickling_header_is_dropped_at_the_handshake_timeout_too(
    trionet_server: ServerFactory,
) -> None:
    handler = Reporter()
    server = await trionet_server(handler, **proxied(handshake_timeout=0.5))
    with trio.fail_after(10):
        started = trio.current_time()
        sock = await connect_tcp(port_of(server))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = trio.SocketStream(sock)
        sent = 0
        try:
            for byte in V1_HEADER[:-1]:  # a valid beginning, one byte per 100 ms
                await stream.send_all(bytes([byte]))
                sent += 1
                with trio.move_on_after(0.1):
                    if not await stream.receive_some():
                        break  # dropped
        except trio.BrokenResourceError:
            pass
        elapsed = trio.current_time() - started
        await stream.aclose()
    assert 0.5 <= elapsed < 2.5
    assert sent < len(V1_HEADER) - 1  # dropped before the header could finish
    await wait_until(lambda: server.stats.proxy_failures == 1)
    assert handler.conns == []


# ----------------------------------------------------------------------
# Admission after the header, on the original client


async def test_the_access_policy_judges_the_original_client(
    trionet_server: ServerFactory,
) -> None:
    policy = trionet.AccessPolicy(allow=["127.0.0.0/8", "192.0.2.0/24"], deny=["192.0.2.66/32"])
    handler = Reporter()
    server = await trionet_server(handler, access=policy, **proxied())
    denied = trionet.ProxyInfo(
        version=2, client=trionet.TCPAddress("192.0.2.66", 1), destination=DESTINATION
    )
    with trio.fail_after(10):
        refused = await client(server, denied.encode())
        await expect_closed(refused)
        await wait_until(lambda: server.stats.rejected_access == 1)
        allowed = await client(server, V1_HEADER)
        assert await allowed.receive_line() == b"tcp://192.0.2.7:51000"
        local = await client(server, LOCAL_HEADER)  # judged as the proxy: 127.0.0.1
        assert await local.receive_line() == str(local.local).encode()
    stats = server.stats
    assert (stats.rejected_access, stats.proxy_failures, stats.stage_failures) == (1, 0, 0)
    assert stats.accepted == 3 and len(handler.conns) == 2
    for conn in (refused, allowed, local):
        await conn.aclose()


async def test_on_a_proxy_and_tls_bind_a_refused_client_costs_no_handshake(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # The gate runs right after the PROXY stage, before TLS: a client the
    # access policy refuses gets no ServerHello (no key exchange spent on it).
    policy = trionet.AccessPolicy(deny=["192.0.2.66/32"])
    handler = Reporter()
    server = await trionet_server(
        handler, trionet.Bind("tcp://127.0.0.1:0", tls=server_tls, **proxied()), access=policy
    )
    denied = trionet.ProxyInfo(
        version=2, client=trionet.TCPAddress("192.0.2.66", 1), destination=DESTINATION
    )
    hello = client_first_flight(client_tls, "localhost")
    with trio.fail_after(10):
        sock = await connect_tcp(port_of(server))
        with sock:
            await sock.send(denied.encode() + hello)  # header and ClientHello in one segment
            try:
                answer = await sock.recv(65536)
            except ConnectionResetError:
                answer = b""
            assert answer == b"", "a refused client got a TLS answer"
        await wait_until(lambda: server.stats.rejected_access == 1)
    stats = server.stats
    assert (stats.tls_failures, stats.proxy_failures, stats.stage_failures) == (0, 0, 0)
    assert not handler.conns


async def test_for_local_headers_the_gate_judges_the_proxy(
    trionet_server: ServerFactory,
) -> None:
    # The proxy itself (127.0.0.1) is not allowed: its clients are, its own
    # LOCAL connections are not.
    policy = trionet.AccessPolicy(allow=["192.0.2.0/24"])
    handler = Reporter()
    server = await trionet_server(handler, access=policy, **proxied())
    with trio.fail_after(10):
        relayed = await client(server, V1_HEADER)
        assert await relayed.receive_line() == b"tcp://192.0.2.7:51000"
        local = await client(server, LOCAL_HEADER)
        await expect_closed(local)
        unknown = await client(server, UNKNOWN_HEADER)
        await expect_closed(unknown)
        await wait_until(lambda: server.stats.rejected_access == 2)
    assert server.stats.proxy_failures == 0 and len(handler.conns) == 1
    for conn in (relayed, local, unknown):
        await conn.aclose()


def header_from(host: str, port: int) -> bytes:
    return trionet.ProxyInfo(
        version=1, client=trionet.TCPAddress(host, port), destination=DESTINATION
    ).encode()


async def test_max_connections_per_host_counts_original_clients(
    trionet_server: ServerFactory,
) -> None:
    handler = Reporter()
    server = await trionet_server(handler, max_connections_per_host=1, **proxied())
    with trio.fail_after(10):
        first = await client(server, header_from("192.0.2.7", 1))
        assert await first.receive_line() == b"tcp://192.0.2.7:1"
        other = await client(server, header_from("192.0.2.8", 1))  # the same proxy
        assert await other.receive_line() == b"tcp://192.0.2.8:1"
        again = await client(server, header_from("192.0.2.7", 2))
        await expect_closed(again)
        await wait_until(lambda: server.stats.rejected_limit == 1)
        # LOCAL: the proxy is the host; one at a time.
        local = await client(server, LOCAL_HEADER)
        assert await local.receive_line() == str(local.local).encode()
        second_local = await client(server, LOCAL_HEADER)
        await expect_closed(second_local)
        await wait_until(lambda: server.stats.rejected_limit == 2)
        # A client's slot comes back when it leaves.
        await first.aclose()
        await wait_until(lambda: server.stats.closed >= 3)
        back = await client(server, header_from("192.0.2.7", 3))
        assert await back.receive_line() == b"tcp://192.0.2.7:3"
    stats = server.stats
    assert (stats.rejected_access, stats.proxy_failures) == (0, 0)
    assert len(handler.conns) == 4
    for conn in (other, again, local, second_local, back):
        await conn.aclose()


# ----------------------------------------------------------------------
# Per bind, server-wide, and the checks at call time


async def test_a_proxy_bind_next_to_a_plain_one(trionet_server: ServerFactory) -> None:
    handler = Reporter()
    server = await trionet_server(
        handler,
        trionet.Bind("tcp://127.0.0.1:0", proxy_protocol="required", trusted_proxies=TRUSTED),
        "tcp://127.0.0.1:0",
    )
    proxy_bind, plain_bind = server.binds
    assert proxy_bind.uses_proxy_protocol and proxy_bind.trusted_proxies == ("127.0.0.0/8",)
    assert not plain_bind.uses_proxy_protocol
    with trio.fail_after(10):
        relayed = await client(server, V1_HEADER, index=0)
        assert await relayed.receive_line() == b"tcp://192.0.2.7:51000"
        plain = await client(server, b"hello\n", index=1)
        assert await plain.receive_line() == str(plain.local).encode()
        assert await plain.receive_line() == b"hello"
    assert handler.conns[0].proxy is not None and handler.conns[1].proxy is None
    for conn in (relayed, plain):
        await conn.aclose()


async def test_server_wide_proxy_protocol_with_a_bind_opting_out(
    trionet_server: ServerFactory,
) -> None:
    handler = Reporter()
    server = await trionet_server(
        handler,
        "tcp://127.0.0.1:0",
        trionet.Bind("tcp://127.0.0.1:0", proxy_protocol="off"),
        **proxied(),
    )
    proxy_bind, plain_bind = server.binds
    assert proxy_bind.uses_proxy_protocol and proxy_bind.trusted_proxies == ("127.0.0.0/8",)
    assert plain_bind.proxy_protocol == "off"
    with trio.fail_after(10):
        relayed = await client(server, V1_HEADER, index=0)
        assert await relayed.receive_line() == b"tcp://192.0.2.7:51000"
        plain = await client(server, b"hello\n", index=1)
        assert await plain.receive_line() == str(plain.local).encode()
        garbage = await client(server, b"hello\n", index=0)
        await expect_closed(garbage)
        await wait_until(lambda: server.stats.proxy_failures == 1)
    for conn in (relayed, plain, garbage):
        await conn.aclose()


class NoIO(trio.abc.SocketFactory, trio.abc.HostnameResolver):
    """Installed while a refused call runs: any socket or lookup is a failure."""

    def __init__(self) -> None:
        self.used: list[str] = []

    def socket(
        self, family: int | None = None, type: int | None = None, proto: int | None = None
    ) -> Any:
        self.used.append("socket")
        raise AssertionError("a socket was made before the options were checked")

    async def getaddrinfo(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        self.used.append("getaddrinfo")
        raise AssertionError("a name was resolved before the options were checked")

    async def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        self.used.append("getnameinfo")
        raise AssertionError("a name was resolved before the options were checked")


@pytest.fixture
async def no_io() -> AsyncIterator[NoIO]:
    guard = NoIO()
    previous_factory = trio.socket.set_custom_socket_factory(guard)
    previous_resolver = trio.socket.set_custom_hostname_resolver(guard)
    try:
        yield guard
    finally:
        trio.socket.set_custom_socket_factory(previous_factory)
        trio.socket.set_custom_hostname_resolver(previous_resolver)
    assert guard.used == []


async def refused_at_call_time(call: Awaitable[Any], error: type[Exception]) -> str:
    """``call``'s message, checking it raised ``error`` before its first checkpoint."""
    with trio.CancelScope() as scope:
        scope.cancel()  # any checkpoint before the check raises Cancelled instead
        with pytest.raises(error) as info:
            await call
    assert not scope.cancelled_caught, "a checkpoint came before the check"
    assert type(info.value) is error
    return str(info.value)


async def handler_never_run(conn: trionet.Connection) -> None:  # pragma: no cover
    raise AssertionError("served")


@pytest.mark.parametrize(
    ("binds", "options"),
    [
        (["tcp://127.0.0.1:0"], {"proxy_protocol": "required"}),
        (
            [trionet.Bind("tcp://127.0.0.1:0", trusted_proxies=[])],
            {"proxy_protocol": "required", "trusted_proxies": TRUSTED},
        ),
    ],
    ids=["server-wide", "bind-trusts-nobody"],
)
async def test_required_without_trusted_proxies_is_refused_before_any_socket(
    no_io: NoIO, binds: list[Any], options: dict[str, Any]
) -> None:
    message = await refused_at_call_time(
        trionet.serve(handler_never_run, *binds, **options), ValueError
    )
    assert message.startswith("serve(): Bind('tcp://127.0.0.1:0'): proxy_protocol='required'")
    assert "trusted_proxies" in message


def test_a_bind_requiring_proxy_without_trusted_proxies_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^Bind\('tcp://127.0.0.1:0'\): .*trusted_proxies"):
        trionet.Bind("tcp://127.0.0.1:0", proxy_protocol="required", trusted_proxies=[])
    # None: the server's trusted_proxies apply (checked by serve()).
    bind = trionet.Bind("tcp://127.0.0.1:0", proxy_protocol="required")
    assert bind.trusted_proxies is None


async def test_a_unix_bind_needs_no_trusted_proxies(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    handler = Reporter()
    server = await trionet_server(handler, f"unix:{unused_unix_path}", proxy_protocol="required")
    assert server.binds[0].uses_proxy_protocol and server.binds[0].trusted_proxies == ()
    with trio.fail_after(10):
        conn = await trionet.connect(f"unix:{unused_unix_path}", proxy_header=V2_INFO, timeout=5)
        assert await conn.receive_line() == b"tcp://[2001:db8::7]:1234"
        (seen,) = handler.conns
        assert seen.proxy is not None and isinstance(seen.proxy.source, trionet.UnixAddress)
        await conn.aclose()


def ipv6_dual_stack_socket() -> socket.socket:
    """A listening ``[::]`` socket that takes IPv4 too; skips if IPv6 is unavailable."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError as exc:
        pytest.skip(f"IPv6 is unavailable on this host: {exc}")
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        sock.listen(16)
    except OSError as exc:
        sock.close()
        pytest.skip(f"IPv6 is unavailable on this host: {exc}")
    return sock


@pytest.mark.parametrize(
    ("trusted", "admitted"), [(["127.0.0.0/8"], True), (["127.0.0.2/32"], False)]
)
async def test_an_ipv4_mapped_source_matches_ipv4_trusted_proxies(
    trionet_server: ServerFactory, trusted: list[str], admitted: bool
) -> None:
    listener = ipv6_dual_stack_socket()
    handler = Reporter()
    server = await trionet_server(
        handler, listener, proxy_protocol="required", trusted_proxies=trusted
    )
    port = port_of(server)
    with trio.fail_after(10):
        if not admitted:
            await expect_refused_at_accept(server, V1_HEADER)  # from 127.0.0.1
            await wait_until(lambda: server.stats.proxy_failures == 1)
            assert handler.conns == [] and server.stats.accepted == 0
            return
        conn = await trionet.connect(("127.0.0.1", port), timeout=5)
        await conn.send_all(V1_HEADER)
        assert await conn.receive_line() == b"tcp://192.0.2.7:51000"
        (seen,) = handler.conns
        assert seen.proxy is not None
        source = seen.proxy.source
        assert isinstance(source, trionet.TCPAddress)
        assert source.host == "::ffff:127.0.0.1"
        assert source.port == conn.local.port  # type: ignore[union-attr]
        await conn.aclose()


# ----------------------------------------------------------------------
# A drain while connections wait for their header


async def test_a_drain_closes_connections_in_the_proxy_stage(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    async def parked(conn: trionet.Connection) -> None:
        await conn.send_all(f"{conn.peer}\n".encode())
        await conn.draining.wait()

    server = await trionet_server(parked, **proxied())
    with trio.fail_after(10):
        silent = [await client(server) for _ in range(2)]
        half = await client(server, V1_HEADER[:10])  # a valid beginning, no more
        served = await client(server, V1_HEADER)
        assert await served.receive_line() == b"tcp://192.0.2.7:51000"
        await wait_until(lambda: len(server.connections) == 4)
        report = await Shutdown(nursery, server, grace=5.0).wait()
        for conn in (*silent, half):
            await expect_closed(conn)
    assert (report.finished, report.cancelled, report.in_stages) == (1, 0, 3)
    assert report.elapsed < 2.0
    assert (server.stats.proxy_failures, server.stats.stage_failures) == (0, 0)
    for conn in (*silent, half, served):
        await conn.aclose()


# ----------------------------------------------------------------------
# Abuse


@pytest.fixture
def descriptors() -> Iterator[int]:
    """Room for ~2000 descriptors (the soft limit raised within the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield min(soft, wanted) if soft != resource.RLIM_INFINITY else wanted
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


SILENT = 500


async def test_silent_connections_are_dropped_at_the_timeout_while_traffic_flows(
    trionet_server: ServerFactory, descriptors: int
) -> None:
    if descriptors < 2 * SILENT + 200:  # pragma: no cover - the hard limit is tiny
        pytest.fail(f"the process may open only {descriptors} descriptors")
    timeout = 2.0
    handler = Reporter()
    server = await trionet_server(handler, **proxied(handshake_timeout=timeout))
    port = port_of(server)
    drops: list[tuple[float, float]] = []  # (when, seconds after that client's connect)
    sessions: list[tuple[float, float]] = []  # (ended at, seconds it took)
    sockets: list[trio.socket.SocketType] = []

    async def watch(sock: trio.socket.SocketType, started: float) -> None:
        try:
            data = await sock.recv(1024)  # nothing is ever sent to a silent client
        except OSError:  # reset
            data = b""
        assert data == b""
        now = trio.current_time()
        drops.append((now, now - started))

    async def one_session(n: int) -> None:
        started = trio.current_time()
        with trio.fail_after(1.0):
            conn = await client(server, header_from("192.0.2.9", n) + b"ping\n")
            assert await conn.receive_line() == f"tcp://192.0.2.9:{n}".encode()
            assert await conn.receive_line() == b"ping"
            await conn.aclose()
        ended = trio.current_time()
        sessions.append((ended, ended - started))

    with trio.fail_after(timeout + 20):
        async with trio.open_nursery() as nursery:
            for _ in range(SILENT):
                started = trio.current_time()
                sock = await connect_tcp(port)
                sockets.append(sock)
                nursery.start_soon(watch, sock, started)
            all_connected = trio.current_time()
            for n in range(1, 5001):  # real traffic while the silent ones wait
                if len(drops) == SILENT:
                    break
                await one_session(n)
    for sock in sockets:
        sock.close()
    await wait_until(lambda: server.stats.proxy_failures == SILENT)
    assert len(drops) == SILENT
    first_drop = min(when for when, _ in drops)
    assert min(took for _, took in drops) >= timeout  # none before its timeout
    assert max(took for _, took in drops) < timeout + 3.0  # every one at about its timeout
    meanwhile = [s for s in sessions if all_connected <= s[0] <= first_drop]
    assert len(meanwhile) >= 10, (len(sessions), all_connected - first_drop)
    assert max(took for _, took in sessions) < 1.0
    stats = server.stats
    assert stats.stage_failures == SILENT and stats.handler_errors == 0
    assert stats.accepted == SILENT + len(sessions) == SILENT + len(handler.conns)


def proxy_failures_reach(server: trionet.Server, count: int) -> Callable[[], bool]:
    return lambda: server.stats.proxy_failures >= count


async def test_each_garbage_header_costs_one_connection(
    trionet_server: ServerFactory,
) -> None:
    handler = Reporter()
    server = await trionet_server(handler, **proxied(handshake_timeout=30.0))
    garbage = [param.values[0] for param in GARBAGE] * 10
    with trio.fail_after(20):
        good = await client(server, V1_HEADER)
        assert await good.receive_line() == b"tcp://192.0.2.7:51000"
        for n, data in enumerate(garbage):
            assert isinstance(data, bytes)
            bad = await client(server, data)
            await expect_closed(bad)
            bad.close()
            await wait_until(proxy_failures_reach(server, n + 1))
            await good.send_all(b"%d\n" % n)
            assert await good.receive_line() == b"%d" % n
    stats = server.stats
    assert stats.proxy_failures == stats.stage_failures == len(garbage)
    assert stats.accepted == len(garbage) + 1 and len(handler.conns) == 1
    assert stats.handler_errors == 0
    await good.aclose()


# ----------------------------------------------------------------------
# connect(proxy_header=...)


async def test_connect_proxy_header_bytes_round_trips(trionet_server: ServerFactory) -> None:
    handler = Reporter()
    server = await trionet_server(handler, **proxied())
    header = b"PROXY TCP6 2001:db8::9 2001:db8::1 40000 80\r\n"
    with trio.fail_after(10):
        conn = await trionet.connect(server.addresses[0], proxy_header=header, timeout=5)
        assert conn.bytes_sent == 0
        assert await conn.receive_line() == b"tcp://[2001:db8::9]:40000"
        await conn.send_all(b"x\n")
        assert await conn.receive_line() == b"x"
        (seen,) = handler.conns
        assert seen.proxy is not None and seen.proxy.version == 1
        assert seen.proxy.destination == trionet.TCPAddress("2001:db8::1", 80)
        await conn.aclose()


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (42, TypeError),
        ("PROXY UNKNOWN\r\n", TypeError),
        (b"hello", ValueError),
        (b"PROXY TCP4 192.0.2.1", ValueError),  # a beginning only
        (b"PROXY UNKNOWN\r\nmore", ValueError),  # more than one header
        (b"", ValueError),
    ],
)
async def test_a_bad_proxy_header_is_refused_at_call_time(
    no_io: NoIO, value: object, error: type[Exception]
) -> None:
    message = await refused_at_call_time(
        trionet.connect("tcp://127.0.0.1:9", proxy_header=value),  # type: ignore[arg-type]
        error,
    )
    assert message.startswith("connect(): proxy_header"), message
