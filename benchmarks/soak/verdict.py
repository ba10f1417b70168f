"""End-of-run checks: client-side outcomes against the servers' counters, canary, logs.

Where a server counter and a client category measure the same thing, the
check is exact, or a range when some clients gave up first (``timeout``:
the server may have counted that connection after the client left, or not).
"""

from __future__ import annotations

from typing import Any

from .checks import check
from .net import Tallies

__all__ = ["counter_checks", "client_checks"]


def _connected(tallies: Tallies, category: str) -> int:
    tally = tallies[category]
    failed = tally.outcomes["connect_refused"] + tally.outcomes["connect_timeout"]
    return tally.attempts - failed


def _unknown(tallies: Tallies, category: str) -> int:
    """Connections whose outcome no one saw: timed out, or cut by the end of a phase."""
    tally = tallies[category]
    return tally.outcomes["timeout"] + max(0, tally.attempts - sum(tally.outcomes.values()))


def _refused(tallies: Tallies, category: str) -> int:
    """Refusals seen: a reset or close with no reply, or a reset before connect() returned."""
    outcomes = tallies[category].outcomes
    return outcomes["refused"] + outcomes["connect_reset"]


def _range(name: str, value: int, low: int, high: int, what: str) -> dict[str, Any]:
    exact = (
        "exact" if low == high else f"range [{low}, {high}]: {high - low} client(s) gave up first"
    )
    return check(name, low <= value <= high, f"server {value}; clients {what} ({exact})")


#: Outcomes after which the client closed a connection the server may still
#: have held (it gave up, timed out or was cut): the server may count a reset.
_ABANDONED = ("stalled", "timeout", "gave_up", "closed_in_drain", "drain_unanswered", "failed")


def _cut(tallies: Tallies, category: str) -> int:
    """Connections of ``category`` with no outcome: cut by the end of a phase."""
    tally = tallies[category]
    return max(0, tally.attempts - sum(tally.outcomes.values()))


def counter_checks(tallies: Tallies, delta: dict[str, int]) -> list[dict[str, Any]]:
    """Client outcomes against the server's counter changes since the baseline."""
    out = []
    denied = _refused(tallies, "denied") + _refused(tallies, "proxy_denied")
    unknown = _unknown(tallies, "denied") + _unknown(tallies, "proxy_denied")
    out.append(
        _range(
            "denied connects (direct and by PROXY header) == rejected_access",
            delta.get("rejected_access", 0),
            denied,
            denied + unknown,
            f"refused {_refused(tallies, 'denied')} direct + "
            f"{_refused(tallies, 'proxy_denied')} by header, unknown {unknown}",
        )
    )
    long, unknown = tallies["long_line"].outcomes["closed"], _unknown(tallies, "long_line")
    out.append(
        _range(
            "long lines == protocol_errors",
            delta.get("protocol_errors", 0),
            long,
            long + unknown,
            f"closed {long}, unknown {unknown}",
        )
    )
    floods = ("flood_per_host", "flood_connections")
    refused = sum(_refused(tallies, name) for name in floods)
    unknown = sum(_unknown(tallies, name) for name in floods)
    out.append(
        _range(
            "per-host refusals == rejected_limit",
            delta.get("rejected_limit", 0),
            refused,
            refused + unknown,
            f"refused {refused} (per-host flood {_refused(tallies, 'flood_per_host')}), "
            f"unknown {unknown}",
        )
    )
    silent, plain_tls = tallies["silent_tls"].outcomes, tallies["plain_to_tls"].outcomes
    aborted = tallies["canary_tls"].outcomes["handshake_aborted"]
    low = silent["closed_by_server"] + plain_tls["closed_by_server"] + aborted
    # A canary handshake the server cut (``connect_timeout``): a TLS failure, or a drain's.
    cut_tls = tallies["canary_tls"].outcomes["connect_timeout"]
    high = (
        _connected(tallies, "silent_tls") + _connected(tallies, "plain_to_tls") + aborted + cut_tls
    )
    tls_failures = delta.get("tls_failures", 0)
    out.append(
        _range(
            "silent + plain-text TLS clients == tls_failures",
            tls_failures,
            low,
            high,
            f"silent {silent['closed_by_server']} closed, plain {plain_tls['closed_by_server']} "
            f"closed, canary handshakes given up {aborted}, cut by the server {cut_tls}",
        )
    )
    garbage = tallies["proxy_garbage"].outcomes["closed"]
    unknown = _unknown(tallies, "proxy_garbage")
    proxy_stages = delta.get("stage_failures", 0) - tls_failures
    out.append(
        _range(
            "garbage PROXY headers == stage_failures - tls_failures",
            proxy_stages,
            garbage,
            garbage + unknown,
            f"closed {garbage}, unknown {unknown}",
        )
    )
    untrusted = _refused(tallies, "proxy_untrusted")
    unknown = _unknown(tallies, "proxy_untrusted")
    out.append(
        _range(
            "untrusted PROXY sources == proxy_failures - PROXY stage failures",
            delta.get("proxy_failures", 0) - proxy_stages,
            untrusted,
            untrusted + unknown,
            f"refused {untrusted}, unknown {unknown}",
        )
    )
    loris = tallies["slowloris"].outcomes
    closed = loris["closed_by_server"]
    maybe = loris["closed_in_drain"] + loris["gave_up"] + _cut(tallies, "slowloris")
    out.append(
        _range(
            "slowloris closed by the server == slow_closed",
            delta.get("slow_closed", 0),
            closed,
            closed + maybe,
            f"closed {closed} outside drains; in drains, given up or cut {maybe}",
        )
    )
    out.append(
        check(
            "slow-sender defence closed slowloris clients",
            delta.get("slow_closed", 0) > 0 and closed > 0,
            f"slow_closed {delta.get('slow_closed', 0)}, clients closed {closed}",
        )
    )
    resetting = _connected(tallies, "resetter") + _connected(tallies, "slow_reader")
    abandoned = sum(
        _cut(tallies, name) + sum(tallies[name].outcomes[o] for o in _ABANDONED)
        for name in list(tallies)
        if name not in ("resetter", "slow_reader")
    )
    out.append(
        check(
            "resets <= resetter + slow-reader + abandoned connections",
            delta.get("resets", 0) <= resetting + abandoned,
            f"server resets {delta.get('resets', 0)}; resetter and slow-reader connections "
            f"{resetting}, others given up or cut mid-exchange (unread data: a reset) "
            f"{abandoned}",
        )
    )
    out.append(
        check(
            "no handler errors",
            delta.get("handler_errors", 0) == 0,
            f"handler_errors {delta.get('handler_errors', 0)}",
        )
    )
    return out


def client_checks(tallies: Tallies) -> list[dict[str, Any]]:
    """What clients saw that no server counter needs: bad replies, wrong admissions."""
    out = []
    expect_no = {
        "denied": ("served", "an address the policy denies was served"),
        "long_line": ("replied", "a line over the limit got a reply"),
        "proxy_garbage": ("replied", "a connection with no valid PROXY header was served"),
        "proxy_denied": ("served", "a header naming a denied address was served"),
        "proxy_untrusted": ("served", "a PROXY header from an untrusted source was served"),
    }
    for category, (outcome, what) in expect_no.items():
        n = tallies[category].outcomes[outcome]
        out.append(check(f"{category}: never {outcome}", n == 0, f"{n}: {what}" if n else "0"))
    for category in ("half_closer", "slow_reader", "flood_connections", "flood_per_host", "probe"):
        outcomes = tallies[category].outcomes
        bad = {k: v for k, v in outcomes.items() if k == "corrupt" or k.startswith("lost")}
        out.append(
            check(
                f"{category}: replies intact",
                not bad,
                f"{sum(outcomes.values())} outcomes {dict(outcomes)}",
            )
        )
    half = tallies["half_closer"].outcomes
    out.append(check("half_closer: served", half["ok"] > 0, f"ok {half['ok']}"))
    return out
