"""What a package's state costs to reach at random, as columns or as one record.

    .venv/bin/python bench/layout_cost.py [--slots 50000 500000 2000000] [--events 1000000]

The tracker keeps each package in eight ``array.array`` columns found through one dict
(package key -> slot). Per event it reads most columns and writes two. This times that
access pattern for random packages against the same with one 4-word record per package
(``array('q')``, slot * 4), and against reading one slot only (cache-hot: the Python cost
without the misses), per event, in CPU time. The difference is what a record layout could
save here; in the flow it saved nothing (the record was tried and measured over the whole
national replay: bench/RESULTS.md, "The per-package record: measured in the flow, not
kept"). Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import random
import time
from array import array


def one(n: int, events: int) -> dict[str, float]:
    rng = random.Random(n)
    cols = [array(code, bytes(array(code).itemsize * n))
            for code in ("q", "q", "q", "i", "h", "b", "b", "H")]
    record = array("q", bytes(32 * n))
    index = {rng.getrandbits(100): i for i in range(n)}
    keys = list(index)
    order = [keys[rng.randrange(n)] for _ in range(events)]
    a, b, c, d, e, f, g, h = cols
    get = index.get
    out = {}

    t = time.process_time()
    for k in order:
        get(k)
    out["dict"] = time.process_time() - t

    t = time.process_time()
    for k in order:
        s = get(k)
        x, y = a[s], b[s]
        c[s], d[s], e[s], f[s], g[s], h[s]  # noqa: B018 - the reads are the point
        a[s], b[s] = x + 1, y + 1
    out["dict + 8 columns"] = time.process_time() - t

    t = time.process_time()
    for k in order:
        r = get(k) << 2
        x, y = record[r], record[r + 1]
        record[r + 2], record[r + 3]  # noqa: B018
        record[r], record[r + 1] = x + 1, y + 1
    out["dict + one record"] = time.process_time() - t

    t = time.process_time()
    for k in order:
        get(k)
        x, y = a[0], b[0]
        c[0], d[0], e[0], f[0], g[0], h[0]  # noqa: B018
        a[0], b[0] = x + 1, y + 1
    out["dict + 8 columns, one slot"] = time.process_time() - t
    return {name: seconds / events * 1e9 for name, seconds in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slots", type=int, nargs="+", default=[50_000, 500_000, 2_000_000])
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    for n in args.slots:
        ns = one(n, args.events)
        print(f"{n:>10,} slots: " + ", ".join(f"{k} {v:,.0f} ns" for k, v in ns.items()))


if __name__ == "__main__":
    main()
