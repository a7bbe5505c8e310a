"""zsad calibrate's objects model (pipeline/cli/calibrate.py, ``_ObjectsFrames``) on clips of a scene drawn
here (tests/fixtures/objects_scenes.py): the frames the run's stream would take, a model per time fold and
one of every frame, held-out samples under the run's clip-map rule, footage left out of the fit (an altered
copy) still scored, and footage with too few objects leaving the camera without the stream."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from core.config import parse_config
from pipeline.cli.calibrate import FOLDS, _fold, _ObjectsFrames, _save_model, _Scored
from pipeline.memory_streams import OBJECTS_FILE, ObjectsClips
from plugins.objects import ObjectsModel, leaving_unjudged, model_path
from plugins.objects import fit_model as fit_objects_model
from plugins.zones import CellFilters
from tests.fixtures.objects_scenes import GRID, SIZE, BoxScene, scene_clips

CFG = parse_config('{"appearance": {"enabled": false}, "objects": {"enabled": true, "spacing_s": 0.2}}')


def _collect(footage: dict[str, list]) -> tuple[_ObjectsFrames, dict[str, int], list[_Scored], np.ndarray]:
    collector = _ObjectsFrames(0.2)
    emitted = {c: len(v) for c, v in footage.items()}
    scored = []
    for cam, cs in footage.items():
        for clip in cs:
            collector.add(clip)
            if clip.index >= 2:  # the DPC history fills in 2 clips
                scored.append(_Scored(cam, clip.index, {}, GRID))
    folds = np.array([_fold(s.index, emitted[s.camera]) for s in scored], np.int8)
    return collector, emitted, scored, folds


def test_the_models_and_held_out_samples_leave_excluded_footage_out_but_score_it() -> None:
    footage = {
        "cam.0": scene_clips("cam.0", 40, BoxScene(0)),
        "cam.0.pseudo": scene_clips("cam.0.pseudo", 40, BoxScene(0, vehicle_from=100)),
    }
    collector, emitted, scored, folds = _collect(footage)
    # Every frame of the clips is 0.2 s after the last one taken: 4 of each clip's 4, kept as luma.
    assert len(collector.frames["cam.0"]) == 160
    assert {f.shape for f in collector.frames["cam.0"]} == {footage["cam.0"][0].frames[0].shape[:2]}
    model = collector.fit(CFG, "cam", emitted, scored, folds, CellFilters(), exclude={"cam.0.pseudo"})
    assert model is not None
    assert (model.camera, model.grid, model.spacing_s) == ("cam", GRID, 0.2)
    assert model.n_frames == 160  # the clean footage only
    clean = {s.index: s.scores["objects"] for s in scored if s.camera == "cam.0"}
    assert sorted(clean) == list(range(2, 40))
    assert max(clean.values()) < 3.5
    # The held-out sample of a clip is its map under the run's rule, played through the model of the other
    # folds (which model scores which fold: the next test).
    by_fold = collector.fold_videos(emitted, exclude={"cam.0.pseudo"})
    assert [sum(len(v) for v in f) for f in by_fold] == [40] * FOLDS  # the clean footage in quarters
    for index in (15, 39):  # a middle fold's clip and the last fold's
        fold = _fold(index, emitted["cam.0"])
        held = collector._fitted(CFG, "cam", [v for f in range(FOLDS) if f != fold for v in by_fold[f]])
        mapper = ObjectsClips(held)
        rule = [mapper.clip_map(list(clip.frames)) for clip in footage["cam.0"][: index + 1]]
        assert clean[index] == pytest.approx(float(rule[index].max()))
    # Not the model of every frame (what the run uses), nor another fold's.
    whole = ObjectsClips(model)
    rule = [whole.clip_map(list(clip.frames)) for clip in footage["cam.0"]]
    assert [clean[i] for i in range(2, 40)] != pytest.approx([float(m.max()) for m in rule[2:]])
    # The vehicle, from frame 100 (clip 12) on, in the twin footage that never entered a model.
    pasted = [s.scores["objects"] for s in scored if s.camera == "cam.0.pseudo" and s.index >= 14]
    assert len(pasted) == 26
    assert np.median(pasted) > 2 * max(clean.values())


def test_each_folds_clips_are_scored_by_that_folds_held_out_model() -> None:
    footage = {"cam.0": scene_clips("cam.0", 40, BoxScene(0))}
    collector, emitted, scored, folds = _collect(footage)
    base = fit_objects_model(collector.videos(), GRID, spacing_s=0.2)
    # Models that tell apart which of them scored a clip: each takes the features' normal tails twice as
    # wide as the last, so the same blob's excess differs from model to model.
    held = [
        ObjectsModel(
            base.background,
            base.threshold,
            base.tails * np.array([1.0, 2.0**f]),
            GRID,
            spacing_s=0.2,
            k=base.k,
            floor=base.floor,
            min_area=base.min_area,
        )
        for f in range(FOLDS)
    ]
    collector._score(held, emitted, scored, folds, CellFilters())
    got = {s.index: s.scores["objects"] for s in scored}
    for f, model in enumerate(held):
        mapper = ObjectsClips(model)
        want = [mapper.clip_map(list(clip.frames)) for clip in footage["cam.0"]]
        mine = [i for i in got if _fold(i, emitted["cam.0"]) == f]
        assert mine, f"no clip in fold {f}"
        assert [got[i] for i in mine] == pytest.approx([float(want[i].max()) for i in mine])
        others = [i for i in got if _fold(i, emitted["cam.0"]) != f]
        assert [got[i] for i in others] != pytest.approx([float(want[i].max()) for i in others])


def test_footage_with_too_few_objects_gives_no_model_and_no_samples(caplog: pytest.LogCaptureFixture) -> None:
    empty = BoxScene(0)
    empty.walkers = []  # nobody walks past
    collector, emitted, scored, folds = _collect({"cam.0": scene_clips("cam.0", 12, empty)})
    caplog.set_level(logging.WARNING, logger="pipeline.cli.calibrate")
    assert collector.fit(CFG, "cam", emitted, scored, folds, CellFilters()) is None
    assert not any("objects" in s.scores for s in scored)
    assert (
        "camera cam: no objects model (folds of 12 + 12 + 12 + 12 frames 0.2 s apart: the normal footage "
        "shows 0 blob" in caplog.text
    )
    assert "it is calibrated without the objects stream" in caplog.text


class _WalkerThenJumpers(BoxScene):
    """Fold 0 of the footage (its first 10 clips, frames 0-79): one walker crossing at a steady pace, long
    tracks, each with a travel. Fold 1 (frames 80-159) starts with a short, faster walk (12 frames taken,
    9 travels). After them: a figure somewhere new every frame, which flow sees and no track follows for the
    travel's steps."""

    def __init__(self) -> None:
        super().__init__(0)
        self.walkers = []
        rng = np.random.default_rng(3)
        self._spots = [
            (int(rng.integers(0, SIZE[1] - 12)), int(rng.integers(0, SIZE[0] - 24))) for _ in range(320)
        ]
        self._figure = np.random.default_rng(4).integers(170, 255, (24, 12, 3)).astype(np.uint8)

    def frame(self, t: int) -> np.ndarray:
        out = super().frame(t)
        if t < 80:
            x, y = 10 + 2 * t, 50
        elif t < 104:
            x, y = 10 + 4 * (t - 80), 50
        else:
            x, y = self._spots[t]
        out[y : y + 24, x : x + 12] = self._figure
        return out


def test_a_feature_one_fold_leaves_unjudged_is_unjudged_by_every_model_of_the_camera(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Fold 0's held-out model sees the short walk's 9 travels alone: too few to judge. The other folds'
    # models and the whole footage's see the long walk's; the model the camera runs with must not judge what
    # the samples of fold 0 were scored without, nor may fold 1's samples be scored with it.
    collector, emitted, scored, folds = _collect({"cam.0": scene_clips("cam.0", 40, _WalkerThenJumpers())})
    videos = collector.fold_videos(emitted)
    held = [
        collector._fitted(CFG, "cam", [v for g in range(FOLDS) if g != f for v in videos[g]])
        for f in range(FOLDS)
    ]
    assert [m.unjudged for m in held] == [("travel",), (), (), ()]  # the footage does what the test needs
    assert collector._fitted(CFG, "cam", collector.videos()).unjudged == ()
    caplog.set_level(logging.WARNING, logger="plugins.objects")
    model = collector.fit(CFG, "cam", emitted, scored, folds, CellFilters())
    assert model is not None
    assert model.unjudged == ("travel",)
    assert np.isfinite(model.tails[:3]).all()
    # Every fold's samples were scored without the travel too: fold 1's (its faster walk has a travel), by
    # its model with the travel left out, which here scores them otherwise than the model as fitted.
    fold_1 = [s for s, f in zip(scored, folds, strict=True) if f == 1]
    clips = scene_clips("cam.0", 40, _WalkerThenJumpers())
    maps = {}
    for name, held_model in (("agreed", leaving_unjudged(held[1], ["travel"])), ("as fitted", held[1])):
        mapper = ObjectsClips(held_model)  # one state played through the footage in order, as calibrate does
        maps[name] = [float(mapper.clip_map(list(c.frames)).max()) for c in clips]
    agreed, as_fitted = maps["agreed"], maps["as fitted"]
    assert [s.scores["objects"] for s in fold_1] == pytest.approx([agreed[s.index] for s in fold_1])
    assert [s.scores["objects"] for s in fold_1] != pytest.approx([as_fitted[s.index] for s in fold_1])


def test_a_calibration_without_the_stream_removes_an_earlier_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calibration = tmp_path / "cam.json"
    stale = model_path(calibration)
    stale.write_bytes(b"an earlier calibration's model")
    caplog.set_level(logging.WARNING, logger="pipeline.cli.calibrate")
    _save_model("cam", OBJECTS_FILE, None, calibration)
    assert not stale.exists()
    assert (
        f"camera cam: removed {stale}, the objects model of an earlier calibration (this one has no objects "
        "stream)" in caplog.text
    )


def test_the_same_footage_calibrates_the_same_whichever_footage_arrives_first() -> None:
    """Which footage's clips reach the scheduler first varies from run to run; the models (a background is
    the median of evenly spaced frames of the footage in turn) and the held-out samples must not."""
    footage = {f"cam.{i}": scene_clips(f"cam.{i}", n, BoxScene(i)) for i, n in enumerate((12, 14, 10))}
    results, videos = [], []
    for order in (["cam.0", "cam.1", "cam.2"], ["cam.2", "cam.0", "cam.1"]):
        collector, emitted, scored, folds = _collect({c: footage[c] for c in order})
        videos.append((collector.videos(), collector.fold_videos(emitted)))
        model = collector.fit(CFG, "cam", emitted, scored, folds, CellFilters())
        assert model is not None
        held_out = {(s.camera, s.index): s.scores["objects"] for s in scored}
        results.append((model, held_out))
    # Each model is fitted on the footage in name order, whatever the order it arrived in.
    (whole, by_fold), (whole_2, by_fold_2) = videos
    assert [len(v) for v in whole] == [48, 56, 40]
    for a, b in zip([whole, *by_fold], [whole_2, *by_fold_2], strict=True):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    (first, first_scores), (second, second_scores) = results
    np.testing.assert_array_equal(first.background, second.background)
    np.testing.assert_array_equal(first.threshold, second.threshold)
    np.testing.assert_array_equal(first.tails, second.tails)
    assert first_scores == second_scores
