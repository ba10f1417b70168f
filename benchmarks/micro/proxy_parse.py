"""How many PROXY protocol headers per second ``parse_proxy_header`` turns into records.

Issue 12's target: at least 500k version 2 IPv4 headers per second.  Each
row parses 4,096 different headers as a balancer sends them -- every client
a different address and port, one destination (the frontend) -- from bytes
to a ``ProxyInfo`` with its addresses, round after round; the loop is
counted in.  Pinned to one core, to compare two revisions::

    for p in . benchmarks/build/trionet-SHA; do PYTHONPATH=$p taskset -c 0 \\
        .venv/bin/python benchmarks/micro/proxy_parse.py; done

Prints the best of five runs of about 400,000 parses per row, in CPU time
(the process's own: other load on a small machine counts less).
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Callable

from trionet import parse_proxy_header

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
DISTINCT = 4096
ROUNDS = 100


def v2_ipv4(rng: random.Random) -> bytes:
    src = rng.getrandbits(32).to_bytes(4, "big")
    dst = socket.inet_aton("10.0.0.10")
    block = struct.pack("!4s4sHH", src, dst, rng.randrange(1024, 65536), 443)
    return SIG + b"\x21\x11" + struct.pack("!H", len(block)) + block


def v2_ipv6(rng: random.Random) -> bytes:
    src = rng.getrandbits(128).to_bytes(16, "big")
    dst = socket.inet_pton(socket.AF_INET6, "2001:db8::10")
    block = struct.pack("!16s16sHH", src, dst, rng.randrange(1024, 65536), 443)
    return SIG + b"\x21\x21" + struct.pack("!H", len(block)) + block


def v2_ipv4_tlvs(rng: random.Random) -> bytes:
    # what `send-proxy-v2-ssl` adds: an SSL TLV with the version and cipher
    subs = b"".join(
        struct.pack("!BH", kind, len(value)) + value
        for kind, value in ((0x21, b"TLSv1.3"), (0x23, b"TLS_AES_128_GCM_SHA256"))
    )
    ssl = struct.pack("!BI", 0x01, 0) + subs
    header = v2_ipv4(rng)
    tlv = struct.pack("!BH", 0x20, len(ssl)) + ssl
    return header[:14] + struct.pack("!H", 12 + len(tlv)) + header[16:] + tlv


def v1_tcp4(rng: random.Random) -> bytes:
    src = socket.inet_ntoa(rng.getrandbits(32).to_bytes(4, "big"))
    return f"PROXY TCP4 {src} 10.0.0.10 {rng.randrange(1024, 65536)} 443\r\n".encode()


def rate(make: Callable[[random.Random], bytes]) -> float:
    rng = random.Random(12)
    headers = [make(rng) for _ in range(DISTINCT)]
    for header in headers:  # every one parses to a whole header
        result = parse_proxy_header(header)
        assert result is not None and result[1] == len(header)
    best = float("inf")
    parse = parse_proxy_header
    for _ in range(5):
        start = time.process_time()
        for _ in range(ROUNDS):
            for header in headers:
                parse(header)
        best = min(best, time.process_time() - start)
    return DISTINCT * ROUNDS / best


def main() -> None:
    for name, make in (
        ("v2 TCP/IPv4", v2_ipv4),
        ("v2 TCP/IPv6", v2_ipv6),
        ("v1 TCP4", v1_tcp4),
        ("v2 TCP/IPv4 + SSL TLV", v2_ipv4_tlvs),
    ):
        per_second = rate(make)
        micros = 1e6 / per_second
        print(f"parse_proxy_header, {name}: {per_second:,.0f} headers/s ({micros:.2f} us)")


if __name__ == "__main__":
    main()
