"""The SMTP response matrix, run once against a real server process, and the PII scan of it.

One scripted address per response: 421/450/451/452 and dropped connections (at RCPT or DATA)
fail twice and then succeed; 550-554 always fail. The server echoes the address in its replies
(as Postfix does), so the PII scan below also proves that replies are redacted.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from dataclasses import dataclass, field

import aiosmtplib
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from notifiers.customers import Customer
from notifiers.email import DrainReport, SmtpSender
from notifiers.errors import DeliveryError
from notifiers.message import MessageComposer
from notifiers.metrics import make_notifier_metrics
from notifiers.outbox import Outbox, OutboxRow
from notifiers.smtpd import SmtpServerProcess, count_by_alert_key
from tests.notifiers.helpers import (
    FROM,
    SECRET,
    T0,
    UNSUBSCRIBE_URL,
    Clock,
    drain_until_settled,
    make_alert,
)

TRANSIENT = ["421/rcpt", "450/rcpt", "451/rcpt", "452/rcpt", "451/data", "452/data",
             "drop/rcpt", "drop/data"]  # fmt: skip
PERMANENT = ["550/rcpt", "551/rcpt", "552/rcpt", "553/rcpt", "554/rcpt", "554/data"]
# of those, the mailbox's own refusals: the customer is suppressed. The others (mailbox full,
# a relay that refuses every recipient with 554, a refused body) fail the message only: a
# relay-wide refusal must not suppress every customer it meets
BOUNCE = ["550/rcpt", "551/rcpt", "553/rcpt"]
REFUSED = [c for c in PERMANENT if c not in BOUNCE]
HEALTHY = ["ok-1", "ok-2"]


def tag(case: str) -> str:
    return case.replace("/", "-")


def person(case: str) -> Customer:
    return Customer(
        recipient_ref=f"r-{tag(case)}",
        name=f"Zoë Privatename {tag(case)}",
        email=f"zoe.{tag(case)}@private-mail.example",
        locale="es" if case.endswith("data") else "en",
        tz="America/Chicago",
    )


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class MatrixRun:
    rows: dict[str, OutboxRow]
    counts: dict[str, int]
    reports: list[DrainReport]
    registry: CollectorRegistry
    suppressed: dict[str, tuple[str, int | None] | None]
    later_status: str
    log_text: str
    errors: list[DeliveryError] = field(default_factory=list)
    error_texts: list[str] = field(default_factory=list)
    outbox_bytes: bytes = b""


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> MatrixRun:
    tmp = tmp_path_factory.mktemp("matrix")
    people = {case: person(case) for case in TRANSIENT + PERMANENT + HEALTHY}
    rules = [f"{people[c].email}={c.split('/')[0]}x2/{c.split('/')[1]}" for c in TRANSIENT]
    rules += [f"{people[c].email}={c}" for c in PERMANENT]
    customers = {p.recipient_ref: p for p in people.values()}
    registry = CollectorRegistry()
    metrics = make_notifier_metrics(registry)
    composer = MessageComposer(
        from_address=FROM, unsubscribe_url=UNSUBSCRIBE_URL, unsubscribe_secret=SECRET
    )
    handler = _Collect()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    server = SmtpServerProcess(tmp / "maildir", rules=rules, stderr=tmp / "smtpd.log").start()
    try:
        with Outbox(tmp / "outbox.sqlite", metrics=metrics) as box:
            items = [(make_alert(f"PKG-{tag(c)}"), p.recipient_ref) for c, p in people.items()]
            # A second alert to each permanently failing address, queued behind the first.
            items += [
                (make_alert(f"PKG-{tag(c)}", kind="incident_delay"), people[c].recipient_ref)
                for c in PERMANENT
            ]
            box.enqueue_many(items, now=T0)
            box.enqueue_many(items[:3], now=T0)  # a replay, as after a flow restart
            clock = Clock()
            sender = SmtpSender("127.0.0.1", server.port, timeout=5, local_hostname="t")
            reports = asyncio.run(
                drain_until_settled(
                    box, customers, sender, composer=composer, clock=clock, metrics=metrics
                )
            )
            # A later alert for a bounced address is never attempted.
            box.enqueue(make_alert("PKG-later"), people["550/rcpt"].recipient_ref, now=clock())
            later_status = box.get("PKG-later:stall:1").status
            # Direct sends, to look at the errors themselves.
            errors: list[DeliveryError] = []

            async def direct() -> None:
                async with sender:
                    for case in ("550/rcpt", "554/data"):
                        msg = composer.build(make_alert("PKG-direct"), people[case], when=T0)
                        try:
                            await sender.send(msg, timeout=5)
                        except DeliveryError as exc:
                            errors.append(exc)

            asyncio.run(direct())
            rows = {r.alert_key: r for r in box.rows()}
            suppressed = {c: box.suppression(p.recipient_ref) for c, p in people.items()}
    finally:
        server.stop()
        root.removeHandler(handler)
        root.setLevel(old_level)
    fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")
    log_text = "\n".join(
        fmt.format(r) + (fmt.formatException(r.exc_info) if r.exc_info else "")
        for r in handler.records
    )
    error_texts = [s for e in errors for s in (str(e), repr(e), *traceback.format_exception(e))]
    outbox_bytes = b"".join(p.read_bytes() for p in tmp.glob("outbox.sqlite*"))
    return MatrixRun(
        rows=rows,
        counts=dict(count_by_alert_key(tmp / "maildir")),
        reports=reports,
        registry=registry,
        suppressed=suppressed,
        later_status=later_status,
        log_text=log_text,
        errors=errors,
        error_texts=error_texts,
        outbox_bytes=outbox_bytes,
    )


def test_matrix_attempts_per_message(matrix: MatrixRun) -> None:
    table = {
        case: (r.status, r.attempts, r.last_error_code)
        for case in TRANSIENT + PERMANENT + HEALTHY
        for r in [matrix.rows[f"PKG-{tag(case)}:stall:1"]]
    }
    expected = {c: ("sent", 3, None) for c in TRANSIENT}
    expected |= {c: ("failed_permanent", 1, int(c[:3])) for c in PERMANENT}
    expected |= {c: ("sent", 1, None) for c in HEALTHY}
    assert table == expected


def test_matrix_transient_responses_are_retried_and_delivered_exactly_once(
    matrix: MatrixRun,
) -> None:
    delivered = {f"PKG-{tag(c)}:stall:1": 1 for c in TRANSIENT + HEALTHY}
    assert matrix.counts == delivered  # nothing lost, nothing twice, nothing bounced delivered
    assert [r.sent for r in matrix.reports] == [2, 0, 8]
    assert [r.retried for r in matrix.reports] == [8, 8, 0]
    assert not any(matrix.suppressed[c] for c in TRANSIENT + HEALTHY)


def test_matrix_permanent_responses_fail_once_and_bounces_suppress(matrix: MatrixRun) -> None:
    for case in BOUNCE:
        assert matrix.suppressed[case] == ("bounce", int(case[:3]))
        follow_up = matrix.rows[f"PKG-{tag(case)}:incident_delay:1"]
        assert (follow_up.status, follow_up.attempts) == ("suppressed", 0)
    for case in REFUSED:  # not suppressed: the next message is tried (and fails here too)
        assert matrix.suppressed[case] is None
        follow_up = matrix.rows[f"PKG-{tag(case)}:incident_delay:1"]
        assert (follow_up.status, follow_up.attempts, follow_up.last_error_code) == (
            "failed_permanent", 1, int(case[:3]))
    assert sum(r.failed_permanent for r in matrix.reports) == len(PERMANENT) + len(REFUSED)
    assert matrix.later_status == "suppressed"
    assert [e.code for e in matrix.errors] == [550, 554]


def test_matrix_metrics(matrix: MatrixRun) -> None:
    get = matrix.registry.get_sample_value
    assert get("delaywatch_emails_sent_total") == len(TRANSIENT) + len(HEALTHY)
    assert get("delaywatch_emails_failed_total", {"reason": "permanent"}) == len(PERMANENT) + len(
        REFUSED)
    assert get("delaywatch_emails_failed_total", {"reason": "transient"}) == 0
    assert get("delaywatch_email_attempts_total") == 3 * len(TRANSIENT) + len(PERMANENT) + len(
        REFUSED) + 2
    assert get("delaywatch_outbox_duplicates_total") == 3
    assert get("delaywatch_outbox_depth") == 0
    assert get("delaywatch_outbox_oldest_pending_age_seconds") == 0
    label_names = {
        name
        for family in matrix.registry.collect()
        for sample in family.samples
        for name in sample.labels
    }
    assert label_names <= {"reason"}


def test_no_personal_data_in_logs_errors_metrics_or_outbox(matrix: MatrixRun) -> None:
    everything_people = [person(c) for c in TRANSIENT + PERMANENT + HEALTHY]
    secrets = [p.email for p in everything_people] + [p.name for p in everything_people]
    secrets += ["private-mail.example", "Privatename"]
    assert matrix.log_text and matrix.error_texts  # something was captured
    haystacks = {
        "logs": matrix.log_text,
        "errors": "\n".join(matrix.error_texts),
        "reports": "\n".join(repr(r) for r in matrix.reports),
        "metrics": generate_latest(matrix.registry).decode(),
        "customer reprs": "\n".join(repr(p) for p in everything_people),
    }
    for where, text in haystacks.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} found in {where}"
    for secret in secrets:
        assert secret.encode() not in matrix.outbox_bytes, f"{secret!r} found in the outbox"
    # The server did echo the address; the error kept only a redacted reply.
    assert "[redacted]" in matrix.errors[0].server_message


def test_pii_scan_is_not_vacuous() -> None:
    """aiosmtplib's own errors do carry the address; ours must not."""
    p = person("550/rcpt")
    raw = aiosmtplib.SMTPRecipientRefused(550, f"5.1.1 <{p.email}>: unknown", p.email)
    assert p.email in str(raw)
    assert p.email not in str(DeliveryError(550, step="rcpt", server_message=raw.message))
