"""Static backgrounds of the synthetic cameras: ground textures, markings and fixed obstacles.

A backdrop depends only on the context and the resolution (the camera is fixed), never on the dataset
seed, so training and test clips of a context share one view, as with a real camera.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from synth.geometry import rect_mask
from synth.scene import Layout, SynthError, build_layout, perspective

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Backdrop:
    """``image``: ``(H, W, 3)`` float32 RGB on 0..255, before lighting. ``obstacles``: ``(H, W)`` bool,
    ground covered by fixed things (trees, parked cars, pillars) nobody stands on."""

    image: np.ndarray
    obstacles: np.ndarray


@dataclass(frozen=True)
class Stage:
    """Everything fixed about one camera at one resolution."""

    layout: Layout
    backdrop: Backdrop


def value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [0, 1] with features about ``cell`` px: ``(H, W)`` float32."""
    cell = max(cell, 1.0)
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    grid = rng.random((gh, gw), dtype=np.float32)
    ys = np.arange(h, dtype=np.float32) / cell
    xs = np.arange(w, dtype=np.float32) / cell
    y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
    fy, fx = ys - y0, xs - x0
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def _fill(image: np.ndarray, alpha: np.ndarray, color: RGB | np.ndarray) -> None:
    """Blend ``color`` (RGB or an ``(H, W, 3)`` texture) into ``image`` with ``alpha`` ``(H, W)``."""
    a = alpha[..., None].astype(np.float32)
    image *= 1.0 - a
    image += a * np.asarray(color, dtype=np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, base: RGB, cell: float, amount: float) -> np.ndarray:
    """A flat colour mottled by two octaves of noise and fine grain: ``(H, W, 3)`` float32."""
    mottle = 0.65 * value_noise(rng, h, w, cell) + 0.35 * value_noise(rng, h, w, cell / 4)
    grain = rng.normal(0.0, 1.0, (h, w)).astype(np.float32)
    factor = 1.0 + amount * (mottle - 0.5) * 2.0 + 0.03 * grain
    return np.asarray(base, dtype=np.float32)[None, None, :] * factor[..., None]


def _disk(h: int, w: int, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    yy, xx = np.ogrid[0:h, 0:w]
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def _vignette(h: int, w: int, strength: float) -> np.ndarray:
    yy, xx = np.ogrid[0:h, 0:w]
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) / 0.5
    return (1.0 - strength * r2).astype(np.float32)[..., None]


def _paint_campus(rng: np.random.Generator, layout: Layout) -> Backdrop:
    h, w, u = layout.height, layout.width, layout.unit
    image = _texture(rng, h, w, (74, 121, 54), 26 * u, 0.16)
    depth = layout.path_depth
    paving = _texture(rng, h, w, (176, 170, 156), 10 * u, 0.06)
    _fill(image, np.clip(depth + 0.5, 0.0, 1.0), paving)
    # A darker kerb line where the paving meets the lawn.
    _fill(image, np.clip(1.0 - np.abs(depth) / (1.3 * u), 0.0, 1.0) * 0.45, (96, 92, 84))
    obstacles = np.zeros((h, w), dtype=bool)
    for nx, ny, nr in ((0.10, 0.22, 0.075), (0.46, 0.17, 0.07), (0.60, 0.87, 0.08), (0.93, 0.36, 0.065)):
        cx, cy = nx * w, ny * h
        r = nr * h * perspective(cy, h)
        _fill(image, _disk(h, w, cx + 0.35 * r, cy + 0.45 * r, r * 1.05, r * 0.6) * 0.45, (20, 40, 18))
        canopy = _texture(rng, h, w, (38, 78, 34), 5 * u, 0.35)
        _fill(image, _disk(h, w, cx, cy, r, r * 0.85).astype(np.float32), canopy)
        obstacles |= _disk(h, w, cx, cy + 0.3 * r, r * 0.8, r * 0.6)
    bench = rect_mask(h, w, (0.49, 0.515, 0.58, 0.545))
    _fill(image, bench.astype(np.float32), (118, 82, 52))
    _fill(image, rect_mask(h, w, (0.49, 0.538, 0.58, 0.548)).astype(np.float32), (70, 50, 34))
    obstacles |= bench
    image *= _vignette(h, w, 0.12)
    return Backdrop(image=image, obstacles=obstacles)


_CAR_COLOURS: tuple[RGB, ...] = (
    (200, 200, 204),
    (40, 42, 48),
    (150, 30, 32),
    (40, 70, 130),
    (120, 124, 128),
    (210, 205, 190),
    (60, 90, 60),
)


def _paint_parking(rng: np.random.Generator, layout: Layout) -> Backdrop:
    h, w, u = layout.height, layout.width, layout.unit
    image = _texture(rng, h, w, (82, 83, 88), 30 * u, 0.10)
    # Building wall at the top and a grass verge at the bottom.
    _fill(image, rect_mask(h, w, (0.0, 0.0, 1.0, 0.06)).astype(np.float32), (128, 92, 76))
    _fill(image, rect_mask(h, w, (0.0, 0.965, 1.0, 1.0)).astype(np.float32), (70, 104, 56))
    obstacles = np.zeros((h, w), dtype=bool)
    line = (222, 222, 214)
    lane_x0, lane_x1 = 0.44, 0.56
    for row_y0, row_y1 in ((0.08, 0.32), (0.50, 0.74)):
        _fill(image, rect_mask(h, w, (0.0, row_y1 - 0.006, 1.0, row_y1)).astype(np.float32) * 0.8, line)
        bay = 0.092
        x = 0.012
        while x + bay <= 1.0:
            if x + bay <= lane_x0 or x >= lane_x1:
                for edge in (x, x + bay):
                    _fill(image, rect_mask(h, w, (edge - 0.003, row_y0, edge + 0.003, row_y1)) * 0.8, line)
                if rng.random() < 0.6:
                    car = (x + 0.013, row_y0 + 0.02, x + bay - 0.013, row_y1 - 0.02)
                    colour = _CAR_COLOURS[int(rng.integers(len(_CAR_COLOURS)))]
                    body = rect_mask(h, w, car)
                    shadow = rect_mask(h, w, (car[0] + 0.006, car[1] + 0.01, car[2] + 0.006, car[3] + 0.012))
                    _fill(image, shadow * 0.5, (30, 30, 32))
                    _fill(image, body.astype(np.float32), colour)
                    cx0, cy0, cx1, cy1 = car
                    cy_mid = cy0 + 0.35 * (cy1 - cy0)
                    _fill(
                        image,
                        rect_mask(h, w, (cx0 + 0.006, cy_mid, cx1 - 0.006, cy_mid + 0.035)),
                        (36, 44, 56),
                    )
                    roof = (cx0 + 0.008, cy_mid + 0.035, cx1 - 0.008, cy1 - 0.04)
                    _fill(image, rect_mask(h, w, roof) * 0.35, (255, 255, 255))
                    obstacles |= body
            x += bay
    depth = layout.path_depth
    concrete = _texture(rng, h, w, (156, 154, 147), 12 * u, 0.06)
    walk = np.clip(depth + 0.5, 0.0, 1.0)
    _fill(image, walk, concrete)
    _fill(image, np.clip(1.0 - np.abs(depth) / (1.2 * u), 0.0, 1.0) * 0.6, (196, 196, 190))
    # Zebra stripes where the pedestrian lane crosses the driving aisles.
    rows = (np.arange(h) + 0.5) / h
    stripes = (np.floor(rows / 0.028) % 2 == 0) & (
        ((rows > 0.32) & (rows < 0.50)) | ((rows > 0.74) & (rows < 0.84))
    )
    _fill(image, (walk > 0.5) * stripes[:, None] * 0.85, line)
    image *= _vignette(h, w, 0.15)
    return Backdrop(image=image, obstacles=obstacles)


def _paint_station(rng: np.random.Generator, layout: Layout) -> Backdrop:
    h, w, u = layout.height, layout.width, layout.unit
    rows = (np.arange(h) + 0.5) / h
    cols = (np.arange(w) + 0.5) / w
    tile = 0.0625
    checker = ((np.floor(cols / tile)[None, :] + np.floor(rows / (tile * w / h))[:, None]) % 2).astype(
        np.float32
    )
    image = _texture(rng, h, w, (170, 168, 160), 40 * u, 0.05)
    image *= (1.0 + 0.05 * (checker - 0.5))[..., None]
    grout = (np.abs((cols / tile) % 1.0 - 0.5)[None, :] > 0.5 - 0.6 / (tile * w)) | (
        np.abs((rows / (tile * w / h)) % 1.0 - 0.5)[:, None] > 0.5 - 0.6 / (tile * w)
    )
    _fill(image, grout * 0.5, (118, 116, 112))
    # Tracks: ballast, sleepers and two rails; then the platform edge and the yellow tactile band.
    ballast = _texture(rng, h, w, (64, 60, 56), 3 * u, 0.25)
    _fill(image, rect_mask(h, w, (0.0, 0.0, 1.0, 0.22)).astype(np.float32), ballast)
    sleepers = (np.floor(cols / 0.035) % 2 == 0)[None, :] & ((rows > 0.05) & (rows < 0.19))[:, None]
    _fill(image, sleepers * 0.7, (84, 66, 50))
    for ry in (0.075, 0.165):
        _fill(image, rect_mask(h, w, (0.0, ry - 0.006, 1.0, ry + 0.006)).astype(np.float32), (168, 168, 174))
    _fill(image, rect_mask(h, w, (0.0, 0.22, 1.0, 0.245)).astype(np.float32), (196, 194, 186))
    tactile = _texture(rng, h, w, (214, 182, 44), 4 * u, 0.08)
    _fill(image, rect_mask(h, w, (0.0, 0.245, 1.0, 0.272)).astype(np.float32), tactile)
    obstacles = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in layout.spec.blocked_areas:
        shadow = rect_mask(h, w, (x0 + 0.01, y0 + 0.02, x1 + 0.018, y1 + 0.015))
        _fill(image, shadow * 0.4, (40, 40, 40))
        top = (x0, y0, x1, y0 + 0.4 * (y1 - y0))
        _fill(image, rect_mask(h, w, (x0, y0, x1, y1)).astype(np.float32), (104, 106, 116))
        _fill(image, rect_mask(h, w, top).astype(np.float32), (152, 154, 164))
        obstacles |= rect_mask(h, w, (x0, y0, x1, y1))
    image *= _vignette(h, w, 0.18)
    return Backdrop(image=image, obstacles=obstacles)


PAINTERS: dict[str, Callable[[np.random.Generator, Layout], Backdrop]] = {
    "campus": _paint_campus,
    "parking": _paint_parking,
    "station": _paint_station,
}


@functools.lru_cache(maxsize=16)
def build_stage(name: str, width: int, height: int) -> Stage:
    """The fixed camera ``name`` at ``width`` x ``height`` (cached; arrays are read-only)."""
    layout = build_layout(name, width, height)
    painter = PAINTERS.get(name)
    if painter is None:
        raise SynthError(f"context {name!r} has a layout but no background painter")
    # The camera's look is seeded by its name only, so every clip and every dataset seed share it.
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    backdrop = painter(rng, layout)
    np.clip(backdrop.image, 0.0, 255.0, out=backdrop.image)
    backdrop.image.flags.writeable = False
    backdrop.obstacles.flags.writeable = False
    return Stage(layout=layout, backdrop=backdrop)
