"""What a camera's appearance memory costs: its file, its RAM, scoring a map, fitting it.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_appearance_memory
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_appearance_memory --grids 18x24

Per feature grid (default 18x24 and 30x40, 128 channels, the MobileNetV2 stride-8 features of 144x192 and
240x320 frames), on synthetic ReLU features with correlated channels (the timings do not depend on the
values; the float16 round trip error does a little):

* ``file_mib``: the ``.npz`` :func:`plugins.appearance.save_memory` writes (float16 inverse covariance);
* ``ram_mib``: the memory's arrays once loaded (float32), what each camera holds while running;
* ``score_ms``: :meth:`AppearanceMemory.score_map` of one map, and ``score4_ms`` per map in a batch of 4
  (one thread: run it with the BLAS thread variables above; the result records them); each also as this
  process's CPU time (``*_cpu_ms``), steadier than the wall time on a shared machine;
* ``map_ms``: the whole per-clip stream, :func:`plugins.appearance.appearance_map` (score and pool);
* ``fit_s`` (and ``fit_cpu_s``): ``zsad calibrate``'s fit of ``--frames`` frames: the sums of two time
  folds, their two held-out memories and the merged memory of all frames (three ``finalize``);
* ``fit_one_s``: one plain fit of all frames (``fit_memory``);
* ``load_s``: :func:`plugins.appearance.load_memory` (hash check and float32 copy);
* ``f16_max_rel``: the largest relative change of a distance after the float16 round trip (held-out frames).

Writes ``bench/results/appearance_memory.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, format_table, write_result
from plugins.appearance import (
    MemoryFitter,
    appearance_map,
    fit_memory,
    load_memory,
    save_memory,
)

CHANNELS = 128
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def features(n: int, grid: tuple[int, int], seed: int) -> np.ndarray:
    """``(n, 128, h, w)`` float16 ReLU features: a per-position base plus 16 shared latent factors."""
    h, w = grid
    scene = np.random.default_rng(1)
    mix = scene.standard_normal((16, CHANNELS)).astype(np.float32) / 4
    base = scene.standard_normal((CHANNELS, h * w)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, CHANNELS, h, w), np.float16)
    for i in range(n):
        z = rng.standard_normal((h * w, 16)).astype(np.float32) @ mix
        z += 0.3 * rng.standard_normal((h * w, CHANNELS)).astype(np.float32)
        out[i] = np.maximum(z.T + base, 0.0).reshape(CHANNELS, h, w)
    return out


def _ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median of 5 rounds of ``repeats`` calls: (wall, CPU) milliseconds per call. On a shared machine the
    CPU time (this process's, one thread) is the steadier of the two."""
    fn()
    wall, cpu = [], []
    for _ in range(5):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            fn()
        wall.append((time.perf_counter() - start) / repeats * 1e3)
        cpu.append((time.process_time() - start_cpu) / repeats * 1e3)
    return float(np.median(wall)), float(np.median(cpu))


def measure(grid: tuple[int, int], frames: int, repeats: int) -> dict[str, float]:
    data = features(frames, grid, seed=0)
    identity: dict[str, Any] = {"encoder": "mobilenet_v2", "weights_sha256": "0" * 64, "camera": "bench"}

    t0, c0 = time.perf_counter(), time.process_time()
    halves = [MemoryFitter(), MemoryFitter()]
    for fold, part in enumerate((data[: frames // 2], data[frames // 2 :])):
        for start in range(0, len(part), 64):
            halves[fold].add(part[start : start + 64])
    for fitter in halves:
        fitter.finalize(**identity)
    memory = halves[0].merged(halves[1]).finalize(**identity)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    del halves
    t0 = time.perf_counter()
    fit_memory(data, **identity)
    fit_one_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.appearance.npz"
        size = save_memory(memory, path)
        t0 = time.perf_counter()
        loaded = load_memory(path)
        load_s = time.perf_counter() - t0
    held_out = features(64, grid, seed=1).astype(np.float32)
    before, after = memory.score_map(held_out), loaded.score_map(held_out)
    one = held_out[0]
    four = held_out[:4]
    dpc_grid = (grid[0] // 2, grid[1] // 2)
    score = _ms(lambda: loaded.score_map(one), repeats)
    score4 = _ms(lambda: loaded.score_map(four), repeats)
    whole = _ms(lambda: appearance_map(loaded, one, dpc_grid), repeats)
    return {
        "positions": grid[0] * grid[1],
        "file_mib": size / 2**20,
        "ram_mib": loaded.nbytes / 2**20,
        "score_ms": score[0],
        "score_cpu_ms": score[1],
        "score4_ms": score4[0] / 4,
        "score4_cpu_ms": score4[1] / 4,
        "map_ms": whole[0],
        "map_cpu_ms": whole[1],
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu_s,
        "fit_one_s": fit_one_s,
        "load_s": load_s,
        "f16_max_rel": float(np.max(np.abs(after - before) / before)),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.bench_appearance_memory", description=__doc__.splitlines()[0]
    )
    p.add_argument("--grids", default="18x24,30x40", help="feature grids, rows x columns")
    p.add_argument("--frames", type=int, default=600, help="frames fitted")
    p.add_argument("--repeats", type=int, default=50, help="calls per timing round (5 rounds, median)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    rows = []
    for spec in args.grids.split(","):
        h, w = (int(v) for v in spec.lower().split("x"))
        r = measure((h, w), args.frames, args.repeats)
        rows.append({"grid": f"{h}x{w}", "channels": CHANNELS, **{k: round(v, 4) for k, v in r.items()}})
    print(
        format_table(
            [
                "grid",
                "file MiB",
                "RAM MiB",
                "score ms (CPU)",
                "batch 4, per map",
                "map ms (CPU)",
                "fit s (CPU)",
                "load s",
                "f16 err",
            ],
            [
                [
                    r["grid"],
                    r["file_mib"],
                    r["ram_mib"],
                    f"{r['score_ms']:.2f} ({r['score_cpu_ms']:.2f})",
                    f"{r['score4_ms']:.2f} ({r['score4_cpu_ms']:.2f})",
                    f"{r['map_ms']:.2f} ({r['map_cpu_ms']:.2f})",
                    f"{r['fit_s']:.1f} ({r['fit_cpu_s']:.1f})",
                    r["load_s"],
                    r["f16_max_rel"],
                ]
                for r in rows
            ],
        )
    )
    threads = {v: os.environ.get(v) for v in THREAD_VARIABLES}
    write_result(
        "appearance_memory",
        {"frames": args.frames, "repeats": args.repeats, "thread_env": threads, "rows": rows},
        args.results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
