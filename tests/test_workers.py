"""Worker processes, for real: ``trionet serve --workers N`` and ``trionet.supervise()``.

Every supervisor here is a real one, its workers real ``python -m trionet
serve`` processes on real loopback (or Unix) sockets.  The command line runs
as a subprocess (``cliproc``; every wait bounded, output read line by line);
the Python API runs in the test's own ``trio.run``.  The processes are
checked from the outside, through ``/proc``: who is whose child, what each
was given on its command line and in its environment, and that none is left.

Every process a test starts carries a token of that test in its environment
(``TRIONET_TEST_WORKERS_RUN``); after the test none may be left alive
(:func:`_token`).  The handlers are ``workers_handlers.py``, which the
workers import through ``PYTHONPATH``.  The load versions of crash, reload
and drain are ``test_workers_load.py``'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme
from cliproc import TIMEOUT, CLIProcess, Start, assert_one_error_line
from conftest import require_program
from procs import (
    LISTEN_VARS,
    alive,
    children_of,
    cmdline,
    environ,
    marked_processes,
    with_token,
)
from workers_handlers import FAIL_IN_WORKERS

import trionet

LOCAL = "tcp://127.0.0.1:0"
TOKEN_VAR = "TRIONET_TEST_WORKERS_RUN"
READY = re.compile(r"workers: (\d+) ready \(pids ([\d ]+)\)")


def wait_until_gone(pids: list[int] | set[int], timeout: float = TIMEOUT) -> None:
    """Poll (bounded) until none of ``pids`` is alive."""
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not left, f"still alive after {timeout}s: {left}"


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Workers find ``workers_handlers``; the test's processes carry a token; none survives.

    Set up before ``cli`` and so torn down after it: by then every
    supervisor has exited or been killed, and its workers must follow
    (the orphaned ones within their drain).
    """
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # a rewritten module is read again
    monkeypatch.delenv(FAIL_IN_WORKERS, raising=False)
    with marked_processes(monkeypatch, TOKEN_VAR, 2 * TIMEOUT) as token:
        yield token


################################################################
# The supervisor as a subprocess
################################################################


@dataclasses.dataclass
class Supervised:
    """A ``trionet serve --workers N`` subprocess that said it is ready."""

    proc: CLIProcess
    addresses: list[trionet.Address]
    pids: list[int]
    #: The stderr lines read so far (by :meth:`wait_err`).
    stderr: list[str] = dataclasses.field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.popen.pid

    def signal(self, sig: int) -> None:
        self.proc.popen.send_signal(sig)

    def wait_err(self, pattern: str, timeout: float = 2 * TIMEOUT) -> re.Match[str]:
        """Read stderr lines until one matches ``pattern`` (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.err_line()
            if line is None:
                raise AssertionError(f"stderr ended before {pattern!r}: {''.join(self.stderr)}")
            self.stderr.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no {pattern!r} in {timeout}s: {''.join(self.stderr)}")

    def finish(self) -> tuple[int, str, str]:
        """Wait for the exit: (status, rest of stdout, all of stderr)."""
        rc, out, err = self.proc.finish(2 * TIMEOUT)
        return rc, out, "".join(self.stderr) + err


def ready_pids(proc: CLIProcess) -> list[int]:
    line = proc.line()
    assert line is not None, proc.finish()
    match = READY.fullmatch(line.strip())
    assert match, line
    pids = [int(pid) for pid in match.group(2).split()]
    assert len(pids) == int(match.group(1))
    return pids


def supervised(cli: Start, *args: str, cwd: Path | None = None, binds: int = 1) -> Supervised:
    """Start ``trionet serve ARGS`` and wait for its ``listening on`` and ``workers:`` lines."""
    proc = cli("serve", *args, cwd=cwd)
    addresses = proc.listening(binds)
    return Supervised(proc, addresses, ready_pids(proc))


def final_line(out: str, name: str) -> dict[str, str]:
    """The ``name: k=v ...`` line of the final report."""
    match = re.search(rf"^{name}: (.*=.*)$", out, re.M)
    assert match, out
    return dict(item.split("=", 1) for item in match.group(1).split())


################################################################
# Clients
################################################################


def connect(address: trionet.Address) -> socket.socket:
    if isinstance(address, trionet.UnixAddress):
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(address.path)
        except BaseException:
            sock.close()
            raise
        return sock
    assert isinstance(address, trionet.TCPAddress)
    return socket.create_connection((address.host, address.port), timeout=TIMEOUT)


def read_line(sock: socket.socket | ssl.SSLSocket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise AssertionError(f"closed after {data!r}")
        data += chunk
    return data


@contextlib.contextmanager
def holding(address: trionet.Address, count: int) -> Iterator[list[int]]:
    """``count`` connections to ``workers_handlers:pid``, held open: the pids serving them.

    Under ``--max-connections 1`` a worker holding a connection accepts no
    other, so ``count`` held connections are served by ``count`` workers.
    """
    with contextlib.ExitStack() as stack:
        pids = []
        for _ in range(count):
            sock = stack.enter_context(connect(address))
            pids.append(int(read_line(sock)))
        yield pids


def serving(address: trionet.Address, count: int) -> set[int]:
    """The pids of the ``count`` workers serving ``address`` (see :func:`holding`)."""
    with holding(address, count) as pids:
        assert len(set(pids)) == count, pids
        return set(pids)


def echo(address: trionet.Address, data: bytes = b"ping\n") -> None:
    with connect(address) as sock:
        sock.sendall(data)
        assert read_line(sock) == data


################################################################
# Start: N workers sharing the sockets
################################################################


def test_two_workers_share_the_socket_and_both_serve(
    cli: Start, monkeypatch: pytest.MonkeyPatch, _token: str
) -> None:
    # Stray socket-activation variables (they are not for us: LISTEN_PID is
    # another process) must not reach the workers either.
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "stray")
    run = supervised(
        cli, "workers_handlers:pid", "--workers", "2", "--bind", LOCAL, "--max-connections", "1"
    )
    (address,) = run.addresses
    assert isinstance(address, trionet.TCPAddress) and address.port != 0
    assert len(set(run.pids)) == 2
    # The supervisor's only children are its two workers.
    assert children_of(run.pid) == set(run.pids)
    for pid in run.pids:
        argv = cmdline(pid)
        assert argv[1:5] == ["-m", "trionet", "serve", "workers_handlers:pid"], argv
        bind = argv[argv.index("--bind") + 1]
        assert re.fullmatch(r"fd:\d+", bind), argv
        assert argv.count("--bind") == 1
        assert re.fullmatch(r"\d+", argv[argv.index("--worker-channel") + 1]), argv
        assert "--max-connections=1" in argv  # the flags go to workers (--flag=VALUE)
        assert "--workers" not in argv
        env = environ(pid)
        assert env[TOKEN_VAR] == _token
        assert not set(LISTEN_VARS) & set(env), env
    # Both serve: two held connections, two workers.  Twice: a worker that
    # has finished a connection takes the next.
    assert serving(address, 2) == set(run.pids)
    assert serving(address, 2) == set(run.pids)
    run.signal(signal.SIGTERM)
    rc, out, err = run.finish()
    assert rc == 0, err
    assert final_line(out, "shutdown")["workers"] == "2"
    assert final_line(out, "stats")["accepted"] == "4"
    assert final_line(out, "workers") == {
        "started": "2", "crashed": "0", "restarted": "0", "reloads": "0/0", "unreported": "0",
    }  # fmt: skip
    # The supervisor waits for its workers: they are gone when it exits.
    assert not [pid for pid in run.pids if alive(pid)]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("0", "1 to 1024"), ("x", "not a whole number"), ("2000", "1 to 1024"), ("1.5", "whole")],
)
def test_bad_workers_value_is_a_usage_error(cli: Start, value: str, fragment: str) -> None:
    rc, out, err = cli("serve", "echo", "--workers", value, "--bind", LOCAL).finish()
    assert rc == 2
    assert out == ""
    assert_one_error_line(err, "--workers", repr(value), fragment)


@pytest.mark.parametrize(
    ("handler", "fragment"),
    [
        ("ecko", "unknown service 'ecko'"),
        ("no_such_module_for_workers:handle", "no module named 'no_such_module_for_workers'"),
        ("workers_handlers:nope", "has no attribute 'nope'"),
    ],
)
def test_a_handler_typo_is_refused_before_any_process_starts(
    cli: Start, handler: str, fragment: str
) -> None:
    rc, out, err = cli("serve", handler, "--workers", "2", "--bind", LOCAL).finish()
    assert rc == 2
    assert out == ""
    assert_one_error_line(err, fragment)  # one line: no worker was started (nor logged)


def test_a_handler_module_raising_at_import_is_caught_by_the_supervisor(
    cli: Start, tmp_path: Path
) -> None:
    (tmp_path / "broken_at_import.py").write_text("raise RuntimeError('broken on purpose')\n")
    rc, out, err = cli(
        "serve", "broken_at_import:handle", "--workers", "2", "--bind", LOCAL, cwd=tmp_path
    ).finish()
    assert rc == 1
    assert out == ""
    assert_one_error_line(err, "importing 'broken_at_import' failed", "broken on purpose")


def _started_pids(err: str) -> list[int]:
    return [int(pid) for pid in re.findall(r"worker \d+ \(pid (\d+)\) started", err)]


def test_a_worker_failing_at_start_fails_the_supervisor_and_leaves_nothing(
    cli: Start, monkeypatch: pytest.MonkeyPatch, _token: str
) -> None:
    monkeypatch.setenv(FAIL_IN_WORKERS, "1")
    proc = cli("serve", "workers_handlers:pid", "--workers", "2", "--bind", LOCAL)
    rc, out, err = proc.finish(2 * TIMEOUT)
    assert rc == 1, err
    assert out == ""  # never "listening on"
    assert "told to fail in workers" in err  # the worker's own error
    assert re.search(r"worker \d \(pid \d+\) exited with status 1 before it was ready", err), err
    started = _started_pids(err)
    assert len(started) == 2, err  # and none restarted
    # The supervisor reaped every worker before it exited.
    assert not [pid for pid in started if alive(pid)]
    assert with_token(TOKEN_VAR, _token) == []


def test_a_worker_failing_at_start_is_one_error_line(
    cli: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAIL_IN_WORKERS, "1")
    rc, out, err = cli("serve", "workers_handlers:pid", "--workers", "2", "--bind", LOCAL).finish(
        2 * TIMEOUT
    )
    assert rc == 1
    assert out == ""
    assert "Traceback" not in err, err
    assert re.search(
        r"^trionet: error: worker \d \(pid \d+\) exited with status 1 before it was ready",
        err,
        re.M,
    ), err


# Worker 1 (the lowest pid among its parent's workers) takes SLOW seconds
# to import, then serves; every other worker fails at once.
SLOW_FIRST = """\
import os, sys, time

SLOW = 3.0

def _workers_of_my_parent():
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\\0")
        except (OSError, IndexError):
            continue
        if int(stat[1]) == os.getppid() and stat[0] != "Z" and b"--worker-channel" in argv:
            found.append(int(entry))
    return found

if "--worker-channel" in sys.argv:
    if min(_workers_of_my_parent()) == os.getpid():
        time.sleep(SLOW)
    else:
        raise RuntimeError("only the first worker may start")

async def handle(conn):
    await conn.send_all(b"hello\\n")
"""


def test_a_failed_start_restarts_nothing(cli: Start, tmp_path: Path) -> None:
    (tmp_path / "slow_first.py").write_text(SLOW_FIRST)
    rc, out, err = cli(
        "serve", "slow_first:handle", "--workers", "2", "--bind", LOCAL, cwd=tmp_path
    ).finish(3 * TIMEOUT)
    assert rc == 1, err
    assert out == ""
    assert re.search(r"worker 2 \(pid \d+\) exited with status 1 before it was ready", err), err
    assert len(_started_pids(err)) == 2, err  # worker 2 was not restarted
    assert "restarting" not in err, err


def test_address_in_use_with_workers_is_one_error_line(cli: Start) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        rc, out, err = cli(
            "serve", "echo", "--workers", "2", "--bind", f"tcp://127.0.0.1:{port}"
        ).finish()
    assert rc == 1
    assert out == ""
    assert_one_error_line(err, f"tcp://127.0.0.1:{port}", "Address already in use")


################################################################
# Reload (SIGHUP)
################################################################

RELOADABLE = """\
import os

async def pid(conn):
    await conn.send_all(f"{os.getpid()}\\n".encode())
    while await conn.receive_some():
        pass
"""

BROKEN = "raise RuntimeError('a broken deploy')\n"


def _rewrite(path: Path, text: str) -> None:
    """Replace a module's source; its mtime moves on, so no stale bytecode is used."""
    before = path.stat().st_mtime if path.exists() else 0.0
    path.write_text(text)
    os.utime(path, (before + 10, before + 10))


def test_an_old_worker_that_hangs_after_a_reload_is_killed_after_its_grace(cli: Start) -> None:
    """Found by review: a worker drained by a reload had no deadline -- one that
    hung (here: a handler shielded from cancellation) lived until the shutdown,
    and each reload could leave one more behind."""
    run = supervised(
        cli, "workers_handlers:shielded", "--workers", "1", "--grace", "1", "--bind", LOCAL
    )
    (address,) = run.addresses
    (old,) = run.pids
    with connect(address) as client:
        assert client.recv(4) == b"ack\n"
        started = time.monotonic()
        run.signal(signal.SIGHUP)
        run.wait_err(r"reload: done, 1 workers replaced")
        run.wait_err(rf"worker 1 \(pid {old}\) did not exit in time: killing it", timeout=15)
        elapsed = time.monotonic() - started
        wait_until_gone({old})
    # grace (1 s) + KILL_AFTER (5 s), not before
    assert 5.5 < elapsed < 12, elapsed
    (new,) = children_of(run.pid)
    assert new != old
    run.signal(signal.SIGTERM)
    rc, out, err = run.finish()
    assert rc == 0, err
    assert final_line(out, "workers")["unreported"] == "1"  # the killed one


def test_a_failed_reload_keeps_the_old_workers_and_a_fixed_one_replaces_them(
    cli: Start, tmp_path: Path
) -> None:
    module = tmp_path / "reloadable.py"
    _rewrite(module, RELOADABLE)
    run = supervised(
        cli, "reloadable:pid", "--workers", "2", "--bind", LOCAL, "--max-connections", "1",
        cwd=tmp_path,
    )  # fmt: skip
    (address,) = run.addresses
    old = set(run.pids)
    assert serving(address, 2) == old

    _rewrite(module, BROKEN)
    run.signal(signal.SIGHUP)
    failed = run.wait_err(
        r"reload: the replacement worker 1 \(pid (\d+)\) (.*) before it was ready.*"
        r"keeping the old workers"
    )
    assert failed.group(2) == "exited with status 1"
    assert not alive(int(failed.group(1)))
    assert any("a broken deploy" in line for line in run.stderr)  # the replacement's error
    assert children_of(run.pid) == old
    assert serving(address, 2) == old  # the old workers still serve

    _rewrite(module, RELOADABLE + "# fixed\n")
    run.signal(signal.SIGHUP)
    run.wait_err(r"reload: done, 2 workers replaced")
    wait_until_gone(old)  # drained (idle: at once) and reaped
    new = children_of(run.pid)
    assert len(new) == 2 and not new & old
    assert serving(address, 2) == new

    run.signal(signal.SIGTERM)
    rc, out, err = run.finish()
    assert rc == 0, err
    workers = final_line(out, "workers")
    # 2 + the replacement that failed + 2 replacements; a failed
    # replacement is no crash, and only the second reload replaced all.
    assert (workers["started"], workers["crashed"], workers["restarted"]) == ("5", "0", "0")
    assert workers["reloads"] == "1/2", workers
    assert workers["unreported"] == "1"  # the replacement that failed sent no stats
    assert final_line(out, "stats")["accepted"] == "6"  # the old workers' stats are kept
    assert "Traceback" not in err


def _der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def _write_leaf(leaf: trustme.LeafCert, cert: Path, key: Path) -> None:
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))


def served_certificates(address: trionet.Address, ca: trustme.CA, count: int) -> list[bytes]:
    """The certificates of ``count`` TLS echo connections held at once (so: ``count`` workers)."""
    assert isinstance(address, trionet.TCPAddress)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    certificates = []
    with contextlib.ExitStack() as stack:
        for i in range(count):
            raw = stack.enter_context(connect(address))
            sock = stack.enter_context(context.wrap_socket(raw, server_hostname="localhost"))
            sock.sendall(b"%d\n" % i)
            assert read_line(sock) == b"%d\n" % i  # in its handler: it holds its worker
            der = sock.getpeercert(binary_form=True)
            assert der is not None
            certificates.append(der)
    return certificates


def test_a_reload_rotates_the_tls_certificate(
    cli: Start, tmp_path: Path, tls_ca: trustme.CA, tls_cert: trustme.LeafCert
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    _write_leaf(tls_cert, cert, key)
    run = supervised(
        cli, "echo", "--workers", "2", "--bind", LOCAL, "--max-connections", "1",
        "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    (address,) = run.addresses
    assert served_certificates(address, tls_ca, 2) == [_der(tls_cert)] * 2

    renewed = tls_ca.issue_cert("localhost", "127.0.0.1")
    assert _der(renewed) != _der(tls_cert)
    _write_leaf(renewed, cert, key)
    run.signal(signal.SIGHUP)
    run.wait_err(r"reload: done, 2 workers replaced")
    wait_until_gone(run.pids)
    assert served_certificates(address, tls_ca, 2) == [_der(renewed)] * 2

    run.signal(signal.SIGTERM)
    rc, out, err = run.finish()
    assert rc == 0, err
    assert final_line(out, "workers")["reloads"] == "1/1"


################################################################
# Orphans, Unix sockets, socket activation
################################################################


def test_workers_of_a_killed_supervisor_exit_by_themselves(cli: Start, _token: str) -> None:
    run = supervised(cli, "echo", "--workers", "2", "--bind", LOCAL)
    (address,) = run.addresses
    echo(address)
    run.proc.popen.kill()  # kill -9: no drain command, only EOF on the channel
    assert run.proc.popen.wait(TIMEOUT) == -signal.SIGKILL
    gone = {int(run.wait_err(r"worker (\d+): the supervisor is gone: draining").group(1))}
    gone.add(int(run.wait_err(r"worker (\d+): the supervisor is gone: draining").group(1)))
    assert gone == set(run.pids)
    wait_until_gone(run.pids)
    assert with_token(TOKEN_VAR, _token) == []
    with pytest.raises(ConnectionRefusedError):  # the last holder of the socket is gone
        connect(address).close()


def test_unix_socket_with_workers_survives_a_reload_and_is_removed_at_exit(
    cli: Start, unused_unix_path: str
) -> None:
    run = supervised(cli, "echo", "--workers", "2", "--bind", f"unix:{unused_unix_path}")
    assert run.addresses == [trionet.UnixAddress(unused_unix_path)]
    echo(run.addresses[0])
    run.signal(signal.SIGHUP)
    run.wait_err(r"reload: done, 2 workers replaced")
    wait_until_gone(run.pids)
    assert os.path.exists(unused_unix_path)  # a draining worker leaves the file alone
    for i in range(3):
        echo(run.addresses[0], b"after reload %d\n" % i)
    run.signal(signal.SIGTERM)
    rc, out, err = run.finish()
    assert rc == 0, err
    assert final_line(out, "stats")["accepted"] == "4"
    assert not os.path.exists(unused_unix_path)  # the supervisor removed its socket file


# Replace this interpreter with the program in argv[1] (cliproc runs "python ARGS").
_EXEC = "import os, sys; os.execv(sys.argv[1], sys.argv[1:])"


@pytest.mark.peer("systemd-socket-activate")
def test_systemd_socket_activate_with_workers(cli: Start, _token: str) -> None:
    program = require_program("systemd-socket-activate")
    with socket.socket() as probe:  # a free port (systemd-socket-activate cannot say which)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = cli(
        "serve", "workers_handlers:pid", "--bind", "systemd", "--workers", "2",
        "--max-connections", "1",
        invoke=(
            "-c", _EXEC, program, "-l", f"127.0.0.1:{port}",
            # It passes on only the variables named here.
            "-E", TOKEN_VAR, "-E", "PYTHONPATH", "-E", "PYTHONDONTWRITEBYTECODE",
            sys.executable, "-m", "trionet",
        ),
    )  # fmt: skip
    assert proc.err_line() == f"Listening on 127.0.0.1:{port} as 3.\n"
    address = trionet.TCPAddress("127.0.0.1", port)
    with contextlib.ExitStack() as stack:
        # It execs the supervisor at the first connection, which a worker then serves.
        first = stack.enter_context(connect(address))
        served = [int(read_line(first))]
        assert proc.listening() == [address]
        pids = ready_pids(proc)
        second = stack.enter_context(connect(address))
        served.append(int(read_line(second)))
    assert sorted(served) == sorted(pids) and len(set(pids)) == 2
    supervisor = proc.popen.pid
    assert environ(supervisor)["LISTEN_PID"] == str(supervisor)  # socket-activated
    assert children_of(supervisor) == set(pids)
    for pid in pids:
        assert re.fullmatch(r"fd:\d+", cmdline(pid)[cmdline(pid).index("--bind") + 1])
        assert not set(LISTEN_VARS) & set(environ(pid)), environ(pid)
    rc, out, err = proc.stop(signal.SIGTERM)
    assert rc == 0, err
    assert final_line(out, "stats")["accepted"] == "2"


################################################################
# A second SIGINT cuts the drain
################################################################


def test_a_second_sigint_during_the_drain_cuts_the_grace(cli: Start) -> None:
    run = supervised(
        cli, "workers_handlers:stubborn", "--workers", "2", "--bind", LOCAL, "--grace", "60"
    )
    with connect(run.addresses[0]) as client:
        assert read_line(client) == b"ack\n"  # a handler that never finishes
        run.signal(signal.SIGINT)
        run.wait_err(r"received SIGINT: draining the workers")
        started = time.monotonic()
        run.signal(signal.SIGINT)
        run.wait_err(r"received SIGINT again: cutting the grace")
        try:
            assert client.recv(64) == b""  # cancelled, and its connection closed
        except ConnectionResetError:
            pass
        rc, out, err = run.finish()
        cut = time.monotonic() - started
    assert rc == 0, err
    assert cut < 10, cut  # the 60 s grace was cut
    report = final_line(out, "shutdown")
    assert (report["cancelled"], report["finished"]) == ("1", "0")
    assert final_line(out, "workers")["crashed"] == "0"
    assert final_line(out, "workers")["unreported"] == "0"


################################################################
# The Python API, in this process
################################################################


async def echo_once(address: trionet.Address, data: bytes = b"ping") -> bytes:
    with trio.fail_after(TIMEOUT):
        async with await trionet.connect(address) as conn:
            await conn.send_all(data)
            return await conn.receive_exactly(len(data))


async def test_supervise_reload_and_shutdown_in_process() -> None:
    reports: list[trionet.SupervisorReport] = []

    async def run(*, task_status: trio.TaskStatus[trionet.Supervisor]) -> None:
        reports.append(await trionet.supervise("echo", LOCAL, workers=2, task_status=task_status))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            supervisor: trionet.Supervisor = await nursery.start(run)
            assert isinstance(supervisor, trionet.Supervisor)
            assert supervisor.workers == 2 and not supervisor.stopping
            (address,) = supervisor.addresses
            assert isinstance(address, trionet.TCPAddress) and address.port != 0
            old = supervisor.pids
            assert len(set(old)) == 2
            assert set(old) <= children_of(os.getpid())
            for i in range(3):
                assert await echo_once(address, b"before %d" % i) == b"before %d" % i

            assert await supervisor.reload() is True
            new = supervisor.pids
            assert len(set(new)) == 2 and not set(new) & set(old)
            for i in range(2):
                assert await echo_once(address, b"after %d" % i) == b"after %d" % i

            report = await supervisor.shutdown()
            assert supervisor.stopping
            assert await supervisor.wait_stopped() is report
            assert await supervisor.reload() is False  # too late
    assert reports == [report]
    assert isinstance(report, trionet.SupervisorReport)
    assert report.workers == 2
    assert report.started == 4
    assert (report.crashed, report.restarted, report.unreported) == (0, 0, 0)
    assert (report.reloads, report.reloads_done) == (1, 1)
    assert report.stats.accepted == 5
    assert report.stats.closed == 5
    assert report.stats.handler_errors == 0
    assert not [pid for pid in old + new if alive(pid)]
    with pytest.raises(OSError):  # the shared socket is closed
        await echo_once(address)


async def test_cancelling_supervise_leaves_no_worker_running(_token: str) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            supervisor: trionet.Supervisor = await nursery.start(
                functools.partial(trionet.supervise, "echo", LOCAL, workers=2)
            )
            pids = supervisor.pids
            assert len(pids) == 2 and all(alive(pid) for pid in pids)
            assert await echo_once(supervisor.addresses[0]) == b"ping"
            started = trio.current_time()
            nursery.cancel_scope.cancel()
        stopped = trio.current_time() - started
    assert not [pid for pid in pids if alive(pid)]  # stopped and reaped, not orphaned
    assert with_token(TOKEN_VAR, _token) == []
    assert stopped < 5.0, stopped  # they drained at once: not killed after KILL_AFTER


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _find(inner, kind)) is not None:
                return found
    return None


async def test_supervise_fails_the_start_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, _token: str
) -> None:
    monkeypatch.setenv(FAIL_IN_WORKERS, "1")
    with trio.fail_after(30):
        try:
            await trionet.supervise("workers_handlers:pid", LOCAL, workers=2)
        except BaseException as exc:  # its shape is the next test's
            error: Any = _find(exc, trionet.WorkerStartError)
        else:
            pytest.fail("supervise() started with workers that cannot import their handler")
    assert error is not None
    assert re.match(r"worker \d \(pid \d+\) exited with status 1 before it was ready", str(error))
    assert with_token(TOKEN_VAR, _token) == []


async def test_supervise_raises_worker_start_error_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(FAIL_IN_WORKERS, "1")
    with trio.fail_after(30), pytest.raises(trionet.WorkerStartError, match="before it was ready"):
        await trionet.supervise("workers_handlers:pid", LOCAL, workers=2)
