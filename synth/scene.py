"""Scene contexts: the fixed cameras the generator films.

A context is one camera view: a walkway graph (where people walk), extra walkable floor, lighting,
how busy it is, and (in :mod:`synth.background`) how the ground looks. Layout coordinates are
normalised: x / width and y / height, so the same scene renders at any resolution. Route end points lie
just outside the frame, so people enter and leave across the image border.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from dataclasses import dataclass

import numpy as np

from synth.geometry import Polyline, rect_mask, segment_distance

#: The resolution the sizes and speeds below are written for; other sizes scale them.
REF_WIDTH = 320
REF_HEIGHT = 240

#: Names of the injected anomaly kinds, in round-robin order.
ANOMALY_KINDS: tuple[str, ...] = ("cyclist", "vehicle", "running", "falling", "off_path", "abandoned_object")


class SynthError(Exception):
    """Base class for synthetic-scene generation failures."""


class SynthInputError(SynthError):
    """Bad arguments to the generator (unknown context, impossible sizes, bad event plans)."""


@dataclass(frozen=True)
class Lighting:
    """How a camera sees its scene; applied to every pixel of every frame."""

    gain_rgb: tuple[float, float, float]  # colour cast
    brightness_jitter: float  # per-clip brightness factor is 1 ± this
    drift_amplitude: float  # slow global illumination drift (clouds, dimming), fraction
    drift_period: tuple[int, int]  # frames, drawn per clip
    flicker: float  # per-frame random gain change (fluorescent tubes), fraction
    noise_sigma: float  # sensor noise std, grey levels on 0..255


@dataclass(frozen=True)
class ContextSpec:
    """One camera view. Nodes are normalised ``(x, y)``; edges are paved walkways."""

    name: str
    description: str
    nodes: dict[str, tuple[float, float]]
    edges: tuple[tuple[str, str], ...]
    entrances: tuple[str, ...]
    path_halfwidth: float  # half-width of a walkway, fraction of image height, at the bottom row
    open_areas: tuple[tuple[float, float, float, float], ...]  # extra walkable rects (x0, y0, x1, y1)
    blocked_areas: tuple[tuple[float, float, float, float], ...]  # never walkable (pillars)
    spawn_rate: float  # new pedestrians per frame
    max_people: int
    lighting: Lighting


CONTEXTS: dict[str, ContextSpec] = {
    "campus": ContextSpec(
        name="campus",
        description="campus walkway: paved paths across a lawn with trees and a bench, warm daylight",
        nodes={
            "W": (-0.06, 0.56),
            "J1": (0.38, 0.60),
            "J2": (0.68, 0.63),
            "E": (1.06, 0.67),
            "S": (0.22, 1.06),
            "N": (0.82, -0.06),
        },
        edges=(("W", "J1"), ("J1", "J2"), ("J2", "E"), ("S", "J1"), ("J2", "N")),
        entrances=("W", "E", "S", "N"),
        path_halfwidth=0.05,
        open_areas=(),
        blocked_areas=(),
        spawn_rate=0.022,
        max_people=6,
        lighting=Lighting(
            gain_rgb=(1.06, 1.02, 0.93),
            brightness_jitter=0.07,
            drift_amplitude=0.05,
            drift_period=(250, 600),
            flicker=0.0,
            noise_sigma=2.2,
        ),
    ),
    "parking": ContextSpec(
        name="parking",
        description="parking lot: asphalt with painted bays and parked cars, a sidewalk and a "
        "pedestrian lane to the building, overcast cool light",
        nodes={
            "SW": (-0.06, 0.90),
            "SM": (0.50, 0.90),
            "SE": (1.06, 0.90),
            "N": (0.50, -0.06),
        },
        edges=(("SW", "SM"), ("SM", "SE"), ("SM", "N")),
        entrances=("SW", "SE", "N"),
        path_halfwidth=0.05,
        open_areas=(),
        blocked_areas=(),
        spawn_rate=0.016,
        max_people=4,
        lighting=Lighting(
            gain_rgb=(0.94, 0.98, 1.07),
            brightness_jitter=0.08,
            drift_amplitude=0.03,
            drift_period=(300, 700),
            flicker=0.0,
            noise_sigma=2.6,
        ),
    ),
    "station": ContextSpec(
        name="station",
        description="station hall: tiled floor with pillars beside the platform edge and tracks, "
        "greenish fluorescent light",
        nodes={
            "W1": (-0.06, 0.38),
            "JB": (0.35, 0.39),
            "E1": (1.06, 0.40),
            "W2": (-0.06, 0.80),
            "JA": (0.35, 0.79),
            "E2": (1.06, 0.78),
            "S": (0.35, 1.06),
        },
        edges=(("W1", "JB"), ("JB", "E1"), ("W2", "JA"), ("JA", "E2"), ("S", "JA"), ("JA", "JB")),
        entrances=("W1", "E1", "W2", "E2", "S"),
        path_halfwidth=0.05,
        open_areas=((0.0, 0.29, 1.0, 1.0),),
        blocked_areas=((0.155, 0.53, 0.205, 0.62), (0.475, 0.53, 0.525, 0.62), (0.795, 0.53, 0.845, 0.62)),
        spawn_rate=0.03,
        max_people=8,
        lighting=Lighting(
            gain_rgb=(0.97, 1.04, 0.95),
            brightness_jitter=0.05,
            drift_amplitude=0.015,
            drift_period=(400, 800),
            flicker=0.006,
            noise_sigma=2.0,
        ),
    ),
}

DEFAULT_CONTEXTS: tuple[str, ...] = ("campus", "parking", "station")


def unit_scale(width: int, height: int) -> float:
    """Pixels per reference pixel (sizes and speeds are written for 320 x 240)."""
    return math.sqrt((width / REF_WIDTH) * (height / REF_HEIGHT))


def perspective(y: float, height: int) -> float:
    """Apparent size factor of something standing at image row ``y``: far (top) is smaller."""
    return 0.65 + 0.55 * (y / height)


@dataclass(frozen=True)
class Layout:
    """A context rasterised at one resolution. Arrays are read-only and shared between clips.

    ``walkable``: ``(H, W)`` bool, where a person's feet may normally be.
    ``path_depth``: ``(H, W)`` float32, px inside the nearest walkway (negative outside), for painting.
    """

    spec: ContextSpec
    width: int
    height: int
    unit: float
    routes: tuple[Polyline, ...]
    walkable: np.ndarray
    path_depth: np.ndarray

    def to_px(self, point: tuple[float, float]) -> tuple[float, float]:
        return point[0] * self.width, point[1] * self.height

    def halfwidth_px(self, y: float) -> float:
        return (
            self.spec.path_halfwidth
            * self.height
            * perspective(y, self.height)
            / perspective(self.height, self.height)
        )


def context_spec(name: str) -> ContextSpec:
    try:
        return CONTEXTS[name]
    except KeyError:
        raise SynthInputError(f"unknown context {name!r}; known: {', '.join(sorted(CONTEXTS))}") from None


def _shortest_path(spec: ContextSpec, start: str, goal: str) -> list[str]:
    adj: dict[str, list[str]] = {n: [] for n in spec.nodes}
    for a, b in spec.edges:
        adj[a].append(b)
        adj[b].append(a)
    best = {start: 0.0}
    queue: list[tuple[float, str, list[str]]] = [(0.0, start, [start])]
    while queue:
        dist, node, path = heapq.heappop(queue)
        if node == goal:
            return path
        for nxt in adj[node]:
            d = dist + math.dist(spec.nodes[node], spec.nodes[nxt])
            if d < best.get(nxt, math.inf):
                best[nxt] = d
                heapq.heappush(queue, (d, nxt, [*path, nxt]))
    raise SynthError(f"context {spec.name!r}: no walkway from {start} to {goal}")


@functools.lru_cache(maxsize=16)
def build_layout(name: str, width: int, height: int) -> Layout:
    """Rasterise context ``name`` at ``width`` x ``height`` (cached; arrays are read-only)."""
    spec = context_spec(name)
    routes = []
    for a, b in itertools.permutations(spec.entrances, 2):
        nodes = _shortest_path(spec, a, b)
        routes.append(Polyline([(spec.nodes[n][0] * width, spec.nodes[n][1] * height) for n in nodes]))
    rows = np.arange(height, dtype=np.float32)[:, None]
    hw = spec.path_halfwidth * height * (0.65 + 0.55 * rows / height) / 1.2
    depth = np.full((height, width), -np.inf, dtype=np.float32)
    for a, b in spec.edges:
        pa = (spec.nodes[a][0] * width, spec.nodes[a][1] * height)
        pb = (spec.nodes[b][0] * width, spec.nodes[b][1] * height)
        np.maximum(depth, hw - segment_distance(height, width, pa, pb), out=depth)
    walkable = depth >= 0.0
    for rect in spec.open_areas:
        walkable |= rect_mask(height, width, rect)
    for rect in spec.blocked_areas:
        walkable &= ~rect_mask(height, width, rect)
    walkable.flags.writeable = False
    depth.flags.writeable = False
    return Layout(
        spec=spec,
        width=width,
        height=height,
        unit=unit_scale(width, height),
        routes=tuple(routes),
        walkable=walkable,
        path_depth=depth,
    )
