"""How a facility's arrival cohorts usually drain away, and the packages held beyond."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numba
import numpy as np
from river import base

from detectors.facility.seasonal import _utc_offset

__all__ = ["CohortRetention"]

_LIMIT = {c: int(np.iinfo(c).max) for c in "il"}  # a counter's largest value, by dtype
_NO_CELLS = np.zeros((0, 2), np.int64)  # no arrival window's cells yet (never written to)


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
        self._table = np.zeros(3 * self._span * sum(self._levels), np.int32)
        # the cohorts followed, in the order first seen (the pass adds its floats in this
        # order): rows of [arrival window, size, cell of age 0 at each level, finest first]
        # (cell of age ``a``: ``+ 3 * a``); the first ``_n`` rows are in use
        self._known = np.zeros((16, 4), np.int64)
        self._n = 0
        # each arrival window's two cells of age 0, from window ``_cells_from`` on
        self._cells_of, self._cells_from = _NO_CELLS, 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # (the cells are made again from the time zone)
        state.update(_known=self._known[: self._n].copy(), _cells_of=_NO_CELLS)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_initial" in state:  # snapshots from before the kernel: a dict and an array
            initial = state.pop("_initial")
            known = np.zeros((max(len(initial), 16), 4), np.int64)
            for row, (arrived, cells) in enumerate(initial.items()):
                known[row] = (arrived, *cells)
            table = state["_table"]
            state.update(
                _table=np.frombuffer(table, np.int32 if table.typecode == "i" else np.int64)
                .copy(),
                _known=known,
                _n=len(initial),
                _cells_of=_NO_CELLS,
                _cells_from=0,
            )
        self.__dict__.update(state)

    def _cells(self, first: int, last: int) -> None:
        """Make :attr:`_cells_of` hold the cells of arrival windows ``first`` to ``last``
        (and a week beyond: computed once a week, not once a cohort)."""
        last += 7 * 86400 // self.width
        day, hour = self._levels
        span, width = self._span, self.width
        cells = np.empty((last - first + 1, 2), np.int64)
        for row, arrived in enumerate(range(first, last + 1)):
            ts = arrived * width
            if self.tz is not None:
                ts += _utc_offset(self.tz, ts // 900)
            second = ts % 86400
            cells[row] = (
                3 * span * (second * day // 86400),
                3 * span * (day + second * hour // 86400) + 3 * ((second % 3600) // width),
            )
        self._cells_of, self._cells_from = cells, first

    def _pass(self, x: Mapping[str, Any], score: bool, learn: bool) -> tuple[float, float, float]:
        cohorts: Mapping[int, int] = x["cohorts"]
        m = len(cohorts)
        if not m and not self._n:  # nothing followed, nothing new (an idle hub): no pass
            return 0.0, 0.0, 0.0
        now = int(x["ts"]) // self.width
        first = now - self.horizon + 1
        if first < self._cells_from or now >= self._cells_from + len(self._cells_of):
            self._cells(first, now)
        if self._n + m > len(self._known):
            self._known = np.concatenate(
                [self._known, np.zeros((max(self._n + m, 2 * len(self._known)), 4), np.int64)]
            )
        known = self._known if learn else self._known.copy()  # score only: keep no new cohort
        held, expected, variance, n = _cohort_pass(
            now,
            np.fromiter(cohorts.keys(), np.int64, m),
            np.fromiter(cohorts.values(), np.int64, m),
            known,
            self._n,
            self._table,
            _LIMIT[self._table.dtype.char],
            self._cells_of,
            self._cells_from,
            self.horizon,
            self.min_cohorts,
            score,
            learn,
        )
        if n < 0:
            raise OverflowError(f"a cohort cell overflowed its {self._table.dtype} counter")
        if learn:
            self._n = n
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


@numba.njit(cache=True, nogil=True)
def _cohort_pass(now, arrivals, sizes, known, n_known, table, limit, cells_of, cells_from,
                 horizon, minimum, score, learn):
    """One pass of :meth:`CohortRetention._pass` over arrays: takes in the new cohorts
    (``arrivals``/``sizes`` in the input's order), then scores and/or learns each followed
    cohort in the order first seen, reading each cell as the cohorts before it in the same
    pass left it, as a loop over a dict does: the same floats, added in the same order.
    Returns ``(held, expected, variance, rows in use)``; rows -1: a counter overflowed."""
    low = now - horizon + 1
    row_of = np.full(horizon, -1, np.int64)  # arrival window - low -> row of ``known``
    here = np.zeros(horizon, np.int64)  # arrival window - low -> packages still here
    for row in range(n_known):
        arrived = known[row, 0]
        if low <= arrived <= now:
            row_of[arrived - low] = row
    for k in range(arrivals.shape[0]):
        arrived, n = arrivals[k], sizes[k]
        if low <= arrived <= now:
            here[arrived - low] = n
            row = row_of[arrived - low]
            if row < 0:
                known[n_known, 0] = arrived
                known[n_known, 1] = n
                known[n_known, 2] = cells_of[arrived - cells_from, 0]
                known[n_known, 3] = cells_of[arrived - cells_from, 1]
                row_of[arrived - low] = n_known
                n_known += 1
            elif n > known[row, 1]:
                known[row, 1] = n
    held = expected = variance = 0.0
    kept = 0
    for row in range(n_known):
        arrived, n0, i0, i1 = known[row, 0], known[row, 1], known[row, 2], known[row, 3]
        age = now - arrived
        if age >= horizon and learn:  # followed to the end: forget it
            continue
        if kept != row:
            known[kept, 0], known[kept, 1], known[kept, 2], known[kept, 3] = arrived, n0, i0, i1
        kept += 1
        if age >= horizon or age < 0:
            continue
        i0 += 3 * age
        i1 += 3 * age
        n = here[arrived - low]
        c0, c1 = table[i0 + 2], table[i1 + 2]
        if score:
            if c0 >= minimum and table[i0 + 1] > 0:  # (cohorts of 0 packages: no share)
                share = table[i0] / table[i0 + 1]
            elif c1 >= minimum and table[i1 + 1] > 0:
                share = table[i1] / table[i1 + 1]
            else:
                share = -1.0
            if share >= 0.0:
                held += n
                part = n0 * share
                expected += part
                variance += part * (1.0 - share)
        if learn:
            a0, a1 = table[i0] + n, table[i1] + n
            s0, s1 = table[i0 + 1] + n0, table[i1 + 1] + n0
            if max(a0, a1, s0, s1, c0 + 1, c1 + 1) > limit:
                return held, expected, variance, -1
            table[i0], table[i1] = a0, a1
            table[i0 + 1], table[i1 + 1] = s0, s1
            table[i0 + 2], table[i1 + 2] = c0 + 1, c1 + 1
    return held, expected, variance, kept
