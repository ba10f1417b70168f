"""The Trio-strict floor: the least work an echo server on Trio can do while keeping Trio's rule.

Not a library, a measuring stick.  Each connection is one task looping over
the raw (non-blocking) stdlib socket: ``checkpoint_if_cancelled()``, then
``recv()``; a schedule point; ``checkpoint_if_cancelled()``, then ``send()``;
a schedule point -- exactly what Trio's "every operation is a checkpoint"
rule costs, and nothing else: no stream object, no statistics, no drain, no
error translation, no spin before parking (it parks in Trio's
``wait_readable`` when ``recv()`` finds nothing).  The schedule point is the
cheapest one known, the same one trionet uses
(:func:`trionet._stream._checkpoints.schedule_point`), so the gap between this server
and trionet's default is everything else trionet does.

After a wait it also yields once more (the wait was a schedule point
already; trionet skips that one), which costs nothing measurable on 100
connections -- under 2 % of messages wait there -- but makes it no floor
on one connection, where it parks for every message and trionet spins.

``--trionet-depth`` runs the same loop split the way trionet's call chain
is: a wrapper task (trionet's handler-error isolation) awaiting a handler
that awaits a receive and a send coroutine -- to measure what that
structure alone costs.

What this bounds: no library that keeps every call a schedule point (and so
passes ``trio.testing.check_half_closeable_stream``) can be much faster than
this on Trio; its ratio to ``trio.serve_tcp`` is the ceiling for trionet's
default (strict) configuration.
"""

from __future__ import annotations

import socket

import trio
from _common import BACKLOG, CHUNK, announce, raise_nofile_limit, server_args
from trio.lowlevel import checkpoint_if_cancelled, wait_readable, wait_writable

try:
    from trionet._stream._checkpoints import schedule_point
except ImportError:  # a revision from before the _stream package
    from trionet._checkpoints import schedule_point  # type: ignore[no-redef]


async def echo(raw: socket.socket) -> None:
    try:
        while True:
            await checkpoint_if_cancelled()
            try:
                data = raw.recv(CHUNK)
            except BlockingIOError:
                await wait_readable(raw)  # a schedule point and a cancel point
                continue
            await schedule_point()
            if not data:
                return
            await checkpoint_if_cancelled()
            sent = 0
            while True:
                try:
                    sent += raw.send(memoryview(data)[sent:] if sent else data)
                except BlockingIOError:
                    pass
                if sent == len(data):
                    break
                await wait_writable(raw)
            await schedule_point()
    except OSError:
        pass  # peer reset: this connection only
    finally:
        raw.close()


# --trionet-depth: the same work, at trionet's frame depth.


async def recv_op(raw: socket.socket) -> bytes:
    while True:
        await checkpoint_if_cancelled()
        try:
            data = raw.recv(CHUNK)
        except BlockingIOError:
            await wait_readable(raw)
            continue
        await schedule_point()
        return data


async def send_op(raw: socket.socket, data: bytes) -> None:
    await checkpoint_if_cancelled()
    sent = 0
    while True:
        try:
            sent += raw.send(memoryview(data)[sent:] if sent else data)
        except BlockingIOError:
            pass
        if sent == len(data):
            break
        await wait_writable(raw)
    await schedule_point()


async def handler(raw: socket.socket) -> None:
    while data := await recv_op(raw):
        await send_op(raw, data)


async def wrapped(raw: socket.socket) -> None:
    try:
        await handler(raw)
    except OSError:
        pass
    finally:
        raw.close()


async def main(host: str, port: int, deep: bool) -> None:
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(BACKLOG)
    listener.setblocking(False)
    announce(listener.getsockname()[1])
    async with trio.open_nursery() as nursery:
        while True:
            await wait_readable(listener)
            for _ in range(BACKLOG):  # accept what is queued, bounded
                try:
                    raw, _ = listener.accept()
                except BlockingIOError:
                    break
                except OSError:
                    await trio.sleep(0.01)  # EMFILE and friends: back off
                    break
                raw.setblocking(False)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(wrapped if deep else echo, raw)


if __name__ == "__main__":
    parser = server_args((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--trionet-depth",
        action="store_true",
        help="wrapper task -> handler -> receive/send coroutines, like trionet's call chain",
    )
    args = parser.parse_args()
    raise_nofile_limit()
    trio.run(main, args.host, args.port, args.trionet_depth)
