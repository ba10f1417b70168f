"""The server name a TLS ClientHello asks for (SNI), read from its first bytes.

Sans-I/O: bytes in, an answer out.  ``ssl.SSLObject`` does not tell a
server which name the client sent, and learning it through the context's
``sni_callback`` would mean changing the caller's context; since trionet
feeds the handshake bytes to OpenSSL itself, it reads the name on the way
(RFC 8446 section 4.1.2, RFC 6066 section 3).  Anything that does not parse
is simply "no name": OpenSSL, not this parser, judges the handshake.

A ClientHello may be fragmented over several handshake records (RFC 8446
section 5.1: a large post-quantum key share can make it outgrow one, and a
peer may split it anywhere); the records' payloads are joined before the
message is read.  Nothing past :data:`LIMIT` bytes is waited for.
"""

from __future__ import annotations

from typing import Final

__all__ = ["LIMIT", "MORE", "server_name"]

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

    Never raises, whatever ``data`` holds.

    Returns:
        The name (lower-cased, ASCII); None if there is none, or the bytes
        are not a ClientHello; :data:`MORE` if more bytes are needed to tell
        (only while ``data`` is shorter than :data:`LIMIT`).
    """
    # TLSPlaintext: type(1) version(2) length(2) fragment; the fragments of
    # consecutive handshake records join into Handshake: type(1) length(3)
    # body -- here a ClientHello.
    joined = _handshake_bytes(data)
    if joined is None:
        return None
    payload, more_records = joined
    may_grow = more_records and len(data) < LIMIT
    if len(payload) < 4:
        return MORE if may_grow else None
    if payload[0] != _CLIENT_HELLO:
        return None
    size = (payload[1] << 16) | _u16(payload, 2)
    hello = payload[4 : 4 + size]
    complete = len(hello) >= size
    try:
        return _parse_hello(hello, complete=complete)
    except IndexError:
        return MORE if may_grow and not complete else None


def _handshake_bytes(data: bytes) -> tuple[bytes, bool] | None:
    """The joined payload of the handshake records ``data`` starts with.

    Returns None if ``data`` does not start with a handshake record, else
    the payload and whether a later byte could still add to it (``data``
    ends inside a record, or right after a whole one).
    """
    if data[:1] and data[0] != _HANDSHAKE:
        return None
    parts: list[bytes] = []
    at = 0
    while at < len(data):
        if data[at] != _HANDSHAKE:
            return b"".join(parts), False  # something else follows: the hello ended
        if at + 5 > len(data):
            break  # a record header cut short
        end = at + 5 + _u16(data, at + 3)
        parts.append(data[at + 5 : end])
        at = end
    return b"".join(parts), True


def _parse_hello(hello: bytes, *, complete: bool) -> str | object | None:
    # legacy_version(2) random(32) session_id<1> cipher_suites<2>
    # compression_methods<1> extensions<2>
    # Raises IndexError when ``hello`` ends too soon.
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
