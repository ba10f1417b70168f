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
from .handler import big_reply, reply_for
from .net import (
    CONNECT_ERRORS,
    Tallies,
    Tally,
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
    rng: random.Random = field(default_factory=random.Random)

    async def _connect(
        self, tally: Tally, source: str, address: tuple[str, int], timeout: float = 10.0
    ) -> trio.SocketStream | None:
        """Connect, counting a failure as ``connect_refused`` / ``connect_timeout``."""
        tally.attempts += 1
        try:
            return await connect_from(source, address, timeout)
        except ConnectionResetError:
            tally.count("connect_reset")  # accepted and reset before connect() returned
        except CONNECT_ERRORS:
            tally.count("connect_refused")
        except (trio.TooSlowError, OSError):
            tally.count("connect_timeout")
        await trio.sleep(0.1)
        return None

    async def slowloris(self, source: str, hold: float = 8.0) -> None:
        """One byte every 100 ms, never a whole line; give up after ``hold`` s, reconnect."""
        tally = self.tallies["slowloris"]
        while True:
            stream = await self._connect(tally, source, self.plain)
            if stream is None:
                continue
            async with stream:
                closed = trio.Event()

                async def watch(
                    stream: trio.SocketStream = stream, closed: trio.Event = closed
                ) -> None:
                    await drain_until_eof(stream, hold + 5.0)
                    closed.set()

                started = time.monotonic()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch)
                    outcome = "gave_up"
                    with trio.move_on_after(hold):
                        try:
                            while not closed.is_set():
                                await stream.send_all(b"x")
                                with trio.move_on_after(0.1):
                                    await closed.wait()
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                        outcome = "closed_by_server"
                    if outcome == "closed_by_server" and self.drains.covers(started):
                        outcome = "closed_in_drain"
                    tally.count(outcome)
                    nursery.cancel_scope.cancel()

    async def slow_reader(self, source: str, hold: float = 6.0) -> None:
        """Ask for a big reply and do not read it for ``hold`` s; then see what is left."""
        tally = self.tallies["slow_reader"]
        while True:
            stream = await self._connect(tally, source, self.plain)
            if stream is None:
                continue
            async with stream:
                try:
                    await stream.send_all(b"BIG 4000000\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    tally.count("reset_by_server")
                    continue
                await trio.sleep(hold)
                data, how = await drain_until_eof(stream, 5.0)
                if big_reply(len(data)) != data:
                    tally.count("corrupt")
                else:
                    tally.count(
                        {"eof": "closed_by_server", "reset": "reset_by_server"}.get(how, "open")
                    )
                if how in ("timeout", "limit"):
                    reset_close(stream)  # unread data: the close resets anyway

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
        """Reset connections mid-request and mid-reply, alternately."""
        tally = self.tallies["resetter"]
        mid_reply = False
        while True:
            mid_reply = not mid_reply
            stream = await self._connect(tally, source, self.plain)
            if stream is None:
                continue
            try:
                if mid_reply:
                    await stream.send_all(b"BIG 1000000\n")
                    with trio.move_on_after(10.0):
                        await stream.receive_some(65536)
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

    async def flood(self, category: str, sources: list[str], per_source: int) -> None:
        """Open ``per_source`` connections from each source at once; each asks for one reply.

        Outcomes: ``served`` (the reply came), ``refused`` (reset or closed
        with no reply: the per-host limit), ``timeout``.  Served connections
        stay open until every one has its outcome, so the per-host count
        stays up (the idle timeout may close them first: they were served).
        """
        tally = self.tallies[category]
        done = trio.Event()
        remaining = len(sources) * per_source

        async def one(source: str) -> None:
            nonlocal remaining
            stream = await self._connect(tally, source, self.plain, timeout=20.0)
            try:
                if stream is None:
                    return
                async with stream:
                    line = b"F " + os.urandom(8).hex().encode()
                    data, how = b"", "timeout"
                    with trio.move_on_after(20.0):
                        try:
                            await stream.send_all(line + b"\n")
                            while len(data) < len(reply_for(line)):
                                chunk = await stream.receive_some(4096)
                                if not chunk:
                                    how = "eof"
                                    break
                                data += chunk
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            how = "reset"
                    if data == reply_for(line):
                        tally.count("served")
                    elif data:
                        tally.count("corrupt")
                    else:
                        tally.count("refused" if how != "timeout" else "timeout")
                    remaining -= 1
                    if remaining == 0:
                        done.set()
                    with trio.move_on_after(25.0):
                        await done.wait()
            finally:
                if stream is None:
                    remaining -= 1
                    if remaining == 0:
                        done.set()

        async with trio.open_nursery() as nursery:
            for source in sources:
                for _ in range(per_source):
                    nursery.start_soon(one, source)
