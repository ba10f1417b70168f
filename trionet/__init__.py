"""trionet: structured-concurrency networking for Trio.

Servers with one accept task per listener and one task per connection,
graceful drain, admission control and stats; clients that connect inside
cancel scopes; a connection pool; a CLI and a pytest plugin.
"""

# The package imports its parts lazily (PEP 562): ``import trionet`` itself
# is cheap, and the first public name asked for loads them all -- so that the
# ``trionet`` command can take a Ctrl-C as exit 130 from its very first line
# (see trionet/_launch.py) instead of in the middle of importing Trio.  Type
# checkers and editors see the imports below.

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:
    from . import testing as testing
    from ._address import Address as Address
    from ._address import TCPAddress as TCPAddress
    from ._address import UnixAddress as UnixAddress
    from ._address import parse_address as parse_address
    from ._binds import Bind as Bind
    from ._client._connect import connect as connect
    from ._client._pool import ConnectionPool as ConnectionPool
    from ._client._pool import PoolStats as PoolStats
    from ._config import ServerConfig as ServerConfig
    from ._exceptions import AddressInUse as AddressInUse
    from ._exceptions import ConnectAttempt as ConnectAttempt
    from ._exceptions import ConnectError as ConnectError
    from ._exceptions import ConnectTimeout as ConnectTimeout
    from ._exceptions import IncompleteRead as IncompleteRead
    from ._exceptions import InvalidAddress as InvalidAddress
    from ._exceptions import ListenError as ListenError
    from ._exceptions import LocalProtocolError as LocalProtocolError
    from ._exceptions import MessageTooLong as MessageTooLong
    from ._exceptions import ProxyProtocolError as ProxyProtocolError
    from ._exceptions import RemoteProtocolError as RemoteProtocolError
    from ._exceptions import TrionetError as TrionetError
    from ._exceptions import WorkerStartError as WorkerStartError
    from ._inherited import listen_environment as listen_environment
    from ._proxy._info import ProxyInfo as ProxyInfo
    from ._proxy._info import ProxySSL as ProxySSL
    from ._proxy._parse import parse_proxy_header as parse_proxy_header
    from ._server._admission import AccessPolicy as AccessPolicy
    from ._server._drain import ShutdownReport as ShutdownReport
    from ._server._drain import drain_on_signals as drain_on_signals
    from ._server._serve import Handler as Handler
    from ._server._serve import open_server as open_server
    from ._server._serve import serve as serve
    from ._server._server import Server as Server
    from ._stats import ServerStats as ServerStats
    from ._stats_file import stats_snapshot as stats_snapshot
    from ._stats_file import write_stats as write_stats
    from ._stream import Connection as Connection
    from ._stream import ConnectionInfo as ConnectionInfo
    from ._stream import StreamConnection as StreamConnection
    from ._stream import TLSInfo as TLSInfo
    from ._workers import Supervisor as Supervisor
    from ._workers import SupervisorReport as SupervisorReport
    from ._workers import supervise as supervise

#: Public name -> the private module that defines it.
_EXPORTS: dict[str, str] = {
    "Address": "._address",
    "Bind": "._binds",
    "TLSInfo": "._stream",
    "TCPAddress": "._address",
    "UnixAddress": "._address",
    "parse_address": "._address",
    "AccessPolicy": "._server._admission",
    "connect": "._client._connect",
    "ServerConfig": "._config",
    "Connection": "._stream",
    "ConnectionInfo": "._stream",
    "StreamConnection": "._stream",
    "ShutdownReport": "._server._drain",
    "drain_on_signals": "._server._drain",
    "AddressInUse": "._exceptions",
    "ConnectAttempt": "._exceptions",
    "ConnectError": "._exceptions",
    "ConnectTimeout": "._exceptions",
    "IncompleteRead": "._exceptions",
    "InvalidAddress": "._exceptions",
    "ListenError": "._exceptions",
    "LocalProtocolError": "._exceptions",
    "MessageTooLong": "._exceptions",
    "ProxyProtocolError": "._exceptions",
    "listen_environment": "._inherited",
    "ProxyInfo": "._proxy._info",
    "ProxySSL": "._proxy._info",
    "parse_proxy_header": "._proxy._parse",
    "RemoteProtocolError": "._exceptions",
    "TrionetError": "._exceptions",
    "ConnectionPool": "._client._pool",
    "PoolStats": "._client._pool",
    "Handler": "._server._serve",
    "Server": "._server._server",
    "open_server": "._server._serve",
    "serve": "._server._serve",
    "ServerStats": "._stats",
    "stats_snapshot": "._stats_file",
    "write_stats": "._stats_file",
    "Supervisor": "._workers",
    "SupervisorReport": "._workers",
    "WorkerStartError": "._exceptions",
    "supervise": "._workers",
}

__all__ = [
    "AccessPolicy",
    "Address",
    "AddressInUse",
    "Bind",
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
    "ProxyInfo",
    "ProxyProtocolError",
    "ProxySSL",
    "RemoteProtocolError",
    "Server",
    "ServerConfig",
    "ServerStats",
    "ShutdownReport",
    "StreamConnection",
    "Supervisor",
    "SupervisorReport",
    "TCPAddress",
    "TLSInfo",
    "TrionetError",
    "UnixAddress",
    "WorkerStartError",
    "__version__",
    "connect",
    "drain_on_signals",
    "listen_environment",
    "open_server",
    "parse_address",
    "parse_proxy_header",
    "serve",
    "stats_snapshot",
    "supervise",
    "write_stats",
]


def _load_all() -> None:
    # Import every part and make reprs, docs and tracebacks say
    # trionet.Name, like Trio does.
    import importlib

    namespace = globals()
    for name, module in _EXPORTS.items():
        obj = getattr(importlib.import_module(module, __name__), name)
        if getattr(obj, "__module__", "").startswith("trionet._"):
            try:
                obj.__module__ = "trionet"
            except (AttributeError, TypeError):  # pragma: no cover
                pass
        namespace[name] = obj


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        _load_all()
        return globals()[name]
    if name == "testing":
        # ``trionet.testing`` after a plain ``import trionet``, as with
        # ``trio.testing`` -- but imported (with Trio) only when first used.
        import importlib

        return importlib.import_module(".testing", __name__)
    raise AttributeError(f"module 'trionet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "testing"})
