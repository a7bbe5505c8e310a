"""Appearance encoder benchmark: the frozen MobileNetV2 trunk (engines/appearance.py) in ONNX Runtime on the
CPU, per frame, at the demo's frame size and at 320x240.

    python -m bench.bench_appearance [--sizes 144x192,240x320] [--batches 1,8] [--threads 1] [--min-time 1.0]

For each frame size (height x width) it exports the encoder with the pretrained weights (the same
``export_onnx`` as ``zsad build-engines``, under ``--work``), checks ONNX Runtime against torch at every batch
size (max relative error), counts the FLOPs of one frame with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions; the bilinear upsampling, ReLU6 and residual adds are not counted, so it is a lower bound; a
multiply-add is 2 FLOPs), then times ONNX Runtime sessions set up as ``engines.backends.onnxruntime`` sets
them (``--threads`` intra-op threads, one inter-op thread, workers not spinning: ``engines.spin: false``).
A block calls the session until ``--min-time`` seconds and ``--min-calls`` calls have passed, after one
untimed warm-up call; ms per frame is the call time divided by the batch. With one thread ONNX Runtime runs
on the calling thread, so the calling thread's CPU time per call (``time.thread_time``) is recorded too: on a
shared, loaded machine it moves far less than the wall time, which also counts the time other processes
held the core.

Writes bench/results/appearance.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import (
    RESULTS_DIR,
    BenchError,
    format_table,
    latency_stats,
    load_average,
    parse_int_list,
    write_result,
)
from engines.appearance import AppearanceEncoder
from engines.encoders import EncoderWeightsError, find_mobilenet_weights
from engines.export import export_onnx, max_rel_error
from engines.manifest import appearance_io, file_sha256

log = logging.getLogger("bench.appearance")

__all__ = ["main", "parse_sizes", "run_appearance_bench"]


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"144x192,240x320"`` -> ``[(144, 192), (240, 320)]`` (height x width)."""
    sizes = []
    for part in text.split(","):
        h, sep, w = part.strip().partition("x")
        if not sep or not h.isdigit() or not w.isdigit():
            raise BenchError(f"--sizes: {part!r} is not HEIGHTxWIDTH")
        sizes.append((int(h), int(w)))
    return sizes


def _session(path: Path, threads: int) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def time_calls(
    fn: Callable[[], object], min_time_s: float, min_calls: int
) -> tuple[list[float], list[float]]:
    """Call ``fn`` once untimed, then until both ``min_time_s`` and ``min_calls`` are reached; return each
    timed call's wall seconds and the calling thread's CPU seconds."""
    fn()
    wall: list[float] = []
    cpu: list[float] = []
    started = time.perf_counter()
    while len(wall) < min_calls or time.perf_counter() - started < min_time_s:
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return wall, cpu


def run_appearance_bench(
    sizes: list[tuple[int, int]],
    batches: list[int],
    threads: int,
    weights: str | None,
    work: Path,
    min_time_s: float,
    min_calls: int,
) -> dict[str, Any]:
    try:
        path = find_mobilenet_weights(weights)
    except EncoderWeightsError as exc:
        raise BenchError(str(exc)) from exc
    digest = file_sha256(path)
    encoder = AppearanceEncoder.from_weights(path, digest)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    for height, width in sizes:
        inputs, outputs = appearance_io("mobilenet_v2", height, width)
        onnx_path = export_onnx(encoder, inputs, outputs, work / f"appearance_{height}x{width}.onnx")
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            encoder(torch.zeros(1, 3, height, width))
        flops = int(counter.get_total_flops())
        session = _session(onnx_path, threads)
        for batch in batches:
            frames = rng.standard_normal((batch, 3, height, width)).astype(np.float32)
            with torch.no_grad():
                want = encoder(torch.from_numpy(frames)).numpy()
            got = session.run(["features"], {"frames": frames})[0]
            feeds = {"frames": frames}
            wall, cpu = time_calls(partial(session.run, ["features"], feeds), min_time_s, min_calls)
            stats = latency_stats(wall)
            cpu_stats = latency_stats(cpu)
            row = {
                "height": height,
                "width": width,
                "batch": batch,
                "threads": threads,
                "features_shape": list(got.shape),
                "gflops_per_frame": round(flops / 1e9, 3),
                "max_rel_error_vs_torch": max_rel_error(want, got),
                "call": stats,
                "call_thread_cpu": cpu_stats,
                "ms_per_frame_p50": round(float(stats["p50_ms"]) / batch, 3),
                "ms_per_frame_mean": round(float(stats["mean_ms"]) / batch, 3),
                "cpu_ms_per_frame_p50": round(float(cpu_stats["p50_ms"]) / batch, 3),
            }
            rows.append(row)
            log.info(
                "%dx%d batch %d: %.2f ms/frame wall, %.2f CPU (p50), %.3f GFLOP/frame, rel err %.1e",
                height,
                width,
                batch,
                row["ms_per_frame_p50"],
                row["cpu_ms_per_frame_p50"],
                row["gflops_per_frame"],
                row["max_rel_error_vs_torch"],
            )
    return {"weights": str(path), "weights_sha256": digest, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_appearance",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes", default="144x192,240x320", help="frame sizes HEIGHTxWIDTH, comma-separated"
    )
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (and torch's)")
    parser.add_argument("--weights", default=None, help="MobileNetV2 weights (default: the usual lookup)")
    parser.add_argument("--work", type=Path, default=Path("out/bench/appearance"), help="ONNX files go here")
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per timed block")
    parser.add_argument("--min-calls", type=int, default=10, help="calls per timed block")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of appearance.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        load_before = load_average()
        payload = run_appearance_bench(
            parse_sizes(args.sizes),
            parse_int_list(args.batches),
            args.threads,
            args.weights,
            args.work,
            args.min_time,
            args.min_calls,
        )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    payload["load_average_before"] = load_before
    payload["load_average_after"] = load_average()
    path = write_result("appearance", payload, args.results)
    rows = [
        (
            f"{r['height']}x{r['width']}",
            r["batch"],
            r["threads"],
            f"{r['ms_per_frame_p50']:.2f}",
            f"{r['cpu_ms_per_frame_p50']:.2f}",
            f"{r['call']['p95_ms']:.1f}",
            f"{r['gflops_per_frame']:.3f}",
            f"{r['max_rel_error_vs_torch']:.1e}",
        )
        for r in payload["rows"]
    ]
    print(
        format_table(
            (
                "frames HxW",
                "batch",
                "threads",
                "wall ms/frame p50",
                "CPU ms/frame p50",
                "call p95 ms",
                "GFLOP/frame",
                "rel err vs torch",
            ),
            rows,
        )
    )
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
