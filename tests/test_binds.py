"""``Bind``: per-bind options, what the server-wide ones fill in, and ``server.binds``."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable

import pytest
import trio

import trionet
from trionet import services
from trionet._binds import resolve_binds

ServerFactory = Callable[..., Awaitable[trionet.Server]]


def test_server_wide_options_fill_in_what_a_bind_does_not_set(
    server_tls: ssl.SSLContext,
) -> None:
    config = trionet.ServerConfig(
        tls=server_tls, backlog=128, unix_mode=0o660, handshake_timeout=4.0
    )
    plain, own, opted_out, unix = resolve_binds(
        [
            "tcp://127.0.0.1:0",
            trionet.Bind("tcp://127.0.0.1:0", backlog=8, handshake_timeout=1.0),
            trionet.Bind("tcp://127.0.0.1:0", tls=False),
            "unix:/tmp/never-bound.sock",
        ],
        config,
    )
    assert plain == trionet.Bind(
        "tcp://127.0.0.1:0",
        tls=server_tls,
        backlog=128,
        handshake_timeout=4.0,
        proxy_protocol="off",
        trusted_proxies=(),
        reuse_port=False,
        socket_options=(),
    )
    assert (own.backlog, own.handshake_timeout, own.uses_tls) == (8, 1.0, True)
    assert opted_out.tls is False and not opted_out.uses_tls
    # The server-wide unix_mode is for the Unix path binds among them only.
    assert (plain.unix_mode, unix.unix_mode) == (None, 0o660)


def test_no_tls_anywhere_resolves_to_plain() -> None:
    (bind,) = resolve_binds(["tcp://127.0.0.1:0"], trionet.ServerConfig())
    assert bind.tls is False and not bind.uses_tls
    assert bind.handshake_timeout == 10.0  # the default, though a plain bind has no stages


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: trionet.Bind("tcp://127.0.0.1:0", unix_mode=0o600), ValueError,
         r"^Bind\('tcp://127.0.0.1:0'\): unix_mode=0o600 applies to unix: socket files only"),
        (lambda: trionet.Bind("unix:@name", unix_mode=0o600), ValueError,
         r"^Bind\('unix:@name'\): unix_mode=0o600 cannot apply to the abstract name"),
        (lambda: trionet.Bind("127.0.0.1:80"), trionet.InvalidAddress, "127.0.0.1:80"),
        (lambda: trionet.Bind("tcp://127.0.0.1:0", tls=True), TypeError,
         r"^Bind\('tcp://127.0.0.1:0'\): tls must be an ssl.SSLContext"),
    ],
)  # fmt: skip
def test_a_bad_bind_is_refused_when_it_is_made(
    make: Callable[[], trionet.Bind], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


async def test_server_binds_and_addresses_keep_the_order_given(
    trionet_server: ServerFactory, server_tls: ssl.SSLContext, unused_unix_path: str
) -> None:
    server = await trionet_server(
        services.echo,
        trionet.Bind("tcp://127.0.0.1:0", tls=server_tls),
        "unix:" + unused_unix_path,
        trionet.Bind("tcp://127.0.0.1:0", backlog=4),
        unix_mode=0o600,
    )
    tls_bind, unix_bind, small = server.binds
    assert server.addresses == [b.address for b in server.binds]
    assert isinstance(tls_bind.address, trionet.TCPAddress) and tls_bind.address.port != 0
    assert tls_bind.uses_tls and not unix_bind.uses_tls and not small.uses_tls
    assert (unix_bind.unix_mode, small.unix_mode, small.backlog) == (0o600, None, 4)


async def test_the_same_bind_twice_listens_twice(trionet_server: ServerFactory) -> None:
    # A Bind is a value: given twice (port 0) it is two listeners, two ports.
    bind = trionet.Bind("tcp://127.0.0.1:0", backlog=4)
    server = await trionet_server(services.echo, bind, bind)
    first, second = server.addresses
    assert isinstance(first, trionet.TCPAddress) and isinstance(second, trionet.TCPAddress)
    assert first.port != second.port
    with trio.fail_after(10):
        for address in server.addresses:
            async with await trionet.connect(address) as conn:
                await conn.send_all(b"x\n")
                assert await conn.receive_line() == b"x"


def test_trusted_proxies_without_a_proxy_bind_is_refused() -> None:
    # trusted_proxies says whom to trust for PROXY headers: given where no
    # bind reads one, it is a mistake (proxy_protocol forgotten), said at
    # call time -- not a silent no-op.
    with pytest.raises(ValueError, match="trusted_proxies applies to proxy_protocol='required'"):
        resolve_binds(["tcp://127.0.0.1:0"], trionet.ServerConfig(trusted_proxies=["10.0.0.0/8"]))
    with pytest.raises(ValueError, match=r"Bind\('tcp://127.0.0.1:0'\): trusted_proxies"):
        resolve_binds(
            [trionet.Bind("tcp://127.0.0.1:0", trusted_proxies=["10.0.0.0/8"])],
            trionet.ServerConfig(),
        )
    # Server-wide trust with one PROXY bind and a plain one is fine; the
    # plain bind shows no trusted proxies.
    proxied, plain = resolve_binds(
        [trionet.Bind("tcp://127.0.0.1:0", proxy_protocol="required"), "tcp://127.0.0.1:0"],
        trionet.ServerConfig(trusted_proxies=["10.0.0.0/8"]),
    )
    assert (proxied.proxy_protocol, proxied.trusted_proxies) == ("required", ("10.0.0.0/8",))
    assert (plain.proxy_protocol, plain.trusted_proxies) == ("off", ())
