"""The frame-difference floor on the real UCSD Ped2 test split (skips without the data)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from training.baselines import frame_difference_scores
from training.datasets import make_dataset
from training.metrics import micro_auc, score_report

pytestmark = pytest.mark.data


def test_ped2_labels_align_and_floor_beats_chance(ped2_root: Path) -> None:
    t0 = time.monotonic()
    manifest = json.loads((ped2_root / "manifest.json").read_text())
    ds = make_dataset("ucsd", ped2_root, "test", (120, 180))
    assert ds.names == [f"Test{i:03d}" for i in range(1, 13)]
    assert ds.has_labels
    scores = {}
    for name in ds.names:
        frames = ds.frames(name)
        assert frames.shape[1:] == (120, 180, 3)
        assert len(frames) == len(ds.labels[name]) == manifest["counts"]["testing"][name]
        scores[name] = frame_difference_scores(frames)
    labels = ds.labels
    assert sum(len(v) for v in labels.values()) == manifest["test_frames"] == 2010
    assert int(sum(v.sum() for v in labels.values())) == manifest["abnormal_test_frames"] == 1648
    auc = micro_auc(scores, labels)
    assert auc > 0.75, f"frame-difference floor micro AUC {auc:.4f} on Ped2 at 120x180"
    report = score_report(scores, labels, fps=10.0)
    assert report["micro_auc"] == pytest.approx(auc)
    assert all(np.isfinite(s).all() for s in scores.values())
    assert time.monotonic() - t0 < 60.0
