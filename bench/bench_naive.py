"""The naive baseline: how a user of a research repository would run the model on camera files.

    python -m bench.bench_naive [--cameras 4] [--threads 2] [--budget 60]

OpenCV decodes (``cv2.VideoCapture``, resize, BGR->RGB), then every clip goes through the PyTorch model in
eager mode (``torch.no_grad``), batch 1, one camera after the other, nothing overlapped: decode a frame,
and when it completes a clip, run the backbone and then the DPC head on it before reading the next frame.
Same checkpoint, same clip grid (``clip_len``, ``frame_stride``, ``clip_hop``), same DPC history and the
same per-stream score (max of each error map) as the product path; no fusion, alerts or media.

Camera ``i`` is synthetic video ``i % videos`` (as in bench_pipeline.py). The run stops at ``--budget``
seconds (a camera in progress stops mid-file): one camera at a time, its throughput does not depend on the
number of cameras, and N cameras take N times one camera's time.

Writes bench/results/naive.json. Needs ``opencv-python-headless`` (requirements/dev.txt).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    RESULTS_DIR,
    Assets,
    BenchError,
    add_asset_arguments,
    format_table,
    load_average,
    prepare_assets,
    write_result,
)
from core.config import load_config
from plugins.streams import MAP_STREAMS

log = logging.getLogger("bench.naive")

__all__ = ["NaiveModel", "main", "run_naive", "score_camera"]


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise BenchError(
            "the naive baseline needs OpenCV: pip install opencv-python-headless (requirements/dev.txt)"
        ) from exc
    return cv2


class NaiveModel:
    """The checkpoint in PyTorch eager mode plus what a clip needs: size, clip grid, normalisation."""

    def __init__(self, assets: Assets, threads: int) -> None:
        import torch

        from engines.model import load_checkpoint

        if threads < 1:
            raise BenchError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
        self.torch = torch
        self.model, _ = load_checkpoint(assets.checkpoint)
        self.model.eval()
        cfg = load_config(assets.config_path)
        pre = cfg.model.preprocess
        self.width = cfg.model.backbone.image_width
        self.height = cfg.model.backbone.image_height
        self.clip_len = pre.clip_len
        self.stride = pre.frame_stride
        self.hop = pre.clip_hop
        self.span = (pre.clip_len - 1) * pre.frame_stride + 1
        self.history_step = pre.clip_len * pre.frame_stride // pre.clip_hop
        self.context_clips = cfg.model.dpc.context_clips
        self.mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)


def score_camera(
    naive: NaiveModel, video: Path, *, fps: float = 25.0, deadline: float | None = None
) -> dict[str, Any]:
    """Decode ``video`` and score every clip, one at a time; stop at ``time.perf_counter() >= deadline``.

    Returns frames (sampled frames decoded), clips, scored clips, seconds, and the per-stream scores.
    """
    cv2 = _import_cv2()
    torch = naive.torch
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise BenchError(f"OpenCV cannot open {video}")
    src_fps = cap.get(cv2.CAP_PROP_FPS) or fps
    frames: deque[np.ndarray] = deque(maxlen=naive.span)
    ring_len = naive.context_clips * naive.history_step
    # (tokens (1,T,D,h,w), last frame (1,3,H,W), the frame before it (1,3,H,W))
    history: deque[tuple[Any, Any, Any]] = deque(maxlen=ring_len)
    scores: list[dict[str, float]] = []
    sampled = clips = 0
    source_index = -1
    next_t = 0.0
    started = time.perf_counter()
    try:
        while deadline is None or time.perf_counter() < deadline:
            ok, bgr = cap.read()
            if not ok:
                break
            source_index += 1
            if source_index / src_fps + 1e-9 < next_t:
                continue  # sampling down to `fps`, like videorate
            next_t += 1.0 / fps
            small = cv2.resize(bgr, (naive.width, naive.height), interpolation=cv2.INTER_LINEAR)
            frames.append(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
            sampled += 1
            start = sampled - naive.span
            if start < 0 or start % naive.hop:
                continue
            clip = np.stack(list(frames)[:: naive.stride])  # (T, H, W, 3) uint8 RGB
            x = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div(255.0)
            x = ((x - naive.mean) / naive.std).unsqueeze(0)  # (1, T, 3, H, W)
            clips += 1
            with torch.no_grad():
                tokens, _embedding = naive.model.backbone(x)
                if len(history) == ring_len:
                    past = list(history)[:: naive.history_step]
                    frames_in = [past[-1][1], x[:, 0]]
                    if naive.model.dpc.extrapolate:
                        frames_in.append(past[-1][2])
                    # Naive: every past clip encoded again on every call (the head's non-streaming form).
                    history_tokens = torch.stack([t for t, _, _ in past], dim=1)
                    out = naive.model.dpc.score_history(history_tokens, tokens, *frames_in)
                    scores.append(
                        {
                            stream: float(t[0].max())
                            for stream, t in zip(MAP_STREAMS.values(), out, strict=True)
                        }
                    )
            history.append((tokens, x[:, -1], x[:, -2]))
    finally:
        cap.release()
    return {
        "video": str(video),
        "frames": sampled,
        "clips": clips,
        "scored": len(scores),
        "seconds": round(time.perf_counter() - started, 4),
        "scores": scores,
    }


def run_naive(
    assets: Assets,
    cameras: Sequence[int],
    *,
    threads: int,
    budget_s: float,
    fps: float = 25.0,
) -> dict[str, Any]:
    """Score camera indices ``cameras`` one after the other until ``budget_s`` seconds have passed."""
    if budget_s <= 0:
        raise BenchError(f"budget must be > 0 s, got {budget_s}")
    naive = NaiveModel(assets, threads)
    started = time.perf_counter()
    deadline = started + budget_s
    per_camera = []
    for index in cameras:
        if time.perf_counter() >= deadline:
            break
        video = assets.videos[index % len(assets.videos)][0]
        result = score_camera(naive, video, fps=fps, deadline=deadline)
        result["camera"] = index
        per_camera.append(result)
        log.info(
            "naive camera %d: %d frames, %d clips in %.2f s",
            index,
            result["frames"],
            result["clips"],
            result["seconds"],
        )
    frames = sum(r["frames"] for r in per_camera)
    clips = sum(r["clips"] for r in per_camera)
    seconds = sum(r["seconds"] for r in per_camera)
    return {
        "threads": threads,
        "opencv": _import_cv2().__version__,
        "fps": fps,
        "budget_s": budget_s,
        "cameras_started": len(per_camera),
        "frames": frames,
        "clips": clips,
        "seconds": round(seconds, 3),
        "frames_per_s": round(frames / seconds, 2) if seconds > 0 else 0.0,
        "clips_per_s": round(clips / seconds, 3) if seconds > 0 else 0.0,
        "per_camera": [{k: v for k, v in r.items() if k != "scores"} for r in per_camera],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.bench_naive", description=__doc__.split("\n\n")[0])
    add_asset_arguments(p, "base config (its model section)")
    p.add_argument("--cameras", type=int, default=4, help="cameras to score one after the other")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the config's)")
    p.add_argument("--fps", type=float, default=25.0, help="sampling rate (the videos are 25 fps)")
    p.add_argument("--budget", type=float, default=60.0, help="stop after this many seconds")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder for naive.json")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        if args.cameras < 1:
            raise BenchError(f"--cameras must be >= 1, got {args.cameras}")
        threads = args.threads or load_config(args.config).engines.threads or (os.cpu_count() or 1)
        load_before = load_average()
        assets = prepare_assets(args.work, args.config, args.checkpoint)
        result = run_naive(assets, range(args.cameras), threads=threads, budget_s=args.budget, fps=args.fps)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["assets"] = assets.describe()
    result["load_average_before"] = load_before
    result["load_average_after"] = load_average()
    path = write_result("naive", result, args.results)
    rows = [
        [r["camera"], r["frames"], r["clips"], r["seconds"], r["frames"] / r["seconds"]]
        for r in result["per_camera"]
    ]
    rows.append(["all", result["frames"], result["clips"], result["seconds"], result["frames_per_s"]])
    print(format_table(["camera", "frames", "clips", "seconds", "frames/s"], rows))
    print(f"\nthreads {threads}; load average before {load_before}, after {result['load_average_after']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
