"""Several processes: Bytewax's key placement, the replay and the daemon on a real cluster."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cluster import free_addresses, free_ports, shard_keys, worker_of
from flows.config import load_settings
from flows.run import StoreMismatch, replay
from flows.sources import JsonLinesSource
from notifiers import Outbox
from tests.flows.test_follow import _append, _died, _free_port, _scanned

KEYS = [str(k) for k in range(12)] + ["network", "0.3", "2.1", "1.6"]


def _place(index: int, addresses: list[str], out: str) -> None:
    """Process ``index`` of a real cluster: a keyed step over KEYS; each process writes the
    keys it held."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, cluster_main

    class Part(StatelessSinkPartition):
        def write_batch(self, items: list) -> None:  # type: ignore[type-arg]
            with open(out, "a", encoding="utf-8") as fh:
                for key, _ in items:
                    fh.write(f"{key} {index}\n")

    class Sink(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    flow = Dataflow("placement")
    keyed = op.input("in", flow, TestingSource([(k, 1) for k in KEYS] if index == 0 else []))
    op.output("out", op.stateful_map("held", keyed, lambda s, v: (s, v)), Sink())
    cluster_main(flow, addresses, index)


@pytest.mark.parametrize("processes", [2, 3])
def test_worker_of_is_where_bytewax_keeps_a_key(tmp_path: Path, processes: int) -> None:
    """Bytewax (pinned 0.21.1) places each key where :func:`worker_of` says: the shard keys
    rely on it to land one shard per process."""
    addresses = free_addresses(processes)
    spawn = multiprocessing.get_context("spawn")
    runs = [spawn.Process(target=_place, args=(i, addresses, str(tmp_path / f"{i}.txt")))
            for i in range(processes)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(60)
        assert run.exitcode == 0
    held = dict(line.split() for i in range(processes)
                for line in (tmp_path / f"{i}.txt").read_text().splitlines())
    assert held == {k: str(worker_of(k, processes)) for k in KEYS}
    assert len(set(held.values())) == processes  # (the test can tell the processes apart)


def test_shard_keys_put_one_shard_on_each_worker_in_turn() -> None:
    assert shard_keys(3) == ["0", "1", "2"]  # one process: the keys of older stores
    for shards, workers in ((2, 2), (4, 2), (6, 3), (8, 4), (5, 5)):
        keys = shard_keys(shards, workers)
        assert len(set(keys)) == shards
        assert [worker_of(k, workers) for k in keys] == [s % workers for s in range(shards)]


def test_a_process_needs_a_shard_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"shards \(1\) must be at least processes \(2\)"):
        load_settings(processes=2, shards=1)
    assert load_settings(processes=2).shards == 2  # set nowhere: one a process
    assert load_settings(processes=2, shards=4).shards == 4
    monkeypatch.setenv("DELAYWATCH_SHARDS", "8")  # set somewhere: kept
    assert load_settings(processes=2).shards == 8
    monkeypatch.setenv("DELAYWATCH_PROCESSES", "3")
    monkeypatch.delenv("DELAYWATCH_SHARDS")
    assert load_settings().shards == 3
    with pytest.raises(ValueError, match="past 65535"):
        load_settings(processes=2, metrics_port=65535)


def _open_outbox(path: str, start: float) -> str:
    while time.time() < start:
        pass
    try:
        Outbox(path).close()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return repr(exc)
    return "ok"


def test_processes_opening_a_new_outbox_at_once_all_open_it(tmp_path: Path) -> None:
    """Each process of a cluster opens the outbox when the flow starts; SQLite answered
    "database is locked" at once to all but one switching a new database to WAL (the
    cluster then failed at its start, one run in three)."""
    fork = multiprocessing.get_context("fork")
    with fork.Pool(3) as pool:
        for i in range(15):
            start = time.time() + 0.2
            path = str(tmp_path / f"{i}.sqlite")
            assert pool.starmap(_open_outbox, [(path, start)] * 3) == ["ok"] * 3


def _rows(run: Path) -> list[tuple]:  # type: ignore[type-arg]
    con = sqlite3.connect(run / "outbox.sqlite")
    try:
        return sorted(con.execute(
            "SELECT alert_key, recipient_ref, kind, payload FROM outbox").fetchall())
    finally:
        con.close()


def _same_outputs(run: Path, ref: Path) -> None:
    """The shards' records reach the network step interleaved in another order on several
    processes; the decisions are the same: the same lines, the same messages."""
    for name in ("alerts.jsonl", "incidents.jsonl", "facility_windows.jsonl",
                 "dead_letters.jsonl"):
        got = sorted((run / name).read_text().splitlines())
        assert got == sorted((ref / name).read_text().splitlines()), name
    assert _rows(run) == _rows(ref)


def test_a_replay_on_two_processes_writes_what_one_process_writes(
    demo_data: Path, tmp_path: Path
) -> None:
    events = demo_data / "events.jsonl"
    done = {}
    for processes in (1, 2):
        settings = load_settings(facilities=demo_data / "facilities.csv", shards=2,
                                 processes=processes)
        done[processes] = replay(JsonLinesSource(events), tmp_path / str(processes), settings,
                                 with_metrics=False)
    one, two = done[1], done[2]
    _same_outputs(tmp_path / "2", tmp_path / "1")
    assert sum(one.alerts.values()) > 10 and sum(one.incidents.values()) > 0
    for key in ("events", "accepted", "duplicates", "out_of_order", "no_header", "alerts",
                "incidents", "in_flight", "outbox"):
        assert getattr(two, key) == getattr(one, key), key
    # each process held one of the two shards
    assert len(two.in_flight_by_process) == 2 and min(two.in_flight_by_process) > 0
    assert one.in_flight_by_process == [one.in_flight]


def test_the_daemon_on_two_processes_stops_on_sigterm_and_resumes_to_a_replays_run(
    demo_data: Path, tmp_path: Path
) -> None:
    """`replay --follow --processes 2` as a service runs it: SIGTERM to the command stops
    the cluster (exit 0, no process left); the same store resumed to the feed's end writes
    what one replay of the whole feed writes; another process count is refused."""
    events = (demo_data / "events.jsonl").read_bytes()
    cut = events.index(b"\n", len(events) // 2) + 1
    feed = tmp_path / "events.jsonl"
    feed.write_bytes(events[:cut])
    port = _free_port()
    env = dict(os.environ, DELAYWATCH_MODE="replay", DELAYWATCH_EPOCH_INTERVAL_SECONDS="0.2",
               DELAYWATCH_FOLLOW_POLL_SECONDS="0.05")
    args = ["replay", str(feed), "--out", str(tmp_path / "run"), "--recovery",
            str(tmp_path / "rec"), "--facilities", str(demo_data / "facilities.csv"),
            "--processes", "2"]
    daemon = subprocess.Popen(
        [sys.executable, "-c", "from flows.cli import app; app()", *args, "--follow",
         "--metrics-port", str(port)],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True)  # (its own process group: the signal goes to it alone)
    try:
        # process 0 reads the feed and counts the invalid lines; each process counts the
        # lines of its own shard
        deadline = time.monotonic() + 120
        lines = events[:cut].count(b"\n")
        while _scanned_all(port, 2) != lines:
            assert daemon.poll() is None, _died(daemon)
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)  # a snapshot or two after the last line
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
    assert daemon.returncode == 0, err[-3000:]
    assert "stopped: run the same command again" in err
    assert "2 process(es)" in err
    deadline = time.monotonic() + 10  # nothing left of the cluster (nor multiprocessing's
    while _group(daemon.pid) and time.monotonic() < deadline:  # resource tracker)
        time.sleep(0.1)
    assert _group(daemon.pid) == b""
    assert json.loads((tmp_path / "rec" / "delaywatch-processes.json").read_text()) == \
        {"processes": 2, "shards": 2}

    _append(feed, events[cut:])
    refused = CliRunner().invoke(app, [*args[:-1], "1", "--metrics-port", "0"])
    assert refused.exit_code == 2
    assert "written with processes = 2; resume it with --processes 2" in refused.output
    done = CliRunner().invoke(app, [*args, "--metrics-port", "0"])  # to the end, and exit
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1])["events"] > 0

    done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"), "--out",
                                    str(tmp_path / "ref"), "--facilities",
                                    str(demo_data / "facilities.csv"), "--shards", "2",
                                    "--metrics-port", "0"])
    assert done.exit_code == 0, done.output
    _same_outputs(tmp_path / "run", tmp_path / "ref")
    assert len(_rows(tmp_path / "ref")) > 10


def _group(pgid: int) -> bytes:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).stdout


def _scanned_all(port: int, processes: int) -> float:
    return sum(max(_scanned(port + i), 0.0) for i in range(processes))


def test_a_store_from_one_process_is_not_resumed_by_two(demo_data: Path,
                                                         tmp_path: Path) -> None:
    from bytewax.recovery import init_db_dir

    rec = tmp_path / "rec"
    rec.mkdir()
    init_db_dir(rec, 1)
    events = demo_data / "events.jsonl"
    settings = load_settings(facilities=demo_data / "facilities.csv")
    replay(JsonLinesSource(events), tmp_path / "run", settings, recovery_dir=rec,
           with_metrics=False)
    (rec / "delaywatch-processes.json").unlink()  # a store from before clusters
    with pytest.raises(StoreMismatch, match=r"written with processes = 1"):
        replay(JsonLinesSource(events), tmp_path / "run", settings.model_copy(
            update={"processes": 2, "shards": 2}), recovery_dir=rec, with_metrics=False)
    # the shard count is remembered from then on (packages live in the shard their id
    # hashes to: another count would look for them in the wrong one)
    replay(JsonLinesSource(events), tmp_path / "run", settings, recovery_dir=rec,
           with_metrics=False)
    assert json.loads((rec / "delaywatch-processes.json").read_text()) == \
        {"processes": 1, "shards": 1}
    with pytest.raises(StoreMismatch, match=r"written with shards = 1; resume it with --shards"):
        replay(JsonLinesSource(events), tmp_path / "run", settings.model_copy(
            update={"shards": 2}), recovery_dir=rec, with_metrics=False)


def test_the_cluster_modules_examples() -> None:
    import doctest

    import flows.cluster

    result = doctest.testmod(flows.cluster)
    assert result.attempted == 4 and result.failed == 0


def test_the_other_processes_metrics_ports_are_checked_before_the_run(
    demo_data: Path, tmp_path: Path
) -> None:
    import socket

    port = _free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"), "--out",
                                        str(tmp_path / "run"), "--processes", "2",
                                        "--metrics-port", str(port)])
    assert done.exit_code == 2
    assert f"cannot serve metrics on 127.0.0.1:{port + 1}" in done.output
    assert not (tmp_path / "run" / "alerts.jsonl").exists()  # nothing ran


def test_a_process_that_fails_is_named_and_its_error_shown(
    demo_data: Path, tmp_path: Path
) -> None:
    """Process 1 fails before it joins the cluster (its metrics port was taken after the
    CLI's check): process 0 stops waiting for it, says which process failed, and ends;
    that one's own error is on stderr."""
    import socket

    port = _free_port()
    script = (
        "from pathlib import Path; from flows.config import load_settings\n"
        "from flows.run import replay; from flows.sources import JsonLinesSource\n"
        f"d = Path({str(demo_data)!r})\n"
        f"s = load_settings(facilities=d / 'facilities.csv', shards=2, processes=2, "
        f"metrics_port={port})\n"
        f"replay(JsonLinesSource(d / 'events.jsonl'), Path({str(tmp_path / 'run')!r}), s)\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port + 1))
        taken.listen()
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 1
    assert "RuntimeError: delaywatch-1 failed (exit 1; its error is above)" in done.stderr
    assert "Address already in use" in done.stderr


@pytest.mark.parametrize("processes", [1, 2])
def test_a_failing_step_logs_its_error_on_several_processes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, processes: int
) -> None:
    """Bytewax reports a step's exception in a cluster only as a broken connection: the
    step logs it on the process it failed in (one process shows it as before, once)."""
    import logging

    from flows.dataflow import FlowContext, _Shard

    ctx = FlowContext(settings=load_settings(processes=processes, shards=2), run_dir=tmp_path)
    shard = _Shard(ctx, "shard-0", None)

    def broken(events: list) -> list:  # type: ignore[type-arg]
        raise ValueError("a tracker bug")

    shard.tracker.process_batch = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="delaywatch"), \
            pytest.raises(ValueError, match="a tracker bug"):
        shard.on_batch([[]])
    assert ctx.failed_step == "track"
    logged = [r for r in caplog.records if r.getMessage() == "step track failed"]
    assert len(logged) == (1 if processes > 1 else 0)
    if logged:
        assert "a tracker bug" in caplog.text  # with its traceback


def test_free_ports_lie_outside_the_kernels_ephemeral_range_and_bind() -> None:
    """The cluster's ports (and the tests' metrics ports) are picked below the ephemeral
    range where the kernel says what it is: a connection this host opens meanwhile cannot
    take one (a peer then failed to bind its port, exit 1, once in a clean clone)."""
    import socket
    from pathlib import Path

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        ports = free_ports(3)
        assert len(set(ports)) == 3 and all(10_000 <= p < low for p in ports)
        start = free_ports(2, consecutive=True)
        assert start[1] == start[0] + 1 and start[1] < low
        for port in ports + start:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", port))  # free (nothing else took it meanwhile here)
    assert all(a.startswith("127.0.0.1:") for a in free_addresses(2))
