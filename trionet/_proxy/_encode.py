"""The PROXY protocol encoder: a :class:`ProxyInfo` on the wire (sans-I/O).

For clients that speak PROXY to an upstream (``connect(...,
proxy_header=...)``) and for the tests, which round-trip every header
through :func:`encode_proxy_header` and the parser.  ``ProxyInfo``'s
constructor already refused what a header cannot say, so encoding only
lays bytes out.  No Trio import.
"""

from __future__ import annotations

import ipaddress
import struct

from .._address import Address, TCPAddress, UnixAddress
from ._crc32c import crc32c
from ._info import ProxyInfo, ProxySSL
from ._parse import V2_SIGNATURE

__all__ = ["encode_proxy_header"]

_UNIX_SIZE = 108


def encode_proxy_header(info: ProxyInfo, *, checksum: bool = False) -> bytes:
    """``info`` as a version ``info.version`` header.

    Args:
        checksum: add a CRC32C TLV (version 2 only).
    """
    if info.version == 1:
        if checksum:
            raise ValueError("ProxyInfo.encode: a version 1 header has no checksum")
        return _v1(info)
    return _v2(info, checksum)


def _v1(info: ProxyInfo) -> bytes:
    client, destination = info.client, info.destination
    if client is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    assert isinstance(client, TCPAddress) and isinstance(destination, TCPAddress)
    src, dst = _ip(client), _ip(destination)
    family = "TCP4" if src.version == 4 else "TCP6"
    return (f"PROXY {family} {src} {dst} {client.port} {destination.port}\r\n").encode("ascii")


def _ip(address: TCPAddress) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(address.host)


def _v2(info: ProxyInfo, checksum: bool) -> bytes:
    command = 0x20 if info.command == "LOCAL" else 0x21
    family, block = _addresses(info.client, info.destination)
    tlvs = bytearray()
    if info.alpn is not None:
        tlvs += _tlv(0x01, info.alpn)
    if info.authority is not None:
        tlvs += _tlv(0x02, info.authority.encode("utf-8"))
    if info.unique_id is not None:
        tlvs += _tlv(0x05, info.unique_id)
    if info.ssl is not None:
        tlvs += _tlv(0x20, _ssl(info.ssl))
    for kind, value in info.tlvs:
        tlvs += _tlv(kind, value)
    crc_at = -1
    if checksum:
        crc_at = 16 + len(block) + len(tlvs) + 3
        tlvs += _tlv(0x03, b"\0\0\0\0")
    length = len(block) + len(tlvs)
    if length > 0xFFFF:
        raise ValueError(f"ProxyInfo.encode: the header's block is {length} bytes, over 65535")
    header = bytearray(V2_SIGNATURE)
    header += bytes((command, family))
    header += length.to_bytes(2, "big")
    header += block
    header += tlvs
    if crc_at >= 0:
        header[crc_at : crc_at + 4] = crc32c(bytes(header)).to_bytes(4, "big")
    return bytes(header)


def _addresses(client: Address | None, destination: Address | None) -> tuple[int, bytes]:
    if client is None or destination is None:
        return 0x00, b""
    if isinstance(client, UnixAddress):
        assert isinstance(destination, UnixAddress)
        return 0x31, _unix(client) + _unix(destination)
    assert isinstance(client, TCPAddress) and isinstance(destination, TCPAddress)
    src, dst = _ip(client), _ip(destination)
    ports = struct.pack("!HH", client.port, destination.port)
    return (0x11 if src.version == 4 else 0x21), src.packed + dst.packed + ports


def _unix(address: UnixAddress) -> bytes:
    raw = address.sockaddr
    path = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape")
    if len(path) > _UNIX_SIZE:
        raise ValueError(f"ProxyInfo.encode: the Unix address {address} is over 108 bytes")
    return path.ljust(_UNIX_SIZE, b"\0")


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"ProxyInfo.encode: TLV {kind:#04x} is over 65535 bytes")
    return bytes((kind,)) + len(value).to_bytes(2, "big") + value


def _ssl(ssl: ProxySSL) -> bytes:
    out = bytearray((ssl.flags,))
    out += ssl.verify.to_bytes(4, "big")
    for kind, value in (
        (0x21, ssl.version),
        (0x22, ssl.common_name),
        (0x23, ssl.cipher),
        (0x24, ssl.signature_algorithm),
        (0x25, ssl.key_algorithm),
    ):
        if value is not None:
            out += _tlv(kind, value.encode("utf-8"))
    for kind, raw in ssl.tlvs:
        out += _tlv(kind, raw)
    return bytes(out)
