"""Start-up benchmark: does every camera of the real-time configuration go live, and how soon?

    python -m bench.bench_start [--cameras 16] [--runs 20] [--threads 2] [--limit 2]

Each run is a fresh child process, so that every run is a process's first start (a race on the first
frames of a process is exactly what this watches: docs/benchmarks.md, "Camera start-up"). The child
builds the Application of ``zsad run`` as bench_pipeline's real-time case does (loop:// synthetic cameras
at 25 fps with ``appsink sync``, event-media display branch, decoding threads at ``scheduler.decode_nice``,
ONNX Runtime with ``--threads`` threads), starts it, and waits on events, not by polling, until every
camera has delivered a frame to ``on_frame`` and reported ``live``, or ``--deadline`` passes. Per camera it
records the seconds from ``CameraGraph.start()`` to its first frame and to its ``live`` state (the engines'
warm-up, which runs before the graph starts, is reported apart). It then keeps the cameras running for
``--hold`` seconds and counts each one's frames, which catches a camera that went live and stopped, and it
counts the log records at ERROR and the start-watchdog rebuilds (a last-resort workaround that says so in
its warning).

A run passes when every camera was live within ``--limit`` seconds of the graph's start, delivered frames
during the hold, nothing was logged at ERROR and no pipeline was rebuilt by the start watchdog.

Writes bench/results/start_<N>cam.json (``--name`` picks another name).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    RESULTS_DIR,
    Assets,
    BenchError,
    add_asset_arguments,
    format_table,
    load_average,
    prepare_assets,
    run_child,
    site_config,
    write_result,
)
from core.config import ZsadConfig
from pipeline.inference import EngineError, EngineSet, load_engines
from pipeline.run import Application

log = logging.getLogger("bench.start")

__all__ = ["StartSpec", "main", "run_start_bench", "start_once", "summarise"]

RESULT_PREFIX = "BENCH-START "
# The start watchdog's warning (pipeline/cpu/graph.py) begins with this for every rebuild it makes.
_WATCHDOG_MARK = "start watchdog"


@dataclass
class StartSpec:
    """One start: ``cameras`` loop:// cameras, ONNX Runtime ``threads``; see the module docstring."""

    cameras: int = 16
    threads: int = 2
    fps: float = 25.0
    deadline_s: float = 30.0
    hold_s: float = 2.0
    limit_s: float = 2.0
    decode_nice: int | None = None  # None: the config's scheduler.decode_nice

    def validate(self) -> None:
        if self.cameras < 1:
            raise BenchError(f"--cameras must be >= 1, got {self.cameras}")
        if self.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {self.threads}")
        if not self.limit_s > 0 or not self.deadline_s >= self.limit_s:
            raise BenchError(f"need 0 < limit <= deadline, got {self.limit_s} and {self.deadline_s}")
        if self.hold_s < 0:
            raise BenchError(f"--hold must be >= 0, got {self.hold_s}")
        if self.decode_nice is not None and not 0 <= self.decode_nice <= 19:
            raise BenchError(f"--decode-nice must be 0..19, got {self.decode_nice}")


# --------------------------------------------------------------------------------------------------
# One start (child process)
# --------------------------------------------------------------------------------------------------


class _StartProbe:
    """First frame and ``live`` time of each camera, set from the cameras' threads; ``ready`` is set once
    every camera has both."""

    def __init__(self, cameras: Sequence[str]) -> None:
        self.cameras = list(cameras)
        self.lock = threading.Lock()
        self.graph_started: float | None = None
        self.first_frame: dict[str, float] = {}
        self.live: dict[str, float] = {}
        self.frames = dict.fromkeys(self.cameras, 0)
        self.ready = threading.Event()

    def frame(self, camera: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.frames[camera] = self.frames.get(camera, 0) + 1
            if camera not in self.first_frame:
                self.first_frame[camera] = now
                self._check()

    def state(self, camera: str, state: str) -> None:
        now = time.monotonic()
        with self.lock:
            if state == "live" and camera not in self.live:
                self.live[camera] = now
                self._check()

    def _check(self) -> None:
        if len(self.first_frame) == len(self.cameras) and len(self.live) == len(self.cameras):
            self.ready.set()

    def frame_counts(self) -> dict[str, int]:
        with self.lock:
            return dict(self.frames)


class _LogCounter(logging.Handler):
    """Counts ERROR records and start-watchdog warnings; keeps the first message of each."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors = 0
        self.first_error: str | None = None
        self.watchdog = 0
        self.first_watchdog: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR:
            self.errors += 1
            if self.first_error is None:
                self.first_error = (
                    message if record.exc_info is None else f"{message}: {record.exc_info[1]!r}"
                )
        elif _WATCHDOG_MARK in message:
            self.watchdog += 1
            if self.first_watchdog is None:
                self.first_watchdog = message


def _probed_application(cfg: ZsadConfig, engines: EngineSet, probe: _StartProbe) -> Application:
    """The product's Application, with the probe fed from its own frame and state callbacks."""

    class ProbedApplication(Application):
        def _on_frame(self, camera: str, pts: float, frame: Any) -> None:
            probe.frame(camera)
            super()._on_frame(camera, pts, frame)

        def _on_state(self, camera: str, state: str, detail: str) -> None:
            probe.state(camera, state)
            super()._on_state(camera, state, detail)

    app = ProbedApplication(cfg, engines, realtime=True)
    graph_start = app.graph.start

    def timed_start() -> None:
        probe.graph_started = time.monotonic()
        graph_start()

    app.graph.start = timed_start  # type: ignore[method-assign]
    return app


def _seconds(stamps: Mapping[str, float], origin: float) -> dict[str, float]:
    return {cid: round(t - origin, 3) for cid, t in sorted(stamps.items())}


def start_once(spec: StartSpec, assets: Assets, out: Path) -> dict[str, Any]:
    """Start the real-time Application once in this process and measure it; see the module docstring."""
    spec.validate()
    cfg = site_config(assets, spec.cameras, out, uri_scheme="loop", fps=spec.fps, threads=spec.threads)
    if spec.decode_nice is not None:
        cfg.scheduler.decode_nice = spec.decode_nice
    try:
        engines = load_engines(cfg)
    except EngineError as exc:
        raise BenchError(str(exc)) from exc
    counter = _LogCounter()
    logging.getLogger().addHandler(counter)
    probe = _StartProbe([c.id for c in cfg.enabled_cameras()])
    app = _probed_application(cfg, engines, probe)
    called = time.monotonic()
    try:
        app.start()
        started = probe.graph_started if probe.graph_started is not None else called
        ready = probe.ready.wait(max(0.0, started + spec.deadline_s - time.monotonic()))
        states = app.graph.states()
        before_hold = probe.frame_counts()
        if ready and spec.hold_s > 0:
            time.sleep(spec.hold_s)  # a measurement window, not a wait for something to happen
        after_hold = probe.frame_counts()
    finally:
        # A refused submit unblocks nothing here (real time never blocks), but the queues need not drain.
        app.scheduler.stop(drain=False)
        app.shutdown()
        logging.getLogger().removeHandler(counter)
    first = _seconds(probe.first_frame, started)
    live = _seconds(probe.live, started)
    held = {cid: after_hold.get(cid, 0) - before_hold.get(cid, 0) for cid in probe.cameras}
    not_live = {cid: state for cid, state in sorted(states.items()) if cid not in probe.live}
    worst_live = max(live.values()) if len(live) == len(probe.cameras) else math.inf
    worst_first = max(first.values()) if len(first) == len(probe.cameras) else math.inf
    stalled = sorted(cid for cid, n in held.items() if n == 0) if spec.hold_s > 0 else []
    ok = (
        ready
        and max(worst_live, worst_first) <= spec.limit_s
        and not stalled
        and counter.errors == 0
        and counter.watchdog == 0
    )
    return {
        "ok": bool(ok),
        "all_live": bool(ready),
        "warmup_s": round(started - called, 3),
        "max_first_frame_s": None if math.isinf(worst_first) else worst_first,
        "max_live_s": None if math.isinf(worst_live) else worst_live,
        "first_frame_s": first,
        "live_s": live,
        "not_live": not_live,
        "frames_during_hold": held,
        "stalled_during_hold": stalled,
        "error_records": counter.errors,
        "first_error": counter.first_error,
        "watchdog_rebuilds": counter.watchdog,
        "first_watchdog_warning": counter.first_watchdog,
        "load_average": load_average(),
    }


def _child(payload: str) -> int:
    data = json.loads(payload)
    spec = StartSpec(**data["spec"])
    assets = Assets.from_json(data["assets"])
    out = Path(tempfile.mkdtemp(prefix="zsad-bench-start-"))
    try:
        result = start_once(spec, assets, out)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# The series (parent process)
# --------------------------------------------------------------------------------------------------


def _start_in_child(spec: StartSpec, assets: Assets) -> dict[str, Any]:
    payload = json.dumps({"spec": asdict(spec), "assets": assets.to_json()})
    limit = spec.deadline_s + spec.hold_s + 180.0
    return run_child(
        "bench.bench_start",
        ["--child", payload],
        prefix=RESULT_PREFIX,
        limit_s=limit,
        what=f"a start of {spec.cameras} camera(s)",
    )


def summarise(runs: Sequence[Mapping[str, Any]], spec: StartSpec) -> dict[str, Any]:
    """Pass count and the distribution of every camera's first-frame and live times over all runs."""
    first = [t for r in runs for t in r["first_frame_s"].values()]
    live = [t for r in runs for t in r["live_s"].values()]

    def dist(values: Sequence[float]) -> dict[str, float | None]:
        if not values:
            return {"p50_s": None, "p95_s": None, "max_s": None}
        x = np.asarray(values, dtype=np.float64)
        return {
            "p50_s": round(float(np.percentile(x, 50)), 3),
            "p95_s": round(float(np.percentile(x, 95)), 3),
            "max_s": round(float(x.max()), 3),
        }

    return {
        "runs": len(runs),
        "runs_ok": sum(bool(r["ok"]) for r in runs),
        "runs_all_live": sum(bool(r["all_live"]) for r in runs),
        "limit_s": spec.limit_s,
        "cameras_never_live": sum(len(r["not_live"]) for r in runs),
        "error_records": sum(int(r["error_records"]) for r in runs),
        "watchdog_rebuilds": sum(int(r["watchdog_rebuilds"]) for r in runs),
        "first_frame": dist(first),
        "live": dist(live),
        "warmup_max_s": max((float(r["warmup_s"]) for r in runs), default=None),
    }


def run_start_bench(assets: Assets, spec: StartSpec, runs: int, progress: Any = print) -> dict[str, Any]:
    """``runs`` starts in a row, each in a fresh child; ``progress(line)`` gets one line per run."""
    spec.validate()
    if runs < 1:
        raise BenchError(f"--runs must be >= 1, got {runs}")
    results = []
    for i in range(runs):
        r = _start_in_child(spec, assets)
        r["run"] = i + 1
        results.append(r)
        progress(_run_line(r, spec))
    return {"settings": asdict(spec), "runs": results, "summary": summarise(results, spec)}


def _run_line(r: Mapping[str, Any], spec: StartSpec) -> str:
    verdict = "ok" if r["ok"] else "FAILED"
    live = len(r["live_s"])
    extra = f"; not live: {r['not_live']}" if r["not_live"] else ""
    if r["first_error"]:
        extra += f"; first error: {r['first_error']}"
    return (
        f"run {r['run']:2d}: {live}/{spec.cameras} live, last first frame {r['max_first_frame_s']} s, "
        f"last live {r['max_live_s']} s after the graph's start (warm-up before it {r['warmup_s']} s), "
        f"errors {r['error_records']}, watchdog rebuilds {r['watchdog_rebuilds']}: {verdict}{extra}"
    )


def start_table(doc: Mapping[str, Any], *, markdown: bool = False) -> str:
    rows = [
        [
            r["run"],
            f"{len(r['live_s'])}/{doc['settings']['cameras']}",
            r["max_first_frame_s"],
            r["max_live_s"],
            min(r["frames_during_hold"].values(), default=0),
            r["error_records"],
            r["watchdog_rebuilds"],
            "yes" if r["ok"] else "NO",
        ]
        for r in doc["runs"]
    ]
    headers = [
        "run",
        "live",
        "last first frame s",
        "last live s",
        "min frames in hold",
        "errors",
        "rebuilds",
        "ok",
    ]
    return format_table(headers, rows, markdown=markdown)


def summary_line(doc: Mapping[str, Any]) -> str:
    s = doc["summary"]
    st = doc["settings"]
    return (
        f"{s['runs_ok']}/{s['runs']} runs with every one of {st['cameras']} cameras live within "
        f"{s['limit_s']:g} s of the start; per camera, first frame p50 {s['first_frame']['p50_s']} s, "
        f"p95 {s['first_frame']['p95_s']} s, max {s['first_frame']['max_s']} s; "
        f"live max {s['live']['max_s']} s; "
        f"cameras never live {s['cameras_never_live']}, error records {s['error_records']}, "
        f"watchdog rebuilds {s['watchdog_rebuilds']}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_start", description=__doc__.split("\n\n")[0])
    add_asset_arguments(p)
    p.add_argument("--cameras", type=int, default=16, help="loop:// synthetic cameras at 25 fps")
    p.add_argument("--runs", type=int, default=20, help="starts in a row, each in a fresh process")
    p.add_argument(
        "--threads", type=int, default=2, help="ONNX Runtime threads (bench_pipeline --rt-threads)"
    )
    p.add_argument("--limit", type=float, default=2.0, help="seconds within which every camera must be live")
    p.add_argument("--deadline", type=float, default=30.0, help="longest wait for every camera to go live")
    p.add_argument("--hold", type=float, default=2.0, help="seconds kept running once every camera is live")
    p.add_argument(
        "--decode-nice", type=int, default=None, help="scheduler.decode_nice (default: the config's)"
    )
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the result file")
    p.add_argument("--name", default=None, help="result file name (default start_<N>cam)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one start (child)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.child is not None:
        return _child(args.child)
    spec = StartSpec(
        cameras=args.cameras,
        threads=args.threads,
        deadline_s=args.deadline,
        hold_s=args.hold,
        limit_s=args.limit,
        decode_nice=args.decode_nice,
    )
    try:
        load_before = load_average()
        assets = prepare_assets(args.work, args.config, args.checkpoint)
        doc = run_start_bench(assets, spec, args.runs)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    doc["assets"] = assets.describe()
    doc["load_average_before"] = load_before
    doc["load_average_after"] = load_average()
    path = write_result(args.name or f"start_{args.cameras}cam", doc, args.results)
    print()
    print(start_table(doc))
    print()
    print(summary_line(doc))
    print(f"load average before {load_before}, after {doc['load_average_after']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
