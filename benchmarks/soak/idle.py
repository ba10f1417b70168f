"""Clients only the server's idle timeout closes: idlers, and the connections a flood holds.

The server's ``idle_closed`` is checked against them (``verdict.py``), so
each must *see* the server's close rather than close first and leave the
count in doubt.  The idle clock starts at the server's last byte, which
went out before the client read it: a connection the client closes less
than ``idle_timeout - SAFE_MARGIN`` seconds after its last reply cannot
have been counted (unless the client itself was scheduled a whole
``SAFE_MARGIN`` late); one silent for longer waits (bounded) for the
server's close.
"""

from __future__ import annotations

import os
import time

import trio

from .clients import Clients
from .handler import reply_for
from .net import closed_by_peer, drain_until_eof

__all__ = ["SAFE_MARGIN", "flood", "idler"]

#: Seconds under the idle timeout at which a client may still close a silent
#: connection itself and know the server did not count it.
SAFE_MARGIN = 1.0
#: Seconds past the idle timeout a client waits for the server's close
#: (the reaper closes within two ticks of 0.25 s, plus scheduling delay).
LATE = 5.0


async def _read_reply(stream: trio.SocketStream, line: bytes, timeout: float) -> tuple[bytes, str]:
    """Send ``line`` and read its reply: (bytes, ``done`` | ``eof`` | ``reset`` | ``timeout``)."""
    expected = reply_for(line)
    data = b""
    how = "timeout"
    with trio.move_on_after(timeout):
        try:
            await stream.send_all(line + b"\n")
            while len(data) < len(expected):
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return data, "eof"
                data += chunk
            how = "done"
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            how = "reset"
    return data, how


async def _wait_close(clients: Clients, stream: trio.SocketStream, replied_at: float) -> str:
    """Stay silent until the server closes (``idle_closed``), at most ``LATE`` s past it."""
    left = clients.idle_timeout + LATE - (time.monotonic() - replied_at)
    data, how = await drain_until_eof(stream, max(0.0, left))
    if data:
        return "corrupt"
    if how in ("eof", "reset"):
        clients.idle_silences.append(time.monotonic() - replied_at)
        return "idle_closed"
    return "not_closed"


async def idler(clients: Clients, source: str) -> None:
    """Connect, send one request, read its reply, then stay silent until the server closes.

    Nothing but the idle timeout closes such a connection outside a drain
    (idlers run only in phases without one): ``idle_closed`` outcomes match
    the server's count exactly.  Cut at a phase end after its reply, an
    idler still waits (shielded) for the close; cut before it, it is
    ``cut_unserved`` (the server's clock had not run out: it had just sent,
    or not yet).
    """
    tally = clients.tallies["idler"]
    while True:
        stream = await clients._connect(tally, source, clients.plain)
        if stream is None:
            continue
        outcome = ""
        replied_at: float | None = None
        try:
            line = b"I " + os.urandom(16).hex().encode()
            data, how = await _read_reply(stream, line, 30.0)
            if how == "done" and data == reply_for(line):
                replied_at = time.monotonic()
                outcome = await _wait_close(clients, stream, replied_at)
            elif data and not reply_for(line).startswith(data):
                outcome = "corrupt"
            elif how == "timeout" and not data:
                outcome = "stalled"
            else:
                outcome = f"lost_{how}"
        finally:
            with trio.CancelScope(shield=True):
                if not outcome:  # cut by the end of a phase
                    if replied_at is None:
                        outcome = "cut_unserved"
                    else:
                        outcome = await _wait_close(clients, stream, replied_at)
                tally.count(outcome)
                await trio.aclose_forcefully(stream)


async def _held_end(clients: Clients, stream: trio.SocketStream, replied_at: float) -> str:
    """A served flood connection at the end of its hold: who closed it."""
    if closed_by_peer(stream):
        return "idle_closed"
    if time.monotonic() - replied_at < clients.idle_timeout - SAFE_MARGIN:
        return "closed_by_client"
    return await _wait_close(clients, stream, replied_at)


async def flood(clients: Clients, category: str, sources: list[str], per_source: int) -> None:
    """Open ``per_source`` connections from each source at once; each asks for one reply.

    Outcomes (tally ``category``): ``served`` (the reply came), ``refused``
    (reset or closed with no reply: the per-host limit), ``timeout``.
    Served connections stay open until every one has its outcome, so the
    per-host count stays up; the idle timeout may close them first.  How
    each served one ended goes to the ``flood_held`` tally:
    ``idle_closed`` (the server closed it), ``closed_by_client`` (silent
    for less than ``idle_timeout - SAFE_MARGIN``: not counted), or
    ``not_closed`` (neither, within ``LATE`` s past the timeout).
    """
    tally = clients.tallies[category]
    held = clients.tallies["flood_held"]
    done = trio.Event()
    remaining = len(sources) * per_source

    def one_done() -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            done.set()

    async def one(source: str) -> None:
        stream = await clients._connect(tally, source, clients.plain, timeout=20.0)
        if stream is None:
            one_done()
            return
        async with stream:
            line = b"F " + os.urandom(8).hex().encode()
            data, how = await _read_reply(stream, line, 20.0)
            served = how == "done" and data == reply_for(line)
            replied_at = time.monotonic()
            if served:
                tally.count("served")
            elif data:
                tally.count("lost_" + how if reply_for(line).startswith(data) else "corrupt")
            else:
                tally.count("timeout" if how == "timeout" else "refused")
            one_done()
            with trio.move_on_after(25.0):
                await done.wait()
            if served:
                held.attempts += 1
                held.count(await _held_end(clients, stream, replied_at))

    async with trio.open_nursery() as nursery:
        for source in sources:
            for _ in range(per_source):
                nursery.start_soon(one, source)
