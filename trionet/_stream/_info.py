"""Frozen records describing a connection: :class:`ConnectionInfo` and :class:`TLSInfo`."""

from __future__ import annotations

from typing import Any

import attrs

from .._address import Address

__all__ = ["ConnectionInfo", "TLSInfo"]


@attrs.frozen
class ConnectionInfo:
    """A read-only snapshot of one connection, for stats, logs and access policies."""

    #: Process-unique connection id (also ``Connection.id``).
    id: int
    #: The remote address.
    peer: Address
    #: The local address.
    local: Address
    #: Wall-clock time (``time.time()``) when the connection was accepted or made.
    opened_at: float
    #: Bytes received so far.
    bytes_received: int = 0
    #: Bytes sent so far.
    bytes_sent: int = 0
    #: ``(pid, uid, gid)`` of a Unix-socket peer (``SO_PEERCRED``), else None.
    peer_credentials: tuple[int, int, int] | None = None


@attrs.frozen
class TLSInfo:
    """What a TLS connection negotiated (``conn.tls``; None on plain connections).

    Example::

        async def handler(conn: trionet.Connection) -> None:
            if conn.tls is not None and conn.tls.alpn_protocol == "h2":
                ...
    """

    #: The protocol version, as ``ssl.SSLObject.version()`` gives it (``"TLSv1.3"``).
    version: str
    #: The cipher suite's name (``SSLObject.cipher()[0]``).
    cipher: str
    #: The protocol ALPN settled on, or None.
    alpn_protocol: str | None = None
    #: On a server, the name the client asked for (SNI); on a client, the name
    #: it sent (``server_hostname``).  None when there was none.
    server_name: str | None = None
    #: The peer's certificate as ``SSLObject.getpeercert()`` gives it, or None
    #: when no certificate was asked for, none was given, or it was not
    #: verified (an unverified certificate is not returned as a dict).
    peer_certificate: dict[str, Any] | None = attrs.field(default=None, eq=False)
