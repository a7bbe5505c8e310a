"""Localisation metrics on tiny hand-made maps and masks: pixel AUC, peak hits, examples, the eval hook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.localisation import (
    LocalisationError,
    evaluation_localisation,
    frame_evidence,
    frame_hit,
    localisation_report,
    peak_hits,
    pixel_auc,
    save_examples,
)
from training.metrics import MetricError


def _world() -> tuple[np.ndarray, np.ndarray]:
    """Three frames of 4 x 6 cells on 40 x 60 pixels (10-pixel cells): an anomaly on cells (1, 4) and
    (2, 4) in frames 0 and 1, frame 2 normal; the evidence is 1 on the anomaly's cells, 0 elsewhere."""
    masks = np.zeros((3, 40, 60), bool)
    masks[0, 10:30, 40:50] = True
    masks[1, 10:30, 40:50] = True
    evidence = np.zeros((3, 4, 6))
    evidence[0, 1:3, 4] = 1.0
    evidence[1, 1:3, 4] = 1.0
    return evidence, masks


def test_a_perfect_map_scores_one_and_an_inverted_one_zero() -> None:
    evidence, masks = _world()
    # The perfect map, sharp: evidence only on the anomaly's pixels' own cells, so bilinear ramps stay
    # outside the mask at the cell edges.
    cells = np.zeros((3, 40, 60))
    cells[masks] = 1.0
    perfect = pixel_auc(cells, masks)
    assert perfect.auc == pytest.approx(1.0)
    assert (perfect.pixels, perfect.positives, perfect.stride) == (3 * 40 * 60, 2 * 200, 1)
    assert pixel_auc(-cells, masks).auc == pytest.approx(0.0)
    # On the coarse grid the ramps between cells blur the edges: still far above chance, below 1.
    coarse = pixel_auc(evidence, masks).auc
    assert 0.9 < coarse < 1.0
    assert pixel_auc(np.zeros_like(evidence), masks).auc == pytest.approx(0.5)  # ties count a half


def test_pixels_without_evidence_score_below_every_counted_pixel_and_subsampling_is_said() -> None:
    evidence, masks = _world()
    blind = evidence.copy()
    blind[2] = np.nan  # the normal frame was not scored at all: its pixels are never flagged
    assert pixel_auc(blind, masks).auc >= pixel_auc(evidence, masks).auc
    sub = pixel_auc(evidence, masks, max_pixels=3 * 20 * 30)
    assert sub.stride == 2
    assert sub.pixels == 3 * 20 * 30
    assert sub.auc == pytest.approx(pixel_auc(evidence, masks).auc, abs=0.05)
    with pytest.raises(MetricError):
        pixel_auc(evidence, np.zeros_like(masks))  # no anomalous pixel: undefined
    with pytest.raises(LocalisationError):
        pixel_auc(evidence[:2], masks)
    with pytest.raises(LocalisationError):
        pixel_auc(evidence, masks.astype(np.uint8))
    with pytest.raises(LocalisationError):
        pixel_auc(evidence[0], masks)


def test_peak_hits_count_the_box_the_cell_and_the_mass() -> None:
    evidence, masks = _world()
    hits = peak_hits(evidence, masks)
    assert (hits.frames, hits.located, hits.box_hits, hits.cell_hits) == (2, 2, 2, 2)
    assert hits.box_hit_rate == hits.cell_hit_rate == 1.0
    assert hits.half_mass > 0.9
    # The peak moved one cell left of the anomaly: its box misses, the mask grown by a cell catches it.
    moved = np.zeros((4, 6))
    moved[1:3, 3] = 1.0
    miss = frame_hit(moved, masks[0])
    assert (miss.located, miss.box_hit, miss.cell_hit, miss.half_mass) == (True, False, False, 0.0)
    assert miss.box == (30, 10, 40, 30)
    near = frame_hit(moved, masks[0], grow=10)
    assert near.box_hit
    assert near.half_mass > 0.9
    # A peak cell beside the anomaly inside a box that overlaps it: a box hit, not a cell hit.
    wide = np.zeros((4, 6))
    wide[1, 3] = 2.0
    wide[1, 4] = 1.5
    side = frame_hit(wide, masks[0])
    assert (side.box_hit, side.cell_hit) == (True, False)
    # No counted cell: a miss.
    none = frame_hit(np.full((4, 6), np.nan), masks[0])
    assert (none.located, none.box_hit, none.half_mass) == (False, False, 0.0)
    # Nothing above zero (every stream at or below its normal median): no place shown, a miss, where the
    # peak region, every cell, made the whole frame a box that always hit.
    for flat in (np.zeros((4, 6)), np.where(np.arange(24).reshape(4, 6) % 2, 0.0, np.nan)):
        nothing = frame_hit(flat, masks[0])
        assert (nothing.located, nothing.box_hit, nothing.cell_hit, nothing.box) == (
            False,
            False,
            False,
            None,
        )


def test_report_is_json_ready() -> None:
    evidence, masks = _world()
    report = localisation_report(evidence, masks)
    assert report["frames"] == 3
    assert report["abnormal_frames"] == 2
    assert report["peak_box_hit_rate"] == 1.0
    assert report["pixel_auc"]["stride"] == 1
    assert 0.9 < report["pixel_auc"]["auc"] < 1.0
    assert localisation_report(evidence, np.zeros_like(masks))["pixel_auc"] is None


def test_examples_show_frame_heatmap_box_and_mask_outline(tmp_path: Path) -> None:
    evidence, masks = _world()
    masks[1] = False
    masks[1, 14:26, 42:48] = True  # inside the peak box (x 40..50, y 10..30), so both show
    frames = np.full((3, 40, 60, 3), 90, np.uint8)
    (path,) = save_examples(frames, evidence, masks, [1], tmp_path / "figs", names=["walker"])
    assert path == tmp_path / "figs" / "walker.png"
    with Image.open(path) as img:
        assert img.size == (120, 40)
        pixels = np.asarray(img.convert("RGB"))
    np.testing.assert_array_equal(pixels[:, :60], frames[1])  # the plain frame on the left
    assert tuple(pixels[20, 60 + 42]) == (0, 255, 255)  # the mask's left edge, outlined in cyan
    assert tuple(pixels[10, 60 + 45]) == (255, 255, 255)  # the peak box's top edge, in white
    assert tuple(pixels[20, 60 + 40]) == (255, 255, 255)  # and its left edge
    assert np.any(pixels[20, 60 + 44] != 90)  # the heatmap's colour inside
    (default,) = save_examples(frames, evidence, masks, [0], tmp_path)
    assert default.name == "example_00000.png"
    with pytest.raises(LocalisationError):
        save_examples(frames, evidence, masks, [3], tmp_path)
    with pytest.raises(LocalisationError):
        save_examples(frames[..., 0], evidence, masks, [0], tmp_path)


def test_eval_hook_spreads_clip_maps_to_frames_and_reports(tmp_path: Path) -> None:
    _, masks = _world()
    hot = np.zeros((4, 6), np.float32)
    hot[1:3, 4] = 3.0
    cold = np.zeros((4, 6), np.float32)
    # Clips predict frames 0 and 2 of the video; frame 1 takes the nearest, frame 0's (ties: the earlier).
    targets = np.array([2, 0])
    maps = [{"motion": cold, "pixel": cold}, {"motion": hot, "pixel": hot}]
    weights = np.array([[0.5, 0.5], [0.5, 0.5]])
    stats = {"motion": (0.0, 1.0), "pixel": (0.0, 1.0)}
    per_frame = frame_evidence(targets, maps, weights, ["motion", "pixel"], stats, 3)
    assert per_frame.shape == (3, 4, 6)
    assert per_frame[0, 1, 4] == pytest.approx(3.0)  # 0.5 * 3 + 0.5 * 3
    assert per_frame[1, 1, 4] == pytest.approx(3.0)
    assert per_frame[2, 1, 4] == pytest.approx(0.0)
    # Under the max rule (weights as multipliers) a cell takes its strongest weighted stream.
    warm = {"motion": hot, "pixel": hot * 0.5}
    ones = np.ones((1, 2))
    (by_max,) = frame_evidence(np.array([0]), [warm], ones, ["motion", "pixel"], stats, 1, rule="max")
    (by_mean,) = frame_evidence(np.array([0]), [warm], ones / 2, ["motion", "pixel"], stats, 1)
    assert by_max[1, 4] == pytest.approx(3.0)
    assert by_mean[1, 4] == pytest.approx(2.25)
    frames = np.full((3, 40, 60, 3), 90, np.uint8)
    report = evaluation_localisation(
        {"v01": (targets, maps, weights)},
        ["motion", "pixel"],
        stats,
        lambda name: masks,
        frames_of=lambda name: frames,
        examples_dir=tmp_path,
        examples=2,
    )
    assert report["abnormal_frames"] == 2
    assert report["peak_box_hit_rate"] == 1.0
    assert [Path(p).name for p in report["examples"]] == ["v01_0000.png", "v01_0001.png"]
    with pytest.raises(LocalisationError):
        frame_evidence(np.array([0]), maps, weights, ["motion", "pixel"], stats, 3)


def test_each_video_is_z_scored_with_its_own_cameras_statistics() -> None:
    """Two videos of two contexts: one camera's normal motion is high everywhere (4), its anomaly a little
    above (4.5). With one pooled calibration its normal cells outrank the other video's anomaly; with its
    own (location 4), they do not. Each video must use its own, as its camera would."""
    _, masks = _world()
    anomaly = np.zeros((4, 6), np.float32)
    anomaly[1:3, 4] = 1.0
    quiet = (np.array([0, 1, 2]), [{"motion": 3.0 * anomaly}] * 3, np.ones((3, 1)))
    busy = (np.array([0, 1, 2]), [{"motion": 4.0 + 0.5 * anomaly}] * 3, np.ones((3, 1)))
    clips = {"quiet": quiet, "busy": busy}
    pooled = {"motion": (0.0, 1.0)}
    shared = evaluation_localisation(clips, ["motion"], pooled, lambda name: masks)
    own = evaluation_localisation(
        clips, ["motion"], pooled, lambda name: masks, stats_of={"busy": {"motion": (4.0, 1.0)}}
    )
    assert own["pixel_auc"]["auc"] > shared["pixel_auc"]["auc"] + 0.1


def test_eval_localises_a_video_whose_calibration_lacks_a_stream(tmp_path: Path) -> None:
    """A context whose objects model could not be fitted has no objects statistics: its videos' evidence
    leaves the stream out (zsad eval died there with a KeyError, after all the scoring)."""
    from types import SimpleNamespace

    from plugins.fusion import fit_calibration
    from training.evaluate import _localisation

    _, masks = _world()
    rng = np.random.default_rng(0)
    full = fit_calibration({"pixel": rng.normal(size=200), "objects": rng.normal(size=200)})
    lacks = fit_calibration({"pixel": rng.normal(size=200)})
    anomaly = np.zeros((4, 6), np.float32)
    anomaly[1:3, 4] = 5.0
    clip = (np.array([0, 1, 2]), [{"pixel": anomaly, "objects": 50.0 - anomaly}] * 3, np.ones((3, 0)))
    native = SimpleNamespace(masks=lambda name: masks, frames=None)
    report = _localisation(
        {"a": clip, "b": clip}, [], ["pixel", "objects"], {"a": full, "b": lacks}, native, tmp_path
    )
    assert "error" not in report
    only_b = _localisation({"b": clip}, [], ["pixel", "objects"], {"b": lacks}, native, tmp_path)
    assert only_b["peak_box_hit_rate"] == 1.0  # objects (hot everywhere but the anomaly) left out
