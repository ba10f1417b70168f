"""The trionet exception tree, and the one place where ``OSError`` is translated.

Like h11, trionet says *whose fault* an error is:

* :class:`LocalProtocolError` -- the caller misused the API (a bad argument, a
  call in the wrong state).  Fix your code.
* :class:`RemoteProtocolError` -- the peer misbehaved (sent a line longer than
  allowed, hung up mid-message).  Costs that one connection, nothing more.

Operating-system failures (``OSError``) are translated into trionet errors in
exactly one place -- the ``translate_*`` helpers at the bottom of this module --
always with ``raise ... from exc`` so the original errno and traceback stay
visible in ``__cause__``.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import trio

    from ._address import Address

__all__ = [
    "AddressInUse",
    "ConnectAttempt",
    "ConnectError",
    "ConnectTimeout",
    "IncompleteRead",
    "InvalidAddress",
    "ListenError",
    "LocalProtocolError",
    "MessageTooLong",
    "ProxyProtocolError",
    "RemoteProtocolError",
    "TrionetError",
    "WorkerStartError",
]


class TrionetError(Exception):
    """Base class of every exception trionet raises on purpose."""


class LocalProtocolError(TrionetError):
    """The caller used trionet wrongly: a bad argument or a call in the wrong state."""


class RemoteProtocolError(TrionetError):
    """The peer misbehaved: its data broke a limit or ended too soon."""


class InvalidAddress(LocalProtocolError, ValueError):
    """An address or bind spec could not be parsed.

    The message names the offending spec and what is wrong with it, e.g.
    ``invalid address 'tcp://127.0.0.1': a port is required``.
    """

    def __init__(self, spec: object, problem: str) -> None:
        self.spec = spec
        self.problem = problem
        super().__init__(f"invalid address {spec!r}: {problem}")


class ListenError(TrionetError, OSError):
    """A listening socket could not be opened (permission, bad interface, ...).

    ``errno`` and ``strerror`` are copied from the underlying ``OSError``, which
    is also available as ``__cause__``.
    """


class AddressInUse(ListenError):
    """The address to listen on is already taken (``EADDRINUSE``).

    Also raised for a Unix socket path on which another process is listening.
    """


class MessageTooLong(RemoteProtocolError):
    """A delimited read exceeded its ``max_size`` before the delimiter arrived.

    The bytes read so far stay buffered in the connection.
    """

    def __init__(self, message: str, *, max_size: int) -> None:
        super().__init__(message)
        self.max_size = max_size


class IncompleteRead(RemoteProtocolError, EOFError):
    """The peer closed its side in the middle of a message.

    Attributes:
        partial: the bytes that did arrive before end-of-file.
        expected: how many bytes were wanted, or ``None`` for a delimited read.
    """

    def __init__(self, message: str, *, partial: bytes, expected: int | None = None) -> None:
        super().__init__(message)
        self.partial = partial
        self.expected = expected


class ProxyProtocolError(RemoteProtocolError):
    """A PROXY protocol header was malformed, truncated or not allowed.

    Raised by :func:`trionet.parse_proxy_header` as soon as the bytes seen
    cannot start a valid header; on a server it costs that connection only
    (``stats.proxy_failures``).
    """


#: The values ``ConnectAttempt.outcome`` can take.
CONNECT_OUTCOMES = frozenset({"connected", "failed", "abandoned", "timed out", "cancelled"})


def _default_outcome(attempt: ConnectAttempt) -> str:
    return "connected" if attempt.error is None else "failed"


class WorkerStartError(TrionetError, RuntimeError):
    """A worker process exited, or was not ready in time, while a supervisor was starting.

    Raised by :func:`trionet.supervise` (and reported by ``trionet serve
    --workers`` as one error line, exit 1).  The message names the worker,
    its pid and how it ended; its own error went to its stderr.  Every
    worker started so far has been stopped and reaped.
    """


@attrs.frozen
class ConnectAttempt:
    """One connection attempt made by :func:`trionet.connect`.

    A name-resolution step that failed or ran out of time is recorded too,
    with the unresolved ``TCPAddress(host, port)`` as its address.
    """

    #: The resolved address that was tried (host, port) or a Unix path.
    address: Address
    #: What went wrong; ``None`` for the attempt that succeeded (and for one
    #: abandoned because another attempt won).  A ``TimeoutError`` for an
    #: attempt still pending when ``connect``'s timeout expired.
    error: BaseException | None = attrs.field(eq=False)
    #: Which retry round (0 = the first) the attempt belonged to.
    round: int = 0
    #: ``"connected"``, ``"failed"``, ``"abandoned"`` (another attempt won
    #: first), ``"timed out"`` or ``"cancelled"`` (by an enclosing scope).
    outcome: str = attrs.field(
        default=attrs.Factory(_default_outcome, takes_self=True),
        validator=attrs.validators.in_(CONNECT_OUTCOMES),
    )
    #: Seconds after the ``connect`` call began at which the attempt started.
    started: float = attrs.field(default=0.0, eq=False)
    #: Seconds the attempt lasted.
    elapsed: float = attrs.field(default=0.0, eq=False)

    def describe(self) -> str:
        """One line for messages and logs: ``"tcp://127.0.0.1:80: Connection refused"``."""
        what = self.outcome if self.error is None else _reason(self.error)
        return f"{self.address}: {what}"


_TRIO_CONNECT_PREFIX = "Error connecting to "


def _reason(err: BaseException) -> str:
    """A short reason for an attempt's error.

    Trio's connect errors decorate the standard text with the address
    (``"Error connecting to ('127.0.0.1', 80): Connection refused"``), which
    our messages already name; then the standard ``os.strerror`` text is
    enough.  Any other ``strerror`` is kept as it is.
    """
    if isinstance(err, OSError):
        code = err.errno
        text = err.strerror
        if isinstance(code, int) and code > 0:
            standard = os.strerror(code)
            if not text or text == standard or text.startswith(_TRIO_CONNECT_PREFIX):
                return standard
        if text:
            return str(text)
    return str(err) or type(err).__name__


class ConnectError(TrionetError, OSError):
    """A connection could not be established.

    Attributes:
        target: what the caller asked to connect to.
        attempts: every :class:`ConnectAttempt` made, in order, each with the
            address tried and the error it met.
    """

    def __init__(
        self,
        message: str,
        *,
        target: object = None,
        attempts: Sequence[ConnectAttempt] = (),
        errno_: int | None = None,
    ) -> None:
        if errno_ is not None:
            super().__init__(errno_, message)
        else:
            super().__init__(message)
        self.target = target
        self.attempts: tuple[ConnectAttempt, ...] = tuple(attempts)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> Any:  # keep pickling (e.g. across to_thread) working
        return (
            _rebuild_connect_error,
            (type(self), self.message, self.target, self.attempts, self.errno),
        )


class ConnectTimeout(ConnectError, TimeoutError):
    """``connect`` ran out of time (its ``timeout`` covers every attempt and retry)."""


def _rebuild_connect_error(
    cls: type[ConnectError],
    message: str,
    target: object,
    attempts: tuple[ConnectAttempt, ...],
    errno_: int | None = None,
) -> ConnectError:
    return cls(message, target=target, attempts=attempts, errno_=errno_)


################################################################
# OSError translation -- the one place.
################################################################

# errnos that mean "this descriptor is gone", i.e. *we* closed it.
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})


def translate_stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    """Map an ``OSError`` met on a connected socket to Trio's stream errors.

    ``EBADF``/``ENOTSOCK`` mean our own side closed the socket (Trio's
    ``ClosedResourceError``); everything else -- ``ECONNRESET``, ``EPIPE``,
    ``ETIMEDOUT`` -- means the connection broke (``BrokenResourceError``).
    The caller must ``raise translate_stream_error(exc) from exc``.
    """
    import trio  # here, not at the top: the sans-I/O parsers import this module

    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this connection was already closed")
    return trio.BrokenResourceError(f"connection broken: {exc}")


def translate_listen_error(exc: OSError, address: object) -> ListenError:
    """Map an ``OSError`` from ``bind``/``listen`` to :class:`ListenError`.

    The caller must ``raise translate_listen_error(exc, address) from exc``.
    """
    cls = AddressInUse if exc.errno == errno.EADDRINUSE else ListenError
    what = exc.strerror or str(exc)
    err = cls(exc.errno, f"cannot listen on {address}: {what}")
    return err


def _attempts_summary(attempts: Sequence[ConnectAttempt]) -> str:
    shown = [a.describe() for a in attempts[-5:]]
    if len(attempts) > 5:
        shown.insert(0, f"... {len(attempts) - 5} earlier")
    return "; ".join(shown)


def translate_connect_error(
    exc: OSError, target: object, attempts: Sequence[ConnectAttempt]
) -> ConnectError:
    """Map the last ``OSError`` of a failed connect to :class:`ConnectError`.

    With several attempts the message lists them (the last five at most).
    The caller must ``raise translate_connect_error(...) from exc``.
    """
    what = _reason(exc)
    if len(attempts) == 1 and str(attempts[0].address) != str(target):
        what = f"{what} ({attempts[0].address})"
    elif len(attempts) > 1:
        what = f"all {len(attempts)} attempts failed ({_attempts_summary(attempts)})"
    # A failed lookup's ``gaierror.errno`` is an ``EAI_*`` code, not an errno
    # (negative on Linux, colliding with real errnos elsewhere): no errno then.
    # The lookup's own text is in the message, the gaierror in ``attempts``.
    code = None if isinstance(exc, socket.gaierror) else exc.errno
    return ConnectError(
        f"cannot connect to {target}: {what}",
        target=target,
        attempts=attempts,
        errno_=code,
    )


def handshake_error(
    exc: OSError, target: object, attempts: Sequence[ConnectAttempt]
) -> ConnectError:
    """The :class:`ConnectError` for a connect whose TLS handshake failed.

    The caller must ``raise handshake_error(...) from exc`` (the ``ssl`` error).
    """
    where = ""
    if attempts and str(attempts[-1].address) != str(target):
        where = f" with {attempts[-1].address}"
    reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else None
    detail = str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        detail = f"certificate verify failed: {exc.verify_message}"
    elif reason is not None and reason not in detail:
        detail = f"{reason}: {detail}"
    return ConnectError(
        f"cannot connect to {target}: the TLS handshake{where} failed: {detail}",
        target=target,
        attempts=attempts,
        errno_=None,
    )


def connect_timeout_error(
    target: object, timeout: float, attempts: Sequence[ConnectAttempt]
) -> ConnectTimeout:
    """The :class:`ConnectTimeout` for a connect whose ``timeout`` expired."""
    detail = f" ({_attempts_summary(attempts)})" if attempts else ""
    return ConnectTimeout(
        f"cannot connect to {target}: timed out after {timeout:g} s{detail}",
        target=target,
        attempts=attempts,
        errno_=errno.ETIMEDOUT,
    )
