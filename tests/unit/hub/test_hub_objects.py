"""RunOutputs and the cameras' objects models, without a camera graph (pipeline/outputs/hub.py): which model a
camera gets, and that a model it cannot use (missing, corrupt, fitted for other frames, grid or spacing, or
beside a calibration without the stream) leaves that camera alone without the stream, with a log line naming
the file and why (tests/integration/test_objects_stream.py runs the whole graph)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from plugins.objects import ObjectsModel, model_path, save_model
from tests.fixtures.calibration_files import write_calibration
from tests.fixtures.hub_outputs import HubOutputs
from tests.fixtures.objects_scenes import objects_model

WITH_STREAM = ("pixel", "motion", "objects")


def _calibrate(path: Path, streams: tuple[str, ...], model: ObjectsModel | None = None) -> Path:
    """A calibration of ``streams`` at ``path``, and beside it ``model`` (None: no model file)."""
    write_calibration(path, streams)
    if model is not None:
        save_model(model, model_path(path))
    return path


def test_each_camera_gets_its_model_only_when_it_can_use_it(
    calib: Path, caplog: pytest.LogCaptureFixture, hub_outputs: HubOutputs
) -> None:
    cameras: dict[str, Path | None] = {
        "good": _calibrate(calib / "good.json", WITH_STREAM, objects_model()),
        "no-model": _calibrate(calib / "no-model.json", ("pixel", "motion")),
        "no-stats": _calibrate(calib / "no-stats.json", ("pixel", "motion"), objects_model()),
        "other-spacing": _calibrate(calib / "other-spacing.json", WITH_STREAM, objects_model(spacing_s=0.4)),
        "other-frames": _calibrate(calib / "other-frames.json", WITH_STREAM, objects_model((64, 96), (4, 6))),
        "other-grid": _calibrate(calib / "other-grid.json", WITH_STREAM, objects_model(grid=(4, 6))),
        "corrupt": _calibrate(calib / "corrupt.json", WITH_STREAM, objects_model()),
        "uncalibrated": None,
    }
    corrupt = model_path(calib / "corrupt.json")
    corrupt.write_bytes(corrupt.read_bytes()[:-300])  # truncated
    caplog.set_level(logging.INFO, logger="pipeline.outputs.hub")
    outputs = hub_outputs(cameras, appearance={"enabled": False}, objects={"enabled": True})
    try:
        assert outputs.objects.cameras() == ["good"]
        log = caplog.text
        good = model_path(calib / "good.json")
        assert (
            f"camera good: objects model {good}: 120 blobs in 300 frames 0.2 s apart, 192x128 frames" in log
        )
        assert f"camera no-model: no objects model at {model_path(calib / 'no-model.json')}" in log
        assert (
            f"camera no-stats: objects model {model_path(calib / 'no-stats.json')} is not used: its "
            f"calibration {calib / 'no-stats.json'} has no objects statistics (re-run zsad calibrate" in log
        )
        errors = {
            r.getMessage().split(":")[0]: r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
        }
        for camera, what in (
            ("other-spacing", "frames 0.4 s apart, the config's objects.spacing_s is 0.2"),
            ("other-frames", "frame size (64, 96), the camera gives (128, 192)"),
            ("other-grid", "grid (4, 6), the engines use (8, 12)"),
            ("corrupt", "cannot be read (truncated or corrupt"),
        ):
            message = errors[f"camera {camera}"]
            assert message.startswith(
                f"camera {camera}: objects model {model_path(calib / f'{camera}.json')}: "
            )
            assert what in message
            assert message.endswith(
                "re-run zsad calibrate for this camera; it runs without the objects stream"
            )
        # The others run: each camera has its alerts, with or without the stream.
        assert sorted(outputs.alerts) == sorted(cameras)
        outputs.remove_camera("good")
        assert outputs.objects.cameras() == []
    finally:
        outputs.shutdown()


def test_no_camera_gets_a_model_with_the_stream_off(tmp_path: Path, hub_outputs: HubOutputs) -> None:
    cal = _calibrate(tmp_path / "good.json", WITH_STREAM, objects_model())
    outputs = hub_outputs({"good": cal}, appearance={"enabled": False}, objects={"enabled": False})
    try:
        assert outputs.objects.cameras() == []
    finally:
        outputs.shutdown()
