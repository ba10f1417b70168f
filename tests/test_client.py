"""Tests for ``trionet.connect`` (trionet/_client/), on real loopback and Unix sockets.

Name resolution for the happy-eyeballs tests is faked with
``trio.socket.set_custom_hostname_resolver`` (the names end in ``.test``, a
reserved TLD, and never reach a real resolver); every address they return is
on loopback.  A "hanging" address is a listener whose backlog is full, so the
kernel drops our SYN and ``connect`` stays pending.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import math
import os
import select
import socket as stdlib_socket
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import trio
import trio.testing

import trionet
from trionet import ConnectAttempt, ConnectError, ConnectTimeout, TCPAddress, UnixAddress, _virtual
from trionet._client import backoff_delay, interleave_families
from trionet.testing import fill_stream

pytestmark = pytest.mark.usefixtures("network")

AF_INET = stdlib_socket.AF_INET
AF_INET6 = stdlib_socket.AF_INET6
SOCK_STREAM = stdlib_socket.SOCK_STREAM

# Slack for timing assertions on a loaded 2-core CI machine.
SLACK = 0.5


################################################################
# Helpers
################################################################


def _family(host: str) -> int:
    return AF_INET6 if ":" in host else AF_INET


@contextlib.asynccontextmanager
async def refused_address(host: str = "127.0.0.1") -> AsyncIterator[TCPAddress]:
    """A port bound but not listening: connects to it are refused (and nobody can take it).

    A Trio socket: on the virtual network it is a virtual one.  Made before
    a test's ``track_sockets()``, so it is not counted there.
    """
    with trio.socket.socket(_family(host), SOCK_STREAM) as sock:
        await sock.bind((host, 0))
        yield TCPAddress(host, sock.getsockname()[1])


# How long a non-blocking connect must stay pending before we believe its
# SYN was dropped.  A loopback handshake normally completes inside the
# connect() call itself; a heavily loaded machine can defer the softirq that
# runs it, but not for anywhere near this long.
_PENDING_PROOF = 0.5
# The same on the virtual network, whose handshake takes no time at all
# unless a test sets a latency (and none that uses a hanging address does).
_VIRTUAL_PENDING_PROOF = 0.05


def _connected_within(sock: stdlib_socket.socket, seconds: float) -> bool:
    """True if a non-blocking connect completes (turns writable) within ``seconds``."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(seconds * 1000))


@contextlib.asynccontextmanager
async def full_backlog_address(host: str = "127.0.0.1") -> AsyncIterator[TCPAddress]:
    """A listener with ``listen(0)`` whose queue is full, so new SYNs are dropped.

    Linux admits one or two connections to a ``listen(0)`` queue; we keep
    connecting (non-blocking) until one stays pending for ``_PENDING_PROOF``
    seconds -- its SYN was dropped, the queue is full -- which means every
    later connect hangs too (nobody ever accepts).  A connect that completes,
    however slowly, just took a place in the queue, and we go on filling.
    Bounded: 16 connections, so at most 16 * ``_PENDING_PROOF`` seconds.
    The virtual network's listeners drop SYNs to a full queue too; there the
    fillers are virtual sockets, made before a test's ``track_sockets()``.
    """
    if _virtual.current() is not None:
        async with _full_virtual_backlog(host) as address:
            yield address
        return
    family = _family(host)
    listener = stdlib_socket.socket(family, SOCK_STREAM)
    fillers: list[stdlib_socket.socket] = []
    try:
        listener.bind((host, 0))
        listener.listen(0)
        addr = listener.getsockname()
        for _ in range(16):
            filler = stdlib_socket.socket(family, SOCK_STREAM)
            fillers.append(filler)
            filler.setblocking(False)
            filler.connect_ex(addr)
            if not _connected_within(filler, _PENDING_PROOF):
                break
        else:
            pytest.fail("could not fill the listen(0) backlog in 16 connections")
        yield TCPAddress(host, addr[1])
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@contextlib.asynccontextmanager
async def _full_virtual_backlog(host: str) -> AsyncIterator[TCPAddress]:
    family = _family(host)
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(trio.socket.socket(family, SOCK_STREAM))
        await listener.bind((host, 0))
        listener.listen(0)
        addr = listener.getsockname()
        for _ in range(16):
            filler = stack.enter_context(trio.socket.socket(family, SOCK_STREAM))
            with trio.move_on_after(_VIRTUAL_PENDING_PROOF) as pending:
                await filler.connect(addr)
            if pending.cancelled_caught:
                break
        else:
            pytest.fail("could not fill the listen(0) backlog in 16 connections")
        yield TCPAddress(host, addr[1])


class TrackingSocketFactory(trio.abc.SocketFactory):
    """Makes the sockets the factory it replaced would, and remembers each one.

    Without a previous factory they are real Trio sockets (fast path intact);
    on the virtual network, virtual ones.
    """

    def __init__(self) -> None:
        self.sockets: list[trio.socket.SocketType] = []
        self.inner: trio.abc.SocketFactory | None = None

    def socket(
        self,
        family: stdlib_socket.AddressFamily | int = AF_INET,
        type: stdlib_socket.SocketKind | int = SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        if self.inner is not None:
            sock = self.inner.socket(family, type, proto)
        else:
            sock = trio.socket.from_stdlib_socket(stdlib_socket.socket(family, type, proto))
        self.sockets.append(sock)
        return sock

    def open_sockets(self) -> list[trio.socket.SocketType]:
        return [s for s in self.sockets if s.fileno() != -1]


def track_sockets() -> TrackingSocketFactory:
    factory = TrackingSocketFactory()
    factory.inner = trio.socket.set_custom_socket_factory(factory)
    return factory


def _entry(address: TCPAddress) -> tuple[Any, ...]:
    family = _family(address.host)
    sockaddr: tuple[Any, ...] = (
        (address.host, address.port, 0, 0) if family == AF_INET6 else (address.host, address.port)
    )
    return (family, SOCK_STREAM, stdlib_socket.IPPROTO_TCP, "", sockaddr)


class FakeResolver(trio.abc.HostnameResolver):
    """Answers ``getaddrinfo`` from a table; the sockaddrs carry their own ports.

    ``failures`` maps a name to errors raised (one per call) before answering;
    a name mapped to ``None`` hangs forever.
    """

    def __init__(
        self,
        table: dict[str, Sequence[TCPAddress] | None],
        failures: dict[str, list[OSError]] | None = None,
    ) -> None:
        self.table = table
        self.failures = failures or {}
        self.calls: list[str] = []

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        await trio.lowlevel.checkpoint()
        name = host.decode("ascii") if host is not None else ""
        self.calls.append(name)
        pending = self.failures.get(name)
        if pending:
            raise pending.pop(0)
        if name not in self.table:
            raise stdlib_socket.gaierror(stdlib_socket.EAI_NONAME, "Name or service not known")
        answer = self.table[name]
        if answer is None:
            await trio.sleep_forever()
        assert answer is not None
        return [_entry(a) for a in answer]

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        raise NotImplementedError


def use_resolver(
    table: dict[str, Sequence[TCPAddress] | None],
    failures: dict[str, list[OSError]] | None = None,
) -> FakeResolver:
    resolver = FakeResolver(table, failures)
    trio.socket.set_custom_hostname_resolver(resolver)
    return resolver


async def echo_lines(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def report_peer(conn: trionet.Connection) -> None:
    """Tell the client which address the server sees, then wait for its EOF."""
    await conn.send_all(f"{conn.peer} {conn.local}\n".encode())
    async for _ in conn:
        pass


async def server_view(conn: trionet.Connection) -> tuple[str, str]:
    peer, local = (await conn.receive_line()).decode().split()
    return peer, local


################################################################
# Basics: the Connection we return
################################################################


async def test_connect_tcp_echo_and_addresses(trionet_server: Any) -> None:
    server = await trionet_server(report_peer)
    target = server.addresses[0]
    with trio.fail_after(5):
        conn = await trionet.connect(target)
        async with conn:
            assert isinstance(conn, trionet.Connection)
            peer, local = await server_view(conn)
            # The kernel chose our port; conn.local reports it, as the server saw it.
            assert str(conn.local) == peer
            assert conn.local.host == "127.0.0.1"
            assert isinstance(conn.local, TCPAddress) and conn.local.port != 0
            assert conn.peer == target
            assert str(conn.peer) == local
            assert conn.bytes_received == len(f"{peer} {local}\n")


async def test_connect_accepts_spec_tuple_and_record(trionet_server: Any) -> None:
    server = await trionet_server(echo_lines)
    address = server.addresses[0]
    with trio.fail_after(5):
        for target in (str(address), (address.host, address.port), address):
            async with await trionet.connect(target) as conn:
                await conn.send_all(b"hello\n")
                assert await conn.receive_line() == b"hello"
                assert conn.peer == address


async def test_tcp_nodelay_on_and_keepalive_option(trionet_server: Any) -> None:
    server = await trionet_server(echo_lines)
    with trio.fail_after(5):
        async with await trionet.connect(server.addresses[0]) as conn:
            assert conn.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY) != 0
            assert conn.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_KEEPALIVE) == 0
        async with await trionet.connect(server.addresses[0], keepalive=30) as conn:
            assert conn.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_KEEPALIVE) == 1
            if hasattr(stdlib_socket, "TCP_KEEPIDLE"):
                idle = conn.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_KEEPIDLE)
                assert idle == 30


async def test_connect_ipv6(trionet_server: Any) -> None:
    server = await trionet_server(report_peer, "tcp://[::1]:0")
    with trio.fail_after(5):
        async with await trionet.connect(server.addresses[0]) as conn:
            peer, local = await server_view(conn)
            assert conn.peer == server.addresses[0]
            assert conn.peer.host == "::1"
            assert isinstance(conn.local, TCPAddress) and conn.local.host == "::1"
            assert str(conn.local) == peer
            assert str(conn.peer) == local


@pytest.mark.loopback_only("Unix-domain sockets: the virtual network simulates TCP only")
async def test_connect_unix_path(trionet_server: Any, unused_unix_path: str) -> None:
    server = await trionet_server(report_peer, f"unix:{unused_unix_path}")
    with trio.fail_after(5):
        async with await trionet.connect(f"unix:{unused_unix_path}") as conn:
            peer, local = await server_view(conn)
            assert conn.peer == UnixAddress(unused_unix_path) == server.addresses[0]
            assert conn.local == UnixAddress("")  # an unnamed client socket
            assert (peer, local) == ("unix:", f"unix:{unused_unix_path}")
        async with await trionet.connect(server.addresses[0]) as conn:
            assert conn.peer == UnixAddress(unused_unix_path)


@pytest.mark.loopback_only("Unix-domain sockets: the virtual network simulates TCP only")
async def test_connect_unix_abstract(trionet_server: Any) -> None:
    name = f"@trionet-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    server = await trionet_server(report_peer, f"unix:{name}")
    with trio.fail_after(5):
        async with await trionet.connect(f"unix:{name}") as conn:
            peer, local = await server_view(conn)
            assert conn.peer == UnixAddress(name) == server.addresses[0]
            assert conn.peer.is_abstract
            assert conn.local == UnixAddress("")
            assert (peer, local) == ("unix:", f"unix:{name}")


@pytest.mark.loopback_only("Unix-domain sockets: the virtual network simulates TCP only")
async def test_connect_unix_missing_path_is_connect_error(unused_unix_path: str) -> None:
    with pytest.raises(ConnectError) as info:
        await trionet.connect(f"unix:{unused_unix_path}")
    assert info.value.target == UnixAddress(unused_unix_path)
    (attempt,) = info.value.attempts
    assert isinstance(attempt.error, FileNotFoundError)
    assert unused_unix_path in str(info.value)


@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:0", "tcp://[::]:0", "tcp://*:0"])
async def test_connect_to_wildcard_address(trionet_server: Any, bind: str) -> None:
    server = await trionet_server(echo_lines, bind)
    with trio.fail_after(5):
        for address in server.addresses:
            assert address.host in ("0.0.0.0", "::")
            async with await trionet.connect(address) as conn:
                await conn.send_all(b"x\n")
                assert await conn.receive_line() == b"x"
                # The kernel maps the wildcard to loopback; peer says where we went.
                assert conn.peer.host in ("127.0.0.1", "::1")
            # The spec's own wildcard ("*") means this machine too.
            async with await trionet.connect(f"tcp://*:{address.port}") as conn:
                assert conn.peer.host in ("127.0.0.1", "::1")


################################################################
# check_half_closeable_stream on client-side Connections
################################################################


async def _client_and_server(
    family: int = AF_INET, path: str = ""
) -> tuple[trionet.Connection, trionet.Connection]:
    """A ``trionet.connect`` client and the server-side Connection it reached."""
    listener = trio.socket.socket(family)
    with listener:
        if family == AF_INET:
            await listener.bind(("127.0.0.1", 0))
            target: Any = ("127.0.0.1", listener.getsockname()[1])
        else:
            await listener.bind(path)
            target = f"unix:{path}"
        listener.listen(1)
        client = await trionet.connect(target)
        server_sock, _ = await listener.accept()
    return client, trionet.Connection(server_sock)


async def test_check_half_closeable_stream_tcp_client() -> None:
    # A *clogged* TCP pair is not stable on Linux: a send that hit EAGAIN can
    # be followed by small sends the kernel fits into the tail segment, and
    # receive-queue collapsing reopens the window later.  So the clogged
    # variant runs over Unix sockets below (same Connection code path), as
    # trio's own SocketStream tests do with socketpair().
    async def client_first() -> tuple[trionet.Connection, trionet.Connection]:
        return await _client_and_server()

    async def server_first() -> tuple[trionet.Connection, trionet.Connection]:
        client, server = await _client_and_server()
        return server, client

    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(client_first, None)
        await trio.testing.check_half_closeable_stream(server_first, None)


@pytest.mark.loopback_only("Unix-domain sockets: the virtual network simulates TCP only")
async def test_check_half_closeable_stream_unix_client_clogged(unused_unix_path: str) -> None:
    counter = iter(range(1000))

    async def client_first() -> tuple[trionet.Connection, trionet.Connection]:
        path = f"{unused_unix_path}.{next(counter)}"
        client, server = await _client_and_server(stdlib_socket.AF_UNIX, path)
        os.unlink(path)
        assert client.peer == UnixAddress(path)
        return client, server

    async def server_first() -> tuple[trionet.Connection, trionet.Connection]:
        client, server = await client_first()
        return server, client

    async def clogged_client_first() -> tuple[trionet.Connection, trionet.Connection]:
        left, right = await client_first()
        await fill_stream(left)
        await fill_stream(right)
        return left, right

    async def clogged_server_first() -> tuple[trionet.Connection, trionet.Connection]:
        left, right = await server_first()
        await fill_stream(left)
        await fill_stream(right)
        return left, right

    with trio.fail_after(30):
        await trio.testing.check_half_closeable_stream(client_first, clogged_client_first)
        await trio.testing.check_half_closeable_stream(server_first, clogged_server_first)


################################################################
# local_address
################################################################


async def test_local_address_ip(trionet_server: Any) -> None:
    server = await trionet_server(report_peer)
    with trio.fail_after(5):
        async with await trionet.connect(server.addresses[0], local_address="127.0.0.3") as conn:
            peer, _local = await server_view(conn)
            assert isinstance(conn.local, TCPAddress)
            assert conn.local.host == "127.0.0.3"
            assert conn.local.port != 0
            assert peer == str(conn.local)
            assert peer.startswith("tcp://127.0.0.3:")


async def test_local_address_ip_and_port(trionet_server: Any) -> None:
    server = await trionet_server(report_peer)
    probe = stdlib_socket.socket()
    probe.bind(("127.0.0.3", 0))
    port = probe.getsockname()[1]
    probe.close()
    with trio.fail_after(5):
        conn = await trionet.connect(server.addresses[0], local_address=("127.0.0.3", port))
        async with conn:
            peer, _local = await server_view(conn)
            assert conn.local == TCPAddress("127.0.0.3", port)
            assert peer == f"tcp://127.0.0.3:{port}"
    # TCPAddress works too.
    with trio.fail_after(5):
        conn = await trionet.connect(server.addresses[0], local_address=TCPAddress("127.0.0.3", 0))
        async with conn:
            assert conn.local.host == "127.0.0.3"  # type: ignore[union-attr]


async def test_local_address_ipv6(trionet_server: Any) -> None:
    server = await trionet_server(report_peer, "tcp://[::1]:0")
    with trio.fail_after(5):
        async with await trionet.connect(server.addresses[0], local_address="::1") as conn:
            peer, _local = await server_view(conn)
            assert conn.local.host == "::1"  # type: ignore[union-attr]
            assert peer == str(conn.local)


async def test_local_address_filters_remote_families(trionet_server: Any) -> None:
    v4 = await trionet_server(echo_lines, "tcp://127.0.0.1:0")
    async with refused_address("::1") as v6_refused:
        use_resolver({"dual.test": [v6_refused, v4.addresses[0]]})
        seen: list[ConnectAttempt] = []
        with trio.fail_after(5):
            conn = await trionet.connect(
                "tcp://dual.test:9", local_address="127.0.0.3", on_attempt=seen.append
            )
        async with conn:
            assert conn.local.host == "127.0.0.3"  # type: ignore[union-attr]
        # The IPv6 address was never tried.
        assert [a.address for a in seen] == [v4.addresses[0]]

        use_resolver({"v6only.test": [v6_refused]})
        with pytest.raises(ConnectError) as info:
            await trionet.connect("tcp://v6only.test:9", local_address="127.0.0.3")
        assert "v6only.test" in str(info.value)
        assert "IPv4" in str(info.value)
        (attempt,) = info.value.attempts
        assert attempt.address == TCPAddress("v6only.test", 9)


async def test_unbindable_local_address_is_a_recorded_attempt_not_retried(
    trionet_server: Any,
) -> None:
    server = await trionet_server(echo_lines)
    # 192.0.2.1 (TEST-NET-1) is not assigned to this machine: bind() fails
    # with EADDRNOTAVAIL before any packet is sent.  No retry can change
    # that, so retries=4 makes no second attempt.
    with trio.fail_after(5), pytest.raises(ConnectError) as info:
        await trionet.connect(
            server.addresses[0], local_address="192.0.2.1", retries=4, backoff=0.01
        )
    (attempt,) = info.value.attempts
    assert isinstance(attempt.error, OSError)
    assert attempt.error.errno == errno.EADDRNOTAVAIL
    assert isinstance(attempt.error.__cause__, OSError)  # the original bind error
    reason = f"bind to 192.0.2.1 failed: {os.strerror(errno.EADDRNOTAVAIL)}"
    # The virtual network adds which address no host has, in parentheses.
    assert attempt.describe().startswith(f"{server.addresses[0]}: {reason}")
    assert info.value.errno == errno.EADDRNOTAVAIL
    assert reason in str(info.value)
    assert server.stats.accepted == 0


async def test_bind_address_in_use_is_retried(trionet_server: Any) -> None:
    server = await trionet_server(report_peer)
    # The local port is held by a bound socket without SO_REUSEADDR, so our
    # bind gets EADDRINUSE -- until the holder closes after the first failure.
    holder = trio.socket.socket()
    await holder.bind(("127.0.0.3", 0))
    port = holder.getsockname()[1]
    seen: list[ConnectAttempt] = []

    def observe(attempt: ConnectAttempt) -> None:
        seen.append(attempt)
        holder.close()

    try:
        with trio.fail_after(5):
            conn = await trionet.connect(
                server.addresses[0],
                local_address=("127.0.0.3", port),
                retries=3,
                backoff=0.01,
                on_attempt=observe,
            )
    finally:
        holder.close()
    async with conn:
        peer, _local = await server_view(conn)
        assert conn.local == TCPAddress("127.0.0.3", port)
        assert peer == f"tcp://127.0.0.3:{port}"
    assert [a.outcome for a in seen] == ["failed", "connected"]
    assert isinstance(seen[0].error, OSError)
    assert seen[0].error.errno == errno.EADDRINUSE
    assert f"bind to 127.0.0.3:{port} failed" in seen[0].describe()


################################################################
# Timeouts and cancellation (must-show 1)
################################################################


async def test_full_backlog_raises_connect_timeout_in_time() -> None:
    async with full_backlog_address() as target:
        factory = track_sockets()
        start = trio.current_time()
        with pytest.raises(ConnectTimeout) as info:
            await trionet.connect(target, timeout=0.5)
        elapsed = trio.current_time() - start
    exc = info.value
    assert 0.5 - 0.01 <= elapsed < 0.5 + SLACK
    assert not isinstance(exc, BaseExceptionGroup)
    assert isinstance(exc, ConnectError)
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, OSError)
    assert exc.errno == errno.ETIMEDOUT
    assert str(target) in str(exc)
    (attempt,) = exc.attempts
    assert attempt.address == target
    assert attempt.outcome == "timed out"
    assert isinstance(attempt.error, TimeoutError)
    assert factory.sockets and not factory.open_sockets()


async def test_full_backlog_enclosing_cancel_is_clean() -> None:
    seen: list[ConnectAttempt] = []
    async with full_backlog_address() as target:
        factory = track_sockets()
        start = trio.current_time()
        with trio.move_on_after(0.3) as scope:
            await trionet.connect(target, retries=5, on_attempt=seen.append)
        elapsed = trio.current_time() - start
    assert scope.cancelled_caught
    assert elapsed < 0.3 + SLACK
    # One attempt, cancelled -- not converted to an error, not retried.
    assert [a.outcome for a in seen] == ["cancelled"]
    assert len(factory.sockets) == 1
    assert not factory.open_sockets()


@pytest.mark.parametrize("addresses", [1, 2])
async def test_enclosing_cancel_comes_out_as_a_bare_cancelled(addresses: int) -> None:
    # `except trio.Cancelled:` around connect must run: the attempts' race
    # nursery must not wrap the Cancelled in a BaseExceptionGroup.  With two
    # addresses both attempts are pending when the cancel arrives.
    async with contextlib.AsyncExitStack() as stack:
        hanging = [
            await stack.enter_async_context(full_backlog_address()) for _ in range(addresses)
        ]
        factory = track_sockets()
        use_resolver({"hang.test": hanging})
        caught: list[BaseException] = []
        with trio.fail_after(5), trio.move_on_after(0.3) as scope:
            try:
                await trionet.connect("tcp://hang.test:80", happy_eyeballs_delay=0.05)
            except trio.Cancelled as exc:
                caught.append(exc)
                raise
    assert scope.cancelled_caught
    assert len(caught) == 1 and type(caught[0]) is trio.Cancelled
    assert len(factory.sockets) == addresses and not factory.open_sockets()


async def test_enclosing_cancel_while_retrying_is_not_retried() -> None:
    seen: list[ConnectAttempt] = []
    async with refused_address() as target:
        factory = track_sockets()
        with trio.move_on_after(0.3) as scope:
            await trionet.connect(
                target, retries=10_000, backoff=0.05, max_backoff=0.05, on_attempt=seen.append
            )
        assert scope.cancelled_caught  # Cancelled came through, no ConnectError
        assert len(seen) >= 1
        assert all(a.outcome == "failed" for a in seen[:-1])
        # The cancel usually lands in a back-off sleep; it can also land
        # between the start of an attempt and its refusal (usually before
        # Trio's connect() has even made the system call): "cancelled".
        assert seen[-1].outcome in ("failed", "cancelled")
        assert not factory.open_sockets()


async def test_timeout_bounds_every_retry() -> None:
    async with refused_address() as target:
        start = trio.current_time()
        with pytest.raises(ConnectTimeout) as info:
            await trionet.connect(
                target, timeout=0.4, retries=10_000, backoff=0.02, max_backoff=0.05
            )
        elapsed = trio.current_time() - start
    assert 0.4 - 0.01 <= elapsed < 0.4 + SLACK
    attempts = info.value.attempts
    assert len(attempts) >= 2
    assert [a.round for a in attempts] == list(range(len(attempts)))
    # Every finished attempt was refused.  The deadline may land between the
    # start of the last attempt and its refusal (usually before Trio's
    # connect() has even made the system call); that one is "timed out".
    *finished, last = attempts
    assert all(a.outcome == "failed" for a in finished)
    assert all(isinstance(a.error, ConnectionRefusedError) for a in finished)
    if last.outcome == "timed out":
        assert isinstance(last.error, TimeoutError)
    else:
        assert last.outcome == "failed"
        assert isinstance(last.error, ConnectionRefusedError)
    assert all(a.address == target for a in attempts)


async def test_timeout_bounds_name_resolution(autojump_clock: trio.abc.Clock) -> None:
    # Only a fake resolver sleeps here -- no real I/O -- so the clock can jump.
    use_resolver({"slow.test": None})
    start = trio.current_time()
    with pytest.raises(ConnectTimeout) as info:
        await trionet.connect("tcp://slow.test:80", timeout=3.0, retries=2)
    assert trio.current_time() - start == pytest.approx(3.0)
    (attempt,) = info.value.attempts
    assert attempt.address == TCPAddress("slow.test", 80)
    assert attempt.outcome == "timed out"


################################################################
# Retries (must-show 2)
################################################################


async def test_retries_succeed_once_server_starts_listening(
    trionet_server: Any, nursery: trio.Nursery, network: object
) -> None:
    # Reserve the port by binding without listening: connects are refused
    # until we call listen() on this very socket.  trionet serves an adopted
    # OS socket only on the real network; on the virtual one the reserving
    # socket makes way for a server on its port (nothing else can take it).
    sock = stdlib_socket.socket() if network is None else trio.socket.socket()
    if network is None:
        sock.bind(("127.0.0.1", 0))
    else:
        await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    first_failure = trio.Event()
    listening_at: list[float] = []
    seen: list[ConnectAttempt] = []

    def observe(attempt: ConnectAttempt) -> None:
        seen.append(attempt)
        if attempt.outcome == "failed":
            first_failure.set()

    async def listen_later() -> None:
        await first_failure.wait()
        await trio.sleep(0.5)  # the scenario: the server comes up 0.5 s later
        if network is None:
            sock.listen(16)
            listening_at.append(trio.current_time())
            await trionet_server(echo_lines, sock)
        else:
            sock.close()
            await trionet_server(echo_lines, f"tcp://127.0.0.1:{port}")
            listening_at.append(trio.current_time())

    nursery.start_soon(listen_later)
    start = trio.current_time()
    with trio.fail_after(10):
        conn = await trionet.connect(
            ("127.0.0.1", port), retries=100, backoff=0.05, max_backoff=0.2, on_attempt=observe
        )
    async with conn:
        await conn.send_all(b"finally\n")
        assert await conn.receive_line() == b"finally"
    assert isinstance(seen[0].error, ConnectionRefusedError)
    assert all(a.outcome == "failed" for a in seen[:-1])
    assert seen[-1].outcome == "connected"
    assert seen[-1].round == len(seen) - 1 >= 1
    # The attempt's connect() is issued in the same scheduling step in which
    # the attempt begins, so the winner began after listen() and the last
    # refused one before it -- give or take the gap between ``start`` and
    # connect's own clock origin, which comes after it resolves the address
    # (measured: up to a few ms on a loaded machine, so 20 ms of slack); the
    # winner began within one capped back-off of listen().
    won_at = start + seen[-1].started
    assert won_at >= listening_at[0] - 0.02
    assert start + seen[-2].started <= listening_at[0] + 0.02
    assert won_at - listening_at[0] < 0.2 + SLACK
    assert seen[-1].started >= 0.5


async def test_no_retries_lists_the_refused_attempt() -> None:
    async with refused_address() as target:
        with pytest.raises(ConnectError) as info:
            await trionet.connect(target)
    exc = info.value
    assert type(exc) is ConnectError  # not a timeout, not a group
    assert exc.errno == errno.ECONNREFUSED
    assert exc.target == target
    assert str(target) in str(exc)
    assert "refused" in str(exc).lower()
    (attempt,) = exc.attempts
    assert attempt.address == target
    assert isinstance(attempt.error, ConnectionRefusedError)
    assert attempt.outcome == "failed"
    assert attempt.round == 0


async def test_failed_name_lookups_are_retried(trionet_server: Any) -> None:
    server = await trionet_server(echo_lines)
    flaky = [stdlib_socket.gaierror(stdlib_socket.EAI_AGAIN, "Temporary failure") for _ in range(2)]
    resolver = use_resolver({"flaky.test": [server.addresses[0]]}, {"flaky.test": flaky})
    with trio.fail_after(5):
        conn = await trionet.connect("tcp://flaky.test:1", retries=3, backoff=0.01)
    await conn.aclose()
    assert resolver.calls == ["flaky.test"] * 3


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (stdlib_socket.EAI_NONAME, "Name or service not known"),
        (stdlib_socket.EAI_FAIL, "Non-recoverable failure in name resolution"),
    ],
)
async def test_name_that_does_not_exist_is_not_retried(code: int, text: str) -> None:
    failures = {"nowhere.test": [stdlib_socket.gaierror(code, text) for _ in range(4)]}
    resolver = use_resolver({}, failures)
    with trio.fail_after(5), pytest.raises(ConnectError) as info:
        await trionet.connect("tcp://nowhere.test:1", retries=3, backoff=0.01)
    assert resolver.calls == ["nowhere.test"]  # one lookup: a retry cannot help
    exc = info.value
    (attempt,) = exc.attempts
    assert attempt.address == TCPAddress("nowhere.test", 1)
    assert isinstance(attempt.error, stdlib_socket.gaierror)
    assert attempt.error.errno == code  # the EAI code stays on the attempt
    # ConnectError.errno is an errno or None -- never an EAI code -- and the
    # lookup's own words are in the message.
    assert exc.errno is None
    assert "nowhere.test" in str(exc)
    assert text in str(exc)


async def test_no_address_of_the_local_family_is_not_retried() -> None:
    async with refused_address("::1") as v6_refused:
        resolver = use_resolver({"v6only.test": [v6_refused]})
        with trio.fail_after(5), pytest.raises(ConnectError) as info:
            await trionet.connect(
                "tcp://v6only.test:9", local_address="127.0.0.3", retries=3, backoff=0.01
            )
    assert resolver.calls == ["v6only.test"]
    (attempt,) = info.value.attempts
    assert "IPv4" in attempt.describe()


@pytest.mark.loopback_only("Unix-domain sockets: the virtual network simulates TCP only")
async def test_missing_unix_socket_is_retried(unused_unix_path: str) -> None:
    # The server may not have created its socket yet: a connect failure.
    with trio.fail_after(5), pytest.raises(ConnectError) as info:
        await trionet.connect(f"unix:{unused_unix_path}", retries=2, backoff=0.01)
    assert [a.round for a in info.value.attempts] == [0, 1, 2]
    assert all(isinstance(a.error, FileNotFoundError) for a in info.value.attempts)


def test_backoff_delay_is_capped_full_jitter() -> None:
    assert backoff_delay(0, 0.1, 5.0, rand=lambda: 0.0) == 0.0
    for retry, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (5, 3.2), (6, 5.0), (500, 5.0)]:
        assert backoff_delay(retry, 0.1, 5.0, rand=lambda: 1.0) == pytest.approx(ceiling)
    samples = [backoff_delay(3, 0.1, 5.0) for _ in range(200)]
    assert all(0.0 <= s < 0.8 for s in samples)
    assert max(samples) - min(samples) > 0.2  # jittered, not a constant


################################################################
# Happy eyeballs (must-show 7): fake names, real loopback sockets
################################################################


def test_interleave_families_rfc8305_order() -> None:
    a4, b4, c4 = (TCPAddress(f"127.0.0.{i}", 80) for i in (1, 2, 3))
    a6, b6 = TCPAddress("::1", 80), TCPAddress("::2", 80)

    def hosts(entries: list[Any]) -> list[str]:
        return [e[4][0] for e in entries]

    got = interleave_families([_entry(a) for a in (a6, b6, a4, b4, c4)])
    assert hosts(got) == ["::1", "127.0.0.1", "::2", "127.0.0.2", "127.0.0.3"]
    got = interleave_families([_entry(a) for a in (a4, b4, c4, a6)])
    assert hosts(got) == ["127.0.0.1", "::1", "127.0.0.2", "127.0.0.3"]
    got = interleave_families([_entry(a) for a in (a4, a4, b4)])
    assert hosts(got) == ["127.0.0.1", "127.0.0.2"]
    assert interleave_families([]) == []


async def test_happy_eyeballs_order_interleaves_families(trionet_server: Any) -> None:
    good = (await trionet_server(echo_lines)).addresses[0]
    async with (
        refused_address("::1") as r6a,
        refused_address("::1") as r6b,
        refused_address("127.0.0.1") as r4a,
    ):
        use_resolver({"multi.test": [r6a, r6b, r4a, good]})
        seen: list[ConnectAttempt] = []
        with trio.fail_after(5):
            conn = await trionet.connect(
                "tcp://multi.test:80", happy_eyeballs_delay=5.0, on_attempt=seen.append
            )
        await conn.aclose()
    by_start = sorted(seen, key=lambda a: a.started)
    assert [a.address for a in by_start] == [r6a, r4a, r6b, good]
    assert [a.outcome for a in by_start] == ["failed", "failed", "failed", "connected"]
    assert conn.peer == good
    # Each refusal started the next attempt at once, not after the 5 s delay.
    assert by_start[-1].started < 1.0


async def test_hanging_attempt_does_not_block_the_next(trionet_server: Any) -> None:
    good = (await trionet_server(echo_lines)).addresses[0]
    async with full_backlog_address() as hanging:
        factory = track_sockets()
        use_resolver({"stagger.test": [hanging, good]})
        seen: list[ConnectAttempt] = []
        start = trio.current_time()
        with trio.fail_after(5):
            conn = await trionet.connect(
                "tcp://stagger.test:80", happy_eyeballs_delay=0.3, on_attempt=seen.append
            )
        elapsed = trio.current_time() - start
        async with conn:
            await conn.send_all(b"hi\n")
            assert await conn.receive_line() == b"hi"
            by_address = {a.address: a for a in seen}
            assert by_address[good].outcome == "connected"
            assert by_address[hanging].outcome == "abandoned"
            assert by_address[hanging].error is None
            # The second attempt started after the delay, while the first hung.
            gap = by_address[good].started - by_address[hanging].started
            assert 0.3 - 0.01 <= gap < 0.3 + SLACK
            assert elapsed < 0.3 + SLACK
            # The loser's socket is closed; only the winner's is open.
            assert len(factory.sockets) == 2
            assert factory.open_sockets() == [conn.socket]
        assert not factory.open_sockets()


async def test_zero_delay_starts_all_attempts_at_once(trionet_server: Any) -> None:
    good = (await trionet_server(echo_lines)).addresses[0]
    async with full_backlog_address() as hang1, full_backlog_address() as hang2:
        factory = track_sockets()
        use_resolver({"burst.test": [hang1, hang2, good]})
        seen: list[ConnectAttempt] = []
        with trio.fail_after(5):
            conn = await trionet.connect(
                "tcp://burst.test:80", happy_eyeballs_delay=0, on_attempt=seen.append
            )
        async with conn:
            assert len(seen) == 3
            assert all(a.started < 0.2 for a in seen)
            assert sorted(a.outcome for a in seen) == ["abandoned", "abandoned", "connected"]
            assert factory.open_sockets() == [conn.socket]


async def test_delay_none_is_strictly_sequential(trionet_server: Any) -> None:
    good = (await trionet_server(echo_lines)).addresses[0]
    async with full_backlog_address() as hanging:
        factory = track_sockets()
        use_resolver({"seq.test": [hanging, good]})
        start = trio.current_time()
        with pytest.raises(ConnectTimeout) as info:
            await trionet.connect("tcp://seq.test:80", happy_eyeballs_delay=None, timeout=0.6)
        elapsed = trio.current_time() - start
    # Trio would have started the second attempt after 0.25 s and connected;
    # one-at-a-time never got past the hanging first address.
    assert elapsed >= 0.6 - 0.01
    (attempt,) = info.value.attempts
    assert attempt.address == hanging
    assert attempt.outcome == "timed out"
    assert len(factory.sockets) == 1 and not factory.open_sockets()


async def test_delay_none_moves_on_after_each_failure(trionet_server: Any) -> None:
    good = (await trionet_server(echo_lines)).addresses[0]
    async with refused_address() as r1, refused_address() as r2:
        use_resolver({"seq.test": [r1, r2, good]})
        seen: list[ConnectAttempt] = []
        with trio.fail_after(5):
            conn = await trionet.connect(
                "tcp://seq.test:80", happy_eyeballs_delay=None, on_attempt=seen.append
            )
        await conn.aclose()
    assert [a.address for a in seen] == [r1, r2, good]
    for before, after in itertools.pairwise(seen):
        assert after.started >= before.started + before.elapsed


async def test_every_attempt_recorded_when_all_fail() -> None:
    async with (
        refused_address("127.0.0.1") as r4,
        refused_address("::1") as r6,
        full_backlog_address() as hanging,
    ):
        factory = track_sockets()
        use_resolver({"bad.test": [r4, r6, hanging]})
        with pytest.raises(ConnectTimeout) as info:
            await trionet.connect("tcp://bad.test:80", timeout=0.5, happy_eyeballs_delay=0.1)
    exc = info.value
    assert not isinstance(exc, BaseExceptionGroup)
    assert [a.address for a in exc.attempts] == [r4, r6, hanging]
    assert [a.outcome for a in exc.attempts] == ["failed", "failed", "timed out"]
    assert isinstance(exc.attempts[0].error, ConnectionRefusedError)
    assert isinstance(exc.attempts[1].error, ConnectionRefusedError)
    assert "bad.test" in str(exc)
    assert len(factory.sockets) == 3 and not factory.open_sockets()


async def test_all_refused_is_one_bare_connect_error() -> None:
    async with refused_address("127.0.0.1") as r4, refused_address("::1") as r6:
        use_resolver({"refused.test": [r4, r6]})
        with pytest.raises(ConnectError) as info:
            await trionet.connect("tcp://refused.test:80", retries=1, backoff=0.01)
    exc = info.value
    assert type(exc) is ConnectError
    assert [(a.address, a.round) for a in exc.attempts] == [(r4, 0), (r6, 0), (r4, 1), (r6, 1)]
    assert "all 4 attempts failed" in str(exc)
    assert str(r6) in str(exc)


async def test_on_attempt_errors_are_logged_not_raised(
    trionet_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await trionet_server(echo_lines)

    def broken(attempt: ConnectAttempt) -> None:
        raise RuntimeError("observer bug")

    with caplog.at_level(logging.ERROR, logger="trionet.client"):
        conn = await trionet.connect(server.addresses[0], on_attempt=broken)
    await conn.aclose()
    assert "on_attempt callback raised" in caplog.text


################################################################
# Invalid arguments raise at call time, before any I/O
################################################################


async def _async_observer(attempt: ConnectAttempt) -> None:  # pragma: no cover - refused
    pass


@pytest.mark.parametrize(
    ("target", "options", "error"),
    [
        ("tcp://127.0.0.1", {}, trionet.InvalidAddress),
        ("bogus", {}, trionet.InvalidAddress),
        ("tcp://127.0.0.1:0", {}, trionet.InvalidAddress),
        ("tcp://bad..name:80", {}, trionet.InvalidAddress),
        ("tcp://ex$mple.test:80", {}, trionet.InvalidAddress),
        (("127.0.0.1",), {}, trionet.InvalidAddress),
        (["127.0.0.1", 80], {}, trionet.InvalidAddress),
        (42, {}, trionet.InvalidAddress),
        ("tcp://127.0.0.1:80", {"timeout": -1}, ValueError),
        ("tcp://127.0.0.1:80", {"timeout": 0}, ValueError),
        ("tcp://127.0.0.1:80", {"timeout": math.nan}, ValueError),
        ("tcp://127.0.0.1:80", {"timeout": "5"}, TypeError),
        ("tcp://127.0.0.1:80", {"retries": -1}, ValueError),
        ("tcp://127.0.0.1:80", {"retries": 1.5}, TypeError),
        ("tcp://127.0.0.1:80", {"retries": True}, TypeError),
        ("tcp://127.0.0.1:80", {"backoff": -0.1}, ValueError),
        ("tcp://127.0.0.1:80", {"backoff": math.inf}, ValueError),
        ("tcp://127.0.0.1:80", {"backoff": 1.0, "max_backoff": 0.5}, ValueError),
        ("tcp://127.0.0.1:80", {"happy_eyeballs_delay": -1}, ValueError),
        ("tcp://127.0.0.1:80", {"happy_eyeballs_delay": "0"}, TypeError),
        ("tcp://127.0.0.1:80", {"keepalive": -1}, ValueError),
        ("tcp://127.0.0.1:80", {"local_address": "not-an-ip"}, trionet.InvalidAddress),
        ("tcp://127.0.0.1:80", {"local_address": ("127.0.0.1", 70000)}, trionet.InvalidAddress),
        ("tcp://127.0.0.1:80", {"local_address": 7}, trionet.InvalidAddress),
        ("tcp://127.0.0.1:80", {"local_address": "::1"}, trionet.InvalidAddress),
        ("unix:/tmp/x.sock", {"local_address": "127.0.0.1"}, trionet.InvalidAddress),
        ("tcp://127.0.0.1:80", {"on_attempt": 3}, TypeError),
        # Called, never awaited: an async observer would silently never run.
        ("tcp://127.0.0.1:80", {"on_attempt": _async_observer}, TypeError),
        ("tcp://127.0.0.1:80", {"no_such_option": 1}, TypeError),
    ],
)
async def test_invalid_arguments_raise_before_any_io(
    target: Any, options: dict[str, Any], error: type[Exception]
) -> None:
    resolver = use_resolver({})
    factory = track_sockets()
    # Inside an already-cancelled scope: any checkpoint before validation
    # would raise Cancelled instead of the argument error.
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(error):
            await trionet.connect(target, **options)
    assert resolver.calls == []
    assert factory.sockets == []


def test_connect_error_reports_round_and_outcome_in_records() -> None:
    refused = os.strerror(errno.ECONNREFUSED)
    trio_style = ConnectionRefusedError(
        errno.ECONNREFUSED, f"Error connecting to ('127.0.0.1', 1): {refused}"
    )
    attempt = ConnectAttempt(TCPAddress("127.0.0.1", 1), trio_style, 2)
    assert attempt.outcome == "failed"
    assert attempt.round == 2
    assert attempt.describe() == f"tcp://127.0.0.1:1: {refused}"
    custom = OSError(errno.EADDRNOTAVAIL, "db.test has no IPv4 address")
    assert ConnectAttempt(TCPAddress("db.test", 1), custom).describe() == (
        "tcp://db.test:1: db.test has no IPv4 address"
    )
    assert ConnectAttempt(TCPAddress("127.0.0.1", 1), None).outcome == "connected"
    with pytest.raises(ValueError):
        ConnectAttempt(TCPAddress("127.0.0.1", 1), None, 0, "exploded")
