"""``zsad run CONFIG``: many cameras in, alerts out.

load config -> check engine manifests -> build graph and attach the fusion -> run -> shut down cleanly
(SIGTERM/SIGINT: stop the sources, drain the scheduler, close open alerts, flush sinks and media).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.clips import Clip, ClipAssembler
from pipeline.config import ConfigError, ZsadConfig, load_config
from pipeline.inference import ClipInference, ClipResult, EngineError, EngineSet, load_engines

log = logging.getLogger(__name__)

__all__ = ["Application", "run_config"]

DISPLAY_SIZE = (320, 240)  # event media resolution (width, height)
FINISHED_STATES = {"eos", "failed", "stopped"}


class Application:
    """One running system: the camera graph, the scheduler, and per-camera fusion, alerts and media."""

    def __init__(self, cfg: ZsadConfig, engines: EngineSet, *, realtime: bool = True):
        from pipeline.events import CameraAlerts
        from pipeline.graph import CameraGraph
        from pipeline.media import EventRecorder
        from pipeline.metrics import ZsadMetrics
        from pipeline.redact import redact_uri
        from pipeline.scheduler import BatchScheduler
        from pipeline.sinks import SinkFanout, build_sinks
        from pipeline.state import RunState
        from plugins.fusion import CameraFusion, StreamGate, load_calibration

        self.cfg = cfg
        self.engines = engines
        self.realtime = realtime
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics = ZsadMetrics()
        self.metrics_server: Any = None
        self.stop_event = threading.Event()
        self.cameras = {c.id: c for c in cfg.enabled_cameras()}
        pre = cfg.model.preprocess
        span = pre.clip_len * pre.frame_stride
        self.inference = ClipInference(
            engines,
            context_clips=cfg.model.dpc.context_clips,
            history_step=span // pre.clip_hop,
            contexts={c.id: c.context for c in self.cameras.values()},
        )
        self.sinks = SinkFanout(build_sinks(cfg.sinks, self.out, metrics=self.metrics))
        gate = StreamGate.load(engines.gate_path) if engines.gate_path else StreamGate.uniform()
        self.alerts: dict[str, Any] = {}
        self.recorders: dict[str, Any] = {}
        for cam in self.cameras.values():
            calibration = load_calibration(cam.calibration) if cam.calibration else None
            fusion = CameraFusion(cam.id, calibration=calibration, gate=gate, smoothing=cam.alerts.smoothing)
            recorder = EventRecorder(cam.id, self.out, cfg.media, fps=cam.sampling.fps, metrics=self.metrics)
            self.recorders[cam.id] = recorder
            self.alerts[cam.id] = CameraAlerts(
                cam.id,
                cam.context,
                cam.alerts,
                fusion,
                self.sinks,
                recorder=recorder,
                metrics=self.metrics,
                model=engines.model_id,
            )
        self.assembler = ClipAssembler.from_config(pre)
        self.scheduler = BatchScheduler.from_config(cfg.scheduler, self.inference, self._on_result)
        self.graph = CameraGraph(
            engines.frame_size,
            self._on_frame,
            self._on_state,
            cameras=self.cameras.values(),
            realtime=realtime,
            display_size=DISPLAY_SIZE,
            on_display_frame=self._on_display_frame,
        )
        self.run_state = RunState(self.out)
        self.run_state.load_existing()
        for cam in self.cameras.values():
            self.run_state.add_camera(
                cam.id, cam.context, redact_uri(cam.uri), threshold=cam.alerts.on_threshold
            )
        self.review_server: Any = None
        self._scores = (self.out / "scores.jsonl").open("a", encoding="utf-8")
        self._scores_lock = threading.Lock()

    # -- callbacks (GStreamer and scheduler threads) ----------------------------------------------------

    def _on_frame(self, camera: str, pts: float, frame: Any) -> None:
        self.metrics.frames_in.inc(camera=camera)
        self.run_state.frame_in(camera)
        clip = self.assembler.push(camera, pts, frame)
        if clip is not None and not self.scheduler.submit(clip, block=not self.realtime):
            self.metrics.frames_dropped.inc(camera=camera)

    def _on_display_frame(self, camera: str, pts: float, frame: Any) -> None:
        self.alerts[camera].add_frame(frame, pts)

    def _on_state(self, camera: str, state: str, detail: str) -> None:
        self.metrics.set_camera_state(camera, state)
        self.run_state.set_camera_state(camera, state, detail)
        log.info("camera %s: %s %s", camera, state, detail)
        if state == "reconnecting":
            self.assembler.reset(camera)
            self.inference.reset(camera)

    def _on_result(self, clip: Clip, result: ClipResult) -> None:
        cam = clip.camera_id
        self.metrics.frames_processed.inc(len(clip.frames), camera=cam)
        if result.scores is None:
            return
        fused, records = self.alerts[cam].update(
            result.scores.scores, result.scores.embedding, clip.end_pts, prompt=result.prompt
        )
        self.metrics.score.set(fused.score, camera=cam)
        self.run_state.add_score(cam, clip.end_pts, fused.score, fused.contributions, result.scores.scores)
        for record in records:
            self.run_state.add_alert(record)
        row = {
            "camera": cam,
            "t": round(clip.end_pts, 3),
            "clip": clip.index,
            "score": round(fused.score, 4),
            "raw_fused": round(fused.raw_fused, 4),
            "streams": {k: round(v, 5) for k, v in result.scores.scores.items()},
            "contributions": {k: round(v, 4) for k, v in fused.contributions.items()},
            "alerts": [r["alert_id"] for r in records],
        }
        with self._scores_lock:
            self._scores.write(json.dumps(row) + "\n")

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        from pipeline.metrics import start_metrics_server

        if self.cfg.metrics.enabled:
            self.metrics_server = start_metrics_server(
                self.metrics, self.cfg.metrics.host, self.cfg.metrics.port
            )
            log.info("metrics on %s", self.metrics_server.url)
        if self.cfg.ui.enabled:
            from pipeline.web import ReviewServer

            ui = self.cfg.ui
            self.review_server = ReviewServer(
                self.run_state, self.out, ui.host, ui.port, ui.username, ui.password
            )
            self.review_server.start()
            log.info("review page at %s", self.review_server.url)
            print(f"review page: {self.review_server.url}", flush=True)
        self.sinks.start()
        self.scheduler.start()
        self.graph.start()

    def wait(self, duration_s: float | None = None, progress: Any = None) -> None:
        """Run until stopped, ``duration_s`` elapses, or every camera has finished (files at EOS)."""
        deadline = time.monotonic() + duration_s if duration_s else None
        while not self.stop_event.wait(1.0):
            states = self.graph.states()
            if progress is not None:
                progress(states, self.scheduler.stats())
            if states and all(s in FINISHED_STATES for s in states.values()):
                log.info("every camera has finished: %s", states)
                return
            if deadline is not None and time.monotonic() >= deadline:
                return

    def request_stop(self) -> None:
        self.stop_event.set()

    def shutdown(self) -> dict[str, int]:
        """Stop in dependency order; nothing accepted is lost (open alerts close with reason 'shutdown')."""
        self.graph.stop()
        self.scheduler.stop(drain=True)
        for alerts in self.alerts.values():
            alerts.shutdown()
        for recorder in self.recorders.values():
            recorder.close()
        left = self.sinks.close()
        if self.review_server is not None:
            self.review_server.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        with self._scores_lock:
            self._scores.close()
        self.engines.close()
        return left


@contextmanager
def stop_on_signals(stop: Any) -> Iterator[None]:
    """SIGTERM/SIGINT request a clean stop instead of killing the process mid-alert."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: Any) -> None:
        log.warning("signal %d: shutting down cleanly", signum)
        stop()

    for s in previous:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_config(
    cfg: ZsadConfig, *, duration_s: float | None = None, realtime: bool = True, progress: Any = None
) -> int:
    """Check engines, build the graph, run, shut down. Returns an exit code."""
    try:
        engines = load_engines(cfg)
    except EngineError as exc:
        log.error("refusing to start: %s", exc)
        print(f"refusing to start: {exc}")
        return 2
    app = Application(cfg, engines, realtime=realtime)
    with stop_on_signals(app.request_stop):
        app.start()
        app.wait(duration_s, progress)
    left = app.shutdown()
    if any(left.values()):
        log.warning("alerts still spooled for later delivery: %s", left)
    return 0


def run_run(args: Any) -> int:
    """CLI handler for ``zsad run``."""
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}")
        return 2
    graph = args.graph or cfg.graph
    if graph == "deepstream":
        from pipeline.deepstream import deepstream_unavailable_reason

        reason = deepstream_unavailable_reason()
        if reason:
            print(f"cannot run the DeepStream graph: {reason}")
            return 2
        from pipeline.deepstream import run_deepstream

        return run_deepstream(cfg, duration_s=args.duration)
    return run_config(cfg, duration_s=args.duration, realtime=not args.fast)
