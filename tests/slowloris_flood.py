"""A slowloris flood for the tests: N connections, each trickling one byte per interval.

Run as a script (``python tests/slowloris_flood.py HOST PORT N INTERVAL SECONDS``),
so that the flood has its own process -- and its own core -- beside the server
under test.  Connections come from several loopback source addresses
(127.0.0.2 upwards, 100 per address); each sends ``x`` every ``INTERVAL``
seconds and never a newline, and is reconnected at once when the server
closes or resets it.  Once a second it prints one JSON line: how many
connections are established and how many were replaced so far.  It stops
after ``SECONDS`` (a bound: the test kills it sooner) and talks to loopback
only.
"""

from __future__ import annotations

import errno
import json
import resource
import socket
import sys
import time

_STILL_CONNECTING = {errno.EAGAIN, errno.EINPROGRESS, errno.ENOTCONN, errno.EALREADY}
PER_SOURCE = 100


def _open(host: str, port: int, index: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((f"127.0.0.{2 + index // PER_SOURCE}", 0))
    err = sock.connect_ex((host, port))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(err, "connect failed")
    return sock


def main(argv: list[str]) -> int:
    host, port, count, interval, seconds = (
        argv[0],
        int(argv[1]),
        int(argv[2]),
        float(argv[3]),
        float(argv[4]),
    )
    if not host.startswith("127."):
        raise SystemExit("loopback only")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 256)), hard))
    socks: list[socket.socket | None] = [None] * count
    replaced = 0
    end = time.monotonic() + seconds
    next_report = time.monotonic()
    while time.monotonic() < end:
        tick = time.monotonic() + interval
        established = 0
        for i in range(count):
            sock = socks[i]
            if sock is None:
                try:
                    socks[i] = _open(host, port, i)
                except OSError:
                    pass
                continue
            try:
                sock.send(b"x")
                established += 1
            except OSError as exc:
                if exc.errno in _STILL_CONNECTING:
                    continue
                sock.close()  # closed or reset by the server: come back at once
                replaced += 1
                try:
                    socks[i] = _open(host, port, i)
                except OSError:
                    socks[i] = None
        now = time.monotonic()
        if now >= next_report:
            print(json.dumps({"established": established, "replaced": replaced}), flush=True)
            next_report = now + 1.0
        time.sleep(max(0.0, tick - time.monotonic()))
    for sock in socks:
        if sock is not None:
            sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
