"""The ``delaywatch`` command.

    delaywatch demo                                   simulator -> flow -> outbox -> SMTP, scored
    delaywatch simulate --scenario demo --seed 1 --out DIR
    delaywatch replay EVENTS --out RUNDIR             the real dataflow over a JSON-lines file
    delaywatch replay FEED --out RUNDIR --follow --recovery DIR     ... as a daemon on a live feed
    delaywatch evaluate --alerts FILE --truth DIR [--json]
    delaywatch incidents RUNDIR [--all] [--json]      the run's facility incidents as they stand
    delaywatch send --outbox FILE --customers FILE    drain the outbox to an SMTP relay
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="delaywatch: proactive delay detection for parcel networks.")
console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="TOML settings file (environment DELAYWATCH_* overrides it).")]


# The flow keeps millions of long-lived objects (packages in flight, detector keys, message
# groups) and makes a few short-lived ones per event. With Python's default thresholds
# (700, 10, 10) the cyclic collector walked them 15,289 + 1,390 + 39 times on the whole
# 24.4 M-line national replay: 62 of 1,342 CPU seconds; with these, 3 s, the same peak
# memory (2.1 GB; the flow makes almost no cycles). bench/RESULTS.md, "The whole national
# replay". Set by the commands that run the flow (they own the process), not by the library.
GC_THRESHOLDS = (100_000, 50, 1000)


def _collect_rarely() -> None:
    import gc

    gc.set_threshold(*GC_THRESHOLDS)


#: ``send``'s exit code when the relay could not be reached or refused the connection
#: (sysexits.h's EX_TEMPFAIL: try again later; the messages stay queued)
EX_TEMPFAIL = 75


def _fail(message: str) -> None:
    # one line (grep, logs), the message's brackets shown as they are, not taken as markup
    console.print(f"[red]error:[/red] {escape(' '.join(message.split()))}", soft_wrap=True)
    raise typer.Exit(2)


def _settings(config: Path | None, **overrides: object):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from flows.config import load_settings

    try:
        return load_settings(config, **overrides)
    except ValidationError as exc:  # each setting and why, never the value (it may be a secret)
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False))
        _fail(f"invalid settings: {problems}")
    except ValueError as exc:
        _fail(f"invalid settings: {exc}")


@app.command()
def simulate(
    scenario: Annotated[str, typer.Option(help="demo, quiet, outage, peak or national")] = "demo",
    seed: Annotated[int, typer.Option(help="random seed: same seed, same bytes")] = 1,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("runs/sim"),
    packages: Annotated[int | None, typer.Option(help="override the package count")] = None,
) -> None:
    """Generate scan events, customers, inquiries and ground truth for a scenario."""
    import time

    from fixtures.scenarios import get_scenario
    from fixtures.simulate import simulate as run_sim
    from fixtures.simulate import write

    try:
        sc = get_scenario(scenario, packages)
    except ValueError as exc:
        _fail(str(exc))
    t0 = time.perf_counter()
    with console.status(f"simulating {sc.name} ({sc.packages:,} packages, seed {seed})"):
        meta = write(run_sim(sc, seed), out)
    dt = time.perf_counter() - t0
    console.print(f"wrote {meta['events']:,} events for {meta['packages']:,} packages to {out} "
                  f"in {dt:.1f} s ({meta['events'] / dt:,.0f} events/s)")
    typer.echo(json.dumps(meta))


@app.command()
def replay(
    events: Annotated[Path, typer.Argument(help="JSON-lines file of native scan events")],
    out: Annotated[Path, typer.Option(help="run directory for alerts, dead letters, outbox")],
    facilities: Annotated[Path | None, typer.Option(
        help="facilities.csv (names and time zones); default: beside EVENTS if present")] = None,
    shards: Annotated[int | None, typer.Option(
        help="state shards (default: 1, or --processes)")] = None,
    processes: Annotated[int | None, typer.Option(
        help="run as a Bytewax cluster of N processes on this machine: this one reads the "
             "feed, each holds whole shards (a process's metrics on --metrics-port + its "
             "index); a recovery store resumes with the counts that wrote it")] = None,
    speed: Annotated[float | None, typer.Option(
        help="pace the replay: event seconds per wall second (0 = as fast as possible)")] = None,
    recovery: Annotated[Path | None, typer.Option(
        help="Bytewax recovery directory (created and initialised if missing)")] = None,
    metrics_port: Annotated[int | None, typer.Option(
        help="serve Prometheus metrics on PORT while running (0 = off; the address is the "
             "setting metrics_host, 127.0.0.1 by default)")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", help="run as a daemon: keep reading EVENTS as the feed appends to it and "
        "rotates it (waiting for it if it does not exist yet), until stopped (SIGTERM or "
        "Ctrl-C); needs --recovery; the clock also moves with wall time while the feed is "
        "quiet (mode = live) unless the settings name a mode")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="a new run into an --out that holds a previous run's outputs: "
        "delete them first (without it, such a run is refused)")] = False,
    config: ConfigOpt = None,
) -> None:
    """Run the real dataflow over a file; writes alerts, incidents, facility windows, outbox.

    Into RUNDIR: alerts.jsonl, incidents.jsonl, facility_windows.jsonl, dead_letters.jsonl
    and outbox.sqlite (docs/schemas.md). A new run (no --recovery, or a store that has not
    run yet) into a RUNDIR with a previous run's outputs is refused unless --overwrite.
    With --recovery, SIGTERM (systemd's stop) ends the run with exit code 0 and the same
    command resumes where it stopped; with --follow it runs until stopped
    (docs/operations.md)."""
    from bytewax.errors import BytewaxRuntimeError

    from flows.run import BadReference, RunDirInUse, StoreMismatch
    from flows.run import replay as run_replay
    from flows.sources import JsonLinesSource

    if follow and not events.parent.is_dir():
        _fail(f"{events.parent} (the feed's directory) does not exist")
    if not follow and not events.is_file():  # (a followed feed may come later: waited for)
        _fail(f"{events} does not exist")
    if facilities is None and (events.parent / "facilities.csv").is_file():
        facilities = events.parent / "facilities.csv"
    settings = _settings(config, facilities=facilities, shards=shards, speed=speed,
                         metrics_port=metrics_port, processes=processes)
    if follow:
        if recovery is None:
            _fail("--follow runs as a daemon and needs --recovery DIR: without it a restart "
                  "would read the feed again from its start and write the run anew")
        if settings.speed > 0:
            _fail("--follow reads a live feed as it grows; --speed paces a finished file: "
                  "give one of them")
        if "mode" not in settings.model_fields_set:  # a daemon's clock moves with wall time
            settings = settings.model_copy(update={"mode": "live"})
    source = JsonLinesSource(events, batch_size=settings.batch_size, speed=settings.speed,
                             follow=follow, poll_seconds=settings.follow_poll_seconds,
                             grace_seconds=settings.follow_rotate_grace_seconds)
    if follow:  # a daemon's log: rotations, a feed waited for, resumes (never an address)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("delaywatch").info(
            "following %s into %s (mode %s, %d shard(s), %d process(es), recovery %s)", events,
            out, settings.mode, settings.shards, settings.processes, recovery)
    server = outbox_gauges = feed_gauges = None
    if settings.metrics_port:
        from prometheus_client import REGISTRY, start_http_server

        from flows.metrics import FeedCollector
        from notifiers import OutboxCollector

        host = settings.metrics_host
        for port in range(settings.metrics_port + 1, settings.metrics_port + settings.processes):
            _check_port(host, port)  # the other processes' (they bind them when they start)
        try:
            server, _ = start_http_server(settings.metrics_port, addr=host)
        except OSError as err:
            _fail(f"cannot serve metrics on {host}:{settings.metrics_port} "
                  f"({err.strerror}; another delaywatch running?): pass --metrics-port with a "
                  "free port, or 0 for no metrics server")
        # the outbox's depth and oldest pending age, read at each scrape: messages piling up
        # there mean that `delaywatch send` is not running or cannot reach the relay
        outbox_gauges = OutboxCollector(out / "outbox.sqlite")
        REGISTRY.register(outbox_gauges)
        if follow:  # how far behind the feed the daemon is, and when it last read a line
            feed_gauges = FeedCollector(lambda: source.partitions)
            REGISTRY.register(feed_gauges)
        console.print(f"metrics: http://{host}:{settings.metrics_port}/metrics")
    previous: list[object] = []  # the SIGTERM handler before ours, while ours is installed
    stopped: int | None = None  # the exit code of a run stopped by a signal
    locks: list[IO[str]] = []
    try:
        locks.append(_lock_run(out))  # one flow per run directory (a second corrupts both)
        if recovery is not None:
            # SIGTERM (systemd's stop) ends a resumable run as Ctrl-C does: at the next step,
            # with how to resume; a run without a recovery store is killed as any process is
            if threading.current_thread() is threading.main_thread():
                previous.append(signal.signal(signal.SIGTERM, _terminate))
            locks.append(_lock_run(recovery, "recovery store"))  # and one per store
            _init_recovery(recovery)
        _collect_rarely()
        with console.status(f"following {events}" if follow else f"replaying {events}"):
            try:
                summary = run_replay(source, out, settings, recovery_dir=recovery,
                                     overwrite=overwrite)
            except (StoreMismatch, RunDirInUse, BadReference) as exc:  # another process or
                _fail(str(exc))  # shard count; a previous run in --out; a bad facility list
    except (KeyboardInterrupt, BytewaxRuntimeError) as exc:
        if previous:  # a second SIGTERM while saying so stops at once
            signal.signal(signal.SIGTERM, previous.pop())  # type: ignore[arg-type]
        stop = _interrupted(exc)
        if stop is None:
            raise
        how = "stopped" if isinstance(stop, _Terminated) else "interrupted"
        console.print(
            f"[yellow]{how}:[/yellow] "
            + escape(f"run the same command again (same --recovery {recovery}) to resume "
                     "from the last snapshot; nothing is lost or sent twice"
                     if recovery is not None else
                     f"{out} holds a partial run; with --recovery DIR a run can be resumed"),
            soft_wrap=True)
        # a requested stop (systemd's SIGTERM) is a clean end; Ctrl-C is the shell's 130
        stopped = 0 if isinstance(stop, _Terminated) else 130
        raise typer.Exit(stopped) from None
    finally:
        for lock in locks:
            lock.close()
        if previous:
            signal.signal(signal.SIGTERM, previous.pop())  # type: ignore[arg-type]
        if server is not None:  # the port is free again (a caller in the same process)
            server.shutdown()
            server.server_close()
            REGISTRY.unregister(outbox_gauges)
            if feed_gauges is not None:
                REGISTRY.unregister(feed_gauges)
        if stopped is not None and settings.processes > 1:
            _exit_now(stopped)
    typer.echo(json.dumps(summary.as_dict()))


def _exit_now(code: int) -> None:
    """End a stopped cluster's process 0 without Python's shutdown: Bytewax leaves the
    network threads of an interrupted cluster running, and one of them taking the GIL while
    the interpreter shuts down aborts the process (exit 134 instead of 0, measured with
    ~1 M packages in flight). Everything is written by now: the outputs and the recovery
    store are the engine's (synced per epoch), the outbox's commits are done."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _check_port(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the metrics server
        try:
            sock.bind((host, port))
        except OSError as err:
            _fail(f"cannot serve metrics on {host}:{port} ({err.strerror}): with --processes N "
                  "the processes serve --metrics-port to --metrics-port + N - 1; pass a "
                  "--metrics-port whose next ports are free, or 0 for no metrics server")


def _lock_run(out: Path, what: str = "run directory"):  # type: ignore[no-untyped-def]
    """An exclusive lock on ``out`` (``DIR/.lock``), held while the flow runs: a second
    flow writing the same run, or the same recovery store from another run directory, is
    refused with a clear error."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a")  # noqa: SIM115 - closed when the run ends
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        _fail(f"another delaywatch is running on the {what} {out} (it holds "
              f"{out / '.lock'}): stop it first, or give this run its own --out and "
              "--recovery")
    return fh


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``systemctl stop``, ``kill``): ends the run as Ctrl-C does, at the next step
    the engine runs, so that the recovery store resumes it."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _interrupted(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C (SIGINT) or SIGTERM that ended the run, if one did: Bytewax wraps the
    KeyboardInterrupt raised in a step."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _init_recovery(path: Path, partitions: int = 1) -> None:
    if path.is_dir() and any(path.glob("*.sqlite3")):  # (not its .lock or cluster file)
        return
    from bytewax.recovery import init_db_dir

    path.mkdir(parents=True, exist_ok=True)
    init_db_dir(path, partitions)


@app.command()
def evaluate(
    alerts: Annotated[Path, typer.Option(help="alerts.jsonl of a run")],
    truth: Annotated[Path, typer.Option(help="simulator output directory (ground truth)")],
    incidents: Annotated[Path | None, typer.Option(help="incidents.jsonl of a run")] = None,
    outbox: Annotated[Path | None, typer.Option(
        help="outbox.sqlite of a run: also count messages per (affected) customer")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    baselines: Annotated[bool, typer.Option(help="also score the baselines")] = True,
) -> None:
    """Score alerts against ground truth (and against the no-alert and 48 h baselines)."""
    from detectors.evaluate import evaluate as run_eval
    from detectors.evaluate import format_table

    if not truth.is_dir():
        _fail(f"{truth} is not a directory")
    for given in (alerts, incidents):  # a mistyped path must not score as "nothing found"
        if given is not None and not given.is_file():
            _fail(f"{given} does not exist")
    try:
        result = run_eval(alerts, truth, incidents, with_baselines=baselines)
    except (FileNotFoundError, ValueError) as exc:  # a truth without packages.csv, without
        # events for the baselines, a line that is not JSON (each names the file)
        _fail(str(exc).replace("with_baselines=False", "--no-baselines"))
    if outbox is not None:
        result["customer_messages"] = _messages(outbox, truth)
    typer.echo(json.dumps(result) if as_json else format_table(result))
    if outbox is not None and not as_json:
        typer.echo("\ncustomer messages: " + ", ".join(
            f"{k} {v}" for k, v in result["customer_messages"].items()))


def _messages(outbox: Path, truth: Path) -> dict[str, object]:
    from detectors.evaluate import load_truth, score_messages
    from flows.run import outbox_messages

    if not outbox.is_file():
        _fail(f"{outbox} does not exist")
    return score_messages(outbox_messages(outbox), load_truth(truth))


@app.command()
def incidents(
    run: Annotated[Path, typer.Argument(help="run directory (or its incidents.jsonl)")],
    show_all: Annotated[bool, typer.Option("--all", help="resolved incidents too")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
) -> None:
    """The facility incidents of a run as they stand: open ones (or all), one line each."""
    from flows.run import incident_states

    path = run / "incidents.jsonl" if run.is_dir() else run
    if not path.is_file():
        _fail(f"{path} does not exist")
    states = [s for s in incident_states(path) if show_all or s["status"] == "open"]
    if as_json:
        for state in states:
            typer.echo(json.dumps(state))
        return
    table = Table(title=f"{'incidents' if show_all else 'open incidents'}: {len(states)} "
                        f"({path})")
    for column in ("kind", "where", "status", "opened (UTC)", "resolved (UTC)", "score",
                   "packages held (last / most)", "evidence"):
        table.add_column(column)
    for s in states:
        where = s["facility_id"] + (f" > {s['lane_to']}" if s["lane_to"] else "")
        if s["kind"] == "weather":
            where = s["facilities"]
        table.add_row(s["kind"], where, s["status"], _when(s["opened_at"]),
                      _when(s["resolved_at"]), f"{s['score']:.2f}",
                      f"{s['affected_packages']} / {s['affected_max']}", s["evidence"])
    Console(width=max(Console().width, 160)).print(table)


def _when(iso: str | None) -> str:
    return "-" if not iso else iso[:16].replace("T", " ")


@app.command()
def send(
    outbox: Annotated[Path, typer.Option(help="outbox.sqlite of a run")],
    customers: Annotated[Path | None, typer.Option(
        help="customers.csv (default: the settings' customers)")] = None,
    host: Annotated[str | None, typer.Option(help="SMTP relay host")] = None,
    port: Annotated[int | None, typer.Option(help="SMTP relay port")] = None,
    metrics_textfile: Annotated[Path | None, typer.Option(
        help="also write this run's figures and the outbox gauges there, in Prometheus text "
             "format (for node_exporter's textfile collector: a run from cron exits)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Send every due message in the outbox (once; retries stay queued).

    Relay: --host/--port, else the settings' smtp.host and smtp.port (default 127.0.0.1:8025).

    `python -m notifiers.smtpd --dir DIR --port 8025` is a local test server; any other
    relay needs smtp.sender, smtp.unsubscribe_url and smtp.unsubscribe_secret set.

    Prints the drain report as JSON; messages held by quiet hours count as ``deferred``.
    Exits 75 (EX_TEMPFAIL) when the relay could not be reached or refused us
    (``relay_error_code`` in the report): the messages it left stay queued for the next run."""
    from datetime import UTC, datetime

    from flows.run import SendStopped, SettingsUnready, send_outbox
    from notifiers import CustomerTableError
    from notifiers.metrics import write_send_textfile

    settings = _settings(config)
    customers = customers or settings.customers
    if customers is None:
        _fail("no customer table: pass --customers FILE (or set customers in the settings)")
    for given in (outbox, customers):
        if not given.is_file():
            _fail(f"{given} does not exist")
    if metrics_textfile is not None and not metrics_textfile.parent.is_dir():
        _fail(f"{metrics_textfile.parent} (for --metrics-textfile) is not a directory")
    try:
        report = send_outbox(outbox, customers, settings, host=host, port=port)
    except (CustomerTableError, SettingsUnready) as exc:  # (never a value)
        _fail(str(exc))
    except (SendStopped, KeyboardInterrupt) as exc:  # SIGTERM (systemctl stop), Ctrl-C
        console.print("stopped: a message being sent was carried to its answer and recorded "
                      "(unless stopped twice: then it may go again); the rest stay queued for "
                      "the next run", soft_wrap=True)
        raise typer.Exit(0 if isinstance(exc, SendStopped) else 130) from None
    except UnicodeDecodeError as exc:
        _fail(f"{customers} is not UTF-8 text (byte {exc.start})")
    bad = report["customer_rows_bad"]
    for error in bad[:20]:
        console.print(f"[yellow]warning:[/yellow] {escape(error)}: skipped", soft_wrap=True)
    if bad:
        more = f" ({len(bad) - 20} more rows)" if len(bad) > 20 else ""
        console.print(f"[yellow]warning:[/yellow] {len(bad)} unusable customer rows{more}: "
                      "messages to those customers, and to customers missing from the table, "
                      "wait until it is mended; everyone else's go as usual", soft_wrap=True)
    if metrics_textfile is not None:
        write_send_textfile(metrics_textfile, report, datetime.now(UTC))
    typer.echo(json.dumps(report, default=str))
    if report.get("relay_error_code"):  # the relay down: what it left stays queued, and the
        # timer or cron job that ran this shows as failed (the report says what happened)
        raise typer.Exit(EX_TEMPFAIL)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="working directory of the demo")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="simulator seed")] = 1,
) -> None:
    """Simulate the demo network, run the flow, e-mail customers through a local SMTP server
    (a Maildir under OUT), and score the alerts against ground truth."""
    from detectors.evaluate import evaluate as run_eval
    from fixtures.scenarios import get_scenario
    from fixtures.simulate import simulate as run_sim
    from fixtures.simulate import write
    from flows.run import replay as run_replay
    from flows.run import send_outbox
    from flows.sources import JsonLinesSource
    from notifiers.smtpd import SmtpServerProcess, count_by_alert_key

    logging.basicConfig(level=logging.WARNING)
    _clear_demo_dir(out)
    data, run, maildir = out / "data", out / "run", out / "maildir"
    console.rule("[bold]delaywatch demo")
    with console.status("1/4 simulating the demo network"):
        meta = write(run_sim(get_scenario("demo"), seed), data)
    console.print(f"1/4 simulated {meta['packages']:,} packages, {meta['events']:,} scan events, "
                  f"{meta['facilities']} facilities ({data})")
    settings = _settings(None, facilities=data / "facilities.csv")
    with console.status("2/4 running the Bytewax dataflow"):
        summary = run_replay(JsonLinesSource(data / "events.jsonl"), run, settings)
    console.print(f"2/4 flow: {summary.events:,} events in {summary.seconds:.1f} s, "
                  f"{sum(summary.dead_letters.values())} dead letters, alerts {summary.alerts}")
    with console.status("3/4 sending e-mails to the local SMTP server"), \
            SmtpServerProcess(maildir) as server:
        report = send_outbox(run / "outbox.sqlite", data / "customers.csv", settings,
                             host="127.0.0.1", port=server.port, quiet_hours=False,
                             as_of_alert=True)  # dated as sent live (the data is the past)
    delivered = sum(count_by_alert_key(maildir).values())
    console.print(f"3/4 e-mails: {delivered} delivered to {maildir} "
                  f"(outbox: {report.get('sent', 0)} sent, "
                  f"{report.get('failed_permanent', 0)} failed)")
    with console.status("4/4 scoring against ground truth"):
        result = run_eval(run / "alerts.jsonl", data, run / "incidents.jsonl",
                          with_baselines=True)
        result["customer_messages"] = _messages(run / "outbox.sqlite", data)
    _print_summary(summary.as_dict(), delivered, result)
    console.print(f"\nOpen the e-mails: [bold]{maildir}/new/[/bold] (one file per message), "
                  f"alerts: {run / 'alerts.jsonl'}")


_DEMO_MARK = ".delaywatch-demo"


def _clear_demo_dir(out: Path) -> None:
    """Start the demo in an empty ``out``: a previous demo's directory (its marker, or from
    before the marker exactly ``data`` with the demo's ``meta.json``, ``run`` and
    ``maildir``) is emptied; any other non-empty directory is refused, not deleted."""
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} is a file, not a directory", param_hint="--out")
    found = {p.name for p in out.iterdir()} if out.is_dir() else set()
    earlier = (out / _DEMO_MARK).is_file() or (
        found == {"data", "run", "maildir"} and _is_demo_meta(out / "data" / "meta.json"))
    if found and not earlier:
        shown = ", ".join(sorted(found)[:3])
        raise typer.BadParameter(
            f"{out} is not empty ({shown}) and not a previous demo's: give the demo a "
            "directory of its own (it empties it on every run)", param_hint="--out")
    for entry in out.iterdir() if found else ():  # (not the directory: --out . or a link)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / _DEMO_MARK).write_text("made by `delaywatch demo`: emptied on its next run\n")


def _is_demo_meta(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("scenario") == "demo"
    except (OSError, ValueError, AttributeError):
        return False


def _print_summary(summary: dict, delivered: int, result: dict) -> None:  # type: ignore[type-arg]
    table = Table(title="delaywatch demo: this run vs. the fixed 48 h rule")
    table.add_column("metric")
    table.add_column("delaywatch", justify="right")
    table.add_column("no scan for 48 h", justify="right")
    base = result.get("baselines", {}).get("fixed_48h", {})
    for key in ("late_packages", "late_recall", "alert_precision", "alerted_before_promise",
                "alerted_before_inquiry", "lead_time_hours_p50", "false_alerts_per_1000",
                "alerts_after_delivery", "duplicate_messages"):
        table.add_row(key, _fmt(result.get(key)), _fmt(base.get(key)))
    stall = result.get("by_cause", {}).get("package_stall", {})
    table.add_row("late_recall (package stalls)", _fmt(stall.get("late_recall")),
                  _fmt(base.get("by_cause", {}).get("package_stall", {}).get("late_recall")))
    Console().print(table)
    msgs = result.get("customer_messages", {})
    Console().print(
        f"facility incidents: {result.get('incidents_detected')} of {result.get('incidents')} "
        f"detected (p50 {_fmt(result.get('incident_detection_delay_minutes_p50'))} min after "
        f"onset), {_fmt(result.get('false_incidents'))} false, feed outages "
        f"{result.get('feed_outages_detected')} of {result.get('feed_outages')}; opened "
        f"{summary.get('incidents', {})}; packages told of an incident (incident_delay): "
        f"{summary['alerts'].get('incident_delay', 0)}, told to nobody (feed outage): "
        f"{summary.get('suppressed', 0)}")
    Console().print(
        f"messages per incident-affected customer: max "
        f"{_fmt(msgs.get('messages_per_affected_customer_max'))}, mean "
        f"{_fmt(msgs.get('messages_per_affected_customer_mean'))} "
        f"({msgs.get('affected_customers_messaged')} customers; about one incident: max "
        f"{_fmt(msgs.get('incident_messages_per_affected_customer_max'))})")
    Console().print(f"events {summary['events']:,}, dead letters "
                    f"{sum(summary['dead_letters'].values())}, e-mails delivered {delivered}")


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
