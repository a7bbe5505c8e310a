"""``zsad calibrate``: fit a camera's score statistics and threshold from its normal footage.

No gradient step: the footage runs through the same graph, preprocessing and engines as a live run,
each stream's raw clip scores are collected, and ``plugins.fusion.fit_calibration`` turns them into
robust statistics, each stream's reliability weight from held-out time folds of the footage, and a default
threshold (a high quantile of the fused normal score). The command prints which streams the camera trusts
and why (``plugins.fusion.describe_trust``).

With an appearance engine, the last frame of every clip is encoded too (kept as float16), and the camera's
appearance memory (``plugins.appearance``) is fitted on them. The clips of each footage are split in time
folds (contiguous quarters, :data:`FOLDS`); the appearance stream's calibration samples are scored against
the memory fitted on the *other* folds, because a memory's distances of the frames it was fitted on are
biased low. The memory saved beside the calibration file (:func:`plugins.appearance.memory_path`) is fitted on
every frame. Each clip's fold is returned with the samples (:class:`CalibrationSamples`).

With ``stationary.enabled``, the frames the run's stationary window would take (``stationary.spacing_s``
apart, :class:`plugins.stationary.FrameSpacer`) are kept, and the camera's stationary model is fitted on them
(:class:`_StationaryFrames`), held out by the same time folds: a clip's stationary sample is its window
scored against the model of the other folds' frames (no sample until its window is full, as in a run). The
model of every frame is saved beside the calibration file (:func:`plugins.stationary.model_path`).

With ``objects.enabled``, the frames the run's objects stream would take (``objects.spacing_s`` apart) are
kept likewise (:class:`_ObjectsFrames`), and the camera's objects model (:mod:`plugins.objects`) is fitted on
the frames of every fold but one, for each fold, and on every frame. A clip's objects sample is its map under
the run's rule (:class:`pipeline.memory_streams.ObjectsClips`: the max of the maps of the frames it fed, else
the map of the last frame fed), the footage's frames played in order through the model of the clip's *other*
folds. The model of every frame is saved beside the calibration file (:func:`plugins.objects.model_path`).
Footage that shows too few objects for a model (:class:`plugins.objects.ObjectsError`) is logged, and the
camera is calibrated without the objects stream.

Every footage is also played a second time, as a twin camera, with pseudo-anomalies pasted into its frames
(:mod:`plugins.pseudo_anomaly`: a patch of its own moving content racing across the view, or left standing
upside down). The twin's clips that hold a pasted event are scored like any clip (an appearance score
against the held-out fold's memory, as the clean clip's is) and never enter the statistics or the memory;
``fit_calibration`` weighs each stream by how much of them it catches at its normal false-alarm tail, so a
stream that is calm but blind on this camera is weighed down (docs/alerts.md).
"""

from __future__ import annotations

import copy
import logging
import math
import queue
import sys
import time
from collections.abc import Container, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from core.config import CameraSettings, ConfigError, ZsadConfig, camera_uri_problem, load_config
from core.redact import redact_uri
from pipeline.cli.run import first_run_engines
from pipeline.clips import Clip, ClipAssembler
from pipeline.cpu.graph import CameraGraph
from pipeline.cpu.sources import parse_source_uri
from pipeline.inference import (
    ClipInference,
    EngineBuildError,
    EngineError,
    EngineSet,
    appearance_expectation,
    engine_batch_limit,
    load_engines,
)
from pipeline.memory_streams import (
    MODEL_FILES,
    OBJECTS_FILE,
    STATIONARY_FILE,
    ModelFile,
    ObjectsClips,
    dpc_geometry,
)
from plugins.appearance import AppearanceMemory, MemoryFitter, appearance_map, memory_path, save_memory
from plugins.fusion import (
    CAMERA_THRESHOLD_QUANTILE,
    HELDOUT_FOLDS,
    Calibration,
    CalibrationError,
    assessment_folds,
    describe_trust,
    fit_calibration,
    format_trust,
    load_calibration,
    save_calibration,
)
from plugins.modelfile import recorded_arrays_sha256
from plugins.objects import FlowCache, ObjectsError, ObjectsModel, agreeing, fit_configured, grey_frame
from plugins.pseudo_anomaly import PseudoAnomalyInjector
from plugins.scorer import reduce_map
from plugins.stationary import FrameSpacer, StationaryError, StationaryModel, StationaryState, fit_model
from plugins.streams import APPEARANCE, OBJECTS, SEMANTIC, STATIONARY
from plugins.zones import CellFilters, ViewZones

log = logging.getLogger(__name__)

__all__ = [
    "CalibrationFootageError",
    "CalibrationSamples",
    "calibrate_camera",
    "collect_camera",
    "collect_scores",
    "save_camera_calibration",
    "trust_report",
]

#: Time folds of the footage (contiguous blocks): each fold's clips are scored by the memory streams' models
#: of the other folds.
FOLDS = HELDOUT_FOLDS
#: The twin camera of a footage, played with pseudo-anomalies pasted in, is named ``<id>.<i><suffix>``.
PROBE_SUFFIX = ".pseudo"

M = TypeVar("M")  # a memory stream's model


class CalibrationFootageError(RuntimeError):
    """The footage could not be read or gave too few clips to calibrate on."""


@dataclass
class CalibrationSamples:
    """What a camera's normal footage gave.

    ``samples``: ``{stream: (M,) raw scores}``, one per scored clip, aligned clip by clip (NaN where a clip
    has no value for a stream). ``folds``: ``(M,)`` int8, each scored clip's time fold (0: the first quarter
    of its footage's clips, ... :data:`FOLDS` - 1 the last); the appearance samples of fold ``f`` are held
    out, scored against the memory fitted on the other folds. ``memory``: the appearance memory fitted on
    every clip's last frame (None without an appearance engine).
    """

    samples: dict[str, np.ndarray]
    folds: np.ndarray
    #: ``(M,)`` each scored clip's footage (0, 1, ...): a footage's clips are contiguous, in time order.
    segments: np.ndarray
    memory: AppearanceMemory | None = None
    #: kind -> stream -> raw scores of the twin footage's clips that hold a pasted event of that kind.
    probes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    #: The stationary model fitted on every frame its window took (None with stationary.enabled false).
    stationary: StationaryModel | None = None
    #: The objects model fitted on every frame the stream took (None with objects.enabled false, or footage
    #: that showed too few objects).
    objects: ObjectsModel | None = None

    @property
    def clips(self) -> int:
        return int(self.folds.shape[0])

    def for_camera(self, camera_id: str) -> CalibrationSamples:
        """The same samples with each model naming ``camera_id`` as the camera it was fitted for (two cameras
        with the same settings and footage share one collection; the arrays are shared, not copied)."""
        return replace(
            self,
            memory=_renamed(self.memory, camera_id),
            stationary=_renamed(self.stationary, camera_id),
            objects=_renamed(self.objects, camera_id),
        )


_Model = TypeVar("_Model", AppearanceMemory, StationaryModel, ObjectsModel)


def _renamed(model: _Model | None, camera_id: str) -> _Model | None:
    if model is None or model.camera == camera_id:
        return model
    renamed = copy.copy(model)
    renamed.camera = camera_id
    return renamed


@dataclass
class _Scored:
    """One scored clip: its camera (footage), clip index, raw scores and the DPC maps' grid."""

    camera: str
    index: int
    scores: dict[str, float]
    grid: tuple[int, int]
    #: The pseudo-anomaly a twin footage's clip holds (None: a clean clip).
    pasted: str | None = None


def collect_scores(
    cfg: ZsadConfig,
    engines: EngineSet,
    camera: CameraSettings,
    footage: Sequence[str],
    *,
    timeout_s: float = 1800,
) -> CalibrationSamples:
    """Run footage URIs (files play as fast as possible); return every scored clip's raw stream scores and
    time fold, and, with an appearance engine, the appearance memory (see :class:`CalibrationSamples`).

    The camera's mask (its config's ``mask``) applies as it will at run time, so the statistics describe the
    cells that can alert; the review page's overrides are not read here."""
    pre = cfg.model.preprocess
    assembler = ClipAssembler.from_config(pre)
    filters = CellFilters()
    clips: queue.Queue[Clip] = queue.Queue(maxsize=64)
    settings = [
        camera.model_copy(update={"id": f"{camera.id}.{i}{twin}", "uri": uri})
        for twin in ("", PROBE_SUFFIX)
        for i, uri in enumerate(footage)
    ]
    inference = ClipInference(
        engines,
        context_clips=cfg.model.dpc.context_clips,
        history_step=pre.clip_len * pre.frame_stride // pre.clip_hop,
        contexts={},
        filters=filters,
        # A pasted patch means nothing to prompts: the probe never judges the semantic stream (and a CLIP
        # appearance engine would encode every twin clip's last frame for it).
        no_semantic=frozenset(s.id for s in settings if s.id.endswith(PROBE_SUFFIX)),
    )
    zones = ViewZones.from_settings(camera.zoning)
    for s in settings:
        inference.contexts[s.id] = camera.context
        filters.set(s.id, zones, None)
    injectors = {
        s.id: PseudoAnomalyInjector(seed=i) for i, s in enumerate(settings) if s.id.endswith(PROBE_SUFFIX)
    }
    pasted: dict[str, dict[float, str]] = {cam: {} for cam in injectors}  # twin -> frame pts -> kind

    def on_frame(cam: str, pts: float, frame: np.ndarray | None) -> None:
        # Calibration reads every frame: it passes the graph no wants_frame, so none comes as None.
        if frame is None:
            raise CalibrationError(f"camera {cam}: a frame came without its pixels")
        injector = injectors.get(cam)
        if injector is not None:
            frame, kind = injector.apply(frame)
            if kind is not None:
                pasted[cam][pts] = kind
        clip = assembler.push(cam, pts, frame)
        if clip is not None:
            clips.put(clip)  # blocks the decoder: calibration must not drop clips

    def pasted_kind(clip: Clip) -> str | None:
        kinds = pasted.get(clip.camera_id, {})
        return next((kinds[p] for p in clip.pts.tolist() if p in kinds), None)

    graph = CameraGraph(engines.frame_size, on_frame, cameras=settings, realtime=False)
    scored: list[_Scored] = []
    emitted: dict[str, int] = {}  # clips per footage
    # (footage, clip index) -> float16 features (T, C, h, w) of the clip's frames; the last one is scored
    features: dict[tuple[str, int], np.ndarray] = {}
    # (twin footage, clip index) -> float16 features (C, h, w) of the last frame of a clip with an event
    probe_features: dict[tuple[str, int], np.ndarray] = {}
    appearance = engines.appearance is not None
    stationary = _StationaryFrames(cfg.stationary.spacing_s) if cfg.stationary.enabled else None
    objects = _ObjectsFrames(cfg.objects.spacing_s) if cfg.objects.enabled else None
    spaced = [keeper for keeper in (stationary, objects) if keeper is not None]
    failed: list[str] = []
    # As a run batches: never more clips than a TensorRT engine's profile takes (it refuses a larger batch).
    max_batch = min(cfg.scheduler.max_batch, engine_batch_limit(engines) or cfg.scheduler.max_batch)
    graph.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                batch = [clips.get(timeout=0.5)]
            except queue.Empty:
                states = graph.states()
                if all(st in {"eos", "failed", "stopped"} for st in states.values()):
                    failed = [c for c, st in states.items() if st == "failed"]
                    break
                continue
            while len(batch) < max_batch and not clips.empty():
                batch.append(clips.get_nowait())
            batch = _in_camera_order(batch)
            for clip in batch:
                emitted[clip.camera_id] = emitted.get(clip.camera_id, 0) + 1
                for keeper in spaced:
                    keeper.add(clip)
            kinds = [pasted_kind(clip) for clip in batch]
            if appearance:
                # float16 halves what minutes of footage hold (the fit accumulates in float64 anyway).
                # Every frame of every clip, not only the last: a per-position covariance of 128 channels
                # needs hundreds of frames, and a minute of footage gives only ~70 clips (docs/results.md).
                clean = [c for c in batch if c.camera_id not in injectors]
                if clean:
                    for clip, f in zip(clean, inference.encode_clip_frames(clean), strict=True):
                        features[(clip.camera_id, clip.index)] = f.astype(np.float16)
                # A twin's pasted frames never enter the memory; only clips with an event are scored.
                probed = [c for c, k in zip(batch, kinds, strict=True) if k is not None]
                if probed:
                    for clip, f in zip(probed, inference.encode_last_frames(probed), strict=True):
                        probe_features[(clip.camera_id, clip.index)] = f.astype(np.float16)
            for clip, kind, res in zip(batch, kinds, inference(batch), strict=True):
                if res.scores is not None and (kind is not None or clip.camera_id not in injectors):
                    grid = next(iter(res.scores.maps.values())).shape
                    scored.append(
                        _Scored(clip.camera_id, clip.index, dict(res.scores.scores), (grid[0], grid[1]), kind)
                    )
    finally:
        graph.stop()
    if failed:
        # The footage as the user named it (each file plays twice: as it is, and with events pasted in).
        uris = {s.id: redact_uri(s.uri) for s in settings}
        named = list(dict.fromkeys(uris.get(c, c) for c in failed))
        raise CalibrationFootageError(f"camera {camera.id}: footage could not be read: {', '.join(named)}")
    # In footage order, not arrival order (it varies from run to run): the same footage calibrates the same.
    scored.sort(key=lambda s: (s.camera, s.index))
    folds = np.array([_fold(s.index, emitted[s.camera]) for s in scored], dtype=np.int8)
    memory = None
    if appearance and features:
        memory = _fit_appearance(
            engines, camera.id, features, probe_features, emitted, scored, folds, filters
        )
    model = None
    if stationary is not None:
        # The twins' pasted frames never enter a model; their clips with an event still get a held-out score.
        model = stationary.fit(cfg, camera.id, emitted, scored, folds, filters, exclude=injectors)
    objects_model = None
    if objects is not None:
        objects_model = objects.fit(cfg, camera.id, emitted, scored, folds, filters, exclude=injectors)
    unpasted = [s for s in scored if s.pasted is None]
    streams = sorted({k for s in unpasted for k in s.scores})
    samples = {k: np.array([s.scores.get(k, math.nan) for s in unpasted], np.float64) for k in streams}
    # Each clip's footage, in time order within it: the threshold's trailing median restarts at each.
    footage_ids = {cam: i for i, cam in enumerate(sorted({s.camera for s in unpasted}))}
    segments = np.array([footage_ids[s.camera] for s in unpasted], np.int64)
    clean_folds = np.array([f for s, f in zip(scored, folds, strict=True) if s.pasted is None], np.int8)
    probes: dict[str, dict[str, np.ndarray]] = {}
    for kind in sorted({s.pasted for s in scored if s.pasted is not None}):
        hit = [s for s in scored if s.pasted == kind]
        probes[kind] = {k: np.array([s.scores.get(k, math.nan) for s in hit], np.float64) for k in streams}
    return CalibrationSamples(
        samples=samples,
        folds=clean_folds,
        segments=segments,
        memory=memory,
        probes=probes,
        stationary=model,
        objects=objects_model,
    )


def _fold(index: int, clips: int) -> int:
    """The time fold of a footage's clip ``index`` of ``clips``: ``FOLDS`` contiguous blocks of (nearly)
    equal size, 0 the first."""
    return min(FOLDS - 1, (index * FOLDS) // max(clips, 1))


def _fit_appearance(
    engines: EngineSet,
    camera: str,
    features: dict[tuple[str, int], np.ndarray],
    probe_features: dict[tuple[str, int], np.ndarray],
    emitted: dict[str, int],
    scored: list[_Scored],
    folds: np.ndarray,
    filters: CellFilters,
) -> AppearanceMemory | None:
    """Fit one memory per time fold (from the clean footage's ``features``) and the memory of every frame;
    add each scored clip's appearance score against the memory of the other folds to its scores (a twin
    footage's clip with a pasted event: its last frame's ``probe_features``). None (and no appearance
    samples) when a fold has fewer than 2 frames."""
    expect = appearance_expectation(engines)
    if expect is None:
        return None
    fitters = [MemoryFitter() for _ in range(FOLDS)]
    keys = sorted(features)
    by_fold: list[list[tuple[str, int]]] = [[] for _ in range(FOLDS)]
    for key in keys:
        by_fold[_fold(key[1], emitted[key[0]])].append(key)
    if min(len(k) for k in by_fold) < 2:
        log.warning("camera %s: too few clips (%d) to fit the appearance memory's folds", camera, len(keys))
        return None
    mib = sum(f.nbytes for f in features.values()) / 2**20
    log.info("camera %s: feature maps of %d clips collected (%.1f MB as float16)", camera, len(keys), mib)
    t0 = time.perf_counter()
    for fold, fitter in enumerate(fitters):
        for start in range(0, len(by_fold[fold]), 64):
            fitter.add(np.concatenate([features[k] for k in by_fold[fold][start : start + 64]]))

    def finalize(fitter: MemoryFitter) -> AppearanceMemory:
        return fitter.finalize(
            encoder=expect.encoder,
            weights_sha256=expect.weights_sha256,
            model_spec_sha256=expect.model_spec_sha256,
            camera=camera,
        )

    whole = _merged(fitters)
    # One held-out memory at a time (each the whole footage's sums less its fold's), freed before the next:
    # at 240x320 a fitter's sums are 151 MiB and a memory 76 MiB, so holding every fold's at once would add
    # about 0.7 GiB to calibration's peak.
    for fold, fitter in enumerate(fitters):
        held = finalize(whole.without(fitter))  # scores fold `fold`
        for s, f in zip(scored, folds, strict=True):
            if int(f) == fold:
                key = (s.camera, s.index)
                last = probe_features[key] if s.pasted is not None else features[key][-1]
                _add_held_out(s, APPEARANCE, appearance_map(held, last, s.grid), filters)
        del held
    memory = finalize(whole)
    log.info(
        "camera %s: appearance memory fitted on %d frames (folds %s) in %.1f s",
        camera,
        memory.n_frames,
        " + ".join(str(len(k)) for k in by_fold),
        time.perf_counter() - t0,
    )
    return memory


def _merged(fitters: Sequence[MemoryFitter]) -> MemoryFitter:
    """One fitter holding the frames of all of ``fitters`` (each time fold's sums give their union's)."""
    out = fitters[0]
    for other in fitters[1:]:
        out = out.merged(other)
    return out


def _add_held_out(scored: _Scored, stream: str, error_map: np.ndarray, filters: CellFilters) -> None:
    """Add a clip's held-out ``stream`` score: its map with the camera's mask applied, reduced as a run
    does."""
    cell_filter = filters.get(scored.camera)
    counted = cell_filter.apply({stream: error_map}) if cell_filter is not None else None
    scored.scores[stream] = reduce_map(counted[stream] if counted is not None else error_map)


class _FittedModel(Protocol):
    """What calibration reads of a memory stream's model: the frames it was fitted on."""

    n_frames: int


F = TypeVar("F", bound=_FittedModel)


class _SpacedFrames(Generic[F]):
    """The frames a memory stream takes of each footage (the run's :class:`FrameSpacer` at ``spacing_s``),
    the clip each came from and how many it had taken at each clip; :meth:`fit` fits the stream's models on
    them and adds its held-out samples."""

    stream: str
    #: What a fit raises when the frames give no model.
    errors: tuple[type[Exception], ...]

    def __init__(self, spacing_s: float) -> None:
        self.spacing_s = spacing_s
        self.frames: dict[str, list[np.ndarray]] = {}  # footage -> frames taken, in time order
        self.clips: dict[str, list[int]] = {}  # footage -> the clip index that gave each frame taken
        self.taken_at: dict[tuple[str, int], int] = {}  # (footage, clip index) -> frames taken by its end
        self._spacers: dict[str, FrameSpacer] = {}

    def add(self, clip: Clip) -> None:
        spacer = self._spacers.setdefault(clip.camera_id, FrameSpacer(self.spacing_s))
        frames = self.frames.setdefault(clip.camera_id, [])
        for i in spacer.select(clip.pts):
            frames.append(self._kept(clip.frames[i]))
            self.clips.setdefault(clip.camera_id, []).append(clip.index)
        self.taken_at[(clip.camera_id, clip.index)] = len(frames)

    def _kept(self, frame: np.ndarray) -> np.ndarray:
        """What is kept of a frame taken: a copy (the clip's frames are reused)."""
        return np.array(frame)

    def _footage(self) -> list[tuple[str, list[np.ndarray]]]:
        # By name, not by arrival: which footage's first clip reaches the scheduler first varies from run to
        # run, and a model's background is a median of evenly spaced frames of the footage in this order,
        # so the calibration of the same footage came out one of several ways.
        return sorted(self.frames.items())

    def videos(self, exclude: Container[str] = ()) -> list[np.ndarray]:
        """Each footage's frames kept (:meth:`_kept`) but those of the footage named in ``exclude``, the
        footage in name order."""
        return [np.stack(frames) for c, frames in self._footage() if c not in exclude and frames]

    def fold_videos(self, emitted: dict[str, int], exclude: Container[str] = ()) -> list[list[np.ndarray]]:
        """Per time fold, each footage's frames of that fold's clips (``emitted``: clips per footage), the
        footage in name order."""
        out: list[list[np.ndarray]] = [[] for _ in range(FOLDS)]
        for footage, frames in self._footage():
            if footage in exclude:
                continue
            folds = [_fold(index, emitted[footage]) for index in self.clips.get(footage, [])]
            for fold in range(FOLDS):
                taken = [frame for frame, f in zip(frames, folds, strict=True) if f == fold]
                if taken:
                    out[fold].append(np.stack(taken))
        return out

    def fit(
        self,
        cfg: ZsadConfig,
        camera: str,
        emitted: dict[str, int],
        scored: list[_Scored],
        folds: np.ndarray,
        filters: CellFilters,
        exclude: Container[str] = (),
    ) -> F | None:
        """Fit, for each time fold, a model of the other folds' frames, and the model of every frame; add
        each scored clip's score of the stream against its fold's held-out model to its scores. None (and no
        samples of the stream) when the frames of some fold's held-out model give none (logged). The frames
        of the footage named in ``exclude`` (altered copies, such as footage with pseudo-anomalies pasted in)
        never enter a model; their clips are scored like the others, against their fold's held-out model."""
        videos = self.fold_videos(emitted, exclude)
        counts = [sum(len(v) for v in fold_videos) for fold_videos in videos]
        t0 = time.perf_counter()
        try:
            # held[f] is fitted on every fold but f, and scores f.
            held = [
                self._fitted(cfg, camera, [v for g in range(FOLDS) if g != fold for v in videos[g]])
                for fold in range(FOLDS)
            ]
            model = self._fitted(cfg, camera, self.videos(exclude))
        except self.errors as exc:
            log.warning(
                "camera %s: no %s model (folds of %s frames %.2g s apart: %s); it is calibrated without "
                "the %s stream",
                camera,
                self.stream,
                " + ".join(map(str, counts)),
                self.spacing_s,
                exc,
                self.stream,
            )
            return None
        held, model = self._agreeing(held, model)
        self._score(held, emitted, scored, folds, filters)
        log.info(
            "camera %s: %s model fitted on %d frames %.2g s apart (folds %s) in %.1f s",
            camera,
            self.stream,
            model.n_frames,
            self.spacing_s,
            " + ".join(map(str, counts)),
            time.perf_counter() - t0,
        )
        return model

    def _fitted(self, cfg: ZsadConfig, camera: str, videos: list[np.ndarray]) -> F:
        """The model of ``videos`` (each a footage's frames in time order)."""
        raise NotImplementedError

    def _agreeing(self, held: list[F], model: F) -> tuple[list[F], F]:
        """The folds' models and the whole footage's, made to judge alike (as fitted, by default)."""
        return held, model

    def _score(
        self,
        held: list[F],
        emitted: dict[str, int],
        scored: list[_Scored],
        folds: np.ndarray,
        filters: CellFilters,
    ) -> None:
        """Add each scored clip's held-out score (against ``held[its fold]``) to its scores."""
        raise NotImplementedError


class _StationaryFrames(_SpacedFrames[StationaryModel]):
    """The frames each footage's stationary window takes. A clip's sample is its window (the last ``window``
    frames taken by its end) scored against the other folds' model; none while the window is not full."""

    stream = STATIONARY
    # A held-out model whose other folds have no frames: nothing to concatenate (ValueError).
    errors = (StationaryError, ValueError)

    def _fitted(self, cfg: ZsadConfig, camera: str, videos: list[np.ndarray]) -> StationaryModel:
        s = cfg.stationary
        return fit_model(
            np.concatenate(videos),
            dpc_geometry(cfg)[1],
            window=s.window,
            min_pixels=s.min_pixels,
            floor=s.floor,
            camera=camera,
            spacing_s=s.spacing_s,
        )

    def _score(
        self,
        held: list[StationaryModel],
        emitted: dict[str, int],
        scored: list[_Scored],
        folds: np.ndarray,
        filters: CellFilters,
    ) -> None:
        for sc, fold in zip(scored, folds, strict=True):
            model = held[int(fold)]
            n = self.taken_at.get((sc.camera, sc.index), 0)
            if n < model.window or model.grid != sc.grid:
                continue
            # A window reaching back into the previous fold holds a few frames its held-out model was fitted
            # on. Kept: skipping those windows left short footage (the benchmark's 4-s videos played over)
            # without a single stationary sample, since every window there crosses a fold's edge.
            state = StationaryState(model.window)
            for frame in self.frames[sc.camera][n - model.window : n]:
                state.push(frame)
            _add_held_out(sc, STATIONARY, model.score_map(state), filters)


class _ObjectsFrames(_SpacedFrames[ObjectsModel]):
    """The frames each footage's objects stream takes. Each fold's held-out model is fitted on the other
    folds' frames, each footage's part of a fold as a video of its own (tracks start afresh). A clip's
    sample is its map under the run's rule (:class:`ObjectsClips`), the footage's frames played in order
    through its fold's held-out model."""

    stream = OBJECTS
    errors = (ObjectsError,)

    def __init__(self, spacing_s: float) -> None:
        super().__init__(spacing_s)
        # Every fold's model plays the same frames: each pair's flow is computed once.
        self.flows = FlowCache()

    def _kept(self, frame: np.ndarray) -> np.ndarray:
        # The stream reads luma only: grey frames hold a third of the RGB's memory (a 3-minute footage's
        # frames 0.2 s apart at 144x192: 25 MB instead of 75, and as much again for its twin).
        return grey_frame(frame)

    def _fitted(self, cfg: ZsadConfig, camera: str, videos: list[np.ndarray]) -> ObjectsModel:
        return fit_configured(videos, dpc_geometry(cfg)[1], cfg.objects, camera=camera, flows=self.flows)

    def _agreeing(
        self, held: list[ObjectsModel], model: ObjectsModel
    ) -> tuple[list[ObjectsModel], ObjectsModel]:
        # A feature a short fold left unjudged: the samples have none of it, so the run's model judges none.
        *held, model = agreeing([*held, model])
        return held, model

    def _score(
        self,
        held: list[ObjectsModel],
        emitted: dict[str, int],
        scored: list[_Scored],
        folds: np.ndarray,
        filters: CellFilters,
    ) -> None:
        wanted = {(sc.camera, sc.index): sc for sc in scored}
        for footage, frames in self.frames.items():
            by_clip: dict[int, list[np.ndarray]] = {}
            for frame, index in zip(frames, self.clips.get(footage, []), strict=True):
                by_clip.setdefault(index, []).append(frame)
            mappers = [ObjectsClips(model, self.flows) for model in held]
            for index in range(emitted[footage]):
                fold = _fold(index, emitted[footage])
                # The folds are in time order: a fold's model plays the footage until its last clip.
                maps = [mappers[f].clip_map(by_clip.get(index, ())) for f in range(fold, FOLDS)]
                sc = wanted.get((footage, index))
                if sc is not None and maps[0] is not None and maps[0].shape == sc.grid:
                    _add_held_out(sc, OBJECTS, maps[0], filters)


def _in_camera_order(batch: list[Clip]) -> list[Clip]:
    return sorted(batch, key=lambda c: (c.camera_id, c.index))


def calibrate_camera(
    cfg: ZsadConfig,
    engines: EngineSet,
    camera_id: str,
    footage: Sequence[str],
    out: Path,
    *,
    min_clips: int = 20,
) -> Path:
    """Fit and save one camera's calibration; return the file written (:func:`collect_camera`, then
    :func:`save_camera_calibration`)."""
    return save_camera_calibration(
        cfg, engines, camera_id, collect_camera(cfg, engines, camera_id, footage, min_clips=min_clips), out
    )


def collect_camera(
    cfg: ZsadConfig,
    engines: EngineSet,
    camera_id: str,
    footage: Sequence[str],
    *,
    min_clips: int = 20,
) -> CalibrationSamples:
    """What the camera's normal footage gives (:func:`collect_scores` with the camera's settings), refused
    (:class:`CalibrationFootageError`) with fewer than ``min_clips`` scored clips."""
    camera = cfg.camera_settings(camera_id)
    collected = collect_scores(cfg, engines, camera, footage)
    n = collected.clips
    if n < min_clips:
        pre = cfg.model.preprocess
        # Each scored clip needs the DPC history before it: C clips of T*stride frames.
        frames = min_clips * pre.clip_hop + cfg.model.dpc.context_clips * pre.clip_len * pre.frame_stride
        raise CalibrationFootageError(
            f"camera {camera_id}: only {n} scored clips in the footage, at least {min_clips} are needed "
            f"(give at least {frames / camera.sampling.fps:.0f} s of normal footage "
            f"at {camera.sampling.fps:g} fps)"
        )
    return collected


def save_camera_calibration(
    cfg: ZsadConfig,
    engines: EngineSet,
    camera_id: str,
    collected: CalibrationSamples,
    out: Path,
) -> Path:
    """Fit the camera's calibration to what its footage gave (:func:`collect_camera`) and save it with its
    memory streams' models; return the file written. With an appearance engine, its appearance memory is
    saved beside it (:func:`plugins.appearance.memory_path`); without one, a memory left there by an earlier
    calibration is removed, since the new calibration has no statistics for it."""
    camera = cfg.camera_settings(camera_id)
    collected = collected.for_camera(camera_id)
    n = collected.clips
    # The reliability weights are judged on the footage's two halves (pairs of the time folds the memory
    # streams' samples were held out by): a level that moved between them shows in full.
    # The pasted events say which of those calm streams would see anything on this camera.
    cal = fit_calibration(
        collected.samples,
        assessment_folds(collected.folds),
        threshold_quantile=CAMERA_THRESHOLD_QUANTILE,
        camera=camera_id,
        probes=collected.probes,
        # The alerts compare the camera's smoothed score with the threshold (on_threshold: calibrated).
        smoothing=camera.alerts.smoothing,
        segments=collected.segments,
    )
    if cal.streams and all(st.weight <= 0.0 for st in cal.streams.values()):
        # Nothing varied (a lens cap, a frozen feed): a camera with this calibration could never alert.
        reasons = "; ".join(f"{name}: {st.reason}" for name, st in cal.streams.items())
        raise CalibrationFootageError(
            f"camera {camera_id}: no stream varied on the footage, so none can be scaled ({reasons}); "
            "calibrate from footage in which the scene moves"
        )
    # Another model scores the learned streams on other levels: the run checks which one this was.
    cal = replace(cal, model_id=engines.model_id)
    if SEMANTIC in cal.streams:
        # The head and the CLIP appearance engine score on different scales: the run checks which it was.
        cal = replace(cal, semantic_source=engines.semantic_source)
    out.parent.mkdir(parents=True, exist_ok=True)
    memory_file = memory_path(out)
    if collected.memory is not None:
        # Before the calibration: a calibration names the appearance stream only once its memory is there.
        size = save_memory(collected.memory, memory_file)
        log.info(
            "camera %s: appearance memory -> %s (%.1f MiB on disk, %.1f MiB in memory)",
            camera_id,
            memory_file,
            size / 2**20,
            collected.memory.nbytes / 2**20,
        )
    elif memory_file.exists():
        memory_file.unlink()
        log.warning(
            "camera %s: removed %s, the appearance memory of an earlier calibration (this one has no "
            "appearance stream)",
            camera_id,
            memory_file,
        )
    # A model whose stream got no sample (every window too short) would be refused by the run: not saved.
    _save_model(camera_id, STATIONARY_FILE, collected.stationary if STATIONARY in cal.streams else None, out)
    _save_model(camera_id, OBJECTS_FILE, collected.objects if OBJECTS in cal.streams else None, out)
    # Last, naming the model files it was fitted with (by their arrays' hash, so that the same fit names the
    # same files): the run refuses models another calibration wrote.
    written = {
        APPEARANCE: memory_file,
        STATIONARY: STATIONARY_FILE.path_of(out),
        OBJECTS: OBJECTS_FILE.path_of(out),
    }
    present = {stream: p for stream, p in written.items() if stream in cal.streams and p.is_file()}
    cal = replace(cal, models={stream: recorded_arrays_sha256(p) or "" for stream, p in present.items()})
    save_calibration(cal, out)
    log.info(
        "camera %s: calibrated on %d clips -> %s (threshold %.3f)", camera_id, n, out, cal.threshold or 0.0
    )
    return out


def _save_model(camera_id: str, file: ModelFile[M], model: M | None, calibration: Path) -> None:
    """Save the camera's model of a memory stream beside ``calibration`` (before it: a calibration names the
    stream only once its model is there), or remove an earlier calibration's model that this one has no
    statistics for."""
    path = file.path_of(calibration)
    if model is not None:
        size = file.write(model, path)
        log.info("camera %s: %s model -> %s (%.1f KiB)", camera_id, file.stream, path, size / 2**10)
    elif path.exists():
        path.unlink()
        log.warning(
            "camera %s: removed %s, the %s model of an earlier calibration (this one has no %s stream)",
            camera_id,
            path,
            file.stream,
            file.stream,
        )


def trust_report(cal: Calibration) -> str:
    """What ``zsad calibrate`` prints after fitting: the threshold and which streams the camera trusts."""
    threshold = "none" if cal.threshold is None else f"{cal.threshold:.3f}"
    head = (
        f"camera {cal.camera}: {cal.n_samples} clips, fusion rule {cal.rule}, "
        f"calibrated threshold {threshold} (the {cal.threshold_quantile:g} quantile of the fused normal score"
        f"{'' if cal.threshold_smoothing == 1 else f' after a median of {cal.threshold_smoothing} clips'}; "
        "alerts.on_threshold: calibrated opens alerts there)"
    )
    if cal.agreement is not None:
        a = cal.agreement
        head += (
            f"\nagreement term: {a.offset:.3f} + {a.slope:.3f} x the weighted mean of {', '.join(a.streams)} "
            "(streams rising together count where their mean stands above what normal footage shows)"
        )
    return f"{head}\n{format_trust(describe_trust(cal))}"


def _footage_problem(uri: str) -> str | None:
    """Why a footage URI cannot be read, when that is knowable before starting (a local file), else None."""
    if "://" not in uri:
        return f"footage {uri!r} is not a URI: write file:///path/to/normal.mp4 (or rtsp://...)"
    problem = camera_uri_problem(uri)
    if problem is not None:
        return f"footage: {problem}"
    source = parse_source_uri(uri)  # the path as the camera graph reads it (percent-escapes decoded)
    if source.kind in {"file", "loop"} and not Path(source.location).is_file():
        return f"footage {redact_uri(uri)}: no such file {source.location}"
    return None


def run_calibrate(args: Any) -> int:
    """CLI handler: ``zsad calibrate CONFIG --camera ID --footage URI [--footage URI ...] --out FILE``."""
    try:
        cfg = load_config(args.config)
        cfg.camera_settings(args.camera)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"{args.config}: {exc.args[0]}", file=sys.stderr)
        return 2
    problems = [p for p in (_footage_problem(uri) for uri in args.footage) if p]
    out = Path(args.out)
    if out.is_dir():
        problems.append(
            f"--out {out} is a folder: name the file to write, e.g. {out / (args.camera + '.json')}"
        )
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    try:
        first_run_engines(cfg)
        engines = load_engines(cfg)
    except EngineError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    except EngineBuildError as exc:
        print(f"cannot build the engines: {exc}", file=sys.stderr)
        return 1
    try:
        path = calibrate_camera(cfg, engines, args.camera, args.footage, out)
    except CalibrationFootageError as exc:
        print(f"calibration failed: {exc}", file=sys.stderr)
        return 1
    except CalibrationError as exc:  # the footage's scores cannot be fitted (e.g. a stream with none)
        print(f"calibration failed: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"calibration failed: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        engines.close()
    try:
        print(trust_report(load_calibration(path)))
    except CalibrationError as exc:  # written a moment ago; unreadable now means the disk changed under us
        print(f"calibration failed: {exc}", file=sys.stderr)
        return 1
    memory_file = memory_path(path)
    if memory_file.is_file():
        print(f"appearance memory: {memory_file} ({memory_file.stat().st_size / 2**20:.1f} MiB)")
    for file in MODEL_FILES:
        model_file = file.path_of(path)
        if model_file.is_file():
            print(f"{file.stream} model: {model_file} ({model_file.stat().st_size / 2**10:.0f} KiB)")
        elif file.settings(cfg).enabled:
            print(
                f"{file.stream} model: none, the camera runs without the {file.stream} stream (see the log)"
            )
    print(f"calibration: {path}")  # last: the file to put in the camera's config
    return 0
