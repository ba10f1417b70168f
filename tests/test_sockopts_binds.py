"""``reuse_port`` and ``socket_options``: set before ``bind()``, per bind or server-wide."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

import trionet
from trionet import services
from trionet._binds import resolve_binds
from trionet.testing import VirtualNetwork

ServerFactory = Callable[..., Awaitable[trionet.Server]]

LISTEN = "tcp://127.0.0.1:0"
RCVBUF = (socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
DEFER = (socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)


def _socks(server: trionet.Server) -> list[Any]:
    return [listener.sock for listener in server._listeners]


async def _echo_once(address: trionet.TCPAddress) -> None:
    with trio.fail_after(10):
        async with await trionet.connect(address) as conn:
            await conn.send_all(b"x\n")
            assert await conn.receive_line() == b"x"


async def test_reuse_port_sets_so_reuseport(trionet_server: ServerFactory) -> None:
    server = await trionet_server(services.echo, trionet.Bind(LISTEN, reuse_port=True), LISTEN)
    on, off = _socks(server)
    assert on.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    assert off.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    assert [b.reuse_port for b in server.binds] == [True, False]


async def test_two_servers_share_a_port_with_reuse_port(trionet_server: ServerFactory) -> None:
    first = await trionet_server(services.echo, LISTEN, reuse_port=True)
    (address,) = first.addresses
    assert isinstance(address, trionet.TCPAddress)
    second = await trionet_server(services.echo, f"tcp://127.0.0.1:{address.port}", reuse_port=True)
    assert second.addresses == [address]
    await _echo_once(address)
    # Without it (on either side) the port is taken.
    with pytest.raises(trionet.AddressInUse, match=str(address.port)):
        await trionet.serve(services.echo, f"tcp://127.0.0.1:{address.port}")


async def test_socket_options_are_applied_before_bind(trionet_server: ServerFactory) -> None:
    server = await trionet_server(services.echo, LISTEN, socket_options=[RCVBUF, DEFER])
    (sock,) = _socks(server)
    # Linux doubles SO_RCVBUF for its bookkeeping; at least what was asked.
    assert sock.getsockopt(*RCVBUF[:2]) >= 65536
    assert sock.getsockopt(*DEFER[:2]) > 0
    assert server.binds[0].socket_options == (RCVBUF, DEFER)  # a list, stored as a tuple
    address = server.addresses[0]
    assert isinstance(address, trionet.TCPAddress)
    await _echo_once(address)  # with TCP_DEFER_ACCEPT, data first: still served


async def test_socket_options_on_a_unix_bind(
    trionet_server: ServerFactory, unused_unix_path: str
) -> None:
    server = await trionet_server(
        services.echo, trionet.Bind("unix:" + unused_unix_path, socket_options=[RCVBUF])
    )
    (sock,) = _socks(server)
    assert sock.getsockopt(*RCVBUF[:2]) >= 65536


def test_a_bind_s_own_options_replace_the_server_s() -> None:
    config = trionet.ServerConfig(reuse_port=True, socket_options=[RCVBUF])
    plain, own, off, unix = resolve_binds(
        [
            LISTEN,
            trionet.Bind(LISTEN, socket_options=[DEFER]),
            trionet.Bind(LISTEN, reuse_port=False, socket_options=()),
            "unix:/tmp/never-bound.sock",
        ],
        config,
    )
    assert (plain.reuse_port, plain.socket_options) == (True, (RCVBUF,))
    assert (own.reuse_port, own.socket_options) == (True, (DEFER,))
    assert (off.reuse_port, off.socket_options) == (False, ())
    # The server-wide reuse_port is for the tcp:// binds among them.
    assert (unix.reuse_port, unix.socket_options) == (False, (RCVBUF,))
    assert resolve_binds([LISTEN], trionet.ServerConfig())[0].socket_options == ()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"reuse_port": 1}, TypeError, "must be True or False, not 1"),
        ({"reuse_port": "yes"}, TypeError, "must be True or False"),
        ({"socket_options": RCVBUF}, TypeError, "must hold"),
        ({"socket_options": "SO_RCVBUF"}, TypeError, "must be a list"),
        ({"socket_options": {RCVBUF}}, TypeError, "must be a list"),
        ({"socket_options": [[1, 8, 1]]}, TypeError, "must hold .level, name, value. tuples"),
        ({"socket_options": [(1, 8)]}, ValueError, "tuples of 3"),
        ({"socket_options": [(1, 8, 1, 4)]}, ValueError, "tuples of 3"),
        ({"socket_options": [("1", 8, 1)]}, TypeError, r"level must be an int"),
        ({"socket_options": [(1, True, 1)]}, TypeError, r"name must be an int"),
        ({"socket_options": [(1, 8.0, 1)]}, TypeError, r"name must be an int"),
        ({"socket_options": [(-1, 8, 1)]}, ValueError, r"level must be in 0..2\*\*31-1"),
        ({"socket_options": [(1, 2**31, 1)]}, ValueError, r"name must be in 0..2\*\*31-1"),
        ({"socket_options": [(1, 8, 2**31)]}, ValueError, "must fit a C int"),
        ({"socket_options": [(1, 8, 1.5)]}, TypeError, "must be an int or bytes"),
        ({"socket_options": [(1, 8, True)]}, TypeError, "must be an int or bytes"),
        ({"socket_options": [(1, 8, "x")]}, TypeError, "must be an int or bytes"),
    ],
)  # fmt: skip
async def test_bad_values_are_refused_naming_the_call_and_option(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    (option,) = options
    with pytest.raises(error, match=rf"^Bind\('tcp://127.0.0.1:0'\): {option}.*{message}") as info:
        trionet.Bind(LISTEN, **options)
    assert type(info.value) is error
    with pytest.raises(error, match=rf"^serve\(\): {option}.*{message}"):
        await trionet.serve(services.echo, LISTEN, **options)
    assert trionet.Bind(LISTEN, socket_options=[(1, 8, b"\x00\x00\x01\x00")]).socket_options


@pytest.mark.parametrize("spec", ["fd:3", "systemd", "systemd:web"])
@pytest.mark.parametrize(
    ("option", "said"), [({"reuse_port": True}, "reuse_port"), ({"socket_options": [RCVBUF]}, "")]
)
async def test_inherited_binds_refuse_them(
    spec: str, option: dict[str, Any], said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As systemd would pass one socket named "web" (no descriptor is touched here).
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDNAMES", "web")
    with pytest.raises(ValueError, match=f"{said}.*inherited socket: already bound"):
        trionet.Bind(spec, **option)
    # Server-wide, too -- unless the bind leaves them out itself.
    with pytest.raises(ValueError, match=r"^serve\(\): Bind.*inherited socket: already bound"):
        await trionet.serve(services.echo, spec, **option)
    off = trionet.Bind(spec, reuse_port=False, socket_options=())
    config = trionet.ServerConfig(**option)
    with pytest.raises(ValueError, match="inherited socket: already bound"):
        resolve_binds([spec], config)
    (bind,) = resolve_binds([LISTEN, off], config)[1:]
    assert (bind.reuse_port, bind.socket_options) == (False, ())


def test_an_adopted_socket_refuses_them() -> None:
    with (
        socket.socket() as sock,
        pytest.raises(ValueError, match="inherited socket: already bound"),
    ):
        trionet.Bind(sock, socket_options=[RCVBUF])


def test_reuse_port_is_for_tcp_binds() -> None:
    with pytest.raises(ValueError, match=r"reuse_port=True applies to tcp:// binds only"):
        trionet.Bind("unix:/tmp/never-bound.sock", reuse_port=True)


async def test_a_refused_option_is_a_listen_error_naming_it_and_the_bind() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(trionet.ListenError, match=r"tcp://127.0.0.1:0.*\(6, 99999, 1\)"):
        await trionet.serve(services.echo, LISTEN, socket_options=[(6, 99999, 1)])
    assert set(os.listdir("/proc/self/fd")) == before  # the socket was closed


async def test_on_a_virtual_network_they_go_to_the_virtual_socket() -> None:
    with VirtualNetwork().install():
        async with trio.open_nursery() as nursery:
            serve = functools.partial(
                trionet.serve, services.echo, LISTEN, reuse_port=True,
                socket_options=[DEFER],
            )  # fmt: skip
            server = await nursery.start(serve)
            (sock,) = _socks(server)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
            assert sock.getsockopt(*DEFER[:2]) == 5
            nursery.cancel_scope.cancel()
        with pytest.raises(trionet.ListenError, match=r"tcp://127.0.0.1:0.*\(6, 99999, 1\)"):
            await trionet.serve(services.echo, LISTEN, socket_options=[(6, 99999, 1)])
