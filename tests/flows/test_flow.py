"""End-to-end tests of the real Bytewax dataflow."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from flows.config import load_settings
from flows.run import outbox_messages, replay, send_outbox
from flows.sources import JsonLinesSource, _FilePartition
from notifiers.smtpd import SmtpServerProcess, count_by_alert_key


def _settings(data: Path, **kw: object):
    return load_settings(facilities=data / "facilities.csv", epoch_interval_seconds=0.05, **kw)


def _alerts(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "alerts.jsonl").read_text().splitlines()]


def test_replay_twice_gives_identical_alerts(demo_data: Path, tmp_path: Path) -> None:
    s = _settings(demo_data)
    a = replay(JsonLinesSource(demo_data / "events.jsonl"), tmp_path / "a", s, with_metrics=False)
    b = replay(JsonLinesSource(demo_data / "events.jsonl"), tmp_path / "b", s, with_metrics=False)
    first = (tmp_path / "a" / "alerts.jsonl").read_bytes()
    assert first, "the demo scenario must raise some alerts"
    assert first == (tmp_path / "b" / "alerts.jsonl").read_bytes()
    assert a.alerts == b.alerts
    # other batch boundaries interleave the shards' outputs differently, nothing else
    replay(JsonLinesSource(demo_data / "events.jsonl", batch_size=333), tmp_path / "c", s,
           with_metrics=False)
    assert sorted(first.splitlines()) == sorted(
        (tmp_path / "c" / "alerts.jsonl").read_bytes().splitlines())


def test_a_new_run_into_a_previous_runs_directory_is_refused_or_starts_anew(
        demo_data: Path, tmp_path: Path) -> None:
    """The tuning loop replays a candidate into the directory of the last one. A run that
    writes no alert left the previous run's alerts.jsonl (Bytewax's FileSink empties a file
    at its first item) to be scored as its own, and its messages joined the previous run's
    outbox."""
    from flows.run import RunDirInUse

    events, run = demo_data / "events.jsonl", tmp_path / "cand"
    first = replay(JsonLinesSource(events), run, _settings(demo_data), with_metrics=False)
    assert first.alerts and first.outbox
    quiet = _settings(demo_data, stall={"min_threshold_hours": 10000.0},
                      incidents={"enabled": False})  # no alert, no incident at all
    with pytest.raises(RunDirInUse, match="--overwrite"):
        replay(JsonLinesSource(events), run, quiet, with_metrics=False)
    assert _alerts(run)  # refused before anything was touched
    second = replay(JsonLinesSource(events), run, quiet, with_metrics=False, overwrite=True)
    assert second.alerts == {} and second.incidents == {} and not second.outbox
    assert _alerts(run) == [] and not (run / "incidents.jsonl").read_text()
    assert not (run / "facility_windows.jsonl").exists()  # (incidents off: none written)
    # a run resumed from its recovery store goes on writing its outputs
    store = tmp_path / "store"
    store.mkdir()
    init_db_dir(store, 1)
    replay(JsonLinesSource(events), tmp_path / "r", _settings(demo_data), recovery_dir=store,
           with_metrics=False)
    again = replay(JsonLinesSource(events), tmp_path / "r", _settings(demo_data),
                   recovery_dir=store, with_metrics=False)
    assert again.alerts == first.alerts  # (its own, resumed at the end: nothing new)


def test_every_event_is_accounted_for(demo_data: Path, tmp_path: Path) -> None:
    s = _settings(demo_data)
    summary = replay(JsonLinesSource(demo_data / "events.jsonl"), tmp_path / "r", s,
                     with_metrics=False)
    lines = sum(1 for _ in open(demo_data / "events.jsonl", "rb"))
    assert summary.events == lines
    assert summary.duplicates > 0 and summary.out_of_order > 0  # the feed is messy
    keys = [a["alert_key"] for a in _alerts(tmp_path / "r")]
    assert len(keys) == len(set(keys))


def test_alerts_carry_no_personal_data(demo_data: Path, tmp_path: Path) -> None:
    replay(JsonLinesSource(demo_data / "events.jsonl"), tmp_path / "r", _settings(demo_data),
           with_metrics=False)
    text = (tmp_path / "r" / "alerts.jsonl").read_text()
    assert "@example.com" not in text
    assert "recipient_ref" not in text
    for alert in _alerts(tmp_path / "r"):
        assert alert["alert_key"] == f"{alert['package_id']}:{alert['kind']}:{alert['episode']}"
        assert alert["evidence"]


def test_no_alert_after_delivery_in_the_flow(demo_data: Path, tmp_path: Path) -> None:
    import pandas as pd

    replay(JsonLinesSource(demo_data / "events.jsonl"), tmp_path / "r", _settings(demo_data),
           with_metrics=False)
    truth = pd.read_csv(demo_data / "packages.csv", dtype=str).set_index("package_id")
    for alert in _alerts(tmp_path / "r"):
        if alert["kind"] != "stall":
            continue
        delivered = truth.loc[alert["package_id"], "delivered_at"]
        if isinstance(delivered, str) and delivered:
            assert alert["alert_time"] <= delivered, alert["alert_key"]


def _message_keys(run: Path) -> set[str]:
    return set(outbox_messages(run / "outbox.sqlite")["alert_key"])


def test_end_to_end_messages_arrive_once_each(demo_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    replay(JsonLinesSource(demo_data / "events.jsonl"), run, _settings(demo_data),
           with_metrics=False)
    expected = _message_keys(run)
    alerts = _alerts(run)
    # every stall alert is a message of its own; incident alerts are grouped per customer
    assert {a["alert_key"] for a in alerts if a["kind"] == "stall"} <= expected
    assert expected
    with SmtpServerProcess(tmp_path / "mail") as server:
        send_outbox(run / "outbox.sqlite", demo_data / "customers.csv", _settings(demo_data),
                    host="127.0.0.1", port=server.port, quiet_hours=False,
                    as_of_alert=True)  # (each in its turn, as live)
        # a second drain (operator runs `send` again) must not send anything twice
        send_outbox(run / "outbox.sqlite", demo_data / "customers.csv", _settings(demo_data),
                    host="127.0.0.1", port=server.port, quiet_hours=False,
                    as_of_alert=True)  # (each in its turn, as live)
    got = count_by_alert_key(tmp_path / "mail")
    assert set(got) == expected
    assert set(got.values()) == {1}


class _AbortOnce(Exception):
    pass


class _AbortingSource(JsonLinesSource):
    """Raises once after ``abort_after`` lines, as a crash would, if the flag file exists."""

    def __init__(self, path: Path, flag: Path, abort_after: int) -> None:
        super().__init__(path, batch_size=200)
        self.flag, self.abort_after = flag, abort_after

    def build_part(self, step_id, for_part, resume_state):  # type: ignore[no-untyped-def]
        part = super().build_part(step_id, for_part, resume_state)
        flag, limit = self.flag, self.abort_after
        inner = part.next_batch

        def next_batch():  # type: ignore[no-untyped-def]
            if flag.exists() and part._line >= limit:
                flag.unlink()
                raise _AbortOnce(f"abort at line {part._line}")
            return inner()

        part.next_batch = next_batch  # type: ignore[method-assign]
        return part


@pytest.mark.faults
@pytest.mark.parametrize("abort_after", [5_000, 17_000])
def test_abort_and_resume_delivers_each_message_once(
    demo_data: Path, tmp_path: Path, abort_after: int
) -> None:
    assert _FilePartition  # the partition the abort wraps
    events = demo_data / "events.jsonl"
    reference = tmp_path / "reference"
    replay(JsonLinesSource(events), reference, _settings(demo_data), with_metrics=False)
    want = sorted(line for line in (reference / "alerts.jsonl").read_text().splitlines())

    run, rec, flag = tmp_path / "run", tmp_path / "recovery", tmp_path / "abort.flag"
    rec.mkdir()
    init_db_dir(rec, 1)
    flag.touch()
    with pytest.raises(Exception, match="next_batch"):
        replay(_AbortingSource(events, flag, abort_after), run, _settings(demo_data),
               recovery_dir=rec, with_metrics=False)
    assert not flag.exists()
    partial = (run / "alerts.jsonl").read_text().splitlines()
    assert len(partial) < len(want)
    replay(_AbortingSource(events, flag, abort_after), run, _settings(demo_data),
           recovery_dir=rec, with_metrics=False)
    got = sorted((run / "alerts.jsonl").read_text().splitlines())
    assert got == want  # FileSink truncates to the snapshot: exactly-once alert file
    for name in ("incidents.jsonl", "facility_windows.jsonl"):  # in order, once each
        assert (run / name).read_bytes() == (reference / name).read_bytes(), name
    with SmtpServerProcess(tmp_path / "mail") as server:
        send_outbox(run / "outbox.sqlite", demo_data / "customers.csv", _settings(demo_data),
                    host="127.0.0.1", port=server.port, quiet_hours=False,
                    as_of_alert=True)  # (each in its turn, as live)
    counts = count_by_alert_key(tmp_path / "mail")
    want_messages = _message_keys(reference)
    assert set(counts) == want_messages
    assert Counter(counts.values()) == Counter({1: len(want_messages)})


@pytest.mark.faults
def test_facility_windows_turned_on_at_a_resume_are_written(demo_data: Path,
                                                            tmp_path: Path) -> None:
    """The setting of the resumed run counts, not the snapshot's (an upgrade from before
    the file existed resumes snapshots made without it)."""
    events = demo_data / "events.jsonl"
    run, rec, flag = tmp_path / "run", tmp_path / "recovery", tmp_path / "abort.flag"
    rec.mkdir()
    init_db_dir(rec, 1)
    flag.touch()
    off = load_settings(facilities=demo_data / "facilities.csv", epoch_interval_seconds=0.05,
                        incidents={"write_facility_windows": False})
    with pytest.raises(Exception, match="next_batch"):
        replay(_AbortingSource(events, flag, 17_000), run, off, recovery_dir=rec,
               with_metrics=False)
    assert not (run / "facility_windows.jsonl").exists()
    replay(_AbortingSource(events, flag, 17_000), run, _settings(demo_data), recovery_dir=rec,
           with_metrics=False)
    rows = [json.loads(line) for line in (run / "facility_windows.jsonl").open()]
    ends = sorted({r["window_end"] for r in rows})
    assert len(ends) > 96, "a day or more of windows after the resume"
    last_event = max(json.loads(line)["event_time"] for line in events.open())
    assert ends[-1] <= last_event


def test_without_a_facility_list_only_the_plants_and_ndcs_get_incident_statistics(
    demo_data: Path, tmp_path: Path
) -> None:
    """The monitor costs ~0.7 MB per facility: tens of thousands of post offices must not get
    one because the operator gave no facilities.csv."""
    import csv

    from detectors.events import parse_batch
    from flows.dataflow import FlowContext

    tracker = FlowContext(settings=load_settings(), run_dir=tmp_path).new_tracker()
    events, _ = parse_batch((demo_data / "events.jsonl").read_bytes().splitlines())
    tracker.process_batch(events)
    with open(demo_data / "facilities.csv", newline="") as f:
        kinds = {r["facility_id"]: r["kind"] for r in csv.DictReader(f)}
    watched = set(tracker.facility_stats.facilities)
    assert watched == {f for f, kind in kinds.items() if kind in ("plant", "ndc")}


def test_the_weather_bar_is_a_setting_that_reaches_the_monitor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.dataflow import FlowContext

    def bar(settings) -> float:  # type: ignore[no-untyped-def]
        return FlowContext(settings=settings, run_dir=tmp_path).new_desk().monitor.weather_delay

    assert bar(load_settings()) == 0.7
    assert bar(load_settings(incidents={"weather_delay": 1.0})) == 1.0
    monkeypatch.setenv("DELAYWATCH_INCIDENTS__WEATHER_DELAY", "0.8")
    assert bar(load_settings()) == 0.8


def test_the_tell_horizon_is_a_setting_that_reaches_the_tracker_and_a_resumed_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.dataflow import FlowContext, _Shard

    def horizon(settings, resume=None):  # type: ignore[no-untyped-def]
        ctx = FlowContext(settings=settings, run_dir=tmp_path)
        return _Shard(ctx, "0", resume).tracker.tell_horizon

    assert horizon(load_settings()) == 24 * 3600
    assert horizon(load_settings(stall={"tell_horizon_hours": None})) is None
    monkeypatch.setenv("DELAYWATCH_STALL__TELL_HORIZON_HOURS", "36")
    assert horizon(load_settings()) == 36 * 3600
    # a snapshot taken under another setting resumes under today's
    old = FlowContext(settings=load_settings(stall={"tell_horizon_hours": None}),
                      run_dir=tmp_path).new_tracker()
    assert horizon(load_settings(), resume=old) == 36 * 3600


def test_an_optional_knob_is_turned_off_by_off_in_a_toml_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOML has no null and an environment variable is a string: ``"off"`` is how an
    operator turns the tell horizon or the late-move rule off."""
    toml = tmp_path / "off.toml"
    toml.write_text('[stall]\ntell_horizon_hours = "off"\n[incidents]\nlate_move_p = "off"\n')
    settings = load_settings(toml)
    assert settings.stall.tell_horizon_hours is None
    assert settings.incidents.late_move_p is None
    toml.write_text("[stall]\ntell_horizon_hours = 12\n")
    assert load_settings(toml).stall.tell_horizon_hours == 12
    monkeypatch.setenv("DELAYWATCH_INCIDENTS__LATE_MOVE_P", "OFF")
    assert load_settings().incidents.late_move_p is None
    monkeypatch.setenv("DELAYWATCH_INCIDENTS__LATE_MOVE_P", "of")
    with pytest.raises(ValueError, match="late_move_p"):
        load_settings()


def test_the_eta_phase_is_a_setting_that_reaches_the_estimator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.dataflow import FlowContext

    def phase(settings) -> int | None:  # type: ignore[no-untyped-def]
        return FlowContext(settings=settings, run_dir=tmp_path).new_tracker().estimator.phase_hours

    assert phase(load_settings()) == 3
    assert phase(load_settings(stall={"eta_phase_hours": 6})) == 6
    monkeypatch.setenv("DELAYWATCH_STALL__ETA_PHASE_HOURS", "off")
    assert phase(load_settings()) is None
    monkeypatch.setenv("DELAYWATCH_STALL__ETA_PHASE_HOURS", "5")
    with pytest.raises(ValueError, match="must divide 24"):
        load_settings()


def test_a_resumed_estimator_takes_the_phase_setting_unless_it_would_misread_its_stages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.dataflow import FlowContext, _Shard

    def resumed(snapshot_hours, hours):  # type: ignore[no-untyped-def]
        old = FlowContext(settings=load_settings(stall={"eta_phase_hours": snapshot_hours}),
                          run_dir=tmp_path).new_tracker()
        ctx = FlowContext(settings=load_settings(stall={"eta_phase_hours": hours}),
                          run_dir=tmp_path)
        return _Shard(ctx, "0", old).tracker.estimator.phase_hours

    assert resumed(3, None) is None  # off: the whole-day stages are always learned
    assert resumed(None, 3) == 3  # on: new stages are used once they have enough data
    assert caplog.records == []
    assert resumed(3, 6) == 3  # 3-hour stages read as 6-hour ones would be wrong
    assert "keeps them" in caplog.text


def test_output_lines_are_compact_json_without_the_recipient() -> None:
    """The JSON-lines outputs as json.dumps(ensure_ascii=False, compact) writes them (what
    earlier runs wrote, byte for byte), and valid JSON where json.dumps would not be."""
    from flows.dataflow import _record_line

    record = {"subject": "facility", "facility_id": "SAN JUAN PR 00936 ÑÚ", "kind": None,
              "score": 2.3456789, "learning": False, "arrivals": 17, "held_usual": 0.0,
              "scores": {"delay": 1.25, "silence": 0.0}, "packages": ["P1", "P2"],
              "recipient_ref": "C-private"}
    key, line = _record_line(("alerts", ("alert", record)))
    public = {k: v for k, v in record.items() if k != "recipient_ref"}
    assert key == "alerts"
    assert line == json.dumps(public, ensure_ascii=False, separators=(",", ":"))
    assert "C-private" not in line
    _, line = _record_line(("alerts", ("alert", {"score": float("nan"), "x": float("inf")})))
    assert json.loads(line) == {"score": None, "x": None}


def test_facility_rows_leave_the_network_step_as_one_item_of_their_lines() -> None:
    """The network step's facility rows go to the file as one item per batch: the other
    outputs keep their order, and the item's text is the rows' lines, in order, as one row
    per item wrote them (the file's bytes are the same)."""
    from flows.dataflow import _lines_of_rows, _record_line

    rows = [{"subject": "facility", "facility_id": f"P{i}", "score": i / 3, "kind": None}
            for i in range(3)]
    alert, incident = ("alert", {"alert_key": "P9:stall:1"}), ("incident", {"kind": "x"})
    out = [("facility", rows[0]), alert, ("facility", rows[1]), incident,
           ("facility", rows[2])]
    batched = _lines_of_rows(out)
    assert batched[:2] == [alert, incident]
    tag, text = batched[2]
    assert tag == "facility" and len(batched) == 3
    assert text == "\n".join(_record_line(("k", ("facility", row)))[1] for row in rows)
    assert _lines_of_rows([alert]) == [alert]


def test_send_deletes_the_rows_done_with_after_keep_days(demo_data: Path, tmp_path: Path) -> None:
    import sqlite3
    import time
    from datetime import UTC, datetime

    from notifiers.outbox import Outbox

    box = tmp_path / "outbox.sqlite"
    then = datetime(2026, 10, 1, tzinfo=UTC)
    with Outbox(box) as outbox:
        for pid in ("OLD", "NEW", "DUE"):
            outbox.enqueue({"alert_key": f"{pid}:stall:1", "kind": "stall", "package_id": pid,
                            "episode": 1, "alert_time": then.isoformat()}, "nobody", now=then)
        outbox.claim_due(then, 2)
        outbox.mark_sent("OLD:stall:1", then)
        outbox.mark_sent("NEW:stall:1", then)
    with sqlite3.connect(box) as con:  # OLD finished 31 days ago by the wall clock
        con.execute("UPDATE outbox SET updated_at = ? WHERE alert_key = 'OLD:stall:1'",
                    (time.time() - 31 * 86400,))
    settings = _settings(demo_data, smtp={"keep_days": 30, "unknown_customer_wait_hours": 0})
    with SmtpServerProcess(tmp_path / "mail") as server:
        report = send_outbox(box, demo_data / "customers.csv", settings, host="127.0.0.1",
                             port=server.port, quiet_hours=False)
    assert report["pruned"] == 1
    with Outbox(box) as outbox:
        left = {row.alert_key: row.status for row in outbox.rows()}
    # DUE failed in this run (its customer is not in the table): done with, kept 30 days
    assert left == {"NEW:stall:1": "sent", "DUE:stall:1": "failed_permanent"}
