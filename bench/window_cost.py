"""CPU time of assessing one hub's window, busy and idle, as the flow's incident desk does it.

    .venv/bin/python bench/window_cost.py [--hubs 50] [--busy-days 9] [--idle-days 7]

Every 15 minutes of event time the flow assesses every monitored hub's closed window
(``IncidentDesk.assess``: ``FacilityMonitor.assess`` with its cohort tables, seasonal
baselines, silence, stop and feed tests, lanes and regions, then the incident lifecycle and
the facility figure rows), whether the hub scanned or not. A national replay ends with a
month of stragglers in which 83 % of the hub windows are empty (bench/RESULTS.md, "Idle
windows"): there the per-window cost, not the per-event one, sets the events per second.

This feeds a desk ``--hubs`` synthetic hubs in 10 regions (Chicago time): ``--busy-days``
of traffic (0-20 arrivals a window, each cohort leaving with probability 0.3 per window
after 2 h, one lane each), then ``--idle-days`` of empty windows, and prints the
microseconds of CPU per hub window in each phase (the idle phase from its fourth day on,
once the rolling sums have drained), with a digest of every record and figure row, so that
two commits can be checked to compute the same thing: run it alternately from two trees
with ``PYTHONPATH=TREE`` (the VM's speed drifts; see ``bench/machine.py``). Results go to
bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time

from detectors.facility import FacilityMonitor, FacilityWindow
from detectors.incidents import IncidentDesk, IncidentManager

WIDTH = 900
T0 = 1_794_182_400  # 2026-11-09 00:00 UTC, a Monday


def run(hubs: int, busy_days: int, idle_days: int, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    names = [f"P{i:04d}" for i in range(hubs)]
    monitor = FacilityMonitor(regions={h: f"R{i % 10}" for i, h in enumerate(names)},
                              tz_of=dict.fromkeys(names, "America/Chicago"))
    desk = IncidentDesk(monitor, IncidentManager(), warm_up_seconds=86400, keep_figures=True)
    present: dict[str, dict[int, int]] = {h: {} for h in names}
    digest = hashlib.sha256()
    spent = {"busy": 0.0, "idle": 0.0}
    counted = {"busy": 0, "idle": 0}
    first = T0 // WIDTH
    for i in range(96 * (busy_days + idle_days)):
        w = first + i
        busy = i < 96 * busy_days
        windows = []
        for h in names:
            if busy:
                cohorts = present[h]
                n = rng.randint(0, 20)
                if n:
                    cohorts[w] = n
                for arrived in list(cohorts):
                    if w - arrived > 8 and rng.random() < 0.3:
                        del cohorts[arrived]
                windows.append(FacilityWindow(
                    h, w * WIDTH, (w + 1) * WIDTH, arrivals=n, departures=n, scans=2 * n,
                    backlog=sum(cohorts.values()), cohorts=dict(cohorts),
                    lanes={"N1": (n, n * 5 * 3600, 6 * 3600)} if n else {}))
            else:
                windows.append(FacilityWindow(h, w * WIDTH, (w + 1) * WIDTH))
        start = time.process_time()
        records = desk.assess((w + 1) * WIDTH, windows)
        rows = desk.take_figures()
        took = time.process_time() - start
        phase = "busy" if busy else "idle"
        if busy or i >= 96 * (busy_days + 3):
            spent[phase] += took
            counted[phase] += len(windows)
        digest.update(json.dumps([records, rows], sort_keys=True, default=str).encode())
    return {f"{k}_us_per_hub_window": round(spent[k] / max(counted[k], 1) * 1e6, 1)
            for k in spent} | {"digest": digest.hexdigest()[:12]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hubs", type=int, default=50)
    ap.add_argument("--busy-days", type=int, default=9)
    ap.add_argument("--idle-days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.idle_days < 4 or args.busy_days < 1:
        ap.error("--idle-days must be 4 or more (the idle phase is timed from its fourth day) "
                 "and --busy-days 1 or more")
    print(json.dumps(run(args.hubs, args.busy_days, args.idle_days, args.seed)))


if __name__ == "__main__":
    main()
