"""Turn benchmark measurements into JSON, Markdown, reST tables and a chart.

Used by run.py; can also re-render a previous run without measuring again:

    .venv/bin/python benchmarks/report.py benchmarks/results/latest.json [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BEGIN = ".. BEGIN GENERATED RESULTS"
END = ".. END GENERATED RESULTS"
#: A load generator busier than this may itself be the bottleneck.
LG_BUSY = 0.90
#: More CPU than this (in cores) used by other processes disturbs a figure.
OTHER_BUSY = 0.25

Row = dict[str, Any]


# -------------------------------------------------------------- numbers


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "KiB/conn":
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    if unit == "MB/s" and value < 100:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def fmt_ratio(ratio: float | None) -> str:
    return "—" if ratio is None else f"{ratio:.2f}\u00d7"


def fmt_range(ratios: Sequence[float]) -> str:
    """``1.30\u20131.91``: the lowest and highest per-round ratio."""
    return f"{min(ratios):.2f}\u2013{max(ratios):.2f}"


def fmt_ratio_range(row: Row, what: str = "") -> str:
    """``1.61\u00d7 (1.30-1.91)``: mean ratio, then the range of per-round ratios.

    ``what``: a word after the ratio (``0.93\u00d7 plain (0.91-0.95)``).
    """
    text = fmt_ratio(row.get("ratio"))
    if what and row.get("ratio") is not None:
        text += f" {what}"
    ratios = row.get("round_ratios") or []
    if len(ratios) > 1 and not row.get("is_baseline"):
        text += f" ({fmt_range(ratios)})"
    return text


def fmt_pct(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.0f} %"


def fmt_spread(spread: float | None) -> str:
    return "—" if spread is None else f"{spread:.1f} %"


def fmt_us(us: float | None) -> str:
    if us is None:
        return "—"
    return f"{us:.1f}" if us < 100 else f"{us:,.0f}"


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _max(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def _us_per_msg(cpu: float | None, rate: float | None) -> float | None:
    """CPU fraction of a core ÷ messages per second, in µs per message."""
    return cpu / rate * 1e6 if cpu is not None and rate else None


def paired_ratios(row: Row, base: Row) -> list[float]:
    """Round i of ``row`` ÷ round i of ``base``, for every round both have."""
    base_rounds = base.get("by_round") or {}
    return [
        value / base_rounds[rnd]
        for rnd, value in sorted((row.get("by_round") or {}).items())
        if base_rounds.get(rnd)
    ]


def missing_key(peer: str, tls: bool, proxy: bool = False) -> str:
    """Key of ``meta["missing"]``: a peer may start plain but not with TLS or PROXY."""
    return peer + "+tls" * tls + "+proxy" * proxy


def row_name(wl: dict[str, Any], row: Row) -> str:
    """A row's peer in notes: ``trionet with TLS`` for a TLS workload, etc."""
    extras = [name for key, name in (("tls", "TLS"), ("proxy", "PROXY v2")) if wl.get(key)]
    return f"{row['label']} with {' and '.join(extras)}" if extras else str(row["label"])


def ratio_word(wl: dict[str, Any]) -> str:
    """What a workload's ratios are to, when it is not the baseline: ``plain``."""
    return "plain" if wl.get("plain") else ""


def other_cpu(result: dict[str, Any]) -> float | None:
    """CPU used by everything but the server and the load generator, in cores."""
    parts = [result.get(k) for k in ("machine_cpu", "lg_cpu", "srv_cpu")]
    if any(p is None for p in parts):
        return None
    machine, lg, srv = (float(p) for p in parts)  # type: ignore[arg-type]
    return max(0.0, machine - lg - srv)


# -------------------------------------------------------------- summary


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Aggregate per (workload, peer): mean over rounds, spread, ratio."""
    meta = data["meta"]
    missing: dict[str, str] = meta.get("missing", {})
    workloads = []
    for wl in meta["workloads"]:
        client = wl["kind"] == "client"
        all_peers = meta["clients"] if client else meta["peers"]
        # A TLS workload has a row for each peer that serves TLS only; PROXY likewise.
        peers = [p for p in all_peers if p.get("tls")] if wl.get("tls") else all_peers
        if wl.get("proxy"):
            peers = [p for p in peers if p.get("proxy")]
        baseline = meta["client_baseline"] if client else meta["baseline"]
        if wl.get("plain"):
            baseline = None  # each row against its own peer's plain row (below)
        rows: list[Row] = []
        for peer in peers:
            ms = [
                m
                for m in data["measurements"]
                if m["workload"] == wl["key"] and m["peer"] == peer["key"]
            ]
            ok = [m for m in ms if m.get("ok")]
            row: Row = {"peer": peer["key"], "label": peer["label"], "rounds": len(ms)}
            if not ok:
                reason = next((m["error"] for m in ms if not m.get("ok")), None)
                server = "c-epoll" if client else peer["key"]
                row["status"] = "failed" if reason else "missing"
                row["reason"] = reason or missing.get(
                    missing_key(server, bool(wl.get("tls")), bool(wl.get("proxy"))), "not run"
                )
                rows.append(row)
                continue
            values = [float(m["value"]) for m in ok]
            results = [m["result"] for m in ok]
            # Per message or per connection: independent of a busy load generator.
            per_op = wl["unit"] in ("msg/s", "conn/s")
            # The Python side's CPU per message: the server's, or the client's.
            cpu_key = "lg_cpu" if client else "srv_cpu"
            row.update(
                status="ok",
                values=values,
                by_round={int(m["round"]): float(m["value"]) for m in ok},
                mean=statistics.fmean(values),
                min=min(values),
                max=max(values),
                spread_pct=(max(values) / min(values) - 1) * 100
                if len(values) > 1 and min(values) > 0
                else None,
                lg_cpu=_mean([r.get("lg_cpu") for r in results]),
                lg_cpu_max=_max([r.get("lg_cpu") for r in results]),
                cpu_us_per_msg=_mean([_us_per_msg(r.get(cpu_key), r.get("rate")) for r in results])
                if per_op
                else None,
                srv_cpu=_mean([r.get("srv_cpu") for r in results]),
                other_cpu=_mean([other_cpu(r) for r in results]),
                steal_cpu=_mean([r.get("steal_cpu") for r in results]),
                rss_before_kib=_mean([r.get("rss_before_kib") for r in results]),
                rss_after_kib=_mean([r.get("rss_after_kib") for r in results]),
                p50_us=_mean([r.get("p50_us") for r in results]) if wl["latency"] else None,
                p99_us=_mean([r.get("p99_us") for r in results]) if wl["latency"] else None,
                errors=sum(int(r.get("errors") or 0) for r in results),
                failed_rounds=len(ms) - len(ok),
                tls=next((r["tls"] for r in results if r.get("tls")), None),
                # --workers N: each worker's CPU (the supervisor's is first in
                # srv_cpus) and its connections halfway through, per round.
                worker_cpus=[r["srv_cpus"][1:] for r in results if r.get("srv_cpus")],
                worker_conns=[r["worker_conns"] for r in results if r.get("worker_conns")],
                supervisor_cpu=_mean([r["srv_cpus"][0] for r in results if r.get("srv_cpus")]),
            )
            rows.append(row)
        base = next((r for r in rows if r["peer"] == baseline and r["status"] == "ok"), None)
        for row in rows:
            row["is_baseline"] = row["peer"] == baseline
            if row["status"] == "ok" and base is not None and base["mean"]:
                row["ratio"] = row["mean"] / base["mean"]
                row["round_ratios"] = paired_ratios(row, base)
            else:
                row["ratio"] = None
                row["round_ratios"] = []
        workloads.append(
            {
                **wl,
                "baseline": baseline,
                "baseline_label": next(
                    (p["label"] for p in all_peers if p["key"] == baseline), baseline
                ),
                "rows": rows,
            }
        )
    _plain_ratios(workloads)
    summary: dict[str, Any] = {"meta": meta, "workloads": workloads}
    summary["targets"] = evaluate_targets(summary)
    return summary


def _plain_ratios(workloads: list[dict[str, Any]]) -> None:
    """A PROXY workload's ratios: each row to the same peer's row of the plain workload.

    Both were measured in the same round, one right after the other, so
    round i ÷ round i is the cost of the header with little drift in it.
    """
    by_key = {w["key"]: w for w in workloads}
    for wl in workloads:
        if not wl.get("plain"):
            continue
        plain = by_key.get(wl["plain"])
        plain_rows = {r["peer"]: r for r in plain["rows"]} if plain else {}
        labels = [r["label"] for r in wl["rows"]]
        wl["baseline_label"] = f"{labels[0]} plain" if len(labels) == 1 else "same peer, plain"
        wl["plain_short"] = plain["short"] if plain else None
        for row in wl["rows"]:
            base = plain_rows.get(row["peer"])
            if row["status"] == "ok" and base and base["status"] == "ok" and base["mean"]:
                row["ratio"] = row["mean"] / base["mean"]
                row["round_ratios"] = paired_ratios(row, base)


def absent_peers(summary: dict[str, Any]) -> list[str]:
    """Peers without a figure for some workload: ``label (n workloads): reason``."""
    absent: dict[str, list[str]] = {}
    for wl in summary["workloads"]:
        for row in wl["rows"]:
            if row["status"] != "ok":
                absent.setdefault(row_name(wl, row), []).append(str(row.get("reason") or ""))
    return [
        f"{label} ({len(reasons)} workload(s)): {reasons[0]}" for label, reasons in absent.items()
    ]


# -------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A ratio trionet must reach: ``peer`` ÷ ``base`` on ``workload``."""

    label: str
    workload: str
    need: float
    goal: float | None = None
    at_most: bool = False  # lower is better (RSS)
    peer: str = "trionet"
    base: str = "trio"
    context: bool = False  # a reading aid, not a target: no verdict
    #: ``base`` on this workload rather than ``workload`` (PROXY vs plain).
    base_workload: str | None = None


#: The TLS workloads: key, short label, lower is better.
TLS_WORKLOADS: tuple[tuple[str, str, bool], ...] = (
    ("tls-pingpong-64x100", "TLS ping-pong 64 B \u00d7100", False),
    ("tls-connrate", "TLS connection rate", False),
    ("tls-rss-idle", "TLS RSS per idle conn", True),
)

#: The issue's targets.  "All on" must keep >= 95 % of the default's
#: performance; for RSS (lower is better) that is at most 1/0.95 of it.
TARGETS: tuple[Target, ...] = (
    Target("ping-pong 64 B \u00d71", "pingpong-64x1", 1.5, 2.0),
    Target("ping-pong 64 B \u00d7100", "pingpong-64x100", 1.5, 2.0),
    Target("connection rate", "connrate", 1.3, 2.0),
    Target("RSS per idle conn", "rss-idle", 1.0, 0.7, at_most=True),
    Target("bulk 64 KiB \u00d710", "bulk-64k-x10", 1.2),
    *(
        Target(f"all on vs default: {short}", key, need, None, at_most, "trionet-all-on", "trionet")
        for key, short, need, at_most in (
            ("pingpong-64x1", "ping-pong 64 B \u00d71", 0.95, False),
            ("pingpong-64x100", "ping-pong 64 B \u00d7100", 0.95, False),
            ("pingpong-4kx100", "ping-pong 4 KiB \u00d7100", 0.95, False),
            ("bulk-64k-x10", "bulk 64 KiB \u00d710", 0.95, False),
            ("connrate", "connection rate", 0.95, False),
            ("rss-idle", "RSS per idle conn", 1 / 0.95, True),
        )
    ),
    *(
        Target(
            f"all on but idle timeout vs default: {short}",
            key,
            need,
            None,
            at_most,
            "trionet-all-on-no-idle",
            "trionet",
        )
        for key, short, need, at_most in (
            ("connrate", "connection rate", 0.95, False),
            ("rss-idle", "RSS per idle conn", 1 / 0.95, True),
        )
    ),
    Target("client ping-pong", "client-pingpong", 1.3, peer="client-trionet", base="client-trio"),
    # Context for the 2.0x goal: the opt-in budget, and how close the strict
    # default comes to the least work strict Trio semantics allow.
    *(
        Target(f"schedule_budget=2 (opt-in): {short}", key, 1.5, 2.0, peer="trionet-budget")
        for key, short in (
            ("pingpong-64x1", "ping-pong 64 B \u00d71"),
            ("pingpong-64x100", "ping-pong 64 B \u00d7100"),
        )
    ),
    *(
        Target(
            f"context: default vs Trio-strict floor: {short}",
            key,
            1.0,
            base="trio-floor",
            context=True,
        )
        for key, short in (
            ("pingpong-64x1", "ping-pong 64 B \u00d71"),
            ("pingpong-64x100", "ping-pong 64 B \u00d7100"),
        )
    ),
    # TLS, each peer's TLS stack against trio.serve_tcp + trio.SSLStream.
    Target("TLS ping-pong 64 B \u00d7100", "tls-pingpong-64x100", 1.5),
    Target("TLS connection rate", "tls-connrate", 1.2),
    Target("TLS RSS per idle conn", "tls-rss-idle", 0.9, at_most=True),
    # PROXY v2: the header costs little per connection and nothing after it.
    Target(
        "PROXY v2 vs plain: connection rate",
        "proxy-connrate",
        0.9,
        base="trionet",
        base_workload="connrate",
    ),
    Target(
        "PROXY v2 vs plain: ping-pong 64 B \u00d7100",
        "proxy-pingpong-64x100",
        0.98,
        base="trionet",
        base_workload="pingpong-64x100",
    ),
    *(
        Target(f"context: {name}: {short}", key, 1.0, at_most=at_most, peer=peer, context=True)
        for peer, name in (("asyncio", "asyncio streams"), ("uvloop", "uvloop streams"))
        for key, short, at_most in TLS_WORKLOADS
    ),
    # trionet serve --workers: what a second worker adds on this machine (the
    # load generator shares the cores), and what the supervisor costs (none
    # expected: the workers accept on its socket directly).
    *(
        Target(f"context: {name}: {short}", key, 1.0, peer=peer, base=base, context=True)
        for peer, base, name in (
            ("trionet-w2", "trionet-w1", "2 workers vs 1"),
            ("trionet-w1", "trionet-cli", "1 worker vs one process"),
        )
        for key, short in (
            ("pingpong-64x100", "ping-pong 64 B \u00d7100"),
            ("connrate", "connection rate"),
        )
    ),
)


def _meets(target: Target, ratio: float) -> bool:
    # Compare at the displayed precision, so "1.50x" never reads as "not met".
    ratio = round(ratio, 2)
    return ratio <= round(target.need, 2) if target.at_most else ratio >= round(target.need, 2)


def evaluate_targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean ratio, per-round ratios and verdict of every target in this run."""
    out = []
    for target in TARGETS:
        workloads = {w["key"]: w for w in summary["workloads"]}
        wl = workloads.get(target.workload)
        base_wl = workloads.get(target.base_workload or target.workload)
        if wl is None or base_wl is None:
            continue  # workload not in this run
        row = next((r for r in wl["rows"] if r["peer"] == target.peer), None)
        base = next((r for r in base_wl["rows"] if r["peer"] == target.base), None)
        if row is None or base is None:
            continue  # a peer not selected for this run
        compare = f"{row['label']} \u00f7 {base['label']}"
        if target.base_workload:
            compare = f"{row_name(wl, row)} \u00f7 {row_name(base_wl, base)} plain"
        entry: dict[str, Any] = {
            "target": target.label,
            "workload": target.workload,
            "compare": compare,
            "need": target.need,
            "goal": target.goal,
            "at_most": target.at_most,
            "context": target.context,
            "mean": None,
            "rounds": [],
            "status": "not measured",
        }
        if row["status"] == base["status"] == "ok" and base["mean"]:
            mean = row["mean"] / base["mean"]
            rounds = paired_ratios(row, base)
            entry.update(mean=mean, rounds=rounds)
            if target.context:
                entry["status"] = "context"
            elif not _meets(target, mean):
                entry["status"] = "not met"
            elif all(_meets(target, r) for r in rounds):
                entry["status"] = "met"
            else:
                entry["status"] = "met on mean only"
        out.append(entry)
    return out


def _targets_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    head = ["Target", "Ratio", "Required", "Goal", "Mean", "Per round", "Status"]
    rows = []
    for t in summary.get("targets", []):
        sign = "\u2264 " if t["at_most"] else "\u2265 "
        rounds = t["rounds"]
        context = t.get("context", False)
        rows.append(
            [
                t["target"],
                t["compare"],
                "—" if context else sign + fmt_ratio(t["need"]),
                "—" if t["goal"] is None else sign + fmt_ratio(t["goal"]),
                fmt_ratio(t["mean"]),
                fmt_range(rounds) if rounds else "—",
                t["status"],
            ]
        )
    return head, rows


def _busy(wl: dict[str, Any], row: Row) -> bool:
    """The load generator used >= LG_BUSY of its core in some round."""
    return wl["kind"] == "loadgen" and (row.get("lg_cpu_max") or 0) >= LG_BUSY


def _value_cell(wl: dict[str, Any], row: Row) -> str:
    if row["status"] != "ok":
        return str(row["status"])
    return fmt_value(row["mean"], wl["unit"]) + (" ⚠" if _busy(wl, row) else "")


def _detail_header(wl: dict[str, Any]) -> list[str]:
    head = ["Peer", wl["unit"], f"\u00d7 {wl['baseline_label']} (per-round range)", "Spread"]
    if wl["kind"] == "rss":
        return [*head, "RSS before MiB", "RSS after MiB", "Load-gen CPU"]
    if wl["latency"]:
        head += ["p50 µs", "p99 µs"]
    if wl["unit"] in ("msg/s", "conn/s"):
        per = "msg" if wl["unit"] == "msg/s" else "conn"
        head.append(f"Client CPU µs/{per}" if wl["kind"] == "client" else f"Server CPU µs/{per}")
    lg = "Client CPU" if wl["kind"] == "client" else "Load-gen CPU (max)"
    return [*head, lg, "Server CPU", "Other CPU"]


def _mib(kib: float | None) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f}"


def _detail_rows(wl: dict[str, Any]) -> list[list[str]]:
    out = []
    for row in wl["rows"]:
        if row["status"] != "ok":
            blanks = ["—"] * (len(_detail_header(wl)) - 2)
            out.append([row["label"], row["status"], *blanks])
            continue
        cells = [
            row["label"],
            _value_cell(wl, row),
            fmt_ratio_range(row),
            fmt_spread(row["spread_pct"]),
        ]
        if wl["kind"] == "rss":
            cells += [_mib(row["rss_before_kib"]), _mib(row["rss_after_kib"])]
            cells.append(fmt_pct(row["lg_cpu"]))
            out.append(cells)
            continue
        if wl["latency"]:
            cells += [fmt_us(row["p50_us"]), fmt_us(row["p99_us"])]
        if wl["unit"] in ("msg/s", "conn/s"):
            cells.append(fmt_us(row.get("cpu_us_per_msg")))
        lg = row["lg_cpu"] if wl["kind"] == "client" else row.get("lg_cpu_max")
        cells += [fmt_pct(lg), fmt_pct(row["srv_cpu"]), fmt_pct(row["other_cpu"])]
        out.append(cells)
    return out


def _summary_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Peers by server-side workloads: mean · ratio (range) · load-gen CPU."""
    server_wls = [w for w in summary["workloads"] if w["kind"] != "client"]
    head = ["Peer"] + [f"{w['short']} ({w['unit']})" for w in server_wls]
    rows = []
    for peer in summary["meta"]["peers"]:
        cells = [peer["label"]]
        for wl in server_wls:
            row = next((r for r in wl["rows"] if r["peer"] == peer["key"]), None)
            if row is None:
                cells.append("—")  # no TLS
            elif row["status"] != "ok":
                cells.append(row["status"])
            else:
                text = f"{_value_cell(wl, row)} \u00b7 {fmt_ratio_range(row, ratio_word(wl))}"
                if wl["kind"] == "loadgen" and row.get("lg_cpu_max") is not None:
                    text += f" \u00b7 lg {row['lg_cpu_max'] * 100:.0f}%"
                cells.append(text)
        rows.append(cells)
    return head, rows


def _is_python(summary: dict[str, Any], key: str) -> bool:
    peers = summary["meta"]["peers"] + summary["meta"].get("clients", [])
    peer: dict[str, Any] = next((p for p in peers if p["key"] == key), {})
    return bool(peer.get("python", key != "c-epoll"))  # older JSON: no "python"


def _explanations(summary: dict[str, Any]) -> list[str]:
    """Fixed reading notes that depend only on which peers/workloads ran."""
    notes = []
    peers = {p["key"]: p["label"] for p in summary["meta"]["peers"]}
    workloads = {w["key"]: w for w in summary["workloads"]}
    if "trionet" in peers:
        text = (
            f"{peers['trionet']} uses the idiomatic `async for chunk in conn` handler, whose "
            "reads adapt their size (64 KiB, growing to 256 KiB while reads fill the buffer, "
            "as in bulk streams)"
        )
        if "trionet-64k" in peers:
            text += (
                f"; {peers['trionet-64k']} loops `receive_some(65536)` / `send_all` like "
                "every other peer, isolating the buffer-size effect"
            )
        notes.append(text + ".")
    if "trio-floor" in peers:
        notes.append(
            f"{peers['trio-floor']} is no library: one task per connection looping raw "
            "`recv()`/`send()` with a cancel point and a schedule point per operation -- "
            "Trio's strict rule and nothing else.  Its ratio to trio.serve_tcp bounds what "
            "any strict-Trio stream can reach, trionet's default included."
        )
    if "trionet-budget" in peers:
        notes.append(
            f"{peers['trionet-budget']} is opt-in: a receive that completes at once may skip "
            "its schedule point (a send always yields), so it no longer passes Trio's "
            "conformance check; every operation is still a cancel point."
        )
    if "pingpong-64x1" in workloads and "c-epoll" in peers:
        notes.append(
            f"On {workloads['pingpong-64x1']['short']} the {peers['c-epoll']} figure is not a "
            "physical limit: with one message in flight the workload is bound by wake-up "
            "latency, the C server sleeps in epoll between messages, and stacks that keep their "
            "core busy answer sooner; the server CPU µs per message column is the comparable "
            "Python-overhead figure there."
        )
    tls_wls = [w for w in summary["workloads"] if w.get("tls")]
    if tls_wls:
        no_tls = [p["label"] for p in summary["meta"]["peers"] if not p.get("tls")]
        params = sorted({r["tls"] for w in tls_wls for r in w["rows"] if r.get("tls")})
        text = (
            "TLS workloads: "
            + (", ".join(params) + "; " if params else "")
            + "a trustme ECDSA P-256 certificate for localhost; the C load generator is an "
            "OpenSSL client sending SNI localhost.  Ping-pong handshakes happen before the "
            "clock starts; every connection-rate cycle is a full handshake (a fresh SSL, no "
            "session cache, no resumption) ended by close_notify, and there the certificate "
            "is not verified (a verification is one more ECDSA verify on the load generator's "
            "core); ping-pong and RSS verify it against the run's CA."
        )
        if no_tls:
            text += f"  No TLS: {', '.join(no_tls)} (— in the summary)."
        notes.append(text)
    notes += _proxy_notes(summary)
    notes += _workers_notes(summary)
    connrate = workloads.get("tls-connrate")
    if connrate and any(_busy(connrate, r) for r in connrate["rows"] if r["status"] == "ok"):
        notes.append(
            f"On {connrate['short']} a full client handshake costs the load generator about as "
            "much CPU as the server's whole connection (OpenSSL 3.0 spends much of it decoding "
            "the server's certificate), so the fastest servers there are bound by the load "
            "generator's core (⚠); the server CPU µs per connection column compares them "
            "regardless."
        )
    rss = workloads.get("tls-rss-idle")
    if rss and any(r["peer"] in ("asyncio", "anyio-asyncio") for r in rss["rows"]):
        notes.append(
            f"On {rss['short']}, asyncio's SSLProtocol (CPython 3.11) allocates a 256 KiB "
            "receive buffer per connection (`SSLProtocol.max_size`): asyncio streams and anyio "
            "on asyncio carry it, uvloop's own SSL protocol does not."
        )
    return notes


def _proxy_notes(summary: dict[str, Any]) -> list[str]:
    """What the PROXY workloads do, and their ratios to plain."""
    proxy_wls = [w for w in summary["workloads"] if w.get("proxy")]
    if not proxy_wls:
        return []
    text = (
        "PROXY v2 workloads: every connection first sends the 28-byte PROXY v2 header of a "
        "load balancer (PROXY command, AF_INET, STREAM; client 192.0.2.x:port, a new one for "
        "every connection) right after connect, as its own segment, before its first message; "
        'the server runs with `proxy_protocol="required", trusted_proxies=["127.0.0.0/8"]`.  '
        "Each measurement runs right after (or before, in alternate rounds) the same peer's "
        "plain one, and its ratio is to that (round i ÷ round i)"
    )
    ratios = []
    for wl in proxy_wls:
        for row in wl["rows"]:
            if row["status"] == "ok" and row.get("ratio") is not None:
                ratios.append(f"{row['label']} {fmt_ratio_range(row)} on {wl['short']}")
            elif row["status"] == "ok":
                ratios.append(
                    f"{row['label']} on {wl['short']}: no ratio "
                    f"({wl.get('plain')} has no figure for it in this run)"
                )
    text += (": " + "; ".join(ratios) + ".") if ratios else "."
    no_proxy = [p["label"] for p in summary["meta"]["peers"] if not p.get("proxy")]
    if no_proxy:
        text += f"  No PROXY: {', '.join(no_proxy)} (— in the summary)."
    return [text]


def _split(parts: Sequence[float], digits: int = 0) -> str:
    """``70+29``: one round's per-worker figures, worker 1 first."""
    return "+".join(f"{v:.{digits}f}" for v in parts)


def _workers_notes(summary: dict[str, Any]) -> list[str]:
    """The --workers peers: what is measured over which process, and how the load spread."""
    peers = [p for p in summary["meta"]["peers"] if p.get("workers")]
    if not peers:
        return []
    labels = ", ".join(p["label"] for p in peers)
    notes = [
        f"{labels}: `python -m trionet serve echo --workers N --bind tcp://127.0.0.1:0 "
        "--backlog 1024`, a supervisor that opens the socket and N worker processes that "
        "accept on it directly (no hop through the supervisor); ready when it prints "
        "`listening on`, stopped by SIGTERM (a drain, exit 0 checked).  Server CPU is summed "
        "over the supervisor and its workers, and so is RSS (RSS per connection: the growth "
        f"of that sum).  Pinning: {summary['meta']['pinning']}."
    ]
    for wl in summary["workloads"]:
        for row in wl["rows"]:
            peer = next((p for p in peers if p["key"] == row["peer"]), None)
            if peer is None or peer["workers"] < 2 or row["status"] != "ok":
                continue
            parts = []
            if row.get("worker_conns"):
                conns = ", ".join(_split(c) for c in row["worker_conns"])
                parts.append(
                    "connections open in each worker (worker 1 + worker 2 ...) halfway through "
                    f"the measurement, per round: {conns}"
                )
            if row.get("worker_cpus"):
                cpus = ", ".join(_split(c, 2) for c in row["worker_cpus"])
                parts.append(f"CPU per worker (cores, same order): {cpus}")
            if row.get("supervisor_cpu") is not None:
                parts.append(f"supervisor {fmt_pct(row['supervisor_cpu'])} of a core")
            if parts:
                notes.append(f"{row['label']}, {wl['short']}: " + "; ".join(parts) + ".")
    return notes


def _notes(summary: dict[str, Any]) -> list[str]:
    """Missing peers, failed rounds, connection errors, disturbed figures."""
    notes: list[str] = []
    missing: dict[str, str] = {}
    lg_busy: list[str] = []
    for wl in summary["workloads"]:
        busy = []
        for row in wl["rows"]:
            what = f"{row['label']} ({wl['short']})"
            if row["status"] == "missing":
                missing.setdefault(row_name(wl, row), row.get("reason") or "")
            elif row["status"] == "failed":
                notes.append(f"{what} failed: {row.get('reason')}")
            else:
                if row.get("failed_rounds"):
                    notes.append(f"{what}: {row['failed_rounds']} round(s) failed")
                if row.get("errors"):
                    notes.append(f"{what}: {row['errors']} connection error(s) while measuring")
                other, steal = row.get("other_cpu") or 0.0, row.get("steal_cpu") or 0.0
                if other + steal >= OTHER_BUSY:
                    busy.append(
                        f"{row['label']} {fmt_pct(other)}"
                        + (f" + {fmt_pct(steal)} stolen" if steal >= 0.05 else "")
                    )
                if _busy(wl, row) and _is_python(summary, row["peer"]):
                    lg_busy.append(f"{what} lg {row['lg_cpu_max'] * 100:.0f}%")
        if busy:
            notes.append(
                f"Busy machine during {wl['short']} (CPU used by other processes, and stolen "
                "by the hypervisor, mean over the rounds, in % of a core; these figures are "
                f"disturbed): {', '.join(busy)}"
            )
    if lg_busy:
        notes.append(
            f"⚠ Python peers whose load generator used ≥ {LG_BUSY:.0%} of its core in some "
            "round (the figure may be limited by the load generator, so it is a floor): "
            + ", ".join(lg_busy)
        )
    notes[:0] = [f"{label} is missing: {why}" for label, why in missing.items()]
    return notes + _explanations(summary)


def _meta_lines(meta: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    return (
        [
            f"Run: {meta['date']}, {meta['mode']} mode, {meta['rounds']} round(s), "
            f"{meta['warmup_s']:g} s warm-up + {meta['duration_s']:g} s per measurement, "
            f"{meta.get('elapsed_s', 0):.0f} s in all",
            f"Machine: {meta['cpu_model']}, {meta['cpus']} CPUs, Linux {meta['kernel']}, "
            f"Python {meta['python']}; {meta['pinning']}",
            f"Versions: trionet {v.get('trionet', '?')}, trio {v.get('trio', '?')}, "
            f"anyio {v.get('anyio', '?')}, uvloop {v.get('uvloop', '?')}; git {meta['git']}",
        ]
        + (
            [
                "Load average (1, 5, 15 min): "
                + " at the start, ".join(
                    ", ".join(f"{x:.2f}" for x in meta[k])
                    for k in ("loadavg_start", "loadavg_end")
                    if meta.get(k)
                )
                + (" at the end" if meta.get("loadavg_end") else "")
            ]
            if meta.get("loadavg_start")
            else []
        )
        + (
            ["Profiled with py-spy: sampling slows the Python servers; compare with care"]
            if meta.get("profiled")
            else []
        )
    )


# ------------------------------------------------------------- Markdown


TARGETS_LEGEND = (
    "Targets: met = every round meets the required ratio; met on mean only = the mean "
    "does but some round does not; the goal is the ratio aimed for; context rows are "
    "reading aids, not targets."
)


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(head) - 1)
    return "\n".join([line(head), "| " + " | ".join(align) + " |", *map(line, rows)])


def _baseline_label(meta: dict[str, Any]) -> str:
    """The label of the peer server-side ratios are relative to."""
    return next(
        (p["label"] for p in meta.get("peers", []) if p["key"] == meta["baseline"]),
        str(meta["baseline"]),
    )


def render_markdown(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    out = [f"# trionet benchmarks ({meta['mode']} run)", ""]
    out += [f"- {line}" for line in _meta_lines(meta)]
    out += [
        "",
        "Figures are means over the rounds; `1.00\u00d7` is the ratio of the means to "
        f"`{_baseline_label(meta)}` (client-side workload: to `trio.open_tcp_stream`; "
        "PROXY workloads, `\u00d7 plain`: to the same peer's plain workload), followed by the "
        "range of the per-round ratios (round i of the peer ÷ round i of the baseline). "
        "Higher is better, except for RSS per connection and latency. "
        "Spread is max/min - 1 over the rounds. "
        f"⚠ marks figures where the load generator used ≥ {LG_BUSY:.0%} of its core in some "
        "round (`lg NN%` in the summary is its maximum over the rounds), so the figure may be "
        "limited by the load generator. "
        "CPU µs/msg is the server's CPU (client's, for the client-side workload) per message, "
        "CPU µs/conn the server's per connection: the comparable figure when the load "
        "generator is busy. "
        "Other CPU is what the rest of the machine used meanwhile (in cores, from /proc/stat).",
        "",
        "## Summary",
        "",
    ]
    head, rows = _summary_table(summary)
    if len(head) > 1:
        out += [_md_table(head, rows), ""]
    head, rows = _targets_table(summary)
    if rows:
        out += ["## Targets", "", TARGETS_LEGEND, "", _md_table(head, rows), ""]
    for wl in summary["workloads"]:
        out += [f"## {wl['title']}", ""]
        out += [_md_table(_detail_header(wl), _detail_rows(wl)), ""]
    notes = _notes(summary)
    if notes:
        out += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(out)


# ------------------------------------------------------------------ reST


def _rst_cell(text: str) -> str:
    # Escape characters that would otherwise start inline markup.
    for ch in ("\\", "*", "`", "|", "_"):
        text = text.replace(ch, "\\" + ch)
    return text


def _rst_inline(text: str) -> str:
    """Like _rst_cell, but Markdown-style `code` becomes reST ``code``."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # unbalanced: no code spans
        return _rst_cell(text)
    return "".join(f"``{part}``" if i % 2 else _rst_cell(part) for i, part in enumerate(parts))


def _rst_table(title: str, head: list[str], rows: list[list[str]]) -> list[str]:
    out = [f".. list-table:: {_rst_cell(title)}", "   :header-rows: 1", ""]
    for cells in [head, *rows]:
        out.append(f"   * - {_rst_cell(cells[0])}")
        out += [f"     - {_rst_cell(c)}" for c in cells[1:]]
    return [*out, ""]


def render_rst(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    out = [BEGIN + " (benchmarks/run.py rewrites this block; do not edit by hand)", ""]
    out += [f"* {_rst_cell(line)}" for line in _meta_lines(meta)]
    out.append("")
    head, rows = _summary_table(summary)
    if len(head) > 1:
        title = (
            f"Summary: mean · ratio to {_baseline_label(meta)} (per-round range) · "
            "load-generator CPU (max over rounds)"
        )
        out += _rst_table(title, head, rows)
    head, rows = _targets_table(summary)
    if rows:
        out += [_rst_cell(TARGETS_LEGEND), ""]
        out += _rst_table("Targets", head, rows)
    for wl in summary["workloads"]:
        out += _rst_table(wl["title"], _detail_header(wl), _detail_rows(wl))
    notes = _notes(summary)
    if notes:
        out += ["Notes on this run:", ""]
        out += [f"* {_rst_inline(n)}" for n in notes]
        out.append("")
    out.append(END)
    return "\n".join(out)


# ----------------------------------------------------------------- chart

COLORS = {
    "trionet": "#1f6fb4",
    "trionet-all-on": "#5fa2dd",
    "trionet-64k": "#9cc5ea",
    "trionet-all-on-no-idle": "#8fb8de",
    "trionet-budget": "#2b8c8c",
    "trio-floor": "#f0b36e",
    "client-trionet": "#1f6fb4",
    "trio": "#e07b19",
    "client-trio": "#e07b19",
    "c-epoll": "#7f7f7f",
    "trionet-cli": "#9e9ac8",
    "trionet-w1": "#756bb1",
    "trionet-w2": "#54278f",
}
OTHER = "#b9c4a8"


def render_chart(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    wls = summary["workloads"]
    if not wls:
        return
    ncols = 2 if len(wls) > 1 else 1
    nrows = (len(wls) + ncols - 1) // ncols
    # Each grid row as tall as its longest bar list (+ room for title and axis).
    peers_per_row = [
        max(len(w["rows"]) for w in wls[r * ncols : (r + 1) * ncols]) for r in range(nrows)
    ]
    heights = [0.32 * n + 1.2 for n in peers_per_row]
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(7.0 * ncols, sum(heights) + 0.8),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, wl in zip(axes.flat, wls, strict=False):
        rows = list(reversed(wl["rows"]))  # first peer on top
        labels = [r["label"] for r in rows]
        means = [r["mean"] if r["status"] == "ok" else 0.0 for r in rows]
        lo = [r["mean"] - r["min"] if r["status"] == "ok" else 0.0 for r in rows]
        hi = [r["max"] - r["mean"] if r["status"] == "ok" else 0.0 for r in rows]
        colors = [COLORS.get(r["peer"], OTHER) for r in rows]
        y = range(len(rows))
        ax.barh(y, means, height=0.7, color=colors, xerr=[lo, hi], capsize=2, ecolor="#333333")
        ax.set_ylim(-0.5, len(rows) - 0.5)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.set_xlabel(wl["unit"] + ("" if wl["higher_is_better"] else " (lower is better)"))
        ax.set_title(wl["title"], fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}"))
        top = max((r["max"] for r in rows if r["status"] == "ok"), default=0.0) or 1.0
        ax.set_xlim(0, top * 1.45)
        for yi, row in zip(y, rows, strict=True):
            if row["status"] == "ok":
                text = f"{fmt_value(row['mean'], wl['unit'])}  {fmt_ratio(row['ratio'])}"
                if row["ratio"] is not None and ratio_word(wl):
                    text += " " + ratio_word(wl)
                if _busy(wl, row):
                    text += " (LG busy)"
            else:
                text = row["status"]
            ax.text(
                (row["max"] if row["status"] == "ok" else 0) + top * 0.02,
                yi,
                text,
                va="center",
                fontsize=7,
            )
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(wls) :]:
        ax.set_visible(False)
    meta = summary["meta"]
    # The pinning of multi-worker peers (after the first "; ") gets a line of its own.
    pinning, _, workers_pinning = meta["pinning"].partition("; ")
    lines = [
        f"trionet benchmarks ({meta['mode']}, {meta['rounds']} round(s); "
        f"{meta['cpu_model']}, {pinning})",
        *([workers_pinning] if workers_pinning else []),
        f"bars: mean over rounds; whiskers: min-max; ratio to {_baseline_label(meta)} "
        "(client workload: to trio.open_tcp_stream)",
    ]
    fig.suptitle("\n".join(lines), fontsize=9)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.225 * len(lines) / height))  # room for the title
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------- files


def write_all(summary: dict[str, Any], data: dict[str, Any], base: Path) -> list[Path]:
    """Write base.json, base.md and base.png; return the paths written."""
    json_path = base.with_suffix(".json")
    json_path.write_text(
        json.dumps(
            {**data, "summary": summary["workloads"], "targets": summary.get("targets", [])},
            indent=1,
            sort_keys=False,
        )
        + "\n"
    )
    md_path = base.with_suffix(".md")
    md_path.write_text(render_markdown(summary) + "\n")
    png_path = base.with_suffix(".png")
    render_chart(summary, png_path)
    return [json_path, md_path, png_path]


def update_docs(summary: dict[str, Any], png: Path, rst: Path, docs_png: Path) -> list[Path]:
    """Copy the chart into docs/ and rewrite the generated block of the page."""
    written = []
    if png.exists():
        docs_png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, docs_png)
        written.append(docs_png)
    try:
        text = rst.read_text()
    except OSError:
        print(f"warning: {rst} not found; docs table not updated", file=sys.stderr)
        return written
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        print(f"warning: no generated block in {rst}; docs table not updated", file=sys.stderr)
        return written
    rst.write_text(text[:start] + render_rst(summary) + text[end + len(END) :])
    written.append(rst)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a results/*.json written by run.py")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    data.pop("summary", None)
    data.pop("targets", None)
    summary = summarize(data)
    base = args.results.with_suffix("")
    paths = write_all(summary, data, base)
    if args.update_docs:
        paths += update_docs(
            summary,
            base.with_suffix(".png"),
            REPO / "docs" / "source" / "benchmarks.rst",
            REPO / "docs" / "source" / "_static" / "benchmarks.png",
        )
    print(render_markdown(summary))
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
