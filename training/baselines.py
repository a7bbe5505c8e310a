"""The frame-difference floor: the score any learned model has to beat.

``score(t) = max over non-overlapping P x P patches of mean |gray_t - gray_{t-1}|``: the strongest local
motion in the frame. On UCSD Ped2 the anomalies (bicycles, carts, skaters) move faster than walkers,
so this alone ranks frames far above chance.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.datasets import DatasetError, make_dataset
from training.metrics import score_report

__all__ = [
    "FrameDifferenceError",
    "evaluate_frame_difference",
    "extrapolation_scores",
    "frame_difference_scores",
]

log = logging.getLogger(__name__)

# ITU-R BT.601 luma weights, the usual RGB -> gray
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class FrameDifferenceError(ValueError):
    """Frames the floor cannot score (wrong shape or dtype, no frames)."""


def frame_difference_scores(frames: np.ndarray, patch: int = 16) -> np.ndarray:
    """Frame-difference anomaly score of every frame: ``(N,) float32``.

    ``frames`` is ``(N, H, W, 3)`` RGB or ``(N, H, W)`` gray, any numeric dtype (uint8 in 0..255 is
    the usual). Frames are turned to gray float, differenced with the previous frame, and the mean
    absolute difference is taken in each non-overlapping ``patch x patch`` block (a patch side is cut to
    the frame side when the frame is smaller; the right and bottom remainders that do not fill a patch are
    left out); the score is the maximum over blocks. Frame 0 has no predecessor and copies frame 1's
    score; a single frame scores 0.
    """
    return _patch_max_scores(frames, patch, order=1)


def extrapolation_scores(frames: np.ndarray, patch: int = 16) -> np.ndarray:
    """Constant-velocity extrapolation error of every frame: ``(N,) float32``.

    Like :func:`frame_difference_scores`, but each frame is compared with ``2 * previous - the one
    before`` (the last two frames continued at constant velocity), i.e. the block-mean absolute second
    temporal difference. It is the untrained prior of the DPC head's ``extrapolate`` decoder, reported
    beside the model so that what training added can be told apart. The first two frames copy frame 2's
    score; fewer than three frames score 0.
    """
    return _patch_max_scores(frames, patch, order=2)


def _patch_max_scores(frames: np.ndarray, patch: int, order: int) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 4 and arr.shape[-1] == 3:
        gray_of = _gray_rgb
    elif arr.ndim == 3:
        gray_of = _gray_plain
    else:
        raise FrameDifferenceError(f"frames must be (N, H, W, 3) or (N, H, W), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise FrameDifferenceError(f"frames must be numeric, got {arr.dtype}")
    if patch < 1:
        raise FrameDifferenceError(f"patch must be >= 1, got {patch}")
    n, h, w = arr.shape[:3]
    if n == 0 or h == 0 or w == 0:
        raise FrameDifferenceError(f"no pixels to score in frames of shape {arr.shape}")
    ph, pw = min(patch, h), min(patch, w)
    gh, gw = h // ph, w // pw
    out = np.zeros(n, dtype=np.float32)
    if n <= order:
        return out
    past = [gray_of(arr[t])[: gh * ph, : gw * pw] for t in range(order)]
    for t in range(order, n):
        cur = gray_of(arr[t])[: gh * ph, : gw * pw]
        predicted = past[-1] if order == 1 else 2.0 * past[-1] - past[-2]
        diff = np.abs(cur - predicted)
        out[t] = diff.reshape(gh, ph, gw, pw).mean(axis=(1, 3)).max()
        past = [*past[1:], cur]
    out[:order] = out[order]
    return out


def _gray_rgb(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32) @ _LUMA


def _gray_plain(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32)


def evaluate_frame_difference(
    kind: str,
    root: str | Path,
    size_hw: tuple[int, int] | None,
    *,
    fps: float = 10.0,
    patch: int = 16,
    workers: int = 2,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Score a dataset's labelled test split with the floor: ``(score_report, scores, labels)``.

    ``scores`` and ``labels`` are ``{video: (N_v,)}``; frames are read at ``size_hw`` (``None``: native).
    """
    ds = make_dataset(kind, root, "test", size_hw, workers=workers, cache=False)
    if not ds.has_labels:
        raise DatasetError(f"{root}: the test split has no frame labels; the floor cannot be scored")
    scores: dict[str, np.ndarray] = {}
    for name in ds.names:
        scores[name] = frame_difference_scores(ds.frames(name), patch=patch)
    labels: Mapping[str, np.ndarray] = ds.labels
    report = score_report(scores, labels, fps=fps)
    report["size_hw"] = list(size_hw) if size_hw is not None else None
    report["patch"] = patch
    log.info("frame-difference floor on %s at %s: micro AUC %.4f", root, size_hw, report["micro_auc"])
    return report, scores, dict(labels)
