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
from pathlib import Path
from typing import Any

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
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
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
    assert code == 0, printed.getvalue()
    return out, printed.getvalue()


def test_calibrate_writes_the_model_and_its_calibration_lists_the_stream(
    calibrated: tuple[Path, str],
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


def test_clip_inference_gives_each_scored_clip_the_map_of_the_frames_it_fed(
    world: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _config(world, tmp_path / "out", [])
    engines = load_engines(cfg)
    background = np.full((*FRAME, 3), 90, np.uint8)
    model = ObjectsModel(
        background[..., 0],
        np.full(FRAME, 15.0, np.float32),
        np.array([[3.0, 0.5], [-0.8, 0.3], [0.0, 1.0]]),
        DPC_GRID,
        spacing_s=0.2,
        k=3.0,
        floor=5.0,
        min_area=40.0,
    )
    models = ObjectsModels()
    models.set("cam", model)
    inference = ClipInference(
        engines, context_clips=2, history_step=1, contexts={}, objects=models, objects_spacing_s=0.2
    )

    def frame(t: int) -> np.ndarray:
        f = background.copy()
        f[10:30, (3 * t) % 50 : (3 * t) % 50 + 8] = 250  # a person walking across
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
    """A real objects model that notes the thread each frame is scored on and can be told to fail."""

    def __init__(self, *args: Any, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fail = fail
        self.threads: list[str] = []
        self.scored = threading.Event()

    def score_frame(self, state: Any, frame: np.ndarray, pts: float | None = None) -> np.ndarray:
        self.threads.append(threading.current_thread().name)
        self.scored.set()
        if self.fail:
            raise RuntimeError("a feed's own bug")
        return super().score_frame(state, frame, pts)


class _BackboneWatch:
    """The real backbone, called once ``before`` is set (or a minute has passed); ``fail`` raises instead."""

    def __init__(self, backbone: Any, before: threading.Event, fail: bool = False) -> None:
        self.backbone, self.before, self.fail = backbone, before, fail
        self.feeds_seen = False

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Waits for the objects feed to score a frame: only a feed that runs beside the backbone can.
        self.feeds_seen = self.before.wait(timeout=60)
        if self.fail:
            raise RuntimeError("the backbone failed")
        return self.backbone(inputs)


def _watched(
    world: dict[str, Path], tmp_path: Path, *, feed_fails: bool = False, backbone_fails: bool = False
) -> tuple[ClipInference, _ObservedModel, _BackboneWatch]:
    """ClipInference on the world's engines, one camera ``cam`` with an observed objects model, its
    backbone watched."""
    engines = load_engines(_config(world, tmp_path / "out", []))
    model = _ObservedModel(
        np.full(FRAME, 90, np.uint8),
        np.full(FRAME, 15.0, np.float32),
        np.array([[3.0, 0.5], [-0.8, 0.3], [0.0, 1.0]]),
        DPC_GRID,
        spacing_s=0.2,
        k=3.0,
        floor=5.0,
        min_area=40.0,
        fail=feed_fails,
    )
    models = ObjectsModels()
    models.set("cam", model)
    watch = _BackboneWatch(engines.backbone, model.scored, fail=backbone_fails)
    engines.backbone = watch  # type: ignore[assignment]
    inference = ClipInference(
        engines, context_clips=2, history_step=1, contexts={}, objects=models, objects_spacing_s=0.2
    )
    return inference, model, watch


def _close(inference: ClipInference, watch: _BackboneWatch) -> None:
    inference.engines.backbone = watch.backbone
    inference.engines.close()


def _feed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "zsad-feeds"]


def test_the_memory_feeds_run_beside_the_backbone(world: dict[str, Path], tmp_path: Path) -> None:
    inference, model, watch = _watched(world, tmp_path)
    frames = np.full((2, *FRAME, 3), 90, np.uint8)
    try:
        for k in range(3):
            model.scored.clear()
            results = inference([_clip("cam", k, frames, [0.4 * k, 0.4 * k + 0.2])])
            assert len(results) == 1
            assert watch.feeds_seen, "the objects feed did not score while the backbone waited for it"
        assert set(model.threads) == {"zsad-feeds"}
        assert not _feed_threads()  # each batch's feed thread has ended when its results are returned
    finally:
        _close(inference, watch)


@pytest.mark.parametrize("failing", ["feed", "backbone"])
def test_a_failure_beside_the_backbone_reaches_the_caller_with_no_feed_left_running(
    world: dict[str, Path], tmp_path: Path, failing: str
) -> None:
    inference, _, watch = _watched(
        world, tmp_path, feed_fails=failing == "feed", backbone_fails=failing == "backbone"
    )
    frames = np.full((2, *FRAME, 3), 90, np.uint8)
    try:
        with pytest.raises(RuntimeError, match="feed's own bug" if failing == "feed" else "backbone failed"):
            inference([_clip("cam", 0, frames, [0.0, 0.2])])
        assert watch.feeds_seen
        assert not _feed_threads()
    finally:
        _close(inference, watch)
