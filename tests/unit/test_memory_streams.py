"""The memory streams' run-side feeds (pipeline/memory_streams.py) on scenes drawn here
(tests/fixtures/objects_scenes.py): the objects stream's clip-map rule, which the run and zsad calibrate share
(the max of the maps of the frames a clip fed; a clip that fed none takes the last frame's map), and how a
feed picks a clip's frames, refuses a model that does not fit and forgets a camera; and that the offline
evaluation's batch form of the rule gives the same maps. ClipInference itself, with
real engines, is in tests/integration/test_objects_stream.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from core.config import ObjectsConfig
from pipeline.clips import Clip
from pipeline.memory_streams import ObjectsClips, ObjectsFeed
from plugins.objects import EMPTY, ObjectsModel, ObjectsModels, fit_model
from plugins.stationary import frame_step
from tests.fixtures.objects_scenes import GRID, BoxScene
from training.objects_eval import ObjectsEvaluator, clip_maps


@pytest.fixture(scope="module")
def model() -> ObjectsModel:
    scene = BoxScene(0)
    return fit_model(
        [np.stack([scene.frame(t) for t in range(0, 160, 2)])], GRID, spacing_s=0.2, camera="cam"
    )


def _frame_maps(model: ObjectsModel, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Each frame's map, the frames given in order to one state."""
    state = model.new_state()
    return [model.score_frame(state, f) for f in frames]


def test_a_clip_map_is_the_max_of_its_frames_maps_and_a_clip_without_frames_takes_the_last_one(
    model: ObjectsModel,
) -> None:
    scene = BoxScene(1, vehicle_from=10)
    frames = [scene.frame(t) for t in range(0, 40, 2)]
    maps = _frame_maps(model, frames)
    clips = ObjectsClips(model)
    assert clips.clip_map([]) is None  # no frame fed yet: no map
    # Clips feeding 3, 0, 5, 0, 12 frames.
    cuts = [(0, 3), (3, 3), (3, 8), (8, 8), (8, 20)]
    got = [clips.clip_map(frames[a:b]) for a, b in cuts]
    for (a, b), m in zip(cuts, got, strict=True):
        assert m is not None
        assert m.shape == GRID
        expected = np.max(maps[a:b], axis=0) if b > a else maps[a - 1]
        np.testing.assert_array_equal(m, expected)
    assert got[-1].max() > 5.0  # the vehicle
    assert (got[0] == EMPTY).any()  # cells no blob covers
    got[1][:] = 99.0  # a clip's map is its own: changing it changes nothing kept
    later = clips.clip_map([])
    assert later is not None
    np.testing.assert_array_equal(later, maps[-1])


def _clip(camera: str, index: int, scene: BoxScene, times: list[float], fps: float = 10.0) -> Clip:
    frames = np.stack([scene.frame(round(t * fps)) for t in times])
    return Clip(camera, index, frames, np.array(times), round(times[0] * fps))


def test_the_feed_takes_frames_spacing_s_apart_per_camera_and_overlapping_clips_keep_the_last_map(
    model: ObjectsModel,
) -> None:
    scene = BoxScene(2)
    models = ObjectsModels()
    models.set("cam", model)
    feed = ObjectsFeed(models, 0.2)
    assert feed.active
    # 0.1 s apart frames: the feed takes every second one. The second clip overlaps the first: its frames
    # are all within 0.2 s of the last one taken, so it feeds none.
    batch = [
        _clip("cam", 0, scene, [0.0, 0.1, 0.2, 0.3]),
        _clip("cam", 1, scene, [0.3]),
        _clip("other", 0, scene, [0.0, 0.1]),  # no model: no map
        _clip("cam", 2, scene, [0.4, 0.5, 0.6]),
    ]
    feed.feed(batch)
    maps = _frame_maps(model, [scene.frame(t) for t in (0, 2, 4, 6)])
    np.testing.assert_array_equal(feed.clip_map(0, "cam", GRID), np.maximum(maps[0], maps[1]))
    np.testing.assert_array_equal(feed.clip_map(1, "cam", GRID), maps[1])
    assert feed.clip_map(2, "other", GRID) is None
    np.testing.assert_array_equal(feed.clip_map(3, "cam", GRID), np.maximum(maps[2], maps[3]))
    # A reconnect: the camera's tracks and spacing start afresh; nothing before its next frame.
    feed.reset("cam")
    feed.feed([_clip("cam", 3, scene, [0.7])])
    again = _frame_maps(model, [scene.frame(7)])[0]
    np.testing.assert_array_equal(feed.clip_map(0, "cam", GRID), again)


def test_a_model_that_does_not_fit_is_refused_once_and_the_other_cameras_go_on(
    model: ObjectsModel, caplog: pytest.LogCaptureFixture
) -> None:
    scene = BoxScene(3)
    small = ObjectsModel(
        model.background[:64, :96],
        model.threshold[:64, :96],
        model.tails,
        (4, 6),
        spacing_s=0.2,
        k=model.k,
        floor=model.floor,
        min_area=model.min_area,
    )
    models = ObjectsModels()
    models.set("good", model)
    models.set("small", small)  # fitted for 64 x 96 frames: the camera gives 128 x 192
    models.set("grid", model)
    feed = ObjectsFeed(models, 0.2)
    caplog.set_level(logging.ERROR, logger="pipeline.memory_streams")
    for k in range(3):
        times = [0.4 * k, 0.4 * k + 0.2]
        feed.feed([_clip(cam, k, scene, times) for cam in ("good", "small", "grid")])
        assert feed.clip_map(0, "good", GRID) is not None
        assert feed.clip_map(1, "small", GRID) is None
        assert feed.clip_map(2, "grid", (4, 6)) is None  # the DPC maps are on another grid than the model's
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 2, errors  # once per camera, not once per clip
    assert errors[0].startswith(
        "camera small: its objects model does not fit its frames (frames are (128, 192)"
    )
    assert "model grid (8, 12), the DPC maps are (4, 6)" in errors[1]
    assert all(e.endswith("it goes on without the objects stream") for e in errors)
    assert feed.model("small") is None
    # A model put in its place (a recalibration) is used.
    models.set("small", model)
    feed.feed([_clip("small", 3, scene, [1.2])])
    assert feed.clip_map(0, "small", GRID) is not None


def test_the_run_and_the_offline_evaluation_give_a_camera_the_same_clip_maps(model: ObjectsModel) -> None:
    """The clip-map rule exists twice: streaming in the run (ObjectsFeed, clip by clip) and in batch in
    ``zsad eval`` (ObjectsEvaluator.fed_maps + clip_maps, whole video at once). With clips that do not overlap
    (every shipped config) the two must agree map for map, or the evaluation measures another stream."""
    fps, clip_len, stride = 10.0, 4, 1  # clips of 0.4 s, each starting where the last ended
    step = frame_step(0.2, fps, clip_len, stride, clip_len * stride)
    assert step == 2
    scene = BoxScene(5, vehicle_from=24)
    n = 48
    frames = np.stack([scene.frame(t) for t in range(n)])
    models = ObjectsModels()
    models.set("cam", model)
    feed = ObjectsFeed(models, 0.2)
    starts = list(range(0, n - clip_len + 1, clip_len))
    run = []
    for s in starts:
        feed.feed([Clip("cam", s, frames[s : s + clip_len], np.arange(s, s + clip_len) / fps, s)])
        m = feed.clip_map(0, "cam", GRID)
        assert m is not None
        run.append(m)
    evaluator = ObjectsEvaluator(ObjectsConfig(enabled=True), GRID, step)
    fed = evaluator.fed_frames(n)
    first = np.array(starts)
    batch = clip_maps(fed, evaluator.fed_maps(model, frames), first, first + clip_len - 1)
    np.testing.assert_array_equal(np.stack(run), batch)
    assert batch[-1].max() > 5.0  # the vehicle is in the later clips: the maps compared are not all empty


def test_a_stationary_clip_map_is_the_window_that_clip_left_whatever_shares_its_batch() -> None:
    """An offline run batches several clips of one camera: each clip's map must be the window as that clip
    left it (what ``zsad calibrate`` computes, one clip at a time), not the window after the whole batch."""
    from pipeline.memory_streams import StationaryFeed
    from plugins.stationary import StationaryModel, StationaryModels

    h, w, grid = 24, 32, (2, 2)
    background = np.full((h, w, 3), 100, np.uint8)
    model = StationaryModel(background, np.zeros(grid), np.ones(grid), window=2, min_pixels=4, floor=10.0)

    def clip(index: int, bag: bool) -> Clip:
        frames = np.repeat(background[None], 2, axis=0)
        if bag:  # something put down in the top-left cell
            frames[:, 2:10, 2:10] = 220
        return Clip("cam", index, frames, np.array([index * 1.0, index * 1.0 + 0.5]), 0)

    clips = [clip(0, False), clip(1, False), clip(2, True), clip(3, True)]

    def maps(batches: list[list[Clip]]) -> list[np.ndarray | None]:
        models = StationaryModels()
        models.set("cam", model)
        feed = StationaryFeed(models, 0.4)
        out: list[np.ndarray | None] = []
        for batch in batches:
            feed.feed(batch)
            out += [feed.clip_map(k, "cam", grid) for k in range(len(batch))]
        return out

    one_by_one = maps([[c] for c in clips])
    quiet, bag = one_by_one[1], one_by_one[3]
    assert quiet is not None
    assert quiet.max() == 0  # nothing stays yet
    assert bag is not None
    assert bag[0, 0] > 0  # the bag stays
    for batches in ([clips], [clips[:3], clips[3:]], [clips[:1], clips[1:]]):
        batched = maps(batches)
        for k, (a, b) in enumerate(zip(one_by_one, batched, strict=True)):
            assert (a is None) == (b is None), k
            if a is not None and b is not None:
                assert np.array_equal(a, b), k
