"""What a won connection does before ``connect`` returns it: a PROXY header, a TLS handshake.

Both run under the connect's deadline, after the happy-eyeballs race picked
a socket, in wire order: the PROXY header (``proxy_header=``) precedes the
ClientHello.  A failure is recorded as an attempt of the round, and the
connection closed; only a certificate failure is final (no retry can change
it).
"""

from __future__ import annotations

import ssl

import trio

from .._address import Address
from .._stream import Connection
from .._stream._hooks import handshake
from .._stream._preamble import send_preamble
from ._attempts import Run
from ._plan import ConnectPlan

__all__ = ["finish"]


async def finish(
    run: Run, plan: ConnectPlan, conn: Connection, display: Address, round_: int
) -> bool:
    """Send the PROXY header and shake hands; False if either failed (recorded, closed)."""
    if plan.proxy_header is not None and not await _send_header(
        run, conn, plan.proxy_header, display, round_
    ):
        return False
    if plan.tls is None:
        return True
    return await _shake_hands(run, conn, display, round_)


async def _send_header(
    run: Run, conn: Connection, header: bytes, display: Address, round_: int
) -> bool:
    attempt = run.begin(display, round_)
    try:
        await send_preamble(conn, header)
    except (OSError, trio.BrokenResourceError) as exc:
        conn.close()
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
        run.end(attempt, "failed", cause or OSError(str(exc)), retryable=True)
        return False
    except BaseException:
        conn.close()
        run.end_interrupted(attempt, winner_found=False)
        raise
    run.attempts.remove(attempt)  # the connect's own record says "connected"
    return True


async def _shake_hands(run: Run, conn: Connection, display: Address, round_: int) -> bool:
    """The TLS handshake of a won connection, under the connect deadline.

    False (the failure recorded, the connection closed) if it failed; a
    certificate failure can never change, so it is not retried.
    """
    attempt = run.begin(display, round_)
    try:
        await handshake(conn)
    except trio.BrokenResourceError as exc:
        conn.close()
        cause = exc.__cause__
        error = cause if isinstance(cause, OSError) else OSError(str(exc))
        retryable = not isinstance(cause, ssl.SSLCertVerificationError)
        run.end(attempt, "failed", error, retryable=retryable)
        run.handshake_error = error
        return False
    except BaseException:
        conn.close()
        run.end_interrupted(attempt, winner_found=False)
        raise
    run.attempts.remove(attempt)  # the connect's own record says "connected"
    return True
