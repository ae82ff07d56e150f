"""Live mode: the shard's clock follows wall time while the feed is idle, up to the hold.

``flows.dataflow._Shard`` is driven directly (``on_batch`` for the feed, ``on_notify`` for the
engine's timer) with ``time.monotonic`` replaced in ``flows.dataflow`` by a clock the test
moves, so an hour of idle feed takes no time at all.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import flows.dataflow
from detectors import ScanEvent, StallDetector
from detectors.tracker import PackageTracker
from flows.config import load_settings
from flows.dataflow import FlowContext, _Shard
from flows.metrics import make_flow_metrics

H = 3600
HOLD = 600
LATENESS = 30
BUCKET = 60
T0 = 1_790_000_000 - 1_790_000_000 % 3600  # event time of the first scan, on the hour


class WallClock:
    """Stands in for time.monotonic in flows.dataflow."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> WallClock:
    clock = WallClock()
    monkeypatch.setattr(flows.dataflow, "time", SimpleNamespace(monotonic=clock, time=time.time))
    return clock


def shard(tmp_path: Path, a1_threshold_hours: float, *, metrics: Any = None,
          mode: str = "live", shards: int = 1) -> _Shard:
    settings = load_settings(mode=mode, feed_silence_hold_seconds=HOLD, shards=shards)
    ctx = FlowContext(settings=settings, run_dir=tmp_path, metrics=metrics)
    detector = StallDetector(prior_hours={"A1": (a1_threshold_hours / 2, a1_threshold_hours)},
                             default_prior_hours=None, min_threshold=0, min_samples=10**9)
    tracker = PackageTracker(detector, allowed_lateness=LATENESS, bucket_seconds=BUCKET)
    return _Shard(ctx, "shard-0", tracker)


def alerts(result: tuple[list[Any], bool]) -> list[dict[str, Any]]:
    """The shard's alerts (its per-batch Progress records left out)."""
    return [x for x in result[0] if isinstance(x, dict)]


def label(pid: str, ts: int) -> ScanEvent:
    # due within the stall settings' tell_horizon_hours (24): told as soon as it stalls
    return ScanEvent(pid, "GX", "O-1", ts, ts, service="ground", promised_by_ts=ts + 12 * 3600,
                     recipient_ref=f"C-{pid}")


def arrived(pid: str, ts: int) -> ScanEvent:
    return ScanEvent(pid, "A1", "PLANT-1", ts, ts)


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_idle_wall_time_moves_the_clock_and_fires_a_stall_within_the_hold(
        tmp_path: Path, wall: WallClock) -> None:
    registry = CollectorRegistry()
    s = shard(tmp_path, a1_threshold_hours=0.05, metrics=make_flow_metrics(registry))  # 180 s
    assert s.notify_at() is not None
    last = T0 + 10
    out = alerts(s.on_batch([[label("P1", T0), arrived("P1", last)]]))
    assert out == []
    deadline = last + 180
    fired_at = None
    for idle in range(1, HOLD + 1):  # the engine's one-second timer, for ten minutes of silence
        wall.now += 1
        out = alerts(s.on_notify())
        assert s.tracker.max_event_ts == last + idle  # event time follows the wall clock
        if out:
            assert fired_at is None, "one stall per episode"
            fired_at = idle
            assert [a["alert_key"] for a in out] == ["P1:stall:1"]
            assert out[0]["alert_time"] == iso(last + idle - LATENESS)
    assert fired_at is not None, "the deadline passed within the hold: the stall must fire"
    # not before the watermark (clock - lateness) passed the deadline, at most a bucket after
    assert deadline <= last + fired_at - LATENESS <= deadline + BUCKET
    assert registry.get_sample_value("delaywatch_package_records_total", {"kind": "stall"}) == 1


def test_a_silent_feed_holds_the_clock_and_the_alert_fires_when_events_resume(
        tmp_path: Path, wall: WallClock) -> None:
    s = shard(tmp_path, a1_threshold_hours=1.0)  # P1 is overdue 1 h after its scan
    last = T0 + 10
    s.on_batch([[label("P1", T0), arrived("P1", last)]])
    deadline = last + H
    got: list[dict[str, Any]] = []
    for idle in (60, 300, HOLD, HOLD + 1, H, 2 * H, 6 * H):  # then hours of silence
        wall.now = 1000.0 + idle
        out = alerts(s.on_notify())
        got += out
        assert s.tracker.max_event_ts == last + min(idle, HOLD)  # the clock stops at the hold
    assert got == [], "a silent feed is not a silent network: no alert while it is silent"
    assert s.tracker.watermark < deadline

    # the feed comes back with events of the last hours: P1's deadline is long past
    wall.now += 5
    back = last + 2 * H
    out = alerts(s.on_batch([[label("P2", back)]]))
    assert [a["alert_key"] for a in out] == ["P1:stall:1"]
    assert out[0]["alert_time"] == iso(back - LATENESS)

    # after the resumed events the clock runs with wall time again (a fresh hold)
    wall.now += 5
    s.on_batch([[arrived("P2", back + 60)]])  # P2: due one hour later
    fired = []
    for idle in range(1, HOLD + 2):
        wall.now += 1
        out = alerts(s.on_notify())
        fired += out
        # idle time counts from the last batch, not from before the silence
        assert s.tracker.max_event_ts == back + 60 + min(idle, HOLD)
    assert fired == []  # P2's deadline (1 h) is beyond this hold, P1's episode is open


def test_replay_mode_asks_for_no_timer(tmp_path: Path, wall: WallClock) -> None:
    s = shard(tmp_path, a1_threshold_hours=0.05, mode="replay")
    assert s.notify_at() is None  # the engine never calls on_notify: only events move time
    s.on_batch([[label("P1", T0), arrived("P1", T0 + 10)]])
    assert s.notify_at() is None


def test_a_stall_put_off_by_the_tell_horizon_is_counted_once_and_told_a_day_before_the_promise(
        tmp_path: Path) -> None:
    registry = CollectorRegistry()
    s = shard(tmp_path, a1_threshold_hours=1.0, metrics=make_flow_metrics(registry),
              mode="replay")
    promise = T0 + 72 * H  # three days to spare: more than the settings' 24 h
    s.on_batch([[ScanEvent("P1", "GX", "O-1", T0, T0, service="ground", promised_by_ts=promise,
                           recipient_ref="C-P1"), arrived("P1", T0 + 10)]])
    out = []
    for hour in range(2, 40):  # another package's scans move event time past P1's deadline
        out += alerts(s.on_batch([[label(f"Q{hour}", T0 + hour * H)]]))
    assert [a for a in out if a["package_id"] == "P1"] == []
    assert registry.get_sample_value("delaywatch_stalls_deferred_total") == 1
    for hour in range(40, 50):  # a day before the promise P1 is still silent: told now
        out += alerts(s.on_batch([[label(f"Q{hour}", T0 + hour * H)]]))
    told = [a for a in out if a["package_id"] == "P1"]
    assert [a["alert_key"] for a in told] == ["P1:stall:1"]
    # at the first watermark past promise - 24 h (event time moves an hour per batch here)
    assert promise - 24 * H <= datetime.fromisoformat(told[0]["alert_time"]).timestamp() \
        <= promise - 24 * H + H
    assert registry.get_sample_value("delaywatch_stalls_deferred_total") == 1


def test_the_shard_sleeps_until_something_is_due_and_gives_what_a_tick_every_second_gives(
        tmp_path: Path, wall: WallClock) -> None:
    """Woken only when the clock reaches the next wheel bucket within the hold, the shard
    writes the alerts a one-second timer made it write, at the same event times, with a
    handful of wake-ups instead of one a second, and asks for none once nothing more is due
    within the hold (each wake-up costs a snapshot of the shard at the end of the epoch)."""

    def run(every_second: bool) -> tuple[list[dict[str, Any]], int, _Shard]:
        wall.now = 1000.0
        s = shard(tmp_path, a1_threshold_hours=0.05)  # P1 and P2 stall 180 s after a scan
        last = T0 + 10
        s.on_batch([[label("P1", T0), arrived("P1", last)]])
        wall.now += 200
        s.on_batch([[label("P2", T0 + 200), arrived("P2", last + 200)]])
        got: list[dict[str, Any]] = []
        wakes = 0
        stop = wall.now + HOLD + 60
        while wall.now < stop:
            if every_second:
                wall.now += 1
            else:
                at = s.notify_at()
                if at is None:
                    break
                wall.now += max((at - datetime.now(UTC)).total_seconds(), 0.0)
            wakes += 1
            got += alerts(s.on_notify())
        return got, wakes, s

    ticked, ticks, _ = run(every_second=True)
    slept, wakes, s = run(every_second=False)
    assert [a["alert_key"] for a in ticked] == ["P1:stall:1", "P2:stall:1"]
    assert slept == ticked  # the same alerts, alert times included
    # nothing is due before the hold: it sleeps (the clock stays where it last did something)
    assert s.notify_at() is None and s.tracker.max_event_ts <= T0 + 210 + HOLD
    assert wakes <= HOLD // BUCKET + 2 < ticks


def test_the_event_time_lag_grows_while_the_feed_is_silent_and_nothing_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sleeping shard updates no gauge: the lag is read at the scrape, so an alert on it
    still sees a silent feed (it is the operator's signal that scans stopped coming)."""
    registry = CollectorRegistry()
    s = shard(tmp_path, a1_threshold_hours=0.05, metrics=make_flow_metrics(registry))
    now = [float(T0 + 100)]
    monkeypatch.setattr(flows.dataflow, "time",
                        SimpleNamespace(monotonic=time.monotonic, time=lambda: now[0]))
    s.on_batch([[label("P1", T0), arrived("P1", T0 + 10)]])
    s.ctx.observe()
    lag = registry.get_sample_value("delaywatch_event_time_lag_seconds")
    assert lag == T0 + 100 - s.tracker.watermark > 0
    now[0] += 3600  # an hour without a scan, and without a call into the flow
    assert registry.get_sample_value("delaywatch_event_time_lag_seconds") == lag + 3600


def test_with_several_shards_each_ticks_every_second_until_its_clock_is_held(
        tmp_path: Path, wall: WallClock) -> None:
    """The network step waits for the lowest shard clock, and a shard cannot know when
    another's events move theirs: with several shards each keeps the one-second tick within
    the hold (a record of one waits at most a second for the other), then sleeps."""
    s = shard(tmp_path, a1_threshold_hours=0.05, shards=2)
    s.on_batch([[label("P1", T0), arrived("P1", T0 + 10)]])
    wakes = 0
    while (at := s.notify_at()) is not None:
        wait = (at - datetime.now(UTC)).total_seconds()
        assert 0.0 <= wait <= 1.1
        wall.now += wait
        s.on_notify()
        wakes += 1
    assert wakes == HOLD and s.tracker.max_event_ts == T0 + 10 + HOLD
