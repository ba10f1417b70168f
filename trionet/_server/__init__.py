"""The server: from a listening socket to a handler and back, and the drain.

Data flows one way: listener -> accept task (:mod:`._accept`) -> admission
gate (:mod:`._admission`) -> connection record and task (:mod:`._table`,
:mod:`._record`, slots in :mod:`._capacity`) -> stages (:mod:`._stages`:
TLS) -> handler -> release (stats, orderly close) -> linger -> drain
(:mod:`._server`, :mod:`._drain`).  :mod:`._serve` holds ``serve`` and
``open_server``; :mod:`._listeners` opens listening sockets;
:mod:`._idle` is the idle reaper; :mod:`._classify` decides whose fault an
exception escaping a handler was.

Nothing is imported here: modules name the submodule they need (the
configuration imports the access policy without pulling the server in).
"""
