"""The network step's logic without Bytewax: ``flows.network.NetworkDesk`` driven directly.

Package records and ``Progress`` go in as the shards would send them; what comes out is the
``("alert" | "message" | "incident", record)`` stream the flow writes.
"""

from __future__ import annotations

import doctest
import pickle
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

import flows.network
from detectors.folding import IncidentFolder
from flows.metrics import FlowMetrics, make_flow_metrics
from flows.network import NetworkDesk, Out, Progress
from notifiers.grouping import MessageGrouper

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
    assert [(tag, r["kind"]) for tag, r in out] == [("incident", "facility_stop"),
                                                    ("alert", "incident_delay")]


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
