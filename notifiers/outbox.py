"""A durable outbox on SQLite: the hand-over point between the flow and the mail sender.

Delivery guarantee: the flow writes alerts at-least-once (Bytewax may replay output around a
resume); the outbox turns that into *once per alert key* because ``alert_key`` is UNIQUE and a
repeated enqueue is a no-op that reports itself as a duplicate. The sender records a message as
sent only after the SMTP server accepted it, so the one duplicate that can still happen is a
crash between acceptance and that record (the row's lease then expires and it is sent again,
with the same Message-ID).

Row life cycle (``status``)::

    pending --claim_due--> sending --mark_sent-----> sent
       ^                      |----mark_retry-----> pending (attempts+1, next_attempt_at later)
       |                      |----mark_failed----> failed_permanent (last_error_code)
       +----release/defer-----+    (lease expired: claim_due takes it again)
    suppressed: the recipient bounced (5xx) or unsubscribed; never sent.
    superseded: a delay message whose all-clear was queued before it could go (quiet
        hours, a relay down): the customer gets the all-clear alone; never sent.

The database is opened in WAL mode with a busy timeout, so one process may enqueue while
another drains. Every write is one short ``BEGIN IMMEDIATE`` transaction. All times are aware
datetimes in the API and UTC epoch seconds in the table. No personal data is stored: rows hold
the alert (which has none) and the pseudonymous ``recipient_ref``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

if TYPE_CHECKING:
    from notifiers.metrics import NotifierMetrics

__all__ = ["STATUSES", "EnqueueResult", "Outbox", "OutboxRow"]

log = logging.getLogger(__name__)

Status = Literal["pending", "sending", "sent", "failed_permanent", "suppressed", "superseded"]
STATUSES: tuple[str, ...] = ("pending", "sending", "sent", "failed_permanent", "suppressed",
                             "superseded")
KINDS = frozenset({"stall", "incident_delay", "back_on_track"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY,
    alert_key       TEXT    NOT NULL UNIQUE,
    recipient_ref   TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN
                        ('pending', 'sending', 'sent', 'failed_permanent', 'suppressed',
                         'superseded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    created_at      REAL    NOT NULL,
    updated_at      REAL    NOT NULL,
    sent_at         REAL,
    last_error_code INTEGER
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_open ON outbox (id) WHERE status IN ('pending', 'sending');
CREATE INDEX IF NOT EXISTS outbox_recipient_due ON outbox (recipient_ref, status, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_done ON outbox (updated_at)
    WHERE status IN ('sent', 'failed_permanent', 'suppressed', 'superseded');
DROP INDEX IF EXISTS outbox_recipient;
CREATE TABLE IF NOT EXISTS suppressions (
    recipient_ref TEXT PRIMARY KEY,
    reason        TEXT NOT NULL CHECK (reason IN ('bounce', 'unsubscribe')),
    code          INTEGER,
    created_at    REAL NOT NULL
);
"""

_INSERT = """
INSERT OR IGNORE INTO outbox
    (alert_key, recipient_ref, kind, payload, status, attempts,
     next_attempt_at, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4,
        CASE WHEN EXISTS (SELECT 1 FROM suppressions WHERE recipient_ref = ?2)
             THEN 'suppressed' ELSE 'pending' END,
        0, ?5, ?5, ?5)
"""

_ROW_COLUMNS = (
    "alert_key, recipient_ref, kind, payload, status, attempts, next_attempt_at, "
    "created_at, sent_at, last_error_code"
)


class EnqueueResult(NamedTuple):
    inserted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    alert_key: str
    recipient_ref: str
    kind: str
    alert: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    sent_at: datetime | None
    last_error_code: int | None
    #: for a row taken by :meth:`Outbox.claim_due`: the end of the lease taken, as stored
    #: (the claim's token: :meth:`Outbox.renew` keeps the row only while it is unchanged)
    lease_until: float | None = None


_COPY = ("INSERT INTO outbox_rebuilt (id, alert_key, recipient_ref, kind, payload, status, "
         "attempts, next_attempt_at, created_at, updated_at, sent_at, last_error_code) "
         "SELECT id, alert_key, recipient_ref, kind, payload, status, attempts, "
         "next_attempt_at, created_at, updated_at, sent_at, last_error_code FROM outbox")


def _rebuild_for_new_statuses(conn: sqlite3.Connection) -> bool:
    """An outbox made before the status ``superseded``: SQLite cannot change a CHECK, so the
    table is copied into a new one (inside the caller's write transaction). True if done."""
    (sql,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outbox'").fetchone()
    if "'superseded'" in sql:
        return False
    create = _SCHEMA[_SCHEMA.index("CREATE TABLE IF NOT EXISTS outbox"):_SCHEMA.index(");") + 1]
    conn.execute(create.replace("IF NOT EXISTS outbox", "outbox_rebuilt", 1))
    conn.execute(_COPY)
    conn.execute("DROP TABLE outbox")
    conn.execute("ALTER TABLE outbox_rebuilt RENAME TO outbox")
    return True


def _unfinished(conn: sqlite3.Connection) -> tuple[int, float | None]:
    """(rows pending or sending, the oldest one's ``created_at`` or None)."""
    n, oldest = conn.execute(
        "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE status IN ('pending', 'sending')"
    ).fetchone()
    return int(n), oldest


def _ts(when: datetime) -> float:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("outbox times must be timezone-aware datetimes")
    return when.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise TypeError("alert contains a naive datetime")
        return value.isoformat()
    raise TypeError(f"alert field of type {type(value).__name__} is not JSON serialisable")


def _now() -> datetime:
    return datetime.now(tz=UTC)


class Outbox:
    """The outbox table in the SQLite file at ``path`` (created if missing).

    Parameters
    ----------
    path
        Database file. Open one ``Outbox`` per process (or thread); it is safe to have the
        same file open in several processes at once.
    busy_timeout
        Seconds to wait for another process's write lock before giving up.
    synchronous
        SQLite ``synchronous`` pragma; ``FULL`` (default) survives power loss, ``NORMAL``
        only process crashes.
    metrics
        Optional :class:`~notifiers.metrics.NotifierMetrics`; duplicates are counted there.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 10.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        metrics: NotifierMetrics | None = None,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be 'FULL' or 'NORMAL'")
        self.path = Path(path)
        self._metrics = metrics
        self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
        self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = self._wal(busy_timeout)
        if str(mode).lower() != "wal":
            raise RuntimeError(f"outbox {self.path}: could not switch to WAL mode (got {mode})")
        self._conn.execute(f"PRAGMA synchronous = {synchronous}")
        with self._write():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._conn.execute(statement)
            if _rebuild_for_new_statuses(self._conn):
                log.info("outbox %s: table rebuilt for the status 'superseded'", self.path)
                for statement in _SCHEMA.split(";"):  # (its indexes went with the old table)
                    if statement.strip():
                        self._conn.execute(statement)

    # -- plumbing ---------------------------------------------------------------------------

    def _wal(self, busy_timeout: float) -> str:
        """Switch a new outbox to WAL mode. SQLite does not wait for the busy timeout here:
        two processes opening a new outbox at once (the flow's processes, two senders) see
        "database is locked" at once; so wait here, up to ``busy_timeout``."""
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                return str(self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction that takes the write lock up front."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r})"

    # -- the flow's side --------------------------------------------------------------------

    def enqueue(
        self, alert: Mapping[str, Any], recipient_ref: str, *, now: datetime | None = None
    ) -> bool:
        """Add one alert for ``recipient_ref``. Returns True if new, False if a duplicate."""
        return self.enqueue_many([(alert, recipient_ref)], now=now).inserted == 1

    def enqueue_many(
        self,
        items: Iterable[tuple[Mapping[str, Any], str]],
        *,
        now: datetime | None = None,
    ) -> EnqueueResult:
        """Add many ``(alert, recipient_ref)`` pairs in one transaction.

        Alerts whose ``alert_key`` is already present (from an earlier call, a replay after a
        crash, or earlier in the same batch) are skipped and counted as duplicates. Alerts for
        a suppressed recipient are stored with status ``suppressed``.
        """
        ts = _ts(now or _now())
        params = [self._params(alert, ref, ts) for alert, ref in items]
        if not params:
            return EnqueueResult(0, 0)
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(_INSERT, params)
            inserted = conn.total_changes - before
        result = EnqueueResult(inserted, len(params) - inserted)
        if result.duplicates:
            log.info("outbox: %d duplicate alert(s) ignored", result.duplicates)
            if self._metrics is not None:
                self._metrics.duplicates.inc(result.duplicates)
        return result

    @staticmethod
    def _params(alert: Mapping[str, Any], recipient_ref: str, ts: float) -> tuple:
        key = alert.get("alert_key")
        if not isinstance(key, str) or not key:
            raise ValueError("alert has no alert_key")
        kind = alert.get("kind")
        if kind not in KINDS:
            raise ValueError(f"alert {key}: kind must be one of {', '.join(sorted(KINDS))}")
        if not isinstance(recipient_ref, str) or not recipient_ref:
            raise ValueError(f"alert {key}: recipient_ref is empty")
        payload = json.dumps(
            dict(alert), sort_keys=True, separators=(",", ":"), default=_json_default
        )
        return (key, recipient_ref, kind, payload, ts)

    # -- the sender's side ------------------------------------------------------------------

    def claim_due(
        self, now: datetime, limit: int = 100, *, lease: float = 300.0
    ) -> list[OutboxRow]:
        """Atomically take up to ``limit`` rows that are due at ``now``.

        Claimed rows become ``sending`` with a lease of ``lease`` seconds. Rows whose lease ran
        out (the sender died mid-batch) are due again and taken like pending ones. In the
        order they were queued, and a customer's messages in their order: a row waits while an
        earlier one to the same customer is still to go and not due (a retry, quiet hours,
        another sender's lease), so that "moving again" never arrives before "running late".
        """
        ts = _ts(now)
        with self._write() as conn:
            # per customer met: their first message still to go and not due, and when it is
            # due (SQLite gives the bare column of the MIN(id) row), or (None, None)
            waiting: dict[str, tuple[int | None, float | None]] = {}
            rows, later = [], []
            for r in conn.execute(  # the open rows in queue order (a partial index)
                f"SELECT id, {_ROW_COLUMNS} FROM outbox INDEXED BY outbox_open"  # noqa: S608
                " WHERE status IN ('pending', 'sending') AND next_attempt_at <= ?"
                " ORDER BY id",
                (ts,),
            ):
                first = waiting.get(r[2])  # (r[2]: recipient_ref)
                if first is None:
                    first = waiting[r[2]] = conn.execute(
                        "SELECT MIN(id), next_attempt_at FROM outbox WHERE recipient_ref = ?"
                        " AND status IN ('pending', 'sending') AND next_attempt_at > ?",
                        (r[2], ts),
                    ).fetchone()
                if first[0] is not None and first[0] < r[0]:
                    # an earlier message to this customer has not gone: due with it, not
                    # walked over again by every claim until then
                    later.append((first[1], r[0]))
                    continue
                rows.append(r)
                if len(rows) >= limit:
                    break
            conn.executemany("UPDATE outbox SET next_attempt_at = ? WHERE id = ?", later)
            conn.executemany(
                "UPDATE outbox SET status = 'sending', next_attempt_at = ?, updated_at = ?"
                " WHERE id = ?",
                [(ts + lease, ts, r[0]) for r in rows],
            )
        out = []
        for r in rows:
            row = self._row(r[1:])
            if row.status == "sending":
                log.warning(
                    "outbox: lease expired for alert %s; taking it again (may duplicate)",
                    row.alert_key,
                )
            out.append(dataclasses.replace(row, lease_until=ts + lease))
        return out

    def renew(self, row: OutboxRow, now: datetime, *, lease: float = 300.0) -> OutboxRow | None:
        """Right before sending a claimed row: extend its lease to ``now + lease`` if it is
        still this claim's (``sending`` with the lease :meth:`claim_due` gave it), else None:
        the lease ran out and another sender took the row (or it was settled), so this one
        must not send it. A sender renews each row as it reaches it, so a long batch does
        not hand its last rows to a second sender while it still means to send them."""
        until = _ts(now) + lease
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET next_attempt_at = ?, updated_at = ?"
                " WHERE alert_key = ? AND status = 'sending' AND next_attempt_at = ?",
                (until, _ts(now), row.alert_key, row.lease_until),
            )
        return dataclasses.replace(row, lease_until=until) if cur.rowcount == 1 else None

    def mark_sent(self, key: str, when: datetime) -> bool:
        """Record that the SMTP server accepted the message. Call only after acceptance."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET status = 'sent', sent_at = ?, updated_at = ?,"
                " attempts = attempts + 1, last_error_code = NULL"
                " WHERE alert_key = ? AND status != 'sent'",
                (_ts(when), _now().timestamp(), key),  # (updated_at: wall clock, as prune)
            )
        return cur.rowcount == 1

    def mark_retry(self, key: str, code: int, next_at: datetime) -> bool:
        """A transient failure: count the attempt, keep the code, try again at ``next_at``."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET status = 'pending', attempts = attempts + 1,"
                " last_error_code = ?, next_attempt_at = ?, updated_at = ?"
                " WHERE alert_key = ? AND status = 'sending'",
                (int(code), _ts(next_at), _now().timestamp(), key),
            )
        return cur.rowcount == 1

    def mark_failed(self, key: str, code: int, *, suppress_recipient: bool = False) -> bool:
        """A final failure: status ``failed_permanent`` with ``code``.

        With ``suppress_recipient`` (the server answered 5xx for this recipient) the recipient
        is added to the suppression list and its other unsent rows become ``suppressed``.
        """
        now = _now().timestamp()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET status = 'failed_permanent', attempts = attempts + 1,"
                " last_error_code = ?, updated_at = ?"
                " WHERE alert_key = ? AND status IN ('pending', 'sending')",
                (int(code), now, key),
            )
            changed = cur.rowcount == 1
            if changed and suppress_recipient:
                (ref,) = conn.execute(
                    "SELECT recipient_ref FROM outbox WHERE alert_key = ?", (key,)
                ).fetchone()
                self._suppress(conn, ref, "bounce", int(code), now)
        return changed

    def prune(self, keep_seconds: float, *, limit: int = 10_000) -> int:
        """Delete up to ``limit`` rows that are done with (sent, failed, suppressed,
        superseded) and unchanged for ``keep_seconds`` of wall-clock time (a finished row's
        ``updated_at`` is the wall clock when it finished, whatever clock the sender was
        given); returns how many. Pending and sending rows are never deleted. One short
        transaction over the partial index of finished rows: call it again for more."""
        before = _now().timestamp() - keep_seconds
        with self._write() as conn:
            cur = conn.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox INDEXED BY outbox_done"
                " WHERE status IN ('sent', 'failed_permanent', 'suppressed', 'superseded')"
                " AND updated_at < ? ORDER BY updated_at LIMIT ?)",
                (before, int(limit)),
            )
            return cur.rowcount

    def supersede(self, key: str) -> bool:
        """A delay message not sent yet whose all-clear is queued: ``superseded``, never sent
        (the customer reads the all-clear alone, not both in the same minute)."""
        now = _ts(_now())
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET status = 'superseded', updated_at = ?"
                " WHERE alert_key = ? AND status IN ('pending', 'sending')",
                (now, key),
            )
            return cur.rowcount == 1

    def defer(self, key: str, until: datetime) -> bool:
        """Put a claimed row back until ``until`` without counting an attempt (quiet hours)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET status = 'pending', next_attempt_at = ?, updated_at = ?"
                " WHERE alert_key = ? AND status = 'sending'",
                (_ts(until), _now().timestamp(), key),
            )
        return cur.rowcount == 1

    def release(
        self, rows: Iterable[str | OutboxRow], next_at: datetime, *, code: int | None = None
    ) -> int:
        """Put claimed rows back as pending at ``next_at`` without counting an attempt.

        Used when the relay is unreachable (the messages were never judged) and when a batch is
        abandoned. ``code``, if given, is kept as ``last_error_code``. A row given as the
        :class:`OutboxRow` that :meth:`claim_due` (or :meth:`renew`) returned is put back
        only while it is still that claim's: one another send run took after the lease ran
        out is left to that run. A key alone puts the row back whoever holds it.
        """
        ts, now = _ts(next_at), _now().timestamp()
        params = [
            (ts, now, code, row, None) if isinstance(row, str)
            else (ts, now, code, row.alert_key, row.lease_until)
            for row in rows
        ]
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(
                "UPDATE outbox SET status = 'pending', next_attempt_at = ?1, updated_at = ?2,"
                " last_error_code = COALESCE(?3, last_error_code)"
                " WHERE alert_key = ?4 AND status = 'sending'"
                " AND (?5 IS NULL OR next_attempt_at = ?5)",
                params,
            )
            return conn.total_changes - before

    # -- suppression ------------------------------------------------------------------------

    @staticmethod
    def _suppress(
        conn: sqlite3.Connection, ref: str, reason: str, code: int | None, now: float
    ) -> bool:
        cur = conn.execute(
            "INSERT OR IGNORE INTO suppressions (recipient_ref, reason, code, created_at)"
            " VALUES (?, ?, ?, ?)",
            (ref, reason, code, now),
        )
        conn.execute(
            "UPDATE outbox SET status = 'suppressed', updated_at = ?"
            " WHERE recipient_ref = ? AND status IN ('pending', 'sending')",
            (now, ref),
        )
        return cur.rowcount == 1

    def unsubscribe(self, recipient_ref: str, *, now: datetime | None = None) -> bool:
        """Stop all messages to ``recipient_ref``. Idempotent; True if this call changed it."""
        with self._write() as conn:
            return self._suppress(conn, recipient_ref, "unsubscribe", None, _ts(now or _now()))

    def unsuppress(self, recipient_ref: str) -> bool:
        """Lift a suppression (an operator fixed the address). Suppressed rows stay suppressed."""
        with self._write() as conn:
            cur = conn.execute("DELETE FROM suppressions WHERE recipient_ref = ?", (recipient_ref,))
        return cur.rowcount == 1

    def is_suppressed(self, recipient_ref: str) -> bool:
        row = self._conn.execute(
            "SELECT 1 FROM suppressions WHERE recipient_ref = ?", (recipient_ref,)
        ).fetchone()
        return row is not None

    def suppression(self, recipient_ref: str) -> tuple[str, int | None] | None:
        """``(reason, code)`` if the recipient is suppressed, else None."""
        row = self._conn.execute(
            "SELECT reason, code FROM suppressions WHERE recipient_ref = ?", (recipient_ref,)
        ).fetchone()
        return None if row is None else (row[0], row[1])

    # -- reading ----------------------------------------------------------------------------

    def get(self, key: str) -> OutboxRow | None:
        r = self._conn.execute(
            f"SELECT {_ROW_COLUMNS} FROM outbox WHERE alert_key = ?",  # noqa: S608
            (key,),
        ).fetchone()
        return None if r is None else self._row(r)

    def rows(self, status: str | None = None) -> list[OutboxRow]:
        """All rows (optionally of one status), oldest first. For tests and tooling."""
        sql = f"SELECT {_ROW_COLUMNS} FROM outbox"  # noqa: S608
        args: tuple = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        return [self._row(r) for r in self._conn.execute(sql + " ORDER BY id", args)]

    def depth(self) -> int:
        """Rows not yet finished (pending or sending)."""
        return _unfinished(self._conn)[0]

    def oldest_pending_age(self, now: datetime) -> float:
        """Seconds since the oldest unfinished row was enqueued (0.0 if none)."""
        oldest = _unfinished(self._conn)[1]
        return 0.0 if oldest is None else max(0.0, _ts(now) - oldest)

    def next_due(self) -> datetime | None:
        """When the earliest pending row is next due (after a retry back-off or quiet hours),
        or None when nothing is pending."""
        (at,) = self._conn.execute(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'"
        ).fetchone()
        return None if at is None else datetime.fromtimestamp(at, UTC)

    @staticmethod
    def read_unfinished(path: str | Path, now: datetime) -> tuple[int, float] | None:
        """:meth:`depth` and :meth:`oldest_pending_age` of the outbox at ``path``, read
        through a read-only connection (no write lock: a process that only watches the
        outbox, such as a metrics scrape, never delays its writer); None while it does not
        exist yet or cannot be read."""
        try:
            conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True,
                                   timeout=1.0)
        except sqlite3.Error:
            return None
        try:
            depth, oldest = _unfinished(conn)
        except sqlite3.Error:  # not created yet, or locked beyond the timeout
            return None
        finally:
            conn.close()
        return depth, 0.0 if oldest is None else max(0.0, _ts(now) - oldest)

    def stats(self) -> dict[str, int]:
        """Row counts by status (every status present, zero if none)."""
        counts = dict.fromkeys(STATUSES, 0)
        for status, n in self._conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status"):
            counts[status] = int(n)
        return counts

    @staticmethod
    def _row(r: tuple) -> OutboxRow:
        return OutboxRow(
            alert_key=r[0],
            recipient_ref=r[1],
            kind=r[2],
            alert=json.loads(r[3]),
            status=r[4],
            attempts=int(r[5]),
            next_attempt_at=_dt(r[6]),  # type: ignore[arg-type]
            created_at=_dt(r[7]),  # type: ignore[arg-type]
            sent_at=_dt(r[8]),
            last_error_code=r[9],
        )
