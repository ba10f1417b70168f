"""Unix-domain sockets: files, permissions, stale files, peer credentials, abstract names.

Linux (SO_PEERCRED and abstract names are Linux features).

Run it: python unix_sockets.py
"""

from __future__ import annotations

import os
import socket
import stat
import tempfile

import trio

import trionet


async def whoami(conn: trionet.Connection) -> None:
    # SO_PEERCRED: the peer process's (pid, uid, gid), vouched for by the kernel.
    creds = conn.peer_credentials
    assert creds is not None
    pid, uid, _gid = creds
    await conn.send_all(f"pid={pid} uid={uid}\n".encode())


async def ask(address: trionet.Address) -> str:
    try:
        async with await trionet.connect(address, timeout=5.0) as conn:
            return (await conn.receive_line()).decode()
    except (trionet.IncompleteRead, trio.BrokenResourceError):
        return ""  # refused peers are closed at once: EOF (or a reset)


async def main() -> None:
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "app.sock")

    # A stale file, as a crashed server leaves behind: bound, never unlinked.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()

    # The stale file is detected (nothing answers a connect probe) and replaced;
    # unix_mode is applied before listen(), so no client ever sees wider bits.
    async with trionet.open_server(whoami, "unix:" + path, unix_mode=0o600) as server:
        print("mode:", oct(stat.S_IMODE(os.stat(path).st_mode)))
        reply = await ask(server.addresses[0])
        print("reply is about us:", reply == f"pid={os.getpid()} uid={os.getuid()}")

        # A live server on the same path is never replaced.
        try:
            async with trionet.open_server(whoami, "unix:" + path):
                pass
        except trionet.AddressInUse as exc:
            print("second server:", type(exc).__name__)
    print("file removed on close:", not await trio.Path(path).exists())

    # Only these uids may connect (Unix peers are matched on SO_PEERCRED's uid).
    for uids in ([os.getuid()], [os.getuid() + 1]):
        policy = trionet.AccessPolicy(unix_uids=uids)
        async with trionet.open_server(whoami, "unix:" + path, access=policy) as server:
            outcome = await ask(server.addresses[0])
            print(f"unix_uids={uids}:", "admitted" if outcome else "refused")

    # Abstract names (Linux): no file at all, nothing to clean up.
    async with trionet.open_server(whoami, f"unix:@trionet-doc-{os.getpid()}") as server:
        address = server.addresses[0]
        assert isinstance(address, trionet.UnixAddress) and address.is_abstract
        print("abstract:", address, "->", (await ask(address)).split()[0])

    os.rmdir(directory)
    print("ok")


if __name__ == "__main__":
    trio.run(main)
