"""The `delaywatch replay` command: the flow over a file, as the operators run it."""

from __future__ import annotations

import csv
import gc
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import GC_THRESHOLDS, app
from tests.flows.test_follow import _free_port


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_replay_writes_the_run_and_collects_garbage_rarely(
    demo_data: Path, tmp_path: Path, thresholds: None
) -> None:
    gc.set_threshold(700, 10, 10)
    port = _free_port()
    done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"),
                                    "--out", str(tmp_path / "run"), "--metrics-port", str(port)])
    assert done.exit_code == 0, done.output
    assert f"metrics: http://127.0.0.1:{port}/metrics" in done.output
    _bind(port).close()  # the metrics server let the port go when the replay ended
    summary = json.loads(done.output.strip().splitlines()[-1])
    lines = sum(1 for _ in (demo_data / "events.jsonl").open())
    assert summary["events"] == lines
    assert (tmp_path / "run" / "alerts.jsonl").stat().st_size > 0
    # the flow's process keeps millions of long-lived objects: the cyclic collector's
    # thresholds are raised (bench/RESULTS.md, "The whole national replay")
    assert gc.get_threshold() == GC_THRESHOLDS


def test_replay_again_into_the_same_out_needs_overwrite(demo_data: Path, tmp_path: Path) -> None:
    args = ["replay", str(demo_data / "events.jsonl"), "--out", str(tmp_path / "run"),
            "--metrics-port", "0"]
    assert CliRunner().invoke(app, args).exit_code == 0
    before = (tmp_path / "run" / "alerts.jsonl").read_bytes()
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2, refused.output
    assert "holds a previous run" in refused.output and "--overwrite" in refused.output
    assert "Traceback" not in refused.output
    done = CliRunner().invoke(app, [*args, "--overwrite"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "run" / "alerts.jsonl").read_bytes() == before  # the same run, anew


def _bind(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    return sock


def test_replay_with_its_metrics_port_taken_says_so_and_writes_nothing(
    demo_data: Path, tmp_path: Path
) -> None:
    """Another process (say a daemon still running) holds the port: a clear error naming the
    port and the option, not a traceback, before any output is made."""
    with _bind(0) as taken:
        taken.listen()
        port = taken.getsockname()[1]
        done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"),
                                        "--out", str(tmp_path / "run"),
                                        "--metrics-port", str(port)])
    assert done.exit_code == 2, done.output
    assert f"127.0.0.1:{port}" in done.output and "--metrics-port" in done.output
    assert "Traceback" not in done.output
    assert not (tmp_path / "run").exists()


def test_send_writes_its_last_run_for_the_textfile_collector(
    demo_data: Path, tmp_path: Path, thresholds: None
) -> None:
    """`delaywatch send --metrics-textfile` (a one-shot run, e.g. from cron): the e-mails
    the real SMTP server received, the last run's figures in the file and the JSON report
    agree, and the outbox gauge says what is left."""
    from prometheus_client.parser import text_string_to_metric_families

    from notifiers.smtpd import SmtpServerProcess, count_by_alert_key

    run = tmp_path / "run"
    done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"), "--out", str(run),
                                    "--metrics-port", "0"])
    assert done.exit_code == 0, done.output
    config = tmp_path / "send.toml"
    config.write_text("[smtp]\nquiet_hours = false\n")  # whatever the hour of the test
    textfile = tmp_path / "delaywatch_send.prom"
    with SmtpServerProcess(tmp_path / "maildir") as server:
        sent = CliRunner().invoke(app, [
            "send", "--outbox", str(run / "outbox.sqlite"),
            "--customers", str(demo_data / "customers.csv"), "--host", "127.0.0.1",
            "--port", str(server.port), "--metrics-textfile", str(textfile),
            "--config", str(config)])
    assert sent.exit_code == 0, sent.output
    report = json.loads(sent.output.strip().splitlines()[-1])
    samples = {(s.name, s.labels.get("outcome")): s.value
               for family in text_string_to_metric_families(textfile.read_text())
               for s in family.samples}
    delivered = sum(count_by_alert_key(tmp_path / "maildir").values())
    assert delivered > 0
    # the last run's figures as gauges (counters of a process that exits would restart at
    # every cron run), with the time of the run
    assert samples["delaywatch_send_last_run_messages", "sent"] == report["sent"] == delivered
    assert samples["delaywatch_send_last_run_messages", "failed_permanent"] == 0
    assert samples["delaywatch_send_last_run_relay_error_code", None] == 0
    assert abs(samples["delaywatch_send_last_run_timestamp_seconds", None] - time.time()) < 600
    assert samples["delaywatch_outbox_depth", None] == 0  # every message went
    assert report["next_due_at"] is None  # and nothing waits


@pytest.mark.parametrize("command", [
    ["replay", "{events}", "--out", "{tmp}/run", "--facilities", "{tmp}/facilites.csv"],
    ["evaluate", "--alerts", "{tmp}/alerts.jsonl", "--truth", "{data}"],
    ["evaluate", "--alerts", "{events}", "--truth", "{data}", "--incidents", "{tmp}/inc.jsonl"],
])
def test_a_mistyped_path_is_an_error_not_an_empty_input(
    command: list[str], demo_data: Path, tmp_path: Path
) -> None:
    """Review finding: a facility list or a run file that is not there was read as empty (a
    replay without regions or names; a score of 0 found). Now it is an error naming it."""
    args = [a.format(events=demo_data / "events.jsonl", tmp=tmp_path, data=demo_data)
            for a in command]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2, done.output
    missing = next(a for a in args if a.startswith(str(tmp_path)) and not a.endswith("/run"))
    assert Path(missing).name in done.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("recovery", [True, False])
def test_ctrl_c_ends_a_replay_with_how_to_resume_and_other_errors_stay_errors(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recovery: bool
) -> None:
    """Ctrl-C in a step reaches the CLI as Bytewax's runtime error wrapping the
    KeyboardInterrupt (measured: `kill -INT` on a replay of the national sample, then the
    same command resumed to the straight run's outputs). It ends with exit code 130 and what
    to do next, not a traceback; any other runtime error still propagates."""
    from bytewax.errors import BytewaxRuntimeError

    import flows.run

    def interrupted(*args: object, **kwargs: object) -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise BytewaxRuntimeError('error calling `StatefulBatchLogic.on_batch` in step '
                                      '"delay_alerts.track"') from exc

    monkeypatch.setattr(flows.run, "replay", interrupted)
    args = ["replay", str(demo_data / "events.jsonl"), "--out", str(tmp_path / "run"),
            "--metrics-port", "0"]
    if recovery:
        args += ["--recovery", str(tmp_path / "rec")]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 130, done.output
    assert "interrupted" in done.output and "Traceback" not in done.output
    assert ("--recovery" in done.output) and (("to resume" in done.output) == recovery)

    def broken(*args: object, **kwargs: object) -> None:  # names it, but is not one
        raise BytewaxRuntimeError("error calling `on_batch`: unknown zone Bogus/KeyboardInterrupt")

    monkeypatch.setattr(flows.run, "replay", broken)
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 1 and isinstance(done.exception, BytewaxRuntimeError)


def test_send_with_bad_customer_rows_names_them_holds_their_messages_and_sends_the_others(
    demo_data: Path, tmp_path: Path
) -> None:
    """Unusable rows in customers.csv: a warning naming each (file, line, column; the
    address itself never appears); messages to those customers, and to customers missing
    from the table (a row that lost or shifted its recipient_ref is someone's), wait without
    spending an attempt until it is mended; everyone else's are sent, at a real SMTP
    server; exit 0 (a typo must not stop every notice)."""
    from notifiers import Outbox
    from notifiers.smtpd import SmtpServerProcess, count_by_alert_key

    with open(demo_data / "customers.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:6]
    address = rows[0]["email"]
    refs = [r["recipient_ref"] for r in rows]
    rows[0]["email"] = "not an address"  # line 2
    rows[1]["recipient_ref"] = ""  # line 3: lost its key
    rows[2]["recipient_ref"] = ""  # line 4: the same (two rows under one empty key)
    table = tmp_path / "customers.csv"
    with open(table, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(table, "a", encoding="utf-8") as fh:  # line 8: a row that lost its first fields
        fh.write(f"{rows[3]['email']},es,Europe/Madrid\n")
    with Outbox(tmp_path / "outbox.sqlite") as box:
        for i, ref in enumerate(refs):
            box.enqueue({"alert_key": f"P{i}:stall:1", "kind": "stall", "package_id": f"P{i}"},
                        ref)
    with SmtpServerProcess(tmp_path / "mail") as server:
        done = CliRunner().invoke(app, [
            "send", "--outbox", str(tmp_path / "outbox.sqlite"), "--customers", str(table),
            "--host", "127.0.0.1", "--port", str(server.port)],
            env={"DELAYWATCH_SMTP__QUIET_HOURS": "false"})
    assert done.exit_code == 0, done.output
    assert "Traceback" not in done.output and "not an address" not in done.output
    for r in rows:
        assert r["email"] not in done.output and (not r["name"] or r["name"] not in done.output)
    report = json.loads(done.output.strip().splitlines()[-1])
    assert report["customer_rows_bad"] == [
        f"{table}:2: column email is not a plain address",
        f"{table}:3: column recipient_ref is empty",
        f"{table}:4: column recipient_ref is empty",
        f"{table}:8: column email is not a plain address",
    ]
    assert f"{table}:8: column email is not a plain address: skipped" in done.output
    assert "4 unusable customer rows" in done.output
    # P0 (its row is bad), P1 and P2 (missing: their rows lost the key) wait, not failed;
    # the others went (P3's own row is good: line 8 is a stray copy)
    sent = {"P3:stall:1": 1, "P4:stall:1": 1, "P5:stall:1": 1}
    assert count_by_alert_key(tmp_path / "mail") == sent
    assert (report["sent"], report["customer_row_bad"], report["failed_permanent"]) == (3, 3, 0)
    with Outbox(tmp_path / "outbox.sqlite") as box:
        assert [(box.get(f"P{i}:stall:1").status, box.get(f"P{i}:stall:1").attempts)
                for i in range(3)] == [("pending", 0)] * 3
    assert address not in done.output
    # a table without its columns is no table: an error, nothing sent
    table.write_text("name,email\n", encoding="utf-8")
    done = CliRunner().invoke(app, ["send", "--outbox", str(tmp_path / "outbox.sqlite"),
                                    "--customers", str(table), "--port", "9"])
    assert done.exit_code == 2 and "missing column(s)" in done.output


def test_send_refuses_a_real_relay_with_the_example_sender_and_unsubscribe_secret(
        demo_data: Path, tmp_path: Path) -> None:
    """The built-in sender, unsubscribe page and secret are the demo's: with the example
    secret anyone could make every customer's unsubscribe link. Off the loopback relay
    `send` names what to set and sends nothing; with all three set it goes on."""
    from notifiers import Outbox

    with open(demo_data / "customers.csv", newline="", encoding="utf-8") as fh:
        ref = next(csv.DictReader(fh))["recipient_ref"]
    with Outbox(tmp_path / "outbox.sqlite") as box:
        box.enqueue({"alert_key": "P0:stall:1", "kind": "stall", "package_id": "P0"}, ref)
    args = ["send", "--outbox", str(tmp_path / "outbox.sqlite"),
            "--customers", str(demo_data / "customers.csv"), "--host", "relay.invalid"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2, done.output
    for name in ("smtp.sender", "smtp.unsubscribe_url", "smtp.unsubscribe_secret",
                 "DELAYWATCH_SMTP__UNSUBSCRIBE_SECRET"):
        assert name in done.output
    assert "change-me" not in done.output
    # a local mail server on a mail port forwards to the world: refused the same
    local_mta = CliRunner().invoke(app, [*args[:-1], "127.0.0.1", "--port", "25"])
    assert local_mta.exit_code == 2 and "smtp.unsubscribe_secret" in local_mta.output
    with Outbox(tmp_path / "outbox.sqlite") as box:
        assert (box.get("P0:stall:1").status, box.get("P0:stall:1").attempts) == ("pending", 0)
    ready = {"DELAYWATCH_SMTP__SENDER": "Alerts <alerts@carrier.test>",
             "DELAYWATCH_SMTP__UNSUBSCRIBE_URL": "https://carrier.test/unsubscribe",
             "DELAYWATCH_SMTP__UNSUBSCRIBE_SECRET": "s3cret-of-the-operator",
             "DELAYWATCH_SMTP__QUIET_HOURS": "false"}
    done = CliRunner().invoke(app, args, env=ready)
    # past the check: the relay is not there, so the run fails as temporary (EX_TEMPFAIL),
    # for the timer or cron job to show, after its report
    assert done.exit_code == 75, done.output
    report = json.loads(done.output.strip().splitlines()[-1])
    assert (report["sent"], report["released"], report["relay_error_code"]) == (0, 1, 451)
    # the relay never answered: said so, with where and why, not as a relay's "SMTP 451"
    assert report["relay_error"].startswith("connect: no connection to relay.invalid:8025: ")
    assert report["relay_error"].endswith("(no SMTP reply; retried later)")
    # nobody listening on a local port: the OS's reason, the address once
    from tests.flows.test_follow import _free_port

    port = _free_port()
    with Outbox(tmp_path / "fresh.sqlite") as box:
        box.enqueue({"alert_key": "P1:stall:1", "kind": "stall", "package_id": "P1"}, ref)
    done = CliRunner().invoke(app, ["send", "--outbox", str(tmp_path / "fresh.sqlite"),
                                    *args[3:-1], "127.0.0.1", "--port", str(port)], env=ready)
    report = json.loads(done.output.strip().splitlines()[-1])
    assert report["relay_error"] == (f"connect: no connection to 127.0.0.1:{port}: Connection "
                                     "refused (no SMTP reply; retried later)")
    assert done.exit_code == 75


def test_an_error_message_shows_a_path_with_brackets_as_it_is(tmp_path: Path) -> None:
    """Error lines are not rich markup: a path like ``x[/y]`` is shown, not parsed."""
    path = tmp_path / "x[/y]" / "[blue]outbox.sqlite"
    done = CliRunner().invoke(app, ["send", "--outbox", str(path), "--customers", str(path)])
    assert done.exit_code == 2, done.output
    assert f"{path} does not exist" in done.output


@pytest.mark.faults
def test_send_stopped_by_sigterm_mid_message_records_it_and_exits_cleanly(
    tmp_path: Path
) -> None:
    """``systemctl stop`` while the relay takes a message: the message gets its answer and
    is recorded (killed there, it went again after its lease), the rest stay queued."""
    import signal
    import subprocess
    import sys

    from notifiers import Outbox
    from notifiers.smtpd import count_by_alert_key
    from tests.notifiers.helpers import customer, write_customers_csv
    from tests.notifiers.test_email import _Stalling

    custs = [customer(i) for i in range(3)]
    table = write_customers_csv(tmp_path / "customers.csv", custs)
    with Outbox(tmp_path / "outbox.sqlite") as box:
        for i, c in enumerate(custs):
            box.enqueue({"alert_key": f"P{i}:stall:1", "kind": "stall", "package_id": f"P{i}"},
                        c.recipient_ref)
    mail = tmp_path / "mail"
    with _Stalling(mail, delay=1.5) as port:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from flows.cli import app; app()", "send", "--outbox",
             str(tmp_path / "outbox.sqlite"), "--customers", str(table), "--host",
             "127.0.0.1", "--port", str(port)],
            env={**__import__("os").environ, "DELAYWATCH_SMTP__QUIET_HOURS": "false"},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not any(mail.glob("new/*")):  # the relay has the first message
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "a message being sent was carried to its answer and recorded" in err
    with Outbox(tmp_path / "outbox.sqlite") as box:
        assert [box.get(f"P{i}:stall:1").status for i in range(3)] == [
            "sent", "pending", "pending"]
    assert count_by_alert_key(mail) == {"P0:stall:1": 1}


def test_demo_refuses_to_empty_a_directory_that_is_not_a_previous_demo(tmp_path: Path) -> None:
    """`delaywatch demo --out DIR` empties DIR on every run: only a previous demo's
    directory (its own entries, nothing else), never one holding anything else."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("important")
    done = CliRunner().invoke(app, ["demo", "--out", str(mine)])
    assert done.exit_code == 2 and "notes.txt" in done.output
    assert (mine / "notes.txt").read_text() == "important"
    (tmp_path / "afile").write_text("x")
    assert CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "afile")]).exit_code == 2

    from flows.cli import _clear_demo_dir

    data = tmp_path / "project"  # only a "data" directory: not a demo's for that
    (data / "data").mkdir(parents=True)
    (data / "data" / "precious.csv").write_text("x")
    with pytest.raises(typer.BadParameter):
        _clear_demo_dir(data)
    assert (data / "data" / "precious.csv").exists()

    old = tmp_path / "old"  # a previous demo's from before the marker
    for name in ("data", "run", "maildir"):
        (old / name).mkdir(parents=True)
        (old / name / "f").write_text("x")
    (old / "data" / "meta.json").write_text('{"scenario": "demo", "seed": 1}')
    _clear_demo_dir(old)
    assert sorted(p.name for p in old.iterdir()) == [".delaywatch-demo"]
    (old / "run").mkdir()
    _clear_demo_dir(old)  # and again: its own marker is its own
    assert sorted(p.name for p in old.iterdir()) == [".delaywatch-demo"]
    _clear_demo_dir(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper" / ".delaywatch-demo").exists()
    link = tmp_path / "link"  # a link to a previous demo's directory: emptied through it
    link.symlink_to(old)
    (old / "run").mkdir()
    _clear_demo_dir(link)
    assert link.is_symlink() and sorted(p.name for p in old.iterdir()) == [".delaywatch-demo"]


def test_invalid_settings_are_named_without_their_values(tmp_path: Path) -> None:
    """A mistyped or malformed setting is named with why, never with its value: the value
    may be a password, and the message goes to the journal."""
    done = CliRunner().invoke(app, ["send", "--outbox", "x", "--customers", "y"],
                              env={"DELAYWATCH_SMTP__PASWORD": "hunter2-secret",
                                   "DELAYWATCH_SMTP__PORT": "port-abc"})
    assert done.exit_code == 2
    assert "smtp.pasword: Extra inputs are not permitted" in done.output
    assert "smtp.port: Input should be a valid integer" in done.output
    assert "hunter2" not in done.output and "port-abc" not in done.output
    config = tmp_path / "delaywatch.toml"
    config.write_text('[smtp]\npassword = "ok"\nusername = 42\n', encoding="utf-8")
    done = CliRunner().invoke(app, ["send", "--outbox", "x", "--customers", "y",
                                    "--config", str(config)])
    assert done.exit_code == 2 and "smtp.username: Input should be a valid string" in done.output
    assert "42" not in done.output.replace(str(config), "")


@pytest.mark.parametrize("name", ["DELAYWATCH_STALL_MARGIN", "DELAYWATCH_STALLS__MARGIN"])
def test_a_mistyped_environment_setting_is_refused_not_ignored(name: str) -> None:
    """One underscore where two go, or a section mistyped: the run went on with the default
    margin (a mistyped key inside a section, or in the TOML file, was refused already)."""
    done = CliRunner().invoke(app, ["send", "--outbox", "x", "--customers", "y"],
                              env={name: "2"})
    assert done.exit_code == 2, done.output
    assert f"unknown setting in the environment: {name}" in done.output


def test_an_open_threshold_under_the_close_threshold_is_a_settings_error() -> None:
    """It passed the settings and failed inside the running dataflow, with a traceback."""
    done = CliRunner().invoke(app, ["send", "--outbox", "x", "--customers", "y"],
                              env={"DELAYWATCH_INCIDENTS__OPEN_THRESHOLD": "0.4"})
    assert done.exit_code == 2, done.output
    assert "close_threshold (0.5) must not exceed open_threshold (0.4)" in done.output
    assert "Traceback" not in done.output


def test_a_facility_list_with_an_unknown_time_zone_is_refused_before_the_run(
        demo_data: Path, tmp_path: Path) -> None:
    """It stopped the flow at the facility's first scan (and the seasonal baselines' own
    check now refuses it when they are made)."""
    rows = (demo_data / "facilities.csv").read_text().splitlines()
    header = rows[0].split(",")
    first = rows[1].split(",")
    first[header.index("tz")] = "America/Chicgo"
    bad = tmp_path / "facilities.csv"
    bad.write_text("\n".join([rows[0], ",".join(first), *rows[2:]]) + "\n")
    done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"), "--out",
                                    str(tmp_path / "run"), "--facilities", str(bad),
                                    "--metrics-port", "0"])
    assert done.exit_code == 2, done.output
    assert "line 2: column tz is not a known IANA time zone" in done.output
    assert "Traceback" not in done.output and not (tmp_path / "run" / "alerts.jsonl").exists()
