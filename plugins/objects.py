"""The objects stream: foreground blobs whose speed, travel, shape or stillness the camera's normal footage
lacks.

Object-level evidence without a trained detector (issue #14, item 6; the study in docs/results.md, "Object-
level evidence"). Per camera:

* a **fixed background**: the per-pixel median of the camera's normal grey frames (``zsad calibrate``), and
  each pixel's normal noise (1.4826 x the median absolute departure from it, after each frame's global level
  shift is taken out). A pixel is foreground where it departs by more than ``max(k x noise, floor)``; an
  opening then a closing clean the mask, and its 8-connected components of at least ``min_area`` pixels are
  the **blobs** (:func:`find_blobs`);
* **tracks**: each blob takes the nearest blob of the previous frame within three quarters of the larger
  height (plus a margin), when their areas are within a factor of 3 (:class:`ObjectsState`);
* per blob four **features** (:data:`FEATURES`): ``speed``, ``log(1 + px/s)`` where px/s is the median
  dense optical-flow magnitude (OpenCV DIS, preset FAST down to half resolution) over the blob's own
  pixels, averaged over the track's last 3 frames (a merge or split moves a centroid, not the pixels, so
  flow is steadier than centroids);
  ``aspect``, ``log(width / height)`` (a car, a cyclist or a person lying down is wide); ``still``, the
  seconds the track has moved less than a quarter of its height a second *and* stayed within half its
  height of where it stopped (someone walking towards the camera moves few pixels for their height, but
  keeps going); ``travel``, ``log(1 + px/s)`` where px/s is how far the box moved over the track's last 3
  steps (4 frames), per second, along each axis only as far as both its opposite edges moved the same way (a
  box that grows at one edge, someone joining a figure along its length, moves its centre, not the object),
  and not counted across a merge or a split: the blob's area changed by a factor of 2 or more over the steps,
  or on one of them its box met two of the last frame's boxes one of whose tracks ended there (a merge), or
  its last box met two blobs one of which started a track (a split), and its width or height changed by a
  factor of 1.5 or more there; a track through people who overlap can go from one to another with no change
  of area, while boxes that merely overlap, every track going on, are neither, and a box that keeps its size
  is taken to be the object it was. Flow alone
  misses a thin, flat figure moving along its length (a person running up a walkway seen from above): its
  inside is the same colour all along the motion, so the flow there reads near zero (the aperture problem),
  and the median over its pixels with it; its box still travels (docs/results.md, "The track's travel");
* the **normal tails** (:class:`ObjectsModel`): each feature's median and 99th percentile over the blobs of
  the camera's normal footage. A blob's **excess** is the largest of ``(x - median) / (p99 - median)`` over
  its features (1: at the normal 99th percentile); a feature it lacks (the speed of a blob on the first
  frame) counts :data:`EMPTY`.

The stream's map (:meth:`ObjectsModel.score_frame`) is spatial: each cell of the DPC grid takes the largest
excess of the blobs whose box covers it, :data:`EMPTY` where no blob is.

Measured first in a study (bench/results/blobs_2026-12-05/): speed in the blob's own heights per second was
refuted, and a position feature cost Ped2 0.18, so neither is here.

The file: ``zsad calibrate`` writes the model beside the camera's calibration (:func:`model_path`:
``calib/gate-1.json`` -> ``calib/gate-1.objects.npz``) with its settings, frame size, grid, spacing, the fit
date and the sha256 of its arrays; :func:`load_model` refuses, with an :class:`ObjectsModelError` naming the
file, one that is missing, damaged, of another version, or fitted for another frame size, grid or spacing.

numpy, and OpenCV (imported when a state first scores a frame or a model is fitted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.datafile import write_atomic
from plugins.modelfile import arrays_sha256, beside, read_model_file, setup_mismatches, whole_cells
from plugins.registry import CameraTable

log = logging.getLogger(__name__)

__all__ = [
    "EMPTY",
    "FEATURES",
    "MODEL_SUFFIX",
    "MODEL_VERSION",
    "Blob",
    "FlowCache",
    "ObjectsError",
    "ObjectsModel",
    "ObjectsModelError",
    "ObjectsModels",
    "ObjectsState",
    "agreeing",
    "describe",
    "find_blobs",
    "fit_configured",
    "fit_model",
    "grey_frame",
    "leaving_unjudged",
    "load_model",
    "model_path",
    "save_model",
]

#: 2: the travel counts what both opposite edges agree on and the still clock needs the track to stay near
#: where it stopped (tails fitted under version 1's rules judge other numbers). 3: a merge or a split stops
#: the travel only when the track's box jumps in size (version 2's travel tails saw fewer crowd tracks).
MODEL_VERSION = 3
MODEL_SUFFIX = ".objects.npz"
#: The value of a cell no blob covers, and of a feature a blob lacks.
EMPTY = -5.0
#: The features, in the order of the model's ``tails`` rows.
FEATURES: tuple[str, ...] = ("speed", "aspect", "still", "travel")
#: Heights per second under which a track counts as standing still.
_STILL_SPEED = 0.25
#: Heights a track may move from where it stopped and still count as standing still: a slow walker's box
#: (far, or going towards or away from the camera) passes it within seconds, a standing one's jitter does
#: not (a merge or a split that moves its box's centre that far starts its still time afresh).
_STILL_RADIUS = 0.5
#: Frames of a track its speed is averaged over, and the steps its travel is measured over.
_TRACK_FRAMES = 3
#: The ratio of a track's areas over its travel's steps from which a merge or a split, not the object, is
#: taken to have moved the box's centre (no travel then).
_TRAVEL_AREA_RATIO = 2.0
#: The ratio of a box's width or height to its track's last box's from which a merge or a split is taken to
#: have moved the box to another object: a walker that passes a smaller one in a crowd keeps its box's size,
#: and its travel is its own (docs/results.md).
_JOIN_JUMP = 1.5
#: The frame height the pixel settings (``min_area``, the morphology, the tracking margin) are given for.
_REFERENCE_ROWS = 240
#: Frames further apart than this many spacings are not consecutive: the state starts afresh.
_MAX_GAP = 1.5
#: The background is the median of at most this many normal frames, evenly spaced.
_BACKGROUND_FRAMES = 200
#: The smallest tail scale (p99 - median) of each feature: footage where every blob is alike (all walkers the
#: same shape, nobody ever standing) would otherwise make a hair's difference an alarm. Speed, aspect and
#: travel (log units): below every scale measured (0.39-1.4 at the product's frame sizes, travel 0.38-0.51:
#: docs/results.md), so only such footage meets them. Still: 10 s, about the smallest of the full footage
#: of every set measured (10-21 s), because a short calibration fold decides it by one person: on the demo's
#: campus camera one fold's longest wait was 4 s and the other fold's 14-s wait then stood 4 scales out, an
#: alarm on normal footage that made the stream's held-out tail heavy enough to leave it out
#: (docs/results.md).
_MIN_SCALE = np.array([0.25, 0.25, 10.0, 0.25])
#: Fewest blob observations whose features a model's tails are measured on.
_MIN_OBSERVATIONS = 30
#: Features a model may leave unjudged (a NaN tail) when its footage shows too few of them: a road camera's
#: cars can cross in few enough frames that no track lasts the travel's steps, and the camera keeps the rest
#: of the stream.
_OPTIONAL = frozenset({"travel"})
_RECALIBRATE = "re-run zsad calibrate for this camera"


class ObjectsError(ValueError):
    """Bad input to the objects stream: a frame of the wrong shape or type, an invalid setting, or normal
    footage that shows too few objects to fit a model on."""


class ObjectsModelError(ObjectsError):
    """A model file that cannot be used: missing, damaged, of another version, or fitted for another frame
    size, grid or spacing. The message names the file and what to do."""


def _cv2() -> Any:
    import cv2  # OpenCV is heavy: `zsad validate`, and runs without the objects stream, never load it

    # One thread a call. OpenCV's own pool (one thread per core) spins: on the 2-core box the stream's frame
    # cost about twice the CPU at 2 threads for about the same wall time, the same maps bit for bit, while the
    # cores are already shared by the cameras' decoders and ONNX Runtime (docs/benchmarks.md). The stream is
    # the only OpenCV user in the process.
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    return cv2


def grey_frame(frame: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(H, W)`` uint8 luma (ITU-R 601 weights, integer arithmetic); an
    ``(H, W)`` uint8 frame is taken as luma already (what the stream keeps: a third of the RGB's memory).
    Always a new array: callers keep it (a state's previous frame) while theirs may be reused."""
    f = np.asarray(frame)
    if f.dtype == np.uint8 and f.ndim == 2 and min(f.shape) >= 1:
        return f.copy()
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[-1] != 3 or min(f.shape) < 1:
        raise ObjectsError(f"a frame must be uint8 (H, W, 3) RGB or (H, W) grey, got {f.dtype} {f.shape}")
    r, g, b = (f[..., i].astype(np.uint16) for i in range(3))
    return ((77 * r + 150 * g + 29 * b + 128) >> 8).astype(np.uint8)


def _odd(x: float) -> int:
    return max(3, round(x) // 2 * 2 + 1)


@dataclass(frozen=True)
class _Geometry:
    """The pixel settings at one frame height, scaled from the 240-row ones."""

    min_area: float
    open_size: int
    close_size: int
    margin: float

    @classmethod
    def at(cls, rows: int, min_area: float) -> _Geometry:
        s = rows / _REFERENCE_ROWS
        return cls(min_area * s * s, _odd(3 * s), _odd(7 * s), 4.0 * s)


@dataclass(frozen=True)
class Blob:
    """One foreground blob of a frame: its box ``(x, y, w, h)`` in frame pixels, its area in pixels, its
    track, its speed in pixels a second (``nan`` on the first frame a state takes), ``aspect``
    ``log(w / h)``, ``still`` the seconds its track has stood still, and ``travel`` how far its box moved
    over the track's last 3 steps (4 frames), in pixels a second, as far as both opposite edges agree
    (``nan`` for a younger track, one whose area changed by a factor of 2 or more over them, or one that
    went through a merge or a split on them at which its box jumped in size: :meth:`ObjectsState.update`)."""

    x: int
    y: int
    w: int
    h: int
    area: int
    track: int
    speed: float
    aspect: float
    still: float
    travel: float = math.nan

    def features(self) -> np.ndarray:
        """``(len(FEATURES),)``: ``log(1 + speed)``, ``aspect``, ``still``, ``log(1 + travel)`` (speeds are
        skewed: log scale)."""
        return np.array(
            [math.log1p(self.speed), self.aspect, self.still, math.log1p(self.travel)], np.float64
        )


def find_blobs(
    grey: np.ndarray, background: np.ndarray, threshold: np.ndarray, geometry: _Geometry
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground components of ``grey`` against ``background`` (both ``(H, W)`` uint8), ``threshold`` the
    per-pixel grey levels a departure must exceed. Returns the label image ``(H, W)`` int32 and one row
    ``x, y, w, h, area, label`` (int64) per component of at least ``geometry.min_area`` pixels."""
    cv2 = _cv2()
    d = grey.astype(np.float32) - background.astype(np.float32)
    # A global light change moves every pixel alike: take the frame's typical departure out first.
    d -= np.float32(np.median(d[::4, ::4]))
    fg = (np.abs(d) > threshold).astype(np.uint8)
    fg = cv2.morphologyEx(
        fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (geometry.open_size,) * 2)
    )
    fg = cv2.morphologyEx(
        fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (geometry.close_size,) * 2)
    )
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    rows = [(*(int(v) for v in stats[i, :5]), i) for i in range(1, n) if stats[i, 4] >= geometry.min_area]
    return labels, np.asarray(rows, np.int64).reshape(-1, 6)


class FlowCache:
    """Dense-flow magnitudes between two frames, kept by the frames' content, so that footage played through
    several models computes each pair's flow once.

    ``zsad calibrate`` and ``zsad eval`` play a camera's footage through every held-out fold's model and the
    model of all of it: five times for most frames, and the flow was 35 % of a demo camera's calibration. A
    model changes which pixels are foreground, never the flow between two frames, and DIS gives the same
    flow for the same two frames, so every speed is what it would be without the cache. At most
    ``max_bytes`` of magnitudes are kept; pairs beyond that are computed each time. One thread."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        if max_bytes < 0:
            raise ObjectsError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._kept: dict[tuple[tuple[int, ...], bytes, bytes], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def magnitude(
        self,
        prev: np.ndarray,
        grey: np.ndarray,
        compute: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> np.ndarray:
        """The flow magnitude from ``prev`` to ``grey`` (``(H, W)`` uint8), ``compute(prev, grey)`` the first
        time a pair is seen. Read-only: the same array is handed out again."""
        key = (grey.shape, _digest(prev), _digest(grey))
        kept = self._kept.get(key)
        if kept is not None:
            self.hits += 1
            return kept
        self.misses += 1
        out = compute(prev, grey)
        if self.bytes + out.nbytes <= self.max_bytes:
            out.flags.writeable = False
            self._kept[key] = out
            self.bytes += out.nbytes
        return out


def _digest(frame: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16).digest()


@dataclass
class _Track:
    ident: int
    cx: float
    cy: float
    area: float
    h: float
    speeds: deque[float]
    heights: deque[float]
    #: ``(left, top, right, bottom, area, joined)`` of the track's last frames, the travel's steps and one
    #: more; ``joined``: the blob may have merged with another or split from one on that frame.
    path: deque[tuple[float, float, float, float, float, bool]]
    still: float = 0.0
    #: The box's centre where the track last moved (None before its first speed).
    anchor: tuple[float, float] | None = None

    def travel(self, spacing_s: float) -> float:
        """Pixels a second the box moved over the last :data:`_TRACK_FRAMES` steps, along each axis as far as
        both its opposite edges agree (:func:`_agreed`); nan with too few steps, when the area changed by
        :data:`_TRAVEL_AREA_RATIO` times or more over them, or when one of them was ``joined`` (a merge or a
        split at which the box jumped in size, :meth:`ObjectsState.update`)."""
        if len(self.path) <= _TRACK_FRAMES:
            return math.nan
        areas = [p[4] for p in self.path]
        if max(areas) >= _TRAVEL_AREA_RATIO * min(areas) or any(p[5] for p in list(self.path)[1:]):
            return math.nan
        (l0, t0, r0, b0, _, _), (l1, t1, r1, b1, _, _) = self.path[0], self.path[-1]
        dx = _agreed(l1 - l0, r1 - r0)
        dy = _agreed(t1 - t0, b1 - b0)
        return math.hypot(dx, dy) / (_TRACK_FRAMES * spacing_s)


def _meet(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether boxes ``(left, top, right, bottom)`` overlap."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _jumped(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether box ``a``'s width or height is at least :data:`_JOIN_JUMP` times box ``b``'s or at most its
    reciprocal (boxes ``(left, top, right, bottom)``)."""
    ratios = [max(a[i + 2] - a[i], 1.0) / max(b[i + 2] - b[i], 1.0) for i in (0, 1)]
    return any(r >= _JOIN_JUMP or r <= 1.0 / _JOIN_JUMP for r in ratios)


def _agreed(a: float, b: float) -> float:
    """How far two opposite edges that moved ``a`` and ``b`` moved together: the smaller move when both went
    the same way, else 0 (one edge stood: the box grew or shrank)."""
    return math.copysign(min(abs(a), abs(b)), a) if a * b > 0 else 0.0


class ObjectsState:
    """One camera's tracks and previous frame. It belongs to one thread (the scorer's). ``spacing_s``: the
    seconds between the frames it is given (speeds are measured over them); ``flows``: a cache of flows
    shared with the other states that play the same footage (:class:`FlowCache`), or None."""

    def __init__(self, spacing_s: float, flows: FlowCache | None = None) -> None:
        if not (math.isfinite(spacing_s) and spacing_s > 0):
            raise ObjectsError(f"spacing_s must be > 0, got {spacing_s}")
        self.spacing_s = float(spacing_s)
        self.flows = flows
        self._flow: Any = None
        self._step: float | None = None  # the shortest time between frames given so far (note_time)
        self.reset()

    def reset(self) -> None:
        """Forget the tracks and the previous frame (a camera that reconnects starts afresh)."""
        self._prev: np.ndarray | None = None
        self._pts: float | None = None
        self._tracks: list[_Track] = []
        self._next_id = 0

    def note_time(self, pts: float | None) -> None:
        """Tell the state the time (seconds) of the frame it is about to take. After a gap of more than 1.5
        steps (the step: the shortest time between the frames it has been given, at least ``spacing_s``; a
        gap: clips a loaded scheduler dropped, a stalled camera) or a time that goes back, it starts afresh:
        a speed measured across the gap would read two or more times too fast, and a still time would run
        on."""
        if pts is None:
            return
        if self._pts is not None:
            dt = float(pts) - self._pts
            if dt > 0:
                self._step = dt if self._step is None else min(self._step, dt)
            if not 0 < dt <= _MAX_GAP * max(self.spacing_s, self._step or 0.0):
                self.reset()
        self._pts = float(pts)

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        return None if self._prev is None else (int(self._prev.shape[0]), int(self._prev.shape[1]))

    def _speeds(self, grey: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Each blob's median flow magnitude in pixels a second (nan without a previous frame)."""
        out = np.full(len(rows), np.nan)
        if self._prev is None or self._prev.shape != grey.shape or not len(rows):
            return out
        if self.flows is None:
            magnitude = self._magnitude(self._prev, grey)
        else:
            magnitude = self.flows.magnitude(self._prev, grey, self._magnitude)
        for j, (x, y, w, h, _, label) in enumerate(rows):
            box = (slice(y, y + h), slice(x, x + w))
            out[j] = float(np.median(magnitude[box][labels[box] == label])) / self.spacing_s
        return out

    def _magnitude(self, prev: np.ndarray, grey: np.ndarray) -> np.ndarray:
        """``(H, W)`` float32 dense-flow magnitude from ``prev`` to ``grey``, in pixels a frame."""
        cv2 = _cv2()
        if self._flow is None:
            self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
            # The preset stops at a quarter of the frame's resolution; at the backbone's small frames that
            # blurs a walker into its background (speeds read half of what they are, and runners and
            # cyclists no longer stand out). Half resolution costs 2x and reads them (docs/results.md).
            self._flow.setFinestScale(1)
        flow = self._flow.calc(prev, grey, None)
        return np.hypot(flow[..., 0], flow[..., 1])

    def update(
        self, grey: np.ndarray, labels: np.ndarray, rows: np.ndarray, geometry: _Geometry
    ) -> list[Blob]:
        """Match this frame's blobs to the tracks, update the tracks, and return the blobs with features."""
        if self._prev is not None and self._prev.shape != grey.shape:
            self.reset()  # a camera whose frame size changed: tracks across sizes mean nothing
        speeds = self._speeds(grey, labels, rows)
        centres = [(x + w / 2.0, y + h / 2.0) for x, y, w, h, _, _ in rows]
        pairs = []
        for j, ((cx, cy), (_, _, _, h, a, _)) in enumerate(zip(centres, rows, strict=True)):
            for k, t in enumerate(self._tracks):
                dist = math.hypot(cx - t.cx, cy - t.cy)
                if dist < 0.75 * max(h, t.h) + geometry.margin and 1 / 3 < a / t.area < 3:
                    pairs.append((dist, j, k))
        pairs.sort()
        taken_j: set[int] = set()
        taken_k: set[int] = set()
        match: dict[int, _Track] = {}
        came_from: dict[int, int] = {}  # blob -> the index of the track it continues
        for _, j, k in pairs:
            if j not in taken_j and k not in taken_k:
                taken_j.add(j)
                taken_k.add(k)
                match[j] = self._tracks[k]
                came_from[j] = k
        # A merge: a blob whose box meets two of the last frame's boxes, one of whose tracks ended here. A
        # split: a last box that two blobs meet, one of which starts a track. A track through either may have
        # gone from one object to another, and the areas need not say so (people overlap), so no travel is
        # measured across it when its box jumps in size there. A box that keeps its size is taken to be the
        # object it was (a walker passing a smaller one): the trade-off is that two people of one size who
        # overlap and part can swap tracks unseen, and the swap then counts as travel. Boxes that merely
        # overlap while every track goes on are neither.
        last = [t.path[-1][:4] for t in self._tracks]
        boxes = [(x, y, x + w, y + h) for x, y, w, h, _, _ in rows]
        meets = [[_meet(b, q) for q in last] for b in boxes]  # [blob][last track]
        merged = [sum(m) >= 2 and any(m[k] and k not in taken_k for k in range(len(last))) for m in meets]
        split = [
            sum(m[k] for m in meets) >= 2 and any(meets[j][k] and j not in match for j in range(len(boxes)))
            for k in range(len(last))
        ]
        tracks, blobs = [], []
        for j, (x, y, w, h, a, _) in enumerate(rows):
            track = match.get(j)
            if track is None:
                track = _Track(
                    self._next_id,
                    0.0,
                    0.0,
                    0.0,
                    0.0,
                    deque(maxlen=_TRACK_FRAMES),
                    deque(maxlen=_TRACK_FRAMES),
                    deque(maxlen=_TRACK_FRAMES + 1),
                )
                self._next_id += 1
            track.cx, track.cy = centres[j]
            track.area, track.h = float(a), float(h)
            track.heights.append(float(h))
            joined = (
                j in came_from
                and (merged[j] or split[came_from[j]])
                and _jumped(boxes[j], last[came_from[j]])
            )
            track.path.append((float(x), float(y), float(x + w), float(y + h), float(a), joined))
            if math.isfinite(speeds[j]):
                track.speeds.append(float(speeds[j]))
            speed = float(np.mean(track.speeds)) if track.speeds else math.nan
            if math.isfinite(speed):
                height = float(np.mean(track.heights))
                cx, cy = centres[j]
                if track.anchor is None:
                    track.anchor = (cx, cy)
                moving = (
                    speed / height >= _STILL_SPEED
                    or math.hypot(cx - track.anchor[0], cy - track.anchor[1]) > _STILL_RADIUS * height
                )
                if moving:
                    track.anchor = (cx, cy)
                track.still = 0.0 if moving else track.still + self.spacing_s
            tracks.append(track)
            blobs.append(
                Blob(
                    int(x),
                    int(y),
                    int(w),
                    int(h),
                    int(a),
                    track.ident,
                    speed,
                    math.log(w / h),
                    track.still,
                    track.travel(self.spacing_s),
                )
            )
        self._tracks = tracks
        self._prev = grey
        return blobs


def _settings(k: float, floor: float, min_area: float, spacing_s: float) -> None:
    for name, v in (("k", k), ("floor", floor), ("min_area", min_area), ("spacing_s", spacing_s)):
        if not (math.isfinite(v) and v > 0):
            raise ObjectsError(f"{name} must be > 0, got {v}")


class ObjectsModel:
    """One camera's fixed background, its pixels' thresholds and the normal tails of its blobs' features.

    Args:
        background: ``(H, W)`` uint8 grey background.
        threshold: ``(H, W)`` float32 grey levels a pixel must depart by to be foreground.
        tails: ``(len(FEATURES), 2)`` float64: each feature's normal median and ``p99 - median`` (> 0); NaN
            for a feature of :data:`_OPTIONAL` its footage showed too little of (that feature is not judged).
        grid: the DPC maps' ``(h, w)``; each cell covers whole pixels.
        spacing_s, k, floor, min_area: the settings it was fitted with (scoring uses the same).
    """

    def __init__(
        self,
        background: np.ndarray,
        threshold: np.ndarray,
        tails: np.ndarray,
        grid: Sequence[int],
        *,
        spacing_s: float,
        k: float,
        floor: float,
        min_area: float,
        camera: str = "",
        n_frames: int = 0,
        n_blobs: int = 0,
        fitted: str = "",
    ) -> None:
        bg = np.asarray(background)
        if bg.dtype != np.uint8 or bg.ndim != 2 or min(bg.shape) < 1:
            raise ObjectsError(f"background must be uint8 (H, W), got {bg.dtype} {bg.shape}")
        thr = np.asarray(threshold, dtype=np.float32)
        if thr.shape != bg.shape or not (np.isfinite(thr).all() and (thr > 0).all()):
            raise ObjectsError(f"threshold must be a positive finite {bg.shape} array, got {thr.shape}")
        t = np.asarray(tails, dtype=np.float64)
        shaped = t.shape == (len(FEATURES), 2)
        # Rows a model may leave unjudged: all NaN, of an optional feature; every other row is checked.
        unjudged = np.isnan(t).all(axis=1) & np.isin(FEATURES, list(_OPTIONAL)) if shaped else None
        if unjudged is None or not np.isfinite(t[~unjudged]).all() or (t[~unjudged, 1] <= 0).any():
            raise ObjectsError(
                f"tails must be finite ({len(FEATURES)}, 2) with positive scales (NaN rows only for "
                f"{sorted(_OPTIONAL)}), got {t.shape}"
            )
        whole_cells(bg.shape, grid, ObjectsError)
        _settings(k, floor, min_area, spacing_s)
        # Private read-only copies: a caller changing its arrays later must not change what is scored.
        self.background = np.array(bg, copy=True, order="C")
        self.threshold = np.array(thr, copy=True, order="C")
        self.tails = np.array(t, copy=True)
        for a in (self.background, self.threshold, self.tails):
            a.flags.writeable = False
        self._grid = (int(grid[0]), int(grid[1]))
        self.spacing_s = float(spacing_s)
        self.k = float(k)
        self.floor = float(floor)
        self.min_area = float(min_area)
        self.camera = str(camera)
        self.n_frames = int(n_frames)
        self.n_blobs = int(n_blobs)
        self.fitted = str(fitted)
        self._geometry = _Geometry.at(bg.shape[0], self.min_area)

    @property
    def grid(self) -> tuple[int, int]:
        return self._grid

    @property
    def unjudged(self) -> tuple[str, ...]:
        """The features this model leaves unjudged (its footage showed too few of them)."""
        return tuple(n for n, row in zip(FEATURES, self.tails, strict=True) if np.isnan(row).all())

    @property
    def frame_size(self) -> tuple[int, int]:
        return (int(self.background.shape[0]), int(self.background.shape[1]))

    def __repr__(self) -> str:
        (h, w), (fh, fw) = self.grid, self.frame_size
        return (
            f"ObjectsModel(camera={self.camera!r}, frame={fh}x{fw}, grid={h}x{w}, "
            f"spacing_s={self.spacing_s:g}, n_blobs={self.n_blobs})"
        )

    def new_state(self, flows: FlowCache | None = None) -> ObjectsState:
        """A fresh state for this model's camera (``flows``: as :class:`ObjectsState`)."""
        return ObjectsState(self.spacing_s, flows)

    def blobs(self, state: ObjectsState, frame: np.ndarray, pts: float | None = None) -> list[Blob]:
        """Give ``state`` the camera's next frame (:func:`grey_frame`: RGB or grey); its blobs with their
        features.
        ``pts``: the frame's time in seconds (None: it follows the last one by the spacing)."""
        state.note_time(pts)
        grey = grey_frame(frame)
        if grey.shape != self.background.shape:
            raise ObjectsError(f"frames are {grey.shape}, this model's background is {self.background.shape}")
        labels, rows = find_blobs(grey, self.background, self.threshold, self._geometry)
        return state.update(grey, labels, rows, self._geometry)

    def excess(self, blobs: Sequence[Blob]) -> np.ndarray:
        """``(n,)`` each blob's largest excess over its features' normal tails (:data:`EMPTY` at least)."""
        if not blobs:
            return np.zeros(0)
        f = np.stack([b.features() for b in blobs])
        z = (f - self.tails[:, 0]) / self.tails[:, 1]
        return np.nan_to_num(z, nan=EMPTY).clip(min=EMPTY).max(axis=1)

    def score_frame(self, state: ObjectsState, frame: np.ndarray, pts: float | None = None) -> np.ndarray:
        """``(h, w)`` float32 map of the camera's next frame: each cell the largest excess of the blobs whose
        box covers it, :data:`EMPTY` elsewhere. ``state`` takes the frame (tracks, previous frame); ``pts``
        as :meth:`blobs`."""
        blobs = self.blobs(state, frame, pts)
        return self.blob_map(blobs, self.excess(blobs))

    def blob_map(self, blobs: Sequence[Blob], excess: np.ndarray) -> np.ndarray:
        """The map of :meth:`score_frame` for given blobs and their excess."""
        ch, cw = whole_cells(self.frame_size, self.grid, ObjectsError)
        out = np.full(self.grid, EMPTY, np.float32)
        for b, e in zip(blobs, excess, strict=True):
            cells = out[b.y // ch : (b.y + b.h - 1) // ch + 1, b.x // cw : (b.x + b.w - 1) // cw + 1]
            np.maximum(cells, np.float32(e), out=cells)
        return out


def leaving_unjudged(model: ObjectsModel, names: Iterable[str]) -> ObjectsModel:
    """``model`` with the features ``names`` (of :data:`_OPTIONAL`) left unjudged as well."""
    names = set(names)
    if not names <= _OPTIONAL:
        raise ObjectsError(f"only {sorted(_OPTIONAL)} may be left unjudged, got {sorted(names)}")
    tails = model.tails.copy()
    for name in names:
        tails[FEATURES.index(name)] = np.nan
    return ObjectsModel(
        model.background,
        model.threshold,
        tails,
        model.grid,
        spacing_s=model.spacing_s,
        k=model.k,
        floor=model.floor,
        min_area=model.min_area,
        camera=model.camera,
        n_frames=model.n_frames,
        n_blobs=model.n_blobs,
        fitted=model.fitted,
    )


def agreeing(models: Sequence[ObjectsModel]) -> list[ObjectsModel]:
    """One camera's models (its held-out folds' and its whole footage's), each leaving unjudged every
    feature any of them does. A fold's model sees less footage and may fall short of a feature's 30
    observations where the whole footage's does not; the camera's calibration samples come from the fold
    models, so the model it runs with must judge what they judged, and no more (a feature judged only at
    run time would raise normal scores above what the threshold was calibrated on)."""
    unjudged = {n for m in models for n in m.unjudged}
    return [leaving_unjudged(m, unjudged) if set(m.unjudged) != unjudged else m for m in models]


class ObjectsModels(CameraTable[ObjectsModel]):
    """Every camera's model, replaced whole while the scorer runs (:class:`plugins.registry.CameraTable`)."""


def describe(model: ObjectsModel) -> str:
    """One line for the logs: what a loaded model was fitted on."""
    (fh, fw), (h, w) = model.frame_size, model.grid
    return (
        f"{model.n_blobs} blobs in {model.n_frames} frames {model.spacing_s:g} s apart, {fw}x{fh} frames "
        f"on a {w}x{h} grid, fitted {model.fitted or 'at an unknown time'}"
        + (f", not judging {' or '.join(model.unjudged)} (too few in its footage)" if model.unjudged else "")
    )


def _background(greys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The median background of ``(N, H, W)`` uint8 frames and each pixel's robust noise (float32)."""
    step = max(1, len(greys) // _BACKGROUND_FRAMES)
    sample = greys[::step]
    bg = np.median(sample, axis=0).astype(np.float32)
    dev = np.empty(sample.shape, np.float32)
    for i in range(0, len(sample), 64):  # in slices: a float copy of every frame at once is large
        d = sample[i : i + 64].astype(np.float32) - bg
        d -= np.median(d.reshape(len(d), -1), axis=1)[:, None, None]
        dev[i : i + 64] = np.abs(d)
    return bg.round().astype(np.uint8), (1.4826 * np.median(dev, axis=0)).astype(np.float32)


def fit_model(
    videos: Iterable[np.ndarray],
    grid: Sequence[int],
    *,
    spacing_s: float,
    k: float = 4.0,
    floor: float = 15.0,
    min_area: float = 40.0,
    camera: str = "",
    flows: FlowCache | None = None,
) -> ObjectsModel:
    """Fit a camera's model on its normal footage: ``videos`` each ``(N, H, W, 3)`` uint8 RGB or
    ``(N, H, W)`` grey (:func:`grey_frame`), in time order, ``spacing_s`` seconds apart (each video's tracks
    start afresh). The background and noise come from all
    their frames; the tails from the features of every blob the stream then finds in them (``flows``: a
    cache shared by fits and scorings of the same footage, :class:`FlowCache`). Raises
    :class:`ObjectsError` when the footage shows fewer than 30 blob observations of a feature (of an
    optional one, :data:`_OPTIONAL`, the model leaves it unjudged and says so in the log)."""
    _settings(k, floor, min_area, spacing_s)
    greys = [np.stack([grey_frame(f) for f in np.asarray(v)]) for v in videos if len(v)]
    if not greys:
        raise ObjectsError("fitting needs normal frames, got none")
    shapes = {g.shape[1:] for g in greys}
    if len(shapes) != 1:
        raise ObjectsError(f"every video must have the same frame size, got {sorted(shapes)}")
    whole_cells(greys[0].shape[1:], grid, ObjectsError)
    background, noise = _background(np.concatenate(greys))
    threshold = np.maximum(k * noise, np.float32(floor))
    geometry = _Geometry.at(background.shape[0], min_area)
    observed = []
    for g in greys:
        state = ObjectsState(spacing_s, flows)
        for frame in g:
            labels, rows = find_blobs(frame, background, threshold, geometry)
            observed += [b.features() for b in state.update(frame, labels, rows, geometry)]
    f = np.stack(observed) if observed else np.zeros((0, len(FEATURES)))
    tails = np.zeros((len(FEATURES), 2))
    for i, name in enumerate(FEATURES):
        v = f[np.isfinite(f[:, i]), i]
        if len(v) < _MIN_OBSERVATIONS and name in _OPTIONAL:
            # Too few to know what is normal, of a feature the rest of the stream can do without.
            log.warning(
                "objects model%s: the normal footage shows %d blob observations with a %s (at least %d are "
                "needed to know what is normal): the stream does not judge it",
                f" of {camera}" if camera else "",
                len(v),
                name,
                _MIN_OBSERVATIONS,
            )
            tails[i] = np.nan
            continue
        if len(v) < _MIN_OBSERVATIONS:
            raise ObjectsError(
                f"the normal footage shows {len(v)} blob observations with a {name} (at least "
                f"{_MIN_OBSERVATIONS} are needed to know what is normal); give longer footage with people in "
                "it"
            )
        p50, p99 = np.percentile(v, [50, 99])
        tails[i] = (p50, max(p99 - p50, _MIN_SCALE[i]))
    return ObjectsModel(
        background,
        threshold,
        tails,
        grid,
        spacing_s=spacing_s,
        k=k,
        floor=floor,
        min_area=min_area,
        camera=camera,
        n_frames=sum(len(g) for g in greys),
        n_blobs=len(f),
        fitted=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
    )


class FitSettings(Protocol):
    """What a fit reads of the config's ``objects`` section (``core.config.ObjectsConfig``)."""

    spacing_s: float
    k: float
    floor: float
    min_area: float


def fit_configured(
    videos: Iterable[np.ndarray],
    grid: Sequence[int],
    settings: FitSettings,
    *,
    camera: str = "",
    flows: FlowCache | None = None,
) -> ObjectsModel:
    """:func:`fit_model` with the settings of a config's ``objects`` section (``zsad calibrate`` and
    ``zsad eval`` fit the same way)."""
    return fit_model(
        videos,
        grid,
        spacing_s=settings.spacing_s,
        k=settings.k,
        floor=settings.floor,
        min_area=settings.min_area,
        camera=camera,
        flows=flows,
    )


# --------------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------------


def model_path(calibration: str | Path) -> Path:
    """``calib/gate-1.json`` -> ``calib/gate-1.objects.npz``."""
    return beside(calibration, MODEL_SUFFIX)


def save_model(model: ObjectsModel, path: str | Path) -> int:
    """Write ``model`` to ``path`` atomically. Returns the file's size in bytes."""
    p = Path(path)
    meta = {
        "version": MODEL_VERSION,
        "camera": model.camera,
        "grid": list(model.grid),
        "spacing_s": model.spacing_s,
        "k": model.k,
        "floor": model.floor,
        "min_area": model.min_area,
        "features": list(FEATURES),
        "n_frames": model.n_frames,
        "n_blobs": model.n_blobs,
        "fitted": model.fitted,
        "arrays_sha256": arrays_sha256(model.background, model.threshold, model.tails),
    }
    header = np.array(json.dumps(meta, sort_keys=True))
    write_atomic(
        p,
        lambda f: np.savez(
            f, meta=header, background=model.background, threshold=model.threshold, tails=model.tails
        ),
    )
    return p.stat().st_size


def load_model(
    path: str | Path,
    *,
    frame_size: Sequence[int] | None = None,
    grid: Sequence[int] | None = None,
    spacing_s: float | None = None,
) -> ObjectsModel:
    """Read a model file; with ``frame_size`` ``(H, W)``, ``grid`` ``(h, w)`` and ``spacing_s``, refuse one
    fitted for another. Raises :class:`ObjectsModelError` naming the file and the problem."""
    p = Path(path)

    def bad(msg: str) -> ObjectsModelError:
        return ObjectsModelError(f"objects model {p}: {msg}")

    meta, arrays = read_model_file(
        p,
        name="objects model",
        arrays=("background", "threshold", "tails"),
        version=MODEL_VERSION,
        error=ObjectsModelError,
        fix=_RECALIBRATE,
    )
    bg, thr, tails = arrays["background"], arrays["threshold"], arrays["tails"]
    if meta.get("features") != list(FEATURES):
        raise bad(
            f"its features are {meta.get('features')}, this zsad scores {list(FEATURES)}; {_RECALIBRATE}"
        )
    if meta.get("arrays_sha256") != arrays_sha256(bg, thr, tails):
        raise bad(f"its arrays do not match their recorded sha256 (the file is corrupt); {_RECALIBRATE}")
    try:
        model = ObjectsModel(
            bg,
            thr,
            tails,
            [int(g) for g in meta["grid"]],
            spacing_s=float(meta["spacing_s"]),
            k=float(meta["k"]),
            floor=float(meta["floor"]),
            min_area=float(meta["min_area"]),
            camera=str(meta.get("camera", "")),
            n_frames=int(meta.get("n_frames", 0)),
            n_blobs=int(meta.get("n_blobs", 0)),
            fitted=str(meta.get("fitted", "")),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise bad(f"its header or arrays are invalid ({exc}); {_RECALIBRATE}") from exc
    problems = setup_mismatches(
        (model.frame_size, model.grid, model.spacing_s),
        frame_size=frame_size,
        grid=grid,
        spacing_s=spacing_s,
        section="objects",
    )
    if problems:
        raise bad(f"fitted for {'; '.join(problems)}; {_RECALIBRATE}")
    return model
