"""How fast, and how steadily, this machine runs Python right now.

The project's 2-core VM is shared with other tenants: the same commit replayed the same file
at 64.9 K events/s one morning and at 34-35 K the next (bench/RESULTS.md). This script times
a fixed pure-Python workload (dict and tuple churn, integer arithmetic, string splitting and
sorting: the kind of work the flow's hot path does per event; it does not import the project,
so it does not move when the code does) ``--runs`` times and prints the fastest, the median
and the slowest run. Run it before and after a benchmark:

* the spread within one call says how steady the machine is at the moment (2026-11-23 09:30
  UTC, one replay running on the other core: fastest 0.181 s, slowest 0.373 s, 2.06x
  between runs a second apart, on either core when pinned with ``taskset``);
* the median, next to a benchmark's events per second, makes figures from different hours
  comparable as ``events/s x median seconds`` (roughly: a long replay averages over minutes,
  the reference over seconds). Comparing two commits is still done by interleaving their
  runs (``bench/replay_cost.py``).

    .venv/bin/python bench/machine.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

__all__ = ["reference_runs"]


def _workload() -> int:
    table: dict[tuple[int, str], int] = {}
    codes = ("A1", "T1", "10", "07", "OF", "01")
    acc = 0
    for i in range(300_000):
        key = (i % 4099, codes[i % 6])
        table[key] = table.get(key, 0) + 1
        acc = (acc + i * 2654435761) & 0xFFFFFFFF
    words = ",".join(str(i * 7919 % 100_003) for i in range(100_000)).split(",")
    words.sort()
    return acc + len(table) + len(words[0])


def reference_runs(runs: int = 20) -> list[float]:
    """CPU seconds of each of ``runs`` runs of the reference workload, in order."""
    out = []
    for _ in range(runs):
        t0 = time.process_time()
        _workload()
        out.append(time.process_time() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    runs = reference_runs(args.runs)
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')} reference workload, {args.runs} runs, CPU "
          f"s: fastest {min(runs):.3f}, median {statistics.median(runs):.3f}, slowest "
          f"{max(runs):.3f} (slowest/fastest {max(runs) / min(runs):.2f})")


if __name__ == "__main__":
    main()
