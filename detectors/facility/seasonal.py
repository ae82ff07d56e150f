"""A robust z-score against the same hour of the week or day (local time)."""

from __future__ import annotations

import collections
import datetime as dt
import functools
import itertools
import math
from array import array
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numba
import numpy as np
from river import base

__all__ = ["SeasonalBaseline"]


@functools.lru_cache(maxsize=1 << 16)
def _utc_offset(tz: str, slot: int) -> int:
    # offsets and DST switches fall on quarter hours: one offset per 15-minute UTC slot
    offset = dt.datetime.fromtimestamp(slot * 900, ZoneInfo(tz)).utcoffset()
    return 0 if offset is None else int(offset.total_seconds())


class SeasonalBaseline(base.AnomalyDetector):
    """Robust z-score of a value against the same hour of the week (or of the day).

    Each seasonal level cuts time into ``buckets`` equal slots of its ``period`` and keeps, per
    slot, the last ``window`` values; the score of a value is its distance from their median in
    units of their scale, ``max(1.4826 * MAD, min_scale, rel_scale * |median|)`` (the mean
    absolute deviation x 1.2533 stands in for a MAD of 0). The finest
    level whose slot holds ``min_samples`` values is used (default: hour of the week, then hour
    of the day), then a level without seasonality (the last ``window`` values). Without a
    timestamp under ``time_key`` only that last level exists: it is then a rolling robust
    z-score on any series. Until some level has ``min_samples`` values the score is 0.0.

    Seasonality is what makes a night-sort peak or a quiet Sunday normal: they are compared
    with earlier nights and Sundays. A slot of the week needs ``min_samples`` weeks of history;
    until then the hour of the day stands in (it does not know that Sunday is quiet).

    Parameters
    ----------
    value_key
        Key of the value in ``x``.
    time_key
        Key of the epoch-seconds timestamp in ``x``; absent or None: no seasonality.
    side
        ``"both"`` (|z|), ``"high"`` (only values above the baseline score) or ``"low"``.
    seasons
        ``(period seconds, buckets)`` per level, finest first.
    window
        Values kept per slot (rolling: the baseline follows slow changes).
    min_samples
        Values a slot needs before it is used.
    min_scale
        Floor of the scale (e.g. 1-2 for small counts, where the MAD is often 0).
    rel_scale
        Floor of the scale relative to the median.
    tz
        IANA time zone for the slots (a facility's local hours and weekdays); None: UTC.

    Examples
    --------
    A series with a daily peak at 02:00; the peak is normal, a peak at noon is not.

    >>> import random
    >>> from detectors.facility import SeasonalBaseline
    >>> rng = random.Random(7)
    >>> detector = SeasonalBaseline(seasons=((86400, 24),), min_samples=3)
    >>> t0 = 1_790_208_000  # a midnight, UTC
    >>> for hour in range(24 * 7):
    ...     value = (40 if hour % 24 == 2 else 5) + rng.randint(-2, 2)
    ...     detector.learn_one({"value": value, "ts": t0 + hour * 3600})
    >>> day8 = t0 + 7 * 86400
    >>> round(detector.score_one({"value": 41, "ts": day8 + 2 * 3600}), 2)
    0.0
    >>> round(detector.score_one({"value": 41, "ts": day8 + 12 * 3600}), 2)
    23.61

    Without a timestamp it is a plain univariate detector (a rolling robust z-score).

    >>> plain = SeasonalBaseline(window=50)
    >>> for _ in range(100):
    ...     plain.learn_one({"value": rng.gauss(10, 1)})
    >>> round(plain.score_one({"value": 10.5}), 2), round(plain.score_one({"value": 16}), 2)
    (0.23, 4.53)
    """

    def __init__(
        self,
        value_key: str = "value",
        time_key: str = "ts",
        side: str = "both",
        seasons: tuple[tuple[int, int], ...] = ((7 * 86400, 168), (86400, 24)),
        window: int = 32,
        min_samples: int = 4,
        min_scale: float = 1e-9,
        rel_scale: float = 0.0,
        tz: str | None = None,
    ) -> None:
        if side not in ("both", "high", "low"):
            raise ValueError(f"side must be 'both', 'high' or 'low', got {side!r}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be at least 1, got {min_samples!r}")
        if tz is not None:  # an unknown zone fails here, not at the first value learned
            try:
                ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {tz!r}") from None
        self.value_key = value_key
        self.time_key = time_key
        self.side = side
        self.seasons = seasons
        self.window = window
        self.min_samples = min_samples
        self.min_scale = min_scale
        self.rel_scale = rel_scale
        self.tz = tz
        # every level's slots side by side (level l's slot k is slot ``_first[l] + k``); per
        # slot the last ``window`` values in one flat ring (slot s at [s * window,
        # (s + 1) * window)), the values it has seen, and its sum, for :meth:`mean`, while
        # every value learned is a whole number (counts: their sums are exact, the same as
        # adding the slot's values up each time). Made on the first value with a time.
        self._layout()
        self._ring: np.ndarray | None = None
        self._count: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._whole = window <= _MAX_WINDOW
        self._recent: collections.deque = collections.deque(maxlen=window)
        self._local_of: Any = None  # the last time seen by _local, and its local time
        self._local = 0

    def _layout(self) -> None:
        periods = [period for period, _ in self.seasons]
        buckets = [n for _, n in self.seasons]
        self._periods = np.array(periods, np.int64)
        self._buckets = np.array(buckets, np.int64)
        self._first = np.array([0, *itertools.accumulate(buckets)][: len(buckets)], np.int64)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # (the layout is made again from the seasons)
        for key in ("_periods", "_buckets", "_first"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "_rings" in state:  # snapshots from before the flat layout: a ring per level
            _from_levels(state)
        self.__dict__.update(state)
        self._layout()

    def _local_time(self, x: Mapping[str, Any]) -> int | None:
        """Seconds since a Monday 00:00 in the detector's time zone, or None (no time)."""
        ts = x.get(self.time_key) if self.time_key else None
        if ts is None:
            return None
        if ts == self._local_of:  # scored, then learned: the same time twice
            return self._local
        when = int(ts)
        if self.tz is not None:
            when += _utc_offset(self.tz, when // 900)
        self._local = when = when + 3 * 86400  # 1970-01-01 was a Thursday: weeks from Monday
        self._local_of = ts
        return when

    def mean(self, x: Mapping[str, Any]) -> float | None:
        """Mean of the values of the level that applies to ``x`` (e.g. an expected count), or
        None in warm-up."""
        return self._mean_at(self._local_time(x) if self._count is not None else None)

    def _mean_at(self, local: int | None) -> float | None:
        """:meth:`mean` at a local time (:meth:`_local_time`; None: no time). A caller with
        several baselines of one zone works the time out once for all of them."""
        if local is not None and self._count is not None:
            found, mean = _slot_mean(
                self._ring, self._count, self._sum, self._periods, self._buckets,
                self._first, local, self.window, self.min_samples, self._whole,
            )
            if found:
                return mean
        recent = self._recent
        if len(recent) < self.min_samples:
            return None
        return sum(recent) / len(recent)

    def baseline(self, x: Mapping[str, Any]) -> tuple[float, float] | None:
        """``(median, scale)`` of the level that applies to ``x``, or None in warm-up."""
        return self._baseline_at(self._local_time(x) if self._count is not None else None)

    def _baseline_at(self, local: int | None) -> tuple[float, float] | None:
        """:meth:`baseline` at a local time (see :meth:`_mean_at`)."""
        if local is not None and self._count is not None:
            found, median, scale = _slot_baseline(
                self._ring, self._count, self._periods, self._buckets, self._first, local,
                self.window, self.min_samples, self.min_scale, self.rel_scale,
            )
            if found:
                return median, scale
        if len(self._recent) < self.min_samples:
            return None
        ordered = sorted(self._recent)
        median = _median(ordered)
        deviations = sorted(abs(v - median) for v in ordered)
        spread = 1.4826 * _median(deviations)
        if spread == 0.0:  # more than half the values equal: the mean deviation instead
            spread = 1.2533 * sum(deviations) / len(deviations)
        scale = max(spread, self.min_scale, self.rel_scale * abs(median))
        return median, scale

    def score_one(self, x: Mapping[str, Any]) -> float:
        """The robust z of ``x``'s value against its slot (0.0 in warm-up, or for a value that
        is not a finite number: a missing figure read by pandas is NaN)."""
        value = float(x[self.value_key])
        if not math.isfinite(value):
            return 0.0
        found = self.baseline(x)
        if found is None:
            return 0.0
        z = (value - found[0]) / found[1]
        if self.side == "high":
            return max(z, 0.0)
        if self.side == "low":
            return max(-z, 0.0)
        return abs(z)

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Learn ``x``'s value (skipped if it is not a finite number: one NaN would make
        every median after it NaN, and NaN is never over a threshold)."""
        value = float(x[self.value_key])
        if not math.isfinite(value):
            return
        local = self._local_time(x)  # (first: a time that fails leaves nothing learned)
        self._learn_at(local, value)

    def _learn_at(self, local: int | None, value: float) -> None:
        """:meth:`learn_one` of a finite ``value`` at a local time (see :meth:`_mean_at`)."""
        window = self.window
        if local is None or window <= 0:
            self._recent.append(value)
            return
        self._keep(value)
        if self._count is None:
            slots = int(self._buckets.sum())
            self._ring = np.zeros(slots * window)
            self._count = np.zeros(slots, np.int64)
            self._sum = np.zeros(slots)
        _slot_learn(self._ring, self._count, self._sum, self._periods, self._buckets,
                    self._first, local, window, value)

    def _keep(self, value: float) -> None:
        """The rest of learning ``value`` into the slots: the last values (the level without
        seasons), and whether every value so far was a whole number (exact sums)."""
        self._recent.append(value)
        if self._whole and not (value.is_integer() and abs(value) < _WHOLE):
            self._whole = False

    def _read_then_learn(self, read: Any, local: int | None, value: float) -> Any:
        """``read(local)``, then ``value`` learned if it is a finite number: the fused calls'
        way when the slots are not there (yet) or the value is not to be learned."""
        found = read(local)
        if math.isfinite(value):
            self._learn_at(local, value)
        return found

    def _mean_learn_at(self, local: int | None, value: float) -> float | None:
        """:meth:`_mean_at` then :meth:`_learn_at` ``value``, in one compiled call
        once the slots exist: a caller that reads a baseline and then learns the window's
        value (the facility monitor, for every hub and window) pays one call, not two. A
        value that is not a finite number is not learned, as with :meth:`learn_one`."""
        if local is None or self._count is None or self.window <= 0 or not math.isfinite(value):
            return self._read_then_learn(self._mean_at, local, value)
        found, mean = _slot_mean_learn(
            self._ring, self._count, self._sum, self._periods, self._buckets, self._first,
            local, self.window, self.min_samples, self._whole, value,
        )
        if not found:  # (warm-up: the last values, before this one)
            mean = self._mean_at(None)
        self._keep(value)
        return mean

    def _baseline_learn_at(
        self, local: int | None, value: float
    ) -> tuple[float, float] | None:
        """:meth:`_baseline_at` then :meth:`_learn_at` ``value``; see :meth:`_mean_learn_at`."""
        if local is None or self._count is None or self.window <= 0 or not math.isfinite(value):
            return self._read_then_learn(self._baseline_at, local, value)
        found, median, scale = _slot_baseline_learn(
            self._ring, self._count, self._sum, self._periods, self._buckets, self._first,
            local, self.window, self.min_samples, self.min_scale, self.rel_scale, value,
        )
        if found:
            result: tuple[float, float] | None = (median, scale)
        else:  # (warm-up: the last values, before this one)
            result = self._baseline_at(None)
        self._keep(value)
        return result


#: Whole numbers below ``_WHOLE`` add up exactly in a slot's sum of up to ``_MAX_WINDOW`` values
#: (below 2**53).
_WHOLE, _MAX_WINDOW = float(2**40), 2**12


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _from_levels(state: dict[str, Any]) -> None:
    """Turn a snapshot's per-level rings (``array`` objects, from before the flat layout;
    without sums if older still) into the flat arrays, in place."""
    rings, seen, window = state.pop("_rings"), state.pop("_seen"), state["window"]
    sums = state.pop("_sums", None)
    state.pop("_keys_of", None), state.pop("_last_keys", None)
    state.update(_local_of=None, _local=0)
    if sums is None:  # from before the sums: add the rings up
        state["_whole"] = window <= _MAX_WINDOW and all(
            v.is_integer() and abs(v) < _WHOLE for ring in rings if ring is not None for v in ring
        )
        sums = [  # a ring's slots beyond the values seen hold 0.0
            None if ring is None else array(
                "d", (sum(ring[k : k + window]) for k in range(0, len(ring), window))
            )
            for ring in rings
        ]
    if rings[0] is None:  # (the levels were made together, on the first value with a time)
        state.update(_ring=None, _count=None, _sum=None)
        return
    state.update(
        _ring=np.concatenate([np.frombuffer(r, np.float64) for r in rings]),
        _count=np.concatenate([np.frombuffer(s, np.int64) for s in seen]),
        _sum=np.concatenate([np.frombuffer(s, np.float64) for s in sums]),
    )


# The kernels: the same arithmetic as plain Python on the slot's values, in the same order (so
# the same floats); compiled, as every hub runs them several times a window (bench/RESULTS.md).


@numba.njit(cache=True, nogil=True, inline="always")
def _level_slot(periods, buckets, first, level, local):
    """The slot of ``local`` (seconds since a Monday 00:00) at ``level``."""
    period = periods[level]
    return first[level] + (local % period) * buckets[level] // period


@numba.njit(cache=True, nogil=True)
def _slot_of(count, periods, buckets, first, local, window, minimum):
    """The finest level's slot for ``local`` holding ``minimum`` values (and one at least),
    or -1."""
    for level in range(periods.shape[0]):
        slot = _level_slot(periods, buckets, first, level, local)
        n = min(count[slot], window)
        if n >= minimum and n > 0:
            return slot
    return -1


@numba.njit(cache=True, nogil=True)
def _slot_mean(ring, count, sums, periods, buckets, first, local, window, minimum, whole):
    slot = _slot_of(count, periods, buckets, first, local, window, minimum)
    if slot < 0:
        return False, 0.0
    n = count[slot]
    m = min(n, window)
    if whole:
        return True, sums[slot] / m
    start = slot * window
    oldest = n % window if n > window else 0  # added up in the order seen
    total = 0.0
    for i in range(m):
        total += ring[start + (oldest + i) % window]
    return True, total / m


@numba.njit(cache=True, nogil=True)
def _slot_baseline(ring, count, periods, buckets, first, local, window, minimum, min_scale,
                   rel_scale):
    slot = _slot_of(count, periods, buckets, first, local, window, minimum)
    if slot < 0:
        return False, 0.0, 0.0
    m = min(count[slot], window)
    start = slot * window
    ordered = np.sort(ring[start : start + m])
    mid = m // 2
    median = ordered[mid] if m % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    deviations = np.sort(np.abs(ordered - median))
    spread = 1.4826 * (deviations[mid] if m % 2 else (deviations[mid - 1] + deviations[mid]) / 2)
    if spread == 0.0:  # more than half the values equal: the mean deviation instead
        total = 0.0
        for d in deviations:
            total += d
        spread = 1.2533 * total / m
    return True, median, max(spread, min_scale, rel_scale * abs(median))


@numba.njit(cache=True, nogil=True)
def _slot_learn(ring, count, sums, periods, buckets, first, local, window, value):
    for level in range(periods.shape[0]):
        slot = _level_slot(periods, buckets, first, level, local)
        n = count[slot]
        i = slot * window + n % window
        sums[slot] += value - ring[i]
        ring[i] = value
        count[slot] = n + 1


@numba.njit(cache=True, nogil=True)
def _slot_mean_learn(ring, count, sums, periods, buckets, first, local, window, minimum, whole,
                     value):
    """``_slot_mean`` then ``_slot_learn``."""
    found, mean = _slot_mean(ring, count, sums, periods, buckets, first, local, window, minimum,
                             whole)
    _slot_learn(ring, count, sums, periods, buckets, first, local, window, value)
    return found, mean


@numba.njit(cache=True, nogil=True)
def _slot_baseline_learn(ring, count, sums, periods, buckets, first, local, window, minimum,
                         min_scale, rel_scale, value):
    """``_slot_baseline`` then ``_slot_learn``."""
    found, median, scale = _slot_baseline(ring, count, periods, buckets, first, local, window,
                                          minimum, min_scale, rel_scale)
    _slot_learn(ring, count, sums, periods, buckets, first, local, window, value)
    return found, median, scale
