"""trionet echo server (default configuration, or ``--all-on``)."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import trio
from _common import BACKLOG, announce, raise_nofile_limit, server_args

import trionet


async def handler(conn: trionet.Connection) -> None:
    async for chunk in conn:  # chunks of up to 64 KiB
        await conn.send_all(chunk)


def all_on_options(host: str) -> dict[str, Any]:
    """Every admission/accounting feature switched on, none of them limiting."""
    allow = ["::1/128"] if ":" in host else ["127.0.0.0/8"]
    options: dict[str, Any] = {
        "access": trionet.AccessPolicy(allow=allow, deny=["10.0.0.0/8"]),
        "max_connections": 20000,
        "max_connections_per_host": 20000,
        "idle_timeout": 300.0,
    }
    # Per-server statistics, if this version of trionet makes them optional.
    if "stats" in inspect.signature(trionet.serve).parameters:
        options["stats"] = True
    return options


async def main(host: str, port: int, all_on: bool) -> None:
    options = all_on_options(host) if all_on else {}
    target = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(trionet.serve, handler, target, backlog=BACKLOG, **options)
        )
        announce(server.addresses[0].port)


if __name__ == "__main__":
    parser = server_args(__doc__ or "")
    parser.add_argument(
        "--all-on", action="store_true", help="access policy, limits, idle timeout, stats"
    )
    args = parser.parse_args()
    raise_nofile_limit()
    trio.run(main, args.host, args.port, args.all_on)
