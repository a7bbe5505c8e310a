"""Evaluation figures written as PNG: ROC curves and per-video score timelines.

matplotlib (the ``train`` extra) is imported lazily with the Agg backend, so importing this module
costs nothing and needs no display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import MetricError, minmax_normalise, roc_auc, roc_curve

__all__ = ["PlotError", "plot_roc_curves", "plot_score_timelines"]


class PlotError(ValueError):
    """Nothing to plot, or inputs that do not line up."""


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    title: str = "ROC",
) -> Path:
    """Several named ROC curves on one axis, AUC in the legend; writes a PNG at ``path``.

    ``curves`` is ``{name: (labels (N,) in {0, 1}, scores (N,))}``, e.g. ``{"model": ..., "floor": ...}``
    with all test frames concatenated (see :func:`training.metrics.concat_videos`).
    """
    if not curves:
        raise PlotError("no curves to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=110)
    try:
        for name, (labels, scores) in curves.items():
            try:
                fpr, tpr, _ = roc_curve(labels, scores)
                auc = roc_auc(labels, scores)
            except MetricError as exc:
                raise PlotError(f"curve {name!r}: {exc}") from exc
            ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--", label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_score_timelines(
    scores: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    labels: Mapping[str, np.ndarray] | None = None,
    others: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    threshold: float | None = None,
    normalise: bool = False,
    ncols: int = 3,
    title: str = "anomaly score per frame",
) -> Path:
    """A grid of subplots, one per video: score against frame index, ground-truth anomalies shaded.

    ``scores`` is ``{video: (N_v,)}`` (drawn as "score"); ``others`` adds named series on the same axes,
    ``{series name: {video: (N_v,)}}`` (e.g. the frame-difference floor); ``labels`` ``{video: (N_v,)}``
    shades frames labelled 1. ``normalise`` min-max normalises every series per video so that series
    on different scales share an axis (``threshold`` is then not drawn). Writes a PNG at ``path``.
    """
    if not scores:
        raise PlotError("no videos to plot")
    if ncols < 1:
        raise PlotError(f"ncols must be >= 1, got {ncols}")
    series: dict[str, Mapping[str, np.ndarray]] = {"score": scores, **(others or {})}
    names = list(scores)
    for sname, by_video in series.items():
        for v in names:
            if v not in by_video:
                raise PlotError(f"series {sname!r} has no scores for video {v!r}")
            if len(by_video[v]) != len(scores[v]):
                raise PlotError(
                    f"series {sname!r}, video {v!r}: {len(by_video[v])} vs {len(scores[v])} frames"
                )
    missing = [v for v in names if labels is not None and v not in labels]
    if missing:
        raise PlotError(f"no labels for videos {missing}")
    plt = _pyplot()
    ncols = min(ncols, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.4 * nrows), dpi=100, squeeze=False)
    try:
        for i, v in enumerate(names):
            ax = axes[i // ncols][i % ncols]
            if labels is not None:
                y = np.asarray(labels[v])
                if len(y) != len(scores[v]):
                    raise PlotError(f"video {v!r}: {len(y)} labels vs {len(scores[v])} scores")
                _shade(ax, y)
            for sname, by_video in series.items():
                s = np.asarray(by_video[v], dtype=np.float64)
                ax.plot(np.arange(len(s)), minmax_normalise(s) if normalise else s, lw=1.0, label=sname)
            if threshold is not None and not normalise:
                ax.axhline(threshold, color="crimson", lw=0.8, ls="--", label="threshold")
            ax.set_title(v, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlim(0, max(1, len(scores[v]) - 1))
        for j in range(len(names), nrows * ncols):
            axes[j // ncols][j % ncols].set_visible(False)
        handles, texts = axes[0][0].get_legend_handles_labels()
        if labels is not None:
            from matplotlib.patches import Patch

            handles.append(Patch(color="orange", alpha=0.25))
            texts.append("ground-truth anomaly")
        fig.legend(handles, texts, loc="upper right", fontsize=8, ncol=len(texts))
        fig.suptitle(title, fontsize=11, x=0.01, ha="left")
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        return _save(fig, path)
    finally:
        plt.close(fig)


def _shade(ax: Any, labels: np.ndarray) -> None:
    """Shade runs of label-1 frames; a frame k covers [k - 0.5, k + 0.5]."""
    on = np.r_[0, (labels != 0).astype(np.int8), 0]
    edges = np.diff(on)
    for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        ax.axvspan(a - 0.5, b - 0.5, color="orange", alpha=0.25, lw=0)


def _save(fig: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out
