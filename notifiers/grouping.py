"""From package alerts to customer messages: one message per customer and incident.

The flow raises alerts per package; a customer should not get one e-mail per package when a
facility incident holds several of theirs. :class:`MessageGrouper` turns the alert stream into
the messages that go to the outbox:

* ``stall``: one message, as it is (an ordinary stall concerns one package);
* ``incident_delay``: the packages of one customer held by one incident are gathered for
  ``hold_seconds`` of event time after the first of them, then go out as **one** message that
  lists them (``packages``), with the incident's explanation, the earliest promise and the
  latest new estimate. A package of the same customer folded into the same incident after that
  message went out is not announced again: it is listed in the closing message;
* ``back_on_track``: for a stall, one message, as it is; for packages of an incident message,
  **one** short message per customer and incident, once the incident has resolved and every
  package of that message has moved again (listing them, with the latest of their new
  estimates);
* an alert the caller *suppressed* (a feed outage: the scans are missing, not the package)
  produces no message, and neither does the back-on-track that closes it; an incident
  reclassified as a feed outage while its messages were held has them withdrawn
  (:meth:`MessageGrouper.withdraw`).

* an ``incident_delay`` alert with ``moving`` (the package was told only when it moved on,
  late): gathered the same way; a message of such packages only says they were held and are
  moving again, with their new estimate, and needs no all-clear. So does a message whose
  packages all moved again during its hold (its ``back_on_track`` alerts came first): it
  is not sent as "held" with an all-clear behind it.

So a customer hit by an incident gets at most two messages for it: the delay and the
all-clear; unless another of their packages is folded into the same incident after that
group closed, which opens a follow-up group (keys end ``:2``, ``:3``; a repeated key would be
dropped by the outbox, unsent). A package that was in a closed group is not told of that
incident again (:meth:`MessageGrouper.told_of`; the network step keeps a new silence of it
as its own stall).

Message keys are deterministic (the outbox's unique key): a stall message keeps its alert key;
an incident message is ``"{incident_key}:{customer}:incident_delay"`` and its all-clear
``"{incident_key}:{customer}:back_on_track"`` (a follow-up group's:
``"{incident_key}:{customer}:2:incident_delay"``), where ``customer`` is a short digest of the
recipient reference (keys show up in logs and metrics tooling; the reference does not).

Time is the caller's event time (``advance(now)``): the same alerts and clock give the same
messages in a replay as live. Engine-free and picklable.

Examples
--------
>>> from notifiers.grouping import MessageGrouper
>>> g = MessageGrouper(hold_seconds=3600)
>>> def folded(pid, at):
...     return {"alert_key": f"{pid}:incident_delay:1", "kind": "incident_delay",
...             "package_id": pid, "episode": 1, "alert_time": at, "recipient_ref": "C7",
...             "incident_key": "P1:weather:20261001T0300Z", "facility_id": "P1",
...             "promised_by": "2026-10-02T23:00:00+00:00",
...             "new_estimate": "2026-10-03T23:00:00+00:00", "evidence": "Snow at P1."}
>>> g.add(folded("A", "2026-10-01T05:00:00+00:00"), "fold")
[]
>>> g.add(folded("B", "2026-10-01T05:30:00+00:00"), "fold")
[]
>>> [(m["kind"], m["packages"]) for m in g.advance(1790834400)]  # 06:00: held for 1 h
[('incident_delay', ['A', 'B'])]
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

__all__ = ["MessageGrouper"]

_LIST_LIMIT = 50  # packages listed in one message (the composer shows "and N more")
# how often (event time) every group notes whether its incident resolved; far under the
# folder's retention of resolved incidents (a week), after which it would not know any more
_SWEEP_SECONDS = 3600


def _ts(value: Any) -> int | None:
    if not value:
        return None
    return int(datetime.fromisoformat(str(value)).timestamp())


def _lateness(dates: list[Any]) -> tuple[int, int]:
    """How late a ``[package, promised_by, new_estimate]`` is, for the latest of several:
    both known first (estimate minus promise), then either one alone."""
    promised, estimate = _ts(dates[1]), _ts(dates[2])
    if promised is not None and estimate is not None:
        return 2, estimate - promised
    return (1, 0) if estimate is not None or promised is not None else (0, 0)


def customer_digest(recipient_ref: str) -> str:
    """A short, stable, non-reversible tag for a recipient reference (for message keys)."""
    data = recipient_ref.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=6).hexdigest()


@dataclass(slots=True)
class _Group:
    key: str  # "{incident_key}:{customer digest}"
    incident_key: str
    recipient_ref: str
    first_ts: int
    alerts: list[dict[str, Any]] = field(default_factory=list)
    sent: bool = False
    waiting: set[str] = field(default_factory=set)  # packages that have not moved again
    moved_ts: int = 0
    moved_estimate: str | None = None  # (snapshots from before moved_estimates: the latest)
    moved_estimates: dict[str, str] = field(default_factory=dict)  # each one's own
    ended: dict[str, str] = field(default_factory=dict)  # delivered or returned, by package
    # when its incident resolved, kept here once known: the folder forgets incidents a week
    # after they resolve, a package may move again later than that
    resolved_ts: int | None = None
    seq: int = 0  # opening order, for the order of messages due together

    def __setstate__(self, state: tuple[None, dict[str, Any]]) -> None:
        # pickled as (None, {slot: value}); a snapshot from before a field was added lacks
        # it: the default
        values = state[1]
        for f in fields(self):
            if f.name in values:
                value = values[f.name]
            else:
                value = f.default_factory() if f.default_factory is not MISSING else f.default
            object.__setattr__(self, f.name, value)


def _group_key(incident_key: str, ref: Any) -> str:
    """The key of one customer's group for one incident (the message keys start with it)."""
    return f"{incident_key}:{customer_digest(str(ref))}"


def _moved(group: _Group, pid: str, at: int, estimate: str | None,
           ended: str | None = None) -> None:
    """Package ``pid`` of ``group`` moved again at ``at`` with a new ``estimate`` (``ended``:
    its journey ended there, delivered or returned)."""
    group.waiting.discard(pid)
    group.moved_ts = max(group.moved_ts, at)
    if estimate:
        group.moved_estimates[pid] = estimate
    if ended:
        group.ended[pid] = ended


class MessageGrouper:
    """Turns package alerts into customer messages; see the module docstring.

    Parameters
    ----------
    hold_seconds
        How long (event time) an incident message waits for more packages of its customer.
    retention_seconds
        Groups and open episodes older than this are forgotten (a package that never moves
        again, e.g. lost and expired by the tracker's TTL).
    """

    def __init__(self, hold_seconds: int = 2 * 3600, retention_seconds: int = 30 * 86400) -> None:
        self.hold_seconds = hold_seconds
        self.retention_seconds = retention_seconds
        self._groups: dict[str, _Group] = {}
        # package id -> how its open episode was told: "stall", "suppress" or a group key
        self._episodes: dict[str, tuple[str, int]] = {}
        self.grouped = 0  # incident_delay alerts that joined an existing group
        # group key -> (messages about it so far, when the last closed): a package of the
        # same customer and incident folded after its group closed gets a new group, whose
        # message keys carry ":2", ":3" (the outbox would drop a repeated key unsent)
        # (and the packages those messages told: a package already told of the incident and
        # of its end is not told of it again, see told_of)
        self._closed: dict[str, tuple[int, int, frozenset[str]]] = {}
        self._opened = 0  # groups opened so far (their ``seq``)
        # What :meth:`advance` looks at, derived from the groups (not in snapshots):
        # (hold ends, seq, key) of groups not sent yet; (retention ends, seq, key) of sent
        # groups (an entry whose group has gone or is another by now is skipped); and the
        # sent groups whose packages all moved again: per incident while it is not known to
        # have resolved (one ``resolved_at`` call per incident and step, however many
        # customers wait on it), then ready, waiting for the resolve time to pass. A closed
        # or expired group leaves at once; one waiting again stays until its incident
        # resolves, then is dropped.
        self._held: list[tuple[int, int, str]] = []
        self._expiry: list[tuple[int, int, str]] = []
        self._armed: dict[str, dict[str, _Group]] = {}
        self._ready: dict[str, _Group] = {}
        self._next_sweep = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for derived in ("_held", "_expiry", "_armed", "_ready", "_next_sweep"):
            state.pop(derived, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("_closed", {})  # snapshots from before the follow-up groups
        self.__dict__.update(state)
        # the queues are rebuilt from the groups, whoever wrote the snapshot: the groups are
        # in opening order (a dict), so their order numbers can be given again; ``_closed``
        # is pruned from its front, so it must be in closing-time order; snapshots from
        # before it kept the packages told have none
        self._closed = {key: (n, at, told[0] if told else frozenset())
                        for key, (n, at, *told) in sorted(self._closed.items(),
                                                          key=lambda kv: kv[1][1])}
        self._held, self._expiry, self._armed, self._ready = [], [], {}, {}
        self._next_sweep = 0
        for seq, (key, group) in enumerate(self._groups.items()):
            group.seq = seq
            self._queue(key, group)
        self._opened = len(self._groups)

    @property
    def pending(self) -> int:
        """Incident groups not yet closed (gauge)."""
        return len(self._groups)

    def told(self, package_id: str) -> str | None:
        """How the package's open episode was told: ``"stall"``, ``"suppress"``, ``"fold"``,
        or None (no open episode known)."""
        told = self._episodes.get(package_id)
        if told is None:
            return None
        return told[0] if told[0] in ("stall", "suppress") else "fold"

    def closed(self, alert: dict[str, Any]) -> bool:
        """The customer of this ``incident_delay`` alert has had their message and all-clear
        about its incident already (within ``retention_seconds``)."""
        ref = alert.get("recipient_ref")
        return bool(ref) and _group_key(str(alert.get("incident_key")), ref) in self._closed

    def told_of(self, alert: dict[str, Any]) -> bool:
        """This ``incident_delay`` alert's package was in a message about its incident whose
        group has closed (all-clear sent, within ``retention_seconds``): its new silence is
        its own, not the incident's news again."""
        ref = alert.get("recipient_ref")
        closed = ref and self._closed.get(_group_key(str(alert.get("incident_key")), ref))
        return bool(closed) and str(alert.get("package_id")) in closed[2]  # type: ignore[index]

    def listed(self, alert: dict[str, Any]) -> bool:
        """This ``incident_delay`` alert's package is in its customer's group for its
        incident, open or closed: it was told of that incident (or is, in a message still
        held), so another alert of it for that incident would tell nothing new."""
        ref = alert.get("recipient_ref")
        if not ref:
            return False
        pid = alert.get("package_id")
        group = self._groups.get(_group_key(str(alert.get("incident_key")), ref))
        if group is not None and any(a.get("package_id") == pid for a in group.alerts):
            return True
        return self.told_of(alert)  # (in a closed group)

    def add(self, alert: dict[str, Any], decision: str = "keep") -> list[dict[str, Any]]:
        """One package alert and the folder's decision for it; returns messages due at once.

        ``decision`` is ``"keep"`` (send as it is), ``"fold"`` (an ``incident_delay`` alert
        to gather) or ``"suppress"`` (tell nobody).
        """
        pid = str(alert.get("package_id"))
        at = _ts(alert.get("alert_time")) or 0
        kind = alert.get("kind")
        if kind == "back_on_track":
            told = self._episodes.pop(pid, None)
            if told is None or told[0] == "stall":
                # returned to sender: no "good news" (the carrier's own notice tells that)
                return [] if alert.get("ended") == "returned" else [alert]
            group = self._groups.get(told[0])
            if group is not None:
                _moved(group, pid, at, alert.get("new_estimate"), alert.get("ended"))
                self._arm(told[0], group)
            return []  # suppressed, or said once for the group when all have moved
        if decision == "suppress":
            self._episodes[pid] = ("suppress", at)
            return []
        ref = alert.get("recipient_ref")
        if decision != "fold" or kind != "incident_delay" or not ref:
            self._episodes[pid] = ("stall", at)
            return [alert]
        incident = str(alert.get("incident_key"))
        key = _group_key(incident, ref)
        group = self._groups.get(key)
        if group is None:
            closed = self._closed.get(key)
            name = key if closed is None else f"{key}:{closed[0] + 1}"
            group = self._groups[key] = _Group(name, incident, str(ref), at, seq=self._opened)
            self._opened += 1
            self._queue(key, group)
        else:
            self.grouped += 1
        group.alerts.append(alert)
        if alert.get("moving"):  # told when it moved on: it is not waiting any more
            _moved(group, pid, at, alert.get("new_estimate"))
            self._arm(key, group)
        else:
            group.waiting.add(pid)
        self._episodes[pid] = (key, at)
        return []

    def withdraw(self, incident_key: str) -> int:
        """The incident turned out to be a feed outage: its messages not sent yet are dropped
        (their packages' episodes count as suppressed: the all-clear that closes them tells
        nobody). Returns how many packages were withdrawn. Messages already sent stay sent;
        their all-clear still follows."""
        withdrawn = 0
        for key, group in list(self._groups.items()):
            if group.incident_key != incident_key or group.sent:
                continue
            del self._groups[key]
            for alert in group.alerts:
                pid = str(alert.get("package_id"))
                told = self._episodes.get(pid)
                if told is not None and told[0] == key:
                    self._episodes[pid] = ("suppress", told[1])
                    withdrawn += 1
        return withdrawn

    def advance(
        self, now: int, resolved_at: Callable[[str], int | None] = lambda key: None
    ) -> list[dict[str, Any]]:
        """Messages due at event time ``now``: held incident messages whose hold has passed,
        and all-clear messages of groups whose incident resolved (``resolved_at(key)``, event
        time or None while open) and whose packages all moved again.

        Called at every step of the flow, so it only looks at what can be due: the held
        groups in order of their hold's end, the sent groups whose packages all moved again
        (waiting for their incident to resolve), and, once per ``_SWEEP_SECONDS`` of event
        time, every group (to note when its incident resolved before the folder forgets it).
        Messages come out in the order their groups were opened."""
        due: list[tuple[int, dict[str, Any]]] = []
        groups, retention = self._groups, self.retention_seconds
        held = self._held
        while held and held[0][0] <= now:
            _, seq, key = heapq.heappop(held)
            group = groups.get(key)
            if group is None or group.seq != seq or group.sent:
                continue  # withdrawn, or sent by flush
            group.sent = True
            due.append((seq, self._message(group, "incident_delay",
                                           group.first_ts + self.hold_seconds)))
            if not group.waiting:
                # all moved on again by now (told when they moved, or moved during the
                # hold): the message said so; no all-clear
                self._close(key, now)
            else:  # sent, waiting for its packages to move again (or expiring below)
                self._queue(key, group)
        armed, ready = self._armed, self._ready
        for incident, resolved in [(i, r) for i in armed if (r := resolved_at(i)) is not None]:
            for key, group in armed.pop(incident).items():
                # (a group waiting again for a package folded in since is armed again when
                # that one moves)
                if groups.get(key) is group and not group.waiting:
                    if group.resolved_ts is None:
                        group.resolved_ts = resolved
                    ready[key] = group
        for key, group in list(ready.items()):
            if groups.get(key) is not group or group.waiting:
                del ready[key]  # gone, or waits again for a package folded in since
                continue
            resolved = group.resolved_ts
            if resolved <= now:  # type: ignore[operator]  (known once ready)
                if any(group.ended.get(a["package_id"]) != "returned" for a in group.alerts):
                    # (returned to sender, every one of them: no good news to give)
                    due.append((group.seq, self._message(group, "back_on_track",
                                                         max(resolved, group.moved_ts))))
                self._close(key, now)
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_SECONDS
            for group in groups.values():
                if group.resolved_ts is None:
                    group.resolved_ts = resolved_at(group.incident_key)
        expiry = self._expiry
        while expiry and expiry[0][0] < now:
            _, seq, key = heapq.heappop(expiry)
            group = groups.get(key)
            if group is not None and group.seq == seq:
                del groups[key]
                self._disarm(key, group)
        cutoff = now - retention
        for ordered in (self._closed, self._episodes):  # insertion order is time order
            while ordered:
                key, value = next(iter(ordered.items()))
                if value[1] >= cutoff:
                    break
                del ordered[key]
        due.sort(key=itemgetter(0))
        return [message for _, message in due]

    def _close(self, key: str, now: int) -> None:
        group = self._groups.pop(key)
        self._disarm(key, group)
        closed, _, told = self._closed.pop(key, (0, 0, frozenset()))  # closed before this one
        told |= {str(a.get("package_id")) for a in group.alerts}
        self._closed[key] = (closed + 1, now, told)  # at the end: the dict stays in time order

    def _queue(self, key: str, group: _Group) -> None:
        """Put a group where :meth:`advance` will find it when something is due."""
        if not group.sent:
            heapq.heappush(self._held, (group.first_ts + self.hold_seconds, group.seq, key))
            return
        heapq.heappush(self._expiry, (group.first_ts + self.retention_seconds, group.seq, key))
        self._arm(key, group)

    def _arm(self, key: str, group: _Group) -> None:
        """A sent group whose packages all moved again: its all-clear waits for the
        incident to resolve (:meth:`advance` looks at these groups at every step)."""
        if not group.sent or group.waiting:
            return
        if group.resolved_ts is not None:
            self._ready[key] = group
        else:
            self._armed.setdefault(group.incident_key, {})[key] = group

    def _disarm(self, key: str, group: _Group) -> None:
        self._ready.pop(key, None)
        armed = self._armed.get(group.incident_key)
        if armed is not None and armed.get(key) is group:
            del armed[key]
            if not armed:
                del self._armed[group.incident_key]

    def flush(
        self, now: int, resolved_at: Callable[[str], int | None] = lambda key: None
    ) -> list[dict[str, Any]]:
        """End of input: send every held incident message now (nothing is left unsaid)."""
        out: list[dict[str, Any]] = []
        for key, group in list(self._groups.items()):
            if not group.sent:
                group.sent = True
                out.append(self._message(group, "incident_delay", max(now, group.first_ts)))
                if not group.waiting:
                    self._close(key, now)
                else:
                    self._queue(key, group)
        return out + self.advance(now, resolved_at)

    def _message(self, group: _Group, kind: str, at: int) -> dict[str, Any]:
        alerts = group.alerts
        if kind == "back_on_track":  # returned to sender: not in the good news
            alerts = [a for a in alerts if group.ended.get(a["package_id"]) != "returned"]
        first = alerts[0]
        latest = {str(a["package_id"]): a for a in alerts}  # (held again: its last alert)
        packages = sorted(latest)
        # each package's own promise and estimate (moving again: its new scan's), the
        # message's the latest package's: one package's promise with another's estimate
        # would tell a lateness that no package has
        dates: dict[str, list[Any]] = {}
        for pid, a in latest.items():
            # moved again (and not held again since): its new scan's estimate; an all-clear
            # gives only such new ones
            estimate = None if pid in group.waiting else group.moved_estimates.get(pid)
            if kind == "incident_delay" and not estimate:
                estimate = a.get("new_estimate")
            dates[pid] = [pid, a.get("promised_by"), estimate]
        worst = max(dates.values(), key=_lateness)
        message = {
            "alert_key": f"{group.key}:{kind}",
            "kind": kind,
            "package_id": packages[0],
            "packages": packages[:_LIST_LIMIT],
            "package_count": len(packages),
            "episode": 1,
            "alert_time": datetime.fromtimestamp(at, UTC).isoformat(),
            "facility_id": first.get("facility_id"),
            "facility_name": first.get("facility_name"),
            "departed_from": first.get("departed_from"),
            "departed_from_name": first.get("departed_from_name"),
            "incident_key": group.incident_key,
            "incident_kind": first.get("incident_kind"),
            "recipient_ref": group.recipient_ref,
            # where the packages are: more than one place, the e-mail names none of them
            "place_count": len({(a.get("facility_id"), a.get("departed_from"))
                                for a in latest.values()}),
        }
        if len(packages) > 1:
            message["dates"] = [dates[pid] for pid in packages[:_LIST_LIMIT]]
        if kind == "incident_delay":
            scans = [a["last_scan_time"] for a in alerts if a.get("last_scan_time")]
            message |= {
                "last_scan_time": min(scans, key=_ts) if scans else None,
                "promised_by": worst[1],
                "new_estimate": worst[2],
                "evidence": first.get("evidence"),
                # all moved on again by the time the message goes out (told when they moved
                # on, late, or moved during the hold): the message says so (how long they sat)
                "moving": not group.waiting,
            }
            if message["moving"]:  # when they moved on (the last of them), how long held
                moved_at = max([group.moved_ts] + [_ts(a["alert_time"]) or 0 for a in alerts
                                                   if a.get("moving")])
                message["moved_at"] = datetime.fromtimestamp(moved_at, UTC).isoformat()
                if len(alerts) == 1:
                    held_since = _ts(first.get("last_scan_time"))
                    message["silence_seconds"] = (
                        first.get("silence_seconds") if first.get("moving")
                        else None if held_since is None else moved_at - held_since)
            else:  # some held, some moving again: the message says how many moved
                moved = len(set(packages) - group.waiting)
                if moved:
                    message["moved_count"] = moved
        else:
            message["evidence"] = "The delay has cleared and your packages are moving again."
            message["promised_by"], message["new_estimate"] = worst[1], worst[2]
            if worst[2] is None and len(packages) == 1:  # (moved before an upgrade)
                message["new_estimate"] = group.moved_estimate
            ended = {group.ended.get(pid) for pid in packages}
            if ended == {"delivered"}:  # every one delivered: not "moving again"
                message["ended"] = "delivered"
        return message
