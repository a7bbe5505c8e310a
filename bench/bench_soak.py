"""Memory soak: the whole ``zsad run`` Application on N looping synthetic cameras in real time for M
minutes, RSS sampled every few seconds; is memory flat?

    python -m bench.bench_soak --minutes 10 [--cameras 4] [--interval 5]

The RSS slope (MB/min) is a least-squares fit over the samples after the warm-up (ONNX Runtime arenas,
GStreamer buffer pools, clip rings and event-media buffers fill during the first minute; default warm-up:
a quarter of the run, at most 60 s). The run counts as flat when the fitted growth is below
``--flat-mb-per-min`` (default 1 MB/min, i.e. < 10 MB over 10 minutes).

Writes bench/results/memory_soak.json (``--name`` picks another name). bench/results/soak.json belongs to
tests/reliability/soak.py, the reliability suite's own soak, which also watches file descriptors and
threads; this one is the benchmark's memory figure.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_pipeline import CaseSpec, run_case_in_child
from bench.common import (
    RESULTS_DIR,
    Assets,
    BenchError,
    add_asset_arguments,
    load_average,
    prepare_assets,
    write_result,
)

log = logging.getLogger("bench.soak")

__all__ = ["fit_rss_slope", "main", "run_soak"]


def fit_rss_slope(samples: Sequence[Mapping[str, Any]], warmup_s: float) -> dict[str, Any]:
    """Least-squares RSS slope (MB/min) over samples ``{"t_s", "rss_mb"}`` taken at or after ``warmup_s``."""
    kept = [s for s in samples if s["t_s"] >= warmup_s]
    if len(kept) < 3:
        raise BenchError(f"need >= 3 samples after the {warmup_s:.0f} s warm-up, got {len(kept)}")
    t = np.array([s["t_s"] for s in kept], dtype=np.float64) / 60.0
    rss = np.array([s["rss_mb"] for s in kept], dtype=np.float64)
    slope, _ = np.polyfit(t, rss, 1)
    return {
        "samples_used": len(kept),
        "rss_slope_mb_per_min": round(float(slope), 3),
        "rss_after_warmup_mb": round(float(rss[0]), 1),
        "rss_end_mb": round(float(rss[-1]), 1),
        "rss_max_mb": round(float(rss.max()), 1),
        "span_min": round(float(t[-1] - t[0]), 2),
    }


def run_soak(
    assets: Assets,
    *,
    minutes: float,
    cameras: int = 4,
    interval_s: float = 5.0,
    warmup_s: float | None = None,
    threads: int | None = None,
    flat_mb_per_min: float = 1.0,
) -> dict[str, Any]:
    """Run the soak in a child process and fit the RSS slope; see the module docstring."""
    if minutes <= 0:
        raise BenchError(f"--minutes must be > 0, got {minutes}")
    duration = minutes * 60.0
    warm = warmup_s if warmup_s is not None else min(60.0, duration / 4)
    spec = CaseSpec(
        mode="realtime",
        cameras=cameras,
        duration_s=duration,
        warmup_s=warm,
        threads=threads,
        sample_interval_s=interval_s,
        keep_samples=True,
    )
    case = run_case_in_child(spec, assets, timeout_s=duration + 180.0)
    fit = fit_rss_slope(case["samples"], warm)
    return {
        "minutes": minutes,
        "cameras": cameras,
        "interval_s": interval_s,
        "warmup_s": warm,
        "flat_mb_per_min": flat_mb_per_min,
        "flat": abs(fit["rss_slope_mb_per_min"]) < flat_mb_per_min,
        **fit,
        "keeps_up": case["keeps_up"],
        "frames_delivered": case["frames_delivered"],
        "clips_processed": case["clips_processed"],
        "clips_dropped": case["clips_dropped"],
        "latency": case["latency"],
        "cpu_percent": case["cpu_percent"],
        "batch_sizes": case["batch_sizes"],
        "alerts": case["alerts"],
        "samples": case["samples"],
    }


def soak_line(result: Mapping[str, Any]) -> str:
    r = result
    verdict = "flat" if r["flat"] else "GROWING"
    return (
        f"soak {r['minutes']:g} min, {r['cameras']} cameras: RSS {r['rss_after_warmup_mb']} -> "
        f"{r['rss_end_mb']} MB (max {r['rss_max_mb']}), slope {r['rss_slope_mb_per_min']:+.2f} MB/min "
        f"after a {r['warmup_s']:.0f} s warm-up: {verdict}; keeps up: {r['keeps_up']}, "
        f"dropped {r['clips_dropped']}"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_soak", description=__doc__.split("\n\n")[0])
    add_asset_arguments(p)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    p.add_argument("--cameras", type=int, default=4, help="looping synthetic cameras at 25 fps")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--warmup", type=float, default=None, help="seconds left out of the fit")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: config)")
    p.add_argument("--flat-mb-per-min", type=float, default=1.0, help="slope below which memory is flat")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of the result file")
    p.add_argument("--name", default="memory_soak", help="result file name: <results>/<name>.json")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        load_before = load_average()
        assets = prepare_assets(args.work, args.config, args.checkpoint)
        result = run_soak(
            assets,
            minutes=args.minutes,
            cameras=args.cameras,
            interval_s=args.interval,
            warmup_s=args.warmup,
            threads=args.threads,
            flat_mb_per_min=args.flat_mb_per_min,
        )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result["assets"] = assets.describe()
    result["load_average_before"] = load_before
    result["load_average_after"] = load_average()
    path = write_result(args.name, result, args.results)
    print(soak_line(result))
    print(f"load average before {load_before}, after {result['load_average_after']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
