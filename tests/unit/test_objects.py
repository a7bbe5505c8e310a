"""The objects stream (plugins/objects.py) on tiny synthetic scenes: normal footage of upright figures walking
gives the tails; a figure that runs, a wide object, and a figure that stops stand out at their own cells while
a walker does not; a global light change makes no blob; the model file round trips and a damaged or
mismatched one is refused by name; bad input gets a named error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from plugins.modelfile import arrays_sha256
from plugins.objects import (
    EMPTY,
    FEATURES,
    FlowCache,
    ObjectsError,
    ObjectsModel,
    ObjectsModelError,
    agreeing,
    describe,
    fit_model,
    grey_frame,
    leaving_unjudged,
    load_model,
    model_path,
    save_model,
)

H, W = 96, 128
GRID = (6, 8)  # 16 x 16 pixel cells
SPACING = 0.2
BACKGROUND = np.random.default_rng(0).integers(40, 90, size=(H, W, 3)).astype(np.uint8)
PATTERN = np.random.default_rng(1).integers(170, 250, size=(40, 40, 3)).astype(np.uint8)


def frame(objects: list[tuple[float, float, int, int]], seed: int) -> np.ndarray:
    """The background with sensor noise and textured objects ``(x, y, w, h)`` (top-left corner)."""
    rng = np.random.default_rng(seed)
    out = np.clip(BACKGROUND.astype(np.int16) + rng.integers(-3, 4, size=BACKGROUND.shape), 0, 255)
    out = out.astype(np.uint8)
    for x, y, w, h in objects:
        xi, yi = round(x), round(y)
        out[yi : yi + h, xi : xi + w] = PATTERN[:h, :w]
    return out


def walk(n: int, *, x0: float, y: int, speed: float, w: int = 6, h: int = 16, seed: int = 0) -> np.ndarray:
    """``n`` frames of one object moving right at ``speed`` pixels a frame (it stands still at 0)."""
    return np.stack([frame([(x0 + speed * t, y, w, h)], seed + t) for t in range(n)])


def normal_footage() -> list[np.ndarray]:
    """Upright figures walking 1.5-2.5 pixels a frame across different rows, and some empty frames."""
    videos = []
    for i, (y, speed) in enumerate([(10, 1.5), (40, 2.0), (70, 2.5), (25, 2.0), (55, 1.5)]):
        videos.append(walk(40, x0=5 + 3 * i, y=y, speed=speed, seed=100 * i))
    return videos


@pytest.fixture(scope="module")
def model() -> ObjectsModel:
    return fit_model(normal_footage(), GRID, spacing_s=SPACING, camera="cam")


def final_blob(model: ObjectsModel, frames: np.ndarray) -> tuple[np.ndarray, float]:
    """The last frame's map and its blob's excess (the stream fed every frame in order)."""
    state = model.new_state()
    for f in frames[:-1]:
        model.score_frame(state, f)
    blobs = model.blobs(state, frames[-1])
    assert len(blobs) == 1
    excess = model.excess(blobs)
    return model.blob_map(blobs, excess), float(excess[0])


def test_tails_come_from_the_normal_walkers(model: ObjectsModel) -> None:
    speed, aspect, still = (model.tails[FEATURES.index(n)] for n in ("speed", "aspect", "still"))
    # DIS underestimates the speed of a small patch on a tiny frame; what matters is the order of magnitude
    # and that the runner below is far above it.
    assert 0.3 * 2.0 / SPACING < np.expm1(speed[0]) < 1.5 * 2.5 / SPACING
    assert aspect[0] == pytest.approx(np.log(6 / 16), abs=0.2)  # upright figures
    assert still[0] == 0.0  # walkers never stand still
    # Every walker alike: the scales are the floors that keep a hair's difference from being an alarm.
    assert aspect[1] == 0.25
    assert still[1] == 10.0
    assert model.n_blobs >= 150


def test_a_walker_stays_under_the_normal_tail(model: ObjectsModel) -> None:
    _, e = final_blob(model, walk(8, x0=20, y=30, speed=2.0, seed=7))
    assert e < 1.0


def test_a_runner_stands_out_at_its_own_cells(model: ObjectsModel) -> None:
    frames = walk(6, x0=10, y=40, speed=9.0, seed=9)
    m, e = final_blob(model, frames)
    assert e > 2.0
    x_last = round(10 + 9.0 * 5)
    rows, cols = np.nonzero(m > EMPTY)
    assert set(rows) <= {2, 3}  # pixels 40..55
    assert set(cols) <= set(range(x_last // 16, (x_last + 5) // 16 + 1))
    assert m.max() == pytest.approx(e)
    assert (m[m != np.float32(e)] == EMPTY).all()


def test_a_wide_object_stands_out_by_its_shape(model: ObjectsModel) -> None:
    _, e = final_blob(model, walk(6, x0=10, y=50, speed=2.0, w=36, h=12, seed=11))
    assert e > 2.0


def test_a_figure_that_stops_stands_out_once_it_has_stood_still(model: ObjectsModel) -> None:
    moving = walk(5, x0=10, y=40, speed=2.0, seed=13)
    stopped = walk(60, x0=18, y=40, speed=0.0, seed=20)  # 12 s: beyond the 10-s floor of the still tail
    _, early = final_blob(model, np.concatenate([moving, stopped[:2]]))
    _, late = final_blob(model, np.concatenate([moving, stopped]))
    assert early < 1.0 < late


def flat_figure_going_up(n: int, *, x: int, y0: float, speed: float, w: int = 4, h: int = 16) -> np.ndarray:
    """``n`` frames of a thin figure of one flat colour moving up its own length at ``speed`` pixels a frame:
    inside it nothing changes along the motion (the aperture problem a runner seen from above poses flow)."""
    out = []
    for t in range(n):
        f = frame([], 500 + t)
        y = round(y0 - speed * t)
        f[y : y + h, x : x + w] = 230
        out.append(f)
    return np.stack(out)


def test_a_thin_flat_figure_running_along_its_length_stands_out_by_its_travel(model: ObjectsModel) -> None:
    frames = flat_figure_going_up(8, x=60, y0=60, speed=5.0, h=30)
    state = model.new_state()
    blobs = [model.blobs(state, f) for f in frames]
    assert all(len(b) == 1 for b in blobs)
    travels = [b[0].travel for b in blobs]
    assert np.isnan(travels[:3]).all()  # a track younger than the travel's three steps
    np.testing.assert_allclose(travels[3:], 5.0 / SPACING, rtol=0.15)
    assert model.tails[FEATURES.index("travel"), 0] < np.log1p(3.0 / SPACING)  # the walkers' travel
    assert float(model.excess(blobs[-1])[0]) > 2.0
    # The flow over its flat inside reads it as slow as a walker: without the travel it would pass.
    z = (blobs[-1][0].features() - model.tails[:, 0]) / model.tails[:, 1]
    assert z[FEATURES.index("travel")] > 2.0
    assert max(z[i] for i, n in enumerate(FEATURES) if n != "travel") < 1.0


def test_a_track_whose_area_doubles_has_no_travel(model: ObjectsModel) -> None:
    # A second figure joining the first moves the box's centre by half a figure without anybody running.
    frames = [frame([(20 + 2 * t, 40, 6, 16)], 600 + t) for t in range(4)]
    # (Wider than the first: the blob's area well past twice its own, not on the guard's edge.)
    frames += [frame([(28 + 2 * t, 40, 6, 16), (34 + 2 * t, 40, 9, 16)], 610 + t) for t in range(4)]
    state = model.new_state()
    blobs = [model.blobs(state, f) for f in frames]
    assert all(len(b) == 1 for b in blobs)
    assert len({b[0].track for b in blobs}) == 1  # one track through the merge
    assert np.isfinite(blobs[3][0].travel)
    assert np.isnan([b[0].travel for b in blobs[4:7]]).all()  # the doubled area is within the last steps
    assert np.isfinite(blobs[7][0].travel)  # three steps after it, the travel is the pair's own again


def test_a_box_that_grows_at_one_edge_has_no_travel(model: ObjectsModel) -> None:
    # A figure joined along its length (a second one stepping up behind it, less than twice the area): the
    # box's centre moves, its top edge does not, so nothing travelled.
    frames = [frame([(60, 30, 6, 16)], 620 + t) for t in range(3)]
    frames += [frame([(60, 30, 6, 16 + 4 * t)], 630 + t) for t in range(1, 4)]
    state = model.new_state()
    blobs = [model.blobs(state, f) for f in frames]
    assert all(len(b) == 1 for b in blobs)
    assert len({b[0].track for b in blobs}) == 1
    assert blobs[-1][0].h == 28  # the centre moved 6 pixels over the travel's three steps
    assert blobs[-1][0].travel == 0.0


def test_a_track_through_a_merge_has_no_travel_even_when_the_area_says_nothing(model: ObjectsModel) -> None:
    # A walker reaches a smaller figure standing in its way: one blob, under twice the walker's area, whose
    # box meets both of the last frame's boxes. The track may have gone from one object to the other.
    frames = [frame([(20 + 2 * t, 40, 6, 16), (40, 48, 6, 8)], 660 + t) for t in range(12)]
    state = model.new_state()
    blobs = [model.blobs(state, f) for f in frames]
    m = next(i for i, b in enumerate(blobs) if len(b) == 1)  # the first frame of the merge
    assert m >= 4  # both figures tracked for the travel's steps before it
    assert all(len(b) == 2 for b in blobs[:m])
    walker = max(blobs[m - 1], key=lambda b: b.h)
    assert np.isfinite(walker.travel)
    assert blobs[m][0].area < 2 * walker.area  # the area guard alone would have measured a travel
    assert np.isnan([b[0].travel for b in blobs[m : m + 3] if len(b) == 1]).all()


def test_a_walker_passing_a_smaller_figure_keeps_its_travel(model: ObjectsModel) -> None:
    # In a crowd a walker's blob swallows a smaller one and lets it go again: a merge, then a split, but the
    # walker's box keeps its size (under 1.5x), so the track is still the walker and its travel is its own.
    frames = [frame([(10 + 2 * t, 40, 12, 16), (44, 46, 3, 5)], 680 + t) for t in range(22)]
    state = model.new_state()
    blobs = [model.blobs(state, f) for f in frames]
    one = [i for i, b in enumerate(blobs) if len(b) == 1]
    assert one
    assert one[0] >= 4  # both figures tracked for the travel's steps before the merge
    assert blobs[one[-1] + 1 :]
    assert all(len(b) == 2 for b in blobs[one[-1] + 1 :])  # the split: both figures again
    walker = [max(b, key=lambda b: b.area) for b in blobs]
    assert len({w.track for w in walker}) == 1  # one track through the merge and the split
    merge, split = one[0], one[-1] + 1
    # The travel's steps span the merge (and then the split): the walker's own 2 pixels a frame.
    np.testing.assert_allclose([w.travel for w in walker[merge : merge + 3]], 2.0 / SPACING)
    np.testing.assert_allclose([w.travel for w in walker[split : split + 2]], 2.0 / SPACING)


def test_a_track_moving_too_slowly_for_its_height_never_stands_still_for_long(model: ObjectsModel) -> None:
    # Someone walking towards or away from the camera: a few pixels a second against a tall box reads below
    # the still speed every frame, but the box keeps going. It is still only while near where it stopped.
    assert 0.6 / SPACING / 16 < 0.25  # pixels a second per height: under the still speed
    frames = walk(40, x0=10, y=40, speed=0.6, seed=40)  # 8 s, 24 pixels in all
    state = model.new_state()
    still = [model.blobs(state, f)[0].still for f in frames]
    assert max(still) < 4.0  # half its height (8 pixels) takes about 3 s at this pace (it would run to 8)
    stopped = walk(40, x0=10, y=40, speed=0.0, seed=40)
    state = model.new_state()
    assert [model.blobs(state, f)[0].still for f in stopped][-1] > 7.0


def jumping_footage() -> list[np.ndarray]:
    """Figures that appear somewhere new every frame: flow sees them, no track lasts the travel's steps."""
    rng = np.random.default_rng(5)
    spots = [(float(rng.integers(0, W - 8)), int(rng.integers(0, H - 16))) for _ in range(60)]
    return [np.stack([frame([(x, y, 6, 16)], 700 + t) for t, (x, y) in enumerate(spots)])]


def test_footage_whose_tracks_never_last_leaves_the_travel_unjudged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="plugins.objects"):
        jumpy = fit_model(jumping_footage(), GRID, spacing_s=SPACING, camera="road")
    assert jumpy.unjudged == ("travel",)
    assert "objects model of road" in caplog.text
    assert "does not judge it" in caplog.text
    assert "not judging travel" in describe(jumpy)
    assert np.isfinite(jumpy.tails[[FEATURES.index(n) for n in ("speed", "aspect", "still")]]).all()
    # A blob with a travel is judged on the rest alone: the thin runner's travel counts for nothing here.
    state = jumpy.new_state()
    for f in flat_figure_going_up(8, x=60, y0=60, speed=5.0, h=30):
        blobs = jumpy.blobs(state, f)
    assert np.isfinite(blobs[0].travel)
    f = blobs[0].features()
    z = (f - jumpy.tails[:, 0]) / jumpy.tails[:, 1]
    assert float(jumpy.excess(blobs)[0]) == pytest.approx(max(np.nanmax(z), EMPTY))
    # The file keeps the unjudged row; a NaN row of a feature that must be judged is refused.
    path = tmp_path / "road.objects.npz"
    save_model(jumpy, path)
    assert load_model(path).unjudged == ("travel",)
    tails = jumpy.tails.copy()
    tails[FEATURES.index("speed")] = np.nan
    with pytest.raises(ObjectsError, match="NaN rows only for"):
        ObjectsModel(
            jumpy.background, jumpy.threshold, tails, GRID, spacing_s=SPACING, k=4, floor=15, min_area=40
        )


def test_a_global_light_change_makes_no_blob(model: ObjectsModel) -> None:
    brighter = np.clip(frame([], 3).astype(np.int16) + 30, 0, 255).astype(np.uint8)
    state = model.new_state()
    assert model.blobs(state, brighter) == []
    assert (model.score_frame(state, brighter) == EMPTY).all()


def test_footage_without_objects_is_refused_by_name() -> None:
    empty = [np.stack([frame([], s) for s in range(30)])]
    with pytest.raises(ObjectsError, match="blob observations"):
        fit_model(empty, GRID, spacing_s=SPACING)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((H, W, 3), np.float32), "uint8"),
        (np.zeros((H, W, 4), np.uint8), r"\(H, W, 3\) RGB or \(H, W\) grey"),
        (np.zeros((H // 2, W), np.uint8), "background"),  # grey, of the wrong size
        (np.zeros((H // 2, W, 3), np.uint8), "background"),
    ],
)
def test_a_bad_frame_gets_a_named_error(model: ObjectsModel, frames: np.ndarray, match: str) -> None:
    with pytest.raises(ObjectsError, match=match):
        model.score_frame(model.new_state(), frames)


def test_a_grey_frame_scores_as_its_rgb_frame(model: ObjectsModel) -> None:
    rgb = [frame([(40 + 6 * t, 30, 8, 20)], t) for t in range(6)]  # a figure running across
    a, b = model.new_state(), model.new_state()
    maps = []
    for f in rgb:
        maps.append(model.score_frame(a, f))
        np.testing.assert_array_equal(maps[-1], model.score_frame(b, grey_frame(f)))
    assert max(float(m.max()) for m in maps) > EMPTY  # the figure was seen
    grey = grey_frame(rgb[0])
    assert grey.shape == (H, W)
    assert grey.dtype == np.uint8
    np.testing.assert_array_equal(grey_frame(grey), grey)  # luma stays luma
    assert grey_frame(grey) is not grey  # a copy: the stream keeps it while the caller may reuse theirs


def test_settings_and_grid_are_checked() -> None:
    with pytest.raises(ObjectsError, match="spacing_s"):
        fit_model(normal_footage(), GRID, spacing_s=0.0)
    with pytest.raises(ObjectsError, match="grid of whole cells"):
        fit_model(normal_footage(), (5, 8), spacing_s=SPACING)


def test_the_model_keeps_private_read_only_arrays(model: ObjectsModel) -> None:
    bg = model.background.copy()
    copy = ObjectsModel(bg, model.threshold, model.tails, GRID, spacing_s=SPACING, k=4, floor=15, min_area=40)
    bg[:] = 0
    assert (copy.background == model.background).all()
    with pytest.raises(ValueError, match="read-only"):
        copy.background[0, 0] = 1


def test_the_file_round_trips(model: ObjectsModel, tmp_path: Path) -> None:
    path = model_path(tmp_path / "cam.json")
    assert path.name == "cam.objects.npz"
    assert save_model(model, path) == path.stat().st_size
    loaded = load_model(path, frame_size=(H, W), grid=GRID, spacing_s=SPACING)
    frames = walk(6, x0=10, y=40, speed=9.0, seed=9)
    s1, s2 = model.new_state(), loaded.new_state()
    for f in frames:
        np.testing.assert_array_equal(model.score_frame(s1, f), loaded.score_frame(s2, f))
    assert (loaded.camera, loaded.n_blobs, loaded.fitted) == (model.camera, model.n_blobs, model.fitted)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"frame_size": (H, W + 16)}, "frame size"),
        ({"grid": (3, 4)}, "grid"),
        ({"spacing_s": 0.4}, r"objects\.spacing_s"),
    ],
)
def test_a_model_fitted_for_another_camera_setup_is_refused(
    model: ObjectsModel, tmp_path: Path, kwargs: dict, match: str
) -> None:
    path = tmp_path / "cam.objects.npz"
    save_model(model, path)
    with pytest.raises(ObjectsModelError, match=f"{path}.*{match}.*zsad calibrate"):
        load_model(path, **kwargs)


def test_a_missing_or_damaged_file_is_refused_by_name(model: ObjectsModel, tmp_path: Path) -> None:
    missing = tmp_path / "none.objects.npz"
    with pytest.raises(ObjectsModelError, match=f"{missing}: no such file"):
        load_model(missing)
    path = tmp_path / "cam.objects.npz"
    save_model(model, path)
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ObjectsModelError, match="truncated or corrupt"):
        load_model(path)
    save_model(model, path)
    with np.load(path) as d:
        arrays = {k: d[k] for k in d.files}
    tampered = tmp_path / "tampered.objects.npz"
    np.savez(tampered, **{**arrays, "threshold": arrays["threshold"] + 1})
    with pytest.raises(ObjectsModelError, match="sha256"):
        load_model(tampered)
    meta = json.loads(str(arrays["meta"][()]))
    other = tmp_path / "other.objects.npz"
    np.savez(other, **{**arrays, "meta": np.array(json.dumps({**meta, "version": 99}))})
    with pytest.raises(ObjectsModelError, match="unsupported version 99"):
        load_model(other)


def test_a_model_file_from_before_the_travel_is_refused_by_name(model: ObjectsModel, tmp_path: Path) -> None:
    # What zsad calibrate wrote before the fourth feature: three features, three tail rows, a valid hash.
    path = tmp_path / "cam.objects.npz"
    save_model(model, path)
    with np.load(path) as d:
        arrays = {k: d[k] for k in d.files}
    meta = json.loads(str(arrays["meta"][()]))
    tails = arrays["tails"][:3]
    meta.update(
        features=["speed", "aspect", "still"],
        arrays_sha256=arrays_sha256(arrays["background"], arrays["threshold"], tails),
    )
    old = tmp_path / "old.objects.npz"
    np.savez(old, **{**arrays, "tails": tails, "meta": np.array(json.dumps(meta))})
    with pytest.raises(
        ObjectsModelError,
        match=rf"{old}: its features are \['speed', 'aspect', 'still'\], this zsad scores "
        r"\['speed', 'aspect', 'still', 'travel'\]; re-run zsad calibrate for this camera",
    ):
        load_model(old)


def test_a_camera_s_models_leave_unjudged_what_any_of_them_does(model: ObjectsModel) -> None:
    short = leaving_unjudged(model, ["travel"])
    assert short.unjudged == ("travel",)
    assert model.unjudged == ()  # a copy: the model given is left as it was
    np.testing.assert_array_equal(short.tails[:3], model.tails[:3])
    agreed = agreeing([model, short, model])
    assert [m.unjudged for m in agreed] == [("travel",)] * 3
    assert agreed[1] is short  # already agreeing: kept as it is
    np.testing.assert_array_equal(agreed[0].background, model.background)
    assert (agreed[0].camera, agreed[0].fitted, agreed[0].n_blobs) == (
        model.camera,
        model.fitted,
        model.n_blobs,
    )
    same = agreeing([model, model])
    assert all(m is model for m in same)  # nothing to leave out: the models themselves
    with pytest.raises(ObjectsError, match=r"only \['travel'\] may be left unjudged, got \['speed'\]"):
        leaving_unjudged(model, ["speed"])


def test_a_gap_in_the_frames_starts_the_tracks_afresh(model: ObjectsModel) -> None:
    # A walker, then the clips of 2 s dropped (a loaded scheduler): flow across the gap would read a
    # runner's speed. Given the frames' times, the state starts afresh instead.
    frames = walk(12, x0=10, y=40, speed=2.0, seed=31)
    pts = [SPACING * t for t in range(10)] + [SPACING * 9 + 2.0, SPACING * 9 + 2.0 + SPACING]
    jumped = np.concatenate([frames[:10], walk(2, x0=10 + 2.0 * 20, y=40, speed=2.0, seed=50)])
    blind, aware = model.new_state(), model.new_state()
    for f in jumped[:-1]:
        model.blobs(blind, f)
    for f, t in zip(jumped[:-2], pts[:-2], strict=True):
        model.blobs(aware, f, t)
    (after_gap,) = model.blobs(aware, jumped[-2], pts[-2])
    assert np.isnan(after_gap.speed)  # the first frame after the gap: no speed, a new track
    (next_one,) = model.blobs(aware, jumped[-1], pts[-1])
    (blind_next,) = model.blobs(blind, jumped[-1])
    assert next_one.speed < blind_next.speed  # measured over one spacing, not averaged with the gap
    assert model.excess([next_one])[0] < 1.0


def test_a_file_that_is_not_an_npz_archive_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "cam.objects.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ObjectsModelError, match=f"{path}: is not an .npz archive.*zsad calibrate"):
        load_model(path)


def _scored(model: ObjectsModel, videos: list[np.ndarray], flows: FlowCache | None) -> np.ndarray:
    out = []
    for v in videos:
        state = model.new_state(flows)
        out += [model.score_frame(state, f) for f in v]
    return np.stack(out)


def test_a_shared_flow_cache_computes_each_pair_once_and_changes_no_score() -> None:
    """Calibration plays the same footage through several models: with a cache, each pair of frames' flow
    is computed once, and every fitted tail and score map is what it is without one."""
    videos = normal_footage()
    test = [walk(8, x0=10, y=40, speed=9.0, seed=9), walk(8, x0=20, y=30, speed=2.0, seed=7)]
    plain = fit_model(videos, GRID, spacing_s=SPACING)
    flows = FlowCache()
    cached = fit_model(videos, GRID, spacing_s=SPACING, flows=flows)
    pairs = sum(len(v) - 1 for v in videos)
    assert flows.misses == pairs
    assert flows.hits == 0
    assert len(flows) == pairs
    np.testing.assert_array_equal(cached.tails, plain.tails)
    again = fit_model(videos[1:], GRID, spacing_s=SPACING, flows=flows)  # another fold's model
    assert flows.misses == pairs
    assert flows.hits == pairs - (len(videos[0]) - 1)
    np.testing.assert_array_equal(again.tails, fit_model(videos[1:], GRID, spacing_s=SPACING).tails)
    # Scoring footage the cache has seen, and footage it has not, gives the maps computed without it.
    for vids in (videos, test):
        np.testing.assert_array_equal(_scored(cached, vids, flows), _scored(plain, vids, None))
    assert flows.hits == 2 * pairs - (len(videos[0]) - 1)


def test_a_full_flow_cache_keeps_no_more_and_still_gives_every_flow() -> None:
    videos = normal_footage()[:2]
    one = H * W * 4  # a float32 magnitude map
    flows = FlowCache(max_bytes=3 * one)
    model = fit_model(normal_footage(), GRID, spacing_s=SPACING)
    np.testing.assert_array_equal(_scored(model, videos, flows), _scored(model, videos, None))
    assert len(flows) == 3
    assert flows.bytes == 3 * one
    assert flows.misses == sum(len(v) - 1 for v in videos)
    with pytest.raises(ObjectsError, match="max_bytes"):
        FlowCache(max_bytes=-1)


def test_a_cached_flow_cannot_be_changed_by_whoever_receives_it() -> None:
    flows = FlowCache()
    a, b = frame([(10, 10, 6, 16)], 1), frame([(12, 10, 6, 16)], 2)
    first = flows.magnitude(grey_frame(a), grey_frame(b), lambda p, g: np.ones(p.shape, np.float32))
    assert flows.magnitude(grey_frame(a), grey_frame(b), lambda p, g: np.zeros(p.shape, np.float32)) is first
    with pytest.raises(ValueError):
        first[0, 0] = 5.0


def test_the_stream_runs_opencv_on_the_calling_thread_alone(model: ObjectsModel) -> None:
    """OpenCV's own pool (one thread per core) cost 70 % more CPU for the same flow on the 2-core box
    (bench/results/realtime_sampled10_2026-12-05/): the stream sets it to one thread when it uses OpenCV."""
    cv2 = pytest.importorskip("cv2")
    before = cv2.getNumThreads()
    cv2.setNumThreads(2)  # as a fresh process on 2 cores has it, or as something else set it
    try:
        state = model.new_state()
        for f in walk(3, x0=10, y=40, speed=9.0, seed=9):
            model.score_frame(state, f)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)
