"""Inherited listening sockets: ``fd:N``, ``systemd`` and ``systemd:NAME`` binds.

Every socket is a real loopback (or Unix) socket made here and handed over
by descriptor number -- in process (``fd:N`` on a duplicate, or ``systemd``
with ``LISTEN_FDS_START`` moved to free descriptors), to ``python -m trionet
serve`` in a subprocess with ``LISTEN_FDS``/``LISTEN_PID`` set, and through
``systemd-socket-activate``.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cliproc import TIMEOUT
from conftest import require_program

import trionet
from trionet import _inherited
from trionet.services import echo
from trionet.testing import VirtualNetwork


@pytest.fixture(autouse=True)
def _fresh_listen_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No LISTEN_* variables, nothing remembered from another test."""
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(key, raising=False)
    _inherited.forget_listen_env()
    yield
    _inherited.forget_listen_env()


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def is_socket_file(path: str) -> bool:
    return stat.S_ISSOCK(os.lstat(path).st_mode)


async def echo_once(address: trionet.Address, tls: ssl.SSLContext | None = None) -> bytes:
    async with await trionet.connect(address, tls=tls) as conn:
        await conn.send_all(b"ping")
        return await conn.receive_exactly(4)


# ----------------------------------------------------------------------
# Parsing: before any I/O


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("fd:", "a descriptor number is required"),
        ("fd:-1", "cannot be negative"),
        ("fd:x", "'x' is not a number"),
        ("fd:3.0", "'3.0' is not a number"),
        ("fd:99999999999", "out of range"),
        ("fd:2147483648", "out of range"),  # beyond a C int (was a raw OverflowError)
        ("systemd:", "a name is required"),
        ("systemd:a:b", "cannot contain ':'"),
    ],
)
def test_malformed_specs(spec: str, problem: str) -> None:
    with pytest.raises(trionet.InvalidAddress, match=problem) as info:
        trionet.Bind(spec)
    assert str(info.value).startswith(f"invalid address {spec!r}: trionet.serve: ")


def test_parsed_specs() -> None:
    assert str(_inherited.parse_inherited("fd:007")) == "fd:7"
    assert str(_inherited.parse_inherited("systemd")) == "systemd"
    assert str(_inherited.parse_inherited("systemd:web")) == "systemd:web"
    assert _inherited.parse_inherited("tcp://127.0.0.1:0") is None


def test_unix_mode_cannot_apply() -> None:
    with pytest.raises(ValueError, match="cannot apply to an inherited socket"):
        trionet.Bind("fd:3", unix_mode=0o600)


def set_env(monkeypatch: pytest.MonkeyPatch, fds: int, names: str | None, pid: int) -> None:
    monkeypatch.setenv("LISTEN_PID", str(pid))
    monkeypatch.setenv("LISTEN_FDS", str(fds))
    if names is not None:
        monkeypatch.setenv("LISTEN_FDNAMES", names)


@pytest.mark.parametrize(
    ("spec", "env", "problem"),
    [
        ("systemd", None, "no sockets were passed .LISTEN_FDS is not set"),
        ("systemd", (1, None, 1), r"LISTEN_PID=1 is another process \(ours is"),
        ("systemd", (0, None, None), "LISTEN_FDS=0"),
        ("systemd:web", (2, "web", None), "LISTEN_FDNAMES has 1 names for LISTEN_FDS=2"),
        ("systemd:admin", (2, "web:api", None), r"no socket is named 'admin'.*api, web"),
        # Refused, not 2.6 GB of list and a MemoryError (found by hostile testing).
        ("systemd", (9_999_999_999, None, None), "more descriptors than this process may have"),
    ],
)
async def test_environment_refused_before_io(
    monkeypatch: pytest.MonkeyPatch,
    spec: str,
    env: tuple[int, str | None, int | None] | None,
    problem: str,
) -> None:
    if env is not None:
        fds, names, pid = env
        set_env(monkeypatch, fds, names, os.getpid() if pid is None else pid)
    before = dict(os.environ)
    with pytest.raises(trionet.InvalidAddress, match=problem) as info:
        await trionet.serve(echo, spec)
    assert str(info.value).startswith(f"invalid address {spec!r}: trionet.serve: ")
    assert dict(os.environ) == before  # validation reads, never removes


def test_cli_refuses_missing_environment() -> None:
    from cliproc import run_main

    assert run_main(["serve", "echo", "--bind", "systemd"]) == 2


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])
@pytest.mark.parametrize(
    ("which", "problem"),
    [
        ("pipe", "is a pipe, not a socket"),
        ("udp", "is a UDP socket"),
        ("idle", "is a TCP socket that is not listening"),
        ("closed", "is not open"),
    ],
)
def test_cli_refuses_a_bad_descriptor_in_one_line_and_closes_nothing(
    bad_descriptors: dict[str, int], which: str, problem: str, workers: list[str]
) -> None:
    # The bad-input table, through the command (one process, and a
    # supervisor with workers): one error line, exit 1, no worker started,
    # and the descriptor -- ours -- still open afterwards.
    fd = bad_descriptors[which]
    passed = () if which == "closed" else (fd,)
    result = subprocess.run(
        [sys.executable, "-m", "trionet", "serve", "echo", "--bind", f"fd:{fd}", *workers],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        pass_fds=passed,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("trionet: error: invalid address"), lines
    assert f"fd {fd} {problem}" in lines[0]
    assert "started" not in result.stderr  # no worker process
    if which != "closed":
        os.fstat(fd)  # still open here (and in the child until it exited)


def test_cli_reports_a_refused_descriptor_in_one_line() -> None:
    # fd 0 of the child is /dev/null: refused when adopted -- one error line
    # (found by hostile testing: it was a traceback).
    result = subprocess.run(
        [sys.executable, "-m", "trionet", "serve", "echo", "--bind", "fd:0"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "trionet: error: invalid address 'fd:0': trionet.serve: fd 0 is a character device "
        "(a terminal?), not a socket"
    ]


# ----------------------------------------------------------------------
# fd:N in process


async def test_fd_bind_serves_and_leaves_the_descriptor(tcp_listener: socket.socket) -> None:
    fd = os.dup(tcp_listener.fileno())
    try:
        async with trio.open_nursery() as nursery:
            server: trionet.Server = await nursery.start(
                functools.partial(trionet.serve, echo, f"fd:{fd}")
            )
            assert server.addresses == [trionet.TCPAddress(*tcp_listener.getsockname())]
            assert server.binds[0].address == server.addresses[0]
            assert await echo_once(server.addresses[0]) == b"ping"
            await server.shutdown(5)
        # Ours is open and still listening: the server closed its duplicate only.
        assert is_open(fd)
        assert tcp_listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        client = socket.create_connection(tcp_listener.getsockname(), timeout=TIMEOUT)
        accepted, _ = tcp_listener.accept()  # the queue was not reset by a shutdown()
        accepted.close()
        client.close()
    finally:
        os.close(fd)


async def test_fd_bind_unix_path_is_left(tmp_path: Path) -> None:
    path = str(tmp_path / "inherited.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen()
    try:
        async with trio.open_nursery() as nursery:
            server: trionet.Server = await nursery.start(
                functools.partial(trionet.serve, echo, f"fd:{sock.fileno()}")
            )
            assert server.addresses == [trionet.UnixAddress(path)]
            assert await echo_once(server.addresses[0]) == b"ping"
            await server.shutdown(5)
        assert is_socket_file(path)  # never unlinked: it is whoever bound it's
        assert is_open(sock.fileno())
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)  # still listening
    finally:
        sock.close()


async def test_tls_and_backlog_apply_to_inherited(
    tcp_listener: socket.socket, server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    bind = trionet.Bind(f"fd:{tcp_listener.fileno()}", tls=server_tls, backlog=8)
    async with trio.open_nursery() as nursery:
        server: trionet.Server = await nursery.start(functools.partial(trionet.serve, echo, bind))
        (resolved,) = server.binds
        assert resolved.uses_tls and resolved.backlog == 8
        assert await echo_once(server.addresses[0], tls=client_tls) == b"ping"
        await server.shutdown(5)
    assert is_open(tcp_listener.fileno())


async def test_proxy_protocol_applies_to_an_inherited_socket(tcp_listener: socket.socket) -> None:
    seen: list[object] = []

    async def who(conn: trionet.Connection) -> None:
        seen.append(conn.peer)
        await conn.send_all(b"ok")

    bind = trionet.Bind(
        f"fd:{tcp_listener.fileno()}", proxy_protocol="required", trusted_proxies=["127.0.0.1/32"]
    )
    async with trio.open_nursery() as nursery:
        server: trionet.Server = await nursery.start(functools.partial(trionet.serve, who, bind))
        stream = await trio.open_tcp_stream(*tcp_listener.getsockname())
        async with stream:
            await stream.send_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 80\r\n")
            assert await stream.receive_some(10) == b"ok"
        await server.shutdown(5)
    assert seen == [trionet.TCPAddress("192.0.2.7", 40000)]
    assert is_open(tcp_listener.fileno())


async def test_proxy_protocol_on_inherited_tcp_needs_trusted(tcp_listener: socket.socket) -> None:
    bind = trionet.Bind(f"fd:{tcp_listener.fileno()}", proxy_protocol="required")
    with pytest.raises(ValueError, match="needs trusted_proxies"):
        await trionet.serve(echo, bind)
    assert is_open(tcp_listener.fileno())


# ----------------------------------------------------------------------
# Descriptors that are not listening stream sockets


@pytest.fixture
def bad_descriptors() -> Iterator[dict[str, int]]:
    read_end, write_end = os.pipe()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    idle = socket.socket()
    idle.bind(("127.0.0.1", 0))  # bound, never listen()
    unix_dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    closed = 4000  # far above anything this process opens
    while is_open(closed):
        closed += 1
    yield {
        "pipe": read_end,
        "udp": udp.fileno(),
        "idle": idle.fileno(),
        "unix_dgram": unix_dgram.fileno(),
        "closed": closed,
    }
    for sock in (udp, idle, unix_dgram):
        sock.close()
    os.close(read_end)
    os.close(write_end)


@pytest.mark.parametrize(
    ("which", "problem"),
    [
        ("pipe", "is a pipe, not a socket"),
        ("udp", "is a UDP socket; a listening TCP or Unix stream socket is needed"),
        ("idle", "is a TCP socket that is not listening"),
        ("unix_dgram", "is a Unix datagram socket"),
        ("closed", "is not open"),
    ],
)
async def test_bad_descriptor_refused_and_left_open(
    bad_descriptors: dict[str, int], which: str, problem: str
) -> None:
    fd = bad_descriptors[which]
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(trionet.InvalidAddress, match=f"trionet.serve: fd {fd} {problem}"):
        await trionet.serve(echo, f"fd:{fd}")
    assert set(os.listdir("/proc/self/fd")) == before  # no duplicate leaked
    assert is_open(fd) == (which != "closed")  # nothing of the caller's closed


async def test_one_bad_descriptor_closes_what_was_adopted(
    tcp_listener: socket.socket, bad_descriptors: dict[str, int]
) -> None:
    before = set(os.listdir("/proc/self/fd"))
    good = f"fd:{tcp_listener.fileno()}"
    with pytest.raises(trionet.InvalidAddress, match="UDP"):
        await trionet.serve(echo, good, f"fd:{bad_descriptors['udp']}")
    assert set(os.listdir("/proc/self/fd")) == before
    assert tcp_listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


async def test_virtual_network_refuses_before_any_descriptor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, 1, None, 1)  # would be "another process" if it were read
    read_end, write_end = os.pipe()
    try:
        with VirtualNetwork().install():
            for spec in (f"fd:{read_end}", "systemd", "systemd:web"):
                with pytest.raises(
                    trionet.InvalidAddress,
                    match=r"inherited descriptor cannot be used while trionet.testing.Virt",
                ):
                    await trionet.serve(echo, spec)
        assert "LISTEN_PID" in os.environ
    finally:
        os.close(read_end)
        os.close(write_end)


# ----------------------------------------------------------------------
# systemd in process: LISTEN_FDS_START moved to free descriptors


@pytest.fixture
def passed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[socket.socket]]:
    """Two listening loopback sockets at consecutive free descriptors, as systemd passes them."""
    socks = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        socks.append(sock)
    start = 900
    while any(is_open(n) for n in (start, start + 1)):
        start += 2
    for offset, sock in enumerate(socks):
        os.dup2(sock.fileno(), start + offset)
    monkeypatch.setattr(_inherited, "LISTEN_FDS_START", start)
    set_env(monkeypatch, 2, "web:admin", os.getpid())
    yield socks
    for offset, sock in enumerate(socks):
        os.close(start + offset)
        sock.close()


async def test_systemd_adopts_all_and_unsets_env(passed: list[socket.socket]) -> None:
    async with trio.open_nursery() as nursery:
        server: trionet.Server = await nursery.start(
            functools.partial(trionet.serve, echo, "systemd")
        )
        assert server.addresses == [trionet.TCPAddress(*s.getsockname()) for s in passed]
        for address in server.addresses:
            assert await echo_once(address) == b"ping"
        assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)
        # A child process does not inherit them.
        code = "import os; print(os.environ.get('LISTEN_FDS'))"
        out = await trio.run_process([sys.executable, "-c", code], capture_stdout=True)
        assert out.stdout.strip() == b"None"
        # ... unless asked: what systemd said is there for a child meant to have it.
        asked = trionet.listen_environment()
        assert asked == {
            "LISTEN_PID": str(os.getpid()),
            "LISTEN_FDS": str(len(passed)),
            "LISTEN_FDNAMES": "web:admin",
        }
        env = {**os.environ, **asked}
        out = await trio.run_process([sys.executable, "-c", code], capture_stdout=True, env=env)
        assert out.stdout.strip() == str(len(passed)).encode()
        await server.shutdown(5)
    assert is_open(_inherited.LISTEN_FDS_START) and is_open(_inherited.LISTEN_FDS_START + 1)


async def test_systemd_by_name_and_remembered(
    passed: list[socket.socket], server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    async with trio.open_nursery() as nursery:
        admin: trionet.Server = await nursery.start(
            functools.partial(trionet.serve, echo, trionet.Bind("systemd:admin", tls=server_tls))
        )
        assert "LISTEN_FDS" not in os.environ
        # A second server in the same process still finds "web": remembered.
        web: trionet.Server = await nursery.start(
            functools.partial(trionet.serve, echo, "systemd:web")
        )
        assert admin.addresses == [trionet.TCPAddress(*passed[1].getsockname())]
        assert web.addresses == [trionet.TCPAddress(*passed[0].getsockname())]
        assert await echo_once(admin.addresses[0], tls=client_tls) == b"ping"
        assert await echo_once(web.addresses[0]) == b"ping"
        await admin.shutdown(5)
        await web.shutdown(5)


# ----------------------------------------------------------------------
# systemd across exec: python -m trionet serve echo --bind systemd

# Puts the passed socket at descriptor 3 and LISTEN_PID to this very process,
# then execs the CLI -- as systemd does between fork and exec.
_WRAPPER = (
    "import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); fd == 3 or os.close(fd); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='web'); "
    "os.execv(sys.executable, [sys.executable, '-m', 'trionet', *sys.argv[2:]])"
)


def start_wrapped(sock: socket.socket, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, str(sock.fileno()), *args],
        pass_fds=[sock.fileno()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("bind", ["systemd", "systemd:web", "fd:3"])
def test_cli_serves_passed_socket(tcp_listener: socket.socket, bind: str) -> None:
    proc = start_wrapped(tcp_listener, "serve", "echo", "--bind", bind)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        host, port = tcp_listener.getsockname()
        assert line.strip() == f"listening on tcp://{host}:{port}"
        with socket.create_connection((host, port), timeout=TIMEOUT) as client:
            client.sendall(b"ping")
            assert client.recv(4) == b"ping"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert is_open(tcp_listener.fileno())


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])
def test_cli_refuses_a_pid_mismatch(tcp_listener: socket.socket, workers: list[str]) -> None:
    # The socket really is at descriptor 3 of the child, but LISTEN_PID names
    # another process: refused before anything is adopted, and left open.
    argv = [sys.executable, "-c", _WRAPPER_FOR_PID_MISMATCH]
    env = dict(os.environ, LISTEN_PID="1", LISTEN_FDS="1", TEST_FD=str(tcp_listener.fileno()))
    proc = subprocess.run(
        [*argv, "serve", "echo", "--bind", "systemd", *workers],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        pass_fds=(tcp_listener.fileno(),),
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("trionet: error: ")
    assert "LISTEN_PID=1 is another process" in proc.stderr
    assert "descriptor 3 still open" in proc.stdout
    assert is_open(tcp_listener.fileno())


# Puts the caller's socket at descriptor 3, runs the trionet command, then
# reports whether descriptor 3 is still open (the refusal closed nothing).
_WRAPPER_FOR_PID_MISMATCH = """import os, sys
fd = int(os.environ["TEST_FD"])
os.dup2(fd, 3, inheritable=True)
from trionet._launch import main
status = main(sys.argv[1:])
try:
    os.fstat(3)
    print("descriptor 3 still open", flush=True)
except OSError:
    print("descriptor 3 closed", flush=True)
sys.exit(status)
"""


def test_systemd_socket_activate(tmp_path: Path) -> None:
    program = require_program("systemd-socket-activate")
    path = str(tmp_path / "activated.sock")
    command = [sys.executable, "-m", "trionet", "serve", "echo", "--bind", "systemd"]
    proc = subprocess.Popen(
        [program, "-l", path, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        # It listens, says so, and execs us at the first connection.
        assert proc.stderr.readline().decode().startswith(f"Listening on {path}")
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT)
            client.connect(path)
            client.sendall(b"ping")
            assert client.recv(4) == b"ping"
        assert proc.stdout.readline().decode().strip() == f"listening on unix:{path}"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
