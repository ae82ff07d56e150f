"""Page-Hinkley drift of a series (a facility's dwell), as a score."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from river import base, drift

__all__ = ["DwellDrift"]


class DwellDrift(base.AnomalyDetector):
    """Page-Hinkley drift statistic of a series (by default a facility's dwell), as a score.

    Wraps :class:`river.drift.PageHinkley`: ``learn_one`` feeds the value, ``score_one`` is the
    Page-Hinkley statistic that the value *would* give, divided by ``threshold`` (so 1.0 or
    more means a drift), without changing the state. The statistic measures how far the
    cumulative deviation from the running mean has climbed above its minimum (``mode="up"``)
    or fallen below its maximum (``"down"``); a detected drift resets the detector, as in River.
    Values that are None or NaN (a window without departures; pandas reads it as NaN) are
    skipped. In warm-up (fewer than
    ``min_instances`` values) the score is 0.0.

    Parameters
    ----------
    value_key
        Key of the value in ``x``.
    mode
        ``"up"`` (increases, e.g. dwell) or ``"down"`` (decreases, e.g. volume).
    min_instances, delta, threshold, alpha
        As in :class:`river.drift.PageHinkley`.

    Examples
    --------
    >>> import random
    >>> from detectors.facility import DwellDrift
    >>> rng = random.Random(3)
    >>> detector = DwellDrift(delta=0.5, threshold=10.0)
    >>> for _ in range(200):
    ...     detector.learn_one({"dwell": rng.gauss(6, 1)})
    >>> round(detector.score_one({"dwell": 6.5}), 2)
    0.04
    >>> scores = []
    >>> for _ in range(10):  # dwell jumps from ~6 h to ~10 h
    ...     x = {"dwell": rng.gauss(10, 1)}
    ...     scores.append(round(detector.score_one(x), 2))
    ...     detector.learn_one(x)
    >>> scores  # a drift at the third value; then River's detector resets and warms up again
    [0.32, 0.64, 1.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """

    def __init__(
        self,
        value_key: str = "dwell",
        mode: str = "up",
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
    ) -> None:
        if mode not in ("up", "down"):
            raise ValueError(f"mode must be 'up' or 'down', got {mode!r}")
        self.value_key = value_key
        self.mode = mode
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self._ph = drift.PageHinkley(min_instances, delta, threshold, alpha, mode)

    def score_one(self, x: Mapping[str, Any]) -> float:
        value = x.get(self.value_key)
        ph = self._ph
        if (value is None or value != value or ph.drift_detected  # (NaN: missing, pandas)
                or ph._x_mean.n + 1 < self.min_instances):
            return 0.0
        n = ph._x_mean.n + 1
        mean = ph._x_mean.get() + (value - ph._x_mean.get()) / n
        dev = value - mean
        if self.mode == "up":
            s = self.alpha * ph._sum_increase + dev - self.delta
            stat = s - min(ph._min_increase, s)
        else:
            s = self.alpha * ph._sum_decrease + dev + self.delta
            stat = max(ph._max_decrease, s) - s
        return stat / self.threshold

    def learn_one(self, x: Mapping[str, Any]) -> None:
        value = x.get(self.value_key)
        if value is not None and value == value:  # (NaN: a missing figure read by pandas)
            self._ph.update(value)
