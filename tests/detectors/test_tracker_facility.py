"""PackageTracker's facility side: watches before stalls, facility windows, the watermark."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from typing import Any

import pytest

from detectors import ScanEvent, StallDetector
from detectors.facility import FacilityStats
from detectors.tracker import Held, PackageTracker

H = 3600
T0 = 1_790_000_000 - 1_790_000_000 % 86400


def header(pid: str, ts: int) -> ScanEvent:
    return ScanEvent(pid, "GX", "O-1", ts, ts, service="ground", promised_by_ts=ts + 4 * 86400,
                     recipient_ref=f"C-{pid}")


def scan(pid: str, code: str, ts: int, facility: str | None = "P1") -> ScanEvent:
    return ScanEvent(pid, code, facility, ts, ts)


def tracker(watch: float = 0.5, stats: FacilityStats | None = None) -> PackageTracker:
    detector = StallDetector(prior_hours={"A1": (6, 20), "T1": (6, 20), "TL": (6, 20)},
                             default_prior_hours=None, min_threshold=0, min_samples=10**9)
    return PackageTracker(detector, allowed_lateness=0, bucket_seconds=600,
                          watch_fraction=watch, facility_stats=stats, facility_lateness=0)


def kinds(out: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(a["kind"], a["alert_key"]) for a in out]


def test_a_watch_comes_at_its_fraction_then_the_stall_in_the_same_episode() -> None:
    t = tracker(watch=0.5)
    t.process_batch([header("P", T0), scan("P", "A1", T0 + H)])
    assert t.advance(T0 + H + 9 * H) == []  # 9 h < 0.5 x 20 h
    [watch] = t.advance(T0 + H + 11 * H)
    assert (watch["kind"], watch["alert_key"], watch["episode"]) == ("watch", "P:watch:1", 1)
    assert watch["watermark"] == T0 + 12 * H
    assert watch["silence_seconds"] >= 10 * H and watch["recipient_ref"] == "C-P"
    assert t.advance(T0 + H + 19 * H) == []
    assert kinds(t.advance(T0 + H + 21 * H)) == [("stall", "P:stall:1")]
    assert kinds(t.process(scan("P", "T1", T0 + 23 * H))) == [("back_on_track",
                                                             "P:back_on_track:1")]
    assert t.stats.watches == 1 and t.stats.stalls == 1


def test_a_watched_package_that_moves_before_the_stall_says_moved_once() -> None:
    t = tracker(watch=0.5)
    t.process_batch([header("P", T0), scan("P", "A1", T0 + H)])
    assert kinds(t.advance(T0 + 12 * H)) == [("watch", "P:watch:1")]
    [moved] = t.process(scan("P", "T1", T0 + 13 * H))
    assert (moved["kind"], moved["alert_key"]) == ("moved", "P:moved:1")
    assert t.advance(T0 + 13 * H + 9 * H) == []
    # each silence is its own episode: the T1 stage's watch, then its moved
    assert kinds(t.advance(T0 + 13 * H + 11 * H)) == [("watch", "P:watch:2")]
    assert kinds(t.process(scan("P", "A1", T0 + 25 * H, "N1"))) == [("moved", "P:moved:2")]
    assert kinds(t.process(scan("P", "T1", T0 + 26 * H, "N1"))) == []  # not watched: nothing


def test_without_a_watch_fraction_only_stalls_fire() -> None:
    t = tracker(watch=0.0)
    t.process_batch([header("P", T0), scan("P", "A1", T0 + H)])
    assert t.advance(T0 + 12 * H) == []
    assert kinds(t.advance(T0 + 22 * H)) == [("stall", "P:stall:1")]
    with pytest.raises(ValueError, match="watch_fraction"):
        tracker(watch=1.0)


def test_facility_windows_come_from_the_scans_and_skip_in_transit_scans() -> None:
    stats = FacilityStats(900, facilities=["P1", "N1"])
    t = tracker(watch=0.0, stats=stats)
    t.process_batch([
        header("A", T0), scan("A", "A1", T0 + 100), scan("A", "T1", T0 + 2 * H),
        scan("A", "TL", T0 + 3 * H, None),  # in transit: the lane is still P1 -> N1
        scan("A", "A1", T0 + 5 * H, "N1"),
        header("B", T0 + 6 * H), scan("B", "A1", T0 + 6 * H + 60),
    ])
    windows = t.take_windows()
    assert t.take_windows() == []  # taken once
    assert t.facility_through <= T0 + 6 * H + 60
    p1 = [w for w in windows if w.facility == "P1"]
    assert sum(w.arrivals for w in p1) == 1 and sum(w.departures for w in p1) == 1
    assert sum(sum(w.dwell_hist) for w in p1) == 1  # the dwell of A, arrival to departure
    lanes = {to: v for w in windows if w.facility == "P1" for to, v in w.lanes.items()}
    assert lanes["N1"][0] == 1 and lanes["N1"][1] == 3 * H  # departed 2 h, arrived 5 h
    n1 = [w for w in windows if w.facility == "N1"]
    assert sum(w.arrivals for w in n1) == 1


def test_a_late_scan_counts_at_its_facility_and_the_state_pickles() -> None:
    stats = FacilityStats(900, facilities=["P1"])
    t = tracker(watch=0.5, stats=stats)
    t.process_batch([header("A", T0), scan("A", "A1", T0 + 100), scan("A", "T1", T0 + 3 * H)])
    t.process(scan("A", "A1", T0 + 200))  # out of order for A: still a (late) scan of P1
    assert t.stats.out_of_order == 1
    t.take_windows()
    again = pickle.loads(pickle.dumps(t))
    for tr in (t, again):
        tr.process_batch([header("B", T0 + 4 * H), scan("B", "A1", T0 + 5 * H)])
    assert [(w.facility, w.start, w.arrivals, w.late_scans) for w in t.take_windows()] == [
        (w.facility, w.start, w.arrivals, w.late_scans) for w in again.take_windows()]
    assert t.facility_through == again.facility_through > T0


class _OneIncident:
    """An incident desk that opens one slowdown at P1 at the first window end >= ``at``."""

    def __init__(self, at: int, kind: str = "facility_slowdown",
                 lane_to: str | None = None) -> None:
        self.at, self.kind, self.lane_to, self.done = at, kind, lane_to, False

    def assess_closed(self, windows: list) -> list:
        out = []
        for end in sorted({w.end for w in windows}):
            records = []
            if end >= self.at and not self.done:
                self.done = True
                records = [{"incident_key": "P1:k", "kind": self.kind, "facility_id": "P1",
                            "lane_to": self.lane_to, "status": "open", "facilities": "P1"}]
            out.append((end, records))
        return out


def test_an_incident_opening_holds_the_overdue_packages_due_soon_at_its_facility() -> None:
    stats = FacilityStats(900, facilities=["P1", "P2"])
    desk = _OneIncident(at=T0 + 10 * H)
    detector = StallDetector(prior_hours={"A1": (4, 40), "T1": (4, 40)},
                             default_prior_hours=None, min_threshold=0, min_samples=10**9)
    t = PackageTracker(detector, allowed_lateness=0, bucket_seconds=600, watch_fraction=0.85,
                       facility_stats=stats, facility_lateness=0, incidents=desk,  # type: ignore[arg-type]
                       hold_factor=1.0, hold_horizon=12 * H)

    def pkg(pid: str, code: str, at: int, facility: str, due: int) -> list[ScanEvent]:
        return [ScanEvent(pid, "GX", "O-1", at - 60, at - 60, service="ground",
                          promised_by_ts=due, recipient_ref=f"C-{pid}"),
                ScanEvent(pid, code, facility, at, at)]

    t.process_batch(
        pkg("HELD", "A1", T0 + 2 * H, "P1", T0 + 20 * H)      # overdue (8 h > 4 h), due soon
        + pkg("FRESH", "A1", T0 + 8 * H, "P1", T0 + 20 * H)   # 2 h there: not overdue yet
        + pkg("SPARE", "A1", T0 + 2 * H, "P1", T0 + 90 * H)   # time to spare
        + pkg("LEFT", "T1", T0 + 2 * H, "P1", T0 + 20 * H)    # departed: a slowdown holds none
        + pkg("ELSE", "A1", T0 + 2 * H, "P2", T0 + 20 * H))   # another facility
    out = t.process(scan("X", "A1", T0 + 10 * H + 1, "P2"))  # moves time past the window end
    assert [(a["kind"], a["package_id"]) for a in out] == [("watch", "HELD")]
    assert out[0]["alert_time"] >= out[0]["last_scan_time"]
    assert t.stats.holds == 1
    [(end, records)] = t.take_incidents()
    assert end == T0 + 10 * H and records[0]["incident_key"] == "P1:k"
    # the held package's stall deadline still comes (40 h after its scan), no second watch
    assert [a["kind"] for a in t.advance(T0 + 2 * H + 35 * H) if a["package_id"] == "HELD"] == []
    assert [a["alert_key"] for a in t.advance(T0 + 2 * H + 41 * H)
            if a["package_id"] == "HELD"] == ["HELD:stall:1"]


@pytest.mark.parametrize(("kind", "lane_to", "held"), [
    ("lane_delay", "N1", ["LEFT", "ROAD"]),        # a lane holds what departed, on the road too
    ("weather", None, ["HELD", "LEFT", "ROAD"]),   # weather: all of them
    ("facility_slowdown", None, ["HELD"]),         # a plant: only what is still inside
])
def test_a_lane_incident_holds_the_packages_on_the_road_from_its_origin(
        kind: str, lane_to: str | None, held: list[str]) -> None:
    """A package whose last scan is in transit (``TL``, no facility) after departing P1 is
    on a lane from P1: a lane (or weather) incident opening there holds it, and its record
    says where it came from (``departed_from``; its ``facility_id`` stays null). One whose
    last facility scan was no departure says nothing of a lane."""
    stats = FacilityStats(900, facilities=["P1", "P2"])
    detector = StallDetector(prior_hours={"A1": (4, 40), "T1": (4, 40), "TL": (4, 40)},
                             default_prior_hours=None, min_threshold=0, min_samples=10**9)
    t = PackageTracker(detector, allowed_lateness=0, bucket_seconds=600, watch_fraction=0.85,
                       facility_stats=stats, facility_lateness=0,
                       incidents=_OneIncident(T0 + 12 * H, kind, lane_to),  # type: ignore[arg-type]
                       hold_factor=1.0, hold_horizon=24 * H)

    def pkg(pid: str, *scans: tuple[str, str | None, int]) -> list[ScanEvent]:
        return [ScanEvent(pid, "GX", "O-1", T0, T0, service="ground",
                          promised_by_ts=T0 + 20 * H, recipient_ref=f"C-{pid}"),
                *[ScanEvent(pid, code, fac, T0 + h * H, T0 + h * H) for code, fac, h in scans]]

    t.process_batch(pkg("HELD", ("A1", "P1", 1))                        # inside P1
                    + pkg("LEFT", ("A1", "P1", 1), ("T1", "P1", 2))     # departed, no TL yet
                    + pkg("ROAD", ("A1", "P1", 1), ("T1", "P1", 2), ("TL", None, 3))
                    + pkg("ODD", ("A1", "P1", 1), ("TL", None, 3))      # TL after an arrival
                    + pkg("ELSE", ("A1", "P2", 1), ("T1", "P2", 2), ("TL", None, 3)))
    out = t.process(scan("X", "A1", T0 + 12 * H + 1, "P2"))
    watches = {a["package_id"]: a for a in out if a["kind"] == "watch"}
    assert sorted(watches) == held
    if "ROAD" in watches:
        road = watches["ROAD"]
        assert road["facility_id"] is None and road["departed_from"] == "P1"
        assert road["departed_from_name"] == "P1"  # (no facility list: its id)
        assert road["last_event_code"] == "TL" and road["silence_seconds"] == 9 * H
    if "LEFT" in watches:
        assert watches["LEFT"]["facility_id"] == "P1" and watches["LEFT"]["departed_from"] is None
    # the packages' own stalls say the same (ODD: in transit from no departure)
    later = {a["package_id"]: a for a in t.advance(T0 + 50 * H) if a["kind"] == "stall"}
    assert later["ROAD"]["departed_from"] == "P1" and later["ROAD"]["facility_id"] is None
    assert later["ODD"]["departed_from"] is None and later["ODD"]["facility_id"] is None
    assert later["ELSE"]["departed_from"] == "P2"


def _early_tracker(early: bool = True) -> PackageTracker:
    detector = StallDetector(prior_hours={"A1": (4, 40), "T1": (4, 40), "TL": (4, 40)},
                             default_prior_hours=None, min_threshold=0, min_samples=10**9)
    return PackageTracker(detector, allowed_lateness=0, bucket_seconds=600, watch_fraction=0.85,
                          hold_factor=1.0, hold_horizon=12 * H, hold_early=early)


def _early_events() -> list[ScanEvent]:
    def pkg(pid: str, code: str, facility: str | None, due: int | None) -> list[ScanEvent]:
        return [ScanEvent(pid, "GX", "O-1", T0 - 60, T0 - 60, service="ground",
                          promised_by_ts=due, recipient_ref=f"C-{pid}"),
                ScanEvent(pid, code, facility, T0, T0)]

    return (pkg("SOON", "A1", "P1", T0 + 10 * H)       # overdue at +4 h, due within 12 h
            + pkg("LATER", "A1", "P1", T0 + 30 * H)    # within 12 h of its promise at +18 h
            + pkg("SPARE", "A1", "P1", T0 + 90 * H)    # not before its own watch (+34 h)
            + pkg("LEFT", "T1", "P1", T0 + 10 * H)     # departed: the network step decides
            + pkg("ANY", "A1", "P2", None)             # no promise: at +4 h
            + pkg("AWAY", "TL", None, T0 + 10 * H)     # in transit: its own watch only
            + pkg("MOVES", "A1", "P1", T0 + 10 * H)
            + [ScanEvent("MOVES", "T1", "P1", T0 + 3 * H, T0 + 3 * H)])  # new stage: +7 h


def _early_run(t: PackageTracker, chunk: int) -> list[tuple[int, str, str, str]]:
    """The early scenario's records as (hour, kind, key, alert time), the events fed in
    chunks of ``chunk`` and the clock moved hour by hour."""
    events, out = _early_events(), []
    for i in range(0, len(events), chunk):
        out += [(0, a["kind"], a["alert_key"], a["alert_time"])
                for a in t.process_batch(events[i:i + chunk])]
    for hour in range(1, 42):
        out += [(hour, a["kind"], a["alert_key"], a["alert_time"])
                for a in t.advance(T0 + hour * H)]
    return out


def test_with_hold_early_a_package_is_watched_at_its_hold_point() -> None:
    """Several shards: a package silent at a facility for its stage's usual silence and due
    within the hold horizon gets its watch then (what an incident opening would hold with
    one shard), and the watch deadline gives way to the stall's, in the same episode."""
    t = _early_tracker()
    out = _early_run(t, chunk=100)
    watches = [(hour, key) for hour, kind, key, _ in out if kind == "watch"]
    assert watches == [(5, "SOON:watch:1"), (5, "LEFT:watch:1"), (5, "ANY:watch:1"),
                       (8, "MOVES:watch:1"), (19, "LATER:watch:1"),
                       (35, "SPARE:watch:1"), (35, "AWAY:watch:1")]  # their own watches
    assert t.stats.early == 5 and t.stats.watches == 2
    stalls = [(hour, key) for hour, kind, key, _ in out if kind == "stall"]
    assert stalls == [(41, f"{pid}:stall:1") for pid in  # 40 h after T0, in watch order
                      ("SOON", "LEFT", "ANY", "LATER", "SPARE", "AWAY")]
    # not before the hold point
    times = {key: at for _, _, key, at in out}
    assert times["SOON:watch:1"] >= datetime.fromtimestamp(T0 + 4 * H, UTC).isoformat()
    assert times["LATER:watch:1"] >= datetime.fromtimestamp(T0 + 18 * H, UTC).isoformat()

    one = [(h, k, key) for h, k, key, _ in _early_run(_early_tracker(early=False), 100)]
    assert [(h, key) for h, kind, key in one if kind == "watch"] == [  # 0.85 x 40 h
        *[(35, f"{pid}:watch:1") for pid in ("SOON", "LATER", "SPARE", "LEFT", "ANY", "AWAY")],
        (38, "MOVES:watch:1")]


def test_with_hold_early_a_package_on_the_road_is_watched_under_the_facility_it_left() -> None:
    """Several shards: a package in transit after a departure from P1 has its hold point
    too (the network step folds its watch into a lane incident from P1 when one opens);
    one in transit after no departure, and one that departed a facility without
    statistics, only their own watches."""
    detector = StallDetector(prior_hours={"A1": (4, 40), "T1": (4, 40), "TL": (4, 40)},
                             default_prior_hours=None, min_threshold=0, min_samples=10**9)
    t = PackageTracker(detector, allowed_lateness=0, bucket_seconds=600, watch_fraction=0.85,
                       hold_factor=1.0, hold_horizon=12 * H, hold_early=True,
                       facility_stats=FacilityStats(900, facilities=["P1"]),
                       facility_lateness=0)

    def pkg(pid: str, before: str, facility: str) -> list[ScanEvent]:
        return [ScanEvent(pid, "GX", "O-1", T0 - 60, T0 - 60, service="ground",
                          promised_by_ts=T0 + 10 * H, recipient_ref=f"C-{pid}"),
                ScanEvent(pid, before, facility, T0, T0),
                ScanEvent(pid, "TL", None, T0 + H, T0 + H)]

    t.process_batch(pkg("ROAD", "T1", "P1") + pkg("ODD", "A1", "P1") + pkg("AWAY", "T1", "P9"))
    out = [(hour, a) for hour in range(1, 40) for a in t.advance(T0 + hour * H)]
    watches = [(hour, a["package_id"]) for hour, a in out if a["kind"] == "watch"]
    assert watches == [(6, "ROAD"), (36, "ODD"), (36, "AWAY")]  # 1 + 4 h; 1 + 0.85 x 40 h
    road = next(a for _, a in out if a["package_id"] == "ROAD")
    assert road["facility_id"] is None and road["departed_from"] == "P1"
    assert t.stats.early == 1


def test_hold_early_does_not_depend_on_batching_and_survives_a_snapshot() -> None:
    expected = _early_run(_early_tracker(), chunk=100)
    for chunk in (1, 2, 5):
        assert _early_run(_early_tracker(), chunk) == expected
    t = _early_tracker()
    t.process_batch(_early_events())
    resumed = pickle.loads(pickle.dumps(t))
    later = [(hour, a["kind"], a["alert_key"], a["alert_time"])
             for hour in range(1, 42) for a in resumed.advance(T0 + hour * H)]
    assert later == expected


def test_auto_hubs_leave_out_a_post_office_that_scans_processing_complete() -> None:
    """USPS delivery units scan PC ("sorting/processing complete") too: not a hub code."""
    from detectors.facility import FacilityStats

    stats = FacilityStats(900, facilities="auto")
    day = 1_790_000_000 - 1_790_000_000 % 86400
    stats.observe("O1", "07", day + 60, "N1", "T1", day)
    stats.observe("O1", "PC", day + 120, "O1", "07", day + 60)
    stats.observe("N1", "A1", day + 180)
    assert stats.facilities == {"N1"}


def test_a_package_held_long_that_moves_on_late_sends_moved_late() -> None:
    """``late_move_p``: a package nobody was told about that leaves a monitored facility
    after more than its stage's usual silence, and whose estimate from the new scan misses
    its promise, is reported when it moves (the network step folds it into the incident
    that held it); one that was not held long, one still on time, and one at a facility
    without statistics are not."""
    t = _late_move_tracker(None)
    out = t.process_batch(
        _held("LATE", "P1", 10, 20)        # held 10 h (usual 4 h), then 20-30 h more: late
        + _held("QUICK", "P1", 3, 20)      # left within its usual 4 h
        + _held("SPARE", "P1", 10, 60)     # held, but due in 50 h: on time
        + _held("ELSEWHERE", "P9", 10, 20))  # no statistics at P9: no incident could hold it
    late = [a for a in out if a["kind"] == "moved_late"]
    assert [a["package_id"] for a in late] == ["LATE"]
    [record] = late
    assert record["facility_id"] == "P1" and record["last_event_code"] == "A1"
    assert record["alert_key"] == "LATE:moved_late:1" and record["p_late"] >= 0.9
    assert record["silence_seconds"] == 10 * H and record["moved_to"] is None  # (inside P1)
    assert record["new_estimate"] > record["promised_by"]  # from the new scan
    # decided once every shard has passed the move, not at the watermark 6 h before it
    assert record["watermark"] == T0 + 10 * H and record["alert_time"] == _iso(T0 + 10 * H)
    assert t.stats.late_moves == 1
    # it is its own episode: a later stall of the same package is another one
    later = [a["alert_key"] for a in t.advance(T0 + 10 * H + 48 * H)  # watermark: -6 h
             if a["package_id"] == "LATE"]
    assert later == ["LATE:watch:2", "LATE:stall:2"]


def test_with_one_shard_only_packages_an_incident_may_have_held_are_checked() -> None:
    """One shard knows its incidents: a late move is looked at only where a delay incident
    covered the facility during the silence (the network step decides the rest)."""
    t = _late_move_tracker(_OneIncident(at=T0 + 5 * H))
    out = t.process_batch(_held("AT_P1", "P1", 10, 20) + _held("AT_P2", "P2", 10, 20))
    assert [a["package_id"] for a in out if a["kind"] == "moved_late"] == ["AT_P1"]
    t = _late_move_tracker(_OneIncident(at=T0 + 50 * H))  # opens after they left
    out = t.process_batch(_held("AT_P1", "P1", 10, 20) + _held("AT_P2", "P2", 10, 20))
    assert [a for a in out if a["kind"] == "moved_late"] == []


def test_a_package_held_on_the_road_by_a_lane_incident_sends_moved_late() -> None:
    """A package in transit from P1 (departed, then ``TL``) while a lane incident from P1
    is open, that arrives after more than the usual silence on the road and late, sends
    ``moved_late`` naming the lane's origin; one in transit after no departure, and one
    from a facility without statistics, do not."""
    t = _late_move_tracker(_OneIncident(at=T0 + 5 * H, kind="lane_delay", lane_to="P2"))

    def road(pid: str, before: str, origin: str) -> list[ScanEvent]:
        return [ScanEvent(pid, "GX", "O-1", T0 - 60, T0 - 60, service="ground",
                          promised_by_ts=T0 + 20 * H, recipient_ref=f"C-{pid}"),
                ScanEvent(pid, "A1", origin, T0, T0),
                ScanEvent(pid, before, origin, T0 + H, T0 + H),
                ScanEvent(pid, "TL", None, T0 + 2 * H, T0 + 2 * H)]

    events = road("ROAD", "T1", "P1") + road("ODD", "A1", "P1") + road("AWAY", "T1", "P9")
    events += [ScanEvent("TICK", "A1", "P3", T0 + h * H, T0 + h * H) for h in range(3, 12)]
    events += [ScanEvent(pid, "T1", "P2", T0 + 12 * H, T0 + 12 * H)
               for pid in ("ROAD", "ODD", "AWAY")]  # 10 h on the road (usual 4 h)
    late = [a for a in t.process_batch(events) if a["kind"] == "moved_late"]
    assert [a["package_id"] for a in late] == ["ROAD"]
    assert late[0]["facility_id"] is None and late[0]["departed_from"] == "P1"
    assert late[0]["last_event_code"] == "TL" and late[0]["silence_seconds"] == 10 * H
    assert late[0]["moved_to"] == "P2"  # off the road there: the lane it came by


def test_one_shard_checks_a_late_move_past_the_windows_it_has_closed() -> None:
    """One shard checks a late move only where an incident it knows of held the package;
    but a move past the facility windows it has closed (``facility_lateness``, here 2 h) may
    have been held by an incident opening in them: it is checked then, as several shards
    check every move, and the network step decides. (A lane incident opens on the first
    late arrivals: the next packages off the lane arrive within that lag.)"""
    def events() -> list[ScanEvent]:
        return [ScanEvent("ROAD", "GX", "O-1", T0 - 60, T0 - 60, service="ground",
                          promised_by_ts=T0 + 20 * H, recipient_ref="C-ROAD"),
                ScanEvent("ROAD", "A1", "P1", T0, T0),
                ScanEvent("ROAD", "T1", "P1", T0 + H, T0 + H),
                ScanEvent("ROAD", "TL", None, T0 + 2 * H, T0 + 2 * H),
                *[ScanEvent("TICK", "A1", "P3", T0 + h * H, T0 + h * H) for h in range(3, 12)],
                ScanEvent("ROAD", "T1", "P2", T0 + 12 * H, T0 + 12 * H),  # 10 h on the road
                *[ScanEvent("TICK", "A1", "P3", T0 + h * H, T0 + h * H) for h in range(13, 16)]]

    lane = _OneIncident(at=T0 + 11 * H, kind="lane_delay", lane_to="P2")
    for desk in (None, lane):  # several shards (no incidents here), one shard
        t = _late_move_tracker(desk)
        t.facility_lateness = 2 * H
        out = t.process_batch(events())
        assert [a["package_id"] for a in out if a["kind"] == "moved_late"] == ["ROAD"]
    assert lane.done  # (it opened at the window ending T0 + 11 h, known after the move)


def test_a_held_package_still_on_time_as_it_moves_on_is_looked_at_again() -> None:
    """``late_again_p``: a package the incident held that left still on time by the estimate
    from its departure is looked at again at its later scans; the first whose estimate
    misses the promise sends the ``moved_late`` record of the hold (where and since when it
    sat, for how long; the estimate from the later scan), once. One that was not held (it
    left within its usual silence), one held where no incident was, and the same package
    with the setting off, send nothing. The hold survives a snapshot."""
    def run(again: float | None, *, snapshot: bool = False) -> list[dict[str, Any]]:
        t = _late_move_tracker(_OneIncident(at=T0 + 5 * H))
        t.late_again_p = again
        for k in range(200):  # from an arrival at P2, delivered 30 to 35 h later
            at = T0 - 10 * 86400 + k * 400
            t.estimator.learn_one({"service": "ground",  # type: ignore[union-attr]
                                   "delivered_ts": at + (30 + k % 6) * H,
                                   "scans": [("P2", "A1", at)]})
        out = t.process_batch(_held("HELD", "P1", 10, 36)      # left 10 h late, due in 36 h
                              + _held("QUICK", "P1", 3, 36)    # left within its usual 4 h
                              + _held("AWAY", "P2", 10, 36))   # held where no incident was
        if snapshot:
            t = pickle.loads(pickle.dumps(t))
        later = [ScanEvent(pid, "TL", None, T0 + 12 * H, T0 + 12 * H)
                 for pid in ("HELD", "QUICK", "AWAY")]
        later += [ScanEvent(pid, "A1", "P2", T0 + 14 * H, T0 + 14 * H)  # 2 h on the road
                  for pid in ("HELD", "QUICK", "AWAY")]
        later += [ScanEvent("HELD", "T1", "P2", T0 + 16 * H, T0 + 16 * H)]
        return [a for a in out + t.process_batch(later) if a["kind"] == "moved_late"]

    assert run(None) == []  # off: the estimate from the departure (20-30 h, due in 26 h) is on time
    [record] = run(0.9)
    assert record["package_id"] == "HELD" and record["alert_key"] == "HELD:moved_late:1"
    assert (record["facility_id"], record["last_event_code"]) == ("P1", "A1")
    assert record["last_scan_time"] == _iso(T0) and record["silence_seconds"] == 10 * H
    assert record["alert_time"] == _iso(T0 + 14 * H) and record["p_late"] >= 0.9
    assert record["new_estimate"] > record["promised_by"]  # from the arrival at P2
    assert record["watermark"] == T0 + 14 * H
    assert "held 10 h at P1" in record["evidence"]
    assert run(0.9, snapshot=True) == [record]


def test_several_shards_send_every_hold_left_on_time_and_the_later_scan_that_is_late() -> None:
    """Several shards (no incidents here, ``late_again_p`` set): a hold the package left
    still on time goes to the network step as a ``held`` record (where, since when, how
    long; the network step keeps it if a delay incident covered it), wherever it was; the
    first later scan whose estimate misses the promise by ``late_again_p`` sends a
    ``late_again`` (that scan's estimate, the name of where it was made), once. A package
    that left within its usual silence sends neither; with ``late_again_p`` off, nothing."""
    def run(again: float | None) -> list[dict[str, Any]]:
        t = _late_move_tracker(None)
        t.late_again_p = again
        _arrival_estimates(t, hours=40)  # from P2: 40 to 45 h more
        out = t.process_batch(_held("HELD", "P1", 10, 36) + _held("QUICK", "P1", 3, 36))
        later = [ScanEvent(pid, "TL", None, T0 + 12 * H, T0 + 12 * H)
                 for pid in ("HELD", "QUICK")]
        later += [ScanEvent(pid, "A1", "P2", T0 + 14 * H, T0 + 14 * H)
                  for pid in ("HELD", "QUICK")]
        later += [ScanEvent("HELD", "T1", "P2", T0 + 16 * H, T0 + 16 * H)]
        return [a for a in out + t.process_batch(later)
                if isinstance(a, Held) or a["kind"] in ("late_again", "moved_late")]

    assert run(None) == []
    held, late = run(0.93)
    assert held == Held("HELD", "P1", None, "A1", T0, T0 + 10 * H, None, "P1", None,
                        T0 + 10 * H)  # made: decided once the windows up to the move are in
    assert held.fields()["last_scan_time"] == _iso(T0)
    assert held.fields()["silence_seconds"] == 10 * H
    assert held.text() == f"held 10 h at P1 until {_iso(T0 + 10 * H)}"
    assert late["kind"] == "late_again" and late["package_id"] == "HELD"
    assert late["alert_time"] == _iso(T0 + 14 * H) and late["p_late"] >= 0.93
    assert late["scanned_at"] == "P2" and late["new_estimate"] > late["promised_by"]
    assert late["watermark"] == T0 + 14 * H


def test_several_shards_check_a_watched_package_that_moves_on_and_flag_holds_behind() -> None:
    """Several shards: a watch tells nobody yet (the network step decides), so a watched
    package that moves on late after a long silence gets its ``moved_late`` beside its
    ``moved`` (one shard: only ``moved``, a watch there is an incident's or a told one).
    A ``moved_late`` of a package with holds sent before says ``again`` (if no incident
    held it there, the network step looks at those) and where it was scanned."""
    def run(desk: _OneIncident | None) -> list[tuple[str, bool]]:
        t = _late_move_tracker(desk)
        t.late_again_p = 0.93
        _arrival_estimates(t, hours=60)
        ev = _held("P", "P1", 10, 60)  # left after 10 h, still on time: a hold
        ev += [ScanEvent("P", "A1", "P2", T0 + 11 * H, T0 + 11 * H)]
        # watched at 11 + 0.85 x 40 = 45 h (the watermark trails by 6 h), stall at 51 h
        ev += [ScanEvent("TICK", "A1", "P3", T0 + h * H, T0 + h * H) for h in range(12, 54)]
        ev += [ScanEvent("P", "T1", "P2", T0 + 54 * H, T0 + 54 * H)]  # 43 h: watched, late
        ev.sort(key=lambda e: e.event_ts)
        out = t.process_batch(ev)
        return [("held", False, None) if isinstance(a, Held) else
                (a["kind"], bool(a.get("again")), a.get("scanned_at")) for a in out
                if isinstance(a, Held) or a["kind"] in ("moved", "moved_late", "late_again")]

    assert run(None) == [("held", False, None), ("moved", False, None),
                         ("moved_late", True, "P2")]
    assert run(_OneIncident(at=T0 + 100 * H)) == [("moved", False, None)]


def _arrival_estimates(t: PackageTracker, hours: int = 30, spread: int = 6) -> None:
    """Teach ``t``'s estimator that from an arrival at P2 a package takes ``hours`` to
    ``hours + spread - 1`` h more."""
    for k in range(200):
        at = T0 - 10 * 86400 + k * 400
        t.estimator.learn_one({"service": "ground",  # type: ignore[union-attr]
                               "delivered_ts": at + (hours + k % spread) * H,
                               "scans": [("P2", "A1", at)]})


def test_a_package_held_twice_is_told_once_of_the_hold_an_incident_was_known_for() -> None:
    """A package held at P1 leaves on time (its hold remembered), comes back, is held again
    and leaves late: one ``moved_late``, the first hold's (the incident known to hold it),
    made at the scan that found it late; nothing more at the next scan."""
    t = _late_move_tracker(_OneIncident(at=T0 + 5 * H))
    t.late_again_p = 0.93
    _arrival_estimates(t)
    ev = [ScanEvent("P", "GX", "O-1", T0 - 60, T0 - 60, service="ground",
                    promised_by_ts=T0 + 50 * H, recipient_ref="C-P"),
          ScanEvent("P", "A1", "P1", T0, T0)]
    ev += [ScanEvent("TICK", "A1", "P3", T0 + h * H, T0 + h * H) for h in range(1, 40)]
    ev += [ScanEvent("P", "T1", "P1", T0 + 10 * H, T0 + 10 * H),   # hold 1: left on time
           ScanEvent("P", "A1", "P1", T0 + 11 * H, T0 + 11 * H),   # (back in)
           ScanEvent("P", "T1", "P1", T0 + 30 * H, T0 + 30 * H),   # hold 2: 19 h, late
           ScanEvent("P", "A1", "P2", T0 + 32 * H, T0 + 32 * H)]   # the next scan
    ev.sort(key=lambda e: e.event_ts)
    late = [(a["alert_key"], a["last_scan_time"]) for a in t.process_batch(ev)
            if a["kind"] == "moved_late"]
    assert late == [("P:moved_late:1", _iso(T0))]
    assert t._held == {}


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _held(pid: str, facility: str, held: float, due: float) -> list[ScanEvent]:
    """A package at ``facility`` from T0, departing ``held`` hours later, due ``due`` h after
    T0 (facility windows of 1 h close as the scans come)."""
    return [ScanEvent(pid, "GX", "O-1", T0 - 60, T0 - 60, service="ground",
                      promised_by_ts=T0 + int(due * H), recipient_ref=f"C-{pid}"),
            ScanEvent(pid, "A1", facility, T0, T0),
            *[ScanEvent("TICK", "A1", "P3", T0 + h * H, T0 + h * H) for h in range(1, 10)],
            ScanEvent(pid, "T1", facility, T0 + int(held * H), T0 + int(held * H))]


def _late_move_tracker(desk: _OneIncident | None) -> PackageTracker:
    """A tracker with a delivery estimator taught that from a departure at P1, P2 or P9 a
    package takes 20 to 30 h more, and ``late_move_p`` 0.9."""
    import random

    from detectors import DeliveryEstimator

    rng = random.Random(7)
    estimator = DeliveryEstimator(min_samples=20)
    for _ in range(200):  # from a departure, delivered 20 to 30 h later
        t = T0 - 10 * 86400 + rng.randrange(86400)
        for fac in ("P1", "P2", "P9"):
            estimator.learn_one({"service": "ground", "delivered_ts": t + rng.uniform(20, 30) * H,
                                 "scans": [(fac, "T1", t)]})
    detector = StallDetector(prior_hours={"A1": (4, 40), "T1": (4, 40), "TL": (4, 40)},
                             default_prior_hours=None, min_threshold=0, min_samples=10**9)
    return PackageTracker(detector, estimator, allowed_lateness=6 * H, bucket_seconds=600,
                          watch_fraction=0.85,
                          facility_stats=FacilityStats(3600, facilities=["P1", "P2", "P3"]),
                          facility_lateness=0, late_move_p=0.9, eta_sample_every=0,
                          incidents=desk)  # type: ignore[arg-type]


def test_next_change_is_the_first_event_time_at_which_advancing_does_anything() -> None:
    """Before ``next_change()`` moving the clock fires no bucket and closes no window; at it,
    one of the two happens (a live flow sleeps until then). Stepping from change to change
    gives the alerts that stepping second by second gives."""

    def fresh() -> PackageTracker:
        t = tracker(watch=0.5, stats=FacilityStats(900, facilities={"P1"}))
        t.process_batch([header("P", T0), scan("P", "A1", T0 + 60), header("Q", T0 + 100),
                         scan("Q", "A1", T0 + 130)])
        return t

    t = fresh()
    got = []
    while t.max_event_ts < T0 + 12 * H:
        due = t.next_change()
        assert due > t.max_event_ts
        before = (t._fired_through, t.facility_through)
        assert t.advance(due - 1) == []
        assert (t._fired_through, t.facility_through) == before
        assert t.next_change() == due
        got += t.advance(due)
        assert (t._fired_through, t.facility_through) != before
    assert kinds(got) == [("watch", "P:watch:1"), ("watch", "Q:watch:1")]
    every = fresh()
    seconds = []
    for ts in range(T0 + 131, t.max_event_ts + 1):  # as a one-second timer would
        seconds += every.advance(ts)
    assert seconds == got
