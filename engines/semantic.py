"""CLIP semantic stream: a projection head into CLIP text space, the context gate, and (build time only)
the CLIP text encoder that turns prompt files into embeddings.

The edge never runs a text encoder: ``build_engines.py`` stores the gated, L2-normalised prompt
embeddings as ``.npy`` and the projection head runs as a small engine (or inside the DPC engine).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

__all__ = ["ContextGate", "ProjectionHead", "StreamGateHead", "TextEncoder", "TextEncoderError"]


class TextEncoderError(RuntimeError):
    """CLIP text weights are missing or unusable."""


class ProjectionHead(nn.Module):
    """Residual MLP from video features into CLIP text space (the paper's final head, ablation B4).

    ``Linear(n->n) -> LN -> GELU``, then ``layers`` x ``[Linear(n->h) -> LN -> Dropout -> Linear(h->n)] +
    skip -> LN``, then ``Linear(n->o) -> LN``, L2-normalised.

    Input ``features``: ``(N, n)`` float32. Output: ``(N, o)`` float32, unit L2 norm.
    """

    def __init__(
        self, in_dim: int, out_dim: int, layers: int = 2, hidden_mult: int = 2, dropout: float = 0.1
    ):
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.LayerNorm(in_dim), nn.GELU())
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Linear(in_dim, hidden_mult * in_dim),
                nn.LayerNorm(hidden_mult * in_dim),
                nn.Dropout(dropout),
                nn.Linear(hidden_mult * in_dim, in_dim),
            )
            for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(in_dim) for _ in range(layers))
        self.out = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.inp(features)
        for block, norm in zip(self.blocks, self.norms, strict=True):
            x = norm(x + block(x))
        return F.normalize(self.out(x), dim=-1)


class ContextGate(nn.Module):
    """The paper's LN-gate with a learnable beta (Fig. 2, final model B5).

    ``p = LN(Dropout(W c + b))``, ``g = sigmoid(p)``, ``t' = normalize(t + beta * g * p)``.

    Inputs: ``text`` ``(P, d)`` prompt embeddings, ``context`` ``(N, c)`` context vectors.
    Output: ``(N, P, d)`` context-gated, L2-normalised prompt embeddings.
    """

    def __init__(self, context_dim: int, text_dim: int, dropout: float = 0.1, beta_init: float = 0.1):
        super().__init__()
        self.proj = nn.Linear(context_dim, text_dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(text_dim)
        self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def forward(self, text: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        p = self.norm(self.drop(self.proj(context)))  # (N, d)
        gated = text.unsqueeze(0) + self.beta * (torch.sigmoid(p) * p).unsqueeze(1)
        return F.normalize(gated, dim=-1)


class StreamGateHead(nn.Module):
    """The second, small gate, as trained: weighs the streams' calibrated scores from a context vector.

    ``weights = softmax(W c + b)`` over the streams present. Its ``W`` and ``b`` (composed with the
    context projection) are exported as ``stream_gate.npz``, which the graphs apply in numpy with the
    runtime gate :class:`plugins.fusion.StreamGate`.

    Input ``context``: ``(N, c)``; optional ``present``: ``(S,)`` bool. Output: ``(N, S)`` weights.
    """

    def __init__(self, context_dim: int, streams: Sequence[str]):
        super().__init__()
        self.streams = list(streams)
        self.linear = nn.Linear(context_dim, len(self.streams))
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, context: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.linear(context)
        if present is not None:
            logits = logits.masked_fill(~present, float("-inf"))
        return torch.softmax(logits, dim=-1)


class TextEncoder(nn.Module):
    """Build-time CLIP text encoder (transformers ``CLIPModel`` text tower plus its projection).

    Loads only from a local folder or the HF cache. ``encode(prompts)`` returns ``(P, d)`` float32,
    L2-normalised.
    """

    def __init__(self, name_or_path: str):
        super().__init__()
        from transformers import CLIPModel, CLIPTokenizer

        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(name_or_path, local_files_only=True)
            model = CLIPModel.from_pretrained(name_or_path, local_files_only=True)
        except OSError as exc:
            raise TextEncoderError(
                f"CLIP weights {name_or_path!r} are not a local folder or in the HF cache "
                f"(zsad never downloads weights): {exc}"
            ) from exc
        self.text_model = model.text_model
        self.text_projection = model.text_projection
        self.embed_dim = int(model.config.projection_dim or 0)
        self.source = str(name_or_path)
        self.eval()

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
        pooled = self.text_model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).pooler_output
        return F.normalize(self.text_projection(pooled), dim=-1)


def clip_available(name_or_path: str | None) -> bool:
    """True when a CLIP folder exists locally (a cheap check before loading)."""
    return bool(name_or_path) and Path(str(name_or_path)).expanduser().is_dir()
