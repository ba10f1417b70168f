"""Hostile tests: cancelled TLS sends (``_unsent``) and the server's lenient EOF.

A ``send_all`` cancelled half-way through a record keeps the rest of that
record (``TLSTransport._unsent``) for the next flush, so the peer reads
exactly the application bytes ``bytes_sent`` counted -- an unknown prefix of
each cancelled send, then the later sends intact -- and the connection goes
on.  A server reads a transport EOF without close_notify as ``b""`` without
telling OpenSSL, so its reply and its close_notify still go out.

Every check here is exact: the sender records how far ``bytes_sent`` moved
in each (possibly cancelled) attempt, and the receiver must read precisely
the concatenation of those prefixes, then ``b""`` (close_notify; a strict
client would raise on a truncated stream).
"""

from __future__ import annotations

import random
import socket
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trio
from conftest import proxy_sockets

import trionet

ServerFactory = Callable[..., Awaitable[trionet.Server]]

# A running pattern: any slice of it tells where it came from.
PATTERN = bytes(range(251)) * ((5 << 20) // 251 + 1)
MIB = 1 << 20
# Bytes PATTERN never holds (0xff..0xfb are not in range(251)): an end marker.
END = b"\xff\xfe\xfd\xfc\xfb"


async def read_to_end(conn: trionet.Connection, pause: float = 0.0) -> bytes:
    """Everything until b"" (close_notify on a client: a truncation raises)."""
    got = bytearray()
    while True:
        chunk = await conn.receive_some(65536)
        if not chunk:
            return bytes(got)
        got += chunk
        if pause:
            await trio.sleep(pause)


async def storm(
    conn: trionet.Connection, rng: random.Random, rounds: int, deadline: float = 0.002
) -> bytes:
    """Sends of random slices under random deadlines; what the peer must read.

    ``bytes_sent`` counts what was encrypted: it goes out, cancelled or not.
    """
    expected = bytearray()
    for _ in range(rounds):
        start = rng.randrange(0, len(PATTERN) - MIB)
        data = PATTERN[start : start + rng.randrange(1, MIB)]
        before = conn.bytes_sent
        with trio.move_on_after(rng.choice([0, 0.00005, 0.0005, deadline])):
            await conn.send_all(data)
        moved = conn.bytes_sent - before
        assert 0 <= moved <= len(data)
        expected += data[:moved]
    return bytes(expected)


def connect(server: trionet.Server, client_tls: ssl.SSLContext) -> Awaitable[trionet.Connection]:
    return trionet.connect(server.addresses[0], tls=client_tls, server_hostname="localhost")


# ----------------------------------------------------------------------
# 1. Cancelled sends: the record stream stays whole


@pytest.mark.parametrize("path", ["fast", "descriptor-less"])
async def test_a_client_send_storm_delivers_exactly_the_counted_prefixes(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    path: str,
) -> None:
    rng = random.Random(7)
    received: list[bytes] = []
    done = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        # A slow reader at first, so the client's sends block mid-record.
        received.append(await read_to_end(conn, pause=0.001))
        await conn.send_all(b"ok\n")
        done.set()

    with trio.fail_after(20):
        if path == "fast":
            server = await trionet_server(handler, tls=server_tls)
            client = await connect(server, client_tls)
        else:
            with proxy_sockets():
                server = await trionet_server(handler, tls=server_tls)
                client = await connect(server, client_tls)
        expected = await storm(client, rng, rounds=40)
        tail = PATTERN[:12345]
        await client.send_all(tail)  # a whole send after the storm
        expected += tail
        # aclose() sends close_notify: the server reads b"" after the last byte.
        await client.aclose()
        await done.wait()
    (got,) = received
    assert len(got) == len(expected)
    assert got == expected
    assert server.stats.handler_errors == server.stats.protocol_errors == 0


async def test_a_server_send_storm_with_a_concurrent_reader_keeps_both_streams_whole(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # The server's handler reads in one task while its sends are cancelled
    # in another; the client sends to it meanwhile.  Both directions must
    # arrive exact.  (The client ends its side -- at the TCP level, the
    # server is lenient -- only once it has read the server's end marker:
    # a close with full buffers after a lenient EOF is its own test below.)
    rng = random.Random(11)
    sent_by_server: list[bytes] = []
    read_by_server: list[bytes] = []

    async def handler(conn: trionet.Connection) -> None:
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                read_by_server.append(await read_to_end(conn))

            nursery.start_soon(reader)
            sent_by_server.append(await storm(conn, rng, rounds=30) + END)
            await conn.send_all(END)

    server = await trionet_server(handler, tls=server_tls)
    with trio.fail_after(20):
        client = await connect(server, client_tls)
        upload = PATTERN[1000 : 1000 + 3 * MIB]
        got = bytearray()
        async with trio.open_nursery() as nursery:

            async def download() -> None:
                while not got.endswith(END):
                    chunk = await client.receive_some(65536)
                    assert chunk, "the server ended before its marker"
                    got.extend(chunk)
                    await trio.sleep(0.0005)  # a slow reader: the sends block

            nursery.start_soon(download)
            await client.send_all(upload)
        client.socket.shutdown(socket.SHUT_WR)
        assert await client.receive_some() == b""  # close_notify
        client.close()
    assert [bytes(got)] == sent_by_server
    assert read_by_server == [upload]
    assert server.stats.handler_errors == server.stats.protocol_errors == 0


# ----------------------------------------------------------------------
# 2. Closing right after a cancelled send


async def cancelled_reply_then_return(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    half_close: bool,
) -> tuple[bytes, bytes]:
    """A reply cancelled with the socket buffers full, then the handler returns.

    Small buffers make it deterministic: the cancelled send leaves ciphertext
    in ``_unsent`` that cannot go out without waiting.  Returns (what the
    client read before b"", what ``bytes_sent`` counted).
    """
    expected: list[bytes] = []
    replied = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        if half_close:
            assert await read_to_end(conn) == b"go\n"  # the lenient EOF
        else:
            await conn.receive_line()
        data = PATTERN[: 4 * MIB]
        with trio.move_on_after(0.1):
            await conn.send_all(data)
        expected.append(data[: conn.bytes_sent])
        replied.set()
        # The handler returns: the server closes in order (a linger if the
        # peer's EOF was not seen).

    server = await trionet_server(handler, tls=server_tls, close_linger=5)
    with trio.fail_after(10):
        client = await connect(server, client_tls)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        await client.send_all(b"go\n")
        if half_close:
            client.socket.shutdown(socket.SHUT_WR)
        await replied.wait()
        await trio.sleep(0.2)  # the handler has returned; its close has begun
        got = bytearray()
        try:
            while chunk := await client.receive_some(65536):
                got += chunk
        except trio.BrokenResourceError:
            got += b"<truncated: no close_notify>"
        finally:
            client.close()
    assert 0 < len(expected[0]) < 4 * MIB  # the send was cut short
    return bytes(got), expected[0]


async def test_a_linger_after_a_cancelled_send_delivers_the_counted_bytes_then_close_notify(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    got, expected = await cancelled_reply_then_return(
        trionet_server, server_tls, client_tls, half_close=False
    )
    assert len(got) == len(expected), (len(got), len(expected), got[-30:])
    assert got == expected


async def test_a_close_after_lenient_eof_and_a_cancelled_send_delivers_the_counted_bytes(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    got, expected = await cancelled_reply_then_return(
        trionet_server, server_tls, client_tls, half_close=True
    )
    assert len(got) == len(expected), (len(got), len(expected), got[-30:])
    assert got == expected


async def test_abort_after_a_cancelled_send_resets_cleanly(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    aborted = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await conn.receive_line()
        with trio.move_on_after(0.05):
            await conn.send_all(PATTERN[: 4 * MIB])
        assert conn._unsent is not None  # type: ignore[attr-defined]
        conn.abort()
        aborted.set()

    server = await trionet_server(handler, tls=server_tls)
    with trio.fail_after(10):
        client = await connect(server, client_tls)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
        await client.send_all(b"go\n")
        await aborted.wait()
        with pytest.raises(trio.BrokenResourceError):
            await read_to_end(client)
        client.close()
    assert server.stats.handler_errors == 0


# ----------------------------------------------------------------------
# 3. The pool


async def test_a_pooled_tls_connection_whose_send_was_cancelled_goes_on_whole(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    # A borrower's send is cancelled (inside its block, which ends normally):
    # the connection goes back to the pool with half a record unsent, and
    # the next borrower's bytes must follow that record intact.
    received: list[bytes] = []
    done = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(b"hello\n")
        received.append(await read_to_end(conn, pause=0.001))
        done.set()

    server = await trionet_server(handler, tls=server_tls)
    expected = bytearray()
    with trio.fail_after(15):
        async with trionet.ConnectionPool(
            server.addresses[0], tls=client_tls, server_hostname="localhost", max_size=1
        ) as pool:
            async with pool.connection() as conn:
                first = conn
                # (Reading takes the session tickets off the socket: else the
                # pool sees it readable and discards it.)
                assert await conn.receive_line() == b"hello"
                data = PATTERN[: 4 * MIB]
                with trio.move_on_after(0.02):
                    await conn.send_all(data)
                expected += data[: conn.bytes_sent]
            async with pool.connection() as conn:
                reused = conn is first
                tail = PATTERN[7:5007]
                await conn.send_all(tail)
                expected += tail
        await done.wait()
    assert reused
    assert 0 < len(expected) - 5000 < 4 * MIB
    assert received == [bytes(expected)]


# ----------------------------------------------------------------------
# 4. The server's lenient EOF


async def half_closed_exchange(
    server: trionet.Server,
    client_tls: ssl.SSLContext,
    returned: trio.Event,
) -> bytes:
    client = await connect(server, client_tls)
    try:
        await client.send_all(b"GET / HTTP/1.0\r\n")  # half a request
        client.socket.shutdown(socket.SHUT_WR)  # the transport's end, no close_notify
        await returned.wait()  # the reply waits in the socket buffers
        got = bytearray()
        try:
            while chunk := await client.receive_some(65536):
                got += chunk
        except trio.BrokenResourceError:
            got += b"<truncated: no close_notify>"
        return bytes(got)
    finally:
        client.close()


def replying_handler(
    reply: bytes, requests: list[bytes], returned: trio.Event
) -> Callable[[trionet.Connection], Awaitable[None]]:
    async def handler(conn: trionet.Connection) -> None:
        requests.append(await read_to_end(conn))  # lenient: b"", no error
        await conn.send_all(reply)
        returned.set()

    return handler


async def test_a_reply_after_a_tcp_half_close_arrives_whole_then_close_notify(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    reply = PATTERN[3 : 3 + MIB]
    requests: list[bytes] = []
    returned = trio.Event()
    server = await trionet_server(replying_handler(reply, requests, returned), tls=server_tls)
    with trio.fail_after(10):
        got = await half_closed_exchange(server, client_tls, returned)
    assert requests == [b"GET / HTTP/1.0\r\n"]
    assert len(got) == len(reply) and got == reply
    stats = server.stats
    assert (stats.handler_errors, stats.protocol_errors, stats.resets) == (0, 0, 0)


@pytest.mark.parametrize("size", [5, MIB])
async def test_a_reply_after_a_tcp_half_close_ends_with_close_notify_without_descriptors(
    trionet_server: ServerFactory,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    size: int,
) -> None:
    reply = PATTERN[3 : 3 + size]
    requests: list[bytes] = []
    returned = trio.Event()
    with proxy_sockets():
        server = await trionet_server(replying_handler(reply, requests, returned), tls=server_tls)
        with trio.fail_after(10):
            got = await half_closed_exchange(server, client_tls, returned)
    assert got == reply, (len(got), len(reply), got[-30:])


async def test_a_drain_after_a_lenient_eof_still_sends_the_reply_and_close_notify(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    reply = PATTERN[5 : 5 + MIB]
    requests: list[bytes] = []
    returned = trio.Event()
    at_eof = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        async for chunk in conn:  # ends at the lenient EOF
            requests.append(chunk)
        at_eof.set()
        await conn.draining.wait()
        await conn.send_all(reply)
        returned.set()

    server = await trionet_server(handler, tls=server_tls)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:

            async def drain() -> None:
                await at_eof.wait()
                await server.shutdown(5)

            nursery.start_soon(drain)
            got = await half_closed_exchange(server, client_tls, returned)
    assert b"".join(requests) == b"GET / HTTP/1.0\r\n"
    assert got == reply
    assert server.stats.handler_errors == 0


async def test_the_idle_timeout_after_a_lenient_eof_says_goodbye_with_close_notify(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    requests: list[bytes] = []
    cancelled = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        requests.append(await read_to_end(conn))
        await conn.send_all(b"partial reply")
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    server = await trionet_server(handler, tls=server_tls, idle_timeout=0.2)
    with trio.fail_after(10):
        client = await connect(server, client_tls)
        await client.send_all(b"req")
        client.socket.shutdown(socket.SHUT_WR)
        got = await read_to_end(client)  # the reaper's close: close_notify
        client.close()
        await cancelled.wait()
    assert requests == [b"req"]
    assert got == b"partial reply"
    assert server.stats.handler_errors == 0


async def test_a_handler_that_sends_nothing_ends_with_close_notify_without_descriptors(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async def handler(conn: trionet.Connection) -> None:
        pass

    with proxy_sockets():
        server = await trionet_server(handler, tls=server_tls)
        with trio.fail_after(10):
            client = await connect(server, client_tls)
            try:
                end = await client.receive_some()
            except trio.BrokenResourceError:
                end = b"<truncated: no close_notify>"
            finally:
                client.close()
    assert end == b""
