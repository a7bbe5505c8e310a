"""TimeSformer backbone: the first engine.

Built on Hugging Face ``TimesformerModel`` (divided space-time attention). HF assumes a square
``image_size``; this wrapper supports any ``H x W`` that is a multiple of the patch size by giving the
model a position table of exactly ``(H/p) * (W/p) + 1`` entries, interpolated once from the pretrained
square table when pretrained weights are loaded. The forward pass then contains no interpolation, which
keeps the ONNX graph static and TensorRT-friendly.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["BackboneLoadError", "TimeSformerEncoder"]


class BackboneLoadError(RuntimeError):
    """Pretrained backbone weights could not be found or do not fit."""


class TimeSformerEncoder(nn.Module):
    """Video encoder producing per-frame patch tokens and a clip embedding.

    Input ``clip``: ``(N, T, 3, H, W)`` float32 RGB, each channel normalised as ``(x/255 - mean) / std``
    with the mean and std from the engine manifest.

    Outputs:
        tokens: ``(N, T, D, h, w)`` float32, the final-layer patch tokens of each frame after the last
            LayerNorm, with ``h = H / patch`` and ``w = W / patch``.
        embedding: ``(N, D)`` float32, the CLS token: a global clip feature (drives the context gates).
    """

    def __init__(
        self,
        *,
        height: int,
        width: int,
        num_frames: int,
        patch_size: int = 16,
        hidden_size: int = 96,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import TimesformerConfig, TimesformerModel

        if height % patch_size or width % patch_size:
            raise ValueError(f"input {height}x{width} is not a multiple of patch size {patch_size}")
        self.height, self.width, self.num_frames, self.patch_size = height, width, num_frames, patch_size
        self.grid_h, self.grid_w = height // patch_size, width // patch_size

        self.model: Any
        if pretrained:
            self.model = _load_pretrained(pretrained)
            cfg = self.model.config
            if cfg.patch_size != patch_size:
                raise BackboneLoadError(
                    f"pretrained patch size {cfg.patch_size} differs from the configured {patch_size}"
                )
        else:
            cfg = TimesformerConfig(
                image_size=width,
                patch_size=patch_size,
                num_channels=3,
                num_frames=num_frames,
                hidden_size=hidden_size,
                num_hidden_layers=num_layers,
                num_attention_heads=num_heads,
                intermediate_size=int(hidden_size * mlp_ratio),
                attention_type="divided_space_time",
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
                drop_path_rate=0,  # transformers 5 types this field as int
            )
            self.model = TimesformerModel(cfg)
        self._fit_embeddings()
        self.hidden_size = int(self.model.config.hidden_size)

    def _fit_embeddings(self) -> None:
        """Resize the position/time tables to this input once, so forward() never interpolates.

        HF's layers take the patch-grid width from ``config.image_size // patch_size`` and infer the
        height from the token count, so ``image_size`` is set to the input *width*.
        """
        cfg: Any = self.model.config
        emb: Any = self.model.embeddings
        pos = emb.position_embeddings.data  # (1, 1 + n*n, D) square table
        n_old = pos.shape[1] - 1
        side = round(math.sqrt(n_old))
        target = self.grid_h * self.grid_w
        if n_old != target:
            if side * side != n_old:
                raise BackboneLoadError(f"position table of {n_old} patches is not square")
            grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
            grid = nn.functional.interpolate(
                grid, size=(self.grid_h, self.grid_w), mode="bicubic", align_corners=False
            )
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, target, -1)], dim=1)
            emb.position_embeddings = nn.Parameter(pos.contiguous())
        time = emb.time_embeddings.data  # (1, T_old, D)
        if time.shape[1] != self.num_frames:
            time = nn.functional.interpolate(
                time.transpose(1, 2), size=self.num_frames, mode="linear", align_corners=False
            ).transpose(1, 2)
            emb.time_embeddings = nn.Parameter(time.contiguous())
        cfg.image_size = self.width
        cfg.num_frames = self.num_frames

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, t = clip.shape[0], clip.shape[1]
        hidden = self.model(pixel_values=clip).last_hidden_state  # (N, 1 + h*w*T, D), order (h, w, t)
        d = hidden.shape[-1]
        embedding = hidden[:, 0]
        tokens = hidden[:, 1:].reshape(n, self.grid_h, self.grid_w, t, d).permute(0, 3, 4, 1, 2)
        return tokens.contiguous(), embedding


def _load_pretrained(name_or_path: str) -> Any:
    """Load TimeSformer weights from a local folder or the HF cache only; never from the network."""
    from transformers import TimesformerModel

    path = Path(name_or_path).expanduser()
    try:
        if path.is_dir():
            model = TimesformerModel.from_pretrained(str(path), local_files_only=True)
        else:
            model = TimesformerModel.from_pretrained(name_or_path, local_files_only=True)
    except OSError as exc:
        raise BackboneLoadError(
            f"TimeSformer weights {name_or_path!r} are not a local folder or in the HF cache "
            f"(zsad never downloads weights): {exc}"
        ) from exc
    log.info("loaded pretrained TimeSformer from %s", name_or_path)
    return model
