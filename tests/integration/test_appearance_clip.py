"""``appearance.encoder: clip``: the appearance stream's encoder from the image tower of a CLIP model the user
has. A tiny, seeded, random ``CLIPModel`` saved with ``save_pretrained`` stands in for real CLIP weights (none
can be downloaded here): the encoder must give the tower's own patch tokens, whatever its patch size, and
build into an engine like MobileNetV2's (ONNX parity, manifest, load_engines, the torch reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel

from core.config import ConfigError, ZsadConfig, parse_config
from engines.appearance import ClipAppearanceEncoder, FrameSizeError, load_encoder
from engines.backends import load_backend
from engines.backends.base import BackendError
from engines.build import BuildOptions, build_from_config
from engines.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    WEIGHTS_ENV,
    EncoderWeightsError,
    EncoderWeightsMissing,
    encoder_weights_sha256,
    find_clip_weights,
    find_encoder_weights,
)
from engines.export import random_feeds
from engines.manifest import Expectation, check_manifest, load_manifest
from pipeline.inference import EngineError, load_engines
from plugins.appearance import appearance_map, fit_memory
from tests.fixtures.tiny_models import tiny_model, tiny_model_dict
from tests.integration.test_export import TENSORRT10_OPS


def _save_clip(folder: Path, *, width: int = 128, patch: int = 32, image: int = 64, seed: int = 0) -> Path:
    """A random CLIP (text and image towers) in a Hugging Face folder (config.json, model.safetensors)."""
    text = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    }
    vision = {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": image,
        "patch_size": patch,
    }
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def encoder(clip_folder: Path) -> ClipAppearanceEncoder:
    enc = load_encoder(clip_folder / "model.safetensors", "sha", "clip")
    assert isinstance(enc, ClipAppearanceEncoder)
    return enc


def _reference(
    folder: Path, frames: torch.Tensor, projection: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Hugging Face's own forward on the frames resized to ``size``, its position embeddings interpolated."""
    tower = CLIPModel.from_pretrained(
        str(folder), local_files_only=True, attn_implementation="eager"
    ).vision_model
    x = torch.nn.functional.interpolate(frames, size=size, mode="bilinear")
    with torch.no_grad():
        hidden = tower(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        tokens = tower.post_layernorm(hidden[:, 1:]) @ projection
    gh, gw = size[0] // 32, size[1] // 32
    return tokens.transpose(1, 2).reshape(frames.shape[0], -1, gh, gw)


def test_features_are_the_towers_patch_tokens_one_per_16_pixel_cell(
    encoder: ClipAppearanceEncoder, clip_folder: Path
) -> None:
    """Patch 32: 32x48 frames become 64x96 for the tower (2x3 tokens), one per 16x16 cell of the frame."""
    frames = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = encoder(frames)
    assert got.shape == (2, 128, 2, 3)
    want = _reference(clip_folder, frames, encoder.projection, (64, 96))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # At the tower's own grid (2x2 here) the positions are the pretrained table itself.
    square = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(square),
            _reference(clip_folder, square, encoder.projection, (64, 64)),
            rtol=1e-4,
            atol=1e-4,
        )


def test_the_projection_is_fixed_orthonormal_and_the_encoder_frozen(clip_folder: Path) -> None:
    a = load_encoder(clip_folder, "x", "clip")
    b = load_encoder(clip_folder / "model.safetensors", "x", "clip")
    assert isinstance(a, ClipAppearanceEncoder)
    assert isinstance(b, ClipAppearanceEncoder)
    torch.testing.assert_close(a.projection, b.projection, rtol=0, atol=0)
    assert a.projection.shape == (128, 128)
    torch.testing.assert_close(a.projection.T @ a.projection, torch.eye(128), rtol=0, atol=1e-5)
    assert not any(p.requires_grad for p in a.parameters())
    assert not a.train().training
    with pytest.raises(FrameSizeError, match="multiples of 16, got 30x48"):
        a(torch.zeros(1, 3, 30, 48))


def test_a_folder_of_the_image_tower_alone_loads_the_same(clip_folder: Path, tmp_path: Path) -> None:
    """A CLIPVisionModel folder (the image tower saved alone) gives the same features as the full model's."""
    full = CLIPModel.from_pretrained(str(clip_folder), local_files_only=True)
    vision_only = CLIPVisionModel(full.config.vision_config)
    vision_only.load_state_dict(full.vision_model.state_dict())
    vision_only.save_pretrained(tmp_path / "tower")
    a = load_encoder(clip_folder, "", "clip")
    b = load_encoder(tmp_path / "tower", "", "clip")
    frames = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(a(frames), b(frames), rtol=0, atol=0)


def test_the_weights_identity_covers_the_config_and_a_half_precision_folder_loads(tmp_path: Path) -> None:
    """The config changes the features as much as the weights do, so its edit must change the identity that
    manifests and memories are checked against; a folder saved in float16 still takes float32 frames."""
    folder = _save_clip(tmp_path / "clip")
    weights = folder / "model.safetensors"
    before = encoder_weights_sha256("clip", weights)
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"layer_norm_eps": 1e-05', '"layer_norm_eps": 0.001'))
    assert encoder_weights_sha256("clip", weights) != before
    half = tmp_path / "half"
    CLIPModel.from_pretrained(str(folder), local_files_only=True).half().save_pretrained(half)
    encoder = load_encoder(half, "", "clip")
    with torch.no_grad():
        assert encoder(torch.zeros(1, 3, 32, 48)).dtype == torch.float32


def test_a_backbone_patch_finer_than_16_is_refused_with_clip() -> None:
    with pytest.raises(ConfigError, match=r"appearance\.encoder clip gives one feature per 16x16 cell"):
        parse_config(
            "model: {backbone: {image_height: 64, image_width: 96, patch_size: 8}}\n"
            + "appearance: {encoder: clip}\n"
        )


def test_what_is_not_a_usable_clip_is_refused(tmp_path: Path) -> None:
    narrow = _save_clip(tmp_path / "narrow", width=64)
    with pytest.raises(EncoderWeightsError, match="64 wide; the appearance stream needs at least 128"):
        load_encoder(narrow, "", "clip")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(EncoderWeightsError, match="model_type 'bert' is not a CLIP model"):
        load_encoder(other, "", "clip")


def test_the_weights_are_looked_for_in_order_and_the_misses_say_where(
    clip_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    weights = clip_folder / "model.safetensors"
    assert find_clip_weights(None, str(clip_folder)) == weights  # model.semantic.clip_text_model, last
    assert find_encoder_weights("clip", str(weights)) == weights  # the file itself also names the folder
    monkeypatch.setenv(WEIGHTS_ENV, str(clip_folder))
    assert (
        find_clip_weights(None, str(tmp_path / "ignored")) == weights
    )  # the variable before the semantic one
    with pytest.raises(
        EncoderWeightsMissing, match=r"appearance\.weights names .*absent, which is not a local"
    ):
        find_clip_weights(str(tmp_path / "absent"), str(clip_folder))
    monkeypatch.delenv(WEIGHTS_ENV)
    with pytest.raises(EncoderWeightsMissing) as info:
        find_clip_weights(None, None)
    assert "model.semantic.clip_text_model" in str(info.value)
    assert "appearance.enabled: false" in str(info.value)


def test_the_config_takes_clip_and_refuses_other_encoders() -> None:
    assert parse_config("appearance: {encoder: clip}\n").appearance.encoder == "clip"
    with pytest.raises(ConfigError, match=r"appearance\.encoder"):
        parse_config("appearance: {encoder: resnet18}\n")


def test_onnx_export_matches_torch_with_ops_tensorrt_parses(
    encoder: ClipAppearanceEncoder, tmp_path: Path
) -> None:
    from engines.export import check_parity, export_onnx
    from engines.manifest import appearance_io

    inputs, outputs = appearance_io("clip", 32, 48)
    assert outputs[0].shape == (-1, 128, 2, 3)
    path = export_onnx(encoder, inputs, outputs, tmp_path / "appearance.onnx")
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def ort(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"features": session.run(["features"], dict(feeds))[0]}

    def reference(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {"features": encoder(torch.from_numpy(feeds["frames"])).numpy()}

    errors = check_parity(reference, ort, inputs, outputs, batch_sizes=(1, 3), tolerance=1e-4, label="clip")
    assert errors["features"] <= 1e-4
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops <= TENSORRT10_OPS, sorted(ops - TENSORRT10_OPS)


def test_the_engine_builds_checks_and_runs_like_mobilenets(clip_folder: Path, tmp_path: Path) -> None:
    from engines.model import ZsadModel, save_checkpoint

    torch.manual_seed(0)
    patch16 = {"patch_size": 16}  # CLIP's one token per 16x16 cell is then the DPC maps' grid
    checkpoint = save_checkpoint(
        ZsadModel(tiny_model(backbone=patch16)).eval(), tmp_path / "tiny.safetensors"
    )
    cfg = ZsadConfig.model_validate(
        {
            "model": tiny_model_dict(backbone=patch16),
            "engines": {"dir": str(tmp_path / "engines"), "checkpoint": str(checkpoint), "threads": 1},
            "appearance": {"encoder": "clip", "weights": str(clip_folder)},
        }
    )
    report = build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))
    statuses = {(s.component, s.step): s.status for s in report.steps}
    assert statuses[("appearance", "parity torch/onnxruntime")] == "built"
    m = load_manifest(tmp_path / "engines" / "appearance.manifest.json")
    assert [(t.name, t.shape) for t in m.outputs] == [("features", (-1, 128, 2, 3))]
    assert (m.preprocessing.mean, m.preprocessing.std) == (CLIP_MEAN, CLIP_STD)
    assert {k: v for k, v in m.options.items() if k != "weights_stat"} == {
        "encoder": "clip",
        "input_layout": "NCHW",
    }
    assert [row[0] for row in m.options["weights_stat"]] == ["model.safetensors", "config.json"]
    assert m.weights_sha256 == encoder_weights_sha256("clip", clip_folder / "model.safetensors")
    check_manifest(
        m,
        Expectation(
            model_spec=tiny_model(backbone=patch16), appearance_encoder="clip", backend="onnxruntime"
        ),
    )
    engines = load_engines(cfg)
    try:
        assert engines.appearance is not None
        assert engines.appearance_grid == (2, 3)
        assert engines.appearance_mean == CLIP_MEAN
        feeds = random_feeds(engines.appearance.manifest.inputs, 2, np.random.default_rng(0))
        got = engines.appearance(feeds)["features"]
        with load_backend(tmp_path / "engines" / "appearance.manifest.json", "torch") as reference:
            want = reference(feeds)["features"]  # the tower loaded again from the folder the manifest names
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        # The run's path: a memory fitted on the engine's features scores a frame onto the DPC maps' grid.
        dpc_grid = tuple(engines.dpc.manifest.outputs[0].shape[-2:])
        assert dpc_grid == (2, 3)
        frames = random_feeds(engines.appearance.manifest.inputs, 40, np.random.default_rng(1))
        memory = fit_memory(
            engines.appearance(frames)["features"], encoder="clip", weights_sha256=m.weights_sha256
        )
        error_map = appearance_map(memory, got[0], dpc_grid)
        assert error_map.shape == dpc_grid
        assert np.isfinite(error_map).all()
    finally:
        engines.close()
    (tmp_path / "engines" / "appearance.manifest.json").unlink()
    where = r"a local CLIP folder in appearance\.weights, \$ZSAD_APPEARANCE_WEIGHTS or model\.semantic"
    with pytest.raises(EngineError, match=where):
        load_engines(cfg)


def test_the_torch_reference_finds_a_clip_folder_moved_beside_the_manifest(tmp_path: Path) -> None:
    """Engines copied to another machine with the CLIP folder beside them: the reference loads the folder of
    the recorded name next to the manifest (its model.safetensors and config.json together)."""
    from engines.model import ZsadModel, save_checkpoint

    folder = _save_clip(tmp_path / "my-clip", seed=3)
    torch.manual_seed(0)
    patch16 = {"patch_size": 16}
    checkpoint = save_checkpoint(
        ZsadModel(tiny_model(backbone=patch16)).eval(), tmp_path / "tiny.safetensors"
    )
    engines = tmp_path / "engines"
    cfg = ZsadConfig.model_validate(
        {
            "model": tiny_model_dict(backbone=patch16),
            "engines": {"dir": str(engines), "checkpoint": str(checkpoint), "threads": 1},
            "appearance": {"encoder": "clip", "weights": str(folder)},
        }
    )
    build_from_config(cfg, options=BuildOptions(backend="onnxruntime"))
    folder.rename(engines / "my-clip")  # the recorded folder is gone; one of its name is beside the manifest
    manifest = engines / "appearance.manifest.json"
    feeds = random_feeds(load_manifest(manifest).inputs, 2, np.random.default_rng(0))
    with load_backend(manifest, "onnxruntime") as ort, load_backend(manifest, "torch") as reference:
        np.testing.assert_allclose(ort(feeds)["features"], reference(feeds)["features"], rtol=1e-4, atol=1e-4)
    (engines / "my-clip").rename(tmp_path / "elsewhere")
    with pytest.raises(BackendError, match=r"also looked for .*my-clip/model\.safetensors"):
        load_backend(manifest, "torch")
