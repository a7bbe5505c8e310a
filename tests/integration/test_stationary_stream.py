"""The stationary stream wired into calibration and the run: real GStreamer decoding of real synthetic scene
videos, real ONNX Runtime engines of a tiny untrained model (``tests/fixtures/run_world.py``); the stream
itself needs no engine."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import ZsadConfig, parse_config
from pipeline.cli.calibrate import calibrate_camera, collect_scores
from pipeline.clips import Clip
from pipeline.inference import ClipInference, load_engines
from plugins.fusion import load_calibration
from plugins.stationary import StationaryModels, fit_model, load_model, model_path, save_model
from tests.fixtures.run_world import calibrate_cameras, refusal_logged, run_calibrated, scene_uri, site_config

DPC_GRID = (3, 4)  # the world model: 48 x 64 frames in 16-pixel patches
# The world's clips hold 2 frames 2 apart and start every 4 frames at 10 fps: every 2nd frame arrives, so a
# 0.2 s spacing takes each of them; a window of 4 is full after 4 of them (the third clip).
STATIONARY = {"spacing_s": 0.2, "window": 4}


def _config(
    world: dict[str, Path], out: Path, cameras: list[dict[str, Any]], **stationary: object
) -> ZsadConfig:
    raw = site_config(
        world, out, cameras, appearance={"enabled": False}, stationary={**STATIONARY, **stationary}
    )
    return parse_config(json.dumps(raw), "<test>")


def test_calibrate_writes_the_model_and_held_out_samples_once_the_window_is_full(
    world: dict[str, Path], tmp_path: Path
) -> None:
    camera = {"id": "campus", "uri": scene_uri(world, "training", "campus_000.mp4"), "context": "campus"}
    cfg = _config(world, tmp_path / "out", [camera])
    engines = load_engines(cfg)
    try:
        collected = collect_scores(cfg, engines, cfg.camera_settings("campus"), [camera["uri"]])
        out = calibrate_camera(
            cfg, engines, "campus", [camera["uri"]], tmp_path / "calib" / "campus.json", min_clips=8
        )
    finally:
        engines.close()
    m = collected.clips
    assert m >= 8
    assert set(collected.samples) == {"predictive", "pixel", "motion", "stationary"}
    held_out = collected.samples["stationary"]
    assert held_out.shape == (m,)
    assert np.isfinite(held_out).sum() >= m - 2  # the DPC history fills in 2 clips, the window in 3
    model = collected.stationary
    assert model is not None
    assert (model.grid, model.frame_size, model.window) == (DPC_GRID, (48, 64), 4)
    # 80 frames at 10 fps, every 2nd one taken (0.2 s apart).
    assert model.n_frames == pytest.approx(40, abs=2)
    saved = load_model(model_path(out), frame_size=(48, 64), grid=DPC_GRID, spacing_s=0.2)
    assert saved.camera == "campus"
    np.testing.assert_array_equal(saved.background, model.background)
    cal = load_calibration(out)
    assert "stationary" in cal.streams
    assert cal.streams["stationary"].n == int(np.isfinite(held_out).sum())
    # Written last, the calibration names the model file it belongs with.
    from plugins.modelfile import arrays_sha256

    assert cal.models == {"stationary": arrays_sha256(saved.background, saved.mean, saved.std)}


def test_calibrating_with_the_stream_off_removes_an_old_model(world: dict[str, Path], tmp_path: Path) -> None:
    camera = {"id": "parking", "uri": scene_uri(world, "training", "parking_000.mp4"), "context": "parking"}
    cfg = _config(world, tmp_path / "out", [camera], enabled=False)
    out = tmp_path / "calib" / "parking.json"
    stale = model_path(out)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an old model")
    calibrate_cameras(cfg, load_engines(cfg), {"parking": camera["uri"]}, out.parent)
    assert not stale.exists()
    assert "stationary" not in load_calibration(out).streams


def test_the_run_scores_the_stream_and_a_camera_whose_model_does_not_fit_runs_without_it(
    world: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calib = tmp_path / "calib"
    uri = scene_uri(world, "training", "campus_000.mp4")
    cfg0 = _config(world, tmp_path / "cal", [{"id": "campus", "uri": uri}])
    calibrate_cameras(cfg0, load_engines(cfg0), {"campus": uri}, calib)
    # "other-spacing": campus's calibration with a model fitted on frames 0.4 s apart (the calibration as
    # one written before calibrations named their models' hashes, which would refuse any other model first).
    copied = json.loads((calib / "campus.json").read_text())
    assert set(copied.pop("models")) == {"stationary"}
    (calib / "other-spacing.json").write_text(json.dumps(copied))
    good = load_model(model_path(calib / "campus.json"))
    frames = np.repeat(good.background[None], 12, axis=0)
    save_model(fit_model(frames, DPC_GRID, window=4, spacing_s=0.4), model_path(calib / "other-spacing.json"))

    caplog.set_level(logging.INFO)
    calibrations = {"good": calib / "campus.json", "other-spacing": calib / "other-spacing.json"}
    app, rows = run_calibrated(
        world, tmp_path / "out", calibrations, lambda out, cameras: _config(world, out, cameras)
    )
    assert app.outputs.stationary.cameras() == ["good"]
    good_rows, other_rows = rows["good"], rows["other-spacing"]
    assert good_rows
    assert other_rows
    with_stream = ["stationary" in r["streams"] for r in good_rows]
    # Scored once the window is full, then on every clip.
    assert any(with_stream)
    first = with_stream.index(True)
    assert all(with_stream[first:])
    assert first <= 2
    assert not any("stationary" in r["streams"] for r in other_rows)
    refused = model_path(calib / "other-spacing.json")
    why = "0.4 s apart, the config's stationary.spacing_s is 0.2"
    assert refusal_logged(caplog.records, "other-spacing", "stationary", refused, why), caplog.text


def _clip(camera: str, index: int, frames: np.ndarray, t0: float) -> Clip:
    # 2 frames 0.2 s apart, clips 0.4 s apart: the world's layout at 10 fps.
    return Clip(camera, index, frames, t0 + 0.2 * np.arange(frames.shape[0]), index * 4)


def test_clip_inference_adds_the_map_once_the_window_is_full_and_reset_empties_it(
    world: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _config(world, tmp_path / "out", [])
    engines = load_engines(cfg)
    rng = np.random.default_rng(0)
    background = rng.integers(40, 120, (48, 64, 3), dtype=np.uint8)
    normal = np.repeat(background[None], 12, axis=0)
    models = StationaryModels()
    models.set("cam", fit_model(normal, DPC_GRID, window=4, spacing_s=0.2))
    inference = ClipInference(
        engines, context_clips=2, history_step=1, contexts={}, stationary=models, stationary_spacing_s=0.2
    )
    scene = np.repeat(background[None], 2, axis=0).copy()
    scene[:, 20:30, 40:50] = 255  # something that stays, in DPC cell (1, 2)

    def run(index: int) -> dict[str, np.ndarray] | None:
        res = inference([_clip("cam", index, scene, 0.4 * index), _clip("other", index, scene, 0.4 * index)])
        assert res[1].scores is None or "stationary" not in res[1].scores.maps  # no model, no stream
        return None if res[0].scores is None else res[0].scores.maps

    try:
        maps = [run(k) for k in range(4)]
        # The DPC history fills in 2 clips; the window takes every frame (0.2 s apart) and is full at clip 1.
        assert maps[0] is None
        assert maps[1] is None
        for m in maps[2:]:
            assert m is not None
            assert m["stationary"].shape == DPC_GRID
            assert np.unravel_index(int(m["stationary"].argmax()), DPC_GRID) == (1, 2)
        inference.reset("cam")
        after = [run(k) for k in range(4, 8)]
        assert after[0] is None  # the DPC history and the window refill
        assert after[1] is None
        assert after[2] is not None
        assert "stationary" in after[2]
    finally:
        engines.close()
