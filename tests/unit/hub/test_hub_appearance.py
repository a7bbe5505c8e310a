"""RunOutputs and the cameras' appearance memories, without a camera graph (pipeline/outputs/hub.py): which
memory a camera gets, and that any memory it cannot use leaves it running without the stream, with a log
line saying why (tests/integration/test_appearance_stream.py runs the whole graph)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from plugins.appearance import MemoryExpectation, fit_memory, memory_path, save_memory
from tests.fixtures.calibration_files import write_calibration
from tests.fixtures.hub_outputs import HubOutputs

SHA = "5e" * 32
SPEC = "3a" * 32
EXPECT = MemoryExpectation(
    encoder="stand-in", weights_sha256=SHA, grid=(2, 3), channels=4, model_spec_sha256=SPEC
)


def _calibrate(path: Path, streams: tuple[str, ...], *, memory: bool, spec: str = SPEC) -> Path:
    """A calibration of ``streams`` at ``path``, and beside it a memory fitted for :data:`EXPECT` (or, with
    ``spec``, for an engine of another spec: other taps or projection, the same grid and channels)."""
    rng = write_calibration(path, streams)
    if memory:
        features = rng.random((20, 4, 2, 3)).astype(np.float32)
        fitted = fit_memory(
            features, encoder="stand-in", weights_sha256=SHA, model_spec_sha256=spec, camera=path.stem
        )
        save_memory(fitted, memory_path(path))
    return path


def test_each_camera_gets_its_memory_only_when_it_can_use_it(
    calib: Path, caplog: pytest.LogCaptureFixture, hub_outputs: HubOutputs
) -> None:
    with_stream = ("pixel", "motion", "appearance")
    cameras: dict[str, Path | None] = {
        "good": _calibrate(calib / "good.json", with_stream, memory=True),
        "no-memory": _calibrate(calib / "no-memory.json", ("pixel", "motion"), memory=False),
        "no-stats": _calibrate(calib / "no-stats.json", ("pixel", "motion"), memory=True),
        "other-spec": _calibrate(calib / "other-spec.json", with_stream, memory=True, spec="9c" * 32),
        "uncalibrated": None,
        "unreadable": calib / "unreadable.json",
    }
    (calib / "unreadable.json").write_text("{not json")
    save_memory(
        fit_memory(
            np.random.default_rng(1).random((5, 4, 2, 3)),
            encoder="stand-in",
            weights_sha256=SHA,
            model_spec_sha256=SPEC,
        ),
        memory_path(calib / "unreadable.json"),
    )
    caplog.set_level(logging.INFO, logger="pipeline.outputs.hub")
    outputs = hub_outputs(cameras, EXPECT)
    try:
        assert outputs.memories.cameras() == ["good"]
        log = caplog.text
        assert (
            f"camera good: appearance memory {memory_path(cameras['good'])}: encoder stand-in, 2x3 x 4" in log
        )
        assert f"camera no-memory: no appearance memory at {memory_path(calib / 'no-memory.json')}" in log
        # Fitted on an engine of another spec (same encoder, weights, grid and channels): refused by name.
        assert (
            f"appearance memory {memory_path(calib / 'other-spec.json')}: fitted for another appearance "
            "engine: encoder spec sha256 9c9c9c9c9c9c, the engine's is 3a3a3a3a3a3a (its taps, projection "
            "or frame size changed)" in log
        )
        assert (
            f"camera no-stats: appearance memory {memory_path(calib / 'no-stats.json')} is not used: its "
            f"calibration {calib / 'no-stats.json'} has no appearance statistics (re-run zsad calibrate"
            in log
        )
        assert (
            f"camera unreadable: appearance memory {memory_path(calib / 'unreadable.json')} is not used: its "
            "calibration cannot be read" in log
        )
        # Removing a camera forgets its memory.
        outputs.remove_camera("good")
        assert outputs.memories.get("good") is None
    finally:
        outputs.shutdown()


def test_without_an_appearance_engine_no_memory_is_read(tmp_path: Path, hub_outputs: HubOutputs) -> None:
    cal = _calibrate(tmp_path / "cam.json", ("pixel", "appearance"), memory=True)
    outputs = hub_outputs({"cam": cal}, None)
    try:
        assert outputs.memories.cameras() == []
    finally:
        outputs.shutdown()
