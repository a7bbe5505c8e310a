"""RunOutputs and the semantic stream's source (pipeline/outputs/hub.py): a camera whose calibration was
fitted on another source of the stream than the run's starts uncalibrated, saying why; the others keep
theirs."""

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
