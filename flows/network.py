"""The network step without the engine: shards' records in, alerts, messages and incidents out.

Every shard of the flow (one :class:`detectors.tracker.PackageTracker` each) sends the network
step its package records (``stall``, ``watch``, ``moved``, ``back_on_track``, ``moved_late``;
with several shards also :class:`detectors.tracker.Held`, a hold a package left on time, and
``late_again``, a later scan that found it late) and, after each batch, a
:class:`Progress`: its watermark, how far its facility windows are closed, and the windows
(or, with one shard, the incident records and facility rows) of that batch.
:class:`NetworkDesk` merges them and, in event-time order, assesses the facility windows
(incidents open and resolve), folds package records into the incidents that explain them
(:class:`detectors.folding.IncidentFolder`) and groups customer messages
(:class:`notifiers.grouping.MessageGrouper`).

A package record made at watermark ``R`` is decided only once every shard has closed its
facility windows through ``R + grace`` and passed ``R`` itself, so it sees exactly the
incidents of those windows whatever the order in which shards or batches arrive: a replay
gives the same outputs as live processing (see :meth:`NetworkDesk.step`). A ``moved_late``
record counts as made at the package's move, so that the incidents up to the move are known.

Engine-free: plain dicts in, ``(tag, record)`` pairs out, picklable (it is the flow's snapshot
of the step), no Bytewax. ``flows.dataflow`` wraps it in a ``stateful_batch`` step.

Examples
--------
One shard; an incident opens at P1 at 03:00 and a package silent there since the night before
raises a stall at 20:00. Nothing is decided until the shard reports its progress; then the
incident comes out first, the stall is folded into it, and the customer's message is held for
``hold_seconds`` (here: decided at 21:00, an hour after the stall, so its hold is over and it
goes out at once).

>>> from detectors.folding import IncidentFolder
>>> from notifiers.grouping import MessageGrouper
>>> from flows.network import NetworkDesk, Progress
>>> desk = NetworkDesk(IncidentFolder(grace_seconds=3600), MessageGrouper(hold_seconds=3600))
>>> desk.add("0", {"alert_key": "9400:stall:1", "kind": "stall", "package_id": "9400",
...                "episode": 1, "facility_id": "P1", "last_event_code": "A1",
...                "last_scan_time": "2026-09-30T22:00:00+00:00",
...                "alert_time": "2026-10-01T20:00:00+00:00", "recipient_ref": "C7",
...                "evidence": "No scan for 22 h."})
>>> desk.step()  # the shard has not reported its progress yet
[]
>>> incident = {"incident_key": "P1:facility_slowdown:20261001T0300Z",
...             "kind": "facility_slowdown", "facility_id": "P1", "lane_to": None,
...             "status": "open", "opened_at": "2026-10-01T03:00:00+00:00",
...             "resolved_at": None, "facilities": "P1",
...             "evidence": "P1 is holding 80 packages that usually leave by now."}
>>> desk.add("0", Progress(watermark=1790885700, closed_through=1790888400,  # 20:15, 21:00
...                        windows=[], incidents=[(1790823600, [incident])]))  # 03:00
>>> for tag, record in desk.step():
...     print(f"{tag} {record['kind']} {record.get('packages', '')}".rstrip())
incident facility_slowdown
alert incident_delay
message incident_delay ['9400']
>>> desk.finish()
[]
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from detectors.events import epoch_seconds as _epoch  # never empty here
from detectors.events import iso_time
from detectors.facility import FacilityWindow, merge
from detectors.folding import DELAY_KINDS, IncidentFolder, hold_end
from detectors.incidents import IncidentDesk
from detectors.tracker import Held
from notifiers.grouping import MessageGrouper

if TYPE_CHECKING:
    from flows.metrics import FlowMetrics

__all__ = ["NetworkDesk", "Out", "Progress"]

Out = tuple[str, dict[str, Any]]  # ("alert" | "message" | "incident" | "facility", record)

_END = 1 << 62  # no step of this kind can be taken now


def _where(alert: dict[str, Any]) -> str:
    """The facility a package record is watched under: its facility, or in transit the
    facility it departed (a lane incident from there holds it); "" if neither is known."""
    return alert.get("facility_id") or alert.get("departed_from") or ""


def _all_clear(moved: dict[str, Any]) -> dict[str, Any]:
    """A ``moved`` record as the ``back_on_track`` of a package told through an incident."""
    return moved | {"kind": "back_on_track", "evidence": "Moving again.",
                    "alert_key": f"{moved['package_id']}:back_on_track:{moved['episode']}"}


@dataclass(slots=True)
class Progress:
    """A shard's progress after a batch: its stall watermark, how far its facility windows are
    closed, and the windows it closed (sent to the network step, after the batch's alerts)."""

    watermark: int
    closed_through: int
    windows: list[FacilityWindow]
    incidents: list[tuple[int, list[dict[str, Any]]]]  # (window end, records): one shard
    # (window end, facility figure rows): one shard, with ``IncidentDesk(keep_figures=True)``
    figures: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)


class NetworkDesk:
    """Merges the shards' facility windows, opens and resolves incidents, folds package
    records into them and groups customer messages, in event-time order.

    Feed it with :meth:`add` (a shard's package record or :class:`Progress`, in the order the
    shard made them), then call :meth:`step` for what can be decided now; :meth:`finish` at
    the end of input.

    Parameters
    ----------
    folder
        Decides fold / suppress / keep for stall and watch records; its ``grace_seconds`` is
        how long past a record's watermark the desk waits for incidents that may explain it.
    grouper
        Turns the decided alerts into customer messages.
    shards
        How many shards report: nothing is decided before each of them sent a
        :class:`Progress`.
    incidents
        Assesses the merged facility windows of all shards. None when the (single) shard
        assesses its own windows and sends incident records in ``Progress.incidents``.
        Built with ``keep_figures=True``, its per-window facility figures (or those a single
        shard sends in ``Progress.figures``) come out as ``("facility", row)``.
    metrics
        Optional counters (``messages``, ``alerts_suppressed``, ``incidents``) and the
        per-facility gauges; not part of the pickled state: set it again after unpickling.

    Attributes
    ----------
    now
        Event time of the last step taken.
    assessed_through
        Facility windows ending by then are assessed.
    watching
        Facility -> package -> its ``watch`` record: silent packages no incident explains
        (yet); an incident opening there folds them at once (the proactive message). A
        package in transit is watched under the facility it departed (its lane's origin). With
        several shards a package is watched from its hold point (overdue and due within the
        hold horizon, see ``PackageTracker(hold_early=True)``), so it hears of an incident
        when it opens, as with one shard.
    """

    def __init__(self, folder: IncidentFolder, grouper: MessageGrouper, *, shards: int = 1,
                 incidents: IncidentDesk | None = None,
                 metrics: FlowMetrics | None = None) -> None:
        self.folder = folder
        self.grouper = grouper
        self.shards = shards
        self.incidents = incidents
        self.metrics = metrics
        self.now = 0
        self.assessed_through = 0
        self.watching: dict[str, dict[str, dict[str, Any]]] = {}
        self._progress: dict[str, tuple[int, int]] = {}  # shard -> (watermark, closed through)
        self._windows: dict[int, list[FacilityWindow]] = {}  # window end -> the shards' windows
        self._ready: dict[int, list[dict[str, Any]]] = {}  # window end -> incident records
        # package records waiting, as a heap of (watermark when made, package, arrival, record)
        self._held: list[tuple[int, str, int, dict[str, Any]]] = []
        self._arrivals = 0
        self._next_prune = 0
        self._figures: list[dict[str, Any]] = []  # facility figure rows not yet out
        self._checking: set[tuple[str, str]] = set()  # (facility, package) fold checks held
        # watched packages that moved on (nobody told) before the windows up to their move
        # were assessed: facility -> package -> (its watch, its move); an incident opening
        # there by the move held it (_fold_moved); a heap of (move time, facility, package)
        # forgets them once those windows are assessed
        self._moved_watched: dict[str, dict[str, tuple[dict[str, Any], dict[str, Any]]]] = {}
        self._moved_by_time: list[tuple[int, str, str]] = []
        # package -> until when its records wait behind its moved_late (lane_wait_seconds):
        # one package's records are decided in the order they were made
        self._behind: dict[str, int] = {}
        # several shards: package -> the holds a delay incident covered that it left still
        # on time; a later ``late_again`` of it tells of one
        self._holds: dict[str, list[Held]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_figures", [])  # snapshots from before the figures
        state.setdefault("_checking", set())  # snapshots from before the fold checks
        state.setdefault("_moved_watched", {})  # snapshots from before the moved watches
        state.setdefault("_moved_by_time", [])
        state.setdefault("_behind", {})
        state.setdefault("_holds", {})  # snapshots from before the several shards' holds
        self.__dict__.update(state)

    # -- pickling (Bytewax snapshots) ---------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["metrics"] = None  # the process's counters, not state
        return state

    # -- input ------------------------------------------------------------------------------
    def add(self, shard: str, item: dict[str, Any] | Held | Progress) -> None:
        """One item from ``shard``: a package record (held until it can be decided; its
        ``"watermark"`` key, when the tracker made it, is taken out) or its :class:`Progress`."""
        if isinstance(item, Progress):
            self._progress[shard] = (item.watermark, item.closed_through)
            for w in item.windows:
                self._windows.setdefault(w.end, []).append(w)
            for end, records in item.incidents:
                self._ready.setdefault(end, []).extend(records)
            for _, rows in item.figures:
                self._figures += rows
        elif isinstance(item, Held):  # several shards: a hold left on time, when it ended
            self._arrivals += 1
            made, pid = item.made, item.package_id
            if item.moved_to is not None:  # off the road: as a moved_late's (below)
                made = max(made, item.moved_ts + self.folder.lane_wait_seconds)
                self._behind[pid] = max(made, self._behind.get(pid, made))
            elif pid in self._behind:
                made = max(made, self._behind[pid])
            heapq.heappush(self._held, (made, pid, self._arrivals, item))
        else:
            self._arrivals += 1
            made = item.pop("watermark", None)
            if made is None:
                made = _epoch(item["alert_time"])
            pid = item["package_id"]
            if item["kind"] == "moved_late" and item.get("moved_to") is not None:
                # off the road: the lane incident it may have been held by opens on the late
                # arrivals, this one's among them (IncidentFolder.lane_wait_seconds, from when
                # it came off the road); the package's later records wait behind it
                arrived = hold_end(item, _epoch(item["alert_time"]))
                made = max(made, arrived + self.folder.lane_wait_seconds)
                self._behind[pid] = max(made, self._behind.get(pid, made))
            elif pid in self._behind:  # a record of a package whose moved_late waits
                made = max(made, self._behind[pid])
            heapq.heappush(self._held, (made, pid, self._arrivals, item))

    def step(self) -> list[Out]:
        """Every step whose inputs are complete, in event-time order; [] until every shard
        has reported its progress.

        Two kinds of steps: assessing the merged facility windows that end at ``E`` (possible
        once every shard closed them: ``E <= closed``), and deciding a package record made
        at watermark ``R`` (stall, watch, moved, back on track), which must see exactly the
        incidents of the windows ending by ``R + grace``. Records come from each shard in
        watermark order, so once the lowest shard watermark ``wm`` has passed ``R`` no earlier
        record can come (a shard that reported ``wm`` may still make records at ``wm``, in its
        next batch: records made at ``wm`` wait, else ties would be decided in an order that
        depends on the batches). Steps are taken in order of ``E`` and ``R + grace`` (windows
        first on ties), so the outcome does not depend on how batches or shards interleave: a replay
        gives the same alerts, incidents and messages as live processing.
        """
        if len(self._progress) < self.shards:
            return []  # not every shard has spoken yet
        closed = min(c for _, c in self._progress.values())
        wm = min(w for w, _ in self._progress.values())
        return self._count_alerts(self._advance(wm, closed))

    def finish(self) -> list[Out]:
        """End of input: decide everything still held and send every held message."""
        out = self._advance(_END, _END)
        out += self._messages(self.grouper.flush(self.now, self.folder.resolved_at))
        return self._count_alerts(out)

    def _count_alerts(self, out: list[Out]) -> list[Out]:
        """``delaywatch_alerts_total{kind}``: the alerts decided, as alerts.jsonl has them."""
        m = self.metrics
        if m is not None:
            for tag, record in out:
                if tag == "alert":
                    m.alerts.labels(record["kind"]).inc()
        return out

    # -- steps ------------------------------------------------------------------------------
    def _advance(self, wm: int, closed: int) -> list[Out]:
        grace = self.folder.grace_seconds
        out: list[Out] = self._facility_rows([])  # a single shard's, as they came
        held, windows, ready = self._held, self._windows, self._ready
        before = len(held)
        while True:
            record_at = held[0][0] + grace if held and held[0][0] < wm else _END
            if record_at > closed:
                record_at = _END
            window_at = min(windows) if windows else _END
            if ready:
                window_at = min(window_at, min(ready))
            if window_at > closed or window_at > wm + grace:
                window_at = _END
            if window_at == _END and record_at == _END:
                break
            if window_at <= record_at:
                self.now = max(self.now, window_at)
                out += self._due()
                records = ready.pop(window_at, [])
                shards = windows.pop(window_at, None)
                if shards and self.incidents is not None:
                    records += self.incidents.assess(window_at, merge(shards))
                    for _, rows in self.incidents.take_figures():
                        out = self._facility_rows(rows, out)
                out += self._incidents(records)
                self.assessed_through = window_at
                self._forget_moved(window_at)
            else:
                if record_at > self.now:  # the records decided at one time all join first
                    self.now = record_at
                    out += self._due()
                made, pid, _, record = heapq.heappop(held)
                if self._behind.get(pid, made + 1) <= made:
                    del self._behind[pid]  # (its last record waiting behind is decided now)
                out += self._decide(record)
            if self.now >= self._next_prune:
                self._prune()
        if len(held) != before:  # groups the last records joined may be due by now
            out += self._due()
        return out

    def _facility_rows(self, rows: list[dict[str, Any]], out: list[Out] | None = None
                       ) -> list[Out]:
        """The facility figure rows pending (and ``rows``) as outputs, onto ``out``; the
        per-facility gauges follow them."""
        if self._figures:
            rows, self._figures = self._figures + rows, []
        out = [] if out is None else out
        m = self.metrics
        for row in rows:
            out.append(("facility", row))
            if m is not None and row["subject"] == "facility":
                m.facility(row)
        return out

    def _due(self) -> list[Out]:
        return self._messages(self.grouper.advance(self.now, self.folder.resolved_at))

    def _messages(self, messages: list[dict[str, Any]]) -> list[Out]:
        m = self.metrics
        if m is not None:
            for msg in messages:
                m.messages.labels(msg["kind"]).inc()
        return [("message", msg) for msg in messages]

    def _prune(self) -> None:
        """Daily: forget old incidents and packages watched for longer than a week (expired
        by the tracker's TTL or lost: they will not move again)."""
        self._next_prune = self.now + 86400
        self.folder.prune(self.now)
        cutoff = self.now - 7 * 86400
        for pid, holds in list(self._holds.items()):
            if holds[-1].moved_ts < cutoff:
                del self._holds[pid]  # (delivered, or lost: no later scan will tell)
        for name, watched in list(self.watching.items()):
            for pid in [p for p, a in watched.items() if _epoch(a["alert_time"]) < cutoff]:
                del watched[pid]
            if not watched:
                del self.watching[name]

    def _decide(self, alert: dict[str, Any] | Held) -> list[Out]:
        """One package record from a shard, in order: what it tells whom."""
        if isinstance(alert, Held):  # several shards: kept if a delay incident covered it
            if self.folder.has_incidents(alert.facility_id or alert.departed_from):
                interval = self.folder.covering(alert.fields() | {
                    "kind": "moved_late", "alert_time": iso_time(alert.moved_ts)})
                if interval is not None and interval.kind in DELAY_KINDS:
                    self._holds.setdefault(alert.package_id, []).append(alert)
            return []
        m, folder, grouper = self.metrics, self.folder, self.grouper
        kind, pid = alert["kind"], alert["package_id"]
        if kind == "fold_watched":
            return self._fold_one(alert)
        told = grouper.told(pid)
        if kind == "moved" or kind == "back_on_track":
            watch = self._unwatch(alert)
            if told == "fold":  # the customer heard of it through an incident
                if kind == "moved":
                    alert = _all_clear(alert)
            elif told == "suppress":  # close what was told to nobody
                grouper.add(alert | {"kind": "back_on_track"}, "keep")
                return []
            elif kind == "moved":
                # a watched package nobody was told about moves on; before the windows up to
                # its move are assessed, an incident opening in them held it (_fold_moved)
                moved_at = _epoch(alert["alert_time"])
                if watch is not None and moved_at > self.assessed_through and \
                        not alert.get("ended"):  # (delivered or returned: nothing to tell)
                    where = _where(watch)
                    self._moved_watched.setdefault(where, {})[pid] = (watch, alert)
                    heapq.heappush(self._moved_by_time, (moved_at, where, pid))
                return []
            return [("alert", alert), *self._messages(grouper.add(alert))]
        if kind == "moved_late":
            # moved on from a long silence, now expected late: told only if an incident held
            # it there (its own lateness is otherwise for its stall alerts to tell); several
            # shards, ``again``: else if one held it before (late_again)
            again, scanned_at = alert.pop("again", False), alert.pop("scanned_at", None)
            told_now = self._tell_moved(alert)
            if told_now is None and again:
                told_now = self._tell_held(alert, scanned_at)
            return told_now or []
        if kind == "late_again":
            return self._tell_held(alert, alert.pop("scanned_at", None)) or []
        if kind == "stall":
            self._unwatch(alert)
            if told == "fold":
                return []  # already told, by the incident that holds it
        original = alert
        decision, alert = folder.decide(alert)
        if decision == "fold" and grouper.told_of(alert):
            # it heard of this incident and of its end already: this silence is its own
            decision, alert = "keep", original
        if alert["kind"] == "watch":  # not explained (yet): remember it, tell nobody
            if decision == "keep":
                self.watching.setdefault(_where(alert), {})[pid] = alert
                return []
            if decision == "suppress":
                return []
        if decision == "suppress" and m is not None:
            m.alerts_suppressed.labels("feed_outage").inc()
        if decision == "suppress":
            return self._messages(grouper.add(alert, decision))
        self._holds.pop(pid, None)  # told of a newer silence: it tells of itself
        return [("alert", alert), *self._messages(grouper.add(alert, decision))]

    def _tell_moved(self, alert: dict[str, Any]) -> list[Out] | None:
        """A ``moved_late`` record folded into the delay incident that held the package, and
        its message; None if none did, or if its customer heard of that one already."""
        decision, folded = self.folder.decide(alert)
        if decision != "fold" or self.grouper.closed(folded) or self.grouper.listed(folded):
            return None  # (listed: several shards check a watched package's move too)
        folded["moving"] = True  # the message says it moves again, with its new estimate
        self._holds.pop(folded["package_id"], None)  # (one message for its holds before)
        out: list[Out] = [("alert", folded), *self._messages(self.grouper.add(folded, "fold"))]
        # it has already moved: its group's all-clear waits for it no longer
        self.grouper.add(folded | {"kind": "back_on_track"})
        return out

    def _tell_held(self, late: dict[str, Any], scanned_at: str | None) -> list[Out] | None:
        """Several shards: a package late at a scan after holds it left on time (a
        ``late_again``, or a ``moved_late`` with ``again``) told of the latest hold a delay
        incident covered (:meth:`_tell_moved`), as one shard's ``_late_again`` would; None
        if it has none, or its customer heard of those incidents already."""
        for hold in reversed(self._holds.pop(late["package_id"], ())):
            told = self._tell_moved(late | hold.fields() | {
                "kind": "moved_late",
                "evidence": f"Moving again: {hold.text()}, now scanned at {scanned_at}."})
            if told is not None:
                return told
        return None

    def _unwatch(self, alert: dict[str, Any]) -> dict[str, Any] | None:
        """The package no longer watched; returns its watch record, if it was watched."""
        for where in dict.fromkeys((_where(alert), "")):  # "": a transit watch from before
            watched = self.watching.get(where)
            watch = None if watched is None else watched.pop(alert["package_id"], None)
            if watch is not None:
                if not watched:
                    del self.watching[where]
                return watch
        return None

    def _fold_moved(self, record: dict[str, Any]) -> list[Out]:
        """A delay incident opened or grew: a package watched at its facilities that moved on
        at or after that (its move decided before this window, nobody told) was held by it:
        told now, as a watched package folded when the incident opened would have been, and
        its all-clear at once (it moves again)."""
        since = self._since(record)
        out: list[Out] = []
        for name in sorted(self.folder.names(record)):
            moved = self._moved_watched.get(name)
            for pid in sorted(moved or ()):
                watch, move = moved[pid]  # type: ignore[index]
                if _epoch(move["alert_time"]) < _epoch(since):
                    continue  # it had left before the incident opened there
                folded = self._folded_watch(watch, since)
                if folded is None:
                    continue
                del moved[pid]  # type: ignore[attr-defined]
                self._holds.pop(pid, None)
                clear = _all_clear(move)
                out += [("alert", folded), *self._messages(self.grouper.add(folded, "fold"))]
                out += [("alert", clear), *self._messages(self.grouper.add(clear))]
            if moved is not None and not moved:
                del self._moved_watched[name]
        return out

    def _forget_moved(self, through: int) -> None:
        """Windows through ``through`` are assessed: a package that moved on before then was
        held by no incident that opens later."""
        heap, moved = self._moved_by_time, self._moved_watched
        while heap and heap[0][0] < through:
            moved_at, where, pid = heapq.heappop(heap)
            entries = moved.get(where)
            entry = None if entries is None else entries.get(pid)
            if entry is not None and _epoch(entry[1]["alert_time"]) == moved_at:
                del entries[pid]  # type: ignore[union-attr]
                if not entries:
                    del moved[where]

    def _fold_watched(self, record: dict[str, Any]) -> None:
        """An incident opened or grew: each package watched silent at its facilities is looked
        at again once the moves made before now are in (a ``fold_watched`` check made now, so
        decided after every record made before now: a package that had left before the
        incident opened, its move scan still on its way, was not held by it)."""
        since = self._since(record)
        checking = self._checking
        for name in sorted(self.folder.names(record)):
            for pid in sorted(self.watching.get(name, ())):
                if (name, pid) in checking:
                    continue  # (an update of the same incident, or another, meanwhile)
                checking.add((name, pid))
                self._arrivals += 1
                check = {"kind": "fold_watched", "package_id": pid, "facility_id": name,
                         "since": since}
                heapq.heappush(self._held, (self.now, pid, self._arrivals, check))

    def _fold_one(self, check: dict[str, Any]) -> list[Out]:
        """A ``fold_watched`` check: the package, if still watched there, told of the incident
        that holds it, unless it heard of that incident and its end already."""
        name, pid = check["facility_id"], check["package_id"]
        self._checking.discard((name, pid))
        watched = self.watching.get(name)
        alert = None if watched is None else watched.get(pid)
        if alert is None:
            return []  # it moved (or stalled) meanwhile
        folded = self._folded_watch(alert, check["since"])
        if folded is None:
            return []
        self._unwatch(alert)
        self._holds.pop(pid, None)
        return [("alert", folded), *self._messages(self.grouper.add(folded, "fold"))]

    def _since(self, record: dict[str, Any]) -> str:
        """From when an incident record holds the packages watched at its facilities: its
        opening, or now for an update (an incident that grew covers its new facilities from
        now, IncidentFolder.observe)."""
        return record["opened_at"] if record["status"] == "open" else iso_time(self.now)

    def _folded_watch(self, watch: dict[str, Any], since: str) -> dict[str, Any] | None:
        """A watch record folded into the delay incident that holds the package as of
        ``since`` (or its own time, if later); None if none does, or if the package heard of
        that incident and its end already."""
        at = max(watch["alert_time"], since, key=_epoch)
        decision, folded = self.folder.decide(watch | {"alert_time": at})
        return None if decision != "fold" or self.grouper.told_of(folded) else folded

    def _incidents(self, records: list[dict[str, Any]]) -> list[Out]:
        """Incident records of one window end: out, into the folder, and they fold the
        packages watched where a delay incident opens."""
        m = self.metrics
        out: list[Out] = []
        for record in records:
            self.folder.observe(record, self.now)
            out.append(("incident", record))
            if record.get("reclassified_as") == "feed_outage":
                # it was the feed: messages still held for it go to nobody
                withdrawn = self.grouper.withdraw(record["incident_key"])
                if withdrawn and m is not None:
                    m.alerts_suppressed.labels("feed_outage").inc(withdrawn)
            if record["status"] != "resolved" and record["kind"] in DELAY_KINDS:
                self._fold_watched(record)
                out += self._fold_moved(record)
            if m is not None and record["status"] in ("open", "resolved"):
                status = "opened" if record["status"] == "open" else "resolved"
                m.incidents.labels(record["kind"], status).inc()
        return out
