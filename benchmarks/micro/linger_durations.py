"""How long a lingering close lasts: the measurement behind ``close_linger``'s default.

A handler answers one request with an 8 MiB reply and returns while the
client's pipelined second request sits unread, so its close lingers.  The
client reads at a fixed rate and closes at EOF; the linger lasts from the
handler's return until that EOF reaches the server.  For each reading rate
this prints how many bytes were still queued in the kernel (ours unsent plus
the client's receive buffer) when the handler returned, and how long the
linger took.  Loopback only.  Run: ``.venv/bin/python benchmarks/micro/linger_durations.py``.
"""

from __future__ import annotations

import functools
import socket
import time

import trio

import trionet

REPLY = 8 << 20
CHUNK = 64 * 1024


async def measure(rate_mb_s: float) -> tuple[int, float]:
    returned_at = 0.0
    queued = 0

    async def handler(conn: trionet.Connection) -> None:
        nonlocal returned_at, queued
        await conn.receive_some(6)
        await conn.send_all(b"x" * REPLY)
        returned_at = time.monotonic()
        queued = REPLY - received_by_then[0]

    received_by_then = [0]
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(trionet.serve, handler, "tcp://127.0.0.1:0", close_linger=60)
        )
        sock = trio.socket.socket()
        await sock.connect(("127.0.0.1", server.addresses[0].port))
        await sock.send(b"first\n")
        got = len(await sock.recv(CHUNK))
        await sock.send(b"second\n")  # pipelined, never read: the close lingers
        pause = CHUNK / (rate_mb_s * 1e6)
        while data := await sock.recv(CHUNK):
            got += len(data)
            received_by_then[0] = got if not returned_at else received_by_then[0]
            await trio.sleep(pause)
        eof_at = time.monotonic()
        sock.close()
        while server.stats.lingering:  # noqa: ASYNC110 - a stat has no event
            await trio.sleep(0.001)
        assert got == REPLY, got
        nursery.cancel_scope.cancel()
    return queued, eof_at - returned_at


def sysctl(name: str) -> str:
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return " ".join(f.read().split())


async def main() -> None:
    print(f"tcp_wmem {sysctl('tcp_wmem')}  tcp_rmem {sysctl('tcp_rmem')}  (min default max, bytes)")
    print(f"{'client reads at':>16} {'queued at return':>17} {'linger lasted':>14}")
    for rate in (100.0, 20.0, 5.0, 2.0, 1.0):
        queued, lasted = await measure(rate)
        print(f"{rate:>11.0f} MB/s {queued / 1e6:>14.2f} MB {lasted:>12.3f} s")


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    trio.run(main)
