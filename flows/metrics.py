"""Prometheus metrics of the flow, built by a factory so tests use a fresh registry.

Labels are few and bounded (``outcome``, ``reason``, ``kind``); never a package id or an
address. The notifier's metrics (outbox depth, e-mails) live in ``notifiers.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["FlowMetrics", "make_flow_metrics"]

OUTCOMES = ("accepted", "duplicate", "out_of_order", "no_header", "invalid")
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
    alerts: Counter
    stage_keys: Gauge
    incidents_open: Gauge
    incidents: Counter
    alerts_suppressed: Counter
    messages: Counter


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
        alerts=Counter("delaywatch_alerts", "Alerts raised by kind.", ["kind"], **kw),
        stage_keys=Gauge("delaywatch_detector_stage_keys", "Stage keys the detectors hold.",
                         **kw),
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
    )
    for outcome in OUTCOMES:
        m.scan_events.labels(outcome)
    for kind in ("stall", "back_on_track", "incident_delay"):
        m.alerts.labels(kind)
        m.messages.labels(kind)
    for kind in INCIDENT_KINDS:
        m.incidents_open.labels(kind)
        for status in ("opened", "resolved"):
            m.incidents.labels(kind, status)
    m.alerts_suppressed.labels("feed_outage")
    return m
