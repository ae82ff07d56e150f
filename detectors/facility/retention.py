"""How a facility's arrival cohorts usually drain away, and the packages held beyond."""

from __future__ import annotations

import math
from array import array
from collections.abc import Mapping
from typing import Any

from river import base

from detectors.facility.seasonal import _utc_offset

__all__ = ["CohortRetention"]


class CohortRetention(base.AnomalyDetector):
    """How a facility's arrival cohorts drain, and how many packages stay longer than usual.

    A cohort is the packages that arrived in one window. Per arrival time of day (the window
    of the day, falling back to the hour of the day while that has too few cohorts) and age
    in windows (up to ``horizon``) the detector learns the share of a cohort still present:
    a ratio estimator, packages present / cohort sizes summed over the cohorts seen. From
    it, the backlog a facility *should* hold now is the sum over its recent cohorts of size x
    share; the score is the *excess*, held minus expected, over its binomial standard
    deviation. It rises at the first sort that a slowdown or a stop makes packages miss,
    whatever the volume, the hour or the weekday, because it compares each cohort with
    cohorts that arrived at the same time of day (a night sort, a 6-hourly truck). A cell is
    used once ``min_cohorts`` cohorts have passed through it; cohorts without a usable cell
    are left out (warm-up: 0.0).

    ``x`` is ``{"ts": window start, "cohorts": {arrival window index: packages still here}}``
    (:attr:`FacilityWindow.cohorts`), windows of ``width`` seconds.

    Parameters
    ----------
    width
        Window width, seconds.
    horizon
        Cohorts are followed this many windows (default 48 h of 15-minute windows).
    min_cohorts
        Cohorts a cell needs before it is used.
    tz
        IANA time zone for the time of day (None: UTC).

    Examples
    --------
    Packages arrive all day; at the 02:00 "sort" each package there for 2 h or more leaves,
    but one in ten misses it. After a week, one night the sort does not happen.

    >>> import random
    >>> from detectors.facility import CohortRetention
    >>> rng = random.Random(5)
    >>> detector = CohortRetention(width=3600, horizon=36, min_cohorts=3)
    >>> day0, present, scores = 1_790_208_000, {}, []
    >>> for hour in range(24 * 9):
    ...     now = day0 + hour * 3600
    ...     present[now // 3600] = rng.randint(5, 15)  # this hour's arrivals
    ...     if hour % 24 == 2 and hour < 24 * 8:  # the sort (missed on day 8)
    ...         present = {a: (n if a > now // 3600 - 2 else
    ...                        sum(rng.random() < 0.1 for _ in range(n)))
    ...                    for a, n in present.items()}
    ...     x = {"ts": now, "cohorts": {a: n for a, n in present.items() if n}}
    ...     scores.append(detector.score_one(x))
    ...     detector.learn_one(x)
    >>> [round(s, 1) for s in scores[24 * 7 + 1: 24 * 7 + 5]]  # a normal night
    [0.0, 0.0, 0.0, 0.0]
    >>> [round(s, 1) for s in scores[24 * 8 + 1: 24 * 8 + 5]]  # the missed sort, from 02:00
    [0.0, 48.8, 49.0, 48.8]
    """

    def __init__(
        self, width: int = 900, horizon: int = 192, min_cohorts: int = 3, tz: str | None = None
    ) -> None:
        self.width = width
        self.horizon = horizon
        self.min_cohorts = min_cohorts
        self.tz = tz
        self._levels = (max(86400 // width, 1), 24)
        # [held, cohort sizes, cohorts] per (level, slot, age), side by side in one flat array.
        # The hour level counts age from the start of the hour, so that the cohorts it pools
        # are seen at the same clock times (a sort at 22:30 is the same age for all of them).
        self._span = horizon + max(3600 // width, 1)
        # int32 counters: a cell gains at most one cohort a day (four at the hour level), so a
        # hub taking 10,000 packages a window would need ~150 years to overflow one; an
        # overflow raises OverflowError rather than wrapping. Snapshots from before (int64)
        # keep their table and work the same.
        self._table = array("i", bytes(4 * 3 * self._span * sum(self._levels)))
        # arrival window -> [size, cell of age 0 at each level]
        self._initial: dict[int, list[int]] = {}

    def _cells(self, arrived: int, n: int) -> list[int]:
        """A cohort's entry: its size, then the index in the table of its slot's cell of age
        0 at each level, finest first (cell of age ``a``: ``+ 3 * a``)."""
        ts = arrived * self.width
        if self.tz is not None:
            ts += _utc_offset(self.tz, ts // 900)
        second = ts % 86400
        day, hour = self._levels
        span = self._span
        return [
            n,
            3 * span * (second * day // 86400),
            3 * span * (day + second * hour // 86400) + 3 * ((second % 3600) // self.width),
        ]

    def _pass(self, x: Mapping[str, Any], score: bool, learn: bool) -> tuple[float, float, float]:
        now = int(x["ts"]) // self.width
        cohorts: Mapping[int, int] = x["cohorts"]
        initial, horizon, minimum = self._initial, self.horizon, self.min_cohorts
        known = initial if learn else dict(initial)  # score only: keep no new cohort
        for arrived, n in cohorts.items():
            if 0 <= now - arrived < horizon:
                found = known.get(arrived)
                if found is None:
                    known[arrived] = self._cells(arrived, n)
                elif n > found[0]:
                    if learn:
                        found[0] = n
                    else:
                        known[arrived] = [n, found[1], found[2]]
        t = self._table
        get = cohorts.get
        held = expected = variance = 0.0
        gone = None
        for arrived, (n0, i0, i1) in known.items():
            age = now - arrived
            if age >= horizon or age < 0:
                if age >= 0:
                    if gone is None:
                        gone = []
                    gone.append(arrived)
                continue
            age *= 3
            i0 += age
            i1 += age
            n = get(arrived, 0)
            c0, c1 = t[i0 + 2], t[i1 + 2]  # each cell's count, read once
            if score:
                if c0 >= minimum:
                    share = t[i0] / t[i0 + 1]
                elif c1 >= minimum:
                    share = t[i1] / t[i1 + 1]
                else:
                    share = -1.0
                if share >= 0.0:
                    held += n
                    part = n0 * share
                    expected += part
                    variance += part * (1.0 - share)
            if learn:
                if n:  # (a drained cohort adds to the sizes and counts only)
                    t[i0] += n
                    t[i1] += n
                t[i0 + 1] += n0
                t[i0 + 2] = c0 + 1
                t[i1 + 1] += n0
                t[i1 + 2] = c1 + 1
        if learn and gone is not None:
            for arrived in gone:
                del initial[arrived]
        return held, expected, variance

    def expected_one(self, x: Mapping[str, Any]) -> tuple[float, float, float]:
        """(held, expected, binomial variance) over the cohorts with a usable cell."""
        return self._pass(x, score=True, learn=False)

    def score_one(self, x: Mapping[str, Any]) -> float:
        """``max(held - expected, 0) / sqrt(variance + 1)``: packages held beyond the usual."""
        held, expected, variance = self._pass(x, score=True, learn=False)
        return max(held - expected, 0.0) / math.sqrt(variance + 1.0)

    def learn_one(self, x: Mapping[str, Any]) -> None:
        self._pass(x, score=False, learn=True)

    def update_one(self, x: Mapping[str, Any]) -> tuple[float, float, float]:
        """:meth:`expected_one` then :meth:`learn_one` in one pass (half the cost). Not quite
        the same where a cohort falls back to its hour of the day (a time-of-day cell with
        fewer than ``min_cohorts``): that cell can already hold what a cohort of the same
        hour learned earlier in the pass."""
        return self._pass(x, score=True, learn=True)
