"""Half-space trees on a facility window's feature vector."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from river import anomaly, base, preprocessing

__all__ = ["WindowHST"]


class WindowHST(base.AnomalyDetector):
    """Half-space trees on a window's feature vector, min-max scaled online.

    A :class:`river.preprocessing.MinMaxScaler` followed by
    :class:`river.anomaly.HalfSpaceTrees`; the score is HST's (0-1, higher = more anomalous),
    0.0 during the first ``warm_up`` windows. Features are the numeric values of ``x`` under
    ``features`` (None: every numeric key but ``time_key``); with ``time_key`` set, the hour of
    the day enters as a point on a circle (``sin``, ``cos``), so that the trees can separate a
    night peak from a noon peak. Far too slow per event (tens of microseconds), fine per window.

    Parameters
    ----------
    features
        Keys of the features, or None for all numeric ones.
    time_key
        Key of the epoch-seconds timestamp, or None.
    n_trees, height, window_size, seed
        As in :class:`river.anomaly.HalfSpaceTrees`.
    warm_up
        Windows learned before scores are returned.

    Examples
    --------
    >>> import random
    >>> from detectors.facility import WindowHST
    >>> rng = random.Random(1)
    >>> detector = WindowHST(n_trees=10, height=3, window_size=50, warm_up=100, seed=1)
    >>> for i in range(300):
    ...     detector.learn_one({"a": rng.gauss(5, 1), "b": rng.gauss(20, 2)})
    >>> normal = detector.score_one({"a": 5.0, "b": 20.0})
    >>> odd = detector.score_one({"a": 9.0, "b": 8.0})
    >>> round(normal, 2), round(odd, 2)
    (0.36, 0.77)
    """

    def __init__(
        self,
        features: tuple[str, ...] | None = None,
        time_key: str | None = None,
        n_trees: int = 25,
        height: int = 8,
        window_size: int = 192,
        warm_up: int = 192,
        seed: int | None = None,
    ) -> None:
        self.features = features
        self.time_key = time_key
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.warm_up = warm_up
        self.seed = seed
        self._scaler = preprocessing.MinMaxScaler()
        self._hst = anomaly.HalfSpaceTrees(
            n_trees=n_trees, height=height, window_size=window_size, seed=seed
        )
        self._n = 0

    def _vector(self, x: Mapping[str, Any]) -> dict[str, float]:
        keys = (
            self.features
            if self.features is not None
            else [
                k
                for k, v in x.items()
                if k != self.time_key and isinstance(v, int | float) and not isinstance(v, bool)
            ]
        )
        vector = {k: float(x.get(k) or 0.0) for k in keys}
        if self.time_key is not None and x.get(self.time_key) is not None:
            angle = 2 * math.pi * (int(x[self.time_key]) % 86400) / 86400
            vector["_sin"], vector["_cos"] = math.sin(angle), math.cos(angle)
        return vector

    def score_one(self, x: Mapping[str, Any]) -> float:
        if self._n < self.warm_up:
            return 0.0
        scaled = self._scaler.transform_one(self._vector(x))
        clipped = {k: min(max(v, 0.0), 1.0) for k, v in scaled.items()}
        return float(self._hst.score_one(clipped))

    def learn_one(self, x: Mapping[str, Any]) -> None:
        vector = self._vector(x)
        self._scaler.learn_one(vector)
        scaled = self._scaler.transform_one(vector)
        self._hst.learn_one({k: min(max(v, 0.0), 1.0) for k, v in scaled.items()})
        self._n += 1
