"""CPU per echoed message on the server hot path, in one process: a quieter A/B check.

One server-side ``Connection`` (kernel-socket fast path) and a plain
non-blocking client socket in the same Trio task: each iteration the client
sends 64 bytes, the connection's ``async for`` receives them and
``send_all`` echoes them, the client reads them back.  No scheduler
contention, no second process: the run-to-run noise of the loopback
benchmarks (bimodal on small VMs) does not apply, so two revisions can be
compared to a few percent::

    for p in . benchmarks/build/trionet-SHA; do PYTHONPATH=$p taskset -c 0 \\
        .venv/bin/python benchmarks/micro/echo_cost.py; done

(``benchmarks/run.py --trionet-ref SHA`` extracts ``build/trionet-SHA``.)
Prints the best of five runs of 100,000 messages, in microseconds per message.
"""

from __future__ import annotations

import socket
import time

import trio

try:
    from trionet._stream._socket import SocketConnection as Connection
except ImportError:  # a revision from before the _stream package
    from trionet._connection import Connection  # type: ignore[no-redef]

N = 100_000


async def main() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))  # loopback only
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    for s in (client, server):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = Connection._adopt(server)
    messages = conn.__aiter__()
    message = b"x" * 64
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(N):
            client.send(message)
            data = await messages.__anext__()
            await conn.send_all(data)
            client.recv(64)
        best = min(best, (time.perf_counter() - start) / N * 1e6)
    print(f"echo through Connection (async for + send_all): {best:.2f} us per message")
    client.close()
    await conn.aclose()


if __name__ == "__main__":
    trio.run(main)
