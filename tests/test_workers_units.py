"""Worker processes, the sans-I/O parts: the channel's lines, the restart back-off, the plan.

Nothing here starts a process: :mod:`trionet._workers._channel` (``encode``,
``LineDecoder``, ``Channel`` over a socketpair), ``RestartPolicy``, and
``plan_from_options``/``plan_from_args`` -- what ``trionet.supervise()`` and
``trionet serve --workers N`` check before anything is opened, and which
flags a worker is given.  The processes themselves are ``test_workers.py``'s.
"""

from __future__ import annotations

import math
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

import trionet
from trionet._cli import build_parser
from trionet._cli._errors import CLIError
from trionet._workers._channel import MAX_LINE, Channel, ChannelError, LineDecoder, encode
from trionet._workers._plan import SUPERVISOR_FLAGS, WorkerPlan, plan_from_args, plan_from_options
from trionet._workers._restart import RestartPolicy

LOCAL = "tcp://127.0.0.1:0"

################################################################
# The channel: encode() and LineDecoder
################################################################


def test_encode_is_one_compact_json_line() -> None:
    assert encode({"command": "cut"}) == b'{"command":"cut"}\n'
    assert encode({"event": "ready", "pid": 7}) == b'{"event":"ready","pid":7}\n'


def test_encode_sends_an_infinite_grace_as_text() -> None:
    assert encode({"command": "drain", "grace": math.inf}) == b'{"command":"drain","grace":"inf"}\n'
    assert encode({"command": "drain", "grace": None}) == b'{"command":"drain","grace":null}\n'


def test_encode_refuses_nan() -> None:
    with pytest.raises(ValueError):
        encode({"command": "drain", "grace": math.nan})


@pytest.mark.parametrize(
    "message",
    [
        {"event": "ready", "pid": 1234},
        {"command": "drain", "grace": 2.5},
        {"command": "drain", "grace": None},
        {"event": "exit", "stats": {"accepted": 3, "closed": 3}, "shutdown": {"finished": 1}},
    ],
)
def test_decoder_round_trips_encode(message: dict[str, Any]) -> None:
    decoder = LineDecoder()
    assert decoder.feed(encode(message)) == [message]
    assert decoder.pending == 0


def test_decoder_keeps_a_partial_line_until_its_newline() -> None:
    data = encode({"event": "ready", "pid": 7}) + encode({"command": "cut"})
    decoder = LineDecoder()
    seen: list[dict[str, Any]] = []
    since_newline = 0
    for byte in data:
        out = decoder.feed(bytes([byte]))
        since_newline = 0 if byte == ord("\n") else since_newline + 1
        assert len(out) == (1 if byte == ord("\n") else 0)
        assert decoder.pending == since_newline
        seen += out
    assert seen == [{"event": "ready", "pid": 7}, {"command": "cut"}]


def test_decoder_several_messages_in_one_feed_and_a_tail() -> None:
    decoder = LineDecoder()
    out = decoder.feed(b'{"a":1}\n{"b":2}\n{"c"')
    assert out == [{"a": 1}, {"b": 2}]
    assert decoder.pending == len(b'{"c"')
    assert decoder.feed(bytearray(b":3}\n")) == [{"c": 3}]
    assert decoder.pending == 0


def test_decoder_refuses_an_unfinished_line_longer_than_max_line() -> None:
    decoder = LineDecoder(max_line=16)
    assert decoder.feed(b"x" * 16) == []  # at the limit: still waiting for its newline
    with pytest.raises(ChannelError, match="longer than 16 bytes"):
        decoder.feed(b"x")
    default = LineDecoder()
    with pytest.raises(ChannelError, match=f"longer than {MAX_LINE} bytes"):
        default.feed(b"{" * (MAX_LINE + 1))


def test_decoder_refuses_a_complete_line_longer_than_max_line() -> None:
    decoder = LineDecoder(max_line=16)
    with pytest.raises(ChannelError, match="longer than 16 bytes"):
        decoder.feed(b'{"k":"' + b"x" * 40 + b'"}\n')


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"not json\n", "not JSON"),
        (b"\n", "not JSON"),
        (b'{"event": "ready"\n', "not JSON"),
        (b"\xff\xfe\n", "not JSON"),  # not UTF-8 either
        (b"[1, 2]\n", "not a JSON object"),
        (b'"ready"\n', "not a JSON object"),
        (b"null\n", "not a JSON object"),
    ],
)
def test_decoder_refuses_what_is_not_a_message(line: bytes, problem: str) -> None:
    with pytest.raises(ChannelError, match=problem):
        LineDecoder().feed(line)


def test_decoder_error_names_the_line_but_only_its_start() -> None:
    with pytest.raises(ChannelError) as info:
        LineDecoder().feed(b"garbage " * 100 + b"\n")
    assert "garbage" in str(info.value)
    assert len(str(info.value)) < 200


################################################################
# The channel on a real socketpair
################################################################


def _socket_channels() -> tuple[Channel, Channel]:
    a, b = socket.socketpair()
    return Channel(a), Channel(b)


async def test_channel_messages_in_order_then_none_at_eof() -> None:
    ours, theirs = _socket_channels()
    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(ours.send, {"event": "tick", "n": i})
            await trio.testing.wait_all_tasks_blocked()
    with trio.fail_after(5):
        assert [await theirs.receive() for _ in range(3)] == [
            {"event": "tick", "n": i} for i in range(3)
        ]
        await ours.aclose()
        assert await theirs.receive() is None
        assert await theirs.receive() is None  # and stays so
    await theirs.aclose()


async def test_channel_raises_on_garbage_from_the_peer() -> None:
    a_raw, b = socket.socketpair()
    a = trio.socket.from_stdlib_socket(a_raw)
    channel = Channel(b)
    with trio.fail_after(5):
        await a.send(b"no json here\n")
        with pytest.raises(ChannelError, match="not JSON"):
            await channel.receive()
    a.close()
    await channel.aclose()


################################################################
# RestartPolicy: at once, unless it keeps dying young
################################################################


def test_young_deaths_back_off_exponentially_up_to_the_cap() -> None:
    policy = RestartPolicy()
    delays = [policy.died(lifetime=0.1) for _ in range(10)]
    assert delays == [0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.young_deaths == 10


def test_a_long_life_resets_the_back_off() -> None:
    policy = RestartPolicy()
    for _ in range(6):
        policy.died(lifetime=0.0)
    assert policy.died(lifetime=60.0) == 0.0
    assert policy.young_deaths == 0
    assert [policy.died(lifetime=1.0) for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]


def test_quick_is_the_boundary_of_a_young_death() -> None:
    policy = RestartPolicy(quick=5.0, burst=0)
    assert policy.died(lifetime=4.999) == 0.5  # young: burst 0 backs off at once
    assert policy.died(lifetime=5.0) == 0.0  # not young: reset
    assert policy.young_deaths == 0


def test_custom_policy() -> None:
    policy = RestartPolicy(quick=1.0, burst=1, first_delay=0.25, max_delay=1.0)
    assert [policy.died(0.5) for _ in range(5)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert all(isinstance(policy.died(0.5), float) for _ in range(3))


def test_policies_are_per_slot() -> None:
    one, two = RestartPolicy(), RestartPolicy()
    for _ in range(4):
        one.died(0.1)
    assert two.died(0.1) == 0.0
    assert one.young_deaths == 4 and two.young_deaths == 1


################################################################
# plan_from_options: what trionet.supervise() checks before any I/O
################################################################


def plan(
    *binds: object, workers: object = 2, ready_timeout: object = 30.0, **options: object
) -> WorkerPlan:
    """``plan_from_options`` for ``echo`` (default bind: :data:`LOCAL`)."""
    return plan_from_options("echo", binds or (LOCAL,), workers, ready_timeout, options)


def test_a_good_plan() -> None:
    result = plan(LOCAL, "unix:/tmp/trionet-units.sock", grace=3, max_connections=10, backlog=5)
    assert result.handler == "echo"
    assert result.binds == (LOCAL, "unix:/tmp/trionet-units.sock")
    assert result.workers == 2
    assert result.grace == 3.0
    assert result.ready_timeout == 30.0
    assert result.options["backlog"] == 5  # the supervisor's listeners use it
    assert result.options["max_connections"] == 10
    flags = result.worker_flags
    assert _pairs(flags) >= {("--grace", "3.0"), ("--max-connections", "10")}
    assert "--backlog" not in flags


def test_an_unknown_keyword_is_a_type_error_listing_the_options() -> None:
    with pytest.raises(TypeError, match="unknown option 'max_conns'") as info:
        plan(max_conns=5)
    message = str(info.value)
    for name in ("max_connections", "grace", "tls_cert", "allow"):
        assert name in message
    assert "supervise()" in message


def test_an_ssl_context_gets_a_hint_about_tls_files() -> None:
    with pytest.raises(TypeError, match="unknown option 'tls'") as info:
        plan(tls=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))
    assert "tls_cert=" in str(info.value)
    assert "tls_key=" in str(info.value)


@pytest.mark.parametrize("name", ["workers", "worker_channel", "handler", "bind", "help"])
def test_flags_that_are_not_options_are_unknown(name: str) -> None:
    with pytest.raises(TypeError, match=f"unknown option '{name}'"):
        plan_from_options("echo", [LOCAL], 2, 30.0, {name: 3})


@pytest.mark.parametrize(
    ("workers", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (1025, ValueError),
        (2000, ValueError),
        (True, TypeError),
        (False, TypeError),
        ("2", TypeError),
        (2.0, TypeError),
        (None, TypeError),
    ],
)
def test_bad_workers(workers: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="workers"):
        plan(workers=workers)


@pytest.mark.parametrize("workers", [1, 1024])
def test_workers_at_the_bounds(workers: int) -> None:
    assert plan(workers=workers).workers == workers


@pytest.mark.parametrize("ready_timeout", [0, -1.0, math.inf, math.nan])
def test_bad_ready_timeout(ready_timeout: float) -> None:
    with pytest.raises(ValueError, match="ready_timeout"):
        plan(ready_timeout=ready_timeout)


@pytest.mark.parametrize(
    ("options", "error", "fragment"),
    [
        ({"grace": -1}, ValueError, "grace"),
        ({"max_per_host": -3}, ValueError, "max_per_host"),
        ({"idle_timeout": 0}, ValueError, "idle_timeout"),
        ({"close_linger": -0.5}, ValueError, "close_linger"),
        ({"backlog": -1}, ValueError, "backlog"),
        ({"allow": ["not a network"]}, ValueError, "not a network"),
        ({"deny": "10.0.0.0/33"}, ValueError, "10.0.0.0/33"),
        ({"log_level": "loud"}, ValueError, "log_level"),
        ({"tls_cert": "/nonexistent/cert.pem"}, ValueError, "tls_cert"),
        ({"handshake_timeout": 3}, ValueError, "handshake_timeout"),
        ({"trusted_proxy": ["10.0.0.0/8"]}, ValueError, "proxy_protocol"),
        ({"max_connections": "x"}, TypeError, "max_connections"),
        ({"max_connections": [1]}, TypeError, "max_connections"),
        ({"max_connections": True}, TypeError, "max_connections"),
        ({"grace": object()}, TypeError, "grace"),
        ({"reuse_port": "yes"}, TypeError, "reuse_port"),
        ({"proxy_protocol": 1}, TypeError, "proxy_protocol"),
        ({"allow": 10}, TypeError, "allow"),
    ],
)
def test_bad_flag_values(options: dict[str, object], error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment) as info:
        plan(**options)
    assert "supervise()" in str(info.value)
    assert "--" not in str(info.value).replace("--help", "")  # keyword names, not flags


@pytest.mark.parametrize("spec", [7007, b"tcp://127.0.0.1:0", ("127.0.0.1", 0), None])
def test_binds_must_be_str(spec: object) -> None:
    with pytest.raises(TypeError, match="binds must be str"):
        plan(spec)


def test_bind_objects_are_refused_too() -> None:
    with pytest.raises(TypeError, match="binds must be str"):
        plan(trionet.Bind(LOCAL))


@pytest.mark.parametrize("handler", [b"echo", None, 42])
def test_handler_must_be_str(handler: object) -> None:
    with pytest.raises(TypeError, match="handler must be a str"):
        plan_from_options(handler, [LOCAL], 2, 30.0, {})


def test_an_async_function_is_not_a_handler_spec() -> None:
    from trionet.services import echo

    with pytest.raises(TypeError, match="handler must be a str"):
        plan_from_options(echo, [LOCAL], 2, 30.0, {})


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [("ecko", "unknown service 'ecko'"), ("no_such_module_xyz:h", "no_such_module_xyz")],
)
def test_a_bad_handler_spec_is_a_value_error(handler: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        plan_from_options(handler, [LOCAL], 2, 30.0, {})


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [("tcp://127.0.0.1:99999", "out of range"), ("fd:x", "not a number")],
)
def test_a_bad_bind_spec_is_a_value_error(spec: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        plan(spec)


def test_unix_mode_as_an_int_is_the_octal_flag() -> None:
    result = plan("unix:/tmp/trionet-units.sock", unix_mode=0o660)
    assert result.options["unix_mode"] == 0o660
    assert "--unix-mode" not in result.worker_flags  # the supervisor's: it made the file
    with pytest.raises(ValueError, match="unix_mode"):
        plan("unix:@abstract", unix_mode=0o600)


def test_none_means_the_default() -> None:
    assert plan(max_connections=None, grace=None, allow=None).worker_flags == ()


def test_an_infinite_grace_and_lists() -> None:
    result = plan(grace=math.inf, allow="127.0.0.0/8", deny=["127.0.0.9/32", "::1/128"])
    assert result.grace == math.inf
    assert _pairs(result.worker_flags) >= {
        ("--grace", "inf"),
        ("--allow", "127.0.0.0/8"),
        ("--deny", "127.0.0.9/32"),
        ("--deny", "::1/128"),
    }


################################################################
# Which flags a worker gets
################################################################


def _pairs(flags: tuple[str, ...] | list[str]) -> set[tuple[str, str]]:
    """``--flag=value`` as pairs (and ``(--flag, "")`` for a flag without one).

    A worker is given ``--flag=VALUE``, one argument, so that a value that
    starts with ``-`` stays a value (found by test_workers_hostile).
    """
    pairs = set()
    for flag in flags:
        assert flag.startswith("--"), flags  # never a separate value argument
        name, _, value = flag.partition("=")
        pairs.add((name, value))
    return pairs


@pytest.fixture
def pem_files(tmp_path: Path, tls_cert: trustme.LeafCert) -> tuple[str, str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls_cert.cert_chain_pems[0].write_to_path(str(cert))
    tls_cert.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def test_worker_flags_leave_the_listening_flags_to_the_supervisor(
    pem_files: tuple[str, str],
) -> None:
    cert, key = pem_files
    args = build_parser().parse_args(
        [
            "serve", "echo", "--workers", "3", "--ready-timeout", "9",
            "--bind", LOCAL, "--bind", "unix:/tmp/trionet-units.sock",
            "--backlog", "50", "--reuse-port", "--unix-mode", "600",
            "--grace", "2", "--max-connections", "7", "--max-per-host", "2",
            "--idle-timeout", "30", "--close-linger", "0",
            "--allow", "127.0.0.0/8", "--allow", "::1/128",
            "--tls-cert", cert, "--tls-key", key, "--handshake-timeout", "4",
            "--log-level", "debug",
        ]
    )  # fmt: skip
    result = plan_from_args(args)
    assert (result.workers, result.ready_timeout, result.grace) == (3, 9.0, 2.0)
    flags = result.worker_flags
    for gone in ("--bind", "--backlog", "--reuse-port", "--unix-mode", "--workers"):
        assert gone not in flags, flags
    assert "--ready-timeout" not in flags and "--worker-channel" not in flags
    assert _pairs(flags) == {
        ("--grace", "2.0"),
        ("--max-connections", "7"),
        ("--max-per-host", "2"),
        ("--idle-timeout", "30.0"),
        ("--close-linger", "0.0"),
        ("--allow", "127.0.0.0/8"),
        ("--allow", "::1/128"),
        ("--tls-cert", cert),
        ("--tls-key", key),
        ("--handshake-timeout", "4.0"),
        ("--log-level", "debug"),
    }
    # ... and the supervisor keeps what shapes its listeners.
    assert result.binds == (LOCAL, "unix:/tmp/trionet-units.sock")
    assert result.options["backlog"] == 50
    assert result.options["reuse_port"] is True
    assert result.options["unix_mode"] == 0o600


def test_the_worker_command_line_parses_back_to_the_same_server(
    pem_files: tuple[str, str],
) -> None:
    cert, key = pem_files
    result = plan(
        LOCAL, grace=2.5, max_connections=7, tls_cert=cert, tls_key=key, allow=["127.0.0.0/8"],
        proxy_protocol=True, trusted_proxy=["127.0.0.1/32"], backlog=9, reuse_port=True,
    )  # fmt: skip
    command = result.command([5, 6], 9)
    assert command[:5] == [sys.executable, "-m", "trionet", "serve", "echo"]
    assert command[-6:] == ["--bind", "fd:5", "--bind", "fd:6", "--worker-channel", "9"]
    worker = build_parser().parse_args(command[3:])
    assert worker.workers is None
    assert worker.worker_channel == 9
    assert worker.bind == ["fd:5", "fd:6"]
    assert worker.grace == 2.5
    assert worker.max_connections == 7
    assert (worker.tls_cert, worker.tls_key) == (cert, key)
    assert worker.allow == ["127.0.0.0/8"]
    assert worker.proxy_protocol is True
    assert worker.trusted_proxy == ["127.0.0.1/32"]
    assert worker.backlog is None and worker.reuse_port is False


def test_supervisor_flags_are_the_listening_ones() -> None:
    assert {"bind", "backlog", "reuse_port", "unix_mode"} <= SUPERVISOR_FLAGS
    assert not {"grace", "max_connections", "tls_cert", "tls_key", "allow"} & SUPERVISOR_FLAGS


def test_workers_and_worker_channel_together_are_refused() -> None:
    args = build_parser().parse_args(
        ["serve", "echo", "--workers", "2", "--worker-channel", "5", "--bind", LOCAL]
    )
    with pytest.raises(CLIError, match="--worker-channel") as info:
        plan_from_args(args)
    assert info.value.exit_code == 2
