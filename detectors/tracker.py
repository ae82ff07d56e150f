"""Per-package tracking in event time: compact state, a time wheel, stall episodes.

:class:`PackageTracker` is the engine-free core of the stall flow. It holds every in-flight
package in a few columns (``array.array``: 8-byte times, small ints), learns each stage's usual
silence with a :class:`~detectors.stall.StallDetector`, and fires a stall alert when the
event-time watermark passes a package's deadline, without waiting for the package to scan
again. The Bytewax flow runs one tracker per shard; a notebook can run one over a file.

Time
    The watermark is the largest event time seen, held back by ``allowed_lateness`` (scans
    reach the feed minutes to hours after they happen); an event time ahead of its line's
    ingestion time by more than ``CLOCK_SKEW`` (a scanner's clock running ahead) moves it
    only to that ingestion time plus ``CLOCK_SKEW``. Deadlines go into buckets of
    ``bucket_seconds``; a bucket fires once the watermark is past its end. Everything
    depends only on the order of events, never on the wall clock, so a replay raises exactly
    the alerts that live processing raised. In live mode the caller may move the clock with
    :meth:`advance` while the feed is idle.

Episodes
    A stall opens an episode (``alert_key = "{package}:stall:{n}"``). The next in-order scan
    resolves it with one ``back_on_track`` record; a package has at most one open episode. A
    scan older than the last one is counted (``out_of_order``) and dropped, but for a
    delivery or return (a handheld synced late), which ends the package as of its last scan;
    a scan of the last scan's second while the package is silent (stalled or watched) is a
    re-sent line (``duplicate``): it does not end the silence. Delivered and returned
    packages (``TERMINAL_CODES``) are forgotten at once; a scan for a package whose first
    (``GX``) event was never seen is counted (``no_header``) and ignored, so a late scan of
    a forgotten package cannot raise an alert; the newest such scan of each id is kept while
    the watermark has not passed it (at most ``_HEADERLESS_MAX``), and a header that comes
    meanwhile (the label line reached the feed after the first scan) is followed at once by
    it. A header line (one with a ``service``) could, so the tracker also remembers which
    packages finished, by a 56-bit fingerprint of the id: a header for one of them is a
    re-sent line, counted (``finished_echo``, and among the ``duplicate`` lines) and
    ignored, and the package stays forgotten, as is a header older than
    ``finished_retention_seconds`` before the newest event time (the memory cannot vouch for
    it, and a package that began that long ago could not be told in time). A finished
    package is remembered while the newest event time is less than
    ``finished_retention_seconds`` past the newest event time at its delivery, and forgotten
    about one generation (``finished_generation_seconds``) later; after that its id is free
    again and a header starts a new package. Packages dropped by the TTL are not remembered.
    Two ids share a fingerprint with odds of about ``remembered / 2**56`` per new package
    (1e-11 at 1 M).

Memory
    About 200-240 bytes per in-flight package (``bench/bench_flow.py memory``, results in
    ``bench/RESULTS.md``): the id as the int of its bytes (48 bytes for 22 digits, not a
    72-byte str) keying a dict (~35-42 bytes an entry), one int holding the slot and the
    recipient reference (40 bytes), ~36 bytes of columns, the slot -> id list (8), a wheel
    entry (4), and for one package in ``eta_sample_every`` its scans (24 bytes each) to teach
    the estimator. Packages silent for ``ttl_seconds`` are dropped. A snapshot (pickle) holds
    the index's ints and the columns as raw bytes, about 85 bytes per package.

    Finished packages are kept in generations ``finished_generation_seconds`` wide (by the
    newest event time): the current one in a set (~80 bytes an entry), the older ones merged
    into one sorted ``uint64`` array, 8 bytes an entry, whose low 8 bits tag the generation,
    so expired generations go with one mask and a lookup is one binary search, behind a
    bitmap of 8-16 bits an entry that rules out ~7 of 8 ids that never finished. Only a
    header for an unknown package looks them up; a delivery adds to the set. With ``D``
    deliveries a day and ``T`` days from label to delivery, ``D * T`` packages are in flight
    (Little's law) and at most ``D * retention`` are frozen plus ``D * generation`` in the
    set, so the memory costs ``(10 * retention + 80 * generation) / T`` bytes per in-flight
    package (days, with the bitmap at its mean): 7.1 + 0-1.6 bytes at the defaults (3 days,
    2 h) and the simulator's ``T`` = 4.2 days. A rotation (every generation) merges the set
    into the array (~10 ms at 1 M in flight) and redraws the bitmap (~17 ms at 1 M frozen).

Speed
    :meth:`process_batch` is the hot path: the columns, tables and the detector's methods are
    looked up once per batch, counters are kept in locals, and each event asks the detector
    at most twice (learn the gap just closed, threshold of the new stage). Most of the time
    per event is the detector's (see ``bench/RESULTS.md``).

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

import sys
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import blake2b
from typing import Any, NamedTuple
from zlib import crc32

import numpy as np

from detectors.eta import DeliveryEstimator
from detectors.events import (
    ARRIVAL_CODES,
    CODES,
    DEPARTURE_CODES,
    TERMINAL_CODES,
    ScanEvent,
    iso_time,
)
from detectors.facility import FacilityStats, FacilityWindow
from detectors.incidents import DELAY_KINDS, IncidentDesk
from detectors.stall import StallDetector

__all__ = ["Held", "PackageTracker", "TrackerStats"]

_iso = lru_cache(maxsize=1 << 14)(iso_time)  # alerts repeat times: watermarks, promised hours

_SERVICES = (None, "express", "ground")
_SVC = {s: i for i, s in enumerate(_SERVICES)}
_OPEN = 1  # flag: a stall episode is open
_WATCHED = 2  # flag: the current silence passed the watch deadline (a "watch" went out)
# flag: the last scan had no facility (TL, in transit); the facility column still holds the
# last facility scan's, and these two flags the kind of its code (for facility statistics)
_TRANSIT = 4
_PREV_ARRIVED = 8
_PREV_DEPARTED = 16
# flag: a deadline of the current silence came while the promise was more than
# ``tell_horizon`` away, so the package is told later, with a stall (no watch), if still silent
_LATER = 32
# flag (with _LATER): the current silence passed its stall deadline while put off; it is not
# learned when the package moves on (nor is a told stall's)
_PAST = 64
# flag: the package keeps its scan history (``_history``, one in ``eta_sample_every``): the
# flag spares the other packages a lookup in that dict per scan
_KEPT = 128
# flag: held by a delay incident known here, it moved on still on time by the usual estimate
# from there; its later scans look again (_late_again, the hold in PackageTracker._held)
_HELD = 256
_NO_DEADLINE = -1
_LATE_MOVE_MIN = 3600  # a silence shorter than this is no hold (skips the threshold lookup)
# an event time may lead its line's ingestion time by this much (scanner clocks) before the
# watermark stops following it: one scanner whose clock runs hours ahead would otherwise make
# every package look silent that long
CLOCK_SKEW = 300
# scans of unknown packages kept (the newest of each) while their header may still come
# (``allowed_lateness``): at most this many, the oldest dropped first (~150 MB)
_HEADERLESS_MAX = 1_000_000
_OPEN_END = 1 << 62  # an incident still open
# codes before the network has the package (label created, shipper has it): no stall alert
PRE_SHIPMENT = frozenset({"GX", "MA", "89", "TM", "GC"})
# delivered/returned packages are remembered 3 days, in generations of 2 h (see Memory)
FINISHED_RETENTION = 3 * 86400
FINISHED_GENERATION = 2 * 3600


class Held(NamedTuple):
    """A hold a package left still on time (``hold_factor`` x its stage's usual silence or
    longer, at a facility with statistics): where it sat (or, on the road, the facility it
    departed), since when and until when, and where it came off the road. With several
    shards a tracker sends each to the network step, which keeps those a delay incident
    covered (a tuple of 128 bytes, where a record's dict has 464: holds are a sixth of the
    national sample's events with two shards). ``made``: the watermark it is decided at."""

    package_id: str
    facility_id: str | None
    departed_from: str | None
    last_event_code: str
    last_ts: int
    moved_ts: int
    moved_to: str | None
    facility_name: str
    departed_from_name: str | None
    made: int

    def fields(self) -> dict[str, Any]:
        """Its fields in the ``moved_late`` record that tells of it."""
        return {
            "facility_id": self.facility_id,
            "departed_from": self.departed_from,
            "departed_from_name": self.departed_from_name,
            "facility_name": self.facility_name,
            "last_event_code": self.last_event_code,
            "last_scan_time": _iso(self.last_ts),
            "silence_seconds": self.moved_ts - self.last_ts,
            "expected_seconds": None,
            "moved_to": self.moved_to,
        }

    def text(self) -> str:
        """"held 10 h at P1 until <time>": the hold as that record's evidence says it."""
        where = (self.facility_name if self.facility_id is not None
                 else "in transit" if self.departed_from is None
                 else f"the road from {self.departed_from_name}")
        return f"held {(self.moved_ts - self.last_ts) / 3600:.0f} h at {where} until " \
               f"{_iso(self.moved_ts)}"


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
    watches: int = 0  # silences that passed the watch deadline
    holds: int = 0  # overdue packages at a facility when a delay incident opened there
    early: int = 0  # watches at the hold point (``hold_early``: several shards)
    late_moves: int = 0  # ``moved_late`` records (``late_move_p``)
    deferred: int = 0  # silences put off by ``tell_horizon`` (once per silence)
    finished_echo: int = 0  # a header for a package that finished within the retention
    by_outcome: dict[str, int] = field(default_factory=dict)


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
    eta_warm_packages
        The first this many packages all keep it (a young estimator has no delivery times
        for a rare stage, e.g. express, yet: a few MB at most, then one in
        ``eta_sample_every``).
    names
        Facility id -> human name for the evidence sentence.
    finished_retention_seconds
        A delivered or returned package is remembered this long (event time, at least): its
        header seen again is ignored, not a new package. 0 = no such memory.
    finished_generation_seconds
        Width of a generation of that memory: the current one is a set, older ones 8 bytes a
        package; the oldest is dropped at once.
    hold_early
        No ``incidents`` here (several shards: the network step has them): a package still
        silent at a facility when it reaches the hold point of :meth:`_hold` (``hold_factor``
        x its stage's usual silence, and due within ``hold_horizon``) gets its ``watch`` then,
        instead of at ``watch_fraction`` of its stall threshold; the network step folds it
        into an incident holding the facility, at once or when one opens. Demo seeds 1-3,
        3 shards: packages told of an incident 15/27/25 instead of 1/2/1 (one shard:
        14/27/25); on the national sample 0.004 more records per event for the network step.
    late_move_p
        A package nobody was told about (no watch, no stall) that scans again after a
        silence of ``hold_factor`` x its stage's usual at a facility with statistics, and
        whose usual estimate from the new scan misses its promise with probability
        ``late_move_p`` or more, gets a ``moved_late`` record (its facility and silence, the
        new estimate): the network step folds it into a delay incident that covered that
        silence, so the customer hears of the incident that made the package late, with an
        estimate made after it moved on. None: off. (A package due later than
        ``hold_horizon`` when the incident opened is not told then: whether it ends up late
        depends on how long the incident lasts, which is known when it moves.)
    late_again_p
        With ``incidents`` (one shard): a package such a delay incident held whose estimate
        from the scan after the hold missed its promise with a probability under
        ``late_move_p`` is looked at again at each later scan, and gets the ``moved_late``
        record of that hold (its facility, when it was held and how long, and the estimate
        from the later scan) at the first whose estimate misses the promise with probability
        ``late_again_p`` or more: the scan right after a hold often cannot know yet that the
        hold cost the package its sort or its truck. None: off. Without ``incidents``
        (several shards) no incident is known here: every hold of ``hold_factor`` x its
        stage's usual silence at a facility with statistics that the package left on time
        goes to the network step as a ``held`` record, which keeps it if a delay incident
        covered it; a watch there tells nobody yet, so a watched package's move is checked
        as any other's; and the later scan that finds the package late sends a
        ``late_again`` record (or says ``again`` in its ``moved_late``), which the network
        step folds into the latest hold it kept. One flag a package here, and the network
        step keeps only the holds an incident covered.
    tell_horizon
        Seconds. A watch or stall deadline that comes while the package's promise is more
        than this far off is put off: the watch is skipped (it is only an earlier stall),
        and the stall waits until ``promise - tell_horizon``, or its own deadline if that is
        later; if the package is still silent then, it gets its stall alert. A package with
        days to spare usually moves again in time: on the simulator's national replay most
        alerts on packages that arrived on time came more than a day before their promise
        (bench/RESULTS.md). A put-off package that moves on is nobody's yet, so
        ``late_move_p`` still applies to it, and a silence that passed its stall deadline
        is not learned, as a told stall's is not. Put-off packages are not held by an
        incident (:meth:`_hold`). None: no horizon (without a promise there is none either);
        a package put off under a horizon, restored from a snapshot with none, keeps its
        put-off deadline.
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
        eta_warm_packages: int = 20_000,
        names: Mapping[str, str] | None = None,
        finished_retention_seconds: int = FINISHED_RETENTION,
        finished_generation_seconds: int = FINISHED_GENERATION,
        facility_stats: FacilityStats | None = None,
        facility_lateness: int = 3600,
        watch_fraction: float = 0.0,
        incidents: IncidentDesk | None = None,
        hold_factor: float = 1.0,
        hold_horizon: int = 12 * 3600,
        hold_early: bool = False,
        late_move_p: float | None = None,
        late_again_p: float | None = None,
        tell_horizon: int | None = None,
    ) -> None:
        if not 0.0 <= watch_fraction < 1.0:
            raise ValueError(f"watch_fraction must be in [0, 1), got {watch_fraction}")
        if finished_generation_seconds <= 0:
            raise ValueError("finished_generation_seconds must be positive, got "
                             f"{finished_generation_seconds}")
        if -(-finished_retention_seconds // finished_generation_seconds) > _MAX_GENERATIONS:
            raise ValueError(
                f"finished_retention_seconds / finished_generation_seconds must be at most "
                f"{_MAX_GENERATIONS}, got {finished_retention_seconds} / "
                f"{finished_generation_seconds}: use wider generations")
        self.detector = detector
        self.estimator = estimator
        self.allowed_lateness = allowed_lateness
        self.bucket_seconds = bucket_seconds
        self.ttl_seconds = ttl_seconds
        self.eta_sample_every = eta_sample_every
        self._eta_warm = eta_warm_packages  # packages left that all keep their scans
        self.names = dict(names or {})
        self.finished_retention_seconds = finished_retention_seconds
        self.finished_generation_seconds = finished_generation_seconds
        self.stats = TrackerStats()
        self.max_event_ts = 0
        self._fired_through = -1  # last wheel bucket fired
        # package id -> the newest scan of a package whose header has not come (yet)
        self._headerless: dict[int | str, ScanEvent] = {}
        # packed package id -> slot | packed recipient_ref << 32 (one int: no per-slot int)
        self._index: dict[int | str, int] = {}
        self._ids: list[int | str | None] = []  # slot -> packed package id (the same object)
        self._last_ts = array("q")
        self._deadline = array("q")
        self._promised = array("q")
        self._fac = array("i")
        self._code = array("h")
        self._svc = array("b")
        self._flags = array("h")
        self._episode = array("h")
        self._free: list[int] = []
        self._facilities: list[str | None] = [None]
        self._fac_no: dict[str | None, int] = {None: 0}
        self._codes = list(CODES)
        self._code_no = {c: i for i, c in enumerate(self._codes)}
        self._wheel: dict[int, array] = {}
        self._history: dict[int, array] = {}  # slot -> (facility no, code no, ts) * scans
        # slot -> [code no, last scan ts, next scan ts or -1] of each silence a watch or stall
        # was raised on (a hold's or an early watch's too: the conditioning on the silence
        # sorts them out): on delivery they teach the estimator how long overdue packages take
        self._overdue: dict[int, list[list[int]]] = {}
        self._next_sweep = 0
        self._finished_init()
        self._facility_init(facility_stats, facility_lateness)
        self.watch_fraction = watch_fraction
        self.incidents = incidents  # assesses the closed facility windows here (one shard)
        self.hold_factor = hold_factor
        self.hold_horizon = hold_horizon
        self._incident_records: list[tuple[int, list[dict[str, Any]]]] = []
        self.hold_early = hold_early
        self._early: dict[int, array] = {}  # bucket -> (slot, last scan ts) * watches due
        self.late_move_p = late_move_p
        self.late_again_p = late_again_p
        self.tell_horizon = tell_horizon
        # facility -> end of the last delay incident known here to cover it (_OPEN_END while
        # open): with ``incidents`` (one shard) only packages such an incident may have held
        # are checked for a late move (a dict lookup instead of two model lookups per scan)
        self._delayed_until: dict[str, int] = {}
        # slot -> (facility, departed from, code, last scan ts, moved ts, moved to) of a hold
        # _late_move found on time (_HELD): the moved_late record a later scan makes tells of it
        self._held: dict[int, tuple[str | None, str | None, str, int, int, str | None]] = {}

    # -- state -----------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._index)

    @property
    def open_episodes(self) -> int:
        flags = self._flags
        return sum(1 for v in self._index.values() if flags[v & _SLOT] & _OPEN)

    @property
    def watermark(self) -> int:
        return self.max_event_ts - self.allowed_lateness

    @property
    def finished_remembered(self) -> int:
        """Finished (delivered or returned) packages remembered, in all generations."""
        return len(self._recent) + len(self._frozen)

    def _new_slot(self, key: int | str, ref: int) -> int:
        """A slot for a new package (``ref``: its packed recipient_ref, 0 for none)."""
        if self._free:
            slot = self._free.pop()
            self._ids[slot] = key
        else:
            slot = len(self._ids)
            self._ids.append(key)
            self._last_ts.append(0)
            self._deadline.append(0)
            self._promised.append(0)
            self._fac.append(0)
            self._code.append(0)
            self._svc.append(0)
            self._flags.append(0)
            self._episode.append(0)
            if self.facility_stats is not None:
                self._pgap.append(0)
        self._index[key] = slot | ref << _REF_SHIFT if ref else slot
        return slot

    def _forget(self, slot: int) -> None:
        pid = self._ids[slot]
        if pid is not None:
            del self._index[pid]
        self._ids[slot] = None
        self._deadline[slot] = _NO_DEADLINE
        self._flags[slot] = 0
        self._episode[slot] = 0
        self._history.pop(slot, None)
        self._overdue.pop(slot, None)
        self._held.pop(slot, None)
        self._free.append(slot)

    # -- events ----------------------------------------------------------------------------
    def process(self, ev: ScanEvent) -> list[dict[str, Any]]:
        """Apply one valid event; returns the alerts it caused (due stalls first)."""
        return self.process_batch((ev,))

    def process_batch(self, events: Iterable[ScanEvent]) -> list[dict[str, Any]]:
        """Apply valid events in order; returns the alerts they caused, in order.

        The same as calling :meth:`process` on each event and concatenating the results, but
        with the tracker's columns and tables looked up once per batch (the flow's hot path).
        """
        out: list[dict[str, Any]] = []
        index = self._index
        index_get = index.get
        last_col, deadline_col, promised_col = self._last_ts, self._deadline, self._promised
        fac_col, code_col, svc_col, flags_col = self._fac, self._code, self._svc, self._flags
        facilities, fac_no_get = self._facilities, self._fac_no.get
        codes, code_no_get = self._codes, self._code_no.get
        history_map = self._history
        detector = self.detector
        learn, threshold = detector.learn_gap, detector.threshold_at
        wheel = self._wheel
        bucket_s, lateness = self.bucket_seconds, self.allowed_lateness
        sample = self.eta_sample_every
        max_ts, fired = self.max_event_ts, self._fired_through
        from_bytes = int.from_bytes
        watch = self.watch_fraction
        early = self._early if self.hold_early else None
        hold_factor, horizon = self.hold_factor, self.hold_horizon
        fstats = self.facility_stats
        # incidents open only where facility statistics are kept: no early watch elsewhere
        monitored = fstats.facilities if fstats is not None else None
        late_move = self.late_move_p is not None and self.estimator is not None \
            and fstats is not None
        delayed_until = self._delayed_until.get if self.incidents is not None else None
        # several shards: no incidents here (the network step has them); a watch tells
        # nobody yet, and every long hold is the network step's to judge (_late_move)
        several = self.incidents is None and self.late_again_p is not None
        if fstats is not None:
            observe, fscan = fstats.observe, fstats.scan
            pgap_col = self._pgap
            flate, fwidth = self.facility_lateness, fstats.window_seconds
            fnext = fstats.closed_through + fwidth + flate  # newest time that closes a window
        accepted = duplicate = out_of_order = no_header = delivered = resolved = 0
        skew = CLOCK_SKEW
        headerless = self._headerless
        again: ScanEvent | None = None  # a header-less scan to process after this header
        try:
            for ev in events:
                ts = ev.event_ts
                if ts > max_ts:
                    # a scanner whose clock runs ahead moves the watermark only as far as its
                    # line's ingestion time allows (else every package would look silent)
                    ahead = ev.ingest_ts + skew
                    if ts <= ahead or ahead > max_ts:
                        max_ts = self.max_event_ts = ts if ts <= ahead else ahead
                        if (max_ts - lateness) // bucket_s - 1 > fired:  # else a no-op
                            self._fire_due(out)
                            fired = self._fired_through
                        if fstats is not None and max_ts >= fnext:
                            self._close_facility(max_ts - flate, out)
                            fnext = fstats.closed_through + fwidth + flate
                pid = ev.package_id
                if pid >= "\x01":  # _pack_id(pid), inlined
                    key = from_bytes(pid.encode("utf-8", "surrogatepass"), "big")
                else:
                    key = pid
                packed = index_get(key)
                code = ev.code
                if packed is None:
                    service_in = ev.service
                    if code in TERMINAL_CODES or service_in is None:
                        # no header: nothing to alert on (maybe a late scan of a forgotten
                        # package); kept, the newest, while its header may still come
                        no_header += 1
                        if ts >= max_ts - lateness:
                            kept = headerless.get(key)
                            if kept is None or ts >= kept.event_ts:
                                headerless[key] = ev
                                if kept is None and len(headerless) > _HEADERLESS_MAX:
                                    del headerless[next(iter(headerless))]
                        continue
                    if self._finished_keep and (
                            self._was_finished(key)
                            or ts < max_ts - self.finished_retention_seconds):
                        # the header of a package delivered lately, re-sent: not a new package
                        # (older than the memory: it cannot vouch for it, and a package that
                        # began that long ago could not be told in time anyway)
                        self.stats.finished_echo += 1
                        duplicate += 1  # (a line read: every line has one outcome)
                        continue
                    slot = self._new_slot(key, _pack_ref(ev.recipient_ref))
                    svc_col[slot] = _SVC.get(service_in, 0)
                    promised = ev.promised_by_ts
                    promised_col[slot] = promised if promised is not None else -1
                    if sample and (self._eta_warm > 0 or hash_id(pid) % sample == 0):
                        history_map[slot] = array("q")
                        flags_col[slot] = _KEPT
                        self._eta_warm -= 1
                    accepted += 1
                    service = _SERVICES[svc_col[slot]]
                    if headerless:
                        kept = headerless.pop(key, None)
                        if kept is not None and kept.event_ts > ts and \
                                kept.event_ts >= max_ts - lateness:
                            # a scan that came before its header: it follows the header
                            again = kept
                else:
                    slot = packed & _SLOT
                    last = last_col[slot]
                    flags = flags_col[slot]
                    if ts <= last:
                        if ts < last:
                            if code not in TERMINAL_CODES:
                                out_of_order += 1
                                if fstats is not None and ev.facility is not None:
                                    fscan(ev.facility, ts)  # late, but the facility did scan
                                continue
                            # delivered (a handheld's scans synced late): it ends here, as of
                            # its last scan (accepted), and no silence is learned from it
                            flags_col[slot] = flags = flags | _PAST
                            ts = last
                        elif code_no_get(code) == code_col[slot] and (
                                None if flags & _TRANSIT else facilities[fac_col[slot]]
                        ) == ev.facility or flags & (_OPEN | _WATCHED) and (
                                code not in TERMINAL_CODES):
                            # the last scan again; or another of the same second while it is
                            # silent (a re-sent line: no later scan, its silence goes on)
                            duplicate += 1
                            continue
                    last_fac = None if flags & _TRANSIT else facilities[fac_col[slot]]
                    past = flags & _PAST
                    if flags & _LATER:  # the silence it was put off for is over
                        flags_col[slot] = flags = flags & ~(_LATER | _PAST)
                    service_in = ev.service
                    if service_in is not None and packed <= _SLOT:  # header late (no ref yet)
                        svc_col[slot] = _SVC.get(service_in, 0)
                        ref = _pack_ref(ev.recipient_ref)
                        if ref:
                            index[key] = slot | ref << _REF_SHIFT
                        if ev.promised_by_ts is not None:
                            promised_col[slot] = ev.promised_by_ts
                    accepted += 1
                    service = _SERVICES[svc_col[slot]]
                    prev_code = codes[code_col[slot]]
                    if flags & _HELD and (flags & _OPEN or flags & _WATCHED and not several):
                        # told, or looked at, for a newer silence: that one tells of itself
                        # (several shards: a watch tells nobody yet, the network step decides)
                        flags_col[slot] = flags = flags & ~_HELD
                        self._held.pop(slot, None)
                    if flags & _OPEN:
                        flags_col[slot] = flags & ~(_OPEN | _WATCHED)
                        resolved += 1
                        self._silence_ends(slot, ts)
                        out.append(self._alert(slot, "back_on_track", ts, ev))
                    else:
                        check = prev_code not in PRE_SHIPMENT
                        prev_ts = last_col[slot]
                        if flags & _WATCHED:
                            flags_col[slot] = flags & ~_WATCHED
                            self._silence_ends(slot, ts)
                            out.append(self._moved(slot, ts, ev))
                            if ts > prev_ts:  # (not a delivery synced late)
                                learn(last_fac, prev_code, service, prev_ts, ts - prev_ts)
                            # several shards: nobody may have been told of this silence
                            # (the network step knows), so it is checked as any other
                            check = several
                        elif check and not past:  # past its stall deadline: not usual
                            learn(last_fac, prev_code, service, prev_ts, ts - prev_ts)
                        if check:
                            late = None
                            if (not flags & _HELD or several) and late_move \
                                    and ts - prev_ts >= _LATE_MOVE_MIN:
                                # held where it sat, or on the road by the lane it left by
                                held = last_fac if last_fac is not None \
                                    else self._place(slot)[1]
                                known = (delayed_until is not None and held is not None
                                         and delayed_until(held, -1) >= prev_ts)
                                if (held is not None
                                        and (monitored is None or held in monitored)
                                        and (delayed_until is None or known
                                             # off the road past the windows closed here:
                                             # a lane's incident opens on its late arrivals
                                             # (in transit only: a departure followed by a
                                             # late arrival, checked too, told no more
                                             # package on demo 1-3 and cost a lookup per
                                             # such move)
                                             or last_fac is None
                                             and ts > fstats.closed_through)
                                        and promised_col[slot] >= 0):  # (a column, a miss)
                                    late = self._late_move(
                                        slot, ts, ev, service, last_fac, prev_code, known)
                                    if late is not None:
                                        out.append(late)
                            if flags & _HELD and late is None and code not in TERMINAL_CODES:
                                # an incident held it (several shards: may have), not told
                                # yet: each scan looks again, and that hold tells (it folds
                                # into the incident that held it; one record for the
                                # package's later silences too)
                                late = self._late_again(slot, ts, ev, service)
                                if late is not None:
                                    out.append(late)
                facility = ev.facility
                if fstats is not None and facility is not None:
                    if packed is None:
                        observe(facility, code, ts)
                    elif flags & _TRANSIT:  # the last facility scan is before the TL scans
                        observe(facility, code, ts, facilities[fac_col[slot]],
                                "A1" if flags & _PREV_ARRIVED else
                                "T1" if flags & _PREV_DEPARTED else "TL",
                                last_col[slot] - 60 * pgap_col[slot])
                    else:
                        observe(facility, code, ts, last_fac, prev_code, last_col[slot])
                history = history_map[slot] if flags_col[slot] & _KEPT else None
                if code in TERMINAL_CODES:
                    if self.estimator is not None and code == "01":
                        if history is not None:
                            self.estimator.learn_one({"service": service, "delivered_ts": ts,
                                                      "scans": self._scans(history)})
                        if self._overdue:
                            self._learn_overdue(slot, service, ts)
                    delivered += 1
                    if self._finished_keep:
                        self._remember_finished(key, max_ts)
                    self._forget(slot)
                    continue
                code_no = code_no_get(code)
                if code_no is None:
                    code_no = self._code_no[code] = len(codes)
                    codes.append(code)
                fac_no = fac_no_get(facility)
                if fac_no is None:
                    fac_no = self._fac_no[facility] = len(facilities)
                    facilities.append(facility)
                if history is not None:
                    history.extend((fac_no, code_no, ts))
                f = flags_col[slot]
                if fac_no:
                    if f & _TRANSIT:
                        flags_col[slot] = f & ~(_TRANSIT | _PREV_ARRIVED | _PREV_DEPARTED)
                    fac_col[slot] = fac_no
                elif packed is not None:  # in transit: keep the last facility scan's facility
                    if not f & _TRANSIT:
                        before = codes[code_col[slot]]
                        flags_col[slot] = f | _TRANSIT | (
                            _PREV_ARRIVED if before in ARRIVAL_CODES else
                            _PREV_DEPARTED if before in DEPARTURE_CODES else 0)
                        if fstats is not None:
                            pgap_col[slot] = min((ts - last_col[slot]) // 60, 65535)
                    elif fstats is not None:
                        pgap_col[slot] = min(pgap_col[slot] + (ts - last_col[slot]) // 60,
                                             65535)
                else:
                    fac_col[slot] = 0
                code_col[slot] = code_no
                last_col[slot] = ts
                deadline = _NO_DEADLINE
                if code not in PRE_SHIPMENT:
                    found = threshold(facility, code, service, ts)
                    if found is not None:
                        # with a watch, the first deadline is the watch's (see _fire_due)
                        deadline = ts + int(found[0] * watch if watch else found[0])
                        if early is not None and (
                                fac_no or flags_col[slot] & _PREV_DEPARTED) and (
                                monitored is None or facilities[fac_col[slot]] in monitored):
                            # the hold point: overdue and due within the horizon (_hold); on
                            # the road (TL), a lane's from the facility it departed
                            at = ts + int(hold_factor * found[1])
                            promised = promised_col[slot]
                            if promised >= 0 and promised - horizon > at:
                                at = promised - horizon
                            if at < deadline:
                                bucket = max(at // bucket_s, fired + 1)
                                slots = early.get(bucket)
                                if slots is None:
                                    slots = early[bucket] = array("q")
                                slots.extend((slot, ts))
                deadline_col[slot] = deadline
                if deadline != _NO_DEADLINE:
                    bucket = deadline // bucket_s
                    if bucket <= fired:  # already overdue (a late or slow scan)
                        bucket = fired + 1
                    slots = wheel.get(bucket)
                    if slots is None:
                        slots = wheel[bucket] = array("i")
                    slots.append(slot)
                if again is not None:  # (a header reaches here: it is never a terminal code)
                    st = self.stats  # counted once, when it came (no_header: the counts of
                    counted = st.accepted, st.duplicate, st.out_of_order, st.no_header  # lines)
                    out += self.process_batch((again,))  # behind the watermark: moves nothing
                    st.accepted, st.duplicate, st.out_of_order, st.no_header = counted
                    again = None
        finally:
            stats = self.stats
            stats.accepted += accepted
            stats.duplicate += duplicate
            stats.out_of_order += out_of_order
            stats.no_header += no_header
            stats.delivered += delivered
            stats.resolved += resolved
        return out

    def _silence_ends(self, slot: int, ts: int) -> None:
        """A package told of (watched or stalled) scans again at ``ts``: its silence ends."""
        silences = self._overdue.get(slot)
        if silences and silences[-1][2] < 0:
            silences[-1][2] = ts

    def _learn_overdue(self, slot: int, service: str | None, delivered_ts: int) -> None:
        for code_no, last_ts, resumed_ts in self._overdue.get(slot, ()):
            self.estimator.learn_overdue(  # type: ignore[union-attr]
                {"code": self._codes[code_no], "service": service, "last_ts": last_ts,
                 "resumed_ts": delivered_ts if resumed_ts < 0 else resumed_ts,
                 "delivered_ts": delivered_ts})

    def _scans(self, history: array) -> list[tuple[str | None, str, int]]:
        """A package's kept scans as (facility, code, ts), from the packed history."""
        facilities, codes = self._facilities, self._codes
        return [(facilities[history[i]], codes[history[i + 1]], history[i + 2])
                for i in range(0, len(history), 3)]

    # -- time ------------------------------------------------------------------------------
    def next_change(self) -> int:
        """The earliest event time at which :meth:`advance` would do anything: fire the next
        wheel bucket or close the next facility window (after ``max_event_ts``). Until then,
        moving the clock only moves the clock: a live flow whose feed is quiet sleeps."""
        due = (self._fired_through + 2) * self.bucket_seconds + self.allowed_lateness
        stats = self.facility_stats
        if stats is not None:
            due = min(due, stats.closed_through + stats.window_seconds + self.facility_lateness)
        return max(due, self.max_event_ts + 1)

    def advance(self, event_ts: int) -> list[dict[str, Any]]:
        """Move the clock to ``event_ts`` without an event (live mode, idle feed)."""
        out: list[dict[str, Any]] = []
        if event_ts > self.max_event_ts:
            self.max_event_ts = event_ts
            self._fire_due(out)
            if self.facility_stats is not None:
                self._close_facility(event_ts - self.facility_lateness, out)
        return out

    # -- facility statistics -------------------------------------------------------------------
    def _facility_init(self, stats: FacilityStats | None, lateness: int) -> None:
        self.facility_stats = stats
        self.facility_lateness = lateness
        n = len(self._last_ts) if stats is not None else 0
        # per package, its last scan *at a facility* (an in-transit TL scan has none): the
        # departure's dwell and the lane travelled are measured from it
        # minutes from the last facility scan to the last scan while in transit (_TRANSIT)
        self._pgap = array("H", bytes(2 * n))
        self._windows: list[FacilityWindow] = []  # closed, not yet taken

    @property
    def facility_through(self) -> int:
        """Facility windows ending by this time are closed (the newest event time when the
        tracker keeps no facility statistics)."""
        stats = self.facility_stats
        return self.max_event_ts if stats is None else stats.closed_through

    def take_incidents(self) -> list[tuple[int, list[dict[str, Any]]]]:
        """``(window end, incident records)`` assessed here since the last call (with
        ``incidents``; the flow's network step takes them instead of windows)."""
        records, self._incident_records = self._incident_records, []
        return records

    def _close_facility(self, upto: int, out: list[dict[str, Any]]) -> None:
        closed = self.facility_stats.close(upto)  # type: ignore[union-attr]
        desk = self.incidents
        if desk is None:
            self._windows += closed
            return
        delayed = self._delayed_until
        for end, records in desk.assess_closed(closed):
            if not records:
                continue
            self._incident_records.append((end, records))
            for record in records:
                if record["kind"] not in DELAY_KINDS:
                    continue
                until = end if record["status"] == "resolved" else _OPEN_END
                for name in (record.get("facilities") or record["facility_id"]).split():
                    delayed[name] = until
                if record["status"] != "resolved":
                    self._hold(record, end, out)

    def _hold(self, record: dict[str, Any], end: int, out: list[dict[str, Any]]) -> None:
        """A delay incident is open (or grew) at ``end``: every package it holds here that is
        already overdue (silent for ``hold_factor`` x its stage's usual silence) gets a
        ``watch`` record now, so that its customer hears of the incident at once.

        Held: packages due within ``hold_horizon`` seconds (or with no promise) and, for a
        slowdown or a stop, whose last scan at the facility was not a departure; for a lane,
        those that departed from it, on the road since (``TL``) or not; for weather, all of
        them. A package already watched or stalled is left alone (it is told, or will be, by
        its own watch or stall), and so is one put off by ``tell_horizon``."""
        kind = record["kind"]
        lane, weather = record.get("lane_to") is not None, kind == "weather"
        names = str(record.get("facilities") or "").split() or [str(record["facility_id"])]
        fac_no, codes, flags_col = self._fac_no, self._codes, self._flags
        wm = self.max_event_ts - self.allowed_lateness
        for name in names:
            number = fac_no.get(name)
            if not number:
                continue
            found = np.flatnonzero(np.frombuffer(self._fac, dtype=np.int32) == number).tolist()
            for slot in found:
                flags = flags_col[slot]
                if self._ids[slot] is None or flags & (_OPEN | _WATCHED | _LATER):
                    continue  # told, or to be told by its own watch or stall, or put off
                code = codes[self._code[slot]]
                where: str | None = name
                if flags & _TRANSIT:  # on the road (TL): a lane's, if it departed from here
                    if not flags & _PREV_DEPARTED or not (lane or weather):
                        continue
                    where = None  # (its stage is "in transit", wherever)
                elif code in PRE_SHIPMENT or ((code in DEPARTURE_CODES) != lane and not weather):
                    continue
                promised = self._promised[slot]
                if promised >= 0 and promised - end > self.hold_horizon:
                    continue  # time enough to absorb the delay: not at risk
                last = self._last_ts[slot]
                usual = self.detector.threshold({"facility": where, "code": code,
                                                 "service": _SERVICES[self._svc[slot]],
                                                 "last_ts": last})
                if usual is None or end - last < self.hold_factor * usual[1]:
                    continue  # not overdue (yet): it may well leave on time
                self.stats.holds += 1
                self._watch_now(slot)
                alert = self._alert(slot, "watch", max(end, last), None)
                alert["watermark"] = wm
                out.append(alert)

    def _watch_now(self, slot: int, after: int | None = None) -> None:
        """A watch goes out before the watch deadline: open the episode and move the
        package's deadline on to its stall's (into a bucket after ``after``, default: the
        last fired)."""
        self._flags[slot] |= _WATCHED
        self._episode[slot] += 1
        d = self._deadline[slot]
        if self.watch_fraction and d != _NO_DEADLINE:  # the wheel has the watch's
            self._reschedule(slot, self._stall_deadline(slot, d),
                             self._fired_through if after is None else after)

    def _stall_deadline(self, slot: int, watch_deadline: int) -> int:
        """The stall deadline of the silence whose watch deadline is ``watch_deadline``."""
        last = self._last_ts[slot]
        return last + int((watch_deadline - last) / self.watch_fraction)

    def _reschedule(self, slot: int, d: int, after: int) -> None:
        """Give the package the deadline ``d``, in the wheel's bucket of ``d`` or, if that
        is not later than ``after`` (fired already), the next one."""
        self._deadline[slot] = d
        bucket = max(d // self.bucket_seconds, after + 1)
        entry = self._wheel.get(bucket)
        if entry is None:
            entry = self._wheel[bucket] = array("i")
        entry.append(slot)

    def _fire_early(self, entries: array, bucket: int, wm: int,
                    out: list[dict[str, Any]]) -> None:
        """Several shards (``hold_early``): the packages of a bucket at their hold point, still
        silent at the facility of that scan, get their watch now: the network step folds it
        into an incident that holds them, at once or when one opens (what :meth:`_hold`
        does with one shard, where the incidents are known here)."""
        ids, last_col, flags = self._ids, self._last_ts, self._flags
        for i in range(0, len(entries), 2):
            slot, last = entries[i], entries[i + 1]
            f = flags[slot]
            if ids[slot] is None or last_col[slot] != last or f & (_OPEN | _WATCHED | _LATER) \
                    or f & _TRANSIT and not f & _PREV_DEPARTED:
                continue  # scanned again since (or gone), told already, or put off
            self.stats.early += 1
            self._watch_now(slot, bucket)
            out.append(self._alert(slot, "watch", wm, None))

    def take_windows(self) -> list[FacilityWindow]:
        """The facility windows closed since the last call (for the flow's network step)."""
        windows, self._windows = self._windows, []
        return windows

    def _fire_due(self, out: list[dict[str, Any]]) -> None:
        wm = self.max_event_ts - self.allowed_lateness
        through = wm // self.bucket_seconds - 1  # buckets whose end is <= wm
        if through <= self._fired_through:
            return
        headerless = self._headerless
        while headerless:  # scans too old for their headers to come (in about their order)
            first = next(iter(headerless))
            if headerless[first].event_ts >= wm:
                break
            del headerless[first]
        early = self._early
        if self._fired_through < 0:
            self._fired_through = min(self._wheel, default=through + 1) - 1
            if early:
                self._fired_through = min(self._fired_through, min(early) - 1)
        deadline, flags, wheel = self._deadline, self._flags, self._wheel
        watch, tell, promised_col = self.watch_fraction, self.tell_horizon, self._promised
        for bucket in range(self._fired_through + 1, through + 1):
            if early:
                due = early.pop(bucket, None)
                if due is not None:
                    self._fire_early(due, bucket, wm, out)
            slots = wheel.pop(bucket, None)
            if slots is None:
                continue
            for slot in slots:
                d = deadline[slot]
                if d == _NO_DEADLINE or d > wm or flags[slot] & _OPEN or self._ids[slot] is None:
                    continue
                if d // self.bucket_seconds > bucket:
                    continue  # rescheduled to a later bucket (slot reused)
                if tell is not None:
                    promised = promised_col[slot]
                    if promised >= 0 and promised - wm > tell:
                        # time enough to make up for the silence: no watch; a stall only if
                        # it is still silent `tell` before the promise, and not before its
                        # stall deadline
                        f = flags[slot]
                        if not f & _LATER:
                            self.stats.deferred += 1
                        if watch and not f & (_WATCHED | _LATER):  # the watch deadline
                            flags[slot] = f | _LATER
                            self._reschedule(slot, self._stall_deadline(slot, d), bucket)
                        else:  # the stall deadline
                            flags[slot] = f | _LATER | _PAST
                            self._reschedule(slot, promised - tell, bucket)
                        continue
                if watch and not flags[slot] & (_WATCHED | _LATER):
                    # the watch deadline: say so, then wait for the stall deadline
                    flags[slot] |= _WATCHED
                    self._episode[slot] += 1  # the watch opens the episode a stall continues
                    self.stats.watches += 1
                    out.append(self._alert(slot, "watch", wm, None))
                    d = deadline[slot] = self._stall_deadline(slot, d)
                    if d > wm:
                        self._reschedule(slot, d, bucket)
                        continue
                if not flags[slot] & _WATCHED:
                    self._episode[slot] += 1
                flags[slot] |= _OPEN
                self.stats.stalls += 1
                out.append(self._alert(slot, "stall", wm, None))
        self._fired_through = through
        if wm >= self._next_sweep:
            self._sweep(wm)
        if self.max_event_ts // self.finished_generation_seconds > self._generation:
            self._rotate(self.max_event_ts)

    def _sweep(self, wm: int) -> None:
        """Drop packages silent for longer than the TTL (abandoned, lost for good)."""
        self._next_sweep = wm + 86400
        cutoff = wm - self.ttl_seconds
        last = self._last_ts
        stale = [v & _SLOT for v in self._index.values() if last[v & _SLOT] < cutoff]
        for slot in stale:
            self.stats.expired += 1
            self._forget(slot)

    # -- finished packages ---------------------------------------------------------------------
    def _finished_init(self) -> None:
        self._finished_keep = -(-self.finished_retention_seconds  # generations kept, ceil
                                // self.finished_generation_seconds)
        self._generation = 0  # of the current set: newest event time // generation width
        self._recent: set[int] = set()  # fingerprints of the current generation
        # older generations: sorted fingerprint << 8 | generation % 256
        self._freeze(np.empty(0, np.uint64))

    def _freeze(self, frozen: np.ndarray) -> None:
        """Keep ``frozen`` and a bitmap over its fingerprints (derived, not pickled): 8 bits
        an entry rounded up to a power of two, one set per entry at the top bits of the
        fingerprint times an odd constant (its low bits are an id's last bytes when the id is
        short), so 7 of 8 ids that never finished are told apart without a binary search."""
        self._frozen = frozen
        if not len(frozen):
            self._frozen_bits, self._frozen_shift = b"\0", 64  # nothing set
            return
        bits = max(6, (8 * len(frozen) - 1).bit_length())
        at = ((frozen >> np.uint64(_TAG_BITS)) * np.uint64(_MIX)) >> np.uint64(64 - bits)
        flags = np.zeros(1 << bits, np.bool_)
        flags[at] = True
        self._frozen_bits = np.packbits(flags, bitorder="little").tobytes()
        self._frozen_shift = 64 - bits

    def _remember_finished(self, key: int | str, now: int) -> None:
        if now // self.finished_generation_seconds > self._generation:
            self._rotate(now)
        self._recent.add(key % _FP_PRIME if key.__class__ is int  # type: ignore[operator]
                         else _fingerprint(key))

    def _was_finished(self, key: int | str) -> bool:
        fp = key % _FP_PRIME if key.__class__ is int else _fingerprint(key)  # type: ignore[operator]
        if fp in self._recent:
            return True
        bit = (fp * _MIX & _M64) >> self._frozen_shift
        if not self._frozen_bits[bit >> 3] >> (bit & 7) & 1:
            return False  # (most new packages: no binary search)
        # bisect on a memoryview reads Python ints: 1 us; searchsorted with a Python int
        # below 2**63 converts the whole array first (50 us at 70 K entries)
        frozen = memoryview(self._frozen)
        i = bisect_left(frozen, fp << _TAG_BITS)
        return i < len(frozen) and frozen[i] >> _TAG_BITS == fp

    def _rotate(self, now: int) -> None:
        """Start the generation of ``now``: freeze the current set, drop expired generations."""
        generation = now // self.finished_generation_seconds
        keep = self._finished_keep
        frozen = self._frozen
        if generation - self._generation > keep:
            frozen = frozen[:0]  # all older than the retention (and tags could wrap)
        elif len(frozen):
            tags = frozen.view(np.uint8)[_TAG_BYTE::8]  # low byte of each entry, no copy
            age = np.uint8(generation & _TAG) - tags  # uint8 arithmetic wraps: age mod 256
            if (age > keep).any():
                frozen = frozen[age <= keep]
        recent = self._recent
        if recent and generation - self._generation <= keep:
            new = np.fromiter(recent, np.uint64, len(recent))
            new <<= np.uint64(_TAG_BITS)
            new |= np.uint64(self._generation & _TAG)
            new.sort()
            frozen = np.concatenate((frozen, new))
            frozen.sort(kind="stable")  # timsort: merges the two sorted runs in linear time
        self._freeze(frozen)
        recent.clear()
        self._generation = generation

    # -- alerts ----------------------------------------------------------------------------
    def _alert(self, slot: int, kind: str, at: int, ev: ScanEvent | None) -> dict[str, Any]:
        pid = _unpack_id(self._ids[slot])
        code = self._codes[self._code[slot]]
        fac, departed_from = self._place(slot)
        service = _SERVICES[self._svc[slot]]
        last_ts = self._last_ts[slot]
        promised = self._promised[slot]
        episode = int(self._episode[slot])
        silence = at - last_ts
        x = {"facility": fac, "code": code, "service": service, "last_ts": last_ts}
        found = self.detector.threshold(x)
        expected = found[1] if found else None
        eta = p_late = None
        delay = kind == "stall" or kind == "watch"
        if self.estimator is not None and not delay and ev is not None:
            # moving again: from the new scan, as usual; at the scan's time of day for the
            # all-clear, over the whole day for a delay message (as its decision, _late_move)
            eta = self._eta_from(ev, service, phased=kind != "moved_late")
        elif self.estimator is not None and delay:
            eta, p_late = self.estimator.estimate_overdue(
                x | {"silence": silence, "promised_by_ts": promised if promised >= 0 else None})
            silences = self._overdue.setdefault(slot, [])
            if not silences or silences[-1][1] != last_ts:  # a new silence (not its stall)
                silences.append([int(self._code[slot]), last_ts, -1])
        name = self.names.get(fac or "", fac or "in transit")
        if delay:
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
            "departed_from": departed_from,
            "departed_from_name": None if departed_from is None
            else self.names.get(departed_from, departed_from),
            "facility_name": name,
            "last_event_code": code,
            "last_scan_time": _iso(last_ts),
            "silence_seconds": int(silence),
            "expected_seconds": None if expected is None else int(expected),
            "promised_by": _iso(promised if promised >= 0 else None),
            "new_estimate": _iso(eta),
            "p_late": None if p_late is None else round(float(p_late), 3),
            "incident_key": None,
            # the new scan ended the package's journey (delivered, or returned to sender):
            # its all-clear must not say "moving again"
            "ended": None if delay or ev is None or ev.code not in TERMINAL_CODES
            else CODES[ev.code].status,
            "evidence": evidence,
            "recipient_ref": _unpack_ref(self._index[self._ids[slot]] >> _REF_SHIFT),
            "watermark": self.max_event_ts - self.allowed_lateness,  # when it was made
        }

    def _place(self, slot: int) -> tuple[str | None, str | None]:
        """Where a package is, as its records say: ``(facility_id, departed_from)``. At a
        facility: ``(its last facility, None)``. In transit (its last scan ``TL``, which has
        no facility): ``(None, the facility its last facility scan departed)``, the origin of
        the lane it is on, which a lane incident there holds; ``(None, None)`` when that scan
        was no departure."""
        flags = self._flags[slot]
        fac = self._facilities[self._fac[slot]]
        if not flags & _TRANSIT:
            return fac, None
        return None, fac if flags & _PREV_DEPARTED else None

    def _eta_from(self, ev: ScanEvent, service: str | None, phased: bool = True) -> int | None:
        """The usual delivery estimate from a scan that just happened (None if unknown)."""
        eta, _ = self.estimator.estimate(  # type: ignore[union-attr]
            {"facility": ev.facility, "code": ev.code, "service": service,
             "last_ts": ev.event_ts, "silence": 0}, phased)
        return eta

    def _late_move(self, slot: int, ts: int, ev: ScanEvent, service: str | None,
                   fac: str | None, code: str, known: bool = False
                   ) -> dict[str, Any] | Held | None:
        """A package nobody was told about moved on from ``fac`` (None: in transit) at ``ts``:
        a ``moved_late`` record if it sat there ``hold_factor`` x its stage's usual silence
        or longer and the usual estimate from the new scan misses its promise with
        probability ``late_move_p`` or more (see the class docstring); else None.

        ``known``: a delay incident known here (one shard) covered the silence. Such a hold
        that the estimate finds on time is remembered (``_HELD``): the package's later scans
        look again (:meth:`_late_again`). With several shards (no incidents here, and
        ``late_again_p`` set) every such hold is the network step's to judge: it goes there
        as a :class:`Held` (a tuple, not a dict: there are many), which the network step
        keeps if a delay incident held the package there; and a ``moved_late`` record of a
        package with such holds behind it, late by ``late_again_p``, says ``again``: if no
        incident held it here, the network step looks at those."""
        last_ts = self._last_ts[slot]
        found = self.detector.threshold(
            {"facility": fac, "code": code, "service": service, "last_ts": last_ts})
        if found is None or ts - last_ts < self.hold_factor * found[1]:
            return None
        promised = self._promised[slot]
        # the decision from the stage's whole-day distribution: with the time of day's
        # (DeliveryEstimator.phase_hours) the national replay told 1,350 fewer late packages
        # for 390 fewer false ones (bench/RESULTS.md, "Delivery estimates by time of day")
        may = self._may_be_late(ev, service, promised - ts, self.late_move_p)  # type: ignore
        p_late = None
        if may:
            _, p_late = self.estimator.estimate(  # type: ignore[union-attr]
                {"facility": ev.facility, "code": ev.code, "service": service, "last_ts": ts,
                 "silence": 0, "promised_by_ts": promised}, phased=False)
        several = self.incidents is None
        if p_late is None or p_late < self.late_move_p:  # type: ignore[operator]
            # on time (may is False, or p_late under late_move_p), or no estimate (p_late
            # None: may was None, or the promise is past a stage without data)
            if (known or several) and self.late_again_p is not None and (
                    may is False or p_late is not None):
                self._flags[slot] |= _HELD
                hold = (fac, self._place(slot)[1] if fac is None else None, code, last_ts, ts,
                        _moved_to(fac, code, ev))
                if several:
                    return self._as_held(slot, hold)
                self._held[slot] = hold
            return None
        self.stats.late_moves += 1
        self._episode[slot] += 1  # its own episode: a later stall is another one
        record = self._alert(slot, "moved_late", ts, ev)
        record["p_late"] = round(float(p_late), 3)
        record["moved_to"] = _moved_to(fac, code, ev)
        # decided once every shard has passed the move and its facility windows are closed:
        # an incident that opened in the hours before it moved is known by then
        record["watermark"] = max(record["watermark"], ts)
        if several and self._flags[slot] & _HELD and p_late >= self.late_again_p:
            self._flags[slot] &= ~_HELD  # (holds sent before: the network step looks there)
            record["again"] = True
            record["scanned_at"] = self._scanned_at(ev)
        return record

    def _scanned_at(self, ev: ScanEvent) -> str:
        """The name of where scan ``ev`` was made ("in transit" for a TL scan)."""
        return self.names.get(ev.facility, ev.facility) if ev.facility else "in transit"

    def _as_held(self, slot: int, hold: tuple[Any, ...]) -> Held:
        """A remembered hold ``(facility, departed from, code, last scan, moved, moved to)``
        of the package in ``slot`` as a :class:`Held`."""
        fac, departed, code, last_ts, moved, moved_to = hold
        names = self.names
        return Held(_unpack_id(self._ids[slot]), fac, departed, code, last_ts, moved, moved_to,
                    names.get(fac or "", fac or "in transit"),
                    None if departed is None else names.get(departed, departed),
                    max(self.max_event_ts - self.allowed_lateness, moved))

    def _may_be_late(self, ev: ScanEvent, service: str | None, ahead: int,
                     p: float) -> bool | None:
        """Whether the usual estimate from scan ``ev`` may miss a promise ``ahead`` seconds
        away with probability ``p`` or more: False if it cannot (on time), None if it has no
        stage to go on (no estimate), True if it may; then
        :meth:`DeliveryEstimator.estimate` decides, as without this look-up of one quantile
        in front (~1 us, where the estimate costs ~8 us and few of the packages checked are
        late). The bound has a second and a billionth of it to spare: at the quantile itself
        the estimate's rounding decides."""
        if ahead <= 0:
            return True  # (the promise is past: late, if the stage is known)
        bound = self.estimator.remaining_quantile(  # type: ignore[union-attr]
            ev.facility, ev.code, service, 1.0 - p)
        if bound is None:
            return None
        return ahead <= bound * (1 + 1e-9) + 1

    def _late_again(self, slot: int, ts: int, ev: ScanEvent,
                    service: str | None) -> dict[str, Any] | None:
        """A package a delay incident held (``_HELD``: :meth:`_late_move` found it on time when
        it moved on) scanned again at ``ts``: if the usual estimate from this scan misses its
        promise with probability ``late_again_p`` or more, the ``moved_late`` record of that
        hold (where and since when it was held, for how long; the estimate from this scan),
        once; else None. The estimate from the scan after a hold often cannot know yet that
        the hold cost the package its sort or its truck: on demo 1-3, 97 packages held by an
        incident that moved on with ``p_late`` under 0.9 were late (bench/RESULTS.md).

        Several shards: the holds went to the network step (``held`` records), which keeps
        those a delay incident covered; the record is then a ``late_again`` (this scan's
        fields and estimate, ``scanned_at`` its facility's name) that it folds into the
        latest of them."""
        again = self.late_again_p
        if again is None:  # (turned off since the hold: the settings of a resumed run)
            return None
        promised = self._promised[slot]
        if not self._may_be_late(ev, service, promised - ts, again):
            return None  # (most: 1.3 % of these checks told on the national sample)
        _, p_late = self.estimator.estimate(  # type: ignore[union-attr]
            {"facility": ev.facility, "code": ev.code, "service": service, "last_ts": ts,
             "silence": 0, "promised_by_ts": promised}, phased=False)
        if p_late is None or p_late < again:
            return None
        self._flags[slot] &= ~_HELD
        self.stats.late_moves += 1
        self._episode[slot] += 1
        record = self._alert(slot, "moved_late", ts, ev)
        now = self._scanned_at(ev)
        record["p_late"] = round(float(p_late), 3)
        record["watermark"] = max(record["watermark"], ts)  # as _late_move's
        hold = self._held.pop(slot, None)
        if hold is None:  # several shards: the network step has the holds (Held)
            record |= {"kind": "late_again", "scanned_at": now}
            return record
        held = self._as_held(slot, hold)
        record |= held.fields()
        record["evidence"] = f"Moving again: {held.text()}, now scanned at {now}."
        return record

    def _moved(self, slot: int, ts: int, ev: ScanEvent | None = None) -> dict[str, Any]:
        """A watched package (no stall alert) scanned again: tells the network step that a
        package it may have told about is moving, and when it should now arrive (~8 us: the
        usual estimate from the new scan; watched packages are a few in a hundred). The
        same fields as every alert (it becomes a ``back_on_track`` when its customer was
        told through an incident)."""
        return self._alert(slot, "moved", ts, ev)

    # -- pickling (Bytewax snapshots) ---------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_ids"]  # rebuilt from _index (ints, keys and values: no pickle memo)
        # the kept scan histories as three flat arrays (slots, lengths, data): one pickle
        # opcode each instead of an array reconstructor call per package
        history = self._history
        state["_history"] = (array("q", history), array("q", map(len, history.values())),
                             b"".join(a.tobytes() for a in history.values()))
        # the finished memory as raw bytes (a set of ints would pickle each int)
        state["_recent"] = array("Q", self._recent).tobytes()
        state["_frozen"] = self._frozen.tobytes()
        del state["_frozen_bits"], state["_frozen_shift"]  # derived from _frozen
        state["_layout"] = _LAYOUT
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        layout = state.pop("_layout", 1)
        if layout < 2:
            _upgrade(state)
        else:
            slots, lengths, blob = state["_history"]
            data = array("q", blob)
            history: dict[int, array] = {}
            pos = 0
            for slot, n in zip(slots, lengths):  # noqa: B905 - same length by construction
                history[slot] = data[pos:pos + n]
                pos += n
            state["_history"] = history
        flags = state["_flags"]
        if flags.typecode != "h":  # before _KEPT: 8-bit flags
            flags = state["_flags"] = array("h", flags)
        for slot in state["_history"]:
            flags[slot] |= _KEPT
        state.setdefault("_overdue", {})  # snapshots from before the overdue estimates
        state.setdefault("_eta_warm", 0)
        state.setdefault("hold_early", False)  # snapshots from before the early watches
        state.setdefault("_early", {})
        state.setdefault("late_move_p", None)  # snapshots from before the late moves
        state.setdefault("_delayed_until", {})
        state.setdefault("_held", {})  # snapshots from before the holds looked at again
        state.setdefault("late_again_p", None)
        state.setdefault("tell_horizon", None)  # snapshots from before the tell horizon
        state.setdefault("_headerless", {})  # snapshots from before the header-less scans
        ids: list[int | str | None] = [None] * len(state["_last_ts"])
        index = state["_index"]
        deque(map(ids.__setitem__, map(_SLOT.__and__, index.values()), index), maxlen=0)
        state["_ids"] = ids
        if layout < 3:  # no finished memory yet: start an empty one with the defaults
            self.__dict__.update(state)
            self.finished_retention_seconds = FINISHED_RETENTION
            self.finished_generation_seconds = FINISHED_GENERATION
            self._finished_init()
            self._facility_init(None, 3600)
            self.watch_fraction = 0.0
            self.incidents, self.hold_factor, self._incident_records = None, 1.0, []
            self.hold_horizon = 12 * 3600
            self.hold_early, self._early = False, {}
            self.late_move_p, self._delayed_until = None, {}
            self.late_again_p = None
            self.tell_horizon = None
            return
        state["_recent"] = set(array("Q", state["_recent"]))
        frozen = np.frombuffer(state.pop("_frozen"), np.uint64)  # read-only: never written
        # layout 3 from before the watches, the incidents and the facility statistics
        state.setdefault("watch_fraction", 0.0)
        state.setdefault("hold_factor", 1.0)
        state.setdefault("hold_horizon", 12 * 3600)
        state.setdefault("incidents", None)
        state.setdefault("_incident_records", [])
        self.__dict__.update(state)  # in place, _rotate makes new arrays
        if "facility_stats" not in state:
            self._facility_init(None, 3600)
        elif len(state.get("_pgap", ())) != len(self._last_ts):  # from before the lanes
            self._pgap = array("H", bytes(2 * len(self._last_ts)))
            self.__dict__.setdefault("_windows", [])
        self._freeze(frozen)


def _upgrade(state: dict[str, Any]) -> None:
    """A snapshot of layout 1 (str ids and refs, list histories) to the packed layout."""
    refs = state.pop("_recipient")
    state["_index"] = {
        _pack_id(pid): slot | _pack_ref(refs[slot]) << _REF_SHIFT
        for slot, pid in enumerate(state.pop("_ids")) if pid is not None
    }
    fac_no, code_no = state["_fac_no"], state["_code_no"]
    facilities, codes = state["_facilities"], state["_codes"]
    history = {}
    for slot, scans in state["_history"].items():
        packed = array("q")
        for facility, code, ts in scans:
            if facility not in fac_no:
                fac_no[facility] = len(facilities)
                facilities.append(facility)
            if code not in code_no:
                code_no[code] = len(codes)
                codes.append(code)
            packed.extend((fac_no[facility], code_no[code], ts))
        history[slot] = packed
    state["_history"] = history


CODE_TEXT = {
    "GX": "label created", "03": "accepted", "SF": "departed post office",
    "10": "arrived at origin facility", "A1": "arrived at facility", "T1": "departed facility",
    "TL": "in transit", "08": "missent", "07": "arrived at post office",
    "OF": "out for delivery", "02": "delivery attempted",
}


# -- compact strings ----------------------------------------------------------------------------
# A package id is held as the int of its UTF-8 bytes (big-endian): 48 bytes for a 22-digit id
# instead of a 72-byte str, and ints pickle without a memo entry. The bytes have no leading NUL
# (else the int would lose it), so the only ids kept as str are "" and those starting with NUL.
# A recipient_ref is held as the int of b"\x01" + its UTF-8 bytes (exact for any str, "" too;
# 0 means none), shifted left of the slot number in the index's value: one int per package
# holds both, so there is neither a separate int per slot nor a list of references.
_SLOT_BITS = 32
_SLOT = (1 << _SLOT_BITS) - 1
_REF_SHIFT = _SLOT_BITS
_LAYOUT = 3  # pickled: 1 = str ids and refs, list histories; 2 = packed; 3 = finished memory

# Finished packages: a 56-bit fingerprint of the id, stored frozen as fingerprint << 8 | tag
# (the generation number mod 256). For an int id: its remainder by a prime picked at random
# (first prime after a blake2b of a fixed text), the same in every process. Not hash(): that is
# the remainder by 2**61 - 1, and as 256**k mod 2**61 - 1 is a power of two, ids differing in a
# few digits collide (+1 in the 9th digit from the right and -8 in the last: the same hash).
_TAG_BITS = 8
_TAG = (1 << _TAG_BITS) - 1
_TAG_BYTE = 0 if sys.byteorder == "little" else 7
_MAX_GENERATIONS = 127  # kept generations: ages up to 2x this must not wrap mod 256
_FP_PRIME = 42_922_995_649_230_491  # 0x987e3cb45e369b: 56 bits
_MIX = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, odd: spreads fingerprints over the bitmap
_M64 = (1 << 64) - 1


def _moved_to(fac: str | None, code: str, ev: ScanEvent) -> str | None:
    """Where a package held on the road (its last scan a departure from ``fac``, or in
    transit) came off it: the facility of the scan that ended the silence (the end of the
    lane it came by); None for a package held inside a facility."""
    return ev.facility if fac is None or code in DEPARTURE_CODES else None


def _pack_id(package_id: str) -> int | str:
    if package_id < "\x01":
        return package_id
    return int.from_bytes(package_id.encode("utf-8", "surrogatepass"), "big")


def _unpack_id(key: int | str) -> str:
    if key.__class__ is str:
        return key  # type: ignore[return-value]
    return key.to_bytes((key.bit_length() + 7) // 8, "big").decode(  # type: ignore[union-attr]
        "utf-8", "surrogatepass")


def _pack_ref(ref: str | None) -> int:
    if ref is None:
        return 0
    return int.from_bytes(b"\x01" + ref.encode("utf-8", "surrogatepass"), "big")


def _unpack_ref(packed: int) -> str | None:
    if not packed:
        return None
    return packed.to_bytes((packed.bit_length() + 7) // 8, "big")[1:].decode(
        "utf-8", "surrogatepass")


def _fingerprint(key: int | str) -> int:
    """56 bits of a packed package id, the same in every process."""
    if key.__class__ is int:
        return key % _FP_PRIME  # type: ignore[operator]
    digest = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()  # type: ignore[union-attr]
    return int.from_bytes(digest, "big") >> _TAG_BITS


def hash_id(package_id: str) -> int:
    """A stable (process-independent) hash of a package id, for sharding and sampling."""
    return crc32(package_id.encode())

