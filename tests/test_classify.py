"""``_classify``: blame read from an exception's chain, on hand-made chains (no I/O)."""

from __future__ import annotations

import ssl

import pytest
import trio

import trionet
from trionet._server._classify import classify, clean_hang_up


class FakeConn:
    """Stands in for a Connection: knows which exceptions it raised because of its peer."""

    def __init__(self, *peer_errors: BaseException) -> None:
        self.peer_errors = peer_errors

    def raised_by_peer(self, exc: BaseException) -> bool:
        return any(exc is e for e in self.peer_errors)


def chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


def ssl_error(cls: type[ssl.SSLError] = ssl.SSLError) -> ssl.SSLError:
    return cls(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")


def test_the_connections_own_reset_is_a_reset() -> None:
    err = chained(trio.BrokenResourceError("broken"), ConnectionResetError())
    assert classify(FakeConn(err), err) == "reset"


def test_the_same_type_raised_by_something_else_is_a_handler_bug() -> None:
    err = chained(trio.BrokenResourceError("backend broke"), ConnectionResetError())
    assert classify(FakeConn(), err) == "handler"


def test_a_wrapper_raising_from_the_connections_error_is_still_the_peers() -> None:
    inner = trio.BrokenResourceError("broken")
    outer = chained(RuntimeError("protocol library gave up"), inner)
    assert classify(FakeConn(inner), outer) == "reset"


def test_the_connections_tls_errors_by_their_ssl_cause() -> None:
    garbage = chained(trio.BrokenResourceError("TLS error"), ssl_error())
    truncated = chained(trio.BrokenResourceError("no close_notify"), ssl_error(ssl.SSLEOFError))
    assert classify(FakeConn(garbage), garbage) == "protocol"
    assert classify(FakeConn(truncated), truncated) == "reset"


def test_ssl_stream_errors_are_the_peers_except_certificate_verification() -> None:
    # What trio.SSLStream raises when it wraps a connection: its own
    # BrokenResourceError from the ssl error -- classified by that cause.
    assert classify(FakeConn(), chained(trio.BrokenResourceError(), ssl_error())) == "protocol"
    eof = chained(trio.BrokenResourceError(), ssl_error(ssl.SSLEOFError))
    assert classify(FakeConn(), eof) == "reset"
    verify = chained(trio.BrokenResourceError(), ssl.SSLCertVerificationError(1, "bad cert"))
    assert classify(FakeConn(), verify) == "handler"


def test_remote_protocol_errors_the_connection_raised() -> None:
    err = trionet.IncompleteRead("eof", partial=b"")
    assert classify(FakeConn(err), err) == "protocol"
    assert classify(FakeConn(), err) == "handler"  # raised by hand, not by the peer


@pytest.mark.parametrize(
    ("leaves", "blame"),
    [(("reset", "reset"), "reset"), (("reset", "protocol"), "protocol"),
     (("reset", "handler"), "handler")],
)  # fmt: skip
def test_a_group_is_the_peers_only_if_every_leaf_is(leaves: tuple[str, ...], blame: str) -> None:
    made: dict[str, BaseException] = {
        "reset": chained(trio.BrokenResourceError(), ConnectionResetError()),
        "protocol": trionet.IncompleteRead("eof", partial=b"x"),
        "handler": ValueError("bug"),
    }
    errors = [made[kind] for kind in leaves]
    peer = [e for kind, e in zip(leaves, errors, strict=True) if kind != "handler"]
    group = ExceptionGroup("handler", errors)  # type: ignore[type-var]
    assert classify(FakeConn(*peer), group) == blame


def test_a_chain_with_a_loop_ends() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert classify(FakeConn(), a) == "handler"


def test_clean_hang_up_is_an_incomplete_read_with_nothing_partial() -> None:
    assert clean_hang_up(trionet.IncompleteRead("eof", partial=b""))
    assert not clean_hang_up(trionet.IncompleteRead("eof", partial=b"half a line"))
    assert not clean_hang_up(ValueError())
