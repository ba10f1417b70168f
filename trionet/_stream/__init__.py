"""What a handler or a client holds: :class:`~trionet.Connection` and its transports.

* :mod:`._base` -- the ``Connection`` API every transport shares;
* :mod:`._options` -- its settings (``ConnOptions``, the defaults), and
  :mod:`._owner` -- all it knows of the server that owns it (``ConnectionOwner``);
* :mod:`._buffered` -- the buffered reads (a mixin of ``Connection``);
* :mod:`._iteration` -- the drain-aware ``async for`` (a mixin of ``Connection``);
* :mod:`._closing` -- the close protocol: close at once, or linger first (a
  mixin of ``Connection``);
* :mod:`._socket` -- the socket transport (kernel fast path, generic path),
  with its receive path :mod:`._socket_receive` and send path
  :mod:`._socket_send` (mixins of ``SocketConnection``);
* :mod:`._tls` -- the TLS transport (making one, the handshake, the
  goodbye), over its record I/O :mod:`._tls_io`;
* :mod:`._clienthello` -- the server name a TLS ClientHello asks for (sans-I/O);
* :mod:`._wrapped` -- ``StreamConnection``: the ``Connection`` API over any
  ``trio.abc.Stream`` (``trio.SSLStream``, say), and :mod:`._layers`, which
  finds the trionet connection (or socket) beneath such a stream;
* :mod:`._poller` -- the shared epoll set server connections park on;
* :mod:`._checkpoints` -- the cheap schedule point;
* :mod:`._sockopts` -- socket-level helpers (options, queue sizes, the
  close decision);
* :mod:`._info` -- the frozen records (``ConnectionInfo``, ``TLSInfo``);
* :mod:`._hooks` -- the package's interface to the packages that own
  connections (the server, the client, the pool): making one, the
  handshake, the drain, the close protocol, the pool's health question;
* :mod:`._preamble` -- transport bytes before the connection's own protocol
  (a PROXY header, before TLS);
* :mod:`._beneath` -- what ``StreamConnection`` asks of the connection
  beneath it.

Within this package, modules share private members; other packages call
only public names and the functions of ``_hooks``, ``_preamble`` and
``_sockopts`` (see the architecture essay).
"""

from ._base import Connection as Connection
from ._base import ConnectionOwner as ConnectionOwner
from ._buffered import DEFAULT_RECEIVE_SIZE as DEFAULT_RECEIVE_SIZE
from ._info import ConnectionInfo as ConnectionInfo
from ._info import TLSInfo as TLSInfo
from ._options import DEFAULT_CLOSE_LINGER as DEFAULT_CLOSE_LINGER
from ._options import DEFAULT_OPTIONS as DEFAULT_OPTIONS
from ._options import DEFAULT_SCHEDULE_BUDGET as DEFAULT_SCHEDULE_BUDGET
from ._options import ConnOptions as ConnOptions
from ._options import check_close_linger as check_close_linger
from ._socket import SocketConnection as SocketConnection
from ._wrapped import StreamConnection as StreamConnection

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
    "StreamConnection",
    "TLSInfo",
    "check_close_linger",
]
