"""The documentation's promises: every example runs, every public name is documented.

Each ``docs/source/examples/*.py`` is a complete program that starts a server
on loopback (or a Unix socket), talks to it, prints what happened and ends
with a line ``ok``.  Here each one runs in a subprocess, and its output must
contain the lines the pages quote.  The Sphinx build itself (``make docs``,
warnings are errors) is checked by CI.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import trionet
import trionet.pytest_plugin
import trionet.services

DOCS = Path(__file__).resolve().parent.parent / "docs" / "source"
EXAMPLES = DOCS / "examples"
TIMEOUT = 20.0

# What each example must print (besides its final "ok" line).  Only output
# that is deterministic is listed: ports, pids and timings vary.
EXPECTED: dict[str, list[str]] = {
    "echo_server.py": [
        "listening on tcp://127.0.0.1:",
        "reply: hello, trionet",
        "live connections: 1",
        "drain: 1 finished, 0 cancelled",
        "client sees EOF: True",
        "stats: 1 accepted, 14 bytes in",
    ],
    "binds.py": [
        "unix:@trionet-example-" if sys.platform == "linux" else "unix:/",
        "app.sock",
        "-> hello from unix:",
        "-> hello from tcp://127.0.0.1:",
        "stopped: True | file left: False",
    ],
    "bind_options.py": [
        "tcp://127.0.0.1:",
        "backlog=16 unix_mode=-",
        "unix:.../admin.sock      backlog=1024 unix_mode=0o600",
        "admin.sock 0o600\napp.sock 0o660",
        "server.addresses in the same order: True",
        "-> hello from unix:.../admin.sock",
        "ValueError: Bind('tcp://127.0.0.1:0'): backlog must be >= 0, not -1",
        "ValueError: Bind('unix:@trionet-example'): unix_mode=0o600 cannot apply",
        "ValueError: Bind('tcp://127.0.0.1:0'): unix_mode=0o600 applies to unix: socket files",
        "ValueError: Bind('tcp://127.0.0.1:0'): handshake_timeout must be > 0 seconds, not 0",
    ],
    "tls_server.py": [
        "TLS   on tcp://127.0.0.1:",
        "plain on tcp://127.0.0.1:",
        "server says: hello localhost over TLSv1.",
        "echo: ping",
        "client sent SNI: localhost | ALPN: None",
        "server certificate: (('DNS', 'localhost'), ('IP Address', '127.0.0.1'))",
        "application bytes sent: 5",
        "send_eof on TLS: LocalProtocolError",
        "plain bind says: hello in plain text",
        "conn.tls on a plain connection: None",
        "untrusted: ConnectError from SSLCertVerificationError",
        "attempts: ['connected', 'failed']",
        "tls_failures=2 stage_failures=2 handler_errors=0",
    ],
    "starttls.py": [
        "client got: GO",
        "server: same id True, same peer True",
        "client got: HELLO",
        "client tls: True localhost",
        "application bytes: 6 | on the wire:",
        "server: loop ended, draining=True",
        "drain: finished=1 cancelled=0",
        "quick: True",
    ],
    "tls_mutual.py": [
        "alice@example.test asked for api.example.test speaking http/1.1\n"
        "  server certificate: (('DNS', 'api.example.test'),)",
        "alice@example.test asked for www.example.test speaking http/1.1\n"
        "  server certificate: (('DNS', 'www.example.test'),)",
        "no client certificate: refused",
        "tls_failures: 1",
    ],
    "tls_handshake_timeout.py": [
        "silent client: accepted=1 active=1 listed=1",
        "next client connected after the handshake timeout: True",
        "echo: hello",
        "silent client then got: b''",
        "tls_failures=1 stage_failures=1",
        "drain: finished=0 cancelled=0 in_stages=1 fast=True",
    ],
    "proxy_server.py": [
        ": proxy_protocol='required' trusted_proxies=('127.0.0.0/8',)",
        ": proxy_protocol='required' trusted_proxies=('10.0.0.0/8',)",
        ": proxy_protocol='off' trusted_proxies=()",
        "v2 PROXY: you are tcp://203.0.113.7:51000 (via tcp://127.0.0.1:",
        "), you called tcp://198.51.100.1:443\n"
        "  the balancer says: TLS=True TLSv1.3 SNI=api.example.test client certificate=False\n"
        "echo: ping\n"
        "bytes_sent leaves the header out: 5",
        "v1 on the wire: b'PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\\r\\n'",
        "v1 PROXY: you are tcp://[2001:db8::7]:40000 (via tcp://127.0.0.1:",
        "health check (v2 LOCAL), peer is the proxy: True\n"
        "health check (v1 PROXY), peer is the proxy: True",
        "one segment: v1 PROXY: you are tcp://192.0.2.10:33000 (via",
        "you called tcp://192.0.2.1:443 | echo: hello\n",
        "192.0.2.66, denied by the access policy: closed, nothing sent",
        "no header: closed, nothing sent",
        "untrusted source: closed, nothing sent",
        "no PROXY on this bind: conn.proxy is None, peer tcp://127.0.0.1:",
        "proxy_failures=2 stage_failures=1 rejected_access=1 handler_errors=0",
        "partial: None",
        "parsed: tcp://192.0.2.1:56324 -> tcp://192.0.2.2:443, then b'GET / HTTP/1.1\\r\\n'",
        "ProxyProtocolError: not a PROXY protocol header: starts with b'GET / HT'",
        "ValueError: Bind('tcp://0.0.0.0:8080'): proxy_protocol='required' needs trusted_proxies",
    ],
    "buffered_reads.py": [
        "OK 5\nHELLO Trio\nERR line too long\n",
        "server: peer hung up mid-line after b'NAM'",
        "protocol errors: 1",
    ],
    "handler_errors.py": [
        "divide 0 -> b''",
        "divide 4 -> b'25\\n'",
        "handler_errors=1 resets=1 closed=3",
        "raised: ZeroDivisionError(",
    ],
    "graceful_drain.py": [
        "finished=2 cancelled=1 swept=0",
        "took at least the grace period: True",
        "echo client got b''",
        "polite client got b'goodbye\\n'",
        "stubborn client got b''",
        "new connections refused",
    ],
    "lingering_close.py": [
        "client got 4194304 of 4194304 bytes, then EOF",
        "server lingering: 1",
        "closed=1 resets=0 bytes_sent=4194304",
    ],
    "drain_on_signals.py": [
        "client got b'ping'",
        "client then got b'' (EOF: the server drained)",
        "drained: finished=1 cancelled=0",
    ],
    "access_control.py": [
        "10/8 only, from 127.0.0.1: reset",
        "rejected_access = 1",
        "policy admits 127.0.0.2? False",
        "from 127.0.0.1: welcome",
        "before the ban: welcome",
        "after the ban: reset",
    ],
    "limits.py": [
        "first: hello second: hello",
        "third, while two are served: (nothing yet)",
        "third, after one left: hello",
        "two: (reset)",
        "rejected_limit = 1",
        "then: (EOF)",
        "idle_closed = 1",
    ],
    "unix_sockets.py": [
        "mode: 0o600",
        "reply is about us: True",
        "second server: AddressInUse",
        "file removed on close: True",
        f"unix_uids=[{os.getuid()}]: admitted",
        f"unix_uids=[{os.getuid() + 1}]: refused",
        "abstract: unix:@trionet-doc-",
    ],
    "testing_with_pytest.py": ["4 passed"],
    "virtual_network.py": [
        "tcp://127.0.0.1:32768 -> tcp://127.0.0.10:80 (serving tcp://127.0.0.10:80)",
        "latency 2 s: round trip 4.0 s",
        "partitioned: ConnectTimeout after 30.0 s",
        "healed: b'stalled' 4.0 s after the heal",
        "server -> client cut: the server got 7 bytes, the client nothing",
        "after the heal: b'one way'",
        "held for 10 s, nothing arrived: True",
        "released in order: b'one two three '",
        "reset_connections: BrokenResourceError",
        "crash: the client sees a reset",
        "crashed host: connect timed out",
        "restarted, nothing listening: ConnectionRefusedError",
        "a new server after the restart: b'back'",
        "   94.000000 -#2 heal localhost->server.test server.test->localhost",
        "  118.000000 -#9 crash server.test",
        "virtual time: 128 s",
    ],
    "testing_virtual_network.py": ["5 passed"],
    "client_connect.py": [
        "hello trio, you are tcp://127.0.0.1:",
        "local: TCPAddress peer: True",
        "hello unix, you are unix:",
        "ConnectError: cannot connect to tcp://127.0.0.1:",
        "  round 0: failed\n  round 1: failed\n  round 2: failed",
        "timed out: ConnectTimeout",
        "observed: ['failed']",
    ],
    "connection_pool.py": [
        "created=2 reused=8 idle=2",
        "created=3 expired=2",
        "discarded=1",
        "pool closed: True",
    ],
    "stats_file.py": [
        "keys: connections descriptors draining pid rss_kib stats stopped tasks time",
        "pid is ours: True",
        "live connections: 1 | tasks > 1: True",
        "accepted: 1 | stopped: False",
        "last: stopped=True connections=0",
        "closed=1 bytes_received=6",
        "temporary files left: []",
    ],
    "worker_processes.py": [
        "listening on tcp://127.0.0.1:",
        "workers: 2",
        "every answer came from a worker: True",
        "reload replaced every worker: True",
        "new pids: True",
        "connections during the reload: True | failed: 0",
        "started=4 crashed=0 reloads=1/1 unreported=0",
        "accepted: True",
    ],
    "slow_clients.py": [
        "fresh client served: R hello",
        "within 2 s: True",
        "slow senders closed: True",
    ],
    "cli_session.py": [
        "serve printed: listening on tcp://127.0.0.1:",
        "connect printed: hello from the command line",
        "shutdown: finished=",
        "stats: accepted=1 active=0 closed=1",
        "exit status: 0",
    ],
}


def _examples() -> list[str]:
    return sorted(p.name for p in EXAMPLES.glob("*.py"))


def test_every_example_has_expectations() -> None:
    assert _examples(), f"no examples found in {EXAMPLES}"
    assert set(_examples()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    report = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, report
    assert proc.stdout.splitlines()[-1] == "ok", report
    for expected in EXPECTED[name]:
        assert expected in proc.stdout, f"missing {expected!r}\n{report}"


def _rst_sources() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.rglob("*.rst")))


def test_every_example_is_shown_in_the_docs() -> None:
    pattern = r"^\.\. literalinclude:: \S*examples/(\S+\.py)$"
    included = set(re.findall(pattern, _rst_sources(), re.M))
    assert set(_examples()) <= included


def test_reference_documents_every_public_name() -> None:
    reference = (DOCS / "reference.rst").read_text()
    documented = set(
        re.findall(r"^\.\. (?:auto\w+|py:\w+|data|function|class)::\s+([\w.]+)", reference, re.M)
    )
    missing = [n for n in trionet.__all__ if n not in documented]
    assert not missing, f"add these to docs/source/reference.rst: {missing}"
    fixtures = [n for n in trionet.pytest_plugin.__all__ if n not in documented]
    assert not fixtures, f"document these pytest fixtures in reference.rst: {fixtures}"
    services = [n for n in trionet.services.__all__ if f"trionet.services.{n}" not in documented]
    assert not services, f"document these in reference.rst: {services}"


def test_changelog_names_this_version() -> None:
    assert trionet.__version__ in (DOCS / "changelog.rst").read_text()
