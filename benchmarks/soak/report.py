"""Write a chaos soak's report: ``report.json``, ``report.md`` and ``report.png``.

The harness calls :func:`write_report` with its result dict at the end of a
run.  A saved result can be rendered again without soaking again::

    .venv/bin/python -m benchmarks.soak.report RESULTS.json [--out DIR]

The chart needs matplotlib (the ``bench`` extra); without it the JSON and the
Markdown are still written and the Markdown says why there is no chart.
Every key of the result is optional as far as this module is concerned: what
is missing is shown as "—".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "render_markdown", "render_png", "write_report"]

DASH = "—"
MIB = 1024 * 1024
#: Chart size in inches; at :data:`DPI` this is 1400x1000 px.
FIGSIZE = (14.0, 10.0)
DPI = 100
DOCS_PAGE = "docs/source/howto/soak.rst"
#: One colour per fault kind, in order of first appearance (sorted kinds).
FAULT_COLOURS = (
    "#e41a1c",
    "#377eb8",
    "#4daf4a",
    "#984ea3",
    "#ff7f00",
    "#a65628",
    "#f781bf",
    "#999999",
    "#17becf",
    "#bcbd22",
)
LINE = "#1f3b73"
WORKER_LINE = "#a0a0a0"
NO_MATPLOTLIB = (
    "_No chart: matplotlib is not installed "
    "(`pip install 'trionet[bench]'`, then re-render with "
    "`python -m benchmarks.soak.report report.json`)._"
)

Result = Mapping[str, Any]


# ------------------------------------------------------------------ numbers


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, None, NaN, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt_int(value: Any) -> str:
    """``12,345`` or "—"."""
    number = _num(value)
    return DASH if number is None else f"{number:,.0f}"


def fmt_float(value: Any, digits: int = 1, unit: str = "") -> str:
    """``value`` with ``digits`` decimals and an optional unit, or "—"."""
    number = _num(value)
    if number is None:
        return DASH
    return f"{number:,.{digits}f}{' ' + unit if unit else ''}"


def fmt_mib(value: Any) -> str:
    """A byte count in MiB (``123.4 MiB``), or "—"."""
    number = _num(value)
    return DASH if number is None else f"{number / MIB:,.1f} MiB"


def fmt_pct(value: Any) -> str:
    """A signed percentage (``+3.2 %``), or "—"."""
    number = _num(value)
    return DASH if number is None else f"{number:+.1f} %"


def fmt_duration(seconds: Any) -> str:
    """``12 min 5 s`` / ``42.0 s`` / "—"."""
    number = _num(seconds)
    if number is None:
        return DASH
    if number < 60:
        return f"{number:.1f} s"
    minutes, secs = divmod(round(number), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min {secs} s"
    return f"{minutes} min {secs} s"


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell (no pipes, no newlines)."""
    text = DASH if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table; a row "(none)" when there are no rows."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    body = ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    if not body:
        body = ["| " + " | ".join(["(none)"] + [""] * (len(header) - 1)) + " |"]
    return lines + body


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def verdict(result: Result) -> str:
    """``PASS`` when the result says ``ok``, else ``FAIL`` (a missing ``ok`` fails)."""
    return "PASS" if result.get("ok") is True else "FAIL"


def _workers(result: Result) -> Any:
    return _mapping(result.get("config")).get("workers")


# ----------------------------------------------------------------- markdown


def _figure_rows(figures: Mapping[str, Any]) -> list[tuple[str, str]]:
    f = figures
    return [
        ("Canary exchanges", fmt_int(f.get("exchanges"))),
        ("Lost", fmt_int(f.get("lost"))),
        ("Corrupted", fmt_int(f.get("corrupted"))),
        ("Faults injected", fmt_int(f.get("faults"))),
        (
            "Open descriptors (baseline / peak / final)",
            " / ".join(fmt_int(f.get(k)) for k in ("fds_baseline", "fds_peak", "fds_final")),
        ),
        (
            "Trio tasks (baseline / final)",
            " / ".join(fmt_int(f.get(k)) for k in ("tasks_baseline", "tasks_final")),
        ),
        (
            "RSS (start / end / growth)",
            f"{fmt_mib(f.get('rss_start'))} / {fmt_mib(f.get('rss_end'))} / "
            f"{fmt_pct(f.get('rss_growth_pct'))}",
        ),
        (
            "Canary latency (p50 / p99)",
            f"{fmt_float(f.get('canary_p50_ms'), 2, 'ms')} / "
            f"{fmt_float(f.get('canary_p99_ms'), 2, 'ms')}",
        ),
        (
            "Canary rolling 5-s p99 outside faults (worst / bound)",
            f"{fmt_float(f.get('canary_p99_rolling_worst_ms'), 2, 'ms')} / "
            f"{fmt_float(f.get('canary_p99_bound_ms'), 0, 'ms')}",
        ),
        ("Recovery after fd exhaustion", fmt_float(f.get("recovery_s"), 2, "s")),
        (
            "WARNING / ERROR log lines",
            f"{fmt_int(f.get('warnings'))} / {fmt_int(f.get('errors'))}",
        ),
        ("WARNING cap (derived from the rate limits)", fmt_int(f.get("warnings_cap"))),
    ]


def _config_line(config: Mapping[str, Any]) -> str:
    if not config:
        return "Config: —"
    parts = [f"`{k}={json.dumps(config[k], sort_keys=True)}`" for k in sorted(config, key=str)]
    return "Config: " + ", ".join(parts)


def _outcomes(outcomes: Mapping[str, Any]) -> str:
    """``ok 120, refused 3`` — most frequent first, then by name."""
    items = sorted(outcomes.items(), key=lambda kv: (-(_num(kv[1]) or 0), str(kv[0])))
    return ", ".join(f"{name} {fmt_int(count)}" for name, count in items) or DASH


def render_markdown(result: Result, *, chart: bool = True) -> str:
    """The Markdown report; ``chart`` False replaces the image by a note why there is none."""
    config = _mapping(result.get("config"))
    figures = _mapping(result.get("figures"))
    faults = [_mapping(x) for x in _list(result.get("faults"))]
    clients = _mapping(result.get("clients"))
    checks = [_mapping(x) for x in _list(result.get("checks"))]
    lines = [
        f"# trionet chaos soak: {verdict(result)}",
        "",
        "How to read this: the soak runs a trionet server under a steady canary client "
        "while it injects faults (the shaded windows of the chart) and hostile clients; "
        "a PASS means every *asserted* check held, *reported-only* checks are shown for "
        f"judgement but do not fail the run. See `{DOCS_PAGE}` for what each check and "
        "figure means and how to reproduce a run.",
        "",
        f"Started {_cell(result.get('started'))}; duration "
        f"{fmt_duration(result.get('duration_s'))}; workers {_cell(_workers(result))}.",
        "",
        _config_line(config),
        "",
        "## Key figures",
        "",
        *_table(("Figure", "Value"), _figure_rows(figures)),
        "",
        "## Fault windows",
        "",
        *_table(
            ("#", "Kind", "Start (s)", "End (s)", "Length (s)", "Detail"),
            (
                (
                    i,
                    fault.get("kind"),
                    fmt_float(fault.get("start")),
                    fmt_float(fault.get("end")),
                    fmt_float(_length(fault)),
                    fault.get("detail"),
                )
                for i, fault in enumerate(faults, 1)
            ),
        ),
        "",
        "## Client categories",
        "",
        *_table(
            ("Category", "Attempts", "Outcomes"),
            (
                (
                    name,
                    fmt_int(_mapping(entry).get("attempts")),
                    _outcomes(_mapping(_mapping(entry).get("outcomes"))),
                )
                for name, entry in sorted(clients.items(), key=lambda kv: str(kv[0]))
            ),
        ),
        "",
        "## Checks",
        "",
        *_table(
            ("Check", "Kind", "Result", "Detail"),
            (
                (
                    check.get("name"),
                    "asserted" if check.get("asserted") else "reported only",
                    "ok" if check.get("ok") is True else "FAIL",
                    check.get("detail"),
                )
                for check in checks
            ),
        ),
        "",
        "## Chart",
        "",
        "![soak](report.png)" if chart else NO_MATPLOTLIB,
        "",
    ]
    return "\n".join(lines)


def _length(fault: Mapping[str, Any]) -> float | None:
    start, end = _num(fault.get("start")), _num(fault.get("end"))
    return None if start is None or end is None else end - start


# -------------------------------------------------------------------- chart


def _series(samples: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    """One value per sample (NaN where missing, so the line shows a gap)."""
    out = []
    for sample in samples:
        number = _num(sample.get(key))
        out.append(math.nan if number is None else number / scale)
    return out


def _worker_series(
    samples: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0
) -> dict[str, tuple[list[float], list[float]]]:
    """Per worker pid: (times, values) of ``key``, for the thin per-worker lines."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for sample in samples:
        t = _num(sample.get("t"))
        if t is None:
            continue
        for worker in _list(sample.get("workers")):
            worker = _mapping(worker)
            value = _num(worker.get(key))
            if value is None:
                continue
            ts, vs = out.setdefault(str(worker.get("pid", "?")), ([], []))
            ts.append(t)
            vs.append(value / scale)
    return out


def _load_pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render_png(result: Result, path: str | os.PathLike[str]) -> bool:
    """Draw the five-panel chart into ``path``; False (nothing written) without matplotlib."""
    plt = _load_pyplot()
    if plt is None:
        return False
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    samples = [_mapping(s) for s in _list(result.get("samples"))]
    samples = [s for s in samples if _num(s.get("t")) is not None]
    figures = _mapping(result.get("figures"))
    faults = [_mapping(x) for x in _list(result.get("faults"))]
    times = [float(s["t"]) for s in samples]
    panels: list[tuple[str, str, float, str | None, str | None]] = [
        # (sample key, axis label, scale, baseline figure key, per-worker key)
        ("fds", "open descriptors", 1.0, "fds_baseline", "fds"),
        ("tasks", "live Trio tasks", 1.0, "tasks_baseline", "tasks"),
        ("rss", "RSS (MiB)", float(MIB), None, "rss"),
        ("canary_p99_ms", "canary p99 (ms)", 1.0, None, None),
        ("throughput", "canary exchanges/s", 1.0, None, None),
    ]
    kinds = sorted({str(f.get("kind", "?")) for f in faults})
    colours = {k: FAULT_COLOURS[i % len(FAULT_COLOURS)] for i, k in enumerate(kinds)}
    end = max(
        [_num(result.get("duration_s")) or 0.0, *times]
        + [_num(f.get("end")) or 0.0 for f in faults]
    )

    per_worker = False
    fig, axes = plt.subplots(len(panels), 1, sharex=True, figsize=FIGSIZE, dpi=DPI)
    try:
        for ax, (key, label, scale, baseline_key, worker_key) in zip(axes, panels, strict=True):
            for fault in faults:
                start, stop = _num(fault.get("start")), _num(fault.get("end"))
                if start is None:
                    continue
                stop = end if stop is None or stop < start else stop
                ax.axvspan(
                    start, stop, color=colours[str(fault.get("kind", "?"))], alpha=0.18, lw=0
                )
            workers = _worker_series(samples, worker_key, scale) if worker_key else {}
            if len(workers) > 1:
                per_worker = True
                for ts, vs in workers.values():
                    ax.plot(ts, vs, lw=0.6, color=WORKER_LINE)
            if samples:
                ax.plot(times, _series(samples, key, scale), lw=1.4, color=LINE)
            baseline = _num(figures.get(baseline_key)) if baseline_key else None
            if baseline is not None:
                ax.axhline(baseline, ls="--", lw=1.0, color="#2ca02c")
                ax.annotate(
                    f"baseline {baseline:,.0f}",
                    xy=(1.0, baseline),
                    xycoords=("axes fraction", "data"),
                    xytext=(-4, 3),
                    textcoords="offset points",
                    ha="right",
                    fontsize=8,
                    color="#2ca02c",
                )
            ax.set_ylabel(label, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(alpha=0.3)
            if not samples:
                ax.text(0.5, 0.5, "no samples", transform=ax.transAxes, ha="center", va="center")
        axes[-1].set_xlabel("seconds since start", fontsize=9)
        axes[-1].set_xlim(0, end if end > 0 else 1.0)
        workers_text = _workers(result)
        fig.suptitle(
            f"trionet chaos soak: {verdict(result)} — "
            f"{fmt_duration(result.get('duration_s'))}, "
            f"{DASH if workers_text is None else workers_text} worker(s)",
            fontsize=13,
            color="#1a7f37" if verdict(result) == "PASS" else "#c62828",
            y=0.985,
        )
        handles: list[Any] = [Line2D([], [], lw=1.4, color=LINE, label="all workers")]
        if per_worker:
            handles.append(Line2D([], [], lw=0.6, color=WORKER_LINE, label="each worker"))
        handles += [Patch(color=colours[k], alpha=0.35, label=f"fault: {k}") for k in kinds]
        fig.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.955),
            ncol=min(len(handles), 7),
            fontsize=8,
            frameon=False,
        )
        fig.subplots_adjust(left=0.07, right=0.98, top=0.89, bottom=0.06, hspace=0.12)
        fig.savefig(Path(path), dpi=DPI, metadata={"Software": None})
    finally:
        plt.close(fig)
    return True


# -------------------------------------------------------------------- files


def write_report(result: Result, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write report.json, report.md and report.png into ``out_dir``; return their paths.

    ``"png"`` is absent from the answer when matplotlib is missing (the
    Markdown then says so, and a stale ``report.png`` there is removed so the
    report never shows another run's chart).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"json": out / "report.json"}
    paths["json"].write_text(
        json.dumps(result, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    png = out / "report.png"
    chart = render_png(result, png)
    if chart:
        paths["png"] = png
    else:
        png.unlink(missing_ok=True)
    paths["md"] = out / "report.md"
    paths["md"].write_text(render_markdown(result, chart=chart), encoding="utf-8")
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: re-render a report from a saved results JSON file."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak.report",
        description="Render report.json/.md/.png from a saved chaos soak result.",
    )
    parser.add_argument("results", type=Path, help="a saved results.json (or report.json)")
    parser.add_argument(
        "--out", type=Path, default=None, help="output directory (default: the file's directory)"
    )
    args = parser.parse_args(argv)
    try:
        result = json.loads(args.results.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.results}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(result, dict):
        print(f"{args.results}: not a JSON object", file=sys.stderr)
        return 2
    paths = write_report(result, args.out if args.out is not None else args.results.parent)
    for kind in ("json", "md", "png"):
        if kind in paths:
            print(paths[kind])
    if "png" not in paths:
        print("no chart: matplotlib is not installed", file=sys.stderr)
    print(verdict(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
