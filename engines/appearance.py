"""The appearance encoder: a frozen ImageNet MobileNetV2 trunk whose stride-8 features feed the appearance
stream (a per-camera normal memory, fitted by ``zsad calibrate``). It is its own engine, ``appearance``.

Our own implementation of MobileNetV2's ``features`` (Sandler et al., "MobileNetV2: Inverted Residuals and
Linear Bottlenecks", CVPR 2018), cut after block 13. Module and parameter names follow torchvision's
``mobilenet_v2`` state dict (``features.0.0.weight``, ``features.0.1.running_mean``, ``features.N.conv...``),
so torchvision's ImageNet checkpoint ``mobilenet_v2-b0353104.pth`` loads with every key we use checked by
name and shape. torchvision itself is not a dependency (its wheels for torch 2.13 are not installable here).

Layouts:

* input ``frames``: ``(N, 3, H, W)`` float32 RGB, ``(x / 255 - mean) / std`` with ImageNet's mean
  ``(0.485, 0.456, 0.406)`` and std ``(0.229, 0.224, 0.225)``; ``H`` and ``W`` multiples of 16;
* output ``features``: ``(N, 128, H / 8, W / 8)`` float32: channels 0..31 are block 6's output (stride 8),
  channels 32..127 block 13's (stride 16), upsampled bilinearly (``align_corners=False``) to the stride-8
  grid.

With ``appearance.encoder: clip`` the encoder is instead the image tower of a CLIP model the user has
(:class:`ClipAppearanceEncoder`, loaded from a local Hugging Face folder by :func:`load_encoder`):

* input ``frames``: ``(N, 3, H, W)`` float32 RGB, ``(x / 255 - mean) / std`` with CLIP's mean and std;
  ``H`` and ``W`` multiples of 16;
* output ``features``: ``(N, 128, H / 16, W / 16)`` float32: the last layer's patch tokens after CLIP's
  post-layernorm, times a fixed orthonormal ``(D, 128)`` projection. One token per 16x16 cell of the frame:
  the frame is resized bilinearly to ``(H / 16 * P, W / 16 * P)`` for a model of patch size ``P`` (no resize
  when ``P`` is 16), and the model's position embeddings are interpolated bicubically to that grid, as
  Hugging Face's ``interpolate_pos_encoding`` does;
* with ``embedding=True`` (a full ``CLIPModel`` folder: the semantic stream), a second output ``embedding``:
  ``(N, E)`` float32, unit L2 norm: the class token after the post-layernorm through ``visual_projection``,
  what ``CLIPModel.get_image_features`` gives on the same resized frame, normalised.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from engines.encoders import (
    CLIP_WEIGHTS_FILE,
    ENCODERS,
    MOBILENET_V2_SHA256,
    EncoderWeightsError,
    EncoderWeightsMissing,
    clip_folder,
    find_mobilenet_weights,
    is_clip_folder,
)

log = logging.getLogger(__name__)

__all__ = [
    "BLOCKS",
    "AppearanceEncoder",
    "ClipAppearanceEncoder",
    "EncoderWeightsError",
    "EncoderWeightsMissing",
    "FrameSizeError",
    "find_mobilenet_weights",
    "frame_size",
    "load_encoder",
    "load_state",
    "mobilenet_v2_blocks",
]

#: MobileNetV2's inverted-residual stages as (expansion t, output channels c, repeats n, first stride s),
#: the paper's Table 2, up to the stage that ends in block 13; the stem before them is a stride-2 3x3 conv
#: to 32 channels (block 0).
BLOCKS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
)
_STEM_CHANNELS = 32
_MOBILENET = ENCODERS["mobilenet_v2"]
# The checkpoint's keys we do not use: the blocks after 13, the last 1x1 conv and the classifier.
_UNUSED_PREFIXES = (*(f"features.{i}." for i in range(14, 19)), "classifier.")


class FrameSizeError(ValueError):
    """Frames whose shape the encoder cannot take (not ``(N, 3, H, W)``, or sides not multiples of 16)."""


def frame_size(frames: torch.Tensor, multiple: int) -> tuple[int, int]:
    """``(H, W)`` of ``(N, 3, H, W)`` frames whose sides are multiples of ``multiple``.

    Raises:
        FrameSizeError: another shape, or a side that is not such a multiple.
    """
    if frames.dim() != 4 or frames.shape[1] != 3:
        raise FrameSizeError(f"frames must be (N, 3, H, W), got {tuple(frames.shape)}")
    height, width = int(frames.shape[2]), int(frames.shape[3])
    if height % multiple or width % multiple:
        raise FrameSizeError(f"frame height and width must be multiples of {multiple}, got {height}x{width}")
    return height, width


class _ConvBNReLU6(nn.Sequential):
    """Conv (no bias), BatchNorm, ReLU6: children ``0``, ``1``, ``2`` as torchvision names them."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=False),
        )


class _InvertedResidual(nn.Module):
    """Expand (1x1, skipped when t == 1), depthwise 3x3 with the stride, linear 1x1 projection; the input is
    added back when the block keeps both resolution and width. All under ``conv``, as in the checkpoint."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        wide = cin * expansion
        layers: list[nn.Module] = [] if expansion == 1 else [_ConvBNReLU6(cin, wide, 1)]
        layers += [
            _ConvBNReLU6(wide, wide, 3, stride, groups=wide),
            nn.Conv2d(wide, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.conv(x)
        return x + y if self.residual else y


def mobilenet_v2_blocks() -> list[nn.Module]:
    """MobileNetV2's ``features`` blocks 0..13: the stem, then the inverted residuals of :data:`BLOCKS`."""
    blocks: list[nn.Module] = [_ConvBNReLU6(3, _STEM_CHANNELS, 3, stride=2)]
    cin = _STEM_CHANNELS
    for expansion, cout, repeats, first_stride in BLOCKS:
        for i in range(repeats):
            blocks.append(_InvertedResidual(cin, cout, first_stride if i == 0 else 1, expansion))
            cin = cout
    return blocks


class AppearanceEncoder(nn.Module):
    """The frozen appearance encoder: ``frames`` ``(N, 3, H, W)`` -> ``features`` ``(N, 128, H/8, W/8)``.

    ``frames`` are RGB, normalised with ImageNet's mean and std (``(x / 255 - mean) / std``); ``H`` and ``W``
    must be multiples of 16. ``features`` are float32: 32 channels of block 6 (stride 8), then 96 of block 13
    (stride 16) upsampled bilinearly (``align_corners=False``) to the stride-8 grid.

    The module is always in eval mode (BatchNorm uses its running statistics) and its parameters never take
    gradients: ``train()`` is a no-op. A fresh instance has random weights; :meth:`from_weights` loads
    torchvision's checkpoint.
    """

    def __init__(self, encoder: str = "mobilenet_v2") -> None:
        super().__init__()
        if encoder != _MOBILENET.name:
            raise ValueError(f"unknown appearance encoder {encoder!r}; expected {_MOBILENET.name!r}")
        self.info = _MOBILENET
        # Named "features" so that our state dict's keys are the checkpoint's.
        self.features = nn.Sequential(*mobilenet_v2_blocks())
        fine, coarse = (int(name.rsplit(".", 1)[1]) for name in self.info.taps)
        if coarse != len(self.features) - 1:
            raise ValueError(
                f"{self.info.name}: the deepest tap must be the last block, got {self.info.taps}"
            )
        self._fine_tap = fine
        self.weights_sha256 = ""
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> AppearanceEncoder:
        """Frozen: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    def load_pretrained(self, state: Mapping[str, torch.Tensor], source: str = "weights") -> None:
        """Load a torchvision MobileNetV2 state dict. Every key of :meth:`state_dict` must be there with its
        shape; keys of the blocks after 13 and of the classifier are ignored; any other key is refused.

        Raises:
            EncoderWeightsError: naming ``source`` and the first keys that are missing, misshapen or unknown.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        misshapen = [
            f"{k} {tuple(state[k].shape)} (needs {tuple(v.shape)})"
            for k, v in own.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ]
        unknown = [k for k in state if k not in own and not k.startswith(_UNUSED_PREFIXES)]
        problems = [
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
            for what, keys in (("missing", missing), ("wrong shape", misshapen), ("unknown", unknown))
            if keys
        ]
        if problems:
            raise EncoderWeightsError(
                f"{source} is not a torchvision MobileNetV2 state dict: {'; '.join(problems)}"
            )
        self.load_state_dict({k: state[k] for k in own}, strict=True)

    @classmethod
    def from_weights(
        cls, path: str | Path, sha256: str = "", encoder: str = "mobilenet_v2"
    ) -> AppearanceEncoder:
        """An encoder with the weights of ``path`` (see :func:`load_state`); ``sha256``, when given, is
        recorded as :attr:`weights_sha256` (the caller hashed the file)."""
        model = cls(encoder)
        model.load_pretrained(load_state(path), source=str(path))
        model.weights_sha256 = sha256
        if sha256 and sha256 != MOBILENET_V2_SHA256:
            log.warning(
                "appearance weights %s (sha256 %s) are not torchvision's mobilenet_v2-b0353104.pth; "
                "they fit its layout and are used as given",
                path,
                sha256[:12],
            )
        return model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        height, width = frame_size(frames, self.info.frame_multiple)
        x = frames
        fine = x
        for i, block in enumerate(self.features):
            x = block(x)
            if i == self._fine_tap:
                fine = x
        grid = self.info.grid(height, width)
        up = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        return torch.cat([fine, up], dim=1)


_CLIP = ENCODERS["clip"]
#: Seeds the CLIP encoder's fixed projection: the same channels on every machine and every build.
CLIP_PROJECTION_SEED = 0


class ClipAppearanceEncoder(nn.Module):
    """The frozen appearance encoder from a CLIP image tower: ``frames`` ``(N, 3, H, W)`` -> ``features``
    ``(N, 128, H/16, W/16)`` (the module docstring gives both layouts).

    ``vision`` is a Hugging Face ``CLIPVisionTransformer`` (``CLIPModel.vision_model``: ``embeddings``,
    ``pre_layrnorm``, ``encoder.layers``, ``post_layernorm``). Its parts are kept and called one by one, not
    through the model's ``forward``, so that the exported graph holds only the tensor maths. Always in eval
    mode, never takes gradients.
    """

    projection: torch.Tensor

    def __init__(
        self, vision: Any, weights_sha256: str = "", visual_projection: nn.Linear | None = None
    ) -> None:
        super().__init__()
        self.info = _CLIP
        emb = vision.embeddings
        self.patch_size = int(emb.patch_size)
        self.image_size = int(emb.image_size)
        width = int(emb.embed_dim)
        # The tower's parts, typed, in the order they run (the pretrained weights stay in them).
        self.patch_embedding: nn.Conv2d = emb.patch_embedding
        self.class_embedding: nn.Parameter = emb.class_embedding
        self.position_embedding: nn.Embedding = emb.position_embedding
        self.pre_layrnorm: nn.LayerNorm = vision.pre_layrnorm
        self.layers: nn.ModuleList = vision.encoder.layers
        self._legacy_layers = bool(len(self.layers)) and takes_causal_mask(self.layers[0])
        self.post_layernorm: nn.LayerNorm = vision.post_layernorm
        # With it, forward also gives the image embedding (the semantic stream's); without, features alone.
        self.visual_projection = visual_projection
        self.embed_dim = int(visual_projection.out_features) if visual_projection is not None else 0
        if width < self.info.channels:
            raise EncoderWeightsError(
                f"CLIP's image tower is {width} wide; the appearance stream needs at least "
                f"{self.info.channels} channels"
            )
        gen = torch.Generator().manual_seed(CLIP_PROJECTION_SEED)
        q, _ = torch.linalg.qr(torch.randn(width, self.info.channels, generator=gen, dtype=torch.float64))
        self.register_buffer("projection", q.to(torch.float32), persistent=False)  # (D, 128), orthonormal
        self.weights_sha256 = weights_sha256
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> ClipAppearanceEncoder:
        """Frozen: stays in eval mode whatever ``mode`` is."""
        return super().train(False)

    @classmethod
    def from_folder(
        cls, folder: str | Path, weights_sha256: str = "", *, embedding: bool = False
    ) -> ClipAppearanceEncoder:
        """Load the image tower of the CLIP model in ``folder`` (a full ``CLIPModel`` or a
        ``CLIPVisionModel``, by its ``config.json``); local files only. ``embedding``: keep the model's
        ``visual_projection`` too, so that forward also gives the image embedding (a full ``CLIPModel`` only).

        Raises:
            EncoderWeightsMissing: no ``config.json`` or weights there.
            EncoderWeightsError: the folder holds another kind of model, transformers cannot load it, or an
                embedding is asked of a folder without the projection.
        """
        path = Path(folder)
        config_path = path / "config.json"
        if not is_clip_folder(path):
            raise EncoderWeightsMissing(
                f"{path} is not a CLIP folder with config.json and {CLIP_WEIGHTS_FILE}"
            )
        try:
            kind = json.loads(config_path.read_text()).get("model_type")
        except (OSError, json.JSONDecodeError, AttributeError) as exc:
            raise EncoderWeightsError(f"{config_path} cannot be read: {exc}") from exc
        from transformers import CLIPModel, CLIPVisionModel

        loaders: dict[str, Any] = {"clip": CLIPModel, "clip_vision_model": CLIPVisionModel}
        if kind not in loaders:
            raise EncoderWeightsError(
                f"{config_path}: model_type {kind!r} is not a CLIP model (expected one of {sorted(loaders)})"
            )
        try:
            # Eager attention: plain matmuls and a softmax, which every exporter and TensorRT take.
            model = (
                loaders[kind]
                .from_pretrained(str(path), local_files_only=True, attn_implementation="eager")
                .float()
            )  # a folder saved in float16 loads as float16; the engine takes float32 frames
        except (OSError, ValueError, RuntimeError) as exc:
            raise EncoderWeightsError(f"CLIP weights in {path} cannot be loaded: {exc}") from exc
        projection = getattr(model, "visual_projection", None) if embedding else None
        if embedding and projection is None:
            raise EncoderWeightsError(
                f"{config_path}: model_type {kind!r} has no visual projection, so no image embedding for the "
                f"semantic stream (it needs a full CLIPModel folder; set appearance.semantic: false to use "
                f"this one for the appearance stream alone)"
            )
        # A CLIPModel holds its image tower as vision_model; a CLIPVisionModel is the tower itself.
        return cls(getattr(model, "vision_model", model), weights_sha256, projection)

    def _positions(self, grid: tuple[int, int]) -> torch.Tensor:
        """``(1, 1 + gh * gw, D)``: the class position, then the patch positions resized to ``grid``."""
        table = self.position_embedding.weight  # (1 + s * s, D)
        side = self.image_size // self.patch_size
        if grid == (side, side):
            return table.unsqueeze(0)
        patches = table[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([table[:1].unsqueeze(0), patches.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        height, width = frame_size(frames, self.info.frame_multiple)
        gh, gw = self.info.grid(height, width)
        size = (gh * self.patch_size, gw * self.patch_size)
        x = frames if size == (height, width) else F.interpolate(frames, size=size, mode="bilinear")
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)  # (N, gh * gw, D)
        cls = self.class_embedding.reshape(1, 1, -1).expand(patches.shape[0], 1, -1)
        h = self.pre_layrnorm(torch.cat([cls, patches], dim=1) + self._positions((gh, gw)))
        for layer in self.layers:
            h = encoder_layer(layer, h, self._legacy_layers)
        h = self.post_layernorm(h)
        tokens = h[:, 1:] @ self.projection  # (N, gh * gw, 128)
        features = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)
        if self.visual_projection is None:
            return features
        # CLIPModel.get_image_features: the class token after the post-layernorm, projected.
        return features, F.normalize(self.visual_projection(h[:, 0]), dim=-1)


def takes_causal_mask(layer: nn.Module) -> bool:
    """Whether a CLIP encoder layer is transformers 4.x's (4.46.3, the device images' pin for Python 3.10
    and torch 2.5): ``forward(hidden_states, attention_mask, causal_attention_mask, ...)`` returning a tuple.
    5.x's takes ``(hidden_states, attention_mask, **kwargs)`` and returns the tensor. Read once, when the
    encoder is built, not while it is traced for export."""
    return "causal_attention_mask" in inspect.signature(layer.forward).parameters


def encoder_layer(layer: nn.Module, hidden: torch.Tensor, legacy: bool) -> torch.Tensor:
    """One CLIP encoder layer over ``hidden`` ``(N, L, D)`` without a mask; ``legacy``:
    :func:`takes_causal_mask` of the layer."""
    out = layer(hidden, None, None) if legacy else layer(hidden, None)
    return out[0] if isinstance(out, tuple) else out


def load_encoder(
    path: str | Path, sha256: str = "", encoder: str = "mobilenet_v2", *, embedding: bool = False
) -> AppearanceEncoder | ClipAppearanceEncoder:
    """The appearance encoder ``encoder`` with the weights at ``path`` (what
    :func:`engines.encoders.find_encoder_weights` found: a ``.pth`` for MobileNetV2, a CLIP folder's
    ``model.safetensors`` for CLIP); ``sha256`` (the caller hashed the file) is kept as ``weights_sha256``.
    ``embedding``: CLIP only, the encoder also gives the image embedding (see the module docstring)."""
    if encoder == _CLIP.name:
        return ClipAppearanceEncoder.from_folder(clip_folder(path), sha256, embedding=embedding)
    if embedding:
        raise EncoderWeightsError(f"the {encoder} encoder has no image embedding; only clip has one")
    return AppearanceEncoder.from_weights(path, sha256, encoder)


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.pth`` state dict with ``torch.load(weights_only=True)`` (tensors and plain containers only:
    no code in the file runs) onto the CPU.

    Raises:
        EncoderWeightsMissing: ``path`` does not exist.
        EncoderWeightsError: the file cannot be read as a state dict; the message names it.
    """
    p = Path(path)
    if not p.is_file():
        raise EncoderWeightsMissing(f"appearance weights {p} do not exist")
    try:
        state = torch.load(p, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors alike
        raise EncoderWeightsError(
            f"appearance weights {p} cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EncoderWeightsError(f"appearance weights {p} hold a {type(state).__name__}, not a state dict")
    return dict(state)
