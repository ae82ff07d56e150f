"""Detection quality of the real flow on every scenario, against the fixed 48 h rule.

    .venv/bin/python bench/quality.py --out /tmp/quality [--seeds 1 2 3] [--scenarios demo]
        [--settings '{"incidents": {"late_move_p": null}}']

For each scenario (and each seed for `demo`; the other scenarios run the first seed only):
simulate, `replay` through the Bytewax dataflow with the default
settings, `evaluate` against ground truth (alerts, incidents, and the outbox's messages per
customer). Prints three Markdown tables (README "Detection quality"): package alerts against
the fixed 48 h rule, facility incidents and customer messages, and the revised delivery
estimates the messages carry (against the real delivery time).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detectors.evaluate import evaluate, load_truth, score_messages
from fixtures.scenarios import get_scenario
from fixtures.simulate import simulate, write
from flows.config import load_settings
from flows.run import outbox_messages, replay
from flows.sources import JsonLinesSource

COLS = [
    ("stall recall", lambda r: r["by_cause"]["package_stall"]["late_recall"]),
    ("late recall", lambda r: r["late_recall"]),
    ("precision", lambda r: r["alert_precision"]),
    ("before promise", lambda r: r["alerted_before_promise"]),
    ("before inquiry", lambda r: r["alerted_before_inquiry"]),
    ("lead p50 h", lambda r: r["lead_time_hours_p50"]),
    ("false /1000", lambda r: r["false_alerts_per_1000"]),
    ("after delivery", lambda r: r["alerts_after_delivery"]),
    ("duplicates", lambda r: r["duplicate_messages"]),
    ("feed-outage alerts", lambda r: r["customer_alerts_for_feed_outages"]),
]


INCIDENT_COLS = [
    ("incidents detected", lambda r: f"{r['incidents_detected']}/{r['incidents']}"
     if r["incidents"] else "-"),
    ("delay p50 min", lambda r: r["incident_detection_delay_minutes_p50"]),
    ("false / facility-week", lambda r: r["false_incidents_per_facility_week"]),
    ("feed outages", lambda r: f"{r['feed_outages_detected']}/{r['feed_outages']}"
     if r["feed_outages"] else "-"),
    ("folded (incident_delay) packages", lambda r: r["folded"]),
    ("incident-caused late recall", lambda r: r["incident_recall_late"]),
    ("incident messages / affected customer and incident (max)",
     lambda r: r["customer_messages"]["incident_messages_per_affected_customer_max"]),
    ("all messages / affected customer (max, mean)",
     lambda r: f"{r['customer_messages']['messages_per_affected_customer_max']}, "
     f"{fmt(r['customer_messages']['messages_per_affected_customer_mean'])}"),
]


ESTIMATE_COLS = [
    ("first delay message with an estimate", lambda r: r["estimates_given"]),
    ("error p50 h", lambda r: r["estimate_error_hours_p50"]),
    ("error p90 h", lambda r: r["estimate_error_hours_p90"]),
    ("within 24 h", lambda r: r["estimate_within_24h"]),
    ("bias p50 h", lambda r: r["estimate_bias_hours_p50"]),
    ("the promise's error p50 h (same packages)", lambda r: r["promise_error_hours_p50"]),
    ("back on track: with an estimate", lambda r: r["back_on_track_estimates_given"]),
    ("back on track: error p50 h", lambda r: r["back_on_track_estimate_error_hours_p50"]),
]


def cells(row: dict, cols: list) -> str:
    """A table row's cells ("-" where the figure is missing)."""
    out = []
    for _, get in cols:
        try:
            out.append(fmt(get(row)))
        except (KeyError, TypeError):
            out.append("-")
    return " | ".join(out)


def table(results: dict[str, dict], cols: list) -> None:
    print()
    print("| scenario | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for run, r in results.items():
        print(f"| {run} | {cells(r, cols)} |", flush=True)


def fmt(v: object) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("/tmp/quality"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--scenarios", nargs="+", default=["demo", "quiet", "outage", "peak"])
    ap.add_argument("--settings", type=json.loads, default={},
                    help='settings to change, as JSON: \'{"incidents": {"late_move_p": null}}\'')
    args = ap.parse_args()
    print("| scenario | seed | run | " + " | ".join(c for c, _ in COLS) + " |")
    print("|---|---|---|" + "---|" * len(COLS))
    results = {}
    for scenario in args.scenarios:
        for seed in args.seeds if scenario == "demo" else args.seeds[:1]:
            data = args.out / f"{scenario}{seed}"
            sc = get_scenario(scenario)
            write(simulate(sc, seed), data)
            # the operator's holiday calendar is configuration; the simulator's is known here
            changes = dict(args.settings)
            changes["stall"] = {"holidays": sc.holidays} | changes.get("stall", {})
            settings = load_settings(facilities=data / "facilities.csv", **changes)
            replay(JsonLinesSource(data / "events.jsonl"), data / "run", settings,
                   with_metrics=False, overwrite=True)  # (a run of an earlier --out: anew)
            r = evaluate(data / "run" / "alerts.jsonl", data, data / "run" / "incidents.jsonl")
            r["customer_messages"] = score_messages(
                outbox_messages(data / "run" / "outbox.sqlite"), load_truth(data))
            r["folded"] = sum(1 for line in (data / "run" / "alerts.jsonl").open()
                              if '"kind":"incident_delay"' in line)
            causes = [r["by_cause"].get(c, {}) for c in
                      ("facility_slowdown", "facility_stop", "weather", "lane_delay")]
            late = sum(c.get("late_packages") or 0 for c in causes)
            hit = sum((c.get("late_recall") or 0) * (c.get("late_packages") or 0)
                      for c in causes)
            r["incident_recall_late"] = round(hit / late, 3) if late else None
            results[f"{scenario}{seed}"] = r
            for name, row in (("delaywatch", r), ("48 h rule", r["baselines"]["fixed_48h"])):
                print(f"| {scenario} | {seed} | {name} | {cells(row, COLS)} |", flush=True)
    table(results, INCIDENT_COLS)
    table(results, ESTIMATE_COLS)
    (args.out / "quality.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
