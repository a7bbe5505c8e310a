"""The objects stream wired into calibration and the run: real GStreamer decoding of real synthetic scene
videos, real ONNX Runtime engines of a tiny untrained model (``tests/fixtures/run_world.py``); the stream
itself needs no engine (OpenCV on the backbone's frames).

The world model's frames are 48 x 64, so the scenes' people are a few pixels: the pixel settings are lowered,
the scenes are 24 s here and the calibration is given its footage twice (the shared world's 8 s, or 24 s
once, show about 30 blob observations with a speed in a time fold: at the model's minimum)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from core.config import ZsadConfig, parse_config
from pipeline.cli.main import main
from pipeline.clips import Clip
from pipeline.inference import ClipInference, load_engines
from pipeline.memory_streams import ObjectsClips
from plugins.fusion import load_calibration
from plugins.objects import EMPTY, ObjectsModel, ObjectsModels, load_model, model_path, save_model
from tests.fixtures.run_world import build_world, refusal_logged, run_calibrated, scene_uri, site_config

FRAME = (48, 64)
DPC_GRID = (3, 4)  # the world model: 48 x 64 frames in 16-pixel patches
# The world's clips hold 2 frames 2 apart and start every 4 frames at 10 fps: every 2nd frame arrives, so a
# 0.2 s spacing takes each of them.
OBJECTS = {"enabled": True, "spacing_s": 0.2, "k": 2.0, "floor": 5.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_world(tmp_path_factory.mktemp("objects_world"), frames=240)


def _site(world: dict[str, Path], out: Path, cameras: list[dict[str, Any]]) -> dict[str, Any]:
    return site_config(world, out, cameras, appearance={"enabled": False}, objects=OBJECTS)


def _config(world: dict[str, Path], out: Path, cameras: list[dict[str, Any]]) -> ZsadConfig:
    return parse_config(json.dumps(_site(world, out, cameras)), "<test>")


@pytest.fixture(scope="module")
def calibrated(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``zsad calibrate`` of the campus camera on its normal scene (given twice: two footages); the
    calibration file and what it printed."""
    root = tmp_path_factory.mktemp("objects_calibration")
    uri = scene_uri(world, "training", "campus_000.mp4")
    site = root / "site.yaml"
    site.write_text(
        json.dumps(_site(world, root / "out", [{"id": "campus", "uri": uri, "context": "campus"}]))
    )
    out = root / "calib" / "campus.json"
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = main(
            [
                "calibrate",
                str(site),
                "--camera",
                "campus",
                "--footage",
                uri,
                "--footage",
                uri,
                "--out",
                str(out),
            ]
        )
    assert code == 0, printed.getvalue() + errors.getvalue()
    return out, printed.getvalue()


def test_calibrate_writes_the_model_and_its_calibration_lists_the_stream(
    calibrated: tuple[Path, str], world: dict[str, Path]
) -> None:
    out, printed = calibrated
    path = model_path(out)
    model = load_model(path, frame_size=FRAME, grid=DPC_GRID, spacing_s=0.2)
    assert model.camera == "campus"
    assert (model.k, model.floor) == (2.0, 5.0)
    # Twice 240 frames at 10 fps, every 2nd one taken (0.2 s apart).
    assert model.n_frames == pytest.approx(240, abs=4)
    assert model.n_blobs >= 100
    cal = load_calibration(out)
    assert "objects" in cal.streams
    assert cal.streams["objects"].n >= 100  # held-out samples of nearly every one of the 2 x ~58 scored clips
    # The engines it was scored with, which a run compares with its own (plugins.fusion.check_model).
    from engines.manifest import load_manifest, manifest_path
    from pipeline.inference import model_identity

    assert cal.model_id == model_identity(load_manifest(manifest_path(world["engines"], "backbone")))
    assert f"objects model: {path} (" in printed
    assert printed.rstrip().endswith(f"calibration: {out}")


def test_the_run_scores_the_stream_and_a_camera_whose_model_does_not_fit_runs_without_it(
    world: dict[str, Path], calibrated: tuple[Path, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good_cal, _ = calibrated
    calib = tmp_path / "calib"
    calib.mkdir()
    # "other-spacing": campus's calibration with its model saved as if fitted on frames 0.4 s apart.
    (calib / "other-spacing.json").write_bytes(good_cal.read_bytes())
    good = load_model(model_path(good_cal))
    other = ObjectsModel(
        good.background,
        good.threshold,
        good.tails,
        good.grid,
        spacing_s=0.4,
        k=good.k,
        floor=good.floor,
        min_area=good.min_area,
    )
    save_model(other, model_path(calib / "other-spacing.json"))

    caplog.set_level(logging.INFO)
    calibrations = {"good": good_cal, "other-spacing": calib / "other-spacing.json"}
    app, rows = run_calibrated(
        world, tmp_path / "out", calibrations, lambda out, cameras: _config(world, out, cameras)
    )
    assert app.outputs.objects.cameras() == ["good"]
    good_rows, other_rows = rows["good"], rows["other-spacing"]
    assert len(good_rows) >= 40
    assert other_rows
    # Every scored clip feeds the stream (each clip's frames are 0.2 s after the last one taken).
    assert all("objects" in r["streams"] for r in good_rows)
    assert not any("objects" in r["streams"] for r in other_rows)
    refused = model_path(calib / "other-spacing.json")
    why = "0.4 s apart, the config's objects.spacing_s is 0.2"
    assert refusal_logged(caplog.records, "other-spacing", "objects", refused, why), caplog.text


def _clip(camera: str, index: int, frames: np.ndarray, times: list[float]) -> Clip:
    return Clip(camera, index, frames, np.array(times), index * 4)


M = TypeVar("M", bound=ObjectsModel)


def _grey_model(cls: type[M], **kw: Any) -> M:
    """A model of camera ``cam``: a grey-90 background, 15 grey levels to depart by, walkers' tails."""
    return cls(
        np.full(FRAME, 90, np.uint8),
        np.full(FRAME, 15.0, np.float32),
        np.array([[3.0, 0.5], [-0.8, 0.3], [0.0, 1.0], [3.0, 0.5]]),
        DPC_GRID,
        spacing_s=0.2,
        k=3.0,
        floor=5.0,
        min_area=40.0,
        **kw,
    )


def _inference(engines: Any, model: ObjectsModel) -> tuple[ClipInference, ObjectsModels]:
    """ClipInference on ``engines`` with ``model`` as camera ``cam``'s objects model, and its model table."""
    models = ObjectsModels()
    models.set("cam", model)
    inference = ClipInference(
        engines, context_clips=2, history_step=1, contexts={}, objects=models, objects_spacing_s=0.2
    )
    return inference, models


def test_clip_inference_gives_each_scored_clip_the_map_of_the_frames_it_fed(
    world: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _config(world, tmp_path / "out", [])
    engines = load_engines(cfg)
    background = np.full((*FRAME, 3), 90, np.uint8)
    model = _grey_model(ObjectsModel)
    inference, _ = _inference(engines, model)

    def frame(t: int) -> np.ndarray:
        # A person walking across at an uneven pace (steps of 8 and 4 pixels between the frames the stream
        # takes), so that each frame's map differs from the last.
        x = (3 * t + (2 if t % 4 == 0 else 0)) % 50
        f = background.copy()
        f[10:30, x : x + 8] = 250
        return f

    # Clips of 2 frames 0.2 s apart, every 0.4 s; clip 4 repeats clip 3's times: it feeds no frame.
    times = [[0.4 * k, 0.4 * k + 0.2] for k in range(4)] + [[1.2, 1.4]] + [[1.6, 1.8]]
    clips = [_clip("cam", k, np.stack([frame(round(10 * t)) for t in ts]), ts) for k, ts in enumerate(times)]
    reference = ObjectsClips(model)
    expected = [reference.clip_map(list(c.frames) if k != 4 else []) for k, c in enumerate(clips)]
    assert all((m > EMPTY).any() for m in expected[2:] if m is not None)  # the person is seen
    assert not np.array_equal(expected[4], expected[3])  # clip 4: clip 3's last frame's map, not their max
    try:
        maps = []
        for clip in clips:
            other = _clip("other", clip.index, clip.frames, list(clip.pts))
            res = inference([clip, other])
            assert res[1].scores is None or "objects" not in res[1].scores.maps  # no model, no stream
            maps.append(None if res[0].scores is None else res[0].scores.maps)
        assert maps[0] is None  # the DPC history fills in 2 clips
        assert maps[1] is None
        for k in range(2, 6):
            got = maps[k]
            assert got is not None
            np.testing.assert_array_equal(got["objects"], expected[k])
    finally:
        engines.close()


class _ObservedModel(ObjectsModel):
    """A real objects model that notes the threads it scores frames on, meets the backbone's run (each frame
    waits, at most a minute, for the backbone to have started), and can be told to fail or to take longer."""

    def __init__(self, *args: Any, fail: bool = False, linger_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail, self.linger_s = fail, linger_s
        self.threads: list[threading.Thread] = []
        self.scored = threading.Event()
        self.backbone_started = threading.Event()
        self.met_backbone: list[bool] = []
        self.finished = 0
        self.before_frame: Any = None  # called first by each frame (a feed that waits for something)
        self.met_dpc: list[bool] = []

    def score_frame(self, state: Any, frame: np.ndarray, pts: float | None = None) -> np.ndarray:
        self.threads.append(threading.current_thread())
        if self.before_frame is not None:
            self.before_frame()
        self.scored.set()
        self.met_backbone.append(self.backbone_started.wait(timeout=60))
        time.sleep(self.linger_s)  # a slow feed: it must still have ended when the batch's call returns
        self.finished += 1
        if self.fail:
            raise RuntimeError("a feed's own bug")
        return super().score_frame(state, frame, pts)


class _BackboneWatch:
    """The real backbone, run once the objects feed has scored a frame (or a minute has passed); ``fail``
    raises instead; ``during`` runs first (a change made while the backbone runs)."""

    def __init__(self, backbone: Any, model: _ObservedModel, fail: bool = False) -> None:
        self.backbone, self.model, self.fail = backbone, model, fail
        self.met_feed: list[bool] = []
        self.during: Any = None

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.during is not None:
            self.during()
            self.met_feed.append(False)
        else:
            self.model.backbone_started.set()
            # Only a feed that runs beside the backbone scores while the backbone waits here.
            self.met_feed.append(self.model.scored.wait(timeout=60))
        if self.fail:
            raise RuntimeError("the backbone failed")
        return self.backbone(inputs)


def _watched(
    world: dict[str, Path], tmp_path: Path, *, backbone_fails: bool = False, **model_kw: Any
) -> tuple[ClipInference, ObjectsModels, _ObservedModel, _BackboneWatch]:
    """ClipInference on the world's engines, camera ``cam`` with an observed objects model, the backbone
    watched."""
    engines = load_engines(_config(world, tmp_path / "out", []))
    try:
        model = _grey_model(_ObservedModel, **model_kw)
        watch = _BackboneWatch(engines.backbone, model, fail=backbone_fails)
        engines.backbone = watch  # type: ignore[assignment]
        inference, models = _inference(engines, model)
    except BaseException:
        engines.close()
        raise
    return inference, models, model, watch


def _close(inference: ClipInference, watch: _BackboneWatch) -> None:
    inference.engines.backbone = watch.backbone
    inference.engines.close()


def _batch(k: int) -> list[Clip]:
    return [_clip("cam", k, np.full((2, *FRAME, 3), 90, np.uint8), [0.4 * k, 0.4 * k + 0.2])]


def _next_batch(model: _ObservedModel) -> None:
    model.scored.clear()
    model.backbone_started.clear()


def test_the_memory_feeds_run_beside_the_backbone(world: dict[str, Path], tmp_path: Path) -> None:
    inference, _, model, watch = _watched(world, tmp_path)
    try:
        for k in range(3):
            _next_batch(model)
            assert len(inference(_batch(k))) == 1
            # Each side saw the other running: the feed scored while the backbone ran, on another thread.
            assert watch.met_feed[-1]
            assert all(model.met_backbone)
            assert model.finished == 2 * (k + 1)  # the batch's frames were all fed before it was scored
        assert {t.name for t in model.threads} == {"zsad-feeds"}
        assert not any(t.is_alive() for t in model.threads)
    finally:
        _close(inference, watch)


def test_the_memory_feeds_run_on_while_the_dpc_head_runs_and_their_maps_wait_for_them(
    world: dict[str, Path], tmp_path: Path
) -> None:
    inference, _, model, watch = _watched(world, tmp_path)
    dpc = inference.scorer.dpc
    dpc_started = threading.Event()
    feed_alive: list[bool] = []

    def watched_dpc(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed_alive.append(any(t.is_alive() for t in model.threads))
        dpc_started.set()
        return dpc(feeds)

    try:
        for k in range(2):  # the DPC history fills in 2 clips: no map yet (the head runs for their history)
            _next_batch(model)
            inference(_batch(k))
        inference.scorer.dpc = watched_dpc
        # The third batch is scored: its feed holds its last frame until the DPC head has started (its
        # first frame has met the backbone, which waits for it).
        _next_batch(model)

        def hold_last_frame() -> None:
            if model.finished == 5:
                model.met_dpc.append(dpc_started.wait(timeout=60))

        model.before_frame = hold_last_frame
        res = inference(_batch(2))
        assert model.met_dpc == [True]  # the DPC head started while the feed still had a frame to take
        assert feed_alive == [True]
        # ... and the feed's map was read once it had taken both frames.
        assert model.finished == 6
        assert res[0].scores is not None
        assert "objects" in res[0].scores.maps
        assert not any(t.is_alive() for t in model.threads)
    finally:
        inference.scorer.dpc = dpc
        _close(inference, watch)


@pytest.mark.parametrize("failing", ["feed", "backbone", "both"])
def test_a_failure_beside_the_backbone_reaches_the_caller_with_no_feed_left_running(
    world: dict[str, Path], tmp_path: Path, failing: str, caplog: pytest.LogCaptureFixture
) -> None:
    inference, _, model, watch = _watched(
        world,
        tmp_path,
        fail=failing in ("feed", "both"),
        backbone_fails=failing in ("backbone", "both"),
        linger_s=0.2,
    )
    try:
        _next_batch(model)
        with pytest.raises(RuntimeError, match="feed's own bug" if failing == "feed" else "backbone failed"):
            inference(_batch(0))
        assert watch.met_feed == [True]
        # The feed had ended when the call raised: it took both frames (one if it failed on the first).
        assert model.finished == (1 if failing in ("feed", "both") else 2)
        assert not any(t.is_alive() for t in model.threads)
        lost = [r for r in caplog.records if "memory feeds failed too" in r.getMessage()]
        # The feed's own bug is logged, not lost behind the backbone's.
        assert len(lost) == (failing == "both")
    finally:
        _close(inference, watch)


def test_a_model_set_while_the_backbone_runs_starts_with_the_next_batch(
    world: dict[str, Path], tmp_path: Path
) -> None:
    inference, models, model, watch = _watched(world, tmp_path)
    try:
        for k in range(3):  # the DPC history fills in 2 clips; the third is scored with the stream
            _next_batch(model)
            res = inference(_batch(k))
        assert res[0].scores is not None
        assert "objects" in res[0].scores.maps
        models.remove("cam")
        _next_batch(model)
        model.backbone_started.set()  # the feed does not run this batch: nothing for it to wait for
        watch.during = lambda: models.set("cam", model)
        res = inference(_batch(3))
        # The batch fed no objects frame (no model when it started): no map, not the last batch's.
        assert res[0].scores is not None
        assert "objects" not in res[0].scores.maps
        watch.during = None
        _next_batch(model)
        res = inference(_batch(4))
        assert res[0].scores is not None
        assert "objects" in res[0].scores.maps
    finally:
        _close(inference, watch)
