"""Guards that keep an installed virtual network from ever reaching the real one.

Trio's socket-factory hook covers ``trio.socket.socket()``, but a few
``trio.socket`` functions make real sockets without asking it:
``socketpair``, ``from_stdlib_socket``, ``fromfd`` and ``socket(fileno=...)``.
While any virtual network is installed these module attributes are
replaced, *for the whole process*, by guards that raise ``RuntimeError``
inside a ``trio.run`` with a network installed and call the original
everywhere else (other threads' runs, runs without a network).  The
originals come back when the last network is uninstalled.  Code that
imported one of them by name before the network was installed
(``from trio.socket import socketpair``) keeps the original: call them as
``trio.socket.socketpair()``.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import trio

from .. import _virtual

__all__ = ["acquire", "active"]

_GUARDED = ("socketpair", "from_stdlib_socket", "fromfd", "socket")
_lock = threading.Lock()
_users = 0
_originals: dict[str, Callable[..., Any]] = {}


def _guard(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        net = _virtual.current()
        if net is not None and (name != "socket" or _fileno_given(args, kwargs)):
            call = "socket(fileno=...)" if name == "socket" else f"{name}()"
            raise RuntimeError(
                f"trio.socket.{call} would make a real socket, but {net.describe()} is "
                "installed in this trio.run (use trio.socket.socket() for a virtual one)"
            )
        return original(*args, **kwargs)

    guarded.__trionet_guard__ = True  # type: ignore[attr-defined]
    return guarded


def _fileno_given(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    return (len(args) >= 4 and args[3] is not None) or kwargs.get("fileno") is not None


def acquire() -> Callable[[], None]:
    """Install the guards (counted); returns the function that releases this hold."""
    global _users
    with _lock:
        if _users == 0:
            for name in _GUARDED:
                original = getattr(trio.socket, name)
                _originals[name] = original
                setattr(trio.socket, name, _guard(name, original))
        _users += 1
    released = False

    def release() -> None:
        global _users
        nonlocal released
        with _lock:
            if released:
                return
            released = True
            _users -= 1
            if _users == 0:
                for name, original in _originals.items():
                    setattr(trio.socket, name, original)
                _originals.clear()

    return release


def active() -> bool:
    """Whether every guard is in place."""
    return all(getattr(getattr(trio.socket, n), "__trionet_guard__", False) for n in _GUARDED)
