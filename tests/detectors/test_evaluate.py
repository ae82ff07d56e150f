"""Tests of the scorer: tiny hand-built truth directories whose answers are worked out by hand."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.evaluate import (
    ALERT_COLUMNS,
    CAUSES,
    INCIDENT_COLUMNS,
    Truth,
    baseline_alerts,
    evaluate,
    format_table,
    load_alerts,
    load_events,
    load_incidents,
    load_truth,
    score,
)

T0 = pd.Timestamp("2024-01-01T00:00:00+00:00")
PROMISE = "2024-01-05T20:00:00+00:00"

PACKAGE_FIELDS = [
    "package_id",
    "service",
    "origin",
    "destination",
    "recipient_ref",
    "label_at",
    "accepted_at",
    "promised_date",
    "promised_by",
    "delivered_at",
    "late",
    "lateness_hours",
    "cause",
    "incident_id",
    "stall_onset",
    "stall_end",
]
INCIDENT_FIELDS = [
    "incident_id",
    "kind",
    "facility_id",
    "lane_to",
    "region",
    "facilities",
    "onset",
    "end",
    "affected_packages",
    "detail",
]

# Four packages, all promised by 2024-01-05 20:00 UTC:
#   A late (package_stall), stalled 01-03 10:00 .. 01-06 10:00, delivered 01-07 12:00
#   B late (facility_slowdown, incident I1), delivered 01-06 08:00
#   C late (natural), delivered 01-06 09:00
#   D on time (none), delivered 01-05 10:00
FOUR = [
    {"package_id": "A", "late": "true", "cause": "package_stall",
     "delivered_at": "2024-01-07T12:00:00+00:00", "lateness_hours": "40",
     "stall_onset": "2024-01-03T10:00:00+00:00", "stall_end": "2024-01-06T10:00:00+00:00"},
    {"package_id": "B", "late": "true", "cause": "facility_slowdown", "incident_id": "I1",
     "delivered_at": "2024-01-06T08:00:00+00:00", "lateness_hours": "12"},
    {"package_id": "C", "late": "true", "cause": "natural",
     "delivered_at": "2024-01-06T09:00:00+00:00", "lateness_hours": "13"},
    {"package_id": "D", "late": "false", "cause": "none",
     "delivered_at": "2024-01-05T10:00:00+00:00"},
]  # fmt: skip

FACILITIES = [
    ("P1", "Plant 1", "plant"),
    ("N1", "NDC 1", "ndc"),
    ("P2", "Plant 2", "plant"),
    ("N2", "NDC 2", "ndc"),
    ("PO1", "Post office 1", "post_office"),
    ("PO2", "Post office 2", "post_office"),
]


def _write_csv(path: Path, fields: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({f: row.get(f, "") for f in fields})


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def make_truth(
    root: Path,
    packages: list[dict],
    incidents: list[dict] = (),
    inquiries: list[dict] = (),
    meta: dict | None = None,
    incident_fields: list[str] = INCIDENT_FIELDS,
) -> Path:
    """Write a truth dir; package rows default to origin PO1, destination PO2, PROMISE."""
    root.mkdir(parents=True, exist_ok=True)
    full = []
    for row in packages:
        base = {
            "service": "ground",
            "origin": "PO1",
            "destination": "PO2",
            "recipient_ref": f"R-{row['package_id']}",
            "label_at": "2024-01-01T08:00:00+00:00",
            "accepted_at": "2024-01-01T10:00:00+00:00",
            "promised_date": "2024-01-05",
            "promised_by": PROMISE,
        }
        full.append({**base, **row})
    _write_csv(root / "packages.csv", PACKAGE_FIELDS, full)
    _write_csv(root / "incidents.csv", incident_fields, list(incidents))
    _write_jsonl(root / "inquiries.jsonl", list(inquiries))
    facilities = [
        {"facility_id": f, "name": n, "kind": k, "region": "NE", "tz": "UTC", "state": "NY"}
        for f, n, k in FACILITIES
    ]
    _write_csv(root / "facilities.csv", ["facility_id", "name", "kind", "region", "tz", "state"],
               facilities)  # fmt: skip
    if meta is None:  # two weeks
        meta = {"scenario": "test", "seed": 1, "start": "2024-01-01T00:00:00+00:00",
                "end": "2024-01-15T00:00:00+00:00"}  # fmt: skip
    (root / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def alert(package_id: str, kind: str, episode: int, when: str, key: str | None = None) -> dict:
    return {
        "alert_key": key if key is not None else f"{package_id}:{kind}:{episode}",
        "kind": kind,
        "package_id": package_id,
        "episode": episode,
        "alert_time": when,
        "facility_id": "P1",
        "promised_by": PROMISE,
        "p_late": 0.7,
        "evidence": "no scan for a while",
    }


def alerts_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=ALERT_COLUMNS) if not rows else pd.DataFrame(rows)


@pytest.fixture
def four(tmp_path: Path) -> Truth:
    inquiries = [
        # A asks at 01-04 12:00, after its alert at 10:00 -> pre-empted
        {"package_id": "A", "recipient_ref": "R-A", "inquiry_time": "2024-01-04T12:00:00+00:00"},
        # A asks again later: only the earliest inquiry counts
        {"package_id": "A", "recipient_ref": "R-A", "inquiry_time": "2024-01-06T12:00:00+00:00"},
        # B asks at 01-05 12:00, before its alert at 01-06 02:00 -> not pre-empted, even though
        # it asks again after the alert (the earliest inquiry is the one to beat)
        {"package_id": "B", "recipient_ref": "R-B", "inquiry_time": "2024-01-06T12:00:00+00:00"},
        {"package_id": "B", "recipient_ref": "R-B", "inquiry_time": "2024-01-05T12:00:00+00:00"},
        # C asks, never alerted -> not pre-empted
        {"package_id": "C", "recipient_ref": "R-C", "inquiry_time": "2024-01-05T21:00:00+00:00"},
        # D is on time: not in the denominator
        {"package_id": "D", "recipient_ref": "R-D", "inquiry_time": "2024-01-05T09:00:00+00:00"},
    ]
    return load_truth(make_truth(tmp_path / "truth", FOUR, inquiries=inquiries))


FOUR_ALERTS = [
    alert("A", "stall", 1, "2024-01-04T10:00:00+00:00"),  # lead 34 h
    alert("A", "back_on_track", 1, "2024-01-06T10:00:00+00:00"),  # not a delay alert
    alert("B", "incident_delay", 1, "2024-01-06T02:00:00+00:00"),  # lead -6 h
    alert("B", "stall", 1, "2024-01-06T05:00:00+00:00"),  # later: first alert stays 02:00
    alert("D", "stall", 1, "2024-01-04T00:00:00+00:00"),  # D on time -> false alert
]


# ---------------------------------------------------------------------------------------------
# loading


def test_load_truth_parses_times_bools_and_empty_cells(four: Truth) -> None:
    packages = four.packages.set_index("package_id")
    assert str(packages["promised_by"].dt.tz) == "UTC"
    assert packages.loc["A", "stall_onset"] == pd.Timestamp("2024-01-03T10:00:00+00:00")
    assert pd.isna(packages.loc["B", "stall_onset"])  # empty cell -> NaT
    assert pd.isna(packages.loc["D", "lateness_hours"])  # empty cell -> NaN
    assert packages["late"].tolist() == [True, True, True, False]
    assert packages.loc["A", "lateness_hours"] == 40.0
    assert str(four.inquiries["inquiry_time"].dt.tz) == "UTC"
    assert four.meta["seed"] == 1
    assert four.incidents.empty and "onset" in four.incidents.columns


def test_load_truth_requires_packages(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"packages\.csv"):
        load_truth(tmp_path)


def test_load_alerts_missing_or_empty_file_gives_empty_frame(tmp_path: Path) -> None:
    empty = tmp_path / "alerts.jsonl"
    empty.write_text("", encoding="utf-8")
    for frame in (load_alerts(empty), load_alerts(tmp_path / "missing.jsonl")):
        assert frame.empty
        assert list(frame.columns) == ALERT_COLUMNS
    incidents = load_incidents(tmp_path / "missing.jsonl")
    assert incidents.empty and list(incidents.columns) == INCIDENT_COLUMNS


def test_load_alerts_parses_times_and_names_bad_lines(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "alerts.jsonl", FOUR_ALERTS)
    frame = load_alerts(path)
    assert len(frame) == 5
    assert frame["alert_time"].iloc[0] == pd.Timestamp("2024-01-04T10:00:00+00:00")
    assert str(frame["episode"].dtype) == "Int64"
    assert frame["incident_key"].isna().all()  # absent key -> missing value
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"alert_key": "trunc\n')
    with pytest.raises(ValueError, match="line 6"):
        load_alerts(path)


# ---------------------------------------------------------------------------------------------
# package figures


def test_four_packages_known_answers(four: Truth) -> None:
    result = score(alerts_frame(FOUR_ALERTS), four)
    assert result["packages"] == 4
    assert result["late_packages"] == 3  # A, B, C
    assert result["on_time_packages"] == 1  # D
    assert result["alerts"] == 4  # stall/incident_delay rows (back_on_track excluded)
    assert result["messages"] == 5
    assert result["alerted_packages"] == 3  # A, B, D
    assert result["late_recall"] == pytest.approx(2 / 3)  # A, B of A, B, C
    assert result["alert_precision"] == pytest.approx(2 / 3)  # A, B of A, B, D
    assert result["alerted_before_promise"] == pytest.approx(1 / 3)  # only A
    # leads: A 01-05 20:00 - 01-04 10:00 = 34 h; B 20:00 - 01-06 02:00 = -6 h
    assert result["lead_time_hours_p50"] == pytest.approx(14.0)  # (34 - 6) / 2
    assert result["lead_time_hours_p90"] == pytest.approx(30.0)  # -6 + 0.9 * 40
    assert result["late_packages_with_inquiry"] == 3  # A, B, C (D on time)
    assert result["alerted_before_inquiry"] == pytest.approx(1 / 3)  # only A
    assert result["false_alert_packages"] == 1  # D
    assert result["false_alerts_per_1000"] == pytest.approx(1000.0)  # 1 of 1 on time
    assert result["alerts_after_delivery"] == 0
    assert result["duplicate_messages"] == 0
    assert result["customer_alerts_for_feed_outages"] == 0


def test_by_cause(four: Truth) -> None:
    by_cause = score(alerts_frame(FOUR_ALERTS), four)["by_cause"]
    assert list(by_cause)[: len(CAUSES)] == list(CAUSES)
    assert by_cause["package_stall"] == {
        "packages": 1,
        "late_packages": 1,
        "alerted_packages": 1,
        "late_recall": 1.0,
        "alerted_before_promise": 1.0,
        "lead_time_hours_p50": pytest.approx(34.0),
    }
    slowdown = by_cause["facility_slowdown"]
    assert (slowdown["late_recall"], slowdown["alerted_before_promise"]) == (1.0, 0.0)
    assert slowdown["lead_time_hours_p50"] == pytest.approx(-6.0)
    natural = by_cause["natural"]
    assert (natural["late_packages"], natural["late_recall"]) == (1, 0.0)
    assert natural["lead_time_hours_p50"] is None  # no late alerted natural package
    # no late packages of these causes: undefined, not 0 or 1
    assert by_cause["none"]["late_packages"] == 0
    assert by_cause["none"]["alerted_packages"] == 1  # D
    assert by_cause["none"]["late_recall"] is None
    assert by_cause["weather"] == {
        "packages": 0,
        "late_packages": 0,
        "alerted_packages": 0,
        "late_recall": None,
        "alerted_before_promise": None,
        "lead_time_hours_p50": None,
    }


def test_precision_counts_labelled_stall_and_unknown_packages(tmp_path: Path) -> None:
    rows = [
        # on time but with a labelled stall: a correct alert for precision
        {"package_id": "S", "late": "false", "cause": "none",
         "delivered_at": "2024-01-05T10:00:00+00:00",
         "stall_onset": "2024-01-02T10:00:00+00:00", "stall_end": "2024-01-04T10:00:00+00:00"},
        {"package_id": "E", "late": "false", "cause": "none",
         "delivered_at": "2024-01-05T10:00:00+00:00"},
    ]  # fmt: skip
    truth = load_truth(make_truth(tmp_path, rows))
    alerts = alerts_frame(
        [
            alert("S", "stall", 1, "2024-01-03T10:00:00+00:00"),
            alert("E", "stall", 1, "2024-01-03T10:00:00+00:00"),
            alert("ZZ", "stall", 1, "2024-01-03T10:00:00+00:00"),  # not in the truth
        ]
    )
    result = score(alerts, truth)
    assert result["alerted_packages"] == 3
    assert result["alert_precision"] == pytest.approx(1 / 3)  # S only
    # false alerts count every alerted on-time package, stalled or not: S and E of 2
    assert result["false_alert_packages"] == 2
    assert result["false_alerts_per_1000"] == pytest.approx(1000.0)
    assert result["late_recall"] is None  # no late package


def test_duplicates(four: Truth) -> None:
    rows = [
        alert("A", "stall", 1, "2024-01-04T10:00:00+00:00"),
        alert("A", "stall", 1, "2024-01-04T10:05:00+00:00"),  # dup 1 (triple and key)
        alert("A", "stall", 1, "2024-01-04T10:10:00+00:00"),  # dup 2 (triple and key)
        alert("A", "back_on_track", 1, "2024-01-06T10:00:00+00:00"),  # other kind: fine
        alert("A", "stall", 2, "2024-01-06T20:00:00+00:00"),  # new episode: fine
        alert("B", "stall", 1, "2024-01-05T02:00:00+00:00"),
        alert("B", "stall", 1, "2024-01-05T03:00:00+00:00"),  # dup 3 (triple and key)
        # episode 2 is a new triple, but it reuses the key B:stall:1 -> dup 4 (key only)
        alert("B", "stall", 2, "2024-01-05T04:00:00+00:00", key="B:stall:1"),
    ]
    result = score(alerts_frame(rows), four)
    assert result["duplicate_messages"] == 4  # (3 - 1) + (2 - 1) by triple, + 1 by key
    assert result["duplicate_alert_keys"] == 4  # A:stall:1 x3 -> 2, B:stall:1 x3 -> 2
    assert result["alert_key_mismatches"] == 1  # B:stall:1 on an episode-2 row


def test_duplicates_by_triple_or_by_key(four: Truth) -> None:
    rows = [
        alert("A", "stall", 1, "2024-01-04T10:00:00+00:00", key="k1"),
        alert("A", "stall", 1, "2024-01-04T10:05:00+00:00", key="k2"),  # triple repeat only
        alert("B", "stall", 1, "2024-01-05T02:00:00+00:00", key="k3"),
        alert("B", "stall", 2, "2024-01-05T04:00:00+00:00", key="k3"),  # key repeat only
        {**alert("C", "stall", 1, "2024-01-05T04:00:00+00:00"), "alert_key": None},
        {**alert("C", "stall", 2, "2024-01-05T05:00:00+00:00"), "alert_key": None},  # no key
    ]
    result = score(alerts_frame(rows), four)
    assert result["duplicate_messages"] == 2
    assert result["duplicate_alert_keys"] == 1  # k3; missing keys are never repeats
    assert result["alert_key_mismatches"] == 4  # k1, k2, k3, k3 do not follow the format


def test_alert_after_delivery(four: Truth) -> None:
    rows = [
        alert("D", "stall", 1, "2024-01-05T11:00:00+00:00"),  # D delivered 10:00 -> after
        alert("D", "incident_delay", 2, "2024-01-05T10:00:00+00:00"),  # at delivery: not after
        alert("D", "back_on_track", 1, "2024-01-05T12:00:00+00:00"),  # not a delay alert
        alert("A", "stall", 1, "2024-01-04T10:00:00+00:00"),  # before A's delivery
    ]
    result = score(alerts_frame(rows), four)
    assert result["alerts_after_delivery"] == 1
    assert result["messages_after_delivery"] == 2


def test_never_delivered_package_has_no_alert_after_delivery(tmp_path: Path) -> None:
    rows = [{"package_id": "L", "late": "true", "cause": "package_stall",
             "stall_onset": "2024-01-02T00:00:00+00:00"}]  # fmt: skip
    truth = load_truth(make_truth(tmp_path, rows))
    result = score(alerts_frame([alert("L", "stall", 1, "2024-01-09T00:00:00+00:00")]), truth)
    assert result["alerts_after_delivery"] == 0
    assert result["late_recall"] == 1.0
    assert result["alerted_before_promise"] == 0.0
    assert result["lead_time_hours_p50"] == pytest.approx(-76.0)  # 01-05 20:00 - 01-09 00:00


def test_promise_boundary_is_strict(tmp_path: Path) -> None:
    rows = [{"package_id": "A", "late": "true", "cause": "natural"},
            {"package_id": "B", "late": "true", "cause": "natural"}]  # fmt: skip
    truth = load_truth(make_truth(tmp_path, rows))
    alerts = alerts_frame(
        [
            alert("A", "stall", 1, PROMISE),  # at the promise: lead 0 h, but not before it
            alert("B", "stall", 1, "2024-01-05T19:00:00+00:00"),  # lead 1 h
        ]
    )
    result = score(alerts, truth)
    assert result["alerted_before_promise"] == 0.5
    assert result["lead_time_hours_p50"] == pytest.approx(0.5)


def test_inquiry_boundary_is_strict(tmp_path: Path) -> None:
    rows = [{"package_id": "A", "late": "true", "cause": "natural"},
            {"package_id": "B", "late": "true", "cause": "natural"}]  # fmt: skip
    inquiries = [
        {"package_id": "A", "recipient_ref": "R-A", "inquiry_time": "2024-01-04T10:00:00+00:00"},
        {"package_id": "B", "recipient_ref": "R-B", "inquiry_time": "2024-01-04T10:00:01+00:00"},
    ]
    truth = load_truth(make_truth(tmp_path, rows, inquiries=inquiries))
    alerts = alerts_frame(
        [
            alert("A", "stall", 1, "2024-01-04T10:00:00+00:00"),  # same instant: not before
            alert("B", "stall", 1, "2024-01-04T10:00:00+00:00"),  # one second before
        ]
    )
    result = score(alerts, truth)
    assert result["late_packages_with_inquiry"] == 2
    assert result["alerted_before_inquiry"] == 0.5


# ---------------------------------------------------------------------------------------------
# zero denominators


def test_no_late_packages_gives_none(tmp_path: Path) -> None:
    rows = [{"package_id": "D", "late": "false", "cause": "none",
             "delivered_at": "2024-01-05T10:00:00+00:00"}]  # fmt: skip
    inquiries = [
        {"package_id": "D", "recipient_ref": "R-D", "inquiry_time": "2024-01-05T09:00:00+00:00"}
    ]
    truth = load_truth(make_truth(tmp_path, rows, inquiries=inquiries))
    result = score(alerts_frame([alert("D", "stall", 1, "2024-01-04T00:00:00+00:00")]), truth)
    assert result["late_packages"] == 0
    for key in (
        "late_recall",
        "alerted_before_promise",
        "alerted_before_inquiry",
        "lead_time_hours_p50",
        "lead_time_hours_p90",
    ):
        assert result[key] is None, key
    assert result["alert_precision"] == 0.0  # defined: one alerted package, not late
    assert result["false_alerts_per_1000"] == 1000.0


def test_no_alerts_gives_none_precision_and_zero_rates(four: Truth, tmp_path: Path) -> None:
    empty_file = tmp_path / "alerts.jsonl"
    empty_file.write_text("\n", encoding="utf-8")
    for alerts in (alerts_frame([]), load_alerts(empty_file), pd.DataFrame()):
        result = score(alerts, four)
        assert result["alerts"] == 0 and result["alerted_packages"] == 0
        assert result["alert_precision"] is None  # nothing alerted: undefined
        assert result["late_recall"] == 0.0  # 3 late packages, none alerted: a real 0
        assert result["alerted_before_promise"] == 0.0
        assert result["alerted_before_inquiry"] == 0.0
        assert result["lead_time_hours_p50"] is None
        assert result["false_alerts_per_1000"] == 0.0
        assert result["duplicate_messages"] == 0
        assert result["alerts_after_delivery"] == 0


def test_no_on_time_packages_gives_none_false_alert_rate(tmp_path: Path) -> None:
    truth = load_truth(make_truth(tmp_path, [{"package_id": "A", "late": "true"}]))
    result = score(alerts_frame([]), truth)
    assert result["on_time_packages"] == 0
    assert result["false_alerts_per_1000"] is None


def test_empty_truth(tmp_path: Path) -> None:
    truth = load_truth(make_truth(tmp_path, [], meta={}))
    result = score(alerts_frame([]), truth, load_incidents(None))
    assert result["packages"] == 0
    assert result["late_recall"] is None and result["false_alerts_per_1000"] is None
    assert result["incidents"] == 0 and result["incident_recall"] is None
    assert result["false_incidents"] == 0
    assert result["false_incidents_per_facility_week"] is None  # no span in meta
    json.dumps(result, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# incidents

TRUTH_INCIDENTS = [
    {"incident_id": "I1", "kind": "facility_slowdown", "facility_id": "P1", "facilities": "P1",
     "onset": "2024-01-03T00:00:00+00:00", "end": "2024-01-04T00:00:00+00:00"},
    {"incident_id": "I2", "kind": "facility_stop", "facility_id": "N1", "facilities": "N1",
     "onset": "2024-01-08T00:00:00+00:00", "end": "2024-01-08T12:00:00+00:00"},
    {"incident_id": "I3", "kind": "lane_delay", "facility_id": "P1", "lane_to": "N1",
     "onset": "2024-01-10T00:00:00+00:00", "end": "2024-01-11T00:00:00+00:00"},
    {"incident_id": "I4", "kind": "weather", "region": "NE", "facilities": "P2 N2",
     "onset": "2024-01-13T00:00:00+00:00", "end": "2024-01-13T12:00:00+00:00"},
    {"incident_id": "S1", "kind": "package_stall", "facility_id": "PO1",
     "onset": "2024-01-05T00:00:00+00:00", "detail": "lost, after sort"},
    {"incident_id": "F1", "kind": "feed_outage", "facility_id": "N1", "facilities": "N1",
     "onset": "2024-01-12T00:00:00+00:00", "end": "2024-01-12T06:00:00+00:00"},
]  # fmt: skip

OUTPUT_INCIDENTS = [
    # K1: P1 opened 90 min after I1's onset, then updated -> detects I1, delay 90
    {"incident_key": "K1", "kind": "facility_slowdown", "facility_id": "P1", "status": "open",
     "opened_at": "2024-01-03T01:30:00+00:00"},
    {"incident_key": "K1", "kind": "facility_slowdown", "facility_id": "P1", "status": "update",
     "opened_at": "2024-01-03T05:00:00+00:00"},
    # K2: N1 at 19:00, after I2's end + 6 h (18:00) -> outside the window, false
    {"incident_key": "K2", "kind": "facility_stop", "facility_id": "N1", "status": "open",
     "opened_at": "2024-01-08T19:00:00+00:00"},
    # K3: the lane P1 -> N1 exactly 1 h before I3's onset -> detects I3, delay 0 (another lane
    # into N1 would explain it, not detect it: test_a_lane_delay_is_explained_by_either_end...)
    {"incident_key": "K3", "kind": "lane_delay", "facility_id": "P1", "lane_to": "N1",
     "status": "open", "opened_at": "2024-01-09T23:00:00+00:00"},
    # K4: a post office nobody labelled -> false
    {"incident_key": "K4", "kind": "facility_slowdown", "facility_id": "PO1", "status": "open",
     "opened_at": "2024-01-05T00:00:00+00:00"},
    # K5: feed outage at N1, 20 min in -> detects F1; not counted among incidents
    {"incident_key": "K5", "kind": "feed_outage", "facility_id": "N1", "status": "open",
     "opened_at": "2024-01-12T00:20:00+00:00"},
    # K6: N2 3 h into the weather I4 (N2 only in its facilities list), resolved later -> delay 180
    {"incident_key": "K6", "kind": "weather", "facility_id": "N2", "status": "resolved",
     "opened_at": "2024-01-13T03:00:00+00:00", "resolved_at": "2024-01-13T15:00:00+00:00"},
]  # fmt: skip


@pytest.fixture
def incident_truth(tmp_path: Path) -> Truth:
    return load_truth(make_truth(tmp_path / "truth", FOUR, incidents=TRUTH_INCIDENTS))


def test_incident_matching(incident_truth: Truth) -> None:
    result = score(alerts_frame([]), incident_truth, pd.DataFrame(OUTPUT_INCIDENTS))
    assert result["incidents"] == 4  # I1-I4 (not the package stall, not the feed outage)
    assert result["incidents_detected"] == 3  # I1 (K1), I3 (K3), I4 (K6); not I2
    assert result["incident_recall"] == pytest.approx(3 / 4)
    # delays 90, 0, 180 -> sorted 0, 90, 180: p50 90, p90 90 + 0.8 * 90 = 162
    assert result["incident_detection_delay_minutes_p50"] == pytest.approx(90.0)
    assert result["incident_detection_delay_minutes_p90"] == pytest.approx(162.0)
    assert result["false_incidents"] == 2  # K2, K4
    # facilities of kind plant/ndc: P1 N1 P2 N2 = 4, over 2 weeks -> 2 / 8
    assert result["false_incidents_per_facility_week"] == pytest.approx(0.25)
    assert result["feed_outages"] == 1
    assert result["feed_outages_detected"] == 1
    assert result["false_feed_outages"] == 0


def test_incident_outside_window_both_sides(incident_truth: Truth) -> None:
    early = {
        "incident_key": "E",
        "kind": "facility_slowdown",
        "facility_id": "P1",
        "status": "open",
        "opened_at": "2024-01-02T22:59:59+00:00",
    }  # onset - 1 h - 1 s
    late_ok = {
        "incident_key": "L",
        "kind": "facility_slowdown",
        "facility_id": "N1",
        "status": "open",
        "opened_at": "2024-01-08T18:00:00+00:00",
    }  # end + 6 h exactly
    result = score(alerts_frame([]), incident_truth, pd.DataFrame([early, late_ok]))
    assert result["incidents_detected"] == 1  # I2 by L; I1 not by E
    assert result["false_incidents"] == 1  # E
    assert result["incident_detection_delay_minutes_p50"] == pytest.approx(18 * 60.0)


def test_a_lane_delay_is_explained_by_either_end_and_detected_only_on_its_lane(
    tmp_path: Path
) -> None:
    lane = [{"incident_id": "I3", "kind": "lane_delay", "facility_id": "P1", "lane_to": "N1",
             "onset": "2024-01-10T00:00:00+00:00", "end": "2024-01-11T00:00:00+00:00"}]  # fmt: skip
    truth = load_truth(make_truth(tmp_path, FOUR, incidents=lane))
    for kind, output, detects in (
        ("lane_delay", {"facility_id": "P1", "lane_to": "N1"}, True),  # as the flow names it
        ("lane_delay", {"facility_id": "N1", "lane_to": None}, False),  # the receiving end
        ("lane_delay", {"facility_id": "Q7", "lane_to": "N1"}, False),  # another lane into it
        ("lane_delay", {"facility_id": "P1", "lane_to": "Q7"}, False),  # ... out of its origin
        ("facility_slowdown", {"facility_id": "N1", "lane_to": None}, False),  # the hub
    ):
        frame = pd.DataFrame([{"incident_key": "K", "kind": kind, "status": "open",
                               "opened_at": "2024-01-10T02:00:00+00:00", **output}])  # fmt: skip
        result = score(alerts_frame([]), truth, frame)
        assert result["incidents_detected"] == int(detects), output
        assert result["false_incidents"] == 0, output  # each is explained by the lane delay
    miss = pd.DataFrame([{"incident_key": "K", "kind": "lane_delay", "facility_id": "Q7",
                          "lane_to": "Q8", "status": "open",
                          "opened_at": "2024-01-10T02:00:00+00:00"}])  # fmt: skip
    assert score(alerts_frame([]), truth, miss)["incidents_detected"] == 0


def test_a_slowdown_at_a_lanes_receiving_hub_does_not_detect_the_lane(tmp_path: Path) -> None:
    """Demo 1's case: a slowdown at N03 and a late truck P0200 -> N03 at once. The slowdown's
    incident (14:30) was credited with the lane too, and the lane's own incident (a day
    later) was never looked at: the lane's detection delay read 20 h short."""
    truth_rows = [
        {"incident_id": "S", "kind": "facility_slowdown", "facility_id": "N1", "facilities": "N1",
         "onset": "2024-01-03T12:00:00+00:00", "end": "2024-01-04T00:00:00+00:00"},
        {"incident_id": "L", "kind": "lane_delay", "facility_id": "P1", "lane_to": "N1",
         "onset": "2024-01-02T04:00:00+00:00", "end": "2024-01-02T12:00:00+00:00",
         "last_effect": "2024-01-04T15:00:00+00:00"},
    ]  # fmt: skip
    truth = load_truth(make_truth(tmp_path, FOUR, incidents=truth_rows,
                                  incident_fields=[*INCIDENT_FIELDS, "last_effect"]))
    output = pd.DataFrame([
        {"incident_key": "slow", "kind": "facility_slowdown", "facility_id": "N1",
         "status": "open", "opened_at": "2024-01-03T14:00:00+00:00"},
        {"incident_key": "lane", "kind": "lane_delay", "facility_id": "P1", "lane_to": "N1",
         "status": "open", "opened_at": "2024-01-03T10:00:00+00:00"},
    ])  # fmt: skip
    result = score(alerts_frame([]), truth, output)
    assert result["incidents_detected"] == 2 and result["false_incidents"] == 0
    # S by "slow" after 120 min; L by "lane" after 30 h (not by "slow" after 34 h, nor 0)
    assert result["incident_detection_delay_minutes_p50"] == pytest.approx((120 + 30 * 60) / 2)
    without_lane = score(alerts_frame([]), truth, output[output["incident_key"] == "slow"])
    assert without_lane["incidents_detected"] == 1  # the lane is not detected by the slowdown


def test_an_incident_opened_while_a_slowdown_drains_is_no_false_alarm(tmp_path: Path) -> None:
    """A slowdown's backlog drains after its ``end``: departures it pushed go on for hours
    (the truth's ``last_effect``); an incident opened then was scored as false."""
    row = {"incident_id": "W", "kind": "weather", "facility_id": "P1", "facilities": "P1 N1",
           "onset": "2024-01-03T00:00:00+00:00", "end": "2024-01-03T12:00:00+00:00"}
    output = pd.DataFrame([{"incident_key": "K", "kind": "facility_slowdown",
                            "facility_id": "P1", "status": "open",
                            "opened_at": "2024-01-04T02:00:00+00:00"}])  # end + 14 h
    fields = [*INCIDENT_FIELDS, "last_effect"]
    drained = load_truth(make_truth(tmp_path / "a", FOUR, incident_fields=fields, incidents=[
        row | {"last_effect": "2024-01-03T22:30:00+00:00"}]))  # + 6 h covers 02:00
    result = score(alerts_frame([]), drained, output)
    assert (result["incidents_detected"], result["false_incidents"]) == (1, 0)
    old = load_truth(make_truth(tmp_path / "b", FOUR, incidents=[row]))  # no last_effect
    result = score(alerts_frame([]), old, output)
    assert (result["incidents_detected"], result["false_incidents"]) == (0, 1)
    short = load_truth(make_truth(tmp_path / "c", FOUR, incident_fields=fields, incidents=[
        row | {"last_effect": "2024-01-03T19:59:00+00:00"}]))  # + 6 h ends at 01:59
    assert score(alerts_frame([]), short, output)["false_incidents"] == 1


def test_a_lane_delay_matches_until_its_delayed_packages_arrive(tmp_path: Path) -> None:
    # I3 delays packages that departed P1 for N1 in [onset, end]; the delayed ones reach N1 on
    # the 13th (B at 04:00, its duplicate line and C's arrival at 09:00): the incident is visible
    # until then, so the match window ends at 15:00 on the 13th, not at end + 6 h (the 11th).
    lane = [{"incident_id": "I3", "kind": "lane_delay", "facility_id": "P1", "lane_to": "N1",
             "onset": "2024-01-10T00:00:00+00:00", "end": "2024-01-11T00:00:00+00:00"}]  # fmt: skip
    packages = [
        {"package_id": "B", "late": "true", "cause": "lane_delay", "incident_id": "I3"},
        {"package_id": "C", "late": "false", "cause": "none", "incident_id": "I3"},
        {"package_id": "D", "late": "false", "cause": "none"},
    ]
    root = make_truth(tmp_path, packages, incidents=lane)

    def event(pid: str, code: str, facility: str | None, ts: str) -> dict:
        return {"package_id": pid, "event_code": code, "facility_id": facility,
                "event_time": ts, "ingest_time": ts}  # fmt: skip

    _write_jsonl(root / "events.jsonl", [
        event("B", "T1", "P1", "2024-01-10T02:00:00+00:00"),
        event("B", "TL", None, "2024-01-11T00:00:00+00:00"),
        event("B", "A1", "N1", "2024-01-13T04:00:00+00:00"),
        event("C", "A1", "N1", "2024-01-13T09:00:00+00:00"),
        event("B", "A1", "N1", "2024-01-13T04:00:00+00:00"),  # duplicate
        event("C", "T1", "N1", "2024-01-13T18:00:00+00:00"),  # leaving: not its arrival
        event("D", "A1", "N1", "2024-01-20T00:00:00+00:00"),  # not delayed by I3
    ])  # fmt: skip
    truth = load_truth(root)
    assert truth.incidents["seen_until"].iloc[0] == pd.Timestamp("2024-01-13T09:00:00Z")

    def opened(at: str) -> pd.DataFrame:
        return pd.DataFrame([{"incident_key": "K", "kind": "lane_delay", "facility_id": "P1",
                              "lane_to": "N1", "status": "open", "opened_at": at}])  # fmt: skip

    inside = score(alerts_frame([]), truth, opened("2024-01-13T15:00:00+00:00"))
    assert inside["incidents_detected"] == 1 and inside["false_incidents"] == 0
    assert inside["incident_detection_delay_minutes_p50"] == pytest.approx((3 * 24 + 15) * 60.0)
    after = score(alerts_frame([]), truth, opened("2024-01-13T15:00:01+00:00"))
    assert after["incidents_detected"] == 0 and after["false_incidents"] == 1
    # without the scan events the window is the usual one: end + 6 h
    (root / "events.jsonl").unlink()
    plain = load_truth(root)
    assert plain.incidents["seen_until"].isna().all()
    assert (
        score(alerts_frame([]), plain, opened("2024-01-11T06:00:01+00:00"))["incidents_detected"]
        == 0
    )


def test_feed_outage_incidents_scored_apart(incident_truth: Truth) -> None:
    outputs = [
        # a slowdown raised at N1 during the feed outage F1: matches no facility incident -> false
        {"incident_key": "S", "kind": "facility_slowdown", "facility_id": "N1", "status": "open",
         "opened_at": "2024-01-12T01:00:00+00:00"},
        # a feed outage where there was none -> false feed outage, not a false incident
        {"incident_key": "F", "kind": "feed_outage", "facility_id": "P1", "status": "open",
         "opened_at": "2024-01-06T01:00:00+00:00"},
    ]  # fmt: skip
    result = score(alerts_frame([]), incident_truth, pd.DataFrame(outputs))
    assert result["incidents_detected"] == 0
    assert result["false_incidents"] == 1
    assert result["feed_outages_detected"] == 0
    assert result["false_feed_outages"] == 1


def test_incident_rows_are_grouped_by_key(incident_truth: Truth) -> None:
    rows = [
        # opened at an unlabelled plant, its update also names P2 (a weather facility of I4):
        # one output incident, placed at its first opened_at (01-13 01:00 -> delay 60 min)
        {"incident_key": "W", "kind": "weather", "facility_id": "X1", "status": "open",
         "opened_at": "2024-01-13T01:00:00+00:00"},
        {"incident_key": "W", "kind": "weather", "facility_id": "P2", "status": "update",
         "opened_at": "2024-01-13T02:00:00+00:00"},
        {"incident_key": "W", "kind": "weather", "facility_id": "P2", "status": "resolved",
         "opened_at": "2024-01-13T02:00:00+00:00", "resolved_at": "2024-01-13T14:00:00+00:00"},
    ]  # fmt: skip
    result = score(alerts_frame([]), incident_truth, pd.DataFrame(rows))
    assert result["incidents_detected"] == 1
    assert result["incident_detection_delay_minutes_p50"] == pytest.approx(60.0)
    assert result["false_incidents"] == 0


def test_detection_delay_is_clipped_at_zero(incident_truth: Truth) -> None:
    early = {
        "incident_key": "E",
        "kind": "facility_slowdown",
        "facility_id": "P1",
        "status": "open",
        "opened_at": "2024-01-02T23:30:00+00:00",
    }  # onset - 30 min
    result = score(alerts_frame([]), incident_truth, pd.DataFrame([early]))
    assert result["incidents_detected"] == 1
    assert result["incident_detection_delay_minutes_p50"] == 0.0  # not -30
    assert result["incident_detection_delay_minutes_p90"] == 0.0


def test_incident_figures_without_incident_output(incident_truth: Truth) -> None:
    result = score(alerts_frame([]), incident_truth)
    assert result["incidents"] == 4 and result["feed_outages"] == 1
    for key in (
        "incidents_detected",
        "incident_recall",
        "incident_detection_delay_minutes_p50",
        "incident_detection_delay_minutes_p90",
        "false_incidents",
        "false_incidents_per_facility_week",
        "feed_outages_detected",
        "false_feed_outages",
    ):
        assert result[key] is None, key


# first_effect (newer truths): when the first delayed scan was due. I1 60 min after its onset,
# I2 120, I3 one day (a lane delay shows at the arrival), I4 none (skipped); F1's 10 min and the
# package stall do not count (not facility-level incidents).
FIRST_EFFECT = {"I1": "2024-01-03T01:00:00+00:00", "I2": "2024-01-08T02:00:00+00:00",
                "I3": "2024-01-11T00:00:00+00:00", "F1": "2024-01-12T00:10:00+00:00"}
FIRST_EFFECT_KEYS = (
    "incident_detection_delay_from_first_effect_minutes_p50",
    "incident_detection_delay_from_first_effect_minutes_p90",
    "incident_first_effect_minutes_p50",
)


@pytest.fixture
def first_effect_truth(tmp_path: Path) -> Truth:
    rows = [{**row, "first_effect": FIRST_EFFECT.get(row["incident_id"], "")}
            for row in TRUTH_INCIDENTS]  # fmt: skip
    root = make_truth(tmp_path / "fe", FOUR, incidents=rows,
                      incident_fields=[*INCIDENT_FIELDS, "first_effect"])  # fmt: skip
    return load_truth(root)


def test_detection_delay_from_first_effect(
    first_effect_truth: Truth, incident_truth: Truth
) -> None:
    result = score(alerts_frame([]), first_effect_truth, pd.DataFrame(OUTPUT_INCIDENTS))
    # detected: I1 by K1 at 01:30 -> 30 min after its first effect; I3 by K3 a day before its
    # first effect -> clipped to 0; I4 (K6) has none -> skipped. [0, 30]: p50 15, p90 27
    assert result["incident_detection_delay_from_first_effect_minutes_p50"] == pytest.approx(15.0)
    assert result["incident_detection_delay_from_first_effect_minutes_p90"] == pytest.approx(27.0)
    # first_effect - onset over I1, I2, I3 (detected or not): 60, 120, 1440 -> 120
    assert result["incident_first_effect_minutes_p50"] == pytest.approx(120.0)
    # every other figure is the one of the same truth without the column
    plain = score(alerts_frame([]), incident_truth, pd.DataFrame(OUTPUT_INCIDENTS))
    assert not set(FIRST_EFFECT_KEYS) & set(plain)
    assert {k: v for k, v in result.items() if k not in FIRST_EFFECT_KEYS} == plain
    assert [k for k in result if k not in FIRST_EFFECT_KEYS] == list(plain)  # same order
    # without incident output the truth's own figure stands, the detection delays do not
    alone = score(alerts_frame([]), first_effect_truth)
    assert alone["incident_first_effect_minutes_p50"] == pytest.approx(120.0)
    assert alone["incident_detection_delay_from_first_effect_minutes_p50"] is None
    assert alone["incident_detection_delay_from_first_effect_minutes_p90"] is None
    json.dumps(result, allow_nan=False)


def test_incidents_from_jsonl(incident_truth: Truth, tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "incidents.jsonl", OUTPUT_INCIDENTS)
    frame = load_incidents(path)
    assert str(frame["opened_at"].dt.tz) == "UTC"
    assert score(alerts_frame([]), incident_truth, frame)["incidents_detected"] == 3


# ---------------------------------------------------------------------------------------------
# feed outages and customers


def test_customer_alerts_for_feed_outages(tmp_path: Path) -> None:
    rows = [
        {"package_id": "F", "late": "false", "cause": "feed_outage",
         "delivered_at": "2024-01-05T10:00:00+00:00"},
        {"package_id": "G", "late": "false", "cause": "feed_outage",
         "delivered_at": "2024-01-05T10:00:00+00:00"},
        # late anyway (bad data or mixed cause): its alerts are not outage false alarms
        {"package_id": "H", "late": "true", "cause": "feed_outage",
         "delivered_at": "2024-01-06T10:00:00+00:00"},
        {"package_id": "N", "late": "false", "cause": "none",
         "delivered_at": "2024-01-05T10:00:00+00:00"},
    ]  # fmt: skip
    truth = load_truth(make_truth(tmp_path, rows))
    alerts = [
        alert("F", "stall", 1, "2024-01-03T00:00:00+00:00"),  # 1
        alert("F", "stall", 1, "2024-01-03T00:01:00+00:00"),  # duplicate: same message
        alert("F", "incident_delay", 2, "2024-01-03T05:00:00+00:00"),  # 2
        alert("F", "back_on_track", 1, "2024-01-03T06:00:00+00:00"),  # not a delay alert
        alert("G", "stall", 1, "2024-01-03T00:00:00+00:00"),  # 3
        alert("H", "stall", 1, "2024-01-03T00:00:00+00:00"),  # late: excluded
        alert("N", "stall", 1, "2024-01-03T00:00:00+00:00"),  # other cause
    ]
    result = score(alerts_frame(alerts), truth)
    assert result["customer_alerts_for_feed_outages"] == 3
    assert result["by_cause"]["feed_outage"]["alerted_packages"] == 3


# ---------------------------------------------------------------------------------------------
# baselines


def ev(package: str, code: str, hours: float, facility: str | None = "F1", **extra) -> dict:
    when = (T0 + pd.Timedelta(hours=hours)).isoformat()
    return {"package_id": package, "event_code": code, "facility_id": facility,
            "event_time": when, "ingest_time": when, **extra}  # fmt: skip


BASELINE_EVENTS = [
    # P1: 58 h gap after +2 h -> alert at +50 h; then delivered
    ev("P1", "GX", 0, promised_by=PROMISE, service="ground", destination="PO2"),
    ev("P1", "03", 2), ev("P1", "A1", 60), ev("P1", "01", 70),
    # P2: accepted at +1 h, never scanned again, not delivered -> open-end alert at +49 h
    ev("P2", "GX", 0), ev("P2", "03", 1),
    # P3: delivered at +10 h; a stray scan after delivery (+100 h, the data set's latest) is ignored
    ev("P3", "GX", 0), ev("P3", "01", 10), ev("P3", "A1", 100),
    # P4: gap of exactly 48 h is not more than 48 h; open end after +49 h -> alert at +97 h
    ev("P4", "GX", 0), ev("P4", "A1", 48), ev("P4", "T1", 49),
    # P5: 60 h gap -> alert at +48 h; open end after +60 h would be +108 h, after the latest
    # event (+100 h): no second alert
    ev("P5", "GX", 0), ev("P5", "A1", 60),
    # P6: two episodes: 0 -> 50 (alert +48 h), 51 -> 100 (alert +99 h); delivered
    ev("P6", "GX", 0), ev("P6", "A1", 50, facility="F2"), ev("P6", "T1", 51, facility="F2"),
    ev("P6", "01", 100, facility="PO2"),
    # P7: returned to sender after 1 h: terminal, no alert
    ev("P7", "GX", 0), ev("P7", "09", 1),
    # P8: 52 h gap -> alert at +48 h; open end after +52 h -> +100 h, exactly the latest: kept
    ev("P8", "GX", 0), ev("P8", "A1", 52),
]  # fmt: skip


def test_baseline_fixed_48h_alert_times() -> None:
    shuffled = BASELINE_EVENTS[:]
    random.Random(7).shuffle(shuffled)  # ingestion order is irrelevant
    alerts = baseline_alerts(pd.DataFrame(shuffled), "fixed", hours=48.0)
    got = [(r.package_id, r.episode, r.alert_time) for r in alerts.itertuples()]
    expected = [
        ("P1", 1, T0 + pd.Timedelta(hours=50)),
        ("P2", 1, T0 + pd.Timedelta(hours=49)),
        ("P4", 1, T0 + pd.Timedelta(hours=97)),
        ("P5", 1, T0 + pd.Timedelta(hours=48)),
        ("P6", 1, T0 + pd.Timedelta(hours=48)),
        ("P6", 2, T0 + pd.Timedelta(hours=99)),
        ("P8", 1, T0 + pd.Timedelta(hours=48)),
        ("P8", 2, T0 + pd.Timedelta(hours=100)),
    ]
    assert got == expected
    assert alerts["alert_key"].tolist() == [
        "P1:stall:1", "P2:stall:1", "P4:stall:1", "P5:stall:1", "P6:stall:1", "P6:stall:2",
        "P8:stall:1", "P8:stall:2",
    ]  # fmt: skip
    assert set(alerts["kind"]) == {"stall"}
    p6 = alerts[alerts["package_id"] == "P6"]
    assert p6["facility_id"].tolist() == ["F1", "F2"]  # the last scan before the silence
    assert p6["last_event_code"].tolist() == ["GX", "T1"]
    assert alerts.loc[alerts["package_id"] == "P1", "promised_by"].iloc[0] == pd.Timestamp(PROMISE)
    assert list(alerts.columns[: len(ALERT_COLUMNS)]) == ALERT_COLUMNS


def test_baseline_other_threshold_and_none() -> None:
    # hours=24: P1 +26; P2 +25; P3 (+10 delivered) none; P4 +24 (gap 48) and +73;
    # P5 +24 (gap 60) and +84; P6 +24, +75; P7 none; P8 +24 (gap 52) and +76
    alerts = baseline_alerts(pd.DataFrame(BASELINE_EVENTS), "fixed", hours=24.0)
    hours = [
        (r.package_id, (r.alert_time - T0) / pd.Timedelta(hours=1)) for r in alerts.itertuples()
    ]
    assert hours == [
        ("P1", 26.0), ("P2", 25.0), ("P4", 24.0), ("P4", 73.0),
        ("P5", 24.0), ("P5", 84.0), ("P6", 24.0), ("P6", 75.0), ("P8", 24.0), ("P8", 76.0),
    ]  # fmt: skip
    none = baseline_alerts(pd.DataFrame(BASELINE_EVENTS), "none")
    assert none.empty and list(none.columns) == ALERT_COLUMNS
    with pytest.raises(ValueError, match="kind"):
        baseline_alerts(pd.DataFrame(BASELINE_EVENTS), "median")  # type: ignore[arg-type]
    assert baseline_alerts(pd.DataFrame(), "fixed").empty


def _naive_fixed(events: list[dict], hours: float) -> list[tuple[str, int, pd.Timestamp]]:
    """A loop version of the fixed baseline, to check the vectorised one against."""
    terminal = {"01", "09", "11", "31", *(str(c) for c in range(21, 30))}
    latest = max(pd.Timestamp(e["event_time"]) for e in events)
    by_package: dict[str, list[tuple[pd.Timestamp, str]]] = {}
    for e in events:
        by_package.setdefault(e["package_id"], []).append(
            (pd.Timestamp(e["event_time"]), e["event_code"])
        )
    threshold = pd.Timedelta(hours=hours)
    out = []
    for package in sorted(by_package):
        scans = sorted(by_package[package], key=lambda s: s[0])
        episode = 0
        for i, (when, code) in enumerate(scans):
            if code in terminal:
                break
            following = scans[i + 1][0] if i + 1 < len(scans) else None
            silent = following - when > threshold if following is not None else True
            if silent and when + threshold <= latest:
                episode += 1
                out.append((package, episode, when + threshold))
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["A", "B", "C"]),
            st.sampled_from(["GX", "03", "A1", "T1", "07", "01", "09"]),
            st.integers(min_value=0, max_value=400),
        ),
        min_size=1,
        max_size=30,
        unique_by=lambda t: (t[0], t[2]),  # no two scans of a package at the same instant
    ),
    st.sampled_from([12.0, 48.0, 100.0]),
)
def test_baseline_fixed_matches_a_loop(scans: list[tuple[str, str, int]], hours: float) -> None:
    events = [ev(p, code, h) for p, code, h in scans]
    alerts = baseline_alerts(pd.DataFrame(events), "fixed", hours=hours)
    got = [(r.package_id, r.episode, r.alert_time) for r in alerts.itertuples()]
    assert got == _naive_fixed(events, hours)


def test_load_events_tolerates_partial_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(e) for e in BASELINE_EVENTS[:4]]
    lines.insert(2, "{not json")  # the flow would dead-letter this line
    lines.insert(3, "[1, 2]")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    events = load_events(path)
    assert len(events) == 4
    assert events["event_code"].tolist() == ["GX", "03", "A1", "01"]  # strings, not numbers
    assert str(events["event_time"].dt.tz) == "UTC"
    assert events["promised_by"].notna().tolist() == [True, False, False, False]
    assert events["recipient_ref"].isna().all()  # a first-event field never sent: column exists
    clean = tmp_path / "clean.jsonl"
    _write_jsonl(clean, BASELINE_EVENTS)
    assert len(load_events(clean)) == len(BASELINE_EVENTS)


# ---------------------------------------------------------------------------------------------
# evaluate, JSON and table


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    truth = make_truth(tmp_path / "truth", FOUR, incidents=TRUTH_INCIDENTS)
    # A's scans: the fixed baseline alerts A at 01-03 10:00 + 48 h = 01-05 10:00
    events = [
        ev("A", "GX", 0, promised_by=PROMISE), ev("A", "03", 34), ev("A", "A1", 58),
        ev("A", "01", 156),
        ev("D", "GX", 0, promised_by=PROMISE), ev("D", "01", 106),
    ]  # fmt: skip
    _write_jsonl(truth / "events.jsonl", events)
    _write_jsonl(tmp_path / "alerts.jsonl", FOUR_ALERTS)
    _write_jsonl(tmp_path / "incidents.jsonl", OUTPUT_INCIDENTS)
    return tmp_path


def test_evaluate_with_baselines_is_json(run_dir: Path) -> None:
    result = evaluate(run_dir / "alerts.jsonl", run_dir / "truth", run_dir / "incidents.jsonl")
    text = json.dumps(result, allow_nan=False)  # no NaN, no numpy or pandas types
    assert json.loads(text) == result
    assert result["late_recall"] == pytest.approx(2 / 3)
    assert result["incidents_detected"] == 3
    assert set(result["baselines"]) == {"none", "fixed_48h"}
    none = result["baselines"]["none"]
    assert none["alerts"] == 0 and none["late_recall"] == 0.0 and none["alert_precision"] is None
    assert none["incidents_detected"] == 0 and none["false_incidents"] == 0
    fixed = result["baselines"]["fixed_48h"]
    # A: gap 10 h -> 34 h (24 h), 34 -> 58 (24 h), 58 -> 156 (98 h): alert at +106 h (01-05 10:00)
    # D: gap 0 -> 106 h: alert at +48 h (01-03 00:00); D is on time -> precision 1/2
    assert fixed["alerts"] == 2
    assert fixed["late_recall"] == pytest.approx(1 / 3)
    assert fixed["alert_precision"] == pytest.approx(0.5)
    assert fixed["lead_time_hours_p50"] == pytest.approx(10.0)  # 01-05 20:00 - 10:00
    walk = [result]
    while walk:  # every leaf is a JSON scalar, counts are ints
        node = walk.pop()
        for value in node.values():
            if isinstance(value, dict):
                walk.append(value)
            else:
                assert value is None or isinstance(value, bool | int | float | str)
                assert not (isinstance(value, float) and math.isnan(value))
    assert isinstance(result["late_packages"], int)


def test_evaluate_without_baselines_or_incidents(run_dir: Path) -> None:
    result = evaluate(run_dir / "alerts.jsonl", run_dir / "truth", with_baselines=False)
    assert "baselines" not in result
    assert result["incidents_detected"] is None
    json.dumps(result, allow_nan=False)
    (run_dir / "truth" / "events.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="with_baselines=False"):
        evaluate(run_dir / "alerts.jsonl", run_dir / "truth")


def test_format_table(run_dir: Path) -> None:
    result = evaluate(run_dir / "alerts.jsonl", run_dir / "truth", run_dir / "incidents.jsonl")
    table = format_table(result)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "this", "run", "no", "alerts", "fixed", "48", "h"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["late_recall"] == ["0.667", "0.000", "0.333"]
    assert rows["alert_precision"] == ["0.667", "-", "0.500"]
    assert rows["false_alerts_per_1000"] == ["1000", "0.000", "1000"]
    assert rows["packages"] == ["4", "4", "4"]
    assert rows["by_cause.package_stall.lead_time_hours_p50"] == ["34.0", "-", "10.0"]
    assert "baselines.none.packages" not in rows
    assert len({len(line) for line in lines[:2]}) == 1  # header as wide as the rule
    single = format_table(score(alerts_frame(FOUR_ALERTS), load_truth(run_dir / "truth")))
    assert single.splitlines()[0].split() == ["metric", "this", "run"]


def test_estimate_figures_use_each_packages_first_alert(four: Truth) -> None:
    # A's first alert says 01-07 00:00 (delivered 01-07 12:00: 12 h early); its later alert
    # (not the first) would be exact and must not count. B's first alert has no estimate.
    # D's says 01-06 16:00 (delivered 01-05 10:00: 30 h late).
    rows = [
        alert("A", "stall", 1, "2024-01-04T10:00:00+00:00") | {
            "new_estimate": "2024-01-07T00:00:00+00:00"},
        alert("A", "stall", 2, "2024-01-06T10:00:00+00:00") | {
            "new_estimate": "2024-01-07T12:00:00+00:00"},
        alert("B", "incident_delay", 1, "2024-01-06T02:00:00+00:00"),
        alert("D", "stall", 1, "2024-01-04T00:00:00+00:00") | {
            "new_estimate": "2024-01-06T16:00:00+00:00"},
    ]
    result = score(alerts_frame(rows), four)
    assert result["estimates_given"] == pytest.approx(2 / 3)  # A, D of A, B, D
    assert result["estimate_error_hours_p50"] == pytest.approx(21.0)  # (12 + 30) / 2
    assert result["estimate_error_hours_p90"] == pytest.approx(12 + 0.9 * 18)
    assert result["estimate_within_24h"] == pytest.approx(0.5)  # A only
    assert result["estimate_bias_hours_p50"] == pytest.approx(9.0)  # (-12 + 30) / 2
    # the promise (01-05 20:00) was 40 h early for A and 10 h late for D
    assert result["promise_error_hours_p50"] == pytest.approx(25.0)
    assert result["back_on_track_estimates_given"] is None  # no back-on-track row


def test_back_on_track_estimates_are_scored_against_delivery(four: Truth) -> None:
    rows = [
        alert("A", "back_on_track", 1, "2024-01-06T10:00:00+00:00") | {
            "new_estimate": "2024-01-07T16:00:00+00:00"},  # delivered 01-07 12:00: 4 h off
        alert("B", "back_on_track", 1, "2024-01-06T05:00:00+00:00") | {
            "new_estimate": "2024-01-06T00:00:00+00:00"},  # delivered 01-06 08:00: 8 h off
        alert("C", "back_on_track", 1, "2024-01-06T05:00:00+00:00"),  # none given
    ]
    result = score(alerts_frame(rows), four)
    assert result["back_on_track_estimates_given"] == pytest.approx(2 / 3)
    assert result["back_on_track_estimate_error_hours_p50"] == pytest.approx(6.0)


def test_estimate_figures_are_none_without_estimates(four: Truth) -> None:
    result = score(alerts_frame(FOUR_ALERTS), four)
    assert result["estimates_given"] == 0.0
    assert result["estimate_error_hours_p50"] is None
    assert result["estimate_within_24h"] is None
