"""Soak run: many looping synthetic cameras in real time through the whole ``zsad run`` application, with
the process's RSS, open file descriptors and threads sampled at a fixed interval.

    python -m tests.reliability.soak --minutes 30 --cameras 8 --out bench/results/soak.json

The RSS slope (MB/min) is a least-squares fit over the samples after the warm-up (ring buffers, ONNX
Runtime arenas and GStreamer pools fill during the first minute). A flat run has a slope near 0 and the
same fd and thread counts after warm-up as at its end. tests/reliability/test_soak.py runs a 2-minute
version and asserts that.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["ProcessSample", "SoakResult", "fit_slope", "run_soak", "sample_process"]


@dataclass
class ProcessSample:
    """One sample of this process: seconds since the start, RSS in MB, open fds, OS threads."""

    t_s: float
    rss_mb: float
    fds: int
    threads: int
    frames_in: int = 0
    clips_dropped: int = 0


@dataclass
class SoakResult:
    """What a soak measured; ``rss_slope_mb_per_min`` is fitted over samples with ``t_s >= warmup_s``."""

    cameras: int
    minutes: float
    interval_s: float
    warmup_s: float
    rss_slope_mb_per_min: float
    rss_start_mb: float  # first sample after warm-up
    rss_end_mb: float
    rss_max_mb: float
    fds_after_warmup: list[int]
    threads_after_warmup: list[int]
    frames_in: int
    frames_processed: int
    clips_dropped: int
    alerts: int
    camera_states: dict[str, str]
    machine: dict[str, Any]
    started_utc: str
    samples: list[ProcessSample] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def sample_process(t_s: float) -> ProcessSample:
    """RSS (MB), open fds (``/proc/self/fd``) and OS threads (``/proc/self/task``) of this process."""
    import psutil

    proc = psutil.Process()
    return ProcessSample(
        t_s=round(t_s, 2),
        rss_mb=round(proc.memory_info().rss / 2**20, 2),
        fds=sum(1 for _ in Path("/proc/self/fd").iterdir()),
        threads=proc.num_threads(),
    )


def fit_slope(ts: list[float], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``ts`` (same units per unit of t); 0.0 for < 2 points."""
    n = len(ts)
    if n < 2:
        return 0.0
    mt = sum(ts) / n
    mv = sum(values) / n
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in zip(ts, values, strict=True)) / var


def _machine() -> dict[str, Any]:
    import psutil

    return {
        "node": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _build_world_in_child(root: Path) -> dict[str, Path]:
    """Build the tiny world in a child process, so the measured process never imports torch."""
    import subprocess

    code = (
        "import json, sys; from pathlib import Path; from tests.fixtures.run_world import build_world; "
        "print(json.dumps({k: str(v) for k, v in build_world(Path(sys.argv[1])).items()}))"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code, str(root)], cwd=repo, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"building the soak model failed:\n{done.stderr[-3000:]}")
    return {k: Path(v) for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def run_soak(
    minutes: float,
    cameras: int,
    *,
    work_dir: Path,
    interval_s: float = 10.0,
    warmup_s: float = 60.0,
    world: dict[str, Path] | None = None,
    on_sample: Any = None,
) -> SoakResult:
    """Build the tiny world under ``work_dir`` (unless given), run ``cameras`` loop:// cameras in real time
    for ``minutes`` through :class:`pipeline.run.Application`, sampling every ``interval_s`` seconds."""
    from core.config import parse_config
    from pipeline.inference import load_engines
    from pipeline.run import Application
    from tests.fixtures.run_world import CYCLING, site_config

    if world is None:
        world = _build_world_in_child(work_dir / "world")
    videos = sorted(world["videos"].glob("*.mp4"))
    cams = []
    for i in range(cameras):
        video = videos[i % len(videos)]
        cam: dict[str, Any] = {"id": f"soak-{i:02d}", "uri": f"loop://{video}", "context": "campus"}
        if video.stem in CYCLING:
            cam["alerts"] = CYCLING[video.stem]
        cams.append(cam)
    out = work_dir / "out"
    cfg_dict = site_config(world, out, cams, media={"pre_s": 1.0, "post_s": 1.0, "max_events_per_camera": 5})
    cfg = parse_config(json.dumps(cfg_dict), "<soak>")
    engines = load_engines(cfg)
    app = Application(cfg, engines, realtime=True)
    started_utc = datetime.now(timezone.utc).isoformat(timespec="seconds")
    machine = _machine()
    samples: list[ProcessSample] = []
    t0 = time.monotonic()
    app.start()
    try:
        end = t0 + minutes * 60.0
        next_t = t0
        while True:
            now = time.monotonic()
            if now >= next_t:
                s = sample_process(now - t0)
                s.frames_in = int(sum(st.frames_delivered for st in app.graph.stats().values()))
                s.clips_dropped = int(sum(c.dropped for c in app.scheduler.stats().cameras.values()))
                samples.append(s)
                if on_sample is not None:
                    on_sample(s)
                next_t += interval_s
            if now >= end:
                break
            time.sleep(max(0.05, min(next_t, end) - time.monotonic()))
        states = app.graph.states()
        stats = app.scheduler.stats()
    finally:
        app.shutdown()
    after = [s for s in samples if s.t_s >= warmup_s] or samples[-2:]
    slope = fit_slope([s.t_s / 60.0 for s in after], [s.rss_mb for s in after])
    frames_in = int(sum(app.metrics.frames_in.value(camera=c["id"]) for c in cams))
    processed = int(sum(app.metrics.frames_processed.value(camera=c["id"]) for c in cams))
    alerts = int(sum(app.metrics.alerts.value(camera=c["id"]) for c in cams))
    return SoakResult(
        cameras=cameras,
        minutes=minutes,
        interval_s=interval_s,
        warmup_s=warmup_s,
        rss_slope_mb_per_min=round(slope, 3),
        rss_start_mb=after[0].rss_mb,
        rss_end_mb=after[-1].rss_mb,
        rss_max_mb=max(s.rss_mb for s in samples),
        fds_after_warmup=sorted({s.fds for s in after}),
        threads_after_warmup=sorted({s.threads for s in after}),
        frames_in=frames_in,
        frames_processed=processed,
        clips_dropped=int(sum(c.dropped for c in stats.cameras.values())),
        alerts=alerts,
        camera_states=states,
        machine=machine,
        started_utc=started_utc,
        samples=samples,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=120.0, help="seconds excluded from the RSS fit")
    parser.add_argument("--out", type=Path, default=Path("bench/results/soak.json"))
    parser.add_argument(
        "--work-dir", type=Path, help="where the model, scenes and run output go (default: tmp)"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.cameras < 1 or args.interval <= 0:
        print("--minutes and --interval must be > 0 and --cameras >= 1")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="zsad-soak-") as tmp:
        work = args.work_dir or Path(tmp)
        lock = threading.Lock()

        def show(s: ProcessSample) -> None:
            with lock:
                print(
                    f"t={s.t_s:7.1f}s rss={s.rss_mb:7.1f} MB fds={s.fds} threads={s.threads} "
                    f"frames={s.frames_in} dropped={s.clips_dropped}",
                    flush=True,
                )

        result = run_soak(
            args.minutes,
            args.cameras,
            work_dir=work,
            interval_s=args.interval,
            warmup_s=args.warmup,
            on_sample=show,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = result.to_json()
    data["command"] = "python -m tests.reliability.soak " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(
        f"RSS slope {result.rss_slope_mb_per_min:+.3f} MB/min after {args.warmup:.0f} s warm-up "
        f"({result.rss_start_mb:.1f} -> {result.rss_end_mb:.1f} MB, max {result.rss_max_mb:.1f}); "
        f"fds {result.fds_after_warmup}; threads {result.threads_after_warmup}; "
        f"frames {result.frames_in}, dropped clips {result.clips_dropped}, alerts {result.alerts}; "
        f"states {sorted(set(result.camera_states.values()))}"
    )
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
