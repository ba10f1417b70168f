"""Access control: CIDR allow/deny lists, and a callable for dynamic rules.

Refused peers are reset right after accept(), before any handler code runs.

Run it: python access_control.py
"""

from __future__ import annotations

import sys

import trio

import trionet


async def hello(conn: trionet.Connection) -> None:
    await conn.send_all(b"welcome\n")


async def try_connect(address: trionet.Address, source: str = "127.0.0.1") -> str:
    # The kernel completes the handshake for anyone; the server then resets a
    # refused peer -- on the first read, or on loopback even during connect().
    try:
        async with await trionet.connect(address, local_address=source, timeout=5.0) as conn:
            return (await conn.receive_line()).decode()
    except (trionet.ConnectError, trio.BrokenResourceError):
        return "reset"


async def main() -> None:
    # Only 10.0.0.0/8 may connect: a loopback client is refused.
    policy = trionet.AccessPolicy(allow=["10.0.0.0/8"])
    async with trionet.open_server(hello, "tcp://127.0.0.1:0", access=policy) as server:
        address = server.addresses[0]
        print("10/8 only, from 127.0.0.1:", await try_connect(address))
    print("rejected_access =", server.stats.rejected_access)

    # Loopback allowed, one address denied -- deny wins over allow.
    policy = trionet.AccessPolicy(allow=["127.0.0.0/8", "::1/128"], deny=["127.0.0.2/32"])
    print("policy admits 127.0.0.2?", policy.allows(trionet.TCPAddress("127.0.0.2", 5000)))
    async with trionet.open_server(hello, "tcp://127.0.0.1:0", access=policy) as server:
        address = server.addresses[0]
        print("from 127.0.0.1:", await try_connect(address))
        if sys.platform == "linux":  # all of 127.0.0.0/8 is local on Linux
            print("from 127.0.0.2:", await try_connect(address, "127.0.0.2"))

    # Any synchronous callable taking a ConnectionInfo works, e.g. a ban list
    # you can change while the server runs.
    banned: set[str] = set()

    def not_banned(info: trionet.ConnectionInfo) -> bool:
        return not (isinstance(info.peer, trionet.TCPAddress) and info.peer.host in banned)

    async with trionet.open_server(hello, "tcp://127.0.0.1:0", access=not_banned) as server:
        address = server.addresses[0]
        print("before the ban:", await try_connect(address))
        banned.add("127.0.0.1")
        print("after the ban:", await try_connect(address))
    print("ok")


if __name__ == "__main__":
    trio.run(main)
