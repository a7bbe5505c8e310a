"""The objects stream in offline evaluation (``zsad eval``), scored by the rule the run scores it by.

Each context of a dataset is one camera: its model (:mod:`plugins.objects`) is fitted on the training videos
of that context, fed every ``step``-th frame, where ``step`` is the frames apart the run takes them
(:func:`plugins.stationary.frame_step` of the config's ``objects.spacing_s`` and the clip layout), so the
evaluation measures the spacing the run gets. A context whose footage shows too few objects for a model
(:class:`plugins.objects.ObjectsError`) has no stream, logged.

**The scoring rule.** A camera's state is fed its frames ``step`` apart in time order from the video's start
(each video a fresh state); each fed frame gives a map (:meth:`plugins.objects.ObjectsModel.score_frame`). A
clip's map is the elementwise max of the maps of the fed frames within its frames (first to last,
inclusive); a clip that holds no fed frame takes the last map before it (:data:`plugins.objects.EMPTY`
everywhere when there is none yet) (:func:`clip_maps`). A clip's score is its map's spatial max.

**Held out.** The calibration samples are scored by the folds the stationary stream uses
(:class:`training.heldout_models.HeldOutModels`): a training video's fed frames against the model of its
context's other folds, or for a context's only video, each fed frame against the model of the other time half
of it (each model's state is fed the whole video, since its tracks need the frames before), so no clip is
scored by a model fitted on its own frames. Test videos are scored against the model of every training frame
of their context, clip by clip at the clips the DPC streams score, so that the frame curves are made from the
same clips (``training.evaluate.to_frames``).
"""

from __future__ import annotations

import numpy as np

from core.config import ObjectsConfig
from plugins.objects import EMPTY, FlowCache, ObjectsError, ObjectsModel, agreeing, fit_configured
from training.heldout_models import HeldOutModels

__all__ = ["ObjectsEvaluator", "clip_maps"]


def clip_maps(fed: np.ndarray, maps: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Each clip's objects map ``(M, h, w)``: the elementwise max of ``maps`` ``(K, h, w)`` (those of the fed
    frames ``fed`` ``(K,)``, ascending) whose frame lies in ``first[i]..last[i]`` (inclusive); a clip that
    holds no fed frame takes the map of the last fed frame before it, :data:`EMPTY` everywhere when none.
    The run's rule (``pipeline.memory_streams.ObjectsClips``) is the same when clips do not overlap (every
    shipped config: ``clip_hop`` = ``clip_len`` x ``frame_stride``); where they do, a run clip maxes only the
    frames it newly fed (``training.evaluate`` warns)."""
    fed = np.asarray(fed, dtype=np.int64)
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or len(maps) != len(fed):
        raise ObjectsError(f"one (h, w) map per fed frame is needed, got {maps.shape} for {len(fed)} frames")
    if len(fed) > 1 and (np.diff(fed) <= 0).any():
        raise ObjectsError("the fed frames must be in time order")
    first = np.asarray(first, dtype=np.int64)
    last = np.asarray(last, dtype=np.int64)
    if first.shape != last.shape or (last < first).any():
        raise ObjectsError("each clip needs a first and a last frame, the last not before the first")
    lo = np.searchsorted(fed, first, side="left")
    hi = np.searchsorted(fed, last, side="right")
    out = np.full((len(first), *maps.shape[1:]), EMPTY, np.float32)
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        if b > a:
            out[i] = maps[a:b].max(axis=0)
        elif a > 0:
            out[i] = maps[a - 1]
    return out


class ObjectsEvaluator(HeldOutModels[ObjectsModel, ObjectsConfig]):
    """Fits an objects model per context and scores clips against it.

    ``grid``: the DPC maps' grid; ``step``: frames between those the stream takes.
    """

    stream = "objects"
    fit_errors = (ObjectsError,)

    def __init__(self, settings: ObjectsConfig, grid: tuple[int, int], step: int) -> None:
        super().__init__(settings, grid, step)
        # A training video is played by its context's fold models, the model of every fold and its held-out
        # model: each pair of frames' flow is computed once (1 GiB: Ped2's training pairs take 0.3). Test
        # videos, played once, are not kept.
        self.flows = FlowCache(1 << 30)

    def _fit(self, parts: list[np.ndarray], context: str) -> ObjectsModel:
        return fit_configured(parts, self.grid, self.settings, camera=context, flows=self.flows)

    def _model(self, context: str, fold: int | None, half: int | None = None) -> ObjectsModel | None:
        """As :meth:`HeldOutModels._model`, but the first request of a context fits every model of it (its
        held-out folds' or halves' and its whole footage's) and makes them judge alike (:func:`agreeing`,
        as ``zsad calibrate`` does): its calibration samples come from the held-out models, its test
        scores from the whole footage's."""
        if (context, fold, half) in self._models:  # asked once per fed frame: the fitted case stays cheap
            return self._models[(context, fold, half)]
        keys: list[tuple[str, int | None, int | None]] = [(context, None, None)]
        for v in self._train.values():
            if v.context == context:
                keys += [(context, v.fold, None)] if v.fold >= 0 else [(context, -1, 0), (context, -1, 1)]
        if (context, fold, half) in keys:
            fitted: dict[tuple[str, int | None, int | None], ObjectsModel | None] = {}
            for k in dict.fromkeys(keys):  # not a comprehension: super() needs this method's frame
                fitted[k] = super()._model(*k)
            present = [k for k, m in fitted.items() if m is not None]
            agreed = agreeing([m for m in fitted.values() if m is not None])
            self._models.update(zip(present, agreed, strict=True))
        return super()._model(context, fold, half)

    def fed_frames(self, n: int) -> np.ndarray:
        """The frames of an ``n``-frame video the stream takes: ``0, step, 2 step, ...``."""
        return np.arange(0, n, self.step, dtype=np.int64)

    def fed_maps(self, model: ObjectsModel, frames: np.ndarray, *, cached: bool = True) -> np.ndarray:
        """``(K, h, w)``: the maps of :meth:`fed_frames` of ``frames``, fed in order to a fresh state; with
        ``cached``, each pair's flow is kept for the other models that play these frames."""
        state = model.new_state(self.flows if cached else None)
        return np.stack([model.score_frame(state, frames[i]) for i in self.fed_frames(len(frames))])

    def held_out_clip_scores(
        self, name: str, first_frames: np.ndarray, last_frames: np.ndarray, frames: np.ndarray | None = None
    ) -> np.ndarray:
        """The objects score ``(M,)`` of a training video's clips (each from ``first_frames[i]`` to
        ``last_frames[i]``), each fed frame's map from the model that holds it out; NaN without a model.
        ``frames``: an altered copy of the video (pseudo-anomalies pasted in) scored in its place, against the
        models its clean frames are held out by."""
        source = self._source(name, frames)
        fed = self.fed_frames(len(source))
        models = [m for m in (self._held_out_model(name, int(i)) for i in fed) if m is not None]
        if not fed.size or len(models) < len(fed):
            return np.full(len(first_frames), np.nan)
        maps = np.empty((len(fed), *self.grid), np.float32)
        distinct = {id(m): m for m in models}  # one, or one per time half
        # The clean video's pairs were computed when the models were fitted; a pasted copy's pairs are worth
        # keeping only when more than one model plays it.
        cached = frames is None or len(distinct) > 1
        for model in distinct.values():
            rows = np.array([m is model for m in models])
            maps[rows] = self.fed_maps(model, source, cached=cached)[rows]
        return clip_maps(fed, maps, first_frames, last_frames).max(axis=(1, 2)).astype(np.float64)

    def test_clip_scores(
        self,
        frames: np.ndarray,
        context: str,
        first_frames: np.ndarray,
        last_frames: np.ndarray,
        maps_out: list[np.ndarray] | None = None,
    ) -> np.ndarray | None:
        """The objects score ``(M,)`` of a test video's clips against the model of all of its context's
        training frames; None when the context has no model (logged when it was fitted). ``maps_out``: when
        given, the clips' maps ``(M, h, w)`` are appended to it (nothing without a model)."""
        model = self._model(context, None)
        if model is None:
            return None
        # A test video is played by one model only: keeping its flows would only take memory.
        maps = self.fed_maps(model, np.asarray(frames, dtype=np.uint8), cached=False)
        fed = self.fed_frames(len(frames))
        per_clip = clip_maps(fed, maps, first_frames, last_frames)
        if maps_out is not None:
            maps_out.append(per_clip.astype(np.float64))
        return per_clip.max(axis=(1, 2)).astype(np.float64)
