"""Per-context models of the frame-based memory streams in offline evaluation, held out by fold or time half.

The stationary and the objects stream (:mod:`training.stationary_eval`, :mod:`training.objects_eval`) fit a
model per context (one camera) on that context's training videos, fed every ``step``-th frame, and score the
training videos' clips **held out**, by the folds the appearance stream uses
(:func:`training.appearance_eval.context_folds`): a video of fold ``f`` against the model of its context's
other videos; a single-video context (fold -1) frame by frame against the model of its video's other time
half. What they share is here: the training videos, which frames each held-out model is fitted on, and the
cache of models (each fitted once; a context whose footage cannot be fitted has None, logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["HeldOutModels", "TrainingVideo", "held_out_parts"]


class _Settings(Protocol):
    """A stream's config section: it is on or off."""

    @property
    def enabled(self) -> bool: ...


M = TypeVar("M")  # the model
S = TypeVar("S", bound=_Settings)  # the stream's config section
E = TypeVar("E", bound="HeldOutModels[Any, Any]")


def held_out_parts(
    videos: Iterable[tuple[str, np.ndarray, int]], context: str, fold: int | None, half: int | None = None
) -> list[np.ndarray]:
    """What the model of ``context`` held out by ``fold`` is fitted on: of ``videos`` (each its context, its
    frames or features in time order, and its fold), those of ``context`` outside ``fold`` (None: all); for
    a single-video context (fold -1), the other time half of its video than ``half`` (0: the first)."""
    parts = []
    for ctx, data, video_fold in videos:
        if ctx != context:
            continue
        if fold is not None and video_fold >= 0:
            if video_fold == fold:
                continue
        elif fold is not None and half is not None:
            mid = len(data) // 2
            data = data[mid:] if half == 0 else data[:mid]
        parts.append(data)
    return parts


def _time_half(frame: int, n_frames: int) -> int:
    """Which time half of an ``n_frames``-frame video frame ``frame`` lies in (0: the first), as
    :func:`held_out_parts` splits it."""
    return 0 if frame < n_frames // 2 else 1


@dataclass
class TrainingVideo:
    context: str
    frames: np.ndarray  # (N, H, W, 3) uint8, every frame
    fold: int  # -1: the context's only video, held out by time half


class HeldOutModels(Generic[M, S]):
    """A stream's models per context and held-out fold, fitted with ``settings`` (the stream's config
    section) for the DPC maps' ``grid`` on every ``step``-th frame. Subclasses say how a model is fitted
    (:meth:`_fit`) and which errors mean the footage cannot give one (:attr:`fit_errors`)."""

    #: The stream's name, for the logs.
    stream: ClassVar[str] = ""
    #: Errors of :meth:`_fit` that leave a context without a model (logged) instead of failing; the first
    #: is also the stream's error for bad input.
    fit_errors: ClassVar[tuple[type[Exception], ...]] = (ValueError,)

    def __init__(self, settings: S, grid: tuple[int, int], step: int) -> None:
        if step < 1:
            raise self.fit_errors[0](f"step must be >= 1 frame, got {step}")
        self.settings = settings
        self.grid = grid
        self.step = int(step)
        self._train: dict[str, TrainingVideo] = {}
        # (context, held-out fold or None for all, time half or None) -> model, each fitted once.
        self._models: dict[tuple[str, int | None, int | None], M | None] = {}

    @classmethod
    def from_config(cls: type[E], settings: _Settings, grid: tuple[int, int], step: int) -> E | None:
        """The evaluator of ``settings`` (the stream's config section), or None when the stream is off."""
        return cls(settings, grid, step) if settings.enabled else None

    def add_training_video(self, name: str, frames: np.ndarray, context: str, fold: int) -> None:
        self._train[name] = TrainingVideo(context, np.asarray(frames, dtype=np.uint8), fold)

    def _fit(self, parts: list[np.ndarray], context: str) -> M:
        """The model of ``parts``: each a training video's (or time half's) frames ``step`` apart."""
        raise NotImplementedError

    def _model(self, context: str, fold: int | None, half: int | None = None) -> M | None:
        """The model of ``context``'s training videos outside ``fold`` (None: all of them); a single-video
        context (fold -1) uses the other time half (``half``) of its video. None (logged) when the footage
        cannot give one (:attr:`fit_errors`). Fitted once, then kept."""
        key = (context, fold, half)
        if key in self._models:
            return self._models[key]
        videos = ((v.context, v.frames, v.fold) for v in self._train.values())
        parts = [p[:: self.step] for p in held_out_parts(videos, context, fold, half)]
        model = None
        try:
            model = self._fit(parts, context)
        except self.fit_errors as exc:
            log.warning(
                "context %s: no %s model (fold %s, half %s): %s", context, self.stream, fold, half, exc
            )
        self._models[key] = model
        return model

    def _held_out_model(self, name: str, frame: int) -> M | None:
        """The model that holds out frame ``frame`` of training video ``name``: its context's other folds,
        or for the context's only video, its other time half."""
        video = self._train[name]
        if video.fold >= 0:
            return self._model(video.context, video.fold)
        return self._model(video.context, -1, _time_half(frame, len(video.frames)))

    def _held_out_together(self, name: str, first: int, last: int) -> bool:
        """Whether frames ``first``..``last`` of training video ``name`` are all held out by the model
        :meth:`_held_out_model` gives ``last``: always for a video of a fold; for a context's only video, only
        when both lie in the same time half (a window reaching back across the middle would be scored by a
        model fitted on its own older frames; ``zsad calibrate`` gives no sample for a window crossing a
        fold's edge either)."""
        video = self._train[name]
        if video.fold >= 0:
            return True
        return _time_half(first, len(video.frames)) == _time_half(last, len(video.frames))

    def _source(self, name: str, frames: np.ndarray | None) -> np.ndarray:
        """Training video ``name``'s frames, or ``frames`` standing in for them (the same footage altered,
        such as with pseudo-anomalies pasted in), which must have their shape."""
        video = self._train[name]
        source = video.frames if frames is None else np.asarray(frames, dtype=np.uint8)
        if source.shape != video.frames.shape:
            raise self.fit_errors[0](f"{name}: frames {source.shape} for a video of {video.frames.shape}")
        return source
