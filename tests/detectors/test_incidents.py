"""IncidentManager: hysteresis, keys, updates, reclassification, pickling, the contract."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors.evaluate import INCIDENT_COLUMNS, load_incidents
from detectors.incidents import IncidentManager

T0 = 1_794_182_400  # 2026-11-09T00:00:00Z
W = 900


def feed(manager, scores, kind="facility_slowdown", facility="P0200", affected=None, **kw):
    records = []
    for i, score in enumerate(scores):
        n = 40 if affected is None else affected[i]
        records += manager.update(facility, T0 + W * (i + 1), score, kind, "evidence", n, **kw)
    return records


def statuses(records):
    return [(r["status"], r["incident_key"]) for r in records]


def test_a_flapping_signal_opens_exactly_one_incident():
    # the score crosses the open threshold again and again, dipping between the thresholds
    # or briefly under the close threshold: one incident, resolved once it stays low
    scores = [0.2, 1.3, 1.4, 0.3, 1.2, 0.4, 1.6, 0.8, 1.1, 0.2, 0.3, 1.2, 0.1] + [0.1] * 12
    records = feed(IncidentManager(for_windows=2, clear_windows=4), scores)
    assert [r["status"] for r in records] == ["open", "resolved"]
    assert len({r["incident_key"] for r in records}) == 1


def test_without_hysteresis_the_same_signal_would_open_several():
    scores = [0.2, 1.3, 1.4, 0.3, 1.2, 1.3, 0.1, 0.1, 1.6, 1.8, 0.1, 0.1]
    records = feed(IncidentManager(close_threshold=1.0, for_windows=2, clear_windows=1), scores)
    assert [r["status"] for r in records].count("open") == 3  # the check can fail


def test_a_single_spike_does_not_open():
    records = feed(IncidentManager(for_windows=2), [0.1, 5.0, 0.1, 0.1, 5.0, 0.2])
    assert records == []


def test_opening_needs_a_kind_but_counts_windows_without_one():
    manager = IncidentManager(for_windows=3)
    records = []
    for i, (score, kind) in enumerate(
        [(1.5, None), (1.6, None), (1.7, None), (1.8, "facility_stop")]
    ):
        records += manager.update("N02", T0 + W * (i + 1), score, kind, "stopped", 20)
    assert statuses(records) == [("open", "N02:facility_stop:20261109T0100Z")]
    assert records[0]["opened_at"] == "2026-11-09T01:00:00+00:00"


def test_keys_are_deterministic_and_name_subject_kind_and_window():
    scores = [1.2] * 3 + [0.0] * 10
    a = feed(IncidentManager(), scores)
    b = feed(IncidentManager(), scores)
    assert a == b
    assert a[0]["incident_key"] == "P0200:facility_slowdown:20261109T0030Z"
    lane = feed(IncidentManager(), scores, kind="lane_delay", lane_to="N03")
    assert lane[0]["incident_key"] == "P0200>N03:lane_delay:20261109T0030Z"
    assert lane[0]["lane_to"] == "N03"


def test_updates_follow_material_changes_of_the_affected_count():
    affected = [40, 40, 42, 45, 52, 53, 80, 81, 81, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    scores = [1.5] * 9 + [0.0] * 9
    records = feed(IncidentManager(update_ratio=0.25, update_min=5), scores, affected=affected)
    assert [(r["status"], r["affected_packages"]) for r in records] == [
        ("open", 40),
        ("update", 52),
        ("update", 80),
        ("update", 0),
        ("resolved", 0),
    ]


def test_a_delay_turning_out_to_be_a_feed_outage_is_reclassified_at_once():
    manager = IncidentManager()
    records = feed(manager, [1.5, 1.5, 1.5], kind="facility_slowdown", facility="N03")
    records += manager.update("N03", T0 + 4 * W, 2.0, "feed_outage", "scans arrive late", 66)
    assert [(r["status"], r["kind"]) for r in records] == [
        ("open", "facility_slowdown"),
        ("resolved", "facility_slowdown"),
        ("open", "feed_outage"),
    ]
    assert records[1]["resolved_at"] == "2026-11-09T01:00:00+00:00"
    assert records[1]["evidence"].startswith("Reclassified")
    assert records[1]["reclassified_as"] == "feed_outage"  # the folder reads this
    assert "reclassified_as" not in records[0] and "reclassified_as" not in records[2]
    assert records[2]["incident_key"] == "N03:feed_outage:20261109T0100Z"


def test_a_reclassified_delay_opens_its_feed_outage_whatever_the_score():
    """The late scans are decisive: with a stricter open threshold than the feed score
    reached, the delay still closes and the feed outage still opens (nothing is left
    without an incident), then resolves like any other."""
    manager = IncidentManager(open_threshold=1.5, close_threshold=0.5, clear_windows=2)
    records = feed(manager, [1.6, 1.6], kind="facility_slowdown", facility="N03")
    records += manager.update("N03", T0 + 3 * W, 1.2, "feed_outage", "scans arrive late", 66)
    for i in (4, 5):  # two quiet windows resolve it
        records += manager.update("N03", T0 + i * W, 0.1, "feed_outage", "scans on time", 66)
    assert [(r["status"], r["kind"]) for r in records] == [
        ("open", "facility_slowdown"),
        ("resolved", "facility_slowdown"),
        ("open", "feed_outage"),
        ("resolved", "feed_outage"),
    ]
    assert manager.open_incidents == 0 and (manager.opened, manager.resolved) == (2, 2)


def test_other_kind_changes_keep_the_open_incident():
    manager = IncidentManager()
    records = feed(manager, [1.5, 1.5], kind="facility_stop", facility="N02")
    records += feed(manager, [1.5] * 3, kind="facility_slowdown", facility="N02")
    assert [r["status"] for r in records] == ["open"]
    assert records[0]["kind"] == "facility_stop"


def test_weather_is_its_own_subject_and_lists_the_facilities():
    manager = IncidentManager()
    records = []
    for i in range(3):
        records += manager.update(
            "N00", T0 + W * (i + 1), 1.4, "weather", "region 0", 300, facilities=("P0000", "P0001")
        )
        records += manager.update("N00", T0 + W * (i + 1), 0.0, None, "quiet", 5)
    assert statuses(records) == [("open", "N00:weather:20261109T0030Z")]
    assert records[0]["facilities"] == "P0000 P0001"


def test_finish_resolves_subjects_that_stop_reporting():
    manager = IncidentManager(clear_windows=2)
    records = feed(manager, [1.5, 1.5], kind="lane_delay", lane_to="N03")
    assert manager.open_incidents == 1
    for i in range(3, 6):
        records += manager.finish(T0 + W * i)
    assert [r["status"] for r in records] == ["open", "resolved"]
    assert records[-1]["lane_to"] == "N03"
    assert manager.open_incidents == 0 and manager.opened == manager.resolved == 1


def test_pickled_manager_continues_identically():
    scores = [0.3, 1.2, 1.5, 0.9, 1.7, 0.2, 0.2, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    manager = IncidentManager(clear_windows=3)
    feed(manager, scores[:4])
    clones = [pickle.loads(pickle.dumps(manager)), copy.deepcopy(manager)]
    rest = [
        manager.update("P0200", T0 + W * (i + 10), s, "facility_slowdown", "e", 40)
        for i, s in enumerate(scores[4:])
    ]
    for clone in clones:
        again = [
            clone.update("P0200", T0 + W * (i + 10), s, "facility_slowdown", "e", 40)
            for i, s in enumerate(scores[4:])
        ]
        assert again == rest


def test_records_follow_the_incidents_contract_and_load_in_the_evaluator(tmp_path):
    records = feed(IncidentManager(), [1.5] * 3 + [0.0] * 9)
    assert all(set(INCIDENT_COLUMNS) <= set(r) for r in records)
    path = tmp_path / "incidents.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    frame = load_incidents(path)
    assert list(frame["status"]) == ["open", "resolved"]
    assert str(frame["opened_at"].iloc[0]) == "2026-11-09 00:30:00+00:00"
    assert frame["resolved_at"].isna().iloc[0]
    assert str(frame["resolved_at"].iloc[1]) == "2026-11-09 02:45:00+00:00"  # 8 low windows


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="close_threshold"):
        IncidentManager(open_threshold=1.0, close_threshold=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        IncidentManager(for_windows=0)


@given(st.lists(st.floats(0, 3, allow_nan=False), max_size=80))
def test_incidents_alternate_open_then_resolved_and_never_overlap(scores):
    records = feed(IncidentManager(for_windows=2, clear_windows=3), scores)
    opens = [r for r in records if r["status"] in ("open", "resolved")]
    assert [r["status"] for r in opens] == ["open", "resolved"] * (len(opens) // 2) + (
        ["open"] if len(opens) % 2 else []
    )
    for r in records:
        assert r["opened_at"] <= (r["resolved_at"] or r["opened_at"])
