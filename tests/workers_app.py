"""Handlers for ``test_workers_load.py``: served by ``trionet serve --workers N`` subprocesses.

The workers import this module by name (``workers_app:reply``), so the
supervisor runs with this directory as its working directory.
"""

from __future__ import annotations

import os

import trio

import trionet

#: How long :func:`reply` holds each exchange, so that exchanges overlap a fault.
DELAY = 0.03


async def reply(conn: trionet.Connection) -> None:
    """Read one line, wait :data:`DELAY` seconds, answer ``LINE PID``, close."""
    line = await conn.receive_line()
    await trio.sleep(DELAY)
    await conn.send_all(line + b" " + str(os.getpid()).encode() + b"\n")


async def stuck(conn: trionet.Connection) -> None:
    """Say ``ack PID``; once the drain starts say ``draining``; never finish (a cut grace ends it).

    ``draining`` tells the client that this worker has closed its copy of
    the listening socket: the drain closes it before it sets ``conn.draining``.
    """
    await conn.send_all(b"ack " + str(os.getpid()).encode() + b"\n")
    await conn.draining.wait()
    await conn.send_all(b"draining\n")
    await trio.sleep_forever()
