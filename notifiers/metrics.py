"""Prometheus metrics of the notifiers, built by a factory so tests can use a fresh registry.

Labels are few and fixed (``reason`` is ``transient`` or ``permanent``); never an address,
a name or a package id.

* ``delaywatch_emails_sent_total`` - messages the SMTP server accepted.
* ``delaywatch_emails_failed_total{reason}`` - messages that ended failed: ``permanent`` (a 5xx
  reply) or ``transient`` (still 4xx / disconnects after the last allowed attempt).
* ``delaywatch_email_attempts_total`` - SMTP transactions tried for a message (each ends as sent,
  retry or failure; a relay that cannot be reached is not an attempt for any message).
* ``delaywatch_emails_unconfirmed_total`` - messages the relay never answered the end of
  (no reply within ``data_timeout``, or the connection dropped in DATA): they may have
  arrived, and go again only after the longest back-off.
* ``delaywatch_outbox_depth`` - rows pending or being sent.
* ``delaywatch_outbox_oldest_pending_age_seconds`` - age of the oldest such row.
* ``delaywatch_outbox_duplicates_total`` - enqueues ignored because the alert key was present.

The two outbox gauges are also what :class:`OutboxCollector` reads from the outbox file at
each scrape, for the flow daemon, which fills the outbox but does not send.

>>> from prometheus_client import CollectorRegistry
>>> registry = CollectorRegistry()
>>> m = make_notifier_metrics(registry)
>>> m.sent.inc()
>>> registry.get_sample_value("delaywatch_emails_sent_total")
1.0
>>> registry.get_sample_value("delaywatch_emails_failed_total", {"reason": "permanent"})
0.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from notifiers.outbox import Outbox

__all__ = [
    "FAILURE_REASONS",
    "NotifierMetrics",
    "OutboxCollector",
    "make_notifier_metrics",
    "write_send_textfile",
]

FAILURE_REASONS = ("transient", "permanent")
_DEPTH_HELP = "Outbox rows pending or being sent."
_AGE_HELP = "Seconds since the oldest unsent outbox row was enqueued."


@dataclass(frozen=True, slots=True)
class NotifierMetrics:
    sent: Counter
    failed: Counter
    attempts: Counter
    unconfirmed: Counter
    depth: Gauge
    oldest_pending_age: Gauge
    duplicates: Counter
    superseded: Counter

    def observe_outbox(self, outbox: Outbox, now: datetime) -> None:
        """Set the two outbox gauges from the outbox itself (the source of truth)."""
        self.depth.set(outbox.depth())
        self.oldest_pending_age.set(outbox.oldest_pending_age(now))


class OutboxCollector(Collector):
    """``delaywatch_outbox_depth`` and ``delaywatch_outbox_oldest_pending_age_seconds`` read
    from the outbox file at each scrape, for a process that fills the outbox but does not
    send (the flow daemon): messages piling up there mean the sender is not running or
    cannot reach the relay. Nothing is exported while the file does not exist.

    Register it instead of :func:`make_notifier_metrics`'s two gauges (same names), e.g.
    ``registry.register(OutboxCollector(run_dir / "outbox.sqlite"))``.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from prometheus_client import CollectorRegistry
    >>> from notifiers.outbox import Outbox
    >>> path = Path(tempfile.mkdtemp()) / "outbox.sqlite"
    >>> registry = CollectorRegistry()
    >>> registry.register(OutboxCollector(path))
    >>> registry.get_sample_value("delaywatch_outbox_depth") is None  # no outbox yet
    True
    >>> with Outbox(path) as outbox:
    ...     outbox.enqueue({"alert_key": "p1:stall:1", "kind": "stall"}, "c1")
    True
    >>> registry.get_sample_value("delaywatch_outbox_depth")
    1.0
    """

    def __init__(self, path: Path | str,
                 now_fn: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.path = Path(path)
        self.now_fn = now_fn

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The two names, known before the outbox exists (a filtered scrape finds them)."""
        yield GaugeMetricFamily("delaywatch_outbox_depth", _DEPTH_HELP)
        yield GaugeMetricFamily("delaywatch_outbox_oldest_pending_age_seconds", _AGE_HELP)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from notifiers.outbox import Outbox

        found = Outbox.read_unfinished(self.path, self.now_fn())
        if found is None:
            return
        yield GaugeMetricFamily("delaywatch_outbox_depth", _DEPTH_HELP, value=float(found[0]))
        yield GaugeMetricFamily("delaywatch_outbox_oldest_pending_age_seconds", _AGE_HELP,
                                value=found[1])


def write_send_textfile(path: Path | str, report: Mapping[str, Any], now: datetime) -> None:
    """One ``delaywatch send`` run's figures in Prometheus text format at ``path``, for
    node_exporter's textfile collector: a run from cron exits, so what it did is exported as
    gauges of the *last run* (counters would restart at every run and undercount), with its
    time, so that a job that stopped running shows as a stale timestamp:

    * ``delaywatch_send_last_run_timestamp_seconds``;
    * ``delaywatch_send_last_run_messages{outcome}``: the drain report's counts (``sent``,
      ``failed_permanent``, ``deferred`` by quiet hours, ``released`` when the relay could
      not be reached, ...);
    * ``delaywatch_send_last_run_relay_error_code``: the relay's reply code when it refused
      or could not be reached (0: none);
    * ``delaywatch_send_last_run_customer_rows_bad``: customer-table rows skipped, when
      ``report`` lists them (``flows.run.send_outbox``'s does);
    * ``delaywatch_outbox_depth`` and ``delaywatch_outbox_oldest_pending_age_seconds`` after
      the run, when ``report`` has them (``flows.run.send_outbox``'s does).

    The file is written whole, then renamed into place.

    >>> import tempfile
    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp()) / "send.prom"
    >>> write_send_textfile(out, {"sent": 3, "deferred": 1, "relay_error_code": None},
    ...                     datetime(2026, 11, 24, tzinfo=UTC))
    >>> print(out.read_text().splitlines()[2])
    delaywatch_send_last_run_timestamp_seconds 1.7954784e+09
    """
    from dataclasses import fields

    from prometheus_client import write_to_textfile

    from notifiers.email import DrainReport

    registry = CollectorRegistry()
    Gauge("delaywatch_send_last_run_timestamp_seconds", "When the last send run ended.",
          registry=registry).set(now.timestamp())
    counts = Gauge("delaywatch_send_last_run_messages",
                   "Outbox rows the last send run handled, by outcome.", ["outcome"],
                   registry=registry)
    for f in fields(DrainReport):
        if f.name not in DrainReport.NOT_COUNTS and f.name in report:
            counts.labels(f.name).set(report[f.name])
    Gauge("delaywatch_send_last_run_relay_error_code",
          "The relay's reply code when it refused or could not be reached in the last send "
          "run (0: none).", registry=registry).set(report.get("relay_error_code") or 0)
    if "customer_rows_bad" in report:
        Gauge("delaywatch_send_last_run_customer_rows_bad",
              "Rows of the customer table the last send run skipped as unusable (their "
              "customers' messages wait until they are mended).",
              registry=registry).set(len(report["customer_rows_bad"]))
    if "outbox_depth" in report:
        Gauge("delaywatch_outbox_depth", _DEPTH_HELP,
              registry=registry).set(report["outbox_depth"])
        Gauge("delaywatch_outbox_oldest_pending_age_seconds", _AGE_HELP,
              registry=registry).set(report["outbox_oldest_pending_age_seconds"])
    write_to_textfile(str(path), registry)


def make_notifier_metrics(registry: CollectorRegistry | None = REGISTRY) -> NotifierMetrics:
    """Create and register the notifier metrics in ``registry`` (default: the global one)."""
    failed = Counter(
        "delaywatch_emails_failed",
        "E-mails that ended failed, by reason (permanent: 5xx; transient: retries exhausted).",
        ["reason"],
        registry=registry,
    )
    for reason in FAILURE_REASONS:  # export both series from the start, at zero
        failed.labels(reason=reason)
    return NotifierMetrics(
        sent=Counter(
            "delaywatch_emails_sent",
            "E-mails accepted by the SMTP server.",
            registry=registry,
        ),
        failed=failed,
        attempts=Counter(
            "delaywatch_email_attempts",
            "SMTP delivery attempts for a message.",
            registry=registry,
        ),
        unconfirmed=Counter(
            "delaywatch_emails_unconfirmed",
            "E-mails the relay never answered the end of (they may have arrived).",
            registry=registry,
        ),
        depth=Gauge(
            "delaywatch_outbox_depth",
            _DEPTH_HELP,
            registry=registry,
        ),
        oldest_pending_age=Gauge(
            "delaywatch_outbox_oldest_pending_age_seconds",
            _AGE_HELP,
            registry=registry,
        ),
        duplicates=Counter(
            "delaywatch_outbox_duplicates",
            "Enqueues ignored because the alert key was already in the outbox.",
            registry=registry,
        ),
        superseded=Counter(
            "delaywatch_emails_superseded",
            "Delay e-mails not sent because their all-clear was queued before they could go "
            "(quiet hours, a relay down): the all-clear goes alone.",
            registry=registry,
        ),
    )
