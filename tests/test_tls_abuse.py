"""TLS as a hostile peer (or a careless caller) uses it.

Resets mid-handshake and mid-reply, garbage after the handshake, key
updates that make a read write, cancellation storms around every wait.
Each costs one connection at most, never logs an error, and never corrupts
the record stream.  Certificates: trustme (conftest).
"""

from __future__ import annotations

import random
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable

import pytest
import trio
from conftest import port_of, require_program
from test_tls import start_source

import trionet
from trionet import services
from trionet.testing import client_first_flight, no_errors_logged, wait_until

ServerFactory = Callable[..., Awaitable[trionet.Server]]


def client_hello(client_tls: ssl.SSLContext) -> bytes:
    """The first flight of a real TLS client (to send half of it)."""
    return client_first_flight(client_tls, "localhost")


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def test_a_reset_mid_handshake_is_a_tls_failure(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await trionet_server(services.echo, tls=server_tls)
    hello = client_hello(client_tls)
    with trio.fail_after(10):
        for n, cut in enumerate((1, len(hello) // 2, len(hello)), 1):
            sock = socket.create_connection(("127.0.0.1", port_of(server)))
            sock.sendall(hello[:cut])
            await wait_until(lambda n=n: server.stats.accepted == n)  # type: ignore[misc]
            reset(sock)
        await wait_until(lambda: server.stats.tls_failures == 3)
    stats = server.stats
    assert (stats.handler_errors, stats.stage_failures, stats.active) == (0, 3, 0)
    no_errors_logged(caplog)


async def test_garbage_after_the_handshake_is_a_protocol_error_not_a_handler_error(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await trionet_server(services.echo, tls=server_tls, handler_errors="log")
    with trio.fail_after(10):
        conn = await trionet.connect(
            server.addresses[0], tls=client_tls, server_hostname="localhost"
        )
        await conn.send_all(b"fine\n")
        assert await conn.receive_line() == b"fine"
        # Bytes that are not a TLS record, straight onto the socket.
        await conn.socket.send(b"\x17\x03\x03\x00\x05garbage that is not a record")
        with pytest.raises(trio.BrokenResourceError):
            while await conn.receive_some():
                pass
        conn.close()
        await wait_until(lambda: server.stats.protocol_errors == 1)
    stats = server.stats
    assert (stats.handler_errors, stats.resets, stats.tls_failures) == (0, 0, 0)
    no_errors_logged(caplog)


async def test_a_client_resetting_mid_reply_costs_only_its_connection(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    big = b"x" * (8 << 20)

    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_line()
        await conn.send_all(big)

    server = await trionet_server(handler, tls=server_tls, handler_errors="log")
    with trio.fail_after(20):
        rude = await trionet.connect(
            server.addresses[0], tls=client_tls, server_hostname="localhost"
        )
        await rude.send_all(b"go\n")
        await rude.receive_exactly(100_000)
        rude.abort()  # RST while the server is still sending
        polite = await trionet.connect(
            server.addresses[0], tls=client_tls, server_hostname="localhost"
        )
        async with polite:
            await polite.send_all(b"go\n")
            assert await polite.receive_exactly(len(big)) == big
        await wait_until(lambda: server.stats.resets == 1)
    assert server.stats.handler_errors == 0
    no_errors_logged(caplog)


async def test_openssl_key_updates_make_a_read_write_and_the_stream_goes_on(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, tls_ca: object, tmp_path: object
) -> None:
    # s_client's "K" line sends a TLS 1.3 KeyUpdate that requests ours: the
    # server's receive must write an answer while a reply may be in flight.
    openssl = require_program("openssl")
    server = await trionet_server(services.echo, tls=server_tls)
    ca = f"{tmp_path}/ca.pem"
    tls_ca.cert_pem.write_to_path(ca)  # type: ignore[attr-defined]
    proc = await trio.lowlevel.open_process(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port_of(server)}", "-servername",
         "localhost", "-CAfile", ca, "-tls1_3", "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    seen = b""

    async def expect(word: bytes) -> None:
        nonlocal seen
        while word not in seen:
            chunk = await proc.stdout.receive_some()  # type: ignore[union-attr]
            assert chunk, seen[-500:]
            seen += chunk
        seen = seen[seen.index(word) + len(word) :]

    try:
        with trio.fail_after(10):
            for i in range(3):
                await proc.stdin.send_all(b"line-%d\n" % i)
                await expect(b"line-%d\n" % i)
                await proc.stdin.send_all(b"K\n")  # update ours, request theirs
                await expect(b"KEYUPDATE")  # (s_client says so on stderr)
            await proc.stdin.send_all(b"last\n")
            await expect(b"last\n")
    finally:
        proc.kill()
        await proc.wait()
    assert server.stats.handler_errors == server.stats.resets == 0


async def test_a_cancellation_storm_never_corrupts_the_record_stream(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # Sends and receives on both ends are cancelled at random points (before,
    # during and after their waits).  A message smaller than one encryption
    # chunk is either not sent at all or sent whole, so the receiver must
    # see whole messages in increasing order -- every completed one among
    # them -- and no TLS error, ever.
    rng = random.Random(1234)
    source = await start_source(trionet_server, server_tls)
    server, client = await source.pair(client_tls)
    completed: list[int] = []
    received: list[int] = []
    n_messages = 300

    def message(seq: int) -> bytes:
        body = bytes([seq % 251]) * rng.randrange(1, 20_000)
        return struct.pack("!II", seq, len(body)) + body

    async def sender() -> None:
        for seq in range(n_messages):
            with trio.move_on_after(rng.choice([0, 0.0001, 0.001, 1])):
                await client.send_all(message(seq))
                completed.append(seq)
        await client.send_all(struct.pack("!II", 0xFFFFFFFF, 0))

    async def receiver() -> None:
        while True:
            header = b""
            while not header:
                with trio.move_on_after(rng.choice([0, 0.0001, 0.001])):
                    # A cancelled receive_exactly keeps what it had read
                    # buffered (IncompleteRead never comes from a cancel).
                    header = await server.receive_exactly(8)
            seq, length = struct.unpack("!II", header)
            if seq == 0xFFFFFFFF:
                return
            body = await server.receive_exactly(length)
            assert body == bytes([seq % 251]) * length
            assert not received or seq > received[-1]
            received.append(seq)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(receiver)
    assert set(completed) <= set(received)
    assert len(completed) > n_messages // 4  # the storm let plenty through
    # Still a working connection both ways.
    with trio.fail_after(10):
        await server.send_all(b"after the storm\n")
        assert await client.receive_line() == b"after the storm"
    await client.aclose()


async def test_a_peer_leaving_before_the_session_tickets_is_not_a_tls_failure(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A balancer's TLS health check resets as soon as its side of the
    # handshake is done, while the server still sends its TLS 1.3 session
    # tickets.  The handshake did complete: the handler runs and meets the
    # reset like any other; it is no TLS failure.  (The reset is simulated
    # on the first flush after the handshake: the real race is too narrow
    # to hit on purpose.)
    from trionet._stream._tls import TLSConnection

    real_flush = TLSConnection._flush
    broken: list[TLSConnection] = []

    async def flush(self: TLSConnection) -> bool:
        if self._ssl.server_side and self._ssl.version() is not None and not broken:
            broken.append(self)
            raise ConnectionResetError(104, "Connection reset by peer")
        return await real_flush(self)

    monkeypatch.setattr(TLSConnection, "_flush", flush)
    seen: list[bool] = []

    async def handler(conn: trionet.Connection) -> None:
        seen.append(conn.peer_reset)
        await services.echo(conn)

    server = await trionet_server(handler, tls=server_tls)
    with trio.fail_after(10):
        conn = await trionet.connect(
            server.addresses[0], tls=client_tls, server_hostname="localhost"
        )
        async with conn:
            await conn.send_all(b"still here\n")
            assert await conn.receive_line() == b"still here"
    assert broken and seen == [True]
    stats = server.stats
    assert (stats.tls_failures, stats.stage_failures, stats.handler_errors) == (0, 0, 0)
    no_errors_logged(caplog)


async def test_a_client_ending_without_close_notify_gets_close_notify_not_a_fatal_alert(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Told of a transport end without close_notify, OpenSSL would queue a
    # fatal alert and hold the session failed.  A server reads that end as
    # b"" without telling it: the session stays whole, so the handler's end
    # still says goodbye with close_notify (a strict client reads b"").
    server = await trionet_server(services.echo, tls=server_tls)
    with trio.fail_after(10):
        conn = await trionet.connect(
            server.addresses[0], tls=client_tls, server_hostname="localhost"
        )
        await conn.send_all(b"bye\n")
        assert await conn.receive_line() == b"bye"
        conn.socket.shutdown(socket.SHUT_WR)  # the transport's end, no close_notify
        assert await conn.receive_some() == b""  # close_notify: no alert, no truncation
        conn.abort()
        await wait_until(lambda: server.stats.closed == 1)
    stats = server.stats
    assert (stats.resets, stats.protocol_errors, stats.handler_errors) == (0, 0, 0)
    no_errors_logged(caplog)
