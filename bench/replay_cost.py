"""CPU time of one replay of the real flow, and what the facility rows and late moves cost in it.

    .venv/bin/python bench/replay_cost.py --data /tmp/nat2m4d_3m [--lines 1000000] \
        [--settings '{"incidents": {"late_move_p": null}}'] [--attribute] \
        [--progress 1000000] [--gc cli] [--out RUNDIR] [--machine 10]

One ``flows.run.replay`` of ``DATA/events.jsonl`` (its first ``--lines`` lines) with
``load_settings(facilities=DATA/facilities.csv, **SETTINGS)`` and metrics on, as the daemon
runs; prints the CPU and wall seconds and events per CPU second. ``--attribute`` also times,
per call, the pieces the fourth session added to the flow: building the facility rows
(``IncidentDesk._figure_rows``), passing them on with the per-facility gauges
(``NetworkDesk._facility_rows``), writing them as JSON lines
(``flows.dataflow._lines_of_rows``, a call per batch; ``_record_line``, a call per other output
line) and checking a package that left a hold (``PackageTracker._late_move``). The timers add
their own cost: compare totals without ``--attribute``. ``machine_median_s`` is
``bench/machine.py``'s reference workload timed ``--machine`` times (default 10) in this
process just before and just after the replay: the VM's speed drifts by a quarter within an
hour, and this says how fast the core was. ``--progress N`` prints a line every N events (CPU
since the last line, of it closing facility windows, packages in flight): where a long replay's
time per event grows. ``--gc cli`` uses the collector thresholds ``delaywatch replay`` sets;
``--out`` keeps the outputs, so that two commits' can be compared byte for byte.

Several processes (``--settings '{"processes": 2, "shards": 2, "metrics_port": 0}'``): the
other processes' CPU and peak memory are reported apart (``children_cpu_s``,
``children_maxrss_mb``: the largest of them), and events per wall second beside events per
CPU second of all processes.

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
import resource
import shutil
import statistics
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


def _progress_every(n: int, acc: dict[str, list[float]]) -> None:
    """Print, every ``n`` events the trackers take, the CPU seconds since the last line, the
    seconds of them spent closing facility windows (timed by :func:`_timed`), the packages in
    flight and the event time."""
    from detectors.tracker import PackageTracker

    _timed(PackageTracker, "_close_facility", acc)
    closing = acc["_close_facility"]
    state = {"events": 0, "next": n, "cpu": time.process_time(), "closing": 0.0}
    process_batch = PackageTracker.process_batch

    def counted(self: PackageTracker, events: Any) -> Any:
        if events.__class__ is not list:
            events = list(events)
        out = process_batch(self, events)
        state["events"] += len(events)
        if state["events"] >= state["next"]:
            now = time.process_time()
            print(json.dumps({"events": state["events"], "cpu_s": round(now - state["cpu"], 2),
                              "closing_windows_s": round(closing[0] - state["closing"], 2),
                              "in_flight": self.in_flight, "event_ts": self.max_event_ts}),
                  flush=True)
            state.update(next=state["next"] + n, cpu=now, closing=closing[0])
        return out

    PackageTracker.process_batch = counted  # type: ignore[method-assign]


def _machine_median(runs: int) -> float | None:
    """The median CPU seconds of ``runs`` runs of ``bench/machine.py``'s reference workload
    (None for 0): how fast this core ran Python just before and just after the replay, so
    that a figure says what hour it was measured in (``events/s x median`` compares hours,
    roughly)."""
    if not runs:
        return None
    from machine import reference_runs  # (bench/machine.py, beside this script)

    return round(statistics.median(reference_runs(runs)), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="simulator output directory")
    ap.add_argument("--lines", type=int, default=0, help="only the first N lines (0: all)")
    ap.add_argument("--settings", type=json.loads, default={}, help="settings to change, JSON")
    ap.add_argument("--attribute", action="store_true", help="time the added pieces")
    ap.add_argument("--progress", type=int, default=0, metavar="N",
                    help="every N events, a JSON line: CPU since the last, of it closing "
                         "facility windows (the per-window part), packages in flight (the first "
                         "line includes start-up)")
    ap.add_argument("--gc", choices=("default", "cli"), default="default",
                    help="collector thresholds: Python's, or those `delaywatch replay` sets")
    ap.add_argument("--out", type=Path, default=None,
                    help="keep the run's outputs in this directory (to compare two commits)")
    ap.add_argument("--machine", type=int, default=10, metavar="RUNS",
                    help="time bench/machine.py's reference workload RUNS times before the "
                         "replay and after it, in this process (0: not)")
    args = ap.parse_args()
    machine = [_machine_median(args.machine)]
    if args.gc == "cli":
        import gc

        from flows.cli import GC_THRESHOLDS

        gc.set_threshold(*GC_THRESHOLDS)
    acc: dict[str, list[float]] = {}
    if args.progress:
        _progress_every(args.progress, acc)
    if args.attribute:
        import detectors.incidents
        import detectors.tracker
        import flows.dataflow
        import flows.network

        _timed(detectors.incidents.IncidentDesk, "_figure_rows", acc)
        _timed(flows.network.NetworkDesk, "_facility_rows", acc)
        _timed(detectors.tracker.PackageTracker, "_late_move", acc)
        _timed(flows.dataflow, "_record_line", acc)  # looked up when the flow is built
        _timed(flows.dataflow, "_lines_of_rows", acc)  # looked up at each call

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
        facilities = args.data / "facilities.csv"
        settings = load_settings(facilities=facilities if facilities.is_file() else None,
                                 **args.settings)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        run_dir = args.out if args.out is not None else work / "run"
        summary = replay(JsonLinesSource(events), run_dir, settings, with_metrics=True,
                         overwrite=True)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    machine.append(_machine_median(args.machine))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    children_cpu = children.ru_utime + children.ru_stime
    print(json.dumps({
        "events": summary.events, "cpu_s": round(cpu, 2), "wall_s": round(wall, 2),
        "events_per_cpu_s": round(summary.events / (cpu + children_cpu)),
        "events_per_wall_s": round(summary.events / wall),
        "children_cpu_s": round(children_cpu, 2),
        "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "children_maxrss_mb": round(children.ru_maxrss / 1024),
        "in_flight_by_process": summary.in_flight_by_process, "settings": args.settings,
        "parts_s": {k: round(v[0], 3) for k, v in acc.items()},
        "parts_calls": {k: v[1] for k, v in acc.items()},
        "machine_median_s": machine,
    }))


if __name__ == "__main__":
    main()
