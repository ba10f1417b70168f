"""What Trio's strict rule costs per echoed message, without any I/O.

100 tasks each loop over two (cancel point + schedule point) pairs -- what a
strict echo loop does around its ``recv()`` and ``send()`` -- using the same
schedule point trionet uses.  Prints microseconds per iteration (two passes
through Trio's scheduler).  Run it pinned to one core on a quiet machine.
"""

from __future__ import annotations

import time

import trio
from trio.lowlevel import checkpoint_if_cancelled

try:
    from trionet._stream._checkpoints import schedule_point
except ImportError:  # a revision from before the _stream package
    from trionet._checkpoints import schedule_point  # type: ignore[no-redef]

TASKS = 100
N = 20_000


async def worker() -> None:
    for _ in range(N):
        await checkpoint_if_cancelled()
        await schedule_point()
        await checkpoint_if_cancelled()
        await schedule_point()


async def main() -> None:
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(TASKS):
            nursery.start_soon(worker)
    per = (time.perf_counter() - start) / (N * TASKS) * 1e6
    print(f"two cancel points + two schedule points ({TASKS} tasks): {per:.2f} us")


if __name__ == "__main__":
    trio.run(main)
