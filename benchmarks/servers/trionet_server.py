"""trionet echo server (default configuration, ``--all-on``, or variants).

Usage::

    trionet_server.py                          # idiomatic ``async for`` handler
    trionet_server.py --fixed-reads            # receive_some(65536) / send_all
    trionet_server.py --all-on                 # every admission feature on
    trionet_server.py --all-on-except idle     # ... but one (access|limits|idle)
    trionet_server.py --schedule-budget 8      # cooperative budget (default 1)
    trionet_server.py --tls-cert F --tls-key F # any of the above over TLS (tls= option)
    trionet_server.py --proxy-protocol         # any of the above behind a load balancer:
                                               # proxy_protocol="required",
                                               # trusted_proxies=["127.0.0.0/8"]
"""

from __future__ import annotations

import functools
import inspect
import ssl
from typing import Any

import trio
from _common import (
    BACKLOG,
    CHUNK,
    add_tls_args,
    announce,
    raise_nofile_limit,
    server_args,
    tls_context,
)

import trionet

#: The clients the load generator's PROXY headers name (``--proxy-v2``: TEST-NET-1).
PROXY_CLIENTS = "192.0.2.0/24"

#: The option names of each feature that ``--all-on-except`` can leave out.
FEATURES: dict[str, tuple[str, ...]] = {
    "access": ("access",),
    "limits": ("max_connections", "max_connections_per_host"),
    "idle": ("idle_timeout",),
}


async def handler(conn: trionet.Connection) -> None:
    # Idiomatic trionet: ``async for`` reads adapt their size -- 64 KiB at
    # first, doubling up to 256 KiB while every read fills the buffer (bulk
    # streams), halving again when reads come back small.  ``--fixed-reads``
    # (peer ``trionet-64k``) isolates that effect.
    async for chunk in conn:
        await conn.send_all(chunk)


async def fixed_reads_handler(conn: trionet.Connection) -> None:
    # The shape every other peer uses: read up to 64 KiB, write it back.
    while data := await conn.receive_some(CHUNK):
        await conn.send_all(data)


def loopback_cidr(host: str) -> str:
    """The loopback network of ``host``: where the load generator connects from."""
    return "::1/128" if ":" in host else "127.0.0.0/8"


def all_on_options(
    host: str, except_feature: str | None = None, proxy: bool = False
) -> dict[str, Any]:
    """Every admission/accounting feature switched on, none of them limiting.

    ``proxy``: the access policy runs on the clients the PROXY headers name
    (after the header), so it allows those too.
    """
    allow = [loopback_cidr(host), *([PROXY_CLIENTS] if proxy else [])]
    options: dict[str, Any] = {
        "access": trionet.AccessPolicy(allow=allow, deny=["10.0.0.0/8"]),
        "max_connections": 20000,
        "max_connections_per_host": 20000,
        "idle_timeout": 300.0,
    }
    for name in FEATURES.get(except_feature or "", ()):
        del options[name]
    # Per-server statistics, if this version of trionet makes them optional.
    if "stats" in inspect.signature(trionet.serve).parameters:
        options["stats"] = True
    return options


async def main(
    host: str,
    port: int,
    all_on: bool,
    except_feature: str | None,
    budget: int | None,
    fixed: bool,
    ctx: ssl.SSLContext | None,
    proxy: bool = False,
) -> None:
    options = all_on_options(host, except_feature, proxy) if all_on or except_feature else {}
    if proxy:  # a trionet without PROXY support fails in serve(): unknown option(s)
        options["proxy_protocol"] = "required"
        options["trusted_proxies"] = [loopback_cidr(host)]
    if budget is not None:  # trionet checks it (and knows its own default)
        options["schedule_budget"] = budget
    if ctx is not None:  # a trionet without TLS fails here: "unknown option 'tls'"
        options["tls"] = ctx
    target = f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
    serve = functools.partial(
        trionet.serve,
        fixed_reads_handler if fixed else handler,
        target,
        backlog=BACKLOG,
        **options,
    )
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve)
        announce(server.addresses[0].port)


if __name__ == "__main__":
    parser = server_args((__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--all-on", action="store_true", help="access policy, limits, idle timeout, stats"
    )
    parser.add_argument(
        "--all-on-except",
        choices=sorted(FEATURES),
        metavar="FEATURE",
        help="like --all-on, but without one feature: access, limits or idle",
    )
    parser.add_argument(
        "--schedule-budget",
        type=int,
        metavar="N",
        help="trionet's schedule_budget option (default 1: every operation a schedule point)",
    )
    parser.add_argument(
        "--fixed-reads",
        action="store_true",
        help=f"handler loops receive_some({CHUNK}) / send_all instead of `async for`",
    )
    parser.add_argument(
        "--proxy-protocol",
        action="store_true",
        help='every connection starts with a PROXY v1/v2 header: proxy_protocol="required", '
        'trusted_proxies=["127.0.0.0/8"] (["::1/128"] on --host ::1)',
    )
    add_tls_args(parser)
    args = parser.parse_args()
    raise_nofile_limit()
    trio.run(
        main,
        args.host,
        args.port,
        args.all_on,
        args.all_on_except,
        args.schedule_budget,
        args.fixed_reads,
        tls_context(args),
        args.proxy_protocol,
    )
