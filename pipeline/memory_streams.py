"""The memory streams fitted by ``zsad calibrate`` without an engine (stationary, objects), on the run's side.

Both keep a per-camera model file beside the calibration and take a camera's clip frames ``spacing_s`` apart
(:class:`plugins.stationary.FrameSpacer`). What the run, ``zsad calibrate``, ``zsad demo`` and the pipeline
benchmark share about them lives here, once:

* :class:`ModelFile` (:data:`MODEL_FILES`): where a stream's model file is, how it is read (checked against
  the backbone's frame size, the DPC grid and the stream's ``spacing_s``), written and described;
* :class:`MemoryFeed`: what :class:`pipeline.inference.ClipInference` keeps per camera for such a stream:
  which of each clip's frames it takes, the camera's state, and the cameras whose model does not fit (logged
  once; the camera goes on without the stream until its model is replaced). :class:`StationaryFeed` and
  :class:`ObjectsFeed` are the two streams';
* :class:`ObjectsClips`: the objects stream's clip-map rule, which the run and ``zsad calibrate`` share (and
  ``zsad eval`` replicates): each frame a clip feeds gives a map; a clip's map is the elementwise max of the
  maps of the frames it fed; a clip that fed none takes the map of the camera's last frame fed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np

from core.config import ZsadConfig
from pipeline.clips import Clip
from plugins import objects, stationary
from plugins.objects import FlowCache, ObjectsError, ObjectsModel, ObjectsModelError
from plugins.registry import CameraTable
from plugins.stationary import (
    FrameSpacer,
    StationaryError,
    StationaryModel,
    StationaryModelError,
    StationaryState,
)
from plugins.streams import OBJECTS, STATIONARY

log = logging.getLogger(__name__)

__all__ = [
    "MODEL_FILES",
    "OBJECTS_FILE",
    "STATIONARY_FILE",
    "MemoryFeed",
    "ModelFile",
    "ObjectsClips",
    "ObjectsFeed",
    "StationaryFeed",
    "dpc_geometry",
]


class _GriddedModel(Protocol):
    """A camera's model of a memory stream: it scores onto the DPC grid."""

    @property
    def grid(self) -> tuple[int, int]: ...


M = TypeVar("M")  # a camera's model of one stream
G = TypeVar("G", bound=_GriddedModel)  # one that scores onto the DPC grid


class _SpacedSettings(Protocol):
    """A memory stream's config section: ``stationary`` or ``objects``."""

    enabled: bool
    spacing_s: float


def dpc_geometry(cfg: ZsadConfig) -> tuple[tuple[int, int], tuple[int, int]]:
    """The frame size ``(H, W)`` the backbone takes and the DPC maps' grid ``(h, w)``: what a model file
    beside a calibration must have been fitted for."""
    bb = cfg.model.backbone
    return (bb.image_height, bb.image_width), (
        bb.image_height // bb.patch_size,
        bb.image_width // bb.patch_size,
    )


@dataclass(frozen=True)
class ModelFile(Generic[M]):
    """A memory stream's per-camera model file beside the calibration: ``path_of(calibration)``, read by
    ``read`` (raising ``error``, which names the file), written by ``write``, one log line by ``describe``;
    ``settings`` picks the stream's config section."""

    stream: str
    path_of: Callable[[str | Path], Path]
    read: Callable[..., M]
    write: Callable[[M, Path], int]
    error: type[Exception]
    describe: Callable[[M], str]
    settings: Callable[[ZsadConfig], _SpacedSettings]

    def load(self, cfg: ZsadConfig, path: Path) -> M:
        """The model at ``path``, refused (``error``) unless fitted for ``cfg``'s backbone frame size, DPC
        grid and the stream's ``spacing_s``."""
        frame_size, grid = dpc_geometry(cfg)
        return self.read(path, frame_size=frame_size, grid=grid, spacing_s=self.settings(cfg).spacing_s)


STATIONARY_FILE: ModelFile[StationaryModel] = ModelFile(
    STATIONARY,
    stationary.model_path,
    stationary.load_model,
    stationary.save_model,
    StationaryModelError,
    stationary.describe,
    lambda cfg: cfg.stationary,
)
OBJECTS_FILE: ModelFile[ObjectsModel] = ModelFile(
    OBJECTS,
    objects.model_path,
    objects.load_model,
    objects.save_model,
    ObjectsModelError,
    objects.describe,
    lambda cfg: cfg.objects,
)
#: Every memory stream whose model ``zsad calibrate`` writes beside a calibration without an engine.
MODEL_FILES: tuple[ModelFile[StationaryModel] | ModelFile[ObjectsModel], ...] = (
    STATIONARY_FILE,
    OBJECTS_FILE,
)


class MemoryFeed(Generic[G]):
    """A memory stream in :class:`pipeline.inference.ClipInference`: per camera with a model in ``models``,
    which of each clip's frames the stream takes (the first at least ``spacing_s`` after the last one taken,
    :class:`FrameSpacer`: every clip, scored or not, feeds it) and what the subclass keeps of them. A model
    that does not fit the camera's frames or the DPC grid (``error``) is logged once and left out until the
    camera's model is replaced: the camera goes on without the stream.

    :meth:`feed` runs on a batch's ``zsad-feeds`` thread, beside the engines' runs, then, once
    :class:`pipeline.inference.ClipInference` has joined it, :meth:`clip_map` for the same clips on the
    scorer's. :meth:`reset` is called on the scheduler's thread between two inference calls
    (:class:`pipeline.clip_path.ClipPath`: a reconnect in clip order, a removal before the next batch and
    before a returning camera's first clip; the run's result callback for a removed camera's last clips),
    so never while a batch's feeds run."""

    stream: str
    error: type[Exception]

    def __init__(self, models: CameraTable[G] | None, spacing_s: float) -> None:
        if not spacing_s > 0:
            raise ValueError(f"{self.stream} spacing_s must be > 0, got {spacing_s}")
        self.models = models
        self.spacing_s = float(spacing_s)
        self._spacers: dict[str, FrameSpacer] = {}
        self._refused: dict[str, G] = {}  # camera -> the model that did not fit

    @property
    def active(self) -> bool:
        """Whether any camera has a model (the scorer asks for maps only then)."""
        return self.models is not None and len(self.models) > 0

    def model(self, camera: str) -> G | None:
        """The camera's model in force, or None (none, or the one refused)."""
        model = None if self.models is None else self.models.get(camera)
        return None if model is None or self._refused.get(camera) is model else model

    def feed(self, clips: Sequence[Clip]) -> None:
        """Give each camera with a model the frames of its clips that the stream takes (in order)."""
        for k, clip in enumerate(clips):
            camera = clip.camera_id
            model = self.model(camera)
            if model is None:
                continue
            spacer = self._spacers.setdefault(camera, FrameSpacer(self.spacing_s))
            picked = spacer.select(clip.pts)
            taken = [clip.frames[i] for i in picked]
            try:
                self._take(k, camera, model, taken, [float(clip.pts[i]) for i in picked])
            except self.error as exc:
                self._refuse(camera, model, exc)

    def clip_map(self, k: int, camera: str, grid: tuple[int, int]) -> np.ndarray | None:
        """The map of the ``k``-th clip of the last :meth:`feed` (of ``camera``), on the DPC ``grid``; None
        while the stream has none for it, or without a model that fits."""
        model = self.model(camera)
        if model is None:
            return None
        try:
            if model.grid != tuple(grid):
                raise self.error(f"model grid {model.grid}, the DPC maps are {tuple(grid)}")
            return self._map(k, camera, model)
        except self.error as exc:
            self._refuse(camera, model, exc)
            return None

    def reset(self, camera: str) -> None:
        """Forget the camera's frames (a reconnect starts afresh) and that its model did not fit (a camera
        removed and added again is given its model again)."""
        self._spacers.pop(camera, None)
        self._refused.pop(camera, None)
        self._forget(camera)

    def _refuse(self, camera: str, model: G, exc: Exception) -> None:
        # Models are checked against the frames and the grid when loaded, so this is one set by hand.
        self._refused[camera] = model
        self._forget(camera)
        log.error(
            "camera %s: its %s model does not fit its frames (%s); it goes on without the %s stream",
            camera,
            self.stream,
            exc,
            self.stream,
        )

    def _take(self, k: int, camera: str, model: G, frames: list[np.ndarray], pts: list[float]) -> None:
        """Keep what the stream needs of the ``frames`` the ``k``-th clip fed (maybe none), taken at ``pts``
        seconds."""
        raise NotImplementedError

    def _map(self, k: int, camera: str, model: G) -> np.ndarray | None:
        raise NotImplementedError

    def _forget(self, camera: str) -> None:
        raise NotImplementedError


class StationaryFeed(MemoryFeed[StationaryModel]):
    """The stationary stream's feed: each camera's short-term window (:class:`StationaryState`); a clip's
    map is the window's as that clip left it, once the window is full (computed when the window has taken
    a new frame, reused until the next). Taken as each clip is fed, so a clip's map does not depend on
    which later clips of its camera share its batch (an offline run's batches hold several), and equals
    what ``zsad calibrate``, which feeds one clip at a time, computes."""

    stream = STATIONARY
    error = StationaryError

    def __init__(self, models: CameraTable[StationaryModel] | None, spacing_s: float) -> None:
        super().__init__(models, spacing_s)
        self._states: dict[str, StationaryState] = {}
        self._last: dict[str, np.ndarray] = {}  # the map since the last frame taken
        self._batch: dict[int, np.ndarray] = {}  # the last feed's clip position -> its map

    def feed(self, clips: Sequence[Clip]) -> None:
        self._batch = {}
        super().feed(clips)

    def _take(
        self, k: int, camera: str, model: StationaryModel, frames: list[np.ndarray], pts: list[float]
    ) -> None:
        state = self._states.get(camera)
        if state is None or state.window != model.window:  # a model replaced by one of another window
            state = self._states[camera] = model.new_state()
            self._last.pop(camera, None)
        for frame in frames:
            try:
                state.push(frame)
            except StationaryError:  # a camera whose frame size changed: start a new window
                state.reset()
                state.push(frame)
            self._last.pop(camera, None)
        if not state.ready:
            return
        last = self._last.get(camera)
        if last is None:
            last = self._last[camera] = model.score_map(state)
        self._batch[k] = last

    def _map(self, k: int, camera: str, model: StationaryModel) -> np.ndarray | None:
        last = self._batch.get(k)
        return None if last is None else last.copy()

    def _forget(self, camera: str) -> None:
        self._states.pop(camera, None)
        self._last.pop(camera, None)


class ObjectsClips:
    """One camera's objects stream clip by clip, with ``model`` (its tracks in :attr:`state`).

    :meth:`clip_map` is the rule ``zsad run`` and ``zsad calibrate`` share, and the offline evaluation
    replicates: each frame a clip feeds gives a map (:meth:`ObjectsModel.score_frame`, which moves the
    tracks on); the clip's map is the elementwise max of them, so a blob seen in any of its frames counts; a
    clip that fed no frame (all its frames within ``spacing_s`` of the last one taken, as overlapping clips
    are) takes the map of the last frame fed; before any frame, there is none. ``flows``: a cache shared
    with other models that play the same footage (calibration's folds; :class:`plugins.objects.FlowCache`)."""

    def __init__(self, model: ObjectsModel, flows: FlowCache | None = None) -> None:
        self.model = model
        self.state = model.new_state(flows)
        self._last: np.ndarray | None = None  # the map of the last frame fed

    def clip_map(self, frames: Sequence[np.ndarray], pts: Sequence[float] | None = None) -> np.ndarray | None:
        """The map of a clip that fed ``frames`` (in time order, maybe none) at ``pts`` seconds (None: each
        one spacing after the last, as in calibration footage), or None before the first."""
        out: np.ndarray | None = None
        for i, frame in enumerate(frames):
            m = self.model.score_frame(self.state, frame, None if pts is None else pts[i])
            out = m.copy() if out is None else np.maximum(out, m, out=out)
            self._last = m
        if out is None and self._last is not None:
            out = self._last.copy()
        return out


class ObjectsFeed(MemoryFeed[ObjectsModel]):
    """The objects stream's feed: each camera's :class:`ObjectsClips`; a clip's map is computed as the clip
    is fed (scored or not: the tracks must follow the camera between scored clips). A camera whose model is
    replaced starts new tracks."""

    stream = OBJECTS
    error = ObjectsError

    def __init__(self, models: CameraTable[ObjectsModel] | None, spacing_s: float) -> None:
        super().__init__(models, spacing_s)
        self._cameras: dict[str, ObjectsClips] = {}
        self._batch: dict[int, np.ndarray] = {}  # the last feed's clip position -> its map

    def feed(self, clips: Sequence[Clip]) -> None:
        self._batch = {}
        super().feed(clips)

    def _take(
        self, k: int, camera: str, model: ObjectsModel, frames: list[np.ndarray], pts: list[float]
    ) -> None:
        mapper = self._cameras.get(camera)
        if mapper is None or mapper.model is not model:
            mapper = self._cameras[camera] = ObjectsClips(model)
        m = mapper.clip_map(frames, pts)
        if m is not None:
            self._batch[k] = m

    def _map(self, k: int, camera: str, model: ObjectsModel) -> np.ndarray | None:
        return self._batch.get(k)

    def _forget(self, camera: str) -> None:
        self._cameras.pop(camera, None)
