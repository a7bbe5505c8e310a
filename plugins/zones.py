"""Zones and masks on the error-map grid, and where in the view a clip's evidence peaks.

Pure numpy, shared by both graphs: :class:`CellFilter` is applied to every stream's error map by
:class:`plugins.scorer.ClipScorer` before the map is reduced to a score, and the peak, its box and its zone
(:func:`evidence_map`, :func:`locate_peak`) are found by ``pipeline.outputs.events.CameraAlerts``.

Coordinates. Polygons are in normalised image coordinates: ``x`` from the left edge, ``y`` from the top,
both 0..1 of the frame. The model sees the whole camera frame stretched to its input size (no letterbox),
so the same numbers hold on the camera frame, the model frame and the snapshot. An error map is an
``(h, w)`` grid over that frame: cell ``(i, j)`` covers ``x`` in ``[j/w, (j+1)/w)`` and ``y`` in
``[i/h, (i+1)/h)``.

Rasterisation (:func:`rasterise`). A cell belongs to a polygon when the cell's centre is inside it, or when
the polygon covers at least :data:`MIN_COVER` of the cell (estimated on :data:`SUBSAMPLES` x
:data:`SUBSAMPLES` points per cell). A polygon that would cover no cell by these rules (smaller than a cell,
or a thin sliver between centres) still covers the one cell it overlaps most, so no polygon is ever lost.

The evidence map and the peak (:func:`evidence_map`, :func:`locate_peak`). Each stream's map is z-scored
with the camera's calibration of that stream, only its part above the stream's normal level is kept, and
it is weighted by the weight the clip's fused score gave the stream (``FusedScore.weights``) and combined
over the map streams by the same rule as the fused score (``plugins.fusion``)::

    mean:  E(cell) = sum_s  w_s * max(0, (m_s(cell) - location_s) / scale_s)
    max:   E(cell) = max_s  w_s * max(0, (m_s(cell) - location_s) / scale_s)

so under ``max`` the peak is where the stream that leads the fused score peaks, and the heatmap shows each
cell's strongest weighted evidence, not a sum that a quiet stream would dilute. Since a map stream's score
is the maximum of its map, that is exact: the peak cell is the cell that set the clip's fused score and its
``E`` is the unsmoothed fused score (when a map stream leads). Which stream leads, and so where the peak is,
is decided by the weights alone (the calibration's reliability weights from held-out folds, the gate).
Only the excess counts because a stream's score is the maximum over its map: a cell far below one stream's
normal maximum is no evidence against what another stream found there. A cell where a stream's value is NaN
(masked) gets nothing from that stream; a cell where no stream counts has no evidence (NaN). The semantic
stream has no map: it would add the same constant to every cell, so it is left out (the peak does not move).
The peak is the cell of the largest ``E``; among equal cells (most often: no cell above normal) the one with
the largest plain weighted z-score combination (the same rule, below normal too). Its box is the connected
(4-neighbour) set of cells around it whose evidence is at least halfway from the map's median to the peak
(:func:`half_level`); its zones are the zones that contain the peak cell.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from plugins.fusion import FUSION_RULES

if TYPE_CHECKING:
    from core.config import ZoneSettings

__all__ = [
    "MIN_COVER",
    "SUBSAMPLES",
    "CellFilter",
    "CellFilters",
    "PeakLocation",
    "ViewZones",
    "Zone",
    "ZoneError",
    "dilate",
    "evidence_map",
    "half_level",
    "locate_peak",
    "points_in_polygon",
    "rasterise",
    "rasterise_polygon",
]

log = logging.getLogger(__name__)

#: Sample points per cell side used to estimate how much of a cell a polygon covers.
SUBSAMPLES = 4
#: A polygon covering at least this fraction of a cell covers the cell, even when it misses the centre.
MIN_COVER = 0.25

Point = tuple[float, float]
Shape = tuple[int, int]

_warned: set[tuple[str, ...]] = set()


def _warn_once(key: tuple[str, ...], msg: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(msg, *args)


class ZoneError(ValueError):
    """Zones or polygons that cannot be used (a repeated name, an unknown alert zone, a bad polygon)."""


# --------------------------------------------------------------------------------------------------
# Rasterisation
# --------------------------------------------------------------------------------------------------


def points_in_polygon(xs: np.ndarray, ys: np.ndarray, polygon: Sequence[Point]) -> np.ndarray:
    """Which points ``(xs, ys)`` (arrays of one shape) are inside ``polygon`` (even-odd rule)."""
    px = np.asarray(xs, dtype=np.float64)
    py = np.asarray(ys, dtype=np.float64)
    inside = np.zeros(px.shape, dtype=bool)
    n = len(polygon)
    for k in range(n):
        x0, y0 = polygon[k]
        x1, y1 = polygon[(k + 1) % n]
        if y0 == y1:
            continue  # a horizontal edge never crosses a horizontal ray
        spans = (y0 > py) != (y1 > py)
        x_cross = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= spans & (px < x_cross)
    return inside


def _check_shape(shape: Shape) -> Shape:
    h, w = int(shape[0]), int(shape[1])
    if h < 1 or w < 1:
        raise ZoneError(f"grid shape must be at least 1 x 1, got {shape}")
    return h, w


def rasterise_polygon(polygon: Sequence[Point], shape: Shape) -> np.ndarray:
    """The cells of an ``(h, w)`` grid that ``polygon`` covers (see the module's rasterisation rules)."""
    h, w = _check_shape(shape)
    if len(polygon) < 3:
        raise ZoneError(f"a polygon needs at least 3 points, got {len(polygon)}")
    rows = np.arange(h, dtype=np.float64)
    cols = np.arange(w, dtype=np.float64)
    cy, cx = np.meshgrid((rows + 0.5) / h, (cols + 0.5) / w, indexing="ij")
    centre = points_in_polygon(cx, cy, polygon)
    offsets = (np.arange(SUBSAMPLES, dtype=np.float64) + 0.5) / SUBSAMPLES
    sy = ((rows[:, None] + offsets[None, :]) / h).ravel()  # (h*S,)
    sx = ((cols[:, None] + offsets[None, :]) / w).ravel()  # (w*S,)
    gy, gx = np.meshgrid(sy, sx, indexing="ij")
    samples = points_in_polygon(gx, gy, polygon).reshape(h, SUBSAMPLES, w, SUBSAMPLES)
    coverage = samples.mean(axis=(1, 3))
    covered = centre | (coverage >= MIN_COVER)
    if not covered.any():
        if coverage.max() > 0:
            i, j = (int(v) for v in np.unravel_index(int(np.argmax(coverage)), coverage.shape))
        else:  # thinner than the sample spacing: the cell under the polygon's vertex centroid
            mx = sum(p[0] for p in polygon) / len(polygon)
            my = sum(p[1] for p in polygon) / len(polygon)
            i, j = min(int(my * h), h - 1), min(int(mx * w), w - 1)
            i, j = max(i, 0), max(j, 0)
        covered[i, j] = True
    return covered


def rasterise(polygons: Iterable[Sequence[Point]], shape: Shape) -> np.ndarray:
    """The union of the cells each polygon covers: ``(h, w)`` bool."""
    out = np.zeros(_check_shape(shape), dtype=bool)
    for polygon in polygons:
        out |= rasterise_polygon(polygon, shape)
    return out


def dilate(cells: np.ndarray, steps: int = 1) -> np.ndarray:
    """Grow a bool cell set by ``steps`` cells in every direction (8-neighbourhood)."""
    out = np.asarray(cells, dtype=bool).copy()
    for _ in range(max(0, steps)):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        grown[1:, 1:] |= out[:-1, :-1]
        grown[1:, :-1] |= out[:-1, 1:]
        grown[:-1, 1:] |= out[1:, :-1]
        grown[:-1, :-1] |= out[1:, 1:]
        out = grown
    return out


# --------------------------------------------------------------------------------------------------
# A camera's zones
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    """A named polygon of a camera's view. ``alert`` False: a peak inside only such zones raises no alert."""

    name: str
    polygon: tuple[Point, ...]
    alert: bool = True


class ViewZones:
    """One camera's zones, ignore mask and alert restriction, rasterised per map grid on first use.

    ``alert_zones`` None: an alert may open anywhere, except when its peak lies only in zones marked
    ``alert=False``. Otherwise an alert opens only while its peak is in one of the named zones.
    Immutable once built, so the scoring thread and the web server can share it.
    """

    def __init__(
        self,
        zones: Sequence[Zone] = (),
        mask: Sequence[Sequence[Point]] = (),
        alert_zones: Sequence[str] | None = None,
    ) -> None:
        names = [z.name for z in zones]
        if len(set(names)) != len(names):
            raise ZoneError(f"zone names repeat: {names}")
        by_name = {z.name: z for z in zones}
        if alert_zones is not None:
            for name in alert_zones:
                if name not in by_name:
                    raise ZoneError(f"alert zone {name!r} is not one of the zones {names}")
        for polygon in [*mask, *(z.polygon for z in zones)]:
            if len(polygon) < 3:
                raise ZoneError(f"a polygon needs at least 3 points, got {len(polygon)}")
            for x, y in polygon:
                if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                    raise ZoneError(f"polygon point ({x}, {y}) is outside 0..1")
        self.zones: tuple[Zone, ...] = tuple(zones)
        self.mask: tuple[tuple[Point, ...], ...] = tuple(
            tuple((float(x), float(y)) for x, y in polygon) for polygon in mask
        )
        self.alert_zones: tuple[str, ...] | None = tuple(alert_zones) if alert_zones is not None else None
        self._mask_cells: dict[Shape, np.ndarray] = {}
        self._zone_cells: dict[Shape, dict[str, np.ndarray]] = {}

    @classmethod
    def from_settings(cls, settings: ZoneSettings) -> ViewZones:
        """From the config's (validated) :class:`core.config.ZoneSettings`."""
        return cls(
            zones=[
                Zone(z.name, tuple((float(x), float(y)) for x, y in z.points), z.alert)
                for z in settings.zones
            ],
            mask=[[(float(x), float(y)) for x, y in p] for p in settings.mask],
            alert_zones=settings.alert_zones,
        )

    @property
    def empty(self) -> bool:
        return not self.zones and not self.mask and self.alert_zones is None

    @property
    def has_mask(self) -> bool:
        return bool(self.mask)

    def mask_cells(self, shape: Shape) -> np.ndarray:
        """``(h, w)`` bool: the cells the ignore mask removes (read-only; cached per grid)."""
        key = _check_shape(shape)
        cells = self._mask_cells.get(key)
        if cells is None:
            cells = rasterise(self.mask, key)
            cells.flags.writeable = False
            self._mask_cells[key] = cells  # a racing thread computes the same array: harmless
        return cells

    def zone_cells(self, shape: Shape) -> dict[str, np.ndarray]:
        """Each zone's cells on an ``(h, w)`` grid, in zone order (read-only; cached per grid)."""
        key = _check_shape(shape)
        cells = self._zone_cells.get(key)
        if cells is None:
            cells = {}
            for zone in self.zones:
                raster = rasterise_polygon(zone.polygon, key)
                raster.flags.writeable = False
                cells[zone.name] = raster
            self._zone_cells[key] = cells
        return cells

    def zones_at(self, cell: tuple[int, int], shape: Shape) -> tuple[str, ...]:
        """The zones that contain ``cell`` (row, column), in zone order."""
        i, j = cell
        return tuple(name for name, raster in self.zone_cells(shape).items() if raster[i, j])

    def allows_alert(self, zones: Sequence[str]) -> bool:
        """Whether a peak inside ``zones`` (possibly none) may raise an alert."""
        if self.alert_zones is not None:
            return any(name in self.alert_zones for name in zones)
        if not zones:
            return True
        flags = {z.name: z.alert for z in self.zones}
        return any(flags.get(name, True) for name in zones)

    def primary_zone(self, zones: Sequence[str]) -> str | None:
        """The one zone an alert reports when its peak is in ``zones``: the first (in zone order) that may
        raise alerts, else the first; None outside every zone."""
        if not zones:
            return None
        if self.alert_zones is not None:
            allowed = [z for z in zones if z in self.alert_zones]
        else:
            flags = {z.name: z.alert for z in self.zones}
            allowed = [z for z in zones if flags.get(z, True)]
        return (allowed or list(zones))[0]


# --------------------------------------------------------------------------------------------------
# What a camera's maps lose before reduction
# --------------------------------------------------------------------------------------------------


class CellFilter:
    """The cells of one camera's error maps that must not count.

    * The ignore mask: its cells are removed (NaN) from every stream's map.
    * Learned normal levels (``levels``: stream -> ``(h, w)`` float, ``-inf`` where nothing was learned;
      see :mod:`plugins.learned`): a cell whose value is at or below its stream's learned level there is
      known to be normal, so it is capped at ``floors[stream]``, the stream's normal level (its calibration
      location: the median of the stream's score on normal footage). The cell then cannot push the stream's
      score above normal, while the stream's other cells, and the statistics its calibration was fitted on,
      stay as they were. Without a floor (an uncalibrated camera) such a cell is removed.

    ``version`` identifies this filter (:class:`CellFilters` numbers them).
    """

    def __init__(
        self,
        zones: ViewZones | None = None,
        levels: Mapping[str, np.ndarray] | None = None,
        version: int = 0,
        camera: str = "",
        floors: Mapping[str, float] | None = None,
    ) -> None:
        self.zones = zones if zones is not None and zones.has_mask else None
        self.levels = {s: np.asarray(v, dtype=np.float32) for s, v in (levels or {}).items()}
        self.floors = {s: float(v) for s, v in (floors or {}).items() if math.isfinite(float(v))}
        self.version = version
        self.camera = camera

    @property
    def active(self) -> bool:
        return self.zones is not None or bool(self.levels)

    def mask_cells(self, shape: Shape) -> np.ndarray | None:
        return self.zones.mask_cells(shape) if self.zones is not None else None

    def apply(self, maps: Mapping[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Each map as it counts (float32 copies: NaN where masked, capped where learned normal), or None
        when nothing changes (no mask, nothing learned)."""
        if not self.active:
            return None
        out: dict[str, np.ndarray] = {}
        for stream, error_map in maps.items():
            m = np.array(error_map, dtype=np.float32, copy=True)
            level = self.levels.get(stream)
            if level is not None:
                if level.shape != m.shape:
                    _warn_once(
                        ("learned-shape", self.camera, stream),
                        "camera %s: learned normal levels of stream %s are %s but its maps are %s "
                        "(new engines?); they are ignored",
                        self.camera,
                        stream,
                        level.shape,
                        m.shape,
                    )
                else:
                    learned = m <= level  # -inf where nothing was learned: never
                    floor = self.floors.get(stream)
                    cap = np.float32(floor) if floor is not None else np.float32(np.nan)
                    m = np.where(learned, np.fmin(m, cap) if floor is not None else cap, m).astype(np.float32)
            mask = self.mask_cells(m.shape) if m.ndim == 2 else None
            if mask is not None:
                m[mask] = np.nan
            out[stream] = m
        return out


class CellFilters:
    """Every camera's :class:`CellFilter`, replaced whole while the scorer runs: set from the web server or
    the main thread, read from the scoring thread. Each :meth:`set` gets a new, increasing version."""

    def __init__(self) -> None:
        self._filters: dict[str, CellFilter] = {}
        self._lock = threading.Lock()
        self._next = 1

    def set(
        self,
        camera: str,
        zones: ViewZones | None,
        levels: Mapping[str, np.ndarray] | None,
        floors: Mapping[str, float] | None = None,
    ) -> CellFilter:
        """Put a new filter in force for ``camera`` (see :class:`CellFilter` for the arguments)."""
        with self._lock:
            version = self._next
            self._next += 1
            f = CellFilter(zones, levels, version, camera, floors)
            self._filters[camera] = f
        return f

    def get(self, camera: str) -> CellFilter | None:
        return self._filters.get(camera)

    def remove(self, camera: str) -> None:
        with self._lock:
            self._filters.pop(camera, None)


# --------------------------------------------------------------------------------------------------
# Evidence and the peak
# --------------------------------------------------------------------------------------------------


def evidence_map(
    maps: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    stats: Mapping[str, tuple[float, float]] | None,
    *,
    positive: bool = True,
    rule: str = "mean",
) -> np.ndarray | None:
    """``E(cell) = sum_s w_s max(0, (m_s(cell) - location_s) / scale_s)`` (``rule="mean"``) or the ``max_s``
    of the same terms (``rule="max"``) over the map streams that have a weight and statistics (``stats``
    None: an uncalibrated camera, ``z = m``); ``positive=False`` keeps the whole z-score, below normal too.
    ``(h, w)`` float64 with NaN where no stream counts; None when no stream does. ``weights`` and ``rule``
    are the clip's ``FusedScore.weights`` and ``FusedScore.rule``."""
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r}: use one of {', '.join(FUSION_RULES)}")
    terms: list[np.ndarray] = []
    shape: tuple[int, ...] | None = None
    for stream, error_map in maps.items():
        w = float(weights.get(stream, 0.0))
        if not (w > 0 and math.isfinite(w)):
            continue
        if stats is None:
            location, scale = 0.0, 1.0
        elif stream in stats:
            location, scale = stats[stream]
        else:
            continue
        m = np.asarray(error_map, dtype=np.float64)
        if m.ndim != 2 or (shape is not None and m.shape != shape):
            continue
        shape = m.shape
        z = (m - location) / scale
        terms.append(w * (np.maximum(z, 0.0) if positive else z))  # maximum keeps NaN cells NaN
    if not terms:
        return None
    stack = np.stack(terms)
    finite = np.isfinite(stack)
    if rule == "max":
        combined = np.where(finite, stack, -np.inf).max(axis=0)
    else:
        combined = np.where(finite, stack, 0.0).sum(axis=0)
    return np.where(finite.any(axis=0), combined, np.nan)


def half_level(evidence: np.ndarray) -> float:
    """Halfway from the median cell to the peak cell: the edge of a peak's region (NaN cells ignored)."""
    finite = evidence[np.isfinite(evidence)]
    if finite.size == 0:
        return math.nan
    top = float(finite.max())
    return top - 0.5 * (top - float(np.median(finite)))


def _component(cells: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected component of ``cells`` that contains ``seed``."""
    h, w = cells.shape
    out = np.zeros_like(cells, dtype=bool)
    todo = deque([seed])
    out[seed] = True
    while todo:
        i, j = todo.popleft()
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            a, b = i + di, j + dj
            if 0 <= a < h and 0 <= b < w and cells[a, b] and not out[a, b]:
                out[a, b] = True
                todo.append((a, b))
    return out


@dataclass(frozen=True)
class PeakLocation:
    """Where a clip's evidence peaks. ``cell`` (row, column) on a ``grid`` of ``(h, w)`` cells; ``box``
    ``(x0, y0, x1, y1)`` in normalised coordinates (the peak's region, see the module); ``zones`` every zone
    containing the peak cell; ``zone`` the one an alert reports (:meth:`ViewZones.primary_zone`);
    ``evidence`` the peak's ``E``."""

    cell: tuple[int, int]
    grid: tuple[int, int]
    box: tuple[float, float, float, float]
    zones: tuple[str, ...] = ()
    zone: str | None = None
    evidence: float = math.nan

    def pixel_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box in pixels of a ``width`` x ``height`` frame: ``(x0, y0, x1, y1)``, ``x1``/``y1``
        exclusive, always at least one pixel."""
        x0, y0, x1, y1 = self.box
        eps = 1e-9  # 1/3 of 240 is 79.999...: round cell edges to the pixel they are meant to be on
        px0 = min(max(math.floor(x0 * width + eps), 0), width - 1)
        py0 = min(max(math.floor(y0 * height + eps), 0), height - 1)
        px1 = min(max(math.ceil(x1 * width - eps), px0 + 1), width)
        py1 = min(max(math.ceil(y1 * height - eps), py0 + 1), height)
        return px0, py0, px1, py1


def locate_peak(
    evidence: np.ndarray, zones: ViewZones | None = None, tiebreak: np.ndarray | None = None
) -> PeakLocation | None:
    """The peak of an evidence map (:func:`evidence_map`), its box and zones; None when no cell has
    evidence. Among cells of equal evidence the largest ``tiebreak`` (same shape; e.g. the evidence with
    ``positive=False``) wins, then the first in row order."""
    e = np.asarray(evidence, dtype=np.float64)
    finite = np.isfinite(e)
    if e.ndim != 2 or not finite.any():
        return None
    h, w = e.shape
    primary = np.where(finite, e, -np.inf).ravel()
    if tiebreak is not None and np.shape(tiebreak) == e.shape:
        tb = np.asarray(tiebreak, dtype=np.float64)
        secondary = np.where(np.isfinite(tb), tb, -np.inf).ravel()
        best = int(np.lexsort((-secondary, -primary))[0])
    else:
        best = int(np.argmax(primary))
    i, j = (int(v) for v in np.unravel_index(best, e.shape))
    region = _component(finite & (e >= half_level(e)), (i, j))
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box = (cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h)
    inside = zones.zones_at((i, j), (h, w)) if zones is not None else ()
    zone = zones.primary_zone(inside) if zones is not None else None
    return PeakLocation(
        cell=(i, j),
        grid=(h, w),
        box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
        zones=inside,
        zone=zone,
        evidence=float(e[i, j]),
    )
