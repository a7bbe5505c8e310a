"""Scheduler queue depth vs throughput: the as-fast-as-possible pipeline case at several
``scheduler.queue_size`` values, interleaved and repeated, in one run.

    .venv/bin/python -m bench.bench_queue                     # 16 cameras, queues 4, 8, 32, 2 repeats
    .venv/bin/python -m bench.bench_queue --cameras 1,16 --queues 8,32

Writes ``bench/results/queue_depth.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from pathlib import Path

from bench.bench_pipeline import CaseSpec, run_case_in_child
from bench.common import DEFAULT_WORK, RESULTS_DIR, prepare_assets, write_result

KEYS = ("clips_per_s", "camera_frames_per_s", "infer_latency_p50_ms", "cpu_percent", "rss_median_mb")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_queue", description=__doc__.splitlines()[0])
    p.add_argument("--cameras", default="16", help="camera counts")
    p.add_argument("--queues", default="4,8,32", help="scheduler.queue_size values")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seconds", type=float, default=15.0, help="length of each case")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    assets = prepare_assets(DEFAULT_WORK)
    runs = []
    for cameras in [int(c) for c in args.cameras.split(",")]:
        for rep in range(args.repeats):
            queues = [int(q) for q in args.queues.split(",")]
            for q in queues if rep % 2 == 0 else queues[::-1]:  # A B C, C B A: drift hits all alike
                spec = CaseSpec(
                    mode="fast",
                    cameras=cameras,
                    duration_s=args.seconds,
                    warmup_s=2.0,
                    threads=args.threads,
                    queue_size=q,
                )
                r = run_case_in_child(spec, assets)
                runs.append({"cameras": cameras, "queue_size": q, "repeat": rep, **{k: r[k] for k in KEYS}})
                print(
                    f"cameras {cameras:2d} queue {q:3d} repeat {rep}: {r['clips_per_s']:.1f} clips/s, "
                    f"RSS {r['rss_median_mb']:.0f} MB",
                    flush=True,
                )
    print("\n| cameras | queue_size | clips/s (median) | RSS MB (median) |\n|---|---|---|---|")
    for key in sorted({(r["cameras"], r["queue_size"]) for r in runs}):
        sel = [r for r in runs if (r["cameras"], r["queue_size"]) == key]
        print(
            f"| {key[0]} | {key[1]} | {statistics.median(r['clips_per_s'] for r in sel):.1f} | "
            f"{statistics.median(r['rss_median_mb'] for r in sel):.0f} |"
        )
    payload = {"seconds": args.seconds, "threads": args.threads, "runs": runs}
    write_result("queue_depth", payload, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
