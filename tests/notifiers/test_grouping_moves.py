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


def _folded0(pid: str, promised: str) -> dict:
    return {"alert_key": f"{pid}:incident_delay:1", "kind": "incident_delay",
            "package_id": pid, "episode": 1, "alert_time": _iso(T), "recipient_ref": "C7",
            "incident_key": "P1:facility_slowdown:x", "facility_id": "P1",
            "facility_name": "DENVER CO PLANT", "incident_kind": "facility_slowdown",
            "last_scan_time": _iso(T - 20 * 3600), "promised_by": promised,
            "new_estimate": None}


def _moved0(pid: str, at: int, estimate: str) -> dict:
    return {"alert_key": f"{pid}:back_on_track:1", "kind": "back_on_track", "package_id": pid,
            "episode": 1, "alert_time": _iso(at), "recipient_ref": "C7",
            "new_estimate": estimate, "ended": None}


def test_the_all_clear_promise_and_estimate_are_one_packages() -> None:
    g = MessageGrouper(hold_seconds=3600)
    g.add(_folded0("A", "2026-10-02T23:00:00+00:00"), "fold")
    g.add(_folded0("B", "2026-10-06T23:00:00+00:00"), "fold")
    g.advance(T + 3600)
    g.add(_moved0("A", T + 7200, "2026-10-05T23:00:00+00:00"))  # 3 days late
    g.add(_moved0("B", T + 7200, "2026-10-07T01:00:00+00:00"))  # 2 hours late, latest estimate
    (clear,) = g.advance(T + 4 * 3600, resolved_at=lambda key: T + 3 * 3600)
    assert clear["kind"] == "back_on_track"
    pair = [clear["promised_by"], clear["new_estimate"]]
    assert pair in [d[1:] for d in clear["dates"]], (pair, clear["dates"])


def _folded1(pid: str, at: int) -> dict:
    return {"alert_key": f"{pid}:incident_delay:1", "kind": "incident_delay",
            "package_id": pid, "episode": 1, "alert_time": _iso(at), "recipient_ref": "C7",
            "incident_key": "P1:weather:20261001T0300Z", "facility_id": "P1",
            "facility_name": "DENVER CO PLANT", "incident_kind": "weather",
            "last_scan_time": _iso(at - 20 * 3600),
            "promised_by": "2026-10-02T23:00:00+00:00",
            "new_estimate": "2026-10-03T23:00:00+00:00", "evidence": "Snow at P1."}


def _back1(pid: str, at: int, ended: str | None) -> dict:
    return {"alert_key": f"{pid}:back_on_track:1", "kind": "back_on_track", "package_id": pid,
            "episode": 1, "alert_time": _iso(at), "recipient_ref": "C7", "facility_id": "O2",
            "facility_name": "O2 PO", "last_scan_time": _iso(T - 20 * 3600),
            "silence_seconds": 30 * 3600, "promised_by": "2026-10-02T23:00:00+00:00",
            "new_estimate": None, "ended": ended}


def _all_clear1(ended: str) -> list[dict]:
    g = MessageGrouper(hold_seconds=3600)
    assert g.add(_folded1("A", T), "fold") == []
    (delay,) = g.advance(T + 3600)
    assert delay["kind"] == "incident_delay"
    assert g.add(_back1("A", T + 7200, ended)) == []
    return g.advance(T + 3 * 3600, resolved_at=lambda key: T + 2 * 3600)


def test_a_returned_package_of_an_incident_group_gets_no_good_news() -> None:
    # stall path: grouper.add(back_on_track ended=returned) -> [] ; group path: "moving again"
    assert _all_clear1("returned") == []


@pytest.mark.parametrize("locale", ["en", "es"])
def test_a_delivered_package_of_an_incident_group_is_not_moving_again(locale: str) -> None:
    (message,) = _all_clear1("delivered")
    composer = _composer()
    cust = Customer("C7", "Ana Example", "ana@mail.example", locale, "America/Denver")
    msg = composer.build(message, cust, when=datetime(2026, 10, 1, 8, tzinfo=UTC))
    subject = str(msg["Subject"])
    assert "moving again" not in subject and "moverse" not in subject, subject

INCIDENT = "R1:weather:20261001T0300Z"


def _folded2(at: int, facility: str, episode: int, estimate: str) -> dict:
    return {"alert_key": f"A:incident_delay:{episode}", "kind": "incident_delay",
            "package_id": "A", "episode": episode, "alert_time": _iso(at),
            "recipient_ref": "C7", "incident_key": INCIDENT, "facility_id": facility,
            "facility_name": f"{facility} PLANT", "incident_kind": "weather",
            "last_scan_time": _iso(at - 10 * 3600),
            "promised_by": "2026-10-02T23:00:00+00:00", "new_estimate": estimate}


def _run2() -> dict:
    g = MessageGrouper(hold_seconds=2 * 3600)
    g.add(_folded2(T, "P1", 1, "2026-10-03T23:00:00+00:00"), "fold")
    # moved on from P1 within the hold: estimate from the new scan
    g.add({"alert_key": "A:back_on_track:1", "kind": "back_on_track", "package_id": "A",
           "episode": 1, "alert_time": _iso(T + 1800), "recipient_ref": "C7",
           "new_estimate": "2026-10-03T12:00:00+00:00", "ended": None})
    # held again by the same weather at the next plant of the region
    g.add(_folded2(T + 3600, "P2", 2, "2026-10-04T20:00:00+00:00"), "fold")
    (message,) = g.advance(T + 2 * 3600)
    assert message["kind"] == "incident_delay" and message["packages"] == ["A"]
    assert message["moving"] is False  # it is held (waiting) again
    return message


def test_a_package_held_again_shows_its_current_estimate_not_its_earlier_moves() -> None:
    assert _run2()["new_estimate"] == "2026-10-04T20:00:00+00:00"


def test_one_package_is_at_one_place() -> None:
    assert _run2()["place_count"] == 1


def _folded3(pid: str, estimate: str) -> dict:
    return {"alert_key": f"{pid}:incident_delay:1", "kind": "incident_delay",
            "package_id": pid, "episode": 1, "alert_time": datetime.fromtimestamp(T, UTC)
            .isoformat(), "recipient_ref": "C7", "incident_key": "P1:facility_slowdown:x",
            "facility_id": "P1", "facility_name": "DENVER CO PLANT",
            "incident_kind": "facility_slowdown", "last_scan_time": "2026-09-30T20:00:00+00:00",
            "promised_by": "2026-10-02T23:00:00+00:00", "new_estimate": estimate}


def test_the_days_late_count_every_package_not_only_the_listed_ones() -> None:
    g = MessageGrouper(hold_seconds=3600)
    for i in range(20):  # on time
        g.add(_folded3(f"A{i:02d}", "2026-10-02T20:00:00+00:00"), "fold")
    g.add(_folded3("Z99", "2026-10-05T20:00:00+00:00"), "fold")  # three days late, sorts last
    (message,) = g.advance(T + 3600)
    assert message["package_count"] == 21
    assert message["new_estimate"] == "2026-10-05T20:00:00+00:00"  # the message's: Z99's
    composer = _composer()
    cust = Customer("C7", "Ana Example", "ana@mail.example", "en", "America/Denver")
    ctx = composer.context(message, cust, when=datetime(2026, 10, 1, 6, tzinfo=UTC))
    assert ctx["days_late"] == 3, ctx["days_late"]


def test_an_all_clear_leaves_out_the_returned_and_says_delivered_when_all_were() -> None:
    g = MessageGrouper(hold_seconds=3600)
    for pid in ("A", "B", "C"):
        g.add(_folded1(pid, T), "fold")
    g.advance(T + 3600)
    g.add(_back1("A", T + 7200, "delivered"))
    g.add(_back1("B", T + 7200, "returned"))
    g.add(_back1("C", T + 7200, "delivered"))
    (clear,) = g.advance(T + 3 * 3600, resolved_at=lambda key: T + 2 * 3600)
    assert clear["packages"] == ["A", "C"] and clear["ended"] == "delivered"
    cust = Customer("C7", "Ana Example", "ana@mail.example", "en", "America/Denver")
    msg = _composer().build(clear, cust, when=datetime(2026, 10, 1, 8, tzinfo=UTC))
    assert str(msg["Subject"]) == "2 of your packages have been delivered"
    text = msg.get_body(("plain",)).get_content()
    assert "They have all been delivered." in text and "moving again" not in text
