"""Incident lifecycle with hysteresis, in the manner of Prometheus Alertmanager.

:class:`IncidentManager` receives, at the end of every event-time window, a score and a kind
for each subject (a facility, a lane, a region) and emits incident records in the
``incidents.jsonl`` contract of ``docs/schemas.md``:

``incident_key, kind, facility_id, lane_to, status (open|update|resolved), opened_at,
resolved_at, score, affected_packages, evidence`` (plus ``facilities``: the space-separated
ids the incident names, which ``delaywatch evaluate`` also reads).

Lifecycle
    *Pending*: the score is at or above ``open_threshold``; after ``for_windows`` consecutive
    such windows, and as soon as a kind is known, the incident *opens* (Alertmanager's ``for``).
    *Open*: an ``update`` record goes out when the affected package count changes materially
    (by ``update_ratio`` and at least ``update_min`` packages). *Resolved*: after
    ``clear_windows`` consecutive windows under ``close_threshold`` (lower than the open
    threshold: hysteresis), so a score that flaps around one threshold keeps one incident open
    instead of opening and resolving it again and again.

Keys
    ``incident_key = f"{subject}:{kind}:{opened}"``: the subject (facility id, ``A>B`` for a
    lane), the kind, and the end of the window that opened it (UTC, ``YYYYMMDDTHHMMZ``). The
    same input gives the same keys, so a replay after a crash re-emits the same records and a
    sink that upserts by ``(incident_key, status)`` stays duplicate-free.

Reclassification
    A facility with an open delay incident whose kind turns into ``feed_outage`` (the scans
    that were missing arrive late: it was the feed, not the facility) gets the delay incident
    resolved with that explanation and ``reclassified_as: "feed_outage"`` (the folder then
    treats its whole interval as the feed outage it was: no customer is told because of it),
    and a ``feed_outage`` incident opened at once, whatever its score. Other kind changes keep
    the incident (its kind is fixed at opening).

Everything is plain data: the manager pickles with its open incidents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from detectors.events import iso_time as _iso

__all__ = ["DELAY_KINDS", "IncidentDesk", "IncidentManager"]

#: Incident kinds that delay packages (a feed outage does not).
DELAY_KINDS = frozenset({"facility_slowdown", "facility_stop", "weather", "lane_delay"})
_DELAY = DELAY_KINDS


def _compact(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y%m%dT%H%MZ")


@dataclass
class _Subject:
    over: int = 0  # consecutive windows at or above the open threshold
    under: int = 0  # consecutive windows under the close threshold while open
    seen_at: int = 0
    key: str | None = None  # the open incident
    kind: str | None = None
    opened_at: int = 0
    affected: int = 0  # last emitted
    peak: float = 0.0
    facilities: set[str] = field(default_factory=set)


class IncidentManager:
    """Opens, updates and resolves incidents from per-window scores; see the module docstring.

    Parameters
    ----------
    open_threshold
        Score at or above which a window counts towards opening.
    close_threshold
        Score under which a window counts towards resolving (<= ``open_threshold``).
    for_windows
        Consecutive windows at or above ``open_threshold`` before an incident opens.
    clear_windows
        Consecutive windows under ``close_threshold`` before it resolves.
    update_ratio, update_min
        An ``update`` goes out when the affected count moved by both this share and this
        many packages since the last record.

    Examples
    --------
    A score that flaps around the open threshold opens one incident, which resolves once the
    score has stayed low for ``clear_windows`` windows.

    >>> from detectors.incidents import IncidentManager
    >>> manager = IncidentManager(for_windows=2, clear_windows=3)
    >>> t0 = 1_790_208_000
    >>> scores = [0.2, 1.3, 1.1, 0.8, 1.2, 0.6, 1.4, 0.3, 0.2, 0.1, 0.2]
    >>> records = []
    >>> for i, score in enumerate(scores):
    ...     records += manager.update("P0200", t0 + 900 * (i + 1), score, "facility_slowdown",
    ...                               "packages piling up", affected=40 + 10 * i)
    >>> for r in records:
    ...     print(r["status"], r["incident_key"], r["affected_packages"])
    open P0200:facility_slowdown:20260924T0045Z 60
    update P0200:facility_slowdown:20260924T0045Z 80
    update P0200:facility_slowdown:20260924T0045Z 100
    resolved P0200:facility_slowdown:20260924T0045Z 130
    """

    def __init__(
        self,
        open_threshold: float = 1.0,
        close_threshold: float = 0.5,
        for_windows: int = 2,
        clear_windows: int = 8,
        update_ratio: float = 0.25,
        update_min: int = 5,
    ) -> None:
        if close_threshold > open_threshold:
            raise ValueError(
                f"close_threshold ({close_threshold}) must not exceed open_threshold "
                f"({open_threshold})"
            )
        if for_windows < 1 or clear_windows < 1:
            raise ValueError("for_windows and clear_windows must be at least 1")
        self.open_threshold = open_threshold
        self.close_threshold = close_threshold
        self.for_windows = for_windows
        self.clear_windows = clear_windows
        self.update_ratio = update_ratio
        self.update_min = update_min
        self._subjects: dict[tuple[str, str | None, bool], _Subject] = {}
        self.opened = 0
        self.resolved = 0

    @property
    def open_incidents(self) -> int:
        """Incidents open now (for a gauge)."""
        return sum(1 for s in self._subjects.values() if s.key is not None)

    def lanes(self) -> set[tuple[str, str]]:
        """The lanes ``(origin, receiving facility)`` with an incident open or pending: the
        ones whose every window still matters, whatever their score."""
        return {(f, to) for f, to, _ in self._subjects if to is not None}

    def weather_open(self) -> dict[str, set[str]]:
        """The regions (by their first facility id) with a weather incident open now, each
        with the facilities it covers."""
        return {f: s.facilities for (f, _, weather), s in self._subjects.items()
                if weather and s.key is not None}

    def is_open(self, facility: str, lane_to: str | None = None, weather: bool = False) -> bool:
        """The subject (as :meth:`update` names it) has an incident open now."""
        s = self._subjects.get((facility, lane_to, weather))
        return s is not None and s.key is not None

    def update(
        self,
        facility: str,
        window_end_ts: int,
        score: float,
        kind: str | None,
        evidence: str,
        affected: int,
        *,
        lane_to: str | None = None,
        facilities: tuple[str, ...] | list[str] = (),
    ) -> list[dict[str, Any]]:
        """Feed one subject's score at the end of a window; returns the records it causes.

        The subject is ``facility`` (with ``lane_to`` for a lane; ``kind == "weather"`` marks
        a region, under its first facility id, and ``facilities`` lists the ones hit).
        ``kind`` None means "anomalous or not, no kind known yet": it counts towards opening
        but cannot open. Windows of one subject must come in order.
        """
        subject_key = (facility, lane_to, kind == "weather")
        s = self._subjects.get(subject_key)
        if s is None:
            if score < self.open_threshold:
                return []  # nothing pending, nothing open: keep no state
            s = self._subjects[subject_key] = _Subject()
        s.seen_at = window_end_ts
        out: list[dict[str, Any]] = []
        if s.key is not None:
            if kind == "feed_outage" and s.kind in _DELAY:
                closing = self._resolve(
                    s, facility, lane_to, window_end_ts, score, affected,
                    "Reclassified: the missing scans were a data feed problem, not a delay. "
                    + evidence,
                )
                closing["reclassified_as"] = kind  # what its interval really was
                out.append(closing)
                # the evidence is decisive: the feed outage opens at once, whatever its score
                out.append(self._open(s, facility, lane_to, window_end_ts, score, kind,
                                      evidence, affected, facilities))
                return out
            grown = not s.facilities.issuperset(facilities)  # (weather spreading)
            s.facilities.update(facilities)
            s.peak = max(s.peak, score)
            if score < self.close_threshold:
                s.under += 1
                if s.under >= self.clear_windows:
                    out.append(self._resolve(s, facility, lane_to, window_end_ts, score,
                                             affected, evidence))
                    s.over = 0
                    return out
            else:
                s.under = 0
            moved = abs(affected - s.affected)
            if grown or moved >= self.update_min and moved >= self.update_ratio * max(
                    s.affected, 1):
                s.affected = affected
                out.append(
                    self._record(
                        s, facility, lane_to, "update", None, score, affected, evidence
                    )
                )
            return out
        s.over = s.over + 1 if score >= self.open_threshold else 0
        if s.over >= self.for_windows and kind is not None:
            out.append(self._open(s, facility, lane_to, window_end_ts, score, kind, evidence,
                                  affected, facilities))
        elif s.over == 0 and s.key is None:
            del self._subjects[subject_key]
        return out

    def _open(self, s: _Subject, facility: str, lane_to: str | None, window_end_ts: int,
              score: float, kind: str, evidence: str, affected: int,
              facilities: tuple[str, ...] | list[str]) -> dict[str, Any]:
        subject = facility if lane_to is None else f"{facility}>{lane_to}"
        s.key = f"{subject}:{kind}:{_compact(window_end_ts)}"
        s.kind, s.opened_at, s.under, s.peak = kind, window_end_ts, 0, score
        s.over = max(s.over, self.for_windows)
        s.affected = affected
        s.facilities = set(facilities) if kind == "weather" else {facility}
        self.opened += 1
        return self._record(s, facility, lane_to, "open", None, score, affected, evidence)

    def _resolve(self, s: _Subject, facility: str, lane_to: str | None, window_end_ts: int,
                 score: float, affected: int, evidence: str) -> dict[str, Any]:
        """The ``resolved`` record of the subject's open incident, which is then closed."""
        record = self._record(s, facility, lane_to, "resolved", window_end_ts, score, affected,
                              evidence)
        self._close(s)
        return record

    def _close(self, s: _Subject) -> None:
        s.key, s.kind, s.under, s.peak = None, None, 0, 0.0
        s.facilities = set()
        self.resolved += 1

    def _record(
        self,
        s: _Subject,
        facility: str,
        lane_to: str | None,
        status: str,
        resolved_at: int | None,
        score: float,
        affected: int,
        evidence: str,
    ) -> dict[str, Any]:
        return {
            "incident_key": s.key,
            "kind": s.kind,
            "facility_id": facility,
            "lane_to": lane_to,
            "status": status,
            "opened_at": _iso(s.opened_at),
            "resolved_at": None if resolved_at is None else _iso(resolved_at),
            "score": round(float(score), 3),
            "affected_packages": int(affected),
            "evidence": evidence,
            "facilities": " ".join(sorted(s.facilities)),
        }

    def finish(self, window_end_ts: int) -> list[dict[str, Any]]:
        """Treat every subject not updated at ``window_end_ts`` as scoring 0 there.

        Call once per window after the updates, so that a subject that stops reporting (a lane
        with no more traffic) still resolves.
        """
        out: list[dict[str, Any]] = []
        for (facility, lane_to, weather), s in list(self._subjects.items()):
            if s.seen_at < window_end_ts:
                kind = "weather" if weather else s.kind
                out += self.update(
                    facility,
                    window_end_ts,
                    0.0,
                    kind,
                    "No longer observed.",
                    s.affected,
                    lane_to=lane_to,
                )
        return out


class IncidentDesk:
    """A facility monitor and an :class:`IncidentManager` run together: closed facility
    windows in, incident records out, one window end at a time.

    ``monitor`` is a :class:`detectors.facility.FacilityMonitor` (anything with
    ``assess(windows, lanes=..., weather_open=...) -> assessments``: the desk names the lanes
    with an incident open or pending, and the regions with weather open and the hubs each
    covers, whose weather goes on while one of them is delayed). Feed :meth:`assess_closed`
    the windows one ``FacilityStats.close`` (or :func:`detectors.facility.merge`) returned:
    they are grouped by window end, in order, and each end gives the records of its
    assessments and of the subjects that stopped reporting. Picklable.

    ``warm_up_seconds``: a facility's assessments count only once the monitor has seen it for
    this long (event time). Every window is still learned; but a model that has seen one day
    of a facility cannot tell its second night from an incident, and when a large network
    fills up at the start of a run it would open incidents everywhere (16 false ones in the
    first 1.6 days of a 2 M-package national run; bench/RESULTS.md).

    ``keep_figures``: also keep, per window end, one row per facility assessed (what
    :meth:`detectors.facility.FacilityMonitor.figures` says of it, with its kind and score)
    and one per region or lane whose score is above 0, for :meth:`take_figures`: the
    facility statistics of the flow, for dashboards and for analysts tuning thresholds
    (``docs/schemas.md``, "facility_windows.jsonl").

    >>> from detectors.facility import FacilityMonitor, FacilityWindow
    >>> desk = IncidentDesk(FacilityMonitor(), IncidentManager(), keep_figures=True)
    >>> desk.assess_closed([FacilityWindow("P1", 0, 900), FacilityWindow("P1", 900, 1800)])
    [(900, []), (1800, [])]
    >>> [(end, [(r["subject"], r["facility_id"], r["backlog"]) for r in rows])
    ...  for end, rows in desk.take_figures()]
    [(900, [('facility', 'P1', 0)]), (1800, [('facility', 'P1', 0)])]
    >>> desk.take_figures()
    []
    """

    def __init__(self, monitor: Any, manager: IncidentManager,
                 warm_up_seconds: int = 0, keep_figures: bool = False) -> None:
        self.monitor = monitor
        self.manager = manager
        self.warm_up_seconds = warm_up_seconds
        self.keep_figures = keep_figures
        self._first: dict[str, int] = {}  # facility -> end of its first window seen
        self._rows: list[tuple[int, list[dict[str, Any]]]] = []  # (window end, rows), untaken
        self._region_members: dict[str, list[str]] = {}  # region -> its hubs (cache)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("keep_figures", False)  # snapshots from before the figures
        state.setdefault("_rows", [])
        self.__dict__.update(state)
        self._region_members = {}  # a cache of the monitor's regions: rebuilt, not restored

    def assess(self, end: int, windows: list[Any]) -> list[dict[str, Any]]:
        """Records for the windows (one per facility) that end at ``end``."""
        manager, first, warm_up = self.manager, self._first, self.warm_up_seconds
        for w in windows:
            first.setdefault(w.facility, end)
        records: list[dict[str, Any]] = []
        # a lane scoring 0 with no incident open or pending would change nothing here
        assessments = self.monitor.assess(windows, lanes=manager.lanes(),
                                          weather_open=manager.weather_open())
        for a in assessments:
            if warm_up and self._learning(a, end):
                continue  # still learning this facility (its windows were learned)
            records += manager.update(a.facility, a.window_end, a.score, a.kind, a.evidence,
                                      a.affected, lane_to=a.lane_to, facilities=a.facilities)
        if self.keep_figures:
            self._rows.append((end, self._figure_rows(end, windows, assessments)))
        return records + manager.finish(end)

    def _learning(self, a: Any, end: int) -> bool:
        """The subject of assessment ``a`` is still in its warm-up at ``end``: a facility or a
        lane by its own first window; a region (``weather``) until every hub of it that has
        scanned is past its warm-up (a region-wide comparison needs all their models; an NDC
        scans a day after its plants while a national network fills up, and the plants' first
        nights then look like weather everywhere). Its subject id, the region's first hub in
        the facility list, may never scan (a hub listed before it goes live): it does not
        count. A region with a weather incident open is never learning: a hub of it that
        scans for the first time then (one going live mid-run) must not make the incident
        look over; it only holds back *new* weather there for its own warm-up."""
        warm_up, first = self.warm_up_seconds, self._first
        if not warm_up:
            return False
        if a.kind == "weather":
            if self.manager.is_open(a.facility, None, True):
                return False
            members = self._members(a)
            return any(end - first[f] < warm_up for f in members if f in first)
        return end - first.get(a.facility, end) < warm_up

    def _members(self, a: Any) -> list[str]:
        """The hubs of a region assessment's region (from the monitor's ``regions``), else
        the ones it names."""
        regions = getattr(self.monitor, "regions", None) or {}
        region = regions.get(a.facility)
        if region is None:
            return list(a.facilities)
        members = self._region_members.get(region)
        if members is None:
            members = self._region_members[region] = sorted(
                f for f, r in regions.items() if r == region)
        return members

    def take_figures(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """``(window end, rows)`` kept since the last call (with ``keep_figures``), in
        order; a caller that keeps figures must take them (they pile up until then)."""
        rows, self._rows = self._rows, []
        return rows

    def _figure_rows(self, end: int, windows: list[Any],
                     assessments: list[Any]) -> list[dict[str, Any]]:
        by_facility = {w.facility: w for w in windows}
        width = windows[0].end - windows[0].start if windows else 0
        rows = []
        times: dict[int, tuple[str, str]] = {}  # window end -> (start, end) as text
        for a in assessments:
            if a.lane_to is not None:
                subject = "lane"
            elif a.facilities or a.kind == "weather":
                subject = "region"
            else:
                subject = "facility"
            if subject != "facility" and a.score <= 0:
                continue
            w = by_facility.get(a.facility) if subject == "facility" else None
            span = times.get(a.window_end)
            if span is None:
                span = times[a.window_end] = (_iso(a.window_end - width), _iso(a.window_end))
            row: dict[str, Any] = {
                "subject": subject,
                "facility_id": a.facility,
                "window_start": span[0],
                "window_end": span[1],
                "kind": a.kind,
                "score": a.score,
                "learning": self._learning(a, end),
            }
            if w is not None:
                row.update(self.monitor.figures(w) or {})
            else:
                if subject == "lane":
                    row["lane_to"] = a.lane_to
                else:  # as in incidents.jsonl: space-separated ids
                    regions = getattr(self.monitor, "regions", {})
                    row["region"] = regions.get(a.facility)
                    row["facilities"] = " ".join(a.facilities)
                row["affected"] = a.affected  # packages the region or lane holds
            rows.append(row)
        return rows

    def assess_closed(self, windows: list[Any]) -> list[tuple[int, list[dict[str, Any]]]]:
        """``(end, records)`` for every window end among ``windows``, in order."""
        by_end: dict[int, list[Any]] = {}
        for w in windows:
            by_end.setdefault(w.end, []).append(w)
        return [(end, self.assess(end, by_end[end])) for end in sorted(by_end)]
