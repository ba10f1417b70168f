"""Options are refused when the public call is made, with a message naming the call
and the option -- never later, inside the library, at the first connection."""

from __future__ import annotations

import functools
import math
import socket as stdlib_socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import trionet
from trionet import services
from trionet._validate import MAX_KEEPALIVE, is_async_callable

ServerFactory = Callable[..., Awaitable[trionet.Server]]


async def serve_briefly(handler: Any, *binds: str, **options: Any) -> None:
    """``trionet.serve`` bounded in time: should validation ever miss, the
    test fails (the server starts, and is cancelled) instead of hanging."""
    with trio.fail_after(5):
        await trionet.serve(handler, *binds, **options)


async def _handler(conn: trionet.Connection) -> None:
    await conn.send_all(b"hi")


class _AsyncCallable:
    async def __call__(self, conn: trionet.Connection) -> None:
        await conn.send_all(b"hi")


class _SyncCallable:
    def __call__(self, conn: trionet.Connection) -> None:  # pragma: no cover - refused
        pass


def _sync(conn: trionet.Connection) -> None:  # pragma: no cover - refused
    pass


async def _two_args(conn: trionet.Connection, greeting: bytes) -> None:
    await conn.send_all(greeting)


def _sync_decorator(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(conn: trionet.Connection) -> Any:
        return fn(conn)  # returns the coroutine

    return wrapper


@_sync_decorator
async def _decorated(conn: trionet.Connection) -> None:
    await conn.send_all(b"hi")


def test_what_counts_as_an_async_callable() -> None:
    assert is_async_callable(_decorated)  # functools.wraps says what it wraps
    assert is_async_callable(_handler)
    assert is_async_callable(_AsyncCallable())
    assert is_async_callable(functools.partial(_two_args, greeting=b"x"))
    assert is_async_callable(functools.partial(functools.partial(_AsyncCallable())))
    assert is_async_callable(services.echo)
    assert not is_async_callable(_sync)
    assert not is_async_callable(_SyncCallable())
    assert not is_async_callable(lambda conn: _handler(conn))
    assert not is_async_callable(_AsyncCallable)  # the class, not an instance
    assert not is_async_callable(print)


@pytest.mark.parametrize(
    "handler", [_sync, _SyncCallable(), lambda conn: _handler(conn), "echo", None]
)
async def test_a_handler_that_is_not_async_is_refused_at_call_time(handler: Any) -> None:
    with pytest.raises(TypeError, match=r"^serve\(\): handler must be an async function"):
        await serve_briefly(handler, "tcp://127.0.0.1:0")
    with pytest.raises(TypeError, match=r"^open_server\(\): handler must be an async function"):
        async with trionet.open_server(handler, "tcp://127.0.0.1:0"):
            raise AssertionError("the body must not run")  # pragma: no cover


async def test_the_fixture_refuses_a_sync_handler(trionet_server: ServerFactory) -> None:
    with pytest.raises(TypeError, match="handler must be an async function"):
        await trionet_server(_sync)


@pytest.mark.parametrize(
    "handler",
    [_AsyncCallable(), functools.partial(_two_args, greeting=b"hi"), _decorated],
    ids=["async __call__", "partial", "functools.wraps"],
)
async def test_async_callables_and_partials_are_served(handler: Any) -> None:
    async with (
        trionet.open_server(handler, "tcp://127.0.0.1:0") as server,
        await trionet.connect(server.addresses[0]) as conn,
    ):
        with trio.fail_after(5):
            assert await conn.receive_exactly(2) == b"hi"


@pytest.mark.parametrize("value", [1e10, 2**31, math.inf, MAX_KEEPALIVE + 1])
async def test_keepalive_beyond_the_kernels_limit_is_refused_everywhere(value: float) -> None:
    # It used to pass validation and then kill the whole server at the first
    # connection (serve), or fail at connect time / the first borrow.
    message = f"keepalive must be at most {MAX_KEEPALIVE} seconds"
    with pytest.raises(ValueError, match=rf"^serve\(\): {message}"):
        await serve_briefly(_handler, "tcp://127.0.0.1:0", keepalive=value)
    with pytest.raises(ValueError, match=rf"^connect\(\): {message}"):
        await trionet.connect("tcp://127.0.0.1:9", keepalive=value)
    with pytest.raises(ValueError, match=rf"^ConnectionPool\(\): {message}"):
        trionet.ConnectionPool("tcp://127.0.0.1:9", keepalive=value)


async def test_the_largest_keepalive_is_applied_on_both_sides() -> None:
    seen: list[int] = []

    async def handler(conn: trionet.Connection) -> None:
        seen.append(conn.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_KEEPIDLE))

    async with (
        trionet.open_server(handler, "tcp://127.0.0.1:0", keepalive=MAX_KEEPALIVE) as srv,
        await trionet.connect(srv.addresses[0], keepalive=MAX_KEEPALIVE) as conn,
    ):
        idle = conn.getsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_KEEPIDLE)
        assert idle == MAX_KEEPALIVE
        with trio.fail_after(5):
            assert await conn.receive_some() == b""
    assert seen == [MAX_KEEPALIVE]


async def test_schedule_budget_none_is_refused_at_call_time() -> None:
    with pytest.raises(TypeError, match=r"^serve\(\): schedule_budget must be an int, not None"):
        await serve_briefly(_handler, "tcp://127.0.0.1:0", schedule_budget=None)


@pytest.mark.parametrize(
    ("call", "options", "error", "message"),
    [
        ("serve()", {"tcp_nodelay": 1}, TypeError, "tcp_nodelay must be True or False, not 1"),
        ("serve()", {"bogus": 1}, TypeError, "unknown option(s) 'bogus'; valid options are:"),
        ("ConnectionPool()", {"bogus": 1}, TypeError, "unknown option(s) 'bogus'; valid"),
        ("ConnectionPool()", {"max_size": 0}, ValueError, "max_size must be >= 1"),
        ("ConnectionPool()", {"timeout": "5"}, TypeError, "timeout must be None or a number"),
        ("connect()", {"retries": -1}, ValueError, "retries must be >= 0"),
        ("connect()", {"close_linger": -1}, ValueError, "close_linger must be >= 0 seconds"),
        ("connect()", {"backoff": math.inf}, ValueError, "backoff must be a finite number"),
        ("connect()", {"close_linger": math.inf}, ValueError, "close_linger must be a finite"),
        ("serve()", {"close_linger": math.inf}, ValueError, "close_linger must be a finite"),
        ("serve()", {"close_linger": 10**400}, ValueError, "close_linger must be a finite"),
        ("connect()", {"keepalive": 10**400}, ValueError, "keepalive must be at most 32767"),
    ],
)
async def test_messages_name_the_public_call_and_the_option(
    call: str, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        if call == "serve()":
            await serve_briefly(_handler, "tcp://127.0.0.1:0", **options)
        elif call == "connect()":
            await trionet.connect("tcp://127.0.0.1:9", **options)
        else:
            trionet.ConnectionPool("tcp://127.0.0.1:9", **options)
    text = str(info.value)
    assert text.startswith(call + ": ")
    assert message in text
    assert "make_plan" not in text and "Attribute(" not in text
    assert type(info.value) is error


def test_pool_unknown_option_lists_the_pools_own_options() -> None:
    with pytest.raises(TypeError) as info:
        trionet.ConnectionPool("tcp://127.0.0.1:9", bogus=1)
    assert "max_size" in str(info.value) and "close_linger" in str(info.value)
