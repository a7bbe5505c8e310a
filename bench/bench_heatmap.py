"""Where the alert heatmaps land, and what one costs to render.

    .venv/bin/python -m bench.bench_heatmap                  # the demo model, seeds 0..2, every kind
    .venv/bin/python -m bench.bench_heatmap --checkpoint CKPT --seeds 0 1 2 3

1. **Which frame the evidence describes.** Synthetic scenes with one injected anomaly each (every kind of
   ``synth``, in the campus, parking and station views, 320 x 240 at 10 fps) are scored by the product's
   path: the model's ONNX Runtime engines, ``ClipInference``, the camera's calibration fitted on a quiet
   scene of the same view (30 s by default) as ``zsad calibrate`` fits it (at least 20 clips; reliability
   weights from its two time halves held out from each other), ``CameraFusion``, and the evidence map and
   peak of ``plugins.zones`` as an alert finds them (the calibration's fusion rule, the clip's weights, the
   same tie-break). For every scored clip whose frames show the anomaly, the peak box
   (``training.localisation.frame_hit``) is checked against the anomaly's mask in the clip's **first** frame
   (the one the DPC head compares with the history, and the frame the snapshot and heatmap now show) and in
   its **last** frame (the stream time the clip is scored at, which the snapshot showed before). Counted
   over all such clips and over those whose fused score reaches the default ``on_threshold`` of 3 (the clips
   that can raise or hold an alert).
2. **Render cost** on the media thread, at 320 x 240 and 1280 x 720: the snapshot's own JPEG encoding,
   the heatmap's rendering (``render_heatmap``: upsampling, colours, box, colour scale) and the heatmap JPEG
   (``heatmap_jpeg``: rendering and encoding).

Writes ``bench/results/heatmap.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import DEFAULT_CONFIG, DEFAULT_WORK, REPO, RESULTS_DIR, format_table, write_result
from core.config import ZsadConfig, load_config
from engines.build import BuildOptions, build_from_config
from pipeline.clips import ClipAssembler
from pipeline.inference import ClipInference, EngineSet, load_engines
from pipeline.outputs.heatmap import PeakEvidence, heatmap_jpeg, render_heatmap
from plugins.fusion import (
    DEFAULT_RULE,
    Calibration,
    CalibrationError,
    CameraFusion,
    fit_calibration,
    time_folds,
)
from plugins.zones import evidence_map, locate_peak
from synth import ANOMALY_KINDS, ClipRenderer, PlannedEvent
from training.localisation import frame_hit

log = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS = 320, 240, 10
CONTEXTS = ("campus", "parking", "station")
EVENT_START = 20
QUIET_SEED = 1000  # calibration scenes: a seed no test scene uses
ON_THRESHOLD = 3.0
#: The fewest quiet clips a calibration is fitted on, as ``zsad calibrate`` requires (two folds of 10).
MIN_CALIBRATION_CLIPS = 20
#: A clip shows the anomaly when at least this many pixels of its first frame are on the mask (a bag left
#: on the ground is about 5 x 5 pixels at 320 x 240).
VISIBLE_PX = 20


def _render(context: str, seed: int, n: int, events: list[PlannedEvent]) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(ClipRenderer(context, n, WIDTH, HEIGHT, seed, events=events))
    return np.stack([f for f, _ in pairs]), np.stack([m for _, m in pairs])


def _scored(
    cfg: ZsadConfig, engines: EngineSet, camera: str, frames: np.ndarray
) -> Iterator[tuple[Any, Any]]:
    pre = cfg.model.preprocess
    assembler = ClipAssembler.from_config(pre)
    inference = ClipInference(
        engines,
        context_clips=cfg.model.dpc.context_clips,
        history_step=max(1, pre.clip_len * pre.frame_stride // pre.clip_hop),
        contexts={camera: "generic"},
    )
    width, height = engines.frame_size
    for i, frame in enumerate(frames):
        small = np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))
        clip = assembler.push(camera, i / FPS, small)
        if clip is None:
            continue
        (result,) = inference([clip])
        if result.scores is not None:
            yield clip, result.scores


def _calibration(cfg: ZsadConfig, engines: EngineSet, context: str, frames: int) -> Calibration:
    quiet, _ = _render(context, QUIET_SEED, frames, [])
    raw: dict[str, list[float]] = {}
    for _, scores in _scored(cfg, engines, f"quiet-{context}", quiet):
        for stream, value in scores.scores.items():
            raw.setdefault(stream, []).append(value)
    # Held-out time folds, as `zsad calibrate` holds out the halves of a camera's footage: without them
    # every stream keeps weight 1, and under the max rule a heavy-tailed stream leads the score and the peak.
    n = len(next(iter(raw.values()), []))
    if n < MIN_CALIBRATION_CLIPS:
        raise CalibrationError(
            f"{context}: {frames} quiet frames gave {n} scored clips, `zsad calibrate` needs at least "
            f"{MIN_CALIBRATION_CLIPS}: raise --calibration-frames"
        )
    return fit_calibration({k: np.asarray(v) for k, v in raw.items()}, time_folds(n), rule=DEFAULT_RULE)


def _tally(rows: list[dict[str, Any]], key: str) -> dict[str, Any]:
    n = len(rows)
    hits = sum(r[key] for r in rows)
    return {"clips": n, "box_hits": hits, "rate": round(hits / n, 4) if n else None}


def measure_alignment(
    cfg: ZsadConfig, engines: EngineSet, seeds: Sequence[int], frames: int, calibration_frames: int
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    reliability: dict[str, dict[str, float]] = {}
    for context in CONTEXTS:
        cal = _calibration(cfg, engines, context, calibration_frames)
        reliability[context] = {name: round(s.weight, 3) for name, s in cal.streams.items()}
        for kind in ANOMALY_KINDS:
            for seed in seeds:
                video, masks = _render(context, seed, frames, [PlannedEvent(kind, EVENT_START)])
                fusion = CameraFusion(context, cal, None, smoothing=1)
                stats = fusion.cell_stats()
                for clip, scores in _scored(cfg, engines, f"{context}-{kind}-{seed}", video):
                    fused = fusion.update(scores.scores, None, clip.end_pts)
                    first, last = round(clip.start_pts * FPS), round(clip.end_pts * FPS)
                    if masks[first].sum() < VISIBLE_PX:
                        continue
                    evidence = evidence_map(scores.scored_maps, fused.weights, stats, rule=fused.rule)
                    if evidence is None:
                        continue
                    tb = evidence_map(
                        scores.scored_maps, fused.weights, stats, positive=False, rule=fused.rule
                    )
                    rows.append(
                        {
                            "context": context,
                            "kind": kind,
                            "seed": seed,
                            "first_hit": frame_hit(evidence, masks[first], tiebreak=tb).box_hit,
                            "last_hit": frame_hit(evidence, masks[last], tiebreak=tb).box_hit,
                            "alerting": bool(fused.score >= ON_THRESHOLD),
                        }
                    )
                log.info("%s %s seed %d: %d clips so far", context, kind, seed, len(rows))
    alerting = [r for r in rows if r["alerting"]]
    per_kind = {
        kind: {
            "first_frame": _tally([r for r in rows if r["kind"] == kind], "first_hit"),
            "last_frame": _tally([r for r in rows if r["kind"] == kind], "last_hit"),
        }
        for kind in ANOMALY_KINDS
    }
    return {
        "all_visible": {"first_frame": _tally(rows, "first_hit"), "last_frame": _tally(rows, "last_hit")},
        "alerting": {
            "first_frame": _tally(alerting, "first_hit"),
            "last_frame": _tally(alerting, "last_hit"),
        },
        "per_kind": per_kind,
        "rule": DEFAULT_RULE,
        "reliability_weights": reliability,
    }


def _median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(float(np.median(times)) * 1e3, 2)


def measure_render(repeats: int) -> dict[str, Any]:
    """Per frame size: the snapshot's own JPEG encoding (what the media thread paid before), the heatmap's
    rendering alone, and the heatmap JPEG (rendering and encoding), on a synthetic campus frame with a
    9 x 12 map (the demo model's grid) peaking on one cell."""
    rng = np.random.default_rng(0)
    evidence = np.maximum(rng.normal(0.0, 1.0, (9, 12)), 0.0)
    evidence[4, 7] = 8.0
    location = locate_peak(evidence)
    assert location is not None
    peak = PeakEvidence(0.0, evidence, location)
    out: dict[str, Any] = {}
    for width, height in ((320, 240), (1280, 720)):
        frame, _ = next(iter(ClipRenderer("campus", 1, width, height, 0)))
        box = location.pixel_box(width, height)

        def snapshot(frame: np.ndarray = frame) -> None:
            Image.fromarray(frame).save(io.BytesIO(), format="JPEG", quality=85)

        out[f"{width}x{height}"] = {
            "snapshot_jpeg_ms": _median_ms(snapshot, repeats),
            "heatmap_render_ms": _median_ms(lambda f=frame, b=box: render_heatmap(f, evidence, b), repeats),
            "heatmap_jpeg_ms": _median_ms(lambda f=frame: heatmap_jpeg(f, peak), repeats),
            "repeats": repeats,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_heatmap", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="config with the model section")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "demo" / "model.safetensors")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK / "heatmap", help="folder for the engines")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--frames", type=int, default=100, help="frames per scene (10 fps)")
    parser.add_argument(
        "--calibration-frames", type=int, default=300, help="frames of each view's quiet calibration scene"
    )
    parser.add_argument("--repeats", type=int, default=20, help="renders per size for the cost")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder for heatmap.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = load_config(args.config)
    engines_dir = (args.work / "engines").resolve()
    build_from_config(
        base, checkpoint=args.checkpoint, out_dir=engines_dir, options=BuildOptions(backend="onnxruntime")
    )
    cfg = base.model_copy(
        update={"engines": base.engines.model_copy(update={"dir": str(engines_dir), "threads": 1})}
    )
    engines = load_engines(cfg)
    try:
        alignment = measure_alignment(cfg, engines, args.seeds, args.frames, args.calibration_frames)
    finally:
        engines.close()
    render = measure_render(args.repeats)
    path = write_result(
        "heatmap",
        {
            "checkpoint": str(args.checkpoint),
            "seeds": args.seeds,
            "frames": args.frames,
            "calibration_frames": args.calibration_frames,
            "alignment": alignment,
            "render": render,
        },
        results_dir=args.results,
    )
    rows = [
        [scope, which, v["clips"], v["box_hits"], v["rate"]]
        for scope in ("all_visible", "alerting")
        for which, v in alignment[scope].items()
    ]
    print(format_table(["clips", "mask of the clip's", "n", "peak box on it", "rate"], rows))
    print(
        format_table(
            ["frame", "snapshot JPEG ms", "heatmap render ms", "heatmap JPEG ms"],
            [
                [k, v["snapshot_jpeg_ms"], v["heatmap_render_ms"], v["heatmap_jpeg_ms"]]
                for k, v in render.items()
            ],
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
