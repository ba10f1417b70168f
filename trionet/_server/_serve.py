"""``serve`` and ``open_server``: check everything, open the listeners, run a ``Server``.

Every check is made when the call is made -- options, binds and their
per-bind options, the handler -- before any socket opens
(:func:`check_serve_config`, which the command line also calls before
``trio.run``).  Then each bind is resolved against the server-wide options
(``trionet._binds``), given its stage plan (``trionet._server._stages``:
TLS, ...), and opened; each of its listening sockets carries both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._binds import Bind, BindSpec, resolve_binds
from .._config import ServerConfig
from .._exceptions import LocalProtocolError
from .._stream import Connection
from .._unwrap import unwrap_single
from .._validate import check_async_callable, public_call
from ._listeners import close_listeners, open_listeners
from ._server import Server
from ._stages import plan_for

__all__ = ["Handler", "check_handler", "check_serve_config", "open_server", "serve"]

#: A connection handler: an async function taking the :class:`Connection`.
Handler = Callable[[Connection], Awaitable[Any]]


def check_serve_config(
    binds: Sequence[BindSpec], options: dict[str, Any] | Any, call: str = "serve()"
) -> tuple[ServerConfig, tuple[Bind, ...]]:
    """Every check ``serve``/``open_server`` make of their binds and options, before any I/O.

    The options (:meth:`ServerConfig.from_options`), each bind and its own
    options, and what only binds and options together can tell: at least
    one bind, and no ``unix_mode`` with an abstract ``unix:@NAME``.  The
    command line calls it before ``trio.run``, so that whatever the library
    would refuse is a usage error there, never a traceback.

    Returns:
        The validated :class:`ServerConfig` and the resolved binds.

    Raises:
        TypeError, ValueError: a bad option, or a bad combination, naming
            ``call`` (and the bind, for a per-bind option).
        InvalidAddress: a malformed bind spec.
        LocalProtocolError: no binds.
    """
    config = ServerConfig.from_options(options, call)
    if not binds:
        raise LocalProtocolError(f"{call} needs at least one bind (e.g. 'tcp://127.0.0.1:0')")
    with public_call(call):
        resolved = resolve_binds(binds, config)
    return config, resolved


def check_handler(call: str, handler: object) -> None:
    """A handler must be an async callable taking a Connection.

    Raises:
        TypeError: it is not (the message names ``call``).
    """
    with public_call(call):
        check_async_callable("handler", handler, takes="a Connection")


async def serve(
    handler: Handler,
    *binds: BindSpec,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Serve ``handler`` on every bind until cancelled or shut down.

    Each listening socket gets its own accept task; each connection its own
    task -- its stages (a TLS handshake), then its handler -- in a separate
    nursery so accepting can stop while connections finish.  When a handler
    returns, its connection is closed (without ever discarding a reply: see
    ``Connection.aclose``).

    Args:
        handler: ``async def handler(conn: trionet.Connection) -> None``.
        *binds: ``"tcp://HOST:PORT"``, ``"unix:PATH"``, ``"unix:@NAME"``,
            an inherited listening socket (``"fd:N"``, ``"systemd"``,
            ``"systemd:NAME"``), ``(host, port)``, an address record, a bound
            listening socket, or a :class:`~trionet.Bind` with options of its own.
        **options: see :class:`~trionet.ServerConfig` (``tls``, ``backlog``,
            ``handler_errors``, ``access``, ``max_connections``, ...); a
            per-bind option applies to every bind that does not set its own.
        task_status: reports the :class:`Server` once every socket listens.

    Raises:
        InvalidAddress: a malformed bind spec.
        AddressInUse: an address is taken.
        ListenError: another failure to listen.
        TypeError, ValueError: a bad option, bind option or handler, raised
            when the call is awaited (or started by ``nursery.start``), before
            its first checkpoint: nothing is opened (the rules are those of
            ``trionet._validate``).

    Example::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                functools.partial(trionet.serve, handler, "tcp://127.0.0.1:0", backlog=128)
            )
            print(server.addresses)
            ...
            await server.shutdown(5.0)
    """
    config, resolved = check_serve_config(binds, options, "serve()")
    check_handler("serve()", handler)
    await _serve(handler, resolved, config, task_status)


async def _serve(
    handler: Handler,
    binds: tuple[Bind, ...],
    config: ServerConfig,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    # serve() once its arguments are validated (open_server validates first,
    # outside its nursery, so errors come out unwrapped -- and only once).
    listeners = await open_listeners(binds)
    try:
        for listener in listeners:
            assert listener.bind is not None
            listener.plan = plan_for(listener.bind)
        server = Server(handler, listeners, config)
    except BaseException:
        close_listeners(listeners)
        raise
    await server._run(task_status)


@asynccontextmanager
async def open_server(handler: Handler, *binds: BindSpec, **options: Any) -> AsyncIterator[Server]:
    """``async with`` form of :func:`serve`; leaving the block drains the server.

    A normal exit drains with the ``shutdown_grace`` option (default 10 s); an
    exception leaving the block stops the server without a grace period and
    propagates unchanged (never wrapped in an ``ExceptionGroup``).

    Args:
        handler: ``async def handler(conn: trionet.Connection) -> None``.
        *binds: as for :func:`serve`.
        **options: as for :func:`serve` (see :class:`~trionet.ServerConfig`).

    Yields:
        The running :class:`Server`, every socket already listening.

    Raises:
        InvalidAddress: a malformed bind spec.
        AddressInUse: an address is taken.
        ListenError: another failure to listen.
        TypeError, ValueError: a bad option, bind option or handler, raised
            when the ``async with`` is entered, before its first checkpoint:
            nothing is opened.

    Example::

        async with trionet.open_server(handler, "tcp://127.0.0.1:0") as server:
            conn = await trionet.connect(server.addresses[0])
            ...
    """
    config, resolved = check_serve_config(binds, options, "open_server()")
    check_handler("open_server()", handler)
    body_error: BaseException | None = None
    with unwrap_single():
        async with trio.open_nursery() as nursery:
            server: Server = await nursery.start(_serve, handler, resolved, config)
            try:
                yield server
            except BaseException as exc:
                body_error = exc
            await server.shutdown(config.shutdown_grace if body_error is None else 0.0)
    if body_error is not None:
        raise body_error
