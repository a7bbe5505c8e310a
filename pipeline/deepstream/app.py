"""``zsad run --graph deepstream``: the DeepStream graph wired to the same scoring, fusion and alerting as the
CPU graph.

load config -> open engines (``pipeline.inference.load_engines``: manifests checked against the config and
the device) -> render the DeepStream config files -> build the graph with the score probe -> run -> shut
down (EOS, close open alerts, flush sinks and media).

What is shared with the CPU graph: the DPC-head runner and :class:`engines.scoring.ClipScorer` (through
:class:`plugins.deepstream_probe.ClipScoringProbe`), the frame normalisation
(:func:`pipeline.clips.to_model_input`), :class:`plugins.fusion.CameraFusion`,
:class:`pipeline.events.CameraAlerts`, the sinks, event media and metrics. What differs: the backbone runs
in nvinfer (its Python backend is closed right after the manifest checks), and clips are assembled by
nvdspreprocess instead of :class:`pipeline.clips.ClipAssembler`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.clips import Clip, to_model_input
from pipeline.config import ZsadConfig

__all__ = ["DeepStreamApp", "frame_normaliser", "run_deepstream", "semantic_hook"]

log = logging.getLogger(__name__)


def frame_normaliser(mean: Sequence[float], std: Sequence[float]) -> Callable[[np.ndarray], np.ndarray]:
    """``(H, W, 3) uint8`` RGB -> ``(3, H, W) float32``, computed by the CPU graph's own
    :func:`pipeline.clips.to_model_input`, so both graphs feed the DPC head bit-identical frames."""

    def normalise(rgb: np.ndarray) -> np.ndarray:
        clip = Clip("frame", 0, np.ascontiguousarray(rgb)[None], np.zeros(1), 0)
        return to_model_input([clip], mean, std)[0, 0]

    return normalise


def semantic_hook(
    engines: Any, contexts: dict[str, str]
) -> Callable[[Sequence[str], np.ndarray], list[tuple[float, str] | None]] | None:
    """The semantic stream for the probe, or None without a semantic head.

    Same computation as the semantic block of :class:`pipeline.inference.ClipInference`: project the
    batch's embeddings, then per camera ``max(anomalous sims) - max(normal sims)`` and the best anomalous
    prompt of the camera's context.
    """
    if engines.semantic is None:
        return None

    def semantic(cameras: Sequence[str], embeddings: np.ndarray) -> list[tuple[float, str] | None]:
        video = engines.semantic({"embedding": embeddings})["video"]
        out: list[tuple[float, str] | None] = []
        for i, camera in enumerate(cameras):
            entry = engines.texts.get(contexts.get(camera, "generic"))
            if entry is None:
                out.append(None)
                continue
            text, n_normal, names = entry
            sims = text @ video[i]
            best = int(np.argmax(sims[n_normal:])) + n_normal
            out.append((float(sims[n_normal:].max() - sims[:n_normal].max()), names[best]))
        return out

    return semantic


class DeepStreamApp:
    """Per-camera fusion, alerts, media, sinks and metrics, plus the probes the graph calls.

    Args:
        cfg: the run config.
        engines: from :func:`pipeline.inference.load_engines` (the DPC head, semantic head, gate).
        pyds: the ``pyds`` module.
        jetson: unmap RGBA surfaces after reading them (Jetson).
    """

    def __init__(self, cfg: ZsadConfig, engines: Any, pyds: Any, *, jetson: bool) -> None:
        from engines.scoring import ClipScorer
        from pipeline.deepstream.render import BACKBONE_UNIQUE_ID
        from pipeline.events import CameraAlerts
        from pipeline.media import EventRecorder
        from pipeline.metrics import ZsadMetrics
        from pipeline.redact import redact_uri
        from pipeline.sinks import SinkFanout, build_sinks
        from pipeline.state import RunState
        from plugins.deepstream_probe import ClipScoringProbe, OsdScoreBoard
        from plugins.fusion import CameraFusion, StreamGate, load_calibration

        self.cfg = cfg
        self.engines = engines
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.metrics = ZsadMetrics()
        self.metrics_server: Any = None
        self.cameras = cfg.enabled_cameras()
        ids = [c.id for c in self.cameras]
        self.sinks = SinkFanout(build_sinks(cfg.sinks, self.out, metrics=self.metrics))
        gate = StreamGate.load(engines.gate_path) if engines.gate_path else StreamGate.uniform()
        self.alerts: dict[str, Any] = {}
        self.recorders: dict[str, Any] = {}
        for cam in self.cameras:
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
        pre = cfg.model.preprocess
        self.clip_len = pre.clip_len
        self.scorer = ClipScorer(
            engines.dpc,
            context_clips=cfg.model.dpc.context_clips,
            history_step=(pre.clip_len * pre.frame_stride) // pre.clip_hop,
        )
        self.board = OsdScoreBoard(pyds, ids) if cfg.deepstream.osd else None
        self.probe = ClipScoringProbe(
            pyds,
            self.scorer,
            ids,
            clip_len=pre.clip_len,
            frame_stride=pre.frame_stride,
            normalise=frame_normaliser(engines.mean, engines.std),
            on_scores=self.on_scores,
            osd_text=self.board.set_text if self.board is not None else None,
            on_frame=self.on_frame,
            semantic=semantic_hook(engines, {c.id: c.context for c in self.cameras}),
            unique_id=BACKBONE_UNIQUE_ID,
            unmap_surfaces=jetson,
        )
        # What the review page shows, fed exactly as pipeline.run.Application feeds it.
        self.run_state = RunState(self.out)
        self.run_state.load_existing()
        for cam in self.cameras:
            self.run_state.add_camera(
                cam.id, cam.context, redact_uri(cam.uri), threshold=cam.alerts.on_threshold
            )
        self.review_server: Any = None
        self._scores = (self.out / "scores.jsonl").open("a", encoding="utf-8")
        self._scores_lock = threading.Lock()

    # -- callbacks (the score branch's streaming thread, the bus) --------------------------------------

    def on_frame(self, camera: str, pts: float, rgb: np.ndarray) -> None:
        self.metrics.frames_in.inc(camera=camera)
        self.run_state.frame_in(camera)
        self.alerts[camera].add_frame(rgb, pts)

    def on_scores(self, camera: str, t: float, scores: Any, prompt: str | None) -> float | None:
        """A scored clip: fuse, alert, record. Returns the fused score for the OSD."""
        self.metrics.frames_processed.inc(self.clip_len, camera=camera)
        fused, records = self.alerts[camera].update(scores.scores, scores.embedding, t, prompt=prompt)
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
        with self._scores_lock:
            self._scores.write(json.dumps(row) + "\n")
        return float(fused.score)

    def on_state(self, camera: str, state: str, detail: str) -> None:
        self.metrics.set_camera_state(camera, state)
        self.run_state.set_camera_state(camera, state, detail)
        log.info("camera %s: %s %s", camera, state, detail)

    # -- lifecycle ----------------------------------------------------------------------------------------

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
        self.sinks.start()
        for cam in self.cameras:
            self.on_state(cam.id, "starting", "")

    def shutdown(self) -> dict[str, int]:
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
        log.info(
            "score probe: %d batches, %d clips, %d dropped batches",
            self.probe.batches,
            self.probe.clips,
            self.probe.dropped_batches,
        )
        return left


def _select_mux(kind: str) -> None:
    """nvstreammux picks its implementation from ``USE_NEW_NVSTREAMMUX`` when its plugin loads, i.e. at the
    first element created, so this runs before the graph is built."""
    want = "yes" if kind == "new" else "no"
    have = os.environ.get("USE_NEW_NVSTREAMMUX")
    if have is not None and have != want:
        log.warning(
            "USE_NEW_NVSTREAMMUX=%s in the environment; deepstream.mux=%s sets it to %s", have, kind, want
        )
    os.environ["USE_NEW_NVSTREAMMUX"] = want


def run_deepstream(cfg: ZsadConfig, *, duration_s: float | None = None) -> int:
    """Check, render, build, run, shut down. Returns 0, 1 (a pipeline error) or 2 (unusable input)."""
    from pipeline.deepstream import deepstream_unavailable_reason
    from pipeline.deepstream.graph import DeepStreamGraph, DeepStreamGraphError, is_jetson, plan_graph
    from pipeline.deepstream.render import RenderError, render_all
    from pipeline.inference import EngineError, load_engines
    from pipeline.run import stop_on_signals

    reason = deepstream_unavailable_reason()
    if reason:
        print(f"cannot run the DeepStream graph: {reason}")
        return 2
    _select_mux(cfg.deepstream.mux)
    try:
        engines = load_engines(cfg)
    except EngineError as exc:
        log.error("refusing to start: %s", exc)
        print(f"refusing to start: {exc}")
        return 2
    # nvinfer runs the backbone; its Python backend was opened only for the manifest and device checks.
    backbone = engines.backbone.manifest
    engines.backbone.close()
    run_dir = Path(cfg.output_dir) / "deepstream"
    try:
        rendered = render_all(cfg, backbone, run_dir)
    except RenderError as exc:
        engines.close()
        print(f"refusing to start: {exc}")
        return 2
    log.info("DeepStream configs in %s", run_dir)
    import pyds

    jetson = is_jetson()
    app = DeepStreamApp(cfg, engines, pyds, jetson=jetson)
    try:
        plan = plan_graph(cfg, rendered, engines.frame_size, jetson=jetson)
        graph = DeepStreamGraph(plan, score_probe=app.probe, osd_probe=app.board, on_state=app.on_state)
    except DeepStreamGraphError as exc:
        app.shutdown()
        print(f"cannot build the DeepStream graph: {exc}")
        return 1
    app.start()
    with stop_on_signals(graph.request_stop):
        code = graph.run(duration_s)
    left = app.shutdown()
    if any(left.values()):
        log.warning("alerts still spooled for later delivery: %s", left)
    return code
