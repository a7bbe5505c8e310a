"""Everything a run does with scored clips, shared by the CPU graph and the DeepStream graph.

Per camera: fusion and the alert machine (``pipeline.outputs.events.CameraAlerts``), event media; for the run:
the sinks, Prometheus metrics, the review page's state and server, and the ``scores.jsonl`` log. Each
graph only turns frames into :class:`plugins.scorer.StreamScores` and calls :meth:`RunOutputs.clip_scored`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import CameraSettings, ZsadConfig
from core.redact import redact_uri
from pipeline.outputs.events import CameraAlerts
from pipeline.outputs.media import EventRecorder, Frame
from pipeline.outputs.metrics import ZsadMetrics, start_metrics_server
from pipeline.outputs.sinks import SinkFanout, build_sinks, sink_name
from pipeline.outputs.state import RunState
from pipeline.outputs.web import ReviewServer, ReviewServerError
from plugins.fusion import Calibration, CalibrationError, CameraFusion, StreamGate, load_calibration

if TYPE_CHECKING:
    from pipeline.cpu.scheduler import SchedulerStats
    from plugins.scorer import StreamScores

log = logging.getLogger(__name__)

__all__ = ["RunOutputs", "RunOutputsError", "check_outputs", "uncalibrated_notice"]


class RunOutputsError(RuntimeError):
    """The outputs of a run cannot start: an output folder that cannot be written, two sinks with one
    destination, a port in use. The message names it and what to change (a user error: exit 2)."""


def _port_error(section: str, host: str, port: int, exc: OSError) -> RunOutputsError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return RunOutputsError(
        f"{section}.port {port} on {host} cannot be used: {reason} (is another zsad run using it?): stop "
        f"that process, or set {section}.port in the config to a free port (0 picks one), or "
        f"{section}.enabled: false"
    )


def _output_dir_error(out: Path, exc: OSError) -> RunOutputsError:
    return RunOutputsError(
        f"output_dir {out} cannot be written: {exc.strerror or exc}: point output_dir at a writable folder"
    )


def check_outputs(cfg: ZsadConfig) -> None:
    """Fail early, before engines are built or loaded, on what would stop :class:`RunOutputs`: an output
    folder that cannot be made, two sinks with one destination, a metrics or review port that cannot be
    bound (the real bind in :meth:`RunOutputs.start` still decides). Raises :class:`RunOutputsError`."""
    out = Path(cfg.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _output_dir_error(out, exc) from exc
    seen: set[str] = set()
    for sink in cfg.sinks:
        name = sink_name(sink, out)
        if name in seen:  # the same check as build_sinks, before any engine is built
            raise RunOutputsError(
                f"sinks: two sinks deliver to the same destination ({sink.kind}): remove one"
            )
        seen.add(name)
    for section, enabled, host, port in (
        ("metrics", cfg.metrics.enabled, cfg.metrics.host, cfg.metrics.port),
        ("ui", cfg.ui.enabled, cfg.ui.host, cfg.ui.port),
    ):
        if not enabled or port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                # The same option the HTTP servers set, so a port in TIME_WAIT is not reported as busy.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        except OSError as exc:
            raise _port_error(section, host, port, exc) from exc


def uncalibrated_notice(camera: str, on_threshold: float) -> str:
    """What an uncalibrated camera can and cannot do, and how to calibrate it (log and review page)."""
    return (
        f"camera {camera} is uncalibrated: it is scored and recorded, but its unnormalised fused score "
        f"(about 1 on normal footage) will rarely if ever reach alerts.on_threshold {on_threshold:g}, so "
        f"expect no alerts from it until it is calibrated: zsad calibrate CONFIG --camera {camera} "
        f"--footage URI_OF_NORMAL_FOOTAGE --out calib/{camera}.json, then set its calibration: to that file"
    )


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
        self.metrics = ZsadMetrics()
        self.metrics_server: Any = None
        self.review_server: Any = None
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.sinks = SinkFanout(build_sinks(cfg.sinks, self.out, metrics=self.metrics))
        except OSError as exc:
            raise _output_dir_error(self.out, exc) from exc
        except ValueError as exc:  # two sinks with one destination
            raise RunOutputsError(f"sinks: {exc}") from exc
        self.gate = StreamGate.load(gate_path) if gate_path else StreamGate.uniform()
        self.alerts: dict[str, CameraAlerts] = {}
        self.recorders: dict[str, EventRecorder] = {}
        self.run_state = RunState(self.out)
        self.run_state.load_existing()
        try:
            self._scores = (self.out / "scores.jsonl").open("a", encoding="utf-8")
        except OSError as exc:
            raise RunOutputsError(f"{exc.filename} cannot be written: {exc.strerror or exc}") from exc
        self._lock = threading.Lock()  # the score log
        # Serialises a camera's alert updates (scheduler or probe thread) with its removal (main thread).
        self._cameras_lock = threading.RLock()
        self._dropped_seen: dict[str, int] = {}  # scheduler drop counts already added to the metrics
        for cam in cfg.enabled_cameras():
            self.add_camera(cam)

    # -- cameras ----------------------------------------------------------------------------------------

    def add_camera(self, cam: CameraSettings) -> None:
        """Create a camera's fusion, alert machine, media recorder and review entry. A calibration file that
        cannot be read leaves the camera uncalibrated, with a warning; it never stops the run."""
        calibration = self._read_calibration(cam)
        fusion = CameraFusion(
            cam.id,
            calibration=calibration or Calibration.identity_for(cam.id),
            gate=self.gate,
            smoothing=cam.alerts.smoothing,
        )
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
        self.run_state.add_camera(
            cam.id,
            cam.context,
            redact_uri(cam.uri),
            threshold=cam.alerts.on_threshold,
            calibrated=calibration is not None,
        )

    @staticmethod
    def _read_calibration(cam: CameraSettings) -> Calibration | None:
        """The camera's calibration, or None (uncalibrated) with a warning that says what that means."""
        if cam.calibration:
            try:
                return load_calibration(cam.calibration)
            except CalibrationError as exc:
                log.warning("camera %s: %s; it starts uncalibrated", cam.id, exc)
        log.warning("%s", uncalibrated_notice(cam.id, cam.alerts.on_threshold))
        return None

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
        """Start the metrics endpoint, the review page and the sinks. Raises :class:`RunOutputsError` when
        a port cannot be bound (nothing is left running then)."""
        m, ui = self.cfg.metrics, self.cfg.ui
        if m.enabled:
            try:
                self.metrics_server = start_metrics_server(self.metrics, m.host, m.port)
            except OSError as exc:
                raise _port_error("metrics", m.host, m.port, exc) from exc
            log.info("metrics on %s", self.metrics_server.url)
        if ui.enabled:
            try:
                server = ReviewServer(self.run_state, self.out, ui.host, ui.port, ui.username, ui.password)
                self.review_server = server.start()
            except ReviewServerError as exc:
                if self.metrics_server is not None:
                    self.metrics_server.stop()
                    self.metrics_server = None
                cause = exc.__cause__
                if isinstance(cause, OSError):
                    raise _port_error("ui", ui.host, ui.port, cause) from exc
                raise RunOutputsError(f"ui: {exc}") from exc
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
