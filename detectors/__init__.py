"""Online detectors for delaywatch: the scan-event model and parser, stall detection, ETAs.

Pure Python on msgspec and River: nothing here knows Bytewax, SMTP or the CLI, so everything
runs as well in a notebook as in the flow. ``detectors.evaluate`` (scoring alerts against the
simulator's ground truth) lives in this package too but is not imported here.
"""

from detectors.eta import DeliveryEstimator
from detectors.events import (
    CODES,
    REASONS,
    STATUSES,
    TERMINAL_CODES,
    Code,
    Invalid,
    ScanEvent,
    parse_batch,
    parse_line,
)
from detectors.stall import DEFAULT_PRIOR_HOURS, LEVELS, StallDetector

__all__ = [
    "CODES",
    "DEFAULT_PRIOR_HOURS",
    "LEVELS",
    "REASONS",
    "STATUSES",
    "TERMINAL_CODES",
    "Code",
    "DeliveryEstimator",
    "Invalid",
    "ScanEvent",
    "StallDetector",
    "parse_batch",
    "parse_line",
]
