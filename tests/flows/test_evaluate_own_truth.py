"""`delaywatch evaluate` on an analyst's own truth (docs/tuning.md), and two definitions checked
on tiny inputs. Found by a review from the analyst's side (2026-11-25); each failed before."""

from __future__ import annotations

import io
import json

import pandas as pd
from typer.testing import CliRunner

from detectors.evaluate import load_incidents, load_truth, score
from flows.cli import app

PACKAGES = """package_id,promised_by,delivered_at,late,cause
P1,2026-11-05T20:00:00+00:00,2026-11-06T10:00:00+00:00,true,
P2,2026-11-05T20:00:00+00:00,2026-11-05T10:00:00+00:00,false,
P3,2026-11-05T20:00:00+00:00,2026-11-05T12:00:00+00:00,false,
"""
ALERTS = (
    '{"alert_key":"P1:stall:1","kind":"stall","package_id":"P1","episode":1,'
    '"alert_time":"2026-11-05T08:00:00+00:00"}\n'
)


def _own_truth(tmp_path):
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "packages.csv").write_text(PACKAGES)
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text(ALERTS)
    return truth, alerts


def test_evaluate_without_events_jsonl_is_a_clean_cli_error(tmp_path):
    # without --no-baselines the command died with a traceback whose hint was the library's
    # keyword argument ("pass with_baselines=False")
    truth, alerts = _own_truth(tmp_path)
    result = CliRunner().invoke(app, ["evaluate", "--alerts", str(alerts), "--truth", str(truth)])
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert "--no-baselines" in result.output and "with_baselines" not in result.output


def test_evaluate_with_the_run_directory_as_truth_is_a_clean_cli_error(tmp_path):
    # the run directory instead of the truth's (no packages.csv): it was a traceback
    run = tmp_path / "run"
    run.mkdir()
    (run / "alerts.jsonl").write_text(ALERTS)
    result = CliRunner().invoke(
        app, ["evaluate", "--alerts", str(run / "alerts.jsonl"), "--truth", str(run),
              "--no-baselines"])
    assert result.exit_code == 2, (result.exit_code, repr(result.exception))
    assert "packages.csv" in result.output


def test_by_cause_with_empty_cause_column_is_one_group(tmp_path):
    # docs/tuning.md: the cause columns can stay empty; the packages were in no group
    truth, alerts = _own_truth(tmp_path)
    result = score(pd.read_json(alerts, lines=True), load_truth(truth))
    groups = {cause: figures["packages"] for cause, figures in result["by_cause"].items()}
    assert groups["unknown"] == 3, groups


def test_incident_without_end_has_no_upper_bound_even_with_last_effect(tmp_path):
    # evaluate.py: "opened_at <= end + 6 h (no upper bound if end is empty), where end is
    # pushed to the truth's last_effect when that is later": an empty end with a last_effect
    # was bounded at last_effect + 6 h, and a detection counted as a false incident
    truth = tmp_path / "truth"
    truth.mkdir()
    (truth / "packages.csv").write_text(PACKAGES)
    (truth / "incidents.csv").write_text(
        "incident_id,kind,facility_id,lane_to,region,facilities,onset,end,affected_packages,"
        "detail,first_effect,last_effect\n"
        "I1,facility_stop,N01,,,N01,2026-11-05T00:00:00+00:00,,3,,"
        "2026-11-05T00:10:00+00:00,2026-11-05T01:00:00+00:00\n")
    (truth / "facilities.csv").write_text("facility_id,name,kind,region,tz\nN01,N,ndc,R,UTC\n")
    (truth / "meta.json").write_text(
        '{"start": "2026-11-01T00:00:00+00:00", "end": "2026-11-15T00:00:00+00:00"}')
    incidents = tmp_path / "incidents.jsonl"
    incidents.write_text(
        '{"incident_key":"k1","kind":"facility_stop","facility_id":"N01","lane_to":null,'
        '"status":"open","opened_at":"2026-11-05T09:00:00+00:00","resolved_at":null,'
        '"score":2.0,"affected_packages":3,"evidence":"x"}\n')
    result = score(pd.read_json(io.StringIO(ALERTS), lines=True), load_truth(truth),
                   load_incidents(incidents))
    got = {k: result[k] for k in ("incidents_detected", "false_incidents")}
    assert got == {"incidents_detected": 1, "false_incidents": 0}, json.dumps(got)
