"""``VirtualNetwork``: a deterministic in-memory TCP network for Trio tests.

Installed for one ``trio.run`` through Trio's public hooks
(:func:`trio.socket.set_custom_socket_factory` and
:func:`trio.socket.set_custom_hostname_resolver`), so unmodified code --
trionet, ``trio.serve_tcp``, ``trio.open_tcp_stream``, libraries on top of
them -- runs on :class:`~trionet.testing._socket.VirtualSocket` instead of
the kernel.  Everything happens in Trio's virtual time: under
``autojump_clock`` a 60 s timeout takes no wall time.

Determinism: Trio runs the tasks of one batch in a random order, so nothing
here depends on task order.  Delays come from per-connection-direction RNGs
derived from ``(seed, link, connection index on that link)``; faults apply
at the virtual instant they are called; the trace is sorted by
``(time, key, seq)``.
"""

from __future__ import annotations

import errno
import math
import random
import socket as _stdlib
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from .. import _virtual
from . import _safety
from ._base import oserror
from ._handshake import handshake
from ._hosts import AddressBook, BindTable, Host, normalise_ip, parse_sockaddr
from ._pipe import Direction, Wakeup
from ._resolver import VirtualResolver, VirtualSocketFactory
from ._socket import VirtualSocket
from ._trace import Trace, TraceEvent

__all__ = ["VirtualNetwork"]

_DIRECTIONS = ("both", "a->b", "b->a")


class VirtualNetwork:
    """A deterministic virtual TCP network with fault injection.

    Args:
        seed: Seeds every random choice the network makes (jitter, and
            trionet's own back-offs while installed).  Default 0.
        buffer_size: Bytes one direction of a connection holds (in flight
            plus unread) before ``send`` blocks: the model of a send buffer
            and a receive window.
        default_address: The address a client socket gets when it connects
            without binding first (``::1`` for IPv6).

    Example::

        async def test_partition(autojump_clock):
            net = trionet.testing.VirtualNetwork(seed=1)
            with net.install():
                net.add_host("server.test", "127.0.0.10")
                ...
                net.partition("127.0.0.1", "server.test")
    """

    def __init__(
        self, seed: int = 0, *, buffer_size: int = 65536, default_address: str = "127.0.0.1"
    ) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"VirtualNetwork: seed must be an int, not {seed!r}")
        if not isinstance(buffer_size, int) or isinstance(buffer_size, bool):
            raise TypeError(f"VirtualNetwork: buffer_size must be an int, not {buffer_size!r}")
        if buffer_size < 1:
            raise ValueError(f"VirtualNetwork: buffer_size must be >= 1, not {buffer_size!r}")
        if not isinstance(default_address, str):
            raise TypeError(
                f"VirtualNetwork: default_address must be a str, not {default_address!r}"
            )
        self.seed = seed
        self.buffer_size = buffer_size
        self._random = random.Random(f"trionet/{seed}")
        self._book = AddressBook()
        self._book.add("VirtualNetwork", "localhost", ("127.0.0.1", "::1"))
        ip = normalise_ip(default_address)
        if ip is None or ":" in ip:
            raise ValueError(
                f"VirtualNetwork: default_address must be an IPv4 address, not {default_address!r}"
            )
        if ip not in self._book.owners:
            self._book.add("VirtualNetwork: default_address", "localhost", (ip,))
        self.default_address = ip
        self._binds = BindTable()
        self._sockets: set[VirtualSocket] = set()
        self._blocks: dict[tuple[str, str], set[str]] = {}
        self._latency: dict[tuple[str, str], tuple[float, float]] = {}
        self._link_count: dict[tuple[str, str], int] = {}
        #: Both directions of every connection not yet closed at both ends.
        self._links: set[Direction] = set()
        self._trace = Trace()
        self._changed = Wakeup()
        self._origin = 0.0
        self._installed = False

    # ------------------------------------------------------------------
    # The core's view (trionet._virtual.SimulatedNetwork)

    @property
    def random(self) -> random.Random:
        """The network's seeded RNG (trionet's back-offs draw from it while installed)."""
        return self._random

    def describe(self) -> str:
        return f"trionet.testing.VirtualNetwork(seed={self.seed})"

    def __repr__(self) -> str:
        return f"<{self.describe()} hosts={sorted(self._book.hosts)}>"

    # ------------------------------------------------------------------
    # Installing

    @contextmanager
    def install(self) -> Iterator[VirtualNetwork]:
        """Make this network the only network of the current ``trio.run``.

        Inside the block ``trio.socket.socket()`` makes virtual sockets and
        host names resolve through :meth:`add_host`.  Calls that would make
        a real socket anyway (``trio.socket.socketpair``,
        ``from_stdlib_socket``, ``fromfd``, ``socket(fileno=...)``) raise
        ``RuntimeError`` -- those ``trio.socket`` functions are replaced for
        the whole process while any network is installed, and refuse only
        inside the ``trio.run`` that installed it.  On entry the network
        checks that every hook took effect.

        Raises:
            RuntimeError: outside ``trio.run``, a network is installed
                already, or a hook did not take effect.
        """
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            raise RuntimeError("VirtualNetwork.install() must be called inside trio.run") from None
        if _virtual.current() is not None:
            raise RuntimeError(
                f"VirtualNetwork.install(): {_virtual.current().describe()} "  # type: ignore[union-attr]
                "is already installed in this trio.run"
            )
        factory = VirtualSocketFactory(self)
        resolver = VirtualResolver(self)
        release = _safety.acquire()
        previous_factory = trio.socket.set_custom_socket_factory(factory)
        previous_resolver = trio.socket.set_custom_hostname_resolver(resolver)
        _virtual.install(self)
        self._installed = True
        self._origin = self._trace.origin = trio.current_time()
        try:
            self._self_check(resolver)
            yield self
        finally:
            self._installed = False
            _virtual.install(None)
            trio.socket.set_custom_hostname_resolver(previous_resolver)
            trio.socket.set_custom_socket_factory(previous_factory)
            release()

    def _self_check(self, resolver: VirtualResolver) -> None:
        probe = trio.socket.socket()
        try:
            ok = isinstance(probe, VirtualSocket) and probe._net is self
        finally:
            probe.close()
        again = trio.socket.set_custom_hostname_resolver(resolver)
        if (
            not ok
            or again is not resolver
            or not _safety.active()
            or _virtual.current() is not self
        ):
            raise RuntimeError(
                "VirtualNetwork.install(): the socket factory, resolver or guards did not "
                "take effect; refusing to run a virtual test on the real network"
            )

    # ------------------------------------------------------------------
    # Hosts

    def add_host(self, name: str, *addresses: str) -> None:
        """Add a host (or more addresses to one): ``name`` resolves to ``addresses``.

        Addresses must be loopback-range: ``127.0.0.0/8`` or ``::1``.
        """
        self._book.add("VirtualNetwork.add_host", name, addresses)

    def addresses(self, host: str) -> list[str]:
        """The addresses of a host (by name or address)."""
        return list(self._book.host("VirtualNetwork.addresses", host).addresses)

    # ------------------------------------------------------------------
    # Faults

    def _pairs(self, call: str, a: str, b: str, direction: str) -> list[tuple[str, str]]:
        ha, hb = self._book.host(call, a), self._book.host(call, b)
        if direction not in _DIRECTIONS:
            raise ValueError(f"{call}: direction must be one of {_DIRECTIONS}, not {direction!r}")
        pairs = []
        if direction in ("both", "a->b"):
            pairs.append((ha.name, hb.name))
        if direction in ("both", "b->a"):
            pairs.append((hb.name, ha.name))
        return pairs

    def _directions(self, pairs: list[tuple[str, str]]) -> Iterator[Direction]:
        # Every direction still in use -- a closed socket's included: its
        # bytes and FIN are still on their way, and a fault applies to them.
        wanted = set(pairs)
        for way in list(self._links):
            if way.sender_gone and way.receiver_gone:
                self._links.discard(way)
            elif (way.src, way.dst) in wanted:
                yield way

    def _block(self, call: str, reason: str, a: str, b: str, direction: str) -> None:
        pairs = self._pairs(call, a, b, direction)
        now = trio.current_time()
        for pair in pairs:
            self._blocks.setdefault(pair, set()).add(reason)
        for out in self._directions(pairs):
            out.block(now)
        self._record("", reason, *(f"{s}->{d}" for s, d in pairs))
        self._changed.fire()

    def _unblock(self, call: str, reason: str, a: str, b: str, direction: str, kind: str) -> None:
        pairs = self._pairs(call, a, b, direction)
        now = trio.current_time()
        opened = set()
        for pair in pairs:
            reasons = self._blocks.get(pair)
            if reasons is not None:
                reasons.discard(reason)
                if not reasons:
                    del self._blocks[pair]
                    opened.add(pair)
        for out in self._directions(list(opened)):
            out.unblock(now, retransmit=reason == "partition")
        self._record("", kind, *(f"{s}->{d}" for s, d in pairs))
        self._changed.fire()

    def partition(self, a: str, b: str, *, direction: str = "both") -> None:
        """Cut the link between hosts ``a`` and ``b`` (``direction``: "both", "a->b", "b->a").

        Data not yet delivered stalls (it is never dropped) and new connects
        across the cut stay pending until :meth:`heal` or the caller's own
        timeout.
        """
        self._block("VirtualNetwork.partition", "partition", a, b, direction)

    def heal(self, a: str, b: str, *, direction: str = "both") -> None:
        """End a partition: stalled data is resent at once and arrives after the link's latency."""
        self._unblock("VirtualNetwork.heal", "partition", a, b, direction, "heal")

    def hold(self, a: str, b: str, *, direction: str = "both") -> None:
        """Hold everything on the link: data queues (in order) until :meth:`release`."""
        self._block("VirtualNetwork.hold", "hold", a, b, direction)

    def release(self, a: str, b: str, *, direction: str = "both") -> None:
        """Deliver what a :meth:`hold` queued, in order (at once if its latency has passed)."""
        self._unblock("VirtualNetwork.release", "hold", a, b, direction, "release")

    def set_latency(
        self, a: str, b: str, seconds: float, jitter: float = 0.0, *, direction: str = "both"
    ) -> None:
        """Set the one-way delay from ``a`` to ``b``: ``seconds`` plus a draw in ``[0, jitter]``.

        Each segment draws its own jitter from its connection direction's
        RNG; TCP's order is kept (a segment never overtakes the one before).
        Applies to segments sent from now on.
        """
        call = "VirtualNetwork.set_latency"
        for name, value in (("seconds", seconds), ("jitter", jitter)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{call}: {name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{call}: {name} must be a finite number >= 0, not {value!r}")
        pairs = self._pairs(call, a, b, direction)
        for pair in pairs:
            self._latency[pair] = (float(seconds), float(jitter))
        self._record("", "latency", *(f"{s}->{d}" for s, d in pairs), float(seconds), float(jitter))

    def reset_connections(self, host: str) -> None:
        """Reset every connection of ``host``: both ends see ``ECONNRESET``."""
        target = self._book.host("VirtualNetwork.reset_connections", host)
        self._record("", "reset_connections", target.name)
        for sock in sorted(self._sockets, key=lambda s: s._key):
            if sock._host is target and sock._in is not None and not sock._closed:
                sock._inject_reset()
                other = sock._other
                if other is not None:
                    other._inject_reset()

    def crash(self, host: str) -> None:
        """Crash ``host``: its sockets vanish, its peers see resets, its listeners are gone.

        Code still running "on" the host finds its sockets dead: calls on
        them block until cancelled.  Connects to the host stay pending
        until :meth:`restart`; after it, the host is up with no sockets.
        """
        target = self._book.host("VirtualNetwork.crash", host)
        self._record("", "crash", target.name)
        if target.crashed:
            return
        target.crashed = True
        target.epoch += 1
        for sock in sorted(self._sockets, key=lambda s: s._key):
            if sock._host is not target:
                continue
            other = sock._other
            if other is not None and other._host is not target:
                other._inject_reset()
            for queued in sock._queue:
                if queued._other is not None:
                    queued._other._inject_reset()
            self._binds.release(sock)
            sock._wake_all()
        self._changed.fire()

    def restart(self, host: str) -> None:
        """Bring a crashed host back up, with no sockets."""
        target = self._book.host("VirtualNetwork.restart", host)
        self._record("", "restart", target.name)
        if not target.crashed:
            return
        target.crashed = False
        self._changed.fire()

    def open_sockets(self) -> list[VirtualSocket]:
        """The network's sockets not closed yet (listening ones included), in a stable order.

        What a test asserts is empty once everything it opened is closed:
        nothing left open, by the server or by its clients.
        """
        return sorted(self._sockets, key=lambda s: (s._key, repr(s)))

    # ------------------------------------------------------------------
    # The trace

    @property
    def trace(self) -> list[TraceEvent]:
        """Every connect, accept, send, receive, reset and fault so far, in order."""
        return self._trace.events()

    def _record(self, key: str, kind: str, *detail: object) -> None:
        self._trace.record(trio.current_time(), key, kind, *detail)

    # ------------------------------------------------------------------
    # What sockets ask of the network

    def _new_socket(self, family: int, type: int, proto: int) -> VirtualSocket:
        sock = VirtualSocket(self, family, type, proto)
        self._sockets.add(sock)
        return sock

    def _forget(self, sock: VirtualSocket) -> None:
        self._binds.release(sock)
        self._sockets.discard(sock)
        for way in (sock._in, sock._out):
            if way is not None and way.sender_gone and way.receiver_gone:
                self._links.discard(way)  # closed at both ends: nothing left to fault

    def _sockaddr_of(self, family: int, address: object, call: str) -> tuple[str, int]:
        host, port = parse_sockaddr(family, address, call)
        if host == "":
            return ("::" if family == _stdlib.AF_INET6 else "0.0.0.0"), port
        ip = normalise_ip(host)
        if ip is None:
            found = self._book.lookup(host, family)
            if not found:
                raise _stdlib.gaierror(_stdlib.EAI_NONAME, "Name or service not known")
            ip = found[0]
        if (":" in ip) != (family == _stdlib.AF_INET6):
            raise _stdlib.gaierror(
                _stdlib.EAI_ADDRFAMILY, "Address family for hostname not supported"
            )
        return ip, port

    def _bind(self, sock: VirtualSocket, ip: str, port: int) -> None:
        owner: Host | None = None
        if ip not in ("0.0.0.0", "::"):
            owner = self._book.owners.get(ip)
            if owner is None:
                raise oserror(
                    errno.EADDRNOTAVAIL,
                    f"no host of {self.describe()} has the address {ip}; add it with add_host()",
                )
        port = self._binds.bind(sock, ip, port, self.describe())
        sock._local = (ip, port)
        sock._host = owner
        sock._epoch = owner.epoch if owner is not None else 0
        self._sockets.add(sock)

    def _blocked(self, src: Host, dst: Host) -> bool:
        return bool(self._blocks.get((src.name, dst.name)))

    def _delay(self, direction: Direction) -> float:
        seconds, jitter = self._latency.get((direction.src, direction.dst), (0.0, 0.0))
        if jitter:
            seconds += direction.rng.uniform(0.0, jitter)
        return seconds

    async def _connect(self, sock: VirtualSocket, ip: str, port: int) -> None:
        """Bind ``sock`` if needed, then run the handshake (``_handshake``).

        As on Linux, a connect to the wildcard address goes to this host: to
        ``0.0.0.0`` reaches the client's own address, to ``::`` reaches ``::1``.
        """
        family = int(sock.family)
        default = "::1" if family == _stdlib.AF_INET6 else self.default_address
        if sock._local is None:
            self._bind(sock, default, 0)
        elif sock._local[0] in ("0.0.0.0", "::"):
            self._binds.release(sock)
            self._bind(sock, default, sock._local[1])
        assert sock._local is not None
        if ip == "0.0.0.0":
            ip = sock._local[0]
        elif ip == "::":
            ip = "::1"
        await handshake(self, sock, ip, port)

    def _adopt(self, server: VirtualSocket, *directions: Direction) -> None:
        """A new connection: its server socket and its two directions."""
        self._sockets.add(server)
        self._links.update(directions)
