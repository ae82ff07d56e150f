"""Bytewax sinks: the durable outbox.

Alerts and dead letters go to Bytewax's ``FileSink`` (exactly-once with recovery: the file is
truncated to the snapshot on resume). The outbox sink is at-least-once from Bytewax's side and
idempotent on the other: the alert key is unique in the outbox, so a replayed alert is a
counted no-op and the customer still gets one message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from notifiers import Outbox

__all__ = ["OutboxSink"]


class _OutboxPartition(StatelessSinkPartition[tuple[str, dict[str, Any]]]):
    def __init__(self, path: Path) -> None:
        self._outbox = Outbox(path, synchronous="NORMAL")

    def write_batch(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        pairs = []
        for _, alert in items:
            ref = alert.get("recipient_ref")
            if ref:
                pairs.append(({k: v for k, v in alert.items() if k != "recipient_ref"}, ref))
        if pairs:
            self._outbox.enqueue_many(pairs)

    def close(self) -> None:
        self._outbox.close()


class OutboxSink(DynamicSink[tuple[str, dict[str, Any]]]):
    """Enqueues ``(shard, alert)`` items into the SQLite outbox at ``path``.

    At-least-once; duplicates are absorbed by the unique alert key (exactly one outbox row
    per alert). Alerts without a recipient reference are not enqueued (nobody to tell).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _OutboxPartition:
        return _OutboxPartition(self.path)
