"""Keep our nurseries from wrapping the exceptions users should catch.

Trio's nurseries wrap child exceptions in ``ExceptionGroup``.  When a group
made by one of *our* nurseries holds exactly one real error (plus, perhaps,
``Cancelled`` exceptions that lost the race), we raise that error bare, so
``except AddressInUse:`` and ``pytest.raises(ValueError)`` work as users
expect.  Groups of several real errors stay groups.

A group of *only* ``Cancelled`` exceptions is raised as its first
``Cancelled``, bare.  Such a group means an enclosing cancel scope is
unwinding us; the scope that owns the cancellation catches a bare
``Cancelled`` just as well as a group of them (every ``Cancelled`` is
interchangeable: Trio delivers it to whichever cancelled scope is innermost),
and a caller's ``except trio.Cancelled:`` -- cleanup code, a log line --
would not run for a ``BaseExceptionGroup``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio

__all__ = ["leaves", "unwrap_single"]


def leaves(exc: BaseException) -> list[BaseException]:
    """Every non-group exception inside ``exc`` (``[exc]`` itself if not a group)."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in leaves(sub)]
    return [exc]


@contextmanager
def unwrap_single() -> Iterator[None]:
    """Re-raise a nursery's group bare when it holds one real error, or only ``Cancelled``.

    Raises:
        BaseException: the one real error of the group, or the group's first
            ``trio.Cancelled`` when it holds nothing else; any other group (or
            a plain exception) unchanged.

    Example::

        with unwrap_single():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(might_raise_key_error)
        # ``except KeyError`` around this block works.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        group_leaves = leaves(group)
        real = [e for e in group_leaves if not isinstance(e, trio.Cancelled)]
        if len(real) == 1:
            exc = real[0]
            # The group and its traceback stay reachable as the context.
            raise exc from (exc.__cause__ if exc.__suppress_context__ else None)
        if not real and group_leaves:
            raise group_leaves[0] from None
        raise
