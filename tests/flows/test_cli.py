"""The `delaywatch replay` command: the flow over a file, as the operators run it."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import GC_THRESHOLDS, app


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


def test_replay_writes_the_run_and_collects_garbage_rarely(
    demo_data: Path, tmp_path: Path, thresholds: None
) -> None:
    gc.set_threshold(700, 10, 10)
    done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"),
                                    "--out", str(tmp_path / "run")])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output.strip().splitlines()[-1])
    lines = sum(1 for _ in (demo_data / "events.jsonl").open())
    assert summary["events"] == lines
    assert (tmp_path / "run" / "alerts.jsonl").stat().st_size > 0
    # the flow's process keeps millions of long-lived objects: the cyclic collector's
    # thresholds are raised (bench/RESULTS.md, "The whole national replay")
    assert gc.get_threshold() == GC_THRESHOLDS
