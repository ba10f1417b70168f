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
bytes; a partial line is checked field by field (``PROXY TCP4 1.2.3.4x``
fails at the ``x``, a line that could no longer fit in 107 bytes at once).
Version 2 is a 16-byte preamble (the 12-byte signature, version and
command, family and transport, length) and a block of addresses and TLVs;
the preamble is checked byte by byte, the block once it is whole (the spec:
"the receiver must not start to parse an address before the whole address
block is received").  A ``LOCAL`` header's block is skipped, as the spec
says: the receiver uses the real endpoints.  A CRC32C TLV is verified.

The whole header is parsed from one buffer each call (a trickling peer's
header is at most 107 bytes, or 16 before the length is known, so
re-parsing costs nothing that matters).  The common headers -- v2 PROXY
over TCP/IPv4 or IPv6 without TLVs -- take a fast path: one compare, one
struct unpack, and records built without re-running their validators (the
parser made the values; the frozen ``TCPAddress`` of a recent destination
is shared).  A growing ``bytearray`` is not copied while a v2 block is
still arriving.  No Trio import.
"""

from __future__ import annotations

import socket as _socket
import struct
from typing import Final

import attrs

from .._address import Address, TCPAddress, UnixAddress
from .._exceptions import ProxyProtocolError
from ._crc32c import crc32c
from ._info import ProxyInfo, ProxySSL

__all__ = ["V1_MAX", "V2_SIGNATURE", "parse_proxy_header"]

#: The first 12 bytes of every version 2 header.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest version 1 header, CRLF included.
V1_MAX: Final = 107
#: The whole 16-byte preamble of a v2 PROXY header over TCP/IPv4 (IPv6) without TLVs.
_V2_INET: Final = V2_SIGNATURE + b"\x21\x11\x00\x0c"
_V2_INET6: Final = V2_SIGNATURE + b"\x21\x21\x00\x24"
_unpack_inet = struct.Struct("!4s4sHH").unpack_from
_unpack_inet6 = struct.Struct("!16s16sHH").unpack_from
# family/transport byte -> address block length (stream transports, and UNSPEC)
_V2_FAMILIES: Final = {0x00: 0, 0x11: 12, 0x21: 36, 0x31: 216}
_V2_DATAGRAM: Final = frozenset({0x12, 0x22, 0x32})

_inet_ntop = _socket.inet_ntop
_inet_pton = _socket.inet_pton
_AF_INET: Final = _socket.AF_INET
_AF_INET6: Final = _socket.AF_INET6
_new = object.__new__
# The slots' own descriptors: setting through them skips the frozen classes'
# __setattr__ and validators (the parser made the values) and costs less
# than object.__setattr__.
_TCP_SLOTS: Final = tuple(TCPAddress.__dict__[name].__set__ for name in ("host", "port"))
_INFO_FIELDS: Final = "version command client destination alpn authority unique_id ssl tlvs source"
_INFO_SLOTS: Final = tuple(ProxyInfo.__dict__[name].__set__ for name in _INFO_FIELDS.split())
assert len(_INFO_SLOTS) == len(attrs.fields(ProxyInfo))


def _tcp(host: str, port: int) -> TCPAddress:
    set_host, set_port = _TCP_SLOTS
    address = _new(TCPAddress)
    set_host(address, host)
    set_port(address, port)
    return address


#: Recent v2 destinations, ``(packed IP, port) -> TCPAddress``: the
#: balancer's frontend, the same on every connection.  The records are
#: frozen, so sharing one is safe.  Cleared when full.
_DESTINATIONS: dict[tuple[bytes, int], TCPAddress] = {}
_DESTINATIONS_MAX: Final = 1024


def _destination(family: int, packed: bytes, port: int) -> TCPAddress:
    address = _DESTINATIONS.get((packed, port))
    if address is None:
        if len(_DESTINATIONS) >= _DESTINATIONS_MAX:
            _DESTINATIONS.clear()
        address = _DESTINATIONS[packed, port] = _tcp(_inet_ntop(family, packed), port)
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
    # A fresh record every call: the server's PROXY stage fills in ``source``.
    (
        set_version,
        set_command,
        set_client,
        set_destination,
        set_alpn,
        set_authority,
        set_unique_id,
        set_ssl,
        set_tlvs,
        set_source,
    ) = _INFO_SLOTS
    info = _new(ProxyInfo)
    set_version(info, version)
    set_command(info, command)
    set_client(info, client)
    set_destination(info, destination)
    set_alpn(info, alpn)
    set_authority(info, authority)
    set_unique_id(info, unique_id)
    set_ssl(info, ssl)
    set_tlvs(info, tlvs)
    set_source(info, None)
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
    if type(data) is not bytes:
        if len(data) > 16 and data[0] == 0x0D and len(data) < 16 + (data[14] << 8 | data[15]):
            # A v2 block still arriving (a bytearray growing): no copy of it.
            return _parse_v2(bytes(data[:16]))
        data = bytes(data)
    head = data[:16]
    if head == _V2_INET:
        if len(data) < 28:
            return None
        src, dst, sport, dport = _unpack_inet(data, 16)
        family, used = _AF_INET, 28
    elif head == _V2_INET6:
        if len(data) < 52:
            return None
        src, dst, sport, dport = _unpack_inet6(data, 16)
        family, used = _AF_INET6, 52
    elif not data:
        return None
    elif data[0] == 0x0D:
        return _parse_v2(data)
    elif data[0] == 0x50:  # "P"
        return _parse_v1(data)
    else:
        raise ProxyProtocolError(f"not a PROXY protocol header: starts with {data[:8]!r}")
    set_host, set_port = _TCP_SLOTS
    client = _new(TCPAddress)
    set_host(client, _inet_ntop(family, src))
    set_port(client, sport)
    destination = _DESTINATIONS.get((dst, dport)) or _destination(family, dst, dport)
    return _info(2, "PROXY", client, destination), used


# ----------------------------------------------------------------------
# Version 1


def _parse_v1(data: bytes) -> tuple[ProxyInfo, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end >= 0:
        return _v1_line(data[:end]), end + 2
    _check_v1_prefix(data[:V1_MAX])
    if len(data) >= V1_MAX:
        raise ProxyProtocolError(f"a version 1 header has no CRLF within {V1_MAX} bytes")
    return None


def _v1_line(line: bytes) -> ProxyInfo:
    """The header a whole version 1 line (CRLF excluded) says."""
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("a bare CR or LF in a version 1 header")
    parts = line.split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ProxyProtocolError(f"not a PROXY protocol header: starts with {line[:8]!r}")
    protocol = parts[1]
    if protocol == b"TCP4":
        family = _AF_INET
    elif protocol == b"TCP6":
        family = _AF_INET6
    elif protocol == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF"
        return _info(1, "PROXY", None, None)
    else:
        raise ProxyProtocolError(f"unknown version 1 protocol {protocol!r}")
    if len(parts) != 6:
        raise ProxyProtocolError(
            f"a version 1 {protocol.decode()} header has 6 fields, not {len(parts)}: {line!r}"
        )
    client = _tcp(_v1_ip(family, parts[2]), _v1_port(parts[4]))
    destination = _tcp(_v1_ip(family, parts[3]), _v1_port(parts[5]))
    return _info(1, "PROXY", client, destination)


def _v1_ip(family: int, text: bytes) -> str:
    try:
        host = text.decode("ascii")
        packed = _inet_pton(family, host)
    except (OSError, UnicodeDecodeError, ValueError):
        kind = "IPv4" if family == _AF_INET else "IPv6"
        raise ProxyProtocolError(f"not an {kind} address in a version 1 header: {text!r}") from None
    # inet_pton takes IPv4 only as four decimal numbers without leading zeros:
    # the text is canonical already.  IPv6 has many spellings; keep one.
    return host if family == _AF_INET else _inet_ntop(family, packed)


def _v1_port(text: bytes) -> int:
    if not (text.isdigit() and len(text) <= 5) or (len(text) > 1 and text[0] == 0x30):
        raise ProxyProtocolError(f"not a port in a version 1 header: {text!r}")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError(f"port {port} out of range in a version 1 header")
    return port


# What can finish a partial field: if no ending from the list (shortest first)
# makes it valid, nothing can (a partial IPv4 address is some whole numbers and
# maybe a dot; a partial IPv6 one ends in a group, ":" or "::", or in an
# embedded IPv4 address).
_IP_ENDINGS: Final[dict[int, tuple[bytes, ...]]] = {
    _AF_INET: (b"", b"0", b".0", b"0.0", b".0.0", b"0.0.0", b".0.0.0", b"0.0.0.0"),
    _AF_INET6: (b"", b"0", b":", b"::", b".0", b"0.0", b".0.0", b"0.0.0", b".0.0.0"),
}
_SHORTEST: Final[dict[int, int]] = {_AF_INET: 7, _AF_INET6: 2, 0: 1}  # "0.0.0.0", "::", "0"


def _check_v1_prefix(line: bytes) -> None:
    """Raise unless ``line`` (no CRLF in it, at most 107 bytes) can begin a v1 header."""
    if line.endswith(b"\r"):
        _v1_line(line[:-1])  # only LF may follow: the line must be whole and valid
        return
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("a bare CR or LF in a version 1 header")
    if not (line.startswith(b"PROXY ") or b"PROXY ".startswith(line)):
        raise ProxyProtocolError(f"not a PROXY protocol header: starts with {line[:8]!r}")
    fields = line[6:].split(b" ")
    protocol = fields[0]
    if len(fields) == 1:  # the protocol word is still arriving
        if not any(p.startswith(protocol) for p in (b"TCP4", b"TCP6", b"UNKNOWN")):
            raise ProxyProtocolError(f"unknown version 1 protocol {protocol!r}")
        return
    if protocol == b"UNKNOWN":
        return  # anything may follow, up to the CRLF
    if protocol not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"unknown version 1 protocol {protocol!r}")
    family = _AF_INET if protocol == b"TCP4" else _AF_INET6
    kinds = (family, family, 0, 0)  # two addresses, two ports
    values = fields[1:]
    if len(values) > 4:
        raise ProxyProtocolError(f"a version 1 header has 6 fields, not more: {line!r}")
    for kind, value in zip(kinds, values[:-1], strict=False):
        if kind:
            _v1_ip(kind, value)
        else:
            _v1_port(value)
    kind, last = kinds[len(values) - 1], values[-1]
    if kind == 0:
        if last:
            _v1_port(last)
        missing = 0 if last else 1
    else:
        missing = _ip_ending(kind, last)
    # the rest of the line at its shortest: " 0" per field to come, and CRLF
    shortest = len(line) + missing + sum(1 + _SHORTEST[k] for k in kinds[len(values) :]) + 2
    if shortest > V1_MAX:
        raise ProxyProtocolError(f"a version 1 header cannot fit in {V1_MAX} bytes: {line!r}")


def _ip_ending(family: int, text: bytes) -> int:
    """How many bytes at least finish the partial address ``text``; raises if none can."""
    for ending in _IP_ENDINGS[family]:
        try:
            _inet_pton(family, (text + ending).decode("ascii"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        return len(ending)
    kind = "IPv4" if family == _AF_INET else "IPv6"
    raise ProxyProtocolError(f"not the start of an {kind} address in a version 1 header: {text!r}")


# ----------------------------------------------------------------------
# Version 2


def _parse_v2(data: bytes) -> tuple[ProxyInfo, int] | None:
    n = len(data)
    if not (data.startswith(V2_SIGNATURE) or V2_SIGNATURE.startswith(data)):
        raise ProxyProtocolError(f"not a PROXY protocol header: starts with {data[:8]!r}")
    if n < 13:
        return None
    command = _check_version_command(data[12])
    if n < 14:
        return None
    family = data[13]
    # A LOCAL header's family is discarded with its block (see below).
    address_length = _check_family(family) if command == 1 else 0
    if n < 16:
        return None
    length = (data[14] << 8) | data[15]
    if command == 1 and length < address_length:
        raise ProxyProtocolError(
            f"a version 2 header's block is {length} bytes, too short for its "
            f"addresses ({address_length})"
        )
    total = 16 + length
    if n < total:
        return None
    if command == 0:
        # LOCAL: "the receiver must accept this connection as valid and must
        # use the real connection endpoints and discard the protocol block
        # including the family".
        return _info(2, "LOCAL", None, None), total
    client: Address | None
    destination: Address | None
    if family == 0x11 or family == 0x21:
        af, unpack = (_AF_INET, _unpack_inet) if family == 0x11 else (_AF_INET6, _unpack_inet6)
        src, dst, sport, dport = unpack(data, 16)
        client = _tcp(_inet_ntop(af, src), sport)
        destination = _destination(af, dst, dport)
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
        raise ProxyProtocolError(
            f"unsupported PROXY protocol version {byte >> 4} (byte 13 is {byte:#04x}, not 0x2_)"
        )
    command = byte & 0x0F
    if command > 1:
        raise ProxyProtocolError(f"unknown version 2 command {command:#x} (0 is LOCAL, 1 is PROXY)")
    return command


def _check_family(byte: int) -> int:
    length = _V2_FAMILIES.get(byte)
    if length is None:
        if byte in _V2_DATAGRAM:
            raise ProxyProtocolError(
                f"a version 2 header for a datagram connection (family/transport {byte:#04x})"
            )
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
    for kind, offset, value in _tlvs(data, start, total, "TLV"):
        if kind == 0x04:  # NOOP: padding
            continue
        if kind not in _NAMED_TLVS:
            raw.append((kind, value))  # kept raw, in order (a type may repeat)
            continue
        if kind in seen:
            raise ProxyProtocolError(f"a version 2 header repeats TLV {kind:#04x}")
        seen.add(kind)
        if kind == 0x01:
            alpn = value
        elif kind == 0x02:
            authority = _text(value, "AUTHORITY")
        elif kind == 0x03:
            _verify_crc(data[:total], offset, value)
        elif kind == 0x05:
            if len(value) > 128:
                raise ProxyProtocolError(f"a UNIQUE_ID TLV is at most 128 bytes, not {len(value)}")
            unique_id = value
        else:  # 0x20
            ssl = _ssl(value)
    return _info(2, "PROXY", client, destination, alpn, authority, unique_id, ssl, tuple(raw))


_NAMED_TLVS: Final = frozenset({0x01, 0x02, 0x03, 0x05, 0x20})


def _tlvs(data: bytes, start: int, end: int, what: str) -> list[tuple[int, int, bytes]]:
    """``(type, value offset, value)`` for each TLV in ``data[start:end]``."""
    out = []
    i = start
    while i < end:
        if end - i < 3:
            raise ProxyProtocolError(
                f"a truncated {what} in a version 2 header: {end - i} bytes left, "
                "a type and a length take 3"
            )
        kind = data[i]
        length = (data[i + 1] << 8) | data[i + 2]
        if i + 3 + length > end:
            raise ProxyProtocolError(
                f"{what} {kind:#04x} of {length} bytes runs past the end of its "
                f"version 2 header ({end - i - 3} left)"
            )
        out.append((kind, i + 3, data[i + 3 : i + 3 + length]))
        i += 3 + length
    return out


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyProtocolError(f"the {what} TLV is not UTF-8: {value[:32]!r}") from None


def _verify_crc(header: bytes, offset: int, value: bytes) -> None:
    if len(value) != 4:
        raise ProxyProtocolError(f"a CRC32C TLV has 4 bytes, not {len(value)}")
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
        raise ProxyProtocolError(
            f"an SSL TLV has at least 5 bytes (client, verify), not {len(value)}"
        )
    fields: dict[str, str] = {}
    raw: list[tuple[int, bytes]] = []
    for kind, _, sub in _tlvs(value, 5, len(value), "SSL sub-TLV"):
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
