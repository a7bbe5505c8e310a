"""``zsad run --graph deepstream``: the DeepStream graph wired to the same scoring, fusion and alerting as the
CPU graph.

load config -> open engines (``pipeline.inference.load_engines``: manifests checked against the config and
the device) -> render the DeepStream config files -> build the graph with the score probe -> run -> shut
down (EOS, close open alerts, flush sinks and media).

What is shared with the CPU graph: the DPC-head runner and :class:`plugins.scorer.ClipScorer` (through
:class:`pipeline.deepstream.probe.ClipScoringProbe`), the frame normalisation
(:class:`plugins.preprocess.Normaliser`), the semantic stream (:class:`plugins.semantic.SemanticScorer`),
:class:`plugins.fusion.CameraFusion`, :class:`pipeline.outputs.events.CameraAlerts`, the sinks, event media
and metrics. What differs: the backbone runs in nvinfer (its Python backend is closed right after the
manifest checks), and clips are assembled by nvdspreprocess instead of :class:`pipeline.clips.ClipAssembler`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.config import ZsadConfig
from core.gst import GstError
from pipeline.deepstream import availability
from pipeline.deepstream.graph import DeepStreamGraph, DeepStreamGraphError, is_jetson, plan_graph
from pipeline.deepstream.probe import ClipScoringProbe, OsdScoreBoard
from pipeline.deepstream.render import BACKBONE_UNIQUE_ID, RenderError, render_all
from pipeline.inference import load_engines, semantic_scorer
from pipeline.outputs.hub import RunOutputs
from pipeline.signals import stop_on_signals
from plugins.preprocess import Normaliser
from plugins.scorer import ClipScorer

__all__ = ["DeepStreamApp", "run_deepstream"]

log = logging.getLogger(__name__)


class DeepStreamApp:
    """The probes the DeepStream graph calls, ending in the same :class:`pipeline.outputs.hub.RunOutputs`
    (fusion, alerts, media, sinks, metrics, review page) as the CPU graph.

    Args:
        cfg: the run config.
        engines: from :func:`pipeline.inference.load_engines` (the DPC head, semantic head, gate).
        pyds: the ``pyds`` module.
        jetson: unmap RGBA surfaces after reading them (Jetson).
    """

    def __init__(self, cfg: ZsadConfig, engines: Any, pyds: Any, *, jetson: bool) -> None:
        self.cfg = cfg
        self.engines = engines
        self.cameras = cfg.enabled_cameras()
        ids = [c.id for c in self.cameras]
        self.outputs = RunOutputs(cfg, model_id=engines.model_id, gate_path=engines.gate_path)
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
            normalise=Normaliser(engines.mean, engines.std),
            on_scores=self.on_scores,
            osd_text=self.board.set_text if self.board is not None else None,
            on_frame=self.on_frame,
            semantic=semantic_scorer(engines, {c.id: c.context for c in self.cameras}),
            unique_id=BACKBONE_UNIQUE_ID,
            unmap_surfaces=jetson,
        )

    # -- callbacks (the score branch's streaming thread, the bus) --------------------------------------

    def on_frame(self, camera: str, pts: float, rgb: np.ndarray) -> None:
        self.outputs.frame_in(camera)
        self.outputs.display_frame(camera, rgb, pts)

    def on_scores(self, camera: str, t: float, scores: Any, prompt: str | None) -> float | None:
        """A scored clip: fuse, alert, record. Returns the fused score for the OSD."""
        return self.outputs.clip_scored(camera, t, scores, prompt, frames=self.clip_len)

    def on_state(self, camera: str, state: str, detail: str) -> None:
        self.outputs.camera_state(camera, state, detail)

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self.outputs.start()
        for cam in self.cameras:
            self.on_state(cam.id, "starting", "")

    def shutdown(self) -> dict[str, int]:
        left = self.outputs.shutdown()
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


def run_deepstream(
    cfg: ZsadConfig,
    *,
    duration_s: float | None = None,
    on_start: Callable[[RunOutputs], None] | None = None,
) -> int:
    """Check, render, build, run, shut down. Returns the graph's exit code (0, or 1 on a pipeline error);
    ``on_start`` is called once the graph is built and the outputs run.

    Raises (nothing is left running then):
    :class:`pipeline.deepstream.availability.DeepStreamUnavailable` (no pyds or
    DeepStream elements on this machine), :class:`pipeline.inference.EngineError` (engines missing or not
    fitting ``cfg``), :class:`pipeline.deepstream.render.RenderError` (the config cannot be rendered) and
    :class:`pipeline.deepstream.graph.DeepStreamGraphError` (the graph cannot be built)."""
    # The one availability check of a DeepStream run (looked up on its module so tests can stand in).
    reason = availability.deepstream_unavailable_reason()
    if reason:
        raise availability.DeepStreamUnavailable(reason)
    _select_mux(cfg.deepstream.mux)
    engines = load_engines(cfg)
    # nvinfer runs the backbone; its Python backend was opened only for the manifest and device checks.
    backbone = engines.backbone.manifest
    engines.backbone.close()
    run_dir = Path(cfg.output_dir) / "deepstream"
    try:
        rendered = render_all(cfg, backbone, run_dir)
    except RenderError:
        engines.close()
        raise
    log.info("DeepStream configs in %s", run_dir)
    import pyds

    jetson = is_jetson()
    app = DeepStreamApp(cfg, engines, pyds, jetson=jetson)
    try:
        plan = plan_graph(cfg, rendered, engines.frame_size, jetson=jetson)
        graph = DeepStreamGraph(plan, score_probe=app.probe, osd_probe=app.board, on_state=app.on_state)
    except DeepStreamGraphError:  # a plan error
        app.shutdown()
        raise
    except GstError as exc:  # a missing element or a failed link: one error type for the caller
        app.shutdown()
        raise DeepStreamGraphError(str(exc)) from exc
    app.start()
    if on_start is not None:
        on_start(app.outputs)
    with stop_on_signals(graph.request_stop):
        code = graph.run(duration_s)
    left = app.shutdown()
    if any(left.values()):
        log.warning("alerts still spooled for later delivery: %s", left)
    return code
