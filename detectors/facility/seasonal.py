"""A robust z-score against the same hour of the week or day (local time)."""

from __future__ import annotations

import collections
import datetime as dt
import functools
from array import array
from collections.abc import Iterable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

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
        self.value_key = value_key
        self.time_key = time_key
        self.side = side
        self.seasons = seasons
        self.window = window
        self.min_samples = min_samples
        self.min_scale = min_scale
        self.rel_scale = rel_scale
        self.tz = tz
        # per level: the last ``window`` values of each slot in one flat ring (slot k at
        # [k * window, (k + 1) * window)) and the values each slot has seen; made on first use
        self._rings: list[array | None] = [None] * len(seasons)
        self._seen: list[array | None] = [None] * len(seasons)
        # and each slot's sum, for :meth:`mean`, while every value learned is a whole number
        # (counts: their sums are exact, the same as adding the slot's values up each time)
        self._sums: list[array | None] = [None] * len(seasons)
        self._whole = window <= _MAX_WINDOW
        self._recent: collections.deque = collections.deque(maxlen=window)
        self._keys_of: Any = None  # the last time seen by _keys, and its keys
        self._last_keys: list[int] | None = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_sums" not in state:  # snapshots from before the sums: add the rings up
            rings, window = self._rings, self.window
            self._whole = window <= _MAX_WINDOW and all(
                v.is_integer() and abs(v) < _WHOLE
                for ring in rings
                if ring is not None
                for v in ring
            )
            self._sums = [  # a ring's slots beyond the values seen hold 0.0
                None if ring is None else array(
                    "d", (sum(ring[k : k + window]) for k in range(0, len(ring), window))
                )
                for ring in rings
            ]

    def _keys(self, x: Mapping[str, Any]) -> list[int] | None:
        ts = x.get(self.time_key) if self.time_key else None
        if ts is None:
            return None
        if ts == self._keys_of:  # scored, then learned: the same time twice
            return self._last_keys
        self._keys_of = ts
        ts = int(ts)
        if self.tz is not None:
            ts += _utc_offset(self.tz, ts // 900)
        ts += 3 * 86400  # 1970-01-01 was a Thursday: slot 0 of a week starts on Monday
        keys = self._last_keys = [
            (ts % period) * buckets // period for period, buckets in self.seasons
        ]
        return keys

    def _slot(self, x: Mapping[str, Any]) -> tuple[int, int, int] | None:
        """``(level, slot, values seen)`` of the finest seasonal level whose slot for ``x``
        holds ``min_samples`` values; None: the level without seasonality (or warm-up)."""
        keys = self._keys(x)
        if keys is not None:
            window, minimum = self.window, self.min_samples
            for level, (seen, key) in enumerate(zip(self._seen, keys, strict=True)):
                if seen is not None:
                    n = seen[key]
                    if min(n, window) >= minimum:
                        return level, key, n
        return None

    def _values(self, x: Mapping[str, Any]) -> Iterable[float] | None:
        slot = self._slot(x)
        if slot is not None:
            level, key, n = slot
            ring, window = self._rings[level], self.window
            start = key * window
            if n <= window:
                return ring[start : start + n]  # type: ignore[index]
            oldest = start + n % window  # in the order seen, as a deque would hold them
            return ring[oldest : start + window] + ring[start:oldest]  # type: ignore[index]
        if len(self._recent) < self.min_samples:
            return None
        return self._recent

    def mean(self, x: Mapping[str, Any]) -> float | None:
        """Mean of the values of the level that applies to ``x`` (e.g. an expected count), or
        None in warm-up."""
        if self._whole:
            slot = self._slot(x)
            if slot is not None:
                level, key, n = slot
                return self._sums[level][key] / min(n, self.window)  # type: ignore[index]
        values = self._values(x)
        return None if values is None else sum(values) / len(values)  # type: ignore[arg-type]

    def baseline(self, x: Mapping[str, Any]) -> tuple[float, float] | None:
        """``(median, scale)`` of the level that applies to ``x``, or None in warm-up."""
        values = self._values(x)
        if values is None:
            return None
        ordered = sorted(values)
        median = _median(ordered)
        deviations = sorted(abs(v - median) for v in ordered)
        spread = 1.4826 * _median(deviations)
        if spread == 0.0:  # more than half the values equal: the mean deviation instead
            spread = 1.2533 * sum(deviations) / len(deviations)
        scale = max(spread, self.min_scale, self.rel_scale * abs(median))
        return median, scale

    def score_one(self, x: Mapping[str, Any]) -> float:
        found = self.baseline(x)
        if found is None:
            return 0.0
        z = (float(x[self.value_key]) - found[0]) / found[1]
        if self.side == "high":
            return max(z, 0.0)
        if self.side == "low":
            return max(-z, 0.0)
        return abs(z)

    def learn_one(self, x: Mapping[str, Any]) -> None:
        value = float(x[self.value_key])
        self._recent.append(value)
        keys = self._keys(x)
        if keys is None:
            return
        window = self.window
        if window <= 0:
            return
        if self._whole and not (value.is_integer() and abs(value) < _WHOLE):
            self._whole = False
        for level, key in enumerate(keys):
            seen = self._seen[level]
            if seen is None:
                buckets = self.seasons[level][1]
                self._rings[level] = array("d", bytes(8 * buckets * window))
                self._sums[level] = array("d", bytes(8 * buckets))
                seen = self._seen[level] = array("q", bytes(8 * buckets))
            n = seen[key]
            ring, i = self._rings[level], key * window + n % window
            self._sums[level][key] += value - ring[i]  # type: ignore[index]
            ring[i] = value  # type: ignore[index]
            seen[key] = n + 1


#: Whole numbers below ``_WHOLE`` add up exactly in a slot's sum of up to ``_MAX_WINDOW`` values
#: (below 2**53).
_WHOLE, _MAX_WINDOW = float(2**40), 2**12


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2
