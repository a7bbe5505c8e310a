"""Plane geometry for the synthetic scenes: polylines people walk along, and raster masks.

Coordinates are image pixels, x to the right and y down, with pixel (row r, column c) centred at
(x=c, y=r). Layouts are written in normalised coordinates (x / width, y / height) and scaled here.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

import numpy as np

Point = tuple[float, float]


class Polyline:
    """A piecewise-linear path with arc-length lookup, in pixels."""

    def __init__(self, points: Sequence[Point]) -> None:
        if len(points) < 2:
            raise ValueError(f"a polyline needs at least 2 points, got {len(points)}")
        self.points: list[Point] = [(float(x), float(y)) for x, y in points]
        self.cumulative: list[float] = [0.0]
        for (x0, y0), (x1, y1) in itertools.pairwise(self.points):
            self.cumulative.append(self.cumulative[-1] + math.hypot(x1 - x0, y1 - y0))

    @property
    def length(self) -> float:
        return self.cumulative[-1]

    def at(self, s: float) -> tuple[float, float, float]:
        """Return ``(x, y, heading)`` at arc length ``s`` (clamped to the ends); heading in radians."""
        s = min(max(s, 0.0), self.length)
        i = min(bisect.bisect_right(self.cumulative, s) - 1, len(self.points) - 2)
        (x0, y0), (x1, y1) = self.points[i], self.points[i + 1]
        seg = self.cumulative[i + 1] - self.cumulative[i]
        f = 0.0 if seg <= 0.0 else (s - self.cumulative[i]) / seg
        return x0 + f * (x1 - x0), y0 + f * (y1 - y0), math.atan2(y1 - y0, x1 - x0)

    def reversed(self) -> Polyline:
        return Polyline(self.points[::-1])

    def offset(self, distance: float) -> Polyline:
        """The parallel path ``distance`` px to the left of travel (mitred joins keep it continuous)."""
        pts = np.asarray(self.points, dtype=np.float64)
        seg = np.diff(pts, axis=0)
        seg /= np.maximum(np.linalg.norm(seg, axis=1, keepdims=True), 1e-9)
        normals = np.stack([seg[:, 1], -seg[:, 0]], axis=1)
        out = []
        for k in range(len(pts)):
            if k == 0:
                n = normals[0]
            elif k == len(pts) - 1:
                n = normals[-1]
            else:
                bis = normals[k - 1] + normals[k]
                norm = float(np.linalg.norm(bis))
                # Mitre length 1/cos(half angle), capped so hairpins do not shoot off.
                n = normals[k] if norm < 1e-6 else bis / norm / max(float(bis @ normals[k]) / norm, 0.5)
            out.append((float(pts[k, 0] + distance * n[0]), float(pts[k, 1] + distance * n[1])))
        return Polyline(out)


def segment_distance(h: int, w: int, a: Point, b: Point) -> np.ndarray:
    """Distance in px from every pixel centre to segment ``a``-``b``: ``(H, W)`` float32."""
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    denom = dx * dx + dy * dy
    if denom <= 0.0:
        return np.sqrt((xs - ax) ** 2 + (ys - ay) ** 2)
    t = np.clip(((xs - ax) * dx + (ys - ay) * dy) / denom, 0.0, 1.0)
    return np.sqrt((xs - ax - t * dx) ** 2 + (ys - ay - t * dy) ** 2)


def rect_mask(h: int, w: int, rect: tuple[float, float, float, float]) -> np.ndarray:
    """Pixels inside the normalised rectangle ``(x0, y0, x1, y1)``: ``(H, W)`` bool."""
    x0, y0, x1, y1 = rect
    ys = (np.arange(h) + 0.5) / h
    xs = (np.arange(w) + 0.5) / w
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def disk_clear(mask: np.ndarray, x: float, y: float, radius: float) -> bool:
    """True when no pixel of ``mask`` ``(H, W)`` bool lies within ``radius`` px of ``(x, y)``."""
    h, w = mask.shape
    r = math.ceil(radius)
    x0, x1 = max(int(x) - r, 0), min(int(x) + r + 1, w)
    y0, y1 = max(int(y) - r, 0), min(int(y) + r + 1, h)
    if x0 >= x1 or y0 >= y1:
        return True
    yy, xx = np.ogrid[y0:y1, x0:x1]
    inside = (xx - x) ** 2 + (yy - y) ** 2 <= radius * radius
    return not bool(np.any(mask[y0:y1, x0:x1] & inside))


def sample_mask(mask: np.ndarray, x: float, y: float) -> bool:
    """``mask[y, x]`` at the nearest pixel; False outside the image."""
    h, w = mask.shape
    c, r = round(x), round(y)
    if not (0 <= r < h and 0 <= c < w):
        return False
    return bool(mask[r, c])
