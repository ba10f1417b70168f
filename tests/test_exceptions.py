"""Tests for trionet._exceptions (the error tree, OSError translation) and _unwrap."""

from __future__ import annotations

import errno
import importlib
import pickle
import pkgutil

import pytest
import trio
import trio.lowlevel

import trionet
from trionet._exceptions import (
    translate_connect_error,
    translate_listen_error,
    translate_stream_error,
)
from trionet._unwrap import unwrap_single

PUBLIC_ERRORS = [
    obj
    for name in trionet.__all__
    if isinstance(obj := getattr(trionet, name), type) and issubclass(obj, BaseException)
]


def test_public_errors_are_found() -> None:
    # Guard against the comprehension above silently finding nothing.
    assert trionet.InvalidAddress in PUBLIC_ERRORS
    assert len(PUBLIC_ERRORS) >= 10


@pytest.mark.parametrize("cls", PUBLIC_ERRORS, ids=lambda c: c.__name__)
def test_every_public_error_derives_from_trionet_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, trionet.TrionetError)
    assert cls.__module__ == "trionet"


def test_every_library_exception_class_derives_from_trionet_error() -> None:
    # Private modules too: an exception class defined anywhere in the library
    # can reach users.  (The CLI's own usage error never leaves trionet.main.)
    # (walk_packages: the private packages' modules count too.)
    found = []
    for info in pkgutil.walk_packages(trionet.__path__, "trionet."):
        if info.name in ("trionet._cli", "trionet.__main__") or info.name.startswith(
            "trionet._cli."
        ):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, BaseException)
                and obj.__module__ in (info.name, "trionet")
                and obj.__qualname__ in dir(module)
            ):
                found.append(obj)
                assert issubclass(obj, trionet.TrionetError), obj
    assert trionet.AddressInUse in found


def test_whose_fault_hierarchy() -> None:
    assert issubclass(trionet.InvalidAddress, trionet.LocalProtocolError)
    assert issubclass(trionet.InvalidAddress, ValueError)
    assert issubclass(trionet.MessageTooLong, trionet.RemoteProtocolError)
    assert issubclass(trionet.IncompleteRead, trionet.RemoteProtocolError)
    assert issubclass(trionet.IncompleteRead, EOFError)
    assert issubclass(trionet.AddressInUse, trionet.ListenError)
    assert issubclass(trionet.ListenError, OSError)
    assert issubclass(trionet.ConnectTimeout, trionet.ConnectError)
    assert issubclass(trionet.ConnectTimeout, TimeoutError)
    assert not issubclass(trionet.RemoteProtocolError, trionet.LocalProtocolError)


def test_error_attributes() -> None:
    err = trionet.InvalidAddress("tcp://x", "a port is required")
    assert (err.spec, err.problem) == ("tcp://x", "a port is required")
    assert str(err) == "invalid address 'tcp://x': a port is required"

    too_long = trionet.MessageTooLong("too long", max_size=7)
    assert too_long.max_size == 7

    inc = trionet.IncompleteRead("eof", partial=b"ab", expected=5)
    assert (inc.partial, inc.expected) == (b"ab", 5)
    assert trionet.IncompleteRead("eof", partial=b"").expected is None


def test_translate_stream_error() -> None:
    for code in (errno.EBADF, errno.ENOTSOCK):
        assert isinstance(translate_stream_error(OSError(code, "x")), trio.ClosedResourceError)
    for code in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
        err = translate_stream_error(OSError(code, "boom"))
        assert isinstance(err, trio.BrokenResourceError)
        assert "boom" in str(err)


def test_translate_listen_error() -> None:
    in_use = translate_listen_error(OSError(errno.EADDRINUSE, "Address in use"), "tcp://h:1")
    assert type(in_use) is trionet.AddressInUse
    assert in_use.errno == errno.EADDRINUSE
    assert "tcp://h:1" in str(in_use)
    assert "Address in use" in str(in_use)
    other = translate_listen_error(OSError(errno.EACCES, "Permission denied"), "tcp://h:1")
    assert type(other) is trionet.ListenError
    assert other.errno == errno.EACCES


def test_translate_connect_error_and_pickling() -> None:
    attempt = trionet.ConnectAttempt(trionet.TCPAddress("127.0.0.1", 1), None)
    err = translate_connect_error(
        OSError(errno.ECONNREFUSED, "Connection refused"), "tcp://127.0.0.1:1", [attempt]
    )
    assert type(err) is trionet.ConnectError
    assert err.errno == errno.ECONNREFUSED
    assert err.attempts == (attempt,)
    assert "tcp://127.0.0.1:1" in str(err)
    assert "Connection refused" in str(err)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is trionet.ConnectError
    assert str(again) == str(err)
    assert again.attempts == err.attempts


# ----------------------------------------------------------------------
# unwrap_single (trionet/_unwrap.py)


def test_unwrap_single_raises_the_one_real_error_bare() -> None:
    with pytest.raises(KeyError) as excinfo, unwrap_single():
        raise ExceptionGroup("g", [KeyError("k")])
    assert type(excinfo.value) is KeyError


def test_unwrap_single_flattens_nested_groups() -> None:
    with pytest.raises(KeyError), unwrap_single():
        raise ExceptionGroup("outer", [ExceptionGroup("inner", [KeyError("k")])])


def test_unwrap_single_keeps_the_original_cause() -> None:
    cause = OSError("underlying")
    inner = KeyError("k")
    inner.__cause__ = cause
    inner.__suppress_context__ = True
    with pytest.raises(KeyError) as excinfo, unwrap_single():
        raise ExceptionGroup("g", [inner])
    assert excinfo.value.__cause__ is cause


def test_unwrap_single_leaves_groups_of_several_errors_alone() -> None:
    with pytest.raises(ExceptionGroup) as excinfo, unwrap_single():
        raise ExceptionGroup("g", [KeyError("a"), ValueError("b")])
    assert len(excinfo.value.exceptions) == 2


def test_unwrap_single_passes_plain_exceptions_through() -> None:
    with pytest.raises(KeyError), unwrap_single():
        raise KeyError("k")


async def test_unwrap_single_ignores_cancelled_siblings() -> None:
    # A real error plus the Cancelled exceptions of the siblings it took down:
    # the real error comes out bare.
    async def fail() -> None:
        await trio.lowlevel.checkpoint()
        raise KeyError("k")

    with pytest.raises(KeyError), unwrap_single():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(fail)
            await trio.sleep_forever()


async def test_unwrap_single_leaves_only_cancelled_groups_to_their_scope() -> None:
    with trio.CancelScope() as scope, unwrap_single():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(trio.sleep_forever)
            await trio.lowlevel.checkpoint()
            scope.cancel()
    assert scope.cancelled_caught


async def test_unwrap_single_raises_an_only_cancelled_group_as_bare_cancelled() -> None:
    # An enclosing scope cancels a nursery of several children: what comes
    # out of unwrap_single is a bare Cancelled (so `except trio.Cancelled:`
    # cleanup runs), and the cancelled scope still catches it.
    caught: list[BaseException] = []
    with trio.CancelScope() as scope:
        try:
            with unwrap_single():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(trio.sleep_forever)
                    nursery.start_soon(trio.sleep_forever)
                    await trio.lowlevel.checkpoint()
                    scope.cancel()
        except trio.Cancelled as exc:
            caught.append(exc)
            raise
    assert scope.cancelled_caught
    assert len(caught) == 1 and type(caught[0]) is trio.Cancelled


def test_translate_connect_error_for_a_failed_lookup_has_no_negative_errno() -> None:
    import socket

    gai = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    attempt = trionet.ConnectAttempt(trionet.TCPAddress("nx.test", 1), gai)
    err = translate_connect_error(gai, "tcp://nx.test:1", [attempt])
    assert err.errno is None
    assert "Name or service not known" in str(err)
    assert err.attempts[0].error is gai  # the EAI code stays on the attempt


@pytest.mark.parametrize(
    "make",
    [
        lambda a: translate_connect_error(OSError(errno.ECONNREFUSED, "refused"), "t", [a]),
        lambda a: trionet._exceptions.connect_timeout_error("t", 1.0, [a]),
    ],
    ids=["refused", "timeout"],
)
def test_pickling_a_connect_error_keeps_its_errno(make: object) -> None:
    attempt = trionet.ConnectAttempt(trionet.TCPAddress("127.0.0.1", 1), None)
    err = make(attempt)  # type: ignore[operator]
    assert err.errno in (errno.ECONNREFUSED, errno.ETIMEDOUT)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err)
    assert again.errno == err.errno
    assert str(again) == str(err)
    assert again.attempts == err.attempts
