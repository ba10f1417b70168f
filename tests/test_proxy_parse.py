"""The sans-I/O PROXY protocol parser (and encoder): spec vectors and properties.

The vectors come from HAProxy's "The PROXY protocol, Versions 1 & 2"
(doc/proxy-protocol.txt); the version 2 headers are built here with
``struct`` so that they do not depend on the encoder.  The properties run a
quick budget under ``make test`` and a long one under ``make test-long``
(``TRIONET_LONG=1``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import sys
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import trionet
from trionet import ProxyInfo, ProxyProtocolError, ProxySSL, TCPAddress, UnixAddress
from trionet import parse_proxy_header as parse
from trionet._proxy._crc32c import crc32c
from trionet._proxy._encode import encode_proxy_header
from trionet._proxy._info import KNOWN_SSL_TYPES, KNOWN_TLV_TYPES

# `make test-long` sets TRIONET_LONG=1 for the long property-based runs.
LONG = os.environ.get("TRIONET_LONG") == "1"
PROPERTY = settings(
    max_examples=3000 if LONG else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
#: The arbitrary-bytes property: >= 100k examples in the long run (about 90 s);
#: mutated headers are longer to check byte by byte, so 25k of those (80 s).
FUZZ = settings(
    max_examples=100_000 if LONG else 500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
MUTATIONS = settings(FUZZ, max_examples=25_000 if LONG else 300)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
FFFF6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
TAIL = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03GET / HTTP/1.1\r\n\r\n"


def tcp(host: str, port: int) -> TCPAddress:
    return TCPAddress(host, port)


def v2(command: int, family: int, block: bytes, *, version: int = 2) -> bytes:
    """A version 2 header, laid out by hand: signature, ver/cmd, family, length, block."""
    return SIG + struct.pack("!BBH", version << 4 | command, family, len(block)) + block


def inet(src: str, dst: str, sport: int, dport: int) -> bytes:
    return struct.pack("!4s4sHH", socket.inet_aton(src), socket.inet_aton(dst), sport, dport)


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    pton = socket.inet_pton
    return struct.pack(
        "!16s16sHH", pton(socket.AF_INET6, src), pton(socket.AF_INET6, dst), sport, dport
    )


def unix(src: bytes, dst: bytes) -> bytes:
    return struct.pack("!108s108s", src, dst)  # "s" pads with NUL


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def ssl_tlv(flags: int, verify: int, *subs: bytes) -> bytes:
    return tlv(0x20, struct.pack("!BI", flags, verify) + b"".join(subs))


def reference_crc32c(data: bytes) -> int:
    """CRC32C bit by bit (RFC 4960 appendix B), independent of trionet's table."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def with_crc(command: int, family: int, block: bytes) -> bytes:
    """``block`` plus a CRC32C TLV, the checksum computed over the zeroed header."""
    zeroed = v2(command, family, block + tlv(0x03, b"\0\0\0\0"))
    return zeroed[:-4] + struct.pack("!I", reference_crc32c(zeroed))


def parsed(data: bytes) -> tuple[ProxyInfo, int]:
    result = parse(data)
    assert result is not None, f"need more for {data!r}"
    return result


def assert_prefixes_need_more(header: bytes) -> None:
    for i in range(len(header)):
        assert parse(header[:i]) is None, f"prefix {header[:i]!r} of a valid header"


# ----------------------------------------------------------------------
# Version 1: the spec's own lines

V1_VECTORS: list[tuple[bytes, ProxyInfo]] = [
    (
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        ProxyInfo(
            1,
            client=tcp("255.255.255.255", 65535),
            destination=tcp("255.255.255.255", 65535),
        ),
    ),
    (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        ProxyInfo(1, client=tcp("192.168.0.1", 56324), destination=tcp("192.168.0.11", 443)),
    ),
    (
        b"PROXY TCP4 0.0.0.0 10.0.0.1 0 1\r\n",
        ProxyInfo(1, client=tcp("0.0.0.0", 0), destination=tcp("10.0.0.1", 1)),
    ),
    (
        f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(),
        ProxyInfo(1, client=tcp(FFFF6, 65535), destination=tcp(FFFF6, 65535)),
    ),
    (
        b"PROXY TCP6 2001:DB8:0000::1 ::1 51000 443\r\n",  # upper case, zeros: normalised
        ProxyInfo(1, client=tcp("2001:db8::1", 51000), destination=tcp("::1", 443)),
    ),
    (
        b"PROXY TCP6 ::ffff:192.0.2.7 :: 1 2\r\n",
        ProxyInfo(1, client=tcp("::ffff:192.0.2.7", 1), destination=tcp("::", 2)),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyInfo(1)),
    (f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(), ProxyInfo(1)),
    (b"PROXY UNKNOWN whatever the proxy put here \x80\xff\r\n", ProxyInfo(1)),
    (b"PROXY UNKNOWN \r\n", ProxyInfo(1)),
]


@pytest.mark.parametrize(("header", "expected"), V1_VECTORS)
def test_v1_spec_vectors(header: bytes, expected: ProxyInfo) -> None:
    info, used = parsed(header + TAIL)
    assert info == expected
    assert used == len(header)  # the tail is the connection's, not the header's
    assert parse(bytearray(header)) == (expected, len(header))
    assert parse(memoryview(header + TAIL)) == (expected, len(header))
    assert_prefixes_need_more(header)


def test_v1_spec_lengths() -> None:
    # The spec's worst cases: 56 (TCP4), 104 (TCP6) and 107 (UNKNOWN) bytes.
    assert len(V1_VECTORS[0][0]) == 56
    assert len(V1_VECTORS[3][0]) == 104
    assert len(V1_VECTORS[7][0]) == 107
    assert parsed(V1_VECTORS[7][0])[1] == 107


def test_v1_unknown_and_local_have_no_client() -> None:
    info, _ = parsed(b"PROXY UNKNOWN\r\n")
    assert info.version == 1 and info.command == "PROXY"
    assert info.client is None and info.destination is None and info.is_local


V1_MALFORMED: list[tuple[bytes, str]] = [
    (b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", "not an IPv4 address"),  # leading zero
    (b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 256.2.3.4 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "not an IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 1.2.3.4 1 2\r\n", "not an IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "not an IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 0443 2\r\n", "not a port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 65536\r\n", "out of range"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", "not a port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 +2\r\n", "not a port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", "6 fields, not 5"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", "6 fields"),
    (b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", "6 fields, not 7"),  # two spaces
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", "6 fields"),  # trailing space
    (b"PROXY TCP4\r\n", "6 fields, not 2"),
    (b"PROXY\r\n", "not a PROXY protocol header"),
    (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown version 1 protocol"),
    (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "not a PROXY protocol header"),
    (b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", "unknown version 1 protocol"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", "bare CR or LF"),  # LF alone ends no line
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\r\n", "bare CR or LF"),
    (b"PROXY UNKNOWN a\rb\r\n", "bare CR or LF"),
    (b"PROXY UNKNOWN a\nb\r\n", "bare CR or LF"),
    (b"PROXY UNKNOWN a\r\r\n", "bare CR or LF"),
    (b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n", "no CRLF within 107"),  # 108 bytes
    (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2" + b" " * 80, "6 fields"),
]


@pytest.mark.parametrize(("data", "message"), V1_MALFORMED)
def test_v1_malformed(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=message):
        parse(data + TAIL)


def test_v1_crlf_past_107_bytes() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(line) == 107 and parse(line) == (ProxyInfo(1), 107)
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(b"PROXY UNKNOWN " + b"x" * 92 + b"\r\n")
    with pytest.raises(ProxyProtocolError, match="107"):
        parse(b"PROXY UNKNOWN " + b"x" * 92 + b"\r")  # the LF could only be byte 108


# ----------------------------------------------------------------------
# Rejected at the first byte that cannot belong to a header


EARLIEST_INVALID: list[tuple[bytes, str]] = [
    (b"G", "not a PROXY protocol header"),
    (b"\x16", "not a PROXY protocol header"),  # a TLS record
    (b"S", "not a PROXY protocol header"),  # SSH-2.0...
    (b"PU", "not a PROXY protocol header"),
    (b"PROXY\r", "not a PROXY protocol header"),
    (b"PROXY  ", "unknown version 1 protocol"),
    (b"PROXYX", "not a PROXY protocol header"),
    (b"PROXY TCP5", "unknown version 1 protocol"),
    (b"PROXY TCP ", "unknown version 1 protocol"),
    (b"PROXY UNKNOWNX", "unknown version 1 protocol"),
    (b"PROXY UNKNOWN\rX", "bare CR or LF"),
    (b"PROXY UNKNOWN x\n", "bare CR or LF"),
    (b"PROXY TCP4\r", "6 fields"),
    (b"PROXY TCP4 1.2.3.4x", "IPv4"),
    (b"PROXY TCP4 1.2.3.4.", "IPv4"),
    (b"PROXY TCP4 1..", "IPv4"),
    (b"PROXY TCP4 01", "IPv4"),
    (b"PROXY TCP4 256", "IPv4"),
    (b"PROXY TCP4 1.2.3.1000", "IPv4"),
    (b"PROXY TCP4 :", "IPv4"),
    (b"PROXY TCP4  ", "IPv4"),
    (b"PROXY TCP4 1.2.3 ", "IPv4"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01", "not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536", "out of range"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 x", "not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "6 fields"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", "bare CR or LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bare CR or LF"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r", "not a port"),
    (b"PROXY TCP6 1.", "IPv6"),
    (b"PROXY TCP6 1:::", "IPv6"),
    (b"PROXY TCP6 :1", "IPv6"),
    (b"PROXY TCP6 12345", "IPv6"),
    (b"PROXY TCP6 1::2::", "IPv6"),
    (b"PROXY TCP6 1:2:3:4:5:6:7:8:", "IPv6"),
    (b"PROXY TCP6 ::1.2.3.4.", "IPv6"),
    (b"PROXY TCP6 ::g", "IPv6"),
    (b"\r\x00", "not a PROXY protocol header"),
    (b"\r\n\r\n\x01", "not a PROXY protocol header"),
    (b"\r\n\r\n\x00\r\nQUIX", "not a PROXY protocol header"),
    (SIG + b"\x31", "unsupported PROXY protocol version 3"),
    (SIG + b"\x11", "unsupported PROXY protocol version 1"),
    (SIG + b"\x01", "unsupported PROXY protocol version 0"),
    (SIG + b"\x22", "unknown version 2 command 0x2"),
    (SIG + b"\x2f", "unknown version 2 command 0xf"),
    (SIG + b"\x21\x12", "datagram"),
    (SIG + b"\x21\x22", "datagram"),
    (SIG + b"\x21\x32", "datagram"),
    (SIG + b"\x21\x41", "unknown version 2 address family/transport 0x41"),
    (SIG + b"\x21\x10", "unknown version 2 address family/transport 0x10"),
    (SIG + b"\x21\x13", "unknown version 2 address family/transport 0x13"),
    (SIG + b"\x21\x11\x00\x0b", r"block is 11 bytes, too short for its addresses \(12\)"),
    (SIG + b"\x21\x21\x00\x23", r"block is 35 bytes, too short for its addresses \(36\)"),
    (SIG + b"\x21\x31\x00\xd7", r"block is 215 bytes, too short for its addresses \(216\)"),
    (SIG + b"\x21\x11\x00\x00", r"block is 0 bytes"),
]


@pytest.mark.parametrize(("bad", "message"), EARLIEST_INVALID)
def test_rejected_at_the_first_impossible_byte(bad: bytes, message: str) -> None:
    # One byte earlier the bytes could still start a header; with the last
    # one they cannot, and the parser says so without waiting for more.
    assert parse(bad[:-1]) is None
    with pytest.raises(ProxyProtocolError, match=message):
        parse(bad)
    with pytest.raises(ProxyProtocolError):
        parse(bad + b"more bytes\r\n")  # and no later byte makes it right


def test_a_local_header_discards_its_family_whatever_it_is() -> None:
    # "the receiver must ... discard the protocol block including the
    # family": a LOCAL header with a datagram or unknown family is accepted.
    for family in (0x00, 0x12, 0x41, 0xFF):
        header = SIG + bytes((0x20, family)) + b"\x00\x04" + b"junk"
        parsed = parse(header + b"rest")
        assert parsed is not None
        info, used = parsed
        assert (info.command, info.client, used) == ("LOCAL", None, len(header))


def test_v1_rejected_once_it_cannot_fit_in_107_bytes() -> None:
    # IPv6 addresses with an embedded IPv4 one are up to 45 characters: two
    # of those cannot fit with two ports in 107 bytes, and that shows
    # before the line is.
    long6 = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
    start = f"PROXY TCP6 {long6} ".encode()
    fits = start + long6[:-1].encode() + b" 1 1\r\n"  # ...255.255.255.25: still an address
    assert len(fits) == 107 and parsed(fits)[1] == 107
    line = start + long6.encode()  # with two ports and CRLF: 108 bytes at least
    assert parse(line[:-1]) is None
    with pytest.raises(ProxyProtocolError, match="cannot fit in 107 bytes"):
        parse(line)


# ----------------------------------------------------------------------
# Version 2: hand-built headers


def test_v2_local() -> None:
    header = v2(0, 0x00, b"")
    assert len(header) == 16
    info, used = parsed(header + TAIL)
    assert (info.version, info.command, info.client, info.destination) == (2, "LOCAL", None, None)
    assert used == 16 and info.is_local and not info.has_tlvs
    assert_prefixes_need_more(header)


def test_v2_local_discards_its_block() -> None:
    # "the receiver must ... discard the protocol block including the family"
    block = inet("192.0.2.1", "192.0.2.2", 1, 2) + tlv(0x05, b"id") + tlv(0xE0, b"x")
    for family in (0x00, 0x11, 0x21, 0x31):
        header = v2(0, family, block)
        assert parse(header + TAIL) == (ProxyInfo(2, "LOCAL"), len(header))


def test_v2_inet() -> None:
    header = v2(1, 0x11, inet("192.168.0.1", "192.168.0.11", 56324, 443))
    assert len(header) == 28
    info, used = parsed(header + TAIL)
    assert info == ProxyInfo(
        2, client=tcp("192.168.0.1", 56324), destination=tcp("192.168.0.11", 443)
    )
    assert used == 28
    assert_prefixes_need_more(header)


def test_v2_inet6() -> None:
    header = v2(1, 0x21, inet6("2001:db8::7", "::ffff:192.0.2.1", 65535, 0))
    assert len(header) == 52
    assert parse(header + TAIL) == (
        ProxyInfo(2, client=tcp("2001:db8::7", 65535), destination=tcp("::ffff:192.0.2.1", 0)),
        52,
    )
    assert_prefixes_need_more(header)


def test_v2_unix() -> None:
    header = v2(1, 0x31, unix(b"/run/client.sock", b"\0haproxy-frontend"))
    assert len(header) == 232
    assert parse(header + TAIL) == (
        ProxyInfo(
            2,
            client=UnixAddress("/run/client.sock"),
            destination=UnixAddress("@haproxy-frontend"),
        ),
        232,
    )
    unnamed = v2(1, 0x31, unix(b"", b"/a\xffb"))  # an unnamed peer; a non-UTF-8 path
    assert parse(unnamed) == (
        ProxyInfo(
            2,
            client=UnixAddress(""),
            destination=UnixAddress(b"/a\xffb".decode("utf-8", "surrogateescape")),
        ),
        232,
    )
    assert_prefixes_need_more(header)


def test_v2_unix_path_without_nul() -> None:
    with pytest.raises(ProxyProtocolError, match="Unix address"):
        parse(v2(1, 0x31, b"/" * 108 + unix(b"", b"")[:108]))


def test_v2_unspec() -> None:
    header = v2(1, 0x00, b"")
    assert parse(header + TAIL) == (ProxyInfo(2), 16)
    with_tlv = v2(1, 0x00, tlv(0x02, b"example.com"))
    assert parse(with_tlv) == (ProxyInfo(2, authority="example.com"), len(with_tlv))


def test_v2_addresses_longer_than_the_family_leave_tlvs() -> None:
    block = inet("10.0.0.1", "10.0.0.2", 1000, 80)
    info, used = parsed(v2(1, 0x11, block + tlv(0x01, b"h2")) + TAIL)
    assert info.alpn == b"h2" and info.client == tcp("10.0.0.1", 1000)
    assert used == 16 + 12 + 5


ADDRESSES = inet("192.0.2.1", "198.51.100.1", 51000, 443)
CLIENT, DESTINATION = tcp("192.0.2.1", 51000), tcp("198.51.100.1", 443)


@pytest.mark.parametrize(
    ("tlvs", "fields"),
    [
        (tlv(0x01, b"h2"), {"alpn": b"h2"}),
        (tlv(0x01, b""), {"alpn": b""}),
        (tlv(0x02, "bücher.example".encode()), {"authority": "bücher.example"}),
        (tlv(0x04, b""), {}),  # NOOP: padding, any length, any number of times
        (tlv(0x04, b"\0" * 9) + tlv(0x01, b"h2") + tlv(0x04, b"x"), {"alpn": b"h2"}),
        (tlv(0x05, b"\x01" * 128), {"unique_id": b"\x01" * 128}),
        (tlv(0x05, b""), {"unique_id": b""}),
        (tlv(0x30, b"blue"), {"tlvs": ((0x30, b"blue"),)}),  # NETNS: kept raw
        (
            tlv(0xEA, b"\x01vpce-0123") + tlv(0xE0, b"") + tlv(0xEA, b"\x02"),
            {"tlvs": ((0xEA, b"\x01vpce-0123"), (0xE0, b""), (0xEA, b"\x02"))},
        ),
        (tlv(0x06, b"?"), {"tlvs": ((0x06, b"?"),)}),  # unassigned: raw too
        (
            ssl_tlv(
                0x07,
                0,
                tlv(0x21, b"TLSv1.3"),
                tlv(0x22, b"client.example"),
                tlv(0x23, b"ECDHE-RSA-AES128-GCM-SHA256"),
                tlv(0x24, b"RSA-SHA256"),
                tlv(0x25, b"RSA2048"),
                tlv(0x2F, b"raw"),
            ),
            {
                "ssl": ProxySSL(
                    flags=7,
                    verify=0,
                    version="TLSv1.3",
                    common_name="client.example",
                    cipher="ECDHE-RSA-AES128-GCM-SHA256",
                    signature_algorithm="RSA-SHA256",
                    key_algorithm="RSA2048",
                    tlvs=((0x2F, b"raw"),),
                )
            },
        ),
        (ssl_tlv(0, 0xFFFFFFFF), {"ssl": ProxySSL(flags=0, verify=0xFFFFFFFF)}),
        (
            tlv(0x01, b"http/1.1") + tlv(0x02, b"a.example") + tlv(0x05, b"id-1"),
            {"alpn": b"http/1.1", "authority": "a.example", "unique_id": b"id-1"},
        ),
    ],
)
def test_v2_tlvs(tlvs: bytes, fields: dict[str, Any]) -> None:
    header = v2(1, 0x11, ADDRESSES + tlvs)
    expected = attrs.evolve(ProxyInfo(2, client=CLIENT, destination=DESTINATION), **fields)
    assert parse(header + TAIL) == (expected, len(header))
    assert_prefixes_need_more(header)


def test_v2_ssl_properties() -> None:
    def ssl_of(flags: int, verify: int) -> ProxySSL:
        info, _ = parsed(v2(1, 0x11, ADDRESSES + ssl_tlv(flags, verify, tlv(0x21, b"TLSv1.2"))))
        assert info.ssl is not None and info.ssl.version == "TLSv1.2"
        return info.ssl

    verified = ssl_of(0x01 | 0x02, 0)
    assert verified.tls and verified.client_certificate and verified.certificate_verified
    session = ssl_of(0x01 | 0x04, 0)
    assert session.client_certificate and session.certificate_verified
    refused = ssl_of(0x03, 1)
    assert refused.client_certificate and not refused.certificate_verified
    plain = ssl_of(0x01, 0)
    assert plain.tls and not plain.client_certificate and not plain.certificate_verified
    assert not ssl_of(0, 0).tls


def test_v2_crc32c() -> None:
    assert crc32c(b"123456789") == reference_crc32c(b"123456789") == 0xE3069283
    block = ADDRESSES + tlv(0x01, b"h2")
    header = with_crc(1, 0x11, block)
    expected = ProxyInfo(2, client=CLIENT, destination=DESTINATION, alpn=b"h2")
    assert parse(header + TAIL) == (expected, len(header))  # the CRC TLV is not kept
    # the checksum TLV anywhere among the others
    zeroed = v2(1, 0x00, tlv(0x04, b"pad") + tlv(0x03, b"\0" * 4) + tlv(0x05, b"id"))
    at = 16 + 6 + 3
    middle = zeroed[:at] + struct.pack("!I", reference_crc32c(zeroed)) + zeroed[at + 4 :]
    assert parse(middle) == (ProxyInfo(2, unique_id=b"id"), len(middle))


@pytest.mark.parametrize("flip", [16, 20, 27, 31, 32, -1, -4])
def test_v2_crc32c_mismatch(flip: int) -> None:
    header = bytearray(with_crc(1, 0x11, ADDRESSES + tlv(0x01, b"h2")))
    header[flip] ^= 0x01
    with pytest.raises(ProxyProtocolError, match="CRC32C does not match"):
        parse(bytes(header))


def test_v2_crc32c_of_the_wrong_size() -> None:
    with pytest.raises(ProxyProtocolError, match="CRC32C TLV has 4 bytes, not 3"):
        parse(v2(1, 0x11, ADDRESSES + tlv(0x03, b"\0\0\0")))


@pytest.mark.parametrize(
    ("block", "message"),
    [
        (ADDRESSES + b"\x01", "a truncated TLV .* 1 bytes left"),
        (ADDRESSES + b"\x01\x00", "a truncated TLV .* 2 bytes left"),
        (ADDRESSES + b"\x01\x00\x03h2", r"TLV 0x01 of 3 bytes runs past the end .*\(2 left\)"),
        (ADDRESSES + tlv(0x01, b"h2") + b"\x20\xff\xff", "TLV 0x20 of 65535 bytes runs past"),
        (ADDRESSES + tlv(0x05, b"\x01" * 129), "UNIQUE_ID TLV is at most 128 bytes, not 129"),
        (ADDRESSES + tlv(0x01, b"a") + tlv(0x01, b"b"), "repeats TLV 0x01"),
        (ADDRESSES + tlv(0x02, b"a") + tlv(0x02, b"a"), "repeats TLV 0x02"),
        (ADDRESSES + tlv(0x05, b"a") + tlv(0x05, b"a"), "repeats TLV 0x05"),
        (ADDRESSES + ssl_tlv(0, 0) + ssl_tlv(0, 0), "repeats TLV 0x20"),
        (ADDRESSES + tlv(0x02, b"\xff"), "AUTHORITY TLV is not UTF-8"),
        (ADDRESSES + tlv(0x20, b"\x01\0\0\0"), "SSL TLV has at least 5 bytes"),
        (ADDRESSES + ssl_tlv(1, 0, b"\x21\x00"), "truncated SSL sub-TLV"),
        (ADDRESSES + ssl_tlv(1, 0, b"\x21\x00\x09TLS"), "SSL sub-TLV 0x21 of 9 bytes runs past"),
        (ADDRESSES + ssl_tlv(1, 0, tlv(0x21, b"a"), tlv(0x21, b"b")), "repeats sub-TLV 0x21"),
        (ADDRESSES + ssl_tlv(1, 0, tlv(0x22, b"\xc3")), "SSL common_name TLV is not UTF-8"),
    ],
)
def test_v2_malformed_tlvs(block: bytes, message: str) -> None:
    header = v2(1, 0x11, block)
    assert_prefixes_need_more(header)  # the block is read whole, then checked
    with pytest.raises(ProxyProtocolError, match=message):
        parse(header + TAIL)


def test_v2_length_counts_every_byte() -> None:
    # The length covers the whole block: the bytes after it are the connection's.
    header = v2(1, 0x11, ADDRESSES)
    assert parse(header + SIG + b"\x21\x11\x00\x0c" + ADDRESSES) == (
        ProxyInfo(2, client=CLIENT, destination=DESTINATION),
        28,
    )
    big = v2(1, 0x11, ADDRESSES + tlv(0xE1, b"x" * 65000))
    info, used = parsed(big + TAIL)
    assert used == len(big) == 16 + 12 + 3 + 65000 and info.tlvs == ((0xE1, b"x" * 65000),)
    assert parse(big[:-1]) is None
    assert parse(bytearray(big[:-1])) is None
    assert parse(memoryview(big)[:20]) is None
    with pytest.raises(ProxyProtocolError, match="version 2 command 0x3"):
        parse(bytearray(big[:12] + b"\x23" + big[13:-1]))
    with pytest.raises(ProxyProtocolError, match="too short for its addresses"):
        parse(bytearray(v2(1, 0x21, b"\0" * 35))[:-1])


def test_records_are_fresh_and_need_no_validators() -> None:
    # The server's PROXY stage fills in ``source`` on the record it got, so
    # the parser must never hand out one record twice.
    header = v2(1, 0x11, ADDRESSES)
    first, second = parsed(header)[0], parsed(header)[0]
    assert first == second and first is not second
    for data in (header, v2(1, 0x21, inet6("::1", "::2", 1, 2)), V1_VECTORS[1][0]):
        info, _ = parsed(data)
        assert attrs.evolve(info) == info  # what the validators say too
        assert info.source is None and info.ssl is None and info.tlvs == ()


# ----------------------------------------------------------------------
# Records and the encoder (only what the properties do not cover)


def test_record_refuses_what_a_header_cannot_say() -> None:
    with pytest.raises(ValueError, match="LOCAL header carries no addresses and no TLVs"):
        ProxyInfo(2, "LOCAL", unique_id=b"x")
    with pytest.raises(ValueError, match="no IPv6 scope"):
        ProxyInfo(2, client=tcp("fe80::1%eth0", 1), destination=tcp("fe80::2", 2))
    with pytest.raises(ValueError, match="not the host name"):
        ProxyInfo(1, client=tcp("localhost", 1), destination=tcp("127.0.0.1", 2))


def test_encoder_layout_matches_the_hand_built_headers() -> None:
    info = ProxyInfo(2, client=CLIENT, destination=DESTINATION, alpn=b"h2")
    assert info.encode() == v2(1, 0x11, ADDRESSES + tlv(0x01, b"h2"))
    assert encode_proxy_header(info, checksum=True) == with_crc(
        1, 0x11, ADDRESSES + tlv(0x01, b"h2")
    )
    assert ProxyInfo(2, "LOCAL").encode() == v2(0, 0x00, b"")
    assert ProxyInfo(1).encode() == b"PROXY UNKNOWN\r\n"
    assert V1_VECTORS[1][1].encode() == V1_VECTORS[1][0]
    with pytest.raises(ValueError, match="version 1 header has no checksum"):
        encode_proxy_header(ProxyInfo(1), checksum=True)


def test_the_sans_io_modules_import_no_trio() -> None:
    code = (
        "import sys\n"
        "import trionet._proxy._parse, trionet._proxy._encode, trionet._proxy._info\n"
        "import trionet._proxy._crc32c\n"
        "from trionet._proxy._parse import parse_proxy_header\n"
        "assert parse_proxy_header(b'PROXY UNKNOWN\\r\\n') is not None\n"
        "print(sorted(m for m in sys.modules if m == 'trio' or m.startswith('trio.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


# ----------------------------------------------------------------------
# Hypothesis: generated headers


def canonical_ip(packed: bytes) -> str:
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed)


ports = st.integers(0, 65535)
ipv4 = st.binary(min_size=4, max_size=4).map(canonical_ip)
ipv6 = st.one_of(
    st.binary(min_size=16, max_size=16),
    st.sampled_from(["::", "::1", "::ffff:192.0.2.1", "::192.0.2.1", "fe80::1", "64:ff9b::1"]).map(
        lambda s: ipaddress.IPv6Address(s).packed
    ),
).map(canonical_ip)
# UnixAddress paths: at most 107 bytes, no NUL; "@name" is the abstract namespace
# (an empty name is left out: in a header it cannot be told from an unnamed peer).
_path_bytes = st.binary(min_size=1, max_size=106).filter(lambda b: b"\0" not in b)
file_paths = _path_bytes.filter(lambda b: not b.startswith(b"@")).map(
    lambda b: b.decode("utf-8", "surrogateescape")
)
abstract_names = _path_bytes.map(lambda b: "@" + b.decode("utf-8", "surrogateescape"))
unix_paths = st.one_of(file_paths, abstract_names, st.just(""))


def tcp_pairs(hosts: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[TCPAddress, TCPAddress]]:
    address = st.builds(TCPAddress, hosts, ports)
    return st.tuples(address, address)


unix_pairs = st.tuples(st.builds(UnixAddress, unix_paths), st.builds(UnixAddress, unix_paths))
text = st.text(st.characters(codec="utf-8"), max_size=40)
raw_tlvs = st.lists(
    st.tuples(
        st.integers(0, 255).filter(lambda t: t not in KNOWN_TLV_TYPES), st.binary(max_size=40)
    ),
    max_size=4,
).map(tuple)
ssl_records = st.builds(
    ProxySSL,
    flags=st.integers(0, 255),
    verify=st.integers(0, 0xFFFFFFFF),
    version=st.none() | text,
    common_name=st.none() | text,
    cipher=st.none() | text,
    signature_algorithm=st.none() | text,
    key_algorithm=st.none() | text,
    tlvs=st.lists(
        st.tuples(
            st.integers(0, 255).filter(lambda t: t not in KNOWN_SSL_TYPES),
            st.binary(max_size=20),
        ),
        max_size=3,
    ).map(tuple),
)


@st.composite
def v2_proxy(draw: st.DrawFn) -> ProxyInfo:
    addresses = draw(st.one_of(tcp_pairs(ipv4), tcp_pairs(ipv6), unix_pairs, st.just((None, None))))
    return ProxyInfo(
        2,
        "PROXY",
        client=addresses[0],
        destination=addresses[1],
        alpn=draw(st.none() | st.binary(max_size=40)),
        authority=draw(st.none() | text),
        unique_id=draw(st.none() | st.binary(max_size=128)),
        ssl=draw(st.none() | ssl_records),
        tlvs=draw(raw_tlvs),
    )


v1_headers = st.one_of(tcp_pairs(ipv4), tcp_pairs(ipv6), st.just((None, None))).map(
    lambda a: ProxyInfo(1, client=a[0], destination=a[1])
)
headers = st.one_of(v1_headers, st.just(ProxyInfo(2, "LOCAL")), v2_proxy())


def encode(info: ProxyInfo, checksum: bool) -> bytes:
    return encode_proxy_header(info, checksum=checksum and info.version == 2)


@PROPERTY
@given(info=headers, checksum=st.booleans(), tail=st.binary(max_size=64))
@example(info=ProxyInfo(2, "LOCAL"), checksum=True, tail=b"")
def test_every_header_round_trips(info: ProxyInfo, checksum: bool, tail: bytes) -> None:
    wire = encode(info, checksum)
    assert parse(wire + tail) == (info, len(wire))
    assert parse(bytearray(wire)) == (info, len(wire))
    if info.version == 1:
        assert len(wire) <= 107


@PROPERTY
@given(info=headers, checksum=st.booleans(), tail=st.binary(max_size=32), data=st.data())
def test_any_split_parses_the_same(
    info: ProxyInfo, checksum: bool, tail: bytes, data: st.DataObject
) -> None:
    wire = encode(info, checksum)
    stream = wire + tail
    cuts = data.draw(st.lists(st.integers(1, len(stream)), max_size=16).map(sorted))
    received = b""
    for cut in [*cuts, len(stream)]:
        received = stream[:cut]  # the chunks so far, appended
        result = parse(received)
        assert parse(bytearray(received)) == result  # what the server's stage passes
        if len(received) < len(wire):
            assert result is None
        else:
            assert result == (info, len(wire))


@st.composite
def ipv6_spellings(draw: st.DrawFn) -> tuple[bytes, str]:
    """A random IPv6 address and one of its many spellings: zero padding, case,
    ``::`` for any run of zero groups, a dotted IPv4 tail."""
    packed = draw(
        st.one_of(
            st.binary(min_size=16, max_size=16),
            st.lists(st.sampled_from([0, 0, 0, 1, 0xFFFF, 0xABC]), min_size=8, max_size=8).map(
                lambda words: struct.pack("!8H", *words)
            ),
        )
    )
    words = struct.unpack("!8H", packed)
    dotted = draw(st.booleans())
    count = 6 if dotted else 8
    groups = []
    for word in words[:count]:
        digits = format(word, "x").rjust(draw(st.integers(1, 4)), "0")
        groups.append(digits.upper() if draw(st.booleans()) else digits)
    tail = [socket.inet_ntoa(packed[12:])] if dotted else []
    zero_runs = [
        (i, j)
        for i in range(count)
        for j in range(i + 1, count + 1)
        if all(word == 0 for word in words[i:j])
    ]
    compress: bool = draw(st.booleans())
    if zero_runs and compress:
        i, j = draw(st.sampled_from(zero_runs))
        text = ":".join(groups[:i]) + "::" + ":".join(groups[j:] + tail)
    else:
        text = ":".join(groups + tail)
    return packed, text


@PROPERTY
@given(client=ipv6_spellings(), destination=ipv6_spellings(), sport=ports, dport=ports)
def test_v1_tcp6_any_spelling(
    client: tuple[bytes, str], destination: tuple[bytes, str], sport: int, dport: int
) -> None:
    line = f"PROXY TCP6 {client[1]} {destination[1]} {sport} {dport}\r\n".encode()
    if len(line) > 107:
        with pytest.raises(ProxyProtocolError):
            parse(line)
        return
    expected = ProxyInfo(
        1,
        client=tcp(canonical_ip(client[0]), sport),
        destination=tcp(canonical_ip(destination[0]), dport),
    )
    assert parse(line + TAIL) == (expected, len(line))
    assert_prefixes_need_more(line)  # no spelling is refused half-way


def outcome_of(data: bytes | bytearray) -> object:
    try:
        return parse(data)
    except ProxyProtocolError as exc:
        assert str(exc)
        return ProxyProtocolError


def check_outcome(data: bytes) -> None:
    """Whatever ``data`` is: None, a valid header, or ProxyProtocolError --
    and one-shot agrees with byte-by-byte feeding: None for a while, then
    either an error for good or the same header for good."""
    outcomes: list[object] = []
    for i in range(len(data) + 1):
        outcome = outcome_of(data[:i])
        assert outcome_of(bytearray(data[:i])) == outcome  # the server's stage passes these
        outcomes.append(outcome)
    assert outcomes[0] is None
    settled = next((o for o in outcomes if o is not None), None)
    if settled is None:
        return
    first = outcomes.index(settled)
    assert all(o is None for o in outcomes[:first])
    assert all(o == settled for o in outcomes[first:]), (data, outcomes)
    if settled is not ProxyProtocolError:
        assert isinstance(settled, tuple)
        info, used = settled
        assert isinstance(info, ProxyInfo) and used == first
        assert attrs.evolve(info) == info  # a record the validators accept
        assert parse(info.encode()) == (info, len(info.encode()))


starts = st.sampled_from(
    [
        b"",
        b"PROXY ",
        b"PROXY TCP4 ",
        b"PROXY TCP6 ",
        b"PROXY UNKNOWN",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 ",
        SIG,
        SIG + b"\x21\x11",
        SIG + b"\x21\x11\x00\x0c",
        SIG + b"\x21\x21\x00",
        SIG + b"\x21\x31\x00",
        SIG + b"\x21\x00\x00",
        SIG + b"\x20",
    ]
)


@FUZZ
@given(start=starts, rest=st.binary(max_size=120))
@example(start=b"PROXY TCP4 ", rest=b"1.2.3.4 5.6.7.8 1 2\r\n")
@example(start=SIG + b"\x21\x00\x00", rest=b"\x06\x01\x00\x04")
def test_arbitrary_bytes(start: bytes, rest: bytes) -> None:
    check_outcome(start + rest)


mutations = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("drop"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
)


def mutate(wire: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    data = bytearray(wire)
    for kind, where, value in edits:
        i = where % (len(data) + 1)
        if kind == "insert":
            data.insert(i, value)
        elif i == len(data):
            continue
        elif kind == "flip":
            data[i] ^= value
        elif kind == "set":
            data[i] = value
        elif kind == "cut":
            del data[i:]
        else:
            del data[i]
    return bytes(data)


small_headers = st.one_of(
    v1_headers,
    st.just(ProxyInfo(2, "LOCAL")),
    v2_proxy().filter(lambda h: len(h.encode()) <= 400),
)


@MUTATIONS
@given(
    info=small_headers,
    checksum=st.booleans(),
    edits=st.lists(mutations, min_size=1, max_size=3),
    tail=st.binary(max_size=8),
)
def test_mutated_headers(
    info: ProxyInfo, checksum: bool, edits: list[tuple[str, int, int]], tail: bytes
) -> None:
    check_outcome(mutate(encode(info, checksum) + tail, edits))


def test_destination_cache_stays_bounded() -> None:
    from trionet._proxy import _parse

    for i in range(3000):
        client = f"10.0.{i // 256}.{i % 256}"
        destination = f"10.1.{i // 256}.{i % 256}"
        info, _ = parsed(v2(1, 0x11, inet(client, destination, 40000 + i, i)))
        assert info.client == tcp(client, 40000 + i)
        assert info.destination == tcp(destination, i)
        assert len(_parse._DESTINATIONS) <= 1024
    info, _ = parsed(v2(1, 0x11, inet("10.0.0.1", "10.1.0.0", 1, 0)))  # still right
    assert info.destination == tcp("10.1.0.0", 0)


def test_public_names() -> None:
    assert trionet.parse_proxy_header is parse
    assert issubclass(ProxyProtocolError, trionet.RemoteProtocolError)
