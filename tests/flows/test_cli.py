"""The `delaywatch replay` command: the flow over a file, as the operators run it."""

from __future__ import annotations

import gc
import json
import socket
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
    port = _free_port()
    done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"),
                                    "--out", str(tmp_path / "run"), "--metrics-port", str(port)])
    assert done.exit_code == 0, done.output
    assert f"metrics: http://127.0.0.1:{port}/metrics" in done.output
    _bind(port).close()  # the metrics server let the port go when the replay ended
    summary = json.loads(done.output.strip().splitlines()[-1])
    lines = sum(1 for _ in (demo_data / "events.jsonl").open())
    assert summary["events"] == lines
    assert (tmp_path / "run" / "alerts.jsonl").stat().st_size > 0
    # the flow's process keeps millions of long-lived objects: the cyclic collector's
    # thresholds are raised (bench/RESULTS.md, "The whole national replay")
    assert gc.get_threshold() == GC_THRESHOLDS


def _bind(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    return sock


def _free_port() -> int:
    with _bind(0) as sock:
        return sock.getsockname()[1]


def test_replay_with_its_metrics_port_taken_says_so_and_writes_nothing(
    demo_data: Path, tmp_path: Path
) -> None:
    """Another process (say a daemon still running) holds the port: a clear error naming the
    port and the option, not a traceback, before any output is made."""
    with _bind(0) as taken:
        taken.listen()
        port = taken.getsockname()[1]
        done = CliRunner().invoke(app, ["replay", str(demo_data / "events.jsonl"),
                                        "--out", str(tmp_path / "run"),
                                        "--metrics-port", str(port)])
    assert done.exit_code == 2, done.output
    assert f"127.0.0.1:{port}" in done.output and "--metrics-port" in done.output
    assert "Traceback" not in done.output
    assert not (tmp_path / "run").exists()
