"""Benchmark the simulator: simulate() and write() timed apart, events/s, peak memory.

    .venv/bin/python bench/bench_simulate.py --packages 85000 820000 --out /tmp/dw-bench-sim

Each size runs in a fresh child process, one after the other (never in parallel), so the peak
RSS reported (``resource.getrusage(RUSAGE_SELF).ru_maxrss`` in the child) belongs to that size
alone. The ``national`` scenario gives about 12 feed lines per package: 85 K packages is about
1 M events, 820 K packages about 10 M. Outputs go under ``--out`` (keep it outside the repo);
``--clean`` deletes each size's output after it was measured. Results: ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _measure(scenario: str, packages: int, seed: int, out: Path) -> dict[str, object]:
    """One size, in this process: time simulate() and write(), read the peak RSS."""
    sys.path.insert(0, str(REPO))
    from fixtures.scenarios import get_scenario
    from fixtures.simulate import simulate, write

    sc = get_scenario(scenario, packages)
    t0 = time.perf_counter()
    sim = simulate(sc, seed)
    t1 = time.perf_counter()
    meta = write(sim, out)
    t2 = time.perf_counter()
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return {
        "scenario": scenario,
        "packages": packages,
        "seed": seed,
        "events": int(meta["events"]),
        "simulate_s": t1 - t0,
        "write_s": t2 - t1,
        "output_bytes": size,
        "events_jsonl_bytes": (out / "events.jsonl").stat().st_size,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
    }


def _run_child(scenario: str, packages: int, seed: int, out: Path) -> dict[str, object]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--scenario",
        scenario,
        "--packages",
        str(packages),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _table(rows: list[dict[str, object]]) -> str:
    head = (
        "| packages | events | events/pkg | simulate s | write s | total s | events/s "
        "(total) | events/s (simulate) | events/s (write) | events.jsonl MB | peak RSS MB |"
    )
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for r in rows:
        ev, ts, tw = int(r["events"]), float(r["simulate_s"]), float(r["write_s"])
        lines.append(
            f"| {int(r['packages']):,} | {ev:,} | {ev / int(r['packages']):.2f} | {ts:.1f} | "
            f"{tw:.1f} | {ts + tw:.1f} | {ev / (ts + tw):,.0f} | {ev / ts:,.0f} | "
            f"{ev / tw:,.0f} | {int(r['events_jsonl_bytes']) / 1e6:,.0f} | "
            f"{int(r['peak_rss_bytes']) / 2**20:,.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--packages",
        type=int,
        nargs="+",
        default=[85_000, 820_000],
        help="package counts to run, one after the other (default: 85000 820000)",
    )
    ap.add_argument("--seed", type=int, default=1, help="simulator seed (default: 1)")
    ap.add_argument("--scenario", default="national", help="scenario name (default: national)")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("/tmp/dw-bench-sim"),
        help="output root, one sub-directory per size (default: /tmp/dw-bench-sim)",
    )
    ap.add_argument("--clean", action="store_true", help="delete each size's output afterwards")
    ap.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out_root = args.out.resolve()
    if out_root.is_relative_to(REPO):
        ap.error(f"--out {out_root} is inside the repository; use a path under /tmp")

    if args.child:  # one size, print one JSON line for the parent
        print(json.dumps(_measure(args.scenario, args.packages[0], args.seed, out_root)))
        return 0

    print(
        f"# {args.scenario}, seed {args.seed}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}",
        flush=True,
    )
    rows = []
    for n in args.packages:
        out = out_root / f"{args.scenario}-{n}"
        if out.exists():
            shutil.rmtree(out)
        r = _run_child(args.scenario, n, args.seed, out)
        rows.append(r)
        print(
            f"done {n:,} packages: {int(r['events']):,} events in "
            f"{float(r['simulate_s']) + float(r['write_s']):.1f} s",
            file=sys.stderr,
            flush=True,
        )
        if args.clean:
            shutil.rmtree(out)
    print(_table(rows))
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
