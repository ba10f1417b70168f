"""The server name a TLS ClientHello asks for (SNI), read from its first bytes.

Sans-I/O: bytes in, an answer out.  ``ssl.SSLObject`` does not tell a
server which name the client sent, and learning it through the context's
``sni_callback`` would mean changing the caller's context; since trionet
feeds the handshake bytes to OpenSSL itself, it reads the name on the way
(RFC 8446 section 4.1.2, RFC 6066 section 3).  Anything that does not parse
is simply "no name": OpenSSL, not this parser, judges the handshake.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MORE", "server_name"]

#: Returned while the bytes so far end before the ``server_name`` extension.
MORE: Final = object()

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0
#: Past this many bytes the name is not worth waiting for.
LIMIT: Final = 16384


def _u16(data: bytes, at: int) -> int:
    return (data[at] << 8) | data[at + 1]


def server_name(data: bytes) -> str | object | None:
    """The host name in the ClientHello that ``data`` starts with.

    Returns:
        The name (lower-cased, ASCII), None if there is none or the bytes are
        not a ClientHello, or :data:`MORE` if more bytes are needed (only up
        to :data:`LIMIT` bytes).
    """
    # TLSPlaintext: type(1) version(2) length(2), then Handshake: type(1)
    # length(3).  A ClientHello larger than one record is rare (post-quantum
    # key shares fit); only the first record's payload is read.
    if len(data) < 5:
        return MORE if len(data) < LIMIT else None
    if data[0] != _HANDSHAKE:
        return None
    record_end = 5 + _u16(data, 3)
    body = data[5:record_end]
    if len(body) < 4:
        return MORE if len(data) < min(record_end, LIMIT) else None
    if body[0] != _CLIENT_HELLO:
        return None
    try:
        return _parse_hello(body[4:], complete=len(data) >= record_end)
    except IndexError:
        return MORE if len(data) < min(record_end, LIMIT) else None


def _parse_hello(hello: bytes, *, complete: bool) -> str | object | None:
    # legacy_version(2) random(32) session_id<1> cipher_suites<2>
    # compression_methods<1> extensions<2>
    at = 2 + 32
    at += 1 + hello[at]
    at += 2 + _u16(hello, at)
    at += 1 + hello[at]
    if at + 2 > len(hello):
        if complete:
            return None  # no extensions at all
        raise IndexError
    end = at + 2 + _u16(hello, at)
    at += 2
    while at + 4 <= end:
        kind = _u16(hello, at)
        size = _u16(hello, at + 2)
        at += 4
        if kind == _SERVER_NAME:
            # ServerNameList<2>: name_type(1) HostName<2>
            names_end = at + 2 + _u16(hello, at)
            at += 2
            while at + 3 <= names_end:
                name_type = hello[at]
                length = _u16(hello, at + 1)
                name = hello[at + 3 : at + 3 + length]
                if len(name) < length:
                    raise IndexError
                if name_type == _HOST_NAME:
                    try:
                        return name.decode("ascii").lower() or None
                    except UnicodeDecodeError:
                        return None
                at += 3 + length
            return None
        at += size
    if at > len(hello) and not complete:
        raise IndexError
    return None
