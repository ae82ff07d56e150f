"""Stall detection: how long may a package stay silent after a scan?"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo

from river import base, stats

from detectors.events import TERMINAL_CODES

__all__ = ["DEFAULT_PRIOR_HOURS", "EXCEPTION_CODES", "LEVELS", "StallDetector"]

#: The stage keys, finest first. ``weekday`` is the bucket of the last scan's weekday.
LEVELS: Final = (
    "L0 (facility, code, service, weekday)",
    "L1 (code, service, weekday)",
    "L2 (code, weekday)",
)

#: Per scan code, (expected gap, threshold) in hours, used until a level has enough samples.
#: Deliberately conservative: a missed alert in warm-up is cheaper than a false one.
DEFAULT_PRIOR_HOURS: Final[Mapping[str, tuple[float, float]]] = MappingProxyType(
    {
        "GX": (24.0, 168.0),  # label created: the shipper may take days to hand the parcel over
        "03": (6.0, 48.0),
        "SF": (2.0, 48.0),  # a missed plant scan plus a missed truck is a legit 24 h+
        "10": (12.0, 72.0),
        "A1": (12.0, 72.0),
        "T1": (12.0, 72.0),
        "TL": (12.0, 72.0),
        "08": (36.0, 8.0),  # missent: an exception code, see EXCEPTION_CODES
        "15": (36.0, 8.0),  # mis-shipped: likewise
        "07": (12.0, 72.0),  # post office: hours on weekdays, up to ~56 h over a weekend
        "OF": (6.0, 36.0),
        "02": (24.0, 96.0),
    }
)


#: The carrier's own "off track" codes (missent, mis-shipped, rescheduled, status not
#: updated). They are explicit signals, not stages with a usual silence: they are never learned
#: (learning would make a missort look normal) and always use their prior, which is short.
EXCEPTION_CODES: Final = frozenset({"08", "15", "71", "DX"})


class _Gaps:
    """Count, median and upper quantile of the gaps seen at one stage key.

    An L0 node keeps references to its L1 and L2 nodes (``parents``): learning touches one dict.
    It keeps two ``river.stats.Quantile`` (what a snapshot holds) and, for the hot path, their
    compiled estimators' ``update`` and ``get`` (``*_update``, ``*_get``): the wrapper adds a
    Python call to each, ~5 % of the flow's time at national density (bench/RESULTS.md). The
    same estimators, fed the same values: the same numbers. The first value goes through
    the wrappers, which then know they hold one (their ``get`` answers None before).
    """

    __slots__ = ("hi", "hi_get", "hi_update", "mid", "mid_get", "mid_update", "n", "parents",
                 "since")

    def __init__(self, q: float, parents: tuple[_Gaps, ...] = ()) -> None:
        self.n = 0
        self.since = 0  # last_ts of the first gap learned: how much time the key has seen
        self.hi = stats.Quantile(q)
        self.mid = stats.Quantile(0.5)
        self.parents = parents
        self._bind()

    def _bind(self) -> None:
        hi, mid = self.hi._quantile, self.mid._quantile  # (river's compiled P² estimators)
        self.hi_update, self.hi_get = hi.update, hi.get
        self.mid_update, self.mid_get = mid.update, mid.get

    def __getstate__(self) -> tuple[Any, ...]:
        return self.n, self.hi, self.mid, self.parents, self.since

    def __setstate__(
        self, state: tuple[Any, ...]
    ) -> None:
        if len(state) == 4:  # snapshots from before ``since``
            state = (*state, 0)
        self.n, self.hi, self.mid, self.parents, self.since = state
        self._bind()


_ALWAYS: Final = float("inf")
_NAMES: Final = ("L0", "L1", "L2", "prior")


@functools.lru_cache(maxsize=1 << 16)
def _local_day(tz: str, slot: int) -> int:
    """Local date (proleptic ordinal) of a 15-minute UTC slot.

    UTC offsets and DST switches fall on quarter hours, so one 15-minute UTC slot has one
    local date: caching per slot is exact.
    """
    return dt.datetime.fromtimestamp(slot * 900, ZoneInfo(tz)).date().toordinal()


_EPOCH_ORDINAL: Final = dt.date(1970, 1, 1).toordinal()
_BUCKET_CACHE: Final = 1 << 16  # slots per zone (facilities) remembered before starting afresh


class StallDetector(base.AnomalyDetector):
    """Learns, per stage, how long a package usually stays silent after a scan.

    A stage is keyed hierarchically; the finest level with at least ``min_samples`` gaps is
    used, else a prior per scan code, else nothing (warm-up: score 0.0):

    * L0 (facility, code, service, weekday bucket): the facility's own habits;
    * L1 (code, service, weekday bucket): the network's;
    * L2 (code, weekday bucket): the network's, any service;
    * the prior: ``prior_hours[code]``, else ``default_prior_hours``.

    Every level keeps the weekday bucket. An all-days level is a mixture dominated by the
    weekend waits (a ground parcel arriving at a post office on Saturday goes out on Monday,
    ~40-56 h later), so it would make a Tuesday arrival wait 56 h; worse, before the first
    weekend it has seen weekdays only and would cry wolf on Saturday. When no level has seen
    enough of a weekday, the conservative prior applies instead. Facility precedes service in
    the order of what is dropped first: a facility's own data are the first to run short.
    The weekday is the last scan's, bucketed by ``weekday_buckets`` (default: Monday-Thursday,
    Friday, Saturday, Sunday). It is taken in the facility's time zone when ``tz_of`` maps the
    facility to an IANA zone, else in UTC; US facilities should pass ``tz_of`` (read from
    ``facilities.csv``), as Friday 20:00 in Chicago is already Saturday in UTC. The lane
    (previous facility) is not part of any key: it multiplies keys and rarely changes the wait.

    Per stage key two P² estimators (``river.stats.Quantile``) track the ``q`` quantile and the
    median of the gap. The threshold is ``max(min_threshold, margin * quantile_q)``, the
    expected silence is the median. Terminal codes (delivered, returned) have no threshold.

    Cost: L0 learns every gap. The network levels (L1, L2) see every event of the network and
    converge first, so once a key has ``coarse_full`` gaps it learns one gap in
    ``coarse_every`` (a count-based, value-independent subsample: unbiased, deterministic). An
    L0 node holds references to its L1 and L2 nodes, so ``learn_one`` costs one dict lookup.
    Measured with ``python -c 'from detectors.stall import _bench; _bench()'`` (200 000 gaps
    over 27 510 stage keys; CPU time on the 2-core CI-class VM while other jobs kept both cores
    busy): ``learn_one`` 2.1-2.6 us (3.1 us with ``coarse_every=1``), ``threshold`` 1.8-2.1 us;
    about 1.1 us each when the stage keys fit in the CPU cache. Memory: ~900 bytes per stage
    key in RAM, ~450 bytes pickled (100 000 keys pickle in ~1.2 s: snapshot the detector
    sparingly); there are up to 4 L0 keys per (facility, code, service).

    Limits: P² estimates are cumulative (they do not forget), so incidents the detector must
    find should be a small share of what it learns; and the hour of the day is not part of the
    key, so a parcel reaching a post office at an unusual hour (22:00 instead of the morning
    trucks) may wait overnight past a threshold learned from morning arrivals.

    Parameters
    ----------
    q
        Quantile of the gap that, times ``margin``, gives the threshold.
    margin
        Multiplier on the ``q`` quantile.
    min_threshold
        Floor of the threshold, in seconds.
    min_samples
        Gaps a stage key needs before it is used.
    weekday_buckets
        Bucket id of each weekday, Monday first (7 entries).
    tz_of
        Facility id -> IANA time zone, for facility-local weekdays. ``None``: UTC. Copied:
        a later change to the caller's mapping is not seen.
    holidays
        Dates (``"YYYY-MM-DD"`` or ``datetime.date``) with no delivery: a holiday counts as a
        Sunday and the day before it as a Saturday, so the wait over a holiday is not a stall.
    prior_hours
        Scan code -> (expected, threshold) in hours. ``None``: ``DEFAULT_PRIOR_HOURS``.
    default_prior_hours
        (expected, threshold) in hours for a code without a prior; ``None`` for no prior.
    coarse_full
        Gaps a network-level key learns in full before subsampling.
    coarse_every
        Then one gap in ``coarse_every`` is learned (1 to learn all).
    min_span
        Seconds of event time a stage key must have covered (from its first gap) before it
        is used. Gaps arrive in time order, not shuffled: at national volume a key collects
        thousands of gaps within hours, all from one part of the daily cycle, and its
        quantiles are then far too low. A span of a day and a half makes every key see its
        whole sort cycle first (a Saturday key, the second Saturday).

    Examples
    --------

    A post office delivers ground parcels Monday to Friday. On a weekday a parcel goes out one
    to five hours after arriving; one arriving on Saturday waits until Monday morning.

    >>> import random
    >>> from detectors import StallDetector

    >>> rng = random.Random(42)
    >>> detector = StallDetector(min_samples=20)
    >>> monday = 1732492800  # 2024-11-25T00:00:00Z
    >>> for week in range(6):
    ...     for day in range(7):
    ...         for _ in range(8):
    ...             last_ts = monday + (7 * week + day) * 86400 + rng.randrange(6, 12) * 3600
    ...             if day < 5:
    ...                 gap = rng.uniform(1, 5) * 3600
    ...             else:  # out for delivery on Monday at 08:00
    ...                 gap = monday + (7 * week + 7) * 86400 + 8 * 3600 - last_ts
    ...             detector.learn_one({"facility": "PO-1", "code": "07", "service": "ground",
    ...                                 "last_ts": last_ts, "gap": gap})

    A Tuesday arrival silent for 10 hours is late; a Saturday arrival silent for 40 hours is not.

    >>> tuesday, saturday = monday + 86400 + 9 * 3600, monday + 5 * 86400 + 9 * 3600
    >>> x = {"facility": "PO-1", "code": "07", "service": "ground", "last_ts": tuesday}
    >>> [round(h / 3600, 1) for h in detector.threshold(x)]
    [7.4, 3.0]
    >>> round(detector.score_one(x | {"silence": 10 * 3600}), 2)
    1.35
    >>> x["last_ts"] = saturday
    >>> [round(h / 3600, 1) for h in detector.threshold(x)]
    [75.0, 48.1]
    >>> round(detector.score_one(x | {"silence": 40 * 3600}), 2)
    0.53

    A facility never seen borrows the network's weekday level; an unknown stage uses the prior.

    >>> detector.explain({"facility": "PO-2", "code": "07", "service": "ground",
    ...                   "last_ts": saturday})["level"]
    'L1'
    >>> detector.explain({"facility": "PO-1", "code": "A1", "service": "ground",
    ...                   "last_ts": saturday})
    {'level': 'prior', 'key': 'A1', 'n': 0, 'threshold': 259200.0, 'expected': 43200.0}
    >>> detector.threshold({"facility": "PO-1", "code": "01", "service": "ground",
    ...                     "last_ts": saturday}) is None
    True

    """

    def __init__(
        self,
        q: float = 0.99,
        margin: float = 1.5,
        min_threshold: float = 6 * 3600,
        min_samples: int = 50,
        weekday_buckets: tuple[int, ...] = (0, 0, 0, 0, 1, 2, 3),
        tz_of: Mapping[str, str] | None = None,
        holidays: Collection[str | dt.date] | None = None,
        prior_hours: Mapping[str, tuple[float, float]] | None = None,
        default_prior_hours: tuple[float, float] | None = (24.0, 72.0),
        coarse_full: int = 2000,
        coarse_every: int = 8,
        min_span: float = 0.0,
    ) -> None:
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q!r}")
        if len(weekday_buckets) != 7:
            raise ValueError(f"weekday_buckets needs 7 entries, got {len(weekday_buckets)}")
        if coarse_every < 1:
            raise ValueError(f"coarse_every must be >= 1, got {coarse_every!r}")
        if coarse_full < 1:  # a level counted but holding no gap would be trusted, empty
            raise ValueError(f"coarse_full must be >= 1, got {coarse_full!r}")
        self.q = q
        self.margin = margin
        self.min_threshold = min_threshold
        self.min_samples = min_samples
        self.weekday_buckets = weekday_buckets
        # a copy: the bucket cache reads a facility's zone once (see _remembered_bucket)
        self.tz_of = dict(tz_of) if tz_of is not None else None
        self.holidays = holidays
        self._holidays = frozenset(
            (h if isinstance(h, dt.date) else dt.date.fromisoformat(h)).toordinal()
            for h in holidays or ()
        )
        self._plain_days = tz_of is None and not self._holidays
        self.prior_hours = prior_hours
        self.default_prior_hours = default_prior_hours
        self.coarse_full = coarse_full
        self.coarse_every = coarse_every
        self.min_span = min_span
        priors = DEFAULT_PRIOR_HOURS if prior_hours is None else prior_hours
        self._priors = {code: (e * 3600.0, t * 3600.0) for code, (e, t) in priors.items()}
        self._default_prior = (
            None
            if default_prior_hours is None
            else (default_prior_hours[0] * 3600.0, default_prior_hours[1] * 3600.0)
        )
        self._levels: tuple[dict[Any, _Gaps], ...] = ({}, {}, {})
        # facility -> its time zone's {15-minute UTC slot: weekday bucket}: derived, not
        # pickled (_bucket is ~1 us with a time zone and holidays, and runs twice per scan in
        # the flow; an int-keyed dict per zone costs no tuple per call)
        self._slots_of: dict[str | None, dict[int, int]] = {}
        self._zone_slots: dict[str | None, dict[int, int]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for derived in ("_slots_of", "_zone_slots"):
            state.pop(derived, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = {"min_span": 0.0} | state  # snapshots from before min_span
        self.__dict__.update(state)
        self._slots_of, self._zone_slots = {}, {}

    def _remembered_bucket(self, facility: str | None, ts: float) -> int:
        """:meth:`_bucket`, remembered per time zone and 15-minute UTC slot (exact: local
        dates change on quarter hours, see ``_local_day``). Each facility points at its
        zone's table of slots, so thousands of facilities share a few tables; ``tz_of`` is
        read once per facility (what ``_bucket`` reads: no zone for a facility of None)."""
        slot = int(ts) // 900
        slots = self._slots_of.get(facility)
        if slots is None:
            slots = self._zone_table(facility)
        bucket = slots.get(slot)
        if bucket is None:
            if len(slots) >= _BUCKET_CACHE:
                slots.clear()
            bucket = slots[slot] = self._bucket(facility, ts)
        return bucket

    def _zone_table(self, facility: str | None) -> dict[int, int]:
        tz_of = self.tz_of
        zone = None if tz_of is None or facility is None else tz_of.get(facility)
        slots = self._zone_slots.get(zone)
        if slots is None:
            slots = self._zone_slots[zone] = {}
        if len(self._slots_of) >= _BUCKET_CACHE:  # facility ids come from the data
            self._slots_of.clear()
        self._slots_of[facility] = slots
        return slots

    def _bucket(self, facility: str | None, ts: float) -> int:
        tz_of = self.tz_of
        tz = None if tz_of is None or facility is None else tz_of.get(facility)
        if tz is None:
            day = int(ts) // 86400 + _EPOCH_ORDINAL
        else:
            day = _local_day(tz, int(ts) // 900)
        holidays = self._holidays
        if holidays:
            if day in holidays:
                return self.weekday_buckets[6]  # like a Sunday
            if day + 1 in holidays:
                return self.weekday_buckets[5]  # like a Saturday: nothing moves tomorrow
        return self.weekday_buckets[(day - 1) % 7]  # ordinal 1 (0001-01-01) was a Monday

    def _coarse_keys(self, code: str, service: str | None, bucket: int) -> tuple[Any, ...]:
        return (code, service, bucket), (code, bucket)

    def _new_fine(self, code: str, service: str | None, bucket: int) -> _Gaps:
        parents = []
        for key, table in zip(self._coarse_keys(code, service, bucket), self._levels[1:]):  # noqa: B905
            gaps = table.get(key)
            if gaps is None:
                gaps = table[key] = _Gaps(self.q)
            parents.append(gaps)
        return _Gaps(self.q, tuple(parents))

    def learn_one(self, x: Mapping[str, Any]) -> None:
        """Learn one observed gap: ``x`` has facility, code, service, last_ts, gap (seconds)."""
        code, gap = x["code"], x["gap"]
        if code in TERMINAL_CODES or code in EXCEPTION_CODES or gap < 0:
            return  # (read first: such an x needs no facility or time)
        self.learn_gap(x["facility"], code, x.get("service"), x["last_ts"], gap)

    def learn_gap(
        self, facility: str | None, code: str, service: str | None, last_ts: float, gap: float
    ) -> None:
        """:meth:`learn_one` with the fields as arguments (the flow's hot path: no dict)."""
        if code in TERMINAL_CODES or code in EXCEPTION_CODES or gap < 0:
            return
        if self._plain_days:  # inlined _bucket
            bucket = self.weekday_buckets[(int(last_ts) // 86400 + 3) % 7]
        else:  # _remembered_bucket, its usual case inlined
            slots = self._slots_of.get(facility)
            bucket = None if slots is None else slots.get(int(last_ts) // 900)
            if bucket is None:
                bucket = self._remembered_bucket(facility, last_ts)
        fine = self._levels[0]
        key = (facility, code, service, bucket)
        gaps = fine.get(key)
        if gaps is None:
            gaps = fine[key] = self._new_fine(code, service, bucket)
        gaps.n += 1
        if gaps.n > 1:  # (it learns every gap: its wrappers hold one, see _Gaps)
            gaps.hi_update(gap)
            gaps.mid_update(gap)
        else:
            gaps.since = last_ts
            gaps.hi.update(gap)
            gaps.mid.update(gap)
        full, every = self.coarse_full, self.coarse_every
        for parent in gaps.parents:
            n = parent.n = parent.n + 1
            if n == 1:
                parent.since = last_ts
            if n <= full or n % every == 0:
                if n > 1:  # (its first gap is learned: coarse_full >= 1)
                    parent.hi_update(gap)
                    parent.mid_update(gap)
                else:
                    parent.hi.update(gap)
                    parent.mid.update(gap)

    def _find(self, x: Mapping[str, Any]) -> tuple[int, _Gaps | None, float, float] | None:
        """(level, node, threshold, expected) of the level that applies (3: prior), or None."""
        code = x["code"]
        if code in TERMINAL_CODES:
            return None  # (read first: such an x needs no facility or time)
        return self._find_at(x["facility"], code, x.get("service"), x["last_ts"])

    def _find_at(
        self, facility: str | None, code: str, service: str | None, last_ts: float
    ) -> tuple[int, _Gaps | None, float, float] | None:
        if code in TERMINAL_CODES:
            return None
        if self._plain_days:  # inlined _bucket
            bucket = self.weekday_buckets[(int(last_ts) // 86400 + 3) % 7]
        else:  # _remembered_bucket, its usual case inlined
            slots = self._slots_of.get(facility)
            bucket = None if slots is None else slots.get(int(last_ts) // 900)
            if bucket is None:
                bucket = self._remembered_bucket(facility, last_ts)
        min_samples = self.min_samples
        # a key must have seen min_span of event time (off when 0)
        seen_since = last_ts - self.min_span if self.min_span else _ALWAYS
        level, gaps = 0, self._levels[0].get((facility, code, service, bucket))
        if gaps is None or gaps.n < min_samples or gaps.since > seen_since:
            if gaps is None:  # a facility never seen at this stage: look the network levels up
                keys = self._coarse_keys(code, service, bucket)
                chain = [table.get(key) for key, table in zip(keys, self._levels[1:])]  # noqa: B905
            else:
                chain = list(gaps.parents)
            level, gaps = 3, None
            for i, node in enumerate(chain, 1):
                if node is not None and node.n >= min_samples and node.since <= seen_since:
                    level, gaps = i, node
                    break
        if gaps is not None:
            threshold = self.margin * gaps.hi_get()
            if threshold < self.min_threshold:
                threshold = self.min_threshold
            return level, gaps, threshold, gaps.mid_get()
        prior = self._priors.get(code, self._default_prior)
        if prior is None:
            return None
        threshold = prior[1] if prior[1] > self.min_threshold else self.min_threshold
        return 3, None, threshold, prior[0]

    def threshold(self, x: Mapping[str, Any]) -> tuple[float, float] | None:
        """(threshold, expected) silence in seconds after this scan; None if there is none.

        None for terminal codes, and in warm-up when no level and no prior applies.
        """
        found = self._find(x)
        return None if found is None else (found[2], found[3])

    def threshold_at(
        self, facility: str | None, code: str, service: str | None, last_ts: float
    ) -> tuple[float, float] | None:
        """:meth:`threshold` with the fields as arguments (the flow's hot path: no dict)."""
        found = self._find_at(facility, code, service, last_ts)
        return None if found is None else (found[2], found[3])

    def score_one(self, x: Mapping[str, Any]) -> float:
        """``silence / threshold``: 1.0 or more means stalled; 0.0 when there is no threshold."""
        found = self._find(x)
        return 0.0 if found is None else x["silence"] / found[2]

    def explain(self, x: Mapping[str, Any]) -> dict[str, Any]:
        """Which level gives the threshold: a dict of level (L0, L1, L2, prior or none), key,
        n (gaps learned at that key), threshold and expected."""
        found = self._find(x)
        if found is None:
            return {"level": "none", "key": None, "n": 0, "threshold": None, "expected": None}
        level, gaps, threshold, expected = found
        code, service = x["code"], x.get("service")
        bucket = self._bucket(x["facility"], x["last_ts"])
        keys = ((x["facility"], code, service, bucket), *self._coarse_keys(code, service, bucket))
        return {
            "level": _NAMES[level],
            "key": keys[level] if level < 3 else code,
            "n": 0 if gaps is None else gaps.n,
            "threshold": threshold,
            "expected": expected,
        }

    @property
    def n_stages(self) -> int:
        """Stage keys held, all levels together."""
        return sum(len(table) for table in self._levels)


# --------------------------------------------------------------------------------------------
# Benchmark: python -c 'from detectors.stall import _bench; _bench()'


def _bench(n: int = 200_000, repeat: int = 5) -> None:  # pragma: no cover - manual tool
    import random
    import statistics
    import time

    rng = random.Random(0)
    codes = ("03", "SF", "10", "T1", "TL", "A1", "07", "OF")
    xs = []
    for i in range(n):
        code = rng.choice(codes)
        facility = None if code == "TL" else f"F{rng.randrange(500)}"
        service = rng.choice(("ground", "express"))
        last_ts = 1732492800 + i * 30
        xs.append(
            {
                "facility": facility,
                "code": code,
                "service": service,
                "last_ts": last_ts,
                "gap": rng.expovariate(1 / 20000),
            }
        )
    detector = StallDetector()
    for x in xs:  # warm up: create the keys, pass coarse_full
        detector.learn_one(x)

    def timed(method: Any) -> float:
        runs = []
        for _ in range(repeat):
            start = time.process_time()
            for x in xs:
                method(x)
            runs.append(time.process_time() - start)
        return statistics.median(runs) / n * 1e6

    learn, threshold = timed(detector.learn_one), timed(detector.threshold)
    print(
        f"StallDetector: learn_one {learn:.2f} us/event, threshold {threshold:.2f} us/event "
        f"({detector.n_stages} stage keys, {n} events, median of {repeat}, CPU time)"
    )
