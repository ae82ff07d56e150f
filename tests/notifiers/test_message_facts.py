"""What a customer reads must agree with itself and with the world: the days late with the
dates shown, each package's own dates in a grouped message, no internal facility id, no
"moving again" for a package already delivered, no estimate that has already passed.

Found by a review from the customer's side (2026-11-25); each test fails on the code before.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from detectors import ScanEvent, StallDetector
from detectors.tracker import PackageTracker
from notifiers.customers import Customer
from notifiers.grouping import MessageGrouper
from notifiers.message import MessageComposer

NY = "America/New_York"


@pytest.fixture
def composer() -> MessageComposer:
    return MessageComposer(from_address="Parcel updates <updates@carrier.example>",
                           unsubscribe_url="https://notify.example.com/unsubscribe",
                           unsubscribe_secret=b"review-secret")


def customer(locale: str = "en", tz: str = NY) -> Customer:
    return Customer("r-1", "Ana Example", "ana@mail.example", locale, tz)  # type: ignore[arg-type]


def read(composer: MessageComposer, alert: dict, cust: Customer,
         when: datetime = datetime(2026, 11, 6, 15, tzinfo=UTC)) -> tuple[str, str, str]:
    msg = composer.build(alert, cust, when=when)
    return (str(msg["Subject"]), msg.get_body(("plain",)).get_content(),
            msg.get_body(("html",)).get_content())


def incident_alert(**extra: object) -> dict:
    return {
        "alert_key": "P0001:facility_slowdown:20261105T1230Z:abc:incident_delay",
        "kind": "incident_delay", "package_id": "9400000000000000002494", "episode": 1,
        "alert_time": "2026-11-06T15:00:00+00:00", "facility_id": "P0001",
        "facility_name": "SPRINGFIELD NY PROCESSING AND DISTRIBUTION CENTER",
        "incident_key": "P0001:facility_slowdown:20261105T1230Z",
        "incident_kind": "facility_slowdown", "last_scan_time": "2026-11-06T01:08:00+00:00",
        # Friday 8:00 PM EST -> Saturday 9:00 PM EST: 25 hours, one calendar day
        "promised_by": "2026-11-07T01:00:00+00:00", "new_estimate": "2026-11-08T02:00:00+00:00",
    } | extra


@pytest.mark.parametrize(("locale", "said", "friday", "saturday"), [
    ("en", "1 day later", "Friday, November 6", "Saturday, November 7"),
    ("es", "1 día más tarde", "viernes 6 de noviembre", "sábado 7 de noviembre"),
])
def test_the_days_late_are_the_calendar_days_between_the_dates_shown(
        composer: MessageComposer, locale: str, said: str, friday: str, saturday: str) -> None:
    _, text, html = read(composer, incident_alert(), customer(locale))
    assert friday in text and saturday in text
    assert said in text and said in html  # (it said "2 days": 25 hours rounded up)


def test_later_the_same_day_says_no_days_late(composer: MessageComposer) -> None:
    _, text, _ = read(composer, incident_alert(new_estimate="2026-11-07T04:00:00+00:00"),
                      customer())  # 8 PM -> 11 PM the same Friday in New York
    assert "later than promised" not in text


def _grouped(kind_of_incident: str = "weather") -> dict:
    """Two packages of one customer held by one incident, each one day late, at two plants."""
    grouper = MessageGrouper(hold_seconds=3600)

    def folded(pid: str, fac: str, name: str, promised: str, estimate: str, at: str) -> dict:
        return {"alert_key": f"{pid}:incident_delay:1", "kind": "incident_delay",
                "package_id": pid, "episode": 1, "alert_time": at, "recipient_ref": "r-1",
                "incident_key": f"N00:{kind_of_incident}:20261105T0630Z",
                "incident_kind": kind_of_incident, "facility_id": fac, "facility_name": name,
                "last_scan_time": "2026-11-05T20:00:00+00:00", "promised_by": promised,
                "new_estimate": estimate, "evidence": "ops text"}

    # A: Thursday Nov 5 8 PM EST -> Friday Nov 6; B: Monday Nov 9 -> Tuesday Nov 10
    grouper.add(folded("PKGA", "P0000", "NEW YORK NY PLANT", "2026-11-06T01:00:00+00:00",
                       "2026-11-07T01:00:00+00:00", "2026-11-06T05:00:00+00:00"), "fold")
    grouper.add(folded("PKGB", "P0001", "SPRINGFIELD NY PLANT", "2026-11-10T01:00:00+00:00",
                       "2026-11-11T01:00:00+00:00", "2026-11-06T05:10:00+00:00"), "fold")
    (message,) = grouper.advance(int(datetime(2026, 11, 6, 7, tzinfo=UTC).timestamp()))
    return message


def test_a_grouped_message_gives_each_package_its_own_dates(composer: MessageComposer) -> None:
    """It paired A's promise (Thursday) with B's estimate (Tuesday): "5 days later"."""
    _, text, html = read(composer, _grouped(), customer())
    late = re.search(r"(\d+) days? later than promised", text)
    assert late is not None and late.group(1) == "1", text
    assert "PKGA: promised by Thursday, November 5, 8:00 PM EST; new estimate Friday, " \
           "November 6, 8:00 PM EST" in text
    assert "PKGB: promised by Monday, November 9" in text and "Tuesday, November 10" in text
    assert "Promised delivery:" not in text and "New estimate:" not in text
    assert "PKGA: promised by Thursday" in html


def test_a_grouped_message_does_not_put_every_package_at_the_first_ones_plant(
        composer: MessageComposer) -> None:
    subject, text, _ = read(composer, _grouped(), customer())
    assert "NEW YORK" not in subject and " at NEW YORK NY PLANT." not in text, (subject, text)
    assert "held up by a problem." in text
    assert "severe weather" in text  # the cause still names the incident's place


def _tracker(names: dict[str, str] | None = None) -> PackageTracker:
    return PackageTracker(StallDetector(prior_hours={"A1": (6, 24)}), allowed_lateness=0,
                          bucket_seconds=600, names=names)


T0 = 1_790_000_000


def _stall_then(tracker: PackageTracker, code: str, facility: str) -> tuple[dict, dict]:
    tracker.process(ScanEvent("P1", "GX", "O1", T0, T0, service="ground",
                              promised_by_ts=T0 + 30 * 3600, recipient_ref="r-1"))
    tracker.process(ScanEvent("P1", "A1", "P0001", T0 + 3600, T0 + 3600))
    tracker.process(ScanEvent("P2", "GX", "O1", T0 + 20 * 3600, T0 + 20 * 3600))
    (stall,) = tracker.process(ScanEvent("P2", "03", "O1", T0 + 26 * 3600, T0 + 26 * 3600))
    (after,) = tracker.process(ScanEvent("P1", code, facility, T0 + 27 * 3600, T0 + 27 * 3600))
    return stall, after


def test_a_facility_is_never_named_by_its_internal_id(composer: MessageComposer) -> None:
    """Without a facility list (optional) the e-mail said "last scanned ... at P0001"."""
    stall, _ = _stall_then(_tracker(names=None), "T1", "P0001")
    assert stall["kind"] == "stall" and stall["facility_name"] == "P0001"  # (operators: id)
    subject, text, html = read(composer, stall, customer())
    assert "P0001" not in subject + text + html
    named, _ = _stall_then(_tracker({"P0001": "DENVER CO PLANT"}), "T1", "P0001")
    assert "at DENVER CO PLANT" in read(composer, named, customer())[1]


@pytest.mark.parametrize("locale", ["en", "es"])
def test_a_package_delivered_after_its_stall_is_not_moving_again(
        composer: MessageComposer, locale: str) -> None:
    _, after = _stall_then(_tracker({"P0001": "DENVER CO PLANT"}), "01", "O2")
    assert after["kind"] == "back_on_track" and after["ended"] == "delivered"
    subject, text, html = read(composer, after, customer(locale))
    assert "moving again" not in subject + text and "moverse" not in subject + text
    assert ("has been delivered" if locale == "en" else "ha sido entregado") in subject
    assert ("It was delivered on" if locale == "en" else "Se entregó el") in text
    _, moved = _stall_then(_tracker({"P0001": "DENVER CO PLANT"}), "T1", "P0001")
    assert moved["ended"] is None and "moving again" in read(composer, moved, customer())[0]


def test_a_package_returned_after_its_stall_gets_no_good_news() -> None:
    _, after = _stall_then(_tracker(), "09", "O2")  # returned to sender
    assert after["kind"] == "back_on_track" and after["ended"] == "returned"
    grouper = MessageGrouper(hold_seconds=3600)
    assert grouper.add(after | {"recipient_ref": "r-1"}) == []
    assert grouper.add(after | {"ended": "delivered", "recipient_ref": "r-1"}) != []


def test_an_estimate_that_has_passed_is_not_the_new_estimate(composer: MessageComposer) -> None:
    """Sent late (relay down, quiet hours, a customer row waited for): the estimate was
    Saturday 9 PM; on Monday it is not known any more."""
    alert = incident_alert()
    _, text, html = read(composer, alert, customer(), when=datetime(2026, 11, 9, 15, tzinfo=UTC))
    assert "Saturday, November 7" not in text + html
    assert "New estimate: not known yet" in text and "later than promised" not in text
    _, before, _ = read(composer, alert, customer(), when=datetime(2026, 11, 7, 15, tzinfo=UTC))
    assert "New estimate: Saturday, November 7, 9:00 PM EST" in before
