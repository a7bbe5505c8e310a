"""``zsad eval`` with the objects stream on, on a tiny two-camera dataset: the camera whose footage shows a
moving square gets the stream (alone and in the fused product, with a reliability weight), the camera whose
footage shows nothing is left without it, logged, and the evaluation goes on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import ZsadConfig
from plugins.streams import OBJECTS
from tests.fixtures.tiny_data import write_ucsd_layout
from tests.fixtures.tiny_models import tiny_model_dict

torch = pytest.importorskip("torch")

from engines.model import ZsadModel, save_checkpoint  # noqa: E402
from training.evaluate import evaluate, fusion_variant  # noqa: E402

FRAMES = 80  # 40 frames the stream takes per video: enough blobs for a model per fold


def two_cameras(root: Path, masks: bool = False) -> Path:
    """The tiny UCSD layout with four training and two test videos; the second camera's training videos
    show no square (their frames rewritten as the noise alone)."""
    data = write_ucsd_layout(root, n_train=4, n_test=2, frames=FRAMES, masks=masks)
    for name in ("Train003", "Train004"):
        noise = np.random.default_rng(int(name[-1])).integers(
            40, 60, size=(FRAMES, 32, 48, 3), dtype=np.uint8
        )
        for i, frame in enumerate(noise):
            Image.fromarray(frame).save(data / "training" / "frames" / name / f"{i + 1:03d}.jpg", quality=95)
    manifest = json.loads((data / "manifest.json").read_text())
    cams = {"Train001": "busy", "Train002": "busy", "Train003": "empty", "Train004": "empty"}
    manifest["contexts"] = {**cams, "Test001": "busy", "Test002": "empty"}
    (data / "manifest.json").write_text(json.dumps(manifest))
    return data


def objects_world(tmp_path: Path, masks: bool = False) -> tuple[ZsadConfig, Path]:
    """The two-camera set with the objects stream on, and a seeded, untrained tiny model's checkpoint."""
    data = two_cameras(tmp_path / "ucsd", masks=masks)
    cfg = ZsadConfig.model_validate(
        {
            "model": tiny_model_dict(dpc={"pred_steps": 1, "hidden_size": 32}),
            "train": {"dataset": {"kind": "ucsd", "root": str(data)}},
            "objects": {"enabled": True},
        }
    )
    torch.manual_seed(0)
    return cfg, save_checkpoint(ZsadModel(cfg.model), tmp_path / "model.safetensors")


def test_eval_scores_the_objects_stream_where_a_camera_has_a_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg, ckpt = objects_world(tmp_path)
    with caplog.at_level(logging.WARNING):
        metrics = evaluate(cfg, ckpt, tmp_path / "eval")
    per_context = metrics["calibration_per_context"]
    assert OBJECTS in per_context["busy"]["streams"]
    assert 0 <= per_context["busy"]["streams"][OBJECTS]["weight"] <= 1  # weighed from held-out folds
    assert "held-out" in per_context["busy"]["streams"][OBJECTS]["reason"]
    assert OBJECTS not in per_context["empty"]["streams"]
    assert "context empty: no objects model" in caplog.text
    assert "no objects stream for context empty" in caplog.text
    assert OBJECTS in metrics["calibration"]["streams"]
    sm = " + gaussian smoothing (sigma=3)"
    alone = metrics["summary"][f"stream: {OBJECTS} (raw){sm}"]["micro_auc"]
    assert alone > 0.5  # the fast square in the busy camera's test video is what it sees
    assert metrics["primary"] == fusion_variant(metrics["calibration"]["rule"], True, True) + sm
    assert np.isfinite(metrics["summary"][metrics["primary"]]["micro_auc"])


def test_eval_localisation_holds_the_objects_maps_as_the_runs_heatmap_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run's heatmap holds the memory streams' maps beside the DPC streams' (pipeline.inference adds
    # them to each clip's maps); the evaluation's localisation must judge the same evidence.
    import training.evaluate as ev

    cfg, ckpt = objects_world(tmp_path, masks=True)
    seen: dict[str, object] = {}
    judge = ev.evaluation_localisation

    def keep(clips: object, *args: object, **kwargs: object) -> object:
        seen["clips"] = clips
        return judge(clips, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ev, "evaluation_localisation", keep)
    metrics = evaluate(cfg, ckpt, tmp_path / "eval")
    assert "error" not in metrics["localisation"]
    clips = seen["clips"]
    assert isinstance(clips, dict)
    _, busy_maps, _ = clips["Test001"]  # the camera with an objects model
    _, empty_maps, _ = clips["Test002"]  # the camera without one
    grid = busy_maps[0]["pixel"].shape
    assert all(OBJECTS in m and m[OBJECTS].shape == grid for m in busy_maps)
    assert not any(OBJECTS in m for m in empty_maps)
    # The square moves fast on the busy camera's test video: its clips' objects maps see it somewhere.
    assert max(float(m[OBJECTS].max()) for m in busy_maps) > min(float(m[OBJECTS].min()) for m in busy_maps)
