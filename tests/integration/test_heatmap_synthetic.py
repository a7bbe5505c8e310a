"""Acceptance: the heatmap of a synthetic event lands on its mask.

A campus scene from ``synth`` with an injected cyclist (seed 2: in from the west along the lawn, then up the
north path) and its pixel masks, scored by the real product path: a seeded, untrained tiny model's engines in
ONNX Runtime, the clip assembler, ``ClipInference`` (the DPC head's motion and pixel maps need no training to
find what moves fastest), the camera's calibration fitted on a quiet scene of the same view (with the
reliability weights of held-out time folds, as ``zsad calibrate`` fits it), then
``CameraAlerts`` with its ``EventRecorder``, as ``zsad run`` wires them. Checked:

* every scored clip whose frame shows the cyclist: the peak box (the one its record and heatmap would
  carry) overlaps the cyclist's mask, and most of the heatmap's coloured evidence lies on the mask grown by
  one map cell (the map's resolution);
* the alert's record carries a heatmap that exists, whose coloured pixels lie on the cyclist's mask (grown
  by one cell) in the frame the peak's maps describe, and whose peak box overlaps that mask.

With ``ZSAD_UPDATE_SCREENSHOTS=1`` the alert's heatmap and a localisation example are written to
``docs/figures/`` (``heatmap_cyclist.jpg``, ``localisation_cyclist.png``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.config import AlertPolicy, MediaConfig, ZsadConfig
from pipeline.clips import ClipAssembler
from pipeline.inference import ClipInference, EngineSet, load_engines
from pipeline.outputs.alert_schema import validate_alert
from pipeline.outputs.events import CameraAlerts
from pipeline.outputs.media import EventRecorder
from plugins.fusion import Calibration, CameraFusion, fit_calibration, time_folds
from plugins.zones import dilate
from synth import ClipRenderer, PlannedEvent
from tests.conftest import REPO
from tests.fixtures.tiny_models import world_model_dict
from training.localisation import frame_hit, save_examples

torch = pytest.importorskip("torch")

#: 96 x 128 pixels in 8-pixel patches: maps of 12 x 16 cells, 20 x 20 pixels each on the 320 x 240 frame.
MODEL = world_model_dict(backbone={"image_height": 96, "image_width": 128, "patch_size": 8})
WIDTH, HEIGHT, FPS = 320, 240, 10
CELL_PX = 20
EVENT_SEED, EVENT_START, FRAMES = 2, 20, 100
CALIBRATION_SEED = 11  # other people on the paths, no event
#: A frame shows the cyclist when at least this many of its pixels are on the mask (a quarter of a cell).
VISIBLE_PX = CELL_PX * CELL_PX // 4
ALERTS = AlertPolicy(on_threshold=3.0, off_threshold=2.0, min_duration_s=0.0, cooldown_s=1.0, smoothing=1)


@dataclass
class Scene:
    frames: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, H, W) bool


def _render(seed: int, n: int, events: list[PlannedEvent]) -> Scene:
    pairs = list(ClipRenderer("campus", n, WIDTH, HEIGHT, seed, events=events))
    return Scene(np.stack([f for f, _ in pairs]), np.stack([m for _, m in pairs]))


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ZsadConfig, EngineSet]]:
    from engines.build import BuildOptions, build_from_config
    from engines.model import ZsadModel, save_checkpoint

    root = tmp_path_factory.mktemp("heatmap-world")
    cfg = ZsadConfig.model_validate({"model": MODEL, "engines": {"dir": str(root / "engines"), "threads": 1}})
    torch.manual_seed(0)  # the same untrained weights every time
    ckpt = save_checkpoint(ZsadModel(cfg.model), root / "model.safetensors")
    build_from_config(
        cfg, checkpoint=ckpt, out_dir=root / "engines", options=BuildOptions(backend="onnxruntime")
    )
    opened = load_engines(cfg)
    try:
        yield cfg, opened
    finally:
        opened.close()


def _clips(cfg: ZsadConfig, engines: EngineSet, camera: str, frames: np.ndarray) -> Iterator[tuple[Any, Any]]:
    """Each scored clip of ``frames`` and its result, as the CPU graph makes them: frames scaled to the
    model's input, assembled into clips, run through the engines (the DPC history filled first)."""
    pre = cfg.model.preprocess
    assembler = ClipAssembler.from_config(pre)
    inference = ClipInference(
        engines,
        context_clips=cfg.model.dpc.context_clips,
        history_step=pre.clip_len * pre.frame_stride // pre.clip_hop,
        contexts={camera: "campus"},
    )
    width, height = engines.frame_size
    for i, frame in enumerate(frames):
        small = np.asarray(Image.fromarray(frame).resize((width, height), Image.BILINEAR))
        clip = assembler.push(camera, i / FPS, small)
        if clip is None:
            continue
        (result,) = inference([clip])
        if result.scores is not None:
            yield clip, result.scores


def _calibration(cfg: ZsadConfig, engines: EngineSet) -> Calibration:
    """The view's calibration on quiet footage, fitted as ``zsad calibrate`` fits it: location and scale
    per stream, and each stream's reliability weight from the footage's two time halves held out from
    each other. Without the folds every stream would keep weight 1, which no camera calibrated by
    ``zsad calibrate`` has. Here the untrained model's predictive stream, whose held-out tail is far
    heavier than a Gaussian's (weight 0.08), would then lead the max rule's fused score, and with it the
    peak, in the two clips where it scores a walker entering at the east edge above the cyclist."""
    quiet = _render(CALIBRATION_SEED, 120, [])
    raw: dict[str, list[float]] = {}
    for _, scores in _clips(cfg, engines, "quiet", quiet.frames):
        for stream, value in scores.scores.items():
            raw.setdefault(stream, []).append(value)
    n = len(next(iter(raw.values())))
    cal = fit_calibration({k: np.asarray(v) for k, v in raw.items()}, time_folds(n))
    unassessed = [name for name, s in cal.streams.items() if s.heldout_q is None]
    assert not unassessed, f"too few quiet clips ({n}) to hold out for {unassessed}"
    return cal


def test_the_heatmap_of_a_synthetic_cyclist_lands_on_its_mask(
    engines: tuple[ZsadConfig, EngineSet], tmp_path: Path
) -> None:
    cfg, opened = engines
    scene = _render(EVENT_SEED, FRAMES, [PlannedEvent("cyclist", EVENT_START)])
    recorder = EventRecorder("campus-1", tmp_path, MediaConfig(clips=False), fps=FPS)
    fusion = CameraFusion("campus-1", _calibration(cfg, opened), None, smoothing=ALERTS.smoothing)
    cam = CameraAlerts("campus-1", "campus", ALERTS, fusion, None, recorder=recorder)

    records: list[dict[str, Any]] = []
    described: dict[float, int] = {}  # clip end time -> the frame its maps describe
    evidences: dict[float, Any] = {}  # clip end time -> its evidence and peak
    hits = []
    fed = 0
    for clip, scores in _clips(cfg, opened, "campus-1", scene.frames):
        end = round(clip.end_pts * FPS)
        while fed <= end:  # the recorder sees every frame up to the clip's end, as the display branch does
            cam.add_frame(scene.frames[fed], fed / FPS)
            fed += 1
        _, recs = cam.update(
            scores.scores,
            None,
            clip.end_pts,
            maps=scores.maps,
            counted=scores.counted,
            frame_t=clip.start_pts,
        )
        records += recs
        first = round(clip.start_pts * FPS)
        described[clip.end_pts] = first
        evidences[clip.end_pts] = cam.last_evidence
        mask = scene.masks[first]
        if mask.sum() >= VISIBLE_PX:
            evidence = cam.last_evidence
            assert evidence is not None
            hits.append(
                (first, frame_hit(evidence.evidence, mask), frame_hit(evidence.evidence, mask, grow=CELL_PX))
            )
    records += cam.shutdown()
    assert recorder.wait_idle(30)
    recorder.close()

    # Every clip that shows the cyclist: the peak box on it, the coloured evidence around it.
    assert len(hits) >= 12, f"the cyclist is visible in only {len(hits)} scored clips"
    missed = [f for f, exact, _ in hits if not exact.box_hit]
    assert not missed, f"the peak box misses the cyclist in frames {missed}"
    spread = {f: round(near.half_mass, 2) for f, _, near in hits}
    assert sum(v >= 0.5 for v in spread.values()) >= 0.9 * len(hits), spread

    # The alert: a record with a heatmap file, drawn on the cyclist.
    assert records, "the cyclist raised no alert"
    closed = [r for r in records if r["status"] == "closed"]
    for r in records:
        validate_alert(r)
    alert = max(closed, key=lambda r: r["peak_score"])
    assert alert["heatmap"] == f"events/campus-1/{alert['alert_id']}.heatmap.jpg"
    heat_path, snap_path = tmp_path / alert["heatmap"], tmp_path / alert["snapshot"]
    assert heat_path.is_file()
    frame_index = described[alert["peak_time"]]
    mask = scene.masks[frame_index]
    snap = np.asarray(Image.open(snap_path).convert("RGB")).astype(int)
    heat = np.asarray(Image.open(heat_path).convert("RGB")).astype(int)
    assert np.abs(snap - scene.frames[frame_index].astype(int)).mean() < 4  # the frame the maps describe
    box = alert["peak_box"]
    assert mask[box["y0"] : box["y1"], box["x0"] : box["x1"]].any()
    coloured = np.abs(heat - snap).max(axis=2) > 40
    coloured[int(HEIGHT * 0.75) :, int(WIDTH * 0.6) :] = False  # the colour scale's corner
    edge = np.zeros_like(coloured)  # the peak box's outline
    edge[max(0, box["y0"] - 2) : box["y1"] + 2, max(0, box["x0"] - 2) : box["x1"] + 2] = True
    edge[box["y0"] + 3 : box["y1"] - 3, box["x0"] + 3 : box["x1"] - 3] = False
    coloured &= ~edge
    assert coloured.sum() > CELL_PX * CELL_PX // 4, "the heatmap shows almost no evidence"
    on_event = (coloured & dilate(mask, CELL_PX)).sum() / coloured.sum()
    assert on_event > 0.8, f"only {on_event:.0%} of the heatmap's colour is on the cyclist"

    if os.environ.get("ZSAD_UPDATE_SCREENSHOTS") == "1":
        figures = REPO / "docs" / "figures"
        shutil.copyfile(heat_path, figures / "heatmap_cyclist.jpg")
        save_examples(
            scene.frames[frame_index][None],
            evidences[alert["peak_time"]].evidence[None],
            mask[None],
            [0],
            figures,
            names=["localisation_cyclist"],
        )
