"""When a message may go out: quiet hours in the recipient's zone, and retry back-off.

>>> from datetime import datetime
>>> from zoneinfo import ZoneInfo
>>> quiet = QuietHours()  # 21:00-08:00 local
>>> late = datetime(2025, 3, 4, 4, 30, tzinfo=ZoneInfo("UTC"))  # 22:30 in Chicago
>>> quiet.next_allowed(late, "America/Chicago").astimezone(ZoneInfo("America/Chicago"))
datetime.datetime(2025, 3, 4, 8, 0, tzinfo=zoneinfo.ZoneInfo(key='America/Chicago'))
>>> round(backoff_delay("PKG-1:stall:1", 1, base=30.0, cap=3600.0), 2)
29.28
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

__all__ = ["QuietHours", "backoff_delay"]


@dataclass(frozen=True, slots=True)
class QuietHours:
    """No messages between ``start`` and ``end`` local time of the recipient.

    The window may wrap midnight (the default, 21:00-08:00). ``enabled=False`` or
    ``start == end`` switches quiet hours off.
    """

    start: time = time(21, 0)
    end: time = time(8, 0)
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("quiet hours are local wall-clock times; give naive times")

    def contains(self, when: datetime, tz: str | tzinfo) -> bool:
        """True if ``when`` (aware) falls in quiet hours in zone ``tz``."""
        return self.next_allowed(when, tz) != when

    def next_allowed(self, when: datetime, tz: str | tzinfo) -> datetime:
        """``when`` itself if outside quiet hours, else the end of this quiet period.

        The result is in ``when``'s time zone and never earlier than ``when``.
        """
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError("quiet hours need a timezone-aware datetime")
        if not self.enabled or self.start == self.end:
            return when
        zone = ZoneInfo(tz) if isinstance(tz, str) else tz
        local = when.astimezone(zone)
        t = local.time().replace(tzinfo=None)
        day = local.date()
        if self.start < self.end:  # same-day window, e.g. 13:00-15:00
            if not self.start <= t < self.end:
                return when
        elif t >= self.start:  # wraps midnight: evening part, ends tomorrow
            day += timedelta(days=1)
        elif t >= self.end:  # daytime
            return when
        end = datetime.combine(day, self.end, tzinfo=zone).astimezone(when.tzinfo)
        return max(end, when)


def backoff_delay(key: str, attempt: int, *, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = after the first failure).

    Exponential (``base * 2**(attempt-1)``, at most ``cap``) with "equal jitter": a factor in
    [0.5, 1) derived from the key and attempt, so it spreads retries yet is reproducible.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    digest = hashlib.sha256(f"{key}#{attempt}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2.0**64
    return ceiling * (0.5 + 0.5 * fraction)
