"""CPU time of the stall detector's two calls per scan, as the flow makes them.

    .venv/bin/python bench/stall_cost.py [--scans 300000] [--facilities 300] [--repeat 5]

Per scan the flow's tracker learns the silence that just ended (at the previous scan's
facility, stage and time) and looks up the threshold for the new one. This times that pair
on a synthetic stream shaped like the flow's: facilities in four US time zones with two
holidays (so the weekday bucket is the facility-local one, as with ``--facilities``), seven
scan codes, two services, scan times over ~10 days, a 36 h ``min_span``. It prints the
microseconds per pair, the fastest and the median of ``--repeat`` passes after a warm-up
pass (CPU time).

It uses ``learn_gap``/``threshold_at`` where the detector has them and ``learn_one`` /
``threshold`` with a dict otherwise, as the tracker of that commit did, so two commits can be
compared from exported trees: ``PYTHONPATH=TREE .venv/bin/python bench/stall_cost.py``,
alternately (the VM's speed drifts; see ``bench/machine.py``). Results go to
bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from detectors.stall import StallDetector

ZONES = ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles")
CODES = ("03", "SF", "10", "T1", "A1", "07", "OF")
Scan = tuple[str, str, str, int, float]


def stream(scans: int, facilities: int, seed: int = 0) -> list[Scan]:
    """(facility, code, service, previous scan time, silence) per scan."""
    rng = random.Random(seed)
    names = [f"F{i}" for i in range(facilities)]
    t0 = 1_793_500_000  # 2026-10-31: a DST switch and Thanksgiving ahead
    return [(rng.choice(names), rng.choice(CODES), rng.choice(("ground", "express")),
             t0 + i * 3 - rng.randrange(20_000), rng.expovariate(1 / 20_000))
            for i in range(scans)]


def pair(detector: StallDetector, scans: list[Scan]) -> Callable[[], None]:
    """One pass of learn + threshold per scan, through the API the tracker uses."""
    if hasattr(detector, "learn_gap"):
        learn, threshold = detector.learn_gap, detector.threshold_at

        def run() -> None:
            for facility, code, service, ts, gap in scans:
                learn(facility, code, service, ts, gap)
                threshold(facility, code, service, ts + 3600)
    else:  # before learn_gap/threshold_at: dicts, as the tracker built them
        learn_one, threshold_one = detector.learn_one, detector.threshold

        def run() -> None:
            for facility, code, service, ts, gap in scans:
                learn_one({"facility": facility, "code": code, "service": service,
                           "last_ts": ts, "gap": gap})
                threshold_one({"facility": facility, "code": code, "service": service,
                               "last_ts": ts + 3600})
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scans", type=int, default=300_000)
    ap.add_argument("--facilities", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    scans = stream(args.scans, args.facilities)
    tz_of = {f"F{i}": ZONES[i % len(ZONES)] for i in range(args.facilities)}
    detector = StallDetector(tz_of=tz_of, holidays=["2026-11-26", "2026-12-25"],
                             min_span=36 * 3600)
    run = pair(detector, scans)
    run()  # warm-up: the stage keys exist, the coarse levels pass coarse_full
    passes = []
    for _ in range(args.repeat):
        start = time.process_time()
        run()
        passes.append(time.process_time() - start)
    per = [s / len(scans) * 1e6 for s in passes]
    print(f"stall detector, learn + threshold per scan: fastest {min(per):.2f} us, median "
          f"{statistics.median(per):.2f} us ({len(scans)} scans, {args.facilities} facilities "
          f"in {len(ZONES)} time zones, {args.repeat} passes, CPU time)")


if __name__ == "__main__":
    main()
