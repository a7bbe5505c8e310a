"""``zsad demo`` keeps an earlier demo's calibration only when the models beside it of the memory streams that
are on (stationary, objects) and that the calibration has statistics for fit the config
(pipeline/cli/demo.py, ``_models_fit``), and its appearance memory fits the engine (``_memory_fits``);
otherwise it calibrates again. Cameras that would play the same
footage with the same settings share one collection (``_footage_settings``), each fitted under its own
name (``CalibrationSamples.for_camera``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from core.config import ZsadConfig, parse_config
from pipeline.cli.calibrate import CalibrationSamples
from pipeline.cli.demo import _footage_settings, _memory_fits, _models_fit
from plugins import objects, stationary
from plugins.appearance import AppearanceMemory, MemoryExpectation, fit_memory, memory_path, save_memory
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


def _cameras(**second: object) -> ZsadConfig:
    first = {"id": "cam-a", "uri": "file:///a.mp4", "context": "campus"}
    return parse_config(
        json.dumps({"cameras": [first, {**first, "id": "cam-b", "uri": "file:///b.mp4", **second}]})
    )


def test_an_appearance_memory_of_another_engine_spec_or_from_before_the_spec_is_calibrated_again(
    tmp_path: Path,
) -> None:
    """A demo folder from an earlier zsad: its memories (version 1, no spec hash) or memories fitted on an
    appearance engine of another spec are not kept, so ``make demo`` calibrates those cameras again."""
    calibration = tmp_path / "cam.json"
    spec = "a1" * 32
    expect = MemoryExpectation(
        encoder="mobilenet_v2", weights_sha256="0" * 64, grid=(2, 3), channels=4, model_spec_sha256=spec
    )
    features = np.random.default_rng(0).random((10, 4, 2, 3)).astype(np.float32)
    memory = fit_memory(features, encoder="mobilenet_v2", weights_sha256="0" * 64, model_spec_sha256=spec)
    save_memory(memory, memory_path(calibration))
    assert _memory_fits(calibration, expect)
    assert not _memory_fits(calibration, replace(expect, model_spec_sha256="b2" * 32))
    path = memory_path(calibration)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"][()]))
    del meta["model_spec_sha256"]
    arrays["meta"] = np.array(json.dumps({**meta, "version": 1}))
    with path.open("wb") as f:
        np.savez(f, **arrays)
    assert not _memory_fits(calibration, expect)
    assert _memory_fits(calibration, None)  # no appearance engine: no memory needed


def test_cameras_share_a_collection_only_when_everything_but_their_names_and_videos_is_the_same() -> None:
    def same(cfg: ZsadConfig) -> bool:
        return _footage_settings(cfg.camera_settings("cam-a")) == _footage_settings(
            cfg.camera_settings("cam-b")
        )

    assert same(_cameras())
    assert same(_cameras(calibration="cam-b.json"))
    assert not same(_cameras(context="parking"))  # another context's footage
    assert not same(_cameras(sampling={"fps": 5}))
    assert not same(_cameras(alerts={"smoothing": 5}))
    assert not same(_cameras(mask=[[[0, 0], [0.5, 0], [0.5, 0.5]]]))


def test_shared_samples_name_each_camera_and_share_the_arrays() -> None:
    frames = np.random.default_rng(0).integers(60, 70, (20, *SIZE, 3), dtype=np.uint8)
    fitted = stationary.fit_model(frames, GRID, window=4, spacing_s=0.4, camera="cam-a")
    c = 4
    memory = AppearanceMemory(
        np.zeros((6, c), np.float32),
        np.tile(np.eye(c, dtype=np.float32), (6, 1, 1)),
        grid=(2, 3),
        encoder="mobilenet_v2",
        weights_sha256="0" * 64,
        camera="cam-a",
    )
    samples = CalibrationSamples(
        samples={"pixel": np.ones(4)},
        folds=np.zeros(4, np.int8),
        segments=np.zeros(4, np.int64),
        memory=memory,
        stationary=fitted,
        objects=objects_model(spacing_s=0.2),
    )
    theirs = samples.for_camera("cam-b")
    assert theirs.stationary is not None
    assert theirs.objects is not None
    assert (theirs.stationary.camera, theirs.objects.camera) == ("cam-b", "cam-b")
    assert fitted.camera == "cam-a"  # the first camera's model is not renamed under it
    assert theirs.stationary.background is fitted.background
    assert theirs.memory is not None
    assert theirs.memory.camera == "cam-b"
    assert memory.camera == "cam-a"
    assert theirs.memory.mean is memory.mean
    assert theirs.samples is samples.samples
    assert samples.for_camera("cam-a").stationary is fitted


def test_footage_on_which_no_stream_varied_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    """A lens cap or a frozen feed: every stream is left out (no spread to scale by), so a camera with that
    calibration could never alert; zsad calibrate says so and writes nothing."""
    import pytest

    from pipeline.cli.calibrate import CalibrationFootageError, save_camera_calibration

    cfg = parse_config(
        json.dumps(
            {"output_dir": str(tmp_path / "out"), "cameras": [{"id": "cap", "uri": "rtsp://127.0.0.1/cap"}]}
        )
    )
    n = 40
    still = CalibrationSamples(
        samples={"pixel": np.zeros(n), "motion": np.zeros(n)},
        folds=(np.arange(n) * 4 // n).astype(np.int8),
        segments=np.zeros(n, np.int64),
    )
    out = tmp_path / "calib" / "cap.json"
    with pytest.raises(CalibrationFootageError, match="no stream varied on the footage"):
        # The engines are not reached: the fit is refused first.
        save_camera_calibration(cfg, None, "cap", still, out)  # type: ignore[arg-type]
    assert not out.parent.exists()
