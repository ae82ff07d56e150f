"""CPU time of one facility window's cohort pass, as the monitor makes it.

    .venv/bin/python bench/retention_cost.py [--days 14] [--seed 1] [--repeat 5]

Per closed window the facility monitor calls ``CohortRetention.update_one`` (score, then
learn) with the cohorts still at the facility; the pass walks every cohort it follows, one
per 15-minute arrival window of the last 48 h (~190 at a hub that receives all day), drained
or not. This feeds one detector a synthetic hub of that
shape (0-40 arrivals a window, each package leaving with probability 0.3 per window, a
Chicago time zone, so the first days are warm-up and the rest steady) and prints the
microseconds per pass, fastest and median of ``--repeat`` runs (CPU time), with a digest of
the returned triples so that two commits can be checked to compute the same thing:
``PYTHONPATH=TREE .venv/bin/python bench/retention_cost.py``, alternately (the VM's speed
drifts; see ``bench/machine.py``). Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time

from detectors.facility import CohortRetention

WIDTH = 900
T0 = 1_790_208_000  # 2026-09-24 00:00 UTC


def windows(days: int, seed: int) -> list[dict]:
    """The ``x`` of each window: its start and the cohorts present (arrival window: count)."""
    rng = random.Random(seed)
    present: dict[int, int] = {}
    out = []
    for w in range(96 * days):
        now = T0 + w * WIDTH
        here = now // WIDTH
        for arrived, n in present.items():
            present[arrived] = n - sum(rng.random() < 0.3 for _ in range(n))
        present[here] = rng.randint(0, 40)
        out.append({"ts": now, "cohorts": {a: n for a, n in present.items()
                                           if n and here - a < 200}})
    return out


def one_run(xs: list[dict]) -> tuple[float, str]:
    detector = CohortRetention(width=WIDTH, horizon=192, min_cohorts=3, tz="America/Chicago")
    results = []
    start = time.process_time()
    for x in xs:
        results.append(detector.update_one(x))
    spent = time.process_time() - start
    return spent / len(xs), hashlib.sha256(repr(results).encode()).hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    xs = windows(args.days, args.seed)
    cohorts = statistics.mean(len(x["cohorts"]) for x in xs)
    runs = [one_run(xs) for _ in range(args.repeat)]
    per = [s * 1e6 for s, _ in runs]
    print(f"cohort pass (update_one): fastest {min(per):.1f} us, median "
          f"{statistics.median(per):.1f} us ({len(xs)} windows; each pass walks the cohorts of "
          f"the last 48 h, {cohorts:.0f} of them still holding packages on average; "
          f"{args.repeat} runs, CPU time); results digest {runs[0][1]}")


if __name__ == "__main__":
    main()
