"""The daemon's cost: `delaywatch replay --follow` catching up on a feed, then idle.

    .venv/bin/python bench/follow_cost.py --data DIR [--idle-seconds 60] [--port 9479] \
        [--processes N]

Starts the daemon as operations run it (a process of its own, ``--follow --recovery``,
metrics on) on ``DIR/events.jsonl`` (read in place: a followed feed is never written to),
waits until its metrics say every line is taken in and nothing is behind, then leaves it idle
for ``--idle-seconds`` and stops it with SIGTERM. Prints one JSON object: the CPU seconds
(user + system, from /proc) and events per CPU second of the catch-up, the CPU share of one
core while idle, minute by minute (the source looks for new lines every
``follow_poll_seconds``; in live mode the shard wakes when its clock, moving with wall time
for ``feed_silence_hold_seconds``, reaches something due, and each wake-up costs a snapshot
at the end of the epoch), the exit code and the peak resident memory.
The catch-up includes the process's start (imports, ~1-2 s). Compare it with
``bench/replay_cost.py --data DIR --gc cli`` (the same flow without follow). With
``--processes N`` the daemon is a cluster (``--processes N``, N shards): CPU and memory are
of every process it started (``per_process``: catch-up CPU, idle CPU, peak memory), the
lines taken in are summed over the N metrics ports. Linux only. Results go to
bench/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def _tree(pid: int) -> list[int]:
    """``pid`` and the processes it started (the cluster's, multiprocessing's helper)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        kids = sorted(c for c, pp in parent.items() if pp == p)
        found += kids
        todo += kids
    return found


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _metrics(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith("delaywatch_scan_events_total{"):
            out["taken"] = out.get("taken", 0.0) + float(line.rsplit(" ", 1)[1])
        elif line.startswith("delaywatch_feed_bytes_behind "):
            out["behind"] = float(line.rsplit(" ", 1)[1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--port", type=int, default=9479)
    ap.add_argument("--processes", type=int, default=1)
    args = ap.parse_args()
    events = args.data / "events.jsonl"
    with open(events, "rb") as fh:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 24), b""))
    work = Path(tempfile.mkdtemp(prefix="follow_cost_"))
    cmd = [sys.executable, "-c", "from flows.cli import app; app()", "replay", str(events),
           "--out", str(work / "run"), "--recovery", str(work / "rec"), "--follow",
           "--metrics-port", str(args.port), "--processes", str(args.processes)]
    t0 = time.perf_counter()
    daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            seen = _metrics(args.port)
            taken = sum(_metrics(args.port + i).get("taken", 0.0) for i in range(args.processes))
            if taken == lines and seen.get("behind") == 0:
                break
            if daemon.poll() is not None:
                raise SystemExit(daemon.stderr.read().decode()[-2000:])  # type: ignore[union-attr]
            time.sleep(1.0)  # (a scrape renders ~3,500 series: not too often)
        caught_up_wall = time.perf_counter() - t0
        pids = _tree(daemon.pid)
        each = [_cpu(p) for p in pids]
        caught_up_cpu = sum(each)
        minutes, last, start = [], caught_up_cpu, time.perf_counter()
        while (left := args.idle_seconds - (time.perf_counter() - start)) > 0:
            time.sleep(min(60.0, left))
            now = sum(_cpu(p) for p in pids)
            minutes.append(round(now - last, 2))
            last = now
        idle_cpu = last - caught_up_cpu
        per_process = [{"catch_up_cpu_s": round(c, 2), "idle_cpu_s": round(_cpu(p) - c, 2),
                        "peak_rss_mb": round(_peak_rss_mb(p))}
                       for p, c in zip(pids, each, strict=True)]
        peak = max(_peak_rss_mb(p) for p in pids)
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=120)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    print(json.dumps({
        "lines": lines, "catch_up_wall_s": round(caught_up_wall, 1),
        "catch_up_cpu_s": round(caught_up_cpu, 2),
        "events_per_cpu_s": round(lines / caught_up_cpu),
        "idle_seconds": args.idle_seconds, "idle_cpu_s": round(idle_cpu, 3),
        "idle_core_share": round(idle_cpu / args.idle_seconds, 4),
        "idle_cpu_s_per_minute": minutes,
        "exit_code": daemon.returncode, "peak_rss_mb": round(peak),
        "per_process": per_process,
        "run_dir": str(work),
    }))


if __name__ == "__main__":
    main()
