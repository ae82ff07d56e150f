"""Bad input through the real dataflow: dead letters, counters, robustness, privacy, sources.

Every replay here runs ``flows.run.replay`` (the Bytewax flow, file sinks, outbox) over a file
written into ``tmp_path``. Counters live in the process-wide Prometheus registry that the flow
uses (``flows.run._metrics()``), shared with other tests: only differences are compared.
"""

from __future__ import annotations

import collections
import csv
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest

import flows.run
from detectors.events import REASONS
from flows.config import load_settings
from flows.metrics import OUTCOMES
from flows.run import ReplaySummary, replay
from flows.sources import JsonLinesSource, SimulatorSource

SHARDS = 2  # also exercises the parse step's grouping of a batch by shard


def _settings(data: Path, **kw: Any) -> Any:
    return load_settings(facilities=data / "facilities.csv", epoch_interval_seconds=0.05,
                         shards=SHARDS, **kw)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    # split on "\n" only: a JSON string may hold U+2028 or U+0085, which splitlines() breaks on
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def _sorted_alerts(run: Path) -> list[bytes]:
    return sorted(line for line in (run / "alerts.jsonl").read_bytes().split(b"\n") if line)


def _count(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _counters() -> dict[tuple[str, str], float]:
    flows.run._metrics()  # the flow's metrics exist before the first reading
    values = {("reason", r): _count("delaywatch_dead_letters_total", {"reason": r})
              for r in REASONS}
    values |= {("outcome", o): _count("delaywatch_scan_events_total", {"outcome": o})
               for o in OUTCOMES}
    values |= {("alert", sample.labels["kind"]): sample.value
               for family in REGISTRY.collect() if family.name == "delaywatch_alerts"
               for sample in family.samples if sample.name == "delaywatch_alerts_total"}
    return values


# --------------------------------------------------------------------------------------------
# One bad line per dead-letter reason

_OK = {"package_id": "BAD-1", "event_code": "A1", "facility_id": "PLT-1",
       "event_time": "2026-11-03T10:00:00+00:00", "ingest_time": "2026-11-03T10:05:00+00:00"}


def _line(**changes: Any) -> str:
    row = dict(_OK)
    for key, value in changes.items():
        if value is ...:
            del row[key]
        else:
            row[key] = value
    return json.dumps(row)


SECRET_REF = "C-SECRET-REF-\u0007"  # an invalid recipient_ref: must not be echoed in detail

BAD: dict[str, str] = {
    "bad_json": '{"package_id": "BAD-1", "event_code": ',
    "not_an_object": '["BAD-1", "A1", "PLT-1"]',
    "missing_field": _line(event_time=...),
    "wrong_type": _line(package_id=12345),
    "unknown_code": _line(event_code="ZZ"),
    "no_offset": _line(event_time="2026-11-03T10:00:00"),
    "bad_time": _line(event_time="yesterday at noon"),
    "absurd_time": _line(event_time="1999-12-31T23:00:00+00:00",
                         ingest_time="1999-12-31T23:05:00+00:00"),
    "bad_package_id": _line(package_id="BAD 1/x"),
    "bad_facility": _line(facility_id="PLT\u00071"),
    "missing_facility": _line(facility_id=None),
    "bad_header": _line(event_code="GX", service="ground", promised_date="2026-11-09",
                        promised_by="2026-11-10T03:00:00+00:00", destination="O0000001",
                        recipient_ref=SECRET_REF),
}


def test_there_is_a_bad_line_for_every_reason() -> None:
    assert set(BAD) == set(REASONS)


@pytest.fixture(scope="module")
def clean_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo file replayed as it is (no metrics): the reference alerts."""
    run = tmp_path_factory.mktemp("clean") / "run"
    summary = replay(JsonLinesSource(demo_data / "events.jsonl"), run, _settings(demo_data),
                     with_metrics=False)
    assert summary.dead_letters == {} and summary.alerts.get("stall")
    return run


class BadRun:
    def __init__(self, path: Path, run: Path, summary: ReplaySummary, lines: int,
                 bad_at: dict[int, tuple[str, str]], delta: dict[tuple[str, str], float]):
        self.path, self.run, self.summary, self.lines = path, run, summary, lines
        self.bad_at, self.delta = bad_at, delta


@pytest.fixture(scope="module")
def bad_run(demo_data: Path, tmp_path_factory: pytest.TempPathFactory) -> BadRun:
    """The demo file with one bad line per reason inserted at seeded places, replayed with
    the flow's metrics on."""
    good = (demo_data / "events.jsonl").read_bytes().split(b"\n")
    assert good[-1] == b""
    good = good[:-1]
    rng = random.Random(7)
    at = sorted(rng.sample(range(len(good) + len(BAD)), len(BAD)))
    reasons = list(BAD)
    rng.shuffle(reasons)
    bad_at = {n + 1: (reason, BAD[reason]) for n, reason in zip(at, reasons, strict=True)}
    out, it = [], iter(good)
    for n in range(1, len(good) + len(BAD) + 1):
        out.append(bad_at[n][1].encode() if n in bad_at else next(it))
    base = tmp_path_factory.mktemp("bad")
    path = base / "events.jsonl"
    path.write_bytes(b"\n".join(out) + b"\n")

    before = _counters()
    summary = replay(JsonLinesSource(path, batch_size=700), base / "run", _settings(demo_data))
    after = _counters()
    delta = {k: after[k] - before.get(k, 0.0) for k in after}
    return BadRun(path, base / "run", summary, len(out), bad_at, delta)


def test_each_bad_line_becomes_one_dead_letter(bad_run: BadRun) -> None:
    letters = _jsonl(bad_run.run / "dead_letters.jsonl")
    assert len(letters) == len(BAD)
    by_line = {d["line"]: d for d in letters}
    assert sorted(by_line) == sorted(bad_run.bad_at)  # the file's line numbers, 1-based
    for n, (reason, text) in bad_run.bad_at.items():
        d = by_line[n]
        assert set(d) == {"step", "reason", "detail", "line", "raw"}
        assert (d["step"], d["reason"], d["raw"]) == ("parse", reason, text), n
        assert isinstance(d["detail"], str) and 0 < len(d["detail"]) <= 200
        assert d["detail"].isprintable()
    assert "SECRET-REF" not in by_line[next(
        n for n, (r, _) in bad_run.bad_at.items() if r == "bad_header")]["detail"]


def test_valid_lines_are_all_accounted_for(bad_run: BadRun, clean_run: Path) -> None:
    s = bad_run.summary
    assert s.events == bad_run.lines
    assert s.dead_letters == dict.fromkeys(REASONS, 1)
    assert s.events - len(BAD) == s.accepted + s.duplicates + s.out_of_order + s.no_header
    # the bad lines change nothing else: the alerts of the clean file, as a set
    assert _sorted_alerts(bad_run.run) == _sorted_alerts(clean_run)


def test_counters_moved_by_the_replay(bad_run: BadRun) -> None:
    d, s = bad_run.delta, bad_run.summary
    for reason in REASONS:
        assert d["reason", reason] == 1, reason
    assert d["outcome", "invalid"] == len(BAD)
    assert d["outcome", "accepted"] == s.accepted
    assert d["outcome", "duplicate"] == s.duplicates
    assert d["outcome", "out_of_order"] == s.out_of_order
    assert d["outcome", "no_header"] == s.no_header
    assert sum(d["outcome", o] for o in OUTCOMES) == bad_run.lines


def test_the_alerts_counter_counts_what_alerts_jsonl_holds(bad_run: BadRun) -> None:
    """Review finding: ``delaywatch_alerts_total{kind}`` counted the trackers' records
    (watches, moves, stall candidates later folded into an incident), not the alerts
    decided; a dashboard showed no incident message while customers were told."""
    written = collections.Counter(a["kind"] for a in _jsonl(bad_run.run / "alerts.jsonl"))
    assert written["incident_delay"] and written["stall"]  # the demo has both
    counted = {kind: n for (what, kind), n in bad_run.delta.items() if what == "alert" and n}
    assert counted == dict(written)


def test_no_personal_data_in_outputs_or_metrics(bad_run: BadRun, demo_data: Path) -> None:
    with open(demo_data / "customers.csv", newline="", encoding="utf-8") as fh:
        customers = list(csv.DictReader(fh))
    assert customers
    texts = {
        "alerts": (bad_run.run / "alerts.jsonl").read_text(encoding="utf-8"),
        "dead letters": (bad_run.run / "dead_letters.jsonl").read_text(encoding="utf-8"),
        "metrics": generate_latest(REGISTRY).decode(),
    }
    assert texts["alerts"] and texts["dead letters"]
    email = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
    for what, text in texts.items():
        assert not email.search(text), what
        folded = text.casefold()
        for c in customers:
            assert c["email"].casefold() not in folded, what
            assert c["name"].casefold() not in folded, (what, c["recipient_ref"])
    assert "recipient_ref" not in texts["alerts"]


# --------------------------------------------------------------------------------------------
# The flow never stops on data


def _replay_file(tmp_path: Path, demo_data: Path, data: bytes, **kw: Any) -> ReplaySummary:
    path = tmp_path / "events.jsonl"
    path.write_bytes(data)
    return replay(JsonLinesSource(path, **kw), tmp_path / "run", _settings(demo_data),
                  with_metrics=False)


def _segments(data: bytes) -> dict[int, bytes]:
    """Line number -> content of the non-blank lines, as the source splits them."""
    return {n: seg for n, seg in enumerate(data.split(b"\n"), 1) if seg.rstrip(b"\r")}


def test_random_bytes(tmp_path: Path, demo_data: Path) -> None:
    rng = random.Random(3)
    data = rng.randbytes(300_000)
    summary = _replay_file(tmp_path, demo_data, data, batch_size=97)
    letters = _jsonl(tmp_path / "run" / "dead_letters.jsonl")
    lines = _segments(data)
    assert summary.events == len(lines) > 500
    assert sorted(d["line"] for d in letters) == sorted(lines)
    assert {d["reason"] for d in letters} <= REASONS
    assert all(len(d["raw"]) <= 2000 and d["step"] == "parse" for d in letters)
    assert (tmp_path / "run" / "alerts.jsonl").read_bytes() == b""


def test_a_line_that_is_not_utf8_between_valid_ones(tmp_path: Path, demo_data: Path) -> None:
    """A Latin-1 name in a string: one dead letter, and the flow goes on (it crashed)."""
    good = (demo_data / "events.jsonl").read_bytes().split(b"\n")[:200]
    latin = _line(facility_id="Caf\u00e9 1").encode("latin-1")  # (json.dumps escapes: undo)
    latin = latin.replace(b"\\u00e9", b"\xe9")
    assert b"\xe9" in latin
    summary = _replay_file(tmp_path, demo_data, b"\n".join([*good[:100], latin, *good[100:]]),
                           batch_size=64)
    assert summary.events == 201
    [letter] = _jsonl(tmp_path / "run" / "dead_letters.jsonl")
    assert (letter["line"], letter["reason"]) == (101, "bad_json")


def test_a_one_megabyte_line_between_valid_ones(tmp_path: Path, demo_data: Path) -> None:
    good = (demo_data / "events.jsonl").read_bytes().split(b"\n")[:200]
    huge = _line(facility_id="F" * 1_000_000).encode()
    garbage = b"x" * 1_000_000  # no newline at the end of the file either
    data = b"\n".join([*good[:100], huge, *good[100:], garbage])
    summary = _replay_file(tmp_path, demo_data, data, batch_size=64)
    assert summary.events == 202
    letters = {d["line"]: d for d in _jsonl(tmp_path / "run" / "dead_letters.jsonl")}
    assert sorted(letters) == [101, 202]
    assert letters[101]["reason"] == "bad_facility"
    assert letters[101]["raw"] == huge[:2000].decode()
    assert letters[202]["reason"] == "bad_json" and letters[202]["raw"] == "x" * 2000
    assert len(letters[101]["detail"]) <= 200


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_a_dead_letter_says_what_is_wrong_with_the_line_itself(
        tmp_path: Path, demo_data: Path, newline: bytes) -> None:
    """The source hands on lines with their endings; a line cut off in a string, a literal or
    a number gets the detail of the line as written, not of the line and its newline
    (msgspec words those errors differently)."""
    from detectors.events import parse_line

    cut = [_line()[:40], b'"abc'.decode(), "tru", "-", '{"package_id": "P1']
    data = newline.join(line.encode() for line in cut) + newline
    _replay_file(tmp_path, demo_data, data)
    letters = sorted(_jsonl(tmp_path / "run" / "dead_letters.jsonl"), key=lambda d: d["line"])
    assert [d["raw"] for d in letters] == cut
    assert [d["detail"] for d in letters] == [parse_line(c.encode()).detail for c in cut]
    assert any("truncated" in d["detail"] for d in letters)


def test_the_parse_step_reads_several_batches_as_one(demo_data: Path) -> None:
    """Bytewax may hand the parse step several source batches at once: the same events per
    shard, in input order, dead letters with their file's line numbers, and the same ingest
    lag sample (every 64th event) as one batch of the same lines."""
    from prometheus_client import CollectorRegistry

    from flows.dataflow import FlowContext, _parser
    from flows.metrics import make_flow_metrics

    good = (demo_data / "events.jsonl").read_bytes().splitlines(keepends=True)[:500]
    lines = good[:100] + [b"\n", BAD["bad_json"].encode() + b"\n"] + good[100:] + [b"{"]
    for shards in (1, 3):
        results = []
        for sizes in ([len(lines)], [1, 99, 64, 3, 200, 100, 36]):
            registry = CollectorRegistry()
            settings = load_settings(facilities=demo_data / "facilities.csv", shards=shards)
            ctx = FlowContext(settings=settings, run_dir=Path("."),
                              metrics=make_flow_metrics(registry))
            items, first = [], 1
            for size in sizes:
                items.append((first, lines[first - 1:first - 1 + size]))
                first += size
            assert first - 1 == len(lines)
            out = _parser(ctx)(items)
            lag = registry.get_sample_value("delaywatch_ingest_lag_seconds_count")
            results.append((sorted(x for x in out if x.__class__ is tuple),
                            [x for x in out if x.__class__ is not tuple], lag))
        assert results[0] == results[1]
        shards_out, letters, lag = results[0]
        assert sum(len(events) for _, events in shards_out) == 500
        assert [(d.line, d.reason) for d in letters] == [(102, "bad_json"), (503, "bad_json")]
        assert lag == len(range(0, 500, 64))


def test_an_empty_file(tmp_path: Path, demo_data: Path) -> None:
    summary = _replay_file(tmp_path, demo_data, b"")
    assert summary.events == 0
    assert (tmp_path / "run" / "alerts.jsonl").read_bytes() == b""
    assert (tmp_path / "run" / "dead_letters.jsonl").read_bytes() == b""


def test_blank_lines_are_skipped_and_line_numbers_stay_those_of_the_file(
        tmp_path: Path, demo_data: Path) -> None:
    good = (demo_data / "events.jsonl").read_bytes().split(b"\n")[:3]
    data = b"\n".join([good[0], b"", BAD["unknown_code"].encode(), b"\r", good[1],
                       BAD["bad_json"].encode(), b"", good[2]]) + b"\n"
    summary = _replay_file(tmp_path, demo_data, data)
    assert summary.events == 5
    letters = _jsonl(tmp_path / "run" / "dead_letters.jsonl")
    assert sorted((d["line"], d["reason"]) for d in letters) == [(3, "unknown_code"),
                                                                 (6, "bad_json")]


def test_a_batch_of_only_blank_lines_does_not_end_the_input(
        tmp_path: Path, demo_data: Path) -> None:
    good = (demo_data / "events.jsonl").read_bytes().split(b"\n")[:20]
    data = b"\n".join([*good[:10], *[b""] * 250, *good[10:]]) + b"\n"
    summary = _replay_file(tmp_path, demo_data, data, batch_size=50)
    assert summary.events == 20
    assert summary.accepted + summary.no_header + summary.duplicates + summary.out_of_order == 20
    assert (tmp_path / "run" / "dead_letters.jsonl").read_bytes() == b""


def test_crlf_line_endings(tmp_path: Path, demo_data: Path, clean_run: Path) -> None:
    data = (demo_data / "events.jsonl").read_bytes().replace(b"\n", b"\r\n")
    summary = _replay_file(tmp_path, demo_data, data)
    assert summary.dead_letters == {}
    assert summary.events == data.count(b"\r\n")
    assert _sorted_alerts(tmp_path / "run") == _sorted_alerts(clean_run)


# --------------------------------------------------------------------------------------------
# Sources


def test_simulator_source_gives_the_alerts_of_the_written_file(
        tmp_path: Path, demo_data: Path, clean_run: Path) -> None:
    # conftest's demo_data: scenario "demo", seed 3, 2,500 packages
    summary = replay(SimulatorSource("demo", 3, packages=2500), tmp_path / "run",
                     _settings(demo_data), with_metrics=False)
    assert summary.dead_letters == {}
    assert summary.events == (demo_data / "events.jsonl").read_bytes().count(b"\n")
    assert _sorted_alerts(tmp_path / "run") == _sorted_alerts(clean_run)


def _tiny(path: Path, span: int, *, newline: bytes = b"\n") -> list[bytes]:
    """One package from label to delivery, its scans spread over ``span`` event-time seconds:
    any reordering would show as out-of-order or header-less scans."""
    t0 = 1_793_000_000
    codes = ("GX", "03", "A1", "T1", "07", "01")
    lines = []
    for i, code in enumerate(codes):
        ts = t0 + span * i // (len(codes) - 1)
        iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts))
        row: dict[str, Any] = {"package_id": "PACED-1", "event_code": code,
                               "facility_id": f"F{i}", "event_time": iso, "ingest_time": iso}
        if code == "GX":
            row |= {"service": "ground", "promised_date": "2026-10-30",
                    "promised_by": "2026-10-31T01:00:00+00:00", "destination": "F4",
                    "recipient_ref": "C1"}
        lines.append(json.dumps(row).encode())
    path.write_bytes(b"".join(line + newline for line in lines))
    return lines


def test_a_line_with_an_absurd_time_does_not_hold_a_paced_replay(tmp_path: Path) -> None:
    """A year-2124 event time (a dead letter for the parser) between paced lines is released
    at once, not decades from now with every line behind it."""
    lines = _tiny(tmp_path / "tiny.jsonl", 2)
    absurd = lines[2].replace(b'"2026-', b'"2124-')
    assert absurd != lines[2]
    lines = [*lines[:3], absurd, *lines[3:]]
    (tmp_path / "tiny.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    part = JsonLinesSource(tmp_path / "tiny.jsonl", speed=8.0).build_part(
        "scans", "tiny.jsonl", None)
    got: list[tuple[int, bytes]] = []
    start = time.monotonic()
    try:
        while time.monotonic() - start < 10:
            try:
                got += _released(part.next_batch())
            except StopIteration:
                break
            time.sleep(0.02)
    finally:
        part.close()
    assert got == list(enumerate(lines, 1))


def _released(batch: Any) -> list[tuple[int, bytes]]:
    """(line number, line) of the non-blank lines of a source's batch, as the parse step
    numbers and reads them."""
    return [(first + i, s) for first, lines in batch
            for i, line in enumerate(lines) if (s := line.rstrip(b"\r\n"))]


def test_paced_source_releases_every_line_in_order_on_time(tmp_path: Path) -> None:
    span, speed = 5, 8.0  # 5 s of event time in 0.625 s
    lines = _tiny(tmp_path / "tiny.jsonl", span)
    part = JsonLinesSource(tmp_path / "tiny.jsonl", speed=speed).build_part(
        "scans", "tiny.jsonl", None)
    got: list[tuple[float, int, bytes]] = []
    start = time.monotonic()
    try:
        while time.monotonic() - start < 5:
            try:
                batch = part.next_batch()
            except StopIteration:
                break
            now = time.monotonic()
            got += [(now - start, n, line) for n, line in _released(batch)]
            if not batch:
                awake = part.next_awake()
                assert awake is not None, "lines are pending: the partition must ask to wake"
                time.sleep(max(0.0, min(0.05, (awake.timestamp() - time.time()))))
    finally:
        part.close()
    assert [(n, line) for _, n, line in got] == list(enumerate(lines, 1))
    for i, (at, _, _) in enumerate(got):  # never early (5 ms of slack for clock reads)
        assert at >= span * i / (len(lines) - 1) / speed - 0.005, i
    assert got[-1][0] < 2.0


def test_paced_replay_through_the_flow(tmp_path: Path) -> None:
    span, speed = 4, 8.0
    _tiny(tmp_path / "tiny.jsonl", span)
    t = time.perf_counter()
    summary = replay(JsonLinesSource(tmp_path / "tiny.jsonl", speed=speed), tmp_path / "run",
                     load_settings(epoch_interval_seconds=0.05), with_metrics=False)
    took = time.perf_counter() - t
    assert span / speed <= took < 2.0 + span / speed
    # label to delivery, in order: every scan accepted, none out of order or header-less
    assert (summary.events, summary.accepted) == (6, 6)
    assert summary.in_flight == 0


@pytest.mark.parametrize("newline,blank", [
    pytest.param(b"\n", False, id="lf"),
    pytest.param(b"\r\n", False, id="crlf"),
    pytest.param(b"\n", True, id="blank-line"),
])
def test_paced_snapshot_resumes_at_the_first_pending_line(
        tmp_path: Path, newline: bytes, blank: bool) -> None:
    path = tmp_path / "tiny.jsonl"
    lines = _tiny(path, 3600, newline=newline)  # an hour of event time: all but one pending
    numbers = list(range(1, len(lines) + 1))
    if blank:
        path.write_bytes(b"".join(line + newline + (newline if i == 2 else b"")
                                  for i, line in enumerate(lines)))
        numbers = [n if n <= 3 else n + 1 for n in numbers]
    part = JsonLinesSource(path, speed=1.0).build_part("scans", path.name, None)
    try:
        assert [n for n, _ in _released(part.next_batch())] == [1]
        state = part.snapshot()
    finally:
        part.close()
    resumed = JsonLinesSource(path).build_part("scans", path.name, state)
    try:
        rest = _released(resumed.next_batch())
    finally:
        resumed.close()
    assert rest == list(zip(numbers[1:], lines[1:], strict=True))


def test_every_dead_letter_reason_is_exported_at_zero_from_the_start() -> None:
    """Prometheus' rate() does not count a series' first sample: a reason series that
    appears with the first bad line would hide it from an alert on the rate."""
    from prometheus_client import CollectorRegistry

    from flows.metrics import make_flow_metrics

    registry = CollectorRegistry()
    make_flow_metrics(registry)
    for reason in REASONS:
        assert registry.get_sample_value("delaywatch_dead_letters_total",
                                         {"reason": reason}) == 0.0
