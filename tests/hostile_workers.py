"""Handlers for ``test_workers_hostile.py``: workers that misbehave towards their supervisor.

The tests put this directory on ``PYTHONPATH``, which a supervisor passes on
to its workers, so each worker imports this module as ``hostile_workers``.

* :func:`poison` writes what its client names onto the worker's channel to
  the supervisor -- a worker (its handler, a library it uses) scribbling on
  a descriptor it should leave alone.
* Set :data:`FORK_PIDFILE` in the environment and the first worker to import
  this module forks a helper process (as ``multiprocessing``'s default
  *fork* start method does) that lives :data:`HELPER_LIFE` seconds and
  holds every descriptor the worker had -- its channel included.  The
  helper's pid is written to that file (which also makes it the only one).
* Set :data:`IMPORT_DELAY` to a number of seconds and every worker takes
  that long to import this module -- an application with heavy imports:
  a wide window in which a worker has started but is not ready.
"""

from __future__ import annotations

import os
import sys
import time

import trionet

#: The environment variable naming the pid file of the forked helper.
FORK_PIDFILE = "TRIONET_TEST_HOSTILE_FORK_PIDFILE"
#: The environment variable: seconds a worker sleeps importing this module.
IMPORT_DELAY = "TRIONET_TEST_HOSTILE_IMPORT_DELAY"
#: Seconds the forked helper lives (a bound: the tests kill it sooner).
HELPER_LIFE = 15.0

#: What :func:`poison` writes on the channel, by the name its client sends.
PAYLOADS = {
    # Valid JSON, well under the 64 KiB line limit, nested deeper than
    # Python's recursion limit.
    b"deep": b"[" * 50_000 + b"\n",
    b"garbage": b"not json at all\n",
}


def _channel_fd() -> int:
    return int(sys.argv[sys.argv.index("--worker-channel") + 1])


def _fork_helper(pidfile: str) -> None:
    try:
        fd = os.open(pidfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another worker forked it already
    pid = os.fork()  # before any thread: this is module import, before trio.run
    if pid == 0:
        time.sleep(HELPER_LIFE)
        os._exit(0)
    os.write(fd, str(pid).encode())
    os.close(fd)


if "--worker-channel" in sys.argv:
    if os.environ.get(FORK_PIDFILE):
        _fork_helper(os.environ[FORK_PIDFILE])
    time.sleep(float(os.environ.get(IMPORT_DELAY, "0")))


async def poison(conn: trionet.Connection) -> None:
    """Read a payload name, write that payload onto the supervisor channel, answer ``sent``."""
    name = (await conn.receive_line()).strip()
    os.write(_channel_fd(), PAYLOADS[name])
    await conn.send_all(b"sent\n")


async def hello(conn: trionet.Connection) -> None:
    """Say ``hello PID``."""
    await conn.send_all(f"hello {os.getpid()}\n".encode())
