"""Every benchmark in one run, so that the numbers share one machine state: inference (ORT vs PyTorch eager),
the pipeline sweep (decode floor, pure inference, as-fast-as-possible, naive baseline, real time), and a
short memory soak; then the goals of the benchmark issue, checked.

    python -m bench.bench_all

Writes bench/results/{inference,pipeline,memory_soak,summary}.json, bench/results/summary.md (the tables
and the goals in markdown, for docs/benchmarks.md) and docs/benchmarks_cameras.png (cost against cameras).
The defaults take about 8 minutes on 2 cores; ``--soak-minutes 10`` gives the full soak.
"""

from __future__ import annotations

import argparse
import logging
import math
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_inference import default_threads, inference_table, peak_table, run_inference_bench
from bench.bench_pipeline import REALTIME_SECONDS, pipeline_tables, realtime_video_frames, run_pipeline_bench
from bench.bench_soak import run_soak, soak_line
from bench.common import (
    REPO,
    RESULTS_DIR,
    BenchError,
    add_asset_arguments,
    format_table,
    load_average,
    parse_int_list,
    prepare_assets,
    read_result,
    write_result,
)

log = logging.getLogger("bench.all")

__all__ = ["evaluate_goals", "goals_table", "main", "plot_cameras", "render_report", "summary_markdown"]

PLOT_PATH = REPO / "docs" / "benchmarks_cameras.png"


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def evaluate_goals(
    inference: Mapping[str, Any], pipeline: Mapping[str, Any], soak: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    """The issue's goals with the measured value and whether each is met (``met`` may be None: not run)."""
    goals: list[dict[str, Any]] = []
    for threads in sorted({s["threads"] for s in inference["speedups"]}):
        ratios = [s["ort_over_torch"] for s in inference["speedups"] if s["threads"] == threads]
        geo = float(np.exp(np.mean(np.log(ratios))))
        goals.append(
            {
                "goal": f"ONNX Runtime >= 2x PyTorch eager ({threads} thread(s))",
                "value": f"{min(ratios):.2f}x..{max(ratios):.2f}x, geometric mean {geo:.2f}x "
                f"over backbone/DPC head x batch {sorted({s['batch'] for s in inference['speedups']})}",
                "met": min(ratios) >= 2.0,
                "partly": geo >= 2.0 and min(ratios) < 2.0,
            }
        )
    s = pipeline["summary"]
    largest = max(pipeline["settings"]["cameras"])
    for threads, ratio in s["pipeline_over_pure_at_largest"].items():
        goals.append(
            {
                "goal": f"pipeline >= 0.9x pure inference, same batch ({largest} cams, {threads} thread(s))",
                "value": f"{ratio:.2f}x" if ratio is not None else "-",
                "met": ratio is not None and ratio >= 0.9,
            }
        )
    best = s["best_fast"]
    naive_best = s["naive_best_frames_per_s"]
    same = next(
        r for r in s["fast_rows"] if (r["cameras"], r["threads"]) == (best["cameras"], best["threads"])
    )
    goals.append(
        {
            "goal": ">= 3x the naive baseline (best pipeline vs best naive)",
            "value": (
                f"{best['camera_frames_per_s']:.0f} vs {naive_best:.0f} frames/s = "
                f"{best['camera_frames_per_s'] / naive_best:.2f}x (pipeline {best['cameras']} cameras, "
                f"{best['threads']} thread(s)); same threads: "
                f"{same['pipeline_over_naive_same_threads']:.2f}x"
                if naive_best
                else "-"
            ),
            "met": bool(naive_best) and best["camera_frames_per_s"] / naive_best >= 3.0,
        }
    )
    goals.append(
        {
            "goal": "real time on as many 25 fps cameras as possible",
            "value": f"{s['realtime_cameras']} cameras at {pipeline['settings']['rt_threads']} thread(s) "
            f"(tested {s['realtime_tested']}, first failure {s['realtime_first_failure']})",
            "met": None,
        }
    )
    if soak is not None:
        goals.append(
            {
                "goal": "memory flat over a 10-minute run",
                "value": f"{soak['rss_slope_mb_per_min']:+.2f} MB/min over {soak['minutes']:g} min "
                f"({soak['cameras']} cameras; {soak['rss_after_warmup_mb']} -> {soak['rss_end_mb']} MB)"
                + ("" if soak["minutes"] >= 10 else f" - a {soak['minutes']:g}-minute run, not 10"),
                "met": bool(soak["flat"]),
            }
        )
    return goals


def goals_table(goals: Sequence[Mapping[str, Any]], *, markdown: bool = False) -> str:
    def verdict(g: Mapping[str, Any]) -> str:
        if g["met"] is None:
            return "measured"
        if g["met"]:
            return "met"
        return "partly (mean only)" if g.get("partly") else "NOT met"

    return format_table(
        ["goal", "measured", "verdict"],
        [[g["goal"], g["value"], verdict(g)] for g in goals],
        markdown=markdown,
    )


def plot_cameras(pipeline: Mapping[str, Any], path: Path = PLOT_PATH) -> Path | None:
    """Throughput and real-time cost against the number of cameras, as a PNG (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot")
        return None
    s = pipeline["summary"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    cams = sorted(pipeline["settings"]["cameras"])
    dec = {r["case"]["cameras"]: r["frames_per_s"] for r in pipeline["decode"]}
    ax1.plot(cams, [dec[n] for n in cams], "k--", marker="s", label="decode only (floor of the graph)")
    for t in pipeline["settings"]["threads"]:
        rows = sorted((r for r in s["fast_rows"] if r["threads"] == t), key=lambda r: r["cameras"])
        ax1.plot(
            [r["cameras"] for r in rows],
            [r["camera_frames_per_s"] for r in rows],
            marker="o",
            label=f"pipeline, {t} thread(s)",
        )
    for t, v in s["naive_frames_per_s_by_threads"].items():
        ax1.axhline(v, linestyle=":", color="grey")
        ax1.annotate(
            f"naive, {t} thread(s)", (cams[0], v), textcoords="offset points", xytext=(2, 3), fontsize=8
        )
    ax1.plot(cams, [25 * n for n in cams], color="tab:red", alpha=0.5, label="needed for real time (N x 25)")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xticks(cams, [str(n) for n in cams])
    ax1.set_xlabel("cameras")
    ax1.set_ylabel("camera frames / s")
    ax1.set_title("As fast as possible")
    ax1.legend(fontsize=8)
    rt = sorted(pipeline["realtime"], key=lambda r: r["case"]["cameras"])
    n_rt = [r["case"]["cameras"] for r in rt]
    ax2.plot(n_rt, [r["cpu_percent"] for r in rt], marker="o", color="tab:blue", label="CPU % (100 = 1 core)")
    ax2.plot(n_rt, [r["rss_median_mb"] for r in rt], marker="s", color="tab:green", label="RSS MB")
    ax2b = ax2.twinx()
    p95 = [r["latency"]["p95_ms"] for r in rt]
    ax2b.plot(n_rt, [v if not math.isnan(v) else None for v in p95], marker="^", color="tab:orange")
    ax2b.set_ylabel("clip latency p95 (ms)", color="tab:orange")
    for r in rt:
        if not r["keeps_up"]:
            ax2.axvspan(r["case"]["cameras"] - 0.3, r["case"]["cameras"] + 0.3, color="tab:red", alpha=0.15)
    ax2.set_xticks(n_rt, [str(n) for n in n_rt])
    ax2.set_xlabel("cameras (25 fps each)")
    ax2.set_title(
        f"Real time: cost per camera count (red: falls behind), {pipeline['settings']['rt_threads']} thr"
    )
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_markdown(
    doc: Mapping[str, Any], inference: Mapping[str, Any], pipeline: Mapping[str, Any]
) -> str:
    m = doc["machine"]
    lines = [
        f"Command: `{doc['command']}`",
        "",
        f"Date (UTC): {doc['date_utc']}; git {m['git_commit']}",
        "",
        f"Machine: {m['cpu_model']} ({', '.join(m['cpu_features'])}), {m['nproc']} cores, "
        f"{m['ram_gib']} GiB RAM; "
        f"Python {m['python']}, numpy {m['numpy']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
        f"GStreamer {m['gstreamer']}, OpenCV {m['opencv']}",
        "",
        f"Load average (uptime) before: {doc['uptime_before']}",
        "",
        f"Load average (uptime) after: {doc['uptime_after']}",
        "",
        f"Total time: {doc['seconds'] / 60:.1f} min",
        "",
        "### Goals",
        "",
        goals_table(doc["goals"], markdown=True),
        "",
        "### Inference",
        "",
        inference_table(inference, markdown=True),
        "",
        peak_table(inference, markdown=True),
        "",
        "### Pipeline",
        "",
        pipeline_tables(pipeline, markdown=True),
        "",
    ]
    if doc.get("soak"):
        lines += ["### Soak", "", soak_line(doc["soak"]), ""]
    return "\n".join(lines)


def render_report(results: Path = RESULTS_DIR, plot: Path = PLOT_PATH) -> tuple[Path, Path | None]:
    """Write ``<results>/summary.md`` and the plot from the JSON results of an earlier run."""
    inference = read_result("inference", results)
    pipeline = read_result("pipeline", results)
    summary = read_result("summary", results)  # carries the run's command, machine and date
    md_path = results / "summary.md"
    md_path.write_text(summary_markdown(summary, inference, pipeline))
    return md_path, plot_cameras(pipeline, plot)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_all", description=__doc__.split("\n\n")[0])
    add_asset_arguments(p)
    p.add_argument("--cameras", default="1,2,4,8,16", help="camera counts of the pipeline sweep")
    p.add_argument("--threads", default=None, help="thread counts (default: 1,<config engines.threads>)")
    p.add_argument("--soak-minutes", type=float, default=1.5, help="memory soak length (0: skip)")
    p.add_argument("--soak-cameras", type=int, default=4, help="cameras of the memory soak")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1,2 cameras, short cases, no soak")
    p.add_argument(
        "--report-only", action="store_true", help="measure nothing: redo summary.md and the plot from JSON"
    )
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder for the JSON results")
    p.add_argument("--plot", type=Path, default=PLOT_PATH, help="PNG of cost against cameras")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.report_only:
        try:
            md_path, plot_path = render_report(args.results, args.plot)
        except BenchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {md_path}" + (f", {plot_path}" if plot_path else ""))
        return 0
    started = time.monotonic()
    uptime_before, load_before = _uptime(), load_average()
    print(f"uptime before: {uptime_before}", flush=True)
    try:
        cameras = parse_int_list("1,2" if args.quick else args.cameras)
        threads = parse_int_list(args.threads) if args.threads else None
        quick: dict[str, Any] = {"decode_s": 2.0, "fast_s": 3.0, "naive_s": 2.0, "rt_s": 4.0, "pure_s": 0.3}
        rt_s = quick["rt_s"] if args.quick else REALTIME_SECONDS
        # Videos that outlast a real-time case: a loop restarts every camera's stream (bench_pipeline).
        assets = prepare_assets(args.work, args.config, args.checkpoint, frames=realtime_video_frames(rt_s))
        print("== inference (ONNX Runtime vs PyTorch eager)", flush=True)
        inference = run_inference_bench(
            assets,
            threads or default_threads(args.config),
            [1, 4] if args.quick else [1, 4, 16],
            repeats=2 if args.quick else 3,
            min_time_s=0.1 if args.quick else 0.3,
        )
        print(inference_table(inference), flush=True)
        print("== pipeline", flush=True)
        pipeline = run_pipeline_bench(
            assets, cameras, threads=threads, **(quick if args.quick else {}), progress=_progress
        )
        soak = None
        soak_minutes = 0.0 if args.quick else args.soak_minutes
        if soak_minutes > 0:
            print(f"== soak ({soak_minutes:g} min, {args.soak_cameras} cameras)", flush=True)
            soak = run_soak(assets, minutes=soak_minutes, cameras=args.soak_cameras)
            print(soak_line(soak), flush=True)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    uptime_after, load_after = _uptime(), load_average()
    shared = {"load_average_before": load_before, "load_average_after": load_after}
    write_result("inference", {**inference, **shared}, args.results)
    write_result("pipeline", {**pipeline, **shared}, args.results)
    if soak is not None:
        write_result("memory_soak", {**soak, "assets": assets.describe(), **shared}, args.results)
    goals = evaluate_goals(inference, pipeline, soak)
    summary = {
        "uptime_before": uptime_before,
        "uptime_after": uptime_after,
        **shared,
        "seconds": round(time.monotonic() - started, 1),
        "goals": goals,
        "pipeline_summary": pipeline["summary"],
        "inference_speedups": inference["speedups"],
        "soak": {k: v for k, v in soak.items() if k != "samples"} if soak else None,
    }
    path = write_result("summary", summary, args.results)
    _, plot = render_report(args.results, args.plot)
    print()
    print(pipeline_tables(pipeline))
    print()
    print(goals_table(goals))
    print(f"\nuptime after: {uptime_after}")
    print(
        f"took {summary['seconds'] / 60:.1f} min; wrote {path.parent}/*.json, summary.md"
        + (f", {plot}" if plot else "")
    )
    return 0


def _progress(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
