"""The chaos soak's checkers (benchmarks/soak) fed data that must fail.

No server runs here: each test builds the tallies, readings, log lines or
latencies a broken server would produce and asserts that the soak's check
fails on them -- and, where it makes the failure meaningful, that the same
check passes on the good data next to it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.soak.bounds import (  # noqa: E402
    P99_BOUND_MS,
    canary_check,
    fault_kinds_check,
    latency_check,
    rolling_p99,
    stall_check,
    supervisor_checks,
    warning_cap,
)
from benchmarks.soak.canary import CanaryStats  # noqa: E402
from benchmarks.soak.checks import SampleChecker, leak_checks, scan_log  # noqa: E402
from benchmarks.soak.net import Tallies  # noqa: E402
from benchmarks.soak.server import ProcessReading, Reading  # noqa: E402
from benchmarks.soak.verdict import counter_checks, idle_check  # noqa: E402


def by_name(checks: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The one check whose name starts with ``prefix``."""
    found = [c for c in checks if c["name"].startswith(prefix)]
    assert len(found) == 1, [c["name"] for c in checks]
    return found[0]


def proc(pid: int, fds: int, tasks: int, stats: dict[str, int] | None = None) -> ProcessReading:
    """One process's reading (``stats`` None: a supervisor)."""
    return ProcessReading(pid=pid, fds=fds, tasks=tasks, rss=0, connections=0, stats=stats)


def reading(*processes: ProcessReading, totals: dict[str, int] | None = None) -> Reading:
    """A snapshot of ``processes`` taken now."""
    return Reading(time=time.time(), stopped=False, processes=list(processes), totals=totals or {})


# -- counters ---------------------------------------------------------------


def denied_tallies(refused: int) -> Tallies:
    """Denied clients that each saw their refusal (no unknown outcome)."""
    tallies = Tallies()
    tallies["denied"].attempts = refused
    tallies["denied"].outcomes["refused"] = refused
    return tallies


def test_rejected_access_off_by_one_fails() -> None:
    name = "denied connects"
    good = by_name(counter_checks(denied_tallies(5), {"rejected_access": 5}), name)
    assert good["ok"] and good["asserted"]
    for wrong in (4, 6):
        bad = by_name(counter_checks(denied_tallies(5), {"rejected_access": wrong}), name)
        assert not bad["ok"] and bad["asserted"]


def test_resets_under_the_mid_reply_lower_bound_fail() -> None:
    tallies = Tallies()
    tallies["resetter"].attempts = 10
    tallies["resetter"].outcomes.update({"reset_mid_reply": 5, "reset_mid_request": 5})
    name = "mid-reply resets <= resets"
    assert by_name(counter_checks(tallies, {"resets": 7}), name)["ok"]
    assert not by_name(counter_checks(tallies, {"resets": 0}), name)["ok"]
    assert not by_name(counter_checks(tallies, {"resets": 4}), name)["ok"]
    assert not by_name(counter_checks(tallies, {"resets": 11}), name)["ok"]


def test_idle_closed_off_by_one_fails() -> None:
    tallies = Tallies()
    tallies["idler"].attempts = 4
    tallies["idler"].outcomes["idle_closed"] = 4
    tallies["slow_reader"].attempts = 2
    tallies["slow_reader"].outcomes["closed_by_server"] = 2
    tallies["flood_held"].outcomes.update({"idle_closed": 3, "closed_by_client": 7})
    assert idle_check(tallies, 9)["ok"]
    assert "exact" in idle_check(tallies, 9)["detail"]
    assert not idle_check(tallies, 8)["ok"]
    assert not idle_check(tallies, 10)["ok"]
    assert not idle_check(tallies, 0)["ok"]


def test_accepted_not_active_plus_closed_fails() -> None:
    checker = SampleChecker()
    stats = {"accepted": 10, "active": 1, "closed": 8}
    one = reading(proc(100, 20, 10, stats), totals=stats)
    checker.check("server", one, {"accepted": 10, "closed": 8}, 1.0, stale_ok=False)
    result = by_name(checker.results(), "every sample: accepted == active + closed")
    assert not result["ok"] and result["asserted"]

    fine = SampleChecker()
    good = {"accepted": 10, "active": 2, "closed": 8}
    fine.check("server", reading(proc(100, 20, 10, good), totals=good), good, 1.0, False)
    assert all(c["ok"] for c in fine.results())


# -- the log ----------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "2026-12-06 02:48:44,123 ERROR trionet.server: handler failed on connection #3",
        "2026-12-06 02:48:44,123 CRITICAL trionet[1234]: gone",
        "  + Exception Group Traceback (most recent call last):",
        "Traceback (most recent call last):",
        "ERROR:root:printed with logging's default format",
    ],
)
def test_error_lines_are_caught(tmp_path: Path, line: str) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "2026-12-06 02:48:43,000 INFO trionet.server: listening\n"
        f"{line}\n"
        "2026-12-06 02:48:45,000 WARNING trionet.accept: accept() failed: EMFILE\n"
    )
    scanned = scan_log(log)
    assert scanned["errors"] == 1
    assert scanned["error_examples"] == [line]
    assert scanned["warnings"] == 1


def test_clean_log_has_no_errors(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "2026-12-06 02:48:43,000 INFO trionet.server: stats handler_errors=0\n"
        "2026-12-06 02:48:43,000 DEBUG trionet.server: reset by peer (ConnectionResetError)\n"
    )
    assert scan_log(log)["errors"] == 0


def test_warning_cap_is_derived() -> None:
    cap, formula = warning_cap(60.0, 3, 0)
    # B = 3 + 3 = 6; 2 processes x ((2 x 3 + 1) x 6 + 1) + 2 writers x (6 + 1)
    assert cap == 2 * (7 * 6 + 1) + 2 * 7
    assert str(cap) in formula
    assert warning_cap(600.0, 3, 0)[0] > cap  # grows with the run
    assert warning_cap(60.0, 3, 2)[0] > cap  # and with the processes


# -- leaks ------------------------------------------------------------------


def test_descriptor_leak_of_three_in_one_process_fails() -> None:
    base = reading(proc(100, 20, 10, {}))
    assert by_name(leak_checks("Q3", base, reading(proc(100, 22, 10, {}))), "Q3: desc")["ok"]
    bad = by_name(leak_checks("Q3", base, reading(proc(100, 23, 10, {}))), "Q3: descriptors")
    assert not bad["ok"] and bad["asserted"]


def test_workers_leak_hidden_by_the_sum_still_fails() -> None:
    base = reading(proc(1, 12, 8), proc(101, 20, 10, {}), proc(102, 20, 10, {}))
    now = reading(proc(1, 12, 8), proc(101, 23, 10, {}), proc(102, 17, 10, {}))
    assert now.fds == base.fds  # the sums agree: only a per-process check sees it
    bad = by_name(leak_checks("Q3", base, now), "Q3: descriptors")
    assert not bad["ok"]
    assert "pid 101 20->23" in bad["detail"]


def test_a_lost_task_fails() -> None:
    base = reading(proc(1, 12, 8), proc(101, 20, 10, {}))
    for tasks in (9, 11):
        now = reading(proc(1, 12, 8), proc(101, 20, tasks, {}))
        assert not by_name(leak_checks("Q3", base, now), "Q3: tasks")["ok"]
    assert by_name(leak_checks("Q3", base, base), "Q3: tasks")["ok"]


def test_a_replaced_worker_fails() -> None:
    base = reading(proc(1, 12, 8), proc(101, 20, 10, {}))
    now = reading(proc(1, 12, 8), proc(103, 20, 10, {}))
    checks = leak_checks("Q3", base, now)
    assert not by_name(checks, "Q3: descriptors")["ok"]
    assert not by_name(checks, "Q3: tasks")["ok"]


# -- canaries ---------------------------------------------------------------


def canaries(**outcomes: int) -> dict[str, CanaryStats]:
    """Three canary kinds, each served; ``outcomes`` added to the first."""
    out = {name: CanaryStats() for name in ("canary", "canary_tls", "canary_proxy")}
    for stats in out.values():
        stats.record("ok")
    for outcome, n in outcomes.items():
        for _ in range(n):
            out["canary"].record(outcome, "test")
    return out


def test_a_lost_canary_reply_fails() -> None:
    assert canary_check(canaries())["ok"]
    bad = canary_check(canaries(lost=1))
    assert not bad["ok"] and bad["asserted"]
    assert not canary_check(canaries(corrupt=1))["ok"]


def test_a_canary_never_served_fails() -> None:
    stats = canaries()
    stats["canary_tls"] = CanaryStats()
    assert not canary_check(stats)["ok"]


def test_a_stall_outside_a_descriptor_window_fails() -> None:
    t0 = 1000.0
    windows = [(t0 + 10.0, t0 + 16.0)]
    inside = canaries()
    inside["canary"].stalls.append((t0 + 12.0, t0 + 27.0, "fresh 127.0.0.3"))
    assert stall_check(inside, windows, t0)["ok"]
    outside = canaries()
    outside["canary"].stalls.append((t0 + 40.0, t0 + 55.0, "fresh 127.0.0.3"))
    bad = stall_check(outside, windows, t0)
    assert not bad["ok"] and bad["asserted"]


def latencies(slow_ms: float, seconds: int = 60, per_second: int = 100) -> list[Any]:
    """Exchanges at 2 ms, with 2 % at ``slow_ms`` (so the p99 is ``slow_ms``)."""
    out = []
    for i in range(seconds * per_second):
        done = 100.0 + i / per_second
        out.append((done, slow_ms if i % 50 == 0 else 2.0))
    return out


def test_p99_over_the_bound_fails_a_long_run() -> None:
    slow = rolling_p99(latencies(P99_BOUND_MS * 2), [])
    assert slow["worst_ms"] == P99_BOUND_MS * 2
    bad = latency_check(slow, 10.0)
    assert bad["asserted"] and not bad["ok"]
    short = latency_check(slow, 1.0)
    assert not short["asserted"] and not short["ok"]  # reported, not asserted
    fast = latency_check(rolling_p99(latencies(P99_BOUND_MS / 2), []), 30.0)
    assert fast["asserted"] and fast["ok"]


def test_p99_leaves_fault_windows_out() -> None:
    data = latencies(2.0)
    data += [(130.0 + i / 1000.0, 500.0) for i in range(200)]  # slow, during a fault
    assert rolling_p99(data, [])["worst_ms"] == 500.0
    assert rolling_p99(data, [(129.0, 131.0)])["worst_ms"] == 2.0


# -- faults and workers -----------------------------------------------------


def test_a_missing_fault_kind_fails() -> None:
    kinds = ["fd_exhaustion", "flood_per_host", "flood_connections", "restart"]
    assert fault_kinds_check([{"kind": k} for k in kinds], 0)["ok"]
    assert not fault_kinds_check([{"kind": k} for k in kinds[:2] + kinds[3:]], 0)["ok"]
    assert not fault_kinds_check([{"kind": k} for k in kinds], 2)["ok"]  # no reload


def test_a_crashed_or_unreported_worker_fails() -> None:
    exit_line = "workers: started=4 crashed=0 restarted=0 reloads=1/1 unreported=0\n"
    good = supervisor_checks({"crashed": 0, "unreported": 0}, exit_line)
    assert all(c["ok"] for c in good)
    crashed = supervisor_checks({"crashed": 1, "unreported": 0}, exit_line)
    assert not by_name(crashed, "supervisor: crashed")["ok"]
    line = exit_line.replace("unreported=0", "unreported=1")
    assert not by_name(supervisor_checks({"crashed": 0, "unreported": 0}, line), "supervisor: u")[
        "ok"
    ]
    assert not all(c["ok"] for c in supervisor_checks({"crashed": 0, "unreported": 0}, ""))
