"""The command line's TLS flags, against real peers (``openssl s_client``, socat).

``trionet serve ... --tls-cert F --tls-key F`` and ``trionet connect --tls
[--ca F] [--server-name N]``, with certificates made by trustme in the test.
Subprocesses are waited for by their output lines, never by sleeps.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
import trustme
from cliproc import TIMEOUT, CLIProcess, Start, assert_one_error_line, run_main
from conftest import require_program

import trionet

LOCAL = "tcp://127.0.0.1:0"


@pytest.fixture
def pem(tmp_path: Path, tls_ca: trustme.CA, tls_cert: trustme.LeafCert) -> dict[str, str]:
    """The session CA and certificate as files: ca, cert (the chain) and key."""
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    tls_ca.cert_pem.write_to_path(files["ca"])
    tls_cert.private_key_pem.write_to_path(files["key"])
    for i, blob in enumerate(tls_cert.cert_chain_pems):
        blob.write_to_path(files["cert"], append=i > 0)
    return {name: str(path) for name, path in files.items()}


def tls_serve(cli: Start, pem: dict[str, str], *extra: str) -> tuple[CLIProcess, int]:
    server = cli(
        "serve", *extra, "--bind", LOCAL, "--tls-cert", pem["cert"], "--tls-key", pem["key"]
    )
    return server, server.port()


def stats_of(output: str) -> dict[str, int]:
    for line in output.splitlines():
        if line.startswith("stats: "):
            return {k: int(v) for k, v in (item.split("=") for item in line[7:].split())}
    raise AssertionError(output)


def test_openssl_s_client_round_trips_through_serve_echo(cli: Start, pem: dict[str, str]) -> None:
    openssl = require_program("openssl")
    server, port = tls_serve(cli, pem, "echo")
    client = subprocess.Popen(
        [openssl, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-CAfile", pem["ca"], "-verify_return_error", "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert client.stdin is not None and client.stdout is not None
        for line in (b"hello over TLS\n", b"second line\n"):
            client.stdin.write(line)
            client.stdin.flush()
            assert client.stdout.readline() == line
    finally:
        client.kill()
        client.wait(TIMEOUT)
        for stream in (client.stdin, client.stdout, client.stderr):
            if stream is not None:
                stream.close()
    rc, out, err = server.stop()
    assert rc == 0, err
    stats = stats_of(out)
    assert stats["handler_errors"] == 0 and stats["tls_failures"] == 0


def test_trionet_connect_round_trips_through_serve_echo(
    cli: Start, pem: dict[str, str], client_tls: ssl.SSLContext
) -> None:
    server, port = tls_serve(cli, pem, "echo")

    async def talk() -> trionet.TLSInfo | None:
        with trio.fail_after(TIMEOUT):
            async with await trionet.connect(
                f"tcp://127.0.0.1:{port}", tls=client_tls, server_hostname="localhost"
            ) as conn:
                await conn.send_all(b"ping\n")
                assert await conn.receive_line() == b"ping"
                return conn.tls

    info = trio.run(talk)
    assert info is not None and info.version.startswith("TLSv1.")
    assert info.server_name == "localhost"
    rc, out, err = server.stop()
    assert rc == 0, err
    assert stats_of(out)["bytes_received"] == len(b"ping\n")  # application bytes


def test_cli_connect_tls_round_trips_and_ends_when_the_server_closes(
    cli: Start, pem: dict[str, str]
) -> None:
    server, port = tls_serve(cli, pem, "echo")
    client = cli(
        "connect", f"tcp://127.0.0.1:{port}", "--tls", "--ca", pem["ca"],
        "--server-name", "localhost", stdin=subprocess.PIPE,
    )  # fmt: skip
    stdin = client.popen.stdin
    assert stdin is not None
    stdin.write(b"one\n")
    stdin.flush()
    assert client.line() == "one\n"
    # The end of stdin does not end a TLS session (no half-close): the
    # client keeps reading until the server closes -- here, its drain.
    stdin.close()
    assert client.popen.poll() is None
    rc, _out, err = server.stop()
    assert rc == 0, err
    rc, out, err = client.finish()
    assert (rc, out, err) == (0, "", "")


def test_cli_connect_tls_to_daytime_prints_the_line_and_exits(
    cli: Start, pem: dict[str, str]
) -> None:
    server, port = tls_serve(cli, pem, "daytime")
    client = cli("connect", f"tcp://127.0.0.1:{port}", "--tls", "--ca", pem["ca"])
    rc, out, err = client.finish()
    assert rc == 0, err
    assert out.endswith("\r\n") and len(out.splitlines()) == 1
    rc, out, err = server.stop()
    assert rc == 0, err
    assert stats_of(out)["handler_errors"] == 0  # daytime does not half-close TLS
    assert "ERROR" not in err


def test_a_certificate_the_client_cannot_verify_is_one_error_line(
    cli: Start, pem: dict[str, str]
) -> None:
    _server, port = tls_serve(cli, pem, "echo")
    client = cli(
        "connect", f"tcp://127.0.0.1:{port}", "--tls", "--ca", pem["ca"],
        "--server-name", "example.com",
    )  # fmt: skip
    rc, out, err = client.finish()
    assert (rc, out) == (1, "")
    assert_one_error_line(err, "TLS handshake", "certificate verify failed", "example.com")


def test_plain_text_to_a_tls_serve_is_a_tls_failure_not_a_handler_error(
    cli: Start, pem: dict[str, str]
) -> None:
    server, port = tls_serve(cli, pem, "echo")
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        # The server answers garbage with a TLS alert (or nothing) and closes.
        while sock.recv(4096):
            pass
    rc, out, err = server.stop()
    assert rc == 0, err
    stats = stats_of(out)
    assert (stats["tls_failures"], stats["handler_errors"]) == (1, 0)
    assert "ERROR" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["serve", "echo", "--tls-cert", "/nonexistent.pem"],
         ["--tls-cert", "/nonexistent.pem", "No such file"]),
        (["serve", "echo", "--tls-key", "KEY"], ["--tls-key needs --tls-cert"]),
        (["serve", "echo", "--tls-client-ca", "CA"], ["--tls-client-ca needs --tls-cert"]),
        (["serve", "echo", "--handshake-timeout", "3"], ["--handshake-timeout needs --tls-cert"]),
        (["serve", "echo", "--handshake-timeout", "0"], ["--handshake-timeout", "> 0"]),
        (["serve", "echo", "--handshake-timeout", "nan"], ["--handshake-timeout"]),
        (["connect", "tcp://127.0.0.1:1", "--ca", "CA"], ["--ca needs --tls"]),
        (["connect", "tcp://127.0.0.1:1", "--server-name", "x"], ["--server-name needs --tls"]),
        (["connect", "tcp://127.0.0.1:1", "--tls", "--ca", "/nonexistent.pem"],
         ["--ca", "/nonexistent.pem"]),
    ],
)  # fmt: skip
def test_tls_usage_errors_are_one_line_and_exit_2(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, *fragments)


def test_a_key_that_does_not_match_its_certificate_is_a_usage_error(
    tmp_path: Path, pem: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    other = trustme.CA().issue_cert("localhost")
    other_key = tmp_path / "other.key"
    other.private_key_pem.write_to_path(other_key)
    assert run_main(["serve", "echo", "--tls-cert", pem["cert"], "--tls-key", str(other_key)]) == 2
    assert_one_error_line(capsys.readouterr().err, "--tls-cert/--tls-key", "does not match")
    # A key given as the certificate: not PEM certificates.
    assert run_main(["serve", "echo", "--tls-cert", pem["key"]]) == 2
    assert_one_error_line(capsys.readouterr().err, "--tls-cert", "not a PEM certificate chain")


def test_client_certificates_are_required_with_tls_client_ca(
    cli: Start, pem: dict[str, str], tls_ca: trustme.CA, client_tls: ssl.SSLContext
) -> None:
    server, port = tls_serve(cli, pem, "echo", "--tls-client-ca", pem["ca"])

    async def talk(ctx: ssl.SSLContext) -> bytes:
        with trio.fail_after(TIMEOUT):
            async with await trionet.connect(
                f"tcp://127.0.0.1:{port}", tls=ctx, server_hostname="localhost"
            ) as conn:
                await conn.send_all(b"who\n")
                return await conn.receive_some()

    # Without a certificate: TLS 1.3 completes the client's side of the
    # handshake, then the server's alert arrives as the first read fails.
    with pytest.raises(trio.BrokenResourceError):
        trio.run(talk, client_tls)
    tls_ca.issue_cert("client@example.com").configure_cert(client_tls)
    assert trio.run(talk, client_tls) == b"who\n"
    rc, out, err = server.stop(signal.SIGTERM)
    assert rc == 0, err
    assert stats_of(out)["tls_failures"] == 1
