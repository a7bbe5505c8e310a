"""``zsad eval``'s localisation block on a tiny masked dataset: the evidence an alert would show (the
calibration's rule, reliability times gate weights) of a seeded, untrained model against the fast square's
pixel masks (the motion stream finds it without training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import ZsadConfig
from tests.fixtures.tiny_data import write_ucsd_layout
from tests.fixtures.tiny_models import tiny_model_dict

torch = pytest.importorskip("torch")

from engines.model import ZsadModel, save_checkpoint  # noqa: E402
from training.evaluate import evaluate  # noqa: E402


def test_eval_reports_localisation_when_the_test_videos_have_masks(tmp_path: Path) -> None:
    data = write_ucsd_layout(tmp_path / "ucsd", n_train=2, n_test=2, frames=40, masks=True)
    cfg = ZsadConfig.model_validate(
        {
            "model": tiny_model_dict(dpc={"pred_steps": 1, "hidden_size": 32}),
            "train": {"dataset": {"kind": "ucsd", "root": str(data)}},
        }
    )
    torch.manual_seed(0)
    ckpt = save_checkpoint(ZsadModel(cfg.model), tmp_path / "model.safetensors")
    out = tmp_path / "eval"
    metrics = evaluate(cfg, ckpt, out)
    loc = metrics["localisation"]
    assert loc["rule"] == metrics["calibration"]["rule"]
    assert loc["frames"] == 80
    assert loc["abnormal_frames"] == 40  # the second half of each test video
    assert loc["pixel_auc"]["stride"] == 1
    assert loc["pixel_auc"]["positives"] == 40 * 64  # an 8 x 8 square per abnormal frame
    # The fast square is what moves most: the evidence lands on it.
    assert loc["pixel_auc"]["auc"] > 0.9
    assert loc["peak_box_hit_rate"] > 0.8
    assert len(loc["examples"]) == 6
    assert all(Path(p).is_file() for p in loc["examples"])
    assert json.loads((out / "metrics.json").read_text())["localisation"] == loc
