"""What the per-camera model files beside a calibration share: where they live and how their arrays are
hashed. ``zsad calibrate`` writes ``calib/gate-1.json`` and, beside it, one file per memory stream
(``calib/gate-1.stationary.npz``, ``calib/gate-1.objects.npz``); each file records the sha256 of its arrays
so a damaged file is refused rather than scored with. Pure numpy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

__all__ = ["arrays_sha256", "beside"]


def beside(calibration: str | Path, suffix: str) -> Path:
    """``beside("calib/gate-1.json", ".objects.npz")`` -> ``calib/gate-1.objects.npz``."""
    p = Path(calibration)
    name = p.name[: -len(".json")] if p.name.lower().endswith(".json") else p.name
    return p.with_name(name + suffix)


def arrays_sha256(*arrays: np.ndarray) -> str:
    """The sha256 of the arrays' dtypes, shapes and bytes, in order."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.dtype.str).encode())
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()
