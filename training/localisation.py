"""Localisation: does the evidence lie where the ground-truth pixel masks say the anomaly is? Pure numpy.

The evidence is what an alert's heatmap and peak box show (:func:`plugins.zones.evidence_map`), one
``(h, w)`` map per frame; the masks are ``(H, W)`` bool per frame (UCSD Ped2's ``test_pixel_mask``, the
synthetic scenes' ``masks``), True on the anomaly. Each map is upsampled bilinearly to the mask's size
with :func:`plugins.pixelmap.upsample`, the same upsampling the heatmaps use.

* **Pixel-level AUC** (:func:`pixel_auc`): the ROC area of the upsampled evidence as a score for every
  pixel of every frame, normal frames included, pooled over frames (the usual pixel-level protocol of
  video anomaly detection). A pixel with no evidence (its cell was NaN: masked, nothing counted) scores
  below every counted pixel. When ``frames x H x W`` exceeds ``max_pixels`` the pixels are subsampled on a
  regular grid, every ``stride``-th row and column of every frame (the same grid in each), with the
  smallest stride that fits; the result says which stride was used.
* **Peak hits** (:func:`peak_hits`), over the abnormal frames (a non-empty mask): the share whose peak box
  (:meth:`plugins.zones.PeakLocation.pixel_box` of :func:`plugins.zones.locate_peak` on the mask's frame)
  overlaps the mask, the share whose peak cell's centre pixel lies in the mask, and the mean share of the
  evidence above the map's half level (the heatmap's coloured part, weighted by how far above) that falls
  in the mask. A frame whose map has no counted cell, or no cell above zero, is a miss.
* **Examples** (:func:`save_examples`): PNGs of chosen frames, the frame beside its heatmap with the peak
  box (white) and the mask's outline (cyan), for the docs.

:func:`evaluation_localisation` is ``zsad eval``'s hook: per-clip maps at scored frames in, the
``localisation`` block of ``metrics.json`` out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from plugins.pixelmap import blend, upsample
from plugins.zones import dilate, evidence_map, half_level, locate_peak
from training.metrics import MetricError, roc_auc

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FrameHit",
    "LocalisationError",
    "PeakHits",
    "PixelAuc",
    "evaluation_localisation",
    "frame_evidence",
    "frame_hit",
    "localisation_report",
    "peak_hits",
    "pixel_auc",
    "save_examples",
]

log = logging.getLogger(__name__)

#: Pixels scored at most by :func:`pixel_auc` before it subsamples (about 1 GB of working memory).
DEFAULT_MAX_PIXELS = 20_000_000
#: Outline colour of the ground-truth mask in the example PNGs.
MASK_COLOUR = (0, 255, 255)


class LocalisationError(ValueError):
    """Evidence and masks that cannot be compared (ranks, counts or sizes that do not fit)."""


def _check(evidence: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(evidence, dtype=np.float64)
    m = np.asarray(masks)
    if e.ndim != 3 or min(e.shape) < 1:
        raise LocalisationError(f"evidence must be (N, h, w) with N, h, w >= 1, got {e.shape}")
    if m.ndim != 3 or min(m.shape) < 1:
        raise LocalisationError(f"masks must be (N, H, W) with N, H, W >= 1, got {m.shape}")
    if m.dtype != np.bool_:
        raise LocalisationError(f"masks must be bool (True on the anomaly), got {m.dtype}")
    if len(e) != len(m):
        raise LocalisationError(f"{len(e)} evidence maps but {len(m)} masks")
    return e, m


# --------------------------------------------------------------------------------------------------
# Pixel-level AUC
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelAuc:
    """Pixel-level ROC area. ``pixels`` scored, of which ``positives`` on the anomaly; ``stride`` 1: every
    pixel, else every ``stride``-th row and column of every frame."""

    auc: float
    pixels: int
    positives: int
    stride: int


def _stride(frames: int, height: int, width: int, max_pixels: int) -> int:
    stride = 1
    while frames * math.ceil(height / stride) * math.ceil(width / stride) > max_pixels:
        stride += 1
    return stride


def pixel_auc(
    evidence: Any, masks: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, chunk: int = 64
) -> PixelAuc:
    """Pixel-level AUC of ``evidence`` ``(N, h, w)`` against ``masks`` ``(N, H, W)`` bool (see the module).
    Raises :class:`LocalisationError` for inputs that do not fit, and ``training.metrics.MetricError`` when
    the scored pixels hold only one class."""
    e, m = _check(evidence, masks)
    if max_pixels < 1:
        raise LocalisationError(f"max_pixels must be >= 1, got {max_pixels}")
    n, height, width = m.shape
    stride = _stride(n, height, width, max_pixels)
    rows, cols = np.arange(0, height, stride), np.arange(0, width, stride)
    scores = np.empty((n, len(rows), len(cols)), dtype=np.float64)
    for start in range(0, n, max(1, chunk)):  # upsampling every frame at once could take gigabytes
        part = slice(start, start + chunk)
        scores[part] = upsample(e[part], height, width, rows=rows, cols=cols)
    labels = m[:, rows][:, :, cols]
    flat = scores.ravel()
    finite = np.isfinite(flat)
    if not finite.all():  # no evidence there: below every counted pixel
        floor = float(flat[finite].min()) - 1.0 if finite.any() else 0.0
        flat = np.where(finite, flat, floor)
    y = labels.ravel()
    return PixelAuc(auc=roc_auc(y, flat), pixels=int(y.size), positives=int(y.sum()), stride=stride)


# --------------------------------------------------------------------------------------------------
# The peak against the mask
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameHit:
    """One frame's peak against its mask: ``located`` (the map had a counted cell above zero), ``box_hit``
    (the peak box overlaps the mask), ``cell_hit`` (the peak cell's centre pixel is in the mask),
    ``half_mass`` (the share of the evidence above the half level that lies in the mask; 0 when there is
    none)."""

    located: bool
    box_hit: bool
    cell_hit: bool
    half_mass: float
    box: tuple[int, int, int, int] | None = None


def frame_hit(evidence: Any, mask: Any, *, grow: int = 0, tiebreak: np.ndarray | None = None) -> FrameHit:
    """:class:`FrameHit` of one ``(h, w)`` map against one ``(H, W)`` bool mask; ``grow`` widens the mask
    by that many pixels in every direction first (e.g. one map cell, for a test at the map's resolution).
    ``tiebreak``: :func:`plugins.zones.locate_peak`'s, to place the peak among equal cells as an alert does
    (the evidence with ``positive=False``)."""
    e, m = _check(np.asarray(evidence)[None], np.asarray(mask)[None])
    ev, target = e[0], m[0]
    if grow > 0:
        target = dilate(target, grow)
    height, width = target.shape
    location = locate_peak(ev, None, tiebreak)
    counted = ev[np.isfinite(ev)]
    if location is None or not counted.size or float(counted.max()) <= 0.0:
        # No cell above zero (the evidence is each stream's excess over its normal median): the map shows
        # no place, and its peak region, every cell, would make the whole frame a box that always hits.
        return FrameHit(located=False, box_hit=False, cell_hit=False, half_mass=0.0)
    x0, y0, x1, y1 = location.pixel_box(width, height)
    box_hit = bool(target[y0:y1, x0:x1].any())
    (i, j), (h, w) = location.cell, location.grid
    cy = min(int((i + 0.5) * height / h), height - 1)
    cx = min(int((j + 0.5) * width / w), width - 1)
    up = upsample(ev, height, width)
    level = half_level(ev)
    above = np.where(np.isfinite(up) & (up >= level), up - level, 0.0)
    total = float(above.sum())
    mass = float(above[target].sum()) / total if total > 0 else 0.0
    return FrameHit(
        located=True, box_hit=box_hit, cell_hit=bool(target[cy, cx]), half_mass=mass, box=(x0, y0, x1, y1)
    )


@dataclass(frozen=True)
class PeakHits:
    """Peak hits over ``frames`` abnormal frames (see the module): counts and the mean ``half_mass``."""

    frames: int
    located: int
    box_hits: int
    cell_hits: int
    half_mass: float

    @property
    def box_hit_rate(self) -> float:
        return self.box_hits / self.frames if self.frames else math.nan

    @property
    def cell_hit_rate(self) -> float:
        return self.cell_hits / self.frames if self.frames else math.nan


def peak_hits(evidence: Any, masks: Any, *, grow: int = 0) -> PeakHits:
    """:class:`PeakHits` of ``evidence`` ``(N, h, w)`` against ``masks`` ``(N, H, W)`` bool, over the frames
    whose mask is not empty (``grow``: see :func:`frame_hit`)."""
    e, m = _check(evidence, masks)
    hits = [frame_hit(e[k], m[k], grow=grow) for k in np.flatnonzero(m.any(axis=(1, 2)))]
    return PeakHits(
        frames=len(hits),
        located=sum(h.located for h in hits),
        box_hits=sum(h.box_hit for h in hits),
        cell_hits=sum(h.cell_hit for h in hits),
        half_mass=float(np.mean([h.half_mass for h in hits])) if hits else math.nan,
    )


def localisation_report(evidence: Any, masks: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Both metrics as a JSON-ready dict (``pixel_auc`` None when the masks hold only one class)."""
    e, m = _check(evidence, masks)
    try:
        auc: dict[str, Any] | None = asdict(pixel_auc(e, m, max_pixels=max_pixels))
    except MetricError as exc:
        log.warning("pixel-level AUC undefined: %s", exc)
        auc = None
    hits = peak_hits(e, m)
    return {
        "frames": len(m),
        "abnormal_frames": hits.frames,
        "pixel_auc": auc,
        "peak_box_hit_rate": _round(hits.box_hit_rate),
        "peak_cell_hit_rate": _round(hits.cell_hit_rate),
        "half_mass_in_mask": _round(hits.half_mass),
        "located_frames": hits.located,
        "protocol": (
            "evidence maps upsampled bilinearly to the mask size; pixel AUC over every pixel of every frame, "
            "pooled (stride > 1: a regular subsample of rows and columns); hit rates over the frames with a "
            "non-empty mask: the peak box overlaps the mask, the peak cell's centre is in the mask; "
            "half_mass_in_mask: mean share of the evidence above the half level inside the mask"
        ),
    }


def _round(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------------
# Example pictures
# --------------------------------------------------------------------------------------------------


def _outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels: in the mask with a 4-neighbour outside it (or at the frame's edge)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def save_examples(
    frames: Any,
    evidence: Any,
    masks: Any,
    indices: Sequence[int],
    folder: str | Path,
    *,
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``<folder>/<name>.png`` for each of ``indices`` (``names`` default ``example_<index>``): the
    frame (``(N, H, W, 3)`` uint8 RGB) beside its heatmap with the peak box (white) and the outline of the
    mask (cyan). Returns the paths."""
    e, m = _check(evidence, masks)
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[3] != 3 or f.dtype != np.uint8 or f.shape[:3] != m.shape:
        raise LocalisationError(f"frames must be (N, H, W, 3) uint8 matching masks {m.shape}, got {f.shape}")
    if names is not None and len(names) != len(indices):
        raise LocalisationError(f"{len(names)} names for {len(indices)} frames")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, k in enumerate(indices):
        if not 0 <= k < len(f):
            raise LocalisationError(f"frame index {k} outside 0..{len(f) - 1}")
        frame, height, width = f[k], m.shape[1], m.shape[2]
        heat, _, _ = blend(frame, e[k])
        heat[_outline(m[k])] = MASK_COLOUR
        image = Image.fromarray(np.concatenate([frame, heat], axis=1))
        location = locate_peak(e[k])
        if location is not None:
            x0, y0, x1, y1 = location.pixel_box(width, height)
            draw = ImageDraw.Draw(image)
            draw.rectangle([width + x0, y0, width + x1 - 1, y1 - 1], outline=(255, 255, 255), width=1)
        path = out / (f"{names[n]}.png" if names is not None else f"example_{int(k):05d}.png")
        image.save(path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------
# zsad eval
# --------------------------------------------------------------------------------------------------


def frame_evidence(
    targets: np.ndarray,
    maps: Sequence[Mapping[str, np.ndarray]],
    weights: np.ndarray,
    streams: Sequence[str],
    stats: Mapping[str, tuple[float, float]] | None,
    n_frames: int,
    *,
    rule: str = "mean",
) -> np.ndarray:
    """Per-frame evidence ``(n_frames, h, w)`` of one video from its scored clips: clip ``k`` predicts
    frame ``targets[k]`` (the frame its maps describe), with error ``maps[k]`` and stream weights
    ``weights[k]`` (``(M, S)`` over ``streams``: the ``FusedScore.weights`` of fusion ``rule``); each frame
    takes the evidence of the nearest scored frame."""
    if len(targets) == 0 or len(targets) != len(maps) or len(maps) != len(weights):
        raise LocalisationError(f"{len(targets)} targets, {len(maps)} maps and {len(weights)} weight rows")
    per_clip = []
    for k, clip_maps in enumerate(maps):
        w = {s: float(weights[k][i]) for i, s in enumerate(streams)}
        ev = evidence_map(clip_maps, w, stats, rule=rule)
        if ev is None:
            shape = next(iter(clip_maps.values())).shape
            ev = np.full(shape, np.nan)
        per_clip.append(ev)
    order = np.argsort(targets, kind="stable")
    sorted_targets = np.asarray(targets)[order]
    frames = np.arange(n_frames)
    right = np.clip(np.searchsorted(sorted_targets, frames), 0, len(order) - 1)
    left = np.clip(right - 1, 0, len(order) - 1)
    nearest = np.where(
        np.abs(sorted_targets[left] - frames) <= np.abs(sorted_targets[right] - frames), left, right
    )
    stack = np.stack(per_clip)
    return stack[order[nearest]]


def evaluation_localisation(
    clips: Mapping[str, tuple[np.ndarray, Sequence[Mapping[str, np.ndarray]], np.ndarray]],
    streams: Sequence[str],
    stats: Mapping[str, tuple[float, float]] | None,
    masks_of: Callable[[str], np.ndarray],
    *,
    frames_of: Callable[[str], np.ndarray] | None = None,
    examples_dir: Path | None = None,
    examples: int = 6,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    rule: str = "mean",
    stats_of: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
) -> dict[str, Any]:
    """``zsad eval``'s ``localisation`` block: ``clips`` maps a test video to ``(targets, maps, weights)``
    of its scored clips (see :func:`frame_evidence`, fused by ``rule``), ``masks_of(video)`` gives its
    ``(N, H, W)`` masks. ``stats_of[video]``, where given, replaces ``stats`` for that video (each camera
    z-scores with its own calibration).
    With ``frames_of`` (the video's ``(N, H, W, 3)`` frames at the masks' size) and ``examples_dir``,
    ``examples`` abnormal frames spread over the set are saved as PNGs there."""
    evidence: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    where: list[tuple[str, int]] = []
    for name, (targets, maps, weights) in clips.items():
        mask = np.asarray(masks_of(name), dtype=bool)
        own = stats_of.get(name, stats) if stats_of is not None else stats
        evidence.append(frame_evidence(targets, maps, weights, streams, own, len(mask), rule=rule))
        masks.append(mask)
        where += [(name, k) for k in range(len(mask))]
    if not masks:
        raise LocalisationError("no test videos with pixel masks")
    sizes = {m.shape[1:] for m in masks}
    grids = {e.shape[1:] for e in evidence}
    if len(sizes) != 1 or len(grids) != 1:
        raise LocalisationError(f"the test videos differ in mask size {sizes} or map grid {grids}")
    all_e, all_m = np.concatenate(evidence), np.concatenate(masks)
    report = localisation_report(all_e, all_m, max_pixels=max_pixels)
    report["rule"] = rule
    if frames_of is not None and examples_dir is not None and examples > 0:
        abnormal = np.flatnonzero(all_m.any(axis=(1, 2)))
        picks = abnormal[np.linspace(0, len(abnormal) - 1, min(examples, len(abnormal))).round().astype(int)]
        saved = []
        for k in picks:
            name, index = where[int(k)]
            frames = np.asarray(frames_of(name))
            saved += save_examples(
                frames[index : index + 1],
                all_e[k : k + 1],
                all_m[k : k + 1],
                [0],
                examples_dir,
                names=[f"{name}_{index:04d}"],
            )
        report["examples"] = [str(p) for p in saved]
    return report
