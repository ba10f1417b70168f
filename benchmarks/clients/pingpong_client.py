"""Client-side ping-pong: a Python client against an echo server.

Compares a client built on ``trionet.connect`` with one built on
``trio.open_tcp_stream``; one connection, one message in flight.  Prints one
JSON object (same keys as the C load generator) on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable

import trio


def proc_cpu(pid: int) -> float | None:
    """utime+stime of process *pid* in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float] | None:
    """(busy, steal) seconds summed over all CPUs, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / hz, v[7] / hz


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


RoundTrip = Callable[[], Awaitable[None]]


async def trio_client(port: int, message: bytes) -> tuple[RoundTrip, Callable[[], Awaitable[None]]]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    size = len(message)

    async def round_trip() -> None:
        await stream.send_all(message)
        got = 0
        while got < size:
            data = await stream.receive_some(size - got)
            if not data:
                raise EOFError("server closed the connection")
            got += len(data)

    return round_trip, stream.aclose


async def trionet_client(
    port: int, message: bytes
) -> tuple[RoundTrip, Callable[[], Awaitable[None]]]:
    import trionet

    conn = await trionet.connect(f"tcp://127.0.0.1:{port}")
    size = len(message)

    async def round_trip() -> None:
        await conn.send_all(message)
        await conn.receive_exactly(size)

    return round_trip, conn.aclose


async def main(args: argparse.Namespace) -> dict[str, object]:
    message = bytes((i * 7 + 13) & 0xFF for i in range(args.size))
    factory = trionet_client if args.impl == "trionet" else trio_client
    round_trip, aclose = await factory(args.port, message)
    latencies: list[int] = []
    clock = time.perf_counter_ns
    try:
        warm_end = clock() + int(args.warmup * 1e9)
        while clock() < warm_end:
            await round_trip()
        cpu0, srv0, mach0 = self_cpu(), proc_cpu(args.server_pid), machine_cpu()
        begin = clock()
        end = begin + int(args.duration * 1e9)
        t0 = begin
        while t0 < end:
            await round_trip()
            t1 = clock()
            latencies.append(t1 - t0)
            t0 = t1
        cpu1, srv1, mach1 = self_cpu(), proc_cpu(args.server_pid), machine_cpu()
    finally:
        await aclose()
    secs = (t0 - begin) / 1e9
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float | None:
        return latencies[min(n - 1, int(q * n))] / 1e3 if n else None

    return {
        "mode": f"client-{args.impl}",
        "conns": 1,
        "size": args.size,
        "seconds": secs,
        "count": n,
        "rate": n / secs,
        "bytes": n * args.size,
        "mbps": n * args.size / secs / 1e6,
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": latencies[-1] / 1e3 if n else None,
        "lg_cpu": (cpu1 - cpu0) / secs,
        "srv_cpu": (srv1 - srv0) / secs if srv0 is not None and srv1 is not None else None,
        "machine_cpu": (mach1[0] - mach0[0]) / secs if mach0 and mach1 else None,
        "steal_cpu": (mach1[1] - mach0[1]) / secs if mach0 and mach1 else None,
        "errors": 0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--impl", choices=["trionet", "trio"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--server-pid", type=int, default=0)
    result = trio.run(main, parser.parse_args())
    print(json.dumps(result), flush=True)
