"""The untrained floor of pixel-level localisation on UCSD Ped2: how well plain frame differences say *where*.

    ZSAD_DATA_ROOT=/work/shared/data .venv/bin/python -m bench.bench_localisation_floor

Every test frame of Ped2 at the Ped2 model's input size (``configs/train/ped2.yaml``: 192 x 288, 16-pixel
patches, so 12 x 18 cells) gives two evidence maps without any model: the per-patch mean absolute
difference with the previous frame (the motion stream's map) and with the constant-velocity extrapolation
of the two before (the ``extrapolate`` decoder's untrained prior). ``training.localisation`` scores each
against the native 240 x 360 pixel masks (pixel-level AUC, peak box and peak cell hit rates), exactly as
``zsad eval`` scores the model's gated evidence. Writes ``bench/results/ped2_localisation_floor.json``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import RESULTS_DIR, format_table, write_result
from core.config import resolve_data_path
from training.datasets import make_dataset
from training.localisation import DEFAULT_MAX_PIXELS, localisation_report

log = logging.getLogger(__name__)

SIZE = (192, 288)  # configs/train/ped2.yaml
PATCH = 16
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def patch_maps(frames: np.ndarray, order: int) -> np.ndarray:
    """``(N, h, w)`` per-patch mean absolute temporal difference of ``order`` 1 (previous frame) or 2
    (constant-velocity extrapolation); the first ``order`` frames copy the first full one."""
    gray = frames.astype(np.float32) @ _LUMA
    n, height, width = gray.shape
    diff = np.zeros_like(gray)
    if order == 1:
        diff[1:] = np.abs(gray[1:] - gray[:-1])
    else:
        diff[2:] = np.abs(gray[2:] - (2 * gray[1:-1] - gray[:-2]))
    diff[:order] = diff[order]
    h, w = height // PATCH, width // PATCH
    return diff[:, : h * PATCH, : w * PATCH].reshape(n, h, PATCH, w, PATCH).mean(axis=(2, 4))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_localisation_floor", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--root", default="ucsd_ped2", help="the Ped2 folder (relative: under $ZSAD_DATA_ROOT)"
    )
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = resolve_data_path(args.root)
    started = time.monotonic()
    model_size = make_dataset("ucsd", root, "test", SIZE, cache=False)
    native = make_dataset("ucsd", root, "test", None, cache=False)
    maps: dict[str, list[np.ndarray]] = {"frame difference": [], "constant-velocity extrapolation": []}
    masks = []
    for clip in model_size.clips:
        frames = model_size.frames(clip.name)
        maps["frame difference"].append(patch_maps(frames, 1))
        maps["constant-velocity extrapolation"].append(patch_maps(frames, 2))
        masks.append(native.masks(clip.name))
    all_masks = np.concatenate(masks)
    reports = {
        name: localisation_report(np.concatenate(parts), all_masks, max_pixels=args.max_pixels)
        for name, parts in maps.items()
    }
    path = write_result(
        "ped2_localisation_floor",
        {
            "dataset": str(root),
            "model_size": list(SIZE),
            "patch": PATCH,
            "videos": len(masks),
            "seconds": round(time.monotonic() - started, 1),
            "reports": reports,
        },
        results_dir=args.results,
    )
    rows = [
        [
            name,
            r["pixel_auc"]["auc"] if r["pixel_auc"] else None,
            r["pixel_auc"]["stride"] if r["pixel_auc"] else None,
            r["peak_box_hit_rate"],
            r["peak_cell_hit_rate"],
            r["half_mass_in_mask"],
        ]
        for name, r in reports.items()
    ]
    print(
        format_table(
            ["map", "pixel AUC", "stride", "peak box hit", "peak cell hit", "half mass in mask"], rows
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
