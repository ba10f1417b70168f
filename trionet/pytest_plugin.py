"""trionet's pytest plugin: server fixtures for Trio test suites.

Registered through the ``pytest11`` entry point, so installing trionet makes
the fixtures available everywhere (with pytest-trio providing the Trio run).

Fixtures:

``trionet_server``
    A factory: ``server = await trionet_server(handler, *binds, **options)``
    starts a server in the test's nursery (default bind ``tcp://127.0.0.1:0``)
    with ``handler_errors="raise"``, so a failing handler fails the test with
    its own traceback.  Every server it started is drained at teardown.

``unused_unix_path``
    A fresh, short filesystem path for a Unix socket (inside a private
    temporary directory, removed afterwards).

``virtual_network``
    A :class:`trionet.testing.VirtualNetwork` installed for the test's
    ``trio.run``: every socket the test (and the code it calls) makes is
    virtual.  Seed 0 unless the test says otherwise with
    ``@pytest.mark.virtual_network(seed=N)`` (any ``VirtualNetwork``
    keyword argument works there).  When the test fails, the seed is
    added to its report, so the run can be replayed.

Example::

    async def test_echo(trionet_server):
        server = await trionet_server(echo_handler)
        conn = await trionet.connect(server.addresses[0])
        ...
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
import trio

from ._server._serve import Handler, serve
from ._server._server import Server

if TYPE_CHECKING:
    from .testing import VirtualNetwork

__all__ = [
    "ServerFactory",
    "install_for_test",
    "trionet_server",
    "unused_unix_path",
    "virtual_network",
]

#: The type of the ``trionet_server`` fixture.
ServerFactory = Callable[..., Awaitable[Server]]

_TEARDOWN_GRACE = 1.0


@pytest.fixture
async def trionet_server(nursery: trio.Nursery) -> AsyncIterator[ServerFactory]:
    """Start trionet servers inside the test's nursery; drain them at teardown."""
    started: list[Server] = []

    async def factory(handler: Handler, *binds: Any, **options: Any) -> Server:
        options.setdefault("handler_errors", "raise")
        if not binds:
            binds = ("tcp://127.0.0.1:0",)
        server: Server = await nursery.start(functools.partial(serve, handler, *binds, **options))
        started.append(server)
        return server

    yield factory
    for server in started:
        if not server.stopped:
            # Bounded: a drain that overruns its grace fails the test, never hangs it.
            with trio.fail_after(_TEARDOWN_GRACE + 5):
                await server.shutdown(_TEARDOWN_GRACE)


@pytest.fixture
def unused_unix_path() -> Iterator[str]:
    """A short path for a Unix socket that nothing uses yet."""
    # sun_path is only 108 bytes; pytest's tmp_path can be longer than that.
    directory = tempfile.mkdtemp(prefix="trionet-")
    try:
        yield os.path.join(directory, "sock")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "virtual_network(**options): keyword arguments for the virtual_network fixture's "
        "trionet.testing.VirtualNetwork (e.g. seed=3)",
    )


@pytest.fixture
def virtual_network(request: pytest.FixtureRequest) -> VirtualNetwork:
    """A :class:`trionet.testing.VirtualNetwork`, installed for the test's whole ``trio.run``.

    Installed around the run -- before the test's async fixtures start, after
    they end -- not by an async fixture: pytest-trio sets async fixtures up
    concurrently, so one that did not depend on this fixture could otherwise
    open real sockets before the network was installed.
    """
    from .testing import VirtualNetwork

    marker = request.node.get_closest_marker("virtual_network")
    return install_for_test(request, VirtualNetwork(**(marker.kwargs if marker else {})))


def install_for_test(request: pytest.FixtureRequest, net: VirtualNetwork) -> VirtualNetwork:
    """Install ``net`` around the whole ``trio.run`` of the requesting Trio test.

    For fixtures like ``virtual_network`` (a project's own, say one that
    parametrises tests over real loopback and a virtual network): pytest-trio
    runs the test through the runner of its first ``trio`` marker, so this
    puts one first that installs ``net``.  The seed goes into the report of
    a failing test.
    """
    node = request.node
    where = f"{node.nodeid}: trionet.pytest_plugin.install_for_test"
    if node.get_closest_marker("trio") is None:
        raise pytest.UsageError(
            f"{where}: a virtual network needs a Trio test (@pytest.mark.trio, or trio_mode = true)"
        )
    if node.stash.get(_INSTALLED, None) is not None:
        raise pytest.UsageError(f"{where}: the test asked for two virtual networks")
    custom = [m for m in node.iter_markers("trio") if m.kwargs.get("run") not in (None, trio.run)]
    if custom or request.config.getini("trio_run") not in ("", "trio"):
        raise pytest.UsageError(f"{where}: the test already has its own Trio runner")
    state = _Installed(net)
    node.stash[_INSTALLED] = state
    node.user_properties.append(("virtual_network_seed", net.seed))
    node.add_marker(pytest.mark.trio(run=functools.partial(_run_installed, state)), append=False)
    return net


class _Installed:
    """A test's virtual network, and whether its run really installed it."""

    def __init__(self, net: VirtualNetwork) -> None:
        self.net = net
        self.ran = False


_INSTALLED = pytest.StashKey[_Installed]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    result = yield
    state = item.stash.get(_INSTALLED, None)
    if state is not None and not state.ran:
        # The network was asked for too late (getfixturevalue inside the
        # test) or the test ran through another runner (Hypothesis): its
        # sockets were real.
        pytest.fail(
            "the test asked for a virtual network but ran without it, on real sockets "
            "(request virtual_network as an argument or with usefixtures; pytest-trio's "
            "Hypothesis support runs tests without it)",
            pytrace=False,
        )
    return result


def _run_installed(
    state: _Installed, fn: Callable[[], Awaitable[object]], **options: Any
) -> object:
    """``trio.run(fn)`` with the network installed for the whole run."""

    async def installed() -> object:
        from .testing._socket import VirtualSocket

        with state.net.install():
            state.ran = True
            result = await fn()
            # A test that swapped the socket factory for one of its own (real
            # sockets) proved nothing about the virtual network.
            with trio.socket.socket() as probe:
                if not isinstance(probe, VirtualSocket):
                    pytest.fail(
                        "the test replaced the virtual network's socket factory, so its "
                        "sockets were not virtual"
                    )
            return result

    return trio.run(installed, **options)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for name, value in item.user_properties:
            if name == "virtual_network_seed":
                report.sections.append(
                    (
                        "trionet virtual network",
                        f"seed={value} (replay with @pytest.mark.virtual_network(seed={value}))",
                    )
                )
    return report
