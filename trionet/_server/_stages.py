"""Connection stages: async steps between admission and the handler.

A bind may need work on a connection before its handler can run: a PROXY
protocol header, then a TLS handshake.  Such work runs as *stages*, in the
connection's own task, in order, under **one** deadline for all of them --
the bind's ``handshake_timeout`` (default 10 s) -- so a peer that stalls or
trickles costs at most that long.  A bind with no stages has no plan: its
connections go straight to the handler, with no extra frame, task or cancel
scope (the plain path pays nothing).

While in its stages a connection is ``accepted`` and ``active``, holds its
``max_connections`` slot and its per-host lease, and is listed in
``server.connections``.  A stage that fails -- the peer sent garbage,
stalled past the deadline, reset the connection, failed a certificate check
-- costs that connection only: it is closed, logged at DEBUG (never as a
handler error), counted as closed, and counted per kind
(``stats.tls_failures`` for TLS, and in ``stats.stage_failures`` for every
kind).  A drain closes connections still in their stages at once; the
shutdown report counts them in ``in_stages``.

A stage may change what the connection knows about its peer (the PROXY
stage replaces ``conn.peer``), so a plan may ask for the admission gate
-- access policy, per-host limit -- to run *after* its stages instead of at
accept (``admit_after``); a refusal then counts in ``rejected_access`` /
``rejected_limit``, not as a stage failure.  Before any stage, at accept,
a plan may also decide which kernel peers may connect at all (``trusted``:
a PROXY bind's ``trusted_proxies``).

The seam is internal: built-in stages come from the bind's options
(:func:`plan_for`), and tests exercise it with stages of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from .._address import Address
from .._binds import Bind
from .._exceptions import RemoteProtocolError
from .._stats import Counters
from .._stream import Connection, ConnectionOwner, ConnOptions
from .._stream._hooks import handshake, tls_server_connection
from ._record import HANDLER, ConnectionRecord, WatchedRecord

if TYPE_CHECKING:
    import ssl

__all__ = [
    "ConnectionFactory",
    "Stage",
    "StageHost",
    "StagePlan",
    "TLSStage",
    "plan_for",
    "run_stages",
    "start_stages",
]

log = logging.getLogger("trionet.server")

#: What a stage raises when the peer misbehaves (garbage, a reset, a bad
#: certificate, a short read): logged at DEBUG, never as an error of ours.
_PEER_FAILURES = (
    OSError,  # ssl.SSLError included
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    RemoteProtocolError,
)

#: Builds a connection from an accepted socket: (socket, peer, local, options, owner).
ConnectionFactory = Callable[
    [Any, Address, "Address | None", ConnOptions, ConnectionOwner], Connection
]


class Stage(Protocol):
    """One step a connection takes before its handler runs.

    A stage that replaces ``conn.peer`` may say so with a class attribute
    ``sets_peer = True``: on a plan with ``admit_after`` the admission gate
    then runs right after it, before the stages that follow.
    """

    #: What the stage is; its failures count in ``stats.<kind>_failures``
    #: when the stats have such a counter (``"tls"``, ``"proxy"``), and always
    #: in ``stats.stage_failures``.
    kind: str

    async def run(self, conn: Connection) -> None:
        """Do the work; raise (anything) to fail the connection.

        Runs inside the plan's deadline: a stage need not time itself out.
        A stage may also have a synchronous ``try_now(conn)``, tried first
        without the deadline's scope: None when it finished from what had
        already arrived, else what it read, passed on as ``run(conn,
        partial)`` (see :func:`start_stages`).
        """


@attrs.frozen
class StagePlan:
    """The stages of one bind's connections, and how they start (internal)."""

    #: Run in order, under one deadline.
    stages: tuple[Stage, ...]
    #: Seconds all of them may take together (the bind's ``handshake_timeout``).
    timeout: float
    #: Run the admission gate after the stages (on what they learned) instead
    #: of at accept: right after the first stage whose ``sets_peer`` is true
    #: (the PROXY stage, before TLS), else after the last.
    admit_after: bool = False
    #: Builds the connection for an accepted socket (stdlib, or from a custom
    #: socket factory); None: a plain socket connection.
    factory: ConnectionFactory | None = None
    #: Which kernel peers may connect at all, decided at accept, before any
    #: stage (a PROXY bind's ``trusted_proxies``); None: everyone.  A refused
    #: peer is reset and counted in ``stats.proxy_failures``.
    trusted: Callable[[Address], bool] | None = None
    #: The index of the stage after which the gate runs (-1: at accept).
    admit_index: int = attrs.field(init=False)
    #: Each stage's ``try_now`` method, or None (see :func:`start_stages`).
    try_nows: tuple[Callable[[Connection], Any] | None, ...] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(
            self, "try_nows", tuple(getattr(stage, "try_now", None) for stage in self.stages)
        )
        index = -1
        if self.admit_after:
            index = next(
                (i for i, stage in enumerate(self.stages) if getattr(stage, "sets_peer", False)),
                len(self.stages) - 1,
            )
        object.__setattr__(self, "admit_index", index)


@attrs.frozen
class TLSStage:
    """The server side of a TLS handshake, eagerly (so ALPN and SNI are known)."""

    kind = "tls"

    async def run(self, conn: Connection) -> None:
        await handshake(conn)


def plan_for(bind: Bind) -> StagePlan | None:
    """The stages ``bind``'s connections run, or None for a plain bind.

    PROXY comes first when a bind has both: the header precedes the
    ClientHello on the wire.
    """
    stages: list[Stage] = []
    trusted: Callable[[Address], bool] | None = None
    if bind.uses_proxy_protocol:
        from .._proxy._stage import ProxyStage, TrustedSources

        stages.append(ProxyStage())
        trusted = TrustedSources(bind.trusted_proxies or ())
    factory: ConnectionFactory | None = None
    if bind.uses_tls:
        stages.append(TLSStage())
        factory = _tls_factory(bind.tls)  # type: ignore[arg-type]
    if not stages:
        return None
    assert bind.handshake_timeout is not None
    return StagePlan(
        stages=tuple(stages),
        timeout=bind.handshake_timeout,
        admit_after=trusted is not None,
        factory=factory,
        trusted=trusted,
    )


def _tls_factory(context: ssl.SSLContext) -> ConnectionFactory:

    def factory(
        sock: Any,
        peer: Address,
        local: Address | None,
        options: ConnOptions,
        owner: ConnectionOwner,
    ) -> Connection:
        return tls_server_connection(sock, peer, local, options, owner, context)

    return factory


class StageHost(Protocol):
    """What :func:`run_stages` needs from the server (``ConnectionTable``)."""

    counters: Counters
    #: True if the server has an admission gate (an access check or a
    #: per-host limit); without one there is nothing to run after the stages.
    gated: bool

    @property
    def draining(self) -> bool: ...

    def admit_after_stages(self, rec: ConnectionRecord) -> bool:
        """Run the admission gate on what the stages learned; False: refused (and closed)."""
        ...


def start_stages(rec: ConnectionRecord, host: StageHost) -> bool | tuple[int, Any]:
    """Run what ``rec``'s stages can do at once, without waiting or a cancel scope.

    A stage with a ``try_now(conn)`` method may finish from what has already
    arrived (a PROXY header sent right behind the connect): it returns None
    when done, or what it read so far.  Returns True if every stage is done
    (and the gate, if it runs after the stages, admitted the connection),
    False if the connection did not make it (closed and counted, as in
    :func:`run_stages`), else ``(index, partial)``: ``await run_stages(rec,
    host, index, partial)`` goes on from there under the deadline.
    """
    plan: StagePlan = rec.plan  # type: ignore[assignment]  # a record with stages has one
    conn = rec.conn
    if host.draining:
        # The drain began before this task first ran (begin_drain found no
        # scope to cancel): it never reaches a handler -- and sends nothing,
        # where a stage could have answered bytes that had already arrived
        # (a ClientHello) before its first checkpoint.
        conn.close()  # the shutdown report counts it in in_stages
        return False
    admit_index = plan.admit_index if host.gated else -1
    for index, try_now in enumerate(plan.try_nows):
        if try_now is None:
            return index, None
        try:
            partial = try_now(conn)
        except Exception as exc:
            _stage_raised(host.counters, conn, plan.stages[index].kind, exc)
            return False
        if partial is not None:
            return index, partial
        if index == admit_index and not host.admit_after_stages(rec):
            return False  # refused on what the stage learned: no further stage
    rec.state = HANDLER
    return True


async def run_stages(
    rec: ConnectionRecord, host: StageHost, start: int = 0, partial: Any = None
) -> bool:
    """Run ``rec``'s stages from ``start`` under one deadline; False: it did not make it.

    ``partial``: what :func:`start_stages` left for stage ``start`` to go on
    from.  A failure closes the connection (counted as closed, and per
    kind) and is logged at DEBUG -- ERROR for a stage's own bug, which still
    costs that connection only.  A drain closes it at once (the shutdown
    report counts it in ``in_stages``).  The admission gate runs here when
    the plan asks for it after the stages: right after the first stage that
    says ``sets_peer`` (the PROXY header: before TLS, so a refused client
    costs no handshake), else after the last.  ``rec.scope`` is the
    deadline's scope meanwhile, so that ``begin_drain`` can cancel it.
    """
    assert isinstance(rec, WatchedRecord)  # a record with a plan is one
    plan = rec.plan
    assert plan is not None
    conn = rec.conn
    kind = "?"
    stages = plan.stages
    with trio.move_on_after(plan.timeout) as scope:
        rec.scope = scope
        try:
            for index in range(start, len(stages)):
                stage = stages[index]
                kind = stage.kind
                if index == start and partial is not None:
                    await stage.run(conn, partial)  # type: ignore[call-arg]
                else:
                    await stage.run(conn)
                if index == plan.admit_index and not host.admit_after_stages(rec):
                    return False  # refused on what the stage learned: no further stage
        except Exception as exc:
            _stage_raised(host.counters, conn, kind, exc)
            return False
    rec.scope = None
    if scope.cancelled_caught:
        if host.draining and trio.current_time() < scope.deadline:
            conn.close()  # the drain closed it: the report counts it in in_stages
            return False
        _failed(host.counters, conn, kind, f"timed out after {plan.timeout:g} s")
        return False
    rec.state = HANDLER
    return True


def _stage_raised(counters: Counters, conn: Connection, kind: str, exc: Exception) -> None:
    """A stage raised (call it in the ``except`` block): a failure of that connection only.

    What a peer causes is logged at DEBUG; anything else is a bug in the
    stage, logged with its traceback -- and costs that connection only too.
    """
    if isinstance(exc, _PEER_FAILURES):
        _failed(counters, conn, kind, f"failed: {exc!r}")
    else:
        log.exception("connection #%d: %s stage raised", conn.id, kind)
        _failed(counters, conn, kind, f"raised {exc!r}")


def _failed(counters: Counters, conn: Connection, kind: str, why: str) -> None:
    counters.stage_failures += 1
    if kind == "tls":
        counters.tls_failures += 1
    elif kind == "proxy":
        counters.proxy_failures += 1
    log.debug("connection #%d from %s: %s stage %s", conn.id, conn.peer, kind, why)
    conn.close()
