"""Tests for trionet._address: parsing specs, records, round-trips."""

from __future__ import annotations

import ipaddress
import os
import socket

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import trionet
from trionet import InvalidAddress, TCPAddress, UnixAddress, parse_address
from trionet._address import address_from_sockaddr

# `make test-long` sets TRIONET_LONG=1 for the long property-based runs.
LONG = os.environ.get("TRIONET_LONG") == "1"
PROPERTY = settings(
    max_examples=5000 if LONG else 200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ----------------------------------------------------------------------
# Valid specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("tcp://127.0.0.1:80", TCPAddress("127.0.0.1", 80)),
        ("tcp://127.0.0.1:0", TCPAddress("127.0.0.1", 0)),
        ("tcp://localhost:65535", TCPAddress("localhost", 65535)),
        ("tcp://[::1]:8080", TCPAddress("::1", 8080)),
        ("tcp://[fe80::1%eth0]:22", TCPAddress("fe80::1%eth0", 22)),
        ("tcp://[::ffff:1.2.3.4]:1", TCPAddress("::ffff:1.2.3.4", 1)),
        ("tcp://:0", TCPAddress("", 0)),
        ("tcp://*:7007", TCPAddress("*", 7007)),
        ("unix:/run/app.sock", UnixAddress("/run/app.sock")),
        ("unix:relative/app.sock", UnixAddress("relative/app.sock")),
        ("unix:@trionet-abstract", UnixAddress("@trionet-abstract")),
    ],
)
def test_parse_canonical_specs(spec: str, expected: trionet.Address) -> None:
    addr = parse_address(spec)
    assert addr == expected
    assert type(addr) is type(expected)
    # Canonical specs come back character for character, and round-trip.
    assert str(addr) == spec
    assert parse_address(str(addr)) == addr


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("TCP://127.0.0.1:80", TCPAddress("127.0.0.1", 80)),  # scheme is case-insensitive
        ("tcp://h:0080", TCPAddress("h", 80)),  # leading zeros
        ("tcp://h:" + "0" * 5000 + "1", TCPAddress("h", 1)),
        ("unix:///abs/path", UnixAddress("/abs/path")),  # URL-ish form
        ("unix:////x", UnixAddress("//x")),
    ],
)
def test_parse_non_canonical_specs(spec: str, expected: trionet.Address) -> None:
    addr = parse_address(spec)
    assert addr == expected
    assert parse_address(str(addr)) == addr


def test_parse_tuples_and_records() -> None:
    assert parse_address(("127.0.0.1", 5)) == TCPAddress("127.0.0.1", 5)
    assert parse_address(("::1", 0)) == TCPAddress("::1", 0)
    assert parse_address((None, 0)) == TCPAddress("", 0)
    assert parse_address(("", 9)).is_wildcard  # type: ignore[union-attr]
    addr = TCPAddress("::1", 1)
    assert parse_address(addr) is addr
    uaddr = UnixAddress("/x")
    assert parse_address(uaddr) is uaddr


def test_records_are_frozen_and_hashable() -> None:
    addr = TCPAddress("127.0.0.1", 80)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        addr.port = 81  # type: ignore[misc]
    uaddr = UnixAddress("/x")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        uaddr.path = "/y"  # type: ignore[misc]
    assert {addr, TCPAddress("127.0.0.1", 80), uaddr, UnixAddress("/x")} == {addr, uaddr}
    assert repr(addr) == "TCPAddress(host='127.0.0.1', port=80)"
    assert repr(uaddr) == "UnixAddress(path='/x')"


def test_record_properties() -> None:
    assert TCPAddress("", 0).is_wildcard
    assert TCPAddress("*", 0).is_wildcard
    assert not TCPAddress("0.0.0.0", 0).is_wildcard
    assert UnixAddress("@name").is_abstract
    assert UnixAddress("@name").sockaddr == b"\0name"
    assert not UnixAddress("/p").is_abstract
    assert UnixAddress("/p").sockaddr == "/p"
    assert str(TCPAddress("::1", 80)) == "tcp://[::1]:80"


def test_records_validate_their_fields() -> None:
    with pytest.raises(InvalidAddress, match="0-65535"):
        TCPAddress("h", 65536)
    with pytest.raises(InvalidAddress):
        TCPAddress("h", -1)
    with pytest.raises(TypeError):
        TCPAddress("h", "80")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TCPAddress("h", True)
    with pytest.raises(TypeError):
        TCPAddress(b"h", 80)  # type: ignore[arg-type]
    # A host that could not survive str() -> parse_address() is refused.
    with pytest.raises(InvalidAddress, match="IPv6"):
        TCPAddress("a:b", 80)
    with pytest.raises(InvalidAddress, match="character"):
        TCPAddress("a/b", 80)
    with pytest.raises(InvalidAddress, match="character"):
        TCPAddress("::1%a]b", 80)  # a valid-looking IPv6 scope with a bracket
    with pytest.raises(InvalidAddress, match="NUL"):
        UnixAddress("/a\0b")
    with pytest.raises(InvalidAddress, match="107 bytes"):
        UnixAddress("/" + "x" * 107)
    UnixAddress("/" + "x" * 106)  # exactly at the limit is fine
    with pytest.raises(TypeError):
        UnixAddress(b"/x")  # type: ignore[arg-type]


# ----------------------------------------------------------------------
# Malformed specs


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("tcp://127.0.0.1", "port is required"),
        ("tcp://127.0.0.1:", "port is required"),
        ("tcp://:99999", "out of range"),
        ("tcp://:65536", "out of range"),
        ("tcp://h:" + "9" * 5000, "out of range"),  # longer than int()'s digit limit
        ("tcp://h:-1", "not a number"),
        ("tcp://h:+80", "not a number"),
        ("tcp://h:８０", "not a number"),  # fullwidth digits  # noqa: RUF001
        ("tcp://h:80 ", "not a number"),
        ("tcp://[::1:80", "unclosed '['"),
        ("tcp://[::1]", "port is required"),
        ("tcp://[::1]80", "port is required"),
        ("tcp://[nothex]:80", "not an IPv6 address"),
        ("tcp://[]:80", "not an IPv6 address"),
        ("tcp://::1:80", "must be in brackets"),
        ("tcp://h:80/path", "unexpected path"),
        ("tcp://h:80?q", "unexpected path"),
        ("tcp://a b:80", "character"),
        ("tcp://a\tb:80", "character"),
        # A numeric last label means an IPv4 literal, and it must be a valid one.
        ("tcp://256.1.1.1:80", "not a valid IPv4 address"),
        ("tcp://1.2.3.4.5:0", "not a valid IPv4 address"),
        ("tcp://127.1:80", "not a valid IPv4 address"),
        ("tcp://01.02.03.004:80", "not a valid IPv4 address"),
        ("tcp://12345:80", "not a valid IPv4 address"),
        ("tcp://host.123:80", "not a valid IPv4 address"),
        ("tcp:127.0.0.1:80", "expected 'tcp://HOST:PORT'"),
        ("udp://127.0.0.1:53", "unknown scheme 'udp'"),
        ("http://example.com:80", "unknown scheme 'http'"),
        ("127.0.0.1:80", "unknown scheme"),
        ("localhost", "missing scheme"),
        ("", "missing scheme"),
        ("unix:", "path is required"),
        ("unix:@", "abstract socket name is required"),
        ("unix:/a\0b", "NUL"),
        ("unix:/" + "x" * 200, "limited to 107 bytes"),
        ("unix:/\ud800", "not encodable"),
    ],
)
def test_malformed_specs_raise_invalid_address(spec: str, problem: str) -> None:
    with pytest.raises(InvalidAddress) as excinfo:
        parse_address(spec)
    err = excinfo.value
    assert problem in err.problem
    assert err.spec == spec
    # The message names the spec and the problem.
    assert repr(spec)[:50] in str(err)
    assert problem in str(err)
    assert isinstance(err, ValueError)
    assert isinstance(err, trionet.TrionetError)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (("h",), "(host, port)"),
        (("h", 1, 2), "(host, port)"),
        ((1, 80), "host must be a str"),
        (("h", "80"), "port must be an int"),
        (("h", True), "port must be an int"),
        (("h", 70000), "out of range"),
        (("h", -1), "out of range"),
        (("a:b", 80), "not an IPv6 address"),
        (8080, "expected a spec string"),
        (b"tcp://h:1", "expected a spec string"),
        (None, "expected a spec string"),
    ],
)
def test_malformed_non_strings(spec: object, problem: str) -> None:
    with pytest.raises(InvalidAddress) as excinfo:
        parse_address(spec)
    assert problem in str(excinfo.value)
    assert excinfo.value.spec == spec


# ----------------------------------------------------------------------
# Socket addresses -> records


def test_address_from_sockaddr() -> None:
    assert address_from_sockaddr(socket.AF_INET, ("127.0.0.1", 5)) == TCPAddress("127.0.0.1", 5)
    assert address_from_sockaddr(socket.AF_INET6, ("::1", 5, 0, 0)) == TCPAddress("::1", 5)
    assert address_from_sockaddr(socket.AF_UNIX, "/p") == UnixAddress("/p")
    assert address_from_sockaddr(socket.AF_UNIX, "") == UnixAddress("")
    assert address_from_sockaddr(socket.AF_UNIX, b"\0abs") == UnixAddress("@abs")
    assert address_from_sockaddr(socket.AF_UNIX, b"/p") == UnixAddress("/p")


def test_address_from_real_sockets() -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        addr = address_from_sockaddr(s.family, s.getsockname())
        assert isinstance(addr, TCPAddress)
        assert addr.host == "::1"
        assert addr.port == s.getsockname()[1]
        assert parse_address(str(addr)) == addr


# ----------------------------------------------------------------------
# Property-based round-trips

_ports = st.integers(0, 65535)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
# A DNS name's last label is never all digits (that would be an IPv4 literal).
_last_label = _label.filter(lambda label: not label.isdigit())
_hostname = st.builds(
    lambda labels, last: ".".join([*labels, last]), st.lists(_label, max_size=3), _last_label
)
_hosts = st.one_of(_ipv4, _ipv6, _hostname, st.sampled_from(["", "*", "localhost"]))
_path_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1, max_size=60
)
_unix_paths = st.one_of(
    _path_text.map(lambda p: "/" + p),
    _path_text.filter(lambda p: not p.startswith("@")),
    _path_text.map(lambda p: "@" + p),
)


@PROPERTY
@given(host=_hosts, port=_ports)
def test_tcp_specs_round_trip(host: str, port: int) -> None:
    spec = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
    addr = parse_address(spec)
    assert addr == TCPAddress(host, port)
    assert str(addr) == spec
    assert parse_address(str(addr)) == addr
    assert parse_address((host, port)) == addr
    if ":" in host:
        ipaddress.IPv6Address(host)


@PROPERTY
@given(path=_unix_paths)
@example("///")
@example("//x")
def test_unix_addresses_round_trip(path: str) -> None:
    if len(path.encode("utf-8", "surrogateescape")) > 107:
        with pytest.raises(InvalidAddress, match="107 bytes"):
            UnixAddress(path)
        return
    addr = UnixAddress(path)
    assert parse_address(str(addr)) == addr
    if not path.startswith("//"):  # "unix:///p" is the URL form of "/p"
        assert str(addr) == "unix:" + path
        assert parse_address("unix:" + path) == addr


# Arbitrary text, including lone surrogates and control characters, and
# text that starts like a spec so the interesting branches are reached.
_any_text = st.text(st.characters(blacklist_categories=()), max_size=40)
_spec_like = st.one_of(
    _any_text,
    st.tuples(
        st.sampled_from(["tcp://", "TCP://", "unix:", "unix:@", "tcp:", "unix://"]), _any_text
    ).map("".join),
    st.tuples(_any_text, st.sampled_from([":", "]:", "[", "]"]), _any_text).map(
        lambda t: "tcp://" + "".join(t)
    ),
    st.tuples(_any_text, _ports.map(str)).map(lambda t: f"tcp://{t[0]}:{t[1]}"),
    st.tuples(_any_text, _any_text).map(lambda t: f"tcp://[{t[0]}]:{t[1]}"),
)


@PROPERTY
@given(spec=_spec_like)
@example("tcp://h:" + "1" * 5000)
@example("unix:\ud800")
@example("tcp://[::1%a]b]:80")
@example("tcp://a[:80")
def test_arbitrary_text_parses_and_round_trips_or_is_invalid(spec: str) -> None:
    try:
        addr = parse_address(spec)
    except InvalidAddress as exc:
        assert exc.spec == spec
        return
    assert isinstance(addr, (TCPAddress, UnixAddress))
    again = parse_address(str(addr))
    assert again == addr
    assert str(again) == str(addr)


@PROPERTY
@given(host=_any_text, port=st.integers(-10, 70000))
def test_arbitrary_tuples_round_trip_or_are_invalid(host: str, port: int) -> None:
    try:
        addr = parse_address((host, port))
    except InvalidAddress:
        return
    assert parse_address(str(addr)) == addr
