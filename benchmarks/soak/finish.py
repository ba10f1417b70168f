"""After the timeline: stop the server, gather every check and figure into the result dict."""

from __future__ import annotations

import datetime
import re
import statistics
from typing import Any

import trio

from .bounds import (
    P99_BOUND_MS,
    canary_check,
    fault_kinds_check,
    latency_check,
    rolling_p99,
    stall_check,
    supervisor_checks,
    warning_cap,
)
from .checks import check, scan_log
from .runner import Soak
from .server import BINDS
from .verdict import client_checks, counter_checks

__all__ = ["result_of", "stop_server"]


async def stop_server(soak: Soak) -> None:
    """SIGTERM the server: it must exit 0 and leave a ``stopped`` snapshot."""
    status = await trio.to_thread.run_sync(soak.server.stop)
    final = soak.server.read()
    soak.final = final
    soak.checks.append(check("server: SIGTERM, exit 0", status == 0, f"exit {status}"))
    soak.checks.append(
        check(
            "server: last snapshot says stopped",
            final is not None and final.stopped,
            "stopped" if final is not None and final.stopped else "no stopped snapshot",
        )
    )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))], 3)


def _deltas(soak: Soak, label: str) -> dict[str, int]:
    """Counter changes from the Q0 baseline to the quiet point ``label`` (across restarts)."""
    before = soak.ledger.cumulative_at.get("Q0 baseline", {})
    after = soak.ledger.cumulative_at.get(label, {})
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


def _recovery(soak: Soak) -> tuple[float | None, list[dict[str, Any]]]:
    """Seconds from each descriptor window's end to the first canary reply after it.

    The first reply on a connection opened after the limit was restored (the
    recovery probe) or pending across it (the fresh canary's); the worst
    window's figure, and per window the details.
    """
    details = []
    for end, probes in soak.probes:
        served = [p for p in probes if p.replied is not None]
        probe_first = min((p.replied for p in served if p.replied), default=None)
        fresh_first = soak.canary.first_fresh_ok_after(end)
        firsts = [t for t in (probe_first, fresh_first) if t is not None]
        recovery = round(min(firsts) - end, 3) if firsts else None
        first = served[0] if served else None
        details.append(
            {
                "window_end": round(end - soak.t0, 3),
                "recovery_s": recovery,
                "probe_s": None if probe_first is None else round(probe_first - end, 3),
                "fresh_canary_s": None if fresh_first is None else round(fresh_first - end, 3),
                "probe_attempts": len(probes),
                "first_served_attempt": None
                if first is None
                else {
                    "index": probes.index(first),
                    "started_s": round(first.started - end, 3),
                    "connected_s": None
                    if first.connected is None
                    else round(first.connected - end, 3),
                    "replied_s": None if first.replied is None else round(first.replied - end, 3),
                },
            }
        )
    values = [d["recovery_s"] for d in details]
    worst = None if not values or None in values else max(values)
    return worst, details


def result_of(soak: Soak, started: datetime.datetime, duration: float) -> dict[str, Any]:
    """The result dict (keys: see ``report.py``); ``ok``: every asserted check passed."""
    config = soak.config
    long_run = config.minutes >= 10
    checks = list(soak.checks)
    checks.extend(soak.checker.results())
    deltas = _deltas(soak, "Q3 end")
    checks.extend(counter_checks(soak.tallies, deltas))
    checks.extend(client_checks(soak.tallies))

    exchanges = sum(c.tally.outcomes["ok"] for c in soak.canaries.values())
    lost = sum(c.tally.outcomes["lost"] for c in soak.canaries.values())
    corrupted = sum(c.tally.outcomes["corrupt"] for c in soak.canaries.values())
    checks.append(canary_check(soak.canaries))
    checks.append(stall_check(soak.canaries, soak.fd_windows, soak.t0))
    checks.append(fault_kinds_check(soak.faults.windows, config.workers))
    if config.workers:
        final = soak.final.supervisor if soak.final is not None else None
        try:
            out_text = soak.server.out_path.read_text(errors="replace")
        except OSError:
            out_text = ""
        checks.extend(supervisor_checks(final, out_text))
    latencies = [ms for c in soak.canaries.values() for _, ms in c.latencies]
    faults = [(soak.t0 + w["start"], soak.t0 + w["end"]) for w in soak.faults.windows]
    rolling = rolling_p99((x for c in soak.canaries.values() for x in c.latencies), faults)
    checks.append(latency_check(rolling, config.minutes))
    recovery, recoveries = _recovery(soak)
    checks.append(
        check(
            "recovery after descriptor exhaustion <= 1 s",
            recovery is not None and recovery <= 1.0,
            f"first canary reply {recovery} s after the limit was restored: {recoveries}",
            asserted=long_run,
        )
    )
    checks.append(
        check(
            "canary served again after descriptor exhaustion",
            bool(recoveries) and all(r["recovery_s"] is not None for r in recoveries),
            f"recovery {[r['recovery_s'] for r in recoveries]} s",
        )
    )
    unserved = sum(c.tally.outcomes["drain_unserved"] for c in soak.canaries.values())
    try:
        reports = soak.server.out_path.read_text(errors="replace")
    except OSError:
        reports = ""
    in_stages = sum(int(n) for n in re.findall(r"\bin_stages=(\d+)", reports))
    checks.append(
        check(
            "canary connections a drain closed unserved <= in_stages (shutdown reports)",
            unserved <= in_stages,
            f"canary {unserved}, shutdown reports' in_stages {in_stages}",
        )
    )
    log = scan_log(soak.server.log_path)
    errors, warnings = log["errors"], log["warnings"]
    checks.append(
        check(
            "server log: no ERROR or traceback",
            errors == 0,
            f"{errors}: {log['error_examples'][:3]}",
        )
    )
    cap, formula = warning_cap(duration, len(BINDS), config.workers)
    checks.append(
        check(
            f"server log: WARNING lines <= {cap} (derived from the rate limits)",
            warnings <= cap,
            f"{warnings}: {log['warning_kinds']}; cap {formula}",
        )
    )

    q0, q3 = soak.quiet["Q0 baseline"], soak.quiet["Q3 end"]
    rss_start = soak.rss_baseline.rss if soak.rss_baseline else 0
    rss_end = q3.rss
    growth = round(100.0 * (rss_end - rss_start) / rss_start, 2) if rss_start else 0.0
    checks.append(
        check(
            "RSS growth after warm-up < 5 % (idle at Q2w vs idle at the end)",
            growth < 5.0,
            f"{rss_start} -> {rss_end} bytes ({growth:+.2f} %)",
            asserted=long_run,
        )
    )
    samples = [{k: v for k, v in s.items() if not k.startswith("_")} for s in soak.samples]
    figures = {
        "exchanges": exchanges,
        "lost": lost,
        "corrupted": corrupted,
        "faults": len(soak.faults.windows),
        "fds_baseline": q0.fds,
        "fds_restart_baseline": soak.baseline.fds if soak.baseline else None,
        "fds_peak": max((s["fds"] for s in samples), default=0),
        "fds_final": q3.fds,
        "tasks_baseline": q0.tasks,
        "tasks_restart_baseline": soak.baseline.tasks if soak.baseline else None,
        "tasks_final": q3.tasks,
        "rss_start": rss_start,
        "rss_end": rss_end,
        "rss_growth_pct": growth,
        "canary_p50_ms": _percentile(latencies, 0.5),
        "canary_p99_ms": _percentile(latencies, 0.99),
        "canary_mean_ms": round(statistics.fmean(latencies), 3) if latencies else None,
        "recovery_s": recovery,
        "recoveries": recoveries,
        "canary_p99_rolling_worst_ms": rolling["worst_ms"],
        "canary_p99_bound_ms": P99_BOUND_MS,
        "warnings": warnings,
        "warnings_cap": cap,
        "errors": errors,
        "counter_deltas": deltas,
        "per_process": {
            label: [{"pid": p.pid, "fds": p.fds, "tasks": p.tasks} for p in reading.processes]
            for label, reading in soak.quiet.items()
        },
        "idle_silences_s": [
            round(min(soak.clients.idle_silences), 3) if soak.clients.idle_silences else None,
            round(max(soak.clients.idle_silences), 3) if soak.clients.idle_silences else None,
        ]
        if soak.clients
        else None,
    }
    return {
        "config": {
            "minutes": config.minutes,
            "workers": config.workers,
            "seed": config.seed,
            "slowloris": config.slowloris,
            "serve_flags": config.serve_flags,
        },
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 3),
        "samples": samples,
        "faults": soak.faults.windows,
        "quiet_points": soak.quiet_at,
        "clients": soak.tallies.as_dict(soak.t0),
        "checks": checks,
        "figures": figures,
        "log": log,
        "ok": all(c["ok"] for c in checks if c["asserted"]),
    }
