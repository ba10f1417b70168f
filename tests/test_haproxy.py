"""trionet behind a real HAProxy: ``send-proxy``, ``send-proxy-v2``, SSL TLVs, health checks.

Each test starts one trionet server with four PROXY binds and one
``haproxy -db`` process (its configuration written to the test's tmp dir)
whose frontends, all on 127.0.0.1, forward in TCP mode::

    fe_v1     -> bind A   send-proxy                          (v1)
    fe_v2     -> bind B   send-proxy-v2, unique-id + crc32c   (v2, TLVs)
    fe_v2ssl  -> bind C   send-proxy-v2-ssl-cn                (v2, SSL TLV: plain client)
    fe_ssl    -> bind C   TLS terminated by HAProxy (client certificate optional),
                          send-proxy-v2-ssl-cn + ssl-cipher, cert-sig, cert-key,
                          authority, crc32c                    (v2, SSL TLV: TLS client)
    fe_tls    -> bind D   TLS passed through to a TLS bind, send-proxy-v2;
                          trionet reads PROXY, then TLS

Every backend server has ``check inter 200ms``, and HAProxy's health checks
carry a header too: in v2 the ``LOCAL`` command (HAProxy >= 2.2, unless
``pp2-never-send-local``); v1 has no LOCAL, and HAProxy 2.6 names its check
connection's own endpoints (``PROXY TCP4 127.0.0.1 127.0.0.1 <its port>
<our port>``) -- the proxy itself, never a client.  Bind D's checks speak
TLS (``check-ssl``) and reset right after their Finished, while the
server still writes its TLS 1.3 session tickets: the handshake completed,
so they reach the handler (and are no ``tls_failures``).  Each backend
also has an unchecked ``backup`` server (the same bind), so that one slow
check marking the server down cannot refuse a client.  Clients bind to
127.0.0.5 or 127.0.0.6 (``local_address``), so the handler can tell them
from HAProxy (127.0.0.1).  Skipped only if the
``haproxy`` binary is absent (CI installs Debian's package: see ``.ci/run``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trustme
from conftest import require_program

import trionet
from trionet.testing import wait_until

ServerFactory = Callable[..., Awaitable[trionet.Server]]

pytestmark = [
    pytest.mark.peer("haproxy"),
    pytest.mark.skipif(
        shutil.which("haproxy") is None and not os.environ.get("TRIONET_REQUIRE_PEERS"),
        reason="needs the external program 'haproxy', which is not installed here "
        "(CI installs Debian's package: .ci/run, and there a missing one fails)",
    ),
]

HAPROXY_ADDRESS = "127.0.0.1"  # the source of HAProxy's connections to trionet
CLIENT_HOST = "127.0.0.5"
OTHER_HOST = "127.0.0.6"
CLIENT_CN = "haproxy-test-client"


@attrs.frozen
class Seen:
    """One connection as the handler saw it."""

    bind: str
    peer: trionet.Address
    proxy: trionet.ProxyInfo
    tls: trionet.TLSInfo | None

    @property
    def health_check(self) -> bool:
        """HAProxy's own connection: LOCAL (v2), or a v1 header naming HAProxy itself."""
        return self.proxy.client is None or self.proxy.client == self.proxy.source


class Recorder:
    """The handler: records every connection, sends ``<peer>\\n``, then echoes."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.binds: dict[int, str] = {}  # local port -> bind name

    async def __call__(self, conn: trionet.Connection) -> None:
        local = conn.local
        assert isinstance(local, trionet.TCPAddress) and conn.proxy is not None
        self.seen.append(Seen(self.binds[local.port], conn.peer, conn.proxy, conn.tls))
        # Health checks hang up at once (HAProxy may reset them): that is fine.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await conn.send_all(f"{conn.peer}\n".encode())
            async for chunk in conn:
                await conn.send_all(chunk)

    def clients(self) -> list[Seen]:
        return [seen for seen in self.seen if not seen.health_check]

    def checks(self, bind: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.health_check and seen.bind == bind]


@attrs.define
class Balanced:
    """A trionet server behind a running HAProxy."""

    server: trionet.Server
    handler: Recorder
    frontends: dict[str, int]
    process: trio.Process
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def connect(self, frontend: str, host: str = CLIENT_HOST, **options: Any) -> Any:
        """A client from ``host`` through ``frontend`` (5 s bound)."""
        return await trionet.connect(
            (HAPROXY_ADDRESS, self.frontends[frontend]), local_address=host, timeout=5, **options
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HAPROXY_ADDRESS, 0))
        return int(sock.getsockname()[1])


def listening_ports() -> set[int]:
    """The TCP ports something listens on (Linux: /proc/net/tcp)."""
    ports = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def haproxy_config(binds: dict[str, int], frontends: dict[str, int], files: dict[str, Path]) -> str:
    check = "check inter 200ms"
    ssl_options = "proxy-v2-options ssl-cipher,cert-sig,cert-key,authority,crc32c"
    return f"""
global
    nbthread 1
    maxconn 256

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout check 2s

frontend fe_v1
    bind {HAPROXY_ADDRESS}:{frontends["v1"]}
    default_backend be_v1
backend be_v1
    server a 127.0.0.1:{binds["A"]} send-proxy {check}
    server a_backup 127.0.0.1:{binds["A"]} send-proxy backup

frontend fe_v2
    bind {HAPROXY_ADDRESS}:{frontends["v2"]}
    unique-id-format %ci:%cp
    default_backend be_v2
backend be_v2
    server b 127.0.0.1:{binds["B"]} send-proxy-v2 proxy-v2-options unique-id,crc32c {check}
    server b_backup 127.0.0.1:{binds["B"]} send-proxy-v2 proxy-v2-options unique-id,crc32c backup

frontend fe_v2ssl
    bind {HAPROXY_ADDRESS}:{frontends["v2ssl"]}
    default_backend be_v2ssl
backend be_v2ssl
    server c 127.0.0.1:{binds["C"]} send-proxy-v2-ssl-cn {check}
    server c_backup 127.0.0.1:{binds["C"]} send-proxy-v2-ssl-cn backup

frontend fe_ssl
    bind {HAPROXY_ADDRESS}:{frontends["ssl"]} ssl crt {files["pem"]} ca-file {files["ca"]} \
verify optional
    default_backend be_ssl
backend be_ssl
    server c 127.0.0.1:{binds["C"]} send-proxy-v2-ssl-cn {ssl_options} {check}
    server c_backup 127.0.0.1:{binds["C"]} send-proxy-v2-ssl-cn {ssl_options} backup

frontend fe_tls
    bind {HAPROXY_ADDRESS}:{frontends["tls"]}
    default_backend be_tls
backend be_tls
    server d 127.0.0.1:{binds["D"]} send-proxy-v2 {check} check-ssl verify none
    server d_backup 127.0.0.1:{binds["D"]} send-proxy-v2 backup
"""


StartBalanced = Callable[..., Awaitable[Balanced]]


@pytest.fixture
async def balanced(
    trionet_server: ServerFactory,
    tmp_path: Path,
    tls_ca: trustme.CA,
    tls_cert: trustme.LeafCert,
) -> AsyncIterator[StartBalanced]:
    """Start a trionet server (with extra ``serve`` options) behind HAProxy; kill HAProxy after."""
    program = require_program("haproxy")
    processes: list[trio.Process] = []

    async def start(**options: Any) -> Balanced:
        handler = Recorder()
        checked_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_cert.configure_cert(checked_tls)
        proxy: dict[str, Any] = {
            "proxy_protocol": "required",
            "trusted_proxies": [f"{HAPROXY_ADDRESS}/32"],
        }
        server = await trionet_server(
            handler,
            trionet.Bind("tcp://127.0.0.1:0", **proxy),
            trionet.Bind("tcp://127.0.0.1:0", **proxy),
            trionet.Bind("tcp://127.0.0.1:0", **proxy),
            trionet.Bind("tcp://127.0.0.1:0", tls=checked_tls, **proxy),
            **options,
        )
        binds = {}
        for name, address in zip("ABCD", server.addresses, strict=True):
            assert isinstance(address, trionet.TCPAddress)
            binds[name] = address.port
            handler.binds[address.port] = name
        frontends = {name: free_port() for name in ("v1", "v2", "v2ssl", "ssl", "tls")}
        files = {"pem": tmp_path / "haproxy.pem", "ca": tmp_path / "ca.pem"}
        tls_cert.private_key_and_cert_chain_pem.write_to_path(str(files["pem"]))
        tls_ca.cert_pem.write_to_path(str(files["ca"]))
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(binds, frontends, files))
        log = tmp_path / "haproxy.log"
        with log.open("wb") as out:
            process = await trio.lowlevel.open_process(
                [program, "-f", str(config), "-db"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        running = Balanced(server, handler, frontends, process, log)

        def ready() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"haproxy exited ({process.returncode}):\n{running.output()}")
            if os.path.exists("/proc/net/tcp"):
                return set(frontends.values()) <= listening_ports()
            return all(handler.checks(bind) for bind in "ABC")  # it checks: it listens

        await wait_until(ready, timeout=10)
        return running

    try:
        yield start
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                if process.returncode is None:
                    process.kill()
                with trio.move_on_after(5):
                    await process.wait()


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("trionet") and r.levelno >= logging.ERROR
    ]
    assert errors == []


async def echo(conn: trionet.Connection, data: bytes) -> bytes:
    await conn.send_all(data + b"\n")
    return await conn.receive_line()


def tcp(address: trionet.Address | None) -> trionet.TCPAddress:
    assert isinstance(address, trionet.TCPAddress)
    return address


# ----------------------------------------------------------------------


async def test_a_client_shows_up_as_itself_through_send_proxy_and_send_proxy_v2(
    balanced: StartBalanced, caplog: pytest.LogCaptureFixture
) -> None:
    lb = await balanced()
    with trio.fail_after(15):
        for frontend, bind, version in (("v1", "A", 1), ("v2", "B", 2), ("v2ssl", "C", 2)):
            conn = await lb.connect(frontend)
            local = tcp(conn.local)
            assert local.host == CLIENT_HOST
            assert await conn.receive_line() == f"tcp://{CLIENT_HOST}:{local.port}".encode()
            assert await echo(conn, b"via " + frontend.encode()) == b"via " + frontend.encode()
            (seen,) = [s for s in lb.handler.clients() if s.bind == bind]
            assert seen.peer == local  # the client, not HAProxy
            info = seen.proxy
            assert (info.version, info.command) == (version, "PROXY")
            assert info.client == local
            assert info.destination == trionet.TCPAddress(HAPROXY_ADDRESS, lb.frontends[frontend])
            source = tcp(info.source)
            assert source.host == HAPROXY_ADDRESS and source.port != local.port
            if frontend == "v1":
                assert not info.has_tlvs
            elif frontend == "v2":
                assert info.unique_id == f"{CLIENT_HOST}:{local.port}".encode()
                assert info.ssl is None
            else:
                assert info.ssl is not None and not info.ssl.tls  # a plain client
                assert not info.ssl.client_certificate
            await conn.aclose()
    assert lb.server.stats.proxy_failures == 0
    no_errors_logged(caplog)


def grew(server: trionet.Server, before: int) -> bool:
    return server.stats.rejected_access > before


async def test_an_access_policy_denying_a_client_refuses_it_through_haproxy(
    balanced: StartBalanced, caplog: pytest.LogCaptureFixture
) -> None:
    lb = await balanced(access=trionet.AccessPolicy(deny=[f"{CLIENT_HOST}/32"]))
    with trio.fail_after(15):
        for frontend in ("v1", "v2"):
            before = lb.server.stats.rejected_access
            denied = await lb.connect(frontend, CLIENT_HOST)
            with contextlib.suppress(trio.BrokenResourceError):
                await denied.send_all(b"let me in\n")
            try:
                data = await denied.receive_some()
            except trio.BrokenResourceError:  # reset
                data = b""
            assert data == b""
            await wait_until(functools.partial(grew, lb.server, before))
            await denied.aclose()
            allowed = await lb.connect(frontend, OTHER_HOST)
            local = tcp(allowed.local)
            assert await allowed.receive_line() == f"tcp://{OTHER_HOST}:{local.port}".encode()
            assert await echo(allowed, b"hello") == b"hello"
            await allowed.aclose()
    seen_hosts = {tcp(seen.peer).host for seen in lb.handler.clients()}
    assert seen_hosts == {OTHER_HOST}
    assert lb.server.stats.proxy_failures == 0  # refused after the header, not as PROXY
    no_errors_logged(caplog)


async def test_health_checks_reach_the_handler_only_as_local_connections(
    balanced: StartBalanced, caplog: pytest.LogCaptureFixture
) -> None:
    lb = await balanced()
    clients: set[trionet.Address] = set()
    with trio.fail_after(15):
        for frontend in ("v1", "v2", "v2ssl"):
            conn = await lb.connect(frontend)
            clients.add(conn.local)
            assert await conn.receive_line() == str(conn.local).encode()
            await conn.aclose()
        # Every backend's checks, a few times over (inter 200ms).
        await wait_until(lambda: all(len(lb.handler.checks(b)) >= 3 for b in "ABCD"), 10)
    for seen in lb.handler.seen:
        info = seen.proxy
        if seen.health_check:
            # HAProxy's own connection: the peer is HAProxy.
            assert seen.peer == info.source and tcp(seen.peer).host == HAPROXY_ADDRESS
            if seen.bind == "A":  # v1: no LOCAL; the header names the check's own connection
                assert (info.version, info.command) == (1, "PROXY")
                assert info.client == info.source
                assert info.destination == lb.server.addresses[0]
            else:
                assert (info.version, info.command) == (2, "LOCAL")
                assert info.client is None and info.destination is None
        else:
            # A connection with a client address is one of our clients, never a check.
            assert info.command == "PROXY" and seen.peer in clients
    assert len(lb.handler.clients()) == len(clients) == 3
    assert all(seen.tls is not None for seen in lb.handler.checks("D"))  # check-ssl
    assert lb.server.stats.proxy_failures == 0
    assert lb.server.stats.tls_failures == 0  # a check resetting during the tickets included
    no_errors_logged(caplog)


async def test_tls_passes_through_haproxy_and_trionet_reads_proxy_then_tls(
    balanced: StartBalanced, client_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    lb = await balanced()
    with trio.fail_after(15):
        conn = await lb.connect("tls", tls=client_tls, server_hostname="localhost")
        local = tcp(conn.local)
        assert conn.tls is not None
        assert await conn.receive_line() == f"tcp://{CLIENT_HOST}:{local.port}".encode()
        assert await echo(conn, b"end to end") == b"end to end"
        await conn.aclose()
    (seen,) = [s for s in lb.handler.clients() if s.bind == "D"]
    assert seen.tls is not None and seen.tls.server_name == "localhost"
    assert seen.peer == local
    assert seen.proxy.version == 2 and tcp(seen.proxy.source).host == HAPROXY_ADDRESS
    assert lb.server.stats.proxy_failures == 0
    no_errors_logged(caplog)


async def test_send_proxy_v2_ssl_describes_the_clients_tls_to_haproxy(
    balanced: StartBalanced,
    tls_ca: trustme.CA,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    lb = await balanced()
    tls_ca.issue_cert("client.example", common_name=CLIENT_CN).configure_cert(client_tls)
    with trio.fail_after(15):
        conn = await lb.connect("ssl", tls=client_tls, server_hostname="localhost")
        assert conn.tls is not None
        local = tcp(conn.local)
        assert await conn.receive_line() == f"tcp://{CLIENT_HOST}:{local.port}".encode()
        assert await echo(conn, b"terminated") == b"terminated"
        version, cipher = conn.tls.version, conn.tls.cipher
        await conn.aclose()
    (seen,) = [s for s in lb.handler.clients() if s.bind == "C"]
    assert seen.tls is None  # HAProxy terminated TLS: trionet's side is plain
    assert seen.peer == local
    info = seen.proxy
    assert info.authority == "localhost"  # the client's SNI
    tls = info.ssl
    assert tls is not None
    assert tls.tls and tls.client_certificate and tls.certificate_verified
    assert tls.version == version
    assert tls.cipher == cipher
    assert tls.common_name == CLIENT_CN
    assert tls.signature_algorithm and tls.key_algorithm
    assert lb.server.stats.proxy_failures == 0
    no_errors_logged(caplog)


def test_haproxy_version_is_reported() -> None:
    # Which HAProxy these tests ran against, in the test log (and a sanity
    # check that the binary runs at all).
    program = require_program("haproxy")
    result = subprocess.run([program, "-v"], capture_output=True, text=True, timeout=10, check=True)
    assert result.stdout.startswith("HAProxy version ")
    print(result.stdout.splitlines()[0])
