"""Per-package tracking in event time: compact state, a time wheel, stall episodes.

:class:`PackageTracker` is the engine-free core of the stall flow. It holds every in-flight
package in a few columns (``array.array``: 8-byte times, small ints), learns each stage's usual
silence with a :class:`~detectors.stall.StallDetector`, and fires a stall alert when the
event-time watermark passes a package's deadline, without waiting for the package to scan
again. The Bytewax flow runs one tracker per shard; a notebook can run one over a file.

Time
    The watermark is the largest event time seen, held back by ``allowed_lateness`` (scans
    reach the feed minutes to hours after they happen). Deadlines go into buckets of
    ``bucket_seconds``; a bucket fires once the watermark is past its end. Everything
    depends only on the order of events, never on the wall clock, so a replay raises exactly
    the alerts that live processing raised. In live mode the caller may move the clock with
    :meth:`advance` while the feed is idle.

Episodes
    A stall opens an episode (``alert_key = "{package}:stall:{n}"``). The next in-order scan
    resolves it with one ``back_on_track`` record; a package has at most one open episode.
    Delivered and returned packages are forgotten at once and never alerted again; a scan for
    a package whose first (``GX``) event was never seen is counted and ignored, so a late
    scan of a delivered, forgotten package cannot raise an alert.

Memory
    About 150-200 bytes per in-flight package (see ``bench/``): a dict entry and the id
    string, ~40 bytes of columns, one wheel entry. Packages silent for ``ttl_seconds`` are
    dropped.

Examples
--------
>>> from detectors import ScanEvent, StallDetector
>>> from detectors.tracker import PackageTracker
>>> t0 = 1_790_000_000
>>> tracker = PackageTracker(StallDetector(prior_hours={"A1": (6, 24)}), allowed_lateness=0,
...                          bucket_seconds=600)
>>> tracker.process(ScanEvent("P1", "GX", "O1", t0, t0, service="ground",
...                 promised_by_ts=t0 + 3 * 86400, recipient_ref="C1"))
[]
>>> tracker.process(ScanEvent("P1", "A1", "PLANT", t0 + 3600, t0 + 3600))
[]

Another package's scans move the watermark; 24 h after P1's arrival scan it is overdue.

>>> tracker.process(ScanEvent("P2", "GX", "O1", t0 + 20 * 3600, t0 + 20 * 3600)) == []
True
>>> [a["alert_key"] for a in tracker.process(ScanEvent("P2", "03", "O1", t0 + 26 * 3600,
...                                                    t0 + 26 * 3600))]
['P1:stall:1']
>>> [a["kind"] for a in tracker.process(ScanEvent("P1", "T1", "PLANT", t0 + 27 * 3600,
...                                               t0 + 27 * 3600))]
['back_on_track']
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zlib import crc32

from detectors.eta import DeliveryEstimator
from detectors.events import CODES, TERMINAL_CODES, ScanEvent
from detectors.stall import StallDetector

__all__ = ["PackageTracker", "TrackerStats"]

_SERVICES = (None, "express", "ground")
_SVC = {s: i for i, s in enumerate(_SERVICES)}
_OPEN = 1  # flag: a stall episode is open
_NO_DEADLINE = -1
# codes before the network has the package (label created, shipper has it): no stall alert
PRE_SHIPMENT = frozenset({"GX", "MA", "89", "TM", "GC"})


@dataclass
class TrackerStats:
    """Counters by outcome (what happened to each event)."""

    accepted: int = 0
    duplicate: int = 0
    out_of_order: int = 0
    no_header: int = 0
    delivered: int = 0
    stalls: int = 0
    resolved: int = 0
    expired: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)


def _iso(ts: float | None) -> str | None:
    if ts is None or ts < 0:
        return None
    return datetime.fromtimestamp(int(ts), UTC).isoformat()


class PackageTracker:
    """Tracks in-flight packages of one shard; see the module docstring.

    Parameters
    ----------
    detector
        Learns and answers per-stage silence thresholds.
    estimator
        Optional delivery-time estimator for ``new_estimate`` and ``p_late``.
    allowed_lateness
        Seconds the watermark trails the largest event time seen.
    bucket_seconds
        Width of a time-wheel bucket: alerts fire at most this much after their deadline.
    ttl_seconds
        A package silent this long (event time) is dropped without an alert.
    eta_sample_every
        One package in this many (by id hash) keeps its scan history to teach ``estimator``.
    names
        Facility id -> human name for the evidence sentence.
    """

    def __init__(
        self,
        detector: StallDetector,
        estimator: DeliveryEstimator | None = None,
        *,
        allowed_lateness: int = 3600,
        bucket_seconds: int = 900,
        ttl_seconds: int = 30 * 86400,
        eta_sample_every: int = 8,
        names: Mapping[str, str] | None = None,
    ) -> None:
        self.detector = detector
        self.estimator = estimator
        self.allowed_lateness = allowed_lateness
        self.bucket_seconds = bucket_seconds
        self.ttl_seconds = ttl_seconds
        self.eta_sample_every = eta_sample_every
        self.names = dict(names or {})
        self.stats = TrackerStats()
        self.max_event_ts = 0
        self._fired_through = -1  # last wheel bucket fired
        self._index: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._recipient: list[str | None] = []
        self._last_ts = array("q")
        self._deadline = array("q")
        self._promised = array("q")
        self._fac = array("i")
        self._code = array("h")
        self._svc = array("b")
        self._flags = array("b")
        self._episode = array("h")
        self._free: list[int] = []
        self._facilities: list[str | None] = [None]
        self._fac_no: dict[str | None, int] = {None: 0}
        self._codes = list(CODES)
        self._code_no = {c: i for i, c in enumerate(self._codes)}
        self._wheel: dict[int, array] = {}
        self._history: dict[int, list[tuple[str | None, str, int]]] = {}
        self._next_sweep = 0

    # -- state -----------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._index)

    @property
    def open_episodes(self) -> int:
        return sum(1 for i in self._index.values() if self._flags[i] & _OPEN)

    @property
    def watermark(self) -> int:
        return self.max_event_ts - self.allowed_lateness

    def _facility_no(self, facility: str | None) -> int:
        no = self._fac_no.get(facility)
        if no is None:
            no = self._fac_no[facility] = len(self._facilities)
            self._facilities.append(facility)
        return no

    def _new_slot(self, package_id: str) -> int:
        if self._free:
            slot = self._free.pop()
            self._ids[slot] = package_id
        else:
            slot = len(self._ids)
            self._ids.append(package_id)
            self._recipient.append(None)
            for col in (self._last_ts, self._deadline, self._promised):
                col.append(0)
            for col in (self._fac, self._code, self._svc, self._flags, self._episode):
                col.append(0)
        self._index[package_id] = slot
        return slot

    def _forget(self, slot: int) -> None:
        pid = self._ids[slot]
        if pid is not None:
            del self._index[pid]
        self._ids[slot] = None
        self._recipient[slot] = None
        self._deadline[slot] = _NO_DEADLINE
        self._flags[slot] = 0
        self._episode[slot] = 0
        self._history.pop(slot, None)
        self._free.append(slot)

    # -- events ----------------------------------------------------------------------------
    def process(self, ev: ScanEvent) -> list[dict[str, Any]]:
        """Apply one valid event; returns the alerts it caused (due stalls first)."""
        out: list[dict[str, Any]] = []
        if ev.event_ts > self.max_event_ts:
            self.max_event_ts = ev.event_ts
            self._fire_due(out)
        slot = self._index.get(ev.package_id)
        if slot is None:
            if ev.code in TERMINAL_CODES or ev.service is None:
                # no header: nothing to alert on (and maybe a late scan of a forgotten package)
                self.stats.no_header += 1
                return out
            slot = self._new_slot(ev.package_id)
            self._svc[slot] = _SVC.get(ev.service, 0)
            self._promised[slot] = ev.promised_by_ts if ev.promised_by_ts is not None else -1
            self._recipient[slot] = ev.recipient_ref
            if self.eta_sample_every and hash_id(ev.package_id) % self.eta_sample_every == 0:
                self._history[slot] = []
            self._apply(slot, ev, out, first=True)
            return out
        last = self._last_ts[slot]
        if ev.event_ts < last:
            self.stats.out_of_order += 1
            return out
        code_no = self._code_no.get(ev.code)
        if (
            ev.event_ts == last
            and code_no == self._code[slot]
            and self._facilities[self._fac[slot]] == ev.facility
        ):
            self.stats.duplicate += 1
            return out
        if ev.service is not None and self._recipient[slot] is None:  # header after a scan
            self._svc[slot] = _SVC.get(ev.service, 0)
            self._recipient[slot] = ev.recipient_ref
            if ev.promised_by_ts is not None:
                self._promised[slot] = ev.promised_by_ts
        self._apply(slot, ev, out, first=False)
        return out

    def _apply(self, slot: int, ev: ScanEvent, out: list[dict[str, Any]], first: bool) -> None:
        self.stats.accepted += 1
        service = _SERVICES[self._svc[slot]]
        if not first:
            prev_code = self._codes[self._code[slot]]
            prev_fac = self._facilities[self._fac[slot]]
            prev_ts = self._last_ts[slot]
            if self._flags[slot] & _OPEN:
                self._flags[slot] &= ~_OPEN
                self.stats.resolved += 1
                out.append(self._alert(slot, "back_on_track", ev.event_ts, ev))
            elif prev_code not in PRE_SHIPMENT:
                self.detector.learn_one({"facility": prev_fac, "code": prev_code,
                                         "service": service, "last_ts": prev_ts,
                                         "gap": ev.event_ts - prev_ts})
        history = self._history.get(slot)
        if ev.code in TERMINAL_CODES:
            if history is not None and self.estimator is not None and ev.code == "01":
                self.estimator.learn_one({"service": service, "delivered_ts": ev.event_ts,
                                          "scans": history})
            self.stats.delivered += 1
            self._forget(slot)
            return
        if history is not None:
            history.append((ev.facility, ev.code, ev.event_ts))
        code_no = self._code_no.get(ev.code)
        if code_no is None:
            code_no = self._code_no[ev.code] = len(self._codes)
            self._codes.append(ev.code)
        self._code[slot] = code_no
        self._fac[slot] = self._facility_no(ev.facility)
        self._last_ts[slot] = ev.event_ts
        deadline = _NO_DEADLINE
        if ev.code not in PRE_SHIPMENT:
            found = self.detector.threshold({"facility": ev.facility, "code": ev.code,
                                             "service": service, "last_ts": ev.event_ts})
            if found is not None:
                deadline = ev.event_ts + int(found[0])
        self._deadline[slot] = deadline
        if deadline != _NO_DEADLINE:
            bucket = deadline // self.bucket_seconds
            if bucket <= self._fired_through:  # already overdue (a late or slow scan)
                bucket = self._fired_through + 1
            wheel = self._wheel.get(bucket)
            if wheel is None:
                wheel = self._wheel[bucket] = array("i")
            wheel.append(slot)

    # -- time ------------------------------------------------------------------------------
    def advance(self, event_ts: int) -> list[dict[str, Any]]:
        """Move the clock to ``event_ts`` without an event (live mode, idle feed)."""
        out: list[dict[str, Any]] = []
        if event_ts > self.max_event_ts:
            self.max_event_ts = event_ts
            self._fire_due(out)
        return out

    def _fire_due(self, out: list[dict[str, Any]]) -> None:
        wm = self.max_event_ts - self.allowed_lateness
        through = wm // self.bucket_seconds - 1  # buckets whose end is <= wm
        if through <= self._fired_through:
            return
        if self._fired_through < 0:
            self._fired_through = min(self._wheel, default=through + 1) - 1
        deadline, flags, wheel = self._deadline, self._flags, self._wheel
        for bucket in range(self._fired_through + 1, through + 1):
            slots = wheel.pop(bucket, None)
            if slots is None:
                continue
            for slot in slots:
                d = deadline[slot]
                if d == _NO_DEADLINE or d > wm or flags[slot] & _OPEN or self._ids[slot] is None:
                    continue
                if d // self.bucket_seconds > bucket:
                    continue  # rescheduled to a later bucket (slot reused)
                flags[slot] |= _OPEN
                self._episode[slot] += 1
                self.stats.stalls += 1
                out.append(self._alert(slot, "stall", wm, None))
        self._fired_through = through
        if wm >= self._next_sweep:
            self._sweep(wm)

    def _sweep(self, wm: int) -> None:
        """Drop packages silent for longer than the TTL (abandoned, lost for good)."""
        self._next_sweep = wm + 86400
        cutoff = wm - self.ttl_seconds
        last = self._last_ts
        stale = [slot for slot in self._index.values() if last[slot] < cutoff]
        for slot in stale:
            self.stats.expired += 1
            self._forget(slot)

    # -- alerts ----------------------------------------------------------------------------
    def _alert(self, slot: int, kind: str, at: int, ev: ScanEvent | None) -> dict[str, Any]:
        pid = self._ids[slot]
        code = self._codes[self._code[slot]]
        fac = self._facilities[self._fac[slot]]
        service = _SERVICES[self._svc[slot]]
        last_ts = self._last_ts[slot]
        promised = self._promised[slot]
        episode = int(self._episode[slot])
        silence = at - last_ts
        x = {"facility": fac, "code": code, "service": service, "last_ts": last_ts}
        found = self.detector.threshold(x)
        expected = found[1] if found else None
        eta = p_late = None
        if self.estimator is not None and kind == "stall":
            eta, p_late = self.estimator.estimate(
                x | {"silence": silence, "promised_by_ts": promised if promised >= 0 else None})
        name = self.names.get(fac or "", fac or "in transit")
        if kind == "stall":
            evidence = (f"No scan for {silence / 3600:.0f} h at {name} (last scan: "
                        f"{CODE_TEXT.get(code, code)})"
                        + (f"; usually {expected / 3600:.0f} h." if expected else "."))
        else:
            where = self.names.get(ev.facility or "", ev.facility or "in transit") if ev else name
            evidence = f"Moving again: scanned at {where} after {silence / 3600:.0f} h."
        return {
            "alert_key": f"{pid}:{kind}:{episode}",
            "kind": kind,
            "package_id": pid,
            "episode": episode,
            "alert_time": _iso(at),
            "facility_id": fac,
            "facility_name": name,
            "last_event_code": code,
            "last_scan_time": _iso(last_ts),
            "silence_seconds": int(silence),
            "expected_seconds": None if expected is None else int(expected),
            "promised_by": _iso(promised if promised >= 0 else None),
            "new_estimate": _iso(eta),
            "p_late": None if p_late is None else round(float(p_late), 3),
            "incident_key": None,
            "evidence": evidence,
            "recipient_ref": self._recipient[slot],
        }

    # -- pickling (Bytewax snapshots) ---------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_index"]  # rebuilt from _ids
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._index = {pid: slot for slot, pid in enumerate(self._ids) if pid is not None}


CODE_TEXT = {
    "GX": "label created", "03": "accepted", "SF": "departed post office",
    "10": "arrived at origin facility", "A1": "arrived at facility", "T1": "departed facility",
    "TL": "in transit", "08": "missent", "07": "arrived at post office",
    "OF": "out for delivery", "02": "delivery attempted",
}


def hash_id(package_id: str) -> int:
    """A stable (process-independent) hash of a package id, for sharding and sampling."""
    return crc32(package_id.encode())

