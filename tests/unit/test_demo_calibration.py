"""``zsad demo`` keeps an earlier demo's calibration only when the models beside it of the memory streams that
are on (stationary, objects) and that the calibration has statistics for fit the config
(pipeline/cli/demo.py, ``_models_fit``); otherwise it calibrates again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.config import ZsadConfig, parse_config
from pipeline.cli.demo import _models_fit
from plugins import objects, stationary
from tests.fixtures.calibration_files import write_calibration
from tests.fixtures.objects_scenes import GRID, SIZE, objects_model


def _cfg(objects_on: bool, objects_spacing_s: float = 0.2) -> ZsadConfig:
    return parse_config(
        json.dumps({"objects": {"enabled": objects_on, "spacing_s": objects_spacing_s}, "stationary": {}})
    )


def test_a_calibration_is_kept_only_when_the_models_of_the_streams_that_are_on_fit(tmp_path: Path) -> None:
    calibration = tmp_path / "cam.json"
    write_calibration(calibration, ("pixel", "stationary", "objects"))
    frames = np.random.default_rng(0).integers(60, 70, (20, *SIZE, 3), dtype=np.uint8)
    stationary.save_model(
        stationary.fit_model(frames, GRID, window=4, spacing_s=0.4), stationary.model_path(calibration)
    )
    assert _models_fit(_cfg(objects_on=False), calibration)
    assert not _models_fit(_cfg(objects_on=True), calibration)  # no objects model
    objects.save_model(objects_model(spacing_s=0.2), objects.model_path(calibration))
    assert _models_fit(_cfg(objects_on=True), calibration)
    assert not _models_fit(_cfg(objects_on=True, objects_spacing_s=0.4), calibration)  # fitted at 0.2 s
    stationary.model_path(calibration).unlink()
    assert not _models_fit(_cfg(objects_on=True), calibration)


def test_a_stream_the_calibration_has_no_statistics_for_needs_no_model(tmp_path: Path) -> None:
    # Footage that showed too few objects gives a calibration without the stream and no model file:
    # calibrating again on every demo would not change that.
    calibration = tmp_path / "cam.json"
    assert not _models_fit(_cfg(objects_on=True), calibration)  # no calibration at all
    write_calibration(calibration, ("pixel", "stationary"))
    frames = np.random.default_rng(0).integers(60, 70, (20, *SIZE, 3), dtype=np.uint8)
    stationary.save_model(
        stationary.fit_model(frames, GRID, window=4, spacing_s=0.4), stationary.model_path(calibration)
    )
    assert _models_fit(_cfg(objects_on=True), calibration)
