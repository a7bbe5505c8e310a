"""Frame-level anomaly metrics in pure numpy: ROC/AUC, AP, recall at low FPR, false alarms per hour.

Conventions: ``labels`` are ``(N,)`` arrays in {0, 1} (1 = anomalous frame); ``scores`` are ``(N,)`` finite
floats, higher = more anomalous; a frame alarms when ``score >= threshold``. Per-video inputs are
``{video: (N_v,) array}`` dicts with the same keys and lengths. Ties are handled like scikit-learn: a
positive and a negative with the same score count one half towards the AUC.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_RECALL_FPRS",
    "MetricError",
    "alarm_events",
    "average_precision",
    "concat_videos",
    "count_false_alarms",
    "false_alarms_per_hour",
    "gaussian_smooth",
    "macro_auc",
    "micro_auc",
    "minmax_normalise",
    "normalise_per_video",
    "per_video_auc",
    "recall_at_fpr",
    "roc_auc",
    "roc_curve",
    "score_report",
    "threshold_at_fpr",
]

DEFAULT_RECALL_FPRS: tuple[float, ...] = (0.01, 0.02, 0.05)


class MetricError(ValueError):
    """Inputs a metric is undefined for (one class only, length mismatch, NaN scores, ...)."""


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _check_scores(scores: Any, what: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise MetricError(f"{what} must be 1-D, got shape {s.shape}")
    if s.size and not np.isfinite(s).all():
        raise MetricError(f"{what} contain NaN or inf at {int(np.flatnonzero(~np.isfinite(s))[0])}")
    return s


def _check_pair(labels: Any, scores: Any, need_both: bool = True) -> tuple[np.ndarray, np.ndarray]:
    y_raw = np.asarray(labels)
    if y_raw.ndim != 1:
        raise MetricError(f"labels must be 1-D, got shape {y_raw.shape}")
    if y_raw.size and not np.isin(y_raw, (0, 1)).all():
        raise MetricError("labels must be 0 (normal) or 1 (anomalous)")
    y = y_raw.astype(np.int64)
    s = _check_scores(scores)
    if len(y) != len(s):
        raise MetricError(f"{len(y)} labels but {len(s)} scores")
    if len(y) == 0:
        raise MetricError("no frames to score")
    if need_both:
        n_pos = int(y.sum())
        if n_pos == 0 or n_pos == len(y):
            cls = "normal" if n_pos == 0 else "anomalous"
            raise MetricError(f"metric undefined: all {len(y)} frames are {cls}; need both classes")
    return y, s


def _check_videos(
    scores: Mapping[str, Any], labels: Mapping[str, Any]
) -> tuple[list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    if set(scores) != set(labels):
        only_s = sorted(set(scores) - set(labels))
        only_l = sorted(set(labels) - set(scores))
        raise MetricError(f"videos differ: scores only {only_s}, labels only {only_l}")
    if not labels:
        raise MetricError("no videos to score")
    names = list(labels)
    ss: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray] = {}
    for v in names:
        try:
            ys[v], ss[v] = _check_pair(labels[v], scores[v], need_both=False)
        except MetricError as exc:
            raise MetricError(f"video {v!r}: {exc}") from None
    return names, ss, ys


def concat_videos(scores: Mapping[str, Any], labels: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate per-video ``(N_v,)`` arrays in the labels' key order: ``(labels (N,), scores (N,))``."""
    names, ss, ys = _check_videos(scores, labels)
    return np.concatenate([ys[v] for v in names]), np.concatenate([ss[v] for v in names])


# --------------------------------------------------------------------------------------------------
# Curves and areas
# --------------------------------------------------------------------------------------------------


def _counts_at_thresholds(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives when alarming at each distinct score, highest first: (tps, fps, thr)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # the last index of every run of equal scores: tied frames switch on together
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    fps = (last + 1).astype(np.float64) - tps
    return tps, fps, s_sorted[last]


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, each ``(K + 1,)``, one point per distinct score plus (0, 0).

    Point i alarms on ``score >= thresholds[i]``; ``thresholds[0]`` is ``+inf`` (nothing alarms).
    """
    y, s = _check_pair(labels, scores)
    tps, fps, thr = _counts_at_thresholds(y, s)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, thr]


def roc_auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (trapezoids, so ties count one half), like ``sklearn.roc_auc_score``."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) * 0.5))


def average_precision(labels: Any, scores: Any) -> float:
    """Average precision, scikit-learn's step form: ``sum_k (R_k - R_{k-1}) * P_k`` over distinct scores."""
    y, s = _check_pair(labels, scores)
    tps, fps, _ = _counts_at_thresholds(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def recall_at_fpr(
    labels: Any, scores: Any, fprs: Iterable[float] = DEFAULT_RECALL_FPRS
) -> dict[float, float]:
    """Best recall (TPR) of any threshold whose FPR is at most each target: ``{fpr: recall}``.

    Operating points are real thresholds (no interpolation between ROC points).
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    out: dict[float, float] = {}
    for target in fprs:
        if not 0.0 <= target <= 1.0:
            raise MetricError(f"target FPR must be in [0, 1], got {target}")
        out[float(target)] = float(tpr[fpr <= target + 1e-12].max())
    return out


def threshold_at_fpr(normal_scores: Any, target_fpr: float) -> float:
    """Lowest threshold that keeps the false-positive rate on ``normal_scores`` at most ``target_fpr``.

    ``normal_scores`` is ``(N,)`` scores of normal frames only. The result is one of the normal scores
    (frames alarm on ``score >= threshold``, so the fraction of normal scores ``>= t`` is ``<= target_fpr``),
    or just above the largest normal score when even that one alarms too often.
    """
    s = _check_scores(normal_scores, "normal scores")
    if s.size == 0:
        raise MetricError("no normal scores to set a threshold on")
    if not 0.0 <= target_fpr <= 1.0:
        raise MetricError(f"target FPR must be in [0, 1], got {target_fpr}")
    s_sorted = np.sort(s)
    uniq = np.unique(s_sorted)
    frac_ge = (s.size - np.searchsorted(s_sorted, uniq, side="left")) / s.size
    ok = frac_ge <= target_fpr + 1e-12
    if ok.any():
        return float(uniq[np.argmax(ok)])
    return float(np.nextafter(uniq[-1], np.inf))


# --------------------------------------------------------------------------------------------------
# Per-video aggregation
# --------------------------------------------------------------------------------------------------


def micro_auc(scores: Mapping[str, Any], labels: Mapping[str, Any]) -> float:
    """Frame-level micro AUC: all videos' frames concatenated into one ranking."""
    y, s = concat_videos(scores, labels)
    return roc_auc(y, s)


def per_video_auc(scores: Mapping[str, Any], labels: Mapping[str, Any]) -> dict[str, float | None]:
    """AUC of each video on its own; ``None`` for a video with one class only."""
    names, ss, ys = _check_videos(scores, labels)
    out: dict[str, float | None] = {}
    for v in names:
        n_pos = int(ys[v].sum())
        out[v] = roc_auc(ys[v], ss[v]) if 0 < n_pos < len(ys[v]) else None
    return out


def macro_auc(scores: Mapping[str, Any], labels: Mapping[str, Any]) -> float:
    """Mean of per-video AUCs over the videos that contain both classes."""
    aucs = [a for a in per_video_auc(scores, labels).values() if a is not None]
    if not aucs:
        raise MetricError("macro AUC undefined: no video has both normal and anomalous frames")
    return float(np.mean(aucs))


def minmax_normalise(scores: Any) -> np.ndarray:
    """``(s - min) / (max - min)`` as ``(N,) float64``; a constant sequence becomes all zeros."""
    s = _check_scores(scores)
    if s.size == 0:
        return s.copy()
    lo, hi = float(s.min()), float(s.max())
    if hi - lo <= 0.0:
        return np.zeros_like(s)
    return (s - lo) / (hi - lo)


def normalise_per_video(scores: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Min-max normalise each video's scores on its own range (the common offline VAD protocol)."""
    return {v: minmax_normalise(s) for v, s in scores.items()}


def gaussian_smooth(scores: Any, sigma: float) -> np.ndarray:
    """Gaussian temporal smoothing, ``sigma`` in frames, kernel cut at 4 sigma, symmetric edge padding.

    Returns ``(N,) float64``; ``sigma <= 0`` returns a copy.
    """
    s = _check_scores(scores)
    if sigma < 0 or not math.isfinite(sigma):
        raise MetricError(f"sigma must be a finite number >= 0, got {sigma}")
    if sigma == 0 or s.size < 2:
        return s.copy()
    radius = max(1, int(4.0 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(s, radius, mode="symmetric")
    return np.convolve(padded, kernel, mode="valid")


# --------------------------------------------------------------------------------------------------
# Alarms
# --------------------------------------------------------------------------------------------------


def alarm_events(scores: Any, threshold: float) -> list[tuple[int, int]]:
    """Maximal runs of consecutive frames with ``score >= threshold``, as ``(start, end)`` with ``end``
    exclusive."""
    s = _check_scores(scores)
    on = np.r_[False, s >= threshold, False].astype(np.int8)
    edges = np.diff(on)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(a), int(b)) for a, b in zip(starts, ends, strict=True)]


def count_false_alarms(labels: Any, scores: Any, threshold: float) -> int:
    """Alarm events (see :func:`alarm_events`) of one video that contain no anomalous frame."""
    y, s = _check_pair(labels, scores, need_both=False)
    return sum(1 for a, b in alarm_events(s, threshold) if not y[a:b].any())


def false_alarms_per_hour(
    scores: Mapping[str, Any], labels: Mapping[str, Any], threshold: float, fps: float
) -> float:
    """False alarm events per hour of normal footage.

    Definition: in each video, an *alarm event* is a maximal run of consecutive frames with
    ``score >= threshold``; it is *false* when none of its frames is anomalous (an event that overlaps an
    anomaly, even partly, is a true detection). The rate is the number of false events over all videos
    divided by the normal time, ``(number of label-0 frames) / fps / 3600`` hours. A video's first frame
    above threshold counts as a rising edge. Raises :class:`MetricError` when there is no normal frame.
    """
    if not fps > 0:
        raise MetricError(f"fps must be > 0, got {fps}")
    names, ss, ys = _check_videos(scores, labels)
    false = sum(count_false_alarms(ys[v], ss[v], threshold) for v in names)
    normal_frames = sum(int((ys[v] == 0).sum()) for v in names)
    if normal_frames == 0:
        raise MetricError("false alarms per hour undefined: no normal frames")
    return false / (normal_frames / fps / 3600.0)


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def _pooled(y: np.ndarray, s: np.ndarray, fprs: Sequence[float]) -> dict[str, Any]:
    return {
        "micro_auc": roc_auc(y, s),
        "average_precision": average_precision(y, s),
        "recall_at_fpr": {f"{k:g}": v for k, v in recall_at_fpr(y, s, fprs).items()},
    }


def score_report(
    scores: Mapping[str, Any],
    labels: Mapping[str, Any],
    fps: float,
    threshold: float | None = None,
    *,
    recall_fprs: Sequence[float] = DEFAULT_RECALL_FPRS,
    threshold_fpr: float = 0.01,
) -> dict[str, Any]:
    """Every frame-level metric in one JSON-ready dict (plain floats, ints, strings, None).

    ``scores``/``labels`` are ``{video: (N_v,)}``. Raw scores give ``micro_auc``, ``macro_auc`` (mean over
    videos with both classes), ``per_video_auc``, ``average_precision`` and ``recall_at_fpr``; the
    ``minmax_normalised`` block repeats the pooled ones after per-video min-max normalisation (the common
    offline protocol; it uses each test video's own score range, which a live system does not have).
    Alarm figures use ``threshold`` when given, else the threshold at ``threshold_fpr`` on the test
    videos' normal frames (``threshold_source`` says which); see :func:`false_alarms_per_hour`.
    """
    names, ss, ys = _check_videos(scores, labels)
    y = np.concatenate([ys[v] for v in names])
    s = np.concatenate([ss[v] for v in names])
    pooled = _pooled(y, s, recall_fprs)
    pv = per_video_auc(ss, ys)
    macro_list = [a for a in pv.values() if a is not None]
    norm = normalise_per_video(ss)
    normalised = _pooled(y, np.concatenate([norm[v] for v in names]), recall_fprs)
    normalised["note"] = "scores min-max normalised per video before pooling"

    if threshold is None:
        thr = threshold_at_fpr(s[y == 0], threshold_fpr)
        source = f"fpr<={threshold_fpr:g} on the test normal frames"
    else:
        thr = float(threshold)
        source = "given"
    alarm = s >= thr
    events = sum(len(alarm_events(ss[v], thr)) for v in names)
    false = sum(count_false_alarms(ys[v], ss[v], thr) for v in names)
    normal_frames = int((y == 0).sum())
    return {
        "videos": len(names),
        "frames": len(y),
        "anomalous_frames": int(y.sum()),
        "fps": float(fps),
        "micro_auc": pooled["micro_auc"],
        "macro_auc": float(np.mean(macro_list)) if macro_list else None,
        "macro_auc_videos": len(macro_list),
        "per_video_auc": pv,
        "average_precision": pooled["average_precision"],
        "recall_at_fpr": pooled["recall_at_fpr"],
        "minmax_normalised": normalised,
        "threshold": thr,
        "threshold_source": source,
        "frame_recall_at_threshold": float(alarm[y == 1].mean()),
        "frame_fpr_at_threshold": float(alarm[y == 0].mean()),
        "alarm_events": events,
        "false_alarms": false,
        "normal_hours": normal_frames / fps / 3600.0,
        "false_alarms_per_hour": false_alarms_per_hour(ss, ys, thr, fps),
    }
