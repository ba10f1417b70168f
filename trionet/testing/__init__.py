"""trionet's public test support: a deterministic virtual TCP network and test helpers.

Available after a plain ``import trionet`` as ``trionet.testing`` (like
``trio.testing`` after ``import trio``).  See the "Testing with trionet" guide.
"""

from __future__ import annotations

from ._helpers import (
    ExitRecordingEcho,
    Shutdown,
    client_first_flight,
    custom_socket_class,
    fill_stream,
    no_errors_logged,
    wait_until,
)
from ._network import VirtualNetwork
from ._trace import TraceEvent

__all__ = [
    "ExitRecordingEcho",
    "Shutdown",
    "TraceEvent",
    "VirtualNetwork",
    "client_first_flight",
    "custom_socket_class",
    "fill_stream",
    "no_errors_logged",
    "wait_until",
]


def _public_names() -> None:
    # Reprs, docs and tracebacks say trionet.testing.Name, as trio.testing's do.
    namespace = globals()
    for name in __all__:
        obj = namespace[name]
        if getattr(obj, "__module__", "").startswith("trionet.testing._"):
            obj.__module__ = __name__


_public_names()
