"""Bytewax sources of raw scan-event lines.

Both sources emit one item per batch of lines read, ``(number of its first line, [lines])``:
Bytewax costs ~10 us per batch and ~0.1-0.2 us per item it moves, so neither one line at a time
nor one item per line. The lines are as read (line ending included, blank lines kept, so line
``first + i`` is ``lines[i]``); the parse step skips the blank ones. Both are resumable: their
snapshot is the position of the next line, so after a crash Bytewax resumes reading where the
last completed epoch ended.

``JsonLinesSource(..., follow=True)`` is the daemon's input: it keeps reading the file as the
feed appends to it (``tail -F``), hands a line on only once its newline is written, and
follows a rotation (the file renamed and a new one created, as logrotate does): it reads the
old file to its end, then the new one from its start. Its snapshot also names the file (device,
inode and a checksum of its first bytes), so a daemon restarted after a rotation finishes the
old file under its new name before the new one.
Delivery guarantee: at-least-once downstream of a resume (events after the snapshot are read
again); every later step tolerates repeats (duplicate scans are ignored, alert keys are
unique).
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

__all__ = ["JsonLinesSource", "SimulatorSource"]

Item = tuple[int, list[bytes]]  # (number of the first line, the lines, as read)
# (byte offset of the next line, lines read before it) and, following a feed, the file's
# device, inode and head checksum: a snapshot from before ``follow`` has the first two only
Position = tuple[int, ...]

log = logging.getLogger("delaywatch")


class _EventTime(msgspec.Struct):
    event_time: str = ""


_peek = msgspec.json.Decoder(_EventTime).decode


def _event_ts(line: bytes) -> float | None:
    try:
        return datetime.fromisoformat(_peek(line).event_time).timestamp()
    except (msgspec.DecodeError, ValueError):
        return None


def _head_crc(fd: int, offset: int) -> int:
    """CRC-32 of a file's first bytes, up to ``offset`` (at most 1 KiB): with its inode, which
    file a snapshot was reading."""
    return zlib.crc32(os.pread(fd, min(offset, 1024), 0))


class _FilePartition(StatefulSourcePartition[Item, Position]):
    def __init__(self, path: Path, batch_size: int, speed: float, resume: Position | None,
                 follow: bool = False, poll_seconds: float = 1.0) -> None:
        if follow and speed > 0:
            raise ValueError("a followed feed is live already: it cannot also be paced")
        self._path = path
        self._follow = follow
        self._poll = poll_seconds
        self._offset, self._line = resume[:2] if resume else (0, 0)
        self._f = self._open(tuple(resume[2:5]) if resume and len(resume) >= 5 else None)
        self._f.seek(self._offset)
        self._batch = batch_size
        self._speed = speed
        self._t0_event: float | None = None
        self._t0_wall = time.monotonic()
        self._pending: list[tuple[int, bytes, int]] = []
        self._awake: datetime | None = None
        self._idle_until: datetime | None = None
        self.rotations = self.truncations = 0
        self.last_read = time.time()  # wall time a line was last handed on (or the start)

    def _open(self, file_id: tuple[int, ...] | None):  # type: ignore[no-untyped-def]
        """The file to read: the path, or (following, resumed after a rotation) the file the
        snapshot was reading, found under its new name in the same directory. A file is the
        snapshot's when its device, inode and first bytes (up to the offset) are the same:
        a deleted file's inode can be reused by the next one."""
        f = open(self._path, "rb")  # noqa: SIM115 - closed in close() or on rotation
        if not self._follow:
            return f
        st = os.fstat(f.fileno())
        if file_id is None or (st.st_dev, st.st_ino) == file_id[:2]:
            if st.st_size < self._offset:  # truncated while we were down
                self._restart(f"{self._path.name} is shorter than where the last run stopped")
                return f
            if file_id is None or _head_crc(f.fileno(), self._offset) == file_id[2]:
                return f
        else:
            for entry in os.scandir(self._path.parent):  # rotated while we were down
                try:
                    found = entry.stat()
                except OSError:
                    continue
                if (found.st_dev, found.st_ino) != file_id[:2] or not entry.is_file():
                    continue
                old = open(entry.path, "rb")  # noqa: SIM115
                if _head_crc(old.fileno(), self._offset) == file_id[2]:
                    log.info("feed %s rotated while stopped: finishing %s first",
                             self._path.name, entry.name)
                    f.close()
                    return old
                old.close()
        self._restart(f"the file the last run was reading is no longer beside "
                      f"{self._path.name} (rotated away or deleted)")
        return f

    def _restart(self, why: str) -> None:
        log.warning("feed: %s; reading %s from its start (lines in between are not read)",
                    why, self._path.name)
        self._offset = self._line = 0

    def next_batch(self) -> Iterable[Item]:
        if self._pending:
            return self._paced([])
        lines = list(islice(self._f, self._batch))  # the file's own readline loop, in C
        if lines and self._follow and not lines[-1].endswith(b"\n"):
            # a line still being written: read it again once it is whole
            self._f.seek(self._offset + sum(map(len, lines)) - len(lines[-1]))
            lines.pop()
        if not lines:
            if self._follow:
                return self._idle()
            raise StopIteration
        return self._emit(lines)

    def _emit(self, lines: list[bytes]) -> list[Item]:
        first, start = self._line + 1, self._offset
        self._line += len(lines)
        self._offset += sum(map(len, lines))
        self._idle_until = None
        self.last_read = time.time()
        if self._speed > 0:  # (line number, line, offset where it starts)
            fresh = []
            for n, line in enumerate(lines, first):
                fresh.append((n, line, start))
                start += len(line)
            return self._paced(fresh)
        return [(first, lines)]

    def _idle(self) -> list[Item]:
        """Following, at the end of what is written: switch files on a rotation, start over
        on a truncation, else look again in ``poll_seconds``."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:  # between a rotation's rename and the new file
            st = None
        here = os.fstat(self._f.fileno())
        if st is not None and (st.st_dev, st.st_ino) != (here.st_dev, here.st_ino):
            # rotated: what the writer added before it moved on, then the new file
            try:
                new = open(self._path, "rb")  # noqa: SIM115
            except FileNotFoundError:  # renamed again meanwhile: look next time
                return []
            rest = self._f.read().splitlines(keepends=True)
            self._f.close()
            self._f = new
            self.rotations += 1
            log.info("feed %s rotated: reading the new file", self._path.name)
            out = self._emit(rest) if rest else []
            self._offset = self._line = 0
            return out
        if here.st_size < self._offset:  # truncated in place (logrotate's copytruncate)
            self.truncations += 1
            self._restart(f"{self._path.name} was truncated")
            self._f.seek(0)
            return []
        self._idle_until = datetime.now(UTC) + timedelta(seconds=self._poll)
        return []

    def bytes_behind(self) -> int:
        """Bytes written to the feed and not read yet (a line being written counts)."""
        try:
            here = os.fstat(self._f.fileno())
            st = os.stat(self._path)
        except (OSError, ValueError):  # closed, or between a rotation's rename and the new file
            return 0
        behind = here.st_size - self._offset
        if (st.st_dev, st.st_ino) != (here.st_dev, here.st_ino):
            behind += st.st_size  # rotated: the new file is still to read
        return max(behind, 0)

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
        return self._awake if self._pending else self._idle_until

    def snapshot(self) -> Position:
        # lines still pending (paced mode) were read but not emitted: resume at the first one
        if self._pending:
            n, _, start = self._pending[0]
            return start, n - 1
        if self._follow:  # and which file: device, inode, a checksum of its head
            fd = self._f.fileno()
            st = os.fstat(fd)
            return self._offset, self._line, st.st_dev, st.st_ino, _head_crc(fd, self._offset)
        return self._offset, self._line

    def close(self) -> None:
        self._f.close()


class JsonLinesSource(FixedPartitionedSource[Item, Position]):
    """Replays a JSON-lines file of scan events, in file (ingestion) order.

    ``speed=0`` reads as fast as possible (backtests, tests); ``speed=60`` replays one hour of
    event time per minute. ``follow=True`` never ends: it reads what the feed appends,
    looking again every ``poll_seconds`` when there is nothing new, and follows rotations (see
    the module). Resumable from a byte offset. At-least-once.
    """

    def __init__(self, path: Path | str, *, batch_size: int = 2000, speed: float = 0.0,
                 follow: bool = False, poll_seconds: float = 1.0) -> None:
        if follow and speed > 0:
            raise ValueError("a followed feed is live already: it cannot also be paced")
        self.path = Path(path)
        self.batch_size = batch_size
        self.speed = speed
        self.follow = follow
        self.poll_seconds = poll_seconds
        self.partitions: list[_FilePartition] = []  # built in this process (for metrics)

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def build_part(self, step_id: str, for_part: str,
                   resume_state: Position | None) -> _FilePartition:
        part = _FilePartition(self.path, self.batch_size, self.speed, resume_state,
                              self.follow, self.poll_seconds)
        self.partitions.append(part)
        return part


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
