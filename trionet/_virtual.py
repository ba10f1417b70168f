"""What the core asks of an installed virtual network (``trionet.testing``).

The core never imports :mod:`trionet.testing`; a virtual network installs
itself here, per ``trio.run``, through a :class:`trio.lowlevel.RunVar`, and
the core asks two things of it:

* its seeded RNG, for trionet's own random back-offs (connect retries,
  accept back-off), so a seeded scenario replays exactly;
* whether something that cannot be simulated (a Unix socket path, an
  inherited descriptor) must be refused before it touches the real system.

Outside ``trio.run``, or with no network installed, the RNG is the
``random`` module's and nothing is refused.
"""

from __future__ import annotations

import random
from typing import Protocol

import trio

from ._exceptions import InvalidAddress

__all__ = ["SimulatedNetwork", "current", "install", "random_fraction", "refuse", "uniform"]


class SimulatedNetwork(Protocol):
    """The part of a virtual network the core sees."""

    @property
    def random(self) -> random.Random:
        """The network's seeded RNG."""
        ...

    def describe(self) -> str:
        """How error messages name the network, e.g. ``VirtualNetwork(seed=1)``."""
        ...


_installed: trio.lowlevel.RunVar[SimulatedNetwork | None] = trio.lowlevel.RunVar(
    "trionet_virtual_network", default=None
)


def current() -> SimulatedNetwork | None:
    """The network installed in this ``trio.run``, or None (also outside ``trio.run``)."""
    try:
        return _installed.get()
    except RuntimeError:  # not inside trio.run
        return None


def install(net: SimulatedNetwork | None) -> SimulatedNetwork | None:
    """Install ``net`` (None: uninstall) for this ``trio.run``; returns the previous one."""
    previous = current()
    _installed.set(net)
    return previous


def uniform(low: float, high: float) -> float:
    """``random.uniform``, from the installed network's RNG when there is one."""
    net = current()
    return (net.random if net is not None else random).uniform(low, high)


def random_fraction() -> float:
    """``random.random()``, from the installed network's RNG when there is one."""
    net = current()
    return (net.random if net is not None else random).random()


def refuse(call: str, spec: object, what: str) -> None:
    """Raise :class:`~trionet.InvalidAddress` for ``spec`` if a virtual network is installed.

    For things a virtual network does not simulate, checked before they
    touch the real system (``what``: e.g. "a Unix socket").
    """
    net = current()
    if net is not None:
        raise InvalidAddress(
            spec,
            f"{call}: {what} cannot be used while {net.describe()} is installed "
            "(the virtual network simulates TCP only, and never touches the real "
            "network or filesystem)",
        )
