"""The stationary stream in offline evaluation (``zsad eval``), as ``zsad calibrate`` and the run score it.

Each context of a dataset is one camera: its model (:mod:`plugins.stationary`) is fitted on the training
videos of that context, fed every ``step``-th frame, where ``step`` is the frames apart the run's window takes
them (:func:`plugins.stationary.frame_step` of the config's ``stationary.spacing_s`` and the clip layout), so
the evaluation measures the spacing the run gets. The calibration samples are **held out**, by the folds
the appearance stream uses (:func:`training.appearance_eval.context_folds`): each training video's clips
are scored against the model of its context's other folds (a single-video context: of the other time half
of its video). A clip's score is the window the run holds at its last frame (the newest frame taken by then,
every ``step``-th from the video's first, and the ``window - 1`` before it, ``step`` apart); a clip whose
window would reach before its video's start has no score (NaN), as a run scores nothing until its window is
full, and neither has one whose window crosses the middle of a
single-video context (the held-out model saw its older frames; ``zsad calibrate`` drops windows crossing a
fold's edge the same way). Test frames are scored frame by frame against the model of every
training frame of their context, and those whose window would reach before the video's start have no score
(NaN: the evaluation's fusion leaves the stream out there, as the run's does until a camera's window is
full). A window made by reflecting the video in time (frames ``|t - k step|``, as the DPC streams get their
history) holds the frames near the turn twice, so a walker there covers the same pixels in most of the
window and reads as something left behind: on a fresh synthetic seed that raised 7 of the evaluation's 9
false alarms, each in a video's first seconds (docs/results.md, 2026-12-07).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.config import StationaryConfig
from plugins.stationary import StationaryError, StationaryModel, fit_model
from training.heldout_models import HeldOutModels

__all__ = ["StationaryEvaluator", "window_indices"]


def window_indices(last: int, window: int, step: int, *, reflect: bool = False) -> list[int] | None:
    """The frames of ``last``'s window, oldest first: ``last - k * step`` for ``k < window``. A window that
    reaches before frame 0 is None, or with ``reflect`` takes ``|last - k * step|`` instead."""
    idx = [last - k * step for k in range(window - 1, -1, -1)]
    if idx[0] < 0:
        if not reflect:
            return None
        idx = [abs(i) for i in idx]
    return idx


class StationaryEvaluator(HeldOutModels[StationaryModel, StationaryConfig]):
    """Fits a stationary model per context and scores clips or frames against it.

    ``grid``: the DPC maps' grid; ``step``: frames between those the window takes.
    """

    stream = "stationary"
    fit_errors = (StationaryError,)

    @property
    def window(self) -> int:
        return self.settings.window

    def _fit(self, parts: list[np.ndarray], context: str) -> StationaryModel:
        s = self.settings
        return fit_model(
            np.concatenate(parts) if parts else np.zeros((0, 1, 1, 3), np.uint8),
            self.grid,
            window=s.window,
            min_pixels=s.min_pixels,
            floor=s.floor,
            camera=context,
        )

    def held_out_clip_scores(
        self, name: str, last_frames: np.ndarray, frames: np.ndarray | None = None
    ) -> np.ndarray:
        """The stationary score ``(M,)`` of a training video's clips (``last_frames``: each clip's last frame
        index), each against the model of the context's other folds; NaN where the window is not full, and
        for a context's only video where the window reaches back across the middle (its model, the other time
        half's, was fitted on the window's older frames).
        ``frames``: the windows' frames instead of the video's own (an altered copy of it, such as one with
        pseudo-anomalies pasted in, scored against the models its clean frames are held out by)."""
        source = self._source(name, frames)
        out = np.full(len(last_frames), np.nan)
        for i, last in enumerate(np.asarray(last_frames, dtype=np.int64)):
            taken = self.taken_by(int(last))
            model = self._held_out_model(name, taken)
            idx = window_indices(taken, self.window, self.step)
            if model is not None and idx is not None and self._held_out_together(name, idx[0], taken):
                out[i] = self._score(model, source, idx)
        return out

    def taken_by(self, frame: int) -> int:
        """The newest frame the run's window has taken once ``frame`` has arrived: it takes every ``step``-th
        frame from a camera's first, so a clip's last frame is often between two taken ones."""
        return frame - frame % self.step

    def test_frame_scores(
        self, frames: np.ndarray, context: str, maps_out: list[np.ndarray] | None = None
    ) -> np.ndarray:
        """Every test frame's stationary score ``(N,)`` against the model of all of its context's frames: the
        window the run holds once the frame has arrived (ending at :meth:`taken_by`); NaN where it would reach
        before the video's start (the run scores nothing until a camera's window is full); zeros, logged,
        when the context has too few training frames for a model. ``maps_out``: when given, the frames'
        maps ``(N, h, w)`` on the DPC grid are appended to it (NaN where there is no score; none without a
        model)."""
        model = self._model(context, None)
        if model is None:
            return np.zeros(len(frames))
        out = np.full(len(frames), np.nan)
        maps = np.full((len(frames), *self.grid), np.nan) if maps_out is not None else None
        for t in range(0, len(frames), self.step):  # the frames a window ends at; those between share it
            idx = window_indices(t, self.window, self.step)
            if idx is not None:
                m = self._map(model, frames, idx)
                out[t : t + self.step] = float(m.max())
                if maps is not None:
                    maps[t : t + self.step] = m
        if maps_out is not None and maps is not None:
            maps_out.append(maps)
        return out

    def _score(self, model: StationaryModel, frames: np.ndarray, indices: Sequence[int]) -> float:
        return float(self._map(model, frames, indices).max())

    def _map(self, model: StationaryModel, frames: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        state = model.new_state()
        for i in indices:
            state.push(frames[i])
        return np.asarray(model.score_map(state), dtype=np.float64)
