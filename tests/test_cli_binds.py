"""Per-bind roles on the command line: ``--bind``, ``--plain-bind``, ``--proxy-bind``.

One ``trionet serve`` process serving TLS on one port, plain TCP on another
and the PROXY protocol (a load balancer's port) on a third -- the shape the
chaos soak runs, and a common deployment.  A real process over loopback,
waited for by its output lines; usage errors checked in-process.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trustme
from cliproc import TIMEOUT, Start, assert_one_error_line, run_main

import trionet
from trionet._cli._args import build_parser
from trionet._cli._binds import bind_roles, bind_specs, serve_binds
from trionet._cli._serve import server_options
from trionet._workers._plan import plan_from_args

LOCAL = "tcp://127.0.0.1:0"


@pytest.fixture
def pem(tmp_path: Path, tls_ca: trustme.CA, tls_cert: trustme.LeafCert) -> dict[str, str]:
    files = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    tls_cert.private_key_pem.write_to_path(files["key"])
    for i, blob in enumerate(tls_cert.cert_chain_pems):
        blob.write_to_path(files["cert"], append=i > 0)
    return {name: str(path) for name, path in files.items()}


def roles_argv(pem: dict[str, str]) -> list[str]:
    return [
        "--tls-cert", pem["cert"], "--tls-key", pem["key"],
        "--bind", LOCAL, "--plain-bind", LOCAL, "--proxy-bind", LOCAL,
        "--trusted-proxy", "127.0.0.0/8",
    ]  # fmt: skip


def exchange(sock: socket.socket | ssl.SSLSocket, data: bytes, header: bytes = b"") -> bytes:
    sock.sendall(header + data)
    reply = b""
    while len(reply) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def check_three_roles(ports: list[int], tls_ca: trustme.CA) -> None:
    tls_port, plain_port, proxy_port = ports
    client = ssl.create_default_context()
    tls_ca.configure_trust(client)
    with (
        socket.create_connection(("127.0.0.1", tls_port), timeout=TIMEOUT) as raw,
        client.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert exchange(tls, b"over tls") == b"over tls"
    with socket.create_connection(("127.0.0.1", plain_port), timeout=TIMEOUT) as plain:
        assert exchange(plain, b"in the clear") == b"in the clear"
    header = f"PROXY TCP4 203.0.113.7 127.0.0.1 51000 {proxy_port}\r\n".encode()
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=TIMEOUT) as proxied:
        assert exchange(proxied, b"behind haproxy", header) == b"behind haproxy"
    # Plain text where TLS is served is refused there, not echoed.
    with socket.create_connection(("127.0.0.1", tls_port), timeout=TIMEOUT) as wrong:
        wrong.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            assert b"GET" not in wrong.recv(4096)
        except ConnectionResetError:
            pass


@pytest.mark.parametrize("workers", [None, 2])
def test_one_process_serves_tls_plain_and_proxy_binds(
    cli: Start, pem: dict[str, str], tls_ca: trustme.CA, workers: int | None
) -> None:
    extra = [] if workers is None else ["--workers", str(workers)]
    server = cli("serve", "echo", *roles_argv(pem), *extra)
    addresses = server.listening(3)
    ports = [a.port for a in addresses if isinstance(a, trionet.TCPAddress)]
    assert len(ports) == 3
    check_three_roles(ports, tls_ca)
    rc, out, err = server.stop()
    assert rc == 0, err
    if workers is None:
        assert "tls_failures=1" in out, out


def test_roles_become_binds_with_overrides(pem: dict[str, str]) -> None:
    args = build_parser().parse_args(["serve", "echo", *roles_argv(pem)])
    assert bind_specs(args) == [LOCAL, LOCAL, LOCAL]
    assert bind_roles(args) == ["bind", "plain-bind", "proxy-bind"]
    first, plain, proxy = serve_binds(args)
    assert first == LOCAL  # the server-wide options: TLS here
    assert isinstance(plain, trionet.Bind) and isinstance(proxy, trionet.Bind)
    assert (plain.tls, plain.proxy_protocol) == (False, "off")
    assert (proxy.tls, proxy.proxy_protocol) == (False, "required")
    assert proxy.trusted_proxies == ("127.0.0.0/8",)
    assert "proxy_protocol" not in server_options(args)  # only that bind reads headers


def test_workers_get_each_descriptor_under_its_role(pem: dict[str, str]) -> None:
    args = build_parser().parse_args(["serve", "echo", *roles_argv(pem), "--workers", "2"])
    plan = plan_from_args(args, import_handler=False)
    assert plan.roles == ("bind", "plain-bind", "proxy-bind")
    command = plan.command([5, 6, 7], 9, list(plan.roles))
    assert command[command.index("fd:5") - 1] == "--bind"
    assert command[command.index("fd:6") - 1] == "--plain-bind"
    assert command[command.index("fd:7") - 1] == "--proxy-bind"
    assert "--trusted-proxy=127.0.0.0/8" in command or "127.0.0.0/8" in command


def test_only_plain_binds_replace_the_default(cli: Start) -> None:
    server = cli("serve", "echo", "--plain-bind", LOCAL)
    (address,) = server.listening(1)
    assert isinstance(address, trionet.TCPAddress) and address.port != 7007
    rc, _out, err = server.stop()
    assert rc == 0, err


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--proxy-bind", LOCAL], ["--proxy-bind needs --trusted-proxy"]),
        (["--plain-bind", LOCAL, "--trusted-proxy", "10.0.0.0/8"],
         ["--trusted-proxy needs --proxy-protocol or --proxy-bind"]),
        (["--plain-bind", "tcp://nowhere:x"], ["nowhere:x"]),
        (["--plain-bind", LOCAL, "--handshake-timeout", "3"],
         ["--handshake-timeout needs", "--proxy-bind"]),
    ],
)  # fmt: skip
def test_role_usage_errors_are_one_line_and_exit_2(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(["serve", "echo", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, *fragments)


def test_a_unix_proxy_bind_needs_no_trusted_proxy(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "echo", "--proxy-bind", f"unix:{tmp_path}/lb.sock"])
    (bind,) = serve_binds(args)
    assert isinstance(bind, trionet.Bind) and bind.proxy_protocol == "required"
    server_options(args)  # no usage error
