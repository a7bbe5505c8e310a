"""Inference benchmark: PyTorch eager vs ONNX Runtime on the backbone and the DPC head, same weights, same
inputs, same threads, in one process, interleaved.

    python -m bench.bench_inference [--threads 1,2] [--batches 1,4,16] [--repeats 3] [--min-time 0.4]

For each thread count, component and batch size the two runtimes are timed in alternating order
(ORT, torch, then torch, ORT, ...) so that drift of a shared machine falls on both. A block calls the engine
until ``--min-time`` seconds and ``--min-calls`` calls have passed, after one untimed warm-up call.

Throughput is clips/s (batch / call time); latency is per call (the whole batch). Achieved GFLOP/s uses the
model's FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and
attention; elementwise ops are not counted, so the figure is a lower bound) against a float32 ``torch.mm``
loop (1024^3 and 2048^3) at the same thread count: the machine's practical matmul peak.

Writes bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    RESULTS_DIR,
    Assets,
    BenchError,
    add_asset_arguments,
    format_table,
    latency_stats,
    load_average,
    parse_int_list,
    prepare_assets,
    write_result,
)
from core.config import load_config
from engines.backends import load_backend
from engines.export import component_module
from engines.manifest import load_manifest, manifest_path

log = logging.getLogger("bench.inference")

__all__ = [
    "COMPONENTS",
    "component_feeds",
    "count_flops",
    "main",
    "measure_matmul_peak",
    "run_inference_bench",
    "time_calls",
]

COMPONENTS = ("backbone", "dpc_head")
RUNTIMES = ("onnxruntime", "torch")


def component_feeds(manifest: Any, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs of ``batch`` for every input of an engine manifest (speed does not
    depend on the values; the DPC head's token inputs are read as they come)."""
    rng = np.random.default_rng(seed)
    return {s.name: rng.standard_normal(s.with_batch(batch)).astype(np.float32) for s in manifest.inputs}


def time_calls(fn: Callable[[], Any], min_time_s: float, min_calls: int) -> list[float]:
    """Call ``fn`` once untimed, then until both ``min_time_s`` and ``min_calls`` are reached; return
    each timed call's duration in seconds."""
    fn()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - started < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def count_flops(model: Any, component: str, manifest: Any) -> dict[str, Any]:
    """FLOPs of one clip (batch 1) through ``component`` of a :class:`~engines.model.ZsadModel`.

    Returns ``{"flops": total, "by_op": {op: flops}}``. A multiply-add counts as 2 FLOPs.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    module = component_module(model, component, manifest.input_layout).eval()
    feeds = component_feeds(manifest, 1)
    args = [torch.from_numpy(feeds[s.name]) for s in manifest.inputs]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*args)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(counter.get_total_flops()), "by_op": by_op}


def measure_matmul_peak(
    threads: int, sizes: Sequence[int] = (1024, 2048), min_time_s: float = 0.5
) -> dict[str, Any]:
    """Best float32 ``torch.mm`` GFLOP/s at ``threads`` intra-op threads for each square size."""
    import torch

    torch.set_num_threads(threads)
    by_size: dict[str, float] = {}
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        a = torch.randn(n, n, generator=g)
        b = torch.randn(n, n, generator=g)
        out = torch.empty(n, n)
        times = time_calls(partial(torch.mm, a, b, out=out), min_time_s, 3)
        by_size[str(n)] = round(2.0 * n**3 / min(times) / 1e9, 2)
    return {"threads": threads, "gflops": max(by_size.values()), "by_size": by_size}


def run_inference_bench(
    assets: Assets,
    threads_list: Sequence[int],
    batches: Sequence[int],
    *,
    repeats: int = 3,
    min_time_s: float = 0.4,
    min_calls: int = 3,
    peak_sizes: Sequence[int] = (1024, 2048),
    peak_time_s: float = 0.5,
) -> dict[str, Any]:
    """Time both runtimes on both components; see the module docstring. Returns the result document.

    The matmul peak is measured before and after each thread count's runs (``peak_sizes``, square, each
    for ``peak_time_s``); the higher of the two is the peak.
    """
    import torch

    from engines.model import load_checkpoint

    if repeats < 1:
        raise BenchError(f"repeats must be >= 1, got {repeats}")
    manifests = {c: load_manifest(manifest_path(assets.engines_dir, c)) for c in COMPONENTS}
    model, _ = load_checkpoint(assets.checkpoint)
    model.eval()
    flops = {c: count_flops(model, c, manifests[c]) for c in COMPONENTS}
    # One torch backend per component (torch's thread count is process-wide and set before each block);
    # one ONNX Runtime session per component and thread count (intra-op threads are fixed per session).
    torch_backends = {c: load_backend(manifests[c], "torch", threads=0, model=model) for c in COMPONENTS}
    cells: list[dict[str, Any]] = []
    peaks: dict[int, dict[str, Any]] = {}
    for threads in threads_list:
        peak_before = measure_matmul_peak(threads, peak_sizes, peak_time_s)
        # Both runtimes split each operator across their threads, like for like; the pipeline's default
        # splits the batch instead (engines.parallel, docs/engines.md), which bench_pipeline measures.
        ort_backends = {
            c: load_backend(manifests[c], "onnxruntime", threads=threads, parallel="operator")
            for c in COMPONENTS
        }
        for component in COMPONENTS:
            for batch in batches:
                feeds = component_feeds(manifests[component], batch, seed=batch)
                runners: dict[str, Callable[[Mapping[str, np.ndarray]], Any]] = {
                    "onnxruntime": ort_backends[component],
                    "torch": torch_backends[component],
                }
                calls: dict[str, list[float]] = {r: [] for r in RUNTIMES}
                per_rep: dict[str, list[float]] = {r: [] for r in RUNTIMES}
                for rep in range(repeats):
                    order = RUNTIMES if rep % 2 == 0 else RUNTIMES[::-1]
                    for runtime in order:
                        torch.set_num_threads(threads)
                        run = runners[runtime]
                        times = time_calls(partial(run, feeds), min_time_s, min_calls)
                        calls[runtime] += times
                        per_rep[runtime].append(batch * len(times) / sum(times))
                for runtime in RUNTIMES:
                    clips_s = float(np.median(per_rep[runtime]))
                    gflops = flops[component]["flops"] * clips_s / 1e9
                    cells.append(
                        {
                            "component": component,
                            "batch": batch,
                            "threads": threads,
                            "runtime": runtime,
                            "clips_per_s": round(clips_s, 2),
                            "clips_per_s_repeats": [round(x, 2) for x in per_rep[runtime]],
                            "latency": latency_stats(calls[runtime]),
                            "gflops": round(gflops, 2),
                        }
                    )
                log.info(
                    "%s b%d t%d: ort %.1f clips/s, torch %.1f clips/s",
                    component,
                    batch,
                    threads,
                    cells[-2]["clips_per_s"],
                    cells[-1]["clips_per_s"],
                )
        for backend in ort_backends.values():
            backend.close()
        peak_after = measure_matmul_peak(threads, peak_sizes, peak_time_s)
        best = max(peak_before["gflops"], peak_after["gflops"])
        peaks[threads] = {"gflops": best, "before": peak_before, "after": peak_after}
    for cell in cells:
        cell["fraction_of_peak"] = round(cell["gflops"] / peaks[cell["threads"]]["gflops"], 4)
    speedups = []
    for threads in threads_list:
        for component in COMPONENTS:
            for batch in batches:
                pick = {
                    c["runtime"]: c
                    for c in cells
                    if (c["threads"], c["component"], c["batch"]) == (threads, component, batch)
                }
                speedups.append(
                    {
                        "component": component,
                        "batch": batch,
                        "threads": threads,
                        "ort_over_torch": round(
                            pick["onnxruntime"]["clips_per_s"] / pick["torch"]["clips_per_s"], 3
                        ),
                    }
                )
    return {
        "assets": assets.describe(),
        "settings": {
            "threads": list(threads_list),
            "batches": list(batches),
            "repeats": repeats,
            "min_time_s": min_time_s,
            "min_calls": min_calls,
            "order": "alternating per repeat: ORT,torch then torch,ORT",
        },
        "flops_per_clip": flops,
        "matmul_peak": {str(k): v for k, v in peaks.items()},
        "cells": cells,
        "speedups": speedups,
    }


def inference_table(result: Mapping[str, Any], *, markdown: bool = False) -> str:
    """ORT vs torch side by side, one row per (component, batch, threads)."""
    rows = []
    by_key: dict[tuple[str, int, int], dict[str, Any]] = {}
    for c in result["cells"]:
        by_key.setdefault((c["component"], c["batch"], c["threads"]), {})[c["runtime"]] = c
    for (component, batch, threads), pair in by_key.items():
        o, t = pair["onnxruntime"], pair["torch"]
        rows.append(
            [
                component,
                batch,
                threads,
                o["clips_per_s"],
                t["clips_per_s"],
                f"{o['clips_per_s'] / t['clips_per_s']:.2f}x",
                f"{o['latency']['p50_ms']:.1f} / {o['latency']['p95_ms']:.1f}",
                f"{t['latency']['p50_ms']:.1f} / {t['latency']['p95_ms']:.1f}",
                o["gflops"],
                f"{100 * o['fraction_of_peak']:.1f}%",
                f"{100 * t['fraction_of_peak']:.1f}%",
            ]
        )
    headers = [
        "component",
        "batch",
        "threads",
        "ORT clips/s",
        "torch clips/s",
        "ORT/torch",
        "ORT p50/p95 ms",
        "torch p50/p95 ms",
        "ORT GFLOP/s",
        "ORT % peak",
        "torch % peak",
    ]
    return format_table(headers, rows, markdown=markdown)


def peak_table(result: Mapping[str, Any], *, markdown: bool = False) -> str:
    rows = []
    for threads, p in result["matmul_peak"].items():
        rows.append([threads, p["gflops"], p["before"]["gflops"], p["after"]["gflops"]])
    flops = result["flops_per_clip"]
    table = format_table(["threads", "matmul peak GFLOP/s", "before", "after"], rows, markdown=markdown)
    counted = ", ".join(f"{c} {v['flops'] / 1e9:.3f} GFLOP/clip" for c, v in flops.items())
    return f"{table}\n\nFLOPs counted per clip: {counted}"


def default_threads(config_path: Path) -> list[int]:
    """1 and the config's ``engines.threads`` (0 means one per core), without repeats."""
    configured = load_config(config_path).engines.threads or (os.cpu_count() or 1)
    return sorted({1, configured})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_inference", description=__doc__.split("\n\n")[0])
    add_asset_arguments(p, "base config (its model section)")
    p.add_argument("--threads", default=None, help="comma-separated thread counts (default: 1,<config>)")
    p.add_argument("--batches", default="1,4,16", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats per runtime")
    p.add_argument("--min-time", type=float, default=0.4, help="seconds per timed block")
    p.add_argument("--min-calls", type=int, default=3, help="calls per timed block")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder for inference.json")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        threads = parse_int_list(args.threads) if args.threads else default_threads(args.config)
        batches = parse_int_list(args.batches)
        load_before = load_average()
        assets = prepare_assets(args.work, args.config, args.checkpoint)
        result = run_inference_bench(
            assets,
            threads,
            batches,
            repeats=args.repeats,
            min_time_s=args.min_time,
            min_calls=args.min_calls,
        )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["load_average_before"] = load_before
    result["load_average_after"] = load_average()
    path = write_result("inference", result, args.results)
    print(inference_table(result))
    print()
    print(peak_table(result))
    print(f"\nload average before {load_before}, after {result['load_average_after']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
