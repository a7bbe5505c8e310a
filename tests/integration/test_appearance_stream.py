"""The appearance stream wired into scoring, calibration and the run: real GStreamer, real ONNX Runtime
engines of a tiny untrained model (``tests/fixtures/run_world.py``), and a stand-in for the appearance engine
(``tests/fixtures/appearance_standin.py``: the real encoder engine is added by another change)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from core.config import ZsadConfig, parse_config
from engines.backends.base import InputMismatch
from pipeline.cli.calibrate import calibrate_camera, collect_scores
from pipeline.clips import Clip
from pipeline.inference import ClipInference, EngineError, EngineSet, appearance_expectation, load_engines
from pipeline.run import Application
from plugins.appearance import (
    AppearanceMemories,
    AppearanceMemory,
    appearance_map,
    fit_memory,
    load_memory,
    memory_path,
    save_memory,
)
from plugins.fusion import HELDOUT_FOLDS, load_calibration
from plugins.preprocess import Normaliser
from plugins.zones import CellFilters, ViewZones
from tests.fixtures.appearance_standin import StandInAppearanceEngine
from tests.fixtures.batch_limit import limit_batches
from tests.fixtures.run_world import calibrate_cameras, run_through, scene_uri, site_config

DPC_GRID = (3, 4)  # the world model: 48 x 64 frames in 16-pixel patches
FEATURE_GRID = (6, 8)  # the stand-in engine: stride 8


def _config(world: dict[str, Path], out: Path, cameras: list[dict[str, object]]) -> ZsadConfig:
    return parse_config(json.dumps(site_config(world, out, cameras)), "<test>")


def _engines(cfg: ZsadConfig, **standin: object) -> EngineSet:
    """The world's real engines plus the stand-in appearance engine at the backbone's frame size."""
    engines = load_engines(cfg)
    engines.appearance = StandInAppearanceEngine(engines.frame_size, **standin)  # type: ignore[arg-type]
    return engines


def _clip(camera: str, index: int, frames: np.ndarray) -> Clip:
    return Clip(camera, index, frames, np.arange(frames.shape[0], dtype=np.float64), index * frames.shape[0])


def _standin_with_memory(
    world: dict[str, Path], tmp_path: Path, rng: np.random.Generator
) -> tuple[EngineSet, StandInAppearanceEngine, Normaliser, AppearanceMemory]:
    """The world's engines with the stand-in encoder, its normaliser, and a memory fitted on 40 random
    normal frames."""
    engines = _engines(_config(world, tmp_path / "out", []))
    standin = engines.appearance
    assert isinstance(standin, StandInAppearanceEngine)
    norm = Normaliser(standin.manifest.preprocessing.mean, standin.manifest.preprocessing.std)
    expect = appearance_expectation(engines)
    assert expect is not None
    assert (expect.grid, expect.channels, expect.encoder) == (FEATURE_GRID, 16, "stand-in-encoder")
    normal = rng.integers(0, 120, (40, 48, 64, 3), dtype=np.uint8)
    memory = fit_memory(
        standin({"frames": norm(normal)})["features"],
        encoder=expect.encoder,
        weights_sha256=expect.weights_sha256,
    )
    return engines, standin, norm, memory


# -- ClipInference ---------------------------------------------------------------------------------------


def test_clip_inference_adds_the_appearance_map_on_the_dpc_grid_once_per_scored_clip(
    world: dict[str, Path], tmp_path: Path
) -> None:
    engines, standin, norm, memory = _standin_with_memory(world, tmp_path, np.random.default_rng(0))
    rng = np.random.default_rng(0)
    memories = AppearanceMemories()
    memories.set("cam", memory)
    filters = CellFilters()
    filters.set("cam", ViewZones(mask=[[(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]]), None)  # left half
    inference = ClipInference(
        engines, context_clips=2, history_step=1, contexts={}, filters=filters, memories=memories
    )
    standin.calls.clear()
    clips = {
        cam: [rng.integers(0, 120, (2, 48, 64, 3), dtype=np.uint8) for _ in range(4)]
        for cam in ("cam", "other")
    }
    clips["cam"][3][-1, 8:16, 40:48] = 255  # something white in the last frame, right half: block (1, 5)
    results = []
    for k in range(4):
        results.append(inference([_clip("cam", k, clips["cam"][k]), _clip("other", k, clips["other"][k])]))
    # The first two clips of each camera fill the DPC history: no score, no encoder call.
    assert all(r.scores is None for batch in results[:2] for r in batch)
    assert standin.calls == [1, 1]  # then one call a batch, for the one scored clip whose camera has a memory
    for k in (2, 3):
        scored, other = results[k][0].scores, results[k][1].scores
        assert scored is not None
        assert other is not None
        assert "appearance" not in other.maps
        assert "appearance" not in other.scores
        m = scored.maps["appearance"]
        assert m.shape == scored.maps["predictive"].shape == DPC_GRID
        want = appearance_map(
            memory, standin({"frames": norm(clips["cam"][k][-1:])})["features"][0], DPC_GRID
        )
        np.testing.assert_allclose(m, want, rtol=1e-6)
        counted = scored.counted
        assert counted is not None
        assert np.isnan(counted["appearance"][:, :2]).all()  # the mask applies to the new stream too
        assert scored.scores["appearance"] == pytest.approx(float(np.nanmax(counted["appearance"])))
    # The planted white block lands on its DPC cell, far above that cell's level in the clip before.
    last, before = results[3][0].scores, results[2][0].scores
    assert last is not None
    assert before is not None
    assert np.unravel_index(int(np.nanargmax(last.counted["appearance"])), DPC_GRID) == (0, 2)  # type: ignore[index]
    assert last.scores["appearance"] > 2 * before.scores["appearance"]
    engines.close()


def test_an_appearance_engine_that_does_not_fit_the_backbone_is_refused(
    world: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _config(world, tmp_path / "out", [])
    engines = load_engines(cfg)
    try:
        engines.appearance = StandInAppearanceEngine((32, 48))  # type: ignore[assignment]
        with pytest.raises(EngineError, match=r"takes 32x48 frames but the clips hold the backbone's 64x48"):
            ClipInference(engines, context_clips=2, history_step=1, contexts={})
        engines.appearance = StandInAppearanceEngine((56, 48))  # type: ignore[assignment]
        engines.frame_size = (56, 48)
        with pytest.raises(
            EngineError, match=r"features do not fit the DPC maps: an 6x7 map cannot be max-pooled"
        ):
            ClipInference(engines, context_clips=2, history_step=1, contexts={})
    finally:
        engines.close()


class CappedStandInTestDouble(StandInAppearanceEngine):
    """TEST DOUBLE of a TensorRT appearance engine's batch limit: the stand-in's features, a ``max_batch`` as
    :class:`engines.backends.tensorrt.TensorRTBackend` exposes it, and its refusal of a larger batch."""

    def __init__(self, frame_size: tuple[int, int], max_batch: int = 8) -> None:
        super().__init__(frame_size)
        self.max_batch = max_batch

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = feeds["frames"].shape[0]
        if n > self.max_batch:
            raise InputMismatch(f"appearance: batch {n} is outside the engine profile 1..{self.max_batch}")
        return super().__call__(feeds)


def test_encoding_every_frame_of_a_batch_stays_within_the_engines_largest_batch(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """zsad calibrate encodes every frame of a batch's clips: 3 clips of 4 frames are 12 frames, more than an
    engine built for 8 clips (the Jetson entry point's --max-batch) takes; they go in calls of at most 8."""
    engines = load_engines(_config(world, tmp_path / "out", []))
    capped = CappedStandInTestDouble(engines.frame_size)
    engines.appearance = capped  # type: ignore[assignment]
    plain = StandInAppearanceEngine(engines.frame_size)
    rng = np.random.default_rng(2)
    clips = [_clip("cam", k, rng.integers(0, 120, (4, 48, 64, 3), dtype=np.uint8)) for k in range(3)]
    try:
        inference = ClipInference(engines, context_clips=2, history_step=1, contexts={})
        features = inference.encode_clip_frames(clips)
        assert capped.calls == [8, 4]
        assert features.shape == (3, 4, 16, *FEATURE_GRID)
        norm = Normaliser(plain.manifest.preprocessing.mean, plain.manifest.preprocessing.std)
        for clip, got in zip(clips, features, strict=True):
            np.testing.assert_allclose(got, plain({"frames": norm(clip.frames)})["features"], rtol=1e-6)
    finally:
        engines.close()


# -- zsad calibrate --------------------------------------------------------------------------------------


def test_calibrate_writes_the_memory_and_held_out_appearance_samples(
    world: dict[str, Path], tmp_path: Path
) -> None:
    camera = {"id": "campus", "uri": scene_uri(world, "training", "campus_000.mp4"), "context": "campus"}
    cfg = _config(world, tmp_path / "out", [camera])
    engines = _engines(cfg)
    try:
        collected = collect_scores(cfg, engines, cfg.camera_settings("campus"), [camera["uri"]])
        out = calibrate_camera(
            cfg, engines, "campus", [camera["uri"]], tmp_path / "calib" / "campus.json", min_clips=8
        )
        expect = appearance_expectation(engines)
    finally:
        engines.close()
    assert expect is not None
    m = collected.clips
    assert m >= 8
    assert set(collected.samples) == {"predictive", "pixel", "motion", "appearance"}
    assert all(v.shape == (m,) for v in collected.samples.values())
    assert collected.folds.shape == (m,)
    assert set(collected.folds.tolist()) == set(range(HELDOUT_FOLDS))
    assert np.all(np.diff(collected.folds) >= 0)  # one footage: its folds in time order
    memory = collected.memory
    assert memory is not None
    assert memory.n_frames > m  # every clip's last frame, the DPC history's clips too
    held_out = collected.samples["appearance"]
    assert np.isfinite(held_out).all()
    # The twin footage's clips with pasted events are scored by every stream, apart from the statistics:
    # a patch racing across the view moves more than the footage's normal clips do.
    assert "mover" in collected.probes  # the first event; this footage is too short for the second
    for by_stream in collected.probes.values():
        assert set(by_stream) == set(collected.samples)
        assert by_stream["appearance"].size > 0
        assert np.isfinite(by_stream["appearance"]).all()
    motion = collected.samples["motion"]
    assert float(np.median(collected.probes["mover"]["motion"])) > float(np.quantile(motion, 0.75))
    # The memory saved is fitted on every frame; the calibration has the appearance stream's statistics.
    assert out == tmp_path / "calib" / "campus.json"
    saved = load_memory(memory_path(out), expect)
    assert saved.n_frames == memory.n_frames
    assert (saved.grid, saved.channels, saved.camera) == (FEATURE_GRID, 16, "campus")
    cal = load_calibration(out)
    assert set(cal.streams) == {"predictive", "pixel", "motion", "appearance"}
    assert cal.streams["appearance"].n == m
    assert cal.streams["appearance"].location == pytest.approx(float(np.median(held_out)))
    # Held out: the run scores the same footage's clips against the memory fitted on all of them (in sample),
    # and those distances are lower than the calibration's, each scored against the other folds' memory.
    run_out = tmp_path / "run"
    cfg = _config(world, run_out, [{**camera, "calibration": str(out)}])
    rows = run_through(Application(cfg, _engines(cfg), realtime=False), run_out)
    in_sample = np.array([r["streams"]["appearance"] for r in rows])
    assert in_sample.shape == (m,)  # the same clips
    assert float(np.median(in_sample)) < float(np.median(held_out))
    assert float(np.mean(in_sample < held_out)) > 0.8


def test_calibrate_batches_no_more_than_the_tensorrt_engines_take(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """Engines built for 2 clips a batch under scheduler.max_batch 8 (TensorRT profiles, as doubles): zsad
    calibrate forms batches of at most 2 clips, and encodes their frames in calls of at most 2, as a run
    does, instead of failing the calibration at the first larger batch."""
    camera = {"id": "campus", "uri": scene_uri(world, "training", "campus_000.mp4"), "context": "campus"}
    cfg = _config(world, tmp_path / "out", [camera])
    assert cfg.scheduler.max_batch == 8
    engines = load_engines(cfg)
    doubles = limit_batches(engines, 2)
    capped = CappedStandInTestDouble(engines.frame_size, max_batch=2)
    engines.appearance = capped  # type: ignore[assignment]
    try:
        collected = collect_scores(cfg, engines, cfg.camera_settings("campus"), [camera["uri"]])
    finally:
        engines.close()
    assert collected.clips >= 8
    assert collected.memory is not None
    for double in doubles:
        assert double.refused == []
        assert max(double.batches) <= 2
    assert capped.calls
    assert max(capped.calls) <= 2


def test_calibrating_without_the_appearance_engine_removes_an_old_memory(
    world: dict[str, Path], tmp_path: Path
) -> None:
    camera = {"id": "parking", "uri": scene_uri(world, "training", "parking_000.mp4"), "context": "parking"}
    cfg = _config(world, tmp_path / "out", [camera])
    out = tmp_path / "calib" / "parking.json"
    stale = memory_path(out)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an old memory")
    engines = load_engines(
        cfg.model_copy(update={"appearance": cfg.appearance.model_copy(update={"enabled": False})})
    )
    if engines.appearance is not None:  # the world's folder holds one: this camera is calibrated without it
        engines.appearance.close()
        engines.appearance = None
    calibrate_cameras(cfg, engines, {"parking": camera["uri"]}, out.parent)
    assert not stale.exists()
    assert "appearance" not in load_calibration(out).streams


# -- the run ---------------------------------------------------------------------------------------------


def test_a_camera_whose_memory_cannot_be_used_runs_without_the_stream(
    world: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Three cameras calibrated with the appearance engine: one memory intact, one truncated, one fitted by
    another engine. The first gets the appearance stream; the other two run on without it, each with an
    error naming its file and what to do; the encoder runs only for the first camera's scored clips."""
    calib = tmp_path / "calib"
    train = {
        "campus": scene_uri(world, "training", "campus_000.mp4"),
        "parking": scene_uri(world, "training", "parking_000.mp4"),
    }
    cfg0 = _config(world, tmp_path / "cal", [{"id": c, "uri": u} for c, u in train.items()])
    calibrate_cameras(cfg0, _engines(cfg0), train, calib)
    # "truncated": parking's memory, cut short. "other-engine": campus's calibration with a memory whose
    # encoder weights differ from the running engine's.
    truncated = memory_path(calib / "parking.json")
    truncated.write_bytes(truncated.read_bytes()[:1000])
    (calib / "other-engine.json").write_bytes((calib / "campus.json").read_bytes())
    foreign = load_memory(memory_path(calib / "campus.json"))
    foreign.weights_sha256 = "f" * 64
    save_memory(foreign, memory_path(calib / "other-engine.json"))

    videos = world["videos"]
    out = tmp_path / "out"
    cfg = _config(
        world,
        out,
        [
            {
                "id": "good",
                "uri": f"file://{videos / 'campus_000.mp4'}",
                "calibration": str(calib / "campus.json"),
            },
            {
                "id": "truncated",
                "uri": f"file://{videos / 'parking_000.mp4'}",
                "calibration": str(calib / "parking.json"),
            },
            {
                "id": "other-engine",
                "uri": f"file://{videos / 'campus_000.mp4'}",
                "calibration": str(calib / "other-engine.json"),
            },
        ],
    )
    # Every clip encoded, to count encoder calls per scored clip (spacing_s is tested above).
    cfg = cfg.model_copy(update={"appearance": cfg.appearance.model_copy(update={"spacing_s": 0.0})})
    engines = _engines(cfg)
    standin = engines.appearance
    assert isinstance(standin, StandInAppearanceEngine)
    caplog.set_level(logging.INFO)
    app = Application(cfg, engines, realtime=False)
    assert app.outputs.memories.cameras() == ["good"]
    standin.calls.clear()
    rows = run_through(app, out)
    by_camera = {
        cam: [r for r in rows if r["camera"] == cam] for cam in ("good", "truncated", "other-engine")
    }
    assert all(by_camera.values()), {c: len(r) for c, r in by_camera.items()}
    assert all("appearance" in r["streams"] for r in by_camera["good"])
    for cam in ("truncated", "other-engine"):
        assert not any("appearance" in r["streams"] for r in by_camera[cam])
    assert sum(standin.calls) == len(by_camera["good"])  # once per scored clip, only where there is a memory
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(
        e.startswith(f"camera truncated: appearance memory {truncated}: cannot be read (truncated or corrupt")
        and e.endswith("re-run zsad calibrate for this camera; it runs without the appearance stream")
        for e in errors
    ), errors
    assert any(
        e.startswith(
            f"camera other-engine: appearance memory {memory_path(calib / 'other-engine.json')}: fitted"
        )
        and "(the engine changed)" in e
        and "re-run zsad calibrate for this camera" in e
        for e in errors
    ), errors


def test_appearance_every_second_clip_reuses_the_cameras_last_map_between_encodings(
    world: dict[str, Path], tmp_path: Path
) -> None:
    engines, standin, _, memory = _standin_with_memory(world, tmp_path, np.random.default_rng(1))
    rng = np.random.default_rng(1)
    memories = AppearanceMemories()
    memories.set("cam", memory)
    inference = ClipInference(
        engines, context_clips=2, history_step=1, contexts={}, memories=memories, appearance_every=2
    )
    standin.calls.clear()
    maps = []
    for k in range(8):
        if k == 6:
            inference.reset("cam")  # a reconnect: the history refills, and the next scored clip encodes
        res = inference([_clip("cam", k, rng.integers(0, 120, (2, 48, 64, 3), dtype=np.uint8))])[0]
        maps.append(None if res.scores is None else res.scores.maps["appearance"])
    # Scored clips 2..5 encode at 2 and 4 and reuse at 3 and 5; after the reset, clips 6 and 7 refill.
    assert standin.calls == [1, 1]
    assert [i for i, m in enumerate(maps) if m is None] == [0, 1, 6, 7]
    np.testing.assert_array_equal(maps[3], maps[2])
    np.testing.assert_array_equal(maps[5], maps[4])
    assert not np.array_equal(maps[4], maps[2])
    engines.close()


def test_each_camera_encodes_at_its_own_count_and_an_unlisted_one_every_clip(
    world: dict[str, Path], tmp_path: Path
) -> None:
    """Cameras sampled at different rates encode at one spacing in seconds, so at their own counts of
    clips; a camera the run did not list (none today) encodes every clip rather than never."""
    engines, standin, _, memory = _standin_with_memory(world, tmp_path, np.random.default_rng(2))
    rng = np.random.default_rng(2)
    memories = AppearanceMemories()
    memories.set("slow", memory)
    memories.set("unlisted", memory)
    inference = ClipInference(
        engines, context_clips=2, history_step=1, contexts={}, memories=memories, appearance_every={"slow": 3}
    )
    standin.calls.clear()
    for k in range(8):
        frames = [rng.integers(0, 120, (2, 48, 64, 3), dtype=np.uint8) for _ in range(2)]
        inference([_clip("slow", k, frames[0]), _clip("unlisted", k, frames[1])])
    # Scored from clip 2 on: "slow" encodes at 2 and 5, "unlisted" at every one of 2..7, one batch a call.
    assert standin.calls == [2, 1, 1, 2, 1, 1]
    with pytest.raises(ValueError, match="appearance_every"):
        ClipInference(engines, context_clips=2, history_step=1, contexts={}, appearance_every={"x": 0})
    engines.close()
