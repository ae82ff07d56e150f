"""MessageGrouper: one message per customer and incident, one all-clear, none for outages."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

from notifiers.grouping import MessageGrouper, customer_digest

T0 = datetime(2026, 10, 1, tzinfo=UTC)
H = 3600


def at(hours: float) -> str:
    return (T0 + timedelta(hours=hours)).isoformat()


def ts(hours: float) -> int:
    return int((T0 + timedelta(hours=hours)).timestamp())


def alert(pid: str, kind: str, hours: float, ref: str = "C1", incident: str | None = "INC",
          **extra: Any) -> dict[str, Any]:
    return {"alert_key": f"{pid}:{kind}:1", "kind": kind, "package_id": pid, "episode": 1,
            "alert_time": at(hours), "recipient_ref": ref, "incident_key": incident,
            "incident_kind": "facility_slowdown", "facility_id": "P1",
            "facility_name": "DENVER CO PLANT", "promised_by": at(48 + hours),
            "new_estimate": at(72 + hours), "last_scan_time": at(hours - 20),
            "evidence": "Slow at P1."} | extra


def test_packages_of_one_customer_in_one_incident_make_one_message() -> None:
    g = MessageGrouper(hold_seconds=2 * H)
    assert g.add(alert("A", "incident_delay", 10), "fold") == []
    assert g.add(alert("B", "incident_delay", 11, new_estimate=at(90)), "fold") == []
    assert g.add(alert("X", "incident_delay", 11, ref="C2"), "fold") == []
    assert g.advance(ts(11.9)) == []  # still holding
    [m] = g.advance(ts(12))  # C1's hold is over; C2's package came an hour later
    assert m["recipient_ref"] == "C1"
    assert m["kind"] == "incident_delay" and m["packages"] == ["A", "B"]
    assert m["package_count"] == 2 and m["incident_key"] == "INC"
    # each package with its own dates; the message's are the latest package's (B: 31 h
    # late), never A's promise with B's estimate
    assert m["dates"] == [["A", at(58), at(82)], ["B", at(59), at(90)]]
    assert m["promised_by"] == at(59) and m["new_estimate"] == at(90)
    assert m["alert_key"] == f"INC:{customer_digest('C1')}:incident_delay"
    assert "C1" not in m["alert_key"]
    [other] = g.advance(ts(13))  # said once to C1; now C2's own message
    assert other["recipient_ref"] == "C2" and other["packages"] == ["X"]


def test_the_all_clear_waits_for_the_incident_and_every_package_then_comes_once() -> None:
    g = MessageGrouper(hold_seconds=H)
    g.add(alert("A", "incident_delay", 10), "fold")
    g.add(alert("B", "incident_delay", 10.5), "fold")
    g.advance(ts(12))
    resolved: dict[str, int] = {}
    assert g.add(alert("A", "back_on_track", 13), "keep") == []
    assert g.advance(ts(14), resolved.get) == []  # B still stuck, incident open
    resolved["INC"] = ts(15)
    assert g.advance(ts(16), resolved.get) == []  # resolved, but B has not moved
    assert g.add(alert("B", "back_on_track", 17), "keep") == []
    [clear] = g.advance(ts(17), resolved.get)
    assert clear["kind"] == "back_on_track" and clear["packages"] == ["A", "B"]
    assert clear["alert_key"].endswith(":back_on_track")
    assert clear["alert_time"] == at(17)
    # the all-clear carries the later of the two moving packages' new estimates
    assert clear["new_estimate"] == at(72 + 17)
    assert g.advance(ts(30), resolved.get) == [] and g.pending == 0


def test_the_all_clear_keeps_the_latest_estimate_whatever_the_order() -> None:
    g = MessageGrouper(hold_seconds=H)
    for pid in "AB":
        g.add(alert(pid, "incident_delay", 10), "fold")
    g.advance(ts(11))
    g.add(alert("A", "back_on_track", 13, new_estimate=at(60)), "keep")
    g.add(alert("B", "back_on_track", 14, new_estimate=at(40)), "keep")  # earlier: not it
    [clear] = g.advance(ts(15), {"INC": ts(12)}.get)
    assert clear["new_estimate"] == at(60)
    g = MessageGrouper(hold_seconds=H)
    g.add(alert("A", "incident_delay", 10), "fold")
    g.advance(ts(11))
    g.add(alert("A", "back_on_track", 13, new_estimate=None), "keep")
    [clear] = g.advance(ts(15), {"INC": ts(12)}.get)
    assert clear["new_estimate"] is None  # unknown: the message says so, not a made-up date


def test_a_package_folded_after_the_message_is_listed_in_the_all_clear_only() -> None:
    g = MessageGrouper(hold_seconds=H)
    g.add(alert("A", "incident_delay", 10), "fold")
    [first] = g.advance(ts(11))
    g.add(alert("B", "incident_delay", 20), "fold")
    assert g.advance(ts(22)) == []
    assert g.grouped == 1
    for pid in "AB":
        g.add(alert(pid, "back_on_track", 30), "keep")
    [clear] = g.advance(ts(31), {"INC": ts(29)}.get)
    assert first["packages"] == ["A"] and clear["packages"] == ["A", "B"]


def test_stalls_pass_through_and_their_back_on_track_too() -> None:
    g = MessageGrouper()
    s = alert("S", "stall", 5, incident=None)
    assert g.add(s, "keep") == [s]
    assert g.told("S") == "stall"
    b = alert("S", "back_on_track", 9, incident=None)
    assert g.add(b, "keep") == [b]
    assert g.told("S") is None


def test_a_suppressed_alert_and_its_back_on_track_tell_nobody() -> None:
    g = MessageGrouper()
    assert g.add(alert("F", "stall", 5, incident=None), "suppress") == []
    assert g.told("F") == "suppress"
    assert g.add(alert("F", "back_on_track", 9, incident=None), "keep") == []
    assert g.advance(ts(100)) == []


def test_flush_sends_held_messages_at_end_of_input() -> None:
    g = MessageGrouper(hold_seconds=10 * H)
    g.add(alert("A", "incident_delay", 10), "fold")
    assert g.advance(ts(11)) == []
    [m] = g.flush(ts(11))
    assert m["kind"] == "incident_delay" and m["alert_time"] == at(11)


def test_old_groups_and_episodes_are_forgotten() -> None:
    g = MessageGrouper(hold_seconds=H, retention_seconds=2 * 86400)
    g.add(alert("A", "incident_delay", 10), "fold")
    g.add(alert("S", "stall", 10, incident=None), "keep")
    g.advance(ts(11))
    assert g.pending == 1
    g.advance(ts(10 + 49))
    assert g.pending == 0 and g.told("S") is None


def test_the_grouper_pickles_mid_hold() -> None:
    g = MessageGrouper(hold_seconds=H)
    g.add(alert("A", "incident_delay", 10), "fold")
    again = pickle.loads(pickle.dumps(g))
    again.add(alert("B", "incident_delay", 10.2), "fold")
    [m] = again.advance(ts(11))
    assert m["packages"] == ["A", "B"]


def test_packages_told_when_they_moved_on_get_one_message_and_no_all_clear() -> None:
    g = MessageGrouper(hold_seconds=2 * H)
    for pid, moved in [("A", 10), ("B", 10.5)]:
        g.add(alert(pid, "incident_delay", moved, moving=True), "fold")
    [message] = g.advance(ts(12), resolved_at=lambda key: ts(5))  # resolved before they moved
    assert (message["kind"], message["packages"], message["moving"]) == (
        "incident_delay", ["A", "B"], True)
    assert message["moved_at"] == at(10.5)  # the last of them moved then
    assert g.advance(ts(40), resolved_at=lambda key: ts(5)) == []  # nothing to clear
    assert g.pending == 0


def test_a_package_folded_after_its_group_closed_gets_a_follow_up_not_a_lost_message() -> None:
    """The outbox keeps one row per key: a second group of the same customer and incident
    must not reuse the first one's keys, or its messages would be dropped unsent."""
    g = MessageGrouper(hold_seconds=2 * H)
    g.add(alert("A", "incident_delay", 10), "fold")
    first = g.advance(ts(12))
    g.add(alert("A", "back_on_track", 13))
    closed = g.advance(ts(14), resolved_at=lambda key: ts(13.5))
    g.add(alert("B", "incident_delay", 20), "fold")
    again = g.advance(ts(22), resolved_at=lambda key: ts(13.5))
    messages = first + closed + again
    assert [m["kind"] for m in messages] == ["incident_delay", "back_on_track",
                                             "incident_delay"]
    keys = [m["alert_key"] for m in messages]
    assert len(set(keys)) == 3
    assert keys[2] == f"INC:{customer_digest('C1')}:2:incident_delay"
    assert again[0]["packages"] == ["B"]
    restored = pickle.loads(pickle.dumps(g))
    del restored.__dict__["_closed"]  # as pickled before follow-up groups
    assert pickle.loads(pickle.dumps(restored)).advance(ts(23)) == []


def test_a_closed_group_remembers_the_packages_it_told() -> None:
    """``told_of``: the packages of a closed group (message and all-clear sent) heard of
    the incident; another package of the customer did not, nor does anyone before the group
    closes. A snapshot from before kept (count, time) only: nobody counts as told."""
    g = MessageGrouper(hold_seconds=2 * H)
    g.add(alert("A", "incident_delay", 10), "fold")
    g.advance(ts(12))
    assert not g.told_of(alert("A", "incident_delay", 12.5))  # told, not closed yet
    g.add(alert("A", "back_on_track", 13))
    g.advance(ts(14), resolved_at=lambda key: ts(13.5))
    assert g.told_of(alert("A", "incident_delay", 20))
    assert not g.told_of(alert("B", "incident_delay", 20))
    assert not g.told_of(alert("A", "incident_delay", 20, incident="OTHER"))
    assert not g.told_of(alert("A", "incident_delay", 20, ref="C2"))
    g.add(alert("B", "incident_delay", 20), "fold")  # a follow-up group; then closed too
    g.advance(ts(22), resolved_at=lambda key: ts(13.5))
    g.add(alert("B", "back_on_track", 23))
    g.advance(ts(24), resolved_at=lambda key: ts(13.5))
    assert g.told_of(alert("A", "incident_delay", 30)) and g.told_of(
        alert("B", "incident_delay", 30))  # both groups' packages, under one key
    restored = pickle.loads(pickle.dumps(g))
    assert restored.told_of(alert("B", "incident_delay", 30))
    restored._closed = {k: v[:2] for k, v in restored._closed.items()}  # as pickled before
    old = pickle.loads(pickle.dumps(restored))
    assert not old.told_of(alert("A", "incident_delay", 30))
    old.advance(ts(24 + 31 * 24))  # the retention prunes 2-tuples too
    assert old._closed == {}


def test_packages_that_moved_during_the_hold_get_one_moving_message_not_held_and_clear() -> None:
    """A folded package moves again before its customer's message leaves the hold: the
    message says it was held up and is moving again (when, after how long, its new
    estimate), and no all-clear follows it, however the incident goes on."""
    g = MessageGrouper(hold_seconds=2 * H)
    g.add(alert("A", "incident_delay", 5), "fold")  # silent since hour -15
    g.add(alert("A", "back_on_track", 5.5, new_estimate=at(90)), "keep")
    [message] = g.advance(ts(7), resolved_at=lambda key: ts(6))
    assert (message["kind"], message["packages"], message["moving"]) == (
        "incident_delay", ["A"], True)
    assert message["moved_at"] == at(5.5)
    assert message["silence_seconds"] == 20.5 * H  # from its last scan to the move
    assert message["new_estimate"] == at(90)  # the estimate from the scan after the hold
    assert g.advance(ts(40), resolved_at=lambda key: ts(6)) == [] and g.pending == 0
    # one of two moved during the hold: a "held" message that says one moved since
    g.add(alert("B", "incident_delay", 50, incident="INC2"), "fold")
    g.add(alert("C", "incident_delay", 50, incident="INC2"), "fold")
    g.add(alert("B", "back_on_track", 51, incident="INC2"), "keep")
    [held] = g.advance(ts(52))
    assert (held["moving"], held["moved_count"], held["package_count"]) == (False, 1, 2)
    g.add(alert("C", "back_on_track", 53, incident="INC2"), "keep")
    [clear] = g.advance(ts(54), resolved_at=lambda key: ts(52.5))
    assert clear["kind"] == "back_on_track" and clear["packages"] == ["B", "C"]


def test_the_all_clear_comes_even_after_the_folder_forgot_the_incident() -> None:
    """The folder keeps a resolved incident for a week; a package may move again later
    than that: the group keeps the resolution time it saw and still sends the all-clear."""
    g = MessageGrouper(hold_seconds=H)
    g.add(alert("A", "incident_delay", 10), "fold")
    g.advance(ts(11))
    known = {"INC": ts(20)}
    g.advance(ts(21), resolved_at=known.get)  # resolved; A has not moved yet
    del known["INC"]  # a week later the folder has pruned it
    g.add(alert("A", "back_on_track", 10 + 8 * 24), "keep")
    [clear] = g.advance(ts(10 + 8 * 24), resolved_at=known.get)
    assert clear["kind"] == "back_on_track" and clear["alert_time"] == at(10 + 8 * 24)
    assert g.pending == 0
    old = MessageGrouper(hold_seconds=H)
    old.add(alert("B", "incident_delay", 10), "fold")
    group = next(iter(old._groups.values()))
    state = group.__getstate__()
    del state[1]["resolved_ts"]  # a group pickled before it kept the time
    group.__setstate__(state)
    assert group.resolved_ts is None


def test_messages_due_together_come_in_the_order_their_groups_opened() -> None:
    """Alert times need not rise with the order alerts are decided in: the held queue is
    ordered by hold end, the messages by opening."""
    g = MessageGrouper(hold_seconds=H)
    g.add(alert("A", "incident_delay", 10.5, ref="C1"), "fold")
    g.add(alert("B", "incident_delay", 10.0, ref="C2"), "fold")  # opened later, held earlier
    assert [m["packages"] for m in g.advance(ts(12))] == [["A"], ["B"]]


def test_a_snapshot_from_before_the_queues_goes_on_as_it_would_have() -> None:
    """A grouper pickled before the held and waiting queues existed (its state has only the
    groups) rebuilds them on restore: the same messages at the same times."""
    def grouper() -> MessageGrouper:
        g = MessageGrouper(hold_seconds=2 * H)
        g.add(alert("A", "incident_delay", 10), "fold")  # sent at 12, all-clear later
        g.add(alert("B", "incident_delay", 11, ref="C2"), "fold")  # held until 13
        g.add(alert("C", "incident_delay", 9, ref="C3", incident="OLD"), "fold")
        return g

    live, old = grouper(), grouper()
    assert [m["packages"] for m in live.advance(ts(12))] == [["A"], ["C"]]
    old.advance(ts(12))
    state = {k: v for k, v in old.__dict__.items()
             if k not in ("_held", "_expiry", "_armed", "_next_sweep", "_opened")}
    restored = MessageGrouper.__new__(MessageGrouper)
    restored.__setstate__(pickle.loads(pickle.dumps(state)))
    for g in (live, restored):
        g.add(alert("A", "back_on_track", 12.5), "keep")
    said = []
    for hours in (13, 14, 15):
        messages = live.advance(ts(hours), resolved_at=lambda key: ts(13.5))
        assert messages == restored.advance(ts(hours), resolved_at=lambda key: ts(13.5))
        said += [(hours, m["kind"], m["packages"]) for m in messages]
    assert said == [(13, "incident_delay", ["B"]), (14, "back_on_track", ["A"])]
    assert live.pending == restored.pending == 2  # B and C still wait for their packages


def test_a_package_folded_after_the_others_moved_holds_the_all_clear_back() -> None:
    """Review finding (helper-26): a sent group whose packages had all moved waited for its
    incident; a package of the same customer folded into it then must be waited for too."""
    g = MessageGrouper(hold_seconds=H)
    g.add(alert("A", "incident_delay", 10), "fold")
    assert [m["kind"] for m in g.advance(ts(11))] == ["incident_delay"]
    g.add(alert("A", "back_on_track", 11.5), "keep")  # all moved: waits for the incident
    assert g.advance(ts(12)) == []  # incident still open
    g.add(alert("B", "incident_delay", 12.5), "fold")  # same customer and incident
    resolved = {"INC": ts(13)}
    assert g.advance(ts(14), resolved.get) == []  # resolved, but B is still held
    g.add(alert("B", "back_on_track", 15), "keep")
    [m] = g.advance(ts(16), resolved.get)
    assert (m["kind"], m["packages"], m["alert_time"]) == ("back_on_track", ["A", "B"], at(15))


def test_a_snapshot_holds_the_groups_not_the_queues_derived_from_them() -> None:
    g = MessageGrouper(hold_seconds=H)
    for hours in range(100):  # groups closed long ago leave nothing behind in a snapshot
        g.add(alert(f"P{hours}", "incident_delay", hours, ref=f"C{hours}"), "fold")
        g.advance(ts(hours + 1))
        g.add(alert(f"P{hours}", "back_on_track", hours + 1.5), "keep")
        g.advance(ts(hours + 2), resolved_at=lambda key: ts(0))
    state = g.__getstate__()
    assert g.pending == 0 and not {"_held", "_expiry", "_armed"} & set(state)
    assert len(pickle.dumps(g)) < 20_000


def test_customers_waiting_on_an_open_incident_cost_one_lookup_per_step() -> None:
    """At national scale one incident can hold thousands of customers whose packages all
    moved again: each step asks once whether that incident resolved, not once per customer,
    and when it does every one of them gets the all-clear."""
    g = MessageGrouper(hold_seconds=H)
    for i in range(1000):
        g.add(alert(f"P{i}", "incident_delay", 10, ref=f"C{i}"), "fold")
    assert len(g.advance(ts(11))) == 1000
    for i in range(1000):
        g.add(alert(f"P{i}", "back_on_track", 11.2), "keep")
    asked: list[str] = []
    resolved: dict[str, int] = {}

    def resolved_at(key: str) -> int | None:
        asked.append(key)
        return resolved.get(key)

    for hours in (11.4, 11.6, 11.8):  # (the hourly sweep over all groups is at 12)
        assert g.advance(ts(hours), resolved_at) == []  # open
    assert asked == ["INC", "INC", "INC"]
    resolved["INC"] = ts(11.9)
    clear = g.advance(ts(12), resolved_at)
    assert len(clear) == 1000 and {m["kind"] for m in clear} == {"back_on_track"}
    assert g.pending == 0
