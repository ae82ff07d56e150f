"""The delay-alert dataflow.

    scans (first line_no, [bytes]) --parse--> (shard, [ScanEvent, ...]) | DeadLetter
        invalid -> dead_letters.jsonl                       (exactly-once with recovery)
        valid   -> grouped by shard (crc32(package) % shards), one item per shard and batch
                -> track: one PackageTracker per shard (stateful_batch): stall alerts, and
                   per batch a Progress (watermarks + the facility windows it closed)
                -> network (one key): merges the shards' facility windows, runs the facility
                   monitor and the incident lifecycle, folds stall alerts into incidents,
                   groups messages per customer and incident (``flows.network.NetworkDesk``,
                   engine-free; ``_Network`` only feeds it)
                -> incidents.jsonl, alerts.jsonl            (exactly-once with recovery)
                -> facility_windows.jsonl: each monitored facility's figures per window
                -> outbox (SQLite, unique message key)      (at-least-once, idempotent)

The network step sees every shard's alerts and windows. It decides a stall alert only once the
facility windows up to ``alert_time + grace`` are merged from *all* shards, so the decision is
the same in a replay as live; facility windows close ``incidents.lateness_seconds`` behind the
newest event time, well before stall alerts fire (``stall.allowed_lateness_seconds`` behind),
so in practice alerts wait for nothing.

State is per shard, not per package: Bytewax costs ~585 B and a timer per key, which does not
scale to tens of millions of packages. Each shard holds its packages in compact columns and
fires stalls from an event-time wheel (see ``detectors.tracker``).

The parse step hands Bytewax one item per shard and source batch (a list of events, in
input order), not one per event: the engine's per-item cost (branch, key, route to the
stateful step) is paid ~4 times per 2,000 lines instead of 2,000 times. Each shard still sees
its events in input order and in the same batches, so alerts are the same, in the same order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.connectors.files import FileSink
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic

from detectors import DeliveryEstimator, ScanEvent, StallDetector
from detectors.events import Invalid, parse_batch, parse_line
from detectors.facility import FacilityMonitor, FacilityStats
from detectors.folding import IncidentFolder
from detectors.incidents import IncidentDesk, IncidentManager
from detectors.tracker import Held, PackageTracker, hash_id
from flows.cluster import network_key, shard_keys
from flows.config import Settings
from flows.metrics import INCIDENT_KINDS, FlowMetrics
from flows.network import NetworkDesk, Out, Progress
from flows.sinks import OutboxSink
from flows.sources import Item as Lines  # a source batch: (first line's number, lines)
from notifiers.grouping import MessageGrouper

__all__ = ["DeadLetter", "FlowContext", "Progress", "build_flow"]

log = logging.getLogger("delaywatch")


@dataclass(frozen=True)
class DeadLetter:
    step: str
    reason: str
    detail: str
    line: int
    raw: str

    def to_json(self) -> str:
        return _encode(self.__dict__).decode()  # as every output line (_record_line)


@dataclass
class FlowContext:
    """What the dataflow needs besides settings: reference data, metrics, live trackers."""

    settings: Settings
    run_dir: Path
    metrics: FlowMetrics | None = None
    names: Mapping[str, str] = field(default_factory=dict)
    tz_of: Mapping[str, str] | None = None
    regions: Mapping[str, str] = field(default_factory=dict)  # hub id -> region (weather)
    hubs: frozenset[str] | None = None  # facilities with incident statistics; None: "auto"
    trackers: dict[str, PackageTracker] = field(default_factory=dict)
    network: NetworkDesk | None = None  # the network step's, once the flow built it
    failed_step: str | None = None  # a step of this process that raised (several processes)
    _over_cap: int = 0  # over_cap scans already counted in the metric

    def new_tracker(self) -> PackageTracker:
        st = self.settings.stall
        detector = StallDetector(
            q=st.q, margin=st.margin, min_threshold=st.min_threshold_hours * 3600,
            min_samples=st.min_samples, tz_of=self.tz_of, holidays=st.holidays or None,
            min_span=st.min_span_hours * 3600,
        )
        inc = self.settings.incidents
        # without a facility list: the facilities that scan like a plant (not post offices)
        hubs = "auto" if self.hubs is None else self.hubs
        stats = (FacilityStats(inc.window_seconds, facilities=hubs,
                               max_facilities=inc.max_auto_facilities)
                 if inc.enabled else None)
        # one shard sees every package: it assesses its windows itself, so that packages held
        # at a facility hear of an incident the moment it opens (see PackageTracker._hold)
        desk = self.new_desk() if inc.enabled and self.settings.shards == 1 else None
        return PackageTracker(
            detector, DeliveryEstimator(phase_hours=st.eta_phase_hours),
            allowed_lateness=st.allowed_lateness_seconds,
            bucket_seconds=st.bucket_seconds, ttl_seconds=int(st.ttl_days * 86400),
            eta_sample_every=st.eta_sample_every, names=self.names,
            finished_retention_seconds=int(st.finished_retention_days * 86400),
            facility_stats=stats, facility_lateness=inc.lateness_seconds,
            watch_fraction=inc.watch_fraction if inc.enabled else 0.0,
            incidents=desk, hold_factor=inc.hold_factor,
            hold_horizon=int(inc.hold_horizon_hours * 3600),
            # several shards: the network step has the incidents, so a package reaching the
            # hold point sends its watch then, for the network step to fold (no feedback)
            hold_early=inc.enabled and self.settings.shards > 1,
            late_move_p=inc.late_move_p if inc.enabled else None,
            late_again_p=inc.late_again_p if inc.enabled else None,
            tell_horizon=None if st.tell_horizon_hours is None
            else int(st.tell_horizon_hours * 3600),
        )

    def new_desk(self) -> IncidentDesk:
        inc = self.settings.incidents
        return IncidentDesk(
            FacilityMonitor(inc.detector, regions=self.regions, tz_of=self.tz_of,
                            names=self.names, window_seconds=inc.window_seconds,
                            weather_delay=inc.weather_delay),
            IncidentManager(open_threshold=inc.open_threshold,
                            close_threshold=inc.close_threshold,
                            for_windows=inc.for_windows, clear_windows=inc.clear_windows),
            warm_up_seconds=int(inc.warm_up_hours * 3600),
            keep_figures=inc.enabled and inc.write_facility_windows)

    def new_network(self) -> NetworkDesk:
        inc = self.settings.incidents
        return NetworkDesk(
            IncidentFolder(grace_seconds=inc.grace_seconds,
                           lane_wait_seconds=int(inc.lane_wait_hours * 3600)),
            MessageGrouper(hold_seconds=inc.hold_seconds),
            shards=self.settings.shards,
            # several shards: the windows are merged and assessed in the network step
            incidents=self.new_desk() if inc.enabled and self.settings.shards > 1 else None,
            metrics=self.metrics,
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
        # read at each scrape: it must grow while the feed is silent and nothing runs
        m.event_time_lag.set_function(lambda: max(0.0, time.time() - wm))
        m.stage_keys.set(sum(t.detector.n_stages for t in ts))
        stats = [t.facility_stats for t in ts if t.facility_stats is not None]
        if stats:
            m.facilities_monitored.set(len(set().union(*(s.facilities or () for s in stats))))
            over = sum(s.over_cap for s in stats)
            if over > self._over_cap:
                if not self._over_cap:
                    log.warning(
                        "%d facilities keep incident statistics, the most "
                        "incidents.max_auto_facilities allows; plant-code scans at further "
                        "facilities are not monitored (delaywatch_facility_scans_over_cap). "
                        "Give the flow a facility list (--facilities).",
                        max(len(s.facilities or ()) for s in stats))
                m.facility_scans_over_cap.inc(over - self._over_cap)
                self._over_cap = over
        if self.network is not None:
            by_kind = self.network.folder.open_by_kind()
            for kind in INCIDENT_KINDS:
                m.incidents_open.labels(kind).set(by_kind.get(kind, 0))


Shard = tuple[str, list[ScanEvent]]  # (shard key, its events of one source batch, in order)


def _report(ctx: FlowContext, step: str) -> None:
    """Log the exception being handled: on several processes Bytewax reports a step's
    failure only as a broken connection ("Send thread panic"), so the flow says it."""
    ctx.failed_step = step
    if ctx.settings.processes > 1:
        log.exception("step %s failed", step)


_to_wire = msgspec.msgpack.Encoder().encode
_wire_decoder = msgspec.msgpack.Decoder(list[ScanEvent])


def _from_wire(data: bytes) -> list[ScanEvent]:
    return _wire_decoder.decode(data)


class _Events(list):  # type: ignore[type-arg]
    """A shard's events of a batch. Bytewax pickles an item only when it goes to another
    process (flows.cluster); then they travel as MessagePack (0.6 us an event there and
    back, against 1.5 us pickled) and arrive as a plain list."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return _from_wire, (_to_wire(self),)


def _parser(ctx: FlowContext) -> Callable[[list[Lines]], list[Any]]:
    m = ctx.metrics
    shards = ctx.settings.shards
    # shard hash_id(package) % shards; with several processes, named to land one per process
    keys = shard_keys(shards, ctx.settings.processes)

    def parse(items: list[Lines]) -> list[Shard | DeadLetter]:
        try:
            return _parse(items)
        except Exception:
            _report(ctx, "parse")
            raise

    def _parse(items: list[Lines]) -> list[Shard | DeadLetter]:
        """One Bytewax batch (usually one source batch): a list of events per shard, in
        input order, then the dead letters."""
        per: dict[str, list[ScanEvent]] = {}
        letters: list[Shard | DeadLetter] = []
        skip = 0  # events to pass before the next one sampled (the sample spans the items)
        for first, lines in items:
            events, invalids = parse_batch(lines)
            if shards == 1:
                if events:
                    group = per.get(keys[0])
                    if group is None:
                        per[keys[0]] = events
                    else:
                        group += events
            else:
                for ev in events:
                    key = keys[hash_id(ev.package_id) % shards]
                    group = per.get(key)
                    if group is None:
                        per[key] = _Events((ev,))
                    else:
                        group.append(ev)
            for index, bad in invalids:
                raw = lines[index].rstrip(b"\r\n")
                if not raw:
                    continue  # a blank line: no event, no dead letter
                # msgspec words some errors differently before a line ending (a line cut off
                # in a string: "malformed", not "truncated"): the detail of the line itself
                again = parse_line(raw)
                if again.__class__ is Invalid:
                    bad = again
                letters.append(DeadLetter("parse", bad.reason, bad.detail, first + index,
                                          raw[:2000].decode("utf-8", "replace")))
                if m is not None:
                    m.dead_letters.labels(bad.reason).inc()
            if m is not None:  # a sample keeps the histogram cheap: every 64th event
                for ev in events[skip::64]:
                    m.ingest_lag.observe(max(0, ev.ingest_ts - ev.event_ts))
                skip = (skip - len(events)) % 64
        if m is not None and letters:
            m.scan_events.labels("invalid").inc(len(letters))
        out: list[Shard | DeadLetter] = list(per.items())
        return out + letters if letters else out

    return parse


def _resume_phases(tracker: PackageTracker, hours: int | None) -> None:
    """The setting ``stall.eta_phase_hours`` on a snapshot's delivery estimator. Off, or on
    where the snapshot had none, is safe (the whole-day stages are always learned, and new
    phase stages are used once they hold enough deliveries); another width is not (the
    learned stages would be read as the new width's), so the snapshot's stays, with a
    warning."""
    estimator = tracker.estimator
    if estimator is None or estimator.phase_hours == hours:
        return
    if hours is None or estimator.phase_hours is None:
        estimator.phase_hours = hours
    else:
        log.warning("stall.eta_phase_hours is %d but the snapshot's estimator learned %d-hour "
                    "phases: it keeps them (start without the snapshot to change the width)",
                    hours, estimator.phase_hours)


class _Shard(StatefulBatchLogic[list[ScanEvent], dict[str, Any], PackageTracker]):
    """One shard's tracker. Snapshot: the tracker itself (compact columns pickle fast)."""

    def __init__(self, ctx: FlowContext, key: str, resume: PackageTracker | None) -> None:
        self.ctx = ctx
        self.tracker = resume if resume is not None else ctx.new_tracker()
        if resume is not None:  # a snapshot from before early watches, or another shard count
            inc = ctx.settings.incidents
            resume.hold_early = inc.enabled and ctx.settings.shards > 1
            resume.late_move_p = inc.late_move_p if inc.enabled else None
            resume.late_again_p = inc.late_again_p if inc.enabled else None
            horizon = ctx.settings.stall.tell_horizon_hours
            resume.tell_horizon = None if horizon is None else int(horizon * 3600)
            _resume_phases(resume, ctx.settings.stall.eta_phase_hours)
            if resume.incidents is not None:  # the setting now, not the snapshot's
                resume.incidents.keep_figures = inc.enabled and inc.write_facility_windows
        ctx.trackers[key] = self.tracker
        self.live = ctx.settings.mode == "live"
        self.hold = ctx.settings.feed_silence_hold_seconds
        self.shards = ctx.settings.shards
        self._last_wall = time.monotonic()
        self._last_event_ts = self.tracker.max_event_ts

    def _count(self, before: tuple[int, ...], alerts: list[dict[str, Any]]) -> None:
        m = self.ctx.metrics
        if m is None:
            return
        after = self._snapshot_counts()
        for outcome, a, b in zip(("accepted", "duplicate", "out_of_order", "no_header"),
                                 after[:4], before[:4], strict=True):
            if a != b:
                m.scan_events.labels(outcome).inc(a - b)
        if after[4] != before[4]:
            m.stalls_deferred.inc(after[4] - before[4])
        if alerts:
            kinds: dict[str, int] = {}
            for alert in alerts:
                kind = "held" if type(alert) is Held else alert["kind"]
                kinds[kind] = kinds.get(kind, 0) + 1
            for kind, count in kinds.items():
                m.package_records.labels(kind).inc(count)

    def _progress(self, out: list[Any]) -> list[Any]:
        t = self.tracker
        out.append(Progress(t.watermark, t.facility_through, t.take_windows(),
                            t.take_incidents(),
                            [] if t.incidents is None else t.incidents.take_figures()))
        return out

    def on_batch(self, values: list[list[ScanEvent]]) -> tuple[list[Any], bool]:
        try:
            return self._on_batch(values)
        except Exception:
            _report(self.ctx, "track")
            raise

    def _on_batch(self, values: list[list[ScanEvent]]) -> tuple[list[Any], bool]:
        before = self._snapshot_counts()
        events = values[0] if len(values) == 1 else [ev for group in values for ev in group]
        out = self.tracker.process_batch(events)
        self._last_wall = time.monotonic()
        self._last_event_ts = self.tracker.max_event_ts
        self._count(before, out)
        return self._progress(out), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        """Live mode: wake when wall time brings the clock to the next event time at which
        something happens (a wheel bucket fires, a facility window closes), if that is
        within the hold; else sleep until events come. A wake-up makes Bytewax snapshot the
        shard at the end of its epoch (~2 s of CPU per million packages in flight), so a
        quiet feed must not wake it every second for nothing.

        With several shards the network step waits for the lowest shard clock, and a shard
        cannot know when another one's events move theirs: each ticks every second within
        the hold, as a shared clock would move (and sleeps once held)."""
        if not self.live:
            return None
        held = self._last_event_ts + self.hold  # the clock stops here
        due = self.tracker.next_change() if self.shards == 1 else self.tracker.max_event_ts + 1
        if due > held:
            return None  # nothing to do until events come
        # (+0.05 s: on_notify rounds the idle seconds down)
        wait = due - self._last_event_ts - (time.monotonic() - self._last_wall) + 0.05
        return datetime.now(UTC) + timedelta(seconds=max(wait, 0.0))

    def on_notify(self) -> tuple[list[dict[str, Any]], bool]:
        """Live mode: move the clock with wall time while the feed is idle, up to the hold."""
        before = self._snapshot_counts()
        idle = min(time.monotonic() - self._last_wall, self.hold)
        out = self.tracker.advance(self._last_event_ts + int(idle))
        self._count(before, out)
        self.ctx.observe()
        return self._progress(out), StatefulBatchLogic.RETAIN

    def _snapshot_counts(self) -> tuple[int, ...]:
        s = self.tracker.stats
        return (s.accepted, s.duplicate, s.out_of_order, s.no_header, s.deferred)

    def on_eof(self) -> tuple[list[Any], bool]:
        self.ctx.observe()
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> PackageTracker:
        self.ctx.observe()
        return self.tracker


class NetworkState:
    """A network-step snapshot written before :class:`flows.network.NetworkDesk` (pickled
    as ``flows.dataflow.NetworkState``): unpickled as this, then turned into a desk, so a
    recovery store from before the change resumes."""

    def to_desk(self, shards: int) -> NetworkDesk:
        old = self.__dict__
        desk = NetworkDesk(old["folder"], old["grouper"], shards=shards, incidents=old["desk"])
        desk.now, desk.assessed_through = old["now"], old["assessed_through"]
        desk.watching = old["watching"]
        desk._progress, desk._windows, desk._ready = old["progress"], old["windows"], old["ready"]
        desk._held, desk._arrivals = old["held"], old["arrivals"]
        desk._next_prune = old["next_prune"]
        return desk


class _Network(StatefulBatchLogic[tuple[str, Any], Out, NetworkDesk]):
    """The network step: a :class:`flows.network.NetworkDesk` (also its snapshot) fed with
    the shards' records and progress, one ``step`` per batch."""

    def __init__(self, ctx: FlowContext, resume: NetworkDesk | None) -> None:
        self.ctx = ctx
        if isinstance(resume, NetworkState):
            resume = resume.to_desk(ctx.settings.shards)
        self.desk = resume if resume is not None else ctx.new_network()
        self.desk.metrics = ctx.metrics  # not in the snapshot
        inc = ctx.settings.incidents
        if self.desk.incidents is not None:  # the setting now, not the snapshot's
            self.desk.incidents.keep_figures = inc.enabled and inc.write_facility_windows
        # the setting now (records held already keep the wait they were given)
        self.desk.folder.lane_wait_seconds = int(inc.lane_wait_hours * 3600)
        ctx.network = self.desk

    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[list[Out], bool]:
        desk = self.desk
        try:
            for shard, item in values:
                desk.add(shard, item)
            return _lines_of_rows(desk.step()), StatefulBatchLogic.RETAIN
        except Exception:
            _report(self.ctx, "network")
            raise

    def on_eof(self) -> tuple[list[Out], bool]:
        out = _lines_of_rows(self.desk.finish())
        self.ctx.observe()
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> NetworkDesk:
        return self.desk


# msgspec writes what json.dumps(ensure_ascii=False, separators=(",", ":")) writes for these
# records (str keys, str/int/float/bool/None/list/dict values), 6x faster (~1.5 us a facility
# window row against ~9 us), except for floats below 1e-4 or from 1e16 (``0.00001``, ``1e16``:
# the same numbers) and non-finite ones (null, not json's invalid ``NaN``/``Infinity``)
_encode = msgspec.json.Encoder().encode


def _lines_of_rows(out: list[Out]) -> list[Any]:
    """``out`` with its facility figure rows (``("facility", row)``, one per monitored hub
    and window) as one ``("facility", lines)`` item of their JSON lines, in order, at its
    end: one item through the steps to the file instead of one per row (a replay's month of
    stragglers writes ~800 K rows, each through four filters, a map and the sink; the
    file's bytes are the same)."""
    rows = [record for tag, record in out if tag == "facility"]
    if not rows:
        return out
    out = [item for item in out if item[0] != "facility"]
    out.append(("facility", "\n".join([_line(row) for row in rows])))
    return out


def _line(record: dict[str, Any]) -> str:
    """A record's JSON line, without its ``recipient_ref``."""
    if "recipient_ref" in record:
        record = {k: v for k, v in record.items() if k != "recipient_ref"}
    return _encode(record).decode()


def _record_line(item: tuple[str, Out]) -> tuple[str, str]:
    key, (_, record) = item
    return key, _line(record)


def build_flow(ctx: FlowContext, source: Source) -> Dataflow:
    """The dataflow reading ``source`` and writing into ``ctx.run_dir``."""
    run_dir = ctx.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    figures = ctx.settings.incidents.enabled and ctx.settings.incidents.write_facility_windows
    for name in ("alerts.jsonl", "dead_letters.jsonl", "incidents.jsonl"):
        (run_dir / name).touch()
    if figures:
        (run_dir / "facility_windows.jsonl").touch()

    flow = Dataflow("delay_alerts")
    raw = op.input("scans", flow, source)  # (first line_no, [bytes]) per source batch
    parsed = op.flat_map_batch("parse", raw, _parser(ctx))  # (shard, [ScanEvent]) | DeadLetter
    split = op.branch("valid", parsed, lambda x: x.__class__ is tuple)
    dead = op.map("dead_letter_json", split.falses, lambda d: ("dl", d.to_json()))  # (key, str)
    op.output("dead_letters", dead, FileSink(run_dir / "dead_letters.jsonl"))
    tracked = op.stateful_batch(
        "track", split.trues, _builder(ctx))  # (shard, alert dict | Progress)
    key = network_key(ctx.settings.processes)
    network = op.stateful_batch(
        "network", op.map("to_network", tracked, lambda kv: (key, kv)),
        lambda resume: _Network(ctx, resume))  # ("network", (tag, record))
    alerts = op.filter("alerts", network, lambda kv: kv[1][0] == "alert")
    incidents = op.filter("incidents", network, lambda kv: kv[1][0] == "incident")
    messages = op.filter("messages", network, lambda kv: kv[1][0] == "message")
    op.output("alerts_file", op.map("alert_json", alerts, _record_line),
              FileSink(run_dir / "alerts.jsonl"))
    op.output("incidents_file", op.map("incident_json", incidents, _record_line),
              FileSink(run_dir / "incidents.jsonl"))
    op.output("outbox", op.map("message", messages, lambda kv: (kv[0], kv[1][1])),
              OutboxSink(run_dir / "outbox.sqlite"))
    if figures:
        facility = op.filter("facility_rows", network, lambda kv: kv[1][0] == "facility")
        op.output("facility_windows_file",
                  op.map("facility_lines", facility, lambda kv: (kv[0], kv[1][1])),
                  FileSink(run_dir / "facility_windows.jsonl"))
    return flow


def _builder(ctx: FlowContext) -> Callable[[PackageTracker | None], _Shard]:
    counter = iter(range(1 << 30))

    def build(resume: PackageTracker | None) -> _Shard:
        return _Shard(ctx, f"shard-{next(counter)}", resume)

    return build
