"""The accept loop: resilience to accept() errors, batching, the generic path.

Errors are injected in-process by wrapping the listener's raw socket (the
pending connection stays in the kernel queue, exactly as with a real
``EMFILE``); one test lowers ``RLIMIT_NOFILE`` for real, in a subprocess.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
from conftest import FakeTime, connect_tcp, port_of
from trio._socket import _SocketType

import trionet
from trionet import TCPAddress
from trionet._ratelimit import RateLimiter
from trionet._server import _accept
from trionet._stats import Counters
from trionet.testing import Shutdown, custom_socket_class, wait_until

pytestmark = pytest.mark.usefixtures("network")

#: Why the tests that inject accept errors run on loopback only.
FAULTY_RAW_ACCEPT = (
    "injects accept errors through the kernel fast path's raw listening socket "
    "(_accept.raw_socket_of)"
)
FAULTY_RAW_SWEEP = (
    "injects errors into the drain sweep's accepts on the kernel fast path's raw listening "
    "socket (_accept.raw_socket_of)"
)

ServerFactory = Any


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def round_trip(sock: trio.socket.SocketType, data: bytes = b"ping") -> bytes:
    with trio.fail_after(5):
        await sock.send(data)
        return await sock.recv(100)


class FlakyListener:
    """Wraps a listener's raw socket; ``accept()`` raises what ``inject()`` says."""

    def __init__(self, inject: Callable[[], int | None]) -> None:
        self._inject = inject
        self._raw: socket.socket | None = None
        self.calls = 0

    def fileno(self) -> int:
        assert self._raw is not None
        return self._raw.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        assert self._raw is not None
        self.calls += 1
        code = self._inject()
        if code is not None:
            raise OSError(code, os.strerror(code))
        return self._raw.accept()


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], int | None]], FlakyListener]:
    """Make the accept loop of servers started next see a FlakyListener."""

    def install(inject: Callable[[], int | None]) -> FlakyListener:
        real = _accept.raw_socket_of  # type: ignore[attr-defined]
        flaky = FlakyListener(inject)

        def wrapped(sock: trio.socket.SocketType) -> Any:
            flaky._raw = real(sock)
            assert flaky._raw is not None
            return flaky

        monkeypatch.setattr(_accept, "raw_socket_of", wrapped)
        return flaky

    return install


# ----------------------------------------------------------------------
# Classification and back-off (pure logic)


@attrs.define
class _FakeListener:
    address: TCPAddress = attrs.field(factory=lambda: TCPAddress("127.0.0.1", 1))


@pytest.mark.parametrize(
    "code", [errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.EHOSTUNREACH]
)
async def test_per_connection_errors_are_ignored(code: int) -> None:
    counters = Counters()
    storm = _accept._Storm(_FakeListener())  # type: ignore[arg-type]
    delay = _accept._classify(OSError(code, "x"), _FakeListener(), storm, counters)  # type: ignore[arg-type]
    assert delay == 0
    assert counters.accept_errors == 1
    assert storm.count == 0  # not a resource burst


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
async def test_resource_errors_back_off_with_jitter_capped(code: int) -> None:
    counters = Counters()
    storm = _accept._Storm(_FakeListener())  # type: ignore[arg-type]
    delays = [
        _accept._classify(OSError(code, "x"), _FakeListener(), storm, counters)  # type: ignore[arg-type]
        for _ in range(12)
    ]
    assert counters.accept_errors == 12
    assert all(0 < d <= _accept._BACKOFF_CAP for d in delays)
    nominal = _accept._BACKOFF_FIRST
    for d in delays:  # jittered within [nominal/2, nominal], nominal doubling to the cap
        assert nominal / 2 <= d <= nominal
        nominal = min(nominal * 2, _accept._BACKOFF_CAP)
    assert max(delays) > _accept._BACKOFF_CAP / 2
    assert len(set(delays)) == len(delays)  # jitter: no two equal


async def test_listener_breakage_is_a_real_error() -> None:
    storm = _accept._Storm(_FakeListener())  # type: ignore[arg-type]
    with pytest.raises(trionet.ListenError) as info:
        _accept._classify(OSError(errno.EBADF, "bad"), _FakeListener(), storm, Counters())  # type: ignore[arg-type]
    assert info.value.errno == errno.EBADF
    assert isinstance(info.value.__cause__, OSError)


async def test_bursts_are_logged_once_and_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet.accept")
    storm = _accept._Storm(_FakeListener())  # type: ignore[arg-type]
    for _burst in range(20):
        for _ in range(50):
            storm.error(OSError(errno.EMFILE, "Too many open files"))
        storm.accepted()  # successes inside a burst do not end it ...
        storm.error(OSError(errno.EMFILE, "Too many open files"))
        storm.recovered()  # ... only an empty queue does
    lines = [r.getMessage() for r in caplog.records]
    starts = [m for m in lines if "failed" in m]
    ends = [m for m in lines if "recovered" in m]
    assert len(starts) == len(ends) == _accept._BURST_LOG_LIMIT
    assert "Too many open files" in starts[0]
    assert "after 51 failure(s)" in ends[0]


async def test_burst_log_lines_say_how_many_bursts_were_not_logged(
    limiter_clock: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet.accept")
    storm = _accept._Storm(_FakeListener())  # type: ignore[arg-type]
    emfile = OSError(errno.EMFILE, "Too many open files")
    for _ in range(_accept._BURST_LOG_LIMIT + 4):
        storm.error(emfile)
        storm.recovered()
    limiter_clock.now += _accept._BURST_LOG_PERIOD
    storm.error(emfile)
    storm.recovered()
    starts = [r for r in caplog.records if "failed" in r.getMessage()]
    assert {r.levelno for r in starts} == {logging.WARNING}
    head = (
        "accept() on tcp://127.0.0.1:1 failed: [Errno 24] Too many open files; backing off "
        "(further errors in this burst are counted in stats.accept_errors, not logged"
    )
    assert [r.getMessage() for r in starts] == [head + ")"] * _accept._BURST_LOG_LIMIT + [
        head + "; 4 earlier burst(s) not logged)"
    ]


class _Exhausted:
    """A raw listening socket out of descriptors."""

    def accept(self) -> Any:
        raise OSError(errno.EMFILE, "Too many open files")


@attrs.define
class _SweepListener:
    sock: Any = None
    address: TCPAddress = attrs.field(factory=lambda: TCPAddress("127.0.0.1", 1))
    backlog: int | None = 8
    closed: bool = False


@attrs.define
class _SweepServer:
    counters: Counters = attrs.field(factory=Counters)
    sweep_log: RateLimiter = attrs.field(factory=lambda: RateLimiter(burst=3, period=60))


async def test_sweep_warnings_say_how_many_were_not_logged(
    limiter_clock: FakeTime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet.accept")

    monkeypatch.setattr(_accept, "raw_socket_of", lambda sock: _Exhausted())
    server = _SweepServer()
    for _ in range(5):
        _accept.sweep(server, _SweepListener())  # type: ignore[arg-type]
    limiter_clock.now += 20.0
    _accept.sweep(server, _SweepListener())  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    line = (
        "drain: sweeping the queue of tcp://127.0.0.1:1 stopped after 0 connection(s): "
        "[Errno 24] Too many open files; clients still queued are reset when the "
        "listener closes"
    )
    assert [r.getMessage() for r in warnings] == [line] * 3 + [
        line + " (2 similar line(s) not logged)"
    ]


# ----------------------------------------------------------------------
# The accept loop with injected errors (real sockets)


@pytest.mark.loopback_only(FAULTY_RAW_ACCEPT)
async def test_transient_errors_are_skipped_without_delay(
    trionet_server: ServerFactory, flaky: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trionet")
    pending = [errno.ECONNABORTED, errno.EPROTO, errno.ECONNABORTED]
    listener = flaky(lambda: pending.pop(0) if pending else None)
    server = await trionet_server(echo)
    sock = await connect_tcp(port_of(server))
    with sock:
        start = time.monotonic()
        assert await round_trip(sock) == b"ping"
        assert time.monotonic() - start < 0.5
    assert server.stats.accept_errors == 3
    assert listener.calls >= 4
    assert not [r for r in caplog.records if r.name == "trionet.accept"]  # debug only


@pytest.mark.loopback_only(FAULTY_RAW_ACCEPT)
async def test_emfile_backs_off_keeps_serving_and_recovers(
    trionet_server: ServerFactory, flaky: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet.accept")
    exhausted = True
    listener = flaky(lambda: errno.EMFILE if exhausted else None)
    server = await trionet_server(echo)
    port = port_of(server)
    waiting = [await connect_tcp(port) for _ in range(3)]
    await trio.sleep(1.2)  # a long burst: the back-off reaches its cap
    errors_in_burst = server.stats.accept_errors
    # Bounded retrying: doubling from 10 ms to 0.25 s over 1.2 s is ~10 tries, not a spin.
    assert 3 <= errors_in_burst <= 15
    assert listener.calls == errors_in_burst
    freed_at = time.monotonic()
    exhausted = False  # descriptors free up (not through one of our connections)
    for sock in waiting:
        assert await round_trip(sock) == b"ping"
    assert time.monotonic() - freed_at < _accept._BACKOFF_CAP + 0.3
    accept_lines = [r for r in caplog.records if r.name == "trionet.accept"]
    assert len(accept_lines) == 2, [r.getMessage() for r in accept_lines]
    assert "Too many open files" in accept_lines[0].getMessage()
    assert "recovered" in accept_lines[1].getMessage()
    for sock in waiting:
        sock.close()


@pytest.mark.loopback_only(FAULTY_RAW_ACCEPT)
async def test_a_closing_connection_retries_accept_at_once(
    trionet_server: ServerFactory, flaky: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Make the back-off long, so only the "a connection closed" wake-up can
    # explain a quick recovery.
    monkeypatch.setattr(_accept, "_BACKOFF_FIRST", 5.0)
    monkeypatch.setattr(_accept, "_BACKOFF_CAP", 5.0)
    started: list[float] = []

    async def handler(conn: trionet.Connection) -> None:
        started.append(time.monotonic())
        await echo(conn)

    server: trionet.Server | None = None
    # Pretend the process can hold one connection: EMFILE while one is open.
    flaky(lambda: errno.EMFILE if server is not None and server.stats.active >= 1 else None)
    server = await trionet_server(handler)
    port = port_of(server)
    first = await connect_tcp(port)
    assert await round_trip(first) == b"ping"
    second = await connect_tcp(port)
    await wait_until(lambda: server is not None and server.stats.accept_errors >= 1)
    await trio.sleep(0.1)
    assert len(started) == 1  # backing off
    closed_at = time.monotonic()
    first.close()
    with second:
        assert await round_trip(second) == b"ping"
    assert started[1] - closed_at < 0.3  # far sooner than the 2.5-5 s back-off


@pytest.mark.loopback_only(
    "installs its own factory of real kernel sockets (custom_socket_class); the virtual "
    "network's sockets take this generic path in every other virtual test"
)
async def test_generic_path_for_sockets_without_a_descriptor(
    trionet_server: ServerFactory, flaky: Any
) -> None:
    # A custom Trio socket factory whose sockets are not Trio's own class: the
    # accept loop must use `await sock.accept()` and still apply admission.
    class Opaque(_SocketType):
        pass

    with custom_socket_class(Opaque):
        server = await trionet_server(
            echo, access=trionet.AccessPolicy(deny=["127.0.0.2/32"]), max_connections=1
        )
        assert type(server._listeners[0].sock) is Opaque
        port = port_of(server)
        denied = trio.socket.socket()
        with denied:
            await denied.bind(("127.0.0.2", 0))
            with pytest.raises(ConnectionResetError), trio.fail_after(5):
                await denied.connect(("127.0.0.1", port))
                await denied.recv(10)
        a = await connect_tcp(port)
        b = await connect_tcp(port)
        with a, b:
            assert await round_trip(a) == b"ping"
            with trio.move_on_after(0.2):
                await b.send(b"queued")
                await b.recv(10)
                pytest.fail("max_connections=1 must hold b back")  # pragma: no cover
            a.close()
            with trio.fail_after(5):
                assert await b.recv(10) == b"queued"
        assert server.stats.rejected_access == 1
        assert server.stats.accepted == 2


async def test_batch_accepts_a_burst_in_one_wakeup(trionet_server: ServerFactory) -> None:
    server = await trionet_server(echo)
    port = port_of(server)
    clients = [await connect_tcp(port) for _ in range(100)]
    try:
        for sock in clients:
            assert await round_trip(sock) == b"ping"
        assert server.stats.accepted == 100
    finally:
        for sock in clients:
            sock.close()


# ----------------------------------------------------------------------
# The drain sweep


class SweepProbe:
    """Injects errors into the ``accept()`` calls a drain's sweep makes."""

    def __init__(self, plan: Callable[[int], int | None]) -> None:
        self.server: trionet.Server | None = None
        self.sweep_calls = 0
        self._plan = plan

    def __call__(self) -> int | None:
        if self.server is None or not self.server.draining:
            return None
        self.sweep_calls += 1
        return self._plan(self.sweep_calls)


async def start_blocked_server(
    trionet_server: ServerFactory, queued: int, **options: Any
) -> tuple[trionet.Server, trio.Event, trio.socket.SocketType, list[trio.socket.SocketType]]:
    """A max_connections=1 server whose one slot is held, and ``queued`` clients
    waiting in the kernel's queue, each with its request sent."""
    release = trio.Event()
    running = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        line = await conn.receive_line()
        if line == b"first":
            running.set()
            await release.wait()
        await conn.send_all(line + b" served\n")

    server = await trionet_server(handler, max_connections=1, **options)
    port = port_of(server)
    first = await connect_tcp(port)
    await first.send(b"first\n")
    with trio.fail_after(5):
        await running.wait()
    waiting = []
    for i in range(queued):
        sock = await connect_tcp(port)
        await sock.send(b"q%d\n" % i)
        waiting.append(sock)
    assert server.stats.accepted == 1  # the others are in the kernel's queue
    return server, release, first, waiting


async def drain_releasing(
    server: trionet.Server,
    release: trio.Event,
    waiting: list[trio.socket.SocketType],
    nursery: trio.Nursery,
) -> tuple[list[bytes], trionet.ShutdownReport]:
    """Start a drain, let the held handler finish, and collect every queued
    client's reply and the drain's report."""
    shutdown = Shutdown(nursery, server, grace=10)
    await wait_until(lambda: server.draining)
    release.set()
    replies = [await reply_of(sock) for sock in waiting]
    return replies, await shutdown.wait()


async def reply_of(sock: trio.socket.SocketType) -> bytes:
    with trio.fail_after(5):
        try:
            return await sock.recv(100)
        except ConnectionResetError:
            return b"(reset)"


@pytest.mark.loopback_only(FAULTY_RAW_SWEEP)
async def test_sweep_skips_a_client_that_gave_up_and_serves_the_rest(
    trionet_server: ServerFactory, flaky: Any, nursery: trio.Nursery
) -> None:
    # One queued client aborted its handshake: accept() says ECONNABORTED for
    # it.  Everyone queued behind it must still be served, not reset.
    probe = SweepProbe(lambda n: errno.ECONNABORTED if n == 1 else None)
    flaky(probe)
    server, release, first, waiting = await start_blocked_server(trionet_server, 5)
    probe.server = server
    replies, report = await drain_releasing(server, release, waiting, nursery)
    assert replies == [b"q%d served\n" % i for i in range(5)]
    assert report.swept == 5
    assert server.stats.accept_errors == 1
    for sock in [first, *waiting]:
        sock.close()


@pytest.mark.loopback_only(FAULTY_RAW_SWEEP)
async def test_descriptor_exhaustion_during_the_sweep_is_logged_and_counted(
    trionet_server: ServerFactory,
    flaky: Any,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet.accept")
    # The first queued client is accepted; then the process runs out of
    # descriptors.  The sweep stops (the rest are reset when the listener
    # closes -- see the drain's residual race) and says so.
    probe = SweepProbe(lambda n: errno.EMFILE if n >= 2 else None)
    flaky(probe)
    server, release, first, waiting = await start_blocked_server(trionet_server, 4)
    probe.server = server
    replies, report = await drain_releasing(server, release, waiting, nursery)
    assert replies[0] == b"q0 served\n"
    assert all(r in (b"", b"(reset)") for r in replies[1:]), replies
    assert report.swept == 1
    assert probe.sweep_calls == 2  # stopped at the first EMFILE, no retry loop
    assert server.stats.accept_errors == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "Too many open files" in warnings[0].getMessage()
    assert "sweep" in warnings[0].getMessage()
    for sock in [first, *waiting]:
        sock.close()


async def test_sweep_warnings_are_rate_limited(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet.accept")

    monkeypatch.setattr(_accept, "raw_socket_of", lambda sock: _Exhausted())
    server = _SweepServer()
    for _ in range(20):
        assert _accept.sweep(server, _SweepListener()) == 0  # type: ignore[arg-type]
    assert server.counters.accept_errors == 20
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3


@pytest.mark.loopback_only(FAULTY_RAW_SWEEP)
async def test_sweep_is_bounded_by_the_queue_capacity(
    trionet_server: ServerFactory, flaky: Any
) -> None:
    # Clients that keep connecting (or aborting) while we sweep must not keep
    # shutdown() in a synchronous loop: at most backlog + 1 accept() calls.
    probe = SweepProbe(lambda n: errno.ECONNABORTED)
    flaky(probe)
    server = await trionet_server(echo, backlog=8)
    probe.server = server
    start = time.monotonic()
    with trio.fail_after(5):
        report = await server.shutdown(1)
    assert time.monotonic() - start < 1
    assert probe.sweep_calls == _accept.sweep_limit(server._listeners[0]) == 9
    assert server.stats.accept_errors == 9
    assert report.swept == 0


def test_sweep_limit_follows_backlog_and_somaxconn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    somaxconn = tmp_path / "somaxconn"
    somaxconn.write_text("128\n")
    monkeypatch.setattr(_accept, "_SOMAXCONN_PATH", str(somaxconn))
    assert _accept.sweep_limit(_SweepListener(backlog=8)) == 9  # type: ignore[arg-type]
    assert _accept.sweep_limit(_SweepListener(backlog=4096)) == 129  # type: ignore[arg-type]
    assert _accept.sweep_limit(_SweepListener(backlog=None)) == 129  # type: ignore[arg-type]
    monkeypatch.setattr(_accept, "_SOMAXCONN_PATH", str(tmp_path / "missing"))
    assert _accept.sweep_limit(_SweepListener(backlog=8)) == 9  # type: ignore[arg-type]
    assert _accept.sweep_limit(_SweepListener(backlog=None)) == 0xFFFF + 1  # type: ignore[arg-type]


# ----------------------------------------------------------------------
# A real descriptor limit, in a subprocess

_EMFILE_SERVER = textwrap.dedent(
    """
    import functools, json, logging, resource, sys
    import attrs, trio, trionet

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG, format="%(name)s %(levelname)s %(message)s"
    )

    async def echo(conn):
        async for chunk in conn:
            await conn.send_all(chunk)

    async def main():
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(trionet.serve, echo, "tcp://127.0.0.1:0")
            )
            async with trio.open_nursery() as inner:
                await inner.start(trionet.drain_on_signals, server)
                print(server.addresses[0].port, flush=True)
        print(json.dumps(attrs.asdict(server.stats)), flush=True)

    trio.run(main)
    """
)


@pytest.mark.loopback_only("real descriptor exhaustion (RLIMIT_NOFILE) in a subprocess server")
async def test_real_descriptor_exhaustion_in_a_subprocess() -> None:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _EMFILE_SERVER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stdout = b""
    stderr = b""
    flood: list[trio.socket.SocketType] = []

    async def collect_stderr() -> None:
        nonlocal stderr
        assert proc.stderr is not None
        while chunk := await proc.stderr.receive_some():
            stderr += chunk

    async def read_stdout_line() -> bytes:
        nonlocal stdout
        assert proc.stdout is not None
        with trio.fail_after(10):
            while b"\n" not in stdout:
                chunk = await proc.stdout.receive_some()
                assert chunk, f"server exited early; stderr:\n{stderr.decode()}"
                stdout += chunk
        line, _, stdout = stdout.partition(b"\n")
        return line

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect_stderr)
            port = int(await read_stdout_line())

            # Flood: 200 idle clients, far more than 64 descriptors allow.
            for _ in range(200):
                flood.append(await connect_tcp(port))
            await wait_until(lambda: b"Too many open files" in stderr)
            await trio.sleep(0.5)
            assert proc.poll() is None, "the server died"
            # It keeps serving the connections it has (the first ones were accepted).
            assert await round_trip(flood[0]) == b"ping"

            # The clients leave; the server serves again within 1 s.
            for sock in flood:
                sock.close()
            flood.clear()
            left_at = time.monotonic()
            fresh = await connect_tcp(port)
            with fresh, trio.fail_after(1.0):
                assert await round_trip(fresh) == b"ping"
            assert time.monotonic() - left_at < 1.0

            proc.send_signal(signal.SIGTERM)
            stats = json.loads(await read_stdout_line())
            with trio.fail_after(10):
                await proc.wait()
            nursery.cancel_scope.cancel()
    finally:
        for sock in flood:
            sock.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    assert proc.returncode == 0, stderr.decode()
    assert stats["accepted"] >= 200
    lines = stderr.decode().splitlines()
    accept_lines = [line for line in lines if "accept" in line]
    assert 1 <= len(accept_lines) <= 5, "\n".join(accept_lines)
    # Every failure is counted, but only the bursts are logged.
    assert stats["accept_errors"] > len(accept_lines)
    assert len(lines) <= 20, "\n".join(lines)
