"""A virtual TCP handshake: SYN, a listener's queue (or RST), SYN-ACK.

Run by the connecting task itself, in virtual time -- nothing runs in the
background:

1. The SYN waits for the link to be open and the server's host up (a
   partition, a hold or a crashed host leaves the connect pending: TCP
   would keep retrying), then flies for one delay.
2. At the server: no listener answers RST (``ECONNREFUSED`` one delay
   later); a listener whose accept queue is full drops the SYN, so the
   connect waits, first come first served, for room.
3. The SYN-ACK flies back (waiting for the link too); only then is the
   connection in the listener's accept queue, as the kernel queues it on
   the handshake's last ACK.

A close of the connecting socket by another task ends the connect with
:class:`trio.ClosedResourceError`.
"""

from __future__ import annotations

import errno
import random
from typing import TYPE_CHECKING

import trio

from ._base import BOUND, CONNECTED, CONNECTING, format_address, oserror
from ._pipe import Direction
from ._socket import VirtualSocket

if TYPE_CHECKING:
    from ._hosts import Host
    from ._network import VirtualNetwork

__all__ = ["handshake"]


def _check(sock: VirtualSocket) -> None:
    if sock._closed:
        raise trio.ClosedResourceError("another task closed this socket")


async def _flight(
    net: VirtualNetwork, sock: VirtualSocket, way: Direction, src: Host, dst: Host
) -> None:
    """Wait for the link to be open and ``dst`` up, then for one segment's delay."""
    while net._blocked(src, dst) or dst.crashed:
        await net._changed.wait()
        _check(sock)
    deadline = trio.current_time() + way.delay()
    while trio.current_time() < deadline:
        await net._changed.wait(deadline)
        _check(sock)


async def _room(listener: VirtualSocket, sock: VirtualSocket, *, again: bool) -> None:
    """Wait, in line, until the listener's accept queue has room (or it goes).

    ``again``: this connect was in line before and lost its slot to a
    newcomer -- it goes back to the front.
    """
    event = trio.Event()
    if again:
        listener._room_waiters.appendleft(event)
    else:
        listener._room_waiters.append(event)
    sock._room_event = event
    try:
        await event.wait()
    except BaseException:
        if event.is_set() and listener._room_waiters:
            # Woken just as we were cancelled: the slot goes to the next in line.
            listener._room_waiters.popleft().set()
        raise
    finally:
        sock._room_event = None
        if event in listener._room_waiters:
            listener._room_waiters.remove(event)


async def _wait_in_line(listener: VirtualSocket, sock: VirtualSocket, again: bool) -> VirtualSocket:
    """Wait for room at ``listener``; returns it (whose wake-up this connect now holds).

    ``again``: woken before, this connect lost its slot -- back to the front.
    """
    await _room(listener, sock, again=again)
    _check(sock)
    return listener


async def handshake(net: VirtualNetwork, sock: VirtualSocket, ip: str, port: int) -> None:
    """Connect ``sock`` to ``(ip, port)``; its local address is bound already."""
    family = int(sock.family)
    assert sock._local is not None and sock._host is not None
    src = sock._host
    dst = net._book.owners.get(ip)
    if dst is None:
        raise oserror(errno.EHOSTUNREACH, f"no host of {net.describe()} has the address {ip}")
    local, peer = sock._local, (ip, port)
    link = (local[0], ip)
    index = net._link_count.get(link, 0)
    net._link_count[link] = index + 1
    seed = f"trionet/{net.seed}/{local[0]}>{ip}/{index}"
    c2s = Direction(src.name, dst.name, random.Random(seed + "/c2s"), net._delay, net.buffer_size)
    s2c = Direction(dst.name, src.name, random.Random(seed + "/s2c"), net._delay, net.buffer_size)
    sock._key = f"{format_address(local)}>{format_address(peer)}"
    sock._state = CONNECTING
    net._record(sock._key, "connect")
    woken: VirtualSocket | None = None  # the listener whose room wake-up this connect holds
    try:
        while True:
            if sock._dead():
                await trio.sleep_forever()
            await _flight(net, sock, c2s, src, dst)  # the SYN
            if net._blocked(src, dst) or dst.crashed:
                continue  # cut while the SYN was in flight: it is sent again
            listener = net._binds.listener(family, ip, port)
            if listener is None:
                await _flight(net, sock, s2c, dst, src)  # the RST
                net._record(sock._key, "refused")
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            if listener._queue_full():
                # The SYN was dropped; TCP sends it again when there is room.
                again, woken = woken is listener, None  # (held no more while waiting)
                woken = await _wait_in_line(listener, sock, again)
                continue
            await _flight(net, sock, s2c, dst, src)  # the SYN-ACK
            if dst.crashed:
                continue  # a crashed host answers nothing: pending until restart
            if not listener._listening():
                # The listener went while the SYN-ACK flew: its RST follows.
                net._record(sock._key, "refused")
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            if listener._queue_full():
                # Taken meanwhile: the handshake's last ACK waits for room.
                again, woken = woken is listener, None  # (held no more while waiting)
                woken = await _wait_in_line(listener, sock, again)
                if not listener._listening():
                    continue
            break
    except BaseException:
        if not sock._closed:
            sock._state = BOUND
        if woken is not None and woken._room_waiters:
            woken._room_waiters.popleft().set()  # pass the wake-up on: never strand one
        raise
    server = VirtualSocket(net, family, int(sock.type), sock.proto)
    server._local, server._host, server._epoch = peer, dst, dst.epoch
    server._attach(f"{format_address(peer)}>{format_address(local)}", local, c2s, s2c)
    sock._attach(sock._key, peer, s2c, c2s)
    now = trio.current_time()
    for way, a, b in ((c2s, src, dst), (s2c, dst, src)):
        if net._blocked(a, b):
            way.block(now)
    server._other, sock._other = sock, server
    net._adopt(server, c2s, s2c)
    listener._enqueue(server)
    sock._state = CONNECTED
    net._record(sock._key, "connected")
