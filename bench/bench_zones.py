"""What masks, zones and learned levels cost per scored clip, in the shared scoring code.

    .venv/bin/python -m bench.bench_zones                    # grids 6x8 (tests) and 8x12 (default model)
    .venv/bin/python -m bench.bench_zones --grids 8x12 --repeats 20000

Times, on synthetic error maps of three streams, per clip:

* ``reduce``: ``plugins.scorer.filter_scores`` without a filter (what every clip paid before);
* ``reduce+filter``: the same with a camera filter holding a mask and learned levels;
* ``peak``: the two evidence maps and ``locate_peak`` with three zones (``CameraAlerts.update``);
* ``evidence``: adding one clip to an open alert's evidence (masked copy and per-cell maximum).

Writes ``bench/results/zones_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.common import RESULTS_DIR, format_table, write_result
from plugins.scorer import StreamScores, filter_scores
from plugins.zones import CellFilter, ViewZones, Zone, evidence_map, locate_peak

STREAMS = ("predictive", "pixel", "motion")


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Median of 5 rounds of ``repeats`` calls, in microseconds per call."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        rounds.append((time.perf_counter() - start) / repeats * 1e6)
    return float(np.median(rounds))


def measure(grid: tuple[int, int], repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    maps = {s: rng.random(grid, dtype=np.float32) for s in STREAMS}
    zones = ViewZones(
        zones=[
            Zone("road", ((0.0, 0.0), (1.0, 0.0), (1.0, 0.25), (0.0, 0.25))),
            Zone("flag", ((0.0, 0.5), (0.3, 0.5), (0.3, 0.9), (0.0, 0.9))),
            Zone("east", ((0.55, 0.25), (1.0, 0.25), (1.0, 0.8), (0.55, 0.8))),
        ],
        mask=[[(0.0, 0.0), (1.0, 0.0), (1.0, 0.25), (0.0, 0.25)]],
    )
    levels = {s: np.where(rng.random(grid) < 0.1, 0.5, -np.inf).astype(np.float32) for s in STREAMS}
    cell_filter = CellFilter(zones, levels, version=1, floors=dict.fromkeys(STREAMS, 0.3))
    stats = dict.fromkeys(STREAMS, (0.3, 0.1))
    weights = dict.fromkeys(STREAMS, 1 / 3)

    def scores() -> StreamScores:
        return StreamScores("cam", 0, {}, maps, np.zeros(1, np.float32))

    counted = cell_filter.apply(maps) or maps
    acc = {s: m.copy() for s, m in maps.items()}
    mask = zones.mask_cells(grid)

    def peak() -> object:
        e = evidence_map(counted, weights, stats)
        tb = evidence_map(counted, weights, stats, positive=False)
        return locate_peak(e, zones, tb)  # type: ignore[arg-type]

    def evidence() -> None:
        for s, m in maps.items():
            np.fmax(acc[s], np.where(mask, np.float32(np.nan), m), out=acc[s])

    peak()  # rasterise the zones once, as the first clip of a camera does
    return {
        "reduce_us": _time(lambda: filter_scores(scores(), None), repeats),
        "reduce_filter_us": _time(lambda: filter_scores(scores(), cell_filter), repeats),
        "peak_us": _time(peak, repeats),
        "evidence_us": _time(evidence, repeats),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_zones", description=__doc__.splitlines()[0])
    p.add_argument("--grids", default="6x8,8x12", help="error-map grids, rows x columns")
    p.add_argument("--repeats", type=int, default=5000, help="calls per round (5 rounds, median)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    rows = []
    for spec in args.grids.split(","):
        h, w = (int(v) for v in spec.lower().split("x"))
        r = measure((h, w), args.repeats)
        rows.append({"grid": f"{h}x{w}", **{k: round(v, 2) for k, v in r.items()}})
    print(
        format_table(
            ["grid", "reduce us", "reduce+filter us", "peak us", "evidence us"],
            [
                [r["grid"], r["reduce_us"], r["reduce_filter_us"], r["peak_us"], r["evidence_us"]]
                for r in rows
            ],
        )
    )
    write_result("zones_overhead", {"repeats": args.repeats, "rows": rows}, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
