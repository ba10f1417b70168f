"""Inherited listening sockets: the ``fd:N``, ``systemd`` and ``systemd:NAME`` bind specs.

* ``fd:N`` adopts descriptor ``N``, inherited from whoever started us (a
  supervisor, ``systemd-socket-activate``, a shell's ``3<>``).
* ``systemd`` adopts every socket passed by systemd socket activation, per
  ``sd_listen_fds(3)``: ``LISTEN_PID`` must be our pid, ``LISTEN_FDS`` says
  how many descriptors there are, numbered from 3.
* ``systemd:NAME`` adopts those whose name in ``LISTEN_FDNAMES`` (colon
  separated, one per descriptor: a socket unit's ``FileDescriptorName=``)
  is ``NAME`` -- all of them if several share it.

Checks are made as early as they can be: the spec's syntax when the
:class:`~trionet.Bind` is made (:func:`parse_inherited`), the ``LISTEN_*``
variables when ``serve`` is called (:func:`check_inherited`, no I/O), each
descriptor when it is adopted (:func:`adopt`): it must be a listening
``SOCK_STREAM`` socket of family ``AF_INET``, ``AF_INET6`` or ``AF_UNIX``.
Every refusal is an :class:`~trionet.InvalidAddress` naming the spec and,
for a descriptor, what it is ("fd 5 is a UDP socket").

Choices:

* **A duplicate is adopted** (``os.dup``), never ``N`` itself: the
  descriptor stays the caller's, open and unchanged, whatever happens to
  the server -- a refused one included.  Closing the server closes its
  duplicate only, and never calls ``shutdown()`` (which would reset the
  queue for every process sharing the socket) nor unlinks a Unix path.
  The two share one open file description, so ``O_NONBLOCK`` (which Trio
  sets) is visible through ``N`` too.
* **The** ``LISTEN_*`` **variables are removed from** ``os.environ`` when a
  ``systemd`` bind is opened (``sd_listen_fds(1)``'s *unset_environment*):
  child processes never see them.  What they said is remembered for this
  process, so a later ``serve`` of ``systemd:OTHER`` in the same process
  still works, and :func:`listen_environment` gives them to whoever asks
  (to pass on to a child on purpose).  ``fd:N`` binds neither read nor
  remove them.
"""

from __future__ import annotations

import os
import socket as _stdlib_socket
import stat
from typing import Literal

import attrs

from ._exceptions import InvalidAddress

__all__ = [
    "InheritedSpec",
    "adopt",
    "check_inherited",
    "descriptors",
    "listen_environment",
    "parse_inherited",
]

#: How messages name the public call.
CALL = "trionet.serve"
#: The first descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
_MAX_FD_DIGITS = 10  # keeps int() away from huge strings
#: The largest descriptor number (a C int); larger is refused as out of range.
_MAX_FD = 2**31 - 1


@attrs.frozen
class InheritedSpec:
    """A parsed ``fd:N`` / ``systemd`` / ``systemd:NAME`` spec."""

    kind: Literal["fd", "systemd"]
    #: The descriptor of an ``fd:N`` spec.
    fd: int | None = None
    #: The ``LISTEN_FDNAMES`` name of a ``systemd:NAME`` spec.
    name: str | None = None

    def __str__(self) -> str:
        if self.kind == "fd":
            return f"fd:{self.fd}"
        return "systemd" if self.name is None else f"systemd:{self.name}"


def parse_inherited(spec: object) -> InheritedSpec | None:
    """The spec as an :class:`InheritedSpec`, or None if it is not one (``tcp://...``).

    Raises:
        InvalidAddress: an ``fd:``/``systemd:`` spec that is malformed.
    """
    if not isinstance(spec, str):
        return None
    scheme, sep, rest = spec.partition(":")
    scheme = scheme.lower()
    if scheme == "fd" and sep:
        return InheritedSpec("fd", fd=_parse_fd(spec, rest))
    if scheme == "systemd":
        if not sep:
            return InheritedSpec("systemd")
        if not rest:
            raise InvalidAddress(spec, f"{CALL}: a name is required after 'systemd:'")
        if ":" in rest or not rest.isprintable():
            raise InvalidAddress(
                spec, f"{CALL}: a LISTEN_FDNAMES name cannot contain ':' or control characters"
            )
        return InheritedSpec("systemd", name=rest)
    return None


def _parse_fd(spec: str, text: str) -> int:
    if not text:
        raise InvalidAddress(spec, f"{CALL}: a descriptor number is required after 'fd:'")
    if text.startswith("-"):
        raise InvalidAddress(spec, f"{CALL}: a descriptor number cannot be negative")
    if not text.isascii() or not text.isdigit():
        raise InvalidAddress(spec, f"{CALL}: descriptor {text!r} is not a number")
    digits = text.lstrip("0") or "0"
    if len(digits) > _MAX_FD_DIGITS or int(digits) > _MAX_FD:
        raise InvalidAddress(spec, f"{CALL}: descriptor {text} is out of range")
    return int(digits)


# ----------------------------------------------------------------------
# LISTEN_* variables

#: What the LISTEN_* variables said, once removed from os.environ: (pid, values).
_remembered: tuple[int, dict[str, str]] | None = None


def _listen_env(*, take: bool) -> dict[str, str]:
    """The ``LISTEN_*`` variables: from ``os.environ``, else as remembered by this process.

    ``take`` removes them from ``os.environ`` (and remembers them).
    """
    global _remembered
    if "LISTEN_FDS" in os.environ or "LISTEN_PID" in os.environ:
        values = {key: os.environ[key] for key in _ENV if key in os.environ}
    elif _remembered is not None and _remembered[0] == os.getpid():
        return dict(_remembered[1])
    else:
        return {}
    if take:
        _remembered = (os.getpid(), values)
        for key in _ENV:
            os.environ.pop(key, None)
    return values


def listen_environment() -> dict[str, str]:
    """The ``LISTEN_*`` variables systemd passed to this process, for a child you mean to have them.

    A ``systemd`` bind removes ``LISTEN_PID``, ``LISTEN_FDS`` and
    ``LISTEN_FDNAMES`` from ``os.environ`` when it is opened, so no child
    process mistakes them for its own.  To pass them on anyway -- a child
    you start with the same descriptors, which must then set
    ``LISTEN_PID`` to its own pid, as ``systemd-socket-activate`` does --
    ask for them here and put them in that child's environment.

    Returns:
        The variables as they were (from ``os.environ``, or as remembered
        once removed); empty if none were passed to this process.

    Example::

        env = {**os.environ, **trionet.listen_environment()}
    """
    return _listen_env(take=False)


def forget_listen_env() -> None:
    """Forget remembered ``LISTEN_*`` values (for tests)."""
    global _remembered
    _remembered = None


def _descriptor_limit() -> int:
    """The process's descriptor limit (RLIMIT_NOFILE's soft limit), capped at a C int."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return _MAX_FD
    return _MAX_FD if soft == resource.RLIM_INFINITY or soft > _MAX_FD else soft


def _count(spec: InheritedSpec, env: dict[str, str], key: str) -> int:
    text = env[key]
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_FD_DIGITS:
        raise InvalidAddress(str(spec), f"{CALL}: {key}={text!r} is not a number")
    return int(text)


def descriptors(spec: InheritedSpec, *, take: bool = False) -> list[int]:
    """The descriptor numbers ``spec`` names, checked against the environment (no I/O).

    ``take`` (when the bind is opened) removes the ``LISTEN_*`` variables
    from ``os.environ``; validation only reads them.

    Raises:
        InvalidAddress: no sockets were passed, they were passed to another
            process, the variables are malformed, or no socket has ``NAME``.
    """
    if spec.kind == "fd":
        assert spec.fd is not None
        return [spec.fd]
    env = _listen_env(take=take)
    text = str(spec)
    if "LISTEN_FDS" not in env:
        raise InvalidAddress(
            text,
            f"{CALL}: no sockets were passed (LISTEN_FDS is not set: start the service "
            "from a systemd .socket unit, or with systemd-socket-activate)",
        )
    if "LISTEN_PID" not in env:
        raise InvalidAddress(
            text, f"{CALL}: LISTEN_PID is not set (sd_listen_fds(3) requires it to be our pid)"
        )
    pid = _count(spec, env, "LISTEN_PID")
    if pid != os.getpid():
        raise InvalidAddress(
            text,
            f"{CALL}: LISTEN_PID={pid} is another process (ours is {os.getpid()}): the "
            "sockets were passed to it, not to us",
        )
    count = _count(spec, env, "LISTEN_FDS")
    if count == 0:
        raise InvalidAddress(text, f"{CALL}: LISTEN_FDS=0: no sockets were passed")
    limit = _descriptor_limit()
    if LISTEN_FDS_START + count > limit:
        raise InvalidAddress(
            text,
            f"{CALL}: LISTEN_FDS={count} is more descriptors than this process may have "
            f"open ({limit})",
        )
    numbers = list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))
    if spec.name is None:
        return numbers
    names = env.get("LISTEN_FDNAMES", "").split(":") if "LISTEN_FDNAMES" in env else []
    if len(names) != count:
        raise InvalidAddress(
            text,
            f"{CALL}: LISTEN_FDNAMES has {len(names)} names for LISTEN_FDS={count} "
            "descriptors, so none can be selected by name",
        )
    chosen = [fd for fd, name in zip(numbers, names, strict=True) if name == spec.name]
    if not chosen:
        known = ", ".join(sorted(set(names)))
        raise InvalidAddress(
            text, f"{CALL}: no socket is named {spec.name!r} in LISTEN_FDNAMES (there are: {known})"
        )
    return chosen


def check_inherited(spec: InheritedSpec) -> None:
    """Everything about ``spec`` that can be checked without I/O (see :func:`descriptors`)."""
    descriptors(spec)


# ----------------------------------------------------------------------
# Adopting a descriptor

_FAMILIES = {
    int(_stdlib_socket.AF_INET): "TCP",
    int(_stdlib_socket.AF_INET6): "TCP",
    int(getattr(_stdlib_socket, "AF_UNIX", -1)): "Unix",
}
# MPTCP (262) is TCP to the application.
_TCP_PROTOCOLS = frozenset({0, int(_stdlib_socket.IPPROTO_TCP), 262})


def _not_a_socket(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a pipe, not a socket"
    if stat.S_ISREG(mode):
        return "a regular file, not a socket"
    if stat.S_ISCHR(mode):
        return "a character device (a terminal?), not a socket"
    if stat.S_ISDIR(mode):
        return "a directory, not a socket"
    return "not a socket"


def _kind(sock: _stdlib_socket.socket) -> str:
    """What a socket is, in words: ``a UDP socket``, ``a Unix datagram socket``, ..."""
    family = int(sock.family)
    type_ = int(sock.type)
    name = _FAMILIES.get(family)
    if name is None:
        return f"a socket of family {_name(sock.family)}, not TCP or Unix"
    if type_ == _stdlib_socket.SOCK_STREAM:
        return f"a {name} socket"
    if name == "TCP" and type_ == _stdlib_socket.SOCK_DGRAM:
        return "a UDP socket"
    if type_ == _stdlib_socket.SOCK_DGRAM:
        return "a Unix datagram socket"
    return f"a {name} socket of type {_name(sock.type)}, not a stream socket"


def _name(value: object) -> str:
    """An enum member's name (``AF_NETLINK``), or the number the enum does not know."""
    return str(getattr(value, "name", value))


def adopt(spec: InheritedSpec, fd: int) -> _stdlib_socket.socket:
    """A socket on a duplicate of ``fd``, once ``fd`` is known to be a listening stream socket.

    ``fd`` itself stays open and unchanged whatever happens (it is the
    caller's); the returned socket is ours to close.

    Raises:
        InvalidAddress: ``fd`` is closed, not a socket, not a stream socket of
            a supported family, or not listening -- naming it and what it is.
    """
    text = str(spec)
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise InvalidAddress(text, f"{CALL}: fd {fd} is not open ({exc.strerror})") from None
    if not stat.S_ISSOCK(mode):
        raise InvalidAddress(text, f"{CALL}: fd {fd} is {_not_a_socket(mode)}")
    try:
        duplicate = os.dup(fd)
    except OSError as exc:  # closed since the fstat, or no descriptor free
        raise InvalidAddress(text, f"{CALL}: fd {fd} cannot be adopted ({exc.strerror})") from None
    try:
        sock = _stdlib_socket.socket(fileno=duplicate)
    except OSError as exc:
        os.close(duplicate)
        raise InvalidAddress(
            text, f"{CALL}: fd {fd} is a socket trionet cannot use ({exc.strerror})"
        ) from None
    try:
        problem = _refusal(sock, fd)
    except OSError as exc:
        problem = f"fd {fd} could not be inspected ({exc.strerror})"
    if problem is not None:
        sock.close()  # the duplicate only
        raise InvalidAddress(text, f"{CALL}: {problem}")
    return sock


def _refusal(sock: _stdlib_socket.socket, fd: int) -> str | None:
    """Why ``sock`` (a duplicate of ``fd``) cannot be served on; None if it can."""
    kind = _kind(sock)
    if int(sock.type) != _stdlib_socket.SOCK_STREAM or int(sock.family) not in _FAMILIES:
        return f"fd {fd} is {kind}; a listening TCP or Unix stream socket is needed"
    if _FAMILIES[int(sock.family)] == "TCP" and sock.proto not in _TCP_PROTOCOLS:
        return f"fd {fd} is a stream socket of protocol {sock.proto}, not TCP"
    if not sock.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_ACCEPTCONN):
        return f"fd {fd} is {kind} that is not listening (it needs bind() and listen())"
    return None
