"""Invariants the soak checks: at every sample, at each quiet point, and at the end.

A check is ``{"name", "ok", "asserted", "detail"}``; only asserted checks
decide the exit status (timing figures are reported, asserted only on long
runs where they are stable).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .server import Reading

__all__ = ["GAUGES", "Ledger", "SampleChecker", "check", "leak_checks", "scan_log"]

#: ServerStats fields that are current numbers, not counters.
GAUGES = frozenset({"active", "lingering"})
#: Seconds without a new snapshot after which a server counts as hung.
STALE_AFTER = 5.0


def check(name: str, ok: bool, detail: str, asserted: bool = True) -> dict[str, Any]:
    """One check result."""
    return {"name": name, "ok": bool(ok), "asserted": asserted, "detail": detail}


def counters(stats: dict[str, int]) -> Counter[str]:
    """The cumulative counters of a stats dict (gauges left out)."""
    return Counter({k: int(v) for k, v in stats.items() if k not in GAUGES})


class Ledger:
    """A server's counters since its first start, across drain-and-restarts.

    Each retired process's final counts (its last snapshot, ``stopped``)
    are added to a base; a later reading of a retired process is ignored.
    """

    def __init__(self) -> None:
        """An empty ledger."""
        self.base: Counter[str] = Counter()
        self.retired: set[int] = set()
        #: The cumulative counters at each quiet point, by its label.
        self.cumulative_at: dict[str, dict[str, int]] = {}

    def retire(self, final: Reading) -> None:
        """``final`` is the last snapshot of a process that has exited."""
        if not set(final.pids) & self.retired:
            self.base.update(counters(final.totals))
            self.retired.update(final.pids)

    def cumulative(self, reading: Reading) -> dict[str, int] | None:
        """Counters since the first start, or None for a retired process's reading."""
        if set(reading.pids) & self.retired:
            return None
        total = Counter(self.base)
        total.update(counters(reading.totals))
        return {k: total[k] for k in sorted(set(total) | set(reading.totals)) if k not in GAUGES}


@dataclass
class SampleChecker:
    """The per-sample invariants, with a count and the first examples of each violation."""

    checked: int = 0
    violations: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    last: dict[str, dict[str, int]] = field(default_factory=dict)
    last_unreported: dict[str, int] = field(default_factory=dict)

    def _fail(self, kind: str, detail: str) -> None:
        self.violations[kind] += 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < 5:
            examples.append(detail)

    def check(
        self,
        name: str,
        reading: Reading,
        cumulative: dict[str, int],
        t: float,
        stale_ok: bool,
    ) -> None:
        """Check one server's reading taken at ``t`` (seconds since the start)."""
        self.checked += 1
        for proc in reading.processes:
            s = proc.stats
            if s is not None and s["accepted"] != s["active"] + s["closed"]:
                self._fail(
                    "accepted == active + closed",
                    f"t={t:.1f} {name} pid {proc.pid}: {s['accepted']} != "
                    f"{s['active']} + {s['closed']}",
                )
        tot = reading.totals
        if tot and tot["accepted"] != tot["active"] + tot["closed"]:
            self._fail("accepted == active + closed", f"t={t:.1f} {name} totals: {tot}")
        unreported = int((reading.supervisor or {}).get("unreported") or 0)
        previous = self.last.get(name)
        if previous is not None and unreported == self.last_unreported.get(name, 0):
            down = {k: (previous[k], v) for k, v in cumulative.items() if v < previous.get(k, 0)}
            if down:
                self._fail("counters never decrease", f"t={t:.1f} {name}: {down}")
        self.last[name] = cumulative
        self.last_unreported[name] = unreported
        age = time.time() - reading.time
        if not reading.stopped and age > STALE_AFTER and not stale_ok:
            self._fail("stats file fresh", f"t={t:.1f} {name}: snapshot {age:.1f} s old")

    def results(self) -> list[dict[str, Any]]:
        """One check per invariant."""
        out = []
        for kind in ("accepted == active + closed", "counters never decrease", "stats file fresh"):
            bad = self.violations[kind]
            detail = f"{self.checked} readings, {bad} violations"
            if bad:
                detail += ": " + " | ".join(self.examples[kind])
            out.append(check(f"every sample: {kind}", bad == 0, detail))
        return out


def leak_checks(
    label: str, baseline: Reading, now: Reading, fd_slack: int = 2
) -> list[dict[str, Any]]:
    """Each process is back where it was: descriptors (within ``fd_slack``), tasks, connections.

    Per process, by pid (the supervisor and each worker, or the one server),
    never on sums: +3 descriptors in one worker and -3 in another is a
    leak.  Tasks must equal the baseline exactly (one more is a leak, one
    fewer a lost task).  A pid in one reading and not the other (a worker
    that died and was replaced) fails both checks.
    """
    lingering = int(now.totals.get("lingering", 0))
    before = {p.pid: p for p in baseline.processes}
    after = {p.pid: p for p in now.processes}
    fds, tasks = [], []
    fds_ok = tasks_ok = set(before) == set(after) and bool(before)
    for pid in sorted(set(before) | set(after)):
        b, a = before.get(pid), after.get(pid)
        if b is None or a is None:
            fds.append(f"pid {pid}: {'gone' if a is None else 'new'}")
            continue
        fds.append(f"pid {pid} {b.fds}->{a.fds}")
        tasks.append(f"pid {pid} {b.tasks}->{a.tasks}")
        fds_ok = fds_ok and abs(a.fds - b.fds) <= fd_slack
        tasks_ok = tasks_ok and a.tasks == b.tasks
    return [
        check(
            f"{label}: descriptors back to baseline, per process",
            fds_ok,
            f"{', '.join(fds)} (tolerance ±{fd_slack} each)",
        ),
        check(
            f"{label}: tasks back to baseline, per process",
            tasks_ok,
            ", ".join(tasks) or "no processes",
        ),
        check(
            f"{label}: no live connections",
            now.connections == 0 and lingering == 0,
            f"connections {now.connections}, lingering {lingering}",
        ),
    ]


#: A formatted log line (``%(asctime)s %(levelname)s ...``: the date and time are two fields).
_LEVEL = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
#: A line at ERROR or CRITICAL in another format (``ERROR:name:...``, ``[ERROR]``, ...).
_ERROR_WORD = re.compile(r"(?:^|[\s\[(])(ERROR|CRITICAL)(?:[\s:\])]|$)")
#: A traceback's first line, anywhere in a line (Trio prints
#: ``  + Exception Group Traceback (most recent call last):``).
_TRACEBACK = "Traceback (most recent call last)"


def scan_log(path: Path) -> dict[str, Any]:
    """Count a server log's WARNING and ERROR/CRITICAL lines and tracebacks, with examples.

    An error is any line with a traceback's first line anywhere in it, any
    formatted line at ERROR or CRITICAL, and any other line that names one
    of those levels as a word.
    """
    levels: Counter[str] = Counter()
    errors: list[str] = []
    warnings: Counter[str] = Counter()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        match = _LEVEL.match(line)
        level = match.group(1) if match else None
        if _TRACEBACK in line:
            levels["TRACEBACK"] += 1
            errors.append(line)
        elif level is None:
            word = _ERROR_WORD.search(line)
            if word:
                levels[word.group(1)] += 1
                errors.append(line)
        else:
            levels[level] += 1
            if level in ("ERROR", "CRITICAL"):
                errors.append(line)
            elif level == "WARNING":
                warnings[re.sub(r"\d+", "N", line.split(" ", 3)[-1])[:120]] += 1
    return {
        "levels": dict(levels),
        "errors": levels["ERROR"] + levels["CRITICAL"] + levels["TRACEBACK"],
        "warnings": levels["WARNING"],
        "error_examples": errors[:10],
        "warning_kinds": dict(warnings.most_common(10)),
    }
