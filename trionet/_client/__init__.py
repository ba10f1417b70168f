"""The client side: :func:`~trionet.connect` and :class:`~trionet.ConnectionPool`.

One concept per module, each with the design notes for what it holds at its
top (the project keeps modules under ~500 lines)::

    _plan      what connect() will do, decided before any I/O: the argument
               checks, ConnectPlan, and the pure policies (address order, back-off)
    _attempts  the record of one connect() call (ConnectError.attempts, on_attempt)
    _finish    what a won connection does before connect() returns: the PROXY
               header (proxy_header=), the TLS handshake
    _connect   the connect loop -- resolve, happy-eyeballs race, retries, one
               deadline -- and connect(), connect_with_plan()
    _pool      ConnectionPool and PoolStats: lending, taking back, closing
    _slots     the pool's max_size slots, handed to waiters first-come first-served
    _health    whether a connection may be lent again (unusable_reason)
    _expiry    the pool's idle connections and their idle_timeout
    _lease     the context manager pool.connection() returns

Why these cuts: ``_plan`` is everything that needs no I/O -- also what the
pool checks its connect options with -- and ``_connect`` everything that
does, with the bookkeeping of attempts (``_attempts``) apart from the race.
The pool's parts each keep a state and invariants of their own (the FIFO
hand-over that survives cancellation, the idle deadlines, the health poll)
that ``ConnectionPool`` only drives; it keeps what ties them together.
Imports run one way: ``_plan``, ``_attempts``, ``_finish`` (a won
connection's PROXY header and TLS handshake), ``_connect``, the pool's
parts, ``_pool`` (the lease reaches its pool only through the ``Lender``
record the pool makes).

This package re-exports what the rest of trionet and the tests use.
"""

from ._connect import connect, connect_with_plan
from ._health import unusable_reason
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
from ._pool import ConnectionPool, PoolStats

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
