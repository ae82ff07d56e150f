"""CPU time of one replay of the real flow, and what the facility rows and late moves cost in it.

    .venv/bin/python bench/replay_cost.py --data /tmp/nat2m4d_3m [--lines 1000000] \
        [--settings '{"incidents": {"late_move_p": null}}'] [--attribute]

One ``flows.run.replay`` of ``DATA/events.jsonl`` (its first ``--lines`` lines) with
``load_settings(facilities=DATA/facilities.csv, **SETTINGS)`` and metrics on, as the daemon
runs; prints the CPU and wall seconds and events per CPU second. ``--attribute`` also times,
per call, the pieces the fourth session added to the flow: building the facility rows
(``IncidentDesk._figure_rows``), passing them on with the per-facility gauges
(``NetworkDesk._facility_rows``), writing them as JSON lines (``flows.dataflow._record_line``,
every output line is counted) and checking a package that left a hold (``PackageTracker.
_late_move``). The timers add their own cost: compare totals without ``--attribute``.

On a shared VM whose speed drifts, compare two commits by running this script alternately
from two exports, e.g. ``git archive REV | tar -x -C /tmp/old`` and
``PYTHONPATH=/tmp/old .venv/bin/python /tmp/old/bench/replay_cost.py ...`` (old, new, old,
new), never one after the other in blocks. Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def _timed(owner: Any, name: str, acc: dict[str, list[float]]) -> None:
    """Replace ``owner.name`` by a wrapper adding each call's seconds to ``acc[name]``."""
    inner = getattr(owner, name)
    cell = acc.setdefault(name, [0.0, 0])

    @functools.wraps(inner)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            cell[0] += time.perf_counter() - t0
            cell[1] += 1

    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="simulator output directory")
    ap.add_argument("--lines", type=int, default=0, help="only the first N lines (0: all)")
    ap.add_argument("--settings", type=json.loads, default={}, help="settings to change, JSON")
    ap.add_argument("--attribute", action="store_true", help="time the added pieces")
    args = ap.parse_args()

    acc: dict[str, list[float]] = {}
    if args.attribute:
        import detectors.incidents
        import detectors.tracker
        import flows.dataflow
        import flows.network

        _timed(detectors.incidents.IncidentDesk, "_figure_rows", acc)
        _timed(flows.network.NetworkDesk, "_facility_rows", acc)
        _timed(detectors.tracker.PackageTracker, "_late_move", acc)
        _timed(flows.dataflow, "_record_line", acc)  # looked up when the flow is built

    from flows.config import load_settings
    from flows.run import replay
    from flows.sources import JsonLinesSource

    work = Path(tempfile.mkdtemp(prefix="replay_cost_"))
    try:
        events = args.data / "events.jsonl"
        if args.lines:
            with open(events, "rb") as src, open(work / "events.jsonl", "wb") as dst:
                dst.writelines(itertools.islice(src, args.lines))
            events = work / "events.jsonl"
        settings = load_settings(facilities=args.data / "facilities.csv", **args.settings)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = replay(JsonLinesSource(events), work / "run", settings, with_metrics=True)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({
        "events": summary.events, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
        "events_per_cpu_s": round(summary.events / cpu), "settings": args.settings,
        "parts_s": {k: round(v[0], 3) for k, v in acc.items()},
        "parts_calls": {k: v[1] for k, v in acc.items()},
    }))


if __name__ == "__main__":
    main()
