"""DeliveryEstimator: conditioning on silence, promises, levels, River-style checks."""

from __future__ import annotations

import copy
import pickle
import random
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors import DeliveryEstimator

H = 3600
T0 = 1732492800  # 2024-11-25T00:00:00Z


def deliveries(seed, n=300, facility="PO-1", low=1.0, high=7.0, service="ground"):
    """Packages out for delivery at t, delivered uniformly ``low``-``high`` hours later; their
    earlier arrival at the post office 3 hours before."""
    rng = random.Random(seed)
    for _ in range(n):
        t = T0 + rng.randrange(20 * 86400)
        yield {
            "service": service,
            "delivered_ts": t + rng.uniform(low, high) * H,
            "scans": [(facility, "07", t - 3 * H), (facility, "OF", t), (facility, "01", t + H)],
        }


def trained(**kwargs):
    estimator = DeliveryEstimator(**kwargs)
    for x in deliveries(0, n=2000):
        estimator.learn_one(x)
    return estimator


def at(silence, promised_hours=6.0, **extra):
    x = {"facility": "PO-1", "code": "OF", "service": "ground", "last_ts": T0, "silence": silence}
    if promised_hours is not None:
        x["promised_by_ts"] = T0 + promised_hours * H
    return x | extra


def test_p_late_increases_with_silence():
    estimator = trained()
    p = [estimator.estimate(at(s * H / 2))[1] for s in range(0, 16)]
    assert all(a <= b for a, b in zip(p, p[1:], strict=False))
    assert p[0] < 0.3 < 0.9 < p[-1]
    assert p[-1] == 1.0  # the promise has passed and the package is not delivered


def test_p_late_increases_with_an_earlier_promise():
    estimator = trained()
    p = [estimator.estimate(at(2 * H, promised_hours=h / 2))[1] for h in range(20, 1, -1)]
    assert all(a <= b for a, b in zip(p, p[1:], strict=False))
    assert p[0] < 0.05 < 0.9 < p[-1]


def test_estimates_match_the_true_distribution():
    # Remaining time from OF is uniform on 1-7 h. Given s silent hours (1 <= s < 7) it is
    # uniform on s-7 h: median (s + 7) / 2, P(R > d) = (7 - d) / (7 - s).
    estimator = trained()
    for silence, promise in [(0, 6), (2, 5), (4, 6.5), (5.5, 6)]:
        eta, p_late = estimator.estimate(at(silence * H, promise))
        low = max(silence, 1)
        assert (eta - T0) / H == pytest.approx((low + 7) / 2, abs=0.3)
        assert p_late == pytest.approx((7 - promise) / (7 - low), abs=0.05)


@given(st.floats(0, 30 * 86400), st.floats(-86400, 30 * 86400))
def test_eta_is_never_earlier_than_now_and_p_late_is_a_probability(silence, promise):
    estimator = ESTIMATOR
    eta, p_late = estimator.estimate(at(silence, promise / H))
    assert eta >= T0 + silence
    assert 0.0 <= p_late <= 1.0


ESTIMATOR = trained()


def test_without_a_promise_p_late_is_none():
    eta, p_late = trained().estimate(at(H, promised_hours=None))
    assert eta is not None and p_late is None


def test_silent_in_warm_up_and_for_terminal_codes():
    estimator = DeliveryEstimator()
    assert estimator.estimate(at(H)) == (None, None)
    estimator = trained()
    assert estimator.estimate(at(H, code="01")) == (None, None)
    assert estimator.estimate(at(H, code="A1")) == (None, None)  # never learned


def test_uses_the_facility_once_it_has_enough_data_else_the_network():
    estimator = DeliveryEstimator(min_samples=30)
    for x in deliveries(1, n=300, facility="PO-1", low=1, high=3):
        estimator.learn_one(x)
    for x in deliveries(2, n=300, facility="PO-2", low=10, high=12):
        estimator.learn_one(x)
    for x in deliveries(3, n=10, facility="PO-3", low=20, high=22):
        estimator.learn_one(x)

    def eta_hours(facility):
        return (estimator.estimate(at(0, facility=facility))[0] - T0) / H

    assert eta_hours("PO-1") == pytest.approx(2, abs=0.3)
    assert eta_hours("PO-2") == pytest.approx(11, abs=0.3)
    network = eta_hours("PO-new")
    assert 3 < network < 10  # the mixture of all post offices
    assert eta_hours("PO-3") == network  # 10 deliveries are too few


def test_earlier_scans_are_learned_too():
    estimator = trained()
    eta, _ = estimator.estimate(at(0, code="07"))
    assert (eta - T0) / H == pytest.approx(3 + 4, abs=0.3)


def test_learn_one_does_not_mutate_its_input():
    estimator = DeliveryEstimator()
    for x in deliveries(4, n=50):
        before = copy.deepcopy(x)
        estimator.learn_one(x)
        assert x == before
    x = at(H)
    before = dict(x)
    estimator.estimate(x)
    assert x == before


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copy_continues_identically(how):
    stream = list(deliveries(5, n=400))
    a = DeliveryEstimator()
    for x in stream[:200]:
        a.learn_one(x)
    b = pickle.loads(pickle.dumps(a)) if how == "pickle" else copy.deepcopy(a)
    for x in stream[200:]:
        a.learn_one(x)
        b.learn_one(x)
    probes = [at(s * H) for s in range(10)]
    assert [a.estimate(x) for x in probes] == [b.estimate(x) for x in probes]


def test_same_seed_same_estimates():
    def run(seed):
        estimator = DeliveryEstimator()
        for x in deliveries(seed):
            estimator.learn_one(x)
        return [estimator.estimate(at(s * H)) for s in range(10)]

    assert run(6) == run(6)
    assert run(6) != run(7)


@pytest.mark.parametrize("probs", [(0.5,), (0.1, 0.9), (0.5, 0.1), (0.0, 0.5), (0.5, 0.5, 0.9)])
def test_bad_probs_are_refused(probs):
    with pytest.raises(ValueError):
        DeliveryEstimator(probs=probs)


# -- overdue packages -------------------------------------------------------------------------


def overdue(silence_h, remaining_h, code="OF", service="ground"):
    return {"code": code, "service": service, "last_ts": T0,
            "resumed_ts": T0 + silence_h * H, "delivered_ts": T0 + remaining_h * H}


def test_overdue_estimate_conditions_on_how_long_packages_stayed_silent():
    estimator = DeliveryEstimator(overdue_min=5)
    for i in range(10):  # moved on after 2 h, delivered ~40 h after the scan: a slow trip
        estimator.learn_overdue(overdue(2, 40 + i))
    for i in range(10):  # silent 30 h (lost and found), delivered ~50 h after the scan
        estimator.learn_overdue(overdue(30, 50 + i))
    eta, _ = estimator.estimate_overdue(at(20 * H))
    # only the packages silent longer than 20 h speak: median of 50..59 h
    assert eta == T0 + 54.5 * H
    eta_early, _ = estimator.estimate_overdue(at(1 * H))  # all 20 packages
    assert eta_early == T0 + 49.5 * H


def test_overdue_p_late_is_the_share_delivered_after_the_promise():
    estimator = DeliveryEstimator(overdue_min=5)
    for hours in range(40, 50):
        estimator.learn_overdue(overdue(30, hours))
    assert estimator.estimate_overdue(at(20 * H, promised_hours=45))[1] == pytest.approx(0.4)
    assert estimator.estimate_overdue(at(20 * H, promised_hours=10))[1] == 1.0  # promise gone
    assert estimator.estimate_overdue(at(20 * H, promised_hours=None))[1] is None


def test_overdue_keeps_only_the_newest_window():
    estimator = DeliveryEstimator(overdue_window=10, overdue_min=5)
    for _ in range(10):
        estimator.learn_overdue(overdue(30, 100))
    assert estimator.estimate_overdue(at(20 * H))[0] == T0 + 100 * H
    for _ in range(10):  # the network got faster: the old packages are forgotten
        estimator.learn_overdue(overdue(30, 40))
    assert estimator.estimate_overdue(at(20 * H))[0] == T0 + 40 * H


def test_overdue_prefers_the_service_then_the_code_then_any_stage():
    estimator = DeliveryEstimator(overdue_min=5)
    for _ in range(5):
        estimator.learn_overdue(overdue(30, 40, service="express"))
        estimator.learn_overdue(overdue(30, 80, service="ground"))
        estimator.learn_overdue(overdue(30, 120, code="A1"))
    assert estimator.estimate_overdue(at(20 * H, service="express"))[0] == T0 + 40 * H
    # (OF, priority) is unknown: (OF) pools express and ground
    assert estimator.estimate_overdue(at(20 * H, service="priority"))[0] == T0 + 60 * H
    # (T1, ...) and (T1) unknown: any stage
    assert estimator.estimate_overdue(at(20 * H, code="T1"))[0] == T0 + 80 * H


def test_overdue_without_data_is_no_earlier_than_the_usual_remaining_time_from_now():
    estimator = trained()  # delivered 1-7 h after the OF scan: median 4 h
    plain, _ = estimator.estimate(at(30 * H))
    eta, _ = estimator.estimate_overdue(at(30 * H))
    assert plain < T0 + 31 * H  # the plain tail: "nearly there"
    assert eta == pytest.approx(T0 + 34 * H, abs=0.5 * H)  # now + the usual ~4 h
    assert DeliveryEstimator().estimate_overdue(at(30 * H)) == (None, None)
    # a promise the floor has passed: more likely late than not
    _, p_late = estimator.estimate_overdue(at(30 * H, promised_hours=32))
    assert p_late >= 0.5


def test_overdue_ignores_impossible_records_and_terminal_codes():
    estimator = DeliveryEstimator(overdue_min=1)
    estimator.learn_overdue(overdue(30, 20))  # delivered before it moved again
    estimator.learn_overdue(overdue(-1, 20))
    estimator.learn_overdue(overdue(30, 40, code="01"))
    assert estimator.estimate_overdue(at(20 * H)) == (None, None)


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_overdue_model_survives_a_copy(how):
    a = DeliveryEstimator(overdue_window=8, overdue_min=3)
    rng = random.Random(3)
    stream = [overdue(rng.uniform(10, 60), rng.uniform(60, 120)) for _ in range(40)]
    for x in stream[:20]:
        a.learn_overdue(x)
    b = pickle.loads(pickle.dumps(a)) if how == "pickle" else copy.deepcopy(a)
    for x in stream[20:]:
        a.learn_overdue(x)
        b.learn_overdue(x)
    probes = [at(s * H) for s in range(0, 60, 5)]
    assert [a.estimate_overdue(x) for x in probes] == [b.estimate_overdue(x) for x in probes]


def test_a_snapshot_from_before_the_overdue_model_loads():
    old = trained()
    state = old.__dict__.copy()
    for name in ("_overdue", "overdue_window", "overdue_min"):
        del state[name]
    restored = DeliveryEstimator.__new__(DeliveryEstimator)
    restored.__setstate__(state)
    assert restored.estimate_overdue(at(2 * H)) == old.estimate_overdue(at(2 * H))
    restored.learn_overdue(overdue(30, 40))  # and it learns


def plant_arrivals(seed, n=800):
    """Arrivals at plant P1: those at 02:00-03:00 UTC catch the night sort and are delivered
    8-12 h later, those at 14:00-15:00 wait for the next night: 28-32 h."""
    rng = random.Random(seed)
    for i in range(n):
        day = T0 + rng.randrange(20) * 86400
        t, low = (day + 2 * H, 8) if i % 2 else (day + 14 * H, 28)
        t += rng.randrange(H)
        yield {"service": "express", "delivered_ts": t + rng.uniform(low, low + 4) * H,
               "scans": [("P1", "A1", t)]}


@pytest.mark.parametrize("plant", ["P1", "P-new"])
def test_a_plant_scan_is_estimated_from_its_time_of_day(plant):
    """An arrival just before the night sort is fast, one after it waits a day: a package
    arriving at 02:30 with 20 h to its promise is not late, one arriving at 14:30 is. Without
    phases both get the day's mixture (half of it past 20 h). A plant with too few
    deliveries of its own is estimated from every plant at that time of day."""
    phased, pooled = DeliveryEstimator(), DeliveryEstimator(phase_hours=None)
    for x in plant_arrivals(1):
        phased.learn_one(x)
        pooled.learn_one(x)

    def estimate(estimator, hour):
        t = T0 + 30 * 86400 + hour * H + H // 2
        eta, p_late = estimator.estimate({"facility": plant, "code": "A1", "service": "express",
                                          "last_ts": t, "silence": 0, "promised_by_ts": t + 20 * H})
        return (eta - t) / H, p_late

    early, late = estimate(phased, 2), estimate(phased, 14)
    assert early[0] == pytest.approx(10, abs=1) and early[1] < 0.05
    assert late[0] == pytest.approx(30, abs=1) and late[1] > 0.9
    mixed = estimate(pooled, 2)
    assert mixed == estimate(pooled, 14)
    assert 0.3 < mixed[1] < 0.7


def test_phases_are_for_plant_scans_only():
    """Delivery units keep one key per (facility, code, service): tens of thousands of them
    times eight phases would not fit; a plant's scans get a key per phase."""
    estimator = trained()
    for x in plant_arrivals(2, n=100):
        estimator.learn_one(x)
    assert set(estimator._stages) == {
        ("PO-1", "07", "ground"), ("PO-1", "OF", "ground"),  # a delivery unit: no phases
        ("P1", "A1", "express", 0), ("P1", "A1", "express", 4),  # 02 h and 14 h
        ("P1", "A1", "express")}  # and the whole day's, for overdue packages


@pytest.mark.parametrize("hours", [0, 5, 25])
def test_a_phase_must_divide_the_day(hours):
    with pytest.raises(ValueError, match="phase_hours"):
        DeliveryEstimator(phase_hours=hours)


def test_a_snapshot_from_before_the_phases_estimates_as_it_did():
    old = DeliveryEstimator(phase_hours=None)
    for x in plant_arrivals(3):
        old.learn_one(x)
    state = old.__dict__.copy()
    del state["phase_hours"]
    restored = DeliveryEstimator.__new__(DeliveryEstimator)
    restored.__setstate__(state)
    probe = {"facility": "P1", "code": "A1", "service": "express", "last_ts": T0 + 2 * H,
             "silence": 0, "promised_by_ts": T0 + 22 * H}
    assert restored.phase_hours is None
    assert restored.estimate(probe) == old.estimate(probe) != (None, None)



def test_an_overdue_package_is_estimated_over_the_whole_day():
    """One time of day's distribution is narrow: its tail would say "nearly there" for a
    package that missed its sort long ago. Overdue, with nothing overdue to learn from, a
    package gets the estimate without phases (``phased=False``), as before them."""
    phased, pooled = DeliveryEstimator(), DeliveryEstimator(phase_hours=None)
    for x in plant_arrivals(4):
        phased.learn_one(x)
        pooled.learn_one(x)
    last = T0 + 30 * 86400 + 2 * H + H // 2  # arrived 02:30: usually delivered 8-12 h later
    x = {"facility": "P1", "code": "A1", "service": "express", "last_ts": last,
         "silence": 20 * H, "promised_by_ts": last + 24 * H}
    assert phased.estimate_overdue(x) == pooled.estimate_overdue(x)
    assert phased.estimate(x) != pooled.estimate(x)


def test_a_plant_with_its_own_history_is_not_estimated_from_the_network_at_that_hour():
    """Review finding: the network's (code, service, phase) stage, pooled over every plant,
    came before a plant's own whole-day stage. A remote plant that always takes 60-70 h, with
    too few deliveries per phase but plenty over the day, got the other plants' 30 h."""
    estimator = DeliveryEstimator()
    for x in plant_arrivals(6, n=2000):  # plant P1: 10 h or 30 h by time of day
        estimator.learn_one(x | {"scans": [("P1", "A1", x["scans"][0][2])]})
    rng = random.Random(7)
    for _ in range(120):  # remote plant PR: 60-70 h whatever the hour, 15 per 3-hour phase
        t = T0 + rng.randrange(20 * 86400)
        estimator.learn_one({"service": "express", "delivered_ts": t + rng.uniform(60, 70) * H,
                             "scans": [("PR", "A1", t)]})
    t = T0 + 30 * 86400 + 14 * H
    eta, p_late = estimator.estimate({"facility": "PR", "code": "A1", "service": "express",
                                      "last_ts": t, "silence": 0, "promised_by_ts": t + 48 * H})
    assert (eta - t) / H == pytest.approx(65, abs=2) and p_late > 0.9


def test_an_overdue_estimate_is_never_earlier_than_moving_now_then_the_usual_time() -> None:
    """The README's floor held only in the fallback: packages overdue at A1 and delivered
    with no scan between (their silence is their time to delivery) put a stalled package's
    estimate 7.5 h after its alert, where moving now it would still need the usual 39.5 h
    (found by a review, 2026-11-24)."""
    from detectors import ScanEvent, StallDetector
    from detectors.tracker import PackageTracker

    hour, day = 3600, 86400
    t0 = 1_790_000_000 - 1_790_000_000 % day
    det = StallDetector(prior_hours={"A1": (6, 16), "07": (6, 30), "OF": (3, 12)},
                        default_prior_hours=None, min_threshold=0, min_samples=10**9)
    est = DeliveryEstimator(min_samples=10, overdue_min=8, phase_hours=None)
    tracker = PackageTracker(det, est, allowed_lateness=0, bucket_seconds=600)
    events = []
    for i in range(40):  # usual: A1 -> 07 (+12 h) -> OF (+30 h) -> 01 (+40 h)
        a = t0 + i * 1800
        events += [ScanEvent(f"N{i}", "GX", "O-1", a - hour, a - hour, service="ground",
                             promised_by_ts=a + 3 * day),
                   ScanEvent(f"N{i}", "A1", "PLANT-1", a, a),
                   ScanEvent(f"N{i}", "07", "PO-1", a + 12 * hour, a + 12 * hour),
                   ScanEvent(f"N{i}", "OF", "PO-1", a + 30 * hour, a + 30 * hour),
                   ScanEvent(f"N{i}", "01", "PO-1", a + 40 * hour, a + 40 * hour)]
    for i in range(10):  # overdue at A1, delivered 20-29 h after it, nothing in between
        a = t0 + 3 * day + i * 600
        events += [ScanEvent(f"L{i}", "GX", "O-1", a - hour, a - hour, service="ground",
                             promised_by_ts=a + 3 * day),
                   ScanEvent(f"L{i}", "A1", "PLANT-1", a, a),
                   ScanEvent(f"L{i}", "01", "PO-1", a + (20 + i) * hour, a + (20 + i) * hour)]
    x0 = t0 + 6 * day
    events += [ScanEvent("X", "GX", "O-1", x0 - hour, x0 - hour, service="ground",
                         promised_by_ts=x0 + 3 * day, recipient_ref="C-X"),
               ScanEvent("X", "A1", "PLANT-1", x0, x0),
               ScanEvent("Z", "GX", "O-9", x0 + 17 * hour, x0 + 17 * hour, service="ground")]
    events.sort(key=lambda e: e.event_ts)
    alert = next(a for a in tracker.process_batch(events) if a["alert_key"] == "X:stall:1")
    now = datetime.fromisoformat(alert["alert_time"]).timestamp()
    eta = datetime.fromisoformat(alert["new_estimate"]).timestamp()
    usual = est.estimate({"facility": "PLANT-1", "code": "A1", "service": "ground",
                          "last_ts": now, "silence": 0}, phased=False)[0] - now
    assert usual > 30 * hour
    assert eta >= now + usual


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_each_stage_holds_river_quantiles_fed_what_it_learned(how) -> None:
    """A stage feeds river's compiled estimators behind the wrappers directly after its
    first value: its quantiles must answer what ``river.stats.Quantile`` fed the same values
    answers, bit for bit, also after a snapshot."""
    from river import stats

    from detectors.eta import _Remaining

    probs = (0.1, 0.5, 0.9)
    stage, plain = _Remaining(probs), [stats.Quantile(p) for p in probs]
    assert [q.get() for q in stage.quantiles] == [None, None, None]
    rng = random.Random(5)
    for i in range(300):
        value = rng.uniform(0, 90 * H)
        stage.update(value)
        for quantile in plain:
            quantile.update(value)
        if i == 100:
            stage = pickle.loads(pickle.dumps(stage)) if how == "pickle" else copy.deepcopy(stage)
        assert [q.get() for q in stage.quantiles] == [q.get() for q in plain]
    assert stage.n == 300


@pytest.mark.parametrize("probs", [(0.1, 0.5, 0.9), (0.05, 0.25, 0.5, 0.75, 0.95)])
@pytest.mark.parametrize("p", [0.5, 0.6, 0.8, 0.9, 0.93, 0.95, 0.97, 0.99, 0.999])
def test_the_remaining_quantile_is_where_p_late_reaches_p(probs, p):
    # what PackageTracker._may_be_late relies on: a promise further ahead than the
    # remaining time's (1 - p) quantile is missed with probability under p, a nearer one
    # with p or more (two seconds and a millionth to either side)
    estimator = trained(probs=probs)
    bound = estimator.remaining_quantile("PO-1", "OF", "ground", 1 - p)
    assert 0 < bound < 7 * H
    for side in (-1, 1):
        ahead = bound * (1 + side * 1e-6) + side * 2
        _, p_late = estimator.estimate(at(0, ahead / H), phased=False)
        assert (p_late < p) if side > 0 else (p_late >= p)


def test_the_remaining_quantile_is_none_where_the_estimate_has_no_stage():
    estimator = trained(min_samples=30)
    assert estimator.remaining_quantile("PO-1", "OF", "express", 0.1) is None  # no data
    assert estimator.remaining_quantile("PO-1", "01", "ground", 0.1) is None  # delivered
    assert estimator.estimate(at(0) | {"service": "express"}, phased=False) == (None, None)
    # another post office: the network's stage, as the estimate's
    assert estimator.remaining_quantile("PO-9", "OF", "ground", 0.1) == pytest.approx(
        estimator.remaining_quantile("PO-1", "OF", "ground", 0.1), rel=0.2)
