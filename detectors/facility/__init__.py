"""Facility statistics in event time, detectors over them, and what kind of incident it is.

Three layers, each usable alone (a notebook needs no flow):

:class:`FacilityStats`
    The per-event accumulator a tracker shard calls: ``arrival``, ``departure``, ``scan`` and
    ``lane_arrival``, or :meth:`FacilityStats.observe`, which applies the rules from a scan
    and the package's previous facility scan. Each call is O(1) with plain ints and strs (a
    set lookup, two dict lookups, a few list increments; no allocation but a window's
    counters once per facility and window). :meth:`FacilityStats.close` turns every event-time
    window that the watermark has passed into one :class:`FacilityWindow` per facility;
    :func:`merge` adds up the windows of several shards (sharded by package, every figure is a
    sum, and shards closed at the same watermarks add up to exactly one shard's figures).
Detectors over one facility's window series, River-style (``learn_one`` / ``score_one``)
    :class:`CohortRetention` (how the packages that arrived at each time of day usually drain
    away; scores the packages held beyond that), :class:`SeasonalBaseline` (a robust z-score
    against the same hour of the week, falling back to the same hour of the day; also a plain
    univariate River detector on any series), :class:`DwellDrift` (Page-Hinkley on a series,
    by default the departures' dwell) and :class:`WindowHST`
    (:class:`river.anomaly.HalfSpaceTrees` on a window's feature vector).
:class:`FacilityMonitor` and :func:`classify`
    Run one detector per facility, add the silence and feed evidence, name the kind of
    incident (slowdown, stop, feed outage, weather over a region, lane) and write the
    evidence sentence. Their :class:`Assessment` objects feed
    :class:`detectors.incidents.IncidentManager`.

Time is integer epoch seconds (UTC) throughout; nothing reads the wall clock. What was
measured on the simulator, and why the defaults are what they are: ``bench/RESULTS.md``,
"Facility detectors".

One module per part: :mod:`~detectors.facility.windows` (:class:`FacilityWindow`,
:func:`merge`), :mod:`~detectors.facility.stats` (:class:`FacilityStats`), the estimators
:mod:`~detectors.facility.retention`, :mod:`~detectors.facility.seasonal`,
:mod:`~detectors.facility.drift` and :mod:`~detectors.facility.hst`,
:mod:`~detectors.facility.classify` (:func:`classify`, :class:`Assessment`) and
:mod:`~detectors.facility.monitor` (:class:`FacilityMonitor`); import them from here.
Pickles (Bytewax snapshots) of these objects made before this package replaced the single
module ``detectors/facility.py`` do not load (the classes moved, and the state of
:class:`CohortRetention`, :class:`SeasonalBaseline` and the monitor's lanes changed form);
start such a flow afresh. New pickles load and continue identically.
"""

from __future__ import annotations

from detectors.facility.classify import KINDS, Assessment, classify
from detectors.facility.drift import DwellDrift
from detectors.facility.hst import WindowHST
from detectors.facility.monitor import DETECTORS, FacilityMonitor
from detectors.facility.retention import CohortRetention
from detectors.facility.seasonal import SeasonalBaseline
from detectors.facility.stats import FacilityStats
from detectors.facility.windows import (
    AGE_EDGES_HOURS,
    DWELL_EDGES_SECONDS,
    FacilityWindow,
    merge,
)

__all__ = [
    "AGE_EDGES_HOURS",
    "DETECTORS",
    "DWELL_EDGES_SECONDS",
    "KINDS",
    "Assessment",
    "CohortRetention",
    "DwellDrift",
    "FacilityMonitor",
    "FacilityStats",
    "FacilityWindow",
    "SeasonalBaseline",
    "WindowHST",
    "classify",
    "merge",
]
