"""``zsad eval`` pairs a clip's DPC scores with the stationary stream of the clip's *last* frame, as the run
does (the run scores a clip when its last frame arrives and reads the memory streams there), not with the
stream at the clip's first frame, where the evaluation puts the clip's score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import ZsadConfig
from plugins.streams import STATIONARY
from tests.fixtures.tiny_data import write_ucsd_layout
from tests.fixtures.tiny_models import tiny_model_dict

torch = pytest.importorskip("torch")

import training.evaluate as ev  # noqa: E402
from engines.model import ZsadModel, save_checkpoint  # noqa: E402
from training.evaluate import at_last_frames  # noqa: E402
from training.stationary_eval import StationaryEvaluator  # noqa: E402


def test_at_last_frames_reads_each_clips_last_frame() -> None:
    values = np.arange(6, dtype=np.float64) * 10
    assert at_last_frames(values, 2).tolist() == [20, 30, 40, 50, 50, 50]
    assert at_last_frames(values, 0).tolist() == values.tolist()
    assert at_last_frames(np.zeros(0), 3).shape == (0,)
    with pytest.raises(ValueError, match="span"):
        at_last_frames(values, -1)


def test_eval_pairs_the_stationary_stream_with_each_clips_last_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_ucsd_layout(tmp_path / "ucsd", n_train=2, n_test=2, frames=120)
    cfg = ZsadConfig.model_validate(
        {
            "model": tiny_model_dict(dpc={"pred_steps": 1, "hidden_size": 32}),
            "train": {"dataset": {"kind": "ucsd", "root": str(data)}},
            "stationary": {"enabled": True},
            "objects": {"enabled": False},
        }
    )
    torch.manual_seed(0)
    model = ZsadModel(cfg.model)
    span = (model.clip_len - 1) * model.frame_stride
    assert span > 0  # the pairing would be invisible otherwise
    ckpt = save_checkpoint(model, tmp_path / "model.safetensors")

    # Each test frame's stationary score is its own index: the z-scores show which frame the evaluation read.
    def frame_index(
        self: StationaryEvaluator, frames: np.ndarray, context: str, maps_out: list[np.ndarray] | None = None
    ) -> np.ndarray:
        return np.arange(len(frames), dtype=np.float64)

    monkeypatch.setattr(StationaryEvaluator, "test_frame_scores", frame_index)
    seen: dict[str, Any] = {}
    fuse = ev.fusion_ablation

    def keep(z: Any, *args: Any, **kwargs: Any) -> Any:
        seen["z"] = z
        return fuse(z, *args, **kwargs)

    monkeypatch.setattr(ev, "fusion_ablation", keep)
    ev.evaluate(cfg, ckpt, tmp_path / "eval")
    assert STATIONARY in seen["z"], "the tiny footage fitted no stationary model"
    for video, z in seen["z"][STATIONARY].items():
        n = len(z)
        read = np.minimum(np.arange(n) + span, n - 1).astype(np.float64)
        # z is an increasing affine function of the frame index the evaluation read: fit it, check the fit.
        slope, intercept = np.polyfit(read, z, 1)
        assert slope > 0, video
        np.testing.assert_allclose(z, slope * read + intercept, atol=1e-9 * max(1.0, abs(intercept)))
