"""IncidentFolder: which incident, if any, explains a stall alert."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from detectors.folding import IncidentFolder

T0 = datetime(2026, 10, 1, tzinfo=UTC)


def iso(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def record(kind: str, status: str, opened: float, resolved: float | None = None, *,
           facility: str = "P1", lane_to: str | None = None, facilities: str = "",
           key: str | None = None) -> dict[str, Any]:
    return {
        "incident_key": key or f"{facility}:{kind}:{opened}",
        "kind": kind, "facility_id": facility, "lane_to": lane_to, "status": status,
        "opened_at": iso(opened), "resolved_at": None if resolved is None else iso(resolved),
        "score": 2.0, "affected_packages": 40, "facilities": facilities or facility,
        "evidence": f"{kind} at {facility}.",
    }


def stall(facility: str = "P1", last: float = 0, at: float = 30, code: str = "A1",
          pid: str = "9400") -> dict[str, Any]:
    return {"alert_key": f"{pid}:stall:1", "kind": "stall", "package_id": pid, "episode": 1,
            "facility_id": facility, "last_event_code": code, "last_scan_time": iso(last),
            "alert_time": iso(at), "evidence": "No scan for 30 h."}


def test_an_incident_open_while_the_package_sat_there_folds_the_alert() -> None:
    folder = IncidentFolder(grace_seconds=3600)
    folder.observe(record("facility_slowdown", "open", opened=5))
    decision, alert = folder.decide(stall(last=2, at=30))
    assert decision == "fold"
    assert alert["kind"] == "incident_delay"
    assert alert["alert_key"] == "9400:incident_delay:1"
    assert alert["incident_key"] == "P1:facility_slowdown:5"
    assert alert["incident_kind"] == "facility_slowdown"
    assert alert["evidence"].startswith("facility_slowdown at P1.")
    assert alert["evidence"].endswith("No scan for 30 h.")
    assert (folder.folded, folder.kept) == (1, 0)


@pytest.mark.parametrize(
    ("opened", "resolved", "expected"),
    [
        (5, 10, "fold"),      # open for a while during the silence, resolved before the alert
        (-10, -1, "keep"),    # resolved before the package's last scan: unrelated
        (30.5, None, "fold"),  # opened within the grace after the alert
        (31.5, None, "keep"),  # opened after the grace: the stall is told as a stall
    ],
)
def test_the_incident_must_overlap_the_silence_or_the_grace(
    opened: float, resolved: float | None, expected: str
) -> None:
    folder = IncidentFolder(grace_seconds=3600)
    folder.observe(record("facility_slowdown", "open", opened))
    if resolved is not None:
        folder.observe(record("facility_slowdown", "resolved", opened, resolved))
    assert folder.decide(stall(last=0, at=30))[0] == expected


def test_an_incident_elsewhere_does_not_fold_and_other_kinds_pass() -> None:
    folder = IncidentFolder()
    folder.observe(record("facility_stop", "open", 1, facility="P2"))
    assert folder.decide(stall(facility="P1"))[0] == "keep"
    back = {"kind": "back_on_track", "package_id": "9400", "facility_id": "P2",
            "alert_time": iso(40)}
    assert folder.decide(back) == ("keep", back)


def test_a_feed_outage_suppresses_and_a_delay_kind_wins_over_it() -> None:
    folder = IncidentFolder()
    folder.observe(record("feed_outage", "open", 1))
    assert folder.decide(stall())[0] == "suppress"
    folder.observe(record("facility_slowdown", "open", 3))
    decision, alert = folder.decide(stall())
    assert decision == "fold" and alert["incident_kind"] == "facility_slowdown"
    assert folder.suppressed == 1


def test_weather_covers_every_facility_it_lists_including_ones_added_later() -> None:
    folder = IncidentFolder()
    folder.observe(record("weather", "open", 1, facility="P1", facilities="P1 N1",
                          key="W"))
    assert folder.decide(stall(facility="N1"))[0] == "fold"
    assert folder.decide(stall(facility="P9"))[0] == "keep"
    folder.observe(record("weather", "update", 1, facility="P1", facilities="P1 N1 P9",
                          key="W"))
    assert folder.decide(stall(facility="P9"))[1]["incident_key"] == "W"


def epoch(hours: float) -> int:
    return int((T0 + timedelta(hours=hours)).timestamp())


def test_a_facility_weather_adds_later_is_covered_from_then() -> None:
    """Weather over P2 and P3 from 08:00 spreads to P1 at 12:00; a slowdown opened at P1
    at 10:00. A package at P1 since 02:00 was held by the slowdown, not by weather that was
    not there yet; one silent at P1 only from 11:00 to 11:30 was held by neither."""
    folder = IncidentFolder(grace_seconds=3600)
    folder.observe(record("weather", "open", 8, facility="P2", facilities="P2 P3", key="W"),
                   epoch(8))
    folder.observe(record("facility_slowdown", "open", 10, key="S"), epoch(10))
    folder.observe(record("weather", "update", 8, facility="P2", facilities="P1 P2 P3",
                          key="W"), epoch(12))
    for at in (10.5, 12.5, 30):
        assert folder.decide(stall(last=2, at=at))[1]["incident_key"] == "S"
    folder.observe(record("facility_slowdown", "resolved", 10, 11, key="S"), epoch(11))
    assert folder.decide(stall(last=2, at=10.5))[1]["incident_key"] == "S"
    assert folder.decide(stall(last=13, at=30))[1]["incident_key"] == "W"  # after it came
    again = pickle.loads(pickle.dumps(folder))  # the facilities' start is kept
    assert again.decide(stall(last=13, at=30)) == folder.decide(stall(last=13, at=30))
    # without a time (a notebook feeding records alone): covered from the opening, as before
    plain = IncidentFolder()
    plain.observe(record("weather", "open", 8, facility="P2", facilities="P2", key="W"))
    plain.observe(record("weather", "update", 8, facility="P2", facilities="P1 P2", key="W"))
    assert plain.decide(stall(last=9, at=9.5))[1]["incident_key"] == "W"


def test_an_incident_still_open_explains_a_silence_before_one_that_resolved() -> None:
    """A stop at P1 from 01:00 to 05:00; a package scanned there at 04:45 is still silent at
    18:00, while P1's feed has been out since 08:00: the feed outage explains it (nobody is
    told), not the stop that cleared 13 h before. With two delay incidents, the open one."""
    folder = IncidentFolder(grace_seconds=3600)
    folder.observe(record("facility_stop", "open", 1, key="STOP"))
    folder.observe(record("facility_stop", "resolved", 1, 5, key="STOP"))
    folder.observe(record("feed_outage", "open", 8, key="FEED"))
    assert folder.decide(stall(last=4.75, at=18))[0] == "suppress"
    assert folder.decide(stall(last=4.75, at=5.5))[1]["incident_key"] == "STOP"  # not out yet
    folder.observe(record("facility_slowdown", "open", 11, key="SLOW"))
    assert folder.decide(stall(last=4.75, at=18))[1]["incident_key"] == "SLOW"
    folder.observe(record("feed_outage", "resolved", 8, 9, key="FEED"))
    folder.observe(record("facility_slowdown", "resolved", 11, 12, key="SLOW"))
    # none open at the alert: delay kinds first, then the one that covered P1 first
    assert folder.decide(stall(last=4.75, at=18))[1]["incident_key"] == "STOP"


def test_an_old_snapshot_of_the_folder_still_loads() -> None:
    folder = IncidentFolder()
    folder.observe(record("facility_slowdown", "open", 5))
    [interval] = folder._by_key.values()
    slots = {name: getattr(interval, name) for name in interval.__slots__ if name != "added"}
    old = type(interval).__new__(type(interval))
    old.__setstate__((None, slots))  # as pickled before ``added``
    assert old.added == {} and old.key == interval.key


def test_a_lane_delay_covers_only_packages_that_departed_on_it() -> None:
    folder = IncidentFolder()
    folder.observe(record("lane_delay", "open", 1, facility="P1", lane_to="N2"))
    assert folder.decide(stall(code="T1"))[0] == "fold"
    assert folder.decide(stall(code="A1"))[0] == "keep"  # still inside P1: not on the lane


def test_a_package_in_transit_is_covered_by_the_lane_from_the_facility_it_departed() -> None:
    """In transit (``TL``) a package has no facility; ``departed_from`` names the lane's
    origin. A lane or weather incident there holds it; a slowdown there does not (it left),
    and without ``departed_from`` nothing does."""
    on_road = stall(facility=None, code="TL") | {"departed_from": "P1"}  # type: ignore[arg-type]
    folder = IncidentFolder()
    folder.observe(record("facility_slowdown", "open", 1, facility="P1"))
    assert folder.decide(on_road)[0] == "keep"
    folder.observe(record("lane_delay", "open", 1, facility="P1", lane_to="N2"))
    decision, alert = folder.decide(on_road)
    assert decision == "fold" and alert["incident_key"] == "P1:lane_delay:1"
    assert alert["facility_id"] is None and alert["departed_from"] == "P1"
    assert folder.decide(on_road | {"departed_from": None})[0] == "keep"
    assert folder.decide(on_road | {"departed_from": "P2"})[0] == "keep"
    weather = IncidentFolder()
    weather.observe(record("weather", "open", 1, facility="P0", facilities="P0 P1"))
    assert weather.decide(on_road)[0] == "fold"


def test_a_package_off_the_road_late_is_held_by_the_lane_it_came_by_only() -> None:
    """A ``moved_late`` off the road names where it came off it (``moved_to``): only the lane
    incident of that lane holds it, and one that opens up to ``lane_wait_seconds`` after it
    arrived still does (a lane incident opens on such late arrivals); a lane incident from
    the same origin to another hub does not, nor one opened after the wait. Without the wait
    (the default), only lanes open by the arrival count, as for every late move."""
    late = stall(facility=None, last=0, at=20, code="TL") | {  # type: ignore[arg-type]
        "kind": "moved_late", "departed_from": "P1", "moved_to": "N2"}
    folder = IncidentFolder(lane_wait_seconds=6 * 3600)
    folder.observe(record("lane_delay", "open", 22, facility="P1", lane_to="N3"))
    assert folder.decide(late)[0] == "keep"  # another lane from P1
    folder.observe(record("lane_delay", "open", 27, facility="P1", lane_to="N2"))
    assert folder.decide(late)[0] == "keep"  # opened 7 h after it arrived
    folder.observe(record("lane_delay", "open", 25, facility="P1", lane_to="N2", key="k"))
    decision, alert = folder.decide(late)
    assert decision == "fold" and alert["incident_key"] == "k"
    assert IncidentFolder().decide(late)[0] == "keep"
    plain = IncidentFolder()
    plain.observe(record("lane_delay", "open", 19, facility="P1", lane_to="N3"))
    assert plain.decide(late | {"moved_to": None})[0] == "fold"  # (lane not known: any)
    assert plain.decide(late)[0] == "keep"
    assert pickle.loads(pickle.dumps(folder)).decide(late)[0] == "fold"


def test_a_hold_looked_at_again_is_held_by_what_held_it_until_it_left() -> None:
    """A ``moved_late`` made at a scan after the move (``late_again_p``) has its move at the
    end of its silence (``last_scan_time + silence_seconds``), not at ``alert_time``: an
    incident opened after the package had left does not take its hold (here a feed outage,
    which would have told nobody), the one that held it does."""
    late = stall(last=0, at=14, code="A1") | {"kind": "moved_late", "silence_seconds": 10 * 3600}
    folder = IncidentFolder()
    folder.observe(record("facility_slowdown", "open", 5))
    folder.observe(record("facility_slowdown", "resolved", 5, 11))
    folder.observe(record("feed_outage", "open", 12))
    decision, alert = folder.decide(late)
    assert decision == "fold" and alert["incident_key"] == "P1:facility_slowdown:5"
    assert folder.decide(late | {"silence_seconds": 13 * 3600})[0] == "suppress"


def test_open_state_resolution_and_pruning() -> None:
    folder = IncidentFolder(retention_seconds=86400)
    folder.observe(record("facility_stop", "open", 1, key="S"))
    assert folder.is_open("S") and folder.resolved_at("S") is None
    assert folder.open_by_kind() == {"facility_stop": 1}
    folder.observe(record("facility_stop", "resolved", 1, 6, key="S"))
    assert not folder.is_open("S")
    assert folder.resolved_at("S") == int((T0 + timedelta(hours=6)).timestamp())
    assert folder.open_by_kind() == {}
    folder.prune(int((T0 + timedelta(hours=6 + 23)).timestamp()))
    assert folder.resolved_at("S") is not None  # within retention
    folder.prune(int((T0 + timedelta(hours=6 + 25)).timestamp()))
    assert folder.resolved_at("S") is None
    assert folder.decide(stall(last=0, at=5))[0] == "keep"
    folder.observe(record("facility_stop", "resolved", 1, 6, key="S"))  # late echo: ignored
    assert folder.open_by_kind() == {}


def test_the_folder_pickles_with_its_incidents() -> None:
    folder = IncidentFolder()
    folder.observe(record("facility_slowdown", "open", 5))
    again = pickle.loads(pickle.dumps(folder))
    assert again.decide(stall(last=2, at=30)) == folder.decide(stall(last=2, at=30))
