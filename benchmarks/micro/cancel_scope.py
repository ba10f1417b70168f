"""What a ``trio.CancelScope`` per connection costs: time to enter and leave, memory held.

``idle_timeout`` must be able to cancel a handler wherever it is blocked,
and Trio can cancel a task only through a cancel scope that task entered;
this measures that scope alone.  Prints microseconds per enter+exit and the
extra bytes (tracemalloc) a task parked inside a scope holds compared with
one parked without.  Run it pinned to one core on a quiet machine.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Awaitable, Callable

import trio
import trio.testing

N = 200_000
TASKS = 2_000


async def held_bytes(park: Callable[[trio.Event], Awaitable[None]]) -> float:
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(TASKS):
            nursery.start_soon(park, release)
        await trio.testing.wait_all_tasks_blocked()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        release.set()
    return sum(s.size_diff for s in after.compare_to(before, "filename")) / TASKS


async def bare(release: trio.Event) -> None:
    await release.wait()


async def scoped(release: trio.Event) -> None:
    with trio.CancelScope():
        await release.wait()


async def main() -> None:
    start = time.perf_counter()
    for _ in range(N):
        with trio.CancelScope():  # noqa: ASYNC100 - the empty scope is what we time
            pass
    print(f"CancelScope enter + exit: {(time.perf_counter() - start) / N * 1e6:.2f} us")
    without, with_scope = await held_bytes(bare), await held_bytes(scoped)
    print(
        f"parked task: {without:.0f} B without a scope, {with_scope:.0f} B inside one "
        f"(+{with_scope - without:.0f} B)"
    )


if __name__ == "__main__":
    trio.run(main)
