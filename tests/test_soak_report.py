"""The chaos soak's report writer (benchmarks/soak/report.py) on a synthetic result.

No soak runs here: a result dict shaped like the harness's is built by hand,
and the JSON, Markdown and PNG written from it are checked.  The JSON and
Markdown tests do not need matplotlib (the chart is disabled for them by
hiding matplotlib); only the PNG tests do, and they skip, saying why, when it
is not installed.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.soak import report  # noqa: E402

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(
    not HAVE_MATPLOTLIB,
    reason="matplotlib is not installed (the 'bench' extra): the PNG chart cannot be drawn",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIB = 1024 * 1024


def make_result(*, ok: bool = False, n: int = 50) -> dict[str, Any]:
    """A result as the harness writes it: n samples 1 s apart, two faults, one failing check."""
    samples = []
    for i in range(n):
        workers = [
            {"pid": 1000 + w, "fds": 20 + w + i % 3, "tasks": 10 + w, "rss": (40 + w) * MIB}
            for w in range(2)
        ]
        samples.append(
            {
                "t": float(i),
                "fds": 45 + (30 if 10 <= i < 20 else 0),
                "tasks": 22 + i % 4,
                "rss": (80 + i / 10) * MIB,
                "connections": 5 + i % 7,
                "canary_p99_ms": None if i < 5 else 1.5 + (i % 5) / 10,
                "throughput": 0.0 if i == 0 else 180.0 + i,
                "stats": {"accepted": 10 * i, "closed": 10 * i - 3},
                "workers": workers,
            }
        )
    return {
        "config": {"minutes": 1, "workers": 2, "seed": 7, "defence_on": True},
        "started": "2024-12-06T02:00:00+00:00",
        "duration_s": float(n),
        "samples": samples,
        "faults": [
            {"kind": "fd-exhaustion", "start": 10.0, "end": 20.0, "detail": "rlimit 64"},
            {"kind": "slowloris", "start": 30.5, "end": 41.0, "detail": "200 | slow peers"},
        ],
        "clients": {
            "canary": {"attempts": 9123, "outcomes": {"ok": 9120, "reset": 3}},
            "half-open": {"attempts": 42, "outcomes": {"timed-out": 42}},
        },
        "checks": [
            {"name": "no-lost-exchanges", "ok": True, "asserted": True, "detail": "0 lost"},
            {"name": "fds-return-to-baseline", "ok": False, "asserted": True, "detail": "+3"},
            {"name": "rss-growth-small", "ok": True, "asserted": False, "detail": "1.2 %"},
        ],
        "figures": {
            "exchanges": 9120,
            "lost": 0,
            "corrupted": 0,
            "faults": 2,
            "fds_baseline": 45,
            "fds_peak": 75,
            "fds_final": 48,
            "tasks_baseline": 22,
            "tasks_final": 23,
            "rss_start": 80 * MIB,
            "rss_end": 85 * MIB,
            "rss_growth_pct": 6.25,
            "canary_p50_ms": 0.87,
            "canary_p99_ms": 1.94,
            "recovery_s": 1.25,
            "warnings": 17,
            "errors": 0,
        },
        "ok": ok,
    }


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import matplotlib`` fail, as on a machine without the bench extra."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (after checking the signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE
    assert head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_json_round_trips(tmp_path: Path, no_matplotlib: None) -> None:
    result = make_result()
    paths = report.write_report(result, tmp_path / "out")
    assert paths["json"] == tmp_path / "out" / "report.json"
    assert json.loads(paths["json"].read_text()) == result
    # Pretty and sorted: the first key of the file is "checks".
    text = paths["json"].read_text()
    assert text.startswith('{\n  "checks"')


def test_markdown_content(tmp_path: Path, no_matplotlib: None) -> None:
    result = make_result(ok=False)
    md = report.write_report(result, tmp_path)["md"].read_text()
    assert md.splitlines()[0] == "# trionet chaos soak: FAIL"
    assert "PASS" not in md.splitlines()[0]
    assert "docs/source/howto/soak.rst" in md
    assert "`workers=2`" in md and "`seed=7`" in md and "`defence_on=true`" in md
    for expected in (
        "| Canary exchanges | 9,120 |",
        "| Lost | 0 |",
        "| Corrupted | 0 |",
        "| Faults injected | 2 |",
        "| Open descriptors (baseline / peak / final) | 45 / 75 / 48 |",
        "| Trio tasks (baseline / final) | 22 / 23 |",
        "| RSS (start / end / growth) | 80.0 MiB / 85.0 MiB / +6.2 % |",
        "| Canary latency (p50 / p99) | 0.87 ms / 1.94 ms |",
        "| Recovery after fd exhaustion | 1.25 s |",
        "| WARNING / ERROR log lines | 17 / 0 |",
        # Fault windows, with a pipe in the detail escaped.
        "| 1 | fd-exhaustion | 10.0 | 20.0 | 10.0 | rlimit 64 |",
        "| 2 | slowloris | 30.5 | 41.0 | 10.5 | 200 \\| slow peers |",
        # Clients: most frequent outcome first.
        "| canary | 9,123 | ok 9,120, reset 3 |",
        "| half-open | 42 | timed-out 42 |",
        # Checks: asserted or reported only, ok or FAIL.
        "| no-lost-exchanges | asserted | ok | 0 lost |",
        "| fds-return-to-baseline | asserted | FAIL | +3 |",
        "| rss-growth-small | reported only | ok | 1.2 % |",
    ):
        assert expected in md, expected
    # Without matplotlib: a note instead of a broken image link, and no PNG.
    assert "![soak](report.png)" not in md
    assert "matplotlib is not installed" in md
    assert not (tmp_path / "report.png").exists()


def test_markdown_pass_and_image_link() -> None:
    md = report.render_markdown(make_result(ok=True))
    assert md.splitlines()[0] == "# trionet chaos soak: PASS"
    assert "![soak](report.png)" in md
    assert "matplotlib is not installed" not in md


def test_no_matplotlib_removes_stale_chart(tmp_path: Path, no_matplotlib: None) -> None:
    stale = tmp_path / "report.png"
    stale.write_bytes(PNG_SIGNATURE + b"another run")
    paths = report.write_report(make_result(), tmp_path)
    assert set(paths) == {"json", "md"}
    assert not stale.exists()


@pytest.mark.parametrize(
    "damage",
    ["no-samples", "no-workers", "none-values", "empty-dict", "no-figures", "bad-types"],
)
def test_tolerant_markdown(tmp_path: Path, no_matplotlib: None, damage: str) -> None:
    result = damaged(damage)
    paths = report.write_report(result, tmp_path)
    md = paths["md"].read_text()
    assert md.startswith("# trionet chaos soak: ")
    assert json.loads(paths["json"].read_text()) == result
    if damage in ("none-values", "no-figures", "empty-dict"):
        assert "| Recovery after fd exhaustion | — |" in md
    if damage == "empty-dict":
        assert md.splitlines()[0].endswith("FAIL")  # no "ok" is not a pass
        assert "| (none) |" in md


def damaged(kind: str) -> dict[str, Any]:
    """The synthetic result with one kind of gap or oddity."""
    result = make_result()
    if kind == "no-samples":
        result["samples"] = []
    elif kind == "no-workers":
        for sample in result["samples"]:
            del sample["workers"]
    elif kind == "none-values":
        for sample in result["samples"]:
            sample["canary_p99_ms"] = None
            sample["fds"] = None
        result["figures"]["recovery_s"] = None
        result["figures"]["canary_p99_ms"] = None
        result["faults"][1]["end"] = None
    elif kind == "empty-dict":
        result = {}
    elif kind == "no-figures":
        del result["figures"]
        del result["config"]["workers"]
    elif kind == "bad-types":
        result["figures"]["lost"] = "n/a"
        result["clients"]["odd"] = {"attempts": None}
        result["checks"].append({"name": "bare"})
    return result


@needs_matplotlib
def test_png_size_and_determinism(tmp_path: Path) -> None:
    result = make_result()
    paths = report.write_report(result, tmp_path / "a")
    assert set(paths) == {"json", "md", "png"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert png_size(paths["png"]) == (1400, 1000)
    assert "![soak](report.png)" in paths["md"].read_text()
    # The same result draws the same bytes (no timestamp, no software version).
    again = report.write_report(copy.deepcopy(result), tmp_path / "b")["png"]
    assert again.read_bytes() == paths["png"].read_bytes()
    assert b"Software" not in again.read_bytes()


@needs_matplotlib
@pytest.mark.parametrize("damage", ["no-samples", "no-workers", "none-values"])
def test_tolerant_png(tmp_path: Path, damage: str) -> None:
    paths = report.write_report(damaged(damage), tmp_path)
    assert png_size(paths["png"]) == (1400, 1000)


def test_cli_rerenders(tmp_path: Path) -> None:
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps(make_result(ok=True)))
    out = tmp_path / "rendered"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak.report", str(saved), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "PASS"
    assert json.loads((out / "report.json").read_text()) == make_result(ok=True)
    assert (out / "report.md").read_text().startswith("# trionet chaos soak: PASS")
    if HAVE_MATPLOTLIB:
        assert png_size(out / "report.png") == (1400, 1000)


def test_cli_refuses_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text("[1, 2]")
    assert report.main([str(bad)]) == 2
    assert report.main([str(tmp_path / "missing.json")]) == 2
    assert not (tmp_path / "report.md").exists()
