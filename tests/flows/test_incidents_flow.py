"""Facility incidents in the real dataflow: incidents.jsonl, folding, grouped messages at a
real SMTP server, and feed outages told to nobody."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from detectors.evaluate import FACILITY_INCIDENT_KINDS, evaluate
from fixtures.scenarios import get_scenario
from fixtures.simulate import simulate, write
from flows.config import load_settings
from flows.run import outbox_messages, replay, send_outbox
from flows.sources import JsonLinesSource
from notifiers.smtpd import SmtpServerProcess, count_by_alert_key, count_by_recipient


def _settings(data: Path, **kw: object):
    return load_settings(facilities=data / "facilities.csv", epoch_interval_seconds=0.05, **kw)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def incident_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full demo scenario, seed 1: its weather incident holds packages due within hours
    (the smaller session fixture has incidents but no package the flow should tell)."""
    out = tmp_path_factory.mktemp("incident_data")
    write(simulate(get_scenario("demo"), seed=1), out)
    return out


@pytest.fixture(scope="module")
def demo_run(incident_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("incident_run")
    replay(JsonLinesSource(incident_data / "events.jsonl"), run, _settings(incident_data),
           with_metrics=False)
    return run


def test_incidents_are_written_and_alerts_point_at_them(demo_run: Path) -> None:
    records = _jsonl(demo_run / "incidents.jsonl")
    opened = [r for r in records if r["status"] == "open"]
    assert opened, "the demo scenario has slowdowns, stops and weather"
    keys = {r["incident_key"] for r in records}
    assert len({r["incident_key"] for r in opened}) == len(opened)  # opened once each
    for r in records:
        assert r["kind"] in (*FACILITY_INCIDENT_KINDS, "feed_outage")
        assert r["incident_key"].split(":")[1] == r["kind"]
    folded = [a for a in _jsonl(demo_run / "alerts.jsonl") if a["kind"] == "incident_delay"]
    assert folded, "packages held by the weather incident must have been told of it"
    for a in folded:
        assert a["incident_key"] in keys
        assert a["alert_key"] == f"{a['package_id']}:incident_delay:{a['episode']}"


def test_every_alert_has_the_keys_docs_schemas_lists(demo_run: Path) -> None:
    """alerts.jsonl's contract (docs/schemas.md, "Alert"): every key of the table on every
    record, whatever its kind (a back on track after an incident's message too), and no
    other but the incident's own."""
    import re

    schema = (Path(__file__).parents[2] / "docs" / "schemas.md").read_text(encoding="utf-8")
    table = schema.split("## Alert", 1)[1].split("\n\n", 2)[1]
    documented = {k for row in table.splitlines()[2:]
                  for k in re.findall(r"`([a-z_]+)`", row.split("|")[1])}
    assert {"alert_key", "facility_name", "departed_from", "moving"} <= documented
    alerts = _jsonl(demo_run / "alerts.jsonl")
    assert {a["kind"] for a in alerts} >= {"stall", "incident_delay", "back_on_track"}
    optional = {"incident_kind", "moving", "moved_to"}  # (set on incident_delay)
    for a in alerts:
        assert documented - optional <= a.keys() <= documented, a["alert_key"]


def test_facility_windows_show_what_the_detector_saw(incident_data: Path,
                                                     demo_run: Path) -> None:
    """facility_windows.jsonl: one row per monitored hub and window, without gaps; every
    facility incident opens on a row that names it; and, against the ground truth, the
    packages held beyond the usual during a slowdown stand out from the two days before."""
    rows = _jsonl(demo_run / "facility_windows.jsonl")
    facility = [r for r in rows if r["subject"] == "facility"]
    with open(incident_data / "facilities.csv", newline="") as f:
        hubs = {r["facility_id"] for r in csv.DictReader(f) if r["kind"] in ("plant", "ndc")}
    assert {r["facility_id"] for r in facility} == hubs
    ends: dict[str, list[datetime]] = {}
    for r in facility:
        ends.setdefault(r["facility_id"], []).append(datetime.fromisoformat(r["window_end"]))
    for hub, seen in ends.items():
        steps = {b - a for a, b in zip(seen, seen[1:], strict=False)}
        assert steps == {timedelta(minutes=15)}, hub
    by = {(r["facility_id"], r["window_end"]): r for r in facility}
    regions = {(r["facility_id"], r["window_end"]): r for r in rows if r["subject"] == "region"}
    opened = [r for r in _jsonl(demo_run / "incidents.jsonl") if r["status"] == "open"]
    assert opened
    for incident in opened:
        if incident["lane_to"] is not None:
            continue
        key = (incident["facility_id"], incident["opened_at"])
        row = (regions if incident["kind"] == "weather" else by)[key]
        assert (row["kind"], row["learning"]) == (incident["kind"], False)
        assert row["score"] >= 1.0
    truth = pd.read_csv(incident_data / "incidents.csv")
    slowdowns = truth[truth["kind"] == "facility_slowdown"]
    assert len(slowdowns)
    frame = pd.DataFrame(facility)
    frame["end"] = pd.to_datetime(frame["window_end"])
    frame["excess"] = frame["held"] - frame["held_usual"]
    for _, t in slowdowns.iterrows():
        onset, end = pd.Timestamp(t["onset"]), pd.Timestamp(t["end"])
        at = frame[frame["facility_id"] == t["facility_id"]]
        during = at[(at["end"] >= onset) & (at["end"] <= end + pd.Timedelta(hours=6))]
        before = at[(at["end"] < onset) & (at["end"] >= onset - pd.Timedelta(days=2))]
        assert during["excess"].max() > 3 * max(before["excess"].max(), 1.0), t["incident_id"]
        assert during["scores"].map(lambda s: s["delay"]).max() >= 1.0


def test_the_incidents_command_shows_each_incident_as_it_stands(demo_run: Path,
                                                                tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    records = _jsonl(demo_run / "incidents.jsonl")
    runner = CliRunner()
    done = runner.invoke(app, ["incidents", str(demo_run), "--all", "--json"])
    assert done.exit_code == 0, done.output
    states = [json.loads(line) for line in done.output.splitlines()]
    assert [s["incident_key"] for s in states] == list(dict.fromkeys(
        r["incident_key"] for r in records))  # one line each, in the order they opened
    for state in states:
        mine = [r for r in records if r["incident_key"] == state["incident_key"]]
        assert state["status"] == ("resolved" if mine[-1]["status"] == "resolved" else "open")
        assert state["evidence"] == mine[0]["evidence"]  # what it is, not how it goes
        assert state["affected_max"] == max(r["affected_packages"] for r in mine)
        assert (state["facilities"], state["score"]) == (mine[-1]["facilities"],
                                                         mine[-1]["score"])  # by now
    table = runner.invoke(app, ["incidents", str(demo_run), "--all"], terminal_width=250)
    assert table.exit_code == 0
    for state in states:
        where = state["facilities"] if state["kind"] == "weather" else state["facility_id"]
        assert where in table.output and state["kind"] in table.output
    # a running flow's file, cut after the first record and in the middle of the second:
    # the first incident is open and shown without --all, the half line waits
    partial = tmp_path / "incidents.jsonl"
    partial.write_text(json.dumps(records[0]) + "\n" + json.dumps(records[1])[:40])
    done = runner.invoke(app, ["incidents", str(partial)])
    assert done.exit_code == 0 and records[0]["facility_id"] in done.output
    assert "open incidents: 1" in done.output
    done = runner.invoke(app, ["incidents", str(tmp_path / "missing")])
    assert done.exit_code == 2


def test_packages_an_incident_held_are_told_when_they_move_on_late(
    incident_data: Path, demo_run: Path, tmp_path: Path
) -> None:
    """``late_move_p``: against the ground truth, the packages told of an incident only when
    they moved on (the run without it tells them nothing) were late, and more of the packages
    an incident made late hear of it."""
    off = tmp_path / "off"
    replay(JsonLinesSource(incident_data / "events.jsonl"), off,
           _settings(incident_data, incidents={"late_move_p": None}), with_metrics=False)

    def told(run: Path) -> set[str]:
        return {a["package_id"] for a in _jsonl(run / "alerts.jsonl")
                if a["kind"] == "incident_delay"}

    added = told(demo_run) - told(off)
    packages = pd.read_csv(incident_data / "packages.csv", dtype=str)
    late = set(packages.loc[packages["late"] == "True", "package_id"])
    incident_late = set(packages.loc[(packages["late"] == "True")
                                     & packages["cause"].isin(FACILITY_INCIDENT_KINDS),
                                     "package_id"])
    assert len(added) >= 3
    assert len(added & late) >= 0.8 * len(added)
    assert len(told(demo_run) & incident_late) > len(told(off) & incident_late)


def test_packages_an_incident_held_are_looked_at_again_after_they_moved_on(
    incident_data: Path, demo_run: Path, tmp_path: Path
) -> None:
    """``late_again_p``: against the ground truth, the packages told of an incident only at a
    scan after the one that ended their hold (the run without it tells them nothing) were
    late, every one of them told before delivery; more of the incident-late packages hear
    of it, and no feed outage is told."""
    off = tmp_path / "off"
    replay(JsonLinesSource(incident_data / "events.jsonl"), off,
           _settings(incident_data, incidents={"late_again_p": "off"}), with_metrics=False)

    def told(run: Path) -> dict[str, dict]:
        return {a["package_id"]: a for a in _jsonl(run / "alerts.jsonl")
                if a["kind"] == "incident_delay"}

    on = told(demo_run)
    added = set(on) - set(told(off))
    packages = pd.read_csv(incident_data / "packages.csv", dtype=str).set_index("package_id")
    late = set(packages.index[packages["late"] == "True"])
    incident_late = set(packages.index[(packages["late"] == "True")
                                       & packages["cause"].isin(FACILITY_INCIDENT_KINDS)])
    assert len(added) >= 5
    assert len(added & late) >= 0.9 * len(added)
    assert len(set(on) & incident_late) > len(set(told(off)) & incident_late)
    for pid in added:  # told at a later scan, of the hold before it, before the delivery
        alert = on[pid]
        at = pd.Timestamp(alert["alert_time"])
        assert alert["moving"] and pd.Timestamp(alert["last_scan_time"]) < at
        assert at < pd.Timestamp(packages.loc[pid, "delivered_at"])
    assert not packages.loc[sorted(added), "cause"].eq("feed_outage").any()


def test_facility_windows_can_be_turned_off(tmp_path: Path, demo_data: Path) -> None:
    run = tmp_path / "run"
    settings = load_settings(facilities=demo_data / "facilities.csv",
                             epoch_interval_seconds=0.05,
                             incidents={"write_facility_windows": False})
    replay(JsonLinesSource(demo_data / "events.jsonl"), run, settings, with_metrics=False)
    assert (run / "incidents.jsonl").is_file()
    assert not (run / "facility_windows.jsonl").exists()


def test_without_a_facility_list_the_monitored_facilities_are_capped(
        tmp_path: Path, demo_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No facility list: the facilities scanning a plant's code are monitored, at most
    ``max_auto_facilities`` of them; scans at the others are counted, a warning says so once
    (no facility id in it), and the gauge shows how many are monitored."""
    from prometheus_client import REGISTRY

    import flows.run

    flows.run._metrics()  # the process-wide metrics exist before the first reading

    def over() -> float:
        return REGISTRY.get_sample_value("delaywatch_facility_scans_over_cap_total") or 0.0

    def monitored(run: Path) -> set[str]:
        return {r["facility_id"] for r in _jsonl(run / "facility_windows.jsonl")
                if r["subject"] == "facility"}

    free = tmp_path / "free"
    before = over()
    replay(JsonLinesSource(demo_data / "events.jsonl"), free,
           load_settings(epoch_interval_seconds=0.05), with_metrics=True)
    hubs = monitored(free)
    assert len(hubs) > 3 and over() == before  # the default cap leaves the demo's hubs alone
    assert REGISTRY.get_sample_value("delaywatch_facilities_monitored") == len(hubs)
    assert "max_auto_facilities" not in caplog.text

    capped = tmp_path / "capped"
    with caplog.at_level("WARNING", logger="delaywatch"):
        replay(JsonLinesSource(demo_data / "events.jsonl"), capped,
               load_settings(epoch_interval_seconds=0.05,
                             incidents={"max_auto_facilities": 3}), with_metrics=True)
    kept = monitored(capped)
    assert len(kept) == 3 and kept < hubs
    assert REGISTRY.get_sample_value("delaywatch_facilities_monitored") == 3
    assert over() > before
    warnings = [r for r in caplog.records if "max_auto_facilities" in r.getMessage()]
    assert len(warnings) == 1
    assert not any(f in warnings[0].getMessage() for f in hubs)


def test_revised_estimates_beat_the_original_promise(incident_data: Path, demo_run: Path) -> None:
    """The new estimate in a delay message, against when the package was really delivered
    (ground truth): nearly every message has one, it is closer than the promise it replaces,
    and it is not systematically early or late."""
    result = evaluate(demo_run / "alerts.jsonl", incident_data, with_baselines=False)
    assert result["estimates_given"] >= 0.9
    assert result["estimate_error_hours_p50"] < 0.8 * result["promise_error_hours_p50"]
    assert abs(result["estimate_bias_hours_p50"]) <= 12
    assert result["estimate_within_24h"] >= 0.6


def test_replaying_gives_the_same_incidents(incident_data: Path, demo_run: Path,
                                            tmp_path: Path) -> None:
    replay(JsonLinesSource(incident_data / "events.jsonl", batch_size=777), tmp_path / "again",
           _settings(incident_data), with_metrics=False)
    assert (tmp_path / "again" / "incidents.jsonl").read_bytes() == (
        demo_run / "incidents.jsonl").read_bytes()
    assert sorted((tmp_path / "again" / "alerts.jsonl").read_text().splitlines()) == sorted(
        (demo_run / "alerts.jsonl").read_text().splitlines())


def test_incident_customers_get_at_most_two_messages_each(
    incident_data: Path, demo_run: Path, tmp_path: Path
) -> None:
    demo_data = incident_data
    with SmtpServerProcess(tmp_path / "mail") as server:
        send_outbox(demo_run / "outbox.sqlite", demo_data / "customers.csv",
                    _settings(demo_data), host="127.0.0.1", port=server.port,
                    quiet_hours=False, as_of_alert=True)  # (each in its turn, as live)
    received = count_by_recipient(tmp_path / "mail")
    with open(demo_data / "customers.csv", newline="") as f:
        email = {r["recipient_ref"]: r["email"].lower() for r in csv.DictReader(f)}
    packages = pd.read_csv(demo_data / "packages.csv", dtype=str)
    owner = dict(zip(packages["package_id"], packages["recipient_ref"], strict=True))
    # every package folded into an incident has its customer told, in one message per
    # customer and incident
    folded = [a for a in _jsonl(demo_run / "alerts.jsonl") if a["kind"] == "incident_delay"]
    per_customer_incident: dict[tuple[str, str], set[str]] = {}
    for a in folded:
        per_customer_incident.setdefault((owner[a["package_id"]], a["incident_key"]),
                                         set()).add(a["package_id"])
    messages = outbox_messages(demo_run / "outbox.sqlite")
    delay = messages[messages["kind"] == "incident_delay"]
    assert len(delay) == len(per_customer_incident)
    for ref, _ in per_customer_incident:
        assert received[email[ref]] >= 1
    affected = set(packages.loc[packages["cause"].isin(FACILITY_INCIDENT_KINDS),
                                "recipient_ref"])
    # an affected customer's messages: a delay and an all-clear, but for those about a
    # package of theirs that stalled on its own (its cause a package stall: its own pair)
    own_stall = set(packages.loc[packages["cause"] == "package_stall", "package_id"])
    by_key = count_by_alert_key(tmp_path / "mail")
    assert set(by_key) == set(messages["alert_key"]) and set(by_key.values()) == {1}
    counts: Counter[str] = Counter()
    for row in messages.itertuples():
        if row.recipient_ref in affected and not (
                pd.isna(row.incident_key) and row.alert_key.split(":")[0] in own_stall):
            counts[row.recipient_ref] += 1
    assert counts and max(counts.values()) <= 2
    assert sum(received.values()) == len(messages)  # once each


def test_the_demo_dates_each_message_when_it_would_have_gone_live(
    incident_data: Path, demo_run: Path, tmp_path: Path
) -> None:
    """The demo replays the past: sent now, every estimate in it has passed ("not known
    yet"); dated at its alert time, as the live service would have sent it, each message
    says what was still ahead then."""
    import email
    from email import policy
    from email.utils import parsedate_to_datetime

    box = tmp_path / "outbox.sqlite"
    rows = {r.alert_key: r.alert for r in _outbox_rows(demo_run / "outbox.sqlite", box)}
    with SmtpServerProcess(tmp_path / "mail") as server:
        send_outbox(box, incident_data / "customers.csv", _settings(incident_data),
                    host="127.0.0.1", port=server.port, quiet_hours=False, as_of_alert=True)
    files = list((tmp_path / "mail" / "new").iterdir())
    assert len(files) == len(rows)
    with_estimate = 0
    for path in files:
        msg = email.message_from_bytes(path.read_bytes(), policy=policy.default)
        alert = rows[msg["X-Delaywatch-Alert-Key"]]
        assert parsedate_to_datetime(msg["Date"]) == datetime.fromisoformat(alert["alert_time"])
        text = msg.get_body(("plain",)).get_content()
        if alert["kind"] != "back_on_track" and alert.get("new_estimate") and \
                "dates" not in alert:
            assert "New estimate: not known yet" not in text
            with_estimate += 1
    assert with_estimate >= 10
    # the same messages sent now (late 2026 and on): no estimate is ahead any more
    late = tmp_path / "late.sqlite"
    _outbox_rows(demo_run / "outbox.sqlite", late)
    with SmtpServerProcess(tmp_path / "late") as server:
        send_outbox(late, incident_data / "customers.csv", _settings(incident_data),
                    host="127.0.0.1", port=server.port, quiet_hours=False,
                    now_fn=lambda: datetime(2027, 1, 1, tzinfo=UTC))
    texts = [email.message_from_bytes(p.read_bytes(), policy=policy.default)
             .get_body(("plain",)).get_content() for p in (tmp_path / "late" / "new").iterdir()]
    assert texts and not any(re.search(r"New estimate: [A-Z]", t) for t in texts)


def _outbox_rows(source: Path, copy: Path) -> list:
    """A new outbox with a run's messages, none sent (another test may have sent the run's)."""
    from notifiers.outbox import Outbox

    with Outbox(source) as box:
        rows = box.rows()
    with Outbox(copy) as box:
        box.enqueue_many((row.alert, row.recipient_ref) for row in rows)
    return rows


def test_a_feed_outage_is_an_incident_and_no_customer_hears_of_it(tmp_path: Path) -> None:
    data = tmp_path / "outage"
    write(simulate(get_scenario("outage", packages=2500), seed=1), data)
    run = tmp_path / "run"
    replay(JsonLinesSource(data / "events.jsonl"), run, _settings(data), with_metrics=False)
    kinds = {r["kind"] for r in _jsonl(run / "incidents.jsonl")}
    assert "feed_outage" in kinds
    result = evaluate(run / "alerts.jsonl", data, run / "incidents.jsonl", with_baselines=False)
    assert result["feed_outages_detected"] >= 1
    assert result["customer_alerts_for_feed_outages"] == 0


@pytest.fixture(scope="module")
def sharded_run(incident_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sharded_run")
    replay(JsonLinesSource(incident_data / "events.jsonl"), run,
           _settings(incident_data, shards=3), with_metrics=False)
    return run


def test_with_several_shards_the_network_step_assesses_the_merged_windows(
    demo_run: Path, sharded_run: Path
) -> None:
    run = sharded_run

    def opened(path: Path) -> dict[str, str]:
        return {r["incident_key"].rsplit(":", 1)[0]: r["incident_key"]
                for r in _jsonl(path / "incidents.jsonl") if r["status"] == "open"}

    one, three = opened(demo_run), opened(run)
    # merged windows add up to one shard's figures, so the same incidents open; only late-scan
    # counts differ (each shard closes its windows at its own watermark), which may move a
    # feed outage's opening by a window
    assert one.keys() == three.keys()
    assert {s: k for s, k in one.items() if "feed_outage" not in s} == {
        s: k for s, k in three.items() if "feed_outage" not in s}
    keys = [a["alert_key"] for a in _jsonl(run / "alerts.jsonl")]
    assert len(keys) == len(set(keys))

    def figures(path: Path) -> dict[tuple[str, str], tuple[int, int, int]]:
        return {(r["facility_id"], r["window_end"]): (r["arrivals"], r["departures"],
                                                      r["backlog"])
                for r in _jsonl(path / "facility_windows.jsonl") if r["subject"] == "facility"}

    one_rows, three_rows = figures(demo_run), figures(run)
    assert one_rows.keys() == three_rows.keys()  # one row per hub and window either way
    # the same counts but for the few scans that came late to one shard and not to all
    # (late scans are not counted as arrivals or departures; a late departure of a package
    # whose arrival one shard counted can leave a backlog off by its few packages for days)
    moved = sum(one_rows[k][:2] != three_rows[k][:2] for k in one_rows)
    assert moved <= 0.001 * len(one_rows)
    assert max(abs(one_rows[k][2] - three_rows[k][2]) for k in one_rows) <= 3


def test_with_several_shards_customers_hear_of_an_incident_as_with_one(
    incident_data: Path, demo_run: Path, sharded_run: Path, tmp_path: Path
) -> None:
    """The shards cannot see the incidents, so each package at a facility reaching its hold
    point (overdue, due within the hold horizon) is watched from then on: the network step
    tells it when an incident holding it opens (or at once, one being open); and each hold a
    package left still on time goes to the network step, which keeps those an incident
    covered, so that a later scan finding the package late tells of it (``late_again_p``,
    as one shard does). The packages one shard tells of an incident are told with three
    too, each once, and whatever the batching; no later (the shards' watermarks differ by
    seconds), but for those one shard tells at a scan after their hold: three shards tell
    most of them at their move or earlier (a watched package's move is checked too), the
    others at the scan whose estimate finds them late, and each shard's estimator learns
    from its own packages."""
    def told(path: Path) -> dict[str, str]:
        alerts = [a for a in _jsonl(path / "alerts.jsonl") if a["kind"] == "incident_delay"]
        assert len({a["package_id"] for a in alerts}) == len(alerts), "one alert a package"
        return {a["package_id"]: a["alert_time"] for a in alerts}

    def again(path: Path) -> set[str]:  # told at a scan after the one that ended the hold
        return {a["package_id"] for a in _jsonl(path / "alerts.jsonl")
                if a["kind"] == "incident_delay" and a.get("moving")
                and datetime.fromisoformat(a["alert_time"])
                > datetime.fromisoformat(a["last_scan_time"])
                + timedelta(seconds=a["silence_seconds"])}

    one, three = told(demo_run), told(sharded_run)
    assert len(one) >= 10, "the demo's weather incident holds packages due within hours"
    assert len(again(demo_run)) >= 5
    assert len(one.keys() & three.keys()) >= 0.95 * len(one)
    assert len(again(demo_run) & three.keys()) >= 0.9 * len(again(demo_run))
    for pid in one.keys() & three.keys() - again(demo_run):
        assert datetime.fromisoformat(three[pid]) <= datetime.fromisoformat(one[pid]) + \
            timedelta(minutes=15)
    rebatched = tmp_path / "again"
    replay(JsonLinesSource(incident_data / "events.jsonl", batch_size=777), rebatched,
           _settings(incident_data, shards=3), with_metrics=False)
    for name in ("alerts.jsonl", "incidents.jsonl"):
        assert sorted((rebatched / name).read_text().splitlines()) == sorted(
            (sharded_run / name).read_text().splitlines()), name


def test_every_output_line_is_what_json_dumps_writes(demo_run: Path) -> None:
    """The output files are encoded with msgspec for speed; every line of a whole demo run
    (alerts, incidents, facility windows) is byte for byte what json.dumps(ensure_ascii=False,
    compact) writes for it, so the records hold only plain JSON types (no unrounded tiny
    floats, no numpy scalars) and earlier runs' files compare equal."""
    lines = 0
    for name in ("alerts.jsonl", "incidents.jsonl", "facility_windows.jsonl"):
        for line in (demo_run / name).read_text().splitlines():
            assert json.dumps(json.loads(line), ensure_ascii=False,
                              separators=(",", ":")) == line, (name, line[:200])
            lines += 1
    assert lines > 1000
