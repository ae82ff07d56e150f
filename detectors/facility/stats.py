"""The per-event accumulator of facility windows (one per tracker shard)."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from typing import Any

from detectors.facility.windows import (
    _ARRIVED,
    _DEPARTED,
    _N_DWELL,
    DWELL_EDGES_SECONDS,
    FacilityWindow,
)

__all__ = ["HUB_CODES", "FacilityStats"]

#: Scan codes only processing plants and distribution centres emit (USPS: arrived at / departed
#: a regional or sort facility, DC eVS arrival; not ``PC`` "sorting/processing complete",
#: which delivery units scan too); see ../shared/reference/event-formats.md and
#: :data:`detectors.events.CODES`. ``FacilityStats(facilities="auto")`` keeps figures for the
#: facilities that scanned one of them.
HUB_CODES = frozenset({"10", "A1", "T1", "EF", "19"})


class _Facility:
    """The open windows and the backlog of one facility in one shard."""

    __slots__ = ("backlog", "low", "open", "present", "since")

    def __init__(self, since: int) -> None:
        self.open: dict[int, list[Any]] = {}  # window index -> counters
        self.present: dict[int, int] = {}  # arrival window -> packages still here
        self.backlog = 0
        self.since = since  # first window with an event: windows are emitted from here on
        # at most the oldest arrival window in ``present`` (its minimum is looked for only
        # once this is old enough to expire)
        self.low: float = _NEVER

    def __getstate__(self) -> tuple[Any, ...]:
        return self.open, self.present, self.backlog, self.since, self.low

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        if len(state) == 4:  # snapshots from before the bound: look at once
            state = (*state, -_NEVER)
        self.open, self.present, self.backlog, self.since, self.low = state


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
        Facilities to keep figures for (e.g. the plants and NDCs); None: every facility seen;
        ``"auto"``: every facility seen with a processing-plant scan code (:data:`HUB_CODES`:
        arrived at / departed a regional or sort facility), for feeds without a facility
        list: post offices (acceptance, delivery) are left out, so the monitor's memory
        (~0.5 MB per facility) follows the few hundred hubs, not tens of thousands of
        delivery units. Calls for other facilities return at once.
    max_facilities
        With ``"auto"``: the most facilities kept (each costs ~0.5 MB in the monitor and a
        dozen metric series). A feed that gives hub codes to far more facilities than a
        network has hubs (a carrier coding its delivery units as plants) then cannot exhaust
        the memory: the first ``max_facilities`` are kept, and hub-code scans at any other
        facility are counted in ``over_cap`` (a facility list, ``facilities=...``, avoids
        the guesswork).
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
        facilities: Iterable[str] | str | None = None,
        max_facilities: int = 2000,
        max_age_seconds: int = 7 * 86400,
    ) -> None:
        if max_facilities < 1:
            raise ValueError(f"max_facilities must be at least 1, not {max_facilities}")
        self.window_seconds = window_seconds
        self.auto = facilities == "auto"
        self.facilities: set[str] | frozenset[str] | None
        if self.auto:
            self.facilities = set()  # grows as hub codes are seen
        elif isinstance(facilities, str):
            raise ValueError(f"facilities must be a collection, None or 'auto', not {facilities!r}")
        else:
            self.facilities = None if facilities is None else frozenset(facilities)
        self.max_facilities = max_facilities
        self.over_cap = 0  # hub-code scans at facilities left out by max_facilities ("auto")
        self.max_age_seconds = max_age_seconds
        self._state: dict[str, _Facility] = {}
        self._closed = -1  # windows with index <= this are closed
        self.expired = 0

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("auto", False)  # snapshots from before "auto"
        state.setdefault("max_facilities", 2000)  # ... and before the cap
        state.setdefault("over_cap", 0)
        self.__dict__.update(state)

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
        if self.auto and code in HUB_CODES:
            keep: set[str] = self.facilities  # type: ignore[assignment]
            if facility not in keep:
                if len(keep) < self.max_facilities:
                    keep.add(facility)
                else:
                    self.over_cap += 1
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
                        if arrived < state.low:
                            state.low = arrived
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
                if state.low <= w - max_age:  # the oldest may be due to expire: look
                    for arrived in [a for a in present if a <= w - max_age]:
                        n = present.pop(arrived)
                        state.backlog -= n
                        self.expired += n
                    state.low = min(present, default=_NEVER)
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


_NEVER = float("inf")


def _leave(counters: list[Any], arrived: int) -> None:
    out = counters[_OUT]
    if out is None:
        out = counters[_OUT] = {}
    out[arrived] = out.get(arrived, 0) + 1
