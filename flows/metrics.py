"""Prometheus metrics of the flow, built by a factory so tests use a fresh registry.

Labels are few and bounded (``outcome``, ``reason``, ``kind``, and ``facility`` for the
facilities that keep incident statistics: the plants and distribution centres of
``facilities.csv``, a few hundred nationally, or without it those that scanned a plant's
scan code, ``detectors.facility.HUB_CODES``); never a package id or an address. The
notifier's metrics (outbox depth, e-mails) live in ``notifiers.metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from detectors.events import REASONS

__all__ = ["FeedCollector", "FlowMetrics", "make_flow_metrics"]

OUTCOMES = ("accepted", "duplicate", "out_of_order", "no_header", "invalid")
_SIGNALS = ("delay", "silence", "feed")  # facility_score's signal label
INCIDENT_KINDS = ("facility_slowdown", "facility_stop", "weather", "lane_delay", "feed_outage")


@dataclass(frozen=True)
class FlowMetrics:
    scan_events: Counter
    dead_letters: Counter
    ingest_lag: Histogram
    watermark: Gauge
    event_time_lag: Gauge
    in_flight: Gauge
    open_episodes: Gauge
    stalls_deferred: Counter
    alerts: Counter
    package_records: Counter
    stage_keys: Gauge
    facilities_monitored: Gauge
    facility_scans_over_cap: Counter
    incidents_open: Gauge
    incidents: Counter
    alerts_suppressed: Counter
    messages: Counter
    facility_arrivals: Counter
    facility_departures: Counter
    facility_backlog: Gauge
    facility_waiting: Gauge
    facility_held: Gauge
    facility_held_usual: Gauge
    facility_dwell: Gauge
    facility_score: Gauge
    facility_incident_score: Gauge
    # facility -> its labelled series (``labels()`` costs ~3 us a call; a row sets eleven),
    # then the values last set on them
    _children: dict[str, tuple[Any, ...]] = field(default_factory=dict)

    def facility(self, row: dict[str, Any]) -> None:
        """One facility window's figures (a ``facility_windows.jsonl`` row) into the
        per-facility series: counters add the window's counts, gauges take its state.

        A gauge is set only when its value changes (a hub's quiet windows repeat theirs: ~0.6
        us a ``set``, eleven a row, for each of a few hundred hubs every window); zero is
        always 0.0, never the -0.0 a rounded tiny negative score can be in the row."""
        f = row["facility_id"]
        series = self._children.get(f)
        if series is None:
            gauges = (self.facility_backlog.labels(f), self.facility_waiting.labels(f),
                      self.facility_held.labels(f), self.facility_held_usual.labels(f),
                      self.facility_incident_score.labels(f),
                      *(self.facility_score.labels(f, s) for s in _SIGNALS))
            # the gauges start at 0; the dwell series is absent until a value comes
            last = [0.0] * len(gauges) + [None]
            series = self._children[f] = (self.facility_arrivals.labels(f),
                                          self.facility_departures.labels(f), gauges, last)
        arrivals, departures, gauges, last = series
        if row["arrivals"]:
            arrivals.inc(row["arrivals"])
        if row["departures"]:
            departures.inc(row["departures"])
        scores = row["scores"]
        values = (row["backlog"], row["waiting_12h"], row["held"], row["held_usual"],
                  row["score"] if row["kind"] else 0.0,
                  *(scores[s] for s in _SIGNALS))
        for i, value in enumerate(values):
            if value != last[i]:
                gauges[i].set(value + 0.0)  # (a score rounded to -0.0 shows as 0.0)
                last[i] = value
        dwell = row["dwell_p90_hours"]
        if dwell != last[-1]:
            if dwell is not None:
                self.facility_dwell.labels(f).set(dwell * 3600)
            else:  # no departure in 6 h: no series (a NaN would poison sums and alert rules)
                self.facility_dwell.remove(f)
            last[-1] = dwell


def make_flow_metrics(registry: CollectorRegistry | None = REGISTRY) -> FlowMetrics:
    kw = {"registry": registry}
    m = FlowMetrics(
        scan_events=Counter("delaywatch_scan_events", "Scan events by outcome.",
                            ["outcome"], **kw),
        dead_letters=Counter("delaywatch_dead_letters", "Invalid input lines by reason.",
                             ["reason"], **kw),
        ingest_lag=Histogram(
            "delaywatch_ingest_lag_seconds", "Ingestion time minus event time of scans.",
            buckets=(10, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600), **kw),
        watermark=Gauge("delaywatch_watermark_timestamp_seconds",
                        "Event-time watermark (lowest over shards), Unix seconds.", **kw),
        event_time_lag=Gauge("delaywatch_event_time_lag_seconds",
                             "Wall-clock time minus the watermark.", **kw),
        in_flight=Gauge("delaywatch_packages_in_flight", "Packages tracked.", **kw),
        open_episodes=Gauge("delaywatch_open_stall_episodes",
                            "Packages with an open stall episode.", **kw),
        stalls_deferred=Counter(
            "delaywatch_stalls_deferred", "Silent packages whose alert was put off because "
            "their promise was more than stall.tell_horizon_hours away (once per silence; "
            "told then only if still silent).", **kw),
        alerts=Counter("delaywatch_alerts", "Alerts decided by kind, as written to "
                       "alerts.jsonl (after folding into incidents and suppression).",
                       ["kind"], **kw),
        package_records=Counter(
            "delaywatch_package_records", "Records the package trackers made by kind, before "
            "the network step decides them: stall candidates, watched packages (silent where "
            "an incident may open), moves and late moves; with several shards also holds left "
            "on time (held) and later scans that found such a package late (late_again).",
            ["kind"], **kw),
        stage_keys=Gauge("delaywatch_detector_stage_keys", "Stage keys the detectors hold.",
                         **kw),
        facilities_monitored=Gauge(
            "delaywatch_facilities_monitored", "Facilities that keep incident statistics: "
            "the hubs of the facility list, or without one those seen with a plant's scan "
            "code, at most incidents.max_auto_facilities.", **kw),
        facility_scans_over_cap=Counter(
            "delaywatch_facility_scans_over_cap", "Plant-code scans at facilities left "
            "without incident statistics because incidents.max_auto_facilities was reached "
            "(no facility list): give the flow one.", **kw),
        incidents_open=Gauge("delaywatch_incidents_open", "Facility incidents open now.",
                             ["kind"], **kw),
        incidents=Counter("delaywatch_incidents", "Facility incidents by kind and status "
                          "(opened, resolved).", ["kind", "status"], **kw),
        alerts_suppressed=Counter(
            "delaywatch_alerts_suppressed", "Stall alerts told to nobody, by reason "
            "(feed_outage: the scans are missing, not the package).", ["reason"], **kw),
        messages=Counter("delaywatch_messages", "Customer messages put into the outbox by "
                         "kind (one per customer and incident for incident_delay).",
                         ["kind"], **kw),
        facility_arrivals=Counter(
            "delaywatch_facility_arrivals", "Arrival scans per monitored facility (event "
            "time windows, counted when the window closes).", ["facility"], **kw),
        facility_departures=Counter(
            "delaywatch_facility_departures", "Departure scans per monitored facility.",
            ["facility"], **kw),
        facility_backlog=Gauge(
            "delaywatch_facility_backlog_packages", "Packages arrived and not yet departed, "
            "at the end of the last closed window.", ["facility"], **kw),
        facility_waiting=Gauge(
            "delaywatch_facility_waiting_12h_packages", "Packages of the backlog waiting 12 h "
            "or more.", ["facility"], **kw),
        facility_held=Gauge(
            "delaywatch_facility_held_packages", "Packages of the last 48 h of arrivals still "
            "at the facility (those the delay detector compares).", ["facility"], **kw),
        facility_held_usual=Gauge(
            "delaywatch_facility_held_usual_packages", "How many of them would usually still "
            "be there by now (the facility's own history at this time of day).",
            ["facility"], **kw),
        facility_dwell=Gauge(
            "delaywatch_facility_dwell_p90_seconds", "90th percentile dwell of the packages "
            "that departed in the last 6 h (no series while none did).", ["facility"], **kw),
        facility_score=Gauge(
            "delaywatch_facility_score", "The detector's normalised scores per facility, each "
            "1 at its own bar: delay (packages held beyond the usual: a slowdown), feed (late "
            "scans, departures missing downstream: a feed outage), silence (arrivals missing; "
            "1 or more, as on most nights, only keeps a slowdown from being called).",
            ["facility", "signal"], **kw),
        facility_incident_score=Gauge(
            "delaywatch_facility_incident_score", "The score the incident lifecycle got for "
            "the facility when the window named a kind of incident, else 0: an incident opens "
            "after for_windows windows at open_threshold or more.", ["facility"], **kw),
    )
    for outcome in OUTCOMES:
        m.scan_events.labels(outcome)
    for reason in sorted(REASONS):  # at 0 from the start: rate() sees a first bad line
        m.dead_letters.labels(reason)
    for kind in ("stall", "back_on_track", "incident_delay"):
        m.alerts.labels(kind)
        m.messages.labels(kind)
    for kind in INCIDENT_KINDS:
        m.incidents_open.labels(kind)
        for status in ("opened", "resolved"):
            m.incidents.labels(kind, status)
    m.alerts_suppressed.labels("feed_outage")
    return m


class _Feed(Protocol):
    rotations: int
    truncations: int
    last_read: float

    def bytes_behind(self) -> int: ...

    def modified(self) -> float | None: ...


_BEHIND_HELP = ("Bytes the feed holds that the flow has not read yet (growing: the flow "
                "cannot keep up, or is stuck).")
_LAST_HELP = ("Wall time the flow last read a line of the feed (stale while the feed is "
              "quiet: alert when it is older than the feed ever goes quiet).")
_MODIFIED_HELP = ("Modification time of the feed file (the writer's last write, whether or "
                  "not the flow has read it): stale when the feed writer stopped.")
_ROTATIONS_HELP = "Feed files finished because the feed was rotated (renamed and recreated)."
_TRUNCATIONS_HELP = "Feed files truncated in place and read again from their start."


class FeedCollector(Collector):
    """How a followed feed is read (``delaywatch replay --follow``), read at each scrape from
    the source's partitions: ``delaywatch_feed_bytes_behind``,
    ``delaywatch_feed_last_read_timestamp_seconds``,
    ``delaywatch_feed_modified_timestamp_seconds`` (the feed file's modification time),
    ``delaywatch_feed_rotations_total`` and ``delaywatch_feed_truncations_total``. Nothing is
    exported before the source is built.

    >>> from prometheus_client import CollectorRegistry
    >>> class Part:
    ...     rotations, truncations, last_read = 1, 0, 1700000000.0
    ...     def bytes_behind(self): return 42
    ...     def modified(self): return 1700000100.0
    >>> parts = []
    >>> registry = CollectorRegistry()
    >>> registry.register(FeedCollector(lambda: parts))
    >>> registry.get_sample_value("delaywatch_feed_bytes_behind") is None
    True
    >>> parts.append(Part())
    >>> registry.get_sample_value("delaywatch_feed_bytes_behind")
    42.0
    >>> registry.get_sample_value("delaywatch_feed_rotations_total")
    1.0
    >>> registry.get_sample_value("delaywatch_feed_modified_timestamp_seconds")
    1700000100.0
    """

    def __init__(self, partitions: Callable[[], Sequence[_Feed]]) -> None:
        self.partitions = partitions

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("delaywatch_feed_bytes_behind", _BEHIND_HELP)
        yield GaugeMetricFamily("delaywatch_feed_last_read_timestamp_seconds", _LAST_HELP)
        yield GaugeMetricFamily("delaywatch_feed_modified_timestamp_seconds", _MODIFIED_HELP)
        yield CounterMetricFamily("delaywatch_feed_rotations", _ROTATIONS_HELP)
        yield CounterMetricFamily("delaywatch_feed_truncations", _TRUNCATIONS_HELP)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        parts = list(self.partitions())
        if not parts:
            return
        yield GaugeMetricFamily("delaywatch_feed_bytes_behind", _BEHIND_HELP,
                                value=float(sum(p.bytes_behind() for p in parts)))
        yield GaugeMetricFamily("delaywatch_feed_last_read_timestamp_seconds", _LAST_HELP,
                                value=max(p.last_read for p in parts))
        modified = [m for p in parts if (m := p.modified()) is not None]
        if modified:  # (no series while the feed does not exist)
            yield GaugeMetricFamily("delaywatch_feed_modified_timestamp_seconds",
                                    _MODIFIED_HELP, value=max(modified))
        yield CounterMetricFamily("delaywatch_feed_rotations", _ROTATIONS_HELP,
                                  value=float(sum(p.rotations for p in parts)))
        yield CounterMetricFamily("delaywatch_feed_truncations", _TRUNCATIONS_HELP,
                                  value=float(sum(p.truncations for p in parts)))
