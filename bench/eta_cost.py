"""Cost of the delivery estimator's time-of-day phases (``DeliveryEstimator(phase_hours=)``).

    .venv/bin/python bench/eta_cost.py [--deliveries 20000]

Teaches two estimators, without phases and with 3-hour phases, the same synthetic deliveries
(8 scans each: acceptance, three plant scans at 300 plants, arrival and out-for-delivery at
5,000 delivery units), best of 3 in CPU time, then times ``estimate`` on their scans. In the
flow the estimator learns from 1 delivered package in ``stall.eta_sample_every`` (8) after
the first 20,000, and estimates only for alerts.
"""

from __future__ import annotations

import argparse
import random
import time

from detectors import DeliveryEstimator

CODES = ("03", "10", "A1", "T1", "A1", "T1", "07", "OF")
HUB = ("10", "A1", "T1")


def deliveries(n: int) -> list[dict]:
    rng = random.Random(1)
    out = []
    for _ in range(n):
        t = 1_790_000_000 + rng.randrange(20 * 86400)
        scans = [(f"P{rng.randrange(300)}" if code in HUB else f"O{rng.randrange(5000)}",
                  code, t + i * 7200) for i, code in enumerate(CODES)]
        out.append({"service": rng.choice(("ground", "express")),
                    "delivered_ts": t + rng.randrange(20, 60) * 3600, "scans": scans})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--deliveries", type=int, default=20_000)
    args = ap.parse_args()
    xs = deliveries(args.deliveries)
    probes = [{"facility": f, "code": c, "service": x["service"], "last_ts": ts,
               "silence": 3600, "promised_by_ts": ts + 86400}
              for x in xs[:5000] for f, c, ts in x["scans"][:6]]
    print(f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {len(xs):,} deliveries x {len(CODES)} scans")
    for phase in (None, 3):
        best = float("inf")
        for _ in range(3):
            estimator = DeliveryEstimator(phase_hours=phase)
            start = time.process_time()
            for x in xs:
                estimator.learn_one(x)
            best = min(best, time.process_time() - start)
        start = time.process_time()
        for probe in probes:
            estimator.estimate(probe)
        per_estimate = (time.process_time() - start) / len(probes)
        print(f"phase_hours={phase}: learn_one {best / len(xs) * 1e6:.1f} us per delivery, "
              f"estimate {per_estimate * 1e6:.1f} us, stage keys "
              f"{len(estimator._stages):,} + {len(estimator._network):,}")


if __name__ == "__main__":
    main()
