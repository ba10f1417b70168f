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
from typing import Any

import pytest
import trio

from ._server._serve import Handler, serve
from ._server._server import Server

__all__ = ["ServerFactory", "trionet_server", "unused_unix_path"]

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
