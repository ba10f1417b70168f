"""The PROXY protocol parser, sans-I/O: bytes in, a header (or "need more") out.

Follows HAProxy's specification ("The PROXY protocol, versions 1 & 2",
haproxy.org/download/2.9/doc/proxy-protocol.txt).  :func:`parse_proxy_header`
takes the bytes received so far and returns

* ``None`` -- they are a valid beginning: read more and call again;
* ``(ProxyInfo, consumed)`` -- a whole header, and how many bytes it took:
  whatever follows belongs to the connection (a ClientHello, a request);
* or raises :class:`~trionet.ProxyProtocolError` as soon as the bytes
  *cannot* start a valid header -- a receiver never waits on garbage, so a
  timeout is left to cover only silent or trickling peers.

Version 1 is one line, ``PROXY TCP4|TCP6|UNKNOWN ... \\r\\n``, at most 107
bytes; version 2 is a 16-byte preamble (the 12-byte signature, version and
command, family and transport, length) and an address block with TLVs.
A ``LOCAL`` header's block is skipped, as the spec says: the receiver uses
the real endpoints.  A CRC32C TLV, if present, is verified.

The whole header is parsed from one buffer each call (a trickling peer's
header is at most 107 bytes, or 16 before the length is known, so
re-parsing costs nothing that matters); records for the common case are
built without re-running their validators (the parser made the values).
No Trio import.
"""

from __future__ import annotations

import socket as _socket
from typing import Final

from .._address import Address, TCPAddress, UnixAddress
from .._exceptions import ProxyProtocolError
from ._crc32c import crc32c
from ._info import ProxyInfo, ProxySSL

__all__ = ["V1_MAX", "V2_SIGNATURE", "parse_proxy_header"]

#: The first 12 bytes of every version 2 header.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest version 1 header, CRLF included.
V1_MAX: Final = 107
_V1_PREFIX: Final = b"PROXY "
_V1_PROTOCOLS: Final = (b"TCP4", b"TCP6", b"UNKNOWN")
#: Characters of a TCP4/TCP6 line after ``PROXY TCPx `` (addresses, ports, spaces).
_V1_ADDRESS_CHARS: Final = frozenset(b"0123456789abcdefABCDEF.: ")
# family/transport byte -> address block length (stream transports, and UNSPEC)
_V2_FAMILIES: Final = {0x00: 0, 0x11: 12, 0x21: 36, 0x31: 216}
_V2_DATAGRAM: Final = frozenset({0x12, 0x22, 0x32})

_inet_ntop = _socket.inet_ntop
_inet_pton = _socket.inet_pton
_AF_INET = _socket.AF_INET
_AF_INET6 = _socket.AF_INET6
_new = object.__new__
_set = object.__setattr__


def _tcp(host: str, port: int) -> TCPAddress:
    # The parser made ``host`` with inet_ntop and ``port`` from two bytes or
    # checked digits: skip TCPAddress's validators (this runs per connection).
    address = _new(TCPAddress)
    _set(address, "host", host)
    _set(address, "port", port)
    return address


def _info(
    version: int,
    command: str,
    client: Address | None,
    destination: Address | None,
    alpn: bytes | None = None,
    authority: str | None = None,
    unique_id: bytes | None = None,
    ssl: ProxySSL | None = None,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> ProxyInfo:
    info = _new(ProxyInfo)
    _set(info, "version", version)
    _set(info, "command", command)
    _set(info, "client", client)
    _set(info, "destination", destination)
    _set(info, "alpn", alpn)
    _set(info, "authority", authority)
    _set(info, "unique_id", unique_id)
    _set(info, "ssl", ssl)
    _set(info, "tlvs", tlvs)
    _set(info, "source", None)
    return info


def parse_proxy_header(data: bytes | bytearray | memoryview) -> tuple[ProxyInfo, int] | None:
    """Parse a PROXY protocol header (v1 or v2) from the start of ``data``.

    Returns:
        None if ``data`` is a valid beginning of a header (read more, then
        call again with all of it), else ``(header, consumed)``.

    Raises:
        ProxyProtocolError: ``data`` cannot start a valid header; the message
            says why.
    """
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data:
        return None
    first = data[0]
    if first == 0x0D:
        return _parse_v2(data)
    if first == 0x50:  # "P"
        return _parse_v1(data)
    raise ProxyProtocolError(f"not a PROXY protocol header: starts with {data[:8]!r}")


# ----------------------------------------------------------------------
# Version 1


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        _check_v1_beginning(data[:V1_MAX])
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"a version 1 header has no CRLF within {V1_MAX} bytes")
        return None
    line = data[:end]
    _check_v1_beginning(line)
    parts = line.split(b" ")
    protocol = parts[1] if len(parts) > 1 else b""
    if protocol == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF"
        return _info(1, "PROXY", None, None), end + 2
    if len(parts) != 6:
        raise ProxyProtocolError(
            f"a version 1 {protocol.decode('ascii', 'replace')} header has 6 fields, "
            f"not {len(parts)}: {bytes(line)!r}"
        )
    family = _AF_INET if protocol == b"TCP4" else _AF_INET6
    client = _tcp(_v1_ip(family, parts[2]), _v1_port(parts[4]))
    destination = _tcp(_v1_ip(family, parts[3]), _v1_port(parts[5]))
    return _info(1, "PROXY", client, destination), end + 2


def _check_v1_beginning(line: bytes) -> None:
    """Raise unless ``line`` (no CRLF in it) can begin a version 1 header."""
    head = line[:6]
    if not _V1_PREFIX.startswith(head):
        raise ProxyProtocolError(f"not a PROXY protocol header: starts with {line[:8]!r}")
    if len(line) <= 6:
        return
    rest = line[6:]
    protocol, space, tail = rest.partition(b" ")
    if not space:  # the protocol word is still arriving (or UNKNOWN ends the line)
        if protocol == b"UNKNOWN\r":
            return
        if not any(p.startswith(protocol) for p in _V1_PROTOCOLS):
            raise ProxyProtocolError(f"unknown version 1 protocol {protocol!r}")
        return
    if protocol == b"UNKNOWN":
        if b"\n" in tail or b"\r" in tail[:-1]:
            raise ProxyProtocolError("a bare CR or LF in a version 1 header")
        return
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"unknown version 1 protocol {protocol!r}")
    pending = tail[:-1] if tail.endswith(b"\r") else tail
    if not _V1_ADDRESS_CHARS.issuperset(pending):
        raise ProxyProtocolError(f"an invalid character in a version 1 header: {bytes(line)!r}")
    if pending.count(b" ") > 3 or b"  " in pending or pending.startswith(b" "):
        raise ProxyProtocolError(f"malformed version 1 header fields: {bytes(line)!r}")


def _v1_ip(family: int, text: bytes) -> str:
    try:
        host = text.decode("ascii")
        packed = _inet_pton(family, host)
    except (OSError, UnicodeDecodeError, ValueError):
        kind = "IPv4" if family == _AF_INET else "IPv6"
        raise ProxyProtocolError(f"not an {kind} address in a version 1 header: {text!r}") from None
    return host if family == _AF_INET else _inet_ntop(family, packed)


def _v1_port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0] == 0x30):
        raise ProxyProtocolError(f"not a port in a version 1 header: {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"port {port} out of range in a version 1 header")
    return port


# ----------------------------------------------------------------------
# Version 2


def _parse_v2(data: bytes) -> tuple[ProxyInfo, int] | None:
    n = len(data)
    if n < 16:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyProtocolError(f"not a PROXY protocol header: starts with {data[:8]!r}")
        if n > 12:
            _check_version_command(data[12])
        if n > 13:
            _check_family(data[13])
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProxyProtocolError(f"not a PROXY protocol header: starts with {data[:8]!r}")
    command = _check_version_command(data[12])
    family = data[13]
    address_length = _check_family(family)
    total = 16 + ((data[14] << 8) | data[15])
    if n < total:
        return None
    if command == 0:
        # LOCAL: "the receiver must accept this connection as valid and must
        # use the real connection endpoints and discard the protocol block
        # including the family".
        return _info(2, "LOCAL", None, None), total
    if total - 16 < address_length:
        raise ProxyProtocolError(
            f"a version 2 header's block is {total - 16} bytes, too short for its "
            f"addresses ({address_length})"
        )
    client: Address | None
    destination: Address | None
    if family == 0x11:
        client = _tcp(_inet_ntop(_AF_INET, data[16:20]), (data[24] << 8) | data[25])
        destination = _tcp(_inet_ntop(_AF_INET, data[20:24]), (data[26] << 8) | data[27])
    elif family == 0x21:
        client = _tcp(_inet_ntop(_AF_INET6, data[16:32]), (data[48] << 8) | data[49])
        destination = _tcp(_inet_ntop(_AF_INET6, data[32:48]), (data[50] << 8) | data[51])
    elif family == 0x31:
        client = _unix(data[16:124])
        destination = _unix(data[124:232])
    else:  # UNSPEC: no addresses; the real endpoints stand
        client = destination = None
    start = 16 + address_length
    if start == total:
        return _info(2, "PROXY", client, destination), total
    return _with_tlvs(data, start, total, client, destination), total


def _check_version_command(byte: int) -> int:
    if byte >> 4 != 2:
        raise ProxyProtocolError(f"unsupported PROXY protocol version {byte >> 4}")
    command = byte & 0x0F
    if command > 1:
        raise ProxyProtocolError(f"unknown version 2 command {command:#x}")
    return command


def _check_family(byte: int) -> int:
    length = _V2_FAMILIES.get(byte)
    if length is None:
        if byte in _V2_DATAGRAM:
            raise ProxyProtocolError("a version 2 header for a datagram (UDP) connection")
        raise ProxyProtocolError(f"unknown version 2 address family/transport {byte:#04x}")
    return length


def _unix(block: bytes) -> UnixAddress:
    if block[:1] == b"\0":  # Linux abstract namespace: "@name"
        name = block[1:].rstrip(b"\0")
        path = "@" + name.decode("utf-8", "surrogateescape") if name else ""
    else:
        path = block.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    try:
        return UnixAddress(path)
    except ValueError as exc:
        raise ProxyProtocolError(f"a version 2 header's Unix address: {exc}") from None


def _with_tlvs(
    data: bytes, start: int, total: int, client: Address | None, destination: Address | None
) -> ProxyInfo:
    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    ssl: ProxySSL | None = None
    raw: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    for kind, offset, value in _tlvs(data, start, total):
        if kind in seen and kind != 0x04:
            raise ProxyProtocolError(f"a version 2 header repeats TLV {kind:#04x}")
        seen.add(kind)
        if kind == 0x01:
            alpn = value
        elif kind == 0x02:
            authority = _text(value, "AUTHORITY")
        elif kind == 0x03:
            _verify_crc(data[:total], offset, value)
        elif kind == 0x04:
            pass  # NOOP: padding
        elif kind == 0x05:
            if len(value) > 128:
                raise ProxyProtocolError("a UNIQUE_ID TLV is at most 128 bytes")
            unique_id = value
        elif kind == 0x20:
            ssl = _ssl(value)
        else:
            raw.append((kind, value))
    return _info(2, "PROXY", client, destination, alpn, authority, unique_id, ssl, tuple(raw))


def _tlvs(data: bytes, start: int, end: int) -> list[tuple[int, int, bytes]]:
    """``(type, value offset, value)`` for each TLV in ``data[start:end]``."""
    out = []
    i = start
    while i < end:
        if end - i < 3:
            raise ProxyProtocolError("a truncated TLV in a version 2 header")
        length = (data[i + 1] << 8) | data[i + 2]
        if i + 3 + length > end:
            raise ProxyProtocolError(
                f"TLV {data[i]:#04x} runs past the end of its version 2 header"
            )
        out.append((data[i], i + 3, data[i + 3 : i + 3 + length]))
        i += 3 + length
    return out


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"the {what} TLV is not UTF-8: {value[:32]!r}") from None


def _verify_crc(header: bytes, offset: int, value: bytes) -> None:
    if len(value) != 4:
        raise ProxyProtocolError("a CRC32C TLV has 4 bytes")
    zeroed = header[:offset] + b"\0\0\0\0" + header[offset + 4 :]
    if crc32c(zeroed) != int.from_bytes(value, "big"):
        raise ProxyProtocolError("the version 2 header's CRC32C does not match")


_SSL_NAMES: Final = {
    0x21: "version",
    0x22: "common_name",
    0x23: "cipher",
    0x24: "signature_algorithm",
    0x25: "key_algorithm",
}


def _ssl(value: bytes) -> ProxySSL:
    if len(value) < 5:
        raise ProxyProtocolError("an SSL TLV has at least 5 bytes")
    fields: dict[str, str] = {}
    raw: list[tuple[int, bytes]] = []
    for kind, _, sub in _tlvs(value, 5, len(value)):
        name = _SSL_NAMES.get(kind)
        if name is None:
            raw.append((kind, sub))
        elif name in fields:
            raise ProxyProtocolError(f"an SSL TLV repeats sub-TLV {kind:#04x}")
        else:
            fields[name] = _text(sub, f"SSL {name}")
    return ProxySSL(
        flags=value[0], verify=int.from_bytes(value[1:5], "big"), tlvs=tuple(raw), **fields
    )
