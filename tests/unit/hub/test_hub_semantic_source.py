"""RunOutputs and the semantic stream's source (pipeline/outputs/hub.py): a camera whose calibration was
fitted on another source of the stream than the run's, or scored by another model than the run's engines,
starts uncalibrated, saying why; the others keep theirs."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from plugins.fusion import load_calibration, save_calibration
from tests.fixtures.calibration_files import write_calibration
from tests.fixtures.hub_outputs import HubOutputs


def _calibrate(path: Path, source: str | None) -> Path:
    write_calibration(path, ("pixel", "motion", "semantic"))
    save_calibration(replace(load_calibration(path), semantic_source=source), path)
    return path


@pytest.mark.parametrize("run_source", ["appearance", "head"])
def test_a_calibration_of_the_other_source_is_refused_and_the_camera_runs_uncalibrated(
    calib: Path, caplog: pytest.LogCaptureFixture, hub_outputs: HubOutputs, run_source: str
) -> None:
    cameras: dict[str, Path | None] = {
        "older": _calibrate(calib / "older.json", None),  # from before the source was recorded: the head's
        "clip": _calibrate(calib / "clip.json", "appearance"),
        "plain": calib / "plain.json",
    }
    write_calibration(calib / "plain.json", ("pixel", "motion"))
    caplog.set_level(logging.WARNING, logger="pipeline.outputs.hub")
    outputs = hub_outputs(cameras, semantic_source=run_source)
    try:
        refused = "clip" if run_source == "head" else "older"
        kept = "older" if run_source == "head" else "clip"
        assert outputs.alerts[refused].fusion.calibration.identity
        assert not outputs.alerts[kept].fusion.calibration.identity
        # No semantic statistics: nothing to refuse.
        assert not outputs.alerts["plain"].fusion.calibration.identity
        fitted = "appearance" if refused == "clip" else "head"
        assert (
            f"camera {refused}: its semantic stream was calibrated on the {fitted} source and this run's "
            f"comes from the {run_source}" in caplog.text
        )
        assert f"camera {kept}: its semantic" not in caplog.text
    finally:
        outputs.shutdown()


def test_a_run_without_a_semantic_stream_keeps_every_calibration(
    calib: Path, hub_outputs: HubOutputs
) -> None:
    outputs = hub_outputs({"clip": _calibrate(calib / "clip.json", "appearance")}, semantic_source=None)
    try:
        assert not outputs.alerts["clip"].fusion.calibration.identity
    finally:
        outputs.shutdown()


def test_a_calibration_fitted_on_another_camera_is_said_at_start_and_by_validate(
    calib: Path, caplog: pytest.LogCaptureFixture, hub_outputs: HubOutputs, tmp_path: Path
) -> None:
    """Its levels and memories describe another scene: said (not refused: a copy for an identical view may
    be meant), naming the file and both cameras; the camera's own calibration says nothing."""
    from core.config import parse_config
    from pipeline.cli.validate import config_warnings

    write_calibration(calib / "parking-1.json", ("pixel", "motion"))
    write_calibration(calib / "campus-1.json", ("pixel", "motion"))
    caplog.set_level(logging.WARNING, logger="pipeline.outputs.hub")
    outputs = hub_outputs({"campus-1": calib / "parking-1.json", "parking-1": calib / "parking-1.json"})
    try:
        assert not outputs.alerts["campus-1"].fusion.calibration.identity  # used, not refused
        assert "camera campus-1: " in caplog.text
        assert "fitted on the footage of camera 'parking-1'" in caplog.text
        assert "camera parking-1: " not in caplog.text
    finally:
        outputs.shutdown()
    cfg = parse_config(
        f"output_dir: {tmp_path / 'out'}\nengines: {{dir: {tmp_path / 'none'}}}\ncameras:\n"
        f"  - {{id: campus-1, uri: 'rtsp://h/a', calibration: '{calib / 'parking-1.json'}'}}\n"
        f"  - {{id: parking-1, uri: 'rtsp://h/b', calibration: '{calib / 'parking-1.json'}'}}\n"
    )
    said = [w for w in config_warnings(cfg) if "fitted on the footage of camera" in w]
    assert len(said) == 1
    assert said[0].startswith("camera campus-1: ")


def test_a_calibration_scored_by_another_model_is_refused_and_the_camera_runs_uncalibrated(
    calib: Path, caplog: pytest.LogCaptureFixture, hub_outputs: HubOutputs
) -> None:
    """A retrained checkpoint or another model section scores the learned streams on other levels: the
    calibration of the old engines is refused by name; one of these engines ("m" here), or one from before
    the model was recorded, is kept (that one saying so)."""
    cameras: dict[str, Path | None] = {}
    for camera, model in (("old-model", "zsad:aaaa:bbbb"), ("this-model", "m"), ("unrecorded", None)):
        path = calib / f"{camera}.json"
        write_calibration(path, ("pixel", "motion"))
        save_calibration(replace(load_calibration(path), model_id=model), path)
        cameras[camera] = path
    assert load_calibration(calib / "old-model.json").model_id == "zsad:aaaa:bbbb"  # saved and read back
    caplog.set_level(logging.INFO, logger="pipeline.outputs.hub")
    outputs = hub_outputs(cameras)
    try:
        assert outputs.alerts["old-model"].fusion.calibration.identity
        assert not outputs.alerts["this-model"].fusion.calibration.identity
        assert not outputs.alerts["unrecorded"].fusion.calibration.identity
        assert (
            "camera old-model: it was calibrated with the model zsad:aaaa:bbbb and this run's engines are m"
            in caplog.text
        )
        assert "recalibrate the camera" in caplog.text
        # One from before the model was recorded is kept, and said.
        said = [
            r.getMessage() for r in caplog.records if "records no model it was scored with" in r.getMessage()
        ]
        assert len(said) == 1
        assert said[0].startswith("camera unrecorded: ")
    finally:
        outputs.shutdown()
