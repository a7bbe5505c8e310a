"""zsad calibrate's stationary model (pipeline/cli/calibrate.py, ``_StationaryFrames``) on clips made here:
the frames the run's window would take, held-out samples by the time folds, none before a window is full,
and footage left out of the fit (an altered copy) still scored."""

from __future__ import annotations

import numpy as np
import pytest

from core.config import parse_config
from pipeline.cli.calibrate import _fold, _Scored, _StationaryFrames
from pipeline.clips import Clip
from plugins.scorer import reduce_map
from plugins.stationary import StationaryState
from plugins.zones import CellFilters

# The default model (128 x 192, 16-pixel patches), clips of 4 frames 2 apart, one every 8 frames at 10 fps.
H, W, GRID = 128, 192, (8, 12)
CFG = parse_config('{"appearance": {"enabled": false}, "stationary": {"spacing_s": 0.4, "window": 4}}')


def clips(camera: str, n: int, box_from: int | None = None) -> list[Clip]:
    base = np.random.default_rng(0).integers(60, 120, (H, W, 3))
    rng = np.random.default_rng(len(camera))
    out = []
    for k in range(n):
        idx = 8 * k + 2 * np.arange(4)
        frames = np.clip(base[None] + rng.integers(-3, 4, (4, H, W, 3)), 0, 255).astype(np.uint8)
        if box_from is not None and k >= box_from:
            frames[:, 40:48, 100:108] = 250  # left in cell (2, 6)
        out.append(Clip(camera, k, frames, idx / 10.0, 8 * k))
    return out


def test_the_model_and_held_out_samples_leave_excluded_footage_out_but_score_it() -> None:
    collector = _StationaryFrames(0.4)
    footage = {"cam.0": clips("cam.0", 20), "cam.0.pseudo": clips("cam.0.pseudo", 20, box_from=5)}
    emitted = {c: len(v) for c, v in footage.items()}
    scored = []
    for cam, cs in footage.items():
        for clip in cs:
            collector.add(clip)
            if clip.index >= 2:
                scored.append(_Scored(cam, clip.index, {}, GRID))
    # Every second frame of a clip is 0.4 s after the last one taken: 2 of each clip's 4.
    assert len(collector.frames["cam.0"]) == 40
    folds = np.array([_fold(s.index, emitted[s.camera]) for s in scored], np.int8)
    model = collector.fit(CFG, "cam", emitted, scored, folds, CellFilters(), exclude={"cam.0.pseudo"})
    assert model is not None
    assert model.n_frames == 40  # the clean footage only
    assert model.background[44, 104].max() < 200  # the pasted box never entered the background
    clean = {s.index: s.scores["stationary"] for s in scored if s.camera == "cam.0" and s.scores}
    pasted = [
        s.scores["stationary"] for s in scored if s.camera == "cam.0.pseudo" and s.index >= 8 and s.scores
    ]
    # Four folds of 5 clips; every clip from the third on has a sample.
    assert sorted(clean) == list(range(2, 20))
    assert max(clean.values()) < 3.0
    assert len(pasted) == 12
    assert min(pasted) > 5.0
    # A sample is its window scored by the model of the other folds' frames: clip 12, in fold 2, by the
    # model of folds 0, 1 and 3.
    assert _fold(12, emitted["cam.0"]) == 2
    videos = collector.fold_videos(emitted, exclude={"cam.0.pseudo"})
    held = collector._fitted(CFG, "cam", [v for f in (0, 1, 3) for v in videos[f]])
    state = StationaryState(held.window)
    n = collector.taken_at[("cam.0", 12)]
    for frame in collector.frames["cam.0"][n - held.window : n]:
        state.push(frame)
    assert clean[12] == pytest.approx(reduce_map(held.score_map(state)))
    assert clean[12] != pytest.approx(reduce_map(model.score_map(state)))  # not the model of every frame
