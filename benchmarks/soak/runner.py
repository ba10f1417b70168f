"""The soak's timeline: the server up, warm-up, abuse with faults, a restart, quiet points, verdict.

For a run of ``T`` seconds::

    warm-up (canaries only) -> Q0 baseline
    phase 1: every client category; floods; a descriptor-exhaustion window (10 % of T)
    Q1: quiet -- descriptors/tasks/connections back to the Q0 baseline?
    restart: canaries + background abuse; drain-and-restart (or SIGHUP with --workers)
    Q2: quiet -- the new process's baseline
    phase 2: every client category; floods (Q2w after its first 20 %: the memory baseline)
    Q3: quiet -- back to baseline?  counters add up?  then SIGTERM, exit 0?

At a quiet point every client has stopped and the server has no
connection, nothing lingering, and descriptors steady.  One ``trionet
serve`` process (or a supervisor and its workers) serves the TLS, the plain
and the PROXY bind; every fault hits it.
"""

from __future__ import annotations

import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .canary import CanaryStats, Drains, Probe, recovery_probe, run_canary
from .checks import Ledger, SampleChecker, check, leak_checks
from .clients import PROXY_CLIENT, SOURCES, TRUSTED_PROXY, Clients
from .faults import Faults
from .idle import flood, idler
from .net import Tallies, proxy_v1, proxy_v2
from .server import Reading, ServerProcess

__all__ = ["Config", "Soak"]

Event = tuple[float, Callable[[], Awaitable[None]]]


@dataclass
class Config:
    """The run's options (see ``python -m benchmarks.soak --help``)."""

    minutes: float
    workers: int
    seed: int
    out: Path
    slowloris: int = 200
    serve_flags: list[str] = field(default_factory=list)

    def flag(self, name: str, default: float) -> float:
        """The value of the server flag ``name`` (``default`` if not given)."""
        flags = self.serve_flags
        return float(flags[flags.index(name) + 1]) if name in flags else default


def _state(reading: Reading) -> tuple[object, ...]:
    """What must hold still at a quiet point: each process's descriptors and tasks, counters."""
    return (
        sorted((p.pid, p.fds, p.tasks) for p in reading.processes),
        reading.totals,
    )


class Soak:
    """One soak run (``await Soak(config, server, ...).run()`` inside ``trio.run``)."""

    def __init__(self, config: Config, server: ServerProcess, client_tls: ssl.SSLContext) -> None:
        """The server is started by :meth:`run`; the caller kills it in its ``finally``."""
        self.config = config
        self.server = server
        self.client_tls = client_tls
        self.rng = random.Random(config.seed)
        self.t0 = time.monotonic()
        self.faults = Faults(self.t0)
        self.drains = Drains()
        self.tallies = Tallies()
        self.canaries = {
            name: CanaryStats(tally=self.tallies[name])
            for name in ("canary", "canary_tls", "canary_proxy")
        }
        self.canary = self.canaries["canary"]
        self.ledger = Ledger()
        self.checker = SampleChecker()
        self.samples: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.quiet: dict[str, Reading] = {}
        self.fd_windows: list[tuple[float, float]] = []
        #: Each descriptor window's end (monotonic) and its recovery probe's attempts.
        self.probes: list[tuple[float, list[Probe]]] = []
        self.clients: Clients | None = None
        self.restart_status: int | None = None
        #: The server's last snapshot, after the final SIGTERM.
        self.final: Reading | None = None
        self.baseline: Reading | None = None
        self.rss_baseline: Reading | None = None
        #: When each quiet point was reached (seconds since the start).
        self.quiet_at: dict[str, float] = {}
        #: Floods scheduled so far: the kinds alternate over the whole run.
        self.floods = 0

    # -- sampling -----------------------------------------------------------

    def _stale_ok(self, now: float) -> bool:
        return any(start <= now <= end + 3.0 for start, end in self.fd_windows)

    def sample(self) -> None:
        """Read the server's stats file, check the invariants, keep a sample."""
        now = time.monotonic()
        t = now - self.t0
        reading = self.server.read()
        if reading is None:
            return
        cumulative = self.ledger.cumulative(reading)
        if cumulative is None:
            return
        self.checker.check("server", reading, cumulative, t, self._stale_ok(now))
        totals = {k: int(v) for k, v in {**reading.totals, **cumulative}.items()}
        recent = sorted(ms for c in self.canaries.values() for ms in c.recent_latencies(now - 5.0))
        previous = self.samples[-1] if self.samples else None
        ok = sum(c.tally.outcomes["ok"] for c in self.canaries.values())
        dt = t - previous["t"] if previous else t
        self.samples.append(
            {
                "t": round(t, 3),
                "fds": reading.fds,
                "tasks": reading.tasks,
                "rss": reading.rss,
                "connections": reading.connections,
                "canary_p99_ms": round(recent[int(0.99 * (len(recent) - 1))], 3)
                if recent
                else None,
                "throughput": round((ok - (previous["_ok"] if previous else 0)) / dt, 1)
                if dt > 0
                else 0.0,
                "stats": totals,
                "workers": [
                    {
                        "pid": p.pid,
                        "fds": p.fds,
                        "tasks": p.tasks,
                        "rss": p.rss,
                        "connections": p.connections,
                    }
                    for p in reading.processes
                ],
                "_ok": ok,
            }
        )

    async def sampler(self) -> None:
        """Sample every 0.5 s until cancelled."""
        while True:
            self.sample()
            await trio.sleep(0.5)

    # -- clients ------------------------------------------------------------

    def start_canaries(self, nursery: trio.Nursery) -> None:
        """Three persistent canaries and a fresh one on the plain bind; one on TLS, one on PROXY."""
        plain = self.server.address("plain")
        proxy = self.server.address("proxy")
        for _ in range(3):
            nursery.start_soon(run_canary, SOURCES["canary"], plain, self.canary, self.drains)
        nursery.start_soon(
            lambda: run_canary(SOURCES["canary_fresh"], plain, self.canary, self.drains, fresh=True)
        )
        nursery.start_soon(
            lambda: run_canary(
                SOURCES["canary_tls"],
                self.server.address("tls"),
                self.canaries["canary_tls"],
                self.drains,
                tls=self.client_tls,
            )
        )

        def header(n: int) -> bytes:
            make = proxy_v1 if n % 2 else proxy_v2
            return make((PROXY_CLIENT, 1024 + n % 60000), proxy)

        nursery.start_soon(
            lambda: run_canary(
                TRUSTED_PROXY,
                proxy,
                self.canaries["canary_proxy"],
                self.drains,
                header=header,
                per_connection=5,
            )
        )

    def start_abuse(self, nursery: trio.Nursery, background_only: bool = False) -> None:
        """Every abusive category's loops (``background_only``: the ones safe across a restart)."""
        c = self.clients
        assert c is not None
        loris = SOURCES["slowloris"]
        assert isinstance(loris, list)
        for i in range(self.config.slowloris):
            nursery.start_soon(c.slowloris, loris[i % len(loris)])
        for _ in range(2):
            nursery.start_soon(c.slow_reader, SOURCES["slow_reader"])
            nursery.start_soon(c.half_closer, SOURCES["half_closer"])
            nursery.start_soon(c.resetter, SOURCES["resetter"])
        if background_only:
            return
        for _ in range(2):
            nursery.start_soon(idler, c, SOURCES["idler"])
            nursery.start_soon(c.silent_tls, SOURCES["tls_abuse"])
        nursery.start_soon(c.plain_to_tls, SOURCES["tls_abuse"])
        nursery.start_soon(c.long_line, SOURCES["long_line"])
        nursery.start_soon(c.denied)
        nursery.start_soon(c.proxy_garbage)
        nursery.start_soon(c.proxy_denied)
        nursery.start_soon(c.proxy_untrusted)

    async def phase(self, seconds: float, abuse: str, events: list[Event] | None = None) -> None:
        """Canaries (``abuse``: also "background" or "all" clients) for ``seconds``; the events."""

        async def at(delay: float, action: Callable[[], Awaitable[None]]) -> None:
            await trio.sleep(delay)
            await action()

        async with trio.open_nursery() as nursery:
            self.start_canaries(nursery)
            if abuse != "none":
                self.start_abuse(nursery, background_only=abuse == "background")
            async with trio.open_nursery() as timeline:
                for delay, action in events or []:
                    timeline.start_soon(at, delay, action)
                await trio.sleep(seconds)
            nursery.cancel_scope.cancel()

    # -- faults -------------------------------------------------------------

    async def flood(self, kind: str) -> None:
        """A connect flood window: beyond the per-host limit, or beyond max_connections."""
        c = self.clients
        assert c is not None
        start = time.monotonic()
        if kind == "flood_per_host":
            await flood(c, kind, [str(SOURCES["flood_per_host"])], 60)
            detail = "60 connections from 127.0.0.77 (per-host limit 40)"
        else:
            sources = SOURCES["flood_connections"]
            assert isinstance(sources, list)
            await flood(c, kind, sources, 35)
            detail = f"{35 * len(sources)} connections from {len(sources)} addresses (max 100)"
        self.faults.add(kind, start, time.monotonic(), detail)

    async def fd_exhaustion(self) -> None:
        """Squeeze the server's descriptor limit for 10 % of the run; time the recovery."""
        idle = {p.pid: p.fds for p in self.quiet["Q0 baseline"].processes}
        reading = self.server.read()
        pids = reading.pids if reading and self.config.workers else [self.server.pid]
        # Room for 20 connections beyond the idle server's own descriptors: far
        # fewer than the load holds, so accept() meets EMFILE until clients leave.
        limits = {pid: idle.get(pid, 12) + 20 for pid in pids}
        seconds = max(3.0, 0.1 * self.config.minutes * 60.0)
        before = reading.totals.get("accept_errors", 0) if reading else 0
        start = time.monotonic()
        self.fd_windows.append((start, start + seconds + 60.0))
        end, squeezed = await self.faults.fd_exhaustion(self.server, limits, seconds)
        self.fd_windows[-1] = (start, end)
        probes = await recovery_probe(
            str(SOURCES["probe"]), self.server.address("plain"), self.tallies["probe"]
        )
        self.probes.append((end, probes))
        await trio.sleep(1.0)  # a snapshot written after the restore
        after = self.server.read()
        failed = (after.totals.get("accept_errors", 0) if after else 0) - before
        self.faults.windows[-1]["detail"] += f"; accept_errors +{failed}"
        # Not a timing figure: with the limit below what the load holds, some
        # accept() must fail -- or the fault did not happen.
        self.checks.append(
            check(
                "descriptor exhaustion bit (every prlimit took; accept() failed in the window)",
                squeezed == len(limits) and failed > 0,
                f"limits set on {squeezed} of {len(limits)} process(es); accept_errors +{failed}",
            )
        )

    async def restart(self) -> None:
        """The reload in the middle: SIGHUP to a supervisor, or drain-and-restart."""
        if self.config.workers:
            ok = await self.faults.reload(self.server, self.drains)
            self.checks.append(
                check("reload (SIGHUP) completed", ok, self.faults.windows[-1]["detail"])
            )
        else:
            status = await self.faults.restart(self.server, self.ledger, self.drains)
            self.restart_status = status
            self.checks.append(
                check(
                    "restart: the drained server exited 0",
                    status == 0,
                    self.faults.windows[-1]["detail"],
                )
            )
        await trio.sleep(2.0)

    def flood_events(self, seconds: float, avoid: tuple[float, float] | None) -> list[Event]:
        """Floods every ~max(12 s, T/8) of a phase, away from ``avoid``.

        The kinds alternate over the whole run (not per phase), so even a
        one-minute run, whose phases have room for one or two floods each,
        floods beyond the per-host limit and beyond max_connections.
        """
        every = max(12.0, self.config.minutes * 60.0 / 8.0)
        events: list[Event] = []
        kinds = ["flood_per_host", "flood_connections"]
        at = min(3.0, seconds / 4)
        while at < seconds - 3.0:
            # A flood holds its connections for up to 25 s: none may still be
            # running when the descriptor window begins; one that would falls
            # right after the window (and its recovery probe) instead.
            if avoid is not None and avoid[0] - 25.0 <= at <= avoid[1] + 2.0:
                at = avoid[1] + 2.5
                continue
            kind = kinds[self.floods % 2]
            self.floods += 1
            events.append((at, lambda kind=kind: self.flood(kind)))
            at += every * self.rng.uniform(0.8, 1.2)
        return events

    # -- quiet points -------------------------------------------------------

    async def wait_quiet(self, label: str, timeout: float = 40.0) -> Reading:
        """Every client stopped: wait (bounded) until the server is idle and steady."""
        seen: list[Reading] = []
        deadline = trio.current_time() + timeout
        while trio.current_time() < deadline and len(seen) < 3:
            await trio.sleep(0.25)
            reading = self.server.read()
            if reading is None or (seen and reading.time == seen[-1].time):
                continue
            idle = reading.connections == 0 and not reading.totals.get("lingering", 0)
            if not idle or (seen and _state(reading) != _state(seen[-1])):
                seen.clear()
            if idle:
                seen.append(reading)
        result = seen[-1] if seen else self.server.read()
        assert result is not None, "no stats from the server"
        self.checks.append(
            check(
                f"{label}: server idle within {timeout:.0f} s",
                len(seen) >= 3,
                f"connections {result.connections}, "
                f"lingering {result.totals.get('lingering', 0)}, active "
                f"{result.totals.get('active', 0)}",
            )
        )
        self.quiet[label] = result
        self.ledger.cumulative_at[label] = self.ledger.cumulative(result) or {}
        self.quiet_at[label] = round(time.monotonic() - self.t0, 3)
        return result

    # -- the run ------------------------------------------------------------

    async def run(self) -> None:
        """The whole timeline (the server must not be running yet)."""
        total = self.config.minutes * 60.0
        await trio.to_thread.run_sync(self.server.start)
        self.clients = Clients(
            self.server.address("plain"),
            self.server.address("tls"),
            self.server.address("proxy"),
            self.tallies,
            self.drains,
            handshake_timeout=self.config.flag("--handshake-timeout", 2.0),
            idle_timeout=self.config.flag("--idle-timeout", 3.0),
            rng=random.Random(self.rng.random()),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.sampler)
            warmup = min(30.0, max(3.0, 0.08 * total))
            await self.phase(warmup, "none")
            baseline = await self.wait_quiet("Q0 baseline")

            one = max(5.0, 0.5 * total - (time.monotonic() - self.t0))
            squeeze_at = 0.4 * one
            squeeze = (squeeze_at, squeeze_at + max(3.0, 0.1 * total))
            events = [(squeeze_at, self.fd_exhaustion), *self.flood_events(one, squeeze)]
            await self.phase(one, "all", events)
            q1 = await self.wait_quiet("Q1 before the restart")
            self.checks.extend(leak_checks("Q1", baseline, q1))

            await self.phase(2.0, "background", [(2.0, self.restart)])
            baseline = await self.wait_quiet("Q2 after the restart")

            # Phase 2 warms the new process up, then a quiet point gives the
            # memory baseline (idle against idle at the end), then the rest.
            two = max(10.0, total - (time.monotonic() - self.t0))
            warm = min(60.0, 0.2 * two)
            await self.phase(warm, "all", self.flood_events(warm, None))
            self.rss_baseline = await self.wait_quiet("Q2w memory baseline")
            rest = max(5.0, total - (time.monotonic() - self.t0))
            await self.phase(rest, "all", self.flood_events(rest, None))
            q3 = await self.wait_quiet("Q3 end")
            self.checks.extend(leak_checks("Q3", baseline, q3))
            self.baseline = baseline
            self.sample()
            nursery.cancel_scope.cancel()
