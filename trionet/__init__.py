"""trionet: structured-concurrency networking for Trio.

Servers with one accept task per listener and one task per connection,
graceful drain, admission control and stats; clients that connect inside
cancel scopes; a connection pool; a CLI and a pytest plugin.
"""

from ._address import Address as Address
from ._address import TCPAddress as TCPAddress
from ._address import UnixAddress as UnixAddress
from ._address import parse_address as parse_address
from ._admission import AccessPolicy as AccessPolicy
from ._client import connect as connect
from ._config import ServerConfig as ServerConfig
from ._connection import Connection as Connection
from ._connection import ConnectionInfo as ConnectionInfo
from ._drain import ShutdownReport as ShutdownReport
from ._drain import drain_on_signals as drain_on_signals
from ._exceptions import AddressInUse as AddressInUse
from ._exceptions import ConnectAttempt as ConnectAttempt
from ._exceptions import ConnectError as ConnectError
from ._exceptions import ConnectTimeout as ConnectTimeout
from ._exceptions import IncompleteRead as IncompleteRead
from ._exceptions import InvalidAddress as InvalidAddress
from ._exceptions import ListenError as ListenError
from ._exceptions import LocalProtocolError as LocalProtocolError
from ._exceptions import MessageTooLong as MessageTooLong
from ._exceptions import RemoteProtocolError as RemoteProtocolError
from ._exceptions import TrionetError as TrionetError
from ._pool import ConnectionPool as ConnectionPool
from ._pool import PoolStats as PoolStats
from ._server import Handler as Handler
from ._server import Server as Server
from ._server import open_server as open_server
from ._server import serve as serve
from ._stats import ServerStats as ServerStats
from ._version import __version__ as __version__

__all__ = [
    "AccessPolicy",
    "Address",
    "AddressInUse",
    "ConnectAttempt",
    "ConnectError",
    "ConnectTimeout",
    "Connection",
    "ConnectionInfo",
    "ConnectionPool",
    "Handler",
    "IncompleteRead",
    "InvalidAddress",
    "ListenError",
    "LocalProtocolError",
    "MessageTooLong",
    "PoolStats",
    "RemoteProtocolError",
    "Server",
    "ServerConfig",
    "ServerStats",
    "ShutdownReport",
    "TCPAddress",
    "TrionetError",
    "UnixAddress",
    "__version__",
    "connect",
    "drain_on_signals",
    "open_server",
    "parse_address",
    "serve",
]

# Make reprs, docs and tracebacks say trionet.Name, like Trio does.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("trionet._"):
        try:
            _obj.__module__ = "trionet"
        except (AttributeError, TypeError):  # pragma: no cover
            pass
del _name, _obj
