"""Run the trionet benchmark suite.

    .venv/bin/python benchmarks/run.py            # full run, about 20 minutes
    .venv/bin/python benchmarks/run.py --quick    # ~1 min sanity check

Every echo server runs in its own process pinned to one core; the C load
generator (or the Python client for the client-side workload) is pinned to
another.  A ``trionet serve --workers N`` peer (N >= 2) is a supervisor and
N worker processes: the supervisor is pinned to N cores, its workers inherit
them (on 2 cores, the load generator's included; see cli_peer.py).  Peers
are alternated within each round (A..Z, then Z..A in the next round) so slow
drift of the machine hits every peer alike.  The TLS workloads run on the
peers that can serve TLS, with a certificate made by trustme for the run.
The PROXY workloads (a PROXY v2 header on every connection) run on the peers
that can serve PROXY, each measurement right next to the same peer's plain
one, and report the ratio to it.  See benchmarks/README.md and
docs/source/benchmarks.rst.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import cli_peer
import report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BUILD = HERE / "build"
LOGS = BUILD / "logs"
RESULTS = HERE / "results"
DOCS_RST = REPO / "docs" / "source" / "benchmarks.rst"
DOCS_PNG = REPO / "docs" / "source" / "_static" / "benchmarks.png"
C_SOURCES = {"loadgen": HERE / "loadgen.c", "echo_epoll": HERE / "echo_epoll.c"}
#: Libraries each C program links with (Debian: libssl-dev for the load generator).
C_LIBS = {"loadgen": ("-lssl", "-lcrypto"), "echo_epoll": ()}
TLS_DIR = BUILD / "tls"
#: The name the certificate is for, and the SNI every TLS client sends.
TLS_NAME = "localhost"
HOST = "127.0.0.1"  # loopback only, always
#: The listen backlog of every server (servers/_common.py BACKLOG; the CLI's --backlog).
BACKLOG = 1024


# --------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class Peer:
    key: str
    label: str
    argv: tuple[str, ...]  # "{python}" and "{build}" are substituted
    quick: bool
    #: Where this peer imports trionet from, if not the working tree (--trionet-ref).
    trionet_path: str | None = None
    #: Runs the TLS workloads: its server takes ``--tls-cert FILE --tls-key FILE``.
    tls: bool = False
    #: Runs the PROXY workloads: its server takes ``--proxy-protocol``
    #: (``proxy_protocol="required"``, ``trusted_proxies=["127.0.0.0/8"]``).
    proxy: bool = False
    #: The ``trionet serve`` command line rather than a script of servers/:
    #: started with ``--bind tcp://HOST:0 --backlog 1024``, ready at its
    #: ``listening on`` line, stopped by SIGTERM (a drain), see cli_peer.py.
    cli: bool = False
    #: ``--workers N``: a supervisor and N worker processes sharing its
    #: socket (0: one process).  CPU, RSS and connections are the workers'.
    workers: int = 0


#: ``python -m trionet serve``: trionet's command line, as the peers with ``cli=True`` run it.
TRIONET_CLI = ("{python}", "-m", "trionet", "serve")

# ``tls=True``: the peers of the TLS workloads.  trionet's variants could
# serve TLS too (same script); only the default one runs them, to keep the
# full run short.  trio-floor, uvloop-protocol and c-epoll have no TLS.
# ``proxy=True``: the peers of the PROXY workloads -- trionet only (the other
# libraries have no PROXY protocol support).
PEERS: tuple[Peer, ...] = (
    Peer(
        "trionet",
        "trionet",
        ("{python}", "servers/trionet_server.py"),
        True,
        tls=True,
        proxy=True,
    ),
    Peer(
        "trionet-all-on",
        "trionet (all on)",
        ("{python}", "servers/trionet_server.py", "--all-on"),
        True,
    ),
    # The same minus the idle timeout, whose per-connection cancel scope is
    # the one feature with a measurable cost: splits the all-on gap.
    Peer(
        "trionet-all-on-no-idle",
        "trionet (all on but idle timeout)",
        ("{python}", "servers/trionet_server.py", "--all-on-except", "idle"),
        False,
    ),
    # The plain ``trionet`` peer is idiomatic (``async for``: adaptive read
    # size, up to 256 KiB on bulk streams); this one uses the fixed 64 KiB
    # ``receive_some`` / ``send_all`` loop of every other peer, isolating the
    # buffer-size effect.
    Peer(
        "trionet-64k",
        "trionet (64 KiB reads)",
        ("{python}", "servers/trionet_server.py", "--fixed-reads"),
        True,
    ),
    # Opt-in cooperative budget: receives that complete at once skip their
    # schedule point (a send always yields): one scheduler pass per echoed
    # message instead of two, at the price of Trio's strict rule.
    Peer(
        "trionet-budget",
        "trionet (schedule_budget=2)",
        ("{python}", "servers/trionet_server.py", "--schedule-budget", "2"),
        False,
    ),
    # With TLS: trio.SSLStream over serve_tcp, the TLS baseline.
    Peer("trio", "trio.serve_tcp", ("{python}", "servers/trio_server.py"), True, tls=True),
    # The least an echo server on Trio can do while keeping every operation
    # a checkpoint: the ceiling for trionet's strict default.
    Peer(
        "trio-floor",
        "Trio-strict floor",
        ("{python}", "servers/trio_floor_server.py"),
        False,
    ),
    Peer(
        "anyio-trio",
        "anyio on Trio",
        ("{python}", "servers/anyio_server.py", "--backend", "trio"),
        False,
        tls=True,
    ),
    Peer(
        "anyio-asyncio",
        "anyio on asyncio",
        ("{python}", "servers/anyio_server.py", "--backend", "asyncio"),
        False,
        tls=True,
    ),
    Peer(
        "asyncio",
        "asyncio streams",
        ("{python}", "servers/asyncio_streams_server.py"),
        True,
        tls=True,
    ),
    Peer(
        "uvloop",
        "uvloop streams",
        ("{python}", "servers/asyncio_streams_server.py", "--uvloop"),
        False,
        tls=True,
    ),
    Peer(
        "uvloop-protocol",
        "uvloop Protocol",
        ("{python}", "servers/asyncio_protocol_server.py"),
        False,
    ),
    Peer("c-epoll", "C epoll", ("{build}/echo_epoll",), True),
    # The command line: one process (the reference for the supervisor's
    # peers), and a supervisor with 1 and 2 workers that accept on the
    # socket it opened (no hop through the supervisor).
    Peer("trionet-cli", "trionet serve", (*TRIONET_CLI, "echo"), False, cli=True),
    Peer(
        "trionet-w1",
        "trionet serve --workers 1",
        (*TRIONET_CLI, "echo", "--workers", "1"),
        False,
        cli=True,
        workers=1,
    ),
    Peer(
        "trionet-w2",
        "trionet serve --workers 2",
        (*TRIONET_CLI, "echo", "--workers", "2"),
        False,
        cli=True,
        workers=2,
    ),
)
BASELINE = "trio"

#: The Python clients of the client-side workload (server: C epoll).
CLIENTS: tuple[Peer, ...] = (
    Peer(
        "client-trionet",
        "trionet.connect",
        ("{python}", "clients/pingpong_client.py", "--impl", "trionet"),
        True,
    ),
    Peer(
        "client-trio",
        "trio.open_tcp_stream",
        ("{python}", "clients/pingpong_client.py", "--impl", "trio"),
        True,
    ),
)
CLIENT_BASELINE = "client-trio"


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    short: str
    unit: str
    metric: str  # key of the load generator's JSON holding the figure
    kind: str  # "loadgen" | "rss" | "client"
    args: tuple[str, ...] = ()
    higher_is_better: bool = True
    latency: bool = True
    quick: bool = False
    #: Over TLS (load generator ``--tls``), on the peers with ``tls=True`` only.
    tls: bool = False
    #: TLS: the load generator verifies the certificate against the run's CA.
    #: Off where handshakes are timed: under OpenSSL 3.0 the check is one more
    #: ECDSA verify per handshake on the load generator's core.
    tls_verify: bool = True
    #: A PROXY v2 header on every connection (load generator ``--proxy-v2``),
    #: on the peers with ``proxy=True`` only, each started with ``--proxy-protocol``.
    proxy: bool = False
    #: The same workload without PROXY: measured right next to this one, peer
    #: by peer, and the base of this one's ratios (same peer, same round).
    plain: str | None = None


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "pingpong-64x1",
        "Ping-pong, 64 B, 1 connection",
        "ping-pong 64 B \u00d71",
        "msg/s",
        "rate",
        "loadgen",
        ("pingpong", "--conns", "1", "--size", "64"),
    ),
    Workload(
        "pingpong-64x100",
        "Ping-pong, 64 B, 100 connections",
        "ping-pong 64 B \u00d7100",
        "msg/s",
        "rate",
        "loadgen",
        ("pingpong", "--conns", "100", "--size", "64"),
        quick=True,
    ),
    Workload(
        "pingpong-4kx100",
        "Ping-pong, 4 KiB, 100 connections",
        "ping-pong 4 KiB \u00d7100",
        "msg/s",
        "rate",
        "loadgen",
        ("pingpong", "--conns", "100", "--size", "4096"),
    ),
    Workload(
        "bulk-64k-x10",
        "Bulk stream, 64 KiB chunks, 10 connections (echoed MB/s)",
        "bulk 64 KiB \u00d710",
        "MB/s",
        "mbps",
        "loadgen",
        ("bulk", "--conns", "10", "--window", str(256 * 1024)),
        latency=False,
        quick=True,
    ),
    Workload(
        "connrate",
        "Connection rate: connect, 16 B echo, close (32 in parallel)",
        "connect+echo+close",
        "conn/s",
        "rate",
        "loadgen",
        ("connrate", "--concurrency", "32", "--src-ips", "32"),
        quick=True,
    ),
    Workload(
        "rss-idle",
        "Server RSS per idle connection, 5,000 held",
        "RSS per idle conn",
        "KiB/conn",
        "kib_per_conn",
        "rss",
        higher_is_better=False,
        latency=False,
        quick=True,
    ),
    # PROXY v2: the same workloads, every connection opening with the 28-byte
    # header of a load balancer (a new client address per connection).
    Workload(
        "proxy-pingpong-64x100",
        "PROXY v2 ping-pong, 64 B, 100 connections (one header per connection)",
        "PROXY v2 ping-pong 64 B \u00d7100",
        "msg/s",
        "rate",
        "loadgen",
        ("pingpong", "--conns", "100", "--size", "64"),
        proxy=True,
        plain="pingpong-64x100",
    ),
    Workload(
        "proxy-connrate",
        "PROXY v2 connection rate: connect, PROXY v2 header, 16 B echo, close",
        "PROXY v2 connect+echo+close",
        "conn/s",
        "rate",
        "loadgen",
        ("connrate", "--concurrency", "32", "--src-ips", "32"),
        quick=True,
        proxy=True,
        plain="connrate",
    ),
    Workload(
        "tls-pingpong-64x100",
        "TLS ping-pong, 64 B, 100 connections",
        "TLS ping-pong 64 B \u00d7100",
        "msg/s",
        "rate",
        "loadgen",
        ("pingpong", "--conns", "100", "--size", "64"),
        quick=True,
        tls=True,
    ),
    Workload(
        "tls-connrate",
        "TLS connection rate: connect, handshake, 16 B echo, close",
        "TLS connect+handshake+echo+close",
        "conn/s",
        "rate",
        "loadgen",
        ("connrate", "--concurrency", "32", "--src-ips", "32"),
        tls=True,
        tls_verify=False,
    ),
    Workload(
        "tls-rss-idle",
        "Server RSS per idle TLS connection, 5,000 held",
        "RSS per idle TLS conn",
        "KiB/conn",
        "kib_per_conn",
        "rss",
        higher_is_better=False,
        latency=False,
        tls=True,
    ),
    Workload(
        "client-pingpong",
        "Client-side ping-pong, 64 B, 1 connection, against the C epoll server",
        "client ping-pong 64 B",
        "msg/s",
        "rate",
        "client",
        quick=True,
    ),
)


# ----------------------------------------------------------------- helpers


class PeerFailed(Exception):
    """The server under test did not start (reported as *missing*)."""


class MeasurementFailed(Exception):
    """One measurement failed (reported as an error for that round)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def child_env(trionet_path: str | None = None) -> dict[str, str]:
    """Environment of every child: the working tree's trionet comes first.

    ``trionet_path``: a directory holding another revision's ``trionet``
    package (see :func:`checkout_ref`), put before the working tree.
    """
    env = dict(os.environ)
    paths = [str(REPO)] if trionet_path is None else [trionet_path, str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    env.setdefault("PYTHONHASHSEED", "0")  # one dict layout for every run: less run-to-run noise
    return env


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if the runner dies (even by SIGKILL)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))


def spawn(
    cmd: Sequence[str], trionet_path: str | None = None, **kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, tied to the runner's life."""
    return subprocess.Popen(
        list(cmd),
        cwd=HERE,
        env=child_env(trionet_path),
        start_new_session=True,
        preexec_fn=_die_with_parent,
        **kwargs,
    )


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def build_c(cc: str) -> dict[str, Path]:
    """Compile the C programs into build/ (only when the source is newer)."""
    BUILD.mkdir(exist_ok=True)
    binaries: dict[str, Path] = {}
    for name, source in C_SOURCES.items():
        binary = BUILD / name
        if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
            tmp = binary.with_name(f".{name}.{os.getpid()}.tmp")
            cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(tmp), str(source), *C_LIBS[name]]
            log(f"building {binary.relative_to(REPO)}: {' '.join(cmd)}")
            try:
                subprocess.run(cmd, check=True, timeout=120)
                os.replace(tmp, binary)  # atomic: a running copy is not disturbed
            except subprocess.CalledProcessError:
                if "-lssl" in C_LIBS[name]:
                    log("(the load generator needs OpenSSL's headers: apt-get install libssl-dev)")
                raise
            finally:
                tmp.unlink(missing_ok=True)
        binaries[name] = binary
    return binaries


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # the server's certificate chain (PEM)
    key: Path  # its private key (PEM)
    ca: Path  # the CA that issued it, for the clients (PEM)


def make_certificates() -> TlsFiles:
    """A fresh CA and a server certificate for localhost/127.0.0.1, in build/tls/.

    trustme's default key type, ECDSA P-256: the handshake's own cost stays
    small next to the Python servers' (an RSA-2048 signature alone would
    cost about a millisecond of the server's core).
    """
    import trustme

    TLS_DIR.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(TLS_NAME, HOST)
    files = TlsFiles(TLS_DIR / "server.pem", TLS_DIR / "server.key", TLS_DIR / "ca.pem")
    files.cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    files.key.touch(mode=0o600)
    files.key.chmod(0o600)
    leaf.private_key_pem.write_to_path(str(files.key))
    ca.cert_pem.write_to_path(str(files.ca))
    return files


@dataclass(frozen=True)
class Pinning:
    server: tuple[str, ...]
    loadgen: tuple[str, ...]
    description: str
    #: The CPUs a server of several worker processes gets, in order of
    #: preference: the server's, the free ones, the load generator's last.
    cpus: tuple[int, ...] = ()

    def server_for(self, peer: Peer) -> tuple[str, ...]:
        """taskset prefix of ``peer``'s server: N CPUs for N workers.

        The supervisor is pinned, and its workers inherit its affinity
        (taskset sets it before exec; children keep it).  With 2 workers on
        a 2-CPU machine that is both CPUs, the load generator's included.
        """
        if not self.server or peer.workers < 2:
            return self.server
        return ("taskset", "-c", ",".join(map(str, self.cpus[: peer.workers])))

    def describe(self, peers: Sequence[Peer]) -> str:
        """The description, plus what the multi-worker peers get."""
        text = self.description
        for peer in peers:
            if self.server and peer.workers >= 2:
                cpus = self.cpus[: peer.workers]
                shared = " (the load generator's included)" if self.cpus[-1] in cpus else ""
                text += (
                    f"; {peer.key}: supervisor pinned to CPUs {','.join(map(str, cpus))}"
                    f"{shared}, inherited by its {peer.workers} workers"
                )
        return text


def choose_pinning(enabled: bool) -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
        why = "disabled" if not enabled else "needs taskset and two CPUs"
        return Pinning((), (), f"no CPU pinning ({why})")
    srv, lg = cpus[0], cpus[1]
    return Pinning(
        ("taskset", "-c", str(srv)),
        ("taskset", "-c", str(lg)),
        f"server pinned to CPU {srv}, load generator to CPU {lg} (taskset)",
        (srv, *(c for c in cpus if c not in (srv, lg)), lg),
    )


def read_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise MeasurementFailed(f"no VmRSS for pid {pid}")


def server_rss_kib(pids: Sequence[int]) -> int:
    """VmRSS summed over a server's processes (supervisor and workers)."""
    try:
        return sum(read_rss_kib(pid) for pid in pids)
    except OSError as exc:
        raise MeasurementFailed(f"cannot read the server's RSS: {exc}") from exc


def read_line(stream: IO[bytes], timeout: float) -> bytes | None:
    """One line from a pipe, or None on timeout/EOF (bounded in time)."""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
    return data


def kill_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the child's process group, then SIGKILL; always reaps."""
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers in the group
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


# ------------------------------------------------------------ the servers


def error_line(lines: Sequence[str]) -> str:
    """The exception a server died of, from its log's last lines.

    Skips the border lines of an exception group's box, and prefers the last
    ``SomeError: message`` line (the innermost exception) to a trailing line.
    """
    text = [line.strip().lstrip("|").strip() for line in lines]
    text = [t for t in text if t.strip("+-| ")]
    for t in reversed(text):
        if re.match(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", t):
            return t
    return text[-1] if text else ""


class Server:
    """One echo server process, in its own process group."""

    def __init__(
        self, peer: Peer, pinning: Pinning, tls: TlsFiles | None = None, proxy: bool = False
    ) -> None:
        self.peer = peer
        self.pinning = pinning
        self.tls = tls  # serve TLS with these files
        self.proxy = proxy  # every connection starts with a PROXY header
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path = LOGS / f"{peer.key}.log"
        #: ``--workers N``: the pids of the workers (the supervisor is ``pid``).
        self.workers: list[int] = []
        #: A CLI peer's exit after its drain (see cli_peer.drain).
        self.exit: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        """Every process of the server: the supervisor (or the only one), then the workers."""
        return [self.pid, *self.workers]

    def start(self, timeout: float = 20.0) -> None:
        argv = [
            a.replace("{python}", sys.executable).replace("{build}", str(BUILD))
            for a in self.peer.argv
        ]
        pin = self.pinning.server_for(self.peer)
        if self.peer.cli:
            tls = None if self.tls is None else (str(self.tls.cert), str(self.tls.key))
            cmd = [*pin, *cli_peer.command(argv, HOST, BACKLOG, tls, self.proxy)]
        else:
            cmd = [*pin, *argv, "--host", HOST, "--port", "0"]
            if self.tls is not None:
                cmd += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
            if self.proxy:
                cmd.append("--proxy-protocol")
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n=== {dt.datetime.now().isoformat()} {' '.join(cmd)}\n".encode())
            logf.flush()
            self.proc = spawn(
                cmd,
                self.peer.trionet_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=logf,
            )
        assert self.proc.stdout is not None
        if self.peer.cli:
            try:
                self.port, self.workers = cli_peer.wait_ready(
                    self.proc.stdout, self.peer.workers, timeout
                )
            except cli_peer.NotReady as exc:
                raise PeerFailed(self._why(None, str(exc))) from None
        else:
            line = read_line(self.proc.stdout, timeout)
            if line is None or not line.startswith(b"LISTENING "):
                raise PeerFailed(self._why(line))
            self.port = int(line.split()[1])
        self._probe(timeout)

    def _probe(self, timeout: float) -> None:
        """Bounded connect loop: the server really accepts connections.

        With TLS, the probe also completes a verified handshake (the run's CA,
        SNI and name ``localhost``) and one echo: the server serves the
        certificate it was given.  With PROXY, it sends a v2 header first and
        checks the echo: the server consumed the header (it requires one).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1.0) as sock:
                    if self.proxy:
                        sock.sendall(proxy_v2_header(self.port))
                    if self.tls is not None:
                        self._tls_echo(sock)
                    elif self.proxy:
                        self._plain_echo(sock)
                    return
            except ssl.SSLError as exc:  # a TLS failure does not go away by retrying
                raise PeerFailed(f"TLS probe failed: {exc}") from exc
            except OSError as exc:
                if time.monotonic() > deadline or (self.proc and self.proc.poll() is not None):
                    raise PeerFailed(f"connect probe failed: {exc}") from exc
                time.sleep(0.05)

    def _plain_echo(self, sock: socket.socket) -> None:
        sock.sendall(b"probe")
        echo = b""
        while len(echo) < 5 and (chunk := sock.recv(5 - len(echo))):
            echo += chunk
        if echo != b"probe":
            raise PeerFailed(f"PROXY probe: echo {echo!r} instead of b'probe'")

    def _tls_echo(self, sock: socket.socket) -> None:
        assert self.tls is not None
        ctx = ssl.create_default_context(cafile=str(self.tls.ca))
        with ctx.wrap_socket(sock, server_hostname=TLS_NAME) as tls:
            tls.sendall(b"probe")
            echo = b""
            while len(echo) < 5 and (chunk := tls.recv(5 - len(echo))):
                echo += chunk
            if echo != b"probe":
                raise PeerFailed(f"TLS probe: echo {echo!r} instead of b'probe'")
            with contextlib.suppress(OSError):
                tls.unwrap()  # close_notify both ways (bounded by the socket timeout)

    def _why(self, line: bytes | None, said: str | None = None) -> str:
        assert self.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=0.5)
        rc = self.proc.poll()
        tail = ""
        with contextlib.suppress(OSError):
            tail = error_line(self.log_path.read_text(errors="replace").splitlines())
        if rc is None:
            return said or f"no LISTENING line (got {line!r})"
        return f"exited with code {rc}: {tail}" if tail else f"exited with code {rc}"

    def alive(self) -> bool:
        """Running, and every worker it said ready still is (none crashed)."""
        return (
            self.proc is not None
            and self.proc.poll() is None
            and all(cli_peer.alive(pid) for pid in self.workers)
        )

    def stop(self) -> None:
        if self.proc is not None:
            if self.peer.cli:  # SIGTERM: a drain, then the summed stats
                self.exit = cli_peer.drain(self.proc)
            kill_group(self.proc)  # anything left in the group


def proxy_v2_header(port: int, client: int = 1) -> bytes:
    """The load generator's PROXY v2 header: client 192.0.2.``client`` -> HOST:``port``."""
    return struct.pack(
        "!12sBBH4s4sHH",
        b"\r\n\r\n\x00\r\nQUIT\n",
        0x21,  # version 2, PROXY
        0x11,  # AF_INET, STREAM
        12,
        socket.inet_aton(f"192.0.2.{client}"),
        socket.inet_aton(HOST),
        1024,
        port,
    )


@contextlib.contextmanager
def running(
    peer: Peer, pinning: Pinning, tls: TlsFiles | None = None, proxy: bool = False
) -> Iterator[Server]:
    server = Server(peer, pinning, tls, proxy)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# --------------------------------------------------------- measurements


@dataclass
class Settings:
    warmup: float
    duration: float
    rounds: int
    rss_conns: int
    pinning: Pinning
    quick: bool
    retries: int = 1
    #: Seconds to wait, before each measurement, for the machine to be idle (0: do not).
    quiet_wait: float = 0.0
    profile_dir: Path | None = None
    #: Certificates of this run (made when a TLS workload is selected).
    tls: TlsFiles | None = None
    tls_rss_conns: int = 5000


def run_json(cmd: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run a measuring child; return the JSON object on its last stdout line."""
    proc = spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise MeasurementFailed(f"timed out after {timeout:.0f} s") from exc
    finally:
        kill_group(proc)
    lines = out.decode(errors="replace").strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as exc:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise MeasurementFailed(f"exit code {proc.returncode}: {tail[0]}") from exc
    if "error" in result:
        raise MeasurementFailed(str(result["error"]))
    if proc.returncode != 0:
        raise MeasurementFailed(f"exit code {proc.returncode}")
    return result


def tls_loadgen_args(wl: Workload, s: Settings) -> list[str]:
    """``--tls [--tls-ca CA]`` for a TLS workload, nothing otherwise."""
    if not wl.tls:
        return []
    assert s.tls is not None
    return ["--tls", *(("--tls-ca", str(s.tls.ca)) if wl.tls_verify else ())]


def proxy_loadgen_args(wl: Workload) -> list[str]:
    """``--proxy-v2`` for a PROXY workload, nothing otherwise."""
    return ["--proxy-v2"] if wl.proxy else []


def measure_loadgen(wl: Workload, server: Server, s: Settings) -> dict[str, Any]:
    cmd = [
        *s.pinning.loadgen,
        str(BUILD / "loadgen"),
        *wl.args,
        "--host",
        HOST,
        "--port",
        str(server.port),
        "--warmup",
        str(s.warmup),
        "--duration",
        str(s.duration),
        "--server-pid",
        ",".join(map(str, server.pids)),
        *tls_loadgen_args(wl, s),
        *proxy_loadgen_args(wl),
    ]
    if not server.workers:
        result = run_json(cmd, timeout=s.warmup + s.duration + 60)
    else:
        # How the connections spread over the workers: each one's open
        # sockets halfway through the measurement, less those it had before.
        before = [cli_peer.socket_count(pid) for pid in server.workers]
        sample: list[int] = []
        timer = threading.Timer(
            s.warmup + s.duration / 2,
            lambda: sample.extend(cli_peer.socket_count(pid) for pid in server.workers),
        )
        timer.start()
        try:
            result = run_json(cmd, timeout=s.warmup + s.duration + 60)
        finally:
            timer.cancel()
            timer.join()
        if len(sample) == len(before):
            result["worker_conns"] = [n - b for n, b in zip(sample, before, strict=True)]
    if not server.alive():
        raise MeasurementFailed("server (or one of its workers) died during the measurement")
    return result


def measure_rss(wl: Workload, server: Server, s: Settings) -> dict[str, Any]:
    conns = s.tls_rss_conns if wl.tls else s.rss_conns
    loadgen = [*s.pinning.loadgen, str(BUILD / "loadgen"), "hold", "--host", HOST]
    port = ["--port", str(server.port), "--concurrency", "100", *tls_loadgen_args(wl, s)]
    port += proxy_loadgen_args(wl)
    # Warm-up: open and close a few hundred connections so that one-off
    # allocations (code paths, caches, first arena growth) are in the baseline.
    run_json([*loadgen, *port, "--conns", "200", "--duration", "20", "--hold-timeout", "0"], 40)
    time.sleep(0.3)
    before = server_rss_kib(server.pids)
    proc = spawn(
        [*loadgen, *port, "--conns", str(conns), "--duration", "30", "--hold-timeout", "60"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = read_line(proc.stdout, 45)
        if line is None:
            raise MeasurementFailed("load generator did not report held connections")
        held: dict[str, Any] = json.loads(line)
        if held.get("held", 0) < conns:
            raise MeasurementFailed(f"held {held.get('held', 0)} of {conns} connections ({held})")
        # Let the server finish setting up the last connections: wait until
        # RSS is stable (bounded).
        time.sleep(0.3)
        after = server_rss_kib(server.pids)
        for _ in range(20):
            time.sleep(0.1)
            now = server_rss_kib(server.pids)
            if abs(now - after) <= max(64, after // 200):
                after = max(after, now)
                break
            after = now
        proc.stdin.write(b"done\n")
        proc.stdin.flush()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)  # it closes its connections and exits
    finally:
        kill_group(proc)
    if not server.alive():
        raise MeasurementFailed("server died while holding connections")
    result = {
        "kib_per_conn": (after - before) / conns,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "conns": conns,
        "lg_cpu": held.get("lg_cpu"),
        "connect_seconds": held.get("seconds"),
        "errors": held.get("errors", 0),
    }
    if wl.tls:
        result["tls"] = held.get("tls")
    return result


def measure_client(client: Peer, server: Server, s: Settings) -> dict[str, Any]:
    argv = [a.replace("{python}", sys.executable) for a in client.argv]
    cmd = [
        *s.pinning.loadgen,
        *argv,
        "--port",
        str(server.port),
        "--warmup",
        str(s.warmup),
        "--duration",
        str(s.duration),
        "--server-pid",
        str(server.pid),
    ]
    return run_json(cmd, timeout=s.warmup + s.duration + 60)


def start_profiler(
    server: Server, wl: Workload, rnd: int, s: Settings
) -> subprocess.Popen[bytes] | None:
    """py-spy flame graph of a Python server for the warm-up + measurement."""
    if s.profile_dir is None or wl.kind != "loadgen" or not is_python(server.peer):
        return None
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        log("    (py-spy not found next to the interpreter: not profiling)")
        return None
    s.profile_dir.mkdir(parents=True, exist_ok=True)
    out = s.profile_dir / f"{wl.key}--{server.peer.key}--r{rnd + 1}.svg"
    cmd = [str(py_spy), "record", "--pid", str(server.pid), "--rate", "250", "--nonblocking"]
    if server.workers:
        cmd.append("--subprocesses")  # the workers do the serving
    cmd += ["--duration", str(int(s.warmup + s.duration + 1.5)), "--format", "flamegraph"]
    cmd += ["-o", str(out)]
    with open(LOGS / "py-spy.log", "ab") as logf:
        return spawn(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)


def finish_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    try:
        proc.wait(timeout=30)  # it stops by itself after --duration
    except subprocess.TimeoutExpired:
        kill_group(proc)


@dataclass
class Run:
    settings: Settings
    measurements: list[dict[str, Any]] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)  # peer key -> reason


def clean(result: dict[str, Any]) -> dict[str, Any]:
    """Negative percentiles/CPU from the C side mean "not available"."""
    return {
        k: (None if isinstance(v, float) and v < 0 and k.endswith(("_us", "_cpu")) else v)
        for k, v in result.items()
    }


def measure_once(run: Run, wl: Workload, peer: Peer, server_peer: Peer, rnd: int) -> dict[str, Any]:
    """One measurement on a fresh server; raises PeerFailed / MeasurementFailed."""
    tls = run.settings.tls if wl.tls else None
    with running(server_peer, run.settings.pinning, tls, wl.proxy) as server:
        profiler = start_profiler(server, wl, rnd, run.settings)
        try:
            if wl.kind == "loadgen":
                result = measure_loadgen(wl, server, run.settings)
            elif wl.kind == "rss":
                result = measure_rss(wl, server, run.settings)
            else:
                result = measure_client(peer, server, run.settings)
        finally:
            finish_profiler(profiler)
    if server.exit is not None:
        result["server_exit"] = server.exit
        crashed = server.exit.get("workers", {}).get("crashed", 0)
        code = server.exit["returncode"]
        if code != 0 or crashed:
            raise MeasurementFailed(f"drained: exit code {code}, {crashed} crashed worker(s)")
    return clean(result)


def describe(wl: Workload, result: dict[str, Any]) -> str:
    text = f"{report.fmt_value(result[wl.metric], wl.unit):>12} {wl.unit}"
    steal = result.get("steal_cpu")
    for name, value in (
        ("lg", result.get("lg_cpu")),
        ("srv", result.get("srv_cpu")),
        ("other", report.other_cpu(result)),
        ("steal", steal if steal is not None and steal >= 0.05 else None),
    ):
        text += f"  {name} {value:.0%}" if value is not None else ""
    return text


def disturbance(result: dict[str, Any]) -> float:
    """CPU the measurement did not get: other processes' and the hypervisor's (steal), in cores."""
    return (report.other_cpu(result) or 0.0) + (result.get("steal_cpu") or 0.0)


def machine_busy(interval: float = 1.0) -> float:
    """Cores busy (user+nice+system+irq+softirq) or stolen over ``interval`` (/proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        return sum(fields[i] for i in (0, 1, 2, 5, 6, 7)), time.monotonic_ns()

    busy0, t0 = sample()
    time.sleep(interval)
    busy1, t1 = sample()
    return (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / ((t1 - t0) / 1e9)


def wait_for_quiet(limit: float) -> float:
    """Wait (at most ``limit`` s) until the machine is idle for 2 s running; the wait in s.

    Nothing of the run is running between two measurements, so what is busy
    is the rest of the machine (or the hypervisor, as steal).
    """
    start = time.monotonic()
    quiet = 0
    while quiet < 2 and time.monotonic() - start < limit:
        quiet = quiet + 1 if machine_busy() < report.OTHER_BUSY else 0
    return time.monotonic() - start


def one(run: Run, wl: Workload, peer: Peer, rnd: int, c_epoll: Peer) -> None:
    """Measure one peer once for this round; retry if the machine was busy."""
    record: dict[str, Any] = {"workload": wl.key, "peer": peer.key, "round": rnd}
    server_peer = c_epoll if wl.kind == "client" else peer
    # A peer that cannot serve TLS or PROXY (yet) is missing from those workloads only.
    missing_key = report.missing_key(server_peer.key, wl.tls, wl.proxy)
    name = f"{peer.label} + PROXY v2" if wl.proxy else peer.label
    best: dict[str, Any] | None = None
    attempts = 1 + run.settings.retries
    for attempt in range(attempts):
        if missing_key in run.missing:
            return
        if run.settings.quiet_wait > 0:
            waited = wait_for_quiet(run.settings.quiet_wait)
            if waited >= 4:  # 2 s is the check itself
                log(f"    (waited {waited:.0f} s for a quiet machine)")
        t0 = time.monotonic()
        try:
            result = measure_once(run, wl, peer, server_peer, rnd)
        except PeerFailed as exc:
            run.missing[missing_key] = str(exc)
            log(f"    {name:<22} MISSING: {exc}")
            return
        except MeasurementFailed as exc:
            log(f"    {name:<22} FAILED: {exc}")
            if attempt + 1 < attempts:
                continue
            if best is None:
                record.update(ok=False, error=str(exc))
                run.measurements.append(record)
                return
            break
        busy = disturbance(result) >= report.OTHER_BUSY
        log(
            f"    {name:<22} {describe(wl, result)}  ({time.monotonic() - t0:.1f} s)"
            + ("  busy machine: measuring again" if busy and attempt + 1 < attempts else "")
        )
        if best is None or disturbance(result) < disturbance(best):
            best = result
        if not busy:
            break
    assert best is not None
    record.update(ok=True, value=best[wl.metric], result=best, attempts=attempt + 1)
    run.measurements.append(record)


def execute(run: Run, peers: Sequence[Peer], workloads: Sequence[Workload]) -> None:
    c_epoll = next(p for p in PEERS if p.key == "c-epoll")
    selected = {w.key for w in workloads}
    # A PROXY workload whose plain workload runs too is measured right next
    # to it, peer by peer: its ratio to plain is then free of the drift
    # between two workloads of a round.
    variants = {w.key: [v for v in workloads if v.plain == w.key] for w in workloads}
    for rnd in range(run.settings.rounds):
        for wl in workloads:
            if wl.plain in selected:
                continue  # measured with its plain workload
            paired = variants[wl.key]
            log(
                f"[round {rnd + 1}/{run.settings.rounds}] {wl.title}"
                + "".join(f"\n    and, next to each peer serving PROXY: {v.title}" for v in paired)
            )
            candidates = CLIENTS if wl.kind == "client" else peers
            if wl.tls:
                candidates = [p for p in candidates if p.tls]
                if not candidates:
                    log("    (no selected peer serves TLS)")
            if wl.proxy or paired:
                if not any(p.proxy for p in candidates):
                    log("    (no selected peer serves PROXY)")
                if wl.proxy:
                    candidates = [p for p in candidates if p.proxy]
            # A..Z in even rounds, Z..A in odd ones: linear drift cancels out.
            order = list(candidates) if rnd % 2 == 0 else list(reversed(candidates))
            for peer in order:
                # Plain then PROXY in even rounds, PROXY then plain in odd ones.
                steps = [wl, *(v for v in paired if peer.proxy)]
                for step in steps if rnd % 2 == 0 else steps[::-1]:
                    one(run, step, peer, rnd, c_epoll)


# -------------------------------------------------------------- metadata


def versions() -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in ('trio', 'anyio', 'uvloop', 'attrs'):\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = 'not installed'\n"
        "try:\n"
        "    import trionet\n"
        "    version = getattr(trionet, '__version__', '?')\n"
        "    out['trionet'] = version + ' (' + trionet.__file__ + ')'\n"
        "except Exception as exc:\n"
        "    out['trionet'] = 'not importable: ' + repr(exc)\n"
        "print(json.dumps(out))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        result: dict[str, str] = json.loads(out)
        # "0.1.0 (/path/to/checkout/trionet/__init__.py)" -> "0.1.0 (working tree)"
        here = f" ({REPO / 'trionet' / '__init__.py'})"
        result["trionet"] = result.get("trionet", "?").replace(here, " (working tree)")
        return result
    except (subprocess.SubprocessError, json.JSONDecodeError) as exc:
        return {"error": repr(exc)}


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            # The measured code and the benchmark itself; not its own output.
            [
                *("git", "-C", str(REPO), "status", "--porcelain", "--"),
                *("trionet", "benchmarks", ":(exclude)benchmarks/results"),
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev or "no commit") + (" + uncommitted changes" if dirty else "")


def checkout_ref(ref: str) -> tuple[str, str]:
    """Extract ``trionet/`` as of git revision ``ref`` into build/; (short sha, directory).

    trionet is pure Python and its dependencies are the same across these
    revisions, so the other revision runs on the same interpreter and venv:
    only the package on ``PYTHONPATH`` differs.  The benchmark's own server
    scripts are the working tree's for both, so both run the same workload.
    """
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.strip()
    target = BUILD / f"trionet-{sha}"
    if not (target / "trionet" / "__init__.py").exists():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", sha, "trionet"],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, timeout=60, check=True)
    return sha, str(target)


def ref_peers(peers: Sequence[Peer], ref: str) -> list[Peer]:
    """For each selected trionet peer, the same peer running revision ``ref``."""
    sha, path = checkout_ref(ref)
    return [
        Peer(
            f"{p.key}@{sha}",
            f"{p.label} @{sha}",
            p.argv,
            p.quick,
            trionet_path=path,
            tls=p.tls,
            proxy=p.proxy,
            cli=p.cli,
            workers=p.workers,
        )
        for p in peers
        if p.key.startswith("trionet")
    ]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def is_python(peer: Peer) -> bool:
    return peer.argv[0] == "{python}"


def metadata(s: Settings, peers: Sequence[Peer], workloads: Sequence[Workload]) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if s.quick else "full",
        "rounds": s.rounds,
        "warmup_s": s.warmup,
        "duration_s": s.duration,
        "rss_conns": s.rss_conns,
        "tls_rss_conns": s.tls_rss_conns if any(w.tls for w in workloads) else None,
        "pinning": s.pinning.describe(peers),
        "profiled": s.profile_dir is not None,
        "retries": s.retries,
        "quiet_wait_s": s.quiet_wait,
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git": git_revision(),
        "versions": versions(),
        "baseline": BASELINE,
        "client_baseline": CLIENT_BASELINE,
        "peers": [
            {
                "key": p.key,
                "label": p.label,
                "python": is_python(p),
                "tls": p.tls,
                "proxy": p.proxy,
                "workers": p.workers,
            }
            for p in peers
        ],
        "clients": [{"key": p.key, "label": p.label, "python": is_python(p)} for p in CLIENTS],
        "workloads": [
            {
                "key": w.key,
                "title": w.title,
                "short": w.short,
                "unit": w.unit,
                "higher_is_better": w.higher_is_better,
                "latency": w.latency,
                "kind": w.kind,
                "tls": w.tls,
                "tls_verify": w.tls and w.tls_verify,
                "proxy": w.proxy,
                "plain": w.plain,
            }
            for w in workloads
        ],
    }


# ------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="~1 minute subset (one round)")
    parser.add_argument("--rounds", type=int, help="rounds of alternation (full: 2, quick: 1)")
    parser.add_argument("--warmup", type=float, help="seconds discarded before measuring")
    parser.add_argument("--duration", type=float, help="seconds per measurement")
    parser.add_argument("--rss-conns", type=int, default=5000, help="held connections for RSS")
    parser.add_argument(
        "--tls-rss-conns",
        type=int,
        default=5000,
        help="held TLS connections for the TLS RSS figure (default 5000)",
    )
    parser.add_argument("--peers", help="comma-separated peer keys (default: all, or quick set)")
    parser.add_argument("--workloads", help="comma-separated workload keys")
    parser.add_argument("--output", help="result name in results/ (default: latest / quick)")
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--update-docs", action="store_true", help="also update the docs page")
    docs.add_argument("--no-docs", action="store_true", help="never touch docs/")
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="measure again when other processes used (or the hypervisor stole) "
        ">= 25%% of a core meanwhile (default 1)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measurement, wait up to S seconds for the machine to be idle "
        "(< 25%% of a core busy or stolen, 2 s running): for a shared machine (default 0: off)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy flame graph of each Python server (results/profiles/NAME/); "
        "sampling costs some throughput, so compare profiled runs only with each other",
    )
    parser.add_argument(
        "--trionet-ref",
        metavar="GITREF[,GITREF]",
        help="also run every selected trionet peer on revision GITREF (e.g. HEAD~1), "
        "as PEER@SHA, alternated with the others in every round; several refs: comma-separated",
    )
    parser.add_argument(
        "--baseline",
        metavar="PEER",
        help=f"peer the ratios are relative to (default {BASELINE}; "
        "with --trionet-ref, e.g. trionet@SHA for a before/after table)",
    )
    parser.add_argument("--cc", default=os.environ.get("CC", "gcc"), help="C compiler")
    parser.add_argument("--list", action="store_true", help="list peers and workloads, then exit")
    return parser.parse_args(argv)


def select_by_key(items: Sequence[Any], spec: str | None, quick: bool, what: str) -> list[Any]:
    if spec:
        keys = [k.strip() for k in spec.split(",") if k.strip()]
        known = {i.key: i for i in items}
        unknown = [k for k in keys if k not in known]
        if unknown:
            sys.exit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
        return [known[k] for k in keys]
    return [i for i in items if i.quick or not quick]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for p in (*PEERS, *CLIENTS):
            tags = "  [quick]" * p.quick + "  [tls]" * p.tls + "  [proxy]" * p.proxy
            print(f"peer      {p.key:<22} {p.label}{tags}")
        for w in WORKLOADS:
            tags = "  [quick]" * w.quick + "  [tls]" * w.tls + "  [proxy]" * w.proxy
            print(f"workload  {w.key:<22} {w.title}{tags}")
        return 0
    peers = select_by_key(PEERS, args.peers, args.quick, "peers")
    workloads = select_by_key(WORKLOADS, args.workloads, args.quick, "workloads")
    if args.trionet_ref:
        base = list(peers)
        for ref in args.trionet_ref.split(","):
            try:
                peers += ref_peers(base, ref.strip())
            except (OSError, subprocess.SubprocessError) as exc:
                sys.exit(f"cannot check out trionet at {ref!r}: {exc}")
    baseline = BASELINE if any(p.key == BASELINE for p in peers) else peers[0].key
    if args.baseline:
        keys = [p.key for p in peers]
        if args.baseline not in keys:
            sys.exit(f"--baseline {args.baseline!r} is not a selected peer ({', '.join(keys)})")
        baseline = args.baseline
    settings = Settings(
        warmup=args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0),
        duration=args.duration if args.duration is not None else (1.5 if args.quick else 4.0),
        rounds=args.rounds if args.rounds is not None else (1 if args.quick else 2),
        rss_conns=args.rss_conns,
        tls_rss_conns=args.tls_rss_conns,
        pinning=choose_pinning(not args.no_pin),
        quick=args.quick,
        retries=max(0, args.retries),
        quiet_wait=max(0.0, args.quiet_wait),
    )
    name = args.output or ("quick" if args.quick else "latest")
    if args.profile:
        settings.profile_dir = RESULTS / "profiles" / name
    update_docs = args.update_docs or (
        not args.quick
        and not args.no_docs
        and not args.output
        and not args.profile
        and not args.trionet_ref
    )

    raise_nofile_limit()

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwind: every server is killed in a finally

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        build_c(args.cc)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"cannot build the C load generator / echo server: {exc}")
        return 2
    if any(w.tls for w in workloads):
        try:
            settings.tls = make_certificates()
        except ImportError:
            log("the TLS workloads need trustme: .venv/bin/pip install -e '.[bench]'")
            return 2
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(LOGS)
    meta = metadata(settings, peers, workloads)
    meta["baseline"] = baseline
    log(f"trionet: {meta['versions'].get('trionet')}")
    log(f"{settings.pinning.describe(peers)}; {settings.rounds} round(s) of {len(peers)} peers")
    run = Run(settings)
    started = time.monotonic()
    try:
        execute(run, peers, workloads)
    except KeyboardInterrupt:
        log("interrupted: writing what was measured so far")
    meta["elapsed_s"] = round(time.monotonic() - started, 1)
    meta["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["missing"] = run.missing

    data = {"meta": meta, "measurements": run.measurements}
    summary = report.summarize(data)
    RESULTS.mkdir(exist_ok=True)
    paths = report.write_all(summary, data, RESULTS / name)
    if update_docs:
        paths += report.update_docs(summary, RESULTS / f"{name}.png", DOCS_RST, DOCS_PNG)
    print(report.render_markdown(summary))
    log(
        f"done in {meta['elapsed_s']:.0f} s; wrote "
        + ", ".join(str(p.relative_to(REPO)) for p in paths)
    )
    absent = report.absent_peers(summary)
    if absent and not settings.quick:
        # A full run must show every peer it was asked for.
        log("INCOMPLETE full run, no figure for: " + "; ".join(absent))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
