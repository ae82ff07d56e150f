"""What Bytewax costs per item a source emits: one item per line against one per batch.

    .venv/bin/python bench/source_cost.py --data /tmp/nat2m4d_3m [--lines 1000000]

A source partition hands Bytewax a list of items per ``next_batch``; the engine moves each
item to the next step (here a ``flat_map_batch`` that counts, as the parse step's place).
This times the flow from the file's lines (in memory) to that step two ways, in CPU time per
line: items of ``(line number, line without its ending)``, blank lines left out (the flow's
sources before 2026-11-24), and one ``(first line number, [lines])`` item per batch (since).
Results go to bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import time
from itertools import islice
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main


class _Part(StatefulSourcePartition[Any, int]):
    def __init__(self, lines: list[bytes], batch: int, per_line: bool) -> None:
        self.lines, self.batch, self.per_line, self.i = lines, batch, per_line, 0

    def next_batch(self) -> list[Any]:
        if self.i >= len(self.lines):
            raise StopIteration
        first, chunk = self.i + 1, self.lines[self.i:self.i + self.batch]
        self.i += self.batch
        if self.per_line:
            return [(n, s) for n, line in enumerate(chunk, first) if (s := line.rstrip(b"\r\n"))]
        return [(first, chunk)]

    def snapshot(self) -> int:
        return self.i


class _Source(FixedPartitionedSource[Any, int]):
    def __init__(self, lines: list[bytes], batch: int, per_line: bool) -> None:
        self.args = (lines, batch, per_line)

    def list_parts(self) -> list[str]:
        return ["lines"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        return _Part(*self.args)


class _Drop(StatelessSinkPartition[Any]):
    def write_batch(self, items: list[Any]) -> None:
        pass


class _Sink(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Drop:
        return _Drop()


def one(lines: list[bytes], batch: int, per_line: bool) -> float:
    """CPU ns per line from the source to the step after it."""
    flow = Dataflow("source_cost")
    raw = op.input("in", flow, _Source(lines, batch, per_line))
    if per_line:  # the parse step's own copy of the lines, as it was
        counted = op.flat_map_batch("count", raw, lambda b: [("0", len([x for _, x in b]))])
    else:
        counted = op.flat_map_batch("count", raw, lambda b: [("0", sum(len(x) for _, x in b))])
    op.output("out", counted, _Sink())
    start = time.process_time()
    run_main(flow)
    return (time.process_time() - start) / len(lines) * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, required=True, help="simulator output directory")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=2000, help="lines per next_batch")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with open(args.data / "events.jsonl", "rb") as f:
        lines = list(islice(f, args.lines))
    for _ in range(args.repeat):
        per_line, per_batch = one(lines, args.batch, True), one(lines, args.batch, False)
        print(f"{len(lines):,} lines, batches of {args.batch}: an item per line "
              f"{per_line:.0f} ns/line, an item per batch {per_batch:.0f} ns/line")


if __name__ == "__main__":
    main()
