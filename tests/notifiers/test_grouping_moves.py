"""Grouped incident messages after packages moved, were delivered, returned or held again:
each package's own dates, the places it is at, how its journey ended. Found by a review of
the fixes of 2026-11-25 (each failed on them)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notifiers.customers import Customer
from notifiers.grouping import MessageGrouper
from notifiers.message import MessageComposer

T = 1_790_834_400  # 2026-10-01T04:00Z


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _composer() -> MessageComposer:
    return MessageComposer(from_address="Parcel updates <updates@carrier.example>",
                           unsubscribe_url="https://notify.example.com/unsubscribe",
                           unsubscribe_secret=b"review-secret")


PROMISED = "2026-10-02T23:00:00+00:00"
WEATHER = {"incident_key": "P1:weather:20261001T0300Z", "incident_kind": "weather"}
# a back-on-track record from the scan that ended the silence, at a post office
AT_THE_OFFICE = {"facility_id": "O2", "facility_name": "O2 PO",
                 "last_scan_time": _iso(T - 20 * 3600), "silence_seconds": 30 * 3600,
                 "promised_by": PROMISED}


def _folded(pid: str, at: int = T, episode: int = 1, **extra: object) -> dict:
    """A package alert folded into an incident (a slowdown at P1 unless ``extra`` says)."""
    return {"alert_key": f"{pid}:incident_delay:{episode}", "kind": "incident_delay",
            "package_id": pid, "episode": episode, "alert_time": _iso(at),
            "recipient_ref": "C7", "incident_key": "P1:facility_slowdown:x",
            "facility_id": "P1", "facility_name": "DENVER CO PLANT",
            "incident_kind": "facility_slowdown", "last_scan_time": _iso(at - 20 * 3600),
            "promised_by": PROMISED, "new_estimate": None} | extra


def _back(pid: str, at: int, **extra: object) -> dict:
    """The package moved again at ``at``."""
    return {"alert_key": f"{pid}:back_on_track:1", "kind": "back_on_track", "package_id": pid,
            "episode": 1, "alert_time": _iso(at), "recipient_ref": "C7",
            "new_estimate": None, "ended": None} | extra


def _customer(locale: str = "en") -> Customer:
    return Customer("C7", "Ana Example", "ana@mail.example", locale, "America/Denver")


def test_the_all_clear_promise_and_estimate_are_one_packages() -> None:
    g = MessageGrouper(hold_seconds=3600)
    g.add(_folded("A"), "fold")
    g.add(_folded("B", promised_by="2026-10-06T23:00:00+00:00"), "fold")
    g.advance(T + 3600)
    g.add(_back("A", T + 7200, new_estimate="2026-10-05T23:00:00+00:00"))  # 3 days late
    # 2 hours late, the latest estimate
    g.add(_back("B", T + 7200, new_estimate="2026-10-07T01:00:00+00:00"))
    (clear,) = g.advance(T + 4 * 3600, resolved_at=lambda key: T + 3 * 3600)
    assert clear["kind"] == "back_on_track"
    pair = [clear["promised_by"], clear["new_estimate"]]
    assert pair in [d[1:] for d in clear["dates"]], (pair, clear["dates"])


def _all_clear1(ended: str) -> list[dict]:
    g = MessageGrouper(hold_seconds=3600)
    assert g.add(_folded("A", **WEATHER, new_estimate="2026-10-03T23:00:00+00:00"), "fold") == []
    (delay,) = g.advance(T + 3600)
    assert delay["kind"] == "incident_delay"
    assert g.add(_back("A", T + 7200, **AT_THE_OFFICE, ended=ended)) == []
    return g.advance(T + 3 * 3600, resolved_at=lambda key: T + 2 * 3600)


def test_a_returned_package_of_an_incident_group_gets_no_good_news() -> None:
    # stall path: grouper.add(back_on_track ended=returned) -> [] ; group path: "moving again"
    assert _all_clear1("returned") == []


@pytest.mark.parametrize("locale", ["en", "es"])
def test_a_delivered_package_of_an_incident_group_is_not_moving_again(locale: str) -> None:
    (message,) = _all_clear1("delivered")
    composer = _composer()
    cust = _customer(locale)
    msg = composer.build(message, cust, when=datetime(2026, 10, 1, 8, tzinfo=UTC))
    subject = str(msg["Subject"])
    assert "moving again" not in subject and "moverse" not in subject, subject

def _held_at(facility: str, at: int, episode: int, estimate: str) -> dict:
    """Package A held by a region's weather at ``facility``."""
    return _folded("A", at, episode, incident_key="R1:weather:20261001T0300Z",
                   incident_kind="weather", facility_id=facility,
                   facility_name=f"{facility} PLANT", last_scan_time=_iso(at - 10 * 3600),
                   new_estimate=estimate)


def _run2() -> dict:
    g = MessageGrouper(hold_seconds=2 * 3600)
    g.add(_held_at("P1", T, 1, "2026-10-03T23:00:00+00:00"), "fold")
    # moved on from P1 within the hold: estimate from the new scan
    g.add(_back("A", T + 1800, new_estimate="2026-10-03T12:00:00+00:00"))
    # held again by the same weather at the next plant of the region
    g.add(_held_at("P2", T + 3600, 2, "2026-10-04T20:00:00+00:00"), "fold")
    (message,) = g.advance(T + 2 * 3600)
    assert message["kind"] == "incident_delay" and message["packages"] == ["A"]
    assert message["moving"] is False  # it is held (waiting) again
    return message


def test_a_package_held_again_shows_its_current_estimate_not_its_earlier_moves() -> None:
    assert _run2()["new_estimate"] == "2026-10-04T20:00:00+00:00"


def test_one_package_is_at_one_place() -> None:
    assert _run2()["place_count"] == 1


LAST_SCAN = {"last_scan_time": "2026-09-30T20:00:00+00:00"}


def test_the_days_late_count_every_package_not_only_the_listed_ones() -> None:
    g = MessageGrouper(hold_seconds=3600)
    for i in range(20):  # on time
        g.add(_folded(f"A{i:02d}", **LAST_SCAN, new_estimate="2026-10-02T20:00:00+00:00"), "fold")
    # three days late, sorts last
    g.add(_folded("Z99", **LAST_SCAN, new_estimate="2026-10-05T20:00:00+00:00"), "fold")
    (message,) = g.advance(T + 3600)
    assert message["package_count"] == 21
    assert message["new_estimate"] == "2026-10-05T20:00:00+00:00"  # the message's: Z99's
    composer = _composer()
    cust = _customer()
    ctx = composer.context(message, cust, when=datetime(2026, 10, 1, 6, tzinfo=UTC))
    assert ctx["days_late"] == 3, ctx["days_late"]


def test_an_all_clear_leaves_out_the_returned_and_says_delivered_when_all_were() -> None:
    g = MessageGrouper(hold_seconds=3600)
    for pid in ("A", "B", "C"):
        g.add(_folded(pid, **WEATHER, new_estimate="2026-10-03T23:00:00+00:00"), "fold")
    g.advance(T + 3600)
    g.add(_back("A", T + 7200, **AT_THE_OFFICE, ended="delivered"))
    g.add(_back("B", T + 7200, **AT_THE_OFFICE, ended="returned"))
    g.add(_back("C", T + 7200, **AT_THE_OFFICE, ended="delivered"))
    (clear,) = g.advance(T + 3 * 3600, resolved_at=lambda key: T + 2 * 3600)
    assert clear["packages"] == ["A", "C"] and clear["ended"] == "delivered"
    cust = _customer()
    msg = _composer().build(clear, cust, when=datetime(2026, 10, 1, 8, tzinfo=UTC))
    assert str(msg["Subject"]) == "2 of your packages have been delivered"
    text = msg.get_body(("plain",)).get_content()
    assert "They have all been delivered." in text and "moving again" not in text
