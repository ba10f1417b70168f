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
        peers = meta["clients"] if client else meta["peers"]
        baseline = meta["client_baseline"] if client else meta["baseline"]
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
                row["reason"] = reason or missing.get(server, "not run")
                rows.append(row)
                continue
            values = [float(m["value"]) for m in ok]
            results = [m["result"] for m in ok]
            row.update(
                status="ok",
                values=values,
                mean=statistics.fmean(values),
                min=min(values),
                max=max(values),
                spread_pct=(max(values) / min(values) - 1) * 100
                if len(values) > 1 and min(values) > 0
                else None,
                lg_cpu=_mean([r.get("lg_cpu") for r in results]),
                srv_cpu=_mean([r.get("srv_cpu") for r in results]),
                other_cpu=_mean([other_cpu(r) for r in results]),
                steal_cpu=_mean([r.get("steal_cpu") for r in results]),
                rss_before_kib=_mean([r.get("rss_before_kib") for r in results]),
                rss_after_kib=_mean([r.get("rss_after_kib") for r in results]),
                p50_us=_mean([r.get("p50_us") for r in results]) if wl["latency"] else None,
                p99_us=_mean([r.get("p99_us") for r in results]) if wl["latency"] else None,
                errors=sum(int(r.get("errors") or 0) for r in results),
                failed_rounds=len(ms) - len(ok),
            )
            rows.append(row)
        base = next((r for r in rows if r["peer"] == baseline and r["status"] == "ok"), None)
        for row in rows:
            if row["status"] == "ok" and base is not None and base["mean"]:
                row["ratio"] = row["mean"] / base["mean"]
            else:
                row["ratio"] = None
        workloads.append(
            {
                **wl,
                "baseline": baseline,
                "baseline_label": next(p["label"] for p in peers if p["key"] == baseline),
                "rows": rows,
            }
        )
    return {"meta": meta, "workloads": workloads}


def _busy(wl: dict[str, Any], row: Row) -> bool:
    return wl["kind"] == "loadgen" and (row.get("lg_cpu") or 0) >= LG_BUSY


def _value_cell(wl: dict[str, Any], row: Row) -> str:
    if row["status"] != "ok":
        return str(row["status"])
    return fmt_value(row["mean"], wl["unit"]) + (" ⚠" if _busy(wl, row) else "")


def _detail_header(wl: dict[str, Any]) -> list[str]:
    head = ["Peer", wl["unit"], f"\u00d7 {wl['baseline_label']}", "Spread"]
    if wl["kind"] == "rss":
        return [*head, "RSS before MiB", "RSS after MiB", "Load-gen CPU"]
    if wl["latency"]:
        head += ["p50 µs", "p99 µs"]
    lg = "Client CPU" if wl["kind"] == "client" else "Load-gen CPU"
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
            fmt_ratio(row["ratio"]),
            fmt_spread(row["spread_pct"]),
        ]
        if wl["kind"] == "rss":
            cells += [_mib(row["rss_before_kib"]), _mib(row["rss_after_kib"])]
            cells.append(fmt_pct(row["lg_cpu"]))
            out.append(cells)
            continue
        if wl["latency"]:
            cells += [fmt_us(row["p50_us"]), fmt_us(row["p99_us"])]
        cells += [fmt_pct(row["lg_cpu"]), fmt_pct(row["srv_cpu"]), fmt_pct(row["other_cpu"])]
        out.append(cells)
    return out


def _summary_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Peers by server-side workloads: mean (ratio to the baseline)."""
    server_wls = [w for w in summary["workloads"] if w["kind"] != "client"]
    head = ["Peer"] + [f"{w['short']} ({w['unit']})" for w in server_wls]
    rows = []
    for peer in summary["meta"]["peers"]:
        cells = [peer["label"]]
        for wl in server_wls:
            row = next(r for r in wl["rows"] if r["peer"] == peer["key"])
            if row["status"] != "ok":
                cells.append(row["status"])
            else:
                cells.append(f"{_value_cell(wl, row)} ({fmt_ratio(row['ratio'])})")
        rows.append(cells)
    return head, rows


def _notes(summary: dict[str, Any]) -> list[str]:
    """Missing peers, failed rounds, connection errors, disturbed figures."""
    notes: list[str] = []
    missing: dict[str, str] = {}
    for wl in summary["workloads"]:
        busy = []
        for row in wl["rows"]:
            what = f"{row['label']} ({wl['short']})"
            if row["status"] == "missing":
                missing.setdefault(row["label"], row.get("reason") or "")
            elif row["status"] == "failed":
                notes.append(f"{what} failed: {row.get('reason')}")
            else:
                if row.get("failed_rounds"):
                    notes.append(f"{what}: {row['failed_rounds']} round(s) failed")
                if row.get("errors"):
                    notes.append(f"{what}: {row['errors']} connection error(s) while measuring")
                if (row.get("other_cpu") or 0) >= OTHER_BUSY:
                    busy.append(f"{row['label']} {fmt_pct(row['other_cpu'])}")
        if busy:
            notes.append(
                f"Busy machine during {wl['short']} (CPU used by other processes, in % of a "
                f"core; these figures are disturbed): {', '.join(busy)}"
            )
    notes[:0] = [f"{label} is missing: {why}" for label, why in missing.items()]
    return notes


def _meta_lines(meta: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    return [
        f"Run: {meta['date']}, {meta['mode']} mode, {meta['rounds']} round(s), "
        f"{meta['warmup_s']:g} s warm-up + {meta['duration_s']:g} s per measurement, "
        f"{meta.get('elapsed_s', 0):.0f} s in all",
        f"Machine: {meta['cpu_model']}, {meta['cpus']} CPUs, Linux {meta['kernel']}, "
        f"Python {meta['python']}; {meta['pinning']}",
        f"Versions: trionet {v.get('trionet', '?')}, trio {v.get('trio', '?')}, "
        f"anyio {v.get('anyio', '?')}, uvloop {v.get('uvloop', '?')}; git {meta['git']}",
    ] + (
        ["Profiled with py-spy: sampling slows the Python servers; compare with care"]
        if meta.get("profiled")
        else []
    )


# ------------------------------------------------------------- Markdown


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(head) - 1)
    return "\n".join([line(head), "| " + " | ".join(align) + " |", *map(line, rows)])


def render_markdown(summary: dict[str, Any]) -> str:
    meta = summary["meta"]
    out = [f"# trionet benchmarks ({meta['mode']} run)", ""]
    out += [f"- {line}" for line in _meta_lines(meta)]
    out += [
        "",
        "Figures are means over the rounds; `(1.00\u00d7)` is the ratio to `trio.serve_tcp` "
        "(client-side workload: to `trio.open_tcp_stream`). Higher is better, except "
        "for RSS per connection and latency. "
        "Spread is max/min - 1 over the rounds. "
        f"⚠ marks figures where the load generator used ≥ {LG_BUSY:.0%} of its core, "
        "so the figure may be limited by the load generator. "
        "Other CPU is what the rest of the machine used meanwhile (in cores, from /proc/stat).",
        "",
        "## Summary",
        "",
    ]
    head, rows = _summary_table(summary)
    if len(head) > 1:
        out += [_md_table(head, rows), ""]
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
        out += _rst_table("Summary: mean (ratio to trio.serve_tcp)", head, rows)
    for wl in summary["workloads"]:
        out += _rst_table(wl["title"], _detail_header(wl), _detail_rows(wl))
    notes = _notes(summary)
    if notes:
        out += ["Notes on this run:", ""]
        out += [f"* {_rst_cell(n)}" for n in notes]
        out.append("")
    out.append(END)
    return "\n".join(out)


# ----------------------------------------------------------------- chart

COLORS = {
    "trionet": "#1f6fb4",
    "trionet-all-on": "#5fa2dd",
    "client-trionet": "#1f6fb4",
    "trio": "#e07b19",
    "client-trio": "#e07b19",
    "c-epoll": "#7f7f7f",
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
    fig.suptitle(
        f"trionet benchmarks ({meta['mode']}, {meta['rounds']} round(s); "
        f"{meta['cpu_model']}, {meta['pinning']})\n"
        "bars: mean over rounds; whiskers: min-max; ratio to trio.serve_tcp "
        "(client workload: to trio.open_tcp_stream)",
        fontsize=9,
    )
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # room for the two-line title
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------- files


def write_all(summary: dict[str, Any], data: dict[str, Any], base: Path) -> list[Path]:
    """Write base.json, base.md and base.png; return the paths written."""
    json_path = base.with_suffix(".json")
    json_path.write_text(
        json.dumps({**data, "summary": summary["workloads"]}, indent=1, sort_keys=False) + "\n"
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
