"""The ``trionet`` command line: argument handling in-process, behaviour in subprocesses.

Subprocess tests run ``python -m trionet ...``, wait for the printed
``listening on ...`` line (never a sleep), bind port 0 and parse the port,
bound every wait with a timeout, and kill whatever is left in teardown.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cliproc import TIMEOUT, Start, assert_one_error_line, run_main
from conftest import require_program

import trionet
from trionet import services
from trionet._cli import (
    DEFAULT_BIND,
    CLIError,
    bind_specs,
    build_parser,
    main,
    resolve_handler,
    server_options,
)

LOCAL = "tcp://127.0.0.1:0"


def socat(*args: str, data: bytes = b"") -> bytes:
    """Run socat with ``data`` on stdin; its stdout (it must exit 0 within TIMEOUT)."""
    result = subprocess.run(
        [require_program("socat"), *args], input=data, capture_output=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def stats_of(output: str) -> dict[str, int]:
    match = re.search(r"^stats: (.*)$", output, re.M)
    assert match, output
    return {k: int(v) for k, v in (item.split("=") for item in match.group(1).split())}


def report_of(output: str) -> dict[str, str]:
    match = re.search(r"^shutdown: (.*)$", output, re.M)
    assert match, output
    return dict(item.split("=") for item in match.group(1).split())


def closed_port() -> socket.socket:
    """A bound but not listening socket: connecting to its port is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


HANDLERS = textwrap.dedent(
    """
    import trio

    async def ack_then_wait(conn):
        line = await conn.receive_line()
        await conn.send_all(b"ack\\n")
        await conn.draining.wait()
        await conn.send_all(b"bye " + line + b"\\n")

    async def stubborn(conn):
        await conn.send_all(b"ack\\n")
        await trio.sleep_forever()

    class Nested:
        async def handle(conn):
            await conn.send_all(b"nested\\n")

    not_callable = 42
    """
)


@pytest.fixture
def handlers_dir(tmp_path: Path) -> Path:
    (tmp_path / "cli_test_handlers.py").write_text(HANDLERS)
    return tmp_path


################################################################
# In-process: parsing, options, handler resolution, errors
################################################################


def test_defaults() -> None:
    args = build_parser().parse_args(["serve", "echo"])
    assert bind_specs(args) == [DEFAULT_BIND] == ["tcp://127.0.0.1:7007"]
    assert args.log_level == "info"
    assert args.grace == 10.0
    options = server_options(args)
    assert options["access"] is None
    assert options["max_connections"] is None
    assert trionet.ServerConfig(**options) == trionet.ServerConfig()
    connect_args = build_parser().parse_args(["connect", "tcp://127.0.0.1:1"])
    assert connect_args.log_level == "warning"
    assert connect_args.timeout is None
    assert connect_args.local_address is None


def test_every_serve_flag_reaches_the_server_options() -> None:
    args = build_parser().parse_args(
        [
            "serve", "chargen",
            "--bind", "tcp://127.0.0.1:0", "--bind", "unix:/tmp/x.sock",
            "--backlog", "17", "--grace", "2.5", "--log-level", "debug",
            "--allow", "127.0.0.0/8", "--allow", "::1/128", "--deny", "127.0.0.9/32",
            "--max-connections", "50", "--max-per-host", "3",
            "--idle-timeout", "30", "--unix-mode", "660",
        ]
    )  # fmt: skip
    assert bind_specs(args) == ["tcp://127.0.0.1:0", "unix:/tmp/x.sock"]
    assert args.log_level == "debug"
    options = server_options(args)
    config = trionet.ServerConfig(**options)
    assert config.backlog == 17
    assert config.shutdown_grace == 2.5
    assert config.max_connections == 50
    assert config.max_connections_per_host == 3
    assert config.idle_timeout == 30.0
    assert config.unix_mode == 0o660
    policy = config.access
    assert isinstance(policy, trionet.AccessPolicy)
    assert policy.allows(trionet.TCPAddress("127.0.0.1", 1))
    assert policy.allows(trionet.TCPAddress("::1", 1))
    assert not policy.allows(trionet.TCPAddress("127.0.0.9", 1))
    assert not policy.allows(trionet.TCPAddress("10.0.0.1", 1))


def test_reuse_port_flag_reaches_the_server_and_the_listener() -> None:
    assert "reuse_port" not in server_options(build_parser().parse_args(["serve", "echo"]))
    args = build_parser().parse_args(["serve", "echo", "--reuse-port"])
    assert trionet.ServerConfig(**server_options(args)).reuse_port is True


async def test_two_cli_style_servers_share_a_port_with_reuse_port() -> None:
    options = server_options(build_parser().parse_args(["serve", "echo", "--reuse-port"]))
    async with trionet.open_server(_noop, "tcp://127.0.0.1:0", **options) as first:
        address = first.addresses[0]
        async with trionet.open_server(_noop, address, **options) as second:
            assert second.addresses == [address]


async def _noop(conn: trionet.Connection) -> None:
    await conn.aclose()


def test_deny_alone_admits_everyone_else() -> None:
    args = build_parser().parse_args(["serve", "echo", "--deny", "10.0.0.0/8"])
    policy = server_options(args)["access"]
    assert policy == trionet.AccessPolicy(allow=None, deny=["10.0.0.0/8"])
    assert policy.allows(trionet.TCPAddress("192.0.2.1", 1))
    assert not policy.allows(trionet.TCPAddress("10.1.2.3", 1))


def test_close_linger_reaches_serve_and_connect() -> None:
    args = build_parser().parse_args(["serve", "echo", "--close-linger", "0.5"])
    assert server_options(args)["close_linger"] == 0.5
    assert "close_linger" not in server_options(build_parser().parse_args(["serve", "echo"]))
    args = build_parser().parse_args(["connect", "tcp://127.0.0.1:7", "--close-linger", "0"])
    assert args.close_linger == 0.0


def test_inf_means_no_limit_where_the_library_says_so() -> None:
    args = build_parser().parse_args(["serve", "echo", "--grace", "inf", "--idle-timeout", "inf"])
    assert args.grace == math.inf
    options = server_options(args)
    assert trionet.ServerConfig(**options).idle_timeout is None  # "no limit"
    args = build_parser().parse_args(["connect", "tcp://127.0.0.1:7", "--timeout", "inf"])
    assert args.timeout == math.inf


def test_unix_mode_accepts_0o_prefix() -> None:
    args = build_parser().parse_args(["serve", "echo", "--unix-mode", "0o600"])
    assert server_options(args)["unix_mode"] == 0o600


def test_builtin_and_module_handlers_resolve(
    handlers_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("echo", "discard", "daytime", "chargen"):
        assert resolve_handler(name) is services.SERVICES[name]
    monkeypatch.syspath_prepend(str(handlers_dir))
    module = __import__("cli_test_handlers")
    assert resolve_handler("cli_test_handlers:stubborn") is module.stubborn
    assert resolve_handler("cli_test_handlers:Nested.handle") is module.Nested.handle
    assert resolve_handler("trionet.services:echo") is services.echo


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        ([], ["required: COMMAND"]),
        (["serve"], ["required: HANDLER"]),
        (["frobnicate"], ["invalid choice: 'frobnicate'"]),
        (["serve", "echo", "--bind", "127.0.0.1:80"], ["invalid address '127.0.0.1:80'"]),
        (["serve", "echo", "--bind", "tcp://127.0.0.1"], ["a port is required"]),
        (["serve", "echo", "--bind", "tcp://[::1:80"], ["unclosed '['"]),
        (["serve", "echo", "--allow", "10.0.0.0/33"], ["invalid CIDR '10.0.0.0/33'"]),
        (["serve", "echo", "--deny", "nonsense"], ["invalid CIDR 'nonsense'"]),
        (["serve", "echo", "--max-connections", "0"], ["--max-connections must be >= 1"]),
        (["serve", "echo", "--max-per-host", "0"], ["--max-per-host must be >= 1"]),
        (
            ["serve", "echo", "--idle-timeout", "0"],
            ["--idle-timeout", "'0' is not a number of seconds > 0"],
        ),
        (["serve", "echo", "--backlog", "many"], ["--backlog", "'many' is not a whole number"]),
        (["serve", "echo", "--grace", "-1"], ["--grace", "not a number of seconds >= 0"]),
        (["serve", "echo", "--grace", "nan"], ["--grace"]),
        (["serve", "echo", "--unix-mode", "999"], ["--unix-mode", "not an octal mode"]),
        (
            ["serve", "echo", "--bind", "unix:@x", "--unix-mode", "600"],
            ["--unix-mode=0o600 cannot apply to the abstract name unix:@x"],
        ),
        (["serve", "echo", "--log-level", "loud"], ["--log-level", "invalid choice"]),
        (["serve", "ekko"], ["unknown service 'ekko'", "echo, discard, daytime, chargen"]),
        (["serve", "no_such_module_xyz:handler"], ["no module named 'no_such_module_xyz'"]),
        (["serve", "trionet.services:nothing"], ["has no attribute 'nothing'"]),
        (["serve", "trionet.services:SERVICES"], ["not a handler"]),
        (["serve", "json:dumps"], ["'json:dumps' is not an async function"]),
        (["serve", "trionet.services:daytime_line"], ["is not an async function"]),
        (["serve", "echo", "--close-linger", "-1"], ["--close-linger", "'-1'"]),
        (["serve", "echo", "--close-linger", "nan"], ["--close-linger"]),
        (["connect", "tcp://127.0.0.1:7", "--close-linger", "x"], ["--close-linger", "'x'"]),
        (["serve", "json:"], ["unknown service 'json:'"]),
        (["connect"], ["required: TARGET"]),
        (["connect", "127.0.0.1:7"], ["invalid address '127.0.0.1:7'"]),
        (["connect", "tcp://127.0.0.1:7", "--timeout", "soon"], ["--timeout"]),
        (["connect", "tcp://127.0.0.1:7", "--timeout", "0"], ["--timeout", "'0'", "> 0"]),
        (["connect", "tcp://127.0.0.1:7", "--timeout", "-1"], ["--timeout", "'-1'"]),
        (["connect", "tcp://127.0.0.1:7", "--timeout", "nan"], ["--timeout", "'nan'"]),
        (
            ["connect", "tcp://127.0.0.1:7", "--local-address", "::1"],
            ["local address ::1 and target 127.0.0.1 are of different address families"],
        ),
        (["connect", "tcp://127.0.0.1:7", "--local-address", "nope"], ["'nope'"]),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, *fragments)


@pytest.mark.parametrize("error", [ValueError("bad value"), TypeError("bad type")])
def test_connect_argument_errors_are_usage_errors(
    error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Whatever connect's argument checks refuse -- not only the cases argparse
    # catches -- is one usage line and exit 2, before any I/O.
    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("trionet._cli._connect.make_plan", refuse)
    assert run_main(["connect", "tcp://127.0.0.1:7", "--timeout", "5"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, str(error))


@pytest.mark.parametrize(
    "error",
    [ValueError("bad value"), TypeError("bad type"), trionet.LocalProtocolError("bad binds")],
)
def test_serve_configuration_errors_are_usage_errors(
    error: Exception, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Whatever serve's own pre-I/O checks refuse -- not only the combinations
    # known today -- is one usage line and exit 2, before trio.run.
    def refuse(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr("trionet._cli._serve.check_serve_config", refuse)
    assert run_main(["serve", "echo", "--bind", LOCAL]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, str(error))


def test_an_unexpected_error_from_the_checks_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("trionet._cli._serve.check_serve_config", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["serve", "echo", "--bind", LOCAL])


def test_serve_configuration_is_checked_before_the_handler_module_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The module raises on import (exit 1 if it were imported): the bad
    # combination is reported first, and the user's code never runs.
    (tmp_path / "cli_never_imported.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["serve", "cli_never_imported:handler", "--bind", "unix:@x", "--unix-mode", "600"]
    assert run_main(argv) == 2
    _out, err = capsys.readouterr()
    assert_one_error_line(err, "--unix-mode", "abstract name unix:@x")
    assert "cli_never_imported" not in sys.modules


def test_handler_module_that_raises_on_import_is_a_runtime_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cli_broken_module.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run_main(["serve", "cli_broken_module:handler"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_error_line(err, "'cli_broken_module'", "ZeroDivisionError", "--log-level debug")


def test_a_missing_module_inside_the_handler_module_is_a_runtime_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The user's module exists but imports something that does not: that is
    # the module's bug (exit 1), not a mistyped MODULE (exit 2).
    (tmp_path / "cli_bad_import.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run_main(["serve", "cli_bad_import:handler"]) == 1
    _out, err = capsys.readouterr()
    assert_one_error_line(err, "ModuleNotFoundError", "no_such_dependency_xyz")


def test_cli_error_carries_its_exit_code() -> None:
    assert CLIError("x").exit_code == 1
    assert CLIError("x", 2).exit_code == 2


def test_version_and_console_script(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"trionet {trionet.__version__}"
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="trionet")
    # The console script is the launcher, which runs the command line's main
    # (see test_ctrl_c_while_the_command_imports_trio_exits_130_quietly).
    assert script.value == "trionet._launch:main"
    assert script.load() is trionet._launch.main


################################################################
# serve, in a subprocess
################################################################


def test_serve_echo_answers_socat_then_drains_on_sigterm(cli: Start) -> None:
    server = cli("serve", "echo", "--bind", LOCAL)
    port = server.port()
    assert socat("-", f"TCP:127.0.0.1:{port}", data=b"hello, trionet\n") == b"hello, trionet\n"
    rc, out, err = server.stop(signal.SIGTERM)
    assert rc == 0, err
    stats = stats_of(out)
    assert stats["accepted"] == 1
    assert stats["closed"] == 1
    assert stats["bytes_received"] == stats["bytes_sent"] == len(b"hello, trionet\n")
    assert stats["handler_errors"] == 0
    assert report_of(out)["cancelled"] == "0"
    assert "received SIGTERM: draining" in err  # --log-level info is the default


def test_serve_discard_never_answers(cli: Start) -> None:
    server = cli("serve", "discard", "--bind", LOCAL)
    port = server.port()
    assert socat("-", f"TCP:127.0.0.1:{port}", data=b"into the void\n" * 100) == b""
    rc, out, _err = server.stop()
    assert rc == 0
    stats = stats_of(out)
    assert stats["bytes_received"] == len(b"into the void\n") * 100
    assert stats["bytes_sent"] == 0


def test_serve_daytime_sends_one_crlf_line_then_eof(cli: Start) -> None:
    server = cli("serve", "daytime", "--bind", LOCAL)
    port = server.port()
    # socat -u: read only; it exits when the server's EOF arrives.
    data = socat("-u", f"TCP:127.0.0.1:{port}", "STDOUT")
    assert re.fullmatch(
        rb"[A-Z][a-z]+day, [A-Z][a-z]+ \d\d, \d{4} \d\d:\d\d:\d\d-[ -~]*\r\n", data
    ), data
    rc, _out, _err = server.stop()
    assert rc == 0


def test_serve_chargen_streams_rfc_864_lines(cli: Start) -> None:
    server = cli("serve", "chargen", "--bind", LOCAL)
    port = server.port()
    n_lines = 200
    reader = subprocess.Popen(
        [require_program("socat"), "-u", f"TCP:127.0.0.1:{port}", "STDOUT"],
        stdout=subprocess.PIPE,
    )
    watchdog = threading.Timer(TIMEOUT, reader.kill)
    watchdog.start()
    try:
        assert reader.stdout is not None
        data = reader.stdout.read(n_lines * 74)
    finally:
        watchdog.cancel()
        reader.kill()
        reader.wait(TIMEOUT)
        assert reader.stdout is not None
        reader.stdout.close()
    printable = bytes(range(0x20, 0x7F))
    assert len(data) == n_lines * 74
    for i in range(n_lines):
        line = data[i * 74 : (i + 1) * 74]
        assert line == bytes(printable[(i + j) % 95] for j in range(72)) + b"\r\n", (i, line)
    rc, out, _err = server.stop()
    assert rc == 0
    stats = stats_of(out)
    assert stats["accepted"] == 1
    assert stats["handler_errors"] == 0  # the client going away is chargen's normal end


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_drains_and_the_in_flight_client_gets_its_reply(
    cli: Start, handlers_dir: Path, sig: int
) -> None:
    server = cli("serve", "cli_test_handlers:ack_then_wait", "--bind", LOCAL, cwd=handlers_dir)
    port = server.port()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        client.sendall(b"in flight\n")
        reader = client.makefile("rb")
        assert reader.readline() == b"ack\n"  # the handler is now waiting for the drain
        server.popen.send_signal(sig)
        assert reader.readline() == b"bye in flight\n"
        assert reader.read() == b""  # then the server closes
    rc, out, err = server.finish()
    assert rc == 0, err
    assert report_of(out)["finished"] == "1"
    assert report_of(out)["cancelled"] == "0"
    stats = stats_of(out)
    assert stats["accepted"] == stats["closed"] == 1
    assert stats["handler_errors"] == 0
    assert f"received {signal.Signals(sig).name}: draining" in err


def test_grace_flag_bounds_the_drain(cli: Start, handlers_dir: Path) -> None:
    server = cli(
        "serve", "cli_test_handlers:stubborn", "--bind", LOCAL, "--grace", "0.2", cwd=handlers_dir
    )
    port = server.port()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        reader = client.makefile("rb")
        assert reader.readline() == b"ack\n"
        rc, out, err = server.stop(signal.SIGTERM)
        assert reader.read() == b""  # cancelled, and its connection closed
    assert rc == 0, err
    report = report_of(out)
    assert report["cancelled"] == "1"
    assert report["finished"] == "0"
    assert 0.2 <= float(report["elapsed"].rstrip("s")) < 5


def test_deny_flag_resets_the_peer_before_any_handler_runs(cli: Start) -> None:
    server = cli("serve", "daytime", "--bind", LOCAL, "--deny", "127.0.0.1/32")
    port = server.port()
    # The server's RST can arrive while connect() is still returning, so the
    # reset may surface from create_connection itself as well as from recv.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            data = client.recv(1024)
    except ConnectionResetError:
        data = b""
    assert data == b""  # daytime would have answered: no handler ran
    rc, out, _err = server.stop()
    assert rc == 0
    stats = stats_of(out)
    assert stats["rejected_access"] == 1
    assert stats["accepted"] == 0


def test_max_per_host_flag_limits_one_peer(cli: Start, handlers_dir: Path) -> None:
    server = cli(
        "serve", "cli_test_handlers:stubborn", "--bind", LOCAL, "--max-per-host", "1",
        "--grace", "0", cwd=handlers_dir,
    )  # fmt: skip
    port = server.port()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as first:
        assert first.makefile("rb").readline() == b"ack\n"
        # The RST may surface from create_connection itself or from recv.
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as second:
                data = second.recv(1024)
        except ConnectionResetError:
            data = b""
        assert data == b""
        rc, out, _err = server.stop()
    assert rc == 0
    stats = stats_of(out)
    assert stats["accepted"] == 1
    assert stats["rejected_limit"] == 1


def test_unix_bind_with_mode(cli: Start, unused_unix_path: str) -> None:
    server = cli("serve", "echo", "--bind", f"unix:{unused_unix_path}", "--unix-mode", "600")
    (address,) = server.listening()
    assert address == trionet.UnixAddress(unused_unix_path)
    assert stat.S_IMODE(os.stat(unused_unix_path).st_mode) == 0o600
    assert socat("-", f"UNIX-CONNECT:{unused_unix_path}", data=b"over unix\n") == b"over unix\n"
    rc, _out, _err = server.stop()
    assert rc == 0
    assert not os.path.exists(unused_unix_path)  # the server removed its socket file


def test_several_binds_are_all_printed(cli: Start) -> None:
    server = cli("serve", "echo", "--bind", LOCAL, "--bind", LOCAL)
    first, second = server.listening(2)
    assert isinstance(first, trionet.TCPAddress) and isinstance(second, trionet.TCPAddress)
    assert first.port != second.port
    for address in (first, second):
        assert socat("-", f"TCP:127.0.0.1:{address.port}", data=b"x\n") == b"x\n"
    rc, out, _err = server.stop()
    assert rc == 0
    assert stats_of(out)["accepted"] == 2


def test_bad_bind_spec_in_a_subprocess(cli: Start) -> None:
    rc, out, err = cli("serve", "echo", "--bind", "tcp://127.0.0.1:99999").finish()
    assert rc == 2
    assert out == ""
    assert_one_error_line(err, "'tcp://127.0.0.1:99999'", "out of range")


def test_unix_mode_with_an_abstract_name_in_a_subprocess(cli: Start) -> None:
    # Refused by the library when it listens -- inside trio.run, where it
    # used to come out as a traceback and exit 1.
    rc, out, err = cli("serve", "echo", "--bind", "unix:@x", "--unix-mode", "600").finish()
    assert rc == 2
    assert out == ""
    assert_one_error_line(err, "--unix-mode=0o600", "abstract name unix:@x")


def test_address_in_use_in_a_subprocess(cli: Start) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out, err = cli("serve", "echo", "--bind", f"tcp://127.0.0.1:{port}").finish()
    assert rc == 1
    assert out == ""
    assert_one_error_line(err, f"tcp://127.0.0.1:{port}", "Address already in use")


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_as_an_idle_server_drains_still_exits_0(cli: Start, second: int) -> None:
    # An idle server drains in well under a millisecond, so a second signal
    # right behind the first lands as the drain ends, as the report prints,
    # as trio.run returns or as the interpreter shuts down.  It used to end
    # such a run with KeyboardInterrupt (130), death by the signal (-2,
    # -15) or a traceback, depending on the instant.  Three timings, each
    # run five times: back to back; as soon as the drain is logged; as soon
    # as the report is out.
    for run in range(15):
        server = cli("serve", "echo", "--bind", LOCAL)
        server.port()
        server.popen.send_signal(signal.SIGINT)
        seen = ""
        if run % 3 == 1:
            line = server.err_line()
            assert line is not None and "received SIGINT: draining" in line, line
        elif run % 3 == 2:
            seen = server.line() or ""
            assert seen.startswith("shutdown: "), seen
        server.popen.send_signal(second)
        rc, out, err = server.finish()
        assert rc == 0, (run, rc, err)
        assert "Traceback" not in err
        report_of(seen + out)
        stats_of(out)


# Run trionet._cli.main() with "main" on stderr as its first action (inside
# its build_parser call, patched where main() looks it up), so that a test
# can signal it at a known point of main() -- the import of trionet before
# it is out of main()'s reach.
MAIN_WITH_MARKER = textwrap.dedent(
    """
    import sys
    import trionet._cli
    import trionet._cli._main as where_main_looks

    build_parser = where_main_looks.build_parser

    def marked_build_parser():
        print("main", file=sys.stderr, flush=True)
        return build_parser()

    where_main_looks.build_parser = marked_build_parser
    sys.exit(trionet._cli.main(sys.argv[1:]))
    """
)


def test_ctrl_c_anywhere_in_start_up_exits_130_quietly(cli: Start) -> None:
    # SIGINT at a spread of instants from main()'s first action on: parsing,
    # checks, trio.run starting, the listener opening, the drain's handlers
    # going in, just after "listening on".  Each run either is interrupted
    # -- 130, not a word on stdout or stderr -- or, when the signal came
    # after the server was ready, drains and exits 0.  Never a traceback, a
    # warning, a hang, or "listening on" followed by 130.  (The sleeps are
    # the point of the test -- where the signal lands -- not synchronisation.)
    for run in range(30):
        proc = cli("serve", "echo", "--bind", LOCAL, invoke=("-c", MAIN_WITH_MARKER))
        assert proc.err_line() == "main\n"
        time.sleep(run * 0.00015)
        proc.popen.send_signal(signal.SIGINT)
        rc, out, err = proc.finish()
        if rc == 130:
            assert (out, err) == ("", ""), (run, out, err)
        else:
            assert rc == 0, (run, rc, err)
            assert out.startswith("listening on "), out
            report_of(out)
            assert "Traceback" not in err and "Warning" not in err, err


# The console script's own start: import trionet._launch (cheap: the package
# loads its parts lazily), then main() -- which imports the command line and,
# with it, Trio.  Here that import blocks, on a FIFO nobody writes to, until
# the test's SIGINT arrives.
LAUNCH_WITH_SLOW_TRIO = textwrap.dedent(
    """
    import sys

    import trionet._launch

    assert "trio" not in sys.modules, "importing trionet must not import Trio"

    class SlowTrio:
        def find_spec(self, name, path=None, target=None):
            if name == "trio":
                sys.stderr.write("importing trio\\n")
                sys.stderr.flush()
                with open(sys.argv[1], "rb") as f:
                    f.read()
            return None

    sys.meta_path.insert(0, SlowTrio())
    sys.exit(trionet._launch.main(sys.argv[2:]))
    """
)


def test_ctrl_c_while_the_command_imports_trio_exits_130_quietly(
    cli: Start, tmp_path: Path
) -> None:
    # Most of the command's start-up is importing Trio.  A Ctrl-C there used
    # to print a KeyboardInterrupt traceback (the import ran before main()).
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    proc = cli(str(fifo), "serve", "echo", "--bind", LOCAL, invoke=("-c", LAUNCH_WITH_SLOW_TRIO))
    assert proc.err_line() == "importing trio\n"
    proc.popen.send_signal(signal.SIGINT)
    rc, out, err = proc.finish()
    assert rc == 130, err
    assert (out, err) == ("", "")


@pytest.mark.parametrize("where", ["module body", "finalizer"])
def test_ctrl_c_while_the_handler_module_imports_exits_130_quietly(
    cli: Start, tmp_path: Path, where: str
) -> None:
    # The import blocks, opening a FIFO nobody writes to, until SIGINT.  In
    # a finalizer (__del__; importlib runs a weakref callback at the end of
    # every import) Python cannot propagate the KeyboardInterrupt: it used
    # to print "Exception ignored ... Traceback" there, drop the Ctrl-C, and
    # start the server anyway.
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)
    block = f"""
        sys.stderr.write("importing\\n")
        sys.stderr.flush()
        with open({str(fifo)!r}, "rb") as f:
            f.read()
    """
    if where == "module body":
        module = "import sys\n" + textwrap.dedent(block)
    else:
        module = (
            "import sys\n\nclass Blocker:\n    def __del__(self):"
            + textwrap.indent(textwrap.dedent(block), " " * 8)
            + "\nBlocker()  # finalized at once, during the import\n"
        )
    module += "\nasync def handle(conn):\n    pass\n"
    (tmp_path / "cli_slow_import.py").write_text(module)
    proc = cli("serve", "cli_slow_import:handle", "--bind", LOCAL, cwd=tmp_path)
    assert proc.err_line() == "importing\n"
    proc.popen.send_signal(signal.SIGINT)
    rc, out, err = proc.finish()
    assert rc == 130, err
    assert (out, err) == ("", "")


def test_default_bind_is_127_0_0_1_port_7007(cli: Start) -> None:
    # `make run` is `trionet serve echo`.  Whether or not something else
    # holds port 7007 right now, the outcome proves which address was used.
    server = cli("serve", "echo")
    first = server.line()
    if first is None:
        rc, _out, err = server.finish()
        assert rc == 1
        assert_one_error_line(err, "tcp://127.0.0.1:7007", "Address already in use")
        return
    assert first == "listening on tcp://127.0.0.1:7007\n"
    try:
        assert socat("-", "TCP:127.0.0.1:7007", data=b"make run\n") == b"make run\n"
    finally:
        rc, _out, err = server.stop()
    assert rc == 0, err


################################################################
# connect, in a subprocess
################################################################


def test_connect_round_trips_through_serve_echo(cli: Start) -> None:
    server = cli("serve", "echo", "--bind", LOCAL)
    port = server.port()
    payload = os.urandom(300_000) + b"\nlast line\n"
    result = subprocess.run(
        [sys.executable, "-m", "trionet", "connect", f"tcp://127.0.0.1:{port}"],
        input=payload,
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    assert result.stderr == b""  # --log-level warning by default: nothing to say
    rc, out, _err = server.stop()
    assert rc == 0
    assert stats_of(out)["bytes_received"] == len(payload)


def test_connect_with_empty_stdin_half_closes_at_once(cli: Start) -> None:
    server = cli("serve", "echo", "--bind", LOCAL)
    port = server.port()
    result = subprocess.run(
        [sys.executable, "-m", "trionet", "connect", f"tcp://127.0.0.1:{port}",
         "--local-address", "127.0.0.1", "--timeout", "5"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b""
    server.stop()


def test_connect_exits_when_the_peer_closes_even_with_stdin_open(cli: Start) -> None:
    server = cli("serve", "daytime", "--bind", LOCAL)
    port = server.port()
    client = cli("connect", f"tcp://127.0.0.1:{port}", stdin=subprocess.PIPE)
    # stdin stays open: only the server's close can end the command.
    rc, out, err = client.finish()
    assert rc == 0, err
    assert out.endswith("\r\n")
    assert re.fullmatch(r"[A-Z][a-z]+day, .*\r\n", out)
    server.stop()


def test_connect_refused_is_one_line_and_exit_1() -> None:
    with closed_port() as sock:
        port = sock.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "trionet", "connect", f"tcp://127.0.0.1:{port}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
        )
    assert result.returncode == 1
    assert result.stdout == b""
    assert_one_error_line(
        result.stderr.decode(), f"cannot connect to tcp://127.0.0.1:{port}", "refused"
    )


def test_connect_into_a_closed_pipe_ends_quietly(cli: Start) -> None:
    # `trionet connect ... | head -c 100`: once the reader of our stdout is
    # gone (EPIPE), the command ends quietly with status 0, like netcat.
    server = cli("serve", "chargen", "--bind", LOCAL)
    port = server.port()
    client = subprocess.Popen(
        [sys.executable, "-m", "trionet", "connect", f"tcp://127.0.0.1:{port}"],
        stdin=subprocess.PIPE,  # left open: only the closed stdout can end it
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert client.stdout is not None and client.stderr is not None
        assert len(client.stdout.read(100)) == 100  # chargen is flowing
        client.stdout.close()  # the reader goes away
        rc = client.wait(TIMEOUT)
        err = client.stderr.read().decode()
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(TIMEOUT)
        for stream in (client.stdin, client.stdout, client.stderr):
            if stream is not None:
                stream.close()
    assert rc == 0, err
    assert err == ""
    server.stop()


def test_connect_to_a_unix_socket(cli: Start, unused_unix_path: str) -> None:
    server = cli("serve", "echo", "--bind", f"unix:{unused_unix_path}")
    server.listening()
    result = subprocess.run(
        [sys.executable, "-m", "trionet", "connect", f"unix:{unused_unix_path}"],
        input=b"via unix\n",
        capture_output=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"via unix\n"
    server.stop()


def test_connect_interrupted_by_ctrl_c_exits_130(cli: Start) -> None:
    server = cli("serve", "echo", "--bind", LOCAL)
    port = server.port()
    client = cli("connect", f"tcp://127.0.0.1:{port}", stdin=subprocess.PIPE)
    assert client.popen.stdin is not None
    client.popen.stdin.write(b"are you there?\n")
    client.popen.stdin.flush()
    assert client.line() == "are you there?\n"  # connected, and copying both ways
    rc, out, err = client.stop(signal.SIGINT)
    assert rc == 130
    assert out == ""
    assert err == ""
    server.stop()
