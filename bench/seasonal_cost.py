"""CPU time of the facility monitor's seasonal baselines per hub window, and what the cache adds.

    .venv/bin/python bench/seasonal_cost.py [--hubs 1 273] [--days 28] [--seed 1] [--repeat 3]

Per closed window and hub the monitor calls its three :class:`SeasonalBaseline` s six times:
the mean of two (usual arrivals, share of busy windows: the silence test), the robust
baseline of one (arrivals over the last hours, low side), and ``learn_one`` on all three.
This builds ``--hubs`` hubs (Chicago time, counts 0-20 a window with a daily cycle), warms
them up for ``--days`` (four weeks: the hour of the week in use), then times a week of
windows, hub after hub as the monitor goes, and prints the microseconds per hub window (the
six calls), fastest and median of ``--repeat`` runs (CPU time), with a digest of every
result. One hub keeps its rings in the CPU's cache; a network's few hundred (each hub's
three baselines hold ~150 KB) do not.
Compare two commits alternately with ``PYTHONPATH=TREE`` (the VM's speed drifts; see
``bench/machine.py``). Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import statistics
import time

from detectors.facility import SeasonalBaseline

WIDTH = 900
T0 = 1_794_182_400  # 2026-11-09 00:00 UTC, a Monday


def hubs(n: int, days: int, seed: int) -> tuple[list[tuple[SeasonalBaseline, ...]], random.Random]:
    rng = random.Random(seed)
    common = {"tz": "America/Chicago", "window": 32, "min_samples": 4}
    out = []
    for _ in range(n):
        out.append((
            SeasonalBaseline("arrivals", **common),
            SeasonalBaseline("busy", **common),
            SeasonalBaseline("arrivals", side="low", min_scale=2.0, rel_scale=0.15, **common),
        ))
    for w in range(96 * days):
        for baselines in out:
            _window(baselines, T0 + w * WIDTH, _arrivals(T0 + w * WIDTH, rng))
    return out, rng


def _arrivals(ts: int, rng: random.Random) -> int:
    hour = ts // 3600 % 24
    return rng.randint(0, 20 if 20 <= hour or hour < 4 else 6)


def _window(baselines: tuple[SeasonalBaseline, ...], ts: int, arrivals: int) -> tuple:
    now, busy, rolling = baselines
    x = {"ts": ts, "arrivals": arrivals * 12}
    found = (busy.mean(x), now.mean(x), rolling.baseline(x))
    rolling.learn_one(x)
    now.learn_one({"ts": ts, "arrivals": arrivals})
    busy.learn_one({"ts": ts, "busy": 1.0 if arrivals else 0.0})
    return found


def one_run(n: int, days: int, seed: int) -> tuple[float, str]:
    network, rng = hubs(n, days, seed)
    week = [(T0 + w * WIDTH, [_arrivals(T0 + w * WIDTH, rng) for _ in network])
            for w in range(96 * days, 96 * (days + 7))]
    results = []
    start = time.process_time()
    for ts, counts in week:
        for baselines, arrivals in zip(network, counts, strict=True):
            results.append(_window(baselines, ts, arrivals))
    spent = time.process_time() - start
    return spent / len(results), hashlib.sha256(repr(results).encode()).hexdigest()[:12]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hubs", type=int, nargs="+", default=[1, 273])
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    for n in args.hubs:
        runs = [one_run(n, args.days, args.seed) for _ in range(args.repeat)]
        per = [s * 1e6 for s, _ in runs]
        print(f"{n} hubs: seasonal baselines, six calls a hub window: fastest {min(per):.2f} "
              f"us, median {statistics.median(per):.2f} us ({args.repeat} runs, CPU time); "
              f"results digest {runs[0][1]}")


if __name__ == "__main__":
    main()
