"""Tests for trionet._stream._clienthello: the SNI name read off a TLS ClientHello (sans-I/O).

Real ClientHellos come from the stdlib's own client (``ssl.SSLContext.wrap_bio``,
its first flight read off the outgoing BIO); the rest is built from them by
hand: truncated, fragmented over several records, followed by other
records, corrupted.  Property tests check that the parser never raises and
that once it has decided, more bytes never change its answer (the TLS
transport stops collecting the first flight at that point).
"""

from __future__ import annotations

import itertools
import os
import ssl

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trionet._stream._clienthello import LIMIT, MORE, server_name
from trionet.testing import client_first_flight

NAME = "example.test"

# `make test-long` sets TRIONET_LONG=1 for the long property-based runs.
PROPERTY = settings(
    max_examples=5000 if os.environ.get("TRIONET_LONG") == "1" else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def client_hello(server_hostname: str | None) -> bytes:
    """The first flight of a stdlib TLS client: one record holding its ClientHello."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if server_hostname is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return client_first_flight(context, server_hostname)


def record(payload: bytes, kind: int = 22) -> bytes:
    """A TLS record (legacy version 3.1, as clients write the first one)."""
    return bytes([kind, 3, 1]) + len(payload).to_bytes(2, "big") + payload


def fragmented(hello: bytes, *cuts: int) -> bytes:
    """``hello``'s handshake message split into several records at ``cuts`` (payload offsets)."""
    payload = hello[5:]
    bounds = [0, *cuts, len(payload)]
    return b"".join(record(payload[a:b]) for a, b in itertools.pairwise(bounds))


HELLO = client_hello(NAME)
BARE = client_hello(None)
#: Where the name ends in HELLO: from here on the name is known.
NAME_END = HELLO.index(NAME.encode()) + len(NAME)


# ----------------------------------------------------------------------
# Real ClientHellos


def test_the_name_is_read_from_a_real_client_hello() -> None:
    assert HELLO[0] == 22 and HELLO[5] == 1  # one handshake record, a ClientHello
    assert int.from_bytes(HELLO[3:5], "big") == len(HELLO) - 5
    assert server_name(HELLO) == NAME
    # Whatever follows the record (early data, a second flight) changes nothing.
    assert server_name(HELLO + record(b"\x17" * 40, kind=23)) == NAME
    assert server_name(HELLO + b"garbage") == NAME


def test_every_truncation_asks_for_more_until_the_name_is_complete() -> None:
    for size in range(NAME_END):
        assert server_name(HELLO[:size]) is MORE, size
    for size in range(NAME_END, len(HELLO) + 1):
        assert server_name(HELLO[:size]) == NAME, size


def test_a_client_hello_without_sni_has_no_name() -> None:
    assert NAME.encode() not in BARE
    assert server_name(BARE) is None
    # Every truncation waits for more: the name could still come.
    for size in range(len(BARE)):
        assert server_name(BARE[:size]) is MORE, size


def test_the_name_is_lower_cased() -> None:
    hello = client_hello("EXAMPLE.Test")
    assert b"EXAMPLE.Test" in hello  # sent as given
    assert server_name(hello) == NAME


def test_a_name_that_is_not_ascii_is_no_name() -> None:
    start = HELLO.index(NAME.encode())
    hello = HELLO[:start] + b"\xe9" + HELLO[start + 1 :]
    assert server_name(hello) is None


# ----------------------------------------------------------------------
# Fragmented records


def in_records(offset: int, cuts: tuple[int, ...]) -> int:
    """Where payload ``offset`` lands in ``fragmented(hello, *cuts)`` (past the headers)."""
    return offset + 5 * (1 + sum(cut < offset for cut in cuts))


@pytest.mark.parametrize(
    "cuts",
    [
        (2,),  # inside the handshake header
        (4,),  # right after the handshake header
        (40,),  # inside the random
        (NAME_END - 5 - 4,),  # inside the name
        (NAME_END - 5,),  # right after the name
        (len(HELLO) - 5 - 1,),  # the last byte alone
        (1, 2, 3, 100, 101),  # several records, some of one byte
    ],
)
def test_a_client_hello_split_across_records_is_joined(cuts: tuple[int, ...]) -> None:
    data = fragmented(HELLO, *cuts)
    assert len(data) == len(HELLO) + 5 * len(cuts)
    assert server_name(data) == NAME
    # Truncated anywhere before the name is complete, it asks for more.
    name_end = in_records(NAME_END - 5, cuts)
    for size in range(name_end):
        assert server_name(data[:size]) is MORE, size
    assert server_name(data[:name_end]) == NAME


def test_a_fragmented_client_hello_without_sni_has_no_name() -> None:
    data = fragmented(BARE, 100, 200)
    assert server_name(data) is None
    for size in range(len(data)):
        assert server_name(data[:size]) is MORE, size


def test_a_record_of_another_kind_ends_an_unfinished_client_hello() -> None:
    # The first fragment, then application data: the rest of the hello can
    # never come, so the answer is "no name", not "more".
    first = fragmented(HELLO, 40)[: 5 + 40]
    assert server_name(first) is MORE
    assert server_name(first + record(b"x" * 10, kind=23)) is None
    assert server_name(first + b"\x17") is None  # known from the first byte


# ----------------------------------------------------------------------
# Garbage


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n", None),  # plain text
        (b"\x00" * 64, None),
        (record(b"\x17" * 40, kind=23), None),  # application data first
        (record(b"\x02" + HELLO[6:]), None),  # a ServerHello, not a ClientHello
        (b"\x16\x03\x01\x00\x00" * 10, MORE),  # empty records: a hello may follow
        (record(b"\x01\x00\x00\x02\x03\x03"), None),  # a whole ClientHello of 2 bytes
    ],
)
def test_garbage_is_no_name(data: bytes, expected: object) -> None:
    assert server_name(data) is expected


def test_a_host_name_longer_than_its_message_is_no_name() -> None:
    start = HELLO.index(NAME.encode())
    assert int.from_bytes(HELLO[start - 2 : start], "big") == len(NAME)
    lying = HELLO[: start - 2] + b"\xff\xff" + HELLO[start:]
    assert server_name(lying) is None  # the whole message is there: the name is not
    assert server_name(lying[:NAME_END]) is MORE  # it could still come


def test_a_long_wait_is_cut_at_the_limit() -> None:
    # A ClientHello that claims 16 KiB and a session id that runs past it:
    # more records keep coming, and the parser stops waiting at LIMIT.
    data = record(b"\x01\x00\x40\x00" + b"\x03\x03" + b"\xff" * 100)
    assert server_name(data) is MORE
    while len(data) < LIMIT:
        assert server_name(data) is MORE
        data += record(b"\xff" * 1000)
    assert server_name(data) is None


# ----------------------------------------------------------------------
# Properties


def mutated(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in changes:
        out[position % len(out)] = value
    return bytes(out)


_mutated_hellos = st.builds(
    mutated,
    st.sampled_from([HELLO, BARE, fragmented(HELLO, 60, 61), fragmented(BARE, 300)]),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
)
_handshake_like = st.builds(
    lambda body: record(b"\x01" + body), st.binary(max_size=600)
) | st.builds(lambda rest: b"\x16\x03\x01" + rest, st.binary(max_size=600))
_any_bytes = st.binary(max_size=2000) | _handshake_like | _mutated_hellos


@PROPERTY
@given(data=_any_bytes)
def test_it_never_raises(data: bytes) -> None:
    answer = server_name(data)
    assert answer is MORE or answer is None or isinstance(answer, str)
    if isinstance(answer, str):
        assert answer and answer.isascii() and answer == answer.lower()


@PROPERTY
@given(data=_any_bytes, cut=st.integers(0, 2000))
def test_once_decided_more_bytes_never_change_the_answer(data: bytes, cut: int) -> None:
    # The TLS transport stops collecting the first flight once the answer is
    # not MORE: that is only right if the answer is final.
    early = server_name(data[:cut])
    if early is not MORE:
        assert server_name(data) == early
