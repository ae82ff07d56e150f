"""Facility statistics and detectors: accumulation, merging, River-style checks, golden
streams, seasonality, feed outages (in the style of river/checks)."""

from __future__ import annotations

import copy
import itertools
import math
import pickle
import random
from array import array
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.facility import (
    CohortRetention,
    DwellDrift,
    FacilityMonitor,
    FacilityStats,
    FacilityWindow,
    SeasonalBaseline,
    WindowHST,
    classify,
    merge,
)
from detectors.incidents import IncidentDesk, IncidentManager

H = 3600
DAY = 86400
MONDAY = 1_794_182_400  # 2026-11-09T00:00:00Z, a Monday
W = 900


# --------------------------------------------------------------------------------------------
# A seeded two-hub line: P1 (a plant: night sorts at 02:00 and 04:00) -> N1 (an NDC: trucks
# every 6 h). Arrivals at P1 all day with an evening peak, a third of it on Sundays. Scans are
# (ingest_ts, package, code, facility, event_ts), in ingestion order.


def line(
    seed,
    days,
    *,
    skip_sort=None,
    skip_share=None,
    outage=None,
    stop=None,
    late_share=0.02,
    late_hours=(1, 3),
    volume=1,
    plant="P1",
    ndc="N1",
):
    """``skip_sort``: a day index (or several) whose night sorts at P1 do not happen (a
    slowdown: the packages leave the next night); ``skip_share``: (day index, share): that share
    of the packages due at that night's sorts miss them (a milder slowdown). ``plant`` and
    ``ndc`` rename the two hubs (package ids get the plant's name as prefix). ``outage``:
    (start, end) event times during which P1's scans reach the feed only at ``end`` + 0-20 min
    (a feed outage). ``stop``: (start, end) event times during which P1 does nothing: arrivals
    are scanned at ``end`` + 0-1 h, departures leave at ``end`` + 0.5-3 h (the simulator's
    facility stop). ``late_share`` of the scans reach the feed ``late_hours`` late (a scanner
    offline); ``volume`` multiplies the packages."""
    rng = random.Random(seed)
    skipped = set() if skip_sort is None else {skip_sort} if isinstance(skip_sort, int) else set(
        skip_sort)
    scans = []
    n = 0
    for day in range(days):
        sunday = (day % 7) == 6
        for hour in range(24):
            rate = 14 if 17 <= hour < 22 else 2
            if sunday:
                rate = max(rate // 3, 1)
            rate *= volume
            for _ in range(rng.randint(rate // 2, rate + rate // 2)):
                n += 1
                pid = f"P{n:05d}" if plant == "P1" else f"{plant}-{n:05d}"
                arrived = MONDAY + day * DAY + hour * H + rng.randrange(H)
                if stop and stop[0] <= arrived < stop[1]:
                    arrived = stop[1] + rng.randrange(H)
                events = [(arrived, "A1", plant)]
                leave_day = (arrived + 2 * H) // DAY  # first sort at least 2 h later
                skips = skip_share is not None and rng.random() < skip_share[1]
                sort = None
                while sort is None:
                    for slot in (2 * H, 4 * H):
                        t = leave_day * DAY + slot
                        day_index = leave_day - MONDAY // DAY
                        if skips and day_index == skip_share[0]:
                            continue
                        if t >= arrived + 2 * H and day_index not in skipped:
                            sort = t
                            break
                    leave_day += 1
                if rng.random() < 0.03:
                    sort += DAY  # missed its sort
                departed = sort + rng.randrange(600)
                if stop and stop[0] <= departed < stop[1]:
                    departed = stop[1] + rng.randrange(H // 2, 3 * H)
                events.append((departed, "T1", plant))
                at_n1 = departed + 3 * H + rng.randrange(H)
                events.append((at_n1, "A1", ndc))
                slot = (at_n1 + H) // (6 * H) * (6 * H) + 6 * H
                events.append((slot + rng.randrange(600), "T1", ndc))
                for ts, code, facility in events:
                    ingest = ts + rng.randrange(5, 120)
                    if rng.random() < late_share:
                        ingest += rng.randrange(late_hours[0] * H, late_hours[1] * H)
                    if outage and facility == plant and outage[0] <= ts < outage[1]:
                        ingest = outage[1] + rng.randrange(1200)
                    scans.append((ingest, pid, code, facility, ts))
    scans.sort()
    return scans


def windows_of(scans, lateness=H, facilities=("P1", "N1")):
    """Feed the scans to FacilityStats as the flow does; closed windows grouped by end."""
    stats = FacilityStats(W, facilities=facilities)
    last, last_facility = {}, {}
    closed = []
    max_ts = 0
    for _ingest, pid, code, facility, ts in scans:
        if ts > max_ts:
            max_ts = ts
            closed += stats.close(max_ts - lateness)
        if pid in last and ts < last[pid]:
            stats.scan(facility, ts)
            continue
        last[pid] = ts
        prev = last_facility.get(pid)
        if prev is None:
            stats.observe(facility, code, ts)
        else:
            stats.observe(facility, code, ts, *prev)
        last_facility[pid] = (facility, code, ts)
    closed += stats.close(max_ts + lateness + W)
    grouped = defaultdict(list)
    for w in closed:
        grouped[w.end].append(w)
    return [grouped[end] for end in sorted(grouped)]


def incidents_of(batches, detector="retention", regions=None, **kwargs):
    """The incident records of a monitor and a lifecycle over window batches (one end each)."""
    desk = IncidentDesk(FacilityMonitor(detector, regions=regions or {"P1": "R", "N1": "R"},
                                        **kwargs), IncidentManager())
    return [r for batch in batches for r in desk.assess(batch[0].end, batch)]


def opened(records):
    return [(r["incident_key"], r["kind"]) for r in records if r["status"] == "open"]


NORMAL = windows_of(line(1, 21))


# --------------------------------------------------------------------------------------------
# FacilityStats


def test_observe_counts_arrivals_departures_dwell_and_backlog():
    stats = FacilityStats(W)
    t0 = MONDAY
    stats.observe("P1", "A1", t0 + 60)
    stats.observe("P1", "A1", t0 + 120)
    stats.observe("P1", "T1", t0 + 2 * H + 60, "P1", "A1", t0 + 60)  # dwell 2 h
    stats.observe("P1", "08", t0 + 2 * H + 90)  # another scan: volume only
    stats.observe("N1", "A1", t0 + 5 * H, "P1", "T1", t0 + 2 * H + 60)  # lane P1 -> N1
    stats.observe("N1", "A1", t0 + 5 * H + 60, "P1", "A1", t0 + 120)  # departure scan missing
    windows = stats.close(t0 + 6 * H)
    p1 = [w for w in windows if w.facility == "P1"]
    assert [w.arrivals for w in p1[:1]] == [2]
    assert sum(w.departures for w in p1) == 1
    assert sum(w.scans for w in p1) == 4
    assert p1[0].backlog == 2 and p1[-1].backlog == 0
    sort = next(w for w in p1 if w.departures)
    assert 1.5 * H <= sort.dwell_p50 <= 2.5 * H
    lane = next(w for w in p1 if w.lanes)
    assert lane.lanes == {"N1": (1, 3 * H - 60, 3 * H - 60)}
    assert sum(w.handoffs_missing for w in p1) == 1
    n1 = [w for w in windows if w.facility == "N1"]
    assert n1[-1].backlog == 2 and sum(w.arrivals for w in n1) == 2


def test_a_late_scan_counts_as_late_in_the_oldest_open_window():
    stats = FacilityStats(W)
    stats.arrival("P1", MONDAY + 60)
    assert [w.arrivals for w in stats.close(MONDAY + 2 * W)] == [1, 0]
    stats.arrival("P1", MONDAY + 120)  # its window is closed
    windows = stats.close(MONDAY + 3 * W)
    assert [(w.start - MONDAY, w.arrivals, w.late_scans, w.backlog) for w in windows] == [
        (2 * W, 0, 1, 2)
    ]


def test_windows_depend_only_on_events_not_on_how_far_the_feed_ran_ahead():
    early, late = FacilityStats(W), FacilityStats(W)
    events = [("P1", "A1", MONDAY + 100), ("P1", "T1", MONDAY + 1000), ("P1", "A1", MONDAY + 5000)]
    for facility, code, ts in events:
        early.observe(facility, code, ts)
    out_early = early.close(MONDAY + W)
    late.observe(*events[0])
    out_late = late.close(MONDAY + W)
    assert out_early == out_late  # the departure and the later arrival are not in window 0


def test_a_lane_transit_ends_at_the_arrival_scan_not_at_a_later_one():
    # two packages leave P1 for N1; the second one's arrival scan at N1 was dropped, so its
    # first scan there is its departure a day later: a handoff, but no lane transit
    stats = FacilityStats(W, facilities={"P1", "N1"})
    stats.observe("P1", "T1", MONDAY + 100)
    stats.observe("P1", "T1", MONDAY + 200)
    stats.observe("N1", "A1", MONDAY + 3 * H, "P1", "T1", MONDAY + 100)
    stats.observe("N1", "T1", MONDAY + 3 * H + 60, "P1", "T1", MONDAY + 200)
    p1 = [w for w in stats.close(MONDAY + 4 * H) if w.facility == "P1" and w.handoffs]
    assert [(w.handoffs, w.lanes) for w in p1] == [(2, {"N1": (1, 3 * H - 100, 3 * H - 100)})]


def test_facilities_outside_the_filter_are_ignored_and_lanes_to_them_too():
    stats = FacilityStats(W, facilities={"P1"})
    stats.observe("O1", "07", MONDAY + 10)
    stats.observe("P1", "A1", MONDAY + 20)
    stats.observe("P1", "T1", MONDAY + 30, "P1", "A1", MONDAY + 20)
    stats.observe("O1", "07", MONDAY + 40, "P1", "T1", MONDAY + 30)
    windows = stats.close(MONDAY + W)
    assert [(w.facility, w.scans, w.lanes) for w in windows] == [("P1", 2, {})]


def test_auto_keeps_the_facilities_that_scan_like_a_plant_not_the_post_offices():
    stats = FacilityStats(W, facilities="auto")
    # a package: accepted at post office O1, departs it, plant P1, NDC N1, delivered at O2
    route = [
        ("O1", "03"),
        ("O1", "SF"),
        ("P1", "10"),
        ("P1", "T1"),
        ("N1", "A1"),
        ("N1", "T1"),
        ("O2", "07"),
        ("O2", "OF"),
        ("O2", "01"),
    ]
    prev = (None, None, -1)
    for i, (facility, code) in enumerate(route):
        stats.observe(facility, code, MONDAY + 60 * i, *prev)
        prev = (facility, code, MONDAY + 60 * i)
    assert stats.facilities == {"P1", "N1"}
    windows = stats.close(MONDAY + W)
    assert sorted(w.facility for w in windows) == ["N1", "P1"]
    p1 = next(w for w in windows if w.facility == "P1")
    assert (p1.arrivals, p1.departures, p1.handoffs) == (1, 1, 1)  # its first scan counts
    assert p1.lanes == {"N1": (1, 60, 60)}  # the lane to a hub; none to the post office
    restored = pickle.loads(pickle.dumps(stats))
    restored.observe("P2", "A1", MONDAY + W + 10)
    assert restored.facilities == {"P1", "N1", "P2"}
    with pytest.raises(ValueError, match="auto"):
        FacilityStats(W, facilities="P1")  # a lone id is not a collection


def test_auto_keeps_at_most_max_facilities_and_counts_the_scans_it_leaves_out():
    """A feed that codes many delivery units as plants cannot grow the monitor without bound:
    the first ``max_facilities`` hub-coded facilities are kept, later ones are not, and their
    hub-code scans are counted; the cap survives a snapshot, and one from before it loads."""
    stats = FacilityStats(W, facilities="auto", max_facilities=2)
    for i, facility in enumerate(["P1", "N1", "P2", "P3", "P2", "P1"]):
        stats.observe(facility, "A1", MONDAY + 60 * i)
    stats.observe("O9", "07", MONDAY + 500)  # not a hub code: neither kept nor counted
    assert stats.facilities == {"P1", "N1"}
    assert stats.over_cap == 3  # P2 twice, P3 once
    windows = stats.close(MONDAY + W)
    assert sorted((w.facility, w.arrivals) for w in windows) == [("N1", 1), ("P1", 2)]
    restored = pickle.loads(pickle.dumps(stats))
    restored.observe("P4", "10", MONDAY + W + 10)
    assert restored.facilities == {"P1", "N1"} and restored.over_cap == 4
    old = pickle.loads(pickle.dumps(stats))
    del old.__dict__["max_facilities"], old.__dict__["over_cap"]  # as pickled before the cap
    again = pickle.loads(pickle.dumps(old))
    assert (again.max_facilities, again.over_cap) == (2000, 0)
    with pytest.raises(ValueError, match="max_facilities"):
        FacilityStats(W, facilities="auto", max_facilities=0)


def test_a_package_stuck_longer_than_max_age_leaves_the_backlog():
    stats = FacilityStats(W, max_age_seconds=2 * H)
    stats.arrival("P1", MONDAY)
    windows = stats.close(MONDAY + 3 * H)
    assert [w.backlog for w in windows][:2] == [1, 1]
    assert windows[-1].backlog == 0 and stats.expired == 1


def test_backlog_age_and_overdue():
    w = FacilityWindow(
        "P1", 10 * H, 10 * H + W, backlog=3, cohorts={0: 1, (9 * H) // W: 2}
    )  # ~10 h old and ~1 h old
    assert w.backlog_age == (2, 0, 1, 0, 0, 0)
    assert w.overdue(8) == 1 and w.overdue(0.5) == 3


def test_stats_pickle_and_continue_identically():
    scans = line(2, 3)
    half = len(scans) // 2
    a = FacilityStats(W)
    for _i, _pid, code, facility, ts in scans[:half]:
        a.observe(facility, code, ts)
    b = pickle.loads(pickle.dumps(a))
    c = copy.deepcopy(a)
    outs = []
    for stats in (a, b, c):
        for _i, _pid, code, facility, ts in scans[half:]:
            stats.observe(facility, code, ts)
        outs.append(stats.close(MONDAY + 4 * DAY))
    assert outs[0] == outs[1] == outs[2] and len(outs[0]) > 100


events_strategy = st.lists(
    st.tuples(
        st.integers(0, 11),  # package
        st.sampled_from(["A1", "A1", "T1", "T1", "08", "10", "07"]),
        st.sampled_from(["P1", "P2", "N1"]),
        st.integers(-3 * H, 2 * H),  # event time step (negative: out of order, late)
    ),
    min_size=1,
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(events_strategy, st.integers(1, 4))
def test_merged_shards_equal_one_shard(events, shards):
    single = FacilityStats(W, max_age_seconds=6 * H)
    parts = [FacilityStats(W, max_age_seconds=6 * H) for _ in range(shards)]
    out_single, out_parts = [], []
    prev = {}
    t = max_ts = MONDAY + DAY
    for package, code, facility, step in events:
        t = max(t + step, MONDAY)
        before = prev.get(package)
        args = (facility, code, t) + (before if before else ())
        single.observe(*args)
        parts[package % shards].observe(*args)
        prev[package] = (facility, code, t)
        max_ts = max(max_ts, t)
        out_single += single.close(max_ts - H)
        for part in parts:
            out_parts += part.close(max_ts - H)
    out_single += single.close(max_ts + DAY)
    for part in parts:
        out_parts += part.close(max_ts + DAY)
    assert merge(out_parts) == merge(out_single) == out_single
    assert sum(p.expired for p in parts) == single.expired


def test_merge_adds_figures_of_the_same_window():
    a = FacilityWindow(
        "P1", 0, W, arrivals=2, backlog=5, cohorts={0: 5}, lanes={"N1": (1, 100, 100)}
    )
    b = FacilityWindow(
        "P1", 0, W, arrivals=1, backlog=1, cohorts={0: 1}, lanes={"N1": (2, 300, 200)}
    )
    c = FacilityWindow("N1", 0, W, arrivals=7)
    merged = merge([a, c, b])
    assert [w.facility for w in merged] == ["N1", "P1"]
    assert (merged[1].arrivals, merged[1].backlog, merged[1].cohorts, merged[1].lanes) == (
        3,
        6,
        {0: 6},
        {"N1": (3, 400, 200)},
    )
    assert a.arrivals == 2 and a.cohorts == {0: 5}  # inputs untouched


# --------------------------------------------------------------------------------------------
# The detectors, River-style: purity, pickling, determinism, golden streams


def seasonal_stream(seed, n=24 * 7 * 3):
    rng = random.Random(seed)
    for hour in range(n):
        ts = MONDAY + hour * H
        peak = 40 if ts % DAY // H in (1, 2, 3) else 6
        if (ts // DAY + 3) % 7 == 6:  # Sunday
            peak //= 3
        yield {"value": peak + rng.randint(-3, 3), "ts": ts}


def dwell_stream(seed, n=300, shift_at=200):
    rng = random.Random(seed)
    for i in range(n):
        yield {"dwell": rng.gauss(6 if i < shift_at else 10, 1)}


def window_stream(seed, n=600, odd_from=560):
    rng = random.Random(seed)
    for i in range(n):
        ts = MONDAY + i * W
        base = 30 if ts % DAY // H in (1, 2) else 5
        held = base + rng.randint(0, 3) + (40 if i >= odd_from else 0)
        yield {"ts": ts, "held": held, "arrivals": base + rng.randint(0, 2)}


def cohort_stream(seed, days=9, missed_day=8):
    rng = random.Random(seed)
    present = {}
    for hour in range(24 * days):
        now = MONDAY + hour * H
        present[now // H] = rng.randint(5, 15)
        if hour % 24 == 2 and hour // 24 != missed_day:
            present = {
                a: (n if a > now // H - 2 else sum(rng.random() < 0.1 for _ in range(n)))
                for a, n in present.items()
            }
        yield {"ts": now, "cohorts": {a: n for a, n in present.items() if n}}


DETECTORS = [
    (
        lambda: SeasonalBaseline(seasons=((7 * DAY, 168), (DAY, 24)), min_samples=2, min_scale=2.0),
        seasonal_stream,
    ),
    (lambda: DwellDrift(delta=0.5, threshold=10.0), dwell_stream),
    (
        lambda: WindowHST(
            features=("held", "arrivals"),
            time_key="ts",
            n_trees=10,
            height=4,
            window_size=96,
            warm_up=192,
            seed=3,
        ),
        window_stream,
    ),
    (lambda: CohortRetention(width=H, horizon=36), cohort_stream),
]
IDS = ["seasonal", "drift", "hst", "retention"]


def scores_of(make, stream, seed=0):
    detector = make()
    out = []
    for x in stream(seed):
        out.append(detector.score_one(x))
        detector.learn_one(x)
    return detector, out


@pytest.mark.parametrize(("make", "stream"), DETECTORS, ids=IDS)
def test_learning_does_not_mutate_the_input(make, stream):
    detector = make()
    for x in stream(0):
        before = copy.deepcopy(x)
        detector.score_one(x)
        detector.learn_one(x)
        assert x == before


@pytest.mark.parametrize(("make", "stream"), DETECTORS, ids=IDS)
def test_a_pickled_copy_continues_identically(make, stream):
    xs = list(stream(0))
    half = len(xs) // 2
    detector = make()
    for x in xs[:half]:
        detector.learn_one(x)
    clone = pickle.loads(pickle.dumps(detector))
    for x in xs[half:]:
        assert detector.score_one(x) == clone.score_one(x)
        detector.learn_one(x)
        clone.learn_one(x)


@pytest.mark.parametrize(("make", "stream"), DETECTORS, ids=IDS)
def test_same_seed_same_scores_and_warm_up_is_neutral(make, stream):
    _, a = scores_of(make, stream)
    _, b = scores_of(make, stream)
    assert a == b
    assert a[0] == 0.0


@pytest.mark.parametrize(("make", "stream"), DETECTORS, ids=IDS)
def test_hyper_parameters_are_stored_unchanged(make, stream):
    detector = make()
    params = detector._get_params()
    assert detector.clone()._get_params() == params


def test_golden_seasonal_baseline():
    # week 3: the 02:00 peaks and the quiet Sunday are normal; a noon peak is not
    detector, scores = scores_of(DETECTORS[0][0], seasonal_stream)
    week3 = scores[24 * 14 :]
    assert max(week3) <= 3.0  # peaks at 01:00-03:00 are normal
    assert max(week3[24 * 6 :]) < 2.1  # and so is the quiet Sunday
    assert [round(s, 2) for s in week3[:4]] == [0.67, 0.67, 0.94, 0.5]
    noon = {"value": 40, "ts": MONDAY + 21 * DAY + 12 * H}
    assert detector.score_one(noon) == 18.0


def test_golden_seasonal_baseline_without_timestamps():
    detector = SeasonalBaseline(window=20, min_samples=5)
    rng = random.Random(4)
    scores = []
    for i in range(60):
        x = {"value": rng.gauss(100, 5) + (60 if i == 50 else 0)}
        scores.append(detector.score_one(x))
        detector.learn_one(x)
    assert scores[:5] == [0.0] * 5
    assert [i for i, s in enumerate(scores) if s > 4 and i >= 20] == [50]
    assert round(scores[50], 1) == 12.8


def test_golden_dwell_drift():
    _, scores = scores_of(DETECTORS[1][0], dwell_stream)
    assert [i for i, s in enumerate(scores) if s >= 1.0] == [202]
    assert max(scores[30:200]) < 0.6


def test_golden_window_hst():
    _, scores = scores_of(DETECTORS[2][0], window_stream)
    assert scores[:192] == [0.0] * 192
    assert [round(s, 2) for s in scores[556:566]] == [
        0.52,
        0.52,
        0.51,
        0.51,
        0.84,
        0.86,
        0.86,
        0.86,
        0.86,
        0.86,
    ]
    # mass-based: a shifted window scores high, but so do some normal ones (see bench/)
    assert sum(scores[560:]) / 40 > sum(scores[200:560]) / 360 + 0.2


def test_golden_cohort_retention():
    _, scores = scores_of(DETECTORS[3][0], cohort_stream)
    # the sort at 02:00 of day 8 does not happen: flagged from then until the end
    assert [i for i, s in enumerate(scores) if s > 5] == list(range(24 * 8 + 2, 24 * 9))
    assert max(scores[: 24 * 8 + 2]) < 1.5


@pytest.mark.parametrize("typecode", ["i", "q"])
def test_cohort_retention_from_an_old_snapshot_scores_the_same(typecode):
    """Snapshots from before the compiled pass held the cohorts in a dict and the table in an
    ``array`` (int64 before that, int32 since): both load and continue exactly as a
    detector that never stopped."""
    make = DETECTORS[3][0]
    stream = list(cohort_stream(0))
    new = make()
    for x in stream[:100]:
        new.learn_one(x)
    assert new._table.dtype == np.int32
    state = dict(new.__dict__)
    rows = state.pop("_known")[: state.pop("_n")].tolist()
    for key in ("_cells_of", "_cells_from"):
        del state[key]
    state["_initial"] = {arrived: [n0, i0, i1] for arrived, n0, i0, i1 in rows}
    state["_table"] = array(typecode, new._table.tolist())
    old = CohortRetention.__new__(CohortRetention)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old._table.itemsize == array(typecode).itemsize
    for x in stream[100:]:
        assert old.score_one(x) == new.score_one(x)
        old.learn_one(x)
        new.learn_one(x)
    assert old._table.tolist() == new._table.tolist()


def test_cohort_retention_raises_on_a_counter_overflow_rather_than_wrapping():
    detector = CohortRetention(width=900, horizon=8, min_cohorts=1)
    detector.learn_one({"ts": 0, "cohorts": {0: 5}})
    detector._table[:] = np.iinfo(np.int32).max - 2
    with pytest.raises(OverflowError, match="int32"):
        detector.learn_one({"ts": 900, "cohorts": {0: 5}})
    assert detector._table.max() == np.iinfo(np.int32).max - 2  # nothing wrapped


def test_cohort_retention_takes_cohorts_of_no_package():
    """A cohort of 0 packages (a caller that keeps emptied windows) has no share to learn
    from: cells that only ever saw such cohorts are skipped, not divided by."""
    detector = CohortRetention(width=900, horizon=8, min_cohorts=1)
    day = 96  # windows: the same time of day comes back
    for w in range(3 * day):
        detector.learn_one({"ts": w * 900, "cohorts": {a: 0 for a in range(max(w - 7, 0), w + 1)}})
    now = 3 * day
    cohorts = {a: 0 for a in range(now - 7, now + 1)}
    assert detector.score_one({"ts": now * 900, "cohorts": cohorts}) == 0.0
    assert detector.expected_one({"ts": now * 900, "cohorts": cohorts})[:2] == (0.0, 0.0)


def test_classify_names_the_kinds():
    assert classify(delay=3.0, silence=0.0, feed=0.0) == ("facility_slowdown", 3.0)
    # missing departures and missing arrivals: stop or feed outage, not yet told apart
    assert classify(delay=3.0, silence=2.0, feed=0.0) == (None, 3.0)
    assert classify(delay=3.0, silence=2.0, feed=1.5) == ("feed_outage", 1.5)
    stop = {"stop_silence": 1.2, "stopped_hours": 5.0, "burst": 20, "backlog": 40}
    assert classify(delay=0.0, silence=0.0, feed=0.0, **stop) == ("facility_stop", 1.2)
    assert classify(delay=0.0, silence=0.0, feed=0.0, **(stop | {"burst": 2}))[0] is None
    assert classify(delay=0.0, silence=0.0, feed=0.0, **(stop | {"backlog": 3}))[0] is None


# --------------------------------------------------------------------------------------------
# The monitor end to end on the seeded line


def test_a_normal_facility_with_nightly_peaks_and_quiet_sundays_opens_no_incident():
    # three weeks from a cold start: evening inflow peaks, night sorts, quiet Sundays
    assert opened(incidents_of(NORMAL)) == []


def test_a_missed_night_sort_opens_one_slowdown_at_the_plant():
    batches = windows_of(line(1, 21, skip_sort=16))  # Tuesday of week 3
    records = incidents_of(batches)
    assert opened(records) == [("P1:facility_slowdown:20261125T0230Z", "facility_slowdown")]
    first = next(r for r in records if r["status"] == "open")
    assert first["opened_at"] == "2026-11-25T02:30:00+00:00"  # the 02:00 sort + 2 windows
    assert "still waiting" in first["evidence"]
    assert [r["status"] for r in records if r["incident_key"] == first["incident_key"]][-1] == (
        "resolved"
    )


def test_a_stop_in_quiet_hours_is_told_from_an_outage_when_the_facility_resumes():
    # Wednesday of week 3, 09:00-15:00: P1 usually scans ~2 arrivals an hour then. Nothing is
    # known while it is silent (a stop and a feed outage look alike); it resumes with a burst
    # of fresh arrival scans, not late ones: a stop, opened within the hour after its end.
    start = MONDAY + 16 * DAY + 9 * H
    records = incidents_of(windows_of(line(1, 21, stop=(start, start + 6 * H))))
    assert opened(records) == [("P1:facility_stop:20261125T1530Z", "facility_stop")]
    first = next(r for r in records if r["status"] == "open")
    assert "sent no scan for 6 h" in first["evidence"]


def test_a_feed_outage_is_a_feed_outage_not_a_delay():
    start = MONDAY + 16 * DAY - 2 * H  # Monday 22:00 to Tuesday 05:00: the night sorts
    batches = windows_of(line(1, 21, outage=(start, start + 7 * H)))
    records = incidents_of(batches)
    kinds = {kind for _key, kind in opened(records)}
    assert kinds == {"feed_outage"}
    outage = next(r for r in records if r["status"] == "open")
    assert start <= _ts(outage["opened_at"]) <= start + 9 * H
    assert outage["facility_id"] == "P1"


def test_late_scans_after_a_big_sort_are_no_feed_outage_at_national_volume():
    """At 30x the volume, the 2 % of scans that reach the feed up to 6 h late trickle in
    through the quiet morning after each night sort: against the morning's own few scans they
    looked like a feed outage every morning; against the volume they came from (the last
    ``feed_windows``, 6 h) they do not. A real outage at that volume is still one."""
    busy = dict(volume=30, late_hours=(1, 6))
    normal = windows_of(line(1, 10, **busy))
    assert opened(incidents_of(normal)) == []
    assert {kind for _key, kind in opened(incidents_of(normal, feed_windows=12))} == {
        "feed_outage"}  # the 3-hour volume of before
    start = MONDAY + 8 * DAY - 2 * H  # Monday 22:00 to Tuesday 05:00: the night sorts
    outage = incidents_of(windows_of(line(1, 10, outage=(start, start + 7 * H), **busy)))
    assert "feed_outage" in {kind for _key, kind in opened(outage)}
    # the night sort it hid looked like a slowdown for a while: reclassified, not left open
    delays = {key for key, kind in opened(outage) if kind != "feed_outage"}
    assert delays == {r["incident_key"] for r in outage
                      if r.get("reclassified_as") == "feed_outage"}
    with pytest.raises(ValueError, match="feed_windows"):
        FacilityMonitor(feed_windows=97)


REGION = {"P1": "R", "N1": "R", "P2": "R", "N2": "R"}


def region_of_two_lines(share_p1=None, share_p2=None, day=16):
    """Two seeded lines in one region (P1 -> N1, P2 -> N2); a share of each plant's packages
    miss the night sorts of ``day`` (None: none do)."""
    p1 = line(1, 21, skip_share=None if share_p1 is None else (day, share_p1))
    p2 = line(2, 21, skip_share=None if share_p2 is None else (day, share_p2), plant="P2", ndc="N2")
    return windows_of(sorted(p1 + p2), facilities=tuple(REGION))


def region_incidents(batches, **kwargs):
    return [r for r in incidents_of(batches, regions=REGION, **kwargs) if r["status"] == "open"]


def test_two_plants_of_a_region_each_missing_part_of_a_sort_open_weather_at_the_sort():
    # Tuesday of week 3: 5 % of P1's and 10 % of P2's packages miss the 02:00 and 04:00 sorts.
    # Each plant alone stays under the slowdown bar (delay 0.93 and 0.91 < 1); together,
    # each over ``weather_delay``, they are one weather incident, 75 min after the 02:00 sort.
    batches = region_of_two_lines(0.05, 0.10)
    found = region_incidents(batches)
    assert [(r["incident_key"], r["facilities"]) for r in found] == [
        ("N1:weather:20261125T0315Z", "P1 P2")
    ]
    # at the single-facility bar (the default before 2026-11-23) nothing was ever opened
    assert region_incidents(batches, weather_delay=1.0) == []


def test_a_storm_that_stays_at_one_plant_goes_on_as_one_weather_incident():
    # both plants miss Tuesday's night sorts (P2 only 10 % of its packages), P1 Wednesday's
    # too: one weather incident until P1 has recovered, not the storm resolved at P2's
    # recovery and P1 going on as a slowdown of its own (a customer held at P1 both nights
    # heard of two incidents)
    p1 = line(1, 21, skip_sort=(16, 17))
    p2 = line(2, 21, skip_share=(16, 0.10), plant="P2", ndc="N2")
    records = incidents_of(windows_of(sorted(p1 + p2), facilities=tuple(REGION)),
                           regions=REGION)
    assert opened(records) == [("N1:weather:20261125T0245Z", "weather")]
    resolved = [r for r in records if r["status"] == "resolved"]
    assert [r["incident_key"] for r in resolved] == ["N1:weather:20261125T0245Z"]
    # P1's Wednesday packages leave with Thursday's 02:00 and 04:00 sorts
    assert resolved[0]["resolved_at"] >= "2026-11-27T02:00:00+00:00"


def test_two_plants_slow_on_two_nights_one_after_the_other_are_two_slowdowns():
    # no weather was open when P2's turn came: each plant's own incident, as before
    p1 = line(1, 21, skip_sort=16)
    p2 = line(2, 21, skip_sort=17, plant="P2", ndc="N2")
    found = region_incidents(windows_of(sorted(p1 + p2), facilities=tuple(REGION)))
    assert [(r["incident_key"], r["kind"]) for r in found] == [
        ("P1:facility_slowdown:20261125T0230Z", "facility_slowdown"),
        ("P2:facility_slowdown:20261126T0230Z", "facility_slowdown")]


@pytest.mark.parametrize(("began", "weather_open", "expected"), [
    ({"P2": 8}, {"P1": {"P1", "P2"}}, ("P2",)),  # a hub it covers goes on alone
    ({"P2": 8, "P3": 4}, {"P1": {"P1", "P2"}}, ("P2",)),  # P3, slow hours later, is not it
    ({"P3": 8}, {"P1": {"P1", "P2"}}, ()),  # a hub it never covered: news of its own
    ({"P2": 8, "P3": 7, "P4": 7}, {"P1": {"P1", "P2"}}, ("P2", "P3", "P4")),  # new weather
    ({"P3": 8, "P4": 7}, {"P1": {"P1", "P2"}}, ("P3", "P4")),  # there: they join
    ({"P2": 8}, None, ()),  # no weather open: one hub is no weather
])
def test_open_weather_goes_on_while_a_hub_it_covers_is_delayed(began, weather_open, expected):
    monitor = FacilityMonitor(regions=dict.fromkeys(("P1", "P2", "P3", "P4"), "R"))
    end = MONDAY + 10 * H
    for hub in ("P1", "P2", "P3", "P4"):
        monitor._tracks[hub] = None  # (seen: _weather reads only which hubs it has)
    for hub, hours in began.items():  # delays that began hours ago and are still going on
        monitor._started[hub] = end - hours * H
        monitor._delayed[hub] = end
    delays = dict.fromkeys(began, 1.4)
    (region,) = monitor._weather([], end, delays, weather_open)
    assert (region.kind, region.facility, region.facilities) == ("weather", "P1", expected)
    assert region.score == (2.0 if expected else 0.0)  # its worst hub's 1.4 over 0.7


def test_one_plant_missing_part_of_a_sort_opens_nothing():
    assert region_incidents(region_of_two_lines(0.05, None)) == []


def test_a_region_quiet_at_once_on_sundays_and_draining_at_the_end_opens_nothing():
    # both plants' inflow drops to a third every Sunday (at once: a region-wide drop) and to
    # nothing after the last day of intake, when the region drains
    assert region_incidents(region_of_two_lines()) == []


def test_the_monitor_and_manager_pickle_mid_stream_and_continue_identically():
    batches = windows_of(line(3, 18, skip_sort=14))
    monitor = FacilityMonitor("retention", regions={"P1": "R", "N1": "R"})
    manager = IncidentManager()
    half = len(batches) // 2

    def run(monitor, manager, part):
        out = []
        for batch in part:
            for a in monitor.assess(batch):
                out += manager.update(
                    a.facility,
                    a.window_end,
                    a.score,
                    a.kind,
                    a.evidence,
                    a.affected,
                    lane_to=a.lane_to,
                    facilities=a.facilities,
                )
            out += manager.finish(batch[0].end)
        return out

    run(monitor, manager, batches[:half])
    clone_monitor, clone_manager = pickle.loads(pickle.dumps((monitor, manager)))
    assert run(monitor, manager, batches[half:]) == run(
        clone_monitor, clone_manager, batches[half:]
    )


def _ts(iso):
    from datetime import datetime

    return int(datetime.fromisoformat(iso).timestamp())


# --------------------------------------------------------------------------------------------
# Internals kept equal to their plain versions (the per-window cost was cut without changing
# an output; bench/RESULTS.md, "Facility detectors")


def test_seasonal_slots_hold_the_last_window_values_in_the_order_seen():
    from collections import deque

    rng = random.Random(4)
    detector = SeasonalBaseline(seasons=((DAY, 24),), window=5, min_samples=2)
    plain: dict[int, deque] = defaultdict(lambda: deque(maxlen=5))
    for i in range(24 * 9):
        ts, value = MONDAY + i * H, rng.random()
        detector.learn_one({"value": value, "ts": ts})
        plain[i % 24].append(value)
        if i >= 24:  # the slot has min_samples values: its own mean, summed in order
            assert detector.mean({"ts": ts}) == sum(plain[i % 24]) / len(plain[i % 24])
    clone = pickle.loads(pickle.dumps(detector))
    assert clone.baseline({"ts": MONDAY}) == detector.baseline({"ts": MONDAY})


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=120),
    spoiler=st.none()
    | st.tuples(
        st.integers(0, 120),
        st.integers(-(2**45), 2**45) | st.floats(-1e3, 1e3, allow_nan=False),
    ),
    old_at=st.integers(0, 120),
)
def test_seasonal_means_of_counts_from_running_sums_equal_the_slots_added_up(
    counts, spoiler, old_at
):
    """:meth:`SeasonalBaseline.mean` keeps each slot's sum while every value is a whole
    number (counts); it must give what adding the slot's values up gives, bit for bit, also
    after a fraction or a huge value comes, and after loading a snapshot made before the
    sums (rebuilt from the rings)."""
    from collections import deque

    detector = SeasonalBaseline(seasons=((DAY, 8), (DAY, 2)), window=3, min_samples=2)
    plain: list[dict[int, deque]] = [defaultdict(lambda: deque(maxlen=3)) for _ in range(2)]
    recent: deque = deque(maxlen=3)
    values = [float(n) for n in counts]
    if spoiler is not None:  # a fraction, or a whole number too large for exact sums
        values.insert(spoiler[0], float(spoiler[1]))
    for i, value in enumerate(values):
        if i == old_at:  # as pickled before the flat layout, and before that the sums
            detector = _seasonal_as_before(detector, sums=old_at % 2 == 0)
        ts = MONDAY + i * 5 * H
        detector.learn_one({"value": value, "ts": ts})
        recent.append(value)
        for level, slots in enumerate(plain):
            slots[(ts - MONDAY) % DAY * (8, 2)[level] // DAY].append(value)
        query = ts + 3 * H
        expected = None
        for level, slots in enumerate(plain):
            slot = slots[(query - MONDAY) % DAY * (8, 2)[level] // DAY]
            if len(slot) >= 2:
                expected = sum(slot) / len(slot)
                break
        else:
            if len(recent) >= 2:
                expected = sum(recent) / len(recent)
        assert detector.mean({"ts": query}) == expected


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.integers(0, 30).map(float) | st.floats(-1e3, 1e3, allow_nan=False)
        | st.sampled_from([2.0**45, 0.5, float("nan"), float("inf")]),
        min_size=1, max_size=80),
    zone=st.sampled_from([None, "America/Chicago", "Europe/Berlin"]),
    window=st.sampled_from([0, 1, 3, 32]),
    step=st.sampled_from([900, 5 * H, 7 * H + 900]),
    timeless=st.sets(st.integers(0, 79), max_size=5),
)
def test_seasonal_reads_then_learns_in_one_call_as_in_two(values, zone, window, step,
                                                          timeless):
    """The monitor reads each baseline of arrivals and then teaches it the window's value in
    one call (``_mean_learn_at``, ``_baseline_learn_at``); it must answer what the read alone
    answered and leave the detector as the learn alone did: bit for bit, in warm-up and
    after, with fractions and huge values (no exact sums), without a time, without slots;
    a value that is not finite is skipped, as ``learn_one`` skips it."""
    kw = {"seasons": ((DAY, 8), (7 * DAY, 56)), "window": window, "min_samples": 2, "tz": zone,
          "min_scale": 0.5, "rel_scale": 0.1}
    one_mean, two_mean = SeasonalBaseline(**kw), SeasonalBaseline(**kw)
    one_base, two_base = SeasonalBaseline(**kw), SeasonalBaseline(**kw)
    for i, value in enumerate(values):
        x = {"ts": None if i in timeless else MONDAY + i * step}
        local = two_mean._local_time(x)
        finite = math.isfinite(value)  # (what learn_one skips)
        expected = two_mean._mean_at(local)
        if finite:
            two_mean._learn_at(local, value)
        assert one_mean._mean_learn_at(one_mean._local_time(x), value) == expected
        expected_base = two_base._baseline_at(local)
        if finite:
            two_base._learn_at(local, value)
        assert one_base._baseline_learn_at(one_base._local_time(x), value) == expected_base
    for one, two in ((one_mean, two_mean), (one_base, two_base)):
        assert one._whole == two._whole and list(one._recent) == list(two._recent)
        for name in ("_ring", "_count", "_sum"):
            a, b = getattr(one, name), getattr(two, name)
            assert (a is None and b is None) or np.array_equal(a, b)


def _seasonal_as_before(detector, sums=True):
    """``detector`` saved as snapshots from before the flat layout held it (a ring, a count
    and, if ``sums``, a sum array per level; older still without sums) and loaded again."""
    from array import array

    state = pickle.loads(pickle.dumps(detector)).__dict__
    ring, count, total = state.pop("_ring"), state.pop("_count"), state.pop("_sum")
    del state["_local_of"], state["_local"]
    window, levels = detector.window, len(detector.seasons)
    bounds = list(itertools.accumulate([0] + [n for _, n in detector.seasons]))
    pieces = [(bounds[k], bounds[k + 1]) for k in range(levels)]
    state.update(
        _rings=[None if ring is None else array("d", ring[a * window : b * window])
                for a, b in pieces],
        _seen=[None if count is None else array("q", count[a:b]) for a, b in pieces],
        _sums=[None if total is None else array("d", total[a:b]) for a, b in pieces],
        _keys_of=None,
        _last_keys=None,
    )
    if not sums:
        del state["_sums"], state["_whole"]
    return pickle.loads(pickle.dumps(_Snapshot(SeasonalBaseline, state)))


class _Snapshot:
    """Pickles as an instance of ``cls`` with ``state``, as an older version would have."""

    def __init__(self, cls, state):
        self.cls, self.state = cls, state

    def __reduce__(self):
        return _restore, (self.cls, self.state)


def _restore(cls, state):
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj


def test_seasonal_snapshots_from_before_the_flat_layout_continue_the_same():
    rng = random.Random(6)
    fresh = SeasonalBaseline(seasons=((7 * DAY, 168), (DAY, 24)), min_samples=2, tz="Europe/Paris")
    for i in range(24 * 10):
        fresh.learn_one({"value": rng.randint(0, 30), "ts": MONDAY + i * H})
    for sums in (True, False):
        old = _seasonal_as_before(fresh, sums)
        new = pickle.loads(pickle.dumps(fresh))
        for i in range(24 * 10, 24 * 20):
            x = {"value": rng.randint(0, 30) + rng.random() * (i % 7 == 0), "ts": MONDAY + i * H}
            assert old.score_one(x) == new.score_one(x)
            assert old.mean(x) == new.mean(x)
            old.learn_one(x)
            new.learn_one(x)
    empty = _seasonal_as_before(SeasonalBaseline(min_samples=1), sums=False)
    empty.learn_one({"value": 3.0, "ts": MONDAY})
    assert empty.mean({"ts": MONDAY}) == 3.0


@pytest.mark.parametrize("fields", [
    ("P1", 900, 1.25, "lane_delay", "slow", 5, "N1"),
    ("P1", 900, 0.5, None, "P1: nothing unusual.", 12),
    ("P1", 900, 1.5, "weather", "two hubs", 30, None, ("P1", "P2")),
])
def test_fast_assessments_equal_plainly_made_ones(fields):
    from detectors.facility.classify import Assessment, _assessment

    made = _assessment(*fields)
    plain = Assessment(*fields)
    assert made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    assert pickle.loads(pickle.dumps(made)) == plain
    with pytest.raises(AttributeError):  # still frozen (FrozenInstanceError)
        made.score = 0.0  # type: ignore[misc]


def test_the_package_exports_every_name_of_its_all():
    import detectors.facility as facility

    assert all(hasattr(facility, name) for name in facility.__all__)
    assert facility.FacilityMonitor.__module__ == "detectors.facility.monitor"


def test_figures_report_the_usual_the_detector_knew_before_the_window() -> None:
    """``arrivals_usual_rolling`` is what the silence test compared the window with: learned
    from the windows before it, so the window's own arrivals cannot move it (its scans scale
    it with the facility's volume: kept the same here)."""
    monitor = FacilityMonitor()
    rng = random.Random(3)
    t0 = 1_790_208_000
    for w in range(4 * 96):  # four days of a busy evening and a quiet day
        start = t0 + w * 900
        busy = 18 <= (w % 96) // 4 < 22
        n = rng.randint(8, 14) if busy else rng.randint(0, 2)
        monitor.assess([FacilityWindow("P1", start, start + 900, arrivals=n, scans=n)])
    start = t0 + 4 * 96 * 900 + 19 * 3600  # an evening window
    rows = []
    for n in (0, 60):
        again = copy.deepcopy(monitor)
        window = FacilityWindow("P1", start, start + 900, arrivals=n, scans=60)
        again.assess([window])
        rows.append(again.figures(window))
    assert rows[0]["arrivals_usual_rolling"] is not None
    assert rows[0]["arrivals_usual_rolling"] == rows[1]["arrivals_usual_rolling"]
    assert rows[0]["arrivals_rolling"] + 60 == rows[1]["arrivals_rolling"]
    assert rows[0]["arrivals_usual_rolling"] > 20  # an evening: three hours of trucks


def _retention_reference(width: int, horizon: int, minimum: int, tz: str | None):
    """CohortRetention written plainly (cells in a dict keyed by level, slot and age): the
    oracle for the table-and-offsets implementation."""
    from detectors.facility.seasonal import _utc_offset

    cells: dict[tuple[str, int, int], list[int]] = defaultdict(lambda: [0, 0, 0])
    followed: dict[int, int] = {}  # arrival window -> cohort size, in order first seen

    def one_pass(x: dict, score: bool, learn: bool) -> tuple[float, float, float]:
        now = x["ts"] // width
        known = followed if learn else dict(followed)
        for arrived, n in x["cohorts"].items():
            if 0 <= now - arrived < horizon and n > known.get(arrived, 0):
                known[arrived] = n
        held = expected = variance = 0.0
        for arrived, size in list(known.items()):
            age = now - arrived
            if not 0 <= age < horizon:
                if learn and age >= horizon:
                    del known[arrived]
                continue
            local = arrived * width + (_utc_offset(tz, arrived * width // 900) if tz else 0)
            second = local % 86400
            fine = cells["day", second * (86400 // width) // 86400, age]
            hour = cells["hour", second * 24 // 86400, (second % 3600) // width + age]
            n = x["cohorts"].get(arrived, 0)
            if score:
                used = fine if fine[2] >= minimum else hour if hour[2] >= minimum else None
                if used is not None:
                    share = used[0] / used[1]
                    held += n
                    expected += size * share
                    variance += size * share * (1.0 - share)
            if learn:
                for cell in (fine, hour):
                    cell[0] += n
                    cell[1] += size
                    cell[2] += 1
        return held, expected, variance

    return one_pass


@pytest.mark.parametrize("tz", [None, "America/Chicago", "Asia/Kolkata"])
def test_cohort_retention_matches_a_plain_reference_bit_for_bit(tz: str | None) -> None:
    """Every pass returns exactly what the plain reference does (the same sums in the same
    order), through warm-up, hour-level fallback, drained cohorts, cohorts growing late and
    cohorts leaving the horizon, and a day idle (nothing followed): ``update_one`` in one
    pass, and ``expected_one`` then ``learn_one``. (The two differ in warm-up: in one pass a
    cohort that falls back to its hour's cell reads what a cohort of the same hour learned
    earlier in that pass.)"""
    rng = random.Random(7)
    width, horizon = 900, 96
    fused = CohortRetention(width=width, horizon=horizon, min_cohorts=3, tz=tz)
    split = CohortRetention(width=width, horizon=horizon, min_cohorts=3, tz=tz)
    fused_reference = _retention_reference(width, horizon, 3, tz)
    split_reference = _retention_reference(width, horizon, 3, tz)
    present: dict[int, int] = {}
    start = 1_793_500_000 // width  # 2026-10-31: the US DST switch is in range
    scored_passes = idle_passes = 0
    for w in range(start, start + 96 * 8):
        for arrived, n in present.items():
            present[arrived] = n - sum(rng.random() < 0.25 for _ in range(n))
        if start + 96 * 3 <= w < start + 96 * 5:  # the hub idles longer than the horizon
            present.clear()
        else:
            present[w] = rng.choice([0, 0, 3, 12, 30])
        if rng.random() < 0.1 and w - 5 in present:  # a late scan adds to an older cohort
            present[w - 5] += 2
        x = {"ts": w * width, "cohorts": {a: n for a, n in present.items() if n}}
        idle_passes += not x["cohorts"] and not fused._n  # (nothing to pass over)
        one_pass = fused.update_one(x)
        assert one_pass == fused_reference(x, score=True, learn=True)
        scored = split.expected_one(x)
        assert scored == split_reference(x, score=True, learn=False)
        split.learn_one(x)
        split_reference(x, score=False, learn=True)
        scored_passes += one_pass[1] > 0
    assert fused._table.tolist() == split._table.tolist()
    assert scored_passes > 96 * 4  # past the warm-up, most passes have cells to use
    assert idle_passes > 96 / 2


def test_merged_windows_do_not_depend_on_the_order_the_shards_sent_them() -> None:
    """The network step merges the shards' windows in the order they arrive, which differs
    between one process and several; the cohort pass sums floats in dict order, so the
    merged window must come out the same either way (a score once moved in its last digit)."""
    from itertools import permutations

    from detectors.facility.windows import merge

    shards = [
        FacilityWindow("P1", 0, 900, arrivals=2, cohorts={5: 1, 2: 3}, lanes={"B": (1, 60, 60)}),
        FacilityWindow("P1", 0, 900, arrivals=1, cohorts={7: 2, 5: 4}, lanes={"A": (2, 90, 50)}),
        FacilityWindow("P1", 0, 900, cohorts={1: 1}, lanes={"B": (1, 30, 30)}),
    ]
    results = {repr([(w.facility, w.arrivals, list(w.cohorts.items()), list(w.lanes.items()))
                     for w in merge(order)]) for order in permutations(shards)}
    assert len(results) == 1
    (merged,) = merge(shards)
    assert list(merged.cohorts.items()) == [(1, 1), (2, 3), (5, 5), (7, 2)]
    assert merged.lanes == {"A": (2, 90, 50), "B": (2, 90, 60)}


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 4_000_000),
    width=st.sampled_from([60, 900, 3600, 7200]),
    ages=st.lists(st.integers(-3, 400), max_size=40),
    hours=st.sampled_from([0, 4, 12, 12.5, 47.9]),
)
def test_overdue_counts_what_the_plain_formula_counts(start, width, ages, hours):
    """``FacilityWindow.overdue`` (integer bounds, C-level filtering) equals the plain sum
    over the cohorts whose arrival window's middle is ``hours`` or more before the end."""
    window = FacilityWindow("P1", start * width, (start + 1) * width,
                            cohorts={start - a: 1 + a % 7 for a in ages})
    limit = window.end - hours * 3600 - width / 2
    plain = sum(n for w, n in window.cohorts.items() if w * width <= limit)
    assert window.overdue(hours) == plain


def test_a_lanes_median_kept_sorted_equals_sorting_its_transits_each_time():
    """``_Lane`` keeps its last 64 transits sorted beside the ring: its median after every
    arrival window equals the median of the ring sorted afresh, also from a snapshot taken
    before the sorted copy existed (the ring alone)."""
    from detectors.facility.monitor import _Lane
    from detectors.facility.seasonal import _median

    rng = random.Random(9)
    lane = _Lane("N1")
    for i in range(400):
        lane.learn(rng.choice([3.0, 3.5, 4.25, rng.uniform(1, 30), round(rng.uniform(1, 5), 1)]))
        if len(lane.transits) >= 8:
            assert lane.median == _median(sorted(lane.transits))
        assert list(lane.ordered) == sorted(lane.transits)
        if i == 200:  # as saved before: the slots without the sorted copy (it was last)
            state = lane.__getstate__()[:-1]
            lane = _Lane.__new__(_Lane)
            lane.__setstate__(state)


@pytest.mark.parametrize("seed", [1, 2])
def test_backlog_expiry_looks_for_the_oldest_only_when_it_can_be_due(seed):
    """``FacilityStats.close`` keeps a lower bound of each facility's oldest arrival window
    and looks for the real one only once the bound is old enough to expire: its windows and
    expiries equal those of a copy made to look every window (as before the bound), with
    late scans adding older cohorts, and across a snapshot from before the bound."""
    rng = random.Random(seed)
    bounded = FacilityStats(W, max_age_seconds=5 * H)
    looking = FacilityStats(W, max_age_seconds=5 * H)
    t0 = 1_790_208_000
    for step in range(4 * 96):
        now = t0 + step * W
        for _ in range(rng.randint(0, 6)):
            facility = rng.choice(["P1", "P2", "N1"])
            ts = now + rng.randrange(W) - (rng.choice([0, 0, 0, 3 * H]))  # some late
            arrived, dwell = rng.random() < 0.5, rng.choice([-1, 600, 2 * H, 4 * H])
            for stats in (bounded, looking):
                if arrived:
                    stats.arrival(facility, ts)
                else:
                    stats.departure(facility, ts, dwell)
        for state in looking._state.values():
            state.low = -float("inf")
        got, want = bounded.close(now), looking.close(now)
        assert [(w.facility, w.backlog, w.cohorts) for w in got] == [
            (w.facility, w.backlog, w.cohorts) for w in want
        ]
        assert bounded.expired == looking.expired
        if step == 2 * 96:  # as saved before the bound: four fields a facility
            for state in bounded._state.values():
                old = state.__getstate__()[:4]
                state.__setstate__(old)
    assert bounded.expired > 0


def _dwell_read_by_pandas() -> list[dict]:
    """``dwell_p90_hours`` of facility_windows.jsonl as pandas reads it: a null (no departure
    for 6 h) is NaN, not None."""
    import io

    import pandas as pd

    rng = random.Random(3)
    values = [f"{rng.gauss(6, 1):.3f}" for _ in range(100)] + ["null"] + [
        f"{rng.gauss(6, 1):.3f}" for _ in range(100)]
    rows = pd.read_json(io.StringIO("\n".join(f'{{"dwell_p90_hours": {v}}}' for v in values)),
                        lines=True)
    assert rows["dwell_p90_hours"].isna().sum() == 1
    return rows.to_dict("records")


def test_a_missing_value_read_by_pandas_does_not_blind_the_detectors() -> None:
    """One NaN made DwellDrift's running mean NaN for good (never a drift again) and a
    SeasonalBaseline's scores NaN (never over a threshold) for a window of values."""
    drift = DwellDrift("dwell_p90_hours", delta=0.5, threshold=10.0)
    for x in _dwell_read_by_pandas():
        drift.learn_one(x)
    assert drift.score_one({"dwell_p90_hours": float("nan")}) == 0.0
    rng = random.Random(4)
    scores = []
    for _ in range(20):  # the dwell jumps from ~6 h to ~12 h
        x = {"dwell_p90_hours": rng.gauss(12, 1)}
        scores.append(drift.score_one(x))
        drift.learn_one(x)
    assert all(math.isfinite(s) for s in scores) and max(scores) >= 1.0
    plain = SeasonalBaseline(min_samples=3)
    for v in [1, 2, 3, float("nan"), 2, 3, float("inf")]:
        plain.learn_one({"value": v})
    assert plain.score_one({"value": 100}) > 5 and plain.score_one({"value": math.nan}) == 0.0


def test_a_seasonal_baseline_refuses_a_bad_zone_or_min_samples_before_learning_anything() -> None:
    """A mistyped zone raised at the first value, after learning it into the rolling level;
    the same call again then learned it silently (into the slots of UTC midnight's)."""
    with pytest.raises(ValueError, match="America/Chicgo"):
        SeasonalBaseline(tz="America/Chicgo")
    with pytest.raises(ValueError, match="min_samples"):
        SeasonalBaseline(min_samples=0)  # (scored an IndexError on a fresh detector)
    chicago = SeasonalBaseline(tz="America/Chicago", min_samples=1)
    chicago.learn_one({"value": 5, "ts": 1_790_208_000})
    assert chicago.score_one({"value": 5, "ts": 1_790_208_000}) == 0.0
