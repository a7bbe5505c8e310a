"""``zsad calibrate``: fit a camera's score statistics and threshold from its normal footage.

No gradient step: the footage runs through the same graph, preprocessing and engines as a live run,
each stream's raw clip scores are collected, and ``plugins.fusion.fit_calibration`` turns them into
robust statistics, each stream's reliability weight from held-out time folds of the footage, and a default
threshold (a high quantile of the fused normal score). The command prints which streams the camera trusts
and why (``plugins.fusion.describe_trust``).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.config import CameraSettings, ConfigError, ZsadConfig, load_config
from pipeline.cli.run import first_run_engines
from pipeline.clips import Clip, ClipAssembler
from pipeline.cpu.graph import CameraGraph
from pipeline.inference import ClipInference, EngineBuildError, EngineError, EngineSet, load_engines
from plugins.fusion import (
    Calibration,
    CalibrationError,
    describe_trust,
    fit_calibration,
    format_trust,
    load_calibration,
    save_calibration,
    time_folds,
)
from plugins.zones import CellFilters, ViewZones

log = logging.getLogger(__name__)

__all__ = ["CalibrationFootageError", "calibrate_camera", "collect_scores", "trust_report"]


class CalibrationFootageError(RuntimeError):
    """The footage could not be read or gave too few clips to calibrate on."""


def collect_scores(
    cfg: ZsadConfig,
    engines: EngineSet,
    camera: CameraSettings,
    footage: Sequence[str],
    *,
    timeout_s: float = 1800,
) -> dict[str, np.ndarray]:
    """Run footage URIs (files play as fast as possible) and return ``{stream: (M,) raw clip scores}``.

    The camera's mask (its config's ``mask``) applies as it will at run time, so the statistics describe the
    cells that can alert; the review page's overrides are not read here."""
    pre = cfg.model.preprocess
    assembler = ClipAssembler.from_config(pre)
    filters = CellFilters()
    inference = ClipInference(
        engines,
        context_clips=cfg.model.dpc.context_clips,
        history_step=pre.clip_len * pre.frame_stride // pre.clip_hop,
        contexts={},
        filters=filters,
    )
    clips: queue.Queue[Clip] = queue.Queue(maxsize=64)
    settings = [
        camera.model_copy(update={"id": f"{camera.id}.{i}", "uri": uri}) for i, uri in enumerate(footage)
    ]
    zones = ViewZones.from_settings(camera.zoning)
    for s in settings:
        inference.contexts[s.id] = camera.context
        filters.set(s.id, zones, None)

    def on_frame(cam: str, pts: float, frame: np.ndarray) -> None:
        clip = assembler.push(cam, pts, frame)
        if clip is not None:
            clips.put(clip)  # blocks the decoder: calibration must not drop clips

    graph = CameraGraph(engines.frame_size, on_frame, cameras=settings, realtime=False)
    samples: dict[str, list[float]] = {}
    failed: list[str] = []
    graph.start()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            try:
                batch = [clips.get(timeout=0.5)]
            except queue.Empty:
                states = graph.states()
                if all(st in {"eos", "failed", "stopped"} for st in states.values()):
                    failed = [c for c, st in states.items() if st == "failed"]
                    break
                continue
            while len(batch) < cfg.scheduler.max_batch and not clips.empty():
                batch.append(clips.get_nowait())
            for res in inference(_in_camera_order(batch)):
                if res.scores is not None:
                    for k, v in res.scores.scores.items():
                        samples.setdefault(k, []).append(v)
    finally:
        graph.stop()
    if failed:
        raise CalibrationFootageError(f"camera {camera.id}: footage could not be read: {', '.join(failed)}")
    return {k: np.asarray(v) for k, v in samples.items()}


def _in_camera_order(batch: list[Clip]) -> list[Clip]:
    return sorted(batch, key=lambda c: (c.camera_id, c.index))


def calibrate_camera(
    cfg: ZsadConfig,
    engines: EngineSet,
    camera_id: str,
    footage: Sequence[str],
    out: Path,
    *,
    min_clips: int = 20,
) -> Path:
    """Fit and save one camera's calibration; return the file written."""
    camera = cfg.camera_settings(camera_id)
    samples = collect_scores(cfg, engines, camera, footage)
    n = min((len(v) for v in samples.values()), default=0)
    if n < min_clips:
        pre = cfg.model.preprocess
        # Each scored clip needs the DPC history before it: C clips of T*stride frames.
        frames = min_clips * pre.clip_hop + cfg.model.dpc.context_clips * pre.clip_len * pre.frame_stride
        raise CalibrationFootageError(
            f"camera {camera_id}: only {n} scored clips in the footage, at least {min_clips} are needed "
            f"(give at least {frames / camera.sampling.fps:.0f} s of normal footage "
            f"at {camera.sampling.fps:g} fps)"
        )
    # Held-out folds for the reliability weights: the clips in the order they were scored, in two halves.
    folds = time_folds(n) if len({len(v) for v in samples.values()}) == 1 else None
    cal = fit_calibration(samples, folds, threshold_quantile=0.995, camera=camera_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_calibration(cal, out)
    log.info(
        "camera %s: calibrated on %d clips -> %s (threshold %.3f)", camera_id, n, out, cal.threshold or 0.0
    )
    return out


def trust_report(cal: Calibration) -> str:
    """What ``zsad calibrate`` prints after fitting: the threshold and which streams the camera trusts."""
    threshold = "none" if cal.threshold is None else f"{cal.threshold:.3f}"
    head = (
        f"camera {cal.camera}: {cal.n_samples} clips, fusion rule {cal.rule}, "
        f"default threshold {threshold} (the {cal.threshold_quantile:g} quantile of the fused normal score)"
    )
    return f"{head}\n{format_trust(describe_trust(cal))}"


def _footage_problem(uri: str) -> str | None:
    """Why a footage URI cannot be read, when that is knowable before starting (a local file), else None."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return f"footage {uri!r} is not a URI: write file:///path/to/normal.mp4 (or rtsp://...)"
    if scheme.lower() in {"file", "loop"} and not Path(rest).is_file():
        return f"footage {uri}: no such file {rest}"
    return None


def run_calibrate(args: Any) -> int:
    """CLI handler: ``zsad calibrate CONFIG --camera ID --footage URI [--footage URI ...] --out FILE``."""
    try:
        cfg = load_config(args.config)
        cfg.camera_settings(args.camera)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}")
        return 2
    except KeyError as exc:
        print(f"{args.config}: {exc.args[0]}")
        return 2
    problems = [p for p in (_footage_problem(uri) for uri in args.footage) if p]
    out = Path(args.out)
    if out.is_dir():
        problems.append(
            f"--out {out} is a folder: name the file to write, e.g. {out / (args.camera + '.json')}"
        )
    if problems:
        print("\n".join(problems))
        return 2
    try:
        first_run_engines(cfg)
        engines = load_engines(cfg)
    except EngineError as exc:
        print(f"refusing to start: {exc}")
        return 2
    except EngineBuildError as exc:
        print(f"cannot build the engines: {exc}")
        return 1
    try:
        path = calibrate_camera(cfg, engines, args.camera, args.footage, out)
    except CalibrationFootageError as exc:
        print(f"calibration failed: {exc}")
        return 1
    except OSError as exc:
        print(f"calibration failed: cannot write {out}: {exc.strerror or exc}")
        return 1
    finally:
        engines.close()
    try:
        print(trust_report(load_calibration(path)))
    except CalibrationError as exc:  # written a moment ago; unreadable now means the disk changed under us
        print(f"calibration failed: {exc}")
        return 1
    print(f"calibration: {path}")
    return 0
