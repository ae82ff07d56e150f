"""Score a run of delaywatch against the simulator's ground truth.

Pandas only: no Bytewax, no CLI. Works the same from a notebook, a test or ``delaywatch evaluate``::

    from detectors.evaluate import evaluate, format_table
    result = evaluate("runs/x/alerts.jsonl", "runs/x/truth", "runs/x/incidents.jsonl")
    print(format_table(result))

Inputs follow ``docs/schemas.md``: the ground-truth directory (``packages.csv``, ``incidents.csv``,
``inquiries.jsonl``, ``facilities.csv``, ``meta.json``, ``events.jsonl``) and the flow's
``alerts.jsonl`` / ``incidents.jsonl``. Every time is parsed as a UTC-aware pandas timestamp; an
empty cell is NaT / NaN.

Definitions
-----------
All ratios are ``None`` (JSON null) when their denominator is 0; counts are ints; times compare in
UTC. "Before" is strict (``<``). Percentiles are linear-interpolated (numpy's default) and ``None``
over an empty set.

Package level. *Delay alerts* are the alert kinds ``stall`` and ``incident_delay``
(``back_on_track`` is a message but not a delay alert). A package is *alerted* if it has at least
one delay alert (at any time); its *first alert* is the earliest delay-alert ``alert_time``. *Late*
is the truth column ``late``; *on time* is ``late == false``.

- ``packages``: rows in packages.csv. ``late_packages``: late rows. ``on_time_packages``: the rest.
- ``alerts``: delay-alert rows. ``messages``: alert rows of any kind.
- ``alerted_packages``: distinct package ids with a delay alert (ids unknown to the truth included).
- ``late_recall`` = late alerted packages / ``late_packages``.
- ``alert_precision`` = alerted packages that were late or have a labelled stall (``stall_onset``
  set) / ``alerted_packages``. An alerted id that is not in packages.csv counts as a false alert.
- ``alerted_before_promise`` = late packages whose first alert < ``promised_by`` /
  ``late_packages``.
- ``late_packages_with_inquiry``: late packages with a row in inquiries.jsonl.
  ``alerted_before_inquiry`` = those of them whose first alert < their earliest ``inquiry_time`` /
  ``late_packages_with_inquiry``.
- ``lead_time_hours_p50`` / ``_p90``: percentiles of ``promised_by - first alert`` in hours over
  late alerted packages (positive = alerted before the promise; late alerts give negative values).
- ``false_alert_packages``: alerted on-time packages (a labelled stall does not excuse them here,
  unlike in ``alert_precision``). ``false_alerts_per_1000`` = 1000 x ``false_alert_packages`` /
  ``on_time_packages``.
- ``alerts_after_delivery``: delay-alert rows with ``alert_time`` > the package's ``delivered_at``
  (must be 0). ``messages_after_delivery``: the same over all kinds (``back_on_track`` included).
- ``duplicate_messages``: rows that repeat an earlier row's (package_id, kind, episode) or an
  earlier row's ``alert_key``. When keys follow the contract this equals the sum over
  (package_id, kind, episode) groups of count - 1. ``duplicate_alert_keys``: the sum over
  ``alert_key`` groups of count - 1. ``alert_key_mismatches``: rows whose ``alert_key`` is set
  but is not ``"{package_id}:{kind}:{episode}"``.
- Revised estimates, over delivered alerted packages, from each package's *first* delay alert
  (what the customer reads first): ``estimates_given`` = share whose first alert carries a
  ``new_estimate``; ``estimate_error_hours_p50`` / ``_p90``: percentiles of
  ``|new_estimate - delivered_at|`` in hours over those; ``estimate_within_24h``: share of them
  with that error <= 24 h; ``estimate_bias_hours_p50``: median of ``new_estimate -
  delivered_at`` (negative = the estimate promised too early). ``promise_error_hours_p50``: the
  same absolute error for the original ``promised_by`` on the same packages (the estimate a
  customer would have without the alert: a revised estimate should beat it).
  ``back_on_track_estimates_given``: share of ``back_on_track`` rows with a ``new_estimate``;
  ``back_on_track_estimate_error_hours_p50``: median ``|new_estimate - delivered_at|`` over
  those of delivered packages.
- ``customer_alerts_for_feed_outages``: distinct delay messages (package_id, kind, episode) on
  packages whose cause is ``feed_outage`` and that were not late.
- ``by_cause``: for every cause value (the schema's eight, plus any other found in the truth), over
  the packages of that cause: ``packages``, ``late_packages``, ``alerted_packages``,
  ``late_recall``, ``alerted_before_promise``, ``lead_time_hours_p50`` (same definitions).

Incident level. *Facility-level* truth incidents are the kinds ``facility_slowdown``,
``facility_stop``, ``weather``, ``lane_delay`` (``package_stall`` rows are per-package labels and
are not incidents here). ``incidents`` counts them; ``feed_outages`` counts truth ``feed_outage``
rows. Output incidents are grouped by ``incident_key`` (any status); each is placed at its
earliest ``opened_at`` and *names* every id found in any of its rows' ``facility_id`` and
``lane_to`` (and a space-separated ``facilities`` column, if the output has one). A truth
incident *covers* the ids in its ``facility_id``, ``lane_to`` (so a lane matches on either end)
and space-separated ``facilities``. An output incident *explains* a truth incident if it names one
of the covered ids and ``onset - 1 h <= opened_at <= end + 6 h`` (no upper bound if ``end`` is
empty), where ``end`` is pushed to the truth's ``last_effect`` when that is later: the latest
time a scan the incident moved was made (a slowdown's or weather's backlog drains after its
``end``: departures it pushed go on for hours; ``docs/simulator.md``). For a ``lane_delay`` the
upper bound is also ``seen_until + 6 h`` when that is later (for truths without
``last_effect``): ``seen_until`` is the latest arrival scan at ``lane_to`` of the packages
carrying the incident's id (read from ``events.jsonl`` by :func:`load_truth`). A lane delay holds
up packages that *departed* in ``[onset, end]``: their departure scan is on time and their
arrival is the first scan that can show the delay, at the earliest one normal transit (>= 16 h
between regions) after departure, often after ``end + 6 h``; until the last of them arrives the
incident is still visible in the feed, so an incident opened then is a detection, not a false
alarm. An output incident *detects* a truth incident it explains if their kinds agree this far:
a truth ``lane_delay`` is detected only by an output ``lane_delay`` on the same lane (naming
both its ``facility_id`` and its ``lane_to``), and a truth slowdown, stop or weather only by an
output incident that is not a lane delay (no agreement among those three is required: a stop
called a slowdown still tells its customers). A slowdown at the receiving hub is no detection
of a late truck into it, though it explains an output incident at that hub. Output
``feed_outage`` incidents are matched only against truth feed outages and all other output kinds
only against facility-level incidents.

- ``incidents_detected``: facility-level truth incidents detected by an output incident.
  ``incident_recall`` = ``incidents_detected`` / ``incidents``.
- ``incident_detection_delay_minutes_p50`` / ``_p90``: over detected incidents, ``opened_at`` of
  the earliest output incident detecting it minus ``onset``, in minutes, clipped at 0.
- Only when the truth's incidents.csv has a ``first_effect`` column (the earliest time a scan the
  incident moved was due, see ``docs/simulator.md``: the first moment the feed can differ):
  ``incident_detection_delay_from_first_effect_minutes_p50`` / ``_p90``: the same over detected
  incidents with a ``first_effect``, minus ``first_effect`` instead of ``onset`` (clipped at 0);
  ``incident_first_effect_minutes_p50``: the median of ``first_effect - onset`` in minutes over
  the facility-level incidents with a ``first_effect`` (how long the network hides an incident
  from any detector; not clipped; computed from the truth, so also without an incidents frame).
- ``false_incidents``: output incidents (kind other than ``feed_outage``) explaining no
  facility-level truth incident (one raised during a feed outage is false).
  ``false_incidents_per_facility_week`` = ``false_incidents`` / (facilities of kind ``plant`` or
  ``ndc`` in facilities.csv x (meta ``end`` - ``start``) in weeks).
- ``feed_outages_detected``: truth feed outages matched by an output ``feed_outage`` incident;
  ``false_feed_outages``: output ``feed_outage`` incidents matching none.

Without an incidents frame, ``incidents`` and ``feed_outages`` are still counted from the truth
and every other incident figure is ``None``.

Baselines. ``baseline_alerts(events, "none")`` alerts nothing. ``"fixed"`` is the naive
threshold detector: per package, events sorted by event time and cut after the first terminal
scan (``01``, ``09``, ``11``, ``21``-``29``, ``31``); a ``stall`` alert at ``previous scan + hours``
whenever the next scan comes more than ``hours`` later, or never comes after a non-terminal last
scan; an alert is kept only if its time is <= the latest event time in the data set. Episodes are
numbered 1, 2, ... per package. ``evaluate`` scores the baselines on the same truth (with an empty
incidents frame when the run has one, so their incident figures are 0 / None alike).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import pandas as pd

__all__ = [
    "ALERT_COLUMNS",
    "CAUSES",
    "DELAY_KINDS",
    "EVENT_COLUMNS",
    "FACILITY_INCIDENT_KINDS",
    "INCIDENT_COLUMNS",
    "TERMINAL_CODES",
    "Truth",
    "baseline_alerts",
    "evaluate",
    "format_table",
    "score_messages",
    "load_alerts",
    "load_events",
    "load_incidents",
    "load_truth",
    "score",
]

DELAY_KINDS = ("stall", "incident_delay")
CAUSES = (
    "package_stall",
    "facility_slowdown",
    "facility_stop",
    "weather",
    "lane_delay",
    "natural",
    "feed_outage",
    "none",
)
FACILITY_INCIDENT_KINDS = ("facility_slowdown", "facility_stop", "weather", "lane_delay")
TERMINAL_CODES = frozenset({"01", "09", "11", "31", *(str(code) for code in range(21, 30))})

ALERT_COLUMNS = [
    "alert_key",
    "kind",
    "package_id",
    "episode",
    "alert_time",
    "facility_id",
    "last_event_code",
    "last_scan_time",
    "silence_seconds",
    "expected_seconds",
    "promised_by",
    "new_estimate",
    "p_late",
    "incident_key",
    "evidence",
]
_ALERT_TIMES = ("alert_time", "last_scan_time", "promised_by", "new_estimate")

INCIDENT_COLUMNS = [
    "incident_key",
    "kind",
    "facility_id",
    "lane_to",
    "status",
    "opened_at",
    "resolved_at",
    "score",
    "affected_packages",
    "evidence",
]
_INCIDENT_TIMES = ("opened_at", "resolved_at")

EVENT_COLUMNS = [
    "package_id",
    "event_code",
    "facility_id",
    "event_time",
    "ingest_time",
    "service",
    "promised_date",
    "promised_by",
    "destination",
    "recipient_ref",
]
_EVENT_TIMES = ("event_time", "ingest_time", "promised_by")

_PACKAGE_COLUMNS = [
    "package_id",
    "service",
    "origin",
    "destination",
    "recipient_ref",
    "label_at",
    "accepted_at",
    "promised_date",
    "promised_by",
    "delivered_at",
    "late",
    "lateness_hours",
    "cause",
    "incident_id",
    "stall_onset",
    "stall_end",
]
_PACKAGE_TIMES = (
    "label_at",
    "accepted_at",
    "promised_by",
    "delivered_at",
    "stall_onset",
    "stall_end",
)
_TRUTH_INCIDENT_COLUMNS = [
    "incident_id",
    "kind",
    "facility_id",
    "lane_to",
    "region",
    "facilities",
    "onset",
    "end",
    "affected_packages",
    "detail",
]
_FACILITY_COLUMNS = ["facility_id", "name", "kind", "region", "tz", "state"]
_INQUIRY_COLUMNS = ["package_id", "recipient_ref", "inquiry_time"]

_MATCH_BEFORE = pd.Timedelta(hours=1)
_MATCH_AFTER = pd.Timedelta(hours=6)
_BASELINE_LABELS = {"none": "no alerts", "fixed_48h": "fixed 48 h"}


@dataclass
class Truth:
    """The simulator's ground truth, one DataFrame per file (``meta`` is the parsed meta.json)."""

    packages: pd.DataFrame
    incidents: pd.DataFrame
    inquiries: pd.DataFrame
    facilities: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# loading


def _to_utc(values: pd.Series) -> pd.Series:
    """Parse a column to UTC-aware timestamps; unparseable or empty values become NaT."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(values):
        return values.dt.tz_localize("UTC")
    return pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")


def _with_columns(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """Add the missing ``columns`` (all missing values) and put them first, in order."""
    columns = list(columns)
    missing = {
        c: pd.Series(np.nan, index=frame.index, dtype=object)
        for c in columns
        if c not in frame.columns
    }
    frame = frame.assign(**missing)
    rest = [c for c in frame.columns if c not in columns]
    return frame[columns + rest]


def _parse_times(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    for column in columns:
        frame[column] = _to_utc(frame[column])
    return frame


def _read_csv(path: Path, columns: list[str], required: bool) -> pd.DataFrame:
    if not path.exists():
        if required:
            raise FileNotFoundError(
                f"ground truth file {path} is missing (run the simulator first)"
            )
        return _with_columns(pd.DataFrame(), columns)
    if path.stat().st_size == 0:
        return _with_columns(pd.DataFrame(), columns)
    return _with_columns(
        pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""]), columns
    )


def _read_jsonl(path: Path | None, columns: list[str]) -> pd.DataFrame:
    """Read JSON lines strictly (a bad line is an error naming it); missing/empty = no rows."""
    if path is None or not Path(path).exists():
        return _with_columns(pd.DataFrame(), columns)
    records = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {number} is not valid JSON: {exc.msg}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path} line {number} is not a JSON object")
            records.append(record)
    return _with_columns(pd.DataFrame.from_records(records), columns)


def _to_bool(values: pd.Series) -> pd.Series:
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip().str.lower()
    return text.isin(["true", "1", "yes", "t"])


def load_truth(truth_dir: str | Path) -> Truth:
    """Load the ground-truth directory written by the simulator.

    ``packages.csv`` is required; the other files may be missing (empty frames, ``meta == {}``).
    Ids stay strings, times are UTC timestamps, ``late`` is a bool, numbers are floats.
    """
    root = Path(truth_dir)
    packages = _read_csv(root / "packages.csv", _PACKAGE_COLUMNS, required=True)
    packages = _parse_times(packages, _PACKAGE_TIMES)
    packages["late"] = _to_bool(packages["late"])
    packages["lateness_hours"] = pd.to_numeric(packages["lateness_hours"], errors="coerce")
    packages = packages.drop_duplicates("package_id", keep="first").reset_index(drop=True)

    incidents = _read_csv(root / "incidents.csv", _TRUTH_INCIDENT_COLUMNS, required=False)
    incidents = _parse_times(incidents, ("onset", "end"))
    incidents["affected_packages"] = pd.to_numeric(incidents["affected_packages"], errors="coerce")
    incidents["seen_until"] = _lane_arrivals(root / "events.jsonl", incidents, packages)
    for column in ("first_effect", "last_effect"):  # written by newer simulators
        if column in incidents.columns:
            incidents = _parse_times(incidents, (column,))

    inquiries = _read_jsonl(root / "inquiries.jsonl", _INQUIRY_COLUMNS)
    inquiries = _parse_times(inquiries, ("inquiry_time",))

    facilities = _read_csv(root / "facilities.csv", _FACILITY_COLUMNS, required=False)

    meta_path = root / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    return Truth(packages, incidents, inquiries, facilities, meta)


def _lane_arrivals(path: Path, incidents: pd.DataFrame, packages: pd.DataFrame) -> pd.Series:
    """Per truth incident: for a ``lane_delay``, the latest first scan at its ``lane_to`` of the
    packages carrying its id (their delayed arrivals); NaT otherwise, or without ``path``.

    Only lines naming a lane's receiving facility are decoded (a substring test per line).
    """
    seen = pd.Series(pd.NaT, index=incidents.index, dtype="datetime64[ns, UTC]")
    lanes = incidents[(incidents["kind"] == "lane_delay") & incidents["lane_to"].notna()]
    if lanes.empty or not path.exists():
        return seen
    lane_to = dict(zip(lanes["incident_id"], lanes["lane_to"], strict=True))
    wanted = packages.loc[packages["incident_id"].isin(lane_to), ["package_id", "incident_id"]]
    target = {pid: (iid, lane_to[iid]) for pid, iid in wanted.itertuples(index=False)}
    if not target:
        return seen
    tokens = [f'"{to}"'.encode() for to in set(lane_to.values())]
    first: dict[str, str] = {}  # package -> its first event time at lane_to (ISO, UTC)
    with path.open("rb") as lines:
        for line in lines:
            if not any(t in line for t in tokens):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            found = target.get(event.get("package_id")) if isinstance(event, dict) else None
            if found is None or event.get("facility_id") != found[1]:
                continue
            ts = event.get("event_time")
            if isinstance(ts, str) and (
                event["package_id"] not in first or ts < first[event["package_id"]]
            ):
                first[event["package_id"]] = ts
    latest: dict[str, pd.Timestamp] = {}
    for pid, ts in first.items():
        iid = target[pid][0]
        when = _to_utc(pd.Series([ts])).iloc[0]
        if pd.notna(when) and (iid not in latest or when > latest[iid]):
            latest[iid] = when
    for index, iid in incidents["incident_id"].items():
        if iid in latest:
            seen[index] = latest[iid]
    return seen


def _normalise_alerts(alerts: pd.DataFrame) -> pd.DataFrame:
    frame = _parse_times(_with_columns(alerts, ALERT_COLUMNS), _ALERT_TIMES)
    episode = pd.to_numeric(frame["episode"], errors="coerce")
    try:
        frame["episode"] = episode.astype("Int64")
    except (TypeError, ValueError):  # non-integral episode numbers: keep them as they are
        frame["episode"] = episode
    return frame


def _normalise_incidents(incidents: pd.DataFrame) -> pd.DataFrame:
    return _parse_times(_with_columns(incidents, INCIDENT_COLUMNS), _INCIDENT_TIMES)


def load_alerts(path: str | Path | None) -> pd.DataFrame:
    """Read the flow's ``alerts.jsonl``; a missing or empty file gives an empty frame.

    Columns are :data:`ALERT_COLUMNS` (plus any extra keys found), times UTC, ``episode`` Int64.
    A line that is not a JSON object raises ``ValueError`` naming the file and line.
    """
    return _normalise_alerts(_read_jsonl(None if path is None else Path(path), ALERT_COLUMNS))


def load_incidents(path: str | Path | None) -> pd.DataFrame:
    """Read the flow's ``incidents.jsonl`` (same rules as :func:`load_alerts`)."""
    return _normalise_incidents(_read_jsonl(None if path is None else Path(path), INCIDENT_COLUMNS))


class _Event(msgspec.Struct):
    """The fields of a native scan event the scorer reads (others are ignored)."""

    package_id: str | None = None
    event_code: str | None = None
    facility_id: str | None = None
    event_time: str | None = None
    ingest_time: str | None = None
    service: str | None = None
    promised_date: str | None = None
    promised_by: str | None = None
    destination: str | None = None
    recipient_ref: str | None = None


def load_events(path: str | Path) -> pd.DataFrame:
    """Read the native scan events (``events.jsonl``), keeping ingestion order.

    Columns are :data:`EVENT_COLUMNS` (object dtype; first-event-only fields are missing on the
    other events), times UTC (unparseable = NaT). A line that is not a JSON object, or whose
    known fields are not strings/null, is skipped: the flow dead-letters it, it is no scan.
    About 3 s per million events (msgspec decoding, then pandas date parsing).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"scan events {path} are missing (the simulator writes events.jsonl)"
        )
    decoder = msgspec.json.Decoder(_Event)
    data = path.read_bytes()
    try:  # fast path: the whole file in one call
        events = decoder.decode_lines(data)
    except (msgspec.DecodeError, msgspec.ValidationError):  # some bad line: go line by line
        events = []
        for line in data.splitlines():
            try:
                events.append(decoder.decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
    fields = list(_Event.__struct_fields__)
    table = np.empty((len(events), len(fields)), dtype=object)
    if events:
        table[:] = [msgspec.structs.astuple(event) for event in events]
    frame = pd.DataFrame(table, columns=fields, dtype=object)[EVENT_COLUMNS]
    return _parse_times(frame, _EVENT_TIMES)


# ---------------------------------------------------------------------------------------------
# helpers for figures


def _lookup(table: pd.Series, keys: pd.Series) -> pd.Series:
    """``keys.map(table)`` that keeps the table's dtype even when nothing matches."""
    table = table[~table.index.duplicated(keep="first")]
    return pd.Series(table.reindex(keys.to_numpy()).to_numpy(), index=keys.index, dtype=table.dtype)


def _ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator == 0 else float(numerator) / float(denominator)


def _percentile(values: pd.Series, q: float) -> float | None:
    array = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    return None if array.size == 0 else float(np.percentile(array, q))


def _hours(delta: pd.Series) -> pd.Series:
    return delta.dt.total_seconds() / 3600.0


def _minutes(delta: pd.Series) -> pd.Series:
    return delta.dt.total_seconds() / 60.0


def _json_safe(value: Any) -> Any:
    """Plain Python types only: numpy scalars unwrapped, NaN/inf/NaT turned into None."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return None if not math.isfinite(float(value)) else float(value)
    return value


def _package_figures(packages: pd.DataFrame) -> dict[str, Any]:
    """Recall, timeliness and lead time over a set of truth packages (columns added by score)."""
    late = packages[packages["late"]]
    alerted_late = late[late["alerted"]]
    before_promise = late["first_alert"] < late["promised_by"]
    lead = _hours(alerted_late["promised_by"] - alerted_late["first_alert"])
    return {
        "packages": len(packages),
        "late_packages": len(late),
        "alerted_packages": int(packages["alerted"].sum()),
        "late_recall": _ratio(len(alerted_late), len(late)),
        "alerted_before_promise": _ratio(int(before_promise.sum()), len(late)),
        "lead_time_hours_p50": _percentile(lead, 50),
        "lead_time_hours_p90": _percentile(lead, 90),
    }


def _estimate_figures(
    delay: pd.DataFrame, moving: pd.DataFrame, truth: pd.DataFrame
) -> dict[str, Any]:
    """How good the revised estimates were: of each package's first delay alert, and of the
    back-on-track messages (``truth``: the packages indexed by id)."""
    first = delay.sort_values("alert_time", kind="stable").drop_duplicates("package_id")
    delivered = _to_utc(_lookup(truth["delivered_at"], first["package_id"]))
    promised = _to_utc(_lookup(truth["promised_by"], first["package_id"]))
    known = delivered.notna()
    given = known & first["new_estimate"].notna()
    error = _hours(first["new_estimate"][given] - delivered[given])
    promise_error = _hours(promised[given] - delivered[given]).abs()
    moving_error = _hours(moving["new_estimate"] - _to_utc(
        _lookup(truth["delivered_at"], moving["package_id"]))).abs()
    return {
        "estimates_given": _ratio(int(given.sum()), int(known.sum())),
        "estimate_error_hours_p50": _percentile(error.abs(), 50),
        "estimate_error_hours_p90": _percentile(error.abs(), 90),
        "estimate_within_24h": _ratio(int((error.abs() <= 24).sum()), int(given.sum())),
        "estimate_bias_hours_p50": _percentile(error, 50),
        "promise_error_hours_p50": _percentile(promise_error, 50),
        "back_on_track_estimates_given": _ratio(int(moving["new_estimate"].notna().sum()),
                                                len(moving)),
        "back_on_track_estimate_error_hours_p50": _percentile(moving_error, 50),
    }


def _names_long(frame: pd.DataFrame, key: str, columns: Iterable[str]) -> pd.DataFrame:
    """One row per (key, facility id named in ``columns``); space-separated lists are split."""
    parts = []
    for column in columns:
        if column not in frame.columns:
            continue
        text = frame[column].astype(object).where(frame[column].notna(), "").astype(str)
        part = pd.DataFrame({key: frame[key].to_numpy(), "name": text.str.split().to_numpy()})
        parts.append(part.explode("name"))
    if not parts:
        return pd.DataFrame({key: [], "name": []})
    names = pd.concat(parts, ignore_index=True).dropna(subset=["name"])
    return names[names["name"] != ""].drop_duplicates()


def _match(
    truth_incidents: pd.DataFrame, output: pd.DataFrame, *, detection: bool = False
) -> pd.DataFrame:
    """Pairs (incident_id, incident_key, onset, opened_at) of matching truth/output incidents.

    ``output`` is collapsed (:func:`_collapse_incidents`): one row per key with its ``kind``
    and ``names``. ``detection``: only the pairs in which the output incident *detects* the
    truth incident: a lane delay by a ``lane_delay`` incident on the same lane, a facility
    incident by a facility incident (any other kind but ``lane_delay``); else every pair in
    which it *explains* it (any id in common).
    """
    columns = ["incident_id", "incident_key", "onset", "opened_at"]
    if truth_incidents.empty or output.empty:
        no_time = pd.Series([], dtype="datetime64[ns, UTC]")
        return pd.DataFrame(
            {"incident_id": [], "incident_key": [], "onset": no_time, "opened_at": no_time}
        )
    covered = _names_long(truth_incidents, "incident_id", ("facility_id", "lane_to", "facilities"))
    spans = truth_incidents[["incident_id", "onset", "end"]].copy()
    # visible in the feed until its last effect: a lane delay's delayed arrivals, a slowdown's
    # backlog draining after its end (older truths have no last_effect; lanes, seen_until)
    for later in ("seen_until", "last_effect"):
        if later in truth_incidents:
            after = _to_utc(truth_incidents[later])
            # (no end: no upper bound, whatever its last effect)
            spans["end"] = spans["end"].where(
                after.isna() | spans["end"].isna() | (after <= spans["end"]), after)
    covered = covered.merge(spans, on="incident_id", how="left")
    named = _names_long(output, "incident_key", ("names",))
    named = named.merge(output[["incident_key", "opened_at"]], on="incident_key", how="left")
    pairs = covered.merge(named, on="name")
    upper = pairs["end"] + _MATCH_AFTER
    inside = (pairs["opened_at"] >= pairs["onset"] - _MATCH_BEFORE) & (
        pairs["end"].isna() | (pairs["opened_at"] <= upper)
    )
    pairs = pairs.loc[inside, columns].drop_duplicates(["incident_id", "incident_key"])
    if detection and not pairs.empty:
        truth = truth_incidents.drop_duplicates("incident_id").set_index("incident_id")
        out = output.drop_duplicates("incident_key").set_index("incident_key")
        truth_lane = truth["kind"].reindex(pairs["incident_id"]).to_numpy() == "lane_delay"
        out_lane = out["kind"].reindex(pairs["incident_key"]).to_numpy() == "lane_delay"
        names = out["names"].reindex(pairs["incident_key"]).fillna("").str.split().to_numpy()
        ends = zip(truth["facility_id"].reindex(pairs["incident_id"]).to_numpy(),
                   truth["lane_to"].reindex(pairs["incident_id"]).to_numpy(), strict=True)
        same_lane = [{a, b} <= set(n) for (a, b), n in zip(ends, names, strict=True)]
        keep = np.where(truth_lane, out_lane & np.array(same_lane, dtype=bool), ~out_lane)
        pairs = pairs[keep]
    return pairs


def _collapse_incidents(incidents: pd.DataFrame) -> pd.DataFrame:
    """One row per output incident_key: first kind, earliest opened_at, ``names`` (all ids)."""
    frame = _normalise_incidents(incidents).reset_index(drop=True)
    missing = frame["incident_key"].isna()
    frame.loc[missing, "incident_key"] = [f"row-{i}" for i in frame.index[missing]]
    frame["incident_key"] = frame["incident_key"].astype(str)
    if frame.empty:
        return pd.DataFrame({"incident_key": [], "kind": [], "opened_at": [], "names": []})
    grouped = frame.groupby("incident_key", sort=False)
    collapsed = pd.DataFrame(
        {"kind": grouped["kind"].first(), "opened_at": grouped["opened_at"].min()}
    ).reset_index()
    name_columns = [c for c in ("facility_id", "lane_to", "facilities") if c in frame.columns]
    names = _names_long(frame, "incident_key", name_columns)
    joined = names.groupby("incident_key")["name"].agg(" ".join)
    collapsed["names"] = collapsed["incident_key"].map(joined)  # space-separated
    return collapsed


def _span_weeks(meta: dict[str, Any]) -> float | None:
    try:
        start = pd.Timestamp(meta["start"])
        end = pd.Timestamp(meta["end"])
    except (KeyError, TypeError, ValueError):
        return None
    if start.tzinfo is None or end.tzinfo is None:
        return None
    weeks = (end - start).total_seconds() / (7 * 86400)
    return weeks if weeks > 0 else None


def _incident_figures(truth: Truth, incidents: pd.DataFrame | None) -> dict[str, Any]:
    known = truth.incidents
    facility_level = known[known["kind"].isin(FACILITY_INCIDENT_KINDS)].copy()
    feed = known[known["kind"] == "feed_outage"].copy()
    for frame in (facility_level, feed):
        missing = frame["incident_id"].isna()
        frame.loc[missing, "incident_id"] = [f"truth-row-{i}" for i in frame.index[missing]]
    figures: dict[str, Any] = {
        "incidents": len(facility_level),
        "incidents_detected": None,
        "incident_recall": None,
        "incident_detection_delay_minutes_p50": None,
        "incident_detection_delay_minutes_p90": None,
        "false_incidents": None,
        "false_incidents_per_facility_week": None,
        "feed_outages": len(feed),
        "feed_outages_detected": None,
        "false_feed_outages": None,
    }
    has_first_effect = "first_effect" in known.columns
    if has_first_effect:
        hidden = _minutes(_to_utc(facility_level["first_effect"]) - facility_level["onset"])
        figures.update(
            incident_detection_delay_from_first_effect_minutes_p50=None,
            incident_detection_delay_from_first_effect_minutes_p90=None,
            incident_first_effect_minutes_p50=_percentile(hidden, 50),
        )
    if incidents is None:
        return figures

    output = _collapse_incidents(incidents)
    is_feed = output["kind"] == "feed_outage"
    pairs = _match(facility_level, output[~is_feed], detection=True)
    first_open = pairs.groupby("incident_id")[["onset", "opened_at"]].min()
    delay = _minutes(first_open["opened_at"] - first_open["onset"]).clip(lower=0)
    if has_first_effect:
        first_effect = facility_level.drop_duplicates("incident_id").set_index("incident_id")
        since = first_open["opened_at"] - _to_utc(first_effect["first_effect"]).reindex(
            first_open.index
        )
        after_effect = _minutes(since).clip(lower=0)  # NaN (skipped) without a first_effect
        figures.update(
            incident_detection_delay_from_first_effect_minutes_p50=_percentile(after_effect, 50),
            incident_detection_delay_from_first_effect_minutes_p90=_percentile(after_effect, 90),
        )
    explained = _match(facility_level, output[~is_feed])["incident_key"]
    false_incidents = int((~output.loc[~is_feed, "incident_key"].isin(explained)).sum())
    feed_pairs = _match(feed, output[is_feed])

    kinds = truth.facilities["kind"].astype(object).where(truth.facilities["kind"].notna(), "")
    plants = int(kinds.astype(str).str.strip().isin(["plant", "ndc"]).sum())
    weeks = _span_weeks(truth.meta)
    facility_weeks = 0.0 if weeks is None else plants * weeks

    figures.update(
        incidents_detected=len(first_open),
        incident_recall=_ratio(len(first_open), len(facility_level)),
        incident_detection_delay_minutes_p50=_percentile(delay, 50),
        incident_detection_delay_minutes_p90=_percentile(delay, 90),
        false_incidents=false_incidents,
        false_incidents_per_facility_week=_ratio(false_incidents, facility_weeks),
        feed_outages_detected=int(feed_pairs["incident_id"].nunique()),
        false_feed_outages=int(
            (~output.loc[is_feed, "incident_key"].isin(feed_pairs["incident_key"])).sum()
        ),
    )
    return figures


# ---------------------------------------------------------------------------------------------
# scoring


def score(
    alerts: pd.DataFrame, truth: Truth, incidents: pd.DataFrame | None = None
) -> dict[str, Any]:
    """Score alerts (and optionally incidents) against the truth; see the module docstring.

    Returns one flat, JSON-serialisable dict (plus the nested ``by_cause``).
    """
    messages = _normalise_alerts(alerts)
    delay = messages[messages["kind"].isin(DELAY_KINDS)]
    first_alert = delay.groupby("package_id")["alert_time"].min()
    alerted_ids = pd.Index(delay["package_id"].dropna().unique())

    packages = truth.packages.copy()
    ids = packages["package_id"]
    packages["alerted"] = ids.isin(alerted_ids)
    packages["first_alert"] = _to_utc(_lookup(first_alert, ids))
    inquiries = truth.inquiries.dropna(subset=["package_id"])
    first_inquiry = inquiries.groupby("package_id")["inquiry_time"].min()
    packages["first_inquiry"] = _to_utc(_lookup(first_inquiry, ids))
    stalled = packages["stall_onset"].notna()

    result: dict[str, Any] = {}
    overall = _package_figures(packages)
    result["packages"] = overall["packages"]
    result["late_packages"] = overall["late_packages"]
    result["on_time_packages"] = int((~packages["late"]).sum())
    result["alerts"] = len(delay)
    result["messages"] = len(messages)
    result["alerted_packages"] = len(alerted_ids)
    result["late_recall"] = overall["late_recall"]
    true_alerted = int((packages["alerted"] & (packages["late"] | stalled)).sum())
    result["alert_precision"] = _ratio(true_alerted, len(alerted_ids))
    result["alerted_before_promise"] = overall["alerted_before_promise"]

    asked = packages[packages["late"] & packages["first_inquiry"].notna()]
    result["late_packages_with_inquiry"] = len(asked)
    before_inquiry = int((asked["first_alert"] < asked["first_inquiry"]).sum())
    result["alerted_before_inquiry"] = _ratio(before_inquiry, len(asked))
    result["lead_time_hours_p50"] = overall["lead_time_hours_p50"]
    result["lead_time_hours_p90"] = overall["lead_time_hours_p90"]

    false_alerted = int((packages["alerted"] & ~packages["late"]).sum())
    result["false_alert_packages"] = false_alerted
    per_on_time = _ratio(false_alerted, result["on_time_packages"])
    result["false_alerts_per_1000"] = None if per_on_time is None else 1000.0 * per_on_time

    truth_by_id = packages.set_index("package_id")
    delivered = truth_by_id["delivered_at"]
    after = messages["alert_time"] > _to_utc(_lookup(delivered, messages["package_id"]))
    result["alerts_after_delivery"] = int((after & messages["kind"].isin(DELAY_KINDS)).sum())
    result["messages_after_delivery"] = int(after.sum())

    triple = ["package_id", "kind", "episode"]
    repeated_triple = messages.duplicated(subset=triple, keep="first")
    has_key = messages["alert_key"].notna()
    repeated_key = has_key & messages.duplicated(subset=["alert_key"], keep="first")
    result["duplicate_messages"] = int((repeated_triple | repeated_key).sum())
    result["duplicate_alert_keys"] = int(repeated_key.sum())
    expected_key = (
        messages["package_id"].astype(str)
        + ":"
        + messages["kind"].astype(str)
        + ":"
        + messages["episode"].astype(str)
    )
    result["alert_key_mismatches"] = int(
        (has_key & (messages["alert_key"].astype(str) != expected_key)).sum()
    )

    moving = messages[messages["kind"] == "back_on_track"]
    result.update(_estimate_figures(delay, moving, truth_by_id))

    outage = (packages["cause"] == "feed_outage") & ~packages["late"]
    outage_ids = packages.loc[outage, "package_id"]
    outage_alerts = delay[delay["package_id"].isin(outage_ids)].drop_duplicates(subset=triple)
    result["customer_alerts_for_feed_outages"] = len(outage_alerts)

    result.update(_incident_figures(truth, incidents))

    # an empty cause (a truth of one's own feed without causes) is a group of its own
    cause_of = packages["cause"].fillna("unknown").astype(str).replace("", "unknown")
    causes = list(CAUSES) + sorted(set(cause_of) - set(CAUSES))
    by_cause = {}
    for cause in causes:
        figures = _package_figures(packages[cause_of == cause])
        figures.pop("lead_time_hours_p90")
        by_cause[cause] = figures
    result["by_cause"] = by_cause
    return _json_safe(result)


# ---------------------------------------------------------------------------------------------
# baselines


def baseline_alerts(
    events: pd.DataFrame, kind: Literal["none", "fixed"] = "none", hours: float = 48.0
) -> pd.DataFrame:
    """Alerts of a trivial detector, to put a run's figures in context.

    ``"none"`` alerts nothing; ``"fixed"`` raises a ``stall`` alert ``hours`` after a scan that is
    followed by no scan for more than ``hours`` (see the module docstring). Vectorised: about a
    second per million events.

    Examples
    --------
    >>> import pandas as pd
    >>> events = pd.DataFrame({
    ...     "package_id": ["P1", "P1", "P1"],
    ...     "event_code": ["GX", "03", "A1"],
    ...     "facility_id": ["F1", "F1", "F2"],
    ...     "event_time": ["2024-01-01T00:00:00+00:00", "2024-01-01T02:00:00+00:00",
    ...                    "2024-01-03T12:00:00+00:00"],
    ... })
    >>> alerts = baseline_alerts(events, "fixed", hours=48.0)
    >>> alerts["alert_key"].tolist(), [str(t) for t in alerts["alert_time"]]
    (['P1:stall:1'], ['2024-01-03 02:00:00+00:00'])
    """
    if kind not in ("none", "fixed"):
        raise ValueError(f"baseline kind must be 'none' or 'fixed', not {kind!r}")
    if not hours > 0:
        raise ValueError(f"baseline hours must be positive, not {hours!r}")
    empty = _normalise_alerts(pd.DataFrame(columns=ALERT_COLUMNS))
    if kind == "none":
        return empty

    frame = _parse_times(_with_columns(events, EVENT_COLUMNS), _EVENT_TIMES)
    frame = frame[frame["package_id"].notna() & frame["event_time"].notna()]
    if frame.empty:
        return empty
    latest = frame["event_time"].max()
    with_promise = frame.loc[frame["promised_by"].notna(), ["package_id", "promised_by"]]
    promised = with_promise.drop_duplicates("package_id").set_index("package_id")["promised_by"]

    # Sort by (package, event time) on integer codes: much faster than sorting strings.
    package, _ = pd.factorize(frame["package_id"], sort=True)
    times = frame["event_time"].dt.tz_localize(None).to_numpy()  # naive UTC datetime64
    order = np.lexsort((times, package))  # stable: ties keep ingestion order
    package, times = package[order], times[order]
    terminal = frame["event_code"].isin(list(TERMINAL_CODES)).to_numpy()[order]
    index = np.arange(len(order))

    # Drop everything after a package's first terminal scan.
    first_row = np.ones(len(order), dtype=bool)
    first_row[1:] = package[1:] != package[:-1]
    group_start = np.maximum.accumulate(np.where(first_row, index, 0))
    terminals_through = np.cumsum(terminal)
    terminals_before = terminals_through - terminal - (terminals_through - terminal)[group_start]
    keep = terminals_before == 0
    order, package, times, terminal = order[keep], package[keep], times[keep], terminal[keep]

    same_next = np.zeros(len(order), dtype=bool)
    same_next[:-1] = package[1:] == package[:-1]
    threshold = np.timedelta64(round(hours * 3600 * 1_000_000), "us")
    alert_at = times + threshold
    gap = np.zeros(len(order), dtype=bool)
    gap[:-1] = same_next[:-1] & ((times[1:] - times[:-1]) > threshold)
    open_end = ~same_next & ~terminal
    fire = (gap | open_end) & (alert_at <= latest.tz_localize(None).to_datetime64())

    fired = frame.iloc[order[fire]].reset_index(drop=True)
    fired_package = package[fire]
    fired_index = np.arange(len(fired))
    new_package = np.ones(len(fired), dtype=bool)
    new_package[1:] = fired_package[1:] != fired_package[:-1]
    episode = fired_index - np.maximum.accumulate(np.where(new_package, fired_index, 0)) + 1
    episode = pd.Series(episode, dtype="Int64")
    alerts = pd.DataFrame(
        {
            "alert_key": fired["package_id"].astype(str) + ":stall:" + episode.astype(str),
            "kind": "stall",
            "package_id": fired["package_id"],
            "episode": episode,
            "alert_time": _to_utc(pd.Series(alert_at[fire])),
            "facility_id": fired["facility_id"],
            "last_event_code": fired["event_code"],
            "last_scan_time": fired["event_time"],
            "silence_seconds": hours * 3600.0,
            "expected_seconds": hours * 3600.0,
            "promised_by": _to_utc(_lookup(promised, fired["package_id"])),
            "new_estimate": pd.NaT,
            "p_late": np.nan,
            "incident_key": None,
            "evidence": f"no scan for {hours:g} h (fixed-threshold baseline)",
        }
    )
    return _normalise_alerts(alerts)


def evaluate(
    alerts_path: str | Path,
    truth_dir: str | Path,
    incidents_path: str | Path | None = None,
    with_baselines: bool = True,
) -> dict[str, Any]:
    """Score ``alerts_path`` (and ``incidents_path``) against ``truth_dir``.

    With ``with_baselines`` the result also holds
    ``baselines: {"none": {...}, "fixed_48h": {...}}``, computed from ``truth_dir/events.jsonl``
    and scored the same way.
    """
    truth = load_truth(truth_dir)
    incidents = None if incidents_path is None else load_incidents(incidents_path)
    result = score(load_alerts(alerts_path), truth, incidents)
    if with_baselines:
        events_path = Path(truth_dir) / "events.jsonl"
        if not events_path.exists():
            raise FileNotFoundError(
                f"baselines need the scan events {events_path}; pass with_baselines=False to skip"
            )
        events = load_events(events_path)
        no_incidents = None if incidents is None else load_incidents(None)
        result["baselines"] = {
            "none": score(baseline_alerts(events, "none"), truth, no_incidents),
            "fixed_48h": score(baseline_alerts(events, "fixed", 48.0), truth, no_incidents),
        }
    return result


# ---------------------------------------------------------------------------------------------
# presentation


def _rows(result: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for key, value in result.items():
        if key == "baselines" and not prefix:
            continue
        if isinstance(value, dict):
            rows.update(_rows(value, f"{prefix}{key}."))
        else:
            rows[f"{prefix}{key}"] = value
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}"
    return str(value)


def format_table(result: dict[str, Any]) -> str:
    """Render a result of :func:`score` / :func:`evaluate` as a plain-text table.

    Columns: metric, this run, then one per baseline ("no alerts", "fixed 48 h"). ``by_cause``
    rows read ``by_cause.<cause>.<metric>``; ``-`` marks a figure that is undefined (None).
    """
    columns = [_rows(result)]
    headers = ["metric", "this run"]
    for name, baseline in (result.get("baselines") or {}).items():
        columns.append(_rows(baseline))
        headers.append(_BASELINE_LABELS.get(name, name))
    metrics = list(columns[0])
    for extra in columns[1:]:
        metrics += [m for m in extra if m not in columns[0]]
    table = [headers] + [[m] + [_cell(c.get(m)) for c in columns] for m in metrics]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        cells = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([row[0].ljust(widths[0]), *cells]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(table[0]), rule] + [line(row) for row in table[1:]])


# ---------------------------------------------------------------------------------------------
# Customer messages


def score_messages(messages: pd.DataFrame, truth: Truth) -> dict[str, Any]:
    """How many messages each customer got: the grouping figures of the facility-incident issue.

    ``messages`` has one row per message sent or queued (the outbox), with ``recipient_ref``
    and ``kind``. An *affected customer* has at least one package whose truth ``cause`` is a
    facility-level incident kind (``FACILITY_INCIDENT_KINDS``).

    - ``customers_messaged``: distinct recipients with a message;
      ``messages_per_customer_max``: the most any of them got.
    - ``affected_customers``: affected customers (messaged or not);
      ``affected_customers_messaged``: those of them with a message;
      ``messages_per_affected_customer_max`` / ``_mean``: over affected customers with a
      message, every message counted (an unrelated stall of another of their packages too).
    - ``incident_messages_per_affected_customer_max``: the same over the messages about an
      incident (rows with an ``incident_key``, when the frame has that column): the grouping
      bar of the facility-incident issue, at most 2 (delay + back on track) per incident.

    >>> truth = Truth(pd.DataFrame({"recipient_ref": ["C1", "C1", "C2"],
    ...                             "cause": ["weather", "weather", "none"]}),
    ...               pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), {})
    >>> sent = pd.DataFrame({"recipient_ref": ["C1", "C1", "C2"],
    ...                      "kind": ["incident_delay", "back_on_track", "stall"]})
    >>> r = score_messages(sent, truth)
    >>> r["affected_customers"], r["messages_per_affected_customer_max"]
    (1, 2)
    """
    per = messages.groupby("recipient_ref").size() if len(messages) else pd.Series(dtype=int)
    packages = truth.packages
    affected = pd.Index(
        packages.loc[packages["cause"].isin(FACILITY_INCIDENT_KINDS), "recipient_ref"]
        .dropna().unique()
    )
    hit = per[per.index.isin(affected)]
    about = messages
    if "incident_key" in messages.columns:
        about = messages[messages["incident_key"].notna()]
    per_incident = (about.groupby(["recipient_ref", "incident_key"]).size()
                    if len(about) and "incident_key" in about.columns else pd.Series(dtype=int))
    hit_incident = per_incident[
        per_incident.index.get_level_values(0).isin(affected)] if len(per_incident) else []
    return {
        "messages": int(len(messages)),
        "customers_messaged": int(len(per)),
        "messages_per_customer_max": int(per.max()) if len(per) else 0,
        "affected_customers": int(len(affected)),
        "affected_customers_messaged": int(len(hit)),
        "messages_per_affected_customer_max": int(hit.max()) if len(hit) else 0,
        "messages_per_affected_customer_mean": round(float(hit.mean()), 3) if len(hit) else None,
        "incident_messages_per_affected_customer_max": (
            int(hit_incident.max()) if len(hit_incident) else 0),
    }
