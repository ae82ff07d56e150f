"""The network step's logic without Bytewax: ``flows.network.NetworkDesk`` driven directly.

Package records and ``Progress`` go in as the shards would send them; what comes out is the
``("alert" | "message" | "incident", record)`` stream the flow writes.
"""

from __future__ import annotations

import doctest
import math
import pickle
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import flows.network
from detectors.folding import IncidentFolder
from detectors.incidents import IncidentManager
from detectors.tracker import Held
from flows.metrics import FlowMetrics, make_flow_metrics
from flows.network import NetworkDesk, Out, Progress
from notifiers.grouping import MessageGrouper, customer_digest

H = 3600
T0 = 1_790_000_000 - 1_790_000_000 % H  # on the hour


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def record(pid: str, at: int, *, kind: str = "stall", facility: str = "P1",
           ref: str | None = None) -> dict[str, Any]:
    """A package record as a shard makes it (silent at ``facility`` since 30 h before)."""
    return {"alert_key": f"{pid}:{kind}:1", "kind": kind, "package_id": pid, "episode": 1,
            "facility_id": facility, "last_event_code": "A1",
            "last_scan_time": iso(at - 30 * H), "alert_time": iso(at),
            "recipient_ref": ref or f"C-{pid}", "evidence": "No scan for 30 h."}


def incident(kind: str, facility: str, opened: int) -> dict[str, Any]:
    return {"incident_key": f"{facility}:{kind}:{opened}", "kind": kind,
            "facility_id": facility, "lane_to": None, "status": "open",
            "opened_at": iso(opened), "resolved_at": None, "facilities": facility,
            "evidence": f"{kind} at {facility}."}


def progress(watermark: int, closed: int,
             incidents: list[tuple[int, list[dict[str, Any]]]] | None = None) -> Progress:
    return Progress(watermark, closed, [], incidents or [])


def new_desk(shards: int = 1, metrics: FlowMetrics | None = None) -> NetworkDesk:
    return NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=H),
                       shards=shards, metrics=metrics)


def feed(desk: NetworkDesk, batches: list[list[tuple[str, Any]]]) -> list[Out]:
    """As the flow does: each batch's items added, then one step."""
    out: list[Out] = []
    for batch in batches:
        for shard, item in batch:
            desk.add(shard, item)
        out += desk.step()
    return out


def alert_ids(out: list[Out]) -> list[str]:
    return [r["package_id"] for tag, r in out if tag == "alert"]


def test_records_are_decided_in_event_time_order_whatever_the_shards_order() -> None:
    def batches(first: str) -> list[list[tuple[str, Any]]]:
        by_shard = {
            "0": [("0", record("a", T0 + 1 * H)), ("0", record("b", T0 + 5 * H)),
                  ("0", progress(T0 + 6 * H, T0 + 10 * H))],
            "1": [("1", record("c", T0 + 3 * H)), ("1", progress(T0 + 6 * H, T0 + 10 * H))],
        }
        second = "1" if first == "0" else "0"
        return [by_shard[first], by_shard[second]]

    desk = new_desk(shards=2)
    assert feed(desk, batches("0")[:1]) == [], "shard 1 has not spoken: nothing is decided"
    outputs = [feed(new_desk(shards=2), batches(first)) for first in ("0", "1")]
    # one item per batch, the shards interleaved (each shard's own items in its order)
    (a, b, done0), (c, done1) = batches("0")
    outputs.append(feed(new_desk(shards=2), [[a], [c], [b], [done1], [done0]]))
    for out in outputs:
        assert alert_ids(out) == ["a", "c", "b"]  # by alert time, not by arrival
        assert [tag for tag, _ in out] == ["alert", "message"] * 3
    assert outputs[0] == outputs[1] == outputs[2]


def test_a_record_waits_for_the_incidents_of_its_grace_period() -> None:
    desk = new_desk()
    out = feed(desk, [[("0", record("a", T0 + 2 * H)), ("0", progress(T0 + 2 * H, T0 + 2 * H))]])
    assert out == [], "windows through alert_time + grace are not closed yet"
    # the incident opens within the grace: the stall is folded into it, not told on its own
    opened = T0 + 2 * H + 1800
    out = feed(desk, [[("0", progress(T0 + 4 * H, T0 + 4 * H,
                                      [(opened, [incident("facility_stop", "P1", opened)])]))]])
    assert [(tag, r["kind"]) for tag, r in out] == [
        ("incident", "facility_stop"), ("alert", "incident_delay"),
        ("message", "incident_delay")]  # decided at 03:00, its 1 h hold over: out at once


def test_a_watched_package_is_folded_when_an_incident_opens_at_its_facility() -> None:
    desk = new_desk()
    out = feed(desk, [[("0", record("w", T0 + 2 * H, kind="watch")),
                       ("0", record("x", T0 + 2 * H, kind="watch", facility="P2")),
                       ("0", progress(T0 + 4 * H, T0 + 4 * H))]])
    assert out == [], "a watch no incident explains tells nobody"
    assert {f: sorted(w) for f, w in desk.watching.items()} == {"P1": ["w"], "P2": ["x"]}

    opened = T0 + 5 * H
    out = feed(desk, [[("0", progress(T0 + 8 * H, T0 + 8 * H,
                                      [(T0 + 6 * H, [incident("facility_slowdown", "P1",
                                                              opened)])]))]])
    assert [(tag, r["kind"], r.get("package_id")) for tag, r in out] == [
        ("incident", "facility_slowdown", None), ("alert", "incident_delay", "w")]
    folded = out[1][1]
    assert folded["alert_time"] == iso(opened)  # told when the incident opened
    assert folded["incident_key"] == f"P1:facility_slowdown:{opened}"
    assert {f: sorted(w) for f, w in desk.watching.items()} == {"P2": ["x"]}

    moved = record("w", T0 + 9 * H, kind="moved")
    moved_on = record("x", T0 + 9 * H, kind="moved", facility="P2")  # nobody was told of x
    out = feed(desk, [[("0", moved), ("0", moved_on), ("0", progress(T0 + 10 * H, T0 + 12 * H))]])
    assert desk.watching == {}
    held = [r for tag, r in out if tag == "message"]
    assert [r["kind"] for r in held] == ["incident_delay"]  # the hour's hold has passed
    assert held[0]["packages"] == ["w"]
    assert [(r["kind"], r["alert_key"]) for tag, r in out if tag == "alert"] == [
        ("back_on_track", "w:back_on_track:1")]


def test_a_package_watched_on_the_road_is_folded_when_a_lane_incident_opens_from_its_origin(
) -> None:
    """In transit a record has no facility: the package is watched under the facility it
    departed (``departed_from``), so a lane incident opening from there tells it, and its
    move takes it off the watch list."""
    def on_road(pid: str, at: int, kind: str, origin: str | None) -> dict[str, Any]:
        return record(pid, at, kind=kind) | {"facility_id": None, "departed_from": origin,
                                             "last_event_code": "TL"}

    desk = new_desk()
    out = feed(desk, [[("0", on_road("w", T0 + 2 * H, "watch", "P1")),
                       ("0", on_road("x", T0 + 2 * H, "watch", None)),
                       ("0", progress(T0 + 4 * H, T0 + 4 * H))]])
    assert out == []
    assert {f: sorted(w) for f, w in desk.watching.items()} == {"P1": ["w"], "": ["x"]}
    opened = T0 + 5 * H
    lane = incident("lane_delay", "P1", opened) | {"lane_to": "N2"}
    out = feed(desk, [[("0", progress(T0 + 8 * H, T0 + 8 * H, [(T0 + 6 * H, [lane])]))]])
    assert [(tag, r["kind"], r.get("package_id")) for tag, r in out] == [
        ("incident", "lane_delay", None), ("alert", "incident_delay", "w")]
    assert out[1][1]["incident_key"] == lane["incident_key"]
    assert {f: sorted(w) for f, w in desk.watching.items()} == {"": ["x"]}
    out = feed(desk, [[("0", on_road("w", T0 + 9 * H, "moved", "P1")),
                       ("0", on_road("x", T0 + 9 * H, "moved", None)),
                       ("0", progress(T0 + 10 * H, T0 + 12 * H))]])
    assert desk.watching == {}
    assert [(r["kind"], r["package_id"]) for tag, r in out if tag == "alert"] == [
        ("back_on_track", "w")]


def test_a_transit_watch_from_before_departed_from_is_unwatched_by_its_new_records() -> None:
    """A snapshot from before ``departed_from`` holds a package on the road watched under
    "": its records made after the upgrade (which name the facility it departed) still take
    it off the list."""
    desk = new_desk()
    old_watch = record("w", T0 + 2 * H, kind="watch") | {"facility_id": None,
                                                         "last_event_code": "TL"}
    feed(desk, [[("0", old_watch), ("0", progress(T0 + 4 * H, T0 + 4 * H))]])
    assert desk.watching == {"": {"w": old_watch}}
    desk = pickle.loads(pickle.dumps(desk))
    moved = record("w", T0 + 9 * H, kind="moved") | {
        "facility_id": None, "departed_from": "P1", "last_event_code": "TL"}
    feed(desk, [[("0", moved), ("0", progress(T0 + 10 * H, T0 + 12 * H))]])
    assert desk.watching == {}


def test_a_feed_outage_suppresses_the_stall_and_tells_nobody() -> None:
    registry = CollectorRegistry()
    desk = new_desk(metrics=make_flow_metrics(registry))
    outage = incident("feed_outage", "P1", T0 + 1 * H)
    out = feed(desk, [[("0", record("s", T0 + 4 * H)), ("0", record("k", T0 + 4 * H,
                                                                     facility="P2")),
                       ("0", progress(T0 + 5 * H, T0 + 6 * H, [(T0 + 1 * H, [outage])]))]])
    assert [(tag, r.get("package_id")) for tag, r in out] == [
        ("incident", None), ("alert", "k"), ("message", "k")]  # P2 had no outage
    assert desk.folder.suppressed == 1
    assert registry.get_sample_value("delaywatch_alerts_suppressed_total",
                                     {"reason": "feed_outage"}) == 1
    assert registry.get_sample_value("delaywatch_messages_total", {"kind": "stall"}) == 1
    assert registry.get_sample_value("delaywatch_incidents_total",
                                     {"kind": "feed_outage", "status": "opened"}) == 1

    out = feed(desk, [[("0", record("s", T0 + 7 * H, kind="back_on_track")),
                       ("0", progress(T0 + 8 * H, T0 + 9 * H))]])
    assert out == [], "what was told to nobody is closed silently"
    assert [tag for tag, _ in desk.finish()] == []


def _reclassified(opened: int, at: int) -> dict[str, Any]:
    """The resolving record of a slowdown at P1 that turned out to be a feed outage."""
    return incident("facility_slowdown", "P1", opened) | {
        "status": "resolved", "resolved_at": iso(at), "reclassified_as": "feed_outage",
        "evidence": "Reclassified: the missing scans were a data feed problem, not a delay."}


def test_a_delay_reclassified_as_a_feed_outage_tells_nobody_afterwards() -> None:
    """A slowdown opens at P1, then its missing scans arrive late: a feed outage. A package
    silent at P1 over that time is not held by anything: no incident message, no stall
    message (the scans are missing), and its back-on-track closes silently."""
    registry = CollectorRegistry()
    desk = new_desk(metrics=make_flow_metrics(registry))
    slow = incident("facility_slowdown", "P1", T0 + 1 * H)
    out = feed(desk, [[("0", record("s", T0 + 8 * H)),
                       ("0", progress(T0 + 9 * H, T0 + 10 * H, [
                           (T0 + 1 * H, [slow]),
                           (T0 + 3 * H, [_reclassified(T0 + 1 * H, T0 + 3 * H),
                                         incident("feed_outage", "P1", T0 + 3 * H)])]))]])
    assert [tag for tag, _ in out] == ["incident", "incident", "incident"]
    assert desk.folder.suppressed == 1 and desk.folder.folded == 0
    out = feed(desk, [[("0", record("s", T0 + 11 * H, kind="back_on_track")),
                       ("0", progress(T0 + 12 * H, T0 + 13 * H))]])
    assert out == [] and desk.finish() == []
    assert registry.get_sample_value("delaywatch_alerts_suppressed_total",
                                     {"reason": "feed_outage"}) == 1


def test_a_reclassification_withdraws_the_messages_still_held_for_the_delay() -> None:
    """Package ``h`` is folded into the slowdown and its message held for ``hold_seconds``
    (2 h, longer than the 1 h grace, as by default); before it goes out, the slowdown is
    reclassified as a feed outage: the message is withdrawn. Package ``t``'s message went
    out before: it stays sent, and its all-clear follows when it moves again."""
    registry = CollectorRegistry()
    desk = NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=2 * H),
                       metrics=make_flow_metrics(registry))
    slow = incident("facility_slowdown", "P1", T0 + 1 * H)
    out = feed(desk, [[("0", record("t", T0 + 2 * H)),
                       ("0", progress(T0 + 2 * H, T0 + 4 * H, [(T0 + 1 * H, [slow])]))],
                      [("0", record("h", T0 + 5 * H)),
                       ("0", progress(T0 + 5 * H + 1, T0 + 6 * H))]])
    assert [(tag, r["kind"], r["package_id"]) for tag, r in out if tag != "incident"] == [
        ("alert", "incident_delay", "t"),
        ("message", "incident_delay", "t"),  # held 2 h, sent
        ("alert", "incident_delay", "h")]  # held until 7 h
    out = feed(desk, [[("0", progress(T0 + 6 * H + 1800, T0 + 6 * H + 1800, [
        (T0 + 6 * H + 1800, [_reclassified(T0 + 1 * H, T0 + 6 * H + 1800),
                             incident("feed_outage", "P1", T0 + 6 * H + 1800)])]))],
                      [("0", record("x", T0 + 8 * H, facility="P2")),  # time moves on
                       ("0", progress(T0 + 9 * H, T0 + 10 * H))]])
    assert [(tag, r.get("package_id")) for tag, r in out] == [
        ("incident", None), ("incident", None), ("alert", "x"), ("message", "x")], \
        "h's message is withdrawn"
    assert registry.get_sample_value("delaywatch_alerts_suppressed_total",
                                     {"reason": "feed_outage"}) == 1
    out = feed(desk, [[("0", record("h", T0 + 10 * H, kind="back_on_track")),
                       ("0", record("t", T0 + 10 * H, kind="back_on_track")),
                       ("0", progress(T0 + 11 * H, T0 + 12 * H))]])
    out += desk.finish()
    assert [(r["kind"], r.get("packages")) for tag, r in out if tag == "message"] == [
        ("back_on_track", ["t"])]


def test_records_made_at_a_reported_watermark_wait_for_the_next() -> None:
    """A shard that reported watermark ``W`` may make more records at ``W`` in its next batch
    (a scan that does not move its newest event time). Deciding the records made at ``W``
    as soon as ``W`` was reported would decide ``z`` before ``a`` arrived when they come in
    two batches, and after it when they come in one: one customer got two delay messages
    in the first case and one listing both packages in the second. And the records decided
    at one time all join their groups before any group is looked at: ``a``, moved at 7 h but
    decided at 11 h, found its hold of 2 h over and went out alone, ``z`` in a follow-up."""
    w, opened = T0 + 10 * H, T0 + 2 * H
    slow = incident("facility_slowdown", "P1", opened)

    def run(split: bool) -> list[tuple[str, Any, Any]]:
        z = record("z", w, ref="C1") | {"watermark": w}  # (the desk takes the watermark out)
        a = record("a", w - 3 * H, kind="moved_late", ref="C1") | {
            "watermark": w, "new_estimate": iso(w + 40 * H)}  # moved at 7 h, seen at W
        first = progress(w, w + 3 * H, [(opened, [slow])])
        batches = [[z, first], [a, progress(w, w + 3 * H)]] if split else [[z, a, first]]
        desk = NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=2 * H))
        out = feed(desk, [[("0", item) for item in batch] for batch in batches])
        out += desk.finish()
        return [(tag, r["kind"], r.get("packages")) for tag, r in out if tag != "incident"]

    together, split = run(split=False), run(split=True)
    assert split == together
    assert [(kind, packages) for tag, kind, packages in together if tag == "message"] == [
        ("incident_delay", ["a", "z"])]


def test_a_package_told_of_an_incident_and_its_end_is_not_told_of_it_again() -> None:
    """Weather over P1 and P2; package A is held at P1, told, moves on to P2 and gets its
    all-clear; it then sits at P2 (since before the weather resolved) and stalls 28 h after
    it resolved: its own stall, not the weather's news again (it made four messages)."""
    weather = incident("weather", "P1", T0 + 2 * H) | {"facilities": "P1 P2"}
    resolved = weather | {"status": "resolved", "resolved_at": iso(T0 + 8 * H)}

    def rec(kind: str, at: int, facility: str, last: int, episode: int) -> dict[str, Any]:
        return record("A", at, kind=kind, facility=facility, ref="C1") | {
            "alert_key": f"A:{kind}:{episode}", "episode": episode,
            "last_scan_time": iso(last), "watermark": at}

    desk = new_desk()
    out = feed(desk, [
        [("0", rec("stall", T0 + 4 * H, "P1", T0, 1)),
         ("0", progress(T0 + 5 * H, T0 + 5 * H, [(T0 + 2 * H, [weather])]))],
        [("0", rec("back_on_track", T0 + 6 * H, "P1", T0, 1)),
         ("0", progress(T0 + 7 * H, T0 + 7 * H))],
        [("0", progress(T0 + 12 * H, T0 + 12 * H, [(T0 + 8 * H, [resolved])]))],
        [("0", rec("stall", T0 + 36 * H, "P2", T0 + 6 * H + 1800, 2)),
         ("0", progress(T0 + 37 * H, T0 + 38 * H))],
        [("0", rec("back_on_track", T0 + 40 * H, "P2", T0 + 6 * H + 1800, 2)),
         ("0", progress(T0 + 41 * H, T0 + 42 * H))]])
    out += desk.finish()
    told = [(r["kind"], r["alert_key"]) for tag, r in out if tag == "message"]
    group = f"{weather['incident_key']}:{customer_digest('C1')}"
    assert told == [("incident_delay", f"{group}:incident_delay"),
                    ("back_on_track", f"{group}:back_on_track"),
                    ("stall", "A:stall:2"), ("back_on_track", "A:back_on_track:2")]


def _scenario() -> list[list[tuple[str, Any]]]:
    opened = T0 + 3 * H
    return [
        [("0", record("a", T0 + 1 * H)), ("0", record("w", T0 + 2 * H, kind="watch")),
         ("0", progress(T0 + 2 * H, T0 + 3 * H))],
        [("1", record("b", T0 + 2 * H, facility="P1")), ("1", progress(T0 + 2 * H, T0 + 2 * H))],
        [("1", record("c", T0 + 4 * H, facility="P2")),
         ("1", progress(T0 + 5 * H, T0 + 6 * H,
                        [(T0 + 4 * H, [incident("weather", "P1", opened)])]))],
        [("0", record("a", T0 + 5 * H, kind="back_on_track")),
         ("0", progress(T0 + 6 * H, T0 + 7 * H))],
        [("0", record("w", T0 + 7 * H, kind="moved")), ("0", progress(T0 + 9 * H, T0 + 10 * H)),
         ("1", progress(T0 + 10 * H, T0 + 12 * H))],
    ]


def test_the_snapshot_pickles_and_resumes_where_it_stopped() -> None:
    whole = new_desk(shards=2)
    expected = feed(whole, _scenario()) + whole.finish()
    for cut in range(1, len(_scenario())):
        batches = _scenario()
        desk = new_desk(shards=2, metrics=make_flow_metrics(CollectorRegistry()))
        got = feed(desk, batches[:cut])
        resumed = pickle.loads(pickle.dumps(desk))  # the metrics (with locks) stay behind
        assert resumed.metrics is None
        after = feed(resumed, batches[cut:]) + resumed.finish()
        assert after, "something must be left to decide after the cut"
        assert got + after == expected, f"cut after batch {cut}"
    kinds = [(tag, r["kind"]) for tag, r in expected]
    assert ("alert", "incident_delay") in kinds and ("alert", "stall") in kinds


def test_the_module_example_runs() -> None:
    result = doctest.testmod(flows.network)
    assert result.attempted > 0
    assert result.failed == 0


def _held_run(*, early: bool, chunk: int, together: bool) -> list[tuple[int, Out]]:
    """Three shards' trackers (``hold_early`` as several shards run them) and the network
    step; a slowdown opens at P1 at +10 h. The events go in chunks of ``chunk`` per shard,
    the clock moves hour by hour, and each shard's records and progress reach the network
    step as a batch of their own or (``together``) all shards' in one. Returns the network
    step's outputs with the hour they came out."""
    from detectors import ScanEvent, StallDetector
    from detectors.tracker import PackageTracker

    def tracker() -> PackageTracker:
        detector = StallDetector(prior_hours={"A1": (4, 40), "T1": (4, 40)},
                                 default_prior_hours=None, min_threshold=0, min_samples=10**9)
        return PackageTracker(detector, allowed_lateness=0, bucket_seconds=600,
                              watch_fraction=0.85, hold_factor=1.0, hold_horizon=12 * H,
                              hold_early=early)

    def pkg(pid: str, code: str, at: int, facility: str, due: int) -> list[ScanEvent]:
        return [ScanEvent(pid, "GX", "O-1", at - 60, at - 60, service="ground",
                          promised_by_ts=due, recipient_ref=f"C-{pid}"),
                ScanEvent(pid, code, facility, at, at)]

    shards = {
        "0": pkg("HELD", "A1", T0 + 2 * H, "P1", T0 + 20 * H)      # overdue at the opening
        + pkg("LEFT", "T1", T0 + 2 * H, "P1", T0 + 20 * H),        # departed: not a slowdown's
        "1": pkg("FRESH", "A1", T0 + 8 * H, "P1", T0 + 20 * H)     # overdue only at +12 h
        + pkg("ELSE", "A1", T0 + 2 * H, "P2", T0 + 20 * H),        # another facility
        "2": pkg("SPARE", "A1", T0 + 2 * H, "P1", T0 + 90 * H)     # due after the horizon
        + pkg("HELD2", "A1", T0 + 3 * H, "P1", T0 + 16 * H),       # overdue, due soon
    }
    trackers = {s: tracker() for s in shards}
    opened = T0 + 10 * H
    desk = new_desk(shards=3)
    out: list[tuple[int, Out]] = []
    for hour in range(16):
        batches: list[list[tuple[str, Any]]] = []
        for s, t in trackers.items():
            now = [ev for ev in shards[s] if T0 + (hour - 1) * H < ev.event_ts <= T0 + hour * H]
            records = [r for i in range(0, len(now), chunk)
                       for r in t.process_batch(now[i:i + chunk])]
            records += t.advance(T0 + hour * H)
            found = [(opened, [incident("facility_slowdown", "P1", opened)])] \
                if s == "0" and hour == 10 else []
            batches.append([(s, r) for r in records]
                           + [(s, progress(t.watermark, t.facility_through, found))])
        out += [(hour, o) for o in
                feed(desk, [[item for b in batches for item in b]] if together else batches)]
    return out


def test_with_several_shards_a_package_overdue_at_an_opening_hears_of_it_then() -> None:
    """As with one shard (``PackageTracker._hold``): the packages held at the facility,
    overdue and due within the hold horizon, are told when the incident opens; those not
    overdue yet, due later, departed or elsewhere are not. The outputs do not depend on how
    the events or the shards' records are batched."""
    out = _held_run(early=True, chunk=100, together=False)
    opening = [(tag, r.get("package_id")) for hour, (tag, r) in out if hour == 10]
    assert opening[:2] == [("incident", None), ("alert", "HELD")]  # its watch, decided then
    assert ("alert", "HELD2") not in opening
    told = {r["package_id"]: (hour, r) for hour, (tag, r) in out if tag == "alert"}
    assert told.keys() == {"HELD", "HELD2", "FRESH"}
    assert all(r["kind"] == "incident_delay" for _, r in told.values())
    # watched before: looked at again once the moves made before the opening are in (the
    # grace, an hour), and told as of the opening
    assert told["HELD2"][0] == 11 and told["HELD2"][1]["alert_time"] == iso(T0 + 10 * H)
    assert told["HELD"][1]["alert_time"] <= iso(T0 + 10 * H)  # its watch, claimed (grace)
    # a package reaching its hold point (+12 h) while the incident is open hears of it then
    # (its watch at +13 h, decided after the grace)
    assert told["FRESH"][0] == 14 and told["FRESH"][1]["alert_time"] >= iso(T0 + 12 * H)
    for chunk, together in ((1, False), (1, True), (3, True)):
        assert _held_run(early=True, chunk=chunk, together=together) == out
    before = _held_run(early=False, chunk=100, together=False)  # the watches come at 34 h
    assert [r["package_id"] for _, (tag, r) in before if tag == "alert"] == []


def test_a_network_snapshot_from_before_the_desk_resumes(tmp_path) -> None:
    """A recovery store written before NetworkDesk holds ``flows.dataflow.NetworkState`` (a
    plain dataclass) whose grouper's groups lack ``moved_estimate``: it must resume."""
    from flows.config import load_settings
    from flows.dataflow import FlowContext, NetworkState, _Network

    grouper = MessageGrouper(hold_seconds=H)
    folder = IncidentFolder(grace_seconds=H)
    opened = T0 + 2 * H
    folder.observe(incident("facility_slowdown", "P1", opened))
    folded = folder.decide(record("A", opened))[1]
    grouper.add(folded, "fold")
    grouper.advance(opened + 2 * H)  # the delay message went out: the group waits
    for group in grouper._groups.values():  # as the old code pickled it: no such slot
        object.__delattr__(group, "moved_estimate")
    old = NetworkState.__new__(NetworkState)
    old.__dict__.update(desk=None, folder=folder, grouper=grouper,
                        progress={"shard-0": (opened + 2 * H, opened + 2 * H)}, windows={},
                        ready={}, assessed_through=opened, held=[], arrivals=1,
                        now=opened + 2 * H, watching={}, next_prune=opened + 86400)
    resumed = pickle.loads(pickle.dumps(old))
    ctx = FlowContext(settings=load_settings(), run_dir=tmp_path)
    network = _Network(ctx, resumed)
    resolved = incident("facility_slowdown", "P1", opened) | {
        "status": "resolved", "resolved_at": iso(opened + 5 * H)}
    moved = record("A", opened + 6 * H, kind="moved") | {
        "watermark": opened + 6 * H, "new_estimate": iso(opened + 30 * H)}
    out, _ = network.on_batch([("shard-0", moved),
                               ("shard-0", progress(opened + 8 * H, opened + 8 * H,
                                                    [(opened + 5 * H, [resolved])]))])
    out += network.on_eof()[0]
    clear = [r for tag, r in out if tag == "message" and r["kind"] == "back_on_track"]
    assert [(m["packages"], m["new_estimate"]) for m in clear] == [
        (["A"], iso(opened + 30 * H))]
    assert pickle.loads(pickle.dumps(network.snapshot())).now == network.desk.now


def _figure_desk(registry: CollectorRegistry) -> NetworkDesk:
    from detectors.facility import FacilityMonitor
    from detectors.incidents import IncidentDesk, IncidentManager

    desk = new_desk(shards=2, metrics=make_flow_metrics(registry))
    desk.incidents = IncidentDesk(FacilityMonitor(), IncidentManager(), keep_figures=True)
    return desk


def test_facility_figures_add_up_over_shards_and_reach_the_gauges() -> None:
    from detectors.facility import FacilityWindow

    registry = CollectorRegistry()
    desk = _figure_desk(registry)
    end = T0 + 900

    def window(start: int, arrivals: int, departures: int, backlog: int) -> FacilityWindow:
        return FacilityWindow("P1", start, start + 900, arrivals=arrivals,
                              departures=departures, scans=arrivals + departures,
                              backlog=backlog, cohorts={T0 // 900: backlog} if backlog else {})

    first = [("0", Progress(end, end, [window(T0, 3, 0, 3)], [])),
             ("1", Progress(end, end, [window(T0, 2, 0, 2)], []))]
    second = [("0", Progress(end + 900, end + 900, [window(end, 1, 2, 2)], [])),
              ("1", Progress(end + 900, end + 900, [window(end, 0, 1, 1)], []))]
    out = feed(desk, [first, second])
    rows = [r for tag, r in out if tag == "facility"]
    assert [(r["facility_id"], r["window_end"], r["arrivals"], r["departures"], r["backlog"])
            for r in rows] == [("P1", iso(end), 5, 0, 5), ("P1", iso(end + 900), 1, 3, 3)]
    assert all(r["subject"] == "facility" and r["kind"] is None for r in rows)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"facility": "P1", **labels})

    assert sample("delaywatch_facility_arrivals_total") == 6  # counters add the windows
    assert sample("delaywatch_facility_departures_total") == 3
    assert sample("delaywatch_facility_backlog_packages") == 3  # gauges hold the last
    assert sample("delaywatch_facility_score", signal="delay") == 0.0


def test_one_shard_sends_its_figures_and_the_desk_passes_them_on_once() -> None:
    registry = CollectorRegistry()
    desk = new_desk(metrics=make_flow_metrics(registry))
    row = {"subject": "facility", "facility_id": "P9", "window_end": iso(T0 + H),
           "kind": "facility_slowdown", "score": 1.2,
           "arrivals": 4, "departures": 1, "backlog": 7, "waiting_12h": 2, "held": 3,
           "held_usual": 1.5, "dwell_p90_hours": 2.0,
           "scores": {"delay": 1.2, "silence": 0.0, "feed": 0.1}}
    lane = {"subject": "lane", "facility_id": "P9", "lane_to": "N1", "score": 0.5}
    out = feed(desk, [[("0", Progress(T0 + H, T0 + H, [], [], [(T0 + H, [row, lane])]))],
                      [("0", progress(T0 + 2 * H, T0 + 2 * H))]])
    assert out == [("facility", row), ("facility", lane)]
    assert registry.get_sample_value("delaywatch_facility_incident_score",
                                     {"facility": "P9"}) == 1.2
    assert registry.get_sample_value("delaywatch_facility_waiting_12h_packages",
                                     {"facility": "P9"}) == 2
    assert registry.get_sample_value("delaywatch_facility_dwell_p90_seconds",
                                     {"facility": "P9"}) == 7200
    assert registry.get_sample_value("delaywatch_facility_score",
                                     {"facility": "P9", "signal": "delay"}) == 1.2
    assert registry.get_sample_value("delaywatch_facility_backlog_packages",
                                     {"facility": "N1"}) is None  # lanes are no facility
    quiet = row | {"window_end": iso(T0 + 2 * H), "kind": None, "dwell_p90_hours": None}
    feed(desk, [[("0", Progress(T0 + 3 * H, T0 + 3 * H, [], [], [(T0 + 2 * H, [quiet])]))]])
    assert registry.get_sample_value("delaywatch_facility_incident_score",
                                     {"facility": "P9"}) == 0.0  # no kind: nothing opens
    assert registry.get_sample_value("delaywatch_facility_dwell_p90_seconds",
                                     {"facility": "P9"}) is None  # no departure: no series


def test_facility_gauges_follow_every_row_though_only_changes_are_set() -> None:
    """``FlowMetrics.facility`` sets a gauge only when its value changes: after each row of
    a run of repeats, changes, zero counts and a dwell coming and going, every series reads
    what setting all of them from that row reads."""
    registry = CollectorRegistry()
    metrics = make_flow_metrics(registry)
    rng = random.Random(3)
    arrivals = departures = 0
    for step in range(300):
        row = {"subject": "facility", "facility_id": "P1",
               "kind": rng.choice([None, None, "facility_slowdown"]),
               "score": rng.choice([0.0, 1.5]), "arrivals": rng.choice([0, 0, 4]),
               "departures": rng.choice([0, 2]), "backlog": rng.choice([0, 3, 3, 7]),
               "waiting_12h": rng.choice([0, 1]), "held": rng.choice([0, 2]),
               "held_usual": rng.choice([0.0, 1.5]),
               "dwell_p90_hours": rng.choice([None, None, 2.0, 3.5]),
               "scores": {s: rng.choice([0.0, -0.0, 0.8]) for s in ("delay", "silence", "feed")}}
        metrics.facility(row)
        arrivals += row["arrivals"]
        departures += row["departures"]

        def sample(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, {"facility": "P1", **labels})

        assert sample("delaywatch_facility_arrivals_total") == arrivals, step
        assert sample("delaywatch_facility_departures_total") == departures, step
        assert sample("delaywatch_facility_backlog_packages") == row["backlog"]
        assert sample("delaywatch_facility_waiting_12h_packages") == row["waiting_12h"]
        assert sample("delaywatch_facility_held_packages") == row["held"]
        assert sample("delaywatch_facility_held_usual_packages") == row["held_usual"]
        assert sample("delaywatch_facility_incident_score") == (
            row["score"] if row["kind"] else 0.0)
        for signal, score in row["scores"].items():
            got = sample("delaywatch_facility_score", signal=signal)
            assert got == score
            if got == 0:
                assert math.copysign(1.0, got) == 1.0, step  # never -0.0
        dwell = row["dwell_p90_hours"]
        assert sample("delaywatch_facility_dwell_p90_seconds") == (
            None if dwell is None else dwell * 3600)


def test_desks_pickled_before_the_figures_resume() -> None:
    from detectors.facility import FacilityMonitor, FacilityWindow
    from detectors.incidents import IncidentDesk, IncidentManager

    desk = new_desk()
    del desk.__dict__["_figures"]
    incidents = IncidentDesk(FacilityMonitor(), IncidentManager())
    del incidents.__dict__["keep_figures"], incidents.__dict__["_rows"]
    desk, incidents = pickle.loads(pickle.dumps(desk)), pickle.loads(pickle.dumps(incidents))
    assert feed(desk, [[("0", progress(T0 + H, T0 + H))]]) == []
    assert incidents.assess(T0 + 900, [FacilityWindow("P1", T0, T0 + 900)]) == []
    assert incidents.take_figures() == []  # off, as it was (the flow sets it on resume)


def test_a_late_move_is_told_only_when_an_incident_held_the_package() -> None:
    """``moved_late``: the package already moved on, now expected late. Folded into the delay
    incident that covered its silence, it makes one incident message, which says it moves
    again: no all-clear follows; without an incident nobody is told."""
    desk = new_desk()
    opened = T0 + 2 * H
    slowdown = incident("facility_slowdown", "P1", opened)
    moved = record("M", T0 + 20 * H, kind="moved_late") | {
        "last_scan_time": iso(T0), "new_estimate": iso(T0 + 60 * H),
        "promised_by": iso(T0 + 40 * H)}
    alone = record("N", T0 + 20 * H, kind="moved_late", facility="P2") | {
        "last_scan_time": iso(T0)}
    out = feed(desk, [[("0", moved), ("0", alone),
                       ("0", progress(T0 + 24 * H, T0 + 24 * H, [(opened, [slowdown])]))]])
    alerts = [(r["kind"], r["package_id"], r["incident_key"]) for tag, r in out
              if tag == "alert"]
    assert alerts == [("incident_delay", "M", slowdown["incident_key"])]
    [message] = [r for tag, r in out if tag == "message"]  # held 1 h, then out
    assert (message["kind"], message["packages"]) == ("incident_delay", ["M"])
    assert message["new_estimate"] == iso(T0 + 60 * H)
    resolved = slowdown | {"status": "resolved", "resolved_at": iso(T0 + 30 * H)}
    out = feed(desk, [[("0", progress(T0 + 31 * H, T0 + 31 * H, [(T0 + 30 * H, [resolved])]))],
                      [("0", record("Z", T0 + 32 * H, facility="P3")),  # time moves on
                       ("0", progress(T0 + 34 * H, T0 + 34 * H))]])
    assert [r for tag, r in out if tag == "message" and r["package_id"] == "M"] == []
    assert desk.finish() == []


def test_a_late_move_sees_an_incident_that_opened_just_before_it() -> None:
    """The tracker dates a ``moved_late`` record at the move (not at its watermark, hours
    before): the desk decides it once the windows up to the move are assessed, so an
    incident that opened an hour before the package left still explains it; one that opened
    after it left does not."""
    desk = new_desk()
    moved_at = T0 + 20 * H
    before = incident("weather", "P1", moved_at - H)
    after = incident("facility_slowdown", "P2", moved_at + H // 2)
    late = [record(pid, moved_at, kind="moved_late", facility=fac) | {
        "last_scan_time": iso(T0), "watermark": moved_at} for pid, fac in (("A", "P1"),
                                                                          ("B", "P2"))]
    out = feed(desk, [[("0", late[0]), ("0", late[1]),
                       ("0", progress(moved_at + 2 * H, moved_at + 2 * H,
                                      [(moved_at - H, [before]),
                                       (moved_at + H // 2, [after])]))]])
    assert [(r["package_id"], r["incident_key"]) for tag, r in out if tag == "alert"] == [
        ("A", before["incident_key"])]


def test_a_late_move_off_the_road_waits_for_its_lane_incident() -> None:
    """A ``moved_late`` off the road (``moved_to``) is decided only once the windows up to
    ``lane_wait_seconds`` after its arrival are assessed: the incident of its lane, opening
    on these late arrivals 3 h later, holds it; without the wait it would have been decided
    before that incident opened, and nobody told."""
    def run(wait: int) -> list[Out]:
        desk = NetworkDesk(IncidentFolder(grace_seconds=H, lane_wait_seconds=wait),
                           MessageGrouper(hold_seconds=H))
        arrived = T0 + 20 * H
        lane = incident("lane_delay", "P1", arrived + 3 * H) | {"lane_to": "N2"}
        late = record("R", arrived, kind="moved_late", facility=None) | {  # type: ignore[arg-type]
            "last_event_code": "TL", "departed_from": "P1", "moved_to": "N2",
            "last_scan_time": iso(T0), "watermark": arrived}
        return feed(desk, [[("0", late), ("0", progress(arrived + H, arrived + 2 * H))],
                           [("0", progress(arrived + 8 * H, arrived + 8 * H,
                                           [(arrived + 3 * H, [lane])]))]])

    told = [(r["package_id"], r["kind"]) for tag, r in run(6 * H) if tag == "alert"]
    assert told == [("R", "incident_delay")]
    assert [tag for tag, _ in run(0)] == ["incident"]


def test_a_package_s_records_wait_behind_its_late_move_off_the_road() -> None:
    """The records a package makes after its ``moved_late`` off the road (held for the lane
    wait) are decided after it: its next silence's incident still hears it move on, and that
    incident's all-clear goes out, with the wait as without it."""
    def run(wait: int) -> list[str]:
        desk = NetworkDesk(IncidentFolder(grace_seconds=H, lane_wait_seconds=wait),
                           MessageGrouper(hold_seconds=H))
        t = T0 + 20 * H  # R comes off the lane X > Y at Y, late
        lane = incident("lane_delay", "X", t - H) | {"lane_to": "Y"}
        slow = incident("facility_slowdown", "Y", t + 2 * H)
        slow_end = slow | {"status": "resolved", "resolved_at": iso(t + 9 * H)}
        late = _rec("R", "moved_late", "", t, T0) | {
            "facility_id": None, "last_event_code": "TL", "departed_from": "X",
            "moved_to": "Y", "silence_seconds": 20 * H}
        out: list[Out] = []
        for item in [late, Progress(t, t, [], [(t - H, [lane])]),
                     _rec("R", "watch", "Y", t + 3 * H, t, ep=2),  # its next silence, at Y
                     Progress(t + 3 * H, t + 3 * H, [], [(t + 2 * H, [slow])]),
                     _rec("R", "moved", "Y", t + 8 * H, t, ep=2),  # moves on from Y
                     Progress(t + 8 * H, t + 8 * H, [], []),
                     Progress(t + 12 * H, t + 12 * H, [], [(t + 9 * H, [slow_end])])]:
            desk.add("0", item)
            out += desk.step()
        out += desk.finish()
        return sorted(r["alert_key"].rsplit(":", 1)[1] for tag, r in out
                      if tag == "message" and r["alert_key"].startswith("Y:"))

    assert run(0) == run(6 * H) == ["back_on_track", "incident_delay"]


def test_a_watched_package_delivered_before_its_incident_is_assessed_is_not_told() -> None:
    """The race of the test above, but the move that ended the watch was the delivery: no
    delay message for a package already delivered."""
    desk = NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=H))
    end = T0 + 20 * H
    desk.add("0", _rec("W", "watch", "P1", end, T0, wm=end - 5 * H))
    desk.add("0", Progress(end - 5 * H, end, [], [(end, [incident("facility_slowdown", "P1",
                                                                  end)])]))
    out = desk.step()
    desk.add("0", _rec("W", "moved", "P1", end + 2 * H, T0, wm=end - 4 * H)
             | {"ended": "delivered"})
    desk.add("0", Progress(end - 3 * H, end + 2 * H, [], []))
    out += desk.step()
    desk.add("0", Progress(end + 2 * H, end + 3 * H, [], []))
    out += desk.step() + desk.finish()
    assert [tag for tag, _ in out] == ["incident"]


def test_a_late_move_after_the_customer_heard_of_the_incident_tells_nothing_more() -> None:
    """A customer told of an incident (delay, then all-clear) is not told of it a third time
    when a package of theirs later moves on late from a second hold by the same incident
    (a region's weather holding it at a second plant)."""
    desk = new_desk()
    weather = incident("weather", "P1", T0 + 2 * H) | {"facilities": "P1 P2"}
    held = record("A", T0 + 4 * H, ref="C1")
    moved = record("A", T0 + 9 * H, kind="moved")
    resolved = weather | {"status": "resolved", "resolved_at": iso(T0 + 8 * H)}
    again = record("A", T0 + 30 * H, kind="moved_late", facility="P2", ref="C1") | {
        "last_scan_time": iso(T0 + 7 * H), "watermark": T0 + 30 * H, "episode": 2}
    out = feed(desk, [[("0", held), ("0", progress(T0 + 5 * H, T0 + 5 * H,
                                                   [(T0 + 2 * H, [weather])]))],
                      [("0", moved), ("0", progress(T0 + 12 * H, T0 + 12 * H,
                                                    [(T0 + 8 * H, [resolved])]))],
                      [("0", again), ("0", progress(T0 + 32 * H, T0 + 32 * H))]])
    assert [r["kind"] for tag, r in out if tag == "message"] == ["incident_delay",
                                                                  "back_on_track"]
    assert [r["kind"] for tag, r in out if tag == "alert"] == ["incident_delay",
                                                                "back_on_track"]


# -- found by a review (2026-11-24): watched packages and incidents that open or grow --------

def _rec(pid: str, kind: str, fac: str, at: int, last: int, *, wm: int | None = None,
         ep: int = 1) -> dict:
    return {"alert_key": f"{pid}:{kind}:{ep}", "kind": kind, "package_id": pid, "episode": ep,
            "facility_id": fac, "last_event_code": "A1", "last_scan_time": iso(last),
            "alert_time": iso(at), "recipient_ref": f"C-{pid}",
            "watermark": at if wm is None else wm, "evidence": "silent", "new_estimate": None}


def _weather(status: str, opened: int, affected: int, hubs: str = "H1 H2") -> dict:
    return {"incident_key": "H1:weather:x", "kind": "weather", "facility_id": "H1",
            "lane_to": None, "status": status, "opened_at": iso(opened), "resolved_at": None,
            "facilities": hubs, "score": 2.0, "affected_packages": affected,
            "evidence": "Region R: its hubs are delayed at once."}


@pytest.mark.parametrize(("lateness_h", "scan_late_h"), [(6, 5.5), (0.5, 0)])
def test_a_package_that_left_before_an_incident_opened_is_not_told_it_held_it(
    lateness_h: float, scan_late_h: float
) -> None:
    """Its move record is decided at its watermark + grace, after the windows ending by
    then: an incident opening in one of them after the move (a move scan hours late, or a
    lateness under the grace) folded the package, still watched, as held by it."""
    desk = NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=2 * H))
    watch_at, moved_at = T0 + 20 * H, T0 + 24 * H
    opened = moved_at + 900  # 15 min after it left
    made = int(moved_at + scan_late_h * H - lateness_h * H)  # the tracker's watermark then
    incident = {"incident_key": "P1:facility_slowdown:x", "kind": "facility_slowdown",
                "facility_id": "P1", "lane_to": None, "status": "open",
                "opened_at": iso(opened), "resolved_at": None, "facilities": "P1",
                "evidence": "P1 is holding 50 packages that usually leave by now."}
    desk.add("0", _rec("X", "watch", "P1", watch_at, T0))
    desk.add("0", Progress(watch_at + H, watch_at + 2 * H, [], []))
    out = desk.step()
    desk.add("0", _rec("X", "moved", "P1", moved_at, T0, wm=made))
    desk.add("0", Progress(opened + 3 * H, opened + 3 * H, [], [(opened, [incident])]))
    out += desk.step() + desk.finish()
    assert [tag for tag, _ in out] == ["incident"]  # nobody told


def test_a_watch_made_as_an_incident_opens_is_told_though_its_move_is_decided_first() -> None:
    """One shard: the incident opening at window end E holds a package (the tracker's watch,
    made at E, dated as of its watermark 6 h before), which moves on 2 h later; its move is
    dated 6 h behind too, so both are decided before the window E that opens the incident.
    The customer still hears of the incident that held the package, and that it moves again
    (as when the watch was folded before the move); one that moved before the incident
    opened is not told, and after a snapshot in between the same comes out."""
    def run(snapshot: bool) -> list[Out]:
        desk = NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=H))
        end = T0 + 20 * H
        slow = incident("facility_slowdown", "P1", end)
        desk.add("0", _rec("W", "watch", "P1", end, T0, wm=end - 5 * H))
        desk.add("0", _rec("EARLY", "watch", "P1", end - 3 * H, T0, wm=end - 9 * H))
        desk.add("0", Progress(end - 5 * H, end, [], [(end, [slow])]))
        out = desk.step()
        desk.add("0", _rec("EARLY", "moved", "P1", end - H, T0, wm=end - 7 * H))
        desk.add("0", _rec("W", "moved", "P1", end + 2 * H, T0, wm=end - 4 * H))
        desk.add("0", Progress(end - 3 * H, end + 2 * H, [], []))
        out += desk.step()
        assert [tag for tag, _ in out] == []  # both moves decided, the incident not yet
        if snapshot:
            desk = pickle.loads(pickle.dumps(desk))
        desk.add("0", Progress(end + 2 * H, end + 3 * H, [], []))
        out += desk.step() + desk.finish()
        return out

    out = run(snapshot=False)
    assert [(tag, r["kind"], r.get("package_id")) for tag, r in out] == [
        ("incident", "facility_slowdown", None), ("alert", "incident_delay", "W"),
        ("alert", "back_on_track", "W"), ("message", "incident_delay", "W")]
    folded, message = out[1][1], out[3][1]
    assert folded["alert_time"] == iso(T0 + 20 * H)  # told as of the opening
    assert out[2][1]["alert_key"] == "W:back_on_track:1"
    assert message["packages"] == ["W"] and message["moving"]
    assert run(snapshot=True) == out


def test_a_package_watched_where_an_incident_grows_is_told_as_of_then() -> None:
    man = IncidentManager()
    desk = NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=2 * H))
    ready = []
    for i in range(1, 24):  # weather over H1 and H2 from 00:30, H3 too from 03:00
        hubs = ("H1", "H2", "H3") if i >= 12 else ("H1", "H2")
        records = man.update("H1", T0 + i * 900, 2.0, "weather", "region R delayed.",
                             2000 if i >= 12 else 1000, facilities=hubs)
        if records:
            ready.append((T0 + i * 900, records))
    desk.add("0", _rec("Z", "watch", "H3", T0 - 2 * H, T0 - 20 * H))  # silent at H3
    desk.add("0", Progress(T0 + 5 * H, T0 + 5 * H, [], ready))
    told = [r for tag, r in desk.step() if tag == "alert"]
    assert [(r["package_id"], r["kind"]) for r in told] == [("Z", "incident_delay")]
    assert told[0]["alert_time"] == iso(T0 + 3 * H)  # H3 is covered from then
    assert "Z" not in desk.watching.get("H3", {})


def test_a_watched_package_told_of_an_incident_and_its_end_is_not_told_when_it_grows() -> None:
    desk = NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=2 * H))
    desk.add("0", _rec("X", "watch", "H1", T0, T0 - 20 * H))
    desk.add("0", Progress(T0 + 1, T0 + 1, [], []))
    out = desk.step()
    # the weather opens over H1 and H2 at 01:00; X moves on to H2 (scan at 06:30)
    desk.add("0", _rec("X", "moved", "H1", T0 + int(6.5 * H), T0 - 20 * H, wm=T0 + H // 2))
    desk.add("0", Progress(T0 + 2 * H, T0 + 2 * H, [], [(T0 + H, [_weather("open", T0 + H,
                                                                           100)])]))
    out += desk.step()
    desk.add("0", Progress(T0 + 4 * H, T0 + 4 * H, [], []))  # "held, moving again": closed
    out += desk.step()
    desk.add("0", _rec("X", "watch", "H2", T0 + 14 * H, T0 + int(6.5 * H), ep=2))  # silent
    desk.add("0", Progress(T0 + 15 * H, T0 + 16 * H, [], []))
    out += desk.step()
    desk.add("0", Progress(T0 + 20 * H, T0 + 20 * H, [], [
        (T0 + 16 * H, [_weather("update", T0 + H, 300)])]))  # the open incident grows
    out += desk.step() + desk.finish()
    messages = [r for tag, r in out if tag == "message"]
    assert len(messages) == 1 and messages[0]["moving"]  # told once, with its move


def test_a_hub_an_open_weather_incident_spreads_to_is_named_at_once() -> None:
    """The manager added the hub but wrote no record until the affected count moved by 25 %:
    nobody downstream (the folder, incidents.jsonl) knew of it, and a package stalled there
    got a plain stall message."""
    man = IncidentManager()
    desk = NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=2 * H))
    ready = []
    for i in range(1, 40):
        hubs = ("H1", "H2") if i < 4 else ("H1", "H2", "H3")  # H3 hit from 01:00
        records = man.update("H1", T0 + i * 900, 2.0, "weather", "region R delayed.",
                             1000 if i < 4 else 1100, facilities=hubs)  # +10 %: no update
        if records:
            ready.append((T0 + i * 900, records))
    statuses = [(r["status"], r["facilities"]) for _, records in ready for r in records]
    assert statuses == [("open", "H1 H2"), ("update", "H1 H2 H3")]
    desk.add("0", _rec("Y", "stall", "H3", T0 + 6 * H, T0 - 20 * H))
    desk.add("0", Progress(T0 + 9 * H, T0 + 9 * H, [], ready))
    out = desk.step() + desk.finish()
    assert [r["kind"] for tag, r in out if tag == "message"] == ["incident_delay"]


def test_updates_of_an_incident_queue_one_fold_check_per_watched_package() -> None:
    """Each update record queued another check for every package watched at the incident's
    facilities (found by a review): the checks piled up with the updates."""
    desk = NetworkDesk(IncidentFolder(grace_seconds=H), MessageGrouper(hold_seconds=2 * H))
    for i in range(20):
        desk.add("0", _rec(f"W{i}", "watch", "H1", T0, T0 - 20 * H))
    desk.add("0", Progress(T0 + 1, T0 + H, [], []))
    desk.step()
    assert len(desk.watching["H1"]) == 20
    updates = [(T0 + H + 900 * k, [_weather("open" if k == 1 else "update", T0 + H + 900,
                                            100 * k)])
               for k in range(1, 4)]  # opened, then two updates, all within the grace
    desk.add("0", Progress(T0 + 2 * H, T0 + 2 * H, [], updates))
    desk.step()
    checks = [held for held in desk._held if held[3]["kind"] == "fold_watched"]
    assert len(checks) == 20
    desk.add("0", Progress(T0 + 4 * H, T0 + 4 * H, [], []))
    told = [r["package_id"] for tag, r in desk.step() if tag == "alert"]
    assert sorted(told) == sorted(f"W{i}" for i in range(20)) and desk._checking == set()


# -- several shards: holds left on time, judged here (2026-11-25) ---------------------------

def _hold(pid: str, fac: str, last: int, moved: int) -> Held:
    """A shard's hold: ``pid`` sat at ``fac`` from ``last`` and left on time at ``moved``."""
    return Held(pid, fac, None, "A1", last, moved, None, f"{fac} plant", None, moved)


def _late(pid: str, at: int, kind: str = "late_again", **more: Any) -> dict[str, Any]:
    """A shard's ``late_again`` record: ``pid`` scanned at P9 at ``at``, now late."""
    return {"alert_key": f"{pid}:moved_late:2", "kind": kind, "package_id": pid,
            "episode": 2, "facility_id": "P9", "departed_from": None,
            "facility_name": "P9 plant", "last_event_code": "A1",
            "last_scan_time": iso(at - H), "silence_seconds": H, "alert_time": iso(at),
            "recipient_ref": f"C-{pid}", "evidence": "Moving again: scanned at P9 after 1 h.",
            "new_estimate": iso(at + 40 * H), "promised_by": iso(at + 20 * H),
            "p_late": 0.97, "scanned_at": "P9 plant", "watermark": at, **more}


def test_a_later_scan_found_late_tells_of_the_hold_an_incident_covered() -> None:
    """Several shards: a hold left on time is kept only if a delay incident covered it;
    a later scan finding the package late (``late_again``) then tells of that hold, with
    its place and times and the estimate from the later scan, once; a package whose hold
    no incident covered, or whose customer was told of a newer silence since, is not."""
    desk = new_desk(shards=2)
    opened = T0 + 2 * H
    slowdown = incident("facility_slowdown", "P1", opened)
    out = feed(desk, [[("0", _hold("A", "P1", T0, T0 + 10 * H)),      # covered
                       ("0", _hold("B", "P2", T0, T0 + 10 * H)),      # no incident at P2
                       ("0", _hold("C", "P1", T0, T0 + 10 * H)),      # covered, told since
                       ("0", progress(T0 + 12 * H, T0 + 12 * H, [(opened, [slowdown])])),
                       ("1", progress(T0 + 12 * H, T0 + 12 * H))],
                      [("0", record("C", T0 + 14 * H, facility="P7")),  # its own stall
                       ("0", _late("A", T0 + 20 * H)), ("0", _late("B", T0 + 20 * H)),
                       ("0", _late("C", T0 + 20 * H)), ("0", _late("A", T0 + 21 * H)),
                       ("0", progress(T0 + 24 * H, T0 + 24 * H)),
                       ("1", progress(T0 + 24 * H, T0 + 24 * H))]])
    alerts = [r for tag, r in out if tag == "alert"]
    assert [(r["kind"], r["package_id"]) for r in alerts] == [
        ("stall", "C"), ("incident_delay", "A")]
    told = alerts[1]
    assert told["incident_key"] == slowdown["incident_key"] and told["moving"]
    assert told["alert_key"] == "A:incident_delay:2"
    assert (told["facility_id"], told["last_scan_time"]) == ("P1", iso(T0))
    assert told["silence_seconds"] == 10 * H and told["alert_time"] == iso(T0 + 20 * H)
    assert told["new_estimate"] == iso(T0 + 60 * H)  # the later scan's
    assert told["evidence"].endswith(
        f"Moving again: held 10 h at P1 plant until {iso(T0 + 10 * H)}, now scanned at "
        "P9 plant.")
    assert "scanned_at" not in told and "again" not in told
    assert desk._holds == {}


def test_a_late_move_with_holds_behind_tells_of_one_of_them_if_none_held_it_there() -> None:
    """Several shards: a ``moved_late`` that says ``again`` (holds were sent before) folds
    into an incident that held it where it just sat if one did (and its holds are done
    with), else into the hold an incident covered before."""
    for here, expect in ((True, "P9"), (False, "P1")):
        desk = new_desk(shards=2)
        incidents = [incident("facility_slowdown", "P1", T0 + 2 * H)]
        if here:
            incidents.append(incident("weather", "P9", T0 + 14 * H))
        late = _late("A", T0 + 20 * H, kind="moved_late", again=True) | {
            "last_scan_time": iso(T0 + 12 * H), "silence_seconds": 8 * H}
        out = feed(desk, [[("0", _hold("A", "P1", T0, T0 + 10 * H)),
                           ("0", progress(T0 + 12 * H, T0 + 12 * H,
                                          [(T0 + 2 * H, incidents[:1])])),
                           ("1", progress(T0 + 12 * H, T0 + 12 * H))],
                          [("0", late), ("0", progress(T0 + 24 * H, T0 + 24 * H,
                                                       [(T0 + 14 * H, incidents[1:])])),
                           ("1", progress(T0 + 24 * H, T0 + 24 * H))]])
        [told] = [r for tag, r in out if tag == "alert"]
        assert told["facility_id"] == expect, here
        assert "scanned_at" not in told and "again" not in told
        assert desk._holds == {}


def test_a_watched_package_told_of_an_incident_is_not_told_again_of_its_move() -> None:
    """Several shards check a watched package's move too: its ``moved_late`` (and the hold
    it made, kept by the incident) tell the customer nothing the watch told already."""
    desk = new_desk(shards=2)
    opened = T0 + 2 * H
    slowdown = incident("facility_slowdown", "P1", opened)
    watch = record("W", T0 + 5 * H, kind="watch") | {"last_scan_time": iso(T0)}
    moved = record("W", T0 + 10 * H, kind="moved") | {"last_scan_time": iso(T0)}
    late = record("W", T0 + 10 * H, kind="moved_late") | {
        "last_scan_time": iso(T0), "silence_seconds": 10 * H, "episode": 2,
        "watermark": T0 + 10 * H}
    out = feed(desk, [[("0", watch), ("0", progress(T0 + 6 * H, T0 + 6 * H,
                                                    [(opened, [slowdown])])),
                       ("1", progress(T0 + 6 * H, T0 + 6 * H))],
                      [("0", moved), ("0", late), ("0", _hold("W", "P1", T0, T0 + 10 * H)),
                       ("0", progress(T0 + 14 * H, T0 + 14 * H)),
                       ("1", progress(T0 + 14 * H, T0 + 14 * H))],
                      [("0", _late("W", T0 + 20 * H)), ("0", progress(T0 + 24 * H, T0 + 24 * H)),
                       ("1", progress(T0 + 24 * H, T0 + 24 * H))]])
    assert [(r["kind"], r["package_id"]) for tag, r in out if tag == "alert"] == [
        ("incident_delay", "W"), ("back_on_track", "W")]
