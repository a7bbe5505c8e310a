"""``zsad run CONFIG``: many cameras in, alerts out.

load config -> check engine manifests -> build graph and attach the fusion -> run -> shut down cleanly
(SIGTERM/SIGINT: stop the sources, drain the scheduler, close open alerts, flush sinks and media).

SIGHUP re-reads the config file and applies its camera list without stopping the other cameras: new
cameras are added, removed (or disabled) ones stopped (an open alert closes with reason "shutdown"), and a
camera whose settings changed is restarted alone. A camera whose only change is its zones, mask or alert
zones keeps running: the new zones apply from its next clip. Every running camera's zone overrides file
(``<output_dir>/overrides/<camera>.yaml``) is read again too. Other sections (model, engines, sinks,
scheduler, ...) need a restart; a change there is logged and ignored. An invalid file is logged and nothing
changes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config import CameraSettings, ConfigError, ZsadConfig, load_config
from pipeline import heap
from pipeline.clip_path import ClipPath
from pipeline.clips import Clip, ClipAssembler
from pipeline.cpu.graph import CameraGraph, GraphStateError
from pipeline.cpu.sources import SourceError, parse_source_uri
from pipeline.inference import (
    ClipInference,
    ClipResult,
    EngineSet,
    appearance_expectation,
    engine_batch_limit,
    load_engines,
)
from pipeline.outputs.hub import RunOutputs
from pipeline.signals import stop_on_signals

log = logging.getLogger(__name__)

__all__ = ["Application", "CameraChangeError", "ReloadResult", "run_config", "warn_idle_contexts"]

DISPLAY_SIZE = (320, 240)  # event media resolution (width, height)
FINISHED_STATES = {"eos", "failed", "stopped"}


# Sections a SIGHUP reload cannot change in a running process (the memory streams' are read when the run
# starts: the appearance schedule and the feeds' spacing are the scorer's).
_RESTART_SECTIONS = (
    "model",
    "engines",
    "appearance",
    "stationary",
    "objects",
    "deepstream",
    "sinks",
    "media",
    "scheduler",
    "metrics",
    "ui",
    "graph",
    "output_dir",
)


def warn_idle_contexts(cameras: Iterable[CameraSettings], engines: EngineSet, engine_dir: str) -> None:
    """A camera's ``context:`` (and ``prompts:``) picks the semantic stream's prompts and nothing else:
    with that stream off they change nothing but the alert's context label. Say so once per camera."""
    if engines.semantic_source is not None:
        return
    for cam in cameras:
        if cam.context != "generic" or cam.prompts not in (None, "generic"):
            log.warning(
                "camera %s: context %r only picks the semantic stream's prompts, and the semantic stream is "
                "off (no semantic_head engine in %s): on this run it only labels the camera's alerts; set "
                "model.semantic.clip_text_model to a local CLIP folder and rebuild the engines to use it",
                cam.id,
                cam.context,
                engine_dir,
            )


class CameraChangeError(RuntimeError):
    """A camera that cannot be added or removed at run time; the message names it and says why."""


@dataclass
class ReloadResult:
    """What a config reload did: camera ids added, removed, restarted (settings changed), rezoned (zones
    changed, kept running) and refused (with the reason), and top-level sections whose change needs a process
    restart (ignored)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    rezoned: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    needs_restart: list[str] = field(default_factory=list)


class Application:
    """One running system: the camera graph, the scheduler, and per-camera fusion, alerts and media.

    Cameras can be added and removed while it runs (:meth:`add_camera`, :meth:`remove_camera`,
    :meth:`reload`) without touching the others' pipelines.
    """

    def __init__(self, cfg: ZsadConfig, engines: EngineSet, *, realtime: bool = True):
        self.cfg = cfg
        self.engines = engines
        self.realtime = realtime
        self.out = Path(cfg.output_dir)
        # Fusion, alerts, media, sinks, metrics and the review page: shared with the DeepStream graph.
        self.outputs = RunOutputs(
            cfg,
            model_id=engines.model_id,
            gate_path=engines.gate_path,
            appearance=appearance_expectation(engines),
            semantic_source=engines.semantic_source,
        )
        try:
            self._build_parts(cfg, engines, realtime)
        except BaseException:
            # The outputs hold the sinks' spool locks and the score log: release them, so that the caller
            # may report the error and try again on this output_dir within the same process.
            self.outputs.shutdown()
            raise

    def _build_parts(self, cfg: ZsadConfig, engines: EngineSet, realtime: bool) -> None:
        """Everything past the outputs: cameras, inference, the clip path and the camera graph."""
        self.metrics = self.outputs.metrics
        self.run_state = self.outputs.run_state
        self.sinks = self.outputs.sinks
        self.stop_event = threading.Event()
        self.cameras = {c.id: c for c in cfg.enabled_cameras()}
        pre = cfg.model.preprocess
        span = pre.clip_len * pre.frame_stride
        self.inference = ClipInference(
            engines,
            context_clips=cfg.model.dpc.context_clips,
            history_step=span // pre.clip_hop,
            contexts={c.id: c.context for c in self.cameras.values()},
            filters=self.outputs.filters,
            memories=self.outputs.memories,
            appearance_every={cid: cfg.appearance_clips(cam) for cid, cam in self.cameras.items()},
            stationary=self.outputs.stationary,
            stationary_spacing_s=cfg.stationary.spacing_s,
            objects=self.outputs.objects,
            objects_spacing_s=cfg.objects.spacing_s,
        )
        self._cameras_lock = threading.RLock()  # the camera table (reload on the main thread)
        self._reload_requested = threading.Event()
        self._wake = threading.Event()
        self._heap = heap.HeapKeeper()
        # Clip assembly, batching and inference, as on the DeepStream graph; files read as fast as possible
        # wait for the scheduler (no clip lost), live cameras drop their oldest queued clip (a live
        # stream cannot wait: its server would drop the session), also in a --fast run.
        self.clips = ClipPath(
            self.inference,
            ClipAssembler.from_config(pre),
            self._on_result,
            scheduler=cfg.scheduler,
            block=lambda camera: not realtime and not self._is_live(camera),
            # TensorRT engines refuse a batch above their profile's max_batch: no batch is larger.
            max_batch=engine_batch_limit(engines),
        )
        self.assembler = self.clips.assembler
        self.scheduler = self.clips.scheduler
        self.graph = CameraGraph(
            engines.frame_size,
            self._on_frame,
            self._on_state,
            cameras=self.cameras.values(),
            realtime=realtime,
            display_size=DISPLAY_SIZE,
            on_display_frame=self._on_display_frame,
            on_loop=self.clips.restart,
            decode_nice=cfg.scheduler.decode_nice,
            decode_threads=cfg.scheduler.decode_threads,
            # Frames no clip holds (every other one at frame_stride 2) are counted but never scaled or read.
            wants_frame=self.assembler.wants_next,
        )

    # -- per-camera parts ---------------------------------------------------------------------------------

    @property
    def review_server(self) -> Any:
        return self.outputs.review_server

    @property
    def metrics_server(self) -> Any:
        return self.outputs.metrics_server

    def add_camera(self, cam: CameraSettings) -> None:
        """Start one more camera while running; the others are not touched. A calibration file that cannot
        be read starts it uncalibrated, with a warning. Raises :class:`CameraChangeError` (duplicate id,
        unsupported URI, missing element, an output that cannot be created)."""
        with self._cameras_lock:
            if cam.id in self.cameras:
                raise CameraChangeError(f"camera {cam.id!r} is already running")
        try:
            self.outputs.add_camera(cam)
        except Exception as exc:  # whatever stops this camera's outputs (media folder, ...): refuse it alone
            raise CameraChangeError(f"camera {cam.id!r}: {exc}") from exc
        with self._cameras_lock:
            self.cameras[cam.id] = cam
            self.inference.contexts[cam.id] = cam.context
            self.inference.appearance_every[cam.id] = self.cfg.appearance_clips(cam)
        try:
            self.graph.add_camera(cam)
        except (SourceError, ValueError, RuntimeError) as exc:
            self._detach_camera(cam.id)
            raise CameraChangeError(f"camera {cam.id!r}: {exc}") from exc
        log.info("camera %s added", cam.id)

    def remove_camera(self, camera_id: str) -> list[dict[str, Any]]:
        """Stop one camera while running: its pipeline stops, queued clips are discarded, an open alert is
        closed (reason "shutdown") and published, its media finished. Returns the records published.
        Raises :class:`CameraChangeError` for an unknown id."""
        with self._cameras_lock:
            if camera_id not in self.cameras:
                raise CameraChangeError(f"no camera {camera_id!r} is running")
        with contextlib.suppress(KeyError):  # KeyError: it never reached the graph
            self.graph.remove_camera(camera_id)
        records = self._detach_camera(camera_id)
        log.info("camera %s removed", camera_id)
        return records

    def _detach_camera(self, camera_id: str) -> list[dict[str, Any]]:
        self.sync_metrics()
        self.clips.forget(camera_id)
        with self._cameras_lock:
            self.cameras.pop(camera_id, None)
            self.inference.contexts.pop(camera_id, None)
            self.inference.appearance_every.pop(camera_id, None)
        return self.outputs.remove_camera(camera_id)

    def reload(self, cfg: ZsadConfig) -> ReloadResult:
        """Apply the camera list of ``cfg`` (a re-read config): add new enabled cameras, remove gone or
        disabled ones, restart those whose settings changed. Everything else in ``cfg`` is compared and a
        difference reported in ``needs_restart`` (not applied)."""
        result = ReloadResult()
        for section in _RESTART_SECTIONS:
            if getattr(cfg, section) != getattr(self.cfg, section):
                result.needs_restart.append(section)
        if result.needs_restart:
            log.warning(
                "config reload: changes to %s need a restart; only cameras are reloaded",
                ", ".join(result.needs_restart),
            )
        wanted = {c.id: c for c in cfg.enabled_cameras()}
        with self._cameras_lock:
            running = dict(self.cameras)
        for cid, cam in running.items():
            if cid not in wanted:
                self.remove_camera(cid)
                result.removed.append(cid)
            elif wanted[cid].model_copy(update={"zoning": cam.zoning}) != cam:
                self.remove_camera(cid)
                result.restarted.append(cid)
            else:
                # Zones alone never restart a camera; its overrides file is read again as well.
                if self.outputs.refresh_zones(cid, wanted[cid].zoning):
                    result.rezoned.append(cid)
                with self._cameras_lock:
                    self.cameras[cid] = wanted[cid]
        for cid, cam in wanted.items():
            if cid in running and cid not in result.restarted:
                continue
            try:
                self.add_camera(cam)
            except CameraChangeError as exc:
                log.error("config reload: %s", exc)
                result.refused[cid] = str(exc)
                continue
            if cid not in result.restarted:
                result.added.append(cid)
        self.cfg = self.cfg.model_copy(update={"cameras": cfg.cameras, "defaults": cfg.defaults})
        log.info(
            "config reloaded: added %s, removed %s, restarted %s, rezoned %s, refused %s",
            result.added,
            result.removed,
            result.restarted,
            result.rezoned,
            sorted(result.refused),
        )
        return result

    def reload_file(self, path: str | Path) -> ReloadResult | None:
        """Re-read ``path`` and :meth:`reload` it; an invalid file is logged and changes nothing (None)."""
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            log.error("config reload refused, the running cameras are unchanged:\n%s", exc)
            return None
        return self.reload(cfg)

    def request_reload(self) -> None:
        """Ask :meth:`wait` to re-read the config file (safe from a signal handler)."""
        self._reload_requested.set()
        self._wake.set()

    # -- callbacks (GStreamer and scheduler threads) ----------------------------------------------------

    def _is_live(self, camera: str) -> bool:
        """A camera that reconnects (rtsp, http, v4l2), as the graphs read its URI; a removed one counts
        as live, so that its last clips drop rather than wait."""
        cam = self.cameras.get(camera)
        return cam is None or parse_source_uri(cam.uri).reconnects

    def _on_frame(self, camera: str, pts: float, frame: Any) -> None:
        """Every sampled frame of ``camera``; ``frame`` None for one no clip holds (counted, not read)."""
        self.outputs.frame_in(camera)
        if not self.clips.push(camera, pts, frame):  # a clip completed and the stopping scheduler refused it
            self.outputs.clips_dropped(camera, 1, clip_len=self.cfg.model.preprocess.clip_len)

    def _on_display_frame(self, camera: str, pts: float, frame: Any) -> None:
        self.outputs.display_frame(camera, frame, pts)

    def _on_state(self, camera: str, state: str, detail: str) -> None:
        self.outputs.camera_state(camera, state, detail)
        if state == "reconnecting":
            # The old pipeline is detached (its late frames are dropped by generation); its clips still
            # queued keep their history, the new stream's first clip starts a new one (ClipPath.restart).
            self.clips.restart(camera)

    def _on_result(self, clip: Clip, result: ClipResult) -> None:
        cam = clip.camera_id
        with self._cameras_lock:
            if cam not in self.cameras:  # removed while its clip was being scored: forget its history
                self.inference.reset(cam)
                return
        if self.clips.is_stale(clip):  # the old stream of a camera restarted by a reload: not the new one's
            return
        self.outputs.clip_scored(
            cam, clip.end_pts, result.scores, result.prompt, frames=len(clip.frames), frame_t=clip.start_pts
        )

    def sync_metrics(self) -> None:
        """Copy the scheduler's queue depths and drop-oldest counts into the metrics
        (:meth:`RunOutputs.record_queues`; called every second by :meth:`wait`)."""
        self.outputs.record_queues(self.scheduler.stats(), clip_len=self.cfg.model.preprocess.clip_len)

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything. Whatever fails (an engine's warm-up, a port in use, the camera graph) leaves
        nothing running: what had started is stopped and the outputs and the engines are closed, so the
        caller can just report it (:class:`pipeline.outputs.hub.RunOutputsError`: an output cannot
        start)."""
        heap.limit_arenas()
        try:
            self.inference.warm_up(self.clips.max_batch)
            self.outputs.start()
            self.scheduler.start()
            self.graph.start()
        except BaseException:
            # Each part is stopped even if another fails to, and the start's own error is the one raised.
            for what, stop in (
                ("the camera graph", self.graph.stop),
                ("the scheduler", lambda: self.scheduler.stop(drain=False)),
                ("the outputs", self.outputs.shutdown),
                ("the engines", self.engines.close),
            ):
                try:
                    stop()
                except Exception:
                    log.exception("after a failed start, stopping %s failed too", what)
            raise

    def wait(
        self, duration_s: float | None = None, progress: Any = None, config_path: str | Path | None = None
    ) -> None:
        """Run until stopped, ``duration_s`` elapses, or every camera has finished (files at EOS).
        A :meth:`request_reload` (SIGHUP) re-reads ``config_path`` here, on the calling thread."""
        deadline = time.monotonic() + duration_s if duration_s else None
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            self._heap.tick()
            if self.stop_event.is_set():
                return
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                if config_path is None:
                    log.warning("reload requested but the run has no config file to re-read")
                else:
                    self.reload_file(config_path)
            self.sync_metrics()
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
        self._wake.set()

    def shutdown(self) -> dict[str, int]:
        """Stop in dependency order; nothing accepted is lost (open alerts close with reason 'shutdown').

        A camera graph that cannot be stopped (:class:`GraphStateError`: its loop did not answer) does not
        stop the rest: the queued clips are still scored, the outputs (open alerts, media, sinks, ports)
        and the engines closed, and then its error is raised. Whatever else fails on the way, the outputs
        and the engines are still closed before it goes on."""
        graph_error: GraphStateError | None = None
        try:
            self.graph.stop()
        except GraphStateError as exc:
            log.error("stopping the camera graph failed (%s); shutting the rest of the run down", exc)
            graph_error = exc
        try:
            self.scheduler.stop(drain=True)
            self.sync_metrics()
        finally:
            # Open alerts closed and delivered or spooled, ports and spool locks released, also when a step
            # above raised.
            try:
                left = self.outputs.shutdown()
            finally:
                self.engines.close()
        if graph_error is not None:
            raise graph_error
        return left


def run_config(
    cfg: ZsadConfig,
    *,
    duration_s: float | None = None,
    realtime: bool = True,
    progress: Any = None,
    config_path: str | Path | None = None,
    on_start: Callable[[RunOutputs], None] | None = None,
) -> int:
    """Check engines, build the graph, run, shut down. Returns an exit code. With ``config_path``, SIGHUP
    re-reads it and applies its cameras (:meth:`Application.reload`). ``on_start`` is called once
    everything runs (the command line prints the review page's address there). Exit code 1 when every
    camera ended failed (nothing was watched).

    Raises :class:`pipeline.inference.EngineError` when the engines are missing or do not fit ``cfg``, and
    :class:`pipeline.outputs.hub.RunOutputsError` when an output cannot start (an unwritable folder, a port
    in use); nothing is left running then, nor when anything raises later (a callback, a reload): the run
    is shut down as at its end before the error goes on."""
    heap.limit_arenas()  # before the runtimes start their threads
    engines = load_engines(cfg)
    try:
        app = Application(cfg, engines, realtime=realtime)
    except BaseException:
        engines.close()
        raise
    warn_idle_contexts(app.cameras.values(), engines, cfg.engines.dir)
    with stop_on_signals(app.request_stop, app.request_reload if config_path is not None else None):
        app.start()  # leaves nothing running when it fails
        try:
            if on_start is not None:
                on_start(app.outputs)
            app.wait(duration_s, progress, config_path=config_path)
            states = app.graph.states()
        finally:
            # Also when a callback or a reload raised: queued clips are scored, open alerts closed and
            # delivered or spooled, the ports and the engines released.
            left = app.shutdown()
    if any(left.values()):
        log.warning("alerts still spooled for later delivery: %s", left)
    if states and all(s == "failed" for s in states.values()):
        # Nothing was watched: a service manager or a script must see it (one camera that failed beside
        # others that ran is the run's normal life, said in the log and on the review page).
        log.error("every camera failed: %s", states)
        return 1
    return 0
