"""The stationary stream: where something has stopped that the camera's normal footage does not leave there.

Motion streams miss an abandoned bag or a person lying still: both stop moving. This stream is the classic
dual-background test, without a trained detector. Per camera:

* a **long-term background** ``(H, W, 3)``: the per-pixel median of the camera's normal calibration footage
  (``zsad calibrate``), so a bag left after calibration stays foreground for as long as it lies there;
* a **short-term background** (:class:`StationaryState`): the per-pixel median of the last ``window``
  frames the stream was given. Passers-by leave a temporal median; what stays for about half the window
  enters it.

Their difference (:func:`difference_map`: the largest channel's absolute difference, after a per-channel
gain that matches the long-term background's median level to the short-term one's, so a global light change
is not foreground, the gained background capped at 255 where a brighter light saturates the camera) is the
stationary foreground. Each cell of the DPC grid ``(h, w)`` takes its
``min_pixels``-th largest difference (:func:`cell_values`): a small object counts, a single noisy pixel does
not. :class:`StationaryModel` z-scores a cell against that cell's normal distribution on held-out normal
footage (mean and standard deviation, each max-filtered over the 3 x 3 neighbouring cells, plus ``floor``
grey levels), so people who wait on a platform, where people often stand, score low and a bag on a walkway,
where nothing ever stays, scores high.

**Steady, not just stopped** (model version 2). The difference is taken less the window's inner range
(:meth:`StationaryState.inner_range`: per pixel, the gap between its third-lowest and third-highest value of
the 8 frames, the largest channel), at least 0. A bag does not change within the window and keeps its whole
difference; a person who stands in a group but sways, turns and gestures covers and uncovers the same
pixels, and loses most of it. Without it, UCSD Ped2's people standing and talking on the walkway were the
stream's normal tail (held-out 99th percentile z 9.7), and a pasted still long enough for the stream to see
cost that set 0.028 AUC (docs/results.md).

Measured on the seed-1 synthetic scenes (bench/results/issue14_2026-12-04/study_stationary.md): abandoned
objects and falls, the kinds that motion and the appearance memory miss, are found by this stream.

The file: ``zsad calibrate`` writes a camera's model beside its calibration file (:func:`model_path`:
``calib/gate-1.json`` -> ``calib/gate-1.stationary.npz``): version, camera, frame size, grid, window,
``min_pixels``, ``floor``, the frames fitted, the fit date, and the sha256 of the arrays.
:func:`load_model` refuses, with a :class:`StationaryModelError` naming the file, a file that is missing,
damaged, of another version, or whose frame size or grid differ from the running camera's.

Pure numpy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

import numpy as np

from core.datafile import write_atomic
from plugins.modelfile import arrays_sha256, beside, read_model_file, setup_mismatches, whole_cells
from plugins.registry import CameraTable

__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_MIN_PIXELS",
    "DEFAULT_WINDOW",
    "MODEL_SUFFIX",
    "MODEL_VERSION",
    "FrameSpacer",
    "StationaryError",
    "StationaryModel",
    "StationaryModelError",
    "StationaryModels",
    "StationaryState",
    "cell_values",
    "describe",
    "difference_map",
    "fit_model",
    "frame_step",
    "load_model",
    "model_path",
    "save_model",
]

#: 2: the steady difference (the window's inner range subtracted); a version-1 model's statistics are not
#: of that difference.
MODEL_VERSION = 2
#: Frames in the short-term median: the config's default (``stationary.window``), which the run and
#: ``zsad calibrate`` always pass; at 0.4 s apart, a 3.2 s window.
DEFAULT_WINDOW = 8
#: A cell's value is its ``min_pixels``-th largest difference: an object needs that many pixels to count.
DEFAULT_MIN_PIXELS = 4
#: Grey levels added to a cell's normal standard deviation: a cell where nothing ever stays is not
#: infinitely surprised by sensor noise.
DEFAULT_FLOOR = 10.0
#: ``<calibration file without .json>`` + this suffix is where a camera's model lives.
MODEL_SUFFIX = ".stationary.npz"
#: The long-term background is the median of at most this many calibration frames, evenly spaced.
_BACKGROUND_FRAMES = 200
_RECALIBRATE = "re-run zsad calibrate for this camera"


class StationaryError(ValueError):
    """Bad input to the stationary stream: a frame of the wrong shape or type, an invalid setting."""


class StationaryModelError(StationaryError):
    """A model file that cannot be used: missing, damaged, of another version, or fitted for another frame
    size or grid. The message names the file and what to do."""


def _check_frames(frames: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(frames)
    if x.dtype != np.uint8 or x.ndim < 3 or x.shape[-1] != 3 or min(x.shape) < 1:
        raise StationaryError(f"{what} must be uint8 (..., H, W, 3) RGB, got {x.dtype} {x.shape}")
    return x


def difference_map(short: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32: the largest channel's ``|short - min(g * background, 255)|``, ``g`` per channel the
    ratio of their medians (a global light change between the two is not foreground, and what it saturates
    is saturated in the background too). Both ``(H, W, 3)``."""
    s = np.asarray(short, dtype=np.float32)
    b = np.asarray(background, dtype=np.float32)
    if s.ndim != 3 or s.shape[-1] != 3 or s.shape != b.shape:
        raise StationaryError(f"short and background must both be (H, W, 3), got {s.shape} and {b.shape}")
    return _difference(s, np.median(s.reshape(-1, 3), axis=0), b, _gain_denominator(b))


def _gain_denominator(background: np.ndarray) -> np.ndarray:
    """The long-term background's per-channel median, at least 1 (float32 ``(3,)``): fixed per model."""
    return np.maximum(np.median(background.reshape(-1, 3), axis=0), np.float32(1.0))


def _difference(s: np.ndarray, s_median: np.ndarray, b: np.ndarray, b_denominator: np.ndarray) -> np.ndarray:
    """:func:`difference_map` of float32 ``s`` and ``b`` given their per-channel medians (``b``'s through
    :func:`_gain_denominator`). The same float32 operations in the same order, so the same values; the
    channel maximum is two elementwise maxima of channel views, since ``max(axis=-1)`` over a length-3 axis
    cost 30 times more (bench/results/stationary_cost_2026-12-04)."""
    gain = s_median.astype(np.float32) / b_denominator
    d = np.multiply(gain, b)
    # The camera saturates: under brighter light a white car reads 255, not 255 x the gain, and would
    # otherwise stand out for as long as the light stays (docs/results.md, "The lights turned up").
    np.minimum(d, np.float32(255.0), out=d)
    np.subtract(s, d, out=d)
    np.abs(d, out=d)
    return _largest_channel(d)


def _largest_channel(a: np.ndarray) -> np.ndarray:
    """``(H, W)``: the largest of ``a``'s three channels ``(H, W, 3)``, in ``a``'s dtype, as two elementwise
    maxima of channel views (``max(axis=-1)`` over a length-3 axis cost 30 times more)."""
    out = np.maximum(a[..., 0], a[..., 1])
    return np.maximum(out, a[..., 2], out=out)


def cell_values(diff: np.ndarray, grid: Sequence[int], min_pixels: int = DEFAULT_MIN_PIXELS) -> np.ndarray:
    """``(h, w)`` float32: each cell's ``min_pixels``-th largest value of the ``(H, W)`` difference map."""
    d = np.asarray(diff, dtype=np.float32)
    if d.ndim != 2:
        raise StationaryError(f"difference map must be (H, W), got {d.shape}")
    fy, fx = whole_cells(d.shape, grid, StationaryError)
    if not 1 <= min_pixels <= fy * fx:
        raise StationaryError(f"min_pixels must be in [1, {fy * fx}] (a cell's pixels), got {min_pixels}")
    gh, gw = d.shape[0] // fy, d.shape[1] // fx
    blocks = d.reshape(gh, fy, gw, fx).transpose(0, 2, 1, 3).reshape(gh, gw, fy * fx)
    k = fy * fx - min_pixels
    return np.partition(blocks, k, axis=-1)[..., k]


def _max3x3(a: np.ndarray) -> np.ndarray:
    """Max over each cell's 3 x 3 neighbourhood (edges repeat): a cell inherits its neighbours' normal
    spread, since a few minutes of footage leave many cells with too few samples."""
    p = np.pad(a, 1, mode="edge")
    h, w = a.shape
    return np.max([p[i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=0)


@cache
def _selection_network(n: int, ranks: tuple[int, ...]) -> tuple[tuple[int, int, bool, bool], ...]:
    """The compare-exchange steps that bring the order statistics ``ranks`` of ``n`` values to those
    positions: Batcher's odd-even merge sort on the next power of two (positions from ``n`` on hold +inf, so
    their comparators never move anything and are dropped), then only the steps those outputs depend on.
    Each step ``(i, j, low, high)``: position ``i`` takes the minimum (if ``low``) and ``j`` the maximum (if
    ``high``) of the two. For 8 frames and the median's two middle ranks: 17 steps, where ``np.median`` of
    the stacked frames partitions every pixel's values and costs about 30 times more."""
    size = 1
    while size < n:
        size *= 2
    steps = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(k):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        steps.append((a, b))
            k //= 2
        p *= 2
    needed = set(ranks)
    kept: list[tuple[int, int, bool, bool]] = []
    for a, b in reversed(steps):
        low, high = a in needed, b in needed
        if low or high:
            kept.append((a, b, low, high))
            needed |= {a, b}
    return tuple(reversed(kept))


def _inner_ranks(n: int) -> tuple[int, int]:
    """The ranks whose gap is a window's inner range: the ``n // 4``-th smallest and largest of ``n`` values
    (for 8 frames, ranks 2 and 5: the two lowest and two highest values left out, so a passer-by who covers a
    pixel for a frame or two does not widen it)."""
    return n // 4, n - 1 - n // 4


def _channel_medians(doubled: np.ndarray, channels: int = 3) -> np.ndarray:
    """The per-channel median (float32 ``(channels,)``) of an image given as twice its values, a flat
    channel-last uint16 array: counted, not sorted, since the values are whole numbers below 511. Equal to
    ``np.median`` of the image's float32 values: those are multiples of 1/2 and the mean of the middle two
    a multiple of 1/4, all exact in float32."""
    per_channel = doubled.size // channels
    lo, hi = (per_channel - 1) // 2, per_channel // 2
    out = np.empty(channels, np.float32)
    for c in range(channels):
        cum = np.cumsum(np.bincount(doubled[c::channels], minlength=511))
        a, b = np.searchsorted(cum, [lo, hi], side="right")
        out[c] = (int(a) + int(b)) / 4.0
    return out


class StationaryState:
    """One camera's short-term background: the per-pixel median of the last ``window`` frames given.

    The frames live in a preallocated ring of ``window`` uint8 rows (a push copies one frame into it); the
    median and the inner range (:meth:`inner_range`) are computed from them by one selection network of
    elementwise minima and maxima (:func:`_selection_network`), once per push: they are kept until the next
    push or :meth:`reset`. Reading them fills that cache, so a state belongs to one thread (the run's
    scoring thread, or calibration's)."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 2:
            raise StationaryError(f"window must be >= 2 frames, got {window}")
        self.window = int(window)
        self._ring: np.ndarray | None = None  # (window, H * W * 3) uint8, slots [0, count) hold frames
        self._shape: tuple[int, ...] | None = None
        self._count = 0
        self._next = 0
        self._doubled: np.ndarray | None = None  # 2 x the median, flat uint16, until the next push
        self._short: np.ndarray | None = None
        self._medians: np.ndarray | None = None  # the short background's per-channel medians, likewise
        self._range: np.ndarray | None = None  # (H, W) float32 inner range, likewise

    @property
    def ready(self) -> bool:
        """Whether the window is full: before that, whoever stood still at the start looks stationary."""
        return self._count == self.window

    @property
    def frame_shape(self) -> tuple[int, ...] | None:
        """``(H, W, 3)`` of the frames in the window (None before the first push)."""
        return self._shape if self._count else None

    def push(self, frame: np.ndarray) -> None:
        """Add an ``(H, W, 3)`` uint8 RGB frame (the same size as the earlier ones)."""
        f = _check_frames(frame, "frame")
        if f.ndim != 3:
            raise StationaryError(f"frame must be one (H, W, 3) image, got {f.shape}")
        if self._count and self._shape != f.shape:
            raise StationaryError(f"frame is {f.shape}, earlier frames were {self._shape}")
        if self._ring is None or self._shape != f.shape:
            self._ring = np.empty((self.window, f.size), np.uint8)
            self._shape = f.shape
        self._ring[self._next] = f.reshape(-1)
        self._next = (self._next + 1) % self.window
        self._count = min(self._count + 1, self.window)
        self._doubled = self._short = self._medians = self._range = None

    def _doubled_median(self) -> np.ndarray:
        """Twice the per-pixel median of the frames in the window, flat uint16 (whole numbers: the median
        of an even number of values is the mean of the middle two). Computes the inner range too."""
        if self._doubled is None:
            if self._ring is None or not self._count:
                raise StationaryError("no frame pushed yet")
            n = self._count
            lo, hi = _inner_ranks(n)
            rows = list(self._ring[:n].copy())  # the network works in place; the ring keeps the frames
            spare = np.empty_like(rows[0])
            for i, j, low, high in _selection_network(n, (lo, (n - 1) // 2, n // 2, hi)):
                if low and high:
                    np.minimum(rows[i], rows[j], out=spare)
                    np.maximum(rows[i], rows[j], out=rows[j])
                    rows[i], spare = spare, rows[i]
                elif low:
                    np.minimum(rows[i], rows[j], out=rows[i])
                else:
                    np.maximum(rows[i], rows[j], out=rows[j])
            self._doubled = np.add(rows[(n - 1) // 2], rows[n // 2], dtype=np.uint16)
            spread = np.subtract(rows[hi], rows[lo]).reshape(self._shape or ())  # hi >= lo: no wrap
            self._range = _largest_channel(spread).astype(np.float32)
            self._range.flags.writeable = False
        return self._doubled

    def inner_range(self) -> np.ndarray:
        """``(H, W)`` float32: per pixel, the largest channel's gap between the window's
        :func:`_inner_ranks` values: how much the pixel changes within the window, leaving out what covered it
        for a frame or two (read-only: kept until the next push)."""
        self._doubled_median()
        assert self._range is not None  # set with the median
        return self._range

    def short_background(self) -> np.ndarray:
        """``(H, W, 3)`` float32 per-pixel median of the window's frames (read-only: it is kept until the
        next push)."""
        if self._short is None:
            doubled = self._doubled_median()
            short = np.multiply(doubled, np.float32(0.5), dtype=np.float32).reshape(self._shape or ())
            short.flags.writeable = False
            self._short = short
        return self._short

    def channel_medians(self) -> np.ndarray:
        """float32 ``(3,)`` per-channel median of :meth:`short_background`, equal to ``np.median`` of it
        (counted from the whole-number doubled median; kept until the next push)."""
        if self._medians is None:
            self._medians = _channel_medians(self._doubled_median())
        return self._medians

    def reset(self) -> None:
        self._count = self._next = 0
        self._doubled = self._short = self._medians = self._range = None


class FrameSpacer:
    """Which of a camera's frames the short-term window takes: the first frame at least ``spacing_s`` after
    the last one taken, less a tolerance of 0.45 of the gap between the frames that arrive (at most a
    quarter of the spacing) for timestamp jitter. So frames that arrive exactly ``spacing_s`` apart are all
    taken, and a spacing that falls between arriving frames rounds up to the next one."""

    def __init__(self, spacing_s: float) -> None:
        if not (math.isfinite(spacing_s) and spacing_s > 0):
            raise StationaryError(f"spacing_s must be > 0, got {spacing_s}")
        self.spacing_s = float(spacing_s)
        self._last: float | None = None

    def take(self, pts: float, gap: float = 0.0) -> bool:
        """Whether the frame at ``pts`` seconds is taken (it then becomes the last one taken). ``gap``: the
        seconds between the frames that arrive (0: unknown, no tolerance but rounding)."""
        tolerance = min(0.45 * max(gap, 0.0), 0.25 * self.spacing_s) + 1e-6
        if self._last is not None and pts < self._last + self.spacing_s - tolerance:
            return False
        self._last = float(pts)
        return True

    def select(self, pts: Sequence[float] | np.ndarray) -> list[int]:
        """The positions in one clip's frame times ``pts`` (seconds, ascending) that are taken, the gap
        between the frames that arrive read from the clip itself (the run and ``zsad calibrate`` both feed
        their windows with this)."""
        t = np.asarray(pts, dtype=np.float64).ravel()
        gap = float(np.median(np.diff(t))) if t.size > 1 else 0.0
        return [i for i, x in enumerate(t) if self.take(float(x), gap)]

    def reset(self) -> None:
        self._last = None


def frame_step(spacing_s: float, fps: float, clip_len: int, frame_stride: int, clip_hop: int) -> int:
    """The frames between those a run's window takes (:class:`FrameSpacer`) from a camera at ``fps`` whose
    clips hold ``clip_len`` frames ``frame_stride`` apart and start every ``clip_hop`` frames: the offline
    evaluation feeds its videos at this step, so it measures the spacing the run gets."""
    if not (fps > 0 and clip_len >= 1 and frame_stride >= 1 and clip_hop >= 1):
        raise StationaryError(
            f"fps, clip_len, frame_stride and clip_hop must be positive, got {fps}, {clip_len}, "
            f"{frame_stride}, {clip_hop}"
        )
    spacer = FrameSpacer(spacing_s)
    horizon = math.ceil(spacing_s * fps) * 8 + clip_hop * 8 + clip_len * frame_stride
    frames = sorted({s + j * frame_stride for s in range(0, horizon, clip_hop) for j in range(clip_len)})
    gap = math.gcd(frame_stride, clip_hop) / fps if clip_len > 1 else clip_hop / fps
    taken = [f for f in frames if f < horizon and spacer.take(f / fps, gap)]
    steps = np.diff(taken)
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)]) if len(values) else 1


class StationaryModel:
    """One camera's long-term background and per-cell normal statistics of the stationary foreground.

    Args:
        background: ``(H, W, 3)`` uint8 long-term background.
        mean, std: ``(h, w)`` per-cell normal mean and standard deviation of :func:`cell_values`.
        window, min_pixels, floor: the settings it was fitted with (scoring must use the same).
    """

    def __init__(
        self,
        background: np.ndarray,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        window: int = DEFAULT_WINDOW,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        floor: float = DEFAULT_FLOOR,
        camera: str = "",
        n_frames: int = 0,
        fitted: str = "",
        spacing_s: float = 0.0,
    ) -> None:
        bg = _check_frames(background, "background")
        if bg.ndim != 3:
            raise StationaryError(f"background must be one (H, W, 3) image, got {bg.shape}")
        m = np.ascontiguousarray(mean, dtype=np.float32)
        s = np.ascontiguousarray(std, dtype=np.float32)
        if m.ndim != 2 or s.shape != m.shape:
            raise StationaryError(f"mean and std must be the same (h, w), got {m.shape} and {s.shape}")
        whole_cells(bg.shape, m.shape, StationaryError)
        if not (np.isfinite(m).all() and np.isfinite(s).all() and (s >= 0).all()):
            raise StationaryError("mean and std must be finite, std >= 0")
        if not (math.isfinite(floor) and floor > 0):
            raise StationaryError(f"floor must be > 0, got {floor}")
        if window < 2:
            raise StationaryError(f"window must be >= 2 frames, got {window}")
        if not (math.isfinite(spacing_s) and spacing_s >= 0):
            raise StationaryError(f"spacing_s must be >= 0 (0: not recorded), got {spacing_s}")
        # A private read-only copy: scoring uses values derived from it once (below), so a caller changing the
        # array afterwards must not leave the model scoring against a background it no longer shows.
        self.background = np.array(bg, copy=True, order="C")
        self.background.flags.writeable = False
        # What scoring needs of the background, computed once.
        self._background_f32 = self.background.astype(np.float32)
        self._gain_denominator = _gain_denominator(self._background_f32)
        self.mean = m
        self.std = s
        self.window = int(window)
        self.min_pixels = int(min_pixels)
        self.floor = float(floor)
        self.camera = str(camera)
        self.n_frames = int(n_frames)
        self.fitted = str(fitted)
        #: Seconds between the frames the window was fitted on (0: not recorded).
        self.spacing_s = float(spacing_s)

    @property
    def grid(self) -> tuple[int, int]:
        return (int(self.mean.shape[0]), int(self.mean.shape[1]))

    @property
    def frame_size(self) -> tuple[int, int]:
        return (int(self.background.shape[0]), int(self.background.shape[1]))

    def __repr__(self) -> str:
        (h, w), (fh, fw) = self.grid, self.frame_size
        return (
            f"StationaryModel(camera={self.camera!r}, frame={fh}x{fw}, grid={h}x{w}, window={self.window}, "
            f"n_frames={self.n_frames})"
        )

    def new_state(self) -> StationaryState:
        return StationaryState(self.window)

    def score_map(self, state: StationaryState) -> np.ndarray:
        """``(h, w)`` float32 z-map of the stationary foreground in ``state`` (zeros until it is ready)."""
        if not state.ready:
            return np.zeros(self.grid, np.float32)
        if state.frame_shape != self.background.shape:
            raise StationaryError(
                f"frames are {state.frame_shape}, this model's background is {self.background.shape}"
            )
        diff = _state_difference(state, self._background_f32, self._gain_denominator)
        values = cell_values(diff, self.grid, self.min_pixels)
        return ((values - self.mean) / (self.std + self.floor)).astype(np.float32)


class StationaryModels(CameraTable[StationaryModel]):
    """Every camera's model, replaced whole while the scorer runs (:class:`plugins.registry.CameraTable`)."""


def describe(model: StationaryModel) -> str:
    """One line for the logs: what a loaded model was fitted on."""
    (fh, fw), (h, w) = model.frame_size, model.grid
    return (
        f"{model.n_frames} frames {model.spacing_s:g} s apart, window {model.window}, {fw}x{fh} frames on a "
        f"{w}x{h} grid, fitted {model.fitted or 'at an unknown time'}"
    )


def _background(frames: np.ndarray) -> np.ndarray:
    step = max(1, len(frames) // _BACKGROUND_FRAMES)
    return np.median(frames[::step], axis=0).round().astype(np.uint8)


def _state_difference(state: StationaryState, background: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """The steady difference of ``state`` from the float32 ``background`` (whose :func:`_gain_denominator`
    is ``denominator``): :func:`difference_map` of its short-term background less the window's
    :meth:`StationaryState.inner_range`, at least 0. What stays still keeps its difference; a person who
    stands but sways, turns or gestures changes within the window and loses most of it."""
    d = _difference(state.short_background(), state.channel_medians(), background, denominator)
    np.subtract(d, state.inner_range(), out=d)
    return np.maximum(d, np.float32(0.0), out=d)


def _values(frames: np.ndarray, background: np.ndarray, grid: Sequence[int], window: int, k: int) -> list:
    b = background.astype(np.float32)
    denominator = _gain_denominator(b)
    state = StationaryState(window)
    out = []
    for f in frames:
        state.push(f)
        if state.ready:
            out.append(cell_values(_state_difference(state, b, denominator), grid, k))
    return out


def fit_model(
    frames: np.ndarray,
    grid: Sequence[int],
    *,
    window: int = DEFAULT_WINDOW,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    floor: float = DEFAULT_FLOOR,
    camera: str = "",
    spacing_s: float = 0.0,
) -> StationaryModel:
    """Fit a camera's model on ``(N, H, W, 3)`` uint8 normal frames, in time order, spaced as the stream
    will see them. The background is their median; the normal statistics are held out: each time half's
    cell values are measured against the other half's background (a background made from the frames it
    scores would hide what stood still in them). ``spacing_s``: the seconds between them, recorded (0:
    not recorded)."""
    x = _check_frames(frames, "frames")
    if x.ndim != 4:
        raise StationaryError(f"frames must be (N, H, W, 3), got {x.shape}")
    whole_cells(x.shape[1:3], grid, StationaryError)
    if len(x) < 2 * window + 2:
        raise StationaryError(f"fitting needs at least {2 * window + 2} frames (two windows), got {len(x)}")
    mid = len(x) // 2
    halves = (x[:mid], x[mid:])
    values = []
    for i in (0, 1):
        values += _values(halves[i], _background(halves[1 - i]), grid, window, min_pixels)
    v = np.stack(values)
    return StationaryModel(
        _background(x),
        _max3x3(v.mean(axis=0)),
        _max3x3(v.std(axis=0)),
        window=window,
        min_pixels=min_pixels,
        floor=floor,
        camera=camera,
        n_frames=len(x),
        fitted=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        spacing_s=spacing_s,
    )


# --------------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------------


def model_path(calibration: str | Path) -> Path:
    """``calib/gate-1.json`` -> ``calib/gate-1.stationary.npz``."""
    return beside(calibration, MODEL_SUFFIX)


def save_model(model: StationaryModel, path: str | Path) -> int:
    """Write ``model`` to ``path`` atomically. Returns the file's size in bytes."""
    p = Path(path)
    meta = {
        "version": MODEL_VERSION,
        "camera": model.camera,
        "window": model.window,
        "min_pixels": model.min_pixels,
        "floor": model.floor,
        "n_frames": model.n_frames,
        "fitted": model.fitted,
        "spacing_s": model.spacing_s,
        "arrays_sha256": arrays_sha256(model.background, model.mean, model.std),
    }
    header = np.array(json.dumps(meta, sort_keys=True))
    write_atomic(
        p, lambda f: np.savez(f, meta=header, background=model.background, mean=model.mean, std=model.std)
    )
    return p.stat().st_size


def load_model(
    path: str | Path,
    *,
    frame_size: Sequence[int] | None = None,
    grid: Sequence[int] | None = None,
    spacing_s: float | None = None,
) -> StationaryModel:
    """Read a model file; with ``frame_size`` ``(H, W)``, ``grid`` ``(h, w)`` and ``spacing_s``, refuse one
    fitted for another (a file that recorded no spacing is not checked for it). Raises
    :class:`StationaryModelError` naming the file and the problem."""
    p = Path(path)

    def bad(msg: str) -> StationaryModelError:
        return StationaryModelError(f"stationary model {p}: {msg}")

    meta, arrays = read_model_file(
        p,
        name="stationary model",
        arrays=("background", "mean", "std"),
        version=MODEL_VERSION,
        error=StationaryModelError,
        fix=_RECALIBRATE,
    )
    bg, mean, std = arrays["background"], arrays["mean"], arrays["std"]
    if meta.get("arrays_sha256") != arrays_sha256(bg, mean, std):
        raise bad(f"its arrays do not match their recorded sha256 (the file is corrupt); {_RECALIBRATE}")
    try:
        model = StationaryModel(
            bg,
            mean,
            std,
            window=int(meta["window"]),
            min_pixels=int(meta["min_pixels"]),
            floor=float(meta["floor"]),
            camera=str(meta.get("camera", "")),
            n_frames=int(meta.get("n_frames", 0)),
            fitted=str(meta.get("fitted", "")),
            spacing_s=float(meta.get("spacing_s", 0.0)),
        )
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise bad(f"its header or arrays are invalid ({exc}); {_RECALIBRATE}") from exc
    problems = setup_mismatches(
        (model.frame_size, model.grid, model.spacing_s),
        frame_size=frame_size,
        grid=grid,
        spacing_s=spacing_s,
        section="stationary",
    )
    if problems:
        raise bad(f"fitted for {'; '.join(problems)}; {_RECALIBRATE}")
    return model
