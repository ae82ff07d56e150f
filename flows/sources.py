"""Bytewax sources of raw scan-event lines.

Both sources emit one item per batch of lines read, ``(number of its first line, [lines])``:
Bytewax costs ~10 us per batch and ~0.1-0.2 us per item it moves, so neither one line at a time
nor one item per line. The lines are as read (line ending included, blank lines kept, so line
``first + i`` is ``lines[i]``); the parse step skips the blank ones. Both are resumable: their
snapshot is the position of the next line, so after a crash Bytewax resumes reading where the
last completed epoch ended.
Delivery guarantee: at-least-once downstream of a resume (events after the snapshot are read
again); every later step tolerates repeats (duplicate scans are ignored, alert keys are
unique).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

__all__ = ["JsonLinesSource", "SimulatorSource"]

Item = tuple[int, list[bytes]]  # (number of the first line, the lines, as read)


class _EventTime(msgspec.Struct):
    event_time: str = ""


_peek = msgspec.json.Decoder(_EventTime).decode


def _event_ts(line: bytes) -> float | None:
    try:
        return datetime.fromisoformat(_peek(line).event_time).timestamp()
    except (msgspec.DecodeError, ValueError):
        return None


class _FilePartition(StatefulSourcePartition[Item, tuple[int, int]]):
    def __init__(self, path: Path, batch_size: int, speed: float,
                 resume: tuple[int, int] | None) -> None:
        self._f = open(path, "rb")  # noqa: SIM115 - closed in close()
        self._offset, self._line = resume or (0, 0)
        self._f.seek(self._offset)
        self._batch = batch_size
        self._speed = speed
        self._t0_event: float | None = None
        self._t0_wall = time.monotonic()
        self._pending: list[tuple[int, bytes, int]] = []
        self._awake: datetime | None = None

    def next_batch(self) -> Iterable[Item]:
        if self._pending:
            return self._paced([])
        lines = list(islice(self._f, self._batch))  # the file's own readline loop, in C
        if not lines:
            raise StopIteration
        first, start = self._line + 1, self._offset
        self._line += len(lines)
        self._offset += sum(map(len, lines))
        if self._speed > 0:  # (line number, line, offset where it starts)
            fresh = []
            for n, line in enumerate(lines, first):
                fresh.append((n, line, start))
                start += len(line)
            return self._paced(fresh)
        return [(first, lines)]

    def _paced(self, fresh: list[tuple[int, bytes, int]]) -> list[Item]:
        """Release lines once wall time x speed has caught up with their event time (a line
        without one, blank or bad, at once)."""
        self._pending.extend(fresh)
        now = time.monotonic()
        ready: list[bytes] = []
        first = self._pending[0][0] if self._pending else 0
        while self._pending:
            ts = _event_ts(self._pending[0][1])
            if ts is not None:
                if self._t0_event is None:
                    self._t0_event, self._t0_wall = ts, now
                due = self._t0_wall + (ts - self._t0_event) / self._speed
                if due > now:
                    self._awake = datetime.now(UTC) + timedelta(seconds=min(due - now, 1.0))
                    break
            ready.append(self._pending.pop(0)[1])
        else:
            self._awake = None
        return [(first, ready)] if ready else []

    def next_awake(self) -> datetime | None:
        return self._awake if self._pending else None

    def snapshot(self) -> tuple[int, int]:
        # lines still pending (paced mode) were read but not emitted: resume at the first one
        if self._pending:
            n, _, start = self._pending[0]
            return start, n - 1
        return self._offset, self._line

    def close(self) -> None:
        self._f.close()


class JsonLinesSource(FixedPartitionedSource[Item, tuple[int, int]]):
    """Replays a JSON-lines file of scan events, in file (ingestion) order.

    ``speed=0`` reads as fast as possible (backtests, tests); ``speed=60`` replays one hour of
    event time per minute. Resumable from a byte offset. At-least-once.
    """

    def __init__(self, path: Path | str, *, batch_size: int = 2000, speed: float = 0.0) -> None:
        self.path = Path(path)
        self.batch_size = batch_size
        self.speed = speed

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: tuple[int, int] | None) -> _FilePartition:
        return _FilePartition(self.path, self.batch_size, self.speed, resume_state)


class _SimPartition(StatefulSourcePartition[Item, int]):
    def __init__(self, lines: list[bytes], batch_size: int, resume: int | None) -> None:
        self._lines = lines
        self._i = resume or 0
        self._batch = batch_size

    def next_batch(self) -> list[Item]:
        if self._i >= len(self._lines):
            raise StopIteration
        j = min(self._i + self._batch, len(self._lines))
        out = [(self._i + 1, self._lines[self._i:j])]
        self._i = j
        return out

    def snapshot(self) -> int:
        return self._i


class SimulatorSource(FixedPartitionedSource[Item, int]):
    """Runs the seeded simulator in-process and emits its events (no file in between).

    Deterministic for (scenario, seed, packages), so resuming regenerates the same lines and
    continues after the snapshot's line. At-least-once.
    """

    def __init__(self, scenario: str, seed: int, *, packages: int | None = None,
                 batch_size: int = 2000) -> None:
        self.scenario, self.seed, self.packages = scenario, seed, packages
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return [f"sim-{self.scenario}-{self.seed}"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SimPartition:
        from fixtures.scenarios import get_scenario
        from fixtures.simulate import event_lines, simulate

        sim = simulate(get_scenario(self.scenario, self.packages), self.seed)
        lines = b"".join(bytes(c) for c in event_lines(sim)).splitlines()
        return _SimPartition(lines, self.batch_size, resume_state)
