"""What the lingering close's decision costs: ``trionet._stream._sockopts.linger_needed``.

At close time trionet asks the kernel whether closing at once could discard
data (``recv(1, MSG_PEEK | MSG_DONTWAIT)``, plus ``ioctl(SIOCOUTQNSD)`` when
nothing is waiting).  Two connected loopback TCP sockets in one process, no
event loop; prints microseconds per decision in each case, and a plain
``close()`` of a fresh socket for scale.  The server skips the check
entirely when its handler already read the peer's EOF (an ``async for``
loop does).  Run it pinned to one core (``taskset -c 0``) on a quiet machine.
"""

from __future__ import annotations

import socket
import time

try:
    from trionet._stream._sockopts import linger_needed
except ImportError:  # a revision from before the _stream package
    from trionet._connection import linger_needed  # type: ignore[no-redef]

N = 200_000


def pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # loopback only
    listener.listen()
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    b.setblocking(False)
    return a, b


def per_call(fn: object, n: int = N) -> float:
    assert callable(fn)
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    peer, ours = pair()
    cost = per_call(lambda: linger_needed(ours))
    print(f"linger_needed, nothing waiting (peek + ioctl): {cost:.2f} us")
    peer.send(b"next request")
    time.sleep(0.05)
    assert linger_needed(ours)
    print(
        f"linger_needed, data waiting (peek only): {per_call(lambda: linger_needed(ours)):.2f} us"
    )
    peer.shutdown(socket.SHUT_WR)
    ours.recv(100)
    time.sleep(0.05)
    print(f"linger_needed, at EOF (peek only): {per_call(lambda: linger_needed(ours)):.2f} us")
    peer.close()
    ours.close()

    def open_close() -> None:
        socket.socket().close()

    print(f"for scale: socket() + close(): {per_call(open_close, 50_000):.2f} us")


if __name__ == "__main__":
    main()
