"""The built-in services, in-process: each against its RFC, and each under a drain."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Awaitable, Callable

import pytest
import trio

import trionet
from trionet import services
from trionet._services import _CHARGEN_BLOCK

ServerFactory = Callable[..., Awaitable[trionet.Server]]

PRINTABLE = bytes(range(0x20, 0x7F))
DAYTIME_RE = re.compile(
    rb"^(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), [A-Z][a-z]+ \d\d, \d{4} "
    rb"\d\d:\d\d:\d\d-[ -~]*\r\n$"
)


def expected_chargen_line(i: int) -> bytes:
    """Line i of RFC 864's pattern, written independently of the implementation."""
    return bytes(PRINTABLE[(i + j) % 95] for j in range(72)) + b"\r\n"


async def open_client(server: trionet.Server) -> trio.SocketStream:
    address = server.addresses[0]
    assert isinstance(address, trionet.TCPAddress)
    return await trio.open_tcp_stream(address.host, address.port)


async def receive_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(65536):
        data += chunk
    return bytes(data)


async def receive_n(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def test_services_mapping_names_every_service() -> None:
    assert dict(services.SERVICES) == {
        "echo": services.echo,
        "discard": services.discard,
        "daytime": services.daytime,
        "chargen": services.chargen,
    }
    with pytest.raises(TypeError):
        services.SERVICES["x"] = services.echo  # type: ignore[index]
    assert services.echo.__module__ == "trionet.services"


async def test_echo_returns_every_byte_until_half_close(trionet_server: ServerFactory) -> None:
    server = await trionet_server(services.echo)
    payload = bytes(range(256)) * 1000  # 256 kB, more than one socket buffer
    with trio.fail_after(10):
        client = await open_client(server)
        async with client, trio.open_nursery() as nursery:

            async def send() -> None:
                await client.send_all(payload)
                await client.send_eof()

            nursery.start_soon(send)
            assert await receive_all(client) == payload
    assert server.stats.bytes_received == len(payload)


async def test_discard_never_answers(trionet_server: ServerFactory) -> None:
    finished = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await services.discard(conn)
        finished.set()

    server = await trionet_server(handler)
    with trio.fail_after(5):
        client = await open_client(server)
        async with client:
            await client.send_all(b"x" * 100_000)
            await client.send_eof()
            # EOF with no byte at all: nothing was sent back.
            assert await client.receive_some(65536) == b""
        await finished.wait()
    assert server.stats.bytes_received == 100_000
    assert server.stats.bytes_sent == 0


async def test_daytime_sends_one_crlf_line_then_eof(trionet_server: ServerFactory) -> None:
    server = await trionet_server(services.daytime)
    with trio.fail_after(5):
        client = await open_client(server)
        async with client:
            before = time.time()
            data = await receive_all(client)
            after = time.time()
    assert DAYTIME_RE.match(data), data
    assert data.count(b"\r\n") == 1
    # It is the real local time, not a canned string.
    stamp = data[: data.rindex(b"-")].decode()
    sent = datetime.datetime.strptime(stamp, "%A, %B %d, %Y %H:%M:%S").timestamp()
    assert before - 2 <= sent <= after + 1


async def test_daytime_reply_survives_a_client_that_talks(trionet_server: ServerFactory) -> None:
    # The client's bytes are discarded (RFC 867), unread, so the server's
    # close is a reset -- but it comes after daytime's FIN: the client reads
    # the reply, then a clean EOF, not "connection reset".
    async def handler(conn: trionet.Connection) -> None:
        await trio.lowlevel.wait_readable(conn.socket)  # the client's bytes are here, unread
        await services.daytime(conn)

    server = await trionet_server(handler)
    with trio.fail_after(5):
        client = await open_client(server)
        async with client:
            await client.send_all(b"what time is it?\r\n" * 1000)
            data = await receive_all(client)
    assert DAYTIME_RE.match(data), data


def test_daytime_line_format_is_rfc_867_style() -> None:
    # 1982-02-22 17:37:43 UTC, the RFC's own example date.
    moment = datetime.datetime(1982, 2, 22, 17, 37, 43, tzinfo=datetime.UTC)
    line = services.daytime_line(moment.timestamp())
    local = time.localtime(moment.timestamp())
    assert line.startswith(time.strftime("%A, %B %d, %Y %H:%M:%S-", local).encode())
    assert line.endswith(b"\r\n")
    assert DAYTIME_RE.match(line)


def test_chargen_pattern_is_95_rotating_72_char_lines() -> None:
    lines = _CHARGEN_BLOCK.split(b"\r\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == 95
    for i, line in enumerate(lines[:-1]):
        assert line + b"\r\n" == expected_chargen_line(i)
    assert lines[0].startswith(b' !"#$%&')
    assert lines[1].startswith(b'!"#$%&')


async def test_chargen_streams_the_pattern_and_discards_input(
    trionet_server: ServerFactory,
) -> None:
    ended = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        await services.chargen(conn)  # handler_errors="raise": any error fails the test
        ended.set()

    server = await trionet_server(handler)
    n_lines = 300  # > 3 full cycles of 95 lines, so the wrap-around is checked
    junk = b"ignored input\r\n" * 200_000  # 3 MB: more than the socket buffers hold
    with trio.fail_after(10):
        client = await open_client(server)
        async with client, trio.open_nursery() as nursery:
            # If chargen did not read (and discard) its input, this send
            # would block for ever once the buffers filled.
            nursery.start_soon(client.send_all, junk)
            data = await receive_n(client, n_lines * 74)
        # The client closing is the normal end: the handler returns cleanly.
        await ended.wait()
    lines = [data[i * 74 : (i + 1) * 74] for i in range(n_lines)]
    for i, line in enumerate(lines):
        assert line == expected_chargen_line(i), (i, line)
    assert server.stats.handler_errors == 0
    assert server.stats.resets == 0


async def test_chargen_keeps_sending_after_client_half_close(
    trionet_server: ServerFactory,
) -> None:
    server = await trionet_server(services.chargen)
    with trio.fail_after(5):
        client = await open_client(server)
        async with client:
            await client.send_eof()
            data = await receive_n(client, 200 * 74)
    assert data[199 * 74 :] == expected_chargen_line(199)


# (daytime is left out: it ends at once by itself, drain or not.)
@pytest.mark.parametrize("name", ["echo", "discard", "chargen"])
async def test_services_end_by_themselves_on_drain(
    trionet_server: ServerFactory, name: str
) -> None:
    # With a connected client that does nothing (and, for chargen, does not
    # read), a drain finishes every service well before the grace period.
    started = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        started.set()
        await services.SERVICES[name](conn)

    server = await trionet_server(handler)
    with trio.fail_after(5):
        client = await open_client(server)
        async with client:
            await client.send_all(b"hello\r\n")
            await started.wait()
            start = trio.current_time()
            report = await server.shutdown(4.0)
            elapsed = trio.current_time() - start
    assert report.cancelled == 0
    assert report.finished == 1
    assert server.stats.closed == 1
    assert server.stats.handler_errors == 0
    assert elapsed < 2.0
