"""What a PROXY protocol header says: :class:`ProxyInfo` and :class:`ProxySSL`.

One record serves both directions: the parser returns it (and a server's
PROXY stage puts it on ``conn.proxy``, with ``source`` filled in), and a
client builds one to send upstream (``connect(..., proxy_header=...)``),
where :meth:`ProxyInfo.encode` writes it.  The constructor checks what a
header can say (a version 1 header carries TCP addresses or nothing, a
``LOCAL`` header no addresses nor TLVs, both addresses of one family), so every
record made by hand encodes.  No Trio import: this is the sans-I/O side.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Final

import attrs

from .._address import Address, TCPAddress, UnixAddress

__all__ = ["KNOWN_TLV_TYPES", "ProxyInfo", "ProxySSL"]

#: TLV types the records give names to (the others stay raw in ``tlvs``).
#: 0x01 ALPN, 0x02 AUTHORITY, 0x03 CRC32C, 0x04 NOOP, 0x05 UNIQUE_ID, 0x20 SSL.
KNOWN_TLV_TYPES: Final = frozenset({0x01, 0x02, 0x03, 0x04, 0x05, 0x20})
#: Sub-TLV types of the SSL TLV with names: VERSION, CN, CIPHER, SIG_ALG, KEY_ALG.
KNOWN_SSL_TYPES: Final = frozenset({0x21, 0x22, 0x23, 0x24, 0x25})

_U16: Final = 0xFFFF


def _raw_tlvs(known: frozenset[int]) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, tuple):
            raise TypeError(f"{attribute.name} must be a tuple of (type, bytes) pairs")
        for item in value:
            if (
                not isinstance(item, tuple)
                or len(item) != 2
                or not isinstance(item[0], int)
                or isinstance(item[0], bool)
                or not isinstance(item[1], bytes)
            ):
                raise TypeError(f"{attribute.name} must hold (int, bytes) pairs, not {item!r}")
            kind, value_ = item
            if not 0 <= kind <= 0xFF:
                raise ValueError(f"{attribute.name}: a TLV type is one byte, not {kind}")
            if kind in known:
                raise ValueError(
                    f"{attribute.name}: type {kind:#04x} has its own field; set that instead"
                )
            if len(value_) > _U16:
                raise ValueError(f"{attribute.name}: a TLV value is at most 65535 bytes")

    return check


def _optional(kind: type) -> Any:
    def check(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not isinstance(value, kind):
            raise TypeError(
                f"{attribute.name} must be {kind.__name__} or None, not {type(value).__name__}"
            )

    return check


@attrs.frozen
class ProxySSL:
    """The SSL TLV of a version 2 header: how the client reached the proxy.

    HAProxy sends it with ``send-proxy-v2-ssl`` (and the certificate's
    common name with ``send-proxy-v2-ssl-cn``).
    """

    #: The ``client`` bit field: 0x01 the client used TLS, 0x02 it presented a
    #: certificate on this connection, 0x04 in this TLS session.
    flags: int = 0
    #: 0 if the client's certificate was verified (the proxy's verdict).
    verify: int = 0
    #: The TLS version (``"TLSv1.3"``), if sent.
    version: str | None = attrs.field(default=None, validator=_optional(str))
    #: The client certificate's subject common name, if sent.
    common_name: str | None = attrs.field(default=None, validator=_optional(str))
    #: The cipher (``"ECDHE-RSA-AES128-GCM-SHA256"``), if sent.
    cipher: str | None = attrs.field(default=None, validator=_optional(str))
    #: The certificate's signature algorithm, if sent.
    signature_algorithm: str | None = attrs.field(default=None, validator=_optional(str))
    #: The certificate's key algorithm, if sent.
    key_algorithm: str | None = attrs.field(default=None, validator=_optional(str))
    #: Other sub-TLVs, raw: ``(type, value)`` pairs in header order.
    tlvs: tuple[tuple[int, bytes], ...] = attrs.field(
        default=(), validator=_raw_tlvs(KNOWN_SSL_TYPES)
    )

    def __attrs_post_init__(self) -> None:
        for name, value, limit in (
            ("flags", self.flags, 0xFF),
            ("verify", self.verify, 0xFFFFFFFF),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"ProxySSL: {name} must be an int, not {type(value).__name__}")
            if not 0 <= value <= limit:
                raise ValueError(f"ProxySSL: {name} must be in 0-{limit:#x}, not {value}")

    @property
    def tls(self) -> bool:
        """True if the client spoke TLS to the proxy."""
        return bool(self.flags & 0x01)

    @property
    def client_certificate(self) -> bool:
        """True if the client presented a certificate (on this connection or session)."""
        return bool(self.flags & 0x06)

    @property
    def certificate_verified(self) -> bool:
        """True if the client presented a certificate and the proxy verified it."""
        return self.client_certificate and self.verify == 0


def _check_address(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, (TCPAddress, UnixAddress)):
        raise TypeError(
            f"ProxyInfo: {attribute.name} must be a TCPAddress, a UnixAddress or None, "
            f"not {type(value).__name__}"
        )


def ip_version(address: TCPAddress) -> int:
    """4 or 6 for an IP literal host; raises ValueError for a name."""
    try:
        ip = ipaddress.ip_address(address.host)
    except ValueError:
        raise ValueError(
            f"ProxyInfo: a header carries IP addresses, not the host name {address.host!r}"
        ) from None
    if "%" in address.host:
        raise ValueError(f"ProxyInfo: a header carries no IPv6 scope: {address.host!r}")
    return ip.version


@attrs.frozen
class ProxyInfo:
    """A PROXY protocol header: who the client really is, as a proxy said.

    On a server bind with ``proxy_protocol="required"`` every connection's
    ``conn.proxy`` is one of these (``None`` on other binds), with
    ``source`` set to the proxy's own address (the kernel's peer).  After a
    ``PROXY`` header with IP addresses, ``conn.peer`` is ``client``; after a
    ``LOCAL`` header (a balancer's health check) or one without addresses
    (v1 ``UNKNOWN``, v2 ``AF_UNSPEC``) ``conn.peer`` stays the proxy and
    ``client`` is None.  A v2 ``AF_UNIX`` client is kept in ``client`` but
    leaves the proxy as ``conn.peer``: no access policy could judge it.

    Build one to send a header upstream::

        header = trionet.ProxyInfo(
            version=2, command="PROXY",
            client=trionet.TCPAddress("192.0.2.7", 51000),
            destination=trionet.TCPAddress("198.51.100.1", 443),
        )
        conn = await trionet.connect("tcp://backend:8080", proxy_header=header)
    """

    #: 1 (the text header) or 2 (the binary one).
    version: int
    #: ``"PROXY"`` (a relayed connection) or ``"LOCAL"`` (the proxy's own,
    #: e.g. a health check; version 2 only).
    command: str = "PROXY"
    #: The original client, as the header gave it; None for LOCAL/UNKNOWN.
    client: Address | None = attrs.field(default=None, validator=_check_address)
    #: The address the client connected to, as the header gave it; None with ``client``.
    destination: Address | None = attrs.field(default=None, validator=_check_address)
    #: The ALPN the client negotiated with the proxy (TLV 0x01), raw.
    alpn: bytes | None = attrs.field(default=None, validator=_optional(bytes))
    #: The host name the client asked for (TLV 0x02, usually its SNI).
    authority: str | None = attrs.field(default=None, validator=_optional(str))
    #: The proxy's unique id for the connection (TLV 0x05, at most 128 bytes).
    unique_id: bytes | None = attrs.field(default=None, validator=_optional(bytes))
    #: How the client reached the proxy over TLS (TLV 0x20), if sent.
    ssl: ProxySSL | None = attrs.field(default=None, validator=_optional(ProxySSL))
    #: Every other TLV, raw: ``(type, value)`` pairs in header order.
    tlvs: tuple[tuple[int, bytes], ...] = attrs.field(
        default=(), validator=_raw_tlvs(KNOWN_TLV_TYPES)
    )
    #: The proxy's own address (the kernel's peer) on a server connection;
    #: None in a parsed or hand-made header.  Not encoded.
    source: Address | None = attrs.field(default=None, validator=_check_address)

    def __attrs_post_init__(self) -> None:
        if self.version not in (1, 2) or isinstance(self.version, bool):
            raise ValueError(f"ProxyInfo: version must be 1 or 2, not {self.version!r}")
        if self.command not in ("PROXY", "LOCAL"):
            raise ValueError(f"ProxyInfo: command must be 'PROXY' or 'LOCAL', not {self.command!r}")
        client, destination = self.client, self.destination
        if (client is None) != (destination is None):
            raise ValueError("ProxyInfo: give both client and destination, or neither")
        if self.command == "LOCAL" and (client is not None or self.has_tlvs):
            # A receiver discards a LOCAL header's whole block (HAProxy does too).
            raise ValueError("ProxyInfo: a LOCAL header carries no addresses and no TLVs")
        if client is not None and destination is not None:
            if type(client) is not type(destination):
                raise ValueError("ProxyInfo: client and destination must be of one family")
            if isinstance(client, TCPAddress):
                assert isinstance(destination, TCPAddress)
                if ip_version(client) != ip_version(destination):
                    raise ValueError("ProxyInfo: client and destination must both be IPv4 or IPv6")
        if self.unique_id is not None and len(self.unique_id) > 128:
            raise ValueError("ProxyInfo: unique_id is at most 128 bytes")
        if self.version == 1:
            if self.command != "PROXY":
                raise ValueError("ProxyInfo: a version 1 header has no LOCAL command")
            if isinstance(client, UnixAddress):
                raise ValueError("ProxyInfo: a version 1 header carries TCP addresses only")
            if self.has_tlvs:
                raise ValueError("ProxyInfo: a version 1 header carries no TLVs")

    @property
    def has_tlvs(self) -> bool:
        """True if any TLV is set (version 2 only)."""
        return bool(
            self.alpn is not None
            or self.authority is not None
            or self.unique_id is not None
            or self.ssl is not None
            or self.tlvs
        )

    @property
    def is_local(self) -> bool:
        """True for a header that names no client: LOCAL, v1 UNKNOWN or v2 AF_UNSPEC."""
        return self.client is None

    def encode(self) -> bytes:
        """The header, on the wire (``source`` is not part of it)."""
        from ._encode import encode_proxy_header

        return encode_proxy_header(self)
