"""Shared test helpers.  Fixtures from trionet's own plugin load via its entry point."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
import trio


def require_program(name: str) -> str:
    """Path of an external peer program, or skip the test saying which is missing.

    CI installs every such program (see .ci/run), so these skips only happen
    on a developer machine without it.
    """
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs the external program {name!r}, which is not installed here")
    return path


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a cheap condition (every 5 ms) until true; fail after ``timeout``.

    Only for state that has no event of its own (``server.stats``,
    ``server.draining``); everything else waits on events.
    """
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polling server state that has no event
            await trio.sleep(0.005)
