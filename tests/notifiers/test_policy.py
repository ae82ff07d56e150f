"""Quiet hours in the recipient's zone, retry back-off, and their use by drain()."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifiers.email import drain
from notifiers.message import MessageComposer
from notifiers.outbox import Outbox
from notifiers.policy import QuietHours, backoff_delay
from notifiers.smtpd import count_by_alert_key
from tests.notifiers.helpers import Clock, customer, make_alert, sender_for

CHICAGO = ZoneInfo("America/Chicago")
QUIET = QuietHours()


def local(y, mo, d, h, mi=0, zone=CHICAGO) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=zone)


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        (local(2025, 3, 4, 12, 0), local(2025, 3, 4, 12, 0)),  # daytime: now
        (local(2025, 3, 4, 20, 59), local(2025, 3, 4, 20, 59)),  # just before
        (local(2025, 3, 4, 21, 0), local(2025, 3, 5, 8, 0)),  # start is quiet
        (local(2025, 3, 4, 23, 30), local(2025, 3, 5, 8, 0)),  # evening: tomorrow 08:00
        (local(2025, 3, 5, 3, 0), local(2025, 3, 5, 8, 0)),  # small hours: today 08:00
        (local(2025, 3, 5, 8, 0), local(2025, 3, 5, 8, 0)),  # end is not quiet
    ],
)
def test_default_quiet_hours(when: datetime, expected: datetime) -> None:
    got = QUIET.next_allowed(when.astimezone(UTC), "America/Chicago")
    assert got == expected
    assert got.tzinfo is UTC  # returned in the caller's zone
    assert QUIET.contains(when, "America/Chicago") == (got != when)


def test_quiet_hours_are_the_recipients_not_ours() -> None:
    instant = datetime(2025, 3, 4, 23, 0, tzinfo=UTC)  # 17:00 Chicago, 00:00 Madrid
    assert not QUIET.contains(instant, "America/Chicago")
    assert QUIET.next_allowed(instant, "Europe/Madrid") == datetime(
        2025, 3, 5, 8, 0, tzinfo=ZoneInfo("Europe/Madrid")
    )


def test_quiet_hours_across_a_dst_change() -> None:
    # Chicago springs forward on 2025-03-09 at 02:00; 08:00 that morning is CDT (UTC-5).
    evening = local(2025, 3, 8, 22, 0)
    assert QUIET.next_allowed(evening, "America/Chicago") == datetime(2025, 3, 9, 13, 0, tzinfo=UTC)


def test_disabled_same_day_and_naive() -> None:
    night = local(2025, 3, 4, 23, 0)
    assert QuietHours(enabled=False).next_allowed(night, "America/Chicago") == night
    assert QuietHours(time(9), time(9)).next_allowed(night, "America/Chicago") == night
    lunch = QuietHours(time(12), time(13))
    assert lunch.next_allowed(local(2025, 3, 4, 12, 30), CHICAGO) == local(2025, 3, 4, 13)
    assert lunch.next_allowed(night, CHICAGO) == night
    with pytest.raises(ValueError):
        QUIET.next_allowed(datetime(2025, 3, 4, 12), "UTC")  # noqa: DTZ001


@given(
    when=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(["America/Chicago", "Europe/Madrid", "Asia/Kolkata", "Pacific/Apia"]),
)
def test_property_result_is_never_earlier_and_never_quiet(when: datetime, zone: str) -> None:
    got = QUIET.next_allowed(when, zone)
    assert got >= when
    assert got - when <= timedelta(hours=12)
    assert not QUIET.contains(got, zone)


def test_backoff_is_exponential_jittered_capped_and_deterministic() -> None:
    delays = [backoff_delay("PKG-1:stall:1", n, base=30.0, cap=3600.0) for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(3600.0, 30.0 * 2 ** (n - 1))
        assert 0.5 * ceiling <= d < ceiling
    assert max(delays) < 3600.0
    assert delays == [
        backoff_delay("PKG-1:stall:1", n, base=30.0, cap=3600.0) for n in range(1, 12)
    ]
    others = [backoff_delay(f"PKG-{i}:stall:1", 3, base=30.0, cap=3600.0) for i in range(20)]
    assert len(set(others)) == 20  # jitter spreads a burst of retries
    with pytest.raises(ValueError):
        backoff_delay("k", 0, base=30.0, cap=3600.0)


async def test_drain_defers_to_the_end_of_quiet_hours_without_an_attempt(
    tmp_path: Path, composer: MessageComposer, smtp_server, maildir: Path
) -> None:
    server = smtp_server()
    night = Clock(datetime(2025, 3, 5, 4, 0, tzinfo=UTC))  # 22:00 Chicago, 05:00 Madrid
    chicago, madrid = customer(1), customer(2, locale="es", tz="Europe/Madrid")
    customers = {c.recipient_ref: c for c in (chicago, madrid)}
    with Outbox(tmp_path / "o.sqlite") as box:
        box.enqueue(make_alert("PKG-1"), chicago.recipient_ref, now=night())
        box.enqueue(make_alert("PKG-2"), madrid.recipient_ref, now=night())
        report = await drain(box, customers, sender_for(server), composer=composer, now_fn=night)
        assert (report.deferred, report.sent) == (2, 0)
        row = box.get("PKG-1:stall:1")
        assert (row.status, row.attempts) == ("pending", 0)
        assert row.next_attempt_at == datetime(2025, 3, 5, 8, 0, tzinfo=CHICAGO)
        assert box.get("PKG-2:stall:1").next_attempt_at == datetime(
            2025, 3, 5, 8, 0, tzinfo=ZoneInfo("Europe/Madrid")
        )
        assert count_by_alert_key(maildir) == {}

        night.now = datetime(2025, 3, 5, 7, 0, tzinfo=UTC)  # 08:00 Madrid, 01:00 Chicago
        report = await drain(box, customers, sender_for(server), composer=composer, now_fn=night)
        assert (report.sent, report.deferred) == (1, 0)  # Chicago's row is not due yet
        night.now = datetime(2025, 3, 5, 14, 0, tzinfo=UTC)  # 08:00 Chicago
        report = await drain(box, customers, sender_for(server), composer=composer, now_fn=night)
        assert report.sent == 1
        assert count_by_alert_key(maildir) == {"PKG-1:stall:1": 1, "PKG-2:stall:1": 1}
        assert box.get("PKG-1:stall:1").attempts == 1
