"""Benchmark the stall flow: end-to-end events/s with a breakdown, bytes per in-flight package.

    # throughput: simulate once (~1.1 M events), then replay end to end + parse + tracker alone
    .venv/bin/python bench/bench_flow.py throughput --data /tmp/bench_nat --packages 90000
    # facility: the facility stage's cost per event and per facility window, projected
    .venv/bin/python bench/bench_flow.py facility --data /tmp/nat1m_2m
    # memory: N packages in flight in one PackageTracker, RSS delta / N, pickle (snapshot) cost
    .venv/bin/python bench/bench_flow.py memory --packages 1000000 10000000

throughput
    ``--data`` is a simulator output directory (``events.jsonl``, ``facilities.csv``); it is
    generated with ``delaywatch simulate --scenario national --seed SEED --packages N`` when
    missing. Three timings, each over the whole file:

    * ``e2e``: ``flows.run.replay(JsonLinesSource(...), run_dir, load_settings(facilities=...),
      with_metrics=True)``, JSON lines in, alerts in ``alerts.jsonl`` and the SQLite outbox;
    * ``parse``: ``detectors.events.parse_batch`` over the file's lines in source-sized batches
      (lines already in memory; reading the file is timed apart as ``read``);
    * ``track``: the events (parsed beforehand) keyed by shard and fed to one
      :class:`~detectors.tracker.PackageTracker` per shard, as the flow does, engine-free;
      then ``in track``: the trackers run once more with every call to the stall detector and
      the delivery estimator recorded, the calls are replayed in order on fresh models and
      each is timed (``perf_counter_ns``, timing overhead subtracted), which splits ``track``
      into the models' time and the tracker's own code.

    ``engine+sinks`` is what is left of ``e2e``: Bytewax, the alert and dead-letter sinks, the
    outbox, metrics. Wall and CPU seconds are both reported (the machine may be shared).
    ``--profile FILE`` writes a pyinstrument HTML profile of one end-to-end replay.

memory
    Each N runs in a fresh child process, one after the other. The child builds a tracker as
    the flow does (``FlowContext.new_tracker``: detector, estimator, eta sampling), reads
    ``/proc/self/statm``, feeds N synthetic packages (a ``GX`` header, then an ``03`` scan, ids
    and recipient references shaped like the simulator's, all within a few hours of event time
    so nothing stalls or expires), reads RSS again: bytes per package = RSS delta / N. Then it
    times ``pickle.dumps`` of the tracker (what a Bytewax snapshot costs per shard) and
    ``pickle.loads`` (resume). ``--plain`` uses ``PackageTracker(StallDetector())`` instead.

facility
    The cost of facility incident detection in the flow, split the way it scales. Three
    end-to-end replays of the same file (CPU time): ``off`` (``incidents.enabled = false``),
    ``stats`` (facility statistics, watches and the network step on, but
    ``FacilityMonitor.assess`` replaced by a no-op) and ``on`` (the default). ``stats - off``
    is paid per event; ``on - stats`` per facility window assessed (a fixed number per day
    of event time: hubs x 96), so its share per event falls with traffic density. The run
    prints both and the end-to-end rate projected for a density of ``--events-per-window``
    events per assessed facility window (national volume: ~250 M events a day over ~270
    hubs x 96 windows, ~9,600; the simulator's samples are far sparser).

Results go to ``bench/RESULTS.md`` by hand (section "Flow").
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class _Timer:
    def __enter__(self) -> _Timer:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds / 1e3:,.1f} K/s" if seconds > 0 else "-"


# -- throughput ------------------------------------------------------------------------------
def _ensure_data(data: Path, packages: int, seed: int) -> None:
    if (data / "events.jsonl").is_file():
        return
    print(f"simulating national, {packages:,} packages, seed {seed} -> {data}", file=sys.stderr)
    subprocess.run([str(Path(sys.executable).parent / "delaywatch"), "simulate", "--scenario",
                    "national", "--packages", str(packages), "--seed", str(seed), "--out",
                    str(data)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)


def _e2e(events: Path, run_dir: Path, settings: object, profile: Path | None) -> dict:
    from flows.run import replay
    from flows.sources import JsonLinesSource

    if run_dir.exists():
        shutil.rmtree(run_dir)
    source = JsonLinesSource(events, batch_size=settings.batch_size)  # type: ignore[attr-defined]
    profiler = None
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    with _Timer() as t:
        summary = replay(source, run_dir, settings, with_metrics=True)  # type: ignore[arg-type]
    if profiler is not None:
        profiler.stop()
        profile.write_text(profiler.output_html())
    return {"events": summary.events, "wall": t.wall, "cpu": t.cpu,
            "run_main": summary.seconds, "alerts": summary.alerts, "outbox": summary.outbox,
            "in_flight": summary.in_flight}


def _breakdown(events: Path, settings: object) -> dict:
    from detectors.events import parse_batch
    from detectors.tracker import hash_id
    from flows.dataflow import FlowContext
    from flows.run import read_reference

    batch = settings.batch_size  # type: ignore[attr-defined]
    with _Timer() as t_read:
        with open(events, "rb") as fh:
            lines = [line.rstrip(b"\r\n") for line in fh]
    n = len(lines)
    evs: list = []
    with _Timer() as t_parse:
        for i in range(0, n, batch):
            ok, _bad = parse_batch(lines[i:i + batch])
            evs.extend(ok)
    del lines
    shards = settings.shards  # type: ignore[attr-defined]
    with _Timer() as t_key:
        keyed = [(str(hash_id(ev.package_id) % shards), ev) for ev in evs]
    names, tz_of = read_reference(settings.facilities)  # type: ignore[attr-defined]
    ctx = FlowContext(settings=settings, run_dir=Path("/nonexistent"), names=names,  # type: ignore[arg-type]
                      tz_of=tz_of)
    trackers = {str(k): ctx.new_tracker() for k in range(shards)}
    alerts = 0
    with _Timer() as t_track:
        # the flow hands each shard a batch of its events; the order within a shard is the same
        for i in range(0, len(keyed), batch):
            per: dict[str, list] = {}
            for key, ev in keyed[i:i + batch]:
                per.setdefault(key, []).append(ev)
            for key, values in per.items():
                alerts += len(_feed(trackers[key], values))
    del trackers
    models = _models_alone(ctx, keyed, batch, shards)
    return {"lines": n, "valid": len(evs), "alerts": alerts,
            "read": (t_read.wall, t_read.cpu), "parse": (t_parse.wall, t_parse.cpu),
            "key": (t_key.wall, t_key.cpu), "track": (t_track.wall, t_track.cpu),
            "models": models}


def _feed(tracker: object, events: list) -> list:
    """``tracker.process_batch(events)``, or ``process`` per event for a tracker without it
    (to bench an older tracker.py the same way)."""
    batch = getattr(tracker, "process_batch", None)
    if batch is not None:
        return batch(events)
    out: list = []
    for ev in events:
        out += tracker.process(ev)  # type: ignore[attr-defined]
    return out


class _Recorder:
    """Stands in for a tracker's detector or estimator: records each call (as ``(label,
    args)``, the label ``prefix + name``), then delegates."""

    def __init__(self, inner: object, calls: list, prefix: str, methods: tuple[str, ...]) -> None:
        self._inner = inner
        for name in methods:
            method = getattr(inner, name)
            setattr(self, name, self._wrap(prefix + name, method, calls))

    @staticmethod
    def _wrap(label: str, method: object, calls: list) -> object:
        def call(*args: object) -> object:
            calls.append((label, args))
            return method(*args)  # type: ignore[operator]

        return call

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


# what the tracker calls on its models (the hot loop: learn_gap, threshold_at; elsewhere the
# dict API): every one is recorded, none passes through unseen
_DETECTOR_CALLS = ("learn_gap", "threshold_at", "learn_one", "threshold")
_ESTIMATOR_CALLS = ("learn_one", "estimate")


def _models_alone(ctx: object, keyed: list, batch: int, shards: int) -> dict:
    """Time the detector's and estimator's share of ``track``: run the trackers once more with
    every call to them recorded, then replay exactly those calls, in order, on fresh models
    (they evolve the same way, so the replay does the same work)."""
    trackers = {str(k): ctx.new_tracker() for k in range(shards)}  # type: ignore[attr-defined]
    calls: dict[str, list] = {}
    for key, tracker in trackers.items():
        log = calls[key] = []
        tracker.detector = _Recorder(tracker.detector, log, "detector.", _DETECTOR_CALLS)
        tracker.estimator = _Recorder(tracker.estimator, log, "estimator.", _ESTIMATOR_CALLS)
    for i in range(0, len(keyed), batch):
        per: dict[str, list] = {}
        for key, ev in keyed[i:i + batch]:
            per.setdefault(key, []).append(ev)
        for key, values in per.items():
            _feed(trackers[key], values)
    del trackers
    counts: dict[str, int] = {}
    for log in calls.values():
        for label, _ in log:
            counts[label] = counts.get(label, 0) + 1

    fresh = {key: ctx.new_tracker() for key in calls}  # type: ignore[attr-defined]
    clock = time.perf_counter_ns
    spent: dict[str, int] = dict.fromkeys(counts, 0)
    empty = []  # the cost of timing a call that does nothing, to subtract
    for _ in range(100_000):
        t0 = clock()
        _noop(None)
        empty.append(clock() - t0)
    overhead = sorted(empty)[len(empty) // 2]
    for key, log in calls.items():
        models = {"detector": fresh[key].detector, "estimator": fresh[key].estimator}
        bound = {label: getattr(models[owner], name)
                 for label in counts for owner, _, name in [label.partition(".")]}
        for label, args in log:
            fn = bound[label]
            t0 = clock()
            fn(*args)
            spent[label] += clock() - t0 - overhead
    return {label: (spent[label] / 1e9, counts[label]) for label in sorted(spent)}


def _noop(x: object) -> None:
    return None


def throughput(args: argparse.Namespace) -> int:
    from flows.config import load_settings

    data = args.data.resolve()
    _ensure_data(data, args.packages, args.seed)
    events = data / "events.jsonl"
    facilities = data / "facilities.csv"
    overrides = {} if args.batch_size is None else {"batch_size": args.batch_size}
    if args.shards is not None:
        overrides["shards"] = args.shards
    settings = load_settings(facilities=facilities if facilities.is_file() else None, **overrides)
    print(f"# {events} ({events.stat().st_size / 1e6:,.0f} MB), shards {settings.shards}, "
          f"batch {settings.batch_size}, python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    rows = []
    for r in range(args.repeat):
        e2e = _e2e(events, args.run_dir.resolve(), settings,
                   args.profile if r == 0 else None)
        print(f"e2e run {r + 1}: {e2e['events']:,} events, wall {e2e['wall']:.1f} s "
              f"({_rate(e2e['events'], e2e['wall'])}), cpu {e2e['cpu']:.1f} s "
              f"({_rate(e2e['events'], e2e['cpu'])}); alerts {e2e['alerts']}, "
              f"outbox {e2e['outbox']}", flush=True)
        rows.append(e2e)
    best = min(rows, key=lambda x: x["wall"])
    parts = None
    if not args.no_breakdown:
        parts = _breakdown(events, settings)
        n = parts["lines"]
        print(f"breakdown over {n:,} lines ({parts['valid']:,} valid, {parts['alerts']:,} "
              "alerts from the engine-free trackers):")
        total_w = total_c = 0.0
        for name in ("read", "parse", "key", "track"):
            w, c = parts[name]
            total_w += w
            total_c += c
            print(f"  {name:<6} wall {w:6.2f} s ({_rate(n, w):>11})  cpu {c:6.2f} s "
                  f"({_rate(n, c):>11})  {c / n * 1e6:5.2f} us/event")
        print(f"  {'sum':<6} wall {total_w:6.2f} s ({_rate(n, total_w):>11})  cpu "
              f"{total_c:6.2f} s ({_rate(n, total_c):>11})")
        models = parts["models"]
        for label, (secs, calls) in sorted(models.items()):
            print(f"    in track: {label:<22} {calls:>9,} calls  cpu {secs:6.2f} s  "
                  f"{secs / max(calls, 1) * 1e6:5.2f} us/call  {secs / n * 1e6:5.2f} us/event")
        own = parts["track"][1] - sum(secs for secs, _ in models.values())
        print(f"    in track: tracker's own code (track - models): {own:.2f} s, "
              f"{own / n * 1e6:.2f} us/event")
        rest_c = best["cpu"] - total_c
        print(f"  engine+sinks (e2e cpu - sum): {rest_c:.2f} s, "
              f"{rest_c / n * 1e6:.2f} us/event")
    if args.json:
        print(json.dumps({"e2e": rows, "breakdown": parts}, default=str))
    return 0


def _facility_child(events: Path, facilities: Path, mode: str, run_dir: Path) -> dict:
    import detectors.facility as facility
    from flows.config import load_settings
    from flows.run import replay
    from flows.sources import JsonLinesSource

    assessed = [0]
    original = facility.FacilityMonitor.assess

    def counting(self: object, windows: list) -> list:
        assessed[0] += len(windows)
        return [] if mode == "stats" else original(self, windows)  # type: ignore[arg-type]

    facility.FacilityMonitor.assess = counting  # type: ignore[method-assign]
    incidents = {"enabled": mode != "off"}
    settings = load_settings(facilities=facilities if facilities.is_file() else None,
                             incidents=incidents)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    with _Timer() as t:
        summary = replay(JsonLinesSource(events), run_dir, settings, with_metrics=True)
    return {"mode": mode, "events": summary.events, "cpu": t.cpu, "wall": t.wall,
            "windows": assessed[0], "alerts": summary.alerts, "incidents": summary.incidents}


def facility(args: argparse.Namespace) -> int:
    data = args.data.resolve()
    _ensure_data(data, args.packages, args.seed)
    events = data / "events.jsonl"
    print(f"# {events} ({events.stat().st_size / 1e6:,.0f} MB), python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    runs = {}
    for mode in ("off", "stats", "on"):  # each in a fresh process (no warm caches, own patch)
        done = subprocess.run(
            [sys.executable, __file__, "facility", "--data", str(data), "--child", mode],
            check=True, capture_output=True, text=True)
        runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        r = runs[mode]
        print(f"{mode:<5} {r['events']:,} events, cpu {r['cpu']:.1f} s "
              f"({_rate(r['events'], r['cpu'])}), wall {r['wall']:.1f} s, facility windows "
              f"assessed {r['windows']:,}; alerts {r['alerts']}, incidents {r['incidents']}",
              flush=True)
    n = runs["off"]["events"]
    per_event = (runs["stats"]["cpu"] - runs["off"]["cpu"]) / n
    windows = max(runs["on"]["windows"], 1)
    per_window = (runs["on"]["cpu"] - runs["stats"]["cpu"]) / windows
    base = runs["off"]["cpu"] / n
    print(f"facility statistics (stats - off): {per_event * 1e6:.2f} us per event "
          f"({per_event / base:.0%} of the stall flow's {base * 1e6:.2f} us; includes closing "
          "the windows, itself a per-window cost, so the projection below is conservative)")
    print(f"facility monitor per facility window (on - stats): {per_window * 1e3:.3f} ms "
          f"({n / windows:,.0f} events per window in this file)")
    for density in sorted({n / windows, *args.events_per_window}):
        cost = base + per_event + per_window / density
        print(f"  projected at {density:>9,.0f} events per window: {1 / cost / 1e3:.1f} K "
              "events/s per process (CPU)")
    return 0


# -- memory ----------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def _memory_child(n: int, plain: bool) -> dict:
    from detectors import ScanEvent, StallDetector
    from detectors.tracker import PackageTracker
    from flows.config import load_settings
    from flows.dataflow import FlowContext

    if plain:
        tracker = PackageTracker(StallDetector())
    else:
        ctx = FlowContext(settings=load_settings(), run_dir=Path("/nonexistent"))
        tracker = ctx.new_tracker()
    t0 = 1_790_000_000
    span = 4 * 3600  # all within a few hours: no deadline is due, nothing expires
    customers = max(1, n * 6 // 10)
    # warm up the detector, caches and free lists on a few packages, then forget them
    warm = []
    for i in range(1000):
        pid = f"9300{i:018d}"
        warm += [ScanEvent(pid, "GX", "O0000001", t0, t0, service="ground",
                           promised_by_ts=t0 + 3 * 86400, recipient_ref="C99999999"),
                 ScanEvent(pid, "01", "O0000001", t0, t0)]
    _feed(tracker, warm)
    del warm
    gc.collect()
    rss0 = _rss()
    alerts = 0
    chunk = 1000  # packages per batch: 2,000 events, as the flow's source batches
    with _Timer() as feed:
        for start in range(0, n, chunk):
            events = []
            for i in range(start, min(start + chunk, n)):
                ts = t0 + i * span // n
                pid = f"9400{(i * 2_654_435_761) % (10 ** 18):018d}"  # scattered, unique
                fac = f"O{i % 1500:07d}"
                events += [
                    ScanEvent(pid, "GX", fac, ts, ts + 30,
                              service="express" if i % 3 == 0 else "ground",
                              promised_date="2026-11-07", promised_by_ts=ts + 3 * 86400,
                              destination="O0901003",
                              recipient_ref=f"C{(i * 7919) % customers:08d}"),
                    ScanEvent(pid, "03", fac, ts + 60, ts + 90)]
            alerts += len(_feed(tracker, events))
            tracker.take_windows()  # the flow hands closed facility windows on every batch
            if tracker.incidents is not None:
                tracker.incidents.take_figures()  # and the facility rows
            del events
    gc.collect()
    rss1 = _rss()
    assert tracker.in_flight == n + 0, (tracker.in_flight, n)
    with _Timer() as dump:
        blob = pickle.dumps(tracker, protocol=pickle.HIGHEST_PROTOCOL)
    size = len(blob)
    with _Timer() as load:
        back = pickle.loads(blob)
    assert back.in_flight == n
    del back, blob
    return {"packages": n, "plain": plain, "rss_before": rss0, "rss_after": rss1,
            "bytes_per_package": (rss1 - rss0) / n, "alerts": alerts,
            "feed_s": feed.wall, "feed_events_per_s": 2 * n / feed.wall,
            "pickle_s": dump.wall, "pickle_bytes": size, "unpickle_s": load.wall,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _hub_memory_child(hubs: int, days: int) -> dict:
    """The facility monitor's memory per hub: ``hubs`` facilities with traffic in every
    15-minute window for ``days`` days, windows closed and assessed as the flow does."""
    from detectors.facility import FacilityStats
    from flows.config import load_settings
    from flows.dataflow import FlowContext

    ctx = FlowContext(settings=load_settings(), run_dir=Path("/nonexistent"))
    gc.collect()
    rss0 = _rss()
    desk = ctx.new_desk()
    inc = ctx.settings.incidents
    stats = FacilityStats(inc.window_seconds)
    names = [f"P{i:04d}" for i in range(hubs)]
    t0 = 1_790_000_000 - 1_790_000_000 % 86400
    width = inc.window_seconds
    with _Timer() as run:
        for w in range(days * 86400 // width):
            start = t0 + w * width
            for name in names:
                for k in range(4):
                    stats.arrival(name, start + 60 * k)
                    stats.departure(name, start + 60 * k + 30, dwell_seconds=4 * 3600)
            desk.assess_closed(stats.close(start + width))
            desk.take_figures()  # the flow hands the rows on every batch
    gc.collect()
    rss1 = _rss()
    return {"hubs": hubs, "days": days, "bytes_per_hub": (rss1 - rss0) / hubs,
            "pickle_bytes_per_hub": len(pickle.dumps(desk, pickle.HIGHEST_PROTOCOL)) / hubs,
            "seconds": run.wall}


def _memory_run(options: list[str]) -> dict:
    """One memory measurement in a fresh process (its JSON line)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "memory", "--child", *options]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(res.stdout.strip().splitlines()[-1])


def memory(args: argparse.Namespace) -> int:
    print(f"# memory per in-flight package, {'plain' if args.plain else 'flow'} tracker, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}", flush=True)
    print("| packages | RSS delta MB | bytes/package | feed s | feed events/s | pickle s | "
          "pickle MB | pickle B/package | unpickle s | peak RSS MB |")
    print("|" + "---:|" * 10, flush=True)
    rows = []
    for n in args.packages:
        r = _memory_run(["--packages", str(n)] + (["--plain"] if args.plain else []))
        rows.append(r)
        print(f"| {n:,} | {(r['rss_after'] - r['rss_before']) / 2**20:,.0f} | "
              f"{r['bytes_per_package']:.0f} | {r['feed_s']:.1f} | "
              f"{r['feed_events_per_s'] / 1e3:,.0f} K | {r['pickle_s']:.2f} | "
              f"{r['pickle_bytes'] / 2**20:,.0f} | {r['pickle_bytes'] / n:.0f} | "
              f"{r['unpickle_s']:.2f} | {r['peak_rss'] / 2**20:,.0f} |", flush=True)
    if args.hubs:
        r = _memory_run(["--packages", "0", "--hubs", str(args.hubs)])
        rows.append(r)
        print(f"\nfacility monitor: {r['hubs']} hubs with traffic in every window for "
              f"{r['days']} days: {r['bytes_per_hub'] / 2**20:.2f} MB RSS per hub, "
              f"snapshot {r['pickle_bytes_per_hub'] / 2**20:.2f} MB per hub "
              f"({r['seconds']:.0f} s)", flush=True)
    if args.json:
        print(json.dumps(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    tp = sub.add_parser("throughput", help="end-to-end events/s and a breakdown")
    tp.add_argument("--data", type=Path, default=Path("/tmp/bench_nat"),
                    help="simulator output dir (generated if missing; default /tmp/bench_nat)")
    tp.add_argument("--packages", type=int, default=90_000,
                    help="packages to simulate when --data is missing (default 90000)")
    tp.add_argument("--seed", type=int, default=1)
    tp.add_argument("--run-dir", type=Path, default=Path("/tmp/dw-bench-flow/run"),
                    help="replay output dir, deleted first (default /tmp/dw-bench-flow/run)")
    tp.add_argument("--batch-size", type=int, default=None, help="source batch (default: settings)")
    tp.add_argument("--shards", type=int, default=None, help="state shards (default: settings)")
    tp.add_argument("--repeat", type=int, default=1, help="end-to-end runs (best is used)")
    tp.add_argument("--no-breakdown", action="store_true", help="end to end only")
    tp.add_argument("--profile", type=Path, default=None,
                    help="write a pyinstrument HTML profile of the first replay here")
    tp.add_argument("--json", action="store_true")
    fp = sub.add_parser("facility", help="facility detection cost: per event, per window")
    fp.add_argument("--data", type=Path, default=Path("/tmp/bench_nat"),
                    help="simulator output dir (generated if missing; default /tmp/bench_nat)")
    fp.add_argument("--packages", type=int, default=90_000)
    fp.add_argument("--seed", type=int, default=1)
    fp.add_argument("--events-per-window", type=float, nargs="*", default=[9600.0],
                    help="densities to project the end-to-end rate at (default 9600)")
    fp.add_argument("--child", choices=("off", "stats", "on"), help=argparse.SUPPRESS)
    mp = sub.add_parser("memory", help="bytes per in-flight package and snapshot cost")
    mp.add_argument("--packages", type=int, nargs="+", default=[1_000_000, 10_000_000])
    mp.add_argument("--plain", action="store_true",
                    help="PackageTracker(StallDetector()) instead of the flow's tracker")
    mp.add_argument("--hubs", type=int, default=270,
                    help="also measure the facility monitor's memory per hub with this many "
                         "hubs (default 270, about the national plants and NDCs; 0: skip)")
    mp.add_argument("--json", action="store_true")
    mp.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for attr in ("data", "run_dir"):
        path = getattr(args, attr, None)
        if path is not None and path.resolve().is_relative_to(REPO):
            ap.error(f"{path} is inside the repository; use a path under /tmp")
    if args.what == "memory" and args.child:
        if args.packages == [0]:  # the hub measurement
            print(json.dumps(_hub_memory_child(args.hubs, days=3)))
        else:
            print(json.dumps(_memory_child(args.packages[0], args.plain)))
        return 0
    if args.what == "facility":
        if args.child:
            data = args.data.resolve()
            print(json.dumps(_facility_child(
                data / "events.jsonl", data / "facilities.csv", args.child,
                Path(f"/tmp/dw-bench-facility/{args.child}"))))
            return 0
        return facility(args)
    return throughput(args) if args.what == "throughput" else memory(args)


if __name__ == "__main__":
    raise SystemExit(main())
