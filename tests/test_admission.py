"""Admission control on real loopback sockets: access policies and connection limits."""

from __future__ import annotations

import errno
import gc
import ipaddress
import logging
import os
import socket
import time
import warnings
from typing import Any

import pytest
import trio
import trio.testing
from conftest import FakeTime, port_of

import trionet
from trionet import AccessPolicy, TCPAddress, UnixAddress
from trionet._ratelimit import RateLimiter
from trionet._server import _table
from trionet._server._admission import REFUSED, Admission
from trionet._server._capacity import Capacity
from trionet._stats import Counters
from trionet.testing import wait_until

pytestmark = pytest.mark.usefixtures("network")

ServerFactory = Any


async def connect_from(source: str, port: int, host: str = "127.0.0.1") -> trio.socket.SocketType:
    """A raw client socket bound to ``source`` and connected to ``host:port``."""
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        with trio.fail_after(5):
            await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def refused(source: str, port: int, host: str = "127.0.0.1") -> str:
    """Connect from ``source`` and report how the server turned us away.

    Returns ``"reset"`` for a TCP RST -- seen by ``connect`` itself (Trio reads
    ``SO_ERROR`` after the handshake, and the server may have reset us by
    then) or by the first ``recv`` -- and ``"eof"`` for an orderly close.
    Fails if the server sends anything.
    """
    sock = trio.socket.socket()
    with sock:
        await sock.bind((source, 0))
        try:
            with trio.fail_after(5):
                await sock.connect((host, port))
                data = await sock.recv(100)
        except ConnectionResetError:
            return "reset"
        assert data == b"", f"a refused peer received {data!r}"
        return "eof"


async def round_trip(sock: trio.socket.SocketType, data: bytes = b"ping\n") -> bytes:
    with trio.fail_after(5):
        await sock.send(data)
        return await sock.recv(100)


# ----------------------------------------------------------------------
# AccessPolicy, as a pure function


def test_policy_allow_none_admits_everyone_not_denied() -> None:
    policy = AccessPolicy(deny=["10.0.0.0/8", "2001:db8::/32"])
    assert policy.allows(TCPAddress("192.0.2.1", 1))
    assert policy.allows(TCPAddress("::1", 1))
    assert not policy.allows(TCPAddress("10.200.0.1", 1))
    assert not policy.allows(TCPAddress("2001:db8::5", 1))


def test_policy_deny_wins_over_allow() -> None:
    policy = AccessPolicy(allow=["10.0.0.0/8"], deny=["10.9.0.0/16"])
    assert policy.allows(TCPAddress("10.1.2.3", 1))
    assert not policy.allows(TCPAddress("10.9.2.3", 1))
    assert not policy.allows(TCPAddress("192.0.2.1", 1))  # not in allow


def test_policy_empty_allow_admits_no_tcp_peer() -> None:
    policy = AccessPolicy(allow=[])
    assert not policy.allows(TCPAddress("127.0.0.1", 1))
    assert policy.allows(UnixAddress(""))  # Unix peers: governed by unix_uids only


def test_policy_normalises_ipv4_mapped_addresses() -> None:
    # A mapped peer matches IPv4 rules ...
    policy = AccessPolicy(deny=["127.0.0.2/32"])
    assert not policy.allows(TCPAddress("::ffff:127.0.0.2", 1))
    assert policy.allows(TCPAddress("::ffff:127.0.0.1", 1))
    # ... and a mapped network is an IPv4 network in disguise.
    policy = AccessPolicy(allow=["::ffff:10.0.0.0/104"])
    assert policy.allow == (ipaddress.IPv4Network("10.0.0.0/8"),)
    assert policy.allows(TCPAddress("10.3.4.5", 1))
    assert policy.allows(TCPAddress("::ffff:10.3.4.5", 1))
    assert not policy.allows(TCPAddress("11.0.0.1", 1))


def test_policy_single_string_and_scoped_ipv6() -> None:
    policy = AccessPolicy(allow="fe80::/10")
    assert policy.allows(TCPAddress("fe80::1%lo", 1))
    assert not policy.allows(TCPAddress("::1", 1))
    assert not policy.allows(TCPAddress("not-an-ip", 1))


def test_policy_unix_uids() -> None:
    policy = AccessPolicy(unix_uids=[1000])
    assert policy.needs_credentials
    assert policy.allows(UnixAddress(""), (123, 1000, 1000))
    assert not policy.allows(UnixAddress(""), (123, 0, 0))
    assert not policy.allows(UnixAddress(""), None)  # unknown credentials: refuse
    assert not AccessPolicy().needs_credentials


def test_policy_is_a_callable_on_connection_info() -> None:
    policy = AccessPolicy(deny=["127.0.0.2/32"])
    info = trionet.ConnectionInfo(1, TCPAddress("127.0.0.2", 5), TCPAddress("127.0.0.1", 80), 0.0)
    assert policy(info) is False


# ----------------------------------------------------------------------
# Access policies on real sockets


def test_no_gate_without_anything_to_decide() -> None:
    args = (Counters(), RateLimiter())
    assert Admission.create(None, None, *args) is None
    assert Admission.create(AccessPolicy(), None, *args) is not None
    assert Admission.create(None, 1, *args) is not None


def test_gate_counts_per_host_and_gives_counts_back(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet.server")
    counters = Counters()
    gate = Admission(AccessPolicy(deny=["10.0.0.0/8"]), 1, counters, RateLimiter())
    assert not gate.wants_local  # an AccessPolicy decides on the peer alone

    def admit(peer: trionet.Address) -> object:
        return gate.admit(None, peer, TCPAddress("127.0.0.1", 9), _family(peer))

    first = admit(TCPAddress("::ffff:127.0.0.1", 1))
    assert first == (4, 0x7F000001)  # IPv4-mapped counts as the IPv4 host
    assert admit(TCPAddress("127.0.0.1", 2)) is REFUSED
    assert admit(TCPAddress("10.1.2.3", 1)) is REFUSED
    assert admit(UnixAddress("")) is None  # Unix peers: not counted per host
    assert (counters.rejected_limit, counters.rejected_access) == (1, 1)
    gate.release(first)
    assert admit(TCPAddress("127.0.0.1", 3)) == first
    refusals = [r.getMessage() for r in caplog.records if r.name == "trionet.server"]
    assert refusals == [
        "refused tcp://127.0.0.1:2: over max_connections_per_host",
        "refused tcp://10.1.2.3:1: access policy",
    ]


def test_gate_fails_closed_and_logs_through_the_servers_limiter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def check(info: trionet.ConnectionInfo) -> bool:  # pragma: no cover - never awaited
        return True

    counters = Counters()
    errors = RateLimiter(burst=1, period=3600.0)
    gate = Admission(check, None, counters, errors)
    assert gate.wants_local
    peer = TCPAddress("127.0.0.1", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            # The coroutine is closed, never awaited (no RuntimeWarning).
            assert gate.admit(None, peer, _Listener().address, socket.AF_INET) is REFUSED
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert counters.rejected_access == 3
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.name == "trionet.server"
    assert record.getMessage() == "access policy raised for tcp://127.0.0.1:1; refusing the peer"
    assert record.exc_info is not None and isinstance(record.exc_info[1], TypeError)
    assert errors.take_suppressed() == 2  # the server's limiter counted the rest


class _Listener:
    address = TCPAddress("127.0.0.1", 80)


def _family(peer: trionet.Address) -> int:
    return socket.AF_UNIX if isinstance(peer, UnixAddress) else socket.AF_INET


async def test_denied_peer_is_reset_before_its_handler_runs(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet.server")
    peers: list[str] = []

    async def handler(conn: trionet.Connection) -> None:
        assert isinstance(conn.peer, TCPAddress)
        peers.append(conn.peer.host)
        await conn.send_all(await conn.receive_some())

    server = await trionet_server(handler, access=AccessPolicy(deny=["127.0.0.2/32"]))
    port = port_of(server)

    assert await refused("127.0.0.2", port) == "reset"
    served = await connect_from("127.0.0.1", port)
    with served:
        assert await round_trip(served) == b"ping\n"

    assert peers == ["127.0.0.1"]
    stats = server.stats
    assert (stats.rejected_access, stats.accepted) == (1, 1)
    assert any(
        r.levelno == logging.DEBUG and "127.0.0.2" in r.getMessage() and "access" in r.getMessage()
        for r in caplog.records
    )


async def test_ten_thousand_denied_attempts_reach_no_handler(
    trionet_server: ServerFactory,
) -> None:
    handled = 0

    async def handler(conn: trionet.Connection) -> None:
        nonlocal handled
        handled += 1
        await conn.send_all(await conn.receive_some())

    server = await trionet_server(handler, access=AccessPolicy(deny=["127.0.0.2/32"]))
    port = port_of(server)
    total = 10_000
    outcomes = {"reset": 0, "eof": 0}
    limiter = trio.CapacityLimiter(200)

    async def attempt() -> None:
        async with limiter:
            outcomes[await refused("127.0.0.2", port)] += 1

    start = time.monotonic()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(total):
                nursery.start_soon(attempt)
    elapsed = time.monotonic() - start

    assert handled == 0
    assert outcomes["reset"] + outcomes["eof"] == total
    assert outcomes["reset"] >= total * 0.99  # a reset, not a polite close
    assert server.stats.rejected_access == total
    assert server.stats.accepted == 0
    # ... and the server still serves an admitted peer.
    served = await connect_from("127.0.0.1", port)
    with served:
        assert await round_trip(served) == b"ping\n"
    assert handled == 1
    assert elapsed < 30, f"10,000 refusals took {elapsed:.1f} s"


async def test_allow_list_admits_only_listed_networks(trionet_server: ServerFactory) -> None:
    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(await conn.receive_some())

    server = await trionet_server(handler, access=AccessPolicy(allow=["127.0.0.1/32"]))
    port = port_of(server)
    assert await refused("127.0.0.3", port) == "reset"
    sock = await connect_from("127.0.0.1", port)
    with sock:
        assert await round_trip(sock) == b"ping\n"
    assert server.stats.rejected_access == 1


async def test_callable_access_check_sees_connection_info(trionet_server: ServerFactory) -> None:
    seen: list[trionet.ConnectionInfo] = []

    def check(info: trionet.ConnectionInfo) -> bool:
        seen.append(info)
        assert isinstance(info.peer, TCPAddress)
        return info.peer.host != "127.0.0.4"

    async def handler(conn: trionet.Connection) -> None:
        await conn.send_all(await conn.receive_some())

    server = await trionet_server(handler, access=check)
    port = port_of(server)
    assert await refused("127.0.0.4", port) == "reset"
    sock = await connect_from("127.0.0.5", port)
    with sock:
        assert await round_trip(sock) == b"ping\n"
    assert [info.peer.host for info in seen] == ["127.0.0.4", "127.0.0.5"]  # type: ignore[union-attr]
    assert all(info.local == server.addresses[0] for info in seen)
    assert server.stats.rejected_access == 1


def broken_policy(info: trionet.ConnectionInfo) -> bool:
    raise RuntimeError("policy database unavailable")


async def never_admitted(conn: trionet.Connection) -> None:  # pragma: no cover
    raise AssertionError("a broken policy must not admit anybody")


async def test_broken_access_check_refuses_and_logs(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await trionet_server(never_admitted, access=broken_policy)
    assert await refused("127.0.0.1", port_of(server)) == "reset"
    assert server.stats.rejected_access == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert "policy database unavailable" in str(errors[0].exc_info[1])


async def test_access_check_returning_a_coroutine_admits_nobody(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async def yes() -> bool:  # pragma: no cover - closed unawaited
        return True

    async def handler(conn: trionet.Connection) -> None:  # pragma: no cover
        raise AssertionError("a coroutine is truthy but must not admit")

    server = await trionet_server(handler, access=lambda info: yes())
    assert await refused("127.0.0.1", port_of(server)) == "reset"
    assert server.stats.rejected_access == 1
    assert any("awaitable" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


@pytest.mark.loopback_only("adopts a real dual-stack OS socket (IPV6_V6ONLY=0, IPv4-mapped peers)")
async def test_ipv4_mapped_peer_on_a_dual_stack_socket(trionet_server: ServerFactory) -> None:
    # Our own listeners set IPV6_V6ONLY; an adopted dual-stack socket does not,
    # so IPv4 peers arrive as ::ffff:a.b.c.d and must match IPv4 rules.
    listener = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::", 0))
    except OSError as exc:  # pragma: no cover - no IPv6 on this host
        listener.close()
        pytest.fail(f"cannot make a dual-stack socket: {exc}")
    listener.listen()
    hosts: list[str] = []

    async def handler(conn: trionet.Connection) -> None:
        assert isinstance(conn.peer, TCPAddress)
        hosts.append(conn.peer.host)
        await conn.send_all(await conn.receive_some())

    server = await trionet_server(handler, listener, access=AccessPolicy(deny=["127.0.0.2/32"]))
    port = port_of(server)
    assert await refused("127.0.0.2", port) == "reset"
    sock = await connect_from("127.0.0.1", port)
    with sock:
        assert await round_trip(sock) == b"ping\n"
    assert hosts == ["::ffff:127.0.0.1"]
    assert server.stats.rejected_access == 1


# ----------------------------------------------------------------------
# Limits


async def test_max_connections_is_backpressure_not_rejection(
    trionet_server: ServerFactory,
) -> None:
    limit, clients = 5, 20
    running = peak = 0
    at_limit = trio.Event()
    gate = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == limit:
            at_limit.set()
        try:
            line = await conn.receive_line()
            await gate.wait()
            await conn.send_all(line + b"!\n")
        finally:
            running -= 1

    server = await trionet_server(handler, max_connections=limit)
    port = port_of(server)
    connected = 0
    all_connected = trio.Event()
    replies: list[bytes] = []

    async def client(i: int) -> None:
        nonlocal connected
        sock = await connect_from("127.0.0.1", port)
        with sock:
            connected += 1
            if connected == clients:
                all_connected.set()
            await sock.send(b"%d\n" % i)
            with trio.fail_after(10):
                reply = b""
                while not reply.endswith(b"\n"):
                    chunk = await sock.recv(100)
                    assert chunk, "connection closed without a reply"
                    reply += chunk
            replies.append(reply)

    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(client, i)
        # Every client connects (the kernel completes the handshake and holds
        # it in the backlog), but only `limit` handlers run.
        with trio.fail_after(5):
            await all_connected.wait()
            await at_limit.wait()
        await trio.sleep(0.2)  # time for a wrong implementation to over-accept
        assert running == limit
        assert server.stats.accepted == limit
        assert server.stats.active == limit
        gate.set()

    assert sorted(replies) == sorted(b"%d!\n" % i for i in range(clients))
    assert peak == limit
    stats = server.stats
    assert (stats.accepted, stats.rejected_limit, stats.rejected_access) == (clients, 0, 0)


async def test_max_connections_resumes_as_soon_as_a_slot_frees(
    trionet_server: ServerFactory,
) -> None:
    release = trio.Event()
    started: list[float] = []

    async def handler(conn: trionet.Connection) -> None:
        started.append(trio.current_time())
        if len(started) == 1:
            await release.wait()
        await conn.send_all(b"hi\n")

    server = await trionet_server(handler, max_connections=1)
    port = port_of(server)
    first = await connect_from("127.0.0.1", port)
    await wait_until(lambda: len(started) == 1)
    second = await connect_from("127.0.0.1", port)
    with first, second:
        await trio.sleep(0.1)
        assert len(started) == 1  # paused at the limit
        freed_at = trio.current_time()
        release.set()
        with trio.fail_after(5):
            assert await second.recv(10) == b"hi\n"
    assert started[1] - freed_at < 0.1
    assert server.stats.accepted == 2


async def test_a_freed_slot_wakes_one_waiter_and_a_cancelled_one_passes_it_on() -> None:
    # The slot queue itself, without sockets: FIFO, one wake-up per freed
    # slot (no thundering herd), and a waiter cancelled between its wake-up
    # and taking the slot hands it to the next one instead of losing it.
    capacity = Capacity(1)
    capacity.take()  # the one slot is taken
    got: list[str] = []

    async def waiter(
        name: str, task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            ticket = capacity.queue()  # in start order: FIFO
            task_status.started(scope)
            await capacity.wait(ticket)
            capacity.take()
            got.append(name)

    def free_a_slot() -> None:
        capacity.give_back()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            scopes = {name: await nursery.start(waiter, name) for name in "abcde"}
            await trio.testing.wait_all_tasks_blocked()
            assert len(capacity._waiters) == 5
            free_a_slot()  # wakes "a" only
            assert len(capacity._waiters) == 4
            scopes["a"].cancel()  # ... which is cancelled before it runs
            await trio.testing.wait_all_tasks_blocked()
            assert got == ["b"]  # "a" passed the slot on, in order
            for _ in "cde":
                free_a_slot()
                await trio.testing.wait_all_tasks_blocked()
    assert got == ["b", "c", "d", "e"]
    assert not capacity._waiters and capacity.waiting == 0


async def test_max_connections_per_host_rejects_the_excess(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trionet.server")
    per_host: dict[str, int] = {}
    one_left = trio.Event()

    async def handler(conn: trionet.Connection) -> None:
        assert isinstance(conn.peer, TCPAddress)
        per_host[conn.peer.host] = per_host.get(conn.peer.host, 0) + 1
        try:
            while data := await conn.receive_some():
                await conn.send_all(data)
        finally:
            per_host[conn.peer.host] -= 1
            if conn.peer.host == "127.0.0.1":
                one_left.set()

    server = await trionet_server(handler, max_connections_per_host=2)
    port = port_of(server)
    a = await connect_from("127.0.0.1", port)
    b = await connect_from("127.0.0.1", port)
    assert await round_trip(a) == await round_trip(b) == b"ping\n"
    assert await refused("127.0.0.1", port) == "reset"
    assert server.stats.rejected_limit == 1
    assert any("max_connections_per_host" in r.getMessage() for r in caplog.records)

    other = await connect_from("127.0.0.2", port)  # another host is not limited
    with other:
        assert await round_trip(other) == b"ping\n"

    a.close()  # frees a slot for 127.0.0.1
    with trio.fail_after(5):
        await one_left.wait()
    assert per_host["127.0.0.1"] == 1
    d = await connect_from("127.0.0.1", port)
    with b, d:
        assert await round_trip(d) == b"ping\n"
    assert server.stats.rejected_limit == 1
    assert server.stats.accepted == 4


@pytest.mark.loopback_only("a Unix socket with an abstract name: the virtual network has TCP only")
async def test_unparseable_unix_peer_fails_closed(
    trionet_server: ServerFactory, unused_unix_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A Unix client may bind an abstract name with a NUL inside: no
    # UnixAddress can represent it.  With an access check configured that
    # peer must be refused -- not admitted as a harmless-looking placeholder.
    peers: list[trionet.Address] = []

    async def handler(conn: trionet.Connection) -> None:
        peers.append(conn.peer)
        await conn.send_all(b"welcome")

    async def attempt(path: str) -> bytes:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.bind(b"\0trionet-odd\0name-%d-%d" % (os.getpid(), len(peers)))
        sock = trio.socket.from_stdlib_socket(raw)
        with sock:
            with trio.fail_after(5):
                await sock.connect(path)
                try:
                    return await sock.recv(100)
                except ConnectionResetError:
                    return b""

    server = await trionet_server(handler, f"unix:{unused_unix_path}", access=AccessPolicy())
    assert await attempt(unused_unix_path) == b""
    assert peers == []
    assert server.stats.rejected_access == 1
    assert any("unparseable" in r.getMessage() for r in caplog.records)

    # Without any access check, nothing is promised about who may connect:
    # the peer is served as the unnamed Unix peer.
    other = unused_unix_path + "2"
    await trionet_server(handler, f"unix:{other}")
    assert await attempt(other) == b"welcome"
    assert peers == [UnixAddress("")]


async def test_unparseable_tcp_peer_is_refused_even_without_a_policy(
    trionet_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _table.address_from_sockaddr

    def picky(family: int, sockaddr: Any) -> trionet.Address:
        if family != socket.AF_UNIX and sockaddr[0] == "127.0.0.2":
            raise ValueError("an address this build cannot represent")
        return real(family, sockaddr)

    monkeypatch.setattr(_table, "address_from_sockaddr", picky)
    handled = 0

    async def handler(conn: trionet.Connection) -> None:
        nonlocal handled
        handled += 1
        await conn.send_all(await conn.receive_some())

    server = await trionet_server(handler)
    port = port_of(server)
    assert await refused("127.0.0.2", port) == "reset"
    sock = await connect_from("127.0.0.1", port)
    with sock:
        assert await round_trip(sock) == b"ping\n"
    assert handled == 1
    assert (server.stats.rejected_access, server.stats.accepted) == (1, 1)


async def test_access_callable_errors_are_rate_limited(
    trionet_server: ServerFactory, caplog: pytest.LogCaptureFixture, limiter_clock: FakeTime
) -> None:
    # The limiter's clock stands still, so however slowly the 40 connects
    # run, no token comes back during the test: a burst of 10 at most.
    server = await trionet_server(never_admitted, access=broken_policy)
    port = port_of(server)
    attempts = 40
    for _ in range(attempts):
        assert await refused("127.0.0.1", port) == "reset"
    assert server.stats.rejected_access == attempts
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert 1 <= len(errors) <= 10  # the server's error limiter: a burst of 10
    assert len(errors) < attempts


async def test_callable_access_sees_the_real_local_address_of_a_wildcard_listener(
    trionet_server: ServerFactory,
) -> None:
    # The listener is 0.0.0.0, but each connection arrives on a concrete
    # address -- which is what a callable policy may want to decide on.  Only
    # loopback peers are admitted, so the wildcard bind exposes nothing.
    seen: list[trionet.Address] = []
    locals_in_handler: list[trionet.Address] = []

    def check(info: trionet.ConnectionInfo) -> bool:
        seen.append(info.local)
        peer = info.peer
        return isinstance(peer, TCPAddress) and ipaddress.ip_address(peer.host).is_loopback

    async def handler(conn: trionet.Connection) -> None:
        locals_in_handler.append(conn.local)
        await conn.send_all(await conn.receive_some())

    server = await trionet_server(handler, "tcp://0.0.0.0:0", access=check)
    port = port_of(server)
    for host in ("127.0.0.1", "127.0.0.3"):
        sock = await connect_from("127.0.0.1", port, host=host)
        with sock:
            assert await round_trip(sock) == b"ping\n"
    assert seen == [TCPAddress("127.0.0.1", port), TCPAddress("127.0.0.3", port)]
    assert locals_in_handler == seen


async def test_a_failing_connection_setup_leaks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # If setting a connection up fails (here: Connection() raises), the error
    # propagates -- but the per-host count, the connection table and the
    # accepted socket must not leak.
    def broken(*args: Any, **kwargs: Any) -> trionet.Connection:
        raise RuntimeError("cannot set the connection up")

    monkeypatch.setattr(_table, "server_connection", broken)

    async def handler(conn: trionet.Connection) -> None:  # pragma: no cover
        raise AssertionError("never started")

    sock = trio.socket.socket()
    with sock:
        with trio.fail_after(10), pytest.raises(RuntimeError, match="cannot set the connection"):
            async with trionet.open_server(
                handler, "tcp://127.0.0.1:0", max_connections_per_host=1
            ) as server:
                await sock.connect(("127.0.0.1", port_of(server)))
                await trio.sleep_forever()
        # The accepted socket was closed, not left open (the exception's
        # traceback would keep a leaked one alive).
        with trio.fail_after(5):
            try:
                data = await sock.recv(100)
            except ConnectionResetError:
                data = b""
        assert data == b""
    # ``server`` stays bound after the exception left the ``async with``.
    gate = server._table._admission
    assert gate is not None and gate._hosts is not None and gate._hosts._counts == {}
    assert server._table.records == {}
    assert (server.stats.accepted, server.stats.active) == (0, 0)


def test_errno_constants_used_by_these_tests_exist() -> None:
    assert errno.ECONNRESET and errno.ECONNREFUSED
