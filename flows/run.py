"""Running the flow: replay a file, the demo end to end, draining the outbox.

Engine entry points live here so the CLI stays a thin layer of argument parsing.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from bytewax.inputs import Source
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main

from flows.config import Settings
from flows.dataflow import FlowContext, build_flow
from flows.metrics import make_flow_metrics
from notifiers import MessageComposer, Outbox, SmtpSender, drain, load_customers

__all__ = ["Reference", "ReplaySummary", "incident_states", "read_facilities", "read_reference",
           "replay", "send_outbox"]

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
        for row in csv.DictReader(fh):
            fid = row["facility_id"]
            names[fid] = row.get("name") or fid
            if row.get("tz"):
                tz[fid] = row["tz"]
            if row.get("kind") in HUB_KINDS:
                hubs.add(fid)
                if row.get("region"):
                    regions[fid] = row["region"]
    return Reference(names, tz or None, regions, frozenset(hubs) if hubs else None)


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
) -> ReplaySummary:
    """Run the real dataflow over ``source`` to its end; outputs go to ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ref = read_facilities(settings.facilities)
    ctx = FlowContext(settings=settings, run_dir=run_dir, names=ref.names, tz_of=ref.tz_of,
                      regions=ref.regions, hubs=ref.hubs,
                      metrics=_metrics() if with_metrics else None)
    flow = build_flow(ctx, source)
    recovery = RecoveryConfig(str(recovery_dir)) if recovery_dir is not None else None
    t0 = time.perf_counter()
    run_main(flow, epoch_interval=timedelta(seconds=settings.epoch_interval_seconds),
             recovery_config=recovery)
    summary = ReplaySummary(run_dir=run_dir, seconds=time.perf_counter() - t0)
    for tracker in ctx.trackers.values():
        s = tracker.stats
        summary.accepted += s.accepted
        summary.duplicates += s.duplicate
        summary.out_of_order += s.out_of_order
        summary.no_header += s.no_header
        summary.in_flight += tracker.in_flight
    summary.dead_letters = dict(Counter(
        json.loads(line)["reason"] for line in _lines(run_dir / "dead_letters.jsonl")))
    summary.alerts = dict(Counter(
        json.loads(line)["kind"] for line in _lines(run_dir / "alerts.jsonl")))
    summary.incidents = dict(Counter(
        r["kind"] for r in map(json.loads, _lines(run_dir / "incidents.jsonl"))
        if r["status"] == "open"))
    if ctx.network is not None:
        summary.suppressed = ctx.network.folder.suppressed
    summary.events = (summary.accepted + summary.duplicates + summary.out_of_order
                      + summary.no_header + sum(summary.dead_letters.values()))
    summary.outbox = outbox_counts(run_dir / "outbox.sqlite")
    return summary


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
    """Every message in an outbox (any status) as a frame: alert_key, recipient_ref, kind,
    incident_key (set for messages about a facility incident)."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return pd.read_sql_query(
            "SELECT alert_key, recipient_ref, kind, json_extract(payload, '$.incident_key') "
            "AS incident_key FROM outbox", con)
    finally:
        con.close()


def send_outbox(
    outbox_path: Path,
    customers_path: Path,
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    quiet_hours: bool | None = None,
    now_fn: Callable[[], datetime] | None = None,
) -> dict[str, Any]:
    """Drain every due outbox row to the SMTP relay once; returns the drain report and the
    outbox after it: ``outbox_depth``, ``outbox_oldest_pending_age_seconds`` and
    ``next_due_at`` (ISO), when the earliest row still pending is next due, or None; and
    ``customer_rows_bad``, what is wrong with each row of the customer table skipped (file,
    line and column, never a value): their customers' messages wait until it is mended."""
    smtp = settings.smtp
    composer = MessageComposer(
        from_address=smtp.sender, unsubscribe_url=smtp.unsubscribe_url,
        unsubscribe_secret=smtp.unsubscribe_secret.get_secret_value(),
    )
    bad: list[tuple[str, str]] = []  # rows skipped: their customers' messages wait
    customers = load_customers(customers_path, bad=bad)
    sender = SmtpSender(
        host or smtp.host, port or smtp.port, timeout=smtp.timeout_seconds,
        start_tls=smtp.start_tls, username=smtp.username,
        password=smtp.password.get_secret_value() if smtp.password else None,
    )
    from notifiers import DEFAULT_QUIET_HOURS

    use_quiet = smtp.quiet_hours if quiet_hours is None else quiet_hours
    now_fn = now_fn or (lambda: datetime.now(UTC))
    with Outbox(outbox_path) as outbox:
        report = asyncio.run(drain(
            outbox, customers, sender, composer=composer, now_fn=now_fn,
            max_attempts=smtp.max_attempts, backoff_base=smtp.backoff_base_seconds,
            backoff_max=smtp.backoff_max_seconds,
            quiet_hours=DEFAULT_QUIET_HOURS if use_quiet else None,
            unusable={ref for ref, _ in bad}, hold_unknown=bool(bad),
        ))
        # what is left, and when the rows still pending (quiet hours, back-off) go
        due = outbox.next_due()
        return dataclasses.asdict(report) | {
            "outbox_depth": outbox.depth(),
            "outbox_oldest_pending_age_seconds": outbox.oldest_pending_age(now_fn()),
            "next_due_at": None if due is None else due.isoformat(),
            "customer_rows_bad": [error for _, error in bad],  # (file:line: column only)
        }
