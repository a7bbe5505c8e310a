"""The stationary stream in offline evaluation (training/stationary_eval.py) on tiny synthetic scenes: windows
at the run's step, held-out calibration samples and test frames (none until a window is full, as the run),
and an object that stays is found."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import StationaryConfig, ZsadConfig
from training.stationary_eval import StationaryEvaluator, window_indices

H, W = 32, 48
GRID = (4, 6)
SETTINGS = StationaryConfig(window=4, min_pixels=4, floor=10.0)


def scene(n: int, seed: int) -> np.ndarray:
    base = np.random.default_rng(0).integers(60, 120, size=(H, W, 3))
    noise = np.random.default_rng(seed).integers(-3, 4, size=(n, H, W, 3))
    return np.clip(base[None] + noise, 0, 255).astype(np.uint8)


def evaluator(step: int = 2) -> StationaryEvaluator:
    ev = StationaryEvaluator(SETTINGS, GRID, step)
    for i in range(4):  # two folds of two videos
        ev.add_training_video(f"v{i}", scene(40, seed=i + 1), "ctx", i // 2)
    return ev


def test_window_indices_reach_back_step_apart_or_reflect() -> None:
    assert window_indices(10, 4, 3) == [1, 4, 7, 10]
    assert window_indices(5, 4, 3) is None
    assert window_indices(5, 4, 3, reflect=True) == [4, 1, 2, 5]


def test_held_out_samples_have_no_score_until_the_window_is_full() -> None:
    ev = evaluator(step=2)
    scores = ev.held_out_clip_scores("v0", np.array([0, 5, 6, 20, 39]))
    assert np.isnan(scores[:2]).all()  # frames 0 and 5: the window (3 frames 2 apart before) starts < 0
    assert np.isfinite(scores[2:]).all()
    assert (np.abs(scores[2:]) < 3.0).all()  # normal footage against the other fold's model is calm


def test_a_clips_window_ends_at_the_newest_frame_the_run_has_taken() -> None:
    # The run's window takes every step-th frame from the camera's first (here 0, 2, 4, ...): a clip whose
    # last frame is 7 is scored with the window that ends at 6, as is one ending at 6.
    ev = evaluator(step=2)
    frames = scene(40, seed=1)
    frames[7, 18:22, 26:30] = 250  # on frame 7 only: never in a window the run holds
    held = ev.held_out_clip_scores("v0", np.array([6, 7, 8]), frames=frames)
    assert held[0] == held[1]
    test = ev.test_frame_scores(frames, "ctx")
    assert test[6] == test[7]
    assert ev.taken_by(7) == 6
    assert ev.taken_by(8) == 8


def test_a_single_video_context_is_held_out_by_time_halves() -> None:
    ev = StationaryEvaluator(SETTINGS, GRID, 1)
    ev.add_training_video("only", scene(60, seed=9), "solo", -1)
    scores = ev.held_out_clip_scores("only", np.array([10, 50]))
    assert np.isfinite(scores).all()
    assert set(k[2] for k in ev._models) == {0, 1}  # one model per half, each scoring the other


def test_a_window_across_the_middle_of_a_single_video_context_has_no_held_out_score() -> None:
    # 60 frames, halves 0..29 and 30..59; a window of 4 frames 2 apart ending at t holds t-6..t. Ending at 31,
    # 32 or 35 it reaches into the first half, whose frames the second half's held-out model was fitted on.
    ev = StationaryEvaluator(SETTINGS, GRID, 2)
    ev.add_training_video("only", scene(60, seed=9), "solo", -1)
    lasts = np.array([29, 31, 35, 36, 59])
    scores = ev.held_out_clip_scores("only", lasts)
    assert np.isfinite(scores[[0, 3, 4]]).all()  # 23..29 in the first half; 30..36 and 53..59 in the second
    assert np.isnan(scores[[1, 2]]).all()
    # Videos of a fold are held out whole: a window is never cut by a fold's edge there.
    folded = evaluator(step=2).held_out_clip_scores("v0", np.array([19, 21, 25]))
    assert np.isfinite(folded).all()


def test_test_frames_are_scored_and_an_object_that_stays_stands_out() -> None:
    ev = evaluator(step=2)
    frames = scene(40, seed=7)
    frames[20:, 18:22, 26:30] = 250  # left at frame 20, in cell (2, 3)
    scores = ev.test_frame_scores(frames, "ctx")
    assert scores.shape == (40,)
    # A window of 4 frames 2 apart is full from frame 6 on: no score before it, as the run.
    assert np.isnan(scores[:6]).all()
    assert np.isfinite(scores[6:]).all()
    assert scores[6:18].max() < 3.0  # before it
    assert scores[30:].min() > 5.0  # once it fills most of the window
    # The maps a masked video's localisation takes: NaN before the window is full, the peak on the object.
    maps: list[np.ndarray] = []
    ev.test_frame_scores(frames, "ctx", maps)
    assert maps[0].shape == (40, *GRID)
    assert np.isnan(maps[0][:6]).all()
    np.testing.assert_allclose(maps[0][6:].reshape(34, -1).max(axis=1), scores[6:])
    assert np.unravel_index(np.argmax(maps[0][35]), GRID) == (2, 3)


def test_a_walker_in_a_videos_first_frames_is_not_read_as_left_behind() -> None:
    # A square walking 1.5 px a frame from the first frame. A full window (8 frames 2 apart) never holds it
    # at one place in half its frames; a window reflected in time at the video's start (frames |t - 2k|)
    # holds its first positions twice and read it as something left behind (z 18 at frames 5-9 when the
    # evaluation reflected). The run scores nothing until the window is full, nor does the evaluation.
    ev = StationaryEvaluator(StationaryConfig(window=8, min_pixels=4, floor=10.0), GRID, 2)
    for i in range(4):
        ev.add_training_video(f"v{i}", scene(40, seed=i + 1), "ctx", i // 2)
    frames = scene(40, seed=7)
    for t in range(40):
        x = round(1.5 * t)
        frames[t, 14:22, x : x + 8] = 250
    scores = ev.test_frame_scores(frames, "ctx")
    assert np.isnan(scores[:14]).all()  # the window is full from frame 14 on
    assert scores[14:].max() < 3.0


def test_the_evaluator_is_off_when_the_config_says_so() -> None:
    assert StationaryEvaluator.from_config(StationaryConfig(enabled=False), GRID, 2) is None
    assert ZsadConfig().stationary.enabled


def test_the_config_section_is_strict() -> None:
    with pytest.raises(ValueError, match="extra"):
        ZsadConfig.model_validate({"stationary": {"spacing": 0.4}})
    with pytest.raises(ValueError, match="window"):
        ZsadConfig.model_validate({"stationary": {"window": 1}})


def test_an_altered_copy_of_a_training_video_is_scored_against_its_held_out_model() -> None:
    ev = evaluator(step=2)
    altered = scene(40, seed=1)  # v0's frames
    altered[10:, 18:22, 26:30] = 250  # something left in cell (2, 3) from frame 10
    clean = ev.held_out_clip_scores("v0", np.array([30, 39]))
    pasted = ev.held_out_clip_scores("v0", np.array([30, 39]), frames=altered)
    assert (clean < 3.0).all()
    assert (pasted > 5.0).all()
    with pytest.raises(ValueError, match="frames"):
        ev.held_out_clip_scores("v0", np.array([30]), frames=altered[:20])
