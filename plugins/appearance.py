"""The appearance stream's per-camera normal memory: where a frame's pretrained image features are unusual.

A frozen image encoder (the ``appearance`` engine) turns a frame into a feature map ``(C, h, w)`` (stride 8:
``h = H / 8``, ``w = W / 8``). :class:`AppearanceMemory` holds, for each of the ``P = h * w`` positions, the
mean ``(P, C)`` and the inverse covariance ``(P, C, C)`` of that position's features on the camera's normal
footage (PaDiM style: one Gaussian per position, fitted without a gradient step). A frame is scored per
position by the Mahalanobis distance of its features from that position's Gaussian: an ``(h, w)`` error map,
spatial like the other streams' maps. :func:`pool_to` max-pools it onto the DPC maps' coarser patch grid,
so that masks, learned levels and evidence maps see one grid for every stream.

Fitting streams (:class:`MemoryFitter`): per position, the sum and the sum of outer products of the
features in float64, so footage of any length fits in a bounded memory. ``finalize`` gives
``cov_p = (1 - shrinkage) * cov_p + shrinkage * mean_p(cov_p) + eps * I`` (``eps`` = 0.01 keeps a position
that barely varies invertible; ``shrinkage`` toward the covariance pooled over positions is 0 by default)
and its inverse.

The file. ``zsad calibrate`` writes a camera's memory beside its calibration file
(:func:`memory_path`: ``calib/gate-1.json`` -> ``calib/gate-1.appearance.npz``), one ``.npz`` holding a
version, the camera, the encoder's name and its engine's ``weights_sha256`` and ``model_spec_sha256``, the
feature grid ``(h, w)``, the channels, ``eps`` and ``shrinkage``, the frames fitted, the fit date, and the
sha256 of the arrays.
The inverse covariance is stored as float16, which halves the file (the scoring memory is float32 again;
the round trip moves a distance by well under 1 %, see tests/unit/test_appearance.py). Measured with 128
channels (docs/benchmarks.md, ``python -m bench.bench_appearance_memory``):

========  =========  ======================  ========================
grid      positions  file (float16 inverse)  RAM per camera (float32)
========  =========  ======================  ========================
18 x 24   432        13.7 MiB                27.2 MiB
30 x 40   1200       38.1 MiB                75.6 MiB
========  =========  ======================  ========================

:func:`load_memory` refuses, with an :class:`AppearanceMemoryError` that names the file and what does not
match, a file whose version is unknown, whose arrays are truncated, corrupt or do not hash to the recorded
sha256, or that was fitted with another encoder engine (weights or spec: taps, projection, frame size), grid
or channel count than the running engine's (:class:`MemoryExpectation`): the features it describes are not
the ones the engine gives, so the camera must be calibrated again.

Pure numpy: the CPU graph, the DeepStream graph and ``zsad calibrate`` share it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.datafile import write_atomic
from plugins.modelfile import read_model_file
from plugins.registry import CameraTable

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_SHRINKAGE",
    "MEMORY_SUFFIX",
    "MEMORY_VERSION",
    "AppearanceError",
    "AppearanceGridError",
    "AppearanceMemories",
    "AppearanceMemory",
    "AppearanceMemoryError",
    "MemoryExpectation",
    "MemoryFitter",
    "appearance_map",
    "describe",
    "fit_memory",
    "load_memory",
    "memory_path",
    "pool_factor",
    "pool_to",
    "save_memory",
]

#: 2: the header records the appearance engine's ``model_spec_sha256`` (its taps, projection and frame size),
#: which the running engine's must equal; a version 1 file does not say which spec it was fitted on, so it is
#: refused like any other version, and the camera is calibrated again.
MEMORY_VERSION = 2
#: Added to every position's covariance: a position that barely varies on normal footage stays invertible.
DEFAULT_EPS = 0.01
#: Weight of the covariance pooled over positions in each position's covariance (0: none).
DEFAULT_SHRINKAGE = 0.0
#: ``<calibration file without .json>`` + this suffix is where a camera's memory lives.
MEMORY_SUFFIX = ".appearance.npz"
#: Positions finalised at once: bounds the float64 working set of a 30 x 40 x 128 fit to ~50 MB.
_FINALIZE_CHUNK = 128
_RECALIBRATE = "re-run zsad calibrate for this camera"


class AppearanceError(ValueError):
    """Bad input to the appearance memory: a feature map of the wrong shape, an invalid fit setting."""


class AppearanceGridError(AppearanceError):
    """An error map cannot be pooled onto a grid: the grid's size does not divide the map's."""


class AppearanceMemoryError(AppearanceError):
    """A memory file that cannot be used: missing, truncated, corrupt, of another version, or fitted for
    another encoder engine, grid or channel count. The message names the file and what to do."""


@dataclass(frozen=True)
class MemoryExpectation:
    """What the running appearance engine gives, which a memory must have been fitted on: its encoder, its
    weights, its spec (the manifest's ``model_spec_sha256``: taps, projection and frame size, which change the
    features without changing their grid or channels), its feature grid and channels."""

    encoder: str
    weights_sha256: str
    grid: tuple[int, int]
    channels: int
    model_spec_sha256: str


# --------------------------------------------------------------------------------------------------
# The memory
# --------------------------------------------------------------------------------------------------


class AppearanceMemory:
    """One camera's per-position Gaussian memory of ``(C, h, w)`` feature maps.

    Args:
        mean: ``(P, C)`` per-position mean, ``P = h * w`` positions in row-major order.
        inv_cov: ``(P, C, C)`` per-position inverse covariance (symmetric).
        grid: ``(h, w)``.
        encoder, weights_sha256, model_spec_sha256: the encoder engine the features came from (its name,
            weights and spec hash; "" for a spec not recorded).
        camera: the camera it was fitted for (information only).
        eps, shrinkage: the regularisation it was fitted with.
        n_frames: frames it was fitted on.
        fitted: the fit's UTC date (ISO 8601).
    """

    def __init__(
        self,
        mean: np.ndarray,
        inv_cov: np.ndarray,
        *,
        grid: tuple[int, int],
        encoder: str,
        weights_sha256: str,
        model_spec_sha256: str = "",
        camera: str = "",
        eps: float = DEFAULT_EPS,
        shrinkage: float = DEFAULT_SHRINKAGE,
        n_frames: int = 0,
        fitted: str = "",
    ) -> None:
        h, w = (int(grid[0]), int(grid[1]))
        if h < 1 or w < 1:
            raise AppearanceError(f"grid must be two positive sizes, got {grid}")
        m = np.ascontiguousarray(mean, dtype=np.float32)
        if m.ndim != 2 or m.shape[0] != h * w or m.shape[1] < 1:
            raise AppearanceError(f"mean must be (h*w, C) = ({h * w}, C), got {m.shape}")
        c = m.shape[1]
        inv = np.ascontiguousarray(inv_cov, dtype=np.float32)
        if inv.shape != (h * w, c, c):
            raise AppearanceError(f"inv_cov must be (P, C, C) = {(h * w, c, c)}, got {inv.shape}")
        if not (np.isfinite(m).all() and np.isfinite(inv).all()):
            raise AppearanceError("mean and inv_cov must be finite")
        self.mean = m
        self.inv_cov = inv
        self.grid = (h, w)
        self.encoder = str(encoder)
        self.weights_sha256 = str(weights_sha256)
        self.model_spec_sha256 = str(model_spec_sha256)
        self.camera = str(camera)
        self.eps = float(eps)
        self.shrinkage = float(shrinkage)
        self.n_frames = int(n_frames)
        self.fitted = str(fitted)

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    @property
    def positions(self) -> int:
        return int(self.mean.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays in memory (the RAM a camera's memory takes)."""
        return int(self.mean.nbytes + self.inv_cov.nbytes)

    def __repr__(self) -> str:
        h, w = self.grid
        return (
            f"AppearanceMemory(camera={self.camera!r}, encoder={self.encoder!r}, grid={h}x{w}, "
            f"channels={self.channels}, n_frames={self.n_frames})"
        )

    def mismatches(self, expect: MemoryExpectation) -> list[str]:
        """What differs from ``expect``, one phrase each (empty: it fits)."""
        problems = []
        if self.encoder != expect.encoder:
            problems.append(f"encoder {self.encoder!r}, the engine is {expect.encoder!r}")
        if self.weights_sha256 != expect.weights_sha256:
            problems.append(
                f"encoder weights sha256 {self.weights_sha256[:12]}, the engine's is "
                f"{expect.weights_sha256[:12]} (the engine changed)"
            )
        if self.model_spec_sha256 != expect.model_spec_sha256:
            problems.append(
                f"encoder spec sha256 {self.model_spec_sha256[:12] or '(none)'}, the engine's is "
                f"{expect.model_spec_sha256[:12]} (its taps, projection or frame size changed)"
            )
        if self.grid != tuple(expect.grid):
            problems.append(
                f"feature grid {self.grid[0]}x{self.grid[1]}, the engine gives {_grid(expect.grid)}"
            )
        if self.channels != expect.channels:
            problems.append(f"{self.channels} channels, the engine gives {expect.channels}")
        return problems

    def score_map(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each position's features from its normal Gaussian.

        ``features``: ``(C, h, w)`` or ``(N, C, h, w)`` float. Returns ``(h, w)`` or ``(N, h, w)`` float32,
        ``sqrt((f - mean)^T inv_cov (f - mean))`` per position."""
        x = np.asarray(features)
        single = x.ndim == 3
        if single:
            x = x[None]
        h, w = self.grid
        if x.ndim != 4 or x.shape[1:] != (self.channels, h, w):
            raise AppearanceError(
                f"features must be (C, h, w) or (N, C, h, w) with C, h, w = {self.channels}, {h}, {w} "
                f"(this memory's), got {x.shape}"
            )
        n = x.shape[0]
        # (N, P, C), C-contiguous: einsum on the transposed view is several times slower.
        d = np.ascontiguousarray(x.reshape(n, self.channels, h * w).transpose(0, 2, 1), dtype=np.float32)
        d -= self.mean
        # One image: the plain einsum is a single pass over inv_cov; several: the optimised contraction
        # (a BLAS product per position) is faster per map (python -m bench.bench_appearance_memory).
        y = np.einsum("pcd,npd->npc", self.inv_cov, d, optimize=n > 1)
        q = np.einsum("npc,npc->np", y, d)
        # Rounding can make a near-zero quadratic form slightly negative.
        dist = np.sqrt(np.maximum(q, 0.0, out=q), out=q).astype(np.float32, copy=False).reshape(n, h, w)
        return dist[0] if single else dist


def _grid(grid: Sequence[int]) -> str:
    return "x".join(str(int(g)) for g in grid)


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


class MemoryFitter:
    """Streams feature maps into per-position sums; :meth:`finalize` gives the :class:`AppearanceMemory`.

    ``add`` takes ``(N, C, h, w)`` (or one ``(C, h, w)``) batches of any size; the result does not depend on
    how the frames were split into batches (up to float64 rounding). The working set is the float64 sums:
    ``P * C * C * 8`` bytes (151 MiB at 30 x 40 x 128).
    """

    def __init__(self) -> None:
        # Per position: the sum (P, C) and the sum of outer products (P, C, C), float64; None before ``add``.
        self._sums: tuple[np.ndarray, np.ndarray] | None = None
        self._grid: tuple[int, int] | None = None
        self.n_frames = 0

    @property
    def grid(self) -> tuple[int, int] | None:
        return self._grid

    def add(self, features: np.ndarray) -> None:
        x = np.asarray(features)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or min(x.shape) < 1:
            raise AppearanceError(f"features must be (N, C, h, w) or (C, h, w), got {x.shape}")
        n, c, h, w = x.shape
        if not np.isfinite(x).all():
            raise AppearanceError("features must be finite (the encoder gave NaN or inf)")
        if self._sums is None:
            self._grid = (h, w)
            self._sums = (np.zeros((h * w, c)), np.zeros((h * w, c, c)))
        total, outer = self._sums
        if (h, w) != self._grid or c != total.shape[1]:
            raise AppearanceError(
                f"features are {c} x {h}x{w}, earlier batches were "
                f"{total.shape[1]} x {_grid(self._grid or ())}"
            )
        v = x.reshape(n, c, h * w).transpose(2, 0, 1).astype(np.float64)  # (P, N, C)
        total += v.sum(axis=1)
        outer += np.matmul(v.transpose(0, 2, 1), v)  # one BLAS product per position
        self.n_frames += n

    def merged(self, other: MemoryFitter) -> MemoryFitter:
        """A new fitter holding the frames of both (each time fold's sums give the whole footage's)."""
        out = MemoryFitter()
        for part in (self, other):
            if part._sums is None:
                continue
            if out._sums is None:
                out._sums = (part._sums[0].copy(), part._sums[1].copy())
                out._grid = part._grid
            elif part._grid != out._grid or part._sums[0].shape != out._sums[0].shape:
                raise AppearanceError(
                    f"cannot merge fitters of {out._sums[0].shape[1]} x {_grid(out._grid or ())} and "
                    f"{part._sums[0].shape[1]} x {_grid(part._grid or ())} features"
                )
            else:
                total, outer = out._sums
                total += part._sums[0]
                outer += part._sums[1]
            out.n_frames += part.n_frames
        return out

    def without(self, part: MemoryFitter) -> MemoryFitter:
        """A new fitter holding this fitter's frames but those of ``part``, which must be among them (a
        fold's sums taken from the whole footage's: each held-out memory costs one subtraction, not a merge
        of every other fold)."""
        if part._sums is None:
            return self.merged(MemoryFitter())
        if self._sums is None or part._grid != self._grid or part._sums[0].shape != self._sums[0].shape:
            raise AppearanceError(
                f"cannot take a fitter of {part._sums[0].shape[1]} x {_grid(part._grid or ())} features "
                f"from one of {self._sums[0].shape[1] if self._sums else 0} x {_grid(self._grid or ())}"
            )
        if part.n_frames > self.n_frames:
            raise AppearanceError(f"cannot take {part.n_frames} frames from a fitter of {self.n_frames}")
        out = MemoryFitter()
        out._grid = self._grid
        out._sums = (self._sums[0] - part._sums[0], self._sums[1] - part._sums[1])
        out.n_frames = self.n_frames - part.n_frames
        return out

    def finalize(
        self,
        *,
        encoder: str,
        weights_sha256: str,
        model_spec_sha256: str = "",
        camera: str = "",
        eps: float = DEFAULT_EPS,
        shrinkage: float = DEFAULT_SHRINKAGE,
    ) -> AppearanceMemory:
        """The memory of every frame added so far (at least 2)."""
        if not (math.isfinite(eps) and eps > 0):
            raise AppearanceError(f"eps must be > 0, got {eps}")
        if not (math.isfinite(shrinkage) and 0.0 <= shrinkage <= 1.0):
            raise AppearanceError(f"shrinkage must be in [0, 1], got {shrinkage}")
        if self._sums is None or self._grid is None or self.n_frames < 2:
            raise AppearanceError(f"a memory needs at least 2 frames, got {self.n_frames}")
        total, outer = self._sums
        n = self.n_frames
        p, c = total.shape
        mean = total / n
        pooled: np.ndarray | None = None
        if shrinkage > 0:
            # The mean over positions of cov_p, from the sums alone (no (P, C, C) covariance array).
            pooled = (outer.sum(axis=0) - n * mean.T @ mean) / ((n - 1) * p)
        inv = np.empty((p, c, c), dtype=np.float32)
        eye = eps * np.eye(c)
        for start in range(0, p, _FINALIZE_CHUNK):
            sl = slice(start, start + _FINALIZE_CHUNK)
            mu = mean[sl]
            cov = (outer[sl] - n * mu[:, :, None] * mu[:, None, :]) / (n - 1)
            if pooled is not None:
                cov = (1.0 - shrinkage) * cov + shrinkage * pooled
            cov += eye
            block = np.linalg.inv(cov)
            inv[sl] = 0.5 * (block + block.transpose(0, 2, 1))  # exactly symmetric, like cov
        return AppearanceMemory(
            mean.astype(np.float32),
            inv,
            grid=self._grid,
            encoder=encoder,
            weights_sha256=weights_sha256,
            model_spec_sha256=model_spec_sha256,
            camera=camera,
            eps=eps,
            shrinkage=shrinkage,
            n_frames=n,
            fitted=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        )


def fit_memory(
    features: np.ndarray,
    *,
    encoder: str,
    weights_sha256: str,
    model_spec_sha256: str = "",
    camera: str = "",
    eps: float = DEFAULT_EPS,
    shrinkage: float = DEFAULT_SHRINKAGE,
    batch: int = 64,
) -> AppearanceMemory:
    """Fit a memory on ``(N, C, h, w)`` feature maps (any float dtype; float16 is converted per batch)."""
    fitter = MemoryFitter()
    x = np.asarray(features)
    for start in range(0, x.shape[0], batch):
        fitter.add(x[start : start + batch])
    return fitter.finalize(
        encoder=encoder,
        weights_sha256=weights_sha256,
        model_spec_sha256=model_spec_sha256,
        camera=camera,
        eps=eps,
        shrinkage=shrinkage,
    )


# --------------------------------------------------------------------------------------------------
# One grid for every stream
# --------------------------------------------------------------------------------------------------


def pool_factor(shape: Sequence[int], grid: Sequence[int]) -> tuple[int, int]:
    """The integer ``(rows, columns)`` factor from an ``(h, w)`` map to a coarser ``(gh, gw)`` grid.
    Raises :class:`AppearanceGridError` when a grid size does not divide the map's."""
    h, w = (int(shape[-2]), int(shape[-1]))
    gh, gw = (int(grid[0]), int(grid[1]))
    if gh < 1 or gw < 1 or h % gh or w % gw:
        raise AppearanceGridError(
            f"an {h}x{w} map cannot be max-pooled onto a {gh}x{gw} grid: the factor {h / max(gh, 1):g} x "
            f"{w / max(gw, 1):g} is not a whole number (the encoder's stride and the backbone's patch size "
            f"must divide each other)"
        )
    return h // gh, w // gw


def pool_to(error_map: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """Max-pool an ``(h, w)`` (or ``(N, h, w)``) map by a whole factor onto ``grid`` ``(gh, gw)``: a cell
    keeps its block's highest value, so a small unusual object still counts on the coarser grid."""
    m = np.asarray(error_map)
    if m.ndim not in (2, 3):
        raise AppearanceGridError(f"error map must be (h, w) or (N, h, w), got {m.shape}")
    fh, fw = pool_factor(m.shape, grid)
    if fh == 1 and fw == 1:
        return m
    gh, gw = (int(grid[0]), int(grid[1]))
    blocks = m.reshape(*m.shape[:-2], gh, fh, gw, fw)
    return blocks.max(axis=(-3, -1))


def appearance_map(memory: AppearanceMemory, features: np.ndarray, grid: Sequence[int]) -> np.ndarray:
    """The appearance stream's error map(s) on ``grid`` (the DPC maps' grid): :meth:`~AppearanceMemory.
    score_map` then :func:`pool_to`. The one formula of the run and of ``zsad calibrate``."""
    return pool_to(memory.score_map(features), grid)


# --------------------------------------------------------------------------------------------------
# Every camera's memory at run time
# --------------------------------------------------------------------------------------------------


class AppearanceMemories(CameraTable[AppearanceMemory]):
    """Every camera's memory, replaced whole while the scorer runs (:class:`plugins.registry.CameraTable`)."""


# --------------------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------------------


def memory_path(calibration: str | Path) -> Path:
    """Where the memory of the camera calibrated in ``calibration`` lives: the calibration file's path
    without ``.json``, plus ``.appearance.npz`` (``calib/gate-1.json`` -> ``calib/gate-1.appearance.npz``)."""
    p = Path(calibration)
    name = p.name[: -len(".json")] if p.name.lower().endswith(".json") else p.name
    return p.with_name(name + MEMORY_SUFFIX)


def _arrays_sha256(mean: np.ndarray, inv_cov16: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in (mean, inv_cov16):
        h.update(str(a.dtype.str).encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_memory(memory: AppearanceMemory, path: str | Path) -> int:
    """Write ``memory`` to ``path`` atomically (temp file, fsync, rename: a reader sees the old file or the
    new one, never half of one). The inverse covariance is stored as float16. Returns the file's size."""
    p = Path(path)
    with np.errstate(over="ignore"):  # checked just below, with a message that says what to change
        inv16 = memory.inv_cov.astype(np.float16)
    if not np.isfinite(inv16).all():
        # Entries of an inverse covariance are at most 1 / eps; only an eps below ~2e-5 can overflow.
        raise AppearanceError(
            f"the inverse covariance does not fit float16 (eps {memory.eps:g} is too small)"
        )
    meta = {
        "version": MEMORY_VERSION,
        "camera": memory.camera,
        "encoder": memory.encoder,
        "weights_sha256": memory.weights_sha256,
        "model_spec_sha256": memory.model_spec_sha256,
        "grid": list(memory.grid),
        "channels": memory.channels,
        "eps": memory.eps,
        "shrinkage": memory.shrinkage,
        "n_frames": memory.n_frames,
        "fitted": memory.fitted,
        "arrays_sha256": _arrays_sha256(memory.mean, inv16),
    }
    header = np.array(json.dumps(meta, sort_keys=True))
    write_atomic(p, lambda f: np.savez(f, meta=header, mean=memory.mean, inv_cov=inv16))
    return p.stat().st_size


def load_memory(path: str | Path, expect: MemoryExpectation | None = None) -> AppearanceMemory:
    """Read a memory file; with ``expect``, refuse one fitted for another engine, grid or channel count.

    Raises :class:`AppearanceMemoryError` naming the file and the problem (missing, truncated or corrupt,
    unknown version, arrays that do not match their recorded sha256, a mismatch with ``expect``)."""
    p = Path(path)

    def bad(msg: str) -> AppearanceMemoryError:
        return AppearanceMemoryError(f"appearance memory {p}: {msg}")

    meta, arrays = read_model_file(
        p,
        name="appearance memory",
        arrays=("mean", "inv_cov"),
        version=MEMORY_VERSION,
        error=AppearanceMemoryError,
        fix=_RECALIBRATE,
    )
    mean, inv16 = arrays["mean"], arrays["inv_cov"]
    if mean.dtype != np.float32 or inv16.dtype != np.float16:
        raise bad(f"arrays are {mean.dtype} and {inv16.dtype}, expected float32 and float16; {_RECALIBRATE}")
    if meta.get("arrays_sha256") != _arrays_sha256(mean, inv16):
        raise bad(f"its arrays do not match their recorded sha256 (the file is corrupt); {_RECALIBRATE}")
    try:
        grid = meta["grid"]
        memory = AppearanceMemory(
            mean,
            inv16.astype(np.float32),
            grid=(int(grid[0]), int(grid[1])),
            encoder=str(meta["encoder"]),
            weights_sha256=str(meta["weights_sha256"]),
            model_spec_sha256=str(meta["model_spec_sha256"]),
            camera=str(meta.get("camera", "")),
            eps=float(meta.get("eps", DEFAULT_EPS)),
            shrinkage=float(meta.get("shrinkage", DEFAULT_SHRINKAGE)),
            n_frames=int(meta.get("n_frames", 0)),
            fitted=str(meta.get("fitted", "")),
        )
        channels = int(meta["channels"])
    except (KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:
        raise bad(f"its header or arrays are inconsistent ({exc}); {_RECALIBRATE}") from exc
    if channels != memory.channels:
        raise bad(f"its header says {channels} channels, its arrays have {memory.channels}; {_RECALIBRATE}")
    if expect is not None:
        problems = memory.mismatches(expect)
        if problems:
            raise bad(
                f"fitted for another appearance engine: {'; '.join(problems)}. The features it describes are "
                f"not the ones this engine gives: {_RECALIBRATE}"
            )
    return memory


def describe(memory: AppearanceMemory) -> str:
    """A memory in one line, for logs: its encoder, grid, channels, frames, fit date and RAM."""
    return (
        f"encoder {memory.encoder}, {_grid(memory.grid)} x {memory.channels} features, fitted on "
        f"{memory.n_frames} frames of camera {memory.camera or '?'} on {memory.fitted or '?'}, "
        f"{memory.nbytes / 2**20:.1f} MiB"
    )
