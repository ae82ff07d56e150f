"""Running the flow: replay a file, the demo end to end, draining the outbox.

Engine entry points live here so the CLI stays a thin layer of argument parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import functools
import json
import logging
import signal
import sqlite3
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
from bytewax.inputs import FixedPartitionedSource, Source
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

from flows.config import Settings
from flows.dataflow import FlowContext, build_flow
from flows.metrics import make_flow_metrics
from notifiers import MessageComposer, Outbox, SmtpSender, drain, load_customers
from notifiers.email import alert_time

__all__ = ["RUN_FILES", "BadReference", "Reference", "ReplaySummary", "RunDirInUse", "SendStopped",
           "StoreMismatch", "incident_states",
           "read_facilities", "read_reference", "replay", "send_outbox"]

log = logging.getLogger("delaywatch")
_METRICS: dict[str, Any] = {}


def _metrics() -> Any:
    # one set per process (the default registry refuses duplicate names)
    if "flow" not in _METRICS:
        _METRICS["flow"] = make_flow_metrics()
    return _METRICS["flow"]


@dataclass
class ReplaySummary:
    run_dir: Path
    events: int = 0
    accepted: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    no_header: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    alerts: dict[str, int] = field(default_factory=dict)
    incidents: dict[str, int] = field(default_factory=dict)  # opened, by kind
    suppressed: int = 0  # stall alerts told to nobody (feed outages)
    outbox: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    in_flight_by_process: list[int] = field(default_factory=list)  # process 0 first
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["run_dir"] = str(self.run_dir)
        d["events_per_second"] = round(self.events / self.seconds) if self.seconds else None
        return d


@dataclass(frozen=True)
class Reference:
    """What facilities.csv tells the flow (all optional: without it ids stand for names, UTC
    for local time, every facility gets incident statistics and there is no weather grouping)."""

    names: dict[str, str] = field(default_factory=dict)
    tz_of: dict[str, str] | None = None
    regions: dict[str, str] = field(default_factory=dict)  # hub -> region
    hubs: frozenset[str] | None = None  # plants and NDCs


HUB_KINDS = ("plant", "ndc")


def read_facilities(facilities: Path | None) -> Reference:
    """Facility names, time zones, hubs and their regions from a facilities.csv (optional)."""
    if facilities is None or not Path(facilities).is_file():
        return Reference()
    names: dict[str, str] = {}
    tz: dict[str, str] = {}
    regions: dict[str, str] = {}
    hubs: set[str] = set()
    with open(facilities, newline="", encoding="utf-8") as fh:
        for line, row in enumerate(csv.DictReader(fh), 2):
            fid = row["facility_id"]
            names[fid] = row.get("name") or fid
            if row.get("tz"):
                tz[fid] = _zone(row["tz"], facilities, line)
            if row.get("kind") in HUB_KINDS:
                hubs.add(fid)
                if row.get("region"):
                    regions[fid] = row["region"]
    return Reference(names, tz or None, regions, frozenset(hubs) if hubs else None)


@functools.lru_cache(maxsize=1024)
def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _zone(name: str, path: Path, line: int) -> str:
    """A facility's time zone, checked before the run (an unknown one would stop the flow at
    the facility's first scan)."""
    if not _known_zone(name):
        raise BadReference(f"{path} line {line}: column tz is not a known IANA time zone "
                         "(e.g. America/Chicago)")
    return name


def read_reference(facilities: Path | None) -> tuple[dict[str, str], dict[str, str] | None]:
    """Facility names and time zones from a facilities.csv (optional)."""
    ref = read_facilities(facilities)
    return ref.names, ref.tz_of


def replay(
    source: Source,
    run_dir: Path,
    settings: Settings,
    *,
    recovery_dir: Path | None = None,
    with_metrics: bool = True,
    overwrite: bool = False,
) -> ReplaySummary:
    """Run the real dataflow over ``source`` to its end; outputs go to ``run_dir``.

    A new run (no ``recovery_dir``, or one that has not run yet) starts without outputs:
    into a ``run_dir`` holding a previous run's (:data:`RUN_FILES`) it raises
    :class:`RunDirInUse`, or with ``overwrite`` deletes them first. (Else a run that writes
    no alert would leave the previous run's ``alerts.jsonl`` to be scored as its own, and its
    messages would land in the previous run's outbox beside that run's.) A run resumed from
    ``recovery_dir`` goes on writing them.

    With ``settings.processes`` > 1 the flow runs as a Bytewax cluster of that many processes
    on this machine (:mod:`flows.cluster`): this one reads ``source``; the others are started
    here, hold their shards, and end with it. Their metrics are served on
    ``settings.metrics_port + i`` (when ``with_metrics`` and the port is set); the summary
    adds up every process's trackers."""
    run_dir.mkdir(parents=True, exist_ok=True)
    processes = settings.processes
    if recovery_dir is not None:
        _check_store(recovery_dir, processes, settings.shards)
    ctx = _context(run_dir, settings, with_metrics)
    if recovery_dir is None or not _has_run(recovery_dir):
        _start_fresh(run_dir, overwrite)
    flow = build_flow(ctx, source)
    recovery = RecoveryConfig(str(recovery_dir)) if recovery_dir is not None else None
    epoch = timedelta(seconds=settings.epoch_interval_seconds)
    t0 = time.perf_counter()
    if processes == 1:
        run_main(flow, epoch_interval=epoch, recovery_config=recovery)
        stats = [_fill_stats(ctx)]
    else:
        stats = _run_cluster(flow, ctx, recovery_dir, epoch)
    summary = ReplaySummary(run_dir=run_dir, seconds=time.perf_counter() - t0)
    for found in stats:
        summary.accepted += found["accepted"]
        summary.duplicates += found["duplicates"]
        summary.out_of_order += found["out_of_order"]
        summary.no_header += found["no_header"]
        summary.in_flight += found["in_flight"]
        summary.in_flight_by_process.append(found["in_flight"])
        summary.suppressed += found["suppressed"]
    summary.dead_letters = dict(Counter(
        json.loads(line)["reason"] for line in _lines(run_dir / "dead_letters.jsonl")))
    summary.alerts = dict(Counter(
        json.loads(line)["kind"] for line in _lines(run_dir / "alerts.jsonl")))
    summary.incidents = dict(Counter(
        r["kind"] for r in map(json.loads, _lines(run_dir / "incidents.jsonl"))
        if r["status"] == "open"))
    summary.events = (summary.accepted + summary.duplicates + summary.out_of_order
                      + summary.no_header + sum(summary.dead_letters.values()))
    summary.outbox = outbox_counts(run_dir / "outbox.sqlite")
    return summary


def _context(run_dir: Path, settings: Settings, with_metrics: bool) -> FlowContext:
    ref = read_facilities(settings.facilities)
    return FlowContext(settings=settings, run_dir=run_dir, names=ref.names, tz_of=ref.tz_of,
                       regions=ref.regions, hubs=ref.hubs,
                       metrics=_metrics() if with_metrics else None)


def _fill_stats(ctx: FlowContext, process: int = 0) -> dict[str, int]:
    """What this process's trackers and network step counted, once its flow ended."""
    found = {"process": process, "accepted": 0, "duplicates": 0, "out_of_order": 0,
             "no_header": 0, "in_flight": 0, "suppressed": 0}
    for tracker in ctx.trackers.values():
        s = tracker.stats
        found["accepted"] += s.accepted
        found["duplicates"] += s.duplicate
        found["out_of_order"] += s.out_of_order
        found["no_header"] += s.no_header
        found["in_flight"] += tracker.in_flight
    if ctx.network is not None:
        found["suppressed"] = ctx.network.folder.suppressed
    return found


#: What a run writes into its directory: a new run starts without them (:func:`replay`).
RUN_FILES = ("alerts.jsonl", "incidents.jsonl", "facility_windows.jsonl", "dead_letters.jsonl",
             "outbox.sqlite")


class BadReference(ValueError):
    """Reference data (the facility list) the flow cannot use: said before the run."""


class RunDirInUse(ValueError):
    """A new run into a directory that holds a previous run's outputs."""


def _start_fresh(run_dir: Path, overwrite: bool) -> None:
    found = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not found:
        return
    if not overwrite:
        raise RunDirInUse(
            f"{run_dir} holds a previous run ({', '.join(found)}); a new run would be mixed "
            "with it: give a new --out, or --overwrite to delete that run's outputs (messages "
            "of its outbox not sent yet go with them)")
    for name in (*RUN_FILES, "outbox.sqlite-wal", "outbox.sqlite-shm"):
        (run_dir / name).unlink(missing_ok=True)
    log.info("deleted the previous run's outputs in %s: %s", run_dir, ", ".join(found))


def _has_run(recovery_dir: Path) -> bool:
    """The store has recorded an execution: a run resumed from it continues its outputs."""
    for part in recovery_dir.glob("*.sqlite3"):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
                if db.execute("SELECT 1 FROM exs LIMIT 1").fetchone():
                    return True
        except sqlite3.Error:  # not Bytewax's (or damaged): Bytewax says so; keep the outputs
            return True
    return False


_CLUSTER_FILE = "delaywatch-processes.json"


class StoreMismatch(ValueError):
    """A recovery store written with another process or shard count."""


def _check_store(recovery_dir: Path, processes: int, shards: int) -> None:
    """A recovery store holds each shard under a key chosen for its process count
    (:func:`flows.cluster.shard_keys`), and each package in the shard its id hashes to:
    resumed with another process count the shards would start empty, with another shard
    count packages would be looked for in the wrong shard. Both are written beside the
    store's partitions on first use (a store without them was written by one process, its
    shard count unknown); another count is a :class:`StoreMismatch`."""
    recovery_dir.mkdir(parents=True, exist_ok=True)
    path = recovery_dir / _CLUSTER_FILE
    wrote: dict[str, int] = {}
    if path.is_file():
        wrote = json.loads(path.read_text(encoding="utf-8"))
    elif any(_has_snapshots(p) for p in recovery_dir.glob("*.sqlite3")):
        wrote = {"processes": 1}  # a store from before clusters
    for key, now, option in (("processes", processes, "--processes"),
                             ("shards", shards, "--shards")):
        if key in wrote and wrote[key] != now:
            raise StoreMismatch(
                f"the recovery store {recovery_dir} was written with {key} = {wrote[key]}; "
                f"resume it with {option} {wrote[key]} (the shards are kept under keys "
                "chosen for the process count, packages in the shard their id hashes to), "
                "or start a new store")
    if wrote != {"processes": processes, "shards": shards}:
        path.write_text(json.dumps({"processes": processes, "shards": shards}) + "\n",
                        encoding="utf-8")


def _has_snapshots(path: Path) -> bool:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM snaps").fetchone()[0] > 0
    except sqlite3.OperationalError:
        return False
    finally:
        con.close()


def _run_cluster(flow: Any, ctx: FlowContext, recovery_dir: Path | None,
                 epoch: timedelta) -> list[dict[str, int]]:
    """Run ``flow`` as process 0 of a cluster, starting processes 1.. here; each reports what
    its trackers counted when the flow ends. A process that fails ends the cluster (Bytewax
    stops the others); its error is on stderr, and this raises."""
    import multiprocessing

    from bytewax.testing import cluster_main

    from flows.cluster import free_addresses
    from flows.sources import interrupt, interrupt_clear

    settings = ctx.settings
    addresses = free_addresses(settings.processes)
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited locks
    # each process sends its counts back on a pipe of its own (a Queue's semaphores would be
    # reported as leaked when a stopped run's process ends without Python's shutdown)
    pipes = [spawn.Pipe(duplex=False) for _ in range(1, settings.processes)]
    peers = [spawn.Process(target=_peer, name=f"delaywatch-{i}", daemon=True,
                           args=(i, addresses, ctx.run_dir, settings, recovery_dir,
                                 ctx.metrics is not None, pipes[i - 1][1],
                                 log.getEffectiveLevel()))
             for i in range(1, settings.processes)]
    for peer in peers:
        peer.start()
    recovery = RecoveryConfig(str(recovery_dir)) if recovery_dir is not None else None
    ended: list[BaseException] = []
    done = threading.Event()  # set when cluster_main has returned

    def run() -> None:
        try:
            cluster_main(flow, addresses, 0, epoch_interval=epoch, recovery_config=recovery)
        except BaseException as exc:  # re-raised in the calling thread
            ended.append(exc)
        finally:
            done.set()

    # cluster_main runs the worker in a thread of its own and waits in Rust, where signal
    # handlers never run: so it runs in a thread here, and this one waits in Python; an
    # interrupt caught here is raised in the feed's reader (flows.sources.interrupt). (It
    # waits on an Event: a signal raising inside Thread.join makes Python 3.11 take the
    # thread for ended while it runs on.)
    threading.Thread(target=run, name="delaywatch-process-0", daemon=True).start()
    try:
        try:
            while not done.wait(0.2):
                if _any_failed(peers):
                    # (before it joined the cluster, process 0 would wait for it for ever)
                    raise _PeerFailed
        except BaseException as exc:  # Ctrl-C, SIGTERM: stop where run_main would have
            interrupt(exc)
            _wait_ended(done, peers, exc)
            raise
        finally:
            if done.is_set():
                interrupt_clear()
        if ended:
            raise ended[0]
    except BaseException as exc:
        _stop(peers)
        failed = [p for p in peers if p.exitcode not in (0, -signal.SIGTERM, _LOST)]
        if failed and (isinstance(exc, _PeerFailed) or "thread panic" in str(exc)):
            raise RuntimeError(f"{_how_ended(failed)}: the cluster stopped") from None
        raise
    stats = [_fill_stats(ctx)]
    for (receive, _), peer in zip(pipes, peers, strict=True):
        while not receive.poll(1.0) and peer.is_alive():
            pass
        if receive.poll(0):
            stats.append(receive.recv())
    for peer in peers:
        peer.join(60.0)
    failed = [p for p in peers if p.exitcode != 0]  # (a clean end: every one 0)
    if failed or len(stats) < len(peers) + 1:
        raise RuntimeError(_how_ended(failed) or "a process of the cluster sent no counts")
    return sorted(stats, key=lambda found: found["process"])


def _wait_ended(done: threading.Event, peers: list[Any], exc: BaseException) -> None:
    """Wait until process 0's flow has ended after ``exc`` was raised in its reader. A
    process that died before it joined the cluster leaves this one waiting for it (in
    Rust, for ever): then give up after 10 s (the process is ending anyway)."""
    deadline = None
    while not done.wait(0.2):
        if deadline is None and _any_failed(peers):
            deadline = time.monotonic() + 10.0
        if deadline is not None and time.monotonic() > deadline:
            return


def _any_failed(peers: list[Any]) -> bool:
    return any(p.exitcode not in (None, 0) for p in peers)


def _how_ended(peers: list[Any]) -> str:
    """How each of ``peers`` ended, for the error that stops the run."""
    said = []
    for p in peers:
        code = p.exitcode
        if code is not None and code < 0:
            said.append(f"{p.name} was killed by signal {-code}"
                        + (" (out of memory?)" if -code == signal.SIGKILL else ""))
        else:
            said.append(f"{p.name} failed (exit {code}; its error is above)")
    return "; ".join(said)


_LOST = 3  # a process's exit code when its connection to another one broke


class _PeerFailed(Exception):
    """Another process of the cluster ended with an error."""


def _stop(peers: list[Any]) -> None:
    """End the other processes once this one's flow has stopped (interrupted, or failed).
    They would end when this process does (their connection to it breaks), but they wait
    in Bytewax, where no signal handler runs: SIGTERM ends them at once. The recovery store
    keeps what every process had committed (an epoch counts once all of them wrote it), so
    the resume is the same as after a clean stop."""
    for peer in peers:
        if peer.is_alive():
            peer.terminate()
    for peer in peers:
        peer.join(10.0)
        if peer.is_alive():
            peer.kill()
            peer.join()


def _peer(index: int, addresses: list[str], run_dir: Path, settings: Settings,
          recovery_dir: Path | None, with_metrics: bool, counts: Any, log_level: int) -> None:
    """Process ``index`` of a cluster (a spawned interpreter): the same flow, without the
    feed (process 0 reads it), its own metrics server; sends its counts on ``counts``."""
    import gc
    import os
    import sys

    from bytewax.testing import cluster_main

    _end_with_parent()
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [process {index}] "
                        "%(message)s")
    gc.set_threshold(100_000, 50, 1000)  # as delaywatch replay (almost no reference cycles)
    # Ctrl-C reaches every process of the terminal's group: process 0 stops the cluster
    # (flows.sources.interrupt), then ends this one with SIGTERM (its default: end at once)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = _context(run_dir, settings, with_metrics)
    if with_metrics and settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port + index, addr=settings.metrics_host)
    flow = build_flow(ctx, _NoFeed())
    recovery = RecoveryConfig(str(recovery_dir)) if recovery_dir is not None else None
    code = 0
    try:
        cluster_main(flow, addresses, index,
                     epoch_interval=timedelta(seconds=settings.epoch_interval_seconds),
                     recovery_config=recovery)
    except BaseException as exc:
        if ctx.failed_step is not None or "thread panic" not in str(exc):
            traceback.print_exc()  # this process's own failure (a step's is logged above)
            code = 1
        else:  # its connection to another process broke: that one stopped or failed
            log.warning("process %d: the cluster ended (%s)", index, exc)
            code = _LOST
    else:
        counts.send(_fill_stats(ctx, index))
    # without Python's shutdown: Bytewax's network threads may still run, and one taking the
    # GIL while the interpreter shuts down aborts the process (everything is written)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)


def _end_with_parent() -> None:
    """Linux: this process gets SIGKILL when process 0 ends, even killed before this one
    joined the cluster (where it would wait for process 0 for ever)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _NoFeed(FixedPartitionedSource[Any, Any]):
    """The input step of processes 1..: the feed's one partition is on process 0."""

    def list_parts(self) -> list[str]:
        return []

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> Any:
        raise AssertionError(f"{for_part} is read by process 0")


def incident_states(path: Path) -> list[dict[str, Any]]:
    """Each incident of an ``incidents.jsonl`` as it stands after its last record, in the
    order they opened: ``status`` (``open`` or ``resolved``), the facilities it covers by
    now, the opening record's evidence (later ``update`` records say how it goes, not what
    it is), its last score and affected packages (at resolution, for a resolved one), and
    the most of each. A running flow's file may end in a line still being written: it is
    left for the next read."""
    states: dict[str, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    for line in lines[:-1]:  # the last piece is "" or a line not yet finished
        if not line.strip():
            continue
        r = json.loads(line)
        state = states.get(r["incident_key"])
        if state is None:
            state = states[r["incident_key"]] = {
                k: r.get(k) for k in ("incident_key", "kind", "facility_id", "lane_to",
                                      "opened_at", "evidence")
            } | {"affected_max": 0, "score_max": 0.0}
        state["status"] = "resolved" if r["status"] == "resolved" else "open"
        state["resolved_at"] = r.get("resolved_at")
        state["facilities"] = r.get("facilities")
        state["score"] = r.get("score") or 0.0
        state["affected_packages"] = r.get("affected_packages") or 0
        state["affected_max"] = max(state["affected_max"], state["affected_packages"])
        state["score_max"] = max(state["score_max"], state["score"])
    return list(states.values())


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        return [line for line in fh if line.strip()]


def outbox_counts(path: Path) -> dict[str, int]:
    if not path.is_file():
        return {}
    con = sqlite3.connect(path)
    try:
        return dict(con.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        con.close()


def outbox_messages(path: Path) -> pd.DataFrame:
    """Every message in an outbox (any status but ``superseded``: a delay message the sender
    dropped for its all-clear) as a frame: alert_key, recipient_ref, kind, incident_key (set
    for messages about a facility incident)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return pd.read_sql_query(
            "SELECT alert_key, recipient_ref, kind, json_extract(payload, '$.incident_key') "
            "AS incident_key FROM outbox WHERE status != 'superseded'", con)
    finally:
        con.close()


class SendStopped(Exception):
    """``send`` was stopped by SIGTERM: the message being sent got its answer and was
    recorded, the rest of its batch went back to the queue."""


def _alert_time(row: Any) -> datetime:
    """When an outbox row's message was decided (its alert time), else now."""
    return alert_time(row) or datetime.now(UTC)


async def _until_terminated(drained: Any) -> Any:
    """Await ``drained`` (a drain), cancelled by SIGTERM as asyncio.run cancels it on Ctrl-C:
    the message in flight is carried to its answer and recorded first (``drain``)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    terminated: list[bool] = []

    def terminate() -> None:
        terminated.append(True)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
        return await drained
    try:
        return await drained
    except asyncio.CancelledError:
        if terminated:
            raise SendStopped from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


class SettingsUnready(ValueError):
    """The SMTP settings still hold the built-in examples, and the relay is not local."""


def send_outbox(
    outbox_path: Path,
    customers_path: Path,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    quiet_hours: bool | None = None,
    now_fn: Callable[[], datetime] | None = None,
    as_of_alert: bool = False,
) -> dict[str, Any]:
    """Drain every due outbox row to the SMTP relay once; returns the drain report and the
    outbox after it: ``outbox_depth``, ``outbox_oldest_pending_age_seconds`` and
    ``next_due_at`` (ISO), when the earliest row still pending is next due, or None; and
    ``customer_rows_bad``, what is wrong with each row of the customer table skipped (file,
    line and column, never a value): their customers' messages wait until it is mended.
    Raises :class:`SettingsUnready` before anything is sent when the relay is not local and
    the sender, unsubscribe page or secret are the built-in examples. ``as_of_alert`` (the
    demo, which replays the past) dates each message at its alert time, when the live
    service would have sent it, instead of now (when every estimate of the past has passed).
    """
    smtp = settings.smtp
    unready = smtp.unready_for(host or smtp.host, port or smtp.port)
    if unready:
        raise SettingsUnready("not sending to a real relay with example settings: "
                              + "; ".join(unready))
    composer = MessageComposer(
        from_address=smtp.sender, unsubscribe_url=smtp.unsubscribe_url,
        unsubscribe_secret=smtp.unsubscribe_secret.get_secret_value(),
    )
    bad: list[tuple[str, str]] = []  # rows skipped: their customers' messages wait
    customers = load_customers(customers_path, bad=bad)
    sender = SmtpSender(
        host or smtp.host, port or smtp.port, timeout=smtp.timeout_seconds,
        data_timeout=smtp.data_timeout_seconds, start_tls=smtp.start_tls, username=smtp.username,
        password=smtp.password.get_secret_value() if smtp.password else None,
    )
    from notifiers import DEFAULT_QUIET_HOURS

    use_quiet = smtp.quiet_hours if quiet_hours is None else quiet_hours
    now_fn = now_fn or (lambda: datetime.now(UTC))
    with Outbox(outbox_path) as outbox:
        report = asyncio.run(_until_terminated(drain(
            outbox, customers, sender, composer=composer, now_fn=now_fn,
            max_attempts=smtp.max_attempts, backoff_base=smtp.backoff_base_seconds,
            backoff_max=smtp.backoff_max_seconds,
            quiet_hours=DEFAULT_QUIET_HOURS if use_quiet else None,
            unusable={ref for ref, _ in bad}, hold_unknown=bool(bad),
            unknown_wait=smtp.unknown_customer_wait_hours * 3600,
            dated=_alert_time if as_of_alert else None,
        )))
        # rows done with for smtp.keep_days (wall clock): deleted, a bounded number per run
        pruned = outbox.prune(smtp.keep_days * 86400)
        # what is left, and when the rows still pending (quiet hours, back-off) go
        due = outbox.next_due()
        return dataclasses.asdict(report) | {
            "pruned": pruned,
            "outbox_depth": outbox.depth(),
            "outbox_oldest_pending_age_seconds": outbox.oldest_pending_age(now_fn()),
            "next_due_at": None if due is None else due.isoformat(),
            "customer_rows_bad": [error for _, error in bad],  # (file:line: column only)
        }
