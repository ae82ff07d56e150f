"""The outbox: one row per alert key, durable across reopen, safe from two processes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifiers.metrics import NotifierMetrics
from notifiers.outbox import STATUSES, Outbox
from tests.notifiers.helpers import T0, make_alert


def test_enqueue_same_alert_twice_is_a_reported_no_op(outbox: Outbox) -> None:
    alert = make_alert("PKG-1")
    assert outbox.enqueue(alert, "r-1", now=T0) is True
    assert outbox.enqueue(alert, "r-1", now=T0 + timedelta(seconds=5)) is False
    assert outbox.enqueue(dict(alert, evidence="changed"), "r-2", now=T0) is False
    rows = outbox.rows()
    assert len(rows) == 1
    assert rows[0].recipient_ref == "r-1"
    assert rows[0].alert["evidence"] == alert["evidence"]  # the first write wins
    assert rows[0].created_at == T0


def test_enqueue_many_counts_duplicates_within_and_across_batches(
    outbox: Outbox, metrics: NotifierMetrics, registry
) -> None:
    first = outbox.enqueue_many([(make_alert(f"PKG-{i}"), "r-1") for i in range(10)], now=T0)
    assert (first.inserted, first.duplicates) == (10, 0)
    replay = [(make_alert(f"PKG-{i}"), "r-1") for i in range(5, 15)]  # 5 old, 5 new
    replay += [(make_alert("PKG-14"), "r-1")]  # repeated inside the batch
    second = outbox.enqueue_many(replay, now=T0)
    assert (second.inserted, second.duplicates) == (5, 6)
    assert outbox.stats()["pending"] == 15
    assert registry.get_sample_value("delaywatch_outbox_duplicates_total") == 6.0


def test_uniqueness_survives_reopen_and_does_not_reset_a_sent_row(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        assert box.enqueue(make_alert("PKG-1"), "r-1", now=T0)
        (row,) = box.claim_due(T0, 10)
        assert box.mark_sent(row.alert_key, T0)
    with Outbox(path) as box:  # the flow restarted and replays its output
        assert box.enqueue(make_alert("PKG-1"), "r-1", now=T0) is False
        row = box.get("PKG-1:stall:1")
        assert row is not None and row.status == "sent" and row.sent_at == T0
        assert box.claim_due(T0 + timedelta(days=1), 10) == []


@settings(max_examples=40, deadline=None)
@given(keys=st.lists(st.sampled_from([f"P{i}" for i in range(30)]), max_size=80))
def test_property_rows_equal_distinct_keys(tmp_path_factory, keys: list[str]) -> None:
    path = tmp_path_factory.mktemp("prop") / "o.sqlite"
    with Outbox(path, synchronous="NORMAL") as box:
        inserted = 0
        for i in range(0, len(keys), 7):  # uneven batches
            inserted += box.enqueue_many(
                [(make_alert(k), "r") for k in keys[i : i + 7]], now=T0
            ).inserted
        assert inserted == len(set(keys))
        assert sorted(r.alert_key for r in box.rows()) == sorted(f"{k}:stall:1" for k in set(keys))


def test_wal_mode_and_busy_timeout(outbox: Outbox) -> None:
    raw = sqlite3.connect(outbox.path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
    assert outbox._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


def test_rejects_bad_alerts_and_naive_times(outbox: Outbox) -> None:
    with pytest.raises(ValueError, match="alert_key"):
        outbox.enqueue({"kind": "stall"}, "r-1")
    with pytest.raises(ValueError, match="kind"):
        outbox.enqueue(make_alert("P", kind="exploded"), "r-1")
    with pytest.raises(ValueError, match="recipient_ref"):
        outbox.enqueue(make_alert("P"), "")
    with pytest.raises(ValueError, match="timezone-aware"):
        outbox.enqueue(make_alert("P"), "r-1", now=datetime(2025, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        outbox.claim_due(datetime(2025, 1, 1), 10)  # noqa: DTZ001
    assert outbox.rows() == []


def test_claim_due_takes_due_rows_once_oldest_first_and_honours_the_lease(outbox: Outbox) -> None:
    for i in range(5):
        outbox.enqueue(make_alert(f"P{i}"), f"r-{i}", now=T0 + timedelta(seconds=i))
    assert outbox.claim_due(T0 - timedelta(seconds=1), 10) == []  # nothing due yet
    first = outbox.claim_due(T0 + timedelta(seconds=10), 3, lease=60)
    assert [r.alert_key for r in first] == ["P0:stall:1", "P1:stall:1", "P2:stall:1"]
    second = outbox.claim_due(T0 + timedelta(seconds=10), 10, lease=60)
    assert [r.alert_key for r in second] == ["P3:stall:1", "P4:stall:1"]
    assert outbox.claim_due(T0 + timedelta(seconds=20), 10) == []  # all leased
    assert outbox.stats()["sending"] == 5
    # The sender died: after the lease the rows are due again, nothing is lost.
    again = outbox.claim_due(T0 + timedelta(seconds=71), 10)
    assert len(again) == 5


def test_a_customers_later_message_waits_while_an_earlier_one_is_still_to_go(
    outbox: Outbox
) -> None:
    """"Moving again" must not arrive before "running late": a customer's message is not
    claimed while an earlier one to them waits for a retry, quiet hours or another
    sender's lease; other customers' messages go on."""
    outbox.enqueue(make_alert("P1"), "r", now=T0)
    outbox.enqueue(make_alert("Q1"), "other", now=T0)
    outbox.enqueue(make_alert("P1", kind="back_on_track"), "r", now=T0 + timedelta(seconds=5))
    first = outbox.claim_due(T0, 10)
    assert [r.alert_key for r in first] == ["P1:stall:1", "Q1:stall:1"]
    assert outbox.mark_retry("P1:stall:1", 451, T0 + timedelta(seconds=60))
    assert outbox.mark_sent("Q1:stall:1", T0)
    assert outbox.claim_due(T0 + timedelta(seconds=30), 10) == []  # the stall is not due
    later = outbox.claim_due(T0 + timedelta(seconds=60), 10)
    assert [r.alert_key for r in later] == ["P1:stall:1", "P1:back_on_track:1"]  # in order
    # another sender's lease on the earlier one holds the later one too
    outbox.release(["P1:back_on_track:1"], T0)
    assert outbox.claim_due(T0 + timedelta(seconds=61), 10) == []


def test_retry_failure_defer_release_transitions(outbox: Outbox) -> None:
    for i in range(4):
        outbox.enqueue(make_alert(f"P{i}"), f"r-{i}", now=T0)
    rows = {r.alert_key: r for r in outbox.claim_due(T0, 10)}
    assert outbox.mark_retry("P0:stall:1", 451, T0 + timedelta(seconds=30))
    assert outbox.mark_failed("P1:stall:1", 452)
    assert outbox.defer("P2:stall:1", T0 + timedelta(hours=3))
    assert outbox.release(["P3:stall:1"], T0 + timedelta(seconds=5), code=421) == 1
    assert len(rows) == 4

    p0, p1, p2, p3 = (outbox.get(f"P{i}:stall:1") for i in range(4))
    assert (p0.status, p0.attempts, p0.last_error_code) == ("pending", 1, 451)
    assert p0.next_attempt_at == T0 + timedelta(seconds=30)
    assert (p1.status, p1.attempts, p1.last_error_code) == ("failed_permanent", 1, 452)
    assert not outbox.is_suppressed("r-1")  # exhausted retries do not suppress
    assert (p2.status, p2.attempts) == ("pending", 0)  # deferral is not an attempt
    assert p2.next_attempt_at == T0 + timedelta(hours=3)
    assert (p3.status, p3.attempts, p3.last_error_code) == ("pending", 0, 421)
    # Marks only apply to claimed rows: a stale retry cannot resurrect a finished row.
    assert outbox.mark_retry("P1:stall:1", 451, T0) is False
    assert outbox.get("P1:stall:1").status == "failed_permanent"


def test_a_claim_keeps_its_rows_only_while_its_lease_is_theirs(outbox: Outbox) -> None:
    """The lease a claim gave a row is its token: once it ran out and another claim took the
    row, the first claim can neither renew it (to send it) nor put it back (which would
    hand it to a third); a key alone still puts a row back, whoever holds it."""
    for i in range(3):
        outbox.enqueue(make_alert(f"P{i}"), f"r-{i}", now=T0)
    first = outbox.claim_due(T0, 10, lease=60)
    renewed = outbox.renew(first[0], T0 + timedelta(seconds=30), lease=60)
    assert renewed is not None and renewed.lease_until == first[0].lease_until + 30
    later = T0 + timedelta(seconds=70)  # P1 and P2's leases ran out; P0's was renewed
    second = outbox.claim_due(later, 10, lease=60)
    assert [r.alert_key for r in second] == ["P1:stall:1", "P2:stall:1"]
    assert outbox.renew(first[1], later) is None  # P1 is the second claim's now
    assert outbox.release(first[1:], later) == 0  # nor can the first put them back
    assert {outbox.get(f"P{i}:stall:1").status for i in (1, 2)} == {"sending"}
    assert outbox.release([first[0]], later) == 0  # an old token: renewed since
    assert outbox.release([renewed], later) == 1
    assert outbox.release(second[1:], later) == 1 and outbox.release(["P1:stall:1"], later) == 1
    assert {outbox.get(f"P{i}:stall:1").status for i in range(3)} == {"pending"}


def test_permanent_failure_suppresses_recipient_and_future_alerts(outbox: Outbox) -> None:
    outbox.enqueue_many([(make_alert("A"), "r-bad"), (make_alert("B"), "r-bad")], now=T0)
    outbox.enqueue(make_alert("C"), "r-good", now=T0)
    outbox.claim_due(T0, 1)  # claims A
    assert outbox.mark_failed("A:stall:1", 550, suppress_recipient=True)
    assert outbox.suppression("r-bad") == ("bounce", 550)
    assert outbox.get("B:stall:1").status == "suppressed"
    assert outbox.get("C:stall:1").status == "pending"
    assert outbox.enqueue(make_alert("D"), "r-bad", now=T0) is True
    assert outbox.get("D:stall:1").status == "suppressed"
    assert [r.alert_key for r in outbox.claim_due(T0 + timedelta(days=1), 10)] == ["C:stall:1"]
    assert outbox.unsuppress("r-bad") and not outbox.is_suppressed("r-bad")


def test_unsubscribe_is_idempotent_and_spares_sent_rows(outbox: Outbox) -> None:
    outbox.enqueue_many([(make_alert(p), "r-1") for p in ("A", "B")], now=T0)
    (a,) = outbox.claim_due(T0, 1)
    outbox.mark_sent(a.alert_key, T0)
    assert outbox.unsubscribe("r-1", now=T0) is True
    assert outbox.unsubscribe("r-1", now=T0) is False
    assert outbox.suppression("r-1") == ("unsubscribe", None)
    assert outbox.get("A:stall:1").status == "sent"
    assert outbox.get("B:stall:1").status == "suppressed"
    outbox.enqueue(make_alert("C"), "r-1", now=T0)
    assert outbox.get("C:stall:1").status == "suppressed"
    assert outbox.claim_due(T0 + timedelta(days=1), 10) == []


def test_depth_age_and_stats(outbox: Outbox) -> None:
    assert outbox.depth() == 0 and outbox.oldest_pending_age(T0) == 0.0
    assert outbox.stats() == dict.fromkeys(STATUSES, 0)
    outbox.enqueue(make_alert("A"), "r", now=T0)
    outbox.enqueue(make_alert("B"), "r", now=T0 + timedelta(seconds=100))
    assert outbox.depth() == 2
    assert outbox.oldest_pending_age(T0 + timedelta(seconds=250)) == pytest.approx(250.0)
    (a,) = outbox.claim_due(T0 + timedelta(seconds=250), 1)
    outbox.mark_sent(a.alert_key, T0 + timedelta(seconds=250))
    assert outbox.oldest_pending_age(T0 + timedelta(seconds=250)) == pytest.approx(150.0)
    assert outbox.stats() == {**dict.fromkeys(STATUSES, 0), "pending": 1, "sent": 1}


def test_enqueue_many_is_batched_fast_enough_for_the_flow(outbox: Outbox) -> None:
    items = [(make_alert(f"PKG-{i:06d}"), f"r-{i % 97}") for i in range(5000)]
    start = time.perf_counter()
    for i in range(0, len(items), 1000):
        outbox.enqueue_many(items[i : i + 1000], now=T0)
    elapsed = time.perf_counter() - start
    assert outbox.depth() == 5000
    assert elapsed < 5.0, f"5000 enqueues took {elapsed:.2f} s"


_WRITER = textwrap.dedent(
    """
    import json, sys
    from datetime import datetime, timezone
    sys.path.insert(0, sys.argv[3])
    from notifiers.outbox import Outbox
    from tests.notifiers.helpers import make_alert
    box = Outbox(sys.argv[1])
    n = int(sys.argv[2])
    now = datetime(2025, 3, 4, 15, 0, tzinfo=timezone.utc)
    inserted = duplicates = 0
    for start in range(0, n, 50):
        batch = [(make_alert(f"PKG-{i}"), "r-1") for i in range(start, min(n, start + 50))]
        if start >= 100:  # replay the batch before: what Bytewax does around a resume
            batch += [(make_alert(f"PKG-{i}"), "r-1") for i in range(start - 50, start)]
        result = box.enqueue_many(batch, now=now)
        inserted += result.inserted
        duplicates += result.duplicates
    print(json.dumps({"inserted": inserted, "duplicates": duplicates}))
    """
)


def test_two_processes_one_enqueues_while_the_other_drains(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    n = 600
    Outbox(path).close()  # create the schema first
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(n), str(Path.cwd())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    sent: list[str] = []
    with Outbox(path) as box:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = writer.poll() is None
            rows = box.claim_due(T0 + timedelta(seconds=1), 100)
            for row in rows:
                assert box.mark_sent(row.alert_key, T0)
                sent.append(row.alert_key)
            if not rows and not running:
                break
        out, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err.decode()
        result = json.loads(out)
        assert result == {"inserted": n, "duplicates": n - 100}
        assert len(sent) == n == len(set(sent))
        assert box.stats()["sent"] == n


def test_the_outbox_collector_reads_what_the_outbox_says_at_each_scrape(tmp_path: Path) -> None:
    """The flow daemon serves the outbox's depth and oldest pending age from the file itself,
    read-only at scrape time: the same figures as the outbox's own methods, none before the
    file exists, and a scrape never holds the writer up."""
    from prometheus_client import CollectorRegistry

    from notifiers.metrics import OutboxCollector

    path = tmp_path / "outbox.sqlite"
    now = [T0]
    registry = CollectorRegistry()
    registry.register(OutboxCollector(path, now_fn=lambda: now[0]))

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name)

    assert sample("delaywatch_outbox_depth") is None  # nothing to read yet
    assert not path.exists()  # and the scrape did not create it
    # a filtered scrape (``/metrics?name[]=...``) knows the names before the file exists
    only_depth = registry.restricted_registry(["delaywatch_outbox_depth"])
    with Outbox(path, busy_timeout=0.5) as outbox:
        outbox.enqueue(make_alert("A"), "r", now=T0)
        outbox.enqueue(make_alert("B"), "r", now=T0 + timedelta(seconds=100))
        now[0] = T0 + timedelta(seconds=250)
        assert sample("delaywatch_outbox_depth") == outbox.depth() == 2
        assert [(s.name, s.value) for family in only_depth.collect()
                for s in family.samples] == [("delaywatch_outbox_depth", 2.0)]
        assert sample("delaywatch_outbox_oldest_pending_age_seconds") == pytest.approx(250.0)
        (a,) = outbox.claim_due(now[0], 1)
        outbox.mark_sent(a.alert_key, now[0])
        assert sample("delaywatch_outbox_depth") == 1
        assert sample("delaywatch_outbox_oldest_pending_age_seconds") == pytest.approx(150.0)
        # a reader in the middle of a scrape does not block the writer (WAL, read-only)
        reader = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM outbox").fetchone()
        assert outbox.enqueue(make_alert("C"), "r", now=now[0])
        reader.close()
        assert sample("delaywatch_outbox_depth") == 2


def test_next_due_is_when_the_earliest_pending_row_goes(outbox: Outbox) -> None:
    """``delaywatch send`` reports it, so that an operator whose run deferred everything
    (quiet hours) knows when the messages will go."""
    assert outbox.next_due() is None
    outbox.enqueue(make_alert("A"), "r", now=T0)
    outbox.enqueue(make_alert("B"), "r", now=T0)
    assert outbox.next_due() == T0  # due at once
    (a, b) = outbox.claim_due(T0, 2)
    outbox.defer(a.alert_key, T0 + timedelta(hours=9))  # quiet hours
    outbox.mark_retry(b.alert_key, 451, T0 + timedelta(minutes=5))  # backing off
    assert outbox.next_due() == T0 + timedelta(minutes=5)
    outbox.mark_sent(b.alert_key, T0 + timedelta(minutes=5))
    assert outbox.next_due() == T0 + timedelta(hours=9)


def test_an_outbox_from_before_superseded_is_rebuilt_with_its_rows(tmp_path: Path) -> None:
    """SQLite cannot change a CHECK: an outbox made before the status ``superseded`` gets a
    new table with every row and index, so a sender can mark a delay message superseded."""
    from notifiers.outbox import _SCHEMA

    old_schema = _SCHEMA.replace(",\n                         'superseded'", "")
    start = old_schema.index("CREATE INDEX IF NOT EXISTS outbox_done")  # (came with it)
    old_schema = old_schema[:start] + old_schema[old_schema.index(";", start) + 1:]
    assert "superseded" not in old_schema
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:
        con.executescript(old_schema)
        con.execute(
            "INSERT INTO outbox (alert_key, recipient_ref, kind, payload, status, attempts,"
            " next_attempt_at, created_at, updated_at, sent_at, last_error_code)"
            " VALUES ('P1:stall:1', 'r1', 'stall', '{\"alert_key\": \"P1:stall:1\"}',"
            " 'pending', 2, 10, 5, 6, NULL, 451)")
    with Outbox(path) as box:
        (row,) = box.rows()
        assert (row.alert_key, row.status, row.attempts, row.last_error_code) == (
            "P1:stall:1", "pending", 2, 451)
        assert box.supersede("P1:stall:1") and box.get("P1:stall:1").status == "superseded"
        assert box.stats()["superseded"] == 1
    con = sqlite3.connect(path)
    indexes = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    con.close()
    assert {"outbox_due", "outbox_open", "outbox_recipient_due", "outbox_done"} <= indexes
    Outbox(path).close()  # opened again: nothing to rebuild


def test_prune_deletes_only_rows_done_with_and_older_than_asked(
        outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox grows by every message at national volume: `send` deletes what is done
    with after smtp.keep_days of wall-clock time (a finished row's updated_at is the wall
    clock, whatever clock the sender was given). Never a row still to send."""
    import notifiers.outbox as module

    wall = [T0]
    monkeypatch.setattr(module, "_now", lambda: wall[0])
    day = 86400
    for i in range(6):
        outbox.enqueue(make_alert(f"P{i}"), f"r{i}", now=T0)
    outbox.claim_due(T0, 10)
    outbox.mark_sent("P0:stall:1", T0 + timedelta(days=500))  # (the sender's clock: ignored)
    outbox.release([outbox.get("P2:stall:1")], T0)  # back to pending: still to go
    outbox.mark_failed("P4:stall:1", 550)
    outbox.mark_sent("P5:stall:1", T0)
    wall[0] = T0 + timedelta(days=20)
    outbox.mark_sent("P1:stall:1", T0)
    outbox.supersede("P3:stall:1")
    wall[0] = T0 + timedelta(days=31)
    assert outbox.prune(30 * day, limit=2) == 2  # bounded: the oldest first
    assert outbox.prune(30 * day) == 1
    assert outbox.prune(30 * day) == 0
    left = {row.alert_key: row.status for row in outbox.rows()}
    assert left == {"P1:stall:1": "sent", "P2:stall:1": "pending", "P3:stall:1": "superseded"}
    # a message pruned is forgotten: the same key could be queued again (hence keep_days
    # longer than any resume of the flow reaches back)
    assert outbox.enqueue(make_alert("P0"), "r0", now=T0)


def test_prune_searches_the_index_of_finished_rows(outbox: Outbox) -> None:
    """Without statistics SQLite chose the status index and sorted every finished row, under
    the write lock the flow's sink waits on, at every send run."""
    seen: list[str] = []
    outbox._conn.set_trace_callback(seen.append)
    outbox.prune(86400)
    outbox._conn.set_trace_callback(None)
    (delete,) = [sql for sql in seen if sql.startswith("DELETE")]
    plan = outbox._conn.execute("EXPLAIN QUERY PLAN " + delete).fetchall()
    assert any("USING INDEX outbox_done" in str(row) for row in plan), plan
    assert not any("TEMP B-TREE" in str(row) for row in plan), plan
