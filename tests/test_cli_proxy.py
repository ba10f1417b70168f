"""The command line's PROXY protocol flags: ``serve --proxy-protocol --trusted-proxy CIDR``.

A real ``python -m trionet serve echo`` process, talked to over loopback by
clients that play the load balancer (a raw socket writing a header, or
``trionet.connect(proxy_header=...)``).  Subprocesses are waited for by their
output lines, never by sleeps; usage errors are checked in-process.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import trio
from cliproc import TIMEOUT, CLIProcess, Start, assert_one_error_line, run_main

import trionet
from trionet._cli._args import build_parser
from trionet._cli._binds import bind_specs
from trionet._cli._serve import check_serve, server_options

LOCAL = "tcp://127.0.0.1:0"
PROXY_FLAGS = ("--proxy-protocol", "--trusted-proxy", "127.0.0.0/8")


def proxy_serve(cli: Start, *extra: str) -> tuple[CLIProcess, int]:
    server = cli("serve", "echo", "--bind", LOCAL, *extra)
    return server, server.port()


def stats_of(output: str) -> dict[str, int]:
    for line in output.splitlines():
        if line.startswith("stats: "):
            return {k: int(v) for k, v in (item.split("=") for item in line[7:].split())}
    raise AssertionError(output)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the server ends the connection (EOF, or a reset)."""
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def echo_through_v1(port: int, payload: bytes) -> bytes:
    """A v1 header naming 203.0.113.7, then ``payload``; what came back."""
    header = f"PROXY TCP4 203.0.113.7 127.0.0.1 51000 {port}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(header + payload)  # one segment: the payload stays buffered
        sock.shutdown(socket.SHUT_WR)
        return read_to_end(sock)


def test_a_v1_header_then_data_echoes_the_data_only(cli: Start) -> None:
    server, port = proxy_serve(cli, *PROXY_FLAGS)
    assert echo_through_v1(port, b"hello\n") == b"hello\n"  # no header in the echo
    rc, out, err = server.stop()
    assert rc == 0, err
    stats = stats_of(out)
    assert stats["proxy_failures"] == 0 and stats["handler_errors"] == 0
    # The header is not application data: not counted, not echoed.
    assert (stats["bytes_received"], stats["bytes_sent"]) == (6, 6)


def test_trionet_connect_sends_v2_headers_and_health_checks_reach_the_handler(
    cli: Start,
) -> None:
    server, port = proxy_serve(cli, *PROXY_FLAGS)
    client = trionet.ProxyInfo(
        version=2,
        client=trionet.TCPAddress("2001:db8::7", 40000),
        destination=trionet.TCPAddress("2001:db8::1", 443),
        authority="api.example.test",
    )
    check = trionet.ProxyInfo(version=2, command="LOCAL")

    async def talk(header: trionet.ProxyInfo) -> bytes:
        with trio.fail_after(TIMEOUT):
            target = f"tcp://127.0.0.1:{port}"
            async with await trionet.connect(target, proxy_header=header) as conn:
                await conn.send_all(b"ping\n")
                return await conn.receive_line()

    assert trio.run(talk, client) == b"ping"
    assert trio.run(talk, check) == b"ping"  # a LOCAL connection is served too
    rc, out, err = server.stop()
    assert rc == 0, err
    stats = stats_of(out)
    assert (stats["accepted"], stats["proxy_failures"], stats["handler_errors"]) == (2, 0, 0)


def test_garbage_closes_that_connection_and_the_server_keeps_serving(cli: Start) -> None:
    server, port = proxy_serve(cli, *PROXY_FLAGS)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert read_to_end(sock) == b""  # closed, nothing echoed
    assert echo_through_v1(port, b"still here\n") == b"still here\n"
    rc, out, err = server.stop()
    assert rc == 0, err
    stats = stats_of(out)
    assert (stats["accepted"], stats["proxy_failures"], stats["stage_failures"]) == (2, 1, 1)
    assert stats["handler_errors"] == 0
    assert "Traceback" not in err and "ERROR" not in err


def test_a_source_outside_the_trusted_proxies_is_refused(cli: Start) -> None:
    server, port = proxy_serve(cli, "--proxy-protocol", "--trusted-proxy", "10.0.0.0/8")
    header = f"PROXY TCP4 203.0.113.7 127.0.0.1 51000 {port}\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
            sock.sendall(header + b"hello\n")
            assert read_to_end(sock) == b""  # reset at accept, header or not
    except (BrokenPipeError, ConnectionResetError):
        pass  # on loopback the reset can beat connect() or the send
    rc, out, err = server.stop()
    assert rc == 0, err
    stats = stats_of(out)
    assert (stats["accepted"], stats["proxy_failures"], stats["stage_failures"]) == (0, 1, 0)


def test_handshake_timeout_bounds_the_wait_for_the_header(cli: Start) -> None:
    # --handshake-timeout works with --proxy-protocol alone (no TLS).
    server, port = proxy_serve(cli, *PROXY_FLAGS, "--handshake-timeout", "0.5")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        start = time.monotonic()
        assert read_to_end(sock) == b""  # a silent client is closed at the timeout
        waited = time.monotonic() - start
    assert 0.4 <= waited < TIMEOUT
    rc, out, err = server.stop()
    assert rc == 0, err
    stats = stats_of(out)
    assert (stats["proxy_failures"], stats["stage_failures"]) == (1, 1)


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["serve", "echo", "--bind", LOCAL, "--proxy-protocol"],
         ["--proxy-protocol needs --trusted-proxy"]),
        (["serve", "echo", "--proxy-protocol"],  # the default bind is TCP too
         ["--proxy-protocol needs --trusted-proxy"]),
        (["serve", "echo", "--bind", LOCAL, "--trusted-proxy", "10.0.0.0/8"],
         ["--trusted-proxy needs --proxy-protocol"]),
        (["serve", "echo", "--bind", LOCAL, "--proxy-protocol", "--trusted-proxy", "10.0.0.0/33"],
         ["'10.0.0.0/33'", "not a CIDR"]),
        (["serve", "echo", "--bind", LOCAL, "--proxy-protocol", "--trusted-proxy", "nope"],
         ["'nope'", "not a CIDR"]),
        (["serve", "echo", "--handshake-timeout", "3"],
         ["--handshake-timeout needs", "--proxy-protocol"]),
    ],
)  # fmt: skip
def test_proxy_usage_errors_are_one_line_and_exit_2(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, *fragments)


def test_a_malformed_trusted_proxy_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "echo", "--bind", LOCAL, "--proxy-protocol", "--trusted-proxy", "10.0.0.0/33"]
    assert run_main(argv) == 2
    assert_one_error_line(capsys.readouterr().err, "--trusted-proxy", "10.0.0.0/33")


def test_the_flags_become_serve_options() -> None:
    args = build_parser().parse_args(
        ["serve", "echo", "--bind", LOCAL, "--proxy-protocol", "--trusted-proxy", "10.0.0.0/8",
         "--trusted-proxy", "::ffff:192.0.2.0/120", "--handshake-timeout", "3"]
    )  # fmt: skip
    options = server_options(args)
    assert options["proxy_protocol"] == "required"
    assert list(options["trusted_proxies"]) == ["10.0.0.0/8", "::ffff:192.0.2.0/120"]
    assert options["handshake_timeout"] == 3.0
    check_serve(bind_specs(args), options, args.grace)  # and serve() accepts them


def test_a_unix_bind_needs_no_trusted_proxy(tmp_path: Path) -> None:
    # Who may connect to a socket file is what its permissions say.
    args = build_parser().parse_args(
        ["serve", "echo", "--bind", f"unix:{tmp_path}/app.sock", "--proxy-protocol"]
    )
    options = server_options(args)
    assert options["proxy_protocol"] == "required"
    check_serve(bind_specs(args), options, args.grace)


def test_serve_help_lists_the_proxy_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "PROXY protocol" in out
    assert "--proxy-protocol" in out
    assert "--trusted-proxy CIDR" in out
