"""Frame preprocessing: the one normalisation every graph, trainer and evaluator feeds the model.

``uint8`` RGB frames ``(..., H, W, 3)`` become ``float32`` ``(..., 3, H, W)``, ``(x / 255 - mean) / std`` per
channel, computed in float32 in exactly that order. The CPU graph's clips, the DeepStream probe's single
frames, training windows and offline evaluation all call :class:`Normaliser`, so the same pixels give the
same bits everywhere. :func:`to_layout` turns a ``(N, T, 3, H, W)`` clip batch into the layout a backbone
engine was exported with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["LAYOUTS", "Normaliser", "PreprocessError", "normalise_frames", "to_layout"]

#: Clip batch layouts a backbone engine takes: ``NTCHW`` (native) or ``NCTHW`` (what DeepStream's
#: nvdspreprocess 3D sequence library writes; both of our graphs feed either, through ``to_layout``).
LAYOUTS = ("NTCHW", "NCTHW")

_MAX_U8 = np.float32(255.0)


class PreprocessError(ValueError):
    """Bad normalisation constants, a frame that is not ``(..., H, W, 3) uint8``, or an unknown layout."""


def _channels(name: str, values: Sequence[float]) -> np.ndarray:
    vals = tuple(float(v) for v in values)
    if len(vals) != 3:
        raise PreprocessError(f"{name} needs 3 values (RGB), got {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise PreprocessError(f"every {name} value must be finite, got {vals}")
    return np.asarray(vals, dtype=np.float32)


class Normaliser:
    """``(..., H, W, 3)`` uint8 RGB -> ``(..., 3, H, W)`` float32, ``(x / 255 - mean) / std`` per channel.

    Args:
        mean, std: per-channel RGB mean and std on the 0..1 scale (from the engine manifest).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self._mean = _channels("mean", mean)
        self._std = _channels("std", std)
        if (self._std <= 0).any():
            raise PreprocessError(f"every std value must be > 0, got {tuple(std)}")

    @property
    def mean(self) -> tuple[float, float, float]:
        m = self._mean.tolist()
        return (m[0], m[1], m[2])

    @property
    def std(self) -> tuple[float, float, float]:
        s = self._std.tolist()
        return (s[0], s[1], s[2])

    def __repr__(self) -> str:
        return f"Normaliser(mean={self.mean}, std={self.std})"

    def __call__(self, frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalise ``frames`` (any leading dims); fill and return ``out`` if given (``float32``, the
        output shape, any strides), else a new C-contiguous array."""
        x = np.asarray(frames)
        if x.dtype != np.uint8 or x.ndim < 3 or x.shape[-1] != 3:
            raise PreprocessError(f"frames must be (..., H, W, 3) uint8 RGB, got {x.shape} {x.dtype}")
        shape = (*x.shape[:-3], 3, *x.shape[-3:-1])
        if out is None:
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise PreprocessError(f"out must be {shape} float32, got {out.shape} {out.dtype}")
        # One channel plane at a time, in place: a single strided read of the interleaved pixels, then
        # two passes over contiguous planes; the same float32 operations, in the same order, as
        # ``(x.astype(float32) / 255 - mean) / std``, so the result is bit-identical to that formula.
        for c in range(3):
            plane = out[..., c, :, :]
            np.divide(x[..., c], _MAX_U8, out=plane, dtype=np.float32)
            np.subtract(plane, self._mean[c], out=plane)
            np.divide(plane, self._std[c], out=plane)
        return out


def normalise_frames(
    frames: np.ndarray, mean: Sequence[float], std: Sequence[float], out: np.ndarray | None = None
) -> np.ndarray:
    """``Normaliser(mean, std)(frames, out)``: ``(..., H, W, 3)`` uint8 RGB -> ``(..., 3, H, W)`` float32."""
    return Normaliser(mean, std)(frames, out)


def to_layout(clips: np.ndarray, layout: str) -> np.ndarray:
    """A ``(N, T, 3, H, W)`` clip batch in ``layout``: as it is for ``NTCHW``, a C-contiguous
    ``(N, 3, T, H, W)`` copy for ``NCTHW``."""
    if clips.ndim != 5 or clips.shape[2] != 3:
        raise PreprocessError(f"clips must be (N, T, 3, H, W), got {clips.shape}")
    if layout == "NTCHW":
        return clips
    if layout == "NCTHW":
        return np.ascontiguousarray(clips.transpose(0, 2, 1, 3, 4))
    raise PreprocessError(f"unknown clip layout {layout!r}; expected one of {LAYOUTS}")
