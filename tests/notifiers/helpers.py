"""Helpers for the notifier tests: a fake clock, customers, alerts, draining to the end."""

from __future__ import annotations

import csv
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from notifiers.customers import Customer
from notifiers.email import SmtpSender, drain
from notifiers.message import MessageComposer
from notifiers.outbox import Outbox
from notifiers.smtpd import SmtpServerProcess

SECRET = b"test-unsubscribe-secret"
UNSUBSCRIBE_URL = "https://notify.example.com/unsubscribe"
FROM = "Parcel updates <updates@carrier.example>"
# A Tuesday, 09:00 in Chicago, 16:00 in Madrid: outside quiet hours for both.
T0 = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)


class Clock:
    """A settable clock, passed to drain() as ``now_fn``."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_alert(package_id: str, kind: str = "stall", episode: int = 1, **extra: object) -> dict:
    alert = {
        "alert_key": f"{package_id}:{kind}:{episode}",
        "kind": kind,
        "package_id": package_id,
        "episode": episode,
        "alert_time": "2025-03-04T14:30:00+00:00",
        "facility_id": "NDC-CHI",
        "facility_name": "CHICAGO IL NDC",
        "last_event_code": "A1",
        "last_scan_time": "2025-03-03T09:15:00+00:00",
        "silence_seconds": 105300.0,
        "expected_seconds": 30000.0,
        "promised_by": "2025-03-06T02:00:00+00:00",
        "new_estimate": "2025-03-07T20:00:00+00:00",
        "p_late": 0.81,
        "incident_key": None,
        "evidence": "No scan for 29.3 h at CHICAGO IL NDC after arrival (usual 8.3 h).",
    }
    alert.update(extra)
    return alert


def customer(i: int, *, locale: str = "en", tz: str = "America/Chicago") -> Customer:
    return Customer(
        recipient_ref=f"r-{i:04d}",
        name=f"Customer Number{i}",
        email=f"user{i}@mail.example",
        locale=locale,  # type: ignore[arg-type]
        tz=tz,
    )


def write_customers_csv(path: Path, customers: list[Customer]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["recipient_ref", "name", "email", "locale", "tz"])
        for c in customers:
            writer.writerow([c.recipient_ref, c.name, c.email, c.locale, c.tz])
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sender_for(server_or_port: SmtpServerProcess | int, *, timeout: float = 5.0) -> SmtpSender:
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.port
    return SmtpSender("127.0.0.1", port, timeout=timeout, local_hostname="delaywatch.test")


async def drain_until_settled(
    outbox: Outbox,
    customers: dict[str, Customer],
    sender: SmtpSender,
    *,
    composer: MessageComposer,
    clock: Clock,
    rounds: int = 20,
    step: float = 3600.0,
    **options: object,
) -> list:
    """Drain, advance the clock past any back-off, repeat until nothing is left to do."""
    reports = []
    quiet_hours = options.pop("quiet_hours", None)
    for _ in range(rounds):
        report = await drain(
            outbox,
            customers,
            sender,
            composer=composer,
            now_fn=clock,
            quiet_hours=quiet_hours,
            **options,  # type: ignore[arg-type]
        )
        reports.append(report)
        if outbox.depth() == 0:
            break
        clock.advance(step)
    return reports
