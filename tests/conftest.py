"""Shared test helpers.  Fixtures from trionet's own plugin load via its entry point."""

from __future__ import annotations

import shutil

import pytest


def require_program(name: str) -> str:
    """Path of an external peer program, or skip the test saying which is missing.

    CI installs every such program (see .ci/run), so these skips only happen
    on a developer machine without it.
    """
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"needs the external program {name!r}, which is not installed here")
    return path
