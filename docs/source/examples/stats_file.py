"""A stats file: a server writes its snapshot, another reader follows it.

Run it: python stats_file.py
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from typing import Any

import trio

import trionet
from trionet.services import echo
from trionet.testing import wait_until


def read_stats(path: str) -> dict[str, Any] | None:
    """What a monitoring script does: json.load, and None until the file exists."""
    try:
        with open(path, encoding="utf-8") as file:
            snapshot: dict[str, Any] = json.load(file)
            return snapshot
    except FileNotFoundError:
        return None


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "stats.json")
        async with trio.open_nursery() as nursery:
            server: trionet.Server = await nursery.start(
                functools.partial(trionet.serve, echo, "tcp://127.0.0.1:0")
            )
            # The first snapshot is on disk once start() returns.
            await nursery.start(functools.partial(trionet.write_stats, server, path, interval=0.1))
            first = read_stats(path)
            assert first is not None
            print("keys:", " ".join(sorted(first)))
            print(f"pid is ours: {first['pid'] == os.getpid()}")

            address = server.addresses[0]
            assert isinstance(address, trionet.TCPAddress)
            client = await trio.open_tcp_stream(address.host, address.port)
            await client.send_all(b"hello\n")
            assert await client.receive_some() == b"hello\n"

            # Poll the file, as another process would (within 5 s).
            await wait_until(lambda: (read_stats(path) or {}).get("connections") == 1)
            seen = read_stats(path)
            assert seen is not None
            print(f"live connections: {seen['connections']} | tasks > 1: {seen['tasks'] > 1}")
            print(f"accepted: {seen['stats']['accepted']} | stopped: {seen['stopped']}")

            await client.aclose()
            await server.shutdown(grace=1)
        # write_stats wrote a last snapshot once the server stopped, and returned.
        last = read_stats(path)
        assert last is not None
        print(f"last: stopped={last['stopped']} connections={last['connections']}")
        print(f"closed={last['stats']['closed']} bytes_received={last['stats']['bytes_received']}")
        print(
            "temporary files left:",
            [name for name in os.listdir(directory) if name != "stats.json"],
        )
    print("ok")


if __name__ == "__main__":
    trio.run(main)
