"""The public test helpers of ``trionet.testing`` (``trionet/testing/_helpers.py``)."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import sys
import textwrap
import types
from typing import Any

import pytest
import trio
import trio.testing
from trio._socket import _SocketType

import trionet
from trionet.testing import (
    ExitRecordingEcho,
    Shutdown,
    client_first_flight,
    custom_socket_class,
    fill_stream,
    no_errors_logged,
    wait_until,
)

ServerFactory = Any

# ----------------------------------------------------------------------
# wait_until


async def test_wait_until_returns_at_once_when_already_true(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = 0

    def predicate() -> bool:
        nonlocal calls
        calls += 1
        return True

    start = trio.current_time()
    await wait_until(predicate)
    assert calls == 1
    assert trio.current_time() == start


async def test_wait_until_returns_soon_after_the_condition_holds(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    flag = False

    async def set_later() -> None:
        nonlocal flag
        await trio.sleep(1)
        flag = True

    nursery.start_soon(set_later)
    start = trio.current_time()
    await wait_until(lambda: flag)
    assert 1 <= trio.current_time() - start <= 1.01  # polls every 5 ms


async def test_wait_until_raises_too_slow_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    with pytest.raises(trio.TooSlowError):
        await wait_until(lambda: False, timeout=2)
    assert trio.current_time() - start == pytest.approx(2)


# ----------------------------------------------------------------------
# custom_socket_class


class Recording(_SocketType):
    made: list[Recording] = []  # noqa: RUF012 - reset by each test

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        Recording.made.append(self)


async def test_custom_socket_class_installs_and_restores_the_factory() -> None:
    Recording.made = []
    with custom_socket_class(Recording):
        inside = trio.socket.socket()
    after = trio.socket.socket()
    with inside, after:
        assert type(inside) is Recording
        assert Recording.made == [inside]
        assert inside.family == socket.AF_INET and inside.type == socket.SOCK_STREAM
        assert type(after) is not Recording


async def test_custom_socket_class_passes_family_and_type() -> None:
    Recording.made = []
    with custom_socket_class(Recording):
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock:
        assert type(sock) is Recording
        assert (sock.family, sock.type) == (socket.AF_UNIX, socket.SOCK_DGRAM)


async def test_custom_socket_class_restores_an_outer_factory_even_on_error() -> None:
    class Outer(trio.abc.SocketFactory):
        def socket(self, family: Any = None, type: Any = None, proto: Any = None) -> Any:
            return "outer"

    trio.socket.set_custom_socket_factory(Outer())
    with pytest.raises(KeyError), custom_socket_class(Recording):
        raise KeyError("boom")
    assert trio.socket.socket() == "outer"  # type: ignore[comparison-overlap]
    trio.socket.set_custom_socket_factory(None)


# ----------------------------------------------------------------------
# fill_stream


async def test_fill_stream_leaves_a_socket_stream_full(nursery: trio.Nursery) -> None:
    a, b = trio.socket.socketpair()
    sender, receiver = trio.SocketStream(a), trio.SocketStream(b)
    async with sender, receiver:
        with trio.fail_after(5):
            await fill_stream(sender)
        sent = trio.Event()

        async def one_more() -> None:
            await sender.send_all(b"y")
            sent.set()

        nursery.start_soon(one_more)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent.is_set()  # the buffers are full: the send waits for the peer

        received = 0
        with trio.fail_after(5):
            while True:
                chunk = await receiver.receive_some()
                received += len(chunk)
                if chunk.endswith(b"y"):
                    break
            await sent.wait()
        assert received > 10000  # fill_stream sent at least one whole chunk


async def test_fill_stream_fills_a_trionet_connection() -> None:
    a, b = trio.socket.socketpair()
    conn = trionet.Connection(a)
    sent = trio.Event()

    async def one_more() -> None:
        await conn.send_all(b"y")
        sent.set()  # pragma: no cover - would be the bug

    with b:
        async with conn:
            with trio.fail_after(5):
                await fill_stream(conn)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one_more)
                await trio.testing.wait_all_tasks_blocked()
                assert not sent.is_set()  # a further send waits for the peer
                nursery.cancel_scope.cancel()


# ----------------------------------------------------------------------
# ExitRecordingEcho and Shutdown


async def test_exit_recording_echo_echoes_and_records_eof() -> None:
    handler = ExitRecordingEcho()
    a, b = trio.socket.socketpair()
    conn = trionet.Connection(a)
    async with trio.SocketStream(b) as peer, conn:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(handler, conn)
                await peer.send_all(b"hello")
                assert await peer.receive_some() == b"hello"
                await peer.send_eof()  # the handler's loop ends: it returns
    assert handler.conns == [conn]
    assert handler.exits == ["eof"]


async def test_exit_recording_echo_records_a_cancellation() -> None:
    handler = ExitRecordingEcho()
    a, b = trio.socket.socketpair()
    conn = trionet.Connection(a)
    with b:
        async with conn:
            with trio.CancelScope() as scope:
                scope.deadline = trio.current_time() + 0.01
                await handler(conn)
    assert scope.cancelled_caught
    assert handler.exits == ["cancelled"]


async def test_shutdown_returns_the_report_of_a_drain(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    handler = ExitRecordingEcho()
    server = await trionet_server(handler)
    conn = await trionet.connect(server.addresses[0])
    async with conn:
        await conn.send_all(b"ping")
        with trio.fail_after(5):
            assert await conn.receive_some() == b"ping"
        shutdown = Shutdown(nursery, server, grace=30)
        assert shutdown.report is None
        report = await shutdown.wait(timeout=5)
    assert isinstance(report, trionet.ShutdownReport)
    assert shutdown.report is report
    assert shutdown.done.is_set()
    assert shutdown.started_at <= shutdown.returned_at
    assert (report.finished, report.cancelled) == (1, 0)
    assert handler.exits == ["drained"]
    assert server.stopped


async def test_shutdown_wait_times_out_while_a_handler_holds_on(
    trionet_server: ServerFactory, nursery: trio.Nursery
) -> None:
    release = trio.Event()
    running = trio.Event()

    async def stubborn(conn: trionet.Connection) -> None:
        running.set()
        await release.wait()

    server = await trionet_server(stubborn)
    conn = await trionet.connect(server.addresses[0])
    async with conn:
        with trio.fail_after(5):
            await running.wait()
        shutdown = Shutdown(nursery, server, grace=30)
        with pytest.raises(trio.TooSlowError):
            await shutdown.wait(timeout=0.05)
        assert shutdown.report is None and not shutdown.done.is_set()
        release.set()
        report = await shutdown.wait(timeout=5)
    assert report.finished == 1


# ----------------------------------------------------------------------
# no_errors_logged


def test_no_errors_logged_passes_below_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="trionet.test"):
        logging.getLogger("trionet.test").warning("a peer reset")
        logging.getLogger("trionet.test").info("fine")
    assert len(caplog.records) == 2
    no_errors_logged(caplog)


@pytest.mark.parametrize("level", [logging.ERROR, logging.CRITICAL])
def test_no_errors_logged_fails_on_an_error(caplog: pytest.LogCaptureFixture, level: int) -> None:
    logging.getLogger("trionet.test").log(level, "handler %s crashed", "echo")
    with pytest.raises(AssertionError, match="handler echo crashed"):
        no_errors_logged(caplog)


def test_no_errors_logged_takes_any_object_with_records() -> None:
    quiet = types.SimpleNamespace(records=[logging.makeLogRecord({"levelno": logging.INFO})])
    no_errors_logged(quiet)
    loud = types.SimpleNamespace(
        records=[logging.makeLogRecord({"levelno": logging.ERROR, "msg": "bad"})]
    )
    with pytest.raises(AssertionError, match="bad"):
        no_errors_logged(loud)


def test_the_helpers_work_without_pytest() -> None:
    # trio.testing imports pytest when it can: block it, as if not installed.
    code = textwrap.dedent(
        """
        import sys
        import types

        class NoPytest:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("pytest", "_pytest"):
                    raise ModuleNotFoundError(name)

        sys.meta_path.insert(0, NoPytest())
        from trionet.testing import _helpers

        _helpers.no_errors_logged(types.SimpleNamespace(records=[]))
        assert _helpers.client_first_flight(_helpers.ssl.create_default_context(), "x")
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("pytest", "_pytest")))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


# ----------------------------------------------------------------------
# client_first_flight


def test_client_first_flight_is_a_client_hello_with_sni() -> None:
    hello = client_first_flight(ssl.create_default_context(), "example.test")
    assert hello[0] == 0x16  # a TLS handshake record
    assert hello[1] == 3  # record version 3.x
    assert int.from_bytes(hello[3:5], "big") == len(hello) - 5  # one whole record
    assert hello[5] == 1  # handshake type: ClientHello
    assert b"example.test" in hello


def test_client_first_flight_without_a_server_name() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    hello = client_first_flight(context, None)
    assert hello[0] == 0x16 and hello[5] == 1
    assert b"example.test" not in hello


def test_client_first_flight_fails_if_the_handshake_completes() -> None:
    class Done:
        def do_handshake(self) -> None:
            return None

    class Context:
        def wrap_bio(self, *args: Any, **kwargs: Any) -> Done:
            return Done()

    with pytest.raises(AssertionError, match="without a server"):
        client_first_flight(Context(), "localhost")  # type: ignore[arg-type]


# ----------------------------------------------------------------------
# trionet.testing after a plain ``import trionet``


def test_trionet_testing_is_lazy_after_import_trionet() -> None:
    code = textwrap.dedent(
        """
        import sys

        import trionet

        assert "trio" not in sys.modules, "import trionet imported Trio"
        assert "trionet.testing" not in sys.modules
        assert "testing" in dir(trionet)
        wait_until = trionet.testing.wait_until
        assert "trio" in sys.modules
        import trionet.testing
        assert trionet.testing.wait_until is wait_until
        from trionet import testing
        assert testing is sys.modules["trionet.testing"]
        try:
            trionet.no_such_name
        except AttributeError:
            pass
        else:
            raise AssertionError("trionet.no_such_name exists")
        print(wait_until.__module__)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("trionet.testing")


def test_trionet_testing_exports_every_helper() -> None:
    import trionet.testing
    from trionet.testing import _helpers

    for name in _helpers.__all__:
        assert getattr(trionet.testing, name) is getattr(_helpers, name)
        assert name in trionet.testing.__all__
