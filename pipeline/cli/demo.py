"""``zsad demo`` (``make demo``): the whole system on its built-in default.

1. generate held-out synthetic scenes (seed 0; the demo model was trained on seed 1);
2. build the ONNX Runtime engines of the shipped demo model when they are missing or stale;
3. calibrate each camera on normal footage of its own scene (no gradient step; cameras that would play the
   same footage with the same settings share one pass over it);
4. run 4 cameras in 3 contexts through the CPU graph in real time, with progress;
5. leave in out/demo/: alerts.jsonl, snapshots and clips, a score timeline per camera, and a summary
   of detected vs injected anomalies and false alarms.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.config import CameraSettings, ConfigError, ZsadConfig, load_config
from engines.backends.base import BackendError, BackendUnavailable
from engines.build import BuildError, BuildInputError, BuildOptions, build_from_config
from engines.export import ExportError, ParityError
from engines.manifest import ManifestError
from pipeline.cli.calibrate import (
    CalibrationFootageError,
    CalibrationSamples,
    collect_camera,
    save_camera_calibration,
)
from pipeline.cli.run import announce
from pipeline.inference import EngineError, appearance_expectation, load_engines
from pipeline.memory_streams import MODEL_FILES
from pipeline.outputs.hub import RunOutputsError, check_outputs
from pipeline.run import run_config
from plugins.alerting import alert_params, resolve_policy
from plugins.appearance import AppearanceMemoryError, MemoryExpectation, load_memory, memory_path
from plugins.fusion import CalibrationError, check_model, check_semantic_source, load_calibration
from synth import CONTEXTS, generate_dataset
from synth.writer import frame_name

log = logging.getLogger(__name__)

__all__ = ["alert_matches", "calibration_fits", "run_demo", "summarise_run"]

SCENE_FRAMES = 600  # 60 s at 10 fps
SCENE_FPS = 10
MATCH_SLACK_S = 2.0  # an alert may come this long after its event's last frame (clip span, smoother lag)
MATCH_MARGIN_PX = 16  # the peak box is one or two feature cells: it may sit beside a thin mask


def _scene_path(uri: str) -> Path:
    return Path(uri.split("://", 1)[1])


def prepare_scenes(cfg: ZsadConfig, scenes: Path) -> dict[str, Any]:
    """Generate (or reuse) the demo scenes; return their manifest."""
    contexts = sorted({c.context for c in cfg.enabled_cameras()})
    per_context = max(sum(1 for c in cfg.enabled_cameras() if c.context == ctx) for ctx in contexts)
    return generate_dataset(
        scenes,
        contexts=tuple(contexts),
        train_per_context=3,  # 3 min of normal footage per context: the memory needs hundreds of frames
        test_per_context=per_context,
        frames=SCENE_FRAMES,
        fps=SCENE_FPS,
        seed=0,
        reuse=True,
    )


def prepare_engines(cfg: ZsadConfig, config_path: Path) -> None:
    """Build the engines of the shipped checkpoint if needed (idempotent: says 'up to date')."""
    if not cfg.engines.checkpoint:
        raise ConfigError(
            str(config_path), [(None, "engines.checkpoint", "the demo needs a checkpoint to build from")]
        )
    build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))


def prepare_calibration(cfg: ZsadConfig, scenes: Path, out: Path) -> ZsadConfig:
    """Calibrate every camera on the normal (training) footage of its context; return the updated config.
    A calibration from an earlier demo is kept unless the appearance engine needs a memory it lacks, the
    stationary or objects stream (when on) a model it lacks, or it does not fit the camera's alert smoothing
    or the engines' semantic stream (:func:`calibration_fits`)."""
    engines = load_engines(cfg)
    cameras = []
    # Cameras of one context with the same settings play the same footage: collected once, fitted for each.
    collected: list[tuple[CameraSettings, CalibrationSamples]] = []
    try:
        expect = appearance_expectation(engines)
        for cam in cfg.cameras:
            path = out / f"{cam.id}.json"
            if (
                not path.is_file()
                or not _memory_fits(path, expect)
                or not _models_fit(cfg, path)
                or not calibration_fits(cfg, cam.id, path, engines.semantic_source, engines.model_id)
            ):
                settings = _footage_settings(cfg.camera_settings(cam.id))
                samples = next((c for s, c in collected if s == settings), None)
                if samples is None:
                    footage = sorted((scenes / "training" / "videos").glob(f"{settings.context}_*.mp4"))
                    samples = collect_camera(cfg, engines, cam.id, [f"file://{p.resolve()}" for p in footage])
                    collected.append((settings, samples))
                else:
                    log.info("camera %s: its context's footage was collected for a camera like it", cam.id)
                save_camera_calibration(cfg, engines, cam.id, samples, path)
            cameras.append(cam.model_copy(update={"calibration": str(path)}))
    finally:
        engines.close()
    return cfg.model_copy(update={"cameras": cameras})


def _footage_settings(settings: CameraSettings) -> CameraSettings:
    """What of a camera's settings its calibration footage is played and scored with: everything but its
    name, its test video and the calibration file it is to get."""
    return settings.model_copy(update={"id": "", "uri": "", "calibration": None})


def _memory_fits(calibration: Path, expect: MemoryExpectation | None) -> bool:
    """Whether the appearance memory beside ``calibration`` is usable with the engine (True without one)."""
    if expect is None:
        return True
    try:
        load_memory(memory_path(calibration), expect)
    except AppearanceMemoryError as exc:
        log.info("calibrating again: %s", exc)
        return False
    return True


def _models_fit(cfg: ZsadConfig, calibration: Path) -> bool:
    """Whether the models beside ``calibration`` of the memory streams without an engine that are on
    (stationary, objects) are usable with the config. A stream the calibration has no statistics for needs no
    model (its footage gave none, which calibrating again would not change)."""
    try:
        calibrated = set(load_calibration(calibration).streams)
    except CalibrationError as exc:
        log.info("calibrating again: %s", exc)
        return False
    for file in MODEL_FILES:
        if not file.settings(cfg).enabled or file.stream not in calibrated:
            continue
        try:
            file.load(cfg, file.path_of(calibration))
        except file.error as exc:
            log.info("calibrating again: %s", exc)
            return False
    return True


def calibration_fits(
    cfg: ZsadConfig,
    camera: str,
    calibration: Path,
    semantic_source: str | None,
    model_id: str | None = None,
) -> bool:
    """Whether the calibration's threshold was computed for the camera's alert smoothing (a calibration from
    before thresholds were smoothed was computed for none), its semantic statistics, if any, on the
    engines' ``semantic_source`` (a run refuses it otherwise: ``plugins.fusion.check_semantic_source``), and
    its streams by the engines' model (``plugins.fusion.check_model``)."""
    smoothing = cfg.camera_settings(camera).alerts.smoothing
    try:
        loaded = load_calibration(calibration)
        check_semantic_source(loaded, semantic_source)
        check_model(loaded, model_id)
        if model_id is not None and loaded.model_id is None:
            # From before calibrations named their model: it may be another checkpoint's, so it is redone.
            raise CalibrationError(f"{calibration} records no model it was scored with")
        fits = loaded.threshold_smoothing == smoothing
    except CalibrationError as exc:
        log.info("calibrating again: %s", exc)
        return False
    if not fits:
        log.info(
            "calibrating again: %s has a threshold for another alert smoothing than %d",
            calibration,
            smoothing,
        )
    return fits


def _clear_previous_run(out: Path) -> None:
    for name in ("alerts.jsonl", "scores.jsonl", "summary.json", "summary.md"):
        (out / name).unlink(missing_ok=True)
    for name in ("events", "spool", "timelines"):
        shutil.rmtree(out / name, ignore_errors=True)


def _event_region(
    masks: Path | None, ev: dict[str, Any], t0: float, t1: float, fps: float
) -> np.ndarray | None:
    """The union ``(H, W)`` bool of an event's ground-truth masks over its frames in ``[t0, t1]`` seconds
    (the event's frames nearest that span when none fall in it); None without masks on disk. A frame's mask
    holds every event of the scene at that frame (the generator writes one per frame), so two events that
    overlap in time and place cannot be told apart here."""
    if masks is None or not masks.is_dir():
        return None
    first, last = int(ev["start"]), int(ev["end"])
    lo = min(max(math.floor(t0 * fps), first), last)
    hi = max(min(math.floor(t1 * fps), last), lo)
    union: np.ndarray | None = None
    for index in range(lo, hi + 1):
        path = masks / frame_name(index, int(ev["n_frames"]), ".png")
        if path.is_file():
            with Image.open(path) as image:
                mask = np.asarray(image, dtype=bool)
            union = mask if union is None else union | mask
    return union


def alert_matches(
    alert: dict[str, Any],
    ev: dict[str, Any],
    masks: Path | None,
    fps: float,
    slack_s: float = MATCH_SLACK_S,
    margin_px: int = MATCH_MARGIN_PX,
) -> bool:
    """Whether ``alert`` reports the injected event ``ev``.

    ``alert``: an alert record (pipeline/outputs/alert_schema.py) whose ``end_pts`` is filled in (an alert
    still open: its latest time); ``ev``: a scenes-manifest event (``start``, ``end``: its first and last
    frame, 0-based) with ``n_frames``, the frames of its video, added (the masks' file names depend on it);
    ``masks``: the video's mask folder.

    When: the alert is open at some time from the event's first frame to ``slack_s`` after the end of its
    last frame. Not before: a clip is scored at its last frame and the smoother is a trailing median, so an
    alert cannot start ahead of what caused it; the slack is for the clip's span and the smoother's lag.
    Where: the alert's peak is in that same span, and its box, grown by ``margin_px``, overlaps the event's
    mask in the ``slack_s`` up to the peak (an alert on a walker at the other side of the frame, or one that
    peaked on a walker before a cyclist came in at the same edge, is not a detection of the cyclist: its
    snapshot shows the walker). An alert without a peak box, or an event without masks on disk, is matched
    by time alone."""
    start_s, end_s = ev["start"] / fps, (ev["end"] + 1) / fps
    if not (alert["start_pts"] <= end_s + slack_s and alert["end_pts"] >= start_s):
        return False
    box = alert.get("peak_box")
    if not box:
        return True
    if not start_s <= alert["peak_time"] <= end_s + slack_s:
        return False
    region = _event_region(masks, ev, alert["peak_time"] - slack_s, alert["peak_time"], fps)
    if region is None:
        return True
    sy, sx = region.shape[0] / box["height"], region.shape[1] / box["width"]
    y0 = max(0, int((box["y0"] - margin_px) * sy))
    y1 = min(region.shape[0], int(np.ceil((box["y1"] + margin_px) * sy)))
    x0 = max(0, int((box["x0"] - margin_px) * sx))
    x1 = min(region.shape[1], int(np.ceil((box["x1"] + margin_px) * sx)))
    return bool(region[y0:y1, x0:x1].any())


def summarise_run(
    cfg: ZsadConfig, scenes_manifest: dict[str, Any], out: Path, slack_s: float = MATCH_SLACK_S
) -> dict[str, Any]:
    """Match alerts to injected anomalies by time and place (:func:`alert_matches`, against the masks beside
    each camera's scene video); write summary.json, summary.md and one timeline PNG per camera."""
    # alerts.jsonl holds an "open" and a "closed" record per alert: keep the latest of each.
    latest: dict[str, dict[str, Any]] = {}
    if (out / "alerts.jsonl").is_file():
        for line in (out / "alerts.jsonl").read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                latest[record["alert_id"]] = record
    # An alert still open at the end: open until at least its peak.
    alerts = [
        {
            **a,
            "end_pts": a["end_pts"] if a.get("end_pts") is not None else max(a["start_pts"], a["peak_time"]),
        }
        for a in latest.values()
    ]
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines() if line.strip()]
    fps = float(scenes_manifest.get("fps", SCENE_FPS))
    cameras: dict[str, Any] = {}
    for cam in cfg.enabled_cameras():
        video = _scene_path(cam.uri)
        clip_name = video.stem
        masks = video.parent.parent / "masks" / clip_name  # <split>/videos/<clip>.mp4 -> <split>/masks/<clip>
        if not masks.is_dir():
            log.warning("no masks for %s at %s: its alerts are matched by time alone", cam.id, masks)
        n_frames = int(scenes_manifest.get("counts", {}).get("testing", {}).get(clip_name, SCENE_FRAMES))
        truth = [{**e, "n_frames": n_frames} for e in scenes_manifest.get("events", {}).get(clip_name, [])]
        events = [
            {"kind": e["kind"], "start_s": e["start"] / fps, "end_s": (e["end"] + 1) / fps} for e in truth
        ]
        mine = [a for a in alerts if a["camera"] == cam.id]
        matched: set[str] = set()  # each (alert, event) pair is judged once: judging reads mask files
        for ev, true in zip(events, truth, strict=True):
            hits = [a for a in mine if alert_matches(a, true, masks, fps, slack_s)]
            matched.update(a["alert_id"] for a in hits)
            ev["detected"] = bool(hits)
            ev["alerts"] = [a["alert_id"] for a in hits]
            ev["delay_s"] = (
                round(max(0.0, min(a["start_pts"] for a in hits) - ev["start_s"]), 2) if hits else None
            )
        false_alarms = [a["alert_id"] for a in mine if a["alert_id"] not in matched]
        cameras[cam.id] = {
            "context": cam.context,
            "scene": clip_name,
            "events": events,
            "alerts": len(mine),
            "false_alarms": false_alarms,
            "on_threshold": round(threshold := _on_threshold(cam), 3),
        }
        _plot_timeline(
            cam.id,
            [s for s in scores if s["camera"] == cam.id],
            mine,
            events,
            threshold,
            out / "timelines" / f"{cam.id}.png",
        )
    injected = [ev for c in cameras.values() for ev in c["events"]]
    summary = {
        "injected": len(injected),
        "detected": sum(ev["detected"] for ev in injected),
        "missed": [
            f"{cid}: {ev['kind']} at {ev['start_s']:.1f}-{ev['end_s']:.1f}s"
            for cid, c in cameras.items()
            for ev in c["events"]
            if not ev["detected"]
        ],
        "false_alarms": sum(len(c["false_alarms"]) for c in cameras.values()),
        "alerts": len(alerts),
        "match_slack_s": slack_s,
        "match_margin_px": MATCH_MARGIN_PX,
        "cameras": cameras,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_summary_markdown(summary))
    return summary


def _on_threshold(cam: CameraSettings) -> float:
    """The score that opened the camera's alerts in the run (``calibrated``: its calibration's threshold)."""
    calibration = None
    if cam.calibration:
        try:
            calibration = load_calibration(cam.calibration)
        except CalibrationError as exc:
            log.warning("camera %s: %s", cam.id, exc)
    return alert_params(resolve_policy(cam.alerts, calibration, cam.id)).on_threshold


def _summary_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# zsad demo summary",
        "",
        f"Injected anomalies: {summary['injected']}; detected: {summary['detected']}; "
        f"false alarms: {summary['false_alarms']}; alerts: {summary['alerts']}.",
        "",
        "An alert is a detection when it is open at some time between the anomaly's first frame and "
        f"{summary['match_slack_s']:g} s after its last, its peak falls in that span, and its peak box, "
        f"grown by {summary['match_margin_px']} px, is on the anomaly's mask; any other alert is a false "
        "alarm.",
        "",
        "Alerts open at "
        + ", ".join(f"{cid} {cam['on_threshold']:.2f}" for cid, cam in summary["cameras"].items())
        + " (each camera's `on_threshold`; `calibrated`: its calibration's threshold).",
        "",
        "| camera | context | anomaly | span (s) | detected | delay (s) |",
        "|---|---|---|---|---|---|",
    ]
    for cid, cam in summary["cameras"].items():
        for ev in cam["events"]:
            lines.append(
                f"| {cid} | {cam['context']} | {ev['kind']} | {ev['start_s']:.1f}-{ev['end_s']:.1f} | "
                f"{'yes' if ev['detected'] else '**missed**'} | "
                f"{ev['delay_s'] if ev['delay_s'] is not None else '-'} |"
            )
    if summary["missed"]:
        lines += ["", "Missed: " + "; ".join(summary["missed"])]
    return "\n".join(lines) + "\n"


def _plot_timeline(
    camera: str,
    scores: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    events: list[dict[str, Any]],
    threshold: float,
    path: Path,
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no timeline for %s", camera)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 2.8), dpi=100)
    try:
        t = [s["t"] for s in scores]
        ax.plot(
            t, [s["score"] for s in scores], lw=1.4, color="C0", label="fused score (calibrated, smoothed)"
        )
        for i, ev in enumerate(events):
            ax.axvspan(
                ev["start_s"],
                ev["end_s"],
                color="C3",
                alpha=0.15,
                label="injected anomaly" if i == 0 else None,
            )
            ax.text(
                ev["start_s"], ax.get_ylim()[1] * 0.9 if scores else 1, ev["kind"], fontsize=7, color="C3"
            )
        for i, a in enumerate(alerts):
            ax.axvspan(a["start_pts"], a["end_pts"], ymax=0.08, color="k", label="alert" if i == 0 else None)
        ax.axhline(threshold, color="0.5", ls="--", lw=0.8, label="on threshold")
        ax.set(xlabel="stream time (s)", ylabel="score", title=f"{camera}")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _check_demo_cameras(cfg: ZsadConfig, config_path: Path) -> None:
    """The demo plays scenes it generates: it needs cameras, each of a context the generator draws."""
    cameras = cfg.enabled_cameras()
    if not cameras:
        raise ConfigError(str(config_path), [(None, "cameras", "the demo needs at least one enabled camera")])
    index = {c.id: i for i, c in enumerate(cfg.cameras)}
    problems: list[tuple[int | None, str, str]] = [
        (
            None,
            f"cameras[{index[cam.id]}].context",
            f"the demo generates scenes of {', '.join(CONTEXTS)} only, not {cam.context!r}",
        )
        for cam in cameras
        if cam.context not in CONTEXTS
    ]
    if problems:
        raise ConfigError(str(config_path), problems)


def run_demo(args: Any) -> int:
    """CLI handler for ``zsad demo``."""
    config_path = Path(args.config)
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        print(f"invalid config:\n{exc}", file=sys.stderr)
        return 2
    try:
        check_outputs(cfg)  # before minutes of scenes, engines and calibration
        if not cfg.engines.checkpoint:
            raise ConfigError(
                str(config_path), [(None, "engines.checkpoint", "the demo needs a checkpoint to build from")]
            )
        _check_demo_cameras(cfg, config_path)
    except (RunOutputsError, ConfigError) as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.output_dir)
    scenes = out / "scenes"
    print(f"[1/5] synthetic scenes -> {scenes}", flush=True)
    manifest = prepare_scenes(cfg, scenes)
    print(f"[2/5] engines ({cfg.engines.backend}) -> {cfg.engines.dir}", flush=True)
    try:
        prepare_engines(cfg, config_path)
    except (BuildInputError, BackendUnavailable) as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    except (BuildError, ExportError, ParityError, ManifestError, BackendError) as exc:
        print(f"cannot build the engines: {exc}", file=sys.stderr)
        return 1
    print(f"[3/5] calibration on each camera's normal footage -> {out / 'calibration'}", flush=True)
    try:
        cfg = prepare_calibration(cfg, scenes, out / "calibration")
    except EngineError as exc:
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    except CalibrationFootageError as exc:
        print(f"calibration failed: {exc}", file=sys.stderr)
        return 1
    _clear_previous_run(out)
    duration = args.duration if args.duration else SCENE_FRAMES / SCENE_FPS + 10
    print(f"[4/5] running {len(cfg.enabled_cameras())} cameras for up to {duration:.0f} s", flush=True)

    def progress(states: dict[str, str], stats: Any) -> None:
        live = sum(s == "live" for s in states.values())
        sys.stdout.write(
            f"\r      cameras live {live}/{len(states)}  "
            f"clips scored {sum(c.processed for c in stats.cameras.values())}   "
        )
        sys.stdout.flush()

    try:
        code = run_config(
            cfg, duration_s=duration, realtime=not args.fast, progress=progress, on_start=announce
        )
    except (EngineError, RunOutputsError) as exc:
        print(flush=True)  # ends the progress line
        print(f"refusing to start: {exc}", file=sys.stderr)
        return 2
    print()
    if code:
        return code
    print("[5/5] summary", flush=True)
    summary = summarise_run(cfg, manifest, out)
    print((out / "summary.md").read_text())  # names every missed anomaly
    log.info("demo: %d of %d injected anomalies detected", summary["detected"], summary["injected"])
    print(f"outputs: {out.resolve()}  (alerts.jsonl, events/, timelines/, summary.md)")
    return 0
