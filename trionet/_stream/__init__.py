"""What a handler or a client holds: :class:`~trionet.Connection` and its transports.

* :mod:`._base` -- the ``Connection`` API every transport shares;
* :mod:`._buffered` -- the buffered reads (a mixin of ``Connection``);
* :mod:`._socket` -- the socket transport (kernel fast path, generic path);
* :mod:`._poller` -- the shared epoll set server connections park on;
* :mod:`._checkpoints` -- the cheap schedule point;
* :mod:`._sockopts` -- socket-level helpers (options, queue sizes, the
  close decision);
* :mod:`._info` -- the frozen records (``ConnectionInfo``, ``TLSInfo``).
"""

from ._base import DEFAULT_CLOSE_LINGER as DEFAULT_CLOSE_LINGER
from ._base import DEFAULT_OPTIONS as DEFAULT_OPTIONS
from ._base import DEFAULT_SCHEDULE_BUDGET as DEFAULT_SCHEDULE_BUDGET
from ._base import Connection as Connection
from ._base import ConnectionOwner as ConnectionOwner
from ._base import ConnOptions as ConnOptions
from ._base import check_close_linger as check_close_linger
from ._buffered import DEFAULT_RECEIVE_SIZE as DEFAULT_RECEIVE_SIZE
from ._info import ConnectionInfo as ConnectionInfo
from ._info import TLSInfo as TLSInfo
from ._socket import SocketConnection as SocketConnection

__all__ = [
    "DEFAULT_CLOSE_LINGER",
    "DEFAULT_OPTIONS",
    "DEFAULT_RECEIVE_SIZE",
    "DEFAULT_SCHEDULE_BUDGET",
    "ConnOptions",
    "Connection",
    "ConnectionInfo",
    "ConnectionOwner",
    "SocketConnection",
    "TLSInfo",
    "check_close_linger",
]
