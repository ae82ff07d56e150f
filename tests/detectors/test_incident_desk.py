"""IncidentDesk: monitor + lifecycle per window end, and its warm-up."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from detectors.facility import Assessment, FacilityWindow
from detectors.incidents import IncidentDesk, IncidentManager

T0 = 1_790_208_000  # a window boundary
H = 3600


class _Alarmed:
    """A monitor that finds every facility slow, always (to see what the desk lets through)."""

    def assess(self, windows: list[FacilityWindow], lanes: object = None,
               weather_open: object = None) -> list[Assessment]:
        return [Assessment(w.facility, w.end, 3.0, "facility_slowdown", "slow", 10)
                for w in windows]


def windows(hours: float, facilities: tuple[str, ...] = ("P1",)) -> list[FacilityWindow]:
    out = []
    for i in range(int(hours * 4)):
        out += [FacilityWindow(f, T0 + 900 * i, T0 + 900 * (i + 1)) for f in facilities]
    return out


def opened(records: list[tuple[int, list[dict[str, Any]]]]) -> list[tuple[int, str]]:
    return [(end - T0, r["incident_key"]) for end, rs in records for r in rs
            if r["status"] == "open"]


def test_without_warm_up_an_alarmed_monitor_opens_at_once() -> None:
    desk = IncidentDesk(_Alarmed(), IncidentManager(for_windows=2))
    assert opened(desk.assess_closed(windows(1))) == [(1800, "P1:facility_slowdown:"
                                                            "20260924T0030Z")]


def test_a_facility_counts_only_after_its_warm_up_and_each_has_its_own() -> None:
    desk = IncidentDesk(_Alarmed(), IncidentManager(for_windows=2), warm_up_seconds=6 * 3600)
    first = desk.assess_closed(windows(5))
    assert opened(first) == []  # 5 h < 6 h: learning
    again = pickle.loads(pickle.dumps(desk))  # the warm-up clock survives a snapshot
    later = [FacilityWindow(f, T0 + 900 * i, T0 + 900 * (i + 1))
             for i in range(20, 28) for f in ("P1", "P2")]  # P2 is seen from 5 h on
    got = opened(again.assess_closed(later))
    assert [key.split(":")[0] for _, key in got] == ["P1"]
    # P1 was first seen at the end of its first window (900 s): it counts from 6 h after
    # that, and a slowdown opens after two windows that count
    assert got[0][0] == 900 + 6 * 3600 + 900


class _Stormy:
    """A monitor that finds region R (hubs P1, P2; its subject A0, the region's first hub
    in the facility list, never scans) under weather, always."""

    def assess(self, windows: list[FacilityWindow], lanes: object = None,
               weather_open: object = None) -> list[Assessment]:
        end = windows[0].end
        return [Assessment("A0", end, 2.0, "weather", "storm", 20, None, ("P1", "P2"))]


def test_a_region_warms_up_with_the_hubs_it_names_not_its_subject_id() -> None:
    """Review finding: the region's subject is its first hub by id, which may never scan (a
    hub listed before it goes live); its warm-up is that of the hubs it names, else weather
    would never open there."""
    desk = IncidentDesk(_Stormy(), IncidentManager(for_windows=2), warm_up_seconds=3600,
                        keep_figures=True)
    got = opened(desk.assess_closed(windows(3, ("P1", "P2"))))
    assert got == [(900 + 3600 + 900, "A0:weather:20260924T0130Z")]
    rows = [row for _, rs in desk.take_figures() for row in rs]
    assert [r["learning"] for r in rows[:4]] == [True] * 4  # as the region's assessment
    assert rows[-1]["subject"] == "region" and rows[-1]["learning"] is False


class _StormyRegion(_Stormy):
    regions = {"A0": "R", "P1": "R", "P2": "R", "N9": "R"}


def test_a_region_warms_up_once_every_hub_of_it_that_scans_has() -> None:
    """N9 (the region's NDC) scans from 30 min after the plants: the region's weather counts
    only once N9 too is past its warm-up; A0, listed but never scanning, does not hold it
    back."""
    desk = IncidentDesk(_StormyRegion(), IncidentManager(for_windows=2), warm_up_seconds=3600)
    plants = windows(0.5, ("P1", "P2"))
    later = [FacilityWindow(f, T0 + 900 * i, T0 + 900 * (i + 1))
             for i in range(2, 16) for f in ("P1", "P2", "N9")]
    got = opened(desk.assess_closed(plants) + desk.assess_closed(later))
    # N9's first window ends at 45 min: warm from 1 h 45 min, open after two windows
    assert got == [(3 * 900 + 3600 + 900, "A0:weather:20260924T0200Z")]


def test_a_hub_going_live_mid_incident_does_not_end_the_regions_weather() -> None:
    """Review finding: N9 scans for the first time while the region's weather is open; the
    region must not turn "learning" (its incident would resolve as no longer observed and
    reopen under a new key a warm-up later)."""
    desk = IncidentDesk(_StormyRegion(), IncidentManager(for_windows=2),
                        warm_up_seconds=3 * 3600)
    early = windows(4, ("P1", "P2"))  # weather opens at 3 h 30 min
    later = [FacilityWindow(f, T0 + 900 * i, T0 + 900 * (i + 1))
             for i in range(16, 48) for f in ("P1", "P2", "N9")]  # N9 from 4 h on
    records = [r for _, rs in desk.assess_closed(early) + desk.assess_closed(later) for r in rs]
    assert [(r["status"], r["incident_key"]) for r in records
            if r["status"] != "update"] == [("open", "A0:weather:20260924T0330Z")]


class _EveryLane:
    """A FacilityMonitor that assesses every lane with recent traffic, as before the desk
    named the lanes it needs."""

    def __init__(self) -> None:
        from detectors.facility import FacilityMonitor

        self.monitor = FacilityMonitor()

    def assess(self, windows: list[FacilityWindow], lanes: object = None,
               weather_open: object = None) -> list[Assessment]:
        return self.monitor.assess(windows)


def lane_windows() -> list[FacilityWindow]:
    """P1 sends a package an hour to N1 and to N2 (3 h transit); 40 h in, the trucks to N1
    take 30 h for 6 h, then the lane is normal again."""
    out = []
    for i in range(4 * 96):
        lanes = {}
        if i % 4 == 0:
            slow = 160 <= i < 184
            lanes = {"N1": (3, 3 * 30 * H if slow else 3 * 3 * H, 30 * H if slow else 3 * H),
                     "N2": (2, 2 * 3 * H, 3 * H)}
        out.append(FacilityWindow("P1", T0 + 900 * i, T0 + 900 * (i + 1), lanes=lanes))
    return out


def test_lanes_scoring_0_are_left_out_only_where_they_change_nothing() -> None:
    """The desk asks the monitor only for lanes that can score or that it tracks: the
    incident records are those of a monitor that assesses every lane (the lane's own
    evidence on its resolved record, not "No longer observed")."""
    from detectors.facility import FacilityMonitor

    # resolving takes 16 h: the lane's slow packages have left its 12 h of recent arrivals
    desk = IncidentDesk(FacilityMonitor(), IncidentManager(clear_windows=64))
    every = IncidentDesk(_EveryLane(), IncidentManager(clear_windows=64))
    got = desk.assess_closed(lane_windows())
    assert got == every.assess_closed(lane_windows())
    lane = [(r["status"], r["lane_to"], r["evidence"]) for _, rs in got for r in rs]
    assert {to for _, to, _ in lane} == {"N1"}  # the lane to N2 stays normal
    assert (lane[0][0], lane[-1][0]) == ("open", "resolved")
    assert lane[-1][2].startswith("0 of the last packages from P1 to N1 took")


def test_the_monitor_leaves_out_quiet_lanes_nobody_names() -> None:
    from detectors.facility import FacilityMonitor

    def lanes(monitor: FacilityMonitor, named: set[tuple[str, str]] | None) -> list[str]:
        out = []
        for w in lane_windows()[:40]:
            out = [a.lane_to for a in monitor.assess([w], lanes=named) if a.lane_to]
        return out

    assert lanes(FacilityMonitor(), None) == ["N1", "N2"]
    assert lanes(FacilityMonitor(), set()) == []
    assert lanes(FacilityMonitor(), {("P1", "N2")}) == ["N2"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_lanes_assessed_are_every_lane_filtered_to_the_slow_and_the_named(seed: int) -> None:
    """With ``lanes`` named, the monitor skips the lanes that cannot score and nobody names
    (and only looks at the lanes' ages when one can fall out of the span): what it returns
    must be exactly what assessing every lane returns, filtered to the lanes with a slow
    package and the ones named, also across a snapshot (and one from before the skip)."""
    import random

    from detectors.facility import FacilityMonitor

    rng = random.Random(seed)
    every, named_only = FacilityMonitor(), FacilityMonitor()
    origins, ends = ["P1", "P2", "P3"], [f"N{k}" for k in range(12)]
    for i in range(6 * 96):
        start = T0 + 900 * i
        windows = []
        for origin in origins:
            lanes = {}
            for to in rng.sample(ends, rng.choice([0, 0, 0, 1, 2, 4])):
                n = rng.randint(1, 4)
                hours = 3 if rng.random() > 0.08 else rng.choice([26, 40])
                lanes[to] = (n, n * hours * H, hours * H + rng.randint(0, 900))
            windows.append(FacilityWindow(origin, start, start + 900, lanes=lanes))
        named = {(rng.choice(origins), rng.choice(ends)) for _ in range(rng.randint(0, 3))}
        got = [a for a in named_only.assess(windows, lanes=named) if a.lane_to]
        want = [a for a in every.assess(windows) if a.lane_to]
        assert got == [a for a in want if a.affected or (a.facility, a.lane_to) in named]
        if i == 3 * 96:
            named_only = pickle.loads(pickle.dumps(named_only))
        if i == 4 * 96:  # as saved before the skip: the lanes knew only their active list
            for lanes in named_only._lanes.values():
                del lanes.__dict__["slow"], lanes.__dict__["next_prune"]
            named_only = pickle.loads(pickle.dumps(named_only))
