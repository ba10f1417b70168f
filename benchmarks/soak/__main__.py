"""``python -m benchmarks.soak``: run the chaos soak, write results.json and the report.

Exit status 0 only if every asserted check passed.  ``runner.py`` has the
timeline; ``checks.py``, ``verdict.py`` and ``finish.py`` what is checked.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import resource
import ssl
import sys
import tempfile
import time
from pathlib import Path

import trio

from .clients import DENIED, TRUSTED_PROXY
from .finish import result_of, stop_server
from .runner import Config, Soak
from .server import ServerProcess, make_certs

#: The server's flags (the binds, the certificate and the stats file are added).
FLAGS = [
    "--allow", "127.0.0.0/8",
    "--deny", f"{DENIED}/32",
    "--trusted-proxy", f"{TRUSTED_PROXY}/32",
    "--max-connections", "100",
    "--max-per-host", "40",
    "--idle-timeout", "3",
    "--min-receive-rate", "100",
    "--min-receive-grace", "0.5",
    "--handshake-timeout", "2",
    "--stats-interval", "0.2",
    "--log-level", "info",
]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the run (default 5)")
    parser.add_argument(
        "--workers", type=int, default=0, help="server worker processes (0: one process)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="random seed (default: from the clock)"
    )
    parser.add_argument(
        "--slowloris", type=int, default=200, help="slowloris clients (default 200)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/soak-latest"))
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.workers < 0:
        parser.error("--minutes must be > 0 and --workers >= 0")
    return args


def raise_nofile() -> int:
    """Raise this process's soft descriptor limit to the hard one; the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def summary(result: dict) -> str:  # type: ignore[type-arg]
    """A short table of the checks and key figures."""
    lines = [f"{'check':<64} result"]
    for c in result["checks"]:
        mark = ("ok" if c["ok"] else "FAIL") if c["asserted"] else ("ok" if c["ok"] else "(miss)")
        lines.append(f"{c['name'][:64]:<64} {mark}{'' if c['asserted'] else ' [reported]'}")
        if not c["ok"]:
            lines.append(f"    {c['detail'][:300]}")
    f = result["figures"]
    lines.append("")
    lines.append(
        f"exchanges {f['exchanges']}  lost {f['lost']}  corrupted {f['corrupted']}  "
        f"p50 {f['canary_p50_ms']} ms  p99 {f['canary_p99_ms']} ms  recovery {f['recovery_s']} s"
    )
    lines.append(
        f"fds baseline/peak/final {f['fds_baseline']}/{f['fds_peak']}/{f['fds_final']}  "
        f"tasks {f['tasks_baseline']}->{f['tasks_final']}  rss {f['rss_growth_pct']:+.2f} %  "
        f"faults {f['faults']}  warnings {f['warnings']}  errors {f['errors']}"
    )
    lines.append(
        f"rolling 5-s p99 outside faults: worst {f['canary_p99_rolling_worst_ms']} ms "
        f"(bound {f['canary_p99_bound_ms']} ms)  warnings {f['warnings']} "
        f"(cap {f['warnings_cap']})  idle silences {f['idle_silences_s']} s"
    )
    for label, procs in f["per_process"].items():
        lines.append(
            f"  {label}: "
            + ", ".join(f"pid {p['pid']} fds {p['fds']} tasks {p['tasks']}" for p in procs)
        )
    lines.append(
        f"recovery per window {[r['recovery_s'] for r in f['recoveries']]} s; "
        f"{'PASS' if result['ok'] else 'FAIL'}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; the exit status."""
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    limit = raise_nofile()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    work.mkdir(exist_ok=True)
    for old in work.iterdir():
        old.unlink()
    print(f"soak: {args.minutes} min, workers {args.workers}, seed {seed}, fd limit {limit}")
    config = Config(args.minutes, args.workers, seed, out, args.slowloris, FLAGS)
    with tempfile.TemporaryDirectory(prefix="soak-certs-") as certs:
        chain, key, ca = make_certs(Path(certs))
        flags = [*FLAGS, "--tls-cert", str(chain), "--tls-key", str(key)]
        server = ServerProcess("server", work, flags, workers=args.workers)
        client_tls = ssl.create_default_context(cafile=str(ca))
        soak = Soak(config, server, client_tls)
        started = datetime.datetime.now(datetime.UTC)
        t0 = time.monotonic()
        try:
            trio.run(soak.run)
            trio.run(stop_server, soak)
        finally:
            soak.faults.restore()
            server.kill()
    result = result_of(soak, started, time.monotonic() - t0)
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    try:
        from .report import write_report
    except ImportError as exc:
        print(f"soak: no report ({exc})")
    else:
        write_report(result, out)
    print(summary(result))
    print(f"soak: results in {out}/results.json")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
