"""The canary: well-behaved clients whose every reply is checked byte for byte.

Three kinds run all the time:

* *persistent* canaries keep one connection and do request/response on it
  back to back, reconnecting when the server closes it (a drain) -- on the
  plain bind, and one over TLS;
* a *fresh* canary opens a new connection for every exchange (a server that
  cannot accept shows there first);
* a *PROXY* canary connects from the trusted proxy's address to the PROXY
  bind, sends a valid header (v1 and v2 in turn) naming a client, then a
  few exchanges on that connection before the next.

After a descriptor-exhaustion window a *recovery probe* (see
:func:`recovery_probe`) times how soon the server serves new connections.

Outcomes of an exchange:

``ok``
    the reply matched byte for byte.
``corrupt``
    a reply arrived and differs (or has extra bytes): always a failure.
``lost``
    a request went unanswered on a connection the server had been serving:
    a reset, end-of-file or timeout after the request -- unless the request
    was sent after a drain of that server began (see :class:`Drains`).
``drain_unanswered``
    end-of-file with no reply to a request sent after a drain began: the
    server closed between two requests, as a drain does; retried.
``drain_unserved``
    a TLS or PROXY connection that never got a reply, closed during a drain:
    it was still waiting for a slot or in its stages when the drain began,
    and a drain closes those without running the handler (the shutdown
    report counts them in ``in_stages``; ``finish.py`` checks the count).
``stalled``
    a new connection that got no reply in time (queued behind a fault,
    never served): not lost, nothing was accepted -- but only a descriptor
    window may cause it: a stall outside every such window fails the run
    (``bounds.stall_check``: a leaked slot looks like this).
``connect_refused``, ``connect_timeout``
    the connect itself failed (the server restarting), or the TLS handshake.
``handshake_aborted``
    the canary gave up a TLS handshake (its own timeout): the server counts
    a TLS failure for it.
"""

from __future__ import annotations

import bisect
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from .handler import reply_for
from .net import CONNECT_ERRORS, Tally, connect_from

__all__ = ["CanaryStats", "Drains", "Probe", "recovery_probe", "run_canary"]

#: Seconds a persistent canary waits for a reply before calling it lost.
REPLY_TIMEOUT = 15.0


@dataclass
class Drains:
    """When drains (restart, reload) of a server began and ended, as ``time.monotonic()``."""

    windows: list[tuple[float, float]] = field(default_factory=list)

    def begin(self) -> None:
        """A drain starts now (just before the signal is sent)."""
        self.windows.append((time.monotonic(), float("inf")))

    def end(self) -> None:
        """The last drain is over (the new server is serving)."""
        start, _ = self.windows[-1]
        self.windows[-1] = (start, time.monotonic())

    def covers(self, sent_at: float) -> bool:
        """A request sent at ``sent_at`` went out during a drain (or up to 5 s after)."""
        return any(start <= sent_at <= end + 5.0 for start, end in self.windows)

    def overlaps(self, start: float, end: float) -> bool:
        """A connection open from ``start`` to ``end`` was open during a drain (no margin).

        For clients that know when their connection began and ended (a slow
        writer, a slow reader, a resetter): one that connected after the new
        server was listening, or ended before the drain began, was not in it.
        """
        return any(begin <= end and start <= until for begin, until in self.windows)


@dataclass
class CanaryStats:
    """Every canary exchange: outcomes, latencies, and when exchanges succeeded."""

    tally: Tally = field(default_factory=Tally)
    #: (completion time, latency in ms) of each successful exchange, in time order.
    latencies: list[tuple[float, float]] = field(default_factory=list)
    #: Completion times of the fresh canary's successful exchanges.
    fresh_ok: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: (sent, given up, label) of each ``stalled`` exchange (monotonic times).
    stalls: list[tuple[float, float, str]] = field(default_factory=list)

    def record(self, outcome: str, detail: str = "") -> None:
        """Count an outcome; keep the first few failures' details."""
        self.tally.count(outcome, detail)
        if outcome in ("lost", "corrupt") and len(self.problems) < 20:
            self.problems.append(f"{outcome}: {detail}")

    def recent_latencies(self, since: float) -> list[float]:
        """Latencies (ms) of the exchanges completed at or after ``since``."""
        index = bisect.bisect_left(self.latencies, (since, -1.0))
        return [ms for _, ms in self.latencies[index:]]

    def first_fresh_ok_after(self, when: float) -> float | None:
        """Completion time of the fresh canary's first success at or after ``when``."""
        index = bisect.bisect_left(self.fresh_ok, when)
        return self.fresh_ok[index] if index < len(self.fresh_ok) else None


def _request(seq: int) -> bytes:
    """A request line of ~200 bytes that differs every time."""
    return b"C %d " % seq + os.urandom(96).hex().encode()


class _Conn:
    """A canary's connection: a plain socket stream or TLS over one."""

    def __init__(self, stream: trio.abc.Stream, label: str, staged: bool = False) -> None:
        self.stream = stream
        self.label = label
        self.exchanges = 0
        #: The bind runs stages (TLS, a PROXY header) before the handler.
        self.staged = staged


async def _open(
    source: str,
    address: tuple[str, int],
    tls: ssl.SSLContext | None,
    aborted: Tally | None = None,
    header: bytes = b"",
) -> trio.abc.Stream:
    stream = await connect_from(source, address, timeout=10.0)
    if header:
        try:
            await stream.send_all(header)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
    if tls is None:
        return stream
    wrapped = trio.SSLStream(stream, tls, server_hostname="127.0.0.1")
    try:
        with trio.fail_after(10.0):
            await wrapped.do_handshake()
    except BaseException as exc:
        if aborted is not None and isinstance(exc, trio.TooSlowError):
            aborted.count("handshake_aborted")  # we cut it: the server counts a TLS failure
        await trio.aclose_forcefully(stream)
        raise
    return wrapped


async def _exchange(conn: _Conn, seq: int, stats: CanaryStats, drains: Drains) -> bool:
    """One request/response on ``conn``; False when the connection is done for."""
    line = _request(seq)
    expected = reply_for(line)
    sent_at = time.monotonic()
    got = bytearray()
    how = "timeout"
    sent = False
    with trio.move_on_after(REPLY_TIMEOUT):
        try:
            await conn.stream.send_all(line + b"\n")
            sent = True
            while len(got) < len(expected):
                chunk = await conn.stream.receive_some(65536)
                if not chunk:
                    how = "eof"
                    break
                got += chunk
            else:
                how = "done"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            cause = exc.__cause__ or exc.__context__
            step = "receiving" if sent else "sending"
            how = f"reset while {step} ({exc!r} / {cause!r}, {len(got)} bytes in)"
    done_at = time.monotonic()
    if how == "done":
        if bytes(got) != expected:
            stats.record("corrupt", f"seq {seq}: {len(got)} bytes, expected {len(expected)}")
            return False
        conn.exchanges += 1
        stats.record("ok")
        stats.latencies.append((done_at, (done_at - sent_at) * 1000.0))
        return True
    if got:
        stats.record(
            "corrupt" if not expected.startswith(bytes(got)) else "lost", f"{how} mid-reply"
        )
    elif drains.covers(sent_at):
        stats.record("drain_unanswered")
    elif conn.staged and conn.exchanges == 0 and how != "timeout" and drains.covers(done_at):
        stats.record("drain_unserved")
    elif conn.exchanges == 0 and how == "timeout":
        stats.record("stalled")
        stats.stalls.append((sent_at, done_at, conn.label))
    else:
        stats.record(
            "lost",
            f"{conn.label} seq {seq}: {how} after {conn.exchanges} exchanges on the connection, "
            f"{done_at - sent_at:.3f} s after sending",
        )
    return False


async def run_canary(
    source: str,
    address: tuple[str, int],
    stats: CanaryStats,
    drains: Drains,
    *,
    fresh: bool = False,
    tls: ssl.SSLContext | None = None,
    header: Callable[[int], bytes] | None = None,
    per_connection: int = 0,
) -> None:
    """Exchange forever (until cancelled): back to back, or one connection each if ``fresh``.

    ``header(n)``: bytes sent first on the ``n``-th connection (a PROXY header);
    ``per_connection``: exchanges before the next connection (0: no limit).
    """
    seq = 0
    connections = 0
    while True:
        stats.tally.attempts += 1
        connections += 1
        first = header(connections) if header is not None else b""
        try:
            stream = await _open(source, address, tls, stats.tally, first)
        except CONNECT_ERRORS:
            stats.record("connect_refused")
            await trio.sleep(0.05)
            continue
        except (trio.TooSlowError, trio.BrokenResourceError, OSError):
            stats.record("connect_timeout")
            continue
        conn = _Conn(stream, ("fresh " if fresh else "") + source, bool(tls or header))
        try:
            while True:
                seq += 1
                ok = await _exchange(conn, seq, stats, drains)
                if fresh and ok:
                    stats.fresh_ok.append(time.monotonic())
                if fresh or not ok or conn.exchanges == per_connection:
                    break
                stats.tally.attempts += 1
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                await conn.stream.aclose()


@dataclass
class Probe:
    """One recovery-probe attempt: when it started, connected and got its reply (monotonic)."""

    started: float
    connected: float | None = None
    replied: float | None = None
    outcome: str = "cut"


async def recovery_probe(
    source: str,
    address: tuple[str, int],
    tally: Tally,
    every: float = 0.1,
    most: int = 30,
    timeout: float = 10.0,
) -> list[Probe]:
    """New connections, one every ``every`` s (``most`` at most), until one is served.

    Started the moment a fault ends: the first attempt goes out at once and
    none is given up early (each waits up to ``timeout`` s), so the first
    reply times the server, not the client.  Staggered attempts keep a
    connection that met some kernel-side delay (a dropped SYN) from
    deciding the figure alone.  The attempts, in order; the rest are
    cancelled (``cut``) when one is served.
    """
    probes: list[Probe] = []
    served = trio.Event()

    async def attempt(probe: Probe) -> None:
        tally.attempts += 1
        line = _request(len(probes))
        try:
            with trio.fail_after(timeout):
                stream = await connect_from(source, address, timeout)
                probe.connected = time.monotonic()
                async with stream:
                    await stream.send_all(line + b"\n")
                    got = bytearray()
                    expected = reply_for(line)
                    while len(got) < len(expected):
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            break
                        got += chunk
        except (trio.TooSlowError, trio.BrokenResourceError, OSError) as exc:
            probe.outcome = "timeout" if isinstance(exc, trio.TooSlowError) else "failed"
            tally.count(probe.outcome)
            return
        probe.outcome = "ok" if bytes(got) == expected else "corrupt"
        tally.count(probe.outcome)
        if probe.outcome == "ok":
            probe.replied = time.monotonic()
            served.set()

    async with trio.open_nursery() as nursery:
        for _ in range(most):
            probe = Probe(time.monotonic())
            probes.append(probe)
            nursery.start_soon(attempt, probe)
            with trio.move_on_after(every):
                await served.wait()
            if served.is_set():
                break
        with trio.move_on_after(timeout + 1.0):  # every attempt ends within its timeout
            await served.wait()
        nursery.cancel_scope.cancel()
    return probes
