"""Where the inference worker's time goes in the as-fast-as-possible pipeline, and two ways to give it a core.

    .venv/bin/python -m bench.bench_worker                  # 16 cameras, 1 thread, 3 variants x 2 repeats
    .venv/bin/python -m bench.bench_worker --cameras 8 --repeats 3

For each variant the 16-camera ``fast`` case of bench_pipeline runs in a fresh child process, with the
scheduler worker instrumented: wall and thread-CPU time inside ONNX Runtime's ``run`` and in the rest of
``infer`` (batching, normalisation, DPC history, scoring). Variants:

* ``nice0``, ``nice10``, ``nice19``: the cameras' streaming threads at that nice value
  (``scheduler.decode_nice``; 10 is the default, 0 is how every run before it worked).
* ``pinned``: nice 0, the worker thread on CPU 0 and every other thread of the process on CPU 1
  (needs 2 CPUs).
* ``model_half`` (nice 10): a pad probe drops every other frame of the model branch before scaling and
  conversion, and clips are assembled with stride 1 and half the hop, so the model sees the same clips
  from half the frame callbacks. What keeping unused frames out of Python would buy.
* ``display_1in25`` (nice 10): the display (event-media) branch keeps 1 frame in 25. What thinning it
  would buy.

Then a hardware check: ONNX Runtime alone (backbone + DPC head, batch 8, 1 thread) pinned to CPU 0, with
CPU 1 idle or running an H.264 decode loop of the same videos (``gst-launch-1.0``), interleaved.

Writes ``bench/results/worker_time.json`` and prints both tables. The first four variants change only thread
affinity and nice values; the last two are experiments on what reaches Python, not product settings.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.bench_inference import COMPONENTS, component_feeds
from bench.bench_pipeline import CaseSpec, run_case
from bench.common import (
    DEFAULT_WORK,
    REPO,
    RESULTS_DIR,
    Assets,
    BenchError,
    format_table,
    module_command,
    prepare_assets,
    write_result,
)
from core.gst import init_gstreamer
from engines.backends import load_backend
from engines.backends.onnxruntime import OnnxRuntimeBackend
from engines.manifest import load_manifest, manifest_path
from pipeline.clips import ClipAssembler
from pipeline.cpu.graph import CameraGraph
from pipeline.cpu.scheduler import BatchScheduler
from pipeline.cpu.sources import CameraPipeline

VARIANTS = ("nice0", "nice10", "nice19", "pinned", "model_half", "display_1in25")
RESULT_PREFIX = "WORKER_RESULT "


def _timed(store: list[tuple[float, float]], fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            store.append((time.perf_counter() - w0, time.thread_time() - c0))

    return wrapper


def _thin_branch(branch: str, keep_every: int) -> None:
    """Keep 1 frame in ``keep_every`` of ``branch``, dropped before scaling and conversion (see the module
    docstring); for the model branch, assemble the same clips from the kept frames."""
    gst = init_gstreamer()
    original_init = CameraPipeline.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        counter = itertools.count()

        def probe(_pad: Any, _info: Any) -> Any:
            return gst.PadProbeReturn.OK if next(counter) % keep_every == 0 else gst.PadProbeReturn.DROP

        scale = self.pipeline.get_by_name(f"{branch}-scale")
        scale.get_static_pad("sink").add_probe(gst.PadProbeType.BUFFER, probe)

    CameraPipeline.__init__ = init  # type: ignore[method-assign]
    if branch == "model":

        def from_config(cls: Any, cfg: Any) -> Any:
            if cfg.frame_stride != keep_every or cfg.clip_hop % keep_every:
                raise BenchError(f"model_half needs frame_stride {keep_every} and an even clip_hop")
            return cls(cfg.clip_len, 1, cfg.clip_hop // keep_every)

        ClipAssembler.from_config = classmethod(from_config)  # type: ignore[method-assign,assignment]


def _child(variant: str, cameras: int, seconds: float, assets: Assets) -> dict[str, Any]:
    infer_t: list[tuple[float, float]] = []
    ort_t: list[tuple[float, float]] = []
    original_run = BatchScheduler._run
    original_graph_init = CameraGraph.__init__
    nice = int(variant[4:]) if variant.startswith("nice") else 0
    if variant in ("model_half", "display_1in25"):
        nice = 10
        if variant == "model_half":
            _thin_branch("model", 2)
        else:
            _thin_branch("display", 25)

    def run(self: Any) -> None:
        if variant == "pinned":
            os.sched_setaffinity(0, {0})
        self._infer = _timed(infer_t, self._infer)
        original_run(self)

    def graph_init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["decode_nice"] = nice
        original_graph_init(self, *args, **kwargs)

    BatchScheduler._run = run  # type: ignore[method-assign]
    CameraGraph.__init__ = graph_init  # type: ignore[method-assign]
    OnnxRuntimeBackend._infer = _timed(ort_t, OnnxRuntimeBackend._infer)  # type: ignore[method-assign]
    if variant == "pinned":
        os.sched_setaffinity(0, {1})
    spec = CaseSpec(mode="fast", cameras=cameras, duration_s=seconds, warmup_s=2.0, threads=1, max_batch=8)
    result = run_case(spec, assets)
    # Drop the first 10 batches (warm-up); ORT runs twice per batch (backbone, DPC head).
    inf, ort = infer_t[10:], ort_t[20:]
    batches = len(inf)
    if batches == 0:
        raise BenchError(f"{variant}: no batches measured")
    ort_wall = sum(w for w, _ in ort) * batches / max(1, len(ort) / 2)
    ort_cpu = sum(c for _, c in ort) * batches / max(1, len(ort) / 2)
    inf_wall, inf_cpu = sum(w for w, _ in inf), sum(c for _, c in inf)
    return {
        "variant": variant,
        "clips_per_s": result["clips_per_s"],
        "cpu_percent": result["cpu_percent"],
        "mean_batch": result["mean_batch"],
        "batches": batches,
        "ms_per_batch": {
            "ort_wall": round(1000 * ort_wall / batches, 1),
            "ort_cpu": round(1000 * ort_cpu / batches, 1),
            "rest_wall": round(1000 * (inf_wall - ort_wall) / batches, 1),
            "rest_cpu": round(1000 * (inf_cpu - ort_cpu) / batches, 1),
        },
    }


def _run_child(variant: str, cameras: int, seconds: float, assets: Assets) -> dict[str, Any]:
    payload = json.dumps(
        {"variant": variant, "cameras": cameras, "seconds": seconds, "assets": assets.to_json()}
    )
    proc = subprocess.run(
        module_command("bench.bench_worker", "--child", payload),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=seconds + 180,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise BenchError(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX) :])
    return result


def _ort_alone(engines_dir: Path, video: Path, seconds: float, repeats: int) -> list[dict[str, Any]]:
    """ORT (backbone + DPC head, batch 8, 1 thread) on CPU 0; CPU 1 idle or decoding H.264 in a loop."""
    os.sched_setaffinity(0, {0})
    engines = []
    for component in COMPONENTS:
        manifest = load_manifest(manifest_path(engines_dir, component))
        engines.append((load_backend(manifest, "onnxruntime", threads=1), component_feeds(manifest, 8)))
    gst = shutil.which("gst-launch-1.0")
    decode = (
        f"while true; do {gst} -q filesrc location={video} ! qtdemux ! h264parse ! avdec_h264 max-threads=1 "
        "! videoconvert ! video/x-raw,format=RGB ! fakesink; done"
    )
    rows = []
    for rep in range(repeats):
        for load in ("idle", "h264 decode loop"):
            proc = None
            if load != "idle":
                if gst is None:
                    continue
                proc = subprocess.Popen(["taskset", "-c", "1", "bash", "-c", decode], start_new_session=True)
                time.sleep(1.0)
            try:
                for backend, feeds in engines:
                    backend.infer(feeds)
                calls, started = 0, time.perf_counter()
                while time.perf_counter() - started < seconds:
                    for backend, feeds in engines:
                        backend.infer(feeds)
                    calls += 1
                clips_s = 8 * calls / (time.perf_counter() - started)
            finally:
                if proc is not None:
                    os.killpg(proc.pid, 9)
                    proc.wait()
            rows.append({"repeat": rep, "cpu1": load, "clips_per_s": round(clips_s, 1)})
    for backend, _ in engines:
        backend.close()
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_worker", description=__doc__.splitlines()[0])
    p.add_argument("--cameras", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="length of each pipeline case")
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        result = _child(job["variant"], job["cameras"], job["seconds"], Assets.from_json(job["assets"]))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench_worker needs 2 CPUs (it pins threads to CPU 0 and CPU 1)")
    assets = prepare_assets(DEFAULT_WORK)
    runs: list[dict[str, Any]] = []
    for rep in range(args.repeats):
        for variant in VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS)):
            r = _run_child(variant, args.cameras, args.seconds, assets)
            r["repeat"] = rep
            runs.append(r)
            print(f"{variant} #{rep}: {r['clips_per_s']} clips/s {r['ms_per_batch']}", flush=True)
    video = sorted(assets.videos)[0][0]
    alone = _ort_alone(Path(assets.engines_dir), Path(video), seconds=8.0, repeats=args.repeats)
    table = []
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        med = {k: statistics.median(r["ms_per_batch"][k] for r in mine) for k in mine[0]["ms_per_batch"]}
        table.append(
            [
                variant,
                len(mine),
                statistics.median(r["clips_per_s"] for r in mine),
                med["ort_wall"],
                med["ort_cpu"],
                med["rest_wall"],
                med["rest_cpu"],
                statistics.median(r["cpu_percent"] for r in mine),
            ]
        )
    head = ["variant", "runs", "clips/s", "ORT wall ms", "ORT CPU ms", "rest wall ms", "rest CPU ms", "CPU %"]
    print(format_table(head, table))
    by_load: dict[str, list[float]] = {}
    for row in alone:
        by_load.setdefault(row["cpu1"], []).append(row["clips_per_s"])
    print(
        format_table(
            ["CPU 1", "ORT alone on CPU 0, clips/s (each repeat)"], [[k, v] for k, v in by_load.items()]
        )
    )
    write_result(
        "worker_time",
        {
            "settings": {
                "cameras": args.cameras,
                "threads": 1,
                "max_batch": 8,
                "seconds": args.seconds,
                "repeats": args.repeats,
                "variants": list(VARIANTS),
            },
            "assets": assets.describe(),
            "spec": asdict(
                CaseSpec(
                    mode="fast",
                    cameras=args.cameras,
                    duration_s=args.seconds,
                    warmup_s=2.0,
                    threads=1,
                    max_batch=8,
                )
            ),
            "runs": runs,
            "ort_alone": alone,
        },
        args.results,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
