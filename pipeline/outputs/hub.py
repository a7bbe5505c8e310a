"""Everything a run does with scored clips, shared by the CPU graph and the DeepStream graph.

Per camera: fusion and the alert machine (``pipeline.outputs.events.CameraAlerts``), event media; for the run:
the sinks, Prometheus metrics, the review page's state and server, and the ``scores.jsonl`` log. Each
graph only turns frames into :class:`plugins.scorer.StreamScores` and calls :meth:`RunOutputs.clip_scored`.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import CameraSettings, ZsadConfig
from core.redact import redact_uri
from pipeline.outputs.events import CameraAlerts
from pipeline.outputs.media import EventRecorder, Frame
from pipeline.outputs.metrics import ZsadMetrics, start_metrics_server
from pipeline.outputs.sinks import SinkFanout, build_sinks
from pipeline.outputs.state import RunState
from pipeline.outputs.web import ReviewServer
from plugins.fusion import CameraFusion, StreamGate, load_calibration

if TYPE_CHECKING:
    from pipeline.cpu.scheduler import SchedulerStats
    from plugins.scorer import StreamScores

log = logging.getLogger(__name__)

__all__ = ["RunOutputs"]


class RunOutputs:
    """Fusion, alerts, media, sinks, metrics and the review page of one run.

    Args:
        cfg: the run config.
        model_id: the engines' identity, written into every alert.
        gate_path: the exported stream gate (``stream_gate.npz``), or None for equal weights.
    """

    def __init__(self, cfg: ZsadConfig, *, model_id: str, gate_path: Path | None) -> None:
        self.cfg = cfg
        self.model_id = model_id
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics = ZsadMetrics()
        self.metrics_server: Any = None
        self.review_server: Any = None
        self.sinks = SinkFanout(build_sinks(cfg.sinks, self.out, metrics=self.metrics))
        self.gate = StreamGate.load(gate_path) if gate_path else StreamGate.uniform()
        self.alerts: dict[str, CameraAlerts] = {}
        self.recorders: dict[str, EventRecorder] = {}
        self.run_state = RunState(self.out)
        self.run_state.load_existing()
        self._scores = (self.out / "scores.jsonl").open("a", encoding="utf-8")
        self._lock = threading.Lock()  # the score log
        # Serialises a camera's alert updates (scheduler or probe thread) with its removal (main thread).
        self._cameras_lock = threading.RLock()
        self._dropped_seen: dict[str, int] = {}  # scheduler drop counts already added to the metrics
        for cam in cfg.enabled_cameras():
            self.add_camera(cam)

    # -- cameras ----------------------------------------------------------------------------------------

    def add_camera(self, cam: CameraSettings) -> None:
        """Create a camera's fusion, alert machine, media recorder and review entry."""
        calibration = load_calibration(cam.calibration) if cam.calibration else None
        fusion = CameraFusion(cam.id, calibration=calibration, gate=self.gate, smoothing=cam.alerts.smoothing)
        recorder = EventRecorder(cam.id, self.out, self.cfg.media, fps=cam.sampling.fps, metrics=self.metrics)
        alerts = CameraAlerts(
            cam.id,
            cam.context,
            cam.alerts,
            fusion,
            self.sinks,
            recorder=recorder,
            metrics=self.metrics,
            model=self.model_id,
        )
        with self._cameras_lock:
            self.recorders[cam.id] = recorder
            self.alerts[cam.id] = alerts
        self.run_state.add_camera(cam.id, cam.context, redact_uri(cam.uri), threshold=cam.alerts.on_threshold)

    def remove_camera(self, camera: str) -> list[dict[str, Any]]:
        """Close a camera's open alert (reason "shutdown", published), finish its media and forget it.
        Returns the alert records published."""
        with self._cameras_lock:
            alerts = self.alerts.pop(camera, None)
            recorder = self.recorders.pop(camera, None)
            records = alerts.shutdown() if alerts is not None else []
        for record in records:
            self.run_state.add_alert(record)
        if recorder is not None:
            recorder.close()
        self.run_state.remove_camera(camera)
        self._dropped_seen.pop(camera, None)
        return list(records)

    # -- what the graphs call ------------------------------------------------------------------------

    def frame_in(self, camera: str) -> None:
        self.metrics.frames_in.inc(camera=camera)
        self.run_state.frame_in(camera)

    def display_frame(self, camera: str, frame: Frame, pts: float) -> None:
        """A frame for event media: ``(H, W, 3)`` uint8 RGB at stream time ``pts`` seconds, as an array
        (the DeepStream graph) or a :class:`~pipeline.outputs.media.LazyFrame` read only if it is
        used (the CPU
        graph's GStreamer samples)."""
        alerts = self.alerts.get(camera)
        if alerts is not None:  # None: removed while this frame was in flight
            alerts.add_frame(frame, pts)

    def camera_state(self, camera: str, state: str, detail: str) -> None:
        self.metrics.set_camera_state(camera, state)
        self.run_state.set_camera_state(camera, state, detail)
        log.info("camera %s: %s %s", camera, state, detail)

    def clip_scored(
        self, camera: str, t: float, scores: StreamScores | None, prompt: str | None, *, frames: int
    ) -> float | None:
        """One scored clip at stream time ``t`` (None while its DPC history fills): fuse, alert, record.

        Returns the fused, smoothed score (for an on-screen display), or None for an unknown camera.
        """
        with self._cameras_lock:
            alerts = self.alerts.get(camera)
            if alerts is None:  # removed while its clip was being scored
                return None
            self.metrics.frames_processed.inc(frames, camera=camera)
            if scores is None:  # the DPC history is still filling
                return None
            fused, records = alerts.update(scores.scores, scores.embedding, t, prompt=prompt)
        self.metrics.score.set(fused.score, camera=camera)
        self.run_state.add_score(camera, t, fused.score, fused.contributions, scores.scores)
        for record in records:
            self.run_state.add_alert(record)
        row = {
            "camera": camera,
            "t": round(t, 3),
            "clip": scores.index,
            "score": round(fused.score, 4),
            "raw_fused": round(fused.raw_fused, 4),
            "streams": {k: round(v, 5) for k, v in scores.scores.items()},
            "contributions": {k: round(v, 4) for k, v in fused.contributions.items()},
            "alerts": [r["alert_id"] for r in records],
        }
        with self._lock:
            if not self._scores.closed:
                self._scores.write(json.dumps(row) + "\n")
        return float(fused.score)

    def record_queues(self, stats: SchedulerStats, *, clip_len: int) -> None:
        """Copy the clip scheduler's queue depths and drop-oldest counts into the metrics: each clip dropped
        since the last call adds ``clip_len`` to ``zsad_frames_dropped_total`` (both graphs call this
        regularly)."""
        for camera, queue in stats.cameras.items():
            self.metrics.queue_depth.set(queue.depth, camera=camera)
            new = queue.dropped - self._dropped_seen.get(camera, 0)
            if new > 0:
                self.metrics.frames_dropped.inc(new * clip_len, camera=camera)
            self._dropped_seen[camera] = queue.dropped

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the metrics endpoint, the review page and the sinks."""
        if self.cfg.metrics.enabled:
            self.metrics_server = start_metrics_server(
                self.metrics, self.cfg.metrics.host, self.cfg.metrics.port
            )
            log.info("metrics on %s", self.metrics_server.url)
        if self.cfg.ui.enabled:
            ui = self.cfg.ui
            self.review_server = ReviewServer(
                self.run_state, self.out, ui.host, ui.port, ui.username, ui.password
            )
            self.review_server.start()
            log.info("review page at %s", self.review_server.url)
        self.sinks.start()

    def shutdown(self) -> dict[str, int]:
        """Close open alerts (reason shutdown), finish media, flush the sinks; return what stays spooled."""
        with self._cameras_lock:
            for alerts in list(self.alerts.values()):
                for record in alerts.shutdown():
                    self.run_state.add_alert(record)
        for recorder in list(self.recorders.values()):
            recorder.close()
        left = self.sinks.close()
        if self.review_server is not None:
            self.review_server.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        with self._lock:
            self._scores.close()
        return left
