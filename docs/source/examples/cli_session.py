"""Drive the trionet command line: serve echo, talk to it with connect, drain it.

This is what a shell session does by hand (see the how-to); here Trio runs
the commands as child processes.  POSIX only (it sends SIGINT).

Run it: python cli_session.py
"""

from __future__ import annotations

import signal
import subprocess
import sys

import trio

TRIONET = [sys.executable, "-m", "trionet"]  # the same as the `trionet` script


async def main() -> None:
    server = await trio.lowlevel.open_process(
        [*TRIONET, "serve", "echo", "--bind", "tcp://127.0.0.1:0", "--grace", "2",
         "--log-level", "warning"],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None
    with trio.fail_after(10):
        # `serve` prints one "listening on ADDRESS" line per listener once
        # it is ready -- signal handlers included -- so parse the address.
        output = b""
        while b"\n" not in output:
            output += await server.stdout.receive_some()
        first_line, _, output = output.partition(b"\n")
        print("serve printed:", first_line.decode())
        address = first_line.decode().removeprefix("listening on ")

        # `connect` sends stdin, half-closes, prints what comes back until the
        # server closes: "hello" comes straight back from the echo service.
        client = await trio.run_process(
            [*TRIONET, "connect", address, "--timeout", "5"],
            stdin=b"hello from the command line\n",
            capture_stdout=True,
        )
        print("connect printed:", client.stdout.decode().strip())

        # Ctrl-C (SIGINT) drains; `serve` prints its report and exits 0.
        server.send_signal(signal.SIGINT)
        while chunk := await server.stdout.receive_some():
            output += chunk
        code = await server.wait()
    print("serve printed:", output.decode().strip())
    print("exit status:", code)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
