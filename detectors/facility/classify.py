"""What kind of incident a facility is in, and what the monitor says about it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "Assessment", "classify"]

#: Incident kinds (``docs/schemas.md``); ``feed_outage`` is a data problem, not a delay.
KINDS = ("facility_slowdown", "facility_stop", "weather", "lane_delay", "feed_outage")


def classify(
    *,
    delay: float,
    silence: float,
    feed: float,
    stop_silence: float = 0.0,
    stopped_hours: float = 0.0,
    burst: int = 0,
    backlog: int = 0,
    min_silence_hours: float = 3.0,
    min_burst: int = 6,
    min_backlog: int = 10,
) -> tuple[str | None, float]:
    """The kind of incident a facility is in, from its scores in one window, and the score.

    Scores are normalised: 1.0 or more is anomalous. ``delay``: packages held that should
    have left by now; ``silence``: arrivals missing that usually come at this hour; ``feed``:
    scans arriving hours late, or packages reaching the next facility without a departure
    scan from this one. ``stopped_hours`` is the length of a silence (no scan at all) that
    ended within the last hour, ``stop_silence`` the highest silence score during it and
    ``burst`` the arrivals scanned since it ended.

    * ``feed >= 1``: ``feed_outage``, whatever else is seen: the data are missing, so the
      other figures cannot be trusted, and customers must not be told.
    * A silence of ``min_silence_hours`` or more that was anomalous (``stop_silence >= 1``)
      and has ended with a burst of at least ``min_burst`` fresh arrival scans (the inflow
      held during the stop, scanned at once), no feed evidence and ``min_backlog`` packages
      or more held: ``facility_stop``. A stop and a feed outage look the same while they last
      (no scans at all); they part only when the facility speaks again: a stop resumes with
      fresh scans, an outage with a burst of old ones (or, earlier, with packages surfacing
      downstream without a departure scan). So a stop is confirmed at its end, never during
      it.
    * ``delay >= 1`` while arrivals come in as usual (``silence < 1``): packages pile up and
      do not leave: ``facility_slowdown``. (Missing departures *and* missing arrivals are a
      stop or a feed outage, still undecided: no kind yet.)
    * Otherwise None, with the highest score that is still evidence of trouble, so that the
      incident lifecycle sees it build up.

    Weather (several facilities of a region at once) and lanes are decided by
    :class:`FacilityMonitor`, which sees more than one facility.

    >>> classify(delay=1.3, silence=1.4, feed=0.0)
    (None, 1.4)
    >>> classify(delay=0.2, silence=0.0, feed=0.0, stop_silence=1.4, stopped_hours=4.0,
    ...          burst=9, backlog=30)
    ('facility_stop', 1.4)
    >>> classify(delay=0.2, silence=0.0, feed=2.0, stop_silence=1.4, stopped_hours=4.0,
    ...          burst=9, backlog=30)
    ('feed_outage', 2.0)
    >>> classify(delay=1.7, silence=0.0, feed=0.0)
    ('facility_slowdown', 1.7)
    """
    if feed >= 1.0:
        return "feed_outage", feed
    if (
        stopped_hours >= min_silence_hours
        and stop_silence >= 1.0
        and burst >= min_burst
        and backlog >= min_backlog
    ):
        return "facility_stop", stop_silence
    if delay >= 1.0 and silence < 1.0:
        return "facility_slowdown", delay
    return None, max(silence, delay, stop_silence if stopped_hours else 0.0)


@dataclass(frozen=True, slots=True)
class Assessment:
    """What :class:`FacilityMonitor` says about one subject (facility, lane or region) at the
    end of one window: the input of :meth:`detectors.incidents.IncidentManager.update`."""

    facility: str
    window_end: int
    score: float
    kind: str | None
    evidence: str
    affected: int
    lane_to: str | None = None
    facilities: tuple[str, ...] = ()


_SETTERS = tuple(getattr(Assessment, f.name).__set__ for f in dataclasses.fields(Assessment))


def _assessment(
    facility: str,
    window_end: int,
    score: float,
    kind: str | None,
    evidence: str,
    affected: int,
    lane_to: str | None = None,
    facilities: tuple[str, ...] = (),
    _new: Any = object.__new__,
    _set: tuple[Any, ...] = _SETTERS,
) -> Assessment:
    """``Assessment(facility, ...)`` without the frozen dataclass's field-by-field
    ``object.__setattr__`` (a third less time; the monitor makes one per facility and window,
    and one per lane): the same object, its slots set through their descriptors."""
    a = _new(Assessment)
    _set[0](a, facility)
    _set[1](a, window_end)
    _set[2](a, score)
    _set[3](a, kind)
    _set[4](a, evidence)
    _set[5](a, affected)
    _set[6](a, lane_to)
    _set[7](a, facilities)
    return a
