"""Tests for trionet._listeners: every kind of bind, dual stack, Unix files, bind errors."""

from __future__ import annotations

import errno
import functools
import os
import socket as stdlib_socket
import stat
import uuid
from typing import Any

import pytest
import trio

import trionet
from trionet import Connection, TCPAddress, UnixAddress

ServerFactory = Any


async def echo(conn: Connection) -> None:
    async for chunk in conn:
        await conn.send_all(chunk)


def client_target(addr: trionet.Address) -> tuple[int, Any]:
    """(family, sockaddr) a client uses to reach a bound address."""
    if isinstance(addr, UnixAddress):
        return stdlib_socket.AF_UNIX, addr.sockaddr
    if addr.host in ("0.0.0.0", ""):
        return stdlib_socket.AF_INET, ("127.0.0.1", addr.port)
    if addr.host == "::":
        return stdlib_socket.AF_INET6, ("::1", addr.port)
    family = stdlib_socket.AF_INET6 if ":" in addr.host else stdlib_socket.AF_INET
    return family, (addr.host, addr.port)


async def check_echo(family: int, sockaddr: Any, payload: bytes | None = None) -> None:
    """Connect, send a payload, and read the same bytes back."""
    payload = payload or uuid.uuid4().bytes
    with trio.fail_after(5), trio.socket.socket(family) as sock:
        await sock.connect(sockaddr)
        await sock.send(payload)
        got = b""
        while len(got) < len(payload):
            chunk = await sock.recv(1024)
            assert chunk, "server closed early"
            got += chunk
        assert got == payload


async def check_address_serves(addr: trionet.Address) -> None:
    await check_echo(*client_target(addr))


def blocker(family: int = stdlib_socket.AF_INET, host: str = "127.0.0.1") -> stdlib_socket.socket:
    """A listening socket holding an ephemeral port."""
    sock = stdlib_socket.socket(family)
    if family == stdlib_socket.AF_INET6:
        sock.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen()
    return sock


def free_port() -> int:
    with stdlib_socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RecordingFactory(trio.abc.SocketFactory):
    """Makes ordinary Trio sockets and remembers them.

    With ``block_second_family`` it also takes the port of an attempt's first
    (bound) socket on the second address family, as another process might,
    that many times -- to exercise the dual-stack ephemeral-port retry.
    """

    def __init__(self, block_second_family: int = 0, unsupported: frozenset[int] = frozenset()):
        self.made: list[trio.socket.SocketType] = []
        self.blockers: list[stdlib_socket.socket] = []
        self._to_block = block_second_family
        self._unsupported = unsupported

    def socket(
        self,
        family: int = stdlib_socket.AF_INET,
        type: int = stdlib_socket.SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        if family in self._unsupported:  # as on a kernel built without it
            raise OSError(errno.EAFNOSUPPORT, os.strerror(errno.EAFNOSUPPORT))
        prev = self.made[-1] if self.made else None
        if (
            self._to_block
            and prev is not None
            and prev.fileno() != -1  # still open: the first socket of this attempt
            and prev.family != family
        ):
            self._to_block -= 1
            host = "::" if family == stdlib_socket.AF_INET6 else "0.0.0.0"
            taken = stdlib_socket.socket(family)
            if family == stdlib_socket.AF_INET6:
                taken.setsockopt(stdlib_socket.IPPROTO_IPV6, stdlib_socket.IPV6_V6ONLY, 1)
            taken.bind((host, prev.getsockname()[1]))
            taken.listen()
            self.blockers.append(taken)
        sock = trio.socket.from_stdlib_socket(stdlib_socket.socket(family, type, proto))
        self.made.append(sock)
        return sock

    def close(self) -> None:
        for b in self.blockers:
            b.close()


@pytest.fixture
def recording() -> Any:
    factories: list[RecordingFactory] = []

    def install(block_second_family: int = 0, unsupported: Any = frozenset()) -> RecordingFactory:
        factory = RecordingFactory(block_second_family, frozenset(unsupported))
        factories.append(factory)
        trio.socket.set_custom_socket_factory(factory)
        return factory

    yield install
    for f in factories:
        f.close()


# ----------------------------------------------------------------------
# Every kind of bind


@pytest.mark.parametrize(
    ("bind", "host", "family"),
    [
        ("tcp://127.0.0.1:0", "127.0.0.1", stdlib_socket.AF_INET),
        ("tcp://[::1]:0", "::1", stdlib_socket.AF_INET6),
        (("127.0.0.1", 0), "127.0.0.1", stdlib_socket.AF_INET),
        (("::1", 0), "::1", stdlib_socket.AF_INET6),
        (TCPAddress("127.0.0.1", 0), "127.0.0.1", stdlib_socket.AF_INET),
    ],
)
async def test_tcp_binds(trionet_server: ServerFactory, bind: Any, host: str, family: int) -> None:
    server = await trionet_server(echo, bind)
    [addr] = server.addresses
    assert isinstance(addr, TCPAddress)
    assert addr.host == host
    assert 0 < addr.port <= 65535  # the ephemeral port, resolved
    await check_address_serves(addr)
    assert server.stats.accepted == 1


async def test_explicit_port(trionet_server: ServerFactory) -> None:
    port = free_port()
    server = await trionet_server(echo, f"tcp://127.0.0.1:{port}")
    assert server.addresses == [TCPAddress("127.0.0.1", port)]
    await check_echo(stdlib_socket.AF_INET, ("127.0.0.1", port))


async def test_unix_path_bind(trionet_server: ServerFactory, unused_unix_path: str) -> None:
    server = await trionet_server(echo, f"unix:{unused_unix_path}")
    assert server.addresses == [UnixAddress(unused_unix_path)]
    assert stat.S_ISSOCK(os.lstat(unused_unix_path).st_mode)
    await check_address_serves(server.addresses[0])
    await server.shutdown(1.0)
    # The socket file is removed when the server stops.
    assert not await trio.Path(unused_unix_path).exists()


async def test_unix_mode_is_applied(trionet_server: ServerFactory, unused_unix_path: str) -> None:
    await trionet_server(echo, f"unix:{unused_unix_path}", unix_mode=0o600)
    assert stat.S_IMODE(os.stat(unused_unix_path).st_mode) == 0o600


async def test_abstract_unix_bind(trionet_server: ServerFactory) -> None:
    name = f"@trionet-test-{uuid.uuid4().hex}"
    server = await trionet_server(echo, f"unix:{name}")
    assert server.addresses == [UnixAddress(name)]
    await check_echo(stdlib_socket.AF_UNIX, b"\0" + name[1:].encode())
    assert not await trio.Path(name).exists()  # no file anywhere for an abstract name


async def test_stale_unix_socket_file_is_replaced(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    # A crashed server leaves its socket file behind; nothing listens there.
    with stdlib_socket.socket(stdlib_socket.AF_UNIX) as dead:
        dead.bind(unused_unix_path)
    assert await trio.Path(unused_unix_path).exists()
    server = await trionet_server(echo, f"unix:{unused_unix_path}")
    await check_address_serves(server.addresses[0])


async def test_replaced_unix_file_is_left_alone_at_close(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    server = await trionet_server(echo, f"unix:{unused_unix_path}")
    # Someone else replaces the file while we run; at close we must not
    # delete theirs.
    os.unlink(unused_unix_path)
    with stdlib_socket.socket(stdlib_socket.AF_UNIX) as other:
        other.bind(unused_unix_path)
        await server.shutdown(1.0)
        assert await trio.Path(unused_unix_path).exists()


async def test_bound_trio_socket_bind(trionet_server: ServerFactory) -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    server = await trionet_server(echo, sock)
    assert server.addresses == [TCPAddress(*sock.getsockname())]
    await check_address_serves(server.addresses[0])
    await server.shutdown(1.0)
    assert sock.fileno() == -1  # the server owned it and closed it


async def test_bound_stdlib_socket_bind(trionet_server: ServerFactory) -> None:
    sock = blocker()
    server = await trionet_server(echo, sock)
    assert server.addresses == [TCPAddress(*sock.getsockname())]
    await check_address_serves(server.addresses[0])


async def test_bound_unix_socket_bind(trionet_server: ServerFactory, unused_unix_path: str) -> None:
    sock = trio.socket.socket(stdlib_socket.AF_UNIX)
    await sock.bind(unused_unix_path)
    sock.listen(16)
    server = await trionet_server(echo, sock)
    assert server.addresses == [UnixAddress(unused_unix_path)]
    await check_address_serves(server.addresses[0])


async def test_one_server_serves_ipv4_ipv6_and_unix_at_once(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    binds = ["tcp://127.0.0.1:0", "tcp://[::1]:0", f"unix:{unused_unix_path}"]
    server = await trionet_server(echo, *binds)
    # Bind order is kept.
    v4, v6, unix = server.addresses
    assert isinstance(v4, TCPAddress) and v4.host == "127.0.0.1"
    assert isinstance(v6, TCPAddress) and v6.host == "::1"
    assert unix == UnixAddress(unused_unix_path)
    assert server.stats.accepted == 0

    # Real clients on all three at once, each holding its connection open
    # until every one of them is connected.
    all_connected = trio.Event()
    release = trio.Event()
    connected = 0

    async def client(addr: trionet.Address) -> None:
        nonlocal connected
        family, sockaddr = client_target(addr)
        with trio.fail_after(5), trio.socket.socket(family) as sock:
            await sock.connect(sockaddr)
            await sock.send(str(addr).encode())
            assert await sock.recv(100) == str(addr).encode()
            connected += 1
            if connected == 3:
                all_connected.set()
            await release.wait()  # keep the connection open until checked

    async with trio.open_nursery() as nursery:
        for addr in server.addresses:
            nursery.start_soon(client, addr)
        with trio.fail_after(5):
            await all_connected.wait()
        assert server.stats.active == 3
        release.set()
    assert server.stats.accepted == 3


@pytest.mark.parametrize("spec", ["tcp://*:0", "tcp://:0", ("", 0), (None, 0)])
async def test_wildcard_binds_both_families_on_one_port(
    trionet_server: ServerFactory, spec: Any
) -> None:
    server = await trionet_server(echo, spec)
    addrs = server.addresses
    assert len(addrs) == 2
    assert all(isinstance(a, TCPAddress) for a in addrs)
    assert {a.host for a in addrs} == {"0.0.0.0", "::"}  # type: ignore[union-attr]
    assert len({a.port for a in addrs}) == 1  # type: ignore[union-attr]
    assert addrs[0].port != 0  # type: ignore[union-attr]
    # Both families accept (IPV6_V6ONLY keeps IPv4 on the IPv4 socket).
    await check_echo(stdlib_socket.AF_INET, ("127.0.0.1", addrs[0].port))  # type: ignore[union-attr]
    await check_echo(stdlib_socket.AF_INET6, ("::1", addrs[0].port))  # type: ignore[union-attr]
    assert server.stats.accepted == 2


async def test_wildcard_explicit_port(trionet_server: ServerFactory) -> None:
    port = free_port()
    server = await trionet_server(echo, f"tcp://*:{port}")
    assert sorted(a.port for a in server.addresses) == [port, port]  # type: ignore[union-attr]
    await check_echo(stdlib_socket.AF_INET6, ("::1", port))


async def test_wildcard_retries_when_the_port_is_taken_on_one_family(
    trionet_server: ServerFactory, recording: Any
) -> None:
    factory = recording(block_second_family=3)
    server = await trionet_server(echo, "tcp://*:0")
    assert len(factory.blockers) == 3  # three attempts lost their port...
    port = server.addresses[0].port
    assert [a.port for a in server.addresses] == [port, port]
    assert port not in {b.getsockname()[1] for b in factory.blockers}
    # ...and every socket of the failed attempts was closed.
    assert sum(s.fileno() != -1 for s in factory.made) == 2
    await check_echo(stdlib_socket.AF_INET, ("127.0.0.1", port))
    await check_echo(stdlib_socket.AF_INET6, ("::1", port))


async def test_wildcard_gives_up_when_no_port_is_free_on_both(
    nursery: trio.Nursery, recording: Any
) -> None:
    factory = recording(block_second_family=1000)
    with pytest.raises(trionet.AddressInUse, match="no ephemeral port free"):
        await nursery.start(functools.partial(trionet.serve, echo, "tcp://*:0"))
    assert factory.made
    assert all(s.fileno() == -1 for s in factory.made)


async def test_wildcard_skips_a_family_the_kernel_lacks(
    trionet_server: ServerFactory, recording: Any
) -> None:
    recording(unsupported={stdlib_socket.AF_INET6})
    server = await trionet_server(echo, "tcp://*:0")
    [addr] = server.addresses
    assert addr.host == "0.0.0.0"
    await check_address_serves(addr)


async def test_wildcard_with_no_supported_family(nursery: trio.Nursery, recording: Any) -> None:
    recording(unsupported={stdlib_socket.AF_INET, stdlib_socket.AF_INET6})
    with pytest.raises(trionet.ListenError) as excinfo:
        await nursery.start(functools.partial(trionet.serve, echo, "tcp://*:0"))
    assert excinfo.value.errno == errno.EAFNOSUPPORT


async def test_single_family_bind_on_a_kernel_without_it(
    nursery: trio.Nursery, recording: Any
) -> None:
    recording(unsupported={stdlib_socket.AF_INET6})
    with pytest.raises(trionet.ListenError) as excinfo:
        await nursery.start(functools.partial(trionet.serve, echo, "tcp://[::1]:0"))
    assert excinfo.value.errno == errno.EAFNOSUPPORT


# ----------------------------------------------------------------------
# Errors while opening listeners: raised bare, and nothing left open


async def _start_with_nursery(nursery: trio.Nursery, *binds: Any) -> None:
    await nursery.start(functools.partial(trionet.serve, echo, *binds))


async def _start_with_open_server(nursery: trio.Nursery, *binds: Any) -> None:
    async with trionet.open_server(echo, *binds):
        pytest.fail("open_server should not have started")


STARTERS = {"nursery.start": _start_with_nursery, "open_server": _start_with_open_server}


@pytest.fixture(params=list(STARTERS))
def start(request: pytest.FixtureRequest, nursery: trio.Nursery) -> Any:
    return functools.partial(STARTERS[request.param], nursery)


async def test_bad_spec_is_raised_bare(start: Any) -> None:
    with pytest.raises(trionet.InvalidAddress) as excinfo:
        await start("tcp://127.0.0.1")
    assert type(excinfo.value) is trionet.InvalidAddress
    assert "tcp://127.0.0.1" in str(excinfo.value)


async def test_address_in_use_is_raised_bare(start: Any) -> None:
    with blocker() as taken:
        port = taken.getsockname()[1]
        with pytest.raises(trionet.AddressInUse) as excinfo:
            await start(f"tcp://127.0.0.1:{port}")
    err = excinfo.value
    assert type(err) is trionet.AddressInUse
    assert err.errno == errno.EADDRINUSE
    assert isinstance(err.__cause__, OSError)
    assert err.__cause__.errno == errno.EADDRINUSE
    assert f"tcp://127.0.0.1:{port}" in str(err)


async def test_unavailable_address_is_a_listen_error(start: Any) -> None:
    # 192.0.2.1 (TEST-NET-1) is not a local address: bind() fails at once.
    # Nothing is sent anywhere.
    with pytest.raises(trionet.ListenError) as excinfo:
        await start("tcp://192.0.2.1:0")
    assert type(excinfo.value) is trionet.ListenError
    assert excinfo.value.errno == errno.EADDRNOTAVAIL


async def test_unix_path_in_missing_directory(start: Any, unused_unix_path: str) -> None:
    path = os.path.join(os.path.dirname(unused_unix_path), "missing", "sock")
    with pytest.raises(trionet.ListenError) as excinfo:
        await start(f"unix:{path}")
    assert type(excinfo.value) is trionet.ListenError
    assert excinfo.value.errno == errno.ENOENT
    assert isinstance(excinfo.value.__cause__, FileNotFoundError)
    assert path in str(excinfo.value)


async def test_unix_path_that_is_a_regular_file(start: Any, unused_unix_path: str) -> None:
    await trio.Path(unused_unix_path).write_text("precious")
    with pytest.raises(trionet.ListenError) as excinfo:
        await start(f"unix:{unused_unix_path}")
    assert excinfo.value.errno == errno.EEXIST
    assert "not a socket" in str(excinfo.value)
    assert await trio.Path(unused_unix_path).read_text() == "precious"  # never deleted


async def test_live_unix_socket_is_address_in_use(start: Any, unused_unix_path: str) -> None:
    with stdlib_socket.socket(stdlib_socket.AF_UNIX) as live:
        live.bind(unused_unix_path)
        live.listen()
        with pytest.raises(trionet.AddressInUse):
            await start(f"unix:{unused_unix_path}")
        assert await trio.Path(unused_unix_path).exists()  # the live server's file survives


async def test_abstract_name_in_use(start: Any) -> None:
    name = f"trionet-test-{uuid.uuid4().hex}"
    with stdlib_socket.socket(stdlib_socket.AF_UNIX) as live:
        live.bind(b"\0" + name.encode())
        live.listen()
        with pytest.raises(trionet.AddressInUse):
            await start(f"unix:@{name}")


async def test_socket_that_is_not_listening(start: Any) -> None:
    with stdlib_socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(trionet.LocalProtocolError, match="not listening"):
            await start(sock)


async def test_datagram_socket_is_refused(start: Any) -> None:
    with stdlib_socket.socket(type=stdlib_socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(trionet.LocalProtocolError, match="SOCK_STREAM"):
            await start(sock)


async def test_no_binds(start: Any) -> None:
    with pytest.raises(trionet.LocalProtocolError, match="at least one bind"):
        await start()


async def test_failure_on_second_bind_closes_the_first(
    start: Any, recording: Any, unused_unix_path: str
) -> None:
    factory = recording()
    port = free_port()
    with blocker() as taken:
        busy = taken.getsockname()[1]
        with pytest.raises(trionet.AddressInUse):
            await start(
                f"tcp://127.0.0.1:{port}", f"unix:{unused_unix_path}", f"tcp://127.0.0.1:{busy}"
            )
    # Three sockets were made (two listening ones, one that failed to bind)
    # and every one is closed; the Unix file is gone; the first port is free.
    assert len(factory.made) == 3
    assert all(s.fileno() == -1 for s in factory.made)
    assert not await trio.Path(unused_unix_path).exists()
    with stdlib_socket.socket() as again:
        again.bind(("127.0.0.1", port))
        again.listen()
