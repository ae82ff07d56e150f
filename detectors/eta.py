"""Delivery estimates: when will a package arrive, and how likely is it to be late?"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from river import base, stats

from detectors.events import TERMINAL_CODES
from detectors.facility.stats import HUB_CODES

__all__ = ["DeliveryEstimator"]


class _Remaining:
    """Count and a few quantiles of the time from one stage to delivery.

    After the first value each quantile is fed through its compiled estimator's own
    ``update`` (``river.stats.Quantile._quantile``): the wrapper adds a Python call to each,
    several per scan learned. The first goes through the wrappers, which then know they hold
    a value (their ``get`` answers None before); a snapshot holds the wrappers."""

    __slots__ = ("_updates", "n", "quantiles")

    def __init__(self, probs: tuple[float, ...]) -> None:
        self.n = 0
        self.quantiles = tuple(stats.Quantile(p) for p in probs)
        self._bind()

    def _bind(self) -> None:
        self._updates = tuple(quantile._quantile.update for quantile in self.quantiles)

    def __getstate__(self) -> tuple[int, tuple[stats.Quantile, ...]]:
        return self.n, self.quantiles

    def __setstate__(self, state: tuple[int, tuple[stats.Quantile, ...]]) -> None:
        self.n, self.quantiles = state
        self._bind()

    def update(self, remaining: float) -> None:
        self.n += 1
        if self.n > 1:
            for update in self._updates:
                update(remaining)
        else:
            for quantile in self.quantiles:
                quantile.update(remaining)


class _Distribution:
    """A distribution of remaining time from its quantiles.

    The CDF is piecewise linear through (0, 0) and the (value, probability) knots, with an
    exponential tail above the last knot whose scale matches the last two knots. Conditioning on
    "not delivered after ``s`` seconds" uses the survival function ``S(r) = 1 - F(r)``.
    """

    def __init__(self, probs: tuple[float, ...], values: list[float]) -> None:
        knots_v = [0.0]
        for value in values:  # P² estimates may cross at small n: keep them non-decreasing
            knots_v.append(max(value, knots_v[-1]))
        self.v = knots_v
        self.p = [0.0, *probs]
        spread = self.v[-1] - self.v[-2]
        ratio = (1 - self.p[-2]) / (1 - self.p[-1])
        self.scale = max(spread / math.log(ratio), 60.0)

    def survival(self, r: float) -> float:
        v, p = self.v, self.p
        if r <= 0:
            return 1.0
        if r >= v[-1]:
            return (1 - p[-1]) * math.exp(-(r - v[-1]) / self.scale)
        for i in range(1, len(v)):
            if r < v[i]:
                frac = (r - v[i - 1]) / (v[i] - v[i - 1])
                return 1 - (p[i - 1] + frac * (p[i] - p[i - 1]))
        return 1 - p[-1]  # pragma: no cover - r < v[-1] always finds a knot

    def quantile(self, prob: float) -> float:
        v, p = self.v, self.p
        if prob >= p[-1]:
            return v[-1] + self.scale * math.log((1 - p[-1]) / max(1 - prob, 1e-12))
        for i in range(1, len(p)):
            if prob <= p[i]:
                width = p[i] - p[i - 1]
                return v[i - 1] + (prob - p[i - 1]) / width * (v[i] - v[i - 1])
        return v[-1]  # pragma: no cover


class _Overdue:
    """The last ``size`` overdue packages seen at one stage key, as (silence, remaining)
    pairs: how long each stayed silent after the scan, and the time from that scan to
    delivery. Kept sorted by silence, for "packages silent longer than this" queries."""

    __slots__ = ("recent", "silences", "pairs")

    def __init__(self, size: int) -> None:
        self.recent: deque[tuple[int, int]] = deque(maxlen=size)
        self.pairs: list[tuple[int, int]] = []  # the same pairs, sorted
        self.silences: list[int] = []  # their silences (bisect keys)

    def __getstate__(self) -> tuple[int | None, list[tuple[int, int]]]:
        return self.recent.maxlen, list(self.recent)

    def __setstate__(self, state: tuple[int | None, list[tuple[int, int]]]) -> None:
        size, recent = state
        self.recent = deque(recent, maxlen=size)
        self.pairs = sorted(recent)
        self.silences = [silence for silence, _ in self.pairs]

    def update(self, silence: int, remaining: int) -> None:
        recent, pairs = self.recent, self.pairs
        if len(recent) == recent.maxlen:
            at = bisect.bisect_left(pairs, recent[0])
            del pairs[at], self.silences[at]
        pair = (silence, remaining)
        recent.append(pair)
        at = bisect.bisect_right(pairs, pair)
        pairs.insert(at, pair)
        self.silences.insert(at, silence)

    def remaining_after(self, silence: float) -> list[int]:
        """Remaining times (sorted) of the kept packages that stayed silent longer."""
        at = bisect.bisect_right(self.silences, silence)
        return sorted(remaining for _, remaining in self.pairs[at:])


class DeliveryEstimator(base.Base):
    """Learns the time from a scan to delivery; estimates arrival and the chance of being late.

    For each stage it tracks, with P² estimators (``river.stats.Quantile``), a few quantiles
    of the remaining time from that scan to the delivery scan, at two levels: (facility, code,
    service) once it holds ``min_samples`` deliveries, else (code, service) (and per time of
    day, below). A package that has
    been silent ``silence`` seconds since its last scan is known not to have been delivered in
    that time, so the estimate conditions on it: with ``S`` the survival function of the
    remaining time ``R`` (piecewise linear between the tracked quantiles, exponential tail),

    * ``eta = last_ts + median(R | R > silence)``, never earlier than now;
    * ``p_late = P(R > promised_by - last_ts | R > silence) = S(D) / S(silence)``, and 1.0 once
      the promise has passed.

    Both grow with the silence. Limits, deliberately: no weekday effect, and quantiles are
    cumulative (they do not forget).

    **Time of day.** A plant departs its packages at its sorts, so the time to delivery from
    an arrival scan depends on whether the package catches tonight's sort: on the simulator's
    national replay, express packages arriving at one plant between 03:00 and 06:00 UTC were
    delivered within 21.5 h in 72 % of cases, those arriving between 12:00 and 15:00 in none,
    and 2.5 % over the whole day. So with ``phase_hours`` the stages are also split by the
    time of day of the scan (UTC hour // ``phase_hours``): (facility, code, service, phase)
    for the scans of processing plants and distribution centres
    (:data:`~detectors.facility.stats.HUB_CODES`: a few hundred facilities, where an
    incident holds packages), then (facility, code, service), then (code, service, phase),
    then (code, service); delivery-unit scans, tens of thousands of facilities each
    delivering within its day, get (facility, code, service), (code, service, phase),
    (code, service). An overdue package is estimated without the phase (its scan's time
    of day says little once it has missed the sort it was due for). ``None``: no phase.
    Limit: phases are UTC hours and the quantiles do not forget, so across a daylight
    saving change a phase that straddles a facility's sort mixes both sides of it.

    **Overdue packages.** The quantiles above describe every package; a package silent far
    beyond its stage's usual time is not an ordinary one (it was lost and found, missent, or
    held by a facility incident), and the tail past the last quantile is only a guess. So the
    estimator also learns from the packages a caller saw go overdue (``learn_overdue``: how
    long each stayed silent after the scan, ``D``, and the time from that scan to delivery,
    ``R``) and :meth:`estimate_overdue` answers from them, conditioned on the silence so far:
    ``eta = last_ts + median(R | D > silence)`` over the last ``overdue_window`` such packages
    at (code, service), else (code), else any stage, once ``overdue_min`` of them stayed
    silent longer; otherwise it falls back to :meth:`estimate`, but no earlier than the
    stage's usual remaining time counted from now. Conditioning on ``D``, not on
    ``R``, matters: a package that moved on after 12 h and was delivered 40 h after the scan
    says nothing about one that has been silent for 30 h.

    Cost (CPU time, 2-core CI-class VM under load): ``learn_one`` ~39 us for a delivery with 8
    earlier scans without phases (2 levels x 3 quantiles per scan), ~73 us with them (3-4
    levels; ``bench/eta_cost.py``), so a caller may teach it from a sample of packages;
    ``estimate`` ~8 us, ``estimate_overdue`` up to ~35 us with a full window (it
    sorts the remaining times of the packages silent longer), both meant for packages being
    alerted on, not for every event.

    Parameters
    ----------
    probs
        Quantiles tracked, increasing, in (0, 1).
    min_samples
        Deliveries a stage key needs before it is used.
    overdue_window
        Overdue deliveries kept per key (the newest; older ones are forgotten).
    overdue_min
        Kept overdue deliveries longer than the current silence that a key needs before
        :meth:`estimate_overdue` uses it.
    phase_hours
        Width of a time-of-day phase, in hours (a divisor of 24), or None.

    Examples
    --------

    >>> import random
    >>> from detectors import DeliveryEstimator

    >>> rng = random.Random(1)
    >>> estimator = DeliveryEstimator(min_samples=20)
    >>> for _ in range(200):  # out for delivery at t, delivered 1 to 7 hours later
    ...     t = 1732700000 + rng.randrange(86400)
    ...     estimator.learn_one({"service": "ground", "delivered_ts": t + rng.uniform(1, 7) * 3600,
    ...                          "scans": [("PO-1", "OF", t)]})

    >>> x = {"facility": "PO-1", "code": "OF", "service": "ground", "last_ts": 1732780800,
    ...      "promised_by_ts": 1732780800 + 6 * 3600}
    >>> for silence in (0, 3, 5, 8):
    ...     eta, p_late = estimator.estimate(x | {"silence": silence * 3600})
    ...     print(f"silent {silence} h: eta +{(eta - x['last_ts']) / 3600:.1f} h, "
    ...           f"p_late {p_late:.2f}")
    silent 0 h: eta +4.1 h, p_late 0.16
    silent 3 h: eta +5.0 h, p_late 0.25
    silent 5 h: eta +6.0 h, p_late 0.49
    silent 8 h: eta +9.0 h, p_late 1.00

    The true remaining time here is uniform on 1-7 h: given 3 silent hours it is uniform on
    3-7 h (median 5 h, P(> 6 h) = 0.25), given 5 it is uniform on 5-7 h (6 h, 0.5). Past the
    last tracked quantile the tail is exponential, so the estimate keeps moving with the clock.

    """

    def __init__(self, probs: tuple[float, ...] = (0.1, 0.5, 0.9), min_samples: int = 30,
                 overdue_window: int = 500, overdue_min: int = 8,
                 phase_hours: int | None = 3) -> None:
        if not all(0 < p < 1 for p in probs) or list(probs) != sorted(set(probs)):
            raise ValueError(f"probs must be increasing and in (0, 1), got {probs!r}")
        if 0.5 not in probs or len(probs) < 2:
            raise ValueError(f"probs must include 0.5 and another quantile, got {probs!r}")
        if phase_hours is not None and (phase_hours < 1 or 24 % phase_hours):
            raise ValueError(f"phase_hours must divide 24, got {phase_hours!r}")
        self.phase_hours = phase_hours
        self.probs = probs
        self.min_samples = min_samples
        self.overdue_window = overdue_window
        self.overdue_min = overdue_min
        self._stages: dict[Any, _Remaining] = {}
        self._network: dict[Any, _Remaining] = {}
        self._overdue: dict[Any, _Overdue] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("overdue_window", 500)  # snapshots from before the overdue model
        state.setdefault("overdue_min", 8)
        state.setdefault("_overdue", {})
        state.setdefault("phase_hours", None)  # snapshots from before the phases: keys without
        self.__dict__.update(state)

    def _keys(self, facility: str | None, code: str, service: str | None, ts: int,
              phased: bool = True) -> tuple[tuple[dict[Any, _Remaining], tuple[Any, ...]], ...]:
        """The stage keys of a scan, most specific first, with the table each lives in
        (``phased``: those :meth:`learn_one` updates; else the ones without a phase)."""
        plain = ((self._stages, (facility, code, service)), (self._network, (code, service)))
        width = self.phase_hours
        if width is None or not phased:
            return plain
        phase = int(ts) // 3600 % 24 // width
        if code in HUB_CODES:  # the facility's own data first, then the network's
            return ((self._stages, (facility, code, service, phase)), plain[0],
                    (self._network, (code, service, phase)), plain[1])
        return plain[0], (self._network, (code, service, phase)), plain[1]

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Learn from one delivery.

        ``x`` has ``service``, ``delivered_ts`` and ``scans``: the package's earlier scans as
        (facility, code, ts), any subset the caller kept (stages never passed are not learned).
        """
        service, delivered_ts = x.get("service"), x["delivered_ts"]
        scans: Iterable[tuple[str | None, str, int]] = x["scans"]
        for facility, code, ts in scans:
            remaining = delivered_ts - ts
            if code in TERMINAL_CODES or remaining < 0:
                continue
            for table, key in self._keys(facility, code, service, ts):
                stage = table.get(key)
                if stage is None:
                    stage = table[key] = _Remaining(self.probs)
                stage.update(remaining)

    def _distribution(self, x: Mapping[str, Any], phased: bool = True) -> _Distribution | None:
        for table, key in self._keys(x["facility"], x["code"], x.get("service"), x["last_ts"],
                                     phased):
            stage = table.get(key)
            if stage is not None and stage.n >= self.min_samples:
                values = [quantile.get() for quantile in stage.quantiles]
                return _Distribution(self.probs, values)  # type: ignore[arg-type]
        return None

    def remaining_quantile(self, facility: str | None, code: str, service: str | None,
                           prob: float) -> float | None:
        """The ``prob`` quantile of the remaining time from a scan ``(facility, code)`` of a
        ``service`` package, from its stage over the whole day: the distribution
        :meth:`estimate` uses with ``phased=False`` (None where it has none).

        From a scan at ``ts``, ``p_late`` reaches ``p`` only if the promise is at most
        ``ts + remaining_quantile(..., 1 - p)``: a caller that checks many packages and
        tells few can look this up first (below the lowest tracked quantile it reads that
        quantile alone, ~1 us, where :meth:`estimate` takes ~8 us).

        >>> est = DeliveryEstimator(min_samples=3)
        >>> for hours in (10, 20, 30, 40, 50):
        ...     est.learn_one({"service": "ground", "delivered_ts": hours * 3600,
        ...                    "scans": [("P1", "A1", 0)]})
        >>> q = est.remaining_quantile("P1", "A1", "ground", 0.07)
        >>> round(q / 3600, 1)  # hours: 7 % of these deliveries take less
        7.0
        >>> x = {"facility": "P1", "code": "A1", "service": "ground", "last_ts": 0,
        ...      "silence": 0}
        >>> [round(est.estimate(x | {"promised_by_ts": d}, phased=False)[1], 2)
        ...  for d in (q - 3600, q, q + 3600)]  # promised an hour before, at, an hour after
        [0.94, 0.93, 0.92]
        >>> est.remaining_quantile("P9", "A1", "express", 0.5) is None  # no such stage
        True
        """
        if code in TERMINAL_CODES:
            return None
        for table, key in self._keys(facility, code, service, 0, phased=False):
            stage = table.get(key)
            if stage is not None and stage.n >= self.min_samples:
                first = self.probs[0]
                if prob <= first:  # on the CDF's first piece, from (0, 0) to the first knot
                    return prob / first * max(stage.quantiles[0].get(), 0.0)
                values = [quantile.get() for quantile in stage.quantiles]
                return _Distribution(self.probs, values).quantile(prob)  # type: ignore[arg-type]
        return None

    def estimate(self, x: Mapping[str, Any], phased: bool = True,
                 ) -> tuple[int | None, float | None]:
        """(eta_ts, p_late) for a package last scanned at ``x`` and silent ``silence`` seconds.

        ``x`` has facility, code, service, last_ts, silence and optionally promised_by_ts.
        ``(None, None)`` while the stage has too little data or the code is terminal;
        ``p_late`` is None without a promise. ``phased=False``: from the stages without a
        time of day.
        """
        if x["code"] in TERMINAL_CODES:
            return None, None
        dist = self._distribution(x, phased)
        if dist is None:
            return None, None
        last_ts, silence = x["last_ts"], max(float(x["silence"]), 0.0)
        alive = dist.survival(silence)
        # median of R given R > silence: the quantile at F(silence) + S(silence) / 2
        remaining = max(dist.quantile(1 - alive / 2), silence)
        eta = int(math.ceil(last_ts + remaining))
        promised_by = x.get("promised_by_ts")
        if promised_by is None:
            return eta, None
        deadline = promised_by - last_ts
        if deadline <= silence or alive <= 0.0:
            return eta, 1.0
        return eta, min(1.0, dist.survival(deadline) / alive)

    def learn_overdue(self, x: Mapping[str, Any]) -> None:
        """Learn from one delivered package that had gone overdue after a scan.

        ``x`` has ``code``, ``service``, ``last_ts`` (the scan before the silence),
        ``resumed_ts`` (the next scan) and ``delivered_ts``.
        """
        silence = int(x["resumed_ts"] - x["last_ts"])
        remaining = int(x["delivered_ts"] - x["last_ts"])
        if silence < 0 or remaining < silence or x["code"] in TERMINAL_CODES:
            return
        code, service = x["code"], x.get("service")
        for key in ((code, service), (code,), ()):
            kept = self._overdue.get(key)
            if kept is None:
                kept = self._overdue[key] = _Overdue(self.overdue_window)
            kept.update(silence, remaining)

    def estimate_overdue(self, x: Mapping[str, Any]) -> tuple[int | None, float | None]:
        """(eta_ts, p_late) for an overdue package, from packages that went overdue before.

        Same ``x`` as :meth:`estimate`. Uses the most specific key of (code, service), (code),
        any, with ``overdue_min`` kept remaining times longer than the silence; falls back to
        :meth:`estimate` when none has. Either way never earlier than if the package moved
        now and then took the stage's usual remaining time (its median over the whole day),
        and ``p_late`` at least 0.5 when that is past the promise.

        >>> est = DeliveryEstimator(overdue_min=3)
        >>> for days in (2, 3, 4, 5, 6):  # lost, found after days - 1, delivered a day later
        ...     est.learn_overdue({"code": "A1", "service": "ground", "last_ts": 0,
        ...                        "resumed_ts": (days - 1) * 86400,
        ...                        "delivered_ts": days * 86400})
        >>> x = {"facility": "P1", "code": "A1", "service": "ground", "last_ts": 0,
        ...      "promised_by_ts": 4 * 86400}
        >>> for silence_days in (0.5, 1.5, 2.5):
        ...     eta, p_late = est.estimate_overdue(x | {"silence": silence_days * 86400})
        ...     print(f"silent {silence_days} d: eta day {eta / 86400:.1f}, p_late {p_late:.2f}")
        silent 0.5 d: eta day 4.0, p_late 0.40
        silent 1.5 d: eta day 4.5, p_late 0.50
        silent 2.5 d: eta day 5.0, p_late 0.67
        """
        if x["code"] in TERMINAL_CODES:
            return None, None
        silence = max(float(x["silence"]), 0.0)
        code, service = x["code"], x.get("service")
        for key in ((code, service), (code,), ()):
            kept = self._overdue.get(key)
            if kept is None:
                continue
            above = kept.remaining_after(silence)
            if len(above) < self.overdue_min:
                continue
            n = len(above)
            median = (above[(n - 1) // 2] + above[n // 2]) / 2
            eta = int(math.ceil(x["last_ts"] + median))
            promised_by = x.get("promised_by_ts")
            dist = self._distribution(x, phased=False)
            p_floor = 0.0
            if dist is not None:
                floor = int(math.ceil(x["last_ts"] + silence + dist.quantile(0.5)))
                if floor > eta:
                    eta = floor
                    if promised_by is not None and eta > promised_by:
                        p_floor = 0.5
            if promised_by is None:
                return eta, None
            deadline = promised_by - x["last_ts"]
            if deadline <= silence:
                return eta, 1.0
            return eta, max(p_floor, (n - bisect.bisect_right(above, deadline)) / n)
        # no overdue package was silent this long: from the stage's distribution over the
        # whole day (one time of day's is narrow, and its tail, all an overdue package has
        # to go on, says "nearly there"), and no earlier than if it moved now and then took
        # the stage's usual remaining time (which an overdue package rarely beats)
        eta, p_late = self.estimate(x, phased=False)
        dist = self._distribution(x, phased=False)
        if eta is not None and dist is not None:
            floor = int(math.ceil(x["last_ts"] + silence + dist.quantile(0.5)))
            if floor > eta:
                eta = floor
                promised_by = x.get("promised_by_ts")
                if p_late is not None and promised_by is not None and eta > promised_by:
                    p_late = max(p_late, 0.5)  # the median is past the promise
        return eta, p_late
