"""The PROXY stage: a bind's first connection stage reads the balancer's header.

On a bind with ``proxy_protocol="required"``:

1. At accept, the only check is :class:`TrustedSources`: a source outside
   ``trusted_proxies`` is refused at once, header or not (counted in
   ``stats.proxy_failures``, never accepted).
2. :class:`ProxyStage` reads the header from the *transport* (before TLS:
   the header precedes the ClientHello), feeding the sans-I/O parser until
   it returns a header -- a header split byte by byte is fine; bytes that
   cannot start one fail at once, and the bind's ``handshake_timeout``
   covers silent and trickling peers.  What followed the header goes back
   in front of the stream, for the handler or the TLS stage.
3. ``conn.proxy`` becomes the header (with ``source``, the proxy itself),
   and ``conn.peer`` the original client -- unless the header names no IP
   client (``LOCAL`` health checks, v1 ``UNKNOWN``, v2 ``AF_UNSPEC``, or a
   v2 ``AF_UNIX`` client, which no access policy could judge): then the
   proxy stays the peer.
4. The server's admission gate -- access policy, per-host limit -- runs
   right after this stage, on that peer, and before TLS: a refused client
   costs no handshake (the stage says ``sets_peer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import attrs

from .._address import Address, TCPAddress
from .._exceptions import ProxyProtocolError
from .._server._admission import AccessPolicy
from .._stream import Connection
from .._stream._preamble import receive_preamble, receive_preamble_nowait, unread_preamble
from ._info import ProxyInfo
from ._parse import V2_SIGNATURE, parse_proxy_header

__all__ = ["ProxyStage", "TrustedSources"]

#: Bytes asked of the transport per read: a whole v2 header with its TLVs
#: and whatever the client sent right behind it, in one recv() as a rule.
_READ: Final = 65536 + 16
#: Source addresses whose trust verdict is kept (see ``TrustedSources``).
_VERDICTS_MAX: Final = 1024


class TrustedSources:
    """Which kernel peers may send a PROXY header (``trusted_proxies``).

    IPv4-mapped IPv6 sources (a dual-stack listener) match IPv4 entries.
    Unix-socket peers are trusted: who may connect to the socket file is
    what its permissions (``unix_mode``) say.  A server behind balancers
    sees a handful of source addresses, so each one's verdict is kept (up
    to 1,024 of them; then the memo starts over): this runs in the accept
    task for every connection.
    """

    __slots__ = ("_policy", "_verdicts")

    def __init__(self, cidrs: Sequence[str]) -> None:
        self._policy = AccessPolicy(allow=list(cidrs))
        self._verdicts: dict[str, bool] = {}

    def __call__(self, peer: Address) -> bool:
        if not isinstance(peer, TCPAddress):
            return True
        host = peer.host
        verdict = self._verdicts.get(host)
        if verdict is None:
            verdicts = self._verdicts
            if len(verdicts) >= _VERDICTS_MAX:
                verdicts.clear()
            verdict = verdicts[host] = self._policy.allows(peer)
        return verdict


@attrs.frozen
class ProxyStage:
    """Reads a PROXY v1/v2 header; the connection's peer becomes the client it names."""

    kind = "proxy"
    #: The admission gate runs right after this stage (see ``run_stages``).
    sets_peer = True

    def try_now(self, conn: Connection) -> bytearray | None:
        """Read a header that has already arrived, without waiting; None if done.

        A balancer sends the header right behind its connect, so it is
        usually there when the connection is accepted: then the stage is
        over with no wait (and ``run_stages`` needs no cancel scope).
        Otherwise returns what was read so far, for :meth:`run` to go on
        from.
        """
        chunk = receive_preamble_nowait(conn, _READ)
        if chunk is None:
            return bytearray()
        if not chunk:
            raise ProxyProtocolError("the peer closed the connection without a PROXY header")
        parsed = parse_proxy_header(chunk)
        if parsed is None:
            return bytearray(chunk)
        _apply(conn, chunk, parsed)
        return None

    async def run(self, conn: Connection, data: bytearray | None = None) -> None:
        """Read the header, waiting as needed (``data``: what :meth:`try_now` read)."""
        if data is None:
            data = bytearray()
        wanted = 0  # parse again once this many bytes are in (a v2 header's length)
        while True:
            chunk = await receive_preamble(conn, _READ)
            if not chunk:
                raise ProxyProtocolError(
                    "the peer closed the connection in its PROXY header"
                    if data
                    else "the peer closed the connection without a PROXY header"
                )
            data += chunk
            if len(data) < wanted:
                continue  # a long v2 header trickling in: no need to look again yet
            parsed = parse_proxy_header(data)
            if parsed is not None:
                break
            if len(data) >= 16 and data[:12] == V2_SIGNATURE:
                wanted = 16 + ((data[14] << 8) | data[15])
        _apply(conn, data, parsed)


def _apply(conn: Connection, data: bytes | bytearray, parsed: tuple[ProxyInfo, int]) -> None:
    """The header is in: give back what followed it, and set ``conn.proxy`` and ``conn.peer``."""
    info, used = parsed
    if used < len(data):
        unread_preamble(conn, memoryview(data)[used:])
    source = conn.peer
    _set_source(info, source)  # a fresh record, not yet shared
    conn.proxy = info
    client = info.client
    if type(client) is TCPAddress:
        conn.peer = client
    # A Unix client (v2 AF_UNIX: a balancer's Unix-socket frontend) has no
    # address the access policy or the per-host limit could judge, and its
    # credentials are not ours to read: the proxy stays the peer, and
    # conn.proxy.client says who it relayed.


#: The ``source`` slot's own descriptor: the parser's record is fresh and not
#: yet shared, so the stage fills ``source`` in without attrs.evolve's
#: re-validation (this runs per connection).
_set_source = ProxyInfo.__dict__["source"].__set__
