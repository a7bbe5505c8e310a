"""The appearance stream in offline evaluation: folds per context, held-out calibration scores, test scores.
A randomly initialised encoder stands in for the ImageNet weights (no file needed; the maths is the same)."""

from __future__ import annotations

import numpy as np
import torch

from engines.appearance import AppearanceEncoder
from engines.encoders import IMAGENET_MEAN, IMAGENET_STD
from plugins.fusion import HELDOUT_FOLDS
from training.appearance_eval import AppearanceEvaluator, context_folds


def test_context_folds_split_each_context_and_a_lone_video_by_time() -> None:
    names = ["a0", "a1", "a2", "a3", "b0"]
    contexts = {"a0": "a", "a1": "a", "a2": "a", "a3": "a", "b0": "b"}
    assert context_folds(names, contexts, k=2) == {"a0": 0, "a1": 0, "a2": 1, "a3": 1, "b0": -1}


def test_context_folds_default_to_the_calibrations_folds_and_a_group_per_video_when_fewer() -> None:
    names = [f"a{i}" for i in range(8)] + ["b0", "b1", "c0"]
    contexts = {n: n[0] for n in names}
    folds = context_folds(names, contexts)
    assert [folds[f"a{i}"] for i in range(8)] == [i // (8 // HELDOUT_FOLDS) for i in range(8)]
    assert (folds["b0"], folds["b1"], folds["c0"]) == (0, 1, -1)


def _frames(rng: np.random.Generator, n: int) -> np.ndarray:
    base = np.full((n, 32, 48, 3), 110, np.uint8)
    return np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)


def test_an_object_the_memory_never_saw_scores_above_every_normal_frame() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    ev = AppearanceEvaluator(AppearanceEncoder("mobilenet_v2"), IMAGENET_MEAN, IMAGENET_STD, grid=(2, 3))
    for i in range(4):
        ev.add_training_video(f"v{i}", _frames(rng, 40), "scene", fold=i // 2)
    ev.add_training_video("lone", _frames(rng, 40), "other", fold=-1)
    held = ev.held_out_clip_scores("v0", np.array([3, 10, 39]))
    lone = ev.held_out_clip_scores("lone", np.array([0, 5, 30, 39]))  # each half scored by the other's memory
    assert held.shape == (3,)
    assert lone.shape == (4,)
    assert np.isfinite(held).all()
    assert np.isfinite(lone).all()
    test = _frames(rng, 6)
    test[5, 8:24, 16:32] = (220, 30, 30)  # a red box the training never showed
    scores, semantic = ev.test_frame_scores(test, "scene")
    assert semantic is None  # MobileNetV2 has no image embedding, so no semantic stream
    assert not ev.semantic
    assert scores.shape == (6,)
    assert scores[5] > 1.5 * scores[:5].max()
    # The maps a masked video's localisation takes: each frame's score is its map's peak.
    maps: list[np.ndarray] = []
    again, _ = ev.test_frame_scores(test, "scene", maps)
    np.testing.assert_array_equal(again, scores)
    assert maps[0].shape == (6, *ev.grid)
    np.testing.assert_allclose(maps[0].reshape(6, -1).max(axis=1), scores, rtol=1e-6)
