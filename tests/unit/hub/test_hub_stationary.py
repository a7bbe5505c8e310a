"""RunOutputs and the cameras' stationary models, without a camera graph (pipeline/outputs/hub.py): which
model a camera gets, and that a model it cannot use leaves it running without the stream, with a log line
saying why (tests/integration/test_stationary_stream.py runs the whole graph)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from plugins.stationary import fit_model, model_path, save_model
from tests.fixtures.calibration_files import write_calibration
from tests.fixtures.hub_outputs import HubOutputs

# The default model: 128 x 192 frames in 16-pixel patches.
FRAME = (128, 192)
GRID = (8, 12)


def _calibrate(path: Path, streams: tuple[str, ...], *, spacing_s: float | None = 0.4) -> Path:
    """A calibration of ``streams`` at ``path``, and beside it (unless ``spacing_s`` is None) a stationary
    model of the default frame size fitted at ``spacing_s``."""
    rng = write_calibration(path, streams)
    if spacing_s is not None:
        frames = rng.integers(60, 70, (20, *FRAME, 3), dtype=np.uint8)
        save_model(fit_model(frames, GRID, window=4, spacing_s=spacing_s, camera=path.stem), model_path(path))
    return path


def test_each_camera_gets_its_model_only_when_it_can_use_it(
    calib: Path, caplog: pytest.LogCaptureFixture, hub_outputs: HubOutputs
) -> None:
    with_stream = ("pixel", "motion", "stationary")
    cameras: dict[str, Path | None] = {
        "good": _calibrate(calib / "good.json", with_stream),
        "no-model": _calibrate(calib / "no-model.json", ("pixel", "motion"), spacing_s=None),
        "no-stats": _calibrate(calib / "no-stats.json", ("pixel", "motion")),
        "other-spacing": _calibrate(calib / "other-spacing.json", with_stream, spacing_s=0.3),
        "uncalibrated": None,
    }
    caplog.set_level(logging.INFO, logger="pipeline.outputs.hub")
    outputs = hub_outputs(cameras, appearance={"enabled": False}, stationary={})
    try:
        assert outputs.stationary.cameras() == ["good"]
        log = caplog.text
        good = model_path(calib / "good.json")
        assert f"camera good: stationary model {good}: 20 frames 0.4 s apart" in log
        assert f"camera no-model: no stationary model at {model_path(calib / 'no-model.json')}" in log
        assert (
            f"camera no-stats: stationary model {model_path(calib / 'no-stats.json')} is not used: its "
            f"calibration {calib / 'no-stats.json'} has no stationary statistics (re-run zsad calibrate"
            in log
        )
        assert "0.3 s apart, the config's stationary.spacing_s is 0.4" in log
        outputs.remove_camera("good")
        assert outputs.stationary.cameras() == []
    finally:
        outputs.shutdown()


def test_no_camera_gets_a_model_with_the_stream_off(tmp_path: Path, hub_outputs: HubOutputs) -> None:
    cal = _calibrate(tmp_path / "good.json", ("pixel", "motion", "stationary"))
    outputs = hub_outputs({"good": cal}, appearance={"enabled": False}, stationary={"enabled": False})
    try:
        assert outputs.stationary.cameras() == []
    finally:
        outputs.shutdown()


def test_a_model_its_calibration_was_not_written_with_is_refused(
    calib: Path, caplog: pytest.LogCaptureFixture, hub_outputs: HubOutputs
) -> None:
    """A calibration names the sha256 of the models written with it: a recalibration that wrote its new
    model and then failed before its calibration (a full disk, Ctrl-C) leaves the old calibration beside
    the new model, whose scores its statistics do not describe."""
    import dataclasses

    from plugins.fusion import load_calibration, save_calibration
    from plugins.modelfile import recorded_arrays_sha256

    streams = ("pixel", "motion", "stationary")
    cameras: dict[str, Path | None] = {
        "bound": _calibrate(calib / "bound.json", streams),
        "replaced": _calibrate(calib / "replaced.json", streams),
    }
    for name in cameras:
        path = calib / f"{name}.json"
        cal = load_calibration(path)
        bound = {"stationary": str(recorded_arrays_sha256(model_path(path)))}
        save_calibration(dataclasses.replace(cal, models=bound), path)
    # The interrupted recalibration: a new model, the old calibration.
    frames = np.random.default_rng(9).integers(0, 255, (20, *FRAME, 3), dtype=np.uint8)
    save_model(fit_model(frames, GRID, window=4, spacing_s=0.4), model_path(calib / "replaced.json"))
    caplog.set_level(logging.INFO, logger="pipeline.outputs.hub")
    outputs = hub_outputs(cameras, appearance={"enabled": False}, stationary={})
    try:
        assert outputs.stationary.cameras() == ["bound"]
        assert (
            f"camera replaced: stationary model {model_path(calib / 'replaced.json')} is not the one its "
            f"calibration {calib / 'replaced.json'} was written with" in caplog.text
        )
        assert "re-run zsad calibrate for this camera" in caplog.text
    finally:
        outputs.shutdown()
