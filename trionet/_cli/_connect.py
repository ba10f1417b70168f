"""``trionet connect``: copy stdin to the peer and the peer to stdout, like netcat.

When stdin ends the sending side is half-closed; the command exits when the
peer closes the connection, or at once when whoever reads stdout has gone.
With ``--tls`` there is no half-close (TLS has none here): the end of stdin
leaves the connection open, and the command prints what the peer sends until
the peer closes it (or Ctrl-C), like ``openssl s_client -ign_eof``.

Design notes
============

Why threads for stdin/stdout instead of ``trio.lowlevel.FdStream``?
``FdStream`` puts the descriptor in non-blocking mode, and that flag lives on
the *open file description*, which a terminal shares with the shell and with
our own stderr: a tty left non-blocking makes other writers fail with
EAGAIN.  Plain blocking reads in a worker thread work the same for a tty, a
pipe, a regular file and /dev/null.  A read blocked on a terminal cannot be
interrupted, so it is abandoned on cancellation (abandon_on_cancel=True);
that is harmless, because the command exits right after.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
from typing import Any, Final

import trio

from .._client import ConnectPlan, connect_with_plan, make_plan
from .._exceptions import ConnectError
from .._stream import Connection
from .._unwrap import unwrap_single
from ._errors import EXIT_OK, EXIT_USAGE, CLIError
from ._signals import DroppedInterrupts
from ._tls import client_context

log = logging.getLogger("trionet.cli")

__all__ = ["run_connect"]

_READ_SIZE: Final = 65536


def _read_stdin(fd: int) -> bytes:
    try:
        return os.read(fd, _READ_SIZE)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            return b""  # no stdin at all (closed descriptor): nothing to send
        raise CLIError(f"cannot read stdin: {exc.strerror or exc}") from None


def _write_stdout(fd: int, data: bytes) -> bool:
    """Write all of ``data``; False if the reader of stdout has gone away (EPIPE)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        # ``trionet connect ... | head``: the reader has all it wanted.  Like
        # netcat (and like any filter killed by SIGPIPE, which Python ignores
        # in favour of EPIPE), that is a quiet end, not an error.
        return False
    except OSError as exc:
        raise CLIError(f"cannot write stdout: {exc.strerror or exc}") from None
    return True


async def _stdin_to_peer(conn: Connection, fd: int) -> None:
    while True:
        data = await trio.to_thread.run_sync(_read_stdin, fd, abandon_on_cancel=True)
        if not data:
            break
        try:
            await conn.send_all(data)
        except trio.BrokenResourceError:
            # The peer is gone; the receiving side reports how it ended.
            return
    if conn.tls is not None:
        # TLS has no half-close: keep the connection and print what the peer
        # sends until it closes (like ``openssl s_client -ign_eof``).
        log.info("stdin ended; TLS has no half-close: reading until the peer closes")
        return
    try:
        await conn.send_eof()
    except trio.BrokenResourceError:
        return


async def _peer_to_stdout(conn: Connection, fd: int) -> None:
    while True:
        try:
            data = await conn.receive_some()
        except trio.BrokenResourceError as exc:
            if conn.tls is not None:
                # e.g. "the peer ended the TLS stream without close_notify"
                raise CLIError(f"connection to {conn.peer}: {exc}") from None
            raise CLIError(f"connection to {conn.peer} was reset by the peer") from None
        if not data:
            return
        if not await trio.to_thread.run_sync(_write_stdout, fd, data):
            # Whoever read our output has gone (``| head``): like netcat,
            # stop at once -- no lingering close for a conversation nobody
            # is listening to any more.
            log.info("stdout was closed by its reader; closing the connection")
            conn.close()
            return


async def _connect(
    plan: ConnectPlan, stdin: int, stdout: int, interrupts: DroppedInterrupts
) -> None:
    interrupts.check()  # as in _serve
    conn = await connect_with_plan(plan)
    log.info("connected to %s from %s", conn.peer, conn.local)
    async with conn:
        with unwrap_single():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stdin_to_peer, conn, stdin)
                await _peer_to_stdout(conn, stdout)
                # The peer closed, or stdout did: stop reading stdin, even a
                # terminal.
                nursery.cancel_scope.cancel()


def run_connect(args: argparse.Namespace, interrupts: DroppedInterrupts) -> int:
    options: dict[str, Any] = {}
    if args.timeout is not None:
        options["timeout"] = args.timeout
    if args.local_address is not None:
        options["local_address"] = args.local_address
    if args.close_linger is not None:
        options["close_linger"] = args.close_linger
    context = client_context(args)
    if context is not None:
        options["tls"] = context
        if args.server_name is not None:
            options["server_hostname"] = args.server_name
    # Every argument is checked before any I/O, and whatever the checks
    # refuse is a usage error -- one line, exit 2 -- never a traceback.
    try:
        plan = make_plan(args.target, **options)
    except (ValueError, TypeError) as exc:  # InvalidAddress is a ValueError
        raise CLIError(str(exc), EXIT_USAGE) from None
    try:
        trio.run(_connect, plan, 0, 1, interrupts, restrict_keyboard_interrupt_to_checkpoints=True)
    except ConnectError as exc:  # ConnectTimeout included
        raise CLIError(str(exc)) from None
    return EXIT_OK
