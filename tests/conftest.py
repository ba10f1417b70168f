"""Shared test helpers.  Fixtures from trionet's own plugin load via its entry point.

The helpers a user's tests can use too (``wait_until``, ``Shutdown``,
``fill_stream``, ...) are public in :mod:`trionet.testing`; the tests import
them from there.  What stays here is only for trionet's own tests.
"""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trio
import trustme

import trionet
from trionet import _ratelimit
from trionet.pytest_plugin import install_for_test
from trionet.testing import VirtualNetwork, wait_until


def require_program(name: str) -> str:
    """Path of an external peer program, or skip the test saying which is missing.

    CI installs every such program (see .ci/run), so these skips only happen
    on a developer machine without it.
    """
    path = shutil.which(name)
    if path is None:
        message = f"needs the external program {name!r}, which is not installed here"
        if os.environ.get("TRIONET_REQUIRE_PEERS"):
            pytest.fail(message + " (TRIONET_REQUIRE_PEERS is set: CI installs it)")
        pytest.skip(message)
    return path


class ProxySocket(trio.socket.SocketType):
    """Delegates to a real Trio socket, but is not Trio's own socket class.

    ``raw_socket_of()`` returns None for it, so Connection (and the accept
    loop) must use the generic ``SocketType`` methods.
    """

    def __init__(self, inner: trio.socket.SocketType) -> None:
        super().__init__()
        self._inner = inner

    # Plain attributes and synchronous methods.
    family = property(lambda self: self._inner.family)
    type = property(lambda self: self._inner.type)
    proto = property(lambda self: self._inner.proto)
    did_shutdown_SHUT_WR = property(lambda self: self._inner.did_shutdown_SHUT_WR)

    def fileno(self) -> int:
        # A socket from a custom factory (an in-memory network) has no
        # descriptor: nothing on the generic path may rely on one.
        return -1

    def detach(self) -> int:
        return self._inner.detach()

    def getsockname(self) -> Any:
        return self._inner.getsockname()

    def getpeername(self) -> Any:
        return self._inner.getpeername()

    def getsockopt(self, *args: Any) -> Any:
        return self._inner.getsockopt(*args)

    def setsockopt(self, *args: Any) -> None:
        self._inner.setsockopt(*args)

    def listen(self, backlog: int = 128) -> None:
        self._inner.listen(backlog)

    def shutdown(self, flag: int) -> None:
        self._inner.shutdown(flag)

    def close(self) -> None:
        self._inner.close()

    def is_readable(self) -> bool:
        return self._inner.is_readable()

    def __enter__(self) -> ProxySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ProxySocket {self._inner!r}>"

    # Asynchronous methods.
    async def bind(self, address: Any) -> None:
        await self._inner.bind(address)

    async def connect(self, address: Any) -> None:
        await self._inner.connect(address)

    async def accept(self) -> tuple[trio.socket.SocketType, Any]:
        sock, addr = await self._inner.accept()
        return ProxySocket(sock), addr

    async def wait_writable(self) -> None:
        await self._inner.wait_writable()

    async def recv(self, buflen: int, flags: int = 0, /) -> bytes:  # type: ignore[override]
        return await self._inner.recv(buflen, flags)

    async def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        return await self._inner.recv_into(buffer, nbytes, flags)

    async def send(self, data: Any, flags: int = 0, /) -> int:  # type: ignore[override]
        return await self._inner.send(data, flags)


class ProxyFactory(trio.abc.SocketFactory):
    """A socket factory whose sockets are all :class:`ProxySocket`."""

    def __init__(self) -> None:
        self.made: list[ProxySocket] = []

    def socket(
        self,
        family: int = socket.AF_INET,
        type: int = socket.SOCK_STREAM,
        proto: int = 0,
    ) -> trio.socket.SocketType:
        inner = trio.socket.from_stdlib_socket(socket.socket(family, type, proto))
        sock = ProxySocket(inner)
        self.made.append(sock)
        return sock


@contextmanager
def proxy_sockets() -> Iterator[ProxyFactory]:
    """Inside the block every new Trio socket is a :class:`ProxySocket` (the generic path)."""
    factory = ProxyFactory()
    previous = trio.socket.set_custom_socket_factory(factory)
    try:
        yield factory
    finally:
        trio.socket.set_custom_socket_factory(previous)


def port_of(server: trionet.Server) -> int:
    """The TCP port of a server's first listener."""
    address = server.addresses[0]
    assert isinstance(address, trionet.TCPAddress)
    return address.port


async def connect_tcp(port: int) -> trio.socket.SocketType:
    """A plain Trio socket connected to 127.0.0.1:``port`` (5 s bound), closed on failure."""
    sock = trio.socket.socket()
    try:
        with trio.fail_after(5):
            await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def wait_readable(sock: trio.socket.SocketType) -> None:
    """Until ``sock`` has something to read, on a real socket or a virtual one.

    A virtual socket has no descriptor for Trio's I/O manager to watch; its
    ``is_readable()`` is polled instead.
    """
    if sock.fileno() >= 0:
        await trio.lowlevel.wait_readable(sock)
    else:
        await wait_until(sock.is_readable)


class FakeTime:
    """Stands in for the ``time`` module of ``trionet._ratelimit``: its clock
    moves only when a test moves ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def limiter_clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """Stop the clock of trionet's log rate limiters (``trionet._ratelimit``)."""
    fake = FakeTime()
    monkeypatch.setattr(_ratelimit, "time", fake)
    return fake


# ----------------------------------------------------------------------
# TLS: certificates from trustme (a test CA, never the system's)


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A throw-away certificate authority for the whole test session."""
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_cert(tls_ca: trustme.CA) -> trustme.LeafCert:
    """A server certificate for ``localhost``, 127.0.0.1 and ::1."""
    return tls_ca.issue_cert("localhost", "127.0.0.1", "::1")


@pytest.fixture
def server_tls(tls_cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server context with ``tls_cert``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def client_tls(tls_ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``tls_ca`` (and nothing else)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks names; no system CAs
    ctx.load_verify_locations(cadata=tls_ca.cert_pem.bytes().decode())
    return ctx


@pytest.fixture
def cli() -> Iterator[Any]:
    """Start ``python -m trionet`` processes (see ``cliproc``); leftovers are killed."""
    from cliproc import cli_processes

    yield from cli_processes()


# ----------------------------------------------------------------------
# Loopback and the virtual network: one test, both networks
#
# A module opts in with ``pytestmark = pytest.mark.usefixtures("network")``:
# each of its async tests then runs twice, on the real loopback ("loopback")
# and on a trionet.testing.VirtualNetwork ("virtual").  A test that needs
# real-kernel behaviour says which with ``@pytest.mark.loopback_only("...")``
# and runs on loopback only.
#
# pytest-trio runs only the async fixtures a test names as arguments, so a
# fixture pulled in by ``usefixtures`` could not install anything inside the
# test's trio.run.  Instead ``network`` hands pytest-trio a runner that
# installs the network around the whole run: the test's async fixtures, the
# test, and their teardown all see it.

NETWORKS = ("loopback", "virtual")

#: Every address of 127.0.0.0/8 a test may bind a client to besides 127.0.0.1,
#: as Linux's loopback has them all.
_EXTRA_LOOPBACK = tuple(f"127.0.0.{n}" for n in range(2, 255))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "loopback_only(reason): the test needs real-kernel behaviour (the reason says which), "
        "so it runs only on loopback, not on the virtual network",
    )
    config.addinivalue_line(
        "markers",
        "virtual_xfail(reason): on the virtual network the test fails for a known reason "
        "(a strict xfail there; it still runs, and must pass, on loopback)",
    )


def _reason(metafunc: pytest.Metafunc, name: str) -> str | None:
    marker = metafunc.definition.get_closest_marker(name)
    if marker is None:
        return None
    reason = marker.args[0] if marker.args else marker.kwargs.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: @pytest.mark.{name} needs a reason saying "
            "why the test cannot pass on the virtual network"
        )
    return reason


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "network" not in metafunc.fixturenames or not inspect.iscoroutinefunction(metafunc.function):
        return  # a synchronous test touches no network: it runs once
    if _reason(metafunc, "loopback_only") is not None:
        params: list[Any] = ["loopback"]
    else:
        xfail = _reason(metafunc, "virtual_xfail")
        marks = () if xfail is None else (pytest.mark.xfail(strict=True, reason=xfail),)
        params = ["loopback", pytest.param("virtual", marks=marks)]
    metafunc.parametrize("network", params, indirect=True, ids=list(NETWORKS[: len(params)]))


@pytest.fixture
def network(request: pytest.FixtureRequest) -> VirtualNetwork | None:
    """The network the test runs on: None for real loopback, else a VirtualNetwork.

    The virtual network is installed for the test's whole ``trio.run``.  Its
    host ``localhost`` has every address 127.0.0.1-127.0.0.254 (and ::1), so
    tests that bind clients to several loopback addresses work as on Linux.
    ``@pytest.mark.virtual_network(seed=N, ...)`` passes its keyword
    arguments to ``VirtualNetwork``, as for the ``virtual_network`` fixture.
    """
    kind = getattr(request, "param", "loopback")
    if kind == "loopback":
        return None
    assert kind == "virtual", kind
    marker = request.node.get_closest_marker("virtual_network")
    net = VirtualNetwork(**(marker.kwargs if marker is not None else {}))
    net.add_host("localhost", *_EXTRA_LOOPBACK)
    return install_for_test(request, net)
