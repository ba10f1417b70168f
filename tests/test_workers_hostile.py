"""Worker processes under attack: odd signals, hostile workers and peers, starved resources.

Every supervisor is real: ``python -m trionet serve --workers N`` as a
subprocess in its own session (so that a test may signal its whole process
group, as a terminal's hang-up does), or :func:`trionet.supervise` in the
test's own ``trio.run``.  The handlers are ``hostile_workers.py``, which the
workers import through ``PYTHONPATH``.  Every process a test starts carries a
token in its environment, and none may outlive the test (:func:`_token`).

Each test asserts a promise.  Those whose docstring or name says a defect
was found reproduce one this file found (they failed before the fix in
the library, as strict xfails); the others guard a promise that held under
attack.  (``test_workers.py``,
``test_workers_units.py`` and ``test_workers_load.py`` cover the rest; a
reload's hung old worker, first found here, is ``test_workers.py``'s.)
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from hostile_workers import FORK_PIDFILE, IMPORT_DELAY
from procs import alive, marked_processes

import trionet
from trionet._workers import _supervisor
from trionet._workers._channel import ChannelError, LineDecoder
from trionet._workers._process import KILL_AFTER, Worker
from trionet._workers._process import spawn as real_spawn

LOCAL = "tcp://127.0.0.1:0"
TOKEN_VAR = "TRIONET_TEST_WORKERS_HOSTILE"
#: Bound of every single wait.
TIMEOUT = 15.0
STARTED = r"worker (\d+) \(pid (\d+)\) started"

################################################################
# Processes, seen through /proc
################################################################


def left_alive(pids: list[int], timeout: float = TIMEOUT) -> list[int]:
    """Those of ``pids`` still alive after up to ``timeout`` seconds of polling.

    A process closes its descriptors (our pipes read EOF) a moment before it
    turns into a zombie: a bounded poll, not a single look.
    """
    deadline = time.monotonic() + timeout
    while (left := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def poll(condition: Callable[[], object], timeout: float) -> bool:
    """Check ``condition()`` every 20 ms for up to ``timeout`` seconds: whether it came true.

    What is polled is another process's state (``/proc``, a supervisor's
    pids): there is no event to wait for.
    """
    with trio.move_on_after(timeout):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.02)
        return True
    return bool(condition())


async def until(condition: Callable[[], object], what: str) -> None:
    """Poll ``condition()`` (bounded by TIMEOUT) until true."""
    if not await poll(condition, TIMEOUT):
        raise AssertionError(f"not {what} within {TIMEOUT}s")


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Workers import ``hostile_workers``; every process of the test is marked; none survives."""
    monkeypatch.delenv(FORK_PIDFILE, raising=False)
    monkeypatch.delenv(IMPORT_DELAY, raising=False)
    with marked_processes(monkeypatch, TOKEN_VAR, TIMEOUT) as token:
        yield token


################################################################
# A supervisor subprocess, in a session of its own
################################################################


class Proc:
    """``python ARGS`` in a new session; stdout and stderr read line by line in threads."""

    def __init__(self, *args: str, stdout: int = subprocess.PIPE, cwd: Path | None = None) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=cwd,
        )
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        self.lines: dict[str, list[str]] = {"out": [], "err": []}
        self._threads = []
        for stream, lines in ((self.popen.stdout, self.out), (self.popen.stderr, self.err)):
            if stream is None:
                lines.put(None)
                continue
            thread = threading.Thread(target=self._pump, args=(stream, lines), daemon=True)
            thread.start()
            self._threads.append(thread)

    @staticmethod
    def _pump(stream: object, lines: queue.Queue[str | None]) -> None:
        for raw in stream:  # type: ignore[attr-defined]
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for(self, name: str, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Read ``name`` ("out" or "err") lines until one matches ``pattern`` (bounded)."""
        lines = self.out if name == "out" else self.err
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                lines.put(None)  # stays at EOF
                break
            self.lines[name].append(line)
            if match := re.search(pattern, line):
                return match
        for other, queued in (("out", self.out), ("err", self.err)):  # what came meanwhile
            while (line := queued.get_nowait() if not queued.empty() else None) is not None:
                self.lines[other].append(line)
        raise AssertionError(
            f"no {name} line matching {pattern!r} (exit {self.popen.poll()}):\n"
            + "".join(self.lines["out"] + self.lines["err"])
        )

    def finish(self, timeout: float = TIMEOUT) -> tuple[int, str, str]:
        """Wait for the exit *and* for EOF on stdout/stderr (every worker shares them)."""
        rc = self.popen.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a process still holds the supervisor's output"
        for name, lines in (("out", self.out), ("err", self.err)):
            while (line := lines.get_nowait()) is not None:
                self.lines[name].append(line)
        return rc, "".join(self.lines["out"]), "".join(self.lines["err"])

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(TIMEOUT)


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Supervisor subprocesses; any still running afterwards is killed (its workers then drain)."""
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()
        for stream in (proc.popen.stdout, proc.popen.stderr):
            if stream is not None:
                stream.close()


def serve(
    procs: list[Proc],
    *args: str,
    invoke: tuple[str, ...] = ("-m", "trionet"),
    cwd: Path | None = None,
) -> Proc:
    proc = Proc(*invoke, "serve", *args, cwd=cwd)
    procs.append(proc)
    return proc


def started_pids(err: str) -> list[int]:
    return [int(pid) for _, pid in re.findall(STARTED, err)]


################################################################
# The channel: a worker scribbling on it must cost that worker only
################################################################


def test_decoder_turns_deeply_nested_json_into_a_channel_error() -> None:
    with pytest.raises(ChannelError):
        LineDecoder().feed(b"[" * 50_000 + b"\n")  # 50 kB: under MAX_LINE


async def _supervise_poison(
    payload: bytes,
) -> tuple[list[int], list[int], trionet.SupervisorReport]:
    """A worker writes ``payload`` on its channel: (pids before, pids after, final report)."""
    with trio.fail_after(3 * TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor: trionet.Supervisor = await nursery.start(
                functools.partial(
                    trionet.supervise, "hostile_workers:poison", LOCAL, workers=1, grace=1
                )
            )
            before = supervisor.pids
            async with await trionet.connect(supervisor.addresses[0]) as conn:
                await conn.send_all(payload + b"\n")
                try:
                    assert await conn.receive_line() == b"sent"
                except (trionet.IncompleteRead, trio.BrokenResourceError):
                    pass  # the supervisor killed the worker before it answered: fine
            await until(lambda: supervisor.pids and supervisor.pids != before, "restarted")
            after = supervisor.pids
            report = await supervisor.shutdown()
    return before, after, report


async def test_garbage_on_the_channel_costs_that_worker_only() -> None:
    before, _after, report = await _supervise_poison(b"garbage")
    assert not alive(before[0])  # killed, reaped, and replaced
    assert (report.crashed, report.restarted) == (1, 1)


async def test_deeply_nested_json_on_the_channel_costs_that_worker_only() -> None:
    before, _after, report = await _supervise_poison(b"deep")
    assert not alive(before[0])
    assert (report.crashed, report.restarted) == (1, 1)


def _worker_given(line: bytes) -> tuple[int, bytes, str]:
    """Act as the supervisor of one ``trionet serve echo`` worker: send ``line`` after *ready*.

    Returns (exit status, what the worker sent after *ready*, its stderr).
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        ours, theirs = socket.socketpair()
        with ours:
            with theirs:
                argv = ["-m", "trionet", "serve", "echo", "--bind", f"fd:{listener.fileno()}"]
                argv += ["--worker-channel", str(theirs.fileno()), "--grace", "1"]
                worker = subprocess.Popen(
                    [sys.executable, *argv],
                    pass_fds=(listener.fileno(), theirs.fileno()),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            try:
                ours.settimeout(TIMEOUT)
                assert ours.recv(4096).startswith(b'{"event":"ready"'), "the worker is not ready"
                ours.sendall(line)
                rc = worker.wait(TIMEOUT)
                rest = b""
                while chunk := ours.recv(65536):
                    rest += chunk
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(TIMEOUT)
                assert worker.stderr is not None
                err = worker.stderr.read().decode("utf-8", "replace")
                worker.stderr.close()
    return rc, rest, err


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(
            b"[" * 50_000 + b"\n",
            id="deeply-nested-json",
        ),
        pytest.param(
            b'{"command":"drain","grace":1' + b"0" * 400 + b"}\n",
            id="integer-grace-too-big-for-a-float",
        ),
        pytest.param(b'{"command":"drain","grace":-1}\n', id="negative-grace"),
        pytest.param(b'{"command":"drain","grace":NaN}\n', id="nan-grace"),
    ],
)
def test_a_worker_drains_on_a_bad_command_without_a_traceback(line: bytes) -> None:
    rc, rest, err = _worker_given(line)
    assert "Traceback" not in err, err
    assert rc == 0, err
    assert rest.startswith(b'{"event":"exit"'), rest[:200]


################################################################
# Signals at odd moments
################################################################


def test_a_hangup_of_the_process_group_during_the_start_kills_no_worker(
    procs: list[Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IMPORT_DELAY, "1")  # the workers import for a second: a sure window
    run = serve(procs, "hostile_workers:hello", "--workers", "2", "--bind", LOCAL, "--grace", "1")
    run.wait_for("err", r"worker 2 \(pid \d+\) started")
    os.killpg(run.pid, signal.SIGHUP)  # a terminal's hang-up: the whole process group
    run.wait_for("out", r"^workers: 2 ready")
    run.popen.send_signal(signal.SIGTERM)
    rc, _out, err = run.finish()
    assert rc == 0, err
    assert "killed by SIGHUP" not in err, err


# The supervisor's command line, with one signal sent to itself at the
# moment its own handlers are gone and SignalLatch.ignore() has not yet
# made SIGINT/SIGTERM ignored: where a signal of a storm may land.
_LATE_SIGNAL = """\
import os, signal, sys
from trionet._cli import _signals
from trionet._launch import main

ignore = _signals.SignalLatch.ignore

def late_signal_then_ignore(self):
    os.kill(os.getpid(), getattr(signal, os.environ["LATE_SIGNAL"]))
    ignore(self)

_signals.SignalLatch.ignore = late_signal_then_ignore
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("late", ["SIGTERM", "SIGINT"])
def test_a_signal_just_after_the_drain_does_not_spoil_the_exit(
    procs: list[Proc], monkeypatch: pytest.MonkeyPatch, late: str
) -> None:
    monkeypatch.setenv("LATE_SIGNAL", late)
    run = serve(
        procs, "echo", "--workers", "1", "--bind", LOCAL, "--grace", "1",
        invoke=("-c", _LATE_SIGNAL),
    )  # fmt: skip
    run.wait_for("out", r"^workers: 1 ready")
    run.popen.send_signal(signal.SIGTERM)
    rc, out, err = run.finish()
    assert rc == 0, (rc, err)
    assert re.search(r"^workers: started=1 ", out, re.M), out


################################################################
# Starved or broken surroundings
################################################################


def test_a_closed_stdout_is_no_traceback(procs: list[Proc]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = Proc(
            "-m", "trionet", "serve", "echo", "--workers", "2", "--bind", LOCAL, "--grace", "1",
            stdout=write_end,
        )  # fmt: skip
    finally:
        os.close(write_end)
    procs.append(run)
    # Either it exits, or it keeps serving (then SIGTERM ends it): no traceback either way.
    run.wait_for("err", r"2 workers ready")
    try:
        run.popen.wait(5)  # its exit, if it exits (a SIGTERM sent at once could pre-empt it)
    except subprocess.TimeoutExpired:
        run.popen.send_signal(signal.SIGTERM)
    _rc, _out, err = run.finish()
    assert "Traceback" not in err, err
    assert not left_alive(started_pids(err))


# The command line with RLIMIT_NOFILE lowered: room for its listener and a
# few workers, not for the many it is asked to start.
_FEW_DESCRIPTORS = """\
import resource, sys
from trionet._launch import main

resource.setrlimit(resource.RLIMIT_NOFILE, (20, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
sys.exit(main(sys.argv[1:]))
"""


def test_running_out_of_descriptors_at_the_start_is_one_error_line(procs: list[Proc]) -> None:
    run = serve(
        procs, "echo", "--workers", "64", "--bind", LOCAL, "--grace", "1",
        invoke=("-c", _FEW_DESCRIPTORS),
    )  # fmt: skip
    rc, out, err = run.finish(2 * TIMEOUT)
    assert out == ""
    assert not left_alive(started_pids(err))  # every one reaped
    assert "Traceback" not in err, err
    assert rc == 1, err
    assert re.search(r"^trionet: error: .*Too many open files", err, re.M), err


def test_a_flag_value_starting_with_a_dash_reaches_the_workers(
    procs: list[Proc], tmp_path: Path, tls_cert: trustme.LeafCert
) -> None:
    tls_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "-cert.pem"))
    tls_cert.private_key_pem.write_to_path(str(tmp_path / "-key.pem"))
    run = serve(
        procs, "echo", "--workers", "1", "--bind", LOCAL, "--grace", "1",
        "--tls-cert=-cert.pem", "--tls-key=-key.pem", cwd=tmp_path,
    )  # fmt: skip
    run.wait_for("out", r"^workers: 1 ready")
    run.popen.send_signal(signal.SIGTERM)
    rc, _out, err = run.finish()
    assert rc == 0, err


async def test_a_restart_that_cannot_spawn_is_retried_and_recovers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="trionet.workers")
    with trio.fail_after(3 * TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor: trionet.Supervisor = await nursery.start(
                functools.partial(trionet.supervise, "echo", LOCAL, workers=2, grace=1)
            )
            victim, survivor = supervisor.pids
            with monkeypatch.context() as patch:
                patch.setattr(sys, "executable", "/nonexistent/python-for-trionet")
                os.kill(victim, signal.SIGKILL)
                await until(
                    lambda: any("could not be started" in r.getMessage() for r in caplog.records),
                    "logged the failed restart",
                )
            assert supervisor.pids == [survivor]  # the supervisor lives on, one worker short
            assert not supervisor.stopping
            await until(lambda: len(supervisor.pids) == 2, "back to 2 workers")
            assert victim not in supervisor.pids
            async with await trionet.connect(supervisor.addresses[0]) as conn:
                await conn.send_all(b"ping")
                assert await conn.receive_exactly(4) == b"ping"
            report = await supervisor.shutdown()
    message = next(
        r.getMessage() for r in caplog.records if "could not be started" in r.getMessage()
    )
    assert "nonexistent" in message and "trying again" in message
    assert (report.crashed, report.restarted) == (1, 1)


################################################################
# Workers that will not go
################################################################


@asynccontextmanager
async def forked_helper_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[tuple[trionet.Supervisor, int]]:
    """One worker whose handler module forked a helper holding the channel: (supervisor, helper).

    The helper is killed afterwards, whatever happened.
    """
    pidfile = tmp_path / "helper.pid"
    monkeypatch.setenv(FORK_PIDFILE, str(pidfile))
    helper = 0
    try:
        with trio.fail_after(3 * TIMEOUT):
            async with trio.open_nursery() as nursery:
                supervisor: trionet.Supervisor = await nursery.start(
                    functools.partial(
                        trionet.supervise, "hostile_workers:hello", LOCAL, workers=1, grace=0
                    )
                )
                helper = int(pidfile.read_text())
                assert alive(helper)
                yield supervisor, helper
    finally:
        if helper:
            kill_quietly(helper)


async def test_a_crash_is_noticed_though_a_forked_helper_holds_the_channel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with forked_helper_worker(monkeypatch, tmp_path) as (supervisor, helper):
        (victim,) = supervisor.pids
        os.kill(victim, signal.SIGKILL)
        # A restart is "at once": well under a second.
        restarted = await poll(lambda: supervisor.pids not in ([], [victim]), 3)
        kill_quietly(helper)  # let the supervisor go on either way
        assert restarted, "the dead worker was not noticed in 3 s"
        await supervisor.shutdown()


async def test_a_shutdown_is_not_held_by_a_forked_helper_of_a_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    async with forked_helper_worker(monkeypatch, tmp_path) as (supervisor, helper):
        (worker,) = supervisor.pids
        reports: list[trionet.SupervisorReport] = []

        async def shutdown() -> None:
            reports.append(await supervisor.shutdown())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(shutdown)  # shielded inside: it cannot be cut from here
            # The promise: done within grace (0) + KILL_AFTER.
            done = await poll(lambda: reports, KILL_AFTER + 1)
            worker_gone = not alive(worker)
            kill_quietly(helper)  # let the shutdown end either way
    assert worker_gone, "the worker did not drain"
    assert done, f"the shutdown took longer than grace + {KILL_AFTER}s"


async def test_a_stopped_worker_is_killed_at_shutdown_after_grace_and_kill_after() -> None:
    with trio.fail_after(3 * TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor: trionet.Supervisor = await nursery.start(
                functools.partial(trionet.supervise, "echo", LOCAL, workers=2, grace=0)
            )
            stopped, running = supervisor.pids
            os.kill(stopped, signal.SIGSTOP)
            started = trio.current_time()
            report = await supervisor.shutdown()
            took = trio.current_time() - started
    assert not alive(stopped) and not alive(running)
    assert KILL_AFTER - 0.5 < took < KILL_AFTER + 2, took
    assert report.unreported == 1  # the killed one sent no stats; the other did


################################################################
# Races and orphans
################################################################


async def test_a_restart_racing_a_reload_leaves_no_extra_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spawned: list[Worker] = []  # by the reload's spawn, then the restart's
    replacement_started = trio.Event()

    async def spawn(slot: int, command: object, fds: list[int]) -> Worker:
        if spawned:
            # The crash restart: its fork+exec (in a thread) takes longer than
            # the replacement needs to become ready -- a loaded machine.
            await spawned[0].ready.wait()
            await trio.testing.wait_all_tasks_blocked()
        worker = await real_spawn(slot, command, fds)
        spawned.append(worker)
        replacement_started.set()
        return worker

    with trio.fail_after(3 * TIMEOUT):
        async with trio.open_nursery() as nursery:
            supervisor: trionet.Supervisor = await nursery.start(
                functools.partial(trionet.supervise, "echo", LOCAL, workers=1, grace=1)
            )
            monkeypatch.setattr(_supervisor, "spawn", spawn)
            (first,) = supervisor.pids
            reloaded: list[bool] = []

            async def reload() -> None:
                reloaded.append(await supervisor.reload())

            nursery.start_soon(reload)
            await replacement_started.wait()
            os.kill(first, signal.SIGKILL)  # the old worker dies while its replacement starts
            await until(lambda: len(spawned) == 2 and spawned[1].ready.is_set(), "restarted")
            await until(lambda: reloaded, "reloaded")
            try:
                # The restart found its slot filled and drained its worker:
                # soon only the slot's worker runs.
                await until(
                    lambda: {w.pid for w in spawned if alive(w.pid)} == set(supervisor.pids),
                    "one worker per slot",
                )
            finally:
                await supervisor.shutdown()


def test_workers_orphaned_before_they_are_ready_exit_quietly(
    procs: list[Proc], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(IMPORT_DELAY, "0.5")  # the workers import for a while: a sure window
    run = serve(procs, "hostile_workers:hello", "--workers", "2", "--bind", LOCAL, "--grace", "1")
    run.wait_for("err", r"worker 2 \(pid \d+\) started")
    run.popen.kill()  # kill -9 while the workers are still importing
    rc, _out, err = run.finish()  # stderr's EOF: every worker has exited too
    assert rc == -signal.SIGKILL
    assert len(started_pids(err)) == 2
    assert not left_alive(started_pids(err))
    assert "Traceback" not in err, err


################################################################
# Bad input at call time
################################################################


@pytest.mark.parametrize("handler", ["-h", "--help"])
def test_a_handler_that_looks_like_a_flag_is_a_value_error(
    handler: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=r"supervise\(\)"):
        trio.run(functools.partial(trionet.supervise, handler, LOCAL, workers=1))
    assert capsys.readouterr().out == ""
