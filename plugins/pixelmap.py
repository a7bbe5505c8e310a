"""An evidence map on the pixel grid, and the colour scale heatmaps show it in. Pure numpy.

Shared by the alert heatmaps (``pipeline.outputs.heatmap``) and the offline localisation metrics
(``training.localisation``), so that what an operator sees over a snapshot and what the metrics score are
the same numbers.

Upsampling (:func:`upsample`). An ``(h, w)`` map of :func:`plugins.zones.evidence_map` cells is sampled
bilinearly at every pixel centre of a ``height`` x ``width`` frame, on the geometry of
:mod:`plugins.zones`: cell ``(i, j)`` covers ``x`` in ``[j/w, (j+1)/w)`` of the frame, so its value sits at
the cell's centre and pixels beyond the outer centres take the edge value. NaN cells (masked, or where no
stream counts) carry no value: each pixel's value is the weighted mean of the counted cells around it
(normalised convolution), and a pixel whose centre lies in a NaN cell is NaN. A masked area therefore
stays NaN exactly over its cells, and nothing leaks into it from its neighbours nor out of it.

Levels (:func:`overlay_levels`). A heatmap shows the evidence above the map's :func:`plugins.zones.half_level`
(halfway from the median cell to the peak cell), the same level whose connected region around the peak
is the alert's peak box: 0 at the half level, 1 at the peak, NaN below the half level and where nothing
counts. Opacity grows with the level (:data:`ALPHA_RANGE`), and the colour comes from
:func:`colourise`.

The colour scale (:data:`COLOUR_STOPS`) is our own: five hand-picked sRGB stops from dark violet through
crimson and orange to pale yellow, linearly interpolated. Its luminance rises monotonically, so a printout
in grey or a colour-blind reader still orders the levels correctly.
"""

from __future__ import annotations

import math

import numpy as np

from plugins.zones import half_level

__all__ = [
    "ALPHA_RANGE",
    "COLOUR_STOPS",
    "PixelMapError",
    "blend",
    "colourise",
    "interpolation_matrix",
    "overlay_levels",
    "relative_luminance",
    "upsample",
]

#: ``(position, (r, g, b))`` sRGB stops of the colour scale, positions 0..1 increasing.
COLOUR_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.00, (52, 16, 108)),
    (0.25, (132, 28, 140)),
    (0.50, (212, 56, 84)),
    (0.75, (246, 138, 40)),
    (1.00, (252, 236, 124)),
)
#: Opacity of the overlay at the half level and at the peak (linear in between; 0 below the half level).
ALPHA_RANGE: tuple[float, float] = (0.35, 0.75)


class PixelMapError(ValueError):
    """A map or frame that cannot be upsampled or blended (wrong rank, empty, mismatched sizes)."""


def _taps(cells: int, pixels: int, at: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two cells pixel ``at`` (indices along an axis of ``pixels``) mixes, and the right one's
    weight: its centre ``(x + 0.5) / pixels`` between cell centres ``(k + 0.5) / cells``; edges clamp."""
    pos = np.clip((at.astype(np.float64) + 0.5) * cells / pixels - 0.5, 0.0, cells - 1)
    left = np.floor(pos).astype(np.int64)
    return left, np.minimum(left + 1, cells - 1), pos - left


def interpolation_matrix(cells: int, pixels: int) -> np.ndarray:
    """``(pixels, cells)`` bilinear weights along one axis (what :func:`upsample` applies, as a matrix):
    row ``x`` samples the cells at pixel centre ``(x + 0.5) / pixels`` of the axis, with cell centres at
    ``(k + 0.5) / cells``; edges clamp. Each row sums to 1."""
    if cells < 1 or pixels < 1:
        raise PixelMapError(f"cells and pixels must be >= 1, got {cells} and {pixels}")
    left, right, frac = _taps(cells, pixels, np.arange(pixels))
    out = np.zeros((pixels, cells), dtype=np.float64)
    rows = np.arange(pixels)
    out[rows, left] += 1.0 - frac
    out[rows, right] += frac
    return out


def _bilinear(
    values: np.ndarray, taps_y: tuple[np.ndarray, ...], taps_x: tuple[np.ndarray, ...]
) -> np.ndarray:
    """Two taps per axis, gathered: no matrix product, so no BLAS thread pool on the media thread."""
    top, bottom, fy = taps_y
    left, right, fx = taps_x
    rows = values[..., top, :] * (1.0 - fy)[:, None] + values[..., bottom, :] * fy[:, None]
    return rows[..., left] * (1.0 - fx) + rows[..., right] * fx


def upsample(
    evidence: np.ndarray,
    height: int,
    width: int,
    *,
    rows: np.ndarray | None = None,
    cols: np.ndarray | None = None,
) -> np.ndarray:
    """Bilinear samples of an ``(h, w)`` map, or a stack ``(N, h, w)``, at the pixels of a ``height`` x
    ``width`` frame: ``(height, width)`` (or ``(N, height, width)``) float64, NaN at pixels whose centre
    lies in a NaN cell (see the module). ``rows`` / ``cols``: only these pixel rows and columns (integer
    indices), e.g. a regular subsample for metrics on large frames."""
    e = np.asarray(evidence, dtype=np.float64)
    if e.ndim not in (2, 3) or e.shape[-1] < 1 or e.shape[-2] < 1:
        raise PixelMapError(f"evidence must be (h, w) or (N, h, w) with h, w >= 1, got {e.shape}")
    if height < 1 or width < 1:
        raise PixelMapError(f"frame size must be at least 1 x 1, got {width} x {height}")
    h, w = e.shape[-2:]
    ys = np.arange(height) if rows is None else np.asarray(rows, dtype=np.int64)
    xs = np.arange(width) if cols is None else np.asarray(cols, dtype=np.int64)
    taps_y, taps_x = _taps(h, height, ys), _taps(w, width, xs)
    finite = np.isfinite(e)
    values = _bilinear(np.where(finite, e, 0.0), taps_y, taps_x)
    if finite.all():
        return values  # the weights of every pixel sum to 1: plain bilinear
    support = _bilinear(finite.astype(np.float64), taps_y, taps_x)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = values / support
    # The cell each pixel centre lies in (plugins.zones' geometry): NaN there means NaN here.
    cell_y = np.minimum(((ys + 0.5) * h / height).astype(np.int64), h - 1)
    cell_x = np.minimum(((xs + 0.5) * w / width).astype(np.int64), w - 1)
    out[~finite[..., cell_y[:, None], cell_x[None, :]]] = np.nan
    return out


def overlay_levels(evidence: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The heatmap levels of upsampled evidence ``pixels`` (:func:`upsample` of ``evidence``): 0 at the
    map's half level, 1 at its peak, NaN below the half level and where nothing counts. Returns
    ``(levels, low, high)``; ``low`` and ``high`` are the half level and the peak (NaN for a map with no
    counted cell). A flat map (peak equal to its half level) has no level anywhere."""
    e = np.asarray(evidence, dtype=np.float64)
    finite = e[np.isfinite(e)]
    levels = np.full(np.shape(pixels), np.nan)
    if finite.size == 0:
        return levels, math.nan, math.nan
    high = float(finite.max())
    low = half_level(e)
    if not high > low:
        return levels, low, high
    with np.errstate(invalid="ignore"):
        scaled = (np.asarray(pixels, dtype=np.float64) - low) / (high - low)
        keep = scaled >= 0.0  # False for NaN pixels
    levels[keep] = np.minimum(scaled[keep], 1.0)
    return levels, low, high


def colourise(levels: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 sRGB colours of ``levels`` in 0..1 on :data:`COLOUR_STOPS` (clipped; NaN -> the
    lowest colour)."""
    lv = np.clip(np.nan_to_num(np.asarray(levels, dtype=np.float64), nan=0.0), 0.0, 1.0)
    xs = np.array([p for p, _ in COLOUR_STOPS])
    rgb = np.array([c for _, c in COLOUR_STOPS], dtype=np.float64)
    out = np.stack([np.interp(lv, xs, rgb[:, k]) for k in range(3)], axis=-1)
    return np.rint(out).astype(np.uint8)


def relative_luminance(rgb: np.ndarray) -> np.ndarray:
    """WCAG relative luminance (0..1) of ``(..., 3)`` sRGB uint8 colours."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return np.asarray(linear @ np.array([0.2126, 0.7152, 0.0722]))


def blend(frame: np.ndarray, evidence: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``frame`` ``(H, W, 3)`` uint8 RGB with ``evidence`` ``(h, w)`` over it as a heatmap: coloured by
    :func:`colourise` and blended with opacity from :data:`ALPHA_RANGE` where the evidence is at or above
    its half level, untouched elsewhere (below the half level, and NaN cells). Returns ``(image, low,
    high)``: a new ``(H, W, 3)`` uint8 array and the half level and peak of the colour scale."""
    img = np.asarray(frame)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise PixelMapError(f"frame must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    e = np.asarray(evidence, dtype=np.float64)
    if e.ndim != 2 or min(e.shape) < 1:
        raise PixelMapError(f"evidence must be (h, w), got {e.shape}")
    out = img.copy()
    finite = np.isfinite(e)
    if not finite.any():
        return out, math.nan, math.nan
    high, low = float(e[finite].max()), half_level(e)
    if not high > low:
        return out, low, high
    # A bilinear sample mixes a cell with its neighbours only, so pixels at or above the half level lie
    # within one cell of a cell at or above it: only that window is upsampled (the peak is usually small,
    # and a 1280 x 720 frame would otherwise cost a full-frame pass for nothing).
    (h, w), (height, width) = e.shape, img.shape[:2]
    hot = np.argwhere(finite & (e >= low))
    r0, c0 = np.maximum(hot.min(axis=0) - 1, 0)
    r1, c1 = np.minimum(hot.max(axis=0) + 2, (h, w))
    y0, y1 = int(r0 * height // h), int(-(-r1 * height // h))
    x0, x1 = int(c0 * width // w), int(-(-c1 * width // w))
    window = upsample(e, height, width, rows=np.arange(y0, y1), cols=np.arange(x0, x1))
    levels, _, _ = overlay_levels(e, window)
    shown = np.isfinite(levels)
    if not shown.any():
        return out, low, high
    a_low, a_high = ALPHA_RANGE
    lv = levels[shown]
    alpha = (a_low + (a_high - a_low) * lv)[:, None]
    region = out[y0:y1, x0:x1]  # a view: written in place
    mixed = (1.0 - alpha) * region[shown].astype(np.float64) + alpha * colourise(lv).astype(np.float64)
    region[shown] = np.rint(mixed).astype(np.uint8)
    return out, low, high
