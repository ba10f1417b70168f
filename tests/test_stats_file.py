"""The stats file: ``stats_snapshot``, ``write_stats`` and ``trionet serve --stats-file``.

In process, a real server on loopback and real clients: what a snapshot
holds and how it moves, and ``write_stats`` -- its first write before it
reports, atomic rewrites (a reader never sees half a file), the last
snapshot after the stop, write failures that never stop the server, and
its argument checks.  The command line runs as real subprocesses
(``cliproc``), alone and with ``--workers 2`` (the supervisor writes every
worker's snapshot, and their sums).  Every wait polls with a bounded
deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import os
import re
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from cliproc import TIMEOUT, CLIProcess, Start, assert_one_error_line
from procs import marked_processes

import trionet
from trionet._stats_file import periodic_json, write_json
from trionet._workers._channel import ChannelError, LineDecoder
from trionet.testing import wait_until

LOCAL = "tcp://127.0.0.1:0"
TOKEN_VAR = "TRIONET_TEST_WORKERS_RUN"
READY = re.compile(r"workers: (\d+) ready \(pids ([\d ]+)\)")
STATS_FIELDS = {field.name for field in attrs.fields(trionet.ServerStats)}
SNAPSHOT_KEYS = {
    "pid",
    "time",
    "descriptors",
    "tasks",
    "rss_kib",
    "connections",
    "draining",
    "stopped",
    "stats",
}

################################################################
# Helpers
################################################################


async def hold(conn: trionet.Connection) -> None:
    """Say ``hi``, then hold the connection until the client closes it."""
    await conn.send_all(b"hi\n")
    while await conn.receive_some():
        pass


async def start_server(nursery: trio.Nursery) -> trionet.Server:
    server: trionet.Server = await nursery.start(functools.partial(trionet.serve, hold, LOCAL))
    return server


def port(server: trionet.Server) -> int:
    address = server.addresses[0]
    assert isinstance(address, trionet.TCPAddress)
    return address.port


async def visit(server: trionet.Server) -> None:
    """One client: connect, read ``hi``, close."""
    stream = await trio.open_tcp_stream("127.0.0.1", port(server))
    async with stream:
        data = b""
        with trio.fail_after(TIMEOUT):
            while not data.endswith(b"\n"):
                chunk = await stream.receive_some()
                assert chunk, data
                data += chunk
        assert data == b"hi\n"


def read_json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(value, dict)
    return value


def poll_file(
    path: Path, predicate: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
) -> dict[str, Any]:
    """Read ``path`` until ``predicate`` holds for its snapshot (bounded); that snapshot."""
    deadline = time.monotonic() + timeout
    value: dict[str, Any] | None = None
    for _ in range(100_000):
        value = read_json(path)
        if predicate(value) or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # a polling period, not synchronisation
    assert value is not None and predicate(value), value
    return value


def temporaries(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp"))  # .x.tmp too


def assert_snapshot_shape(snap: dict[str, Any]) -> None:
    assert set(snap) == SNAPSHOT_KEYS, snap
    assert snap["pid"] == os.getpid()
    assert isinstance(snap["time"], float) and abs(snap["time"] - time.time()) < 60
    for key in ("descriptors", "tasks", "rss_kib", "connections"):
        assert type(snap[key]) is int, (key, snap)
    assert snap["rss_kib"] > 0 and snap["tasks"] > 0 and snap["descriptors"] > 0
    assert type(snap["draining"]) is bool and type(snap["stopped"]) is bool
    assert set(snap["stats"]) == STATS_FIELDS
    assert all(type(value) is int for value in snap["stats"].values()), snap["stats"]
    json.dumps(snap, allow_nan=False)  # JSON-ready as it is


################################################################
# stats_snapshot
################################################################


async def test_snapshot_keys_and_how_they_move(nursery: trio.Nursery) -> None:
    server = await start_server(nursery)
    idle = trionet.stats_snapshot(server)
    assert_snapshot_shape(idle)
    assert (idle["connections"], idle["draining"], idle["stopped"]) == (0, False, False)
    assert idle["stats"]["accepted"] == 0
    assert idle["stats"] == attrs.asdict(server.stats)

    # The client's socket exists before the reading: what rises after is the server's.
    client = trio.socket.socket()
    try:
        before = trionet.stats_snapshot(server)
        await client.connect(("127.0.0.1", port(server)))
        assert await client.recv(3) == b"hi\n"  # the handler runs
        busy = trionet.stats_snapshot(server)
        assert_snapshot_shape(busy)
        assert busy["connections"] == 1
        assert (busy["stats"]["accepted"], busy["stats"]["active"]) == (1, 1)
        assert busy["descriptors"] >= before["descriptors"] + 1, (before, busy)
        assert busy["tasks"] > before["tasks"], (before, busy)
    finally:
        client.close()
    await wait_until(lambda: not server.connections and server.stats.closed == 1)
    done = trionet.stats_snapshot(server)
    assert done["connections"] == 0
    assert (done["stats"]["accepted"], done["stats"]["active"], done["stats"]["closed"]) == (
        1,
        0,
        1,
    )
    assert done["descriptors"] < busy["descriptors"]
    assert done["tasks"] < busy["tasks"]
    await server.shutdown()
    stopped = trionet.stats_snapshot(server)
    assert stopped["stopped"] is True and stopped["stats"]["accepted"] == 1


################################################################
# write_stats in process
################################################################


async def test_first_snapshot_is_written_before_start_returns(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery)
    path = tmp_path / "stats.json"
    await nursery.start(functools.partial(trionet.write_stats, server, path, interval=60))
    snap = read_json(path)
    assert_snapshot_shape(snap)
    assert snap["stopped"] is False and snap["stats"]["accepted"] == 0
    assert temporaries(tmp_path) == []
    await server.shutdown()


def hammer(path: Path, reads: int, distinct: int, timeout: float) -> tuple[int, set[float]]:
    """Read and parse ``path`` ``reads`` times at least, until ``distinct`` snapshots were seen."""
    seen: set[float] = set()
    count = 0
    deadline = time.monotonic() + timeout
    while count < 1_000_000 and time.monotonic() < deadline:
        if count >= reads and len(seen) >= distinct:
            break
        text = path.read_text(encoding="utf-8")  # never missing: os.replace is atomic
        assert text.endswith("}\n"), text
        seen.add(json.loads(text)["time"])  # never a JSONDecodeError
        count += 1
    return count, seen


async def test_the_file_is_whole_whenever_it_is_read(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = await start_server(nursery)
    path = tmp_path / "stats.json"
    await nursery.start(functools.partial(trionet.write_stats, server, path, interval=0.01))
    count, seen = await trio.to_thread.run_sync(hammer, path, 500, 20, 2 * TIMEOUT)
    assert count >= 500
    assert len(seen) >= 20, "it was not rewritten while being read"
    await server.shutdown()


async def test_after_the_shutdown_the_last_snapshot_says_stopped(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery)
    path = tmp_path / "stats.json"
    async with trio.open_nursery() as writer:
        await writer.start(functools.partial(trionet.write_stats, server, path, interval=60))
        for _ in range(3):
            await visit(server)
        await wait_until(lambda: server.stats.closed == 3)
        assert read_json(path)["stats"]["accepted"] == 0  # no write in between (60 s)
        with trio.fail_after(TIMEOUT):
            await server.shutdown()
            # write_stats returns by itself once the server has stopped (the
            # nursery's exit waits for it).
    snap = read_json(path)
    assert_snapshot_shape(snap)
    assert snap["stopped"] is True and snap["connections"] == 0
    assert snap["stats"] == attrs.asdict(server.stats)
    assert (snap["stats"]["accepted"], snap["stats"]["closed"]) == (3, 3)
    assert os.listdir(tmp_path) == ["stats.json"]  # no temporary file left


async def test_a_write_failure_is_a_warning_and_writing_resumes(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trionet.stats")
    server = await start_server(nursery)
    directory = tmp_path / "run"
    directory.mkdir()
    path = directory / "stats.json"
    await nursery.start(functools.partial(trionet.write_stats, server, path, interval=0.02))

    def warnings() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "trionet.stats" and "cannot write the stats file" in r.getMessage()
        ]

    assert warnings() == []
    # Take the directory away (renamed, then removed: a write in flight
    # can only put its temporary file into the renamed one).
    gone = tmp_path / "gone"
    directory.rename(gone)
    await wait_until(lambda: bool(warnings()), timeout=TIMEOUT)
    for name in os.listdir(gone):
        (gone / name).unlink()
    gone.rmdir()
    (record, *_) = warnings()
    assert record.levelno == logging.WARNING
    assert str(path) in record.getMessage()
    # The server keeps serving, with the writer still running.
    await visit(server)
    assert not server.stopped and server.stats.accepted == 1
    # The directory comes back: so does the file, with the counts since.
    directory.mkdir()
    await wait_until(lambda: path.exists(), timeout=TIMEOUT)
    snap = await trio.to_thread.run_sync(
        poll_file, path, lambda s: s["stats"]["accepted"] == 1, TIMEOUT
    )
    assert snap["stopped"] is False
    await server.shutdown()
    await wait_until(lambda: read_json(path)["stopped"] is True, timeout=TIMEOUT)
    assert temporaries(directory) == []


@pytest.mark.parametrize(
    ("path", "error", "fragment"),
    [
        (5, TypeError, "path must be a str or os.PathLike, not int"),
        (b"stats.json", TypeError, "not bytes"),
        ("", ValueError, "must name a file"),
        ("missing/stats.json", ValueError, "no directory"),
        ("", ValueError, "is a directory"),  # the test's directory itself
        ("a\0b.json", ValueError, "must name a file"),
        ("newdir/", ValueError, "must name a file"),
    ],
    ids=["int", "bytes", "empty", "missing-directory", "a-directory", "nul", "trailing-slash"],
)
async def test_a_bad_path_is_refused_before_anything_is_written(
    nursery: trio.Nursery,
    tmp_path: Path,
    path: object,
    error: type[Exception],
    fragment: str,
) -> None:
    server = await start_server(nursery)
    if fragment == "is a directory":
        path = tmp_path
    elif isinstance(path, str) and path:
        path = os.path.join(tmp_path, path)  # a str: Path would drop a trailing slash
    with pytest.raises(error) as info:
        await trionet.write_stats(server, path, interval=0.01)  # type: ignore[arg-type]
    assert str(info.value).startswith("write_stats(): "), info.value
    assert fragment in str(info.value), info.value
    assert os.listdir(tmp_path) == []
    assert server.stats.accepted == 0 and not server.stopped
    await server.shutdown()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "device"])
async def test_a_path_that_is_not_a_regular_file_is_refused(
    nursery: trio.Nursery, tmp_path: Path, kind: str
) -> None:
    """Found by hostile review: the atomic rename replaced whatever was at the
    path -- as root, ``--stats-file /dev/null`` would have replaced /dev/null."""
    server = await start_server(nursery)
    path = tmp_path / "stats.json"
    target = tmp_path / "target"
    target.write_text("keep me")
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    before = os.lstat(path)
    with pytest.raises(ValueError, match="it would be replaced"):
        await trionet.write_stats(server, path, interval=1.0)
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert target.read_text() == "keep me"
    await server.shutdown()


async def test_two_writers_of_one_path_never_show_a_torn_file(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Found by hostile review: two writers in one process shared one temporary
    name (``PATH.PID.tmp``), and readers saw broken JSON.  The temporary file
    is now ``mkstemp``'s: exclusive, unguessable, one per write."""
    path = tmp_path / "stats.json"
    for _ in range(2):
        server = await start_server(nursery)
        await nursery.start(functools.partial(trionet.write_stats, server, path, interval=0.01))
    count, seen = await trio.to_thread.run_sync(hammer, path, 2000, 40, 20.0)
    assert count >= 2000 and len(seen) >= 40


async def test_a_planted_symlink_is_never_followed(tmp_path: Path) -> None:
    """Found by hostile review: the temporary name was predictable and opened
    through symlinks, so whoever could write the directory could make the
    server overwrite any file.  Every name an old writer would have used is
    planted here; the victim stays intact."""
    victim = tmp_path / "victim"
    victim.write_text("SECRET")
    path = tmp_path / "stats.json"
    (tmp_path / f"stats.json.{os.getpid()}.tmp").symlink_to(victim)
    write_json(str(path), {"a": 1})
    assert victim.read_text() == "SECRET"
    assert json.loads(path.read_text()) == {"a": 1} and not path.is_symlink()


async def test_a_value_that_is_not_json_is_a_warning(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by hostile review: a NaN in a snapshot (a worker's, say) raised
    ValueError out of the writer and stopped the supervisor."""
    path = tmp_path / "stats.json"
    nursery.start_soon(periodic_json, str(path), lambda: {"x": math.nan}, 0.01)
    await wait_until(lambda: "cannot write the stats file" in caplog.text, timeout=10)
    await wait_until(lambda: caplog.text.count("cannot write the stats file") >= 2, timeout=10)
    assert not path.exists()  # nothing half-written; and the writer keeps going


def test_a_worker_cannot_send_nan_on_its_channel() -> None:
    with pytest.raises(ChannelError, match="not JSON"):
        LineDecoder().feed(b'{"event":"stats","snapshot":{"x":NaN}}\n')


async def test_an_interval_below_the_minimum_is_refused(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await start_server(nursery)
    with pytest.raises(ValueError, match=r"interval must be >= 0\.01"):
        await trionet.write_stats(server, tmp_path / "s.json", interval=1e-9)
    assert os.listdir(tmp_path) == []
    await server.shutdown()


@pytest.mark.parametrize(
    ("interval", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
    ids=["zero", "negative", "nan", "inf", "str", "bool"],
)
async def test_a_bad_interval_is_refused_before_anything_is_written(
    nursery: trio.Nursery, tmp_path: Path, interval: object, error: type[Exception]
) -> None:
    server = await start_server(nursery)
    with pytest.raises(error) as info:
        await trionet.write_stats(server, tmp_path / "stats.json", interval=interval)  # type: ignore[arg-type]
    assert str(info.value).startswith("write_stats(): "), info.value
    assert os.listdir(tmp_path) == []
    await server.shutdown()


################################################################
# trionet serve --stats-file (one process)
################################################################


def final_line(out: str, name: str) -> dict[str, int]:
    """The ``name: k=v ...`` line of the final report, as integers."""
    match = re.search(rf"^{name}: (.*=.*)$", out, re.M)
    assert match, out
    return {k: int(v) for k, v in (item.split("=", 1) for item in match.group(1).split())}


def clients(address: trionet.Address, count: int) -> list[bytes]:
    """``count`` clients one after another: what each first read."""
    assert isinstance(address, trionet.TCPAddress)
    got = []
    for _ in range(count):
        with socket.create_connection((address.host, address.port), timeout=TIMEOUT) as sock:
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(64)
                assert chunk, data
                data += chunk
            got.append(data)
    return got


def test_cli_writes_the_file_before_listening_and_a_last_one_at_exit(
    cli: Start, tmp_path: Path
) -> None:
    path = tmp_path / "stats.json"
    proc = cli(
        "serve", "daytime", "--bind", LOCAL, "--stats-file", str(path), "--stats-interval", "30"
    )
    (address,) = proc.listening()
    # Written before "listening on" (the next write would be in 30 s).
    first = read_json(path)
    assert first["pid"] == proc.popen.pid
    assert first["stopped"] is False and first["stats"]["accepted"] == 0
    assert set(first) == SNAPSHOT_KEYS
    assert len(clients(address, 3)) == 3
    rc, out, err = proc.stop(signal.SIGTERM)
    assert rc == 0, err
    last = read_json(path)
    printed = final_line(out, "stats")
    assert last["stopped"] is True and last["connections"] == 0
    assert last["stats"] == printed
    assert printed["accepted"] == 3
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--stats-interval", "1"), ("--stats-interval needs --stats-file",)),
        (("--stats-file", "/nonexistent/dir/x.json"), ("--stats-file", "/nonexistent/dir")),
    ],
    ids=["interval-alone", "missing-directory"],
)
def test_cli_stats_usage_errors_are_one_line(
    cli: Start, args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    proc = cli("serve", "echo", "--bind", LOCAL, *args)
    rc, out, err = proc.finish()
    assert rc == 2, (out, err)
    assert out == ""  # never listened
    assert_one_error_line(err, *fragments)


################################################################
# trionet serve --workers 2 --stats-file
################################################################


@pytest.fixture
def workers_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Workers find ``workers_handlers``; none of this test's processes survives it."""
    with marked_processes(monkeypatch, TOKEN_VAR, 2 * TIMEOUT):
        yield


def ready_pids(proc: CLIProcess) -> list[int]:
    line = proc.line()
    assert line is not None, proc.finish()
    match = READY.fullmatch(line.strip())
    assert match, line
    return [int(pid) for pid in match.group(2).split()]


def worker_pids(snap: dict[str, Any]) -> list[int]:
    return [worker["pid"] for worker in snap["workers"]]


def all_reporting(snap: dict[str, Any]) -> bool:
    """Every worker ready and has sent a snapshot of its own."""
    return all(w["state"] == "ready" and "stats" in w for w in snap["workers"])


@pytest.mark.usefixtures("workers_env")
def test_workers_stats_file(cli: Start, tmp_path: Path) -> None:
    path = tmp_path / "stats.json"
    proc = cli(
        "serve",
        "workers_handlers:pid",
        "--workers",
        "2",
        "--bind",
        LOCAL,
        "--stats-file",
        str(path),
        "--stats-interval",
        "0.2",
    )
    (address,) = proc.listening()
    pids = ready_pids(proc)
    assert len(set(pids)) == 2

    # Both workers listed, with their pids, each with its own snapshot.
    snap = poll_file(path, lambda s: len(s["workers"]) == 2 and all_reporting(s))
    assert snap["supervisor"] is True and snap["pid"] == proc.popen.pid
    assert snap["stopped"] is False
    assert sorted(worker_pids(snap)) == sorted(pids)
    assert [w["slot"] for w in snap["workers"]] == [1, 2]
    for worker in snap["workers"]:
        assert set(worker["stats"]) == STATS_FIELDS
        assert worker["stats"]["accepted"] == 0
        assert type(worker["tasks"]) is int and worker["tasks"] > 0
    assert snap["totals"]["accepted"] == 0

    # Connections: the totals, and each worker's own count, catch up.
    served = collections.Counter(int(line) for line in clients(address, 6))
    assert set(served) <= set(pids)
    snap = poll_file(
        path,
        lambda s: (
            s["totals"]["accepted"] == 6
            and all(w["stats"]["accepted"] == served[w["pid"]] for w in s["workers"])
        ),
    )
    assert sorted(worker_pids(snap)) == sorted(pids)
    before = snap["totals"]["accepted"]

    # A reload: new workers in the file, and the totals never go back.
    proc.popen.send_signal(signal.SIGHUP)
    reads = []

    def replaced(s: dict[str, Any]) -> bool:
        reads.append(s["totals"]["accepted"])
        return (
            len(s["workers"]) == 2
            and not set(worker_pids(s)) & set(pids)
            and all_reporting(s)
            and s["reloads_done"] == 1
        )

    snap = poll_file(path, replaced, 3 * TIMEOUT)
    assert min(reads) >= before, reads
    assert snap["totals"]["accepted"] >= before
    assert snap["exited"]["accepted"] == before  # the old workers' final counts
    new_pids = worker_pids(snap)
    served_new = [int(line) for line in clients(address, 2)]
    assert set(served_new) <= set(new_pids)

    # The stop: a last file, no workers, sums equal to the printed stats.
    proc.popen.send_signal(signal.SIGTERM)
    rc, out, err = proc.finish(2 * TIMEOUT)
    assert rc == 0, err
    printed = final_line(out, "stats")
    assert printed["accepted"] == before + 2
    last = read_json(path)
    assert last["stopped"] is True and last["workers"] == []
    assert last["totals"]["accepted"] == last["exited"]["accepted"] == printed["accepted"]
    assert last["totals"] == printed
    assert temporaries(tmp_path) == []


@pytest.mark.usefixtures("workers_env")
def test_workers_a_stats_file_that_cannot_be_written_spoils_no_exit(
    cli: Start, tmp_path: Path
) -> None:
    """Found by review: the supervisor's last write, after the stop, was not
    guarded -- a removed directory turned a clean drain into a traceback and
    exit 1, with no report."""
    directory = tmp_path / "stats"
    directory.mkdir()
    path = directory / "stats.json"
    proc = cli(
        "serve", "echo", "--workers", "1", "--bind", LOCAL,
        "--stats-file", str(path), "--stats-interval", "0.1",
    )  # fmt: skip
    proc.listening()
    ready_pids(proc)
    read_json(path)
    directory.rename(tmp_path / "gone")  # every later write fails
    rc, out, err = proc.stop(signal.SIGTERM)
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert "cannot write the stats file" in err
    assert re.search(r"^workers: started=1 ", out, re.M), out


async def test_not_a_server_is_refused_naming_the_call(tmp_path: Path) -> None:
    # Found by review: write_stats(None, path) raised a bare AttributeError.
    with pytest.raises(TypeError, match=r"write_stats\(\): server must be a trionet.Server"):
        await trionet.write_stats(None, tmp_path / "s.json")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"stats_snapshot\(\): server must be a trionet.Server"):
        trionet.stats_snapshot("server")  # type: ignore[arg-type]
    assert not (tmp_path / "s.json").exists()
