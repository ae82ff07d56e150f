"""Fold per-package stall alerts into the facility incidents that explain them.

A sorting plant that slows down makes hundreds of packages silent at once. Each of them would
get its own "no scan for 30 h" stall alert; what the customer should hear instead is the
incident's explanation. :class:`IncidentFolder` keeps the incidents' open intervals (fed with
the records of :class:`detectors.incidents.IncidentManager`) and decides, for each stall alert:

``fold``
    an incident of a delay kind (``facility_slowdown``, ``facility_stop``, ``weather``,
    ``lane_delay``) covered the package's last facility while the package sat there silent:
    the alert becomes an ``incident_delay`` alert carrying the incident's key, kind and
    explanation (the package's own evidence is kept after it).
``suppress``
    a ``feed_outage`` incident covered it: the scans are missing, not the package; nobody is
    told (operations see the feed outage incident). So does a delay incident that was later
    *reclassified* as a feed outage (its resolving record says ``reclassified_as``): over
    its whole interval.
``keep``
    nothing covered it: an ordinary stall alert.

"Covered" means: the incident names the package's last facility (for ``weather``, any of the
facilities it lists; for ``lane_delay``, the lane's origin when the package's last scan there
was a departure, or when it is in transit since that departure (``departed_from``), since a
package does not say which lane it left on; a slowdown or a stop holds
only the packages still inside: not those whose last scan there was a departure), and it was
open at some time between the package's last scan and ``alert_time + grace`` (at a facility
that weather spread to later, from then on). When several did, one still open at the alert
explains the silence before one that had resolved, then a delay kind before a feed outage,
then the one that was there first. The decision
depends only on the incident records with ``opened_at`` up to ``alert_time + grace`` (event
time): a caller that has fed every record of the windows ending by then gets the same answer
in a replay as live, whatever the order in which shards delivered their alerts.

Engine-free: plain dicts in and out, picklable, no Bytewax.

Examples
--------
>>> from detectors.folding import IncidentFolder
>>> folder = IncidentFolder(grace_seconds=3600)
>>> folder.observe({"incident_key": "P1:facility_slowdown:20261001T0300Z",
...                 "kind": "facility_slowdown", "facility_id": "P1", "lane_to": None,
...                 "status": "open", "opened_at": "2026-10-01T03:00:00+00:00",
...                 "resolved_at": None, "facilities": "P1",
...                 "evidence": "P1 is holding 80 packages that usually leave by now."})
>>> stall = {"alert_key": "9400:stall:1", "kind": "stall", "package_id": "9400",
...          "facility_id": "P1", "last_event_code": "A1",
...          "last_scan_time": "2026-09-30T22:00:00+00:00",
...          "alert_time": "2026-10-01T20:00:00+00:00", "evidence": "No scan for 22 h."}
>>> decision, alert = folder.decide(stall)
>>> decision, alert["kind"], alert["alert_key"], alert["incident_key"]
('fold', 'incident_delay', '9400:incident_delay:1', 'P1:facility_slowdown:20261001T0300Z')
>>> folder.decide(stall | {"facility_id": "P2"})[0]
'keep'
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from detectors.events import DEPARTURE_CODES
from detectors.events import epoch_seconds as _ts
from detectors.incidents import DELAY_KINDS

__all__ = ["DELAY_KINDS", "IncidentFolder", "hold_end"]

_DEPARTED = DEPARTURE_CODES
_FOREVER = 1 << 62


@dataclass(slots=True)
class _Interval:
    key: str
    kind: str
    opened: int
    resolved: int  # _FOREVER while open
    lane: bool  # covers packages that departed the facility (lane origin)
    evidence: str
    facility_id: str
    lane_to: str | None
    affected: int
    names: frozenset[str]  # facilities it covers
    # facilities a later record added (weather spreading), from the time it added them:
    # before that the incident did not hold packages there
    added: dict[str, int] = field(default_factory=dict)

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        # pickled as (None, {slot: value}); a snapshot from before ``added`` lacks it
        values = state[1]
        for f in fields(self):
            value = values.get(f.name, MISSING)
            if value is MISSING:
                value = f.default_factory()  # type: ignore[misc]
            object.__setattr__(self, f.name, value)


def hold_end(alert: dict[str, Any], at: int) -> int:
    """When a ``moved_late`` package left the place it was held: the end of its silence
    (``last_scan_time + silence_seconds``; ``alert_time`` is a later scan when the tracker
    looked again), else ``at``."""
    since, silence = _ts(alert.get("last_scan_time")), alert.get("silence_seconds")
    if since is None or not isinstance(silence, int) or isinstance(silence, bool):
        return at
    return min(at, since + silence)


class IncidentFolder:
    """Incident intervals per facility, and the fold / suppress / keep decision for alerts.

    Parameters
    ----------
    grace_seconds
        An incident opened up to this long after a stall alert still claims it (the caller
        must hold the alert until the incidents through ``alert_time + grace_seconds`` are
        known).
    retention_seconds
        Resolved incidents are forgotten this long after they resolved (bounded memory).
    lane_wait_seconds
        A ``moved_late`` record of a package held on the road says where it came off it
        (``moved_to``): of the lane incidents from its origin only that lane's (to
        ``moved_to``) holds it (weather at the origin does too, as for any package on the
        road from there), and one opened up to this long after the package came off the
        road (:func:`hold_end`) still does (a lane incident opens on the late arrivals, this
        one's among them). The caller
        must hold such a record until the incidents through then are known
        (:class:`flows.network.NetworkDesk` does).
    """

    lane_wait_seconds = 0  # for snapshots made before the parameter existed

    def __init__(self, grace_seconds: int = 3600, retention_seconds: int = 7 * 86400,
                 lane_wait_seconds: int = 0) -> None:
        self.grace_seconds = grace_seconds
        self.retention_seconds = retention_seconds
        self.lane_wait_seconds = lane_wait_seconds
        self._by_facility: dict[str, list[_Interval]] = {}
        self._by_key: dict[str, _Interval] = {}
        self.folded = 0
        self.suppressed = 0
        self.kept = 0

    # -- incidents -------------------------------------------------------------------------
    def observe(self, record: dict[str, Any], at: int | None = None) -> None:
        """Apply one incident record (``open`` / ``update`` / ``resolved``); ``at``: its
        event time (the window end it came with), from which facilities it adds to an open
        incident are covered (None: from the incident's opening)."""
        key = record.get("incident_key")
        kind = record.get("kind")
        if not key or not kind:
            return
        status = record.get("status")
        facility = str(record.get("facility_id") or "")
        # weather names the facilities it hit (its facility_id is the region's subject)
        names = self.names(record)
        head = self._by_key.get(key)
        if head is None:
            if status != "open":
                return  # its opening was pruned or never seen
            opened = _ts(record.get("opened_at"))
            if opened is None:
                return
            head = self._by_key[key] = _Interval(
                key, kind, opened, _FOREVER, record.get("lane_to") is not None,
                str(record.get("evidence") or ""), facility, record.get("lane_to"),
                int(record.get("affected_packages") or 0), frozenset(),
            )
        head.affected = int(record.get("affected_packages") or head.affected)
        if status == "resolved":
            head.resolved = _ts(record.get("resolved_at")) or head.resolved
            if record.get("reclassified_as") == "feed_outage":
                # it was the feed all along: packages silent then were not held by anything
                # (those told already were told; nobody else is)
                head.kind = "feed_outage"
        for name in sorted(names - head.names):
            self._by_facility.setdefault(name, []).append(head)
            if head.names and at is not None and at > head.opened:
                head.added[name] = at
        head.names = head.names | names

    @staticmethod
    def names(record: dict[str, Any]) -> set[str]:
        """The facilities an incident record covers (weather: every one it lists)."""
        return set(str(record.get("facilities") or "").split()) or {
            str(record.get("facility_id") or "")}

    def is_open(self, key: str) -> bool:
        """The incident is known and not resolved."""
        head = self._by_key.get(key)
        return head is not None and head.resolved == _FOREVER

    def open_by_kind(self) -> dict[str, int]:
        """Open incidents per kind (for a gauge)."""
        counts: dict[str, int] = {}
        for head in self._by_key.values():
            if head.resolved == _FOREVER:
                counts[head.kind] = counts.get(head.kind, 0) + 1
        return counts

    def resolved_at(self, key: str) -> int | None:
        """Event time the incident resolved, None while open (or unknown)."""
        head = self._by_key.get(key)
        if head is None or head.resolved == _FOREVER:
            return None
        return head.resolved

    def prune(self, now: int) -> None:
        """Forget incidents resolved more than ``retention_seconds`` before ``now``."""
        cutoff = now - self.retention_seconds
        for name, intervals in list(self._by_facility.items()):
            kept = [i for i in intervals if i.resolved >= cutoff]
            if kept:
                self._by_facility[name] = kept
            else:
                del self._by_facility[name]
        for key, head in list(self._by_key.items()):
            if head.resolved < cutoff:
                del self._by_key[key]

    def has_incidents(self, name: str | None) -> bool:
        """Whether any incident (open, or resolved within the retention) names facility
        ``name``: if not, :meth:`covering` finds none there (a cheap test first)."""
        return bool(name) and bool(self._by_facility.get(name))  # type: ignore[arg-type]

    # -- alerts ----------------------------------------------------------------------------
    def covering(self, alert: dict[str, Any]) -> _Interval | None:
        """The incident that covers a stall alert: of those that covered the silence, one
        still open at ``alert_time`` first (one that resolved hours before does not explain
        a silence that goes on: an open feed outage there does), then delay kinds before
        feed outages, then the one that covered the facility first."""
        name = alert.get("facility_id")
        # in transit (no facility): the lane's origin it departed, if it says
        departed = name is None or alert.get("last_event_code") in _DEPARTED
        name = name or alert.get("departed_from")
        intervals = self._by_facility.get(name) if name else None
        if not intervals:
            return None
        at = _ts(alert.get("alert_time"))
        since = _ts(alert.get("last_scan_time"))
        if at is None:
            return None
        # a package that moved on (moved_late) was held by incidents open before it moved;
        # off the road, by its lane's only, which opens on the late arrivals (lane_wait)
        late_move = alert.get("kind") == "moved_late"
        until = hold_end(alert, at) if late_move else at + self.grace_seconds
        moved_to = alert.get("moved_to") if late_move else None
        since = at if since is None else since
        best: _Interval | None = None
        best_rank = (False, False, 0)
        for i in intervals:
            start = i.added.get(name, i.opened) if i.added else i.opened
            if moved_to is not None and i.lane:
                if i.lane_to != moved_to or start > until + self.lane_wait_seconds:
                    continue  # another lane from there, or opened after the wait
            elif start > until:
                continue
            if i.resolved < since:
                continue
            if departed != i.lane and i.kind != "weather":
                continue  # a lane holds departed packages; a plant, those still inside
            rank = (i.resolved >= at, i.kind in DELAY_KINDS, -start)
            if best is None or rank > best_rank:
                best, best_rank = i, rank
        return best

    def decide(self, alert: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``("fold", incident_delay alert)``, ``("suppress", alert)`` or ``("keep", alert)``.

        Only ``stall``, ``watch`` and ``moved_late`` alerts (a silence long enough to be
        worth explaining if an incident explains it, the last one already over; see
        :class:`detectors.tracker.PackageTracker`) are decided; anything else is kept as it
        is.
        """
        if alert.get("kind") not in ("stall", "watch", "moved_late"):
            return "keep", alert
        interval = self.covering(alert)
        if interval is None:
            self.kept += 1
            return "keep", alert
        if interval.kind not in DELAY_KINDS:
            self.suppressed += 1
            return "suppress", alert
        self.folded += 1
        folded = dict(alert)
        folded["kind"] = "incident_delay"
        folded["alert_key"] = f"{alert['package_id']}:incident_delay:{alert.get('episode', 1)}"
        folded["incident_key"] = interval.key
        folded["incident_kind"] = interval.kind
        own = alert.get("evidence")
        folded["evidence"] = interval.evidence + (f" {own}" if own else "")
        return "fold", folded
