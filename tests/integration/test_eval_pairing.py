"""``zsad eval`` pairs a clip's DPC scores with the memory streams of the clip's *last* frame, as the run
does (the run scores a clip when its last frame arrives and reads the memory streams there), not with the
streams at the clip's first frame, where the evaluation puts the clip's score; and its appearance stream
holds an encoding for ``appearance.spacing_s`` of the run's clips at the footage's rate, as the run's does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.config import AppearanceConfig, ZsadConfig
from plugins.streams import APPEARANCE, STATIONARY
from tests.fixtures.tiny_data import write_ucsd_layout
from tests.fixtures.tiny_models import tiny_model_dict

torch = pytest.importorskip("torch")

import training.evaluate as ev  # noqa: E402
from engines.model import ZsadModel, save_checkpoint  # noqa: E402
from training.appearance_eval import AppearanceEvaluator  # noqa: E402
from training.evaluate import encoded_frames  # noqa: E402
from training.stationary_eval import StationaryEvaluator  # noqa: E402


def test_encoded_frames_hold_each_encoding_for_every_clips_of_the_runs_clips() -> None:
    # The run's clips start 8 frames apart, span 6 frames to their last, and are scored from frame 24 on.
    run = dict(span=6, clip_hop=8, first=24)
    targets = np.arange(24, 80, 8)  # the run's own scored clips
    every_clip = encoded_frames(targets, 100, every=1, **run)
    assert every_clip.tolist() == (targets + 6).tolist()
    # Every 2nd: the first scored clip encodes, the next keeps it, and so on.
    assert encoded_frames(targets, 100, every=2, **run).tolist() == [30, 30, 46, 46, 62, 62, 78]
    assert encoded_frames(targets, 100, every=3, **run).tolist() == [30, 30, 30, 54, 54, 54, 78]
    # The evaluation's clips 2 frames apart hold what the run holds at their time.
    dense = np.arange(24, 44, 2)
    assert encoded_frames(dense, 100, every=2, **run).tolist() == [30] * 8 + [46, 46]
    # Before the run's first scored clip (reflected history), the same count, never a clip before the
    # video's first ...
    early = np.arange(0, 24, 8)
    assert encoded_frames(early, 100, every=2, **run).tolist() == [6, 14, 14]
    assert encoded_frames(np.array([0]), 100, every=4, span=6, clip_hop=8, first=8).tolist() == [6]
    # ... nor after the video's last.
    assert encoded_frames(np.array([96]), 100, every=1, **run).tolist() == [99]
    with pytest.raises(ValueError, match="every"):
        encoded_frames(targets, 100, every=0, **run)


def _tiny_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fps: float | None = None, **sections: Any
) -> tuple[ZsadModel, dict[str, Any]]:
    """Evaluate an untrained tiny model on tiny UCSD-layout footage (at ``fps``, given in its manifest, else
    UCSD's 10) with the config ``sections``; return the model and what the evaluation fused: ``z`` (stream ->
    video -> per-frame z) and ``targets`` (video -> its scored clips' first frames)."""
    data = write_ucsd_layout(tmp_path / "ucsd", n_train=2, n_test=2, frames=120)
    if fps is not None:
        (data / "manifest.json").write_text(json.dumps({"fps": fps}))
    cfg = ZsadConfig.model_validate(
        {
            "model": tiny_model_dict(dpc={"pred_steps": 1, "hidden_size": 32}),
            "train": {"dataset": {"kind": "ucsd", "root": str(data)}},
            **sections,
        }
    )
    torch.manual_seed(0)
    model = ZsadModel(cfg.model)
    ckpt = save_checkpoint(model, tmp_path / "model.safetensors")
    seen: dict[str, Any] = {"targets": {}}
    fuse, score = ev.fusion_ablation, ev.score_video

    def keep(z: Any, *args: Any, **kwargs: Any) -> Any:
        seen["z"] = z
        return fuse(z, *args, **kwargs)

    def scored(model: Any, frames: np.ndarray, **kwargs: Any) -> Any:
        out = score(model, frames, **kwargs)
        if kwargs.get("reflect_history"):  # the test videos' scoring (calibration does not reflect)
            seen["targets"][kwargs["name"]] = out[0]
        return out

    monkeypatch.setattr(ev, "fusion_ablation", keep)
    monkeypatch.setattr(ev, "score_video", scored)
    ev.evaluate(cfg, ckpt, tmp_path / "eval")
    return model, seen


def _frame_index(self: Any, frames: np.ndarray, context: str, maps_out: Any = None) -> np.ndarray:
    """A memory stream whose score of each test frame is the frame's index: the z-scores show which frame
    the evaluation read."""
    return np.arange(len(frames), dtype=np.float64)


def _assert_reads(z: np.ndarray, targets: np.ndarray, read_at_target: np.ndarray, video: str) -> None:
    """``z`` is an increasing affine function of the frame index read for each target, spread over the
    frames between the targets: fit it, check the fit."""
    read = np.interp(np.arange(len(z)), targets, read_at_target.astype(np.float64))
    slope, intercept = np.polyfit(read, z, 1)
    assert slope > 0, video
    np.testing.assert_allclose(z, slope * read + intercept, atol=1e-9 * max(1.0, abs(intercept)))


def test_eval_pairs_the_stationary_stream_with_each_clips_last_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(StationaryEvaluator, "test_frame_scores", _frame_index)
    model, seen = _tiny_eval(tmp_path, monkeypatch, stationary={"enabled": True}, objects={"enabled": False})
    span = (model.clip_len - 1) * model.frame_stride
    assert span > 0  # the pairing would be invisible otherwise
    assert STATIONARY in seen["z"], "the tiny footage fitted no stationary model"
    for video, z in seen["z"][STATIONARY].items():
        targets = seen["targets"][video]
        _assert_reads(z, targets, np.minimum(targets + span, len(z) - 1), video)


def test_eval_holds_each_appearance_encoding_for_spacing_s_of_the_runs_clips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        AppearanceEvaluator,
        "test_frame_scores",
        lambda self, frames, context, maps_out=None: (_frame_index(self, frames, context), None),
    )
    model, seen = _tiny_eval(
        tmp_path,
        monkeypatch,
        # Footage at 25 fps (not the sampling default's 10) and the tiny model's clips 2 frames apart:
        # 0.24 s is every 3rd clip at 25 fps (1.2 clips, every one, at 10).
        fps=25.0,
        appearance={"enabled": True, "spacing_s": 0.24},
        stationary={"enabled": False},
        objects={"enabled": False},
    )
    pre = model.spec.preprocess
    assert AppearanceConfig(spacing_s=0.24).clips_per_encoding(25.0, pre.clip_hop) == 3
    span = (model.clip_len - 1) * model.frame_stride
    assert APPEARANCE in seen["z"], "the tiny footage fitted no appearance memory"
    first = model.context_clips * model.clip_span
    for video, z in seen["z"][APPEARANCE].items():
        targets = seen["targets"][video]
        # The run's scored clips that encode: its first and then every 3rd; the others hold the last
        # (the schedule itself is pinned by hand-worked cases above).
        read = encoded_frames(targets, len(z), span=span, clip_hop=pre.clip_hop, every=3, first=first)
        assert len(set(read[targets >= first].tolist())) < (targets >= first).sum() / 3 + 1, video
        _assert_reads(z, targets, read, video)
