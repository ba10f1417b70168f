"""Handlers for ``test_workers.py``, imported by each ``trionet serve --workers N`` worker.

The tests put this directory on ``PYTHONPATH``, which a supervisor passes on
to its workers, so both import it as ``workers_handlers``.

Set :data:`FAIL_IN_WORKERS` in the environment and the import fails in a
worker only (a process whose command line has ``--worker-channel``): the
supervisor's own check -- it imports the handler once before starting
anything -- passes, and every worker then dies before it is ready.
"""

from __future__ import annotations

import os
import sys

import trio

import trionet

#: The environment variable that makes this module fail to import in workers.
FAIL_IN_WORKERS = "TRIONET_TEST_FAIL_IN_WORKERS"

if os.environ.get(FAIL_IN_WORKERS) and "--worker-channel" in sys.argv:
    raise RuntimeError("workers_handlers: told to fail in workers")


async def pid(conn: trionet.Connection) -> None:
    """Send this process's id as a line, then hold the connection until the client closes."""
    await conn.send_all(f"{os.getpid()}\n".encode())
    while await conn.receive_some():
        pass


async def stubborn(conn: trionet.Connection) -> None:
    """Say ``ack``, then never finish (only a cut grace ends it)."""
    await conn.send_all(b"ack\n")
    await trio.sleep_forever()


async def shielded(conn: trionet.Connection) -> None:
    """Say ``ack``, then ignore cancellation for a minute: a hung worker that no drain ends."""
    await conn.send_all(b"ack\n")
    with trio.CancelScope(shield=True):
        await trio.sleep(60)
