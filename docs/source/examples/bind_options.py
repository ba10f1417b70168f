"""Per-bind options: trionet.Bind, server-wide defaults, and Server.binds.

Run it: python bind_options.py
"""

from __future__ import annotations

import os
import stat
import tempfile

import trio

import trionet


async def hello(conn: trionet.Connection) -> None:
    await conn.send_all(f"hello from {conn.local}\n".encode())


async def main() -> None:
    tmpdir = tempfile.mkdtemp()
    private = os.path.join(tmpdir, "admin.sock")
    shared = os.path.join(tmpdir, "app.sock")
    binds = [
        "tcp://127.0.0.1:0",  # a plain spec: every option from the server
        trionet.Bind("tcp://127.0.0.1:0", backlog=16),  # its own listen() queue
        trionet.Bind("unix:" + private, unix_mode=0o600),  # owner only
        "unix:" + shared,  # the server-wide unix_mode
    ]
    try:
        # Server-wide options fill in whatever a bind does not set itself.
        async with trionet.open_server(hello, *binds, backlog=1024, unix_mode=0o660) as server:
            # One resolved Bind per listening socket, in bind order, with the
            # address really bound (ephemeral ports filled in).
            for bind in server.binds:
                where = str(bind.address).replace(tmpdir, "...")
                mode = "-" if bind.unix_mode is None else f"{bind.unix_mode:#o}"
                print(f"{where:24} backlog={bind.backlog} unix_mode={mode}")
            for path in (private, shared):
                print(os.path.basename(path), oct(stat.S_IMODE(os.stat(path).st_mode)))
            same = server.addresses == [bind.address for bind in server.binds]
            print("server.addresses in the same order:", same)
            async with await trionet.connect(server.addresses[2]) as conn:
                print("->", (await conn.receive_line()).decode().replace(tmpdir, "..."))
    finally:
        os.rmdir(tmpdir)

    # Options are checked when the Bind is made, before anything opens.
    for make in (
        lambda: trionet.Bind("tcp://127.0.0.1:0", backlog=-1),
        lambda: trionet.Bind("unix:@trionet-example", unix_mode=0o600),
        lambda: trionet.Bind("tcp://127.0.0.1:0", unix_mode=0o600),
        lambda: trionet.Bind("tcp://127.0.0.1:0", handshake_timeout=0),
    ):
        try:
            make()
        except (TypeError, ValueError) as exc:
            print(f"{type(exc).__name__}: {exc}")
    print("ok")


if __name__ == "__main__":
    trio.run(main)
