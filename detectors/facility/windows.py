"""A facility's figures over one event-time window, and adding up shards' windows."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field

from detectors.events import ARRIVAL_CODES, DEPARTURE_CODES

#: Upper edges (seconds) of the dwell histogram's bins; the last bin is open.
DWELL_EDGES_SECONDS: tuple[int, ...] = tuple(
    int(h * 3600)
    for h in (0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 30, 36, 48, 72, 96)
)

__all__ = ["AGE_EDGES_HOURS", "DWELL_EDGES_SECONDS", "FacilityWindow", "merge"]
#: Lower edges (hours) of the backlog age classes: [0, 4), [4, 8), ..., [48, inf).
AGE_EDGES_HOURS: tuple[int, ...] = (0, 4, 8, 12, 24, 48)

_ARRIVED = ARRIVAL_CODES
_DEPARTED = DEPARTURE_CODES
_N_DWELL = len(DWELL_EDGES_SECONDS) + 1
_NO_DWELL = (0,) * _N_DWELL  # no departure with a known arrival


@dataclass(slots=True)
class FacilityWindow:
    """One facility's figures over one event-time window ``[start, end)``.

    Counts are of the window. ``handoffs``: packages seen at another facility whose last scan
    here was a departure; ``handoffs_missing``: the same whose last scan here was an arrival
    (the departure scan never came). ``backlog`` and ``cohorts`` are the state at ``end``: the
    packages whose arrival scan was seen and that have not left since, in all and by the
    window they arrived in (window index ``arrival_ts // (end - start)`` -> packages still
    here). ``lanes`` maps a receiving facility to ``(arrivals, transit seconds summed,
    longest transit)`` of packages that departed from here and arrived there in the window.
    A window pickles to 0.3-0.9 KB on the demo network; the cohorts dominate (one entry per
    arrival window with packages still waiting, at most ``max_age_seconds`` back).
    """

    facility: str
    start: int
    end: int
    arrivals: int = 0
    departures: int = 0
    scans: int = 0
    late_scans: int = 0
    handoffs_missing: int = 0
    handoffs: int = 0
    backlog: int = 0
    cohorts: dict[int, int] = field(default_factory=dict)
    dwell_hist: tuple[int, ...] = _NO_DWELL
    lanes: dict[str, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def dwell_p50(self) -> float | None:
        """Median dwell (seconds) of the window's departures with a known arrival, or None."""
        return _hist_quantile(self.dwell_hist, 0.5)

    @property
    def dwell_p90(self) -> float | None:
        """90th percentile of the same (approximate: linear inside a histogram bin)."""
        return _hist_quantile(self.dwell_hist, 0.9)

    def overdue(self, hours: float) -> int:
        """Packages in the backlog for at least ``hours`` (arrival window's middle to end)."""
        width = self.end - self.start
        limit = self.end - hours * 3600 - width / 2
        # w * width <= limit for a whole w * width: w <= floor(limit) // width (exact ints)
        last = math.floor(limit) // width
        cohorts = self.cohorts
        return sum(map(cohorts.__getitem__, filter(last.__ge__, cohorts)))

    @property
    def backlog_age(self) -> tuple[int, ...]:
        """The backlog by age class (:data:`AGE_EDGES_HOURS`, hours, lower edges)."""
        width = self.end - self.start
        ages = [0] * len(AGE_EDGES_HOURS)
        for w, n in self.cohorts.items():
            age_h = (self.end - w * width - width / 2) / 3600
            ages[max(bisect_right(AGE_EDGES_HOURS, age_h) - 1, 0)] += n
        return tuple(ages)


def _hist_quantile(hist: tuple[int, ...] | list[int], q: float) -> float | None:
    total = sum(hist)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        if n and seen + n >= rank:
            lo = 0 if i == 0 else DWELL_EDGES_SECONDS[i - 1]
            hi = DWELL_EDGES_SECONDS[i] if i < len(DWELL_EDGES_SECONDS) else lo * 1.5
            return lo + (hi - lo) * (rank - seen) / n
        seen += n
    return float(DWELL_EDGES_SECONDS[-1])


def merge(windows: Iterable[FacilityWindow]) -> list[FacilityWindow]:
    """Add up the windows of several shards: one window per (facility, start), in order.

    Every figure is a sum (shards hold disjoint packages), the longest lane transit a max.
    The result does not depend on the order of ``windows`` (cohorts and lanes are sorted).

    >>> a = FacilityWindow("P1", 0, 900, arrivals=2, backlog=5, dwell_hist=(1,) + (0,) * 21)
    >>> b = FacilityWindow("P1", 0, 900, arrivals=1, backlog=1, lanes={"N2": (1, 60, 60)})
    >>> [(w.arrivals, w.backlog, w.dwell_hist[0], w.lanes) for w in merge([a, b])]
    [(3, 6, 1, {'N2': (1, 60, 60)})]
    """
    merged: dict[tuple[int, str], FacilityWindow] = {}
    for w in windows:
        key = (w.start, w.facility)
        m = merged.get(key)
        if m is None:
            merged[key] = FacilityWindow(
                w.facility,
                w.start,
                w.end,
                arrivals=w.arrivals,
                departures=w.departures,
                scans=w.scans,
                late_scans=w.late_scans,
                handoffs_missing=w.handoffs_missing,
                handoffs=w.handoffs,
                backlog=w.backlog,
                cohorts=dict(w.cohorts),
                dwell_hist=w.dwell_hist,
                lanes=dict(w.lanes),
            )
            continue
        m.arrivals += w.arrivals
        m.departures += w.departures
        m.scans += w.scans
        m.late_scans += w.late_scans
        m.handoffs_missing += w.handoffs_missing
        m.handoffs += w.handoffs
        m.backlog += w.backlog
        for arrived, n in w.cohorts.items():
            m.cohorts[arrived] = m.cohorts.get(arrived, 0) + n
        m.dwell_hist = tuple(x + y for x, y in zip(m.dwell_hist, w.dwell_hist, strict=True))
        for to, (n, total, longest) in w.lanes.items():
            old = m.lanes.get(to)
            m.lanes[to] = (
                (n, total, longest)
                if old is None
                else (old[0] + n, old[1] + total, max(old[2], longest))
            )
    out = [merged[k] for k in sorted(merged)]
    for m in out:  # in one order whatever order the shards' windows came in: the cohort
        # pass sums floats in dict order, so another order could move a score in its last digit
        m.cohorts = dict(sorted(m.cohorts.items()))
        m.lanes = dict(sorted(m.lanes.items()))
    return out
