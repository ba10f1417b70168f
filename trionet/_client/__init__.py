"""The client side: ``connect`` and ``ConnectionPool`` (being split into small modules)."""

from ._connect import connect, connect_with_plan
from ._plan import (
    CONNECT_OPTIONS,
    DEFAULT_BACKOFF,
    DEFAULT_HAPPY_EYEBALLS_DELAY,
    DEFAULT_MAX_BACKOFF,
    AttemptObserver,
    ConnectPlan,
    backoff_delay,
    interleave_families,
    make_plan,
)
from ._pool import ConnectionPool, PoolStats, unusable_reason

__all__ = [
    "CONNECT_OPTIONS",
    "DEFAULT_BACKOFF",
    "DEFAULT_HAPPY_EYEBALLS_DELAY",
    "DEFAULT_MAX_BACKOFF",
    "AttemptObserver",
    "ConnectPlan",
    "ConnectionPool",
    "PoolStats",
    "backoff_delay",
    "connect",
    "connect_with_plan",
    "interleave_families",
    "make_plan",
    "unusable_reason",
]
