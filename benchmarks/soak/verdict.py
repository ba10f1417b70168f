"""End-of-run checks: client-side outcomes against the servers' counters, canary, logs.

Where a server counter and a client category measure the same thing, the
check is exact, or a range when some clients gave up first (``timeout``:
the server may have counted that connection after the client left, or not).
"""

from __future__ import annotations

from typing import Any

from .checks import check
from .net import Tallies

__all__ = ["client_checks", "counter_checks", "idle_check"]


def _connected(tallies: Tallies, category: str) -> int:
    tally = tallies[category]
    failed = tally.outcomes["connect_refused"] + tally.outcomes["connect_timeout"]
    return tally.attempts - failed


def _unknown(tallies: Tallies, category: str) -> int:
    """Connections whose outcome no one saw: timed out, or cut by the end of a phase."""
    tally = tallies[category]
    cut = tally.outcomes["cut_connecting"] + max(0, tally.attempts - sum(tally.outcomes.values()))
    return tally.outcomes["timeout"] + cut


def _refused(tallies: Tallies, category: str) -> int:
    """Refusals seen: a reset or close with no reply, or a reset before connect() returned."""
    outcomes = tallies[category].outcomes
    return outcomes["refused"] + outcomes["connect_reset"]


def _range(name: str, value: int, low: int, high: int, what: str) -> dict[str, Any]:
    exact = "exact" if low == high else f"range [{low}, {high}]: {high - low} unknown"
    return check(name, low <= value <= high, f"server {value}; clients {what} ({exact})")


#: Outcomes after which the client closed a connection the server may still
#: have held (it gave up, timed out or was cut): the server may count a reset.
_ABANDONED = (
    "stalled",
    "timeout",
    "gave_up",
    "closed_in_drain",
    "drain_unanswered",
    "failed",
    "cut_open",
    "cut_unserved",
    "not_closed",
)


def _cut(tallies: Tallies, category: str) -> int:
    """Connections of ``category`` cut by the end of a phase with no outcome, or connecting."""
    tally = tallies[category]
    return tally.outcomes["cut_connecting"] + max(0, tally.attempts - sum(tally.outcomes.values()))


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
    # Cut while connecting: not a byte sent, so no rate to judge -- not counted.
    no_outcome = max(0, tallies["slowloris"].attempts - sum(loris.values()))
    maybe = loris["closed_in_drain"] + loris["gave_up"] + loris["cut_open"] + no_outcome
    out.append(
        _range(
            "slowloris closed by the server == slow_closed",
            delta.get("slow_closed", 0),
            closed,
            closed + maybe,
            f"closed {closed} outside drains; maybe: closed during a drain "
            f"{loris['closed_in_drain']}, given up after the hold (queued in the kernel) "
            f"{loris['gave_up']}, open when cut at a phase end {loris['cut_open']}, "
            f"no outcome {no_outcome} (cut while connecting, not counted: "
            f"{loris['cut_connecting']})",
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
    # The lower bound: a reset after part of the reply had arrived (outside
    # drains) hit a handler that was sending or waiting for the next request.
    mid_reply = tallies["resetter"].outcomes["reset_mid_reply"]
    resets = delta.get("resets", 0)
    out.append(
        check(
            "mid-reply resets <= resets <= resetter + slow-reader + abandoned connections",
            mid_reply <= resets <= resetting + abandoned,
            f"server resets {resets}; at least the resetters' mid-reply resets outside drains "
            f"{mid_reply}; at most resetter and slow-reader connections {resetting} + others "
            f"given up or cut mid-exchange (unread data: a reset) {abandoned}",
        )
    )
    out.append(idle_check(tallies, delta.get("idle_closed", 0)))
    out.append(
        check(
            "no handler errors",
            delta.get("handler_errors", 0) == 0,
            f"handler_errors {delta.get('handler_errors', 0)}",
        )
    )
    return out


def idle_check(tallies: Tallies, idle_closed: int) -> dict[str, Any]:
    """Idlers, slow readers and held flood connections the server closed == ``idle_closed``.

    Exact when each saw its close (``idle.py``, ``Clients.slow_reader``);
    the range's width is named: slow readers whose connection was open
    during a drain (the drain or the idle timeout closed it), slow readers
    and idlers the server had not closed within the idle timeout + 5 s, and
    held flood connections likewise.
    """
    idler = tallies["idler"].outcomes
    reader = tallies["slow_reader"].outcomes
    held = tallies["flood_held"].outcomes
    seen = {
        "idlers": idler["idle_closed"],
        "slow readers": reader["closed_by_server"] + reader["reset_by_server"],
        "held flood connections": held["idle_closed"],
    }
    unknown = {
        "slow readers in a drain": reader["eof_in_drain"] + reader["reset_in_drain"],
        "slow readers still open": reader["open"],
        "idlers not closed in time": idler["not_closed"],
        "held flood connections not closed in time": held["not_closed"],
        "slow readers with no outcome": max(
            0, tallies["slow_reader"].attempts - sum(reader.values())
        ),
    }
    low = sum(seen.values())
    what = ", ".join(f"{k} {v}" for k, v in seen.items())
    maybe = ", ".join(f"{k} {v}" for k, v in unknown.items() if v)
    return _range(
        "idlers + slow readers + held flood connections closed by the server == idle_closed",
        idle_closed,
        low,
        low + sum(unknown.values()),
        what + (f"; maybe: {maybe}" if maybe else ""),
    )


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
    for category in (
        "half_closer",
        "slow_reader",
        "flood_connections",
        "flood_per_host",
        "probe",
        "idler",
    ):
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
