"""Facility statistics in event time, detectors over them, and what kind of incident it is.

Three layers, each usable alone (a notebook needs no flow):

:class:`FacilityStats`
    The per-event accumulator a tracker shard calls: ``arrival``, ``departure``, ``scan`` and
    ``lane_arrival``, or :meth:`FacilityStats.observe`, which applies the rules from a scan
    and the package's previous facility scan. Each call is O(1) with plain ints and strs (a
    set lookup, two dict lookups, a few list increments; no allocation but a window's
    counters once per facility and window). :meth:`FacilityStats.close` turns every event-time
    window that the watermark has passed into one :class:`FacilityWindow` per facility;
    :func:`merge` adds up the windows of several shards (sharded by package, every figure is a
    sum, and shards closed at the same watermarks add up to exactly one shard's figures).
Detectors over one facility's window series, River-style (``learn_one`` / ``score_one``)
    :class:`CohortRetention` (how the packages that arrived at each time of day usually drain
    away; scores the packages held beyond that), :class:`SeasonalBaseline` (a robust z-score
    against the same hour of the week, falling back to the same hour of the day; also a plain
    univariate River detector on any series), :class:`DwellDrift` (Page-Hinkley on a series,
    by default the departures' dwell) and :class:`WindowHST`
    (:class:`river.anomaly.HalfSpaceTrees` on a window's feature vector).
:class:`FacilityMonitor` and :func:`classify`
    Run one detector per facility, add the silence and feed evidence, name the kind of
    incident (slowdown, stop, feed outage, weather over a region, lane) and write the
    evidence sentence. Their :class:`Assessment` objects feed
    :class:`detectors.incidents.IncidentManager`.

Time is integer epoch seconds (UTC) throughout; nothing reads the wall clock. What was
measured on the simulator, and why the defaults are what they are: ``bench/RESULTS.md``,
"Facility detectors".
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import math
from array import array
from bisect import bisect_right, insort
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from river import anomaly, base, drift, preprocessing

__all__ = [
    "AGE_EDGES_HOURS",
    "DETECTORS",
    "DWELL_EDGES_SECONDS",
    "KINDS",
    "Assessment",
    "CohortRetention",
    "DwellDrift",
    "FacilityMonitor",
    "FacilityStats",
    "FacilityWindow",
    "SeasonalBaseline",
    "WindowHST",
    "classify",
    "merge",
]

#: Upper edges (seconds) of the dwell histogram's bins; the last bin is open.
DWELL_EDGES_SECONDS: tuple[int, ...] = tuple(
    int(h * 3600)
    for h in (0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 14, 16, 20, 24, 30, 36, 48, 72, 96)
)
#: Lower edges (hours) of the backlog age classes: [0, 4), [4, 8), ..., [48, inf).
AGE_EDGES_HOURS: tuple[int, ...] = (0, 4, 8, 12, 24, 48)

_ARRIVED = frozenset({"10", "A1", "19", "81", "41", "07", "14"})
_DEPARTED = frozenset({"SF", "EF", "T1", "82", "42"})
_N_DWELL = len(DWELL_EDGES_SECONDS) + 1


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
    dwell_hist: tuple[int, ...] = (0,) * _N_DWELL
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
        return sum(n for w, n in self.cohorts.items() if w * width <= limit)

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


class _Facility:
    """The open windows and the backlog of one facility in one shard."""

    __slots__ = ("backlog", "open", "present", "since")

    def __init__(self, since: int) -> None:
        self.open: dict[int, list[Any]] = {}  # window index -> counters
        self.present: dict[int, int] = {}  # arrival window -> packages still here
        self.backlog = 0
        self.since = since  # first window with an event: windows are emitted from here on

    def __getstate__(self) -> tuple[Any, ...]:
        return self.open, self.present, self.backlog, self.since

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.open, self.present, self.backlog, self.since = state


# counter slots of an open window
_ARR, _DEP, _SCANS, _LATE, _MISSING, _DWELL, _LANES, _IN, _OUT, _HANDOFFS = range(10)


def _counters() -> list[Any]:
    # arrivals, departures, scans, late, handoffs missing, dwell histogram, lanes,
    # arrivals by arrival window, leaves by arrival window (both applied when the window closes)
    return [0, 0, 0, 0, 0, [0] * _N_DWELL, None, {}, None, 0]


class FacilityStats:
    """Per-facility event-time windows, accumulated per event; see the module docstring.

    The tracker calls one method per accepted scan at a facility (``facility`` never None):

    * :meth:`arrival` for arrival codes (``10``, ``A1``, ``07``, ...);
    * :meth:`departure` for departure codes (``SF``, ``T1``, ...), with the dwell when the
      package's arrival at that facility was seen (else ``-1``);
    * :meth:`scan` for any other scan at a facility (volume only);
    * and, when a package shows up at a facility other than the one of its previous facility
      scan, :meth:`lane_arrival` (after ``arrival``): that tells which lane it travelled, and if
      its last scan there was not a departure, that the departure scan is missing
      (``handoffs_missing``: the signature of a feed outage upstream).

    :meth:`observe` applies these rules from ``(facility, code, ts)`` and the package's
    previous facility scan ``(prev_facility, prev_code, prev_ts)``.

    What a tracker shard does, per event and per batch:

    * an in-order scan of a known package at a facility: ``observe(facility, code, ts,
      prev_facility, prev_code, prev_ts)``, where ``prev_*`` is the package's last scan *at a
      facility* (an in-transit ``TL`` scan has none: keep the last facility scan, else the
      lane from a plant to a far NDC, the one a ``lane_delay`` hits, is lost); its first
      scan: ``observe(facility, code, ts)``;
    * a scan older than the package's last one (out of order: typically hours late):
      ``scan(facility, ts)`` -- the order of the package's scans is unknown, but the
      facility did scan, and late scans are the evidence of a feed outage;
    * a duplicate, a scan without a facility, or a package never seen: nothing;
    * whenever the shard's watermark moves: ``close(watermark)``, and send the windows on to
      one place that merges them per (facility, window) and runs
      :class:`FacilityMonitor`.

    Every figure of a window depends only on the events inside it (and, for the backlog, before
    it): the backlog moves when a window closes, not when an event is seen, so the figures do
    not depend on how far the feed has run ahead of the watermark, and shards closed at the
    same watermarks add up to exactly what one shard would have counted (:func:`merge`).
    A scan whose window is already closed counts as ``late_scans`` of the facility's oldest
    open window (and still moves the backlog there): scans arriving hours late are a feed
    problem's signature, so they are kept, not dropped.

    Parameters
    ----------
    window_seconds
        Width of a window (event time).
    facilities
        Facilities to keep figures for (e.g. the plants and NDCs); None: every facility seen.
        Calls for other facilities return at once.
    max_age_seconds
        A package in a backlog for this long is dropped from it (lost, or its departure and
        every later scan were missed); they are counted in ``expired``.

    Examples
    --------
    >>> from detectors.facility import FacilityStats
    >>> t0 = 1_790_000_100 - 1_790_000_100 % 900  # a window boundary
    >>> stats = FacilityStats(window_seconds=900)
    >>> stats.arrival("P1", t0 + 60)
    >>> stats.arrival("P1", t0 + 120)
    >>> stats.departure("P1", t0 + 1000, dwell_seconds=940)
    >>> stats.lane_arrival("P1", "N2", t0 + 1700, from_ts=t0 + 120, departed=False)
    >>> [(w.start - t0, w.arrivals, w.departures, w.backlog) for w in stats.close(t0 + 900)]
    [(0, 2, 0, 2)]
    >>> [(w.departures, w.handoffs_missing, w.backlog) for w in stats.close(t0 + 1800)]
    [(1, 1, 0)]
    """

    def __init__(
        self,
        window_seconds: int = 900,
        *,
        facilities: Iterable[str] | None = None,
        max_age_seconds: int = 7 * 86400,
    ) -> None:
        self.window_seconds = window_seconds
        self.facilities = None if facilities is None else frozenset(facilities)
        self.max_age_seconds = max_age_seconds
        self._state: dict[str, _Facility] = {}
        self._closed = -1  # windows with index <= this are closed
        self.expired = 0

    # -- per event -------------------------------------------------------------------------
    def _window(
        self, facility: str, ts: int, count_late: bool = True
    ) -> tuple[list[Any], bool] | None:
        keep = self.facilities
        if keep is not None and facility not in keep:
            return None
        w = ts // self.window_seconds
        late = w <= self._closed
        if late:
            w = self._closed + 1
        state = self._state.get(facility)
        if state is None:
            state = self._state[facility] = _Facility(w)
        elif w < state.since:
            state.since = w
        counters = state.open.get(w)
        if counters is None:
            counters = state.open[w] = _counters()
        if late and count_late:
            counters[_LATE] += 1
        return counters, late

    def arrival(self, facility: str, ts: int) -> None:
        """A package arrived (its arrival scan was seen)."""
        found = self._window(facility, ts)
        if found is None:
            return
        counters, late = found
        if not late:
            counters[_ARR] += 1
            counters[_SCANS] += 1
        arrived = counters[_IN]
        w = ts // self.window_seconds
        arrived[w] = arrived.get(w, 0) + 1

    def departure(self, facility: str, ts: int, dwell_seconds: int = -1) -> None:
        """A package departed; ``dwell_seconds`` since its arrival scan here, -1 if unseen."""
        found = self._window(facility, ts)
        if found is None:
            return
        counters, late = found
        if not late:
            counters[_DEP] += 1
            counters[_SCANS] += 1
        if dwell_seconds >= 0:
            if not late:
                counters[_DWELL][bisect_right(DWELL_EDGES_SECONDS, dwell_seconds)] += 1
            _leave(counters, (ts - dwell_seconds) // self.window_seconds)

    def scan(self, facility: str, ts: int) -> None:
        """Any other scan at the facility (counts towards its volume)."""
        found = self._window(facility, ts)
        if found is not None and not found[1]:
            found[0][_SCANS] += 1

    def lane_arrival(
        self,
        from_facility: str,
        to_facility: str,
        ts: int,
        from_ts: int,
        departed: bool = True,
        arrived: bool = True,
    ) -> None:
        """A package last scanned at ``from_facility`` at ``from_ts`` reached ``to_facility``.

        ``departed``: that last scan was a departure. If not, the departure scan is missing:
        the package counts in ``handoffs_missing`` of ``from_facility`` and leaves its backlog.
        The lane figures go to ``from_facility``'s window of ``ts`` (lanes to facilities
        outside ``facilities`` are not kept). ``arrived``: the scan at ``to_facility`` is its
        arrival scan; if not (the arrival scan was dropped, the first scan there is a later
        one), the handoff counts but the transit is unknown and goes into no lane figure.
        """
        found = self._window(from_facility, ts, count_late=False)  # the scan is to_facility's
        if found is None:
            return
        counters, late = found
        if departed:
            if late:
                return
            counters[_HANDOFFS] += 1
            keep = self.facilities
            if not arrived or (keep is not None and to_facility not in keep):
                return
            lanes = counters[_LANES]
            if lanes is None:
                lanes = counters[_LANES] = {}
            transit = ts - from_ts
            lane = lanes.get(to_facility)
            if lane is None:
                lanes[to_facility] = [1, transit, transit]
            else:
                lane[0] += 1
                lane[1] += transit
                if transit > lane[2]:
                    lane[2] = transit
        else:
            if not late:
                counters[_MISSING] += 1
            _leave(counters, from_ts // self.window_seconds)

    def observe(
        self,
        facility: str | None,
        code: str,
        ts: int,
        prev_facility: str | None = None,
        prev_code: str | None = None,
        prev_ts: int = -1,
    ) -> None:
        """Apply the rules of the class docstring to one in-order scan of a package.

        ``prev_*`` describe the package's previous scan *at a facility* (in-transit scans
        without a facility, ``TL``, are skipped: keep the last facility scan per package), or
        None for its first scan.
        """
        if facility is None:
            return
        if code in _ARRIVED:
            self.arrival(facility, ts)
        elif code in _DEPARTED:
            same = prev_facility == facility and prev_code in _ARRIVED
            self.departure(facility, ts, ts - prev_ts if same else -1)
        else:
            self.scan(facility, ts)
        if prev_facility is not None and prev_facility != facility:
            departed = prev_code in _DEPARTED
            if departed or prev_code in _ARRIVED:
                self.lane_arrival(prev_facility, facility, ts, prev_ts, departed, code in _ARRIVED)

    # -- time ------------------------------------------------------------------------------
    def close(self, upto_ts: int) -> list[FacilityWindow]:
        """Close every window ending at or before ``upto_ts`` (the watermark).

        Returns one :class:`FacilityWindow` per facility and closed window, from the window of
        the facility's first event on, in window order then facility order, empty windows
        included (a silent facility is news).
        """
        through = upto_ts // self.window_seconds - 1
        if through <= self._closed:
            return []
        first = self._closed + 1
        if self._closed < 0:  # first close: start at the earliest window with an event
            first = min((s.since for s in self._state.values()), default=through)
        out: list[FacilityWindow] = []
        width = self.window_seconds
        max_age = self.max_age_seconds // width
        names = sorted(self._state)
        for w in range(first, through + 1):
            end = (w + 1) * width
            for name in names:
                state = self._state[name]
                if w < state.since:
                    continue
                c = state.open.pop(w, None)
                present = state.present
                if c is not None:
                    for arrived, n in c[_IN].items():
                        present[arrived] = present.get(arrived, 0) + n
                    state.backlog += sum(c[_IN].values())
                    if c[_OUT]:
                        for arrived, n in c[_OUT].items():
                            here = present.get(arrived, 0)
                            gone = min(here, n)  # else: arrival unseen, or already expired
                            if gone == here and here:
                                del present[arrived]
                            elif gone:
                                present[arrived] = here - gone
                            state.backlog -= gone
                if present and min(present) <= w - max_age:
                    for arrived in [a for a in present if a <= w - max_age]:
                        n = present.pop(arrived)
                        state.backlog -= n
                        self.expired += n
                window = FacilityWindow(
                    name, w * width, end, backlog=state.backlog, cohorts=dict(present)
                )
                if c is not None:
                    window.arrivals, window.departures, window.scans = c[0], c[1], c[2]
                    window.late_scans, window.handoffs_missing = c[3], c[4]
                    window.handoffs = c[_HANDOFFS]
                    window.dwell_hist = tuple(c[_DWELL])
                    if c[_LANES]:
                        window.lanes = {k: (v[0], v[1], v[2]) for k, v in c[_LANES].items()}
                out.append(window)
        self._closed = through
        return out

    @property
    def closed_through(self) -> int:
        """End (epoch seconds) of the last closed window; events before it count as late."""
        return (self._closed + 1) * self.window_seconds


def _leave(counters: list[Any], arrived: int) -> None:
    out = counters[_OUT]
    if out is None:
        out = counters[_OUT] = {}
    out[arrived] = out.get(arrived, 0) + 1


def merge(windows: Iterable[FacilityWindow]) -> list[FacilityWindow]:
    """Add up the windows of several shards: one window per (facility, start), in order.

    Every figure is a sum (shards hold disjoint packages), the longest lane transit a max.

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
    return [merged[k] for k in sorted(merged)]


# ---------------------------------------------------------------------------------------------
# Detectors over one facility's window series


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
        self._recent: collections.deque = collections.deque(maxlen=window)
        self._keys_of: Any = None  # the last time seen by _keys, and its keys
        self._last_keys: list[int] | None = None

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

    def _values(self, x: Mapping[str, Any]) -> Iterable[float] | None:
        keys = self._keys(x)
        if keys is not None:
            window, minimum = self.window, self.min_samples
            for ring, seen, key in zip(self._rings, self._seen, keys, strict=True):
                if seen is None:
                    continue
                n = seen[key]
                if min(n, window) >= minimum:
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
        for level, key in enumerate(keys):
            seen = self._seen[level]
            if seen is None:
                buckets = self.seasons[level][1]
                self._rings[level] = array("d", bytes(8 * buckets * window))
                seen = self._seen[level] = array("q", bytes(8 * buckets))
            n = seen[key]
            self._rings[level][key * window + n % window] = value  # type: ignore[index]
            seen[key] = n + 1


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class DwellDrift(base.AnomalyDetector):
    """Page-Hinkley drift statistic of a series (by default a facility's dwell), as a score.

    Wraps :class:`river.drift.PageHinkley`: ``learn_one`` feeds the value, ``score_one`` is the
    Page-Hinkley statistic that the value *would* give, divided by ``threshold`` (so 1.0 or
    more means a drift), without changing the state. The statistic measures how far the
    cumulative deviation from the running mean has climbed above its minimum (``mode="up"``)
    or fallen below its maximum (``"down"``); a detected drift resets the detector, as in River.
    Values that are None (a window without departures) are skipped. In warm-up (fewer than
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
        if value is None or ph.drift_detected or ph._x_mean.n + 1 < self.min_instances:
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
        if value is not None:
            self._ph.update(value)


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


# ---------------------------------------------------------------------------------------------
# What kind of incident, and the per-facility monitor

#: Incident kinds (``docs/schemas.md``); ``feed_outage`` is a data problem, not a delay.
KINDS = ("facility_slowdown", "facility_stop", "weather", "lane_delay", "feed_outage")
DETECTORS = ("retention", "seasonal", "drift", "hst")


def classify(
    *,
    delay: float,
    silence: float,
    feed: float,
    stop_silence: float = 0.0,
    stopped_hours: float = 0.0,
    burst: int = 0,
    backlog: int = 0,
    min_silence_hours: float = 3.0,
    min_burst: int = 6,
    min_backlog: int = 10,
) -> tuple[str | None, float]:
    """The kind of incident a facility is in, from its scores in one window, and the score.

    Scores are normalised: 1.0 or more is anomalous. ``delay``: packages held that should
    have left by now; ``silence``: arrivals missing that usually come at this hour; ``feed``:
    scans arriving hours late, or packages reaching the next facility without a departure
    scan from this one. ``stopped_hours`` is the length of a silence (no scan at all) that
    ended within the last hour, ``stop_silence`` the highest silence score during it and
    ``burst`` the arrivals scanned since it ended.

    * ``feed >= 1``: ``feed_outage``, whatever else is seen: the data are missing, so the
      other figures cannot be trusted, and customers must not be told.
    * A silence of ``min_silence_hours`` or more that was anomalous (``stop_silence >= 1``)
      and has ended with a burst of at least ``min_burst`` fresh arrival scans (the inflow
      held during the stop, scanned at once), no feed evidence and ``min_backlog`` packages
      or more held: ``facility_stop``. A stop and a feed outage look the same while they last
      (no scans at all); they part only when the facility speaks again: a stop resumes with
      fresh scans, an outage with a burst of old ones (or, earlier, with packages surfacing
      downstream without a departure scan). So a stop is confirmed at its end, never during
      it.
    * ``delay >= 1`` while arrivals come in as usual (``silence < 1``): packages pile up and
      do not leave: ``facility_slowdown``. (Missing departures *and* missing arrivals are a
      stop or a feed outage, still undecided: no kind yet.)
    * Otherwise None, with the highest score that is still evidence of trouble, so that the
      incident lifecycle sees it build up.

    Weather (several facilities of a region at once) and lanes are decided by
    :class:`FacilityMonitor`, which sees more than one facility.

    >>> classify(delay=1.3, silence=1.4, feed=0.0)
    (None, 1.4)
    >>> classify(delay=0.2, silence=0.0, feed=0.0, stop_silence=1.4, stopped_hours=4.0,
    ...          burst=9, backlog=30)
    ('facility_stop', 1.4)
    >>> classify(delay=0.2, silence=0.0, feed=2.0, stop_silence=1.4, stopped_hours=4.0,
    ...          burst=9, backlog=30)
    ('feed_outage', 2.0)
    >>> classify(delay=1.7, silence=0.0, feed=0.0)
    ('facility_slowdown', 1.7)
    """
    if feed >= 1.0:
        return "feed_outage", feed
    if (
        stopped_hours >= min_silence_hours
        and stop_silence >= 1.0
        and burst >= min_burst
        and backlog >= min_backlog
    ):
        return "facility_stop", stop_silence
    if delay >= 1.0 and silence < 1.0:
        return "facility_slowdown", delay
    return None, max(silence, delay, stop_silence if stopped_hours else 0.0)


@dataclass(frozen=True, slots=True)
class Assessment:
    """What :class:`FacilityMonitor` says about one subject (facility, lane or region) at the
    end of one window: the input of :meth:`detectors.incidents.IncidentManager.update`."""

    facility: str
    window_end: int
    score: float
    kind: str | None
    evidence: str
    affected: int
    lane_to: str | None = None
    facilities: tuple[str, ...] = ()


_SETTERS = tuple(getattr(Assessment, f.name).__set__ for f in dataclasses.fields(Assessment))


def _lane_assessment(
    facility: str,
    window_end: int,
    score: float,
    kind: str | None,
    evidence: str,
    affected: int,
    lane_to: str,
    _new: Any = object.__new__,
    _set: tuple[Any, ...] = _SETTERS,
) -> Assessment:
    """``Assessment(facility, ..., lane_to)`` without the frozen dataclass's field-by-field
    ``object.__setattr__`` (a third less time; one is made per lane and window): the same
    object, its slots set through their descriptors."""
    a = _new(Assessment)
    _set[0](a, facility)
    _set[1](a, window_end)
    _set[2](a, score)
    _set[3](a, kind)
    _set[4](a, evidence)
    _set[5](a, affected)
    _set[6](a, lane_to)
    _set[7](a, ())
    return a


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
        self._table = array("q", bytes(8 * 3 * self._span * sum(self._levels)))
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
        known = initial
        if learn:
            for arrived, n in cohorts.items():
                if 0 <= now - arrived < horizon:
                    found = initial.get(arrived)
                    if found is None:
                        initial[arrived] = self._cells(arrived, n)
                    elif n > found[0]:
                        found[0] = n
        else:  # score only: see the new cohorts without keeping them
            known = dict(initial)
            for arrived, n in cohorts.items():
                if 0 <= now - arrived < horizon:
                    found = known.get(arrived)
                    if found is None:
                        known[arrived] = self._cells(arrived, n)
                    elif n > found[0]:
                        known[arrived] = [n, found[1], found[2]]
        t = self._table
        get = cohorts.get
        held = expected = variance = 0.0
        gone = None
        for arrived, (n0, i0, i1) in known.items():
            age = now - arrived
            if not 0 <= age < horizon:
                if age >= horizon:
                    if gone is None:
                        gone = []
                    gone.append(arrived)
                continue
            n = get(arrived, 0)
            age *= 3
            i0 += age
            i1 += age
            if score:
                if t[i0 + 2] >= minimum:
                    share = t[i0] / t[i0 + 1]
                elif t[i1 + 2] >= minimum:
                    share = t[i1] / t[i1 + 1]
                else:
                    share = -1.0
                if share >= 0.0:
                    held += n
                    part = n0 * share
                    expected += part
                    variance += part * (1.0 - share)
            if learn:
                t[i0] += n
                t[i0 + 1] += n0
                t[i0 + 2] += 1
                t[i1] += n
                t[i1 + 1] += n0
                t[i1 + 2] += 1
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
        """:meth:`expected_one` then :meth:`learn_one` in one pass (half the cost)."""
        return self._pass(x, score=True, learn=True)


class _Track:
    """One facility's rolling sums and detectors inside :class:`FacilityMonitor`."""

    def __init__(self, monitor: FacilityMonitor, facility: str) -> None:
        tz = None if monitor.tz_of is None else monitor.tz_of.get(facility)
        self.n = monitor.rolling_windows
        self.recent: collections.deque = collections.deque()  # (scans, arr, dep, late, missing)
        self.sums = [0, 0, 0, 0, 0, 0]
        self.dwell: collections.deque = collections.deque()
        self.dwell_sum = [0] * _N_DWELL
        self.day: collections.deque = collections.deque()  # scans per window, last day
        self.week: collections.deque = collections.deque()  # scans per window, last week
        self.day_sum = self.week_sum = 0
        self.last_scan_end: int | None = None
        self.silence_peak = 0.0
        self.missed = 0.0
        self.surprise = 0.0  # -log P(no arrival in every window since the last one)
        self.last_arrival_end: int | None = None
        self.delay_now = 0.0
        self.resume: list[Any] | None = None
        counts = {
            "side": "high",
            "min_scale": monitor.min_scale,
            "rel_scale": 0.15,
            "tz": tz,
            "window": monitor.baseline_window,
            "min_samples": monitor.min_samples,
        }
        self.arrivals_now = SeasonalBaseline(
            "arrivals", window=monitor.baseline_window, min_samples=monitor.min_samples, tz=tz
        )
        self.busy_now = SeasonalBaseline(  # share of windows with an arrival, at this hour
            "busy", window=monitor.baseline_window, min_samples=monitor.min_samples, tz=tz
        )
        self.arrivals = SeasonalBaseline(
            "arrivals",
            side="low",
            min_scale=monitor.min_scale,
            tz=tz,
            window=monitor.baseline_window,
            min_samples=monitor.min_samples,
            rel_scale=0.15,
        )
        self.retention = CohortRetention(
            monitor.window_seconds,
            int(monitor.horizon_hours * 3600) // monitor.window_seconds,
            monitor.min_cohorts,
            tz,
        )
        self.x: dict[str, Any] = {}
        self.delay: dict[str, Any] = {}
        if monitor.detector == "seasonal":
            self.delay = {k: SeasonalBaseline(k, **counts) for k in ("backlog", "o12")}
        elif monitor.detector == "drift":
            self.delay = {
                "dwell": DwellDrift(
                    "dwell",
                    mode="up",
                    min_instances=24,
                    delta=monitor.drift_delta,
                    threshold=monitor.drift_threshold,
                )
            }
        elif monitor.detector == "hst":
            self.delay = {
                "hst": WindowHST(
                    features=(
                        "held",
                        "expected",
                        "excess",
                        "backlog",
                        "scans",
                        "arrivals",
                        "departures",
                        "dwell_or_0",
                    ),
                    time_key="ts",
                    n_trees=monitor.hst_trees,
                    height=monitor.hst_height,
                    window_size=monitor.hst_window,
                    warm_up=monitor.hst_window,
                    seed=monitor.seed + _stable_hash(facility),
                )
            }

    def roll(self, window: FacilityWindow) -> tuple[int, ...]:
        """Add a window to the rolling sums: (scans, arrivals, departures) over the last
        ``rolling_windows`` windows, (late scans, missing handoffs, handoffs) over the last 4."""
        row = (
            window.scans,
            window.arrivals,
            window.departures,
            window.late_scans,
            window.handoffs_missing,
            window.handoffs,
        )
        recent, sums = self.recent, self.sums
        recent.append(row)
        for i, v in enumerate(row):
            sums[i] += v
        if len(recent) > self.n:
            old = recent.popleft()
            for i in range(3):
                sums[i] -= old[i]
        if len(recent) > 4:
            old = recent[-5]
            sums[3] -= old[3]
            sums[4] -= old[4]
            sums[5] -= old[5]
        self.dwell.append(window.dwell_hist)
        self.dwell_sum = [a + b for a, b in zip(self.dwell_sum, window.dwell_hist, strict=True)]
        if len(self.dwell) > 2 * self.n:
            old_hist = self.dwell.popleft()
            self.dwell_sum = [a - b for a, b in zip(self.dwell_sum, old_hist, strict=True)]
        self.day.append(window.scans)
        self.week.append(window.scans)
        self.day_sum += window.scans
        self.week_sum += window.scans
        if len(self.day) > 96:
            self.day_sum -= self.day.popleft()
        if len(self.week) > 7 * 96:
            self.week_sum -= self.week.popleft()
        return tuple(sums)


def _stable_hash(text: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(text)) % 10_000


class FacilityMonitor:
    """Scores each facility's windows, names the kind of incident, groups regions and lanes.

    Feed it the merged windows of each closed window time, in order, with :meth:`assess`; it
    returns one :class:`Assessment` per facility, per region (kind ``weather``, score 0 when
    nothing is going on, so that an incident can resolve) and per lane with recent traffic,
    which :class:`detectors.incidents.IncidentManager` turns into incidents.

    Per facility and window:

    * ``delay`` (packages held that should have left), by the chosen ``detector``:
      ``"retention"`` (default) is :class:`CohortRetention`'s excess z-score over
      ``retention_open``; ``"seasonal"`` the largest :class:`SeasonalBaseline` robust z-score
      of the backlog and of the packages waiting 12 h or more, against the same hour of the
      week (else of the day), over ``seasonal_open``; ``"drift"`` :class:`DwellDrift` (Page-Hinkley)
      on the p90 dwell of the departures of the last ``2 * rolling_windows`` windows; ``"hst"``
      :class:`WindowHST` on the window's feature vector, over ``hst_open``;
    * ``silence`` (all detectors): arrivals missed since the last one, against the mean
      arrivals at this hour, over ``silence_arrivals``, or the hours since the last arrival
      over ``alive_hours``, whichever is larger (:meth:`_missed`); and, for stops, the
      low-side robust z of the arrivals of the last ``rolling_windows`` windows, or the
      surprise of the windows without an arrival since the last one, ``-log`` of the
      chance that each was empty (the share of windows with an arrival at that hour, capped
      at ``stop_busy_cap``), over ``stop_surprise`` (after ``stop_warm_up_windows``
      windows of history: a quiet afternoon that stays silent is as telling as an evening
      peak), held at its peak while the facility sends no scan at
      all; a stop is called when the facility then resumes with ``stop_min_burst`` fresh
      arrivals beyond ``stop_burst_ratio`` times the usual within ``stop_resume_windows``
      windows, and at least ``stop_burst_share`` of the arrivals usually seen during the
      silence (the held inflow comes back at once);
    * ``feed``: late scans (whose window had closed) over the last hour, against
      ``feed_late`` or ``feed_share`` of the scans of the last ``rolling_windows`` windows,
      whichever is larger; and packages seen downstream without a departure scan from here
      over the last hour, against ``feed_missing`` or ``feed_missing_share`` of all the
      packages seen downstream from here in that hour (normally ~3 % lack the departure scan,
      in an outage nearly all do);
    * the kind by :func:`classify`. Facilities of one region (``regions``) whose delays (a
      delay score of 1 or more, or a stop) began within ``weather_hours`` of each other and
      are still going on, ``weather_min`` of them or more, become one ``weather`` assessment
      for the region, under the region's first
      facility id, scored with the ``weather_min``-th highest delay; their own assessments
      then carry no kind (one incident, one explanation), except a stop or a feed outage,
      which keep their own. A lane (A to B) is ``lane_delay``
      when, over the last 6 h, ``lane_min`` packages or more and ``lane_share`` of its
      arrivals took ``lane_margin_hours`` longer than the lane's median transit.

    Every window is learned, after it is scored.

    Parameters
    ----------
    detector
        One of :data:`DETECTORS`.
    regions
        Facility id -> region (for weather); None: no weather grouping.
    tz_of
        Facility id -> IANA time zone (local hours and weekdays for the seasons).
    names
        Facility id -> name, for the evidence sentences.
    window_seconds
        Width of the windows fed in.
    (the other parameters are the thresholds named above)

    Examples
    --------
    >>> from detectors.facility import FacilityMonitor, FacilityWindow
    >>> monitor = FacilityMonitor(regions={"P1": "east"})
    >>> [(a.facility, a.kind, a.score) for a in monitor.assess([FacilityWindow("P1", 0, 900)])]
    [('P1', None, 0.0), ('P1', 'weather', 0.0)]
    """

    def __init__(
        self,
        detector: str = "retention",
        *,
        regions: Mapping[str, str] | None = None,
        tz_of: Mapping[str, str] | None = None,
        names: Mapping[str, str] | None = None,
        window_seconds: int = 900,
        rolling_windows: int = 12,
        horizon_hours: float = 48.0,
        min_cohorts: int = 3,
        z_open: float = 4.0,
        retention_open: float = 5.0,
        seasonal_open: float = 20.0,
        min_scale: float = 2.0,
        baseline_window: int = 32,
        min_samples: int = 4,
        min_silence_hours: float = 4.0,
        silence_arrivals: float = 3.0,
        alive_hours: float = 1.0,
        stop_min_backlog: int = 10,
        stop_min_burst: int = 6,
        stop_burst_ratio: float = 1.5,
        stop_surprise: float = 5.5,
        stop_resume_windows: int = 8,
        stop_busy_cap: float = 0.9,
        stop_burst_share: float = 0.5,
        stop_warm_up_windows: int = 192,
        feed_late: int = 7,
        feed_missing: int = 8,
        feed_share: float = 0.1,
        feed_missing_share: float = 0.25,
        weather_hours: float = 3.0,
        weather_min: int = 2,
        lane_margin_hours: float = 20.0,
        lane_min: int = 4,
        lane_share: float = 0.3,
        lane_hours: float = 12.0,
        drift_delta: float = 1.0,
        drift_threshold: float = 100.0,
        hst_open: float = 0.965,
        hst_trees: int = 25,
        hst_height: int = 6,
        hst_window: int = 192,
        seed: int = 0,
    ) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
        self.detector = detector
        self.regions = dict(regions or {})
        self.tz_of = dict(tz_of) if tz_of is not None else None
        self.names = dict(names or {})
        self.window_seconds = window_seconds
        self.rolling_windows = rolling_windows
        self.horizon_hours = horizon_hours
        self.min_cohorts = min_cohorts
        self.z_open = z_open
        self.retention_open = retention_open
        self.seasonal_open = seasonal_open
        self.min_scale = min_scale
        self.baseline_window = baseline_window
        self.min_samples = min_samples
        self.min_silence_hours = min_silence_hours
        self.silence_arrivals = silence_arrivals
        self.alive_hours = alive_hours
        self.stop_min_backlog = stop_min_backlog
        self.stop_min_burst = stop_min_burst
        self.stop_burst_ratio = stop_burst_ratio
        self.stop_surprise = stop_surprise
        self.stop_resume_windows = stop_resume_windows
        self.stop_busy_cap = stop_busy_cap
        self.stop_burst_share = stop_burst_share
        self.stop_warm_up_windows = stop_warm_up_windows
        self.feed_late = feed_late
        self.feed_share = feed_share
        self.feed_missing_share = feed_missing_share
        self.feed_missing = feed_missing
        self.weather_hours = weather_hours
        self.weather_min = weather_min
        self.lane_margin_hours = lane_margin_hours
        self.lane_min = lane_min
        self.lane_share = lane_share
        self.lane_hours = lane_hours
        self.drift_delta = drift_delta
        self.drift_threshold = drift_threshold
        self.hst_open = hst_open
        self.hst_trees = hst_trees
        self.hst_height = hst_height
        self.hst_window = hst_window
        self.seed = seed
        self._tracks: dict[str, _Track] = {}
        # origin -> receiving facility -> its transit baseline and recent arrivals
        self._lanes: dict[str, _Lanes] = {}
        self._delayed: dict[str, int] = {}  # facility -> last window end with a delay
        self._started: dict[str, int] = {}  # facility -> start of its current delay episode
        self._first: dict[str, str] = {}  # region -> its first facility id

    def _name(self, facility: str) -> str:
        return self.names.get(facility, facility)

    def assess(self, windows: Iterable[FacilityWindow]) -> list[Assessment]:
        """Assess the windows of one window time (one per facility, merged over shards)."""
        out: list[Assessment] = []
        end = None
        delays: dict[str, float] = {}
        for window in windows:
            end = window.end
            found = self._assess_facility(window)
            out.append(found)
            delay = self._tracks[window.facility].delay_now
            if found.kind != "feed_outage" and (delay >= 1.0 or found.kind == "facility_stop"):
                last = self._delayed.get(window.facility)
                if last is None or last <= window.end - self.weather_hours * 3600:
                    self._started[window.facility] = window.end  # a new delay episode
                self._delayed[window.facility] = window.end
            delays[window.facility] = max(delay, found.score if found.kind else 0.0)
            out.extend(self._assess_lanes(window))
        if end is None or not self.regions:
            return out
        return self._weather(out, end, delays)

    def _weather(
        self, out: list[Assessment], end: int, delays: dict[str, float]
    ) -> list[Assessment]:
        """Facilities of one region delayed within ``weather_hours`` of each other: one
        ``weather`` assessment for the region; their own assessments lose their kind.

        A facility counts when its delay score reached 1 (even while its arrivals are too
        quiet to call it a slowdown on its own: two facilities of a region losing their feed
        at once is far less likely than weather) or it is in a stop; a feed outage never.
        """
        span = self.weather_hours * 3600
        by_region: dict[str, list[str]] = {}
        for facility, region in self.regions.items():
            if facility not in self._tracks:
                continue
            members = by_region.setdefault(region, [])
            last = self._delayed.get(facility)
            if last is not None and last > end - span:
                members.append(facility)
        started = self._started
        for region, members in by_region.items():  # keep the largest group that began at once
            best: list[str] = []
            for m in sorted(members):
                group = [n for n in members if abs(started[n] - started[m]) <= span]
                if len(group) > len(best):
                    best = group
            by_region[region] = best
        grouped = []
        folded: set[str] = set()
        for region, members in sorted(by_region.items()):
            first = self._first.get(region)
            if first is None:
                first = self._first[region] = min(f for f, r in self.regions.items() if r == region)
            if len(members) < self.weather_min:
                grouped.append(
                    Assessment(
                        first, end, 0.0, "weather", f"Region {region}: no region-wide delay.", 0
                    )
                )
                continue
            names = tuple(sorted(members))
            score = sorted((delays.get(m, 0.0) for m in names), reverse=True)[self.weather_min - 1]
            backlog = {a.facility: a.affected for a in out if a.lane_to is None}
            evidence = (
                f"{len(names)} facilities of region {region} are delayed at once "
                f"(weather or another regional cause): "
                + "; ".join(self._name(n) for n in names)
                + "."
            )
            grouped.append(
                Assessment(
                    first,
                    end,
                    round(score, 3),
                    "weather",
                    evidence,
                    sum(backlog.get(n, 0) for n in names),
                    None,
                    names,
                )
            )
            folded.update(names)
        out = [  # a stop (confirmed by its resume burst) and a feed outage keep their kind
            _fold(a)
            if a.facility in folded
            and a.lane_to is None
            and a.kind not in ("feed_outage", "facility_stop")
            else a
            for a in out
        ]
        return out + grouped

    def _assess_facility(self, window: FacilityWindow) -> Assessment:
        track = self._tracks.get(window.facility)
        if track is None:
            track = self._tracks[window.facility] = _Track(self, window.facility)
        scans, arrivals, departures, late, missing, handed = track.roll(window)
        dwell = _hist_quantile(track.dwell_sum, 0.9)
        held, expected, variance = track.retention.update_one(
            {"ts": window.start, "cohorts": window.cohorts}
        )
        x = {
            "ts": window.start,
            "scans": scans,
            "arrivals": arrivals,
            "departures": departures,
            "backlog": window.backlog,
            "held": held,
            "expected": expected,
            "excess": held - expected,
            "excess_z": (held - expected) / math.sqrt(variance + 1.0),
            "dwell": None if dwell is None else dwell / 3600,
            "dwell_or_0": 0.0 if dwell is None else dwell / 3600,
            "o12": window.overdue(12),
        }
        held_in = track.missed  # arrivals usually seen since the last one (before this window)
        missed = self._missed(track, window, x)
        silence = self._silence(track, x)
        if window.scans:
            if track.last_scan_end is not None and window.start > track.last_scan_end:
                gap = (window.start - track.last_scan_end) / 3600
                if gap >= self.min_silence_hours and track.silence_peak >= 1.0:
                    # windows left, silent hours, silence peak, arrivals since, usual arrivals,
                    # arrivals usually seen during the silence
                    track.resume = [
                        self.stop_resume_windows,
                        gap,
                        track.silence_peak,
                        0,
                        0.0,
                        held_in,
                    ]
            track.last_scan_end = window.end
            track.silence_peak = 0.0
        else:
            # how unusual the silence is: the arrivals of the last hours against the same
            # hours, or (once the facility has been watched for ``stop_warm_up_windows``) how
            # unlikely so many windows without an arrival are at these hours, over
            # ``stop_surprise`` (arrivals come in batches, a truck at a time: windows with an
            # arrival are counted, not packages, so the test does not depend on the volume)
            track.silence_peak = max(track.silence_peak, silence)
            if len(track.week) >= self.stop_warm_up_windows:
                track.silence_peak = max(track.silence_peak, track.surprise / self.stop_surprise)
        stopped_hours, burst, stop_silence = 0.0, 0, 0.0
        if track.resume is not None:
            resume = track.resume
            resume[0] -= 1
            resume[3] += window.arrivals
            resume[4] += self._level(track) * (track.arrivals_now.mean(x) or 0.0)
            stopped_hours, stop_silence = resume[1], resume[2]
            # the inflow held during the stop, scanned at once: fresh arrivals beyond the usual,
            # at least ``stop_burst_share`` of those missed during the silence (a feed outage
            # resumes with old scans instead: late scans)
            burst = int(resume[3] - self.stop_burst_ratio * resume[4])
            if burst < self.stop_burst_share * resume[5]:
                burst = min(burst, 0)
        x["stopped_hours"] = stopped_hours
        track.x = x
        delay = track.delay_now = self._delay_score(track, x)
        feed = max(
            late / max(self.feed_late, self.feed_share * scans),
            missing / max(self.feed_missing, self.feed_missing_share * (missing + handed)),
        )
        kind, score = classify(
            delay=delay,
            silence=missed,
            feed=feed,
            stop_silence=stop_silence,
            stopped_hours=stopped_hours,
            burst=burst,
            backlog=window.backlog,
            min_silence_hours=self.min_silence_hours,
            min_burst=self.stop_min_burst,
            min_backlog=self.stop_min_backlog,
        )
        if track.resume is not None and (track.resume[0] <= 0 or kind is not None):
            track.resume = None
        # Every window is learned (score first): the baselines are robust (medians over a
        # rolling history, a ratio over weeks of cohorts), so a few hours of incident move
        # them little, while skipping "anomalous" windows can trap a detector whose baseline
        # lags a growing network into never learning again.
        track.arrivals.learn_one(x)
        track.arrivals_now.learn_one({"ts": x["ts"], "arrivals": window.arrivals})
        track.busy_now.learn_one({"ts": x["ts"], "busy": 1.0 if window.arrivals else 0.0})
        for detector in track.delay.values():
            detector.learn_one(x)
        evidence = self._evidence(window.facility, kind, x, late, missing)
        return Assessment(
            window.facility, window.end, round(score, 3), kind, evidence, window.backlog
        )

    def _level(self, track: _Track) -> float:
        """The facility's volume of the last day relative to its last week (capped at 1.5)."""
        week = track.week_sum * 96 / max(len(track.week), 1)
        return min(track.day_sum / week, 1.5) if week > 0 else 1.0

    def _missed(self, track: _Track, window: FacilityWindow, x: dict[str, Any]) -> float:
        """How much the facility's arrivals have gone quiet: 1 or more is too quiet to trust.

        The larger of two measures, each normalised to 1:

        * arrivals missed since the last one was seen, over ``silence_arrivals``: each window
          without an arrival adds the arrivals usually seen in a window at this hour (the mean
          at the same hour of the week or day) scaled by :meth:`_level`; a window with an
          arrival resets it. In an evening peak one silent window is already news;
        * the time since the last arrival, over ``alive_hours``.

        A slowdown is only called while this is under 1, that is while the facility's feed is
        visibly alive: missing departures *and* missing arrivals are a stop or a feed outage,
        not yet told apart (a plant whose night sort is missed while no arrivals are due is
        called a slowdown only when arrivals resume, or as part of a region's weather).
        """
        if window.arrivals:
            track.missed = track.surprise = 0.0
            track.last_arrival_end = window.end
            return 0.0
        busy = track.busy_now.mean({"ts": x["ts"]})
        if busy:  # batches at this hour ~ Poisson(-log(1 - busy)), scaled by the volume level
            track.surprise -= self._level(track) * math.log(1.0 - min(busy, self.stop_busy_cap))
        usual = track.arrivals_now.mean({"ts": x["ts"]})
        if usual is not None:
            track.missed += self._level(track) * usual
        quiet = 0.0
        if track.last_arrival_end is not None:
            quiet = (window.end - track.last_arrival_end) / 3600 / self.alive_hours
        return max(track.missed / self.silence_arrivals, quiet)

    def _silence(self, track: _Track, x: dict[str, Any]) -> float:
        """Low-side robust z of the arrivals of the last hours against the same hour, scaled by
        :meth:`_level` (a network emptying out, or a holiday, is no silence), over ``z_open``."""
        found = track.arrivals.baseline(x)
        if found is None:
            return 0.0
        median, scale = found
        level = self._level(track)
        gap = level * median - x["arrivals"]
        if gap <= 0:
            return 0.0
        return gap / max(level * scale, self.min_scale) / self.z_open

    def _delay_score(self, track: _Track, x: dict[str, Any]) -> float:
        if self.detector == "retention":
            return x["excess_z"] / self.retention_open
        if self.detector == "seasonal":
            return max(d.score_one(x) for d in track.delay.values()) / self.seasonal_open
        if self.detector == "drift":
            return track.delay["dwell"].score_one(x)
        return track.delay["hst"].score_one(x) / self.hst_open

    def _evidence(
        self, facility: str, kind: str | None, x: dict[str, Any], late: int, missing: int
    ) -> str:
        name = self._name(facility)
        if kind == "feed_outage":
            return (
                f"Scans from {name} are missing or hours late ({late} late scans, "
                f"{missing} packages seen downstream without a departure scan): a data "
                f"feed problem, not a delay; customers are not told."
            )
        if kind == "facility_stop":
            return (
                f"{name} sent no scan for {x['stopped_hours']:.0f} h (unusual at this hour) "
                f"and resumed with a burst of fresh scans: operations stopped; "
                f"{x['backlog']} packages held."
            )
        if kind == "facility_slowdown":
            return (
                f"{name} is slow: {x['held']:.0f} packages still waiting where "
                f"{x['expected']:.0f} would be usual by now (its own history at this time "
                f"of day); {x['departures']} departures in the last "
                f"{self.rolling_windows * self.window_seconds / 3600:.0f} h."
            )
        if x["excess_z"] >= self.retention_open or x.get("stopped_hours"):
            return (
                f"{name}: {x['held']:.0f} packages waiting where {x['expected']:.0f} would be "
                f"usual, and hardly any scan comes in: stopped, or a feed outage? Not known "
                f"yet; nobody is told until it is."
            )
        return f"{name}: nothing unusual."

    def _assess_lanes(self, window: FacilityWindow) -> list[Assessment]:
        lanes = self._lanes.get(window.facility)
        if lanes is None:
            if not window.lanes:
                return []
            lanes = self._lanes[window.facility] = _Lanes()
        margin = self.lane_margin_hours
        end = window.end
        for to, (n, total, longest) in window.lanes.items():
            lane = lanes.get(to)
            if lane is None:
                lane = lanes[to] = _Lane(to)
            mean_h = total / n / 3600
            usual = lane.median
            slow = 0
            if usual is not None:
                if mean_h > usual + margin:
                    slow = n
                elif longest / 3600 > usual + margin:
                    slow = 1
            if not lane.recent:
                lanes.wake(lane)
            lane.add(end, slow, n)
            if slow < n:
                lane.learn(mean_h)
        out = []
        cutoff = end - self.lane_hours * 3600
        facility = window.facility
        quiet = False
        for lane in lanes.active:
            if lane.head <= cutoff:
                lane.prune(cutoff)
                if not lane.recent:
                    quiet = True
                    continue
            said = lane.said
            if said is None:
                said = lane.said = self._lane_said(facility, lane)
            out.append(_lane_assessment(facility, end, *said))
        if quiet:
            lanes.sleep()
        return out

    def _lane_said(self, facility: str, lane: _Lane) -> tuple[Any, ...]:
        """What a lane's assessment says (all but its origin and time), from its figures."""
        slow, usual = lane.slow, lane.median
        share = slow / max(lane.total, 1)
        score = slow / self.lane_min if share >= self.lane_share else 0.0
        evidence = (
            f"{slow} of the last packages from {self._name(facility)} to "
            f"{self._name(lane.to)} took {self.lane_margin_hours:.0f} h or more longer than "
            "usual" + (f" (usually {usual:.0f} h)." if usual is not None else ".")
        )
        return round(score, 3), "lane_delay" if score >= 1.0 else None, evidence, slow, lane.to


_NEVER = float("inf")


class _Lane:
    """One lane's transit baseline and recent arrivals inside :class:`FacilityMonitor`."""

    __slots__ = ("head", "learned", "median", "recent", "said", "slow", "to", "total", "transits")

    def __init__(self, to: str) -> None:
        self.to = to
        # mean transit hours of the last 64 arrival windows without a slow package, and their
        # median once there are 8 of them (a rolling robust baseline), else None
        self.transits = array("d")  # a ring once full (the median needs no order)
        self.learned = 0
        self.median: float | None = None
        # (window end, slow, arrivals) over the last ``lane_hours``; None when there are none
        self.recent: collections.deque | None = None
        self.head: float = _NEVER  # window end of the oldest in ``recent``
        self.slow = self.total = 0  # summed over ``recent``
        self.said: tuple[Any, ...] | None = None  # what the assessment says, None: to redo

    def add(self, end: int, slow: int, n: int) -> None:
        if self.recent is None:
            self.recent = collections.deque()
            self.head = end
        self.recent.append((end, slow, n))
        self.slow += slow
        self.total += n
        self.said = None

    def prune(self, cutoff: float) -> None:
        recent = self.recent
        while recent and recent[0][0] <= cutoff:
            _, slow, n = recent.popleft()
            self.slow -= slow
            self.total -= n
        if recent:
            self.head = recent[0][0]
        else:
            self.recent, self.head = None, _NEVER
        self.said = None

    def learn(self, transit_hours: float) -> None:
        transits = self.transits
        if len(transits) < 64:
            transits.append(transit_hours)
        else:
            transits[self.learned % 64] = transit_hours
        self.learned += 1
        if len(transits) >= 8:
            median = _median(sorted(transits))
            if median != self.median:
                self.median = median
                self.said = None

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for k, v in zip(self.__slots__, state, strict=True):
            setattr(self, k, v)


class _Lanes(dict):
    """One origin's lanes by receiving facility, and those with recent traffic, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.active: list[_Lane] = []

    def wake(self, lane: _Lane) -> None:
        insort(self.active, lane, key=_lane_key)

    def sleep(self) -> None:
        self.active = [lane for lane in self.active if lane.recent]


def _lane_key(lane: _Lane) -> str:
    return lane.to


def _fold(assessment: Assessment, kind: str | None = None) -> Assessment:
    """A copy of ``assessment`` with another kind (None: folded into a wider incident)."""
    return Assessment(
        assessment.facility,
        assessment.window_end,
        assessment.score,
        kind,
        assessment.evidence,
        assessment.affected,
        assessment.lane_to,
        assessment.facilities,
    )
