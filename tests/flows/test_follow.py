"""Following a live feed (`replay --follow`): the source reads what the feed appends, whole
lines only, through rotations and truncations, and resumes from its snapshot."""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.cluster import free_ports
from flows.sources import JsonLinesSource


def _part(path: Path, resume=None, **kw):  # type: ignore[no-untyped-def]
    """A followed feed's partition; a rotated file is finished at once unless ``grace``."""
    source = JsonLinesSource(path, follow=True, poll_seconds=kw.pop("poll_seconds", 0.5),
                             grace_seconds=kw.pop("grace", 0.0), **kw)
    return source.build_part("scans", path.name, resume)


def _lines(batches: list) -> list[tuple[int, bytes]]:  # type: ignore[type-arg]
    return [(first + i, line) for first, lines in batches for i, line in enumerate(lines)]


def _read(tmp_path: Path, data: bytes):  # type: ignore[no-untyped-def]
    """A feed holding ``data`` and a daemon's partition that has read it."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(data)
    part = _part(feed)
    part.next_batch()
    return feed, part


def _read_and_stopped(tmp_path: Path, data: bytes) -> tuple[Path, tuple[int, ...]]:
    """A feed holding ``data``, read to its end by a daemon since stopped: its snapshot."""
    feed, part = _read(tmp_path, data)
    snapshot = part.snapshot()
    part.close()
    return feed, snapshot


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def test_appended_lines_are_read_and_a_line_waits_for_its_newline(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b'{"a":1}\n{"a":2}\n{"a":')
    part = _part(feed)
    assert _lines(part.next_batch()) == [(1, b'{"a":1}\n'), (2, b'{"a":2}\n')]
    before = datetime.now(UTC)
    assert part.next_batch() == []  # the third line is still being written
    awake = part.next_awake()
    assert awake is not None  # look again after poll_seconds, not at once (no busy loop)
    assert (awake - before).total_seconds() == pytest.approx(0.5, abs=0.25)
    assert part.bytes_behind() == len(b'{"a":')
    assert part.snapshot()[:2] == (16, 2)  # resumes at the start of the unfinished line
    _append(feed, b'3}\n{"a":4}\n')
    assert _lines(part.next_batch()) == [(3, b'{"a":3}\n'), (4, b'{"a":4}\n')]
    assert part.next_awake() is None  # lines came: read again at once
    assert part.bytes_behind() == 0
    assert part.next_batch() == [] and part.next_awake() is not None


def test_a_rotation_finishes_the_old_file_then_reads_the_new_one(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"1\n2\n")
    part = _part(feed)
    assert _lines(part.next_batch()) == [(1, b"1\n"), (2, b"2\n")]
    # the writer adds a line and dies mid-line, logrotate renames, a new writer starts anew
    _append(feed, b"3\n4-cut")
    feed.rename(tmp_path / "feed.jsonl.1")
    feed.write_bytes(b"5\n6\n")
    assert part.bytes_behind() == len(b"3\n4-cut") + len(b"5\n6\n")
    (tmp_path / "feed.jsonl").unlink()
    assert part.bytes_behind() == len(b"3\n4-cut")  # (no new file yet)
    feed.write_bytes(b"5\n6\n")
    assert _lines(part.next_batch()) == [(3, b"3\n")]
    # the old file's end is all there will be of it: its last piece goes on as it is (the
    # parser makes it a dead letter), numbered as a line of the old file
    assert _lines(part.next_batch()) == [(4, b"4-cut")]
    assert _lines(part.next_batch()) == [(1, b"5\n"), (2, b"6\n")]
    assert part.rotations == 1
    st = feed.stat()
    assert part.snapshot() == (4, 2, st.st_dev, st.st_ino, zlib.crc32(b"5\n6\n"))


def test_a_rename_without_a_new_file_yet_waits_for_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, part = _read(tmp_path, b"1\n")
    feed.rename(tmp_path / "feed.jsonl.1")
    _append(tmp_path / "feed.jsonl.1", b"2\n")  # the writer's last line, after the rename
    assert part.bytes_behind() == 2
    with caplog.at_level(logging.WARNING, logger="delaywatch"):
        assert _lines(part.next_batch()) == [(2, b"2\n")]
        assert part.next_batch() == [] and part.next_awake() is not None
    assert caplog.text == ""  # a rotation's gap is no news
    feed.write_bytes(b"3\n")
    assert _lines(part.next_batch()) == [(1, b"3\n")]


def test_a_rotated_file_is_read_on_while_its_writer_may_still_add_to_it(tmp_path: Path) -> None:
    """logrotate renames, then the writer reopens on a signal: what it writes before that
    goes to the old file, after the new one exists. The old file is finished only once it
    has been unchanged for the grace period."""
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"1\n{\"half")
    part = _part(feed, grace=60)
    assert _lines(part.next_batch()) == [(1, b"1\n")]
    old = tmp_path / "feed.jsonl.1"
    feed.rename(old)
    feed.write_bytes(b"new\n")
    assert part.next_batch() == []  # the old file changed just now: wait for its writer
    _append(old, b'-rest"}\n2\n')
    assert _lines(part.next_batch()) == [(2, b'{"half-rest"}\n'), (3, b"2\n")]
    assert part.next_batch() == [] and part.rotations == 0
    os.utime(old, (time.time() - 61, time.time() - 61))  # quiet for the grace period
    assert part.next_batch() == []  # done with it (nothing left)
    assert part.rotations == 1
    assert _lines(part.next_batch()) == [(1, b"new\n")]


def test_a_feed_rotated_twice_while_behind_reads_every_file_in_order(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"a1\na2\n")
    part = _part(feed, batch_size=1)
    assert _lines(part.next_batch()) == [(1, b"a1\n")]
    # daily rotation, twice, while the daemon is behind (numbered names shift)
    feed.rename(tmp_path / "feed.jsonl.1")
    feed.write_bytes(b"b1\nb2\n")
    _age(tmp_path / "feed.jsonl.1", 7200)
    _age(feed, 3600)
    (tmp_path / "feed.jsonl.1").rename(tmp_path / "feed.jsonl.2")
    feed.rename(tmp_path / "feed.jsonl.1")
    feed.write_bytes(b"c1\n")
    (tmp_path / "feed.jsonl.bak").write_bytes(b"not the feed\n")  # not a rotated name
    (tmp_path / "feed.jsonl.3.gz").write_bytes(b"compressed\n")
    got = []
    for _ in range(12):
        got += _lines(part.next_batch())
    assert [line for _, line in got] == [b"a2\n", b"b1\n", b"b2\n", b"c1\n"]
    assert part.rotations == 2


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_an_ordinary_rotation_does_not_read_older_rotated_files_again(tmp_path: Path) -> None:
    for n, age in ((3, 3 * 86400), (2, 2 * 86400)):  # read by earlier runs
        (tmp_path / f"feed.jsonl.{n}").write_bytes(f"old{n}\n".encode())
        _age(tmp_path / f"feed.jsonl.{n}", age)
    feed, part = _read(tmp_path, b"1\n")
    _append(feed, b"2\n")
    feed.rename(tmp_path / "feed.jsonl.1")
    feed.write_bytes(b"3\n")
    got = []
    for _ in range(5):
        got += _lines(part.next_batch())
    assert [line for _, line in got] == [b"2\n", b"3\n"]


def test_a_finished_files_inode_given_to_a_new_file_does_not_hide_it(tmp_path: Path) -> None:
    """Only a file with a finished file's inode *and* first bytes counts as read."""

    def rotated_twice(where: Path, finished_head: bytes) -> list[bytes]:
        where.mkdir()
        feed, part = _read(where, b"a1\n")
        b = where / "feed.jsonl.1"
        b.write_bytes(b"b1\n")
        part._done[b.stat().st_ino] = finished_head  # a file with b's inode, finished
        feed.rename(where / "feed.jsonl.2")
        _age(where / "feed.jsonl.2", 60)
        feed.write_bytes(b"c1\n")
        got = []
        for _ in range(5):
            got += _lines(part.next_batch())
        return [line for _, line in got]

    assert rotated_twice(tmp_path / "reused", b"x1\n") == [b"b1\n", b"c1\n"]  # another file
    assert rotated_twice(tmp_path / "same", b"b1\n") == [b"c1\n"]  # b itself, read before


def test_a_rotated_file_with_a_future_mtime_is_finished_after_the_grace_by_our_clock(
    tmp_path: Path
) -> None:
    feed, part = _read(tmp_path, b"1\n")
    part._grace = 0.2
    old = tmp_path / "feed.jsonl.1"
    feed.rename(old)
    os.utime(old, (time.time() + 3600, time.time() + 3600))  # another host's clock
    feed.write_bytes(b"2\n")
    assert part.next_batch() == []  # changed "just now", as far as we know
    time.sleep(0.25)
    assert part.next_batch() == [] and part.rotations == 1
    assert _lines(part.next_batch()) == [(1, b"2\n")]


def test_a_rotation_gap_says_nothing_alarming_and_the_new_file_is_logged_when_it_comes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, part = _read(tmp_path, b"1\n")
    feed.rename(tmp_path / "feed.jsonl.1")
    with caplog.at_level(logging.INFO, logger="delaywatch"):
        for _ in range(3):
            assert part.next_batch() == []
        assert "WARNING" not in caplog.text
        assert "feed.jsonl rotated: feed.jsonl.1 finished" in caplog.text
        assert "reading the new file" not in caplog.text
        feed.write_bytes(b"2\n")
        assert _lines(part.next_batch()) == [(1, b"2\n")]
    assert "feed feed.jsonl: reading the new file" in caplog.text


def test_a_snapshot_names_the_lines_read_not_the_file_as_it_is_now(tmp_path: Path) -> None:
    """Truncated and rewritten after the last read, before the snapshot: a resume must not
    take the rewritten file for the one that was read (and start mid-line in it)."""
    feed, part = _read(tmp_path, b'{"a":1}\n{"a":2}\n')
    feed.write_bytes(b'{"bb":10}\n{"bb":20}\n{"bb":30}\n')  # same inode, other lines
    snapshot = part.snapshot()
    part.close()
    assert _lines(_part(feed, snapshot).next_batch())[0] == (1, b'{"bb":10}\n')


def test_a_feed_that_does_not_exist_yet_is_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed = tmp_path / "feed.jsonl"
    with caplog.at_level(logging.WARNING, logger="delaywatch"):
        part = _part(feed)
        assert part.next_batch() == [] and part.next_batch() == []
    assert caplog.text.count("feed.jsonl does not exist (yet): waiting for it") == 1
    assert part.next_awake() is not None and part.bytes_behind() == 0
    assert part.snapshot() == (0, 0)
    feed.write_bytes(b"1\n")
    assert part.bytes_behind() == 2
    assert _lines(part.next_batch()) == [(1, b"1\n")]


def test_a_daemon_restarted_after_rotations_finishes_the_old_files_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, snapshot = _read_and_stopped(tmp_path, b"1\n2\n")
    # while it was stopped (a weekend, daily rotation): more lines, two rotations
    _append(feed, b"3\n")
    _age(feed, 2 * 86400)
    feed.rename(tmp_path / "feed.jsonl-20261121")
    feed.write_bytes(b"4\n")
    _age(feed, 86400)
    feed.rename(tmp_path / "feed.jsonl-20261122")
    feed.write_bytes(b"5\n")
    (tmp_path / "other.jsonl").write_bytes(b"x\n")
    with caplog.at_level(logging.INFO, logger="delaywatch"):
        resumed = _part(feed, snapshot)
        got = []
        for _ in range(6):
            got += _lines(resumed.next_batch())
    assert got == [(3, b"3\n"), (1, b"4\n"), (1, b"5\n")]
    assert "finishing feed.jsonl-20261121 first" in caplog.text
    # the device is not part of the identity (it can change at a remount)
    moved = (snapshot[0], snapshot[1], snapshot[2] + 1, *snapshot[3:])
    _append(feed, b"6\n")
    assert _lines(_part(feed, resumed.snapshot()).next_batch()) == [(2, b"6\n")]
    again = _part(tmp_path / "feed.jsonl-20261121", moved)  # (as if it were the feed)
    assert _lines(again.next_batch()) == [(3, b"3\n")]


def test_a_snapshot_of_a_file_gone_reads_the_feed_from_its_start_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, snapshot = _read_and_stopped(tmp_path, b"1\n2\n")
    (tmp_path / "new").write_bytes(b"3\n")  # made before the old one goes: another inode
    feed.unlink()
    (tmp_path / "new").rename(feed)
    with caplog.at_level(logging.WARNING, logger="delaywatch"):
        resumed = _part(feed, snapshot)
    assert "no longer beside feed.jsonl" in caplog.text
    assert _lines(resumed.next_batch()) == [(1, b"3\n")]


def test_a_feed_truncated_in_place_is_read_again_from_its_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, part = _read(tmp_path, b"1\n2\n")
    with open(feed, "r+b") as fh:  # logrotate's copytruncate, then the writer goes on
        fh.truncate(0)
    _append(feed, b"3\n")
    with caplog.at_level(logging.WARNING, logger="delaywatch"):
        assert _lines(part.next_batch()) == [(1, b"3\n")]
    assert "feed.jsonl was truncated" in caplog.text and part.truncations == 1
    # the same, found at a restart: the snapshot points past the end
    snapshot = (100, 9, *part.snapshot()[2:])
    assert _lines(_part(feed, snapshot).next_batch()) == [(1, b"3\n")]


def test_a_feed_truncated_and_grown_past_the_offset_between_polls_is_caught_by_its_head(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, part = _read(tmp_path, b'{"a":1}\n{"a":2}\n')
    feed.write_bytes(b'{"b":10}\n{"b":20}\n{"b":3}\n')  # copytruncate, then more than before
    with caplog.at_level(logging.WARNING, logger="delaywatch"):
        got = _lines(part.next_batch())
    assert part.truncations == 1 and "was truncated" in caplog.text
    assert got == [(1, b'{"b":10}\n'), (2, b'{"b":20}\n'), (3, b'{"b":3}\n')]


def _copytruncate(feed: Path, copy: str) -> None:
    """logrotate's ``copytruncate``: the feed copied beside it, then emptied in place."""
    (feed.parent / copy).write_bytes(feed.read_bytes())
    with open(feed, "r+b") as fh:
        fh.truncate(0)


def test_a_feed_copied_and_truncated_is_finished_from_its_copy_then_read_from_its_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, part = _read(tmp_path, b"1\n2\n")
    (tmp_path / "feed.jsonl.2").write_bytes(b"0\n1\n2\n3\n4\n")  # an older copy: other head
    _append(feed, b"3\n4-cut")  # written after the last read: only in the copy
    _copytruncate(feed, "feed.jsonl.1")
    _append(feed, b"5\n")
    with caplog.at_level(logging.INFO, logger="delaywatch"):
        got = _lines(part.next_batch())
        got += _lines(part.next_batch())
    assert got == [(3, b"3\n"), (4, b"4-cut"), (1, b"5\n")]
    assert part.truncations == 1
    assert "last 2 lines are read from feed.jsonl.1" in caplog.text
    assert "not read" not in caplog.text  # nothing skipped, nothing to warn of
    assert part.snapshot()[:2] == (2, 1)


def test_a_feed_copied_and_truncated_with_nothing_unread_repeats_nothing_and_warns_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, part = _read(tmp_path, b"1\n2\n")
    _copytruncate(feed, "feed.jsonl-20261124")
    _append(feed, b"3\n")
    with caplog.at_level(logging.WARNING, logger="delaywatch"):
        assert _lines(part.next_batch()) == [(1, b"3\n")]
    assert caplog.text == ""  # the copy holds nothing past what was read: nothing skipped


def test_a_feed_copied_and_truncated_while_stopped_resumes_in_the_copy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, snapshot = _read_and_stopped(tmp_path, b"1\n2\n")
    _append(feed, b"3\n")
    _copytruncate(feed, "feed.jsonl.1")
    _append(feed, b"4\n5\n")
    with caplog.at_level(logging.INFO, logger="delaywatch"):
        part = _part(feed, snapshot)
        got = [line for _ in range(4) for line in _lines(part.next_batch())]
    assert got == [(3, b"3\n"), (1, b"4\n"), (2, b"5\n")]
    assert "finishing the copy feed.jsonl.1 first" in caplog.text
    assert "not read" not in caplog.text


def test_a_compressed_copy_is_not_read_and_the_lines_skipped_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed, part = _read(tmp_path, b"1\n2\n")
    _append(feed, b"3\n")
    _copytruncate(feed, "feed.jsonl.1.gz")  # (as if compressed: not a name that is read)
    _append(feed, b"4\n")
    with caplog.at_level(logging.WARNING, logger="delaywatch"):
        assert _lines(part.next_batch()) == [(1, b"4\n")]
    assert "lines in between are not read" in caplog.text


def test_a_lone_carriage_return_in_a_rotated_files_last_piece_does_not_split_it(
    tmp_path: Path
) -> None:
    feed, part = _read(tmp_path, b"1\n")
    _append(feed, b'{"a":"x\ry"}\n{"cut')
    feed.rename(tmp_path / "feed.jsonl.1")
    got = _lines(part.next_batch()) + _lines(part.next_batch())
    assert got == [(2, b'{"a":"x\ry"}\n'), (3, b'{"cut')]


def test_an_old_snapshot_that_does_not_fall_on_a_line_start_reads_from_the_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"111\n22222\n")  # another file than the one of snapshot (2, 1)
    with caplog.at_level(logging.WARNING, logger="delaywatch"):
        part = _part(feed, (2, 1))
    assert "does not match where the last run stopped" in caplog.text
    assert _lines(part.next_batch()) == [(1, b"111\n"), (2, b"22222\n")]


def test_a_replay_resuming_a_followed_feed_reads_its_files_to_the_end_and_ends(
    tmp_path: Path
) -> None:
    feed, part = _read(tmp_path, b"1\n")
    snapshot = part.snapshot()
    _append(feed, b"2\n")
    feed.rename(tmp_path / "feed.jsonl.1")
    feed.write_bytes(b"3\n4-without-newline")
    replay = JsonLinesSource(feed).build_part("scans", feed.name, snapshot)
    got = []
    with pytest.raises(StopIteration):
        for _ in range(10):
            got += _lines(replay.next_batch())
    assert got == [(2, b"2\n"), (1, b"3\n"), (2, b"4-without-newline")]


def test_a_snapshot_from_before_follow_resumes_in_the_same_file(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"1\n2\n3\n")
    plain = JsonLinesSource(feed).build_part("scans", feed.name, None)
    plain.next_batch()
    with pytest.raises(StopIteration):
        plain.next_batch()
    assert plain.snapshot() == (6, 3)  # a replay's snapshot is as it was
    _append(feed, b"4\n")
    assert _lines(_part(feed, plain.snapshot()).next_batch()) == [(4, b"4\n")]


def test_without_follow_the_end_of_the_file_ends_the_input(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"1\n2-without-newline")
    part = JsonLinesSource(feed).build_part("scans", feed.name, None)
    assert _lines(part.next_batch()) == [(1, b"1\n"), (2, b"2-without-newline")]
    with pytest.raises(StopIteration):
        part.next_batch()


def test_a_followed_feed_is_not_paced(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot also be paced"):
        JsonLinesSource(tmp_path / "feed.jsonl", follow=True, speed=60)


def test_reading_moves_the_last_read_time(tmp_path: Path) -> None:
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(b"1\n")
    part = _part(feed)
    part.last_read = 0.0
    part.next_batch()
    assert part.last_read > 0
    part.last_read = 0.0
    part.next_batch()  # nothing new
    assert part.last_read == 0.0


def test_a_file_with_the_snapshots_inode_but_other_lines_is_another_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A deleted feed's inode is often given to the next file: the head checksum tells."""
    feed, snapshot = _read_and_stopped(tmp_path, b"1\n2\n")
    _append(feed, b"3\n")  # the same file, grown
    with caplog.at_level(logging.WARNING, logger="delaywatch"):
        assert _lines(_part(feed, snapshot).next_batch()) == [(3, b"3\n")]
        assert caplog.text == ""
        feed.write_bytes(b"7\n8\n9\n")  # rewritten in place: same inode, other lines
        other = _part(feed, snapshot)
    assert "no longer beside feed.jsonl" in caplog.text
    assert _lines(other.next_batch()) == [(1, b"7\n"), (2, b"8\n"), (3, b"9\n")]


# -- the daemon, end to end ------------------------------------------------------------------

def _died(daemon: subprocess.Popen) -> str:
    """What a daemon that ended early wrote to stderr: the start too (a cluster peer's error
    comes first, the main process's account of it last; the tail alone hid the cause once)."""
    err = daemon.communicate()[1]
    return err if len(err) <= 9000 else f"{err[:6000]}\n[...]\n{err[-3000:]}"


def _free_port() -> int:
    """A free port, and the next one (a second process's metrics port), both outside the
    kernel's ephemeral range: the test's own polls of a port nobody listens on yet cannot
    then take it, nor connect to themselves through it."""
    return free_ports(2, consecutive=True)[0]


def _scanned(port: int) -> float:
    """Lines the daemon has taken in (every outcome, invalid included), from its metrics."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read()
    except (OSError, http.client.HTTPException):  # not up yet; while nothing listens on the
        return -1.0  # port, Linux can connect the client to itself (it reads its own request)
    return sum(float(line.rsplit(b" ", 1)[1]) for line in text.splitlines()
               if line.startswith(b"delaywatch_scan_events_total{"))


def _wait_for(port: int, lines: int, daemon: subprocess.Popen) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + 120
    while _scanned(port) != lines:
        assert daemon.poll() is None, _died(daemon)
        assert time.monotonic() < deadline, f"the daemon took in {_scanned(port)} of {lines}"
        time.sleep(0.1)


def _outbox_rows(run: Path) -> list[tuple]:  # type: ignore[type-arg]
    con = sqlite3.connect(run / "outbox.sqlite")
    try:
        return con.execute("SELECT id, alert_key, recipient_ref, kind, payload FROM outbox "
                           "ORDER BY id").fetchall()
    finally:
        con.close()


def test_the_daemon_follows_a_rotated_feed_stops_on_sigterm_and_resumes_to_a_replays_run(
    demo_data: Path, tmp_path: Path
) -> None:
    """`replay --follow` as operations run it (a real process, a real feed): the feed is
    written in pieces cut mid-line, rotated, given a bad line; SIGTERM stops the daemon
    (exit 0, how to resume); the same run resumed from its recovery store to the feed's end
    writes exactly what one replay of the whole feed writes: alerts, incidents, facility
    windows, outbox rows (same ids), dead letters."""
    events = (demo_data / "events.jsonl").read_bytes()
    n = len(events)
    cut1 = n * 2 // 5 + 7  # mid-line
    cut2 = events.index(b"\n", n * 3 // 5) + 1
    cut3 = events.index(b"\n", n * 4 // 5) + 1
    bad = b'{"package_id": "X1", "this is": "not a scan"}\n'
    feed_dir = tmp_path / "feed"
    feed_dir.mkdir()
    feed = feed_dir / "events.jsonl"
    port = _free_port()
    env = dict(os.environ, DELAYWATCH_MODE="replay",  # (live would move the clock when idle)
               DELAYWATCH_EPOCH_INTERVAL_SECONDS="0.2", DELAYWATCH_FOLLOW_POLL_SECONDS="0.05",
               DELAYWATCH_FOLLOW_ROTATE_GRACE_SECONDS="0.3")
    args = ["replay", str(feed), "--out", str(tmp_path / "run"), "--recovery",
            str(tmp_path / "rec"), "--facilities", str(demo_data / "facilities.csv")]
    daemon = subprocess.Popen(  # before the feed exists: it waits for it
        [sys.executable, "-c", "from flows.cli import app; app()", *args, "--follow",
         "--metrics-port", str(port)],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _wait_for(port, 0, daemon)
        feed.write_bytes(events[:cut1])
        _wait_for(port, events[:cut1].count(b"\n"), daemon)
        _append(feed, events[cut1:cut2])  # the writer finishes its line, then rotation
        feed.rename(feed_dir / "events.jsonl.1")
        feed.write_bytes(events[cut2:cut3] + bad)
        _wait_for(port, events[:cut3].count(b"\n") + 1, daemon)
        time.sleep(0.5)  # a snapshot or two after the last line
        daemon.send_signal(signal.SIGTERM)
        out, err = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0, err[-3000:]
    assert "stopped: run the same command again" in err
    assert "feed events.jsonl rotated: events.jsonl.1 finished" in err  # (the log says so)
    _append(feed, events[cut3:])
    done = CliRunner().invoke(app, [*args, "--metrics-port", "0"])  # to the end, and exit
    assert done.exit_code == 0, done.output

    whole = tmp_path / "whole.jsonl"
    whole.write_bytes(events[:cut3] + bad + events[cut3:])
    done = CliRunner().invoke(app, ["replay", str(whole), "--out", str(tmp_path / "ref"),
                                    "--facilities", str(demo_data / "facilities.csv"),
                                    "--metrics-port", "0"])
    assert done.exit_code == 0, done.output
    run, ref = tmp_path / "run", tmp_path / "ref"
    for name in ("alerts.jsonl", "incidents.jsonl", "facility_windows.jsonl"):
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    assert (ref / "alerts.jsonl").read_bytes().count(b"\n") > 10
    assert _outbox_rows(run) == _outbox_rows(ref) and len(_outbox_rows(ref)) > 10
    # dead letters: the same one; its line number is the line of the file it was read from
    letters = [json.loads(line) for line in (run / "dead_letters.jsonl").open()]
    expected = [json.loads(line) for line in (ref / "dead_letters.jsonl").open()]
    assert len(letters) == len(expected) == 1
    assert letters[0]["line"] == events[cut2:cut3].count(b"\n") + 1
    assert {k: v for k, v in letters[0].items() if k != "line"} == \
        {k: v for k, v in expected[0].items() if k != "line"}


def test_follow_needs_a_recovery_store_and_no_pacing(demo_data: Path, tmp_path: Path) -> None:
    base = ["replay", str(demo_data / "events.jsonl"), "--out", str(tmp_path / "run"),
            "--metrics-port", "0", "--follow"]
    done = CliRunner().invoke(app, base)
    assert done.exit_code == 2 and "needs --recovery DIR" in done.output, done.output
    done = CliRunner().invoke(app, [*base, "--recovery", str(tmp_path / "rec"),
                                    "--speed", "60"])
    assert done.exit_code == 2 and "give one of them" in done.output, done.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("env", "mode"), [({}, "live"), ({"DELAYWATCH_MODE": "replay"},
                                                            "replay")])
def test_a_followed_feed_runs_in_live_mode_unless_the_settings_name_one(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
    mode: str
) -> None:
    import flows.run

    seen = []

    def record(source, run_dir, settings, **kw):  # type: ignore[no-untyped-def]
        seen.append((settings.mode, source.follow))
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.run, "replay", record)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = ["replay", str(demo_data / "events.jsonl"), "--out", str(tmp_path / "run"),
            "--metrics-port", "0", "--recovery", str(tmp_path / "rec")]
    assert CliRunner().invoke(app, [*args, "--follow"]).exit_code == 130
    assert CliRunner().invoke(app, args).exit_code == 130
    assert seen == [(mode, True), (env.get("DELAYWATCH_MODE", "replay"), False)]


def test_sigterm_stops_only_a_resumable_run_and_the_handler_is_put_back(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --recovery, SIGTERM ends the run as Ctrl-C does but with exit code 0 (systemd's
    stop is no failure); without it, the process is killed as before (a partial run must
    not look like a finished one); the handler is the CLI's only while the run is on, and
    a call from another thread (no signals there) runs without it."""
    from bytewax.errors import BytewaxRuntimeError

    import flows.cli
    import flows.run

    seen = []

    def run(source, run_dir, settings, **kw):  # type: ignore[no-untyped-def]
        seen.append(signal.getsignal(signal.SIGTERM))
        try:
            flows.cli._terminate(signal.SIGTERM, None)
        except KeyboardInterrupt as exc:
            raise BytewaxRuntimeError("error calling `next_batch`") from exc

    monkeypatch.setattr(flows.run, "replay", run)
    before = signal.getsignal(signal.SIGTERM)
    args = ["replay", str(demo_data / "events.jsonl"), "--out", str(tmp_path / "run"),
            "--metrics-port", "0"]
    done = CliRunner().invoke(app, [*args, "--recovery", str(tmp_path / "rec")])
    assert done.exit_code == 0 and "stopped: run the same command again" in done.output
    assert seen.pop() is flows.cli._terminate and signal.getsignal(signal.SIGTERM) is before
    done = CliRunner().invoke(app, args)  # (here the test raises it; SIGTERM would kill)
    assert seen.pop() is before and done.exit_code == 0 and "partial run" in done.output

    result = []
    thread = threading.Thread(target=lambda: result.append(CliRunner().invoke(
        app, [*args, "--recovery", str(tmp_path / "rec2")])))
    thread.start()
    thread.join()
    assert seen.pop() is before and result[0].exit_code == 0, result[0].output


def test_a_followed_feed_may_come_later_but_its_directory_must_exist(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.run

    started = []

    def run(source, run_dir, settings, **kw):  # type: ignore[no-untyped-def]
        started.append(source.path)
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.run, "replay", run)
    base = ["--out", str(tmp_path / "run"), "--metrics-port", "0", "--recovery",
            str(tmp_path / "rec"), "--follow"]
    done = CliRunner().invoke(app, ["replay", str(tmp_path / "later.jsonl"), *base])
    assert done.exit_code == 130 and started == [tmp_path / "later.jsonl"], done.output
    done = CliRunner().invoke(app, ["replay", str(tmp_path / "nowhere" / "f.jsonl"), *base])
    assert done.exit_code == 2 and "the feed's directory) does not exist" in done.output
    assert len(started) == 1


def test_the_feed_file_modification_time_is_exported_and_its_coming_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer stopping shows in the feed's modification time, not only in the lines
    read (which restart at the process's start)."""
    from prometheus_client import CollectorRegistry

    from flows.metrics import FeedCollector

    feed = tmp_path / "feed.jsonl"
    source = JsonLinesSource(feed, follow=True, poll_seconds=0.5)
    registry = CollectorRegistry()
    registry.register(FeedCollector(lambda: source.partitions))
    with caplog.at_level(logging.INFO, logger="delaywatch"):
        part = source.build_part("scans", feed.name, None)
        assert registry.get_sample_value("delaywatch_feed_modified_timestamp_seconds") is None
        feed.write_bytes(b"1\n")
        _age(feed, 3600)
        assert _lines(part.next_batch()) == [(1, b"1\n")]
    assert "feed feed.jsonl is there: reading it" in caplog.text
    assert registry.get_sample_value("delaywatch_feed_modified_timestamp_seconds") == \
        pytest.approx(time.time() - 3600, abs=5)
    assert registry.get_sample_value("delaywatch_feed_last_read_timestamp_seconds") == \
        pytest.approx(time.time(), abs=5)


def test_a_second_flow_on_the_same_run_directory_is_refused(
    demo_data: Path, tmp_path: Path
) -> None:
    """Two daemons writing one run and one recovery store would corrupt both: the run
    directory is locked while a flow runs, and the lock goes with it."""
    from flows.cli import _lock_run

    run = tmp_path / "run"
    args = ["replay", str(demo_data / "events.jsonl"), "--out", str(run), "--metrics-port",
            "0", "--recovery", str(tmp_path / "rec")]
    held = _lock_run(run)  # the first flow
    try:
        done = CliRunner().invoke(app, args)
    finally:
        held.close()
    assert done.exit_code == 2 and "another delaywatch is running on" in done.output
    assert not (tmp_path / "rec").exists()
    done = CliRunner().invoke(app, args)  # the first one ended: this one runs
    assert done.exit_code == 0, done.output
    # the same recovery store from another run directory: refused too, the store untouched
    held = _lock_run(tmp_path / "rec", "recovery store")
    try:
        other = [*args[:3], str(tmp_path / "other"), *args[4:]]
        done = CliRunner().invoke(app, other)
    finally:
        held.close()
    assert done.exit_code == 2 and "on the recovery store" in done.output, done.output
    assert not (tmp_path / "other" / "alerts.jsonl").exists()
    # a store emptied by hand but for its lock is set up again
    for part in (tmp_path / "rec").iterdir():
        if part.name != ".lock":
            part.unlink()
    done = CliRunner().invoke(app, [*args[:3], str(tmp_path / "again"), *args[4:]])
    assert done.exit_code == 0, done.output


def test_the_metrics_server_listens_where_the_settings_say(
    demo_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    monkeypatch.setenv("DELAYWATCH_METRICS_HOST", "0.0.0.0")
    done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"), "--out",
                                    str(tmp_path / "run"), "--metrics-port", str(port)])
    assert done.exit_code == 0 and f"metrics: http://0.0.0.0:{port}/metrics" in done.output
