"""The delay-alert dataflow.

    scans (line_no, bytes) --parse--> (shard, [ScanEvent, ...]) | DeadLetter
        invalid -> dead_letters.jsonl                       (exactly-once with recovery)
        valid   -> grouped by shard (crc32(package) % shards), one item per shard and batch
                -> track: one PackageTracker per shard (stateful_batch)
                -> alerts.jsonl                             (exactly-once with recovery)
                -> outbox (SQLite, unique alert key)        (at-least-once, idempotent)

State is per shard, not per package: Bytewax costs ~585 B and a timer per key, which does not
scale to tens of millions of packages. Each shard holds its packages in compact columns and
fires stalls from an event-time wheel (see ``detectors.tracker``).

The parse step hands Bytewax one item per shard and source batch (a list of events, in
input order), not one per event: the engine's per-item cost (branch, key, route to the
stateful step) is paid ~4 times per 2,000 lines instead of 2,000 times. Each shard still sees
its events in input order and in the same batches, so alerts are the same, in the same order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.connectors.files import FileSink
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic

from detectors import DeliveryEstimator, ScanEvent, StallDetector
from detectors.events import parse_batch
from detectors.tracker import PackageTracker, hash_id
from flows.config import Settings
from flows.metrics import FlowMetrics
from flows.sinks import OutboxSink

__all__ = ["DeadLetter", "FlowContext", "build_flow"]


@dataclass(frozen=True)
class DeadLetter:
    step: str
    reason: str
    detail: str
    line: int
    raw: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False, separators=(",", ":"))


@dataclass
class FlowContext:
    """What the dataflow needs besides settings: reference data, metrics, live trackers."""

    settings: Settings
    run_dir: Path
    metrics: FlowMetrics | None = None
    names: Mapping[str, str] = field(default_factory=dict)
    tz_of: Mapping[str, str] | None = None
    trackers: dict[str, PackageTracker] = field(default_factory=dict)

    def new_tracker(self) -> PackageTracker:
        st = self.settings.stall
        detector = StallDetector(
            q=st.q, margin=st.margin, min_threshold=st.min_threshold_hours * 3600,
            min_samples=st.min_samples, tz_of=self.tz_of, holidays=st.holidays or None,
            min_span=st.min_span_hours * 3600,
        )
        return PackageTracker(
            detector, DeliveryEstimator(), allowed_lateness=st.allowed_lateness_seconds,
            bucket_seconds=st.bucket_seconds, ttl_seconds=int(st.ttl_days * 86400),
            eta_sample_every=st.eta_sample_every, names=self.names,
            finished_retention_seconds=int(st.finished_retention_days * 86400),
        )

    def observe(self) -> None:
        """Refresh the gauges from the shards' trackers."""
        m = self.metrics
        if m is None or not self.trackers:
            return
        ts = list(self.trackers.values())
        m.in_flight.set(sum(t.in_flight for t in ts))
        m.open_episodes.set(sum(t.stats.stalls - t.stats.resolved for t in ts))
        wm = min(t.watermark for t in ts)
        m.watermark.set(wm)
        m.event_time_lag.set(max(0.0, time.time() - wm))
        m.stage_keys.set(sum(t.detector.n_stages for t in ts))


Shard = tuple[str, list[ScanEvent]]  # (shard key, its events of one source batch, in order)


def _parser(ctx: FlowContext) -> Callable[[list[tuple[int, bytes]]], list[Any]]:
    m = ctx.metrics
    shards = ctx.settings.shards
    keys = [str(k) for k in range(shards)]  # the shard key: str(hash_id(package) % shards)

    def parse(batch: list[tuple[int, bytes]]) -> list[Shard | DeadLetter]:
        events, invalids = parse_batch([line for _, line in batch])
        out: list[Shard | DeadLetter]
        if shards == 1:
            out = [(keys[0], events)] if events else []
        else:
            per: dict[str, list[ScanEvent]] = {}
            for ev in events:
                key = keys[hash_id(ev.package_id) % shards]
                group = per.get(key)
                if group is None:
                    per[key] = [ev]
                else:
                    group.append(ev)
            out = list(per.items())
        for index, bad in invalids:
            n, raw = batch[index]
            out.append(DeadLetter("parse", bad.reason, bad.detail, n,
                                  raw[:2000].decode("utf-8", "replace")))
            if m is not None:
                m.dead_letters.labels(bad.reason).inc()
        if m is not None:
            if invalids:
                m.scan_events.labels("invalid").inc(len(invalids))
            for ev in events[::64]:  # a sample keeps the histogram cheap
                m.ingest_lag.observe(max(0, ev.ingest_ts - ev.event_ts))
        return out

    return parse


class _Shard(StatefulBatchLogic[list[ScanEvent], dict[str, Any], PackageTracker]):
    """One shard's tracker. Snapshot: the tracker itself (compact columns pickle fast)."""

    def __init__(self, ctx: FlowContext, key: str, resume: PackageTracker | None) -> None:
        self.ctx = ctx
        self.tracker = resume if resume is not None else ctx.new_tracker()
        ctx.trackers[key] = self.tracker
        self.live = ctx.settings.mode == "live"
        self.hold = ctx.settings.feed_silence_hold_seconds
        self._last_wall = time.monotonic()
        self._last_event_ts = self.tracker.max_event_ts

    def _count(self, before: tuple[int, ...], alerts: list[dict[str, Any]]) -> None:
        m = self.ctx.metrics
        if m is None:
            return
        s = self.tracker.stats
        after = (s.accepted, s.duplicate, s.out_of_order, s.no_header)
        for outcome, a, b in zip(("accepted", "duplicate", "out_of_order", "no_header"),
                                 after, before, strict=True):
            if a != b:
                m.scan_events.labels(outcome).inc(a - b)
        if alerts:
            kinds: dict[str, int] = {}
            for alert in alerts:
                kinds[alert["kind"]] = kinds.get(alert["kind"], 0) + 1
            for kind, count in kinds.items():
                m.alerts.labels(kind).inc(count)

    def on_batch(self, values: list[list[ScanEvent]]) -> tuple[list[dict[str, Any]], bool]:
        before = self._snapshot_counts()
        events = values[0] if len(values) == 1 else [ev for group in values for ev in group]
        out = self.tracker.process_batch(events)
        self._last_wall = time.monotonic()
        self._last_event_ts = self.tracker.max_event_ts
        self._count(before, out)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.live:
            return None
        return datetime.now(UTC) + timedelta(seconds=1)

    def on_notify(self) -> tuple[list[dict[str, Any]], bool]:
        """Live mode: move the clock with wall time while the feed is idle, up to the hold."""
        before = self._snapshot_counts()
        idle = min(time.monotonic() - self._last_wall, self.hold)
        out = self.tracker.advance(self._last_event_ts + int(idle))
        self._count(before, out)
        self.ctx.observe()
        return out, StatefulBatchLogic.RETAIN

    def _snapshot_counts(self) -> tuple[int, ...]:
        s = self.tracker.stats
        return (s.accepted, s.duplicate, s.out_of_order, s.no_header)

    def on_eof(self) -> tuple[list[dict[str, Any]], bool]:
        self.ctx.observe()
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> PackageTracker:
        self.ctx.observe()
        return self.tracker


def _alert_line(item: tuple[str, dict[str, Any]]) -> tuple[str, str]:
    key, alert = item
    public = {k: v for k, v in alert.items() if k != "recipient_ref"}
    return key, json.dumps(public, ensure_ascii=False, separators=(",", ":"))


def build_flow(ctx: FlowContext, source: Source) -> Dataflow:
    """The dataflow reading ``source`` and writing into ``ctx.run_dir``."""
    run_dir = ctx.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in ("alerts.jsonl", "dead_letters.jsonl"):
        (run_dir / name).touch()

    flow = Dataflow("delay_alerts")
    raw = op.input("scans", flow, source)  # (line_no, bytes)
    parsed = op.flat_map_batch("parse", raw, _parser(ctx))  # (shard, [ScanEvent]) | DeadLetter
    split = op.branch("valid", parsed, lambda x: x.__class__ is tuple)
    dead = op.map("dead_letter_json", split.falses, lambda d: ("dl", d.to_json()))  # (key, str)
    op.output("dead_letters", dead, FileSink(run_dir / "dead_letters.jsonl"))
    alerts = op.stateful_batch(
        "track", split.trues, _builder(ctx))  # (shard, alert dict)
    op.output("alerts_file", op.map("alert_json", alerts, _alert_line),
              FileSink(run_dir / "alerts.jsonl"))
    op.output("outbox", alerts, OutboxSink(run_dir / "outbox.sqlite"))
    return flow


def _builder(ctx: FlowContext) -> Callable[[PackageTracker | None], _Shard]:
    counter = iter(range(1 << 30))

    def build(resume: PackageTracker | None) -> _Shard:
        return _Shard(ctx, f"shard-{next(counter)}", resume)

    return build
