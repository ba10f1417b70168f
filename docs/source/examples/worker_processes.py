"""Worker processes from Python: supervise, reload under load, drain on SIGTERM.

``trionet.supervise`` opens the bind once and runs two ``python -m trionet
serve`` workers on it.  A client keeps connecting while every worker is
replaced (a reload): none of its connections is refused.  Then the process
sends itself SIGTERM, which ``handle_signals`` turns into a drain.  POSIX
only.

Run it: python worker_processes.py
"""

from __future__ import annotations

import functools
import os
import signal
import sys

import trio

import trionet

# Each worker is a fresh interpreter that imports the handler by name, as
# "worker_processes:handle".  A deployment installs its package; this example
# makes its own directory importable for them instead.
HERE = os.path.dirname(os.path.abspath(__file__))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")]))
sys.path.insert(0, HERE)


async def handle(conn: trionet.Connection) -> None:
    """Say which process answered."""
    await conn.send_all(f"hello from {os.getpid()}\n".encode())


async def ask(address: trionet.Address) -> int:
    """Connect, read the greeting, return the pid that sent it."""
    async with await trionet.connect(address, timeout=5) as conn:
        line = await conn.receive_line()
    return int(line.rsplit(b" ", 1)[1])


async def terminate_me() -> None:
    """Play the operator: SIGTERM this process (the supervisor)."""
    os.kill(os.getpid(), signal.SIGTERM)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        supervisor: trionet.Supervisor = await nursery.start(
            functools.partial(
                trionet.supervise,
                "worker_processes:handle",
                "tcp://127.0.0.1:0",
                workers=2,
                grace=5,
                log_level="warning",
            )
        )
        address = supervisor.addresses[0]
        print("listening on", address)
        first = set(supervisor.pids)
        print("workers:", len(first))
        responders = {await ask(address) for _ in range(20)}
        print("every answer came from a worker:", responders <= first)

        # A client that keeps connecting while the workers are replaced.
        answered = failed = 0
        reloading = True

        async def client() -> None:
            nonlocal answered, failed
            while reloading:
                try:
                    await ask(address)
                    answered += 1
                except (OSError, trio.BrokenResourceError, trionet.TrionetError):
                    failed += 1

        async with trio.open_nursery() as clients:
            clients.start_soon(client)
            replaced = await supervisor.reload()
            reloading = False
        print("reload replaced every worker:", replaced)
        print("new pids:", set(supervisor.pids).isdisjoint(first))
        print("connections during the reload:", answered > 0, "| failed:", failed)

        # What `kill -TERM` (systemctl stop, docker stop) does: a drain.
        nursery.start_soon(terminate_me)
        report = await supervisor.handle_signals()
    print(
        f"started={report.started} crashed={report.crashed} "
        f"reloads={report.reloads_done}/{report.reloads} unreported={report.unreported}"
    )
    print("accepted:", report.stats.accepted == 20 + answered)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
