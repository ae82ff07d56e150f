"""Facility detectors compared against the simulator's ground truth (offline, no Bytewax).

    .venv/bin/python bench/facility_compare.py --data /tmp/fac [--detectors seasonal drift hst]

Expects simulator outputs under ``--data`` (``demo1`` .. ``demo3``, ``quiet1``, ``outage1``;
``--simulate`` writes them with ``delaywatch simulate``). For each run it feeds the scan
events, in ingestion order as the flow does, to one :class:`~detectors.facility.FacilityStats`
(per package: in-order scans only, duplicates dropped, the previous facility scan kept across
``TL``; an out-of-order scan still counts as a (late) scan of its facility). Windows close when
the largest event time seen minus ``--lateness`` has passed them. Each candidate detector then
runs :class:`~detectors.facility.FacilityMonitor` and
:class:`~detectors.incidents.IncidentManager` over the windows and writes
``OUT/<detector>/<run>/incidents.jsonl``, which is scored with::

    delaywatch evaluate --alerts <empty file> --truth DIR --incidents incidents.jsonl \\
        --json --no-baselines

Prints a Markdown table per detector and a per-incident table (which truth incident was
matched, by what kind, how late), pooled over the demo seeds.

``--monitor-cost`` only times :meth:`~detectors.facility.FacilityMonitor.assess` (CPU time per
facility window, in all and its lanes and cohort-retention parts) over each run's windows, e.g.
the flow benchmark's sample: ``--data /tmp --runs nat1m_2m --monitor-cost``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from detectors.evaluate import load_truth
from detectors.events import parse_batch
from detectors.facility import (
    DETECTORS,
    CohortRetention,
    FacilityMonitor,
    FacilityStats,
    FacilityWindow,
)
from detectors.incidents import IncidentManager

DELAYWATCH = str(Path(sys.executable).with_name("delaywatch"))
RUNS = ("demo1", "demo2", "demo3", "quiet1", "outage1")


def simulate(data: Path) -> None:
    for run in RUNS:
        scenario, seed = run.rstrip("0123456789"), run[len(run.rstrip("0123456789")) :]
        subprocess.run(
            [
                DELAYWATCH,
                "simulate",
                "--scenario",
                scenario,
                "--seed",
                seed,
                "--out",
                str(data / run),
            ],
            check=True,
            capture_output=True,
        )


def facilities(truth: Path) -> list[dict[str, str]]:
    with (truth / "facilities.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def windows_of(truth: Path, window: int, lateness: int) -> tuple[list[list[FacilityWindow]], dict]:
    """Closed windows grouped by window end, in order, and timing figures."""
    hubs = [r["facility_id"] for r in facilities(truth) if r["kind"] in ("plant", "ndc")]
    events, _ = parse_batch((truth / "events.jsonl").read_bytes().splitlines())
    stats = FacilityStats(window, facilities=hubs)
    last: dict[str, tuple[int, str, str | None]] = {}  # package -> last in-order scan
    last_facility: dict[str, tuple[str, str, int]] = {}  # package -> last facility scan
    closed: list[FacilityWindow] = []
    max_ts = 0
    start = time.perf_counter()
    for ev in events:
        ts = ev.event_ts
        if ts > max_ts:
            max_ts = ts
            closed += stats.close(max_ts - lateness)
        pid = ev.package_id
        prev = last.get(pid)
        if prev is not None:
            if ts < prev[0]:  # out of order for the package: still a scan of its facility
                if ev.facility is not None:
                    stats.scan(ev.facility, ts)
                continue
            if ts == prev[0] and prev[1] == ev.code and prev[2] == ev.facility:
                continue  # duplicate
        last[pid] = (ts, ev.code, ev.facility)
        if ev.facility is None:
            continue
        pf = last_facility.get(pid)
        if pf is None:
            stats.observe(ev.facility, ev.code, ts)
        else:
            stats.observe(ev.facility, ev.code, ts, pf[0], pf[1], pf[2])
        last_facility[pid] = (ev.facility, ev.code, ts)
    closed += stats.close(max_ts + window)
    elapsed = time.perf_counter() - start
    grouped: dict[int, list[FacilityWindow]] = defaultdict(list)
    for w in closed:
        grouped[w.end].append(w)
    timing = {"events": len(events), "seconds": elapsed, "windows": len(closed)}
    return [grouped[end] for end in sorted(grouped)], timing


def micro(truth: Path, window: int, lateness: int, repeat: int = 5) -> dict[str, float]:
    """CPU time of FacilityStats alone: the calls a tracker makes, prepared beforehand."""
    hubs = [r["facility_id"] for r in facilities(truth) if r["kind"] in ("plant", "ndc")]
    events, _ = parse_batch((truth / "events.jsonl").read_bytes().splitlines())
    calls: list[tuple[Any, ...]] = []  # ("o", args) observe, ("s", args) scan, ("c", upto)
    last: dict[str, int] = {}
    last_facility: dict[str, tuple[str, str, int]] = {}
    max_ts = 0
    for ev in events:
        if ev.event_ts > max_ts:
            max_ts = ev.event_ts
            calls.append(("c", max_ts - lateness))
        if ev.facility is None:
            continue
        if ev.event_ts < last.get(ev.package_id, -1):
            calls.append(("s", (ev.facility, ev.event_ts)))
            continue
        last[ev.package_id] = ev.event_ts
        prev = last_facility.get(ev.package_id, ())
        calls.append(("o", (ev.facility, ev.code, ev.event_ts, *prev)))
        last_facility[ev.package_id] = (ev.facility, ev.code, ev.event_ts)
    best = {}
    for label, keep in (("hubs only", hubs), ("every facility", None)):
        runs = []
        for _ in range(repeat):
            stats = FacilityStats(window, facilities=keep)
            observe, scan, close = stats.observe, stats.scan, stats.close
            start = time.process_time()
            for kind, args in calls:
                if kind == "o":
                    observe(*args)
                elif kind == "s":
                    scan(*args)
                else:
                    close(args)
            runs.append(time.process_time() - start)
        best[label] = statistics.median(runs) / len(events) * 1e6
    return best


def monitor_cost(truth: Path, window: int, lateness: int) -> dict[str, float]:
    """CPU time of the default monitor per facility window: in all, lanes, cohort retention."""
    batches, _ = windows_of(truth, window, lateness)
    rows = facilities(truth)
    monitor = FacilityMonitor(
        regions={r["facility_id"]: r["region"] for r in rows if r["kind"] in ("plant", "ndc")},
        tz_of={r["facility_id"]: r["tz"] for r in rows},
        names={r["facility_id"]: r["name"] for r in rows},
    )
    spent = {"lanes": 0.0, "retention": 0.0}
    timed = {
        "lanes": (FacilityMonitor, "_assess_lanes"),
        "retention": (CohortRetention, "update_one"),
    }
    originals = {part: getattr(cls, name) for part, (cls, name) in timed.items()}

    def timer(part: str, fn: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            start = time.process_time()
            try:
                return fn(*args)
            finally:
                spent[part] += time.process_time() - start

        return wrapped

    try:
        for part, (cls, name) in timed.items():
            setattr(cls, name, timer(part, originals[part]))
        start = time.process_time()
        for batch in batches:
            monitor.assess(batch)
        total = time.process_time() - start
    finally:
        for part, (cls, name) in timed.items():
            setattr(cls, name, originals[part])
    n = max(sum(len(b) for b in batches), 1)
    return {"windows": n, "all": total / n * 1e6} | {k: v / n * 1e6 for k, v in spent.items()}


def run_detector(
    detector: str,
    batches: list[list[FacilityWindow]],
    truth: Path,
    out: Path,
    params: dict[str, Any],
) -> tuple[Path, float, int]:
    rows = facilities(truth)
    monitor = FacilityMonitor(
        detector,
        regions={r["facility_id"]: r["region"] for r in rows if r["kind"] in ("plant", "ndc")},
        tz_of={r["facility_id"]: r["tz"] for r in rows},
        names={r["facility_id"]: r["name"] for r in rows},
        **params.get("monitor", {}),
    )
    manager = IncidentManager(**params.get("manager", {}))
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    assessed = 0
    for batch in batches:
        for a in monitor.assess(batch):
            assessed += 1
            records += manager.update(
                a.facility,
                a.window_end,
                a.score,
                a.kind,
                a.evidence,
                a.affected,
                lane_to=a.lane_to,
                facilities=a.facilities,
            )
        records += manager.finish(batch[0].end)
    elapsed = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    path = out / "incidents.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path, elapsed, sum(len(b) for b in batches)


def evaluate_cli(truth: Path, incidents: Path) -> dict[str, Any]:
    empty = incidents.with_name("alerts.jsonl")
    empty.write_text("")
    done = subprocess.run(
        [
            DELAYWATCH,
            "evaluate",
            "--alerts",
            str(empty),
            "--truth",
            str(truth),
            "--incidents",
            str(incidents),
            "--json",
            "--no-baselines",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout)


def per_incident(truth: Path, incidents: Path) -> list[dict[str, Any]]:
    """Each truth incident with the earliest matching output incident (the scorer's rule)."""

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).timestamp()

    outputs: dict[str, dict[str, Any]] = {}
    for line in incidents.read_text().splitlines():
        r = json.loads(line)
        o = outputs.setdefault(
            r["incident_key"], {"kind": r["kind"], "opened": ts(r["opened_at"]), "names": set()}
        )
        o["names"].update(x for x in (r["facility_id"], r["lane_to"]) if x)
        o["names"].update((r.get("facilities") or "").split())
    rows = []
    known = load_truth(truth).incidents
    seen_until = {  # lane delays: until their delayed packages arrived (the scorer's rule)
        iid: at.timestamp()
        for iid, at in zip(known["incident_id"], known["seen_until"], strict=True)
        if at is not None and at == at
    }
    with (truth / "incidents.csv").open(newline="", encoding="utf-8") as f:
        for t in csv.DictReader(f):
            if t["kind"] == "package_stall":
                continue
            covered = {x for x in (t["facility_id"], t["lane_to"]) if x}
            covered |= set(t["facilities"].split())
            onset, end = ts(t["onset"]), ts(t["end"])
            upper = max(end, seen_until.get(t["incident_id"], end))
            feed = t["kind"] == "feed_outage"
            hits = [
                (o["opened"], o["kind"])
                for o in outputs.values()
                if (o["kind"] == "feed_outage") == feed
                and o["names"] & covered
                and onset - 3600 <= o["opened"] <= upper + 6 * 3600
            ]
            first = min(hits) if hits else None
            rows.append(
                {
                    "run": truth.name,
                    "id": t["incident_id"],
                    "kind": t["kind"],
                    "facility": t["facility_id"],
                    "hours": round((end - onset) / 3600, 1),
                    "detected_as": first[1] if first else None,
                    "delay_min": None if first is None else max(0.0, (first[0] - onset) / 60),
                }
            )
    return rows


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/fac"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/fac/compare"))
    ap.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    ap.add_argument("--runs", nargs="+", default=list(RUNS))
    ap.add_argument("--window", type=int, default=900, help="window seconds")
    ap.add_argument("--lateness", type=int, default=3600, help="allowed lateness, seconds")
    ap.add_argument(
        "--params",
        type=json.loads,
        default={},
        help='JSON {"monitor": {...}, "manager": {...}} overrides',
    )
    ap.add_argument("--simulate", action="store_true", help="write the simulator runs first")
    ap.add_argument("--json", action="store_true", help="also print all figures as JSON")
    ap.add_argument(
        "--micro",
        action="store_true",
        help="only time FacilityStats per event on the first run, and exit",
    )
    ap.add_argument(
        "--monitor-cost",
        action="store_true",
        help="only time FacilityMonitor.assess per facility window on each run, and exit",
    )
    args = ap.parse_args()
    if args.monitor_cost:
        for run in args.runs:
            c = monitor_cost(args.data / run, args.window, args.lateness)
            print(
                f"{run}: FacilityMonitor.assess {c['all']:.0f} us per facility window (lanes "
                f"{c['lanes']:.0f}, cohort retention {c['retention']:.0f}; CPU time, "
                f"{c['windows']:,} windows)"
            )
        return
    if args.simulate:
        simulate(args.data)
    if args.micro:
        for label, us in micro(args.data / args.runs[0], args.window, args.lateness).items():
            print(
                f"FacilityStats ({label}): {us:.2f} us per event (observe/scan/close, CPU "
                f"time, median of 5, {args.runs[0]})"
            )
        return

    batches = {}
    for run in args.runs:
        batches[run], timing = windows_of(args.data / run, args.window, args.lateness)
        print(
            f"{run}: {timing['events']:,} events -> {timing['windows']:,} facility windows in "
            f"{timing['seconds']:.2f} s ({timing['seconds'] / timing['events'] * 1e6:.2f} "
            f"us/event, parsing excluded)",
            file=sys.stderr,
        )

    results: dict[str, Any] = {}
    for detector in args.detectors:
        res: dict[str, Any] = {"runs": {}, "incidents": []}
        for run in args.runs:
            truth = args.data / run
            path, seconds, n = run_detector(
                detector, batches[run], truth, args.out / detector / run, args.params
            )
            figures = evaluate_cli(truth, path)
            res["runs"][run] = figures | {"us_per_window": seconds / max(n, 1) * 1e6}
            res["incidents"] += per_incident(truth, path)
        results[detector] = res

    print(
        "| detector | demo detected (slow/stop/weather/lane) | delay p50 / p90 min (pooled) "
        "| false / facility-week per demo run | quiet false / facility-week per run | outage: "
        "feed outages detected / delay incidents (summed) | us per window |"
    )
    print("|---|---|---|---|---|---|---|")
    for detector, res in results.items():
        demo = [
            r
            for r in res["incidents"]
            if r["run"].startswith("demo") and r["kind"] != "feed_outage"
        ]
        by_kind = defaultdict(lambda: [0, 0])
        for r in demo:
            by_kind[r["kind"]][1] += 1
            by_kind[r["kind"]][0] += r["detected_as"] is not None
        delays = [r["delay_min"] for r in demo if r["delay_min"] is not None]
        kinds = " / ".join(
            f"{by_kind[k][0]}/{by_kind[k][1]}"
            for k in ("facility_slowdown", "facility_stop", "weather", "lane_delay")
        )
        detected = sum(v[0] for v in by_kind.values())
        q = (
            statistics.quantiles(delays, n=10, method="inclusive")
            if len(delays) > 1
            else delays * 9
        )
        p50 = statistics.median(delays) if delays else None
        p90 = q[8] if delays else None
        demo_false = [
            res["runs"][r]["false_incidents_per_facility_week"]
            for r in res["runs"]
            if r.startswith("demo")
        ]
        quiet = [
            res["runs"][r]["false_incidents_per_facility_week"]
            for r in res["runs"]
            if r.startswith("quiet")
        ]
        outages = [v for r, v in res["runs"].items() if r.startswith("outage")]
        outage = (
            f"{sum(v['feed_outages_detected'] for v in outages)}/"
            f"{sum(v['feed_outages'] for v in outages)} / "
            f"{sum(v['false_incidents'] for v in outages)}"
            if outages
            else "-"
        )
        us = statistics.mean(v["us_per_window"] for v in res["runs"].values())
        print(
            f"| {detector} | {detected}/{len(demo)} ({kinds}) | {fmt(p50)} / {fmt(p90)} | "
            f"{' '.join(fmt(v) for v in demo_false)} | {' '.join(fmt(v) for v in quiet) or '-'} | "
            f"{outage} | {us:.0f} |"
        )
    print()
    print("| detector | run | incident | kind | facility | hours | detected as | delay min |")
    print("|---|---|---|---|---|---|---|---|")
    for detector, res in results.items():
        for r in res["incidents"]:
            print(
                f"| {detector} | {r['run']} | {r['id']} | {r['kind']} | {r['facility']} | "
                f"{r['hours']} | {r['detected_as'] or '-'} | {fmt(r['delay_min'])} |"
            )
    if args.json:
        print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
