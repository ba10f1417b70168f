"""Keep our nurseries from wrapping the exceptions users should catch.

Trio's nurseries wrap child exceptions in ``ExceptionGroup``.  When a group
made by one of *our* nurseries holds exactly one real error (plus, perhaps,
``Cancelled`` exceptions that lost the race), we raise that error bare, so
``except AddressInUse:`` and ``pytest.raises(ValueError)`` work as users
expect.  Groups of several real errors stay groups; groups of only
``Cancelled`` are left for the cancel scope that owns them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["unwrap_single"]


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for sub in exc.exceptions:
            out.extend(_leaves(sub))
        return out
    return [exc]


@contextmanager
def unwrap_single() -> Iterator[None]:
    try:
        yield
    except BaseExceptionGroup as group:
        real = [e for e in _leaves(group) if not isinstance(e, trio.Cancelled)]
        if len(real) == 1:
            exc = real[0]
            # The group and its traceback stay reachable as the context.
            raise exc from (exc.__cause__ if exc.__suppress_context__ else None)
        raise
