"""The core's hooks for a virtual network (issue 13), without the network itself.

A tiny stand-in network (a seeded RNG and a name) is installed through
``trionet._virtual``; the descriptor-less transport hooks are exercised with
conftest's ``ProxySocket`` (a custom-factory socket over a real loopback
socket):

* trionet's random back-offs draw from the installed network's RNG;
* Unix binds, adopted OS sockets and Unix connects are refused before they
  touch the real system;
* the drain sweep accepts from a descriptor-less listener through its
  ``accept_nowait()``;
* the pool reuses a healthy descriptor-less connection (``is_readable()``)
  and discards one whose peer closed.
"""

from __future__ import annotations

import errno
import os
import random
import socket as stdlib_socket
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from conftest import ProxySocket, port_of, proxy_sockets

import trionet
from trionet import TCPAddress, _virtual
from trionet._client import backoff_delay, unusable_reason
from trionet._ratelimit import RateLimiter
from trionet._server import _accept
from trionet._stats import Counters
from trionet.pytest_plugin import ServerFactory

NAME = "FakeNetwork(seed=5)"


@attrs.define
class FakeNetwork:
    """The part of a virtual network the core sees (``_virtual.SimulatedNetwork``)."""

    random: random.Random = attrs.field(factory=lambda: random.Random(5))

    def describe(self) -> str:
        return NAME


@pytest.fixture
async def network() -> AsyncIterator[FakeNetwork]:
    net = FakeNetwork()
    previous = _virtual.install(net)
    try:
        yield net
    finally:
        _virtual.install(previous)


# ----------------------------------------------------------------------
# Randomness


async def test_draws_come_from_the_installed_network(network: FakeNetwork) -> None:
    reference = random.Random(5)
    assert _virtual.current() is network
    assert [_virtual.random_fraction() for _ in range(3)] == [reference.random() for _ in range(3)]
    assert _virtual.uniform(0.5, 1.0) == reference.uniform(0.5, 1.0)
    # The connect retries' full jitter ...
    assert backoff_delay(3, 0.1, 5.0) == pytest.approx(0.8 * reference.random())
    # ... and the accept back-off.
    storm = _accept._Storm(_FakeListener())  # type: ignore[arg-type]
    emfile = OSError(errno.EMFILE, "Too many open files")
    assert storm.error(emfile) == pytest.approx(0.01 * reference.uniform(0.5, 1.0))
    assert storm.error(emfile) == pytest.approx(0.02 * reference.uniform(0.5, 1.0))
    # An injected rand still wins, and draws nothing from the network.
    assert backoff_delay(3, 0.1, 5.0, rand=lambda: 0.5) == pytest.approx(0.4)
    assert network.random.random() == reference.random()


async def test_same_seed_same_sequence_and_uninstall_stops_drawing() -> None:
    runs = []
    for _ in range(2):
        net = FakeNetwork()
        previous = _virtual.install(net)
        try:
            runs.append([backoff_delay(10, 0.1, 5.0) for _ in range(5)])
        finally:
            _virtual.install(previous)
    assert runs[0] == runs[1]
    assert len(set(runs[0])) == 5

    net = FakeNetwork()
    _virtual.install(net)
    assert _virtual.install(None) is net
    assert _virtual.current() is None
    backoff_delay(10, 0.1, 5.0)  # from the random module
    assert net.random.random() == random.Random(5).random()  # nothing was drawn


# ----------------------------------------------------------------------
# Refusals: nothing touches the real system


async def _handler(conn: trionet.Connection) -> None:
    pass  # pragma: no cover - no server ever starts here


@contextmanager
def no_filesystem_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Inside the block, ``os.lstat``/``unlink``/``chmod`` are recorded and fail."""
    calls: list[str] = []

    def forbidden(name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"os.{name}{args} while a virtual network is installed")

        return call

    with monkeypatch.context() as patch:
        for name in ("lstat", "stat", "unlink", "chmod"):
            patch.setattr(os, name, forbidden(name))
        yield calls


def make_stale_socket_file(path: str) -> None:
    sock = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    sock.bind(path)
    sock.close()  # the file stays: a crashed server's leftover
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.parametrize("abstract", [False, True])
async def test_a_unix_bind_is_refused_before_touching_the_filesystem(
    network: FakeNetwork,
    unused_unix_path: str,
    monkeypatch: pytest.MonkeyPatch,
    abstract: bool,
) -> None:
    make_stale_socket_file(unused_unix_path)
    spec = "unix:@trionet-virtual-test" if abstract else f"unix:{unused_unix_path}"
    with (
        proxy_sockets() as factory,
        no_filesystem_calls(monkeypatch) as calls,
        trio.fail_after(5),
        pytest.raises(trionet.InvalidAddress) as info,
    ):
        await trionet.serve(_handler, spec)
    assert calls == []
    assert factory.made == []  # not even a socket
    message = str(info.value)
    assert "trionet.serve" in message and "a Unix socket" in message
    assert NAME in message and spec in message
    # The stale file a real server would have replaced is still there.
    assert stat.S_ISSOCK(os.lstat(unused_unix_path).st_mode)


async def test_a_unix_bind_without_a_network_still_replaces_a_stale_file(
    unused_unix_path: str, nursery: trio.Nursery
) -> None:
    # The control: the refusal above is the network's doing.
    make_stale_socket_file(unused_unix_path)
    server = await nursery.start(trionet.serve, _handler, f"unix:{unused_unix_path}")
    # The stale file was replaced by a live one (the inode number alone may
    # be reused at once: ask the socket).
    client = trio.socket.socket(stdlib_socket.AF_UNIX)
    with client, trio.fail_after(5):
        await client.connect(unused_unix_path)
    await server.shutdown(1)


@pytest.mark.parametrize("kind", ["stdlib", "trio"])
async def test_adopting_an_os_socket_is_refused(network: FakeNetwork, kind: str) -> None:
    real = stdlib_socket.socket()
    try:
        real.bind(("127.0.0.1", 0))
        real.listen()
        bind: Any = real if kind == "stdlib" else trio.socket.from_stdlib_socket(real)
        with trio.fail_after(5), pytest.raises(trionet.InvalidAddress) as info:
            await trionet.serve(_handler, bind)
        assert "trionet.serve" in str(info.value) and "an existing OS socket" in str(info.value)
        assert NAME in str(info.value)
        assert real.fileno() != -1  # left alone, not closed
    finally:
        real.close()


async def test_a_unix_connect_is_refused_before_any_socket(
    network: FakeNetwork, unused_unix_path: str
) -> None:
    with proxy_sockets() as factory:
        with trio.fail_after(5), pytest.raises(trionet.InvalidAddress) as info:
            await trionet.connect(f"unix:{unused_unix_path}", retries=3)
        assert factory.made == []
        async with trionet.ConnectionPool(f"unix:{unused_unix_path}") as pool:
            with trio.fail_after(5), pytest.raises(trionet.InvalidAddress, match="Unix socket"):
                async with pool.connection():
                    pass  # pragma: no cover
        assert factory.made == []
    message = str(info.value)
    assert "trionet.connect" in message and "a Unix socket" in message
    assert NAME in message and unused_unix_path in message


# ----------------------------------------------------------------------
# The sweep hook: accept_nowait()


class SweepableSocket(ProxySocket):
    """A descriptor-less socket with the sweep's synchronous, non-blocking accept."""

    def accept_nowait(self) -> tuple[trio.socket.SocketType, Any]:
        raw = self._inner._sock  # type: ignore[attr-defined]
        assert raw.gettimeout() == 0.0  # non-blocking: an empty queue raises EAGAIN
        sock, addr = raw.accept()
        return ProxySocket(trio.socket.from_stdlib_socket(sock)), addr


@contextmanager
def sockets_of(cls: type[ProxySocket]) -> Iterator[list[ProxySocket]]:
    made: list[ProxySocket] = []

    class Factory(trio.abc.SocketFactory):
        def socket(self, family: Any = 2, type: Any = 1, proto: int = 0) -> Any:
            inner = trio.socket.from_stdlib_socket(stdlib_socket.socket(family, type, proto))
            made.append(cls(inner))
            return made[-1]

    previous = trio.socket.set_custom_socket_factory(Factory())
    try:
        yield made
    finally:
        trio.socket.set_custom_socket_factory(previous)


@pytest.mark.parametrize("sweepable", [True, False])
async def test_the_sweep_accepts_from_a_descriptor_less_listener(
    trionet_server: ServerFactory, nursery: trio.Nursery, sweepable: bool
) -> None:
    release = trio.Event()
    running = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        line = await conn.receive_line()
        if line == b"first":
            running.set()
            await release.wait()
        await conn.send_all(line + b" served\n")

    with sockets_of(SweepableSocket if sweepable else ProxySocket) as made:
        server = await trionet_server(handler, max_connections=1)
    assert [type(s) for s in made] == [SweepableSocket if sweepable else ProxySocket]
    port = port_of(server)
    # Real clients: one holds the only slot, three wait in the kernel's queue.
    clients = []
    for i in range(4):
        sock = trio.socket.socket()
        clients.append(sock)
        with trio.fail_after(5):
            await sock.connect(("127.0.0.1", port))
            await sock.send(b"first\n" if i == 0 else b"q%d\n" % i)
            # Our EOF ends the server's lingering close at once (without a
            # descriptor it always lingers), freeing the slot for the next.
            sock.shutdown(stdlib_socket.SHUT_WR)
            if i == 0:
                await running.wait()
    await trio.testing.wait_all_tasks_blocked()
    assert server.stats.accepted == 1

    reports: list[trionet.ShutdownReport] = []
    stopped = trio.Event()

    async def shut_down() -> None:
        reports.append(await server.shutdown(10))
        stopped.set()

    nursery.start_soon(shut_down)
    await trio.testing.wait_all_tasks_blocked()  # the sweep ran when the drain began
    assert server.draining
    release.set()
    replies = []
    for sock in clients[1:]:
        with trio.fail_after(5):
            try:
                replies.append(await sock.recv(100))
            except ConnectionResetError:
                replies.append(b"(reset)")
    with trio.fail_after(10):
        await stopped.wait()
    for sock in clients:
        sock.close()
    if sweepable:
        assert replies == [b"q%d served\n" % i for i in (1, 2, 3)]
        assert reports[0].swept == 3
    else:  # no hook: nothing swept, the queued clients are dropped
        assert all(r in (b"", b"(reset)") for r in replies), replies
        assert reports[0].swept == 0
    assert server.stats.accept_errors == 0


class _FakeListener:
    """What the sweep (and ``_Storm``) read of a listener."""

    def __init__(self, sock: Any = None) -> None:
        self.sock = sock
        self.address = TCPAddress("127.0.0.1", 1)
        self.backlog: int | None = 8
        self.closed = False


class _Queue:
    """A descriptor-less listener's queue, as ``accept_nowait`` sees it."""

    def __init__(self, *outcomes: BaseException | str) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    def accept_nowait(self) -> tuple[str, tuple[str, int]]:
        self.calls += 1
        if not self.outcomes:
            raise BlockingIOError(errno.EAGAIN, "empty")
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome, ("127.0.0.1", 5)


@attrs.define
class _Target:
    counters: Counters = attrs.field(factory=Counters)
    sweep_log: RateLimiter = attrs.field(factory=lambda: RateLimiter(burst=3, period=60))
    admitted: list[Any] = attrs.field(factory=list)

    def admit(self, sock: Any, addr: Any, listener: Any, *, swept: bool) -> bool:
        assert swept
        self.admitted.append(sock)
        return True


async def test_the_sweep_hook_treats_errors_as_the_kernel_path_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aborted = OSError(errno.ECONNABORTED, "Software caused connection abort")
    exhausted = OSError(errno.EMFILE, "Too many open files")
    queue = _Queue("a", aborted, "b", exhausted, "never")
    target = _Target()
    assert _accept.sweep(target, _FakeListener(queue)) == 2  # type: ignore[arg-type]
    assert target.admitted == ["a", "b"]
    assert queue.calls == 4  # the abort skipped, the exhaustion stopped it
    assert target.counters.accept_errors == 2
    assert "Too many open files" in caplog.text

    # EAGAIN ends it; the number of calls is bounded by the queue's capacity.
    many = _Queue(*["c"] * 20)
    target = _Target()
    assert _accept.sweep(target, _FakeListener(many)) == 9  # type: ignore[arg-type]
    assert many.calls == 9  # backlog 8 + 1
    # A closed listener, or one without the hook, is not swept.
    closed = _FakeListener(_Queue("d"))
    closed.closed = True
    assert _accept.sweep(_Target(), closed) == 0  # type: ignore[arg-type]
    assert _accept.sweep(_Target(), _FakeListener(object())) == 0  # type: ignore[arg-type]


# ----------------------------------------------------------------------
# The health hook: is_readable()


async def test_the_pool_reuses_a_healthy_descriptor_less_connection_and_drops_a_closed_one(
    trionet_server: ServerFactory,
) -> None:
    hang_up = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        while line := await conn.receive_line():
            await conn.send_all(line + b"\n")
            if line == b"bye":
                await hang_up.wait()
                return  # the server closes its end while the client's is idle

    server = await trionet_server(handler)
    with proxy_sockets(), trio.fail_after(10):
        async with trionet.ConnectionPool(server.addresses[0], max_size=1) as pool:
            async with pool.connection() as first:
                assert isinstance(first.socket, ProxySocket)
                await first.send_all(b"one\n")
                assert await first.receive_line() == b"one"
            async with pool.connection() as again:
                assert again is first  # healthy: reused
                await again.send_all(b"bye\n")
                assert await again.receive_line() == b"bye"
            assert pool.stats.reused == 1 and pool.stats.created == 1
            assert pool.stats.idle == 1 and unusable_reason(first) is None
            hang_up.set()
            # The server's FIN arrives while the connection is idle.
            await trio.lowlevel.wait_readable(first.socket._inner)  # type: ignore[attr-defined]
            assert unusable_reason(first) == (
                "closed or reset by the peer, or holding unexpected data"
            )
            async with pool.connection() as fresh:
                assert fresh is not first
                await fresh.send_all(b"two\n")
                assert await fresh.receive_line() == b"two"
            assert pool.stats.created == 2 and pool.stats.discarded == 1
            assert first.closed


class _Unpollable(trio.socket.SocketType):
    """A descriptor-less socket whose ``is_readable`` fails, or is not implemented."""

    family = stdlib_socket.AF_INET
    type = stdlib_socket.SOCK_STREAM

    def __init__(self, error: BaseException | None) -> None:
        super().__init__()
        self.error = error

    def is_readable(self) -> bool:
        if self.error is None:
            return super().is_readable()  # the base class: NotImplementedError
        raise self.error

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (None, "no descriptor to check its health"),
        (OSError(errno.EBADF, "Bad file descriptor"), "it cannot be polled"),
    ],
)
def test_a_descriptor_less_socket_that_cannot_answer_is_never_reused(
    error: BaseException | None, reason: str
) -> None:
    conn = trionet.Connection(
        _Unpollable(error), peer=TCPAddress("127.0.0.1", 1), local=TCPAddress("127.0.0.1", 2)
    )
    assert unusable_reason(conn) == reason
