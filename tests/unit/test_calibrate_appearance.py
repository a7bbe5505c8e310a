"""zsad calibrate's appearance samples (pipeline/cli/calibrate.py, ``_fit_appearance``) on feature maps made
here: each time fold's clips are scored by the memory of the other folds, and the camera keeps the memory of
all of them. The engine is the appearance stand-in (tests/fixtures/appearance_standin.py); only its manifest
is read here."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from pipeline.cli.calibrate import FOLDS, _fit_appearance, _fold, _Scored
from plugins.appearance import appearance_map
from plugins.streams import APPEARANCE
from plugins.zones import CellFilters
from tests.fixtures.appearance_standin import StandInAppearanceEngine

CHANNELS, GRID = 4, (2, 3)  # the stand-in's 16 x 24 frames at stride 8
CLIPS, FRAMES = 24, 3  # one footage of 24 clips, 3 frames each: 6 clips a fold
ODD_FOLD = 2


def _features() -> dict[tuple[str, int], np.ndarray]:
    """Feature maps of unit noise; fold ``ODD_FOLD``'s frames sit 10 units off in channel 0 everywhere, a
    scene no other fold shows."""
    rng = np.random.default_rng(0)
    out = {}
    for k in range(CLIPS):
        f = rng.normal(size=(FRAMES, CHANNELS, *GRID)).astype(np.float32)
        if _fold(k, CLIPS) == ODD_FOLD:
            f[:, 0] += 10.0
        out[("cam.0", k)] = f
    return out


def test_each_folds_clips_are_scored_by_the_memory_of_the_other_folds() -> None:
    engines = SimpleNamespace(appearance=StandInAppearanceEngine((24, 16), channels=CHANNELS))
    features = _features()
    scored = [_Scored("cam.0", k, {}, GRID) for k in range(CLIPS)]
    folds = np.array([_fold(k, CLIPS) for k in range(CLIPS)])
    assert sorted(set(folds.tolist())) == list(range(FOLDS))
    memory = _fit_appearance(engines, "cam", features, {}, {"cam.0": CLIPS}, scored, folds, CellFilters())
    assert memory is not None
    assert memory.n_frames == CLIPS * FRAMES  # the camera keeps the memory of every fold
    held_out = np.array([s.scores[APPEARANCE] for s in scored])
    # Against the memory of the other folds the odd fold's scene is unseen: its clips stand far out.
    odd = folds == ODD_FOLD
    assert held_out[odd].min() > 2 * held_out[~odd].max()
    # Against the memory of every fold (what the sample would be without holding out) they do not.
    whole = np.array(
        [float(appearance_map(memory, features[("cam.0", k)][-1], GRID).max()) for k in range(CLIPS)]
    )
    assert whole[odd].max() < 0.5 * held_out[odd].min()
