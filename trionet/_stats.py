"""Server statistics: live counters and the frozen snapshot users read."""

from __future__ import annotations

import attrs

__all__ = ["ServerStats"]


@attrs.frozen
class ServerStats:
    """A snapshot of a server's counters (``Server.stats`` makes a fresh one each time).

    Counters are cumulative over the server's life.  A connection is folded
    into ``closed`` and the byte counts *before* its socket is closed --
    whoever closes it: its handler, the idle timeout, or the server when the
    handler ends -- so a client that has seen EOF can rely on the figures.
    """

    #: Connections accepted and handed to a handler (includes ``swept``).
    accepted: int = 0
    #: Connections accepted and not yet closed: handlers running, or waiting
    #: for a ``max_connections`` slot (swept during a drain, or in the waiting
    #: room of ``min_receive_rate``) -- so it may exceed ``max_connections``.
    active: int = 0
    #: Connections closed (``accepted == active + closed``), counted when
    #: their FIN is sent -- a lingering close is counted at its start.
    closed: int = 0
    #: Handlers that raised (not counting peer resets).
    handler_errors: int = 0
    #: Connections ended by a peer reset / broken pipe on the handler's own connection.
    resets: int = 0
    #: Connections ended because the peer broke a protocol limit
    #: (an uncaught :class:`~trionet.RemoteProtocolError`).
    protocol_errors: int = 0
    #: Bytes received over all connections (closed and active).
    bytes_received: int = 0
    #: Bytes sent over all connections (closed and active).
    bytes_sent: int = 0
    #: Peers refused by the access policy (reset before any handler ran).
    rejected_access: int = 0
    #: Peers refused by ``max_connections_per_host``.
    rejected_limit: int = 0
    #: Failed ``accept()`` calls (descriptor exhaustion, aborted handshakes),
    #: including those of a drain's sweep.
    accept_errors: int = 0
    #: Connections closed by the idle timeout.
    idle_closed: int = 0
    #: Connections closed by the slowloris defence (``min_receive_rate``):
    #: they kept sending, too slowly, a message the server never answered --
    #: in their handler, or while they waited in the waiting room for a slot.
    slow_closed: int = 0
    #: Connections found queued in the kernel when a drain began, and served.
    swept: int = 0
    #: Connections lingering now: their handler has ended and they count as
    #: ``closed`` (the FIN is sent), but the server still reads and discards
    #: what the peer sends until its EOF, so closing cannot reset the
    #: connection and throw away the end of a reply (see ``Connection.aclose``).
    #: They hold a descriptor but no handler task and, up to ``max_connections``
    #: of them, no slot (beyond that a lingering connection keeps its slot);
    #: a handler's own ``await conn.aclose()`` linger is counted too.
    lingering: int = 0
    #: Connections whose TLS stage failed: the handshake timed out, met
    #: garbage (plain text on a TLS bind), a reset, or a certificate the
    #: context refused.  Never counted as handler errors.
    tls_failures: int = 0
    #: Connections whose stages failed, of every kind (TLS and PROXY included).
    stage_failures: int = 0
    #: PROXY protocol refusals: a source outside ``trusted_proxies`` (refused
    #: at accept: never ``accepted``), and failed PROXY stages -- a malformed
    #: or truncated header, or none within ``handshake_timeout`` (accepted,
    #: then closed; also in ``stage_failures``).  A refusal by the access
    #: policy or the per-host limit *after* the header counts in
    #: ``rejected_access`` / ``rejected_limit`` instead.
    proxy_failures: int = 0


class Counters:
    """The mutable counters behind :class:`ServerStats` (internal)."""

    __slots__ = (
        "accept_errors",
        "accepted",
        "bytes_received",
        "bytes_sent",
        "closed",
        "handler_errors",
        "idle_closed",
        "protocol_errors",
        "proxy_failures",
        "rejected_access",
        "rejected_limit",
        "resets",
        "slow_closed",
        "stage_failures",
        "swept",
        "tls_failures",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.closed = 0
        self.handler_errors = 0
        self.resets = 0
        self.protocol_errors = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self.rejected_access = 0
        self.rejected_limit = 0
        self.accept_errors = 0
        self.idle_closed = 0
        self.slow_closed = 0
        self.swept = 0
        self.tls_failures = 0
        self.stage_failures = 0
        self.proxy_failures = 0
