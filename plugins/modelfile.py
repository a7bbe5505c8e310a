"""What the per-camera model files beside a calibration share: where they live, how they are read, how
their arrays are hashed, and the frame-to-grid geometry they are fitted for. ``zsad calibrate`` writes
``calib/gate-1.json`` and, beside it, one file per memory stream (``calib/gate-1.appearance.npz``,
``.stationary.npz``, ``.objects.npz``); each file records the sha256 of its arrays so a damaged file is
refused rather than scored with. Pure numpy."""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "arrays_sha256",
    "beside",
    "read_model_file",
    "recorded_arrays_sha256",
    "setup_mismatches",
    "whole_cells",
]


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


def recorded_arrays_sha256(path: str | Path) -> str | None:
    """The ``arrays_sha256`` a model file's header records (its identity: the same arrays, the same hash,
    whenever they were fitted), or None when it cannot be read (loading it then says why)."""
    try:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"][()]))
    except (OSError, ValueError, EOFError, KeyError, AttributeError, TypeError, zipfile.BadZipFile):
        return None
    value = meta.get("arrays_sha256") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def read_model_file(
    path: str | Path,
    *,
    name: str,
    arrays: Sequence[str],
    version: int,
    error: type[Exception],
    fix: str,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The JSON header (``meta``) and the ``arrays`` of a model file (an ``.npz``). ``name`` says what the
    file is ("stationary model"); ``fix`` what to do about a bad one. Raises ``error``, its message starting
    with ``name`` and the path, when the file is missing, cannot be read (truncated, corrupt), lacks an
    array, has a header that is not a JSON object, or is of another ``version``. The caller checks the
    rest (hashes, shapes, what it was fitted for)."""
    p = Path(path)
    article = "an" if name[:1].lower() in "aeiou" else "a"

    def bad(msg: str) -> Exception:
        return error(f"{name} {p}: {msg}")

    try:
        loaded = np.load(p, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a bare .npy array: np.load reads it too
            raise bad(f"is not an .npz archive: not {article} {name}; {fix}")
        with loaded as data:
            missing = {"meta", *arrays} - set(data.files)
            if missing:
                raise bad(f"lacks {sorted(missing)}: not {article} {name}, or damaged; {fix}")
            meta_raw = str(data["meta"][()])
            out = {k: data[k] for k in arrays}
    except error:
        raise
    except FileNotFoundError as exc:
        raise bad("no such file") from exc
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise bad(f"cannot be read (truncated or corrupt: {exc}); {fix}") from exc
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError as exc:
        raise bad(f"its header is not JSON ({exc}); {fix}") from exc
    if not isinstance(meta, dict):
        raise bad(f"its header must be an object; {fix}")
    if meta.get("version") != version:
        raise bad(f"unsupported version {meta.get('version')!r} (this zsad reads version {version}); {fix}")
    return meta, out


def setup_mismatches(
    fitted: tuple[tuple[int, int], tuple[int, int], float],
    *,
    frame_size: Sequence[int] | None,
    grid: Sequence[int] | None,
    spacing_s: float | None,
    section: str,
) -> list[str]:
    """What differs between the setup a model was ``fitted`` for (frame size ``(H, W)``, DPC grid ``(h, w)``,
    seconds between its frames, 0 where not recorded) and the running one (None: not checked); ``section``
    names the config section whose ``spacing_s`` it is. Empty when they agree."""
    have_frame, have_grid, have_spacing = fitted
    problems = []
    if frame_size is not None and have_frame != tuple(int(s) for s in frame_size):
        problems.append(f"frame size {have_frame}, the camera gives {tuple(frame_size)}")
    if grid is not None and have_grid != tuple(int(g) for g in grid):
        problems.append(f"grid {have_grid}, the engines use {tuple(grid)}")
    if spacing_s is not None and have_spacing and not math.isclose(have_spacing, spacing_s, rel_tol=1e-6):
        problems.append(f"frames {have_spacing:g} s apart, the config's {section}.spacing_s is {spacing_s:g}")
    return problems


def whole_cells(shape: Sequence[int], grid: Sequence[int], error: type[Exception]) -> tuple[int, int]:
    """The ``(rows, columns)`` pixels of each cell when a frame of ``shape`` ``(H, W, ...)`` is split into
    ``grid`` ``(h, w)``. Raises ``error`` when the cells would not be whole pixels."""
    h, w = int(shape[0]), int(shape[1])
    gh, gw = int(grid[0]), int(grid[1])
    if gh < 1 or gw < 1 or h % gh or w % gw:
        raise error(f"an {h}x{w} frame cannot be split into a {gh}x{gw} grid of whole cells")
    return h // gh, w // gw
