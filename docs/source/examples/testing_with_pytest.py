"""Testing a trionet server with pytest, pytest-trio and trionet's plugin.

Installing trionet registers the plugin (a ``pytest11`` entry point), so the
``trionet_server`` and ``unused_unix_path`` fixtures need no conftest.py.

Run it: python testing_with_pytest.py   (or: pytest testing_with_pytest.py)
"""

from __future__ import annotations

import sys

import pytest
import trio

import trionet


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def shout(conn: trionet.Connection) -> None:
    line = await conn.receive_line()
    if not line:
        raise ValueError("empty request")  # a handler bug, on purpose
    await conn.send_all(line.upper() + b"\n")


@pytest.mark.trio
async def test_echo(trionet_server) -> None:
    server = await trionet_server(echo)  # binds tcp://127.0.0.1:0 by default
    async with await trionet.connect(server.addresses[0]) as conn:
        await conn.send_all(b"ping")
        assert await conn.receive_some() == b"ping"
    # Stats are live: the connection may still be closing, so check totals we know.
    assert server.stats.accepted == 1


@pytest.mark.trio
async def test_unix_socket(trionet_server, unused_unix_path: str) -> None:
    server = await trionet_server(shout, "unix:" + unused_unix_path)
    async with await trionet.connect(server.addresses[0]) as conn:
        await conn.send_all(b"hello\n")
        assert await conn.receive_line() == b"HELLO"
    assert str(server.addresses[0]) == "unix:" + unused_unix_path


@pytest.mark.trio
async def test_drain_ends_keepalive_loops(trionet_server) -> None:
    server = await trionet_server(echo)
    async with await trionet.connect(server.addresses[0]) as conn:
        await conn.send_all(b"ping")
        assert await conn.receive_some() == b"ping"  # the handler is running
        with trio.fail_after(5):
            report = await server.shutdown(grace=1.0)
        assert (report.finished, report.cancelled) == (1, 0)
        assert await conn.receive_some() == b""  # the server closed its side


@pytest.mark.trio
async def test_handler_bug_is_raised() -> None:
    # With handler_errors="raise" (trionet_server's default) a handler's
    # exception ends the server and propagates -- from open_server, bare.
    with pytest.raises(ValueError, match="empty request"):
        async with trionet.open_server(shout, "tcp://127.0.0.1:0", handler_errors="raise") as s:
            conn = await trionet.connect(s.addresses[0])
            async with conn:
                await conn.send_all(b"\n")
                await trio.sleep_forever()  # cancelled when the handler fails


if __name__ == "__main__":
    # (trionet is imported above, before pytest loads it as a plugin; the -W
    # silences pytest's note that it therefore cannot rewrite its asserts.)
    quiet = "ignore::pytest.PytestAssertRewriteWarning"
    code = pytest.main([__file__, "-q", "-p", "no:cacheprovider", "-W", quiet])
    if code == 0:
        print("ok")
    sys.exit(code)
