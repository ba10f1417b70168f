"""What one echoed message costs in system calls alone: ``recv()`` + ``send()``.

Two connected loopback TCP sockets in one process, non-blocking, no event
loop: each iteration sends 64 bytes A->B, receives them on B, sends them
back B->A and receives them on A -- two messages' worth of the server's
``recv()``/``send()`` pair.  Prints microseconds per pair.  Run it pinned to
one core (``taskset -c 0``) on a quiet machine.
"""

from __future__ import annotations

import socket
import time

N = 200_000


def main() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # loopback only
    listener.listen()
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
    message = b"x" * 64
    for size in (65536, 4096):
        start = time.perf_counter()
        for _ in range(N):
            a.send(message)
            b.recv(size)
            b.send(message)
            a.recv(size)
        per_pair = (time.perf_counter() - start) / (2 * N) * 1e6
        print(f"recv({size}) + send(64 B) on loopback TCP: {per_pair:.2f} us per pair")
    a.close()
    b.close()


if __name__ == "__main__":
    main()
