"""The objects stream in offline evaluation (training/objects_eval.py) on tiny synthetic scenes (a bright
walker crossing a static textured background): the clip-map rule the run scores by, held-out calibration
samples (by fold, and by time half for a context's only video), a fast walker standing out, and a context
whose footage shows no objects left without the stream."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from core.config import ObjectsConfig, ZsadConfig
from plugins.objects import EMPTY, ObjectsError, ObjectsModel
from training.heldout_models import HeldOutModels
from training.objects_eval import ObjectsEvaluator, clip_maps

H, W = 48, 64
GRID = (6, 8)
SETTINGS = ObjectsConfig(enabled=True)
STEP = 2
NORMAL, FAST = 1.0, 5.0  # pixels a frame


def scene(
    n: int, seed: int, speed: float = NORMAL, *, fast_from: int | None = None, walker: bool = True
) -> np.ndarray:
    """``(n, H, W, 3)`` uint8: a static texture with a little noise; with ``walker``, a 10 x 5 bright
    figure crossing it at ``speed`` pixels a frame (``FAST`` from frame ``fast_from``), wrapping round."""
    base = np.random.default_rng(0).integers(60, 120, size=(H, W, 3))
    noise = np.random.default_rng(seed).integers(-3, 4, size=(n, H, W, 3))
    frames = np.clip(base[None] + noise, 0, 255).astype(np.uint8)
    x = 3.0 + 7 * seed
    for i in range(n if walker else 0):
        x = (x + (FAST if fast_from is not None and i >= fast_from else speed)) % (W - 6)
        frames[i, 20:30, int(x) : int(x) + 5] = 230
    return frames


def evaluator(speeds: tuple[float, ...] = (NORMAL,) * 4, n: int = 60) -> ObjectsEvaluator:
    ev = ObjectsEvaluator(SETTINGS, GRID, STEP)
    for i, speed in enumerate(speeds):  # two folds of two videos
        ev.add_training_video(f"v{i}", scene(n, seed=i + 1, speed=speed), "ctx", i // 2)
    return ev


def test_a_clip_map_is_the_max_of_its_fed_frames_and_a_clip_without_one_keeps_the_last() -> None:
    fed = np.array([2, 4, 6, 10])
    maps = np.full((4, 2, 3), EMPTY, np.float32)
    maps[0, 0, 0] = 1.0
    maps[1, 0, 0], maps[1, 1, 2] = 0.5, 3.0
    maps[2, 0, 1] = 2.0
    maps[3, 1, 1] = 4.0
    first = np.array([0, 2, 3, 7, 8, 11])
    last = np.array([1, 4, 6, 9, 12, 20])
    out = clip_maps(fed, maps, first, last)
    assert out.shape == (6, 2, 3)
    assert (out[0] == EMPTY).all()  # before the first fed frame: nothing seen yet
    np.testing.assert_array_equal(out[1], np.maximum(maps[0], maps[1]))  # frames 2 and 4, both ends in
    np.testing.assert_array_equal(out[2], np.maximum(maps[1], maps[2]))  # frames 4 and 6
    np.testing.assert_array_equal(out[3], maps[2])  # no fed frame in 7..9: frame 6's map carried over
    np.testing.assert_array_equal(out[4], maps[3])
    np.testing.assert_array_equal(out[5], maps[3])  # after the last fed frame: still the last map


def test_clip_maps_refuse_bad_input() -> None:
    maps = np.zeros((2, 2, 3), np.float32)
    with pytest.raises(ObjectsError, match="one"):
        clip_maps(np.array([0, 2, 4]), maps, np.array([0]), np.array([1]))
    with pytest.raises(ObjectsError, match="time order"):
        clip_maps(np.array([2, 0]), maps, np.array([0]), np.array([1]))
    with pytest.raises(ObjectsError, match="last"):
        clip_maps(np.array([0, 2]), maps, np.array([3]), np.array([1]))


def test_training_clips_are_scored_against_the_other_fold() -> None:
    # Fold 0 walks fast, fold 1 at the normal pace: held out, fold 0's clips meet a model that never saw
    # a fast walker (its own fold's model would have them in its tails), and fold 1's are calm.
    ev = evaluator((FAST, FAST, NORMAL, NORMAL))
    first = np.arange(8, 53, 8)
    fast = ev.held_out_clip_scores("v0", first, first + 6)
    calm = ev.held_out_clip_scores("v2", first, first + 6)
    assert np.isfinite(fast).all()
    assert np.isfinite(calm).all()
    assert np.median(fast) > 1.0  # beyond the normal 99th percentile of the model that never saw them
    assert np.median(calm) < 1.0
    assert np.median(fast) > 4 * np.median(calm)
    # The context's models are fitted together (they must judge alike): its folds' and its whole footage's.
    assert set(ev._models) == {("ctx", 0, None), ("ctx", 1, None), ("ctx", None, None)}


def test_the_folds_share_each_training_pair_s_flow_and_score_as_without_sharing() -> None:
    ev = evaluator((FAST, FAST, NORMAL, NORMAL))
    alone = evaluator((FAST, FAST, NORMAL, NORMAL))
    alone.flows.max_bytes = 0  # keeps nothing: every model computes every flow, as before the cache
    first = np.arange(8, 53, 8)
    for name in ("v0", "v2"):
        shared = ev.held_out_clip_scores(name, first, first + 6)
        np.testing.assert_array_equal(shared, alone.held_out_clip_scores(name, first, first + 6))
    # Each fold's model was fitted on the other fold's frames, which its held-out scoring then played again.
    assert ev.flows.hits > 0
    assert alone.flows.hits == 0
    assert ev.flows.misses < alone.flows.misses
    # A pasted copy played by one held-out model, and a test video, are played once: their flows are not kept.
    kept = len(ev.flows)
    pasted = scene(60, seed=5, speed=NORMAL, fast_from=30)  # other frames than v0's
    np.testing.assert_array_equal(
        ev.held_out_clip_scores("v0", first, first + 6, pasted),
        alone.held_out_clip_scores("v0", first, first + 6, pasted),
    )
    assert len(ev.flows) == kept
    test = scene(40, seed=9, fast_from=20)
    np.testing.assert_array_equal(
        ev.test_clip_scores(test, "ctx", first[:4], first[:4] + 6),
        alone.test_clip_scores(test, "ctx", first[:4], first[:4] + 6),
    )
    assert len(ev.flows) == kept


def test_a_single_video_context_is_held_out_frame_by_frame_by_time_halves() -> None:
    fitted_on: dict[int, set[int]] = {}

    class Recording(ObjectsEvaluator):
        """Records the frames each model is fitted on (a frame's index is written in its corner pixel)."""

        def _fit(self, parts: list[np.ndarray], context: str) -> ObjectsModel:
            model = super()._fit(parts, context)
            fitted_on[id(model)] = {int(f[0, 0, 0]) for p in parts for f in p}
            return model

    frames = scene(160, seed=5)
    frames[:, 0, 0, 0] = np.arange(160)
    ev = Recording(SETTINGS, GRID, STEP)
    ev.add_training_video("only", frames, "solo", -1)
    first = np.arange(0, 154, 4)
    scores = ev.held_out_clip_scores("only", first, first + 6)
    assert np.isfinite(scores).all()
    assert {k[1:] for k in ev._models} == {(-1, 0), (-1, 1), (None, None)}
    for i in ev.fed_frames(len(frames)):  # no fed frame, so no clip, is scored by a model fitted on it
        model = ev._held_out_model("only", int(i))
        assert model is not None
        assert int(i) not in fitted_on[id(model)]


def test_a_fast_walker_in_a_test_video_scores_above_the_normal_ones() -> None:
    ev = evaluator()
    frames = scene(80, seed=9, fast_from=40)
    first = np.arange(0, 74, 2)
    scores = ev.test_clip_scores(frames, "ctx", first, np.minimum(first + 6, 79))
    assert scores is not None
    assert scores.shape == first.shape
    before, after = scores[first + 6 < 40], scores[first >= 42]
    assert before.max() < 3.0
    assert after.min() > 2 * before.max()


def test_a_pasted_copy_of_a_training_video_is_scored_against_its_held_out_model() -> None:
    ev = evaluator()
    altered = scene(60, seed=1, fast_from=30)  # v0 with its walker sped up from frame 30
    first = np.arange(32, 53, 8)
    clean = ev.held_out_clip_scores("v0", first, first + 6)
    pasted = ev.held_out_clip_scores("v0", first, first + 6, frames=altered)
    assert (pasted > clean).all()
    with pytest.raises(ObjectsError, match="frames"):
        ev.held_out_clip_scores("v0", first, first + 6, frames=altered[:20])


def jumpers(n: int, seed: int) -> np.ndarray:
    """``n`` frames of the scene's background with a figure somewhere new in each: flow sees it, no track
    follows it for the travel's steps."""
    frames = scene(n, seed, walker=False)
    rng = np.random.default_rng(seed)
    for f in frames:
        x, y = int(rng.integers(0, W - 5)), int(rng.integers(0, H - 10))
        f[y : y + 10, x : x + 5] = 230
    return frames


def test_a_feature_one_fold_leaves_unjudged_is_unjudged_by_every_model_of_the_context() -> None:
    # Fold 0 walks (tracks with a travel), fold 1 jumps: the model holding out fold 0 has no travel to judge,
    # so fold 0's calibration samples are scored without it, and the test videos must be too.
    ev = ObjectsEvaluator(SETTINGS, GRID, STEP)
    for i in range(2):
        ev.add_training_video(f"w{i}", scene(60, seed=i + 1), "ctx", 0)
        ev.add_training_video(f"j{i}", jumpers(60, seed=i + 3), "ctx", 1)
    alone = ObjectsEvaluator(SETTINGS, GRID, STEP)  # what each fit alone gives, for the test's premise
    alone._train = ev._train
    fitted = {
        k: HeldOutModels._model(alone, *k) for k in [("ctx", 0, None), ("ctx", 1, None), ("ctx", None, None)]
    }
    assert {k: m.unjudged for k, m in fitted.items() if m is not None} == {
        ("ctx", 0, None): ("travel",),
        ("ctx", 1, None): (),
        ("ctx", None, None): (),
    }
    first = np.arange(8, 53, 8)
    assert np.isfinite(ev.held_out_clip_scores("w0", first, first + 6)).all()
    assert {k: m.unjudged for k, m in ev._models.items() if m is not None} == {
        ("ctx", 0, None): ("travel",),
        ("ctx", 1, None): ("travel",),
        ("ctx", None, None): ("travel",),
    }


def test_a_context_without_objects_has_no_model_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    ev = ObjectsEvaluator(SETTINGS, GRID, STEP)
    for i in range(2):
        ev.add_training_video(f"e{i}", scene(60, seed=i + 1, walker=False), "empty", i)
    first = np.arange(0, 53, 8)
    with caplog.at_level(logging.WARNING, logger="training.heldout_models"):
        held = ev.held_out_clip_scores("e0", first, first + 6)
        test = ev.test_clip_scores(scene(40, seed=7), "empty", first[:4], first[:4] + 6)
    assert np.isnan(held).all()
    assert test is None
    assert "context empty: no objects model" in caplog.text
    assert "blob observations" in caplog.text  # the fit's own reason


def test_the_evaluator_follows_the_config_which_turns_it_on_by_default() -> None:
    assert ZsadConfig().objects.enabled
    assert ObjectsEvaluator.from_config(ObjectsConfig(enabled=False), GRID, STEP) is None
    assert isinstance(ObjectsEvaluator.from_config(ObjectsConfig(), GRID, STEP), ObjectsEvaluator)
    with pytest.raises(ObjectsError, match="step"):
        ObjectsEvaluator(SETTINGS, GRID, 0)
