"""Bytewax sources of raw scan-event lines.

Both sources emit one item per batch of lines read, ``(number of its first line, [lines])``:
Bytewax costs ~10 us per batch and ~0.1-0.2 us per item it moves, so neither one line at a time
nor one item per line. The lines are as read (line ending included, blank lines kept, so line
``first + i`` is ``lines[i]``); the parse step skips the blank ones. Both are resumable: their
snapshot is the position of the next line, so after a crash Bytewax resumes reading where the
last completed epoch ended.

``JsonLinesSource(..., follow=True)`` is the daemon's input (``_FeedPartition``): it keeps
reading the file as the feed appends to it (``tail -F``), hands a line on only once its
newline is written, and follows logrotate's rotations and truncations. Its snapshot also
names the file (inode and a checksum of the first bytes read), so a daemon restarted after
a rotation finishes the old file, under its new name, before the newer ones.
Delivery guarantee: at-least-once downstream of a resume (events after the snapshot are read
again); every later step tolerates repeats (duplicate scans are ignored, alert keys are
unique).
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

__all__ = ["JsonLinesSource", "SimulatorSource", "interrupt"]

# an interrupt (Ctrl-C, SIGTERM) caught in the main thread while the flow runs in others
# (flows.cluster): the source partitions raise it at their next batch, which ends the run
# there as it would have ended in the main thread (run_main)
_INTERRUPT: list[BaseException] = []


def interrupt(exc: BaseException) -> None:
    """Make this process's source partitions raise ``exc`` at their next batch."""
    _INTERRUPT[:] = [exc]


def interrupt_clear() -> None:
    _INTERRUPT.clear()


def _interrupted() -> None:
    if _INTERRUPT:
        raise _INTERRUPT.pop()

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


_PACE_GAP = 86400.0  # event seconds: a line further ahead of the paced ones is not waited for


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
        self._newest: float | None = None  # the newest event time released by its pace
        self._pending: list[tuple[int, bytes, int]] = []
        self._awake: datetime | None = None

    def next_batch(self) -> Iterable[Item]:
        if _INTERRUPT:
            _interrupted()
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
        without one, blank or bad, at once; so is one more than ``_PACE_GAP`` after the
        newest event time released, a bad time the parser will refuse, e.g. a year 2124,
        which would hold every line behind it for years)."""
        self._pending.extend(fresh)
        now = time.monotonic()
        ready: list[bytes] = []
        first = self._pending[0][0] if self._pending else 0
        while self._pending:
            ts = _event_ts(self._pending[0][1])
            if ts is not None and (self._newest is None or ts - self._newest <= _PACE_GAP):
                if self._t0_event is None:
                    self._t0_event, self._t0_wall = ts, now
                due = self._t0_wall + (ts - self._t0_event) / self._speed
                if due > now:
                    self._awake = datetime.now(UTC) + timedelta(seconds=min(due - now, 1.0))
                    break
                self._newest = ts if self._newest is None else max(self._newest, ts)
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


# what logrotate appends to a rotated file's name: ".1", "-20261124", ".2026-11-24" (not
# ".gz", ".bak", ".tmp")
_ROTATED = re.compile(r"[.-][0-9][0-9._-]*")


_HEAD = 1024  # bytes at a file's start that tell it from another (with its inode)


def _lines_from(f: Any, offset: int) -> list[bytes]:
    """A file's lines from ``offset`` to its end, the last piece as it is (split at b"\n"
    only, as readline does)."""
    f.seek(offset)
    return io.BytesIO(f.read()).readlines()


def _head_crc(fd: int, offset: int) -> int:
    """CRC-32 of a file's first bytes, up to ``offset`` (at most 1 KiB): with its inode, which
    file a snapshot was reading (a deleted file's inode is often given to the next one)."""
    return zlib.crc32(os.pread(fd, min(offset, _HEAD), 0))


class _FeedPartition(StatefulSourcePartition[Item, Position]):
    """A feed followed as it grows (``JsonLinesSource(follow=True)``).

    Lines are handed on whole: a piece without its newline waits. When the feed's path names
    another file (or none), the file being read was rotated: it is read on until it has not
    changed for ``grace_seconds`` (a writer may finish its line or take a moment to move to
    the new file), then its last piece goes on as it is and reading goes on with the next
    file: a rotated file newer than this one not read yet (a feed rotated twice while the
    flow was behind or stopped: logrotate's ``.1``, ``.2`` or dated names, which begin with
    the feed's name; compressed ones are not read), else the path, once it exists. A file
    that shrank or whose first bytes changed was truncated in place (logrotate's
    ``copytruncate``): what was not read yet is read from the copy beside it (a rotated
    file that begins with the bytes read and reaches past the offset), then the file again
    from its start. The snapshot is (offset, line, device, inode, head checksum); a resume
    finds its file by inode and head checksum (the device can change at a remount), else
    by the checksum alone among the rotated files: the copy of a file truncated while the
    flow was stopped.
    """

    def __init__(self, path: Path, batch_size: int, resume: Position | None,
                 poll_seconds: float, grace_seconds: float, *, until_end: bool = False) -> None:
        self._path = path
        self._until_end = until_end  # a replay resuming a followed feed: its end ends it
        self._ended = False
        self._batch = batch_size
        self._poll = poll_seconds
        self._grace = grace_seconds
        self._f: Any = None  # None: waiting for the feed to exist
        self._offset = self._line = 0
        self._waiting_since_size = -1  # file size when a piece without newline was left
        self._head = b""  # the current file's first bytes as read (up to 1 KiB)
        # the last files finished, inode -> first bytes (an inode is reused by later files)
        self._done: dict[int, bytes] = {}
        self._seen: tuple[int, int] = (-1, -1)  # a rotated file's (size, mtime) last looked at
        self._seen_at = 0.0  # ... since when (monotonic: a clock step or a future mtime)
        self._idle_until: datetime | None = None
        self._told_missing = False
        self._rotating = False  # a rotated file finished, the new one not there yet
        self.rotations = self.truncations = 0
        self.last_read = time.time()  # wall time a line was last handed on (or the start)
        if resume:
            self._resume(resume)
        else:
            self._open(self._path)
        if self._f is not None:
            log.info("feed %s: reading %s from line %d (byte %d)", self._path.name,
                     os.path.basename(self._f.name), self._line + 1, self._offset)

    # -- opening ---------------------------------------------------------------------------
    def _open(self, path: Path | str, offset: int = 0, line: int = 0, *,
              warn: bool = True) -> bool:
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed in close() or when finished
        except FileNotFoundError:
            if warn and not self._told_missing and not self._rotating:
                log.warning("feed %s does not exist (yet): waiting for it", self._path.name)
                self._told_missing = True
            return False
        if self._rotating and str(path) == str(self._path):
            log.info("feed %s: reading the new file", self._path.name)
        elif self._told_missing:
            log.info("feed %s is there: reading it", self._path.name)
        self._told_missing = self._rotating = False
        self._f, self._offset, self._line = f, offset, line
        f.seek(offset)
        self._waiting_since_size = -1
        # (resumed: the file was recognised by its head, which is as read)
        self._head = os.pread(f.fileno(), min(offset, _HEAD), 0)
        return True

    def _resume(self, resume: Position) -> None:
        offset, line = resume[0], resume[1]
        if len(resume) < 5:  # a snapshot from before follow: it was the path's file
            if self._open(self._path, offset, line) and not self._line_starts_at(offset):
                self._restart(f"{self._path.name} does not match where the last run stopped")
            return
        ino, crc = resume[3], resume[4]
        for _ in range(3):  # (again if a rotation renames a file while we look)
            # its own inode first; else a copy (copytruncate while stopped: the feed kept
            # the inode, emptied, and what was read is the start of a new file beside it)
            for entry, st in sorted(self._siblings(with_path=True),
                                    key=lambda es: es[1].st_ino != ino):
                if st.st_size < offset or st.st_ino != ino and entry.name == self._path.name:
                    continue
                try:
                    with open(entry.path, "rb") as fh:
                        if _head_crc(fh.fileno(), offset) != crc:
                            continue
                except FileNotFoundError:
                    continue
                if self._open(entry.path, offset, line, warn=False):
                    if st.st_ino != ino:
                        log.info("feed %s was copied and truncated while stopped: finishing "
                                 "the copy %s first", self._path.name, entry.name)
                    elif entry.name != self._path.name:
                        log.info("feed %s rotated while stopped: finishing %s first",
                                 self._path.name, entry.name)
                    return
        if self._open(self._path):
            self._restart(f"the file the last run was reading is no longer beside "
                          f"{self._path.name} (rotated away, deleted or truncated)")

    def _line_starts_at(self, offset: int) -> bool:
        if offset == 0:
            return True
        return os.pread(self._f.fileno(), 1, offset - 1) == b"\n"

    def _restart(self, why: str | None = None) -> None:
        """Read the file from its start (``why``: and say that lines were skipped)."""
        if why is not None:
            log.warning("feed: %s; reading %s from its start (lines in between are not read)",
                        why, self._path.name)
        self._f.seek(0)
        self._offset = self._line = 0
        self._waiting_since_size, self._head = -1, b""

    def _copied_rest(self, ino: int) -> list[bytes] | None:
        """The lines not read yet of a file truncated in place, from logrotate's copy of it
        beside it (another file that begins with the bytes read and reaches past the
        offset; compressed copies are not read), its last piece as it is; None if there is
        no such copy."""
        head, offset = self._head, self._offset
        if not head:  # nothing read: nothing to finish
            return []
        for entry, st in sorted(self._siblings(), key=lambda es: -es[1].st_mtime_ns):
            if st.st_ino == ino or st.st_size < offset:
                continue
            try:
                with open(entry.path, "rb") as fh:
                    if os.pread(fh.fileno(), len(head), 0) != head:
                        continue
                    rest = _lines_from(fh, offset)
            except FileNotFoundError:
                continue
            log.info("feed %s was copied and truncated: its last %d lines are read from %s, "
                     "then it again from its start", self._path.name, len(rest), entry.name)
            return rest
        return None

    def _siblings(self, *, with_path: bool = False) -> list[tuple[os.DirEntry, os.stat_result]]:  # type: ignore[type-arg]
        """The feed's rotated files beside it, with their status: the feed's name, then
        ``.`` or ``-`` and a number or a date (logrotate's ``.1``, ``-20261124``), not
        compressed."""
        name = self._path.name
        out = []
        for entry in os.scandir(self._path.parent):
            if entry.name == name:
                if not with_path:
                    continue
            elif not entry.name.startswith(name) or not _ROTATED.fullmatch(
                    entry.name[len(name):]):
                continue
            if not entry.is_file():
                continue
            try:
                out.append((entry, entry.stat()))
            except OSError:  # gone meanwhile
                continue
        return out

    # -- reading ---------------------------------------------------------------------------
    def next_batch(self) -> Iterable[Item]:
        if _INTERRUPT:
            _interrupted()
        if self._ended:
            raise StopIteration
        f = self._f
        if f is None:
            if not self._open(self._path):
                if self._until_end:
                    raise StopIteration
                return self._wait()
            f = self._f
        fd = f.fileno()
        here = os.fstat(fd)
        size = here.st_size
        if self._truncated(fd, size):  # (a pread of 1 KiB a batch)
            self.truncations += 1
            rest = self._copied_rest(here.st_ino)
            if rest is None:
                self._restart(f"{self._path.name} was truncated")
            else:  # its last lines first (their numbers go on), then the file from line 1
                out = self._emit(rest) if rest else []
                self._restart()
                if out:
                    return out
        elif size == self._waiting_since_size:
            return self._idle()  # only the piece without its newline, as before: no re-read
        lines = list(islice(f, self._batch))  # the file's own readline loop, in C
        if lines and not lines[-1].endswith(b"\n"):  # a line still being written
            piece = lines.pop()
            end = self._offset + sum(map(len, lines))
            f.seek(end)
            self._waiting_since_size = end + len(piece)
        else:
            self._waiting_since_size = -1
        if not lines:
            return self._idle()
        return self._emit(lines)

    def _emit(self, lines: list[bytes]) -> list[Item]:
        if len(self._head) < _HEAD:  # (the first batch of a file)
            for line in lines:
                self._head += line[:_HEAD - len(self._head)]
                if len(self._head) == _HEAD:
                    break
        first = self._line + 1
        self._line += len(lines)
        self._offset += sum(map(len, lines))
        self._idle_until = None
        self.last_read = time.time()
        return [(first, lines)]

    def _wait(self) -> list[Item]:
        self._idle_until = datetime.now(UTC) + timedelta(seconds=self._poll)
        return []

    def _idle(self) -> list[Item]:
        """At the end of what is written: on to the next file after a rotation, or wait."""
        here = os.fstat(self._f.fileno())
        try:
            st = os.stat(self._path)
        except FileNotFoundError:  # renamed, the new file not there yet (or deleted)
            st = None
        current = st is not None and st.st_ino == here.st_ino and st.st_dev == here.st_dev
        if self._until_end:  # a rotated file: on to the next; the feed's end: the input's
            return self._finish(here, last=current)
        if current or here.st_nlink > 0 and not self._quiet(here):
            return self._wait()  # (a rotated file is read on while its writer may add to it)
        return self._finish(here)

    def _quiet(self, here: os.stat_result) -> bool:
        """A rotated file unchanged for ``grace_seconds``: by its modification time, or, if
        that is in the future (another host's clock, ours stepped back), since we saw it."""
        now = time.monotonic()
        seen = (here.st_size, here.st_mtime_ns)
        if seen != self._seen:
            self._seen, self._seen_at = seen, now
        return time.time() - here.st_mtime >= self._grace or now - self._seen_at >= self._grace

    def _truncated(self, fd: int, size: int) -> bool:
        """Shorter than what was read, or its first bytes are not those read."""
        head = self._head
        return size < self._offset or bool(head) and os.pread(fd, len(head), 0) != head

    def _finish(self, here: os.stat_result, *, last: bool = False) -> list[Item]:
        """The file read so far is done: its last piece (the writer died mid-line) goes on
        as it is, and reading goes on with the next file (``last``: the input ends)."""
        f = self._f
        rest = _lines_from(f, self._offset)
        out = self._emit(rest) if rest else []
        if last:
            self._ended = True
            return out
        f.close()
        self._f = None
        self._done[here.st_ino] = self._head
        while len(self._done) > 16:
            del self._done[next(iter(self._done))]
        self.rotations += 1
        self._rotating = True
        name = next((e.name for e, st in self._siblings() if st.st_ino == here.st_ino),
                    os.path.basename(f.name))  # (its name now)
        for _ in range(3):  # (again if a rotation renames the file chosen while we open it)
            following = self._following(here.st_mtime_ns)
            if not following:
                break
            if self._open(following[0][2], warn=False):  # rotated again meanwhile: it first
                log.info("feed %s rotated: %s finished, now %s", self._path.name, name,
                         following[0][1])
                return out
        log.info("feed %s rotated: %s finished", self._path.name, name)
        if not self._open(self._path, warn=False):  # (created after the rename)
            self._wait()
        return out

    def _following(self, since_ns: int) -> list[tuple[int, str, str]]:
        """The rotated files not read yet, modified since ``since_ns``, oldest first, as
        (mtime, name, path)."""
        out = []
        for entry, st in self._siblings():
            if st.st_mtime_ns < since_ns:
                continue
            head = self._done.get(st.st_ino)
            if head is not None:
                try:
                    with open(entry.path, "rb") as fh:
                        if os.pread(fh.fileno(), len(head), 0) == head:
                            continue  # finished in this run
                except FileNotFoundError:
                    continue
            out.append((st.st_mtime_ns, entry.name, entry.path))
        return sorted(out)

    def next_awake(self) -> datetime | None:
        return self._idle_until

    def snapshot(self) -> Position:
        if self._f is None:  # waiting for the feed: start it at its beginning
            return 0, 0
        st = os.fstat(self._f.fileno())  # (the checksum of what was read, not of the file)
        head = zlib.crc32(self._head[:min(self._offset, _HEAD)])
        return self._offset, self._line, st.st_dev, st.st_ino, head

    def modified(self) -> float | None:
        """The feed file's modification time (its writer's last write), None if none."""
        try:
            return os.stat(self._path).st_mtime
        except OSError:
            return None

    def bytes_behind(self) -> int:
        """Bytes written to the feed and not read yet (a line being written counts)."""
        f, offset = self._f, self._offset  # (a scrape runs in another thread)
        behind = 0
        here = None
        try:
            if f is not None:
                here = os.fstat(f.fileno())
                behind = max(here.st_size - offset, 0)
                if not self._until_end:  # rotated files still to read
                    behind += sum(st.st_size for _, st in self._siblings()
                                  if st.st_mtime_ns >= here.st_mtime_ns
                                  and st.st_ino != here.st_ino)
            st = os.stat(self._path)
        except (OSError, ValueError):  # closed meanwhile, or no file at the path
            return behind
        if here is None or (st.st_dev, st.st_ino) != (here.st_dev, here.st_ino):
            behind += st.st_size  # the new file is still to read
        return behind

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class JsonLinesSource(FixedPartitionedSource[Item, Position]):
    """Replays a JSON-lines file of scan events, in file (ingestion) order.

    ``speed=0`` reads as fast as possible (backtests, tests); ``speed=60`` replays one hour of
    event time per minute. ``follow=True`` never ends: it reads what the feed appends,
    looking again every ``poll_seconds`` when there is nothing new, and follows rotations
    (a rotated file is read on until it has been unchanged for ``grace_seconds``; see
    ``_FeedPartition``). Resumable from a byte offset. At-least-once.
    """

    def __init__(self, path: Path | str, *, batch_size: int = 2000, speed: float = 0.0,
                 follow: bool = False, poll_seconds: float = 1.0,
                 grace_seconds: float = 5.0) -> None:
        if follow and speed > 0:
            raise ValueError("a followed feed is live already: it cannot also be paced")
        self.path = Path(path)
        self.batch_size = batch_size
        self.speed = speed
        self.follow = follow
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.partitions: list[_FeedPartition] = []  # built in this process (for metrics)

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def build_part(self, step_id: str, for_part: str, resume_state: Position | None
                   ) -> _FilePartition | _FeedPartition:
        followed = resume_state is not None and len(resume_state) >= 5
        if not self.follow and not followed:
            return _FilePartition(self.path, self.batch_size, self.speed, resume_state)
        # (a replay resuming a followed feed finds its file as the daemon would, then ends)
        part = _FeedPartition(self.path, self.batch_size, resume_state, self.poll_seconds,
                              self.grace_seconds, until_end=not self.follow)
        self.partitions.append(part)
        return part


class _SimPartition(StatefulSourcePartition[Item, int]):
    def __init__(self, lines: list[bytes], batch_size: int, resume: int | None) -> None:
        self._lines = lines
        self._i = resume or 0
        self._batch = batch_size

    def next_batch(self) -> list[Item]:
        if _INTERRUPT:
            _interrupted()
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
