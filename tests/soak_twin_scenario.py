"""The chaos soak's deterministic twin: one seeded scenario on a VirtualNetwork.

``run_scenario(seed, tls)`` runs a few virtual minutes (under a MockClock
with autojump) and returns a :class:`Result`; ``tests/test_soak_twin.py``
checks it.  The server (server.test, 127.0.0.10: plain :7000 and TLS :7443)
runs with ``max_connections``, a per-host limit, ``idle_timeout`` and an
access policy; every client category has a host (an address) of its own,
so each server counter can be matched with the clients that caused it.

Timeline, all drawn from ``random.Random(f"soak-twin/{seed}")``:

* canaries (two plain, one TLS) do request/response from t=0 to ``end``;
* faults one at a time on a canary's link or host -- partition then heal,
  a latency spike, ``reset_connections`` -- and one ``crash`` / ``restart``
  of the server host, after which the server is started again;
* two abuse waves (resetters, half-closers, silent connections, over-long
  lines, a per-host flood, a max_connections flood, a denied host), one
  before the crash and one after the restart; the crash never overlaps a
  wave (checked), so every abuse outcome maps onto one server counter.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

import trionet
from trionet.testing import TraceEvent, VirtualNetwork, wait_until

SERVER_IP, PLAIN_PORT, TLS_PORT = "127.0.0.10", 7000, 7443
CANARIES = (("canary-a", "127.0.0.21", False), ("canary-b", "127.0.0.22", False))
TLS_CANARY = ("canary-t", "127.0.0.23", True)
RESET_IP, HALF_IP, SILENT_IP, LONG_IP = "127.0.0.31", "127.0.0.32", "127.0.0.33", "127.0.0.34"
LIMIT_IP, DENIED_IP, TRICKLE_IP = "127.0.0.35", "127.0.0.66", "127.0.0.36"
#: The slowloris defence: the rate (bytes/s) and grace, and the tricklers per
#: wave, each sending one byte every TRICKLE_EVERY seconds (far below the rate).
RATE, RATE_GRACE, TRICKLERS, TRICKLE_EVERY = 20.0, 2.0, 2, 0.5
FLOOD_IPS = tuple(f"127.0.0.{n}" for n in range(41, 49))
MAX_CONNECTIONS, PER_HOST, IDLE, MAX_LINE = 20, 3, 30.0, 1024
CANARY_PAUSE = 1.0  # between a canary's exchanges
EXCHANGE_TIMEOUT = 20.0  # > the longest partition (12 s) + a spike's round trip (4 s)
CONNECT_TIMEOUT = 20.0  # > the crash's downtime (12 s)
RECOVERY_BOUND = 10.0  # a canary completes an exchange within this after a fault ends
FLOOD_HOLD = 2.0
SAMPLE_EVERY = 0.5
BROKEN = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trionet.RemoteProtocolError,
    trio.TooSlowError,
    OSError,
)


def transform(line: bytes) -> bytes:
    """The server's reply to ``line``: checkable byte for byte by the client."""
    return line[::-1] + b" %d\n" % len(line)


def big(n: int) -> bytes:
    return (b"0123456789abcdef" * (n // 16 + 1))[:n] + b"\n"


@attrs.define
class Fault:
    kind: str  # partition | latency | reset | crash
    target: str  # a canary's name, or "server"
    start: float
    end: float  # heal / latency back / restart; == start for a reset


@attrs.define
class Exchange:
    canary: str
    request: bytes
    conn_since: float  # when the connection carrying it was made
    sent_at: float
    ended_at: float
    outcome: str  # ok | corrupt | broken
    error: str = ""


@attrs.define
class Plan:
    faults: list[Fault]
    waves: list[float]
    end: float
    counts: dict[str, int]  # per wave: how many clients of each category

    @classmethod
    def draw(cls, seed: int) -> Plan:
        rng = random.Random(f"soak-twin/{seed}")
        crash_at = rng.uniform(100, 110)
        crash = Fault("crash", "server", crash_at, crash_at + rng.uniform(5, 12))
        faults: list[Fault] = []
        t = rng.uniform(3, 8)
        names = [c[0] for c in (*CANARIES, TLS_CANARY)]
        while t < 200:
            kind = rng.choice(["partition", "latency", "reset"])
            span = 0.0 if kind == "reset" else rng.uniform(3, 12)
            if crash.start - 20 < t + span and t < crash.end + 15:
                t = crash.end + 15
                continue
            faults.append(Fault(kind, rng.choice(names), t, t + span))
            t += span + rng.uniform(5, 15)
        faults.append(crash)
        faults.sort(key=lambda f: f.start)
        waves = [rng.uniform(0, 20), crash.end + rng.uniform(10, 25)]
        counts = {
            k: rng.randint(2, 3) for k in ("abort_req", "abort_reply", "half", "silent", "long")
        }
        counts |= {"denied": rng.randint(2, 4), "over_limit": rng.randint(1, 3)}
        end = max(waves[-1] + 60, faults[-1].end + 2 * RECOVERY_BOUND)
        return cls(faults, waves, end, counts)


@attrs.define
class Result:
    seed: int
    plan: Plan
    exchanges: list[Exchange] = attrs.Factory(list)
    server_sent: set[bytes] = attrs.Factory(set)  # canary replies whose send_all returned
    refused_connects: list[tuple[str, float]] = attrs.Factory(list)
    counts: dict[str, int] = attrs.Factory(dict)  # what the clients saw, summed over waves
    stats: list[trionet.ServerStats] = attrs.Factory(list)  # each server's (one per epoch)
    violations: list[str] = attrs.Factory(list)
    peak_handlers: int = 0  # handlers running at once, at most
    connections_left: int = -1
    open_sockets: list[str] = attrs.Factory(list)
    tasks_before: int = 0
    tasks_after: int = 0
    trace: list[TraceEvent] = attrs.Factory(list)


def count_tasks() -> int:
    """Every task in the run's tree (system tasks included)."""
    stack, n = [trio.lowlevel.current_root_task()], 0
    while stack:
        task = stack.pop()
        n += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return n


class Scenario:
    """One run of the plan: the server, its clients, the faults and the sampler."""

    def __init__(self, seed: int, net: VirtualNetwork, tls: tuple[Any, Any] | None) -> None:
        self.net, self.tls = net, tls
        self.plan = Plan.draw(seed)
        self.result = Result(seed, self.plan)
        self.server: trionet.Server | None = None
        self.server_done = trio.Event()
        self.server_scope = trio.CancelScope()
        self.waves_active = 0
        self.handlers = 0
        self.done = trio.Event()
        self.origin = trio.current_time()  # plan times are relative to this

    def now(self) -> float:
        return trio.current_time() - self.origin

    async def until(self, t: float) -> None:
        await trio.sleep_until(self.origin + t)

    def bump(self, key: str, n: int = 1) -> None:
        self.result.counts[key] = self.result.counts.get(key, 0) + n

    def note(self, message: str) -> None:
        self.result.violations.append(f"t={self.now():.3f}: {message}")

    # -- the server ------------------------------------------------------

    async def handler(self, conn: trionet.Connection) -> None:
        # max_connections bounds the handlers running at once (stats.active
        # also counts connections queued for a slot).
        self.handlers += 1
        self.result.peak_handlers = max(self.result.peak_handlers, self.handlers)
        if self.handlers > MAX_CONNECTIONS:
            self.note(f"{self.handlers} handlers running > max_connections {MAX_CONNECTIONS}")
        try:
            await self._lines(conn)
        finally:
            self.handlers -= 1

    async def _lines(self, conn: trionet.Connection) -> None:
        while True:
            try:
                line = await conn.receive_until(b"\n", max_size=MAX_LINE)
            except trionet.IncompleteRead as exc:
                if exc.partial:
                    raise
                return  # a clean hang-up between requests
            if line.startswith(b"big "):
                await conn.send_all(big(int(line[4:])))
                continue
            await conn.send_all(transform(line))
            if line.startswith(b"canary "):
                self.result.server_sent.add(line)

    async def serve(self, task_status: trio.TaskStatus[trionet.Server]) -> None:
        binds: list[Any] = [f"tcp://{SERVER_IP}:{PLAIN_PORT}"]
        if self.tls is not None:
            binds.append(trionet.Bind(f"tcp://{SERVER_IP}:{TLS_PORT}", tls=self.tls[0]))
        self.server_scope, self.server_done = trio.CancelScope(), trio.Event()
        try:
            with self.server_scope:
                await trionet.serve(
                    self.handler,
                    *binds,
                    task_status=task_status,
                    max_connections=MAX_CONNECTIONS,
                    max_connections_per_host=PER_HOST,
                    idle_timeout=IDLE,
                    min_receive_rate=RATE,
                    min_receive_grace=RATE_GRACE,
                    access=trionet.AccessPolicy(deny=[f"{DENIED_IP}/32"]),
                    shutdown_grace=5.0,
                )
        finally:
            self.server_done.set()

    async def dial(self, ip: str, *, tls: bool = False, timeout: float = CONNECT_TIMEOUT) -> Any:
        port = TLS_PORT if tls else PLAIN_PORT
        ctx = self.tls[1] if tls and self.tls is not None else None
        return await trionet.connect(
            f"tcp://server.test:{port}",
            local_address=ip,
            timeout=timeout,
            tls=ctx,
            server_hostname="server.test" if ctx else None,
        )

    # -- canaries --------------------------------------------------------

    async def canary(self, name: str, ip: str, tls: bool) -> None:
        conn: Any = None
        since = 0.0
        for seq in range(1, int(self.plan.end / CANARY_PAUSE) + 2):
            if self.now() >= self.plan.end:
                break
            for _attempt in range(100):  # bounded: refusals only while the server restarts
                if conn is not None:
                    break
                try:
                    conn, since = await self.dial(ip, tls=tls), self.now()
                except trionet.ConnectError:
                    self.result.refused_connects.append((name, self.now()))
                    await trio.sleep(0.5)
            if conn is None:
                self.note(f"{name}: could not connect")
                return
            request = b"canary %s %d" % (name.encode(), seq)
            sent_at = self.now()
            try:
                with trio.fail_after(EXCHANGE_TIMEOUT):
                    await conn.send_all(request + b"\n")
                    reply = await conn.receive_until(b"\n", max_size=4 * MAX_LINE)
            except BROKEN as exc:
                outcome, error = "broken", repr(exc)
                conn.abort()
                conn = None
            else:
                ok = reply + b"\n" == transform(request)
                outcome, error = ("ok", "") if ok else ("corrupt", repr(reply))
            self.result.exchanges.append(
                Exchange(name, request, since, sent_at, self.now(), outcome, error)
            )
            await trio.sleep(CANARY_PAUSE)
        if conn is not None:
            await conn.aclose()

    # -- abuse -----------------------------------------------------------

    async def resetters(self) -> None:
        for _ in range(self.plan.counts["abort_req"]):  # mid-request
            conn = await self.dial(RESET_IP)
            await conn.send_all(b"first\n")
            assert await conn.receive_until(b"\n", max_size=MAX_LINE) + b"\n" == transform(b"first")
            await conn.send_all(b"half a requ")
            conn.abort()
            self.bump("resets")
        for _ in range(self.plan.counts["abort_reply"]):  # mid-reply (SO_LINGER 0)
            conn = await self.dial(RESET_IP)
            await conn.send_all(b"big 300000\n")
            got = 0
            while got < 1000:
                got += len(await conn.receive_some(1000))
            conn.abort()
            self.bump("resets")

    async def half_closers(self) -> None:
        for i in range(self.plan.counts["half"]):
            conn = await self.dial(HALF_IP)
            lines = [b"half %d a" % i, b"half %d b" % i]
            await conn.send_all(b"".join(line + b"\n" for line in lines))
            await conn.send_eof()
            received = b""
            for _ in range(100):
                chunk = await conn.receive_some()
                if not chunk:
                    break
                received += chunk
            await conn.aclose()
            if received != b"".join(map(transform, lines)):
                self.note(f"half-closer {i}: got {received!r}")
            self.bump("half")

    async def silent(self) -> None:
        async def one(task_status: trio.TaskStatus[None]) -> None:
            conn = await self.dial(SILENT_IP)
            task_status.started()
            start = trio.current_time()
            with trio.fail_after(IDLE + 15):
                data = await conn.receive_some()
            waited = trio.current_time() - start
            await conn.aclose()
            if data != b"" or waited < IDLE - 0.001:
                self.note(f"silent: got {data!r} after {waited:.3f} s (idle_timeout {IDLE})")
            self.bump("idle")

        async with trio.open_nursery() as nursery:
            for _ in range(self.plan.counts["silent"]):
                await nursery.start(one)  # one after another: a replayable port order

    async def tricklers(self) -> None:
        async def one(task_status: trio.TaskStatus[None]) -> None:
            conn = await self.dial(TRICKLE_IP)
            task_status.started()
            start = trio.current_time()
            try:
                with trio.fail_after(RATE_GRACE + 10):
                    for _ in range(1000):  # one byte at a time, never a whole line
                        await conn.send_all(b"t")
                        await trio.sleep(TRICKLE_EVERY)
            except trio.BrokenResourceError:
                pass  # reset by the server: closed as a slow sender
            lived = trio.current_time() - start
            conn.close()
            if lived < RATE_GRACE:
                self.note(f"trickler closed after {lived:.3f} s, inside the grace")
            self.bump("slow")

        async with trio.open_nursery() as nursery:
            for _ in range(TRICKLERS):
                await nursery.start(one)  # one after another: a replayable port order

    async def long_lines(self) -> None:
        for _ in range(self.plan.counts["long"]):
            conn = await self.dial(LONG_IP)
            await conn.send_all(b"L" * (MAX_LINE + 200) + b"\n")
            await conn.send_eof()
            try:
                for _ in range(100):
                    if not await conn.receive_some():
                        break
            except trio.BrokenResourceError:
                pass
            await conn.aclose()
            self.bump("protocol")

    async def denied(self) -> None:
        for _ in range(self.plan.counts["denied"]):
            conn = await self.dial(DENIED_IP)
            self.bump("denied")
            try:
                await conn.send_all(b"let me in\n")
                reply = await conn.receive_some()
            except trio.BrokenResourceError:
                reply = b""
            await conn.aclose()
            if reply:
                self.note(f"denied host got a reply: {reply!r}")

    async def flood(self, ips: tuple[str, ...], per_ip: int, key: str, wait: bool) -> None:
        """``per_ip`` connections from each of ``ips`` at once, each served one held open.

        With ``wait``, until every one is decided (served or refused): then the
        per-host limit refuses exactly the excess.  Without, ``FLOOD_HOLD``
        seconds only: beyond ``max_connections`` the last ones wait for a slot.
        """
        decided, pending = trio.Event(), [len(ips) * per_ip]

        async def one(ip: str, i: int) -> None:
            conn = await self.dial(ip, timeout=60)
            request = b"flood %s %d" % (ip.encode(), i)
            try:
                await conn.send_all(request + b"\n")
                reply = await conn.receive_until(b"\n", max_size=MAX_LINE) + b"\n"
            except (trio.BrokenResourceError, trionet.IncompleteRead):
                reply = b""
            pending[0] -= 1
            if not pending[0]:
                decided.set()
            if reply == transform(request):
                self.bump(key + "_served")
                with trio.move_on_after(30 if wait else 0):
                    await decided.wait()
                await trio.sleep(FLOOD_HOLD)
            elif reply:
                self.note(f"flood {ip} #{i}: wrong reply {reply!r}")
            else:
                self.bump(key + "_refused")
            await conn.aclose()

        async with trio.open_nursery() as nursery:
            for i in range(per_ip):
                for ip in ips:
                    nursery.start_soon(one, ip, i)

    async def wave(self, at: float) -> None:
        await self.until(at)
        self.waves_active += 1
        jobs: list[Callable[[], Awaitable[None]]] = [
            self.resetters,
            self.half_closers,
            self.silent,
            self.tricklers,
            self.long_lines,
            self.denied,
            lambda: self.flood(
                (LIMIT_IP,), PER_HOST + self.plan.counts["over_limit"], "limit", True
            ),
            lambda: self.flood(FLOOD_IPS, PER_HOST, "max", False),
        ]
        with trio.fail_after(IDLE + 30):
            async with trio.open_nursery() as nursery:
                for job in jobs:
                    nursery.start_soon(job)
        self.waves_active -= 1

    # -- faults, sampling, the whole run ----------------------------------

    async def faults(self, nursery: trio.Nursery) -> None:
        net, server = self.net, "server.test"
        for fault in self.plan.faults:
            await self.until(fault.start)
            host = f"{fault.target}.test"
            if fault.kind == "partition":
                net.partition(host, server)
                await self.until(fault.end)
                net.heal(host, server)
            elif fault.kind == "latency":
                net.set_latency(host, server, 2.0, jitter=0.5)
                await self.until(fault.end)
                net.set_latency(host, server, 0.005, jitter=0.005)
            elif fault.kind == "reset":
                net.reset_connections(host)
            else:
                if self.waves_active:
                    self.note("the crash overlaps an abuse wave: the plan is wrong")
                net.crash(server)
                self.server_scope.cancel()  # the server's "process" dies with its host
                await self.server_done.wait()
                assert self.server is not None
                if self.server.connections:
                    self.note(f"connections left by the crashed server: {self.server.connections}")
                self.result.stats.append(self.server.stats)
                await self.until(fault.end)
                net.restart(server)
                self.server = await nursery.start(self.serve)

    async def sampler(self) -> None:
        for _ in range(int(self.plan.end * 4 / SAMPLE_EVERY)):
            if self.done.is_set():
                return
            if self.server is not None and not self.server.stopped:
                s = self.server.stats
                if s.accepted != s.active + s.closed:
                    self.note(f"accepted != active + closed: {s}")
            await trio.sleep(SAMPLE_EVERY)

    async def run(self) -> Result:
        net, result = self.net, self.result
        result.tasks_before = count_tasks()
        net.add_host("server.test", SERVER_IP)
        for name, ip, _tls in (*CANARIES, TLS_CANARY):
            net.add_host(f"{name}.test", ip)
            net.set_latency(f"{name}.test", "server.test", 0.005, jitter=0.005)
        for n, ip in enumerate(
            (RESET_IP, HALF_IP, SILENT_IP, LONG_IP, LIMIT_IP, DENIED_IP, TRICKLE_IP)
        ):
            net.add_host(f"abuse-{n}.test", ip)
        for n, ip in enumerate(FLOOD_IPS):
            net.add_host(f"flood-{n}.test", ip)
        canaries = CANARIES + ((TLS_CANARY,) if self.tls is not None else ())
        async with trio.open_nursery() as nursery:
            self.server = await nursery.start(self.serve)
            nursery.start_soon(self.sampler)
            async with trio.open_nursery() as work:
                work.start_soon(self.faults, nursery)
                for at in self.plan.waves:
                    work.start_soon(self.wave, at)
                for name, ip, tls in canaries:
                    work.start_soon(self.canary, name, ip, tls)
            server = self.server
            assert server is not None
            try:  # abuse and canaries are done: the server must become idle by itself
                await wait_until(lambda: not server.connections, timeout=IDLE + 30)
                await wait_until(lambda: server.stats.lingering == 0, timeout=30)
            except trio.TooSlowError:
                self.note(f"server not idle at the end: {server.connections}, {server.stats}")
            result.connections_left = len(server.connections)
            self.done.set()
            report = await server.shutdown(5.0)
            if report.cancelled:
                self.note(f"the final drain cancelled handlers: {report}")
            result.stats.append(server.stats)
        result.open_sockets = [repr(s) for s in net.open_sockets()]
        result.tasks_after = count_tasks()
        result.trace = net.trace
        return result


async def run_scenario(seed: int, tls: tuple[ssl.SSLContext, ssl.SSLContext] | None) -> Result:
    """Run one seeded scenario on a fresh VirtualNetwork; ``tls`` = (server, client) contexts."""
    net = VirtualNetwork(seed=seed)
    with net.install():
        return await Scenario(seed, net, tls).run()
