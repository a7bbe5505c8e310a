"""Pipeline benchmark: the real ``zsad run`` path (pipeline.run.Application: CPU GStreamer graph -> clip
assembly -> cross-camera batch scheduler -> ONNX Runtime backbone + DPC head -> fusion -> alert machine ->
event media buffers -> JSONL sink) on 1..16 synthetic cameras, next to its floor and baselines, in one run.

    python -m bench.bench_pipeline [--cameras 1,2,4,8,16] [--threads 1,2] [--rt-threads 2]

Cases, each in a fresh child process (clean RSS, no threads left over from the previous case):

* ``pure``: ClipInference alone (to_model_input + backbone + DPC head: the scheduler's ``infer``) on
  ready-made clips at batch 1, 4, ``max_batch`` and 16: pure inference throughput. Once before and once
  after the fast sweep, at each thread count.
* ``decode``: the same CameraGraph (model and display branches, as fast as possible) whose frames only go
  into the run's clip assembly (which, as in the run, reads only the frames a clip holds): the decode floor.
* ``fast``: the whole Application on loop:// cameras played as fast as possible. Offline runs over files
  back-pressure the decoder (the scheduler's submit waits for room), so nothing is dropped and scored
  clips/s is the sustained capacity. Latency here is mostly queueing and means little.
* ``naive``: bench_naive.py (OpenCV + PyTorch eager, batch 1, one camera at a time, same threads), one
  slot right before each fast case so that both see the same drift (A B A B ...).
* ``realtime``: the Application with loop:// cameras at their native 25 fps (``appsink sync``): does it
  keep up with N x 25 frames/s? Then the largest N between the last pass and the first failure is searched.
  Keeps up = no clip dropped, >= 95 % of the expected frames delivered, p95 latency <= ``--max-latency``,
  at most one clip per camera still unscored when the run stops, and no video looped before the window
  ended. A loop restarts the camera's stream, so its next clips need a history again and go unscored (3 of
  every 10 clips of an 8 s video at 10 fps): a case on looping videos measures less work than a live camera
  gives, so the videos are made long enough (:func:`realtime_video_frames`).

The appearance stream (``--appearance``, the default) runs only for a camera with an appearance memory,
which ``zsad calibrate`` fits and saves beside the camera's calibration file. So before the cases, each
synthetic video that a camera plays is calibrated once with the product's own code
(:func:`pipeline.cli.calibrate.calibrate_camera`, on that video played as a file), and every camera of a
case gets its own copy of its video's calibration (its memory linked beside it): each camera loads its own
memory, as on a site, so RSS per camera includes one memory. ``pure`` cases give every batch slot a memory
too. ``--no-appearance`` leaves the cameras uncalibrated, as before: the appearance engine is loaded but
never runs. Each pipeline case counts the clips scored with the appearance stream.

Throughput is counted between ``warmup`` seconds after the start and the stop. Camera-frames/s = scored
clips/s x ``clip_hop`` (each clip advances its camera by ``clip_hop`` sampled frames). Latency: per clip,
from the moment the graph delivered the clip's last frame (``Clip.created_s``, stamped when the frame is
pushed) to the moment its fused score has gone through the alert machine and any alert record has been
handed to the sinks (``Application._on_result`` returned). Alert records, when any fire, are timed alike.

Writes bench/results/pipeline.json.
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
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.bench_naive import run_naive
from bench.common import (
    RESULTS_DIR,
    VIDEO_FPS,
    Assets,
    BenchError,
    add_asset_arguments,
    format_table,
    latency_stats,
    load_average,
    parse_int_list,
    prepare_assets,
    run_child,
    site_config,
    write_result,
)
from core.config import load_config
from engines.backends.onnxruntime import usable_cpus
from pipeline.cli.calibrate import CalibrationFootageError, calibrate_camera
from pipeline.clips import Clip, ClipAssembler
from pipeline.cpu.graph import CameraGraph
from pipeline.inference import ClipInference, EngineError, appearance_expectation, load_engines
from pipeline.memory_streams import MODEL_FILES
from pipeline.run import DISPLAY_SIZE, Application
from plugins.appearance import AppearanceError, AppearanceMemories, load_memory, memory_path
from plugins.fusion import CalibrationError
from plugins.streams import APPEARANCE

log = logging.getLogger("bench.pipeline")

__all__ = [
    "CaseSpec",
    "calibrate_videos",
    "camera_calibrations",
    "main",
    "memory_from_one_camera",
    "memory_per_camera",
    "pipeline_tables",
    "pure_at",
    "run_case",
    "run_case_in_child",
    "run_pipeline_bench",
    "time_clip_inference",
]

RESULT_PREFIX = "BENCH-RESULT "
#: Calibration footage per video: the video is played this many frames' worth (whole repeats, at least one),
#: so that a short video still gives ``zsad calibrate`` its minimum of scored clips, and the stationary
#: stream two full windows per time fold (18 frames 0.4 s apart in each half: 200 frames gave it none, so
#: the cameras ran without it).
CALIBRATION_MIN_FRAMES = 600
MODES = ("pure", "decode", "fast", "realtime", "naive")


@dataclass
class CaseSpec:
    """One measured case. ``mode`` is one of :data:`MODES`; see the module docstring."""

    mode: str
    cameras: int = 1
    duration_s: float = 8.0
    warmup_s: float = 2.0
    threads: int | None = None  # None: the config's engines.threads
    max_batch: int | None = None  # None: the config's scheduler.max_batch
    queue_size: int | None = None  # None: the config's scheduler.queue_size
    fps: float = 25.0
    batches: list[int] = field(default_factory=lambda: [1, 4, 8, 16])  # pure
    min_time_s: float = 1.0  # pure: seconds per batch size
    first_camera: int = 0  # naive: first camera index
    sample_interval_s: float = 0.5
    keep_samples: bool = False
    max_latency_s: float = 1.0  # realtime: p95 bound for "keeps up"
    # One calibration file per video (calibrate_videos): camera i gets a copy of video i % len's. Empty:
    # uncalibrated cameras, without appearance memories, so the appearance stream never runs.
    calibrations: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise BenchError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.cameras < 1:
            raise BenchError(f"cameras must be >= 1, got {self.cameras}")
        if self.duration_s <= 0 or not 0 <= self.warmup_s < self.duration_s:
            raise BenchError(f"need 0 <= warmup < duration, got {self.warmup_s} and {self.duration_s}")


# --------------------------------------------------------------------------------------------------
# Process sampling
# --------------------------------------------------------------------------------------------------


class ProcessSampler:
    """Samples this process every ``interval_s`` on a daemon thread: ``(t, rss_mb, cpu_s, extra)`` where
    ``cpu_s`` is user+system CPU seconds so far and ``extra`` is what ``probe()`` returns."""

    def __init__(self, interval_s: float, probe: Any = None) -> None:
        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.probe = probe
        self.samples: list[tuple[float, float, float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def sample(self) -> tuple[float, float, float, dict[str, Any]]:
        cpu = self._proc.cpu_times()
        rss = self._proc.memory_info().rss / 2**20
        extra = self.probe() if self.probe is not None else {}
        s = (time.monotonic(), rss, cpu.user + cpu.system, extra)
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        self.sample()

    def window(self, t0: float, t1: float) -> list[tuple[float, float, float, dict[str, Any]]]:
        return [s for s in self.samples if t0 <= s[0] <= t1]


#: The longest wait for every camera of a case to be live before its clock starts.
LIVE_DEADLINE_S = 120.0
#: Camera states a case waits no longer for: live, or ended (it will not go live).
_SETTLED = ("live", "eos", "failed")


def _clock_after_live(states: Any, deadline_s: float = LIVE_DEADLINE_S) -> tuple[float, float]:
    """Wait until every camera of ``states()`` (camera -> state) is live, or has ended (eos, failed: it
    will not go live), at most ``deadline_s``; ``(clock, waited_s)``: the monotonic time then, from which a
    case counts its warm-up and duration, and how long the wait took. Counted from the start instead, a
    machine slow to start the cameras shortened the measured window, and a short case could measure before
    the first frame (a loaded CI machine). Raises :class:`BenchError` when the deadline passes: a window of
    cameras still starting measures their start, not the pipeline."""
    t0 = time.monotonic()
    end = t0 + deadline_s
    while True:
        current = states()
        if current and all(st in _SETTLED for st in current.values()):
            now = time.monotonic()
            return now, now - t0
        if time.monotonic() >= end:
            starting = sorted(c for c, st in current.items() if st not in _SETTLED)
            raise BenchError(f"cameras not live within {deadline_s:g} s: {', '.join(starting)}")
        time.sleep(0.02)


def _rss_summary(sampler: ProcessSampler, t0: float, t1: float) -> dict[str, float]:
    rss = [s[1] for s in sampler.window(t0, t1)] or [sampler.samples[-1][1]]
    return {
        "rss_median_mb": round(float(np.median(rss)), 1),
        "rss_max_mb": round(float(max(rss)), 1),
        "rss_end_mb": round(float(sampler.samples[-1][1]), 1),
    }


# --------------------------------------------------------------------------------------------------
# Cases (run in the child process)
# --------------------------------------------------------------------------------------------------


class _Counters:
    """Frame and clip counters kept by the camera threads (one key per camera: a camera's callbacks are
    serialised, so no lock is needed) and clip timings kept by the scheduler thread, in flat float arrays
    so that a long soak does not grow memory by itself (16 bytes a clip)."""

    def __init__(self) -> None:
        self.frames: dict[str, int] = {}
        self.clips: dict[str, int] = {}
        self.created = array("d")  # Clip.created_s of each processed clip, in processing order
        self.done = array("d")  # monotonic time its result went through the alert machine
        self.scored = 0
        self.appearance = 0  # scored clips whose scores include the appearance stream
        self.alert_latency = array("d")  # per published "open" alert record
        self.alert_records = 0

    def frame(self, camera: str) -> None:
        self.frames[camera] = self.frames.get(camera, 0) + 1

    def clip(self, camera: str) -> None:
        self.clips[camera] = self.clips.get(camera, 0) + 1

    def snapshot(self) -> dict[str, float]:
        return {
            "t": time.monotonic(),
            "frames": sum(self.frames.values()),
            "clips": sum(self.clips.values()),
            "processed": len(self.done),
        }


def _timed_application(cfg: Any, engines: Any, realtime: bool, counters: _Counters) -> Any:
    """The product's Application with counters and timestamps taken around its own callbacks."""

    class TimedApplication(Application):
        def __init__(self) -> None:
            super().__init__(cfg, engines, realtime=realtime)
            self._current: Any = None
            publish = self.sinks.publish

            def timed_publish(record: Mapping[str, Any]) -> None:
                publish(record)
                clip = self._current
                if clip is not None:
                    counters.alert_records += 1
                    if record.get("status") == "open":
                        counters.alert_latency.append(time.monotonic() - clip.created_s)

            # CameraAlerts holds this same SinkFanout object, so its publish calls come through here.
            self.sinks.publish = timed_publish  # type: ignore[method-assign]
            submit = self.scheduler.submit

            def counted_submit(clip: Any, *args: Any, **kwargs: Any) -> bool:
                counters.clip(clip.camera_id)
                return bool(submit(clip, *args, **kwargs))

            self.scheduler.submit = counted_submit  # type: ignore[method-assign]

        def _on_frame(self, camera: str, pts: float, frame: Any) -> None:
            counters.frame(camera)
            super()._on_frame(camera, pts, frame)

        def _on_result(self, clip: Any, result: Any) -> None:
            self._current = clip
            try:
                super()._on_result(clip, result)
            finally:
                self._current = None
            counters.created.append(clip.created_s)
            counters.done.append(time.monotonic())
            counters.scored += result.scores is not None
            counters.appearance += result.scores is not None and APPEARANCE in result.scores.scores

    return TimedApplication()


def camera_calibrations(
    calibrations: Sequence[str | Path], videos: int, cameras: int, out: Path
) -> list[Path]:
    """Per camera ``i``, a copy under ``out/calib/`` of the calibration of the video it plays
    (``calibrations[i % videos]``), with that calibration's appearance memory, stationary model and objects
    model linked beside the copy.

    A copy per camera, not one shared file: the product keeps state per calibration file (the learned levels
    beside it), and each camera loads the memory it finds beside its own calibration."""
    if not calibrations:
        raise BenchError("no calibration files to give the cameras")
    folder = out / "calib"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(cameras):
        source = Path(calibrations[(i % videos) % len(calibrations)])
        target = folder / f"cam{i:02d}.json"
        shutil.copyfile(source, target)
        # The per-camera artefacts zsad calibrate writes beside a calibration: the appearance memory and the
        # memory streams' models (without the stationary model linked the cameras ran without that stream).
        for beside in (memory_path, *(file.path_of for file in MODEL_FILES)):
            made = beside(source)
            if made.is_file():
                beside(target).symlink_to(made.resolve())
        paths.append(target)
    return paths


def _pipeline_case(spec: CaseSpec, assets: Assets, out: Path) -> dict[str, Any]:
    realtime = spec.mode == "realtime"
    calibrations = (
        camera_calibrations(spec.calibrations, len(assets.videos), spec.cameras, out)
        if spec.calibrations
        else None
    )
    cfg = site_config(
        assets,
        spec.cameras,
        out,
        uri_scheme="loop",
        fps=spec.fps,
        threads=spec.threads,
        max_batch=spec.max_batch,
        queue_size=spec.queue_size,
        calibrations=calibrations,
    )
    try:
        engines = load_engines(cfg)
    except EngineError as exc:
        raise BenchError(str(exc)) from exc
    counters = _Counters()
    app = _timed_application(cfg, engines, realtime, counters)

    def probe() -> dict[str, Any]:
        st = app.scheduler.stats()
        return {
            "dropped": sum(c.dropped for c in st.cameras.values()),
            "depth": sum(c.depth for c in st.cameras.values()),
            "processed": len(counters.done),
            # ONNX Runtime's arena grows to the largest batch seen: it explains steps in RSS.
            "max_batch_seen": max(st.batch_sizes, default=0),
        }

    sampler = ProcessSampler(spec.sample_interval_s, probe)
    sampler.start()
    app_started = time.monotonic()
    app.start()
    # After the engines' warm-up, the graph's start and every camera's first frame: the cameras' clock.
    try:
        started, live_after_s = _clock_after_live(app.graph.states)
    except BenchError:
        sampler.stop()
        app.scheduler.stop(drain=False)
        app.shutdown()
        raise
    time.sleep(max(0.0, started + spec.warmup_s - time.monotonic()))
    first, first_s = counters.snapshot(), sampler.sample()
    time.sleep(max(0.0, started + spec.duration_s - time.monotonic()))
    last, last_s = counters.snapshot(), sampler.sample()
    sched = app.scheduler.stats()
    states = app.graph.states()
    memories = len(app.outputs.memories)
    stationary = len(app.outputs.stationary)
    objects = len(app.outputs.objects)
    sampler.stop()
    # Discard what is still queued (counted as pending below) before the product's shutdown: draining full
    # queues of 16 cameras would take longer than the case itself, and a refused submit unblocks a decoder
    # that waits for room. Application.shutdown() then stops the graph and the rest.
    app.scheduler.stop(drain=False)
    app.shutdown()

    w0, w1 = first["t"], last["t"]
    window = w1 - w0
    hop = cfg.model.preprocess.clip_hop
    frames = last["frames"] - first["frames"]
    assembled = last["clips"] - first["clips"]
    processed = last["processed"] - first["processed"]
    n_done = int(last["processed"])
    created = np.frombuffer(counters.created, dtype=np.float64)[:n_done]
    done = np.frombuffer(counters.done, dtype=np.float64)[:n_done]
    in_window = (created >= w0) & (created <= w1)
    latencies = (done - created)[in_window]
    pending = assembled - int(in_window.sum())  # assembled in the window, not scored by the stop
    dropped = last_s[3]["dropped"] - first_s[3]["dropped"]
    clips_per_s = processed / window
    out_doc: dict[str, Any] = {
        "live_after_s": round(live_after_s, 3),  # from the start until every camera was live
        "window_s": round(window, 3),
        "frames_delivered": int(frames),
        "frames_per_s": round(frames / window, 2),
        "clips_assembled": int(assembled),
        "clips_processed": int(processed),
        "clips_scored_total": counters.scored,
        "clips_with_appearance_total": counters.appearance,
        "cameras_with_memory": memories,
        "cameras_with_stationary_model": stationary,
        "cameras_with_objects_model": objects,
        "clips_per_s": round(clips_per_s, 3),
        "camera_frames_per_s": round(clips_per_s * hop, 2),
        "clips_dropped": int(dropped),
        "clips_dropped_total": sum(c.dropped for c in sched.cameras.values()),
        "clips_pending_at_stop": int(pending),
        "latency": latency_stats(latencies.tolist()),
        "alerts": {
            "records": counters.alert_records,
            "opened": len(counters.alert_latency),
            "latency": latency_stats(counters.alert_latency),
        },
        "mean_batch": round(sched.mean_batch_size, 2),
        "batch_sizes": {str(k): v for k, v in sorted(sched.batch_sizes.items())},
        "infer_latency_p50_ms": round(sched.infer_latency_p50_s * 1e3, 2),
        "infer_latency_p95_ms": round(sched.infer_latency_p95_s * 1e3, 2),
        "cpu_percent": round(100.0 * (last_s[2] - first_s[2]) / window, 1),
        "camera_states": states,
        "threads": cfg.engines.threads,
        "max_batch": cfg.scheduler.max_batch,
        "queue_size": cfg.scheduler.queue_size,
        "clip_hop": hop,
        **_rss_summary(sampler, w0, w1),
    }
    if realtime:
        expected = spec.cameras * spec.fps * window
        delivered_ratio = frames / expected if expected else 0.0
        processed_ratio = processed / assembled if assembled else 0.0
        p95 = float(np.percentile(latencies, 95)) if latencies.size else math.inf
        out_doc["expected_frames"] = round(expected)
        out_doc["delivered_ratio"] = round(delivered_ratio, 4)
        out_doc["processed_ratio"] = round(processed_ratio, 4)
        # A camera's first frame comes after app.start(): no camera has played longer than this.
        video_s = assets.video_frames / VIDEO_FPS
        looped = w1 - app_started > video_s
        out_doc["video_s"] = round(video_s, 1)
        out_doc["looped_in_window"] = looped
        out_doc["keeps_up"] = bool(
            dropped == 0
            and delivered_ratio >= 0.95
            and p95 <= spec.max_latency_s
            and pending <= spec.cameras
            and not looped
        )
    if spec.keep_samples:
        out_doc["samples"] = [
            {"t_s": round(s[0] - started, 2), "rss_mb": round(s[1], 1), "cpu_s": round(s[2], 2), **s[3]}
            for s in sampler.samples
        ]
    return out_doc


#: Length of each real-time case by default (``--rt-seconds``).
REALTIME_SECONDS = 10.0
#: Seconds of video beyond a real-time case's warm-up and window: the cameras start one after another (the
#: clock starts when the last one is live, several seconds after the first with 28 cameras).
REALTIME_VIDEO_MARGIN_S = 20.0


def realtime_video_frames(rt_s: float) -> int:
    """Frames each video needs so that no camera of a real-time case of ``rt_s`` seconds loops before its
    window ends."""
    return math.ceil((min(3.0, rt_s / 3) + rt_s + REALTIME_VIDEO_MARGIN_S) * VIDEO_FPS)


def _decode_case(spec: CaseSpec, assets: Assets, out: Path) -> dict[str, Any]:
    cfg = site_config(assets, spec.cameras, out, uri_scheme="loop", fps=spec.fps)
    counters = _Counters()
    # The run's clip assembly, so that the graph reads the frames the run reads (those a clip holds).
    assembler = ClipAssembler.from_config(cfg.model.preprocess)

    def on_frame(camera: str, pts: float, frame: np.ndarray | None) -> None:
        counters.frame(camera)
        assembler.push(camera, pts, frame)

    def on_display(camera: str, _pts: float, _frame: object) -> None:
        counters.clip(camera)  # display-branch frames, counted apart

    frame_size = (cfg.model.backbone.image_width, cfg.model.backbone.image_height)
    graph = CameraGraph(
        frame_size,
        on_frame,
        cameras=cfg.enabled_cameras(),
        realtime=False,
        display_size=DISPLAY_SIZE,
        on_display_frame=on_display,
        wants_frame=assembler.wants_next,
        decode_threads=cfg.scheduler.decode_threads,  # the floor's decoders are threaded as the run's are
    )
    sampler = ProcessSampler(spec.sample_interval_s)
    sampler.start()
    graph.start()
    try:
        started, live_after_s = _clock_after_live(graph.states)
    except BenchError:
        sampler.stop()
        graph.stop()
        raise
    time.sleep(max(0.0, started + spec.warmup_s - time.monotonic()))
    first, first_s = counters.snapshot(), sampler.sample()
    time.sleep(max(0.0, started + spec.duration_s - time.monotonic()))
    last, last_s = counters.snapshot(), sampler.sample()
    states = graph.states()
    sampler.stop()
    graph.stop()
    window = last["t"] - first["t"]
    frames = last["frames"] - first["frames"]
    return {
        "live_after_s": round(live_after_s, 3),  # from the start until every camera was live
        "window_s": round(window, 3),
        "frames_delivered": int(frames),
        "frames_per_s": round(frames / window, 2),
        "display_frames": int(last["clips"] - first["clips"]),
        "cpu_percent": round(100.0 * (last_s[2] - first_s[2]) / window, 1),
        "camera_states": states,
        **_rss_summary(sampler, first["t"], last["t"]),
    }


def time_clip_inference(
    inference: Any, batch: int, frame_shape: tuple[int, int, int, int], min_time_s: float, hop: int
) -> dict[str, Any]:
    """Time ``inference`` (a :class:`~pipeline.inference.ClipInference`) on batches of ``batch`` clips, one
    per camera, after filling every camera's DPC history so that each timed clip runs the whole path.

    ``frame_shape``: ``(T, H, W, 3)`` of a clip's uint8 RGB frames (fixed random pixels: speed does not
    depend on them). Returns clips/s, camera-frames/s (``clips/s * hop``) and per-batch latency.
    """
    rng = np.random.default_rng(batch)
    stacks = [rng.integers(0, 256, frame_shape, dtype=np.uint8) for _ in range(batch)]
    t_len = frame_shape[0]

    def call(i: int) -> int:
        clips = [Clip(f"b{j}", i, s, np.arange(t_len, dtype=np.float64) + i, i) for j, s in enumerate(stacks)]
        return sum(r.scores is not None for r in inference(clips))

    warm = inference.scorer.ring_len + 1
    for i in range(warm):
        call(i)
    times: list[float] = []
    scored = 0
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < min_time_s:
        t0 = time.perf_counter()
        scored += call(warm + len(times))
        times.append(time.perf_counter() - t0)
    clips_s = batch * len(times) / sum(times)
    return {
        "batch": batch,
        "calls": len(times),
        "clips_per_s": round(clips_s, 2),
        "camera_frames_per_s": round(clips_s * hop, 1),
        "scored_fraction": round(scored / (batch * len(times)), 3),
        "latency": latency_stats(times),
    }


def _pure_case(spec: CaseSpec, assets: Assets, out: Path) -> dict[str, Any]:
    cfg = site_config(assets, 1, out, threads=spec.threads, max_batch=spec.max_batch)
    try:
        engines = load_engines(cfg)
    except EngineError as exc:
        raise BenchError(str(exc)) from exc
    pre = cfg.model.preprocess
    w, h = engines.frame_size
    results = []
    try:
        memories = _pure_memories(spec, engines, max(spec.batches))
        for batch in spec.batches:
            inference = ClipInference(
                engines,
                context_clips=cfg.model.dpc.context_clips,
                history_step=pre.clip_len * pre.frame_stride // pre.clip_hop,
                contexts={},
                memories=memories,
                appearance_every=cfg.appearance.clips_per_encoding(spec.fps, pre.clip_hop),
            )
            shape = (pre.clip_len, h, w, 3)
            results.append(time_clip_inference(inference, batch, shape, spec.min_time_s, pre.clip_hop))
    finally:
        engines.close()
    return {
        "threads": cfg.engines.threads,
        "clip_hop": pre.clip_hop,
        "appearance": memories is not None,
        "batches": results,
    }


def _pure_memories(spec: CaseSpec, engines: Any, slots: int) -> AppearanceMemories | None:
    """With calibrations, the first one's memory for every batch slot (``b0`` ... as
    :func:`time_clip_inference` names them): speed does not depend on which memory a slot has."""
    if not spec.calibrations:
        return None
    expect = appearance_expectation(engines)
    if expect is None:
        raise BenchError("calibrations were given but the engines have no appearance engine")
    path = memory_path(spec.calibrations[0])
    try:
        memory = load_memory(path, expect)
    except AppearanceError as exc:
        raise BenchError(str(exc)) from exc
    memories = AppearanceMemories()
    for j in range(slots):
        memories.set(f"b{j}", memory)
    return memories


def _naive_case(spec: CaseSpec, assets: Assets, _out: Path) -> dict[str, Any]:
    threads = spec.threads or load_config(assets.config_path).engines.threads or usable_cpus()
    cameras = [spec.first_camera + k for k in range(spec.cameras)]
    return run_naive(assets, cameras, threads=threads, budget_s=spec.duration_s, fps=spec.fps)


def run_case(spec: CaseSpec, assets: Assets) -> dict[str, Any]:
    """Run one case in this process; returns its measurements (plus the spec)."""
    spec.validate()
    out = Path(tempfile.mkdtemp(prefix=f"zsad-bench-{spec.mode}-"))
    runners = {
        "pure": _pure_case,
        "decode": _decode_case,
        "fast": _pipeline_case,
        "realtime": _pipeline_case,
        "naive": _naive_case,
    }
    try:
        result = runners[spec.mode](spec, assets, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {"case": asdict(spec), **result}


def run_case_in_child(spec: CaseSpec, assets: Assets, timeout_s: float | None = None) -> dict[str, Any]:
    """Run one case in a fresh process (``python -m bench.bench_pipeline --case``); returns its result."""
    payload = json.dumps({"spec": asdict(spec), "assets": assets.to_json()})
    limit = timeout_s or spec.duration_s + LIVE_DEADLINE_S + 120.0
    started = time.monotonic()
    result = run_child(
        "bench.bench_pipeline",
        ["--case", payload],
        prefix=RESULT_PREFIX,
        limit_s=limit,
        what=f"{spec.mode} case with {spec.cameras} camera(s)",
    )
    result["child_seconds"] = round(time.monotonic() - started, 2)
    return result


# --------------------------------------------------------------------------------------------------
# The sweep (parent process)
# --------------------------------------------------------------------------------------------------


def memory_per_camera(points: Sequence[tuple[int, float]]) -> dict[str, float] | None:
    """Least-squares ``rss = base + per_camera * N`` over ``(N, rss_mb)`` points (None with < 2 Ns)."""
    if len({n for n, _ in points}) < 2:
        return None
    n = np.array([p[0] for p in points], dtype=np.float64)
    rss = np.array([p[1] for p in points], dtype=np.float64)
    slope, base = np.polyfit(n, rss, 1)
    return {"per_camera_mb": round(float(slope), 2), "base_mb": round(float(base), 1)}


def memory_from_one_camera(points: Sequence[tuple[int, float]]) -> dict[str, float] | None:
    """``(rss(N) - rss(1)) / (N - 1)`` for the largest N, with the median RSS of each N's runs (None
    without a 1-camera run and a larger one): what each camera beyond the first adds."""
    by_n: dict[int, list[float]] = {}
    for n, rss in points:
        by_n.setdefault(n, []).append(rss)
    largest = max(by_n, default=1)
    if 1 not in by_n or largest <= 1:
        return None
    one, many = float(np.median(by_n[1])), float(np.median(by_n[largest]))
    return {"cameras": largest, "per_camera_mb": round((many - one) / (largest - 1), 2), "one_camera_mb": one}


def calibrate_videos(assets: Assets, videos: int, folder: Path, fps: float = 25.0) -> list[dict[str, Any]]:
    """Calibrate one camera per video (the first ``videos`` of ``assets``) with the product's own code
    (:func:`pipeline.cli.calibrate.calibrate_camera`, which fits and saves the appearance memory beside the
    calibration), on that video played as a file. Returns, per video, the calibration file, its memory file
    and the memory's size on disk and in memory, and the seconds it took.

    Raises :class:`BenchError` when the engines have no appearance engine (``appearance.enabled: false``
    in the config, or its weights missing when the engines were built) or a calibration fails."""
    count = min(videos, len(assets.videos))
    cfg = site_config(assets, count, folder / "run", uri_scheme="file", fps=fps)
    try:
        engines = load_engines(cfg)
    except EngineError as exc:
        raise BenchError(str(exc)) from exc
    out: list[dict[str, Any]] = []
    try:
        expect = appearance_expectation(engines)
        if expect is None:
            raise BenchError(
                f"no appearance engine in {assets.engines_dir}: the appearance stream cannot run (the "
                "config has appearance.enabled: false, or its weights were missing at the build); use "
                "--no-appearance"
            )
        repeats = max(1, math.ceil(CALIBRATION_MIN_FRAMES / assets.video_frames))
        for i in range(count):
            video, _context = assets.videos[i]
            target = folder / f"video{i}.json"
            started = time.monotonic()
            try:
                calibrate_camera(cfg, engines, f"cam{i:02d}", [video.as_uri()] * repeats, target)
                memory = load_memory(memory_path(target), expect)
            except (CalibrationFootageError, CalibrationError, AppearanceError, EngineError) as exc:
                raise BenchError(f"calibrating on {video}: {exc}") from exc
            seconds = time.monotonic() - started
            mem_file = memory_path(target)
            out.append(
                {
                    "video": str(video),
                    "footage_repeats": repeats,
                    "calibration": str(target),
                    "memory_file": str(mem_file),
                    "memory_file_mb": round(mem_file.stat().st_size / 2**20, 2),
                    "memory_in_memory_mb": round(memory.nbytes / 2**20, 2),
                    "memory_frames": memory.n_frames,
                    "seconds": round(seconds, 1),
                }
            )
            log.info("calibrated %s in %.1f s: %s", video.name, seconds, mem_file)
    finally:
        engines.close()
    return out


def pure_at(pure: Sequence[Mapping[str, Any]], threads: int, batch: float) -> float | None:
    """Pure-inference clips/s at ``threads`` and the measured batch size nearest to ``batch``, averaged over
    the pure runs (before and after the sweep)."""
    runs = [r for r in pure if r["threads"] == threads]
    sizes = sorted({b["batch"] for r in runs for b in r["batches"]})
    if not sizes:
        return None
    nearest = min(sizes, key=lambda s: (abs(s - batch), s))
    values = [b["clips_per_s"] for r in runs for b in r["batches"] if b["batch"] == nearest]
    return float(np.mean(values))


def run_pipeline_bench(
    assets: Assets,
    cameras: Sequence[int],
    *,
    threads: Sequence[int] | None = None,
    rt_threads: int | None = None,
    max_batch: int | None = None,
    fps: float = 25.0,
    decode_s: float = 4.0,
    fast_s: float = 7.0,
    naive_s: float = 5.0,
    rt_s: float = REALTIME_SECONDS,
    pure_s: float = 1.0,
    search: bool = True,
    max_latency_s: float = 1.0,
    appearance: bool = True,
    progress: Any = print,
) -> dict[str, Any]:
    """The whole sweep; see the module docstring. ``progress(line)`` gets one line per finished case.

    ``threads``: thread counts of the pure, fast and naive cases (default 1 and the config's);
    ``rt_threads``: thread count of the real-time cases (default the config's, what ``zsad run`` uses).
    ``appearance``: calibrate the videos first (:func:`calibrate_videos`) so that every camera of the pure,
    fast and real-time cases scores the appearance stream; False leaves the cameras uncalibrated.
    """
    needed = realtime_video_frames(rt_s)
    if assets.video_frames < needed:
        raise BenchError(
            f"videos of {assets.video_frames} frames would loop inside a {rt_s:g} s real-time case (a loop "
            f"restarts every camera's stream): prepare the assets with frames={needed}"
        )
    base = load_config(assets.config_path)
    batch = max_batch or base.scheduler.max_batch
    configured = base.engines.threads or usable_cpus()  # what engines.threads 0 runs (parallel: batch)
    thread_counts = list(threads) if threads else sorted({1, configured})
    rt_thread_count = rt_threads or configured
    pure_batches = sorted({1, 4, batch, 16})
    rt_warmup = min(3.0, rt_s / 3)
    calibrated: list[dict[str, Any]] = []
    if appearance:
        calibrated = calibrate_videos(assets, max(cameras), assets.work / "calibration", fps)
        first = calibrated[0]
        progress(
            f"calibrated {len(calibrated)} video(s): appearance memory "
            f"{first['memory_file_mb']} MB on disk, {first['memory_in_memory_mb']} MB in memory"
        )
    calibrations = [c["calibration"] for c in calibrated]

    def case(**kw: Any) -> dict[str, Any]:
        if kw["mode"] in ("pure", "fast", "realtime"):
            kw["calibrations"] = calibrations
        spec = CaseSpec(max_batch=batch, fps=fps, max_latency_s=max_latency_s, **kw)
        result = run_case_in_child(spec, assets)
        progress(_progress_line(result))
        return result

    def pure_round() -> list[dict[str, Any]]:
        return [
            case(
                mode="pure", threads=t, batches=pure_batches, min_time_s=pure_s, duration_s=1.0, warmup_s=0.0
            )
            for t in thread_counts
        ]

    def realtime(n: int) -> dict[str, Any]:
        return case(mode="realtime", cameras=n, threads=rt_thread_count, duration_s=rt_s, warmup_s=rt_warmup)

    doc: dict[str, Any] = {
        "assets": assets.describe(),
        "settings": {
            "cameras": list(cameras),
            "threads": thread_counts,
            "rt_threads": rt_thread_count,
            "max_batch": batch,
            "fps": fps,
            "decode_s": decode_s,
            "fast_s": fast_s,
            "naive_s": naive_s,
            "rt_s": rt_s,
            "max_latency_s": max_latency_s,
            "appearance": appearance,
        },
        "appearance": {"enabled": appearance, "calibrations": calibrated},
    }
    pure = pure_round()
    decode = [case(mode="decode", cameras=n, duration_s=decode_s, warmup_s=1.0) for n in cameras]
    fast, naive = [], []
    for i, n in enumerate(cameras):
        for t in thread_counts:  # A B A B: a naive slot right before each pipeline case
            naive.append(
                case(
                    mode="naive",
                    cameras=len(assets.videos),
                    first_camera=i,
                    threads=t,
                    duration_s=naive_s,
                    warmup_s=0.0,
                )
            )
            fast.append(
                case(mode="fast", cameras=n, threads=t, duration_s=fast_s, warmup_s=min(2.0, fast_s / 4))
            )
    pure += pure_round()
    rt_runs = [realtime(n) for n in cameras]
    if search:
        rt_runs += _search_capacity(rt_runs, realtime)
    doc.update(pure=pure, decode=decode, fast=fast, naive=naive, realtime=rt_runs)
    doc["summary"] = summarise(doc)
    return doc


def _search_capacity(runs: list[dict[str, Any]], run: Any, max_extra: int = 2) -> list[dict[str, Any]]:
    """Bisect between the largest N that kept up and the smallest that did not (at most ``max_extra``)."""
    extra: list[dict[str, Any]] = []
    for _ in range(max_extra):
        allruns = runs + extra
        ok = [r["case"]["cameras"] for r in allruns if r["keeps_up"]]
        bad = [r["case"]["cameras"] for r in allruns if not r["keeps_up"]]
        lo = max(ok) if ok else 0
        above = [n for n in bad if n > lo]
        if not above:
            break
        hi = min(above)
        if hi - lo <= 1:
            break
        extra.append(run((lo + hi) // 2))
    return extra


def _progress_line(r: Mapping[str, Any]) -> str:
    spec = r["case"]
    mode, n, t = spec["mode"], spec["cameras"], spec["threads"]
    if mode == "pure":
        return f"pure       t{t}: " + ", ".join(
            f"b{b['batch']} {b['clips_per_s']:.1f} clips/s" for b in r["batches"]
        )
    if mode == "decode":
        return f"decode     {n:2d} cams: {r['frames_per_s']:.0f} frames/s"
    if mode == "naive":
        return (
            f"naive      t{t} from camera {spec['first_camera']}: "
            f"{r['frames_per_s']:.0f} frames/s ({r['frames']} frames)"
        )
    line = (
        f"{mode:10s} t{t} {n:2d} cams: {r['clips_per_s']:.1f} clips/s, "
        f"{r['camera_frames_per_s']:.0f} cam-frames/s, batch {r['mean_batch']}, "
        f"dropped {r['clips_dropped']}, p95 {r['latency']['p95_ms']:.0f} ms, "
        f"cpu {r['cpu_percent']:.0f}%, rss {r['rss_median_mb']:.0f} MB"
    )
    if r.get("cameras_with_memory"):
        line += f", appearance on {r['clips_with_appearance_total']}/{r['clips_scored_total']} clips"
    if r.get("cameras_with_stationary_model"):
        line += f", stationary model on {r['cameras_with_stationary_model']} cameras"
    if r.get("cameras_with_objects_model"):
        line += f", objects model on {r['cameras_with_objects_model']} cameras"
    if mode == "realtime":
        line += f", delivered {r['delivered_ratio']:.2f}, keeps up: {r['keeps_up']}"
    return line


def summarise(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Rows joining the cases, the ratios the goals ask for, and memory per camera."""
    naive_by_threads: dict[int, float] = {}  # pooled over the slots of each thread count
    for t in sorted({r["threads"] for r in doc["naive"]}):
        runs = [r for r in doc["naive"] if r["threads"] == t]
        seconds = sum(r["seconds"] for r in runs)
        if seconds > 0:
            naive_by_threads[t] = round(sum(r["frames"] for r in runs) / seconds, 2)
    naive_best = max(naive_by_threads.values()) if naive_by_threads else None
    decode = {r["case"]["cameras"]: r["frames_per_s"] for r in doc["decode"]}
    # CPU time one decoded frame costs (both branches), from the decode-only cases.
    decode_cost = {
        r["case"]["cameras"]: round(10.0 * r["cpu_percent"] / r["frames_per_s"], 3)
        for r in doc["decode"]
        if r["frames_per_s"] > 0
    }
    fast_rows = []
    for r in doc["fast"]:
        n, t = r["case"]["cameras"], r["case"]["threads"]
        pure_same = pure_at(doc["pure"], t, r["mean_batch"])
        naive_same = naive_by_threads.get(t)
        fast_rows.append(
            {
                "cameras": n,
                "threads": t,
                "decode_frames_per_s": decode.get(n),
                "decode_cpu_ms_per_frame": decode_cost.get(n),
                "camera_frames_per_s": r["camera_frames_per_s"],
                "clips_per_s": r["clips_per_s"],
                "mean_batch": r["mean_batch"],
                "clips_dropped": r["clips_dropped"],
                "cpu_percent": r["cpu_percent"],
                "pure_clips_per_s_same_batch": round(pure_same, 2) if pure_same else None,
                "pipeline_over_pure": round(r["clips_per_s"] / pure_same, 3) if pure_same else None,
                "naive_frames_per_s_same_threads": naive_same,
                "pipeline_over_naive_same_threads": (
                    round(r["camera_frames_per_s"] / naive_same, 2) if naive_same else None
                ),
                "pipeline_over_naive_best": (
                    round(r["camera_frames_per_s"] / naive_best, 2) if naive_best else None
                ),
            }
        )
    passing = [r["case"]["cameras"] for r in doc["realtime"] if r["keeps_up"]]
    failing = [r["case"]["cameras"] for r in doc["realtime"] if not r["keeps_up"]]
    capacity = max(passing) if passing else 0
    best = max(fast_rows, key=lambda r: r["camera_frames_per_s"])
    largest = max(doc["settings"]["cameras"])
    return {
        "fast_rows": fast_rows,
        "naive_frames_per_s_by_threads": {str(k): v for k, v in naive_by_threads.items()},
        "naive_best_frames_per_s": naive_best,
        "best_fast": best,
        "pipeline_over_pure_at_largest": {
            str(r["threads"]): r["pipeline_over_pure"] for r in fast_rows if r["cameras"] == largest
        },
        "realtime_cameras": capacity,
        "realtime_first_failure": min((n for n in failing if n > capacity), default=None),
        "realtime_tested": sorted({r["case"]["cameras"] for r in doc["realtime"]}),
        "memory": memory_per_camera([(r["case"]["cameras"], r["rss_median_mb"]) for r in doc["realtime"]]),
        "memory_from_one_camera": memory_from_one_camera(
            [(r["case"]["cameras"], r["rss_median_mb"]) for r in doc["realtime"]]
        ),
        "appearance": doc.get("settings", {}).get("appearance", False),
        "decode_memory": memory_per_camera(
            [(r["case"]["cameras"], r["rss_median_mb"]) for r in doc["decode"]]
        ),
    }


def pipeline_tables(doc: Mapping[str, Any], *, markdown: bool = False) -> str:
    """The fast sweep, the pure runs and the real-time sweep as text (or markdown) tables."""
    s = doc["summary"]

    def ratio(v: float | None) -> str | None:
        return f"{v:.2f}x" if v is not None else None

    fast = format_table(
        [
            "cameras",
            "threads",
            "decode-only frames/s",
            "decode CPU ms/frame",
            "pipeline cam-frames/s",
            "clips/s",
            "mean batch",
            "CPU %",
            "pure clips/s (same batch)",
            "pipeline/pure",
            "naive frames/s (same threads)",
            "pipeline/naive (same threads)",
            "pipeline/naive (best naive)",
        ],
        [
            [
                r["cameras"],
                r["threads"],
                r["decode_frames_per_s"],
                r["decode_cpu_ms_per_frame"],
                r["camera_frames_per_s"],
                r["clips_per_s"],
                r["mean_batch"],
                r["cpu_percent"],
                r["pure_clips_per_s_same_batch"],
                ratio(r["pipeline_over_pure"]),
                r["naive_frames_per_s_same_threads"],
                ratio(r["pipeline_over_naive_same_threads"]),
                ratio(r["pipeline_over_naive_best"]),
            ]
            for r in s["fast_rows"]
        ],
        markdown=markdown,
    )
    pure_rows = []
    for i, run in enumerate(doc["pure"]):
        when = "before" if i < len(doc["pure"]) // 2 else "after"
        for b in run["batches"]:
            pure_rows.append(
                [
                    when,
                    run["threads"],
                    b["batch"],
                    b["clips_per_s"],
                    b["camera_frames_per_s"],
                    b["latency"]["p50_ms"],
                    b["latency"]["p95_ms"],
                ]
            )
    pure = format_table(
        ["run", "threads", "batch", "clips/s", "cam-frames/s", "p50 ms/batch", "p95 ms/batch"],
        pure_rows,
        markdown=markdown,
    )
    rt = format_table(
        [
            "cameras",
            "keeps up",
            "frames/s",
            "delivered",
            "dropped",
            "pending at stop",
            "latency p50 ms",
            "latency p95 ms",
            "mean batch",
            "CPU %",
            "RSS MB",
            "alerts",
        ],
        [
            [
                r["case"]["cameras"],
                "yes" if r["keeps_up"] else "no",
                r["frames_per_s"],
                r["delivered_ratio"],
                r["clips_dropped"],
                r["clips_pending_at_stop"],
                r["latency"]["p50_ms"],
                r["latency"]["p95_ms"],
                r["mean_batch"],
                r["cpu_percent"],
                r["rss_median_mb"],
                r["alerts"]["opened"],
            ]
            for r in sorted(doc["realtime"], key=lambda r: r["case"]["cameras"])
        ],
        markdown=markdown,
    )
    mem = s["memory"]
    mem_line = (
        f"memory (real-time runs, least squares): {mem['base_mb']} MB + {mem['per_camera_mb']} MB per camera"
        if mem
        else "memory: fewer than two camera counts"
    )
    one = s.get("memory_from_one_camera")
    if one:
        mem_line += f"; (RSS({one['cameras']}) - RSS(1)) / {one['cameras'] - 1}: {one['per_camera_mb']} MB"
    mem_line += "; appearance stream " + ("on" if s.get("appearance") else "off")
    naive = ", ".join(f"{t} thread(s) {v} frames/s" for t, v in s["naive_frames_per_s_by_threads"].items())
    st = doc["settings"]
    return (
        f"As fast as possible (loop:// files, back-pressure), max_batch {st['max_batch']}:\n\n{fast}\n\n"
        f"naive baseline (OpenCV + PyTorch eager, batch 1, one camera at a time): {naive}\n\n"
        f"Pure inference (ClipInference on ready clips, before and after the sweep):\n\n{pure}\n\n"
        f"Real time ({st['fps']:g} fps per camera, {st['rt_threads']} thread(s)):\n\n{rt}\n\n"
        f"real time on {s['realtime_cameras']} camera(s) "
        f"(first failure: {s['realtime_first_failure']}); {mem_line}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_pipeline", description=__doc__.split("\n\n")[0])
    add_asset_arguments(p, "base config (model, alerts, scheduler)")
    p.add_argument("--cameras", default="1,2,4,8,16", help="camera counts")
    p.add_argument("--threads", default=None, help="thread counts of pure/fast/naive (default: 1,<config>)")
    p.add_argument("--rt-threads", type=int, default=None, help="threads of the real-time cases (config)")
    p.add_argument("--max-batch", type=int, default=None, help="scheduler max_batch (default: config)")
    p.add_argument("--fps", type=float, default=25.0, help="sampling rate per camera (videos are 25 fps)")
    p.add_argument("--decode-seconds", type=float, default=4.0, help="length of each decode-only case")
    p.add_argument("--fast-seconds", type=float, default=7.0, help="length of each as-fast-as-possible case")
    p.add_argument("--naive-seconds", type=float, default=5.0, help="budget of each naive slot")
    p.add_argument("--rt-seconds", type=float, default=REALTIME_SECONDS, help="length of each real-time case")
    p.add_argument("--pure-seconds", type=float, default=1.0, help="seconds per batch size in pure cases")
    p.add_argument("--max-latency", type=float, default=1.0, help="real time: p95 latency bound (s)")
    p.add_argument("--no-search", action="store_true", help="do not bisect the real-time camera count")
    p.add_argument(
        "--appearance",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="calibrate the videos first so that every camera scores the appearance stream (default on; "
        "--no-appearance: uncalibrated cameras, as before)",
    )
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder for pipeline.json")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case (child)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _child(payload: str) -> int:
    data = json.loads(payload)
    spec = CaseSpec(**data["spec"])
    assets = Assets.from_json(data["assets"])
    try:
        result = run_case(spec, assets)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.case is not None:
        return _child(args.case)
    try:
        cameras = parse_int_list(args.cameras)
        load_before = load_average()
        assets = prepare_assets(
            args.work, args.config, args.checkpoint, frames=realtime_video_frames(args.rt_seconds)
        )
        doc = run_pipeline_bench(
            assets,
            cameras,
            threads=parse_int_list(args.threads) if args.threads else None,
            rt_threads=args.rt_threads,
            max_batch=args.max_batch,
            fps=args.fps,
            decode_s=args.decode_seconds,
            fast_s=args.fast_seconds,
            naive_s=args.naive_seconds,
            rt_s=args.rt_seconds,
            pure_s=args.pure_seconds,
            search=not args.no_search,
            max_latency_s=args.max_latency,
            appearance=args.appearance,
        )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    doc["load_average_before"] = load_before
    doc["load_average_after"] = load_average()
    path = write_result("pipeline", doc, args.results)
    print()
    print(pipeline_tables(doc))
    print(f"\nload average before {load_before}, after {doc['load_average_after']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
