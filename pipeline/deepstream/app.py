"""``zsad run --graph deepstream``: the DeepStream graph wired to the same clip scoring, fusion and alerting
as the CPU graph.

load config -> open engines (``pipeline.inference.load_engines``: manifests checked against the config and
the device) -> render the mux config -> build the graph with the score probe -> run -> shut down (EOS, score
the queued clips, close open alerts, flush sinks and media).

DeepStream decodes, batches and scales the cameras' frames; everything after the score probe is the CPU
graph's code: :class:`pipeline.clips.ClipAssembler`, :class:`pipeline.cpu.scheduler.BatchScheduler`,
:class:`pipeline.inference.ClipInference` (backbone, DPC head with its per-camera history, semantic head,
through the configured engines backend: TensorRT on a device), and :class:`pipeline.outputs.hub.RunOutputs`
(fusion, alerts, sinks, media, metrics, review page). The wiring is
:class:`pipeline.clip_path.ClipPath`.
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
from pipeline import heap
from pipeline.clip_path import ClipPath
from pipeline.clips import Clip, ClipAssembler
from pipeline.deepstream import availability
from pipeline.deepstream.graph import DeepStreamGraph, DeepStreamGraphError, is_jetson, is_live, plan_graph
from pipeline.deepstream.probe import ClipScoringProbe, OsdScoreBoard, format_osd_text
from pipeline.deepstream.render import RenderError, render_all
from pipeline.inference import (
    ClipInference,
    ClipResult,
    EngineSet,
    appearance_expectation,
    engine_batch_limit,
    load_engines,
)
from pipeline.outputs.hub import ENDED_STATES, RunOutputs
from pipeline.signals import stop_on_signals

__all__ = ["DeepStreamApp", "run_deepstream"]

log = logging.getLogger(__name__)


class DeepStreamApp:
    """The probes the DeepStream graph calls, the clip path behind them, and the same
    :class:`pipeline.outputs.hub.RunOutputs` (fusion, alerts, media, sinks, metrics, review page) as the CPU
    graph.

    Args:
        cfg: the run config.
        engines: from :func:`pipeline.inference.load_engines` (backbone, DPC head, semantic head, gate).
        pyds: the ``pyds`` module.
        jetson: unmap RGBA surfaces after reading them (Jetson).
    """

    def __init__(self, cfg: ZsadConfig, engines: EngineSet, pyds: Any, *, jetson: bool) -> None:
        self.cfg = cfg
        self.engines = engines
        self.cameras = cfg.enabled_cameras()
        ids = [c.id for c in self.cameras]
        self.outputs = RunOutputs(
            cfg,
            model_id=engines.model_id,
            gate_path=engines.gate_path,
            appearance=appearance_expectation(engines),
            semantic_source=engines.semantic_source,
        )
        try:
            self._build_parts(cfg, engines, pyds, jetson=jetson, ids=ids)
        except BaseException:
            # The outputs hold the sinks' spool locks and the score log: release them before reporting.
            self.outputs.shutdown()
            raise

    def _build_parts(
        self, cfg: ZsadConfig, engines: EngineSet, pyds: Any, *, jetson: bool, ids: list[str]
    ) -> None:
        """Everything past the outputs: inference, the clip path and the probes."""
        pre = cfg.model.preprocess
        self.clip_len = pre.clip_len
        self.inference = ClipInference(
            engines,
            context_clips=cfg.model.dpc.context_clips,
            history_step=(pre.clip_len * pre.frame_stride) // pre.clip_hop,
            contexts={c.id: c.context for c in self.cameras},
            filters=self.outputs.filters,  # masks and learned levels, as on the CPU graph
            memories=self.outputs.memories,  # appearance memories, as on the CPU graph
            # appearance.spacing_s at each camera's own sampling rate, as on the CPU graph
            appearance_every={c.id: cfg.appearance_clips(c) for c in self.cameras},
            stationary=self.outputs.stationary,
            stationary_spacing_s=cfg.stationary.spacing_s,
            objects=self.outputs.objects,
            objects_spacing_s=cfg.objects.spacing_s,
        )
        self.clips = ClipPath(
            self.inference,
            ClipAssembler.from_config(pre),
            self.on_result,
            scheduler=cfg.scheduler,
            # Files wait for the clip path (no clip lost); live cameras drop their oldest queued clip.
            block=not is_live(cfg),
            max_batch=engine_batch_limit(engines),
        )
        self.board = OsdScoreBoard(pyds, ids) if cfg.deepstream.osd else None
        self.probe = ClipScoringProbe(
            pyds,
            ids,
            on_frame=self.on_frame,
            on_restart=self.clips.restart,
            on_live=self.on_live,
            on_gap=self.on_gap,
            frame_size=engines.frame_size,
            # The model reads each camera at its sampling.fps, as on the CPU graph (videorate there).
            sampling_fps={c.id: c.sampling.fps for c in self.cameras},
            unmap_surfaces=jetson,
        )
        self._heap = heap.HeapKeeper()

    # -- callbacks -------------------------------------------------------------------------------------------

    def on_frame(self, camera: str, t: float, rgb: np.ndarray) -> None:
        """A frame from the score probe (the score branch's streaming thread)."""
        self.outputs.frame_in(camera)
        self.outputs.display_frame(camera, rgb, t)
        if not self.clips.push(camera, t, rgb):  # a clip completed and the stopping scheduler refused it
            self.outputs.clips_dropped(camera, 1, clip_len=self.clip_len)

    def on_result(self, clip: Clip, result: ClipResult) -> None:
        """A scored clip (the scheduler's thread): fuse, alert, record, and show the fused score."""
        camera = clip.camera_id
        fused = self.outputs.clip_scored(
            camera,
            clip.end_pts,
            result.scores,
            result.prompt,
            frames=len(clip.frames),
            frame_t=clip.start_pts,
        )
        if self.board is not None:
            self.board.set_text(camera, format_osd_text(camera, fused, result.prompt))

    def on_state(self, camera: str, state: str, detail: str) -> None:
        """A camera's state from the bus: its end of stream, error or reconnect ends its stream (a later
        frame of it starts a new one, see :meth:`ClipScoringProbe.restart`)."""
        self.outputs.camera_state(camera, state, detail)
        if state in ENDED_STATES:
            self.probe.restart(camera)

    def on_gap(self, camera: str, t: float) -> None:
        """A frame the probe kept but could not read or hand on (the streaming thread): it goes to the clip
        assembly as a frame not read, so no clip spans it, and counts as dropped."""
        self.clips.push(camera, t, None)
        self.outputs.metrics.frames_dropped.inc(camera=camera)

    def on_live(self, camera: str) -> None:
        """A camera's first frame, or its first after a restart (the score branch's streaming thread): it is
        live, also after a source error or end of stream from which it came back."""
        self.outputs.camera_state(camera, "live", "")

    def on_tick(self) -> None:
        """Every 200 ms on the graph's main loop: queue counters into the metrics, heap trimming."""
        self.outputs.record_queues(self.clips.stats(), clip_len=self.clip_len)
        self._heap.tick()

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self.inference.warm_up(self.clips.max_batch)
        self.outputs.start()
        self.clips.start()
        for cam in self.cameras:
            self.outputs.camera_state(cam.id, "starting", "")

    def run(
        self,
        graph: DeepStreamGraph,
        duration_s: float | None = None,
        on_start: Callable[[RunOutputs], None] | None = None,
    ) -> int:
        """Start, run ``graph`` (built with this app's probes) until it ends, shut down; the graph's exit
        code."""
        try:
            self.start()
            if on_start is not None:
                on_start(self.outputs)
            with stop_on_signals(graph.request_stop):
                code = graph.run(duration_s, on_tick=self.on_tick)
        except BaseException:
            # A port taken at the real bind, an RTSP server that cannot start: nothing may be left running.
            self.shutdown()
            raise
        left = self.shutdown()
        if any(left.values()):
            log.warning("alerts still spooled for later delivery: %s", left)
        return code

    def shutdown(self) -> dict[str, int]:
        """Score the queued clips, close open alerts, flush the outputs, close the engines; return what
        stays spooled."""
        self.clips.stop(drain=True)
        stats = self.clips.stats()
        self.outputs.record_queues(stats, clip_len=self.clip_len)
        left = self.outputs.shutdown()
        self.engines.close()
        processed = sum(q.processed for q in stats.cameras.values())
        dropped = sum(q.dropped for q in stats.cameras.values())
        failed = sum(q.failed for q in stats.cameras.values())
        log.info(
            "score probe: %d batches, %d frames (%d not sampled, %d failed), %d restarts, %d dropped "
            "batches; clips: %d scored, %d dropped, %d failed",
            self.probe.batches,
            self.probe.frames,
            self.probe.sampled_out,
            self.probe.failed_frames,
            self.probe.restarts,
            self.probe.dropped_batches,
            processed,
            dropped,
            failed,
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
    heap.limit_arenas()  # before the runtimes start their threads
    engines = load_engines(cfg)
    run_dir = Path(cfg.output_dir) / "deepstream"
    try:
        rendered = render_all(cfg, run_dir)
    except RenderError:
        engines.close()
        raise
    import pyds

    jetson = is_jetson()
    try:
        app = DeepStreamApp(cfg, engines, pyds, jetson=jetson)
    except BaseException:
        engines.close()
        raise
    try:
        plan = plan_graph(cfg, rendered, engines.frame_size, jetson=jetson)
        graph = DeepStreamGraph(plan, score_probe=app.probe, osd_probe=app.board, on_state=app.on_state)
    except DeepStreamGraphError:  # a plan error
        app.shutdown()
        raise
    except GstError as exc:  # a missing element or a failed link: one error type for the caller
        app.shutdown()
        raise DeepStreamGraphError(str(exc)) from exc
    return app.run(graph, duration_s, on_start)
