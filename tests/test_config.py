"""ServerConfig: every option validated at call time, before anything listens."""

from __future__ import annotations

import functools
import math
import os
import socket
from typing import Any

import pytest
import trio

import trionet
from trionet import ServerConfig


async def _never_called(conn: trionet.Connection) -> None:  # pragma: no cover
    raise AssertionError("no connection should ever reach this handler")


def test_defaults_are_off() -> None:
    config = ServerConfig()
    assert config.access is None
    assert config.max_connections is None
    assert config.max_connections_per_host is None
    assert config.idle_timeout is None
    assert config.unix_mode is None
    assert config.handler_errors == "log"
    assert config.shutdown_grace == 10.0


def test_good_values_are_kept() -> None:
    policy = trionet.AccessPolicy(deny=["10.0.0.0/8"])
    config = ServerConfig.from_options(
        {
            "access": policy,
            "max_connections": 5,
            "max_connections_per_host": 2,
            "idle_timeout": 0.5,
            "unix_mode": 0o660,
            "shutdown_grace": 0,
            "keepalive": 30,
            "handler_errors": "raise",
        }
    )
    assert config.access is policy
    assert (config.max_connections, config.max_connections_per_host) == (5, 2)
    assert config.idle_timeout == 0.5
    assert config.unix_mode == 0o660
    assert config.shutdown_grace == 0


def _sync_check(info: trionet.ConnectionInfo) -> bool:  # pragma: no cover - never called
    return True


async def _async_check(info: trionet.ConnectionInfo) -> bool:  # pragma: no cover
    return True


class _AsyncCallable:
    async def __call__(self, info: trionet.ConnectionInfo) -> bool:  # pragma: no cover
        return True


def test_callable_access_is_accepted() -> None:
    assert ServerConfig(access=_sync_check).access is _sync_check


BAD_OPTIONS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"max_connections": 0}, ValueError, "max_connections must be >= 1"),
    ({"max_connections": -3}, ValueError, "max_connections must be >= 1"),
    ({"max_connections": 2.5}, TypeError, "max_connections must be an int"),
    ({"max_connections": True}, TypeError, "max_connections must be an int"),
    ({"max_connections_per_host": 0}, ValueError, "max_connections_per_host must be >= 1"),
    ({"max_connections_per_host": "2"}, TypeError, "max_connections_per_host must be an int"),
    ({"idle_timeout": -1}, ValueError, "idle_timeout must be > 0 seconds"),
    ({"idle_timeout": 0}, ValueError, "idle_timeout must be > 0 seconds"),
    ({"idle_timeout": math.nan}, ValueError, "idle_timeout must be > 0 seconds"),
    ({"idle_timeout": "5"}, TypeError, "idle_timeout must be None or a number of seconds"),
    ({"shutdown_grace": -1}, ValueError, "shutdown_grace must be >= 0 seconds"),
    ({"shutdown_grace": None}, TypeError, "shutdown_grace must be a number of seconds"),
    ({"handler_errors": "bogus"}, ValueError, "handler_errors must be 'log' or 'raise'"),
    ({"access": "10.0.0.0/8"}, TypeError, "access must be an AccessPolicy or a callable"),
    ({"access": _async_check}, TypeError, "synchronous callable"),
    ({"access": functools.partial(_async_check)}, TypeError, "synchronous callable"),
    ({"access": _AsyncCallable()}, TypeError, "synchronous callable"),
    ({"unix_mode": "0660"}, TypeError, "unix_mode must be a permission int"),
    ({"unix_mode": 0o10000}, ValueError, "unix_mode must be a permission int"),
    ({"keepalive": -5}, ValueError, "keepalive must be a bool or a positive number"),
    ({"keepalive": math.inf}, ValueError, "keepalive must be at most 32767 seconds"),
    ({"keepalive": 1e10}, ValueError, "keepalive must be at most 32767 seconds"),
    ({"keepalive": 2**31}, ValueError, "keepalive must be at most 32767 seconds"),
    ({"keepalive": 32768}, ValueError, "keepalive must be at most 32767 seconds"),
    ({"keepalive": math.nan}, ValueError, "keepalive must be a bool or a positive number"),
    ({"schedule_budget": None}, TypeError, "schedule_budget must be an int, not None"),
    ({"schedule_budget": 0}, ValueError, "schedule_budget must be >= 1"),
    ({"close_linger": -1}, ValueError, "close_linger must be >= 0 seconds"),
    ({"close_linger": math.nan}, ValueError, "close_linger must be >= 0 seconds"),
    ({"close_linger": None}, TypeError, "close_linger must be a number of seconds"),
    ({"close_linger": "5"}, TypeError, "close_linger must be a number of seconds"),
    ({"keepalive": "yes"}, TypeError, "keepalive must be a bool or a number"),
    ({"backlog": -1}, ValueError, "backlog must be >= 0"),
    ({"tcp_nodelay": 1}, TypeError, "tcp_nodelay must be True or False, not 1"),
    ({"bogus": 1}, TypeError, "unknown option(s) 'bogus'; valid options are: access"),
    ({"max_conections": 5}, TypeError, "unknown option(s) 'max_conections'"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS)
def test_bad_option_raises_precise_error(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as info:
        ServerConfig.from_options(options)
    # The message names the public call, then the option.
    assert str(info.value).startswith("serve(): ")
    assert message in str(info.value)
    assert type(info.value) is error


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"allow": ["10.0.0.0/33"]}, ValueError, "invalid CIDR '10.0.0.0/33'"),
        ({"deny": ["not-an-ip"]}, ValueError, "invalid CIDR 'not-an-ip'"),
        ({"deny": [10]}, TypeError, "a CIDR must be a str"),
        ({"allow": 5}, TypeError, "CIDR lists must be iterables of str"),
        ({"unix_uids": 0}, TypeError, "unix_uids must be an iterable of ints"),
        ({"unix_uids": [-1]}, ValueError, "non-negative"),
        ({"unix_uids": ["0"]}, TypeError, "unix_uids must hold non-negative ints"),
        ({"unix_uids": [True]}, TypeError, "unix_uids must hold non-negative ints"),
        ({"unix_uids": [float("nan")]}, ValueError, "unix_uids must hold non-negative ints"),
    ],
)
def test_bad_access_policy(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as info:
        trionet.AccessPolicy(**kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(("options", "error", "message"), BAD_OPTIONS[:6] + BAD_OPTIONS[-2:])
async def test_serve_validates_before_listening(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    # Bind a fixed free port: if serve listened before validating, the port
    # would be taken (briefly) -- instead, nothing may be opened at all.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    async with trio.open_nursery() as nursery:
        with pytest.raises(error, match=message.split("(")[0]):
            await nursery.start(
                functools.partial(
                    trionet.serve, _never_called, f"tcp://127.0.0.1:{port}", **options
                )
            )
    with pytest.raises(error):
        async with trionet.open_server(_never_called, f"tcp://127.0.0.1:{port}", **options):
            raise AssertionError("the body must not run")  # pragma: no cover
    # Nothing listened: the port is still free to bind and connect is refused.
    check = socket.socket()
    try:
        with pytest.raises(ConnectionRefusedError):
            check.connect(("127.0.0.1", port))
    finally:
        check.close()


async def test_bad_shutdown_grace_values() -> None:
    with trio.fail_after(5):
        async with trionet.open_server(_never_called, "tcp://127.0.0.1:0") as server:
            call = r"^Server\.shutdown\(\): grace must be "
            for bad in (-1, math.nan):
                with pytest.raises(ValueError, match=call + ">= 0 seconds"):
                    await server.shutdown(bad)
            for wrong in ("3", True, [], None if False else "x"):
                with pytest.raises(TypeError, match=call + "a number of seconds"):
                    await server.shutdown(wrong)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match=call + "a number of seconds"):
                await server.shutdown(grace=b"1")  # type: ignore[arg-type]
            assert not server.draining
            report = await server.shutdown(0)
    assert (report.finished, report.cancelled, report.swept) == (0, 0, 0)


async def test_unix_mode_with_an_abstract_name_is_refused_before_listening(
    unused_unix_path: str,
) -> None:
    # An abstract name has no file, hence no permission bits: unix_mode would
    # silently protect nothing.  Refused when serve is called -- even the
    # file-system bind listed first is never opened.
    name = f"unix:@trionet-mode-{os.getpid()}"
    async with trio.open_nursery() as nursery:
        with pytest.raises(
            ValueError, match=r"^serve\(\): Bind\('unix:@.*'\): unix_mode=0o600 cannot apply"
        ):
            await nursery.start(
                functools.partial(
                    trionet.serve, _never_called, f"unix:{unused_unix_path}", name, unix_mode=0o600
                )
            )
    with pytest.raises(ValueError, match="abstract"):
        async with trionet.open_server(_never_called, name, unix_mode=0o600):
            raise AssertionError("the body must not run")  # pragma: no cover
    assert not await trio.Path(unused_unix_path).exists()
    # Without unix_mode the same abstract name is fine.
    with trio.fail_after(5):
        async with trionet.open_server(_never_called, name, shutdown_grace=0) as server:
            assert server.addresses == [trionet.UnixAddress(name[len("unix:") :])]
