"""Load under fault: ``trionet serve --workers 2`` keeps serving through kill -9, SIGHUP, SIGTERM.

The supervisor is a real subprocess (``python -m trionet serve
workers_app:reply --workers 2``) on a real loopback port.  Eight client
tasks run short request/response exchanges against it -- connect, send a
line, read ``LINE PID``, close; the handler holds each for
``workers_app.DELAY`` so that exchanges are in flight when the fault hits --
and every exchange is recorded: when it started and connected, how it ended,
which worker pid answered.  ``ECONNREFUSED`` is counted apart from the other
failures.  The supervisor's log (stderr) is read as it comes, and the tests
wait for its lines (``ready``, ``reload: done``, ``exited``) rather than for
fixed times; the only fixed durations are how long the load runs.

Run with ``pytest -s`` to see each test's counts.
"""

from __future__ import annotations

import errno
import math
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio

import trionet

HERE = Path(__file__).resolve().parent
CLIENTS = 8
#: How long the load runs in each phase (the workload, not a synchronisation).
PHASE = 1.0
#: Bounds: one exchange, one awaited log line, one client's exchanges, one test.
EXCHANGE_TIMEOUT = 5.0
LINE_TIMEOUT = 15.0
MAX_PER_CLIENT = 2000
TEST_TIMEOUT = 40.0


# -- The supervisor subprocess and its output, line by line ------------------------------


@attrs.define
class Lines:
    """One output stream of the subprocess: its lines, each with the (Trio) time it arrived."""

    name: str
    lines: list[tuple[float, str]] = attrs.field(factory=list)
    closed: bool = False
    _changed: trio.Event = attrs.field(factory=trio.Event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        buffer = b""
        async for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            now = trio.current_time()
            self.lines.extend((now, raw.decode("utf-8", "replace")) for raw in complete)
            self._notify()
        self.closed = True
        self._notify()

    async def wait_for(self, pattern: str, start: int = 0) -> tuple[int, float, re.Match[str]]:
        """The first line from index ``start`` on that matches: (index, arrival time, match)."""
        index = start
        with trio.move_on_after(LINE_TIMEOUT):
            while True:
                while index < len(self.lines):
                    arrived, line = self.lines[index]
                    match = re.search(pattern, line)
                    if match:
                        return index, arrived, match
                    index += 1
                if self.closed:
                    break
                await self._changed.wait()
        raise AssertionError(f"no {self.name} line matching {pattern!r} in:\n{self.text()}")

    async def wait_closed(self) -> None:
        """Until end-of-file (the caller bounds the wait)."""
        while not self.closed:
            await self._changed.wait()

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


@attrs.define
class Served:
    """A running ``trionet serve --workers 2`` and what it printed."""

    process: trio.Process
    out: Lines
    err: Lines
    port: int = 0
    pids: tuple[int, ...] = ()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, timeout: float = LINE_TIMEOUT) -> int:
        """Wait (bounded) for the supervisor's exit and for the end of its output."""
        with trio.fail_after(timeout):
            code = await self.process.wait()
            await self.out.wait_closed()
            await self.err.wait_closed()
        return code

    def kill_leftover_workers(self) -> None:
        """SIGKILL every worker of ours the log says started and did not end, if still there."""
        log = self.err.text()
        started = {int(pid) for pid in re.findall(r"\(pid (\d+)\) started", log)}
        ended = {int(pid) for pid in re.findall(r"\(pid (\d+)\) (?:exited|killed)", log)}
        for pid in started - ended:
            try:
                if b"workers_app:" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (FileNotFoundError, ProcessLookupError):
                pass  # gone


@asynccontextmanager
async def serving(
    handler: str, *flags: str, inherit: socket.socket | None = None
) -> AsyncIterator[Served]:
    """Start the supervisor with 2 workers; yield once it printed ``workers: 2 ready``.

    Whatever the test did, nothing is left running afterwards: a supervisor
    still alive is killed, and so is every worker the log says started and
    did not end (a killed supervisor's workers would drain for their grace).
    """
    argv = [sys.executable, "-m", "trionet", "serve", handler, "--workers", "2"]
    bind = "tcp://127.0.0.1:0" if inherit is None else f"fd:{inherit.fileno()}"
    argv += ["--bind", bind, *flags]
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=HERE,
        pass_fds=() if inherit is None else (inherit.fileno(),),
    )
    if inherit is not None:
        inherit.close()  # the supervisor's now: ours would keep it listening
    assert process.stdout is not None and process.stderr is not None
    served = Served(process, Lines("stdout"), Lines("stderr"))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(served.out.pump, process.stdout)
            nursery.start_soon(served.err.pump, process.stderr)
            _, _, match = await served.out.wait_for(r"^listening on (\S+)$")
            address = trionet.parse_address(match[1])
            assert isinstance(address, trionet.TCPAddress)
            served.port = address.port
            _, _, match = await served.out.wait_for(r"^workers: 2 ready \(pids (\d+) (\d+)\)$")
            served.pids = (int(match[1]), int(match[2]))
            yield served
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
        served.kill_leftover_workers()


def final_report(out: str) -> dict[str, str]:
    """The exit lines: ``shutdown:``, ``stats:`` and the last ``workers:``, as one dict."""
    report: dict[str, str] = {}
    for prefix in ("shutdown", "stats", "workers"):
        lines = [line for line in out.splitlines() if line.startswith(prefix + ": ")]
        assert lines, out
        for item in lines[-1].removeprefix(prefix + ": ").split():
            key, _, value = item.partition("=")
            report[f"{prefix}.{key}"] = value
    return report


# -- The load: request/response exchanges from CLIENTS tasks -----------------------------


@attrs.define
class Exchange:
    """One connect-request-reply-close, as a client saw it (times on Trio's clock)."""

    client: int
    started: float
    connected: float = math.inf
    ended: float = math.inf
    pid: int | None = None
    #: None: the full reply came.  "refused": ECONNREFUSED.  Else what went wrong.
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@attrs.define
class Load:
    """CLIENTS tasks, each doing one exchange after another until :meth:`stop`."""

    port: int
    exchanges: list[Exchange] = attrs.field(factory=list)
    stopping: bool = False

    def stop(self) -> None:
        self.stopping = True

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for client in range(CLIENTS):
                nursery.start_soon(self._client, client)

    async def _client(self, client: int) -> None:
        for number in range(MAX_PER_CLIENT):
            if self.stopping:
                return
            exchange = Exchange(client, trio.current_time())
            self.exchanges.append(exchange)
            await self._exchange(exchange, f"c{client}-{number}".encode())
            exchange.ended = trio.current_time()
            if exchange.error == "refused":
                await trio.sleep(0.01)  # back-off: a refusing port answers at once

    async def _exchange(self, exchange: Exchange, request: bytes) -> None:
        with trio.socket.socket() as sock:
            try:
                with trio.fail_after(EXCHANGE_TIMEOUT):
                    try:
                        await sock.connect(("127.0.0.1", self.port))
                    except OSError as exc:
                        refused = exc.errno == errno.ECONNREFUSED
                        exchange.error = "refused" if refused else f"connect: {exc!r}"
                        return
                    exchange.connected = trio.current_time()
                    assert await sock.send(request + b"\n") == len(request) + 1
                    reply = b""
                    while not reply.endswith(b"\n"):
                        chunk = await sock.recv(4096)
                        if not chunk:
                            exchange.error = f"eof after {reply!r}"
                            return
                        reply += chunk
            except trio.TooSlowError:
                exchange.error = "timeout"
                return
            except OSError as exc:
                exchange.error = errno.errorcode.get(exc.errno or 0, repr(exc))
                return
        line, _, pid = reply.rstrip(b"\n").partition(b" ")
        if line != request or not pid.isdigit():
            exchange.error = f"bad reply {reply!r} to {request!r}"
            return
        exchange.pid = int(pid)

    def counts(self, selected: list[Exchange] | None = None) -> dict[str, int]:
        exchanges = self.exchanges if selected is None else selected
        refused = sum(e.error == "refused" for e in exchanges)
        ok = sum(e.ok for e in exchanges)
        return {
            "exchanges": len(exchanges),
            "ok": ok,
            "failed": len(exchanges) - ok - refused,
            "refused": refused,
        }


@asynccontextmanager
async def loaded(port: int) -> AsyncIterator[Load]:
    """Run a :class:`Load` against ``port`` for the block; stop it (in-flight ones end) at exit."""
    load = Load(port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(load.run)
        yield load
        load.stop()


def failures(load: Load) -> list[Exchange]:
    return [e for e in load.exchanges if not e.ok and e.error != "refused"]


# -- The tests ---------------------------------------------------------------------------


async def test_kill_9_of_a_worker_under_load_refuses_nothing_and_replaces_it() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving("workers_app:reply") as served:
            victim, survivor = served.pids
            async with loaded(served.port) as load:
                await trio.sleep(PHASE)
                mark = len(served.err.lines)
                killed_at = trio.current_time()
                os.kill(victim, signal.SIGKILL)
                killed = (
                    rf"worker (\d+) \(pid {victim}\) killed by SIGKILL unasked: restarting at once"
                )
                index, reaped_at, match = await served.err.wait_for(killed, mark)
                slot = match[1]
                _, ready_at, match = await served.err.wait_for(
                    rf"worker {slot} \(pid (\d+)\) ready after", index
                )
                new_pid = int(match[1])
                await trio.sleep(PHASE)
            served.signal(signal.SIGTERM)
            assert await served.exit_code() == 0, served.err.text()
            report = final_report(served.out.text())

    counts = load.counts()
    after = [e for e in load.exchanges if e.started > ready_at]
    from_new = sorted(e.ended for e in load.exchanges if e.pid == new_pid)
    first_reply = from_new[0] - killed_at if from_new else math.inf
    print(
        f"\n[kill -9] {counts}; replacement pid {new_pid} ready "
        f"{ready_at - killed_at:.3f}s after the kill, its first reply after {first_reply:.3f}s; "
        f"after it: {load.counts(after)}, {len(from_new)} replies from the new pid; "
        f"failures: {[e.error for e in failures(load)]}"
    )
    assert counts["refused"] == 0
    assert counts["failed"] <= CLIENTS  # each client had at most one exchange in flight
    for exchange in failures(load):
        # Only exchanges the victim had accepted (so connected before it was reaped) fail.
        assert exchange.connected < reaped_at, exchange
        assert exchange.ended > killed_at, exchange
    assert new_pid not in (victim, survivor)
    assert from_new  # the replacement serves
    assert ready_at - killed_at < 5.0  # restarted at once: a worker's start-up, not a back-off
    # The load went on, served by the survivor and the replacement, and never by the victim.
    assert load.counts(after)["ok"] == len(after) > 0
    assert {e.pid for e in after} <= {survivor, new_pid}
    assert {e.pid for e in load.exchanges if e.started > reaped_at} <= {survivor, new_pid, None}
    assert (report["workers.started"], report["workers.crashed"]) == ("3", "1")
    assert (report["workers.restarted"], report["workers.unreported"]) == ("1", "1")


async def test_sighup_reload_under_load_fails_no_exchange() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving("workers_app:reply") as served:
            old = set(served.pids)
            async with loaded(served.port) as load:
                await trio.sleep(PHASE)
                mark = len(served.err.lines)
                hup_at = trio.current_time()
                served.signal(signal.SIGHUP)
                _, done_at, _ = await served.err.wait_for(r"reload: done, 2 workers replaced", mark)
                gone_at = done_at  # and once both old workers have exited:
                for pid in old:
                    exited = rf"\(pid {pid}\) exited with status 0"
                    gone_at = max(gone_at, (await served.err.wait_for(exited, mark))[1])
                await trio.sleep(PHASE)
            log = "\n".join(line for _, line in served.err.lines[mark:])
            new = {int(pid) for pid in re.findall(r"replaced by worker \d+ \(pid (\d+)\)", log)}
            served.signal(signal.SIGTERM)
            assert await served.exit_code() == 0, served.err.text()
            report = final_report(served.out.text())

    counts = load.counts()
    across = [e for e in load.exchanges if e.started < gone_at and e.ended > hup_at]
    after = [e for e in load.exchanges if e.started > gone_at]
    print(
        f"\n[SIGHUP] {counts}; reload done {done_at - hup_at:.3f}s after SIGHUP, old workers "
        f"gone after {gone_at - hup_at:.3f}s; across the reload: {load.counts(across)}; "
        f"after it: {load.counts(after)} from pids {sorted({e.pid for e in after if e.pid})}; "
        f"failures: {[e.error for e in failures(load)]}"
    )
    assert counts["failed"] == 0
    assert counts["refused"] == 0
    assert len(new) == 2 and not new & old
    assert len(after) > 0
    assert {e.pid for e in after} <= new  # neither old pid answers once they are gone
    assert load.counts(across)["ok"] == len(across) > 0
    assert report["workers.reloads"] == "1/1"
    assert (report["workers.started"], report["workers.crashed"]) == ("4", "0")
    assert report["workers.unreported"] == "0"
    # Every exchange was accepted once, by a worker that reported its stats.
    assert int(report["stats.accepted"]) == counts["exchanges"]


async def test_a_sighup_storm_under_load_is_at_most_two_reloads_and_fails_nothing() -> None:
    """Found by hostile testing: each SIGHUP queued a reload of its own, so a storm
    replaced every worker once per signal.  Requests made while one waits now join it."""
    with trio.fail_after(TEST_TIMEOUT):
        async with serving("workers_app:reply") as served:
            async with loaded(served.port) as load:
                await trio.sleep(PHASE / 2)
                mark = len(served.err.lines)
                for _ in range(10):
                    served.signal(signal.SIGHUP)
                await served.err.wait_for(r"reload: done, 2 workers replaced", mark)
                await trio.sleep(PHASE / 2)
            served.signal(signal.SIGTERM)
            assert await served.exit_code() == 0, served.err.text()
            report = final_report(served.out.text())
    counts = load.counts()
    print(f"\n[SIGHUP x10] {counts}; reloads {report['workers.reloads']}")
    assert counts["failed"] == counts["refused"] == 0
    done, asked = report["workers.reloads"].split("/")
    assert done == asked and 1 <= int(asked) <= 2
    assert int(report["workers.started"]) == 2 + 2 * int(done)


async def test_sigterm_under_load_completes_every_connected_exchange() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving("workers_app:reply") as served:
            async with loaded(served.port) as load:
                await trio.sleep(PHASE)
                signalled_at = trio.current_time()
                served.signal(signal.SIGTERM)
                code = await served.exit_code()
                exited_at = trio.current_time()
            report = final_report(served.out.text())
            err = served.err.text()
        # Nothing listens any more: a connect is refused.
        with trio.socket.socket() as sock:
            try:
                await sock.connect(("127.0.0.1", served.port))
            except ConnectionRefusedError:
                refused_after_exit = True
            else:
                refused_after_exit = False

    before = [e for e in load.exchanges if e.connected < signalled_at]
    later = [e for e in load.exchanges if e.connected >= signalled_at]
    print(
        f"\n[SIGTERM] {load.counts()}; exited {exited_at - signalled_at:.3f}s after SIGTERM; "
        f"connected before it: {load.counts(before)}; not before it: {load.counts(later)}; "
        f"failures: {[e.error for e in failures(load)]}; "
        f"{report['shutdown.finished']} finished in the drain, {report['shutdown.swept']} swept"
    )
    assert code == 0, err
    assert before and load.counts(before)["ok"] == len(before)
    # Later connects are refused, never accepted by the kernel and then reset.
    assert load.counts()["failed"] == 0, failures(load)
    assert refused_after_exit
    assert report["shutdown.cancelled"] == "0"
    assert (report["workers.crashed"], report["workers.unreported"]) == ("0", "0")


async def read_line(sock: trio.socket.SocketType) -> bytes:
    """One ``\\n``-terminated line (or what came before EOF), within EXCHANGE_TIMEOUT."""
    data = b""
    with trio.fail_after(EXCHANGE_TIMEOUT):
        while not data.endswith(b"\n"):
            chunk = await sock.recv(1)
            if not chunk:
                break
            data += chunk
    return data


async def stuck_clients(served: Served, count: int) -> dict[int, list[trio.socket.SocketType]]:
    """Connect ``count`` clients to ``stuck`` handlers; the sockets by the pid holding them."""
    held: dict[int, list[trio.socket.SocketType]] = {}
    for _ in range(count):
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", served.port))
        ack = await read_line(sock)
        assert ack.startswith(b"ack "), ack
        held.setdefault(int(ack.split()[1]), []).append(sock)
    return held


async def test_a_second_sigterm_cuts_the_grace() -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with serving("workers_app:stuck", "--grace", "30") as served:
            held = await stuck_clients(served, 4)
            clients = [sock for socks in held.values() for sock in socks]
            mark = len(served.err.lines)
            signalled_at = trio.current_time()
            served.signal(signal.SIGTERM)
            await served.err.wait_for(r"shutdown: draining 2 workers \(grace 30.0s\)", mark)
            served.signal(signal.SIGTERM)
            code = await served.exit_code(timeout=10)
            elapsed = trio.current_time() - signalled_at
            report = final_report(served.out.text())
            ends = []
            for sock in clients:
                ends.append((await read_line(sock), await read_line(sock)))
                sock.close()
            err = served.err.text()

    print(
        f"\n[second SIGTERM] {len(clients)} stuck exchanges on {len(held)} workers; "
        f"exit {code} {elapsed:.3f}s after the first SIGTERM (grace 30s)"
    )
    assert code == 0, err
    assert elapsed < 10
    assert "received SIGTERM again: cutting the grace" in err
    # Told of the drain, then cancelled and their connections closed.
    assert ends == [(b"draining\n", b"")] * len(clients)
    assert report["shutdown.cancelled"] == str(len(clients))
    assert report["workers.unreported"] == "0"


@pytest.mark.parametrize("bind", ["tcp", "inherited"])
async def test_a_connect_after_every_worker_stopped_accepting_is_refused(bind: str) -> None:
    """Found by this file: the supervisor (and each worker's inherited original
    descriptor) kept the listening socket open through the drain, so a late
    connect completed its handshake and was reset at exit instead of refused.
    The supervisor now closes its copies when the shutdown starts, and a worker
    closes its inherited originals once it has adopted them -- and so does a
    supervisor started with an inherited socket (``--bind fd:N``)."""
    inherit = None
    if bind == "inherited":
        inherit = socket.socket()
        inherit.bind(("127.0.0.1", 0))
        inherit.listen()
    with trio.fail_after(TEST_TIMEOUT):
        async with serving("workers_app:stuck", "--grace", "30", inherit=inherit) as served:
            held = await stuck_clients(served, 1)
            mark = len(served.err.lines)
            served.signal(signal.SIGTERM)
            for pid in served.pids:
                if pid in held:  # it closed its copy of the listening socket before saying so
                    assert await read_line(held[pid][0]) == b"draining\n"
                else:  # an idle worker drains at once, and exits
                    await served.err.wait_for(rf"\(pid {pid}\) exited with status 0", mark)
            with trio.socket.socket() as late:
                try:
                    with trio.fail_after(EXCHANGE_TIMEOUT):
                        await late.connect(("127.0.0.1", served.port))
                except ConnectionRefusedError:
                    outcome = "refused"
                else:
                    outcome = "connected"
                served.signal(signal.SIGTERM)  # cut the grace
                assert await served.exit_code(timeout=10) == 0
                if outcome == "connected":
                    with trio.fail_after(EXCHANGE_TIMEOUT):
                        try:
                            outcome += f", then read {await late.recv(100)!r}"
                        except OSError as exc:
                            outcome += f", then {errno.errorcode.get(exc.errno or 0, exc)}"
            for sock in (sock for socks in held.values() for sock in socks):
                sock.close()
    print(f"\n[connect after the workers stopped accepting] {outcome}")
    assert outcome == "refused"
