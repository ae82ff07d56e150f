"""Scores each facility's windows, names the incident, groups regions and lanes."""

from __future__ import annotations

import collections
import itertools
import math
from array import array
from bisect import bisect_left, insort
from collections.abc import Collection, Container, Iterable, Mapping
from typing import Any

from detectors.facility.classify import Assessment, _assessment, classify
from detectors.facility.drift import DwellDrift
from detectors.facility.hst import WindowHST
from detectors.facility.retention import CohortRetention
from detectors.facility.seasonal import SeasonalBaseline, _median
from detectors.facility.windows import _N_DWELL, _NO_DWELL, FacilityWindow, _hist_quantile

__all__ = ["DETECTORS", "FacilityMonitor"]

DETECTORS = ("retention", "seasonal", "drift", "hst")


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
        self.level = 1.0  # the last day's volume against the last week's, set by roll
        self.last_scan_end: int | None = None
        self.silence_peak = 0.0
        self.missed = 0.0
        self.surprise = 0.0  # -log P(no arrival in every window since the last one)
        self.last_arrival_end: int | None = None
        self.delay_now = 0.0
        self.resume: list[Any] | None = None
        common = {"tz": tz, "window": monitor.baseline_window, "min_samples": monitor.min_samples}
        counts = common | {"min_scale": monitor.min_scale, "rel_scale": 0.15}
        self.arrivals_now = SeasonalBaseline("arrivals", **common)
        self.busy_now = SeasonalBaseline("busy", **common)  # share of windows with an arrival
        self.arrivals = SeasonalBaseline("arrivals", side="low", **counts)
        self.retention = CohortRetention(
            monitor.window_seconds,
            int(monitor.horizon_hours * 3600) // monitor.window_seconds,
            monitor.min_cohorts,
            tz,
        )
        self.x: dict[str, Any] = {}
        self.delay: dict[str, Any] = {}
        if monitor.detector == "seasonal":
            self.delay = {k: SeasonalBaseline(k, side="high", **counts) for k in ("backlog", "o12")}
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
        scans, late = window.scans, window.late_scans
        missing, handoffs = window.handoffs_missing, window.handoffs
        recent, sums = self.recent, self.sums
        recent.append((scans, window.arrivals, window.departures, late, missing, handoffs))
        sums[0] += scans
        sums[1] += window.arrivals
        sums[2] += window.departures
        sums[3] += late
        sums[4] += missing
        sums[5] += handoffs
        if len(recent) > self.n:
            old = recent.popleft()
            sums[0] -= old[0]
            sums[1] -= old[1]
            sums[2] -= old[2]
        if len(recent) > 4:
            old = recent[-5]
            sums[3] -= old[3]
            sums[4] -= old[4]
            sums[5] -= old[5]
        hist = window.dwell_hist
        self.dwell.append(hist)
        if hist != _NO_DWELL:  # (most windows of a quiet hub have no departure)
            self.dwell_sum = [a + b for a, b in zip(self.dwell_sum, hist, strict=True)]
        if len(self.dwell) > 2 * self.n:
            old_hist = self.dwell.popleft()
            if old_hist != _NO_DWELL:
                self.dwell_sum = [a - b for a, b in zip(self.dwell_sum, old_hist, strict=True)]
        day, week = self.day, self.week
        day.append(scans)
        week.append(scans)
        self.day_sum += scans
        self.week_sum += scans
        if len(day) > 96:
            self.day_sum -= day.popleft()
        if len(week) > 7 * 96:
            self.week_sum -= week.popleft()
        # the volume of the last day relative to the last week (capped at 1.5): scales the
        # usual arrivals in the silence tests (a network emptying out is no silence)
        usual = self.week_sum * 96 / len(week)
        self.level = min(self.day_sum / usual, 1.5) if usual > 0 else 1.0
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
      ``feed_late`` or ``feed_share`` of the scans of the last ``feed_windows`` windows (24:
      6 h of 15-min windows, the volume late scans come from; at most 96), whichever is
      larger; and packages seen downstream without a departure scan from here over the last
      hour, against ``feed_missing`` or
      ``feed_missing_share`` of all the packages seen downstream from here in that hour
      (normally ~3 % lack the departure scan, in an outage nearly all do);
    * the kind by :func:`classify`. Facilities of one region (``regions``) whose delays (a
      delay score of ``weather_delay`` or more, or a stop) began within ``weather_hours`` of
      each other and are still going on, ``weather_min`` of them or more, become one
      ``weather`` assessment for the region, under the region's first facility id, scored
      with the ``weather_min``-th highest delay over ``weather_delay`` (two hubs of a region
      each missing part of a sort at once is evidence at a lower bar than one hub alone:
      0.7, with ``retention`` a cohort z of 3.5 each, against 5 for a slowdown); their own
      assessments then carry no kind (one incident, one explanation), except a stop or a
      feed outage, which keep their own. A lane (A to B) is ``lane_delay`` when, over the
      last 6 h, ``lane_min`` packages or more and ``lane_share`` of its
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

    weather_delay = 0.7  # for snapshots made before the parameter existed (1.0 back then)

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
        feed_windows: int = 24,
        feed_missing_share: float = 0.25,
        weather_hours: float = 3.0,
        weather_min: int = 2,
        weather_delay: float = 0.7,
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
        if not 1 <= feed_windows <= 96:
            raise ValueError(f"feed_windows must be 1 to 96 (a day of windows), not {feed_windows}")
        self.feed_windows = feed_windows
        self.feed_missing_share = feed_missing_share
        self.feed_missing = feed_missing
        self.weather_hours = weather_hours
        self.weather_min = weather_min
        self.weather_delay = weather_delay
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

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("feed_windows", 24)  # snapshots from before it
        self.__dict__.update(state)

    def _name(self, facility: str) -> str:
        return self.names.get(facility, facility)

    def assess(
        self,
        windows: Iterable[FacilityWindow],
        lanes: Collection[tuple[str, str]] | None = None,
        weather_open: Mapping[str, Collection[str]] | None = None,
    ) -> list[Assessment]:
        """Assess the windows of one window time (one per facility, merged over shards).

        ``lanes``: None assesses every lane with recent traffic; else only those with a slow
        package among their recent arrivals (the only ones that can score above 0) and the
        ``(origin, receiving facility)`` pairs named (a caller's open or pending incidents,
        which must see their lanes go quiet). At national volume most of the thousands of
        active lanes score 0 in every window; their assessments would change nothing.

        ``weather_open``: the regions (by their assessments' facility id, the region's first
        hub) where the caller has a weather incident open, each with the hubs it covers.
        Weather there goes on while one of those hubs is delayed (see :meth:`_weather`)."""
        out: list[Assessment] = []
        end = None
        delays: dict[str, float] = {}
        wanted: dict[str, set[str]] | None = None  # origin -> the receiving facilities named
        if lanes is not None:
            wanted = {}
            for origin, to in lanes:
                wanted.setdefault(origin, set()).add(to)
        for window in windows:
            end = window.end
            found = self._assess_facility(window)
            out.append(found)
            delay = self._tracks[window.facility].delay_now
            if found.kind != "feed_outage" and (
                delay >= self.weather_delay or found.kind == "facility_stop"
            ):
                last = self._delayed.get(window.facility)
                if last is None or last <= window.end - self.weather_hours * 3600:
                    self._started[window.facility] = window.end  # a new delay episode
                self._delayed[window.facility] = window.end
            delays[window.facility] = max(delay, found.score if found.kind else 0.0)
            out.extend(self._assess_lanes(window, wanted))
        if end is None or not self.regions:
            return out
        return self._weather(out, end, delays, weather_open)

    def _region_first(self, region: str) -> str:
        """The facility id a region's assessments go under: its first hub's."""
        first = self._first.get(region)
        if first is None:
            first = self._first[region] = min(f for f, r in self.regions.items() if r == region)
        return first

    def _weather(
        self, out: list[Assessment], end: int, delays: dict[str, float],
        weather_open: Mapping[str, Collection[str]] | None = None,
    ) -> list[Assessment]:
        """Facilities of one region delayed within ``weather_hours`` of each other: one
        ``weather`` assessment for the region; their own assessments lose their kind.

        A facility counts when its delay score reached ``weather_delay`` (even while its
        arrivals are too quiet to call it a slowdown on its own: two facilities of a region
        losing their feed at once is far less likely than weather) or it is in a stop; a feed
        outage never.

        Hysteresis: in a region with its weather open (``weather_open``), one hub the
        weather covers still delayed (within the last ``weather_hours``, whenever its delay
        began) is enough for it to go on, scored by the highest delay. A storm may stay at
        one of its hubs after the others have recovered: without this, demo 1 and 3's storms
        ended hours early and went on as slowdowns of their own hubs, and a customer held
        twice by one storm heard of it twice. Other hubs join only as a region's weather
        opens (``weather_min`` whose delays began at once): at national density a region of
        13 hubs often has a slowdown of its own while weather is open there, and it is news
        of its own (a slowdown beside the sample's weather was called late, folded in).
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
        going_on: set[str] = set()  # regions whose open weather goes on with fewer hubs
        for region, members in by_region.items():  # keep the largest group that began at once
            best: list[str] = []
            for m in sorted(members):
                group = [n for n in members if abs(started[n] - started[m]) <= span]
                if len(group) > len(best):
                    best = group
            covered = weather_open.get(self._region_first(region)) if weather_open else None
            still = [m for m in members if covered is not None and m in covered]
            if still:  # the hysteresis above: its hubs still delayed, and a new group's
                going_on.add(region)
                best = sorted(set(still).union(best if len(best) >= self.weather_min else ()))
            by_region[region] = best
        grouped = []
        folded: set[str] = set()
        for region, members in sorted(by_region.items()):
            first = self._region_first(region)
            needed = 1 if region in going_on else self.weather_min
            if len(members) < needed:
                grouped.append(
                    _assessment(
                        first, end, 0.0, "weather", f"Region {region}: no region-wide delay.", 0
                    )
                )
                continue
            names = tuple(sorted(members))
            rank = 1 if region in going_on else self.weather_min  # (going on: its worst hub)
            score = sorted((delays.get(m, 0.0) for m in names), reverse=True)[rank - 1]
            score /= self.weather_delay
            backlog = {a.facility: a.affected for a in out if a.lane_to is None}
            evidence = (
                f"{len(names)} facilities of region {region} are delayed at once "
                f"(weather or another regional cause): "
                if len(names) >= self.weather_min else
                f"The delay across region {region} (weather or another regional cause) "
                f"goes on at: "
            ) + "; ".join(self._name(n) for n in names) + "."
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
        # the three baselines of arrivals (one zone: the local time worked out once) read,
        # then taught the window, each in one call (every window is learned, see below)
        local = track.arrivals._local_time(x)
        busy = track.busy_now._mean_learn_at(local, 1.0 if window.arrivals else 0.0)
        usual_now = track.arrivals_now._mean_learn_at(local, float(window.arrivals))
        found = track.arrivals._baseline_learn_at(local, float(arrivals))
        missed = self._missed(track, window, busy, usual_now)
        silence = self._silence(track, x, found)
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
            resume[4] += track.level * (usual_now or 0.0)
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
        # late scans against the volume they came from: a scanner offline sends its backlog
        # up to hours late, so after a night sort of a thousand departures the quiet morning
        # sees its ~2 % trickle in; against the morning's few scans alone that looked like a
        # feed outage at national volume (bench/RESULTS.md)
        feed_scans = sum(itertools.islice(reversed(track.day), self.feed_windows))
        feed = max(
            late / max(self.feed_late, self.feed_share * feed_scans),
            missing / max(self.feed_missing, self.feed_missing_share * (missing + handed)),
        )
        x["silence_score"], x["feed_score"] = missed, feed  # for :meth:`figures`
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
        # lags a growing network into never learning again. (The baselines of arrivals
        # learned theirs above, each right after it was read.)
        for detector in track.delay.values():
            detector.learn_one(x)
        evidence = self._evidence(window.facility, kind, x, late, missing)
        return _assessment(
            window.facility, window.end, round(score, 3), kind, evidence, window.backlog
        )

    def figures(self, window: FacilityWindow) -> dict[str, Any] | None:
        """What the monitor saw of ``window``'s facility when it assessed that window (call it
        right after :meth:`assess`), for dashboards and for analysts tuning the thresholds:
        the window's own counts; ``held`` / ``held_usual``, the packages of the last
        ``horizon_hours`` of arrivals still here and how many of them would usually be by now
        (:class:`CohortRetention`, over the cohorts whose time of day it has learned: 0 in
        warm-up); the rolling figures over the last ``rolling_windows`` windows, with the
        usual arrivals the silence test compared them with; and the three normalised scores
        that :func:`classify` turned into a kind (each 1.0 at its own bar: ``delay`` for a
        slowdown, ``feed`` for a feed outage; ``silence`` 1.0 or more only means "arrivals
        too quiet to call a slowdown", as most nights are). None for a facility never
        assessed.

        >>> from detectors.facility import FacilityMonitor, FacilityWindow
        >>> monitor = FacilityMonitor()
        >>> window = FacilityWindow("P1", 0, 900, arrivals=3, scans=3, backlog=3,
        ...                         cohorts={0: 3})
        >>> _ = monitor.assess([window])
        >>> row = monitor.figures(window)
        >>> row["arrivals"], row["backlog"], row["waiting_12h"], row["held"], row["held_usual"]
        (3, 3, 0, 0, 0.0)
        >>> row["scores"]
        {'delay': 0.0, 'silence': 0.0, 'feed': 0.0}
        """
        track = self._tracks.get(window.facility)
        if track is None or not track.x:
            return None
        x = track.x
        usual = x.get("arrivals_usual")
        return {
            "arrivals": window.arrivals,
            "departures": window.departures,
            "scans": window.scans,
            "late_scans": window.late_scans,
            "handoffs": window.handoffs,
            "handoffs_missing": window.handoffs_missing,
            "backlog": window.backlog,
            "waiting_12h": x["o12"],
            "held": int(x["held"]),
            "held_usual": round(x["expected"], 1),
            "dwell_p90_hours": None if x["dwell"] is None else round(x["dwell"], 2),
            "arrivals_rolling": x["arrivals"],
            "arrivals_usual_rolling": None if usual is None else round(usual, 1),
            "departures_rolling": x["departures"],
            "scores": {
                "delay": round(track.delay_now, 3),
                "silence": round(x.get("silence_score", 0.0), 3),
                "feed": round(x.get("feed_score", 0.0), 3),
            },
        }

    def _missed(
        self, track: _Track, window: FacilityWindow, busy: float | None, usual: float | None
    ) -> float:
        """How much the facility's arrivals have gone quiet: 1 or more is too quiet to trust.

        The larger of two measures, each normalised to 1:

        * arrivals missed since the last one was seen, over ``silence_arrivals``: each window
          without an arrival adds the arrivals usually seen in a window at this hour (the mean
          at the same hour of the week or day) scaled by :attr:`_Track.level`; a window with an
          arrival resets it. In an evening peak one silent window is already news;
        * the time since the last arrival, over ``alive_hours``.

        A slowdown is only called while this is under 1, that is while the facility's feed is
        visibly alive: missing departures *and* missing arrivals are a stop or a feed outage,
        not yet told apart (a plant whose night sort is missed while no arrivals are due is
        called a slowdown only when arrivals resume, or as part of a region's weather).

        ``busy`` and ``usual``: the share of windows with an arrival and the mean arrivals of
        a window at this hour (None in warm-up), as the baselines had them before this window.
        """
        if window.arrivals:
            track.missed = track.surprise = 0.0
            track.last_arrival_end = window.end
            return 0.0
        if busy:  # batches at this hour ~ Poisson(-log(1 - busy)), scaled by the volume level
            track.surprise -= track.level * math.log(1.0 - min(busy, self.stop_busy_cap))
        if usual is not None:
            track.missed += track.level * usual
        quiet = 0.0
        if track.last_arrival_end is not None:
            quiet = (window.end - track.last_arrival_end) / 3600 / self.alive_hours
        return max(track.missed / self.silence_arrivals, quiet)

    def _silence(
        self, track: _Track, x: dict[str, Any], found: tuple[float, float] | None
    ) -> float:
        """Low-side robust z of the arrivals of the last hours against the same hour, scaled by
        :attr:`_Track.level` (a network emptying out, or a holiday, is no silence), over
        ``z_open``. ``found``: the arrivals' baseline at this hour (median, scale), if any."""
        if found is None:
            x["arrivals_usual"] = None
            return 0.0
        median, scale = found
        level = track.level
        x["arrivals_usual"] = level * median  # for :meth:`figures`: what was compared
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

    def _assess_lanes(
        self, window: FacilityWindow, wanted: Mapping[str, Container[str]] | None = None
    ) -> list[Assessment]:
        """The window's lane arrivals learned; an assessment per lane with recent traffic,
        in the order of the receiving facility (``wanted``: only the lanes with a slow
        package and those whose receiving facility it names for this origin)."""
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
                lanes.wake(lane, end)
            lane.add(end, slow, n)
            if slow:
                lanes.slow.add(lane)
            if slow < n:
                lane.learn(mean_h)
        cutoff = end - self.lane_hours * 3600
        if lanes.next_prune <= cutoff:  # some lane's oldest arrivals fall out of the span
            lanes.prune(cutoff)
        facility = window.facility
        if wanted is None:
            chosen = lanes.active
        else:  # the others score 0, and nobody waits for them
            named = wanted.get(facility, ())
            chosen = list(lanes.slow)
            chosen += [
                lane
                for to in named
                if (lane := lanes.get(to)) is not None and lane.recent and not lane.slow
            ]
            chosen.sort(key=_lane_key)
        out = []
        for lane in chosen:
            said = lane.said
            if said is None:
                said = lane.said = self._lane_said(facility, lane)
            out.append(_assessment(facility, end, *said))
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

    __slots__ = ("head", "learned", "median", "recent", "said", "slow", "to", "total", "transits",
                 "ordered")

    def __init__(self, to: str) -> None:
        self.to = to
        # mean transit hours of the last 64 arrival windows without a slow package, and their
        # median once there are 8 of them (a rolling robust baseline), else None
        self.transits = array("d")  # a ring once full (the median needs no order)
        self.ordered = array("d")  # the same values, sorted (kept so: no sort per window)
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
        transits, ordered = self.transits, self.ordered
        if len(transits) < 64:
            transits.append(transit_hours)
        else:
            slot = self.learned % 64
            del ordered[bisect_left(ordered, transits[slot])]
            transits[slot] = transit_hours
        insort(ordered, transit_hours)
        self.learned += 1
        if len(transits) >= 8:
            median = _median(ordered)  # type: ignore[arg-type]
            if median != self.median:
                self.median = median
                self.said = None

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if len(state) == len(self.__slots__) - 1:  # snapshots from before the sorted copy
            state = (*state, array("d", sorted(state[-1])))
        for k, v in zip(self.__slots__, state, strict=True):
            setattr(self, k, v)


class _Lanes(dict):
    """One origin's lanes by receiving facility; those with recent traffic, in order; those
    with a slow package among it; and the earliest time a lane's oldest recent arrivals can
    fall out of the span (none before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.active: list[_Lane] = []
        self.slow: set[_Lane] = set()
        self.next_prune = _NEVER

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "slow" not in state:  # snapshots from before: found again
            self.slow = {lane for lane in self.active if lane.slow}
            self.next_prune = -_NEVER

    def wake(self, lane: _Lane, end: int) -> None:
        """``lane``, without recent arrivals until now, gets some at ``end``."""
        insort(self.active, lane, key=_lane_key)
        self.next_prune = min(self.next_prune, end)

    def prune(self, cutoff: float) -> None:
        """Drop the arrivals at or before ``cutoff``; lanes left without any go to sleep."""
        quiet = False
        head = _NEVER
        for lane in self.active:
            if lane.head <= cutoff:
                lane.prune(cutoff)
                if not lane.recent:
                    quiet = True
                    continue
            head = min(head, lane.head)
        self.next_prune = head
        if quiet:
            self.active = [lane for lane in self.active if lane.recent]
        self.slow = {lane for lane in self.slow if lane.slow}  # (only pruning lowers them)


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
