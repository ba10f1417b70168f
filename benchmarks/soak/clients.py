"""The abusive clients: each a loop (until cancelled) that counts attempts and outcomes.

Every category has its own source address(es) in 127.0.0.0/8 (see
:data:`SOURCES`), so per-host limits and the access policy see them apart,
and its outcomes are named so that the ones a server counter must match are
told apart from the ambiguous ones (``timeout``: the client gave up first,
and the server may or may not have counted it).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

import trio

from .canary import Drains
from .handler import MAX_BIG, big_reply, reply_for
from .net import (
    CONNECT_ERRORS,
    Tallies,
    Tally,
    closed_by_peer,
    connect_from,
    drain_until_eof,
    proxy_v1,
    proxy_v2,
    reset_close,
)

__all__ = ["DENIED", "PROXY_CLIENT", "SOURCES", "TRUSTED_PROXY", "Clients"]

#: Source addresses by category.
SOURCES: dict[str, str | list[str]] = {
    "canary": "127.0.0.2",
    "canary_fresh": "127.0.0.3",
    "half_closer": "127.0.0.4",
    "resetter": "127.0.0.5",
    "long_line": "127.0.0.6",
    "slow_reader": "127.0.0.7",
    "tls_abuse": "127.0.0.8",
    "proxy": "127.0.0.9",
    "slowloris": [f"127.0.0.{n}" for n in range(10, 18)],
    "proxy_untrusted": "127.0.0.18",
    "canary_tls": "127.0.0.19",
    "probe": "127.0.0.21",
    "idler": "127.0.0.22",
    "denied": "127.0.0.66",
    "flood_per_host": "127.0.0.77",
    "flood_connections": [f"127.0.0.{n}" for n in range(90, 94)],
}

#: The address the server's access policy refuses.
DENIED = "127.0.0.66"
#: The one source the server trusts to send PROXY headers (``--trusted-proxy``).
TRUSTED_PROXY = "127.0.0.9"
#: The client the PROXY canary's headers name (the access policy admits it).
PROXY_CLIENT = "127.0.1.2"

#: Bytes a trusted proxy sends that are no valid PROXY header: a malformed v1
#: line, noise, a v1 line with no end, a truncated v2 header and nothing at
#: all (the last two: the handshake timeout closes them).
GARBAGE = (
    b"PROXY GARBAGE\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PROXY TCP4 " + b"9" * 120,
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00",
    b"",
)


@dataclass
class Clients:
    """What every client loop needs: where the servers are, the tallies, the drains."""

    plain: tuple[str, int]
    tls: tuple[str, int]
    proxy: tuple[str, int]
    tallies: Tallies
    drains: Drains
    handshake_timeout: float = 2.0
    #: The server's ``--idle-timeout`` (the idlers and the held flood connections wait it out).
    idle_timeout: float = 3.0
    #: Seconds of silence before the server closed each idler (see ``idle.py``).
    idle_silences: list[float] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    async def _connect(
        self, tally: Tally, source: str, address: tuple[str, int], timeout: float = 10.0
    ) -> trio.SocketStream | None:
        """Connect, counting a failure as ``connect_refused`` / ``connect_timeout``.

        ``cut_connecting``: the end of a phase came first.  The server may
        have accepted such a connection, but it never got a byte from us.
        """
        tally.attempts += 1
        try:
            return await connect_from(source, address, timeout)
        except trio.Cancelled:
            tally.count("cut_connecting")  # a phase ended before connect() returned
            raise
        except ConnectionResetError:
            tally.count("connect_reset")  # accepted and reset before connect() returned
        except CONNECT_ERRORS:
            tally.count("connect_refused")
        except (trio.TooSlowError, OSError):
            tally.count("connect_timeout")
        await trio.sleep(0.1)
        return None

    async def _trickle(self, stream: trio.SocketStream, seconds: float) -> bool:
        """One byte every 100 ms for up to ``seconds``; True as soon as the server closes."""
        with trio.move_on_after(seconds):
            try:
                while True:
                    await stream.send_all(b"x")
                    with trio.move_on_after(0.1):
                        if not await stream.receive_some(4096):
                            return True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return True
        return False

    async def slowloris(self, source: str, hold: float = 8.0, cut_wait: float = 2.0) -> None:
        """One byte every 100 ms, never a whole line; give up after ``hold`` s, reconnect.

        Cut at a phase end, a connection is not simply dropped (its outcome
        unknown): a non-blocking read first tells whether the server had
        closed it already, and if not the trickle goes on (shielded) for up
        to ``cut_wait`` s -- past ``--min-receive-grace`` and a reaper tick --
        so the server's judgement is seen.  ``cut_open``: it was not.
        Closes during a drain (the connection's lifetime overlaps one) are
        ``closed_in_drain``: the drain or the rate check may have closed it.
        """
        tally = self.tallies["slowloris"]
        while True:
            stream = await self._connect(tally, source, self.plain)
            if stream is None:
                continue
            started = time.monotonic()
            outcome = ""
            try:
                closed = await self._trickle(stream, hold)
                outcome = "closed_by_server" if closed else "gave_up"
            finally:
                with trio.CancelScope(shield=True):
                    if not outcome:  # cut by the end of a phase
                        closed = bool(closed_by_peer(stream)) or await self._trickle(
                            stream, cut_wait
                        )
                        outcome = "closed_by_server" if closed else "cut_open"
                    if outcome == "closed_by_server" and self.drains.overlaps(
                        started, time.monotonic()
                    ):
                        outcome = "closed_in_drain"
                    tally.count(outcome)
                    await trio.aclose_forcefully(stream)

    async def slow_reader(self, source: str, hold: float = 6.0, early: float = 2.0) -> None:
        """Ask for a big reply and do not read it for ``hold`` s; then read it to the end.

        The server's idle timeout closes every one it served (no bytes move
        while we hold, and after the reply it waits for a request that never
        comes): ``closed_by_server`` / ``reset_by_server`` outside drains are
        ``idle_closed``.  Cut at a phase end, one held less than ``early`` s
        (under the idle timeout) is ``cut_early`` -- not idle yet -- and the
        others are read to the end (shielded), as after the hold.
        """
        tally = self.tallies["slow_reader"]
        while True:
            stream = await self._connect(tally, source, self.plain)
            if stream is None:
                continue
            started = time.monotonic()
            outcome = ""
            got = bytearray()
            try:
                try:
                    await stream.send_all(b"BIG 4000000\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    outcome = "send_failed"
                    continue
                await trio.sleep(hold)
                outcome = await self._read_big(stream, started, got)
            finally:
                with trio.CancelScope(shield=True):
                    if not outcome:  # cut by the end of a phase
                        if time.monotonic() - started < early:
                            outcome = "cut_early"
                        else:
                            outcome = await self._read_big(stream, started, got)
                    tally.count(outcome)
                    await trio.aclose_forcefully(stream)

    async def _read_big(self, stream: trio.SocketStream, started: float, got: bytearray) -> str:
        """Read a slow reader's reply (into ``got``) to end-of-file: its outcome."""
        how = "timeout"
        with trio.move_on_after(self.idle_timeout + 3.0):
            try:
                while len(got) <= MAX_BIG:
                    chunk = await stream.receive_some(1 << 16)
                    if not chunk:
                        how = "eof"
                        break
                    got += chunk
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                how = "reset"
        if big_reply(len(got)) != got:
            return "corrupt"
        if how == "timeout" or len(got) > MAX_BIG:
            reset_close(stream)  # unread data: the close resets anyway
            return "open"
        if self.drains.overlaps(started, time.monotonic()):
            return f"{how}_in_drain"
        return {"eof": "closed_by_server", "reset": "reset_by_server"}[how]

    async def half_closer(self, source: str) -> None:
        """Send a request, ``shutdown(SHUT_WR)``, read the reply to end-of-file and check it."""
        tally = self.tallies["half_closer"]
        while True:
            stream = await self._connect(tally, source, self.plain)
            if stream is None:
                continue
            async with stream:
                line = b"H " + os.urandom(24).hex().encode()
                sent_at = time.monotonic()
                try:
                    await stream.send_all(line + b"\n")
                    await stream.send_eof()
                    data, how = await drain_until_eof(stream, 15.0)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data, how = b"", "reset"
                if data == reply_for(line) and how == "eof":
                    tally.count("ok")
                elif data and not reply_for(line).startswith(data):
                    tally.count("corrupt")
                elif self.drains.covers(sent_at):
                    tally.count(f"drain_{how}")
                elif how == "timeout" and not data:
                    tally.count("stalled")
                else:
                    tally.count(f"lost_{how}")

    async def resetter(self, source: str) -> None:
        """Reset connections mid-request and mid-reply, alternately.

        ``reset_mid_reply``: part of the reply had arrived (so the handler
        was sending, or done and waiting for the next request) when we reset,
        outside any drain: the server must count it in ``resets``.
        """
        tally = self.tallies["resetter"]
        mid_reply = False
        while True:
            mid_reply = not mid_reply
            stream = await self._connect(tally, source, self.plain)
            if stream is None:
                continue
            started = time.monotonic()
            try:
                if mid_reply:
                    await stream.send_all(b"BIG 1000000\n")
                    chunk = None
                    with trio.move_on_after(10.0):
                        chunk = await stream.receive_some(65536)
                    if chunk is None:
                        tally.count("reset_unanswered")
                    elif not chunk:
                        tally.count("closed_by_server")
                    elif self.drains.overlaps(started, time.monotonic()):
                        tally.count("reset_mid_reply_in_drain")
                    else:
                        tally.count("reset_mid_reply")
                else:
                    await stream.send_all(b"RST partial request")
                    await trio.sleep(0.05)
                    tally.count("reset_mid_request")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                tally.count("reset_by_server")
            finally:
                reset_close(stream)
            await trio.sleep(0.05)

    async def silent_tls(self, source: str) -> None:
        """Connect to the TLS server and send nothing: its handshake timeout must close us."""
        tally = self.tallies["silent_tls"]
        while True:
            stream = await self._connect(tally, source, self.tls)
            if stream is None:
                continue
            async with stream:
                _, how = await drain_until_eof(stream, 3 * self.handshake_timeout + 10.0)
                tally.count("timeout" if how == "timeout" else "closed_by_server")

    async def plain_to_tls(self, source: str) -> None:
        """Speak plain text to the TLS server: it must fail the handshake and close."""
        tally = self.tallies["plain_to_tls"]
        while True:
            stream = await self._connect(tally, source, self.tls)
            if stream is None:
                continue
            async with stream:
                try:
                    await stream.send_all(b"HELLO this is not TLS\r\n\r\n")
                    _, how = await drain_until_eof(stream, 15.0)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    how = "reset"
                tally.count("timeout" if how == "timeout" else "closed_by_server")
            await trio.sleep(0.3)

    async def _one_shot(
        self,
        tally: Tally,
        source: str,
        payload: bytes,
        answered: str,
        unanswered: str,
        address: tuple[str, int] | None = None,
    ) -> None:
        """Connect, send ``payload``, wait for the end: ``answered`` if any reply came."""
        stream = await self._connect(tally, source, address or self.plain)
        if stream is None:
            return
        async with stream:
            try:
                if payload:
                    await stream.send_all(payload)
                data, how = await drain_until_eof(stream, 20.0)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data, how = b"", "reset"
            if data:
                tally.count(answered)
            else:
                tally.count("timeout" if how == "timeout" else unanswered)

    async def long_line(self, source: str) -> None:
        """A line longer than the handler's limit: the connection must be closed unanswered."""
        tally = self.tallies["long_line"]
        while True:
            await self._one_shot(tally, source, b"L" * 2000 + b"\n", "replied", "closed")
            await trio.sleep(0.3)

    async def denied(self) -> None:
        """Connect from the denied address: refused (reset) before any handler runs."""
        tally = self.tallies["denied"]
        while True:
            await self._one_shot(tally, DENIED, b"PING\n", "served", "refused")
            await trio.sleep(0.2)

    def _header(self, client: str) -> bytes:
        port = self.rng.randrange(1024, 65536)
        make = proxy_v1 if self.rng.random() < 0.5 else proxy_v2
        return make((client, port), self.proxy)

    async def proxy_garbage(self) -> None:
        """From the trusted proxy, bytes that are no PROXY header: the stage fails, closed."""
        tally = self.tallies["proxy_garbage"]
        while True:
            payload = self.rng.choice(GARBAGE)
            await self._one_shot(
                tally, TRUSTED_PROXY, payload, "replied", "closed", address=self.proxy
            )
            await trio.sleep(0.3)

    async def proxy_denied(self) -> None:
        """From the trusted proxy, a valid header naming the denied address: refused."""
        tally = self.tallies["proxy_denied"]
        while True:
            payload = self._header(DENIED) + b"PING\n"
            await self._one_shot(
                tally, TRUSTED_PROXY, payload, "served", "refused", address=self.proxy
            )
            await trio.sleep(0.5)

    async def proxy_untrusted(self) -> None:
        """A valid header and a request from a source not trusted: refused at accept."""
        tally = self.tallies["proxy_untrusted"]
        source = str(SOURCES["proxy_untrusted"])
        while True:
            payload = self._header(PROXY_CLIENT) + b"PING\n"
            await self._one_shot(tally, source, payload, "served", "refused", address=self.proxy)
            await trio.sleep(0.3)
