"""Built-in handlers for the classic simple services (RFCs 862, 863, 864, 867).

Each is an ``async def name(conn: trionet.Connection) -> None`` handler::

    from trionet import services

    async with trionet.open_server(services.echo, "tcp://127.0.0.1:7007") as server:
        ...

``SERVICES`` maps the names ``trionet serve`` accepts to the handlers.
"""

from __future__ import annotations

from ._services import CHARGEN_LINE_WIDTH as CHARGEN_LINE_WIDTH
from ._services import SERVICES as SERVICES
from ._services import chargen as chargen
from ._services import daytime as daytime
from ._services import daytime_line as daytime_line
from ._services import discard as discard
from ._services import echo as echo

__all__ = [
    "CHARGEN_LINE_WIDTH",
    "SERVICES",
    "chargen",
    "daytime",
    "daytime_line",
    "discard",
    "echo",
]

# Make reprs, docs and tracebacks say trionet.services.name.
for _name in __all__:
    _obj = globals()[_name]
    if callable(_obj) and getattr(_obj, "__module__", "") == "trionet._services":
        _obj.__module__ = "trionet.services"
del _name, _obj
