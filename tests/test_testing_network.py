"""trionet.testing.VirtualNetwork: faults, determinism, safety, speed, unmodified Trio code."""

from __future__ import annotations

import functools
import os
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable

import pytest
import trio
import trio.testing

import trionet
from trionet.testing import VirtualNetwork


async def echo(conn: trionet.Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


async def start_echo(
    nursery: trio.Nursery, spec: str = "tcp://127.0.0.10:80", **options: object
) -> trionet.Server:
    server: trionet.Server = await nursery.start(
        functools.partial(trionet.serve, echo, spec, **options)
    )
    return server


@pytest.fixture
def net(virtual_network: VirtualNetwork) -> VirtualNetwork:
    """The installed network, with one more host (tests take autojump_clock themselves:
    pytest-trio only sees a clock among the test function's own arguments)."""
    virtual_network.add_host("server.test", "127.0.0.10")
    return virtual_network


async def test_echo_by_name_and_client_default_address(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    server = await start_echo(nursery)
    conn = await trionet.connect("tcp://server.test:80")
    assert conn.local.host == net.default_address == "127.0.0.1"
    assert conn.peer == trionet.TCPAddress("127.0.0.10", 80)
    await conn.send_all(b"hello")
    assert await conn.receive_exactly(5) == b"hello"
    await conn.aclose()
    assert server.stats.accepted == 1


# ---------------------------------------------------------------- must show 2


async def test_partition_connect_times_out_and_stalled_receive_resumes_after_heal(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    await start_echo(nursery)
    conn = await trionet.connect("tcp://server.test:80")
    net.partition("127.0.0.1", "127.0.0.10")
    t0 = trio.current_time()
    with pytest.raises(trionet.ConnectTimeout):
        await trionet.connect("tcp://server.test:80", timeout=30)
    assert trio.current_time() - t0 == pytest.approx(30)
    # In-flight data stalls: the echo cannot come back while partitioned.
    await conn.send_all(b"ping")
    with trio.move_on_after(100) as stalled:
        await conn.receive_some()
    assert stalled.cancelled_caught
    net.heal("127.0.0.1", "127.0.0.10")
    healed = trio.current_time()
    with trio.fail_after(1):
        assert await conn.receive_exactly(4) == b"ping"
    assert trio.current_time() == pytest.approx(healed)  # at once: no latency set
    await conn.aclose()


async def test_partitioned_connect_completes_after_heal(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    await start_echo(nursery)
    net.partition("localhost", "server.test")
    done = trio.Event()

    async def connector() -> None:
        conn = await trionet.connect("tcp://server.test:80", timeout=100)
        await conn.aclose()
        done.set()

    nursery.start_soon(connector)
    await trio.sleep(50)
    assert not done.is_set()
    net.heal("localhost", "server.test")
    with trio.fail_after(1):
        await done.wait()


# ---------------------------------------------------------------- must show 3


async def test_latency_two_seconds_makes_a_four_second_round_trip(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    await start_echo(nursery)
    conn = await trionet.connect("tcp://server.test:80")
    net.set_latency("127.0.0.1", "127.0.0.10", 2.0)
    t0 = trio.current_time()
    await conn.send_all(b"x")
    assert await conn.receive_exactly(1) == b"x"
    assert trio.current_time() - t0 == pytest.approx(4.0)
    # A connect is a round trip too (SYN, SYN-ACK).
    t0 = trio.current_time()
    second = await trionet.connect("tcp://server.test:80")
    assert trio.current_time() - t0 == pytest.approx(4.0)
    await second.aclose()
    await conn.aclose()


async def test_jitter_keeps_tcp_order(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    await start_echo(nursery)
    conn = await trionet.connect("tcp://server.test:80")
    net.set_latency("127.0.0.1", "127.0.0.10", 0.5, jitter=2.0)
    payload = b"".join(i.to_bytes(2, "big") for i in range(300))
    for i in range(0, len(payload), 7):
        await conn.send_all(payload[i : i + 7])
    assert await conn.receive_exactly(len(payload)) == payload
    sends = [e for e in net.trace if e.kind == "send" and e.key.startswith("127.0.0.1:")]
    arrivals = [e.detail[1] for e in sends if e.time >= 0]
    assert arrivals == sorted(arrivals)
    assert len(set(arrivals)) > 1  # the jitter was drawn
    await conn.aclose()


# ---------------------------------------------------------------- must show 4


async def test_reset_connections_gives_the_peer_broken_resource(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    await start_echo(nursery)
    conn = await trionet.connect("tcp://server.test:80")
    stream = trio.SocketStream(conn.socket)
    net.reset_connections("127.0.0.10")
    with pytest.raises(trio.BrokenResourceError):
        await stream.receive_some()
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"x")
    kinds = [e.kind for e in net.trace if e.kind in ("reset_connections", "reset")]
    assert kinds[0] == "reset_connections"
    assert kinds.count("reset") == 2  # both ends
    await stream.aclose()


async def test_one_way_partition_stalls_one_direction_only(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    received: list[bytes] = []
    got = trio.Event()

    async def sink(conn: trionet.Connection) -> None:
        received.append(await conn.receive_exactly(3))
        got.set()
        await conn.send_all(b"reply")
        await conn.receive_some()

    await nursery.start(functools.partial(trionet.serve, sink, "tcp://127.0.0.10:80"))
    conn = await trionet.connect("tcp://server.test:80")
    net.partition("127.0.0.10", "127.0.0.1", direction="a->b")  # server -> client cut
    await conn.send_all(b"abc")
    with trio.fail_after(1):
        await got.wait()  # client -> server still flows
    assert received == [b"abc"]
    with trio.move_on_after(60) as stalled:
        await conn.receive_some()
    assert stalled.cancelled_caught  # server -> client does not
    net.heal("127.0.0.10", "127.0.0.1", direction="a->b")
    assert await conn.receive_exactly(5) == b"reply"
    await conn.aclose()


async def test_hold_and_release_deliver_in_order(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    await start_echo(nursery)
    conn = await trionet.connect("tcp://server.test:80")
    net.set_latency("127.0.0.1", "127.0.0.10", 1.0)
    net.hold("127.0.0.1", "127.0.0.10")
    for i in range(20):
        await conn.send_all(bytes([i]) * 10)
    with trio.move_on_after(30) as held:
        await conn.receive_some()
    assert held.cancelled_caught
    released = trio.current_time()
    net.release("127.0.0.1", "127.0.0.10")
    data = await conn.receive_exactly(200)
    assert data == b"".join(bytes([i]) * 10 for i in range(20))
    # Held data whose latency had passed goes at once; the echo takes one more second back.
    assert trio.current_time() - released == pytest.approx(1.0)
    await conn.aclose()


async def test_crash_and_restart(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    server_scope = trio.CancelScope()

    async def run_server(task_status: trio.TaskStatus[trionet.Server]) -> None:
        with server_scope:
            await trionet.serve(echo, "tcp://127.0.0.10:80", task_status=task_status)

    await nursery.start(run_server)
    conn = await trionet.connect("tcp://server.test:80")
    await conn.send_all(b"1")
    assert await conn.receive_exactly(1) == b"1"
    net.crash("server.test")
    with pytest.raises(trio.BrokenResourceError):
        await conn.receive_some()  # the peer of a crashed host sees a reset
    # While crashed, a connect gets no answer: it waits for the caller's timeout.
    with pytest.raises(trionet.ConnectTimeout):
        await trionet.connect("tcp://server.test:80", timeout=10)
    server_scope.cancel()  # the server's "process" is gone; its tasks end when cancelled
    net.restart("server.test")
    # Up again with no listener: refused at once.
    with pytest.raises(trionet.ConnectError) as refused:
        await trionet.connect("tcp://server.test:80", timeout=10)
    assert not isinstance(refused.value, trionet.ConnectTimeout)
    # The port is free again: a new server binds it.
    await start_echo(nursery)
    again = await trionet.connect("tcp://server.test:80")
    await again.send_all(b"2")
    assert await again.receive_exactly(1) == b"2"
    await again.aclose()


async def test_closed_port_is_refused_and_unknown_name_is_gaierror(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork
) -> None:
    with pytest.raises(trionet.ConnectError) as info:
        await trionet.connect("tcp://server.test:81", timeout=5)
    assert not isinstance(info.value, trionet.ConnectTimeout)
    with pytest.raises(socket.gaierror):
        await trio.socket.getaddrinfo("nowhere.test", 80)


# ---------------------------------------------------------------- must show 5


async def test_a_sixty_second_idle_timeout_takes_no_wall_time(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    wall = time.perf_counter()
    server = await start_echo(nursery, idle_timeout=60)
    conn = await trionet.connect("tcp://server.test:80")
    t0 = trio.current_time()
    assert await conn.receive_some() == b""  # the server closed the idle connection
    assert trio.current_time() - t0 == pytest.approx(60, abs=1.5)
    assert server.stats.idle_closed == 1
    await conn.aclose()
    # The bound (the figure itself is measured in
    # benchmarks/micro/virtual_network.py: about 10 ms).
    assert time.perf_counter() - wall < 1


async def test_a_thirty_second_connect_timeout_across_a_partition_takes_no_wall_time(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    await start_echo(nursery)
    net.partition("localhost", "server.test")
    wall = time.perf_counter()
    with pytest.raises(trionet.ConnectTimeout):
        await trionet.connect("tcp://server.test:80", timeout=30)
    assert time.perf_counter() - wall < 1


# ---------------------------------------------------------------- must show 6


def _open_descriptors() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
async def test_no_real_descriptor_is_opened(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext, autojump_clock: trio.testing.MockClock
) -> None:
    net = VirtualNetwork(seed=3)
    before = _open_descriptors()
    seen: set[str] = set()
    with net.install():
        net.add_host("server.test", "127.0.0.10")
        async with trio.open_nursery() as nursery:
            plain = await start_echo(nursery)
            secure = await start_echo(nursery, "tcp://127.0.0.10:443", tls=server_tls)
            conn = await trionet.connect("tcp://server.test:80")
            await conn.send_all(b"x")
            await conn.receive_exactly(1)
            tls = await trionet.connect(
                "tcp://127.0.0.10:443", tls=client_tls, server_hostname="localhost"
            )
            await tls.send_all(b"y")
            assert await tls.receive_exactly(1) == b"y"
            async with trionet.ConnectionPool("tcp://server.test:80") as pool:
                for _ in range(3):
                    async with pool.connection() as pooled:
                        await pooled.send_all(b"z")
                        await pooled.receive_exactly(1)
            stream = await trio.open_tcp_stream("server.test", 80)
            await stream.send_all(b"w")
            await stream.receive_some()
            seen = _open_descriptors()
            for c in (conn, tls):
                await c.aclose()
            await stream.aclose()
            await plain.shutdown(1)
            await secure.shutdown(1)
    assert seen - before == set()
    assert _open_descriptors() - before == set()


async def test_calls_that_bypass_the_hooks_raise(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork
) -> None:
    with pytest.raises(RuntimeError, match=r"socketpair.*VirtualNetwork"):
        trio.socket.socketpair()
    real = socket.socket()
    try:
        with pytest.raises(RuntimeError, match="from_stdlib_socket"):
            trio.socket.from_stdlib_socket(real)
        with pytest.raises(RuntimeError, match="fileno"):
            trio.socket.socket(fileno=real.fileno())
        with pytest.raises(RuntimeError, match="fromfd"):
            trio.socket.fromfd(real.fileno(), socket.AF_INET, socket.SOCK_STREAM)
    finally:
        real.close()
    with pytest.raises(OSError, match="simulates TCP"):
        trio.socket.socket(socket.AF_UNIX)
    with pytest.raises(trionet.InvalidAddress, match=r"trionet\.serve.*VirtualNetwork"):
        await trionet.serve(echo, "unix:/tmp/trionet-never-created.sock")
    assert "trionet-never-created.sock" not in os.listdir("/tmp")


async def test_guards_are_removed_after_uninstall(autojump_clock: trio.testing.MockClock) -> None:
    original = trio.socket.socketpair
    with VirtualNetwork().install():
        assert trio.socket.socketpair is not original
    assert trio.socket.socketpair is original
    a, b = trio.socket.socketpair()  # a real pair again
    a.close()
    b.close()


async def test_install_refuses_a_second_network_and_outside_trio(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with (
        VirtualNetwork().install(),
        pytest.raises(RuntimeError, match="already installed"),
        VirtualNetwork().install(),
    ):
        pass  # pragma: no cover


def test_install_outside_trio_run_is_refused() -> None:
    with pytest.raises(RuntimeError, match=r"inside trio\.run"), VirtualNetwork().install():
        pass  # pragma: no cover


# ---------------------------------------------------------------- must show 7


async def _scenario(seed: int) -> list[trionet.testing.TraceEvent]:
    net = VirtualNetwork(seed=seed)
    with net.install():
        net.add_host("server.test", "127.0.0.10")
        net.add_host("client2.test", "127.0.0.20")
        net.set_latency("127.0.0.1", "server.test", 0.05, jitter=0.2)
        net.set_latency("client2.test", "server.test", 0.01, jitter=0.5)
        async with trio.open_nursery() as nursery:
            server = await start_echo(nursery)

            async def client(local: str, n: int) -> None:
                conn = await trionet.connect("tcp://server.test:80", local_address=local)
                for i in range(n):
                    await conn.send_all(b"m%d;" % i)
                    await conn.receive_exactly(len(b"m%d;" % i))
                await conn.aclose()

            async with trio.open_nursery() as clients:
                clients.start_soon(client, "127.0.0.1", 20)
                clients.start_soon(client, "127.0.0.20", 15)
            await trio.sleep(1)
            net.partition("127.0.0.1", "server.test")
            await trio.sleep(1)
            net.heal("127.0.0.1", "server.test")
            await server.shutdown(1)
    return net.trace


async def test_same_seed_same_trace(autojump_clock: trio.testing.MockClock) -> None:
    first = await _scenario(7)
    second = await _scenario(7)
    assert len(first) > 150
    assert first == second
    other = await _scenario(8)
    assert [e.detail for e in other if e.kind == "send"] != [
        e.detail for e in first if e.kind == "send"
    ]


async def test_trace_records_are_plain_and_relative_to_install(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    await trio.sleep(5)
    net.partition("localhost", "server.test")
    (event,) = [e for e in net.trace if e.kind == "partition"]
    assert event.time == pytest.approx(5)
    assert event.key == ""
    assert event.detail == ("localhost->server.test", "server.test->localhost")
    assert "partition" in str(event)


# ---------------------------------------------------------------- must show 8


async def test_unmodified_trio_serve_tcp_and_open_tcp_stream(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    async def trio_echo(stream: trio.SocketStream) -> None:
        async for chunk in stream:
            await stream.send_all(chunk)

    listeners = await nursery.start(trio.serve_tcp, trio_echo, 8080)
    assert {type(listener.socket).__name__ for listener in listeners} == {"VirtualSocket"}
    stream = await trio.open_tcp_stream("server.test", 8080)
    await stream.send_all(b"over trio")
    assert await stream.receive_some() == b"over trio"
    await stream.send_eof()
    assert await stream.receive_some() == b""
    await stream.aclose()


async def test_backlog_full_leaves_connects_pending(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork
) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.10", 90))
    listener.listen(1)  # holds backlog + 1 = 2 connections
    clients = [trio.socket.socket() for _ in range(3)]
    await clients[0].connect(("127.0.0.10", 90))
    await clients[1].connect(("127.0.0.10", 90))
    third_done = trio.Event()

    async def third() -> None:
        await clients[2].connect(("127.0.0.10", 90))
        third_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(third)
        await trio.sleep(10)
        assert not third_done.is_set()
        accepted, _ = await listener.accept()
        with trio.fail_after(1):
            await third_done.wait()
    accepted.close()
    for c in clients:
        c.close()
    listener.close()


# ---------------------------------------------------------------- the rest of the contract


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: VirtualNetwork(seed="1"), TypeError, "VirtualNetwork: seed"),
        (lambda: VirtualNetwork(buffer_size="x"), TypeError, "VirtualNetwork: buffer_size"),
        (lambda: VirtualNetwork(buffer_size=0), ValueError, "VirtualNetwork: buffer_size"),
        (lambda: VirtualNetwork(default_address=1), TypeError, "default_address"),
        (lambda: VirtualNetwork(default_address="::1"), ValueError, "default_address"),
        (lambda: VirtualNetwork(default_address="10.0.0.1"), ValueError, "default_address"),
        (lambda: VirtualNetwork().set_latency("localhost", "localhost", "1"), TypeError, "seconds"),
        (
            lambda: VirtualNetwork().set_latency("localhost", "localhost", float("nan")),
            ValueError,
            "VirtualNetwork.set_latency: seconds",
        ),
        (
            lambda: VirtualNetwork().set_latency("localhost", "localhost", 1, jitter=-1),
            ValueError,
            "VirtualNetwork.set_latency: jitter",
        ),
        (
            lambda: VirtualNetwork().partition("localhost", "localhost", direction="up"),
            ValueError,
            "VirtualNetwork.partition: direction",
        ),
        (lambda: VirtualNetwork().hold("localhost", "nowhere"), ValueError, "VirtualNetwork.hold"),
        (lambda: VirtualNetwork().crash("10.1.1.1"), ValueError, "VirtualNetwork.crash"),
        (lambda: VirtualNetwork().add_host("", "127.0.0.2"), ValueError, "VirtualNetwork.add_host"),
    ],
)
def test_bad_arguments_fail_at_call_time_naming_the_call(
    call: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_the_default_seed_is_zero() -> None:
    assert VirtualNetwork().seed == 0


async def test_install_refuses_when_a_hook_does_not_take_effect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if Trio's socket-factory hook were broken: the network must refuse
    # to run rather than let the test reach real sockets.
    monkeypatch.setattr(trio.socket, "set_custom_socket_factory", lambda factory: None)
    with pytest.raises(RuntimeError, match="did not take effect"), VirtualNetwork().install():
        pass  # pragma: no cover
    assert trio.socket.socketpair.__module__.startswith("trio")  # the guards were released


@pytest.fixture
async def early_socket() -> AsyncIterator[trio.socket.SocketType]:
    """An async fixture that does not depend on virtual_network."""
    sock = trio.socket.socket()
    yield sock
    sock.close()


async def test_other_async_fixtures_get_virtual_sockets_too(
    early_socket: trio.socket.SocketType, virtual_network: VirtualNetwork
) -> None:
    # pytest-trio sets async fixtures up concurrently: the network is
    # installed around the whole run, so this one could not get a real socket.
    assert type(early_socket).__name__ == "VirtualSocket"


@pytest.mark.usefixtures("virtual_network")
async def test_usefixtures_installs_the_network_too() -> None:
    with trio.socket.socket() as sock:
        assert type(sock).__name__ == "VirtualSocket"


async def _delays_of_first_connection(extra_traffic: bool) -> list[object]:
    net = VirtualNetwork(seed=5)
    with net.install():
        net.add_host("server.test", "127.0.0.10")
        net.add_host("other.test", "127.0.0.30")
        net.set_latency("localhost", "server.test", 0.01, jitter=0.5)
        net.set_latency("other.test", "server.test", 0.01, jitter=0.5)
        async with trio.open_nursery() as nursery:
            server = await start_echo(nursery)
            if extra_traffic:  # another link: must not change this connection's draws
                other = await trionet.connect("tcp://server.test:80", local_address="127.0.0.30")
                for _ in range(10):
                    await other.send_all(b"noise")
                    await other.receive_exactly(5)
            conn = await trionet.connect("tcp://server.test:80")
            for _ in range(10):
                await conn.send_all(b"ping")
                await conn.receive_exactly(4)
            await conn.aclose()
            await server.shutdown(1)
    ours = [e for e in net.trace if e.key.startswith("127.0.0.1:")]
    start = next(e.time for e in ours if e.kind == "connect")
    return [e.detail[1] - start for e in ours if e.kind == "send"]


async def test_each_connection_draws_from_its_own_rng(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alone = await _delays_of_first_connection(extra_traffic=False)
    beside_other_traffic = await _delays_of_first_connection(extra_traffic=True)
    assert len(alone) == 10
    assert alone == pytest.approx(beside_other_traffic, abs=1e-6)
    assert len(set(alone)) == 10  # jittered: every delay differs


async def test_the_trace_is_ordered_by_time_key_and_sequence(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    net.set_latency("localhost", "server.test", 0.2, jitter=0.3)
    await start_echo(nursery)
    conn = await trionet.connect("tcp://server.test:80")
    for _ in range(5):
        await conn.send_all(b"x")
        await conn.receive_exactly(1)
    await conn.aclose()
    trace = net.trace
    assert trace == sorted(trace, key=lambda e: (e.time, e.key, e.seq))
    for key in {e.key for e in trace}:
        assert [e.seq for e in trace if e.key == key] == list(
            range(len([e for e in trace if e.key == key]))
        )


async def test_a_crashed_hosts_own_sockets_are_dead(
    autojump_clock: trio.testing.MockClock, net: VirtualNetwork, nursery: trio.Nursery
) -> None:
    accepted: list[trio.socket.SocketType] = []
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.10", 80))
    listener.listen(1)
    client = trio.socket.socket()
    await client.connect(("127.0.0.10", 80))
    server_side, _ = await listener.accept()
    accepted.append(server_side)
    net.crash("server.test")
    for call in (lambda: server_side.recv(1), lambda: server_side.send(b"x"), listener.accept):
        with trio.move_on_after(60) as dead:
            await call()
        assert dead.cancelled_caught  # blocks until cancelled: its process is gone
    for s in (client, server_side, listener):
        s.close()


async def test_open_sockets_lists_what_is_not_closed_yet() -> None:
    net = VirtualNetwork(seed=1)
    with net.install():
        net.add_host("a.test", "127.0.0.20")
        assert net.open_sockets() == []
        listener = trio.socket.socket()
        await listener.bind(("127.0.0.20", 80))
        listener.listen(4)
        client = trio.socket.socket()
        await client.connect(("127.0.0.20", 80))
        server_side, _ = await listener.accept()
        assert len(net.open_sockets()) == 3
        assert "listening" in repr(net.open_sockets())
        for sock in (client, server_side, listener):
            sock.close()
        assert net.open_sockets() == []
